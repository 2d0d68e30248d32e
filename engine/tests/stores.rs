//! Stores that misbehave: injected transient errors, persistent failures and
//! truncated reads, under the retrying wrapper the CLI uses for network stores.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coffer_engine::backup::{self, BackupOptions};
use coffer_engine::check::{self, CheckOptions, ReadData};
use coffer_engine::format::blob::Compression;
use coffer_engine::restore::{self, RestoreOptions};
use coffer_engine::storage::{DynStore, Faults, Faulty, ObjectStoreBackend, RetryPolicy, Retrying};
use coffer_engine::Repository;

use support::*;

/// A source of 24 files (about 6 MiB) across 3 directories, some sharing chunks.
fn source(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..24u64 {
        let rel = format!("d{}/f{i}", i % 3);
        let data = match i % 3 {
            0 => noise(i, 300_000 + i as usize * 1000),
            1 => [text(i, 100_000), noise(i + 100, 200_000)].concat(),
            _ => [noise(1, 60_000), text(i, 90_000)].concat(),
        };
        write(&root.join(&rel), &data);
        files.insert(rel, data);
    }
    files
}

fn fast_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial: Duration::from_millis(1),
        max: Duration::from_millis(20),
        concurrency: 8,
        attempt_timeout: Duration::from_secs(2),
    }
}

/// Repository settings with small packs, so that a backup makes many writes.
fn opts() -> coffer_engine::InitOptions {
    init_opts(small_chunks(), Compression::Zstd(1), 64 * 1024)
}

async fn open(store: DynStore) -> Arc<Repository> {
    Arc::new(Repository::open(store, b"test password").await.unwrap())
}

/// A memory repository holding one snapshot of [`source`] written at `src`.
async fn backed_up(src: &Path) -> (ObjectStoreBackend, BTreeMap<String, Vec<u8>>) {
    let files = source(src);
    let memory = ObjectStoreBackend::memory();
    let repo = Arc::new(
        Repository::init(Arc::new(memory.clone()), b"test password", opts())
            .await
            .unwrap(),
    );
    backup_paths(&repo, &[src]).await;
    (memory, files)
}

