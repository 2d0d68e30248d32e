//! The snapshot path of a VolumeBackup, pure: which VolumeSnapshotClass, the
//! clone claim, the mover pod, and what a mover pod's status says about its
//! fate. [`crate::controller`] does the API calls around these.
//!
//! The CSI snapshot kinds (`snapshot.storage.k8s.io/v1`) are not in
//! k8s-openapi; [`VolumeSnapshot`] holds the fields used here.

use std::collections::BTreeMap;

use coffer_engine::format::snapshot::ClaimSpec;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::DynamicObject;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::crd::{RecordedClaim, RestoreTarget, SecretKeyRef, SecretRef};

/// The CSI snapshot API group.
pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
/// The PVC annotation that names the VolumeSnapshotClass to use.
pub const CLASS_ANNOTATION: &str = "backup.coffer.dev/snapshot-class";
/// The VolumeSnapshotClass label that makes a class coffer's choice for its
/// driver.
pub const DEFAULT_CLASS_LABEL: &str = "backup.coffer.dev/default";
/// The annotation that makes a class the driver's default.
pub const IS_DEFAULT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";
/// The API group of VolumeGroupSnapshots.
pub const GROUP_SNAPSHOT_GROUP: &str = "groupsnapshot.storage.k8s.io";
/// The annotation that makes a VolumeGroupSnapshotClass the driver's default.
pub const IS_DEFAULT_GROUP_CLASS: &str = "groupsnapshot.storage.kubernetes.io/is-default-class";
/// Where a mover pod sees a filesystem clone (read-only).
pub const SOURCE_DIR: &str = "/coffer/source";
/// Where a mover pod sees a block clone.
pub const SOURCE_DEVICE: &str = "/dev/coffer-source";
/// Where a restore mover finds its new filesystem volume.
pub const TARGET_DIR: &str = "/coffer/target";
/// Where a restore mover finds its new block volume.
pub const TARGET_DEVICE: &str = "/dev/coffer-target";
/// Where a mover finds the repository's credentials Secret.
pub const CREDENTIALS_DIR: &str = "/coffer/credentials";
/// Where a copy mover finds its destination's credentials Secret.
pub const DESTINATION_CREDENTIALS_DIR: &str = "/coffer/destination-credentials";

/// A CSI VolumeSnapshot (the fields coffer reads and writes).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    namespaced,
    status = "VolumeSnapshotStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    /// What is snapshotted.
    pub source: VolumeSnapshotSource,
    /// The class (the driver's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// A VolumeSnapshot's source.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    /// A PVC in the snapshot's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
    /// A pre-provisioned content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_content_name: Option<String>,
}

/// What the snapshot controller reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    /// The content it is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_snapshot_content_name: Option<String>,
    /// Whether a volume can be provisioned from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The smallest volume it restores into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    /// The last error of the snapshot controller or the driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    /// The VolumeGroupSnapshot it was taken in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_name: Option<String>,
}

/// A snapshot error.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How far a VolumeSnapshot is.
#[derive(Clone, Debug, PartialEq)]
pub enum SnapshotState {
    /// Not ready yet.
    Pending,
    /// Ready, with its restore size when known.
    Ready(Option<Quantity>),
    /// The driver or the snapshot controller reported an error.
    Failed(String),
}

/// What a VolumeSnapshot's status says.
pub fn snapshot_state(vs: &VolumeSnapshot) -> SnapshotState {
    let Some(st) = &vs.status else {
        return SnapshotState::Pending;
    };
    if let Some(m) = st.error.as_ref().and_then(|e| e.message.clone()) {
        return SnapshotState::Failed(m);
    }
    if st.ready_to_use == Some(true) {
        return SnapshotState::Ready(st.restore_size.clone());
    }
    SnapshotState::Pending
}

/// How far a VolumeGroupSnapshot (read as a dynamic object, whatever its
/// version) is; its members' sizes are on their VolumeSnapshots.
pub fn group_snapshot_state(vgs: &DynamicObject) -> SnapshotState {
    let st = &vgs.data["status"];
    if let Some(m) = st["error"]["message"].as_str() {
        return SnapshotState::Failed(m.to_string());
    }
    if st["readyToUse"].as_bool() == Some(true) {
        return SnapshotState::Ready(None);
    }
    SnapshotState::Pending
}

