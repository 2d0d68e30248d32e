//! Check: prove what can be proven about a repository, and name every problem.
//!
//! Without reading data: key files, index files and snapshots are read whole
//! and must hash to their names and decrypt; every indexed pack must exist with
//! the recorded size and a header that agrees with the index; every tree of
//! every snapshot is walked and every blob it references must be indexed.
//! With `read_data`, the selected packs are downloaded, must hash to their
//! names, and every blob in them is decrypted, decompressed and verified.
//!
//! Check reads the repository itself, never a local cache: a cache entry is
//! only a copy of what the store held when it was read. At the end the cache
//! is left consistent with the store: entries of objects found damaged or
//! gone are dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use coffer_repo_format::blob::BlobType;
use coffer_repo_format::pack::{self, PackEntry};
use coffer_repo_format::tree::NodeKind;
use coffer_repo_format::{BlobId, IndexId, PackId, SnapshotId};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::progress::{Phase, ProgressFn, Reporter};
use crate::repository::{layout, Repository};
use crate::storage::StoreErrorKind;
use crate::trees::{Page, Pages};

/// Which packs `check` downloads and verifies blob by blob.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReadData {
    /// None: structure only.
    None,
    /// Every pack.
    All,
    /// Part `n` (1-based) of `m`, by pack id: the same packs every time, so `m`
    /// runs cover the repository.
    Subset {
        /// Which part.
        n: u32,
        /// Of how many.
        m: u32,
    },
    /// A random sample of this percentage of packs.
    Percent(f64),
}

impl ReadData {
    /// Parses `n/m` or `P%`.
    pub fn parse_subset(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "{s:?} is not a subset: use n/m (e.g. 2/7) or a percentage (e.g. 10%)"
            ))
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            return Ok(ReadData::Percent(p));
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if m == 0 || n == 0 || n > m {
            return Err(bad());
        }
        Ok(ReadData::Subset { n, m })
    }

    fn selects(&self, id: &PackId) -> bool {
        match *self {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Subset { n, m } => {
                let v = u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]);
                v % m == n - 1
            }
            ReadData::Percent(p) => {
                let mut b = [0u8; 4];
                let _ = getrandom::fill(&mut b);
                (f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)) * 100.0 < p
            }
        }
    }
}

/// One thing that is wrong.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Problem {
    /// The object, e.g. `pack 1a2b…` or `snapshot 3c4d… /etc/passwd`.
    pub object: String,
    /// A short class: config, key, index, snapshot, tree, pack-missing, pack-size,
    /// pack-header, pack-name, blob, blob-missing.
    pub kind: &'static str,
    /// What is wrong.
    pub message: String,
}

/// What `check` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
    /// Packs in the store that no index lists: left by an interrupted backup,
    /// harmless, removed by prune.
    pub unindexed_packs: Vec<PackId>,
    /// Snapshots read.
    pub snapshots: u64,
    /// Tree pages read.
    pub trees: u64,
    /// Packs whose headers were checked.
    pub packs: u64,
    /// Packs downloaded and verified blob by blob.
    pub packs_read: u64,
    /// Blobs decrypted and verified.
    pub blobs_read: u64,
    /// Bytes downloaded for `read_data`.
    pub bytes_read: u64,
    /// Store keys of objects found damaged or missing: their cache entries go.
    #[serde(skip)]
    damaged_keys: Vec<String>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, object: String, kind: &'static str, message: String) {
        tracing::debug!("{object}: {message}");
        self.problems.push(Problem {
            object,
            kind,
            message,
        });
    }

    /// A problem with the object stored at `key`.
    fn problem_at(&mut self, key: String, object: String, kind: &'static str, message: String) {
        self.damaged_keys.push(key);
        self.problem(object, kind, message);
    }
}

/// Options of [`check`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Which packs to read whole.
    pub read_data: ReadData,
    /// Requests at once.
    pub concurrency: usize,
    /// Stops check at the next object it reads (`Err(Cancelled)`).
    pub cancel: CancelToken,
    /// Progress callback: [`Phase::CheckStructure`] first, then with
    /// `read_data`, [`Phase::CheckReadData`] with packs and bytes verified.
    pub progress: Option<ProgressFn>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            read_data: ReadData::None,
            concurrency: 8,
            cancel: CancelToken::new(),
            progress: None,
        }
    }
}

