//! Tree builder: turns the walk's events, in order, into tree pages.
//!
//! Each open directory has a [`PageWriter`]. Nodes fill a leaf page; a full leaf
//! is stored and referenced from the level above; a full level of references is
//! stored as an index page, and so on. Memory per directory is one page per
//! level, whatever the directory's size.

use coffer_repo_format::blob::BlobType;
use coffer_repo_format::tree::{
    Node, NodeKind, PageRef, TreePage, PAGE_MAX_NODES, PAGE_TARGET_BYTES,
};
use coffer_repo_format::BlobId;

use super::dedup::BlobWriter;
use super::source::{Event, Pending};
use super::{Monitor, Sink};
use crate::error::{Error, Result};

/// Builds the pages of one directory.
#[derive(Default)]
pub(crate) struct PageWriter {
    leaf: Vec<Node>,
    leaf_bytes: usize,
    leaf_first: Option<Vec<u8>>,
    levels: Vec<Vec<PageRef>>,
}

/// Stores one tree page and returns its id.
pub(crate) trait PageStore {
    fn store(&mut self, page: &TreePage) -> Result<BlobId>;
}

fn estimate(n: &Node) -> usize {
    120 + n.name.0.len()
        + n.target.as_ref().map_or(0, |t| t.0.len())
        + n.xattrs
            .iter()
            .map(|x| x.name.0.len() + x.value.0.len() + 8)
            .sum::<usize>()
        + n.content.len() * 40
        + n.user.as_ref().map_or(0, String::len)
        + n.group.as_ref().map_or(0, String::len)
}

impl PageWriter {
    /// Adds the next node; names must arrive in strictly increasing order.
    pub(crate) fn push(&mut self, node: Node, store: &mut impl PageStore) -> Result<()> {
        let size = estimate(&node);
        if !self.leaf.is_empty()
            && (self.leaf.len() >= PAGE_MAX_NODES || self.leaf_bytes + size > PAGE_TARGET_BYTES)
        {
            self.flush_leaf(store)?;
        }
        if self.leaf.is_empty() {
            self.leaf_first = Some(node.name.0.clone());
        }
        self.leaf_bytes += size;
        self.leaf.push(node);
        Ok(())
    }

    fn flush_leaf(&mut self, store: &mut impl PageStore) -> Result<()> {
        let nodes = std::mem::take(&mut self.leaf);
        let count = nodes.len() as u64;
        let id = store.store(&TreePage::leaf(nodes))?;
        self.leaf_bytes = 0;
        let first = self.leaf_first.take().unwrap_or_default();
        self.push_ref(
            0,
            PageRef {
                first: first.into(),
                id,
                count,
            },
            store,
        )
    }

    fn push_ref(&mut self, level: usize, r: PageRef, store: &mut impl PageStore) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.push(Vec::new());
        }
        self.levels[level].push(r);
        if self.levels[level].len() >= PAGE_MAX_NODES {
            self.flush_level(level, store)?;
        }
        Ok(())
    }

    fn flush_level(&mut self, level: usize, store: &mut impl PageStore) -> Result<()> {
        let refs = std::mem::take(&mut self.levels[level]);
        let Some(first) = refs.first().map(|r| r.first.clone()) else {
            return Ok(());
        };
        let count = refs.iter().map(|r| r.count).sum();
        let id = store.store(&TreePage::index(refs))?;
        self.push_ref(level + 1, PageRef { first, id, count }, store)
    }

    /// Stores what is left and returns the id of the directory's root page.
    pub(crate) fn finish(mut self, store: &mut impl PageStore) -> Result<BlobId> {
        if self.levels.is_empty() {
            return store.store(&TreePage::leaf(std::mem::take(&mut self.leaf)));
        }
        if !self.leaf.is_empty() {
            self.flush_leaf(store)?;
        }
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            if top && self.levels[level].len() == 1 {
                return Ok(self.levels[level][0].id);
            }
            if !self.levels[level].is_empty() {
                self.flush_level(level, store)?;
            }
            level += 1;
        }
    }
}

/// Stores tree pages as a backup session's blobs.
pub(crate) struct SessionStore<'a> {
    sink: &'a Sink,
    sealer: BlobWriter,
}

impl<'a> SessionStore<'a> {
    /// A store with its own sealer.
    pub(crate) fn new(sink: &'a Sink) -> Result<Self> {
        Ok(SessionStore {
            sink,
            sealer: BlobWriter::new(sink)?,
        })
    }
}

impl PageStore for SessionStore<'_> {
    fn store(&mut self, page: &TreePage) -> Result<BlobId> {
        let bytes = page
            .encode()
            .map_err(|e| Error::corrupt("new tree page", e))?;
        self.sink
            .dedup_and_store(&mut self.sealer, BlobType::Tree, &bytes)
    }
}

/// New, changed or unmodified, compared with the parent snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    New,
    Changed,
    Unmodified,
}

fn dir_status(tree: BlobId, parent: Option<BlobId>) -> Status {
    match parent {
        None => Status::New,
        Some(p) if p == tree => Status::Unmodified,
        Some(_) => Status::Changed,
    }
}

