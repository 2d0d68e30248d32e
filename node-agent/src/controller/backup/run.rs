//! Naming and reading a VolumeBackup run of the controller.

use std::collections::BTreeMap;

use kube::{Resource, ResourceExt};

use crate::crd::VolumeBackup;

use crate::names::{label_value, object_name, RUN_LABEL};

/// The name of every object made for a run.
pub(crate) fn child_name(vb: &VolumeBackup) -> String {
    object_name(&["coffer", &vb.name_any()])
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
