//! Volume planning: where each volume of a pod lives on this node, or why it
//! cannot be backed up. Pure: the pod, its PVCs and PVs, and a listing of the
//! pod's kubelet directory come in; no I/O happens here (the listing is read by
//! [`crate::node::kubelet`]).
//!
//! Where the kubelet puts volumes (`<root>` is `--kubelet-root`):
//!
//! | volume | path |
//! |---|---|
//! | CSI, filesystem (a PV, or inline) | `<root>/pods/<uid>/volumes/kubernetes.io~csi/<pv or volume>/mount` |
//! | CSI, block | `<root>/pods/<uid>/volumeDevices/kubernetes.io~csi/<pv>` |
//! | in-tree PV migrated to CSI | as CSI |
//! | in-tree PV (not migrated) | `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<pv>` |
//! | local PV | `<root>/pods/<uid>/volumes/kubernetes.io~local-volume/<pv>` (block: `volumeDevices/...`) |
//! | NFS | `<root>/pods/<uid>/volumes/kubernetes.io~nfs/<pv or volume>` |
//! | emptyDir | `<root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<volume>` |
//! | hostPath (inline, or a PV such as local-path-provisioner's) | the host's path, under `--host-root`, only below a `--host-path-allow` prefix |
//!
//! Secrets, ConfigMaps, projected and downward API volumes come from the API
//! and are skipped with a reason, as are volumes no container mounts and
//! volumes the kubelet has not mounted yet: a skip is never a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use coffer_engine::forget::OriginFilter;
use coffer_engine::format::snapshot::KubernetesOrigin;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Volume};

use crate::pods::{claim_of, owner_of};
use crate::policy::{clean_absolute, host_path_allowed};

/// What the planner needs to know about the node and the agent.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The kubelet's root directory as the agent sees it.
    pub kubelet_root: PathBuf,
    /// Where the host's `/` is mounted in the agent (hostPath volumes); none:
    /// hostPath volumes are skipped.
    pub host_root: Option<PathBuf>,
    /// hostPath volumes are read only at or below these host paths.
    pub host_path_allow: Vec<PathBuf>,
    /// The cluster's name, recorded in snapshots.
    pub cluster: Option<String>,
    /// This node.
    pub node: String,
}

/// What exists in one pod's kubelet directory, relative to
/// `<kubelet_root>/pods/<uid>/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeletListing {
    /// Directories (and files) that exist: `volumes/kubernetes.io~csi/pv-1/mount`,
    /// `volumes/kubernetes.io~empty-dir/cache`, ...
    pub present: BTreeSet<String>,
    /// Those of them that are mount points.
    pub mounted: BTreeSet<String>,
    /// Block devices (or links to them) under `volumeDevices/`.
    pub devices: BTreeSet<String>,
}

/// Filesystem or Block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeMode {
    /// A directory tree.
    Filesystem,
    /// A raw block device, backed up as one file.
    Block,
}

impl VolumeMode {
    /// `Filesystem` or `Block`, as Kubernetes writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeMode::Filesystem => "Filesystem",
            VolumeMode::Block => "Block",
        }
    }
}

/// Where a planned volume's data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A CSI volume (`driver`), also an in-tree PV migrated to CSI.
    Csi(String),
    /// An in-tree volume plugin (`aws-ebs`, `gce-pd`, ...).
    InTree(String),
    /// A local PV.
    Local,
    /// NFS.
    Nfs,
    /// An emptyDir.
    EmptyDir,
    /// A hostPath (inline or a PV).
    HostPath,
}

/// A volume that can be backed up.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The volume's name in the pod spec.
    pub volume: String,
    /// Where the data comes from.
    pub source: Source,
    /// Filesystem or Block.
    pub mode: VolumeMode,
    /// The directory or device to read, as the agent sees it. For hostPath
    /// volumes this is the host path below `host_root`, to be resolved with
    /// [`crate::node::kubelet::resolve_in_root`] before use.
    pub path: PathBuf,
    /// For hostPath volumes: the path on the host (checked against the
    /// allowed prefixes again after symlinks are resolved).
    pub host_path: Option<PathBuf>,
    /// The path recorded in the snapshot: the first container's mount path
    /// (or device path), else `/<volume>`.
    pub record_path: PathBuf,
    /// The Kubernetes origin recorded in the snapshot.
    pub origin: KubernetesOrigin,
}

