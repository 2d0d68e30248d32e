//! The life of a run that the controller carries (a VolumeBackup by
//! snapshot, a VolumeRestore into a new claim): the finalizer, waiting for
//! quota, the end of a run (status, Event, metrics), and runs whose node
//! agent is gone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;

use crate::crd::{Phase, RunStatus};

use crate::api::{kube_err, Error};
use crate::controller::context::Ctx;
use crate::controller::movers::{mover_state, MoverState};
use crate::names::FINALIZER;
use crate::run::RunObject;
use crate::run::Stage;
use crate::status::{self, Outcome};
use crate::time::remaining;

/// Why the node a run is on is gone, if it is: its Node object is deleted,
/// or not Ready for longer than `limit` (its agent cannot end the run).
pub(crate) fn node_gone(
    name: &str,
    node: Option<&k8s_openapi::api::core::v1::Node>,
    now: chrono::DateTime<chrono::Utc>,
    limit: Duration,
) -> Option<String> {
    let Some(node) = node else {
        return Some(format!("node {name} no longer exists"));
    };
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))?;
    if ready.status == "True" {
        return None;
    }
    let since = ready.last_transition_time.as_ref()?.0.as_second();
    let down = Duration::from_secs(u64::try_from(now.timestamp().checked_sub(since)?).ok()?);
    (down > limit).then(|| {
        format!(
            "node {name} has not been Ready for {} (its Ready condition is {}: {}), so its agent cannot finish the run",
            humantime::format_duration(Duration::from_secs(down.as_secs())),
            ready.status,
            ready.reason.as_deref().unwrap_or("no reason")
        )
    })
}

/// A node agent's run in progress on a node that is gone is ended here,
/// naming the node, after `--lost-node-timeout`: nothing else would end it,
/// and a schedule with concurrencyPolicy Forbid would skip for ever. While
/// the run goes on, it is looked at again now and then.
pub(crate) async fn end_if_node_gone<K: RunObject>(
    ctx: &Ctx,
    run: &K,
    st: &RunStatus,
) -> Result<Action, Error> {
    let (Phase::InProgress, Some(node)) = (st.phase, st.node.as_deref()) else {
        return Ok(Action::await_change());
    };
    if run.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let found = Api::<k8s_openapi::api::core::v1::Node>::all(ctx.client.clone())
        .get_opt(node)
        .await
        .map_err(kube_err(format!("reading node {node}")))?;
    let limit = ctx.opts.lost_node_timeout;
    if let Some(why) = node_gone(node, found.as_ref(), chrono::Utc::now(), limit) {
        ctx.end(run, Outcome::Failed(why), Stage::Running).await?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(
        (limit / 2).clamp(Duration::from_secs(1), Duration::from_secs(300)),
    ))
}

/// How often a run refused for an exhausted quota tries again.
pub(crate) const QUOTA_RETRY: Duration = Duration::from_secs(5);

/// A run refused for an exhausted quota tries again until
/// `--prepare-timeout` after its creation, then fails with the refusal.
pub(crate) async fn quota_wait<K: RunObject>(
    ctx: &Ctx,
    run: &K,
    why: String,
    first_stage: Stage,
) -> Result<Action, Error> {
    let left = remaining(
        run.meta().creation_timestamp.as_ref(),
        ctx.opts.prepare_timeout,
    );
    if left.is_zero() {
        let m = format!(
            "{why} (still refused after --prepare-timeout {})",
            humantime::format_duration(ctx.opts.prepare_timeout)
        );
        ctx.end(run, Outcome::Failed(m), first_stage).await?;
        return Ok(Action::await_change());
    }
    tracing::warn!(
        namespace = run.namespace().unwrap_or_default(),
        run = run.name_any(),
        "{why}; trying again"
    );
    Ok(Action::requeue(left.min(QUOTA_RETRY)))
}

