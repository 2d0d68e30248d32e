//! Source: what to back up, walked in name order into a stream of events.
//!
//! The walker reads metadata only. Regular files with content go to the file
//! workers as [`FileJob`]s; the event stream carries a receiver for each, so the
//! tree builder gets every node in walk order however the workers interleave.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use coffer_repo_format::tree::{Node, NodeKind, Timestamp};

use super::lookahead::{Listing, Lookahead, Root};
use super::{Monitor, SourceError, WalkSetup};
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::fsmeta::{self, At, Meta, Owners};
use crate::select::Selector;
use crate::trees::MAX_TREE_DEPTH;

/// What a file worker sends back: the node with its content, or why not.
pub(crate) type FileOutcome = std::result::Result<Node, SourceError>;

/// Where a worker opens a file: by name in its directory (beneath a walk's
/// root, never through a symlink), or by the path the caller gave.
pub(crate) enum FileAt {
    Dir(Arc<OwnedFd>, OsString),
    Path(PathBuf),
}

impl FileAt {
    pub(crate) fn at(&self) -> At<'_> {
        match self {
            FileAt::Dir(dir, name) => At::Dir(dir, name),
            FileAt::Path(p) => At::Path(p),
        }
    }
}

/// A regular file for a worker to read.
pub(crate) struct FileJob {
    /// Where to open it.
    pub(crate) at: FileAt,
    /// Its path, for messages and progress.
    pub(crate) path: PathBuf,
    pub(crate) node: Node,
    pub(crate) reply: Sender<FileOutcome>,
    /// The file, already opened by the prefetch stage.
    pub(crate) opened: Option<(std::fs::File, Meta)>,
}

/// A node of the walk, finished or still being read by a worker.
pub(crate) enum Pending {
    Ready(Box<Node>),
    File(PathBuf, Receiver<FileOutcome>),
}

/// The walk, as the tree builder sees it.
pub(crate) enum Event {
    /// A directory starts; its entries follow until the matching `Leave`. With
    /// the listing of the same directory in the parent snapshot, if any.
    Enter(Box<Node>, Option<coffer_repo_format::BlobId>),
    /// A non-directory entry of the current directory, with the entry of the
    /// same name in the parent snapshot, if any.
    Entry(Pending, Option<Box<Node>>),
    /// The current directory is complete.
    Leave,
}

/// The parent snapshot's listing of one directory, read in step with the walk:
/// both are in name order, so finding an entry is a merge.
pub(crate) struct ParentDir<'a> {
    reader: Option<crate::trees::DirReader<'a>>,
    peeked: Option<Node>,
}

impl<'a> ParentDir<'a> {
    pub(crate) fn none() -> Self {
        ParentDir {
            reader: None,
            peeked: None,
        }
    }

    /// Opens the listing `tree` of the parent snapshot; none if it cannot be read.
    pub(crate) fn open(setup: &'a WalkSetup, tree: Option<coffer_repo_format::BlobId>) -> Self {
        Self::open_in(&setup.rt, &setup.repo, &setup.index, tree)
    }

    /// Opens the listing `tree` of a snapshot of `repo` (a copy's parents);
    /// none if it cannot be read.
    pub(crate) fn open_in(
        rt: &tokio::runtime::Handle,
        repo: &'a crate::repository::Repository,
        index: &'a crate::index::Index,
        tree: Option<coffer_repo_format::BlobId>,
    ) -> Self {
        let Some(tree) = tree else {
            return Self::none();
        };
        match rt.block_on(crate::trees::DirReader::open(repo, index, &tree)) {
            Ok(r) => ParentDir {
                reader: Some(r),
                peeked: None,
            },
            Err(e) => {
                tracing::warn!(
                    "parent snapshot: cannot read tree {}: {e}; reading the directory in full",
                    tree.short()
                );
                Self::none()
            }
        }
    }

