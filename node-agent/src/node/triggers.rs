//! Pod annotations become VolumeBackups: `backup-now` at once, `schedule`
//! on time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::api::is_status;
use crate::crd::{BackupMethod, VolumeBackup, VolumeBackupSpec};
use crate::names::{
    annotation_owner, annotation_schedule_tag, label_value, object_name, scheduled_at, POD_LABEL,
    SCHEDULED_AT, TRIGGER_LABEL, VOLUME_LABEL,
};
use crate::node::annotations;
use crate::node::context::{lock, Agent};
use crate::scheduling::{latest_due, Schedule};

impl Agent /* annotations */ {
    /// Carries out what a pod's annotations ask for now, and says when to
    /// look at the pod again (its next scheduled time).
    pub(crate) async fn annotations(self: &Arc<Self>, pod: &Pod) -> Action {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let volumes: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .map(|v| v.name.clone())
            .collect();
        let owner = annotation_owner(pod);
        let identity = |v: &str| format!("{ns}/{owner}/{v}");
        let req = match annotations::parse(pod.annotations(), &volumes, identity) {
            Ok(Some(r)) => r,
            Ok(None) => return Action::await_change(),
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
                return Action::await_change();
            }
        };
        if let Some(now_value) = &req.backup_now {
            let suffix = crate::names::short_hash(&format!("{uid}/{now_value}"));
            self.create_backups(pod, &req, "backup-now", &suffix, None)
                .await;
        }
        let Some(text) = &req.schedule else {
            return Action::await_change();
        };
        // Each volume's schedule goes on from the last time it fired, read
        // from its VolumeBackups (so a time missed while no agent ran fires
        // once), or from the pod's creation.
        if self
            .backups_listed
            .clone()
            .wait_for(|listed| *listed)
            .await
            .is_err()
        {
            return Action::requeue(RECHECK);
        }
        let now = Utc::now();
        let scheduled: Vec<ScheduledVolume> = req
            .volumes
            .iter()
            .filter_map(|v| {
                Some(ScheduledVolume {
                    volume: v.clone(),
                    schedule: Schedule::parse(text, &identity(v)).ok()?,
                    last: self.last_fired(&ns, &name, &uid, v),
                })
            })
            .collect();
        let plan = plan_schedules(&scheduled, crate::time::created_at(pod, now), now);
        for (volume, at) in plan.due {
            let mut one = req.clone();
            one.volumes = vec![volume.clone()];
            let suffix = at.format("%Y%m%d%H%M").to_string();
            self.create_backups(pod, &one, "schedule", &suffix, Some(at))
                .await;
            lock(&self.fired).insert((uid.clone(), volume), at);
        }
        match plan.wake {
            Some(t) => {
                tracing::debug!(namespace = ns, pod = name, next = %t, "scheduled");
                Action::requeue((t - Utc::now()).to_std().unwrap_or_default().min(RECHECK))
            }
            None => Action::await_change(),
        }
    }
}

/// The longest a scheduled pod waits before it is looked at again (a clock
/// that jumps is noticed within this).
const RECHECK: Duration = Duration::from_secs(60);

/// One volume of a pod with a schedule, and when it last fired.
pub(crate) struct ScheduledVolume {
    pub(crate) volume: String,
    pub(crate) schedule: Schedule,
    pub(crate) last: Option<DateTime<Utc>>,
}

/// What a pass over a pod's schedules does: the volumes due now, each at
/// the latest time it missed (missed times fire once), and when the next
/// one is due.
#[derive(Debug, PartialEq)]
pub(crate) struct SchedulePlan {
    pub(crate) due: Vec<(String, DateTime<Utc>)>,
    pub(crate) wake: Option<DateTime<Utc>>,
}

