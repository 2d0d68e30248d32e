//! `coffer-agent controller`: backs up PersistentVolumeClaims through CSI
//! snapshots (VolumeBackups with `method: Snapshot`), and restores into new
//! PVCs (VolumeRestores with `target`: [`crate::restorer`]).
//!
//! One replica leads (a Lease); the others wait and take over when it dies.
//! The leader reconciles each run, level-triggered, one step at a time:
//!
//! 1. **claim**: check the PVC and the repository, add the cleanup
//!    finalizer, mark the run InProgress;
//! 2. **snapshot**: create a VolumeSnapshot of the PVC (class:
//!    [`snapshot::choose_class`]) and wait for `readyToUse`, at most
//!    `--snapshot-timeout`; a snapshot error ends the run with its message.
//!    The pre-hooks run just before, the post-hooks once it is ready; the
//!    runs of a group (`spec.group`) share them: every pre-hook, every
//!    snapshot, then every post-hook (`take_snapshots`, `thaw`);
//! 3. **clone**: a PVC provisioned from the snapshot
//!    ([`snapshot::clone_claim`]);
//! 4. **move**: a mover pod ([`snapshot::mover_pod`], running
//!    [`crate::mover`]) reads the clone into the repository and writes the
//!    run's status; a pod that cannot be scheduled, cannot pull its image or
//!    fails ends the run at once with the pod's own reason
//!    ([`snapshot::mover_failure`]); one that has not started after
//!    `--prepare-timeout` ends it with the pod's last events;
//! 5. **clean up**, after success, failure and cancellation alike: the mover
//!    pod, then the clone PVC and its PV, then the VolumeSnapshot (unless
//!    `retainSnapshot`); each step waits until the previous object is gone.
//!    The finalizer is removed last.
//!
//! Every object made for a run carries the run label and an owner reference
//! to the run, so a new leader finds where the run stands from the cluster
//! alone, and a start-up sweep removes what a deleted run left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use coffer_engine::format::snapshot::KubernetesOrigin;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectList, Patch,
    PatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    BackupMethod, BackupRepository, BackupSchedule, Phase, RunStatus, VolumeBackup, VolumeRestore,
};
use crate::lenient::Lenient;
use crate::metrics::{Metrics, NamespaceLabels, RunLabels};

use crate::api::{create, delete, delete_present, kube_err, Error};
use crate::names::{label_value, object_name, FINALIZER, RUN_LABEL};
use crate::run::RunObject;
use crate::snapshot::{self, SnapshotClass, SnapshotState, VolumeSnapshot};
use crate::status::{self, Outcome};

/// The controller's settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cluster's name, recorded in every snapshot.
    pub cluster: Option<String>,
    /// The namespace of the Lease (the controller's own).
    pub namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// The image mover pods run (`coffer-agent`).
    pub mover_image: String,
    /// Mover pods' memory limit.
    pub mover_memory: String,
    /// Engine threads in a mover.
    pub mover_threads: usize,
    /// A backup mover reads its clone no faster than this (bytes per second).
    pub mover_read_limit: Option<u64>,
    /// How long a VolumeSnapshot may take to become ready.
    pub snapshot_timeout: Duration,
    /// How long a mover pod may take to start.
    pub prepare_timeout: Duration,
    /// How long past its grace period a mover pod may stay Terminating
    /// before it is deleted at once. Only a kubelet that is gone (a dead or
    /// cut-off node) leaves a pod Terminating that long; it would otherwise
    /// hold the clone, the run's finalizer and the next job for as long as
    /// the node stays down.
    pub terminating_limit: Duration,
    /// Storage class renames for clones.
    pub storage_class_map: BTreeMap<String, String>,
    /// Storage class renames for restored PVCs (a class that does not
    /// exist in this cluster, or a cheaper one).
    pub restore_storage_class_map: BTreeMap<String, String>,
    /// Clones ask for ReadOnlyMany.
    pub read_only_many: bool,
    /// What namespaced objects may ask for; every mover gets it too.
    pub policy: crate::policy::TenantPolicy,
    /// A node agent's run whose node is gone (deleted, or not Ready this
    /// long) is ended.
    pub lost_node_timeout: Duration,
}

pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) opts: Options,
    recorder: Recorder,
    pub(crate) metrics: Arc<Metrics>,
    /// The last discovery of the VolumeGroupSnapshot API, and when.
    group_api: Mutex<Option<(std::time::Instant, Option<GroupApi>)>>,
    /// The BackupSchedules' gauges.
    pub(crate) schedule_gauges: crate::metrics::ScheduleGauges,
}

/// Leads (or waits to lead), then reconciles until leadership is lost or a
/// watch ends. Losing the Lease ends the process's work: the caller exits
/// and the Deployment starts it again as a candidate.
pub async fn run(client: Client, opts: Options, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let duration = opts.lease_duration.as_secs().max(2);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &opts.lease_name)
        .with_namespace(&opts.namespace)
        .with_identity(&opts.identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("Lease {}/{}: {e}", opts.namespace, opts.lease_name))?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(
        identity = opts.identity,
        lease = opts.lease_name,
        "waiting for the Lease"
    );
    // Ready as a standby too: readiness says the replica is up and reaches
    // the API server, so a rolling update of two replicas can complete
    // (with only the leader ready, the Deployment never becomes available).
    // Which replica leads is the gauge coffer_controller_leading.
    metrics.set_ready();
    while !*leading.borrow_and_update() {
        leading
            .changed()
            .await
            .map_err(|_| anyhow::anyhow!("the Lease manager stopped"))?;
    }
    tracing::info!(identity = opts.identity, "leading");
    metrics.leading.set(1);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "coffer-controller".into(),
            instance: Some(opts.identity.clone()),
        },
    );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        opts,
        recorder,
        schedule_gauges: crate::metrics::ScheduleGauges::new(metrics.clone()),
        metrics,
        group_api: Mutex::new(None),
    });
    sweep(&ctx).await;
    crate::restorer::sweep(&ctx).await;
    // Every watched kind is lenient: one object that does not parse (in
    // any namespace) is logged and skipped, never the whole list.
    let children = watcher::Config::default().labels(RUN_LABEL);
    let backups = Controller::new(
        Api::<Lenient<VolumeBackup>>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Lenient<Pod>>::all(client.clone()), children.clone())
    .owns(
        Api::<Lenient<PersistentVolumeClaim>>::all(client.clone()),
        children.clone(),
    )
    .owns(
        Api::<Lenient<VolumeSnapshot>>::all(client.clone()),
        children,
    )
    .run(parsed(reconcile), parsed_policy(error_policy), ctx.clone())
    .for_each(log_error);
    let restores = Controller::new(
        Api::<Lenient<VolumeRestore>>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(crate::names::RESTORE_LABEL),
        crate::restorer::run_of,
    )
    .run(
        parsed(crate::restorer::reconcile),
        parsed_policy(error_policy),
        ctx.clone(),
    )
    .for_each(log_error);
    let scheduled = watcher::Config::default().labels(crate::names::SCHEDULE_LABEL);
    let schedules = Controller::new(
        Api::<Lenient<BackupSchedule>>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Lenient<VolumeBackup>>::all(client.clone()),
        scheduled.clone(),
    )
    .owns(Api::<Lenient<Pod>>::all(client.clone()), scheduled)
    .run(
        parsed(crate::schedules::reconcile),
        parsed_policy(object_error_policy),
        ctx.clone(),
    )
    .for_each(log_error);
    let maintenance = Controller::new(
        Api::<Lenient<BackupRepository>>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Lenient<Pod>>::all(client.clone()),
        watcher::Config::default().labels(crate::names::MAINTENANCE_LABEL),
    )
    .run(
        parsed(crate::maintenance::reconcile),
        parsed_policy(object_error_policy),
        ctx.clone(),
    )
    .for_each(log_error);
    let gauges = crate::schedules::forget_deleted(client.clone(), ctx);
    let lost = async {
        loop {
            if leading.changed().await.is_err() || !*leading.borrow() {
                return;
            }
        }
    };
    tokio::select! {
        _ = futures::future::join5(backups, restores, schedules, maintenance, gauges) => anyhow::bail!("the controller's watches ended"),
        _ = lost => {
            lease_task.abort();
            anyhow::bail!("lost the Lease; stopping so that the new leader alone acts")
        }
    }
}

/// A reconcile's error is logged where it happens (the error policy); the
/// stream's copy is for debugging.
async fn log_error<T, E: std::fmt::Display>(r: Result<T, E>) {
    if let Err(e) = r {
        tracing::debug!("reconcile: {e}");
    }
}

/// A reconciler over the objects that parse: one that does not is logged
/// (by [`Lenient::object`]) and left until it changes.
fn parsed<K, F, Fut>(
    reconcile: F,
) -> impl FnMut(Arc<Lenient<K>>, Arc<Ctx>) -> futures::future::BoxFuture<'static, Result<Action, Error>>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        let reconcile = reconcile.clone();
        Box::pin(async move {
            match obj.object() {
                Some(k) => reconcile(Arc::new(k.clone()), ctx).await,
                None => Ok(Action::await_change()),
            }
        })
    }
}

