//! The parts of a cluster that the fake API server does not run, played for
//! the controller's tests:
//! - the **snapshot controller**: a VolumeSnapshot of a PVC gets a copy of
//!   the volume's data, a VolumeSnapshotContent, `readyToUse` and
//!   `restoreSize` (or never becomes ready, or fails, as a test asks);
//! - the **binder** and provisioner: a PVC provisioned from a snapshot is
//!   bound to a new PV holding a copy of the snapshot's data; any other
//!   unbound PVC (a restore's target) to a new, empty one;
//! - the **scheduler and kubelet** of mover pods: the pod's container runs
//!   as a local `coffer-agent` process with the pod's arguments and
//!   environment (Secrets resolved), each claim's data as its mount (and
//!   each emptyDir a fresh directory); its exit
//!   becomes the pod's phase and termination message. It talks to the API
//!   server as the pod's ServiceAccount, allowed only what that account's
//!   Roles allow. A deleted pod's
//!   process is killed. Or the pod stays Pending as Unschedulable, or with a
//!   `FailedMount` Event when a hostPath of type `Directory` is missing.
//!
//! - the **group snapshot controller**, when a test serves the
//!   VolumeGroupSnapshot API ([`Sim::serve_group_snapshots`]): a
//!   VolumeGroupSnapshot gets one VolumeSnapshot per PVC its selector
//!   matches (owned by it, named as the real controller names them), and
//!   `readyToUse` once they all are.
//!
//! A volume's data lives where its PV's CSI attribute `path` says: a
//! directory (Filesystem) or a file standing in for the device (Block).
//! Every deletion is recorded with its resourceVersion, so a test can check
//! the order of cleanup.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use coffer_node_agent::controller::csi::VolumeSnapshot;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::harness::Env;

/// The CSI driver of every test volume.
pub const DRIVER: &str = "hostpath.csi.k8s.io";

/// What the simulated cluster does.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// VolumeSnapshots never become ready.
    pub never_ready: bool,
    /// VolumeSnapshots fail with this message.
    pub snapshot_error: Option<String>,
    /// Mover pods are never scheduled.
    pub unschedulable: bool,
    /// Mover pods run but never finish (a slow upload): no process starts.
    pub hold_movers: bool,
}

/// A mover process the kubelet runs for a pod.
struct Mover {
    /// Stops it, as the kubelet does when its pod is deleted.
    stop: tokio::sync::oneshot::Sender<()>,
    pid: Option<u32>,
}

/// A running simulation; its tasks and processes end on drop.
pub struct Sim {
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// (resourceVersion, `Kind/namespace/name`) of every deletion.
    pub deletions: Arc<Mutex<Vec<(u64, String)>>>,
    /// Mover processes started, as `namespace/pod/uid`.
    pub started: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    logs: PathBuf,
    movers: Arc<Mutex<HashMap<String, Mover>>>,
    /// Loop devices attached for new block volumes.
    loops: Arc<Mutex<Vec<String>>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Dropping the senders stops the movers (kill_on_drop).
        self.movers.lock().unwrap().clear();
        for d in self.loops.lock().unwrap().iter() {
            let _ = Command::new("losetup").arg("-d").arg(d).status();
        }
        if std::thread::panicking() {
            for e in std::fs::read_dir(&self.logs)
                .into_iter()
                .flatten()
                .flatten()
            {
                eprintln!(
                    "---- mover log {} ----\n{}",
                    e.path().display(),
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                );
            }
        }
    }
}

fn snapshot_class_api(client: &Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotClass"),
        "volumesnapshotclasses",
    );
    Api::all_with(client.clone(), &ar)
}

fn content_api(client: &Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent"),
        "volumesnapshotcontents",
    );
    Api::all_with(client.clone(), &ar)
}

