//! End to end: the real `coffer-agent node` binary against the fake API
//! server (or the cluster in `COFFER_TEST_KUBECONFIG`), with the test playing
//! the kubelet and the scheduler. Every backup is checked by restoring its
//! snapshot and comparing it with the source byte for byte.

mod applications;
mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod harness;
mod hooks;
mod maintenance;
mod pvc_restores;
mod schedules;
mod sim;
mod snapshots;
mod tenancy;

use coffer_node_agent::crd::{
    BackupRepository, Phase, RepositoryPhase, VolumeBackup, VolumeRestore,
};
use harness::*;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

/// Waits until the agent's watches have synced (its readiness).
async fn wait_ready(agent: &Agent) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while agent.http_get("/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A PV (CSI) bound to a PVC `claim` in `ns`, as the PV binder leaves them:
/// the claim Bound, the PV's claimRef naming it with its uid.
async fn pvc_and_pv(env: &Env, ns: &str, claim: &str, mode: &str) -> String {
    let pv_name = format!("pv-{claim}-{}", short_id());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
    let made = pvcs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": claim, "namespace": ns},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "volumeMode": mode,
                    "storageClassName": "fast",
                    "resources": {"requests": {"storage": "1Gi"}},
                    "volumeName": pv_name
                },
                "status": {"phase": "Bound"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(env.client.clone());
    pvs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": mode,
                "storageClassName": "fast",
                "csi": {"driver": "hostpath.csi.k8s.io", "volumeHandle": pv_name},
                "claimRef": {"namespace": ns, "name": claim, "uid": made.metadata.uid}
            }
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    pv_name
}

