//! BackupSchedules, end to end: the real controller creates the runs of
//! each time, the snapshot path backs them up, and a real retention mover
//! applies the policy per origin to the schedule's snapshots only.

use std::collections::BTreeSet;

use coffer_node_agent::crd::Timestamp;
use coffer_node_agent::crd::{BackupSchedule, Phase, VolumeBackup};
use coffer_node_agent::names::{scheduled_at, SCHEDULED_AT, SCHEDULE_LABEL};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::harness::*;
use crate::sim;
use crate::snapshots::{fake_cluster, snapshot_backup, wait_cleaned};

/// Schedule `db`: snapshots of the PVCs labelled `app: db`.
async fn db_schedule(env: &Env, ns: &str, schedule: &str, retention: serde_json::Value) {
    env.create::<BackupSchedule>(
        ns,
        json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "db", "namespace": ns},
            "spec": {
                "schedule": schedule,
                "selector": {"matchLabels": {"app": "db"}},
                "method": "Snapshot",
                "retention": retention,
            }
        }),
    )
    .await;
}

/// PVCs of the `app: db` workload, each filled with `files` files from its
/// seed.
async fn db_pvcs(env: &Env, ns: &str, pvcs: &[(&str, u64)], files: usize) {
    for (pvc, seed) in pvcs {
        let dir = env.dir.path().join(format!("csi/source/{pvc}"));
        fill(&dir, *seed, files);
        sim::csi_pvc(env, ns, pvc, "Filesystem", &dir, json!({"app": "db"})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_exactly_the_newest_snapshots_of_each_origin_and_nothing_else() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("sched").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    for (pvc, app, seed) in [("data-0", "db", 1), ("data-1", "db", 2), ("web", "web", 3)] {
        let dir = env.dir.path().join(format!("csi/source/{pvc}"));
        fill(&dir, seed, 5);
        sim::csi_pvc(&env, &ns, pvc, "Filesystem", &dir, json!({"app": app})).await;
    }
    let c = Controller::start(&env, "a", &[]);
    // A snapshot of a selected PVC that the schedule did not make.
    snapshot_backup(&env, &ns, "manual", json!({"pvc": "data-0"})).await;
    let manual = wait_cleaned(&env, &ns, "manual").await;
    let manual = manual.status.unwrap().snapshot_id.unwrap();

    db_schedule(&env, &ns, "@daily", json!({"keepLast": 2})).await;
    let api: Api<BackupSchedule> = Api::namespaced(env.client.clone(), &ns);
    let mut ticks = Vec::new();
    for i in 1..=3 {
        env.annotate_object::<BackupSchedule>(
            &ns,
            "db",
            "backup.coffer.dev/backup-now",
            &i.to_string(),
        )
        .await;
        let bs = env
            .wait_for::<BackupSchedule>(&ns, "db", "run and retained", |b| {
                b.status.as_ref().is_some_and(|s| {
                    s.last_trigger.as_deref() == Some(&i.to_string())
                        && s.active.is_empty()
                        && s.last_retention.as_ref().map(|r| &r.after)
                            == s.last_schedule_time.as_ref()
                })
            })
            .await;
        ticks.push(bs.status.unwrap().last_schedule_time.unwrap());
    }

    // The runs of each time: one per selected PVC, all completed.
    let runs = Api::<VolumeBackup>::namespaced(env.client.clone(), &ns)
        .list(&ListParams::default().labels(SCHEDULE_LABEL))
        .await
        .unwrap()
        .items;
    assert_eq!(runs.len(), 6, "{runs:#?}");
    let snapshot_of = |tick: &Timestamp| -> BTreeSet<String> {
        runs.iter()
            .filter(|r| scheduled_at(*r) == Some(*tick))
            .map(|r| {
                let st = r.status.clone().unwrap();
                assert_eq!(st.phase, Phase::Completed, "{st:#?}");
                st.snapshot_id.unwrap()
            })
            .collect()
    };
    let mut expected: BTreeSet<String> = snapshot_of(&ticks[1]);
    expected.extend(snapshot_of(&ticks[2]));
    expected.insert(manual);
    assert_eq!(expected.len(), 5);
    let r = open_repo(&repo, PASSWORD).await;
    let left: BTreeSet<String> = r
        .snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id.to_hex())
        .collect();
    assert_eq!(left, expected);
    for id in snapshot_of(&ticks[0]) {
        assert!(!left.contains(&id), "the oldest time's {id} was kept");
    }

    let st = api.get_status("db").await.unwrap().status.unwrap();
    let ret = st.last_retention.clone().unwrap();
    assert_eq!((ret.kept, ret.removed, ret.origins), (4, 2, 2), "{ret:#?}");
    assert!(ret.error.is_none());
    assert!(st.last_successful_time.is_some());
    assert!(st.next_schedule_time.is_some());
    let cond = |t: &str| {
        st.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(cond("Scheduled"), "True");
    assert_eq!(cond("LastRunSucceeded"), "True");
    assert_eq!(cond("RetentionApplied"), "True");
    // The retention pod went once its result was in, and then its account.
    let retention = coffer_node_agent::names::home_name("forget", &ns, "db");
    env.wait_gone::<ServiceAccount>(COFFER_NAMESPACE, &retention)
        .await;
    env.assert_no_mover_account(COFFER_NAMESPACE, &ns, &retention)
        .await;

    // The same, as gauges to alert on.
    let (_, metrics) = get_when_up(c.metrics, "/metrics").await;
    let gauge = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains(&format!("namespace=\"{ns}\""))
                    && l.contains("schedule=\"db\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let unix = |t: &Option<Timestamp>| t.unwrap().at().timestamp_millis() as f64 / 1000.0;
    assert_eq!(
        gauge("coffer_schedule_last_run_succeeded"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        gauge("coffer_schedule_last_success_timestamp_seconds"),
        Some(unix(&st.last_successful_time)),
        "{metrics}"
    );
    assert_eq!(
        gauge("coffer_schedule_next_run_timestamp_seconds"),
        Some(unix(&st.next_schedule_time)),
        "{metrics}"
    );

    // A policy that keeps nothing: the next time's retention fails at once,
    // naming the field, with an Event, and forgets nothing.
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"retention": {"keepLast": 0}}})),
    )
    .await
    .unwrap();
    env.annotate_object::<BackupSchedule>(&ns, "db", "backup.coffer.dev/backup-now", "4")
        .await;
    let bs = env
        .wait_for::<BackupSchedule>(&ns, "db", "its retention refused", |b| {
            b.status.as_ref().is_some_and(|s| {
                s.last_trigger.as_deref() == Some("4")
                    && s.last_retention.as_ref().map(|r| &r.after) == s.last_schedule_time.as_ref()
            })
        })
        .await;
    let why = bs.status.unwrap().last_retention.unwrap().error.unwrap();
    assert!(why.starts_with("spec.retention keeps nothing"), "{why}");
    assert_eq!(env.event_notes(&ns, "RetentionFailed").await, [why]);
    assert_eq!(
        r.snapshots().await.unwrap().len(),
        7,
        "4 kept, the manual one, 2 new"
    );
    // Four times succeeded: the runs of the first are deleted (the default
    // successfulRunsHistoryLimit keeps three), their snapshots are not.
    for old in runs.iter().filter(|r| scheduled_at(*r) == Some(ticks[0])) {
        env.wait_gone::<VolumeBackup>(&ns, &old.name_any()).await;
    }
    let left = Api::<VolumeBackup>::namespaced(env.client.clone(), &ns)
        .list(&ListParams::default().labels(SCHEDULE_LABEL))
        .await
        .unwrap()
        .items;
    assert_eq!(left.len(), 6, "three times of two runs: {left:#?}");
    assert_eq!(r.snapshots().await.unwrap().len(), 7);

    // A deleted schedule's gauges go with it.
    Api::<BackupSchedule>::namespaced(env.client.clone(), &ns)
        .delete("db", &Default::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = get_when_up(c.metrics, "/metrics").await;
        let left: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.starts_with("coffer_schedule_") && l.contains(&format!("namespace=\"{ns}\""))
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauges left: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_claimed_by_a_controller_that_stopped_before_creating_its_runs_is_created_after_it()
{
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("resume").await;
    env.repository(&ns, "default", PASSWORD).await;
    db_pvcs(&env, &ns, &[("data-0", 1), ("data-1", 2)], 3).await;
    db_schedule(&env, &ns, "0 0 1 1 *", json!(null)).await;
    // What a controller leaves when it dies between claiming a time and
    // creating its runs: the time claimed, no run made.
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let api: Api<BackupSchedule> = Api::namespaced(env.client.clone(), &ns);
    api.patch_status(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"lastScheduleTime": at, "creating": at}})),
    )
    .await
    .unwrap();

    let _c = Controller::start(&env, "a", &[]);
    let bs = env
        .wait_for::<BackupSchedule>(&ns, "db", "the claimed time's runs done", |b| {
            b.status.as_ref().is_some_and(|s| {
                s.creating.is_none() && s.active.is_empty() && s.last_successful_time.is_some()
            })
        })
        .await;
    let st = bs.status.unwrap();
    assert_eq!(
        st.last_schedule_time.map(|t| t.to_string()).as_deref(),
        Some(at.as_str())
    );
    let runs = Api::<VolumeBackup>::namespaced(env.client.clone(), &ns)
        .list(&ListParams::default().labels(SCHEDULE_LABEL))
        .await
        .unwrap()
        .items;
    let pvcs: BTreeSet<String> = runs
        .iter()
        .map(|r| {
            assert_eq!(
                r.annotations().get(SCHEDULED_AT).map(String::as_str),
                Some(at.as_str()),
                "{r:#?}"
            );
            assert_eq!(phase(&r.status), Phase::Completed, "{r:#?}");
            r.spec.pvc.clone().unwrap()
        })
        .collect();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(pvcs, BTreeSet::from(["data-0".into(), "data-1".into()]));
}

