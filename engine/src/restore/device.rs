//! Restore onto a block device: the one file of a device (or image) backup,
//! written at its offsets. A device is not known to be zeroed, so zero runs
//! and zero blocks are written too, unless the caller says it is zeroed.

use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::Arc;

use coffer_repo_format::tree::{Node, NodeKind};

use super::fetcher::Fetch;
use super::plan::{Planner, Start};
use super::{RestoreOptions, Shared};
use crate::error::{Conflict, Error, Result};
use crate::progress::Reporter;
use crate::trees::DirReader;

/// Whether `target` is a block device (following a `/dev/disk/by-id/...` link).
pub(crate) fn is_device(target: &Path) -> bool {
    std::fs::metadata(target)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// The single file to write: the start itself, or the only file of a
/// snapshot root (a backup of one device).
async fn the_file(shared: &Shared, start: &Start) -> Result<Node> {
    let dir = match start {
        Start::Single(n) if n.kind == NodeKind::File => return Ok(n.clone()),
        Start::Dir { node, .. } => node,
        _ => return Err(not_one_file()),
    };
    let Some(tree) = dir.subtree else {
        return Err(not_one_file());
    };
    let mut r = DirReader::open(&shared.repo, &shared.index, &tree).await?;
    match (r.next().await?, r.next().await?) {
        (Some(n), None) if n.kind == NodeKind::File => Ok(n),
        _ => Err(not_one_file()),
    }
}

fn not_one_file() -> Error {
    Error::InvalidArgument(
        "a block device target takes one file: give SNAPSHOT:PATH of a file (for a device backup, e.g. latest:vdb)"
            .into(),
    )
}

pub(crate) async fn restore(
    shared: Arc<Shared>,
    start: &Start,
    opts: &RestoreOptions,
    progress: &Arc<Reporter>,
) -> Result<u64> {
    let target = &opts.target;
    if !opts.overwrite_device {
        return Err(Error::TargetExists {
            path: target.clone(),
            conflict: Conflict::BlockDevice,
        });
    }
    let node = the_file(&shared, start).await?;
    let size = super::super::backup::device_size(target).map_err(|e| Error::io(target, e))?;
    if size < node.size {
        return Err(Error::InvalidArgument(format!(
            "{} has {size} bytes, the file needs {}",
            target.display(),
            node.size
        )));
    }
    // Holes are written as zeros too unless the device reads as zeros.
    let holes: u64 = if opts.device_zeroed {
        0
    } else {
        node.content
            .iter()
            .filter(|c| c.id.is_none())
            .map(|c| c.len)
            .sum()
    };
    let (s, p, t) = (shared.clone(), progress.clone(), target.clone());
    let (handle, concurrency, limit) = (
        tokio::runtime::Handle::current(),
        opts.concurrency,
        opts.plan_limit,
    );
    let node = tokio::task::spawn_blocking(move || {
        let mut fetch = Fetch::new(s.clone(), handle, p, concurrency, holes);
        let mut planner = Planner::new(&s, &mut fetch, true, limit);
        planner.plan_content(&t, None, &node)?;
        planner.finish()?;
        fetch.finish();
        Ok::<_, Error>(node)
    })
    .await??;
    let dev = std::fs::OpenOptions::new()
        .write(true)
        .open(target)
        .map_err(|e| Error::io(target, e))?;
    if !opts.device_zeroed {
        let zeros = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        for c in &node.content {
            if c.id.is_none() {
                let mut done = 0u64;
                while done < c.len {
                    let n = (c.len - done).min(zeros.len() as u64) as usize;
                    dev.write_all_at(&zeros[..n], offset + done)
                        .map_err(|e| Error::io(target, e))?;
                    done += n as u64;
                    progress.add(n as u64, 0);
                }
                shared.add_written(c.len);
            }
            offset += c.len;
        }
    }
    dev.sync_all().map_err(|e| Error::io(target, e))?;
    Ok(node.size)
}
