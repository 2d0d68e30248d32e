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

#[cfg(feature = "cloud")]
mod bucket;
mod cache;
#[cfg(feature = "internals")]
mod fault;
mod local_read;
mod object;
#[cfg(feature = "cloud")]
mod remote;
mod retry;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;

pub use cache::Caching;
/// A store that injects faults, for the engine's own tests.
#[cfg(feature = "internals")]
pub use fault::{Faults, Faulty, Hold, HoldOp};
pub use object::ObjectStoreBackend;
pub use retry::{RetryPolicy, Retrying};

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

    /// Reads a byte range of a pack that holds trees. The same as
    /// [`Store::get_range`], except that a cache keeps such packs whole.
    async fn get_tree_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.get_range(key, range).await
    }

    /// Forgets any cached copy of `key`: the caller found it did not open.
    fn discard_cached(&self, _key: &str) {}

    /// The same store with no cache in front of it, where this one has a
    /// cache: what `check` reads, since it must verify the repository and
    /// never a local copy. `None`: nothing is cached.
    fn uncached(&self) -> Option<DynStore> {
        None
    }

    /// Whether the store refuses a second create-if-absent write to one key.
    /// Network stores are probed once (the answer is kept); where the answer
    /// is no, [`WriteMode::CreateNew`] looks before it writes.
    async fn conditional_writes(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Makes sure the container (bucket) exists, creating it where the store
    /// and the credentials allow; a repository is about to be created.
    async fn prepare_container(&self) -> Result<(), StoreError> {
        Ok(())
    }

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
        put_staged(self, key, path, mode).await
    }
}

/// Reads a staged file, stores it with [`Store::put`] and removes it.
pub(crate) async fn put_staged<S: Store + ?Sized>(
    store: &S,
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
    let r = store.put(key, Bytes::from(data), mode).await;
    let _ = tokio::fs::remove_file(path).await;
    r
}

/// A shared store.
pub type DynStore = Arc<dyn Store>;

/// How to open a store.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Create a missing local directory (for `init`).
    pub create: bool,
    /// Backend options, `KEY=VALUE` as given with `--option`: `s3.endpoint`,
    /// `s3.region`, any `object_store` key with its backend's prefix (`s3.`,
    /// `gs.`, `az.`), and for every network store `timeout`,
    /// `connect-timeout`, `connections`, `retries`.
    pub options: Vec<(String, String)>,
    /// Keep a verified local cache of metadata here (`None`: no cache). The
    /// command line gives one for network stores unless told otherwise.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Also take credentials and settings from the process environment
    /// (`AWS_*`, `GOOGLE_*`, `AZURE_*`), under `options`. Off by default: an
    /// embedder that serves many tenants passes each repository's credentials
    /// in `options` and nothing else; the command line turns it on.
    pub from_env: bool,
    /// The repository is named by someone the process must not trust with
    /// its own privileges (a Kubernetes tenant): `options` pass an
    /// allow-list, limits cap them, and the process's own identity is used
    /// only where these limits allow it. `None`: the caller is trusted (the
    /// command line, for its own user).
    pub tenant: Option<TenantLimits>,
}

/// What a repository named by a tenant may ask of the process that opens it
/// (see [`OpenOptions::tenant`]). Options that name a file, a credential
/// endpoint, a credential process, a proxy or a client timeout are refused,
/// naming the option; `timeout`, `connect-timeout`, `retries` and
/// `connections` are capped; without static credentials the store is opened
/// only when `ambient_credentials` allows the node's or pod's own identity.
#[derive(Debug, Clone)]
pub struct TenantLimits {
    /// The administrator allows this repository to use the process's own
    /// cloud identity (instance metadata, workload identity from the
    /// environment) when it gives no credentials.
    pub ambient_credentials: bool,
    /// The longest `timeout` or `connect-timeout`.
    pub max_timeout: std::time::Duration,
    /// The most `retries`.
    pub max_retries: u32,
    /// The most `connections`.
    pub max_connections: usize,
}

impl Default for TenantLimits {
    /// No ambient credentials; timeouts up to 5 minutes, 10 retries, 64
    /// connections.
    fn default() -> Self {
        TenantLimits {
            ambient_credentials: false,
            max_timeout: std::time::Duration::from_secs(300),
            max_retries: 10,
            max_connections: 64,
        }
    }
}