/// A VolumeSnapshotClass (cluster-scoped; read as a dynamic object).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotClass {
    /// Its name.
    pub name: String,
    /// Its CSI driver.
    pub driver: String,
    /// Labelled `backup.coffer.dev/default: "true"`.
    pub coffer_default: bool,
    /// Annotated as the driver's default class.
    pub driver_default: bool,
}

impl SnapshotClass {
    /// Reads one from the API's object (a VolumeSnapshotClass, or a
    /// VolumeGroupSnapshotClass with `default_annotation`
    /// [`IS_DEFAULT_GROUP_CLASS`]).
    pub fn from_dynamic(o: &DynamicObject, default_annotation: &str) -> SnapshotClass {
        let is_true = |m: &Option<BTreeMap<String, String>>, k: &str| {
            m.as_ref()
                .and_then(|m| m.get(k))
                .is_some_and(|v| v == "true")
        };
        SnapshotClass {
            name: o.metadata.name.clone().unwrap_or_default(),
            driver: o.data["driver"].as_str().unwrap_or_default().to_string(),
            coffer_default: is_true(&o.metadata.labels, DEFAULT_CLASS_LABEL),
            driver_default: is_true(&o.metadata.annotations, default_annotation),
        }
    }
}

/// The class for a snapshot of a PVC of `driver`: the PVC's annotation, else
/// the driver's class labelled `backup.coffer.dev/default`, else the driver's
/// default class. The error says what to label or annotate.
pub fn choose_class(
    pvc: &str,
    annotation: Option<&str>,
    driver: &str,
    classes: &[SnapshotClass],
) -> Result<String, String> {
    if let Some(name) = annotation {
        return match classes.iter().find(|c| c.name == name) {
            Some(c) if c.driver == driver => Ok(c.name.clone()),
            Some(c) => Err(format!(
                "VolumeSnapshotClass {name:?} (annotation {CLASS_ANNOTATION} of PVC {pvc}) is for driver {}, but the PVC's volume is on {driver}",
                c.driver
            )),
            None => Err(format!(
                "VolumeSnapshotClass {name:?} (annotation {CLASS_ANNOTATION} of PVC {pvc}) does not exist"
            )),
        };
    }
    let of_driver: Vec<&SnapshotClass> = classes.iter().filter(|c| c.driver == driver).collect();
    let coffer_default: fn(&SnapshotClass) -> bool = |c| c.coffer_default;
    let driver_default: fn(&SnapshotClass) -> bool = |c| c.driver_default;
    for pick in [coffer_default, driver_default] {
        let picked: Vec<&SnapshotClass> = of_driver.iter().copied().filter(|c| pick(c)).collect();
        match picked.as_slice() {
            [] => continue,
            [one] => return Ok(one.name.clone()),
            several => {
                let names: Vec<&str> = several.iter().map(|c| c.name.as_str()).collect();
                return Err(format!(
                    "several VolumeSnapshotClasses for driver {driver} are defaults ({}); label exactly one with {DEFAULT_CLASS_LABEL}=true",
                    names.join(", ")
                ));
            }
        }
    }
    Err(format!(
        "no VolumeSnapshotClass for driver {driver} is a default: label one with {DEFAULT_CLASS_LABEL}=true, or annotate PVC {pvc} with {CLASS_ANNOTATION}"
    ))
}

/// The claim's size: its capacity, else its request.
pub fn claim_size(pvc: &PersistentVolumeClaim) -> Option<Quantity> {
    pvc.status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .or_else(|| {
            pvc.spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
        })
        .cloned()
}

/// What a snapshot records of a claim, so that a restore can create it again.
pub fn claim_spec(pvc: &PersistentVolumeClaim) -> ClaimSpec {
    ClaimSpec {
        capacity: claim_size(pvc).map(|q| q.0),
        access_modes: pvc
            .spec
            .as_ref()
            .and_then(|s| s.access_modes.clone())
            .unwrap_or_default(),
        labels: pvc.metadata.labels.clone().unwrap_or_default(),
    }
}

/// Whether the claim is a block device.
pub fn is_block(pvc: &PersistentVolumeClaim) -> bool {
    pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block")
}