impl Planned {
    /// How the next backup finds its parent: the same cluster, namespace and
    /// PVC; or, for volumes without a PVC, the same namespace, workload (or
    /// pod, without one) and volume. A new pod UID or node changes nothing.
    pub fn parent_filter(&self) -> OriginFilter {
        same_volume(&self.origin)
    }
}

/// The snapshots of the same volume as one with origin `o`: the same
/// cluster, namespace and PVC; or, for volumes without a PVC, the same
/// namespace, workload (or pod, without one) and volume. A backup's parent
/// is found among them, and a pod's schedule's retention applies to them.
pub fn same_volume(o: &KubernetesOrigin) -> OriginFilter {
    if o.pvc.is_some() {
        return OriginFilter {
            cluster: o.cluster.clone(),
            namespace: o.namespace.clone(),
            pvc: o.pvc.clone(),
            ..Default::default()
        };
    }
    OriginFilter {
        cluster: o.cluster.clone(),
        namespace: o.namespace.clone(),
        pod: if o.owner.is_none() {
            o.pod.clone()
        } else {
            None
        },
        owner: o.owner.clone(),
        volume: o.volume.clone(),
        ..Default::default()
    }
}

/// Why a volume is not backed up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Secret, ConfigMap, projected, downward API, image, gitRepo: content
    /// that comes from elsewhere.
    NotData,
    /// No container mounts it.
    NotMountedByPod,
    /// The kubelet has not mounted it yet (or the pod has no UID or node yet).
    NotMountedYet,
    /// Its PVC is missing or not bound.
    Unbound,
    /// A hostPath outside the allowed prefixes, or no host root.
    HostPathRefused,
    /// A claim that names a PersistentVolume which is not bound to it (its
    /// `claimRef` names another claim: another namespace's data), or a pod
    /// that is not running.
    NotItsVolume,
    /// A volume type this agent cannot read.
    Unsupported,
}

/// A volume that is skipped, and why, in a sentence that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    /// The volume.
    pub volume: String,
    /// The kind of reason.
    pub reason: SkipReason,
    /// The sentence.
    pub message: String,
}

/// One volume's plan.
pub type VolumePlan = Result<Planned, Skip>;

/// Plans every volume of `pod`, in the pod spec's order.
pub fn plan_pod(
    pod: &Pod,
    pvcs: &BTreeMap<String, PersistentVolumeClaim>,
    pvs: &BTreeMap<String, PersistentVolume>,
    listing: &KubeletListing,
    cfg: &NodeConfig,
) -> Vec<VolumePlan> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(|v| v.as_slice())
        .unwrap_or_default();
    volumes
        .iter()
        .map(|v| plan_volume(pod, v, pvcs, pvs, listing, cfg))
        .collect()
}

/// Plans the volume named `name` (a skip when the pod has no such volume).
pub fn plan_named(
    pod: &Pod,
    name: &str,
    pvcs: &BTreeMap<String, PersistentVolumeClaim>,
    pvs: &BTreeMap<String, PersistentVolume>,
    listing: &KubeletListing,
    cfg: &NodeConfig,
) -> VolumePlan {
    let v = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|vs| vs.iter().find(|v| v.name == name));
    match v {
        Some(v) => plan_volume(pod, v, pvcs, pvs, listing, cfg),
        None => Err(Skip {
            volume: name.to_string(),
            reason: SkipReason::Unsupported,
            message: format!(
                "pod {} has no volume {name:?}",
                pod.metadata.name.as_deref().unwrap_or("?")
            ),
        }),
    }
}

/// Where the first container that uses the volume has it: (path, block).
fn mount_of(pod: &Pod, volume: &str) -> Option<(String, bool)> {
    let spec = pod.spec.as_ref()?;
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let mut found = None;
    for c in containers {
        if let Some(m) = c.volume_mounts.iter().flatten().find(|m| m.name == volume) {
            found = Some((m.mount_path.clone(), false));
        } else if let Some(d) = c.volume_devices.iter().flatten().find(|d| d.name == volume) {
            found = Some((d.device_path.clone(), true));
        }
        // Regular containers win over init containers.
        if found.is_some() && spec.containers.iter().any(|x| std::ptr::eq(x, c)) {
            break;
        }
    }
    found
}

