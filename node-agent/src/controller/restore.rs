//! The controller's restores into new PersistentVolumeClaims
//! (VolumeRestores with `spec.target`), one step at a time:
//!
//! 1. **claim**: check the target (its namespace has the BackupRepository,
//!    its PVC does not exist yet), add the cleanup finalizer, mark the run
//!    InProgress (stage `Resolving`);
//! 2. **resolve**: a mover pod with no volume finds the snapshot (by id, or
//!    the latest of an origin) and writes its id and recorded claim into the
//!    run's status. The controller never reads Secrets, so it cannot open
//!    the repository itself;
//! 3. **provision**: the PVC, from the recorded claim with the target's
//!    size and class, or the mapped class ([`restored_claim`]);
//! 4. **restore**: a mover pod mounts it read-write (or as a device) and
//!    restores the snapshot into it (stage `Restoring`);
//! 5. **clean up**: the mover pods are deleted; the PVC stays, Bound and
//!    ready for the workload. A restore that failed or was canceled also
//!    deletes the PVC it made, so that running it again starts clean.
//!
//! Mover pods run in the target's namespace, with that namespace's
//! BackupRepository: its Secrets open the repository, so a namespace
//! without one cannot be restored into. Owner references cannot cross
//! namespaces, so the pods carry the run in a label and an annotation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use crate::crd::{BackupRepository, Phase, RestoreTarget, RunStatus, VolumeRestore};

use crate::api::{delete, kube_err, Error};
use crate::controller::claims::{is_block, restored_claim, RestoredClaim};
use crate::controller::context::Ctx;
use crate::controller::lifecycle::{self, fail, follow_mover, ControllerRun, Triage};
use crate::controller::movers::pod::MoverVolume;
use crate::controller::movers::pod::{mover_pod, MoverPod};
use crate::controller::movers::{
    common_args, create_mover, delete_account, delete_mover, role_namespaces, SecretsOf, StatusOf,
};
use crate::mover::args::{MoverArgs, ResolveArgs, RestoreArgs};
use crate::names::{
    label_value, object_name, RESTORED_BY, RESTORED_FROM, RESTORE_LABEL, RUN_ANNOTATION,
};
use crate::run::Stage;

fn target_ns(vr: &VolumeRestore, t: &RestoreTarget) -> String {
    t.namespace
        .clone()
        .unwrap_or_else(|| vr.namespace().unwrap_or_default())
}

fn resolver_name(vr: &VolumeRestore) -> String {
    object_name(&["coffer-resolve", &vr.name_any()])
}

fn restorer_name(vr: &VolumeRestore) -> String {
    object_name(&["coffer-restore", &vr.name_any()])
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
    if let Some(existing) = pvcs
        .get_opt(&target.pvc)
        .await
        .map_err(kube_err(format!("reading PVC {tns}/{}", target.pvc)))?
    {
        if existing.annotations().get(RESTORED_BY) != Some(&run_key(vr)) {
            fail(ctx, vr, format!("PersistentVolumeClaim {tns}/{} already exists; a restore creates a new PVC: choose another spec.target.pvc, or delete that one", target.pvc)).await?;
            return Ok(Action::await_change());
        }
    }
    lifecycle::claim(
        ctx,
        vr,
        target.pvc.clone(),
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

/// What a restore pass saw: the mover pods and the claim it made, each
/// read only when the run has come that far.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// The resolver pod (read until the snapshot is resolved).
    pub(crate) resolver: Option<Pod>,
    /// The target claim (read once the snapshot is resolved).
    pub(crate) claim: Option<PersistentVolumeClaim>,
    /// The restore mover pod (read once the snapshot is resolved).
    pub(crate) restorer: Option<Pod>,
}

/// What a pass over a restore into a new claim does (steps 2 to 4).
#[derive(Debug, PartialEq)]
pub(crate) enum RestoreStep {
    /// 2. Start the mover that finds the snapshot.
    StartResolver,
    /// 2. or 4. Watch the mover that runs: the resolver, or the restorer.
    Watch(MoverRole),
    /// 3. Create the claim from the recorded one.
    CreateClaim,
    /// 4. Start the mover that restores into the claim (a raw block
    ///    claim is written as a device).
    StartRestorer { block: bool },
    /// End the run: something it relied on went.
    Fail(String),
}

/// Which of a restore's two movers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MoverRole {
    Resolver,
    Restorer,
}

