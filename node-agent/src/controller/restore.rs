//! The controller's restores into new PersistentVolumeClaims
//! (VolumeRestores with `spec.target`), one step at a time. Its pods and
//! the volume it fills live in coffer's own namespace; the target's
//! namespace only ever sees its claim appear, Bound, with the data in it
//! (the technique of volume populators):
//!
//! 1. **claim**: check the target (its namespace has the BackupRepository,
//!    its PVC does not exist yet), add the cleanup finalizer, mark the run
//!    InProgress (stage `Resolving`);
//! 2. **resolve**: a mover pod with no volume finds the snapshot (by id, or
//!    the latest of an origin) and writes its id and recorded claim into the
//!    run's status. The controller never reads Secrets, so it cannot open
//!    the repository itself;
//! 3. **provision**: a claim in coffer's namespace with the target's spec,
//!    from the recorded claim with the target's size and class, or the
//!    mapped class ([`restored_claim`]);
//! 4. **restore**: a mover pod mounts it read-write (or as a device) and
//!    restores the snapshot into it (stage `Restoring`), then records its
//!    result, the run still InProgress (stage `HandingOver`);
//! 5. **hand over**: the volume is kept (reclaim policy Retain), its
//!    `claimRef` moved to the target claim, the filling claim deleted, the
//!    target claim created bound to the volume (`spec.volumeName`), and once
//!    it is Bound the volume's reclaim policy is put back and the run ends;
//! 6. **clean up**: the mover pods are deleted. A restore that failed or
//!    was canceled also deletes what it made: the filling claim, the target
//!    claim and the volume, so that running it again starts clean.
//!
//! The movers open the target namespace's BackupRepository with its
//! Secrets, so a namespace without one cannot be restored into. Owner
//! references cannot cross namespaces, so what lies in coffer's namespace
//! carries the run in a label and an annotation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::crd::{BackupRepository, Phase, RestoreTarget, RunStatus, VolumeRestore};

use crate::api::{delete, delete_present, kube_err, Error};
use crate::controller::claims::{claim_like, is_block, restored_claim, RestoredClaim};
use crate::controller::context::Ctx;
use crate::controller::lifecycle::{self, fail, follow_mover, ControllerRun, Triage};
use crate::controller::movers::pod::MoverVolume;
use crate::controller::movers::pod::{mover_pod, MoverPod};
use crate::controller::movers::{
    common_args, create_mover, delete_mover, role_namespaces, sweep_movers, SecretsOf, StatusOf,
    TERMINATING_RECHECK,
};
use crate::controller::populator::source_of;
use crate::controller::volumes::delete_volume;
use crate::mover::args::{MoverArgs, ResolveArgs, RestoreArgs};
use crate::names::{
    annotated_run, home_name, label_value, RESTORED_BY, RESTORED_FROM, RESTORE_LABEL,
    RUN_ANNOTATION,
};
use crate::run::Stage;
use serde_json::json;

fn target_ns(vr: &VolumeRestore, t: &RestoreTarget) -> String {
    t.namespace
        .clone()
        .unwrap_or_else(|| vr.namespace().unwrap_or_default())
}

fn resolver_name(vr: &VolumeRestore) -> String {
    home_name(
        "resolve",
        &vr.namespace().unwrap_or_default(),
        &vr.name_any(),
    )
}

/// The restorer pod's name, and the filling claim's.
fn restorer_name(vr: &VolumeRestore) -> String {
    home_name(
        "restore",
        &vr.namespace().unwrap_or_default(),
        &vr.name_any(),
    )
}

fn run_key(vr: &VolumeRestore) -> String {
    format!("{}/{}", vr.namespace().unwrap_or_default(), vr.name_any())
}

fn pod_labels(vr: &VolumeRestore) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RESTORE_LABEL.to_string(), label_value(&vr.name_any())),
        crate::names::managed_by(),
    ])
}

/// Reconciles one VolumeRestore; those without a target are the node
/// agent's.
pub(crate) async fn reconcile(vr: Arc<VolumeRestore>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    lifecycle::reconcile(vr, ctx).await
}

impl ControllerRun for VolumeRestore {
    const METRIC: &'static str = "pvc-restore";
    const FIRST_STAGE: Stage = Stage::Resolving;

    fn triage(&self) -> (Triage, Option<String>) {
        match &self.spec.target {
            None => (
                Triage::NodeAgents,
                self.spec.pod_volume().is_none().then(|| "spec.target (a new PVC), or spec.pod and spec.volume (a running pod's volume), is required".into()),
            ),
            Some(_) => (
                Triage::Ours,
                (self.spec.pod.is_some() || self.spec.volume.is_some()).then(|| "give spec.target (a new PVC) or spec.pod and spec.volume (a running pod's volume), not both".into()),
            ),
        }
    }

    fn cancel_requested(&self) -> bool {
        self.spec.cancel
    }

