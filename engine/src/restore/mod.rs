//! Restore: plan → fetcher → decryptor/decompressor/verifier → writer → metadata.
//!
//! 1. `plan`: walk the snapshot's trees, create directories, empty files of
//!    the right length (sparse), links and special files; record which blob goes
//!    to which file offsets, grouped by pack.
//! 2. `fetcher`: read each needed pack once, with ranged reads that coalesce
//!    neighbouring blobs, several packs at once.
//! 3. `writer`: decrypt, decompress and verify each blob against its id, then
//!    write it at every offset that needs it, skipping zero blocks so holes stay holes.
//! 4. `metadata`: walk again and set owners, attributes, modes and times,
//!    children before their directory, so read-only directories are made read-only last.
//!
//! A blob that is missing or fails verification is never written: each file that
//! needs it is reported with the blob id and removed, and the rest goes on.

mod batch;
mod device;
mod fetcher;
mod metadata;
mod plan;
mod target;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use coffer_repo_format::{BlobId, SnapshotId};

use crate::cancel::CancelToken;
use crate::error::{Conflict, Error, Result};
use crate::index::Index;
use crate::progress::{Phase, ProgressFn, Reporter};
use crate::repository::Repository;

/// [`RestoreOptions::plan_limit`]'s default: about 12 MiB of plan, for
/// 8 GiB of content at the default chunk size.
pub const DEFAULT_PLAN_LIMIT: usize = 65_536;

/// What to restore, and where.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// `latest`, a snapshot id, or a unique prefix.
    pub snapshot: String,
    /// A path inside the snapshot (`a/b`); the whole snapshot when `None`.
    pub subpath: Option<PathBuf>,
    /// The target directory.
    pub target: PathBuf,
    /// Replace existing files in the target (otherwise it must be empty).
    pub overwrite: bool,
    /// Restore only what matches these patterns (and what lies in matching
    /// directories); everything when empty. Same syntax as backup's excludes,
    /// matched against snapshot paths as `coffer ls` shows them.
    pub include: Vec<String>,
    /// Like `include`, ignoring case.
    pub iinclude: Vec<String>,
    /// Leave out what matches these patterns.
    pub exclude: Vec<String>,
    /// Like `exclude`, ignoring case.
    pub iexclude: Vec<String>,
    /// Packs fetched at once.
    pub concurrency: usize,
    /// Blob places (one blob at one offset of one file) planned before they
    /// are fetched and written. This bounds the plan's memory, at about 190
    /// bytes a place, whatever the snapshot's size; a snapshot with more is
    /// restored in several passes, and a pack with blobs in two passes is read
    /// in both.
    pub plan_limit: usize,
    /// Allow `target` to be a block device, overwritten with one file.
    pub overwrite_device: bool,
    /// The target device reads as zeros already: do not write zero regions.
    pub device_zeroed: bool,
    /// `snapshot` is looked for among the snapshots this filter passes
    /// (`latest` of a Kubernetes origin, say).
    pub filter: crate::filter::Filter,
    /// Cancellation.
    pub cancel: CancelToken,
    /// Progress callback: phase [`Phase::Restore`], bytes of file content
    /// placed (holes included on a device that is zero-filled) and packs read.
    pub progress: Option<ProgressFn>,
    /// Restore device nodes (as root; otherwise they are skipped with a
    /// warning). The command line does; the Kubernetes agent only when a
    /// run asks for it.
    pub device_nodes: bool,
    /// Keep the setuid and setgid bits of restored files and directories
    /// (otherwise they are cleared, with the rest of the mode kept).
    pub setid_bits: bool,
}

impl RestoreOptions {
    /// Restore `snapshot` into `target` with every default.
    pub fn new(snapshot: impl Into<String>, target: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            snapshot: snapshot.into(),
            subpath: None,
            target: target.into(),
            overwrite: false,
            include: Vec::new(),
            iinclude: Vec::new(),
            exclude: Vec::new(),
            iexclude: Vec::new(),
            concurrency: 4,
            plan_limit: DEFAULT_PLAN_LIMIT,
            overwrite_device: false,
            device_zeroed: false,
            filter: Default::default(),
            cancel: CancelToken::new(),
            progress: None,
            device_nodes: true,
            setid_bits: true,
        }
    }
}

