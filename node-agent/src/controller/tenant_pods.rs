//! What the application backup and restore controllers share: their one pod
//! in the tenant's namespace, run as the tenant's account, followed to its
//! end and removed with its Role.

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use crate::api::{delete_present, kube_err, Error};
use crate::controller::context::Ctx;
use crate::controller::lifecycle::{fail, ControllerRun};
use crate::controller::movers::{mover_state, revoke, role_namespaces, roles_of, MoverState};

/// Ends `run` with `phase` and `message` (and `size`, the bytes it wrote),
/// once: the pass that wrote the end raises the Event `<Action><Phase>`,
/// saying `message`, else `summary`.
pub(crate) async fn conclude<K: ControllerRun>(
    ctx: &Ctx,
    run: &K,
    phase: crate::crd::Phase,
    message: Option<String>,
    size: Option<String>,
    summary: String,
) -> Result<Action, Error> {
    let ns = run.namespace().unwrap_or_default();
    let written = crate::report::try_update_run::<K>(&ctx.client, &ns, &run.name_any(), |s| {
        let mut done = crate::status::concluded(s.clone(), phase, message.clone());
        if size.is_some() {
            done.size = size.clone();
        }
        *s = done;
    })
    .await?;
    if written.is_some() {
        let (etype, reason) = crate::report::end_event::<K>(phase);
        let note = message.unwrap_or(summary);
        ctx.reporter.run_event(run, etype, &reason, note).await;
    }
    Ok(Action::requeue(std::time::Duration::ZERO))
}

/// Where a run's tenant pod stands.
pub(crate) enum Followed {
    /// Still running, or the run failed with why: this is the pass's end.
    Done(Action),
    /// It exited 0: its result should be in the run's status.
    Exited,
}

/// Follows the tenant pod `pod` of `run`, which runs as `account` to do
/// `doing` (`read what is captured`): one that cannot run or failed fails
/// the run, saying which account it ran as when the API server refused it.
pub(crate) async fn follow<K: ControllerRun>(
    ctx: &Ctx,
    run: &K,
    pod: &Pod,
    account: &str,
    doing: &str,
) -> Result<Followed, Error> {
    let why = match mover_state(ctx, pod).await {
        MoverState::Running(again) => {
            return Ok(Followed::Done(
                again.map_or_else(Action::await_change, Action::requeue),
            ))
        }
        MoverState::Exited(None) => return Ok(Followed::Exited),
        MoverState::Stuck(why) | MoverState::Exited(Some(why)) => why,
    };
    let ns = run.namespace().unwrap_or_default();
    let why = if why.contains("forbidden") || why.contains("not found") {
        format!("{why} (it runs as ServiceAccount {ns}/{account}: check that it exists and that it may {doing})")
    } else {
        why
    };
    fail(ctx, run, why).await?;
    Ok(Followed::Done(Action::await_change()))
}

/// Ends a run whose pod exited 0 without writing its result.
pub(crate) async fn exited_silently<K: ControllerRun>(
    ctx: &Ctx,
    run: &K,
    pod: &str,
) -> Result<Action, Error> {
    let ns = run.namespace().unwrap_or_default();
    fail(
        ctx,
        run,
        format!("pod {ns}/{pod} exited without writing its result"),
    )
    .await?;
    Ok(Action::await_change())
}

/// Deletes the tenant pod `ns/name` and then its Role and RoleBinding;
/// `true` once all are gone.
pub(crate) async fn remove(ctx: &Ctx, ns: &str, name: &str) -> Result<bool, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let role_ns = match pods
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading pod {ns}/{name}")))?
    {
        Some(pod) => roles_of(&pod, ns),
        None => role_namespaces(ns, ns),
    };
    if delete_present(&pods, name, &format!("pod {ns}/{name}")).await? {
        return Ok(false);
    }
    revoke(ctx, name, &role_ns).await?;
    Ok(true)
}

/// Run `K` `ns/name` as the API server has it now (its status fresh).
pub(crate) async fn fresh<K: ControllerRun>(ctx: &Ctx, run: &K) -> Result<K, Error> {
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    Api::<K>::namespaced(ctx.client.clone(), &ns)
        .get_status(&name)
        .await
        .map_err(kube_err(format!("reading {} {ns}/{name}", K::kind(&()))))
}

/// A refusal to create a tenant pod says how the namespace allows it
/// (ClusterRole coffer-applications), not the general opt-in.
pub(crate) fn refused_pod(e: Error) -> Error {
    match e {
        Error::Refused(m) if m.contains("cannot create resource \"pods\"") => {
            let ns = m
                .split("in the namespace \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("NAMESPACE");
            Error::Refused(format!(
                "the API server refused to create this run's pod: namespace {ns} has not let coffer's controller run application backups' and restores' pods there; its admin allows it: {}",
                crate::policy::applications_opt_in_command(ns)
            ))
        }
        other => other,
    }
}
