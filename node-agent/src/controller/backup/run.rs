//! Naming and reading a VolumeBackup run of the controller.

use std::collections::BTreeMap;

use kube::{Resource, ResourceExt};

use crate::crd::VolumeBackup;

use crate::names::{home_name, label_value, object_name, RUN_ANNOTATION, RUN_LABEL};

/// The name of the VolumeSnapshot taken for a run, in the run's namespace.
pub(crate) fn child_name(vb: &VolumeBackup) -> String {
    object_name(&["coffer", &vb.name_any()])
}

/// The name of everything made for a run in coffer's own namespace (the
/// exposed VolumeSnapshot, the clone, the mover pod and its account) and of
/// the exposed VolumeSnapshotContent.
pub(crate) fn home_child(vb: &VolumeBackup) -> String {
    home_name(
        "backup",
        &vb.namespace().unwrap_or_default(),
        &vb.name_any(),
    )
}

/// What ties an object in coffer's namespace to its run, where no owner
/// reference can: `namespace/name`.
pub(crate) fn run_annotations(vb: &VolumeBackup) -> BTreeMap<String, String> {
    BTreeMap::from([(
        RUN_ANNOTATION.to_string(),
        format!("{}/{}", vb.namespace().unwrap_or_default(), vb.name_any()),
    )])
}

pub(crate) fn run_labels(vb: &VolumeBackup) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUN_LABEL.to_string(), label_value(&vb.name_any())),
        crate::names::managed_by(),
    ])
}

/// Whether a run still goes on. The first open run of a group leads it.
pub(crate) fn is_open(r: &VolumeBackup) -> bool {
    !r.status.as_ref().is_some_and(|s| s.phase.is_final())
        && r.meta().deletion_timestamp.is_none()
        && !r.spec.cancel
}
