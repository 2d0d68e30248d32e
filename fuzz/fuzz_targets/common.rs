// Shared by the targets: the master key of the golden vectors (bytes 0..96),
// so that seeds from repo-format/testdata decrypt and reach the decoders.
#[allow(dead_code)]
pub fn vector_key() -> coffer_repo_format::keys::MasterKey {
    let bytes: Vec<u8> = (0u8..96).collect();
    match coffer_repo_format::keys::MasterKey::from_bytes(&bytes) {
        Ok(k) => k,
        Err(_) => unreachable!("96 bytes is a master key"),
    }
}
