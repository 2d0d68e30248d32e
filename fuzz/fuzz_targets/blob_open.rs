#![no_main]
//! A stored blob: decrypt, bounded decompression, id check. The first 4 bytes
//! are the claimed plaintext length.
mod common;
use coffer_repo_format::blob::{open_blob, BlobType};
use coffer_repo_format::BlobId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let raw_len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let key = common::vector_key();
    let opener = key.opener();
    let body = &data[4..];
    let id = BlobId(*blake3::hash(body).as_bytes());
    for t in [BlobType::Data, BlobType::Tree] {
        if let Ok(plain) = open_blob(&key, &opener, t, &id, raw_len, body) {
            assert_eq!(plain.len(), raw_len as usize);
            assert_eq!(key.blob_id(&plain), id);
        }
    }
});
