//! The controller's repository maintenance: `spec.maintenance` of a
//! BackupRepository schedules prune, `check --read-data-subset`, and a copy
//! of every snapshot into a second BackupRepository (`copyTo`). Each job
//! runs in a mover pod in the repository's namespace (the controller reads
//! no Secret), with the maintenance memory limit, beside running backups:
//! the engine's protocol lets prune run while backups write. The jobs never
//! run at once on one repository: a check reading packs that prune is
//! deleting would report them missing (a copy could run beside either, as
//! the protocol allows, but one job at a time keeps a repository's load
//! predictable).
//!
//! Level-triggered like the rest. `status.prune` / `status.check` say which
//! time was last started; the mover writes `status.lastPrune` /
//! `status.lastCheck` for that time and exits. When the result is there and
//! the pod still is, the controller records it (an Event, metrics; a failed
//! check is a Warning) and deletes the pod. A pod that fails, cannot start,
//! or exits without a result gets a failed result written by the
//! controller. The annotations `maintenance.coffer.dev/prune-now`,
//! `.../check-now` and `.../copy-now` start a job at once, once per value.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    BackupRepository, BackupRepositoryStatus, CheckResult, CopyResult, JobTimes, Maintenance,
    PruneResult,
};
use crate::metrics::{CopyLabels, MaintenanceLabels};

use crate::api::{kube_err, Error};
use crate::controller::context::Ctx;
use crate::controller::movers::pod::{local_repository_dir, mover_pod, MoverPod};
use crate::controller::movers::{
    common_args, create_mover, delete_account, delete_mover, mover_state, MoverState, SecretsOf,
    StatusOf, TERMINATING_RECHECK,
};
use crate::mover::args::{CheckArgs, CopyArgs, MoverArgs, MoverCommon, PruneArgs};
use crate::names::{
    home_name, label_value, run_annotation, CHECK_NOW, COPY_NOW, MAINTENANCE_LABEL, PRUNE_NOW,
};
use crate::report::patch_status;
use crate::scheduling::Schedule;
use crate::scheduling::{created_at, tick, Tick};
use crate::time::Timestamp;

/// One of the maintenance jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// `coffer prune`.
    Prune,
    /// `coffer check`.
    Check,
    /// `coffer copy` into `copyTo`.
    Copy,
}

impl Job {
    const ALL: [Job; 3] = [Job::Prune, Job::Check, Job::Copy];

    /// `prune`, `check` or `copy`: the mover subcommand, the pod name's
    /// part, the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Prune => "prune",
            Job::Check => "check",
            Job::Copy => "copy",
        }
    }

    fn trigger(self) -> &'static str {
        match self {
            Job::Prune => PRUNE_NOW,
            Job::Check => CHECK_NOW,
            Job::Copy => COPY_NOW,
        }
    }

    fn schedule(self, m: &Maintenance) -> Option<&String> {
        match self {
            Job::Prune => m.prune_schedule.as_ref(),
            Job::Check => m.check_schedule.as_ref(),
            Job::Copy => m.copy_schedule.as_ref(),
        }
    }

    fn times(self, st: &mut BackupRepositoryStatus) -> &mut Option<JobTimes> {
        match self {
            Job::Prune => &mut st.prune,
            Job::Check => &mut st.check,
            Job::Copy => &mut st.copy,
        }
    }

    /// The time the last result was written for.
    fn result_at(self, st: &BackupRepositoryStatus) -> Option<Timestamp> {
        match self {
            Job::Prune => st.last_prune.as_ref().map(|r| r.scheduled_at),
            Job::Check => st.last_check.as_ref().map(|r| r.scheduled_at),
            Job::Copy => st.last_copy.as_ref().map(|r| r.scheduled_at),
        }
    }

    /// Writes a failed result for `at` into `st`.
    fn fail(self, st: &mut BackupRepositoryStatus, at: Timestamp, why: String) {
        let time = Timestamp::now();
        match self {
            Job::Copy => {
                st.last_copy = Some(CopyResult {
                    scheduled_at: at,
                    time,
                    destination: st
                        .last_copy
                        .as_ref()
                        .map(|c| c.destination.clone())
                        .unwrap_or_default(),
                    error: Some(why),
                    ..Default::default()
                })
            }
            Job::Prune => {
                st.last_prune = Some(PruneResult {
                    scheduled_at: at,
                    time,
                    error: Some(why),
                    ..Default::default()
                })
            }
            Job::Check => {
                st.last_check = Some(CheckResult {
                    scheduled_at: at,
                    time,
                    error: Some(why),
                    ..Default::default()
                })
            }
        }
    }

    /// Its pod's name, in coffer's namespace, for repository `ns/repo`.
    fn pod_name(self, ns: &str, repo: &str) -> String {
        home_name(self.as_str(), ns, repo)
    }
}

