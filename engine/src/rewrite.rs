//! Rewriting snapshots: new snapshots whose trees leave out what matches
//! (`rewrite --exclude`), or whose files no longer refer to lost blobs
//! (`repair snapshots`, in [`crate::repair`]).
//!
//! A rewrite runs as a backup session ([`crate::backup`]'s job), so it is
//! safe beside backups and prunes (SPEC §13): the pages it writes are tree
//! blobs like any backup's, and the new snapshot is written last, within
//! the session's lease. Directories that nothing changed keep their pages
//! (same ids); only the pages on the way to a change are written again. The
//! new snapshot keeps the original's time, host, paths, tags and origin,
//! and records the original's id (`original`). Data blobs are never read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_repo_format::snapshot::Snapshot;
use coffer_repo_format::tree::{Node, NodeKind};
use coffer_repo_format::SnapshotId;

use crate::backup::tree_builder::PageWriter;
use crate::backup::{BackupOptions, Ctx, Job, ParentChoice};
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::protocol::Timing;
use crate::repository::Repository;
use crate::trees::{Step, Walk};

/// What becomes of one entry of a rewritten tree.
pub(crate) enum Edit {
    /// As it is.
    Keep,
    /// Left out (a directory with everything in it).
    Drop,
    /// This node instead (a file whose content changed).
    Replace(Box<Node>),
}

/// Decides, entry by entry, what a rewrite does.
pub(crate) trait Editor {
    /// `node`, at snapshot path `path` (a directory before its contents).
    fn edit(&mut self, path: &Path, node: &Node) -> Result<Edit>;
    /// The listing of directory `path` cannot be read (from its start, or,
    /// when `opened`, from a later page on): `Ok` keeps what was read of it
    /// (recorded in `node`, which may be changed), `Err` stops the rewrite.
    fn unreadable(
        &mut self,
        path: &Path,
        node: &mut Node,
        error: Error,
        opened: bool,
    ) -> Result<()>;
}

/// One directory being rewritten.
struct Frame {
    node: Node,
    path: PathBuf,
    pages: PageWriter,
    changed: bool,
}

/// Rewrites the tree of `root` through `editor`, storing the pages that
/// change; returns the new root and whether anything changed.
pub(crate) fn rewrite_tree(ctx: &Ctx, root: Node, editor: &mut dyn Editor) -> Result<(Node, bool)> {
    let sink = &ctx.sink;
    let setup = &ctx.walk;
    let mut store = crate::backup::tree_builder::SessionStore::new(sink)?;
    let mut walk = Walk::new(&setup.repo, &setup.index, "/".into(), root).keep_going();
    let mut frames: Vec<Frame> = Vec::new();
    let mut result: Option<(Node, bool)> = None;
    while let Some(step) = setup.rt.block_on(walk.next())? {
        ctx.monitor.cancel.check()?;
        match step {
            Step::Enter(e) if frames.is_empty() => frames.push(Frame {
                node: e.node,
                path: e.path,
                pages: PageWriter::default(),
                changed: false,
            }),
            Step::Enter(e) => match editor.edit(&e.path, &e.node)? {
                Edit::Drop => {
                    walk.skip();
                    if let Some(parent) = frames.last_mut() {
                        parent.changed = true;
                    }
                }
                Edit::Keep | Edit::Replace(_) => frames.push(Frame {
                    node: e.node,
                    path: e.path,
                    pages: PageWriter::default(),
                    changed: false,
                }),
            },
            Step::Leaf(e) => {
                let Some(frame) = frames.last_mut() else {
                    continue;
                };
                match editor.edit(&e.path, &e.node)? {
                    Edit::Keep => frame.pages.push(e.node, &mut store)?,
                    Edit::Drop => frame.changed = true,
                    Edit::Replace(n) => {
                        frame.changed = true;
                        frame.pages.push(*n, &mut store)?;
                    }
                }
            }
            Step::Unreadable {
                entry,
                error,
                opened,
            } => {
                let Some(frame) = frames.last_mut() else {
                    return Err(error);
                };
                if frame.path != entry.path {
                    return Err(error);
                }
                editor.unreadable(&entry.path, &mut frame.node, error, opened)?;
                frame.changed = true;
            }
            Step::Leave(..) => {
                let Some(frame) = frames.pop() else {
                    continue;
                };
                let mut node = frame.node;
                if frame.changed {
                    node.subtree = Some(frame.pages.finish(&mut store)?);
                }
                match frames.last_mut() {
                    Some(parent) => {
                        parent.changed |= frame.changed;
                        parent.pages.push(node, &mut store)?;
                    }
                    None => result = Some((node, frame.changed)),
                }
            }
        }
    }
    result.ok_or_else(|| Error::Internal("the rewritten tree has no root".into()))
}

