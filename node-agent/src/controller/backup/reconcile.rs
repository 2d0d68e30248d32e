//! The VolumeBackup reconciler (method Snapshot), one step per pass.

use std::sync::Arc;
use std::time::Duration;

use coffer_engine::format::snapshot::KubernetesOrigin;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::crd::{BackupMethod, BackupRepository, RunStatus, VolumeBackup};

use crate::api::{create, kube_err, Error};
use crate::controller::backup::cleanup::cleanup;
use crate::controller::backup::group::{
    find_snapshot, group, take_snapshots, thaw, Found, Group, GROUP_POLL,
};
use crate::controller::backup::hooks::{frozen, snapshot_hooks};
use crate::controller::backup::run::{
    child_name, home_child, is_open, run_annotations, run_labels,
};
use crate::controller::claims::{claim_spec, clone_claim, is_block, CloneClaim};
use crate::controller::context::Ctx;
use crate::controller::csi::{
    exposed_content, exposed_snapshot, snapshot_handle, snapshot_state, SnapshotState,
    VolumeSnapshot, VolumeSnapshotContent,
};
use crate::controller::lifecycle::{self, fail, follow_mover, ControllerRun, Triage};
use crate::controller::movers::pod::{mover_pod, MoverPod, MoverVolume, SOURCE_DEVICE, SOURCE_DIR};
use crate::controller::movers::{common_args, create_mover, SecretsOf, StatusOf};
use crate::hooks::HookStage;
use crate::mover::args::{BackupArgs, MoverArgs};
use crate::run::Stage;
use crate::time::remaining;

/// Reconciles one VolumeBackup; those of the node agent are left to it.
pub(crate) async fn reconcile(vb: Arc<VolumeBackup>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    lifecycle::reconcile(vb, ctx).await
}

impl ControllerRun for VolumeBackup {
    const METRIC: &'static str = "snapshot-backup";
    const FIRST_STAGE: Stage = Stage::Snapshotting;

    fn triage(&self) -> (Triage, Option<String>) {
        if self.spec.method == BackupMethod::Snapshot {
            return (Triage::Ours, None);
        }
        // The node agent's; only a run it can never take is ended here.
        let unusable = match self.spec.method {
            BackupMethod::Command => self.spec.pod.is_none().then_some(
                "spec.pod is required for method Command (the pod whose backup.coffer.dev/command is run)",
            ),
            _ => self.spec.pod_volume().is_none().then_some(
                "spec.pod and spec.volume are required for method Filesystem; to back up a PVC that no pod uses, set method: Snapshot and spec.pvc",
            ),
        };
        (Triage::NodeAgents, unusable.map(String::from))
    }

    fn cancel_requested(&self) -> bool {
        self.spec.cancel
    }

    async fn claim(&self, ctx: &Ctx) -> Result<Action, Error> {
        claim(ctx, self).await
    }

    async fn advance(&self, ctx: &Ctx, st: &RunStatus) -> Result<Action, Error> {
        advance(ctx, self, st).await
    }

    async fn cleanup(&self, ctx: &Ctx, st: &RunStatus) -> Result<bool, Error> {
        // A run that ended between its pre- and post-hooks (the snapshot
        // failed or timed out, a cancel) thaws its pods first.
        if frozen(&st.hooks) {
            // Its group's open runs are thawed with it (and carry the record).
            let mut runs = vec![self.clone()];
            if let Group::Claimed(members) = group(ctx, self).await? {
                runs.extend(
                    members
                        .into_iter()
                        .filter(|r| is_open(r) && r.name_any() != self.name_any()),
                );
            }
            // Its failure is an Event; the run's outcome stands.
            let _ = snapshot_hooks(ctx, &runs, HookStage::Post).await?;
        }
        cleanup(ctx, self).await
    }
}

