//! The encryption envelope around every blob and every encrypted file.
//!
//! ```text
//! envelope = version (1 byte, 0x01) || salt (16) || nonce (12) || ciphertext || tag (16)
//! subkey   = HKDF-SHA256(ikm = data key, salt = salt, info = "coffer.v1.subkey", L = 32)
//! (ciphertext, tag) = AES-256-GCM(subkey, nonce, plaintext, aad)
//! ```
//!
//! A writer draws a random salt per session (a [`Sealer`]) and a random nonce per
//! message, and seals at most [`MAX_MESSAGES_PER_SALT`] messages under one salt, so
//! that no AES key is ever used for more than 2^24 random nonces.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::error::{FormatError, Result};

/// The version byte that starts every envelope of this format.
pub const ENVELOPE_VERSION: u8 = 1;
/// Length of the per-session salt.
pub const SALT_LEN: usize = 16;
/// Length of the per-message nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its plaintext.
pub const OVERHEAD: usize = 1 + SALT_LEN + NONCE_LEN + TAG_LEN;
/// The most messages a writer seals under one salt before it draws a new one.
pub const MAX_MESSAGES_PER_SALT: u64 = 1 << 24;

const SUBKEY_INFO: &[u8] = b"coffer.v1.subkey";

/// What an envelope holds; bound into the additional authenticated data so that
/// an envelope cannot be moved to a place where another kind is expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context<'a> {
    /// A blob, bound to its type byte and id.
    Blob {
        /// [`crate::blob::BlobType`] as its byte.
        blob_type: u8,
        /// The blob's 32-byte id.
        id: &'a [u8; 32],
    },
    /// The repository config file.
    Config,
    /// An index file.
    Index,
    /// A snapshot file.
    Snapshot,
    /// The header at the end of a pack file.
    PackHeader,
    /// A session or lock object (concurrency protocol).
    Session,
    /// A prune plan.
    Plan,
}

impl Context<'_> {
    /// The additional authenticated data for this context.
    pub fn aad(&self) -> Vec<u8> {
        match self {
            Context::Blob { blob_type, id } => {
                let mut aad = Vec::with_capacity(14 + 1 + 32);
                aad.extend_from_slice(b"coffer.v1.blob");
                aad.push(*blob_type);
                aad.extend_from_slice(&id[..]);
                aad
            }
            Context::Config => b"coffer.v1.config".to_vec(),
            Context::Index => b"coffer.v1.index".to_vec(),
            Context::Snapshot => b"coffer.v1.snapshot".to_vec(),
            Context::PackHeader => b"coffer.v1.packheader".to_vec(),
            Context::Session => b"coffer.v1.session".to_vec(),
            Context::Plan => b"coffer.v1.plan".to_vec(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Context::Blob { .. } => "blob",
            Context::Config => "config",
            Context::Index => "index file",
            Context::Snapshot => "snapshot",
            Context::PackHeader => "pack header",
            Context::Session => "session",
            Context::Plan => "prune plan",
        }
    }
}

/// Derives the AES-256 subkey for one salt (zeroed when dropped).
pub fn subkey(data_key: &[u8; 32], salt: &[u8; SALT_LEN]) -> zeroize::Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(salt), data_key);
    let mut okm = zeroize::Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
    hk.expand(SUBKEY_INFO, okm.as_mut())
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
    okm
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| FormatError::Random(e.to_string()))?;
    Ok(b)
}

/// Seals messages for one writer session: one salt, one subkey, fresh nonces.
///
/// A `Sealer` draws a new salt by itself after [`MAX_MESSAGES_PER_SALT`] messages.
pub struct Sealer {
    data_key: [u8; 32],
    salt: [u8; SALT_LEN],
    cipher: Aes256Gcm,
    sealed: u64,
}

impl Sealer {
    /// A sealer with a fresh random salt.
    pub fn new(data_key: &[u8; 32]) -> Result<Self> {
        Ok(Self::with_salt(data_key, random_bytes()?))
    }

    /// A sealer with a given salt. Only for test vectors: reusing a salt across
    /// sessions weakens the nonce bound.
    pub fn with_salt(data_key: &[u8; 32], salt: [u8; SALT_LEN]) -> Self {
        let key = subkey(data_key, &salt);
        Sealer {
            data_key: *data_key,
            salt,
            cipher: Aes256Gcm::new(&(*key).into()),
            sealed: 0,
        }
    }

    /// Seals `plaintext` into a new envelope.
    pub fn seal(&mut self, context: Context<'_>, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.seal_into(context, plaintext, &mut out)?;
        Ok(out)
    }

    /// Seals `plaintext`, appending the envelope to `out`.
    pub fn seal_into(
        &mut self,
        context: Context<'_>,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.seal_parts_into(context, &[plaintext], out)
    }