/// A file that could not be restored correctly.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreError {
    /// Its path in the target.
    pub path: PathBuf,
    /// The blob that was missing or damaged, if that was the cause.
    pub blob: Option<BlobId>,
    /// What went wrong.
    pub message: String,
}

/// The result of a restore.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// The snapshot restored.
    pub snapshot_id: SnapshotId,
    /// Regular files restored.
    pub files_restored: u64,
    /// Directories restored.
    pub dirs_restored: u64,
    /// Other entries (links, FIFOs, devices) restored.
    pub others_restored: u64,
    /// Bytes of file content written (holes not counted).
    pub bytes_written: u64,
    /// Files that could not be restored; they are not left in the target.
    pub errors: Vec<RestoreError>,
    /// Metadata that could not be applied (the files themselves are correct).
    pub warnings: Vec<String>,
}

/// State shared by the restore stages.
pub(crate) struct Shared {
    pub(crate) repo: Arc<Repository>,
    pub(crate) index: Arc<Index>,
    pub(crate) errors: Mutex<Vec<RestoreError>>,
    pub(crate) damaged: Mutex<HashSet<PathBuf>>,
    /// First restored path of each hard-link group, by (device, inode).
    pub(crate) links: Mutex<std::collections::HashMap<(u64, u64), PathBuf>>,
    pub(crate) warnings: Mutex<Vec<String>>,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) as_root: bool,
    /// Device nodes are restored (as root, when the options ask for it).
    pub(crate) devices: bool,
    /// Setuid and setgid bits are kept.
    pub(crate) setid: bool,
    /// The target directory, held open: every path is opened beneath it
    /// (`None` for a block device target).
    pub(crate) target: Option<target::Target>,
    pub(crate) cancel: CancelToken,
    /// Write every byte, zero blocks included (a device not known to be zeroed).
    pub(crate) dense: bool,
}

impl Shared {
    pub(crate) fn fail(&self, path: &Path, blob: Option<BlobId>, message: String) {
        tracing::debug!("{}: {message}", path.display());
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_path_buf());
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(RestoreError {
                path: path.to_path_buf(),
                blob,
                message,
            });
    }

    pub(crate) fn warn(&self, message: String) {
        tracing::debug!("{message}");
        self.warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }

    /// Whether the file at `path`, or the hard-link group it belongs to, is damaged.
    pub(crate) fn is_damaged(&self, path: &Path, node: &coffer_repo_format::tree::Node) -> bool {
        let damaged = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
        if damaged.contains(path) {
            return true;
        }
        if node.links > 1 {
            let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(first) = links.get(&(node.device, node.inode)) {
                return damaged.contains(first);
            }
        }
        false
    }

    pub(crate) fn add_written(&self, n: u64) {
        self.bytes_written.fetch_add(n, Ordering::Relaxed);
    }
}

/// Restores a snapshot (or a path in it) into a directory.
///
/// `index` may be [`Index::trees_only`] ([`Repository::load_tree_index`]):
/// each batch's data blobs are then looked up in the index files, so memory
/// does not grow with the repository's data. A full index is used as it is.
///
/// Dropping the returned future (an abort, a `tokio::time::timeout`) trips
/// `opts.cancel`: the planning and writing threads stop at their next check,
/// as after a cancellation.
pub async fn restore(
    repo: Arc<Repository>,
    index: Arc<Index>,
    opts: RestoreOptions,
) -> Result<RestoreSummary> {
    let guard = crate::cancel::CancelOnDrop::new(opts.cancel.clone());
    let result = restore_inner(repo, index, opts).await;
    guard.disarm();
    result
}

