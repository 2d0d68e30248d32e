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
use crate::controller::backup::run::{child_name, is_open, run_labels};
use crate::controller::claims::{claim_spec, clone_claim, is_block, CloneClaim};
use crate::controller::context::Ctx;
use crate::controller::csi::snapshot_state;
use crate::controller::csi::{SnapshotState, VolumeSnapshot};
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
        pvc_name.clone(),
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
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

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

    // 3. and 4.: observe, plan, act.
    let vs_name = vs.name_any();
    let read_pvc = |name: String| {
        let pvcs = pvcs.clone();
        let what = format!("reading PVC {ns}/{name}");
        async move { pvcs.get_opt(&name).await.map_err(kube_err(what)) }
    };
    let seen = MoverSeen {
        source: read_pvc(pvc_name.clone()).await?,
        clone: read_pvc(child.clone()).await?,
        mover: pods
            .get_opt(&child)
            .await
            .map_err(kube_err(format!("reading pod {ns}/{child}")))?,
    };
    let left = remaining(
        vs.meta().creation_timestamp.as_ref(),
        ctx.opts.snapshot_timeout,
    );
    let step = plan_move(vb, st, &vs, left, ctx.opts.snapshot_timeout, &seen);
    let block = matches!(
        step,
        MoveStep::CreateClone { block: true } | MoveStep::StartMover { block: true }
    );
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
        MoveStep::CreateClone { .. } => {
            // The point in time is taken: the post-hooks, before the clone.
            if let Some(wait) = thaw(ctx, vb).await? {
                return Ok(wait);
            }
            let Some(source) = &seen.source else {
                return Ok(Action::requeue(Duration::ZERO));
            };
            let labels = run_labels(vb);
            let owner = vb.controller_owner_ref(&()).unwrap_or_default();
            let restore_size = match snapshot_state(&vs) {
                SnapshotState::Ready(size) => size,
                _ => None,
            };
            let c = clone_claim(&CloneClaim {
                name: &child,
                snapshot: &vs_name,
                source,
                restore_size: restore_size.as_ref(),
                storage_class_map: &ctx.opts.storage_class_map,
                read_only_many: ctx.opts.read_only_many,
                labels: &labels,
                owner: &owner,
            });
            create(&pvcs, &c, &format!("PVC {ns}/{child}")).await?;
            // The next pass starts the mover.
            Ok(Action::requeue(Duration::ZERO))
        }
        MoveStep::StartMover { .. } => {
            let Some(spec_source) = seen.source.as_ref().or(seen.clone.as_ref()) else {
                return Ok(Action::requeue(Duration::ZERO));
            };
            let Some(repo) = repository(ctx, vb).await? else {
                return Ok(Action::await_change());
            };
            let origin = origin_of(ctx, spec_source).await;
            let args = mover_args(ctx, vb, &repo, &pvc_name, block, &origin)?;
            let labels = run_labels(vb);
            let owner = vb.controller_owner_ref(&()).unwrap_or_default();
            let volume = MoverVolume {
                claim: &child,
                block,
                write: false,
            };
            let p = mover_pod(&MoverPod {
                volume: Some(volume),
                args,
                labels: &labels,
                owner: Some(&owner),
                ..ctx.mover(&child, &ns, &repo)
            });
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
                    format!("VolumeSnapshot {child} is ready; mover pod {child} reads its clone"),
                )
                .await;
            Ok(Action::requeue(ctx.opts.prepare_timeout))
        }
    }
}

/// The run's BackupRepository; a missing one fails the run (`None`).
async fn repository(ctx: &Ctx, vb: &VolumeBackup) -> Result<Option<BackupRepository>, Error> {
    let ns = vb.namespace().unwrap_or_default();
    let repo = Api::<BackupRepository>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&vb.spec.repository)
        .await
        .map_err(kube_err(format!(
            "reading BackupRepository {ns}/{}",
            vb.spec.repository
        )))?;
    if repo.is_none() {
        let e = crate::repos::RepoError::Missing {
            namespace: ns,
            name: vb.spec.repository.clone(),
        };
        fail(ctx, vb, e.to_string()).await?;
    }
    Ok(repo)
}

/// What a backup pass saw once its VolumeSnapshot exists: the claim it
/// snapshots, the clone, and the mover pod.
#[derive(Debug, Default)]
pub(crate) struct MoverSeen {
    pub(crate) source: Option<PersistentVolumeClaim>,
    pub(crate) clone: Option<PersistentVolumeClaim>,
    pub(crate) mover: Option<Pod>,
}

/// Steps 3 and 4 of a backup, once its VolumeSnapshot exists.
#[derive(Debug, PartialEq)]
pub(crate) enum MoveStep {
    /// End the run: the snapshot failed or timed out, or what the run
    /// relied on went.
    Fail(String),
    /// The snapshot is not ready: look again after this.
    Wait(Duration),
    /// Run the post-hooks, then make the clone (as a raw block claim).
    CreateClone { block: bool },
    /// Run the post-hooks, then end the run: the claim went before its
    /// clone was made.
    ThawAndFail(String),
    /// Start the mover on the clone (reading it as a device).
    StartMover { block: bool },
    /// Follow the mover that runs.
    Follow,
}