    /// The parent's entry named `name`; names must be asked in increasing order.
    pub(crate) fn find(&mut self, setup: &WalkSetup, name: &[u8]) -> Option<Node> {
        self.find_in(&setup.rt, name)
    }

    /// [`ParentDir::find`], on the runtime `rt`.
    pub(crate) fn find_in(&mut self, rt: &tokio::runtime::Handle, name: &[u8]) -> Option<Node> {
        loop {
            if self.peeked.is_none() {
                let reader = self.reader.as_mut()?;
                match rt.block_on(reader.next()) {
                    Ok(Some(n)) => self.peeked = Some(n),
                    Ok(None) => {
                        self.reader = None;
                        return None;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "parent snapshot: {e}; reading the rest of the directory in full"
                        );
                        self.reader = None;
                        return None;
                    }
                }
            }
            let peeked = self.peeked.as_ref()?;
            match peeked.name.0.as_slice().cmp(name) {
                std::cmp::Ordering::Less => self.peeked = None,
                std::cmp::Ordering::Equal => return self.peeked.take(),
                std::cmp::Ordering::Greater => return None,
            }
        }
    }
}

/// The size of a block device (or any file), by seeking to its end.
pub fn device_size(path: &Path) -> std::io::Result<u64> {
    use std::io::Seek;
    std::fs::File::open(path)?.seek(std::io::SeekFrom::End(0))
}

/// Whether a file can be taken from the parent snapshot without reading it.
fn unchanged(
    parent: &Node,
    now: &Node,
    rules: super::ChangeRules,
    index: &crate::index::Index,
) -> bool {
    parent.kind == NodeKind::File
        && rules.same(parent, now)
        && parent
            .content
            .iter()
            .all(|c| c.id.is_none_or(|id| index.contains(&id)))
}

/// How the given paths map onto the snapshot's root directory.
pub(crate) enum SourcePlan {
    /// One directory: its contents are the root, its metadata the root's; the
    /// root is named after the directory (or the recorded path).
    Single(PathBuf, Vec<u8>),
    /// Several paths, or one non-directory: a synthetic root holding each by name.
    Synthetic(Vec<(Vec<u8>, PathBuf)>),
}

