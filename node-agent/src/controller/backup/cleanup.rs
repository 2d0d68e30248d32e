//! The end of a backup by snapshot: its mover pod, clone claim and
//! VolumeSnapshot go, in that order; and the start-up sweep of what deleted
//! runs left.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::VolumeBackup;

use crate::api::{delete, delete_present, kube_err, Error};
use crate::controller::backup::group::group_cleanup;
use crate::controller::backup::run::{child_name, home_child};
use crate::controller::context::Ctx;
use crate::controller::csi::{VolumeSnapshot, VolumeSnapshotContent};
use crate::controller::movers::{delete_account, delete_mover, roles_of};
use crate::controller::volumes::{delete_volume, reclaim_on_release};
use crate::names::{annotated_run, RUN_LABEL};

/// The end of a run, one deletion at a time: in coffer's namespace the
/// mover pod (and its account), the clone PVC, its PV, the exposed
/// VolumeSnapshot and its VolumeSnapshotContent (Retain: the storage's
/// snapshot stays with the original); then the run's VolumeSnapshot, unless
/// it is kept. Returns true when nothing is left.
pub(crate) async fn cleanup(ctx: &Ctx, vb: &VolumeBackup) -> Result<bool, Error> {
    let ns = vb.namespace().unwrap_or_default();
    let home = ctx.opts.namespace.clone();
    let child = child_name(vb);
    let exposed = home_child(vb);
    if delete_mover(ctx, &home, &exposed, std::slice::from_ref(&ns)).await? {
        return Ok(false);
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &home);
    if delete_present(&pvcs, &exposed, &format!("PVC {home}/{exposed}")).await? {
        return Ok(false);
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let bound = pvs
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing PersistentVolumes"))?
        .items
        .into_iter()
        .find(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some_and(|r| {
                    r.namespace.as_deref() == Some(home.as_str())
                        && r.name.as_deref() == Some(exposed.as_str())
                })
        });
    if let Some(pv) = bound {
        delete_volume(&pvs, &pv).await?;
        return Ok(false);
    }
    let home_snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &home);
    let what = format!("VolumeSnapshot {home}/{exposed}");
    if delete_present(&home_snaps, &exposed, &what).await? {
        return Ok(false);
    }
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    let what = format!("VolumeSnapshotContent {exposed}");
    if delete_present(&contents, &exposed, &what).await? {
        return Ok(false);
    }
    let snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(vs) = snaps
        .get_opt(&child)
        .await
        .map_err(kube_err(format!("reading VolumeSnapshot {ns}/{child}")))?
    {
        if vb.spec.retain_snapshot {
            if !vs.owner_references().is_empty() {
                // Kept: no longer owned by the run, so deleting the run
                // keeps it too.
                snaps
                    .patch(
                        &child,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
                    )
                    .await
                    .map_err(kube_err(format!("releasing VolumeSnapshot {ns}/{child}")))?;
            }
        } else {
            if vs.meta().deletion_timestamp.is_none() {
                delete(&snaps, &child, &format!("VolumeSnapshot {ns}/{child}")).await?;
            }
            return Ok(false);
        }
    }
    match &vb.spec.group {
        Some(g) => group_cleanup(ctx, vb, g).await,
        None => Ok(true),
    }
}