/// Whether `location` names a network store (`s3://`, `gs://`, `az://`).
pub fn is_remote(location: &str) -> bool {
    ["s3://", "gs://", "az://"]
        .iter()
        .any(|s| location.starts_with(s))
}

/// The metadata cache a program uses unless told otherwise: for a network
/// store, `coffer` under the user's cache directory (`~/.cache`, which the
/// caller finds); a local repository is read at disk speed and needs none.
pub fn default_cache_dir(
    location: &str,
    user_cache_dir: Option<&std::path::Path>,
) -> Option<std::path::PathBuf> {
    if is_remote(location) {
        user_cache_dir.map(|d| d.join("coffer"))
    } else {
        None
    }
}

/// Opens the store a repository location names: a path or `file:///path` (local
/// directory), or `memory://` (a new, empty in-memory store, for tests).
///
/// With `create`, a missing local directory is created; without it, a missing
/// directory is [`crate::Error::RepositoryNotFound`].
pub fn open_location(location: &str, create: bool) -> crate::Result<DynStore> {
    open(
        location,
        &OpenOptions {
            create,
            ..Default::default()
        },
    )
}

/// Opens the store a repository location names: a path or `file:///path`,
/// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`, or
/// `memory://`. Network stores are wrapped in retries and, with a cache
/// directory, a verified cache.
pub fn open(location: &str, opts: &OpenOptions) -> crate::Result<DynStore> {
    if location.is_empty() {
        return Err(crate::Error::InvalidArgument(
            "no repository location given".into(),
        ));
    }
    if location == "memory://" || location == "memory:" {
        return Ok(Arc::new(ObjectStoreBackend::memory()));
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    if let Some((scheme, _)) = path.split_once("://") {
        #[cfg(feature = "cloud")]
        if matches!(scheme, "s3" | "gs" | "az") {
            let (store, policy) =
                remote::open(location, &opts.options, opts.from_env, opts.tenant.as_ref())?;
            let store: DynStore = Arc::new(Retrying::new(Arc::new(store), policy));
            return Ok(with_cache(store, opts, location));
        }
        return Err(crate::Error::InvalidArgument(format!(
            "unsupported repository scheme {scheme:?} in {}; use a local path, file:///path, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or memory://",
            redact(location)
        )));
    }
    if let Some((k, _)) = opts.options.first() {
        return Err(crate::Error::InvalidArgument(format!(
            "option {k} does not apply to a local repository ({location})"
        )));
    }
    let local = match ObjectStoreBackend::local(std::path::Path::new(path), opts.create) {
        Ok(s) => s,
        Err(e) if e.kind == StoreErrorKind::NotFound => {
            return Err(crate::Error::RepositoryNotFound {
                location: location.to_string(),
            })
        }
        Err(e) => {
            return Err(crate::Error::Store {
                location: location.to_string(),
                source: e,
            })
        }
    };
    Ok(with_cache(Arc::new(local), opts, location))
}

/// The store behind a cache when a cache directory is given; a cache that
/// cannot be created (a read-only home in a container) only costs speed.
fn with_cache(store: DynStore, opts: &OpenOptions, location: &str) -> DynStore {
    let Some(dir) = &opts.cache_dir else {
        return store;
    };
    match Caching::new(store.clone(), dir, location) {
        Ok(cached) => Arc::new(cached),
        Err(e) => {
            tracing::warn!("{e}; going on without a cache");
            store
        }
    }
}

/// An error and its causes (the cause says "connection refused", not the error).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Removes what could carry credentials from a message: URL query strings
/// (pre-signed URLs, SAS tokens) and the user part of URLs.
pub fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '>' || c == ')')
            .unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        let url = match url.find('@') {
            Some(at) if !url[..at].contains('/') => &url[at + 1..],
            _ => url,
        };
        match url.split_once('?') {
            Some((base, _)) => {
                out.push_str(base);
                out.push_str("?<redacted>");
            }
            None => out.push_str(url),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
pub(crate) mod conformance;

#[cfg(test)]
mod default_cache_tests {
    use super::*;

    #[test]
    fn only_network_stores_get_a_cache_by_default() {
        let home = std::path::Path::new("/home/u/.cache");
        assert_eq!(
            default_cache_dir("s3://bucket/x", Some(home)),
            Some(home.join("coffer"))
        );
        assert_eq!(default_cache_dir("az://c/p", None), None);
        assert_eq!(default_cache_dir("/srv/repo", Some(home)), None);
        assert_eq!(default_cache_dir("file:///srv/repo", Some(home)), None);
    }
}
