//! Backup: source → file workers (chunk, hash, dedup, compress, encrypt) → packer →
//! uploader → indexer → tree builder → snapshot.
//!
//! Threads: one walker (`source`), `threads` file workers (`file_worker`, which
//! also hash, dedup and seal, see `dedup`), and the tree builder on the calling
//! blocking thread (`tree_builder`). Packs travel to the async `uploader`
//! through a bounded channel. Every queue is bounded, so memory depends on the
//! configuration (threads, pack size), not on the size of the source.

pub(crate) mod dedup;
pub(crate) mod file_worker;
pub(crate) mod indexer;
mod lookahead;
mod pace;
mod packer;
mod prefetch;
mod snapshot;
pub(crate) mod source;
mod stream;
pub(crate) mod tree_builder;
mod uploader;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use coffer_repo_format::blob::{BlobType, Compression};
use coffer_repo_format::chunker::Chunker;
use coffer_repo_format::snapshot::{KubernetesOrigin, Snapshot};
use coffer_repo_format::tree::{Node, NodeKind};
use coffer_repo_format::SnapshotId;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::protocol::{Live, SESSIONS};
use crate::repository::Repository;

pub use pace::{parse_rate, parse_size};
pub use source::device_size;
use source::Scan;
pub use stream::{backup_stream, FinishFn, StreamSource};

/// Progress of a running backup.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BackupProgress {
    /// Seconds since the backup started.
    pub seconds_elapsed: f64,
    /// Entries (files, links, ...) finished.
    pub files_done: u64,
    /// Directories finished.
    pub dirs_done: u64,
    /// Bytes of file content read.
    pub bytes_done: u64,
    /// Bytes of new blobs (before compression).
    pub bytes_added: u64,
    /// Source files that could not be read so far.
    pub errors: u64,
    /// Files to back up in all, once a quick scan of the source has counted them.
    pub total_files: Option<u64>,
    /// Bytes of file content to back up in all, once counted.
    pub total_bytes: Option<u64>,
    /// A file being read now.
    pub current_file: Option<PathBuf>,
}

/// A progress callback; called from a pipeline thread at most every 100 ms.
pub type ProgressFn = Arc<dyn Fn(&BackupProgress) + Send + Sync>;

/// A moment in a backup that matters to the concurrency protocol (SPEC §13),
/// reported to [`BackupOptions::checkpoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checkpoint {
    /// The session is written and the index loaded; nothing of this backup
    /// is stored yet.
    SessionOpen,
    /// A pack was stored; the index file that lists it is not written yet.
    PackStored,
    /// The session was checked; the snapshot is about to be written.
    SnapshotWrite,
}

impl Checkpoint {
    /// The checkpoint's name: `session-open`, `pack-stored`, `snapshot-write`.
    pub fn name(self) -> &'static str {
        match self {
            Checkpoint::SessionOpen => "session-open",
            Checkpoint::PackStored => "pack-stored",
            Checkpoint::SnapshotWrite => "snapshot-write",
        }
    }
}

/// A [`Checkpoint`] callback. It runs on the backup's own tasks, so it can
/// hold the backup at that moment (the CLI's tests freeze the whole process
/// there with SIGSTOP to reproduce a paused pod).
pub type CheckpointFn = Arc<dyn Fn(Checkpoint) + Send + Sync>;