    async fn claim(&self, ctx: &Ctx) -> Result<Action, Error> {
        match &self.spec.target {
            Some(target) => claim(ctx, self, target).await,
            None => Ok(Action::await_change()),
        }
    }

    async fn advance(&self, ctx: &Ctx, st: &RunStatus) -> Result<Action, Error> {
        match &self.spec.target {
            Some(target) => advance(ctx, self, target, st).await,
            None => Ok(Action::await_change()),
        }
    }

    async fn cleanup(&self, ctx: &Ctx, st: &RunStatus) -> Result<bool, Error> {
        match &self.spec.target {
            Some(target) => cleanup(ctx, self, target, st).await,
            None => Ok(true),
        }
    }
}

/// Step 1.
async fn claim(ctx: &Ctx, vr: &VolumeRestore, target: &RestoreTarget) -> Result<Action, Error> {
    let tns = target_ns(vr, target);
    if target.pvc.is_empty() {
        fail(
            ctx,
            vr,
            "spec.target.pvc is empty: name the PVC to create".into(),
        )
        .await?;
        return Ok(Action::await_change());
    }
    let Some(_) = repository(ctx, vr, &tns).await? else {
        return Ok(Action::await_change());
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &tns);
    let found = pvcs
        .get_opt(&target.pvc)
        .await
        .map_err(kube_err(format!("reading PVC {tns}/{}", target.pvc)))?;
    if target.existing {
        let why = match &found {
            None => Some("does not exist"),
            Some(c) if source_of(c).is_none() => Some(
                "is bound already, or its spec.dataSourceRef names no coffer.dev RestoreSource",
            ),
            Some(_) => None,
        };
        if let Some(why) = why {
            fail(ctx, vr, format!("PersistentVolumeClaim {tns}/{} {why}: spec.target.existing fills only an unbound claim made to be populated by coffer", target.pvc)).await?;
            return Ok(Action::await_change());
        }
    } else if found.is_some() {
        // A new run has made nothing yet: whatever is there is another's,
        // or a finished run's of the same name.
        fail(ctx, vr, format!("PersistentVolumeClaim {tns}/{} already exists; a restore creates a new PVC: choose another spec.target.pvc, or delete that one", target.pvc)).await?;
        return Ok(Action::await_change());
    }
    lifecycle::claim(
        ctx,
        vr,
        Some(target.pvc.clone()),
        None,
        format!("restoring into new PVC {tns}/{}", target.pvc),
    )
    .await
}

/// The target namespace's BackupRepository; a missing one fails the run.
/// Another namespace's repository serves only the namespaces it names in
/// `spec.allowedSourceNamespaces`: without that consent the run fails with
/// the same words whether or not the repository exists, so nothing of the
/// other namespace is learnt, and nothing is made there.
async fn repository(
    ctx: &Ctx,
    vr: &VolumeRestore,
    tns: &str,
) -> Result<Option<BackupRepository>, Error> {
    let name = &vr.spec.repository;
    let ns = vr.namespace().unwrap_or_default();
    let repo = Api::<BackupRepository>::namespaced(ctx.client.clone(), tns)
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading BackupRepository {tns}/{name}")))?;
    if tns != ns {
        let consents = repo
            .as_ref()
            .is_some_and(|r| r.spec.allowed_source_namespaces.contains(&ns));
        if !consents {
            fail(ctx, vr, format!("namespace {tns} does not allow restores from namespace {ns}: a restore into another namespace needs a BackupRepository {tns}/{name} whose spec.allowedSourceNamespaces lists {ns}; ask that namespace's owner")).await?;
            return Ok(None);
        }
    }
    if repo.is_none() {
        fail(ctx, vr, format!("BackupRepository {tns}/{name} not found: a restore into namespace {tns} runs there, with a BackupRepository of that name (the repository's URL and password Secret); create it, or set spec.repository")).await?;
    }
    Ok(repo)
}

/// What a restore pass saw, each read only when the run has come that far.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// The resolver pod (read until the snapshot is resolved).
    pub(crate) resolver: Option<Pod>,
    /// The claim the restorer fills, in coffer's namespace.
    pub(crate) fill: Option<PersistentVolumeClaim>,
    /// The restorer pod.
    pub(crate) restorer: Option<Pod>,
    /// The volume filled (once handing over): the filling claim's, else
    /// the one labelled with the run.
    pub(crate) volume: Option<PersistentVolume>,
    /// The target claim.
    pub(crate) target: Option<PersistentVolumeClaim>,
}

