//! Plan: create the structure of the restore and list which blob goes where.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use coffer_repo_format::snapshot::Snapshot;
use coffer_repo_format::tree::{Node, NodeKind};
use coffer_repo_format::{BlobId, PackId};

use super::batch::{Batch, BlobTargets, FileEntry};
use super::fetcher::Fetch;
use super::{RestoreOptions, Shared};
use crate::error::{Conflict, Error, Missing, Result};
use crate::index::{BlobLocation, Index};
use crate::repository::{is_damage, Repository};
use crate::trees::{self, Step, Walk};

/// Where the restore starts.
#[derive(Clone, Debug)]
pub(crate) enum Start {
    /// A directory whose contents go into the target; its metadata goes onto the
    /// target unless it is a synthetic root.
    Dir { node: Node, synthetic: bool },
    /// A single non-directory, restored as `target/<name>`.
    Single(Node),
}

pub(crate) async fn resolve_start(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    subpath: Option<&Path>,
) -> Result<Start> {
    let root = snapshot.root.clone();
    // A synthetic root (several paths, or one file) has inode 0.
    let synthetic = root.inode == 0 && root.device == 0;
    let Some(sub) = subpath.filter(|p| !p.as_os_str().is_empty() && *p != Path::new("/")) else {
        return Ok(Start::Dir {
            node: root,
            synthetic,
        });
    };
    let node = trees::lookup(repo, index, &root, sub.as_os_str().as_bytes())
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("path {} in the snapshot", sub.display()),
            missing: Missing::Path,
        })?;
    Ok(if node.kind == NodeKind::Dir {
        Start::Dir {
            node,
            synthetic: false,
        }
    } else {
        Start::Single(node)
    })
}

#[derive(Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) files: u64,
    pub(crate) dirs: u64,
    pub(crate) others: u64,
}

/// What is left once every batch is written.
pub(crate) struct Planned {
    /// Hard links to make once the contents are written: (existing, new).
    pub(crate) links: Vec<(PathBuf, PathBuf)>,
    pub(crate) counts: Counts,
}

/// Walks what is restored, creates it, and hands its contents to the fetcher
/// a batch at a time, so the plan's memory is bounded by the batch size, not by
/// the snapshot's.
pub(crate) struct Planner<'a> {
    shared: &'a Shared,
    fetch: &'a mut Fetch,
    /// Blob places planned before the batch is fetched.
    limit: usize,
    overwrite: bool,
    /// The target was empty: nothing in it can be in the way.
    fresh: bool,
    links: Vec<(PathBuf, PathBuf)>,
    files: Vec<FileEntry>,
    blobs: Vec<Wanted>,
    blob_slot: HashMap<BlobId, usize>,
    /// Blob places in this batch.
    places: usize,
    counts: Counts,
}

/// A blob the batch needs, before it is looked up in the index.
struct Wanted {
    id: BlobId,
    /// Its length in the tree.
    len: u64,
    /// (file in the batch, offset): every place it goes.
    targets: Vec<(u32, u64)>,
}

/// Which snapshot paths a restore takes (`--include`, `--exclude`).
pub(crate) struct Filter {
    include: crate::select::Patterns,
    exclude: crate::select::Patterns,
}

impl Filter {
    pub(crate) fn new(opts: &RestoreOptions) -> Result<Self> {
        Ok(Filter {
            include: crate::select::Patterns::new(&opts.include, &opts.iinclude)?,
            exclude: crate::select::Patterns::new(&opts.exclude, &opts.iexclude)?,
        })
    }

    pub(crate) fn excluded(&self, snap: &Path, is_dir: bool) -> bool {
        self.exclude.matches(snap, is_dir)
    }

    /// With no include patterns, everything; else what matches, or lies in a
    /// directory that matches.
    pub(crate) fn included(&self, snap: &Path, is_dir: bool) -> bool {
        self.include.is_empty() || self.include.matches_or_parent(snap, is_dir)
    }
}

