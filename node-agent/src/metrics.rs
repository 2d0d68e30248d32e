//! Prometheus metrics, `/healthz` and `/readyz`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use kube::ResourceExt;

use crate::crd::{BackupSchedule, BackupScheduleStatus};

/// Runs by namespace and phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// `backup` or `restore`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Final phase.
    pub phase: String,
}

/// Per namespace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    /// `backup` or `restore`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
}

/// Per BackupSchedule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    /// Namespace.
    pub namespace: String,
    /// The BackupSchedule.
    pub schedule: String,
}

/// Per volume.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    /// Namespace.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// Volume.
    pub volume: String,
}

/// Per repository maintenance job.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MaintenanceLabels {
    /// Namespace.
    pub namespace: String,
    /// The BackupRepository.
    pub repository: String,
    /// `prune`, `check` or `copy`.
    pub job: String,
    /// `ok` or `failed` (a check that found damage is `failed`).
    pub result: String,
}

/// A repository and the one it is copied into.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CopyLabels {
    /// Namespace.
    pub namespace: String,
    /// The BackupRepository copied from.
    pub repository: String,
    /// The BackupRepository copied into (`spec.maintenance.copyTo`).
    pub destination: String,
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    /// Finished runs.
    pub runs: Family<RunLabels, Counter>,
    /// Bytes read (backups) or written (restores).
    pub bytes: Family<NamespaceLabels, Counter>,
    /// Bytes added to repositories by backups.
    pub bytes_added: Family<NamespaceLabels, Counter>,
    /// Durations of finished runs.
    pub duration: Family<NamespaceLabels, Histogram>,
    /// The last successful backup, per volume (Unix seconds).
    pub last_success: Family<VolumeLabels, Gauge<f64, AtomicU64>>,
    /// Runs in progress now.
    pub in_progress: Gauge,
    /// Finished maintenance jobs (the controller's).
    pub maintenance: Family<MaintenanceLabels, Counter>,
    /// Bytes freed by prune (the controller's).
    pub bytes_freed: Family<MaintenanceLabels, Counter>,
    /// When each repository's copy into `spec.maintenance.copyTo` last
    /// succeeded (the controller's).
    pub copy_last_success: Family<CopyLabels, Gauge<f64, AtomicU64>>,
    /// Bytes each copy stored in the destination.
    pub copy_bytes: Family<CopyLabels, Counter>,
    /// When each schedule's runs last succeeded (Unix time).
    pub schedule_last_success: Family<ScheduleLabels, Gauge<f64, AtomicU64>>,
    /// Whether each schedule's last time's runs all succeeded (1) or not (0).
    pub schedule_last_run_succeeded: Family<ScheduleLabels, Gauge>,
    /// When each schedule fires next (Unix time).
    pub schedule_next_run: Family<ScheduleLabels, Gauge<f64, AtomicU64>>,
    /// 1 while this controller replica holds the Lease, else 0.
    pub leading: Gauge,
    ready: AtomicBool,
}

