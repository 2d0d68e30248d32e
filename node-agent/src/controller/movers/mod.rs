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
use crate::controller::movers::pod::{local_repository_dir, MoverPod};
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
        repository: repo.name_any(),
        repository_namespace: repo.namespace().filter(|ns| ns != run_ns),
        password_secret: repo.spec.password_secret_ref.name.clone(),
        password_key: repo.spec.password_secret_ref.key.clone(),
        credentials_secret: repo
            .spec
            .credentials_secret_ref
            .as_ref()
            .map(|c| c.name.clone()),
        options: repo
            .spec
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
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

/// The Secrets a mover reads: those of the repository it opens (and of a
/// copy's destination), all in the repository's namespace.
pub(crate) struct SecretsOf {
    namespace: String,
    names: Vec<String>,
}

impl SecretsOf {
    /// The password and credentials Secrets of `repos` (of one namespace).
    pub(crate) fn of(repos: &[&BackupRepository]) -> SecretsOf {
        let mut names: Vec<String> = repos
            .iter()
            .flat_map(|r| {
                std::iter::once(r.spec.password_secret_ref.name.clone())
                    .chain(r.spec.credentials_secret_ref.iter().map(|c| c.name.clone()))
            })
            .collect();
        names.sort();
        names.dedup();
        SecretsOf {
            namespace: repos
                .first()
                .and_then(|r| r.namespace())
                .unwrap_or_default(),
            names,
        }
    }
}

/// The rules of a mover's Roles, by namespace: the one status it writes,
/// and the Secrets it reads (by name; `get` only).
fn mover_rules(writes: &StatusOf, reads: &SecretsOf) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut rules: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    rules
        .entry(writes.namespace.clone())
        .or_default()
        .push(json!({
            "apiGroups": ["coffer.dev"],
            "resources": [format!("{}/status", writes.plural)],
            "resourceNames": [writes.name],
            "verbs": ["get", "patch"],
        }));
    if !reads.names.is_empty() {
        rules
            .entry(reads.namespace.clone())
            .or_default()
            .push(json!({
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": reads.names,
                "verbs": ["get"],
            }));
    }
    rules
}

/// The namespaces where a mover that writes `writes` and reads `reads` has
/// a Role ([`delete_account`] deletes them there).
pub(crate) fn role_namespaces(writes_ns: &str, reads_ns: &str) -> Vec<String> {
    let mut all = vec![writes_ns.to_string(), reads_ns.to_string()];
    all.dedup();
    all
}

/// Creates a mover pod, after its own ServiceAccount (named as the pod, in
/// the pod's namespace) and a Role and RoleBinding that let that account
/// read and patch `writes`' status and read the Secrets `reads` names, and
/// nothing else: a mover cannot touch another run, even in its own
/// namespace, nor read another Secret. They carry the pod's labels and,
/// where they share its namespace, are owned by the object written to, so
/// that they go with it; [`delete_mover`] deletes them once the pod is gone.
pub(crate) async fn create_mover(
    ctx: &Ctx,
    pod: &Pod,
    writes: &StatusOf,
    reads: &SecretsOf,
) -> Result<(), Error> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let owners: Vec<&OwnerReference> = writes
        .owner
        .iter()
        .filter(|_| ns == writes.namespace)
        .collect();
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": pod.labels(), "ownerReferences": owners},
        "automountServiceAccountToken": true,
    }))
    .unwrap_or_default();
    create(
        &Api::namespaced(ctx.client.clone(), &ns),
        &sa,
        &format!("ServiceAccount {ns}/{name}"),
    )
    .await?;
    create_granted(ctx, pod, &name, writes, reads, Vec::new()).await
}

/// Creates `pod`, which runs as ServiceAccount `account` of its namespace,
/// after a Role and RoleBinding (named as the pod, labelled as it) that
/// grant that account what [`create_mover`] grants a mover's own: the
/// status of `writes`, the Secrets `reads` names; and `extra` rules in the
/// pod's namespace. [`revoke`] deletes them.
pub(crate) async fn create_granted(
    ctx: &Ctx,
    pod: &Pod,
    account: &str,
    writes: &StatusOf,
    reads: &SecretsOf,
    extra: Vec<serde_json::Value>,
) -> Result<(), Error> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let tns = writes.namespace.as_str();
    let owners = |in_ns: &str| -> Vec<&OwnerReference> {
        writes.owner.iter().filter(|_| in_ns == tns).collect()
    };
    let meta = |in_ns: &str| json!({"name": name, "namespace": in_ns, "labels": pod.labels(), "ownerReferences": owners(in_ns)});
    let mut rules = mover_rules(writes, reads);
    if !extra.is_empty() {
        rules.entry(ns.clone()).or_default().extend(extra);
    }
    // Where its Roles are, for whoever deletes it without its run.
    let mut pod = pod.clone();
    let role_ns: Vec<&str> = rules.keys().map(String::as_str).collect();
    pod.annotations_mut()
        .insert(ROLE_NAMESPACES.to_string(), role_ns.join(","));
    for (rns, rules) in rules {
        let role: Role = serde_json::from_value(json!({"metadata": meta(&rns), "rules": rules}))
            .unwrap_or_default();
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": meta(&rns),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
        }))
        .unwrap_or_default();
        let roles = Api::namespaced(ctx.client.clone(), &rns);
        create(&roles, &role, &format!("Role {rns}/{name}")).await?;
        let bindings = Api::namespaced(ctx.client.clone(), &rns);
        create(&bindings, &binding, &format!("RoleBinding {rns}/{name}")).await?;
    }
    create(
        &Api::namespaced(ctx.client.clone(), &ns),
        &pod,
        &format!("pod {ns}/{name}"),
    )
    .await
}

