#![no_main]
//! Index file plaintext.
use coffer_repo_format::index::IndexFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = IndexFile::decode(data) {
        assert_eq!(idx.encode(), data);
    }
});
