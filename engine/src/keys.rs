//! Key management: list, add, remove and change the key files of a repository.
//!
//! Every key file wraps the same master key under its own password, so a key
//! can be given to each person or namespace and withdrawn without re-encrypting
//! anything.

use std::time::Instant;

use bytes::Bytes;

use coffer_repo_format::KeyId;

use crate::error::{Error, Missing, Result};
use crate::repository::{layout, list_ids, now_rfc3339, Repository};
use crate::storage::{StoreErrorKind, WriteMode};

pub use crate::identity::KeyOwner;
pub use coffer_repo_format::keys::*;

/// One key file as `key list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyInfo {
    /// Its id.
    pub id: KeyId,
    /// Whether this session opened the repository with it.
    pub current: bool,
    /// When it was added.
    pub created: String,
    /// Host that added it.
    pub hostname: String,
    /// User that added it.
    pub username: String,
    /// Its Argon2id parameters.
    pub kdf: Option<KdfParams>,
    /// Why it could not be read, if it is damaged.
    pub damaged: Option<String>,
}

/// The password held in a file, a command's output or a Secret's value: the
/// bytes before the first line feed, without a carriage return just before
/// it. Nothing else is changed: no Unicode normalisation, and any bytes are
/// accepted (SPEC.md §3.2).
pub fn password_line(bytes: &[u8]) -> &[u8] {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Memory of the Argon2id derivation that [`calibrate`] picks: 32 MiB.
pub const CALIBRATED_MEMORY_KIB: u32 = 32 * 1024;
/// Time one key derivation should take when [`calibrate`] picks the passes.
pub const CALIBRATION_TARGET_MS: u128 = 250;

/// Argon2id parameters for a new key that take about [`CALIBRATION_TARGET_MS`]
/// on this machine with [`CALIBRATED_MEMORY_KIB`] of memory: the number of
/// passes is measured (at least 4, at most 32), memory and lanes (1) are fixed.
///
/// Every command derives the key once, so this cost is paid by every command:
/// 32 MiB and a quarter second keep a short command (an unchanged backup) fast
/// and small while staying above OWASP's Argon2id minimums (19 MiB and 2
/// passes) by a wide margin.
pub fn calibrate() -> KdfCost {
    let probe = KdfCost {
        memory_kib: CALIBRATED_MEMORY_KIB,
        iterations: 1,
        parallelism: 1,
    };
    let start = Instant::now();
    let ok = KeyFile::wrap_with(
        &MasterKey::from_bytes(&[0u8; 96])
            .unwrap_or_else(|_| unreachable!("96 bytes is a master key")),
        b"calibration",
        probe,
        [0; 16],
        [0; 12],
        String::new(),
        String::new(),
        String::new(),
    )
    .is_ok();
    let one_pass = start.elapsed().as_millis().max(1);
    let iterations = if ok {
        (CALIBRATION_TARGET_MS / one_pass).clamp(4, 32) as u32
    } else {
        4
    };
    KdfCost {
        iterations,
        ..probe
    }
}

impl Repository {
    /// Every key file, damaged ones included (with the reason).
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let ids = list_ids::<KeyId>(self.store(), layout::KEYS).await?;
        let mut out = Vec::new();
        for id in ids {
            let info = match self.store().get(&layout::key(&id)).await {
                Ok(bytes) if KeyId::of(&bytes) != id => {
                    damaged(id, "its content does not match its name".into())
                }
                Ok(bytes) => match KeyFile::from_bytes(&bytes) {
                    Ok(kf) => KeyInfo {
                        id,
                        current: id == self.key_id(),
                        created: kf.created,
                        hostname: kf.hostname,
                        username: kf.username,
                        kdf: Some(kf.kdf),
                        damaged: None,
                    },
                    Err(e) => damaged(id, e.to_string()),
                },
                Err(e) if e.kind == StoreErrorKind::NotFound => continue,
                Err(e) => return Err(self.store_err(e)),
            };
            out.push(info);
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The key file `id` as stored (`coffer cat key`): its KDF parameters and
    /// wrapped master key, never anything unwrapped.
    pub async fn read_key_file(&self, id: &KeyId) -> Result<KeyFile> {
        let what = || format!("key file {id}");
        let bytes = self.store().get(&layout::key(id)).await.map_err(|e| {
            if e.kind == StoreErrorKind::NotFound {
                Error::NotFound {
                    what: what(),
                    missing: crate::error::Missing::Key,
                }
            } else {
                self.store_err(e)
            }
        })?;
        KeyFile::from_bytes(&bytes).map_err(|e| Error::corrupt(what(), e))
    }

    /// Adds a key file that wraps this repository's master key under `password`,
    /// owned by this process's host and user.
    pub async fn add_key(&self, password: &[u8], cost: KdfCost) -> Result<KeyId> {
        self.add_key_as(password, cost, KeyOwner::current()).await
    }

    /// As [`Repository::add_key`], recording `owner` in the key file (a
    /// daemon adding a key for a namespace, say).
    pub async fn add_key_as(
        &self,
        password: &[u8],
        cost: KdfCost,
        owner: KeyOwner,
    ) -> Result<KeyId> {
        if password.is_empty() {
            return Err(Error::InvalidArgument(
                "the new password must not be empty".into(),
            ));
        }
        self.prepare_writes().await?;
        let me = owner;
        let kf = {
            let (key, password) = (
                self.key().clone(),
                zeroize::Zeroizing::new(password.to_vec()),
            );
            crate::repository::blocking(move || {
                KeyFile::wrap(
                    &key,
                    &password,
                    cost,
                    now_rfc3339(),
                    me.hostname,
                    me.username,
                )
            })
            .await?
        }
        .map_err(|e| Error::InvalidArgument(format!("cannot create the key: {e}")))?;
        let bytes = kf.to_bytes();
        let id = KeyId::of(&bytes);
        self.store()
            .put(&layout::key(&id), Bytes::from(bytes), WriteMode::CreateNew)
            .await
            .map_err(|e| self.store_err(e))?;
        Ok(id)
    }

    /// Removes a key file. Refuses the key this session uses and the last key
    /// that opens the repository.
    pub async fn remove_key(&self, id: &KeyId) -> Result<()> {
        if *id == self.key_id() {
            return Err(Error::KeyInUse { key: id.short() });
        }
        let keys = self.list_keys().await?;
        if !keys.iter().any(|k| k.id == *id) {
            return Err(Error::NotFound {
                what: format!("key {id}"),
                missing: Missing::Key,
            });
        }
        let usable = keys
            .iter()
            .filter(|k| k.damaged.is_none() && k.id != *id)
            .count();
        if usable == 0 {
            return Err(Error::InvalidArgument(format!(
                "key {} is the last usable key; add another one first",
                id.short()
            )));
        }
        self.store()
            .delete(&layout::key(id))
            .await
            .map_err(|e| self.store_err(e))
    }

    /// Replaces the key in use with a new one for `new_password`: the new key
    /// file is written first, then the old one removed. Returns the new key's id.
    pub async fn change_password(&mut self, new_password: &[u8], cost: KdfCost) -> Result<KeyId> {
        let old = self.key_id();
        let new = self.add_key(new_password, cost).await?;
        self.set_key_id(new);
        self.store()
            .delete(&layout::key(&old))
            .await
            .map_err(|e| self.store_err(e))?;
        Ok(new)
    }
}

fn damaged(id: KeyId, why: String) -> KeyInfo {
    KeyInfo {
        id,
        current: false,
        created: String::new(),
        hostname: String::new(),
        username: String::new(),
        kdf: None,
        damaged: Some(why),
    }
}

#[cfg(test)]
mod tests {
    use super::password_line;

    #[test]
    fn a_password_is_its_first_line_and_otherwise_untouched() {
        assert_eq!(password_line(b"secret\n"), b"secret");
        assert_eq!(password_line(b"secret\r\nsecond line\n"), b"secret");
        assert_eq!(password_line(b" spaced \t"), b" spaced \t");
        assert_eq!(password_line(b"\xff\xfe not utf-8"), b"\xff\xfe not utf-8");
        // "é" precomposed and decomposed stay two different passwords.
        assert_ne!(
            password_line("\u{e9}".as_bytes()),
            password_line("e\u{301}".as_bytes())
        );
        assert_eq!(password_line(b"\n"), b"");
    }
}
