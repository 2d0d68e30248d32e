//! The engine's integration tests: real backups and restores of real trees.

mod support;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use coffer_engine::backup::BackupOptions;
use coffer_engine::format::blob::Compression;
use coffer_engine::format::chunker::ChunkerParams;
use coffer_engine::repository::DEFAULT_PACK_SIZE;
use coffer_engine::restore::{self, RestoreOptions};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_metadata_round_trips() {
    let src_parent = tempdir();
    let src = src_parent.path().join("volume");
    let support = kitchen_sink(&src);
    let expected = manifest(&src);
    let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
    let summary = backup_paths(&repo, &[&src]).await;
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    // The sparse file's holes are never stored: far less than its 64 MiB.
    assert!(
        summary.snapshot.summary.data_added < 8 << 20,
        "{:?}",
        summary.snapshot.summary
    );

    let target = tempdir();
    let out = target.path().join("restored");
    let restored = restore_to(&repo, "latest", &out).await;
    assert!(restored.errors.is_empty(), "{:?}", restored.errors);
    // A symlink's atime, checked before anything reads the link: what the backup recorded.
    let index = repo.load_index().await.unwrap();
    let recorded =
        coffer_engine::trees::lookup(&repo, &index, &summary.snapshot.root, b"links/dangling")
            .await
            .unwrap()
            .unwrap();
    let md = std::fs::symlink_metadata(out.join("links/dangling")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (md.atime(), md.atime_nsec() as u32),
        (recorded.atime.secs(), recorded.atime.nanos())
    );
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 2));
    let actual = manifest(&out);
    assert_same(&expected, &actual);

    // What the manifest comparison relies on is really there.
    let root = &actual[&b""[..]];
    assert_eq!(root.mode, 0o750, "the target gets the root's own metadata");
    assert_eq!(root.mtime, (1_234_567_891, 43));
    assert_eq!(actual[&b"text.txt"[..]].mtime, (-86_400, 999_999_999));
    assert_eq!(
        actual[&b"random.bin"[..]].mtime,
        (4_300_000_000, 500_000_000)
    );
    assert_eq!(actual[&b"modes/setuid"[..]].mode, 0o4755);
    assert_eq!(actual[&b"modes/ro-dir"[..]].mode, 0o555);
    assert_eq!(
        actual[&b"links/bad-target"[..]].target.as_deref(),
        Some(&b"\xc3\x28bad"[..])
    );
    assert_eq!(
        actual[&b"hard/sub/c"[..]].link_group.as_deref(),
        Some(&b"hard/a"[..])
    );
    assert!(actual.contains_key(&b"odd/\xff\xfe\xfd"[..]));
    if support.user_xattrs {
        assert_eq!(
            actual[&b"text.txt"[..]].xattrs[&b"user.coffer.test"[..]],
            b"value \x00\xff"
        );
    }
    if support.acls {
        assert_eq!(
            actual[&b"one"[..]].xattrs[&b"system.posix_acl_access"[..]],
            ACL
        );
    }
    if is_root() {
        assert_eq!(actual[&b"one"[..]].owner, Some((1234, 5678)));
        assert_eq!(actual[&b"chardev"[..]].kind, "chardev");
        assert_eq!(
            actual[&b"blockdev"[..]].rdev,
            expected[&b"blockdev"[..]].rdev
        );
    }
    // Holes stay holes.
    let sparse = out.join("sparse");
    assert_eq!(std::fs::metadata(&sparse).unwrap().len(), 64 << 20);
    assert!(
        allocated(&sparse) < 4 << 20,
        "restored sparse file allocates {} bytes",
        allocated(&sparse)
    );
}

