//! Copying snapshots into a second repository (`coffer copy`).
//!
//! Each snapshot is copied in a backup session of the destination
//! ([`crate::backup`]'s job), so a copy runs beside backups and prunes of
//! both repositories without locks (SPEC §13): the source is only read, and
//! the destination sees a backup whose "files" are the source snapshot's.
//! The destination's key and chunking are used: blob ids are keyed, so every
//! blob gets the destination's id. Where both repositories cut content alike
//! (the same chunker seed and parameters: `coffer init --copy-chunker-params`),
//! each data blob is copied as it is; otherwise each file is re-chunked.
//! Blobs the destination holds already are not stored again.
//!
//! A copied snapshot keeps the source's time, host, paths, tags, origin and
//! summary, and records the source snapshot's id as `original`; a snapshot
//! whose id some destination snapshot records is not copied again. The
//! newest such pair (source snapshot, its copy) of the same host, paths and
//! origin is the next copy's parent: a directory whose listing is unchanged
//! since the parent takes the copy's listing as it is, and a file whose
//! content list is unchanged takes the copy's content, so a nightly copy
//! reads only what changed. Memory is that of a backup: one page per
//! directory level and the pipeline's bounded buffers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use coffer_repo_format::blob::BlobType;
use coffer_repo_format::snapshot::Snapshot;
use coffer_repo_format::tree::{ContentRef, Node, NodeKind};
use coffer_repo_format::{BlobId, SnapshotId};
use futures::StreamExt;

use crate::backup::dedup::BlobWriter;
use crate::backup::file_worker::{FileError, Worker};
use crate::backup::source::ParentDir;
use crate::backup::tree_builder::{PageWriter, SessionStore};
use crate::backup::{BackupOptions, Ctx, Job, ParentChoice};
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::protocol::Timing;
use crate::repository::Repository;
use crate::trees::{Step, Walk};

/// Blob reads in flight while a file is copied.
const READS_AHEAD: usize = 8;

/// How `copy` runs.
#[derive(Clone)]
pub struct CopyOptions {
    /// Only say which snapshots would be copied.
    pub dry_run: bool,
    /// The destination's concurrency protocol timings.
    pub timing: Timing,
    /// Stops the copy at the next entry (the snapshot being copied is not
    /// written; what was stored is indexed, and the next copy reuses it).
    pub cancel: CancelToken,
    /// Called at each destination session's checkpoints (tests).
    pub checkpoint: Option<crate::backup::CheckpointFn>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            dry_run: false,
            timing: Timing::default(),
            cancel: CancelToken::new(),
            checkpoint: None,
        }
    }
}

/// What became of one source snapshot.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Copied {
    /// The source snapshot.
    pub source: SnapshotId,
    /// Its copy, written now.
    pub new: Option<SnapshotId>,
    /// Its copy, written before (nothing was done).
    pub already: Option<SnapshotId>,
    /// The destination snapshot used as parent.
    pub parent: Option<SnapshotId>,
    /// Whether file content was copied blob by blob (same chunking), rather
    /// than re-chunked.
    pub same_chunking: bool,
    /// Files whose content was read from the source.
    pub files_read: u64,
    /// Files whose content was taken from the parent copy.
    pub files_reused: u64,
    /// Directories taken whole from the parent copy.
    pub dirs_reused: u64,
    /// Content bytes read from the source.
    pub bytes_read: u64,
    /// Data and tree blobs stored in the destination (not there before).
    pub blobs_stored: u64,
    /// Their size before compression and encryption.
    pub bytes_stored: u64,
}

/// Counters the copy's work thread fills.
#[derive(Default)]
struct Counters {
    files_read: AtomicU64,
    files_reused: AtomicU64,
    dirs_reused: AtomicU64,
    bytes_read: AtomicU64,
}