    /// Seals the concatenation of `parts` (saves a copy when a prefix is added).
    pub fn seal_parts_into(
        &mut self,
        context: Context<'_>,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        if self.sealed >= MAX_MESSAGES_PER_SALT {
            *self = Sealer::new(&self.data_key)?;
        }
        let nonce: [u8; NONCE_LEN] = random_bytes()?;
        self.sealed += 1;
        self.seal_with_nonce(context, parts, nonce, out);
        Ok(())
    }

    /// Seals with a caller-chosen nonce. Only for test vectors.
    pub fn seal_with_nonce(
        &self,
        context: Context<'_>,
        parts: &[&[u8]],
        nonce: [u8; NONCE_LEN],
        out: &mut Vec<u8>,
    ) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        out.reserve(len + OVERHEAD);
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&nonce);
        let start = out.len();
        for p in parts {
            out.extend_from_slice(p);
        }
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &context.aad(),
                (&mut out[start..]).into(),
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM accepts messages up to 64 GiB"));
        out.extend_from_slice(tag.as_slice());
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data_key);
    }
}

/// Opens envelopes, caching the subkeys of recently seen salts.
pub struct Opener {
    data_key: [u8; 32],
    cache: std::sync::Mutex<Vec<([u8; SALT_LEN], Aes256Gcm)>>,
}

const OPENER_CACHE: usize = 32;

impl Drop for Opener {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data_key);
    }
}

impl Opener {
    /// An opener for envelopes sealed under `data_key`.
    pub fn new(data_key: &[u8; 32]) -> Self {
        Opener {
            data_key: *data_key,
            cache: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn cipher(&self, salt: &[u8; SALT_LEN]) -> Aes256Gcm {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = cache.iter().position(|(s, _)| s == salt) {
            return cache[pos].1.clone();
        }
        let cipher = Aes256Gcm::new(&(*subkey(&self.data_key, salt)).into());
        if cache.len() >= OPENER_CACHE {
            cache.remove(0);
        }
        cache.push((*salt, cipher.clone()));
        cipher
    }

    /// Authenticates and decrypts an envelope.
    pub fn open(&self, context: Context<'_>, envelope: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_into(context, envelope, &mut out)?;
        Ok(out)
    }

    /// Authenticates and decrypts an envelope into `out` (cleared first), so
    /// that a caller can reuse one buffer.
    pub fn open_into(
        &self,
        context: Context<'_>,
        envelope: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        out.clear();
        let what = context.name();
        if envelope.len() < OVERHEAD {
            return Err(FormatError::Truncated {
                what,
                needed: OVERHEAD as u64,
                available: envelope.len() as u64,
            });
        }
        if envelope[0] != ENVELOPE_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what,
                found: envelope[0].into(),
                supported: ENVELOPE_VERSION.into(),
            });
        }
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&envelope[1..1 + SALT_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&envelope[1 + SALT_LEN..1 + SALT_LEN + NONCE_LEN]);
        let body = &envelope[1 + SALT_LEN + NONCE_LEN..];
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| FormatError::malformed(what, "bad tag length"))?;
        out.extend_from_slice(ciphertext);
        let ok = self.cipher(&salt).decrypt_inout_detached(
            &Nonce::from(nonce),
            &context.aad(),
            out.as_mut_slice().into(),
            &tag,
        );
        if ok.is_err() {
            out.clear();
            return Err(FormatError::Authentication { what });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn open_inverts_seal() {
        let mut sealer = Sealer::new(&KEY).unwrap();
        let env = sealer.seal(Context::Index, b"hello").unwrap();
        assert_eq!(env.len(), 5 + OVERHEAD);
        assert_eq!(
            Opener::new(&KEY).open(Context::Index, &env).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn a_flipped_byte_anywhere_fails_authentication() {
        let mut sealer = Sealer::new(&KEY).unwrap();
        let env = sealer.seal(Context::Snapshot, b"some snapshot").unwrap();
        for i in 1..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            let err = Opener::new(&KEY).open(Context::Snapshot, &bad).unwrap_err();
            assert_eq!(
                err,
                FormatError::Authentication { what: "snapshot" },
                "byte {i}"
            );
        }
    }

    #[test]
    fn context_is_bound() {
        let mut sealer = Sealer::new(&KEY).unwrap();
        let id = [1u8; 32];
        let env = sealer
            .seal(
                Context::Blob {
                    blob_type: 0,
                    id: &id,
                },
                b"x",
            )
            .unwrap();
        let opener = Opener::new(&KEY);
        assert!(opener
            .open(
                Context::Blob {
                    blob_type: 1,
                    id: &id
                },
                &env
            )
            .is_err());
        assert!(opener
            .open(
                Context::Blob {
                    blob_type: 0,
                    id: &[2; 32]
                },
                &env
            )
            .is_err());
        assert!(opener
            .open(
                Context::Blob {
                    blob_type: 0,
                    id: &id
                },
                &env
            )
            .is_ok());
        assert!(opener.open(Context::Index, &env).is_err());
    }

    #[test]
    fn short_and_unknown_version_envelopes_are_refused() {
        let opener = Opener::new(&KEY);
        assert!(matches!(
            opener.open(Context::Config, &[1; 10]),
            Err(FormatError::Truncated { .. })
        ));
        let mut env = Sealer::new(&KEY)
            .unwrap()
            .seal(Context::Config, b"c")
            .unwrap();
        env[0] = 9;
        assert!(matches!(
            opener.open(Context::Config, &env),
            Err(FormatError::UnsupportedVersion { found: 9, .. })
        ));
    }
}
