//! The controller's ApplicationRestores, one step per pass:
//!
//! 1. **claim**: check the repository and, for `spec.backup`, that the
//!    ApplicationBackup ended with a snapshot; add the cleanup finalizer;
//! 2. **restore** (stage `Restoring`): a pod in the namespace, as
//!    `spec.serviceAccountName` (the tenant's account), runs `coffer-agent
//!    mover restore-application` ([`crate::mover::apply`]): the objects,
//!    cleaned, in dependency order, each claim with data created with a
//!    RestoreSource as its `dataSourceRef` (the controller's volume
//!    populator fills it), the workloads once those claims are bound. A
//!    per-restore Role lets that account write this restore's status, read
//!    the repository's Secrets and create RestoreSources, nothing else;
//! 3. **end**: Completed when no object failed; PartiallyFailed naming the
//!    objects that failed (the API server's words); Failed when the pod
//!    failed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    ApplicationBackup, ApplicationRestore, ApplicationRestoreStatus, ExistingResourcePolicy, Phase,
    RunStatus, SnapshotSource,
};

use crate::api::{kube_err, Error};
use crate::controller::application::{tenant_pod, TenantPod, RESTORE_LABEL};
use crate::controller::context::Ctx;
use crate::controller::lifecycle::{self, fail, ControllerRun, Triage};
use crate::controller::movers::pod::local_repository_dir;
use crate::controller::movers::{common_args, create_granted, SecretsOf, StatusOf};
use crate::controller::tenant_pods::{self, Followed};
use crate::mover::args::{MoverArgs, RestoreApplicationArgs};
use crate::names::{label_value, managed_by, object_name};
use crate::run::Stage;

/// Reconciles one ApplicationRestore.
pub(crate) async fn reconcile(ar: Arc<ApplicationRestore>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    lifecycle::reconcile(ar, ctx).await
}

fn pod_name(ar: &ApplicationRestore) -> String {
    object_name(&["coffer-restore", &ar.name_any()])
}

fn labels(ar: &ApplicationRestore) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RESTORE_LABEL.to_string(), label_value(&ar.name_any())),
        managed_by(),
    ])
}

/// The snapshot to read: the named backup's, or `spec.snapshot`. `Err`:
/// why the restore cannot start; `Ok(None)`: the backup has not ended yet.
async fn source(
    ctx: &Ctx,
    ar: &ApplicationRestore,
) -> Result<Result<Option<SnapshotSource>, String>, Error> {
    let ns = ar.namespace().unwrap_or_default();
    let Some(name) = &ar.spec.backup else {
        return Ok(Ok(ar.spec.snapshot.clone()));
    };
    let ab = Api::<ApplicationBackup>::namespaced(ctx.client.clone(), &ns)
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading ApplicationBackup {ns}/{name}")))?;
    let Some(ab) = ab else {
        return Ok(Err(format!("ApplicationBackup {ns}/{name} not found: name another in spec.backup, or restore from the repository with spec.snapshot (cluster, namespace)")));
    };
    let st = ab.status.unwrap_or_default();
    if !st.run.phase.is_final() {
        return Ok(Ok(None));
    }
    match (st.run.phase, st.run.snapshot_id) {
        (Phase::Completed | Phase::PartiallyFailed, Some(id)) => Ok(Ok(Some(SnapshotSource {
            id: Some(id),
            ..Default::default()
        }))),
        (phase, _) => Ok(Err(format!(
            "ApplicationBackup {ns}/{name} ended {} without a snapshot: nothing to restore",
            phase.as_str()
        ))),
    }
}

impl ControllerRun for ApplicationRestore {
    const METRIC: &'static str = "application-restore";
    const FIRST_STAGE: Stage = Stage::Restoring;

    fn triage(&self) -> (Triage, Option<String>) {
        (Triage::Ours, None)
    }

    fn cancel_requested(&self) -> bool {
        self.spec.cancel
    }

    async fn claim(&self, ctx: &Ctx) -> Result<Action, Error> {
        let Some(repo) = lifecycle::repository_or_fail(ctx, self, &self.spec.repository).await?
        else {
            return Ok(Action::await_change());
        };
        let ns = self.namespace().unwrap_or_default();
        common_args(ctx, &ns, &self.name_any(), &repo)?;
        match source(ctx, self).await? {
            Err(why) => {
                fail(ctx, self, why).await?;
                return Ok(Action::await_change());
            }
            // The backup still runs: look again.
            Ok(None) => return Ok(Action::requeue(Duration::from_secs(10))),
            Ok(Some(_)) => {}
        }
        lifecycle::claim(
            ctx,
            self,
            None,
            None,
            format!("restoring an application into namespace {ns}"),
        )
        .await
    }

    async fn advance(&self, ctx: &Ctx, _st: &RunStatus) -> Result<Action, Error> {
        restore(ctx, self).await
    }

    async fn cleanup(&self, ctx: &Ctx, _st: &RunStatus) -> Result<bool, Error> {
        tenant_pods::remove(ctx, &self.namespace().unwrap_or_default(), &pod_name(self)).await
    }
}

