#![no_main]
//! The chunker: chunks concatenate to the input and respect the bounds, and
//! cutting in one pass equals cutting chunk by chunk from each boundary.
use coffer_repo_format::chunker::{Chunker, ChunkerParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 33 {
        return;
    }
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&data[..32]);
    let level = data[32] % 4;
    let input = &data[33..];
    let params = ChunkerParams {
        min_size: 64,
        avg_size: 256,
        max_size: 1024,
        normalization: level,
    };
    let Ok(c) = Chunker::new(&seed, params) else {
        return;
    };
    let mut pos = 0;
    let mut lens = Vec::new();
    while pos < input.len() {
        let len = c.cut(&input[pos..]);
        assert!(len > 0 && len <= 1024);
        if pos + len < input.len() {
            assert!(len >= 64);
        }
        lens.push(len);
        pos += len;
    }
    assert_eq!(pos, input.len());
    assert_eq!(c.chunks(input).collect::<Vec<_>>(), lens);
});