/// Where a PV's data is.
fn pv_path(pv: &PersistentVolume) -> Option<PathBuf> {
    pv.spec
        .as_ref()?
        .csi
        .as_ref()?
        .volume_attributes
        .as_ref()?
        .get("path")
        .map(PathBuf::from)
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

impl Sim {
    /// Starts the simulation against `env`'s API server, with a default
    /// VolumeSnapshotClass for [`DRIVER`].
    pub async fn start(env: &Env) -> Sim {
        let client = env.client.clone();
        let class: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotClass",
            "metadata": {"name": "hostpath-snapclass", "labels": {"backup.coffer.dev/default": "true"}},
            "driver": DRIVER,
            "deletionPolicy": "Delete",
        }))
        .unwrap();
        let _ = snapshot_class_api(&client)
            .create(&PostParams::default(), &class)
            .await;
        let mut sim = Sim {
            behaviour: Arc::default(),
            deletions: Arc::default(),
            started: Arc::default(),
            tasks: Vec::new(),
            logs: env.dir.path().join("movers"),
            movers: Arc::default(),
            loops: Arc::default(),
        };
        let data = env.dir.path().join("csi");
        let url = env
            .server
            .as_ref()
            .expect("the sim plays a fake cluster")
            .url
            .clone();
        sim.tasks.push(tokio::spawn(snapshotter(
            client.clone(),
            data.clone(),
            sim.behaviour.clone(),
            sim.deletions.clone(),
        )));
        sim.tasks.push(tokio::spawn(binder(
            client.clone(),
            data,
            sim.deletions.clone(),
            sim.loops.clone(),
        )));
        sim.tasks.push(tokio::spawn(pv_deletions(
            client.clone(),
            sim.deletions.clone(),
        )));
        sim.tasks.push(tokio::spawn(rebinder(client.clone())));
        sim.tasks.push(tokio::spawn(kubelet(
            client,
            url,
            env.dir.path().join("movers"),
            sim.behaviour.clone(),
            sim.deletions.clone(),
            sim.started.clone(),
            sim.movers.clone(),
        )));
        sim
    }

    /// Serves `groupsnapshot.storage.k8s.io/v1beta1` (the CRDs, a default
    /// VolumeGroupSnapshotClass for [`DRIVER`]) and runs its controller.
    pub async fn serve_group_snapshots(&mut self, env: &Env) {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let client = env.client.clone();
        for (kind, plural, scope) in [
            ("VolumeGroupSnapshot", "volumegroupsnapshots", "Namespaced"),
            (
                "VolumeGroupSnapshotClass",
                "volumegroupsnapshotclasses",
                "Cluster",
            ),
        ] {
            let crd: CustomResourceDefinition = serde_json::from_value(json!({
                "metadata": {"name": format!("{plural}.{GROUP_SNAPSHOTS}")},
                "spec": {
                    "group": GROUP_SNAPSHOTS, "scope": scope,
                    "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                    "versions": [{"name": "v1beta1", "served": true, "storage": true,
                        "subresources": {"status": {}},
                        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
                },
            }))
            .unwrap();
            Api::<CustomResourceDefinition>::all(client.clone())
                .create(&PostParams::default(), &crd)
                .await
                .unwrap();
        }
        let class: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{GROUP_SNAPSHOTS}/v1beta1"),
            "kind": "VolumeGroupSnapshotClass",
            "metadata": {"name": "hostpath-groupsnapclass",
                "annotations": {"groupsnapshot.storage.kubernetes.io/is-default-class": "true"}},
            "driver": DRIVER,
            "deletionPolicy": "Delete",
        }))
        .unwrap();
        Api::<DynamicObject>::all_with(client.clone(), &group_api("VolumeGroupSnapshotClass"))
            .create(&PostParams::default(), &class)
            .await
            .unwrap();
        self.tasks.push(tokio::spawn(group_snapshotter(
            client,
            self.deletions.clone(),
        )));
    }

    /// Sends `signal` to the mover process of pod `namespace/name` (SIGSTOP
    /// and SIGCONT pause and resume it); false when it runs none.
    pub fn signal(&self, pod: &str, signal: nix::sys::signal::Signal) -> bool {
        let pid = self.movers.lock().unwrap().get(pod).and_then(|m| m.pid);
        pid.is_some_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).is_ok()
        })
    }

    /// The deletions, oldest first, as `Kind/namespace/name`.
    pub fn deletions(&self) -> Vec<String> {
        let mut d = self.deletions.lock().unwrap().clone();
        d.sort();
        d.into_iter().map(|(_, s)| s).collect()
    }

    /// [`Sim::deletions`] once they satisfy `done` (bounded by `WAIT`):
    /// the simulation's watches may trail what the controller and the test
    /// already saw.
    pub async fn deletions_when(&self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + crate::harness::WAIT;
        loop {
            let d = self.deletions();
            if done(&d) || tokio::time::Instant::now() >= deadline {
                return d;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// A bound PVC `name` of `size` on a CSI PV whose data is at `path` (a
/// directory, or a file for `Block`).
pub async fn csi_pvc(
    env: &Env,
    ns: &str,
    name: &str,
    mode: &str,
    path: &Path,
    labels: serde_json::Value,
) {
    let pv_name = format!("pv-{ns}-{name}");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
    let made = pvcs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "volumeMode": mode,
                    "storageClassName": "hostpath",
                    "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
                "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}
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
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "hostpath",
                "claimRef": {"namespace": ns, "name": name, "uid": made.metadata.uid},
                "csi": {"driver": DRIVER, "volumeHandle": pv_name, "volumeAttributes": {"path": path.display().to_string()}},
            },
            "status": {"phase": "Bound"}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
}

fn record(deletions: &Arc<Mutex<Vec<(u64, String)>>>, kind: &str, meta: &kube::api::ObjectMeta) {
    let rv = meta
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    deletions.lock().unwrap().push((
        rv,
        format!(
            "{kind}/{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
    ));
}

/// The snapshot controller.
async fn snapshotter(
    client: Client,
    data: PathBuf,
    behaviour: Arc<Mutex<Behaviour>>,
    deletions: Arc<Mutex<Vec<(u64, String)>>>,
) {
    let api: Api<VolumeSnapshot> = Api::all(client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    while let Some(ev) = stream.next().await {
        let vs = match ev {
            Ok(Event::Apply(vs) | Event::InitApply(vs)) => vs,
            Ok(Event::Delete(vs)) => {
                record(&deletions, "VolumeSnapshot", kube::Resource::meta(&vs));
                continue;
            }
            _ => continue,
        };
        if vs.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)
            || vs.status.as_ref().is_some_and(|s| s.error.is_some())
        {
            continue;
        }
        let b = behaviour.lock().unwrap().clone();
        if b.never_ready {
            continue;
        }
        let ns = vs.namespace().unwrap_or_default();
        let snaps: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
        if let Some(m) = b.snapshot_error {
            let _ = snaps
                .patch_status(
                    &vs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"status": {"readyToUse": false, "error": {"message": m}}}),
                    ),
                )
                .await;
            continue;
        }
        if let Some(content) = vs.spec.source.volume_snapshot_content_name.clone() {
            // Pre-provisioned: bound to its content, ready once the
            // content's snapshot (its handle: here, the data's path) exists.
            let Ok(c) = content_api(&client).get(&content).await else {
                continue;
            };
            let bound_here = c.data["spec"]["volumeSnapshotRef"]["name"] == json!(vs.name_any())
                && c.data["spec"]["volumeSnapshotRef"]["namespace"] == json!(ns);
            let handle = c.data["spec"]["source"]["snapshotHandle"]
                .as_str()
                .unwrap_or_default();
            if !bound_here || handle.is_empty() || !Path::new(handle).exists() {
                continue;
            }
            bind_ready(&client, &snaps, &vs.name_any(), &content, handle).await;
            continue;
        }
        let Some(claim) = vs.spec.source.persistent_volume_claim_name.clone() else {
            continue;
        };
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let Ok(pvc) = pvcs.get(&claim).await else {
            continue;
        };
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        let Ok(pv) = Api::<PersistentVolume>::all(client.clone())
            .get(&pv_name)
            .await
        else {
            continue;
        };
        let Some(from) = pv_path(&pv) else { continue };
        let content = format!("snapcontent-{}", vs.uid().unwrap_or_default());
        let to = data.join("snapshots").join(&content);
        if to.exists() {
            // Taken already; this event is another writer's status patch.
            continue;
        }
        copy(&from, &to);
        let c: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": content, "annotations": {"path": to.display().to_string()}},
            "spec": {
                "driver": DRIVER,
                "deletionPolicy": "Delete",
                "source": {"volumeHandle": pv_name},
                "volumeSnapshotRef": {"namespace": ns, "name": vs.name_any()},
            },
        }))
        .unwrap();
        let _ = content_api(&client)
            .create(&PostParams::default(), &c)
            .await;
        // The storage's handle of the snapshot: here, where its data is.
        let handle = to.display().to_string();
        bind_ready(&client, &snaps, &vs.name_any(), &content, &handle).await;
    }
}

