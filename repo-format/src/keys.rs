//! The master key and the key files that wrap it.
//!
//! The master key is 96 random bytes: `data_key (32) || id_key (32) || chunker_seed (32)`.
//! A key file wraps it under a key-encryption key derived from a password with
//! Argon2id; several key files can wrap the same master key.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::chunker::Chunker;
use crate::envelope::{random_bytes, Opener, Sealer, NONCE_LEN, TAG_LEN};
use crate::error::{FormatError, Result};
use crate::id::BlobId;

/// The secret of a repository. Never stored in the clear.
///
/// The key material is private, is not `Clone` (share it behind an `Arc`),
/// and is overwritten with zeros when the key is dropped.
#[derive(PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    /// Input to the per-salt subkeys of the encryption envelope.
    data_key: [u8; 32],
    /// The BLAKE3 key for blob ids.
    id_key: [u8; 32],
    /// The key from which the chunker's gear table is derived.
    chunker_seed: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Result<Self> {
        Ok(MasterKey {
            data_key: random_bytes()?,
            id_key: random_bytes()?,
            chunker_seed: random_bytes()?,
        })
    }

    /// A new random master key whose chunker seed is `other`'s, so that both
    /// repositories cut the same content at the same places (`coffer init
    /// --copy-chunker-params`): what `coffer copy` needs to copy chunks
    /// without re-chunking. The data and id keys are new.
    pub fn generate_with_chunker_of(other: &MasterKey) -> Result<Self> {
        Ok(MasterKey {
            data_key: random_bytes()?,
            id_key: random_bytes()?,
            chunker_seed: other.chunker_seed,
        })
    }

    /// Whether `other` has the same chunker seed (with equal parameters,
    /// both repositories cut content at the same places).
    pub fn same_chunker_seed(&self, other: &MasterKey) -> bool {
        self.chunker_seed == other.chunker_seed
    }

    /// The 96-byte encoding wrapped by key files (zeroed when dropped).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 96]> {
        let mut out = Zeroizing::new([0u8; 96]);
        out[..32].copy_from_slice(&self.data_key);
        out[32..64].copy_from_slice(&self.id_key);
        out[64..].copy_from_slice(&self.chunker_seed);
        out
    }

    /// Reads the 96-byte encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != 96 {
            return Err(FormatError::malformed(
                "master key",
                format!("expected 96 bytes, found {}", bytes.len()),
            ));
        }
        let mut key = MasterKey {
            data_key: [0; 32],
            id_key: [0; 32],
            chunker_seed: [0; 32],
        };
        key.data_key.copy_from_slice(&bytes[..32]);
        key.id_key.copy_from_slice(&bytes[32..64]);
        key.chunker_seed.copy_from_slice(&bytes[64..]);
        Ok(key)
    }

    /// The id of a blob with this plaintext: BLAKE3 keyed with the id key.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// A sealer for a new writer session.
    pub fn sealer(&self) -> Result<Sealer> {
        Sealer::new(&self.data_key)
    }

    /// A sealer with a given salt. Only for test vectors (see [`Sealer::with_salt`]).
    pub fn sealer_with_salt(&self, salt: [u8; crate::envelope::SALT_LEN]) -> Sealer {
        Sealer::with_salt(&self.data_key, salt)
    }

    /// An opener for this repository's envelopes.
    pub fn opener(&self) -> Opener {
        Opener::new(&self.data_key)
    }

    /// The content-defined chunker of this repository.
    pub fn chunker(&self, params: crate::chunker::ChunkerParams) -> Result<Chunker> {
        Chunker::new(&self.chunker_seed, params)
    }
}

/// Argon2id parameters of one key file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always `"argon2id"` in this version.
    pub algorithm: String,
    /// Argon2 version number; 19 (0x13).
    pub version: u32,
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
    /// Random salt, base64 (standard alphabet, padded), 16 bytes.
    pub salt: String,
}

/// The cost of a new key's Argon2id derivation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfCost {
    /// 32 MiB, 4 passes, 1 lane: the least SPEC.md §3.2 recommends, about
    /// 0.15 s on one core of a current server. The command line measures the
    /// passes instead (`coffer_engine::keys::calibrate`).
    fn default() -> Self {
        KdfCost {
            memory_kib: 32 * 1024,
            iterations: 4,
            parallelism: 1,
        }
    }
}

/// Largest memory cost of a key file (1 GiB). Readers refuse more before
/// deriving anything, and writers never create more: a hostile key file in
/// the bucket cannot make opening the repository expensive (SPEC.md §3.2).
pub const MAX_KDF_MEMORY_KIB: u32 = 1024 * 1024;
/// Largest number of passes of a key file.
pub const MAX_KDF_ITERATIONS: u32 = 32;
/// Largest number of lanes of a key file.
pub const MAX_KDF_PARALLELISM: u32 = 16;
/// Largest product of memory (KiB) and passes: 4 GiB·passes, a few seconds on
/// one core.
pub const MAX_KDF_WORK: u64 = 4 * 1024 * 1024;

