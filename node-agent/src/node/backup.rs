//! A backup of one pod volume: the volume located, the hooks and dumps
//! around it, and the engine's backup with its progress.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use coffer_engine::backup::BackupOptions;
use coffer_engine::format::snapshot::KubernetesOrigin;
use coffer_engine::CancelToken;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::crd::{BackupMethod, HookRun, Progress, RunStatus, VolumeBackup};
use crate::hooks;
use crate::names::{
    annotation_owner, annotation_schedule_tag, ANNOTATION_SCHEDULE_TAG, TRIGGER_LABEL,
};
use crate::node::annotations;
use crate::node::context::{stopped, Agent, Ended, StopReason};
use crate::node::kubelet;
use crate::node::plan::{self, Planned, VolumeMode};
use crate::report::write_run;
use crate::repos::forget_per_origin;
use crate::status::Outcome;
use crate::volume_backup;

impl Agent /* plan */ {
    /// Plans one volume of a pod on this node.
    pub(crate) async fn plan(&self, pod: &Pod, volume: &str) -> Result<Planned, String> {
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
}

impl Agent /* backup_with_hooks */ {
    /// A backup between the pod's pre- and post-hooks (see
    /// [`crate::hooks`]): a pre-hook that fails with on-error Fail ends the
    /// run before anything is read; the post-hook runs whenever the
    /// pre-hook ran, whatever the read's or the pre-hook's outcome.
    pub(crate) async fn backup_with_hooks(
        self: &Arc<Self>,
        vb: &VolumeBackup,
        claimed: RunStatus,
        cancel: &CancelToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
    ) -> Ended {
        let ns = vb.namespace().unwrap_or_default();
        let pod_name = pod_of(vb);
        let Some(cached) = self.pod_here(&ns, pod_name) else {
            return self.backup(vb, claimed, cancel, reason).await;
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
                return Ended::new(Outcome::Failed(m), None, 0);
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
                return Ended {
                    hooks: runs,
                    ..Ended::new(Outcome::Failed(m), None, 0)
                };
            }
        }
        let mut ended = match vb.spec.method {
            BackupMethod::Command => self.dump(vb, &pod, cancel, reason).await,
            _ => self.backup(vb, claimed, cancel, reason).await,
        };
        if let Some(post) = &hooks.post {
            let r = self.hook(vb, &ns, pod_name, &first, post).await;
            runs.push(r.clone());
            if let (false, hooks::OnError::Fail, Outcome::Done { snapshot_id, .. }) =
                (r.succeeded, post.on_error, &ended.outcome)
            {
                ended.outcome = Outcome::Failed(format!(
                    "{} (on-error Fail); snapshot {snapshot_id} was written",
                    r.message.unwrap_or_default()
                ));
            }
        }
        ended.hooks = runs;
        if let Outcome::Done { snapshot_id, .. } = &ended.outcome {
            if scheduled_by_annotation(vb) {
                self.retain(vb, &pod, snapshot_id, cancel).await;
            }
        }
        ended
    }
}

/// Whether a pod's `backup.coffer.dev/schedule` made this run.
fn scheduled_by_annotation(vb: &VolumeBackup) -> bool {
    vb.labels().get(TRIGGER_LABEL).map(String::as_str) == Some("schedule")
        && vb.spec.tags.iter().any(|t| {
            t.strip_prefix(ANNOTATION_SCHEDULE_TAG)
                .is_some_and(|rest| rest.starts_with('='))
        })
}

impl Agent /* retain */ {
    /// The pod's schedule's retention (`backup.coffer.dev/keep-…`), applied
    /// after each scheduled backup to that volume's scheduled snapshots in
    /// this cluster made by this workload's schedule (tagged
    /// [`annotation_schedule_tag`]). What it did is an
    /// Event on the run; it never fails the run, whose snapshot is written.
    pub(crate) async fn retain(
        &self,
        vb: &VolumeBackup,
        pod: &Pod,
        snapshot: &str,
        cancel: &CancelToken,
    ) {
        use coffer_engine::forget::Filter;
        let policy = match annotations::retention(pod.annotations()) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                self.retention_event(vb, EventType::Warning, "RetentionFailed", e.to_string())
                    .await;
                return;
            }
        };
        let ns = vb.namespace().unwrap_or_default();
        let result = async {
            let repo = self
                .repos
                .open(&self.client, &ns, &vb.spec.repository)
                .await
                .map_err(|e| e.to_string())?;
            let id: coffer_engine::format::id::SnapshotId = snapshot
                .parse()
                .map_err(|e| format!("snapshot {snapshot}: {e}"))?;
            let origin = repo
                .read_snapshot(&id)
                .await
                .map_err(|e| e.to_string())?
                .origin
                .ok_or_else(|| format!("snapshot {snapshot} records no origin"))?;
            let filter = Filter {
                tags: vec![annotation_schedule_tag(&annotation_owner(pod))],
                origin: plan::same_volume(&origin),
                ..Default::default()
            };
            let cluster = self.opts.node.cluster.as_ref();
            let (plan, removed) =
                forget_per_origin(&repo, cluster, &filter, &policy, cancel).await?;
            let kept: usize = plan.groups.iter().map(|g| g.keep.len()).sum();
            Ok::<_, String>((kept, removed))
        }
        .await;
        match result {
            Ok((kept, removed)) => {
                let m = format!(
                    "retention ({}…): kept {kept} scheduled snapshots of this volume, forgot {removed} (a prune frees their data)",
                    annotations::KEEP_PREFIX
                );
                tracing::info!(namespace = ns, run = vb.name_any(), "{m}");
                self.retention_event(vb, EventType::Normal, "RetentionApplied", m)
                    .await;
            }
            Err(e) => {
                let m = format!(
                    "retention ({}…): {e}; snapshot {snapshot} was written",
                    annotations::KEEP_PREFIX
                );
                tracing::warn!(namespace = ns, run = vb.name_any(), "{m}");
                self.retention_event(vb, EventType::Warning, "RetentionFailed", m)
                    .await;
            }
        }
    }

    async fn retention_event(&self, vb: &VolumeBackup, kind: EventType, reason: &str, m: String) {
        self.reporter
            .event_on_ref(&vb.object_ref(&()), kind, reason, "Retention", m)
            .await;
    }
}

