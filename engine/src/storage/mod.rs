//! Storage: the only module that talks to the world outside the process.
//!
//! Every store sits behind [`Store`], a small trait shaped like `object_store`'s.
//! Its contract:
//!
//! - a write is atomic: a reader sees the whole object or none of it;
//! - [`WriteMode::CreateNew`] fails with [`StoreErrorKind::AlreadyExists`] when the
//!   key exists (on stores that honour it; the engine never relies on it for data,
//!   because stored files are named by the hash of their bytes);
//! - keys of content-addressed files are never overwritten with other bytes;
//! - a missing key reads as [`StoreErrorKind::NotFound`].
//!
//! Retries, caches and fault injection are wrappers around the trait, not flags
//! inside each store.

mod object;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;

pub use object::ObjectStoreBackend;

/// What a store said went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The key does not exist.
    NotFound,
    /// A create-if-absent write found the key present.
    AlreadyExists,
    /// A failure that may go away when retried (network, throttling, 5xx).
    Transient,
    /// A failure that a retry will not fix (permissions, bad configuration).
    Permanent,
}

/// An error from a store, naming the key and the store's answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} {key}: {message}")]
pub struct StoreError {
    /// What kind of failure.
    pub kind: StoreErrorKind,
    /// The operation, e.g. "reading".
    pub operation: &'static str,
    /// The key (no credentials are ever part of a key).
    pub key: String,
    /// The store's answer.
    pub message: String,
}

/// How a write treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Replace any object at the key.
    Overwrite,
    /// Fail with [`StoreErrorKind::AlreadyExists`] if the key exists.
    CreateNew,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key, relative to the repository root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A place that holds a repository's objects. See the module docs for the contract.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages (never with credentials).
    fn location(&self) -> String;
    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// Reads a byte range of an object; the result has exactly the range's length.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;
    /// The size of an object.
    async fn size(&self, key: &str) -> Result<u64, StoreError>;
    /// Writes an object atomically.
    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> Result<(), StoreError>;
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Lists the objects whose keys start with `prefix` (a directory such as `"index/"`).
    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>>;

    /// A local directory where a writer may stage a whole object before it is
    /// stored with [`Store::put_file`]; for a local store, on the same
    /// filesystem, so that storing is a link, not a copy. `None`: stage in memory.
    fn staging_dir(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// Stores the local file `path` under `key` and removes the file. The
    /// default reads it and calls [`Store::put`].
    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        mode: WriteMode,
    ) -> Result<(), StoreError> {
        let data = tokio::fs::read(path).await.map_err(|e| StoreError {
            kind: StoreErrorKind::Permanent,
            operation: "reading staged file",
            key: path.display().to_string(),
            message: e.to_string(),
        })?;
        let r = self.put(key, Bytes::from(data), mode).await;
        let _ = tokio::fs::remove_file(path).await;
        r
    }
}

/// A shared store.
pub type DynStore = Arc<dyn Store>;

/// Opens the store a repository location names: a path or `file:///path` (local
/// directory), or `memory://` (a new, empty in-memory store, for tests).
///
/// With `create`, a missing local directory is created; without it, a missing
/// directory is [`crate::Error::RepositoryNotFound`].
pub fn open_location(location: &str, create: bool) -> crate::Result<DynStore> {
    if location.is_empty() {
        return Err(crate::Error::InvalidArgument(
            "no repository given: use --repo or set COFFER_REPOSITORY".into(),
        ));
    }
    if location == "memory://" || location == "memory:" {
        return Ok(Arc::new(ObjectStoreBackend::memory()));
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    if let Some((scheme, _)) = path.split_once("://") {
        return Err(crate::Error::InvalidArgument(format!(
            "unsupported repository scheme {scheme:?} in {location}; use a local path, file:///path or memory://"
        )));
    }
    match ObjectStoreBackend::local(std::path::Path::new(path), create) {
        Ok(s) => Ok(Arc::new(s)),
        Err(e) if e.kind == StoreErrorKind::NotFound => Err(crate::Error::RepositoryNotFound {
            location: location.to_string(),
        }),
        Err(e) => Err(crate::Error::Store {
            location: location.to_string(),
            source: e,
        }),
    }
}

#[cfg(test)]
pub(crate) mod conformance;