/// Step 1: check what the run names, then take it.
pub(crate) async fn claim(ctx: &Ctx, vb: &VolumeBackup) -> Result<Action, Error> {
    let ns = vb.namespace().unwrap_or_default();
    let pvc_name = match source_claim(ctx, vb).await? {
        Ok(n) => n,
        Err(m) => {
            fail(ctx, vb, m).await?;
            return Ok(Action::await_change());
        }
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvc = pvcs
        .get_opt(&pvc_name)
        .await
        .map_err(kube_err(format!("reading PVC {ns}/{pvc_name}")))?;
    let Some(pvc) = pvc else {
        fail(
            ctx,
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
        fail(ctx, vb, format!("PersistentVolumeClaim {ns}/{pvc_name} is {phase:?}, not Bound: only a provisioned volume can be snapshotted")).await?;
        return Ok(Action::await_change());
    }
    if repository(ctx, vb).await?.is_none() {
        return Ok(Action::await_change());
    }
    lifecycle::claim(
        ctx,
        vb,
        Some(pvc_name.clone()),
        Some(format!("/{pvc_name}")),
        format!("snapshotting PVC {pvc_name}"),
    )
    .await
}

/// The PVC a run reads: `spec.pvc`, or the claim of the pod's volume.
pub(crate) async fn source_claim(
    ctx: &Ctx,
    vb: &VolumeBackup,
) -> Result<Result<String, String>, Error> {
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
pub(crate) async fn advance(ctx: &Ctx, vb: &VolumeBackup, st: &RunStatus) -> Result<Action, Error> {
    let ns = vb.namespace().unwrap_or_default();
    let child = child_name(vb);
    let Some(pvc_name) = st.pvc.clone() else {
        fail(
            ctx,
            vb,
            "the run's status lost its PVC; create the VolumeBackup again".into(),
        )
        .await?;
        return Ok(Action::await_change());
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);

    // 2. The snapshot, taken by the group's leader.
    let vs = match find_snapshot(ctx, vb).await? {
        Found::Snapshot(vs) => *vs,
        Found::Wait(d) => return Ok(Action::requeue(d)),
        Found::Failed(m) => {
            fail(ctx, vb, m).await?;
            return Ok(Action::await_change());
        }
        Found::Missing => {
            let open = match group(ctx, vb).await? {
                Group::Claimed(members) => members.into_iter().filter(is_open).collect::<Vec<_>>(),
                Group::Waiting(d) => return Ok(Action::requeue(d)),
                Group::Incomplete(m) => {
                    fail(ctx, vb, m).await?;
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

    // 3. to 5.: observe, plan, act. The snapshot is exposed in coffer's
    // own namespace, where its clone and the mover are made: the
    // application's namespace needs no right to run them.
    let home = ctx.opts.namespace.clone();
    let exposed = home_child(vb);
    let home_pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &home);
    let home_pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &home);
    let home_snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &home);
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let original = match vs
        .status
        .as_ref()
        .and_then(|s| s.bound_volume_snapshot_content_name.clone())
    {
        Some(c) => contents
            .get_opt(&c)
            .await
            .map_err(kube_err(format!("reading VolumeSnapshotContent {c}")))?,
        None => None,
    };
    let seen = MoverSeen {
        source: pvcs
            .get_opt(&pvc_name)
            .await
            .map_err(kube_err(format!("reading PVC {ns}/{pvc_name}")))?,
        content: original,
        exposed: home_snaps
            .get_opt(&exposed)
            .await
            .map_err(kube_err(format!("reading VolumeSnapshot {home}/{exposed}")))?,
        clone: home_pvcs
            .get_opt(&exposed)
            .await
            .map_err(kube_err(format!("reading PVC {home}/{exposed}")))?,
        mover: home_pods
            .get_opt(&exposed)
            .await
            .map_err(kube_err(format!("reading pod {home}/{exposed}")))?,
    };
    let left = |vs: &VolumeSnapshot| {
        remaining(
            vs.meta().creation_timestamp.as_ref(),
            ctx.opts.snapshot_timeout,
        )
    };
    let lefts = (
        left(&vs),
        seen.exposed.as_ref().map_or(Duration::ZERO, left),
    );
    let step = plan_move(vb, st, &vs, lefts, ctx.opts.snapshot_timeout, &seen, &home);
    let block = matches!(
        step,
        MoveStep::CreateClone { block: true } | MoveStep::StartMover { block: true }
    );
    let labels = run_labels(vb);
    let annotations = run_annotations(vb);
    match step {
        MoveStep::Fail(why) => {
            fail(ctx, vb, why).await?;
            Ok(Action::await_change())
        }
        MoveStep::Wait(d) => Ok(Action::requeue(d)),
        MoveStep::Follow => match &seen.mover {
            Some(pod) => follow_mover(ctx, vb, pod, |_| false).await,
            None => Ok(Action::requeue(Duration::ZERO)),
        },
        MoveStep::ThawAndFail(why) => {
            if let Some(wait) = thaw(ctx, vb).await? {
                return Ok(wait);
            }
            fail(ctx, vb, why).await?;
            Ok(Action::await_change())
        }
        MoveStep::Expose { handle } => {
            // The point in time is taken: the post-hooks, before anything else.
            if let Some(wait) = thaw(ctx, vb).await? {
                return Ok(wait);
            }
            let Some(original) = &seen.content else {
                return Ok(Action::requeue(Duration::ZERO));
            };
            let mark = |meta: &mut kube::api::ObjectMeta| {
                meta.labels = Some(labels.clone());
                meta.annotations = Some(annotations.clone());
            };
            let mut content = exposed_content(original, &handle, &home, &exposed);
            mark(&mut content.metadata);
            create(
                &contents,
                &content,
                &format!("VolumeSnapshotContent {exposed}"),
            )
            .await?;
            let mut snapshot = exposed_snapshot(original, &home, &exposed);
            mark(&mut snapshot.metadata);
            create(
                &home_snaps,
                &snapshot,
                &format!("VolumeSnapshot {home}/{exposed}"),
            )
            .await?;
            Ok(Action::requeue(ctx.opts.snapshot_timeout))
        }
        MoveStep::CreateClone { .. } => {
            let Some(source) = &seen.source else {
                return Ok(Action::requeue(Duration::ZERO));
            };
            let restore_size = match snapshot_state(&vs) {
                SnapshotState::Ready(size) => size,
                _ => None,
            };
            let c = clone_claim(&CloneClaim {
                name: &exposed,
                namespace: &home,
                snapshot: &exposed,
                source,
                restore_size: restore_size.as_ref(),
                storage_class_map: &ctx.opts.storage_class_map,
                read_only_many: ctx.opts.read_only_many,
                labels: &labels,
                annotations: &annotations,
            });
            create(&home_pvcs, &c, &format!("PVC {home}/{exposed}")).await?;
            // The next pass starts the mover.
            Ok(Action::requeue(Duration::ZERO))
        }
        MoveStep::StartMover { .. } => {
            let Some(spec_source) = seen.source.as_ref() else {
                return Ok(Action::requeue(Duration::ZERO));
            };
            let Some(repo) = repository(ctx, vb).await? else {
                return Ok(Action::await_change());
            };
            let origin = origin_of(ctx, spec_source).await;
            let args = mover_args(ctx, vb, &repo, &pvc_name, block, &origin)?;
            let volume = MoverVolume {
                claim: &exposed,
                block,
                write: false,
            };
            let mut p = mover_pod(&MoverPod {
                volume: Some(volume),
                args,
                labels: &labels,
                ..ctx.mover(&exposed, &home, &repo)
            });
            p.metadata.annotations = Some(annotations.clone());
            create_mover(ctx, &p, &StatusOf::of(vb), &SecretsOf::of(&[&repo])).await?;
            crate::report::update_run::<VolumeBackup>(&ctx.client, &ns, &vb.name_any(), |s| {
                s.stage = Some(Stage::Moving.into())
            })
            .await;
            ctx.reporter
                .run_event(
                    vb,
                    EventType::Normal,
                    "MoverStarted",
                    format!("VolumeSnapshot {child} is ready; mover pod {home}/{exposed} reads its clone"),
                )
                .await;
            Ok(Action::requeue(ctx.opts.prepare_timeout))
        }
    }
}

/// The run's BackupRepository; a missing one fails the run (`None`).
async fn repository(ctx: &Ctx, vb: &VolumeBackup) -> Result<Option<BackupRepository>, Error> {
    lifecycle::repository_or_fail(ctx, vb, &vb.spec.repository).await
}

/// What a backup pass saw once its VolumeSnapshot exists: the claim it
/// snapshots and the snapshot's content, then in coffer's namespace the
/// exposed snapshot, the clone and the mover pod.
#[derive(Debug, Default)]
pub(crate) struct MoverSeen {
    pub(crate) source: Option<PersistentVolumeClaim>,
    pub(crate) content: Option<VolumeSnapshotContent>,
    pub(crate) exposed: Option<VolumeSnapshot>,
    pub(crate) clone: Option<PersistentVolumeClaim>,
    pub(crate) mover: Option<Pod>,
}

/// Steps 3 to 5 of a backup, once its VolumeSnapshot exists.
#[derive(Debug, PartialEq)]
pub(crate) enum MoveStep {
    /// End the run: the snapshot failed or timed out, or what the run
    /// relied on went.
    Fail(String),
    /// A snapshot is not ready: look again after this.
    Wait(Duration),
    /// Run the post-hooks, then expose the snapshot (its storage handle)
    /// in coffer's namespace.
    Expose { handle: String },
    /// Run the post-hooks, then end the run: the claim went before its
    /// snapshot was exposed.
    ThawAndFail(String),
    /// Make the clone of the exposed snapshot (as a raw block claim).
    CreateClone { block: bool },
    /// Start the mover on the clone (reading it as a device).
    StartMover { block: bool },
    /// Follow the mover that runs.
    Follow,
}

/// Plans steps 3 to 5 of run `vb` from its snapshot `vs` and what the pass
/// saw; `left` is how much of `timeout` the snapshot and the exposed one
/// have left to become ready, `home` coffer's namespace.
pub(crate) fn plan_move(
    vb: &VolumeBackup,
    st: &RunStatus,
    vs: &VolumeSnapshot,
    left: (Duration, Duration),
    timeout: Duration,
    seen: &MoverSeen,
    home: &str,
) -> MoveStep {
    let ns = vb.namespace().unwrap_or_default();
    if let Some(wait) = ready(vs, &ns, left.0, timeout) {
        return wait;
    }
    let exposed = home_child(vb);
    let Some(exposed_vs) = &seen.exposed else {
        if seen.source.is_none() {
            return MoveStep::ThawAndFail(format!(
                "PersistentVolumeClaim {ns}/{} was deleted before its snapshot was read",
                st.pvc.clone().unwrap_or_default()
            ));
        }
        let content = vs
            .status
            .as_ref()
            .and_then(|s| s.bound_volume_snapshot_content_name.clone())
            .unwrap_or_default();
        // The content must be this snapshot's: its handle is exposed in
        // coffer's namespace, where another namespace's must never be.
        if let Some(c) = &seen.content {
            let r = &c.spec.volume_snapshot_ref;
            if r.namespace != ns || r.name != vs.name_any() {
                return MoveStep::Fail(format!(
                    "VolumeSnapshotContent {content} is bound to VolumeSnapshot {}/{}, not to {ns}/{}; it is not exposed",
                    r.namespace,
                    r.name,
                    vs.name_any()
                ));
            }
        }
        return match seen.content.as_ref().map(snapshot_handle) {
            Some(Some(handle)) => MoveStep::Expose {
                handle: handle.to_string(),
            },
            Some(None) => MoveStep::Fail(format!(
                "VolumeSnapshotContent {content} of VolumeSnapshot {ns}/{} is ready but has no snapshotHandle; check the CSI driver",
                vs.name_any()
            )),
            None => MoveStep::Fail(format!(
                "VolumeSnapshot {ns}/{} is ready but its VolumeSnapshotContent {content:?} is missing",
                vs.name_any()
            )),
        };
    };
    if let Some(wait) = ready(exposed_vs, home, left.1, timeout) {
        return wait;
    }
    let block = match (&seen.clone, &seen.source) {
        (Some(c), _) => is_block(c),
        (None, Some(s)) => return MoveStep::CreateClone { block: is_block(s) },
        (None, None) => {
            return MoveStep::Fail(format!(
                "PersistentVolumeClaim {ns}/{} was deleted before its clone was made",
                st.pvc.clone().unwrap_or_default()
            ))
        }
    };
    match &seen.mover {
        Some(_) => MoveStep::Follow,
        None if Stage::of(st) == Some(Stage::Moving) => MoveStep::Fail(format!(
            "mover pod {home}/{exposed} disappeared before the backup ended (deleted or evicted)"
        )),
        None => MoveStep::StartMover { block },
    }
}

/// `None` when snapshot `vs` (in `ns`) is ready; else whether to wait (it
/// has `left` of `timeout`) or fail.
fn ready(vs: &VolumeSnapshot, ns: &str, left: Duration, timeout: Duration) -> Option<MoveStep> {
    let name = vs.name_any();
    match snapshot_state(vs) {
        SnapshotState::Failed(m) => Some(MoveStep::Fail(format!(
            "VolumeSnapshot {ns}/{name} failed: {m}"
        ))),
        SnapshotState::Pending if left.is_zero() => Some(MoveStep::Fail(format!(
            "VolumeSnapshot {ns}/{name} did not become ready within {}; check the CSI driver and the snapshot controller (kubectl -n {ns} describe volumesnapshot {name})",
            humantime::format_duration(timeout)
        ))),
        SnapshotState::Pending => Some(MoveStep::Wait(left)),
        SnapshotState::Ready(_) => None,
    }
}

/// The origin recorded in the snapshot, with the claim's spec.
pub(crate) async fn origin_of(ctx: &Ctx, pvc: &PersistentVolumeClaim) -> KubernetesOrigin {
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
        claim: Some(claim_spec(pvc)),
        ..Default::default()
    }
}

/// The backup mover's command line.
pub(crate) fn mover_args(
    ctx: &Ctx,
    vb: &VolumeBackup,
    repo: &BackupRepository,
    pvc: &str,
    block: bool,
    origin: &KubernetesOrigin,
) -> Result<Vec<String>, Error> {
    let common = common_args(
        ctx,
        &vb.namespace().unwrap_or_default(),
        &vb.name_any(),
        repo,
    )?;
    let args = MoverArgs::Backup(Box::new(BackupArgs {
        common,
        source: if block { SOURCE_DEVICE } else { SOURCE_DIR }.into(),
        record_path: format!("/{pvc}").into(),
        origin: origin.clone(),
        tags: vb.spec.tags.clone(),
        excludes: vb.spec.excludes.clone(),
        threads: ctx.opts.mover_threads,
        limit_read: ctx.opts.mover_read_limit,
        hostname: ctx
            .opts
            .cluster
            .clone()
            .unwrap_or_else(|| "kubernetes".into()),
    }));
    Ok(args.to_argv())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run() -> VolumeBackup {
        serde_json::from_value(json!({
            "metadata": {"name": "nightly", "namespace": "shop"},
            "spec": {"method": "Snapshot", "pvc": "data"},
        }))
        .unwrap()
    }

    fn status(stage: Stage) -> RunStatus {
        RunStatus {
            phase: crate::crd::Phase::InProgress,
            stage: Some(stage.into()),
            pvc: Some("data".into()),
            ..Default::default()
        }
    }

    fn snapshot(status: serde_json::Value) -> VolumeSnapshot {
        serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "coffer-nightly", "namespace": "shop"},
            "spec": {"source": {"persistentVolumeClaimName": "data"}},
            "status": status,
        }))
        .unwrap()
    }

    fn claim(name: &str, block: bool) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"volumeMode": if block { "Block" } else { "Filesystem" }},
        }))
        .unwrap()
    }

    const TIMEOUT: Duration = Duration::from_secs(600);
    const HOME: &str = "coffer-system";

    fn content(handle: Option<&str>) -> VolumeSnapshotContent {
        serde_json::from_value(json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": "snapcontent-1"},
            "spec": {"deletionPolicy": "Delete", "driver": "csi.example",
                     "source": {"volumeHandle": "vol-1"},
                     "volumeSnapshotRef": {"namespace": "shop", "name": "coffer-nightly"}},
            "status": {"readyToUse": true, "snapshotHandle": handle},
        }))
        .unwrap()
    }

    fn exposed(status: serde_json::Value) -> VolumeSnapshot {
        let mut vs = snapshot(status);
        vs.metadata.namespace = Some(HOME.into());
        vs.metadata.name = Some(crate::names::home_name("backup", "shop", "nightly"));
        vs
    }

    #[test]
    fn a_snapshot_that_fails_or_never_becomes_ready_ends_the_run_naming_it() {
        let st = status(Stage::Snapshotting);
        let seen = MoverSeen::default();
        let pending = snapshot(json!({"readyToUse": false}));
        let left = Duration::from_secs(42);
        let plan = |vs, left, seen| plan_move(&run(), &st, vs, left, TIMEOUT, seen, HOME);
        assert_eq!(plan(&pending, (left, left), &seen), MoveStep::Wait(left));
        match plan(&pending, (Duration::ZERO, left), &seen) {
            MoveStep::Fail(m) => assert!(
                m.contains("shop/coffer-nightly did not become ready within 10m"),
                "{m}"
            ),
            other => panic!("planned {other:?}"),
        }
        let failed = snapshot(json!({"error": {"message": "driver says no"}}));
        match plan(&failed, (left, left), &seen) {
            MoveStep::Fail(m) => {
                assert!(m.contains("coffer-nightly failed: driver says no"), "{m}")
            }
            other => panic!("planned {other:?}"),
        }
        // The exposed snapshot is held to the same limit, named in its namespace.
        let ready = snapshot(json!({"readyToUse": true}));
        let waiting = MoverSeen {
            source: Some(claim("data", false)),
            exposed: Some(exposed(json!({}))),
            ..Default::default()
        };
        assert_eq!(plan(&ready, (left, left), &waiting), MoveStep::Wait(left));
        match plan(&ready, (left, Duration::ZERO), &waiting) {
            MoveStep::Fail(m) => assert!(
                m.contains("VolumeSnapshot coffer-system/coffer-shop-backup-nightly-")
                    && m.contains("did not become ready"),
                "{m}"
            ),
            other => panic!("planned {other:?}"),
        }
    }

    #[test]
    fn a_ready_snapshot_is_exposed_in_coffers_namespace_cloned_there_and_read_by_a_mover() {
        let ready = snapshot(json!({"readyToUse": true, "restoreSize": "1Gi",
                                    "boundVolumeSnapshotContentName": "snapcontent-1"}));
        let st = status(Stage::Snapshotting);
        let plan = |seen: &MoverSeen, st: &RunStatus| {
            plan_move(&run(), st, &ready, (TIMEOUT, TIMEOUT), TIMEOUT, seen, HOME)
        };
        // 3. Exposed by the storage's handle of the snapshot.
        let unexposed = MoverSeen {
            source: Some(claim("data", false)),
            content: Some(content(Some("snap-7"))),
            ..Default::default()
        };
        assert_eq!(
            plan(&unexposed, &st),
            MoveStep::Expose {
                handle: "snap-7".into()
            }
        );
        let no_handle = MoverSeen {
            content: Some(content(None)),
            ..unexposed
        };
        match plan(&no_handle, &st) {
            MoveStep::Fail(m) => assert!(
                m.contains("VolumeSnapshotContent snapcontent-1")
                    && m.contains("no snapshotHandle"),
                "{m}"
            ),
            other => panic!("planned {other:?}"),
        }
        let foreign = MoverSeen {
            content: Some({
                let mut c = content(Some("snap-9"));
                c.spec.volume_snapshot_ref.namespace = "other".into();
                c
            }),
            ..no_handle
        };
        match plan(&foreign, &st) {
            MoveStep::Fail(m) => assert!(
                m.contains("bound to VolumeSnapshot other/coffer-nightly")
                    && m.contains("not exposed"),
                "{m}"
            ),
            other => panic!("planned {other:?}"),
        }
        let no_content = MoverSeen {
            source: Some(claim("data", false)),
            ..Default::default()
        };
        match plan(&no_content, &st) {
            MoveStep::Fail(m) => assert!(m.contains("\"snapcontent-1\" is missing"), "{m}"),
            other => panic!("planned {other:?}"),
        }
        // 4. and 5. Cloned, then read.
        let ready_exposed = exposed(json!({"readyToUse": true}));
        for block in [false, true] {
            let source_only = MoverSeen {
                source: Some(claim("data", block)),
                exposed: Some(ready_exposed.clone()),
                ..Default::default()
            };
            assert_eq!(plan(&source_only, &st), MoveStep::CreateClone { block });
            let cloned = MoverSeen {
                clone: Some(claim("coffer-shop-nightly", block)),
                ..source_only
            };
            assert_eq!(plan(&cloned, &st), MoveStep::StartMover { block });
        }
        let moving = MoverSeen {
            exposed: Some(ready_exposed.clone()),
            clone: Some(claim("coffer-shop-nightly", false)),
            mover: Some(
                serde_json::from_value(json!({"metadata": {"name": "coffer-shop-nightly"}}))
                    .unwrap(),
            ),
            ..Default::default()
        };
        assert_eq!(plan(&moving, &status(Stage::Moving)), MoveStep::Follow);
        // Gone: the claim before its snapshot was exposed (post-hooks
        // first), the mover while it moved.
        match plan(&MoverSeen::default(), &st) {
            MoveStep::ThawAndFail(m) => {
                assert!(
                    m.contains("shop/data was deleted before its snapshot was read"),
                    "{m}"
                )
            }
            other => panic!("planned {other:?}"),
        }
        let mover_gone = MoverSeen {
            mover: None,
            ..moving
        };
        match plan(&mover_gone, &status(Stage::Moving)) {
            MoveStep::Fail(m) => assert!(
                m.contains("mover pod coffer-system/coffer-shop-backup-nightly-")
                    && m.contains("disappeared"),
                "{m}"
            ),
            other => panic!("planned {other:?}"),
        }
    }
}
