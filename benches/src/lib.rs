//! Benchmarks of coffer's pipeline stages (`cargo bench -p coffer-benches`),
//! and the inputs they share.

/// Volume-like test data: a mix of text, random and zero regions.
pub fn volume_like(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(b"coffer bench")
        .finalize_xof()
        .fill(&mut out);
    // A third text-like (compressible), a sixth zeros, the rest random.
    let words: &[&[u8]] = &[
        b"INSERT INTO t VALUES (",
        b"42, ",
        b"'volume', ",
        b"NULL);\n",
        b"2026-11-23 ",
    ];
    let mut pos = 0;
    while pos < len / 3 {
        let w = words[out[pos + 1] as usize % words.len()];
        let n = w.len().min(len / 3 - pos);
        out[pos..pos + n].copy_from_slice(&w[..n]);
        pos += n;
    }
    let z = len / 2;
    out[z..z + len / 6].fill(0);
    out
}
