//! An opened repository: its store, its master key and its config.
//!
//! Lifecycle: [`Repository::init`] or [`Repository::open`] gives a `Repository`;
//! [`Repository::load_index`] gives the [`Index`] that backup and restore need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use zeroize::Zeroizing;

use coffer_repo_format::blob::{self, BlobType, Compression};
use coffer_repo_format::chunker::ChunkerParams;
use coffer_repo_format::config::{Config, FORMAT_VERSION};
use coffer_repo_format::envelope::{Context, Opener};
use coffer_repo_format::index::IndexFile;
use coffer_repo_format::keys::{KdfCost, KeyFile, MasterKey};
use coffer_repo_format::snapshot::Snapshot;
use coffer_repo_format::tree::TreePage;
use coffer_repo_format::{BlobId, FormatError, IndexId, KeyId, PackId, SnapshotId};

use crate::error::{Error, Missing, Result};
use crate::index::Index;
use crate::storage::{DynStore, StoreError, StoreErrorKind, WriteMode};

pub use crate::identity::Identity;

/// Object keys of the repository layout.
pub(crate) use coffer_repo_format::layout;

/// What opening a repository may cost, at most.
#[derive(Clone, Debug)]
pub struct OpenLimits {
    /// The most Argon2 memory a key file may ask for, in KiB (the format's
    /// own bound by default: 1 GiB).
    pub max_kdf_memory_kib: u32,
}

impl Default for OpenLimits {
    fn default() -> Self {
        OpenLimits {
            max_kdf_memory_kib: coffer_repo_format::keys::MAX_KDF_MEMORY_KIB,
        }
    }
}

/// Settings of a new repository.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Chunker parameters.
    pub chunker: ChunkerParams,
    /// Default compression.
    pub compression: Compression,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Argon2id cost of the first key.
    pub kdf: KdfCost,
    /// Host and user recorded in the first key file; this process's when `None`.
    pub key_owner: Option<crate::identity::KeyOwner>,
    /// Cut content as this repository does (its chunker seed; give its
    /// chunker parameters too): `coffer copy` from it then copies chunks
    /// without re-chunking (`coffer init --copy-chunker-params`).
    pub same_chunker_as: Option<Arc<Repository>>,
}

/// Default target pack size: 16 MiB.
pub const DEFAULT_PACK_SIZE: u32 = 16 * 1024 * 1024;
/// Default compression: zstd level 2 (measured: as fast as level 1 on volume-like
/// data, 5 % smaller; level 3 is 20 % slower for 1.5 % less). See benches/RESULTS.md.
pub const DEFAULT_COMPRESSION: Compression = Compression::Zstd(2);

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            compression: DEFAULT_COMPRESSION,
            pack_size: DEFAULT_PACK_SIZE,
            kdf: KdfCost::default(),
            key_owner: None,
            same_chunker_as: None,
        }
    }
}

/// Runs CPU-heavy work (Argon2) on a blocking thread, never on the async
/// executor that other operations of the process share.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::InvalidArgument(format!("a key derivation failed: {e}")))
}

/// The current time as RFC 3339 with nanoseconds and the local offset.
pub fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, false)
}

thread_local! {
    /// [`Repository::read_blob`]'s decryption buffer and zstd context.
    static OPEN_BUFFERS: std::cell::RefCell<blob::OpenBuffers> = Default::default();
}

/// An opened repository.
pub struct Repository {
    store: DynStore,
    key: Arc<MasterKey>,
    opener: Arc<Opener>,
    config: Config,
    key_id: KeyId,
    tree_cache: Mutex<(HashMap<BlobId, Arc<TreePage>>, usize)>,
}

/// Tree pages kept decoded, at most.
const TREE_CACHE_ENTRIES: usize = 256;
/// Bytes of encoded tree pages kept decoded, at most (a page with long
/// content lists decodes to about twice its encoding).
const TREE_CACHE_BYTES: usize = 8 * 1024 * 1024;

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.store.location())
            .field("id", &self.config.id_hex())
            .finish()
    }
}

