//! `coffer-agent node`: the DaemonSet process.
//!
//! Watch, plan, run, report:
//! - **watch** the pods of this node (a field selector on `spec.nodeName`),
//!   VolumeBackups and VolumeRestores;
//! - pod annotations become VolumeBackup objects (`backup-now`, `schedule`),
//!   so every run has one status path;
//! - a run whose pod is on this node is **claimed** (its status written with
//!   the object's resourceVersion, so only one agent wins), **planned**
//!   ([`crate::plan`]) and **run** as a task with the engine, at most
//!   `--max-concurrent` at once;
//! - progress and the result are **reported** in the run's status (at most
//!   every [`STATUS_INTERVAL`]), as Events and as metrics.
//!
//! A run that was InProgress on this node when the agent stopped is resumed
//! (the engine reuses what was stored); after [`crate::crd::MAX_ATTEMPTS`]
//! starts it is marked Failed. `spec.cancel` and a deleted pod stop a run
//! through the engine's cancellation token.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use coffer_engine::backup::{BackupOptions, BackupProgress, ParentChoice};
use coffer_engine::format::snapshot::KubernetesOrigin;
use coffer_engine::CancelToken;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{Notify, Semaphore};

use crate::annotations;
use crate::api::is_status;
use crate::crd::{
    BackupMethod, HookRun, Phase, Progress, RunStatus, VolumeBackup, VolumeBackupSpec,
    VolumeRestore,
};
use crate::hooks;
use crate::kubelet;
use crate::lenient::Lenient;
use crate::metrics::{Metrics, NamespaceLabels, RunLabels, VolumeLabels};
use crate::names::{label_value, object_name, POD_LABEL, TRIGGER_LABEL, VOLUME_LABEL};
use crate::plan::{self, NodeConfig, Planned, VolumeMode};
use crate::report::STATUS_INTERVAL;
use crate::repos::Repos;
use crate::run::RunObject;
use crate::scheduling::Schedule;
use crate::status::{self, Decision, Outcome};

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
enum RunKey {
    Backup(String, String),
    Restore(String, String),
}

/// Why a running task was stopped.
#[derive(Clone, Debug)]
enum StopReason {
    Canceled,
    PodGone(String),
}

struct RunHandle {
    cancel: CancelToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    /// (namespace, pod)
    pod: (String, String),
}

/// A scheduled volume: (namespace, pod, uid, volume) and when it next fires.
struct Scheduled {
    schedule: Schedule,
    text: String,
    next: chrono::DateTime<Utc>,
}

/// The node agent.
pub struct Agent {
    client: Client,
    opts: Options,
    repos: Repos,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    permits: Arc<Semaphore>,
    runs: Mutex<HashMap<RunKey, RunHandle>>,
    /// Pods on this node, by (namespace, name).
    pods: Mutex<HashMap<(String, String), Pod>>,
    schedules: Mutex<HashMap<(String, String, String, String), Scheduled>>,
    schedules_changed: Notify,
    recheck_tx: tokio::sync::mpsc::UnboundedSender<Recheck>,
    recheck_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Recheck>>>,
    /// New runs whose pod is not scheduled (or does not exist) yet, by
    /// (namespace, pod): (kind, name).
    waiting: Mutex<HashMap<PodKey, Vec<(String, String)>>>,
}

/// (namespace, pod name)
type PodKey = (String, String);

