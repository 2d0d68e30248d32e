//! What a mover pod's Events say, for the message of a run that could not
//! start it.

use k8s_openapi::api::core::v1::{Event as CoreEvent, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, ObjectList};
use kube::ResourceExt;

use crate::controller::context::Ctx;

/// The last Warning events of a pod, for a message.
pub(crate) async fn pod_events(ctx: &Ctx, pod: &Pod) -> String {
    let Ok(list) = this_pods_events(ctx, pod).await else {
        return String::new();
    };
    let notes = last_warnings(&list.items);
    let mut out = if notes.is_empty() {
        "; it has no Warning events".to_string()
    } else {
        format!("; its events: {}", notes.join("; "))
    };
    out.push_str(&unbound_claims(ctx, pod).await);
    out
}

/// The last three Warning events, newest first, as `Reason: message`.
pub(crate) fn last_warnings(events: &[CoreEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .rev()
        .take(3)
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.as_deref().unwrap_or_default(),
                e.message.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

/// Why the claims a pod mounts are not bound yet (a clone or restore
/// target whose provisioning fails: a missing storage class, a driver
/// that cannot clone): each unbound claim with its last Warning events.
pub(crate) async fn unbound_claims(ctx: &Ctx, pod: &Pod) -> String {
    let ns = pod.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let events: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = String::new();
    let claims = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref());
    for c in claims {
        let Ok(Some(pvc)) = pvcs.get_opt(&c.claim_name).await else {
            continue;
        };
        let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref() == Some("Bound") {
            continue;
        }
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind=PersistentVolumeClaim,involvedObject.name={},involvedObject.uid={}",
            pvc.name_any(),
            pvc.uid().unwrap_or_default()
        ));
        let notes = last_warnings(&events.list(&lp).await.map(|l| l.items).unwrap_or_default());
        out.push_str(&format!(
            "; PVC {ns}/{} is {}",
            pvc.name_any(),
            phase.as_deref().unwrap_or("Pending")
        ));
        if !notes.is_empty() {
            out.push_str(&format!(" ({})", notes.join("; ")));
        }
    }
    out
}

/// The events of this pod, not of an earlier pod of the same name (a
/// maintenance job, a recreated run), which may have failed on something
/// mended since.
pub(crate) async fn this_pods_events(
    ctx: &Ctx,
    pod: &Pod,
) -> Result<ObjectList<CoreEvent>, kube::Error> {
    let api: Api<CoreEvent> =
        Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={},involvedObject.uid={}",
        pod.name_any(),
        pod.uid().unwrap_or_default()
    ));
    api.list(&lp).await
}
