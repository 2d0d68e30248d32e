//! Metadata: after all content is written, set owners, attributes, modes and
//! times; every directory after its children. Damaged files are removed.

use std::path::{Path, PathBuf};

use coffer_repo_format::tree::{Node, NodeKind};

use super::plan::{child_path, start_path, Filter, Start};
use super::{RestoreOptions, Shared};
use crate::error::{Error, Result};
use crate::fsmeta;
use crate::repository::is_damage;
use crate::trees::DirReader;

fn apply(shared: &Shared, path: &Path, node: &Node) {
    if node.kind != NodeKind::Dir && shared.is_damaged(path, node) {
        if let Err(e) = std::fs::remove_file(path) {
            shared.warn(format!(
                "{}: cannot remove damaged file: {e}",
                path.display()
            ));
        }
        return;
    }
    if matches!(node.kind, NodeKind::Chardev | NodeKind::Blockdev) && !shared.as_root {
        return;
    }
    for problem in fsmeta::apply(path, node, shared.as_root) {
        shared.warn(format!("{}: {problem}", path.display()));
    }
}

pub(crate) fn apply_all(
    shared: &Shared,
    rt: &tokio::runtime::Handle,
    start: &Start,
    opts: &RestoreOptions,
) -> Result<()> {
    let (root, synthetic) = match start {
        Start::Single(node) => {
            let path = child_path(&opts.target, node);
            apply(shared, &path, node);
            return Ok(());
        }
        Start::Dir { node, synthetic } => (node, *synthetic),
    };
    let repo = &*shared.repo;
    let index = &*shared.index;
    let filter = Filter::new(opts)?;
    let Some(sub) = root.subtree else {
        return Ok(());
    };
    let mut stack: Vec<(PathBuf, PathBuf, Node, DirReader<'_>)> = vec![(
        opts.target.clone(),
        start_path(opts),
        root.clone(),
        rt.block_on(DirReader::open(repo, index, &sub))?,
    )];
    while let Some((dir, snap_dir, _, reader)) = stack.last_mut() {
        if shared.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        // Trees that cannot be read were reported by the plan; skip them here.
        let next = match rt.block_on(reader.next()) {
            Err(e) if is_damage(&e) => None,
            other => other?,
        };
        match next {
            Some(node) => {
                let path = child_path(dir, &node);
                let snap = child_path(snap_dir, &node);
                let is_dir = node.kind == NodeKind::Dir;
                if filter.excluded(&snap, is_dir) || (!is_dir && !filter.included(&snap, false)) {
                    continue;
                }
                match (node.kind, node.subtree) {
                    (NodeKind::Dir, Some(sub)) => {
                        match rt.block_on(DirReader::open(repo, index, &sub)) {
                            Ok(reader) => stack.push((path, snap, node, reader)),
                            Err(e) if is_damage(&e) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    _ => apply(shared, &path, &node),
                }
            }
            None => {
                let Some((path, _, node, _)) = stack.pop() else {
                    break;
                };
                // The target itself gets the root's metadata, unless the root
                // is synthetic; a directory nothing was restored into was not made.
                let made = std::fs::symlink_metadata(&path)
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                if made && (!stack.is_empty() || !synthetic) {
                    apply(shared, &path, &node);
                }
            }
        }
    }
    Ok(())
}
