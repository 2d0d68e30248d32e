//! Shared helpers for the engine's integration tests: repositories, generated
//! source trees, and a strict manifest of a directory tree to compare.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_engine::backup::{self, BackupOptions, BackupSummary};
use coffer_engine::format::blob::Compression;
use coffer_engine::format::chunker::ChunkerParams;
use coffer_engine::keys::KdfCost;
use coffer_engine::restore::{self, RestoreOptions, RestoreSummary};
use coffer_engine::{storage, InitOptions, Repository};

pub const WEAK_KDF: KdfCost = KdfCost {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

pub fn small_chunks() -> ChunkerParams {
    ChunkerParams {
        min_size: 16 * 1024,
        avg_size: 64 * 1024,
        max_size: 256 * 1024,
        normalization: 1,
    }
}

pub fn init_opts(chunker: ChunkerParams, compression: Compression, pack_size: u32) -> InitOptions {
    InitOptions {
        chunker,
        compression,
        pack_size,
        kdf: WEAK_KDF,
        key_owner: None,
        same_chunker_as: None,
    }
}

pub async fn memory_repo(opts: InitOptions) -> Arc<Repository> {
    let store = storage::open_location("memory://", true).unwrap();
    Arc::new(
        Repository::init(store, b"test password", opts)
            .await
            .unwrap(),
    )
}

pub async fn local_repo(dir: &Path, opts: InitOptions) -> Arc<Repository> {
    let store = storage::open_location(dir.to_str().unwrap(), true).unwrap();
    Arc::new(
        Repository::init(store, b"test password", opts)
            .await
            .unwrap(),
    )
}

pub async fn backup_paths(repo: &Arc<Repository>, paths: &[&Path]) -> BackupSummary {
    backup_with(repo, BackupOptions::new(paths.iter().copied())).await
}

pub async fn backup_with(repo: &Arc<Repository>, mut opts: BackupOptions) -> BackupSummary {
    opts.timing = coffer_engine::protocol::Timing::fast();
    backup::backup(repo.clone(), opts).await.unwrap()
}

pub async fn restore_to(repo: &Arc<Repository>, snapshot: &str, target: &Path) -> RestoreSummary {
    let index = repo.load_index().await.unwrap();
    restore::restore(repo.clone(), index, RestoreOptions::new(snapshot, target))
        .await
        .unwrap()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Compressible text-like bytes.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        &b"alpha "[..],
        b"beta ",
        b"gamma\n",
        b"delta ",
        b"volume ",
        b"pod\t",
    ];
    let n = noise(seed, len);
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[n[i % len] as usize % words.len()]);
        i += 1;
    }
    out.truncate(len);
    out
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