/// After cleanup: the stage `Done` and the run's metrics, then, on the next
/// pass (at the version that write made), the finalizer off.
pub(crate) async fn finish<K: RunObject>(
    ctx: &Ctx,
    run: &K,
    st: &RunStatus,
    kind: &str,
) -> Result<Action, Error> {
    if st.phase.is_final() && Stage::of(st) != Some(Stage::Done) {
        let ns = run.namespace().unwrap_or_default();
        ctx.reporter.run_ended(
            kind,
            &ns,
            st,
            st.progress.as_ref().map(|p| p.bytes_done),
            None,
        );
        let done = RunStatus {
            stage: Some(Stage::Done.into()),
            ..st.clone()
        };
        crate::report::write_run::<K>(&ctx.client, &ns, &run.name_any(), &done, None).await;
        return Ok(Action::requeue(Duration::ZERO));
    }
    remove_finalizer(ctx, run).await?;
    Ok(Action::await_change())
}

/// Adds the cleanup finalizer at the version read; `None` when the run
/// changed meanwhile (it is reconciled again).
pub(crate) async fn add_finalizer<K: RunObject>(ctx: &Ctx, run: &K) -> Result<Option<K>, Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let mut finalizers = run.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patched = api
        .patch(
            &run.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "finalizers": finalizers,
                "resourceVersion": run.resource_version(),
            }})),
        )
        .await;
    match patched {
        Ok(p) => Ok(Some(p)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(kube_err("adding the cleanup finalizer")(e)),
    }
}

pub(crate) async fn remove_finalizer<K: RunObject>(ctx: &Ctx, run: &K) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let rest: Vec<&String> = run
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    match api
        .patch(
            &run.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": rest, "resourceVersion": run.resource_version()}}),
            ),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(kube_err("removing the cleanup finalizer")(e)),
    }
}

impl Ctx /* end */ {
    /// Ends a run that is not over yet (a mover's own result stands): its
    /// final status, then an Event. `Err` when the status
    /// could not be written, so that the reconcile is tried again rather
    /// than leaving the run open with nothing left to wake it.
    pub(crate) async fn end<K: RunObject>(
        &self,
        run: &K,
        outcome: Outcome,
        first_stage: Stage,
    ) -> Result<(), Error> {
        let ns = run.namespace().unwrap_or_default();
        let (phase, note) = match &outcome {
            Outcome::Failed(m) => (Phase::Failed, m.clone()),
            Outcome::Canceled => (Phase::Canceled, "canceled through spec.cancel".into()),
            Outcome::Done { .. } => (Phase::Completed, String::new()),
        };
        let (etype, reason) = crate::report::end_event::<K>(phase);
        let written = crate::report::try_update_run::<K>(&self.client, &ns, &run.name_any(), |s| {
            let stage = s.stage.clone();
            *s = status::finished(s.clone(), outcome.clone());
            s.stage = stage.or(Some(first_stage.into()));
            if s.start_time.is_none() {
                s.start_time = s.completion_time;
            }
        })
        .await?;
        if written.is_some() {
            tracing::info!(namespace = ns, run = run.name_any(), "{reason}: {note}");
            self.reporter.run_event(run, etype, &reason, note).await;
        }
        Ok(())
    }
}

/// Whose a run is, as its spec says.
pub(crate) enum Triage {
    /// The node agent's (a pod's volume): the controller ends it only when
    /// its node is gone.
    NodeAgents,
    /// The controller's.
    Ours,
}

/// A kind of run the controller carries: a VolumeBackup by snapshot, a
/// VolumeRestore into a new claim. Each says what is particular to it; the
/// life of the run ([`reconcile`]) is written once, here.
pub(crate) trait ControllerRun: RunObject + Send + Sync {
    /// Its metrics kind (`snapshot-backup`, `pvc-restore`).
    const METRIC: &'static str;
    /// The stage a claimed run starts in, and the one a run that ends
    /// before any other keeps.
    const FIRST_STAGE: Stage;

    /// Whose it is, and why its spec cannot be carried out (a new run with
    /// such a spec fails at once, naming why).
    fn triage(&self) -> (Triage, Option<String>);

    /// Whether `spec.cancel` is set.
    fn cancel_requested(&self) -> bool;