/// `policy` for objects that parse (others are never reconciled).
fn parsed_policy<K: Resource<DynamicType = ()> + Clone>(
    policy: fn(Arc<K>, &Error, Arc<Ctx>) -> Action,
) -> impl Fn(Arc<Lenient<K>>, &Error, Arc<Ctx>) -> Action {
    move |obj, e, ctx| match &obj.parsed {
        Ok(k) => policy(Arc::new(k.clone()), e, ctx),
        Err(_) => Action::await_change(),
    }
}

fn error_policy<K: RunObject>(run: Arc<K>, e: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(
        namespace = run.namespace().unwrap_or_default(),
        run = run.name_any(),
        "{e}; trying again"
    );
    Action::requeue(Duration::from_secs(5))
}

fn object_error_policy<K: Resource>(obj: Arc<K>, e: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        "{e}; trying again"
    );
    Action::requeue(Duration::from_secs(5))
}

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
        ctx.end(run, Outcome::Failed(why), "Running").await?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(
        (limit / 2).clamp(Duration::from_secs(1), Duration::from_secs(300)),
    ))
}

/// The name of every object made for a run.
fn child_name(vb: &VolumeBackup) -> String {
    object_name(&["coffer", &vb.name_any()])
}

fn run_labels(vb: &VolumeBackup) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUN_LABEL.to_string(), label_value(&vb.name_any())),
        crate::names::managed_by(),
    ])
}