/// What to back up and how.
#[derive(Clone)]
pub struct BackupOptions {
    /// Paths to back up.
    pub paths: Vec<PathBuf>,
    /// Tags of the new snapshot.
    pub tags: Vec<String>,
    /// Host name to record; the machine's name when `None`.
    pub hostname: Option<String>,
    /// User name to record; this process's user when `None`.
    pub username: Option<String>,
    /// Program to record (`coffer-agent 0.1.0`, say); the engine's own name
    /// and version when `None`.
    pub program: Option<String>,
    /// File workers; 0 means one per core.
    pub threads: usize,
    /// Threads that read directories ahead of the walk, and stat their
    /// entries (0: the walker reads each directory when it gets there). A
    /// cold walk mostly waits on the disk; these keep several reads in flight.
    pub walk_threads: usize,
    /// Pack uploads at once.
    pub upload_concurrency: usize,
    /// Compression; the repository's default when `None`.
    pub compression: Option<Compression>,
    /// Kubernetes origin to record.
    pub origin: Option<KubernetesOrigin>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// Cancellation.
    pub cancel: CancelToken,
    /// Which snapshot to compare with.
    pub parent: ParentChoice,
    /// Read every file, even those unchanged since the parent snapshot.
    pub force: bool,
    /// Which attributes count as a change against the parent snapshot.
    pub changes: ChangeRules,
    /// Bytes per segment when one large file is chunked on several threads.
    pub segment_size: usize,
    /// What to leave out.
    pub selection: crate::select::Selection,
    /// The concurrency protocol's timings.
    pub timing: crate::protocol::Timing,
    /// Record the one path given under this path instead (`/data` for a
    /// volume read from `/var/lib/kubelet/pods/<uid>/volumes/...`): the
    /// snapshot's `paths` and its root's name follow it.
    pub record_path: Option<PathBuf>,
    /// Read the source no faster than this many bytes per second, all file
    /// workers together (`None`: as fast as it goes). For a live volume whose
    /// application needs the disk.
    pub read_limit: Option<u64>,
    /// Called at each [`Checkpoint`].
    pub checkpoint: Option<CheckpointFn>,
    /// The source belongs to someone else (a Kubernetes tenant's volume)
    /// whose processes may swap its files while they are read: only
    /// regular files are ever opened (a device node swapped in is never
    /// opened, at about 4 µs a file). Either way nothing is followed
    /// through a symlink and nothing blocks on a FIFO.
    pub untrusted_source: bool,
}

/// How a backup picks its parent snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ParentChoice {
    /// The latest snapshot with the same host and the same paths.
    #[default]
    Auto,
    /// No parent: every file is new.
    None,
    /// This snapshot (`latest`, an id or a unique prefix).
    Snapshot(String),
    /// The latest snapshot of this Kubernetes origin, whatever its host and
    /// paths (a volume whose pod moved to another node or got a new UID).
    Origin(crate::filter::OriginFilter),
}

/// [`BackupOptions::walk_threads`]' default.
pub const DEFAULT_WALK_THREADS: usize = 4;

/// Default segment size for chunking a large file on several threads: 8 MiB.
pub const DEFAULT_SEGMENT_SIZE: usize = 8 * 1024 * 1024;

impl BackupOptions {
    /// Options to back up `paths` with every default.
    ///
    /// Set [`BackupOptions::record_path`] to record one path under another
    /// name.
    pub fn new(paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        BackupOptions {
            paths: paths.into_iter().map(Into::into).collect(),
            tags: Vec::new(),
            hostname: None,
            username: None,
            program: None,
            threads: 0,
            walk_threads: DEFAULT_WALK_THREADS,
            upload_concurrency: 2,
            compression: None,
            origin: None,
            progress: None,
            cancel: CancelToken::new(),
            parent: ParentChoice::Auto,
            force: false,
            changes: ChangeRules::default(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            selection: Default::default(),
            timing: crate::protocol::Timing::default(),
            record_path: None,
            read_limit: None,
            checkpoint: None,
            untrusted_source: false,
        }
    }
}

/// A source file that could not be read; the backup goes on without it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
    /// The operating system's class of the error, when it came from one.
    #[serde(serialize_with = "kind_name")]
    pub kind: Option<std::io::ErrorKind>,
}

fn kind_name<S: serde::Serializer>(
    kind: &Option<std::io::ErrorKind>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match kind {
        Some(k) => s.serialize_some(&format!("{k:?}")),
        None => s.serialize_none(),
    }
}

impl SourceError {
    /// Whether reading the file again may work: it was busy, interrupted or
    /// timed out, rather than missing or forbidden.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind::*;
        matches!(
            self.kind,
            Some(Interrupted | WouldBlock | TimedOut | ResourceBusy | StaleNetworkFileHandle)
        )
    }
}

