//! Hooks and dumps through `pods/exec`, end to end: the real node agent
//! execs into pods of the fake API server, which runs each command as a
//! local process (with the pod and container in its environment).

use coffer_node_agent::crd::{BackupMethod, Phase, VolumeBackup};
use coffer_node_agent::hooks::{COMMAND, COMMAND_FILENAME};
use kube::api::Api;
use serde_json::json;

use crate::harness::*;
use crate::{common, explicit_backup, message, small_pod, snapshot_of};

fn sh(script: &str) -> String {
    json!(["sh", "-c", script]).to_string()
}

async fn snapshot_count(repo: &std::path::Path) -> usize {
    open_repo(repo, PASSWORD)
        .await
        .snapshots()
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_around_the_read_and_on_error_decides_what_a_failure_does() {
    let mut env = Env::new().await;
    let ns = env.namespace("hooks").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    let src = small_pod(&env, &node, &ns, "db-0", &node_name, 51, None).await;
    let _agent = Agent::start(&env, &AgentConfig::new(&node_name, &node));
    let log = env.dir.path().join("hooks.log");
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    let marker = src.join("frozen");
    // The pre-hook leaves a marker in the volume, the post-hook removes it:
    // the snapshot holds it only if the read came between the two.
    let pre = sh(&format!(
        "echo \"pre $COFFER_FAKE_POD $COFFER_FAKE_CONTAINER\" >> {log}; touch {marker}",
        log = log.display(),
        marker = marker.display()
    ));
    let post = sh(&format!(
        "echo post >> {log}; rm -f {marker}",
        log = log.display(),
        marker = marker.display()
    ));
    env.annotate(&ns, "db-0", "pre.hook.backup.coffer.dev/command", &pre)
        .await;
    env.annotate(&ns, "db-0", "pre.hook.backup.coffer.dev/container", "c")
        .await;
    env.annotate(&ns, "db-0", "post.hook.backup.coffer.dev/command", &post)
        .await;

    let b = explicit_backup(&env, &ns, "b1", "db-0", "vol").await;
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    assert_eq!(lines(), format!("pre {ns}/db-0 c\npost\n"));
    let hooks = b.status.clone().unwrap().hooks;
    let stages: Vec<(&str, bool)> = hooks
        .iter()
        .map(|h| (h.stage.as_str(), h.succeeded))
        .collect();
    assert_eq!(stages, [("pre", true), ("post", true)], "{hooks:#?}");
    assert!(!marker.exists(), "the post-hook did not run");
    let out = restore(&repo, &snapshot_of(&b), env.dir.path()).await;
    assert!(
        out.join("frozen").exists(),
        "the read did not come after the pre-hook"
    );
    std::fs::remove_file(out.join("frozen")).unwrap();
    assert_same_tree(&src, &out);

    // A failing pre-hook with on-error Fail: nothing is read, the message
    // has the hook's output and exit code, and the post-hook runs all the
    // same (a freeze that failed or timed out may have frozen).
    let failing = sh("echo 'cannot freeze: busy' >&2; exit 7");
    env.annotate(&ns, "db-0", "pre.hook.backup.coffer.dev/command", &failing)
        .await;
    let b = explicit_backup(&env, &ns, "b2", "db-0", "vol").await;
    assert_eq!(phase(&b.status), Phase::Failed, "{:#?}", b.status);
    let m = message(&b.status);
    for part in [
        "pre hook",
        &format!("pod {ns}/db-0"),
        "exit code 7",
        "cannot freeze: busy",
    ] {
        assert!(m.contains(part), "{part:?} not in {m:?}");
    }
    assert_eq!(snapshot_count(&repo).await, 1);
    assert_eq!(lines(), format!("pre {ns}/db-0 c\npost\npost\n"));
    let stages: Vec<(&str, bool)> = b
        .status
        .as_ref()
        .unwrap()
        .hooks
        .iter()
        .map(|h| (h.stage.as_str(), h.succeeded))
        .collect();
    assert_eq!(stages, [("pre", false), ("post", true)]);
    let failed = env.event_notes(&ns, "HookFailed").await;
    assert!(
        failed.iter().any(|n| n.contains("exit code 7")),
        "{failed:#?}"
    );

    // The same failure with on-error Continue: the backup goes on, the
    // post-hook runs, the status tells.
    env.annotate(
        &ns,
        "db-0",
        "pre.hook.backup.coffer.dev/on-error",
        "Continue",
    )
    .await;
    let b = explicit_backup(&env, &ns, "b3", "db-0", "vol").await;
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    let hooks = b.status.clone().unwrap().hooks;
    assert!(!hooks[0].succeeded && hooks[1].succeeded, "{hooks:#?}");
    assert_eq!(lines().lines().last(), Some("post"));
    assert_eq!(snapshot_count(&repo).await, 2);

    // A hook that outlives its timeout fails the run.
    env.annotate(
        &ns,
        "db-0",
        "pre.hook.backup.coffer.dev/command",
        &sh("sleep 60"),
    )
    .await;
    env.annotate(&ns, "db-0", "pre.hook.backup.coffer.dev/on-error", "Fail")
        .await;
    env.annotate(&ns, "db-0", "pre.hook.backup.coffer.dev/timeout", "1s")
        .await;
    let b = explicit_backup(&env, &ns, "b4", "db-0", "vol").await;
    assert_eq!(phase(&b.status), Phase::Failed, "{:#?}", b.status);
    assert!(
        message(&b.status).contains("did not finish within 1s"),
        "{:?}",
        b.status
    );

    // A bad annotation fails the run, naming it.
    env.annotate(
        &ns,
        "db-0",
        "pre.hook.backup.coffer.dev/command",
        "fsfreeze -f /data",
    )
    .await;
    let b = explicit_backup(&env, &ns, "b5", "db-0", "vol").await;
    assert_eq!(phase(&b.status), Phase::Failed);
    assert!(
        message(&b.status).contains("pre.hook.backup.coffer.dev/command"),
        "{:?}",
        b.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_becomes_a_snapshot_only_when_its_command_exits_zero() {
    let mut env = Env::new().await;
    let ns = env.namespace("dump").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    small_pod(&env, &node, &ns, "mysql-0", &node_name, 0, None).await;
    let _agent = Agent::start(&env, &AgentConfig::new(&node_name, &node));
    // What the "database" dumps: several chunks of noise.
    let data = env.dir.path().join("db.sql");
    std::fs::write(&data, noise(61, 3 << 20)).unwrap();
    env.annotate(&ns, "mysql-0", COMMAND, &format!("cat {}", data.display()))
        .await;
    env.annotate(&ns, "mysql-0", COMMAND_FILENAME, "all.sql")
        .await;
    // backup-now backs up the dump (and the selected volumes: none here).
    env.annotate(&ns, "mysql-0", "backup.coffer.dev/backup-now", "1")
        .await;
    let runs = env
        .wait_backups(&ns, "mysql-0", "one final dump", |bs| {
            bs.len() == 1 && is_final(&bs[0].status)
        })
        .await;
    let b = &runs[0];
    assert_eq!(b.spec.method, BackupMethod::Command);
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    assert_eq!(b.status.as_ref().unwrap().path.as_deref(), Some("/all.sql"));
    let out = restore(&repo, &snapshot_of(b), env.dir.path()).await;
    assert_eq!(
        std::fs::read(out.join("all.sql")).unwrap(),
        std::fs::read(&data).unwrap()
    );

    // The same output, then a failure: no snapshot.
    env.annotate(
        &ns,
        "mysql-0",
        COMMAND,
        &format!("cat {}; echo 'lost connection' >&2; exit 3", data.display()),
    )
    .await;
    env.create::<VolumeBackup>(
        &ns,
        json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
            "metadata": {"name": "dump-2", "namespace": ns},
            "spec": {"method": "Command", "pod": "mysql-0"}
        }),
    )
    .await;
    let b = env
        .wait_for::<VolumeBackup>(&ns, "dump-2", "final", |b| is_final(&b.status))
        .await;
    assert_eq!(phase(&b.status), Phase::Failed, "{:#?}", b.status);
    let m = message(&b.status);
    for part in ["exit code 3", "lost connection", "no snapshot was written"] {
        assert!(m.contains(part), "{part:?} not in {m:?}");
    }
    assert_eq!(snapshot_count(&repo).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_hooks_bracket_the_volume_snapshot_and_a_failed_pre_hook_takes_none() {
    use crate::sim;
    use crate::snapshots::{fake_cluster, snapshot_backup, wait_cleaned};
    use coffer_node_agent::controller::csi::VolumeSnapshot;
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("snaphooks").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let dir = env.dir.path().join("csi/source/data");
    fill(&dir, 71, 5);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &dir, json!({})).await;
    let marker = dir.join("frozen");
    let log = env.dir.path().join("hooks.log");
    let pre = sh(&format!(
        "echo pre >> {}; touch {}",
        log.display(),
        marker.display()
    ));
    let post = sh(&format!(
        "echo post >> {}; rm -f {}",
        log.display(),
        marker.display()
    ));
    env.pod(
        &ns,
        "db-0",
        "node-1",
        json!({
            "containers": [{"name": "db", "image": "postgres"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
        }),
        &[
            ("pre.hook.backup.coffer.dev/command", &pre),
            ("post.hook.backup.coffer.dev/command", &post),
        ],
    )
    .await;
    crate::set_running(&env, &ns, "db-0").await;
    let _c = Controller::start(&env, "a", &[]);

    snapshot_backup(&env, &ns, "s1", json!({"pvc": "data"})).await;
    let b = wait_cleaned(&env, &ns, "s1").await;
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    let hooks = b.status.clone().unwrap().hooks;
    let stages: Vec<(&str, &str, bool)> = hooks
        .iter()
        .map(|h| (h.stage.as_str(), h.pod.as_str(), h.succeeded))
        .collect();
    assert_eq!(stages, [("pre", "db-0", true), ("post", "db-0", true)]);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "pre\npost\n");
    assert!(!marker.exists(), "the post-hook did not run");
    // The marker is in the snapshot: the VolumeSnapshot was cut between the hooks.
    let out = restore(&repo, &snapshot_of(&b), env.dir.path()).await;
    assert!(out.join("frozen").exists());
    std::fs::remove_file(out.join("frozen")).unwrap();
    assert_same_tree(&dir, &out);

    // A pre-hook that freezes, then fails (on-error Fail): no
    // VolumeSnapshot, the run fails with the hook's reason, and its pod's
    // post-hook runs all the same: nothing stays frozen.
    let before = sim.deletions().len();
    let freeze_then_fail = |code: u8| {
        sh(&format!(
            "echo pre >> {}; touch {}; exit {code}",
            log.display(),
            marker.display()
        ))
    };
    env.annotate(
        &ns,
        "db-0",
        "pre.hook.backup.coffer.dev/command",
        &freeze_then_fail(4),
    )
    .await;
    snapshot_backup(&env, &ns, "s2", json!({"pvc": "data"})).await;
    let b = wait_cleaned(&env, &ns, "s2").await;
    assert_eq!(phase(&b.status), Phase::Failed, "{:#?}", b.status);
    let m = message(&b.status);
    assert!(
        m.contains("exit code 4") && m.contains("no snapshot was taken"),
        "{m}"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre\npost\npre\npost\n"
    );
    assert!(!marker.exists(), "a failed pre-hook left the pod frozen");
    let snapshots = Api::<VolumeSnapshot>::namespaced(env.client.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    assert!(snapshots.is_empty(), "{snapshots:#?}");
    assert!(
        !sim.deletions()[before..]
            .iter()
            .any(|d| d.starts_with("VolumeSnapshot/")),
        "a VolumeSnapshot was made"
    );

    // The pre-hook succeeds, then the snapshot fails: the run fails with
    // the snapshot's message, and the pod is still thawed.
    env.annotate(&ns, "db-0", "pre.hook.backup.coffer.dev/command", &pre)
        .await;
    sim.behaviour.lock().unwrap().snapshot_error = Some("snapshot quota exceeded".into());
    snapshot_backup(&env, &ns, "s3", json!({"pvc": "data"})).await;
    let b = wait_cleaned(&env, &ns, "s3").await;
    assert_eq!(phase(&b.status), Phase::Failed, "{:#?}", b.status);
    assert!(
        message(&b.status).contains("snapshot quota exceeded"),
        "{:?}",
        b.status
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre\npost\npre\npost\npre\npost\n"
    );
    assert!(!marker.exists(), "a failed snapshot left the pod frozen");
    let stages = |b: &VolumeBackup| -> Vec<(String, bool)> {
        let hooks = &b.status.as_ref().unwrap().hooks;
        hooks
            .iter()
            .map(|h| (h.stage.clone(), h.succeeded))
            .collect()
    };
    assert_eq!(stages(&b), [("pre".into(), true), ("post".into(), true)]);

    // A pre-hook that freezes, then fails with on-error Continue: the run
    // goes on to the snapshot (whose failure it reports), and the pod is
    // thawed after it.
    env.annotate(
        &ns,
        "db-0",
        "pre.hook.backup.coffer.dev/command",
        &freeze_then_fail(5),
    )
    .await;
    env.annotate(
        &ns,
        "db-0",
        "pre.hook.backup.coffer.dev/on-error",
        "Continue",
    )
    .await;
    snapshot_backup(&env, &ns, "s4", json!({"pvc": "data"})).await;
    let b = wait_cleaned(&env, &ns, "s4").await;
    assert_eq!(phase(&b.status), Phase::Failed, "{:#?}", b.status);
    assert!(
        message(&b.status).contains("snapshot quota exceeded"),
        "{:?}",
        b.status
    );
    assert!(
        !marker.exists(),
        "a failed Continue pre-hook left the pod frozen"
    );
    assert_eq!(stages(&b), [("pre".into(), false), ("post".into(), true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pvcs_of_one_workload_are_snapshotted_between_all_pre_hooks_and_all_post_hooks() {
    workload_group(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_cluster_serves_volume_group_snapshots_a_workload_gets_one() {
    workload_group(true).await
}

/// A database pod on node-1 that mounts PVC `pvc`, with `annotations`.
async fn db_pod(env: &Env, ns: &str, pod: &str, pvc: &str, annotations: &[(&str, &str)]) {
    env.pod(
        ns,
        pod,
        "node-1",
        json!({
            "containers": [{"name": "db", "image": "postgres"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": pvc}}]
        }),
        annotations,
    )
    .await;
}

/// A BackupSchedule over a two-PVC StatefulSet and a lone PVC, with hooks;
/// the cluster serves VolumeGroupSnapshots or not.
async fn workload_group(group_snapshots: bool) {
    use crate::sim;
    use crate::snapshots::{fake_cluster, wait_cleaned};
    use coffer_node_agent::crd::BackupSchedule;
    use coffer_node_agent::names::SCHEDULE_LABEL;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
    use kube::api::{ListParams, Patch, PatchParams};
    use kube::ResourceExt;
    let Some((mut env, mut sim)) = fake_cluster().await else {
        return;
    };
    if group_snapshots {
        sim.serve_group_snapshots(&env).await;
    }
    let ns = env.namespace("groups").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let log = env.dir.path().join("group-hooks.log");
    let dirs: Vec<_> = (0..2)
        .map(|i| env.dir.path().join(format!("csi/source/db-{i}")))
        .collect();
    for (i, dir) in dirs.iter().enumerate() {
        fill(dir, 80 + i as u64, 4);
        let pvc = format!("data-db-{i}");
        sim::csi_pvc(&env, &ns, &pvc, "Filesystem", dir, json!({"app": "db"})).await;
    }
    // A selected PVC that no pod of the workload uses: snapshotted alone.
    let lone = env.dir.path().join("csi/source/lone");
    fill(&lone, 90, 2);
    sim::csi_pvc(&env, &ns, "lone", "Filesystem", &lone, json!({"app": "db"})).await;
    // Each pod's pre-hook marks both volumes; its post-hook unmarks them. A
    // snapshot that holds both marks was cut after both pre-hooks and
    // before either post-hook.
    for i in 0..2 {
        let pod = format!("db-{i}");
        let marks: Vec<String> = dirs
            .iter()
            .map(|d| d.join(format!("frozen-{pod}")).display().to_string())
            .collect();
        let pre = sh(&format!(
            "echo pre-{pod} >> {}; touch {}",
            log.display(),
            marks.join(" ")
        ));
        let post = sh(&format!(
            "echo post-{pod} >> {}; rm -f {}",
            log.display(),
            marks.join(" ")
        ));
        db_pod(
            &env,
            &ns,
            &pod,
            &format!("data-{pod}"),
            &[
                ("pre.hook.backup.coffer.dev/command", &pre),
                ("post.hook.backup.coffer.dev/command", &post),
            ],
        )
        .await;
        Api::<Pod>::namespaced(env.client.clone(), &ns)
            .patch(
                &pod,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                    "uid": "3b1e0c1a-0000-4000-8000-000000000001", "controller": true,
                }]}})),
            )
            .await
            .unwrap();
        crate::set_running(&env, &ns, &pod).await;
    }
    let _c = Controller::start(&env, "a", &[]);
    env.create::<BackupSchedule>(
        &ns,
        json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "db", "namespace": ns},
            "spec": {"schedule": "@daily", "selector": {"matchLabels": {"app": "db"}}, "method": "Snapshot"}
        }),
    )
    .await;
    env.annotate_object::<BackupSchedule>(&ns, "db", "backup.coffer.dev/backup-now", "1")
        .await;
    env.wait_for::<BackupSchedule>(&ns, "db", "its runs over", |b| {
        b.status
            .as_ref()
            .is_some_and(|s| s.last_trigger.as_deref() == Some("1") && s.active.is_empty())
    })
    .await;
    let mut runs = Api::<VolumeBackup>::namespaced(env.client.clone(), &ns)
        .list(&ListParams::default().labels(SCHEDULE_LABEL))
        .await
        .unwrap()
        .items;
    runs.sort_by_key(|r| r.spec.pvc.clone());
    let pvcs: Vec<_> = runs.iter().map(|r| r.spec.pvc.clone().unwrap()).collect();
    assert_eq!(pvcs, ["data-db-0", "data-db-1", "lone"]);
    let group = runs[0]
        .spec
        .group
        .clone()
        .expect("the workload's runs have a group");
    assert_eq!(group.size, 2);
    assert_eq!(runs[1].spec.group.as_ref(), Some(&group));
    assert_eq!(runs[2].spec.group, None);

    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre-db-0\npre-db-1\npost-db-0\npost-db-1\n"
    );
    for (run, dir) in runs.iter().zip(&dirs) {
        let b = wait_cleaned(&env, &ns, &run.name_any()).await;
        assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
        // Both runs carry the group's hooks.
        let hooks: Vec<(String, String)> = b
            .status
            .clone()
            .unwrap()
            .hooks
            .into_iter()
            .map(|h| (h.stage, h.pod))
            .collect();
        let want = [
            ("pre", "db-0"),
            ("pre", "db-1"),
            ("post", "db-0"),
            ("post", "db-1"),
        ];
        assert_eq!(hooks, want.map(|(s, p)| (s.to_string(), p.to_string())));
        let out = restore(&repo, &snapshot_of(&b), env.dir.path()).await;
        for pod in ["db-0", "db-1"] {
            let mark = out.join(format!("frozen-{pod}"));
            assert!(mark.exists(), "{} lacks {pod}'s mark", run.name_any());
            std::fs::remove_file(mark).unwrap();
        }
        assert_same_tree(dir, &out);
    }
    let b = wait_cleaned(&env, &ns, &runs[2].name_any()).await;
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    assert!(b.status.unwrap().hooks.is_empty());

    // How the group's snapshots were taken, and that nothing stays.
    let deleted: Vec<String> = sim
        .deletions()
        .into_iter()
        .filter(|d| d.starts_with("VolumeSnapshot/") || d.starts_with("VolumeGroupSnapshot/"))
        .collect();
    let group_snapshot = format!("VolumeGroupSnapshot/{ns}/coffer-{}", group.name);
    let own = |r: &VolumeBackup| format!("VolumeSnapshot/{ns}/coffer-{}", r.name_any());
    if group_snapshots {
        assert!(deleted.contains(&group_snapshot), "{deleted:#?}");
        assert!(!deleted.contains(&own(&runs[0])) && !deleted.contains(&own(&runs[1])));
        let members = deleted
            .iter()
            .filter(|d| d.starts_with(&format!("VolumeSnapshot/{ns}/snapshot-")))
            .count();
        assert_eq!(members, 2, "{deleted:#?}");
    } else {
        assert!(!deleted.contains(&group_snapshot), "{deleted:#?}");
        assert!(deleted.contains(&own(&runs[0])) && deleted.contains(&own(&runs[1])));
    }
    assert!(deleted.contains(&own(&runs[2])), "{deleted:#?}");
    let unlabelled = || async {
        for pvc in Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            assert!(!pvc.labels().contains_key("coffer.dev/group"), "{pvc:#?}");
        }
    };
    unlabelled().await;

    // A failing pre-hook fails the whole group: no snapshot, every pod
    // whose pre-hook ran is thawed (the failed one too: it may have frozen
    // before it failed), the PVCs lose their group label.
    env.annotate(
        &ns,
        "db-1",
        "pre.hook.backup.coffer.dev/command",
        &sh("exit 7"),
    )
    .await;
    std::fs::write(&log, "").unwrap();
    env.annotate_object::<BackupSchedule>(&ns, "db", "backup.coffer.dev/backup-now", "2")
        .await;
    env.wait_for::<BackupSchedule>(&ns, "db", "its second runs over", |b| {
        b.status
            .as_ref()
            .is_some_and(|s| s.last_trigger.as_deref() == Some("2") && s.active.is_empty())
    })
    .await;
    let (second, lone): (Vec<VolumeBackup>, Vec<VolumeBackup>) =
        Api::<VolumeBackup>::namespaced(env.client.clone(), &ns)
            .list(&ListParams::default().labels(SCHEDULE_LABEL))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|r| !runs.iter().any(|f| f.name_any() == r.name_any()))
            .partition(|r| r.spec.group.is_some());
    assert_eq!((second.len(), lone.len()), (2, 1), "{second:#?} {lone:#?}");
    for run in &second {
        let b = wait_cleaned(&env, &ns, &run.name_any()).await;
        let st = b.status.unwrap();
        assert_eq!(st.phase, Phase::Failed, "{st:#?}");
        assert!(st.snapshot_id.is_none());
        assert!(st.message.unwrap_or_default().contains("db-1"));
    }
    let b = wait_cleaned(&env, &ns, &lone[0].name_any()).await;
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre-db-0\npost-db-0\npost-db-1\n"
    );
    let group2 = second[0].spec.group.clone().unwrap().name;
    let vgs = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "groupsnapshot.storage.k8s.io",
        "v1beta1",
        "VolumeGroupSnapshot",
    ));
    let taken = Api::<kube::api::DynamicObject>::namespaced_with(env.client.clone(), &ns, &vgs)
        .get_opt(&format!("coffer-{group2}"))
        .await
        .unwrap();
    assert!(taken.is_none(), "{taken:#?}");
    // The first group's members stay in the fake server (a real one deletes
    // them with their VolumeGroupSnapshot): no other may exist.
    let first = format!("coffer-{}", group.name);
    let snapshots: Vec<String> =
        Api::<coffer_node_agent::controller::csi::VolumeSnapshot>::namespaced(
            env.client.clone(),
            &ns,
        )
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|vs| {
            vs.status
                .as_ref()
                .and_then(|s| s.volume_group_snapshot_name.as_ref())
                != Some(&first)
        })
        .map(|vs| vs.name_any())
        .collect();
    assert!(snapshots.is_empty(), "{snapshots:?}");
    unlabelled().await;
}