/// Plans a pass over restore `vr` (into claim `pvc` of namespace `tns`)
/// from its status and what was seen.
pub(crate) fn plan_restore(
    vr: &VolumeRestore,
    tns: &str,
    pvc: &str,
    st: &RunStatus,
    seen: &Seen,
) -> RestoreStep {
    if st.snapshot_id.is_none() || st.source_claim.is_none() {
        return match seen.resolver {
            None => RestoreStep::StartResolver,
            Some(_) => RestoreStep::Watch(MoverRole::Resolver),
        };
    }
    let restoring = Stage::of(st) == Some(Stage::Restoring);
    let claim = match &seen.claim {
        Some(c) if c.annotations().get(RESTORED_BY) == Some(&run_key(vr)) => c,
        Some(_) => return RestoreStep::Fail(format!("PersistentVolumeClaim {tns}/{pvc} was created by someone else during the restore; choose another spec.target.pvc")),
        None if restoring => {
            return RestoreStep::Fail(format!(
                "PersistentVolumeClaim {tns}/{pvc} was deleted during the restore"
            ))
        }
        None => return RestoreStep::CreateClaim,
    };
    match seen.restorer {
        Some(_) => RestoreStep::Watch(MoverRole::Restorer),
        None if restoring => RestoreStep::Fail(format!(
            "mover pod {tns}/{} disappeared before the restore ended (deleted or evicted)",
            restorer_name(vr)
        )),
        None => RestoreStep::StartRestorer {
            block: is_block(claim),
        },
    }
}

/// Steps 2 to 4, from where the run stands: observe, plan, act.
async fn advance(
    ctx: &Ctx,
    vr: &VolumeRestore,
    target: &RestoreTarget,
    st: &RunStatus,
) -> Result<Action, Error> {
    let tns = target_ns(vr, target);
    let ns = vr.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &tns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &tns);
    let (resolver, restorer) = (resolver_name(vr), restorer_name(vr));
    let read_pod = |name: String| {
        let pods = pods.clone();
        let what = format!("reading pod {tns}/{name}");
        async move { pods.get_opt(&name).await.map_err(kube_err(what)) }
    };
    let mut seen = Seen::default();
    if st.snapshot_id.is_some() && st.source_claim.is_some() {
        // Resolved: its mover has done its work.
        delete_mover(ctx, &tns, &resolver, &role_namespaces(&ns, &tns)).await?;
        seen.claim = pvcs
            .get_opt(&target.pvc)
            .await
            .map_err(kube_err(format!("reading PVC {tns}/{}", target.pvc)))?;
        seen.restorer = read_pod(restorer.clone()).await?;
    } else {
        seen.resolver = read_pod(resolver.clone()).await?;
    }
    let step = plan_restore(vr, &tns, &target.pvc, st, &seen);
    let snapshot_id = st.snapshot_id.clone().unwrap_or_default();
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
                        MoverRole::Restorer => false,
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
            start_mover(ctx, vr, &tns, &resolver, &repo, None, args).await?;
            Ok(Action::requeue(ctx.opts.prepare_timeout))
        }
        RestoreStep::CreateClaim => {
            let Some(recorded) = st.source_claim.as_ref() else {
                return Ok(Action::requeue(Duration::ZERO));
            };
            let annotations = BTreeMap::from([
                (RESTORED_BY.to_string(), run_key(vr)),
                (RESTORED_FROM.to_string(), snapshot_id),
            ]);
            let made = restored_claim(&RestoredClaim {
                name: &target.pvc,
                namespace: &tns,
                recorded,
                target,
                storage_class_map: &ctx.opts.restore_storage_class_map,
                annotations: &annotations,
            });
            let made = match made {
                Ok(c) => c,
                Err(m) => {
                    fail(ctx, vr, m).await?;
                    return Ok(Action::await_change());
                }
            };
            match pvcs.create(&PostParams::default(), &made).await {
                // The next pass starts the restorer (or finds who made it).
                Ok(_) => Ok(Action::requeue(Duration::ZERO)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(Duration::ZERO)),
                Err(kube::Error::Api(e)) if (400..500).contains(&e.code) => {
                    fail(ctx, vr, format!("creating PersistentVolumeClaim {tns}/{}: {} (check spec.target.size and spec.target.storageClassName)", target.pvc, e.message)).await?;
                    Ok(Action::await_change())
                }
                Err(e) => Err(kube_err(format!("creating PVC {tns}/{}", target.pvc))(e)),
            }
        }
        RestoreStep::StartRestorer { block } => {
            let Some(repo) = repository(ctx, vr, &tns).await? else {
                return Ok(Action::await_change());
            };
            let volume = MoverVolume {
                claim: &target.pvc,
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
            start_mover(ctx, vr, &tns, &restorer, &repo, Some(volume), args).await?;
            crate::report::update_run::<VolumeRestore>(&ctx.client, &ns, &vr.name_any(), |s| {
                s.stage = Some(Stage::Restoring.into())
            })
            .await;
            ctx.reporter.run_event(
                vr,
                EventType::Normal,
                "MoverStarted",
                format!(
                    "PVC {tns}/{} created; mover pod {restorer} restores snapshot {snapshot_id} into it",
                    target.pvc
                ),
            )
            .await;
            Ok(Action::requeue(ctx.opts.prepare_timeout))
        }
    }
}

/// Creates a mover pod in `tns` for the run.
async fn start_mover(
    ctx: &Ctx,
    vr: &VolumeRestore,
    tns: &str,
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
        ..ctx.mover(name, tns, repo)
    });
    p.metadata.annotations = Some(BTreeMap::from([(RUN_ANNOTATION.to_string(), run_key(vr))]));
    // In another namespace, the run's status is written across namespaces:
    // the Role and its binding are in the run's, the account in the pod's.
    create_mover(ctx, &p, &StatusOf::of(vr), &SecretsOf::of(&[repo])).await
}

