//! Hasher and dedup stages: the keyed BLAKE3 id of a chunk, looked up in the
//! index and in this session's claims; only a blob nobody stored yet goes on to
//! the compressor and encryptor ([`BlobSealer`]) and the packer.

use coffer_repo_format::blob::{BlobSealer, BlobType};
use coffer_repo_format::BlobId;

use super::Sink;
use crate::error::{Error, Result};

/// One thread's sealer and the buffer it seals into, reused for every blob.
pub(crate) struct BlobWriter {
    sealer: BlobSealer,
    out: Vec<u8>,
}

impl BlobWriter {
    pub(crate) fn new(sink: &Sink) -> Result<Self> {
        Ok(BlobWriter {
            sealer: BlobSealer::new(sink.repo.key(), sink.compression)
                .map_err(|e| Error::corrupt("blob sealer", e))?,
            out: Vec::new(),
        })
    }
}

impl Sink {
    /// Stores a blob unless it is stored already; returns its id either way.
    pub(crate) fn dedup_and_store(
        &self,
        w: &mut BlobWriter,
        blob_type: BlobType,
        plaintext: &[u8],
    ) -> Result<BlobId> {
        let id = self.repo.key().blob_id(plaintext);
        if self.index.claim(&id) {
            let stored = w
                .sealer
                .seal_to(blob_type, id, plaintext, &mut w.out)
                .map_err(|e| Error::corrupt(format!("new {blob_type} blob {id}"), e))?;
            self.stats
                .add_blob(blob_type, plaintext.len() as u64, stored as u64);
            self.packer
                .add(blob_type, id, plaintext.len() as u32, &w.out)?;
        }
        Ok(id)
    }
}
