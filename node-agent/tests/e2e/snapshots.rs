//! The controller's snapshot path, end to end: the real `coffer-agent
//! controller` (one or two replicas) and real `coffer-agent mover`
//! processes against the fake API server, with [`crate::sim`] playing the
//! snapshot controller, the binder, the scheduler and the kubelet.
//!
//! A real cluster (`COFFER_TEST_KUBECONFIG`) runs its own CSI driver and
//! kubelet; these tests put data into volumes through the simulated
//! driver's directories, so they run against the fake API server only.
//! [`crate::cluster`] runs the snapshot path on both.

use coffer_node_agent::controller::csi::VolumeSnapshot;
use coffer_node_agent::crd::{Phase, VolumeBackup};
use coffer_node_agent::names::FINALIZER;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::harness::*;
use crate::sim::{self, Sim};

/// A new fake cluster with the simulation, or `None` on a real cluster.
pub(crate) async fn fake_cluster() -> Option<(Env, Sim)> {
    if std::env::var_os("COFFER_TEST_KUBECONFIG").is_some() {
        eprintln!("skipped on a real cluster: the snapshot tests simulate the CSI driver");
        return None;
    }
    let env = Env::new().await;
    let sim = Sim::start(&env).await;
    Some((env, sim))
}

pub(crate) async fn snapshot_backup(env: &Env, ns: &str, name: &str, spec: serde_json::Value) {
    let mut spec = spec;
    spec["method"] = json!("Snapshot");
    env.create::<VolumeBackup>(
        ns,
        json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec
        }),
    )
    .await;
}

/// Waits until the run is over and cleaned up (its finalizer gone).
pub(crate) async fn wait_cleaned(env: &Env, ns: &str, name: &str) -> VolumeBackup {
    env.wait_for::<VolumeBackup>(ns, name, "final and cleaned up", |b| {
        is_final(&b.status) && !b.finalizers().iter().any(|f| f == FINALIZER)
    })
    .await
}

