//! The controller's BackupSchedules. At each time of `spec.schedule` (or
//! when the annotation `backup.coffer.dev/backup-now` gets a new value) it
//! creates one VolumeBackup per selected volume (or, with
//! `spec.application`, one ApplicationBackup), labelled with the schedule
//! and annotated with the time. When every run of that time is over, the
//! retention policy is applied per origin to the snapshots this schedule
//! made (tag `coffer.dev/schedule=NAME`), by a mover pod running
//! `coffer-agent mover forget`: the controller reads no Secret, so it cannot
//! open the repository itself. Application backups are kept or forgotten
//! whole: [`crate::repos::application_plan`].
//!
//! With method Snapshot, the PVCs used by the pods of one workload (the
//! pods' controller: a StatefulSet, a ReplicaSet, ...) form a group
//! (`spec.group`), snapshotted at one instant: [`workload_groups`].
//!
//! Level-triggered like the rest: the schedule's status says what was done;
//! the controller requeues at the next time and wakes on its runs' changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    ApplicationBackup, BackupMethod, BackupRepository, BackupSchedule, BackupScheduleStatus,
    ConcurrencyPolicy, Phase, Retention, RetentionResult, Selector, VolumeBackup,
};

use crate::api::{create, delete, kube_err, Error};
use crate::controller::context::Ctx;
use crate::controller::movers::mover_state;
use crate::controller::movers::pod::{mover_pod, MoverPod};
use crate::controller::movers::{
    common_args, create_mover, delete_mover, MoverState, SecretsOf, StatusOf, TERMINATING_RECHECK,
};
use crate::mover::args::{ForgetArgs, KeepArgs, MoverArgs};
use crate::names::{
    home_name, label_value, made_by_us, object_name, run_annotation, schedule_tag, scheduled_at,
    BACKUP_NOW, SCHEDULED_AT, SCHEDULE_LABEL,
};
use crate::report::{patch_status, Written};
use crate::run::RunObject;
use crate::scheduling::Schedule;
use crate::scheduling::{created_at, tick, Tick};
use crate::status::set_condition;
use crate::time::Timestamp;

/// The policy as `coffer-agent mover forget` flags (`coffer forget`'s).
pub fn retention_args(r: &Retention) -> Vec<String> {
    KeepArgs::from(r).to_argv()
}

/// Why a retention policy cannot be applied, told before any pod starts: a
/// `keepWithin` the engine cannot read, or a policy that keeps nothing
/// (the engine refuses to forget everything).
pub fn retention_problem(r: &Retention) -> Option<String> {
    let within = match r
        .keep_within
        .as_deref()
        .map(coffer_engine::forget::parse_duration)
    {
        Some(Err(e)) => return Some(format!("spec.retention.keepWithin: {e}")),
        Some(Ok(w)) => Some(w),
        None => None,
    };
    let count = |n: Option<u32>| n.unwrap_or(0) as usize;
    let policy = coffer_engine::forget::Policy {
        last: count(r.keep_last),
        hourly: count(r.keep_hourly),
        daily: count(r.keep_daily),
        weekly: count(r.keep_weekly),
        monthly: count(r.keep_monthly),
        yearly: count(r.keep_yearly),
        within,
        tags: r.keep_tags.clone(),
    };
    // The engine's own rule: it refuses a policy that would forget all.
    policy.is_empty().then(|| {
        "spec.retention keeps nothing: set keepLast, keepHourly, keepDaily, keepWeekly, \
         keepMonthly, keepYearly, keepWithin or keepTags, or remove spec.retention to keep \
         every snapshot"
            .to_string()
    })
}

/// The retention pod's name, in coffer's namespace.
fn retention_pod_name(bs: &BackupSchedule) -> String {
    home_name(
        "forget",
        &bs.namespace().unwrap_or_default(),
        &bs.name_any(),
    )
}

/// What one pass over a schedule does, decided from what it observed (the
/// schedule, its runs, the time) by [`plan_pass`]; [`reconcile`] carries
/// it out.
#[derive(Debug, PartialEq)]
pub(crate) struct Pass {
    /// The status as the pass leaves it (retention and the runs' names,
    /// which need the API, are filled in by the actions).
    pub(crate) status: BackupScheduleStatus,
    /// Retention due for the runs of this time (the time they were made
    /// for), when it has not been applied yet.
    pub(crate) retention: Option<Timestamp>,
    /// What to start.
    pub(crate) step: Step,
    /// Finished runs of older times past the history limits: deleted.
    pub(crate) expired: Vec<String>,
}

/// What a pass starts.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// The schedule does not parse (the status says why): wait for a change.
    Invalid,
    /// A pass claimed time `at` and stopped before every run existed (a
    /// crash, an API error): make the rest, after canceling `cancel`
    /// (concurrencyPolicy Replace).
    Resume { at: Timestamp, cancel: Vec<String> },
    /// Make the runs of time `at` now, after canceling `cancel`; claimed at
    /// the version read, so a pass on a stale copy fires nothing.
    Fire { at: Timestamp, cancel: Vec<String> },
    /// A time came while `running` still run (concurrencyPolicy Forbid).
    Skip { running: Vec<String> },
    /// Nothing to start until this long from now (never: `None`).
    Wait(Option<Duration>),
}

/// The runs of schedule `bs` (among `runs`) to delete: those of the times
/// past `successfulRunsHistoryLimit` and `failedRunsHistoryLimit`, as
/// [`past_history_limits`] counts them; the time the schedule's status
/// last recorded is kept as well.
pub(crate) fn expired_runs<K: RunObject>(
    bs: &BackupSchedule,
    runs: &[K],
    now: chrono::DateTime<Utc>,
) -> Vec<String> {
    let own = runs_of(bs, runs);
    let limits = HistoryLimits {
        successful: bs
            .spec
            .successful_runs_history_limit
            .unwrap_or(crate::crd::DEFAULT_SUCCESSFUL_HISTORY),
        failed: bs
            .spec
            .failed_runs_history_limit
            .unwrap_or(crate::crd::DEFAULT_FAILED_HISTORY),
    };
    let recorded = bs.status.as_ref().and_then(|s| s.last_schedule_time);
    past_history_limits(&own, recorded, limits, now)
}

/// The runs of `runs` that schedule `bs` owns.
fn runs_of<'a, K: RunObject>(bs: &BackupSchedule, runs: &'a [K]) -> Vec<&'a K> {
    runs.iter()
        .filter(|vb| {
            vb.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == bs.uid().as_ref())
        })
        .collect()
}