impl KdfCost {
    /// Memory times passes: what one derivation costs, roughly.
    pub fn work(&self) -> u64 {
        u64::from(self.memory_kib) * u64::from(self.iterations)
    }

    /// Whether readers accept this cost (SPEC.md §3.2); writers check it too.
    pub fn check(&self) -> Result<()> {
        let within = self.memory_kib <= MAX_KDF_MEMORY_KIB
            && (1..=MAX_KDF_ITERATIONS).contains(&self.iterations)
            && (1..=MAX_KDF_PARALLELISM).contains(&self.parallelism)
            && self.memory_kib >= 8 * self.parallelism
            && self.work() <= MAX_KDF_WORK;
        if within {
            return Ok(());
        }
        Err(FormatError::malformed(
            "key file",
            format!(
                "its Argon2id cost ({} KiB, {} passes, {} lanes) is outside what SPEC.md §3.2 \
                 allows (8 KiB per lane to {} KiB, 1 to {} passes, 1 to {} lanes, memory \
                 times passes at most {} KiB); coffer never creates such a key",
                self.memory_kib,
                self.iterations,
                self.parallelism,
                MAX_KDF_MEMORY_KIB,
                MAX_KDF_ITERATIONS,
                MAX_KDF_PARALLELISM,
                MAX_KDF_WORK
            ),
        ))
    }
}

impl KdfParams {
    /// The cost these parameters declare.
    pub fn cost(&self) -> KdfCost {
        KdfCost {
            memory_kib: self.memory_kib,
            iterations: self.iterations,
            parallelism: self.parallelism,
        }
    }
}

/// The current key file version.
pub const KEY_FILE_VERSION: u32 = 1;
const KEY_AAD: &[u8] = b"coffer.v1.keyfile";

/// A key file, stored as JSON at `keys/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    /// Format version of the key file; 1.
    pub version: u32,
    /// When the key was added (RFC 3339).
    pub created: String,
    /// Host that added the key.
    pub hostname: String,
    /// User that added the key.
    pub username: String,
    /// How the key-encryption key is derived from the password.
    pub kdf: KdfParams,
    /// base64 of `nonce (12) || AES-256-GCM(kek, nonce, master key (96), aad) || tag (16)`.
    pub data: String,
}

impl KeyFile {
    /// Wraps `master` under `password`.
    pub fn wrap(
        master: &MasterKey,
        password: &[u8],
        cost: KdfCost,
        created: String,
        hostname: String,
        username: String,
    ) -> Result<Self> {
        let salt: [u8; 16] = random_bytes()?;
        let nonce: [u8; NONCE_LEN] = random_bytes()?;
        Self::wrap_with(
            master, password, cost, salt, nonce, created, hostname, username,
        )
    }

    /// Wraps with a fixed salt and nonce. Only for test vectors.
    #[allow(clippy::too_many_arguments)]
    pub fn wrap_with(
        master: &MasterKey,
        password: &[u8],
        cost: KdfCost,
        salt: [u8; 16],
        nonce: [u8; NONCE_LEN],
        created: String,
        hostname: String,
        username: String,
    ) -> Result<Self> {
        cost.check()?;
        let kdf = KdfParams {
            algorithm: "argon2id".into(),
            version: 0x13,
            memory_kib: cost.memory_kib,
            iterations: cost.iterations,
            parallelism: cost.parallelism,
            salt: B64.encode(salt),
        };
        let kek = derive_kek(&kdf, password)?;
        let cipher = Aes256Gcm::new(&(*kek).into());
        let mut buf = Zeroizing::new(master.to_bytes().to_vec());
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from(nonce), KEY_AAD, buf.as_mut_slice().into())
            .unwrap_or_else(|_| unreachable!("96 bytes is a valid AES-GCM message"));
        let mut data = nonce.to_vec();
        data.extend_from_slice(&buf);
        data.extend_from_slice(tag.as_slice());
        Ok(KeyFile {
            version: KEY_FILE_VERSION,
            created,
            hostname,
            username,
            kdf,
            data: B64.encode(data),
        })
    }

    /// Unwraps the master key; [`FormatError::WrongPassword`] if the password does not fit.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<MasterKey> {
        self.check()?;
        let kek = derive_kek(&self.kdf, password)?;
        let data = B64
            .decode(&self.data)
            .map_err(|e| FormatError::malformed("key file", format!("data is not base64: {e}")))?;
        if data.len() != NONCE_LEN + 96 + TAG_LEN {
            return Err(FormatError::malformed(
                "key file",
                format!(
                    "wrapped key has {} bytes, expected {}",
                    data.len(),
                    NONCE_LEN + 96 + TAG_LEN
                ),
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&data[..NONCE_LEN]);
        let mut buf = Zeroizing::new(data[NONCE_LEN..NONCE_LEN + 96].to_vec());
        let tag = Tag::try_from(&data[NONCE_LEN + 96..])
            .map_err(|_| FormatError::malformed("key file", "bad tag length"))?;
        Aes256Gcm::new(&(*kek).into())
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                KEY_AAD,
                buf.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| FormatError::WrongPassword)?;
        MasterKey::from_bytes(&buf)
    }

    /// Checks version and parameter bounds before any expensive work.
    pub fn check(&self) -> Result<()> {
        if self.version != KEY_FILE_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "key file",
                found: self.version.into(),
                supported: KEY_FILE_VERSION.into(),
            });
        }
        let k = &self.kdf;
        if k.algorithm != "argon2id" || k.version != 0x13 {
            return Err(FormatError::malformed(
                "key file",
                format!(
                    "unknown key derivation {} version {}",
                    k.algorithm, k.version
                ),
            ));
        }
        k.cost().check()?;
        Ok(())
    }

    /// The stored bytes (pretty JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self)
            .unwrap_or_else(|_| unreachable!("a key file always serializes"));
        v.push(b'\n');
        v
    }

    /// Parses stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > 64 * 1024 {
            return Err(FormatError::TooLarge {
                what: "key file",
                size: bytes.len() as u64,
                limit: 64 * 1024,
            });
        }
        let kf: KeyFile = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::malformed("key file", e.to_string()))?;
        kf.check()?;
        Ok(kf)
    }
}