pub(crate) fn message(vb: &VolumeBackup) -> String {
    vb.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

/// The name of run `ns/run`'s mover pod, clone and exposed snapshot, in
/// coffer's namespace.
pub(crate) fn mover(ns: &str, run: &str) -> String {
    coffer_node_agent::names::home_name("backup", ns, run)
}

/// The run's objects in cleanup order, as [`Sim::deletions`] names them:
/// in coffer's namespace the mover pod, the clone and its volume, the
/// exposed snapshot and its content; then the run's own snapshot, unless
/// it is kept.
fn cleanup_order(ns: &str, run: &str, pv: Option<&str>, snapshot: bool) -> Vec<String> {
    let home = mover(ns, run);
    let mut v = vec![
        format!("Pod/{COFFER_NAMESPACE}/{home}"),
        format!("PersistentVolumeClaim/{COFFER_NAMESPACE}/{home}"),
    ];
    if let Some(pv) = pv {
        v.push(format!("PersistentVolume//{pv}"));
    }
    v.push(format!("VolumeSnapshot/{COFFER_NAMESPACE}/{home}"));
    v.push(format!("VolumeSnapshotContent//{home}"));
    if snapshot {
        v.push(format!("VolumeSnapshot/{ns}/coffer-{run}"));
    }
    v
}

/// Asserts the recorded deletions, in order, once the simulation has seen
/// as many as expected.
async fn assert_deletions(sim: &Sim, want: Vec<String>) {
    assert_eq!(sim.deletions_when(|d| d.len() >= want.len()).await, want);
}

/// The name of the PV the binder made for a clone, once its deletion is
/// recorded.
async fn clone_pv(sim: &Sim) -> Option<String> {
    let pv = |d: &[String]| {
        d.iter()
            .find_map(|d| d.strip_prefix("PersistentVolume//").map(str::to_string))
    };
    pv(&sim.deletions_when(|d| pv(d).is_some()).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_pvc_backs_up_through_a_snapshot_and_everything_is_cleaned_up_in_order() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("snap").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 11, 40);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({"app": "pg"})).await;
    let _c = Controller::start(&env, "a", &[]);

    snapshot_backup(
        &env,
        &ns,
        "nightly",
        json!({"pvc": "data", "tags": ["nightly"]}),
    )
    .await;
    let vb = wait_cleaned(&env, &ns, "nightly").await;
    let st = vb.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    assert_eq!(st.stage.as_deref(), Some("Done"));
    assert_eq!(st.path.as_deref(), Some("/data"));
    let restored = restore(&repo, st.snapshot_id.as_deref().unwrap(), env.dir.path()).await;
    assert_same_tree(&data, &restored);

    // The snapshot records where it came from and the claim's spec.
    let r = open_repo(&repo, PASSWORD).await;
    let snaps = r.snapshots().await.unwrap();
    let (_, snap) = snaps.last().unwrap();
    let origin = snap.origin.clone().unwrap();
    assert_eq!(origin.pvc.as_deref(), Some("data"));
    assert_eq!(origin.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(origin.cluster.as_deref(), Some("test-cluster"));
    assert_eq!(origin.storage_class.as_deref(), Some("hostpath"));
    assert_eq!(origin.volume_mode.as_deref(), Some("Filesystem"));
    let claim = origin.claim.unwrap();
    assert_eq!(claim.capacity.as_deref(), Some("1Gi"));
    assert_eq!(claim.access_modes, vec!["ReadWriteOnce"]);
    assert_eq!(claim.labels.get("app").map(String::as_str), Some("pg"));
    assert!(snap.tags.contains(&"nightly".to_string()));

    // Pod, clone PVC, its PV, then the VolumeSnapshot.
    let pv = clone_pv(&sim).await.expect("the clone's PV was deleted");
    assert_deletions(&sim, cleanup_order(&ns, "nightly", Some(&pv), true)).await;

    // The next backup reads a new clone, made by copying (`cp -a`: new
    // inodes and ctimes): only metadata is read, and the snapshot says so.
    snapshot_backup(&env, &ns, "nightly-2", json!({"pvc": "data"})).await;
    let vb2 = wait_cleaned(&env, &ns, "nightly-2").await;
    let st = vb2.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    // What `kubectl wait --for=condition=Completed` reads.
    let c = |t: &str| crate::condition(&st.conditions, t);
    assert_eq!(
        (c("Completed").0, c("Completed").1),
        ("True".into(), "Completed".into())
    );
    assert_eq!(c("Failed").0, "False");
    assert_eq!(st.observed_generation, vb2.metadata.generation);
    assert_eq!(
        st.progress.as_ref().map(|p| p.bytes_done),
        Some(0),
        "{st:#?}"
    );
    let r = open_repo(&repo, PASSWORD).await;
    let snaps = r.snapshots().await.unwrap();
    let id = st.snapshot_id.clone().unwrap();
    let (_, snap) = snaps.iter().find(|(i, _)| i.to_hex() == id).unwrap();
    assert_eq!(snap.ignored_changes, ["inode", "ctime"]);
    assert_eq!(snap.summary.files_new + snap.summary.files_changed, 0);
    let restored = restore(&repo, &id, env.dir.path()).await;
    assert_same_tree(&data, &restored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_mover_and_a_cancel_clean_up_in_the_same_order() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("fail").await;
    // The password Secret holds a different password than the repository's.
    let repo = env.dir.path().join("repos/shared");
    {
        let store =
            coffer_engine::storage::open_location(&repo.display().to_string(), true).unwrap();
        coffer_engine::Repository::init(store, PASSWORD.as_bytes(), Default::default())
            .await
            .unwrap();
    }
    env.secret(&ns, "wrong", "password", "not the password")
        .await;
    env.repository_at(&ns, "default", &repo, "wrong").await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 12, 5);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    let _c = Controller::start(&env, "a", &[]);

    snapshot_backup(&env, &ns, "bad-password", json!({"pvc": "data"})).await;
    let vb = wait_cleaned(&env, &ns, "bad-password").await;
    assert_eq!(vb.status.as_ref().unwrap().phase, Phase::Failed);
    assert!(message(&vb).contains("wrong password"), "{}", message(&vb));
    let pv = clone_pv(&sim).await.expect("the clone's PV was deleted");
    assert_deletions(&sim, cleanup_order(&ns, "bad-password", Some(&pv), true)).await;

    // Canceled while its snapshot is pending: only the snapshot existed.
    sim.behaviour.lock().unwrap().never_ready = true;
    sim.deletions.lock().unwrap().clear();
    snapshot_backup(&env, &ns, "canceled", json!({"pvc": "data"})).await;
    // The stage is set when the run is claimed, a pass before its
    // VolumeSnapshot is made: wait for the VolumeSnapshot itself.
    env.wait_for::<VolumeSnapshot>(&ns, "coffer-canceled", "created", |_| true)
        .await;
    let api: Api<VolumeBackup> = Api::namespaced(env.client.clone(), &ns);
    api.patch(
        "canceled",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await
    .unwrap();
    let vb = wait_cleaned(&env, &ns, "canceled").await;
    assert_eq!(vb.status.as_ref().unwrap().phase, Phase::Canceled);
    assert_deletions(&sim, vec![format!("VolumeSnapshot/{ns}/coffer-canceled")]).await;
}

/// A run canceled while its mover runs, and a run deleted while the
/// controller is down (SIGKILLed mid-move): both are cleaned up in order, the
/// second by the controller's own restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_canceled_or_deleted_while_their_mover_runs_are_cleaned_up_in_order_across_a_restart()
{
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("midmove").await;
    env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 17, 3);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    sim.behaviour.lock().unwrap().hold_movers = true;
    let mut c = Controller::start(&env, "a", &[]);
    let moving = |run: &'static str| {
        let env = &env;
        let ns = ns.clone();
        async move {
            snapshot_backup(env, &ns, run, json!({"pvc": "data"})).await;
            env.wait_running(COFFER_NAMESPACE, &mover(&ns, run)).await;
        }
    };
    let api: Api<VolumeBackup> = Api::namespaced(env.client.clone(), &ns);

    moving("canceled").await;
    // The mover's own account may read and patch its run's status, and
    // nothing else: not another run's, not its run's spec, not the
    // repository's status, not the Secrets of its namespace but the
    // repository's password, which it reads by name.
    let mover = env
        .client_as(COFFER_NAMESPACE, &self::mover(&ns, "canceled"))
        .await;
    let runs: Api<VolumeBackup> = Api::namespaced(mover.clone(), &ns);
    let nothing = Patch::Merge(json!({"status": {}}));
    let pp = PatchParams::default();
    runs.get_status("canceled").await.expect("its run's status");
    runs.patch_status("canceled", &pp, &nothing)
        .await
        .expect("its run's status");
    let refusals = [
        (
            "another run's status",
            runs.patch_status("other", &pp, &nothing).await.map(drop),
        ),
        (
            "its run's spec",
            runs.patch(
                "canceled",
                &pp,
                &Patch::Merge(json!({"spec": {"cancel": true}})),
            )
            .await
            .map(drop),
        ),
        (
            "the repository's status",
            Api::<coffer_node_agent::crd::BackupRepository>::namespaced(mover.clone(), &ns)
                .patch_status("default", &pp, &nothing)
                .await
                .map(drop),
        ),
        (
            "the namespace's Secrets",
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(mover.clone(), &ns)
                .list(&Default::default())
                .await
                .map(drop),
        ),
        (
            "another Secret",
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(mover.clone(), &ns)
                .get("other-password")
                .await
                .map(drop),
        ),
    ];
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(mover.clone(), &ns)
        .get("default-password")
        .await
        .expect("its repository's password");
    for (what, r) in refusals {
        match r {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{what}: {e:?}"),
            other => panic!("the mover's account reached {what}: {other:?}"),
        }
    }
    api.patch(
        "canceled",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await
    .unwrap();
    let vb = wait_cleaned(&env, &ns, "canceled").await;
    assert_eq!(vb.status.as_ref().unwrap().phase, Phase::Canceled);
    let pv = clone_pv(&sim).await.expect("the clone's PV was deleted");
    assert_deletions(&sim, cleanup_order(&ns, "canceled", Some(&pv), true)).await;
    env.assert_no_mover_account(COFFER_NAMESPACE, &ns, &self::mover(&ns, "canceled"))
        .await;

    sim.deletions.lock().unwrap().clear();
    moving("deleted").await;
    c.kill();
    let uid = api.get("deleted").await.unwrap().uid().unwrap();
    api.delete("deleted", &Default::default()).await.unwrap();
    let _c = Controller::start(&env, "a", &[]);
    tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(
            api.clone(),
            "deleted",
            kube::runtime::conditions::is_deleted(&uid),
        ),
    )
    .await
    .expect("the deleted run's finalizer was never removed")
    .unwrap();
    let pv = clone_pv(&sim).await.expect("the clone's PV was deleted");
    assert_deletions(&sim, cleanup_order(&ns, "deleted", Some(&pv), true)).await;

    // Its node is lost: the taint manager evicts the mover, whose kubelet
    // never confirms (a finalizer stands in for it). The run fails at once,
    // naming why, instead of hanging on a pod that will never finish; the
    // cleanup goes on once the pod is gone.
    sim.deletions.lock().unwrap().clear();
    moving("evicted").await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), COFFER_NAMESPACE);
    let mover = &self::mover(&ns, "evicted");
    pods.patch(
        mover,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["test.coffer.dev/kubelet"]}})),
    )
    .await
    .unwrap();
    pods.patch_status(
        mover,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"conditions": [{"type": "DisruptionTarget",
            "status": "True", "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint"}]}}),
        ),
    )
    .await
    .unwrap();
    pods.delete(mover, &Default::default()).await.unwrap();
    let vb = env
        .wait_for::<VolumeBackup>(&ns, "evicted", "failed", |b| {
            b.status.as_ref().is_some_and(|s| s.phase.is_final())
        })
        .await;
    assert_eq!(vb.status.as_ref().unwrap().phase, Phase::Failed);
    assert!(
        message(&vb).contains(&format!(
            "mover pod {COFFER_NAMESPACE}/{mover} is being deleted before it finished (DeletionByTaintManager"
        )),
        "{}",
        message(&vb)
    );
    assert!(
        sim.deletions().is_empty(),
        "nothing after the mover is deleted while it stays"
    );
    pods.patch(
        mover,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_cleaned(&env, &ns, "evicted").await;
    let pv = clone_pv(&sim).await.expect("the clone's PV was deleted");
    assert_deletions(&sim, cleanup_order(&ns, "evicted", Some(&pv), true)).await;
}

