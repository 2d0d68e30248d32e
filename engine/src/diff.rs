//! Diff two snapshots, find paths in snapshots, change tags.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use coffer_repo_format::snapshot::Snapshot;
use coffer_repo_format::tree::{Node, NodeKind};
use coffer_repo_format::{BlobId, SnapshotId};

use crate::error::Result;
use crate::index::Index;
use crate::repository::Repository;
use crate::select::Patterns;
use crate::trees::DirReader;

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

async fn next_of(r: &mut Option<DirReader<'_>>) -> Result<Option<Node>> {
    match r {
        Some(r) => r.next().await,
        None => Ok(None),
    }
}

/// Lists every path that differs between snapshots `a` and `b`, in name
/// order. Directories with identical listings are not entered.
pub async fn diff(
    repo: &Repository,
    index: &Index,
    a: &Snapshot,
    b: &Snapshot,
) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    let mut stack: Vec<(String, Option<BlobId>, Option<BlobId>)> =
        vec![(String::new(), a.root.subtree, b.root.subtree)];
    while let Some((dir, ta, tb)) = stack.pop() {
        if ta == tb {
            continue;
        }
        let mut ra = match ta {
            Some(t) => Some(DirReader::open(repo, index, &t).await?),
            None => None,
        };
        let mut rb = match tb {
            Some(t) => Some(DirReader::open(repo, index, &t).await?),
            None => None,
        };
        let (mut na, mut nb) = (next_of(&mut ra).await?, next_of(&mut rb).await?);
        let mut subdirs = Vec::new();
        loop {
            let order = match (&na, &nb) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.name.cmp(&y.name),
            };
            let name = match order {
                std::cmp::Ordering::Greater => nb.as_ref(),
                _ => na.as_ref(),
            }
            .map(|n| n.name.to_string_lossy())
            .unwrap_or_default();
            let path = format!("{dir}/{name}");
            match order {
                std::cmp::Ordering::Less => {
                    if let Some(x) = na.take() {
                        out.push(Difference {
                            path: path.clone(),
                            change: Change::Removed,
                        });
                        if x.kind == NodeKind::Dir {
                            subdirs.push((path, x.subtree, None));
                        }
                    }
                    na = next_of(&mut ra).await?;
                }
                std::cmp::Ordering::Greater => {
                    if let Some(y) = nb.take() {
                        out.push(Difference {
                            path: path.clone(),
                            change: Change::Added,
                        });
                        if y.kind == NodeKind::Dir {
                            subdirs.push((path, None, y.subtree));
                        }
                    }
                    nb = next_of(&mut rb).await?;
                }
                std::cmp::Ordering::Equal => {
                    if let (Some(x), Some(y)) = (na.take(), nb.take()) {
                        if let Some(c) = compare(&x, &y) {
                            out.push(Difference {
                                path: path.clone(),
                                change: c,
                            });
                        }
                        match (x.kind, y.kind) {
                            (NodeKind::Dir, NodeKind::Dir) => {
                                subdirs.push((path, x.subtree, y.subtree))
                            }
                            (NodeKind::Dir, _) => subdirs.push((path, x.subtree, None)),
                            (_, NodeKind::Dir) => subdirs.push((path, None, y.subtree)),
                            _ => {}
                        }
                    }
                    na = next_of(&mut ra).await?;
                    nb = next_of(&mut rb).await?;
                }
            }
        }
        // Depth first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
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
    let Some(root) = snapshot.root.subtree else {
        return Ok(out);
    };
    let mut stack = vec![(PathBuf::from("/"), root)];
    while let Some((dir, tree)) = stack.pop() {
        let mut r = DirReader::open(repo, index, &tree).await?;
        let mut subdirs = Vec::new();
        while let Some(node) = r.next().await? {
            let path = dir.join(std::ffi::OsStr::from_bytes(&node.name.0));
            let is_dir = node.kind == NodeKind::Dir;
            if pattern.matches(&path, is_dir) {
                out.push((path.display().to_string(), node.clone()));
            }
            if let (true, Some(sub)) = (is_dir, node.subtree) {
                subdirs.push((path, sub));
            }
        }
        stack.extend(subdirs.into_iter().rev());
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