/// A run to look at again: (kind, namespace, name).
type Recheck = (String, String, String);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// An agent for this node.
    pub fn new(client: Client, opts: Options, metrics: Arc<Metrics>) -> Arc<Agent> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "coffer-agent".into(),
                instance: Some(opts.node.node.clone()),
            },
        );
        let (recheck_tx, recheck_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Agent {
            client,
            permits: Arc::new(Semaphore::new(opts.max_concurrent.max(1))),
            repos: Repos::new(opts.policy.clone()),
            opts,
            metrics,
            recorder,
            runs: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            schedules: Mutex::new(HashMap::new()),
            schedules_changed: Notify::new(),
            recheck_tx,
            recheck_rx: Mutex::new(Some(recheck_rx)),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    fn me(&self) -> &str {
        &self.opts.node.node
    }

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

    async fn watch_pods(self: Arc<Self>, synced: Arc<Notify>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", self.me()));
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        let mut seen_init: Vec<(String, String)> = Vec::new();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(p)) => self.on_pod(p).await,
                Ok(Event::InitApply(p)) => {
                    seen_init.push((p.namespace().unwrap_or_default(), p.name_any()));
                    self.on_pod(p).await;
                }
                Ok(Event::Delete(p)) => self.on_pod_gone(&p, "was deleted"),
                Ok(Event::Init) => seen_init.clear(),
                Ok(Event::InitDone) => {
                    // Pods that vanished while the watch was down.
                    let gone: Vec<Pod> = lock(&self.pods)
                        .iter()
                        .filter(|(k, _)| !seen_init.contains(k))
                        .map(|(_, p)| p.clone())
                        .collect();
                    for p in gone {
                        self.on_pod_gone(&p, "was deleted");
                    }
                    synced.notify_one();
                }
                Err(e) => tracing::warn!("pod watch: {e}; retrying"),
            }
        }
    }

    async fn watch_backups(self: Arc<Self>) {
        self.watch_runs(|vb: VolumeBackup| RunKind::Backup(Box::new(vb)))
            .await
    }

    async fn watch_restores(self: Arc<Self>) {
        self.watch_runs(|vr: VolumeRestore| RunKind::Restore(Box::new(vr)))
            .await
    }

    /// Watches one kind of run in every namespace: a new or changed run is
    /// decided on ([`Agent::on_run`]), a deleted one is stopped.
    async fn watch_runs<K>(self: Arc<Self>, wrap: impl Fn(K) -> RunKind)
    where
        K: Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
    {
        // Lenient: one run that does not parse, in any namespace, is
        // logged and skipped, never the whole list.
        let api: Api<Lenient<K>> = Api::all(self.client.clone());
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => {
                    if let Some(run) = o.object() {
                        self.on_run(wrap(run.clone())).await
                    }
                }
                Ok(Event::Delete(o)) => {
                    if let Ok(run) = o.parsed {
                        self.stop(&wrap(run).key(), StopReason::Canceled)
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("{} watch: {e}; retrying", K::kind(&())),
            }
        }
    }

    fn stop(&self, key: &RunKey, reason: StopReason) {
        if let Some(h) = lock(&self.runs).get(key) {
            *lock(&h.reason) = Some(reason);
            h.cancel.cancel();
        }
    }

    // ---- pods and annotations ----

    async fn on_pod(self: &Arc<Self>, pod: Pod) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_some() {
            self.on_pod_gone(&pod, "is being deleted");
            return;
        }
        lock(&self.pods).insert((ns.clone(), name.clone()), pod.clone());
        self.annotations(&pod).await;
        // Runs that waited for this pod to reach the node.
        self.start_waiting_runs(&ns, &name).await;
    }

    fn on_pod_gone(&self, pod: &Pod, how: &str) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        lock(&self.pods).remove(&(ns.clone(), name.clone()));
        lock(&self.schedules).retain(|k, _| !(k.0 == ns && k.1 == name));
        let runs = lock(&self.runs);
        for h in runs.values() {
            if h.pod == (ns.clone(), name.clone()) {
                *lock(&h.reason) = Some(StopReason::PodGone(format!(
                    "pod {ns}/{name} {how} during the run; no snapshot was written"
                )));
                h.cancel.cancel();
            }
        }
    }

    async fn annotations(self: &Arc<Self>, pod: &Pod) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let volumes: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .map(|v| v.name.clone())
            .collect();
        let owner = crate::pods::owner_of(pod).unwrap_or_else(|| format!("Pod/{name}"));
        let identity = |v: &str| format!("{ns}/{owner}/{v}");
        let req = match annotations::parse(pod.annotations(), &volumes, identity) {
            Ok(Some(r)) => r,
            Ok(None) => {
                lock(&self.schedules).retain(|k, _| !(k.0 == ns && k.1 == name));
                return;
            }
            Err(e) => {
                tracing::warn!(namespace = ns, pod = name, "{e}");
                self.event(
                    &pod.object_ref(&()),
                    EventType::Warning,
                    "BadAnnotation",
                    "Plan",
                    e.to_string(),
                )
                .await;
                return;
            }
        };
        // Schedules: one entry per volume; a changed text starts over.
        {
            let mut sch = lock(&self.schedules);
            sch.retain(|k, _| {
                !(k.0 == ns && k.1 == name && (k.2 != uid || !req.volumes.contains(&k.3)))
            });
            for v in &req.volumes {
                let key = (ns.clone(), name.clone(), uid.clone(), v.clone());
                match &req.schedule {
                    None => {
                        sch.remove(&key);
                    }
                    Some(text) => {
                        if sch.get(&key).is_some_and(|s| &s.text == text) {
                            continue;
                        }
                        if let Ok(s) = Schedule::parse(text, &identity(v)) {
                            if let Some(next) = s.next_after(Utc::now()) {
                                tracing::info!(namespace = ns, pod = name, volume = v, next = %next, "scheduled");
                                sch.insert(
                                    key,
                                    Scheduled {
                                        schedule: s,
                                        text: text.clone(),
                                        next,
                                    },
                                );
                            }
                        }
                    }
                }
            }
        }
        self.schedules_changed.notify_one();
        if let Some(now_value) = &req.backup_now {
            let suffix = crate::names::short_hash(&format!("{uid}/{now_value}"));
            self.create_backups(pod, &req, "backup-now", &suffix).await;
        }
    }

    /// Creates one VolumeBackup per selected volume that can be backed up
    /// now; the names are deterministic, so a second call creates nothing.
    async fn create_backups(
        self: &Arc<Self>,
        pod: &Pod,
        req: &annotations::BackupRequest,
        trigger: &str,
        suffix: &str,
    ) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<VolumeBackup> = Api::namespaced(self.client.clone(), &ns);
        for v in &req.volumes {
            let vb_name = object_name(&[&name, v, suffix]);
            match api.get_opt(&vb_name).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(
                        namespace = ns,
                        pod = name,
                        volume = v,
                        "cannot read VolumeBackup {vb_name}: {e}"
                    );
                    continue;
                }
            }
            let dump = v == annotations::DUMP_VOLUME;
            match if dump {
                Ok(())
            } else {
                self.plan(pod, v).await.map(drop)
            } {
                Ok(()) => {}
                Err(skip) => {
                    // Not a failure: the volume is skipped (and a not yet
                    // mounted volume is tried again on the pod's next change).
                    tracing::info!(namespace = ns, pod = name, volume = v, "skipped: {skip}");
                    continue;
                }
            }
            let vb = VolumeBackup {
                metadata: ObjectMeta {
                    name: Some(vb_name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(BTreeMap::from([
                        (POD_LABEL.to_string(), label_value(&name)),
                        (VOLUME_LABEL.to_string(), label_value(v)),
                        (TRIGGER_LABEL.to_string(), trigger.to_string()),
                    ])),
                    ..Default::default()
                },
                spec: VolumeBackupSpec {
                    method: if dump {
                        BackupMethod::Command
                    } else {
                        BackupMethod::Filesystem
                    },
                    pod: Some(name.clone()),
                    volume: (!dump).then(|| v.clone()),
                    pvc: None,
                    repository: req.repository.clone(),
                    tags: req.tags.clone(),
                    excludes: req.excludes.get(v).cloned().unwrap_or_default(),
                    retain_snapshot: false,
                    cancel: false,
                    group: None,
                },
                status: None,
            };
            match api.create(&PostParams::default(), &vb).await {
                Ok(_) => tracing::info!(
                    namespace = ns,
                    pod = name,
                    volume = v,
                    trigger,
                    "created VolumeBackup {vb_name}"
                ),
                Err(e) if is_status(&e, 409) => {}
                Err(e) => tracing::warn!(
                    namespace = ns,
                    pod = name,
                    volume = v,
                    "cannot create VolumeBackup {vb_name}: {e}"
                ),
            }
        }
    }

    async fn scheduler(self: Arc<Self>) {
        loop {
            let now = Utc::now();
            let due: Vec<(String, String, String, chrono::DateTime<Utc>)> = {
                let mut sch = lock(&self.schedules);
                let mut due = Vec::new();
                for (k, s) in sch.iter_mut() {
                    if s.next <= now {
                        due.push((k.0.clone(), k.1.clone(), k.3.clone(), s.next));
                        s.next = s
                            .schedule
                            .next_after(now)
                            .unwrap_or(now + chrono::Duration::days(365));
                    }
                }
                due
            };
            for (ns, pod_name, volume, at) in due {
                let pod = lock(&self.pods)
                    .get(&(ns.clone(), pod_name.clone()))
                    .cloned();
                let Some(pod) = pod else { continue };
                let ids: Vec<String> = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.volumes.iter().flatten())
                    .map(|v| v.name.clone())
                    .collect();
                if let Ok(Some(mut req)) =
                    annotations::parse(pod.annotations(), &ids, |v| v.to_string())
                {
                    req.volumes.retain(|v| *v == volume);
                    let suffix = at.format("%Y%m%d%H%M").to_string();
                    self.create_backups(&pod, &req, "schedule", &suffix).await;
                }
            }
            let next = lock(&self.schedules).values().map(|s| s.next).min();
            let wait = next
                .map(|n| (n - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(3600))
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.schedules_changed.notified() => {}
            }
        }
    }

    // ---- runs ----

    fn pod_here(&self, ns: &str, name: &str) -> Option<Pod> {
        lock(&self.pods)
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Runs that waited for this pod: started now that it is on this node.
    async fn start_waiting_runs(self: &Arc<Self>, ns: &str, pod: &str) {
        let waiting = lock(&self.waiting).remove(&(ns.to_string(), pod.to_string()));
        for (kind, name) in waiting.unwrap_or_default() {
            let _ = self.recheck_tx.send((kind, ns.to_string(), name));
        }
    }

    /// The node of a run's pod (this node when the pod is here). A pod that
    /// does not exist gets `--pod-wait` from the run's creation to appear;
    /// then the run fails (whichever agent writes first; the others see a
    /// conflict). Until then the run is looked at again when the wait ends.
    async fn pod_node<K>(self: &Arc<Self>, ns: &str, pod: &str, obj: &K) -> Option<String>
    where
        K: RunObject + Send + Sync + 'static,
    {
        if self.pod_here(ns, pod).is_some() {
            return Some(self.me().to_string());
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let remember = || {
            // Looked at again when the pod shows up on this node.
            let mut w = lock(&self.waiting);
            let runs = w.entry((ns.to_string(), pod.to_string())).or_default();
            let run = (
                K::kind(&()).to_string(),
                obj.meta().name.clone().unwrap_or_default(),
            );
            if !runs.contains(&run) {
                runs.push(run);
            }
        };
        match pods.get_opt(pod).await {
            Ok(Some(p)) => {
                let node = p.spec.and_then(|s| s.node_name);
                if node.is_none() {
                    remember();
                }
                node
            }
            Ok(None) => {
                remember();
                let created = obj
                    .meta()
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second())
                    .unwrap_or_else(|| Utc::now().timestamp());
                let age = Duration::from_secs((Utc::now().timestamp() - created).max(0) as u64);
                let name = obj.meta().name.clone().unwrap_or_default();
                if age >= self.opts.pod_wait {
                    let kind = K::kind(&());
                    let s = status::finished(
                        RunStatus::default(),
                        Outcome::Failed(format!(
                            "pod {ns}/{pod} not found (waited {}s); create the {kind} for an existing pod",
                            self.opts.pod_wait.as_secs()
                        )),
                    );
                    self.write_status::<K>(ns, &name, &s, obj.meta().resource_version.clone())
                        .await;
                } else {
                    let tx = self.recheck_tx.clone();
                    let item = (K::kind(&()).to_string(), ns.to_string(), name);
                    let wait = self.opts.pod_wait - age;
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = tx.send(item);
                    });
                }
                None
            }
            Err(e) => {
                tracing::warn!(namespace = ns, pod, "cannot read the pod: {e}");
                None
            }
        }
    }

    /// Looks at runs again after a wait for their pod.
    async fn rechecks(self: Arc<Self>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Recheck>) {
        while let Some((kind, ns, name)) = rx.recv().await {
            if kind == "VolumeBackup" {
                let api: Api<VolumeBackup> = Api::namespaced(self.client.clone(), &ns);
                if let Ok(Some(vb)) = api.get_opt(&name).await {
                    self.on_backup(vb).await;
                }
            } else {
                let api: Api<VolumeRestore> = Api::namespaced(self.client.clone(), &ns);
                if let Ok(Some(vr)) = api.get_opt(&name).await {
                    self.on_restore(vr).await;
                }
            }
        }
    }

    async fn on_backup(self: &Arc<Self>, vb: VolumeBackup) {
        self.on_run(RunKind::Backup(Box::new(vb))).await
    }

    async fn on_restore(self: &Arc<Self>, vr: VolumeRestore) {
        self.on_run(RunKind::Restore(Box::new(vr))).await
    }

    /// What this agent does with a run it sees ([`status::decide`]).
    async fn on_run(self: &Arc<Self>, run: RunKind) {
        if run.pod_volume().is_none() {
            // The controller's (and it reports what is missing).
            return;
        }
        let (ns, key) = (run.namespace(), run.key());
        let running = lock(&self.runs).contains_key(&key);
        let status = run.status();
        if status.is_some_and(|s| s.phase.is_final()) {
            return;
        }
        let needs_pod = !running && status.is_none_or(|s| s.phase == Phase::New);
        let pod_node = match (&run, needs_pod) {
            (_, false) => None,
            (RunKind::Backup(vb), true) => self.pod_node(&ns, run.pod(), vb.as_ref()).await,
            (RunKind::Restore(vr), true) => self.pod_node(&ns, run.pod(), vr.as_ref()).await,
        };
        let previous = status.cloned().unwrap_or_default();
        match status::decide(
            status,
            run.cancel(),
            pod_node.as_deref(),
            self.me(),
            running,
        ) {
            Decision::Nothing => {}
            Decision::Cancel => self.stop(&key, StopReason::Canceled),
            Decision::GiveUp => {
                let s = status::finished(
                    previous,
                    Outcome::Failed(format!(
                        "the agent on node {} restarted {} times during this run; giving up",
                        self.me(),
                        crate::crd::MAX_ATTEMPTS
                    )),
                );
                self.finish_unstarted(&run, s).await;
            }
            Decision::Start | Decision::Resume if run.cancel() => {
                let s = status::finished(previous, Outcome::Canceled);
                self.finish_unstarted(&run, s).await;
            }
            Decision::Start | Decision::Resume => self.claim_and_spawn(run).await,
        }
    }

    /// Ends a run that never started (or cannot start again).
    async fn finish_unstarted(&self, run: &RunKind, s: RunStatus) {
        match run {
            RunKind::Backup(vb) => self.finish_backup(vb, s, None).await,
            RunKind::Restore(vr) => {
                self.write_status::<VolumeRestore>(&run.namespace(), &vr.name_any(), &s, None)
                    .await;
            }
        }
    }

    /// Writes the claim with the object's resourceVersion (so one agent
    /// wins), then runs the work as a task.
    async fn claim_and_spawn(self: &Arc<Self>, run: RunKind) {
        let (ns, key) = (run.namespace(), run.key());
        let pod = run.pod().to_string();
        let (name, prev, rv) = match &run {
            RunKind::Backup(vb) => (vb.name_any(), vb.status.clone(), vb.resource_version()),
            RunKind::Restore(vr) => (vr.name_any(), vr.status.clone(), vr.resource_version()),
        };
        let claimed = status::started(prev.as_ref(), self.me(), None);
        let ok = match &run {
            RunKind::Backup(_) => {
                self.write_status::<VolumeBackup>(&ns, &name, &claimed, rv)
                    .await
            }
            RunKind::Restore(_) => {
                self.write_status::<VolumeRestore>(&ns, &name, &claimed, rv)
                    .await
            }
        };
        if !ok {
            return;
        }
        let handle = RunHandle {
            cancel: CancelToken::new(),
            reason: Arc::new(Mutex::new(None)),
            pod: (ns.clone(), pod),
        };
        let cancel = handle.cancel.clone();
        let reason = handle.reason.clone();
        {
            let mut runs = lock(&self.runs);
            if runs.contains_key(&key) {
                return;
            }
            runs.insert(key.clone(), handle);
        }
        let agent = self.clone();
        tokio::spawn(async move {
            let permit = agent.permits.clone().acquire_owned().await;
            agent.metrics.in_progress.inc();
            let started = Instant::now();
            match run {
                RunKind::Backup(vb) => {
                    let (outcome, path, bytes, hooks) = agent
                        .backup_with_hooks(&vb, claimed.clone(), &cancel, &reason)
                        .await;
                    let mut s = claimed;
                    s.path = path.or(s.path);
                    s.hooks = hooks;
                    let final_status = status::finished(s, outcome);
                    agent.record(
                        "backup",
                        &vb.namespace().unwrap_or_default(),
                        &final_status,
                        started,
                        bytes,
                    );
                    if final_status.phase == Phase::Completed
                        || final_status.phase == Phase::PartiallyFailed
                    {
                        agent
                            .metrics
                            .last_success
                            .get_or_create(&VolumeLabels {
                                namespace: vb.namespace().unwrap_or_default(),
                                pod: pod_of(&vb).to_string(),
                                volume: volume_of(&vb).to_string(),
                            })
                            .set(Utc::now().timestamp() as f64);
                    }
                    agent.finish_backup(&vb, final_status, None).await;
                }
                RunKind::Restore(vr) => {
                    let (outcome, path, bytes) = agent.restore(&vr, &cancel, &reason).await;
                    let mut s = claimed;
                    s.path = path.or(s.path);
                    let final_status = status::finished(s, outcome);
                    agent.record(
                        "restore",
                        &vr.namespace().unwrap_or_default(),
                        &final_status,
                        started,
                        bytes,
                    );
                    let ns = vr.namespace().unwrap_or_default();
                    agent
                        .write_status::<VolumeRestore>(&ns, &vr.name_any(), &final_status, None)
                        .await;
                    let (etype, reason) = match final_status.phase {
                        Phase::Completed => (EventType::Normal, "RestoreCompleted"),
                        Phase::Canceled => (EventType::Normal, "RestoreCanceled"),
                        _ => (EventType::Warning, "RestoreFailed"),
                    };
                    let note = final_status.message.clone().unwrap_or_else(|| {
                        format!(
                            "snapshot {} restored",
                            final_status.snapshot_id.clone().unwrap_or_default()
                        )
                    });
                    agent
                        .event(&vr.object_ref(&()), etype, reason, "Restore", note)
                        .await;
                }
            }
            agent.metrics.in_progress.dec();
            lock(&agent.runs).remove(&key);
            drop(permit);
        });
    }

    fn record(&self, kind: &str, ns: &str, s: &RunStatus, started: Instant, bytes: u64) {
        self.metrics
            .runs
            .get_or_create(&RunLabels {
                kind: kind.into(),
                namespace: ns.into(),
                phase: s.phase.as_str().into(),
            })
            .inc();
        let l = NamespaceLabels {
            kind: kind.into(),
            namespace: ns.into(),
        };
        self.metrics.bytes.get_or_create(&l).inc_by(bytes);
        if let Some(added) = s.incremental_bytes {
            self.metrics.bytes_added.get_or_create(&l).inc_by(added);
        }
        self.metrics
            .duration
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
    }

    async fn finish_backup(&self, vb: &VolumeBackup, s: RunStatus, rv: Option<String>) {
        let ns = vb.namespace().unwrap_or_default();
        self.write_status::<VolumeBackup>(&ns, &vb.name_any(), &s, rv)
            .await;
        let (etype, reason) = match s.phase {
            Phase::Completed => (EventType::Normal, "BackupCompleted"),
            Phase::PartiallyFailed => (EventType::Warning, "BackupPartiallyFailed"),
            Phase::Canceled => (EventType::Normal, "BackupCanceled"),
            _ => (EventType::Warning, "BackupFailed"),
        };
        let note = match (&s.message, &s.snapshot_id) {
            (Some(m), _) => m.clone(),
            (None, Some(id)) => format!(
                "volume {} of pod {}: snapshot {id}",
                volume_of(vb),
                pod_of(vb)
            ),
            (None, None) => reason.to_string(),
        };
        self.event(&vb.object_ref(&()), etype, reason, "Backup", note.clone())
            .await;
        if let Some(pod) = self.pod_here(&ns, pod_of(vb)) {
            self.event(&pod.object_ref(&()), etype, reason, "Backup", note)
                .await;
        }
    }

    /// Writes a run's status (merge patch on the status subresource); with
    /// `rv`, only if the object is still at that resourceVersion. Returns
    /// whether it was written.
    async fn write_status<K>(&self, ns: &str, name: &str, s: &RunStatus, rv: Option<String>) -> bool
    where
        K: RunObject,
    {
        crate::report::write_run::<K>(&self.client, ns, name, s, rv).await
    }

    async fn event(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        crate::report::publish_event(&self.recorder, reference, type_, reason, action, note).await
    }

    /// Plans one volume of a pod on this node.
    async fn plan(&self, pod: &Pod, volume: &str) -> Result<Planned, String> {
        let ns = pod.namespace().unwrap_or_default();
        let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        let pv_api: Api<PersistentVolume> = Api::all(self.client.clone());
        let mut pvcs = BTreeMap::new();
        let mut pvs = BTreeMap::new();
        let claim = crate::pods::volume_claim(pod, volume).flatten();
        if let Some(claim) = claim {
            match pvc_api.get_opt(&claim).await {
                Ok(Some(pvc)) => {
                    if let Some(pv) = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()) {
                        match pv_api.get_opt(&pv).await {
                            Ok(Some(p)) => {
                                pvs.insert(pv, p);
                            }
                            Ok(None) => {}
                            Err(e) => return Err(format!("reading PersistentVolume {pv}: {e}")),
                        }
                    }
                    pvcs.insert(claim, pvc);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("reading PersistentVolumeClaim {ns}/{claim}: {e}")),
            }
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let root = self.opts.node.kubelet_root.clone();
        let listing = tokio::task::spawn_blocking(move || kubelet::read_listing(&root, &uid))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the kubelet directory: {e}"))?;
        let mut planned = plan::plan_named(pod, volume, &pvcs, &pvs, &listing, &self.opts.node)
            .map_err(|s| s.message)?;
        if let (Some(host_path), Some(root)) = (&planned.host_path, &self.opts.node.host_root) {
            let (resolved, inside) = kubelet::resolve_in_root(root, host_path)
                .map_err(|e| format!("hostPath volume {volume:?}: {e}"))?;
            if !crate::policy::host_path_allowed(&resolved, &self.opts.node.host_path_allow) {
                return Err(format!(
                    "hostPath volume {volume:?} ({}) resolves to {}, outside the allowed prefixes",
                    host_path.display(),
                    resolved.display()
                ));
            }
            planned.path = inside;
        }
        if planned.mode == VolumeMode::Block {
            // The kubelet links the device; read the device itself.
            planned.path = std::fs::canonicalize(&planned.path)
                .map_err(|e| format!("block volume {volume:?}: {}: {e}", planned.path.display()))?;
        }
        Ok(planned)
    }

    /// A backup between the pod's pre- and post-hooks (see
    /// [`crate::hooks`]): a pre-hook that fails with on-error Fail ends the
    /// run before anything is read; the post-hook runs whenever the
    /// pre-hook ran, whatever the read's or the pre-hook's outcome.
    async fn backup_with_hooks(
        self: &Arc<Self>,
        vb: &VolumeBackup,
        claimed: RunStatus,
        cancel: &CancelToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
    ) -> (Outcome, Option<String>, u64, Vec<HookRun>) {
        let ns = vb.namespace().unwrap_or_default();
        let pod_name = pod_of(vb);
        let Some(cached) = self.pod_here(&ns, pod_name) else {
            let (o, p, b) = self.backup(vb, claimed, cancel, reason).await;
            return (o, p, b, Vec::new());
        };
        // The hooks as the pod has them now, not as the watch last saw them.
        let pod = match Api::<Pod>::namespaced(self.client.clone(), &ns)
            .get_opt(pod_name)
            .await
        {
            Ok(Some(p)) if p.metadata.uid == cached.metadata.uid => p,
            _ => cached,
        };
        let hooks = match hooks::parse(pod.annotations(), self.opts.policy.max_hook_timeout) {
            Ok(h) => h,
            Err(e) => {
                let m = format!("pod {ns}/{pod_name}: {e}");
                return (Outcome::Failed(m), None, 0, Vec::new());
            }
        };
        let first = hooks::first_container(&pod);
        let mut runs = Vec::new();
        if let Some(pre) = &hooks.pre {
            let r = self.hook(vb, &ns, pod_name, &first, pre).await;
            runs.push(r.clone());
            if !r.succeeded && pre.on_error == hooks::OnError::Fail {
                let m = format!(
                    "{}; nothing was read (on-error Fail)",
                    r.message.unwrap_or_default()
                );
                // A pre-hook that failed or timed out may still have frozen
                // the application: the post-hook runs all the same.
                if let Some(post) = &hooks.post {
                    runs.push(self.hook(vb, &ns, pod_name, &first, post).await);
                }
                return (Outcome::Failed(m), None, 0, runs);
            }
        }
        let (mut outcome, path, bytes) = match vb.spec.method {
            BackupMethod::Command => self.dump(vb, &pod, cancel, reason).await,
            _ => self.backup(vb, claimed, cancel, reason).await,
        };
        if let Some(post) = &hooks.post {
            let r = self.hook(vb, &ns, pod_name, &first, post).await;
            runs.push(r.clone());
            if let (false, hooks::OnError::Fail, Outcome::Done { snapshot_id, .. }) =
                (r.succeeded, post.on_error, &outcome)
            {
                outcome = Outcome::Failed(format!(
                    "{} (on-error Fail); snapshot {snapshot_id} was written",
                    r.message.unwrap_or_default()
                ));
            }
        }
        (outcome, path, bytes, runs)
    }

    /// Runs one hook; a failure is a Warning Event on the run.
    async fn hook(
        &self,
        vb: &VolumeBackup,
        ns: &str,
        pod: &str,
        first: &str,
        hook: &hooks::Hook,
    ) -> HookRun {
        tracing::info!(namespace = ns, pod, stage = hook.stage, "hook starts");
        let r = hooks::run(&self.client, ns, pod, first, hook).await;
        if let Some(m) = &r.message {
            tracing::warn!(namespace = ns, pod, "{m}");
            self.event(
                &vb.object_ref(&()),
                EventType::Warning,
                "HookFailed",
                "Hook",
                m.clone(),
            )
            .await;
        }
        r
    }

    /// A Command backup: the stdout of the pod's dump becomes a snapshot,
    /// written only if the command exits 0.
    async fn dump(
        self: &Arc<Self>,
        vb: &VolumeBackup,
        pod: &Pod,
        cancel: &CancelToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
    ) -> (Outcome, Option<String>, u64) {
        let ns = vb.namespace().unwrap_or_default();
        let name = pod.name_any();
        let first = hooks::first_container(pod);
        let d = match hooks::parse_dump(
            pod.annotations(),
            &first,
            self.opts.policy.max_dump_duration,
        ) {
            Ok(Some(d)) => d,
            Ok(None) => {
                let m = format!("pod {ns}/{name} has no annotation {}: method Command backs up the output of that command", hooks::COMMAND);
                return (Outcome::Failed(m), None, 0);
            }
            Err(e) => return (Outcome::Failed(format!("pod {ns}/{name}: {e}")), None, 0),
        };
        let path = format!("/{}", d.filename);
        let repo = match self
            .repos
            .open(&self.client, &ns, &vb.spec.repository)
            .await
        {
            Ok(r) => r,
            Err(e) => return (Outcome::Failed(e.to_string()), Some(path), 0),
        };
        let (stdout, process) = match hooks::start_dump(&self.client, &ns, &name, &first, &d).await
        {
            Ok(p) => p,
            Err(m) => return (Outcome::Failed(m), Some(path), 0),
        };
        tracing::info!(namespace = ns, pod = name, command = ?d.command, "dump starts");
        let handle = tokio::runtime::Handle::current();
        let stdout = hooks::Bounded::new(stdout, d.timeout, cancel.clone());
        let reader = tokio_util::io::SyncIoBridge::new_with_handle(stdout, handle.clone());
        let finish: coffer_engine::backup::FinishFn = Box::new(move || {
            handle
                .block_on(process.finish())
                .map_err(|why| format!("the command failed ({why}); no snapshot was written"))
        });
        let mut opts = BackupOptions::new(Vec::<PathBuf>::new());
        opts.origin = Some(KubernetesOrigin {
            cluster: self.opts.node.cluster.clone(),
            namespace: Some(ns.clone()),
            pod: Some(name.clone()),
            node: Some(self.me().to_string()),
            owner: crate::pods::owner_of(pod),
            volume: Some(d.filename.clone()),
            ..Default::default()
        });
        opts.hostname = Some(self.me().to_string());
        opts.program = Some(format!("coffer-agent {}", env!("CARGO_PKG_VERSION")));
        opts.tags = vb.spec.tags.clone();
        opts.cancel = cancel.clone();
        let src = coffer_engine::backup::StreamSource {
            name: d.filename.clone(),
            reader: Box::new(reader),
            finish,
        };
        match coffer_engine::backup::backup_stream(repo, src, opts).await {
            Ok(summary) => {
                tracing::info!(snapshot = %summary.snapshot_id.to_hex(), "dump done");
                let progress = Progress {
                    bytes_done: summary.bytes_read,
                    total_bytes: Some(summary.bytes_read),
                    files_done: 1,
                    total_files: Some(1),
                };
                (
                    Outcome::Done {
                        snapshot_id: summary.snapshot_id.to_hex(),
                        incremental_bytes: Some(summary.snapshot.summary.data_added_packed),
                        progress,
                        errors: Vec::new(),
                    },
                    Some(path),
                    summary.bytes_read,
                )
            }
            Err(coffer_engine::Error::Cancelled) => (stopped(reason), Some(path), 0),
            Err(_) if cancel.is_cancelled() => (stopped(reason), Some(path), 0),
            Err(e) => (Outcome::Failed(e.to_string()), Some(path), 0),
        }
    }

    async fn backup(
        self: &Arc<Self>,
        vb: &VolumeBackup,
        claimed: RunStatus,
        cancel: &CancelToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
    ) -> (Outcome, Option<String>, u64) {
        let ns = vb.namespace().unwrap_or_default();
        let name = vb.name_any();
        let span = tracing::info_span!(
            "backup",
            namespace = ns,
            pod = pod_of(vb),
            volume = volume_of(vb),
            run = name
        );
        let _enter = span.enter();
        let Some(pod) = self.pod_here(&ns, pod_of(vb)) else {
            return (
                Outcome::Failed(format!(
                    "pod {ns}/{} is not on node {} (deleted or moved)",
                    pod_of(vb),
                    self.me()
                )),
                None,
                0,
            );
        };
        let planned = match self.plan(&pod, volume_of(vb)).await {
            Ok(p) => p,
            Err(m) => return (Outcome::Failed(m), None, 0),
        };
        let path = planned.record_path.display().to_string();
        let mut s = claimed.clone();
        s.path = Some(path.clone());
        self.write_status::<VolumeBackup>(&ns, &name, &s, None)
            .await;
        let repo = match self
            .repos
            .open(&self.client, &ns, &vb.spec.repository)
            .await
        {
            Ok(r) => r,
            Err(e) => return (Outcome::Failed(e.to_string()), Some(path), 0),
        };
        self.event(
            &vb.object_ref(&()),
            EventType::Normal,
            "BackupStarted",
            "Backup",
            format!(
                "backing up volume {} of pod {} ({})",
                volume_of(vb),
                pod_of(vb),
                planned.path.display()
            ),
        )
        .await;
        tracing::info!(path = %planned.path.display(), record = %planned.record_path.display(), "backup starts");
        let (tx, mut rx) = tokio::sync::watch::channel(BackupProgress::default());
        let mut opts = BackupOptions::new([planned.path.clone()]);
        // A tenant's volume: its pod may swap files while they are read.
        opts.untrusted_source = true;
        opts.record_path = Some(planned.record_path.clone());
        opts.origin = Some(planned.origin.clone());
        opts.parent = ParentChoice::Origin(planned.parent_filter());
        opts.hostname = Some(self.me().to_string());
        opts.program = Some(format!("coffer-agent {}", env!("CARGO_PKG_VERSION")));
        opts.tags = vb.spec.tags.clone();
        opts.threads = self.opts.threads_per_run;
        opts.read_limit = self.opts.read_limit;
        opts.cancel = cancel.clone();
        opts.selection.exclude = vb.spec.excludes.clone();
        opts.progress = Some(Arc::new(move |p: &BackupProgress| {
            let _ = tx.send(p.clone());
        }));
        // Progress into status, at most every STATUS_INTERVAL. Only while
        // the run is not over, at the version read: a progress write still in
        // flight when the run ends must never land on the final status (it
        // would put the phase back to InProgress).
        let client = self.client.clone();
        let (ns2, name2) = (ns.clone(), name.clone());
        let reporter = tokio::spawn(async move {
            let mut last = Instant::now() - STATUS_INTERVAL;
            while rx.changed().await.is_ok() {
                let wait = STATUS_INTERVAL.saturating_sub(last.elapsed());
                tokio::time::sleep(wait).await;
                let p = status::progress_of(&rx.borrow_and_update().clone());
                crate::report::update_run::<VolumeBackup>(&client, &ns2, &name2, |st| {
                    st.progress = Some(p.clone())
                })
                .await;
                last = Instant::now();
            }
        });
        let result = coffer_engine::backup::backup(repo, opts).await;
        reporter.abort();
        let _ = reporter.await;
        match result {
            Ok(summary) => {
                let progress = Progress {
                    bytes_done: summary.bytes_read,
                    total_bytes: Some(summary.snapshot.summary.total_bytes_processed),
                    files_done: summary.snapshot.summary.total_files_processed,
                    total_files: Some(summary.snapshot.summary.total_files_processed),
                };
                let errors = summary
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}", e.path.display(), e.message))
                    .collect();
                tracing::info!(snapshot = %summary.snapshot_id.to_hex(), "backup done");
                (
                    Outcome::Done {
                        snapshot_id: summary.snapshot_id.to_hex(),
                        incremental_bytes: Some(summary.snapshot.summary.data_added_packed),
                        progress,
                        errors,
                    },
                    Some(path),
                    summary.bytes_read,
                )
            }
            Err(coffer_engine::Error::Cancelled) => (stopped(reason), Some(path), 0),
            Err(e) => (Outcome::Failed(e.to_string()), Some(path), 0),
        }
    }

    async fn restore(
        self: &Arc<Self>,
        vr: &VolumeRestore,
        cancel: &CancelToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
    ) -> (Outcome, Option<String>, u64) {
        let ns = vr.namespace().unwrap_or_default();
        let (pod_name, volume) = vr.spec.pod_volume().unwrap_or_default();
        let span = tracing::info_span!(
            "restore",
            namespace = ns,
            pod = pod_name,
            volume = volume,
            run = vr.name_any()
        );
        let _enter = span.enter();
        let Some(pod) = self.pod_here(&ns, pod_name) else {
            return (
                Outcome::Failed(format!(
                    "pod {ns}/{pod_name} is not on node {} (deleted or moved)",
                    self.me()
                )),
                None,
                0,
            );
        };
        let planned = match self.plan(&pod, volume).await {
            Ok(p) => p,
            Err(m) => return (Outcome::Failed(m), None, 0),
        };
        let path = planned.record_path.display().to_string();
        let repo = match self
            .repos
            .open(&self.client, &ns, &vr.spec.repository)
            .await
        {
            Ok(r) => r,
            Err(e) => return (Outcome::Failed(e.to_string()), Some(path), 0),
        };
        let snapshot = match crate::snapshot_source::find_snapshot(
            &repo,
            &vr.spec.snapshot,
            &ns,
            &vr.spec.repository,
        )
        .await
        {
            Ok((id, _)) => id,
            Err(m) => return (Outcome::Failed(m), Some(path), 0),
        };
        let what = format!("volume {volume:?} of pod {pod_name}");
        let target = crate::restore_target::Target {
            path: &planned.path,
            block: planned.mode == VolumeMode::Block,
            policy: vr.spec.policy,
            what: &what,
            special_files: vr.spec.special_files,
        };
        let subpath = vr.spec.subpath.as_deref();
        let (progress, reporter) = crate::report::restore_progress(
            self.client.clone(),
            ns.clone(),
            vr.name_any(),
            STATUS_INTERVAL,
        );
        let result = crate::restore_target::restore_into(
            repo,
            &snapshot,
            subpath,
            &target,
            cancel,
            Some(progress),
        )
        .await;
        reporter.abort();
        let _ = reporter.await;
        match result {
            Ok(outcome) => {
                let bytes = match &outcome {
                    Outcome::Done { progress, .. } => progress.bytes_done,
                    _ => 0,
                };
                (outcome, Some(path), bytes)
            }
            Err(coffer_engine::Error::Cancelled) => (stopped(reason), Some(path), 0),
            Err(e) => (Outcome::Failed(e.to_string()), Some(path), 0),
        }
    }
}

