//! `coffer-agent node`: the DaemonSet process.
//!
//! Watch, plan, run, report:
//! - **watch** the pods of this node (a field selector on `spec.nodeName`),
//!   VolumeBackups and VolumeRestores;
//! - pod annotations become VolumeBackup objects (`backup-now`, `schedule`),
//!   so every run has one status path;
//! - a run whose pod is on this node is **claimed** (its status written with
//!   the object's resourceVersion, so only one agent wins), **planned**
//!   ([`crate::node::plan`]) and **run** as a task with the engine, at most
//!   `--max-concurrent` at once;
//! - progress and the result are **reported** in the run's status (at most
//!   every [`crate::report::STATUS_INTERVAL`]), as Events and as metrics.
//!
//! A run that was InProgress on this node when the agent stopped is resumed
//! (the engine reuses what was stored); after [`crate::crd::MAX_ATTEMPTS`]
//! starts it is marked Failed. `spec.cancel` and a deleted pod stop a run
//! through the engine's cancellation token.

pub mod annotations;
mod backup;
mod context;
pub mod decide;
pub mod kubelet;
pub mod plan;
mod pods;
mod restore;
mod runs;
mod triggers;

pub use context::{Agent, Options};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::node::context::lock;

impl Agent /* run */ {
    /// Watches and runs until a watch ends for good.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        // The pods of this node first, so that runs find their pod.
        let pods_synced = Arc::new(Notify::new());
        let pods = tokio::spawn(self.clone().watch_pods(pods_synced.clone()));
        pods_synced.notified().await;
        let backups = tokio::spawn(self.clone().watch_backups());
        let restores = tokio::spawn(self.clone().watch_restores());
        let scheduler = tokio::spawn(self.clone().scheduler());
        if let Some(rx) = lock(&self.recheck_rx).take() {
            tokio::spawn(self.clone().rechecks(rx));
        }
        // Repositories idle for --repository-idle leave memory, keys and all.
        let idle = self.opts.repository_idle;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep((idle / 4).max(Duration::from_secs(1))).await;
                let n = me.repos.evict_idle(idle);
                if n > 0 {
                    tracing::debug!("{n} idle repositories closed");
                }
            }
        });
        self.metrics.set_ready();
        tracing::info!(
            node = self.me(),
            "watching pods, VolumeBackups and VolumeRestores"
        );
        tokio::select! {
            r = pods => r?,
            r = backups => r?,
            r = restores => r?,
            r = scheduler => r?,
        }
        anyhow::bail!("a watch ended")
    }
}