/// The snapshot path of the restore's start directory (`/` or `/SUBPATH`).
pub(crate) fn start_path(opts: &RestoreOptions) -> PathBuf {
    let mut p = PathBuf::from("/");
    if let Some(sub) = &opts.subpath {
        p.push(sub.strip_prefix("/").unwrap_or(sub));
    }
    p
}

/// Joins a validated name to a directory path.
pub(crate) fn child_path(dir: &Path, node: &Node) -> PathBuf {
    dir.join(OsStr::from_bytes(&node.name.0))
}

pub(crate) fn build(
    shared: &Shared,
    fetch: &mut Fetch,
    rt: &tokio::runtime::Handle,
    start: &Start,
    opts: &RestoreOptions,
) -> Result<Planned> {
    let mut p = Planner::new(shared, fetch, opts.overwrite, opts.plan_limit);
    p.fresh = !opts.overwrite;
    match start {
        Start::Single(node) => p.entry(&child_path(&opts.target, node), node)?,
        Start::Dir { node, .. } => {
            p.counts.dirs += 1;
            if node.subtree.is_none() {
                return Err(Error::InvalidArgument(
                    "the start directory has no listing".into(),
                ));
            }
            let filter = Filter::new(opts)?;
            // The directories the walk is in: (target path, made yet).
            let mut dirs: Vec<(PathBuf, bool)> = Vec::new();
            let mut walk =
                Walk::new(&shared.repo, &shared.index, start_path(opts), node.clone()).keep_going();
            while let Some(step) = rt.block_on(walk.next())? {
                if shared.cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let e = match step {
                    Step::Enter(_) if dirs.is_empty() => {
                        dirs.push((opts.target.clone(), true));
                        continue;
                    }
                    Step::Enter(e) | Step::Leaf(e) => e,
                    Step::Leave(..) => {
                        dirs.pop();
                        continue;
                    }
                    // The start's own listing: nothing can be restored.
                    Step::Unreadable {
                        error,
                        opened: false,
                        ..
                    } if dirs.len() == 1 => return Err(error),
                    Step::Unreadable {
                        entry,
                        error,
                        opened,
                    } if is_damage(&error) => {
                        if let Some((dir, _)) = dirs.last() {
                            if opened {
                                let message =
                                    format!("the rest of this directory cannot be read: {error}");
                                shared.fail(dir, None, message);
                            } else {
                                let tree = entry.node.subtree;
                                let name = tree.map(|t| t.to_string()).unwrap_or_default();
                                let message =
                                    format!("its listing (tree {name}) cannot be read: {error}");
                                shared.fail(dir, tree, message);
                            }
                        }
                        continue;
                    }
                    Step::Unreadable { error, .. } => return Err(error),
                };
                let Some((dir, _)) = dirs.last() else {
                    continue;
                };
                let path = child_path(dir, &e.node);
                let is_dir = e.node.kind == NodeKind::Dir;
                if filter.excluded(&e.path, is_dir) {
                    walk.skip();
                    continue;
                }
                let included = filter.included(&e.path, is_dir);
                if is_dir {
                    if included {
                        p.make_parents(&mut dirs)?;
                        p.make_dir(&path)?;
                        p.counts.dirs += 1;
                    }
                    dirs.push((path, included));
                } else if included {
                    p.make_parents(&mut dirs)?;
                    p.entry(&path, &e.node)?;
                }
            }
        }
    }
    p.finish()
}

