//! The runs of this node: VolumeBackups and VolumeRestores watched,
//! decided on, claimed, run as tasks, and reported when they end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use coffer_engine::CancelToken;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};

use crate::crd::{BackupMethod, Phase, RunStatus, VolumeBackup, VolumeRestore};
use crate::lenient::Lenient;
use crate::metrics::VolumeLabels;
use crate::node::annotations;
use crate::node::backup::{pod_of, volume_of};
use crate::node::context::{lock, Agent, NodeRun, RunHandle, RunKey, StopReason};
use crate::node::decide::{decide, Decision};
use crate::status::{self, Outcome};

impl Agent /* watch_backups */ {
    pub(crate) async fn watch_backups(self: Arc<Self>) {
        self.watch_runs(|vb: VolumeBackup| RunKind::Backup(Box::new(vb)))
            .await
    }
}

impl Agent /* watch_restores */ {
    pub(crate) async fn watch_restores(self: Arc<Self>) {
        self.watch_runs(|vr: VolumeRestore| RunKind::Restore(Box::new(vr)))
            .await
    }
}

impl Agent /* watch_runs */ {
    /// Watches one kind of run in every namespace: a new or changed run is
    /// decided on ([`Agent::on_run`]), a deleted one is stopped.
    pub(crate) async fn watch_runs<K>(self: Arc<Self>, wrap: impl Fn(K) -> RunKind)
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
}

impl Agent /* stop */ {
    pub(crate) fn stop(&self, key: &RunKey, reason: StopReason) {
        if let Some(h) = lock(&self.runs).get(key) {
            *lock(&h.reason) = Some(reason);
            h.cancel.cancel();
        }
    }
}

impl Agent /* start_waiting_runs */ {
    /// Runs that waited for this pod: started now that it is on this node.
    pub(crate) async fn start_waiting_runs(self: &Arc<Self>, ns: &str, pod: &str) {
        let waiting = lock(&self.waiting).remove(&(ns.to_string(), pod.to_string()));
        for run in waiting.unwrap_or_default() {
            let _ = self.recheck_tx.send(run);
        }
    }
}

impl Agent /* pod_node */ {
    /// The node of a run's pod (this node when the pod is here). A pod that
    /// does not exist gets `--pod-wait` from the run's creation to appear;
    /// then the run fails (whichever agent writes first; the others see a
    /// conflict). Until then the run is looked at again when the wait ends.
    pub(crate) async fn pod_node<K>(
        self: &Arc<Self>,
        ns: &str,
        pod: &str,
        obj: &K,
    ) -> Option<String>
    where
        K: NodeRun,
    {
        if self.pod_here(ns, pod).is_some() {
            return Some(self.me().to_string());
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let remember = || {
            // Looked at again when the pod shows up on this node.
            let mut w = lock(&self.waiting);
            let runs = w.entry((ns.to_string(), pod.to_string())).or_default();
            let run = K::key(ns.to_string(), obj.meta().name.clone().unwrap_or_default());
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
                    let item = K::key(ns.to_string(), name);
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
}

impl Agent /* rechecks */ {
    /// Looks at runs again after a wait for their pod.
    pub(crate) async fn rechecks(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<RunKey>,
    ) {
        while let Some(run) = rx.recv().await {
            match run {
                RunKey::Backup(ns, name) => {
                    let api: Api<VolumeBackup> = Api::namespaced(self.client.clone(), &ns);
                    if let Ok(Some(vb)) = api.get_opt(&name).await {
                        self.on_backup(vb).await;
                    }
                }
                RunKey::Restore(ns, name) => {
                    let api: Api<VolumeRestore> = Api::namespaced(self.client.clone(), &ns);
                    if let Ok(Some(vr)) = api.get_opt(&name).await {
                        self.on_restore(vr).await;
                    }
                }
            }
        }
    }
}

impl Agent /* on_backup */ {
    pub(crate) async fn on_backup(self: &Arc<Self>, vb: VolumeBackup) {
        self.on_run(RunKind::Backup(Box::new(vb))).await
    }
}

impl Agent /* on_restore */ {
    pub(crate) async fn on_restore(self: &Arc<Self>, vr: VolumeRestore) {
        self.on_run(RunKind::Restore(Box::new(vr))).await
    }
}

impl Agent /* on_run */ {
    /// What this agent does with a run it sees ([`status::decide`]).
    pub(crate) async fn on_run(self: &Arc<Self>, run: RunKind) {
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
        match decide(
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
}

impl Agent /* finish_unstarted */ {
    /// Ends a run that never started (or cannot start again).
    pub(crate) async fn finish_unstarted(&self, run: &RunKind, s: RunStatus) {
        match run {
            RunKind::Backup(vb) => self.finish_backup(vb, s, None).await,
            RunKind::Restore(vr) => {
                self.write_status::<VolumeRestore>(&run.namespace(), &vr.name_any(), &s, None)
                    .await;
            }
        }
    }
}

impl Agent /* claim_and_spawn */ {
    /// Writes the claim with the object's resourceVersion (so one agent
    /// wins), then runs the work as a task.
    pub(crate) async fn claim_and_spawn(self: &Arc<Self>, run: RunKind) {
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
                    agent.reporter.run_ended(
                        "backup",
                        &vb.namespace().unwrap_or_default(),
                        &final_status,
                        Some(bytes),
                        Some(started.elapsed()),
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
                    agent.reporter.run_ended(
                        "restore",
                        &vr.namespace().unwrap_or_default(),
                        &final_status,
                        Some(bytes),
                        Some(started.elapsed()),
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
                        .reporter
                        .event_on_ref(&vr.object_ref(&()), etype, reason, "Restore", note)
                        .await;
                }
            }
            agent.metrics.in_progress.dec();
            lock(&agent.runs).remove(&key);
            drop(permit);
        });
    }
}

impl Agent /* finish_backup */ {
    pub(crate) async fn finish_backup(&self, vb: &VolumeBackup, s: RunStatus, rv: Option<String>) {
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
        self.reporter
            .event_on_ref(&vb.object_ref(&()), etype, reason, "Backup", note.clone())
            .await;
        if let Some(pod) = self.pod_here(&ns, pod_of(vb)) {
            self.reporter
                .event_on_ref(&pod.object_ref(&()), etype, reason, "Backup", note)
                .await;
        }
    }
}

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