/// Snapshot `name` and its `content` (of snapshot `handle`) are bound and
/// ready, as the snapshot controller reports them.
async fn bind_ready(
    client: &Client,
    snaps: &Api<VolumeSnapshot>,
    name: &str,
    content: &str,
    handle: &str,
) {
    let pp = PatchParams::default();
    let ready = json!({"status": {"readyToUse": true, "snapshotHandle": handle}});
    let _ = content_api(client)
        .patch_status(content, &pp, &Patch::Merge(ready))
        .await;
    let bound = json!({"status": {
        "readyToUse": true,
        "restoreSize": "1Gi",
        "boundVolumeSnapshotContentName": content,
    }});
    let _ = snaps.patch_status(name, &pp, &Patch::Merge(bound)).await;
}

const GROUP_SNAPSHOTS: &str = "groupsnapshot.storage.k8s.io";

pub fn group_api(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP_SNAPSHOTS, "v1beta1", kind))
}

/// The group snapshot controller: member VolumeSnapshots (made ready by the
/// [`snapshotter`]), then the group's `readyToUse`.
async fn group_snapshotter(client: Client, deletions: Arc<Mutex<Vec<(u64, String)>>>) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &group_api("VolumeGroupSnapshot"));
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    while let Some(ev) = stream.next().await {
        let vgs = match ev {
            Ok(Event::Apply(o) | Event::InitApply(o)) => o,
            Ok(Event::Delete(o)) => {
                record(&deletions, "VolumeGroupSnapshot", kube::Resource::meta(&o));
                continue;
            }
            _ => continue,
        };
        if vgs.data["status"]["readyToUse"].as_bool() == Some(true)
            || vgs.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let ns = vgs.namespace().unwrap_or_default();
        let name = vgs.name_any();
        let uid = vgs.uid().unwrap_or_default();
        let labels: Vec<String> = vgs.data["spec"]["source"]["selector"]["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .list(&kube::api::ListParams::default().labels(&labels.join(",")))
            .await
            .unwrap()
            .items;
        let snaps: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
        let mut members = Vec::new();
        for pvc in pvcs {
            let member = format!("snapshot-{}-{}", &uid[..8.min(uid.len())], pvc.name_any());
            let vs: VolumeSnapshot = serde_json::from_value(json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": member, "namespace": ns, "ownerReferences": [{
                    "apiVersion": format!("{GROUP_SNAPSHOTS}/v1beta1"), "kind": "VolumeGroupSnapshot",
                    "name": name, "uid": uid, "controller": true}]},
                "spec": {"source": {"persistentVolumeClaimName": pvc.name_any()}},
            }))
            .unwrap();
            if snaps.create(&PostParams::default(), &vs).await.is_ok() {
                let _ = snaps
                    .patch_status(
                        &member,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"volumeGroupSnapshotName": name}})),
                    )
                    .await;
            }
            members.push(member);
        }
        let client = client.clone();
        tokio::spawn(async move {
            let snaps: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
            for m in &members {
                let ready = |vs: Option<&VolumeSnapshot>| {
                    vs.and_then(|v| v.status.as_ref()?.ready_to_use) == Some(true)
                };
                let _ = kube::runtime::wait::await_condition(snaps.clone(), m, ready).await;
            }
            let _ = Api::<DynamicObject>::namespaced_with(
                client,
                &ns,
                &group_api("VolumeGroupSnapshot"),
            )
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"readyToUse": true}})),
            )
            .await;
        });
    }
}

