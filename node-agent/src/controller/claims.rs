//! The claims the controller makes, pure: a clone of a snapshot for a
//! backup's mover, and a restored claim that follows the recorded one.

use crate::controller::csi::SNAPSHOT_GROUP;
use crate::crd::{RecordedClaim, RestoreTarget};
use coffer_engine::format::snapshot::ClaimSpec;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;
use std::collections::BTreeMap;

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
pub struct CloneClaim<'a> {
    /// The clone's name.
    pub name: &'a str,
    /// Its namespace (coffer's own, where its VolumeSnapshot is exposed).
    pub namespace: &'a str,
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
    /// Annotations (the run, by namespace and name).
    pub annotations: &'a BTreeMap<String, String>,
}

/// The clone claim: provisioned from the snapshot, sized from its restore
/// size (else the source's size), with the source's volume mode and access
/// modes (or ReadOnlyMany), and its storage class mapped.
pub fn clone_claim(c: &CloneClaim) -> PersistentVolumeClaim {
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
            "namespace": c.namespace,
            "labels": c.labels,
            "annotations": c.annotations,
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
pub struct RestoredClaim<'a> {
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
pub fn restored_claim(r: &RestoredClaim) -> Result<PersistentVolumeClaim, String> {
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

/// A claim `namespace/name` with the spec of `like` (class, access modes,
/// volume mode, size), and no data source: the claim a populator fills.
pub fn claim_like(
    like: &PersistentVolumeClaim,
    name: &str,
    namespace: &str,
) -> PersistentVolumeClaim {
    let spec = like.spec.clone().unwrap_or_default();
    let mut value = json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "accessModes": spec.access_modes,
            "volumeMode": spec.volume_mode,
            "resources": spec.resources,
        }
    });
    if let Some(class) = spec.storage_class_name {
        value["spec"]["storageClassName"] = json!(class);
    }
    serde_json::from_value(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let r = RestoredClaim {
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
        let spec = restored_claim(&RestoredClaim {
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
        let e = restored_claim(&RestoredClaim {
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
        let annotations = BTreeMap::new();
        let map = BTreeMap::from([("fast".to_string(), "cheap".to_string())]);
        let size = Quantity("9Gi".into());
        let mut c = CloneClaim {
            name: "coffer-run",
            namespace: "coffer-system",
            snapshot: "coffer-run",
            source: &source,
            restore_size: Some(&size),
            storage_class_map: &map,
            read_only_many: false,
            labels: &labels,
            annotations: &annotations,
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
        assert_eq!(clone.metadata.namespace.as_deref(), Some("coffer-system"));
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
}