    /// Step 1: check what the run names, then take it ([`claim`]).
    fn claim(&self, ctx: &Ctx) -> impl Future<Output = Result<Action, Error>> + Send;

    /// The next step of a claimed run.
    fn advance(
        &self,
        ctx: &Ctx,
        st: &RunStatus,
    ) -> impl Future<Output = Result<Action, Error>> + Send;

    /// The objects the run made go; `true` once all are gone.
    fn cleanup(
        &self,
        ctx: &Ctx,
        st: &RunStatus,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// One pass over a run of the controller: a spec it cannot carry out fails
/// it, the node agent's runs are left to it (unless their node is gone), an
/// ended or deleted run is cleaned up and let go, `spec.cancel` ends it,
/// and otherwise it is claimed or taken one step further. A refusal for
/// good fails it; an exhausted quota is waited for.
pub(crate) async fn reconcile<K: ControllerRun>(
    run: Arc<K>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let run = run.as_ref();
    let st = run.run_status().cloned().unwrap_or_default();
    let fresh = st.phase == Phase::New && run.meta().deletion_timestamp.is_none();
    let (whose, invalid) = run.triage();
    if let Some(why) = invalid.filter(|_| fresh) {
        fail(&ctx, run, why).await?;
        return Ok(Action::await_change());
    }
    let finalized = run.finalizers().iter().any(|f| f == FINALIZER);
    if st.phase.is_final() && !finalized && run.meta().deletion_timestamp.is_none() {
        return expire(&ctx, run, &st).await;
    }
    if let Triage::NodeAgents = whose {
        return end_if_node_gone(&ctx, run, &st).await;
    }
    if run.meta().deletion_timestamp.is_some() || st.phase.is_final() {
        if !finalized {
            return Ok(Action::await_change());
        }
        if !run.cleanup(&ctx, &st).await? {
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        return finish(&ctx, run, &st, K::METRIC).await;
    }
    if run.cancel_requested() {
        ctx.end(run, Outcome::Canceled, K::FIRST_STAGE).await?;
        return Ok(Action::requeue(Duration::ZERO));
    }
    let step = match st.phase {
        Phase::New => run.claim(&ctx).await,
        _ => run.advance(&ctx, &st).await,
    };
    match step {
        Err(Error::Quota(why)) => quota_wait(&ctx, run, why, K::FIRST_STAGE).await,
        Err(Error::Refused(why)) => {
            fail(&ctx, run, why).await?;
            Ok(Action::await_change())
        }
        step => step,
    }
}

/// How long finished run `run` is kept yet: `None` for ever (a schedule's
/// run, by owner or by its `coffer.dev/scheduled-at`, whose schedule's
/// history limits decide; one a pod's annotation made, unless that pod is
/// gone (`pod_gone`: it makes no more runs, so its last ones go as one-off
/// runs do); a run with no completion time; a `ttl` of zero), else what is
/// left of `ttl` after it ended at `now` (zero: delete it now).
pub(crate) fn kept_for<K: kube::Resource>(
    run: &K,
    st: &RunStatus,
    ttl: Duration,
    now: chrono::DateTime<chrono::Utc>,
    pod_gone: bool,
) -> Option<Duration> {
    let by_schedule = run
        .meta()
        .owner_references
        .iter()
        .flatten()
        // An application backup's volumes go with it.
        .any(|o| o.kind == "BackupSchedule" || o.kind == "ApplicationBackup");
    // A pod's annotation made it (schedule or backup-now): the pod would
    // make it again, and its schedule goes on from it.
    let by_pod = run
        .meta()
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(crate::names::SCHEDULED_AT))
        || run
            .meta()
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(crate::names::TRIGGER_LABEL));
    if by_schedule || (by_pod && !pod_gone) || ttl.is_zero() {
        return None;
    }
    let ended = st.completion_time?.at();
    let past = (now - ended).to_std().unwrap_or_default();
    Some(ttl.saturating_sub(past))
}

/// The pod whose annotation made `run` (its `spec.pod`), if it names one.
fn annotating_pod<K: serde::Serialize>(run: &K) -> Option<String> {
    serde_json::to_value(run).ok()?["spec"]["pod"]
        .as_str()
        .map(str::to_string)
}

/// How often a finished run that a pod's annotation made is looked at again
/// (its pod may be gone by then).
const POD_RECHECK: Duration = Duration::from_secs(24 * 3600);

/// Deletes a finished one-off run once its time to live has passed (its
/// snapshot stays in the repository), or looks at it again then.
async fn expire<K: ControllerRun>(ctx: &Ctx, run: &K, st: &RunStatus) -> Result<Action, Error> {
    let mut pod_gone = false;
    let by_pod = run
        .meta()
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(crate::names::TRIGGER_LABEL));
    if by_pod {
        if let Some(selector) = annotation_schedule_runs(run) {
            expire_history(ctx, run, &selector).await?;
        }
        if let Some(pod) = annotating_pod(run) {
            let ns = run.namespace().unwrap_or_default();
            pod_gone = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&pod)
                .await
                .map_err(kube_err(format!("reading pod {ns}/{pod}")))?
                .is_none();
        }
    }
    match kept_for(
        run,
        st,
        ctx.opts.finished_run_ttl,
        chrono::Utc::now(),
        pod_gone,
    ) {
        None if by_pod => Ok(Action::requeue(POD_RECHECK)),
        None => Ok(Action::await_change()),
        Some(left) if !left.is_zero() => Ok(Action::requeue(left)),
        Some(_) => {
            let ns = run.namespace().unwrap_or_default();
            let name = run.name_any();
            let what = format!(
                "{} {ns}/{name} (ended more than --finished-run-ttl {} ago{})",
                K::kind(&()),
                humantime::format_duration(ctx.opts.finished_run_ttl),
                if pod_gone {
                    ", and the pod that made it is gone"
                } else {
                    ""
                }
            );
            crate::api::delete(&Api::<K>::namespaced(ctx.client.clone(), &ns), &name, &what)
                .await?;
            Ok(Action::await_change())
        }
    }
}