/// The binder of clones.
async fn binder(
    client: Client,
    data: PathBuf,
    deletions: Arc<Mutex<Vec<(u64, String)>>>,
    loops: Arc<Mutex<Vec<String>>>,
) {
    let api: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    while let Some(ev) = stream.next().await {
        let pvc = match ev {
            Ok(Event::Apply(p) | Event::InitApply(p)) => p,
            Ok(Event::Delete(p)) => {
                record(
                    &deletions,
                    "PersistentVolumeClaim",
                    kube::Resource::meta(&p),
                );
                continue;
            }
            _ => continue,
        };
        let spec = pvc.spec.clone().unwrap_or_default();
        if pvc.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(volume) = &spec.volume_name {
            bind_prebound(&client, &pvc, volume).await;
            continue;
        }
        // A claim of another data source's kind is its populator's: no
        // provisioner touches it (AnyVolumeDataSource).
        let populated = spec.data_source_ref.as_ref().is_some_and(|r| {
            !matches!(r.kind.as_str(), "VolumeSnapshot" | "PersistentVolumeClaim")
        });
        if populated {
            continue;
        }
        let ns = pvc.namespace().unwrap_or_default();
        let pv_name = format!("pvc-{}", pvc.uid().unwrap_or_default());
        let mut to = data.join("volumes").join(&pv_name);
        match spec.data_source.clone() {
            // A clone: a copy of the snapshot's data.
            Some(src) if src.kind == "VolumeSnapshot" => {
                let Ok(vs) = Api::<VolumeSnapshot>::namespaced(client.clone(), &ns)
                    .get(&src.name)
                    .await
                else {
                    continue;
                };
                let Some(content) = vs.status.and_then(|s| s.bound_volume_snapshot_content_name)
                else {
                    continue;
                };
                let Ok(c) = content_api(&client).get(&content).await else {
                    continue;
                };
                // A pre-provisioned content's handle is the path too.
                let Some(from) = c.annotations().get("path").map(PathBuf::from).or_else(|| {
                    c.data["spec"]["source"]["snapshotHandle"]
                        .as_str()
                        .map(PathBuf::from)
                }) else {
                    continue;
                };
                copy(&from, &to);
            }
            Some(_) => continue,
            // A new, empty volume (a restore's target).
            None => {
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                if spec.volume_mode.as_deref() == Some("Block") {
                    // A device, as a driver provisions: a loop device over a
                    // sparse image where this runs as root, else the image.
                    std::fs::File::create(&to)
                        .unwrap()
                        .set_len(NEW_BLOCK_VOLUME)
                        .unwrap();
                    if let Some(dev) = attach_loop(&to) {
                        loops.lock().unwrap().push(dev.clone());
                        to = PathBuf::from(dev);
                    }
                } else {
                    std::fs::create_dir_all(&to).unwrap();
                }
            }
        }
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": spec.access_modes,
                "volumeMode": spec.volume_mode,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.storage_class_name,
                "claimRef": {"namespace": ns, "name": pvc.name_any(), "uid": pvc.uid()},
                "csi": {"driver": DRIVER, "volumeHandle": pv_name, "volumeAttributes": {"path": to.display().to_string()}},
            },
            "status": {"phase": "Bound"}
        }))
        .unwrap();
        let _ = Api::<PersistentVolume>::all(client.clone())
            .create(&PostParams::default(), &pv)
            .await;
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let _ = pvcs
            .patch(
                &pvc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"volumeName": pv_name}})),
            )
            .await;
        let _ = pvcs
            .patch_status(
                &pvc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}}),
                ),
            )
            .await;
    }
}

