//! Golden vectors (testdata/, cited from SPEC.md) and property tests of every
//! stored object. `COFFER_BLESS=1 cargo test -p coffer-repo-format` rewrites the
//! vectors; a change that breaks one is a format version change.

use std::path::PathBuf;

use coffer_repo_format::blob::{self, BlobType, Compression, MODE_ZSTD};
use coffer_repo_format::chunker::{Chunker, ChunkerParams};
use coffer_repo_format::config::Config;
use coffer_repo_format::envelope::{Context, Opener, Sealer};
use coffer_repo_format::index::{IndexFile, IndexedPack};
use coffer_repo_format::keys::{KdfCost, KeyFile, MasterKey};
use coffer_repo_format::pack::{self, PackEntry};
use coffer_repo_format::protocol::{Beacon, StoredPlan};
use coffer_repo_format::snapshot::{KubernetesOrigin, Snapshot, SnapshotSummary};
use coffer_repo_format::tree::{ContentRef, Node, NodeKind, PageRef, Timestamp, TreePage, Xattr};
use coffer_repo_format::{BlobId, PackId, SnapshotId};
use proptest::prelude::*;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// Compares `actual` with the stored vector, or stores it when blessing.
fn golden(name: &str, actual: &[u8]) {
    let path = testdata(name);
    if std::env::var_os("COFFER_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with COFFER_BLESS=1", path.display()));
    assert!(
        expected == actual,
        "{name} no longer matches its golden vector: this is a format change"
    );
}

fn hexfile(bytes: &[u8]) -> Vec<u8> {
    let mut s = hex::encode(bytes);
    s.push('\n');
    s.into_bytes()
}

/// The fixed master key of every vector.
fn master() -> MasterKey {
    let mut k = [0u8; 96];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    MasterKey::from_bytes(&k).unwrap()
}

const SALT: [u8; 16] = [0x5a; 16];
const NONCE: [u8; 12] = [0x07; 12];

/// 256 KiB of deterministic input: BLAKE3 XOF of "coffer chunker vector".
fn chunker_input() -> Vec<u8> {
    let mut out = vec![0u8; 256 * 1024];
    blake3::Hasher::new()
        .update(b"coffer chunker vector")
        .finalize_xof()
        .fill(&mut out);
    // A zero run and a repeated region make the vector exercise more paths.
    out[100_000..140_000].fill(0);
    let copy = out[10_000..30_000].to_vec();
    out[200_000..220_000].copy_from_slice(&copy);
    out
}

fn vector_params() -> ChunkerParams {
    ChunkerParams {
        min_size: 2048,
        avg_size: 8192,
        max_size: 32768,
        normalization: 1,
    }
}

#[test]
fn chunker_vector() {
    let c = master().chunker(vector_params()).unwrap();
    let input = chunker_input();
    let lens: Vec<usize> = c.chunks(&input).collect();
    assert_eq!(lens.iter().sum::<usize>(), input.len());
    let text: String = lens.iter().map(|l| format!("{l}\n")).collect();
    golden("chunker-lengths.txt", text.as_bytes());
}

#[test]
fn envelope_vector() {
    let sealer = master().sealer_with_salt(SALT);
    let mut env = Vec::new();
    sealer.seal_with_nonce(
        Context::Config,
        &[b"coffer envelope vector"],
        NONCE,
        &mut env,
    );
    golden("envelope-config.hex", &hexfile(&env));
    let opened = master().opener().open(Context::Config, &env).unwrap();
    assert_eq!(opened, b"coffer envelope vector");
}

