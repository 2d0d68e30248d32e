//! Restores into new PersistentVolumeClaims (VolumeRestore `target`), end
//! to end: the real controller and real mover processes against the fake
//! API server, with [`crate::sim`] provisioning and binding the new PVC and
//! running the movers. Each restore is compared with the backed-up data
//! byte for byte, in the PV the restore filled.

use std::path::PathBuf;

use coffer_node_agent::crd::{Phase, VolumeRestore};
use coffer_node_agent::names::FINALIZER;
use coffer_node_agent::names::{RESTORED_BY, RESTORED_FROM};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::Api;
use kube::ResourceExt;
use serde_json::json;

use crate::harness::*;
use crate::sim;
use crate::snapshots::{fake_cluster, snapshot_backup, wait_cleaned};

pub(crate) async fn volume_restore(env: &Env, ns: &str, name: &str, spec: serde_json::Value) {
    env.create::<VolumeRestore>(
        ns,
        json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeRestore",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec
        }),
    )
    .await;
}

/// Waits until the restore is over and cleaned up.
pub(crate) async fn wait_restored(env: &Env, ns: &str, name: &str) -> VolumeRestore {
    env.wait_for::<VolumeRestore>(ns, name, "final and cleaned up", |r| {
        is_final(&r.status) && !r.finalizers().iter().any(|f| f == FINALIZER)
    })
    .await
}

fn message(r: &VolumeRestore) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

/// A PVC, and where its PV's data is.
/// The names of the resolver and the restorer (and its claim) of restore
/// `ns/name`, in coffer's namespace.
pub(crate) fn resolver_of(ns: &str, name: &str) -> String {
    coffer_node_agent::names::home_name("resolve", ns, name)
}

pub(crate) fn restorer_of(ns: &str, name: &str) -> String {
    coffer_node_agent::names::home_name("restore", ns, name)
}

pub(crate) async fn restored_pvc(
    env: &Env,
    ns: &str,
    name: &str,
) -> (PersistentVolumeClaim, PathBuf) {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    let pv_name = pvc.spec.clone().unwrap().volume_name.unwrap();
    let pv = Api::<PersistentVolume>::all(env.client.clone())
        .get(&pv_name)
        .await
        .unwrap();
    let path = pv.spec.unwrap().csi.unwrap().volume_attributes.unwrap()["path"].clone();
    (pvc, PathBuf::from(path))
}