/// The result of a backup.
#[derive(Clone, Debug)]
pub struct BackupSummary {
    /// The new snapshot's id.
    pub snapshot_id: SnapshotId,
    /// The new snapshot (its `summary` holds the counters).
    pub snapshot: Snapshot,
    /// Files that could not be read.
    pub errors: Vec<SourceError>,
    /// Wall time in seconds.
    pub total_duration: f64,
    /// Packs written.
    pub packs_written: u64,
    /// Index files written.
    pub index_files_written: u64,
    /// Packs stored by an interrupted backup and indexed by this one.
    pub packs_adopted: u64,
    /// Bytes of file content read from the source (unchanged files are not read).
    pub bytes_read: u64,
    /// Blobs (data and tree) this backup stored, not in the repository before.
    pub blobs_added: u64,
    /// Their size before compression and encryption.
    pub bytes_added: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    files: AtomicU64,
    dirs: AtomicU64,
    files_new: AtomicU64,
    files_changed: AtomicU64,
    dirs_new: AtomicU64,
    dirs_changed: AtomicU64,
    bytes_done: AtomicU64,
    bytes_read: AtomicU64,
    bytes_processed: AtomicU64,
    data_blobs: AtomicU64,
    tree_blobs: AtomicU64,
    data_added: AtomicU64,
    data_added_packed: AtomicU64,
}

impl Stats {
    /// Content bytes done (read, or taken unchanged from the parent).
    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }

    /// Content bytes read from the source.
    pub(crate) fn add_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_blob(&self, t: BlobType, raw: u64, stored: u64) {
        match t {
            BlobType::Data => self.data_blobs.fetch_add(1, Ordering::Relaxed),
            BlobType::Tree => self.tree_blobs.fetch_add(1, Ordering::Relaxed),
        };
        self.data_added.fetch_add(raw, Ordering::Relaxed);
        self.data_added_packed.fetch_add(stored, Ordering::Relaxed);
    }

    pub(crate) fn file_done(&self, node: &Node, status: tree_builder::Status) {
        self.files.fetch_add(1, Ordering::Relaxed);
        if node.kind == NodeKind::File {
            self.bytes_processed.fetch_add(node.size, Ordering::Relaxed);
        }
        match status {
            tree_builder::Status::New => self.files_new.fetch_add(1, Ordering::Relaxed),
            tree_builder::Status::Changed => self.files_changed.fetch_add(1, Ordering::Relaxed),
            tree_builder::Status::Unmodified => 0,
        };
    }

    pub(crate) fn dir_done(&self, status: tree_builder::Status) {
        self.dirs.fetch_add(1, Ordering::Relaxed);
        match status {
            tree_builder::Status::New => self.dirs_new.fetch_add(1, Ordering::Relaxed),
            tree_builder::Status::Changed => self.dirs_changed.fetch_add(1, Ordering::Relaxed),
            tree_builder::Status::Unmodified => 0,
        };
    }

    fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
}

/// One backup's parts, each handed only to the stages that use it: the
/// walker gets `walk` and `monitor`; the file workers `read`, `sink` and
/// `monitor`; the tree builder `sink` and `monitor`.
pub(crate) struct Ctx {
    pub(crate) sink: Sink,
    pub(crate) monitor: Monitor,
    pub(crate) walk: WalkSetup,
    pub(crate) read: ReadSetup,
}

/// Where blobs go: deduplicated against the index and this session's
/// claims, sealed, packed (see `dedup.rs`).
pub(crate) struct Sink {
    pub(crate) repo: Arc<Repository>,
    pub(crate) index: Arc<Index>,
    pub(crate) compression: Compression,
    pub(crate) packer: packer::Packer,
    pub(crate) stats: Arc<Stats>,
}

