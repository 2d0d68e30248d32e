//! `coffer mount`: every snapshot as a read-only FUSE filesystem.
//!
//! The top levels are made here from the snapshot list (restic's layout,
//! plus the Kubernetes view): `snapshots/<time>/`, `ids/<short id>/`,
//! `hosts/<host>/<time>/`, `tags/<tag>/<time>/`,
//! `k8s/<cluster>/<namespace>/<pvc or pod-volume>/<time>/`, each level of
//! times with a `latest` symlink. Below a snapshot's directory the stored
//! tree is shown as it is: directories are read page by page as they are
//! listed (a listing resumes after the last name it returned), files chunk
//! by chunk as they are read, through a blob cache bounded by
//! `--cache-size` with a few blobs read ahead. Every blob is verified; one
//! that fails gives EIO for that read, and the log names the file and the
//! blob. The snapshot list is read again every `--refresh`.
//!
//! Inodes: 1 is the root; the directories of the top levels and each
//! snapshot's root directory keep their numbers for the whole mount (there
//! are as many as snapshots); an entry below is numbered when the kernel
//! looks it up and forgotten when the kernel forgets it, so the table is
//! bounded by the kernel's own cache.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_engine::format::blob::BlobType;
use coffer_engine::format::snapshot::Snapshot;
use coffer_engine::format::tree::{ContentRef, Node, NodeKind, Timestamp};
use coffer_engine::format::{BlobId, SnapshotId};
use coffer_engine::{Index, Repository};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr,
    Request,
};
use futures::future::{BoxFuture, FutureExt, Shared};

/// How long the kernel may keep what it was told: the stored trees never
/// change; the top levels change when snapshots come or go.
const TTL_TREE: Duration = Duration::from_secs(3600);
const TTL_TOP: Duration = Duration::from_secs(1);
/// Blobs read ahead of a sequential reader.
const READ_AHEAD: usize = 4;
/// Inode numbers from here on are given to entries below snapshots.
const FIRST_TREE_INO: u64 = 1 << 40;

/// Settings of a mount.
pub struct MountSettings {
    /// Bytes of verified blobs kept in memory.
    pub cache_bytes: usize,
    /// Owner of the top-level directories.
    pub uid: u32,
    /// Group of the top-level directories.
    pub gid: u32,
}

/// An entry of the top levels.
#[derive(Clone, Debug)]
enum Top {
    /// A directory of the layout, with its entries by name.
    Dir(BTreeMap<Vec<u8>, u64>),
    /// A snapshot's root directory.
    Snapshot(SnapshotId),
    /// A `latest` link.
    Link(Vec<u8>),
}

/// The top levels, made from one snapshot list.
struct Layout {
    /// Inode to entry, and its time (a snapshot's, for its directories).
    entries: HashMap<u64, (Top, SystemTime)>,
    /// The snapshots, by id.
    snapshots: HashMap<SnapshotId, Snapshot>,
    /// The index the snapshots' blobs are read through.
    index: Arc<Index>,
}

/// What an entry below a snapshot is known by: where it was found, or,
/// for a file with hard links, its snapshot and its source inode (so that
/// its links share one inode, as they did when backed up).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Name(u64, Vec<u8>),
    Link { root: u64, device: u64, inode: u64 },
}

/// An entry below a snapshot, numbered while the kernel knows it.
struct TreeEntry {
    node: Arc<Node>,
    key: Key,
    /// The inode of the snapshot root it is under.
    root: u64,
    lookups: u64,
}

/// Entries below snapshots, by inode and by key.
#[derive(Default)]
struct Inodes {
    by_ino: HashMap<u64, TreeEntry>,
    by_key: HashMap<Key, u64>,
    /// Each snapshot's root directory (never forgotten).
    roots: HashMap<SnapshotId, u64>,
}

/// An open file: its content pieces and where each starts.
struct OpenFile {
    name: String,
    content: Vec<ContentRef>,
    starts: Vec<u64>,
    size: u64,
}