/// Checks the repository; see the module docs.
pub async fn check(repo: Arc<Repository>, opts: CheckOptions) -> Result<CheckReport> {
    let cached = repo.store().clone();
    let (repo, has_cache) = match repo.without_cache() {
        Some(r) => (Arc::new(r), true),
        None => (repo, false),
    };
    let report = check_store(&repo, opts).await?;
    if has_cache {
        for key in &report.damaged_keys {
            cached.discard_cached(key);
        }
        // A complete listing through the cache drops entries of what is gone.
        for prefix in [layout::KEYS, layout::INDEX, layout::SNAPSHOTS] {
            let _ = cached.list(prefix).try_collect::<Vec<_>>().await;
        }
    }
    Ok(report)
}

async fn check_store(repo: &Arc<Repository>, opts: CheckOptions) -> Result<CheckReport> {
    let progress = Reporter::new(opts.progress.clone(), Phase::CheckStructure);
    progress.phase(Phase::CheckStructure, None, None);
    let mut report = CheckReport::default();
    check_config(repo, &mut report).await?;
    for k in repo.list_keys().await? {
        if let Some(why) = k.damaged {
            report.problem_at(layout::key(&k.id), format!("key file {}", k.id), "key", why);
        }
    }

    // Snapshots are listed before the index files are read: every listed
    // snapshot's blobs are then in index files read below (write order), even
    // while backups run.
    let snapshot_ids = repo.snapshot_ids().await?;

    // Index files: every one must read; together they say what every pack holds.
    let index = Arc::new(Index::new());
    let mut expected: HashMap<PackId, (u32, Vec<PackEntry>, Vec<IndexId>)> = HashMap::new();
    for id in repo.index_ids().await? {
        opts.cancel.check()?;
        match repo.read_index(&id).await {
            Ok(file) => {
                index.add_file(&file);
                for p in file.packs {
                    let e = expected
                        .entry(p.id)
                        .or_insert_with(|| (p.size, Vec::new(), Vec::new()));
                    if e.0 != p.size {
                        report.problem(
                            format!("pack {}", p.id),
                            "index",
                            format!(
                                "index file {id} records {} bytes, another index file {}",
                                p.size, e.0
                            ),
                        );
                    }
                    e.1.extend(p.blobs);
                    e.2.push(id);
                }
            }
            Err(e) => report.problem_at(
                layout::index(&id),
                format!("index file {id}"),
                "index",
                error_text(&e),
            ),
        }
    }

    // Packs: present with the recorded size and a header that agrees.
    let present = repo.present_packs().await?;
    let mut to_header = Vec::new();
    for (id, (size, _, files)) in &expected {
        match present.get(id) {
            None => report.problem_at(
                layout::pack(id),
                format!("pack {id}"),
                "pack-missing",
                format!(
                    "listed in index file {} but not in the store",
                    files[0].short()
                ),
            ),
            Some(actual) if *actual != u64::from(*size) => report.problem_at(
                layout::pack(id),
                format!("pack {id}"),
                "pack-size",
                format!("the index records {size} bytes, the store has {actual}"),
            ),
            Some(_) => to_header.push(*id),
        }
    }
    report.unindexed_packs = present
        .keys()
        .filter(|id| !expected.contains_key(id))
        .copied()
        .collect();
    let headers: Vec<(PackId, Result<Vec<PackEntry>>)> =
        futures::stream::iter(to_header.into_iter().map(|id| {
            let repo = repo.clone();
            async move { (id, repo.read_pack_header(&id).await) }
        }))
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    for (id, header) in headers {
        report.packs += 1;
        match header {
            Ok(entries) => compare_header(&mut report, &id, &entries, &expected[&id].1),
            Err(e) => report.problem_at(
                layout::pack(&id),
                format!("pack {id}"),
                "pack-header",
                error_text(&e),
            ),
        }
    }

    // Snapshots and their trees: every referenced blob must be indexed.
    let mut seen = Seen {
        pages: Pages::new(repo, &index),
        missing_data: HashSet::new(),
    };
    for id in snapshot_ids {
        opts.cancel.check()?;
        let snapshot = match repo.read_snapshot(&id).await {
            Ok(s) => s,
            // Forgotten since it was listed.
            Err(Error::NotFound { .. }) => continue,
            Err(e) => {
                report.problem_at(
                    layout::snapshot(&id),
                    format!("snapshot {id}"),
                    "snapshot",
                    error_text(&e),
                );
                continue;
            }
        };
        report.snapshots += 1;
        let Some(root) = snapshot.root.subtree else {
            continue;
        };
        walk_trees(&index, &mut report, &id, root, &mut seen, &opts.cancel).await?;
    }

    progress.finish();
    if opts.read_data != ReadData::None {
        read_data(repo, &mut report, &expected, &present, opts, &progress).await?;
        progress.finish();
    }
    Ok(report)
}

