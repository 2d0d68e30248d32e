//! Uploader: stores finished packs with bounded concurrency and hands each
//! stored pack to the [`Indexer`]. Whatever happens, every pack stored is
//! indexed before the uploader returns, unless the session's lease is lost:
//! then no index file is written (the packs are adopted by a later backup,
//! or deleted by prune).

use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::indexer::Indexer;
use super::packer::{BufferPool, FinishedPack, PackData};
use crate::error::Result;
use crate::index::Index;
use crate::protocol::Lease;
use crate::repository::{PackBytes, Repository};

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
    pool: Arc<BufferPool>,
    lease: Lease,
    checkpoint: Option<super::CheckpointFn>,
) -> Result<UploadReport> {
    let mut report = UploadReport::default();
    let mut indexer = Indexer::new(&repo, &index, lease);
    let mut inflight = FuturesUnordered::new();
    let upload = |p: FinishedPack| {
        let repo = repo.clone();
        async move {
            let data = match &p.data {
                PackData::Memory(b) => PackBytes::Memory(b.clone()),
                PackData::File(path) => PackBytes::File(path),
            };
            repo.store_pack(&p.id, data).await.map(|()| p)
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
                let stored = match done {
                    Ok(p) => stored(&mut indexer, &mut report, p, &pool, checkpoint.as_ref()).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = stored {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    // Finish what is in flight so that every stored pack gets indexed.
    rx.close();
    while let Some(done) = inflight.next().await {
        let stored = match done {
            Ok(p) => stored(&mut indexer, &mut report, p, &pool, checkpoint.as_ref()).await,
            Err(e) => Err(e),
        };
        if let (Err(e), Ok(())) = (stored, &result) {
            result = Err(e);
        }
    }
    let flushed = indexer.flush().await;
    report.index_files = indexer.files_written();
    result?;
    flushed?;
    Ok(report)
}

/// A pack is stored: index it, and give its buffer back to the packer.
async fn stored(
    indexer: &mut Indexer<'_>,
    report: &mut UploadReport,
    p: FinishedPack,
    pool: &BufferPool,
    checkpoint: Option<&super::CheckpointFn>,
) -> Result<()> {
    if let Some(cp) = checkpoint {
        cp(super::Checkpoint::PackStored);
    }
    report.packs += 1;
    report.bytes += u64::from(p.size);
    let indexed = indexer.add(p.id, p.size, p.entries).await;
    if let PackData::Memory(bytes) = p.data {
        if let Ok(buf) = bytes.try_into_mut() {
            pool.give(Vec::from(buf));
        }
    }
    indexed
}