/// Backs up PVC `data` (filled with `seed`) of a new namespace through a
/// snapshot; returns the namespace, the repository, the data and the
/// snapshot's id.
async fn backed_up(env: &mut Env, seed: u64) -> (String, PathBuf, PathBuf, String) {
    let ns = env.namespace("src").await;
    let repo = env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join(format!("csi/source/{ns}"));
    fill(&data, seed, 30);
    sim::csi_pvc(env, &ns, "data", "Filesystem", &data, json!({"app": "pg"})).await;
    snapshot_backup(env, &ns, "nightly", json!({"pvc": "data"})).await;
    let vb = wait_cleaned(env, &ns, "nightly").await;
    let st = vb.status.unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    (ns, repo, data, st.snapshot_id.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_makes_a_new_pvc_in_another_namespace_with_a_mapped_storage_class() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let _c = Controller::start(&env, "a", &["--restore-storage-class", "hostpath=fast"]);
    let (src, repo, data, snapshot) = backed_up(&mut env, 21).await;
    // The target namespace opens the same repository with its own Secret.
    let copy = env.namespace("copy").await;
    env.secret(&copy, "repo-password", "password", PASSWORD)
        .await;
    env.repository_at(&copy, "default", &repo, "repo-password")
        .await;

    // Without the target namespace's consent: refused, nothing is made
    // there, and nothing of it reaches the run's status.
    volume_restore(
        &env,
        &src,
        "uninvited",
        json!({"snapshot": {"pvc": "data"}, "target": {"namespace": copy, "pvc": "data-copy"}}),
    )
    .await;
    let vr = wait_restored(&env, &src, "uninvited").await;
    let st = vr.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Failed, "{st:#?}");
    assert!(
        message(&vr).contains(&format!(
            "namespace {copy} does not allow restores from namespace {src}"
        )),
        "{}",
        message(&vr)
    );
    assert!(
        st.snapshot_id.is_none() && st.source_claim.is_none(),
        "{st:#?}"
    );
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(env.client.clone(), &copy);
    let accounts =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(env.client.clone(), &copy);
    let claims = Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), &copy);
    assert!(pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(accounts
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(claims
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    env.allow_restores_from(&copy, "default", &src).await;

    // The RoleBindings of the source namespace, as they come and go: each
    // mover's, for its account in the target namespace.
    let bindings = {
        use futures::StreamExt;
        let src_ns = src.clone();
        let api = Api::<RoleBinding>::namespaced(env.client.clone(), &src);
        let mut events = kube::runtime::watcher(api, Default::default()).boxed();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(Ok(ev)) = events.next().await {
                match ev {
                    // (Not the namespace's own opt-in binding.)
                    kube::runtime::watcher::Event::Apply(b)
                    | kube::runtime::watcher::Event::InitApply(b)
                        if b.metadata.name.as_deref() != Some("coffer") =>
                    {
                        let subject = b.subjects.unwrap_or_default()[0].namespace.clone();
                        seen.push(format!(
                            "made {} for {}",
                            b.metadata.name.unwrap(),
                            subject.unwrap()
                        ));
                    }
                    kube::runtime::watcher::Event::Delete(b) => {
                        let name = b.metadata.name.unwrap();
                        seen.push(format!("deleted {name}"));
                        if name == restorer_of(&src_ns, "back") {
                            return seen;
                        }
                    }
                    _ => {}
                }
            }
            seen
        })
    };
    volume_restore(
        &env,
        &src,
        "back",
        json!({"snapshot": {"pvc": "data"}, "target": {"namespace": copy, "pvc": "data-copy"}}),
    )
    .await;
    let vr = wait_restored(&env, &src, "back").await;
    let st = vr.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    assert_eq!(st.stage.as_deref(), Some("Done"));
    assert_eq!(st.snapshot_id.as_deref(), Some(snapshot.as_str()));
    let recorded = st.source_claim.unwrap();
    assert_eq!(recorded.storage_class_name.as_deref(), Some("hostpath"));

    // The PVC: the recorded claim, the class mapped, bound, holding the data.
    let (pvc, path) = restored_pvc(&env, &copy, "data-copy").await;
    let spec = pvc.spec.clone().unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(spec.access_modes.unwrap(), vec!["ReadWriteOnce"]);
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"].0,
        "1Gi"
    );
    assert_eq!(pvc.labels().get("app").map(String::as_str), Some("pg"));
    assert_eq!(
        pvc.annotations().get(RESTORED_FROM),
        Some(&snapshot),
        "{pvc:#?}"
    );
    assert_eq!(
        pvc.annotations().get(RESTORED_BY),
        Some(&format!("{src}/back"))
    );
    assert!(pvc.owner_references().is_empty());
    assert_same_tree(&data, &path);

    // The volume filled in coffer's namespace was handed over: the target
    // claim is bound to it, its reclaim policy is back, its record gone.
    let pv = Api::<PersistentVolume>::all(env.client.clone())
        .get(pvc.spec.as_ref().unwrap().volume_name.as_ref().unwrap())
        .await
        .unwrap();
    let pv_spec = pv.spec.clone().unwrap();
    let claim_ref = pv_spec.claim_ref.unwrap();
    assert_eq!(
        (
            claim_ref.namespace.as_deref(),
            claim_ref.name.as_deref(),
            claim_ref.uid
        ),
        (Some(copy.as_str()), Some("data-copy"), pvc.uid())
    );
    assert_eq!(
        pv_spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    assert!(
        pv.annotations().is_empty() && pv.labels().is_empty(),
        "{pv:#?}"
    );
    // Both movers ran in coffer's namespace and are gone, and so is the
    // claim the restorer filled; their account may write the run's status
    // in the source namespace and read the target namespace's Secrets.
    let (resolver, restorer) = (resolver_of(&src, "back"), restorer_of(&src, "back"));
    let movers = [&resolver, &restorer].map(|p| format!("Pod/{COFFER_NAMESPACE}/{p}"));
    let fill = format!("PersistentVolumeClaim/{COFFER_NAMESPACE}/{restorer}");
    let deleted = sim
        .deletions_when(|d| movers.iter().chain([&fill]).all(|m| d.contains(m)))
        .await;
    assert!(!deleted
        .iter()
        .any(|d| d.starts_with("PersistentVolumeClaim/") && d.ends_with("/data-copy")));
    // Each mover's grant, for its account in the target namespace, was made
    // once and deleted once, after it was made.
    let seen = tokio::time::timeout(WAIT, bindings).await.unwrap().unwrap();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for mover in [&resolver, &restorer] {
        let at = |e: String| seen.iter().position(|s| *s == e);
        let made = at(format!("made {mover} for {COFFER_NAMESPACE}"));
        let deleted = at(format!("deleted {mover}"));
        assert!(made.is_some() && deleted > made, "{seen:?}");
    }
    for mover in [&resolver, &restorer] {
        env.assert_no_mover_account(COFFER_NAMESPACE, &src, mover)
            .await;
        env.assert_no_mover_account(COFFER_NAMESPACE, &copy, mover)
            .await;
    }

    // The same target again: refused, and the existing PVC is left alone.
    volume_restore(
        &env,
        &src,
        "again",
        json!({"snapshot": {"id": snapshot}, "target": {"namespace": copy, "pvc": "data-copy"}}),
    )
    .await;
    let vr = wait_restored(&env, &src, "again").await;
    assert_eq!(vr.status.as_ref().unwrap().phase, Phase::Failed);
    assert!(message(&vr).contains("already exists"), "{}", message(&vr));
    assert_same_tree(&data, &restored_pvc(&env, &copy, "data-copy").await.1);

    // A namespace without the repository cannot be restored into.
    let other = env.namespace("bare").await;
    volume_restore(
        &env,
        &src,
        "nowhere",
        json!({"snapshot": {"pvc": "data"}, "target": {"namespace": other, "pvc": "data"}}),
    )
    .await;
    let vr = wait_restored(&env, &src, "nowhere").await;
    assert_eq!(vr.status.as_ref().unwrap().phase, Phase::Failed);
    // The same words whether the repository is missing or only silent.
    assert!(
        message(&vr).contains(&format!(
            "namespace {other} does not allow restores from namespace {src}"
        )),
        "{}",
        message(&vr)
    );

    // An origin with no snapshot: the resolver fails the run, no PVC is made.
    volume_restore(
        &env,
        &src,
        "unknown",
        json!({"snapshot": {"pvc": "nope"}, "target": {"pvc": "nope"}}),
    )
    .await;
    let vr = wait_restored(&env, &src, "unknown").await;
    assert_eq!(vr.status.as_ref().unwrap().phase, Phase::Failed);
    assert!(message(&vr).contains("no snapshot"), "{}", message(&vr));
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), &src)
            .get_opt("nope")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cluster_restores_from_the_url_and_password_alone() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let c = Controller::start(&env, "a", &[]);
    let (src, repo, data, first) = backed_up(&mut env, 22).await;
    // A later backup of changed data: `asOf` between the two picks the first.
    let then = env.dir.path().join("then");
    let copied = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&data)
        .arg(&then)
        .status()
        .unwrap();
    assert!(copied.success());
    let as_of = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    fill(&data, 23, 4);
    snapshot_backup(&env, &src, "later", json!({"pvc": "data"})).await;
    let st = wait_cleaned(&env, &src, "later").await.status.unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    let latest = st.snapshot_id.unwrap();
    drop(c);

    // Another API server, another controller: nothing shared with the first
    // cluster but the repository's URL and password.
    let Some((mut dr, _dr_sim)) = fake_cluster().await else {
        return;
    };
    // The first cluster's repository directory is this cluster's bucket.
    let allow = format!("--allow-file-repository={}", env.dir.path().display());
    let _c2 = Controller::start(&dr, "b", &["--cluster-name", "dr", &allow]);
    let ns = dr.namespace("dr").await;
    dr.secret(&ns, "repo-password", "password", PASSWORD).await;
    dr.repository_at(&ns, "default", &repo, "repo-password")
        .await;
    volume_restore(
        &dr,
        &ns,
        "recover",
        json!({
            "snapshot": {"cluster": "test-cluster", "namespace": src, "pvc": "data"},
            "target": {"pvc": "data", "storageClassName": "standard"},
        }),
    )
    .await;
    let vr = wait_restored(&dr, &ns, "recover").await;
    let st = vr.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    assert_eq!(st.snapshot_id.as_deref(), Some(latest.as_str()));
    let (pvc, path) = restored_pvc(&dr, &ns, "data").await;
    assert_eq!(
        pvc.spec.unwrap().storage_class_name.as_deref(),
        Some("standard")
    );
    assert_same_tree(&data, &path);

    // The same origin at a point in time: the snapshot before the change.
    volume_restore(
        &dr,
        &ns,
        "as-of",
        json!({
            "snapshot": {"cluster": "test-cluster", "namespace": src, "pvc": "data", "asOf": as_of},
            "target": {"pvc": "data-then", "storageClassName": "standard"},
        }),
    )
    .await;
    let st = wait_restored(&dr, &ns, "as-of").await.status.unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    assert_eq!(st.snapshot_id.as_deref(), Some(first.as_str()));
    let (_, path) = restored_pvc(&dr, &ns, "data-then").await;
    assert_same_tree(&then, &path);
}

