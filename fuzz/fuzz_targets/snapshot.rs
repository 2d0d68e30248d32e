#![no_main]
//! Snapshot plaintext (CBOR).
use coffer_repo_format::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data) {
        if let Ok(bytes) = s.encode() {
            assert_eq!(Snapshot::decode(&bytes).ok(), Some(s));
        }
    }
});
