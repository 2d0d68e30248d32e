//! Chunker stage: a file worker reads one file at a time in large reads and cuts
//! it into content-defined chunks; all-zero chunks become holes, the others go
//! to the hasher and dedup ([`super::dedup`]).

use std::io::Read;
use std::path::Path;

use coffer_repo_format::blob::{BlobSealer, BlobType};
use coffer_repo_format::chunker::is_zero;
use coffer_repo_format::tree::{ContentRef, Node};

use super::source::{FileJob, FileOutcome};
use super::{Ctx, SourceError};
use crate::error::Error;

/// Bytes read per `read` call.
const READ_SIZE: usize = 8 * 1024 * 1024;

/// One file worker: runs until the job queue closes.
pub(crate) fn run_worker(
    ctx: &Ctx,
    jobs: crossbeam_channel::Receiver<FileJob>,
) -> crate::Result<()> {
    let mut sealer = BlobSealer::new(ctx.repo.key(), ctx.compression)
        .map_err(|e| Error::corrupt("blob sealer", e))?;
    let mut buf = Vec::new();
    for job in jobs {
        if ctx.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let outcome: FileOutcome =
            match back_up_file(ctx, &mut sealer, &mut buf, &job.path, job.node) {
                Ok(node) => Ok(node),
                Err(FileError::Source(e)) => Err(e),
                Err(FileError::Fatal(e)) => {
                    // The tree builder sees the closed reply channel; the error is the pipeline's.
                    return Err(e);
                }
            };
        let _ = job.reply.send(outcome);
    }
    Ok(())
}

pub(crate) enum FileError {
    /// The file could not be read: report it and go on.
    Source(SourceError),
    /// The backup cannot go on (repository side).
    Fatal(Error),
}

fn open_for_backup(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let noatime = nix::fcntl::OFlag::O_NOATIME.bits();
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(noatime)
        .open(path)
    {
        Ok(f) => Ok(f),
        // O_NOATIME is refused on files the process does not own.
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => std::fs::File::open(path),
        Err(e) => Err(e),
    }
}

fn back_up_file(
    ctx: &Ctx,
    sealer: &mut BlobSealer,
    buf: &mut Vec<u8>,
    path: &Path,
    mut node: Node,
) -> Result<Node, FileError> {
    let source_err = |e: std::io::Error| {
        FileError::Source(SourceError {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    };
    let mut file = open_for_backup(path).map_err(source_err)?;
    let max = ctx.chunker.params().max_size as usize;
    let mut content: Vec<ContentRef> = Vec::new();
    let mut total: u64 = 0;
    let mut eof = false;
    buf.clear();
    let mut start = 0usize;
    loop {
        if !eof && buf.len() - start < max {
            buf.drain(..start);
            start = 0;
            let want = buf.len() + READ_SIZE.max(2 * max);
            while !eof && buf.len() < want {
                let old = buf.len();
                buf.resize(want, 0);
                match file.read(&mut buf[old..]) {
                    Ok(0) => {
                        buf.truncate(old);
                        eof = true;
                    }
                    Ok(n) => buf.truncate(old + n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(old),
                    Err(e) => return Err(source_err(e)),
                }
            }
        }
        if start == buf.len() {
            break;
        }
        if ctx.cancel.is_cancelled() {
            return Err(FileError::Fatal(Error::Cancelled));
        }
        let len = ctx.chunker.cut(&buf[start..]);
        let chunk = &buf[start..start + len];
        start += len;
        total += len as u64;
        if is_zero(chunk) {
            match content.last_mut() {
                Some(ContentRef { id: None, len: run }) => *run += len as u64,
                _ => content.push(ContentRef {
                    id: None,
                    len: len as u64,
                }),
            }
            continue;
        }
        let id = ctx
            .dedup_and_store(sealer, BlobType::Data, chunk)
            .map_err(FileError::Fatal)?;
        content.push(ContentRef {
            id: Some(id),
            len: len as u64,
        });
        ctx.stats.add_bytes(len as u64);
    }
    // The file may have changed size since it was listed: record what was read.
    node.size = total;
    node.content = content;
    Ok(node)
}
