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
    // Usually one chunk; but normalized chunking judges a cut by its distance
    // from the chunk's start (and the key varies per repository), so the shift
    // can move a few cuts before they fall back in step. Far from a copy.
    assert!(
        (1..=(single / 4).max(3)).contains(&third.data_blobs),
        "a copy shifted by one byte added {} chunks of {single}",
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

    // A listing resumed after any name yields exactly the names after it,
    // across the page boundaries (how a mounted directory is read on).
    let root = snap.root.subtree.unwrap();
    let mut all = Vec::new();
    let mut r = coffer_engine::trees::DirReader::open(&repo, &index, &root)
        .await
        .unwrap();
    while let Some(n) = r.next().await.unwrap() {
        all.push(n.name.0);
    }
    assert_eq!(all.len(), n + 1);
    for after in [
        b"".to_vec(),
        b"f000000".to_vec(),
        all[4095].clone(),
        all[4096].clone(),
        b"f004100x".to_vec(),
        all[n - 1].clone(),
        b"zz-last".to_vec(),
        b"\xff".to_vec(),
    ] {
        let mut r = coffer_engine::trees::DirReader::open_after(&repo, &index, &root, &after)
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(n) = r.next().await.unwrap() {
            got.push(n.name.0);
        }
        let want: Vec<Vec<u8>> = all.iter().filter(|a| **a > after).cloned().collect();
        assert_eq!(
            got.len(),
            want.len(),
            "after {:?}",
            String::from_utf8_lossy(&after)
        );
        assert!(got == want, "after {:?}", String::from_utf8_lossy(&after));
    }
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
    let _ = repo.load_index().await.unwrap();
    let err = coffer_engine::backup::backup(
        repo.clone(),
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
    assert!(
        matches!(
            &err,
            coffer_engine::Error::TargetExists { path, conflict: coffer_engine::error::Conflict::NotEmpty }
                if path == target.path()
        ),
        "{err}"
    );
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
    let pack_path = repo_dir.join(coffer_engine::format::layout::pack(&loc.pack));
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
    assert_eq!(s.errors[0].kind, Some(std::io::ErrorKind::PermissionDenied));
    assert!(!s.errors[0].is_transient());
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);
}

#[test]
fn a_source_error_keeps_its_kind_and_says_whether_a_retry_may_work() {
    use coffer_engine::backup::SourceError;
    let e = |kind| SourceError {
        path: "/f".into(),
        message: String::new(),
        kind,
    };
    assert!(e(Some(std::io::ErrorKind::Interrupted)).is_transient());
    assert!(e(Some(std::io::ErrorKind::TimedOut)).is_transient());
    assert!(!e(Some(std::io::ErrorKind::NotFound)).is_transient());
    assert!(!e(None).is_transient());
    let json = serde_json::to_value(e(Some(std::io::ErrorKind::PermissionDenied))).unwrap();
    assert_eq!(json["kind"], "PermissionDenied");
}

/// Each failure an embedder tells apart is its own variant, and the engine's
/// messages name the object but no command or flag of the CLI (which adds
/// its own next step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_name_the_object_and_no_command_line() {
    use coffer_engine::error::{Conflict, Missing};
    use coffer_engine::Error;
    fn no_cli(err: &Error) {
        let text = err.to_string();
        assert!(
            !text.contains("`coffer") && !text.contains(" --"),
            "a CLI hint in the engine: {text}"
        );
    }
    let dir = tempdir();
    let repo_dir = dir.path().join("repo");
    let repo = local_repo(
        &repo_dir,
        init_opts(small_chunks(), Compression::Zstd(3), 1 << 20),
    )
    .await;
    let err = repo.find_snapshot("latest").await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::NotFound {
                missing: Missing::NoSnapshots,
                ..
            }
        ),
        "{err}"
    );
    no_cli(&err);
    let src = dir.path().join("src");
    write(&src.join("f"), b"data");
    backup_paths(&repo, &[&src]).await;
    let err = repo.find_snapshot("abcdef12").await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { missing: Missing::Snapshot, what } if what.contains("abcdef12")),
        "{err}"
    );
    no_cli(&err);
    let err = repo.find_snapshot("not-hex").await.unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(_)), "{err}");
    no_cli(&err);
    let index = repo.load_index().await.unwrap();
    let err = coffer_engine::dump::dump(
        repo.clone(),
        index.clone(),
        "latest",
        "/nope",
        Box::new(std::io::sink()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { missing: Missing::Path, what } if what.contains("/nope")),
        "{err}"
    );
    no_cli(&err);
    let target = dir.path().join("full");
    write(&target.join("x"), b"in the way");
    let err = restore::restore(
        repo.clone(),
        index.clone(),
        RestoreOptions::new("latest", &target),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::TargetExists {
                conflict: Conflict::NotEmpty,
                ..
            }
        ),
        "{err}"
    );
    no_cli(&err);
    let err = repo.remove_key(&repo.key_id()).await.unwrap_err();
    assert!(matches!(&err, Error::KeyInUse { .. }), "{err}");
    no_cli(&err);
    let other = coffer_engine::format::KeyId::of(b"no such key");
    let err = repo.remove_key(&other).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::NotFound {
                missing: Missing::Key,
                ..
            }
        ),
        "{err}"
    );
    no_cli(&err);
    let snaps = repo.snapshots().await.unwrap();
    let err = coffer_engine::forget::plan(
        &snaps,
        &coffer_engine::forget::Policy::default(),
        Default::default(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(matches!(&err, Error::NoPolicy), "{err}");
    no_cli(&err);
    let not_a_dir = dir.path().join("file");
    write(&not_a_dir, b"");
    let store = coffer_engine::storage::open_location(repo_dir.to_str().unwrap(), false).unwrap();
    let err = coffer_engine::storage::Caching::new(store, &not_a_dir, "x")
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Cache { path, .. } if path.starts_with(&not_a_dir)),
        "{err}"
    );
    no_cli(&err);
    // A damaged index file stops prune before it changes anything.
    let index_dir = repo_dir.join("index");
    let victim = std::fs::read_dir(&index_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    let err = coffer_engine::prune::prune(repo.clone(), Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unreadable { object, source } if object.starts_with("index file")
            && matches!(**source, Error::Corrupt { .. })),
        "{err}"
    );
    assert!(!err.is_transient());
    no_cli(&err);
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
                // The walk meets what was backed up in the order a sorted
                // walk of the source does, every Enter with its Leave.
                let (all, skipped) = walked(&repo).await;
                // Component order, which diff's merge of two walks relies on.
                let mut paths: Vec<Vec<u8>> = expected.keys().cloned().collect();
                let as_path = |p: &Vec<u8>| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(p));
                paths.sort_by_key(as_path);
                prop_assert_eq!(&all, &paths);
                let (first_dir, gone) = skipped;
                if let Some(d) = first_dir {
                    let mut inside = d.clone();
                    inside.push(b'/');
                    let kept: Vec<Vec<u8>> =
                        paths.into_iter().filter(|p| !p.starts_with(&inside)).collect();
                    prop_assert_eq!(gone, kept);
                }
                Ok(())
            })?;
        }
    }

    /// The paths a walk of the latest snapshot meets, in order; then the
    /// first directory below the root, and the paths met when it is skipped.
    async fn walked(
        repo: &std::sync::Arc<coffer_engine::Repository>,
    ) -> (Vec<Vec<u8>>, (Option<Vec<u8>>, Vec<Vec<u8>>)) {
        use coffer_engine::trees::{Step, Walk};
        let index = repo.load_index().await.unwrap();
        let (_, snap) = repo.find_snapshot("latest").await.unwrap();
        let bytes = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let mut all = Vec::new();
        let mut open = Vec::new();
        let mut first_dir = None;
        let mut walk = Walk::new(repo, &index, "".into(), snap.root.clone());
        while let Some(step) = walk.next().await.unwrap() {
            match step {
                Step::Enter(e) => {
                    if first_dir.is_none() && walk.depth() == 1 {
                        first_dir = Some(bytes(&e.path));
                    }
                    all.push(bytes(&e.path));
                    open.push(e.path);
                }
                Step::Leaf(e) => all.push(bytes(&e.path)),
                Step::Leave(e, _) => assert_eq!(open.pop(), Some(e.path)),
                Step::Unreadable { entry, error, .. } => {
                    panic!("{}: {error}", entry.path.display())
                }
            }
        }
        assert!(open.is_empty());
        let mut gone = Vec::new();
        let mut walk = Walk::new(repo, &index, "".into(), snap.root.clone());
        while let Some(step) = walk.next().await.unwrap() {
            match step {
                Step::Enter(e) | Step::Leaf(e) => {
                    if Some(bytes(&e.path)) == first_dir {
                        walk.skip();
                    }
                    gone.push(bytes(&e.path));
                }
                _ => {}
            }
        }
        (all, (first_dir, gone))
    }
}

/// Damaged repositories as fixtures: what `check` says, what `restore` does.
mod damage {
    use super::*;
    use coffer_engine::check::{self, CheckOptions, CheckReport, ReadData};
    use coffer_engine::format::layout;
    use coffer_engine::format::{IndexId, PackId};
    use std::path::PathBuf;
    use std::sync::Arc;

    /// A restore's directory (removed when dropped), its target, its summary.
    type Restored = (
        tempfile::TempDir,
        PathBuf,
        coffer_engine::restore::RestoreSummary,
    );

    struct Fixture {
        _dir: tempfile::TempDir,
        src: std::path::PathBuf,
        repo_dir: std::path::PathBuf,
        repo: Arc<coffer_engine::Repository>,
        snapshot: String,
        /// A cache filled from the intact repository, before any damage.
        warm_cache: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempdir();
        let src = dir.path().join("src");
        write(&src.join("a.bin"), &noise(40, 400_000));
        write(&src.join("b.bin"), &noise(41, 300_000));
        write(&src.join("notes.txt"), &text(42, 20_000));
        write(&src.join("sub/inner.txt"), &text(43, 5_000));
        let repo_dir = dir.path().join("repo");
        let repo = local_repo(
            &repo_dir,
            init_opts(small_chunks(), Compression::Zstd(3), 64 * 1024),
        )
        .await;
        let s = backup_paths(&repo, &[&src]).await;
        let staged: Vec<_> = std::fs::read_dir(repo_dir.join("tmp")).unwrap().collect();
        assert!(
            staged.is_empty(),
            "a finished backup leaves no staged packs"
        );
        let f = Fixture {
            snapshot: s.snapshot_id.to_hex(),
            _dir: dir,
            src,
            repo_dir,
            repo,
            warm_cache: tempdir(),
        };
        // Warm the cache: config, keys, index files, snapshots and tree packs.
        let cached = f.open_cached(f.warm_cache.path(), b"test password").await;
        let index = cached.load_index().await.unwrap();
        let target = tempdir();
        restore::restore(
            cached,
            index,
            RestoreOptions::new(f.snapshot.clone(), target.path().join("out")),
        )
        .await
        .unwrap();
        assert!(f.cached_files(f.warm_cache.path()).len() >= 5);
        f
    }

    impl Fixture {
        fn path(&self, key: &str) -> std::path::PathBuf {
            self.repo_dir.join(key)
        }

        fn flip(&self, key: &str, offset_from_end: Option<usize>, offset: usize) {
            let p = self.path(key);
            let mut b = std::fs::read(&p).unwrap();
            let i = match offset_from_end {
                Some(back) => b.len() - back,
                None => offset,
            };
            b[i] ^= 0x20;
            std::fs::write(&p, b).unwrap();
        }

        async fn index_files(&self) -> Vec<(IndexId, coffer_engine::format::index::IndexFile)> {
            let mut out = Vec::new();
            for id in self.repo.index_ids().await.unwrap() {
                out.push((id, self.repo.read_index(&id).await.unwrap()));
            }
            out
        }

        /// A data pack and the first data blob in it, with its offset.
        async fn data_pack(&self) -> (PackId, coffer_engine::format::pack::PackEntry) {
            for (_, f) in self.index_files().await {
                for p in f.packs {
                    if let Some(e) = p
                        .blobs
                        .iter()
                        .find(|b| b.blob_type == coffer_engine::format::blob::BlobType::Data)
                    {
                        return (p.id, *e);
                    }
                }
            }
            panic!("no data pack")
        }

        async fn reopen(&self) -> Arc<coffer_engine::Repository> {
            let store =
                coffer_engine::storage::open_location(self.repo_dir.to_str().unwrap(), false)
                    .unwrap();
            Arc::new(
                coffer_engine::Repository::open(store, b"test password")
                    .await
                    .unwrap(),
            )
        }

        /// Opens the repository through a cache in `dir`.
        async fn open_cached(
            &self,
            dir: &std::path::Path,
            password: &[u8],
        ) -> Arc<coffer_engine::Repository> {
            let store = coffer_engine::storage::open(
                self.repo_dir.to_str().unwrap(),
                &coffer_engine::storage::OpenOptions {
                    cache_dir: Some(dir.to_path_buf()),
                    ..Default::default()
                },
            )
            .unwrap();
            Arc::new(
                coffer_engine::Repository::open(store, password)
                    .await
                    .unwrap(),
            )
        }

        /// The names of the files in a cache directory.
        fn cached_files(&self, dir: &std::path::Path) -> Vec<String> {
            walkdir::WalkDir::new(dir)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        }

        /// Checks twice, through a cold cache and through the warm one: both
        /// must find the same problems, since check reads the store itself.
        async fn check(&self, read_data: ReadData) -> CheckReport {
            self.check_as(read_data, b"test password").await
        }

        async fn check_as(&self, read_data: ReadData, password: &[u8]) -> CheckReport {
            let opts = CheckOptions {
                read_data,
                concurrency: 4,
                ..Default::default()
            };
            let cold_dir = tempdir();
            let cold = check::check(
                self.open_cached(cold_dir.path(), password).await,
                opts.clone(),
            )
            .await
            .unwrap();
            let warm = check::check(
                self.open_cached(self.warm_cache.path(), password).await,
                opts,
            )
            .await
            .unwrap();
            let found = |r: &CheckReport| {
                let mut v: Vec<_> = r
                    .problems
                    .iter()
                    .map(|p| (p.kind, p.object.clone()))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(found(&cold), found(&warm), "cold cache, then warm cache");
            warm
        }

        /// Restores and asserts that nothing wrong was written: every file in
        /// the target equals the source, every file missing is reported.
        async fn restore_soundly(&self) -> coffer_engine::restore::RestoreSummary {
            self.try_restore_soundly().await.unwrap()
        }

        /// As `restore_soundly`, but a restore that cannot start is returned.
        /// Restores twice: with the whole index, and with the trees alone
        /// and the data blobs looked up two places at a time (what the
        /// command line does, in several batches); both must agree.
        async fn try_restore_soundly(
            &self,
        ) -> coffer_engine::Result<coffer_engine::restore::RestoreSummary> {
            let whole = self.restore_checked(false).await;
            let scoped = self.restore_checked(true).await;
            let shown = |r: &coffer_engine::Result<Restored>| match r {
                Ok((_, out, s)) => {
                    let mut e: Vec<_> = s
                        .errors
                        .iter()
                        .map(|e| (e.path.strip_prefix(out).unwrap().to_path_buf(), e.blob))
                        .collect();
                    e.sort();
                    e.dedup();
                    format!("{} files, errors {e:?}", s.files_restored)
                }
                Err(e) => format!("error {e}"),
            };
            assert_eq!(shown(&whole), shown(&scoped), "trees-only index");
            whole.map(|(_, _, s)| s)
        }

        /// Restores into a new directory, and checks each file against the source.
        async fn restore_checked(&self, trees_only: bool) -> coffer_engine::Result<Restored> {
            let repo = self.reopen().await;
            let index = if trees_only {
                repo.load_tree_index().await.unwrap()
            } else {
                repo.load_index().await.unwrap()
            };
            let target = tempdir();
            let out = target.path().join("out");
            let mut opts = RestoreOptions::new(self.snapshot.clone(), &out);
            if trees_only {
                opts.plan_limit = 2;
            }
            let summary = restore::restore(repo, index, opts).await?;
            for name in ["a.bin", "b.bin", "notes.txt"] {
                let restored = out.join(name);
                if restored.exists() {
                    assert_eq!(
                        std::fs::read(&restored).unwrap(),
                        std::fs::read(self.src.join(name)).unwrap(),
                        "{name}"
                    );
                } else {
                    assert!(
                        summary.errors.iter().any(|e| e.path == restored),
                        "{name} is missing but not reported"
                    );
                }
            }
            Ok((target, out, summary))
        }
    }

