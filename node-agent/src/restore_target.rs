//! Writing a snapshot into a directory or a block device, shared by the node
//! agent (into a pod's volume, in place) and the mover (into a new
//! PersistentVolumeClaim).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_engine::restore::RestoreOptions;
use coffer_engine::{CancelToken, Repository};

use crate::crd::{Progress, RestorePolicy};
use crate::status::Outcome;

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
    let index = repo.load_tree_index().await?;
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