/// How many of a schedule's latest times keep their runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HistoryLimits {
    /// Times whose runs all succeeded.
    pub(crate) successful: u32,
    /// Times with a failed or canceled run.
    pub(crate) failed: u32,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            successful: crate::crd::DEFAULT_SUCCESSFUL_HISTORY,
            failed: crate::crd::DEFAULT_FAILED_HISTORY,
        }
    }
}

/// The names of one schedule's `runs` to delete: those of the times past
/// `limits.successful` (times whose runs all succeeded) and `limits.failed`
/// (times with a failed or canceled run), newest kept. A time with a run
/// still going counts for neither, and the latest time (of the runs, or
/// `recorded` if later) is always kept: a schedule goes on from its latest
/// run. A run's time is its `coffer.dev/scheduled-at`, or its creation.
pub(crate) fn past_history_limits<K: RunObject>(
    runs: &[&K],
    recorded: Option<Timestamp>,
    limits: HistoryLimits,
    now: chrono::DateTime<Utc>,
) -> Vec<String> {
    let mut times: BTreeMap<Timestamp, Vec<&K>> = BTreeMap::new();
    for vb in runs {
        let at = scheduled_at(*vb).unwrap_or_else(|| Timestamp::new(created_at(*vb, now)));
        times.entry(at).or_default().push(vb);
    }
    let latest = recorded
        .into_iter()
        .chain(times.keys().next_back().copied())
        .max();
    let phase = |vb: &K| vb.run_status().map(|s| s.phase).unwrap_or_default();
    let (mut keep_ok, mut keep_failed) = (limits.successful, limits.failed);
    let mut expired = Vec::new();
    for (at, made) in times.iter().rev() {
        if !made.iter().all(|vb| phase(vb).is_final()) {
            continue;
        }
        let ok = made
            .iter()
            .all(|vb| matches!(phase(vb), Phase::Completed | Phase::PartiallyFailed));
        let left = if ok { &mut keep_ok } else { &mut keep_failed };
        if Some(*at) == latest || *left > 0 {
            *left = left.saturating_sub(1);
            continue;
        }
        expired.extend(made.iter().map(|vb| vb.name_any()));
    }
    expired.sort();
    expired
}

/// Why a schedule's spec cannot be carried out, told in its status: with
/// `application`, the fields that choose volumes do not apply.
fn spec_problem(bs: &BackupSchedule) -> Option<String> {
    let spec = &bs.spec;
    spec.application.as_ref()?;
    let set: Vec<&str> = [
        (spec.selector != Selector::default(), "selector"),
        (!spec.volumes.is_empty(), "volumes"),
        (spec.method != BackupMethod::default(), "method"),
        (!spec.excludes.is_empty(), "excludes"),
    ]
    .into_iter()
    .filter_map(|(set, field)| set.then_some(field))
    .collect();
    (!set.is_empty()).then(|| {
        format!(
            "spec.{} choose(s) volumes and cannot be set with spec.application: an application \
             backup takes every claim in scope; put a label selector in \
             spec.application.selector",
            set.join(", spec.")
        )
    })
}