/// The kubelet's last step: the pod runs.
async fn set_running(env: &Env, ns: &str, pod: &str) {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    api.patch_status(
        pod,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap()
}

fn snapshot_of(vb: &VolumeBackup) -> String {
    vb.status
        .as_ref()
        .and_then(|s| s.snapshot_id.clone())
        .unwrap_or_else(|| panic!("{} has no snapshot: {:#?}", vb.name_any(), vb.status))
}

/// A condition's status, reason and message (it must be there).
pub(crate) fn condition(
    conditions: &[coffer_node_agent::crd::Condition],
    type_: &str,
) -> (String, String, String) {
    let c = conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no condition {type_}: {conditions:#?}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn message(s: &Option<coffer_node_agent::crd::RunStatus>) -> String {
    s.as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

async fn explicit_backup(env: &Env, ns: &str, name: &str, pod: &str, volume: &str) -> VolumeBackup {
    env.create::<VolumeBackup>(
        ns,
        json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"pod": pod, "volume": volume}
        }),
    )
    .await;
    env.wait_for::<VolumeBackup>(ns, name, "final", |b| is_final(&b.status))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_volumes_are_backed_up_incrementally_and_restore_byte_for_byte() {
    let mut env = Env::new().await;
    let ns = env.namespace("team").await;
    // Its pod mounts hostPath volumes, which only `privileged` admits.
    env.allow_host_paths(&ns).await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let mut node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    let with_csi = common::is_root();
    if with_csi {
        pvc_and_pv(&env, &ns, "data", "Filesystem").await;
    }
    let mut volumes = vec![
        json!({"name": "cache", "emptyDir": {}}),
        json!({"name": "logs", "hostPath": {"path": "/srv/app/logs"}}),
        json!({"name": "etc", "hostPath": {"path": "/etc"}}),
        json!({"name": "token", "projected": {"sources": []}}),
        json!({"name": "spare", "emptyDir": {}}),
    ];
    if with_csi {
        volumes.push(json!({"name": "data", "persistentVolumeClaim": {"claimName": "data"}}));
    }
    let mounts: Vec<_> = volumes
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .filter(|n| n != "spare")
        .map(|n| json!({"name": n, "mountPath": format!("/{n}")}))
        .collect();
    let spec = json!({"containers": [{"name": "app", "image": "busybox", "volumeMounts": mounts}], "volumes": volumes});
    // The agent runs first; the pod arrives Pending, then the "kubelet"
    // mounts its volumes and marks it Running.
    let agent = Agent::start(
        &env,
        &AgentConfig {
            host_path_allow: &["/srv/app"],
            ..AgentConfig::new(&node_name, &node)
        },
    );
    let pod = env
        .pod(
            &ns,
            "app-0",
            &node_name,
            spec,
            &[
                ("backup.coffer.dev/volumes", "*"),
                ("backup.coffer.dev/exclude.cache", "*.tmp"),
                ("backup.coffer.dev/backup-now", "1"),
            ],
        )
        .await;
    let u = uid(&pod);
    // The agent has seen the pod before the kubelet mounted anything: every
    // volume was skipped as not mounted yet, and none failed.
    wait_ready(&agent).await;
    assert!(env.list_backups(&ns).await.is_empty());
    let cache = node.empty_dir(&u, "cache");
    fill(&cache, 1, 40);
    common::write(&cache.join("skip.tmp"), b"excluded");
    node.empty_dir(&u, "spare");
    let logs = node.host_dir("/srv/app/logs");
    fill(&logs, 2, 10);
    node.host_dir("/etc");
    let data = if with_csi {
        let d = node.mounted(
            &u,
            &format!("volumes/kubernetes.io~csi/{}/mount", {
                let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), &ns);
                pvcs.get("data")
                    .await
                    .unwrap()
                    .spec
                    .unwrap()
                    .volume_name
                    .unwrap()
            }),
        );
        fill(&d, 3, 60);
        Some(d)
    } else {
        None
    };
    set_running(&env, &ns, "app-0").await;

    let mut expected = vec!["cache", "logs"];
    if with_csi {
        expected.push("data");
    }
    let first: std::collections::BTreeMap<String, VolumeBackup> = env
        .wait_backups(&ns, "app-0", "final", |all| {
            all.len() >= expected.len() && all.iter().all(|b| is_final(&b.status))
        })
        .await
        .into_iter()
        .map(|b| (b.spec.volume.clone().unwrap_or_default(), b))
        .collect();
    // Refused, projected and unmounted volumes got no VolumeBackup.
    let mut volumes: Vec<String> = first.keys().cloned().collect();
    volumes.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(volumes, want);
    for (v, b) in &first {
        assert_eq!(phase(&b.status), Phase::Completed, "{v}: {:#?}", b.status);
        let st = b.status.as_ref().unwrap();
        assert_eq!(st.node.as_deref(), Some(node_name.as_str()));
        assert_eq!(st.path.as_deref(), Some(format!("/{v}").as_str()));
        assert!(st.progress.as_ref().unwrap().bytes_done > 0);
    }
    // Each snapshot restores to exactly the source (the excluded file aside).
    let r = restore(&repo, &snapshot_of(&first["cache"]), env.dir.path()).await;
    std::fs::remove_file(cache.join("skip.tmp")).unwrap();
    assert_same_tree(&cache, &r);
    let r = restore(&repo, &snapshot_of(&first["logs"]), env.dir.path()).await;
    assert_same_tree(&logs, &r);
    if let Some(d) = &data {
        let r = restore(&repo, &snapshot_of(&first["data"]), env.dir.path()).await;
        assert_same_tree(d, &r);
    }
    // The snapshot records the volume's path and its Kubernetes origin.
    let engine = open_repo(&repo, PASSWORD).await;
    let (_, snap) = engine
        .find_snapshot(&snapshot_of(&first["cache"]))
        .await
        .unwrap();
    assert_eq!(snap.paths.len(), 1);
    assert_eq!(snap.paths[0].to_string_lossy(), "/cache");
    assert_eq!(snap.hostname, node_name);
    let o = snap.origin.clone().unwrap();
    assert_eq!(o.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(o.pod.as_deref(), Some("app-0"));
    assert_eq!(o.volume.as_deref(), Some("cache"));
    assert_eq!(o.node.as_deref(), Some(node_name.as_str()));
    assert_eq!(o.cluster.as_deref(), Some("test-cluster"));
    if with_csi {
        let (_, s) = engine
            .find_snapshot(&snapshot_of(&first["data"]))
            .await
            .unwrap();
        let o = s.origin.unwrap();
        assert_eq!(
            (o.pvc.as_deref(), o.volume_mode.as_deref()),
            (Some("data"), Some("Filesystem"))
        );
    }

    // A new value of backup-now: one more run per volume, incremental.
    common::write(&cache.join("new.bin"), &noise(99, 70_000));
    env.annotate(&ns, "app-0", "backup.coffer.dev/backup-now", "2")
        .await;
    let all = env
        .wait_backups(&ns, "app-0", "final twice", |all| {
            all.len() >= 2 * expected.len() && all.iter().all(|b| is_final(&b.status))
        })
        .await;
    assert_eq!(all.len(), 2 * expected.len());
    for b in &all {
        assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    }
    let cache_runs: Vec<_> = all
        .iter()
        .filter(|b| b.spec.volume.as_deref() == Some("cache"))
        .collect();
    let ids: Vec<String> = cache_runs.iter().map(|b| snapshot_of(b)).collect();
    let first_id = snapshot_of(&first["cache"]);
    let second_id = ids.iter().find(|i| **i != first_id).unwrap().clone();
    let engine = open_repo(&repo, PASSWORD).await;
    let (_, s2) = engine.find_snapshot(&second_id).await.unwrap();
    assert_eq!(
        s2.parent.map(|p| p.to_hex()),
        Some(first_id),
        "the second backup has the first as parent"
    );
    let r = restore(&repo, &second_id, env.dir.path()).await;
    assert_same_tree(&cache, &r);

    // Explicit runs of volumes that cannot be backed up fail with the reason.
    let b = explicit_backup(&env, &ns, "etc-now", "app-0", "etc").await;
    assert_eq!(phase(&b.status), Phase::Failed);
    assert!(
        message(&b.status).contains("outside the allowed prefixes"),
        "{:?}",
        b.status
    );
    let b = explicit_backup(&env, &ns, "spare-now", "app-0", "spare").await;
    assert_eq!(phase(&b.status), Phase::Failed);
    assert!(
        message(&b.status).contains("no container of pod app-0 mounts it"),
        "{:?}",
        b.status
    );
    let b = explicit_backup(&env, &ns, "ghost-now", "no-such-pod", "data").await;
    assert_eq!(phase(&b.status), Phase::Failed);
    assert!(message(&b.status).contains("no-such-pod"), "{:?}", b.status);
    // What `kubectl wait --for=condition=Failed` reads.
    let st = b.status.clone().unwrap();
    assert_eq!(
        condition(&st.conditions, "Failed"),
        ("True".into(), "Failed".into(), message(&b.status))
    );
    assert_eq!(condition(&st.conditions, "Completed").0, "False");
    assert!(
        st.observed_generation.is_some() && st.observed_generation == b.metadata.generation,
        "{st:#?}"
    );

    // Events on the runs and on the pod.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), &ns);
    let events = events.list(&Default::default()).await.unwrap().items;
    let completed = |kind: &str| {
        events.iter().any(|e| {
            e.reason.as_deref() == Some("BackupCompleted")
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind)
        })
    };
    assert!(completed("VolumeBackup") && completed("Pod"), "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("BackupFailed")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("outside the allowed prefixes"))),
        "a failed run has a Warning Event with its reason"
    );

    // Metrics and health.
    let (code, body) = agent.http_get("/metrics").await;
    assert_eq!(code, 200);
    let completed = format!(
        "coffer_runs_total{{kind=\"backup\",namespace=\"{ns}\",phase=\"Completed\"}} {}",
        all.len()
    );
    assert!(body.contains(&completed), "no {completed} in\n{body}");
    assert!(body.contains("coffer_runs_in_progress 0"), "{body}");
    assert!(
        body.contains("coffer_last_success_timestamp_seconds{"),
        "{body}"
    );
    assert_eq!(agent.http_get("/healthz").await.0, 200);
    assert_eq!(agent.http_get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_backs_up_as_one_file_and_restores_onto_the_device() {
    if !common::is_root() {
        eprintln!("skipped: block volumes need root (loop devices)");
        return;
    }
    let mut env = Env::new().await;
    let ns = env.namespace("blk").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let mut node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    let pv = pvc_and_pv(&env, &ns, "raw", "Block").await;
    let pod = env
        .pod(
            &ns,
            "db-0",
            &node_name,
            json!({
                "containers": [{"name": "db", "image": "busybox",
                    "volumeDevices": [{"name": "raw", "devicePath": "/dev/xvdb"}]}],
                "volumes": [{"name": "raw", "persistentVolumeClaim": {"claimName": "raw"}}]
            }),
            &[],
        )
        .await;
    let (dev, _) = node
        .block(
            &uid(&pod),
            &format!("volumeDevices/kubernetes.io~csi/{pv}"),
            6 << 20,
        )
        .expect("losetup");
    let content = noise(7, 6 << 20);
    std::fs::write(&dev, &content).unwrap();
    set_running(&env, &ns, "db-0").await;
    let _agent = Agent::start(&env, &AgentConfig::new(&node_name, &node));
    let b = explicit_backup(&env, &ns, "raw-1", "db-0", "raw").await;
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    let r = restore(&repo, &snapshot_of(&b), env.dir.path()).await;
    assert!(
        std::fs::read(r.join("xvdb")).unwrap() == content,
        "the snapshot holds the device's bytes"
    );

    // Wipe the device, then restore onto it: IfEmpty refuses a block volume.
    std::fs::write(&dev, vec![0u8; 6 << 20]).unwrap();
    let vr = |name: &str, policy: &str| {
        json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeRestore",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"snapshot": {"id": snapshot_of(&b)}, "pod": "db-0", "volume": "raw", "policy": policy}
        })
    };
    env.create::<VolumeRestore>(&ns, vr("refused", "IfEmpty"))
        .await;
    let r = env
        .wait_for::<VolumeRestore>(&ns, "refused", "final", |r| is_final(&r.status))
        .await;
    assert_eq!(phase(&r.status), Phase::Failed);
    assert!(
        message(&r.status).contains("policy: Overwrite"),
        "{:?}",
        r.status
    );
    env.create::<VolumeRestore>(&ns, vr("overwrite", "Overwrite"))
        .await;
    let r = env
        .wait_for::<VolumeRestore>(&ns, "overwrite", "final", |r| is_final(&r.status))
        .await;
    assert_eq!(phase(&r.status), Phase::Completed, "{:#?}", r.status);
    assert!(
        std::fs::read(&dev).unwrap()[..content.len()] == content[..],
        "the device holds the snapshot again"
    );
}