/// What a pass over a restore into a new claim does (steps 2 to 5).
#[derive(Debug, PartialEq)]
pub(crate) enum RestoreStep {
    /// 2. Start the mover that finds the snapshot.
    StartResolver,
    /// 2. or 4. Watch the mover that runs: the resolver, or the restorer.
    Watch(MoverRole),
    /// 3. Create the claim to fill, in coffer's namespace.
    CreateFill,
    /// 4. Start the mover that restores into it (a raw block claim is
    ///    written as a device).
    StartRestorer { block: bool },
    /// 5. The restorer is done: delete its pod, which holds the volume.
    RemoveRestorer,
    /// 5. Keep the volume through the handover (reclaim policy Retain,
    ///    the old policy and the run recorded on it).
    KeepVolume(String),
    /// 5. Reserve the volume for the target claim (its `claimRef`).
    MoveVolume(String),
    /// 5. Delete the filling claim, which no longer holds the volume.
    DeleteFill,
    /// 5. Create the target claim, bound to the volume.
    CreateTarget(String),
    /// 5. Wait for the target claim to be Bound.
    WaitBound,
    /// 5. Put the volume's reclaim policy back; its record goes.
    Release(String),
    /// 5. End the run: the target claim holds the data.
    Complete,
    /// End the run: something it relied on went.
    Fail(String),
}

/// Which of a restore's two movers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MoverRole {
    Resolver,
    Restorer,
}

/// The annotation on a volume being handed over: its reclaim policy before.
pub const RECLAIM_POLICY: &str = "coffer.dev/reclaim-policy";

/// The annotation on a volume being handed over: when the handover began
/// (the target claim must bind to it within `--prepare-timeout` of that).
pub const HANDOVER_SINCE: &str = "coffer.dev/handover-since";

/// Whether the claim that volume `pv` is handed to has had `limit` to bind
/// since the handover began ([`HANDOVER_SINCE`]); a volume without the
/// annotation (handed over by an older controller) is given the time.
pub(crate) fn handover_overdue(
    pv: &PersistentVolume,
    limit: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    pv.annotations()
        .get(HANDOVER_SINCE)
        .and_then(|t| t.parse::<crate::time::Timestamp>().ok())
        .is_some_and(|since| (now - since.at()).to_std().unwrap_or_default() >= limit)
}

/// Plans a pass over restore `vr` (into claim `pvc` of namespace `tns`,
/// filled in namespace `home`) from its status and what was seen.
pub(crate) fn plan_restore(
    vr: &VolumeRestore,
    tns: &str,
    pvc: &str,
    home: &str,
    st: &RunStatus,
    seen: &Seen,
) -> RestoreStep {
    if st.snapshot_id.is_none() || st.source_claim.is_none() {
        return match seen.resolver {
            None => RestoreStep::StartResolver,
            Some(_) => RestoreStep::Watch(MoverRole::Resolver),
        };
    }
    // A claim to populate is the user's; any other is made by the run.
    let existing = vr.spec.target.as_ref().is_some_and(|t| t.existing);
    let ours = |c: &PersistentVolumeClaim| {
        existing || c.annotations().get(RESTORED_BY) == Some(&run_key(vr))
    };
    let fill = restorer_name(vr);
    if existing && seen.target.is_none() {
        return RestoreStep::Fail(format!(
            "PersistentVolumeClaim {tns}/{pvc}, which this restore populates, was deleted"
        ));
    }
    if seen.target.as_ref().is_some_and(|t| !ours(t)) {
        return RestoreStep::Fail(format!("PersistentVolumeClaim {tns}/{pvc} was created by someone else during the restore; choose another spec.target.pvc"));
    }
    if Stage::of(st) == Some(Stage::HandingOver) {
        if seen.restorer.is_some() {
            return RestoreStep::RemoveRestorer;
        }
        let Some(pv) = &seen.volume else {
            return match &seen.target {
                Some(t) if is_bound(t) => RestoreStep::Complete,
                _ => RestoreStep::Fail(format!(
                    "the volume restored into PersistentVolumeClaim {home}/{fill} is gone (deleted during the handover to {tns}/{pvc})"
                )),
            };
        };
        let name = pv.name_any();
        let spec = pv.spec.as_ref();
        if !pv.annotations().contains_key(RECLAIM_POLICY) {
            return RestoreStep::KeepVolume(name);
        }
        let claim = spec.and_then(|s| s.claim_ref.as_ref());
        let reserved = claim
            .is_some_and(|r| r.namespace.as_deref() == Some(tns) && r.name.as_deref() == Some(pvc));
        if !reserved {
            return RestoreStep::MoveVolume(name);
        }
        if seen.fill.is_some() {
            return RestoreStep::DeleteFill;
        }
        return match &seen.target {
            None => RestoreStep::CreateTarget(name),
            Some(t) if !is_bound(t) => RestoreStep::WaitBound,
            Some(_) => RestoreStep::Release(name),
        };
    }
    if seen.target.is_some() && !existing {
        return RestoreStep::Fail(format!("PersistentVolumeClaim {tns}/{pvc} was created by someone else during the restore; choose another spec.target.pvc"));
    }
    let restoring = Stage::of(st) == Some(Stage::Restoring);
    let claim = match &seen.fill {
        Some(c) => c,
        None if restoring => {
            return RestoreStep::Fail(format!(
                "PersistentVolumeClaim {home}/{fill} (the volume being filled) was deleted during the restore"
            ))
        }
        None => return RestoreStep::CreateFill,
    };
    match seen.restorer {
        Some(_) => RestoreStep::Watch(MoverRole::Restorer),
        None if restoring => RestoreStep::Fail(format!(
            "mover pod {home}/{fill} disappeared before the restore ended (deleted or evicted)"
        )),
        None => RestoreStep::StartRestorer {
            block: is_block(claim),
        },
    }
}