/// As the PV controller: a volume whose `claimRef` names an existing,
/// unbound claim by its uid (a populator's handover) binds that claim.
async fn rebinder(client: Client) {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    while let Some(ev) = stream.next().await {
        let Ok(Event::Apply(pv) | Event::InitApply(pv)) = ev else {
            continue;
        };
        let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            continue;
        };
        let (Some(ns), Some(name), Some(uid)) = (r.namespace, r.name, r.uid) else {
            continue;
        };
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let Ok(pvc) = pvcs.get(&name).await else {
            continue;
        };
        let unbound = pvc.spec.as_ref().is_some_and(|s| s.volume_name.is_none());
        if pvc.uid().as_deref() != Some(uid.as_str()) || !unbound {
            continue;
        }
        let pp = PatchParams::default();
        let _ = pvcs
            .patch(
                &name,
                &pp,
                &Patch::Merge(json!({"spec": {"volumeName": pv.name_any()}})),
            )
            .await;
        let capacity = pv.spec.as_ref().and_then(|s| s.capacity.clone());
        let bound = json!({"status": {"phase": "Bound", "capacity": capacity}});
        let _ = pvcs.patch_status(&name, &pp, &Patch::Merge(bound)).await;
        let _ = Api::<PersistentVolume>::all(client.clone())
            .patch_status(
                &pv.name_any(),
                &pp,
                &Patch::Merge(json!({"status": {"phase": "Bound"}})),
            )
            .await;
    }
}