/// The volume populator: PVC `data` is deleted by mistake; a new claim of
/// that name whose `dataSourceRef` names a RestoreSource (as a rebuilt
/// StatefulSet's volumeClaimTemplates would carry it, with no `pvc` in the
/// source: each claim restores its own origin) binds with the data in it.
/// Its namespace is `restricted` and runs nothing: the volume is filled in
/// coffer's namespace and handed over. A claim naming a missing
/// RestoreSource waits, saying so in an Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_naming_a_restore_source_is_populated_and_binds_with_its_data() {
    let Some((mut env, sim)) = fake_cluster().await else {
        return;
    };
    let _c = Controller::start(&env, "a", &[]);
    let (ns, _repo, data, snapshot) = backed_up(&mut env, 23).await;
    Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), &ns)
        .delete("data", &Default::default())
        .await
        .unwrap();
    env.wait_gone::<PersistentVolumeClaim>(&ns, "data").await;
    env.create::<coffer_node_agent::crd::RestoreSource>(
        &ns,
        json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "RestoreSource",
               "metadata": {"name": "nightly"}, "spec": {"snapshot": {}}}),
    )
    .await;
    let claim = |name: &str, source: &str| {
        json!({"metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "hostpath",
                     "resources": {"requests": {"storage": "1Gi"}},
                     "dataSourceRef": {"apiGroup": "coffer.dev", "kind": "RestoreSource", "name": source}}})
    };
    let made: PersistentVolumeClaim = env.create(&ns, claim("data", "nightly")).await;
    let pvc = env
        .wait_for::<PersistentVolumeClaim>(&ns, "data", "Bound", |c| {
            c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        })
        .await;
    assert_eq!(pvc.uid(), made.uid(), "the same claim, bound");
    let (_, path) = restored_pvc(&env, &ns, "data").await;
    assert_same_tree(&data, &path);
    let run = wait_restored(&env, &ns, "coffer-populate-data").await;
    let st = run.status.unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    assert_eq!(st.snapshot_id.as_deref(), Some(snapshot.as_str()));
    assert_eq!(
        run.metadata.owner_references.unwrap()[0].uid,
        made.uid().unwrap(),
        "the run goes with the claim"
    );
    let notes = env.event_notes(&ns, "Populating").await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("from RestoreSource nightly")),
        "{notes:?}"
    );
    // Filled in coffer's namespace, whose claim went after the handover.
    let fill = restorer_of(&ns, "coffer-populate-data");
    sim.deletions_when(|d| d.contains(&format!("PersistentVolumeClaim/{COFFER_NAMESPACE}/{fill}")))
        .await;

    env.create::<PersistentVolumeClaim>(&ns, claim("other", "missing"))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while env
        .event_notes(&ns, "RestoreSourceNotFound")
        .await
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Event says what the claim waits for"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let notes = env.event_notes(&ns, "RestoreSourceNotFound").await;
    assert!(
        notes[0].contains(&format!("RestoreSource {ns}/missing")),
        "{notes:?}"
    );
    let other = Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), &ns)
        .get("other")
        .await
        .unwrap();
    assert!(
        other.spec.unwrap().volume_name.is_none(),
        "nothing was provisioned for it"
    );
}