fn is_bound(c: &PersistentVolumeClaim) -> bool {
    c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        && c.spec
            .as_ref()
            .and_then(|s| s.volume_name.as_ref())
            .is_some()
}

/// How long a handed-over claim is given to bind before it is looked at
/// again (the binding wakes nothing here).
const BIND_POLL: Duration = Duration::from_secs(2);

/// Steps 2 to 5, from where the run stands: observe, plan, act.
async fn advance(
    ctx: &Ctx,
    vr: &VolumeRestore,
    target: &RestoreTarget,
    st: &RunStatus,
) -> Result<Action, Error> {
    let tns = target_ns(vr, target);
    let ns = vr.namespace().unwrap_or_default();
    let home = ctx.opts.namespace.clone();
    let roles = role_namespaces(&ns, &tns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &home);
    let fills: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &home);
    let targets: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &tns);
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let (resolver, restorer) = (resolver_name(vr), restorer_name(vr));
    let read_pod = |name: String| {
        let pods = pods.clone();
        let what = format!("reading pod {home}/{name}");
        async move { pods.get_opt(&name).await.map_err(kube_err(what)) }
    };
    let mut seen = Seen::default();
    if st.snapshot_id.is_some() && st.source_claim.is_some() {
        // Resolved: its mover has done its work.
        delete_mover(ctx, &home, &resolver, &roles).await?;
        seen.fill = fills
            .get_opt(&restorer)
            .await
            .map_err(kube_err(format!("reading PVC {home}/{restorer}")))?;
        seen.restorer = read_pod(restorer.clone()).await?;
        seen.target = targets
            .get_opt(&target.pvc)
            .await
            .map_err(kube_err(format!("reading PVC {tns}/{}", target.pvc)))?;
        if Stage::of(st) == Some(Stage::HandingOver) {
            seen.volume = filled_volume(ctx, vr, seen.fill.as_ref()).await?;
        }
    } else {
        seen.resolver = read_pod(resolver.clone()).await?;
    }
    let step = plan_restore(vr, &tns, &target.pvc, &home, st, &seen);
    let snapshot_id = st.snapshot_id.clone().unwrap_or_default();
    let patch_pv = |name: String, patch: serde_json::Value, what: &'static str| {
        let pvs = pvs.clone();
        async move {
            pvs.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(drop)
                .map_err(kube_err(format!("{what} PV {name}")))
        }
    };
    let annotations = BTreeMap::from([
        (RESTORED_BY.to_string(), run_key(vr)),
        (RESTORED_FROM.to_string(), snapshot_id.clone()),
    ]);
    let claim_of = |name: &str, namespace: &str| -> Result<PersistentVolumeClaim, String> {
        let recorded = st.source_claim.clone().unwrap_or_default();
        restored_claim(&RestoredClaim {
            name,
            namespace,
            recorded: &recorded,
            target,
            storage_class_map: &ctx.opts.restore_storage_class_map,
            annotations: &annotations,
        })
    };
    match step {
        RestoreStep::Fail(why) => {
            fail(ctx, vr, why).await?;
            Ok(Action::await_change())
        }
        RestoreStep::Watch(role) => {
            let pod = match role {
                MoverRole::Resolver => seen.resolver,
                MoverRole::Restorer => seen.restorer,
            };
            match pod {
                Some(pod) => {
                    follow_mover(ctx, vr, &pod, |fresh| match role {
                        MoverRole::Resolver => {
                            fresh.snapshot_id.is_some() && fresh.source_claim.is_some()
                        }
                        MoverRole::Restorer => Stage::of(fresh) == Some(Stage::HandingOver),
                    })
                    .await
                }
                None => Ok(Action::requeue(Duration::ZERO)),
            }
        }
        RestoreStep::StartResolver => {
            let Some(repo) = repository(ctx, vr, &tns).await? else {
                return Ok(Action::await_change());
            };
            let args = MoverArgs::Resolve(Box::new(ResolveArgs {
                common: common_args(ctx, &ns, &vr.name_any(), &repo)?,
                snapshot: vr.spec.snapshot.clone(),
            }))
            .to_argv();
            start_mover(ctx, vr, &resolver, &repo, None, args).await?;
            Ok(Action::requeue(ctx.opts.prepare_timeout))
        }
        RestoreStep::CreateFill => {
            let made = match &seen.target {
                // The claim to populate: its own spec.
                Some(t) if target.existing => Ok(claim_like(t, &restorer, &home)),
                _ => claim_of(&restorer, &home),
            };
            let mut made = match made {
                Ok(c) => c,
                Err(m) => {
                    fail(ctx, vr, m).await?;
                    return Ok(Action::await_change());
                }
            };
            // Only coffer's labels: the recorded ones are the target's.
            made.metadata.labels = Some(pod_labels(vr));
            made.annotations_mut()
                .insert(RUN_ANNOTATION.to_string(), run_key(vr));
            match fills.create(&PostParams::default(), &made).await {
                // The next pass starts the restorer.
                Ok(_) => Ok(Action::requeue(Duration::ZERO)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(Duration::ZERO)),
                Err(kube::Error::Api(e)) if (400..500).contains(&e.code) => {
                    fail(ctx, vr, format!("creating PersistentVolumeClaim {home}/{restorer} (to fill, then hand to {tns}/{}): {} (check spec.target.size and spec.target.storageClassName)", target.pvc, e.message)).await?;
                    Ok(Action::await_change())
                }
                Err(e) => Err(kube_err(format!("creating PVC {home}/{restorer}"))(e)),
            }
        }
        RestoreStep::StartRestorer { block } => {
            let Some(repo) = repository(ctx, vr, &tns).await? else {
                return Ok(Action::await_change());
            };
            let volume = MoverVolume {
                claim: &restorer,
                block,
                write: true,
            };
            let args = MoverArgs::Restore(Box::new(RestoreArgs {
                common: common_args(ctx, &ns, &vr.name_any(), &repo)?,
                snapshot: snapshot_id.clone(),
                target: volume.path().into(),
                block: volume.block,
                subpath: vr.spec.sub_path().map(String::from),
                special_files: vr.spec.special_files,
            }))
            .to_argv();
            start_mover(ctx, vr, &restorer, &repo, Some(volume), args).await?;
            crate::report::update_run::<VolumeRestore>(&ctx.client, &ns, &vr.name_any(), |s| {
                s.stage = Some(Stage::Restoring.into())
            })
            .await;
            ctx.reporter.run_event(
                vr,
                EventType::Normal,
                "MoverStarted",
                format!(
                    "mover pod {home}/{restorer} restores snapshot {snapshot_id} into a new volume for PVC {tns}/{}",
                    target.pvc
                ),
            )
            .await;
            Ok(Action::requeue(ctx.opts.prepare_timeout))
        }
        RestoreStep::RemoveRestorer => {
            // Its deletion wakes this run (the pods are watched); one left
            // Terminating by a lost node is looked at past the limit.
            delete_mover(ctx, &home, &restorer, &roles).await?;
            Ok(Action::requeue(
                ctx.opts.terminating_limit + TERMINATING_RECHECK,
            ))
        }
        RestoreStep::KeepVolume(pv) => {
            let policy = seen
                .volume
                .as_ref()
                .and_then(|v| v.spec.as_ref()?.persistent_volume_reclaim_policy.clone())
                .unwrap_or_else(|| "Delete".into());
            let keep = json!({
                "metadata": {
                    "labels": {RESTORE_LABEL: label_value(&vr.name_any())},
                    "annotations": {
                        RESTORED_BY: run_key(vr),
                        RECLAIM_POLICY: policy,
                        HANDOVER_SINCE: crate::time::Timestamp::now().to_string(),
                    },
                },
                "spec": {"persistentVolumeReclaimPolicy": "Retain"},
            });
            patch_pv(pv, keep, "keeping").await?;
            Ok(Action::requeue(Duration::ZERO))
        }
        RestoreStep::MoveVolume(pv) => {
            // A claim to populate exists: bound to it by its uid, as the
            // PV controller binds; a claim to create is reserved by name.
            let uid = seen.target.as_ref().and_then(|t| t.uid());
            let reserve = json!({"spec": {"claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": tns, "name": target.pvc,
                "uid": uid, "resourceVersion": null,
            }}});
            patch_pv(pv, reserve, "reserving").await?;
            Ok(Action::requeue(Duration::ZERO))
        }
        RestoreStep::DeleteFill => {
            delete(&fills, &restorer, &format!("PVC {home}/{restorer}")).await?;
            Ok(Action::requeue(BIND_POLL))
        }
        RestoreStep::CreateTarget(pv) => {
            let mut made = match claim_of(&target.pvc, &tns) {
                Ok(c) => c,
                Err(m) => {
                    fail(ctx, vr, m).await?;
                    return Ok(Action::await_change());
                }
            };
            if let Some(spec) = made.spec.as_mut() {
                spec.volume_name = Some(pv.clone());
            }
            match targets.create(&PostParams::default(), &made).await {
                Ok(_) => Ok(Action::requeue(BIND_POLL)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(Duration::ZERO)),
                Err(kube::Error::Api(e)) if (400..500).contains(&e.code) => {
                    fail(
                        ctx,
                        vr,
                        format!(
                            "creating PersistentVolumeClaim {tns}/{} on volume {pv}: {}",
                            target.pvc, e.message
                        ),
                    )
                    .await?;
                    Ok(Action::await_change())
                }
                Err(e) => Err(kube_err(format!("creating PVC {tns}/{}", target.pvc))(e)),
            }
        }
        RestoreStep::WaitBound => {
            // Bounded: a claim that never binds (a quota, an admission
            // webhook, a wrong class) ends the restore, saying which.
            if seen
                .volume
                .as_ref()
                .is_some_and(|v| handover_overdue(v, ctx.opts.prepare_timeout, chrono::Utc::now()))
            {
                let m = format!(
                    "PersistentVolumeClaim {tns}/{} did not bind to the restored volume {} within --prepare-timeout {}; `kubectl -n {tns} describe pvc {}` says why",
                    target.pvc,
                    seen.volume.as_ref().map(|v| v.name_any()).unwrap_or_default(),
                    humantime::format_duration(ctx.opts.prepare_timeout),
                    target.pvc
                );
                fail(ctx, vr, m).await?;
                return Ok(Action::await_change());
            }
            Ok(Action::requeue(BIND_POLL))
        }
        RestoreStep::Release(pv) => {
            let policy = seen
                .volume
                .as_ref()
                .and_then(|v| v.annotations().get(RECLAIM_POLICY).cloned())
                .unwrap_or_else(|| "Delete".into());
            let release = json!({
                "metadata": {
                    "labels": {RESTORE_LABEL: null},
                    "annotations": {RESTORED_BY: null, RECLAIM_POLICY: null, HANDOVER_SINCE: null},
                },
                "spec": {"persistentVolumeReclaimPolicy": policy},
            });
            patch_pv(pv, release, "releasing").await?;
            Ok(Action::requeue(Duration::ZERO))
        }
        RestoreStep::Complete => {
            crate::report::update_run::<VolumeRestore>(&ctx.client, &ns, &vr.name_any(), |s| {
                *s = crate::status::handed_over(s.clone())
            })
            .await;
            Ok(Action::requeue(Duration::ZERO))
        }
    }
}