impl Agent /* hook */ {
    /// Runs one hook; a failure is a Warning Event on the run.
    pub(crate) async fn hook(
        &self,
        vb: &VolumeBackup,
        ns: &str,
        pod: &str,
        first: &str,
        hook: &hooks::Hook,
    ) -> HookRun {
        tracing::info!(
            namespace = ns,
            pod,
            stage = hook.stage.as_str(),
            "hook starts"
        );
        let r = hooks::run(&self.client, ns, pod, first, hook).await;
        if let Some(m) = &r.message {
            tracing::warn!(namespace = ns, pod, "{m}");
            self.reporter
                .event_on_ref(
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
}

impl Agent /* dump */ {
    /// A Command backup: the stdout of the pod's dump becomes a snapshot,
    /// written only if the command exits 0.
    pub(crate) async fn dump(
        self: &Arc<Self>,
        vb: &VolumeBackup,
        pod: &Pod,
        cancel: &CancelToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
    ) -> Ended {
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
                return Ended::new(Outcome::Failed(m), None, 0);
            }
            Err(e) => return Ended::new(Outcome::Failed(format!("pod {ns}/{name}: {e}")), None, 0),
        };
        let path = format!("/{}", d.filename);
        let repo = match self
            .repos
            .open(&self.client, &ns, &vb.spec.repository)
            .await
        {
            Ok(r) => r,
            Err(e) => return Ended::new(Outcome::Failed(e.to_string()), Some(path), 0),
        };
        let (stdout, process) = match hooks::start_dump(&self.client, &ns, &name, &first, &d).await
        {
            Ok(p) => p,
            Err(m) => return Ended::new(Outcome::Failed(m), Some(path), 0),
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
                Ended::new(
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
            Err(coffer_engine::Error::Cancelled) => Ended::new(stopped(reason), Some(path), 0),
            Err(_) if cancel.is_cancelled() => Ended::new(stopped(reason), Some(path), 0),
            Err(e) => Ended::new(Outcome::Failed(e.to_string()), Some(path), 0),
        }
    }
}

impl Agent /* backup */ {
    pub(crate) async fn backup(
        self: &Arc<Self>,
        vb: &VolumeBackup,
        claimed: RunStatus,
        cancel: &CancelToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
    ) -> Ended {
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
            return Ended::new(
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
            Err(m) => return Ended::new(Outcome::Failed(m), None, 0),
        };
        let path = planned.record_path.display().to_string();
        let mut s = claimed.clone();
        s.path = Some(path.clone());
        write_run::<VolumeBackup>(&self.client, &ns, &name, &s, None).await;
        let repo = match self
            .repos
            .open(&self.client, &ns, &vb.spec.repository)
            .await
        {
            Ok(r) => r,
            Err(e) => return Ended::new(Outcome::Failed(e.to_string()), Some(path), 0),
        };
        self.reporter
            .event_on_ref(
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
        let source = volume_backup::Source {
            path: planned.path.clone(),
            record_path: planned.record_path.clone(),
            origin: planned.origin.clone(),
            parent: planned.parent_filter(),
            hostname: self.me().to_string(),
            program: format!("coffer-agent {}", env!("CARGO_PKG_VERSION")),
            tags: vb.spec.tags.clone(),
            excludes: vb.spec.excludes.clone(),
            threads: self.opts.threads_per_run,
            read_window: self.opts.read_window,
            read_limit: self.opts.read_limit,
            timing: Default::default(),
            // In place: the volume's own files, every rule counts.
            changes: Default::default(),
        };
        match volume_backup::run(&self.client, &ns, &name, repo, &source, cancel).await {
            Ok((outcome, bytes)) => Ended::new(outcome, Some(path), bytes),
            Err(coffer_engine::Error::Cancelled) => Ended::new(stopped(reason), Some(path), 0),
            Err(e) => Ended::new(Outcome::Failed(e.to_string()), Some(path), 0),
        }
    }
}

/// The pod of a Filesystem or Command backup ([`Agent::on_run`] takes only
/// those that name one).
pub(crate) fn pod_of(vb: &VolumeBackup) -> &str {
    vb.spec.pod.as_deref().unwrap_or_default()
}

/// The volume of a Filesystem backup ([`annotations::DUMP_VOLUME`] for a
/// dump).
pub(crate) fn volume_of(vb: &VolumeBackup) -> &str {
    match vb.spec.method {
        BackupMethod::Command => annotations::DUMP_VOLUME,
        _ => vb.spec.volume.as_deref().unwrap_or_default(),
    }
}
