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
//! 3. **hooks**: each of `spec.hooks` in order, once every pod its
//!    selector picks is Ready, run in each of them through `pods/exec`;
//! 4. **end**: Completed when no object and no `Fail` hook failed;
//!    PartiallyFailed naming them (the API server's words); Failed when the
//!    pod failed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    ApplicationBackup, ApplicationRestore, ApplicationRestoreStatus, ExistingResourcePolicy,
    HookOnError, Phase, RestoreHook, RunStatus, SnapshotSource,
};
use crate::hooks::{Hook, HookStage, OnError};

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
    if ab.spec.repository != ar.spec.repository {
        return Ok(Err(format!(
            "ApplicationBackup {ns}/{name} wrote to BackupRepository {}; set spec.repository: {} to restore it",
            ab.spec.repository, ab.spec.repository
        )));
    }
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
            return hooks(ctx, ar).await;
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
        .await
        .map_err(tenant_pods::refused_pod)?;
        return Ok(Action::await_change());
    };
    let account = &ar.spec.service_account_name;
    match tenant_pods::follow(ctx, ar, &pod, account, "create what is restored").await? {
        Followed::Done(action) => Ok(action),
        Followed::Exited if fresh(ctx, ar).await?.objects.is_some() => hooks(ctx, ar).await,
        Followed::Exited => tenant_pods::exited_silently(ctx, ar, &name).await,
    }
}

async fn fresh(ctx: &Ctx, ar: &ApplicationRestore) -> Result<ApplicationRestoreStatus, Error> {
    Ok(tenant_pods::fresh(ctx, ar)
        .await?
        .status
        .unwrap_or_default())
}

/// The hook of `spec.hooks` that `h` describes, checked: a bad timeout is
/// refused, naming it.
pub fn restore_hook(i: usize, h: &RestoreHook) -> Result<Hook, String> {
    let timeout = match h.timeout.as_deref() {
        None => crate::hooks::DEFAULT_TIMEOUT,
        Some(t) => humantime::parse_duration(t)
            .ok()
            .filter(|d| !d.is_zero() && *d <= Duration::from_secs(3600))
            .ok_or_else(|| {
                format!("spec.hooks[{i}].timeout {t:?} is not a duration from 1s to 1h, such as 30s or 5m")
            })?,
    };
    if h.command.first().is_none_or(|c| c.is_empty()) {
        return Err(format!("spec.hooks[{i}].command is empty"));
    }
    Ok(Hook {
        stage: HookStage::Post,
        command: h.command.clone(),
        container: h.container.clone(),
        on_error: match h.on_error {
            HookOnError::Fail => OnError::Fail,
            HookOnError::Continue => OnError::Continue,
        },
        timeout,
    })
}

/// Whether every pod of `pods` is Ready (and there is one).
pub fn all_ready(pods: &[Pod]) -> bool {
    !pods.is_empty()
        && pods.iter().all(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
}

/// How often pods a hook waits for are looked at (the controller does not
/// watch the application's pods).
const HOOK_POLL: Duration = Duration::from_secs(2);

/// Step 3: the restore hooks, one per pass, in order, each once every pod
/// it picks is Ready; then the end.
async fn hooks(ctx: &Ctx, ar: &ApplicationRestore) -> Result<Action, Error> {
    let ns = ar.namespace().unwrap_or_default();
    let st = fresh(ctx, ar).await?;
    let i = st.hooks_done.unwrap_or(0) as usize;
    let Some(spec) = ar.spec.hooks.get(i) else {
        return conclude(ctx, ar).await;
    };
    let hook = match restore_hook(i, spec) {
        Ok(h) => h,
        Err(why) => {
            fail(ctx, ar, why).await?;
            return Ok(Action::await_change());
        }
    };
    let Some(since) = st.hook_waiting_since else {
        write(
            ctx,
            ar,
            json!({"hookWaitingSince": crate::time::Timestamp::now()}),
        )
        .await?;
        return Ok(Action::requeue(Duration::ZERO));
    };
    let selector = spec.selector.to_query();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!(
            "listing the pods of {ns} with labels {selector}"
        )))?
        .items;
    let mut runs = st.run.hooks.clone();
    let mut failed = st.failed_hooks.clone();
    if !all_ready(&pods) {
        let waited = (chrono::Utc::now() - since.at())
            .to_std()
            .unwrap_or_default();
        if waited < ctx.opts.prepare_timeout {
            return Ok(Action::requeue(HOOK_POLL));
        }
        let why = format!(
            "spec.hooks[{i}]: {} pod(s) of {ns} with labels {selector}, not all Ready within {}; the hook did not run",
            pods.len(),
            humantime::format_duration(ctx.opts.prepare_timeout)
        );
        match hook.on_error {
            OnError::Fail => failed.push(why),
            OnError::Continue => {
                ctx.reporter
                    .run_event(ar, EventType::Warning, "HookFailed", why)
                    .await
            }
        }
    } else {
        for pod in &pods {
            let first = crate::hooks::first_container(pod);
            let run = crate::hooks::run(&ctx.client, &ns, &pod.name_any(), &first, &hook).await;
            if let Some(why) = run.message.clone().filter(|_| !run.succeeded) {
                match hook.on_error {
                    OnError::Fail => failed.push(format!("spec.hooks[{i}]: {why}")),
                    OnError::Continue => {
                        ctx.reporter
                            .run_event(ar, EventType::Warning, "HookFailed", why)
                            .await
                    }
                }
            }
            runs.push(run);
        }
    }
    write(
        ctx,
        ar,
        json!({"hooks": runs, "failedHooks": failed, "hooksDone": i + 1,
               "hookWaitingSince": crate::time::Timestamp::now()}),
    )
    .await?;
    Ok(Action::requeue(Duration::ZERO))
}

