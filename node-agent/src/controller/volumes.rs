//! PersistentVolumes the controller made: deleted with their volume.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{delete, kube_err, Error};

/// Deletes a PV the controller made (a clone's, or one a failed restore
/// filled), once its claim is gone, with its volume.
pub(crate) async fn delete_volume(
    pvs: &Api<PersistentVolume>,
    pv: &PersistentVolume,
) -> Result<(), Error> {
    let name = pv.name_any();
    if pv.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    reclaim_on_release(pvs, pv).await?;
    delete(pvs, &name, &format!("PV {name}")).await
}

/// Sets a retained volume the controller made to Delete: it would outlive
/// the run, and with Delete the driver deletes the volume with the object.
pub(crate) async fn reclaim_on_release(
    pvs: &Api<PersistentVolume>,
    pv: &PersistentVolume,
) -> Result<(), Error> {
    let name = pv.name_any();
    if pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        != Some("Retain")
    {
        return Ok(());
    }
    pvs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}})),
    )
    .await
    .map(drop)
    .map_err(kube_err(format!("setting PV {name} to Delete")))
}
