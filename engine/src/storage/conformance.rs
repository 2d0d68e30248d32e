//! One conformance suite run against every store.

use bytes::Bytes;
use futures::TryStreamExt;

use super::{Store, StoreErrorKind, WriteMode};

pub(crate) async fn run(store: &dyn Store) {
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

    // Create-if-absent.
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
}

#[tokio::test]
async fn memory_store_conforms() {
    run(&super::ObjectStoreBackend::memory()).await;
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    run(&super::ObjectStoreBackend::local(dir.path(), false).unwrap()).await;
}
