//! The pre- and post-hooks around a run's (or a group's) snapshots.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::VolumeBackup;

use crate::api::{kube_err, Error};
use crate::controller::context::Ctx;
use crate::controller::lifecycle::fresh_status;
use crate::hooks::HookStage;
use crate::report::{patch_status, Written};

/// Whether pods may be frozen and not thawed: a pre-hook ran (one that
/// failed or timed out may have frozen all the same) and no post-hook has.
pub(crate) fn frozen(hooks: &[crate::crd::HookRun]) -> bool {
    hooks.iter().any(|h| HookStage::Pre.of(h)) && !hooks.iter().any(|h| HookStage::Post.of(h))
}

/// Runs the `stage` hooks (see [`crate::hooks`]) of the running pods that
/// use the PVCs of `runs` (only the pods the runs name, when they do), once
/// per group: they are recorded in the `status.hooks` of every run, and
/// the first run's record says whether they ran. `Ok(Err(why))` when a hook
/// with on-error Fail failed; after a failed pre-hook, the post-hooks of the
/// pods whose pre-hook ran (the failed one included: it may have frozen
/// before it failed or timed out) are run at once, so that nothing stays
/// frozen.
pub(crate) async fn snapshot_hooks(
    ctx: &Ctx,
    runs: &[VolumeBackup],
    stage: HookStage,
) -> Result<Result<(), String>, Error> {
    let Some(first) = runs.first() else {
        return Ok(Ok(()));
    };
    let ns = first.namespace().unwrap_or_default();
    // The cache may lag behind our own last write: hooks run once.
    let mut hooks = fresh_status(ctx, first).await?.unwrap_or_default().hooks;
    if hooks.iter().any(|h| stage.of(h)) {
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
        let (hook, post) = if stage == HookStage::Pre {
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
            ctx.reporter
                .run_event(first, EventType::Warning, "HookFailed", m.clone())
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
    if failed.is_some() && stage == HookStage::Pre {
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
            let what = format!("recording the hooks of VolumeBackup {ns}/{}", r.name_any());
            let written = patch_status::<VolumeBackup>(
                &ctx.client,
                &ns,
                &r.name_any(),
                json!({ "hooks": hooks }),
                None,
            )
            .await
            .map_err(kube_err(what.clone()))?;
            if written == Written::Gone {
                return Err(Error::Invalid(format!("{what}: it is gone")));
            }
        }
    }
    Ok(match failed {
        Some(m) if stage == HookStage::Pre => {
            Err(format!("{m}; no snapshot was taken (on-error Fail)"))
        }
        Some(m) => Err(format!("{m} (on-error Fail)")),
        None => Ok(()),
    })
}