/// The subset the next check reads: a configured `n/m` moves on from the
/// last check's part (`k/m` is followed by `k+1/m`, and `m/m` by `1/m`), so
/// that `m` checks read every pack; a percentage stays as it is.
pub fn next_subset(configured: &str, last: Option<&str>) -> String {
    let part = |s: &str| -> Option<(u32, u32)> {
        let (n, m) = s.split_once('/')?;
        Some((n.trim().parse().ok()?, m.trim().parse().ok()?))
    };
    match (part(configured), last.and_then(part)) {
        (Some((_, m)), Some((k, lm))) if m == lm && m > 0 => format!("{}/{m}", k % m + 1),
        _ => configured.to_string(),
    }
}

/// What a pass over a repository's maintenance decides, from its spec,
/// its status and the time ([`plan_maintenance`]).
#[derive(Debug, PartialEq)]
pub(crate) struct MaintenancePlan {
    /// Jobs started whose result is not written yet: follow their movers
    /// (with the time each was started for).
    pub(crate) follow: Vec<(Job, Timestamp)>,
    /// Jobs whose result is written: record it (Events, metrics, the pod).
    pub(crate) record: Vec<Job>,
    /// The job to start now, with the `*-now` value that asked for it: one
    /// per pass, and none while another runs.
    pub(crate) start: Option<(Job, Option<String>)>,
    /// When the next scheduled time comes.
    pub(crate) wake: Option<Duration>,
}

/// Plans a pass; `st` becomes the status the pass leaves (each job's next
/// time, a schedule's error, and the claim of the job it starts).
pub(crate) fn plan_maintenance(
    repo: &BackupRepository,
    st: &mut BackupRepositoryStatus,
    now: chrono::DateTime<Utc>,
) -> MaintenancePlan {
    let m = repo.spec.maintenance.clone().unwrap_or_default();
    let mut plan = MaintenancePlan {
        follow: Vec::new(),
        record: Vec::new(),
        start: None,
        wake: None,
    };
    for job in Job::ALL {
        let Some(at) = job.times(st).as_ref().and_then(|t| t.last_schedule_time) else {
            continue;
        };
        if job.result_at(st) == Some(at) {
            plan.record.push(job);
        } else {
            plan.follow.push((job, at));
        }
    }
    let running = !plan.follow.is_empty();
    let created = created_at(repo, now);
    let id = format!(
        "{}/{}",
        repo.namespace().unwrap_or_default(),
        repo.name_any()
    );
    for job in Job::ALL {
        let text = job.schedule(&m);
        let trigger = repo.annotations().get(job.trigger()).map(String::as_str);
        if text.is_none() && trigger.is_none() && job.times(st).is_none() {
            continue;
        }
        let times = job.times(st).get_or_insert_with(Default::default);
        let schedule = match text.map(|s| Schedule::parse(s, &format!("{id}/{}", job.as_str()))) {
            Some(_) if job == Job::Copy && m.copy_to.is_none() => {
                times.error = Some(
                    "spec.maintenance.copySchedule needs copyTo: the BackupRepository to copy into"
                        .into(),
                );
                None
            }
            Some(Err(e)) => {
                times.error = Some(format!("spec.maintenance.{}Schedule: {e}", job.as_str()));
                None
            }
            Some(Ok(s)) => {
                times.error = None;
                Some(s)
            }
            None => {
                times.error = None;
                None
            }
        };
        let last = times.last_schedule_time.map(Timestamp::at);
        let last_trigger = times.last_trigger.as_deref();
        match tick(
            schedule.as_ref(),
            false,
            trigger,
            last_trigger,
            last,
            created,
            now,
        ) {
            Tick::Fire { trigger } if !running && plan.start.is_none() => {
                plan.start = Some((job, trigger))
            }
            Tick::Fire { .. } => times.next_schedule_time = Some(Timestamp::new(now)),
            Tick::Wait(next) => {
                times.next_schedule_time = next.map(Timestamp::new);
                if let Some(n) = next {
                    let d = (n - now).to_std().unwrap_or_default() + Duration::from_secs(1);
                    plan.wake = Some(plan.wake.map_or(d, |w| w.min(d)));
                }
            }
        }
    }
    if let Some((job, trigger)) = &plan.start {
        let times = job.times(st).get_or_insert_with(Default::default);
        times.last_schedule_time = Some(Timestamp::new(now));
        times.last_trigger = trigger.clone().or(times.last_trigger.take());
    }
    plan
}

