//! Lookahead: a few threads read the directories the walker will enter next,
//! and stat their entries, while it is still busy elsewhere. A cold walk
//! waits on the disk for every directory block and inode; with several
//! requests in flight the disk serves them together. The walker still visits
//! everything in name order, so the tree builder sees the same events.
//!
//! Memory is bounded by [`WINDOW`] listings of at most [`STAT_CAP`] stat
//! results each, plus the names of the directories still to be read ahead.
//!
//! Every directory is opened beneath its walk's [`Root`], never through a
//! symlink, and its entries are stat-ed through its own descriptor, which
//! the listing hands on: what the walker records and reads is what is in
//! that directory, whatever a process on the volume renames meanwhile.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::fsmeta::{self, Meta};

/// A directory the caller named as a source (trusted), held open: every
/// directory below it is opened beneath it.
pub(crate) struct Root {
    pub(crate) fd: OwnedFd,
    pub(crate) path: PathBuf,
    /// The directory's own metadata, when it was opened.
    pub(crate) meta: Meta,
}

impl Root {
    pub(crate) fn open(path: &Path) -> io::Result<Arc<Root>> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        let meta = fsmeta::fstat(&fd)?;
        Ok(Arc::new(Root {
            fd,
            path: path.to_path_buf(),
            meta,
        }))
    }

    /// `path` (below this root) relative to it.
    fn rel<'p>(&self, path: &'p Path) -> &'p Path {
        path.strip_prefix(&self.path).unwrap_or(path)
    }
}

/// Directories read ahead and not yet taken by the walker, at most.
pub(crate) const WINDOW: usize = 32;
/// Entries of one directory stat-ed ahead; the walker stats the rest.
pub(crate) const STAT_CAP: usize = 1024;
/// Directories remembered to be read ahead later, at most.
const QUEUE: usize = 4096;

/// A directory, open, with its entries in name order, each with its
/// metadata when it was read ahead (`None`: not yet read).
#[derive(Debug)]
pub(crate) struct Listing {
    /// The directory: its entries are stat-ed and opened through it.
    pub(crate) dir: Arc<OwnedFd>,
    /// Its own metadata, to compare with what its parent's listing said.
    pub(crate) meta: Meta,
    pub(crate) entries: Vec<(OsString, Option<io::Result<Meta>>)>,
}

type Request = (Arc<Root>, PathBuf, Sender<io::Result<Listing>>);

pub(crate) struct Lookahead {
    requests: Option<Sender<Request>>,
    /// Set when the walk ends: readers skip the requests still queued.
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Read ahead, or being read: taken by [`Lookahead::listing`].
    waiting: HashMap<PathBuf, Receiver<io::Result<Listing>>>,
    /// To read ahead when the window has room, soonest first.
    queue: VecDeque<(Arc<Root>, PathBuf)>,
}

impl Lookahead {
    /// Starts `threads` readers; with none, every listing is read when asked.
    pub(crate) fn new(threads: usize) -> Self {
        if threads == 0 {
            return Lookahead {
                requests: None,
                stop: Arc::default(),
                threads: Vec::new(),
                waiting: HashMap::new(),
                queue: VecDeque::new(),
            };
        }
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (rx, stop) = (rx.clone(), stop.clone());
                std::thread::spawn(move || {
                    for (root, dir, reply) in rx {
                        if stop.load(Ordering::Relaxed) {
                            continue;
                        }
                        // The walker may have stopped waiting: nothing to do then.
                        let _ = reply.send(read(&root, &dir, STAT_CAP));
                    }
                })
            })
            .collect();
        Lookahead {
            requests: Some(tx),
            stop,
            threads,
            waiting: HashMap::new(),
            queue: VecDeque::new(),
        }
    }

    /// The listing of `dir`: the one read ahead, else read now. Without
    /// reader threads it holds names only (the walker stats each entry as it
    /// gets there, as a plain walk does).
    pub(crate) fn listing(&mut self, root: &Root, dir: &Path) -> io::Result<Listing> {
        let stat = if self.requests.is_some() { STAT_CAP } else { 0 };
        let listing = match self.waiting.remove(dir) {
            Some(rx) => rx.recv().unwrap_or_else(|_| read(root, dir, stat)),
            None => {
                self.unqueue(dir);
                read(root, dir, stat)
            }
        };
        self.refill();
        listing
    }

    /// Directories the walk will enter, in the order it will, before anything
    /// asked for earlier (a depth-first walk enters a directory's children
    /// before its next siblings).
    pub(crate) fn want(&mut self, root: &Arc<Root>, dirs: Vec<PathBuf>) {
        if self.requests.is_none() {
            return;
        }
        for d in dirs.into_iter().rev() {
            self.queue.push_front((root.clone(), d));
        }
        // The farthest ones are read when the walk gets there.
        self.queue.truncate(QUEUE);
        self.refill();
    }

    /// The walk will not enter `dir` after all.
    pub(crate) fn forget(&mut self, dir: &Path) {
        if self.waiting.remove(dir).is_none() {
            self.unqueue(dir);
        }
        self.refill();
    }

    fn unqueue(&mut self, dir: &Path) {
        if self.queue.front().is_some_and(|(_, d)| d == dir) {
            self.queue.pop_front();
        } else if !self.queue.is_empty() {
            self.queue.retain(|(_, d)| d != dir);
        }
    }

    fn refill(&mut self) {
        let Some(requests) = &self.requests else {
            return;
        };
        while self.waiting.len() < WINDOW {
            let Some((root, dir)) = self.queue.pop_front() else {
                break;
            };
            if self.waiting.contains_key(&dir) {
                continue;
            }
            let (tx, rx) = crossbeam_channel::bounded(1);
            if requests.send((root, dir.clone(), tx)).is_err() {
                break;
            }
            self.waiting.insert(dir, rx);
        }
    }
}