/// How the clone of a snapshot is made.
pub struct Clone<'a> {
    /// The clone's name (in the source's namespace).
    pub name: &'a str,
    /// The VolumeSnapshot it is provisioned from.
    pub snapshot: &'a str,
    /// The source claim.
    pub source: &'a PersistentVolumeClaim,
    /// The snapshot's restore size, when it reported one.
    pub restore_size: Option<&'a Quantity>,
    /// Storage class renames for clones (`source class -> clone class`).
    pub storage_class_map: &'a BTreeMap<String, String>,
    /// Ask for ReadOnlyMany instead of the source's access modes.
    pub read_only_many: bool,
    /// Labels (the run label).
    pub labels: &'a BTreeMap<String, String>,
    /// The owning VolumeBackup.
    pub owner: &'a OwnerReference,
}

/// The clone claim: provisioned from the snapshot, sized from its restore
/// size (else the source's size), with the source's volume mode and access
/// modes (or ReadOnlyMany), and its storage class mapped.
pub fn clone_claim(c: &Clone) -> PersistentVolumeClaim {
    let spec = c.source.spec.clone().unwrap_or_default();
    let class = spec
        .storage_class_name
        .as_ref()
        .map(|s| c.storage_class_map.get(s).unwrap_or(s).clone());
    let modes = if c.read_only_many {
        vec!["ReadOnlyMany".to_string()]
    } else {
        spec.access_modes
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| vec!["ReadWriteOnce".to_string()])
    };
    let size = c.restore_size.cloned().or_else(|| claim_size(c.source));
    let mut value = json!({
        "metadata": {
            "name": c.name,
            "namespace": c.source.metadata.namespace,
            "labels": c.labels,
            "ownerReferences": [c.owner],
        },
        "spec": {
            "accessModes": modes,
            "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
            "dataSource": {"apiGroup": SNAPSHOT_GROUP, "kind": "VolumeSnapshot", "name": c.snapshot},
            "resources": {"requests": {"storage": size}},
        }
    });
    if let Some(class) = class {
        value["spec"]["storageClassName"] = json!(class);
    }
    serde_json::from_value(value).unwrap_or_default()
}

/// A new PVC for a restore, made from the claim a snapshot recorded.
pub struct Restored<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// The claim the snapshot recorded.
    pub recorded: &'a RecordedClaim,
    /// The VolumeRestore's target (its class and size win).
    pub target: &'a RestoreTarget,
    /// Storage class renames (`recorded class -> new class`).
    pub storage_class_map: &'a BTreeMap<String, String>,
    /// Annotations (which run made it, from which snapshot).
    pub annotations: &'a BTreeMap<String, String>,
}

/// The restored PVC: the recorded access modes, volume mode and labels;
/// the target's size and class, else the recorded ones (the class mapped).
/// It belongs to no run: deleting the VolumeRestore keeps it.
pub fn restored_claim(r: &Restored) -> Result<PersistentVolumeClaim, String> {
    let size = r
        .target
        .size
        .clone()
        .or_else(|| r.recorded.capacity.clone())
        .ok_or("the snapshot records no claim size; set spec.target.size")?;
    let class = r.target.storage_class_name.clone().or_else(|| {
        r.recorded
            .storage_class_name
            .as_ref()
            .map(|s| r.storage_class_map.get(s).unwrap_or(s).clone())
    });
    let modes = if r.recorded.access_modes.is_empty() {
        vec!["ReadWriteOnce".to_string()]
    } else {
        r.recorded.access_modes.clone()
    };
    let mut value = json!({
        "metadata": {
            "name": r.name,
            "namespace": r.namespace,
            "labels": r.recorded.labels,
            "annotations": r.annotations,
        },
        "spec": {
            "accessModes": modes,
            "volumeMode": r.recorded.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
            "resources": {"requests": {"storage": size}},
        }
    });
    if let Some(class) = class {
        value["spec"]["storageClassName"] = json!(class);
    }
    serde_json::from_value(value).map_err(|e| format!("the restored claim: {e}"))
}