/// A mover on a node that is gone: deleted, it stays Terminating, as its
/// kubelet never confirms. Past `--terminating-limit` the controller deletes
/// it at once (grace period 0), and the cleanup goes on instead of waiting
/// for the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_left_terminating_by_a_lost_node_is_force_deleted_and_cleanup_goes_on() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("lostnode").await;
    env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 18, 2);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    sim.behaviour.lock().unwrap().hold_movers = true;
    env.server
        .as_ref()
        .unwrap()
        .leave_pod_deletions_unconfirmed(COFFER_NAMESPACE);
    let c = Controller::start(&env, "a", &["--terminating-limit", "1s"]);
    snapshot_backup(&env, &ns, "lost", json!({"pvc": "data"})).await;
    env.wait_running(COFFER_NAMESPACE, &mover(&ns, "lost"))
        .await;
    Api::<VolumeBackup>::namespaced(env.client.clone(), &ns)
        .patch(
            "lost",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await
        .unwrap();
    let vb = wait_cleaned(&env, &ns, "lost").await;
    assert_eq!(vb.status.as_ref().unwrap().phase, Phase::Canceled);
    let pv = clone_pv(&sim).await.expect("the clone's PV was deleted");
    assert_deletions(&sim, cleanup_order(&ns, "lost", Some(&pv), true)).await;
    env.assert_no_mover_account(COFFER_NAMESPACE, &ns, &mover(&ns, "lost"))
        .await;
    let log = c.log_text();
    assert!(
        log.contains(&format!(
            "pod {COFFER_NAMESPACE}/{} is still Terminating 1s after its grace period",
            mover(&ns, "lost")
        )),
        "{log}"
    );
}

