//! Prune: free the packs that no snapshot needs, safely beside running backups.
//!
//! 1. Take the prune lock (see [`crate::protocol`]).
//! 2. Plan: walk every snapshot's trees and mark the blobs in use; a pack
//!    with no used blob is deleted, a pack with unused blobs may be repacked
//!    (its used blobs copied into new packs), packs that no index lists are
//!    deleted. The plan is written to `plans/<id>` *before* anything else, and
//!    every backup that starts from then on reads it and does not deduplicate
//!    against blobs in the plan's packs.
//! 3. List the backup sessions: each of them may have started before the plan
//!    and may reference anything. Wait until each has ended (or is stale).
//! 4. Plan again against the snapshots and index files as they are now (the
//!    waited-for backups have written theirs), keeping only packs that were in
//!    the first plan, then execute: repack, write the new index files, delete
//!    the old index files, delete the packs, delete the plan.
//!
//! Every step leaves a repository that `check` accepts: new packs are stored
//! before the index files that list them, old index files are deleted before
//! the packs they list, and a pack that no index lists is garbage, not damage.
//! A killed prune leaves its plan, which only makes backups upload again what
//! it listed; the next prune replaces it and finishes the job.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use coffer_repo_format::blob::{BlobSealer, BlobType};
use coffer_repo_format::index::{IndexFile, IndexedPack};
use coffer_repo_format::pack::{self, PackEntry};
use coffer_repo_format::tree::NodeKind;
use coffer_repo_format::{BlobId, IndexId, PackId};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::progress::{Phase, ProgressFn, Reporter};
use crate::protocol::{
    list_keys, take_prune_lock, wait_for_sessions, write_plan, Lease, Live, Timing, Waiting, PLANS,
    SESSIONS,
};
use crate::repository::{PackBytes, Repository};
use crate::trees::Pages;

/// How prune decides and how long it waits.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Unused space allowed to remain in packs, in percent of the repository:
    /// packs with the most unused space are repacked until at most this much
    /// is left (0: repack every pack with an unused blob).
    pub max_unused_percent: f64,
    /// Repack at most this many bytes of packs.
    pub max_repack: Option<u64>,
    /// Compute and return the plan, change nothing.
    pub dry_run: bool,
    /// The protocol's timings.
    pub timing: Timing,
    /// How long to wait for running backups (and another prune) before leaving
    /// the plan for the next prune. Held to within a heartbeat's check.
    pub max_wait: Duration,
    /// Stops prune at its next safe point: while it waits, before it writes
    /// its plan, and between repacked packs (nothing is deleted before the
    /// new index files are stored).
    pub cancel: CancelToken,
    /// Progress callback: [`Phase::PrunePlan`], [`Phase::PruneWait`] (sessions),
    /// [`Phase::PruneRepack`] and [`Phase::PruneDelete`] (packs and their bytes).
    pub progress: Option<ProgressFn>,
}

impl PruneOptions {
    fn waiting(&self) -> Waiting<'_> {
        Waiting {
            timing: self.timing,
            max_wait: self.max_wait,
            cancel: &self.cancel,
        }
    }
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused_percent: 5.0,
            max_repack: None,
            dry_run: false,
            timing: Timing::default(),
            max_wait: Duration::from_secs(3600),
            cancel: CancelToken::new(),
            progress: None,
        }
    }
}

/// Parses a percentage, `5%` or `5`, between 0 and 100 (`--max-unused`).
pub fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage like 5%"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?} is not between 0% and 100%"));
    }
    Ok(v)
}

/// What prune decided, and what it did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PrunePlan {
    /// Packs deleted whole (no used blob).
    pub delete_packs: Vec<PackId>,
    /// Packs whose used blobs are copied to new packs before they are deleted.
    pub repack_packs: Vec<PackId>,
    /// Packs that no index lists (left by interrupted backups), deleted.
    pub unindexed_packs: Vec<PackId>,
    /// Index files replaced.
    pub index_files_rewritten: usize,
    /// Blobs in use / not in use.
    pub used_blobs: u64,
    /// Blobs no snapshot needs.
    pub unused_blobs: u64,
    /// Bytes of packs in the repository.
    pub total_bytes: u64,
    /// Bytes of unused blobs.
    pub unused_bytes: u64,
    /// Bytes freed (deleted packs, plus the unused part of repacked ones).
    pub bytes_freed: u64,
    /// Bytes of used blobs copied by repacking.
    pub bytes_repacked: u64,
    /// Backup sessions prune waited for.
    pub sessions_waited: usize,
    /// Stale sessions (dead backups) removed.
    pub stale_sessions_removed: usize,
    /// True when the plan was carried out (false for a dry run, or when
    /// prune stopped waiting; the next prune finishes it).
    pub executed: bool,
}