/// The config in the store must open with the master key and say what the
/// repository was opened with (which may have come from a cache).
async fn check_config(repo: &Repository, report: &mut CheckReport) -> Result<()> {
    let object = "config".to_string();
    let bytes = match repo.store().get(layout::CONFIG).await {
        Ok(b) => b,
        Err(e) if e.kind == StoreErrorKind::NotFound => {
            report.problem_at(
                layout::CONFIG.into(),
                object,
                "config",
                "the repository has no config: it is not a repository any more".into(),
            );
            return Ok(());
        }
        Err(e) => return Err(repo.store_err(e)),
    };
    let opened = repo
        .opener()
        .open(coffer_repo_format::envelope::Context::Config, &bytes)
        .and_then(|plain| coffer_repo_format::config::Config::decode(&plain));
    match opened {
        Ok(c) if c == *repo.config() => {}
        Ok(_) => report.problem_at(
            layout::CONFIG.into(),
            object,
            "config",
            "it differs from the config this repository was opened with (a cached copy)".into(),
        ),
        Err(e) => report.problem_at(layout::CONFIG.into(), object, "config", e.to_string()),
    }
    Ok(())
}

fn error_text(e: &Error) -> String {
    match e {
        Error::Corrupt { source, .. } | Error::UnsupportedVersion { source, .. } => {
            source.to_string()
        }
        other => other.to_string(),
    }
}

fn compare_header(
    report: &mut CheckReport,
    id: &PackId,
    header: &[PackEntry],
    indexed: &[PackEntry],
) {
    let by_offset: HashMap<u32, &PackEntry> = header.iter().map(|e| (e.offset, e)).collect();
    for want in indexed {
        match by_offset.get(&want.offset) {
            Some(got) if *got == want => {}
            Some(got) => report.problem(
                format!("pack {id}"),
                "pack-header",
                format!(
                    "at offset {} the header has {} blob {} ({} bytes), the index says {} blob {} ({} bytes)",
                    want.offset, got.blob_type, got.id, got.stored_len, want.blob_type, want.id, want.stored_len
                ),
            ),
            None => report.problem(
                format!("pack {id}"),
                "pack-header",
                format!("the index lists blob {} at offset {}, the header has no blob there", want.id, want.offset),
            ),
        }
    }
}

/// The walk of every snapshot's trees: each tree page is read once, and
/// each missing data blob reported once.
struct Seen<'a> {
    pages: Pages<'a>,
    missing_data: HashSet<BlobId>,
}

async fn walk_trees(
    index: &Index,
    report: &mut CheckReport,
    snapshot: &SnapshotId,
    root: BlobId,
    seen: &mut Seen<'_>,
    cancel: &CancelToken,
) -> Result<()> {
    seen.pages.add("/".into(), root);
    while let Some(Page { dir, id, page }) = seen.pages.next().await {
        cancel.check()?;
        // A directory's path ends with a slash.
        let path = match dir.to_str() {
            Some("/") => "/".to_string(),
            _ => format!("{}/", dir.display()),
        };
        let object = format!("snapshot {} {path}", snapshot.short());
        let page = match page {
            Ok(p) => p,
            Err(_) if !index.contains(&id) => {
                report.problem(
                    object,
                    "blob-missing",
                    format!("tree blob {id} is in no index file"),
                );
                continue;
            }
            Err(Error::Store { location, source }) if source.kind != StoreErrorKind::NotFound => {
                return Err(Error::Store { location, source });
            }
            Err(e) => {
                let key = index.get(&id).map(|l| layout::pack(&l.pack));
                report.problem_at(
                    key.unwrap_or_default(),
                    object,
                    "tree",
                    format!("tree blob {id}: {}", error_text(&e)),
                );
                continue;
            }
        };
        report.trees += 1;
        for node in page.nodes.iter().filter(|n| n.kind == NodeKind::File) {
            for id in node.content.iter().filter_map(|c| c.id) {
                if !index.contains(&id) && seen.missing_data.insert(id) {
                    report.problem(
                        format!(
                            "snapshot {} {path}{}",
                            snapshot.short(),
                            node.name.to_string_lossy()
                        ),
                        "blob-missing",
                        format!("data blob {id} is in no index file"),
                    );
                }
            }
        }
    }
    Ok(())
}