/// The directory of a local repository URL (`file:///path` or `/path`),
/// which a mover pod can only reach as the same directory on its node (an
/// NFS share mounted on every node, or a one-node cluster). `None` for an
/// object store, and for a relative path, which names nothing in a pod.
pub fn local_repository_dir(url: &str) -> Option<&str> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    (!url.contains("://") || url.starts_with("file://"))
        .then_some(path)
        .filter(|p| p.starts_with('/'))
}

/// What a mover pod runs with.
pub struct Mover<'a> {
    /// The pod's name (in the run's namespace).
    pub name: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// The image holding `coffer-agent`.
    pub image: &'a str,
    /// The volume it reads or writes (none for a mover that only looks
    /// into the repository).
    pub volume: Option<MoverVolume<'a>>,
    /// `coffer-agent` arguments.
    pub args: Vec<String>,
    /// The repository's password.
    pub password: &'a SecretKeyRef,
    /// The repository's credentials Secret, mounted at [`CREDENTIALS_DIR`].
    pub credentials: Option<&'a SecretRef>,
    /// A local repository's directory (see [`local_repository_dir`]),
    /// mounted from the node at the same path.
    pub repository_dir: Option<&'a str>,
    /// Memory limit (`512Mi`).
    pub memory: &'a str,
    /// Labels (the run label).
    pub labels: &'a BTreeMap<String, String>,
    /// The owning run (none when it is in another namespace).
    pub owner: Option<&'a OwnerReference>,
    /// A copy's second repository: its password (as `COFFER_TO_PASSWORD`),
    /// credentials (at [`DESTINATION_CREDENTIALS_DIR`]) and local directory.
    pub destination: Option<Destination<'a>>,
}

/// The repository a copy mover writes into.
#[derive(Clone, Copy, Debug)]
pub struct Destination<'a> {
    /// Its password.
    pub password: &'a SecretKeyRef,
    /// Its credentials Secret.
    pub credentials: Option<&'a SecretRef>,
    /// A local repository's directory, mounted from the node.
    pub repository_dir: Option<&'a str>,
}

/// A mover's one volume.
#[derive(Clone, Copy, Debug)]
pub struct MoverVolume<'a> {
    /// The claim.
    pub claim: &'a str,
    /// Whether it is a block device.
    pub block: bool,
    /// Written (a restore, mounted at [`TARGET_DIR`] or [`TARGET_DEVICE`])
    /// rather than read (a backup, at [`SOURCE_DIR`] or [`SOURCE_DEVICE`],
    /// read-only).
    pub write: bool,
}

impl MoverVolume<'_> {
    /// Where the mover finds it.
    pub fn path(&self) -> &'static str {
        match (self.write, self.block) {
            (false, false) => SOURCE_DIR,
            (false, true) => SOURCE_DEVICE,
            (true, false) => TARGET_DIR,
            (true, true) => TARGET_DEVICE,
        }
    }
}