/// Blobs used by every snapshot, as positions in the index (one bit each).
struct Usage {
    used: HashSet<BlobId>,
}

/// The repository as prune sees it: snapshots listed *first*, then the
/// index files. By the write order (SPEC.md), every listed snapshot's blobs
/// are in index files stored before it, so they are all read here; a
/// snapshot written later belongs to a session prune waits for.
async fn read_state(repo: &Repository) -> Result<(Indexes, Arc<Index>, Usage)> {
    let snapshots = repo.snapshot_ids().await?;
    let (idx, index) = read_indexes(repo).await?;
    let u = usage(repo, &index, &snapshots).await?;
    Ok((idx, index, u))
}

async fn usage(
    repo: &Repository,
    index: &Index,
    ids: &[coffer_repo_format::SnapshotId],
) -> Result<Usage> {
    let mut used: HashSet<BlobId> = HashSet::new();
    let mut pages = Pages::new(repo, index);
    for id in ids {
        let snap = match repo.read_snapshot(id).await {
            Ok(s) => s,
            // Forgotten since it was listed.
            Err(Error::NotFound { .. }) => continue,
            // A snapshot that cannot be read might reference anything: stop.
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "prune cannot know what snapshot {} needs ({e}); repair or forget it first",
                    id.short()
                )));
            }
        };
        let Some(root) = snap.root.subtree else {
            continue;
        };
        pages.add("/".into(), root);
        while let Some(p) = pages.next().await {
            let page = p.page.map_err(|e| Error::Unreadable {
                object: format!("tree {} of snapshot {}", p.id.short(), id.short()),
                source: Box::new(e),
            })?;
            for node in &page.nodes {
                if node.kind == NodeKind::File {
                    used.extend(node.content.iter().filter_map(|c| c.id));
                }
            }
        }
    }
    used.extend(pages.seen().iter().copied());
    Ok(Usage { used })
}

/// The index files and what they list, pack by pack.
struct Indexes {
    files: Vec<(IndexId, IndexFile)>,
}

async fn read_indexes(repo: &Repository) -> Result<(Indexes, Arc<Index>)> {
    let index = Arc::new(Index::new());
    let mut files = Vec::new();
    for id in repo.index_ids().await? {
        let f = repo.read_index(&id).await.map_err(|e| Error::Unreadable {
            object: format!("index file {}", id.short()),
            source: Box::new(e),
        })?;
        index.add_file(&f);
        files.push((id, f));
    }
    Ok((Indexes { files }, index))
}

/// Computes what to delete and repack.
fn decide(
    idx: &Indexes,
    usage: &Usage,
    present: &HashMap<PackId, u64>,
    opts: &PruneOptions,
    only: Option<&HashSet<PackId>>,
) -> PrunePlan {
    let mut plan = PrunePlan::default();
    // Per pack: (size, used bytes, unused bytes), each blob counted once per pack.
    let mut packs: HashMap<PackId, (u64, u64, u64)> = HashMap::new();
    let mut counted: HashSet<(PackId, BlobId)> = HashSet::new();
    for (_, f) in &idx.files {
        for p in &f.packs {
            let e = packs.entry(p.id).or_insert((u64::from(p.size), 0, 0));
            for b in &p.blobs {
                if !counted.insert((p.id, b.id)) {
                    continue;
                }
                if usage.used.contains(&b.id) {
                    e.1 += u64::from(b.stored_len);
                    plan.used_blobs += 1;
                } else {
                    e.2 += u64::from(b.stored_len);
                    plan.unused_blobs += 1;
                }
            }
        }
    }
    plan.total_bytes = packs.values().map(|v| v.0).sum();
    plan.unused_bytes = packs.values().map(|v| v.2).sum();
    let allowed = |p: &PackId| only.is_none_or(|o| o.contains(p));
    for (id, (size, used, _)) in &packs {
        if *used == 0 && allowed(id) && present.contains_key(id) {
            plan.delete_packs.push(*id);
            plan.bytes_freed += size;
        }
    }
    // Repack the packs with the most unused space first, until what is left
    // unused is within the allowance.
    let mut partial: Vec<(PackId, u64, u64)> = packs
        .iter()
        .filter(|(id, v)| v.1 > 0 && v.2 > 0 && allowed(id) && present.contains_key(id))
        .map(|(id, v)| (*id, v.1, v.2))
        .collect();
    partial.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let mut left: u64 = partial.iter().map(|p| p.2).sum();
    let allowance = (plan.total_bytes as f64 * opts.max_unused_percent / 100.0) as u64;
    for (id, used, unused) in partial {
        if left <= allowance {
            break;
        }
        if let Some(max) = opts.max_repack {
            if plan.bytes_repacked + used > max {
                break;
            }
        }
        plan.repack_packs.push(id);
        plan.bytes_repacked += used;
        plan.bytes_freed += unused;
        left -= unused;
    }
    for (id, size) in present {
        if !packs.contains_key(id) && allowed(id) {
            plan.unindexed_packs.push(*id);
            plan.bytes_freed += size;
        }
    }
    plan.delete_packs.sort();
    plan.repack_packs.sort();
    plan.unindexed_packs.sort();
    plan
}