/// A merge patch of `fields` into `ar`'s status.
async fn write(ctx: &Ctx, ar: &ApplicationRestore, fields: serde_json::Value) -> Result<(), Error> {
    let ns = ar.namespace().unwrap_or_default();
    let name = ar.name_any();
    crate::report::patch_status::<ApplicationRestore>(&ctx.client, &ns, &name, fields, None)
        .await
        .map_err(kube_err(format!(
            "writing the status of ApplicationRestore {ns}/{name}"
        )))?;
    Ok(())
}

/// How a restore whose pod wrote its results ended: Completed, or
/// PartiallyFailed naming the objects that failed.
pub fn outcome(status: &ApplicationRestoreStatus) -> (Phase, Option<String>) {
    let objects = status.objects.clone().unwrap_or_default();
    let failed = objects.counts.get("Failed").copied().unwrap_or(0);
    if failed == 0 && status.failed_hooks.is_empty() {
        return (Phase::Completed, None);
    }
    if failed == 0 {
        return (
            Phase::PartiallyFailed,
            Some(format!(
                "every object was restored, but a hook failed: {}",
                status.failed_hooks.join("; ")
            )),
        );
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
    let status = fresh(ctx, ar).await?;
    let (phase, message) = outcome(&status);
    let counts = status.objects.map(|o| o.counts).unwrap_or_default();
    let summary = format!(
        "snapshot {}: {counts:?}, {} volume(s) filled",
        status.run.snapshot_id.as_deref().unwrap_or_default(),
        status.volumes.len()
    );
    tenant_pods::conclude(ctx, ar, phase, message, None, summary).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_hook_is_checked_and_waits_for_every_pod_to_be_ready() {
        let hook = |v: serde_json::Value| -> RestoreHook { serde_json::from_value(v).unwrap() };
        let h = restore_hook(
            0,
            &hook(json!({"selector": {"matchLabels": {"app": "db"}}, "command": ["true"]})),
        )
        .unwrap();
        assert_eq!(h.timeout, crate::hooks::DEFAULT_TIMEOUT);
        assert_eq!(h.on_error, OnError::Fail);
        let e = restore_hook(
            2,
            &hook(json!({"selector": {}, "command": ["true"], "timeout": "3h"})),
        )
        .unwrap_err();
        assert!(e.contains("spec.hooks[2].timeout \"3h\""), "{e}");
        assert!(restore_hook(0, &hook(json!({"selector": {}, "command": [""]}))).is_err());
        let pod = |ready: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
            .unwrap()
        };
        assert!(!all_ready(&[]), "no pod yet");
        assert!(all_ready(&[pod("True"), pod("True")]));
        assert!(!all_ready(&[pod("True"), pod("False")]));
    }

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