/// A pod whose emptyDir `vol` holds one large file (seconds to back up).
async fn big_pod(
    env: &Env,
    node: &common::Node,
    ns: &str,
    name: &str,
    node_name: &str,
    mib: usize,
    seed: u64,
) -> std::path::PathBuf {
    let pod = env
        .pod(
            ns,
            name,
            node_name,
            json!({
                "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "vol", "mountPath": "/vol"}]}],
                "volumes": [{"name": "vol", "emptyDir": {}}]
            }),
            &[],
        )
        .await;
    let dir = node.empty_dir(&uid(&pod), "vol");
    big_file(&dir.join("big.bin"), mib, seed);
    set_running(env, ns, name).await;
    dir
}

async fn create_backup(env: &Env, ns: &str, name: &str, pod: &str) {
    env.create::<VolumeBackup>(
        ns,
        json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"pod": pod, "volume": "vol"}
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_backup_passes_a_large_one_and_cancel_and_pod_deletion_stop_runs() {
    let mut env = Env::new().await;
    let ns = env.namespace("conc").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    // At 4 MiB/s, 64 MiB take 16 s: long enough to pass, cancel and delete
    // it mid-read, with little disk.
    big_pod(&env, &node, &ns, "large", &node_name, 64, 11).await;
    let small = big_pod(&env, &node, &ns, "small", &node_name, 1, 12).await;
    big_pod(&env, &node, &ns, "doomed", &node_name, 64, 13).await;
    let cfg = AgentConfig::new(&node_name, &node)
        .threads(1)
        .limit_read("4MiB/s");
    let _agent = Agent::start(&env, &cfg);
    create_backup(&env, &ns, "large-1", "large").await;
    env.wait_for::<VolumeBackup>(&ns, "large-1", "InProgress", |b| {
        phase(&b.status) == Phase::InProgress
    })
    .await;
    create_backup(&env, &ns, "small-1", "small").await;
    let s = env
        .wait_for::<VolumeBackup>(&ns, "small-1", "final", |b| is_final(&b.status))
        .await;
    assert_eq!(phase(&s.status), Phase::Completed, "{:#?}", s.status);
    let api: Api<VolumeBackup> = Api::namespaced(env.client.clone(), &ns);
    let large = api.get("large-1").await.unwrap();
    assert_eq!(
        phase(&large.status),
        Phase::InProgress,
        "the small backup did not wait behind the large one"
    );
    let r = restore(&repo, &snapshot_of(&s), env.dir.path()).await;
    assert_same_tree(&small, &r);

    // spec.cancel stops the large one through the engine.
    api.patch(
        "large-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await
    .unwrap();
    let l = env
        .wait_for::<VolumeBackup>(&ns, "large-1", "final", |b| is_final(&b.status))
        .await;
    assert_eq!(phase(&l.status), Phase::Canceled, "{:#?}", l.status);
    assert!(l.status.as_ref().unwrap().snapshot_id.is_none());

    // The pod disappears mid-backup: Failed, with a message.
    create_backup(&env, &ns, "doomed-1", "doomed").await;
    env.wait_for::<VolumeBackup>(&ns, "doomed-1", "InProgress", |b| {
        phase(&b.status) == Phase::InProgress
    })
    .await;
    env.delete_pod(&ns, "doomed").await;
    let d = env
        .wait_for::<VolumeBackup>(&ns, "doomed-1", "final", |b| is_final(&b.status))
        .await;
    assert_eq!(phase(&d.status), Phase::Failed, "{:#?}", d.status);
    assert!(message(&d.status).contains("doomed"), "{:?}", d.status);
    // Nothing half-written: the repository checks clean.
    let engine = open_repo(&repo, PASSWORD).await;
    assert_eq!(
        engine.snapshots().await.unwrap().len(),
        1,
        "only the small backup wrote a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_progress_survives_an_agent_sigkill() {
    let mut env = Env::new().await;
    let ns = env.namespace("kill").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    // 24 MiB at 4 MiB/s: 6 s to read, so the kill lands mid-backup.
    let dir = big_pod(&env, &node, &ns, "db-0", &node_name, 24, 21).await;
    let cfg = AgentConfig::new(&node_name, &node)
        .threads(1)
        .limit_read("4MiB/s");
    let mut first = Agent::start(&env, &cfg);
    create_backup(&env, &ns, "db-1", "db-0").await;
    env.wait_for::<VolumeBackup>(&ns, "db-1", "InProgress", |b| {
        phase(&b.status) == Phase::InProgress
    })
    .await;
    first.kill();
    let _second = Agent::start(&env, &cfg);
    let b = env
        .wait_for::<VolumeBackup>(&ns, "db-1", "final", |b| is_final(&b.status))
        .await;
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    let st = b.status.as_ref().unwrap();
    assert_eq!(st.attempts, 2, "resumed once");
    let r = restore(&repo, &snapshot_of(&b), env.dir.path()).await;
    assert_same_tree(&dir, &r);
}

/// A pod with one emptyDir `vol` holding a small tree.
async fn small_pod(
    env: &Env,
    node: &common::Node,
    ns: &str,
    name: &str,
    node_name: &str,
    seed: u64,
    owner: Option<&str>,
) -> std::path::PathBuf {
    let mut meta_owner = json!(null);
    if let Some(o) = owner {
        meta_owner = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": o, "uid": "x", "controller": true}]);
    }
    let pod: Pod = env
        .create(
            ns,
            json!({
                "metadata": {"name": name, "namespace": ns, "ownerReferences": meta_owner},
                "spec": {
                    "nodeName": node_name,
                    "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "vol", "mountPath": "/vol"}]}],
                    "volumes": [{"name": "vol", "emptyDir": {}}]
                }
            }),
        )
        .await;
    let dir = node.empty_dir(&uid(&pod), "vol");
    if seed > 0 {
        fill(&dir, seed, 25);
    }
    set_running(env, ns, name).await;
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_namespace_has_its_own_key() {
    let mut env = Env::new().await;
    let a = env.namespace("tenant-a").await;
    let b = env.namespace("tenant-b").await;
    let c = env.namespace("tenant-c").await;
    let repo_a = env.repository(&a, "default", PASSWORD).await;
    env.repository(&b, "default", "another password entirely")
        .await;
    // Tenant b points a repository at a's bucket with b's own password.
    env.secret(&b, "mine", "password", "another password entirely")
        .await;
    env.repository_at(&b, "stolen", &repo_a, "mine").await;
    // Tenant c forgot its Secret.
    env.repository_at(
        &c,
        "default",
        &env.dir.path().join("repos-c"),
        "coffer-repo",
    )
    .await;
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    small_pod(&env, &node, &a, "p", &node_name, 31, None).await;
    small_pod(&env, &node, &b, "p", &node_name, 32, None).await;
    small_pod(&env, &node, &c, "p", &node_name, 33, None).await;
    let _agent = Agent::start(&env, &AgentConfig::new(&node_name, &node));
    create_backup(&env, &a, "a-1", "p").await;
    create_backup(&env, &b, "b-1", "p").await;
    for (ns, name) in [(&a, "a-1"), (&b, "b-1")] {
        let r = env
            .wait_for::<VolumeBackup>(ns, name, "final", |v| is_final(&v.status))
            .await;
        assert_eq!(phase(&r.status), Phase::Completed, "{ns}: {:#?}", r.status);
    }
    env.create::<VolumeBackup>(
        &b,
        json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
               "metadata": {"name": "b-2", "namespace": b},
               "spec": {"pod": "p", "volume": "vol", "repository": "stolen"}}),
    )
    .await;
    let r = env
        .wait_for::<VolumeBackup>(&b, "b-2", "final", |v| is_final(&v.status))
        .await;
    assert_eq!(phase(&r.status), Phase::Failed);
    assert!(
        message(&r.status).contains("wrong password"),
        "{:?}",
        r.status
    );
    let stolen = env
        .wait_for::<BackupRepository>(&b, "stolen", "NotReady", |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(RepositoryPhase::NotReady))
        })
        .await;
    let st = stolen.status.unwrap();
    assert!(st.message.clone().unwrap().contains("wrong password"));
    let (ready, reason, why) = condition(&st.conditions, "Ready");
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "CannotOpen"));
    assert!(why.contains("wrong password"), "{why}");
    assert_eq!(st.observed_generation, stolen.metadata.generation);
    // No default password: a missing Secret says how to create one.
    create_backup(&env, &c, "c-1", "p").await;
    let r = env
        .wait_for::<VolumeBackup>(&c, "c-1", "final", |v| is_final(&v.status))
        .await;
    assert_eq!(phase(&r.status), Phase::Failed);
    let m = message(&r.status);
    assert!(
        m.contains(&format!(
            "kubectl -n {c} create secret generic coffer-repo --from-literal=password="
        )),
        "{m}"
    );
    let repo_c = env
        .wait_for::<BackupRepository>(&c, "default", "NotReady", |r| r.status.is_some())
        .await;
    assert_eq!(
        repo_c.status.unwrap().phase,
        Some(RepositoryPhase::NotReady)
    );
    // a's repository holds only a's snapshot.
    assert_eq!(
        open_repo(&repo_a, PASSWORD)
            .await
            .snapshots()
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_restore_into_a_running_pod() {
    let mut env = Env::new().await;
    let ns = env.namespace("rst").await;
    env.repository(&ns, "default", PASSWORD).await;
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    let src = small_pod(&env, &node, &ns, "app-0", &node_name, 41, Some("app")).await;
    let _agent = Agent::start(&env, &AgentConfig::new(&node_name, &node));
    let b = explicit_backup(&env, &ns, "app-1", "app-0", "vol").await;
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    // The workload's next pod (a new UID, on this node) gets the data back,
    // found by origin: the StatefulSet and the volume.
    let target = small_pod(&env, &node, &ns, "app-1", &node_name, 0, Some("app")).await;
    std::fs::create_dir(target.join("lost+found")).unwrap();
    let vr = |name: &str, pod: &str| {
        json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeRestore",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"snapshot": {"owner": "StatefulSet/app", "volume": "vol"}, "pod": pod, "volume": "vol"}})
    };
    env.create::<VolumeRestore>(&ns, vr("r1", "app-1")).await;
    let r = env
        .wait_for::<VolumeRestore>(&ns, "r1", "final", |r| is_final(&r.status))
        .await;
    assert_eq!(phase(&r.status), Phase::Completed, "{:#?}", r.status);
    assert_eq!(
        r.status.as_ref().unwrap().snapshot_id,
        Some(snapshot_of(&b))
    );
    std::fs::remove_dir(target.join("lost+found")).unwrap();
    assert_same_tree(&src, &target);
    // IfEmpty refuses a volume with data in it.
    env.create::<VolumeRestore>(&ns, vr("r2", "app-0")).await;
    let r = env
        .wait_for::<VolumeRestore>(&ns, "r2", "final", |r| is_final(&r.status))
        .await;
    assert_eq!(phase(&r.status), Phase::Failed);
    assert!(message(&r.status).contains("not empty"), "{:?}", r.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_back_up_into_one_repository_at_once() {
    let mut env = Env::new().await;
    let ns = env.namespace("multi").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let (node_a, node_b) = (common::Node::new(), common::Node::new());
    let (name_a, name_b) = (
        format!("node-a-{}", short_id()),
        format!("node-b-{}", short_id()),
    );
    let dir_a = small_pod(&env, &node_a, &ns, "web-a", &name_a, 51, None).await;
    let dir_b = small_pod(&env, &node_b, &ns, "web-b", &name_b, 52, None).await;
    let _a = Agent::start(&env, &AgentConfig::new(&name_a, &node_a).threads(1));
    let _b = Agent::start(&env, &AgentConfig::new(&name_b, &node_b).threads(1));
    create_backup(&env, &ns, "a-1", "web-a").await;
    create_backup(&env, &ns, "b-1", "web-b").await;
    for (run, node, dir) in [("a-1", &name_a, &dir_a), ("b-1", &name_b, &dir_b)] {
        let b = env
            .wait_for::<VolumeBackup>(&ns, run, "final", |b| is_final(&b.status))
            .await;
        assert_eq!(phase(&b.status), Phase::Completed, "{run}: {:#?}", b.status);
        // Each run was taken by the agent of its pod's node, and only by it.
        assert_eq!(
            b.status.as_ref().unwrap().node.as_deref(),
            Some(node.as_str())
        );
        let r = restore(&repo, &snapshot_of(&b), env.dir.path()).await;
        assert_same_tree(dir, &r);
    }
}

/// The finished run of volume `vol` of pod `db-0` that a yearly schedule
/// made 800 days ago: the schedule goes on from there, so this year's time
/// is due. Returns its name.
async fn fired_long_ago(env: &Env, ns: &str) -> String {
    use coffer_node_agent::names::{POD_LABEL, SCHEDULED_AT, TRIGGER_LABEL, VOLUME_LABEL};
    let before = chrono::Utc::now() - chrono::Duration::days(800);
    let old = format!("db-0-vol-{}", before.format("%Y%m%d%H%M"));
    env.create::<VolumeBackup>(
        ns,
        json!({
            "metadata": {"name": old, "namespace": ns,
                "labels": {POD_LABEL: "db-0", VOLUME_LABEL: "vol", TRIGGER_LABEL: "schedule"},
                "annotations": {SCHEDULED_AT: before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}},
            "spec": {"pod": "db-0", "volume": "vol"},
        }),
    )
    .await;
    Api::<VolumeBackup>::namespaced(env.client.clone(), ns)
        .patch_status(
            &old,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Completed"}})),
        )
        .await
        .unwrap();
    old
}

/// Annotation schedules are durable: a yearly time missed while no agent ran
/// (its last run, 800 days ago, is all the cluster remembers) fires once
/// when an agent starts, as the latest missed time, and an agent started
/// again fires nothing more before the next New Year.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_annotation_schedule_fires_once_after_the_agent_was_away() {
    use chrono::Datelike;
    use coffer_node_agent::names::{SCHEDULED_AT, TRIGGER_LABEL};
    let mut env = Env::new().await;
    let ns = env.namespace("missed").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    let dir = small_pod(&env, &node, &ns, "db-0", &node_name, 9, None).await;
    let old = fired_long_ago(&env, &ns).await;
    env.annotate(&ns, "db-0", "backup.coffer.dev/volumes", "vol")
        .await;
    env.annotate(&ns, "db-0", "backup.coffer.dev/schedule", "0 0 1 1 *")
        .await;

    let cfg = AgentConfig::new(&node_name, &node);
    let mut first = Agent::start(&env, &cfg);
    let year = chrono::Utc::now().year();
    let fired = format!("db-0-vol-{year}01010000");
    let b = env
        .wait_for::<VolumeBackup>(&ns, &fired, "final", |b| is_final(&b.status))
        .await;
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    let st = b.status.as_ref().unwrap();
    assert!(st.size.is_some() && st.duration.is_some(), "{st:#?}");
    assert_eq!(
        b.annotations().get(SCHEDULED_AT).map(String::as_str),
        Some(format!("{year}-01-01T00:00:00.000Z").as_str())
    );
    let r = restore(&repo, &snapshot_of(&b), env.dir.path()).await;
    assert_same_tree(&dir, &r);
    first.kill();

    // Started again: the schedule starts from this year's time. A backup-now
    // (created in the same pass that reads the schedule) shows the pass is
    // over; nothing else was created.
    let second = Agent::start(&env, &cfg);
    wait_ready(&second).await;
    env.annotate(&ns, "db-0", "backup.coffer.dev/backup-now", "1")
        .await;
    let all = env
        .wait_backups(
            &ns,
            "db-0",
            "the backup-now run and the two scheduled",
            |bs| bs.len() == 3 && bs.iter().all(|b| is_final(&b.status)),
        )
        .await;
    let mut scheduled: Vec<String> = all
        .iter()
        .filter(|b| b.labels().get(TRIGGER_LABEL).map(String::as_str) == Some("schedule"))
        .map(|b| b.name_any())
        .collect();
    scheduled.sort();
    let mut want = vec![old, fired];
    want.sort();
    assert_eq!(scheduled, want, "{all:#?}");
}

/// A pod's schedule keeps what its `backup.coffer.dev/keep-…` annotations
/// say: after a scheduled backup, that volume's scheduled snapshots past the
/// policy are forgotten, and nothing else is: not the volume's other
/// snapshots (a backup-now, a manual run, another workload's schedule), not
/// another volume's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotation_schedule_forgets_its_own_snapshots_past_its_keep_annotations() {
    use coffer_engine::format::snapshot::KubernetesOrigin;
    use coffer_node_agent::names::annotation_schedule_tag;
    let mut env = Env::new().await;
    let ns = env.namespace("keep").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    let dir = small_pod(&env, &node, &ns, "db-0", &node_name, 11, None).await;
    // Earlier snapshots, as the agent records this volume's origin.
    let seed = |volume: &str, tag: Option<&str>| {
        let mut o = coffer_engine::backup::BackupOptions::new(vec![dir.clone()]);
        o.origin = Some(KubernetesOrigin {
            cluster: Some("test-cluster".into()),
            namespace: Some(ns.clone()),
            pod: Some("db-0".into()),
            volume: Some(volume.into()),
            ..Default::default()
        });
        o.tags = tag.map(annotation_schedule_tag).into_iter().collect();
        o
    };
    let store = coffer_engine::storage::open_location(&repo.display().to_string(), true).unwrap();
    let opened = std::sync::Arc::new(
        coffer_engine::Repository::init(store, PASSWORD.as_bytes(), Default::default())
            .await
            .unwrap(),
    );
    let mut ids = Vec::new();
    let mine = Some("Pod/db-0");
    for (volume, tag) in [
        ("vol", mine),
        ("vol", mine),
        ("vol", None),
        ("other", mine),
        // Another workload's schedule on the same volume: its own.
        ("vol", Some("Deployment/reader")),
    ] {
        let s = coffer_engine::backup::backup(opened.clone(), seed(volume, tag))
            .await
            .unwrap();
        ids.push(s.snapshot_id.to_hex());
    }
    let [oldest, newer, untagged, other, theirs] = ids.try_into().unwrap();
    // The schedule last fired long ago, so this year's time is due now.
    fired_long_ago(&env, &ns).await;
    env.annotate(&ns, "db-0", "backup.coffer.dev/keep-last", "2")
        .await;
    env.annotate(&ns, "db-0", "backup.coffer.dev/volumes", "vol")
        .await;
    env.annotate(&ns, "db-0", "backup.coffer.dev/schedule", "0 0 1 1 *")
        .await;

    let _agent = Agent::start(&env, &AgentConfig::new(&node_name, &node));
    let year = chrono::Datelike::year(&chrono::Utc::now());
    let b = env
        .wait_for::<VolumeBackup>(&ns, &format!("db-0-vol-{year}01010000"), "final", |b| {
            is_final(&b.status)
        })
        .await;
    assert_eq!(phase(&b.status), Phase::Completed, "{:#?}", b.status);
    let written = snapshot_of(&b);
    let left = snapshot_ids(&repo, PASSWORD).await;
    let mut want = vec![written.clone(), newer, untagged, other, theirs];
    want.sort();
    assert_eq!(
        left, want,
        "the oldest scheduled snapshot {oldest} alone is forgotten"
    );
    let notes = env.event_notes(&ns, "RetentionApplied").await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("kept 2") && n.contains("forgot 1")),
        "{notes:?}"
    );
    let r = restore(&repo, &written, env.dir.path()).await;
    assert_same_tree(&dir, &r);
}

