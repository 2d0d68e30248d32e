#![no_main]
//! Tree page plaintext (CBOR).
use coffer_repo_format::tree::TreePage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = TreePage::decode(data) {
        // A decoded page re-encodes and decodes to itself.
        if let Ok(bytes) = page.encode() {
            assert_eq!(TreePage::decode(&bytes).ok(), Some(page));
        }
    }
});
