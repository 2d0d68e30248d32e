//! Decryptor, decompressor, verifier and writer: opens each fetched blob,
//! checks it against its id, and writes it at every offset that needs it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use coffer_repo_format::blob::BlobType;
use coffer_repo_format::chunker::is_zero;
use coffer_repo_format::PackId;

use super::batch::{FileEntry, Read};
use super::Shared;
use crate::storage::StoreError;

/// Holes are kept at this granularity: an all-zero block of a blob is not written.
const BLOCK: u64 = 4096;

pub(crate) fn write_read(
    shared: &Shared,
    files: &[FileEntry],
    pack: PackId,
    read: Read,
    fetched: Result<Bytes, StoreError>,
) {
    let bytes = match fetched {
        Ok(b) => b,
        Err(e) => {
            for b in &read.blobs {
                for (f, _) in &b.targets {
                    shared.fail(
                        &files[*f as usize].path,
                        Some(b.id),
                        format!("cannot read blob {} from pack {pack}: {e}", b.id),
                    );
                }
            }
            return;
        }
    };
    let mut open: HashMap<u32, File> = HashMap::new();
    // This thread's buffers, reused for every blob it opens.
    let (mut bufs, mut plain) = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    for b in read.blobs {
        let s = (u64::from(b.offset) - read.start) as usize;
        let stored = &bytes[s..s + b.stored_len as usize];
        let opened = shared.repo.open_blob_into(
            BlobType::Data,
            &b.id,
            b.raw_len,
            stored,
            &mut bufs,
            &mut plain,
        );
        match opened {
            Ok(()) => {}
            Err(e) => {
                for (f, _) in &b.targets {
                    shared.fail(
                        &files[*f as usize].path,
                        Some(b.id),
                        format!("blob {} in pack {pack} is damaged: {e}", b.id),
                    );
                }
                continue;
            }
        };
        for (f, offset) in b.targets {
            let path = &files[f as usize].path;
            let file = match open.entry(f) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    match open_target(shared, &files[f as usize]) {
                        Ok(file) => v.insert(file),
                        Err(e) => {
                            shared.fail(path, None, format!("cannot open for writing: {e}"));
                            continue;
                        }
                    }
                }
            };
            let written = if shared.dense {
                file.write_all_at(&plain, offset)
                    .map(|()| plain.len() as u64)
            } else {
                write_sparse(file, offset, &plain)
            };
            match written {
                Ok(n) => shared.add_written(n),
                Err(e) => shared.fail(path, None, format!("cannot write: {e}")),
            }
        }
    }
    BUFFERS.with(|b| *b.borrow_mut() = (bufs, plain));
}

thread_local! {
    /// Decryption and decompression buffers of a blocking thread.
    static BUFFERS: std::cell::RefCell<(coffer_repo_format::blob::OpenBuffers, Vec<u8>)> = std::cell::RefCell::new(Default::default());
}

/// Opens a target for writing: a file the plan created, beneath the target
/// directory (the very file: never through a symlink, never another inode),
/// or the block device the caller named.
fn open_target(shared: &Shared, entry: &FileEntry) -> std::io::Result<File> {
    match &shared.target {
        Some(target) => target.open_write(&entry.path, entry.inode),
        None => std::fs::OpenOptions::new().write(true).open(&entry.path),
    }
}

/// Writes `data` at `offset`, skipping the all-zero blocks (aligned to the
/// file's block grid) so that the file's holes stay holes. Returns bytes written.
pub(crate) fn write_sparse(file: &File, offset: u64, data: &[u8]) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut pos = 0usize;
    let block_end = |pos: usize| {
        let abs = offset + pos as u64;
        let next = (abs / BLOCK + 1) * BLOCK;
        data.len().min((next - offset) as usize)
    };
    while pos < data.len() {
        let end = block_end(pos);
        if is_zero(&data[pos..end]) {
            pos = end;
            continue;
        }
        let run_start = pos;
        pos = end;
        while pos < data.len() {
            let end = block_end(pos);
            if is_zero(&data[pos..end]) {
                break;
            }
            pos = end;
        }
        file.write_all_at(&data[run_start..pos], offset + run_start as u64)?;
        written += (pos - run_start) as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_writes_skip_zero_blocks_and_keep_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = File::create(&path).unwrap();
        f.set_len(100_000).unwrap();
        let mut data = vec![0u8; 50_000];
        data[10] = 1;
        data[49_999] = 2;
        let n = write_sparse(&f, 1000, &data).unwrap();
        assert!(n < 10_000, "wrote {n}");
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[1000..51_000], &data[..]);
        assert!(back[..1000].iter().all(|b| *b == 0));
    }
}