impl<'a> Planner<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        fetch: &'a mut Fetch,
        overwrite: bool,
        limit: usize,
    ) -> Self {
        Planner {
            shared,
            fetch,
            limit: limit.max(1),
            overwrite,
            fresh: false,
            links: Vec::new(),
            files: Vec::new(),
            blobs: Vec::new(),
            blob_slot: HashMap::new(),
            places: 0,
            counts: Counts::default(),
        }
    }

    /// Fetches what is planned and not fetched yet.
    pub(crate) fn finish(mut self) -> Result<Planned> {
        self.flush()?;
        Ok(Planned {
            links: self.links,
            counts: self.counts,
        })
    }

    /// Looks up the batch planned so far, hands it to the fetcher, and
    /// starts a new one. A blob that is in no index file, or whose length
    /// there differs from the tree's, fails each file that needs it.
    fn flush(&mut self) -> Result<()> {
        let wanted = std::mem::take(&mut self.blobs);
        self.blob_slot.clear();
        self.places = 0;
        let files = std::mem::take(&mut self.files);
        if wanted.is_empty() {
            return Ok(());
        }
        let found = self.locate(&wanted)?;
        let mut packs: HashMap<PackId, Vec<BlobTargets>> = HashMap::new();
        for w in wanted {
            let message = match found.get(&w.id) {
                Some(loc) if u64::from(loc.raw_len) == w.len => {
                    packs.entry(loc.pack).or_default().push(BlobTargets {
                        id: w.id,
                        offset: loc.offset,
                        stored_len: loc.stored_len,
                        raw_len: loc.raw_len,
                        targets: w.targets,
                    });
                    continue;
                }
                Some(loc) => format!(
                    "blob {} has {} bytes in the index but {} in the tree",
                    w.id, loc.raw_len, w.len
                ),
                None => format!("blob {} is in no index file", w.id),
            };
            let mut failed: Vec<u32> = w.targets.iter().map(|t| t.0).collect();
            failed.sort_unstable();
            failed.dedup();
            for f in failed {
                self.shared
                    .fail(&files[f as usize].path, Some(w.id), message.clone());
            }
        }
        if packs.is_empty() {
            return Ok(());
        }
        self.fetch.batch(Batch { files, packs })
    }

    /// Where the batch's blobs are: from the index where it holds data
    /// blobs, otherwise read from the index files for this batch alone.
    fn locate(&self, wanted: &[Wanted]) -> Result<HashMap<BlobId, BlobLocation>> {
        let index = &self.shared.index;
        if index.holds_data() {
            return Ok(wanted
                .iter()
                .filter_map(|w| index.get(&w.id).map(|l| (w.id, l)))
                .collect());
        }
        let ids: HashSet<BlobId> = wanted.iter().map(|w| w.id).collect();
        self.fetch
            .runtime()
            .block_on(self.shared.repo.locate_blobs(&ids))
    }

    /// Makes room for a new entry at `path` when overwriting.
    fn clear(&self, path: &Path, keep_dir: bool) -> Result<bool> {
        if self.fresh {
            return Ok(false);
        }
        match self.target().lstat(path).map_err(|e| Error::io(path, e))? {
            None => Ok(false),
            Some(found) if found.is_dir() && keep_dir => Ok(true),
            Some(_) => {
                if !self.overwrite {
                    return Err(Error::TargetExists {
                        path: path.to_path_buf(),
                        conflict: Conflict::Exists,
                    });
                }
                self.target().remove(path).map_err(|e| Error::io(path, e))?;
                Ok(false)
            }
        }
    }

    /// The target directory: every path of a directory restore is beneath it.
    fn target(&self) -> &super::target::Target {
        self.shared
            .target
            .as_ref()
            .expect("a directory restore has a target directory")
    }

    /// Makes the directories on the stack that were left unmade because
    /// nothing in them was included yet.
    fn make_parents(&mut self, dirs: &mut [(PathBuf, bool)]) -> Result<()> {
        for (path, made) in dirs.iter_mut() {
            if !*made {
                self.make_dir(path)?;
                self.counts.dirs += 1;
                *made = true;
            }
        }
        Ok(())
    }

    fn make_dir(&self, path: &Path) -> Result<()> {
        if self.clear(path, true)? {
            return Ok(());
        }
        self.target().mkdir(path).map_err(|e| Error::io(path, e))
    }

    fn entry(&mut self, path: &Path, node: &Node) -> Result<()> {
        self.clear(path, false)?;
        // Hard-link groups are of regular files only: a symlink, a FIFO or a
        // device that claims to share an inode is restored on its own.
        if node.links > 1 && node.kind == NodeKind::File {
            let key = (node.device, node.inode);
            let first = self
                .shared
                .links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            if let Some(first) = first {
                // Linked once the first one has its contents.
                self.links.push((first, path.to_path_buf()));
                self.count(node);
                return Ok(());
            } else {
                self.shared
                    .links
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, path.to_path_buf());
            }
        }
        match node.kind {
            NodeKind::File => self.file(path, node)?,
            NodeKind::Symlink => {
                let target = node
                    .target
                    .as_ref()
                    .map(|t| t.0.as_slice())
                    .unwrap_or_default();
                self.target()
                    .symlink(target, path)
                    .map_err(|e| Error::io(path, e))?;
            }
            NodeKind::Fifo => self
                .target()
                .make_special(path, node)
                .map_err(|e| Error::io(path, e))?,
            NodeKind::Chardev | NodeKind::Blockdev => {
                if !self.shared.devices {
                    self.shared.warn(format!(
                        "{}: device nodes are restored only by root when asked for; skipped",
                        path.display()
                    ));
                    return Ok(());
                }
                self.target()
                    .make_special(path, node)
                    .map_err(|e| Error::io(path, e))?;
            }
            NodeKind::Dir => unreachable!("directories are handled by the walk"),
        }
        self.count(node);
        Ok(())
    }

    fn count(&mut self, node: &Node) {
        match node.kind {
            NodeKind::File => self.counts.files += 1,
            _ => self.counts.others += 1,
        }
    }

    fn file(&mut self, path: &Path, node: &Node) -> Result<()> {
        // Created here, on one thread: creating files from several threads in
        // the same directories contends on the filesystem (measured slower).
        // A file of the final length with nothing written is one hole; only
        // non-zero data is written later.
        let (f, inode) = self
            .target()
            .create_file(path)
            .map_err(|e| Error::io(path, e))?;
        f.set_len(node.size).map_err(|e| Error::io(path, e))?;
        self.plan_content(path, Some(inode), node)
    }

    /// Records where `node`'s blobs go in the (existing) file at `path`,
    /// fetching a batch whenever it is full (within a file too).
    pub(crate) fn plan_content(
        &mut self,
        path: &Path,
        inode: Option<u64>,
        node: &Node,
    ) -> Result<()> {
        // The file's entry in this batch, made at its first blob place.
        let mut file_idx: Option<u32> = None;
        let mut offset = 0u64;
        for c in &node.content {
            if let Some(id) = c.id {
                if self.places >= self.limit {
                    self.flush()?;
                    file_idx = None;
                }
                let files = &mut self.files;
                let f = *file_idx.get_or_insert_with(|| {
                    files.push(FileEntry {
                        path: path.to_path_buf(),
                        inode,
                    });
                    (files.len() - 1) as u32
                });
                match self.blob_slot.get(&id) {
                    Some(&slot) if self.blobs[slot].len == c.len => {
                        self.blobs[slot].targets.push((f, offset))
                    }
                    Some(&slot) => self.shared.fail(
                        path,
                        Some(id),
                        format!(
                            "blob {id} has {} bytes in one place of the tree and {} in another",
                            self.blobs[slot].len, c.len
                        ),
                    ),
                    None => {
                        self.blob_slot.insert(id, self.blobs.len());
                        self.blobs.push(Wanted {
                            id,
                            len: c.len,
                            targets: vec![(f, offset)],
                        });
                    }
                }
                self.places += 1;
            }
            offset += c.len;
        }
        Ok(())
    }
}