impl Repository {
    /// Creates a repository in an empty store and opens it.
    pub async fn init(store: DynStore, password: &[u8], opts: InitOptions) -> Result<Repository> {
        let location = store.location();
        let store_err = |e| Error::Store {
            location: location.clone(),
            source: e,
        };
        store.prepare_container().await.map_err(store_err)?;
        store.conditional_writes().await.map_err(store_err)?;
        match store.size(layout::CONFIG).await {
            Ok(_) => return Err(Error::RepositoryExists { location }),
            Err(e) if e.kind == StoreErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Store {
                    location,
                    source: e,
                })
            }
        }
        if password.is_empty() {
            return Err(Error::InvalidArgument(
                "the password must not be empty".into(),
            ));
        }
        let config = Config {
            version: FORMAT_VERSION,
            id: random32()?.to_vec(),
            created: now_rfc3339(),
            chunker: opts.chunker,
            compression: opts.compression,
            pack_size: opts.pack_size,
        };
        config
            .validate()
            .map_err(|e| Error::InvalidArgument(format!("invalid repository settings: {e}")))?;
        let key = match &opts.same_chunker_as {
            Some(other) => MasterKey::generate_with_chunker_of(other.key()),
            None => MasterKey::generate(),
        };
        let key = Arc::new(key.map_err(|e| Error::corrupt("random source", e))?);
        let me = opts
            .key_owner
            .clone()
            .unwrap_or_else(crate::identity::KeyOwner::current);
        let kf = {
            let (key, password, kdf) = (key.clone(), Zeroizing::new(password.to_vec()), opts.kdf);
            blocking(move || {
                KeyFile::wrap(
                    &key,
                    &password,
                    kdf,
                    now_rfc3339(),
                    me.hostname,
                    me.username,
                )
            })
            .await?
        }
        .map_err(|e| Error::InvalidArgument(format!("cannot create key: {e}")))?;
        let kf_bytes = kf.to_bytes();
        let key_id = KeyId::of(&kf_bytes);
        let put = |k: String, b: Vec<u8>| {
            let store = store.clone();
            async move { store.put(&k, Bytes::from(b), WriteMode::CreateNew).await }
        };
        put(layout::key(&key_id), kf_bytes)
            .await
            .map_err(|e| Error::Store {
                location: location.clone(),
                source: e,
            })?;
        let mut sealer = key
            .sealer()
            .map_err(|e| Error::corrupt("random source", e))?;
        let sealed = sealer
            .seal(
                Context::Config,
                &config.encode().map_err(|e| Error::corrupt("config", e))?,
            )
            .map_err(|e| Error::corrupt("config", e))?;
        // The config is written last: a store without it is not a repository.
        match put(layout::CONFIG.to_string(), sealed).await {
            Ok(()) => {}
            Err(e) if e.kind == StoreErrorKind::AlreadyExists => {
                // Another init won the race: our key wraps a master key that
                // opens nothing, so take it back.
                if let Err(e) = store.delete(&layout::key(&key_id)).await {
                    tracing::warn!("could not remove key file {key_id} of a lost init race: {e}");
                }
                return Err(Error::RepositoryExists { location });
            }
            Err(e) => {
                return Err(Error::Store {
                    location,
                    source: e,
                })
            }
        }
        Ok(Self::assemble(store, key, config, key_id))
    }

    fn assemble(store: DynStore, key: Arc<MasterKey>, config: Config, key_id: KeyId) -> Self {
        let opener = Arc::new(key.opener());
        Repository {
            store,
            key,
            opener,
            config,
            key_id,
            tree_cache: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// Opens a repository with a password.
    pub async fn open(store: DynStore, password: &[u8]) -> Result<Repository> {
        Self::open_with(store, password, &OpenLimits::default()).await
    }

    /// Opens a repository with a password, within `limits`: a key file that
    /// asks for more than they allow is not tried (an agent whose memory
    /// limit is below the format's largest Argon2 cost opens tenants'
    /// repositories with a lower cap).
    pub async fn open_with(
        store: DynStore,
        password: &[u8],
        limits: &OpenLimits,
    ) -> Result<Repository> {
        let location = store.location();
        let config_bytes = match store.get(layout::CONFIG).await {
            Ok(b) => b,
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                return Err(Error::RepositoryNotFound { location })
            }
            Err(e) => {
                return Err(Error::Store {
                    location,
                    source: e,
                })
            }
        };
        let key_ids = list_ids::<KeyId>(&store, layout::KEYS).await?;
        if key_ids.is_empty() {
            return Err(Error::corrupt(
                format!("repository {location}"),
                FormatError::Malformed {
                    what: "repository",
                    reason: "it has a config but no key files".into(),
                },
            ));
        }
        let mut damaged = Vec::new();
        let mut stray = Vec::new();
        // Read and vet every key file first (cheap), then derive, cheapest
        // declared cost first: a key file someone else put in the bucket
        // costs at most its bounded derivation, and only after the others.
        let mut candidates = Vec::new();
        for id in &key_ids {
            let bytes = match store.get(&layout::key(id)).await {
                Ok(b) => b,
                // Removed since the listing: `key remove`, or the key of an
                // init that lost the race for the config (it takes its key
                // back). Never the one that opens this repository's config.
                Err(e) if e.kind == StoreErrorKind::NotFound => {
                    tracing::debug!("key file {id} was removed while the repository was opened");
                    continue;
                }
                Err(e) => {
                    return Err(Error::Store {
                        location: location.clone(),
                        source: e,
                    })
                }
            };
            if KeyId::of(&bytes) != *id {
                damaged.push(format!("key file {id} does not match its name"));
                continue;
            }
            match KeyFile::from_bytes(&bytes) {
                Ok(kf) if kf.kdf.cost().memory_kib > limits.max_kdf_memory_kib => {
                    damaged.push(format!(
                        "key file {id} asks for {} MiB of Argon2 memory, more than this program \
                         allows ({} MiB); not tried",
                        kf.kdf.cost().memory_kib / 1024,
                        limits.max_kdf_memory_kib / 1024
                    ))
                }
                Ok(kf) => candidates.push((kf.kdf.cost().work(), *id, kf)),
                Err(e) => damaged.push(format!(
                    "key file {id}: {e}; if you did not add it, remove it (key {})",
                    id.short()
                )),
            }
        }
        candidates.sort_by_key(|c| (c.0, c.1));
        for (_, id, kf) in candidates {
            let id = &id;
            let unwrapped = {
                let password = Zeroizing::new(password.to_vec());
                blocking(move || kf.unwrap_key(&password)).await?
            };
            match unwrapped {
                Ok(key) => {
                    let plain = match key.opener().open(Context::Config, &config_bytes) {
                        Ok(p) => p,
                        Err(e) => {
                            // A cached config from an earlier repository at
                            // this location? Read it from the store once more.
                            store.discard_cached(layout::CONFIG);
                            let fresh =
                                store.get(layout::CONFIG).await.map_err(|e| Error::Store {
                                    location: location.clone(),
                                    source: e,
                                })?;
                            match key.opener().open(Context::Config, &fresh) {
                                Ok(p) => p,
                                Err(_) => {
                                    // A key of another master key: one left by
                                    // an init that lost a race for the config.
                                    // Try the others.
                                    tracing::debug!("key file {id} opens, but not the config: {e}");
                                    stray.push(*id);
                                    continue;
                                }
                            }
                        }
                    };
                    let config = Config::decode(&plain)
                        .map_err(|e| Error::corrupt("repository config", e))?;
                    return Ok(Self::assemble(store, Arc::new(key), config, *id));
                }
                Err(FormatError::WrongPassword) => continue,
                Err(e) => damaged.push(format!("key file {id}: {e}")),
            }
        }
        for d in &damaged {
            tracing::warn!("{d}");
        }
        if !stray.is_empty() {
            // The password opened key files, but none of them the config.
            return Err(Error::corrupt(
                "repository config",
                FormatError::Malformed {
                    what: "config",
                    reason: format!(
                        "it does not open with the master key of key file(s) {}",
                        stray
                            .iter()
                            .map(|k| k.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            ));
        }
        if damaged.len() == key_ids.len() {
            // Not a wrong password: there is no intact key file to try it on.
            return Err(Error::corrupt(
                format!("every key file of {location}"),
                FormatError::Malformed {
                    what: "key files",
                    reason: damaged.join("; "),
                },
            ));
        }
        Err(Error::WrongPassword {
            location,
            keys: key_ids.len(),
        })
    }

    /// The same repository read with no cache in front of its store, where it
    /// has one (see [`crate::storage::Store::uncached`]).
    pub fn without_cache(&self) -> Option<Repository> {
        let store = self.store.uncached()?;
        Some(Repository {
            store,
            key: self.key.clone(),
            opener: self.opener.clone(),
            config: self.config.clone(),
            key_id: self.key_id,
            tree_cache: Mutex::new((HashMap::new(), 0)),
        })
    }

    /// The store.
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The repository location, for messages.
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The master key.
    pub fn key(&self) -> &Arc<MasterKey> {
        &self.key
    }

    /// The key file this session was opened with.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub(crate) fn set_key_id(&mut self, id: KeyId) {
        self.key_id = id;
    }

    /// Asks the store, once per process, whether it refuses a second
    /// create-if-absent write (network stores are probed; see
    /// [`crate::storage::Store::conditional_writes`]). Called before writing.
    pub async fn prepare_writes(&self) -> Result<bool> {
        self.store
            .conditional_writes()
            .await
            .map_err(|e| self.store_err(e))
    }

    pub(crate) fn store_err(&self, e: StoreError) -> Error {
        Error::Store {
            location: self.location(),
            source: e,
        }
    }

    /// Seals a plaintext and writes it as a content-addressed file under `prefix`.
    pub(crate) async fn write_sealed(
        &self,
        context: Context<'_>,
        key_of: impl Fn(&[u8; 32]) -> String,
        plain: &[u8],
    ) -> Result<[u8; 32]> {
        let (id, sealed) = self.seal_file(context, plain)?;
        self.put_sealed(&key_of(&id), sealed).await?;
        Ok(id)
    }

    /// Seals a content-addressed file: its name (the BLAKE3 of the sealed
    /// bytes) and the bytes.
    fn seal_file(&self, context: Context<'_>, plain: &[u8]) -> Result<([u8; 32], Bytes)> {
        let mut sealer = self
            .key
            .sealer()
            .map_err(|e| Error::corrupt("random source", e))?;
        let sealed = sealer
            .seal(context, plain)
            .map_err(|e| Error::corrupt("new file", e))?;
        Ok((*blake3::hash(&sealed).as_bytes(), Bytes::from(sealed)))
    }

    /// Stores a sealed content-addressed file at `key`.
    async fn put_sealed(&self, key: &str, sealed: Bytes) -> Result<()> {
        match self.store.put(key, sealed, WriteMode::CreateNew).await {
            Ok(()) => Ok(()),
            // Same name means same bytes: someone stored it already.
            Err(e) if e.kind == StoreErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(self.store_err(e)),
        }
    }

    /// Reads a content-addressed file, checks its name, and opens its envelope.
    pub(crate) async fn read_sealed(
        &self,
        context: Context<'_>,
        object: &str,
        key: &str,
        id: &[u8; 32],
    ) -> Result<Vec<u8>> {
        let bytes = match self.store.get(key).await {
            Ok(b) => b,
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: object.to_string(),
                    missing: Missing::Object,
                });
            }
            Err(e) => return Err(self.store_err(e)),
        };
        let actual = blake3::hash(&bytes);
        if actual.as_bytes() != id {
            return Err(Error::corrupt(
                object,
                FormatError::IdMismatch {
                    what: "stored file",
                    expected: hex::encode(id),
                    actual: actual.to_hex().to_string(),
                },
            ));
        }
        self.opener
            .open(context, &bytes)
            .map_err(|e| Error::corrupt(object, e))
    }

    /// Writes an index file.
    pub(crate) async fn write_index(&self, file: &IndexFile) -> Result<IndexId> {
        let id = self
            .write_sealed(
                Context::Index,
                |id| layout::index(&IndexId(*id)),
                &file.encode(),
            )
            .await?;
        Ok(IndexId(id))
    }

    /// Reads one index file.
    pub async fn read_index(&self, id: &IndexId) -> Result<IndexFile> {
        let object = format!("index file {id}");
        let plain = self
            .read_sealed(Context::Index, &object, &layout::index(id), &id.0)
            .await?;
        IndexFile::decode(&plain).map_err(|e| Error::corrupt(object, e))
    }

    /// Ids of all index files.
    pub async fn index_ids(&self) -> Result<Vec<IndexId>> {
        list_ids(&self.store, layout::INDEX).await
    }

    /// Loads every index file into a new [`Index`]. A damaged or vanished
    /// index file is skipped with a warning (`coffer check` reports it); the
    /// blobs it listed then read as missing. Store failures are errors.
    pub async fn load_index(&self) -> Result<Arc<Index>> {
        let index = Index::new();
        self.each_index_file(|file| index.add_file(&file)).await?;
        Ok(Arc::new(index))
    }

    /// Loads the tree blobs of every index file ([`Index::trees_only`]):
    /// what walking snapshots needs; a restore finds its data blobs batch by
    /// batch with [`Self::locate_blobs`].
    pub async fn load_tree_index(&self) -> Result<Arc<Index>> {
        let index = Index::trees_only();
        self.each_index_file(|file| index.add_file(&file)).await?;
        Ok(Arc::new(index))
    }

    /// Where each of `ids` is stored, read from the index files (a blob in
    /// none of them is absent from the answer). Holds one index file per
    /// read in flight and the answer: memory follows `ids`, not the
    /// repository. Index files are skipped as [`Self::load_index`] skips them.
    pub async fn locate_blobs(
        &self,
        ids: &std::collections::HashSet<BlobId>,
    ) -> Result<HashMap<BlobId, crate::index::BlobLocation>> {
        let mut found = HashMap::with_capacity(ids.len());
        self.each_index_file(|file| {
            for p in &file.packs {
                for b in p.blobs.iter().filter(|b| ids.contains(&b.id)) {
                    found
                        .entry(b.id)
                        .or_insert_with(|| crate::index::BlobLocation {
                            pack: p.id,
                            blob_type: b.blob_type,
                            offset: b.offset,
                            stored_len: b.stored_len,
                            raw_len: b.raw_len,
                        });
                }
            }
        })
        .await?;
        Ok(found)
    }

    /// Reads every index file, eight at a time, and hands each to `take`.
    /// A damaged or vanished one is skipped with a warning.
    async fn each_index_file(&self, mut take: impl FnMut(IndexFile)) -> Result<()> {
        let ids = self.index_ids().await?;
        let mut reads = futures::stream::iter(
            ids.into_iter()
                .map(|id| async move { (id, self.read_index(&id).await) }),
        )
        .buffer_unordered(8);
        while let Some((id, file)) = reads.next().await {
            match file {
                Ok(file) => take(file),
                Err(e) if is_damage(&e) => {
                    tracing::warn!("skipping index file {}: {e}", id.short())
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes a snapshot; this is the last write of a backup.
    #[cfg_attr(feature = "internals", visibility::make(pub))]
    pub(crate) async fn write_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId> {
        let (id, sealed) = self.seal_snapshot(snapshot)?;
        self.put_snapshot(&id, sealed).await?;
        Ok(id)
    }

    /// Seals a snapshot: its id and its stored bytes, for [`Self::put_snapshot`].
    pub(crate) fn seal_snapshot(&self, snapshot: &Snapshot) -> Result<(SnapshotId, Bytes)> {
        let plain = snapshot
            .encode()
            .map_err(|e| Error::corrupt("new snapshot", e))?;
        let (id, sealed) = self.seal_file(Context::Snapshot, &plain)?;
        Ok((SnapshotId(id), sealed))
    }

    /// Stores a snapshot sealed by [`Self::seal_snapshot`].
    pub(crate) async fn put_snapshot(&self, id: &SnapshotId, sealed: Bytes) -> Result<()> {
        self.put_sealed(&layout::snapshot(id), sealed).await
    }

    /// Reads one snapshot.
    pub async fn read_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let object = format!("snapshot {id}");
        let plain = self
            .read_sealed(Context::Snapshot, &object, &layout::snapshot(id), &id.0)
            .await?;
        Snapshot::decode(&plain).map_err(|e| Error::corrupt(object, e))
    }

    /// Every readable snapshot, oldest first. A damaged snapshot is skipped
    /// with a warning (`coffer check` reports it).
    pub async fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let ids = list_ids::<SnapshotId>(&self.store, layout::SNAPSHOTS).await?;
        let results: Vec<_> = futures::stream::iter(
            ids.into_iter()
                .map(|id| async move { (id, self.read_snapshot(&id).await) }),
        )
        .buffer_unordered(8)
        .collect()
        .await;
        let mut out = Vec::with_capacity(results.len());
        for (id, r) in results {
            match r {
                Ok(s) => out.push((id, s)),
                Err(e) if is_damage(&e) => tracing::warn!("skipping snapshot {}: {e}", id.short()),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| {
            snapshot_time(&a.1)
                .cmp(&snapshot_time(&b.1))
                .then(a.0.cmp(&b.0))
        });
        Ok(out)
    }

    /// Finds a snapshot by `latest`, a full id or a unique id prefix, among
    /// the snapshots `filter` passes: `latest` is the newest of those, and an
    /// id of a snapshot the filter rejects is not found.
    pub async fn find_snapshot_matching(
        &self,
        spec: &str,
        filter: &crate::filter::Filter,
    ) -> Result<(SnapshotId, Snapshot)> {
        if *filter == crate::filter::Filter::default() {
            return self.find_snapshot(spec).await;
        }
        if spec == "latest" {
            let mut all = self.snapshots().await?;
            all.retain(|(_, s)| filter.matches(s));
            return all.pop().ok_or_else(|| Error::NotFound {
                what: "a snapshot that matches the filter".into(),
                missing: Missing::Snapshot,
            });
        }
        let (id, snap) = self.find_snapshot(spec).await?;
        if !filter.matches(&snap) {
            return Err(Error::NotFound {
                what: format!("snapshot {} among those that match the filter", id.short()),
                missing: Missing::Snapshot,
            });
        }
        Ok((id, snap))
    }

    /// The snapshots `specs` name (each `latest`, an id or a prefix), or all
    /// of them when `specs` is empty, keeping only those `filter` passes.
    pub async fn select_snapshots(
        &self,
        specs: &[String],
        filter: &crate::filter::Filter,
    ) -> Result<Vec<(SnapshotId, Snapshot)>> {
        if specs.is_empty() {
            let mut all = self.snapshots().await?;
            all.retain(|(_, s)| filter.matches(s));
            return Ok(all);
        }
        let mut out = Vec::with_capacity(specs.len());
        for s in specs {
            out.push(self.find_snapshot_matching(s, filter).await?);
        }
        Ok(out)
    }

    /// Finds a snapshot by `latest`, a full id, or a unique id prefix.
    pub async fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot)> {
        if spec == "latest" {
            let mut all = self.snapshots().await?;
            return all.pop().ok_or_else(|| Error::NotFound {
                what: "snapshot \"latest\"".into(),
                missing: Missing::NoSnapshots,
            });
        }
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!(
                "{spec:?} is not a snapshot id: use `latest`, an id, or an id prefix"
            )));
        }
        let spec_lc = spec.to_ascii_lowercase();
        let ids = list_ids::<SnapshotId>(&self.store, layout::SNAPSHOTS).await?;
        let matches: Vec<_> = ids
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&spec_lc))
            .collect();
        match matches.as_slice() {
            [id] => Ok((*id, self.read_snapshot(id).await?)),
            [] => Err(Error::NotFound {
                what: format!("snapshot {spec}"),
                missing: Missing::Snapshot,
            }),
            many => Err(Error::InvalidArgument(format!(
                "snapshot prefix {spec} is ambiguous: it matches {}; give more digits",
                many.iter()
                    .map(|i| i.short())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Reads, decrypts and verifies one blob.
    pub async fn read_blob(
        &self,
        index: &Index,
        blob_type: BlobType,
        id: &BlobId,
    ) -> Result<Vec<u8>> {
        let loc = index.get(id).ok_or_else(|| Error::NotFound {
            what: format!("the index entry of {blob_type} blob {id}"),
            missing: Missing::Object,
        })?;
        if loc.blob_type != blob_type {
            return Err(Error::corrupt(
                format!("{blob_type} blob {id}"),
                FormatError::Malformed {
                    what: "index",
                    reason: format!("the index lists it as a {} blob", loc.blob_type),
                },
            ));
        }
        let key = layout::pack(&loc.pack);
        let range = u64::from(loc.offset)..u64::from(loc.offset) + u64::from(loc.stored_len);
        let read = match blob_type {
            BlobType::Tree => self.store.get_tree_range(&key, range).await,
            BlobType::Data => self.store.get_range(&key, range).await,
        };
        let bytes = match read {
            Ok(b) => b,
            Err(e) if e.kind == StoreErrorKind::NotFound => {
                return Err(Error::NotFound {
                    what: format!("pack {} (it holds {blob_type} blob {id})", loc.pack),
                    missing: Missing::Object,
                });
            }
            Err(e) => return Err(self.store_err(e)),
        };
        // A zstd context per thread: making one per blob cost more than
        // opening a small tree page (measured: 2 % of an unchanged re-backup).
        let mut out = Vec::new();
        let opened = OPEN_BUFFERS.with(|b| {
            let mut bufs = b.borrow_mut();
            blob::open_blob_into(
                &self.key,
                &self.opener,
                blob_type,
                id,
                loc.raw_len,
                &bytes,
                &mut bufs,
                &mut out,
            )
        });
        opened.map_err(|e| {
            // A cached pack is verified as a whole; still, never keep what failed.
            self.store.discard_cached(&key);
            Error::corrupt(format!("{blob_type} blob {id} in pack {}", loc.pack), e)
        })?;
        Ok(out)
    }

    /// Opens a blob's stored bytes (already fetched) and verifies it.
    pub fn open_blob(
        &self,
        blob_type: BlobType,
        id: &BlobId,
        raw_len: u32,
        stored: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        blob::open_blob(&self.key, &self.opener, blob_type, id, raw_len, stored)
    }

    /// As [`Repository::open_blob`], into reused buffers.
    pub fn open_blob_into(
        &self,
        blob_type: BlobType,
        id: &BlobId,
        raw_len: u32,
        stored: &[u8],
        bufs: &mut blob::OpenBuffers,
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        blob::open_blob_into(
            &self.key,
            &self.opener,
            blob_type,
            id,
            raw_len,
            stored,
            bufs,
            out,
        )
    }

    /// The envelope opener.
    pub fn opener(&self) -> &Opener {
        &self.opener
    }

    /// Reads one tree page, through a small cache.
    pub async fn read_tree(&self, index: &Index, id: &BlobId) -> Result<Arc<TreePage>> {
        if let Some(p) = self
            .tree_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(id)
        {
            return Ok(p.clone());
        }
        let plain = self.read_blob(index, BlobType::Tree, id).await?;
        let page = Arc::new(
            TreePage::decode(&plain).map_err(|e| Error::corrupt(format!("tree {id}"), e))?,
        );
        let mut cache = self.tree_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0.len() >= TREE_CACHE_ENTRIES || cache.1 + plain.len() > TREE_CACHE_BYTES {
            cache.0.clear();
            cache.1 = 0;
        }
        cache.0.insert(*id, page.clone());
        cache.1 += plain.len();
        Ok(page)
    }

    /// Ids of all snapshots.
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        list_ids(&self.store, layout::SNAPSHOTS).await
    }

    /// Deletes a snapshot (`forget`; an old version after a tag change).
    pub async fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.delete(&layout::snapshot(id)).await
    }

    /// Deletes an index file (prune, after its replacement is stored).
    pub async fn delete_index(&self, id: &IndexId) -> Result<()> {
        self.delete(&layout::index(id)).await
    }

    /// Deletes a pack (prune, after no index file lists it).
    pub async fn delete_pack(&self, id: &PackId) -> Result<()> {
        self.delete(&layout::pack(id)).await
    }

    /// Deletes the object at `key` (a session, a lock, a plan); deleting a
    /// missing object is not an error.
    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        self.store.delete(key).await.map_err(|e| self.store_err(e))
    }

    /// Stores a pack under its id, from memory or from a staged file (which
    /// is gone afterwards). A pack already there is this pack: its name is
    /// the hash of its bytes.
    pub(crate) async fn store_pack(&self, id: &PackId, data: PackBytes<'_>) -> Result<()> {
        let key = layout::pack(id);
        let stored = match data {
            PackBytes::Memory(b) => self.store.put(&key, b, WriteMode::CreateNew).await,
            PackBytes::File(path) => self.store.put_file(&key, path, WriteMode::CreateNew).await,
        };
        match stored {
            Err(e) if e.kind != StoreErrorKind::AlreadyExists => Err(self.store_err(e)),
            _ => Ok(()),
        }
    }

    /// Reads a whole pack (check `--read-data`, prune's repacking).
    pub async fn read_pack(&self, id: &PackId) -> Result<Bytes> {
        self.store
            .get(&layout::pack(id))
            .await
            .map_err(|e| self.store_err(e))
    }

    /// Every pack in the store, with its size.
    pub async fn present_packs(&self) -> Result<HashMap<PackId, u64>> {
        let infos: Vec<_> = self
            .store
            .list(layout::DATA)
            .try_collect()
            .await
            .map_err(|e| self.store_err(e))?;
        Ok(infos
            .into_iter()
            .filter_map(|i| {
                let id = i.key.rsplit('/').next()?.parse().ok()?;
                Some((id, i.size))
            })
            .collect())
    }

    /// Reads a pack's header from the store.
    pub async fn read_pack_header(
        &self,
        id: &PackId,
    ) -> Result<Vec<coffer_repo_format::pack::PackEntry>> {
        use coffer_repo_format::pack;
        let key = layout::pack(id);
        let object = format!("pack {id}");
        let size = self.store.size(&key).await.map_err(|e| self.store_err(e))?;
        if size < pack::TRAILER_LEN as u64 {
            return Err(Error::corrupt(
                object,
                FormatError::Truncated {
                    what: "pack",
                    needed: 4,
                    available: size,
                },
            ));
        }
        let trailer = self
            .store
            .get_range(&key, size - pack::TRAILER_LEN as u64..size)
            .await
            .map_err(|e| self.store_err(e))?;
        let start =
            pack::header_start(size, &trailer).map_err(|e| Error::corrupt(object.clone(), e))?;
        let header = self
            .store
            .get_range(&key, start..size - pack::TRAILER_LEN as u64)
            .await
            .map_err(|e| self.store_err(e))?;
        pack::open_header(&self.opener, start, &header).map_err(|e| Error::corrupt(object, e))
    }
}