/// The cron schedule itself, with no trigger: a controller that was down
/// for two times of a yearly schedule fires the missed times once, at
/// start, and then waits for the next New Year (yearly, so that no time of
/// the schedule falls while the test runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_times_of_a_cron_schedule_fire_once_then_it_waits_for_the_next() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("cron").await;
    env.repository(&ns, "default", PASSWORD).await;
    db_pvcs(&env, &ns, &[("data-0", 5)], 3).await;
    db_schedule(&env, &ns, "0 0 1 1 *", json!(null)).await;
    // Fired last 800 days ago, by a controller that then went away.
    let before = chrono::Utc::now() - chrono::Duration::days(800);
    let at = before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let api: Api<BackupSchedule> = Api::namespaced(env.client.clone(), &ns);
    api.patch_status(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"lastScheduleTime": at}})),
    )
    .await
    .unwrap();

    let _c = Controller::start(&env, "a", &[]);
    let bs = env
        .wait_for::<BackupSchedule>(&ns, "db", "fired and done", |b| {
            b.status.as_ref().is_some_and(|s| {
                s.last_schedule_time.map(|t| t.to_string()).as_deref() != Some(at.as_str())
                    && s.active.is_empty()
                    && s.last_successful_time.is_some()
            })
        })
        .await;
    let st = bs.status.unwrap();
    assert_eq!(
        st.last_trigger, None,
        "fired by its schedule, not a trigger"
    );
    let fired = st.last_schedule_time.unwrap().at();
    assert!(fired > before + chrono::Duration::days(799), "{st:#?}");
    let runs = Api::<VolumeBackup>::namespaced(env.client.clone(), &ns)
        .list(&ListParams::default().labels(SCHEDULE_LABEL))
        .await
        .unwrap()
        .items;
    assert_eq!(runs.len(), 1, "missed times fire once: {runs:#?}");
    assert_eq!(phase(&runs[0].status), Phase::Completed);
    assert_eq!(scheduled_at(&runs[0]), st.last_schedule_time);
    // The next time is the next New Year.
    use chrono::{Datelike, TimeZone};
    let next = chrono::Utc
        .with_ymd_and_hms(fired.year() + 1, 1, 1, 0, 0, 0)
        .unwrap();
    let said = st.next_schedule_time.unwrap().at();
    assert_eq!(said, next, "{st:#?}");
}

