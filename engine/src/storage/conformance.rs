//! One conformance suite run against every store.

use bytes::Bytes;
use futures::TryStreamExt;

use super::{Store, StoreErrorKind, WriteMode};

/// Runs the suite; returns the store's answer to the create-if-absent probe.
pub(crate) async fn run(store: &dyn Store) -> bool {
    let honours_create = store.conditional_writes().await.unwrap();

    // Missing objects.
    let e = store.get("config").await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("config"), "{e}");

    // Put, get, ranged get, size.
    let data = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    store
        .put("data/ab/abcd", data.clone(), WriteMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(store.get("data/ab/abcd").await.unwrap(), data);
    assert_eq!(
        store.get_range("data/ab/abcd", 10..20).await.unwrap(),
        data.slice(10..20)
    );
    assert_eq!(store.size("data/ab/abcd").await.unwrap(), 100_000);
    assert!(store
        .get_range("data/ab/abcd", 99_990..100_010)
        .await
        .is_err());

    // A large object (uploaded in parts by network stores), read across a part edge.
    let large = Bytes::from(
        (0..40u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect::<Vec<_>>(),
    );
    store
        .put("data/ef/large", large.clone(), WriteMode::CreateNew)
        .await
        .unwrap();
    assert_eq!(store.size("data/ef/large").await.unwrap(), 40 << 20);
    let edge = (16u64 << 20) - 100..(16u64 << 20) + 100;
    assert_eq!(
        store
            .get_range("data/ef/large", edge.clone())
            .await
            .unwrap(),
        large.slice(edge.start as usize..edge.end as usize)
    );
    assert_eq!(store.get("data/ef/large").await.unwrap(), large);
    let e = store
        .put("data/ef/large", large.slice(..1000), WriteMode::CreateNew)
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::AlreadyExists, "{e}");
    store.delete("data/ef/large").await.unwrap();

    // Create-if-absent (where the store ignores the condition, the store
    // looks before it writes; the probe told it so).
    store
        .put("locks/x", Bytes::from_static(b"1"), WriteMode::CreateNew)
        .await
        .unwrap();
    let e = store
        .put("locks/x", Bytes::from_static(b"2"), WriteMode::CreateNew)
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::AlreadyExists);
    assert_eq!(
        store.get("locks/x").await.unwrap(),
        Bytes::from_static(b"1")
    );

    // Listing by prefix, over many objects.
    for i in 0..1100 {
        store
            .put(
                &format!("index/{i:05}"),
                Bytes::from(vec![1u8; i % 7]),
                WriteMode::Overwrite,
            )
            .await
            .unwrap();
    }
    let mut listed: Vec<_> = store.list("index/").try_collect().await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(listed.len(), 1100);
    assert_eq!(listed[7].key, "index/00007");
    assert_eq!(listed[8].size, 1);
    let nested: Vec<_> = store.list("data/").try_collect().await.unwrap();
    let none: Vec<_> = store.list("snapshots/").try_collect().await.unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(nested.len(), 1);
    assert_eq!(nested[0].key, "data/ab/abcd");

    // Staged files: stored under the key, the staged file gone, create-if-absent kept.
    let dir = store.staging_dir().unwrap_or_else(std::env::temp_dir);
    for (i, mode) in [WriteMode::CreateNew, WriteMode::CreateNew]
        .into_iter()
        .enumerate()
    {
        let staged = dir.join(format!("conformance-{}-{i}", std::process::id()));
        std::fs::write(&staged, b"staged pack").unwrap();
        let r = store.put_file("data/cd/cdef", &staged, mode).await;
        assert!(!staged.exists(), "the staged file is consumed");
        if i == 0 {
            r.unwrap();
        } else {
            assert_eq!(r.unwrap_err().kind, StoreErrorKind::AlreadyExists);
        }
    }
    assert_eq!(
        store.get("data/cd/cdef").await.unwrap(),
        Bytes::from_static(b"staged pack")
    );

    // Delete, and delete of a missing key.
    store.delete("locks/x").await.unwrap();
    store.delete("locks/x").await.unwrap();
    assert_eq!(
        store.get("locks/x").await.unwrap_err().kind,
        StoreErrorKind::NotFound
    );
    honours_create
}

#[tokio::test]
async fn memory_store_conforms() {
    assert!(run(&super::ObjectStoreBackend::memory()).await);
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run(&super::ObjectStoreBackend::local(dir.path(), false).unwrap()).await);
}

#[tokio::test]
async fn a_cached_local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let local = super::ObjectStoreBackend::local(&dir.path().join("repo"), true).unwrap();
    let cached =
        super::Caching::new(std::sync::Arc::new(local), &dir.path().join("cache"), "x").unwrap();
    assert!(run(&cached).await);
}

/// Retries hide a store that fails a fifth of its operations, truncates
/// reads, loses the replies to writes it made, and hangs now and then.
#[tokio::test]
async fn a_faulty_store_behind_retries_conforms() {
    let faulty = super::Faulty::new(
        std::sync::Arc::new(super::ObjectStoreBackend::memory()),
        super::Faults {
            error_rate: 0.2,
            truncate_rate: 0.2,
            lost_reply_rate: 0.2,
            hang_rate: 0.02,
            ..Default::default()
        },
        3,
    );
    let policy = super::RetryPolicy {
        attempts: 30,
        initial: std::time::Duration::from_micros(100),
        max: std::time::Duration::from_millis(2),
        concurrency: 4,
        attempt_timeout: std::time::Duration::from_millis(200),
    };
    let faulty = std::sync::Arc::new(faulty);
    let store = super::Retrying::new(faulty.clone(), policy);
    assert!(run(&store).await);
    assert!(faulty.injected() > 100, "{}", faulty.injected());
}