/// Step 2: the restore pod, made once, followed to its end; then the end.
async fn restore(ctx: &Ctx, ar: &ApplicationRestore) -> Result<Action, Error> {
    let ns = ar.namespace().unwrap_or_default();
    let name = pod_name(ar);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod = pods
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading pod {ns}/{name}")))?;
    let Some(pod) = pod else {
        if fresh(ctx, ar).await?.objects.is_some() {
            return conclude(ctx, ar).await;
        }
        let Some(repo) = lifecycle::repository_or_fail(ctx, ar, &ar.spec.repository).await? else {
            return Ok(Action::await_change());
        };
        let snapshot = match source(ctx, ar).await? {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Action::requeue(Duration::from_secs(10))),
            Err(why) => {
                fail(ctx, ar, why).await?;
                return Ok(Action::await_change());
            }
        };
        let args = MoverArgs::RestoreApplication(Box::new(RestoreApplicationArgs {
            common: common_args(ctx, &ns, &ar.name_any(), &repo)?,
            restore_uid: ar.uid().unwrap_or_default(),
            snapshot,
            include: ar.spec.included_resources.clone(),
            exclude: ar.spec.excluded_resources.clone(),
            labels: ar
                .spec
                .selector
                .iter()
                .flat_map(|s| s.match_labels.clone())
                .collect(),
            update_existing: ar.spec.existing_resource_policy == ExistingResourcePolicy::Update,
            storage_classes: ar
                .spec
                .storage_class_mapping
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            no_volume_data: !ar.spec.volume_data,
            bind_timeout: ctx.opts.prepare_timeout,
        }))
        .to_argv();
        let pod = tenant_pod(&TenantPod {
            name: name.clone(),
            namespace: ns.clone(),
            labels: labels(ar),
            owner: ar.controller_owner_ref(&()),
            account: &ar.spec.service_account_name,
            image: &ctx.opts.mover_image,
            pull_secrets: &ctx.opts.mover_pull_secrets,
            memory: &ctx.opts.mover_memory,
            args,
            repository_dir: local_repository_dir(&repo.spec.url),
        });
        // Its claims' data comes through RestoreSources, which it makes.
        let sources = json!({
            "apiGroups": ["coffer.dev"],
            "resources": ["restoresources"],
            "verbs": ["create"],
        });
        create_granted(
            ctx,
            &pod,
            &ar.spec.service_account_name,
            &StatusOf::of(ar),
            &SecretsOf::of(&[&repo]),
            vec![sources],
        )
        .await?;
        return Ok(Action::await_change());
    };
    let account = &ar.spec.service_account_name;
    match tenant_pods::follow(ctx, ar, &pod, account, "create what is restored").await? {
        Followed::Done(action) => Ok(action),
        Followed::Exited if fresh(ctx, ar).await?.objects.is_some() => conclude(ctx, ar).await,
        Followed::Exited => tenant_pods::exited_silently(ctx, ar, &name).await,
    }
}

async fn fresh(ctx: &Ctx, ar: &ApplicationRestore) -> Result<ApplicationRestoreStatus, Error> {
    Ok(tenant_pods::fresh(ctx, ar)
        .await?
        .status
        .unwrap_or_default())
}

/// How a restore whose pod wrote its results ended: Completed, or
/// PartiallyFailed naming the objects that failed.
pub fn outcome(status: &ApplicationRestoreStatus) -> (Phase, Option<String>) {
    let objects = status.objects.clone().unwrap_or_default();
    let failed = objects.counts.get("Failed").copied().unwrap_or(0);
    if failed == 0 {
        return (Phase::Completed, None);
    }
    let named: Vec<String> = objects
        .results
        .iter()
        .filter(|r| r.result == "Failed")
        .take(5)
        .map(|r| {
            format!(
                "{} {}: {}",
                r.kind,
                r.name,
                r.message.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    (
        Phase::PartiallyFailed,
        Some(format!(
            "{failed} object(s) could not be restored (status.objects.results): {}",
            named.join("; ")
        )),
    )
}

async fn conclude(ctx: &Ctx, ar: &ApplicationRestore) -> Result<Action, Error> {
    let ns = ar.namespace().unwrap_or_default();
    let status = fresh(ctx, ar).await?;
    let (phase, message) = outcome(&status);
    let written = crate::report::try_update_run::<ApplicationRestore>(
        &ctx.client,
        &ns,
        &ar.name_any(),
        |s| *s = crate::status::concluded(s.clone(), phase, message.clone()),
    )
    .await?;
    if written.is_some() {
        let (etype, reason) = crate::report::end_event::<ApplicationRestore>(phase);
        let counts = status.objects.map(|o| o.counts).unwrap_or_default();
        let note = message.unwrap_or_else(|| {
            format!(
                "snapshot {}: {counts:?}, {} volume(s) filled",
                status.run.snapshot_id.as_deref().unwrap_or_default(),
                status.volumes.len()
            )
        });
        ctx.reporter.run_event(ar, etype, &reason, note).await;
    }
    Ok(Action::requeue(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_with_objects_that_failed_is_partially_failed_naming_them() {
        let st: ApplicationRestoreStatus = serde_json::from_value(json!({
            "phase": "InProgress",
            "objects": {"counts": {"Created": 4}, "results": []},
        }))
        .unwrap();
        assert_eq!(outcome(&st), (Phase::Completed, None));
        let st: ApplicationRestoreStatus = serde_json::from_value(json!({
            "phase": "InProgress",
            "objects": {"counts": {"Created": 4, "Failed": 1}, "results": [
                {"kind": "RoleBinding.rbac.authorization.k8s.io", "name": "reader", "result": "Failed",
                 "message": "rolebindings is forbidden"}]},
        }))
        .unwrap();
        let (phase, m) = outcome(&st);
        assert_eq!(phase, Phase::PartiallyFailed);
        assert!(m
            .unwrap()
            .contains("RoleBinding.rbac.authorization.k8s.io reader: rolebindings is forbidden"));
    }
}