/// The label selector of the runs that the same pod's annotation schedule
/// made for the same volume as `run`, if a pod's schedule made it.
pub(crate) fn annotation_schedule_runs<K: kube::Resource>(run: &K) -> Option<String> {
    use crate::names::{POD_LABEL, TRIGGER_LABEL, VOLUME_LABEL};
    let labels = run.meta().labels.as_ref()?;
    if labels.get(TRIGGER_LABEL).map(String::as_str) != Some("schedule") {
        return None;
    }
    Some(format!(
        "{TRIGGER_LABEL}=schedule,{POD_LABEL}={},{VOLUME_LABEL}={}",
        labels.get(POD_LABEL)?,
        labels.get(VOLUME_LABEL)?
    ))
}

/// A pod's schedule keeps its runs as a BackupSchedule does by default
/// ([`crate::controller::schedules::past_history_limits`]): when one of
/// them ends, those of the same pod and volume past the limits are deleted
/// (their snapshots stay; the `backup.coffer.dev/keep-…` annotations
/// decide those).
async fn expire_history<K: ControllerRun>(ctx: &Ctx, run: &K, selector: &str) -> Result<(), Error> {
    let ns = run.namespace().unwrap_or_default();
    let api = Api::<K>::namespaced(ctx.client.clone(), &ns);
    let runs = api
        .list(&kube::api::ListParams::default().labels(selector))
        .await
        .map_err(kube_err(format!(
            "listing the {} of {ns} labelled {selector}",
            K::plural(&())
        )))?
        .items;
    let refs: Vec<&K> = runs.iter().collect();
    let expired = crate::controller::schedules::past_history_limits(
        &refs,
        None,
        Default::default(),
        chrono::Utc::now(),
    );
    for name in expired {
        let what = format!(
            "{} {ns}/{name} (past the history limits of its pod's schedule)",
            K::kind(&())
        );
        crate::api::delete(&api, &name, &what).await?;
    }
    Ok(())
}

