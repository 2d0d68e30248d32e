//! Fetcher: reads the blobs a restore needs, each pack once, with ranged reads
//! that cover neighbouring blobs together, several packs at once.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;

use coffer_repo_format::PackId;

use super::batch::{coalesce, Batch, BlobTargets, Read};
use super::{writer, Shared};
use crate::error::{Error, Result};
use crate::progress::{Phase, Reporter};
use crate::repository::layout;

/// Fetches the batches of one restore as the planner fills them, from the
/// planner's blocking thread.
pub(crate) struct Fetch {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    progress: Arc<Reporter>,
    concurrency: usize,
    /// Bytes the caller places after the batches (a device's holes).
    extra_bytes: u64,
    started: bool,
    /// When the restore's planning began (for the debug log of each batch).
    begun: std::time::Instant,
}

impl Fetch {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rt: tokio::runtime::Handle,
        progress: Arc<Reporter>,
        concurrency: usize,
        extra_bytes: u64,
    ) -> Self {
        Fetch {
            shared,
            rt,
            progress,
            concurrency: concurrency.max(1),
            extra_bytes,
            started: false,
            begun: std::time::Instant::now(),
        }
    }

    /// Reads and writes one batch. The totals reported are those of the
    /// batches planned so far: they grow when a restore takes several.
    pub(crate) fn batch(&mut self, batch: Batch) -> Result<()> {
        let bytes: u64 = batch
            .packs
            .values()
            .flatten()
            .map(BlobTargets::placed)
            .sum();
        let packs = batch.packs.len() as u64;
        tracing::debug!(
            "restore: a batch of {packs} packs planned at {:.2}s",
            self.begun.elapsed().as_secs_f64()
        );
        if self.started {
            self.progress.grow(bytes, packs);
        } else {
            self.started = true;
            self.progress
                .phase(Phase::Restore, Some(bytes + self.extra_bytes), Some(packs));
        }
        self.rt
            .block_on(run(&self.shared, batch, self.concurrency, &self.progress))
    }

    /// The runtime the batches are fetched on.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    /// Starts the phase if no batch did (nothing had contents).
    pub(crate) fn finish(self) {
        if !self.started {
            self.progress
                .phase(Phase::Restore, Some(self.extra_bytes), Some(0));
        }
    }
}

/// Fetches and writes every blob of a batch, reporting bytes placed and packs
/// done to `progress`.
async fn run(
    shared: &Arc<Shared>,
    batch: Batch,
    concurrency: usize,
    progress: &Reporter,
) -> Result<()> {
    let files = Arc::new(batch.files);
    let jobs: Vec<(PackId, Read)> = batch
        .packs
        .into_iter()
        .flat_map(|(pack, blobs)| coalesce(blobs).into_iter().map(move |r| (pack, r)))
        .collect();
    // Reads left per pack: a pack is done when its last read is.
    let mut left: HashMap<PackId, usize> = HashMap::new();
    for (pack, _) in &jobs {
        *left.entry(*pack).or_default() += 1;
    }
    let mut stream = futures::stream::iter(jobs)
        .map(|(pack, read)| {
            let shared = shared.clone();
            let files = files.clone();
            async move {
                if shared.cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let bytes: u64 = read.blobs.iter().map(BlobTargets::placed).sum();
                let key = layout::pack(&pack);
                let fetched = shared
                    .repo
                    .store()
                    .get_range(&key, read.start..read.end)
                    .await;
                if fetched.is_err() && read.blobs.len() > 1 {
                    // A range that cannot be read (a truncated pack, say) must
                    // not take down the blobs in it that can: each on its own.
                    for b in read.blobs {
                        let start = u64::from(b.offset);
                        let end = start + u64::from(b.stored_len);
                        let one = Read {
                            start,
                            end,
                            blobs: vec![b],
                        };
                        let fetched = shared.repo.store().get_range(&key, start..end).await;
                        let (shared, files) = (shared.clone(), files.clone());
                        tokio::task::spawn_blocking(move || {
                            writer::write_read(&shared, &files, pack, one, fetched)
                        })
                        .await?;
                    }
                    return Ok((pack, bytes));
                }
                tokio::task::spawn_blocking(move || {
                    writer::write_read(&shared, &files, pack, read, fetched)
                })
                .await?;
                Ok((pack, bytes))
            }
        })
        .buffer_unordered(concurrency);
    while let Some(r) = stream.next().await {
        let (pack, bytes) = r?;
        let n = left.entry(pack).or_default();
        *n = n.saturating_sub(1);
        progress.add(bytes, u64::from(*n == 0));
    }
    Ok(())
}