/// Reconciles one repository's maintenance: plans the pass
/// ([`plan_maintenance`]), follows and records the jobs that ran, then
/// claims the job it starts (the next pass creates its pod).
pub(crate) async fn reconcile(repo: Arc<BackupRepository>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if repo.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let m = repo.spec.maintenance.clone().unwrap_or_default();
    let old = repo.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let plan = plan_maintenance(&repo, &mut st, Utc::now());
    let mut requeue = plan.wake;
    let mut soonest = |d: Duration| requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
    for job in &plan.record {
        if let Some(d) = record(&ctx, &repo, *job, &st).await? {
            soonest(d);
        }
    }
    for (job, at) in &plan.follow {
        if let Some(d) = follow(&ctx, &repo, &m, *job, *at, &mut st).await? {
            soonest(d);
        }
    }
    if plan.start.is_some() {
        // Claimed at the version read: a pass on a stale copy starts nothing.
        write_status(&ctx, &repo, &old, &st, true).await?;
        return Ok(Action::requeue(Duration::ZERO));
    }
    write_status(&ctx, &repo, &old, &st, false).await?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Starts (or follows) the mover of `job` for time `at`. A pod that failed,
/// cannot start, or exited without its result gets a failed result in
/// `st`. Returns when to look again.
async fn follow(
    ctx: &Ctx,
    repo: &BackupRepository,
    m: &Maintenance,
    job: Job,
    at: Timestamp,
    st: &mut BackupRepositoryStatus,
) -> Result<Option<Duration>, Error> {
    let ns = repo.namespace().unwrap_or_default();
    let name = repo.name_any();
    let home = ctx.opts.namespace.clone();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &home);
    let pod_name = job.pod_name(&ns, &name);
    let pod = pods
        .get_opt(&pod_name)
        .await
        .map_err(kube_err(format!("reading pod {home}/{pod_name}")))?;
    let Some(pod) = pod else {
        // A repository the administrator does not allow is refused like a pod.
        let made = async {
            let common = common_args(ctx, &ns, &name, repo)?;
            let scheduled_at = at;
            let destination = match job {
                Job::Copy => Some(copy_destination(ctx, repo, m).await?),
                _ => None,
            };
            let args = match (job, &destination) {
                (Job::Prune, _) => MoverArgs::Prune(Box::new(PruneArgs {
                    common,
                    scheduled_at,
                    max_unused_percent: m.max_unused_percent.map(f64::from),
                })),
                (Job::Check, _) => {
                    let last = st
                        .last_check
                        .as_ref()
                        .and_then(|c| c.read_data_subset.as_deref());
                    MoverArgs::Check(Box::new(CheckArgs {
                        common,
                        scheduled_at,
                        read_data_subset: m.read_data_subset.as_ref().map(|s| next_subset(s, last)),
                    }))
                }
                (Job::Copy, Some(d)) => {
                    MoverArgs::Copy(Box::new(copy_args(common, scheduled_at, d)))
                }
                (Job::Copy, None) => unreachable!("a copy has a destination"),
            }
            .to_argv();
            let labels = BTreeMap::from([
                (MAINTENANCE_LABEL.to_string(), label_value(&name)),
                crate::names::managed_by(),
            ]);
            let memory = m.memory.as_ref().unwrap_or(&ctx.opts.mover_memory);
            let dest_dir = destination
                .as_ref()
                .and_then(|d| local_repository_dir(&d.spec.url));
            let mut p = mover_pod(&MoverPod {
                args,
                labels: &labels,
                memory,
                destination_dir: dest_dir,
                ..ctx.mover(&pod_name, &home, repo)
            });
            p.metadata.annotations = Some(run_annotation(&ns, &name));
            let reads: Vec<&BackupRepository> =
                std::iter::once(repo).chain(destination.as_ref()).collect();
            create_mover(ctx, &p, &StatusOf::of(repo), &SecretsOf::of(&reads)).await
        }
        .await;
        if let Err(Error::Refused(why) | Error::Quota(why)) = made {
            // No pod will report it: tell now.
            job.fail(st, at, why);
            announce(ctx, repo, job, st).await;
            return Ok(None);
        }
        made?;
        return Ok(Some(ctx.opts.prepare_timeout));
    };
    match mover_state(ctx, &pod).await {
        MoverState::Running(again) => Ok(again),
        MoverState::Stuck(why) => {
            job.fail(st, at, why);
            Ok(None)
        }
        MoverState::Exited(why) => {
            // The mover wrote its result before it exited (a check that
            // found damage exits 1 after writing it).
            let fresh = Api::<BackupRepository>::namespaced(ctx.client.clone(), &ns)
                .get_status(&name)
                .await
                .map_err(kube_err(format!("reading BackupRepository {ns}/{name}")))?
                .status
                .unwrap_or_default();
            if job.result_at(&fresh) == Some(at) {
                st.last_prune = fresh.last_prune.or(st.last_prune.take());
                st.last_check = fresh.last_check.or(st.last_check.take());
                st.last_copy = fresh.last_copy.or(st.last_copy.take());
            } else {
                let why = why.unwrap_or_else(|| {
                    format!("mover pod {home}/{pod_name} exited without writing its result")
                });
                job.fail(st, at, why);
            }
            Ok(None)
        }
    }
}