/// The one status writer tells a write that landed from one that lost to a
/// newer version and from one whose object is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_is_applied_refused_as_stale_or_told_gone() {
    use coffer_node_agent::report::{patch_status, Written};
    let mut env = Env::new().await;
    let ns = env.namespace("status").await;
    let vb: VolumeBackup = env
        .create(
            &ns,
            json!({"metadata": {"name": "b", "namespace": ns}, "spec": {"pod": "p", "volume": "v"}}),
        )
        .await;
    let stale = vb.resource_version();
    let write = |fields: serde_json::Value, at: Option<String>| {
        let client = env.client.clone();
        let ns = ns.clone();
        async move { patch_status::<VolumeBackup>(&client, &ns, "b", fields, at).await }
    };
    assert_eq!(
        write(json!({"message": "one"}), stale.clone())
            .await
            .unwrap(),
        Written::Applied
    );
    assert_eq!(
        write(json!({"message": "two"}), stale).await.unwrap(),
        Written::Conflict
    );
    let api: Api<VolumeBackup> = Api::namespaced(env.client.clone(), &ns);
    let now = api.get("b").await.unwrap();
    assert_eq!(now.status.unwrap().message.as_deref(), Some("one"));
    api.delete("b", &Default::default()).await.unwrap();
    env.wait_gone::<VolumeBackup>(&ns, "b").await;
    assert_eq!(
        write(json!({"message": "three"}), None).await.unwrap(),
        Written::Gone
    );
}

