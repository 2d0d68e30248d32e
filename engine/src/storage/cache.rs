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
use coffer_repo_format::layout;
use futures::stream::BoxStream;

use super::{DynStore, ObjectInfo, Store, StoreError, StoreErrorKind, WriteMode};

/// Packs of trees larger than this are not cached.
const MAX_CACHED_PACK: u64 = 256 * 1024 * 1024;

/// Tree packs whose cached copy this process has verified, at most this many
/// (then the set starts again): a verified pack's trees are read by range.
const MAX_VERIFIED: usize = 4096;

/// A store with a verified local cache in front of it.
#[derive(Debug)]
pub struct Caching {
    inner: DynStore,
    dir: PathBuf,
    /// Cached tree packs verified whole by this process: their trees are
    /// read by range, without reading and hashing the whole pack again for
    /// each tree. A tree that then fails to open discards the entry
    /// ([`Store::discard_cached`]), as before.
    verified: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// How an entry's bytes are checked.
enum Check {
    /// The name is the BLAKE3 of the bytes.
    Name,
    /// The entry ends with the BLAKE3 of the bytes before it.
    Trailer,
}

fn check_for(key: &str) -> Option<Check> {
    if key == layout::CONFIG {
        return Some(Check::Trailer);
    }
    let cached = layout::CONTENT_ADDRESSED.iter().any(|p| key.starts_with(p));
    (cached && !key.contains("..")).then_some(Check::Name)
}

fn name_matches(key: &str, bytes: &[u8]) -> bool {
    layout::name(key) == blake3::hash(bytes).to_hex().as_str()
}

impl Caching {
    /// A cache for the store at `location`, under `dir` (created when missing).
    pub fn new(inner: DynStore, dir: &Path, location: &str) -> crate::Result<Self> {
        let hash = blake3::hash(location.as_bytes());
        let dir = dir.join(hex::encode(&hash.as_bytes()[..16]));
        std::fs::create_dir_all(&dir).map_err(|source| crate::Error::Cache {
            path: dir.clone(),
            source,
        })?;
        Ok(Caching {
            inner,
            dir,
            verified: Default::default(),
        })
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

    /// Deletes the entries under `prefix` whose keys are not in `present`.
    async fn sweep(&self, prefix: &str, present: &std::collections::HashSet<String>) {
        let Ok(mut dir) = tokio::fs::read_dir(self.path(prefix)).await else {
            return;
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let key = format!("{prefix}{name}");
            if !name.starts_with(".tmp-") && !present.contains(&key) {
                tracing::debug!("cache: {key} is no longer in the store; removing it");
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }

    /// `range` of the cached tree pack `key`, if this process verified it;
    /// `None` when it did not, or the entry is gone or shorter.
    async fn verified_range(&self, key: &str, range: &Range<u64>) -> Option<Bytes> {
        if !self.verified_set().contains(key) {
            return None;
        }
        let path = self.path(key);
        let (start, len) = (range.start, range.end.checked_sub(range.start)?);
        let read = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(path)?;
            if start + len > file.metadata()?.len() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let mut buf = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
            file.read_exact_at(&mut buf, start)?;
            Ok::<_, std::io::Error>(buf)
        })
        .await;
        match read {
            Ok(Ok(buf)) => Some(Bytes::from(buf)),
            _ => {
                self.verified_set().remove(key);
                None
            }
        }
    }

    fn verified_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, key: &str) {
        self.verified_set().remove(key);
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
        let Some(check) = check_for(key).filter(|_| !key.starts_with(layout::DATA)) else {
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
        if let Some(b) = self.verified_range(key, &range).await {
            return Ok(b);
        }
        let whole = match self.lookup(key, &check).await {
            Some(b) => {
                let mut verified = self.verified_set();
                if verified.len() >= MAX_VERIFIED {
                    verified.clear();
                }
                verified.insert(key.to_string());
                b
            }
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
        use futures::StreamExt;
        if !["keys/", "index/", "snapshots/"].contains(&prefix) {
            return self.inner.list(prefix);
        }
        // A complete listing tells which entries are gone from the store
        // (another host pruned): remove them, so the cache does not grow
        // without bound.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Some(
            std::collections::HashSet::new(),
        )));
        let record = seen.clone();
        let listed = self.inner.list(prefix).inspect(move |r| {
            let mut s = record.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(info) => {
                    if let Some(set) = s.as_mut() {
                        set.insert(info.key.clone());
                    }
                }
                Err(_) => *s = None,
            }
        });
        let sweep = futures::stream::once(async move {
            let complete = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(present) = complete {
                self.sweep(prefix, &present).await;
            }
        })
        .filter_map(|()| async { None });
        listed.chain(sweep).boxed()
    }

    fn discard_cached(&self, key: &str) {
        self.forget(key);
        self.inner.discard_cached(key);
    }

    fn uncached(&self) -> Option<DynStore> {
        Some(self.inner.uncached().unwrap_or_else(|| self.inner.clone()))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::ObjectStoreBackend;

    fn named(prefix: &str, bytes: &[u8]) -> String {
        format!("{prefix}{}", blake3::hash(bytes).to_hex())
    }

    fn setup() -> (tempfile::TempDir, ObjectStoreBackend, Caching) {
        let dir = tempfile::tempdir().unwrap();
        let inner = ObjectStoreBackend::memory();
        let cache = Caching::new(Arc::new(inner.clone()), dir.path(), "memory://t").unwrap();
        (dir, inner, cache)
    }

    #[tokio::test]
    async fn metadata_is_served_from_the_cache_once_read() {
        let (_dir, inner, cache) = setup();
        let body = Bytes::from_static(b"an index file");
        let key = named("index/", &body);
        inner
            .put(&key, body.clone(), WriteMode::CreateNew)
            .await
            .unwrap();
        inner
            .put("config", Bytes::from_static(b"cfg"), WriteMode::CreateNew)
            .await
            .unwrap();
        assert_eq!(cache.get(&key).await.unwrap(), body);
        assert_eq!(
            cache.get("config").await.unwrap(),
            Bytes::from_static(b"cfg")
        );
        // Gone from the store, still served: the cache answered.
        inner.delete(&key).await.unwrap();
        inner.delete("config").await.unwrap();
        assert_eq!(cache.get(&key).await.unwrap(), body);
        assert_eq!(
            cache.get("config").await.unwrap(),
            Bytes::from_static(b"cfg")
        );
        // Deleting through the cache forgets the entry.
        cache.delete(&key).await.unwrap();
        assert_eq!(
            cache.get(&key).await.unwrap_err().kind,
            StoreErrorKind::NotFound
        );
        // So does discard_cached.
        cache.discard_cached("config");
        assert_eq!(
            cache.get("config").await.unwrap_err().kind,
            StoreErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn entries_of_objects_gone_from_the_store_are_swept_by_a_listing() {
        use futures::TryStreamExt;
        let (_dir, inner, cache) = setup();
        let (a, b) = (
            Bytes::from_static(b"index a"),
            Bytes::from_static(b"index b"),
        );
        let (ka, kb) = (named("index/", &a), named("index/", &b));
        inner.put(&ka, a, WriteMode::CreateNew).await.unwrap();
        inner.put(&kb, b, WriteMode::CreateNew).await.unwrap();
        cache.get(&ka).await.unwrap();
        cache.get(&kb).await.unwrap();
        // Another host prunes b: the next full listing removes its entry.
        inner.delete(&kb).await.unwrap();
        let listed: Vec<_> = cache.list("index/").try_collect().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(cache.path(&ka).exists());
        assert!(!cache.path(&kb).exists());
    }

    #[tokio::test]
    async fn a_damaged_entry_is_discarded_and_read_again() {
        let (_dir, inner, cache) = setup();
        let body = Bytes::from_static(b"a snapshot");
        let key = named("snapshots/", &body);
        inner
            .put(&key, body.clone(), WriteMode::CreateNew)
            .await
            .unwrap();
        inner
            .put("config", Bytes::from_static(b"cfg"), WriteMode::CreateNew)
            .await
            .unwrap();
        cache.get(&key).await.unwrap();
        cache.get("config").await.unwrap();
        for k in [key.as_str(), "config"] {
            let path = cache.path(k);
            let mut b = std::fs::read(&path).unwrap();
            b[1] ^= 0x20;
            std::fs::write(&path, &b).unwrap();
        }
        assert_eq!(cache.get(&key).await.unwrap(), body);
        assert_eq!(
            cache.get("config").await.unwrap(),
            Bytes::from_static(b"cfg")
        );
        // Damaged and the store no longer has it: the damage is never served.
        let path = cache.path(&key);
        let mut b = std::fs::read(&path).unwrap();
        b[0] ^= 1;
        std::fs::write(&path, &b).unwrap();
        inner.delete(&key).await.unwrap();
        assert_eq!(
            cache.get(&key).await.unwrap_err().kind,
            StoreErrorKind::NotFound
        );
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn what_does_not_match_its_name_is_never_cached() {
        let (_dir, inner, cache) = setup();
        let key = named("index/", b"what the name says");
        inner
            .put(
                &key,
                Bytes::from_static(b"other bytes"),
                WriteMode::CreateNew,
            )
            .await
            .unwrap();
        assert_eq!(
            cache.get(&key).await.unwrap(),
            Bytes::from_static(b"other bytes")
        );
        assert!(!cache.path(&key).exists());
        // Mutable objects (sessions, plans) pass through uncached.
        inner
            .put("sessions/a", Bytes::from_static(b"1"), WriteMode::Overwrite)
            .await
            .unwrap();
        cache.get("sessions/a").await.unwrap();
        assert!(!cache.path("sessions/a").exists());
    }

    #[tokio::test]
    async fn tree_packs_are_kept_whole_and_data_reads_pass_through() {
        let (_dir, inner, cache) = setup();
        let pack = Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<_>>());
        let h = blake3::hash(&pack).to_hex();
        let key = format!("data/{}/{h}", &h[..2]);
        inner
            .put(&key, pack.clone(), WriteMode::CreateNew)
            .await
            .unwrap();
        assert_eq!(
            cache.get_tree_range(&key, 10..20).await.unwrap(),
            pack.slice(10..20)
        );
        assert_eq!(std::fs::read(cache.path(&key)).unwrap(), pack.to_vec());
        inner.delete(&key).await.unwrap();
        assert_eq!(
            cache.get_tree_range(&key, 4000..5000).await.unwrap(),
            pack.slice(4000..5000)
        );
        assert!(cache.get_tree_range(&key, 4000..5001).await.is_err());
        assert!(cache
            .get_tree_range(&key, Range { start: 20, end: 10 })
            .await
            .is_err());
        assert!(cache.verified_set().contains(&key));
        // A verified entry changed behind the cache's back: its ranges are
        // what the file holds now (the blob's own check catches that), and
        // once discarded, the pack is read from the store again.
        let mut changed = pack.to_vec();
        changed[15] ^= 1;
        std::fs::write(cache.path(&key), &changed).unwrap();
        assert_eq!(
            cache.get_tree_range(&key, 10..20).await.unwrap()[5],
            changed[15]
        );
        cache.discard_cached(&key);
        assert!(!cache.verified_set().contains(&key));
        inner
            .put(&key, pack.clone(), WriteMode::CreateNew)
            .await
            .unwrap();
        assert_eq!(
            cache.get_tree_range(&key, 10..20).await.unwrap(),
            pack.slice(10..20)
        );
        inner.delete(&key).await.unwrap();
        // Plain ranged reads (file contents) never use the cache.
        assert_eq!(
            cache.get_range(&key, 0..10).await.unwrap_err().kind,
            StoreErrorKind::NotFound
        );
    }
}
