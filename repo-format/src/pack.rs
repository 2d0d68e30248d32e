//! Pack files: many blobs in one stored object.
//!
//! ```text
//! pack   = blob_1 || ... || blob_n || header_envelope || header_len (u32 LE)
//! header = version (u8, 1) || count (u32 LE) || entry_1 || ... || entry_n
//! entry  = type (u8) || id (32) || stored_len (u32 LE) || raw_len (u32 LE)     41 bytes
//! ```
//!
//! Blobs follow one another from offset 0 in header order; `header_len` is the
//! length of the sealed header envelope.

use crate::blob::{BlobType, MAX_BLOB_SIZE};
use crate::bytes::Reader;
use crate::envelope::{Context, Opener, Sealer};
use crate::error::{FormatError, Result};
use crate::id::BlobId;

/// Version of the pack header plaintext.
pub const PACK_HEADER_VERSION: u8 = 1;
/// The smallest header envelope: the envelope's overhead around a version
/// byte and a count.
pub const MIN_HEADER_LEN: u64 = crate::envelope::OVERHEAD as u64 + 5;
/// Bytes per header entry.
pub const PACK_ENTRY_LEN: usize = 41;
/// Length of the trailing header length field.
pub const TRAILER_LEN: usize = 4;
/// Packs must be smaller than this (offsets are 32-bit).
pub const MAX_PACK_SIZE: u64 = u32::MAX as u64;
/// The most blobs one pack may hold.
pub const MAX_BLOBS_PER_PACK: u32 = 1 << 20;

/// One blob in a pack, as the pack header and index describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// Type of the blob.
    pub blob_type: BlobType,
    /// Id of the blob.
    pub id: BlobId,
    /// Offset of the blob's envelope in the pack.
    pub offset: u32,
    /// Length of the envelope.
    pub stored_len: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
}

/// Encodes a header plaintext; entries must be in pack order with consecutive offsets.
pub fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + entries.len() * PACK_ENTRY_LEN);
    out.push(PACK_HEADER_VERSION);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.push(e.blob_type.to_byte());
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.stored_len.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
    }
    out
}

/// Decodes a header plaintext, computing each blob's offset.
pub fn decode_header(plain: &[u8]) -> Result<Vec<PackEntry>> {
    let mut r = Reader::new("pack header", plain);
    let version = r.u8()?;
    if version != PACK_HEADER_VERSION {
        return Err(FormatError::UnsupportedVersion {
            what: "pack header",
            found: version.into(),
            supported: PACK_HEADER_VERSION.into(),
        });
    }
    let count = r.u32()?;
    if count > MAX_BLOBS_PER_PACK {
        return Err(FormatError::TooLarge {
            what: "pack header",
            size: count.into(),
            limit: MAX_BLOBS_PER_PACK.into(),
        });
    }
    r.expect_records(count, PACK_ENTRY_LEN)?;
    let mut entries = Vec::with_capacity(count as usize);
    let mut offset: u64 = 0;
    for _ in 0..count {
        let blob_type = BlobType::from_byte(r.u8()?)?;
        let id = BlobId(r.id()?);
        let stored_len = r.u32()?;
        let raw_len = r.u32()?;
        if raw_len > MAX_BLOB_SIZE {
            return Err(FormatError::TooLarge {
                what: "blob in pack header",
                size: raw_len.into(),
                limit: MAX_BLOB_SIZE.into(),
            });
        }
        if offset + u64::from(stored_len) > MAX_PACK_SIZE {
            return Err(FormatError::malformed(
                "pack header",
                "blobs extend past 4 GiB",
            ));
        }
        entries.push(PackEntry {
            blob_type,
            id,
            offset: offset as u32,
            stored_len,
            raw_len,
        });
        offset += u64::from(stored_len);
    }
    r.finish()?;
    Ok(entries)
}