/// How `rewrite` runs.
#[derive(Clone, Debug)]
pub struct RewriteOptions {
    /// Leave out what matches these patterns (`backup --exclude` syntax,
    /// matched against snapshot paths as `coffer ls` shows them).
    pub exclude: Vec<String>,
    /// Like `exclude`, ignoring case.
    pub iexclude: Vec<String>,
    /// Delete each original once its rewritten snapshot is stored.
    pub forget: bool,
    /// Only say what would be left out; write nothing.
    pub dry_run: bool,
    /// The concurrency protocol's timings.
    pub timing: Timing,
    /// Stops the rewrite at the next entry (no snapshot is written then).
    pub cancel: CancelToken,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        RewriteOptions {
            exclude: Vec::new(),
            iexclude: Vec::new(),
            forget: false,
            dry_run: false,
            timing: Timing::default(),
            cancel: CancelToken::new(),
        }
    }
}

/// What happened to one snapshot.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rewritten {
    /// The snapshot rewritten.
    pub original: SnapshotId,
    /// Its new snapshot; `None` when nothing matched (nothing written) or
    /// on a dry run.
    pub new: Option<SnapshotId>,
    /// The paths left out (a directory stands for what is in it).
    pub removed: Vec<String>,
    /// Whether the original was deleted (`forget`).
    pub forgotten: bool,
}

struct Excluder {
    patterns: crate::select::Patterns,
    removed: Vec<String>,
}

impl Editor for Excluder {
    fn edit(&mut self, path: &Path, node: &Node) -> Result<Edit> {
        if self.patterns.matches(path, node.kind == NodeKind::Dir) {
            self.removed.push(path.display().to_string());
            return Ok(Edit::Drop);
        }
        Ok(Edit::Keep)
    }

    fn unreadable(&mut self, path: &Path, _: &mut Node, error: Error, _: bool) -> Result<()> {
        Err(Error::InvalidArgument(format!(
            "cannot rewrite a snapshot whose directory {} cannot be read ({error}); run \
             `coffer repair snapshots` first",
            path.display()
        )))
    }
}

/// The snapshot a rewrite of `(id, s)` writes: the original's, recording
/// where it came from.
pub(crate) fn derived(id: &SnapshotId, s: &Snapshot, program: &str) -> Snapshot {
    let mut out = s.clone();
    out.original = Some(s.original.unwrap_or(*id));
    out.program = program.to_string();
    out
}

/// Runs `editor` over the snapshot `(id, snap)` in a session of its own and
/// writes the result as a new snapshot when anything changed.
pub(crate) async fn rewrite_one<E: Editor + Send + 'static>(
    repo: &Arc<Repository>,
    id: &SnapshotId,
    snap: &Snapshot,
    editor: E,
    timing: Timing,
    cancel: &CancelToken,
    program: &str,
) -> Result<(Option<SnapshotId>, E)> {
    use std::os::unix::ffi::OsStrExt;
    let paths: Vec<PathBuf> = snap
        .paths
        .iter()
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(&p.0)))
        .collect();
    let mut opts = BackupOptions::new(paths.clone());
    opts.parent = ParentChoice::None;
    opts.timing = timing;
    opts.cancel = cancel.clone();
    let job = Job::start(repo.clone(), &opts, paths).await?;
    if job.planned_any() {
        // A rewrite refers to blobs it did not store: never to a pack that a
        // running prune may delete (SPEC §13).
        job.abandon().await;
        return Err(Error::InvalidArgument(
            "a prune is in progress (its plan is in the repository): a rewrite refers to \
             blobs it did not store, never to packs a prune may delete; run it again when the \
             prune is done"
                .into(),
        ));
    }
    let job = job.with_template(derived(id, snap, program));
    let root = snap.root.clone();
    let outcome = Arc::new(std::sync::Mutex::new(None));
    let out = outcome.clone();
    let summary = job
        .run(&opts, move |ctx| {
            let mut editor = editor;
            let (root, changed) = rewrite_tree(ctx, root, &mut editor)?;
            *out.lock().unwrap_or_else(|p| p.into_inner()) = Some((changed, editor));
            if !changed {
                // Nothing to write: stop before the snapshot, like a cancel.
                return Err(Error::Cancelled);
            }
            Ok(root)
        })
        .await;
    let (changed, editor) = outcome
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| match &summary {
            Err(e) => Error::Internal(format!("the rewrite stopped: {e}")),
            Ok(_) => Error::Internal("the rewrite lost its result".into()),
        })?;
    match summary {
        Ok(s) => Ok((Some(s.snapshot_id), editor)),
        Err(Error::Cancelled) if !changed && !cancel.is_cancelled() => Ok((None, editor)),
        Err(e) => Err(e),
    }
}

