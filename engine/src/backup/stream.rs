//! Stream sources: standard input or a command's output, stored as one file
//! in a snapshot. The snapshot is written only if the stream ends well: for a
//! command, only if it exits with status 0, so that a failing `mysqldump` never
//! produces a backup that looks good.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use coffer_repo_format::tree::{check_name, Node, NodeKind};

use super::file_worker::{FileError, Worker};
use super::{snapshot, tree_builder, BackupOptions, BackupSummary, Job};
use crate::error::{Error, Result};
use crate::repository::Repository;

/// Called when the stream has ended; an `Err` (why) means no snapshot.
pub type FinishFn = Box<dyn FnOnce() -> std::result::Result<(), String> + Send>;

/// A stream to back up as one file.
pub struct StreamSource {
    /// The file's name in the snapshot.
    pub name: String,
    /// Where the bytes come from.
    pub reader: Box<dyn Read + Send>,
    /// Checks, after the last byte, that the stream is complete (for a
    /// command: that it exited with status 0).
    pub finish: FinishFn,
}

/// Backs up one stream as the file `src.name` of a new snapshot.
pub async fn backup_stream(
    repo: Arc<Repository>,
    src: StreamSource,
    opts: BackupOptions,
) -> Result<BackupSummary> {
    check_name(src.name.as_bytes()).map_err(|_| {
        Error::InvalidArgument(format!(
            "{:?} is not a file name (no '/', not empty)",
            src.name
        ))
    })?;
    super::stop_on_drop(opts.cancel.clone(), stream_task(repo, src, opts)).await
}

async fn stream_task(
    repo: Arc<Repository>,
    src: StreamSource,
    opts: BackupOptions,
) -> Result<BackupSummary> {
    let paths = vec![PathBuf::from("/").join(&src.name)];
    let session = Job::start(repo, &opts, paths).await?;
    session
        .run(&opts, move |ctx| {
            let now = snapshot::timestamp_now();
            let mut node = Node::new(src.name.as_str(), NodeKind::File);
            node.mode = 0o644;
            node.uid = nix::unistd::getuid().as_raw();
            node.gid = nix::unistd::getgid().as_raw();
            (node.mtime, node.atime, node.ctime) = (now, now, now);
            let mut reader = src.reader;
            let name = PathBuf::from(&src.name);
            let node = match Worker::new(&ctx.read, &ctx.sink, &ctx.monitor).back_up_reader(
                &name,
                &mut *reader,
                node,
            ) {
                Ok(n) => n,
                Err(FileError::Fatal(e)) => return Err(e),
                Err(FileError::Source(e)) => {
                    return Err(Error::StreamFailed {
                        name: src.name,
                        reason: format!("reading failed: {}", e.message),
                    });
                }
            };
            drop(reader);
            (src.finish)().map_err(|reason| Error::StreamFailed {
                name: src.name.clone(),
                reason,
            })?;
            ctx.monitor
                .stats
                .file_done(&node, tree_builder::Status::New);
            let root =
                super::source::root_node(&super::source::SourcePlan::Synthetic(Vec::new()), now)?;
            tree_builder::build_root(&ctx.sink, &ctx.monitor, root, vec![node])
        })
        .await
}
