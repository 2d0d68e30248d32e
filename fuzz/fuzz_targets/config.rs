#![no_main]
//! Repository config plaintext (CBOR).
use coffer_repo_format::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Config::decode(data) {
        assert!(c.validate().is_ok());
    }
});