/// How [`rewrite_each`] runs.
pub(crate) struct Each<'a> {
    pub(crate) dry_run: bool,
    pub(crate) forget: bool,
    pub(crate) timing: Timing,
    pub(crate) cancel: &'a CancelToken,
    pub(crate) program: String,
}

/// What [`rewrite_each`] did to one snapshot.
pub(crate) struct Done<E> {
    pub(crate) original: SnapshotId,
    pub(crate) new: Option<SnapshotId>,
    pub(crate) editor: E,
    pub(crate) forgotten: bool,
}

/// Runs an editor from `make` over each of `snapshots`: on a dry run only
/// through the walk (nothing written), else as [`rewrite_one`], deleting
/// the original after its new snapshot is stored when `forget`.
pub(crate) async fn rewrite_each<E: Editor + Send + 'static>(
    repo: &Arc<Repository>,
    snapshots: Vec<(SnapshotId, Snapshot)>,
    each: Each<'_>,
    mut make: impl FnMut() -> Result<E>,
) -> Result<Vec<Done<E>>> {
    let index = repo.load_index().await?;
    let mut out = Vec::new();
    for (id, snap) in snapshots {
        each.cancel.check()?;
        let editor = make()?;
        if each.dry_run {
            out.push(Done {
                original: id,
                new: None,
                editor: survey(repo, &index, &snap, editor).await?,
                forgotten: false,
            });
            continue;
        }
        let (new, editor) = rewrite_one(
            repo,
            &id,
            &snap,
            editor,
            each.timing,
            each.cancel,
            &each.program,
        )
        .await?;
        let forgotten = new.is_some() && each.forget;
        if forgotten {
            repo.delete_snapshot(&id).await?;
        }
        out.push(Done {
            original: id,
            new,
            editor,
            forgotten,
        });
    }
    Ok(out)
}

/// Runs `editor` over `snap`'s tree, read only: what a rewrite would do.
async fn survey<E: Editor>(
    repo: &Repository,
    index: &crate::index::Index,
    snap: &Snapshot,
    mut editor: E,
) -> Result<E> {
    let mut walk = Walk::new(repo, index, "/".into(), snap.root.clone()).keep_going();
    let mut first = true;
    while let Some(step) = walk.next().await? {
        match step {
            Step::Enter(_) if first => first = false,
            Step::Enter(e) => {
                if let Edit::Drop = editor.edit(&e.path, &e.node)? {
                    walk.skip();
                }
            }
            Step::Leaf(e) => {
                editor.edit(&e.path, &e.node)?;
            }
            Step::Unreadable {
                mut entry,
                error,
                opened,
            } => editor.unreadable(&entry.path.clone(), &mut entry.node, error, opened)?,
            Step::Leave(..) => {}
        }
    }
    Ok(editor)
}

/// Writes, for each of `snapshots`, a new snapshot without the paths that
/// match `opts.exclude` (and `iexclude`); with `forget`, deletes each
/// original once its new snapshot is stored. A snapshot in which nothing
/// matches is left as it is. A following `prune` frees the data only the
/// originals used.
pub async fn rewrite(
    repo: Arc<Repository>,
    snapshots: Vec<(SnapshotId, Snapshot)>,
    opts: RewriteOptions,
) -> Result<Vec<Rewritten>> {
    let patterns = || crate::select::Patterns::new(&opts.exclude, &opts.iexclude);
    if patterns()?.is_empty() {
        return Err(Error::InvalidArgument(
            "nothing to leave out: give --exclude, --iexclude or --exclude-file".into(),
        ));
    }
    let each = Each {
        dry_run: opts.dry_run,
        forget: opts.forget,
        timing: opts.timing,
        cancel: &opts.cancel,
        program: format!("coffer {} rewrite", env!("CARGO_PKG_VERSION")),
    };
    let done = rewrite_each(&repo, snapshots, each, || {
        Ok(Excluder {
            patterns: patterns()?,
            removed: Vec::new(),
        })
    })
    .await?;
    Ok(done
        .into_iter()
        .map(|d| Rewritten {
            original: d.original,
            new: d.new,
            removed: d.editor.removed,
            forgotten: d.forgotten,
        })
        .collect())
}
