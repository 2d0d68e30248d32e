//! Hasher and dedup stages: the keyed BLAKE3 id of a chunk, looked up in the
//! index and in this session's claims; only a blob nobody stored yet goes on to
//! the compressor and encryptor ([`BlobSealer`]) and the packer.

use coffer_repo_format::blob::{BlobSealer, BlobType};
use coffer_repo_format::BlobId;

use super::Ctx;
use crate::error::{Error, Result};

impl Ctx {
    /// Stores a blob unless it is stored already; returns its id either way.
    pub(crate) fn dedup_and_store(
        &self,
        sealer: &mut BlobSealer,
        blob_type: BlobType,
        plaintext: &[u8],
    ) -> Result<BlobId> {
        let id = self.repo.key().blob_id(plaintext);
        if self.index.claim(&id) {
            let sealed = sealer
                .seal(blob_type, id, plaintext)
                .map_err(|e| Error::corrupt(format!("new {blob_type} blob {id}"), e))?;
            self.stats
                .add_blob(blob_type, plaintext.len() as u64, sealed.bytes.len() as u64);
            self.packer.add(sealed)?;
        }
        Ok(id)
    }
}