/// Plans a pass over schedule `bs` whose runs (VolumeBackups or
/// ApplicationBackups labelled with its name) are `runs`, at `now`.
pub(crate) fn plan_pass<K: RunObject>(
    bs: &BackupSchedule,
    runs: &[K],
    now: chrono::DateTime<Utc>,
) -> Pass {
    let ns = bs.namespace().unwrap_or_default();
    let name = bs.name_any();
    let mut st = bs.status.clone().unwrap_or_default();
    let now_s = Timestamp::new(now);
    let generation = bs.meta().generation;
    let expired = expired_runs(bs, runs, now);
    let pass = |mut status: BackupScheduleStatus, retention, step| Pass {
        status: {
            status.observed_generation = generation;
            for c in &mut status.conditions {
                c.observed_generation = generation;
            }
            status
        },
        retention,
        step,
        expired: expired.clone(),
    };
    let parsed = match spec_problem(bs) {
        Some(why) => Err(("InvalidSpec", why)),
        None => Schedule::parse(&bs.spec.schedule, &format!("{ns}/{name}"))
            .map_err(|e| ("InvalidSchedule", e.to_string())),
    };
    let schedule = match parsed {
        Ok(s) => s,
        Err((reason, why)) => {
            set_condition(&mut st.conditions, "Scheduled", false, reason, why, now_s);
            st.next_schedule_time = None;
            return pass(st, None, Step::Invalid);
        }
    };
    let mine = runs_of(bs, runs);
    let is_final = |vb: &K| vb.run_status().is_some_and(|s| s.phase.is_final());
    let succeeded = |vb: &K| {
        matches!(
            vb.run_status().map(|s| s.phase),
            Some(Phase::Completed | Phase::PartiallyFailed)
        )
    };
    let active: Vec<String> = mine
        .iter()
        .filter(|vb| !is_final(vb))
        .map(|vb| vb.name_any())
        .collect();
    let last_tick = st.last_schedule_time;
    let tick_runs: Vec<&K> = mine
        .iter()
        .copied()
        .filter(|vb| last_tick.is_some() && scheduled_at(*vb) == last_tick)
        .collect();
    let replace = bs.spec.concurrency_policy == ConcurrencyPolicy::Replace;
    if let Some(at) = last_tick.filter(|t| st.creating == Some(*t)) {
        // Replace had to cancel the older runs first.
        let cancel = if replace {
            active
                .iter()
                .filter(|n| !tick_runs.iter().any(|vb| vb.name_any() == **n))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        st.creating = None;
        return pass(st, None, Step::Resume { at, cancel });
    }
    st.active = active.clone();
    // Any run of this schedule that succeeded counts, also an older time's
    // that finished after a newer one (concurrencyPolicy Allow).
    let done = mine
        .iter()
        .filter(|vb| succeeded(vb))
        .filter_map(|vb| vb.run_status()?.completion_time)
        .max();
    if done > st.last_successful_time {
        st.last_successful_time = done;
    }
    let mut retention = None;
    if !tick_runs.is_empty() && tick_runs.iter().all(|vb| is_final(vb)) {
        let failed: Vec<String> = tick_runs
            .iter()
            .filter(|vb| !succeeded(vb))
            .map(|vb| {
                let m = vb.run_status().and_then(|s| s.message.clone());
                format!("{}: {}", vb.name_any(), m.unwrap_or_default())
            })
            .collect();
        let (ok, reason, message) = if failed.is_empty() {
            (
                true,
                "Completed",
                format!("{} run(s) completed", tick_runs.len()),
            )
        } else {
            (false, "RunsFailed", failed.join("; "))
        };
        set_condition(
            &mut st.conditions,
            "LastRunSucceeded",
            ok,
            reason,
            message,
            now_s,
        );
        let applied = |after: &Timestamp| {
            st.last_retention
                .as_ref()
                .is_some_and(|r| &r.after == after)
        };
        if bs.spec.retention.is_some() && failed.len() < tick_runs.len() {
            retention = last_tick.filter(|after| !applied(after));
        }
    }
    let created = created_at(bs, now);
    let last = st
        .last_schedule_time
        .max(st.last_skipped_time)
        .map(Timestamp::at);
    let trigger = bs.annotations().get(BACKUP_NOW).map(String::as_str);
    match tick(
        Some(&schedule),
        bs.spec.paused,
        trigger,
        st.last_trigger.as_deref(),
        last,
        created,
        now,
    ) {
        Tick::Fire { trigger } => {
            // A time, to the millisecond: two triggers in one second are
            // two times.
            let at = Timestamp::new(now);
            st.last_trigger = trigger.or(st.last_trigger.clone());
            if !active.is_empty() && bs.spec.concurrency_policy == ConcurrencyPolicy::Forbid {
                st.last_skipped_time = Some(at);
                return pass(st, retention, Step::Skip { running: active });
            }
            st.last_schedule_time = Some(at);
            st.creating = Some(at);
            let cancel = if replace { active } else { Vec::new() };
            pass(st, retention, Step::Fire { at, cancel })
        }
        Tick::Wait(next) => {
            st.next_schedule_time = next.map(Timestamp::new);
            let (ok, reason) = if bs.spec.paused {
                (false, "Paused")
            } else {
                (true, "Scheduled")
            };
            set_condition(
                &mut st.conditions,
                "Scheduled",
                ok,
                reason,
                String::new(),
                now_s,
            );
            let wait =
                next.map(|n| (n - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_secs(1));
            pass(st, retention, Step::Wait(wait))
        }
    }
}

/// Reconciles one schedule: observes its runs, plans the pass
/// ([`plan_pass`]), then carries the plan out.
pub(crate) async fn reconcile(bs: Arc<BackupSchedule>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if bs.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if bs.spec.application.is_some() {
        reconcile_runs::<ApplicationBackup>(bs, ctx).await
    } else {
        reconcile_runs::<VolumeBackup>(bs, ctx).await
    }
}

/// [`reconcile`] of a schedule whose runs are of kind `K`.
async fn reconcile_runs<K: RunObject>(
    bs: Arc<BackupSchedule>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let ns = bs.namespace().unwrap_or_default();
    let name = bs.name_any();
    let kind = K::kind(&());
    let old = bs.status.clone().unwrap_or_default();
    let runs = Api::<K>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={}", label_value(&name))))
        .await
        .map_err(kube_err(format!(
            "listing the {kind}s of schedule {ns}/{name}"
        )))?
        .items;
    let Pass {
        status: mut st,
        retention: due,
        step,
        expired,
    } = plan_pass(&bs, &runs, Utc::now());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    for run in &expired {
        // Its snapshot stays in the repository; retention decides about it.
        delete(&api, run, &format!("{kind} {ns}/{run}")).await?;
        tracing::info!(
            namespace = ns,
            schedule = name,
            run,
            "past the history limit: deleted"
        );
    }
    match step {
        Step::Invalid => {
            write_status(&ctx, &bs, &old, &st, false).await?;
            return Ok(Action::await_change());
        }
        Step::Resume { at, cancel: older } => {
            tracing::info!(
                namespace = ns,
                schedule = name,
                time = %at,
                "creating the rest of a claimed time's runs"
            );
            cancel::<K>(&ctx, &ns, &older).await?;
            let planned = Runs::of(&ctx, &bs).await?;
            planned.create(&ctx, &bs, at).await?;
            write_status(&ctx, &bs, &old, &st, false).await?;
            return Ok(Action::requeue(Duration::ZERO));
        }
        _ => {}
    }
    let mut requeue: Option<Duration> = None;
    let last_tick = old.last_schedule_time;
    if let (Some(policy), Some(after)) = (&bs.spec.retention, &due) {
        requeue = retention(&ctx, &bs, policy, *after, &mut st).await?;
        // Whatever failed it (the policy, the repository, the pod, the
        // mover's own report), once per time.
        let error = st
            .last_retention
            .as_ref()
            .filter(|r| &r.after == after)
            .and_then(|r| r.error.clone());
        if let Some(why) = error {
            ctx.reporter
                .event_on(
                    bs.as_ref(),
                    "Retention",
                    EventType::Warning,
                    "RetentionFailed",
                    why,
                )
                .await;
        }
    }
    retention_condition(&mut st, Timestamp::now());
    // A finished retention pod goes; one left Terminating (a lost node)
    // sends no event, so it is looked at again past the limit.
    if st.last_retention.as_ref().map(|r| &r.after) == last_tick.as_ref()
        && delete_mover(
            &ctx,
            &ctx.opts.namespace,
            &retention_pod_name(&bs),
            std::slice::from_ref(&ns),
        )
        .await?
    {
        let again = ctx.opts.terminating_limit + TERMINATING_RECHECK;
        requeue = Some(requeue.map_or(again, |r| r.min(again)));
    }
    match step {
        Step::Fire { at, cancel: older } => {
            let planned = Runs::of(&ctx, &bs).await?;
            st.active = planned.names(&name, at);
            if !write_status(&ctx, &bs, &old, &st, true).await? {
                return Ok(Action::requeue(Duration::ZERO));
            }
            cancel::<K>(&ctx, &ns, &older).await?;
            planned.create(&ctx, &bs, at).await?;
            let mut created = st.clone();
            created.creating = None;
            write_status(&ctx, &bs, &st, &created, false).await?;
            Ok(Action::requeue(Duration::ZERO))
        }
        Step::Skip { running } => {
            if write_status(&ctx, &bs, &old, &st, true).await? {
                ctx.reporter.event_on(bs.as_ref(), "Schedule", EventType::Normal, "Skipped", format!("the runs of the previous time are still going ({}); concurrencyPolicy is Forbid", running.join(", "))).await;
            }
            Ok(Action::requeue(Duration::ZERO))
        }
        Step::Wait(wait) => {
            write_status(&ctx, &bs, &old, &st, false).await?;
            Ok(match requeue.into_iter().chain(wait).min() {
                Some(d) => Action::requeue(d),
                None => Action::await_change(),
            })
        }
        Step::Invalid | Step::Resume { .. } => Ok(Action::await_change()),
    }
}

/// The RetentionApplied condition, from the last retention's result.
fn retention_condition(st: &mut BackupScheduleStatus, now_s: Timestamp) {
    let Some(r) = &st.last_retention else {
        return;
    };
    let ok = r.error.is_none();
    let msg = match &r.error {
        Some(e) => e.clone(),
        None => format!(
            "{} kept, {} forgotten, over {} origin(s)",
            r.kept, r.removed, r.origins
        ),
    };
    set_condition(
        &mut st.conditions,
        "RetentionApplied",
        ok,
        if ok { "Applied" } else { "Failed" },
        msg,
        now_s,
    );
}

/// Drops a schedule's gauges when it is deleted (a deleted object is never
/// reconciled). Runs as long as the controller leads.
pub(crate) async fn forget_deleted(client: kube::Client, ctx: Arc<Ctx>) {
    use futures::StreamExt;
    use kube::runtime::{watcher, WatchStreamExt};
    let api = Api::<BackupSchedule>::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = events.next().await {
        if let Ok(watcher::Event::Delete(bs)) = ev {
            ctx.schedule_gauges.forget(&bs);
        }
    }
}

/// Writes the fields the controller owns (the retention mover writes
/// `lastRetention` itself), when they changed; with `at_version`, only if
/// the schedule is still the version read. Returns false when it was not.
async fn write_status(
    ctx: &Ctx,
    bs: &BackupSchedule,
    old: &BackupScheduleStatus,
    st: &BackupScheduleStatus,
    at_version: bool,
) -> Result<bool, Error> {
    ctx.schedule_gauges.export(bs, st);
    if old == st {
        return Ok(true);
    }
    let ns = bs.namespace().unwrap_or_default();
    let mut fields = json!({
        "lastScheduleTime": st.last_schedule_time,
        "lastSkippedTime": st.last_skipped_time,
        "lastSuccessfulTime": st.last_successful_time,
        "nextScheduleTime": st.next_schedule_time,
        "lastTrigger": st.last_trigger,
        "active": st.active,
        "creating": st.creating,
        "conditions": st.conditions,
        "observedGeneration": st.observed_generation,
    });
    if st.last_retention != old.last_retention {
        fields["lastRetention"] = json!(st.last_retention);
    }
    let version = at_version.then(|| bs.resource_version()).flatten();
    match patch_status::<BackupSchedule>(&ctx.client, &ns, &bs.name_any(), fields, version).await {
        Ok(w) => Ok(w == Written::Applied),
        Err(e) => Err(kube_err(format!(
            "writing the status of schedule {ns}/{}",
            bs.name_any()
        ))(e)),
    }
}

/// Cancels runs (concurrencyPolicy Replace).
async fn cancel<K: RunObject>(ctx: &Ctx, ns: &str, runs: &[String]) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    for r in runs {
        match api
            .patch(
                r,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"cancel": true}})),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(kube_err(format!("canceling {} {ns}/{r}", K::kind(&())))(e)),
        }
    }
    Ok(())
}

