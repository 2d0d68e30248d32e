//! Diff two snapshots, find paths in snapshots, change tags.

use std::cmp::Ordering;
use std::path::Path;

use coffer_repo_format::snapshot::Snapshot;
use coffer_repo_format::tree::{Node, NodeKind};
use coffer_repo_format::SnapshotId;

use crate::error::Result;
use crate::index::Index;
use crate::repository::Repository;
use crate::select::Patterns;
use crate::trees::{Entry, Step, Walk};

/// How a path differs between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in the second.
    Added,
    /// Only in the first.
    Removed,
    /// Content differs.
    Modified,
    /// Same content, metadata differs (mode, owner, times, attributes).
    Metadata,
    /// A different type (a file became a directory, ...).
    Type,
}

impl Change {
    /// The one-letter mark (`+`, `-`, `M`, `U`, `T`).
    pub fn mark(&self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::Metadata => 'U',
            Change::Type => 'T',
        }
    }
}

/// One difference.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Difference {
    /// The path, as `coffer ls` shows it.
    pub path: String,
    /// What changed.
    pub change: Change,
}

fn compare(a: &Node, b: &Node) -> Option<Change> {
    if a.kind != b.kind {
        return Some(Change::Type);
    }
    let content = match a.kind {
        NodeKind::File => a.content != b.content,
        NodeKind::Symlink => a.target != b.target,
        NodeKind::Chardev | NodeKind::Blockdev => a.rdev != b.rdev,
        _ => false,
    };
    if content {
        return Some(Change::Modified);
    }
    let meta = a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.mtime != b.mtime
        || a.xattrs != b.xattrs;
    meta.then_some(Change::Metadata)
}

/// The next node of a walk, directories on entry; `None` at the end.
async fn next_node(w: &mut Walk<'_>) -> Result<Option<Entry>> {
    while let Some(step) = w.next().await? {
        if let Step::Enter(e) | Step::Leaf(e) = step {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// Lists every path that differs between snapshots `a` and `b`, in name
/// order. Directories with identical listings are not entered.
///
/// Both trees are walked at once. A depth-first walk in name order meets
/// paths in component order, so the two walks merge like sorted lists: a
/// path only in `a` was removed, a path only in `b` added.
pub async fn diff(
    repo: &Repository,
    index: &Index,
    a: &Snapshot,
    b: &Snapshot,
) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    let mut wa = Walk::new(repo, index, "/".into(), a.root.clone());
    let mut wb = Walk::new(repo, index, "/".into(), b.root.clone());
    let (mut na, mut nb) = (next_node(&mut wa).await?, next_node(&mut wb).await?);
    loop {
        let order = match (&na, &nb) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.path.cmp(&y.path),
        };
        match order {
            Ordering::Less => {
                if let Some(x) = na.take() {
                    out.push(Difference::at(&x.path, Change::Removed));
                }
                na = next_node(&mut wa).await?;
            }
            Ordering::Greater => {
                if let Some(y) = nb.take() {
                    out.push(Difference::at(&y.path, Change::Added));
                }
                nb = next_node(&mut wb).await?;
            }
            Ordering::Equal => {
                if let (Some(x), Some(y)) = (na.take(), nb.take()) {
                    // The roots themselves are not compared.
                    if wa.depth() > 0 {
                        if let Some(c) = compare(&x.node, &y.node) {
                            out.push(Difference::at(&x.path, c));
                        }
                    }
                    // Two directories with the same listing: nothing below differs.
                    let dirs = x.node.kind == NodeKind::Dir && y.node.kind == NodeKind::Dir;
                    if dirs && x.node.subtree == y.node.subtree {
                        wa.skip();
                        wb.skip();
                    }
                }
                na = next_node(&mut wa).await?;
                nb = next_node(&mut wb).await?;
            }
        }
    }
    Ok(out)
}

impl Difference {
    fn at(path: &Path, change: Change) -> Self {
        Difference {
            path: path.display().to_string(),
            change,
        }
    }
}

/// Paths matching `pattern` (backup's pattern language: a name anywhere, or
/// an anchored path) in one snapshot.
pub async fn find(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    pattern: &Patterns,
) -> Result<Vec<(String, Node)>> {
    let mut out = Vec::new();
    let mut walk = Walk::new(repo, index, "/".into(), snapshot.root.clone());
    while let Some(e) = next_node(&mut walk).await? {
        let is_dir = e.node.kind == NodeKind::Dir;
        if walk.depth() > 0 && pattern.matches(&e.path, is_dir) {
            out.push((e.path.display().to_string(), e.node));
        }
    }
    Ok(out)
}

/// Rewrites a snapshot with new tags: the new snapshot is written first, then
/// the old one deleted. Returns the new id (the old one if nothing changed).
pub async fn retag(
    repo: &Repository,
    id: &SnapshotId,
    snapshot: &Snapshot,
    add: &[String],
    remove: &[String],
    set: Option<&[String]>,
) -> Result<SnapshotId> {
    let mut s = snapshot.clone();
    if let Some(set) = set {
        s.tags = set.to_vec();
    }
    for t in add {
        if !s.tags.contains(t) {
            s.tags.push(t.clone());
        }
    }
    s.tags.retain(|t| !remove.contains(t));
    if s.tags == snapshot.tags {
        return Ok(*id);
    }
    let new = repo.write_snapshot(&s).await?;
    repo.delete_snapshot(id).await?;
    Ok(new)
}