/// While a time's runs go on (their movers never finish here), the next
/// time is skipped (Forbid, the default), replaces them (Replace: they are
/// canceled) or runs beside them (Allow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_policy_skips_replaces_or_overlaps_runs_still_going() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("overlap").await;
    env.repository(&ns, "default", PASSWORD).await;
    db_pvcs(&env, &ns, &[("data-0", 4)], 2).await;
    sim.behaviour.lock().unwrap().hold_movers = true;
    let _c = Controller::start(&env, "a", &[]);
    db_schedule(&env, &ns, "@daily", json!(null)).await;
    let schedules: Api<BackupSchedule> = Api::namespaced(env.client.clone(), &ns);
    let runs: Api<VolumeBackup> = Api::namespaced(env.client.clone(), &ns);
    let open_runs = || async {
        let mut open: Vec<String> = runs
            .list(&ListParams::default().labels(SCHEDULE_LABEL))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_final()))
            .map(|r| r.name_any())
            .collect();
        open.sort();
        open
    };
    let fire = |n: &'static str| {
        let env = &env;
        let ns = ns.clone();
        async move {
            env.annotate_object::<BackupSchedule>(&ns, "db", "backup.coffer.dev/backup-now", n)
                .await;
            env.wait_for::<BackupSchedule>(&ns, "db", "past its trigger", |b| {
                b.status
                    .as_ref()
                    .is_some_and(|s| s.last_trigger.as_deref() == Some(n) && s.creating.is_none())
            })
            .await
            .status
            .unwrap()
        }
    };
    let policy = |p: &'static str| {
        let schedules = schedules.clone();
        async move {
            schedules
                .patch(
                    "db",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"concurrencyPolicy": p}})),
                )
                .await
                .unwrap();
        }
    };

    let st = fire("1").await;
    let first = open_runs().await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(st.active, first);

    // Forbid: the time is skipped, and says so.
    let st = fire("2").await;
    assert!(st.last_skipped_time.is_some(), "{st:#?}");
    assert_eq!(open_runs().await, first);
    let all = runs
        .list(&ListParams::default().labels(SCHEDULE_LABEL))
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), 1, "a skipped time made runs: {all:#?}");

    // Replace: the running one is canceled (and cleaned up), a new one runs.
    policy("Replace").await;
    let st = fire("3").await;
    assert_eq!(st.active.len(), 1);
    assert_ne!(st.active, first);
    let old = wait_cleaned(&env, &ns, &first[0]).await;
    assert_eq!(old.status.unwrap().phase, Phase::Canceled);
    let second = open_runs().await;
    assert_eq!(second, st.active);

    // Allow: the new run starts beside the one still going.
    policy("Allow").await;
    let st = fire("4").await;
    let mut both = second.clone();
    both.extend(st.active.clone());
    both.sort();
    assert_eq!(both.len(), 2);
    assert_eq!(open_runs().await, both);

    // A run the API server refuses (a policy on VolumeBackups): the time
    // passes with a Warning that names it, and the schedule goes on.
    env.server.as_ref().unwrap().forbid_creates(
        "volumebackups",
        &ns,
        "denied by the backup-window policy",
    );
    let st = fire("5").await;
    assert_eq!(open_runs().await, both);
    assert!(st.next_schedule_time.is_some(), "{st:#?}");
    let refused = env.event_notes(&ns, "RunRefused").await;
    assert!(
        refused
            .iter()
            .any(|n| n.contains("denied by the backup-window policy")
                && n.contains(&format!("VolumeBackup {ns}/"))),
        "{refused:#?}"
    );
}

