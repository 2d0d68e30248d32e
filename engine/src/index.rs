//! The in-memory index: where every blob of the repository is stored.
//!
//! Cost: 48 bytes per blob in a sorted array (32-byte id, pack number with the
//! blob type in its top bit, offset, stored and plaintext lengths), searched by
//! bisection within the entries of the id's first two bytes (a 256 KiB table
//! of where each prefix starts); blobs added during a session first go to a
//! hash map that is merged into the array when it reaches an eighth of it.
//! Plus 36 bytes per pack. At the default 128 KiB chunks: about 400 MB per TB
//! of unique data.
//!
//! A restore needs less: [`Index::trees_only`] keeps the tree blobs alone
//! (what walking a snapshot reads), and the restore looks up each batch's
//! data blobs with [`crate::repository::Repository::locate_blobs`], so its
//! memory follows the repository's trees and the batch, not its data.

use std::collections::{HashMap, HashSet};
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

const TREE_BIT: u32 = 1 << 31;

/// Buckets of [`Inner::fanout`]: every two-byte id prefix.
const FANOUT: usize = 1 << 16;

/// 48 bytes: the unit of the index's memory.
#[derive(Clone, Copy)]
struct Entry {
    id: [u8; 32],
    /// Pack number; the top bit is set for tree blobs.
    pack: u32,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
}