async fn restore_inner(
    repo: Arc<Repository>,
    index: Arc<Index>,
    opts: RestoreOptions,
) -> Result<RestoreSummary> {
    let (snapshot_id, snapshot) = repo
        .find_snapshot_matching(&opts.snapshot, &opts.filter)
        .await?;
    let start = plan::resolve_start(&repo, &index, &snapshot, opts.subpath.as_deref()).await?;
    let to_device = device::is_device(&opts.target);
    let target = if to_device {
        None
    } else {
        prepare_target(&opts.target, opts.overwrite)?;
        Some(target::Target::open(&opts.target).map_err(|e| Error::io(&opts.target, e))?)
    };
    let as_root = crate::fsmeta::is_root();
    let shared = Arc::new(Shared {
        repo,
        index,
        errors: Mutex::new(Vec::new()),
        damaged: Mutex::new(HashSet::new()),
        links: Mutex::new(std::collections::HashMap::new()),
        warnings: Mutex::new(Vec::new()),
        bytes_written: AtomicU64::new(0),
        as_root,
        devices: as_root && opts.device_nodes,
        setid: opts.setid_bits,
        target,
        cancel: opts.cancel.clone(),
        dense: to_device && !opts.device_zeroed,
    });
    let progress = Arc::new(Reporter::new(opts.progress.clone(), Phase::Restore));
    if to_device {
        device::restore(shared.clone(), &start, &opts, &progress).await?;
        progress.finish();
        let errors = std::mem::take(&mut *shared.errors.lock().unwrap_or_else(|p| p.into_inner()));
        return Ok(RestoreSummary {
            snapshot_id,
            files_restored: u64::from(errors.is_empty()),
            bytes_written: shared.bytes_written.load(Ordering::Relaxed),
            errors,
            ..Default::default()
        });
    }
    let handle = tokio::runtime::Handle::current();
    let s = shared.clone();
    let o = opts.clone();
    let st = start.clone();
    let p = progress.clone();
    let t0 = std::time::Instant::now();
    let planned = tokio::task::spawn_blocking(move || {
        let mut fetch = fetcher::Fetch::new(s.clone(), handle.clone(), p, o.concurrency, 0);
        let planned = plan::build(&s, &mut fetch, &handle, &st, &o)?;
        fetch.finish();
        Ok::<_, Error>(planned)
    })
    .await??;
    progress.finish();
    tracing::debug!(
        "restore plan and contents: {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    let counts = planned.counts;
    let planned_links = planned.links;
    let s = shared.clone();
    let handle = tokio::runtime::Handle::current();
    if let Some(target) = &shared.target {
        for (first, path) in &planned_links {
            if shared
                .damaged
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(first)
            {
                // The group's file was not restored: neither is this name of it.
                continue;
            }
            match target.hard_link(first, path) {
                Ok(true) => {}
                Ok(false) => shared.warn(format!(
                    "{}: cannot hard-link to {}; restored a copy",
                    path.display(),
                    first.display()
                )),
                Err(e) => shared.fail(
                    path,
                    None,
                    format!("cannot link or copy {}: {e}", first.display()),
                ),
            }
        }
    }
    let t2 = std::time::Instant::now();
    tokio::task::spawn_blocking(move || metadata::apply_all(&s, &handle, &start, &opts)).await??;
    tracing::debug!("restore metadata: {:.2}s", t2.elapsed().as_secs_f64());
    let errors = std::mem::take(&mut *shared.errors.lock().unwrap_or_else(|p| p.into_inner()));
    let warnings = std::mem::take(&mut *shared.warnings.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(RestoreSummary {
        snapshot_id,
        files_restored: counts.files.saturating_sub(errors.len() as u64),
        dirs_restored: counts.dirs,
        others_restored: counts.others,
        bytes_written: shared.bytes_written.load(Ordering::Relaxed),
        errors,
        warnings,
    })
}

fn prepare_target(target: &Path, overwrite: bool) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(md) if md.is_dir() => {
            let mut entries = std::fs::read_dir(target).map_err(|e| Error::io(target, e))?;
            if entries.next().is_some() && !overwrite {
                return Err(Error::TargetExists {
                    path: target.to_path_buf(),
                    conflict: Conflict::NotEmpty,
                });
            }
            Ok(())
        }
        Ok(_) => Err(Error::InvalidArgument(format!(
            "the target {} exists and is not a directory",
            target.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))
        }
        Err(e) => Err(Error::io(target, e)),
    }
}