/// A group whose pods have pre-hooks and no post-hooks: nothing is frozen
/// that a post-hook would thaw, so no run of the group waits for another's
/// move. The movers are held (never finish): a run that waited for the
/// other's would never get its mover, so both running at once is the proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_only_pre_hooks_moves_its_runs_at_once() {
    use crate::sim;
    use crate::snapshots::{fake_cluster, snapshot_backup};
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("prehooks").await;
    env.repository(&ns, "default", PASSWORD).await;
    let log = env.dir.path().join("pre-hooks.log");
    for i in 0..2 {
        let dir = env.dir.path().join(format!("csi/source/db-{i}"));
        fill(&dir, 70 + i, 3);
        let pvc = format!("data-db-{i}");
        sim::csi_pvc(&env, &ns, &pvc, "Filesystem", &dir, json!({})).await;
        let pod = format!("db-{i}");
        let pre = sh(&format!("echo pre-{pod} >> {}", log.display()));
        db_pod(
            &env,
            &ns,
            &pod,
            &pvc,
            &[("pre.hook.backup.coffer.dev/command", &pre)],
        )
        .await;
        crate::set_running(&env, &ns, &pod).await;
    }
    sim.behaviour.lock().unwrap().hold_movers = true;
    let _c = Controller::start(&env, "a", &[]);
    for i in 0..2 {
        snapshot_backup(
            &env,
            &ns,
            &format!("db-{i}"),
            json!({"pvc": format!("data-db-{i}"), "group": {"name": "db", "size": 2}}),
        )
        .await;
    }
    for i in 0..2 {
        env.wait_running(
            COFFER_NAMESPACE,
            &crate::snapshots::mover(&ns, &format!("db-{i}")),
        )
        .await;
        let b = env
            .wait_for::<VolumeBackup>(&ns, &format!("db-{i}"), "moving", |b| {
                b.status.as_ref().and_then(|s| s.stage.as_deref()) == Some("Moving")
            })
            .await;
        let hooks: Vec<String> = b
            .status
            .unwrap()
            .hooks
            .iter()
            .map(|h| h.stage.clone())
            .collect();
        assert_eq!(
            hooks,
            ["pre", "pre"],
            "both runs record the group's pre-hooks"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre-db-0\npre-db-1\n",
        "each pre-hook ran once, for the group"
    );
}