fn plan_volume(
    pod: &Pod,
    v: &Volume,
    pvcs: &BTreeMap<String, PersistentVolumeClaim>,
    pvs: &BTreeMap<String, PersistentVolume>,
    listing: &KubeletListing,
    cfg: &NodeConfig,
) -> VolumePlan {
    let name = v.name.clone();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let skip = |reason: SkipReason, message: String| {
        Err(Skip {
            volume: name.clone(),
            reason,
            message,
        })
    };
    let not_data = [
        (v.secret.is_some(), "a Secret"),
        (v.config_map.is_some(), "a ConfigMap"),
        (v.projected.is_some(), "a projected volume"),
        (v.downward_api.is_some(), "a downward API volume"),
        (v.git_repo.is_some(), "a gitRepo volume"),
        (v.image.is_some(), "an image volume"),
    ];
    if let Some((_, what)) = not_data.iter().find(|(is, _)| *is) {
        return skip(
            SkipReason::NotData,
            format!("volume {name:?} is {what}: its content comes from the cluster, not from the pod; back up the object instead"),
        );
    }
    let Some((mount_path, block_mount)) = mount_of(pod, &name) else {
        return skip(
            SkipReason::NotMountedByPod,
            format!("volume {name:?} is declared but no container of pod {pod_name} mounts it"),
        );
    };
    let mut origin = KubernetesOrigin {
        cluster: cfg.cluster.clone(),
        namespace: pod.metadata.namespace.clone(),
        pod: Some(pod_name.clone()),
        node: Some(cfg.node.clone()),
        owner: owner_of(pod),
        volume: Some(name.clone()),
        ..Default::default()
    };
    let record_path = PathBuf::from(mount_path);
    let planned = |source: Source, mode: VolumeMode, path: PathBuf, origin: KubernetesOrigin| {
        let mut origin = origin;
        origin.volume_mode = Some(mode.as_str().to_string());
        Ok(Planned {
            volume: name.clone(),
            source,
            mode,
            path,
            host_path: None,
            record_path: record_path.clone(),
            origin,
        })
    };
    let Some(uid) = pod.metadata.uid.as_deref().filter(|u| !u.is_empty()) else {
        return skip(
            SkipReason::NotMountedYet,
            format!("pod {pod_name} has no UID yet"),
        );
    };
    let pod_dir = cfg.kubelet_root.join("pods").join(uid);
    // A directory the kubelet mounts (or, for emptyDir, creates).
    let dir = |rel: String, needs_mount: bool| -> Result<PathBuf, String> {
        let ok = listing.present.contains(&rel) && (!needs_mount || listing.mounted.contains(&rel));
        if ok {
            Ok(pod_dir.join(&rel))
        } else {
            Err(format!(
                "volume {name:?} is not mounted on node {} yet ({} {}); it is backed up once the kubelet has mounted it",
                cfg.node,
                pod_dir.join(&rel).display(),
                if listing.present.contains(&rel) { "is not a mount point" } else { "does not exist" }
            ))
        }
    };
    let device = |rel: String| -> Result<PathBuf, String> {
        if listing.devices.contains(&rel) {
            Ok(pod_dir.join(&rel))
        } else {
            Err(format!(
                "block volume {name:?} is not attached on node {} yet ({} does not exist)",
                cfg.node,
                pod_dir.join(&rel).display()
            ))
        }
    };

    if v.empty_dir.is_some() {
        return match dir(format!("volumes/kubernetes.io~empty-dir/{name}"), false) {
            Ok(p) => planned(Source::EmptyDir, VolumeMode::Filesystem, p, origin),
            Err(m) => skip(SkipReason::NotMountedYet, m),
        };
    }
    if let Some(h) = &v.host_path {
        let block = block_mount || h.type_.as_deref() == Some("BlockDevice");
        return host_path(&name, &h.path, block, cfg).and_then(|(p, hp)| {
            let mode = if block {
                VolumeMode::Block
            } else {
                VolumeMode::Filesystem
            };
            let mut p = planned(Source::HostPath, mode, p, origin)?;
            p.host_path = Some(hp);
            Ok(p)
        });
    }
    if v.nfs.is_some() {
        return match dir(format!("volumes/kubernetes.io~nfs/{name}"), true) {
            Ok(p) => planned(Source::Nfs, VolumeMode::Filesystem, p, origin),
            Err(m) => skip(SkipReason::NotMountedYet, m),
        };
    }
    if let Some(csi) = &v.csi {
        return match dir(format!("volumes/kubernetes.io~csi/{name}/mount"), true) {
            Ok(p) => planned(
                Source::Csi(csi.driver.clone()),
                VolumeMode::Filesystem,
                p,
                origin,
            ),
            Err(m) => skip(SkipReason::NotMountedYet, m),
        };
    }
    let Some(claim) = claim_of(&pod_name, v) else {
        return skip(
            SkipReason::Unsupported,
            format!("volume {name:?} is of a type coffer-agent cannot read (supported: PVCs, CSI, emptyDir, hostPath, NFS, local)"),
        );
    };
    let Some(pvc) = pvcs.get(&claim) else {
        return skip(
            SkipReason::Unbound,
            format!("volume {name:?}: PersistentVolumeClaim {claim} not found"),
        );
    };
    let Some(pv_name) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty())
    else {
        return skip(
            SkipReason::Unbound,
            format!("volume {name:?}: PersistentVolumeClaim {claim} is not bound yet"),
        );
    };
    let Some(pv) = pvs.get(&pv_name) else {
        return skip(
            SkipReason::Unbound,
            format!("volume {name:?}: PersistentVolume {pv_name} (of claim {claim}) not found"),
        );
    };
    // Anyone can write any name into a claim's volumeName: the volume is
    // this claim's only when the claim is Bound and the PV's claimRef names
    // it (namespace, name, uid), and only a running pod's is read.
    if let Err(why) = bound_to(pod, &claim, pvc, pv) {
        return skip(
            SkipReason::NotItsVolume,
            format!("volume {name:?}: {why}; not backed up"),
        );
    }
    let spec = pv.spec.clone().unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block") || block_mount;
    let mode = if block {
        VolumeMode::Block
    } else {
        VolumeMode::Filesystem
    };
    origin.pvc = Some(claim.clone());
    origin.pv = Some(pv_name.clone());
    origin.storage_class = pvc
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .or(spec.storage_class_name.clone());

    if let Some(h) = &spec.host_path {
        return host_path(&name, &h.path, block, cfg).and_then(|(p, hp)| {
            let mut p = planned(Source::HostPath, mode, p, origin)?;
            p.host_path = Some(hp);
            Ok(p)
        });
    }
    let locate = |plugin: &str| {
        if block {
            device(format!("volumeDevices/kubernetes.io~{plugin}/{pv_name}"))
        } else if plugin == "csi" {
            dir(format!("volumes/kubernetes.io~csi/{pv_name}/mount"), true)
        } else {
            dir(format!("volumes/kubernetes.io~{plugin}/{pv_name}"), true)
        }
    };
    let (source, plugin) = if let Some(csi) = &spec.csi {
        (Source::Csi(csi.driver.clone()), "csi")
    } else if spec.local.is_some() {
        (Source::Local, "local-volume")
    } else if spec.nfs.is_some() {
        (Source::Nfs, "nfs")
    } else if let Some(plugin) = in_tree_plugin(&spec) {
        // Migrated to CSI: the kubelet uses the CSI layout.
        let csi_rel = if block {
            format!("volumeDevices/kubernetes.io~csi/{pv_name}")
        } else {
            format!("volumes/kubernetes.io~csi/{pv_name}/mount")
        };
        if listing.present.contains(&csi_rel) || listing.devices.contains(&csi_rel) {
            (
                Source::Csi(format!("migrated from kubernetes.io/{plugin}")),
                "csi",
            )
        } else {
            (Source::InTree(plugin.to_string()), plugin)
        }
    } else {
        return skip(
            SkipReason::Unsupported,
            format!(
                "volume {name:?}: PersistentVolume {pv_name} is of a type coffer-agent cannot read"
            ),
        );
    };
    match locate(plugin) {
        Ok(p) => planned(source, mode, p, origin),
        Err(m) => skip(SkipReason::NotMountedYet, m),
    }
}