#[test]
fn blob_vector_opens() {
    // Encoding is not compared (zstd output may change between library
    // versions); decoding the stored vector must keep working.
    let key = master();
    let plain = b"coffer blob vector ".repeat(50);
    let id = key.blob_id(&plain);
    let path = testdata("blob-data-zstd.hex");
    if std::env::var_os("COFFER_BLESS").is_some() {
        let body = zstd::bulk::compress(&plain, 3).unwrap();
        let sealer = key.sealer_with_salt(SALT);
        let mut env = Vec::new();
        sealer.seal_with_nonce(
            Context::Blob {
                blob_type: 0,
                id: &id.0,
            },
            &[&[MODE_ZSTD], &body],
            NONCE,
            &mut env,
        );
        std::fs::write(&path, hexfile(&env)).unwrap();
    }
    let stored = hex::decode(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
    let opened = blob::open_blob(
        &key,
        &key.opener(),
        BlobType::Data,
        &id,
        plain.len() as u32,
        &stored,
    )
    .unwrap();
    assert_eq!(opened, plain);
    golden("blob-data-zstd.id", format!("{id}\n").as_bytes());
}

fn vector_entries() -> Vec<PackEntry> {
    vec![
        PackEntry {
            blob_type: BlobType::Data,
            id: BlobId([0x11; 32]),
            offset: 0,
            stored_len: 1000,
            raw_len: 4000,
        },
        PackEntry {
            blob_type: BlobType::Tree,
            id: BlobId([0x22; 32]),
            offset: 1000,
            stored_len: 200,
            raw_len: 190,
        },
    ]
}

#[test]
fn pack_header_vector() {
    let plain = pack::encode_header(&vector_entries());
    golden("pack-header.plain.hex", &hexfile(&plain));
    let sealer = master().sealer_with_salt(SALT);
    let mut sealed = Vec::new();
    sealer.seal_with_nonce(Context::PackHeader, &[&plain], NONCE, &mut sealed);
    golden("pack-header.sealed.hex", &hexfile(&sealed));
    let opened = pack::open_header(&master().opener(), 1200, &sealed).unwrap();
    assert_eq!(opened, vector_entries());
}

/// Seals `plain` in `context` with the vectors' salt and nonce.
fn seal_vector(context: Context<'_>, plain: &[u8]) -> Vec<u8> {
    let mut sealed = Vec::new();
    master()
        .sealer_with_salt(SALT)
        .seal_with_nonce(context, &[plain], NONCE, &mut sealed);
    sealed
}

#[test]
fn index_vector() {
    // The pack of the header vector: its blobs, its sealed header, the
    // 4-byte header length. `pack_size` is the whole pack object's length.
    let sealed_header = seal_vector(Context::PackHeader, &pack::encode_header(&vector_entries()));
    let pack_size = 1000 + 200 + sealed_header.len() + 4;
    assert_eq!(pack_size, 1336);
    let idx = IndexFile {
        packs: vec![IndexedPack {
            id: PackId([0x33; 32]),
            size: pack_size as u32,
            blobs: vector_entries(),
        }],
    };
    let plain = idx.encode();
    golden("index.plain.hex", &hexfile(&plain));
    assert_eq!(IndexFile::decode(&plain).unwrap(), idx);
    let sealed = seal_vector(Context::Index, &plain);
    golden("index.sealed.hex", &hexfile(&sealed));
    let opened = master().opener().open(Context::Index, &sealed).unwrap();
    assert_eq!(IndexFile::decode(&opened).unwrap(), idx);
}

fn vector_tree() -> TreePage {
    let mut file = Node::new("data.bin", NodeKind::File);
    file.mode = 0o644;
    file.uid = 1000;
    file.gid = 1000;
    file.user = Some("app".into());
    file.group = Some("app".into());
    file.mtime = Timestamp(1_700_000_000, 123_456_789);
    file.atime = Timestamp(1_700_000_001, 0);
    file.ctime = Timestamp(1_700_000_002, 5);
    file.inode = 42;
    file.device = 2049;
    file.links = 1;
    file.size = 12_288;
    file.content = vec![
        ContentRef {
            id: Some(BlobId([0x44; 32])),
            len: 8192,
        },
        ContentRef {
            id: None,
            len: 4096,
        },
    ];
    file.xattrs = vec![Xattr {
        name: "user.tag".into(),
        value: b"\x00\x01".as_slice().into(),
    }];
    let mut link = Node::new(b"l\xffnk".as_slice(), NodeKind::Symlink);
    link.mode = 0o777;
    link.target = Some("data.bin".into());
    let mut dir = Node::new("sub", NodeKind::Dir);
    dir.mode = 0o2755;
    dir.subtree = Some(BlobId([0x55; 32]));
    TreePage::leaf(vec![file, link, dir])
}

#[test]
fn tree_vector() {
    let page = vector_tree();
    let bytes = page.encode().unwrap();
    golden("tree-leaf.cbor", &bytes);
    assert_eq!(TreePage::decode(&bytes).unwrap(), page);
    // The same page stored as a tree blob (mode 0: not compressed, so the
    // bytes do not depend on a zstd version).
    let id = master().blob_id(&bytes);
    golden("tree-leaf.blob.id", format!("{id}\n").as_bytes());
    let mut payload = vec![blob::MODE_STORED];
    payload.extend_from_slice(&bytes);
    let stored = seal_vector(
        Context::Blob {
            blob_type: 1,
            id: &id.0,
        },
        &payload,
    );
    golden("tree-leaf.blob.hex", &hexfile(&stored));
    let opened = blob::open_blob(
        &master(),
        &master().opener(),
        BlobType::Tree,
        &id,
        bytes.len() as u32,
        &stored,
    )
    .unwrap();
    assert_eq!(TreePage::decode(&opened).unwrap(), page);
    let index_page = TreePage::index(vec![
        PageRef {
            first: "a".into(),
            id: BlobId([0x66; 32]),
            count: 4096,
        },
        PageRef {
            first: "m".into(),
            id: BlobId([0x77; 32]),
            count: 17,
        },
    ]);
    let bytes = index_page.encode().unwrap();
    golden("tree-index.cbor", &bytes);
    assert_eq!(TreePage::decode(&bytes).unwrap(), index_page);
}

fn vector_snapshot() -> Snapshot {
    let mut root = Node::new("volume", NodeKind::Dir);
    root.mode = 0o755;
    root.mtime = Timestamp(1_700_000_000, 0);
    root.atime = root.mtime;
    root.ctime = root.mtime;
    root.inode = 2;
    root.device = 2049;
    root.subtree = Some(BlobId([0x88; 32]));
    Snapshot {
        version: 1,
        time: "2026-11-23T11:00:00.000000000+00:00".into(),
        hostname: "node-1".into(),
        username: "root".into(),
        uid: 0,
        gid: 0,
        paths: vec!["/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/pvc-1/mount".into()],
        tags: vec!["daily".into()],
        root,
        parent: Some(SnapshotId([0x99; 32])),
        program: "coffer 0.1.0".into(),
        summary: SnapshotSummary {
            files_new: 3,
            total_bytes_processed: 12_288,
            ..Default::default()
        },
        origin: Some(KubernetesOrigin {
            namespace: Some("db".into()),
            pvc: Some("data-mysql-0".into()),
            volume_mode: Some("Filesystem".into()),
            ..Default::default()
        }),
        original: None,
        ignored_changes: Vec::new(),
    }
}

fn vector_beacon() -> Beacon {
    Beacon {
        version: 1,
        kind: "backup".into(),
        hostname: "node-1".into(),
        pid: 4242,
        started: "2026-11-25T01:00:00Z".into(),
        beat: 7,
        stale_after_ms: None,
    }
}

/// Beacons and prune plans (§13): the vectors, sealed in their contexts, and
/// the versions and kinds a reader refuses.
#[test]
fn protocol_object_vectors() {
    let beacon = vector_beacon();
    let bytes = beacon.encode().unwrap();
    golden("beacon.cbor", &bytes);
    assert_eq!(Beacon::decode(&bytes).unwrap(), beacon);
    let sealed = seal_vector(Context::Session, &bytes);
    golden("beacon.sealed.hex", &hexfile(&sealed));
    let opened = master().opener().open(Context::Session, &sealed).unwrap();
    assert_eq!(Beacon::decode(&opened).unwrap(), beacon);

    let plan = StoredPlan {
        version: 1,
        packs: vec![
            PackId::from_slice(&[0x11; 32]).unwrap(),
            PackId::from_slice(&[0x22; 32]).unwrap(),
        ],
    };
    let bytes = plan.encode().unwrap();
    golden("plan.cbor", &bytes);
    assert_eq!(StoredPlan::decode(&bytes).unwrap(), plan);
    let sealed = seal_vector(Context::Plan, &bytes);
    golden("plan.sealed.hex", &hexfile(&sealed));
    // A plan is not a session: the context binds it.
    assert!(master().opener().open(Context::Session, &sealed).is_err());

    let newer = StoredPlan { version: 2, ..plan };
    let err = StoredPlan::decode(&newer.encode().unwrap()).unwrap_err();
    assert!(err.to_string().contains("version 2"), "{err}");
    let odd = Beacon {
        kind: "restore".into(),
        ..beacon
    };
    let err = Beacon::decode(&odd.encode().unwrap()).unwrap_err();
    assert!(err.to_string().contains("restore"), "{err}");
    // The optional stale-after (added within version 1) round-trips, and a
    // beacon without it (the vector, older writers) still decodes.
    let declared = Beacon {
        stale_after_ms: Some(600_000),
        ..vector_beacon()
    };
    let bytes = declared.encode().unwrap();
    assert_eq!(Beacon::decode(&bytes).unwrap(), declared);
    assert_ne!(bytes, vector_beacon().encode().unwrap());
}

#[test]
fn snapshot_vector() {
    let s = vector_snapshot();
    let bytes = s.encode().unwrap();
    golden("snapshot.cbor", &bytes);
    assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
    let sealed = seal_vector(Context::Snapshot, &bytes);
    golden("snapshot.sealed.hex", &hexfile(&sealed));
    let opened = master().opener().open(Context::Snapshot, &sealed).unwrap();
    assert_eq!(Snapshot::decode(&opened).unwrap(), s);
}

#[test]
fn config_vector() {
    let c = Config {
        version: 1,
        id: vec![0xab; 32],
        created: "2026-11-23T11:00:00+00:00".into(),
        chunker: ChunkerParams {
            min_size: 262_144,
            avg_size: 1_048_576,
            max_size: 4_194_304,
            normalization: 1,
        },
        compression: Compression::Zstd(3),
        pack_size: 16 * 1024 * 1024,
    };
    let bytes = c.encode().unwrap();
    golden("config.cbor", &bytes);
    assert_eq!(Config::decode(&bytes).unwrap(), c);
}

#[test]
fn key_file_vector() {
    let cost = KdfCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let kf = KeyFile::wrap_with(
        &master(),
        b"vector password",
        cost,
        [0x5a; 16],
        NONCE,
        "2026-11-23T11:00:00+00:00".into(),
        "node-1".into(),
        "root".into(),
    )
    .unwrap();
    golden("keyfile.json", &kf.to_bytes());
    let parsed = KeyFile::from_bytes(&std::fs::read(testdata("keyfile.json")).unwrap()).unwrap();
    assert_eq!(parsed.unwrap_key(b"vector password").unwrap(), master());
}

// ---------------------------------------------------------------- properties

fn raw() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..30,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn ts() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Timestamp(s, n))
}