async fn read_data(
    repo: &Arc<Repository>,
    report: &mut CheckReport,
    expected: &HashMap<PackId, (u32, Vec<PackEntry>, Vec<IndexId>)>,
    present: &HashMap<PackId, u64>,
    opts: CheckOptions,
    progress: &Reporter,
) -> Result<()> {
    let selected: Vec<PackId> = present
        .keys()
        .filter(|id| opts.read_data.selects(id))
        .copied()
        .collect();
    progress.phase(
        Phase::CheckReadData,
        Some(selected.iter().map(|id| present[id]).sum()),
        Some(selected.len() as u64),
    );
    let results: Vec<(PackId, Result<PackCheck>)> =
        futures::stream::iter(selected.into_iter().map(|id| {
            let repo = repo.clone();
            let cancel = opts.cancel.clone();
            async move {
                if cancel.is_cancelled() {
                    return (id, Err(Error::Cancelled));
                }
                let r = match repo.read_pack(&id).await {
                    Ok(bytes) => {
                        let repo = repo.clone();
                        tokio::task::spawn_blocking(move || Ok(verify_pack(&repo, &id, &bytes)))
                            .await
                            .unwrap_or_else(|e| {
                                Err(Error::InvalidArgument(format!(
                                    "pack verification failed: {e}"
                                )))
                            })
                    }
                    Err(e) => Err(e),
                };
                progress.add(present[&id], 1);
                (id, r)
            }
        }))
        .buffer_unordered(opts.concurrency.clamp(1, 4))
        .collect()
        .await;
    opts.cancel.check()?;
    for (id, r) in results {
        match r {
            Ok(pc) => {
                report.packs_read += 1;
                report.blobs_read += pc.blobs;
                report.bytes_read += pc.bytes;
                if let (Some(entries), Some((_, indexed, _))) = (&pc.entries, expected.get(&id)) {
                    let before = report.problems.len();
                    compare_header(report, &id, entries, indexed);
                    // The structural pass already reported a header mismatch.
                    report.problems.truncate(before);
                }
                for (kind, message) in pc.problems {
                    report.problem_at(layout::pack(&id), format!("pack {id}"), kind, message);
                }
            }
            Err(e) => report.problem_at(
                layout::pack(&id),
                format!("pack {id}"),
                "pack-missing",
                error_text(&e),
            ),
        }
    }
    Ok(())
}

struct PackCheck {
    blobs: u64,
    bytes: u64,
    entries: Option<Vec<PackEntry>>,
    problems: Vec<(&'static str, String)>,
}

fn verify_pack(repo: &Repository, id: &PackId, bytes: &[u8]) -> PackCheck {
    let mut pc = PackCheck {
        blobs: 0,
        bytes: bytes.len() as u64,
        entries: None,
        problems: Vec::new(),
    };
    let actual = PackId::of(bytes);
    if actual != *id {
        pc.problems.push((
            "pack-name",
            format!("its content hashes to {actual}, not to its name"),
        ));
    }
    if bytes.len() < pack::TRAILER_LEN {
        pc.problems
            .push(("pack-header", format!("only {} bytes", bytes.len())));
        return pc;
    }
    let len = bytes.len() as u64;
    let header =
        pack::header_start(len, &bytes[bytes.len() - pack::TRAILER_LEN..]).and_then(|start| {
            pack::open_header(
                repo.opener(),
                start,
                &bytes[start as usize..bytes.len() - pack::TRAILER_LEN],
            )
        });
    let entries = match header {
        Ok(e) => e,
        Err(e) => {
            pc.problems.push(("pack-header", e.to_string()));
            return pc;
        }
    };
    for e in &entries {
        let start = e.offset as usize;
        let stored = &bytes[start..start + e.stored_len as usize];
        pc.blobs += 1;
        if let Err(err) = repo.open_blob(e.blob_type, &e.id, e.raw_len, stored) {
            let what = if e.blob_type == BlobType::Tree {
                "tree"
            } else {
                "data"
            };
            pc.problems.push((
                "blob",
                format!("{what} blob {} at offset {}: {err}", e.id, e.offset),
            ));
        }
    }
    pc.entries = Some(entries);
    pc
}