/// Whether `pv` is the volume of claim `claim` (of `pod`'s namespace) and
/// `pod` runs: the claim is Bound, the PV's `claimRef` names the claim by
/// namespace, name and uid. Otherwise why not, naming both.
pub fn bound_to(
    pod: &Pod,
    claim: &str,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<(), String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let pv_name = pv.metadata.name.as_deref().unwrap_or_default();
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Bound") {
        return Err(format!(
            "PersistentVolumeClaim {ns}/{claim} is not Bound ({})",
            phase.unwrap_or("no phase")
        ));
    }
    let r = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let names_it = r.is_some_and(|r| {
        r.namespace.as_deref() == Some(ns)
            && r.name.as_deref() == Some(claim)
            && r.uid.is_some()
            && r.uid == pvc.metadata.uid
    });
    if !names_it {
        return Err(format!(
            "PersistentVolume {pv_name} is not bound to claim {ns}/{claim} (its claimRef names {})",
            r.map(|r| format!(
                "{}/{} uid {}",
                r.namespace.as_deref().unwrap_or("?"),
                r.name.as_deref().unwrap_or("?"),
                r.uid.as_deref().unwrap_or("?")
            ))
            .unwrap_or_else(|| "no claim".into())
        ));
    }
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if running != Some("Running") {
        return Err(format!(
            "pod {ns}/{} is not running ({})",
            pod.metadata.name.as_deref().unwrap_or_default(),
            running.unwrap_or("no phase")
        ));
    }
    Ok(())
}