/// The annotation of a mover pod naming the namespaces of its Roles.
pub(crate) const ROLE_NAMESPACES: &str = "coffer.dev/role-namespaces";

/// The namespaces of mover `pod`'s Roles (else `fallback`'s).
pub(crate) fn roles_of(pod: &Pod, fallback: &str) -> Vec<String> {
    match pod.annotations().get(ROLE_NAMESPACES) {
        Some(list) => list
            .split(',')
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect(),
        None => vec![fallback.to_string()],
    }
}

/// Start-up sweep: the mover pods labelled `label` in coffer's namespace
/// whose object of kind `K` (the run, repository or schedule its
/// annotation names) is gone, with their accounts.
pub(crate) async fn sweep_movers<K>(ctx: &Ctx, label: &str)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let home = ctx.opts.namespace.clone();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &home);
    let listed = pods
        .list(&kube::api::ListParams::default().labels(label))
        .await;
    for pod in listed.map(|l| l.items).unwrap_or_default() {
        let Some((ns, name)) = crate::names::annotated_run(pod.annotations()) else {
            continue;
        };
        let found = Api::<K>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await;
        if !matches!(found, Ok(None)) {
            continue;
        }
        let pod_name = pod.name_any();
        let what = format!("leftover mover pod {home}/{pod_name}");
        if let Err(e) = delete(&pods, &pod_name, &what).await {
            tracing::warn!("start-up sweep: {e}");
        }
        if let Err(e) = delete_account(ctx, &home, &pod_name, &roles_of(&pod, ns)).await {
            tracing::warn!("start-up sweep: {e}");
        }
    }
}

/// Deletes the mover pod `ns/name` and, once it is gone, its account (made
/// by [`create_mover`], with Roles in `role_ns`). Returns true while the
/// pod is still there.
pub(crate) async fn delete_mover(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    role_ns: &[String],
) -> Result<bool, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let what = format!("pod {ns}/{name}");
    if delete_pod(&pods, name, &what, ctx.opts.terminating_limit).await? {
        return Ok(true);
    }
    delete_account(ctx, ns, name, role_ns).await?;
    Ok(false)
}

/// Deletes a mover's ServiceAccount, Role and RoleBinding; the account goes
/// last, so that one still there means the rest may be too.
pub(crate) async fn delete_account(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    role_ns: &[String],
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
    revoke(ctx, name, role_ns).await?;
    delete(&accounts, name, &what).await
}

/// Deletes the Roles and RoleBindings `name` in `role_ns` that
/// [`create_granted`] made.
pub(crate) async fn revoke(ctx: &Ctx, name: &str, role_ns: &[String]) -> Result<(), Error> {
    for rns in role_ns {
        let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), rns);
        delete(&bindings, name, &format!("RoleBinding {rns}/{name}")).await?;
        let roles: Api<Role> = Api::namespaced(ctx.client.clone(), rns);
        delete(&roles, name, &format!("Role {rns}/{name}")).await?;
    }
    Ok(())
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
    /// A mover pod `name` in `ns` that opens `repo` (a local repository's
    /// directory mounted), with this controller's image, account and memory
    /// limit; no volume, arguments, labels or owner yet (struct update
    /// syntax fills them).
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
            pull_secrets: &self.opts.mover_pull_secrets,
            volume: None,
            args: Vec::new(),
            repository_dir: local_repository_dir(&repo.spec.url),
            memory: &self.opts.mover_memory,
            labels: &NO_LABELS,
            owner: None,
            destination_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mover_may_read_its_repositorys_secrets_by_name_and_write_one_status() {
        let repo = |ns: &str, pw: &str, creds: Option<&str>| -> BackupRepository {
            serde_json::from_value(json!({
                "metadata": {"name": "main", "namespace": ns},
                "spec": {"url": "s3://b/x", "passwordSecretRef": {"name": pw},
                         "credentialsSecretRef": creds.map(|c| json!({"name": c}))},
            }))
            .unwrap()
        };
        let writes = StatusOf {
            plural: "volumerestores".into(),
            namespace: "shop".into(),
            name: "back".into(),
            owner: None,
        };
        // One namespace: one Role with both rules.
        let (a, b) = (repo("shop", "pw", Some("s3")), repo("shop", "pw2", None));
        let rules = mover_rules(&writes, &SecretsOf::of(&[&a, &b]));
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules["shop"][1],
            json!({"apiGroups": [""], "resources": ["secrets"],
                   "resourceNames": ["pw", "pw2", "s3"], "verbs": ["get"]})
        );
        assert_eq!(rules["shop"][0]["resourceNames"], json!(["back"]));
        // A restore into another namespace reads that namespace's Secrets.
        let other = repo("copy", "pw", None);
        let rules = mover_rules(&writes, &SecretsOf::of(&[&other]));
        assert_eq!(rules.keys().collect::<Vec<_>>(), ["copy", "shop"]);
        assert_eq!(rules["copy"][0]["resourceNames"], json!(["pw"]));
        assert_eq!(role_namespaces("shop", "copy"), ["shop", "copy"]);
        assert_eq!(role_namespaces("shop", "shop"), ["shop"]);
    }

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