async fn reconcile(vb: Arc<VolumeBackup>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let st = vb.status.clone().unwrap_or_default();
    if vb.spec.method != BackupMethod::Snapshot {
        // The node agent's; only a run it can never take is ended here.
        let unusable = match vb.spec.method {
            BackupMethod::Command => vb.spec.pod.is_none().then_some(
                "spec.pod is required for method Command (the pod whose backup.coffer.dev/command is run)",
            ),
            _ => vb.spec.pod_volume().is_none().then_some(
                "spec.pod and spec.volume are required for method Filesystem; to back up a PVC that no pod uses, set method: Snapshot and spec.pvc",
            ),
        };
        if let Some(why) =
            unusable.filter(|_| st.phase == Phase::New && vb.meta().deletion_timestamp.is_none())
        {
            ctx.fail(&vb, why.into()).await?;
            return Ok(Action::await_change());
        }
        return end_if_node_gone(&ctx, vb.as_ref(), &st).await;
    }
    let finalized = vb.finalizers().iter().any(|f| f == FINALIZER);
    if vb.meta().deletion_timestamp.is_some() || st.phase.is_final() {
        if !finalized {
            return Ok(Action::await_change());
        }
        // A run that ended between its pre- and post-hooks (the snapshot
        // failed or timed out, a cancel) thaws its pods first.
        if frozen(&st.hooks) {
            // Its group's open runs are thawed with it (and carry the record).
            let mut runs = vec![vb.as_ref().clone()];
            if let Group::Claimed(members) = group(&ctx, &vb).await? {
                runs.extend(
                    members
                        .into_iter()
                        .filter(|r| is_open(r) && r.name_any() != vb.name_any()),
                );
            }
            // Its failure is an Event; the run's outcome stands.
            let _ = snapshot_hooks(&ctx, &runs, "post").await?;
        }
        if !cleanup(&ctx, &vb).await? {
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        return finish(&ctx, vb.as_ref(), &st, "snapshot-backup").await;
    }
    if vb.spec.cancel {
        ctx.end(vb.as_ref(), Outcome::Canceled, "Snapshotting")
            .await?;
        return Ok(Action::requeue(Duration::ZERO));
    }
    let step = match st.phase {
        Phase::New => claim(&ctx, &vb).await,
        _ => advance(&ctx, &vb, &st).await,
    };
    match step {
        Err(Error::Quota(why)) => quota_wait(&ctx, vb.as_ref(), why, "Snapshotting").await,
        Err(Error::Refused(why)) => {
            ctx.fail(&vb, why).await?;
            Ok(Action::await_change())
        }
        step => step,
    }
}

/// How often a run refused for an exhausted quota tries again.
const QUOTA_RETRY: Duration = Duration::from_secs(5);

/// A run refused for an exhausted quota tries again until
/// `--prepare-timeout` after its creation, then fails with the refusal.
pub(crate) async fn quota_wait<K: RunObject>(
    ctx: &Ctx,
    run: &K,
    why: String,
    first_stage: &str,
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

/// Step 1: check what the run names, then take it.
async fn claim(ctx: &Ctx, vb: &VolumeBackup) -> Result<Action, Error> {
    let ns = vb.namespace().unwrap_or_default();
    let pvc_name = match source_claim(ctx, vb).await? {
        Ok(n) => n,
        Err(m) => {
            ctx.fail(vb, m).await?;
            return Ok(Action::await_change());
        }
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvc = pvcs
        .get_opt(&pvc_name)
        .await
        .map_err(kube_err(format!("reading PVC {ns}/{pvc_name}")))?;
    let Some(pvc) = pvc else {
        ctx.fail(
            vb,
            format!("PersistentVolumeClaim {ns}/{pvc_name} not found"),
        )
        .await?;
        return Ok(Action::await_change());
    };
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase != "Bound" {
        ctx.fail(vb, format!("PersistentVolumeClaim {ns}/{pvc_name} is {phase:?}, not Bound: only a provisioned volume can be snapshotted")).await?;
        return Ok(Action::await_change());
    }
    let repos: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), &ns);
    let repo = repos
        .get_opt(&vb.spec.repository)
        .await
        .map_err(kube_err(format!(
            "reading BackupRepository {ns}/{}",
            vb.spec.repository
        )))?;
    if repo.is_none() {
        let e = crate::repos::RepoError::Missing {
            namespace: ns.clone(),
            name: vb.spec.repository.clone(),
        };
        ctx.fail(vb, e.to_string()).await?;
        return Ok(Action::await_change());
    }
    // The finalizer first, with the version read: a run is never InProgress
    // without it.
    let Some(patched) = add_finalizer(ctx, vb).await? else {
        return Ok(Action::requeue(Duration::ZERO));
    };
    let mut s = status::started(
        vb.status.as_ref(),
        &ctx.opts.identity,
        Some(format!("/{pvc_name}")),
    );
    s.node = None;
    s.pvc = Some(pvc_name.clone());
    s.stage = Some("Snapshotting".into());
    crate::report::write_run::<VolumeBackup>(
        &ctx.client,
        &ns,
        &vb.name_any(),
        &s,
        patched.resource_version(),
    )
    .await;
    ctx.event(
        vb,
        EventType::Normal,
        "BackupStarted",
        format!("snapshotting PVC {pvc_name}"),
    )
    .await;
    Ok(Action::requeue(Duration::ZERO))
}

/// The PVC a run reads: `spec.pvc`, or the claim of the pod's volume.
async fn source_claim(ctx: &Ctx, vb: &VolumeBackup) -> Result<Result<String, String>, Error> {
    if let Some(p) = &vb.spec.pvc {
        return Ok(Ok(p.clone()));
    }
    let Some((pod, volume)) = vb.spec.pod_volume() else {
        return Ok(Err("method Snapshot needs spec.pvc, or spec.pod and spec.volume naming a PersistentVolumeClaim".into()));
    };
    let ns = vb.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(p) = pods
        .get_opt(pod)
        .await
        .map_err(kube_err(format!("reading pod {ns}/{pod}")))?
    else {
        return Ok(Err(format!("pod {ns}/{pod} not found")));
    };
    Ok(match crate::pods::volume_claim(&p, volume) {
        Some(Some(c)) => Ok(c),
        Some(None) => Err(format!("volume {volume:?} of pod {ns}/{pod} is not a PersistentVolumeClaim; method Snapshot reads PVCs only (use method Filesystem)")),
        None => Err(format!("pod {ns}/{pod} has no volume {volume:?}")),
    })
}

/// Steps 2 to 4, from where the run stands.
async fn advance(ctx: &Ctx, vb: &VolumeBackup, st: &RunStatus) -> Result<Action, Error> {
    let ns = vb.namespace().unwrap_or_default();
    let child = child_name(vb);
    let Some(pvc_name) = st.pvc.clone() else {
        ctx.fail(
            vb,
            "the run's status lost its PVC; create the VolumeBackup again".into(),
        )
        .await?;
        return Ok(Action::await_change());
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    // 2. The snapshot, taken by the group's leader.
    let vs = match find_snapshot(ctx, vb).await? {
        Found::Snapshot(vs) => *vs,
        Found::Wait(d) => return Ok(Action::requeue(d)),
        Found::Failed(m) => {
            ctx.fail(vb, m).await?;
            return Ok(Action::await_change());
        }
        Found::Missing => {
            let open = match group(ctx, vb).await? {
                Group::Claimed(members) => members.into_iter().filter(is_open).collect::<Vec<_>>(),
                Group::Waiting(d) => return Ok(Action::requeue(d)),
                Group::Incomplete(m) => {
                    ctx.fail(vb, m).await?;
                    return Ok(Action::await_change());
                }
            };
            if open.first().map(ResourceExt::name_any) != Some(vb.name_any()) {
                // The leader takes this run's snapshot; its creation wakes this run.
                return Ok(Action::requeue(GROUP_POLL));
            }
            take_snapshots(ctx, &open).await?;
            return Ok(Action::requeue(if vb.spec.group.is_some() {
                GROUP_POLL
            } else {
                ctx.opts.snapshot_timeout
            }));
        }
    };
    let vs_name = vs.name_any();
    let restore_size = match snapshot::snapshot_state(&vs) {
        SnapshotState::Failed(m) => {
            ctx.fail(vb, format!("VolumeSnapshot {ns}/{vs_name} failed: {m}"))
                .await?;
            return Ok(Action::await_change());
        }
        SnapshotState::Pending => {
            let left = remaining(
                vs.meta().creation_timestamp.as_ref(),
                ctx.opts.snapshot_timeout,
            );
            if left.is_zero() {
                ctx.fail(vb, format!(
                    "VolumeSnapshot {ns}/{vs_name} did not become ready within {}; check the CSI driver and the snapshot controller (kubectl -n {ns} describe volumesnapshot {vs_name})",
                    humantime::format_duration(ctx.opts.snapshot_timeout)
                ))
                .await?;
                return Ok(Action::await_change());
            }
            return Ok(Action::requeue(left));
        }
        SnapshotState::Ready(size) => size,
    };

    // 3. The clone.
    let source = pvcs
        .get_opt(&pvc_name)
        .await
        .map_err(kube_err(format!("reading PVC {ns}/{pvc_name}")))?;
    let clone = pvcs
        .get_opt(&child)
        .await
        .map_err(kube_err(format!("reading PVC {ns}/{child}")))?;
    if clone.is_none() {
        // The point in time is taken: the post-hooks, before the clone.
        if let Some(wait) = thaw(ctx, vb).await? {
            return Ok(wait);
        }
    }
    let (block, spec_source) = match (&clone, &source) {
        (Some(c), _) => (
            snapshot::is_block(c),
            source.clone().unwrap_or_else(|| c.clone()),
        ),
        (None, Some(s)) => (snapshot::is_block(s), s.clone()),
        (None, None) => {
            ctx.fail(
                vb,
                format!(
                    "PersistentVolumeClaim {ns}/{pvc_name} was deleted before its clone was made"
                ),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    if clone.is_none() {
        let labels = run_labels(vb);
        let owner = vb.controller_owner_ref(&()).unwrap_or_default();
        let c = snapshot::clone_claim(&snapshot::Clone {
            name: &child,
            snapshot: &vs_name,
            source: &spec_source,
            restore_size: restore_size.as_ref(),
            storage_class_map: &ctx.opts.storage_class_map,
            read_only_many: ctx.opts.read_only_many,
            labels: &labels,
            owner: &owner,
        });
        create(&pvcs, &c, &format!("PVC {ns}/{child}")).await?;
    }

    // 4. The mover.
    let pod = pods
        .get_opt(&child)
        .await
        .map_err(kube_err(format!("reading pod {ns}/{child}")))?;
    let Some(pod) = pod else {
        if st.stage.as_deref() == Some("Moving") {
            ctx.fail(vb, format!("mover pod {ns}/{child} disappeared before the backup ended (deleted or evicted)")).await?;
            return Ok(Action::await_change());
        }
        let repo = Api::<BackupRepository>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&vb.spec.repository)
            .await
            .map_err(kube_err(format!(
                "reading BackupRepository {ns}/{}",
                vb.spec.repository
            )))?;
        let Some(repo) = repo else {
            let e = crate::repos::RepoError::Missing {
                namespace: ns.clone(),
                name: vb.spec.repository.clone(),
            };
            ctx.fail(vb, e.to_string()).await?;
            return Ok(Action::await_change());
        };
        let origin = origin_of(ctx, &spec_source).await;
        let args = mover_args(ctx, vb, &repo, &pvc_name, block, &origin)?;
        let labels = run_labels(vb);
        let owner = vb.controller_owner_ref(&()).unwrap_or_default();
        let volume = snapshot::MoverVolume {
            claim: &child,
            block,
            write: false,
        };
        let p = snapshot::mover_pod(&snapshot::Mover {
            volume: Some(volume),
            args,
            labels: &labels,
            owner: Some(&owner),
            ..ctx.mover(&child, &ns, &repo)
        });
        create_mover(ctx, &p, &StatusOf::of(vb)).await?;
        crate::report::update_run::<VolumeBackup>(&ctx.client, &ns, &vb.name_any(), |s| {
            s.stage = Some("Moving".into())
        })
        .await;
        ctx.event(
            vb,
            EventType::Normal,
            "MoverStarted",
            format!("VolumeSnapshot {child} is ready; mover pod {child} reads its clone"),
        )
        .await;
        return Ok(Action::requeue(ctx.opts.prepare_timeout));
    };
    if let Some(why) = snapshot::mover_failure(&pod) {
        ctx.fail(vb, why).await?;
        return Ok(Action::await_change());
    }
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded") {
        // The mover writes the result before it exits; a run still open
        // after that has no result.
        if !fresh_status(ctx, vb)
            .await?
            .is_some_and(|s| s.phase.is_final())
        {
            ctx.fail(
                vb,
                format!("mover pod {ns}/{child} exited without writing a result"),
            )
            .await?;
        }
        return Ok(Action::await_change());
    }
    if !snapshot::mover_started(&pod) {
        return match not_started(ctx, &pod).await {
            Ok(wait) => Ok(Action::requeue(wait)),
            Err(why) => {
                ctx.fail(vb, why).await?;
                Ok(Action::await_change())
            }
        };
    }
    Ok(Action::await_change())
}

/// How often a mover pod that has not started is looked at again: the
/// kubelet reports a mount it cannot make only in Events, which do not wake
/// the controller.
const MOUNT_CHECK: Duration = Duration::from_secs(10);

/// A mover pod that has not started: why it never will (`--prepare-timeout`
/// passed, or a mount that cannot succeed), or when to look again.
pub(crate) async fn not_started(ctx: &Ctx, pod: &Pod) -> Result<Duration, String> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let left = remaining(
        pod.meta().creation_timestamp.as_ref(),
        ctx.opts.prepare_timeout,
    );
    if left.is_zero() {
        let events = pod_events(ctx, pod).await;
        return Err(format!(
            "mover pod {ns}/{name} did not start within {}{events}",
            humantime::format_duration(ctx.opts.prepare_timeout)
        ));
    }
    if let Ok(list) = this_pods_events(ctx, pod).await {
        if let Some(why) = snapshot::permanent_mount_failure(&list.items) {
            return Err(format!("mover pod {ns}/{name} cannot start: {why}"));
        }
    }
    Ok(left.min(MOUNT_CHECK))
}

/// Where a mover pod that runs a job (rather than a run) stands.
pub(crate) enum MoverState {
    /// Still starting or running; look again after this, if given.
    Running(Option<Duration>),
    /// It will never run: it cannot be scheduled, cannot pull its image or
    /// mount its repository, or has not started within `--prepare-timeout`.
    Stuck(String),
    /// It exited; the reason when it failed. Its result, if it wrote one,
    /// is in the object it reports to.
    Exited(Option<String>),
}

/// Where `pod` stands.
pub(crate) async fn mover_state(ctx: &Ctx, pod: &Pod) -> MoverState {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return MoverState::Exited(snapshot::mover_failure(pod));
    }
    if let Some(why) = snapshot::mover_failure(pod) {
        return MoverState::Stuck(why);
    }
    if snapshot::mover_started(pod) {
        return MoverState::Running(None);
    }
    match not_started(ctx, pod).await {
        Ok(wait) => MoverState::Running(Some(wait)),
        Err(why) => MoverState::Stuck(why),
    }
}

/// The run's status as the API server has it now (the cache may lag).
async fn fresh_status(ctx: &Ctx, vb: &VolumeBackup) -> Result<Option<RunStatus>, Error> {
    let ns = vb.namespace().unwrap_or_default();
    Ok(Api::<VolumeBackup>::namespaced(ctx.client.clone(), &ns)
        .get_status(&vb.name_any())
        .await
        .map_err(kube_err(format!(
            "reading VolumeBackup {ns}/{}",
            vb.name_any()
        )))?
        .status)
}

/// How often a run of a group looks at the others while it waits for them.
const GROUP_POLL: Duration = Duration::from_secs(2);

/// Where a run's group (`spec.group`) stands.
enum Group {
    /// Every run of the group was claimed, or ended at its claim: those
    /// claimed (ended ones included), by name. A run without a group is
    /// alone in it.
    Claimed(Vec<VolumeBackup>),
    /// Runs of the group are missing or not claimed yet: look again after
    /// this.
    Waiting(Duration),
    /// Still so after `--snapshot-timeout`: why.
    Incomplete(String),
}

/// The runs snapshotted at one instant with `vb`, as the API server has
/// them now.
async fn group(ctx: &Ctx, vb: &VolumeBackup) -> Result<Group, Error> {
    let Some(g) = &vb.spec.group else {
        return Ok(Group::Claimed(vec![vb.clone()]));
    };
    let ns = vb.namespace().unwrap_or_default();
    let runs: Vec<VolumeBackup> = Api::<VolumeBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!(
            "listing the VolumeBackups of group {:?} in {ns}",
            g.name
        )))?
        .items
        .into_iter()
        .filter(|r| {
            r.spec.method == BackupMethod::Snapshot
                && r.spec.group.as_ref().is_some_and(|o| o.name == g.name)
        })
        .collect();
    let claimed = runs
        .iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| s.phase != Phase::New))
        .count();
    if claimed < g.size as usize {
        let first = runs
            .iter()
            .filter_map(|r| r.meta().creation_timestamp.as_ref())
            .min_by_key(|t| t.0);
        let left = remaining(first, ctx.opts.snapshot_timeout);
        if left.is_zero() {
            return Ok(Group::Incomplete(format!(
                "group {:?} has {claimed} of its {} VolumeBackups in {ns} claimed after {}: create the missing ones with the same spec.group, or lower spec.group.size to the runs there are",
                g.name,
                g.size,
                humantime::format_duration(ctx.opts.snapshot_timeout)
            )));
        }
        return Ok(Group::Waiting(left.min(GROUP_POLL)));
    }
    let mut members: Vec<VolumeBackup> = runs
        .into_iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| s.pvc.is_some()))
        .collect();
    members.sort_by_key(ResourceExt::name_any);
    Ok(Group::Claimed(members))
}