/// Plans steps 3 and 4 of run `vb` from its snapshot `vs` (with `left` of
/// `timeout` to become ready) and what the pass saw.
pub(crate) fn plan_move(
    vb: &VolumeBackup,
    st: &RunStatus,
    vs: &VolumeSnapshot,
    left: Duration,
    timeout: Duration,
    seen: &MoverSeen,
) -> MoveStep {
    let ns = vb.namespace().unwrap_or_default();
    let vs_name = vs.name_any();
    match snapshot_state(vs) {
        SnapshotState::Failed(m) => {
            return MoveStep::Fail(format!("VolumeSnapshot {ns}/{vs_name} failed: {m}"))
        }
        SnapshotState::Pending if left.is_zero() => {
            return MoveStep::Fail(format!(
                "VolumeSnapshot {ns}/{vs_name} did not become ready within {}; check the CSI driver and the snapshot controller (kubectl -n {ns} describe volumesnapshot {vs_name})",
                humantime::format_duration(timeout)
            ))
        }
        SnapshotState::Pending => return MoveStep::Wait(left),
        SnapshotState::Ready(_) => {}
    }
    let child = child_name(vb);
    let block = match (&seen.clone, &seen.source) {
        (Some(c), _) => is_block(c),
        (None, Some(s)) => return MoveStep::CreateClone { block: is_block(s) },
        (None, None) => {
            return MoveStep::ThawAndFail(format!(
                "PersistentVolumeClaim {ns}/{} was deleted before its clone was made",
                st.pvc.clone().unwrap_or_default()
            ))
        }
    };
    match &seen.mover {
        Some(_) => MoveStep::Follow,
        None if Stage::of(st) == Some(Stage::Moving) => MoveStep::Fail(format!(
            "mover pod {ns}/{child} disappeared before the backup ended (deleted or evicted)"
        )),
        None => MoveStep::StartMover { block },
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

    #[test]
    fn a_snapshot_that_fails_or_never_becomes_ready_ends_the_run_naming_it() {
        let st = status(Stage::Snapshotting);
        let seen = MoverSeen::default();
        let pending = snapshot(json!({"readyToUse": false}));
        let left = Duration::from_secs(42);
        assert_eq!(
            plan_move(&run(), &st, &pending, left, TIMEOUT, &seen),
            MoveStep::Wait(left)
        );
        match plan_move(&run(), &st, &pending, Duration::ZERO, TIMEOUT, &seen) {
            MoveStep::Fail(m) => assert!(
                m.contains("shop/coffer-nightly did not become ready within 10m"),
                "{m}"
            ),
            other => panic!("planned {other:?}"),
        }
        let failed = snapshot(json!({"error": {"message": "driver says no"}}));
        match plan_move(&run(), &st, &failed, left, TIMEOUT, &seen) {
            MoveStep::Fail(m) => {
                assert!(m.contains("coffer-nightly failed: driver says no"), "{m}")
            }
            other => panic!("planned {other:?}"),
        }
    }

    #[test]
    fn a_ready_snapshot_is_cloned_then_read_by_a_mover_that_is_then_followed() {
        let ready = snapshot(json!({"readyToUse": true, "restoreSize": "1Gi"}));
        let st = status(Stage::Snapshotting);
        let plan = |seen: &MoverSeen, st: &RunStatus| {
            plan_move(&run(), st, &ready, TIMEOUT, TIMEOUT, seen)
        };
        for block in [false, true] {
            let source_only = MoverSeen {
                source: Some(claim("data", block)),
                ..Default::default()
            };
            assert_eq!(plan(&source_only, &st), MoveStep::CreateClone { block });
            let cloned = MoverSeen {
                source: Some(claim("data", block)),
                clone: Some(claim("coffer-nightly", block)),
                ..Default::default()
            };
            assert_eq!(plan(&cloned, &st), MoveStep::StartMover { block });
        }
        let moving = MoverSeen {
            clone: Some(claim("coffer-nightly", false)),
            mover: Some(
                serde_json::from_value(json!({"metadata": {"name": "coffer-nightly"}})).unwrap(),
            ),
            ..Default::default()
        };
        assert_eq!(plan(&moving, &status(Stage::Moving)), MoveStep::Follow);
        // Gone: the claim before its clone (post-hooks first), the mover
        // while it moved.
        match plan(&MoverSeen::default(), &st) {
            MoveStep::ThawAndFail(m) => {
                assert!(m.contains("shop/data was deleted before its clone"), "{m}")
            }
            other => panic!("planned {other:?}"),
        }
        let mover_gone = MoverSeen {
            clone: Some(claim("coffer-nightly", false)),
            ..Default::default()
        };
        match plan(&mover_gone, &status(Stage::Moving)) {
            MoveStep::Fail(m) => assert!(
                m.contains("mover pod shop/coffer-nightly disappeared"),
                "{m}"
            ),
            other => panic!("planned {other:?}"),
        }
    }
}