/// One expectation, restore equals source, across chunk sizes, compression,
/// pack sizes and parallelism.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_equals_source_across_settings() {
    let src_parent = tempdir();
    let src = src_parent.path().join("data");
    write(&src.join("a/random"), &noise(10, 700_000));
    write(&src.join("a/text"), &text(11, 900_000));
    write(&src.join("b/copy-of-random"), &noise(10, 700_000));
    write(&src.join("b/small"), b"small");
    write(&src.join("zeros"), &vec![0u8; 600_000]);
    for i in 0..50 {
        write(
            &src.join(format!("many/{i:03}")),
            &text(100 + i, (i * 997) as usize),
        );
    }
    let expected = manifest(&src);
    let chunkers = [
        ChunkerParams {
            min_size: 1024,
            avg_size: 4096,
            max_size: 16384,
            normalization: 2,
        },
        small_chunks(),
        ChunkerParams::default(),
    ];
    let mut cases = 0;
    for chunker in chunkers {
        for compression in [Compression::Off, Compression::Zstd(3)] {
            for pack_size in [64 * 1024, DEFAULT_PACK_SIZE] {
                for threads in [1, 4] {
                    let repo = memory_repo(init_opts(chunker, compression, pack_size)).await;
                    let mut opts = BackupOptions::new([&src]);
                    opts.threads = threads;
                    let s = backup_with(&repo, opts).await;
                    assert!(s.errors.is_empty());
                    let target = tempdir();
                    let r = restore_to(&repo, &s.snapshot_id.to_hex(), target.path()).await;
                    assert!(r.errors.is_empty(), "{:?}", r.errors);
                    let mut actual = manifest(target.path());
                    // The target directory's atime is not part of the comparison.
                    actual.get_mut(&b""[..]).unwrap().atime = None;
                    assert_same(&expected, &actual);
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_unchanged_backups_add_no_data() {
    let dir = tempdir();
    let two = dir.path().join("two");
    write(&two.join("a.bin"), &noise(20, 2_000_000));
    write(&two.join("same-again.bin"), &noise(20, 2_000_000));

    let repo_two = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
    let first = backup_paths(&repo_two, &[&two]).await;
    // Chunk boundaries depend on the repository's key: count the file's own chunks.
    let index = repo_two.load_index().await.unwrap();
    let node = coffer_engine::trees::lookup(&repo_two, &index, &first.snapshot.root, b"a.bin")
        .await
        .unwrap()
        .unwrap();
    let single = node.content.len() as u64;
    assert!(single > 10, "{single} chunks");
    let first = first.snapshot.summary;
    assert_eq!(
        first.data_blobs, single,
        "a file stored twice in one tree is stored once"
    );

    let again = backup_paths(&repo_two, &[&two]).await.snapshot.summary;
    assert_eq!(
        again.data_blobs, 0,
        "an unchanged second backup adds no data blobs"
    );
    assert_eq!(
        again.data_added,
        again.data_added_packed.min(again.data_added)
    );

    let mut shifted = vec![0x42];
    shifted.extend_from_slice(&noise(20, 2_000_000));
    write(&two.join("shifted.bin"), &shifted);
    let third = backup_paths(&repo_two, &[&two]).await.snapshot.summary;
    assert!(
        (1..=3).contains(&third.data_blobs),
        "a copy shifted by one byte added {} chunks",
        third.data_blobs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_larger_than_a_tree_page_round_trips() {
    let dir = tempdir();
    let src = dir.path().join("big");
    std::fs::create_dir_all(&src).unwrap();
    let n = coffer_engine::format::tree::PAGE_MAX_NODES * 2 + 5;
    for i in 0..n {
        std::fs::File::create(src.join(format!("f{i:06}"))).unwrap();
    }
    write(&src.join("zz-last"), b"last");
    let expected = manifest(&src);
    let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
    let s = backup_paths(&repo, &[&src]).await;
    assert!(
        s.snapshot.summary.tree_blobs >= 4,
        "{} tree blobs",
        s.snapshot.summary.tree_blobs
    );
    let target = tempdir();
    let out = target.path().join("out");
    restore_to(&repo, "latest", &out).await;
    assert_same(&expected, &manifest(&out));

    // A path found through the index pages.
    let index = repo.load_index().await.unwrap();
    let (_, snap) = repo.find_snapshot("latest").await.unwrap();
    let node = coffer_engine::trees::lookup(&repo, &index, &snap.root, b"f008000")
        .await
        .unwrap();
    assert_eq!(node.unwrap().name.0, b"f008000");
    let missing = coffer_engine::trees::lookup(&repo, &index, &snap.root, b"f999999")
        .await
        .unwrap();
    assert!(missing.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subpaths_single_files_and_several_paths() {
    let dir = tempdir();
    let a = dir.path().join("a");
    let b = dir.path().join("b.txt");
    write(&a.join("sub/deep/x"), b"x in a");
    write(&a.join("top"), b"top");
    write(&b, b"file b");
    let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;

    // Several paths: each under its name.
    let s = backup_paths(&repo, &[&a, &b]).await;
    let target = tempdir();
    restore_to(&repo, &s.snapshot_id.to_hex(), target.path()).await;
    assert_eq!(
        std::fs::read(target.path().join("a/sub/deep/x")).unwrap(),
        b"x in a"
    );
    assert_eq!(
        std::fs::read(target.path().join("b.txt")).unwrap(),
        b"file b"
    );

    // A subdirectory: its contents go into the target.
    let index = repo.load_index().await.unwrap();
    let t2 = tempdir();
    let mut opts = RestoreOptions::new(s.snapshot_id.short(), t2.path());
    opts.subpath = Some("a/sub".into());
    restore::restore(repo.clone(), index.clone(), opts)
        .await
        .unwrap();
    assert_eq!(std::fs::read(t2.path().join("deep/x")).unwrap(), b"x in a");
    assert!(!t2.path().join("top").exists());

    // A single file: restored under its name.
    let t3 = tempdir();
    let mut opts = RestoreOptions::new("latest", t3.path());
    opts.subpath = Some("a/top".into());
    restore::restore(repo.clone(), index.clone(), opts)
        .await
        .unwrap();
    assert_eq!(std::fs::read(t3.path().join("top")).unwrap(), b"top");

    // A missing path is an error that names it.
    let mut opts = RestoreOptions::new("latest", tempdir().path().join("x"));
    opts.subpath = Some("a/nope".into());
    let err = restore::restore(repo.clone(), index.clone(), opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("a/nope"), "{err}");

    // One file as the only path.
    let s = backup_paths(&repo, &[&b]).await;
    let t4 = tempdir();
    restore_to(&repo, &s.snapshot_id.to_hex(), t4.path()).await;
    assert_eq!(std::fs::read(t4.path().join("b.txt")).unwrap(), b"file b");

    // Two paths with the same name are refused with a clear message.
    let other = dir.path().join("other");
    write(&other.join("b.txt"), b"clash");
    let index = repo.load_index().await.unwrap();
    let err = coffer_engine::backup::backup(
        repo.clone(),
        index,
        BackupOptions::new([b.clone(), other.join("b.txt")]),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("same name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_non_empty_target_unless_overwriting() {
    let dir = tempdir();
    let src = dir.path().join("src");
    write(&src.join("f"), b"new content");
    let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
    backup_paths(&repo, &[&src]).await;
    let target = tempdir();
    write(&target.path().join("f"), b"old content that is longer");
    write(&target.path().join("keep"), b"unrelated");
    let index = repo.load_index().await.unwrap();
    let err = restore::restore(
        repo.clone(),
        index.clone(),
        RestoreOptions::new("latest", target.path()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(
        std::fs::read(target.path().join("f")).unwrap(),
        b"old content that is longer"
    );
    let mut opts = RestoreOptions::new("latest", target.path());
    opts.overwrite = true;
    restore::restore(repo.clone(), index, opts).await.unwrap();
    assert_eq!(
        std::fs::read(target.path().join("f")).unwrap(),
        b"new content"
    );
    assert_eq!(
        std::fs::read(target.path().join("keep")).unwrap(),
        b"unrelated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_blob_is_never_restored_as_good_data() {
    let dir = tempdir();
    let src = dir.path().join("src");
    write(&src.join("victim"), &noise(30, 300_000));
    write(&src.join("bystander"), &text(31, 300_000));
    let repo_dir = dir.path().join("repo");
    // One pack per blob, so the damage hits one file only.
    let repo = local_repo(
        &repo_dir,
        init_opts(small_chunks(), Compression::Zstd(3), 64 * 1024),
    )
    .await;
    backup_paths(&repo, &[&src]).await;

    // Flip one byte inside the first data blob of the victim.
    let index = repo.load_index().await.unwrap();
    let (_, snap) = repo.find_snapshot("latest").await.unwrap();
    let victim = coffer_engine::trees::lookup(&repo, &index, &snap.root, b"victim")
        .await
        .unwrap()
        .unwrap();
    let blob = victim.content[0].id.unwrap();
    let loc = index.get(&blob).unwrap();
    let pack_path = repo_dir.join(coffer_engine::repository::layout::pack(&loc.pack));
    let mut bytes = std::fs::read(&pack_path).unwrap();
    bytes[loc.offset as usize + 100] ^= 0x01;
    std::fs::write(&pack_path, bytes).unwrap();

    let target = tempdir();
    let summary = restore_to(&repo, "latest", target.path()).await;
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    let e = &summary.errors[0];
    assert_eq!(e.path, target.path().join("victim"));
    assert_eq!(e.blob, Some(blob));
    assert!(e.message.contains(&blob.to_hex()), "{}", e.message);
    assert!(
        !target.path().join("victim").exists(),
        "a damaged file is not left looking complete"
    );
    assert_eq!(
        std::fs::read(target.path().join("bystander")).unwrap(),
        text(31, 300_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_files_are_reported_and_the_snapshot_is_still_written() {
    if is_root() {
        // root reads everything; the permission error cannot be produced.
        return;
    }
    let dir = tempdir();
    let src = dir.path().join("src");
    write(&src.join("ok"), b"fine");
    write(&src.join("locked"), b"no");
    std::fs::set_permissions(
        src.join("locked"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
    let s = backup_paths(&repo, &[&src]).await;
    assert_eq!(s.errors.len(), 1);
    assert!(s.errors[0].path.ends_with("locked"));
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_missing_repository_are_distinct_errors() {
    let dir = tempdir();
    let repo_dir = dir.path().join("repo");
    local_repo(
        &repo_dir,
        init_opts(small_chunks(), Compression::Zstd(3), 1 << 20),
    )
    .await;
    let store = coffer_engine::storage::open_location(repo_dir.to_str().unwrap(), false).unwrap();
    let err = coffer_engine::Repository::open(store.clone(), b"nope")
        .await
        .unwrap_err();
    assert!(
        matches!(err, coffer_engine::Error::WrongPassword { .. }),
        "{err}"
    );
    let err = coffer_engine::Repository::init(
        store,
        b"x",
        init_opts(small_chunks(), Compression::Off, 1 << 20),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, coffer_engine::Error::RepositoryExists { .. }),
        "{err}"
    );
    let missing =
        coffer_engine::storage::open_location(dir.path().join("nothing").to_str().unwrap(), false);
    assert!(matches!(
        missing,
        Err(coffer_engine::Error::RepositoryNotFound { .. })
    ));
}

mod random_trees {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Item {
        File(Vec<u8>),
        Link(Vec<u8>),
        Dir(Vec<(Vec<u8>, Item)>),
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(&b"ab\x01\xffz_-.\n\\"[..]), 1..8)
            .prop_filter("not . or ..", |n| n != b"." && n != b"..")
    }

    fn content() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2000),
            (any::<u64>(), 0usize..200_000).prop_map(|(s, n)| noise(s, n)),
            (any::<u64>(), 0usize..200_000).prop_map(|(s, n)| text(s, n)),
            (0usize..300_000).prop_map(|n| vec![0u8; n]),
        ]
    }

    fn item() -> impl Strategy<Value = Item> {
        let leaf = prop_oneof![content().prop_map(Item::File), name().prop_map(Item::Link)];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop::collection::btree_map(name(), inner, 0..6)
                .prop_map(|m| Item::Dir(m.into_iter().collect()))
        })
    }

    fn create(path: &Path, item: &Item) {
        match item {
            Item::File(data) => std::fs::write(path, data).unwrap(),
            Item::Link(t) => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), path).unwrap()
            }
            Item::Dir(entries) => {
                std::fs::create_dir(path).unwrap();
                for (n, i) in entries {
                    create(&path.join(std::ffi::OsStr::from_bytes(n)), i);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        #[test]
        fn random_trees_round_trip(entries in prop::collection::btree_map(name(), item(), 0..8)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempdir();
                let src = dir.path().join("src");
                create(&src, &Item::Dir(entries.into_iter().collect()));
                let expected = manifest(&src);
                let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 256 * 1024)).await;
                let s = backup_paths(&repo, &[&src]).await;
                prop_assert!(s.errors.is_empty());
                let out = dir.path().join("out");
                let r = restore_to(&repo, "latest", &out).await;
                prop_assert!(r.errors.is_empty());
                assert_same(&expected, &manifest(&out));
                Ok(())
            })?;
        }
    }
}