    /// A large directory whose second listing page is damaged: the restore
    /// goes on, writes what the pages before it list, and reports the rest
    /// of the directory as unreadable; `check` names the page.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_page_of_a_large_directory_fails_only_the_rest_of_it() {
        use coffer_engine::trees::{Step, Walk};
        let dir = tempdir();
        let src = dir.path().join("big");
        std::fs::create_dir_all(&src).unwrap();
        let n = coffer_engine::format::tree::PAGE_MAX_NODES * 2 + 5;
        for i in 0..n {
            std::fs::write(src.join(format!("f{i:06}")), format!("{i}")).unwrap();
        }
        let repo_dir = dir.path().join("repo");
        let repo = local_repo(
            &repo_dir,
            init_opts(small_chunks(), Compression::Zstd(3), 1 << 20),
        )
        .await;
        backup_paths(&repo, &[&src]).await;
        let index = repo.load_index().await.unwrap();
        let (_, snap) = repo.find_snapshot("latest").await.unwrap();
        let mut walk = Walk::new(&repo, &index, "".into(), snap.root.clone());
        let mut pages = Vec::new();
        while let Some(step) = walk.next().await.unwrap() {
            if let Step::Leave(_, p) = step {
                pages = p;
            }
        }
        assert!(pages.len() >= 3, "{pages:?}");
        let loc = index.get(&pages[1]).unwrap();
        let pack = repo_dir.join(layout::pack(&loc.pack));
        let mut bytes = std::fs::read(&pack).unwrap();
        bytes[loc.offset as usize + 20] ^= 0x20;
        std::fs::write(&pack, bytes).unwrap();

        let store =
            coffer_engine::storage::open_location(repo_dir.to_str().unwrap(), false).unwrap();
        let repo = Arc::new(
            coffer_engine::Repository::open(store, b"test password")
                .await
                .unwrap(),
        );
        let index = repo.load_index().await.unwrap();
        let out = dir.path().join("out");
        let summary = restore::restore(repo.clone(), index, RestoreOptions::new("latest", &out))
            .await
            .unwrap();
        assert!(
            summary
                .errors
                .iter()
                .any(|e| e.path == out && e.message.contains("the rest of this directory")),
            "{:?}",
            summary.errors
        );
        // The first page's files are there, byte for byte.
        assert_eq!(std::fs::read(out.join("f000000")).unwrap(), b"0");
        assert_eq!(std::fs::read(out.join("f000100")).unwrap(), b"100");
        let report = check::check(repo.clone(), CheckOptions::default())
            .await
            .unwrap();
        assert!(
            has(&report, "tree", &pages[1].to_hex()),
            "{:?}",
            report.problems
        );
    }