impl Drop for Lookahead {
    fn drop(&mut self) {
        // Queued requests are skipped, not read; each thread ends after the
        // listing it is reading, if any.
        self.stop.store(true, Ordering::Relaxed);
        self.waiting.clear();
        self.requests = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens `dir` beneath `root`, reads its names in order and stats the
/// first `stat` entries through it.
fn read(root: &Root, dir: &Path, stat: usize) -> io::Result<Listing> {
    let fd = fsmeta::open_dir_beneath(&root.fd, root.rel(dir))?;
    let meta = fsmeta::fstat(&fd)?;
    let entries = fsmeta::names_of(&fd)?
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let md = (i < stat).then(|| fsmeta::stat_at(&fd, &name));
            (name, md)
        })
        .collect();
    Ok(Listing {
        dir: Arc::new(fd),
        meta,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of `width` directories per level, `depth` levels, a file in each.
    fn tree(root: &Path, width: usize, depth: usize) {
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(root.join("f"), b"x").unwrap();
        if depth > 0 {
            for i in 0..width {
                tree(&root.join(format!("d{i}")), width, depth - 1);
            }
        }
    }

    /// Walks depth first through the lookahead; returns every path in order.
    fn walk(la: &mut Lookahead, root: &Arc<Root>, dir: &Path, out: &mut Vec<PathBuf>) {
        let listing = la.listing(root, dir).unwrap();
        let children: Vec<PathBuf> = listing
            .entries
            .iter()
            .filter(|(n, _)| n.to_string_lossy().starts_with('d'))
            .map(|(n, _)| dir.join(n))
            .collect();
        la.want(root, children);
        for (name, md) in listing.entries {
            let path = dir.join(&name);
            let md = md
                .unwrap_or_else(|| fsmeta::stat_at(&*listing.dir, &name))
                .unwrap();
            out.push(path.clone());
            if md.is_dir() {
                walk(la, root, &path, out);
            }
        }
    }

    #[test]
    fn a_walk_through_the_lookahead_sees_what_a_plain_walk_sees_in_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        // 4 + 16 + 64 + 256 directories: more than the window holds.
        tree(dir.path(), 4, 4);
        let root = Root::open(dir.path()).unwrap();
        let mut plain = Vec::new();
        walk(&mut Lookahead::new(0), &root, dir.path(), &mut plain);
        let mut ahead = Vec::new();
        let mut la = Lookahead::new(4);
        walk(&mut la, &root, dir.path(), &mut ahead);
        assert_eq!(plain.len(), 341 + 340);
        assert_eq!(ahead, plain);
        assert!(la.waiting.is_empty() && la.queue.is_empty());
    }

    #[test]
    fn a_directory_read_ahead_then_skipped_frees_its_place() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path(), 3, 1);
        let root = Root::open(dir.path()).unwrap();
        let mut la = Lookahead::new(2);
        la.listing(&root, dir.path()).unwrap();
        let dirs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("d{i}"))).collect();
        la.want(&root, dirs.clone());
        assert_eq!(la.waiting.len(), 3);
        la.forget(&dirs[1]);
        assert_eq!(la.waiting.len(), 2);
        // A directory that vanished after it was read ahead: its error comes back.
        std::fs::remove_dir_all(&dirs[2]).unwrap();
        la.listing(&root, &dirs[0]).unwrap();
        let gone = la.listing(&root, &dirs[2]);
        assert!(
            gone.is_ok() || gone.unwrap_err().kind() == io::ErrorKind::NotFound,
            "read ahead before or after the removal"
        );
        assert!(la.waiting.is_empty());
    }
}
