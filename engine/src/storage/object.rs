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
}

/// The staging directory inside a local repository (writer-private; readers ignore it).
pub const STAGING: &str = "tmp";

impl ObjectStoreBackend {
    /// Wraps an `object_store` implementation; `location` is shown in messages.
    pub fn new(inner: Arc<dyn ObjectStore>, location: impl Into<String>) -> Self {
        ObjectStoreBackend {
            inner,
            location: location.into(),
            local_root: None,
        }
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

fn wrap(operation: &'static str, key: &str, e: object_store::Error) -> StoreError {
    StoreError {
        kind: classify(&e),
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
            .map_err(|e| wrap("reading", key, e))?;
        r.bytes().await.map_err(|e| wrap("reading", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let want = range.end.saturating_sub(range.start);
        let b = self
            .inner
            .get_range(&Path::from(key), range.clone())
            .await
            .map_err(|e| wrap("reading", key, e))?;
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
            .map_err(|e| wrap("reading", key, e))?;
        Ok(m.size)
    }

    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> Result<(), StoreError> {
        let opts = PutOptions {
            mode: match mode {
                WriteMode::Overwrite => PutMode::Overwrite,
                WriteMode::CreateNew => PutMode::Create,
            },
            ..Default::default()
        };
        self.inner
            .put_opts(&Path::from(key), PutPayload::from_bytes(data), opts)
            .await
            .map_err(|e| wrap("writing", key, e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&Path::from(key)).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(wrap("deleting", key, e)),
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
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| wrap_io("reading staged file", key, e))?;
            let r = self.put(key, Bytes::from(data), mode).await;
            let _ = tokio::fs::remove_file(path).await;
            return r;
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

    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>> {
        let p = Path::from(prefix.trim_end_matches('/'));
        self.inner
            .list(Some(&p))
            .map(move |r| match r {
                Ok(m) => Ok(ObjectInfo {
                    key: m.location.to_string(),
                    size: m.size,
                }),
                Err(e) => Err(wrap("listing", prefix, e)),
            })
            .boxed()
    }
}