/// The BackupRepository `spec.maintenance.copyTo` names, in the same
/// namespace; refused (a failed result, no pod) when it is missing, is this
/// repository, or has a URL the administrator does not allow.
async fn copy_destination(
    ctx: &Ctx,
    repo: &BackupRepository,
    m: &Maintenance,
) -> Result<BackupRepository, Error> {
    let ns = repo.namespace().unwrap_or_default();
    let Some(to) = m.copy_to.as_deref() else {
        return Err(Error::Refused(
            "spec.maintenance.copySchedule needs copyTo: the BackupRepository to copy into".into(),
        ));
    };
    if to == repo.name_any() {
        return Err(Error::Refused(format!(
            "spec.maintenance.copyTo names this BackupRepository ({ns}/{to}); name another one"
        )));
    }
    let dest = Api::<BackupRepository>::namespaced(ctx.client.clone(), &ns)
        .get_opt(to)
        .await
        .map_err(kube_err(format!("reading BackupRepository {ns}/{to}")))?
        .ok_or_else(|| {
            Error::Refused(format!(
                "spec.maintenance.copyTo: BackupRepository {ns}/{to} does not exist; create it \
                 (another bucket, region or account) or fix the name"
            ))
        })?;
    ctx.opts
        .policy
        .check_url(&dest.spec.url)
        .map_err(|why| Error::Refused(format!("BackupRepository {ns}/{to} (copyTo): {why}")))?;
    Ok(dest)
}

