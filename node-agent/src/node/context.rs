//! The node agent's state: its settings, the runs it is running, the pods
//! of this node, and the reporting every part of it shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use coffer_engine::CancelToken;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::Semaphore;

use crate::crd::{BackupMethod, RunStatus, VolumeBackup, VolumeRestore};
use crate::lenient::Lenient;
use crate::metrics::Metrics;
use crate::node::annotations;
use crate::node::plan::NodeConfig;
use crate::repos::Repos;
use crate::run::RunObject;
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
    /// Bytes of a large file each backup thread holds at once.
    pub read_window: usize,
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

/// The node agent.
pub struct Agent {
    pub(crate) client: Client,
    pub(crate) opts: Options,
    pub(crate) repos: Repos,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) reporter: crate::report::Reporter,
    pub(crate) permits: Arc<Semaphore>,
    /// The runs this agent is running: tracked tasks, each stoppable.
    pub(crate) runs: Mutex<HashMap<RunKey, RunHandle>>,
    /// The pods of this node (the pod controller's cache).
    pub(crate) pods: Store<Pod>,
    /// Every VolumeBackup (the backup controller's cache): where annotation
    /// schedules read when they last fired.
    pub(crate) backups: Store<Lenient<VolumeBackup>>,
    /// True once `backups` holds the first listing.
    pub(crate) backups_listed: tokio::sync::watch::Receiver<bool>,
    /// The last time each annotation schedule fired here, by (pod uid,
    /// volume): a floor under what the VolumeBackups say, so that a
    /// scheduled run deleted by hand is not made again.
    pub(crate) fired: Mutex<HashMap<(String, String), DateTime<Utc>>>,
}

/// The kinds of run a node agent carries, each with its key.
pub(crate) trait NodeRun: RunObject + Send + Sync + 'static {
    /// The key of the run `name` in `ns`.
    fn key(ns: String, name: String) -> RunKey;
    /// The pod it names, if any.
    fn target_pod(&self) -> Option<&str>;
    /// The run, for dispatch.
    fn into_run(self) -> RunKind;
}

impl NodeRun for VolumeBackup {
    fn key(ns: String, name: String) -> RunKey {
        RunKey::Backup(ns, name)
    }
    fn target_pod(&self) -> Option<&str> {
        self.spec.pod.as_deref()
    }
    fn into_run(self) -> RunKind {
        RunKind::Backup(Box::new(self))
    }
}

impl NodeRun for VolumeRestore {
    fn key(ns: String, name: String) -> RunKey {
        RunKey::Restore(ns, name)
    }
    fn target_pod(&self) -> Option<&str> {
        self.spec.pod.as_deref()
    }
    fn into_run(self) -> RunKind {
        RunKind::Restore(Box::new(self))
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent /* new */ {
    /// An agent for this node.
    pub(crate) fn new(
        client: Client,
        opts: Options,
        metrics: Arc<Metrics>,
        pods: Store<Pod>,
        backups: Store<Lenient<VolumeBackup>>,
        backups_listed: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Agent> {
        let reporter = crate::report::Reporter::new(
            client.clone(),
            "coffer-agent",
            opts.node.node.clone(),
            metrics.clone(),
        );
        Arc::new(Agent {
            client,
            permits: Arc::new(Semaphore::new(opts.max_concurrent.max(1))),
            repos: Repos::new(opts.policy.clone()),
            opts,
            metrics,
            reporter,
            runs: Mutex::new(HashMap::new()),
            pods,
            backups,
            backups_listed,
            fired: Mutex::new(HashMap::new()),
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
        self.pods
            .get(&ObjectRef::new(name).within(ns))
            .map(|p| (*p).clone())
    }
}

/// How the work of a run ended: its outcome, the path it recorded, the
/// bytes it read, and the hooks it ran.
pub(crate) struct Ended {
    pub(crate) outcome: Outcome,
    pub(crate) path: Option<String>,
    pub(crate) bytes: u64,
    pub(crate) hooks: Vec<crate::crd::HookRun>,
}

impl Ended {
    /// An end with no hooks run.
    pub(crate) fn new(outcome: Outcome, path: Option<String>, bytes: u64) -> Ended {
        Ended {
            outcome,
            path,
            bytes,
            hooks: Vec::new(),
        }
    }

    /// The run's final status, from the status it was claimed with.
    pub(crate) fn status(self, claimed: RunStatus) -> RunStatus {
        let mut s = claimed;
        s.path = self.path.or(s.path);
        s.hooks = self.hooks;
        crate::status::finished(s, self.outcome)
    }
}

pub(crate) fn stopped(reason: &Arc<Mutex<Option<StopReason>>>) -> Outcome {
    match lock(reason).clone() {
        Some(StopReason::PodGone(m)) => Outcome::Failed(m),
        _ => Outcome::Canceled,
    }
}

/// A run of either kind, for dispatch.
pub(crate) enum RunKind {
    Backup(Box<VolumeBackup>),
    Restore(Box<VolumeRestore>),
}

impl RunKind {
    /// The pod and volume this node agent would read or write; `None` for
    /// the controller's runs (method Snapshot, restores into a new PVC) and
    /// for runs that name no pod.
    pub(crate) fn pod_volume(&self) -> Option<(&str, &str)> {
        match self {
            RunKind::Backup(vb) if vb.spec.method == BackupMethod::Filesystem => {
                vb.spec.pod_volume()
            }
            RunKind::Backup(vb) if vb.spec.method == BackupMethod::Command => {
                Some((vb.spec.pod.as_deref()?, annotations::DUMP_VOLUME))
            }
            RunKind::Backup(_) => None,
            RunKind::Restore(vr) if vr.spec.target.is_none() => vr.spec.pod_volume(),
            RunKind::Restore(_) => None,
        }
    }

    /// The pod ([`Agent::on_run`] takes only runs that name one).
    pub(crate) fn pod(&self) -> &str {
        self.pod_volume().unwrap_or_default().0
    }

    pub(crate) fn namespace(&self) -> String {
        match self {
            RunKind::Backup(vb) => vb.namespace(),
            RunKind::Restore(vr) => vr.namespace(),
        }
        .unwrap_or_default()
    }

    pub(crate) fn key(&self) -> RunKey {
        match self {
            RunKind::Backup(vb) => RunKey::Backup(self.namespace(), vb.name_any()),
            RunKind::Restore(vr) => RunKey::Restore(self.namespace(), vr.name_any()),
        }
    }

    /// The generation of the object as this agent saw it.
    pub(crate) fn generation(&self) -> Option<i64> {
        match self {
            RunKind::Backup(vb) => vb.metadata.generation,
            RunKind::Restore(vr) => vr.metadata.generation,
        }
    }

    pub(crate) fn status(&self) -> Option<&RunStatus> {
        match self {
            RunKind::Backup(vb) => vb.status.as_ref(),
            RunKind::Restore(vr) => vr.status.as_ref(),
        }
    }

    pub(crate) fn cancel(&self) -> bool {
        match self {
            RunKind::Backup(vb) => vb.spec.cancel,
            RunKind::Restore(vr) => vr.spec.cancel,
        }
    }
}