pub fn set_times(path: &Path, atime: (i64, u32), mtime: (i64, u32)) {
    use nix::sys::time::TimeSpec;
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::new(atime.0, atime.1 as _),
        &TimeSpec::new(mtime.0, mtime.1 as _),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Which optional metadata the filesystem under `dir` supports.
#[derive(Debug, Default, Clone, Copy)]
pub struct Support {
    pub user_xattrs: bool,
    pub acls: bool,
}

/// A minimal valid POSIX ACL (user::rw-, user:1234:r--, group::r--, mask::r--, other::r--).
pub const ACL: [u8; 44] = [
    2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 2, 0, 4, 0, 210, 4, 0, 0, 4, 0, 4, 0, 255, 255,
    255, 255, 16, 0, 4, 0, 255, 255, 255, 255, 32, 0, 4, 0, 255, 255, 255, 255,
];

/// Builds a tree with every kind of metadata coffer must keep.
pub fn kitchen_sink(root: &Path) -> Support {
    let mut support = Support::default();
    std::fs::create_dir_all(root).unwrap();
    // Regular files of many sizes, compressible and not.
    write(&root.join("empty"), b"");
    write(&root.join("one"), b"x");
    write(&root.join("text.txt"), &text(1, 300_000));
    write(&root.join("random.bin"), &noise(2, 1_500_000));
    write(&root.join("dir/nested/deep/file"), &text(3, 10_000));
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    // Names that are not UTF-8, with newlines, tabs, backslashes, 255 bytes.
    let odd = root.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    for name in [
        &b"\xff\xfe\xfd"[..],
        b"new\nline",
        b"tab\there",
        b"back\\slash",
        b" lead space",
        b"-dash",
    ] {
        write(&odd.join(OsStr::from_bytes(name)), name);
    }
    write(&odd.join("n".repeat(255)), b"long name");
    // Symlinks: relative, absolute, dangling, looping, non-UTF-8 target, to a directory.
    let links = root.join("links");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink("../one", links.join("relative")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", links.join("absolute")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", links.join("dangling")).unwrap();
    std::os::unix::fs::symlink("loop-b", links.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", links.join("loop-b")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"\xc3\x28bad"), links.join("bad-target"))
        .unwrap();
    std::os::unix::fs::symlink("../dir", links.join("to-dir")).unwrap();
    // Hard links: a group of three across directories, a group of two.
    write(&root.join("hard/a"), &text(4, 50_000));
    std::fs::create_dir_all(root.join("hard/sub")).unwrap();
    std::fs::hard_link(root.join("hard/a"), root.join("hard/b")).unwrap();
    std::fs::hard_link(root.join("hard/a"), root.join("hard/sub/c")).unwrap();
    write(&root.join("hard/x"), b"pair");
    std::fs::hard_link(root.join("hard/x"), root.join("hard/y")).unwrap();
    // Special files.
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    if is_root() {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(
            &root.join("chardev"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o620),
            makedev(1, 3),
        )
        .unwrap();
        mknod(
            &root.join("blockdev"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            makedev(7, 200),
        )
        .unwrap();
    }
    // A sparse file: data, a 48 MiB hole, data, and a trailing hole.
    {
        let f = std::fs::File::create(root.join("sparse")).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&noise(5, 300_000), 0).unwrap();
        f.write_all_at(&noise(6, 300_000), 48 << 20).unwrap();
        f.set_len(64 << 20).unwrap();
    }
    // Modes: setuid, setgid, sticky, no permissions, read-only file and directory.
    write(&root.join("modes/setuid"), b"#!/bin/sh\n");
    chmod(&root.join("modes/setuid"), 0o4755);
    write(&root.join("modes/setgid"), b"g");
    chmod(&root.join("modes/setgid"), 0o2750);
    std::fs::create_dir_all(root.join("modes/sticky")).unwrap();
    chmod(&root.join("modes/sticky"), 0o1777);
    if is_root() {
        // Only root can read a file with no permissions at all.
        write(&root.join("modes/none"), b"secret");
        chmod(&root.join("modes/none"), 0o000);
    }
    write(
        &root.join("modes/ro-dir/inside"),
        b"inside a read-only directory",
    );
    write(&root.join("modes/readonly"), b"ro");
    chmod(&root.join("modes/readonly"), 0o444);
    // Owners (root only).
    if is_root() {
        for (p, uid, gid) in [
            ("one", 1234, 5678),
            ("dir", 4321, 8765),
            ("links/relative", 77, 88),
        ] {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &root.join(p),
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
    }
    // Extended attributes where the filesystem has them.
    if xattr::set(root.join("text.txt"), "user.coffer.test", b"value \x00\xff").is_ok() {
        support.user_xattrs = true;
        xattr::set(root.join("dir"), "user.dir-attr", b"d").unwrap();
        xattr::set(root.join("empty"), "user.empty-value", b"").unwrap();
    }
    if xattr::set(root.join("one"), "system.posix_acl_access", &ACL).is_ok() {
        support.acls = true;
    }
    // Times with nanoseconds, before 1970 and after 2100.
    set_times(
        &root.join("one"),
        (1_000_000_000, 123_456_789),
        (1_100_000_000, 987_654_321),
    );
    set_times(
        &root.join("text.txt"),
        (-1_000_000_000, 5),
        (-86_400, 999_999_999),
    );
    set_times(
        &root.join("random.bin"),
        (4_200_000_000, 1),
        (4_300_000_000, 500_000_000),
    );
    set_times(
        &root.join("links/dangling"),
        (1_500_000_000, 1),
        (1_600_000_000, 2),
    );
    set_times(&root.join("dir/nested"), (1_000, 1), (2_000, 2));
    // Read-only directory last (after its contents), and the root's own metadata.
    chmod(&root.join("modes/ro-dir"), 0o555);
    chmod(root, 0o750);
    set_times(root, (1_234_567_890, 42), (1_234_567_891, 43));
    support
}

/// One entry of a manifest: everything coffer restores, as the filesystem shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
    pub size: u64,
    pub mtime: (i64, i64),
    /// Not recorded for directories and symlinks: listing a directory or
    /// reading a link changes its atime (symlink atimes are checked apart).
    pub atime: Option<(i64, i64)>,
    pub rdev: Option<u64>,
    pub target: Option<Vec<u8>>,
    pub content: Option<blake3::Hash>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The smallest path of the entry's hard-link group, for files with links.
    pub link_group: Option<Vec<u8>>,
}

/// A strict description of a tree, keyed by relative path ("" is the root).
pub fn manifest(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut groups: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else {
            "other"
        };
        let mut xattrs = BTreeMap::new();
        if let Ok(names) = xattr::list(e.path()) {
            for n in names {
                if let Ok(Some(v)) = xattr::get(e.path(), &n) {
                    xattrs.insert(n.as_bytes().to_vec(), v);
                }
            }
        }
        let content = ft.is_file().then(|| {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOATIME)
                .open(e.path())
                .unwrap();
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            h.finalize()
        });
        if ft.is_file() && md.nlink() > 1 {
            groups
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        out.insert(
            rel,
            Entry {
                kind,
                mode: md.mode() & 0o7777,
                owner: is_root().then(|| (md.uid(), md.gid())),
                size: if ft.is_file() || ft.is_symlink() {
                    md.size()
                } else {
                    0
                },
                mtime: (md.mtime(), md.mtime_nsec()),
                atime: (!ft.is_dir() && !ft.is_symlink()).then(|| (md.atime(), md.atime_nsec())),
                rdev: (ft.is_char_device() || ft.is_block_device()).then(|| md.rdev()),
                target: ft.is_symlink().then(|| {
                    std::fs::read_link(e.path())
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                content,
                xattrs,
                link_group: None,
            },
        );
    }
    for members in groups.values() {
        let first = members.iter().min().cloned();
        for m in members {
            if let Some(e) = out.get_mut(m) {
                e.link_group = first.clone();
            }
        }
    }
    out
}

/// Asserts two manifests are equal, naming the first differing path.
pub fn assert_same(expected: &BTreeMap<Vec<u8>, Entry>, actual: &BTreeMap<Vec<u8>, Entry>) {
    for (path, e) in expected {
        let p = String::from_utf8_lossy(path);
        let a = actual
            .get(path)
            .unwrap_or_else(|| panic!("{p:?} is missing from the restore"));
        assert_eq!(e, a, "{p:?} differs");
    }
    for path in actual.keys() {
        assert!(
            expected.contains_key(path),
            "{:?} was restored but is not in the source",
            String::from_utf8_lossy(path)
        );
    }
}

/// Allocated bytes of a file.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path_buf(p: &Path, rel: &str) -> PathBuf {
    p.join(rel)
}

/// A store that accepts create-if-absent writes and overwrites anyway, as
/// Garage 2.5 does: the protocol must not depend on them.
#[derive(Debug)]
pub struct IgnoresCreateNew(pub coffer_engine::storage::DynStore);

#[async_trait::async_trait]
impl coffer_engine::storage::Store for IgnoresCreateNew {
    fn location(&self) -> String {
        self.0.location()
    }
    async fn get(&self, key: &str) -> Result<bytes::Bytes, coffer_engine::storage::StoreError> {
        self.0.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, coffer_engine::storage::StoreError> {
        self.0.get_range(key, range).await
    }
    async fn size(&self, key: &str) -> Result<u64, coffer_engine::storage::StoreError> {
        self.0.size(key).await
    }
    async fn put(
        &self,
        key: &str,
        data: bytes::Bytes,
        _mode: coffer_engine::storage::WriteMode,
    ) -> Result<(), coffer_engine::storage::StoreError> {
        self.0
            .put(key, data, coffer_engine::storage::WriteMode::Overwrite)
            .await
    }
    async fn delete(&self, key: &str) -> Result<(), coffer_engine::storage::StoreError> {
        self.0.delete(key).await
    }
    fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> futures::stream::BoxStream<
        'a,
        Result<coffer_engine::storage::ObjectInfo, coffer_engine::storage::StoreError>,
    > {
        self.0.list(prefix)
    }
}