/// What every stage reports to, and the token that stops them all.
pub(crate) struct Monitor {
    pub(crate) stats: Arc<Stats>,
    pub(crate) errors: Mutex<Vec<SourceError>>,
    pub(crate) cancel: CancelToken,
    progress: Option<ProgressFn>,
    /// Totals from the scan, for the progress ETA.
    pub(crate) scan: Scan,
    /// The file a worker read last.
    pub(crate) current: Mutex<Option<PathBuf>>,
    started: Instant,
    last_progress: Mutex<Instant>,
}

/// Which attributes of a file count as a change when it is compared with
/// its parent snapshot's: a file whose size, mtime and the attributes that
/// count all match is taken from the parent without being read. By default
/// the ctime and the inode number count too. These are restic's
/// `--ignore-inode` (which ignores the ctime as well) and `--ignore-ctime`.
///
/// A copy of the files (`cp -a`, a CSI clone that copies files rather than
/// blocks) keeps sizes and mtimes but gives new inodes and ctimes: without
/// `ignore_inode`, every file of it is read again. The price: a file
/// rewritten with its size and mtime put back (`touch -r`) is taken from
/// the parent unread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeRules {
    /// The inode number and the ctime do not count.
    pub ignore_inode: bool,
    /// The ctime does not count.
    pub ignore_ctime: bool,
}

impl ChangeRules {
    /// Whether `now` has the attributes of `parent` that count (its
    /// content's presence in the index is checked apart).
    pub(crate) fn same(self, parent: &Node, now: &Node) -> bool {
        parent.size == now.size
            && parent.mtime == now.mtime
            && (self.ignore_inode || self.ignore_ctime || parent.ctime == now.ctime)
            && (self.ignore_inode || parent.inode == now.inode)
    }

    /// The attributes that do not count, as a snapshot records them.
    pub fn ignored(self) -> Vec<String> {
        match (self.ignore_inode, self.ignore_ctime) {
            (true, _) => vec!["inode".into(), "ctime".into()],
            (false, true) => vec!["ctime".into()],
            (false, false) => Vec::new(),
        }
    }
}

/// How the walker reads the source, and the parent snapshot beside it.
pub(crate) struct WalkSetup {
    pub(crate) repo: Arc<Repository>,
    pub(crate) index: Arc<Index>,
    /// The async runtime, for reading the parent's listings.
    pub(crate) rt: tokio::runtime::Handle,
    /// What to leave out.
    pub(crate) selector: crate::select::Selector,
    /// Read every file (no reuse from the parent).
    pub(crate) force: bool,
    /// Which attributes count as a change against the parent.
    pub(crate) changes: ChangeRules,
    /// The parent snapshot's root listing.
    pub(crate) parent_root: Option<coffer_repo_format::BlobId>,
    /// Directory readers ahead of the walk.
    pub(crate) walk_threads: usize,
}

/// How the file workers read and cut files.
pub(crate) struct ReadSetup {
    pub(crate) chunker: Chunker,
    /// File workers, and threads for one large file.
    pub(crate) threads: usize,
    /// Segment size for chunking a large file in parallel.
    pub(crate) segment_size: usize,
    /// Paces the reads when the options set a read limit.
    pub(crate) pacer: Option<pace::Pacer>,
    /// See [`BackupOptions::untrusted_source`].
    pub(crate) untrusted_source: bool,
}

impl Monitor {
    /// Records a file that could not be read, with the OS error's class.
    pub(crate) fn io_error(&self, path: &Path, e: &std::io::Error) {
        self.source_error(SourceError {
            path: path.to_path_buf(),
            message: e.to_string(),
            kind: Some(e.kind()),
        });
    }