/// `check --read-data` finds nothing wrong.
async fn assert_checks_clean(repo: Arc<Repository>) {
    let opts = CheckOptions {
        read_data: ReadData::All,
        ..Default::default()
    };
    let report = check::check(repo, opts).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// Every file restored equals its source, or was reported and is absent.
fn assert_restored_or_reported(
    files: &BTreeMap<String, Vec<u8>>,
    target: &Path,
    reported: &[std::path::PathBuf],
) {
    for (rel, data) in files {
        let path = target.join(rel);
        if reported.contains(&path) {
            assert!(
                !path.exists(),
                "{rel} was reported and must not be left behind"
            );
        } else {
            assert_eq!(&std::fs::read(&path).unwrap(), data, "{rel}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_ten_percent_transient_errors_completes_and_restores() {
    let dir = tempdir();
    let src = dir.path().join("src");
    let files = source(&src);
    let memory = ObjectStoreBackend::memory();
    let faulty = Arc::new(Faulty::new(
        Arc::new(memory.clone()),
        Faults {
            error_rate: 0.10,
            truncate_rate: 0.05,
            lost_reply_rate: 0.05,
            hang_rate: 0.01,
            delay: Duration::from_millis(1),
            fail_writes_from: None,
            holds: Vec::new(),
        },
        7,
    ));
    let store: DynStore = Arc::new(Retrying::new(faulty.clone(), fast_retries(12)));
    let repo = Arc::new(
        Repository::init(store.clone(), b"test password", opts())
            .await
            .unwrap(),
    );
    let mut bo = BackupOptions::new([src.as_path()]);
    bo.timing = coffer_engine::protocol::Timing::fast();
    let summary = backup::backup(repo.clone(), bo).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(faulty.injected() >= 1, "no fault hit the backup");

    // Restored through the same faulty store, then checked through a clean one.
    let target = tempdir();
    let index = repo.load_index().await.unwrap();
    let r = restore::restore(
        repo.clone(),
        index,
        RestoreOptions::new("latest", target.path()),
    )
    .await
    .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_restored_or_reported(&files, target.path(), &[]);
    assert!(faulty.injected() >= 8, "only {} faults", faulty.injected());
    let clean = open(Arc::new(memory)).await;
    assert_checks_clean(clean).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_write_error_fails_the_backup_cleanly_and_check_passes() {
    let dir = tempdir();
    let src = dir.path().join("src");
    // A first snapshot, then a backup whose 6th write and every later one fail.
    let (memory, files) = backed_up(&src).await;
    write(&src.join("d0/new"), &noise(99, 3_000_000));
    let faulty: DynStore = Arc::new(Faulty::new(
        Arc::new(memory.clone()),
        Faults {
            fail_writes_from: Some(6),
            ..Default::default()
        },
        1,
    ));
    let failing = open(Arc::new(Retrying::new(faulty, fast_retries(4)))).await;
    let mut bo = BackupOptions::new([src.as_path()]);
    bo.timing = coffer_engine::protocol::Timing::fast();
    let err = backup::backup(failing, bo).await.unwrap_err().to_string();
    assert!(err.contains("403 Access Denied"), "{err}");
    assert!(
        err.contains("writing "),
        "the error names the object: {err}"
    );

    // Nothing half-written is visible: check passes, the first snapshot restores.
    let clean = open(Arc::new(memory)).await;
    assert_eq!(clean.snapshots().await.unwrap().len(), 1);
    assert_checks_clean(clean.clone()).await;
    let target = tempdir();
    let r = restore_to(&clean, "latest", target.path()).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_restored_or_reported(&files, target.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_under_errors_restores_correctly_or_reports_what_it_could_not() {
    let dir = tempdir();
    let src = dir.path().join("src");
    let (memory, files) = backed_up(&src).await;
    let index = open(Arc::new(memory.clone()))
        .await
        .load_index()
        .await
        .unwrap();

    let mut reported_some = false;
    for seed in 1..=6u64 {
        // Two attempts against a 35% error rate: some reads fail for good.
        let faulty: DynStore = Arc::new(Faulty::new(
            Arc::new(memory.clone()),
            Faults {
                error_rate: 0.35,
                truncate_rate: 0.1,
                ..Default::default()
            },
            seed,
        ));
        let repo = Repository::open(
            Arc::new(Retrying::new(faulty, fast_retries(2))),
            b"test password",
        );
        let Ok(repo) = repo.await else {
            continue; // opening failed: a clear error, nothing written
        };
        let target = tempdir();
        let r = restore::restore(
            Arc::new(repo),
            index.clone(),
            RestoreOptions::new("latest", target.path()),
        )
        .await;
        match r {
            Ok(summary) => {
                let reported: Vec<_> = summary.errors.iter().map(|e| e.path.clone()).collect();
                for e in &summary.errors {
                    assert!(
                        e.message.contains("data/") || e.message.contains("tree"),
                        "the report names the object: {}",
                        e.message
                    );
                }
                reported_some |= !reported.is_empty();
                assert_restored_or_reported(&files, target.path(), &reported);
            }
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("injected fault"), "{e}");
            }
        }
    }
    assert!(
        reported_some,
        "the error rate is high enough to lose some files"
    );
}

/// Counts the ranged reads of file contents, per object.
#[derive(Debug)]
struct Counting {
    inner: DynStore,
    reads: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

#[async_trait::async_trait]
impl coffer_engine::storage::Store for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get(&self, key: &str) -> Result<bytes::Bytes, coffer_engine::storage::StoreError> {
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, coffer_engine::storage::StoreError> {
        *self
            .reads
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default() += 1;
        self.inner.get_range(key, range).await
    }
    async fn get_tree_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, coffer_engine::storage::StoreError> {
        self.inner.get_tree_range(key, range).await
    }
    async fn size(&self, key: &str) -> Result<u64, coffer_engine::storage::StoreError> {
        self.inner.size(key).await
    }
    async fn put(
        &self,
        key: &str,
        data: bytes::Bytes,
        mode: coffer_engine::storage::WriteMode,
    ) -> Result<(), coffer_engine::storage::StoreError> {
        self.inner.put(key, data, mode).await
    }
    async fn delete(&self, key: &str) -> Result<(), coffer_engine::storage::StoreError> {
        self.inner.delete(key).await
    }
    fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> futures::stream::BoxStream<
        'a,
        Result<coffer_engine::storage::ObjectInfo, coffer_engine::storage::StoreError>,
    > {
        self.inner.list(prefix)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restore_reads_each_pack_at_most_once() {
    let dir = tempdir();
    let src = dir.path().join("src");
    let (memory, files) = backed_up(&src).await;
    let counting = Arc::new(Counting {
        inner: Arc::new(memory),
        reads: Default::default(),
    });
    let repo = open(counting.clone()).await;
    let target = tempdir();
    let r = restore_to(&repo, "latest", target.path()).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_restored_or_reported(&files, target.path(), &[]);
    let reads = counting.reads.lock().unwrap();
    assert!(reads.len() > 20, "{} packs read", reads.len());
    for (key, n) in reads.iter() {
        assert_eq!(*n, 1, "{key} read {n} times");
    }
}