/// The volume a restore filled: its filling claim's, else (once that is
/// gone) the one the handover labelled with the run.
async fn filled_volume(
    ctx: &Ctx,
    vr: &VolumeRestore,
    fill: Option<&PersistentVolumeClaim>,
) -> Result<Option<PersistentVolume>, Error> {
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    if let Some(name) = fill.and_then(|c| c.spec.as_ref()?.volume_name.clone()) {
        return pvs
            .get_opt(&name)
            .await
            .map_err(kube_err(format!("reading PV {name}")));
    }
    let selector = format!("{RESTORE_LABEL}={}", label_value(&vr.name_any()));
    Ok(pvs
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err("listing PersistentVolumes"))?
        .items
        .into_iter()
        .find(|pv| pv.annotations().get(RESTORED_BY) == Some(&run_key(vr))))
}

/// Creates a mover pod in coffer's namespace for the run.
async fn start_mover(
    ctx: &Ctx,
    vr: &VolumeRestore,
    name: &str,
    repo: &BackupRepository,
    volume: Option<MoverVolume<'_>>,
    args: Vec<String>,
) -> Result<(), Error> {
    let labels = pod_labels(vr);
    let mut p = mover_pod(&MoverPod {
        volume,
        args,
        labels: &labels,
        ..ctx.mover(name, &ctx.opts.namespace, repo)
    });
    p.metadata.annotations = Some(BTreeMap::from([(RUN_ANNOTATION.to_string(), run_key(vr))]));
    // The status is written across namespaces: the Roles and their
    // bindings are in the run's and the repository's, the account in the
    // pod's.
    create_mover(ctx, &p, &StatusOf::of(vr), &SecretsOf::of(&[repo])).await
}

