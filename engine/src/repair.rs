//! Repair: when `check` found damage.
//!
//! - [`repair_index`] rebuilds the index from the packs themselves: every
//!   readable pack header (or, with `read_data`, every blob that verifies)
//!   is listed in new index files, and the old index files go. A pack whose
//!   header cannot be read is left alone (`check` names it; prune deletes
//!   it). With `read_data`, a pack holding damaged blobs is repacked: its
//!   good blobs are copied into a new pack, listed, then the old pack is
//!   deleted. It holds the prune lock (so no prune runs beside it) and
//!   writes and deletes within that lock's lease (SPEC §13); backups go on.
//! - [`repair_snapshots`] writes, for each snapshot that refers to blobs no
//!   index lists, a new snapshot ([`crate::rewrite`]) in which a file's lost
//!   pieces read as zeros (its size and the offsets of the rest are kept)
//!   and a directory whose listing is lost is empty; each such entry carries
//!   the extended attribute `user.coffer.repaired` saying what was lost.
//!   With `forget`, the originals go.
//!
//! Damaged blobs are found by `repair index --read-data`; `repair snapshots`
//! then sees them as lost.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coffer_repo_format::index::{IndexFile, IndexedPack};
use coffer_repo_format::pack::PackEntry;
use coffer_repo_format::snapshot::Snapshot;
use coffer_repo_format::tree::{ContentRef, Node, NodeKind, Xattr};
use coffer_repo_format::{BlobId, IndexId, PackId, SnapshotId};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::protocol::{take_prune_lock, Timing, Waiting};
use crate::repository::{is_damage, Repository};
use crate::rewrite::{rewrite_each, Each, Edit, Editor};

/// The extended attribute a repaired entry carries.
pub const REPAIRED_XATTR: &str = "user.coffer.repaired";

/// How `repair index` runs.
#[derive(Clone, Debug)]
pub struct RepairIndexOptions {
    /// Read every pack whole and verify every blob: damaged blobs are left
    /// out of the new index (their packs repacked without them).
    pub read_data: bool,
    /// Say what would be done; change nothing.
    pub dry_run: bool,
    /// The concurrency protocol's timings.
    pub timing: Timing,
    /// How long to wait for a prune that holds the lock.
    pub max_wait: Duration,
    /// Stops the repair before it writes anything, or between steps.
    pub cancel: CancelToken,
}

impl Default for RepairIndexOptions {
    fn default() -> Self {
        RepairIndexOptions {
            read_data: false,
            dry_run: false,
            timing: Timing::default(),
            max_wait: Duration::from_secs(3600),
            cancel: CancelToken::new(),
        }
    }
}

/// What `repair index` found and did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairIndexReport {
    /// Packs in the store.
    pub packs: u64,
    /// Packs whose headers were read (not listed correctly by an index file).
    pub headers_read: u64,
    /// Index files that could not be read (damaged), replaced.
    pub damaged_index_files: Vec<IndexId>,
    /// Packs an index listed that are not in the store.
    pub missing_packs: Vec<PackId>,
    /// Packs whose header cannot be read: left alone, listed nowhere.
    pub unreadable_packs: Vec<PackId>,
    /// Blobs that failed verification (with `read_data`), left out.
    pub damaged_blobs: Vec<BlobId>,
    /// Packs repacked without their damaged blobs, then deleted.
    pub repacked_packs: Vec<PackId>,
    /// Blobs the new index lists.
    pub blobs: u64,
    /// Index files written, and deleted.
    pub index_files_written: u64,
    /// Index files deleted (every one read).
    pub index_files_deleted: u64,
    /// Whether anything was changed (false on a dry run).
    pub executed: bool,
}

/// Rebuilds the index; see the module docs.
pub async fn repair_index(
    repo: Arc<Repository>,
    opts: RepairIndexOptions,
) -> Result<RepairIndexReport> {
    let mut report = RepairIndexReport::default();
    repo.prepare_writes().await?;
    let lock = take_prune_lock(
        &repo,
        Waiting {
            timing: opts.timing,
            max_wait: opts.max_wait,
            cancel: &opts.cancel,
        },
    )
    .await?;
    let result = rebuild(&repo, &opts, lock.lease(), &mut report).await;
    let ended = lock.end().await;
    result?;
    ended?;
    Ok(report)
}