/// As the PV controller: a claim that names its volume binds to it when the
/// volume is free or reserved for that claim (its `claimRef` names it,
/// with no uid or this claim's), and not otherwise.
async fn bind_prebound(client: &Client, pvc: &PersistentVolumeClaim, volume: &str) {
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase == Some("Bound") {
        return;
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let Ok(pv) = pvs.get(volume).await else {
        return;
    };
    let (ns, name, uid) = (pvc.namespace(), pvc.name_any(), pvc.uid());
    let free = match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
        None => true,
        Some(r) => {
            r.namespace == ns
                && r.name.as_deref() == Some(name.as_str())
                && (r.uid.is_none() || r.uid == uid)
        }
    };
    if !free {
        return;
    }
    let pp = PatchParams::default();
    let claim_ref = json!({"spec": {"claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "namespace": ns, "name": name, "uid": uid}}});
    let _ = pvs.patch(volume, &pp, &Patch::Merge(claim_ref)).await;
    let _ = pvs
        .patch_status(
            volume,
            &pp,
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await;
    let capacity = pv.spec.as_ref().and_then(|s| s.capacity.clone());
    let _ = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.unwrap_or_default())
        .patch_status(
            &name,
            &pp,
            &Patch::Merge(json!({"status": {"phase": "Bound", "capacity": capacity}})),
        )
        .await;
}

/// The size of a new block volume.
pub const NEW_BLOCK_VOLUME: u64 = 64 << 20;

/// A loop device over `image`, as root.
fn attach_loop(image: &Path) -> Option<String> {
    if !crate::common::is_root() {
        return None;
    }
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(image)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn pv_deletions(client: Client, deletions: Arc<Mutex<Vec<(u64, String)>>>) {
    let pvs = watcher::watcher(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .filter_map(|ev| async move {
        match ev {
            Ok(Event::Delete(pv)) => Some(("PersistentVolume", pv.metadata)),
            _ => None,
        }
    });
    // Only exposed contents are ever deleted here (the snapshotter's own
    // go with nothing).
    let contents = watcher::watcher(content_api(&client), watcher::Config::default()).filter_map(
        |ev| async move {
            match ev {
                Ok(Event::Delete(c)) => Some(("VolumeSnapshotContent", c.metadata)),
                _ => None,
            }
        },
    );
    let mut both = futures::stream::select(pvs.boxed(), contents.boxed());
    while let Some((kind, meta)) = both.next().await {
        record(&deletions, kind, &meta);
    }
}

/// Where the data of claim `ns/name` is, once it is bound.
async fn bound_path(client: &Client, ns: &str, name: &str) -> PathBuf {
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut bound = watcher::watcher(pvcs, cfg).boxed();
    let mut pv_name = None;
    while let Some(ev) = bound.next().await {
        if let Ok(Event::Apply(c) | Event::InitApply(c)) = ev {
            if let Some(v) = c.spec.and_then(|s| s.volume_name) {
                pv_name = Some(v);
                break;
            }
        }
    }
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name.unwrap())
        .await
        .unwrap();
    pv_path(&pv).unwrap()
}

/// As the scheduler says it cannot place a pod, for now or for good.
async fn unschedulable(pods: &Api<Pod>, name: &str, why: &str) {
    let _ = pods
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why}],
            }})),
        )
        .await;
}

