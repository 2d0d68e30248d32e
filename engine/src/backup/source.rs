//! Source: what to back up, walked in name order into a stream of events.
//!
//! The walker reads metadata only. Regular files with content go to the file
//! workers as [`FileJob`]s; the event stream carries a receiver for each, so the
//! tree builder gets every node in walk order however the workers interleave.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender};

use coffer_repo_format::tree::{Node, NodeKind, Timestamp};

use super::{Ctx, SourceError};
use crate::error::{Error, Result};
use crate::fsmeta::{self, Owners};

/// What a file worker sends back: the node with its content, or why not.
pub(crate) type FileOutcome = std::result::Result<Node, SourceError>;

/// A regular file for a worker to read.
pub(crate) struct FileJob {
    pub(crate) path: PathBuf,
    pub(crate) node: Node,
    pub(crate) reply: Sender<FileOutcome>,
}

/// A node of the walk, finished or still being read by a worker.
pub(crate) enum Pending {
    Ready(Box<Node>),
    File(PathBuf, Receiver<FileOutcome>),
}

/// The walk, as the tree builder sees it.
pub(crate) enum Event {
    /// A directory starts; its entries follow until the matching `Leave`.
    Enter(Box<Node>),
    /// A non-directory entry of the current directory.
    Entry(Pending),
    /// The current directory is complete.
    Leave,
}

/// How the given paths map onto the snapshot's root directory.
pub(crate) enum SourcePlan {
    /// One directory: its contents are the root, its metadata the root's.
    Single(PathBuf),
    /// Several paths, or one non-directory: a synthetic root holding each by name.
    Synthetic(Vec<(Vec<u8>, PathBuf)>),
}

impl SourcePlan {
    /// Checks the paths and decides the root layout.
    pub(crate) fn new(paths: &[PathBuf]) -> Result<(Self, Vec<PathBuf>)> {
        if paths.is_empty() {
            return Err(Error::InvalidArgument(
                "nothing to back up: give at least one path".into(),
            ));
        }
        let mut abs = Vec::new();
        for p in paths {
            let a = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
            let a = normalize(&a);
            std::fs::symlink_metadata(&a).map_err(|e| {
                Error::InvalidArgument(format!("cannot back up {}: {e}", p.display()))
            })?;
            abs.push(a);
        }
        if abs.len() == 1
            && std::fs::symlink_metadata(&abs[0])
                .map(|m| m.is_dir())
                .unwrap_or(false)
        {
            return Ok((SourcePlan::Single(abs[0].clone()), abs));
        }
        let mut named: Vec<(Vec<u8>, PathBuf)> = Vec::new();
        for a in &abs {
            let name = a
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_else(|| b"root".to_vec());
            if let Some((_, other)) = named.iter().find(|(n, _)| *n == name) {
                return Err(Error::InvalidArgument(format!(
                    "{} and {} have the same name; back them up in separate snapshots, or back up their common parent",
                    other.display(),
                    a.display()
                )));
            }
            named.push((name, a.clone()));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((SourcePlan::Synthetic(named), abs))
    }
}

/// Removes `.` and `..` components lexically, as restic records paths.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The root node of a snapshot: the single directory's metadata, or a synthetic
/// directory (mode 0755, owned by the current user, stamped with `now`).
pub(crate) fn root_node(plan: &SourcePlan, now: Timestamp) -> Result<Node> {
    match plan {
        SourcePlan::Single(path) => {
            let md = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
            let name = path
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_else(|| b"root".to_vec());
            fsmeta::read_node(&name, path, &md, NodeKind::Dir, &mut Owners::default())
                .map_err(|e| Error::io(path, e))
        }
        SourcePlan::Synthetic(_) => {
            let mut n = Node::new("root", NodeKind::Dir);
            n.mode = 0o755;
            n.uid = nix::unistd::getuid().as_raw();
            n.gid = nix::unistd::getgid().as_raw();
            n.mtime = now;
            n.atime = now;
            n.ctime = now;
            Ok(n)
        }
    }
}

pub(crate) struct Walker<'a> {
    pub(crate) ctx: &'a Ctx,
    pub(crate) events: Sender<Event>,
    pub(crate) jobs: Sender<FileJob>,
    pub(crate) owners: Owners,
}

impl Walker<'_> {
    /// Walks the plan; returns early only when cancelled or when the pipeline stopped.
    pub(crate) fn run(mut self, plan: &SourcePlan) -> Result<()> {
        match plan {
            SourcePlan::Single(path) => self.walk_dir_contents(path),
            SourcePlan::Synthetic(items) => {
                for (name, path) in items {
                    let md = match std::fs::symlink_metadata(path) {
                        Ok(md) => md,
                        Err(e) => {
                            self.ctx.error(path, e.to_string());
                            continue;
                        }
                    };
                    if md.is_dir() {
                        match fsmeta::read_node(name, path, &md, NodeKind::Dir, &mut self.owners) {
                            Ok(node) => {
                                self.send(Event::Enter(Box::new(node)))?;
                                self.walk_dir_contents(path)?;
                                self.send(Event::Leave)?;
                            }
                            Err(e) => self.ctx.error(path, e.to_string()),
                        }
                    } else {
                        self.entry(name, path, &md)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn send(&self, ev: Event) -> Result<()> {
        self.events.send(ev).map_err(|_| Error::Cancelled)
    }

    fn walk_dir_contents(&mut self, dir: &Path) -> Result<()> {
        let walk = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name();
        let mut open = 0usize;
        for item in walk {
            if self.ctx.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let entry = match item {
                Ok(e) => e,
                Err(e) => {
                    let path = e
                        .path()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| dir.to_path_buf());
                    let msg = e
                        .io_error()
                        .map(|io| io.to_string())
                        .unwrap_or_else(|| e.to_string());
                    self.ctx.error(&path, msg);
                    continue;
                }
            };
            while open >= entry.depth() {
                self.send(Event::Leave)?;
                open -= 1;
            }
            let md = match entry.metadata() {
                Ok(md) => md,
                Err(e) => {
                    self.ctx.error(entry.path(), e.to_string());
                    continue;
                }
            };
            let name = entry.file_name().as_bytes();
            if md.is_dir() {
                match fsmeta::read_node(name, entry.path(), &md, NodeKind::Dir, &mut self.owners) {
                    Ok(node) => {
                        self.send(Event::Enter(Box::new(node)))?;
                        open += 1;
                    }
                    Err(e) => self.ctx.error(entry.path(), e.to_string()),
                }
            } else {
                self.entry(name, entry.path(), &md)?;
            }
        }
        for _ in 0..open {
            self.send(Event::Leave)?;
        }
        Ok(())
    }

    fn entry(&mut self, name: &[u8], path: &Path, md: &std::fs::Metadata) -> Result<()> {
        let Some(kind) = fsmeta::kind_of(md) else {
            tracing::info!("skipping socket {}", path.display());
            return Ok(());
        };
        let node = match fsmeta::read_node(name, path, md, kind, &mut self.owners) {
            Ok(n) => n,
            Err(e) => {
                self.ctx.error(path, e.to_string());
                return Ok(());
            }
        };
        if kind == NodeKind::File && node.size > 0 {
            let (tx, rx) = crossbeam_channel::bounded(1);
            self.jobs
                .send(FileJob {
                    path: path.to_path_buf(),
                    node,
                    reply: tx,
                })
                .map_err(|_| Error::Cancelled)?;
            self.send(Event::Entry(Pending::File(path.to_path_buf(), rx)))
        } else {
            self.send(Event::Entry(Pending::Ready(Box::new(node))))
        }
    }
}
