//! Repository maintenance, end to end: the real controller starts prune and
//! check movers for a BackupRepository's `spec.maintenance`, a prune runs
//! while a snapshot backup writes into the same repository, and a check
//! finds a flipped byte.

use coffer_engine::forget::{self, Filter, GroupBy, OriginFilter, Policy};
use coffer_node_agent::crd::{BackupRepository, BackupRepositoryStatus, Phase};
use coffer_node_agent::names::{CHECK_NOW, COPY_NOW, PRUNE_NOW};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::harness::*;
use crate::sim;
use crate::snapshots::{fake_cluster, snapshot_backup, wait_cleaned};

/// Sets the annotation `key` to `value` and waits until the job it starts
/// has its result written and its pod recorded and gone.
async fn run_now(env: &Env, ns: &str, key: &str, value: &str) -> BackupRepositoryStatus {
    env.annotate_object::<BackupRepository>(ns, "default", key, value)
        .await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(env.client.clone(), COFFER_NAMESPACE);
    let job = match key {
        PRUNE_NOW => "prune",
        COPY_NOW => "copy",
        _ => "check",
    };
    let st = env
        .wait_for::<BackupRepository>(ns, "default", "the job's result", |r| {
            r.status.as_ref().is_some_and(|s| {
                let (times, result_at) = match key {
                    PRUNE_NOW => (&s.prune, s.last_prune.as_ref().map(|r| &r.scheduled_at)),
                    COPY_NOW => (&s.copy, s.last_copy.as_ref().map(|r| &r.scheduled_at)),
                    _ => (&s.check, s.last_check.as_ref().map(|r| &r.scheduled_at)),
                };
                let Some(t) = times
                    .as_ref()
                    .filter(|t| t.last_trigger.as_deref() == Some(value))
                else {
                    return false;
                };
                let at = t.last_schedule_time.as_ref();
                at.is_some() && at == result_at
            })
        })
        .await
        .status
        .unwrap();
    let pod = coffer_node_agent::names::home_name(job, ns, "default");
    let deadline = tokio::time::Instant::now() + WAIT;
    while pods.get_opt(&pod).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "pod {pod} stays");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    st
}