fn derive_kek(kdf: &KdfParams, password: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
    let salt = B64
        .decode(&kdf.salt)
        .map_err(|e| FormatError::malformed("key file", format!("salt is not base64: {e}")))?;
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| FormatError::malformed("key file", format!("Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut kek = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(password, &salt, kek.as_mut())
        .map_err(|e| FormatError::malformed("key file", format!("Argon2id: {e}")))?;
    Ok(kek)
}

#[cfg(test)]
pub(crate) const TEST_COST: KdfCost = KdfCost {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(master: &MasterKey, pw: &[u8]) -> KeyFile {
        KeyFile::wrap(
            master,
            pw,
            TEST_COST,
            "2026-01-01T00:00:00Z".into(),
            "h".into(),
            "u".into(),
        )
        .unwrap()
    }

    #[test]
    fn right_password_unwraps_wrong_one_is_reported() {
        let master = MasterKey::generate().unwrap();
        let kf = KeyFile::from_bytes(&wrap(&master, b"secret").to_bytes()).unwrap();
        assert_eq!(kf.unwrap_key(b"secret").unwrap(), master);
        assert_eq!(
            kf.unwrap_key(b"Secret").unwrap_err(),
            FormatError::WrongPassword
        );
    }

    #[test]
    fn hostile_costs_are_refused_before_deriving() {
        let master = MasterKey::generate().unwrap();
        let kf = wrap(&master, b"pw");
        // Each would take minutes or gigabytes; each is refused at once.
        for (m, t, p, v) in [
            (u32::MAX, 1, 1, 0x13),
            (4 * 1024 * 1024, 64, 1, 0x13),
            (MAX_KDF_MEMORY_KIB, 8, 1, 0x13),
            (64, 33, 1, 0x13),
            (64, 1, 17, 0x13),
            (64, 1, 0, 0x13),
            (64, 1, 1, 0x10),
        ] {
            let mut hostile = kf.clone();
            hostile.kdf.memory_kib = m;
            hostile.kdf.iterations = t;
            hostile.kdf.parallelism = p;
            hostile.kdf.version = v;
            let err = KeyFile::from_bytes(&hostile.to_bytes()).unwrap_err();
            assert!(matches!(err, FormatError::Malformed { .. }), "{err}");
            assert!(hostile.unwrap_key(b"pw").is_err());
        }
        // The largest cost allowed is accepted; writers cannot exceed it.
        let most = KdfCost {
            memory_kib: MAX_KDF_MEMORY_KIB,
            iterations: 4,
            parallelism: 1,
        };
        assert!(most.check().is_ok() && most.work() == MAX_KDF_WORK);
        let too_much = KdfCost {
            iterations: 5,
            ..most
        };
        let err = KeyFile::wrap(
            &master,
            b"pw",
            too_much,
            String::new(),
            String::new(),
            String::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("SPEC.md"), "{err}");
    }

    #[test]
    fn key_material_is_zeroed_on_drop_and_never_printed() {
        fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
        zeroized_on_drop::<MasterKey>();
        let master = MasterKey::from_bytes(&[0x42; 96]).unwrap();
        assert_eq!(format!("{master:?}"), "MasterKey(..)");
        let mut copy = MasterKey::from_bytes(&master.to_bytes()[..]).unwrap();
        copy.zeroize();
        assert_eq!(&copy.to_bytes()[..], &[0u8; 96][..]);
    }

    #[test]
    fn unknown_version_is_refused() {
        let master = MasterKey::generate().unwrap();
        let mut kf = wrap(&master, b"pw");
        kf.version = 2;
        let err = KeyFile::from_bytes(&kf.to_bytes()).unwrap_err();
        assert!(matches!(
            err,
            FormatError::UnsupportedVersion { found: 2, .. }
        ));
    }
}