/// A run's status as the API server has it now (not as the cache had it).
pub(crate) async fn fresh_status<K: RunObject>(
    ctx: &Ctx,
    run: &K,
) -> Result<Option<RunStatus>, Error> {
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    Ok(Api::<K>::namespaced(ctx.client.clone(), &ns)
        .get_status(&name)
        .await
        .map_err(kube_err(format!("reading {} {ns}/{name}", K::kind(&()))))?
        .run_status()
        .cloned())
}

/// Follows the mover `pod` of `run`: one that cannot run or failed ends the
/// run with why; one that exited without writing what it had to (`wrote`,
/// of the run's fresh status) ends it so; otherwise the run is looked at
/// again when the pod changes or its start is due.
pub(crate) async fn follow_mover<K: ControllerRun>(
    ctx: &Ctx,
    run: &K,
    pod: &Pod,
    wrote: impl Fn(&RunStatus) -> bool,
) -> Result<Action, Error> {
    let why = match mover_state(ctx, pod).await {
        MoverState::Running(again) => {
            return Ok(again.map_or_else(Action::await_change, Action::requeue))
        }
        MoverState::Stuck(why) | MoverState::Exited(Some(why)) => why,
        MoverState::Exited(None) => {
            // The mover writes its result before it exits.
            let fresh = fresh_status(ctx, run).await?.unwrap_or_default();
            if wrote(&fresh) || fresh.phase.is_final() {
                return Ok(Action::await_change());
            }
            format!(
                "mover pod {}/{} exited without writing its result",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            )
        }
    };
    fail(ctx, run, why).await?;
    Ok(Action::await_change())
}

/// The BackupRepository `name` in `run`'s namespace; a missing one fails
/// the run, naming it (`None`).
pub(crate) async fn repository_or_fail<K: ControllerRun>(
    ctx: &Ctx,
    run: &K,
    name: &str,
) -> Result<Option<crate::crd::BackupRepository>, Error> {
    let ns = run.namespace().unwrap_or_default();
    let repo = Api::<crate::crd::BackupRepository>::namespaced(ctx.client.clone(), &ns)
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading BackupRepository {ns}/{name}")))?;
    if repo.is_none() {
        let e = crate::repos::RepoError::Missing {
            namespace: ns,
            name: name.to_string(),
        };
        fail(ctx, run, e.to_string()).await?;
    }
    Ok(repo)
}

/// Ends a run as Failed with `message` (its stage kept, or the first).
pub(crate) async fn fail<K: ControllerRun>(
    ctx: &Ctx,
    run: &K,
    message: String,
) -> Result<(), Error> {
    ctx.end(run, Outcome::Failed(message), K::FIRST_STAGE).await
}

