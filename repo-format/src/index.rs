//! Index files: which blobs are in which pack, at which offset.
//!
//! ```text
//! index = version (u8, 1) || pack_count (u32 LE) || pack_1 || ... || pack_n
//! pack  = pack_id (32) || pack_size (u32 LE) || blob_count (u32 LE) || entry_1 || ... || entry_m
//! entry = type (u8) || id (32) || offset (u32 LE) || stored_len (u32 LE) || raw_len (u32 LE)   45 bytes
//! ```
//!
//! The plaintext is sealed in an envelope (context "index") and stored at
//! `index/<BLAKE3 of the stored bytes>`.

use crate::blob::{BlobType, MAX_BLOB_SIZE};
use crate::bytes::Reader;
use crate::error::{FormatError, Result};
use crate::id::{BlobId, PackId};
use crate::pack::{PackEntry, MAX_BLOBS_PER_PACK};

/// Version of the index plaintext.
pub const INDEX_VERSION: u8 = 1;
/// Largest index file plaintext a reader accepts (SPEC.md §14). Writers stay
/// far below: coffer lists at most 32 packs per file.
pub const MAX_INDEX_SIZE: usize = 256 * 1024 * 1024;
const PACK_RECORD_LEN: usize = 32 + 4 + 4;
const ENTRY_LEN: usize = 45;

/// One pack and its blobs, as listed in an index file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedPack {
    /// The pack's id (its name).
    pub id: PackId,
    /// The pack's size in bytes.
    pub size: u32,
    /// Its blobs, in any order.
    pub blobs: Vec<PackEntry>,
}

/// The decoded content of an index file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// The packs it describes.
    pub packs: Vec<IndexedPack>,
}

impl IndexFile {
    /// Number of blob entries.
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }

    /// The plaintext encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            5 + self.packs.len() * PACK_RECORD_LEN + self.blob_count() * ENTRY_LEN,
        );
        out.push(INDEX_VERSION);
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            for b in &p.blobs {
                out.push(b.blob_type.to_byte());
                out.extend_from_slice(&b.id.0);
                out.extend_from_slice(&b.offset.to_le_bytes());
                out.extend_from_slice(&b.stored_len.to_le_bytes());
                out.extend_from_slice(&b.raw_len.to_le_bytes());
            }
        }
        out
    }

    /// Decodes a plaintext, checking every count and range against the bytes present.
    pub fn decode(plain: &[u8]) -> Result<Self> {
        if plain.len() > MAX_INDEX_SIZE {
            return Err(FormatError::TooLarge {
                what: "index file",
                size: plain.len() as u64,
                limit: MAX_INDEX_SIZE as u64,
            });
        }
        let mut r = Reader::new("index file", plain);
        let version = r.u8()?;
        if version != INDEX_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "index file",
                found: version.into(),
                supported: INDEX_VERSION.into(),
            });
        }
        let pack_count = r.u32()?;
        r.expect_records(pack_count, PACK_RECORD_LEN)?;
        let mut packs = Vec::with_capacity(pack_count as usize);
        for _ in 0..pack_count {
            let id = PackId(r.id()?);
            let size = r.u32()?;
            let count = r.u32()?;
            if count > MAX_BLOBS_PER_PACK {
                return Err(FormatError::TooLarge {
                    what: "index file pack record",
                    size: count.into(),
                    limit: MAX_BLOBS_PER_PACK.into(),
                });
            }
            r.expect_records(count, ENTRY_LEN)?;
            let mut blobs = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let blob_type = BlobType::from_byte(r.u8()?)?;
                let bid = BlobId(r.id()?);
                let offset = r.u32()?;
                let stored_len = r.u32()?;
                let raw_len = r.u32()?;
                if u64::from(offset) + u64::from(stored_len) > u64::from(size) {
                    return Err(FormatError::malformed(
                        "index file",
                        format!("blob {bid} at {offset}+{stored_len} lies outside pack {id} of {size} bytes"),
                    ));
                }
                if raw_len > MAX_BLOB_SIZE {
                    return Err(FormatError::TooLarge {
                        what: "blob in index file",
                        size: raw_len.into(),
                        limit: MAX_BLOB_SIZE.into(),
                    });
                }
                blobs.push(PackEntry {
                    blob_type,
                    id: bid,
                    offset,
                    stored_len,
                    raw_len,
                });
            }
            packs.push(IndexedPack { id, size, blobs });
        }
        r.finish()?;
        Ok(IndexFile { packs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_file_above_the_limit_is_refused_before_it_is_parsed() {
        let mut big = vec![0u8; MAX_INDEX_SIZE + 1];
        big[0] = INDEX_VERSION;
        assert!(matches!(
            IndexFile::decode(&big),
            Err(FormatError::TooLarge { .. })
        ));
    }

    #[test]
    fn round_trip() {
        let idx = IndexFile {
            packs: vec![IndexedPack {
                id: PackId([1; 32]),
                size: 1000,
                blobs: vec![PackEntry {
                    blob_type: BlobType::Tree,
                    id: BlobId([2; 32]),
                    offset: 10,
                    stored_len: 90,
                    raw_len: 300,
                }],
            }],
        };
        assert_eq!(IndexFile::decode(&idx.encode()).unwrap(), idx);
    }

    #[test]
    fn blob_outside_its_pack_is_refused() {
        let idx = IndexFile {
            packs: vec![IndexedPack {
                id: PackId([1; 32]),
                size: 50,
                blobs: vec![PackEntry {
                    blob_type: BlobType::Data,
                    id: BlobId([2; 32]),
                    offset: 10,
                    stored_len: 90,
                    raw_len: 3,
                }],
            }],
        };
        let err = IndexFile::decode(&idx.encode()).unwrap_err();
        assert!(err.to_string().contains("outside pack"), "{err}");
    }
}