/// What a run left when it was deleted while no controller ran and its
/// finalizer was removed by hand: in coffer's namespace (tied to the run by
/// its annotation) a mover pod, a clone and an exposed snapshot, its
/// content, and in the run's namespace its snapshot (owned by a
/// VolumeBackup that no longer exists). The start-up sweep deletes them in
/// cleanup order, and sets the clone's retained volume to Delete, so that
/// it goes with its claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_sweep_deletes_what_a_run_deleted_behind_its_back_left() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("sweep").await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 18, 1);
    let home = mover(&ns, "gone");
    let labels = json!({coffer_node_agent::names::RUN_LABEL: "gone",
        "app.kubernetes.io/managed-by": "coffer-controller"});
    let left = json!({
        "name": home,
        "labels": labels,
        "annotations": {coffer_node_agent::names::RUN_ANNOTATION: format!("{ns}/gone")},
    });
    sim::csi_pvc(
        &env,
        COFFER_NAMESPACE,
        &home,
        "Filesystem",
        &data,
        json!({}),
    )
    .await;
    let pv = format!("pv-{COFFER_NAMESPACE}-{home}");
    Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), COFFER_NAMESPACE)
        .patch(
            &home,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": left})),
        )
        .await
        .unwrap();
    Api::<PersistentVolume>::all(env.client.clone())
        .patch(
            &pv,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"persistentVolumeReclaimPolicy": "Retain"}})),
        )
        .await
        .unwrap();
    env.create::<Pod>(
        COFFER_NAMESPACE,
        json!({
            "metadata": left,
            "spec": {"containers": [{"name": "mover", "image": "coffer"}]},
            "status": {"phase": "Running"},
        }),
    )
    .await;
    env.create::<k8s_openapi::api::core::v1::ServiceAccount>(
        COFFER_NAMESPACE,
        json!({"metadata": left}),
    )
    .await;
    let snapshot = |metadata: serde_json::Value, source: serde_json::Value| {
        json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": metadata, "spec": {"source": source},
        })
    };
    env.create::<VolumeSnapshot>(
        COFFER_NAMESPACE,
        snapshot(left.clone(), json!({"volumeSnapshotContentName": home})),
    )
    .await;
    let content: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": left,
        "spec": {"deletionPolicy": "Retain", "driver": sim::DRIVER,
                 "source": {"snapshotHandle": data.display().to_string()},
                 "volumeSnapshotRef": {"namespace": COFFER_NAMESPACE, "name": home}},
    }))
    .unwrap();
    let contents = Api::<kube::api::DynamicObject>::all_with(
        env.client.clone(),
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshotContent",
        )),
    );
    contents
        .create(&Default::default(), &content)
        .await
        .unwrap();
    env.create::<VolumeSnapshot>(
        &ns,
        snapshot(
            json!({"name": "coffer-gone", "labels": labels,
                "ownerReferences": [{"apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
                    "name": "gone", "uid": "a-run-long-gone", "controller": true}]}),
            json!({"persistentVolumeClaimName": "data"}),
        ),
    )
    .await;

    let _c = Controller::start(&env, "a", &[]);
    let snaps: Api<VolumeSnapshot> = Api::namespaced(env.client.clone(), &ns);
    let uid = snaps.get("coffer-gone").await.unwrap().uid().unwrap();
    tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(
            snaps,
            "coffer-gone",
            kube::runtime::conditions::is_deleted(&uid),
        ),
    )
    .await
    .expect("the leftover VolumeSnapshot stays")
    .unwrap();
    assert_deletions(&sim, cleanup_order(&ns, "gone", None, true)).await;
    let policy = Api::<PersistentVolume>::all(env.client.clone())
        .get(&pv)
        .await
        .unwrap()
        .spec
        .unwrap()
        .persistent_volume_reclaim_policy;
    assert_eq!(policy.as_deref(), Some("Delete"));
    // The swept mover's account went with it.
    env.wait_gone::<k8s_openapi::api::core::v1::ServiceAccount>(COFFER_NAMESPACE, &home)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_that_never_become_ready_or_fail_end_the_run_with_their_reason() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("notready").await;
    env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 13, 3);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    let _c = Controller::start(&env, "a", &["--snapshot-timeout", "2s"]);

    sim.behaviour.lock().unwrap().never_ready = true;
    snapshot_backup(&env, &ns, "stuck", json!({"pvc": "data"})).await;
    let vb = wait_cleaned(&env, &ns, "stuck").await;
    assert_eq!(vb.status.as_ref().unwrap().phase, Phase::Failed);
    assert!(
        message(&vb).contains(&format!(
            "VolumeSnapshot {ns}/coffer-stuck did not become ready within 2s"
        )),
        "{}",
        message(&vb)
    );

    {
        let mut b = sim.behaviour.lock().unwrap();
        b.never_ready = false;
        b.snapshot_error =
            Some("rpc error: code = ResourceExhausted desc = snapshot quota exceeded".into());
    }
    snapshot_backup(&env, &ns, "quota", json!({"pvc": "data"})).await;
    let vb = wait_cleaned(&env, &ns, "quota").await;
    assert_eq!(vb.status.as_ref().unwrap().phase, Phase::Failed);
    assert!(
        message(&vb).contains("snapshot quota exceeded"),
        "{}",
        message(&vb)
    );
    assert!(sim.started.lock().unwrap().is_empty(), "no mover ran");

    // A run naming neither a PVC nor a pod fails at once, saying so.
    snapshot_backup(&env, &ns, "nothing", json!({})).await;
    let vb = env
        .wait_for::<VolumeBackup>(&ns, "nothing", "final", |b| is_final(&b.status))
        .await;
    assert!(message(&vb).contains("needs spec.pvc"), "{}", message(&vb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_mover_fails_the_run_at_once_naming_the_reason() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("unsched").await;
    env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 14, 3);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    // Preparation may take 30 minutes: the failure must not wait for it.
    let _c = Controller::start(&env, "a", &["--prepare-timeout", "30m"]);
    sim.behaviour.lock().unwrap().unschedulable = true;
    snapshot_backup(&env, &ns, "nowhere", json!({"pvc": "data"})).await;
    let vb = wait_cleaned(&env, &ns, "nowhere").await;
    assert_eq!(vb.status.as_ref().unwrap().phase, Phase::Failed);
    assert!(
        message(&vb).contains(&format!(
            "mover pod {COFFER_NAMESPACE}/{} cannot be scheduled: 0/3 nodes are available: 3 node(s) had volume node affinity conflict.",
            mover(&ns, "nowhere")
        )),
        "{}",
        message(&vb)
    );
    let pv = clone_pv(&sim).await.expect("the clone's PV was deleted");
    assert_deletions(&sim, cleanup_order(&ns, "nowhere", Some(&pv), true)).await;
}

