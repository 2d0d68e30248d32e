//! The node agent's state: its settings, the runs it is running, the pods
//! of this node, and the reporting every part of it shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use coffer_engine::CancelToken;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use tokio::sync::{Notify, Semaphore};

use crate::crd::RunStatus;
use crate::metrics::Metrics;
use crate::node::plan::NodeConfig;
use crate::repos::Repos;
use crate::run::RunObject;
use crate::scheduling::Schedule;
use crate::status::Outcome;

/// The node agent's settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where volumes are and what is allowed.
    pub node: NodeConfig,
    /// Runs at once on this node.
    pub max_concurrent: usize,
    /// Engine threads per run.
    pub threads_per_run: usize,
    /// Each backup reads its volume no faster than this (bytes per second).
    pub read_limit: Option<u64>,
    /// How long a run waits for its pod to exist before it fails.
    pub pod_wait: Duration,
    /// What namespaced objects may ask for.
    pub policy: crate::policy::TenantPolicy,
    /// An opened repository nobody used for this long is closed (its keys
    /// leave memory).
    pub repository_idle: Duration,
}

/// Which run.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) enum RunKey {
    Backup(String, String),
    Restore(String, String),
}

/// Why a running task was stopped.
#[derive(Clone, Debug)]
pub(crate) enum StopReason {
    Canceled,
    PodGone(String),
}

pub(crate) struct RunHandle {
    pub(crate) cancel: CancelToken,
    pub(crate) reason: Arc<Mutex<Option<StopReason>>>,
    /// (namespace, pod)
    pub(crate) pod: (String, String),
}

/// A scheduled volume: (namespace, pod, uid, volume) and when it next fires.
pub(crate) struct Scheduled {
    pub(crate) schedule: Schedule,
    pub(crate) text: String,
    pub(crate) next: chrono::DateTime<Utc>,
}

/// The node agent.
pub struct Agent {
    pub(crate) client: Client,
    pub(crate) opts: Options,
    pub(crate) repos: Repos,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) reporter: crate::report::Reporter,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) runs: Mutex<HashMap<RunKey, RunHandle>>,
    /// Pods on this node, by (namespace, name).
    pub(crate) pods: Mutex<HashMap<(String, String), Pod>>,
    pub(crate) schedules: Mutex<HashMap<(String, String, String, String), Scheduled>>,
    pub(crate) schedules_changed: Notify,
    pub(crate) recheck_tx: tokio::sync::mpsc::UnboundedSender<RunKey>,
    pub(crate) recheck_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<RunKey>>>,
    /// New runs whose pod is not scheduled (or does not exist) yet, by
    /// (namespace, pod): (kind, name).
    pub(crate) waiting: Mutex<HashMap<PodKey, Vec<RunKey>>>,
}

/// (namespace, pod name)
pub(crate) type PodKey = (String, String);

/// The kinds of run a node agent carries, each with its key.
pub(crate) trait NodeRun: RunObject + Send + Sync + 'static {
    /// The key of the run `name` in `ns`.
    fn key(ns: String, name: String) -> RunKey;
}

impl NodeRun for crate::crd::VolumeBackup {
    fn key(ns: String, name: String) -> RunKey {
        RunKey::Backup(ns, name)
    }
}

impl NodeRun for crate::crd::VolumeRestore {
    fn key(ns: String, name: String) -> RunKey {
        RunKey::Restore(ns, name)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent /* new */ {
    /// An agent for this node.
    pub fn new(client: Client, opts: Options, metrics: Arc<Metrics>) -> Arc<Agent> {
        let reporter = crate::report::Reporter::new(
            client.clone(),
            "coffer-agent",
            opts.node.node.clone(),
            metrics.clone(),
        );
        let (recheck_tx, recheck_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Agent {
            client,
            permits: Arc::new(Semaphore::new(opts.max_concurrent.max(1))),
            repos: Repos::new(opts.policy.clone()),
            opts,
            metrics,
            reporter,
            runs: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            schedules: Mutex::new(HashMap::new()),
            schedules_changed: Notify::new(),
            recheck_tx,
            recheck_rx: Mutex::new(Some(recheck_rx)),
            waiting: Mutex::new(HashMap::new()),
        })
    }
}

impl Agent /* me */ {
    pub(crate) fn me(&self) -> &str {
        &self.opts.node.node
    }
}

impl Agent /* pod_here */ {
    // ---- runs ----

    pub(crate) fn pod_here(&self, ns: &str, name: &str) -> Option<Pod> {
        lock(&self.pods)
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }
}

impl Agent /* write_status */ {
    /// Writes a run's status (merge patch on the status subresource); with
    /// `rv`, only if the object is still at that resourceVersion. Returns
    /// whether it was written.
    pub(crate) async fn write_status<K>(
        &self,
        ns: &str,
        name: &str,
        s: &RunStatus,
        rv: Option<String>,
    ) -> bool
    where
        K: RunObject,
    {
        crate::report::write_run::<K>(&self.client, ns, name, s, rv).await
    }
}

pub(crate) fn stopped(reason: &Arc<Mutex<Option<StopReason>>>) -> Outcome {
    match lock(reason).clone() {
        Some(StopReason::PodGone(m)) => Outcome::Failed(m),
        _ => Outcome::Canceled,
    }
}