/// Whether a run still goes on. The first open run of a group leads it.
fn is_open(r: &VolumeBackup) -> bool {
    !r.status.as_ref().is_some_and(|s| s.phase.is_final())
        && r.meta().deletion_timestamp.is_none()
        && !r.spec.cancel
}

/// The leader's step 2: the pre-hooks of the running pods that use the PVCs
/// of the `open` runs, then at once a VolumeSnapshot for each run that has
/// none (after a restart, only those missing). A run whose PVC is gone or
/// whose class cannot be chosen ends alone; a failed pre-hook ends them all.
async fn take_snapshots(ctx: &Ctx, open: &[VolumeBackup]) -> Result<(), Error> {
    let mut todo = Vec::new();
    for r in open {
        let ns = r.namespace().unwrap_or_default();
        if !matches!(find_snapshot(ctx, r).await?, Found::Missing) {
            continue;
        }
        let pvc_name = r
            .status
            .as_ref()
            .and_then(|s| s.pvc.clone())
            .unwrap_or_default();
        let Some(pvc) = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&pvc_name)
            .await
            .map_err(kube_err(format!("reading PVC {ns}/{pvc_name}")))?
        else {
            let m = format!(
                "PersistentVolumeClaim {ns}/{pvc_name} was deleted before it was snapshotted"
            );
            ctx.fail(r, m).await?;
            continue;
        };
        match snapshot_class(ctx, &pvc).await? {
            Ok(class) => todo.push((r.clone(), pvc_name, class)),
            Err(m) => ctx.fail(r, m).await?,
        }
    }
    let runs: Vec<VolumeBackup> = todo.iter().map(|(r, _, _)| r.clone()).collect();
    let Some(first) = runs.first() else {
        return Ok(());
    };
    let grouped = match first.spec.group.as_ref() {
        Some(g) if runs.len() > 1 => group_snapshot_plan(ctx, g, &runs).await?,
        _ => None,
    };
    if grouped.is_some() {
        // The PVCs the VolumeGroupSnapshot selects, labelled before any hook.
        label_group(ctx, &runs, true).await?;
    }
    if let Err(m) = snapshot_hooks(ctx, &runs, "pre").await? {
        if grouped.is_some() {
            label_group(ctx, &runs, false).await?;
        }
        for r in &runs {
            ctx.fail(r, m.clone()).await?;
        }
        return Ok(());
    }
    if let (Some((api, class)), Some(g)) = (&grouped, first.spec.group.as_ref()) {
        let ns = first.namespace().unwrap_or_default();
        let name = group_snapshot_name(g);
        // Owned by every run: it goes when the last run is deleted.
        let owners: Vec<_> = runs
            .iter()
            .filter_map(|r| r.controller_owner_ref(&()))
            .map(|mut o| {
                o.controller = Some(false);
                o
            })
            .collect();
        let mut vgs = DynamicObject::new(&name, &api.snapshots).within(&ns);
        vgs.metadata.owner_references = Some(owners);
        vgs.data = json!({"spec": {
            "source": {"selector": {"matchLabels": {crate::names::GROUP_LABEL: label_value(&g.name)}}},
            "volumeGroupSnapshotClassName": class,
        }});
        let vgss = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &api.snapshots);
        match create(&vgss, &vgs, &format!("VolumeGroupSnapshot {ns}/{name}")).await {
            Ok(()) => {}
            // The whole group fails now, as after a failed pre-hook: no
            // member's snapshot may be taken later, after the post-hooks.
            Err(Error::Refused(m)) => {
                label_group(ctx, &runs, false).await?;
                for r in &runs {
                    ctx.fail(r, m.clone()).await?;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        tracing::info!(
            namespace = ns,
            group = g.name,
            class,
            "VolumeGroupSnapshot {name} created"
        );
        return Ok(());
    }
    for (r, pvc_name, class) in todo {
        let ns = r.namespace().unwrap_or_default();
        let child = child_name(&r);
        let vs = VolumeSnapshot {
            metadata: kube::api::ObjectMeta {
                name: Some(child.clone()),
                namespace: Some(ns.clone()),
                labels: Some(run_labels(&r)),
                owner_references: r.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            spec: snapshot::VolumeSnapshotSpec {
                source: snapshot::VolumeSnapshotSource {
                    persistent_volume_claim_name: Some(pvc_name),
                    volume_snapshot_content_name: None,
                },
                volume_snapshot_class_name: Some(class.clone()),
            },
            status: None,
        };
        let snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
        match create(&snaps, &vs, &format!("VolumeSnapshot {ns}/{child}")).await {
            Ok(()) => {}
            // This member fails; the others' snapshots are taken now.
            Err(Error::Refused(m)) => {
                ctx.fail(&r, m).await?;
                continue;
            }
            Err(e) => return Err(e),
        }
        tracing::info!(
            namespace = ns,
            run = r.name_any(),
            class,
            "VolumeSnapshot {child} created"
        );
    }
    Ok(())
}

/// The end of step 2, for a run whose VolumeSnapshot is ready: once every
/// open run of its group has a ready (or failed) one, the leader runs the
/// post-hooks; the other runs wait for them when their pods are frozen.
/// `Some(action)` while this run waits, or when it ended.
async fn thaw(ctx: &Ctx, vb: &VolumeBackup) -> Result<Option<Action>, Error> {
    let open = match group(ctx, vb).await? {
        Group::Claimed(members) => members.into_iter().filter(is_open).collect::<Vec<_>>(),
        Group::Waiting(d) => return Ok(Some(Action::requeue(d))),
        Group::Incomplete(m) => {
            ctx.fail(vb, m).await?;
            return Ok(Some(Action::await_change()));
        }
    };
    if let Some(leader) = open.first().filter(|l| l.name_any() != vb.name_any()) {
        let hooks = fresh_status(ctx, vb).await?.unwrap_or_default().hooks;
        // The leader moves on to its clone only once the post-hooks ran, or
        // when its pods had none to run (then none is recorded).
        let leader_on = leader.status.as_ref().and_then(|s| s.stage.as_deref()) == Some("Moving");
        return Ok((frozen(&hooks) && !leader_on).then(|| Action::requeue(GROUP_POLL)));
    }
    // No open member (this run was canceled, or left its group, since the
    // event): nothing to thaw; the next pass sees where it stands.
    let Some(followers) = followers(&open) else {
        return Ok(Some(Action::requeue(Duration::ZERO)));
    };
    // After a restart, the snapshots not taken yet.
    take_snapshots(ctx, &open).await?;
    for r in followers {
        let pending = match find_snapshot(ctx, r).await? {
            Found::Snapshot(vs) => snapshot::snapshot_state(&vs) == SnapshotState::Pending,
            Found::Missing | Found::Wait(_) => true,
            // It ends on its own.
            Found::Failed(_) => false,
        };
        if pending {
            return Ok(Some(Action::requeue(GROUP_POLL)));
        }
    }
    if let Err(m) = snapshot_hooks(ctx, &open, "post").await? {
        for r in &open {
            ctx.fail(r, m.clone()).await?;
        }
        return Ok(Some(Action::await_change()));
    }
    Ok(None)
}

/// The open members of a group after its leader (the first); `None` when
/// none is open (a list freshly read can be empty).
fn followers<T>(open: &[T]) -> Option<&[T]> {
    open.get(1..)
}

/// A run's VolumeSnapshot, as far as it is.
enum Found {
    /// Its own (named after the run), or its member of the group's
    /// VolumeGroupSnapshot.
    Snapshot(Box<VolumeSnapshot>),
    /// None taken yet.
    Missing,
    /// The group's VolumeGroupSnapshot is not ready yet: look again after
    /// this.
    Wait(Duration),
    /// The group's VolumeGroupSnapshot failed, was not ready in time, or has
    /// no snapshot of the run's PVC: why.
    Failed(String),
}

async fn find_snapshot(ctx: &Ctx, r: &VolumeBackup) -> Result<Found, Error> {
    let ns = r.namespace().unwrap_or_default();
    let child = child_name(r);
    let snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(vs) = snaps
        .get_opt(&child)
        .await
        .map_err(kube_err(format!("reading VolumeSnapshot {ns}/{child}")))?
    {
        return Ok(Found::Snapshot(Box::new(vs)));
    }
    let Some(g) = &r.spec.group else {
        return Ok(Found::Missing);
    };
    let Some(api) = group_snapshot_api(ctx).await? else {
        return Ok(Found::Missing);
    };
    let name = group_snapshot_name(g);
    let Some(vgs) = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &api.snapshots)
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading VolumeGroupSnapshot {ns}/{name}")))?
    else {
        return Ok(Found::Missing);
    };
    Ok(match snapshot::group_snapshot_state(&vgs) {
        SnapshotState::Failed(m) => {
            Found::Failed(format!("VolumeGroupSnapshot {ns}/{name} failed: {m}"))
        }
        SnapshotState::Pending => {
            let left = remaining(
                vgs.metadata.creation_timestamp.as_ref(),
                ctx.opts.snapshot_timeout,
            );
            if left.is_zero() {
                Found::Failed(format!(
                    "VolumeGroupSnapshot {ns}/{name} did not become ready within {}; check the CSI driver and the snapshot controller (kubectl -n {ns} describe volumegroupsnapshot {name})",
                    humantime::format_duration(ctx.opts.snapshot_timeout)
                ))
            } else {
                Found::Wait(left.min(GROUP_POLL))
            }
        }
        SnapshotState::Ready(_) => {
            let pvc = r.status.as_ref().and_then(|s| s.pvc.clone());
            let member = snaps
                .list(&ListParams::default())
                .await
                .map_err(kube_err(format!("listing VolumeSnapshots in {ns}")))?
                .items
                .into_iter()
                .find(|vs| {
                    let of_group = vs
                        .status
                        .as_ref()
                        .and_then(|s| s.volume_group_snapshot_name.as_ref())
                        == Some(&name)
                        || vs
                            .owner_references()
                            .iter()
                            .any(|o| o.kind == "VolumeGroupSnapshot" && o.name == name);
                    of_group && vs.spec.source.persistent_volume_claim_name == pvc
                });
            match member {
                Some(vs) => Found::Snapshot(Box::new(vs)),
                None => Found::Failed(format!(
                    "VolumeGroupSnapshot {ns}/{name} is ready but holds no VolumeSnapshot of PVC {}",
                    pvc.unwrap_or_default()
                )),
            }
        }
    })
}

/// The VolumeGroupSnapshot API, when the cluster serves it.
#[derive(Clone)]
struct GroupApi {
    snapshots: ApiResource,
    classes: ApiResource,
}

/// How long a discovery of the VolumeGroupSnapshot API stands: runs of a
/// group ask for it on every pass, and the API may be installed later.
const GROUP_API_TTL: Duration = Duration::from_secs(60);

async fn group_snapshot_api(ctx: &Ctx) -> Result<Option<GroupApi>, Error> {
    if let Some((at, api)) = &*ctx.group_api.lock().unwrap_or_else(|e| e.into_inner()) {
        if at.elapsed() < GROUP_API_TTL {
            return Ok(api.clone());
        }
    }
    let api = discover_group_snapshot_api(ctx).await?;
    *ctx.group_api.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((std::time::Instant::now(), api.clone()));
    Ok(api)
}

async fn discover_group_snapshot_api(ctx: &Ctx) -> Result<Option<GroupApi>, Error> {
    let g = match kube::discovery::group(&ctx.client, snapshot::GROUP_SNAPSHOT_GROUP).await {
        Ok(g) => g,
        Err(kube::Error::Discovery(_)) => return Ok(None),
        Err(e) => return Err(kube_err("discovering the VolumeGroupSnapshot API")(e)),
    };
    Ok(
        match (
            g.recommended_kind("VolumeGroupSnapshot"),
            g.recommended_kind("VolumeGroupSnapshotClass"),
        ) {
            (Some((snapshots, _)), Some((classes, _))) => Some(GroupApi { snapshots, classes }),
            _ => None,
        },
    )
}

/// Every snapshot class of kind `ar` (VolumeSnapshotClass or
/// VolumeGroupSnapshotClass), with `default_annotation` marking the
/// driver's default.
async fn list_classes(
    ctx: &Ctx,
    ar: &ApiResource,
    what: &str,
    default_annotation: &str,
) -> Result<Vec<SnapshotClass>, Error> {
    Ok(Api::<DynamicObject>::all_with(ctx.client.clone(), ar)
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!("listing {what}")))?
        .items
        .iter()
        .map(|o| SnapshotClass::from_dynamic(o, default_annotation))
        .collect())
}

