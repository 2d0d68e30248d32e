#![no_main]
//! Envelope parsing and authentication on arbitrary bytes, in every context.
mod common;
use coffer_repo_format::envelope::Context;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opener = common::vector_key().opener();
    for ctx in [
        Context::Config,
        Context::Index,
        Context::Snapshot,
        Context::PackHeader,
    ] {
        if let Ok(plain) = opener.open(ctx, data) {
            assert!(plain.len() + coffer_repo_format::envelope::OVERHEAD == data.len());
        }
    }
});
