//! What every run is: a namespaced object (VolumeBackup, VolumeRestore,
//! ApplicationBackup, ApplicationRestore) whose status is (or flattens) a [`RunStatus`]. The
//! node agent, the controller and the mover all handle runs through this one
//! trait.

use kube::Resource;

use crate::crd::RunStatus;

/// A run: a namespaced object whose status is a [`RunStatus`].
pub trait RunObject:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
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

impl RunObject for crate::crd::ApplicationBackup {
    const ACTION: &'static str = "Backup";
    fn run_status(&self) -> Option<&RunStatus> {
        self.status.as_ref().map(|s| &s.run)
    }
}

impl RunObject for crate::crd::ApplicationRestore {
    const ACTION: &'static str = "Restore";
    fn run_status(&self) -> Option<&RunStatus> {
        self.status.as_ref().map(|s| &s.run)
    }
}

/// Where a run the controller carries stands (`status.stage`; the node
/// agent's runs have none until they end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A backup: its VolumeSnapshot is being taken (the first stage).
    Snapshotting,
    /// A backup: its mover reads the clone into the repository.
    Moving,
    /// An application backup: a pod captures the namespace's objects.
    Capturing,
    /// A restore: a mover finds the snapshot (the first stage).
    Resolving,
    /// A restore: a mover writes the snapshot into the new claim.
    Restoring,
    /// A restore: the data is in; the volume is handed to the target claim.
    HandingOver,
    /// A run of a node agent (the stage a controller gives one it ends).
    Running,
    /// Cleaned up; the finalizer is off or about to be.
    Done,
}

impl Stage {
    /// The name written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Snapshotting => "Snapshotting",
            Stage::Moving => "Moving",
            Stage::Capturing => "Capturing",
            Stage::Resolving => "Resolving",
            Stage::Restoring => "Restoring",
            Stage::HandingOver => "HandingOver",
            Stage::Running => "Running",
            Stage::Done => "Done",
        }
    }

    /// The stage a status names, if it names one.
    pub fn of(s: &RunStatus) -> Option<Stage> {
        [
            Stage::Snapshotting,
            Stage::Moving,
            Stage::Capturing,
            Stage::Resolving,
            Stage::Restoring,
            Stage::HandingOver,
            Stage::Running,
            Stage::Done,
        ]
        .into_iter()
        .find(|st| s.stage.as_deref() == Some(st.as_str()))
    }
}

impl From<Stage> for String {
    fn from(s: Stage) -> String {
        s.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_reads_back_as_written_and_an_unknown_one_as_none() {
        for st in [
            Stage::Snapshotting,
            Stage::Moving,
            Stage::Capturing,
            Stage::Resolving,
            Stage::Restoring,
            Stage::HandingOver,
            Stage::Running,
            Stage::Done,
        ] {
            let s = RunStatus {
                stage: Some(st.into()),
                ..Default::default()
            };
            assert_eq!(Stage::of(&s), Some(st));
        }
        let odd = RunStatus {
            stage: Some("Dancing".into()),
            ..Default::default()
        };
        assert_eq!(Stage::of(&odd), None);
        assert_eq!(Stage::of(&RunStatus::default()), None);
    }
}