/// Plans a pass over a pod's schedules; a volume that never fired starts
/// from the pod's creation.
pub(crate) fn plan_schedules(
    volumes: &[ScheduledVolume],
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> SchedulePlan {
    let mut plan = SchedulePlan {
        due: Vec::new(),
        wake: None,
    };
    for v in volumes {
        let Some(mut next) = v.schedule.next_after(v.last.unwrap_or(created)) else {
            continue;
        };
        if next <= now {
            let at = latest_due(&v.schedule, next, now);
            plan.due.push((v.volume.clone(), at));
            match v.schedule.next_after(at.max(now)) {
                Some(n) => next = n,
                None => continue,
            }
        }
        plan.wake = Some(plan.wake.map_or(next, |w| w.min(next)));
    }
    plan
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
                            crate::time::Timestamp::new(at).to_string(),
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
                    tags: if scheduled_at.is_some() {
                        let mut tags = req.tags.clone();
                        tags.push(annotation_schedule_tag(&annotation_owner(pod)));
                        tags
                    } else {
                        req.tags.clone()
                    },
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

impl Agent /* scheduled_runs */ {
    /// The runs that the annotation schedule of pod `pod` made for volume
    /// `volume`, from the agent's cache.
    pub(crate) fn scheduled_runs(&self, ns: &str, pod: &str, volume: &str) -> Vec<VolumeBackup> {
        let (pod_label, volume_label) = (label_value(pod), label_value(volume));
        self.backups
            .state()
            .iter()
            .filter(|o| o.metadata.namespace.as_deref() == Some(ns))
            .filter_map(|o| o.parsed.as_ref().ok())
            .filter(|vb| {
                let l = vb.labels();
                l.get(POD_LABEL) == Some(&pod_label)
                    && l.get(VOLUME_LABEL) == Some(&volume_label)
                    && l.get(TRIGGER_LABEL).map(String::as_str) == Some("schedule")
            })
            .cloned()
            .collect()
    }
}

impl Agent /* last_fired */ {
    /// The last time a schedule fired for volume `volume` of pod `pod`
    /// (uid `uid`): from its scheduled VolumeBackups, and no earlier than
    /// this agent last fired it.
    pub(crate) fn last_fired(
        &self,
        ns: &str,
        pod: &str,
        uid: &str,
        volume: &str,
    ) -> Option<DateTime<Utc>> {
        let runs = self.scheduled_runs(ns, pod, volume);
        let floor = lock(&self.fired)
            .get(&(uid.to_string(), volume.to_string()))
            .copied();
        last_fired(&runs).max(floor)
    }
}

/// The newest time among scheduled runs: their `coffer.dev/scheduled-at`, or
/// for runs made before it was written, the `YYYYmmddHHMM` their name ends
/// with, or else their creation.
pub(crate) fn last_fired(runs: &[VolumeBackup]) -> Option<DateTime<Utc>> {
    runs.iter()
        .filter_map(|vb| {
            if let Some(t) = scheduled_at(vb) {
                return Some(t.at());
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

    #[test]
    fn a_schedule_pass_fires_each_due_volume_once_at_its_latest_missed_time() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let hourly = |v: &str, last: Option<&str>| ScheduledVolume {
            volume: v.to_string(),
            schedule: Schedule::parse("0 * * * *", v).unwrap(),
            last: last.map(t),
        };
        let created = t("2026-03-01T00:30:00Z");
        let now = t("2026-03-01T05:10:00Z");
        let plan = plan_schedules(
            &[
                // Never fired: from the pod's creation; four hours missed.
                hourly("data", None),
                // Fired at 05:00: not due again until 06:00.
                hourly("logs", Some("2026-03-01T05:00:00Z")),
                // Fired at 03:00: 04:00 and 05:00 missed, 05:00 fires.
                hourly("wal", Some("2026-03-01T03:00:00Z")),
            ],
            created,
            now,
        );
        assert_eq!(
            plan,
            SchedulePlan {
                due: vec![
                    ("data".into(), t("2026-03-01T05:00:00Z")),
                    ("wal".into(), t("2026-03-01T05:00:00Z")),
                ],
                wake: Some(t("2026-03-01T06:00:00Z")),
            }
        );
        // Nothing scheduled: nothing due, nothing to wake for.
        assert_eq!(
            plan_schedules(&[], created, now),
            SchedulePlan {
                due: vec![],
                wake: None
            }
        );
    }
}
