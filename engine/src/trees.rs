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

/// Directories nested deeper than this below a snapshot's root are damage
/// (SPEC §14): a crafted chain of trees cannot hold a walk for good.
pub const MAX_TREE_DEPTH: usize = 1024;

/// One page being read by a [`DirReader`], with the names its parent's page
/// reference allows under it: `lower` included, `upper` excluded.
struct Level {
    id: BlobId,
    page: Arc<TreePage>,
    pos: usize,
    lower: Option<Vec<u8>>,
    upper: Option<Vec<u8>>,
}

/// Iterates the nodes of one directory in name order, one page per level in
/// memory. Names must be strictly increasing across the directory's pages
/// and within the range each page reference announces; a listing that
/// breaks this (the same name twice across two pages, say) is damage.
pub struct DirReader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    stack: Vec<Level>,
    child_pages: Vec<BlobId>,
    last: Option<Vec<u8>>,
}

fn malformed(id: &BlobId, reason: String) -> Error {
    Error::corrupt(
        format!("tree {id}"),
        coffer_repo_format::FormatError::Malformed {
            what: "tree",
            reason,
        },
    )
}

impl<'a> DirReader<'a> {
    /// Starts reading the directory whose root page is `id`.
    pub async fn open(repo: &'a Repository, index: &'a Index, id: &BlobId) -> Result<Self> {
        let page = repo.read_tree(index, id).await?;
        Ok(DirReader {
            repo,
            index,
            stack: vec![Level {
                id: *id,
                page,
                pos: 0,
                lower: None,
                upper: None,
            }],
            child_pages: Vec::new(),
            last: None,
        })
    }

    /// The pages below the root page read so far (large directories only).
    pub fn child_pages(&self) -> &[BlobId] {
        &self.child_pages
    }

    /// Starts reading the directory whose root page is `id` after the name
    /// `after` (the entries from the first name greater than it), reading
    /// only the pages on the way there: how a listing is resumed.
    pub async fn open_after(
        repo: &'a Repository,
        index: &'a Index,
        id: &BlobId,
        after: &[u8],
    ) -> Result<Self> {
        let mut reader = Self::open(repo, index, id).await?;
        while let Some(level) = reader.stack.last_mut() {
            if level.page.pages.is_empty() {
                level.pos = level
                    .page
                    .nodes
                    .partition_point(|n| n.name.0.as_slice() <= after);
                break;
            }
            // The last child page whose first name is not after `after`.
            let i = level
                .page
                .pages
                .partition_point(|r| r.first.0.as_slice() <= after);
            if i == 0 {
                break;
            }
            level.pos = i;
            reader.descend(i - 1).await?;
        }
        reader.last = Some(after.to_vec());
        Ok(reader)
    }

    /// Reads child page `i` of the current index page and makes it the
    /// current page, checking the name range its reference announces.
    async fn descend(&mut self, i: usize) -> Result<()> {
        let Some(level) = self.stack.last() else {
            return Ok(());
        };
        let r = &level.page.pages[i];
        let id = r.id;
        let lower = r.first.0.clone();
        let upper = match level.page.pages.get(i + 1) {
            Some(next) => Some(next.first.0.clone()),
            None => level.upper.clone(),
        };
        if level.lower.as_deref().is_some_and(|l| lower.as_slice() < l)
            || level
                .upper
                .as_deref()
                .is_some_and(|u| lower.as_slice() >= u)
        {
            return Err(malformed(
                &level.id,
                "a page reference lies outside the range of its own page".into(),
            ));
        }
        if self.stack.len() > 16 {
            return Err(malformed(
                &id,
                "index pages nested more than 16 deep".into(),
            ));
        }
        let child = self.repo.read_tree(self.index, &id).await?;
        self.child_pages.push(id);
        self.stack.push(Level {
            id,
            page: child,
            pos: 0,
            lower: Some(lower),
            upper,
        });
        Ok(())
    }

