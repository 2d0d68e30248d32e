//! A local cache of what is read often from a slow store: the config, key
//! files, index files, snapshots and packs of trees.
//!
//! Everything cached is immutable in the repository and, except the config,
//! named by the BLAKE3 of its bytes: an entry is used only when its bytes
//! still hash to its name. The config carries its own BLAKE3 in the entry
//! and, being sealed with the master key, is also checked by the repository
//! when it opens it ([`Store::discard_cached`] drops it when it does not).
//! A damaged entry is deleted and the object read from the store again.
//!
//! Layout: `<cache dir>/<first 16 bytes of BLAKE3(location), hex>/<key>`,
//! written to a temporary file and renamed, so that concurrent processes
//! never see a half-written entry.

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;

use super::{DynStore, ObjectInfo, Store, StoreError, StoreErrorKind, WriteMode};

/// Packs of trees larger than this are not cached.
const MAX_CACHED_PACK: u64 = 256 * 1024 * 1024;

/// A store with a verified local cache in front of it.
#[derive(Debug)]
pub struct Caching {
    inner: DynStore,
    dir: PathBuf,
}

/// How an entry's bytes are checked.
enum Check {
    /// The name is the BLAKE3 of the bytes.
    Name,
    /// The entry ends with the BLAKE3 of the bytes before it.
    Trailer,
}

fn check_for(key: &str) -> Option<Check> {
    if key == "config" {
        return Some(Check::Trailer);
    }
    let cached = ["keys/", "index/", "snapshots/", "data/"]
        .iter()
        .any(|p| key.starts_with(p));
    (cached && !key.contains("..")).then_some(Check::Name)
}

fn name_matches(key: &str, bytes: &[u8]) -> bool {
    let name = key.rsplit('/').next().unwrap_or("");
    name == blake3::hash(bytes).to_hex().as_str()
}

impl Caching {
    /// A cache for the store at `location`, under `dir` (created when missing).
    pub fn new(inner: DynStore, dir: &Path, location: &str) -> crate::Result<Self> {
        let hash = blake3::hash(location.as_bytes());
        let dir = dir.join(hex::encode(&hash.as_bytes()[..16]));
        std::fs::create_dir_all(&dir).map_err(|e| {
            crate::Error::InvalidArgument(format!(
                "cannot create the cache directory {}: {e}; give another with --cache-dir, or use --no-cache",
                dir.display()
            ))
        })?;
        Ok(Caching { inner, dir })
    }

    /// The directory of this repository's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// A verified entry, or `None` (a damaged one is deleted).
    async fn lookup(&self, key: &str, check: &Check) -> Option<Bytes> {
        let path = self.path(key);
        let mut bytes = tokio::fs::read(&path).await.ok()?;
        let good = match check {
            Check::Name => name_matches(key, &bytes),
            Check::Trailer => match bytes.len().checked_sub(32) {
                Some(n) => {
                    let ok = blake3::hash(&bytes[..n]).as_bytes() == &bytes[n..];
                    bytes.truncate(n);
                    ok
                }
                None => false,
            },
        };
        if !good {
            tracing::warn!(
                "cache entry {} is damaged; discarding it and reading {key} from the store",
                path.display()
            );
            let _ = tokio::fs::remove_file(&path).await;
            return None;
        }
        Some(Bytes::from(bytes))
    }

    /// Stores an entry; a failure only means the next read goes to the store.
    async fn remember(&self, key: &str, check: &Check, bytes: &Bytes) {
        if let Check::Name = check {
            if !name_matches(key, bytes) {
                // Not what its name says: the caller will find out; never cache it.
                return;
            }
        }
        let path = self.path(key);
        let Some(parent) = path.parent() else { return };
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        let tmp = parent.join(format!(".tmp-{}", hex::encode(r)));
        let mut data = bytes.to_vec();
        if let Check::Trailer = check {
            data.extend_from_slice(blake3::hash(bytes).as_bytes());
        }
        let written = async {
            tokio::fs::create_dir_all(parent).await?;
            tokio::fs::write(&tmp, &data).await?;
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = written {
            tracing::debug!("cannot cache {key} at {}: {e}", path.display());
            let _ = tokio::fs::remove_file(&tmp).await;
        }
    }

    fn forget(&self, key: &str) {
        if check_for(key).is_some() {
            let _ = std::fs::remove_file(self.path(key));
        }
    }
}

#[async_trait::async_trait]
impl Store for Caching {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        // Packs are cached only when they hold trees (see get_tree_range).
        let Some(check) = check_for(key).filter(|_| !key.starts_with("data/")) else {
            return self.inner.get(key).await;
        };
        if let Some(b) = self.lookup(key, &check).await {
            return Ok(b);
        }
        let b = self.inner.get(key).await?;
        self.remember(key, &check, &b).await;
        Ok(b)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, range).await
    }

    async fn get_tree_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let Some(check) = check_for(key) else {
            return self.inner.get_tree_range(key, range).await;
        };
        let whole = match self.lookup(key, &check).await {
            Some(b) => b,
            None => {
                if self.inner.size(key).await? > MAX_CACHED_PACK {
                    return self.inner.get_tree_range(key, range).await;
                }
                let b = self.inner.get(key).await?;
                self.remember(key, &check, &b).await;
                b
            }
        };
        let (start, end) = (range.start as usize, range.end as usize);
        if range.start > range.end || end > whole.len() {
            return Err(StoreError {
                kind: StoreErrorKind::Permanent,
                operation: "reading",
                key: key.to_string(),
                message: format!(
                    "asked for bytes {}..{} of an object of {} bytes",
                    range.start,
                    range.end,
                    whole.len()
                ),
            });
        }
        Ok(whole.slice(start..end))
    }

    async fn size(&self, key: &str) -> Result<u64, StoreError> {
        self.inner.size(key).await
    }

    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> Result<(), StoreError> {
        self.inner.put(key, data, mode).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.forget(key);
        self.inner.delete(key).await
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>> {
        self.inner.list(prefix)
    }

    fn discard_cached(&self, key: &str) {
        self.forget(key);
        self.inner.discard_cached(key);
    }

    async fn conditional_writes(&self) -> Result<bool, StoreError> {
        self.inner.conditional_writes().await
    }

    async fn prepare_container(&self) -> Result<(), StoreError> {
        self.inner.prepare_container().await
    }

    fn staging_dir(&self) -> Option<PathBuf> {
        self.inner.staging_dir()
    }

    async fn put_file(&self, key: &str, path: &Path, mode: WriteMode) -> Result<(), StoreError> {
        self.inner.put_file(key, path, mode).await
    }
}
