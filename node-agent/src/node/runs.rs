//! The runs of this node: VolumeBackups and VolumeRestores watched,
//! decided on, claimed, run as tasks, and reported when they end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use coffer_engine::CancelToken;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::crd::{Phase, RunStatus, VolumeBackup, VolumeRestore};
use crate::metrics::VolumeLabels;
use crate::node::backup::{pod_of, volume_of};
use crate::node::context::{lock, Agent, NodeRun, RunHandle, RunKey, RunKind, StopReason};
use crate::node::decide::{decide, Decision};
use crate::report::{end_event, write_run};
use crate::status::{self, Outcome};

impl Agent /* stop */ {
    pub(crate) fn stop(&self, key: &RunKey, reason: StopReason) {
        if let Some(h) = lock(&self.runs).get(key) {
            *lock(&h.reason) = Some(reason);
            h.cancel.cancel();
        }
    }
}

impl Agent /* pod_node */ {
    /// The node of a run's pod (this node when the pod is here), or when
    /// to look at the run again. A pod that is not scheduled yet wakes the
    /// run when it comes to this node (the run controller watches the
    /// node's pods). A pod that does not exist gets `--pod-wait` from the
    /// run's creation to appear; then the run fails (whichever agent writes
    /// first; the others see a conflict).
    pub(crate) async fn pod_node<K>(
        self: &Arc<Self>,
        ns: &str,
        pod: &str,
        obj: &K,
    ) -> Result<String, Action>
    where
        K: NodeRun,
    {
        if self.pod_here(ns, pod).is_some() {
            return Ok(self.me().to_string());
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match pods.get_opt(pod).await {
            Ok(Some(p)) => p
                .spec
                .and_then(|s| s.node_name)
                .ok_or_else(Action::await_change),
            Ok(None) => {
                let age = crate::time::age(obj, Utc::now());
                let name = obj.meta().name.clone().unwrap_or_default();
                if age < self.opts.pod_wait {
                    return Err(Action::requeue(self.opts.pod_wait - age));
                }
                let kind = K::kind(&());
                let mut s = status::finished(
                    RunStatus::default(),
                    Outcome::Failed(format!(
                        "pod {ns}/{pod} not found (waited {}s); create the {kind} for an existing pod",
                        self.opts.pod_wait.as_secs()
                    )),
                );
                s.observe(obj.meta().generation);
                write_run::<K>(
                    &self.client,
                    ns,
                    &name,
                    &s,
                    obj.meta().resource_version.clone(),
                )
                .await;
                Err(Action::await_change())
            }
            Err(e) => {
                tracing::warn!(
                    namespace = ns,
                    pod,
                    "cannot read the pod: {e}; trying again"
                );
                Err(Action::requeue(Duration::from_secs(5)))
            }
        }
    }
}

impl Agent /* on_run */ {
    /// What this agent does with a run it sees ([`decide`]), and when to
    /// look at it again.
    pub(crate) async fn on_run(self: &Arc<Self>, run: RunKind) -> Action {
        if run.pod_volume().is_none() {
            // The controller's (and it reports what is missing).
            return Action::await_change();
        }
        let (ns, key) = (run.namespace(), run.key());
        let running = lock(&self.runs).contains_key(&key);
        let status = run.status();
        if status.is_some_and(|s| s.phase.is_final()) {
            return Action::await_change();
        }
        let needs_pod = !running && status.is_none_or(|s| s.phase == Phase::New);
        let found = match (&run, needs_pod) {
            (_, false) => Err(Action::await_change()),
            (RunKind::Backup(vb), true) => self.pod_node(&ns, run.pod(), vb.as_ref()).await,
            (RunKind::Restore(vr), true) => self.pod_node(&ns, run.pod(), vr.as_ref()).await,
        };
        let (pod_node, then) = match found {
            Ok(node) => (Some(node), Action::await_change()),
            Err(then) => (None, then),
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
        then
    }
}

impl Agent /* finish_unstarted */ {
    /// Ends a run that never started (or cannot start again).
    pub(crate) async fn finish_unstarted(&self, run: &RunKind, mut s: RunStatus) {
        s.observe(run.generation());
        match run {
            RunKind::Backup(vb) => self.finish_backup(vb, s, None).await,
            RunKind::Restore(vr) => {
                write_run::<VolumeRestore>(
                    &self.client,
                    &run.namespace(),
                    &vr.name_any(),
                    &s,
                    None,
                )
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
        let mut claimed = status::started(prev.as_ref(), self.me(), None);
        claimed.observe(run.generation());
        let ok = match &run {
            RunKind::Backup(_) => {
                write_run::<VolumeBackup>(&self.client, &ns, &name, &claimed, rv).await
            }
            RunKind::Restore(_) => {
                write_run::<VolumeRestore>(&self.client, &ns, &name, &claimed, rv).await
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
                    let ended = agent
                        .backup_with_hooks(&vb, claimed.clone(), &cancel, &reason)
                        .await;
                    let bytes = ended.bytes;
                    let final_status = ended.status(claimed);
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
                    let ended = agent.restore(&vr, &cancel, &reason).await;
                    let bytes = ended.bytes;
                    let final_status = ended.status(claimed);
                    agent.reporter.run_ended(
                        "restore",
                        &vr.namespace().unwrap_or_default(),
                        &final_status,
                        Some(bytes),
                        Some(started.elapsed()),
                    );
                    let ns = vr.namespace().unwrap_or_default();
                    write_run::<VolumeRestore>(
                        &agent.client,
                        &ns,
                        &vr.name_any(),
                        &final_status,
                        None,
                    )
                    .await;
                    let (etype, reason) = end_event::<VolumeRestore>(final_status.phase);
                    let note = final_status.message.clone().unwrap_or_else(|| {
                        format!(
                            "snapshot {} restored",
                            final_status.snapshot_id.clone().unwrap_or_default()
                        )
                    });
                    agent
                        .reporter
                        .run_event(vr.as_ref(), etype, &reason, note)
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
        write_run::<VolumeBackup>(&self.client, &ns, &vb.name_any(), &s, rv).await;
        let (etype, reason) = end_event::<VolumeBackup>(s.phase);
        let note = match (&s.message, &s.snapshot_id) {
            (Some(m), _) => m.clone(),
            (None, Some(id)) => format!(
                "volume {} of pod {}: snapshot {id}",
                volume_of(vb),
                pod_of(vb)
            ),
            (None, None) => reason.clone(),
        };
        self.reporter
            .run_event(vb, etype, &reason, note.clone())
            .await;
        if let Some(pod) = self.pod_here(&ns, pod_of(vb)) {
            self.reporter
                .event_on_ref(&pod.object_ref(&()), etype, &reason, "Backup", note)
                .await;
        }
    }
}