impl Metrics {
    /// A registry with every metric.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("coffer");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "runs",
            "Finished backups and restores by namespace and phase",
            runs.clone(),
        );
        let bytes = Family::<NamespaceLabels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes read by backups and written by restores",
            bytes.clone(),
        );
        let bytes_added = Family::<NamespaceLabels, Counter>::default();
        registry.register(
            "bytes_added",
            "Bytes added to repositories by backups (after deduplication and compression)",
            bytes_added.clone(),
        );
        let duration = Family::<NamespaceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                1.0,
                5.0,
                15.0,
                60.0,
                300.0,
                900.0,
                3600.0,
                4.0 * 3600.0,
                12.0 * 3600.0,
            ])
        });
        registry.register(
            "run_duration_seconds",
            "Durations of finished runs",
            duration.clone(),
        );
        let last_success = Family::<VolumeLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "When each volume's last backup succeeded (Unix time)",
            last_success.clone(),
        );
        let in_progress = Gauge::default();
        registry.register(
            "runs_in_progress",
            "Backups and restores running now",
            in_progress.clone(),
        );
        let maintenance = Family::<MaintenanceLabels, Counter>::default();
        registry.register(
            "maintenance_jobs",
            "Finished repository prunes, checks and copies by result (a check that found damage failed)",
            maintenance.clone(),
        );
        let bytes_freed = Family::<MaintenanceLabels, Counter>::default();
        registry.register(
            "prune_freed_bytes",
            "Bytes freed in repositories by scheduled prunes",
            bytes_freed.clone(),
        );
        let copy_last_success = Family::<CopyLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "copy_last_success_timestamp_seconds",
            "When each repository's scheduled copy into its copyTo last succeeded (Unix time)",
            copy_last_success.clone(),
        );
        let copy_bytes = Family::<CopyLabels, Counter>::default();
        registry.register(
            "copy_stored_bytes",
            "Bytes scheduled copies stored in their destination repositories (new there)",
            copy_bytes.clone(),
        );
        let schedule_last_success = Family::<ScheduleLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "schedule_last_success_timestamp_seconds",
            "When each BackupSchedule's runs last succeeded (Unix time)",
            schedule_last_success.clone(),
        );
        let schedule_last_run_succeeded = Family::<ScheduleLabels, Gauge>::default();
        registry.register(
            "schedule_last_run_succeeded",
            "1 when every run of a BackupSchedule's last time succeeded, 0 when one failed",
            schedule_last_run_succeeded.clone(),
        );
        let schedule_next_run = Family::<ScheduleLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "schedule_next_run_timestamp_seconds",
            "When each BackupSchedule fires next (Unix time)",
            schedule_next_run.clone(),
        );
        let leading = Gauge::default();
        registry.register(
            "controller_leading",
            "1 while this controller replica holds the Lease and acts, 0 while it stands by",
            leading.clone(),
        );
        Arc::new(Metrics {
            registry,
            leading,
            maintenance,
            bytes_freed,
            copy_last_success,
            copy_bytes,
            schedule_last_success,
            schedule_last_run_succeeded,
            schedule_next_run,
            runs,
            bytes,
            bytes_added,
            duration,
            last_success,
            in_progress,
            ready: AtomicBool::new(false),
        })
    }

    /// Marks the agent ready (its watches have started).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process
/// ends. Returns the bound address (port 0 picks one).
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(m);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
    Ok(bound)
}

fn schedule_labels(bs: &BackupSchedule) -> ScheduleLabels {
    ScheduleLabels {
        namespace: bs.namespace().unwrap_or_default(),
        schedule: bs.name_any(),
    }
}

/// The schedules' state as gauges, for alerts such as "no successful backup
/// for a day" or "the last run failed". A deleted schedule's gauges go
/// (`controller::schedules::forget_deleted`) and stay gone.
pub(crate) struct ScheduleGauges {
    metrics: Arc<Metrics>,
    /// Under one lock: the uids of the schedules deleted lately, oldest
    /// first, so that a reconcile that read one before its deletion cannot
    /// export it again; and which schedule's uid exported each series, so
    /// that a deletion seen late does not remove a same-named successor's.
    state: Mutex<GaugeOwners>,
}

#[derive(Default)]
struct GaugeOwners {
    deleted: VecDeque<String>,
    exported_by: BTreeMap<(String, String), String>,
}

impl ScheduleGauges {
    /// How many deleted schedules are remembered.
    const REMEMBERED: usize = 1024;

