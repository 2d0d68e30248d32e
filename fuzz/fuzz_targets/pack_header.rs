#![no_main]
//! Pack header plaintext, trailer and sealed header of a whole pack.
mod common;
use coffer_repo_format::pack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = pack::decode_header(data) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(pack::encode_header(&entries), data);
    }
    if data.len() >= pack::TRAILER_LEN {
        let len = data.len() as u64;
        if let Ok(start) = pack::header_start(len, &data[data.len() - pack::TRAILER_LEN..]) {
            assert!(start <= len - pack::TRAILER_LEN as u64);
            let opener = common::vector_key().opener();
            let _ = pack::open_header(
                &opener,
                start,
                &data[start as usize..data.len() - pack::TRAILER_LEN],
            );
        }
    }
});
