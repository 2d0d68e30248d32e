//! Blobs: the unit of deduplication. A blob's stored form is an envelope around
//! `mode (1 byte) || body`, where mode 0 means the body is the plaintext and mode 1
//! means the body is a zstd frame of the plaintext.

use serde::{Deserialize, Serialize};

use crate::envelope::{Context, Opener, Sealer};
use crate::error::{FormatError, Result};
use crate::id::BlobId;
use crate::keys::MasterKey;

/// The largest plaintext of any blob (16 MiB): the chunker's largest maximum,
/// and the bound on a tree page.
pub const MAX_BLOB_SIZE: u32 = 16 * 1024 * 1024;

/// Mode byte: body stored as is.
pub const MODE_STORED: u8 = 0;
/// Mode byte: body is one zstd frame.
pub const MODE_ZSTD: u8 = 1;

/// What a blob holds; data and tree blobs live in separate packs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    /// A chunk of file content.
    Data,
    /// A page of a directory listing.
    Tree,
}

impl BlobType {
    /// The type's byte in pack headers, index files and additional data.
    pub fn to_byte(self) -> u8 {
        match self {
            BlobType::Data => 0,
            BlobType::Tree => 1,
        }
    }

    /// Reads a type byte.
    pub fn from_byte(b: u8) -> Result<Self> {
        match b {
            0 => Ok(BlobType::Data),
            1 => Ok(BlobType::Tree),
            other => Err(FormatError::malformed(
                "blob type",
                format!("unknown type byte {other}"),
            )),
        }
    }
}

impl std::fmt::Display for BlobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        })
    }
}

/// How blobs are compressed before encryption. Encoded as
/// `{"algorithm": "off"}` or `{"algorithm": "zstd", "level": 3}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", content = "level", rename_all = "lowercase")]
pub enum Compression {
    /// Never compress.
    Off,
    /// zstd at this level (1 to 22; negative levels are zstd's fast levels).
    Zstd(i32),
}

/// Compresses and seals blobs for one writer thread.
pub struct BlobSealer {
    sealer: Sealer,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    probe: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
    sample: Vec<u8>,
}

/// Blobs at least this long are probed before they are compressed.
pub const PROBE_MIN: usize = 128 * 1024;
const PROBE_PIECE: usize = 16 * 1024;

/// A sealed blob, ready for a pack.
#[derive(Debug, Clone)]
pub struct SealedBlob {
    /// Type.
    pub blob_type: BlobType,
    /// Id of the plaintext.
    pub id: BlobId,
    /// The envelope.
    pub bytes: Vec<u8>,
    /// Length of the plaintext.
    pub raw_len: u32,
}

impl BlobSealer {
    /// A sealer for `key` that compresses as `compression` says.
    pub fn new(key: &MasterKey, compression: Compression) -> Result<Self> {
        let compressor = match compression {
            Compression::Off => None,
            Compression::Zstd(level) => Some(zstd::bulk::Compressor::new(level).map_err(|e| {
                FormatError::malformed("compression", format!("zstd level {level}: {e}"))
            })?),
        };
        let probe = match compression {
            Compression::Off => None,
            Compression::Zstd(_) => zstd::bulk::Compressor::new(1).ok(),
        };
        Ok(BlobSealer {
            sealer: key.sealer()?,
            compressor,
            probe,
            scratch: Vec::new(),
            sample: Vec::new(),
        })
    }

    /// Seals a blob whose id the caller already computed.
    ///
    /// The body is stored compressed only when that saves at least 1/32 of it.
    pub fn seal(
        &mut self,
        blob_type: BlobType,
        id: BlobId,
        plaintext: &[u8],
    ) -> Result<SealedBlob> {
        let mut bytes = Vec::new();
        self.seal_to(blob_type, id, plaintext, &mut bytes)?;
        Ok(SealedBlob {
            blob_type,
            id,
            bytes,
            raw_len: plaintext.len() as u32,
        })
    }

    /// Seals a blob into `out` (cleared first), so that a caller can reuse one
    /// buffer for every blob. Returns the stored length.
    pub fn seal_to(
        &mut self,
        blob_type: BlobType,
        id: BlobId,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize> {
        out.clear();
        if plaintext.len() > MAX_BLOB_SIZE as usize {
            return Err(FormatError::TooLarge {
                what: "blob",
                size: plaintext.len() as u64,
                limit: MAX_BLOB_SIZE.into(),
            });
        }
        let context = Context::Blob {
            blob_type: blob_type.to_byte(),
            id: &id.0,
        };
        let mut compressed = false;
        if self.looks_incompressible(plaintext) {
            // Skip compressing it in full.
        } else if let Some(c) = self.compressor.as_mut() {
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(plaintext.len()));
            if let Ok(n) = c.compress_to_buffer(plaintext, &mut self.scratch) {
                compressed = n + plaintext.len() / 32 < plaintext.len();
            }
        }
        if compressed {
            self.sealer
                .seal_parts_into(context, &[&[MODE_ZSTD], &self.scratch], out)?;
        } else {
            self.sealer
                .seal_parts_into(context, &[&[MODE_STORED], plaintext], out)?;
        }
        Ok(out.len())
    }
}