impl SourcePlan {
    /// Checks the paths and decides the root layout.
    ///
    /// With `record_as`, the one path is recorded under that name instead of
    /// its own (a volume's `/data` rather than its kubelet directory).
    pub(crate) fn new(paths: &[PathBuf], record_as: Option<&Path>) -> Result<(Self, Vec<PathBuf>)> {
        if paths.is_empty() {
            return Err(Error::InvalidArgument(
                "nothing to back up: give at least one path".into(),
            ));
        }
        if record_as.is_some() && paths.len() != 1 {
            return Err(Error::InvalidArgument(format!(
                "a recorded path names one source, but {} paths were given",
                paths.len()
            )));
        }
        let recorded_name = record_as.map(|p| {
            p.file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_else(|| b"root".to_vec())
        });
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
            let name = recorded_name.unwrap_or_else(|| {
                abs[0]
                    .file_name()
                    .map(|n| n.as_bytes().to_vec())
                    .unwrap_or_else(|| b"root".to_vec())
            });
            return Ok((SourcePlan::Single(abs[0].clone(), name), abs));
        }
        let mut named: Vec<(Vec<u8>, PathBuf)> = Vec::new();
        for a in &abs {
            let name = recorded_name.clone().unwrap_or_else(|| {
                a.file_name()
                    .map(|n| n.as_bytes().to_vec())
                    .unwrap_or_else(|| b"root".to_vec())
            });
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
        SourcePlan::Single(path, name) => {
            let md = fsmeta::lstat(path).map_err(|e| Error::io(path, e))?;
            fsmeta::read_node(
                name,
                At::Path(path),
                &md,
                NodeKind::Dir,
                &mut Owners::default(),
            )
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

/// Events per message from the walker to the tree builder.
pub(crate) const EVENT_BATCH: usize = 256;

pub(crate) struct Walker<'a> {
    pub(crate) setup: &'a WalkSetup,
    pub(crate) monitor: &'a Monitor,
    /// Batches of events (one message per [`EVENT_BATCH`] events: a channel
    /// operation per event costs more than a small directory's whole walk).
    pub(crate) events: Sender<Vec<Event>>,
    pub(crate) batch: Vec<Event>,
    pub(crate) jobs: Sender<FileJob>,
    pub(crate) owners: Owners,
    /// The parent snapshot's listing of each open directory, innermost last.
    pub(crate) parents: Vec<ParentDir<'a>>,
    /// Reads the directories ahead of the walk.
    pub(crate) lookahead: Lookahead,
}

impl Walker<'_> {
    /// Walks the plan; returns early only when cancelled or when the pipeline stopped.
    pub(crate) fn run(
        mut self,
        plan: &SourcePlan,
        parent_root: Option<coffer_repo_format::BlobId>,
    ) -> Result<()> {
        self.parents.push(ParentDir::open(self.setup, parent_root));
        self.walk(plan)?;
        self.flush()
    }

    fn walk(&mut self, plan: &SourcePlan) -> Result<()> {
        match plan {
            SourcePlan::Single(path, _) => match Root::open(path) {
                Ok(root) => self.walk_dir_contents(&root),
                Err(e) => {
                    self.monitor.io_error(path, &e);
                    Ok(())
                }
            },
            SourcePlan::Synthetic(items) => {
                for (name, path) in items {
                    let md = match fsmeta::lstat(path) {
                        Ok(md) => md,
                        Err(e) => {
                            self.monitor.io_error(path, &e);
                            continue;
                        }
                    };
                    if self.setup.selector.excluded(path, &md) {
                        continue;
                    }
                    if md.is_dir() {
                        let opened = Root::open(path).and_then(|root| {
                            let node = fsmeta::read_node(
                                name,
                                At::Path(path),
                                &md,
                                NodeKind::Dir,
                                &mut self.owners,
                            )?;
                            Ok((root, node))
                        });
                        match opened {
                            Ok((root, node)) => {
                                self.enter(node)?;
                                self.walk_dir_contents(&root)?;
                                self.leave()?;
                            }
                            Err(e) => self.monitor.io_error(path, &e),
                        }
                    } else if md.is_block_device() {
                        self.device(name, path, &md)?;
                    } else {
                        self.entry(name, FileAt::Path(path.clone()), path, &md)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn send(&mut self, ev: Event) -> Result<()> {
        self.batch.push(ev);
        if self.batch.len() >= EVENT_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(EVENT_BATCH));
        self.events.send(batch).map_err(|_| Error::Cancelled)
    }

    /// The parent snapshot's entry of this name in the current directory.
    fn parent_of(&mut self, name: &[u8]) -> Option<Node> {
        let setup = self.setup;
        self.parents.last_mut().and_then(|p| p.find(setup, name))
    }

    fn enter(&mut self, node: Node) -> Result<()> {
        let parent_tree = self
            .parent_of(&node.name.0)
            .filter(|p| p.kind == NodeKind::Dir)
            .and_then(|p| p.subtree);
        self.parents.push(ParentDir::open(self.setup, parent_tree));
        self.send(Event::Enter(Box::new(node), parent_tree))
    }

    fn leave(&mut self) -> Result<()> {
        self.parents.pop();
        self.send(Event::Leave)
    }

    /// Walks below `root` in name order, depth first. Every directory is
    /// opened beneath the root, never through a symlink, with `O_NOATIME`
    /// (the walk changes nothing), and checked to be the directory its
    /// parent listed; entries are stat-ed and files opened through their
    /// directory's descriptor. What changed meanwhile is reported and left
    /// out, never followed.
    fn walk_dir_contents(&mut self, root: &Arc<Root>) -> Result<()> {
        let dir = root.path.clone();
        let listing = match self.lookahead.listing(root, &dir) {
            Ok(l) if l.meta.same_file(&root.meta) => l,
            Ok(_) => {
                self.monitor.io_error(&dir, &changed());
                return Ok(());
            }
            Err(e) => {
                self.monitor.io_error(&dir, &e);
                return Ok(());
            }
        };
        if self.setup.selector.is_cache_dir(&listing.dir) {
            return self.cache_tag(&dir, &listing.dir);
        }
        let root_dev = self
            .setup
            .selector
            .one_file_system()
            .then_some(listing.meta.dev);
        self.want_children(root, &dir, &listing, root_dev);
        // One entry per open directory: its path, its descriptor and the
        // entries still to visit.
        let mut open = vec![(dir, listing.dir, listing.entries.into_iter())];
        while let Some((parent, parent_fd, entries)) = open.last_mut() {
            if self.monitor.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let Some((name, read_ahead)) = entries.next() else {
                open.pop();
                if !open.is_empty() {
                    self.leave()?;
                }
                continue;
            };
            let path = parent.join(&name);
            let parent_fd = parent_fd.clone();
            let md = match read_ahead.unwrap_or_else(|| fsmeta::stat_at(&*parent_fd, &name)) {
                Ok(md) => md,
                Err(e) => {
                    self.monitor.io_error(&path, &e);
                    continue;
                }
            };
            if self.setup.selector.excluded(&path, &md) {
                continue;
            }
            if !md.is_dir() {
                let bytes = name.as_bytes().to_vec();
                self.entry(&bytes, FileAt::Dir(parent_fd, name), &path, &md)?;
                continue;
            }
            let at = At::Dir(&parent_fd, &name);
            // Another file system: its mount point is kept, empty.
            if root_dev.is_some_and(|dev| dev != md.dev) {
                match fsmeta::read_node(name.as_bytes(), at, &md, NodeKind::Dir, &mut self.owners) {
                    Ok(node) => {
                        self.enter(node)?;
                        self.leave()?;
                    }
                    Err(e) => self.monitor.io_error(&path, &e),
                }
                continue;
            }
            if open.len() >= MAX_TREE_DEPTH {
                self.lookahead.forget(&path);
                let e = std::io::Error::other(format!(
                    "directories nested more than {MAX_TREE_DEPTH} deep; left out"
                ));
                self.monitor.io_error(&path, &e);
                continue;
            }
            let listing = match self.lookahead.listing(root, &path) {
                Ok(l) if l.meta.same_file(&md) => Ok(l),
                Ok(_) => {
                    self.monitor.io_error(&path, &changed());
                    continue;
                }
                Err(e) => Err(e),
            };
            if let Ok(l) = &listing {
                let names: Vec<OsString> = l.entries.iter().map(|(n, _)| n.clone()).collect();
                if self.setup.selector.has_marker(&names) {
                    continue;
                }
            }
            // The directory's own attributes, through its descriptor when open.
            let node = match &listing {
                Ok(l) => fsmeta::read_node_stat(
                    name.as_bytes(),
                    at,
                    &md,
                    NodeKind::Dir,
                    &mut self.owners,
                )
                .map(|mut n| {
                    n.xattrs = fsmeta::read_xattrs(At::Open(&l.dir));
                    n
                }),
                Err(_) => {
                    fsmeta::read_node(name.as_bytes(), at, &md, NodeKind::Dir, &mut self.owners)
                }
            };
            let node = match node {
                Ok(node) => node,
                Err(e) => {
                    self.monitor.io_error(&path, &e);
                    continue;
                }
            };
            self.enter(node)?;
            match listing {
                Ok(listing) => {
                    // A cache directory keeps its tag.
                    if self.setup.selector.is_cache_dir(&listing.dir) {
                        self.cache_tag(&path, &listing.dir)?;
                        self.leave()?;
                        continue;
                    }
                    self.want_children(root, &path, &listing, root_dev);
                    open.push((path, listing.dir, listing.entries.into_iter()));
                }
                Err(e) => {
                    self.monitor.io_error(&path, &e);
                    self.leave()?;
                }
            }
        }
        Ok(())
    }

    /// Asks the lookahead for the subdirectories of `dir` the walk will enter
    /// (those whose metadata it has, in name order).
    fn want_children(
        &mut self,
        root: &Arc<Root>,
        dir: &Path,
        listing: &Listing,
        root_dev: Option<u64>,
    ) {
        let children: Vec<PathBuf> = listing
            .entries
            .iter()
            .filter_map(|(name, md)| match md {
                Some(Ok(md))
                    if md.is_dir()
                        && root_dev.is_none_or(|dev| dev == md.dev)
                        && !self.setup.selector.excluded(&dir.join(name), md) =>
                {
                    Some(dir.join(name))
                }
                _ => None,
            })
            .collect();
        if !children.is_empty() {
            self.lookahead.want(root, children);
        }
    }

    /// A block device given as a path: its contents, as one file. It is always
    /// read: a device node's times do not change with its contents.
    fn device(&mut self, name: &[u8], path: &Path, md: &Meta) -> Result<()> {
        let size = match device_size(path) {
            Ok(s) => s,
            Err(e) => {
                self.monitor.io_error(path, &e);
                return Ok(());
            }
        };
        let mut node =
            match fsmeta::read_node(name, At::Path(path), md, NodeKind::File, &mut self.owners) {
                Ok(n) => n,
                Err(e) => {
                    self.monitor.io_error(path, &e);
                    return Ok(());
                }
            };
        node.size = size;
        node.rdev = None;
        let parent = self.parent_of(name);
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.jobs
            .send(FileJob {
                at: FileAt::Path(path.to_path_buf()),
                path: path.to_path_buf(),
                node,
                reply: tx,
                opened: None,
            })
            .map_err(|_| Error::Cancelled)?;
        self.send(Event::Entry(
            Pending::File(path.to_path_buf(), rx),
            parent.map(Box::new),
        ))
    }

    /// A cache directory keeps only its tag file.
    fn cache_tag(&mut self, dir: &Path, dir_fd: &Arc<OwnedFd>) -> Result<()> {
        let name = OsStr::new("CACHEDIR.TAG");
        let tag = dir.join(name);
        match fsmeta::stat_at(&**dir_fd, name) {
            Ok(md) => self.entry(
                b"CACHEDIR.TAG",
                FileAt::Dir(dir_fd.clone(), name.to_os_string()),
                &tag,
                &md,
            ),
            Err(e) => {
                self.monitor.io_error(&tag, &e);
                Ok(())
            }
        }
    }

    fn entry(&mut self, name: &[u8], at: FileAt, path: &Path, md: &Meta) -> Result<()> {
        let Some(kind) = fsmeta::kind_of(md) else {
            tracing::info!("skipping socket {}", path.display());
            return Ok(());
        };
        let mut node = match fsmeta::read_node_stat(name, at.at(), md, kind, &mut self.owners) {
            Ok(n) => n,
            Err(e) => {
                self.monitor.io_error(path, &e);
                return Ok(());
            }
        };
        let parent = self.parent_of(name);
        // Changing an attribute changes the ctime: with the same ctime (and
        // mtime, inode, size) the parent's attributes are this file's.
        node.xattrs = match &parent {
            Some(p)
                if p.ctime == node.ctime
                    && p.mtime == node.mtime
                    && p.inode == node.inode
                    && p.size == node.size
                    && p.kind == node.kind =>
            {
                p.xattrs.clone()
            }
            _ => fsmeta::read_xattrs(at.at()),
        };
        if kind == NodeKind::File && node.size > 0 {
            if let Some(p) = parent.as_ref().filter(|p| {
                !self.setup.force && unchanged(p, &node, self.setup.changes, &self.setup.index)
            }) {
                node.content = p.content.clone();
                self.monitor.stats.add_bytes(node.size);
                return self.send(Event::Entry(
                    Pending::Ready(Box::new(node)),
                    parent.map(Box::new),
                ));
            }
            let (tx, rx) = crossbeam_channel::bounded(1);
            self.jobs
                .send(FileJob {
                    at,
                    path: path.to_path_buf(),
                    node,
                    reply: tx,
                    opened: None,
                })
                .map_err(|_| Error::Cancelled)?;
            self.send(Event::Entry(
                Pending::File(path.to_path_buf(), rx),
                parent.map(Box::new),
            ))
        } else {
            self.send(Event::Entry(
                Pending::Ready(Box::new(node)),
                parent.map(Box::new),
            ))
        }
    }
}

/// What a quick stat-only walk of the source counted, for progress totals.
/// It follows the walker's rules (excludes, cache directories, one file
/// system), so the totals are what the backup will go through.
#[derive(Default)]
pub(crate) struct Scan {
    pub(crate) files: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) done: AtomicBool,
}

impl Scan {
    pub(crate) fn run(&self, plan: &SourcePlan, selector: &Selector, cancel: &CancelToken) {
        match plan {
            SourcePlan::Single(dir, _) => self.dir_contents(dir, selector, cancel),
            SourcePlan::Synthetic(items) => {
                for (_, path) in items {
                    let Ok(md) = fsmeta::lstat(path) else {
                        continue;
                    };
                    if selector.excluded(path, &md) {
                        continue;
                    }
                    if md.is_dir() {
                        self.dir_contents(path, selector, cancel);
                    } else if md.is_block_device() {
                        self.files.fetch_add(1, Ordering::Relaxed);
                        let size = device_size(path).unwrap_or(0);
                        self.bytes.fetch_add(size, Ordering::Relaxed);
                    } else {
                        self.add(&md);
                    }
                }
            }
        }
        self.done.store(true, Ordering::Relaxed);
    }

    /// What lies below `dir`, as [`Walker::walk_dir_contents`] goes through
    /// it (beneath it, never through a symlink).
    fn dir_contents(&self, dir: &Path, selector: &Selector, cancel: &CancelToken) {
        let Ok(root) = Root::open(dir) else {
            return;
        };
        let mut todo = vec![(PathBuf::new(), 0usize)];
        let mut root_dev = None;
        while let Some((rel, depth)) = todo.pop() {
            let Ok(fd) = fsmeta::open_dir_beneath(&root.fd, &rel) else {
                continue;
            };
            if selector.is_cache_dir(&fd) {
                if let Ok(md) = fsmeta::stat_at(&fd, OsStr::new("CACHEDIR.TAG")) {
                    self.add(&md);
                }
                continue;
            }
            if rel.as_os_str().is_empty() && selector.one_file_system() {
                root_dev = fsmeta::fstat(&fd).ok().map(|md| md.dev);
            }
            let Ok(names) = fsmeta::names_of(&fd) else {
                continue;
            };
            if !rel.as_os_str().is_empty() && selector.has_marker(&names) {
                continue;
            }
            for name in names {
                if cancel.is_cancelled() {
                    return;
                }
                let Ok(md) = fsmeta::stat_at(&fd, &name) else {
                    continue;
                };
                if selector.excluded(&dir.join(rel.join(&name)), &md) {
                    continue;
                }
                if !md.is_dir() {
                    self.add(&md);
                } else if root_dev.is_none_or(|dev| dev == md.dev) && depth < MAX_TREE_DEPTH {
                    todo.push((rel.join(&name), depth + 1));
                }
            }
        }
    }

    fn add(&self, md: &Meta) {
        // The walker skips sockets.
        if fsmeta::kind_of(md).is_none() {
            return;
        }
        self.files.fetch_add(1, Ordering::Relaxed);
        if md.is_file() {
            self.bytes.fetch_add(md.size, Ordering::Relaxed);
        }
    }
}

/// What the walker reports for a directory that is no longer the one its
/// parent's listing showed (renamed, swapped meanwhile).
fn changed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "changed while it was read: it is no longer the directory that was listed; skipped",
    )
}