async fn rebuild(
    repo: &Arc<Repository>,
    opts: &RepairIndexOptions,
    lease: &crate::protocol::Lease,
    report: &mut RepairIndexReport,
) -> Result<()> {
    let present = repo.present_packs().await?;
    report.packs = present.len() as u64;
    // What the readable index files say, where it matches the store.
    let mut listed: HashMap<PackId, IndexedPack> = HashMap::new();
    let mut old_files = Vec::new();
    let mut missing = HashSet::new();
    for id in repo.index_ids().await? {
        opts.cancel.check()?;
        match repo.read_index(&id).await {
            Ok(f) => {
                for p in f.packs {
                    match present.get(&p.id) {
                        Some(size) if *size == u64::from(p.size) => {
                            listed.insert(p.id, p);
                        }
                        Some(_) => {}
                        None => {
                            missing.insert(p.id);
                        }
                    }
                }
            }
            Err(e) if is_damage(&e) => report.damaged_index_files.push(id),
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
        old_files.push(id);
    }
    report.missing_packs = missing.into_iter().collect();
    report.missing_packs.sort();
    // Every present pack, from a correct listing or from its own header.
    let mut packs: Vec<IndexedPack> = Vec::new();
    let mut repacker = crate::prune::Repacker::new(repo)?;
    let mut new_packs = Vec::new();
    let mut ids: Vec<(&PackId, &u64)> = present.iter().collect();
    ids.sort();
    for (id, size) in ids {
        opts.cancel.check()?;
        let entries = match listed.remove(id) {
            Some(p) if !opts.read_data => p.blobs,
            _ => {
                report.headers_read += 1;
                match repo.read_pack_header(id).await {
                    Ok(e) => e,
                    Err(e) if is_damage(&e) => {
                        tracing::warn!("pack {id}: {e}; left out of the index");
                        report.unreadable_packs.push(*id);
                        continue;
                    }
                    Err(Error::Store { source, .. })
                        if source.kind == crate::storage::StoreErrorKind::NotFound =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let Ok(size) = u32::try_from(*size) else {
            report.unreadable_packs.push(*id);
            continue;
        };
        if opts.read_data {
            let (good, damaged) = verify_pack(repo, id, &entries).await?;
            if !damaged.is_empty() {
                report.damaged_blobs.extend(damaged.iter().map(|e| e.id));
                report.repacked_packs.push(*id);
                for (e, plain) in good {
                    if let Some(p) = repacker.add(e.blob_type, e.id, &plain)? {
                        new_packs.push(p);
                    }
                }
                continue;
            }
        }
        report.blobs += entries.len() as u64;
        packs.push(IndexedPack {
            id: *id,
            size,
            blobs: entries,
        });
    }
    new_packs.extend(repacker.finish()?);
    report.blobs += new_packs
        .iter()
        .map(|p| p.indexed.blobs.len() as u64)
        .sum::<u64>();
    if opts.dry_run {
        return Ok(());
    }
    opts.cancel.check()?;
    // New packs first, then the index that lists them, then the old index
    // files, then the damaged packs (nothing lists them any more).
    for p in &new_packs {
        crate::prune::store_new_pack(repo, p).await?;
        packs.push(p.indexed.clone());
    }
    for part in packs.chunks(crate::backup::indexer::INDEX_EVERY_PACKS) {
        let file = IndexFile {
            packs: part.to_vec(),
        };
        lease
            .bounded("writing an index file", repo.write_index(&file))
            .await?;
        report.index_files_written += 1;
    }
    for id in &old_files {
        lease
            .bounded("deleting an index file", repo.delete_index(id))
            .await?;
        report.index_files_deleted += 1;
    }
    for id in &report.repacked_packs {
        lease
            .bounded("deleting a damaged pack", repo.delete_pack(id))
            .await?;
    }
    report.executed = true;
    Ok(())
}

/// Reads pack `id` whole and opens every blob: (good blobs with their
/// plaintext, damaged blobs).
async fn verify_pack(
    repo: &Repository,
    id: &PackId,
    entries: &[PackEntry],
) -> Result<(Vec<(PackEntry, Vec<u8>)>, Vec<PackEntry>)> {
    let bytes = repo.read_pack(id).await?;
    let mut good = Vec::new();
    let mut damaged = Vec::new();
    for e in entries {
        let start = e.offset as usize;
        let opened = bytes
            .get(start..start + e.stored_len as usize)
            .ok_or_else(|| Error::Internal("blob beyond the pack's end".into()))
            .and_then(|stored| {
                repo.open_blob(e.blob_type, &e.id, e.raw_len, stored)
                    .map_err(|err| Error::corrupt(format!("{} blob {}", e.blob_type, e.id), err))
            });
        match opened {
            Ok(plain) => good.push((*e, plain)),
            Err(err) => {
                tracing::warn!(
                    "{} blob {} in pack {id} is damaged: {err}",
                    e.blob_type,
                    e.id
                );
                damaged.push(*e);
            }
        }
    }
    Ok((good, damaged))
}

/// How `repair snapshots` runs.
#[derive(Clone, Debug, Default)]
pub struct RepairSnapshotsOptions {
    /// Delete each original once its repaired snapshot is stored.
    pub forget: bool,
    /// Say what would be repaired; write nothing.
    pub dry_run: bool,
    /// The concurrency protocol's timings.
    pub timing: Timing,
    /// Stops at the next entry.
    pub cancel: CancelToken,
}

/// What `repair snapshots` did to one snapshot.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Repaired {
    /// The snapshot.
    pub original: SnapshotId,
    /// Its repaired snapshot; `None` when nothing was lost (or a dry run).
    pub new: Option<SnapshotId>,
    /// Files whose lost pieces now read as zeros.
    pub files: Vec<String>,
    /// Directories whose listing (or part of it) was lost.
    pub dirs: Vec<String>,
    /// Whether the original was deleted.
    pub forgotten: bool,
}

/// Marks `node` as repaired, saying what was lost.
fn mark(node: &mut Node, what: String) {
    node.xattrs
        .retain(|x| x.name.0 != REPAIRED_XATTR.as_bytes());
    node.xattrs.push(Xattr {
        name: REPAIRED_XATTR.as_bytes().into(),
        value: what.into_bytes().into(),
    });
    node.xattrs.sort_by(|a, b| a.name.cmp(&b.name));
}

struct Mender {
    index: Arc<Index>,
    files: Vec<String>,
    dirs: Vec<String>,
}

impl Editor for Mender {
    fn edit(&mut self, path: &Path, node: &Node) -> Result<Edit> {
        if node.kind != NodeKind::File {
            return Ok(Edit::Keep);
        }
        let lost: Vec<&ContentRef> = node
            .content
            .iter()
            .filter(|c| c.id.is_some_and(|id| !self.index.contains(&id)))
            .collect();
        if lost.is_empty() {
            return Ok(Edit::Keep);
        }
        let bytes: u64 = lost.iter().map(|c| c.len).sum();
        let mut n = node.clone();
        for c in &mut n.content {
            if c.id.is_some_and(|id| !self.index.contains(&id)) {
                c.id = None;
            }
        }
        mark(
            &mut n,
            format!(
                "{} of {} pieces ({bytes} bytes) were lost and read as zeros",
                lost.len(),
                node.content.len()
            ),
        );
        self.files.push(path.display().to_string());
        Ok(Edit::Replace(Box::new(n)))
    }

    fn unreadable(
        &mut self,
        path: &Path,
        node: &mut Node,
        error: Error,
        opened: bool,
    ) -> Result<()> {
        if !is_damage(&error) && !matches!(error, Error::NotFound { .. }) {
            return Err(error);
        }
        mark(
            node,
            if opened {
                format!("part of this directory's listing was lost ({error})")
            } else {
                format!("this directory's listing was lost ({error})")
            },
        );
        self.dirs.push(path.display().to_string());
        Ok(())
    }
}

/// Repairs `snapshots`; see the module docs.
pub async fn repair_snapshots(
    repo: Arc<Repository>,
    snapshots: Vec<(SnapshotId, Snapshot)>,
    opts: RepairSnapshotsOptions,
) -> Result<Vec<Repaired>> {
    let index = repo.load_index().await?;
    let each = Each {
        dry_run: opts.dry_run,
        forget: opts.forget,
        timing: opts.timing,
        cancel: &opts.cancel,
        program: format!("coffer {} repair snapshots", env!("CARGO_PKG_VERSION")),
    };
    let done = rewrite_each(&repo, snapshots, each, || {
        Ok(Mender {
            index: index.clone(),
            files: Vec::new(),
            dirs: Vec::new(),
        })
    })
    .await?;
    Ok(done
        .into_iter()
        .map(|d| Repaired {
            original: d.original,
            new: d.new,
            files: d.editor.files,
            dirs: d.editor.dirs,
            forgotten: d.forgotten,
        })
        .collect())
}