/// What one time of a schedule makes.
enum Runs {
    /// One VolumeBackup per `(pod, volume)` (Filesystem, Command) or PVC
    /// (Snapshot): [`targets`].
    Volumes(Vec<(Option<String>, String)>),
    /// One ApplicationBackup.
    Application,
}

impl Runs {
    /// What schedule `bs` makes now.
    async fn of(ctx: &Ctx, bs: &BackupSchedule) -> Result<Runs, Error> {
        Ok(match bs.spec.application {
            Some(_) => Runs::Application,
            None => Runs::Volumes(targets(ctx, bs).await?),
        })
    }

    /// The names of the runs of time `at`.
    fn names(&self, schedule: &str, at: Timestamp) -> Vec<String> {
        match self {
            Runs::Volumes(targets) => targets.iter().map(|t| run_name(schedule, t, at)).collect(),
            Runs::Application => vec![application_run_name(schedule, at)],
        }
    }

    /// Creates the runs of time `at`.
    async fn create(&self, ctx: &Ctx, bs: &BackupSchedule, at: Timestamp) -> Result<(), Error> {
        match self {
            Runs::Volumes(targets) => fire(ctx, bs, targets, at).await,
            Runs::Application => fire_application(ctx, bs, at).await,
        }
    }
}

/// The volumes a schedule backs up: `(pod, volume)` for Filesystem, PVC
/// names for Snapshot, `(pod, "command")` for the dumps of Command.
async fn targets(ctx: &Ctx, bs: &BackupSchedule) -> Result<Vec<(Option<String>, String)>, Error> {
    let ns = bs.namespace().unwrap_or_default();
    let lp = ListParams::default().labels(&bs.spec.selector.to_query());
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&lp)
        .await
        .map_err(kube_err(format!("listing pods in {ns}")))?
        .items;
    let wanted = |v: &str| bs.spec.volumes.is_empty() || bs.spec.volumes.iter().any(|w| w == v);
    let mut out: BTreeSet<(Option<String>, String)> = BTreeSet::new();
    for p in &pods {
        if p.meta().deletion_timestamp.is_some() || made_by_us(p) {
            continue;
        }
        if bs.spec.method == BackupMethod::Command {
            // The pods that have a dump.
            if p.annotations().contains_key(crate::hooks::COMMAND) {
                out.insert((Some(p.name_any()), "command".into()));
            }
            continue;
        }
        for v in p.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let claim = crate::pods::volume_claim(p, &v.name).flatten();
            let named = !bs.spec.volumes.is_empty() && wanted(&v.name);
            if !(wanted(&v.name) && (claim.is_some() || named)) {
                continue;
            }
            match (bs.spec.method, claim) {
                (BackupMethod::Filesystem, _) => {
                    out.insert((Some(p.name_any()), v.name.clone()));
                }
                (BackupMethod::Snapshot, Some(c)) => {
                    out.insert((None, c));
                }
                (BackupMethod::Snapshot | BackupMethod::Command, None) => {}
                (BackupMethod::Command, Some(_)) => {}
            }
        }
    }
    if bs.spec.method == BackupMethod::Snapshot {
        for c in Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .list(&lp)
            .await
            .map_err(kube_err(format!("listing PVCs in {ns}")))?
            .items
        {
            // Never a clone, even under an empty selector.
            if !made_by_us(&c) {
                out.insert((None, c.name_any()));
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The groups of a Snapshot schedule's `pvcs`: a PVC used by a pod with a
/// controller (a StatefulSet, a ReplicaSet, ...) belongs to that workload,
/// named `Kind/name`. Only workloads with two PVCs or more are returned, as
/// PVC to workload.
pub fn workload_groups(pods: &[Pod], pvcs: &[String]) -> BTreeMap<String, String> {
    let mut of = BTreeMap::new();
    let mut pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| p.name_any());
    for p in pods {
        let Some(owner) = p
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
        else {
            continue;
        };
        let workload = format!("{}/{}", owner.kind, owner.name);
        for v in p.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(c) = &v.persistent_volume_claim {
                if pvcs.contains(&c.claim_name) {
                    of.entry(c.claim_name.clone())
                        .or_insert_with(|| workload.clone());
                }
            }
        }
    }
    let mut size: BTreeMap<String, usize> = BTreeMap::new();
    for w in of.values() {
        *size.entry(w.clone()).or_default() += 1;
    }
    of.retain(|_, w| size[w.as_str()] > 1);
    of
}

/// Time `at` as digits, for names.
fn stamp(at: Timestamp) -> String {
    at.to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

/// The name of the ApplicationBackup of time `at`.
fn application_run_name(schedule: &str, at: Timestamp) -> String {
    object_name(&[schedule, &stamp(at)])
}

/// The metadata of a schedule's run `run` of time `at`: labelled with the
/// schedule, annotated with the time, owned by the schedule.
fn run_metadata(bs: &BackupSchedule, run: &str, at: Timestamp) -> serde_json::Value {
    json!({
        "name": run, "namespace": bs.namespace(),
        "labels": {SCHEDULE_LABEL: label_value(&bs.name_any())},
        "annotations": {SCHEDULED_AT: at},
        "ownerReferences": bs.controller_owner_ref(&()).map(|o| vec![o]),
    })
}

/// Tells in an Event that a run was refused (a policy, a quota): it misses
/// this time, the others go on, and the next time tries again.
async fn refused(ctx: &Ctx, bs: &BackupSchedule, why: String) {
    tracing::warn!(
        namespace = bs.namespace(),
        schedule = bs.name_any(),
        "{why}"
    );
    ctx.reporter
        .event_on(bs, "Schedule", EventType::Warning, "RunRefused", why)
        .await;
}

/// Creates the ApplicationBackup of time `at`: `spec.application` with the
/// schedule's repository and tags.
async fn fire_application(ctx: &Ctx, bs: &BackupSchedule, at: Timestamp) -> Result<(), Error> {
    let ns = bs.namespace().unwrap_or_default();
    let name = bs.name_any();
    let run = application_run_name(&name, at);
    let what = format!("ApplicationBackup {ns}/{run}");
    let mut spec = serde_json::to_value(bs.spec.application.clone().unwrap_or_default())
        .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    spec["repository"] = json!(bs.spec.repository);
    spec["tags"] = json!(schedule_tags(bs));
    let ab: ApplicationBackup = serde_json::from_value(json!({
        "apiVersion": "coffer.dev/v1alpha1", "kind": "ApplicationBackup",
        "metadata": run_metadata(bs, &run, at),
        "spec": spec,
    }))
    .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    let api: Api<ApplicationBackup> = Api::namespaced(ctx.client.clone(), &ns);
    match create(&api, &ab, &what).await {
        Ok(()) => {
            let note = format!("created {run}");
            ctx.reporter
                .event_on(bs, "Schedule", EventType::Normal, "Scheduled", note)
                .await;
            Ok(())
        }
        Err(Error::Refused(why) | Error::Quota(why)) => {
            refused(ctx, bs, why).await;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The tags of every snapshot a schedule makes: its own and
/// `coffer.dev/schedule=NAME`.
fn schedule_tags(bs: &BackupSchedule) -> Vec<String> {
    let mut tags = bs.spec.tags.clone();
    tags.push(schedule_tag(&bs.name_any()));
    tags
}

/// The name of the run of `target` at time `at`.
fn run_name(schedule: &str, target: &(Option<String>, String), at: Timestamp) -> String {
    let stamp = stamp(at);
    match &target.0 {
        Some(pod) => object_name(&[schedule, pod, &target.1, &stamp]),
        None => object_name(&[schedule, &target.1, &stamp]),
    }
}

/// Creates the runs of one time.
async fn fire(
    ctx: &Ctx,
    bs: &BackupSchedule,
    targets: &[(Option<String>, String)],
    at: Timestamp,
) -> Result<(), Error> {
    let ns = bs.namespace().unwrap_or_default();
    let name = bs.name_any();
    if targets.is_empty() {
        let what = if bs.spec.method == BackupMethod::Snapshot {
            "PVC or pod"
        } else {
            "pod"
        };
        let note = format!(
            "no {what} matches selector {:?}",
            bs.spec.selector.to_query()
        );
        ctx.reporter
            .event_on(bs, "Schedule", EventType::Warning, "NothingSelected", note)
            .await;
        return Ok(());
    }
    let api: Api<VolumeBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let groups = if bs.spec.method == BackupMethod::Snapshot {
        let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(kube_err(format!("listing pods in {ns}")))?
            .items;
        let pvcs: Vec<String> = targets.iter().map(|t| t.1.clone()).collect();
        workload_groups(&pods, &pvcs)
    } else {
        BTreeMap::new()
    };
    let stamp = stamp(at);
    let tags = schedule_tags(bs);
    let mut made = Vec::new();
    for target in targets {
        let run = run_name(&name, target, at);
        let mut spec = json!({
            "method": bs.spec.method,
            "repository": bs.spec.repository,
            "tags": tags,
            "excludes": bs.spec.excludes,
        });
        match &target.0 {
            Some(p) => {
                spec["pod"] = json!(p);
                spec["volume"] = json!(target.1);
            }
            None => spec["pvc"] = json!(target.1),
        }
        if let Some(w) = groups.get(&target.1) {
            let size = groups.values().filter(|o| *o == w).count();
            let workload = w.split('/').next_back().unwrap_or_default();
            spec["group"] = json!({"name": object_name(&[&name, workload, &stamp]), "size": size});
        }
        let vb: VolumeBackup = serde_json::from_value(json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
            "metadata": run_metadata(bs, &run, at),
            "spec": spec,
        }))
        .map_err(|e| Error::Invalid(format!("VolumeBackup {ns}/{run}: {e}")))?;
        match create(&api, &vb, &format!("VolumeBackup {ns}/{run}")).await {
            Ok(()) => made.push(run),
            Err(Error::Refused(why) | Error::Quota(why)) => refused(ctx, bs, why).await,
            Err(e) => return Err(e),
        }
    }
    if !made.is_empty() {
        let note = format!("created {}", made.join(", "));
        ctx.reporter
            .event_on(bs, "Schedule", EventType::Normal, "Scheduled", note)
            .await;
    }
    Ok(())
}

/// Runs (or follows) the retention mover for the time `after`. Returns when
/// to look again.
async fn retention(
    ctx: &Ctx,
    bs: &BackupSchedule,
    policy: &Retention,
    after: Timestamp,
    st: &mut BackupScheduleStatus,
) -> Result<Option<Duration>, Error> {
    let ns = bs.namespace().unwrap_or_default();
    let name = bs.name_any();
    let home = ctx.opts.namespace.clone();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &home);
    let pod_name = retention_pod_name(bs);
    let failed = |why: String| RetentionResult {
        after,
        time: Timestamp::now(),
        error: Some(why),
        ..Default::default()
    };
    let Some(pod) = pods
        .get_opt(&pod_name)
        .await
        .map_err(kube_err(format!("reading pod {home}/{pod_name}")))?
    else {
        if let Some(why) = retention_problem(policy) {
            st.last_retention = Some(failed(why));
            return Ok(None);
        }
        let repo = Api::<BackupRepository>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&bs.spec.repository)
            .await
            .map_err(kube_err(format!(
                "reading BackupRepository {ns}/{}",
                bs.spec.repository
            )))?;
        let Some(repo) = repo else {
            st.last_retention = Some(failed(format!(
                "BackupRepository {ns}/{} not found",
                bs.spec.repository
            )));
            return Ok(None);
        };
        // A repository the administrator does not allow is refused like a pod.
        let made = async {
            let args = MoverArgs::Forget(Box::new(ForgetArgs {
                common: common_args(ctx, &ns, &name, &repo)?,
                tag: schedule_tag(&name),
                after,
                cluster: ctx.opts.cluster.clone(),
                applications: bs.spec.application.is_some(),
                running: st.active.clone(),
                keep: KeepArgs::from(policy),
            }))
            .to_argv();
            let labels = std::collections::BTreeMap::from([
                (SCHEDULE_LABEL.to_string(), label_value(&name)),
                crate::names::managed_by(),
            ]);
            let mut p = mover_pod(&MoverPod {
                args,
                labels: &labels,
                ..ctx.mover(&pod_name, &home, &repo)
            });
            p.metadata.annotations = Some(run_annotation(&ns, &name));
            create_mover(ctx, &p, &StatusOf::of(bs), &SecretsOf::of(&[&repo])).await
        }
        .await;
        if let Err(Error::Refused(why) | Error::Quota(why)) = made {
            st.last_retention = Some(failed(why));
            return Ok(None);
        }
        made?;
        return Ok(Some(ctx.opts.prepare_timeout));
    };
    match mover_state(ctx, &pod).await {
        MoverState::Running(again) => return Ok(again),
        MoverState::Stuck(why) | MoverState::Exited(Some(why)) => {
            st.last_retention = Some(failed(why));
            return Ok(None);
        }
        MoverState::Exited(None) => {}
    }
    // The mover wrote lastRetention before it exited; the next pass sees it
    // and deletes the pod.
    let fresh = Api::<BackupSchedule>::namespaced(ctx.client.clone(), &ns)
        .get_status(&name)
        .await
        .map_err(kube_err(format!("reading BackupSchedule {ns}/{name}")))?;
    let wrote = fresh
        .status
        .and_then(|s| s.last_retention)
        .filter(|r| r.after == after);
    st.last_retention = Some(wrote.unwrap_or_else(|| {
        failed(format!(
            "retention pod {ns}/{pod_name} exited without writing its result"
        ))
    }));
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::stamp;
    use crate::time::utc as t;

    /// An hourly schedule made at midnight, with `spec` and `status` merged
    /// in.
    fn schedule(spec: serde_json::Value, status: serde_json::Value) -> BackupSchedule {
        let mut v = json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "nightly", "namespace": "shop", "uid": "bs-1",
                         "generation": 4, "creationTimestamp": "2026-03-01T00:00:00Z"},
            "spec": {"schedule": "0 * * * *"},
            "status": status,
        });
        for (k, x) in spec.as_object().unwrap() {
            v["spec"][k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    /// A run of the schedule made for time `at`, in `phase` (none: new).
    fn run(name: &str, at: &str, phase: Option<&str>) -> VolumeBackup {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop",
                         "annotations": {SCHEDULED_AT: at},
                         "ownerReferences": [{"apiVersion": "coffer.dev/v1alpha1", "kind": "BackupSchedule", "name": "nightly", "uid": "bs-1"}]},
            "spec": {"pod": "db-0", "volume": "data"},
            "status": phase.map(|p| json!({"phase": p, "message": format!("{name} {p}"), "completionTime": "2026-03-01T01:05:00Z"})),
        }))
        .unwrap()
    }

    fn condition(st: &BackupScheduleStatus, kind: &str) -> (String, String, String) {
        let c = st.conditions.iter().find(|c| c.type_ == kind).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn a_pass_waits_for_the_next_time_and_fires_when_it_comes() {
        let bs = schedule(json!({}), json!(null));
        let waiting = plan_pass::<VolumeBackup>(&bs, &[], t("2026-03-01T00:30:00Z"));
        assert_eq!(
            waiting.step,
            Step::Wait(Some(Duration::from_secs(30 * 60 + 1)))
        );
        assert_eq!(
            waiting.status.next_schedule_time,
            Some(stamp("2026-03-01T01:00:00Z"))
        );
        assert_eq!(condition(&waiting.status, "Scheduled").1, "Scheduled");
        assert_eq!(waiting.status.observed_generation, Some(4));
        assert!(waiting
            .status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(4)));
        let firing = plan_pass::<VolumeBackup>(&bs, &[], t("2026-03-01T01:00:02Z"));
        let at = stamp("2026-03-01T01:00:02.000Z");
        assert_eq!(firing.step, Step::Fire { at, cancel: vec![] });
        assert_eq!(firing.status.last_schedule_time, Some(at));
        assert_eq!(firing.status.creating, Some(at));
        // Paused: nothing until it is resumed.
        let paused = plan_pass::<VolumeBackup>(
            &schedule(json!({"paused": true}), json!(null)),
            &[],
            t("2026-03-01T05:00:00Z"),
        );
        assert_eq!(paused.step, Step::Wait(None));
        assert_eq!(condition(&paused.status, "Scheduled").1, "Paused");
    }

    #[test]
    fn runs_of_times_past_the_history_limits_are_deleted_and_the_latest_time_never() {
        let times = |n: u32| format!("2026-03-01T0{n}:00:00.000Z");
        let runs = [
            run("a", &times(1), Some("Completed")),
            run("b", &times(2), Some("Failed")),
            run("c", &times(3), Some("Completed")),
            run("d", &times(3), Some("PartiallyFailed")),
            run("e", &times(4), Some("Canceled")),
            run("f", &times(5), Some("Completed")),
            run("g", &times(6), Some("InProgress")),
        ];
        let status = json!({"lastScheduleTime": times(6)});
        let now = t("2026-03-01T07:00:00Z");
        // The defaults: three times that succeeded, one that failed.
        let bs = schedule(json!({}), status.clone());
        assert_eq!(expired_runs(&bs, &runs, now), ["b"]);
        assert_eq!(plan_pass(&bs, &runs, now).expired, ["b"]);
        // One and none: the time still going counts for neither.
        let bs = schedule(
            json!({"successfulRunsHistoryLimit": 1, "failedRunsHistoryLimit": 0}),
            status,
        );
        assert_eq!(expired_runs(&bs, &runs, now), ["a", "b", "c", "d", "e"]);
        // The latest time stays whatever the limits (its runs are the
        // schedule's conditions), and runs of another owner are not ours.
        let mut stranger = run("x", &times(1), Some("Completed"));
        stranger.metadata.owner_references = None;
        let bs = schedule(
            json!({"successfulRunsHistoryLimit": 0, "failedRunsHistoryLimit": 0}),
            json!({"lastScheduleTime": times(5)}),
        );
        let runs = [&runs[..6], &[stranger]].concat();
        assert_eq!(expired_runs(&bs, &runs, now), ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn a_bad_schedule_is_said_and_nothing_fires() {
        let bs = schedule(json!({"schedule": "at teatime"}), json!(null));
        let p = plan_pass::<VolumeBackup>(&bs, &[], t("2026-03-01T05:00:00Z"));
        assert_eq!(p.step, Step::Invalid);
        let (ok, reason, message) = condition(&p.status, "Scheduled");
        assert_eq!((ok.as_str(), reason.as_str()), ("False", "InvalidSchedule"));
        assert!(message.contains("at teatime"), "{message}");
    }

    #[test]
    fn the_policies_cancel_skip_or_leave_a_time_still_running() {
        let last = "2026-03-01T01:00:00.000Z";
        let status = json!({"lastScheduleTime": last});
        let runs = [run("old-1", last, Some("InProgress"))];
        let now = t("2026-03-01T02:00:01Z");
        let at = stamp("2026-03-01T02:00:01.000Z");
        let replace = plan_pass(
            &schedule(json!({"concurrencyPolicy": "Replace"}), status.clone()),
            &runs,
            now,
        );
        assert_eq!(
            replace.step,
            Step::Fire {
                at,
                cancel: vec!["old-1".into()]
            }
        );
        let forbid = plan_pass(
            &schedule(json!({"concurrencyPolicy": "Forbid"}), status.clone()),
            &runs,
            now,
        );
        assert_eq!(
            forbid.step,
            Step::Skip {
                running: vec!["old-1".into()]
            }
        );
        assert_eq!(forbid.status.last_skipped_time, Some(at));
        assert_eq!(
            forbid.status.last_schedule_time,
            Some(stamp(last)),
            "a skip is not a time made"
        );
        let allow = plan_pass(
            &schedule(json!({"concurrencyPolicy": "Allow"}), status),
            &runs,
            now,
        );
        assert_eq!(allow.step, Step::Fire { at, cancel: vec![] });
        assert_eq!(allow.status.active, vec!["old-1".to_string()]);
    }

    #[test]
    fn a_claimed_time_whose_runs_were_not_all_made_is_finished_first() {
        let last = "2026-03-01T01:00:00.000Z";
        let bs = schedule(
            json!({"concurrencyPolicy": "Replace"}),
            json!({"lastScheduleTime": last, "creating": last}),
        );
        let runs = [
            run("older", "2026-03-01T00:00:00.000Z", Some("InProgress")),
            run("made", last, None),
        ];
        let p = plan_pass(&bs, &runs, t("2026-03-01T03:00:00Z"));
        assert_eq!(
            p.step,
            Step::Resume {
                at: stamp(last),
                cancel: vec!["older".into()]
            }
        );
        assert_eq!(p.status.creating, None);
    }

    /// A schedule of application backups: its runs are ApplicationBackups,
    /// planned as VolumeBackups are; the fields that choose volumes are
    /// refused beside `application`, naming them.
    #[test]
    fn a_schedule_of_application_backups_plans_its_runs_and_refuses_volume_fields() {
        let last = "2026-03-01T01:00:00.000Z";
        let spec = json!({"application": {"includedResources": ["configmaps"]},
                          "retention": {"keepLast": 1}});
        let app = |phase: &str| -> ApplicationBackup {
            let vb = serde_json::to_value(run("nightly-1", last, Some(phase))).unwrap();
            serde_json::from_value(json!({
                "apiVersion": "coffer.dev/v1alpha1", "kind": "ApplicationBackup",
                "metadata": vb["metadata"], "spec": {}, "status": vb["status"],
            }))
            .unwrap()
        };
        let now = t("2026-03-01T01:30:00Z");
        let bs = schedule(spec.clone(), json!({"lastScheduleTime": last}));
        let p = plan_pass(&bs, &[app("PartiallyFailed")], now);
        assert_eq!(p.retention, Some(stamp(last)));
        assert_eq!(condition(&p.status, "LastRunSucceeded").0, "True");
        assert_eq!(
            plan_pass(&bs, &[app("Failed")], now).retention,
            None,
            "a failed application backup forgets nothing"
        );
        let fired = plan_pass::<ApplicationBackup>(&bs, &[], t("2026-03-01T02:00:01Z"));
        assert!(matches!(fired.step, Step::Fire { .. }), "{:?}", fired.step);
        assert_eq!(
            application_run_name("nightly", stamp("2026-03-01T02:00:01.000Z")),
            "nightly-20260301020001000"
        );

        let mut bad = spec;
        bad["selector"] = json!({"matchLabels": {"app": "db"}});
        bad["volumes"] = json!(["data"]);
        let p = plan_pass::<ApplicationBackup>(&schedule(bad, json!(null)), &[], now);
        assert_eq!(p.step, Step::Invalid);
        let (ok, reason, why) = condition(&p.status, "Scheduled");
        assert_eq!((ok.as_str(), reason.as_str()), ("False", "InvalidSpec"));
        assert!(
            why.starts_with("spec.selector, spec.volumes choose(s) volumes"),
            "{why}"
        );
        assert!(why.contains("spec.application.selector"), "{why}");
    }

    #[test]
    fn a_time_that_is_over_says_which_runs_failed_and_is_retained_once() {
        let last = "2026-03-01T01:00:00.000Z";
        let policy = json!({"retention": {"keepLast": 3}});
        let runs = [
            run("a", last, Some("Completed")),
            run("b", last, Some("Failed")),
            run("c", "2026-03-01T00:00:00.000Z", Some("Completed")),
        ];
        let now = t("2026-03-01T01:30:00Z");
        let p = plan_pass(
            &schedule(policy.clone(), json!({"lastScheduleTime": last})),
            &runs,
            now,
        );
        let (ok, reason, message) = condition(&p.status, "LastRunSucceeded");
        assert_eq!((ok.as_str(), reason.as_str()), ("False", "RunsFailed"));
        assert_eq!(message, "b: b Failed");
        assert_eq!(
            p.retention,
            Some(stamp(last)),
            "one run completed: retention"
        );
        assert_eq!(
            p.status.last_successful_time,
            Some(stamp("2026-03-01T01:05:00Z"))
        );
        // Applied already: not again.
        let applied = json!({"lastScheduleTime": last,
            "lastRetention": {"after": last, "time": "2026-03-01T01:10:00Z", "kept": 1, "removed": 0, "origins": 1}});
        assert_eq!(
            plan_pass(&schedule(policy.clone(), applied), &runs, now).retention,
            None
        );
        // Every run failed: nothing is forgotten.
        let failed = [run("a", last, Some("Failed"))];
        assert_eq!(
            plan_pass(
                &schedule(policy, json!({"lastScheduleTime": last})),
                &failed,
                now
            )
            .retention,
            None
        );
        // A time still running is not over.
        let running = [run("a", last, Some("InProgress"))];
        let p = plan_pass(
            &schedule(json!({}), json!({"lastScheduleTime": last})),
            &running,
            now,
        );
        assert!(p
            .status
            .conditions
            .iter()
            .all(|c| c.type_ != "LastRunSucceeded"));
    }

    #[test]
    fn pvcs_of_one_workload_form_a_group_and_a_lone_pvc_none() {
        let pod = |name: &str, owner: Option<(&str, &str)>, claims: &[&str]| -> Pod {
            let refs: Vec<serde_json::Value> = owner
                .iter()
                .map(|(kind, n)| json!({"apiVersion": "apps/v1", "kind": kind, "name": n, "uid": n, "controller": true}))
                .collect();
            let vols: Vec<serde_json::Value> = claims
                .iter()
                .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
                .collect();
            serde_json::from_value(json!({
                "metadata": {"name": name, "ownerReferences": refs},
                "spec": {"containers": [{"name": "c"}], "volumes": vols},
            }))
            .unwrap()
        };
        let pods = [
            pod(
                "db-1",
                Some(("StatefulSet", "db")),
                &["data-db-1", "wal-db-1"],
            ),
            pod("db-0", Some(("StatefulSet", "db")), &["data-db-0"]),
            pod("web-x", Some(("ReplicaSet", "web-5d8")), &["cache"]),
            pod("lone", None, &["scratch", "data-db-0"]),
            pod(
                "two",
                Some(("ReplicaSet", "two")),
                &["shared", "unselected"],
            ),
        ];
        let pvcs: Vec<String> = [
            "data-db-0",
            "data-db-1",
            "wal-db-1",
            "cache",
            "scratch",
            "shared",
            "orphan",
        ]
        .map(String::from)
        .into();
        let groups = workload_groups(&pods, &pvcs);
        let want: BTreeMap<String, String> = [
            ("data-db-0", "StatefulSet/db"),
            ("data-db-1", "StatefulSet/db"),
            ("wal-db-1", "StatefulSet/db"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .into();
        // A workload with one selected PVC (web, two) and a pod without a
        // controller (lone) make no group; nor does a PVC no pod uses.
        assert_eq!(groups, want);
    }

    #[test]
    fn retention_becomes_forget_flags() {
        let r = Retention {
            keep_last: Some(3),
            keep_daily: Some(7),
            keep_within: Some("30d".into()),
            keep_tags: vec!["keep".into()],
            ..Default::default()
        };
        assert_eq!(
            retention_args(&r).join(" "),
            "--keep-last 3 --keep-daily 7 --keep-within 30d --keep-tag keep"
        );
        assert_eq!(retention_problem(&r), None);
    }

    #[test]
    fn a_retention_that_cannot_be_applied_is_told_before_any_pod_starts() {
        let r = Retention {
            keep_last: Some(3),
            keep_within: Some("soon".into()),
            ..Default::default()
        };
        let why = retention_problem(&r).unwrap();
        assert!(
            why.starts_with("spec.retention.keepWithin: ") && why.contains("\"soon\""),
            "{why}"
        );
        let zeros = Retention {
            keep_last: Some(0),
            ..Default::default()
        };
        for r in [Retention::default(), zeros] {
            let why = retention_problem(&r).unwrap();
            assert!(why.starts_with("spec.retention keeps nothing"), "{why}");
        }
        let tags_only = Retention {
            keep_tags: vec!["pinned".into()],
            ..Default::default()
        };
        assert_eq!(retention_problem(&tags_only), None);
    }
}