/// The name of a group's VolumeGroupSnapshot.
fn group_snapshot_name(g: &crate::crd::RunGroup) -> String {
    object_name(&["coffer", &g.name])
}

/// Whether the group `runs` is snapshotted with one VolumeGroupSnapshot:
/// when the cluster serves the API and their PVCs are on one CSI driver
/// that has a VolumeGroupSnapshotClass chosen as for VolumeSnapshots (the
/// one labelled `backup.coffer.dev/default`, else the driver's default).
/// Otherwise their VolumeSnapshots are taken one by one, between the same
/// hooks.
async fn group_snapshot_plan(
    ctx: &Ctx,
    g: &crate::crd::RunGroup,
    runs: &[VolumeBackup],
) -> Result<Option<(GroupApi, String)>, Error> {
    let Some(api) = group_snapshot_api(ctx).await? else {
        return Ok(None);
    };
    let mut drivers = BTreeSet::new();
    for r in runs {
        let ns = r.namespace().unwrap_or_default();
        let pvc = r.status.as_ref().and_then(|s| s.pvc.clone());
        let pvc = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&pvc.unwrap_or_default())
            .await
            .map_err(kube_err(format!(
                "reading the PVC of VolumeBackup {ns}/{}",
                r.name_any()
            )))?;
        drivers.insert(match pvc {
            Some(p) => pvc_driver(ctx, &p).await?,
            None => None,
        });
    }
    let driver = match (drivers.len(), drivers.pop_first()) {
        (1, Some(Some(d))) => d,
        _ => return Ok(None),
    };
    let classes = list_classes(
        ctx,
        &api.classes,
        "VolumeGroupSnapshotClasses",
        snapshot::IS_DEFAULT_GROUP_CLASS,
    )
    .await?;
    Ok(snapshot::choose_class(&g.name, None, &driver, &classes)
        .ok()
        .map(|class| (api, class)))
}

/// Sets (or removes) [`crate::names::GROUP_LABEL`] on the PVCs of `runs`.
async fn label_group(ctx: &Ctx, runs: &[VolumeBackup], set: bool) -> Result<(), Error> {
    for r in runs {
        let (Some(g), Some(pvc)) = (
            r.spec.group.as_ref(),
            r.status.as_ref().and_then(|s| s.pvc.clone()),
        ) else {
            continue;
        };
        let ns = r.namespace().unwrap_or_default();
        let value = set.then(|| label_value(&g.name));
        let patch = json!({"metadata": {"labels": {crate::names::GROUP_LABEL: value}}});
        match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .patch(&pvc, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 && !set => {}
            Err(e) => return Err(kube_err(format!("labelling PVC {ns}/{pvc}"))(e)),
        }
    }
    Ok(())
}

/// Whether pods may be frozen and not thawed: a pre-hook ran (one that
/// failed or timed out may have frozen all the same) and no post-hook has.
fn frozen(hooks: &[crate::crd::HookRun]) -> bool {
    hooks.iter().any(|h| h.stage == "pre") && !hooks.iter().any(|h| h.stage == "post")
}

/// Runs the `stage` hooks (see [`crate::hooks`]) of the running pods that
/// use the PVCs of `runs` (only the pods the runs name, when they do), once
/// per group: they are recorded in the `status.hooks` of every run, and
/// the first run's record says whether they ran. `Ok(Err(why))` when a hook
/// with on-error Fail failed; after a failed pre-hook, the post-hooks of the
/// pods whose pre-hook ran (the failed one included: it may have frozen
/// before it failed or timed out) are run at once, so that nothing stays
/// frozen.
async fn snapshot_hooks(
    ctx: &Ctx,
    runs: &[VolumeBackup],
    stage: &str,
) -> Result<Result<(), String>, Error> {
    let Some(first) = runs.first() else {
        return Ok(Ok(()));
    };
    let ns = first.namespace().unwrap_or_default();
    // The cache may lag behind our own last write: hooks run once.
    let mut hooks = fresh_status(ctx, first).await?.unwrap_or_default().hooks;
    if hooks.iter().any(|h| h.stage == stage) {
        return Ok(Ok(()));
    }
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!("listing pods in {ns}")))?
        .items;
    let mut targets = Vec::new();
    for p in pods {
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let claims: Vec<&str> = p
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.as_str()))
            .collect();
        let read = runs.iter().any(|r| {
            let pvc = r.status.as_ref().and_then(|s| s.pvc.as_deref());
            pvc.is_some_and(|c| claims.contains(&c))
                && r.spec.pod.as_ref().is_none_or(|n| *n == p.name_any())
        });
        if !(running && read && p.meta().deletion_timestamp.is_none()) {
            continue;
        }
        let hooks = match crate::hooks::parse(p.annotations(), ctx.opts.policy.max_hook_timeout) {
            Ok(h) => h,
            Err(e) => return Ok(Err(format!("pod {ns}/{}: {e}", p.name_any()))),
        };
        // With a pre-hook, its pod's post-hook (run at once if a pre-hook fails).
        let (hook, post) = if stage == "pre" {
            (hooks.pre, hooks.post)
        } else {
            (hooks.post, None)
        };
        if let Some(h) = hook {
            targets.push((p, h, post));
        }
    }
    let mut runs_done = Vec::new();
    let mut failed = None;
    for (p, hook, post) in &targets {
        let container = crate::hooks::first_container(p);
        let r = crate::hooks::run(&ctx.client, &ns, &p.name_any(), &container, hook).await;
        if let Some(m) = &r.message {
            ctx.event(first, EventType::Warning, "HookFailed", m.clone())
                .await;
            if hook.on_error == crate::hooks::OnError::Fail && failed.is_none() {
                failed = Some(m.clone());
            }
        }
        runs_done.push((r, p, post.clone()));
        if failed.is_some() {
            break;
        }
    }
    let mut recorded: Vec<crate::crd::HookRun> =
        runs_done.iter().map(|(r, _, _)| r.clone()).collect();
    if failed.is_some() && stage == "pre" {
        for (_, p, post) in &runs_done {
            if let Some(post) = post {
                let container = crate::hooks::first_container(p);
                recorded.push(
                    crate::hooks::run(&ctx.client, &ns, &p.name_any(), &container, post).await,
                );
            }
        }
    }
    if !recorded.is_empty() {
        // Written even on an ended run (the thaw after a failed snapshot);
        // the controller alone writes `hooks`.
        hooks.extend(recorded);
        for r in runs {
            Api::<VolumeBackup>::namespaced(ctx.client.clone(), &ns)
                .patch_status(
                    &r.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"hooks": hooks}})),
                )
                .await
                .map_err(kube_err(format!(
                    "recording the hooks of VolumeBackup {ns}/{}",
                    r.name_any()
                )))?;
        }
    }
    Ok(match failed {
        Some(m) if stage == "pre" => Err(format!("{m}; no snapshot was taken (on-error Fail)")),
        Some(m) => Err(format!("{m} (on-error Fail)")),
        None => Ok(()),
    })
}