/// Runs prune; see the module docs.
pub async fn prune(repo: Arc<Repository>, opts: PruneOptions) -> Result<PrunePlan> {
    if opts.dry_run {
        let (idx, _, u) = read_state(&repo).await?;
        let present = repo.present_packs().await?;
        return Ok(decide(&idx, &u, &present, &opts, None));
    }
    opts.cancel.check()?;
    let progress = Reporter::new(opts.progress.clone(), Phase::PrunePlan);
    progress.phase(Phase::PrunePlan, None, None);
    repo.prepare_writes().await?;
    let lock = take_prune_lock(&repo, opts.waiting()).await?;
    let result = run(&repo, &opts, &lock, &progress).await;
    progress.finish();
    let ended = lock.end().await;
    let plan = result?;
    ended?;
    Ok(plan)
}

async fn run(
    repo: &Arc<Repository>,
    opts: &PruneOptions,
    lock: &Live,
    progress: &Reporter,
) -> Result<PrunePlan> {
    // Plan, and publish the plan before looking at sessions.
    let first = {
        let (idx, _, u) = read_state(repo).await?;
        let present = repo.present_packs().await?;
        decide(&idx, &u, &present, opts, None)
    };
    let mut packs: Vec<PackId> = first.delete_packs.clone();
    packs.extend(&first.repack_packs);
    packs.extend(&first.unindexed_packs);
    if packs.is_empty() {
        return Ok(PrunePlan {
            executed: true,
            ..first
        });
    }
    opts.cancel.check()?;
    let lease = lock.lease();
    let old_plans = list_keys(repo, PLANS).await?;
    let plan_key = lease
        .bounded("writing its plan", write_plan(repo, &packs))
        .await?;
    for key in old_plans {
        // This plan covers what is still to do of theirs.
        lease
            .bounded("deleting an older plan", repo.delete(&key))
            .await?;
    }

    // Wait for every backup that may have started before the plan.
    let sessions = list_keys(repo, SESSIONS).await?;
    progress.phase(Phase::PruneWait, None, Some(sessions.len() as u64));
    let (waited, stale) =
        wait_for_sessions(repo, &sessions, opts.waiting(), lock, progress).await?;
    let Some(stale) = stale else {
        return Ok(PrunePlan {
            sessions_waited: waited,
            executed: false,
            ..first
        });
    };

    // Decide again with what those backups wrote, within the first plan.
    let allowed: HashSet<PackId> = packs.iter().copied().collect();
    let (idx, _, u) = read_state(repo).await?;
    let present = repo.present_packs().await?;
    let mut plan = decide(&idx, &u, &present, opts, Some(&allowed));
    plan.sessions_waited = waited;
    plan.stale_sessions_removed = stale;
    lock.check_alive().await?;
    opts.cancel.check()?;
    let state = State {
        idx: &idx,
        usage: &u,
        present: &present,
    };
    execute(repo, &state, &mut plan, &opts.cancel, lease, progress).await?;
    lease
        .bounded("deleting its plan", repo.delete(&plan_key))
        .await?;
    plan.executed = true;
    Ok(plan)
}

/// What the second look at the repository found, for [`execute`].
struct State<'a> {
    idx: &'a Indexes,
    usage: &'a Usage,
    /// Packs in the store, with their sizes.
    present: &'a HashMap<PackId, u64>,
}

/// Pack deletions sent at once; the lock's lease is checked before each
/// batch, and a batch must complete within it.
const DELETE_BATCH: usize = 16;

