//! [`Store`] over any `object_store` implementation.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{ObjectInfo, Store, StoreError, StoreErrorKind, WriteMode};

/// A [`Store`] backed by an `object_store` implementation.
#[derive(Debug, Clone)]
pub struct ObjectStoreBackend {
    inner: Arc<dyn ObjectStore>,
    location: String,
    /// The root directory, for a local filesystem store.
    local_root: Option<std::path::PathBuf>,
    /// Buffers of a local store's ranged reads.
    read_buffers: Arc<super::local_read::Pool>,
    /// Set for stores reached over the network.
    remote: Option<Arc<Remote>>,
}

/// What a network store needs beyond the `object_store` client.
#[derive(Debug)]
pub(crate) struct Remote {
    /// Objects at least this large are uploaded in parts.
    pub multipart_threshold: usize,
    /// The size of one part.
    pub part_size: usize,
    /// How to create the bucket when it is missing (S3 only).
    #[cfg(feature = "cloud")]
    pub bucket: Option<super::bucket::BucketMaker>,
    /// Where this kind of store takes its credentials from, for messages.
    pub credentials_hint: &'static str,
    /// The probe's answer: does the store refuse a second create-if-absent write?
    pub conditional_writes: tokio::sync::OnceCell<bool>,
}

/// A probe object's key prefix; the probe writes one twice with create-if-absent.
pub use coffer_repo_format::layout::PROBES as PROBE_PREFIX;

/// The staging directory inside a local repository (writer-private; readers ignore it).
pub use coffer_repo_format::layout::STAGING;

impl ObjectStoreBackend {
    /// Wraps an `object_store` implementation; `location` is shown in messages.
    pub fn new(inner: Arc<dyn ObjectStore>, location: impl Into<String>) -> Self {
        ObjectStoreBackend {
            inner,
            location: location.into(),
            local_root: None,
            read_buffers: Arc::default(),
            remote: None,
        }
    }

    /// A store reached over the network: errors are classified by HTTP status,
    /// large objects are uploaded in parts, and create-if-absent is probed.
    #[cfg_attr(not(feature = "cloud"), allow(dead_code))]
    pub(crate) fn remote(
        inner: Arc<dyn ObjectStore>,
        location: impl Into<String>,
        remote: Remote,
    ) -> Self {
        ObjectStoreBackend {
            remote: Some(Arc::new(remote)),
            ..Self::new(inner, location)
        }
    }

    fn wrap(&self, operation: &'static str, key: &str, e: object_store::Error) -> StoreError {
        let kind = match classify(&e) {
            StoreErrorKind::Transient if self.remote.is_none() => StoreErrorKind::Permanent,
            StoreErrorKind::Transient => classify_status(&e.to_string()),
            k => k,
        };
        let mut message = super::redact(&super::chain(&e));
        if let Some(remote) = &self.remote {
            if message.contains("169.254.169.254") {
                message.push_str(&format!(
                    " (no credentials in the environment, and no instance metadata service: {})",
                    remote.credentials_hint
                ));
            }
        }
        StoreError {
            kind,
            operation,
            key: key.to_string(),
            message,
        }
    }