/// The time left of `limit` since `since` (all of it when unknown).
fn remaining(
    since: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    limit: Duration,
) -> Duration {
    let Some(t) = since else { return limit };
    let elapsed = Utc::now().timestamp() - t.0.as_second();
    limit.saturating_sub(Duration::from_secs(elapsed.max(0) as u64))
}

/// The snapshot class for a PVC, from its driver.
async fn snapshot_class(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
) -> Result<Result<String, String>, Error> {
    let name = format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any());
    let Some(driver) = pvc_driver(ctx, pvc).await? else {
        return Ok(Err(format!("PersistentVolumeClaim {name} is not on a CSI volume (no CSI driver on its PV or StorageClass); back it up with method Filesystem")));
    };
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(snapshot::SNAPSHOT_GROUP, "v1", "VolumeSnapshotClass"),
        "volumesnapshotclasses",
    );
    let classes = list_classes(
        ctx,
        &ar,
        "VolumeSnapshotClasses",
        snapshot::IS_DEFAULT_CLASS,
    )
    .await?;
    let annotation = pvc
        .annotations()
        .get(snapshot::CLASS_ANNOTATION)
        .map(String::as_str);
    Ok(snapshot::choose_class(&name, annotation, &driver, &classes))
}

/// The CSI driver of a PVC's volume: its PV's, else its StorageClass's
/// provisioner.
async fn pvc_driver(ctx: &Ctx, pvc: &PersistentVolumeClaim) -> Result<Option<String>, Error> {
    let driver = match pvc.spec.as_ref().and_then(|s| s.volume_name.clone()) {
        Some(pv) => Api::<PersistentVolume>::all(ctx.client.clone())
            .get_opt(&pv)
            .await
            .map_err(kube_err(format!("reading PV {pv}")))?
            .and_then(|pv| pv.spec?.csi.map(|c| c.driver)),
        None => None,
    };
    let driver = match driver {
        Some(d) => Some(d),
        None => match pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()) {
            Some(sc) => Api::<StorageClass>::all(ctx.client.clone())
                .get_opt(&sc)
                .await
                .map_err(kube_err(format!("reading StorageClass {sc}")))?
                .map(|sc| sc.provisioner),
            None => None,
        },
    };
    Ok(driver)
}

/// The origin recorded in the snapshot, with the claim's spec.
async fn origin_of(ctx: &Ctx, pvc: &PersistentVolumeClaim) -> KubernetesOrigin {
    let spec = pvc.spec.clone().unwrap_or_default();
    KubernetesOrigin {
        cluster: ctx.opts.cluster.clone(),
        namespace: pvc.namespace(),
        pvc: Some(pvc.name_any()),
        pv: spec.volume_name.clone(),
        storage_class: spec.storage_class_name.clone(),
        volume_mode: Some(
            spec.volume_mode
                .clone()
                .unwrap_or_else(|| "Filesystem".into()),
        ),
        claim: Some(snapshot::claim_spec(pvc)),
        ..Default::default()
    }
}

/// A mover's command line up to its own arguments: the subcommand, its
/// run, how it opens the repository, and the administrator's limits.
/// [`Error::Refused`] when those limits do not allow the repository (its
/// URL): the run fails naming it, and no pod is made.
pub(crate) fn mover_command(
    ctx: &Ctx,
    sub: &str,
    run_ns: &str,
    run: &str,
    repo: &BackupRepository,
) -> Result<Vec<String>, Error> {
    let policy = &ctx.opts.policy;
    policy.check_url(&repo.spec.url).map_err(|why| {
        Error::Refused(format!(
            "BackupRepository {}/{}: {why}",
            repo.namespace().unwrap_or_default(),
            repo.name_any()
        ))
    })?;
    let mut a: Vec<String> = vec![
        "mover".into(),
        sub.into(),
        "--namespace".into(),
        run_ns.into(),
        "--run".into(),
        run.into(),
        "--repository-url".into(),
        repo.spec.url.clone(),
    ];
    for (k, v) in &repo.spec.options {
        a.push("--option".into());
        a.push(format!("{k}={v}"));
    }
    if repo.spec.credentials_secret_ref.is_some() {
        a.push("--credentials-dir".into());
        a.push(snapshot::CREDENTIALS_DIR.into());
    }
    if repo.spec.init {
        a.push("--init".into());
    }
    a.extend(policy.mover_args());
    Ok(a)
}

/// The backup mover's command line.
fn mover_args(
    ctx: &Ctx,
    vb: &VolumeBackup,
    repo: &BackupRepository,
    pvc: &str,
    block: bool,
    origin: &KubernetesOrigin,
) -> Result<Vec<String>, Error> {
    let mut a = mover_command(
        ctx,
        "backup",
        &vb.namespace().unwrap_or_default(),
        &vb.name_any(),
        repo,
    )?;
    a.extend([
        "--source".into(),
        if block {
            snapshot::SOURCE_DEVICE
        } else {
            snapshot::SOURCE_DIR
        }
        .into(),
        "--record-path".into(),
        format!("/{pvc}"),
        "--origin".into(),
        serde_json::to_string(origin).unwrap_or_default(),
        "--threads".into(),
        ctx.opts.mover_threads.to_string(),
        "--hostname".into(),
        ctx.opts
            .cluster
            .clone()
            .unwrap_or_else(|| "kubernetes".into()),
    ]);
    for t in &vb.spec.tags {
        a.push("--tag".into());
        a.push(t.clone());
    }
    for e in &vb.spec.excludes {
        a.push("--exclude".into());
        a.push(e.clone());
    }
    if let Some(rate) = ctx.opts.mover_read_limit {
        a.push("--limit-read".into());
        a.push(format!("{rate}B/s"));
    }
    Ok(a)
}

/// The one object whose status a mover writes (its run, schedule or
/// repository): the mover's account may read and patch that status, and
/// nothing else.
pub(crate) struct StatusOf {
    plural: String,
    namespace: String,
    name: String,
    owner: Option<OwnerReference>,
}

impl StatusOf {
    pub(crate) fn of<K: Resource<DynamicType = ()>>(obj: &K) -> StatusOf {
        StatusOf {
            plural: K::plural(&()).into_owned(),
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            owner: obj.controller_owner_ref(&()),
        }
    }
}

/// Creates a mover pod, after its own ServiceAccount (named as the pod, in
/// the pod's namespace) and a Role and RoleBinding (in `writes`' namespace)
/// that let that account read and patch `writes`' status and nothing else:
/// a mover cannot touch another run, even in its own namespace. The three
/// carry the pod's labels and, where they share its namespace, are owned by
/// the object written to, so that they go with it; [`delete_mover`] deletes
/// them once the pod is gone.
pub(crate) async fn create_mover(ctx: &Ctx, pod: &Pod, writes: &StatusOf) -> Result<(), Error> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let tns = writes.namespace.as_str();
    let owners = |in_ns: &str| -> Vec<&OwnerReference> {
        writes.owner.iter().filter(|_| in_ns == tns).collect()
    };
    let meta = |in_ns: &str| json!({"name": name, "namespace": in_ns, "labels": pod.labels(), "ownerReferences": owners(in_ns)});
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": meta(&ns),
        "automountServiceAccountToken": true,
    }))
    .unwrap_or_default();
    let role: Role = serde_json::from_value(json!({
        "metadata": meta(tns),
        "rules": [{
            "apiGroups": ["coffer.dev"],
            "resources": [format!("{}/status", writes.plural)],
            "resourceNames": [writes.name],
            "verbs": ["get", "patch"],
        }],
    }))
    .unwrap_or_default();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": meta(tns),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }))
    .unwrap_or_default();
    create(
        &Api::namespaced(ctx.client.clone(), &ns),
        &sa,
        &format!("ServiceAccount {ns}/{name}"),
    )
    .await?;
    create(
        &Api::namespaced(ctx.client.clone(), tns),
        &role,
        &format!("Role {tns}/{name}"),
    )
    .await?;
    create(
        &Api::namespaced(ctx.client.clone(), tns),
        &binding,
        &format!("RoleBinding {tns}/{name}"),
    )
    .await?;
    create(
        &Api::namespaced(ctx.client.clone(), &ns),
        pod,
        &format!("pod {ns}/{name}"),
    )
    .await
}

