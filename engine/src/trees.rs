//! Reading directory listings (a directory is one tree page or a B-tree of
//! pages), and the two walks over them: [`Walk`] by path, [`Pages`] by page.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use coffer_repo_format::tree::{Node, NodeKind, TreePage};
use coffer_repo_format::BlobId;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::repository::Repository;

/// Iterates the nodes of one directory in name order, one page per level in memory.
pub struct DirReader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    stack: Vec<(Arc<TreePage>, usize)>,
    child_pages: Vec<BlobId>,
}

impl<'a> DirReader<'a> {
    /// Starts reading the directory whose root page is `id`.
    pub async fn open(repo: &'a Repository, index: &'a Index, id: &BlobId) -> Result<Self> {
        let page = repo.read_tree(index, id).await?;
        Ok(DirReader {
            repo,
            index,
            stack: vec![(page, 0)],
            child_pages: Vec::new(),
        })
    }

    /// The pages below the root page read so far (large directories only).
    pub fn child_pages(&self) -> &[BlobId] {
        &self.child_pages
    }

    /// The next node, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Node>> {
        loop {
            let Some((page, pos)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if !page.nodes.is_empty() {
                if *pos < page.nodes.len() {
                    *pos += 1;
                    return Ok(Some(page.nodes[*pos - 1].clone()));
                }
                self.stack.pop();
                continue;
            }
            if *pos < page.pages.len() {
                let id = page.pages[*pos].id;
                *pos += 1;
                if self.stack.len() > 16 {
                    return Err(Error::corrupt(
                        format!("tree {id}"),
                        coffer_repo_format::FormatError::Malformed {
                            what: "tree",
                            reason: "index pages nested more than 16 deep".into(),
                        },
                    ));
                }
                let child = self.repo.read_tree(self.index, &id).await?;
                self.child_pages.push(id);
                self.stack.push((child, 0));
                continue;
            }
            self.stack.pop();
        }
    }
}

/// Finds the entry `name` in the directory whose root page is `dir`.
pub async fn find_child(
    repo: &Repository,
    index: &Index,
    dir: &BlobId,
    name: &[u8],
) -> Result<Option<Node>> {
    let mut id = *dir;
    for _ in 0..=16 {
        let page = repo.read_tree(index, &id).await?;
        if page.pages.is_empty() {
            return Ok(page
                .nodes
                .binary_search_by(|n| n.name.0.as_slice().cmp(name))
                .ok()
                .map(|i| page.nodes[i].clone()));
        }
        // The last child page whose first name is not after `name`.
        let i = page.pages.partition_point(|r| r.first.0.as_slice() <= name);
        if i == 0 {
            return Ok(None);
        }
        id = page.pages[i - 1].id;
    }
    Ok(None)
}

/// Follows a relative path (`a/b/c`) from a directory node.
pub async fn lookup(
    repo: &Repository,
    index: &Index,
    root: &Node,
    path: &[u8],
) -> Result<Option<Node>> {
    let mut node = root.clone();
    for comp in path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        if node.kind != NodeKind::Dir {
            return Ok(None);
        }
        let Some(subtree) = node.subtree else {
            return Ok(None);
        };
        match find_child(repo, index, &subtree, comp).await? {
            Some(n) => node = n,
            None => return Ok(None),
        }
    }
    Ok(Some(node))
}

/// A node met by a [`Walk`], with its path: the walk's root path joined with
/// the names on the way down.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Where the node is.
    pub path: PathBuf,
    /// The node as the snapshot recorded it.
    pub node: Node,
}

/// One step of a [`Walk`].
#[derive(Debug)]
pub enum Step {
    /// A directory, before its entries. Its entries and its `Leave` follow,
    /// unless [`Walk::skip`] is called now.
    Enter(Entry),
    /// Anything that is not a directory.
    Leaf(Entry),
    /// A directory, after its entries, with the pages below its root page
    /// (large directories only).
    Leave(Entry, Vec<BlobId>),
    /// The listing of this directory cannot be read (only with
    /// [`Walk::keep_going`]): from its start, or, when `opened`, from a later
    /// page on (the entries before it came). The directory's `Leave` follows.
    Unreadable {
        /// The directory.
        entry: Entry,
        /// Why.
        error: Error,
        /// Whether its first page was read.
        opened: bool,
    },
}

/// A directory being read by a [`Walk`].
struct Frame<'a> {
    entry: Entry,
    reader: Option<DirReader<'a>>,
}

/// The one way through a snapshot's tree: depth first, in name order, one
/// page per level in memory. Check, prune, stats, diff, find, dump, ls and
/// restore all walk with it (or with [`Pages`]).
pub struct Walk<'a> {
    repo: &'a Repository,
    index: &'a Index,
    keep_going: bool,
    /// The root, until the first step.
    root: Option<Entry>,
    frames: Vec<Frame<'a>>,
    /// The directory the last `Enter` announced, read by the next step.
    entered: Option<Entry>,
}

