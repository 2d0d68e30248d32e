//! The in-memory index: where every blob of the repository is stored.
//!
//! Cost: one hash-table entry of a 32-byte id and a 20-byte location per blob
//! (about 60 bytes with the table's overhead), plus 36 bytes per pack.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::{Mutex, RwLock};

use coffer_repo_format::blob::BlobType;
use coffer_repo_format::index::IndexFile;
use coffer_repo_format::pack::PackEntry;
use coffer_repo_format::{BlobId, PackId};

/// Where one blob is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack.
    pub pack: PackId,
    /// Type of the blob.
    pub blob_type: BlobType,
    /// Offset of its envelope in the pack.
    pub offset: u32,
    /// Length of the envelope.
    pub stored_len: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
}

#[derive(Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
    blob_type: BlobType,
}

#[derive(Default)]
struct Inner {
    blobs: HashMap<BlobId, Slot>,
    packs: Vec<(PackId, u32)>,
    pack_slots: HashMap<PackId, u32>,
}

/// The index of a repository, shared by the stages of an operation.
///
/// Lookups take a read lock; adding a pack takes the write lock briefly.
#[derive(Default)]
pub struct Index {
    inner: RwLock<Inner>,
    claimed: Mutex<HashSet<BlobId>>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one pack's blobs. A blob already indexed keeps its first location.
    pub fn add_pack(&self, pack: PackId, size: u32, blobs: &[PackEntry]) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let slot = match inner.pack_slots.get(&pack) {
            Some(s) => *s,
            None => {
                let s = inner.packs.len() as u32;
                inner.packs.push((pack, size));
                inner.pack_slots.insert(pack, s);
                s
            }
        };
        for b in blobs {
            inner.blobs.entry(b.id).or_insert(Slot {
                pack: slot,
                offset: b.offset,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
                blob_type: b.blob_type,
            });
        }
    }

    /// Adds every pack of an index file.
    pub fn add_file(&self, file: &IndexFile) {
        for p in &file.packs {
            self.add_pack(p.id, p.size, &p.blobs);
        }
    }

    /// Where a blob is stored.
    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        let inner = self.read();
        inner.blobs.get(id).map(|s| BlobLocation {
            pack: inner.packs[s.pack as usize].0,
            blob_type: s.blob_type,
            offset: s.offset,
            stored_len: s.stored_len,
            raw_len: s.raw_len,
        })
    }

    /// Whether a blob is stored.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.read().blobs.contains_key(id)
    }

    /// Claims a blob for storing in this session: true if the caller must store
    /// it, false if it is already stored or another stage of this session claimed it.
    pub fn claim(&self, id: &BlobId) -> bool {
        if self.contains(id) {
            return false;
        }
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*id)
    }

    /// Number of indexed blobs.
    pub fn len(&self) -> usize {
        self.read().blobs.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every indexed pack with its recorded size.
    pub fn packs(&self) -> Vec<(PackId, u32)> {
        self.read().packs.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u8) -> PackEntry {
        PackEntry {
            blob_type: BlobType::Data,
            id: BlobId([id; 32]),
            offset: u32::from(id) * 10,
            stored_len: 10,
            raw_len: 5,
        }
    }

    #[test]
    fn lookups_and_claims() {
        let idx = Index::new();
        idx.add_pack(PackId([9; 32]), 100, &[entry(1), entry(2)]);
        assert_eq!(idx.get(&BlobId([2; 32])).unwrap().offset, 20);
        assert_eq!(idx.get(&BlobId([2; 32])).unwrap().pack, PackId([9; 32]));
        assert!(
            !idx.claim(&BlobId([1; 32])),
            "indexed blobs are not claimed"
        );
        assert!(idx.claim(&BlobId([3; 32])));
        assert!(!idx.claim(&BlobId([3; 32])), "a claim is granted once");
        idx.add_pack(PackId([8; 32]), 100, &[entry(1)]);
        assert_eq!(
            idx.get(&BlobId([1; 32])).unwrap().pack,
            PackId([9; 32]),
            "first location wins"
        );
        assert_eq!(idx.len(), 2);
    }
}