/// An admission policy refuses the mover pod: the run fails at once with the
/// API server's reason, not after retrying for ever, and is cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_refused_by_admission_fails_the_run_at_once_and_one_refused_for_quota_waits() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("refused").await;
    env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 16, 2);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    let policy = r#"violates PodSecurity "restricted:latest": runAsNonRoot != true"#;
    env.server
        .as_ref()
        .unwrap()
        .forbid_creates("pods", COFFER_NAMESPACE, policy);
    let _c = Controller::start(&env, "a", &["--prepare-timeout", "30m"]);
    snapshot_backup(&env, &ns, "refused", json!({"pvc": "data"})).await;
    let vb = wait_cleaned(&env, &ns, "refused").await;
    assert_eq!(vb.status.as_ref().unwrap().phase, Phase::Failed);
    assert!(
        message(&vb).contains(&format!(
            "the API server refused to create pod {COFFER_NAMESPACE}/{m}: pods \"{m}\" is forbidden: {policy} (403, Forbidden)",
            m = mover(&ns, "refused")
        )),
        "{}",
        message(&vb)
    );
    // No pod was made; the clone and the snapshot go, in order.
    let pv = clone_pv(&sim).await.expect("the clone's PV was deleted");
    assert_deletions(
        &sim,
        cleanup_order(&ns, "refused", Some(&pv), true)[1..].to_vec(),
    )
    .await;

    // An exhausted quota frees up as other objects go: the run tries again
    // until it is lifted, then completes.
    let quota = env.namespace("quota").await;
    env.repository(&quota, "default", PASSWORD).await;
    sim::csi_pvc(&env, &quota, "data", "Filesystem", &data, json!({})).await;
    let server = env.server.as_ref().unwrap();
    server.allow_creates("pods", COFFER_NAMESPACE);
    server.forbid_creates(
        "pods",
        COFFER_NAMESPACE,
        "exceeded quota: pods, requested: pods=1, used: pods=10, limited: pods=10",
    );
    let before = server.refusals();
    snapshot_backup(&env, &quota, "later", json!({"pvc": "data"})).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.refusals() < before + 2 {
        assert!(tokio::time::Instant::now() < deadline, "never tried again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.allow_creates("pods", COFFER_NAMESPACE);
    let vb = wait_cleaned(&env, &quota, "later").await;
    assert_eq!(
        vb.status.as_ref().unwrap().phase,
        Phase::Completed,
        "{vb:#?}"
    );
}

/// A `file://` repository whose directory the node lacks: the kubelet
/// reports the failed hostPath mount only in an Event, and the run fails on
/// it at once, not at `--prepare-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_whose_repository_directory_is_missing_fails_the_run_at_once() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("nodir").await;
    let missing = env.dir.path().join("not-mounted-here/repo");
    env.secret(&ns, "repo-password", "password", PASSWORD).await;
    env.repository_at(&ns, "default", &missing, "repo-password")
        .await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 15, 2);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    let _c = Controller::start(&env, "a", &["--prepare-timeout", "30m"]);
    snapshot_backup(&env, &ns, "nodir", json!({"pvc": "data"})).await;
    let vb = wait_cleaned(&env, &ns, "nodir").await;
    assert_eq!(vb.status.as_ref().unwrap().phase, Phase::Failed);
    assert!(
        message(&vb).contains(&format!(
            "mover pod {COFFER_NAMESPACE}/{} cannot start: FailedMount: MountVolume.SetUp failed for volume \"repository\" : hostPath type check failed: {} is not a directory",
            mover(&ns, "nodir"),
            missing.display()
        )),
        "{}",
        message(&vb)
    );
    assert!(
        !missing.exists(),
        "no repository was made where the share is missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_pvc_of_a_pod_backs_up_as_one_file_and_a_retained_snapshot_stays() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("block").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let device = env.dir.path().join("csi/source/raw.img");
    std::fs::create_dir_all(device.parent().unwrap()).unwrap();
    let content = noise(21, 3 << 20);
    std::fs::write(&device, &content).unwrap();
    sim::csi_pvc(&env, &ns, "raw", "Block", &device, json!({})).await;
    // Named through a pod's volume; the pod need not run.
    env.pod(
        &ns,
        "db-0",
        "node-x",
        json!({"containers": [{"name": "db", "image": "busybox",
            "volumeDevices": [{"name": "disk", "devicePath": "/dev/xvdb"}]}],
            "volumes": [{"name": "disk", "persistentVolumeClaim": {"claimName": "raw"}}]}),
        &[],
    )
    .await;
    let _c = Controller::start(&env, "a", &[]);
    snapshot_backup(
        &env,
        &ns,
        "disk",
        json!({"pod": "db-0", "volume": "disk", "retainSnapshot": true}),
    )
    .await;
    let vb = wait_cleaned(&env, &ns, "disk").await;
    let st = vb.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    let restored = restore(&repo, st.snapshot_id.as_deref().unwrap(), env.dir.path()).await;
    assert!(
        std::fs::read(restored.join("raw")).unwrap() == content,
        "the snapshot holds the device's bytes"
    );
    let r = open_repo(&repo, PASSWORD).await;
    let snaps = r.snapshots().await.unwrap();
    assert_eq!(
        snaps
            .last()
            .unwrap()
            .1
            .origin
            .as_ref()
            .unwrap()
            .volume_mode
            .as_deref(),
        Some("Block")
    );
    // Retained: the VolumeSnapshot stays, no longer owned by the run.
    let pv = clone_pv(&sim).await.expect("the clone's PV was deleted");
    assert_deletions(&sim, cleanup_order(&ns, "disk", Some(&pv), false)).await;
    let vs = Api::<VolumeSnapshot>::namespaced(env.client.clone(), &ns)
        .get("coffer-disk")
        .await
        .unwrap();
    assert!(vs.owner_references().is_empty());

    // Back into a new block PVC: the recorded mode, the device's bytes.
    if !crate::common::is_root() {
        eprintln!("skipped the restore into a new block PVC: it needs root (loop devices)");
        return;
    }
    use crate::pvc_restores::{restored_pvc, volume_restore, wait_restored};
    volume_restore(
        &env,
        &ns,
        "disk-copy",
        json!({"snapshot": {"pvc": "raw"}, "target": {"pvc": "raw-copy"}}),
    )
    .await;
    let st = wait_restored(&env, &ns, "disk-copy").await.status.unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    assert_eq!(st.snapshot_id, vb.status.unwrap().snapshot_id);
    let (pvc, device) = restored_pvc(&env, &ns, "raw-copy").await;
    assert_eq!(pvc.spec.unwrap().volume_mode.as_deref(), Some("Block"));
    let written = std::fs::read(&device).unwrap();
    assert_eq!(
        written.len() as u64,
        sim::NEW_BLOCK_VOLUME,
        "{}",
        device.display()
    );
    assert!(
        written[..content.len()] == content[..],
        "the new block volume holds the device's bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_replicas_leads_and_the_other_finishes_the_run_after_a_sigkill() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("leader").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 15, 20);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    let mut a = Controller::start(&env, "replica-a", &[]);
    env.wait_for::<Lease>(
        COFFER_NAMESPACE,
        "coffer-controller",
        "held by replica-a",
        |l| holder(l).as_deref() == Some("replica-a"),
    )
    .await;
    let b = Controller::start(&env, "replica-b", &[]);
    // Both replicas are ready (a rolling update can complete); the gauge
    // tells the leader from the standby.
    let leading =
        |v: &'static str| move |m: &str| m.contains(&format!("coffer_controller_leading {v}\n"));
    a.http_until("/metrics", "leading 1", leading("1")).await;
    b.http_until("/readyz", "ready as a standby", |_| true)
        .await;
    b.http_until("/metrics", "leading 0", leading("0")).await;

    // The run stops at its snapshot; the leader dies there.
    sim.behaviour.lock().unwrap().never_ready = true;
    snapshot_backup(&env, &ns, "handover", json!({"pvc": "data"})).await;
    env.wait_for::<VolumeBackup>(&ns, "handover", "snapshotting", |b| {
        b.status.as_ref().and_then(|s| s.stage.as_deref()) == Some("Snapshotting")
    })
    .await;
    env.wait_for::<VolumeSnapshot>(&ns, "coffer-handover", "created", |_| true)
        .await;
    assert!(
        !b.log_text().contains("leading"),
        "the standby acted while the leader lived"
    );
    a.kill();

    // The standby takes the Lease, then the snapshot becomes ready.
    env.wait_for::<Lease>(
        COFFER_NAMESPACE,
        "coffer-controller",
        "held by replica-b",
        |l| holder(l).as_deref() == Some("replica-b"),
    )
    .await;
    b.http_until("/metrics", "leading 1", leading("1")).await;
    sim.behaviour.lock().unwrap().never_ready = false;
    Api::<VolumeSnapshot>::namespaced(env.client.clone(), &ns)
        .patch(
            "coffer-handover",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    let vb = wait_cleaned(&env, &ns, "handover").await;
    let st = vb.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    let restored = restore(&repo, st.snapshot_id.as_deref().unwrap(), env.dir.path()).await;
    assert_same_tree(&data, &restored);
    assert_eq!(sim.started.lock().unwrap().len(), 1, "one mover ran");
}

fn holder(l: &Lease) -> Option<String> {
    l.spec.as_ref()?.holder_identity.clone()
}

/// Without MOVER_IMAGE (as deploy/ runs it), mover pods run the controller's
/// own image, read from its pod, so that a kustomize `images:` override
/// changes both, and are pulled with its own imagePullSecrets; a controller that cannot learn it refuses to start,
/// saying what to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn movers_run_the_controllers_own_image() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("image").await;
    env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 3, 4);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;

    let lost = Controller::start_as_deployed(&env, "coffer-controller-gone", &[]);
    let status = tokio::task::spawn_blocking(move || {
        let mut lost = lost;
        let status = lost.child.wait().unwrap();
        (status, lost.log_text())
    });
    let (status, log) = tokio::time::timeout(WAIT, status).await.unwrap().unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("coffer-controller-gone") && log.contains("MOVER_IMAGE"),
        "{log}"
    );

    let image = "registry.example.com/platform/coffer-agent:1.2.3";
    env.create::<Pod>(
        COFFER_NAMESPACE,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "coffer-controller-7d9f", "namespace": COFFER_NAMESPACE},
            "spec": {"containers": [{"name": "controller", "image": image}],
                     "imagePullSecrets": [{"name": "platform-registry"}]},
        }),
    )
    .await;
    sim.behaviour.lock().unwrap().hold_movers = true;
    let _c = Controller::start_as_deployed(&env, "coffer-controller-7d9f", &[]);
    snapshot_backup(&env, &ns, "own", json!({"pvc": "data"})).await;
    let pod = env
        .wait_for::<Pod>(COFFER_NAMESPACE, &mover(&ns, "own"), "created", |_| true)
        .await;
    let spec = pod.spec.unwrap();
    let pulled_with: Vec<_> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(
        pulled_with,
        ["platform-registry"],
        "the controller's own pull Secrets"
    );
    let images: Vec<_> = spec.containers.into_iter().map(|c| c.image).collect();
    assert_eq!(images, [Some(image.to_string())]);
}

/// A finished one-off run goes once `--finished-run-ttl` has passed since
/// it ended; its snapshot stays in the repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_one_off_run_is_deleted_past_its_time_to_live_and_its_snapshot_stays() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("ttl").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/data");
    fill(&data, 19, 2);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    let _c = Controller::start(&env, "a", &["--finished-run-ttl", "1s"]);
    snapshot_backup(&env, &ns, "once", json!({"pvc": "data"})).await;
    let vb = env
        .wait_for::<VolumeBackup>(&ns, "once", "final", |b| is_final(&b.status))
        .await;
    let st = vb.status.unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    // The Size and Duration columns.
    let bytes = st.progress.as_ref().unwrap().bytes_done;
    assert_eq!(
        st.size,
        Some(bytesize::ByteSize(bytes).to_string()),
        "{st:#?}"
    );
    assert!(st.duration.is_some(), "{st:#?}");
    env.wait_gone::<VolumeBackup>(&ns, "once").await;
    let restored = restore(&repo, st.snapshot_id.as_deref().unwrap(), env.dir.path()).await;
    assert_same_tree(&data, &restored);
}