/// A pod's annotation schedule keeps its runs as a BackupSchedule does by
/// default: when its runs end, the controller deletes those of the same pod
/// and volume past the 3 latest times that succeeded and the latest that
/// failed; another volume's runs and a backup-now's stay. A run whose pod
/// is gone goes once it ended `--finished-run-ttl` ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotation_schedules_runs_past_the_history_limits_are_deleted() {
    use coffer_node_agent::names::{POD_LABEL, TRIGGER_LABEL, VOLUME_LABEL};
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("history").await;
    let runs: Api<VolumeBackup> = Api::namespaced(env.client.clone(), &ns);
    let made = [
        ("vol", "schedule", 1, Phase::Completed),
        ("vol", "schedule", 2, Phase::Failed),
        ("vol", "schedule", 3, Phase::Completed),
        ("vol", "schedule", 4, Phase::Completed),
        ("vol", "schedule", 5, Phase::Completed),
        ("vol", "schedule", 6, Phase::Completed),
        ("logs", "schedule", 1, Phase::Completed),
        ("vol", "backup-now", 1, Phase::Completed),
    ];
    // A run whose pod is gone, ended long ago: it goes after the TTL.
    env.create::<VolumeBackup>(
        &ns,
        json!({
            "metadata": {"name": "gone-0-vol", "namespace": ns,
                "labels": {POD_LABEL: "gone-0", VOLUME_LABEL: "vol", TRIGGER_LABEL: "schedule"},
                "annotations": {SCHEDULED_AT: "2026-01-01T00:00:00.000Z"}},
            "spec": {"pod": "gone-0", "volume": "vol"},
        }),
    )
    .await;
    runs.patch_status(
        "gone-0-vol",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Completed", "completionTime": "2026-01-01T00:10:00.000Z"}}),
        ),
    )
    .await
    .unwrap();
    for (volume, trigger, day, phase) in made {
        let name = format!("db-0-{volume}-{trigger}-{day}");
        env.create::<VolumeBackup>(
            &ns,
            json!({
                "metadata": {"name": name, "namespace": ns,
                    "labels": {POD_LABEL: "db-0", VOLUME_LABEL: volume, TRIGGER_LABEL: trigger},
                    "annotations": {SCHEDULED_AT: format!("2026-01-0{day}T00:00:00.000Z")}},
                "spec": {"pod": "db-0", "volume": volume},
            }),
        )
        .await;
        runs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await
        .unwrap();
    }
    let _c = Controller::start(&env, "a", &["--finished-run-ttl", "1s"]);
    env.wait_gone::<VolumeBackup>(&ns, "gone-0-vol").await;
    let want: BTreeSet<String> = [
        "db-0-vol-schedule-2",
        "db-0-vol-schedule-4",
        "db-0-vol-schedule-5",
        "db-0-vol-schedule-6",
        "db-0-logs-schedule-1",
        "db-0-vol-backup-now-1",
    ]
    .map(String::from)
    .into();
    env.wait_backups(&ns, "db-0", "the runs within the history limits", |bs| {
        bs.iter().map(|b| b.name_any()).collect::<BTreeSet<_>>() == want
    })
    .await;
}