/// Copies `snapshots` of `src` into `dst`, oldest first; see the module docs.
pub async fn copy(
    src: Arc<Repository>,
    dst: Arc<Repository>,
    mut snapshots: Vec<(SnapshotId, Snapshot)>,
    opts: CopyOptions,
) -> Result<Vec<Copied>> {
    if src.config().id == dst.config().id {
        return Err(Error::InvalidArgument(
            "the source and the destination are the same repository (same config id)".into(),
        ));
    }
    snapshots.sort_by_key(|(_, s)| crate::repository::snapshot_time(s));
    let same_chunking =
        src.config().chunker == dst.config().chunker && src.key().same_chunker_seed(dst.key());
    let src_index = src.load_index().await?;
    let all_src = src.snapshots().await?;
    let mut dst_snaps = dst.snapshots().await?;
    let mut out = Vec::new();
    for (id, snap) in snapshots {
        opts.cancel.check()?;
        let mut report = Copied {
            source: id,
            same_chunking,
            ..Default::default()
        };
        if let Some((copied, _)) = dst_snaps.iter().find(|(_, s)| s.original == Some(id)) {
            report.already = Some(*copied);
            out.push(report);
            continue;
        }
        let parent = parent_pair(&all_src, &dst_snaps, &snap);
        report.parent = parent.as_ref().map(|(_, d)| d.0);
        if opts.dry_run {
            out.push(report);
            continue;
        }
        let (new_id, new_snap) = copy_one(
            &src,
            &src_index,
            &dst,
            (&id, &snap),
            parent,
            same_chunking,
            &opts,
            &mut report,
        )
        .await?;
        report.new = Some(new_id);
        dst_snaps.push((new_id, new_snap));
        out.push(report);
    }
    Ok(out)
}

/// The newest source snapshot of the same host, paths and origin as `snap`
/// that has a copy, with that copy.
fn parent_pair(
    src: &[(SnapshotId, Snapshot)],
    dst: &[(SnapshotId, Snapshot)],
    snap: &Snapshot,
) -> Option<((SnapshotId, Snapshot), (SnapshotId, Snapshot))> {
    let alike = |s: &Snapshot| {
        s.hostname == snap.hostname && s.paths == snap.paths && s.origin == snap.origin
    };
    let mut best: Option<((SnapshotId, Snapshot), (SnapshotId, Snapshot))> = None;
    for (did, d) in dst {
        let Some(orig) = d.original else { continue };
        let Some((sid, s)) = src.iter().find(|(sid, _)| *sid == orig) else {
            continue;
        };
        if !alike(s) {
            continue;
        }
        let newer = best.as_ref().is_none_or(|((_, b), _)| {
            crate::repository::snapshot_time(s) > crate::repository::snapshot_time(b)
        });
        if newer {
            best = Some(((*sid, s.clone()), (*did, d.clone())));
        }
    }
    best
}

#[allow(clippy::too_many_arguments)]
async fn copy_one(
    src: &Arc<Repository>,
    src_index: &Arc<Index>,
    dst: &Arc<Repository>,
    (id, snap): (&SnapshotId, &Snapshot),
    parent: Option<((SnapshotId, Snapshot), (SnapshotId, Snapshot))>,
    same_chunking: bool,
    opts: &CopyOptions,
    report: &mut Copied,
) -> Result<(SnapshotId, Snapshot)> {
    use std::os::unix::ffi::OsStrExt;
    let paths: Vec<std::path::PathBuf> = snap
        .paths
        .iter()
        .map(|p| std::ffi::OsStr::from_bytes(&p.0).into())
        .collect();
    let mut bopts = BackupOptions::new(paths.clone());
    bopts.parent = ParentChoice::None;
    bopts.timing = opts.timing;
    bopts.cancel = opts.cancel.clone();
    bopts.checkpoint = opts.checkpoint.clone();
    let job = Job::start(dst.clone(), &bopts, paths).await?;
    // Taking a listing or content from the parent copy refers to blobs this
    // session did not store: not while a prune plan may delete them (SPEC
    // §13). The copy then reads everything (and stores only what is new).
    let parent = parent.filter(|_| !job.planned_any());
    let mut template = snap.clone();
    template.original = Some(*id);
    template.parent = parent.as_ref().map(|(_, d)| d.0);
    let job = job.with_template(template);
    let counters = Arc::new(Counters::default());
    let work = Work {
        src: src.clone(),
        src_index: src_index.clone(),
        root: snap.root.clone(),
        parents: parent.map(|((_, p), (_, d))| (p.root.subtree, d.root.subtree)),
        same_chunking,
        counters: counters.clone(),
    };
    let summary = job.run(&bopts, move |ctx| work.run(ctx)).await?;
    report.files_read = counters.files_read.load(Ordering::Relaxed);
    report.files_reused = counters.files_reused.load(Ordering::Relaxed);
    report.dirs_reused = counters.dirs_reused.load(Ordering::Relaxed);
    report.bytes_read = counters.bytes_read.load(Ordering::Relaxed);
    report.blobs_stored = summary.blobs_added;
    report.bytes_stored = summary.bytes_added;
    Ok((summary.snapshot_id, summary.snapshot))
}

