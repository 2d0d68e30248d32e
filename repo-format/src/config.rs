//! The repository config, stored sealed at `config`.

use serde::{Deserialize, Serialize};

use crate::blob::Compression;
use crate::cbor;
use crate::chunker::ChunkerParams;
use crate::error::{FormatError, Result};
use crate::pack::MAX_PACK_SIZE;

/// The repository format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Repository-wide settings, fixed at `init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Random repository id, 32 bytes.
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    /// When the repository was created (RFC 3339).
    pub created: String,
    /// Chunker parameters.
    pub chunker: ChunkerParams,
    /// Default compression of new blobs.
    pub compression: Compression,
    /// Target size of pack files in bytes.
    pub pack_size: u32,
}

/// Smallest allowed target pack size.
pub const MIN_PACK_SIZE: u32 = 64 * 1024;

impl Config {
    /// The repository id as hex.
    pub fn id_hex(&self) -> String {
        hex::encode(&self.id)
    }

    /// Checks version and bounds.
    pub fn validate(&self) -> Result<()> {
        if self.version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "repository config",
                found: self.version.into(),
                supported: FORMAT_VERSION.into(),
            });
        }
        if self.id.len() != 32 {
            return Err(FormatError::malformed(
                "repository config",
                "id is not 32 bytes",
            ));
        }
        self.chunker.validate()?;
        if self.pack_size < MIN_PACK_SIZE || u64::from(self.pack_size) > MAX_PACK_SIZE / 2 {
            return Err(FormatError::malformed(
                "repository config",
                format!(
                    "pack size {} outside {MIN_PACK_SIZE}..2 GiB",
                    self.pack_size
                ),
            ));
        }
        if let Compression::Zstd(level) = self.compression {
            if !(-7..=22).contains(&level) {
                return Err(FormatError::malformed(
                    "repository config",
                    format!("zstd level {level} outside -7..=22"),
                ));
            }
        }
        Ok(())
    }

    /// The plaintext encoding.
    pub fn encode(&self) -> Result<Vec<u8>> {
        cbor::to_vec("repository config", self)
    }

    /// Decodes and validates a plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > 64 * 1024 {
            return Err(FormatError::TooLarge {
                what: "repository config",
                size: bytes.len() as u64,
                limit: 64 * 1024,
            });
        }
        let c: Config = cbor::from_slice("repository config", bytes)?;
        c.validate()?;
        Ok(c)
    }
}
