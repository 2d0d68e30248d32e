//! Indexer: records stored packs in the in-memory index and in index files.
//! An index file lists only packs that are already stored, and one is
//! written at least every [`INDEX_EVERY_PACKS`] packs. Packs that a killed
//! backup stored but never indexed are adopted by the next backup
//! ([`adopt_unindexed`]), so no upload is lost.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;

use coffer_repo_format::index::{IndexFile, IndexedPack};
use coffer_repo_format::pack::PackEntry;
use coffer_repo_format::PackId;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::protocol::Lease;
use crate::repository::{layout, Repository};
use crate::storage::StoreErrorKind;

/// Packs listed per index file written during a backup (and by prune).
pub(crate) const INDEX_EVERY_PACKS: usize = 32;

/// The index files one writer is building.
pub(crate) struct Indexer<'a> {
    repo: &'a Repository,
    index: &'a Index,
    pending: IndexFile,
    files_written: u64,
    /// A write failed: the store is likely down, so keep collecting and
    /// leave the one last attempt to the final [`Indexer::flush`].
    failed: bool,
    /// The session's lease: an index file is written only within it, so
    /// none lands after a prune took this backup for dead (SPEC §13).
    lease: Lease,
}

impl<'a> Indexer<'a> {
    pub(crate) fn new(repo: &'a Repository, index: &'a Index, lease: Lease) -> Self {
        Indexer {
            repo,
            index,
            pending: IndexFile::default(),
            files_written: 0,
            failed: false,
            lease,
        }
    }

    /// Records a stored pack; writes an index file once enough are pending.
    pub(crate) async fn add(
        &mut self,
        id: PackId,
        size: u32,
        entries: Vec<PackEntry>,
    ) -> Result<()> {
        self.index.add_pack(id, size, &entries);
        self.pending.packs.push(IndexedPack {
            id,
            size,
            blobs: entries,
        });
        if self.pending.packs.len() >= INDEX_EVERY_PACKS && !self.failed {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes an index file of the packs still pending, if any.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        if self.pending.packs.is_empty() {
            return Ok(());
        }
        let write = self.repo.write_index(&self.pending);
        if let Err(e) = self.lease.bounded("writing an index file", write).await {
            self.failed = true;
            return Err(e);
        }
        self.files_written += 1;
        self.pending.packs.clear();
        Ok(())
    }

    pub(crate) fn files_written(&self) -> u64 {
        self.files_written
    }
}

/// Adopts the complete packs that no index file lists and no prune plan
/// names: the uploads of a backup that was killed before it indexed them
/// (SPEC.md §13, "Adoption"). Each pack's header is read and verified; the
/// pack's blobs go into `index`, and index files listing the packs are
/// written before this backup stores anything. A pack whose header does not
/// open is left alone (prune deletes it; check reports it). Returns how many
/// packs were adopted.
pub(crate) async fn adopt_unindexed(
    repo: &Arc<Repository>,
    index: &Index,
    planned: &HashSet<PackId>,
    lease: &Lease,
) -> Result<u64> {
    // Streamed: only the (few) unindexed packs are kept, never the listing.
    let mut orphans: Vec<(PackId, u64)> = Vec::new();
    let mut listing = repo.store().list(layout::DATA);
    while let Some(info) = listing.next().await {
        let info = info.map_err(|e| repo.store_err(e))?;
        let Some(id) = info
            .key
            .rsplit('/')
            .next()
            .and_then(|n| n.parse::<PackId>().ok())
        else {
            continue;
        };
        if !index.has_pack(&id) && !planned.contains(&id) {
            orphans.push((id, info.size));
        }
    }
    drop(listing);
    if orphans.is_empty() {
        return Ok(0);
    }
    let headers: Vec<_> = futures::stream::iter(orphans.into_iter().map(|(id, size)| {
        let repo = repo.clone();
        async move { (id, size, repo.read_pack_header(&id).await) }
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    let mut indexer = Indexer::new(repo, index, lease.clone());
    let mut adopted = 0;
    for (id, size, header) in headers {
        let entries = match header {
            Ok(e) => e,
            Err(e) if crate::repository::is_damage(&e) => {
                tracing::warn!("not adopting unindexed pack {id}: {e}");
                continue;
            }
            // Deleted since the listing (a prune of an older plan).
            Err(Error::Store { source, .. }) if source.kind == StoreErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let Ok(size) = u32::try_from(size) else {
            tracing::warn!("not adopting unindexed pack {id}: {size} bytes is too large");
            continue;
        };
        indexer.add(id, size, entries).await?;
        adopted += 1;
    }
    indexer.flush().await?;
    if adopted > 0 {
        tracing::info!(
            "adopted {adopted} pack(s) that an interrupted backup stored but did not index"
        );
    }
    Ok(adopted)
}