enum RunKind {
    Backup(Box<VolumeBackup>),
    Restore(Box<VolumeRestore>),
}

impl RunKind {
    /// The pod and volume this node agent would read or write; `None` for
    /// the controller's runs (method Snapshot, restores into a new PVC) and
    /// for runs that name no pod.
    fn pod_volume(&self) -> Option<(&str, &str)> {
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
    fn pod(&self) -> &str {
        self.pod_volume().unwrap_or_default().0
    }

    fn namespace(&self) -> String {
        match self {
            RunKind::Backup(vb) => vb.namespace(),
            RunKind::Restore(vr) => vr.namespace(),
        }
        .unwrap_or_default()
    }

    fn key(&self) -> RunKey {
        match self {
            RunKind::Backup(vb) => RunKey::Backup(self.namespace(), vb.name_any()),
            RunKind::Restore(vr) => RunKey::Restore(self.namespace(), vr.name_any()),
        }
    }

    fn status(&self) -> Option<&RunStatus> {
        match self {
            RunKind::Backup(vb) => vb.status.as_ref(),
            RunKind::Restore(vr) => vr.status.as_ref(),
        }
    }

    fn cancel(&self) -> bool {
        match self {
            RunKind::Backup(vb) => vb.spec.cancel,
            RunKind::Restore(vr) => vr.spec.cancel,
        }
    }
}

/// The pod of a Filesystem or Command backup ([`Agent::on_run`] takes only
/// those that name one).
fn pod_of(vb: &VolumeBackup) -> &str {
    vb.spec.pod.as_deref().unwrap_or_default()
}

/// The volume of a Filesystem backup ([`annotations::DUMP_VOLUME`] for a
/// dump).
fn volume_of(vb: &VolumeBackup) -> &str {
    match vb.spec.method {
        BackupMethod::Command => annotations::DUMP_VOLUME,
        _ => vb.spec.volume.as_deref().unwrap_or_default(),
    }
}

fn stopped(reason: &Arc<Mutex<Option<StopReason>>>) -> Outcome {
    match lock(reason).clone() {
        Some(StopReason::PodGone(m)) => Outcome::Failed(m),
        _ => Outcome::Canceled,
    }
}