/// The mover pod: its volume mounted (read-only for a backup) or attached
/// as a device, the password from its Secret, nothing else from the cluster
/// (no API token but its own ServiceAccount's), never restarted.
pub fn mover_pod(m: &Mover) -> Pod {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut devices = Vec::new();
    if let Some(v) = &m.volume {
        let name = if v.write { "target" } else { "source" };
        volumes.push(json!({
            "name": name,
            "persistentVolumeClaim": {"claimName": v.claim, "readOnly": !v.write && !v.block},
        }));
        if v.block {
            devices.push(json!({"name": name, "devicePath": v.path()}));
        } else {
            mounts.push(json!({"name": name, "mountPath": v.path(), "readOnly": !v.write}));
        }
    }
    // Root reads every file, whoever owns it; a restore also writes them
    // with their recorded owners and modes. Nothing else.
    let capabilities: &[&str] = if m.volume.is_some_and(|v| v.write) {
        &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]
    } else {
        &["DAC_READ_SEARCH"]
    };
    if let Some(c) = m.credentials {
        volumes.push(json!({"name": "credentials", "secret": {"secretName": c.name}}));
        mounts.push(json!({"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": true}));
    }
    if let Some(dir) = m.repository_dir {
        // `Directory`, not `DirectoryOrCreate`: on a node where the shared
        // directory is missing the pod fails to start instead of writing a
        // repository nobody else sees.
        volumes.push(json!({"name": "repository", "hostPath": {"path": dir, "type": "Directory"}}));
        mounts.push(json!({"name": "repository", "mountPath": dir}));
    }
    let mut env = vec![
        json!({"name": "COFFER_PASSWORD", "valueFrom": {"secretKeyRef": {"name": m.password.name, "key": m.password.key}}}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    if let Some(d) = &m.destination {
        env.push(json!({"name": "COFFER_TO_PASSWORD", "valueFrom": {"secretKeyRef": {"name": d.password.name, "key": d.password.key}}}));
        if let Some(c) = d.credentials {
            volumes
                .push(json!({"name": "destination-credentials", "secret": {"secretName": c.name}}));
            mounts.push(json!({"name": "destination-credentials", "mountPath": DESTINATION_CREDENTIALS_DIR, "readOnly": true}));
        }
        if let Some(dir) = d
            .repository_dir
            .filter(|dir| Some(*dir) != m.repository_dir)
        {
            volumes.push(
                json!({"name": "destination", "hostPath": {"path": dir, "type": "Directory"}}),
            );
            mounts.push(json!({"name": "destination", "mountPath": dir}));
        }
    }
    volumes.push(json!({"name": "cache", "emptyDir": {}}));
    mounts.push(json!({"name": "cache", "mountPath": "/tmp"}));
    let value = json!({
        "metadata": {
            "name": m.name,
            "namespace": m.namespace,
            "labels": m.labels,
            "ownerReferences": m.owner.map(|o| vec![o]),
        },
        "spec": {
            "restartPolicy": "Never",
            // Its own account ([`crate::controller::create_mover`]).
            "serviceAccountName": m.name,
            "containers": [{
                "name": "mover",
                "image": m.image,
                "args": m.args,
                "env": env,
                "volumeMounts": mounts,
                "volumeDevices": devices,
                "resources": {"requests": {"memory": "128Mi"}, "limits": {"memory": m.memory}},
                "securityContext": {
                    "runAsUser": 0,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"], "add": capabilities},
                },
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "volumes": volumes,
        }
    });
    serde_json::from_value(value).unwrap_or_default()
}

/// Why a mover pod will never finish its work, when its status already
/// says so: it failed, it is being deleted (evicted, drained, or its node
/// was lost), it cannot be scheduled, or its container cannot start.
/// `None` while it may still run (or ran to the end).
pub fn mover_failure(pod: &Pod) -> Option<String> {
    let name = format!(
        "mover pod {}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let st = pod.status.clone().unwrap_or_default();
    if st.phase.as_deref() == Some("Succeeded") {
        return None;
    }
    if pod.metadata.deletion_timestamp.is_some() && st.phase.as_deref() != Some("Failed") {
        // Only cleanup deletes a mover, after its run ended: this one is
        // going for another reason and will not finish (a node that died
        // leaves it Terminating until the node comes back).
        let why = st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
            .map(|c| {
                let reason = c.reason.as_deref().unwrap_or("deleted");
                match c.message.as_deref().filter(|m| !m.is_empty()) {
                    Some(m) => format!("{reason}: {m}"),
                    None => reason.to_string(),
                }
            })
            .unwrap_or_else(|| "deleted or evicted".into());
        return Some(format!(
            "{name} is being deleted before it finished ({why})"
        ));
    }
    let containers = st.container_statuses.iter().flatten();
    if st.phase.as_deref() == Some("Failed") {
        let why = containers
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
            .map(|t| {
                let mut s = format!("exit code {}", t.exit_code);
                if let Some(r) = &t.reason {
                    s.push_str(&format!(" ({r})"));
                }
                if let Some(m) = t
                    .message
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                {
                    s.push_str(&format!(": {}", last_line(m)));
                }
                s
            })
            .next()
            .or_else(|| st.message.clone())
            .or_else(|| st.reason.clone())
            .unwrap_or_else(|| "no reason given".into());
        return Some(format!("{name} failed: {why}"));
    }
    for c in st.conditions.iter().flatten() {
        if c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && !c.message.as_deref().is_some_and(waits_for_its_claim)
        {
            return Some(format!(
                "{name} cannot be scheduled: {}",
                c.message.as_deref().unwrap_or("no node fits")
            ));
        }
    }
    for c in containers {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.as_deref().unwrap_or_default();
        // Not `ErrImagePull`: a first pull can fail on a passing registry
        // error; the kubelet says `ImagePullBackOff` seconds later if the
        // next one fails too.
        if matches!(
            reason,
            "ImagePullBackOff"
                | "InvalidImageName"
                | "CreateContainerConfigError"
                | "CreateContainerError"
        ) {
            return Some(format!(
                "{name} cannot start: {reason}: {}",
                w.message.as_deref().unwrap_or_default()
            ));
        }
    }
    None
}

/// Whether the scheduler's reason is only that the pod's claim is not bound
/// yet (a clone or restore target still being provisioned): the scheduler
/// tries again once it binds, so this is left to `--prepare-timeout`.
fn waits_for_its_claim(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("unbound immediate persistentvolumeclaims")
        || (m.contains("persistentvolumeclaim") && m.contains("not found"))
}

/// A mount the kubelet reports it can never make, from a pod's events: a
/// hostPath of type `Directory` that is missing on the node (a `file://`
/// repository that is not there). Other mount failures may pass (a volume
/// still attaching) and are left to `--prepare-timeout`.
pub fn permanent_mount_failure(events: &[k8s_openapi::api::core::v1::Event]) -> Option<String> {
    events
        .iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("FailedMount")
        })
        .filter_map(|e| e.message.as_deref())
        .find(|m| m.contains("hostPath type check failed"))
        .map(|m| format!("FailedMount: {m}"))
}

/// Whether a mover pod's container has started (preparation is over).
pub fn mover_started(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running" | "Succeeded" | "Failed")
    )
}

/// The last non-empty line of a message (a mover's log ends with its error).
fn last_line(m: &str) -> &str {
    m.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, driver: &str, coffer: bool, default: bool) -> SnapshotClass {
        SnapshotClass {
            name: name.into(),
            driver: driver.into(),
            coffer_default: coffer,
            driver_default: default,
        }
    }

    #[test]
    fn class_choice_follows_annotation_then_label_then_driver_default() {
        let classes = [
            class("fast", "csi.a", false, true),
            class("backup", "csi.a", true, false),
            class("other", "csi.b", false, true),
        ];
        assert_eq!(
            choose_class("db", None, "csi.a", &classes),
            Ok("backup".into())
        );
        assert_eq!(
            choose_class("db", Some("fast"), "csi.a", &classes),
            Ok("fast".into())
        );
        assert_eq!(
            choose_class("db", None, "csi.b", &classes),
            Ok("other".into())
        );
        let e = choose_class("db", Some("other"), "csi.a", &classes).unwrap_err();
        assert!(e.contains("is for driver csi.b"), "{e}");
        let e = choose_class("db", Some("gone"), "csi.a", &classes).unwrap_err();
        assert!(
            e.contains("\"gone\"") && e.contains("does not exist"),
            "{e}"
        );
        let e = choose_class("db", None, "csi.c", &classes).unwrap_err();
        assert!(
            e.contains("csi.c") && e.contains(DEFAULT_CLASS_LABEL),
            "{e}"
        );
        let two = [
            class("x", "csi.a", true, false),
            class("y", "csi.a", true, false),
        ];
        let e = choose_class("db", None, "csi.a", &two).unwrap_err();
        assert!(e.contains("x, y"), "{e}");
    }

    fn pvc(value: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_restored_claim_follows_the_recording_unless_the_target_says_otherwise() {
        let recorded = RecordedClaim {
            capacity: Some("8Gi".into()),
            access_modes: vec!["ReadWriteOnce".into()],
            volume_mode: Some("Block".into()),
            storage_class_name: Some("fast".into()),
            labels: BTreeMap::from([("app".to_string(), "pg".to_string())]),
        };
        let map = BTreeMap::from([("fast".to_string(), "standard".to_string())]);
        let annotations = BTreeMap::new();
        let target = RestoreTarget {
            pvc: "data".into(),
            ..Default::default()
        };
        let r = Restored {
            name: "data",
            namespace: "copy",
            recorded: &recorded,
            target: &target,
            storage_class_map: &map,
            annotations: &annotations,
        };
        let c = restored_claim(&r).unwrap();
        assert_eq!(c.metadata.namespace.as_deref(), Some("copy"));
        assert_eq!(c.metadata.labels.unwrap()["app"], "pg");
        assert!(c.metadata.owner_references.is_none());
        let spec = c.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("standard"));
        assert_eq!(spec.volume_mode.as_deref(), Some("Block"));
        assert_eq!(spec.access_modes.unwrap(), vec!["ReadWriteOnce"]);
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"].0,
            "8Gi"
        );
        // The target's class and size win.
        let sized = RestoreTarget {
            storage_class_name: Some("slow".into()),
            size: Some("20Gi".into()),
            ..target.clone()
        };
        let spec = restored_claim(&Restored {
            target: &sized,
            ..r
        })
        .unwrap()
        .spec
        .unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("slow"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"].0,
            "20Gi"
        );
        // Nothing recorded and no size: a clear error.
        let bare = RecordedClaim::default();
        let e = restored_claim(&Restored {
            recorded: &bare,
            ..r
        })
        .unwrap_err();
        assert!(e.contains("spec.target.size"), "{e}");
    }

    #[test]
    fn the_clone_takes_the_snapshot_size_mode_and_mapped_class() {
        let source = pvc(json!({
            "metadata": {"name": "data", "namespace": "db", "labels": {"app": "pg"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block", "storageClassName": "fast",
                     "resources": {"requests": {"storage": "5Gi"}}},
            "status": {"capacity": {"storage": "8Gi"}}
        }));
        let labels = BTreeMap::from([(crate::names::RUN_LABEL.to_string(), "run".to_string())]);
        let owner = OwnerReference::default();
        let map = BTreeMap::from([("fast".to_string(), "cheap".to_string())]);
        let size = Quantity("9Gi".into());
        let mut c = Clone {
            name: "coffer-run",
            snapshot: "coffer-run",
            source: &source,
            restore_size: Some(&size),
            storage_class_map: &map,
            read_only_many: false,
            labels: &labels,
            owner: &owner,
        };
        let clone = clone_claim(&c);
        let spec = clone.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("cheap"));
        assert_eq!(spec.volume_mode.as_deref(), Some("Block"));
        assert_eq!(spec.access_modes.unwrap(), vec!["ReadWriteOnce"]);
        assert_eq!(spec.data_source.unwrap().name, "coffer-run");
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"].0,
            "9Gi"
        );
        assert_eq!(clone.metadata.namespace.as_deref(), Some("db"));
        // No restore size: the source's capacity; ReadOnlyMany when asked.
        c.restore_size = None;
        c.read_only_many = true;
        let spec = clone_claim(&c).spec.unwrap();
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"].0,
            "8Gi"
        );
        assert_eq!(spec.access_modes.unwrap(), vec!["ReadOnlyMany"]);
        let rec = claim_spec(&source);
        assert_eq!(rec.capacity.as_deref(), Some("8Gi"));
        assert_eq!(rec.labels["app"], "pg");
        assert!(is_block(&source));
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "m", "namespace": "ns"}, "status": status}),
        )
        .unwrap()
    }

    #[test]
    fn a_local_repository_is_mounted_into_the_mover_from_its_node() {
        assert_eq!(
            local_repository_dir("file:///srv/backup"),
            Some("/srv/backup")
        );
        assert_eq!(local_repository_dir("/srv/backup"), Some("/srv/backup"));
        assert_eq!(local_repository_dir("repo"), None);
        assert_eq!(local_repository_dir("s3://bucket/file:///x"), None);
        let labels = BTreeMap::new();
        let password = SecretKeyRef {
            name: "pw".into(),
            key: "password".into(),
        };
        let mover = |dir| {
            let pod = mover_pod(&Mover {
                name: "coffer-run",
                namespace: "team-a",
                image: "coffer",
                volume: None,
                args: Vec::new(),
                password: &password,
                credentials: None,
                repository_dir: dir,
                memory: "1Gi",
                labels: &labels,
                owner: None,
                destination: None,
            });
            serde_json::to_value(pod.spec.unwrap()).unwrap()
        };
        let spec = mover(Some("/srv/backup"));
        assert!(spec["volumes"].as_array().unwrap().contains(&json!(
            {"name": "repository", "hostPath": {"path": "/srv/backup", "type": "Directory"}}
        )));
        assert!(spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "repository", "mountPath": "/srv/backup"})));
        let spec = mover(None);
        assert!(!spec.to_string().contains("hostPath"), "{spec}");
    }

    #[test]
    fn a_missing_host_path_is_a_permanent_mount_failure_and_an_attaching_volume_is_not() {
        let event = |type_: &str, reason: &str, message: &str| {
            serde_json::from_value::<k8s_openapi::api::core::v1::Event>(json!({
                "metadata": {"name": "e"}, "involvedObject": {},
                "type": type_, "reason": reason, "message": message
            }))
            .unwrap()
        };
        let attaching = event(
            "Warning",
            "FailedMount",
            "Unable to attach or mount volumes: unmounted volumes=[source]: timed out waiting for the condition",
        );
        let missing = event(
            "Warning",
            "FailedMount",
            r#"MountVolume.SetUp failed for volume "repository" : hostPath type check failed: /srv/backup is not a directory"#,
        );
        let normal = event("Normal", "Scheduled", "hostPath type check failed (quoted)");
        assert_eq!(permanent_mount_failure(&[attaching.clone(), normal]), None);
        assert_eq!(
            permanent_mount_failure(&[attaching, missing]).unwrap(),
            r#"FailedMount: MountVolume.SetUp failed for volume "repository" : hostPath type check failed: /srv/backup is not a directory"#
        );
    }

    #[test]
    fn mover_failures_are_read_from_conditions_and_container_states() {
        assert_eq!(mover_failure(&pod(json!({"phase": "Pending"}))), None);
        assert_eq!(mover_failure(&pod(json!({"phase": "Succeeded"}))), None);
        let unsched = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory."}]}),
        );
        assert_eq!(
            mover_failure(&unsched).unwrap(),
            "mover pod ns/m cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory."
        );
        // The clone is still being provisioned: the scheduler tries again.
        for message in [
            "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.",
            r#"persistentvolumeclaim "coffer-clone-x" not found"#,
        ] {
            let waiting = pod(
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": message}]}),
            );
            assert_eq!(mover_failure(&waiting), None, "{message}");
        }
        let waiting = |reason: &str| {
            pod(
                json!({"phase": "Pending", "containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": "pulling x"}}}]}),
            )
        };
        assert_eq!(mover_failure(&waiting("ErrImagePull")), None);
        assert_eq!(mover_failure(&waiting("ContainerCreating")), None);
        let pull = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off pulling x"}}}]}),
        );
        assert!(mover_failure(&pull)
            .unwrap()
            .contains("ImagePullBackOff: back-off pulling x"));
        let failed = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error",
            "message": "starting\nrepository: wrong password\n"}}}]}),
        );
        assert_eq!(
            mover_failure(&failed).unwrap(),
            "mover pod ns/m failed: exit code 1 (Error): repository: wrong password"
        );
        let evicted = pod(
            json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on memory."}),
        );
        assert!(mover_failure(&evicted)
            .unwrap()
            .ends_with("The node was low on memory."));
        assert!(!mover_started(&unsched) && mover_started(&failed));
    }

    #[test]
    fn a_mover_deleted_before_it_finished_fails_naming_why() {
        let deleted = |status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "m", "namespace": "ns",
                "deletionTimestamp": "2026-12-03T10:00:00Z"}, "status": status}))
            .unwrap()
        };
        // Its node was lost: the taint manager evicts it and it stays
        // Terminating, Running as far as the API server knows.
        let lost = deleted(
            json!({"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True",
            "reason": "DeletionByTaintManager", "message": "Taint manager: deleting due to NoExecute taint"}]}),
        );
        assert_eq!(
            mover_failure(&lost).unwrap(),
            "mover pod ns/m is being deleted before it finished (DeletionByTaintManager: Taint manager: deleting due to NoExecute taint)"
        );
        assert!(mover_failure(&deleted(json!({"phase": "Pending"})))
            .unwrap()
            .ends_with("(deleted or evicted)"));
        // One that finished is not a failure while it goes, nor is one that
        // failed described twice.
        assert_eq!(mover_failure(&deleted(json!({"phase": "Succeeded"}))), None);
        assert!(
            mover_failure(&deleted(json!({"phase": "Failed", "message": "boom"})))
                .unwrap()
                .ends_with("failed: boom")
        );
    }
}