    fn has(report: &CheckReport, kind: &str, object_part: &str) -> bool {
        report.problems.iter().any(|p| {
            p.kind == kind && (p.object.contains(object_part) || p.message.contains(object_part))
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_intact_repository_checks_clean() {
        let f = fixture().await;
        let r = f.check(ReadData::All).await;
        assert!(r.is_ok(), "{:?}", r.problems);
        assert!(
            r.packs >= 3 && r.packs_read == r.packs && r.blobs_read > 5,
            "{r:?}"
        );
        let summary = f.restore_soundly().await;
        assert!(summary.errors.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flipped_byte_in_a_blob_is_found_by_read_data_and_never_restored() {
        let f = fixture().await;
        let (pack, blob) = f.data_pack().await;
        f.flip(&layout::pack(&pack), None, blob.offset as usize + 60);
        let structural = f.check(ReadData::None).await;
        assert!(
            structural.is_ok(),
            "size and header are intact: {:?}",
            structural.problems
        );
        let full = f.check(ReadData::All).await;
        assert!(has(&full, "blob", &blob.id.to_hex()), "{:?}", full.problems);
        assert!(
            has(&full, "pack-name", &pack.to_hex()),
            "{:?}",
            full.problems
        );
        let summary = f.restore_soundly().await;
        assert!(
            summary.errors.iter().any(|e| e.blob == Some(blob.id)),
            "{:?}",
            summary.errors
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flipped_byte_in_a_pack_header_or_trailer_is_found() {
        let f = fixture().await;
        let (pack, _) = f.data_pack().await;
        f.flip(&layout::pack(&pack), Some(10), 0);
        let r = f.check(ReadData::None).await;
        assert!(has(&r, "pack-header", &pack.to_hex()), "{:?}", r.problems);
        // The blobs themselves are intact and verified: restore is complete.
        assert!(f.restore_soundly().await.errors.is_empty());

        let f = fixture().await;
        let (pack, _) = f.data_pack().await;
        f.flip(&layout::pack(&pack), Some(2), 0);
        let r = f.check(ReadData::None).await;
        assert!(has(&r, "pack-header", &pack.to_hex()), "{:?}", r.problems);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_or_missing_pack_is_found_and_its_files_reported() {
        let f = fixture().await;
        let (pack, _) = f.data_pack().await;
        let p = f.path(&layout::pack(&pack));
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let r = f.check(ReadData::None).await;
        assert!(has(&r, "pack-size", &pack.to_hex()), "{:?}", r.problems);
        assert!(!f.restore_soundly().await.errors.is_empty());

        let f = fixture().await;
        let (pack, _) = f.data_pack().await;
        std::fs::remove_file(f.path(&layout::pack(&pack))).unwrap();
        let r = f.check(ReadData::All).await;
        assert!(has(&r, "pack-missing", &pack.to_hex()), "{:?}", r.problems);
        let summary = f.restore_soundly().await;
        assert!(!summary.errors.is_empty());
        assert!(
            summary
                .errors
                .iter()
                .all(|e| e.message.contains(&pack.to_hex())),
            "{:?}",
            summary.errors
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pack_renamed_to_another_packs_name_is_found_and_never_restored() {
        let f = fixture().await;
        // Two data packs (a tree pack's case is the damaged-tree fixture).
        let mut packs: Vec<PackId> = f
            .index_files()
            .await
            .into_iter()
            .flat_map(|(_, i)| i.packs.into_iter())
            .filter(|p| {
                p.blobs
                    .iter()
                    .all(|b| b.blob_type == coffer_engine::format::blob::BlobType::Data)
            })
            .map(|p| p.id)
            .collect();
        packs.sort();
        let (a, b) = (packs[0], packs[1]);
        std::fs::rename(f.path(&layout::pack(&a)), f.path(&layout::pack(&b))).unwrap();
        let r = f.check(ReadData::None).await;
        assert!(has(&r, "pack-missing", &a.to_hex()), "{:?}", r.problems);
        assert!(
            has(&r, "pack-size", &b.to_hex()) || has(&r, "pack-header", &b.to_hex()),
            "{:?}",
            r.problems
        );
        let full = f.check(ReadData::All).await;
        assert!(has(&full, "pack-name", &b.to_hex()), "{:?}", full.problems);
        f.restore_soundly().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_or_missing_index_file_is_found_and_its_blobs_reported() {
        let f = fixture().await;
        let files = f.index_files().await;
        let (id, _) = &files[0];
        f.flip(&layout::index(id), None, 30);
        let r = f.check(ReadData::None).await;
        assert!(has(&r, "index", &id.to_hex()), "{:?}", r.problems);
        assert!(
            has(&r, "blob-missing", "is in no index file"),
            "{:?}",
            r.problems
        );
        assert!(!r.unindexed_packs.is_empty());
        // The only index file is lost: the root tree cannot be found, and the
        // restore says which tree.
        let err = f.try_restore_soundly().await.unwrap_err();
        assert!(
            matches!(
                &err,
                coffer_engine::Error::NotFound {
                    missing: coffer_engine::error::Missing::Object,
                    what,
                } if what.contains("tree blob")
            ),
            "{err}"
        );

        let f = fixture().await;
        let files = f.index_files().await;
        std::fs::remove_file(f.path(&layout::index(&files[0].0))).unwrap();
        let r = f.check(ReadData::None).await;
        assert!(
            has(&r, "blob-missing", "is in no index file"),
            "{:?}",
            r.problems
        );
        assert!(f.try_restore_soundly().await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_directory_tree_is_named_and_the_rest_restored() {
        let f = fixture().await;
        let index = f.repo.load_index().await.unwrap();
        let (_, snap) = f.repo.find_snapshot("latest").await.unwrap();
        let sub = coffer_engine::trees::lookup(&f.repo, &index, &snap.root, b"sub")
            .await
            .unwrap()
            .unwrap();
        let tree = sub.subtree.unwrap();
        let loc = index.get(&tree).unwrap();
        f.flip(&layout::pack(&loc.pack), None, loc.offset as usize + 50);
        let r = f.check(ReadData::None).await;
        assert!(has(&r, "tree", &tree.to_hex()), "{:?}", r.problems);
        assert!(
            r.problems.iter().any(|p| p.object.contains("/sub/")),
            "{:?}",
            r.problems
        );
        let summary = f.restore_soundly().await;
        assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
        assert!(summary.errors[0].path.ends_with("sub") && summary.errors[0].blob == Some(tree));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_snapshot_is_found_and_named() {
        let f = fixture().await;
        f.flip(&format!("snapshots/{}", f.snapshot), None, 40);
        let r = f.check(ReadData::None).await;
        assert!(has(&r, "snapshot", &f.snapshot), "{:?}", r.problems);
        assert!(
            !f.cached_files(f.warm_cache.path()).contains(&f.snapshot),
            "the damaged snapshot's cache entry is dropped"
        );
        let repo = f.reopen().await;
        assert!(
            repo.snapshots().await.unwrap().is_empty(),
            "a damaged snapshot is not listed"
        );
        let err = repo.find_snapshot(&f.snapshot).await.unwrap_err();
        assert!(
            err.to_string().contains(&f.snapshot) && err.to_string().contains("damaged"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_key_file_or_config_is_named() {
        let f = fixture().await;
        // A second key, then damage the first: the second password still opens.
        let second = f.repo.add_key(b"second password", WEAK_KDF).await.unwrap();
        let first = f.repo.key_id();
        f.flip(&layout::key(&first), None, 20);
        let store =
            coffer_engine::storage::open_location(f.repo_dir.to_str().unwrap(), false).unwrap();
        let repo = Arc::new(
            coffer_engine::Repository::open(store.clone(), b"second password")
                .await
                .unwrap(),
        );
        assert_eq!(repo.key_id(), second);
        let r = f.check_as(ReadData::None, b"second password").await;
        assert!(has(&r, "key", &first.to_hex()), "{:?}", r.problems);
        assert!(
            !f.cached_files(f.warm_cache.path())
                .contains(&first.to_hex()),
            "the damaged key file's cache entry is dropped"
        );
        // With only the damaged key left, the error says damaged, not wrong password.
        std::fs::remove_file(f.path(&layout::key(&second))).unwrap();
        let err = coffer_engine::Repository::open(store.clone(), b"test password")
            .await
            .unwrap_err();
        assert!(matches!(err, coffer_engine::Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&first.to_hex()), "{err}");

        let f = fixture().await;
        f.flip("config", None, 30);
        // The warm cache still opens the repository; check reads the store.
        let cached = f.open_cached(f.warm_cache.path(), b"test password").await;
        let r = check::check(cached, CheckOptions::default()).await.unwrap();
        assert!(has(&r, "config", "config"), "{:?}", r.problems);
        let store =
            coffer_engine::storage::open_location(f.repo_dir.to_str().unwrap(), false).unwrap();
        let err = coffer_engine::Repository::open(store, b"test password")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("config") && err.to_string().contains("damaged"),
            "{err}"
        );
        // Nor does the cache serve the damaged config any longer.
        let store = coffer_engine::storage::open(
            f.repo_dir.to_str().unwrap(),
            &coffer_engine::storage::OpenOptions {
                cache_dir: Some(f.warm_cache.path().to_path_buf()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(coffer_engine::Repository::open(store, b"test password")
            .await
            .is_err());
    }

    /// Every envelope is bound to its repository (by the repository's own
    /// master key), to its kind (by its additional data) and to its name (by
    /// the hash-name check): an object moved, swapped, or copied from another
    /// repository is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_moved_swapped_or_from_another_repository_are_refused() {
        let (a, b) = (fixture().await, fixture().await);
        let snap_key = format!("snapshots/{}", b.snapshot);
        // B's snapshot under its own, correct name in A: it hashes to its
        // name, but A's key does not open it.
        std::fs::copy(b.path(&snap_key), a.path(&snap_key)).unwrap();
        let r = a.check(ReadData::None).await;
        assert!(has(&r, "snapshot", &b.snapshot), "{:?}", r.problems);
        let err = a
            .reopen()
            .await
            .find_snapshot(&b.snapshot)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        std::fs::remove_file(a.path(&snap_key)).unwrap();
        // A's snapshot presented as an index file, under its own hash: the
        // additional data of another kind does not open.
        let as_index = format!("index/{}", a.snapshot);
        std::fs::copy(
            a.path(&format!("snapshots/{}", a.snapshot)),
            a.path(&as_index),
        )
        .unwrap();
        let r = a.check(ReadData::None).await;
        assert!(has(&r, "index", &a.snapshot), "{:?}", r.problems);
        std::fs::remove_file(a.path(&as_index)).unwrap();
        // An older object put in place of another (a rollback): its bytes do
        // not hash to the name.
        let files = a.index_files().await;
        let (first, _) = &files[0];
        let second = b.index_files().await[0].0;
        std::fs::copy(
            b.path(&coffer_engine::format::layout::index(&second)),
            a.path(&coffer_engine::format::layout::index(first)),
        )
        .unwrap();
        let r = a.check(ReadData::None).await;
        assert!(has(&r, "index", &first.to_hex()), "{:?}", r.problems);
        assert!(
            r.problems
                .iter()
                .any(|p| p.message.contains("does not match its id")),
            "{:?}",
            r.problems
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_data_subsets_cover_every_pack_exactly_once() {
        let f = fixture().await;
        let all = f.check(ReadData::All).await.packs_read;
        let mut sum = 0;
        for n in 1..=3 {
            sum += f.check(ReadData::Subset { n, m: 3 }).await.packs_read;
        }
        assert_eq!(sum, all);
        assert_eq!(f.check(ReadData::Percent(100.0)).await.packs_read, all);
        assert!(ReadData::parse_subset("0/3").is_err() && ReadData::parse_subset("4/3").is_err());
        assert!(ReadData::parse_subset("150%").is_err() && ReadData::parse_subset("x").is_err());
        assert_eq!(
            ReadData::parse_subset("2/7").unwrap(),
            ReadData::Subset { n: 2, m: 7 }
        );
    }
}

mod keys {
    use super::*;

    async fn keys_repo() -> (tempfile::TempDir, std::sync::Arc<coffer_engine::Repository>) {
        let dir = tempdir();
        let repo = local_repo(
            &dir.path().join("repo"),
            init_opts(small_chunks(), Compression::Off, 1 << 20),
        )
        .await;
        (dir, repo)
    }

    async fn open_at(
        repo_dir: &std::path::Path,
        password: &[u8],
    ) -> coffer_engine::Result<coffer_engine::Repository> {
        let store = coffer_engine::storage::open_location(repo_dir.to_str().unwrap(), false)?;
        coffer_engine::Repository::open(store, password).await
    }

    /// A key file removed between the listing and its read (`key remove`
    /// elsewhere, or the key that an init which lost the race for the config
    /// takes back) does not stop an open with another key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_file_removed_while_the_repository_opens_is_skipped() {
        use coffer_engine::storage::{Faults, Faulty, Hold, HoldOp};
        use std::sync::Arc;
        let (dir, repo) = keys_repo().await;
        let doomed = repo.add_key(b"other", WEAK_KDF).await.unwrap();
        // The opener's reads of key files wait until the doomed key is gone.
        let hold = Arc::new(Hold::new(HoldOp::Get, "keys/"));
        let inner =
            coffer_engine::storage::open_location(dir.path().join("repo").to_str().unwrap(), false)
                .unwrap();
        let faults = Faults {
            holds: vec![hold.clone()],
            ..Default::default()
        };
        let store: coffer_engine::storage::DynStore = Arc::new(Faulty::new(inner, faults, 1));
        let open =
            tokio::spawn(
                async move { coffer_engine::Repository::open(store, b"test password").await },
            );
        // (A bound on a wait for an event, not a timing: a hang fails.)
        tokio::time::timeout(std::time::Duration::from_secs(120), hold.wait_held(1))
            .await
            .expect("the open never read a key file");
        repo.remove_key(&doomed).await.unwrap();
        hold.release();
        let opened = open.await.unwrap().unwrap();
        assert_eq!(opened.key_id(), repo.key_id());
    }

    /// A process with less memory than the format's largest Argon2 cost
    /// (the agent) opens repositories with a cap: a key file that asks for
    /// more is not derived, and the error says so; the others still open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_file_above_the_process_s_kdf_cap_is_not_tried() {
        let (dir, repo) = keys_repo().await;
        let costly = coffer_engine::keys::KdfCost {
            memory_kib: 64 * 1024,
            iterations: 1,
            parallelism: 1,
        };
        repo.add_key(b"costly", costly).await.unwrap();
        let store = || {
            coffer_engine::storage::open_location(dir.path().join("repo").to_str().unwrap(), false)
                .unwrap()
        };
        let cap = coffer_engine::OpenLimits {
            max_kdf_memory_kib: 32 * 1024,
        };
        let err = coffer_engine::Repository::open_with(store(), b"costly", &cap)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, coffer_engine::Error::WrongPassword { .. }),
            "{err}"
        );
        assert!(
            coffer_engine::Repository::open_with(store(), b"test password", &cap)
                .await
                .is_ok()
        );
        assert!(coffer_engine::Repository::open(store(), b"costly")
            .await
            .is_ok());
    }

    /// An object larger than any valid one at its key (a `config` of 2 MiB,
    /// a key file of 2 MiB) is refused before it is read whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversized_object_is_refused_before_it_is_read() {
        let (dir, repo) = keys_repo().await;
        let repo_dir = dir.path().join("repo");
        let big = vec![0u8; 2 << 20];
        let key_file = repo_dir.join(coffer_engine::format::layout::key(&repo.key_id()));
        std::fs::write(repo_dir.join("config"), &big).unwrap();
        let err = open_at(&repo_dir, b"test password")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("config") && err.contains("more than any valid object"),
            "{err}"
        );
        std::fs::write(&key_file, &big).unwrap();
        let store =
            coffer_engine::storage::open_location(repo_dir.to_str().unwrap(), false).unwrap();
        let err = store
            .get(&coffer_engine::format::layout::key(&repo.key_id()))
            .await
            .unwrap_err();
        assert!(
            err.message.contains("more than any valid object"),
            "{err:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_can_be_added_changed_and_removed_safely() {
        let (dir, repo) = keys_repo().await;
        let repo_dir = dir.path().join("repo");
        let open = |pw: &'static [u8]| open_at(&repo_dir, pw);
        let first = repo.key_id();
        // The last key and the key in use cannot be removed.
        assert!(repo.remove_key(&first).await.is_err());
        let second = repo.add_key(b"two", WEAK_KDF).await.unwrap();
        assert_eq!(repo.list_keys().await.unwrap().len(), 2);
        assert!(open(b"two").await.is_ok());
        let err = repo.remove_key(&first).await.unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        // From the second key, the first can go; then the second is the last.
        let by_second = open(b"two").await.unwrap();
        by_second.remove_key(&first).await.unwrap();
        assert!(matches!(
            open(b"test password").await,
            Err(coffer_engine::Error::WrongPassword { .. })
        ));
        // Changing the password replaces the key in use.
        let mut by_second = open(b"two").await.unwrap();
        let third = by_second.change_password(b"three", WEAK_KDF).await.unwrap();
        let keys = by_second.list_keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].id, third);
        assert!(keys[0].current);
        assert!(open(b"two").await.is_err());
        let reopened = open(b"three").await.unwrap();
        assert_eq!(reopened.config().id, repo.config().id);
        assert_ne!(second, third);
    }

    /// Host, user and program are options of each operation: a daemon that
    /// works for many namespaces records what it is told.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostname_username_and_program_are_options() {
        use coffer_engine::keys::KeyOwner;
        let dir = tempdir();
        let owner = |h: &str, u: &str| KeyOwner {
            hostname: h.into(),
            username: u.into(),
        };
        let mut opts = init_opts(small_chunks(), Compression::Off, 1 << 20);
        opts.key_owner = Some(owner("node-7", "coffer-agent"));
        let repo = local_repo(&dir.path().join("repo"), opts).await;
        let added = repo
            .add_key_as(b"two", WEAK_KDF, owner("ci", "team-a"))
            .await
            .unwrap();
        let keys = repo.list_keys().await.unwrap();
        let shown = |id| {
            let k = keys.iter().find(|k| k.id == id).unwrap();
            (k.hostname.clone(), k.username.clone())
        };
        assert_eq!(
            shown(repo.key_id()),
            ("node-7".into(), "coffer-agent".into())
        );
        assert_eq!(shown(added), ("ci".into(), "team-a".into()));

        let src = dir.path().join("src");
        write(&src.join("f"), b"x");
        let mut o = BackupOptions::new([src.as_path()]);
        o.hostname = Some("node-7".into());
        o.username = Some("team-a".into());
        o.program = Some("coffer-agent 9.9".into());
        let s = backup_with(&repo, o).await.snapshot;
        assert_eq!(
            (s.hostname.as_str(), s.username.as_str(), s.program.as_str()),
            ("node-7", "team-a", "coffer-agent 9.9")
        );
    }

    /// Anyone who can write to the bucket can add key files; one that declares
    /// the costliest Argon2id parameters must not make opening slow or large.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_file_with_a_hostile_cost_is_refused_without_deriving() {
        use coffer_engine::keys::KeyFile;
        let (dir, repo) = keys_repo().await;
        let repo_dir = dir.path().join("repo");
        let key_path = |id: &coffer_engine::format::KeyId| {
            repo_dir.join(coffer_engine::format::layout::key(id))
        };
        let mut hostile =
            KeyFile::from_bytes(&std::fs::read(key_path(&repo.key_id())).unwrap()).unwrap();
        hostile.kdf.memory_kib = 4 * 1024 * 1024;
        hostile.kdf.iterations = 64;
        let bytes = hostile.to_bytes();
        let hostile_id = coffer_engine::format::KeyId::of(&bytes);
        std::fs::write(key_path(&hostile_id), &bytes).unwrap();
        let open = |pw: &'static [u8]| open_at(&repo_dir, pw);
        // Deriving with 4 GiB and 64 passes would take minutes: these return at once.
        assert_eq!(
            open(b"test password").await.unwrap().key_id(),
            repo.key_id()
        );
        assert!(matches!(
            open(b"wrong").await,
            Err(coffer_engine::Error::WrongPassword { .. })
        ));
        let listed = repo.list_keys().await.unwrap();
        let why = listed
            .iter()
            .find(|k| k.id == hostile_id)
            .and_then(|k| k.damaged.clone())
            .expect("the hostile key file is listed as unusable");
        assert!(why.contains("SPEC.md") && why.contains("4194304"), "{why}");
        let report = coffer_engine::check::check(repo.clone(), Default::default())
            .await
            .unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.kind == "key" && p.object.contains(&hostile_id.to_hex())),
            "{:?}",
            report.problems
        );
        // It can be removed like any key file.
        repo.remove_key(&hostile_id).await.unwrap();
        assert_eq!(repo.list_keys().await.unwrap().len(), 1);
    }
}

mod incremental {
    use super::*;
    use coffer_engine::backup::{ChangeRules, ParentChoice};

    /// A directory whose mtime lies in the future has its atime updated by
    /// every plain read (relatime). Reading it with `O_NOATIME` changes
    /// nothing, so an unchanged re-backup stores no new tree.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_changes_no_atime_and_an_unchanged_rebackup_writes_no_tree() {
        let dir = tempdir();
        let src = dir.path().join("src");
        write(&src.join("a/b/file.txt"), b"hello");
        write(&src.join("a/other.txt"), b"other");
        write(&src.join("top.txt"), b"top");
        let day = std::time::Duration::from_secs(86_400);
        let now = std::time::SystemTime::now();
        let dirs = [src.clone(), src.join("a"), src.join("a/b")];
        for d in &dirs {
            std::fs::File::open(d)
                .unwrap()
                .set_times(
                    std::fs::FileTimes::new()
                        .set_accessed(now - 30 * day)
                        .set_modified(now + day),
                )
                .unwrap();
        }
        let atimes = || -> Vec<_> {
            dirs.iter()
                .map(|d| std::fs::metadata(d).unwrap().accessed().unwrap())
                .collect()
        };
        let before = atimes();
        let repo = local_repo(
            &dir.path().join("repo"),
            init_opts(small_chunks(), Compression::Off, 1 << 20),
        )
        .await;
        let first = backup_paths(&repo, &[&src]).await;
        assert_eq!(atimes(), before, "the backup changed an access time");
        let second = backup_paths(&repo, &[&src]).await;
        assert_eq!(
            second.snapshot.root.subtree, first.snapshot.root.subtree,
            "an unchanged re-backup stores the same trees"
        );
        assert_eq!(second.snapshot.summary.dirs_changed, 0);
        assert_eq!(second.packs_written, 0, "nothing new was stored");
    }

    fn opts(src: &Path) -> BackupOptions {
        let mut o = BackupOptions::new([src]);
        o.hostname = Some("host-a".into());
        o
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unchanged_files_are_not_read_and_changes_are_counted() {
        let dir = tempdir();
        let src = dir.path().join("src");
        for i in 0..20 {
            write(
                &src.join(format!("d{}/f{i}", i % 4)),
                &text(200 + i, 30_000),
            );
        }
        write(&src.join("keep/big.bin"), &noise(50, 500_000));
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
        let first = backup_with(&repo, opts(&src)).await;
        let s = &first.snapshot.summary;
        assert_eq!(
            (s.files_new, s.files_changed, s.files_unmodified),
            (21, 0, 0)
        );
        assert_eq!(s.dirs_new, 6, "5 directories and the root");
        assert_eq!(first.snapshot.parent, None);
        assert_eq!(first.bytes_read, s.total_bytes_processed);

        // Nothing changed: nothing is read, nothing is added.
        let second = backup_with(&repo, opts(&src)).await;
        let s = &second.snapshot.summary;
        assert_eq!(second.snapshot.parent, Some(first.snapshot_id));
        assert_eq!(
            (s.files_new, s.files_changed, s.files_unmodified),
            (0, 0, 21)
        );
        assert_eq!((s.dirs_new, s.dirs_changed, s.dirs_unmodified), (0, 0, 6));
        assert_eq!(second.bytes_read, 0, "an unchanged backup reads no file");
        assert_eq!(s.data_blobs, 0);
        assert_eq!(
            s.total_bytes_processed,
            first.snapshot.summary.total_bytes_processed
        );

        // One modified, one with the same size and mtime but new content
        // (caught by its ctime), one new, one removed, one chmod'ed.
        write(&src.join("d0/f0"), &text(999, 31_000));
        let victim = src.join("d1/f1");
        let md = std::fs::metadata(&victim).unwrap();
        use std::os::unix::fs::MetadataExt;
        let (mt, mtn) = (md.mtime(), md.mtime_nsec() as u32);
        let mut same_size = text(201, 30_000);
        same_size[10] ^= 1;
        std::fs::write(&victim, &same_size).unwrap();
        set_times(&victim, (mt, mtn), (mt, mtn));
        write(&src.join("d2/new"), b"new file");
        std::fs::remove_file(src.join("d3/f3")).unwrap();
        std::fs::set_permissions(
            src.join("d3/f7"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let third = backup_with(&repo, opts(&src)).await;
        let s = &third.snapshot.summary;
        assert_eq!(
            (s.files_new, s.files_changed, s.files_unmodified),
            (1, 3, 17),
            "{s:?}"
        );
        assert_eq!((s.dirs_new, s.dirs_changed), (0, 5), "{s:?}");
        assert!(
            third.bytes_read < 200_000,
            "only the changed files were read: {}",
            third.bytes_read
        );
        let target = tempdir();
        restore_to(&repo, &third.snapshot_id.to_hex(), target.path()).await;
        let mut expected = manifest(&src);
        let mut actual = manifest(target.path());
        expected.remove(&b""[..]);
        actual.remove(&b""[..]);
        assert_same(&expected, &actual);

        // --force reads everything again; another host starts from scratch.
        let mut o = opts(&src);
        o.force = true;
        let forced = backup_with(&repo, o).await;
        assert_eq!(
            forced.bytes_read,
            forced.snapshot.summary.total_bytes_processed
        );
        assert_eq!(forced.snapshot.summary.files_unmodified, 21);
        let mut o = opts(&src);
        o.hostname = Some("host-b".into());
        let other = backup_with(&repo, o).await;
        assert_eq!(other.snapshot.parent, None);
        assert_eq!(other.snapshot.summary.files_new, 21);
        // An explicit parent.
        let mut o = opts(&src);
        o.hostname = Some("host-b".into());
        o.parent = ParentChoice::Snapshot(first.snapshot_id.short());
        let explicit = backup_with(&repo, o).await;
        assert_eq!(explicit.snapshot.parent, Some(first.snapshot_id));
    }

    /// A copy of the files (`cp -a`: same sizes and mtimes, new inodes and
    /// ctimes), as a CSI clone that copies files gives a mover each time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_of_the_files_is_read_again_unless_inodes_and_ctimes_are_ignored() {
        let dir = tempdir();
        let src = dir.path().join("a/data");
        for i in 0..12 {
            write(
                &src.join(format!("d{}/f{i}", i % 3)),
                &text(300 + i, 20_000),
            );
        }
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
        let first = backup_with(&repo, opts(&src)).await;
        assert!(first.snapshot.ignored_changes.is_empty());
        let copy = dir.path().join("b/data");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        let cp = std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(cp.success());
        let from_first = |changes: ChangeRules| {
            let mut o = opts(&copy);
            o.parent = ParentChoice::Snapshot(first.snapshot_id.short());
            o.changes = changes;
            o
        };
        let total = first.snapshot.summary.total_bytes_processed;

        // By default, and ignoring only the ctime, the new inodes count.
        for changes in [
            ChangeRules::default(),
            ChangeRules {
                ignore_ctime: true,
                ..Default::default()
            },
        ] {
            let again = backup_with(&repo, from_first(changes)).await;
            assert_eq!(again.snapshot.parent, Some(first.snapshot_id));
            assert_eq!(again.bytes_read, total, "{changes:?}: every file read");
        }

        // Ignoring inodes (and so ctimes): only metadata is read, and the
        // snapshot says which rules it used.
        let ignore_inode = ChangeRules {
            ignore_inode: true,
            ..Default::default()
        };
        let quick = backup_with(&repo, from_first(ignore_inode)).await;
        let s = &quick.snapshot.summary;
        assert_eq!(quick.bytes_read, 0, "{s:?}");
        assert_eq!((s.files_unmodified, s.total_bytes_processed), (12, total));
        assert_eq!(quick.snapshot.ignored_changes, ["inode", "ctime"]);
        let target = tempdir();
        restore_to(&repo, &quick.snapshot_id.to_hex(), target.path()).await;
        let (mut expected, mut actual) = (manifest(&copy), manifest(target.path()));
        expected.remove(&b""[..]);
        actual.remove(&b""[..]);
        assert_same(&expected, &actual);

        // The documented limit: a file rewritten in the copy with its size
        // and mtime put back is taken from the parent unread; by default
        // its ctime gives it away.
        let victim = copy.join("d1/f1");
        let md = std::fs::metadata(&victim).unwrap();
        use std::os::unix::fs::MetadataExt;
        let (mt, mtn) = (md.mtime(), md.mtime_nsec() as u32);
        let mut changed = text(301, 20_000);
        changed[5] ^= 1;
        std::fs::write(&victim, &changed).unwrap();
        set_times(&victim, (mt, mtn), (mt, mtn));
        let parent_quick = |changes: ChangeRules| {
            let mut o = opts(&copy);
            o.parent = ParentChoice::Snapshot(quick.snapshot_id.short());
            o.changes = changes;
            o
        };
        let missed = backup_with(&repo, parent_quick(ignore_inode)).await;
        assert_eq!(missed.bytes_read, 0);
        let caught = backup_with(&repo, parent_quick(ChangeRules::default())).await;
        assert_eq!(caught.bytes_read, 20_000, "only the rewritten file");
        assert_eq!(caught.snapshot.summary.files_changed, 1);

        // Ignoring the ctime alone: a chmod (a new ctime, the same inode)
        // reads nothing, where by default it reads the file again.
        std::fs::set_permissions(
            src.join("d2/f2"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let mut o = opts(&src);
        o.changes.ignore_ctime = true;
        let chmod_only = backup_with(&repo, o).await;
        assert_eq!(chmod_only.bytes_read, 0);
        assert_eq!(chmod_only.snapshot.ignored_changes, ["ctime"]);
        // By default, compared with the first snapshot (the old ctime).
        let mut o = opts(&src);
        o.parent = ParentChoice::Snapshot(first.snapshot_id.short());
        let strict = backup_with(&repo, o).await;
        assert_eq!(strict.bytes_read, 20_000, "the chmod'ed file is read again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_large_file_chunked_on_many_threads_equals_one_pass() {
        let dir = tempdir();
        let src = dir.path().join("src");
        let mut big = noise(60, 3_000_000);
        big[1_000_000..1_300_000].fill(0);
        let copy = big[10_000..400_000].to_vec();
        big[2_000_000..2_390_000].copy_from_slice(&copy);
        write(&src.join("image.raw"), &big);
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
        let mut contents = Vec::new();
        for threads in [1, 2, 5] {
            let (_, content) = back_up_on_threads(&repo, &src, threads, b"image.raw").await;
            contents.push(content);
        }
        assert_eq!(contents[0], contents[1]);
        assert_eq!(contents[0], contents[2]);
        let target = tempdir();
        restore_to(&repo, "latest", target.path()).await;
        assert_eq!(std::fs::read(target.path().join("image.raw")).unwrap(), big);
    }
}

mod selection {
    use super::*;
    use coffer_engine::select::{Selection, CACHEDIR_SIGNATURE};

    /// The directories read ahead change nothing: with and without the
    /// lookahead, a wide and deep tree gives the same root tree, byte for byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_walk_lookahead_records_the_same_trees_as_a_plain_walk() {
        let dir = tempdir();
        let src = dir.path().join("src");
        kitchen_sink(&src);
        for a in 0..40 {
            for b in 0..5 {
                write(
                    &src.join(format!("wide/{a:02}/{b}/file")),
                    format!("{a}/{b}").as_bytes(),
                );
            }
        }
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
        let mut roots = Vec::new();
        for walk_threads in [4, 0, 1, 4] {
            let mut opts = BackupOptions::new([&src]);
            opts.walk_threads = walk_threads;
            opts.parent = coffer_engine::backup::ParentChoice::None;
            let s = backup_with(&repo, opts).await;
            assert!(s.errors.is_empty(), "{:?}", s.errors);
            roots.push(s.snapshot.root.subtree);
        }
        // The first backup's readlink moved the old atimes the kitchen sink
        // gave its symlinks (relatime); from then on the source holds still.
        let roots = &roots[1..];
        assert!(roots[0].is_some());
        assert!(roots.iter().all(|r| *r == roots[0]), "{roots:?}");
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(root)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        v.sort();
        v
    }

    /// Backs `src` up with `sel` and lists what a restore gives. The
    /// progress totals (a separate quick walk) must count exactly what the
    /// backup went through.
    async fn backup_and_list(src: &Path, sel: Selection) -> Vec<String> {
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
        let mut o = BackupOptions::new([src]);
        o.selection = sel;
        let last = std::sync::Arc::new(std::sync::Mutex::new(None));
        let l = last.clone();
        o.progress = Some(std::sync::Arc::new(
            move |p: &coffer_engine::backup::BackupProgress| {
                *l.lock().unwrap() = Some((p.total_files, p.total_bytes));
            },
        ));
        let s = backup_with(&repo, o).await;
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let totals = last.lock().unwrap().expect("no progress report");
        let summary = &s.snapshot.summary;
        assert_eq!(
            totals,
            (
                Some(summary.total_files_processed),
                Some(summary.total_bytes_processed)
            ),
            "progress totals against what the backup processed"
        );
        let target = tempdir();
        restore_to(&repo, "latest", target.path()).await;
        listing(target.path())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn excludes_follow_gitignore_rules_and_the_other_options() {
        let dir = tempdir();
        let src = dir.path().join("src");
        for f in [
            "a.log",
            "keep.txt",
            "sub/b.LOG",
            "node_modules/x",
            "data/tmp/y",
            "x/data/tmp/z",
            "nob/.nobackup",
            "nob/f",
        ] {
            write(&src.join(f), b"x");
        }
        write(&src.join("big.bin"), &vec![7u8; 600_000]);
        let mut tag = CACHEDIR_SIGNATURE.to_vec();
        tag.extend_from_slice(b"\n# a cache\n");
        write(&src.join("cache/CACHEDIR.TAG"), &tag);
        write(&src.join("cache/junk"), b"junk");
        write(&src.join("fakecache/CACHEDIR.TAG"), b"not a signature");
        write(&src.join("fakecache/junk"), b"junk");

        let everything = backup_and_list(&src, Selection::default()).await;
        assert_eq!(everything.len(), 23, "{everything:?}");

        let anchored = format!("{}/data/tmp", src.display());
        let got = backup_and_list(
            &src,
            Selection {
                exclude: vec!["*.log".into(), "node_modules".into(), anchored],
                exclude_if_present: vec![".nobackup".into()],
                exclude_caches: true,
                exclude_larger_than: Some(500_000),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            got,
            [
                "cache",
                "cache/CACHEDIR.TAG",
                "data",
                "fakecache",
                "fakecache/CACHEDIR.TAG",
                "fakecache/junk",
                "keep.txt",
                "sub",
                "sub/b.LOG",
                "x",
                "x/data",
                "x/data/tmp",
                "x/data/tmp/z",
            ]
        );

        let got = backup_and_list(
            &src,
            Selection {
                iexclude: vec!["*.log".into()],
                ..Default::default()
            },
        )
        .await;
        assert!(
            !got.contains(&"a.log".to_string()) && !got.contains(&"sub/b.LOG".to_string()),
            "{got:?}"
        );
        assert_eq!(got.len(), 21);

        let got = backup_and_list(
            &src,
            Selection {
                exclude: vec!["/**/tmp/*".into(), "!z".into()],
                ..Default::default()
            },
        )
        .await;
        assert!(
            got.contains(&"x/data/tmp/z".to_string()) && !got.contains(&"data/tmp/y".to_string()),
            "{got:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_file_system_keeps_mount_points_empty() {
        let dir = tempdir();
        let src = dir.path().join("src");
        write(&src.join("local"), b"here");
        std::fs::create_dir_all(src.join("mnt")).unwrap();
        let mounted = is_root()
            && std::process::Command::new("mount")
                .args(["-t", "tmpfs", "none"])
                .arg(src.join("mnt"))
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if !mounted {
            eprintln!("skipped: mounting a tmpfs needs root and mount permission");
            return;
        }
        write(&src.join("mnt/remote"), b"elsewhere");
        let both = backup_and_list(&src, Selection::default()).await;
        let one = backup_and_list(
            &src,
            Selection {
                one_file_system: true,
                ..Default::default()
            },
        )
        .await;
        let _ = std::process::Command::new("umount")
            .arg(src.join("mnt"))
            .status();
        assert_eq!(both, ["local", "mnt", "mnt/remote"]);
        assert_eq!(one, ["local", "mnt"]);
    }
}

/// Block devices and large images: contents as one file, holes skipped,
/// restore onto a device.
mod devices {
    use super::*;

    /// A 24 MiB image: data, a hole, text, a zero run written as data, data.
    fn image(path: &Path) -> Vec<u8> {
        let mut img = vec![0u8; 24 << 20];
        img[..3 << 20].copy_from_slice(&noise(70, 3 << 20));
        img[10 << 20..13 << 20].copy_from_slice(&text(71, 3 << 20));
        img[20 << 20..22 << 20].copy_from_slice(&noise(72, 2 << 20));
        // Written sparsely: only the non-zero regions, so the file has holes.
        let f = std::fs::File::create(path).unwrap();
        use std::os::unix::fs::FileExt;
        for (s, e) in [(0, 3 << 20), (10 << 20, 13 << 20), (20 << 20, 22 << 20)] {
            f.write_all_at(&img[s..e], s as u64).unwrap();
        }
        f.set_len(img.len() as u64).unwrap();
        img
    }

    fn losetup(img: &Path) -> Option<String> {
        if !is_root() {
            return None;
        }
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(img)
            .output()
            .ok()?;
        let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && dev.starts_with("/dev/")).then_some(dev)
    }

    /// Detaches its loop devices when dropped, after a failed assertion too.
    struct Attached(Vec<String>);

    impl Drop for Attached {
        fn drop(&mut self) {
            for dev in &self.0 {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", dev])
                    .status();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sparse_image_file_skips_its_holes_and_round_trips() {
        let dir = tempdir();
        let img_path = dir.path().join("disk.img");
        let img = image(&img_path);
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(2), 1 << 20)).await;
        let s = backup_paths(&repo, &[&img_path]).await;
        assert_eq!(s.snapshot.summary.total_bytes_processed, 24 << 20);
        assert!(
            s.bytes_read <= 9 << 20,
            "holes are not read: read {} bytes",
            s.bytes_read
        );
        let target = tempdir();
        restore_to(&repo, "latest", target.path()).await;
        let out = target.path().join("disk.img");
        assert!(std::fs::read(&out).unwrap() == img);
        assert!(
            allocated(&out) <= 9 << 20,
            "restored holes stay holes: {}",
            allocated(&out)
        );
    }

    /// Many extents of many sizes (some longer than two segments), read in
    /// groups and sealed on several threads: the same chunks on any number of
    /// threads, no chunk across a hole, and a restore equal to the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sparse_file_of_many_extents_gives_the_same_chunks_on_any_threads() {
        use std::os::unix::fs::FileExt;
        let dir = tempdir();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let path = src.join("disk.img");
        let sizes = [
            8_192usize, 300_000, 1_400_000, 4_096, 700_000, 90_000, 1_100_000, 250_000, 40_960,
            600_000,
        ];
        let f = std::fs::File::create(&path).unwrap();
        let mut pos = 65_536u64;
        for (i, n) in sizes.iter().enumerate() {
            let seed = 80 + i as u64;
            let data = if i % 3 == 1 {
                text(seed, *n)
            } else {
                noise(seed, *n)
            };
            f.write_all_at(&data, pos).unwrap();
            pos = (pos + *n as u64).div_ceil(4096) * 4096 + 65_536 * (1 + i as u64 % 3);
        }
        f.set_len(pos).unwrap();
        drop(f);
        let img = std::fs::read(&path).unwrap();
        let data: usize = sizes.iter().sum();
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
        let mut contents = Vec::new();
        for threads in [1, 2, 5] {
            let (read, content) = back_up_on_threads(&repo, &src, threads, b"disk.img").await;
            assert!(
                read < (data + sizes.len() * 4096) as u64,
                "holes are not read: read {read} bytes"
            );
            contents.push(content);
        }
        assert_eq!(contents[0], contents[1]);
        assert_eq!(contents[0], contents[2]);
        // Each stored chunk lies within one data extent of the file.
        let file = std::fs::File::open(&path).unwrap();
        let mut at = 0u64;
        for c in &contents[0] {
            if c.id.is_some() {
                let hole = nix::unistd::lseek(&file, at as i64, nix::unistd::Whence::SeekHole)
                    .unwrap() as u64;
                assert!(
                    hole >= at + c.len,
                    "the chunk at {at} runs into the hole at {hole}"
                );
            }
            at += c.len;
        }
        assert_eq!(at, img.len() as u64);
        let target = tempdir();
        restore_to(&repo, "latest", target.path()).await;
        let out = target.path().join("disk.img");
        assert!(std::fs::read(&out).unwrap() == img);
        assert!(allocated(&out) < img.len() as u64, "holes stay holes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_block_device_backs_up_as_one_file_and_restores_onto_a_device() {
        let dir = tempdir();
        let img_path = dir.path().join("src.img");
        let img = image(&img_path);
        let Some(dev) = losetup(&img_path) else {
            eprintln!("skipped: needs root and losetup (the image-file test covers the rest)");
            return;
        };
        let mut attached = Attached(vec![dev.clone()]);
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(2), 1 << 20)).await;
        let first = backup_paths(&repo, &[Path::new(&dev)]).await;
        let name = Path::new(&dev)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(first.snapshot.summary.total_bytes_processed, 24 << 20);
        // A device is read every time; 1 % of its blocks changed costs about 1 %.
        {
            use std::os::unix::fs::FileExt;
            let d = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
            for k in 0..6u64 {
                d.write_all_at(&noise(80 + k, 40_000), k * (4 << 20) + 500_000)
                    .unwrap();
            }
            d.sync_all().unwrap();
        }
        let second = backup_paths(&repo, &[Path::new(&dev)]).await;
        assert_eq!(second.bytes_read, 24 << 20, "a device is always read");
        let added = second.snapshot.summary.data_added;
        assert!(added < 3 << 20, "240 KB changed, {added} bytes added");
        let mut changed = img.clone();
        let d = std::fs::read(&dev).unwrap();
        changed.copy_from_slice(&d);

        // Restore onto another device of the same size, which holds garbage.
        let dst_img = dir.path().join("dst.img");
        std::fs::write(&dst_img, vec![0xAAu8; 24 << 20]).unwrap();
        let dst = losetup(&dst_img).unwrap();
        attached.0.push(dst.clone());
        let index = repo.load_index().await.unwrap();
        let mut opts = RestoreOptions::new("latest", &dst);
        // In passes of 5 blob places: the device is written in many.
        opts.plan_limit = 5;
        let err = restore::restore(repo.clone(), index.clone(), opts.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                coffer_engine::Error::TargetExists {
                    conflict: coffer_engine::error::Conflict::BlockDevice,
                    ..
                }
            ),
            "{err}"
        );
        opts.overwrite_device = true;
        let r = restore::restore(repo.clone(), index.clone(), opts)
            .await
            .unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(
            std::fs::read(&dst).unwrap() == changed,
            "the device holds the snapshot's bytes, zeros included"
        );
        // A file restore of the same snapshot path.
        let t = tempdir();
        let mut o = RestoreOptions::new("latest", t.path());
        o.subpath = Some(name.clone().into());
        restore::restore(repo.clone(), index, o).await.unwrap();
        assert!(std::fs::read(t.path().join(&name)).unwrap() == changed);
    }
}

/// Forget, prune and the concurrency protocol, inside one process.
mod retention {
    use super::*;
    use coffer_engine::check::{self, CheckOptions, ReadData};
    use coffer_engine::forget::{self, Filter, GroupBy, Policy};
    use coffer_engine::protocol::{Live, Timing, SESSIONS};
    use coffer_engine::prune::{self, PruneOptions};
    use coffer_engine::storage::{Faults, Faulty, Hold, HoldOp};
    use std::sync::Arc;
    use std::time::Duration;

    fn fast(max_wait: Duration) -> PruneOptions {
        PruneOptions {
            max_unused_percent: 0.0,
            timing: Timing::fast(),
            max_wait,
            ..Default::default()
        }
    }

    async fn assert_checks(repo: &Arc<coffer_engine::Repository>) {
        let r = check::check(
            repo.clone(),
            CheckOptions {
                read_data: ReadData::All,
                concurrency: 4,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(r.is_ok(), "{:?}", r.problems);
    }

    /// The plan that keeps only the latest snapshot.
    async fn keep_last_one(repo: &coffer_engine::Repository) -> forget::ForgetPlan {
        let policy = Policy {
            last: 1,
            ..Default::default()
        };
        let snaps = repo.snapshots().await.unwrap();
        forget::plan(&snaps, &policy, GroupBy::default(), &Filter::default()).unwrap()
    }

    /// Three backups of a directory whose big file changes each time.
    async fn history(
        repo: &Arc<coffer_engine::Repository>,
        src: &Path,
    ) -> Vec<coffer_engine::format::SnapshotId> {
        let mut ids = Vec::new();
        for round in 0..3u64 {
            write(&src.join("keep.txt"), &text(90, 50_000));
            write(&src.join("changing.bin"), &noise(100 + round, 400_000));
            ids.push(backup_paths(repo, &[src]).await.snapshot_id);
        }
        ids
    }

    /// A repository with something to prune and a backup session that
    /// stays live for an hour (its heartbeat is an hour apart).
    async fn with_live_session() -> (
        tempfile::TempDir,
        Arc<coffer_engine::Repository>,
        Live,
        Timing,
    ) {
        let dir = tempdir();
        let src = dir.path().join("src");
        let repo = local_repo(
            &dir.path().join("repo"),
            init_opts(small_chunks(), Compression::Zstd(2), 128 * 1024),
        )
        .await;
        history(&repo, &src).await;
        let plan = keep_last_one(&repo).await;
        forget::execute(&repo, &plan, &Default::default())
            .await
            .unwrap();
        let slow = Timing {
            heartbeat: Duration::from_secs(3600),
            stale_after: Duration::from_secs(36_000),
        };
        let live = Live::start(repo.clone(), SESSIONS, "backup", slow, None)
            .await
            .unwrap();
        (dir, repo, live, slow)
    }

    /// `max_wait` holds even when a heartbeat is far longer: prune used to
    /// sleep a whole heartbeat before it looked at its deadline. (The
    /// timeout only turns the old hang into a failure; nothing is timed.)
    /// A callback that keeps every report.
    fn recorder() -> (
        coffer_engine::progress::ProgressFn,
        Arc<std::sync::Mutex<Vec<coffer_engine::progress::Progress>>>,
    ) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let cb =
            coffer_engine::progress::ProgressFn::new(move |p| log.lock().unwrap().push(p.clone()));
        (cb, seen)
    }

    /// Within each phase, counts only grow and never pass a known total.
    fn assert_sane(seen: &[coffer_engine::progress::Progress]) {
        for w in seen.windows(2) {
            if w[0].phase == w[1].phase {
                assert!(
                    w[0].bytes_done <= w[1].bytes_done && w[0].items_done <= w[1].items_done,
                    "{seen:?}"
                );
            }
        }
        for p in seen {
            assert!(p.total_bytes.is_none_or(|t| p.bytes_done <= t), "{p:?}");
            assert!(p.total_items.is_none_or(|t| p.items_done <= t), "{p:?}");
        }
    }

    /// A restore whose plan holds a few blob places at a time still restores
    /// everything exactly: files split across passes, blobs shared by files
    /// in different passes, hard links to files of an earlier pass. Its
    /// totals grow pass by pass and end equal to what was placed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_larger_than_its_plan_limit_runs_in_passes() {
        let dir = tempdir();
        let src = dir.path().join("src");
        crate::support::kitchen_sink(&src);
        let shared = noise(95, 700_000);
        write(&src.join("copies/one.bin"), &shared);
        write(&src.join("copies/two.bin"), &shared);
        write(&src.join("big.bin"), &noise(96, 3_000_000));
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
        backup_paths(&repo, &[&src]).await;

        let (cb, seen) = recorder();
        let out = dir.path().join("out");
        let mut opts = RestoreOptions::new("latest", &out);
        opts.plan_limit = 7;
        opts.progress = Some(cb);
        let index = repo.load_index().await.unwrap();
        let summary = restore::restore(repo.clone(), index, opts).await.unwrap();
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        crate::support::assert_same(
            &crate::support::manifest(&src),
            &crate::support::manifest(&out),
        );

        let seen = seen.lock().unwrap().clone();
        assert_sane(&seen);
        let mut totals: Vec<u64> = seen.iter().filter_map(|p| p.total_bytes).collect();
        totals.dedup();
        assert!(totals.len() > 3, "the totals grow pass by pass: {totals:?}");
        assert!(totals.windows(2).all(|w| w[0] < w[1]), "{totals:?}");
        let last = seen.last().unwrap();
        assert_eq!(Some(last.bytes_done), last.total_bytes);
        assert!(last.bytes_done >= 2 * 700_000 + 3_000_000, "{last:?}");

        // The same with the tree blobs alone indexed: each pass looks its
        // data blobs up in the index files.
        let out = dir.path().join("out-trees-only");
        let mut opts = RestoreOptions::new("latest", &out);
        opts.plan_limit = 7;
        let index = repo.load_tree_index().await.unwrap();
        let summary = restore::restore(repo.clone(), index, opts).await.unwrap();
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        crate::support::assert_same(
            &crate::support::manifest(&src),
            &crate::support::manifest(&out),
        );
    }

    /// A restore whose future is dropped (a timeout) trips its token, and its
    /// planning and writing threads stop: the passes after it are never written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_restore_stops_its_threads() {
        let dir = tempdir();
        let src = dir.path().join("src");
        for i in 0..40u64 {
            write(&src.join(format!("f{i:02}")), &noise(200 + i, 200_000));
        }
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
        backup_paths(&repo, &[&src]).await;
        let out = dir.path().join("out");
        let mut opts = RestoreOptions::new("latest", &out);
        // One blob place per pass, and each pass's first report waits: the
        // restore is still running when the timeout drops it.
        opts.plan_limit = 1;
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let started_tx = std::sync::Mutex::new(started_tx);
        opts.progress = Some(coffer_engine::progress::ProgressFn::new(move |_| {
            let _ = started_tx.lock().unwrap().send(());
            std::thread::sleep(Duration::from_millis(20));
        }));
        let cancel = opts.cancel.clone();
        let index = repo.load_index().await.unwrap();
        let r = tokio::time::timeout(
            Duration::from_millis(200),
            restore::restore(repo.clone(), index, opts),
        )
        .await;
        assert!(r.is_err(), "the restore was still running: {r:?}");
        assert!(started_rx.try_recv().is_ok(), "it had started");
        assert!(cancel.is_cancelled(), "dropping the future trips the token");
        // Once stopped, nothing more is written.
        let written = || -> u64 {
            use std::os::unix::fs::MetadataExt;
            walkdir::WalkDir::new(&out)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        };
        let mut last = written();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = written();
            if now == last {
                break;
            }
            last = now;
        }
        assert!(
            last < 40 * 200_000,
            "the restore stopped before writing everything: {last} bytes"
        );
    }

    /// Restore, `check --read-data` and prune report their progress, and
    /// each phase's last report reaches its totals.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restore_check_and_prune_report_progress_up_to_their_totals() {
        use coffer_engine::progress::Phase;
        let dir = tempdir();
        let src = dir.path().join("src");
        let repo = memory_repo(init_opts(small_chunks(), Compression::Zstd(3), 1 << 20)).await;
        let ids = history(&repo, &src).await;

        // Restore: bytes placed up to the snapshot's content, every pack read.
        let (cb, seen) = recorder();
        let mut opts = RestoreOptions::new(ids[2].to_hex(), dir.path().join("out"));
        opts.progress = Some(cb);
        let index = repo.load_index().await.unwrap();
        let summary = restore::restore(repo.clone(), index, opts).await.unwrap();
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        let seen = seen.lock().unwrap().clone();
        assert_sane(&seen);
        let last = seen.last().expect("restore reported nothing");
        assert_eq!(last.phase, Phase::Restore);
        assert_eq!(last.total_bytes, Some(450_000), "both files' contents");
        assert_eq!(last.bytes_done, 450_000);
        assert!(
            last.total_items.is_some_and(|n| n > 0) && last.total_items == Some(last.items_done),
            "{last:?}"
        );

        // check --read-data: structure, then every pack read and counted.
        let (cb, seen) = recorder();
        let report = check::check(
            repo.clone(),
            CheckOptions {
                read_data: ReadData::All,
                progress: Some(cb),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_sane(&seen);
        assert_eq!(seen[0].phase, Phase::CheckStructure);
        let last = seen.last().unwrap();
        assert_eq!(last.phase, Phase::CheckReadData);
        assert_eq!(
            (last.items_done, last.total_items),
            (report.packs_read, Some(report.packs_read))
        );
        assert_eq!(
            (last.bytes_done, last.total_bytes),
            (report.bytes_read, Some(report.bytes_read))
        );

        // Prune after forgetting two snapshots: plan, wait, repack, delete.
        let plan = keep_last_one(&repo).await;
        forget::execute(&repo, &plan, &coffer_engine::CancelToken::new())
            .await
            .unwrap();
        let (cb, seen) = recorder();
        let pruned = prune::prune(
            repo.clone(),
            PruneOptions {
                progress: Some(cb),
                ..fast(Duration::from_secs(60))
            },
        )
        .await
        .unwrap();
        assert!(pruned.executed, "{pruned:?}");
        let seen = seen.lock().unwrap().clone();
        assert_sane(&seen);
        let mut phases: Vec<Phase> = seen.iter().map(|p| p.phase).collect();
        phases.dedup();
        let expected: &[Phase] = if pruned.repack_packs.is_empty() {
            &[Phase::PrunePlan, Phase::PruneWait, Phase::PruneDelete]
        } else {
            &[
                Phase::PrunePlan,
                Phase::PruneWait,
                Phase::PruneRepack,
                Phase::PruneDelete,
            ]
        };
        assert_eq!(phases, expected);
        let gone = (pruned.delete_packs.len()
            + pruned.repack_packs.len()
            + pruned.unindexed_packs.len()) as u64;
        let last = seen.last().unwrap();
        assert!(gone > 0);
        assert_eq!((last.items_done, last.total_items), (gone, Some(gone)));
        assert_eq!(Some(last.bytes_done), last.total_bytes);
        assert_checks(&repo).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prune_gives_up_at_max_wait_and_stops_when_cancelled() {
        let (dir, repo, live, slow) = with_live_session().await;
        let opts = PruneOptions {
            max_unused_percent: 0.0,
            timing: slow,
            max_wait: Duration::from_millis(200),
            ..Default::default()
        };
        let plan = tokio::time::timeout(
            Duration::from_secs(600),
            prune::prune(repo.clone(), opts.clone()),
        )
        .await
        .expect("prune returns at max_wait, not after a heartbeat")
        .unwrap();
        assert!(!plan.executed && plan.sessions_waited == 1, "{plan:?}");

        // Cancelled while it waits: it stops, and takes its lock with it.
        let cancel = coffer_engine::CancelToken::new();
        let running = tokio::spawn(prune::prune(
            repo.clone(),
            PruneOptions {
                max_wait: Duration::from_secs(3600),
                cancel: cancel.clone(),
                ..opts
            },
        ));
        let locks = dir.path().join("repo/locks");
        let held = || std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0);
        while held() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(600), running)
            .await
            .expect("a cancelled prune returns")
            .unwrap();
        assert!(matches!(r, Err(coffer_engine::Error::Cancelled)), "{r:?}");
        assert_eq!(held(), 0, "the cancelled prune removed its lock");
        live.end().await.unwrap();
        assert_checks(&repo).await;
    }

    /// Each failure an embedder must tell apart has its own error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_concurrent_prune_and_a_cancelled_check_are_typed_errors() {
        let (dir, repo, live, slow) = with_live_session().await;
        let other = Live::start(
            repo.clone(),
            coffer_engine::protocol::LOCKS,
            "prune",
            slow,
            None,
        )
        .await
        .unwrap();
        let err = prune::prune(
            repo.clone(),
            PruneOptions {
                timing: slow,
                max_wait: Duration::ZERO,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, coffer_engine::Error::PruneRunning { holder } if !holder.is_empty()),
            "{err:?}"
        );
        other.end().await.unwrap();
        live.end().await.unwrap();
        let cancel = coffer_engine::CancelToken::new();
        cancel.cancel();
        let err = check::check(
            repo.clone(),
            CheckOptions {
                cancel,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, coffer_engine::Error::Cancelled), "{err:?}");
        backup_paths(&repo, &[&dir.path().join("src")]).await;
        let plan = keep_last_one(&repo).await;
        let cancel = coffer_engine::CancelToken::new();
        cancel.cancel();
        assert_eq!(plan.removed().len(), 1);
        let err = forget::execute(&repo, &plan, &cancel).await.unwrap_err();
        assert!(matches!(err, coffer_engine::Error::Cancelled), "{err:?}");
        assert_eq!(
            repo.snapshots().await.unwrap().len(),
            2,
            "nothing was forgotten"
        );
    }

    /// `forget --prune` as one call: the prune runs only when something
    /// was forgotten, as in restic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forget_then_prune_is_one_call_that_prunes_only_after_a_removal() {
        let dir = tempdir();
        let repo_dir = dir.path().join("repo");
        let repo = local_repo(
            &repo_dir,
            init_opts(small_chunks(), Compression::Zstd(2), 128 * 1024),
        )
        .await;
        let ids = history(&repo, &dir.path().join("src")).await;
        let before = du(&repo_dir.join("data"));
        let plan = keep_last_one(&repo).await;
        let done = forget::execute_and_prune(repo.clone(), &plan, fast(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(done.removed, 2);
        let pruned = done.prune.expect("a prune after the removal");
        assert!(pruned.executed && pruned.bytes_freed > 0, "{pruned:?}");
        assert!(du(&repo_dir.join("data")) < before);
        assert_eq!(repo.snapshots().await.unwrap().len(), 1);
        assert_checks(&repo).await;

        let plan = keep_last_one(&repo).await;
        let again = forget::execute_and_prune(repo.clone(), &plan, fast(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(
            (again.removed, again.prune.is_none()),
            (0, true),
            "nothing to prune"
        );
        let t = tempdir();
        restore_to(&repo, &ids[2].to_hex(), t.path()).await;
        assert_eq!(
            std::fs::read(t.path().join("changing.bin")).unwrap(),
            noise(102, 400_000)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forget_and_prune_free_what_no_snapshot_needs() {
        let dir = tempdir();
        let src = dir.path().join("src");
        let repo_dir = dir.path().join("repo");
        let repo = local_repo(
            &repo_dir,
            init_opts(small_chunks(), Compression::Zstd(2), 128 * 1024),
        )
        .await;
        let ids = history(&repo, &src).await;
        let before = du(&repo_dir.join("data"));

        let plan = keep_last_one(&repo).await;
        assert_eq!(plan.removed().len(), 2);
        assert_eq!(plan.groups[0].keep[0].id, ids[2]);
        forget::execute(&repo, &plan, &Default::default())
            .await
            .unwrap();

        let dry = prune::prune(
            repo.clone(),
            PruneOptions {
                dry_run: true,
                ..fast(Duration::from_secs(5))
            },
        )
        .await
        .unwrap();
        assert!(!dry.executed && dry.unused_blobs > 0, "{dry:?}");
        assert_eq!(
            du(&repo_dir.join("data")),
            before,
            "a dry run changes nothing"
        );

        let done = prune::prune(repo.clone(), fast(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(done.executed, "{done:?}");
        assert!(
            !done.delete_packs.is_empty() || !done.repack_packs.is_empty(),
            "{done:?}"
        );
        let after = du(&repo_dir.join("data"));
        assert!(
            after < before * 3 / 4,
            "prune freed space: {before} -> {after}"
        );
        assert_checks(&repo).await;
        let again = prune::prune(repo.clone(), fast(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(again.unused_blobs, 0, "nothing left to free: {again:?}");

        let t = tempdir();
        restore_to(&repo, &ids[2].to_hex(), t.path()).await;
        assert_eq!(
            std::fs::read(t.path().join("changing.bin")).unwrap(),
            noise(102, 400_000)
        );
        assert!(repo.read_snapshot(&ids[0]).await.is_err(), "forgotten");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prune_waits_for_a_running_backup_and_later_backups_avoid_its_plan() {
        let dir = tempdir();
        let src = dir.path().join("src");
        let repo_dir = dir.path().join("repo");
        let repo = local_repo(
            &repo_dir,
            init_opts(small_chunks(), Compression::Zstd(2), 128 * 1024),
        )
        .await;
        let ids = history(&repo, &src).await;
        repo.store()
            .delete(&coffer_engine::format::layout::snapshot(&ids[0]))
            .await
            .unwrap();

        // A backup that started before prune: it might reference anything.
        let running = Live::start(repo.clone(), SESSIONS, "backup", Timing::fast(), None)
            .await
            .unwrap();
        let p = prune::prune(repo.clone(), fast(Duration::from_millis(800)))
            .await
            .unwrap();
        assert!(!p.executed, "prune must not delete while that backup runs");
        assert_eq!(
            coffer_engine::protocol::planned_packs(&repo)
                .await
                .unwrap()
                .len(),
            p.delete_packs.len() + p.repack_packs.len() + p.unindexed_packs.len()
        );
        assert_checks(&repo).await;

        // A backup that starts now stores the forgotten content again instead of
        // deduplicating against packs the plan may delete.
        write(&src.join("changing.bin"), &noise(100, 400_000));
        let b = backup_paths(&repo, &[&src]).await;
        assert!(
            b.snapshot.summary.data_blobs > 0,
            "re-uploaded, not deduplicated against planned packs"
        );

        running.end().await.unwrap();
        let p = prune::prune(repo.clone(), fast(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(p.executed, "{p:?}");
        assert!(
            coffer_engine::protocol::planned_packs(&repo)
                .await
                .unwrap()
                .is_empty(),
            "the plan is done and removed"
        );
        assert_checks(&repo).await;
        let t = tempdir();
        restore_to(&repo, &b.snapshot_id.to_hex(), t.path()).await;
        assert_eq!(
            std::fs::read(t.path().join("changing.bin")).unwrap(),
            noise(100, 400_000)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_backup_goes_stale_and_prune_removes_it_without_a_manual_unlock() {
        let dir = tempdir();
        let src = dir.path().join("src");
        let repo_dir = dir.path().join("repo");
        let repo = local_repo(
            &repo_dir,
            init_opts(small_chunks(), Compression::Zstd(2), 128 * 1024),
        )
        .await;
        let ids = history(&repo, &src).await;
        repo.store()
            .delete(&coffer_engine::format::layout::snapshot(&ids[1]))
            .await
            .unwrap();
        // A backup that died: its session stays, its heartbeat stops.
        drop(
            Live::start(repo.clone(), SESSIONS, "backup", Timing::fast(), None)
                .await
                .unwrap(),
        );
        // `coffer unlock` lists it, with this process's host and pid.
        let running = coffer_engine::protocol::running(&repo).await.unwrap();
        assert_eq!(running.len(), 1, "{running:?}");
        assert_eq!(
            (running[0].kind.as_str(), running[0].pid),
            ("backup", std::process::id())
        );
        assert!(running[0].key.starts_with(SESSIONS), "{running:?}");
        let p = prune::prune(repo.clone(), fast(Duration::from_secs(20)))
            .await
            .unwrap();
        assert!(p.executed && p.stale_sessions_removed == 1, "{p:?}");
        assert!(coffer_engine::protocol::running(&repo)
            .await
            .unwrap()
            .is_empty());
        assert_checks(&repo).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_prunes_started_at_once_take_turns_on_a_store_that_ignores_create_if_absent() {
        let dir = tempdir();
        let src = dir.path().join("src");
        let repo_dir = dir.path().join("repo");
        local_repo(
            &repo_dir,
            init_opts(small_chunks(), Compression::Zstd(2), 128 * 1024),
        )
        .await;
        let inner =
            coffer_engine::storage::open_location(repo_dir.to_str().unwrap(), false).unwrap();
        let store: coffer_engine::storage::DynStore = Arc::new(IgnoresCreateNew(inner));
        let repo = Arc::new(
            coffer_engine::Repository::open(store, b"test password")
                .await
                .unwrap(),
        );
        let ids = history(&repo, &src).await;
        for id in &ids[..2] {
            repo.store()
                .delete(&coffer_engine::format::layout::snapshot(id))
                .await
                .unwrap();
        }
        let (a, b) = tokio::join!(
            prune::prune(repo.clone(), fast(Duration::from_secs(20))),
            prune::prune(repo.clone(), fast(Duration::from_secs(20)))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.executed && b.executed);
        assert_checks(&repo).await;
        let t = tempdir();
        restore_to(&repo, "latest", t.path()).await;
        assert_eq!(
            std::fs::read(t.path().join("changing.bin")).unwrap(),
            noise(102, 400_000)
        );
    }

    /// A directory with `src/` and a repository in `repo/`.
    async fn stall_fixture(
        compression: Compression,
        pack_size: u32,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::path::PathBuf,
        Arc<coffer_engine::Repository>,
    ) {
        let dir = tempdir();
        let (src, repo_dir) = (dir.path().join("src"), dir.path().join("repo"));
        let repo = local_repo(&repo_dir, init_opts(small_chunks(), compression, pack_size)).await;
        (dir, src, repo_dir, repo)
    }

    /// A second handle on the repository at `dir`, whose store holds the
    /// operations `holds` match (as a stalled store or a paused process).
    async fn stalled_view(dir: &Path, holds: Vec<Arc<Hold>>) -> Arc<coffer_engine::Repository> {
        let inner = coffer_engine::storage::open_location(dir.to_str().unwrap(), false).unwrap();
        let faults = Faults {
            holds,
            ..Default::default()
        };
        let store: coffer_engine::storage::DynStore = Arc::new(Faulty::new(inner, faults, 1));
        Arc::new(
            coffer_engine::Repository::open(store, b"test password")
                .await
                .unwrap(),
        )
    }

    fn lost_session(err: &coffer_engine::Error) -> bool {
        matches!(err, coffer_engine::Error::SessionLost { .. })
            && err.to_string().contains("for dead")
    }

    /// SPEC §13, "Leases", scenario 1: a backup's heartbeats stall past
    /// stale-after (its store stops answering), a prune takes it for dead
    /// and deletes the packs its files were deduplicated against, then the
    /// stalled heartbeat lands (putting the session back) and the backup
    /// tries to finish. It must not write its snapshot: it says it lost its
    /// session, and the repository checks clean.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_whose_heartbeat_stalls_past_stale_after_writes_no_snapshot() {
        let (_dir, src, repo_dir, repo) = stall_fixture(Compression::Zstd(2), 128 * 1024).await;
        // Data that a forgotten snapshot stored: prune deletes its packs.
        write(&src.join("old.bin"), &noise(7, 400_000));
        let forgotten = backup_paths(&repo, &[&src]).await.snapshot_id;
        repo.delete_snapshot(&forgotten).await.unwrap();
        write(&src.join("new.bin"), &noise(8, 300_000));

        // The backup deduplicates old.bin against those packs; its first
        // pack upload, then its heartbeats, stall.
        let upload = Arc::new(Hold::new(HoldOp::Put, "data/"));
        let beats = Arc::new(Hold::new(HoldOp::Put, SESSIONS).disarmed().lands_late());
        let stalled = stalled_view(&repo_dir, vec![upload.clone(), beats.clone()]).await;
        let mut opts = BackupOptions::new([src.as_path()]);
        opts.timing = Timing::fast();
        let backup = tokio::spawn(coffer_engine::backup::backup(stalled, opts));
        // (A bound on a wait for an event, not a timing: a hang fails.)
        tokio::time::timeout(Duration::from_secs(120), upload.wait_held(1))
            .await
            .expect("the backup never uploaded a pack");
        beats.arm();

        // Prune takes the silent session for dead and frees the old packs.
        let p = prune::prune(repo.clone(), fast(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(p.executed && p.stale_sessions_removed == 1, "{p:?}");
        assert!(!p.delete_packs.is_empty(), "{p:?}");

        // The stalled heartbeat lands, the upload goes on.
        beats.release();
        upload.release();
        let err = backup.await.unwrap().unwrap_err();
        assert!(lost_session(&err), "{err}");
        assert!(
            repo.snapshot_ids().await.unwrap().is_empty(),
            "no snapshot may be written after its session was taken for dead"
        );
        assert_checks(&repo).await;

        // The next backup stores old.bin again and restores byte for byte.
        let b = backup_paths(&repo, &[&src]).await;
        let t = tempdir();
        restore_to(&repo, &b.snapshot_id.to_hex(), t.path()).await;
        assert_eq!(
            std::fs::read(t.path().join("old.bin")).unwrap(),
            noise(7, 400_000)
        );
        assert_checks(&repo).await;
    }

    /// SPEC §13, "Leases", rule 5: a session that is gone once the
    /// snapshot is stored (a prune that took it for dead against the
    /// protocol's clock assumption) takes the snapshot back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_whose_session_vanished_while_it_wrote_its_snapshot_takes_it_back() {
        let (_dir, src, repo_dir, repo) = stall_fixture(Compression::Zstd(2), 128 * 1024).await;
        write(&src.join("a.bin"), &noise(3, 200_000));
        // Heartbeats stop once the snapshot write is held, well within a
        // long lease, so nothing puts the session back.
        let snapshot_write = Arc::new(Hold::new(HoldOp::Put, "snapshots/"));
        let beats = Arc::new(Hold::new(HoldOp::Put, SESSIONS).disarmed());
        let view = stalled_view(&repo_dir, vec![snapshot_write.clone(), beats.clone()]).await;
        let mut opts = BackupOptions::new([src.as_path()]);
        opts.timing = Timing {
            heartbeat: Duration::from_millis(100),
            stale_after: Duration::from_secs(600),
        };
        let backup = tokio::spawn(coffer_engine::backup::backup(view, opts));
        tokio::time::timeout(Duration::from_secs(120), snapshot_write.wait_held(1))
            .await
            .expect("the backup never wrote its snapshot");
        beats.arm();
        let sessions = coffer_engine::protocol::list_keys(&repo, SESSIONS)
            .await
            .unwrap();
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        repo.store().delete(&sessions[0]).await.unwrap();
        snapshot_write.release();
        let err = backup.await.unwrap().unwrap_err();
        assert!(lost_session(&err), "{err}");
        assert!(
            err.to_string().contains("removed by another process"),
            "{err}"
        );
        beats.release();
        assert!(
            repo.snapshot_ids().await.unwrap().is_empty(),
            "the snapshot written without a session was deleted"
        );
        assert_checks(&repo).await;
    }

    /// Two processes with different timings agree on who is dead: a prune
    /// configured with a 3 s stale-after waits for a session that declares
    /// ten hours (its heartbeat is an hour apart) instead of removing it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_is_judged_by_the_longer_stale_after_it_declares() {
        let (_dir, repo, live, _) = with_live_session().await;
        let p = prune::prune(repo.clone(), fast(Duration::from_secs(4)))
            .await
            .unwrap();
        assert!(
            !p.executed && p.sessions_waited == 1 && p.stale_sessions_removed == 0,
            "{p:?}"
        );
        live.check_alive().await.unwrap();
        live.end().await.unwrap();
    }

    /// Scenario 2: prune A stalls in the middle of rewriting the index (its
    /// store stops answering, its lock's heartbeat too), prune B takes the
    /// lock over and finishes a different plan (it repacks what A keeps),
    /// then A's store answers again. A must stop at its next step instead
    /// of writing an index file that lists a pack B deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_prune_that_stalls_mid_way_stops_before_it_undoes_its_successor() {
        // Packs large enough that each backup's blobs share two data packs.
        let (_dir, src, repo_dir, repo) = stall_fixture(Compression::Off, 4 << 20).await;
        write(&src.join("keep.bin"), &noise(90, 400_000));
        let mut ids = Vec::new();
        for round in 0..3u64 {
            write(&src.join("changing.bin"), &noise(100 + round, 400_000));
            ids.push(backup_paths(&repo, &[&src]).await.snapshot_id);
        }
        // The first snapshot's data packs now hold used blobs (keep.bin)
        // beside unused ones: A (no repacking) keeps those packs and
        // rewrites their index file, B (repacks all) deletes them.
        repo.delete_snapshot(&ids[0]).await.unwrap();

        let index_write = Arc::new(Hold::new(HoldOp::Put, "index/"));
        let beats = Arc::new(Hold::new(HoldOp::Put, "locks/").disarmed());
        let stalled = stalled_view(&repo_dir, vec![index_write.clone(), beats.clone()]).await;
        let keep_partial = PruneOptions {
            max_unused_percent: 100.0,
            ..fast(Duration::from_secs(60))
        };
        let a = tokio::spawn(prune::prune(stalled, keep_partial));
        // (A bound on a wait for an event, not a timing: a hang fails.)
        tokio::time::timeout(Duration::from_secs(120), index_write.wait_held(1))
            .await
            .expect("prune A never wrote an index file");
        beats.arm();

        let b = prune::prune(repo.clone(), fast(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(b.executed && !b.repack_packs.is_empty(), "{b:?}");
        index_write.release();
        beats.release();
        let err = a.await.unwrap().unwrap_err();
        assert!(lost_session(&err), "{err}");

        assert_checks(&repo).await;
        for (round, id) in ids.iter().enumerate().skip(1) {
            let t = tempdir();
            restore_to(&repo, &id.to_hex(), t.path()).await;
            assert_eq!(
                std::fs::read(t.path().join("changing.bin")).unwrap(),
                noise(100 + round as u64, 400_000)
            );
            assert_eq!(
                std::fs::read(t.path().join("keep.bin")).unwrap(),
                noise(90, 400_000)
            );
        }
    }

    fn du(p: &Path) -> u64 {
        walkdir::WalkDir::new(p)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// Progress comes while a large file is read, not only when it ends (a
/// multi-GiB database file or a block device must show movement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_arrives_during_a_single_large_file() {
    let dir = tempdir();
    let size = 256usize << 20;
    write(&dir.path().join("db.bin"), &noise(77, size));
    let repo = memory_repo(init_opts(
        ChunkerParams::default(),
        Compression::Off,
        16 << 20,
    ))
    .await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let mut opts = coffer_engine::backup::BackupOptions::new([dir.path()]);
    let log = seen.clone();
    opts.progress = Some(std::sync::Arc::new(
        move |p: &coffer_engine::backup::BackupProgress| {
            log.lock().unwrap().push(p.bytes_done);
        },
    ));
    let summary = backup_with(&repo, opts).await;
    assert_eq!(summary.snapshot.summary.total_bytes_processed, size as u64);
    let seen = seen.lock().unwrap().clone();
    let during: Vec<u64> = seen
        .iter()
        .copied()
        .filter(|b| *b > 0 && *b < size as u64)
        .collect();
    assert!(
        !during.is_empty(),
        "no progress event while the file was read: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "bytes only grow: {seen:?}"
    );
}

/// A volume read from the kubelet's directory is recorded under its own path,
/// and the next backup of the same origin finds its parent whatever its host
/// and paths (a new pod UID, another node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_path_and_parent_by_origin() {
    use coffer_engine::backup::{BackupOptions, ParentChoice};
    use coffer_engine::forget::OriginFilter;
    use coffer_engine::format::snapshot::KubernetesOrigin;
    let dir = tempdir();
    let first_pod = dir
        .path()
        .join("pods/uid-1/volumes/kubernetes.io~csi/pv/mount");
    write(&first_pod.join("a.bin"), &noise(1, 300_000));
    let repo = memory_repo(init_opts(small_chunks(), Compression::Off, 1 << 20)).await;
    let origin = |pod: &str, node: &str| KubernetesOrigin {
        namespace: Some("team-a".into()),
        pvc: Some("data".into()),
        pod: Some(pod.into()),
        node: Some(node.into()),
        ..Default::default()
    };
    let filter = OriginFilter {
        namespace: Some("team-a".into()),
        pvc: Some("data".into()),
        ..Default::default()
    };
    let mut opts = BackupOptions::new([&first_pod]);
    opts.record_path = Some("/var/lib/mysql".into());
    opts.origin = Some(origin("db-0", "node-1"));
    opts.hostname = Some("node-1".into());
    opts.parent = ParentChoice::Origin(filter.clone());
    let first = backup_with(&repo, opts).await;
    assert_eq!(first.snapshot.paths.len(), 1);
    assert_eq!(first.snapshot.paths[0].to_string_lossy(), "/var/lib/mysql");
    assert_eq!(first.snapshot.root.name.0, b"mysql".to_vec());
    assert!(first.snapshot.parent.is_none());
    // The same volume, mounted for a new pod on another node.
    let second_pod = dir
        .path()
        .join("pods/uid-2/volumes/kubernetes.io~csi/pv/mount");
    std::fs::create_dir_all(second_pod.parent().unwrap()).unwrap();
    std::fs::rename(&first_pod, &second_pod).unwrap();
    let mut opts = BackupOptions::new([&second_pod]);
    opts.record_path = Some("/var/lib/mysql".into());
    opts.origin = Some(origin("db-0", "node-2"));
    opts.hostname = Some("node-2".into());
    opts.parent = ParentChoice::Origin(filter.clone());
    let second = backup_with(&repo, opts).await;
    assert_eq!(second.snapshot.parent, Some(first.snapshot_id));
    // An origin with no snapshot yet: no parent.
    let mut opts = BackupOptions::new([&second_pod]);
    opts.parent = ParentChoice::Origin(OriginFilter {
        pvc: Some("other".into()),
        ..filter
    });
    assert!(backup_with(&repo, opts).await.snapshot.parent.is_none());
    // Restored, the tree is the volume's content.
    let target = dir.path().join("restored");
    restore_to(&repo, &second.snapshot_id.to_hex(), &target).await;
    assert_eq!(
        std::fs::read(target.join("a.bin")).unwrap(),
        noise(1, 300_000)
    );
}

/// A backup cancelled while it walks writes no snapshot: the tree built so
/// far looks complete, but it is not (regression: a walk stopped by its token
/// became an empty snapshot). The same repository then serves the next backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_cancelled_during_the_walk_writes_no_snapshot() {
    let dir = tempdir();
    let a = dir.path().join("a");
    write(&a.join("one.bin"), &noise(5, 100_000));
    write(&a.join("two.bin"), &noise(6, 100_000));
    let repo = memory_repo(init_opts(small_chunks(), Compression::Off, 1 << 20)).await;
    let opts = coffer_engine::backup::BackupOptions::new([&a]);
    opts.cancel.cancel();
    let r = coffer_engine::backup::backup(repo.clone(), opts).await;
    assert!(matches!(r, Err(coffer_engine::Error::Cancelled)), "{r:?}");
    assert!(repo.snapshots().await.unwrap().is_empty(), "no snapshot");
    let next = backup_paths(&repo, &[&a]).await;
    assert_eq!(next.snapshot.summary.total_files_processed, 2);
}

/// Many agents create a namespace's repository on first use at once: one init
/// wins, the others report that it exists and leave no key file behind, and
/// a stray key of another master key never stops the repository from opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inits_leave_one_repository_that_opens() {
    use coffer_engine::{storage, Error, Repository};
    use futures::StreamExt;
    let dir = tempdir();
    let path = dir.path().join("repo");
    let opts = init_opts(small_chunks(), Compression::Off, 1 << 20);
    let inits = (0..4).map(|_| {
        let store = storage::open_location(path.to_str().unwrap(), true).unwrap();
        let opts = opts.clone();
        tokio::spawn(async move { Repository::init(store, b"pw", opts).await })
    });
    let results = futures::future::join_all(inits).await;
    let won = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert_eq!(won, 1, "exactly one init wins");
    for r in &results {
        match r {
            Ok(Ok(_)) | Ok(Err(Error::RepositoryExists { .. })) => {}
            other => panic!("{other:?}"),
        }
    }
    let store = storage::open_location(path.to_str().unwrap(), false).unwrap();
    let keys: Vec<_> = store.list("keys/").collect().await;
    assert_eq!(keys.len(), 1, "the losers took their key files back");
    let repo = Repository::open(store.clone(), b"pw").await.unwrap();
    // A stray key file wrapping another master key under the same password.
    let other = dir.path().join("other");
    let other_store = storage::open_location(other.to_str().unwrap(), true).unwrap();
    Repository::init(other_store.clone(), b"pw", opts)
        .await
        .unwrap();
    let stray = other_store.list("keys/").collect::<Vec<_>>().await;
    let stray = stray[0].as_ref().unwrap().key.clone();
    let bytes = other_store.get(&stray).await.unwrap();
    store
        .put(&stray, bytes, storage::WriteMode::CreateNew)
        .await
        .unwrap();
    let reopened = Repository::open(store, b"pw").await.unwrap();
    assert_eq!(reopened.config().id, repo.config().id);
}

/// Dropping a backup's future (an abort, a timeout in an embedding program)
/// stops the backup: uploads end, what was stored is indexed, and its session
/// is removed, as after a SIGINT (regression: the threads kept uploading and
/// the session stayed until it went stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_backup_future_stops_it_and_leaves_no_session() {
    use futures::StreamExt;
    let dir = tempdir();
    let src = dir.path().join("src");
    for i in 0..48 {
        write(&src.join(format!("f{i}.bin")), &noise(900 + i, 4 << 20));
    }
    let repo = local_repo(
        &dir.path().join("repo"),
        init_opts(small_chunks(), Compression::Off, 1 << 20),
    )
    .await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Mutex::new(Some(tx));
    let mut opts = coffer_engine::backup::BackupOptions::new([&src]);
    opts.progress = Some(std::sync::Arc::new(
        move |p: &coffer_engine::backup::BackupProgress| {
            if p.bytes_done > 0 {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
        },
    ));
    let backup = coffer_engine::backup::backup(repo.clone(), opts);
    tokio::select! {
        r = backup => panic!("the backup finished before it could be dropped: {r:?}"),
        _ = rx => {}
    }
    // The future is dropped here. The session goes away once the backup has
    // stopped (bounded: no heartbeat timeout involved).
    let store = repo.store().clone();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let sessions: Vec<_> = store.list("sessions/").collect().await;
        if sessions.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session stayed: {sessions:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let packs = store.list("data/").collect::<Vec<_>>().await.len();
    assert!(
        packs < 150,
        "the backup stopped early ({packs} packs of 1 MiB for 192 MiB)"
    );
    assert!(repo.snapshots().await.unwrap().is_empty(), "no snapshot");
    // Nothing is left half-done: the next backup completes and what was
    // uploaded was indexed (it is not stored again).
    let stored_before = packs;
    let next = backup_paths(&repo, &[&src]).await;
    assert_eq!(next.snapshot.summary.total_files_processed, 48);
    let packs_after = store.list("data/").collect::<Vec<_>>().await.len();
    assert!(
        packs_after - stored_before < 200,
        "{stored_before} -> {packs_after}"
    );
}

/// Argon2 runs on a blocking thread: while a repository is opened, other
/// tasks on the same single-threaded executor go on.
#[test]
fn opening_a_repository_leaves_the_executor_free() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = coffer_engine::storage::open_location("memory://", true).unwrap();
        let mut opts = init_opts(small_chunks(), Compression::Off, 1 << 20);
        opts.kdf = coffer_engine::keys::KdfCost {
            memory_kib: 8 * 1024,
            iterations: 2,
            parallelism: 1,
        };
        coffer_engine::Repository::init(store.clone(), b"pw", opts)
            .await
            .unwrap();
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        tokio::spawn(async move { flag.store(true, std::sync::atomic::Ordering::SeqCst) });
        coffer_engine::Repository::open(store, b"pw").await.unwrap();
        assert!(
            ran.load(std::sync::atomic::Ordering::SeqCst),
            "another task ran while the key was derived"
        );
    });
}

/// `repo-format/testdata/repo/`: a small complete repository that a second
/// implementation can be tested against without coffer
/// (`repo-format/testdata/repo.md`). `COFFER_BLESS=1` writes it anew.
mod reference_repository {
    use super::*;
    use coffer_engine::check::{self, CheckOptions, ReadData};
    use std::os::unix::ffi::OsStrExt;
    use std::sync::Arc;

    const PASSWORD: &[u8] = b"coffer reference password";

    fn testdata() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../repo-format/testdata")
    }

    fn xof(label: &str, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(label.as_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    /// The source of the first snapshot.
    fn first_source(dir: &std::path::Path) {
        write(&dir.join("README.txt"), b"coffer reference repository\n");
        write(&dir.join("data/blob.bin"), &xof("blob.bin", 40_000));
        let mut mixed = xof("mixed head", 16_384);
        mixed.extend(std::iter::repeat_n(0u8, 40_000));
        mixed.extend(xof("mixed tail", 8_000));
        write(&dir.join("data/zeros-and-data.bin"), &mixed);
        write(
            &dir.join("text/lines.txt"),
            "a line of text\n".repeat(2_000).as_bytes(),
        );
        write(&dir.join("text/deep/er/file.txt"), b"deep\n");
        write(&dir.join("empty"), b"");
        write(&dir.join("caf\u{e9}.txt"), b"utf-8 name\n");
        write(
            &dir.join(std::ffi::OsStr::from_bytes(b"n\xffme.bin")),
            b"a name that is not UTF-8\n",
        );
        std::os::unix::fs::symlink("data/blob.bin", dir.join("link")).unwrap();
        std::fs::create_dir_all(dir.join("empty-dir")).unwrap();
    }

    /// The second snapshot's changes: 100 bytes changed, a file added.
    fn second_source(dir: &std::path::Path) {
        let mut blob = std::fs::read(dir.join("data/blob.bin")).unwrap();
        blob[20_000..20_100].fill(0x5a);
        write(&dir.join("data/blob.bin"), &blob);
        write(&dir.join("second.txt"), b"added in the second snapshot\n");
    }

    /// One line per entry, in path order: `file PATH SIZE BLAKE3`,
    /// `dir PATH`, `symlink PATH TARGET`; bytes that are not printable ASCII
    /// are written `\xNN`.
    fn listing(root: &std::path::Path) -> String {
        let esc = |b: &[u8]| -> String {
            b.iter()
                .map(|&c| match c {
                    b'!'..=b'~' if c != b'\\' => (c as char).to_string(),
                    _ => format!("\\x{c:02x}"),
                })
                .collect()
        };
        let mut out = String::new();
        for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap();
            let p = esc(rel.as_os_str().as_bytes());
            let ft = e.file_type();
            if ft.is_symlink() {
                let t = std::fs::read_link(e.path()).unwrap();
                out += &format!("symlink {p} {}\n", esc(t.as_os_str().as_bytes()));
            } else if ft.is_dir() {
                out += &format!("dir {p}\n");
            } else {
                let b = std::fs::read(e.path()).unwrap();
                out += &format!("file {p} {} {}\n", b.len(), blake3::hash(&b).to_hex());
            }
        }
        out
    }

    async fn bless(repo_dir: &std::path::Path, expected: &std::path::Path) {
        let _ = std::fs::remove_dir_all(repo_dir);
        let src_dir = tempdir();
        let src = src_dir.path().join("src");
        first_source(&src);
        let store =
            coffer_engine::storage::open_location(repo_dir.to_str().unwrap(), true).unwrap();
        let opts = init_opts(
            ChunkerParams {
                min_size: 2048,
                avg_size: 8192,
                max_size: 32768,
                normalization: 1,
            },
            Compression::Zstd(3),
            64 * 1024,
        );
        let repo = Arc::new(
            coffer_engine::Repository::init(store, PASSWORD, opts)
                .await
                .unwrap(),
        );
        let mut text = String::new();
        for (n, change) in [None, Some(second_source as fn(&std::path::Path))]
            .into_iter()
            .enumerate()
        {
            if let Some(change) = change {
                change(&src);
            }
            let mut o = BackupOptions::new([src.as_path()]);
            o.tags = vec![format!("snapshot-{}", n + 1)];
            let s = backup_with(&repo, o).await;
            text += &format!("# snapshot-{} {}\n{}", n + 1, s.snapshot_id, listing(&src));
        }
        for d in ["tmp", "sessions", "locks", "plans"] {
            let _ = std::fs::remove_dir(repo_dir.join(d));
        }
        std::fs::write(expected, text).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checked_in_repository_checks_clean_and_restores_what_it_lists() {
        let (repo_dir, expected) = (testdata().join("repo"), testdata().join("repo.expected"));
        if std::env::var_os("COFFER_BLESS").is_some() {
            bless(&repo_dir, &expected).await;
        }
        // Work on a copy: nothing may write into the source tree.
        let copy = tempdir();
        let copied = copy.path().join("repo");
        for e in walkdir::WalkDir::new(&repo_dir) {
            let e = e.unwrap();
            let to = copied.join(e.path().strip_prefix(&repo_dir).unwrap());
            if e.file_type().is_dir() {
                std::fs::create_dir_all(&to).unwrap();
            } else {
                std::fs::copy(e.path(), &to).unwrap();
            }
        }
        let store = coffer_engine::storage::open_location(copied.to_str().unwrap(), false).unwrap();
        let repo = Arc::new(
            coffer_engine::Repository::open(store, PASSWORD)
                .await
                .unwrap(),
        );
        let report = check::check(
            repo.clone(),
            CheckOptions {
                read_data: ReadData::All,
                concurrency: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert!(report.packs >= 4, "several packs: {report:?}");
        let expected = std::fs::read_to_string(&expected).unwrap();
        let mut actual = String::new();
        for (id, s) in repo.snapshots().await.unwrap() {
            let out = tempdir();
            restore_to(&repo, &id.to_hex(), &out.path().join("r")).await;
            actual += &format!("# {} {id}\n{}", s.tags[0], listing(&out.path().join("r")));
        }
        assert_eq!(actual, expected);
    }
}

/// Snapshots written by someone who knows the password (a tenant owns its
/// repository): any tree the format can hold, well formed or not. Reading
/// them refuses what the format forbids as damage, and a restore never
/// writes, changes or deletes anything outside its target, checked on a
/// sentinel directory beside it.
mod hostile {
    use super::*;
    use coffer_engine::check::{self, CheckOptions};
    use coffer_engine::format::blob::BlobType;
    use coffer_engine::format::snapshot::{Snapshot, SnapshotSummary, SNAPSHOT_VERSION};
    use coffer_engine::format::tree::{ContentRef, Node, NodeKind, PageRef, TreePage};
    use coffer_engine::format::{BlobId, SnapshotId};
    use coffer_engine::prune::store_blobs;
    use coffer_engine::trees::Walk;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    async fn blob(repo: &Arc<coffer_engine::Repository>, t: BlobType, bytes: Vec<u8>) -> BlobId {
        store_blobs(repo, &[(t, bytes)]).await.unwrap()[0]
    }

    async fn page(repo: &Arc<coffer_engine::Repository>, p: TreePage) -> BlobId {
        blob(repo, BlobType::Tree, p.encode().unwrap()).await
    }

    fn dir(name: &str, subtree: BlobId) -> Node {
        let mut n = Node::new(name, NodeKind::Dir);
        n.mode = 0o755;
        n.subtree = Some(subtree);
        n
    }

    async fn file(repo: &Arc<coffer_engine::Repository>, name: &str, data: &[u8]) -> Node {
        let mut n = Node::new(name, NodeKind::File);
        n.mode = 0o644;
        n.size = data.len() as u64;
        n.content = vec![ContentRef {
            id: Some(blob(repo, BlobType::Data, data.to_vec()).await),
            len: data.len() as u64,
        }];
        n
    }

    fn symlink(name: &str, target: &Path) -> Node {
        let mut n = Node::new(name, NodeKind::Symlink);
        n.mode = 0o777;
        n.target = Some(target.as_os_str().as_bytes().into());
        n
    }

    async fn snapshot_of(repo: &Arc<coffer_engine::Repository>, tree: BlobId) -> SnapshotId {
        let mut root = Node::new("root", NodeKind::Dir);
        root.mode = 0o755;
        root.subtree = Some(tree);
        let s = Snapshot {
            version: SNAPSHOT_VERSION,
            time: coffer_engine::repository::now_rfc3339(),
            hostname: "forger".into(),
            username: "forger".into(),
            uid: 0,
            gid: 0,
            paths: vec![b"/data".as_slice().into()],
            tags: Vec::new(),
            root,
            parent: None,
            program: "forged".into(),
            summary: SnapshotSummary::default(),
            origin: None,
            original: None,
            ignored_changes: Vec::new(),
        };
        repo.write_snapshot(&s).await.unwrap()
    }

    /// A directory holding `outside` (the sentinel) and `target`.
    struct Places {
        _dir: tempfile::TempDir,
        outside: std::path::PathBuf,
        target: std::path::PathBuf,
    }

    fn places() -> Places {
        let dir = tempdir();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        write(&outside.join("secret"), b"secret");
        std::fs::set_permissions(
            outside.join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        Places {
            target: dir.path().join("target"),
            outside,
            _dir: dir,
        }
    }

    impl Places {
        /// The sentinel is as it was made: one file, its bytes and mode.
        fn assert_untouched(&self) {
            let names: Vec<_> = std::fs::read_dir(&self.outside)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                names,
                ["secret"],
                "something was written outside the target"
            );
            let secret = self.outside.join("secret");
            assert_eq!(std::fs::read(&secret).unwrap(), b"secret");
            let mode = std::fs::symlink_metadata(&secret)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o600, "the sentinel's mode was changed");
        }
    }

    async fn restore_overwriting(
        repo: &Arc<coffer_engine::Repository>,
        id: &SnapshotId,
        target: &Path,
    ) -> coffer_engine::Result<restore::RestoreSummary> {
        let index = repo.load_index().await.unwrap();
        let mut opts = RestoreOptions::new(id.to_hex(), target);
        opts.overwrite = true;
        restore::restore(repo.clone(), index, opts).await
    }

    /// Walks the whole snapshot as `ls` does; the error that stopped it.
    async fn walk_error(repo: &Arc<coffer_engine::Repository>, id: &SnapshotId) -> String {
        let index = repo.load_index().await.unwrap();
        let snap = repo.read_snapshot(id).await.unwrap();
        let mut walk = Walk::new(repo, &index, "/".into(), snap.root);
        loop {
            match walk.next().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the hostile tree was walked without an error"),
                Err(e) => return e.to_string(),
            }
        }
    }

    /// The reproduction of the review: a directory `d` holding `x` in one
    /// leaf page of the root, then a symlink `d` to a directory outside in
    /// the next. `ls` and `check` refuse it as damage naming the page, and
    /// a restore with overwrite into an empty directory writes nothing
    /// through the link (both orders of the page references' ranges).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_same_name_twice_across_pages_is_damage_and_nothing_escapes() {
        for (first, second) in [("c", "d"), ("d", "e")] {
            let p = places();
            let repo = memory_repo(init_opts(small_chunks(), Compression::Off, 1 << 20)).await;
            let x = file(&repo, "x", b"escaped").await;
            let d = page(&repo, TreePage::leaf(vec![x])).await;
            let leaf1 = page(&repo, TreePage::leaf(vec![dir("d", d)])).await;
            let leaf2 = page(&repo, TreePage::leaf(vec![symlink("d", &p.outside)])).await;
            let refs = vec![
                PageRef {
                    first: first.as_bytes().into(),
                    id: leaf1,
                    count: 1,
                },
                PageRef {
                    first: second.as_bytes().into(),
                    id: leaf2,
                    count: 1,
                },
            ];
            let root = page(&repo, TreePage::index(refs)).await;
            let id = snapshot_of(&repo, root).await;

            let err = walk_error(&repo, &id).await;
            assert!(err.contains("outside the range"), "{err}");
            let report = check::check(repo.clone(), CheckOptions::default())
                .await
                .unwrap();
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.kind == "tree" && p.message.contains("outside the range")),
                "check must report the listing: {:?}",
                report.problems
            );
            let summary = restore_overwriting(&repo, &id, &p.target).await.unwrap();
            assert!(
                summary
                    .errors
                    .iter()
                    .any(|e| e.message.contains("outside the range")),
                "{:?}",
                summary.errors
            );
            p.assert_untouched();
            assert!(!std::fs::symlink_metadata(p.target.join("d"))
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false));
        }
    }

    /// Names the format forbids (`..`, a `/`) are damage: the page is
    /// refused and nothing is written outside.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_that_leave_their_directory_are_damage() {
        for name in ["..", "../escaped", "a/../../escaped"] {
            let p = places();
            let repo = memory_repo(init_opts(small_chunks(), Compression::Off, 1 << 20)).await;
            let bad = file(&repo, name, b"escaped").await;
            let root = page(&repo, TreePage::leaf(vec![bad])).await;
            let id = snapshot_of(&repo, root).await;
            let err = walk_error(&repo, &id).await;
            assert!(err.contains("name"), "{name}: {err}");
            let summary = restore_overwriting(&repo, &id, &p.target).await;
            assert!(
                summary.is_err() || !summary.as_ref().unwrap().errors.is_empty(),
                "{name}: {summary:?}"
            );
            p.assert_untouched();
        }
    }

    /// A hard-link group whose first name is a symlink to a file outside:
    /// the second name, a file, must not become a link through which its
    /// metadata (mode 04777) lands on the file outside.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hard_link_whose_first_name_is_a_symlink_changes_nothing_outside() {
        let p = places();
        let repo = memory_repo(init_opts(small_chunks(), Compression::Off, 1 << 20)).await;
        let mut a = symlink("a", &p.outside.join("secret"));
        let mut b = file(&repo, "b", b"pwned").await;
        for n in [&mut a, &mut b] {
            n.links = 2;
            n.inode = 42;
            n.device = 7;
            n.mode = 0o4777;
        }
        let root = page(&repo, TreePage::leaf(vec![a, b])).await;
        let id = snapshot_of(&repo, root).await;
        let summary = restore_overwriting(&repo, &id, &p.target).await.unwrap();
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        p.assert_untouched();
        assert_eq!(std::fs::read(p.target.join("b")).unwrap(), b"pwned");
        assert!(std::fs::symlink_metadata(p.target.join("a"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    /// A chain of directories deeper than the documented bound is refused
    /// as damage instead of holding a walk (and an agent's worker).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn directories_nested_deeper_than_the_bound_are_damage() {
        let repo = memory_repo(init_opts(small_chunks(), Compression::Off, 1 << 20)).await;
        let depth = coffer_engine::trees::MAX_TREE_DEPTH + 5;
        let mut pages = Vec::new();
        let mut inner = blob(
            &repo,
            BlobType::Tree,
            TreePage::leaf(Vec::new()).encode().unwrap(),
        )
        .await;
        // Bottom up; all pages in one pack.
        for _ in 0..depth {
            let p = TreePage::leaf(vec![dir("n", inner)]).encode().unwrap();
            inner = repo.key().blob_id(&p);
            pages.push((BlobType::Tree, p));
        }
        store_blobs(&repo, &pages).await.unwrap();
        let id = snapshot_of(&repo, inner).await;
        let err = walk_error(&repo, &id).await;
        assert!(err.contains("nested more than 1024"), "{err}");
        let report = check::check(repo.clone(), CheckOptions::default())
            .await
            .unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.message.contains("nested more than 1024")),
            "{:?}",
            report.problems
        );
    }

    /// Device nodes and setuid/setgid bits only when the restore asks for
    /// them (the agent's default is not to).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn device_nodes_and_setid_bits_only_when_asked_for() {
        let p = places();
        let repo = memory_repo(init_opts(small_chunks(), Compression::Off, 1 << 20)).await;
        let mut suid = file(&repo, "suid", b"#!/bin/sh\n").await;
        suid.mode = 0o4755;
        let mut null = Node::new("null", NodeKind::Chardev);
        null.mode = 0o666;
        null.rdev = Some((1 << 8) | 3);
        let root = page(&repo, TreePage::leaf(vec![null, suid])).await;
        let id = snapshot_of(&repo, root).await;
        let index = repo.load_index().await.unwrap();
        let mut opts = RestoreOptions::new(id.to_hex(), &p.target);
        opts.device_nodes = false;
        opts.setid_bits = false;
        let summary = restore::restore(repo.clone(), index.clone(), opts)
            .await
            .unwrap();
        assert!(summary.errors.is_empty(), "{:?}", summary.errors);
        assert!(!p.target.join("null").exists());
        let mode = std::fs::metadata(p.target.join("suid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        // The command line's defaults: both, where the process is root.
        let again = p.target.with_extension("cli");
        restore::restore(
            repo.clone(),
            index,
            RestoreOptions::new(id.to_hex(), &again),
        )
        .await
        .unwrap();
        let mode = std::fs::metadata(again.join("suid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o4755);
        if is_root() {
            use std::os::unix::fs::FileTypeExt;
            let md = std::fs::symlink_metadata(again.join("null")).unwrap();
            assert!(md.file_type().is_char_device());
        }
    }

    /// A process on the volume swaps a directory of the restore for a
    /// symlink to the sentinel, back and forth (`renameat2(RENAME_EXCHANGE)`),
    /// while an overwriting restore writes into it: whatever the timing,
    /// nothing lands outside.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_directory_swapped_for_a_symlink_during_a_restore_is_never_followed() {
        let p = places();
        let src = p.target.with_extension("src");
        for i in 0..200 {
            write(
                &src.join(format!("d/f{i:03}")),
                format!("file {i}").as_bytes(),
            );
        }
        let repo = memory_repo(init_opts(small_chunks(), Compression::Off, 1 << 20)).await;
        let id = backup_paths(&repo, &[&src]).await.snapshot_id;
        for _round in 0..5 {
            let _ = std::fs::remove_dir_all(&p.target);
            std::fs::create_dir_all(p.target.join("d")).unwrap();
            std::os::unix::fs::symlink(&p.outside, p.target.join("evil")).unwrap();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let swapper = {
                let (stop, t) = (stop.clone(), p.target.clone());
                std::thread::spawn(move || {
                    let mut swaps = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if nix::fcntl::renameat2(
                            nix::fcntl::AT_FDCWD,
                            &t.join("d"),
                            nix::fcntl::AT_FDCWD,
                            &t.join("evil"),
                            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                        )
                        .is_ok()
                        {
                            swaps += 1;
                        }
                    }
                    swaps
                })
            };
            let _ = restore_overwriting(&repo, &id, &p.target).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(swapper.join().unwrap() > 0);
            p.assert_untouched();
        }
    }
}

/// A volume that changes under the backup (SPEC §15, the README's "Security
/// model"): a tenant's pod swaps what the backup is about to read.
mod changing_source {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    const SENTINEL: &[u8] = b"SENTINEL-outside-the-source-8c1f";

    /// Exchanges `a` and `b` (`renameat2(RENAME_EXCHANGE)`) until `stop`.
    fn swapper(
        pairs: Vec<(std::path::PathBuf, std::path::PathBuf)>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<u64> {
        std::thread::spawn(move || {
            let mut swaps = 0;
            while !stop.load(Ordering::Relaxed) {
                for (a, b) in &pairs {
                    if nix::fcntl::renameat2(
                        nix::fcntl::AT_FDCWD,
                        a,
                        nix::fcntl::AT_FDCWD,
                        b,
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .is_ok()
                    {
                        swaps += 1;
                    }
                }
            }
            swaps
        })
    }

    /// Every regular file below `dir`, read.
    fn contents(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
            .collect()
    }

    /// A file and a directory exchanged with symlinks to a sentinel outside
    /// the source, and a file exchanged with a FIFO, again and again while
    /// backups of many files run: no snapshot ever holds the sentinel (nor
    /// anything from outside), and the FIFO never hangs a backup.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_pod_swaps_in_during_a_backup_is_never_followed_nor_blocks() {
        let dir = tempdir();
        let src = dir.path().join("src");
        let outside = dir.path().join("outside");
        write(&outside.join("secret"), SENTINEL);
        write(&outside.join("dir/inner"), SENTINEL);
        for i in 0..300 {
            write(
                &src.join(format!("f{i:03}")),
                format!("file {i}").as_bytes(),
            );
        }
        for i in 0..50 {
            write(
                &src.join(format!("d/g{i:02}")),
                format!("inner {i}").as_bytes(),
            );
        }
        write(&src.join("victim"), b"an ordinary file");
        write(&src.join("plain"), b"another ordinary file");
        std::os::unix::fs::symlink(outside.join("secret"), src.join("evil-file")).unwrap();
        std::os::unix::fs::symlink(outside.join("dir"), src.join("evil-dir")).unwrap();
        nix::unistd::mkfifo(
            &src.join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let repo = memory_repo(init_opts(small_chunks(), Compression::Off, 1 << 20)).await;

        let stop = Arc::new(AtomicBool::new(false));
        let swaps = swapper(
            vec![
                (src.join("victim"), src.join("evil-file")),
                (src.join("d"), src.join("evil-dir")),
                (src.join("plain"), src.join("pipe")),
            ],
            stop.clone(),
        );
        // Should a backup block on the FIFO, the failure must not hang the
        // test: stop the swapper and open the FIFO for writing, which lets a
        // blocked reader go.
        struct Unblock(Arc<AtomicBool>, Vec<std::path::PathBuf>);
        impl Drop for Unblock {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
                for p in &self.1 {
                    use std::os::unix::fs::OpenOptionsExt;
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(nix::libc::O_NONBLOCK)
                        .open(p);
                }
            }
        }
        let _unblock = Unblock(stop.clone(), vec![src.join("plain"), src.join("pipe")]);
        let mut ids = Vec::new();
        for _ in 0..8 {
            let mut opts = BackupOptions::new([src.as_path()]);
            opts.parent = coffer_engine::backup::ParentChoice::None;
            opts.timing = coffer_engine::protocol::Timing::fast();
            // Both ways of opening files: the command line's, a tenant's.
            opts.untrusted_source = ids.len() % 2 == 1;
            // (A bound on a hang, not a timing: a FIFO opened for reading
            // blocks until a writer comes, which never happens here.)
            let summary = tokio::time::timeout(
                Duration::from_secs(300),
                coffer_engine::backup::backup(repo.clone(), opts),
            )
            .await
            .expect("a FIFO swapped in hung the backup")
            .unwrap();
            ids.push(summary.snapshot_id);
        }
        stop.store(true, Ordering::Relaxed);
        assert!(swaps.join().unwrap() > 0);

        for id in ids {
            let t = tempdir();
            let summary = restore_to(&repo, &id.to_hex(), t.path()).await;
            assert!(summary.errors.is_empty(), "{:?}", summary.errors);
            let files = contents(t.path());
            assert!(files.len() >= 300, "{}", files.len());
            for (path, data) in files {
                assert!(
                    !data.windows(SENTINEL.len()).any(|w| w == SENTINEL),
                    "{} holds data from outside the source",
                    path.display()
                );
            }
        }
    }
}

/// Backs up `src` again (forced) on `threads` threads with segments of
/// 200,000 bytes; on more than one thread, checks that no new data was
/// stored (the chunks of the one-thread pass). Returns the bytes read and
/// the content of the file `name` at the snapshot's root.
async fn back_up_on_threads(
    repo: &std::sync::Arc<coffer_engine::repository::Repository>,
    src: &Path,
    threads: usize,
    name: &[u8],
) -> (u64, Vec<coffer_engine::format::tree::ContentRef>) {
    let mut o = BackupOptions::new([src]);
    o.threads = threads;
    o.force = true;
    o.segment_size = 200_000;
    let s = backup_with(repo, o).await;
    if threads > 1 {
        assert_eq!(
            s.snapshot.summary.data_blobs, 0,
            "the same chunks as the one-thread pass"
        );
    }
    let index = repo.load_index().await.unwrap();
    let node = coffer_engine::trees::lookup(repo, &index, &s.snapshot.root, name)
        .await
        .unwrap()
        .unwrap();
    (s.bytes_read, node.content)
}
