//! Restores, shared by the node agent (into a pod's volume, in place) and
//! the mover (into a new PersistentVolumeClaim): which snapshot a
//! VolumeRestore names, and writing it into a directory or a block device.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_engine::format::snapshot::Snapshot;
use coffer_engine::restore::RestoreOptions;
use coffer_engine::{CancelToken, Repository};

use crate::crd::{Progress, RecordedClaim, RestorePolicy, SnapshotSource};
use crate::status::Outcome;

/// The snapshot `src` names in the repository `repository` of namespace
/// `namespace` (the origin's namespace when `src` gives none): by id or
/// prefix, or the latest of an origin (at or before `asOf`, when given).
/// The error is the run's message.
pub async fn find_snapshot(
    repo: &Repository,
    src: &SnapshotSource,
    namespace: &str,
    repository: &str,
) -> Result<(String, Snapshot), String> {
    if let (Some(_), Some(_)) = (&src.id, &src.as_of) {
        return Err(
            "spec.snapshot gives both id and asOf: an id names one snapshot; give asOf with an origin instead"
                .into(),
        );
    }
    if let Some(id) = &src.id {
        return repo
            .find_snapshot(id)
            .await
            .map(|(id, s)| (id.to_hex(), s))
            .map_err(|e| format!("BackupRepository {namespace}/{repository}: {e}"));
    }
    if src.pvc.is_none() && src.owner.is_none() && src.volume.is_none() {
        return Err(
            "spec.snapshot names no snapshot: give an id, or an origin (pvc, or owner and volume)"
                .into(),
        );
    }
    let as_of = match src.as_of.as_deref() {
        None => None,
        Some(t) => Some(chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
            format!("spec.snapshot.asOf {t:?} is not an RFC 3339 time such as 2026-11-24T02:00:00Z: {e}")
        })?),
    };
    let filter = coffer_engine::forget::OriginFilter {
        cluster: src.cluster.clone(),
        namespace: Some(
            src.namespace
                .clone()
                .unwrap_or_else(|| namespace.to_string()),
        ),
        pvc: src.pvc.clone(),
        owner: src.owner.clone(),
        volume: src.volume.clone(),
        pod: None,
    };
    let mut all = repo
        .snapshots()
        .await
        .map_err(|e| format!("BackupRepository {namespace}/{repository}: {e}"))?;
    all.retain(|(_, s)| filter.matches(s));
    let Some(as_of) = as_of else {
        return all.pop().map(|(id, s)| (id.to_hex(), s)).ok_or_else(|| {
            format!("no snapshot in BackupRepository {namespace}/{repository} matches {filter:?}")
        });
    };
    let count = all.len();
    all.into_iter()
        .filter_map(|(id, s)| {
            let t = chrono::DateTime::parse_from_rfc3339(&s.time).ok()?;
            (t <= as_of).then_some((t, id, s))
        })
        .max_by_key(|(t, _, _)| *t)
        .map(|(_, id, s)| (id.to_hex(), s))
        .ok_or_else(|| {
            format!(
                "none of the {count} snapshots in BackupRepository {namespace}/{repository} \
                 that match {filter:?} was taken at or before {as_of}"
            )
        })
}

/// The claim a snapshot recorded (Kubernetes origin and claim spec), from
/// which a new PVC is made.
pub fn recorded_claim(snap: &Snapshot) -> RecordedClaim {
    let origin = snap.origin.clone().unwrap_or_default();
    let claim = origin.claim.unwrap_or_default();
    RecordedClaim {
        capacity: claim.capacity,
        access_modes: claim.access_modes,
        volume_mode: origin.volume_mode,
        storage_class_name: origin.storage_class,
        labels: claim.labels,
    }
}

/// Where a restore writes.
pub struct Target<'a> {
    /// The directory, or the block device.
    pub path: &'a Path,
    /// Whether `path` is a block device (the snapshot's one file is written
    /// over it whole).
    pub block: bool,
    /// What to do with data already there.
    pub policy: RestorePolicy,
    /// What the target is, for messages (`volume "data" of pod db-0`).
    pub what: &'a str,
    /// Restore device nodes and setuid/setgid bits (`spec.specialFiles`):
    /// off unless the run asks.
    pub special_files: bool,
}

/// Restores `snapshot` (or its `subpath`) into `target`. A block target
/// takes the snapshot's one file; a directory must be empty (`lost+found`
/// aside) unless the policy is Overwrite.
pub async fn restore_into(
    repo: Arc<Repository>,
    snapshot: &str,
    subpath: Option<&str>,
    target: &Target<'_>,
    cancel: &CancelToken,
    progress: Option<coffer_engine::progress::ProgressFn>,
) -> Result<Outcome, coffer_engine::Error> {
    let mut overwrite = target.policy == RestorePolicy::Overwrite;
    if !overwrite {
        if target.block {
            return Ok(Outcome::Failed(format!(
                "{} is a block device; a restore overwrites it whole: set spec.policy: Overwrite",
                target.what
            )));
        }
        match dir_is_empty(target.path) {
            Ok(true) => overwrite = true, // only lost+found
            Ok(false) => {
                return Ok(Outcome::Failed(format!(
                    "{} is not empty; restore into an empty volume, or set spec.policy: Overwrite",
                    target.what
                )))
            }
            Err(e) => return Ok(Outcome::Failed(format!("{}: {e}", target.path.display()))),
        }
    }
    let index = repo.load_index().await?;
    let mut opts = RestoreOptions::new(snapshot, target.path);
    opts.subpath = subpath.map(PathBuf::from);
    opts.overwrite = overwrite;
    opts.overwrite_device = target.block;
    // A tenant's snapshot: device nodes and setuid/setgid bits only when
    // its run asks (the agent and movers are privileged on the node).
    opts.device_nodes = target.special_files;
    opts.setid_bits = target.special_files;
    opts.cancel = cancel.clone();
    opts.progress = progress;
    if target.block && opts.subpath.is_none() {
        // The snapshot of a block volume holds one file: the device, named
        // after the recorded path.
        let (_, snap) = repo.find_snapshot(snapshot).await?;
        use std::os::unix::ffi::OsStrExt;
        opts.subpath = snap
            .paths
            .first()
            .and_then(|p| Path::new(std::ffi::OsStr::from_bytes(&p.0)).file_name())
            .map(PathBuf::from);
    }
    let summary = coffer_engine::restore::restore(repo, index, opts).await?;
    Ok(Outcome::Done {
        snapshot_id: summary.snapshot_id.to_hex(),
        incremental_bytes: None,
        progress: Progress {
            bytes_done: summary.bytes_written,
            total_bytes: Some(summary.bytes_written),
            files_done: summary.files_restored,
            total_files: Some(summary.files_restored),
        },
        errors: summary
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.path.display(), e.message))
            .collect(),
    })
}

/// Whether a directory holds nothing but `lost+found`.
fn dir_is_empty(dir: &Path) -> std::io::Result<bool> {
    for e in std::fs::read_dir(dir)? {
        if e?.file_name() != "lost+found" {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_and_found_alone_is_empty() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("lost+found")).unwrap();
        assert!(dir_is_empty(d.path()).unwrap());
        std::fs::write(d.path().join("x"), "1").unwrap();
        assert!(!dir_is_empty(d.path()).unwrap());
    }
}
