//! Metadata: after all content is written, set owners, attributes, modes and
//! times; every directory after its children. Damaged files are removed.

use std::path::{Path, PathBuf};

use coffer_repo_format::tree::{Node, NodeKind};

use super::plan::{child_path, start_path, Filter, Start};
use super::target::Target;
use super::{RestoreOptions, Shared};
use crate::error::{Error, Result};
use crate::repository::is_damage;
use crate::trees::{Step, Walk};

fn apply(shared: &Shared, target: &Target, path: &Path, node: &Node) {
    if node.kind != NodeKind::Dir && shared.is_damaged(path, node) {
        if let Err(e) = target.remove(path) {
            shared.warn(format!(
                "{}: cannot remove damaged file: {e}",
                path.display()
            ));
        }
        return;
    }
    if matches!(node.kind, NodeKind::Chardev | NodeKind::Blockdev) && !shared.devices {
        return;
    }
    for problem in target.apply_metadata(path, node, shared.as_root, shared.setid) {
        shared.warn(format!("{}: {problem}", path.display()));
    }
}

pub(crate) fn apply_all(
    shared: &Shared,
    rt: &tokio::runtime::Handle,
    start: &Start,
    opts: &RestoreOptions,
) -> Result<()> {
    let Some(target) = shared.target.as_ref() else {
        return Ok(());
    };
    let (root, synthetic) = match start {
        Start::Single(node) => {
            let path = child_path(&opts.target, node);
            apply(shared, target, &path, node);
            return Ok(());
        }
        Start::Dir { node, synthetic } => (node, *synthetic),
    };
    let repo = &*shared.repo;
    let index = &*shared.index;
    let filter = Filter::new(opts)?;
    if root.subtree.is_none() {
        return Ok(());
    }
    // The directories the walk is in, by target path; a directory's
    // metadata goes on after its entries', so that its times stay.
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut walk = Walk::new(repo, index, start_path(opts), root.clone()).keep_going();
    while let Some(step) = rt.block_on(walk.next())? {
        if shared.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let e = match step {
            Step::Enter(_) if dirs.is_empty() => {
                dirs.push(opts.target.clone());
                continue;
            }
            Step::Enter(e) | Step::Leaf(e) => e,
            Step::Leave(e, _) => {
                let Some(path) = dirs.pop() else { break };
                // The target itself gets the root's metadata, unless the root
                // is synthetic; a directory nothing was restored into was not made.
                let made = target
                    .lstat(&path)
                    .ok()
                    .flatten()
                    .is_some_and(|f| f.is_dir());
                if made && (!dirs.is_empty() || !synthetic) {
                    apply(shared, target, &path, &e.node);
                }
                continue;
            }
            // Trees that cannot be read were reported by the plan.
            Step::Unreadable { error, .. } if is_damage(&error) => continue,
            Step::Unreadable { error, .. } => return Err(error),
        };
        let Some(dir) = dirs.last() else { continue };
        let path = child_path(dir, &e.node);
        let is_dir = e.node.kind == NodeKind::Dir;
        if filter.excluded(&e.path, is_dir) || (!is_dir && !filter.included(&e.path, false)) {
            walk.skip();
            continue;
        }
        if is_dir {
            dirs.push(path);
        } else {
            apply(shared, target, &path, &e.node);
        }
    }
    Ok(())
}