/// Waits for a process to exit and returns its log; fails if it runs on.
async fn exited(child: &mut std::process::Child, log: &std::path::Path, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "{what} exited with success");
            return std::fs::read_to_string(log).unwrap_or_default();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} still runs: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The node agents and the controller compare their cluster names: a
/// controller given another name than the running agents' refuses to
/// start, saying both names, and the agents stop as well (snapshots would
/// carry one name and retention select the other); once both are given the
/// same name again, both run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_and_a_controller_with_different_cluster_names_both_refuse_to_run() {
    use coffer_node_agent::cluster_name::{AGENT_KEY, CONTROLLER_KEY, RECORD};
    use k8s_openapi::api::coordination::v1::Lease;
    let env = Env::new().await;
    if env.server.is_none() {
        eprintln!("skipped on a real cluster: it would change the cluster's recorded name");
        return;
    }
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    let cfg = AgentConfig::new(&node_name, &node);
    let mut agent = Agent::start(&env, &cfg);
    wait_ready(&agent).await;

    let mut wrong = Controller::start(&env, "a", &["--cluster-name", "staging"]);
    let log = exited(&mut wrong.child, &wrong.log, "the controller named staging").await;
    assert!(
        log.contains("the controller (Deployment coffer-controller) here has CLUSTER_NAME \"staging\", but the node agents (DaemonSet coffer-agent) recorded CLUSTER_NAME \"test-cluster\""),
        "{log}"
    );
    let log = exited(&mut agent.child, &agent.log, "the agent named test-cluster").await;
    assert!(
        log.contains("recorded CLUSTER_NAME \"staging\" (Lease coffer-system/coffer-cluster-name)"),
        "{log}"
    );
    let lease = Api::<Lease>::namespaced(env.client.clone(), "coffer-system")
        .get(RECORD)
        .await
        .unwrap();
    let recorded = lease.metadata.annotations.unwrap_or_default();
    assert_eq!(
        recorded.get(CONTROLLER_KEY).map(String::as_str),
        Some("staging")
    );
    assert_eq!(
        recorded.get(AGENT_KEY).map(String::as_str),
        Some("test-cluster")
    );

    // The same name on both sides again: the controller records it, and an
    // agent starts and stays.
    let controller = Controller::start(&env, "b", &[]);
    controller.http_until("/readyz", "ready", |_| true).await;
    let agent = Agent::start(&env, &cfg);
    wait_ready(&agent).await;
    let mut controller = controller;
    assert!(
        controller.child.try_wait().unwrap().is_none(),
        "{}",
        controller.log_text()
    );
}
