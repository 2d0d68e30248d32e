#![no_main]
//! Key file JSON, and unwrapping with a fixed password (bounded costs only).
use coffer_repo_format::keys::KeyFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kf) = KeyFile::from_bytes(data) {
        // Keep each run fast: only derive with small costs.
        if kf.kdf.memory_kib <= 1024 && kf.kdf.iterations <= 2 && kf.kdf.parallelism <= 2 {
            let _ = kf.unwrap_key(b"vector password");
        }
    }
});