/// The in-tree plugin directory name of a PV, for the plugins the kubelet
/// can still mount (or has migrated to CSI).
fn in_tree_plugin(spec: &k8s_openapi::api::core::v1::PersistentVolumeSpec) -> Option<&'static str> {
    let table = [
        (spec.aws_elastic_block_store.is_some(), "aws-ebs"),
        (spec.gce_persistent_disk.is_some(), "gce-pd"),
        (spec.azure_disk.is_some(), "azure-disk"),
        (spec.azure_file.is_some(), "azure-file"),
        (spec.cinder.is_some(), "cinder"),
        (spec.vsphere_volume.is_some(), "vsphere-volume"),
        (spec.rbd.is_some(), "rbd"),
        (spec.iscsi.is_some(), "iscsi"),
        (spec.fc.is_some(), "fc"),
        (spec.cephfs.is_some(), "cephfs"),
        (spec.portworx_volume.is_some(), "portworx-volume"),
    ];
    table.iter().find(|(is, _)| *is).map(|(_, p)| *p)
}

/// A hostPath: (path in the agent, path on the host), or a refusal.
fn host_path(
    volume: &str,
    path: &str,
    _block: bool,
    cfg: &NodeConfig,
) -> Result<(PathBuf, PathBuf), Skip> {
    let refuse = |message: String| Skip {
        volume: volume.to_string(),
        reason: SkipReason::HostPathRefused,
        message,
    };
    let Some(clean) = clean_absolute(Path::new(path)) else {
        return Err(refuse(format!(
            "hostPath volume {volume:?} ({path}) is not a clean absolute path"
        )));
    };
    if !host_path_allowed(&clean, &cfg.host_path_allow) {
        return Err(refuse(format!(
            "hostPath volume {volume:?} ({path}) is outside the allowed prefixes ({}); add one with --host-path-allow",
            if cfg.host_path_allow.is_empty() {
                "none given".to_string()
            } else {
                cfg.host_path_allow
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    }
    let Some(root) = &cfg.host_root else {
        return Err(refuse(format!(
            "hostPath volume {volume:?} ({path}): the agent has no --host-root"
        )));
    };
    let rel = clean.strip_prefix("/").unwrap_or(&clean);
    Ok((root.join(rel), clean))
}