    pub(crate) fn source_error(&self, e: SourceError) {
        tracing::debug!("{}: {}", e.path.display(), e.message);
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    pub(crate) fn progress(&self) -> BackupProgress {
        let done = self.scan.done.load(Ordering::Relaxed);
        BackupProgress {
            total_files: done.then(|| Stats::get(&self.scan.files)),
            total_bytes: done.then(|| Stats::get(&self.scan.bytes)),
            current_file: self.current.lock().ok().and_then(|c| c.clone()),
            seconds_elapsed: self.started.elapsed().as_secs_f64(),
            files_done: Stats::get(&self.stats.files),
            dirs_done: Stats::get(&self.stats.dirs),
            bytes_done: Stats::get(&self.stats.bytes_done),
            bytes_added: Stats::get(&self.stats.data_added),
            errors: self.errors.lock().map(|e| e.len() as u64).unwrap_or(0),
        }
    }

    pub(crate) fn wants_progress(&self) -> bool {
        self.progress.is_some()
    }

    pub(crate) fn report_progress(&self, force: bool) {
        let Some(cb) = &self.progress else { return };
        {
            // Called for every chunk: a busy lock means another thread reports.
            let mut last = if force {
                self.last_progress.lock().unwrap_or_else(|p| p.into_inner())
            } else {
                match self.last_progress.try_lock() {
                    Ok(l) => l,
                    Err(_) => return,
                }
            };
            if !force && last.elapsed().as_millis() < 100 {
                return;
            }
            *last = Instant::now();
        }
        cb(&self.progress());
    }
}

/// Backs up `opts.paths` into a new snapshot.
///
/// Files that cannot be read are reported in [`BackupSummary::errors`] and left
/// out; the snapshot is written anyway. On a fatal error or cancellation no
/// snapshot is written, but every pack already stored is indexed, so the next
/// backup does not upload it again.
///
/// The work runs as its own task: dropping the returned future (an abort, a
/// `tokio::time::timeout`) cancels it, and the task then stops within a
/// bounded time and cleans up exactly as after a cancellation: what was
/// uploaded is indexed and the session is removed.
pub async fn backup(repo: Arc<Repository>, opts: BackupOptions) -> Result<BackupSummary> {
    stop_on_drop(opts.cancel.clone(), backup_task(repo, opts)).await
}

/// Runs a backup as its own task, and trips `cancel` if the caller drops the
/// future before the task has ended.
pub(crate) async fn stop_on_drop(
    cancel: CancelToken,
    work: impl std::future::Future<Output = Result<BackupSummary>> + Send + 'static,
) -> Result<BackupSummary> {
    let guard = crate::cancel::CancelOnDrop::new(cancel);
    let result = tokio::spawn(work)
        .await
        .map_err(|e| Error::Internal(format!("the backup task failed: {e}")))?;
    guard.disarm();
    result
}

async fn backup_task(repo: Arc<Repository>, opts: BackupOptions) -> Result<BackupSummary> {
    let (plan, abs_paths) = source::SourcePlan::new(&opts.paths, opts.record_path.as_deref())?;
    let recorded = match &opts.record_path {
        Some(p) => vec![p.clone()],
        None => abs_paths,
    };
    let session = Job::start(repo, &opts, recorded).await?;
    let root = source::root_node(&plan, snapshot::timestamp_now())?;
    session
        .run(&opts, move |ctx| run_pipeline(ctx, &plan, root))
        .await
}

/// The common part of every backup: the shared context and the uploader
/// before, and the index and snapshot after, the work itself.
pub(crate) struct Job {
    live: Option<Live>,
    /// A prune plan named packs when the session started.
    planned_any: bool,
    /// The snapshot to write, but for its root: a rewrite or a copy keeps
    /// the original's time, host, paths, tags and origin.
    template: Option<Box<Snapshot>>,
    ctx: Arc<Ctx>,
    uploader: tokio::task::JoinHandle<Result<uploader::UploadReport>>,
    start_time: String,
    hostname: String,
    parent: Option<(SnapshotId, Snapshot)>,
    paths: Vec<PathBuf>,
    packs_adopted: u64,
}

impl Job {
    pub(crate) async fn start(
        repo: Arc<Repository>,
        opts: &BackupOptions,
        paths: Vec<PathBuf>,
    ) -> Result<Job> {
        let started = Instant::now();
        repo.prepare_writes().await?;
        // The protocol's order (SPEC.md): announce the session, then read the
        // prune plans, then the index; never deduplicate against planned packs.
        // The work stops when the caller cancels, and when the session's
        // lease is lost (then the backup fails with the lease's reason).
        let cancel = opts.cancel.child();
        let live = Live::start(
            repo.clone(),
            SESSIONS,
            "backup",
            opts.timing,
            Some(cancel.clone()),
        )
        .await?;
        let lease = live.lease().clone();
        let planned = crate::protocol::planned_packs(&repo).await?;
        let index = repo.load_index().await?;
        index.exclude_packs(&planned);
        let packs_adopted = indexer::adopt_unindexed(&repo, &index, &planned, &lease).await?;
        if let Some(cp) = &opts.checkpoint {
            cp(Checkpoint::SessionOpen);
        }
        let start_time = crate::repository::now_rfc3339();
        let threads = match opts.threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        let hostname = opts
            .hostname
            .clone()
            .unwrap_or_else(|| crate::repository::Identity::current().hostname);
        let parent = match &opts.parent {
            ParentChoice::None => None,
            ParentChoice::Snapshot(spec) => Some(repo.find_snapshot(spec).await?),
            ParentChoice::Auto => find_parent(&repo, &hostname, &paths).await?,
            ParentChoice::Origin(filter) => {
                let mut snapshots = repo.snapshots().await?;
                snapshots.retain(|(_, s)| !filter.is_empty() && filter.matches(s));
                snapshots.pop()
            }
        };
        let config = repo.config().clone();
        let chunker = repo
            .key()
            .chunker(config.chunker)
            .map_err(|e| Error::corrupt("repository config", e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let pool = Arc::new(packer::BufferPool::default());
        let uploader = tokio::spawn(uploader::run(
            repo.clone(),
            index.clone(),
            rx,
            opts.upload_concurrency.max(1),
            pool.clone(),
            lease,
            opts.checkpoint.clone(),
        ));
        let header_sealer = repo
            .key()
            .sealer()
            .map_err(|e| Error::corrupt("random source", e))?;
        let repo_staging = repo.store().staging_dir();
        let stats = Arc::new(Stats::default());
        let ctx = Arc::new(Ctx {
            sink: Sink {
                repo: repo.clone(),
                index: index.clone(),
                compression: opts.compression.unwrap_or(config.compression),
                packer: packer::Packer::new(
                    config.pack_size as usize,
                    header_sealer,
                    tx,
                    pool,
                    repo_staging,
                )?,
                stats: stats.clone(),
            },
            monitor: Monitor {
                stats,
                errors: Mutex::new(Vec::new()),
                cancel,
                progress: opts.progress.clone(),
                scan: Scan::default(),
                current: Mutex::new(None),
                started,
                last_progress: Mutex::new(started),
            },
            walk: WalkSetup {
                repo,
                index,
                rt: tokio::runtime::Handle::current(),
                selector: crate::select::Selector::new(&opts.selection)?,
                force: opts.force,
                changes: opts.changes,
                parent_root: parent.as_ref().and_then(|(_, s)| s.root.subtree),
                walk_threads: opts.walk_threads,
            },
            read: ReadSetup {
                chunker,
                threads,
                segment_size: opts.segment_size.max(64 * 1024),
                pacer: opts.read_limit.map(pace::Pacer::new),
                untrusted_source: opts.untrusted_source,
            },
        });
        Ok(Job {
            live: Some(live),
            planned_any: !planned.is_empty(),
            template: None,
            ctx,
            uploader,
            start_time,
            hostname,
            parent,
            paths,
            packs_adopted,
        })
    }

    /// Whether a prune plan named packs when this session started: a job
    /// that refers to blobs it did not store itself (a rewrite) must not
    /// run then (SPEC §13: it could refer to a pack the prune deletes).
    pub(crate) fn planned_any(&self) -> bool {
        self.planned_any
    }

    /// Ends the session without writing anything.
    pub(crate) async fn abandon(mut self) {
        self.uploader.abort();
        if let Some(live) = self.live.take() {
            let _ = live.end().await;
        }
    }

    /// The snapshot this job writes is `template` with the root the work
    /// returns.
    pub(crate) fn with_template(mut self, template: Snapshot) -> Self {
        self.template = Some(Box::new(template));
        self
    }

    /// Runs `work` (which returns the root node) on a blocking thread, then
    /// ships the last packs, waits for the uploads and index files, and writes
    /// the snapshot, last.
    pub(crate) async fn run(
        mut self,
        opts: &BackupOptions,
        work: impl FnOnce(&Ctx) -> Result<Node> + Send + 'static,
    ) -> Result<BackupSummary> {
        let Some(live) = self.live.take() else {
            return Err(Error::InvalidArgument(
                "the backup session was already used".into(),
            ));
        };
        match self.finish(opts, work, &live).await {
            Ok(summary) => {
                if let Err(e) = live.end().await {
                    tracing::warn!("could not remove the backup session (prune will): {e}");
                }
                Ok(summary)
            }
            Err(e) => {
                // Work stopped because the lease was lost reads as that, not
                // as a cancellation the caller did not ask for.
                let e = match (e, live.lease().lost()) {
                    (Error::Cancelled, Some(reason)) if !opts.cancel.is_cancelled() => {
                        Error::SessionLost {
                            session: live.key().to_string(),
                            reason,
                        }
                    }
                    (e, _) => e,
                };
                let _ = live.end().await;
                Err(e)
            }
        }
    }

    async fn finish(
        self,
        opts: &BackupOptions,
        work: impl FnOnce(&Ctx) -> Result<Node> + Send + 'static,
        live: &Live,
    ) -> Result<BackupSummary> {
        let ctx = self.ctx.clone();
        let built = tokio::task::spawn_blocking(move || {
            let built = work(&ctx);
            // Ship what was packed even after a failure, so that it gets indexed.
            let flushed = ctx.sink.packer.flush();
            ctx.sink.packer.close();
            built.and_then(|root| flushed.map(|()| root))
        })
        .await;
        let ctx = self.ctx;
        ctx.sink.packer.close();
        let report = self.uploader.await??;
        let root = built??;
        ctx.monitor.report_progress(true);
        let errors =
            std::mem::take(&mut *ctx.monitor.errors.lock().unwrap_or_else(|p| p.into_inner()));
        let snapshot = match self.template {
            Some(template) => Snapshot { root, ..*template },
            None => {
                let mut s = snapshot::build(&ctx.monitor, opts, &self.paths, root, self.start_time);
                s.hostname = self.hostname;
                s.parent = self.parent.map(|(id, _)| id);
                s
            }
        };
        let snapshot_id =
            write_snapshot_in_lease(&ctx.sink.repo, &snapshot, live, opts.checkpoint.as_ref())
                .await?;
        Ok(BackupSummary {
            snapshot_id,
            snapshot,
            errors,
            total_duration: ctx.monitor.started.elapsed().as_secs_f64(),
            packs_written: report.packs,
            index_files_written: report.index_files,
            packs_adopted: self.packs_adopted,
            bytes_read: Stats::get(&ctx.monitor.stats.bytes_read),
            blobs_added: Stats::get(&ctx.monitor.stats.data_blobs)
                + Stats::get(&ctx.monitor.stats.tree_blobs),
            bytes_added: Stats::get(&ctx.monitor.stats.data_added),
        })
    }
}

/// Writes the snapshot only while nobody may have taken this backup for dead
/// (and pruned what it uses), SPEC §13: the session must be in the store and
/// its lease valid before the write, the write must complete within the
/// lease (no retry past it), and the session must still be there after it.
/// Otherwise the snapshot, which may have landed anyway, is deleted.
async fn write_snapshot_in_lease(
    repo: &Repository,
    snapshot: &Snapshot,
    live: &Live,
    checkpoint: Option<&CheckpointFn>,
) -> Result<SnapshotId> {
    live.check_alive().await?;
    let (id, sealed) = repo.seal_snapshot(snapshot)?;
    if let Some(cp) = checkpoint {
        cp(Checkpoint::SnapshotWrite);
    }
    let stored = live
        .lease()
        .bounded("writing the snapshot", repo.put_snapshot(&id, sealed))
        .await;
    let verdict = match stored {
        Ok(()) => live.check_alive().await,
        Err(e) => Err(e),
    };
    if let Err(e) = verdict {
        // The write may have landed (or may still land) although it was
        // abandoned: take the snapshot back so nothing relies on it.
        match repo.delete_snapshot(&id).await {
            Ok(()) => tracing::warn!(
                "deleted snapshot {} written without a lease: {e}",
                id.short()
            ),
            Err(d) => tracing::error!(
                "snapshot {} may have been written without a lease and could not be deleted \
                 ({d}); forget it: coffer forget {}",
                id.short(),
                id
            ),
        }
        return Err(e);
    }
    Ok(id)
}

fn run_pipeline(ctx: &Ctx, plan: &source::SourcePlan, root: Node) -> Result<Node> {
    let Ctx {
        sink,
        monitor,
        walk,
        read,
    } = ctx;
    let (ev_tx, ev_rx) = crossbeam_channel::bounded(4096 / source::EVENT_BATCH);
    let (job_tx, job_rx) = crossbeam_channel::bounded(read.threads * 4);
    std::thread::scope(|s| {
        if monitor.wants_progress() {
            s.spawn(|| monitor.scan.run(plan, &walk.selector, &monitor.cancel));
        }
        // Without a read limit, a prefetch stage opens the queued files and
        // starts their reads; with one, the workers read at the paced rate only.
        let job_rx = if read.pacer.is_none() {
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(prefetch::QUEUE);
            let untrusted = read.untrusted_source;
            let cancel = &monitor.cancel;
            s.spawn(move || prefetch::run(untrusted, cancel, job_rx, ready_tx));
            ready_rx
        } else {
            job_rx
        };
        let walker = s.spawn(move || {
            source::Walker {
                setup: walk,
                monitor,
                events: ev_tx,
                batch: Vec::with_capacity(source::EVENT_BATCH),
                jobs: job_tx,
                owners: Default::default(),
                parents: Vec::new(),
                lookahead: lookahead::Lookahead::new(walk.walk_threads),
            }
            .run(plan, walk.parent_root)
        });
        let workers: Vec<_> = (0..read.threads)
            .map(|_| {
                let rx = job_rx.clone();
                s.spawn(move || file_worker::run_worker(read, sink, monitor, rx))
            })
            .collect();
        drop(job_rx);
        let (root, built) = match tree_builder::build(sink, monitor, walk.parent_root, root, ev_rx)
        {
            Ok(root) => (Some(root), Ok(())),
            Err(e) => (None, Err(e)),
        };
        let mut results = vec![built];
        results.push(
            walker
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the walker thread panicked".into()))),
        );
        for w in workers {
            results.push(
                w.join()
                    .unwrap_or_else(|_| Err(Error::Internal("a file worker panicked".into()))),
            );
        }
        // The first real error wins over the "stopped" errors it caused elsewhere.
        let mut cancelled = false;
        for e in results.into_iter().filter_map(|r| r.err()) {
            match e {
                Error::Cancelled => cancelled = true,
                e => return Err(e),
            }
        }
        // A walk that stopped early leaves a tree that looks complete: never
        // let it become a snapshot.
        match root {
            Some(root) if !cancelled && !monitor.cancel.is_cancelled() => Ok(root),
            _ => Err(Error::Cancelled),
        }
    })
}

/// The latest snapshot with the same host and the same paths.
async fn find_parent(
    repo: &Repository,
    hostname: &str,
    paths: &[PathBuf],
) -> Result<Option<(SnapshotId, Snapshot)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut want: Vec<&[u8]> = paths.iter().map(|p| p.as_os_str().as_bytes()).collect();
    want.sort();
    let mut snapshots = repo.snapshots().await?;
    snapshots.retain(|(_, s)| {
        let mut have: Vec<&[u8]> = s.paths.iter().map(|p| p.0.as_slice()).collect();
        have.sort();
        s.hostname == hostname && have == want
    });
    Ok(snapshots.pop())
}