impl BlobSealer {
    /// Whether three 16 KiB samples (start, middle, end) of a large blob fail to
    /// shrink by 1/32 at zstd level 1: then the whole blob is stored as is,
    /// without spending a full compression on it (media, encrypted or already
    /// compressed data). Samples whose bytes alone are predictable (text,
    /// sparse records: see [`low_entropy`]) compress without the zstd probe.
    fn looks_incompressible(&mut self, data: &[u8]) -> bool {
        let Some(probe) = self.probe.as_mut() else {
            return false;
        };
        if data.len() < PROBE_MIN {
            return false;
        }
        let mid = data.len() / 2 - PROBE_PIECE / 2;
        let starts = [0, mid, data.len() - PROBE_PIECE];
        if low_entropy(starts.map(|s| &data[s..s + ENTROPY_PIECE])) {
            return false;
        }
        self.sample.clear();
        for start in starts {
            self.sample
                .extend_from_slice(&data[start..start + PROBE_PIECE]);
        }
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(self.sample.len()));
        match probe.compress_to_buffer(&self.sample, &mut out) {
            Ok(n) => n + self.sample.len() / 32 >= self.sample.len(),
            Err(_) => false,
        }
    }
}

/// Bytes of each probe sample whose byte frequencies are counted first.
const ENTROPY_PIECE: usize = 4 * 1024;

/// Whether the byte frequencies of `pieces` give them under 7 bits of
/// entropy a byte: an order-0 coder alone would save an eighth of them, so
/// zstd saves at least the 1/32 that compression must, and the zstd probe
/// (which costs several times this count) is not needed.
fn low_entropy<const N: usize>(pieces: [&[u8]; N]) -> bool {
    let mut counts = [0u32; 256];
    for b in pieces.iter().flat_map(|p| p.iter()) {
        counts[usize::from(*b)] += 1;
    }
    let n: u32 = counts.iter().sum();
    if n == 0 {
        return false;
    }
    let n = f64::from(n);
    let bits: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum();
    bits < 7.0
}

/// Decrypts, decompresses and verifies one stored blob.
///
/// `raw_len` is the plaintext length recorded in the index or pack header; the
/// plaintext must have exactly that length and hash to `id`.
pub fn open_blob(
    key: &MasterKey,
    opener: &Opener,
    blob_type: BlobType,
    id: &BlobId,
    raw_len: u32,
    stored: &[u8],
) -> Result<Vec<u8>> {
    let (mut bufs, mut out) = (OpenBuffers::default(), Vec::new());
    open_blob_into(
        key, opener, blob_type, id, raw_len, stored, &mut bufs, &mut out,
    )?;
    Ok(out)
}

/// Buffers and a zstd context for opening many blobs on one thread.
#[derive(Default)]
pub struct OpenBuffers {
    scratch: Vec<u8>,
    dctx: Option<zstd::bulk::Decompressor<'static>>,
}