/// Seals a header and appends it and the trailer to the blob bytes of a pack.
pub fn finish_pack(sealer: &mut Sealer, blobs: &mut Vec<u8>, entries: &[PackEntry]) -> Result<()> {
    let start = blobs.len();
    sealer.seal_into(Context::PackHeader, &encode_header(entries), blobs)?;
    let header_len = (blobs.len() - start) as u32;
    blobs.extend_from_slice(&header_len.to_le_bytes());
    Ok(())
}

/// Reads the header length from the last 4 bytes of a pack of `pack_len` bytes,
/// and returns the offset where the header envelope starts.
pub fn header_start(pack_len: u64, trailer: &[u8]) -> Result<u64> {
    if trailer.len() != TRAILER_LEN || pack_len < TRAILER_LEN as u64 {
        return Err(FormatError::Truncated {
            what: "pack",
            needed: TRAILER_LEN as u64,
            available: pack_len,
        });
    }
    let header_len = u64::from(u32::from_le_bytes([
        trailer[0], trailer[1], trailer[2], trailer[3],
    ]));
    let body = pack_len - TRAILER_LEN as u64;
    if header_len > body || header_len < MIN_HEADER_LEN {
        return Err(FormatError::malformed(
            "pack",
            format!("header length {header_len} does not fit a pack of {pack_len} bytes"),
        ));
    }
    Ok(body - header_len)
}

/// Opens the header envelope of a pack and checks that its blobs exactly fill
/// the bytes before the header.
pub fn open_header(opener: &Opener, header_start: u64, envelope: &[u8]) -> Result<Vec<PackEntry>> {
    let plain = opener.open(Context::PackHeader, envelope)?;
    let entries = decode_header(&plain)?;
    let end = entries
        .last()
        .map(|e| u64::from(e.offset) + u64::from(e.stored_len))
        .unwrap_or(0);
    if end != header_start {
        return Err(FormatError::malformed(
            "pack header",
            format!("blobs end at byte {end} but the header starts at byte {header_start}"),
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_length_below_the_smallest_header_is_refused() {
        for len in [0u32, 45, 49] {
            assert!(header_start(1000, &len.to_le_bytes()).is_err(), "{len}");
        }
        assert_eq!(
            header_start(1000, &50u32.to_le_bytes()).unwrap(),
            1000 - 4 - 50
        );
        assert!(header_start(1000, &997u32.to_le_bytes()).is_err());
    }

    fn entries() -> Vec<PackEntry> {
        let mut off = 0;
        (0..3u8)
            .map(|i| {
                let e = PackEntry {
                    blob_type: if i == 1 {
                        BlobType::Tree
                    } else {
                        BlobType::Data
                    },
                    id: BlobId([i; 32]),
                    offset: off,
                    stored_len: 100 + u32::from(i),
                    raw_len: 50,
                };
                off += e.stored_len;
                e
            })
            .collect()
    }

    #[test]
    fn header_round_trip() {
        let e = entries();
        assert_eq!(decode_header(&encode_header(&e)).unwrap(), e);
    }

    #[test]
    fn whole_pack_round_trip() {
        let key = [9u8; 32];
        let mut sealer = Sealer::new(&key).unwrap();
        let e = entries();
        let mut pack = vec![0u8; 303];
        finish_pack(&mut sealer, &mut pack, &e).unwrap();
        let start = header_start(pack.len() as u64, &pack[pack.len() - 4..]).unwrap();
        assert_eq!(start, 303);
        let got = open_header(
            &Opener::new(&key),
            start,
            &pack[start as usize..pack.len() - 4],
        )
        .unwrap();
        assert_eq!(got, e);
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        let mut h = vec![1u8];
        h.extend_from_slice(&(MAX_BLOBS_PER_PACK).to_le_bytes());
        assert!(matches!(
            decode_header(&h),
            Err(FormatError::Truncated { .. })
        ));
        let mut h = vec![1u8];
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_header(&h),
            Err(FormatError::TooLarge { .. })
        ));
    }

    #[test]
    fn impossible_header_length_is_refused() {
        assert!(header_start(100, &200u32.to_le_bytes()).is_err());
        assert!(header_start(2, &[0, 0]).is_err());
    }
}