fn node() -> impl Strategy<Value = Node> {
    (
        name(),
        0usize..6,
        0u32..0o10000,
        any::<(u32, u32, u64, u64, u64)>(),
        (ts(), ts(), ts()),
        prop::option::of("[a-z]{1,8}"),
        prop::collection::vec((raw(), raw()), 0..3),
        prop::collection::vec((prop::option::of(any::<[u8; 32]>()), 0u64..1 << 24), 0..5),
        raw(),
    )
        .prop_map(
            |(
                name,
                kind,
                mode,
                (uid, gid, inode, device, links),
                (m, a, c),
                user,
                xattrs,
                content,
                target,
            )| {
                let kinds = [
                    NodeKind::File,
                    NodeKind::Dir,
                    NodeKind::Symlink,
                    NodeKind::Fifo,
                    NodeKind::Chardev,
                    NodeKind::Blockdev,
                ];
                let kind = kinds[kind];
                let mut n = Node::new(name, kind);
                n.mode = mode;
                (n.uid, n.gid, n.inode, n.device, n.links) = (uid, gid, inode, device, links);
                (n.mtime, n.atime, n.ctime) = (m, a, c);
                n.user = user.clone();
                n.group = user;
                n.xattrs = xattrs
                    .into_iter()
                    .map(|(k, v)| Xattr {
                        name: k.into(),
                        value: v.into(),
                    })
                    .collect();
                match kind {
                    NodeKind::File => {
                        n.content = content
                            .into_iter()
                            .map(|(id, len)| ContentRef {
                                id: id.map(BlobId),
                                len: if id.is_some() { len.min(1 << 20) } else { len },
                            })
                            .collect();
                        n.size = n.content.iter().map(|c| c.len).sum();
                    }
                    NodeKind::Dir => n.subtree = Some(BlobId([7; 32])),
                    NodeKind::Symlink => n.target = Some(target.into()),
                    NodeKind::Chardev | NodeKind::Blockdev => n.rdev = Some(inode),
                    NodeKind::Fifo => {}
                }
                n
            },
        )
}

