//! The volume populator of RestoreSources: a PersistentVolumeClaim whose
//! `spec.dataSourceRef` names a RestoreSource (`apiGroup: coffer.dev`) gets
//! a VolumeRestore that fills it (`spec.target.existing`), owned by the
//! claim. The restore controller fills a claim of the same spec in coffer's
//! namespace and hands its volume over, so the claim binds with the data
//! in it, as Kubernetes' volume populators do (the `AnyVolumeDataSource`
//! API; deploy/components/populator registers the kind with the
//! data-source validator). Events on the claim say what it waits for.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{kube_err, Error};
use crate::controller::context::Ctx;
use crate::crd::{Phase, RestoreSource, VolumeRestore};
use crate::names::object_name;

/// The API group and kind a claim's `dataSourceRef` names.
pub const SOURCE_GROUP: &str = "coffer.dev";
/// See [`SOURCE_GROUP`].
pub const SOURCE_KIND: &str = "RestoreSource";

/// How often a claim whose RestoreSource is missing is looked at again.
const SOURCE_POLL: Duration = Duration::from_secs(30);

/// The RestoreSource a claim names, when it names one and is not bound yet.
pub fn source_of(pvc: &PersistentVolumeClaim) -> Option<&str> {
    let spec = pvc.spec.as_ref()?;
    if spec.volume_name.is_some() {
        return None;
    }
    let r = spec.data_source_ref.as_ref()?;
    (r.api_group.as_deref() == Some(SOURCE_GROUP) && r.kind == SOURCE_KIND)
        .then_some(r.name.as_str())
}

/// The VolumeRestore that fills claim `pvc`.
pub fn populator_run_name(pvc: &str) -> String {
    object_name(&["coffer-populate", pvc])
}

/// One pass over a claim.
pub(crate) async fn reconcile(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let Some(source) = source_of(&pvc) else {
        return Ok(Action::await_change());
    };
    if pvc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let runs: Api<VolumeRestore> = Api::namespaced(ctx.client.clone(), &ns);
    let run_name = populator_run_name(&name);
    if let Some(run) = runs
        .get_opt(&run_name)
        .await
        .map_err(kube_err(format!("reading VolumeRestore {ns}/{run_name}")))?
    {
        let st = run.status.unwrap_or_default();
        if st.phase == Phase::Failed {
            let why = st.message.unwrap_or_default();
            ctx.reporter
                .event_on(
                    pvc.as_ref(),
                    "Populate",
                    EventType::Warning,
                    "PopulationFailed",
                    format!("VolumeRestore {run_name} failed: {why}; delete it to try again"),
                )
                .await;
        }
        // The claim binding (or the run ending) wakes this again.
        return Ok(Action::requeue(SOURCE_POLL));
    }
    let sources: Api<RestoreSource> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(src) = sources
        .get_opt(source)
        .await
        .map_err(kube_err(format!("reading RestoreSource {ns}/{source}")))?
    else {
        ctx.reporter
            .event_on(
                pvc.as_ref(),
                "Populate",
                EventType::Warning,
                "RestoreSourceNotFound",
                format!("waiting for RestoreSource {ns}/{source}, which the claim's dataSourceRef names"),
            )
            .await;
        return Ok(Action::requeue(SOURCE_POLL));
    };
    let owner = pvc.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o
    });
    let run: VolumeRestore = serde_json::from_value(json!({
        "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeRestore",
        "metadata": {
            "name": run_name, "namespace": ns,
            "labels": {crate::names::managed_by().0: crate::names::managed_by().1},
            "ownerReferences": owner.map(|o| vec![o]),
        },
        "spec": {
            "snapshot": src.spec.snapshot_for(&name),
            "repository": src.spec.repository,
            "target": {"pvc": name, "existing": true},
        },
    }))
    .map_err(|e| Error::Refused(format!("the VolumeRestore for PVC {ns}/{name}: {e}")))?;
    match runs.create(&PostParams::default(), &run).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            return Err(kube_err(format!("creating VolumeRestore {ns}/{run_name}"))(
                e,
            ))
        }
    }
    ctx.reporter
        .event_on(
            pvc.as_ref(),
            "Populate",
            EventType::Normal,
            "Populating",
            format!("VolumeRestore {run_name} fills this claim from RestoreSource {source}"),
        )
        .await;
    Ok(Action::requeue(SOURCE_POLL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unbound_claim_naming_a_restore_source_is_populated() {
        let claim = |r: serde_json::Value, volume: Option<&str>| -> PersistentVolumeClaim {
            serde_json::from_value(json!({"metadata": {"name": "data-db-0"},
                "spec": {"dataSourceRef": r, "volumeName": volume}}))
            .unwrap()
        };
        let ours = json!({"apiGroup": "coffer.dev", "kind": "RestoreSource", "name": "nightly"});
        assert_eq!(source_of(&claim(ours.clone(), None)), Some("nightly"));
        assert_eq!(source_of(&claim(ours, Some("pv-1"))), None);
        let snap =
            json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"});
        assert_eq!(source_of(&claim(snap, None)), None);
        let other = json!({"apiGroup": "example.com", "kind": "RestoreSource", "name": "x"});
        assert_eq!(source_of(&claim(other, None)), None);
    }

    #[test]
    fn a_source_without_a_pvc_restores_each_claims_own_origin() {
        let src: crate::crd::RestoreSourceSpec = serde_json::from_value(
            json!({"snapshot": {"namespace": "shop", "asOf": "2026-12-01T00:00:00Z"}}),
        )
        .unwrap();
        assert_eq!(src.repository, "default");
        let s = src.snapshot_for("data-db-1");
        assert_eq!(s.pvc.as_deref(), Some("data-db-1"));
        assert_eq!(s.namespace.as_deref(), Some("shop"));
        let by_id: crate::crd::RestoreSourceSpec =
            serde_json::from_value(json!({"snapshot": {"id": "ab12"}})).unwrap();
        assert_eq!(by_id.snapshot_for("x").pvc, None);
    }
}