/// As [`open_blob`], into `out`, reusing `bufs` (the decrypted payload and
/// the decompression context) across calls.
#[allow(clippy::too_many_arguments)]
pub fn open_blob_into(
    key: &MasterKey,
    opener: &Opener,
    blob_type: BlobType,
    id: &BlobId,
    raw_len: u32,
    stored: &[u8],
    bufs: &mut OpenBuffers,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.clear();
    if raw_len > MAX_BLOB_SIZE {
        return Err(FormatError::TooLarge {
            what: "blob",
            size: raw_len.into(),
            limit: MAX_BLOB_SIZE.into(),
        });
    }
    let context = Context::Blob {
        blob_type: blob_type.to_byte(),
        id: &id.0,
    };
    let scratch = &mut bufs.scratch;
    opener.open_into(context, stored, scratch)?;
    match scratch.first() {
        Some(&MODE_STORED) => out.extend_from_slice(&scratch[1..]),
        Some(&MODE_ZSTD) => {
            out.reserve(raw_len as usize);
            let dctx = match &mut bufs.dctx {
                Some(d) => d,
                None => bufs.dctx.insert(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| FormatError::malformed("blob", format!("zstd: {e}")))?,
                ),
            };
            dctx.decompress_to_buffer(&scratch[1..], out)
                .map_err(|e| FormatError::malformed("blob", format!("zstd: {e}")))?;
        }
        Some(&other) => {
            return Err(FormatError::malformed(
                "blob",
                format!("unknown mode byte {other}"),
            ));
        }
        None => return Err(FormatError::malformed("blob", "empty payload")),
    }
    if out.len() != raw_len as usize {
        return Err(FormatError::malformed(
            "blob",
            format!(
                "plaintext has {} bytes, the index says {raw_len}",
                out.len()
            ),
        ));
    }
    let actual = key.blob_id(out);
    if actual != *id {
        return Err(FormatError::IdMismatch {
            what: "blob",
            expected: id.to_hex(),
            actual: actual.to_hex(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_blobs_shrink_and_round_trip() {
        let key = MasterKey::generate().unwrap();
        let mut s = BlobSealer::new(&key, Compression::Zstd(3)).unwrap();
        let text = b"all work and no play ".repeat(1000);
        let id = key.blob_id(&text);
        let sealed = s.seal(BlobType::Data, id, &text).unwrap();
        assert!(sealed.bytes.len() < text.len() / 10);
        let back = open_blob(
            &key,
            &key.opener(),
            BlobType::Data,
            &id,
            text.len() as u32,
            &sealed.bytes,
        )
        .unwrap();
        assert_eq!(back, text);
    }

    #[test]
    fn incompressible_blobs_are_stored() {
        let key = MasterKey::generate().unwrap();
        let mut s = BlobSealer::new(&key, Compression::Zstd(3)).unwrap();
        let data: Vec<u8> = (0..10000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let noise = blake3::Hasher::new().update(&data).finalize_xof();
        let mut buf = vec![0u8; 10000];
        let mut r = noise;
        r.fill(&mut buf);
        let id = key.blob_id(&buf);
        let sealed = s.seal(BlobType::Data, id, &buf).unwrap();
        assert_eq!(
            sealed.bytes.len(),
            buf.len() + 1 + crate::envelope::OVERHEAD
        );
    }

    #[test]
    fn large_incompressible_blobs_skip_compression_and_large_text_does_not() {
        let key = MasterKey::generate().unwrap();
        let mut s = BlobSealer::new(&key, Compression::Zstd(3)).unwrap();
        let mut noise = vec![0u8; 1 << 20];
        blake3::Hasher::new()
            .update(b"n")
            .finalize_xof()
            .fill(&mut noise);
        let id = key.blob_id(&noise);
        let sealed = s.seal(BlobType::Data, id, &noise).unwrap();
        assert_eq!(
            sealed.bytes.len(),
            noise.len() + 1 + crate::envelope::OVERHEAD
        );
        let text = b"SELECT * FROM volumes WHERE pod = 'db-0';\n".repeat(25_000);
        let id = key.blob_id(&text);
        let sealed = s.seal(BlobType::Data, id, &text).unwrap();
        assert!(sealed.bytes.len() < text.len() / 20);
        let back = open_blob(
            &key,
            &key.opener(),
            BlobType::Data,
            &id,
            text.len() as u32,
            &sealed.bytes,
        )
        .unwrap();
        assert_eq!(back, text);
    }

    #[test]
    fn byte_frequencies_decide_only_what_they_can() {
        let text = b"SELECT * FROM volumes WHERE pod = 'db-0';\n".repeat(100);
        assert!(low_entropy([&text[..4096], &text[100..4196]]));
        let mut noise = vec![0u8; 8192];
        blake3::Hasher::new()
            .update(b"e")
            .finalize_xof()
            .fill(&mut noise);
        assert!(!low_entropy([&noise[..4096], &noise[4096..]]));
        assert!(!low_entropy::<1>([&[]]));
        // Every byte value equally often, yet a repeated pattern: the
        // frequencies cannot tell, the zstd probe does, and it compresses.
        let cycle: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        assert!(!low_entropy([&cycle[..4096]]));
        let key = MasterKey::generate().unwrap();
        let mut s = BlobSealer::new(&key, Compression::Zstd(3)).unwrap();
        let sealed = s.seal(BlobType::Data, key.blob_id(&cycle), &cycle).unwrap();
        assert!(sealed.bytes.len() < cycle.len() / 20);
    }

    #[test]
    fn wrong_id_or_length_is_detected() {
        let key = MasterKey::generate().unwrap();
        let mut s = BlobSealer::new(&key, Compression::Off).unwrap();
        let id = key.blob_id(b"abc");
        let sealed = s.seal(BlobType::Tree, id, b"abc").unwrap();
        let opener = key.opener();
        assert!(open_blob(&key, &opener, BlobType::Tree, &id, 4, &sealed.bytes).is_err());
        assert!(open_blob(&key, &opener, BlobType::Data, &id, 3, &sealed.bytes).is_err());
        assert!(open_blob(&key, &opener, BlobType::Tree, &id, 3, &sealed.bytes).is_ok());
    }
}