/// Where a directory listing stands: the offset the kernel will ask next,
/// and the last name it was given.
struct DirCursor {
    next_offset: u64,
    last: Option<Vec<u8>>,
}

type Fetch = Shared<BoxFuture<'static, Result<Arc<Vec<u8>>, Arc<String>>>>;

/// Verified blobs, least recently used first out, within a byte budget.
struct BlobCache {
    lru: lru::LruCache<BlobId, Arc<Vec<u8>>>,
    bytes: usize,
    budget: usize,
    /// Reads in flight (a second reader waits for the first).
    fetching: HashMap<BlobId, Fetch>,
}

impl BlobCache {
    fn insert(&mut self, id: BlobId, blob: Arc<Vec<u8>>) {
        if blob.len() > self.budget {
            return;
        }
        self.bytes += blob.len();
        if let Some(old) = self.lru.put(id, blob) {
            self.bytes -= old.len();
        }
        while self.bytes > self.budget {
            match self.lru.pop_lru() {
                Some((_, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
    }
}

struct Shared_ {
    repo: Arc<Repository>,
    rt: tokio::runtime::Handle,
    settings: MountSettings,
    layout: RwLock<Layout>,
    /// Stable inode numbers of the top levels, by path.
    top_inos: Mutex<HashMap<Vec<u8>, u64>>,
    inodes: Mutex<Inodes>,
    next_ino: AtomicU64,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, DirCursor>>,
    next_fh: AtomicU64,
    blobs: Mutex<BlobCache>,
    /// Snapshots the last refresh saw (a new list replaces the layout).
    seen: Mutex<Option<HashSet<SnapshotId>>>,
}

/// The filesystem handed to FUSE.
pub struct CofferFs(Arc<Shared_>);

/// Reads a mounted filesystem's snapshot list again.
#[derive(Clone)]
pub struct Refresher(Arc<Shared_>);

impl Refresher {
    /// Reads the list (blocking); `Some(n)` when it changed, to `n` snapshots.
    pub fn refresh(&self) -> coffer_engine::Result<Option<usize>> {
        self.0.refresh()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn time_of(t: &Timestamp) -> SystemTime {
    if t.0 >= 0 {
        UNIX_EPOCH + Duration::new(t.0 as u64, t.1.min(999_999_999))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.0.unsigned_abs()))
            .and_then(|s| s.checked_add(Duration::from_nanos(u64::from(t.1.min(999_999_999)))))
            .unwrap_or(UNIX_EPOCH)
    }
}

fn kind_of(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Chardev => FileType::CharDevice,
        NodeKind::Blockdev => FileType::BlockDevice,
    }
}

fn attr_of(ino: u64, n: &Node) -> FileAttr {
    let size = match n.kind {
        NodeKind::File => n.size,
        NodeKind::Symlink => n.target.as_ref().map_or(0, |t| t.0.len() as u64),
        _ => 0,
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time_of(&n.atime),
        mtime: time_of(&n.mtime),
        ctime: time_of(&n.ctime),
        crtime: time_of(&n.mtime),
        kind: kind_of(n.kind),
        perm: (n.mode & 0o7777) as u16,
        nlink: match n.kind {
            NodeKind::Dir => 2,
            _ => u32::try_from(n.links.max(1)).unwrap_or(u32::MAX),
        },
        uid: n.uid,
        gid: n.gid,
        rdev: n.rdev.map_or(0, |r| r as u32),
        flags: 0,
        blksize: 128 * 1024,
    }
}

/// The name a snapshot's time gets: RFC 3339 in UTC, to the second.
fn time_name(s: &Snapshot) -> String {
    coffer_engine::repository::snapshot_time(s)
        .with_timezone(&chrono::Utc)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A name safe as one path component: no `/`, not empty, not `.` or `..`.
fn component(s: &str) -> Vec<u8> {
    let v: Vec<u8> = s
        .bytes()
        .map(|b| if b == b'/' || b == 0 { b'_' } else { b })
        .collect();
    match v.as_slice() {
        b"" => b"_".to_vec(),
        b"." | b".." => [b"_", v.as_slice()].concat(),
        _ => v,
    }
}

impl Shared_ {
    fn top_ino(&self, path: &[u8]) -> u64 {
        let mut m = lock(&self.top_inos);
        if let Some(i) = m.get(path) {
            return *i;
        }
        let i = m.len() as u64 + 2;
        m.insert(path.to_vec(), i);
        i
    }

    fn root_ino(&self, id: &SnapshotId) -> u64 {
        let mut inodes = lock(&self.inodes);
        if let Some(i) = inodes.roots.get(id) {
            return *i;
        }
        let i = self.next_ino.fetch_add(1, Ordering::Relaxed);
        inodes.roots.insert(*id, i);
        i
    }

    /// Makes the top levels from `snapshots`.
    fn layout(&self, snapshots: Vec<(SnapshotId, Snapshot)>, index: Arc<Index>) -> Layout {
        let mut entries: HashMap<u64, (Top, SystemTime)> = HashMap::new();
        let now = SystemTime::now();
        // path -> children (name -> ino), made as paths are added.
        let mut dirs: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, u64>> = BTreeMap::new();
        dirs.insert(Vec::new(), BTreeMap::new());
        let add_dir =
            |me: &Self, dirs: &mut BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, u64>>, path: &[Vec<u8>]| {
                for depth in 1..=path.len() {
                    let parent = path[..depth - 1].join(&b'/');
                    let here = path[..depth].join(&b'/');
                    let ino = me.top_ino(&here);
                    dirs.entry(here).or_default();
                    dirs.entry(parent)
                        .or_default()
                        .insert(path[depth - 1].clone(), ino);
                }
            };
        for top in ["snapshots", "ids", "hosts", "tags", "k8s"] {
            add_dir(self, &mut dirs, &[top.as_bytes().to_vec()]);
        }
        let mut sorted = snapshots;
        sorted.sort_by_key(|(_, s)| coffer_engine::repository::snapshot_time(s));
        // Each place a snapshot appears: the directory path and its time name.
        let mut places: Vec<(Vec<Vec<u8>>, SnapshotId, String)> = Vec::new();
        for (id, s) in &sorted {
            let t = time_name(s);
            places.push((vec![b"snapshots".to_vec()], *id, t.clone()));
            places.push((vec![b"ids".to_vec()], *id, id.short()));
            places.push((
                vec![b"hosts".to_vec(), component(&s.hostname)],
                *id,
                t.clone(),
            ));
            for tag in &s.tags {
                places.push((vec![b"tags".to_vec(), component(tag)], *id, t.clone()));
            }
            if let Some(o) = &s.origin {
                let volume = match (&o.pvc, &o.pod, &o.volume) {
                    (Some(pvc), _, _) => pvc.clone(),
                    (None, Some(pod), Some(v)) => format!("{pod}-{v}"),
                    (None, Some(pod), None) => pod.clone(),
                    (None, None, Some(v)) => v.clone(),
                    (None, None, None) => "_".into(),
                };
                let dir = vec![
                    b"k8s".to_vec(),
                    component(o.cluster.as_deref().unwrap_or("_")),
                    component(o.namespace.as_deref().unwrap_or("_")),
                    component(&volume),
                ];
                places.push((dir, *id, t));
            }
        }
        let mut latest: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (dir, id, name) in places {
            add_dir(self, &mut dirs, &dir);
            let path = dir.join(&b'/');
            let children = dirs.entry(path.clone()).or_default();
            // Two snapshots of the same second: the later gets `-1`, `-2`, ...
            let mut unique = name.clone().into_bytes();
            let mut n = 0;
            while children.contains_key(&unique) || unique == b"latest" {
                n += 1;
                unique = format!("{name}-{n}").into_bytes();
            }
            let ino = self.root_ino(&id);
            children.insert(unique.clone(), ino);
            if dir[0] != b"ids" {
                latest.insert(path, unique);
            }
        }
        for (path, target) in latest {
            let link_path = [path.as_slice(), b"/latest"].concat();
            let ino = self.top_ino(&link_path);
            dirs.entry(path)
                .or_default()
                .insert(b"latest".to_vec(), ino);
            entries.insert(ino, (Top::Link(target), now));
        }
        for (path, children) in dirs {
            let ino = if path.is_empty() {
                1
            } else {
                self.top_ino(&path)
            };
            entries.insert(ino, (Top::Dir(children), now));
        }
        let mut snaps = HashMap::new();
        for (id, s) in sorted {
            let ino = self.root_ino(&id);
            let t = time_of(&Timestamp(
                coffer_engine::repository::snapshot_time(&s).timestamp(),
                0,
            ));
            entries.insert(ino, (Top::Snapshot(id), t));
            snaps.insert(id, s);
        }
        Layout {
            entries,
            snapshots: snaps,
            index,
        }
    }

    /// Reads the snapshot list again; a changed list replaces the layout
    /// (and the index). Returns the number of snapshots when it changed.
    fn refresh(&self) -> coffer_engine::Result<Option<usize>> {
        let snapshots = self.rt.block_on(self.repo.snapshots())?;
        let ids: HashSet<SnapshotId> = snapshots.iter().map(|(id, _)| *id).collect();
        if lock(&self.seen).as_ref() == Some(&ids) {
            return Ok(None);
        }
        let index = self.rt.block_on(self.repo.load_index())?;
        let layout = self.layout(snapshots, index);
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = layout;
        let n = ids.len();
        *lock(&self.seen) = Some(ids);
        Ok(Some(n))
    }

    fn index(&self) -> Arc<Index> {
        self.layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .index
            .clone()
    }

    fn top(&self, ino: u64) -> Option<(Top, SystemTime)> {
        self.layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .get(&ino)
            .cloned()
    }

    /// The node of a snapshot root or an entry below one.
    fn node(&self, ino: u64) -> Option<Arc<Node>> {
        if let Some((Top::Snapshot(id), _)) = self.top(ino) {
            let layout = self.layout.read().unwrap_or_else(|p| p.into_inner());
            return layout.snapshots.get(&id).map(|s| Arc::new(s.root.clone()));
        }
        lock(&self.inodes).by_ino.get(&ino).map(|e| e.node.clone())
    }

    fn top_attr(&self, ino: u64, top: &Top, time: SystemTime) -> FileAttr {
        let (kind, perm, size) = match top {
            Top::Link(t) => (FileType::Symlink, 0o777, t.len() as u64),
            _ => (FileType::Directory, 0o555, 0),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.settings.uid,
            gid: self.settings.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }

    /// Numbers `node`, found in directory `parent` (once more).
    fn remember(&self, parent: u64, node: Node) -> u64 {
        let mut inodes = lock(&self.inodes);
        let root = match inodes.by_ino.get(&parent) {
            Some(e) => e.root,
            None => parent,
        };
        let key = if node.kind != NodeKind::Dir && node.links > 1 && node.inode != 0 {
            Key::Link {
                root,
                device: node.device,
                inode: node.inode,
            }
        } else {
            Key::Name(parent, node.name.0.clone())
        };
        if let Some(ino) = inodes.by_key.get(&key).copied() {
            if let Some(e) = inodes.by_ino.get_mut(&ino) {
                e.lookups += 1;
                return ino;
            }
        }
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        inodes.by_key.insert(key.clone(), ino);
        inodes.by_ino.insert(
            ino,
            TreeEntry {
                node: Arc::new(node),
                key,
                root,
                lookups: 1,
            },
        );
        ino
    }

    /// A verified blob, from the cache or the repository; a blob already
    /// being read is waited for, not read twice.
    fn blob(&self, id: &BlobId) -> Result<Arc<Vec<u8>>, Arc<String>> {
        let fetch = {
            let mut cache = lock(&self.blobs);
            if let Some(b) = cache.lru.get(id) {
                return Ok(b.clone());
            }
            self.fetch(&mut cache, id)
        };
        self.rt.block_on(fetch)
    }

    /// The read of blob `id`, started if none is in flight.
    fn fetch(&self, cache: &mut BlobCache, id: &BlobId) -> Fetch {
        if let Some(f) = cache.fetching.get(id) {
            return f.clone();
        }
        let (repo, index, id) = (self.repo.clone(), self.index(), *id);
        let f: Fetch = async move {
            repo.read_blob(&index, BlobType::Data, &id)
                .await
                .map(Arc::new)
                .map_err(|e| Arc::new(e.to_string()))
        }
        .boxed()
        .shared();
        cache.fetching.insert(id, f.clone());
        f
    }

    /// Starts reading the next blobs of `file` after piece `i` into the cache.
    fn read_ahead(self: &Arc<Self>, file: &OpenFile, i: usize) {
        let mut cache = lock(&self.blobs);
        for c in file.content.iter().skip(i + 1).take(READ_AHEAD) {
            let Some(id) = c.id else { continue };
            if cache.lru.contains(&id) || cache.fetching.contains_key(&id) {
                continue;
            }
            let f = self.fetch(&mut cache, &id);
            let me = self.clone();
            self.rt.spawn(async move {
                let got = f.await;
                let mut cache = lock(&me.blobs);
                cache.fetching.remove(&id);
                if let Ok(b) = got {
                    cache.insert(id, b);
                }
            });
        }
    }

    /// Bytes `offset..offset+size` of `file`.
    fn read(self: &Arc<Self>, file: &OpenFile, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        if offset >= file.size {
            return Ok(Vec::new());
        }
        let end = file.size.min(offset + u64::from(size));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut i = file
            .starts
            .partition_point(|s| *s <= offset)
            .saturating_sub(1);
        let mut last = i;
        while i < file.content.len() && file.starts[i] < end {
            let c = file.content[i];
            let (start, len) = (file.starts[i], c.len);
            let from = offset.max(start) - start;
            let to = end.min(start + len) - start;
            match c.id {
                None => out.resize(out.len() + (to - from) as usize, 0),
                Some(id) => {
                    let blob = self.blob(&id);
                    {
                        let mut cache = lock(&self.blobs);
                        cache.fetching.remove(&id);
                        if let Ok(b) = &blob {
                            cache.insert(id, b.clone());
                        }
                    }
                    let blob = blob.map_err(|e| {
                        tracing::error!("{}: data blob {id} cannot be read: {e}", file.name);
                        Errno::EIO
                    })?;
                    let piece = blob.get(from as usize..to as usize).ok_or_else(|| {
                        tracing::error!(
                            "{}: data blob {id} holds {} bytes, the tree says {len}",
                            file.name,
                            blob.len()
                        );
                        Errno::EIO
                    })?;
                    out.extend_from_slice(piece);
                }
            }
            last = i;
            i += 1;
        }
        self.read_ahead(file, last);
        Ok(out)
    }
}

impl CofferFs {
    /// A filesystem of `repo`'s snapshots.
    pub fn new(
        repo: Arc<Repository>,
        rt: tokio::runtime::Handle,
        settings: MountSettings,
    ) -> coffer_engine::Result<Self> {
        let budget = settings.cache_bytes;
        let shared = Arc::new(Shared_ {
            repo,
            rt,
            settings,
            layout: RwLock::new(Layout {
                entries: HashMap::new(),
                snapshots: HashMap::new(),
                index: Arc::new(Index::new()),
            }),
            top_inos: Mutex::new(HashMap::new()),
            inodes: Mutex::new(Inodes::default()),
            next_ino: AtomicU64::new(FIRST_TREE_INO),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            blobs: Mutex::new(BlobCache {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
                budget,
                fetching: HashMap::new(),
            }),
            seen: Mutex::new(None),
        });
        shared.refresh()?;
        Ok(CofferFs(shared))
    }

    /// What reads the snapshot list again, for the caller to keep.
    pub fn refresher(&self) -> Refresher {
        Refresher(self.0.clone())
    }

    fn attr(&self, ino: u64) -> Option<(FileAttr, Duration)> {
        let s = &self.0;
        match s.top(ino) {
            Some((Top::Snapshot(_), _)) | None => {}
            Some((top, time)) => return Some((s.top_attr(ino, &top, time), TTL_TOP)),
        }
        s.node(ino).map(|n| (attr_of(ino, &n), TTL_TREE))
    }
}

impl Filesystem for CofferFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = &self.0;
        let parent = u64::from(parent);
        let name = name.as_bytes();
        match s.top(parent) {
            Some((Top::Dir(children), _)) => {
                let Some(ino) = children.get(name).copied() else {
                    return reply.error(Errno::ENOENT);
                };
                match self.attr(ino) {
                    Some((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
                    None => reply.error(Errno::ENOENT),
                }
                return;
            }
            Some((Top::Link(_), _)) => return reply.error(Errno::ENOTDIR),
            _ => {}
        }
        let Some(dir) = s.node(parent) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(subtree) = dir.subtree.filter(|_| dir.kind == NodeKind::Dir) else {
            return reply.error(Errno::ENOTDIR);
        };
        let index = s.index();
        match s.rt.block_on(coffer_engine::trees::find_child(
            &s.repo, &index, &subtree, name,
        )) {
            Ok(Some(node)) => {
                let ino = s.remember(parent, node.clone());
                reply.entry(&TTL_TREE, &attr_of(ino, &node), Generation(0));
            }
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => {
                tracing::error!(
                    "{}: tree {subtree} cannot be read: {e}",
                    String::from_utf8_lossy(&dir.name.0)
                );
                reply.error(Errno::EIO);
            }
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut inodes = lock(&self.0.inodes);
        let ino = u64::from(ino);
        let gone = match inodes.by_ino.get_mut(&ino) {
            Some(e) => {
                e.lookups = e.lookups.saturating_sub(nlookup);
                e.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(e) = inodes.by_ino.remove(&ino) {
                inodes.by_key.remove(&e.key);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(u64::from(ino)) {
            Some((attr, ttl)) => reply.attr(&ttl, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ino = u64::from(ino);
        if let Some((Top::Link(t), _)) = self.0.top(ino) {
            return reply.data(&t);
        }
        match self.0.node(ino) {
            Some(n) if n.kind == NodeKind::Symlink => {
                reply.data(n.target.as_ref().map_or(&[][..], |t| t.0.as_slice()))
            }
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & (libc::O_WRONLY | libc::O_RDWR) != 0 {
            return reply.error(Errno::EROFS);
        }
        let Some(n) = self.0.node(u64::from(ino)) else {
            return reply.error(Errno::ENOENT);
        };
        if n.kind == NodeKind::Dir {
            return reply.error(Errno::EISDIR);
        }
        let mut starts = Vec::with_capacity(n.content.len());
        let mut at = 0u64;
        for c in &n.content {
            starts.push(at);
            at += c.len;
        }
        let file = OpenFile {
            name: String::from_utf8_lossy(&n.name.0).into_owned(),
            content: n.content.clone(),
            starts,
            size: if n.kind == NodeKind::File {
                n.size.min(at)
            } else {
                0
            },
        };
        let fh = self.0.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.0.files).insert(fh, Arc::new(file));
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = lock(&self.0.files).get(&u64::from(fh)).cloned() else {
            return reply.error(Errno::EBADF);
        };
        match self.0.read(&file, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.0.files).remove(&u64::from(fh));
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.0.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.0.dirs).insert(
            fh,
            DirCursor {
                next_offset: 0,
                last: None,
            },
        );
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = &self.0;
        let dir = u64::from(ino);
        // "." and ".." first, at offsets 1 and 2.
        let mut next = offset;
        if next == 0 {
            if reply.add(ino, 1, FileType::Directory, ".") {
                return reply.ok();
            }
            next = 1;
        }
        if next == 1 {
            if reply.add(INodeNo(1), 2, FileType::Directory, "..") {
                return reply.ok();
            }
            next = 2;
        }
        match s.top(dir) {
            Some((Top::Dir(children), _)) => {
                for (i, (name, child)) in children.iter().enumerate().skip((next - 2) as usize) {
                    let kind = match s.top(*child) {
                        Some((Top::Link(_), _)) => FileType::Symlink,
                        _ => FileType::Directory,
                    };
                    if reply.add(INodeNo(*child), i as u64 + 3, kind, OsStr::from_bytes(name)) {
                        break;
                    }
                }
                return reply.ok();
            }
            Some((Top::Link(_), _)) => return reply.error(Errno::ENOTDIR),
            Some((Top::Snapshot(_), _)) | None => {}
        }
        let Some(node) = s.node(dir) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(subtree) = node.subtree.filter(|_| node.kind == NodeKind::Dir) else {
            return reply.error(Errno::ENOTDIR);
        };
        let index = s.index();
        let fh = u64::from(fh);
        // Resume after the last name given, or start again and skip.
        let (resume, mut skip) = {
            let dirs = lock(&s.dirs);
            match dirs.get(&fh) {
                Some(c) if c.next_offset == next && next > 2 => (c.last.clone(), 0),
                _ => (None, next - 2),
            }
        };
        let listed: coffer_engine::Result<Option<Vec<u8>>> = s.rt.block_on(async {
            let mut reader = match &resume {
                Some(after) => {
                    coffer_engine::trees::DirReader::open_after(&s.repo, &index, &subtree, after)
                        .await?
                }
                None => coffer_engine::trees::DirReader::open(&s.repo, &index, &subtree).await?,
            };
            let mut last = resume.clone();
            while let Some(n) = reader.next().await? {
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let child = lock(&s.inodes)
                    .by_key
                    .get(&Key::Name(dir, n.name.0.clone()))
                    .copied()
                    .unwrap_or_else(|| listing_ino(&n.name.0));
                if reply.add(
                    INodeNo(child),
                    next + 1,
                    kind_of(n.kind),
                    OsStr::from_bytes(&n.name.0),
                ) {
                    break;
                }
                next += 1;
                last = Some(n.name.0);
            }
            Ok(last)
        });
        match listed {
            Ok(last) => {
                lock(&s.dirs).insert(
                    fh,
                    DirCursor {
                        next_offset: next,
                        last,
                    },
                );
                reply.ok();
            }
            Err(e) => {
                tracing::error!(
                    "{}: tree {subtree} cannot be read: {e}",
                    String::from_utf8_lossy(&node.name.0)
                );
                reply.error(Errno::EIO);
            }
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.0.dirs).remove(&u64::from(fh));
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(n) = self.0.node(u64::from(ino)) else {
            return reply.error(Errno::NO_XATTR);
        };
        let Some(x) = n.xattrs.iter().find(|x| x.name.0 == name.as_bytes()) else {
            return reply.error(Errno::NO_XATTR);
        };
        xattr_reply(&x.value.0, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut names = Vec::new();
        if let Some(n) = self.0.node(u64::from(ino)) {
            for x in &n.xattrs {
                names.extend_from_slice(&x.name.0);
                names.push(0);
            }
        }
        xattr_reply(&names, size, reply);
    }
}

/// An xattr value or list: its size when asked with size 0, else the bytes
/// if they fit.
fn xattr_reply(bytes: &[u8], size: u32, reply: ReplyXattr) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(bytes);
    }
}

/// The inode number a listing gives an entry not looked up yet (the kernel
/// numbers entries by lookup; a listing's numbers only need to be non-zero).
fn listing_ino(name: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    FIRST_TREE_INO / 2 + h.finish() % (FIRST_TREE_INO / 2)
}
