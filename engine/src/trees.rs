//! Reading directory listings: a directory is one tree page or a B-tree of pages.

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