    pub(crate) fn new(metrics: Arc<Metrics>) -> ScheduleGauges {
        ScheduleGauges {
            metrics,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GaugeOwners> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets `bs`'s gauges from `st`, unless `bs` was deleted. The check and
    /// the update are one step under the lock that [`ScheduleGauges::forget`] takes.
    pub(crate) fn export(&self, bs: &BackupSchedule, st: &BackupScheduleStatus) {
        let mut state = self.state();
        let uid = bs.uid().unwrap_or_default();
        if state.deleted.contains(&uid) {
            return;
        }
        let labels = schedule_labels(bs);
        state
            .exported_by
            .insert((labels.namespace.clone(), labels.schedule.clone()), uid);
        let unix = |t: &Option<crate::time::Timestamp>| {
            t.map(|t| t.at().timestamp_millis() as f64 / 1000.0)
        };
        let m = &self.metrics;
        if let Some(t) = unix(&st.last_successful_time) {
            m.schedule_last_success.get_or_create(&labels).set(t);
        }
        match unix(&st.next_schedule_time) {
            Some(t) => {
                m.schedule_next_run.get_or_create(&labels).set(t);
            }
            None => {
                m.schedule_next_run.remove(&labels);
            }
        }
        if let Some(c) = st.conditions.iter().find(|c| c.type_ == "LastRunSucceeded") {
            m.schedule_last_run_succeeded
                .get_or_create(&labels)
                .set(i64::from(c.status == "True"));
        }
    }

    /// Removes a deleted schedule's gauges, and remembers it.
    pub(crate) fn forget(&self, bs: &BackupSchedule) {
        let mut state = self.state();
        let uid = bs.uid().unwrap_or_default();
        if state.deleted.len() == Self::REMEMBERED {
            state.deleted.pop_front();
        }
        state.deleted.push_back(uid.clone());
        let labels = schedule_labels(bs);
        let key = (labels.namespace.clone(), labels.schedule.clone());
        if state.exported_by.get(&key).is_some_and(|by| *by != uid) {
            // A schedule of the same name, made since, owns them.
            return;
        }
        state.exported_by.remove(&key);
        let m = &self.metrics;
        m.schedule_last_success.remove(&labels);
        m.schedule_next_run.remove(&labels);
        m.schedule_last_run_succeeded.remove(&labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deleted_schedule_keeps_no_gauges_even_when_a_reconcile_in_flight_exports_it_after() {
        let metrics = Metrics::new();
        let gauges = ScheduleGauges::new(metrics.clone());
        let schedule = |ns: &str, uid: &str| -> BackupSchedule {
            serde_json::from_value(json!({
                "metadata": {"name": "nightly", "namespace": ns, "uid": uid},
                "spec": {"schedule": "0 2 * * *", "repository": "main"},
            }))
            .unwrap()
        };
        let st = BackupScheduleStatus {
            last_successful_time: Some(crate::time::stamp("2026-11-25T02:00:00Z")),
            next_schedule_time: Some(crate::time::stamp("2026-11-26T02:00:00Z")),
            ..Default::default()
        };
        let series = |ns: &str| {
            metrics
                .encode()
                .lines()
                .filter(|l| {
                    l.starts_with("coffer_schedule_") && l.contains(&format!("namespace=\"{ns}\""))
                })
                .count()
        };
        let (old, other) = (schedule("shop", "uid-1"), schedule("blog", "uid-2"));
        gauges.export(&old, &st);
        gauges.export(&other, &st);
        assert_eq!(series("shop"), 2);
        gauges.forget(&old);
        assert_eq!(series("shop"), 0);
        // A reconcile that read the schedule before its deletion.
        gauges.export(&old, &st);
        assert_eq!(series("shop"), 0, "{}", metrics.encode());
        assert_eq!(series("blog"), 2);
        // A new schedule of the same name is a new object, whose series a
        // late deletion of the old one leaves alone.
        gauges.export(&schedule("shop", "uid-3"), &st);
        assert_eq!(series("shop"), 2);
        gauges.forget(&old);
        assert_eq!(series("shop"), 2);
        gauges.forget(&schedule("shop", "uid-3"));
        assert_eq!(series("shop"), 0);
    }
}