/// The scheduler and kubelet of mover pods.
async fn kubelet(
    client: Client,
    url: String,
    logs: PathBuf,
    behaviour: Arc<Mutex<Behaviour>>,
    deletions: Arc<Mutex<Vec<(u64, String)>>>,
    started: Arc<Mutex<Vec<String>>>,
    movers: Arc<Mutex<HashMap<String, Mover>>>,
) {
    std::fs::create_dir_all(&logs).unwrap();
    let api: Api<Pod> = Api::all(client.clone());
    let mut stream = watcher::watcher(
        api,
        watcher::Config::default().labels("app.kubernetes.io/managed-by=coffer-controller"),
    )
    .boxed();
    while let Some(ev) = stream.next().await {
        let pod = match ev {
            Ok(Event::Apply(p) | Event::InitApply(p)) => p,
            Ok(Event::Delete(p)) => {
                record(&deletions, "Pod", kube::Resource::meta(&p));
                let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
                // SIGTERM, as the kubelet stops a container.
                if let Some(mover) = movers.lock().unwrap().remove(&key) {
                    let _ = mover.stop.send(());
                }
                continue;
            }
            _ => continue,
        };
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let key = format!("{ns}/{name}");
        // A pod of the same name made again is another pod.
        let run_key = format!("{key}/{}", pod.uid().unwrap_or_default());
        if pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p != "Pending")
            || started.lock().unwrap().contains(&run_key)
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if behaviour.lock().unwrap().unschedulable {
            unschedulable(
                &pods,
                &name,
                "0/3 nodes are available: 3 node(s) had volume node affinity conflict.",
            )
            .await;
            continue;
        }
        let Some(spec) = pod.spec.clone() else {
            continue;
        };
        if let Some((volume, path)) = missing_host_path(&pod) {
            // As the kubelet: the mount fails, again and again; the pod stays Pending.
            started.lock().unwrap().push(run_key);
            let events: Api<k8s_openapi::api::core::v1::Event> =
                Api::namespaced(client.clone(), &ns);
            let event = json!({
                "metadata": {"name": format!("{name}.mount"), "namespace": ns},
                "involvedObject": {"kind": "Pod", "namespace": ns, "name": name, "uid": pod.uid()},
                "type": "Warning", "reason": "FailedMount",
                "message": format!("MountVolume.SetUp failed for volume \"{volume}\" : hostPath type check failed: {path} is not a directory"),
            });
            let _ = events
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(event).unwrap(),
                )
                .await;
            continue;
        }
        started.lock().unwrap().push(run_key);
        if spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.persistent_volume_claim.is_some())
        {
            // As the scheduler, whose first pass may come before the
            // binder's: on a real cluster this is passing, not a failure.
            unschedulable(&pods, &name, "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.").await;
        }
        if behaviour.lock().unwrap().hold_movers {
            let _ = pods
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "phase": "Running",
                        "conditions": [{"type": "PodScheduled", "status": "True"}],
                    }})),
                )
                .await;
            continue;
        }
        // As the kubelet, wait until each claim is bound; its data's path
        // stands in for the mount or the device.
        let c = &spec.containers[0];
        let mut mounts: HashMap<String, PathBuf> = HashMap::new();
        for v in spec.volumes.iter().flatten() {
            let Some(claim) = &v.persistent_volume_claim else {
                continue;
            };
            let data = bound_path(&client, &ns, &claim.claim_name).await;
            let at = c
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.name == v.name)
                .map(|m| m.mount_path.clone())
                .chain(
                    c.volume_devices
                        .iter()
                        .flatten()
                        .filter(|d| d.name == v.name)
                        .map(|d| d.device_path.clone()),
                );
            for path in at {
                mounts.insert(path, data.clone());
            }
        }
        // An emptyDir is a fresh directory of its own.
        for v in spec.volumes.iter().flatten() {
            if v.empty_dir.is_none() {
                continue;
            }
            let dir = logs.join(format!("{ns}-{name}-{}", v.name));
            std::fs::create_dir_all(&dir).unwrap();
            for m in c
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.name == v.name)
            {
                mounts.insert(m.mount_path.clone(), dir.clone());
            }
        }
        let args: Vec<String> = c
            .args
            .iter()
            .flatten()
            .map(|a| match mounts.get(a) {
                Some(data) => data.display().to_string(),
                None => a.clone(),
            })
            .collect();
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => match &from.secret_key_ref {
                    Some(k) => {
                        let s = Api::<Secret>::namespaced(client.clone(), &ns)
                            .get(&k.name)
                            .await;
                        match s.ok().and_then(|s| s.data?.get(&k.key).cloned()) {
                            Some(v) => String::from_utf8(v.0).unwrap(),
                            None => continue,
                        }
                    }
                    None => name.clone(),
                },
                _ => continue,
            };
            env.insert(e.name.clone(), value);
        }
        // The pod's own ServiceAccount, which the fake API server allows
        // only what its Roles allow.
        let account = spec.service_account_name.as_deref().unwrap_or("default");
        let kubeconfig = logs.join(format!("{ns}-{name}.kubeconfig"));
        std::fs::write(
            &kubeconfig,
            coffer_fake_apiserver::service_account_kubeconfig_yaml(&url, &ns, account),
        )
        .unwrap();
        let log = logs.join(format!("{ns}-{name}.log"));
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_coffer-agent"))
            .args(&args)
            .envs(&env)
            .env("KUBECONFIG", &kubeconfig)
            .env("LOG_FORMAT", "text")
            // A prune notices a backup's end within a heartbeat; a mover
            // paused for a test stays well short of stale.
            .env("COFFER_HEARTBEAT_MS", "200")
            .env("COFFER_STALE_MS", "300000")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let pid = child.id();
        movers
            .lock()
            .unwrap()
            .insert(key.clone(), Mover { stop: stop_tx, pid });
        let _ = pods
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "phase": "Running",
                    "conditions": [{"type": "PodScheduled", "status": "True"}],
                }})),
            )
            .await;
        tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s,
                _ = stop_rx => {
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                    // The pod is gone: nothing to report.
                    let _ = child.wait().await;
                    return;
                }
            };
            // The exit becomes the pod's phase and termination message.
            let code = status.ok().and_then(|s| s.code()).unwrap_or(137);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let phase = if code == 0 { "Succeeded" } else { "Failed" };
            let _ = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {
                    "phase": phase,
                    "containerStatuses": [{"name": "mover", "image": "coffer", "imageID": "", "ready": false,
                        "restartCount": 0, "state": {"terminated": {"exitCode": code,
                        "reason": if code == 0 { "Completed" } else { "Error" }, "message": tail.join("\n")}}}],
                }})))
                .await;
        });
    }
}

/// The first hostPath volume of type `Directory` that is not a directory
/// here (the node), as (volume, path).
fn missing_host_path(pod: &Pod) -> Option<(String, String)> {
    pod.spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?)))
        .find(|(_, h)| h.type_.as_deref() == Some("Directory") && !Path::new(&h.path).is_dir())
        .map(|(v, h)| (v, h.path.clone()))
}