/// Repacks, rewrites the index, deletes packs. Every index write, index
/// deletion and batch of pack deletions happens within the lock's lease
/// (SPEC §13): a prune that stalled past it stops there, so it never runs
/// beside the prune that took its lock over.
async fn execute(
    repo: &Arc<Repository>,
    state: &State<'_>,
    plan: &mut PrunePlan,
    cancel: &CancelToken,
    lease: &Lease,
    progress: &Reporter,
) -> Result<()> {
    let State {
        idx,
        usage,
        present,
    } = *state;
    let gone: HashSet<PackId> = plan
        .delete_packs
        .iter()
        .chain(&plan.repack_packs)
        .chain(&plan.unindexed_packs)
        .copied()
        .collect();
    // 1. Repack: copy the used blobs of each repacked pack into new packs,
    //    stored before the index file that lists them.
    let mut new_index = IndexFile::default();
    if !plan.repack_packs.is_empty() {
        progress.phase(
            Phase::PruneRepack,
            Some(
                plan.repack_packs
                    .iter()
                    .filter_map(|id| present.get(id))
                    .sum(),
            ),
            Some(plan.repack_packs.len() as u64),
        );
        let mut copied: HashSet<BlobId> = HashSet::new();
        let mut writer = Repacker::new(repo)?;
        // Each repacked pack's entries, found in one pass over the index
        // files (a pack may be listed by more than one).
        let mut listed: HashMap<PackId, Vec<PackEntry>> = plan
            .repack_packs
            .iter()
            .map(|id| (*id, Vec::new()))
            .collect();
        for (_, f) in &idx.files {
            for p in &f.packs {
                if let Some(entries) = listed.get_mut(&p.id) {
                    entries.extend(p.blobs.iter().copied());
                }
            }
        }
        for pack_id in &plan.repack_packs {
            // Safe to stop here: nothing was deleted, the plan stays for the
            // next prune, and the packs stored so far are unindexed (adopted
            // by a backup, or deleted by the next prune).
            cancel.check()?;
            let entries: Vec<PackEntry> = listed
                .remove(pack_id)
                .unwrap_or_default()
                .into_iter()
                .filter(|b| usage.used.contains(&b.id))
                .collect();
            let bytes = repo.read_pack(pack_id).await?;
            for e in entries {
                if !copied.insert(e.id) {
                    continue;
                }
                let start = e.offset as usize;
                let Some(stored) = bytes.get(start..start + e.stored_len as usize) else {
                    return Err(Error::corrupt(
                        format!("pack {pack_id}"),
                        coffer_repo_format::FormatError::Truncated {
                            what: "pack",
                            needed: u64::from(e.offset) + u64::from(e.stored_len),
                            available: bytes.len() as u64,
                        },
                    ));
                };
                // Verify before copying: prune never spreads damage.
                let plain = repo
                    .open_blob(e.blob_type, &e.id, e.raw_len, stored)
                    .map_err(|err| {
                        Error::corrupt(
                            format!("{} blob {} in pack {pack_id}", e.blob_type, e.id),
                            err,
                        )
                    })?;
                if let Some(p) = writer.add(e.blob_type, e.id, &plain)? {
                    store_new_pack(repo, &p).await?;
                    new_index.packs.push(p.indexed);
                }
            }
            progress.add(bytes.len() as u64, 1);
        }
        for p in writer.finish()? {
            store_new_pack(repo, &p).await?;
            new_index.packs.push(p.indexed);
        }
        // Index files as small as a backup's, far below the readers' limit.
        for part in new_index
            .packs
            .chunks(crate::backup::indexer::INDEX_EVERY_PACKS)
        {
            let file = IndexFile {
                packs: part.to_vec(),
            };
            lease
                .bounded("writing an index file", repo.write_index(&file))
                .await?;
        }
    }
    // 2. Replace every index file that lists a pack that goes.
    let mut rewritten = 0;
    for (id, f) in &idx.files {
        if !f.packs.iter().any(|p| gone.contains(&p.id)) {
            continue;
        }
        let kept = IndexFile {
            packs: f
                .packs
                .iter()
                .filter(|p| !gone.contains(&p.id))
                .cloned()
                .collect(),
        };
        if !kept.packs.is_empty() {
            lease
                .bounded("writing an index file", repo.write_index(&kept))
                .await?;
        }
        lease
            .bounded("deleting an index file", repo.delete_index(id))
            .await?;
        rewritten += 1;
    }
    plan.index_files_rewritten = rewritten;
    // 3. Delete the packs, now that no index lists them.
    progress.phase(
        Phase::PruneDelete,
        Some(gone.iter().filter_map(|id| present.get(id)).sum()),
        Some(gone.len() as u64),
    );
    let gone: Vec<PackId> = gone.into_iter().collect();
    for batch in gone.chunks(DELETE_BATCH) {
        let deletions = futures::future::try_join_all(batch.iter().map(|id| repo.delete_pack(id)));
        lease.bounded("deleting packs", deletions).await?;
        for id in batch {
            progress.add(present.get(id).copied().unwrap_or(0), 1);
        }
    }
    Ok(())
}