    async fn put_parts(&self, remote: &Remote, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = Path::from(key);
        let upload = self
            .inner
            .put_multipart(&path)
            .await
            .map_err(|e| self.wrap("writing", key, e))?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, remote.part_size);
        w.put(data);
        w.finish().await.map_err(|e| self.wrap("writing", key, e))?;
        Ok(())
    }

    /// Writes a probe object twice with create-if-absent and reports whether
    /// the second write was refused. Some S3-compatible stores accept the
    /// condition header and overwrite anyway.
    async fn probe(&self) -> Result<bool, StoreError> {
        let mut r = [0u8; 16];
        getrandom::fill(&mut r).map_err(|e| StoreError {
            kind: StoreErrorKind::Permanent,
            operation: "probing",
            key: PROBE_PREFIX.into(),
            message: e.to_string(),
        })?;
        let key = coffer_repo_format::layout::probe(&hex::encode(r));
        let path = Path::from(key.as_str());
        let put = |b: &'static [u8]| {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            self.inner.put_opts(&path, PutPayload::from_static(b), opts)
        };
        if let Err(e) = put(b"first").await {
            // Some stores refuse the condition header itself (501, 400). If a
            // plain write works, they are stores without conditional writes.
            let first = self.wrap("probing with", &key, e);
            if first.kind == StoreErrorKind::Transient {
                return Err(first);
            }
            let plain = PutOptions::default();
            let written = self
                .inner
                .put_opts(&path, PutPayload::from_static(b"first"), plain)
                .await;
            let _ = self.delete(&key).await;
            return match written {
                Ok(_) => {
                    tracing::info!(
                        "{}: create-if-absent refused ({first}); plain writes work",
                        self.location
                    );
                    Ok(false)
                }
                Err(_) => Err(first),
            };
        }
        let second = put(b"second").await;
        let kept = self.get(&key).await;
        let _ = self.delete(&key).await;
        let honoured = match second {
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => true,
            Ok(_) => false,
            Err(e) => {
                return Err(self.wrap("probing with", &key, e));
            }
        };
        Ok(honoured && kept?.as_ref() == b"first")
    }

    /// A new, empty in-memory store.
    pub fn memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()), "memory://")
    }

    /// A local directory; created first when `create` is set.
    pub fn local(dir: &std::path::Path, create: bool) -> Result<Self, StoreError> {
        let err = |message: String| StoreError {
            kind: StoreErrorKind::Permanent,
            operation: "opening",
            key: dir.display().to_string(),
            message,
        };
        if create {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let abs = std::path::absolute(dir).map_err(|e| err(e.to_string()))?;
        if !abs.is_dir() {
            return Err(StoreError {
                kind: StoreErrorKind::NotFound,
                ..err("no such directory".into())
            });
        }
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&abs)
            .map_err(|e| err(e.to_string()))?
            .with_automatic_cleanup(true);
        let mut store = Self::new(Arc::new(fs), abs.display().to_string());
        store.local_root = Some(abs);
        Ok(store)
    }
}

fn classify(e: &object_store::Error) -> StoreErrorKind {
    match e {
        object_store::Error::NotFound { .. } => StoreErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            StoreErrorKind::AlreadyExists
        }
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
            StoreErrorKind::Transient
        }
        _ => StoreErrorKind::Permanent,
    }
}

/// A network error with an HTTP status: 4xx answers other than 408 and 429
/// will not change when retried; everything else (5xx, timeouts, resets) may.
fn classify_status(message: &str) -> StoreErrorKind {
    let status = message
        .split("status code: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(408 | 429) => StoreErrorKind::Transient,
        Some(400..=499) => StoreErrorKind::Permanent,
        _ => StoreErrorKind::Transient,
    }
}

/// Whether `key` names a path below a local store's root (no `..`, no
/// leading `/`, no empty part), as every key the engine makes does.
fn is_relative_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