/// Deletes the mover pod `ns/name` and, once it is gone, its account (made
/// by [`create_mover`] for a status in `writes_ns`). Returns true while the
/// pod is still there.
pub(crate) async fn delete_mover(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    writes_ns: &str,
) -> Result<bool, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let what = format!("pod {ns}/{name}");
    if delete_pod(&pods, name, &what, ctx.opts.terminating_limit).await? {
        return Ok(true);
    }
    delete_account(ctx, ns, name, writes_ns).await?;
    Ok(false)
}

/// Deletes a mover's ServiceAccount, Role and RoleBinding; the account goes
/// last, so that one still there means the rest may be too.
pub(crate) async fn delete_account(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    writes_ns: &str,
) -> Result<(), Error> {
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let what = format!("ServiceAccount {ns}/{name}");
    match accounts.get_opt(name).await {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(()),
        // A namespace that has not opted in (or no longer does): nothing
        // could be made there, and what was made is owned by the run.
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::warn!(
                "cannot read {what} ({}); leaving it to the garbage collector",
                e.message
            );
            return Ok(());
        }
        Err(e) => return Err(kube_err(format!("reading {what}"))(e)),
    }
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), writes_ns);
    delete(&bindings, name, &format!("RoleBinding {writes_ns}/{name}")).await?;
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), writes_ns);
    delete(&roles, name, &format!("Role {writes_ns}/{name}")).await?;
    delete(&accounts, name, &what).await
}

/// Step 5, one deletion at a time: the mover pod, the clone PVC, its PV,
/// the VolumeSnapshot. Returns true when nothing is left.
async fn cleanup(ctx: &Ctx, vb: &VolumeBackup) -> Result<bool, Error> {
    let ns = vb.namespace().unwrap_or_default();
    let child = child_name(vb);
    if delete_mover(ctx, &ns, &child, &ns).await? {
        return Ok(false);
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    if delete_present(&pvcs, &child, &format!("PVC {ns}/{child}")).await? {
        return Ok(false);
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let bound = pvs
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing PersistentVolumes"))?
        .items
        .into_iter()
        .find(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some_and(|r| {
                    r.namespace.as_deref() == Some(ns.as_str())
                        && r.name.as_deref() == Some(child.as_str())
                })
        });
    if let Some(pv) = bound {
        delete_clone_volume(&pvs, &pv).await?;
        return Ok(false);
    }
    let snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(vs) = snaps
        .get_opt(&child)
        .await
        .map_err(kube_err(format!("reading VolumeSnapshot {ns}/{child}")))?
    {
        if vb.spec.retain_snapshot {
            if !vs.owner_references().is_empty() {
                // Kept: no longer owned by the run, so deleting the run
                // keeps it too.
                snaps
                    .patch(
                        &child,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
                    )
                    .await
                    .map_err(kube_err(format!("releasing VolumeSnapshot {ns}/{child}")))?;
            }
        } else {
            if vs.meta().deletion_timestamp.is_none() {
                delete(&snaps, &child, &format!("VolumeSnapshot {ns}/{child}")).await?;
            }
            return Ok(false);
        }
    }
    match &vb.spec.group {
        Some(g) => group_cleanup(ctx, vb, g).await,
        None => Ok(true),
    }
}

/// Deletes a clone's PV, once its claim is gone, with its volume.
async fn delete_clone_volume(
    pvs: &Api<PersistentVolume>,
    pv: &PersistentVolume,
) -> Result<(), Error> {
    let name = pv.name_any();
    if pv.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    reclaim_on_release(pvs, pv).await?;
    delete(pvs, &name, &format!("PV {name}")).await
}

/// Sets a retained clone volume to Delete: it would outlive the run, and
/// with Delete the driver deletes the volume with the object.
async fn reclaim_on_release(
    pvs: &Api<PersistentVolume>,
    pv: &PersistentVolume,
) -> Result<(), Error> {
    let name = pv.name_any();
    if pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        != Some("Retain")
    {
        return Ok(());
    }
    pvs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}})),
    )
    .await
    .map(drop)
    .map_err(kube_err(format!("setting PV {name} to Delete")))
}

/// The last step of a run of a group taken by a VolumeGroupSnapshot: once
/// every run of the group has ended and has no mover pod, clone or clone
/// volume left, the VolumeGroupSnapshot is deleted (its VolumeSnapshots go
/// with it), or kept when a run retains its snapshot, and the PVCs lose
/// their group label. Until then the run waits. Returns whether it is done.
async fn group_cleanup(
    ctx: &Ctx,
    vb: &VolumeBackup,
    g: &crate::crd::RunGroup,
) -> Result<bool, Error> {
    let Some(api) = group_snapshot_api(ctx).await? else {
        return Ok(true);
    };
    let ns = vb.namespace().unwrap_or_default();
    let name = group_snapshot_name(g);
    let vgss = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &api.snapshots);
    let Some(vgs) = vgss
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading VolumeGroupSnapshot {ns}/{name}")))?
    else {
        return Ok(true);
    };
    let Group::Claimed(runs) = group(ctx, vb).await? else {
        return Ok(true);
    };
    let clones: BTreeSet<String> = runs.iter().map(child_name).collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for r in &runs {
        let c = child_name(r);
        let busy = !r.status.as_ref().is_some_and(|s| s.phase.is_final())
            || pods
                .get_opt(&c)
                .await
                .map_err(kube_err(format!("reading pod {ns}/{c}")))?
                .is_some()
            || pvcs
                .get_opt(&c)
                .await
                .map_err(kube_err(format!("reading PVC {ns}/{c}")))?
                .is_some();
        if busy {
            return Ok(false);
        }
    }
    let clone_volumes = Api::<PersistentVolume>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing PersistentVolumes"))?
        .items
        .into_iter()
        .any(|pv| {
            pv.spec.and_then(|s| s.claim_ref).is_some_and(|r| {
                r.namespace.as_deref() == Some(ns.as_str())
                    && r.name.as_ref().is_some_and(|n| clones.contains(n))
            })
        });
    if clone_volumes {
        return Ok(false);
    }
    label_group(ctx, &runs, false).await?;
    if runs.iter().any(|r| r.spec.retain_snapshot) {
        if vgs
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| !o.is_empty())
        {
            vgss.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
            )
            .await
            .map_err(kube_err(format!(
                "releasing VolumeGroupSnapshot {ns}/{name}"
            )))?;
        }
        return Ok(true);
    }
    if vgs.metadata.deletion_timestamp.is_none() {
        delete(&vgss, &name, &format!("VolumeGroupSnapshot {ns}/{name}")).await?;
    }
    Ok(false)
}

/// How long after `--terminating-limit` a pod still Terminating is looked
/// at again, where no event would wake its owner (a lost node sends none).
pub(crate) const TERMINATING_RECHECK: Duration = Duration::from_secs(5);

/// Whether a pod deleted at `deletion` (the time its grace period ends)
/// has stayed past `limit` at `now` (Unix seconds).
pub(crate) fn terminating_too_long(deletion: i64, now: i64, limit: Duration) -> bool {
    now.saturating_sub(deletion) > limit.as_secs() as i64
}

/// [`delete_present`] for a mover pod: one still Terminating long after
/// its grace period is deleted at once (grace period 0), as `kubectl
/// delete --force` does, so that cleanup is bounded even when its node is
/// gone. A mover holds no state that outlives it: a backup it was writing
/// is an unfinished session the repository's protocol tolerates.
async fn delete_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    limit: Duration,
) -> Result<bool, Error> {
    let Some(p) = pods
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading {what}")))?
    else {
        return Ok(false);
    };
    match &p.metadata.deletion_timestamp {
        None => delete(pods, name, what).await?,
        Some(t) if terminating_too_long(t.0.as_second(), Utc::now().timestamp(), limit) => {
            tracing::warn!(
                "{what} is still Terminating {}s after its grace period (its node may be gone); deleting it at once",
                limit.as_secs()
            );
            let force = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::background()
            };
            match pods.delete(name, &force).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(kube_err(format!("deleting {what} at once"))(e)),
            }
        }
        Some(_) => {}
    }
    Ok(true)
}