/// A non-directory is unmodified when its content and its metadata (other
/// than access and change times) equal the parent's.
fn classify(node: &Node, parent: Option<&Node>) -> Status {
    let Some(p) = parent else { return Status::New };
    let same = p.kind == node.kind
        && p.size == node.size
        && p.mode == node.mode
        && p.uid == node.uid
        && p.gid == node.gid
        && p.mtime == node.mtime
        && p.target == node.target
        && p.rdev == node.rdev
        && p.xattrs == node.xattrs
        && p.content == node.content;
    if same {
        Status::Unmodified
    } else {
        Status::Changed
    }
}

/// Writes a root directory that holds `nodes` (sorted by name) and returns it.
pub(crate) fn build_root(
    sink: &Sink,
    monitor: &Monitor,
    mut root: Node,
    mut nodes: Vec<Node>,
) -> Result<Node> {
    let mut store = SessionStore::new(sink)?;
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut writer = PageWriter::default();
    for n in nodes {
        writer.push(n, &mut store)?;
    }
    let tree = writer.finish(&mut store)?;
    root.subtree = Some(tree);
    monitor.stats.dir_done(Status::New);
    Ok(root)
}

/// Consumes the walk and returns the root node with its subtree set.
pub(crate) fn build(
    sink: &Sink,
    monitor: &Monitor,
    parent_root: Option<BlobId>,
    root: Node,
    events: crossbeam_channel::Receiver<Vec<Event>>,
) -> Result<Node> {
    let mut store = SessionStore::new(sink)?;
    let mut stack: Vec<(Node, PageWriter)> = vec![(root, PageWriter::default())];
    let mut parent_trees: Vec<Option<BlobId>> = vec![parent_root];
    for ev in events.into_iter().flatten() {
        match ev {
            Event::Enter(node, parent_tree) => {
                stack.push((*node, PageWriter::default()));
                parent_trees.push(parent_tree);
            }
            Event::Entry(pending, parent) => {
                let node = match pending {
                    Pending::Ready(n) => *n,
                    Pending::File(path, rx) => match rx.recv() {
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => {
                            monitor.source_error(e);
                            continue;
                        }
                        // The worker stopped; the pipeline reports why.
                        Err(_) => {
                            tracing::debug!("worker stopped before {}", path.display());
                            return Err(Error::Cancelled);
                        }
                    },
                };
                monitor
                    .stats
                    .file_done(&node, classify(&node, parent.as_deref()));
                monitor.report_progress(false);
                let Some((_, writer)) = stack.last_mut() else {
                    return Err(Error::InvalidArgument(
                        "walk produced an entry outside any directory".into(),
                    ));
                };
                writer.push(node, &mut store)?;
            }
            Event::Leave => {
                let (Some((mut node, writer)), Some(parent_tree)) =
                    (stack.pop(), parent_trees.pop())
                else {
                    return Err(Error::InvalidArgument(
                        "walk left more directories than it entered".into(),
                    ));
                };
                let tree = writer.finish(&mut store)?;
                node.subtree = Some(tree);
                monitor.stats.dir_done(dir_status(tree, parent_tree));
                let Some((_, parent)) = stack.last_mut() else {
                    return Err(Error::InvalidArgument(
                        "walk left the root directory".into(),
                    ));
                };
                parent.push(node, &mut store)?;
            }
        }
    }
    let (Some((mut root, writer)), true) = (stack.pop(), stack.is_empty()) else {
        // The walk stopped early (cancelled or failed).
        return Err(Error::Cancelled);
    };
    let tree = writer.finish(&mut store)?;
    root.subtree = Some(tree);
    monitor.stats.dir_done(dir_status(tree, parent_root));
    debug_assert_eq!(root.kind, NodeKind::Dir);
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct MemStore(HashMap<BlobId, TreePage>);

    impl PageStore for MemStore {
        fn store(&mut self, page: &TreePage) -> Result<BlobId> {
            let bytes = page.encode().map_err(|e| Error::corrupt("page", e))?;
            let id = BlobId(*blake3::hash(&bytes).as_bytes());
            let decoded = TreePage::decode(&bytes).map_err(|e| Error::corrupt("page", e))?;
            self.0.insert(id, decoded);
            Ok(id)
        }
    }

    fn names(store: &MemStore, id: &BlobId, out: &mut Vec<String>) {
        let page = &store.0[id];
        for n in &page.nodes {
            out.push(n.name.to_string_lossy());
        }
        for r in &page.pages {
            names(store, &r.id, out);
        }
    }

    #[test]
    fn large_directories_page_and_read_back_in_order() {
        for n in [
            0usize,
            1,
            PAGE_MAX_NODES,
            PAGE_MAX_NODES + 1,
            3 * PAGE_MAX_NODES + 17,
        ] {
            let mut store = MemStore::default();
            let mut w = PageWriter::default();
            let expect: Vec<String> = (0..n).map(|i| format!("f{i:08}")).collect();
            for name in &expect {
                let mut node = Node::new(name.as_str(), NodeKind::Fifo);
                node.mode = 0o644;
                w.push(node, &mut store).unwrap();
            }
            let root = w.finish(&mut store).unwrap();
            let mut got = Vec::new();
            names(&store, &root, &mut got);
            assert_eq!(got, expect, "n = {n}");
            let pages = store.0.len();
            assert_eq!(
                pages,
                if n <= PAGE_MAX_NODES {
                    1
                } else {
                    n.div_ceil(PAGE_MAX_NODES) + 1
                },
                "n = {n}"
            );
        }
    }
}