fn wrap_io(operation: &'static str, key: &str, e: std::io::Error) -> StoreError {
    StoreError {
        kind: if e.kind() == std::io::ErrorKind::NotFound {
            StoreErrorKind::NotFound
        } else {
            StoreErrorKind::Permanent
        },
        operation,
        key: key.to_string(),
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl Store for ObjectStoreBackend {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let r = self
            .inner
            .get(&Path::from(key))
            .await
            .map_err(|e| self.wrap("reading", key, e))?;
        // Checked before the body is read: a huge object at a key where no
        // valid one is that large (a hostile `config`, say) costs nothing.
        let max = coffer_repo_format::layout::max_stored_size(key);
        if r.meta.size > max {
            return Err(StoreError {
                kind: StoreErrorKind::Permanent,
                operation: "reading",
                key: key.to_string(),
                message: format!(
                    "{} bytes, more than any valid object there ({max}): damaged or not \
                     written by coffer; not read",
                    r.meta.size
                ),
            });
        }
        r.bytes().await.map_err(|e| self.wrap("reading", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        if let Some(root) = self.local_root.as_ref().filter(|_| is_relative_key(key)) {
            let (path, pool, owned) = (root.join(key), self.read_buffers.clone(), key.to_string());
            return tokio::task::spawn_blocking(move || {
                super::local_read::read_range(&pool, &path, &owned, range)
            })
            .await
            .map_err(|e| StoreError {
                kind: StoreErrorKind::Transient,
                operation: "reading",
                key: key.to_string(),
                message: e.to_string(),
            })?;
        }
        let want = range.end.saturating_sub(range.start);
        let b = self
            .inner
            .get_range(&Path::from(key), range.clone())
            .await
            .map_err(|e| self.wrap("reading", key, e))?;
        if b.len() as u64 != want {
            return Err(StoreError {
                kind: StoreErrorKind::Transient,
                operation: "reading",
                key: key.to_string(),
                message: format!(
                    "asked for bytes {}..{} and got {} bytes (object shorter than expected?)",
                    range.start,
                    range.end,
                    b.len()
                ),
            });
        }
        Ok(b)
    }

    async fn size(&self, key: &str) -> Result<u64, StoreError> {
        let m = self
            .inner
            .head(&Path::from(key))
            .await
            .map_err(|e| self.wrap("reading", key, e))?;
        Ok(m.size)
    }

    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> Result<(), StoreError> {
        let mut opts = PutOptions {
            mode: match mode {
                WriteMode::Overwrite => PutMode::Overwrite,
                WriteMode::CreateNew => PutMode::Create,
            },
            ..Default::default()
        };
        if let Some(remote) = &self.remote {
            let fallback =
                mode == WriteMode::CreateNew && remote.conditional_writes.get() == Some(&false);
            if fallback
                || (mode == WriteMode::CreateNew && data.len() >= remote.multipart_threshold)
            {
                // The store would not refuse the write (or a multipart upload
                // cannot carry the condition): look first. Racy, which is
                // why nothing in the engine depends on create-if-absent.
                match self.inner.head(&Path::from(key)).await {
                    Ok(_) => {
                        return Err(StoreError {
                            kind: StoreErrorKind::AlreadyExists,
                            operation: "writing",
                            key: key.to_string(),
                            message: "already exists".into(),
                        })
                    }
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(self.wrap("writing", key, e)),
                }
            }
            if data.len() >= remote.multipart_threshold {
                return self.put_parts(remote, key, data).await;
            }
            if fallback {
                opts.mode = PutMode::Overwrite;
            }
        }
        self.inner
            .put_opts(&Path::from(key), PutPayload::from_bytes(data), opts)
            .await
            .map_err(|e| self.wrap("writing", key, e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&Path::from(key)).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.wrap("deleting", key, e)),
        }
    }

    fn staging_dir(&self) -> Option<std::path::PathBuf> {
        let dir = self.local_root.as_ref()?.join(STAGING);
        std::fs::create_dir_all(&dir).ok()?;
        Some(dir)
    }

    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        mode: WriteMode,
    ) -> Result<(), StoreError> {
        let Some(root) = &self.local_root else {
            return super::put_staged(self, key, path, mode).await;
        };
        // A hard link is an atomic create-if-absent on a local filesystem.
        let target = root.join(key);
        let (src, key_owned) = (path.to_path_buf(), key.to_string());
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(|e| wrap_io("writing", &key_owned, e))?;
            }
            let linked = std::fs::hard_link(&src, &target);
            let _ = std::fs::remove_file(&src);
            match linked {
                Ok(()) => Ok(()),
                Err(e)
                    if e.kind() == std::io::ErrorKind::AlreadyExists
                        && mode == WriteMode::Overwrite =>
                {
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(StoreError {
                    kind: StoreErrorKind::AlreadyExists,
                    operation: "writing",
                    key: key_owned,
                    message: "already exists".into(),
                }),
                Err(e) => Err(wrap_io("writing", &key_owned, e)),
            }
        })
        .await
        .map_err(|e| StoreError {
            kind: StoreErrorKind::Transient,
            operation: "writing",
            key: key.to_string(),
            message: e.to_string(),
        })?
    }

    async fn conditional_writes(&self) -> Result<bool, StoreError> {
        let Some(remote) = &self.remote else {
            // A local directory refuses through link(2); memory through its map.
            return Ok(true);
        };
        let honoured = *remote
            .conditional_writes
            .get_or_try_init(|| self.probe())
            .await?;
        if !honoured {
            tracing::info!(
                "{} does not refuse a second create-if-absent write; writes look before they write",
                self.location
            );
        }
        Ok(honoured)
    }

    async fn prepare_container(&self) -> Result<(), StoreError> {
        #[cfg(feature = "cloud")]
        if let Some(maker) = self.remote.as_ref().and_then(|r| r.bucket.as_ref()) {
            return maker.ensure().await;
        }
        Ok(())
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>> {
        let p = Path::from(prefix.trim_end_matches('/'));
        self.inner
            .list(Some(&p))
            .map(move |r| match r {
                Ok(m) => Ok(ObjectInfo {
                    key: m.location.to_string(),
                    size: m.size,
                }),
                Err(e) => Err(self.wrap("listing", prefix, e)),
            })
            .boxed()
    }
}
