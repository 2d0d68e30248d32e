//! Uploader and indexer: stores finished packs with bounded concurrency, then
//! records them in the in-memory index and in index files. An index file is
//! written only after every pack it lists is stored, and at least every
//! [`INDEX_EVERY_PACKS`] packs. Packs that a killed backup stored but never
//! indexed are adopted by the next backup ([`adopt_unindexed`]), so no
//! upload is lost.

use std::sync::Arc;

use std::collections::HashSet;

use futures::stream::FuturesUnordered;
use futures::StreamExt;

use coffer_repo_format::index::{IndexFile, IndexedPack};

use super::packer::{FinishedPack, PackData};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::repository::{layout, Repository};
use crate::storage::{StoreErrorKind, WriteMode};
use coffer_repo_format::PackId;

/// Packs listed per index file written during a backup.
pub(crate) const INDEX_EVERY_PACKS: usize = 32;

/// What the uploader did.
#[derive(Default, Debug)]
pub(crate) struct UploadReport {
    pub(crate) packs: u64,
    pub(crate) bytes: u64,
    pub(crate) index_files: u64,
}

pub(crate) async fn run(
    repo: Arc<Repository>,
    index: Arc<Index>,
    mut rx: tokio::sync::mpsc::Receiver<FinishedPack>,
    concurrency: usize,
    pool: Arc<super::packer::BufferPool>,
) -> Result<UploadReport> {
    let mut report = UploadReport::default();
    let mut pending = IndexFile::default();
    let mut inflight = FuturesUnordered::new();
    let upload = |p: FinishedPack| {
        let repo = repo.clone();
        async move {
            let key = layout::pack(&p.id);
            let store = repo.store();
            let stored = match &p.data {
                PackData::Memory(b) => store.put(&key, b.clone(), WriteMode::CreateNew).await,
                PackData::File(path) => store.put_file(&key, path, WriteMode::CreateNew).await,
            };
            match stored {
                Ok(()) => Ok(p),
                // The name is the hash of the bytes: an existing pack is this pack.
                Err(e) if e.kind == StoreErrorKind::AlreadyExists => Ok(p),
                Err(e) => Err(repo.store_err(e)),
            }
        }
    };
    let mut result: Result<()> = Ok(());
    loop {
        tokio::select! {
            next = rx.recv(), if inflight.len() < concurrency => match next {
                Some(p) => inflight.push(upload(p)),
                None => break,
            },
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                match done {
                    Ok(p) => {
                        record(&index, &mut pending, &mut report, p, &pool);
                        if pending.packs.len() >= INDEX_EVERY_PACKS {
                            if let Err(e) = flush(&repo, &mut pending, &mut report).await {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    Err(e) => { result = Err(e); break; }
                }
            }
        }
    }
    // Finish what is in flight so that every stored pack gets indexed.
    rx.close();
    while let Some(done) = inflight.next().await {
        match done {
            Ok(p) => record(&index, &mut pending, &mut report, p, &pool),
            Err(e) => {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
    }
    let flushed = flush(&repo, &mut pending, &mut report).await;
    result?;
    flushed?;
    Ok(report)
}

fn record(
    index: &Index,
    pending: &mut IndexFile,
    report: &mut UploadReport,
    p: FinishedPack,
    pool: &super::packer::BufferPool,
) {
    let size = p.size;
    index.add_pack(p.id, size, &p.entries);
    report.packs += 1;
    report.bytes += u64::from(size);
    pending.packs.push(IndexedPack {
        id: p.id,
        size,
        blobs: p.entries,
    });
    // The store is done with the bytes: the buffer goes back to the packer.
    if let PackData::Memory(bytes) = p.data {
        if let Ok(buf) = bytes.try_into_mut() {
            pool.give(Vec::from(buf));
        }
    }
}

async fn flush(
    repo: &Repository,
    pending: &mut IndexFile,
    report: &mut UploadReport,
) -> Result<()> {
    if pending.packs.is_empty() {
        return Ok(());
    }
    repo.write_index(pending).await?;
    report.index_files += 1;
    pending.packs.clear();
    Ok(())
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("a task failed: {e}"))
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
    let mut pending = IndexFile::default();
    let mut report = UploadReport::default();
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
        index.add_pack(id, size, &entries);
        pending.packs.push(IndexedPack {
            id,
            size,
            blobs: entries,
        });
        adopted += 1;
        if pending.packs.len() >= INDEX_EVERY_PACKS {
            flush(repo, &mut pending, &mut report).await?;
        }
    }
    flush(repo, &mut pending, &mut report).await?;
    if adopted > 0 {
        tracing::info!(
            "adopted {adopted} pack(s) that an interrupted backup stored but did not index"
        );
    }
    Ok(adopted)
}
