#![no_main]
//! Beacon and prune-plan plaintexts (CBOR): decoding never panics, and what
//! decodes encodes back to an equal object.
use coffer_repo_format::protocol::{Beacon, StoredPlan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Beacon::decode(data) {
        let bytes = b.encode().expect("a decoded beacon encodes");
        assert_eq!(Beacon::decode(&bytes).ok(), Some(b));
    }
    if let Ok(p) = StoredPlan::decode(data) {
        let bytes = p.encode().expect("a decoded plan encodes");
        assert_eq!(StoredPlan::decode(&bytes).ok(), Some(p));
    }
});
