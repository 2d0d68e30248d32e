//! What every run is: a namespaced object (VolumeBackup, VolumeRestore)
//! whose status is a [`RunStatus`]. The node agent, the controller and the
//! mover all handle runs through this one trait.

use kube::Resource;

use crate::crd::RunStatus;

/// A run: a namespaced object whose status is a [`RunStatus`].
pub trait RunObject:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    /// `Backup` or `Restore`: the action of its Events, and the first word
    /// of their reasons (`BackupFailed`).
    const ACTION: &'static str;
    /// The status, if any.
    fn run_status(&self) -> Option<&RunStatus>;
}

impl RunObject for crate::crd::VolumeBackup {
    const ACTION: &'static str = "Backup";
    fn run_status(&self) -> Option<&RunStatus> {
        self.status.as_ref()
    }
}

impl RunObject for crate::crd::VolumeRestore {
    const ACTION: &'static str = "Restore";
    fn run_status(&self) -> Option<&RunStatus> {
        self.status.as_ref()
    }
}