impl<'a> Walk<'a> {
    /// A walk of `root` (a directory, or a single node), whose path is `path`.
    pub fn new(repo: &'a Repository, index: &'a Index, path: PathBuf, root: Node) -> Self {
        Walk {
            repo,
            index,
            keep_going: false,
            root: Some(Entry { path, node: root }),
            frames: Vec::new(),
            entered: None,
        }
    }

    /// Reports a listing that cannot be read as [`Step::Unreadable`] and goes
    /// on, instead of ending the walk with the error.
    pub fn keep_going(mut self) -> Self {
        self.keep_going = true;
        self
    }

    /// Leaves out the entries of the directory the last step entered; its
    /// `Leave` does not come either.
    pub fn skip(&mut self) {
        self.entered = None;
    }

    /// How many directories enclose the node of the last step.
    pub fn depth(&self) -> usize {
        self.frames.len()
    }

    /// The next step, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Step>> {
        if let Some(entry) = self.entered.take() {
            let opened = match entry.node.subtree {
                Some(id) => DirReader::open(self.repo, self.index, &id).await.map(Some),
                None => Ok(None),
            };
            let (reader, failed) = match opened {
                Ok(r) => (r, None),
                Err(e) => (None, Some(e)),
            };
            self.frames.push(Frame {
                entry: entry.clone(),
                reader,
            });
            if let Some(e) = failed {
                return self.unreadable(entry, e, false);
            }
        }
        let Some(frame) = self.frames.last_mut() else {
            return Ok(self.root.take().map(|root| self.announce(root)));
        };
        let next = match &mut frame.reader {
            Some(r) => r.next().await,
            None => Ok(None),
        };
        let node = match next {
            Ok(node) => node,
            Err(e) => {
                let entry = frame.entry.clone();
                frame.reader = None;
                return self.unreadable(entry, e, true);
            }
        };
        match node {
            Some(node) => {
                let path = frame.entry.path.join(OsStr::from_bytes(&node.name.0));
                Ok(Some(self.announce(Entry { path, node })))
            }
            None => {
                let Some(frame) = self.frames.pop() else {
                    return Ok(None);
                };
                let pages = frame.reader.map(|r| r.child_pages).unwrap_or_default();
                Ok(Some(Step::Leave(frame.entry, pages)))
            }
        }
    }

    fn announce(&mut self, entry: Entry) -> Step {
        if entry.node.kind == NodeKind::Dir {
            self.entered = Some(entry.clone());
            Step::Enter(entry)
        } else {
            Step::Leaf(entry)
        }
    }

    fn unreadable(&self, entry: Entry, error: Error, opened: bool) -> Result<Option<Step>> {
        if self.keep_going {
            Ok(Some(Step::Unreadable {
                entry,
                error,
                opened,
            }))
        } else {
            Err(error)
        }
    }
}

/// Every distinct tree page reachable from the roots given, each read once,
/// in no set order: the walk of what is stored rather than of where it
/// restores to (check, prune). Each page comes with the path of the
/// directory it lists, the first path it was found under.
pub struct Pages<'a> {
    repo: &'a Repository,
    index: &'a Index,
    seen: HashSet<BlobId>,
    todo: Vec<(PathBuf, BlobId)>,
}

/// One page met by [`Pages`], or the error reading it.
pub struct Page {
    /// The directory the page lists part or all of.
    pub dir: PathBuf,
    /// The page's blob.
    pub id: BlobId,
    /// The page, or why it cannot be read.
    pub page: Result<Arc<TreePage>>,
}

impl<'a> Pages<'a> {
    /// A walk with no roots yet: see [`Pages::add`].
    pub fn new(repo: &'a Repository, index: &'a Index) -> Self {
        Pages {
            repo,
            index,
            seen: HashSet::new(),
            todo: Vec::new(),
        }
    }

    /// Adds the directory tree `id`, listed at `dir`; nothing if it was seen.
    pub fn add(&mut self, dir: PathBuf, id: BlobId) {
        if !self.seen.contains(&id) {
            self.todo.push((dir, id));
        }
    }

    /// Every page read or tried so far.
    pub fn seen(&self) -> &HashSet<BlobId> {
        &self.seen
    }

    /// The next page not seen before; `None` when all are done. The
    /// directories and pages a page lists are walked next.
    pub async fn next(&mut self) -> Option<Page> {
        loop {
            let (dir, id) = self.todo.pop()?;
            if !self.seen.insert(id) {
                continue;
            }
            // A page the index does not list is missing, even where a
            // cache still holds it.
            let page = if self.index.contains(&id) {
                self.repo.read_tree(self.index, &id).await
            } else {
                Err(Error::NotFound {
                    what: format!("tree blob {id} in the index"),
                    missing: crate::error::Missing::Object,
                })
            };
            if let Ok(p) = &page {
                for r in &p.pages {
                    self.add(dir.clone(), r.id);
                }
                for n in p.nodes.iter().rev() {
                    if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
                        self.add(dir.join(OsStr::from_bytes(&n.name.0)), sub);
                    }
                }
            }
            return Some(Page { dir, id, page });
        }
    }
}