    /// The next node, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Node>> {
        loop {
            let Some(level) = self.stack.last_mut() else {
                return Ok(None);
            };
            if !level.page.nodes.is_empty() {
                if level.pos < level.page.nodes.len() {
                    level.pos += 1;
                    let node = &level.page.nodes[level.pos - 1];
                    let name = node.name.0.as_slice();
                    let below = level.lower.as_deref().is_some_and(|l| name < l);
                    let above = level.upper.as_deref().is_some_and(|u| name >= u);
                    if below || above {
                        return Err(malformed(
                            &level.id,
                            format!(
                                "name {:?} lies outside the range its page reference announces",
                                String::from_utf8_lossy(name)
                            ),
                        ));
                    }
                    if self.last.as_deref().is_some_and(|l| name <= l) {
                        return Err(malformed(
                            &level.id,
                            format!(
                                "name {:?} comes again or out of order across the directory's pages",
                                String::from_utf8_lossy(name)
                            ),
                        ));
                    }
                    self.last = Some(name.to_vec());
                    return Ok(Some(node.clone()));
                }
                self.stack.pop();
                continue;
            }
            if level.pos < level.page.pages.len() {
                let i = level.pos;
                level.pos += 1;
                self.descend(i).await?;
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
                Some(id) => match self.nesting_problem(&id) {
                    Some(reason) => Err(malformed(&id, reason)),
                    None => DirReader::open(self.repo, self.index, &id).await.map(Some),
                },
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

    /// Why the directory listed by `id` cannot be entered from here: it is
    /// nested too deep, or it lists one of its own ancestors (a loop).
    fn nesting_problem(&self, id: &BlobId) -> Option<String> {
        if self.frames.len() >= MAX_TREE_DEPTH {
            return Some(format!(
                "directories nested more than {MAX_TREE_DEPTH} deep"
            ));
        }
        self.frames
            .iter()
            .any(|f| f.entry.node.subtree == Some(*id))
            .then(|| "a directory lists one of its own ancestors".to_string())
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
    /// Pages still to read.
    todo: Vec<Todo>,
}

/// A page for [`Pages`] to read: the directory it lists, how many
/// directories enclose that one, and the names its parent page's reference
/// allows under it (`lower` included, `upper` excluded; none for a
/// directory's root page).
struct Todo {
    dir: PathBuf,
    id: BlobId,
    depth: usize,
    lower: Option<Vec<u8>>,
    upper: Option<Vec<u8>>,
}

impl Todo {
    /// Whether the page's names lie within the range its reference announces.
    fn check_range(&self, page: &TreePage) -> Result<()> {
        let first = page
            .nodes
            .first()
            .map(|n| n.name.0.as_slice())
            .or(page.pages.first().map(|r| r.first.0.as_slice()));
        let last = page
            .nodes
            .last()
            .map(|n| n.name.0.as_slice())
            .or(page.pages.last().map(|r| r.first.0.as_slice()));
        let below = first.zip(self.lower.as_deref()).is_some_and(|(f, l)| f < l);
        let above = last.zip(self.upper.as_deref()).is_some_and(|(z, u)| z >= u);
        if below || above {
            return Err(malformed(
                &self.id,
                "its names lie outside the range its page reference announces (a name \
                 that comes again or out of order across the directory's pages)"
                    .into(),
            ));
        }
        Ok(())
    }
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
        self.add_at(dir, id, 0);
    }

    fn add_at(&mut self, dir: PathBuf, id: BlobId, depth: usize) {
        self.push(Todo {
            dir,
            id,
            depth,
            lower: None,
            upper: None,
        });
    }

    fn push(&mut self, todo: Todo) {
        if !self.seen.contains(&todo.id) {
            self.todo.push(todo);
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
            let todo = self.todo.pop()?;
            let (id, depth) = (todo.id, todo.depth);
            if !self.seen.insert(id) {
                continue;
            }
            // A page the index does not list is missing, even where a
            // cache still holds it.
            let page = if depth > MAX_TREE_DEPTH {
                Err(malformed(
                    &id,
                    format!("directories nested more than {MAX_TREE_DEPTH} deep"),
                ))
            } else if self.index.contains(&id) {
                match self.repo.read_tree(self.index, &id).await {
                    Ok(p) => todo.check_range(&p).map(|()| p),
                    Err(e) => Err(e),
                }
            } else {
                Err(Error::NotFound {
                    what: format!("tree blob {id} in the index"),
                    missing: crate::error::Missing::Object,
                })
            };
            let dir = todo.dir;
            if let Ok(p) = &page {
                for (i, r) in p.pages.iter().enumerate() {
                    let upper = match p.pages.get(i + 1) {
                        Some(next) => Some(next.first.0.clone()),
                        None => todo.upper.clone(),
                    };
                    self.push(Todo {
                        dir: dir.clone(),
                        id: r.id,
                        depth,
                        lower: Some(r.first.0.clone()),
                        upper,
                    });
                }
                for n in p.nodes.iter().rev() {
                    if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
                        self.add_at(dir.join(OsStr::from_bytes(&n.name.0)), sub, depth + 1);
                    }
                }
            }
            return Some(Page { dir, id, page });
        }
    }
}