/// deploy/examples fit together and work: the repositories, the StatefulSet
/// and the schedule, applied as they are (the repositories pointed at this
/// machine's directories instead of the example's buckets), back up the
/// StatefulSet's claim when the schedule is started now, and the snapshot
/// restores byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_applied_together_back_up_the_example_statefulsets_claim() {
    use coffer_node_agent::crd::BackupRepository;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Service;
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("examples").await;
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let docs = |file: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(examples.join(file)).unwrap();
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &serde_json::Value| !v.is_null())
            .collect()
    };
    // The Secrets their comments say to create.
    env.secret(&ns, "coffer-repo", "password", PASSWORD).await;
    env.secret(&ns, "coffer-offsite", "password", "another password")
        .await;
    let mut repo = None;
    for mut r in docs("repository.yaml") {
        let name = r["metadata"]["name"].as_str().unwrap().to_string();
        let dir = env.dir.path().join("repos").join(&ns).join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        r["spec"]["url"] = json!(format!("file://{}", dir.display()));
        let spec = r["spec"].as_object_mut().unwrap();
        spec.remove("credentialsSecretRef");
        spec.remove("options");
        env.create::<BackupRepository>(&ns, r).await;
        if name == "default" {
            repo = Some(dir);
        }
    }
    let repo = repo.expect("repository.yaml makes the repository named default");
    let mut sts = None;
    for d in docs("pod.yaml") {
        match d["kind"].as_str() {
            Some("StatefulSet") => sts = Some(env.create::<StatefulSet>(&ns, d).await),
            Some("Service") => drop(env.create::<Service>(&ns, d).await),
            other => panic!("pod.yaml: unexpected {other:?}"),
        }
    }
    // Its claim, as the StatefulSet controller makes it: named after the
    // template, the set and the ordinal, labelled with the set's selector.
    let sts = sts.expect("pod.yaml has a StatefulSet");
    let spec = sts.spec.unwrap();
    let template = &spec.volume_claim_templates.as_ref().unwrap()[0];
    let claim = format!(
        "{}-{}-0",
        template.metadata.name.as_deref().unwrap(),
        sts.metadata.name.as_deref().unwrap()
    );
    let labels = serde_json::to_value(spec.selector.match_labels.unwrap()).unwrap();
    let data = env.dir.path().join(format!("csi/source/{claim}"));
    fill(&data, 29, 6);
    sim::csi_pvc(&env, &ns, &claim, "Filesystem", &data, labels).await;
    let schedule = docs("schedule.yaml").remove(0);
    let name = schedule["metadata"]["name"].as_str().unwrap().to_string();
    env.create::<BackupSchedule>(&ns, schedule).await;

    let _c = Controller::start(&env, "a", &[]);
    // As the example's comment says: run it now.
    env.annotate_object::<BackupSchedule>(&ns, &name, "backup.coffer.dev/backup-now", "1")
        .await;
    env.wait_for::<BackupSchedule>(&ns, &name, "run and retained", |b| {
        b.status.as_ref().is_some_and(|s| {
            s.last_trigger.as_deref() == Some("1")
                && s.active.is_empty()
                && s.last_retention.as_ref().map(|r| &r.after) == s.last_schedule_time.as_ref()
        })
    })
    .await;
    let runs = Api::<VolumeBackup>::namespaced(env.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await
        .unwrap()
        .items;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let st = runs[0].status.clone().unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    assert_eq!(runs[0].spec.pvc.as_deref(), Some(claim.as_str()));
    let restored = restore(&repo, st.snapshot_id.as_deref().unwrap(), env.dir.path()).await;
    assert_same_tree(&data, &restored);
}
