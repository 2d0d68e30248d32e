//! Pod annotations become VolumeBackups: `backup-now` at once, `schedule`
//! on time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::api::is_status;
use crate::crd::{BackupMethod, VolumeBackup, VolumeBackupSpec};
use crate::names::{
    label_value, object_name, POD_LABEL, SCHEDULED_AT, TRIGGER_LABEL, VOLUME_LABEL,
};
use crate::node::annotations;
use crate::node::context::{lock, Agent, Scheduled};
use crate::scheduling::{latest_due, Schedule};

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
        // Schedules: one entry per volume; a changed text starts over. A new
        // entry starts from the last time that fired for that volume, read
        // from its VolumeBackups, so that a time missed while no agent ran
        // fires once (from the pod's creation when none fired yet).
        let mut new = Vec::new();
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
                            new.push((key, s, text.clone()));
                        }
                    }
                }
            }
        }
        let created = crate::time::created_at(pod, Utc::now());
        for (key, schedule, text) in new {
            let last = match self.last_fired(&ns, &name, &key.3).await {
                Ok(last) => last,
                Err(e) => {
                    // Looked at again on the pod's next change.
                    tracing::warn!(
                        namespace = ns,
                        pod = name,
                        volume = key.3,
                        "cannot list the volume's scheduled VolumeBackups: {e}"
                    );
                    continue;
                }
            };
            let Some(next) = schedule.next_after(last.unwrap_or(created)) else {
                continue;
            };
            tracing::info!(namespace = ns, pod = name, volume = key.3, next = %next, "scheduled");
            lock(&self.schedules).insert(
                key,
                Scheduled {
                    schedule,
                    text,
                    next,
                },
            );
        }
        self.schedules_changed.notify_one();
        if let Some(now_value) = &req.backup_now {
            let suffix = crate::names::short_hash(&format!("{uid}/{now_value}"));
            self.create_backups(pod, &req, "backup-now", &suffix, None)
                .await;
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
        scheduled_at: Option<DateTime<Utc>>,
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
                    annotations: scheduled_at.map(|at| {
                        BTreeMap::from([(
                            SCHEDULED_AT.to_string(),
                            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        )])
                    }),
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

impl Agent /* last_fired */ {
    /// The last time a schedule fired for volume `volume` of pod `pod`: from
    /// its scheduled VolumeBackups.
    pub(crate) async fn last_fired(
        &self,
        ns: &str,
        pod: &str,
        volume: &str,
    ) -> Result<Option<DateTime<Utc>>, kube::Error> {
        let api: Api<VolumeBackup> = Api::namespaced(self.client.clone(), ns);
        let selector = format!(
            "{POD_LABEL}={},{VOLUME_LABEL}={},{TRIGGER_LABEL}=schedule",
            label_value(pod),
            label_value(volume)
        );
        let runs = api
            .list(&kube::api::ListParams::default().labels(&selector))
            .await?;
        Ok(last_fired(&runs.items))
    }
}

/// The newest time among scheduled runs: their `coffer.dev/scheduled-at`, or
/// for runs made before it was written, the `YYYYmmddHHMM` their name ends
/// with, or else their creation.
pub(crate) fn last_fired(runs: &[VolumeBackup]) -> Option<DateTime<Utc>> {
    runs.iter()
        .filter_map(|vb| {
            if let Some(t) = vb
                .annotations()
                .get(SCHEDULED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            {
                return Some(t.with_timezone(&Utc));
            }
            let name = vb.name_any();
            let digits = name.rsplit('-').next().unwrap_or_default();
            if digits.len() == 12 {
                if let Ok(t) = chrono::NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M") {
                    return Some(t.and_utc());
                }
            }
            vb.meta()
                .creation_timestamp
                .as_ref()
                .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
        })
        .max()
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
                        // Missed times fire once, as the latest of them.
                        let at = latest_due(&s.schedule, s.next, now);
                        due.push((k.0.clone(), k.1.clone(), k.3.clone(), at));
                        s.next = s
                            .schedule
                            .next_after(at.max(now))
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
                    self.create_backups(&pod, &req, "schedule", &suffix, Some(at))
                        .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, at: Option<&str>, created: &str) -> VolumeBackup {
        let mut meta = serde_json::json!({"name": name, "creationTimestamp": created});
        if let Some(at) = at {
            meta["annotations"] = serde_json::json!({ SCHEDULED_AT: at });
        }
        serde_json::from_value(serde_json::json!({
            "metadata": meta,
            "spec": {"pod": "db-0", "volume": "data"},
        }))
        .unwrap()
    }

    #[test]
    fn the_last_time_fired_is_read_from_the_annotation_then_the_name_then_the_creation() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(last_fired(&[]), None);
        let runs = [
            run("db-0-data-202601010000", None, "2026-01-01T00:00:05Z"),
            run(
                "db-0-data-202602010000",
                Some("2026-02-01T00:00:00.000Z"),
                "2026-02-01T00:00:09Z",
            ),
            run("db-0-data-x", None, "2025-12-01T00:00:00Z"),
        ];
        assert_eq!(last_fired(&runs), Some(t("2026-02-01T00:00:00Z")));
        assert_eq!(last_fired(&runs[..1]), Some(t("2026-01-01T00:00:00Z")));
        assert_eq!(last_fired(&runs[2..]), Some(t("2025-12-01T00:00:00Z")));
    }
}