/// Start-up sweep: objects made for runs that no longer exist (deleted
/// while no controller ran, finalizer removed by hand) are deleted, pods
/// (and their accounts) first, then clones, then the exposed
/// VolumeSnapshots and their contents, then the runs' own VolumeSnapshots
/// (the order of a run's cleanup).
/// A retained clone volume is set to Delete, so that it goes once its
/// claim is gone, as any PV of that policy does (deleting a PV while its
/// claim still exists can leave the volume behind).
pub(crate) async fn sweep(ctx: &Ctx) {
    let home = ctx.opts.namespace.clone();
    for (pod, run_ns) in sweep_kind::<Pod>(ctx, Some(&home), "leftover mover pod").await {
        let name = pod.name_any();
        if let Err(e) = delete_account(ctx, &home, &name, &roles_of(&pod, &run_ns)).await {
            tracing::warn!("start-up sweep: {e}");
        }
    }
    let clones = sweep_kind::<PersistentVolumeClaim>(ctx, Some(&home), "leftover clone PVC").await;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    for volume in clones
        .iter()
        .filter_map(|(c, _)| c.spec.as_ref()?.volume_name.as_deref())
    {
        let released = match pvs.get_opt(volume).await {
            Ok(Some(pv)) => reclaim_on_release(&pvs, &pv).await,
            Ok(None) => Ok(()),
            Err(e) => Err(kube_err(format!("reading PV {volume}"))(e)),
        };
        if let Err(e) = released {
            tracing::warn!("start-up sweep: the volume of a leftover clone: {e}");
        }
    }
    sweep_kind::<VolumeSnapshot>(ctx, Some(&home), "leftover exposed VolumeSnapshot").await;
    let contents: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    match contents
        .list(&ListParams::default().labels(RUN_LABEL))
        .await
    {
        Ok(list) => {
            for c in list.items {
                if run_gone(ctx, &c, None).await.is_some() {
                    let what = format!("leftover VolumeSnapshotContent {}", c.name_any());
                    if let Err(e) = delete(&contents, &c.name_any(), &what).await {
                        tracing::warn!("start-up sweep: {e}");
                    }
                }
            }
        }
        Err(e) => tracing::warn!("start-up sweep: listing VolumeSnapshotContents: {e}"),
    }
    sweep_kind::<VolumeSnapshot>(ctx, None, "leftover VolumeSnapshot").await;
}

/// The namespace of the run that `o` was made for, when that run is gone
/// (or is another object of the same name). The run is `o`'s owner (in
/// `o`'s namespace `ns`), or, for what lies in coffer's namespace, the one
/// its annotation names.
async fn run_gone(ctx: &Ctx, o: &impl ResourceExt, ns: Option<&str>) -> Option<String> {
    let owner = o
        .owner_references()
        .iter()
        .find(|r| r.kind == "VolumeBackup");
    let (run_ns, name, uid) = match (owner, ns) {
        (Some(r), Some(ns)) => (ns.to_string(), r.name.clone(), Some(r.uid.clone())),
        _ => {
            let (ns, name) = annotated_run(o.annotations())?;
            (ns.to_string(), name.to_string(), None)
        }
    };
    let gone = match Api::<VolumeBackup>::namespaced(ctx.client.clone(), &run_ns)
        .get_opt(&name)
        .await
    {
        Ok(Some(vb)) => uid.is_some_and(|uid| vb.uid().as_deref() != Some(uid.as_str())),
        Ok(None) => true,
        Err(_) => false,
    };
    gone.then_some(run_ns)
}

/// Deletes the run-labelled objects of one kind (in namespace `only`, or
/// in any) whose run is gone; returns them, each with its run's namespace.
pub(crate) async fn sweep_kind<K>(ctx: &Ctx, only: Option<&str>, what: &str) -> Vec<(K, String)>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut swept = Vec::new();
    let api = match only {
        Some(ns) => Api::<K>::namespaced(ctx.client.clone(), ns),
        None => Api::<K>::all(ctx.client.clone()),
    };
    let list = match api.list(&ListParams::default().labels(RUN_LABEL)).await {
        Ok(list) => list,
        Err(e) => {
            // Runs clean up after themselves; the sweep only helps.
            tracing::warn!("start-up sweep: listing {what}s: {e}");
            return swept;
        }
    };
    for o in list.items {
        let ns = o.namespace().unwrap_or_default();
        let Some(run_ns) = run_gone(ctx, &o, Some(&ns)).await else {
            continue;
        };
        let api = Api::<K>::namespaced(ctx.client.clone(), &ns);
        let what = format!("{what} {ns}/{}", o.name_any());
        match delete(&api, &o.name_any(), &what).await {
            Ok(()) => swept.push((o, run_ns)),
            Err(e) => tracing::warn!("start-up sweep: {e}"),
        }
    }
    swept
}