fn entries() -> impl Strategy<Value = Vec<PackEntry>> {
    prop::collection::vec(
        (
            any::<bool>(),
            any::<[u8; 32]>(),
            0u32..1 << 20,
            0u32..1 << 24,
        ),
        0..20,
    )
    .prop_map(|v| {
        let mut off = 0u32;
        v.into_iter()
            .map(|(tree, id, stored, raw)| {
                let e = PackEntry {
                    blob_type: if tree { BlobType::Tree } else { BlobType::Data },
                    id: BlobId(id),
                    offset: off,
                    stored_len: stored,
                    raw_len: raw,
                };
                off += stored;
                e
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn tree_pages_round_trip(mut nodes in prop::collection::vec(node(), 0..12)) {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|a, b| a.name == b.name);
        let page = TreePage::leaf(nodes);
        prop_assert_eq!(TreePage::decode(&page.encode().unwrap()).unwrap(), page);
    }

    #[test]
    fn snapshots_round_trip(tags in prop::collection::vec("[a-z0-9-]{1,12}", 0..4), paths in prop::collection::vec(raw(), 1..3), host in ".{0,20}") {
        let mut s = vector_snapshot();
        s.tags = tags;
        s.paths = paths.into_iter().map(Into::into).collect();
        s.hostname = host;
        prop_assert_eq!(Snapshot::decode(&s.encode().unwrap()).unwrap(), s);
    }

    #[test]
    fn configs_round_trip(id in any::<[u8; 32]>(), min_exp in 6u32..18, level in 1i32..20, pack in 65536u32..1 << 30, norm in 0u8..4) {
        let min = 1u32 << min_exp;
        let c = Config {
            version: 1,
            id: id.to_vec(),
            created: "2026-01-01T00:00:00Z".into(),
            chunker: ChunkerParams { min_size: min, avg_size: min * 4, max_size: min * 16, normalization: norm },
            compression: if level % 5 == 0 { Compression::Off } else { Compression::Zstd(level) },
            pack_size: pack,
        };
        prop_assert_eq!(Config::decode(&c.encode().unwrap()).unwrap(), c);
    }

    #[test]
    fn pack_headers_round_trip(e in entries()) {
        prop_assert_eq!(pack::decode_header(&pack::encode_header(&e)).unwrap(), e);
    }

    #[test]
    fn index_files_round_trip(packs in prop::collection::vec((any::<[u8; 32]>(), entries()), 0..5)) {
        let idx = IndexFile {
            packs: packs
                .into_iter()
                .map(|(id, blobs)| {
                    let size = blobs.last().map(|b| b.offset + b.stored_len).unwrap_or(0);
                    IndexedPack { id: PackId(id), size, blobs }
                })
                .collect(),
        };
        prop_assert_eq!(IndexFile::decode(&idx.encode()).unwrap(), idx);
    }

    #[test]
    fn envelopes_open_what_was_sealed(key in any::<[u8; 32]>(), data in prop::collection::vec(any::<u8>(), 0..5000)) {
        let mut s = Sealer::new(&key).unwrap();
        let env = s.seal(Context::Snapshot, &data).unwrap();
        prop_assert_eq!(Opener::new(&key).open(Context::Snapshot, &env).unwrap(), data);
    }

    #[test]
    fn blobs_open_what_was_sealed(data in prop::collection::vec(0u8..4, 0..20000), compress in any::<bool>()) {
        let key = master();
        let mut s = blob::BlobSealer::new(&key, if compress { Compression::Zstd(3) } else { Compression::Off }).unwrap();
        let id = key.blob_id(&data);
        let sealed = s.seal(BlobType::Data, id, &data).unwrap();
        let back = blob::open_blob(&key, &key.opener(), BlobType::Data, &id, data.len() as u32, &sealed.bytes).unwrap();
        prop_assert_eq!(back, data);
    }

    #[test]
    fn chunks_concatenate_to_the_input(seed in any::<[u8; 32]>(), data in prop::collection::vec(any::<u8>(), 0..200_000), zeros in 0usize..100_000) {
        let mut data = data;
        data.extend(std::iter::repeat_n(0u8, zeros));
        let c = Chunker::new(&seed, vector_params()).unwrap();
        let lens: Vec<usize> = c.chunks(&data).collect();
        prop_assert_eq!(lens.iter().sum::<usize>(), data.len());
        for l in &lens {
            prop_assert!(*l > 0 && *l <= 32768);
        }
        for l in lens.iter().rev().skip(1) {
            prop_assert!(*l >= 2048);
        }
    }

    // Arbitrary bytes never panic any parser of stored bytes.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let key = master();
        let opener = key.opener();
        let _ = TreePage::decode(&bytes);
        let _ = Snapshot::decode(&bytes);
        let _ = Config::decode(&bytes);
        let _ = IndexFile::decode(&bytes);
        let _ = pack::decode_header(&bytes);
        let _ = pack::open_header(&opener, 0, &bytes);
        let _ = KeyFile::from_bytes(&bytes);
        let _ = opener.open(Context::Index, &bytes);
        let _ = blob::open_blob(&key, &opener, BlobType::Tree, &BlobId([0; 32]), 100, &bytes);
        if bytes.len() >= 4 {
            let _ = pack::header_start(bytes.len() as u64, &bytes[bytes.len() - 4..]);
        }
    }

    // Mutations of valid objects never panic either, and are detected when sealed.
    #[test]
    fn mutated_objects_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let tree = vector_tree().encode().unwrap();
        let snap = vector_snapshot().encode().unwrap();
        let index = IndexFile { packs: vec![IndexedPack { id: PackId([1; 32]), size: 1200, blobs: vector_entries() }] }.encode();
        for original in [&tree, &snap, &index] {
            let mut b = original.clone();
            let i = pos.index(b.len());
            b[i] = byte;
            let _ = TreePage::decode(&b);
            let _ = Snapshot::decode(&b);
            let _ = IndexFile::decode(&b);
        }
        let mut sealed = master().sealer().unwrap().seal(Context::Index, &index).unwrap();
        let i = pos.index(sealed.len());
        if sealed[i] != byte {
            sealed[i] = byte;
            prop_assert!(master().opener().open(Context::Index, &sealed).is_err());
        }
    }
}