/// The copy mover's arguments for the destination: its URL, options,
/// credentials and whether to create it.
fn copy_args(common: MoverCommon, scheduled_at: Timestamp, dest: &BackupRepository) -> CopyArgs {
    CopyArgs {
        common,
        scheduled_at,
        to: dest.name_any(),
        to_repository_url: dest.spec.url.clone(),
        to_options: dest
            .spec
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        to_password_secret: dest.spec.password_secret_ref.name.clone(),
        to_password_key: dest.spec.password_secret_ref.key.clone(),
        to_credentials_secret: dest
            .spec
            .credentials_secret_ref
            .as_ref()
            .map(|c| c.name.clone()),
        to_init: dest.spec.init,
    }
}

/// A job's result is in the status and its pod is still there: tell
/// (Event, metrics), then delete the pod. Runs once per result, as the pod
/// goes; a later pass, once the pod is gone, deletes its account. Returns
/// when to look again at a pod still Terminating (a lost node sends no
/// event).
async fn record(
    ctx: &Ctx,
    repo: &BackupRepository,
    job: Job,
    st: &BackupRepositoryStatus,
) -> Result<Option<Duration>, Error> {
    let ns = repo.namespace().unwrap_or_default();
    let name = repo.name_any();
    let home = ctx.opts.namespace.clone();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &home);
    let pod_name = job.pod_name(&ns, &name);
    let pod = pods
        .get_opt(&pod_name)
        .await
        .map_err(kube_err(format!("reading pod {home}/{pod_name}")))?;
    let Some(pod) = pod else {
        delete_account(ctx, &home, &pod_name, std::slice::from_ref(&ns)).await?;
        return Ok(None);
    };
    // Told once: not again while the pod terminates.
    if pod.metadata.deletion_timestamp.is_none() {
        announce(ctx, repo, job, st).await;
    }
    let left = delete_mover(ctx, &home, &pod_name, std::slice::from_ref(&ns)).await?;
    Ok(left.then_some(ctx.opts.terminating_limit + TERMINATING_RECHECK))
}

/// A job's result as an Event on the repository and in the metrics.
async fn announce(ctx: &Ctx, repo: &BackupRepository, job: Job, st: &BackupRepositoryStatus) {
    let ns = repo.namespace().unwrap_or_default();
    let name = repo.name_any();
    let (ok, reason, note) = match job {
        Job::Prune => {
            let r = st.last_prune.clone().unwrap_or_default();
            match &r.error {
                Some(e) => (false, "PruneFailed", e.clone()),
                None => {
                    ctx.metrics
                        .bytes_freed
                        .get_or_create(&repo_labels(&ns, &name, job, "ok"))
                        .inc_by(r.bytes_freed);
                    let note = format!(
                        "freed {} in {} pack(s); {} left{}",
                        bytesize::ByteSize(r.bytes_freed),
                        r.packs_deleted,
                        bytesize::ByteSize(r.total_bytes),
                        if r.executed {
                            ""
                        } else {
                            "; stopped waiting for running backups, the next prune finishes"
                        }
                    );
                    (true, "Pruned", note)
                }
            }
        }
        Job::Copy => {
            let r = st.last_copy.clone().unwrap_or_default();
            let labels = CopyLabels {
                namespace: ns.clone(),
                repository: name.clone(),
                destination: r.destination.clone(),
            };
            match &r.error {
                Some(e) => (
                    false,
                    "CopyFailed",
                    format!("copy into {}: {e}", r.destination),
                ),
                None => {
                    ctx.metrics
                        .copy_last_success
                        .get_or_create(&labels)
                        .set(Utc::now().timestamp() as f64);
                    ctx.metrics
                        .copy_bytes
                        .get_or_create(&labels)
                        .inc_by(r.bytes_stored);
                    let note = format!(
                        "copied {} snapshot(s) into {} ({} new there, {} read); {} were there already",
                        r.snapshots_copied,
                        r.destination,
                        bytesize::ByteSize(r.bytes_stored),
                        bytesize::ByteSize(r.bytes_read),
                        r.snapshots_skipped
                    );
                    (true, "Copied", note)
                }
            }
        }
        Job::Check => {
            let r = st.last_check.clone().unwrap_or_default();
            match (&r.error, r.ok) {
                (Some(e), _) => (false, "CheckFailed", format!("the check did not run: {e}")),
                (None, false) => (
                    false,
                    "CheckFailed",
                    format!("{} problem(s): {}", r.problems, r.first_problems.join("; ")),
                ),
                (None, true) => (
                    true,
                    "Checked",
                    format!(
                        "no problem in {} snapshot(s) and {} pack(s); {} pack(s) read{}",
                        r.snapshots,
                        r.packs,
                        r.packs_read,
                        r.read_data_subset
                            .map(|s| format!(" (subset {s})"))
                            .unwrap_or_default()
                    ),
                ),
            }
        }
    };
    let result = if ok { "ok" } else { "failed" };
    ctx.metrics
        .maintenance
        .get_or_create(&repo_labels(&ns, &name, job, result))
        .inc();
    let etype = if ok {
        EventType::Normal
    } else {
        EventType::Warning
    };
    tracing::info!(namespace = ns, repository = name, "{reason}: {note}");
    ctx.reporter
        .event_on(repo, "Maintenance", etype, reason, note)
        .await;
}