/// The copy of one snapshot's tree, on the session's work thread.
struct Work {
    src: Arc<Repository>,
    src_index: Arc<Index>,
    root: Node,
    /// The root listings of the parent pair: (source, copy).
    parents: Option<(Option<BlobId>, Option<BlobId>)>,
    same_chunking: bool,
    counters: Arc<Counters>,
}

/// One directory being copied, with the same directory in the parent pair.
struct Frame<'a> {
    node: Node,
    pages: PageWriter,
    /// The source parent's listing of this directory.
    was: ParentDir<'a>,
    /// The parent copy's listing of it.
    copied: ParentDir<'a>,
}

impl Work {
    fn run(self, ctx: &Ctx) -> Result<Node> {
        let rt = &ctx.walk.rt;
        let dst = &ctx.walk.repo;
        let dst_index = &ctx.sink.index;
        let mut store = SessionStore::new(&ctx.sink)?;
        let mut sealer = BlobWriter::new(&ctx.sink)?;
        let mut walk = Walk::new(&self.src, &self.src_index, "/".into(), self.root.clone());
        let mut frames: Vec<Frame<'_>> = Vec::new();
        while let Some(step) = rt.block_on(walk.next())? {
            ctx.monitor.cancel.check()?;
            match step {
                Step::Enter(e) if frames.is_empty() => {
                    let (was, copied) = self.parents.unwrap_or((None, None));
                    frames.push(Frame {
                        node: e.node,
                        pages: PageWriter::default(),
                        was: ParentDir::open_in(rt, &self.src, &self.src_index, was),
                        copied: ParentDir::open_in(rt, dst, dst_index, copied),
                    });
                }
                Step::Enter(e) => {
                    let Some(frame) = frames.last_mut() else {
                        continue;
                    };
                    let name = e.node.name.0.clone();
                    let was = frame.was.find_in(rt, &name);
                    let copied = frame.copied.find_in(rt, &name);
                    let dir_tree = |n: &Option<Node>| {
                        n.as_ref()
                            .filter(|n| n.kind == NodeKind::Dir)
                            .and_then(|n| n.subtree)
                    };
                    let (was, copied) = (dir_tree(&was), dir_tree(&copied));
                    if let (Some(w), Some(c)) = (was, copied) {
                        if e.node.subtree == Some(w) {
                            // Unchanged since the parent: its copy's listing.
                            walk.skip();
                            let mut node = e.node;
                            node.subtree = Some(c);
                            frame.pages.push(node, &mut store)?;
                            self.counters.dirs_reused.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    frames.push(Frame {
                        node: e.node,
                        pages: PageWriter::default(),
                        was: ParentDir::open_in(rt, &self.src, &self.src_index, was),
                        copied: ParentDir::open_in(rt, dst, dst_index, copied),
                    });
                }
                Step::Leaf(e) => {
                    let Some(frame) = frames.last_mut() else {
                        continue;
                    };
                    let mut node = e.node;
                    if !node.content.is_empty() {
                        let was = frame.was.find_in(rt, &node.name.0);
                        let copied = frame.copied.find_in(rt, &node.name.0);
                        match reusable(&node, was, copied, dst_index) {
                            Some(content) => {
                                node.content = content;
                                self.counters.files_reused.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                node = self.copy_content(ctx, &mut sealer, &e.path, node)?;
                                self.counters.files_read.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    frame.pages.push(node, &mut store)?;
                }
                Step::Leave(..) => {
                    let Some(frame) = frames.pop() else {
                        continue;
                    };
                    let mut node = frame.node;
                    node.subtree = Some(frame.pages.finish(&mut store)?);
                    match frames.last_mut() {
                        Some(parent) => parent.pages.push(node, &mut store)?,
                        None => return Ok(node),
                    }
                }
                Step::Unreadable { error, .. } => return Err(error),
            }
        }
        Err(Error::Internal("the copied tree has no root".into()))
    }

    /// `node` with its content stored in the destination: blob by blob with
    /// the same chunking, else re-chunked.
    fn copy_content(
        &self,
        ctx: &Ctx,
        sealer: &mut BlobWriter,
        path: &std::path::Path,
        mut node: Node,
    ) -> Result<Node> {
        let rt = &ctx.walk.rt;
        let mut blobs = read_ahead(&self.src, &self.src_index, &node.content);
        if self.same_chunking {
            let mut content = Vec::with_capacity(node.content.len());
            while let Some(piece) = rt.block_on(blobs.next()) {
                ctx.monitor.cancel.check()?;
                let (c, plain) = piece?;
                content.push(match plain {
                    None => c,
                    Some(plain) => {
                        self.counters
                            .bytes_read
                            .fetch_add(plain.len() as u64, Ordering::Relaxed);
                        ContentRef {
                            id: Some(ctx.sink.dedup_and_store(sealer, BlobType::Data, &plain)?),
                            len: c.len,
                        }
                    }
                });
            }
            node.content = content;
            return Ok(node);
        }
        let mut reader = ContentReader {
            rt: rt.clone(),
            blobs,
            current: Vec::new(),
            pos: 0,
            zeros: 0,
            counters: &self.counters,
        };
        match Worker::new(&ctx.read, &ctx.sink, &ctx.monitor).back_up_reader(
            path,
            &mut reader,
            node,
        ) {
            Ok(n) => Ok(n),
            Err(FileError::Fatal(e)) => Err(e),
            Err(FileError::Source(e)) => Err(Error::InvalidArgument(format!(
                "cannot copy {}: {}",
                path.display(),
                e.message
            ))),
        }
    }
}

/// The parent copy's content for `node`, when the source parent's entry has
/// the same content (so the copy's content holds the same bytes) and every
/// blob of it is in the destination's index.
fn reusable(
    node: &Node,
    was: Option<Node>,
    copied: Option<Node>,
    dst_index: &Index,
) -> Option<Vec<ContentRef>> {
    let (was, copied) = (was?, copied?);
    let same = was.kind == node.kind
        && copied.kind == node.kind
        && was.size == node.size
        && copied.size == node.size
        && was.content == node.content;
    let listed = copied
        .content
        .iter()
        .all(|c| c.id.is_none_or(|id| dst_index.contains(&id)));
    (same && listed).then_some(copied.content)
}

/// One content reference with its plaintext (`None` for a run of zeros).
type Piece = Result<(ContentRef, Option<Vec<u8>>)>;

/// The plaintexts of `content`, in order, a few reads ahead.
fn read_ahead<'a>(
    repo: &'a Repository,
    index: &'a Index,
    content: &[ContentRef],
) -> futures::stream::BoxStream<'a, Piece> {
    let refs: Vec<ContentRef> = content.to_vec();
    futures::stream::iter(refs)
        .map(move |c| async move {
            match c.id {
                None => Ok((c, None)),
                Some(id) => {
                    let plain = repo.read_blob(index, BlobType::Data, &id).await?;
                    if plain.len() as u64 != c.len {
                        return Err(Error::corrupt(
                            format!("data blob {id}"),
                            coffer_repo_format::FormatError::Malformed {
                                what: "content reference",
                                reason: format!(
                                    "the tree says {} bytes, the blob has {}",
                                    c.len,
                                    plain.len()
                                ),
                            },
                        ));
                    }
                    Ok((c, Some(plain)))
                }
            }
        })
        .buffered(READS_AHEAD)
        .boxed()
}

/// A file's content as a byte stream, for re-chunking.
struct ContentReader<'a> {
    rt: tokio::runtime::Handle,
    blobs: futures::stream::BoxStream<'a, Piece>,
    current: Vec<u8>,
    pos: usize,
    /// Zero bytes still to yield.
    zeros: u64,
    counters: &'a Counters,
}

impl std::io::Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.current.len() {
                let n = buf.len().min(self.current.len() - self.pos);
                buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.zeros > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.zeros).unwrap_or(usize::MAX));
                buf[..n].fill(0);
                self.zeros -= n as u64;
                return Ok(n);
            }
            match self.rt.block_on(self.blobs.next()) {
                None => return Ok(0),
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                Some(Ok((_, Some(plain)))) => {
                    self.counters
                        .bytes_read
                        .fetch_add(plain.len() as u64, Ordering::Relaxed);
                    self.current = plain;
                    self.pos = 0;
                }
                Some(Ok((c, None))) => self.zeros = c.len,
            }
        }
    }
}