/// Step 6: the mover pods, then (after a failure or cancel) what this run
/// made: the filling claim, the target claim, and the volume. Returns true
/// when nothing is left to do.
async fn cleanup(
    ctx: &Ctx,
    vr: &VolumeRestore,
    target: &RestoreTarget,
    st: &RunStatus,
) -> Result<bool, Error> {
    let tns = target_ns(vr, target);
    let ns = vr.namespace().unwrap_or_default();
    let home = ctx.opts.namespace.clone();
    let mut left = false;
    for name in [resolver_name(vr), restorer_name(vr)] {
        left |= delete_mover(ctx, &home, &name, &role_namespaces(&ns, &tns)).await?;
    }
    if left {
        return Ok(false);
    }
    if matches!(st.phase, Phase::Completed | Phase::PartiallyFailed) || target.pvc.is_empty() {
        return Ok(true);
    }
    let fills: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &home);
    let fill = restorer_name(vr);
    let what = format!("PVC {home}/{fill} (an unfinished restore)");
    if delete_present(&fills, &fill, &what).await? {
        return Ok(false);
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &tns);
    if let Some(p) = pvcs
        .get_opt(&target.pvc)
        .await
        .map_err(kube_err(format!("reading PVC {tns}/{}", target.pvc)))?
    {
        // Made by this run: named by it, and not older than it (a run of
        // the same name before it may have made one that holds data now).
        let made_here = p.annotations().get(RESTORED_BY) == Some(&run_key(vr))
            && p.meta().creation_timestamp >= vr.meta().creation_timestamp;
        if made_here && !target.existing {
            if p.meta().deletion_timestamp.is_none() {
                let what = format!("PVC {tns}/{} (an unfinished restore)", target.pvc);
                delete(&pvcs, &target.pvc, &what).await?;
            }
            return Ok(false);
        }
    }
    // A volume kept for a handover that did not finish.
    if let Some(pv) = filled_volume(ctx, vr, None).await? {
        delete_volume(&Api::all(ctx.client.clone()), &pv).await?;
        return Ok(false);
    }
    Ok(true)
}