/// A pack's bytes for [`Repository::store_pack`].
pub(crate) enum PackBytes<'a> {
    /// In memory.
    Memory(Bytes),
    /// Staged in a file (see [`crate::storage::Store::staging_dir`]).
    File(&'a std::path::Path),
}

/// The instant of a snapshot's time, for sorting (unparsable times sort first).
pub fn snapshot_time(s: &Snapshot) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(&s.time).unwrap_or_default()
}

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom_fill(&mut b)?;
    Ok(b)
}

fn getrandom_fill(b: &mut [u8]) -> Result<()> {
    getrandom::fill(b).map_err(|e| {
        Error::InvalidArgument(format!("the system random number generator failed: {e}"))
    })
}

/// Whether an error means a damaged or missing object (as opposed to a store
/// that failed, which is worth stopping for).
pub(crate) fn is_damage(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt { .. } | Error::UnsupportedVersion { .. } | Error::NotFound { .. }
    )
}

/// Lists the ids of the files under a prefix; keys that are not ids are skipped.
pub(crate) async fn list_ids<T: std::str::FromStr>(
    store: &DynStore,
    prefix: &str,
) -> Result<Vec<T>> {
    let infos: Vec<_> = store
        .list(prefix)
        .try_collect()
        .await
        .map_err(|e| Error::Store {
            location: store.location(),
            source: e,
        })?;
    Ok(infos
        .into_iter()
        .filter_map(|i| i.key.rsplit('/').next().and_then(|n| n.parse().ok()))
        .collect())
}