/// Stores `blobs` (type and plaintext) in new packs, with index files that
/// list them, outside any backup; returns their ids. The engine's own tests
/// build hostile snapshots with it (any tree a password holder could write).
#[cfg_attr(feature = "internals", visibility::make(pub))]
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
pub(crate) async fn store_blobs(
    repo: &Arc<Repository>,
    blobs: &[(BlobType, Vec<u8>)],
) -> Result<Vec<BlobId>> {
    let mut writer = Repacker::new(repo)?;
    let mut index = IndexFile::default();
    let mut ids = Vec::new();
    for (t, plain) in blobs {
        let id = repo.key().blob_id(plain);
        ids.push(id);
        if let Some(p) = writer.add(*t, id, plain)? {
            store_new_pack(repo, &p).await?;
            index.packs.push(p.indexed);
        }
    }
    for p in writer.finish()? {
        store_new_pack(repo, &p).await?;
        index.packs.push(p.indexed);
    }
    repo.write_index(&index).await?;
    Ok(ids)
}

/// A repacked pack, ready to store.
pub(crate) struct NewPack {
    id: PackId,
    bytes: Bytes,
    pub(crate) indexed: IndexedPack,
}

pub(crate) async fn store_new_pack(repo: &Repository, p: &NewPack) -> Result<()> {
    repo.store_pack(&p.id, PackBytes::Memory(p.bytes.clone()))
        .await
}

/// Packs re-sealed blobs (data and tree apart) into new packs.
pub(crate) struct Repacker {
    target: usize,
    sealer: BlobSealer,
    header: coffer_repo_format::envelope::Sealer,
    open: [(Vec<u8>, Vec<PackEntry>); 2],
    out: Vec<u8>,
}

impl Repacker {
    pub(crate) fn new(repo: &Repository) -> Result<Self> {
        Ok(Repacker {
            target: repo.config().pack_size as usize,
            sealer: BlobSealer::new(repo.key(), repo.config().compression)
                .map_err(|e| Error::corrupt("blob sealer", e))?,
            header: repo
                .key()
                .sealer()
                .map_err(|e| Error::corrupt("random source", e))?,
            open: Default::default(),
            out: Vec::new(),
        })
    }

    pub(crate) fn add(&mut self, t: BlobType, id: BlobId, plain: &[u8]) -> Result<Option<NewPack>> {
        let stored = self
            .sealer
            .seal_to(t, id, plain, &mut self.out)
            .map_err(|e| Error::corrupt(format!("{t} blob {id}"), e))?;
        let slot = usize::from(t == BlobType::Tree);
        let (bytes, entries) = &mut self.open[slot];
        entries.push(PackEntry {
            blob_type: t,
            id,
            offset: bytes.len() as u32,
            stored_len: stored as u32,
            raw_len: plain.len() as u32,
        });
        bytes.extend_from_slice(&self.out);
        if bytes.len() >= self.target {
            return self.close(slot).map(Some);
        }
        Ok(None)
    }

    fn close(&mut self, slot: usize) -> Result<NewPack> {
        let (mut bytes, entries) = std::mem::take(&mut self.open[slot]);
        pack::finish_pack(&mut self.header, &mut bytes, &entries)
            .map_err(|e| Error::corrupt("new pack header", e))?;
        let id = PackId::of(&bytes);
        let size = bytes.len() as u32;
        Ok(NewPack {
            id,
            bytes: Bytes::from(bytes),
            indexed: IndexedPack {
                id,
                size,
                blobs: entries,
            },
        })
    }

    pub(crate) fn finish(mut self) -> Result<Vec<NewPack>> {
        let mut out = Vec::new();
        for slot in 0..2 {
            if !self.open[slot].1.is_empty() {
                out.push(self.close(slot)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod percent_tests {
    use super::parse_percent;

    #[test]
    fn percentages_with_or_without_the_sign_and_in_range() {
        assert_eq!(parse_percent("5%"), Ok(5.0));
        assert_eq!(parse_percent(" 12.5 "), Ok(12.5));
        assert_eq!(parse_percent("0"), Ok(0.0));
        assert!(parse_percent("101%")
            .unwrap_err()
            .contains("between 0% and 100%"));
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("five")
            .unwrap_err()
            .contains("not a percentage"));
    }
}
