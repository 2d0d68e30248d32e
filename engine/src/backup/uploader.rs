//! Uploader and indexer: stores finished packs with bounded concurrency, then
//! records them in the in-memory index and in index files. An index file is
//! written only after every pack it lists is stored, and at least every
//! [`INDEX_EVERY_PACKS`] packs, so a killed backup leaves its uploads findable.

use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;

use coffer_repo_format::index::{IndexFile, IndexedPack};

use super::packer::{FinishedPack, PackData};
use crate::error::{Error, Result};
use crate::index::Index;
use crate::repository::{layout, Repository};
use crate::storage::{StoreErrorKind, WriteMode};

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
        Error::InvalidArgument(format!("internal task failed: {e}"))
    }
}