/// Takes a run whose checks passed: the finalizer first, with the version
/// read (a run is never InProgress without it), then InProgress at that
/// version in its first stage, naming the claim it works on, then the
/// `<Action>Started` Event with `note`.
pub(crate) async fn claim<K: ControllerRun>(
    ctx: &Ctx,
    run: &K,
    pvc: Option<String>,
    path: Option<String>,
    note: String,
) -> Result<Action, Error> {
    let Some(patched) = add_finalizer(ctx, run).await? else {
        return Ok(Action::requeue(Duration::ZERO));
    };
    let mut s = crate::status::started(run.run_status(), &ctx.opts.identity, path);
    s.observe(run.meta().generation);
    s.node = None;
    s.pvc = pvc;
    s.stage = Some(K::FIRST_STAGE.into());
    crate::report::write_run::<K>(
        &ctx.client,
        &run.namespace().unwrap_or_default(),
        &run.name_any(),
        &s,
        patched.resource_version(),
    )
    .await;
    let reason = format!("{}Started", K::ACTION);
    ctx.reporter
        .run_event(run, EventType::Normal, &reason, note)
        .await;
    Ok(Action::requeue(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_one_off_run_is_kept_for_its_time_to_live_and_a_schedules_for_ever() {
        use crate::crd::VolumeBackup;
        let run = |extra: serde_json::Value| -> VolumeBackup {
            let mut v = serde_json::json!({"metadata": {"name": "once", "namespace": "shop"},
                "spec": {"method": "Snapshot", "pvc": "data"}});
            v["metadata"]
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        let ended = crate::time::stamp("2026-12-01T00:00:00.000Z");
        let st = RunStatus {
            phase: Phase::Completed,
            completion_time: Some(ended),
            ..Default::default()
        };
        let day = Duration::from_secs(86400);
        let at = |s: &str| crate::time::stamp(s).at();
        let once = run(serde_json::json!({}));
        assert_eq!(
            kept_for(&once, &st, 30 * day, at("2026-12-11T00:00:00.000Z"), false),
            Some(20 * day)
        );
        assert_eq!(
            kept_for(&once, &st, 30 * day, at("2027-02-01T00:00:00.000Z"), false),
            Some(Duration::ZERO)
        );
        assert_eq!(
            kept_for(
                &once,
                &st,
                Duration::ZERO,
                at("2027-02-01T00:00:00.000Z"),
                false
            ),
            None
        );
        let unfinished = RunStatus {
            completion_time: None,
            ..st.clone()
        };
        assert_eq!(
            kept_for(
                &once,
                &unfinished,
                day,
                at("2027-02-01T00:00:00.000Z"),
                false
            ),
            None
        );
        let owned = run(
            serde_json::json!({"ownerReferences": [{"apiVersion": "coffer.dev/v1alpha1",
            "kind": "BackupSchedule", "name": "nightly", "uid": "u"}]}),
        );
        assert_eq!(
            kept_for(&owned, &st, day, at("2027-02-01T00:00:00.000Z"), false),
            None
        );
        let annotated = run(
            serde_json::json!({"annotations": {crate::names::SCHEDULED_AT: "2026-12-01T00:00:00.000Z"}}),
        );
        assert_eq!(
            kept_for(&annotated, &st, day, at("2027-02-01T00:00:00.000Z"), false),
            None
        );
        let by_pod =
            run(serde_json::json!({"labels": {crate::names::TRIGGER_LABEL: "backup-now"}}));
        assert_eq!(
            kept_for(&by_pod, &st, day, at("2027-02-01T00:00:00.000Z"), false),
            None
        );
        // The pod that made it is gone: it goes as a one-off run does.
        assert_eq!(
            kept_for(&by_pod, &st, day, at("2027-02-01T00:00:00.000Z"), true),
            Some(Duration::ZERO)
        );
        assert_eq!(
            kept_for(&by_pod, &st, 30 * day, at("2026-12-11T00:00:00.000Z"), true),
            Some(20 * day)
        );
        // A BackupSchedule's run stays its schedule's to delete.
        assert_eq!(
            kept_for(&owned, &st, day, at("2027-02-01T00:00:00.000Z"), true),
            None
        );
    }

    #[test]
    fn a_node_deleted_or_not_ready_past_the_limit_is_gone() {
        use k8s_openapi::api::core::v1::Node;
        let now = chrono::Utc::now();
        let limit = Duration::from_secs(600);
        let node = |status: &str, ago: i64| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n1"},
                "status": {"conditions": [{"type": "Ready", "status": status, "reason": "NodeStatusUnknown",
                    "lastTransitionTime": (now - chrono::Duration::seconds(ago)).to_rfc3339()}]}
            }))
            .unwrap()
        };
        assert!(node_gone("n1", None, now, limit)
            .unwrap()
            .contains("node n1 no longer exists"));
        assert_eq!(
            node_gone("n1", Some(&node("True", 10_000)), now, limit),
            None
        );
        assert_eq!(
            node_gone("n1", Some(&node("Unknown", 60)), now, limit),
            None
        );
        let why = node_gone("n1", Some(&node("Unknown", 700)), now, limit).unwrap();
        assert!(
            why.contains("node n1 has not been Ready for 11m") && why.contains("NodeStatusUnknown"),
            "{why}"
        );
        // No Ready condition yet (a node registering): not gone.
        let bare: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n1"}})).unwrap();
        assert_eq!(node_gone("n1", Some(&bare), now, limit), None);
    }
}