/// Start-up sweep: the mover pods (with their accounts), filling claims
/// and volumes kept for a handover of restores that no longer exist.
pub(crate) async fn sweep(ctx: &Ctx) {
    sweep_movers::<VolumeRestore>(ctx, RESTORE_LABEL).await;
    let home = ctx.opts.namespace.clone();
    let gone = |run: Option<(&str, &str)>| {
        let run = run.map(|(ns, name)| (ns.to_string(), name.to_string()));
        async move {
            let (ns, name) = run?;
            let found = Api::<VolumeRestore>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&name)
                .await;
            matches!(found, Ok(None)).then_some(())
        }
    };
    let selector = ListParams::default().labels(RESTORE_LABEL);
    let fills = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &home);
    for fill in fills
        .list(&selector)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        if gone(annotated_run(fill.annotations())).await.is_some() {
            let name = fill.name_any();
            let _ = delete(&fills, &name, &format!("leftover PVC {home}/{name}")).await;
        }
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    for pv in pvs
        .list(&selector)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let run = pv
            .annotations()
            .get(RESTORED_BY)
            .and_then(|r| r.split_once('/'));
        if gone(run).await.is_some() {
            if let Err(e) = delete_volume(&pvs, &pv).await {
                tracing::warn!("start-up sweep: a volume kept for a handover: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restore() -> VolumeRestore {
        serde_json::from_value(json!({
            "metadata": {"name": "back", "namespace": "shop"},
            "spec": {"snapshot": {"pvc": "data"}, "target": {"namespace": "copy", "pvc": "data-copy"}},
        }))
        .unwrap()
    }

    fn status(resolved: bool, stage: Stage) -> RunStatus {
        RunStatus {
            phase: Phase::InProgress,
            stage: Some(stage.into()),
            snapshot_id: resolved.then(|| "ab12".into()),
            source_claim: resolved.then(Default::default),
            ..Default::default()
        }
    }

    fn pod(name: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": HOME}})).unwrap()
    }

    fn claim(made_by: &str, block: bool, bound: bool) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data-copy", "namespace": "copy", "annotations": {RESTORED_BY: made_by}},
            "spec": {"volumeMode": if block { "Block" } else { "Filesystem" },
                     "volumeName": bound.then_some("pv-1")},
            "status": {"phase": if bound { "Bound" } else { "Pending" }},
        }))
        .unwrap()
    }

    fn volume(kept: bool, claim: (&str, &str)) -> PersistentVolume {
        let annotations = if kept {
            json!({RECLAIM_POLICY: "Delete", RESTORED_BY: "shop/back"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "metadata": {"name": "pv-1", "annotations": annotations},
            "spec": {"persistentVolumeReclaimPolicy": if kept { "Retain" } else { "Delete" },
                     "claimRef": {"namespace": claim.0, "name": claim.1}},
        }))
        .unwrap()
    }

    const HOME: &str = "coffer-system";

    fn plan(st: &RunStatus, seen: &Seen) -> RestoreStep {
        plan_restore(&restore(), "copy", "data-copy", HOME, st, seen)
    }

    #[test]
    fn a_restore_resolves_then_fills_a_claim_in_coffers_namespace() {
        let resolving = status(false, Stage::Resolving);
        assert_eq!(
            plan(&resolving, &Seen::default()),
            RestoreStep::StartResolver
        );
        let running = Seen {
            resolver: Some(pod("resolver")),
            ..Default::default()
        };
        assert_eq!(
            plan(&resolving, &running),
            RestoreStep::Watch(MoverRole::Resolver)
        );
        let resolved = status(true, Stage::Resolving);
        assert_eq!(plan(&resolved, &Seen::default()), RestoreStep::CreateFill);
        for block in [false, true] {
            let made = Seen {
                fill: Some(claim("shop/back", block, false)),
                ..Default::default()
            };
            assert_eq!(plan(&resolved, &made), RestoreStep::StartRestorer { block });
        }
        let restoring = Seen {
            fill: Some(claim("shop/back", false, true)),
            restorer: Some(pod("restorer")),
            ..Default::default()
        };
        assert_eq!(
            plan(&status(true, Stage::Restoring), &restoring),
            RestoreStep::Watch(MoverRole::Restorer)
        );
    }

    /// The handover, step by step, as each pass finds the last one done:
    /// the restorer goes, the volume is kept and reserved for the target,
    /// the filling claim goes, the target is made on the volume, binds, the
    /// volume's policy comes back, and the run ends.
    #[test]
    fn a_claim_that_does_not_bind_within_the_prepare_timeout_is_overdue() {
        let pv = |since: Option<&str>| -> PersistentVolume {
            let mut v = json!({"metadata": {"name": "pv-1"}});
            if let Some(t) = since {
                v["metadata"]["annotations"] = json!({ HANDOVER_SINCE: t });
            }
            serde_json::from_value(v).unwrap()
        };
        let now = crate::time::stamp("2026-12-07T10:30:00.000Z").at();
        let limit = Duration::from_secs(1800);
        assert!(!handover_overdue(
            &pv(Some("2026-12-07T10:01:00.000Z")),
            limit,
            now
        ));
        assert!(handover_overdue(
            &pv(Some("2026-12-07T10:00:00.000Z")),
            limit,
            now
        ));
        assert!(!handover_overdue(&pv(None), limit, now));
        assert!(!handover_overdue(&pv(Some("yesterday")), limit, now));
    }

    #[test]
    fn a_filled_volume_is_handed_to_the_target_claim_one_step_at_a_time() {
        let st = status(true, Stage::HandingOver);
        let fill = || Some(claim("shop/back", false, true));
        let steps = [
            (
                Seen {
                    restorer: Some(pod("restorer")),
                    fill: fill(),
                    volume: Some(volume(false, (HOME, "fill"))),
                    ..Default::default()
                },
                RestoreStep::RemoveRestorer,
            ),
            (
                Seen {
                    fill: fill(),
                    volume: Some(volume(false, (HOME, "fill"))),
                    ..Default::default()
                },
                RestoreStep::KeepVolume("pv-1".into()),
            ),
            (
                Seen {
                    fill: fill(),
                    volume: Some(volume(true, (HOME, "fill"))),
                    ..Default::default()
                },
                RestoreStep::MoveVolume("pv-1".into()),
            ),
            (
                Seen {
                    fill: fill(),
                    volume: Some(volume(true, ("copy", "data-copy"))),
                    ..Default::default()
                },
                RestoreStep::DeleteFill,
            ),
            (
                Seen {
                    volume: Some(volume(true, ("copy", "data-copy"))),
                    ..Default::default()
                },
                RestoreStep::CreateTarget("pv-1".into()),
            ),
            (
                Seen {
                    volume: Some(volume(true, ("copy", "data-copy"))),
                    target: Some(claim("shop/back", false, false)),
                    ..Default::default()
                },
                RestoreStep::WaitBound,
            ),
            (
                Seen {
                    volume: Some(volume(true, ("copy", "data-copy"))),
                    target: Some(claim("shop/back", false, true)),
                    ..Default::default()
                },
                RestoreStep::Release("pv-1".into()),
            ),
            (
                Seen {
                    target: Some(claim("shop/back", false, true)),
                    ..Default::default()
                },
                RestoreStep::Complete,
            ),
        ];
        for (seen, want) in steps {
            assert_eq!(plan(&st, &seen), want, "{seen:?}");
        }
    }

    #[test]
    fn a_claim_volume_or_mover_that_goes_or_is_taken_fails_the_restore_naming_it() {
        let fail = |step: RestoreStep| match step {
            RestoreStep::Fail(m) => m,
            other => panic!("expected a failure, planned {other:?}"),
        };
        let taken = Seen {
            target: Some(claim("other/run", false, false)),
            ..Default::default()
        };
        for stage in [Stage::Resolving, Stage::HandingOver] {
            let m = fail(plan(&status(true, stage), &taken));
            assert!(
                m.contains("copy/data-copy was created by someone else"),
                "{m}"
            );
        }
        let fill = restorer_name(&restore());
        let m = fail(plan(&status(true, Stage::Restoring), &Seen::default()));
        assert!(
            m.contains(&format!(
                "{HOME}/{fill} (the volume being filled) was deleted"
            )),
            "{m}"
        );
        let no_mover = Seen {
            fill: Some(claim("shop/back", false, true)),
            ..Default::default()
        };
        let m = fail(plan(&status(true, Stage::Restoring), &no_mover));
        assert!(
            m.contains(&format!("mover pod {HOME}/{fill} disappeared")),
            "{m}"
        );
        let m = fail(plan(&status(true, Stage::HandingOver), &Seen::default()));
        assert!(
            m.contains("is gone (deleted during the handover to copy/data-copy)"),
            "{m}"
        );
    }
}