impl Entry {
    fn new(pack: u32, b: &PackEntry) -> Self {
        let tree = if b.blob_type == BlobType::Tree {
            TREE_BIT
        } else {
            0
        };
        Entry {
            id: b.id.0,
            pack: pack | tree,
            offset: b.offset,
            stored_len: b.stored_len,
            raw_len: b.raw_len,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Sorted by id, no duplicates.
    sorted: Vec<Entry>,
    /// Where the ids of each first-two-byte prefix start in `sorted` (65,537
    /// entries, 256 KiB, once anything is merged): a lookup searches a
    /// handful of entries instead of the whole array.
    fanout: Vec<u32>,
    /// Blobs added since the last merge.
    recent: HashMap<BlobId, Entry>,
    packs: Vec<(PackId, u32)>,
    pack_slots: HashMap<PackId, u32>,
}

impl Inner {
    fn find(&self, id: &BlobId) -> Option<Entry> {
        if let Some(e) = self.recent.get(id) {
            return Some(*e);
        }
        let (lo, hi) = match self.fanout.as_slice() {
            [] => (0, self.sorted.len()),
            f => {
                let p = usize::from(u16::from_be_bytes([id.0[0], id.0[1]]));
                (f[p] as usize, f[p + 1] as usize)
            }
        };
        let bucket = &self.sorted[lo..hi];
        bucket
            .binary_search_by(|e| e.id.cmp(&id.0))
            .ok()
            .map(|i| bucket[i])
    }

    /// Rebuilds `fanout` for `sorted`.
    fn index_prefixes(&mut self) {
        let mut fanout = vec![0u32; FANOUT + 1];
        for e in &self.sorted {
            fanout[usize::from(u16::from_be_bytes([e.id[0], e.id[1]])) + 1] += 1;
        }
        for p in 0..FANOUT {
            fanout[p + 1] += fanout[p];
        }
        self.fanout = fanout;
    }

    fn pack_slot(&mut self, pack: PackId, size: u32) -> u32 {
        match self.pack_slots.get(&pack) {
            Some(s) => *s,
            None => {
                let s = self.packs.len() as u32;
                self.packs.push((pack, size));
                self.pack_slots.insert(pack, s);
                s
            }
        }
    }

    /// Merges `recent` into `sorted`, keeping the first location of a blob.
    fn merge(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let mut add: Vec<Entry> = self.recent.drain().map(|(_, e)| e).collect();
        add.sort_unstable_by_key(|e| e.id);
        let old = std::mem::take(&mut self.sorted);
        let mut out = Vec::with_capacity(old.len() + add.len());
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < add.len() {
            let take_old = j == add.len() || (i < old.len() && old[i].id <= add[j].id);
            if take_old {
                if j < add.len() && old[i].id == add[j].id {
                    j += 1;
                }
                out.push(old[i]);
                i += 1;
            } else {
                out.push(add[j]);
                j += 1;
            }
        }
        self.sorted = out;
        self.index_prefixes();
    }
}

/// The index of a repository, shared by the stages of an operation.
///
/// Lookups take a read lock; adding a pack takes the write lock briefly.
#[derive(Default)]
pub struct Index {
    inner: RwLock<Inner>,
    claimed: Mutex<HashSet<BlobId>>,
    /// Data blobs are not indexed (see [`Index::trees_only`]).
    trees_only: bool,
}

/// `recent` is merged when it exceeds this many entries and an eighth of `sorted`.
const MERGE_MIN: usize = 64 * 1024;

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// An index that keeps tree blobs and leaves data blobs out: what a
    /// walk of snapshots needs, in memory that grows with the repository's
    /// directories, not its data. [`Index::get`] finds no data blob in it.
    pub fn trees_only() -> Self {
        Index {
            trees_only: true,
            ..Self::default()
        }
    }

    /// Whether data blobs are indexed (false for [`Index::trees_only`]).
    pub fn holds_data(&self) -> bool {
        !self.trees_only
    }

    /// Adds one pack's blobs. A blob already indexed keeps its first location.
    pub fn add_pack(&self, pack: PackId, size: u32, blobs: &[PackEntry]) {
        let keep = |b: &&PackEntry| !self.trees_only || b.blob_type == BlobType::Tree;
        if self.trees_only && !blobs.iter().any(|b| keep(&b)) {
            return;
        }
        let mut inner = self.write();
        let slot = inner.pack_slot(pack, size);
        for b in blobs.iter().filter(keep) {
            if inner.find(&b.id).is_none() {
                inner.recent.insert(b.id, Entry::new(slot, b));
            }
        }
        if inner.recent.len() >= MERGE_MIN.max(inner.sorted.len() / 8) {
            inner.merge();
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
        inner.find(id).map(|e| BlobLocation {
            pack: inner.packs[(e.pack & !TREE_BIT) as usize].0,
            blob_type: if e.pack & TREE_BIT != 0 {
                BlobType::Tree
            } else {
                BlobType::Data
            },
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
        })
    }

    /// Whether a blob is stored.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.read().find(id).is_some()
    }

    /// Claims a blob for storing in this session: true if the caller must store
    /// it, false if it is already stored or another stage of this session claimed it.
    pub(crate) fn claim(&self, id: &BlobId) -> bool {
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
        let inner = self.read();
        inner.sorted.len() + inner.recent.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every blob stored in one of `packs`: a backup must not
    /// deduplicate against packs a prune plan may delete (it stores such blobs again).
    pub(crate) fn exclude_packs(&self, packs: &std::collections::HashSet<PackId>) {
        if packs.is_empty() {
            return;
        }
        let mut inner = self.write();
        let slots: HashSet<u32> = packs
            .iter()
            .filter_map(|p| inner.pack_slots.get(p).copied())
            .collect();
        if slots.is_empty() {
            return;
        }
        inner.merge();
        inner
            .sorted
            .retain(|e| !slots.contains(&(e.pack & !TREE_BIT)));
        inner.index_prefixes();
    }

    /// Whether an index file lists the pack.
    pub(crate) fn has_pack(&self, id: &PackId) -> bool {
        self.read().pack_slots.contains_key(id)
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
            blob_type: if id % 2 == 0 {
                BlobType::Data
            } else {
                BlobType::Tree
            },
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
        assert_eq!(idx.get(&BlobId([1; 32])).unwrap().blob_type, BlobType::Tree);
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

    #[test]
    fn a_trees_only_index_keeps_tree_blobs_alone() {
        let idx = Index::trees_only();
        assert!(!idx.holds_data());
        // entry(1) is a tree, entry(2) and entry(4) data.
        idx.add_pack(PackId([9; 32]), 100, &[entry(1), entry(2)]);
        idx.add_pack(PackId([8; 32]), 100, &[entry(4)]);
        assert_eq!(idx.get(&BlobId([1; 32])).unwrap().blob_type, BlobType::Tree);
        assert!(idx.get(&BlobId([2; 32])).is_none());
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.packs().len(), 1, "a pack of data alone takes no slot");
        assert!(Index::new().holds_data());
    }

    #[test]
    fn merged_and_recent_entries_are_all_found() {
        let idx = Index::new();
        let n = MERGE_MIN * 2 + 1000;
        let mut expect = Vec::new();
        for p in 0..(n / 1000 + 1) {
            let blobs: Vec<PackEntry> = (0..1000)
                .map(|i| {
                    let k = (p * 1000 + i) as u64;
                    let mut id = [0u8; 32];
                    id[..8].copy_from_slice(&k.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
                    PackEntry {
                        blob_type: BlobType::Data,
                        id: BlobId(id),
                        offset: i as u32,
                        stored_len: 1,
                        raw_len: 1,
                    }
                })
                .collect();
            let pack = PackId([p as u8; 32]);
            idx.add_pack(pack, 5000, &blobs);
            expect.extend(blobs.into_iter().map(|b| (b.id, b.offset, pack)));
        }
        assert!(!idx.read().sorted.is_empty(), "merged at least once");
        assert_eq!(idx.len(), expect.len());
        let expect_after = expect.clone();
        for (id, off, pack) in expect {
            let loc = idx.get(&id).unwrap();
            assert_eq!((loc.offset, loc.pack), (off, pack));
        }
        assert!(idx.get(&BlobId([0xff; 32])).is_none());

        // Excluding a pack rebuilds the prefix table: the rest is still found.
        let gone = PackId([0; 32]);
        idx.exclude_packs(&[gone].into_iter().collect());
        for (id, off, pack) in &expect_after {
            let found = idx.get(id);
            if *pack == gone {
                assert!(found.is_none());
            } else {
                assert_eq!(found.map(|l| (l.offset, l.pack)), Some((*off, *pack)));
            }
        }
    }
}