fn repo_labels(ns: &str, name: &str, job: Job, result: &str) -> MaintenanceLabels {
    MaintenanceLabels {
        namespace: ns.into(),
        repository: name.into(),
        job: job.as_str().into(),
        result: result.into(),
    }
}

/// Writes the fields the controller owns when they changed (the node agent
/// writes the phase, the movers their results); with `at_version`, only if
/// the repository is still the version read.
async fn write_status(
    ctx: &Ctx,
    repo: &BackupRepository,
    old: &BackupRepositoryStatus,
    st: &BackupRepositoryStatus,
    at_version: bool,
) -> Result<(), Error> {
    let mut fields = serde_json::Map::new();
    let mut put = |k: &str, changed: bool, v: serde_json::Value| {
        if changed {
            fields.insert(k.into(), v);
        }
    };
    put("prune", old.prune != st.prune, json!(st.prune));
    put("check", old.check != st.check, json!(st.check));
    put(
        "lastPrune",
        old.last_prune != st.last_prune,
        json!(st.last_prune),
    );
    put(
        "lastCheck",
        old.last_check != st.last_check,
        json!(st.last_check),
    );
    put("copy", old.copy != st.copy, json!(st.copy));
    put(
        "lastCopy",
        old.last_copy != st.last_copy,
        json!(st.last_copy),
    );
    if fields.is_empty() {
        return Ok(());
    }
    let ns = repo.namespace().unwrap_or_default();
    let name = repo.name_any();
    let version = at_version.then(|| repo.resource_version()).flatten();
    match patch_status::<BackupRepository>(&ctx.client, &ns, &name, json!(fields), version).await {
        // Written, or someone wrote first (the next pass reads what they
        // wrote), or the repository is gone.
        Ok(_) => Ok(()),
        Err(e) => Err(kube_err(format!(
            "writing the status of BackupRepository {ns}/{name}"
        ))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::stamp;
    use crate::time::utc as t;

    /// A repository made at midnight with `maintenance`, `status` and
    /// `annotations`.
    fn repository(
        maintenance: serde_json::Value,
        status: serde_json::Value,
        annotations: serde_json::Value,
    ) -> BackupRepository {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "default", "namespace": "shop", "annotations": annotations,
                         "creationTimestamp": "2026-03-01T00:00:00Z"},
            "spec": {"url": "s3:bucket/shop", "passwordSecretRef": {"name": "p", "key": "k"},
                     "maintenance": maintenance},
            "status": status,
        }))
        .unwrap()
    }

    fn plan(repo: &BackupRepository, now: &str) -> (MaintenancePlan, BackupRepositoryStatus) {
        let mut st = repo.status.clone().unwrap_or_default();
        let p = plan_maintenance(repo, &mut st, t(now));
        (p, st)
    }

    #[test]
    fn one_job_starts_per_pass_and_the_other_waits_its_turn() {
        let both = serde_json::json!({"pruneSchedule": "0 3 * * *", "checkSchedule": "0 3 * * *"});
        let repo = repository(
            both.clone(),
            serde_json::json!(null),
            serde_json::json!(null),
        );
        let (p, st) = plan(&repo, "2026-03-01T03:00:05Z");
        assert_eq!(p.start, Some((Job::Prune, None)));
        let prune = st.prune.unwrap();
        assert_eq!(
            prune.last_schedule_time,
            Some(stamp("2026-03-01T03:00:05.000Z"))
        );
        let check = st.check.unwrap();
        assert_eq!(check.last_schedule_time, None);
        assert_eq!(
            check.next_schedule_time,
            Some(stamp("2026-03-01T03:00:05Z")),
            "due now"
        );
        // The prune runs (no result yet): it is followed, and nothing starts.
        let running =
            serde_json::json!({"prune": {"lastScheduleTime": "2026-03-01T03:00:05.000Z"}});
        let (p, _) = plan(
            &repository(both, running, serde_json::json!(null)),
            "2026-03-01T03:01:00Z",
        );
        assert_eq!(
            p.follow,
            vec![(Job::Prune, stamp("2026-03-01T03:00:05.000Z"))]
        );
        assert_eq!(p.start, None);
    }

    #[test]
    fn a_written_result_is_recorded_and_the_next_time_awaited() {
        let at = "2026-03-01T03:00:05.000Z";
        let done = serde_json::json!({
            "prune": {"lastScheduleTime": at},
            "lastPrune": {"scheduledAt": at, "time": "2026-03-01T03:02:00Z", "bytesFreed": 0,
                          "bytesRepacked": 0, "packsDeleted": 0, "totalBytes": 0,
                          "sessionsWaited": 0, "executed": true},
        });
        let repo = repository(
            serde_json::json!({"pruneSchedule": "0 3 * * *"}),
            done,
            serde_json::json!(null),
        );
        let (p, st) = plan(&repo, "2026-03-01T04:00:00Z");
        assert_eq!(p.record, vec![Job::Prune]);
        assert!(p.follow.is_empty() && p.start.is_none());
        assert_eq!(p.wake, Some(Duration::from_secs(23 * 3600 + 1)));
        assert_eq!(
            st.prune.unwrap().next_schedule_time,
            Some(stamp("2026-03-02T03:00:00Z"))
        );
    }

    #[test]
    fn a_now_annotation_starts_a_job_and_a_copy_without_a_destination_is_said() {
        let repo = repository(
            serde_json::json!({"copySchedule": "@daily"}),
            serde_json::json!(null),
            serde_json::json!({Job::Check.trigger(): "please"}),
        );
        let (p, st) = plan(&repo, "2026-03-01T05:00:00Z");
        assert_eq!(p.start, Some((Job::Check, Some("please".into()))));
        let copy = st.copy.unwrap();
        assert!(copy.error.unwrap().contains("needs copyTo"));
        assert_eq!(copy.last_schedule_time, None);
    }

    #[test]
    fn a_subset_of_parts_moves_to_the_next_part_and_wraps() {
        assert_eq!(next_subset("1/3", None), "1/3");
        assert_eq!(next_subset("1/3", Some("1/3")), "2/3");
        assert_eq!(next_subset("1/3", Some("2/3")), "3/3");
        assert_eq!(next_subset("1/3", Some("3/3")), "1/3");
        // A changed m starts again from the configured part.
        assert_eq!(next_subset("2/4", Some("3/3")), "2/4");
        assert_eq!(next_subset("10%", Some("10%")), "10%");
        assert_eq!(next_subset("10%", Some("1/3")), "10%");
    }
}