/// Waits until the repository directory `dir` holds an object (the
/// engine's files tell nothing else when they appear).
async fn appears(dir: &std::path::Path, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never appeared in {}",
            dir.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_runs_beside_a_backup_and_a_check_reads_every_part_then_finds_a_flipped_byte() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("maint").await;
    let repo_dir = env.repository(&ns, "default", PASSWORD).await;
    for (pvc, seed) in [("old", 11), ("new", 12)] {
        let dir = env.dir.path().join(format!("csi/source/{pvc}"));
        fill(&dir, seed, 6);
        sim::csi_pvc(&env, &ns, pvc, "Filesystem", &dir, json!({})).await;
    }
    // Backups that last long enough to be paused while they run.
    let c = Controller::start(&env, "a", &["--mover-limit-read", "100KiB/s"]);
    snapshot_backup(&env, &ns, "old-1", json!({"pvc": "old"})).await;
    assert_eq!(
        phase(&wait_cleaned(&env, &ns, "old-1").await.status),
        Phase::Completed
    );

    // Forget the old volume's snapshot: its data is garbage now.
    let repo = open_repo(&repo_dir, PASSWORD).await;
    let snapshots = repo.snapshots().await.unwrap();
    let by_pvc = Filter {
        origin: OriginFilter {
            pvc: Some("old".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let nothing = Policy {
        tags: vec!["no-such-tag".into()],
        ..Default::default()
    };
    let every = GroupBy {
        host: false,
        paths: false,
        tags: false,
        origin: false,
    };
    let plan = forget::plan(&snapshots, &nothing, every, &by_pvc).unwrap();
    let cancel = coffer_engine::CancelToken::new();
    assert_eq!(forget::execute(&repo, &plan, &cancel).await.unwrap(), 1);

    Api::<BackupRepository>::namespaced(env.client.clone(), &ns)
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenance": {
                "pruneSchedule": "@weekly",
                "checkSchedule": "@weekly",
                "readDataSubset": "1/2",
                "maxUnusedPercent": 0,
            }}})),
        )
        .await
        .unwrap();

    // A backup and a prune at once, on one repository: the backup's mover
    // is paused once its session is open; the prune publishes its plan, sees
    // the session and waits; then the backup goes on and ends, and the
    // prune finishes.
    use nix::sys::signal::Signal;
    snapshot_backup(&env, &ns, "new-1", json!({"pvc": "new"})).await;
    let mover = format!(
        "{COFFER_NAMESPACE}/{}",
        crate::snapshots::mover(&ns, "new-1")
    );
    appears(&repo_dir.join("sessions"), "the backup's session").await;
    assert!(sim.signal(&mover, Signal::SIGSTOP), "no mover runs");
    let resume = async {
        appears(&repo_dir.join("plans"), "the prune's plan").await;
        // The prune lists the sessions right after its plan; nothing in the
        // repository tells when it has, so the backup is held a moment more.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(sim.signal(&mover, Signal::SIGCONT));
    };
    let (st, ()) = tokio::join!(run_now(&env, &ns, PRUNE_NOW, "1"), resume);
    let new = wait_cleaned(&env, &ns, "new-1").await;
    assert_eq!(phase(&new.status), Phase::Completed, "{new:#?}");
    let prune = st.last_prune.clone().unwrap();
    assert!(prune.error.is_none(), "{prune:#?}");
    assert!(prune.executed, "{prune:#?}");
    assert_eq!(prune.sessions_waited, 1, "{prune:#?}");
    assert!(
        prune.bytes_freed > 0,
        "the forgotten volume's data was not freed: {prune:#?}"
    );
    assert!(
        st.prune.as_ref().unwrap().next_schedule_time.is_some(),
        "{st:#?}"
    );
    // What the backup wrote survived the prune.
    let id = new.status.unwrap().snapshot_id.unwrap();
    let out = restore(&repo_dir, &id, &env.dir.path().join("restored")).await;
    assert_same_tree(&env.dir.path().join("csi/source/new"), &out);

    // Two checks of "1/2" read the two halves: every pack once.
    let first = run_now(&env, &ns, CHECK_NOW, "1").await.last_check.unwrap();
    let second = run_now(&env, &ns, CHECK_NOW, "2").await.last_check.unwrap();
    for c in [&first, &second] {
        assert!(c.ok && c.error.is_none(), "{c:#?}");
    }
    assert_eq!(first.read_data_subset.as_deref(), Some("1/2"));
    assert_eq!(second.read_data_subset.as_deref(), Some("2/2"));
    assert_eq!(
        first.packs_read + second.packs_read,
        first.packs,
        "{first:#?} {second:#?}"
    );

    // A flipped byte in a pack: the next check (of every pack) fails, with
    // a Warning Event on the repository and the metric.
    let pack = largest_file(&repo_dir.join("data"));
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    Api::<BackupRepository>::namespaced(env.client.clone(), &ns)
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenance": {"readDataSubset": "100%"}}})),
        )
        .await
        .unwrap();
    let bad = run_now(&env, &ns, CHECK_NOW, "3").await.last_check.unwrap();
    assert!(!bad.ok && bad.problems > 0, "{bad:#?}");
    let pack_id = pack.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        bad.first_problems.iter().any(|p| p.contains(&pack_id[..8])),
        "no problem names pack {pack_id}: {bad:#?}"
    );
    let events = Api::<Event>::namespaced(env.client.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let warned = events.iter().any(|e| {
        e.reason.as_deref() == Some("CheckFailed")
            && e.type_.as_deref() == Some("Warning")
            && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("BackupRepository")
    });
    assert!(warned, "no CheckFailed Warning: {events:#?}");
    let (_, metrics) = get_when_up(c.metrics, "/metrics").await;
    let line = |job: &str, result: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("coffer_maintenance_jobs_total{")
                    && l.contains(&format!("job=\"{job}\""))
                    && l.contains(&format!("result=\"{result}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(line("check", "failed").as_deref(), Some("1"), "{metrics}");
    assert_eq!(line("check", "ok").as_deref(), Some("2"), "{metrics}");
    assert_eq!(line("prune", "ok").as_deref(), Some("1"), "{metrics}");

    // Each job's pod went once its result was in, and then its account.
    for job in ["prune", "check"] {
        let mover = coffer_node_agent::names::home_name(job, &ns, "default");
        env.wait_gone::<ServiceAccount>(COFFER_NAMESPACE, &mover)
            .await;
        env.assert_no_mover_account(COFFER_NAMESPACE, &ns, &mover)
            .await;
    }
}

/// `spec.maintenance.copyTo`: the controller's copy mover keeps a second
/// repository (its own password) in step; a second copy sends nothing; a
/// copyTo naming no repository fails the job, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_copy_keeps_a_second_repository_in_step_and_sends_nothing_twice() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("copy").await;
    let _ = env.repository(&ns, "default", PASSWORD).await;
    let offsite_dir = env.repository(&ns, "offsite", "offsite password").await;
    let dir = env.dir.path().join("csi/source/data");
    fill(&dir, 21, 6);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &dir, json!({})).await;
    let c = Controller::start(&env, "a", &[]);
    snapshot_backup(&env, &ns, "data-1", json!({"pvc": "data"})).await;
    let backup = wait_cleaned(&env, &ns, "data-1").await;
    assert_eq!(phase(&backup.status), Phase::Completed, "{backup:#?}");
    let source_id = backup.status.unwrap().snapshot_id.unwrap();

    Api::<BackupRepository>::namespaced(env.client.clone(), &ns)
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenance": {
                "copyTo": "offsite",
                "copySchedule": "@weekly",
            }}})),
        )
        .await
        .unwrap();
    let st = run_now(&env, &ns, COPY_NOW, "1").await;
    let first = st.last_copy.clone().unwrap();
    assert!(first.error.is_none(), "{first:#?}");
    assert_eq!(
        (first.snapshots_copied, first.snapshots_skipped),
        (1, 0),
        "{first:#?}"
    );
    assert!(first.bytes_stored > 0, "{first:#?}");
    assert_eq!(first.destination, "offsite");
    assert!(
        st.copy.as_ref().unwrap().next_schedule_time.is_some(),
        "{st:#?}"
    );

    // The copy, opened with the offsite password, restores the volume.
    let offsite = open_repo(&offsite_dir, "offsite password").await;
    let copies = offsite.snapshots().await.unwrap();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].1.original.map(|o| o.to_hex()), Some(source_id));
    let target = env.dir.path().join("offsite-restore");
    let opts = coffer_engine::restore::RestoreOptions::new(copies[0].0.to_hex(), &target);
    let done =
        coffer_engine::restore::restore(offsite.clone(), offsite.load_index().await.unwrap(), opts)
            .await
            .unwrap();
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    assert_same_tree(&dir, &target);

    // Again: nothing new to copy, nothing stored.
    let again = run_now(&env, &ns, COPY_NOW, "2").await.last_copy.unwrap();
    assert!(again.error.is_none(), "{again:#?}");
    assert_eq!(
        (again.snapshots_copied, again.snapshots_skipped),
        (0, 1),
        "{again:#?}"
    );
    assert_eq!(again.bytes_stored, 0);

    let (_, metrics) = get_when_up(c.metrics, "/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("coffer_copy_last_success_timestamp_seconds{")
                && l.contains("destination=\"offsite\"")
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("coffer_maintenance_jobs_total{")
                && l.contains("job=\"copy\"")
                && l.contains("result=\"ok\"")
                && l.ends_with(" 2")),
        "{metrics}"
    );

    // A copyTo that names no repository: the job fails, naming it.
    Api::<BackupRepository>::namespaced(env.client.clone(), &ns)
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenance": {"copyTo": "nowhere"}}})),
        )
        .await
        .unwrap();
    env.annotate_object::<BackupRepository>(&ns, "default", COPY_NOW, "3")
        .await;
    let failed = env
        .wait_for::<BackupRepository>(&ns, "default", "a failed copy", env_copy_failed)
        .await
        .status
        .unwrap()
        .last_copy
        .unwrap();
    let why = failed.error.unwrap();
    assert!(
        why.contains("nowhere") && why.contains("does not exist"),
        "{why}"
    );
}

fn env_copy_failed(r: &BackupRepository) -> bool {
    r.status
        .as_ref()
        .and_then(|s| s.last_copy.as_ref())
        .is_some_and(|c| c.error.is_some())
}

fn largest_file(dir: &std::path::Path) -> std::path::PathBuf {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a pack file")
        .into_path()
}