/// After cleanup: the stage `Done` and the run's metrics, then, on the next
/// pass (at the version that write made), the finalizer off.
pub(crate) async fn finish<K: RunObject>(
    ctx: &Ctx,
    run: &K,
    st: &RunStatus,
    kind: &str,
) -> Result<Action, Error> {
    if st.phase.is_final() && st.stage.as_deref() != Some("Done") {
        let ns = run.namespace().unwrap_or_default();
        ctx.record(kind, &ns, st);
        let done = RunStatus {
            stage: Some("Done".into()),
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

/// The last Warning events of a pod, for a message.
async fn pod_events(ctx: &Ctx, pod: &Pod) -> String {
    let Ok(list) = this_pods_events(ctx, pod).await else {
        return String::new();
    };
    let notes = last_warnings(&list.items);
    let mut out = if notes.is_empty() {
        "; it has no Warning events".to_string()
    } else {
        format!("; its events: {}", notes.join("; "))
    };
    out.push_str(&unbound_claims(ctx, pod).await);
    out
}

/// The last three Warning events, newest first, as `Reason: message`.
fn last_warnings(events: &[CoreEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .rev()
        .take(3)
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.as_deref().unwrap_or_default(),
                e.message.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

/// Why the claims a pod mounts are not bound yet (a clone or restore
/// target whose provisioning fails: a missing storage class, a driver
/// that cannot clone): each unbound claim with its last Warning events.
async fn unbound_claims(ctx: &Ctx, pod: &Pod) -> String {
    let ns = pod.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let events: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = String::new();
    let claims = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref());
    for c in claims {
        let Ok(Some(pvc)) = pvcs.get_opt(&c.claim_name).await else {
            continue;
        };
        let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref() == Some("Bound") {
            continue;
        }
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind=PersistentVolumeClaim,involvedObject.name={},involvedObject.uid={}",
            pvc.name_any(),
            pvc.uid().unwrap_or_default()
        ));
        let notes = last_warnings(&events.list(&lp).await.map(|l| l.items).unwrap_or_default());
        out.push_str(&format!(
            "; PVC {ns}/{} is {}",
            pvc.name_any(),
            phase.as_deref().unwrap_or("Pending")
        ));
        if !notes.is_empty() {
            out.push_str(&format!(" ({})", notes.join("; ")));
        }
    }
    out
}

/// The events of this pod, not of an earlier pod of the same name (a
/// maintenance job, a recreated run), which may have failed on something
/// mended since.
async fn this_pods_events(ctx: &Ctx, pod: &Pod) -> Result<ObjectList<CoreEvent>, kube::Error> {
    let api: Api<CoreEvent> =
        Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={},involvedObject.uid={}",
        pod.name_any(),
        pod.uid().unwrap_or_default()
    ));
    api.list(&lp).await
}

/// Start-up sweep: objects made for runs that no longer exist (deleted
/// while no controller ran, finalizer removed by hand) are deleted, pods
/// first, then clones, then VolumeSnapshots. A retained clone volume is set
/// to Delete, so that it goes once its claim is gone, as any PV of that
/// policy does (deleting a PV while its claim still exists can leave the
/// volume behind).
async fn sweep(ctx: &Ctx) {
    sweep_kind::<Pod>(ctx, "leftover mover pod").await;
    let clones = sweep_kind::<PersistentVolumeClaim>(ctx, "leftover clone PVC").await;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    for volume in clones
        .iter()
        .filter_map(|c| c.spec.as_ref()?.volume_name.as_deref())
    {
        let released = match pvs.get_opt(volume).await {
            Ok(Some(pv)) => reclaim_on_release(&pvs, &pv).await,
            Ok(None) => Ok(()),
            Err(e) => Err(kube_err(format!("reading PV {volume}"))(e)),
        };
        if let Err(e) = released {
            tracing::warn!("start-up sweep: the volume of a leftover clone: {e}");
        }
    }
    sweep_kind::<VolumeSnapshot>(ctx, "leftover VolumeSnapshot").await;
}

/// Deletes the run-labelled objects of one kind whose owning VolumeBackup
/// is gone (or is another object of the same name); returns them.
async fn sweep_kind<K>(ctx: &Ctx, what: &str) -> Vec<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut swept = Vec::new();
    let list = match Api::<K>::all(ctx.client.clone())
        .list(&ListParams::default().labels(RUN_LABEL))
        .await
    {
        Ok(list) => list,
        Err(e) => {
            // Runs clean up after themselves; the sweep only helps.
            tracing::warn!("start-up sweep: listing {what}s: {e}");
            return swept;
        }
    };
    for o in list.items {
        let ns = o.namespace().unwrap_or_default();
        let Some(run) = o
            .owner_references()
            .iter()
            .find(|r| r.kind == "VolumeBackup")
        else {
            continue;
        };
        let gone = match Api::<VolumeBackup>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&run.name)
            .await
        {
            Ok(Some(vb)) => vb.uid().as_deref() != Some(run.uid.as_str()),
            Ok(None) => true,
            Err(_) => false,
        };
        if gone {
            let api = Api::<K>::namespaced(ctx.client.clone(), &ns);
            let what = format!("{what} {ns}/{}", o.name_any());
            match delete(&api, &o.name_any(), &what).await {
                Ok(()) => swept.push(o),
                Err(e) => tracing::warn!("start-up sweep: {e}"),
            }
        }
    }
    swept
}

impl Ctx {
    /// A mover pod `name` in `ns` that opens `repo` (its password Secret in
    /// the environment, its credentials Secret mounted), with this
    /// controller's image, account and memory limit; no volume, arguments,
    /// labels or owner yet (struct update syntax fills them).
    pub(crate) fn mover<'a>(
        &'a self,
        name: &'a str,
        ns: &'a str,
        repo: &'a BackupRepository,
    ) -> snapshot::Mover<'a> {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        snapshot::Mover {
            name,
            namespace: ns,
            image: &self.opts.mover_image,
            volume: None,
            args: Vec::new(),
            password: &repo.spec.password_secret_ref,
            credentials: repo.spec.credentials_secret_ref.as_ref(),
            repository_dir: snapshot::local_repository_dir(&repo.spec.url),
            memory: &self.opts.mover_memory,
            labels: &NO_LABELS,
            owner: None,
            destination: None,
        }
    }

    /// Ends a run that is not over yet (a mover's own result stands): its
    /// final status, then an Event. `Err` when the status
    /// could not be written, so that the reconcile is tried again rather
    /// than leaving the run open with nothing left to wake it.
    pub(crate) async fn end<K: RunObject>(
        &self,
        run: &K,
        outcome: Outcome,
        first_stage: &str,
    ) -> Result<(), Error> {
        let ns = run.namespace().unwrap_or_default();
        let (etype, reason, note) = match &outcome {
            Outcome::Failed(m) => (EventType::Warning, "Failed", m.clone()),
            Outcome::Canceled => (
                EventType::Normal,
                "Canceled",
                "canceled through spec.cancel".to_string(),
            ),
            Outcome::Done { .. } => (EventType::Normal, "Completed", String::new()),
        };
        let written = crate::report::try_update_run::<K>(&self.client, &ns, &run.name_any(), |s| {
            let stage = s.stage.clone();
            *s = status::finished(s.clone(), outcome.clone());
            s.stage = stage.or(Some(first_stage.into()));
            if s.start_time.is_none() {
                s.start_time = s.completion_time.clone();
            }
        })
        .await?;
        if written.is_some() {
            let reason = format!("{}{reason}", K::ACTION);
            tracing::info!(namespace = ns, run = run.name_any(), "{reason}: {note}");
            self.event(run, etype, &reason, note).await;
        }
        Ok(())
    }

    /// Metrics of a run that ended and is cleaned up.
    pub(crate) fn record(&self, kind: &str, ns: &str, st: &RunStatus) {
        if !st.phase.is_final() {
            return;
        }
        self.metrics
            .runs
            .get_or_create(&RunLabels {
                kind: kind.into(),
                namespace: ns.into(),
                phase: st.phase.as_str().into(),
            })
            .inc();
        let l = NamespaceLabels {
            kind: kind.into(),
            namespace: ns.into(),
        };
        if let Some(p) = &st.progress {
            self.metrics.bytes.get_or_create(&l).inc_by(p.bytes_done);
        }
        if let Some(added) = st.incremental_bytes {
            self.metrics.bytes_added.get_or_create(&l).inc_by(added);
        }
    }

    pub(crate) async fn event<K: RunObject>(
        &self,
        run: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.event_on(run, K::ACTION, type_, reason, note).await
    }

    /// An Event about any object.
    pub(crate) async fn event_on<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        action: &str,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        crate::report::publish_event(
            &self.recorder,
            &obj.object_ref(&()),
            type_,
            reason,
            action,
            note,
        )
        .await
    }
}

impl Ctx {
    async fn fail(&self, vb: &VolumeBackup, message: String) -> Result<(), Error> {
        self.end(vb, Outcome::Failed(message), "Snapshotting").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_terminating_past_the_limit_is_deleted_at_once() {
        let deletion = 1_000_000;
        let limit = Duration::from_secs(60);
        let too_long = |now| terminating_too_long(deletion, now, limit);
        // Before its grace period ends, and within the limit after: the
        // kubelet may still be stopping it.
        assert!(!too_long(deletion - 30));
        assert!(!too_long(deletion + 60));
        // Past the limit: its kubelet is gone.
        assert!(too_long(deletion + 61));
        // A clock far behind never underflows into "overdue".
        assert!(!terminating_too_long(i64::MAX, i64::MIN, limit));
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

    /// `thaw` sliced `&open[1..]` from a group it had just listed, which is
    /// empty once the run was canceled or left its group meanwhile: the
    /// controller panicked (and its standby after it).
    #[test]
    fn a_group_with_no_open_member_has_no_followers_and_no_panic() {
        assert_eq!(followers::<&str>(&[]), None);
        assert_eq!(followers(&["leader"]), Some(&[][..]));
        assert_eq!(followers(&["leader", "b", "c"]), Some(&["b", "c"][..]));
    }
}
