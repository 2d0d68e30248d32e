//! What the restore's stages hand each other: the files being written, the
//! blobs that fill them, a pass's batch, and the ranged reads that cover a
//! pack's blobs. A leaf below `plan`, `fetcher` and `writer`.

use std::collections::HashMap;
use std::path::PathBuf;

use coffer_repo_format::{BlobId, PackId};

/// A regular file being restored.
pub(crate) struct FileEntry {
    pub(crate) path: PathBuf,
    /// Its inode, where the plan created it: the writer opens that file only.
    pub(crate) inode: Option<u64>,
}

/// One blob needed by the restore, and every place it goes.
pub(crate) struct BlobTargets {
    pub(crate) id: BlobId,
    pub(crate) offset: u32,
    pub(crate) stored_len: u32,
    pub(crate) raw_len: u32,
    pub(crate) targets: Vec<(u32, u64)>,
}

impl BlobTargets {
    /// Bytes of file content this blob fills: its length at each of its places.
    pub(crate) fn placed(&self) -> u64 {
        u64::from(self.raw_len) * self.targets.len() as u64
    }
}

/// What one pass of the fetcher reads and writes: at most
/// [`RestoreOptions::plan_limit`] blob places, grouped by pack.
pub(crate) struct Batch {
    pub(crate) files: Vec<FileEntry>,
    pub(crate) packs: HashMap<PackId, Vec<BlobTargets>>,
}

/// Two blobs are read together when the gap between them is at most this.
const MAX_GAP: u64 = 1024 * 1024;
/// One ranged read covers at most this many bytes.
const MAX_READ: u64 = 8 * 1024 * 1024;

/// A ranged read and the blobs in it.
pub(crate) struct Read {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) blobs: Vec<BlobTargets>,
}

/// Groups a pack's blobs, sorted by offset, into ranged reads.
pub(crate) fn coalesce(mut blobs: Vec<BlobTargets>) -> Vec<Read> {
    blobs.sort_by_key(|b| b.offset);
    let mut reads: Vec<Read> = Vec::new();
    for b in blobs {
        let (s, e) = (
            u64::from(b.offset),
            u64::from(b.offset) + u64::from(b.stored_len),
        );
        match reads.last_mut() {
            Some(r) if s >= r.end && s - r.end <= MAX_GAP && e - r.start <= MAX_READ => {
                r.end = e;
                r.blobs.push(b);
            }
            Some(r) if s < r.end => {
                // Overlapping entries cannot come from a valid index; read separately.
                reads.push(Read {
                    start: s,
                    end: e,
                    blobs: vec![b],
                });
            }
            _ => reads.push(Read {
                start: s,
                end: e,
                blobs: vec![b],
            }),
        }
    }
    reads
}
