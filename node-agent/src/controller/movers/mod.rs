//! Mover pods: each runs `coffer-agent mover` under its own one-object
//! ServiceAccount, which may write the status of exactly the object it
//! reports to. Creating them with their account, reading where they stand,
//! and deleting them (by force when their node is gone).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::BackupRepository;

use crate::api::{create, delete, kube_err, Error};
use crate::controller::context::Ctx;
use crate::controller::movers::events::{pod_events, this_pods_events};
use crate::controller::movers::pod::{local_repository_dir, MoverPod, CREDENTIALS_DIR};
use crate::controller::movers::state::{mover_failure, mover_started, permanent_mount_failure};
use crate::mover::args::MoverCommon;
use crate::time::remaining;

pub(crate) mod events;
pub mod pod;
pub mod state;

/// How often a mover pod that has not started is looked at again: the
/// kubelet reports a mount it cannot make only in Events, which do not wake
/// the controller.
pub(crate) const MOUNT_CHECK: Duration = Duration::from_secs(10);

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
        if let Some(why) = permanent_mount_failure(&list.items) {
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
        return MoverState::Exited(mover_failure(pod));
    }
    if let Some(why) = mover_failure(pod) {
        return MoverState::Stuck(why);
    }
    if mover_started(pod) {
        return MoverState::Running(None);
    }
    match not_started(ctx, pod).await {
        Ok(wait) => MoverState::Running(Some(wait)),
        Err(why) => MoverState::Stuck(why),
    }
}

/// What every mover of `run` (in `run_ns`) that opens `repo` is given: its
/// run, the repository, and this controller's limits; a repository the
/// administrator does not allow is refused for good.
pub(crate) fn common_args(
    ctx: &Ctx,
    run_ns: &str,
    run: &str,
    repo: &BackupRepository,
) -> Result<MoverCommon, Error> {
    let policy = &ctx.opts.policy;
    policy.check_url(&repo.spec.url).map_err(|why| {
        Error::Refused(format!(
            "BackupRepository {}/{}: {why}",
            repo.namespace().unwrap_or_default(),
            repo.name_any()
        ))
    })?;
    Ok(MoverCommon {
        namespace: run_ns.into(),
        run: run.into(),
        repository_url: repo.spec.url.clone(),
        options: repo
            .spec
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        credentials_dir: repo
            .spec
            .credentials_secret_ref
            .as_ref()
            .map(|_| CREDENTIALS_DIR.into()),
        init: repo.spec.init,
        log_format: String::new(),
        policy: policy.clone(),
    })
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

/// How long after `--terminating-limit` a pod still Terminating is looked
/// at again, where no event would wake its owner (a lost node sends none).
pub(crate) const TERMINATING_RECHECK: Duration = Duration::from_secs(5);

/// Whether a pod deleted at `deletion` (the time its grace period ends)
/// has stayed past `limit` at `now` (Unix seconds).
pub(crate) fn terminating_too_long(deletion: i64, now: i64, limit: Duration) -> bool {
    now.saturating_sub(deletion) > limit.as_secs() as i64
}

/// [`crate::api::delete_present`] for a mover pod: one still Terminating long after
/// its grace period is deleted at once (grace period 0), as `kubectl
/// delete --force` does, so that cleanup is bounded even when its node is
/// gone. A mover holds no state that outlives it: a backup it was writing
/// is an unfinished session the repository's protocol tolerates.
pub(crate) async fn delete_pod(
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

impl Ctx /* mover */ {
    /// A mover pod `name` in `ns` that opens `repo` (its password Secret in
    /// the environment, its credentials Secret mounted), with this
    /// controller's image, account and memory limit; no volume, arguments,
    /// labels or owner yet (struct update syntax fills them).
    pub(crate) fn mover<'a>(
        &'a self,
        name: &'a str,
        ns: &'a str,
        repo: &'a BackupRepository,
    ) -> MoverPod<'a> {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        MoverPod {
            name,
            namespace: ns,
            image: &self.opts.mover_image,
            volume: None,
            args: Vec::new(),
            password: &repo.spec.password_secret_ref,
            credentials: repo.spec.credentials_secret_ref.as_ref(),
            repository_dir: local_repository_dir(&repo.spec.url),
            memory: &self.opts.mover_memory,
            labels: &NO_LABELS,
            owner: None,
            destination: None,
        }
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
}
