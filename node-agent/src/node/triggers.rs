//! Pod annotations become VolumeBackups: `backup-now` at once, `schedule`
//! on time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::api::is_status;
use crate::crd::{BackupMethod, VolumeBackup, VolumeBackupSpec};
use crate::names::{label_value, object_name, POD_LABEL, TRIGGER_LABEL, VOLUME_LABEL};
use crate::node::annotations;
use crate::node::context::{lock, Agent, Scheduled};
use crate::scheduling::Schedule;

impl Agent /* annotations */ {
    pub(crate) async fn annotations(self: &Arc<Self>, pod: &Pod) {
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
                self.reporter
                    .event_on_ref(
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
}

impl Agent /* create_backups */ {
    /// Creates one VolumeBackup per selected volume that can be backed up
    /// now; the names are deterministic, so a second call creates nothing.
    pub(crate) async fn create_backups(
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
}

impl Agent /* scheduler */ {
    pub(crate) async fn scheduler(self: Arc<Self>) {
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
}