/// The S3 server the test script starts (`scripts/s3-server.sh`): its
/// endpoint in `COFFER_TEST_S3_ENDPOINT`, credentials in `AWS_*` when it
/// checks them. With `COFFER_TEST_REQUIRE_S3=1` (CI) a missing server fails.
pub(crate) fn s3_endpoint() -> Option<String> {
    match std::env::var("COFFER_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var("COFFER_TEST_REQUIRE_S3").as_deref() != Ok("1"),
                "COFFER_TEST_REQUIRE_S3=1 but COFFER_TEST_S3_ENDPOINT is not set"
            );
            eprintln!("skipped: no S3 server (set COFFER_TEST_S3_ENDPOINT; scripts/test.sh does)");
            None
        }
    }
}

/// Options for the test server: endpoint, plain http, and moto's dummy
/// credentials unless the environment has real ones.
pub(crate) fn s3_options(endpoint: &str) -> Vec<(String, String)> {
    let mut o = vec![
        ("s3.endpoint".to_string(), endpoint.to_string()),
        ("s3.allow_http".to_string(), "true".to_string()),
    ];
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        o.push(("s3.access_key_id".into(), "testing".into()));
        o.push(("s3.secret_access_key".into(), "testing".into()));
    }
    if std::env::var("AWS_REGION").is_err() {
        o.push(("s3.region".into(), "us-east-1".into()));
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_store_conforms() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let bucket = std::env::var("COFFER_TEST_S3_BUCKET")
        .unwrap_or_else(|_| format!("conformance-{}", std::process::id()));
    let cache = tempfile::tempdir().unwrap();
    let location = format!("s3://{bucket}/conformance/{}", std::process::id());
    let store = super::open(
        &location,
        &super::OpenOptions {
            create: true,
            options: s3_options(&endpoint),
            cache_dir: Some(cache.path().to_path_buf()),
            from_env: true,
            tenant: None,
        },
    )
    .unwrap();
    store.prepare_container().await.unwrap();
    let honours = run(store.as_ref()).await;
    eprintln!("{location}: refuses a second create-if-absent write: {honours}");
    if let Ok(expected) = std::env::var("COFFER_TEST_S3_CONDITIONAL") {
        assert_eq!(honours.to_string(), expected, "the probe's answer");
    }
}

/// Azurite, the Azure Blob Storage emulator `scripts/azure-server.sh` starts:
/// its endpoint in `AZURITE_BLOB_STORAGE_URL` (where `object_store` looks for
/// it), the container in `COFFER_TEST_AZURE_CONTAINER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_store_conforms() {
    let Ok(container) = std::env::var("COFFER_TEST_AZURE_CONTAINER") else {
        assert!(
            std::env::var("COFFER_TEST_REQUIRE_AZURE").as_deref() != Ok("1"),
            "COFFER_TEST_REQUIRE_AZURE=1 but COFFER_TEST_AZURE_CONTAINER is not set"
        );
        eprintln!("skipped: no Azure emulator (scripts/test.sh starts one where npm is installed)");
        return;
    };
    let location = format!("az://{container}/conformance/{}", std::process::id());
    let store = super::open(
        &location,
        &super::OpenOptions {
            create: true,
            options: vec![("az.use_emulator".into(), "true".into())],
            cache_dir: None,
            from_env: true,
            tenant: None,
        },
    )
    .unwrap();
    let honours = run(store.as_ref()).await;
    assert!(honours, "Azurite refuses a second create-if-absent write");
}

/// An `object_store` store like some S3-compatible servers: it ignores the
/// create-if-absent condition (overwrites, like Garage 2.5) or refuses the
/// header (`NotImplemented`), so the probe and the fallback are exercised
/// without those servers.
#[derive(Debug)]
struct Unconditional {
    inner: object_store::memory::InMemory,
    refuse: bool,
}

impl std::fmt::Display for Unconditional {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unconditional(refuse: {})", self.refuse)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for Unconditional {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        mut opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        if opts.mode == object_store::PutMode::Create {
            if self.refuse {
                return Err(object_store::Error::NotImplemented {
                    operation: "conditional put".into(),
                    implementer: "this test store".into(),
                });
            }
            opts.mode = object_store::PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn unconditional(refuse: bool) -> super::ObjectStoreBackend {
    super::ObjectStoreBackend::remote(
        std::sync::Arc::new(Unconditional {
            inner: object_store::memory::InMemory::new(),
            refuse,
        }),
        "test://unconditional",
        super::object::Remote {
            multipart_threshold: 32 << 20,
            part_size: 16 << 20,
            #[cfg(feature = "cloud")]
            bucket: None,
            credentials_hint: "",
            conditional_writes: Default::default(),
        },
    )
}

#[tokio::test]
async fn a_store_that_ignores_create_if_absent_is_found_out_and_still_conforms() {
    assert!(
        !run(&unconditional(false)).await,
        "the probe sees the overwrite"
    );
}

#[tokio::test]
async fn a_store_that_refuses_the_condition_header_still_conforms() {
    assert!(
        !run(&unconditional(true)).await,
        "the probe falls back to plain writes"
    );
}
