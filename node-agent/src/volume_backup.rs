//! A volume's backup, as the node agent (a pod's volume in place) and the
//! mover (a clone of a PVC) both run it: what the engine is told, progress
//! into the VolumeBackup's status, and the outcome the run ends with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use coffer_engine::backup::{
    BackupOptions, BackupProgress, BackupSummary, ChangeRules, ParentChoice,
};
use coffer_engine::forget::OriginFilter;
use coffer_engine::format::snapshot::KubernetesOrigin;
use coffer_engine::protocol::Timing;
use coffer_engine::{CancelToken, Repository};
use kube::Client;

use crate::crd::{Progress, VolumeBackup};
use crate::report::{update_run, STATUS_INTERVAL};
use crate::status::Outcome;

/// What one volume backup reads and records.
#[derive(Clone, Debug)]
pub struct Source {
    /// What is read: the volume's directory or device, or a clone's mount.
    pub path: PathBuf,
    /// The path recorded in the snapshot.
    pub record_path: PathBuf,
    /// The origin recorded in the snapshot.
    pub origin: KubernetesOrigin,
    /// The snapshots whose newest is the parent.
    pub parent: OriginFilter,
    /// The hostname recorded in the snapshot.
    pub hostname: String,
    /// The program recorded in the snapshot.
    pub program: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Exclude patterns.
    pub excludes: Vec<String>,
    /// Engine threads.
    pub threads: usize,
    /// Bytes of a large file each thread holds at once
    /// ([`BackupOptions::segment_size`]).
    pub read_window: usize,
    /// Read no faster than this (bytes per second).
    pub read_limit: Option<u64>,
    /// The protocol's timing (leases, stalls).
    pub timing: Timing,
    /// Which attributes count as a change against the parent.
    pub changes: ChangeRules,
}

impl Source {
    /// The engine's options for this backup. A tenant's volume (or a clone
    /// of one) is never trusted: its pod may swap files while they are read.
    fn options(&self, cancel: &CancelToken) -> BackupOptions {
        let mut opts = BackupOptions::new([self.path.clone()]);
        opts.untrusted_source = true;
        opts.record_path = Some(self.record_path.clone());
        opts.origin = Some(self.origin.clone());
        opts.parent = ParentChoice::Origin(self.parent.clone());
        opts.hostname = Some(self.hostname.clone());
        opts.program = Some(self.program.clone());
        opts.tags = self.tags.clone();
        opts.threads = self.threads.max(1);
        opts.segment_size = self.read_window;
        opts.read_limit = self.read_limit;
        opts.cancel = cancel.clone();
        opts.timing = self.timing;
        opts.changes = self.changes;
        opts.selection.exclude = self.excludes.clone();
        opts
    }
}

/// Backs `source` up into `repo` for VolumeBackup `ns/name`, writing its
/// progress into the run's status at most every [`STATUS_INTERVAL`]. The
/// outcome ([`Outcome::Done`]) and the bytes read, or the engine's error
/// ([`coffer_engine::Error::Cancelled`] when `cancel` stopped it): the
/// caller says what a stop means for its run.
pub async fn run(
    client: &Client,
    ns: &str,
    name: &str,
    repo: Arc<Repository>,
    source: &Source,
    cancel: &CancelToken,
) -> Result<(Outcome, u64), coffer_engine::Error> {
    let (tx, mut rx) = tokio::sync::watch::channel(BackupProgress::default());
    let mut opts = source.options(cancel);
    opts.progress = Some(Arc::new(move |p: &BackupProgress| {
        let _ = tx.send(p.clone());
    }));
    // Only while the run is not over, at the version read: a progress write
    // still in flight when the run ends must never land on the final status
    // (it would put the phase back to InProgress).
    let (client, ns, name) = (client.clone(), ns.to_string(), name.to_string());
    let reporter = tokio::spawn(async move {
        let mut last = Instant::now() - STATUS_INTERVAL;
        while rx.changed().await.is_ok() {
            tokio::time::sleep(STATUS_INTERVAL.saturating_sub(last.elapsed())).await;
            let p = crate::status::progress_of(&rx.borrow_and_update().clone());
            update_run::<VolumeBackup>(&client, &ns, &name, |st| st.progress = Some(p.clone()))
                .await;
            last = Instant::now();
        }
    });
    let result = coffer_engine::backup::backup(repo, opts).await;
    reporter.abort();
    let _ = reporter.await;
    let summary = result?;
    tracing::info!(snapshot = %summary.snapshot_id.to_hex(), "backup done");
    Ok((done(&summary), summary.bytes_read))
}

/// The outcome of a backup that finished: its snapshot, what it added, and
/// the files it could not read.
pub fn done(summary: &BackupSummary) -> Outcome {
    let s = &summary.snapshot.summary;
    Outcome::Done {
        snapshot_id: summary.snapshot_id.to_hex(),
        incremental_bytes: Some(s.data_added_packed),
        progress: Progress {
            bytes_done: summary.bytes_read,
            total_bytes: Some(s.total_bytes_processed),
            files_done: s.total_files_processed,
            total_files: Some(s.total_files_processed),
        },
        errors: summary
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.path.display(), e.message))
            .collect(),
    }
}