/// Step 5: the mover pods, then (after a failure or cancel) the PVC this
/// run made. Returns true when nothing is left to do.
async fn cleanup(
    ctx: &Ctx,
    vr: &VolumeRestore,
    target: &RestoreTarget,
    st: &RunStatus,
) -> Result<bool, Error> {
    let tns = target_ns(vr, target);
    let ns = vr.namespace().unwrap_or_default();
    let mut left = false;
    for name in [resolver_name(vr), restorer_name(vr)] {
        left |= delete_mover(ctx, &tns, &name, &role_namespaces(&ns, &tns)).await?;
    }
    if left {
        return Ok(false);
    }
    let keep = matches!(st.phase, Phase::Completed | Phase::PartiallyFailed);
    if !keep && !target.pvc.is_empty() {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &tns);
        if let Some(p) = pvcs
            .get_opt(&target.pvc)
            .await
            .map_err(kube_err(format!("reading PVC {tns}/{}", target.pvc)))?
        {
            if p.annotations().get(RESTORED_BY) == Some(&run_key(vr)) {
                if p.meta().deletion_timestamp.is_none() {
                    let what = format!("PVC {tns}/{} (an unfinished restore)", target.pvc);
                    delete(&pvcs, &target.pvc, &what).await?;
                }
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Start-up sweep: mover pods of restores that no longer exist.
pub(crate) async fn sweep(ctx: &Ctx) {
    let Ok(list) = Api::<Pod>::all(ctx.client.clone())
        .list(&ListParams::default().labels(RESTORE_LABEL))
        .await
    else {
        return;
    };
    for pod in list.items {
        let Some(run) = crate::controller::run_of::<VolumeRestore, _>(pod.clone()) else {
            continue;
        };
        let ns = run.namespace.clone().unwrap_or_default();
        let gone = matches!(
            Api::<VolumeRestore>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&run.name)
                .await,
            Ok(None)
        );
        if gone {
            // The Role and its binding went with the run (owned by it); the
            // account in another namespace cannot be.
            let pns = pod.namespace().unwrap_or_default();
            let api = Api::<Pod>::namespaced(ctx.client.clone(), &pns);
            let what = format!("leftover mover pod {pns}/{}", pod.name_any());
            let _ = delete(&api, &pod.name_any(), &what).await;
            let _ = delete_account(ctx, &pns, &pod.name_any(), &role_namespaces(&ns, &pns)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "copy"}})).unwrap()
    }

    fn claim(made_by: &str, block: bool) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data-copy", "namespace": "copy", "annotations": {RESTORED_BY: made_by}},
            "spec": {"volumeMode": if block { "Block" } else { "Filesystem" }},
        }))
        .unwrap()
    }

    fn plan(st: &RunStatus, seen: &Seen) -> RestoreStep {
        plan_restore(&restore(), "copy", "data-copy", st, seen)
    }

    #[test]
    fn a_restore_resolves_then_makes_its_claim_then_restores_into_it() {
        let resolving = status(false, Stage::Resolving);
        assert_eq!(
            plan(&resolving, &Seen::default()),
            RestoreStep::StartResolver
        );
        let running = Seen {
            resolver: Some(pod("coffer-resolve-back")),
            ..Default::default()
        };
        assert_eq!(
            plan(&resolving, &running),
            RestoreStep::Watch(MoverRole::Resolver)
        );
        let resolved = status(true, Stage::Resolving);
        assert_eq!(plan(&resolved, &Seen::default()), RestoreStep::CreateClaim);
        for block in [false, true] {
            let made = Seen {
                claim: Some(claim("shop/back", block)),
                ..Default::default()
            };
            assert_eq!(plan(&resolved, &made), RestoreStep::StartRestorer { block });
        }
        let restoring = Seen {
            claim: Some(claim("shop/back", false)),
            restorer: Some(pod("coffer-restore-back")),
            ..Default::default()
        };
        assert_eq!(
            plan(&status(true, Stage::Restoring), &restoring),
            RestoreStep::Watch(MoverRole::Restorer)
        );
    }

    #[test]
    fn a_claim_or_mover_that_goes_or_is_taken_fails_the_restore_naming_it() {
        let fail = |step: RestoreStep| match step {
            RestoreStep::Fail(m) => m,
            other => panic!("expected a failure, planned {other:?}"),
        };
        let taken = Seen {
            claim: Some(claim("other/run", false)),
            ..Default::default()
        };
        let m = fail(plan(&status(true, Stage::Resolving), &taken));
        assert!(
            m.contains("copy/data-copy was created by someone else"),
            "{m}"
        );
        let m = fail(plan(&status(true, Stage::Restoring), &Seen::default()));
        assert!(
            m.contains("copy/data-copy was deleted during the restore"),
            "{m}"
        );
        let no_mover = Seen {
            claim: Some(claim("shop/back", false)),
            ..Default::default()
        };
        let m = fail(plan(&status(true, Stage::Restoring), &no_mover));
        assert!(
            m.contains("mover pod copy/coffer-restore-back disappeared"),
            "{m}"
        );
    }
}
