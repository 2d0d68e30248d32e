//! Group snapshots: the runs of one `spec.group` share their hooks and, where
//! the driver supports it, one VolumeGroupSnapshot; the first open run leads.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{BackupMethod, Phase, VolumeBackup};

use crate::api::{create, delete, kube_err, Error};
use crate::controller::backup::hooks::{frozen, snapshot_hooks};
use crate::controller::backup::run::{child_name, is_open, run_labels};
use crate::controller::context::Ctx;
use crate::controller::csi::VolumeSnapshot;
use crate::controller::csi::{
    choose_class, group_snapshot_state, snapshot_state, VolumeSnapshotSource, VolumeSnapshotSpec,
    IS_DEFAULT_GROUP_CLASS,
};
use crate::controller::csi::{
    group_snapshot_api, list_classes, pvc_driver, snapshot_class, GroupApi, SnapshotState,
};
use crate::controller::lifecycle::fail;
use crate::controller::lifecycle::fresh_status;
use crate::hooks::HookStage;
use crate::names::{label_value, object_name};
use crate::run::Stage;
use crate::time::remaining;

/// How often a run of a group looks at the others while it waits for them.
pub(crate) const GROUP_POLL: Duration = Duration::from_secs(2);

/// Where a run's group (`spec.group`) stands.
pub(crate) enum Group {
    /// Every run of the group was claimed, or ended at its claim: those
    /// claimed (ended ones included), by name. A run without a group is
    /// alone in it.
    Claimed(Vec<VolumeBackup>),
    /// Runs of the group are missing or not claimed yet: look again after
    /// this.
    Waiting(Duration),
    /// Still so after `--snapshot-timeout`: why.
    Incomplete(String),
}

/// The runs snapshotted at one instant with `vb`, as the API server has
/// them now.
pub(crate) async fn group(ctx: &Ctx, vb: &VolumeBackup) -> Result<Group, Error> {
    let Some(g) = &vb.spec.group else {
        return Ok(Group::Claimed(vec![vb.clone()]));
    };
    let ns = vb.namespace().unwrap_or_default();
    let runs: Vec<VolumeBackup> = Api::<VolumeBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!(
            "listing the VolumeBackups of group {:?} in {ns}",
            g.name
        )))?
        .items
        .into_iter()
        .filter(|r| {
            r.spec.method == BackupMethod::Snapshot
                && r.spec.group.as_ref().is_some_and(|o| o.name == g.name)
        })
        .collect();
    let claimed = runs
        .iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| s.phase != Phase::New))
        .count();
    if claimed < g.size as usize {
        let first = runs
            .iter()
            .filter_map(|r| r.meta().creation_timestamp.as_ref())
            .min_by_key(|t| t.0);
        let left = remaining(first, ctx.opts.snapshot_timeout);
        if left.is_zero() {
            return Ok(Group::Incomplete(format!(
                "group {:?} has {claimed} of its {} VolumeBackups in {ns} claimed after {}: create the missing ones with the same spec.group, or lower spec.group.size to the runs there are",
                g.name,
                g.size,
                humantime::format_duration(ctx.opts.snapshot_timeout)
            )));
        }
        return Ok(Group::Waiting(left.min(GROUP_POLL)));
    }
    let mut members: Vec<VolumeBackup> = runs
        .into_iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| s.pvc.is_some()))
        .collect();
    members.sort_by_key(ResourceExt::name_any);
    Ok(Group::Claimed(members))
}

/// What the leader read of one open run before step 2.
pub(crate) enum Member {
    /// Its VolumeSnapshot (or its group's) exists already: nothing to take.
    Taken,
    /// Its PVC (named) was deleted.
    PvcGone(String),
    /// Its PVC, and the VolumeSnapshotClass chosen for it or why none can be.
    Pvc {
        pvc: String,
        class: Result<String, String>,
    },
}

impl Member {
    /// Whether the run is snapshotted in this pass.
    fn due(&self) -> bool {
        matches!(self, Member::Pvc { class: Ok(_), .. })
    }
}

/// What the leader does in step 2, decided by [`plan_snapshots`].
pub(crate) struct SnapshotPlan {
    /// Runs that end now, alone, and why.
    pub(crate) fail: Vec<(VolumeBackup, String)>,
    /// The runs snapshotted at one instant, between their hooks.
    pub(crate) runs: Vec<VolumeBackup>,
    /// How they are snapshotted.
    pub(crate) take: Take,
}

/// How the runs of a [`SnapshotPlan`] are snapshotted.
pub(crate) enum Take {
    /// One VolumeGroupSnapshot of group `group`, of class `class`, that
    /// selects their PVCs by label.
    Group {
        api: Box<GroupApi>,
        class: String,
        group: crate::crd::RunGroup,
    },
    /// One VolumeSnapshot each: its PVC and class, in the order of `runs`.
    Each(Vec<(String, String)>),
}

/// Plans step 2 from what was read of each open run and, for the runs
/// due, whether one VolumeGroupSnapshot can take them
/// ([`group_snapshot_plan`]). A run whose PVC is gone or whose class cannot
/// be chosen ends alone; the others are snapshotted together: with one
/// VolumeGroupSnapshot when there are two or more and `grouped` says how,
/// else one VolumeSnapshot each.
pub(crate) fn plan_snapshots(
    reads: Vec<(VolumeBackup, Member)>,
    grouped: Option<(GroupApi, String)>,
) -> SnapshotPlan {
    let mut plan = SnapshotPlan {
        fail: Vec::new(),
        runs: Vec::new(),
        take: Take::Each(Vec::new()),
    };
    let mut each = Vec::new();
    for (r, member) in reads {
        match member {
            Member::Taken => {}
            Member::PvcGone(pvc) => {
                let ns = r.namespace().unwrap_or_default();
                let why = format!(
                    "PersistentVolumeClaim {ns}/{pvc} was deleted before it was snapshotted"
                );
                plan.fail.push((r, why));
            }
            Member::Pvc {
                class: Err(why), ..
            } => plan.fail.push((r, why)),
            Member::Pvc {
                pvc,
                class: Ok(class),
            } => {
                plan.runs.push(r);
                each.push((pvc, class));
            }
        }
    }
    let group = plan.runs.first().and_then(|r| r.spec.group.clone());
    plan.take = match (grouped, group) {
        (Some((api, class)), Some(group)) if plan.runs.len() > 1 => Take::Group {
            api: Box::new(api),
            class,
            group,
        },
        _ => Take::Each(each),
    };
    plan
}

/// What the leader reads of `r` for [`plan_snapshots`].
async fn read_member(ctx: &Ctx, r: &VolumeBackup) -> Result<Member, Error> {
    if !matches!(find_snapshot(ctx, r).await?, Found::Missing) {
        return Ok(Member::Taken);
    }
    let ns = r.namespace().unwrap_or_default();
    let pvc_name = r
        .status
        .as_ref()
        .and_then(|s| s.pvc.clone())
        .unwrap_or_default();
    let Some(pvc) = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&pvc_name)
        .await
        .map_err(kube_err(format!("reading PVC {ns}/{pvc_name}")))?
    else {
        return Ok(Member::PvcGone(pvc_name));
    };
    Ok(Member::Pvc {
        class: snapshot_class(&ctx.client, &pvc).await?,
        pvc: pvc_name,
    })
}

/// The leader's step 2: the pre-hooks of the running pods that use the PVCs
/// of the `open` runs, then at once a VolumeSnapshot for each run that has
/// none (after a restart, only those missing), or one VolumeGroupSnapshot
/// of them all. Planned by [`plan_snapshots`]; a failed pre-hook ends them
/// all.
pub(crate) async fn take_snapshots(ctx: &Ctx, open: &[VolumeBackup]) -> Result<(), Error> {
    let mut reads = Vec::with_capacity(open.len());
    for r in open {
        reads.push((r.clone(), read_member(ctx, r).await?));
    }
    let due: Vec<VolumeBackup> = reads
        .iter()
        .filter(|(_, m)| m.due())
        .map(|(r, _)| r.clone())
        .collect();
    let grouped = match due.first().and_then(|r| r.spec.group.as_ref()) {
        Some(g) if due.len() > 1 => group_snapshot_plan(ctx, g, &due).await?,
        _ => None,
    };
    let plan = plan_snapshots(reads, grouped);
    for (r, why) in plan.fail {
        fail(ctx, &r, why).await?;
    }
    let runs = plan.runs;
    if runs.is_empty() {
        return Ok(());
    }
    let grouped = matches!(plan.take, Take::Group { .. });
    if grouped {
        // The PVCs the VolumeGroupSnapshot selects, labelled before any hook.
        label_group(ctx, &runs, true).await?;
    }
    if let Err(m) = snapshot_hooks(ctx, &runs, HookStage::Pre).await? {
        if grouped {
            label_group(ctx, &runs, false).await?;
        }
        for r in &runs {
            fail(ctx, r, m.clone()).await?;
        }
        return Ok(());
    }
    match plan.take {
        Take::Group { api, class, group } => {
            create_group_snapshot(ctx, &runs, &api, &class, &group).await
        }
        Take::Each(each) => {
            for (r, (pvc, class)) in runs.iter().zip(each) {
                create_snapshot(ctx, r, pvc, class).await?;
            }
            Ok(())
        }
    }
}

/// Creates the VolumeGroupSnapshot of `runs` (their pre-hooks ran). When
/// it is refused the whole group fails now, as after a failed pre-hook: no
/// member's snapshot may be taken later, after the post-hooks.
async fn create_group_snapshot(
    ctx: &Ctx,
    runs: &[VolumeBackup],
    api: &GroupApi,
    class: &str,
    g: &crate::crd::RunGroup,
) -> Result<(), Error> {
    let ns = runs.first().and_then(|r| r.namespace()).unwrap_or_default();
    let name = group_snapshot_name(g);
    // Owned by every run: it goes when the last run is deleted.
    let owners: Vec<_> = runs
        .iter()
        .filter_map(|r| r.controller_owner_ref(&()))
        .map(|mut o| {
            o.controller = Some(false);
            o
        })
        .collect();
    let mut vgs = DynamicObject::new(&name, &api.snapshots).within(&ns);
    vgs.metadata.owner_references = Some(owners);
    vgs.data = json!({"spec": {
        "source": {"selector": {"matchLabels": {crate::names::GROUP_LABEL: label_value(&g.name)}}},
        "volumeGroupSnapshotClassName": class,
    }});
    let vgss = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &api.snapshots);
    match create(&vgss, &vgs, &format!("VolumeGroupSnapshot {ns}/{name}")).await {
        Ok(()) => {}
        Err(Error::Refused(m)) => {
            label_group(ctx, runs, false).await?;
            for r in runs {
                fail(ctx, r, m.clone()).await?;
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    tracing::info!(
        namespace = ns,
        group = g.name,
        class,
        "VolumeGroupSnapshot {name} created"
    );
    Ok(())
}

/// Creates the VolumeSnapshot of run `r` (its pre-hooks ran). When it is
/// refused this run fails; the others' snapshots are taken now.
async fn create_snapshot(
    ctx: &Ctx,
    r: &VolumeBackup,
    pvc: String,
    class: String,
) -> Result<(), Error> {
    let ns = r.namespace().unwrap_or_default();
    let child = child_name(r);
    let vs = VolumeSnapshot {
        metadata: kube::api::ObjectMeta {
            name: Some(child.clone()),
            namespace: Some(ns.clone()),
            labels: Some(run_labels(r)),
            owner_references: r.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: Some(pvc),
                volume_snapshot_content_name: None,
            },
            volume_snapshot_class_name: Some(class.clone()),
        },
        status: None,
    };
    let snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    match create(&snaps, &vs, &format!("VolumeSnapshot {ns}/{child}")).await {
        Ok(()) => {}
        Err(Error::Refused(m)) => {
            fail(ctx, r, m).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    tracing::info!(
        namespace = ns,
        run = r.name_any(),
        class,
        "VolumeSnapshot {child} created"
    );
    Ok(())
}

/// The end of step 2, for a run whose VolumeSnapshot is ready: once every
/// open run of its group has a ready (or failed) one, the leader runs the
/// post-hooks; the other runs wait for them when their pods are frozen.
/// `Some(action)` while this run waits, or when it ended.
pub(crate) async fn thaw(ctx: &Ctx, vb: &VolumeBackup) -> Result<Option<Action>, Error> {
    let open = match group(ctx, vb).await? {
        Group::Claimed(members) => members.into_iter().filter(is_open).collect::<Vec<_>>(),
        Group::Waiting(d) => return Ok(Some(Action::requeue(d))),
        Group::Incomplete(m) => {
            fail(ctx, vb, m).await?;
            return Ok(Some(Action::await_change()));
        }
    };
    if let Some(leader) = open.first().filter(|l| l.name_any() != vb.name_any()) {
        let hooks = fresh_status(ctx, vb).await?.unwrap_or_default().hooks;
        // The leader moves on to its clone only once the post-hooks ran, or
        // when its pods had none to run (then none is recorded).
        let leader_on = leader.status.as_ref().and_then(Stage::of) == Some(Stage::Moving);
        return Ok((frozen(&hooks) && !leader_on).then(|| Action::requeue(GROUP_POLL)));
    }
    // No open member (this run was canceled, or left its group, since the
    // event): nothing to thaw; the next pass sees where it stands.
    let Some(followers) = followers(&open) else {
        return Ok(Some(Action::requeue(Duration::ZERO)));
    };
    // After a restart, the snapshots not taken yet.
    take_snapshots(ctx, &open).await?;
    for r in followers {
        let pending = match find_snapshot(ctx, r).await? {
            Found::Snapshot(vs) => snapshot_state(&vs) == SnapshotState::Pending,
            Found::Missing | Found::Wait(_) => true,
            // It ends on its own.
            Found::Failed(_) => false,
        };
        if pending {
            return Ok(Some(Action::requeue(GROUP_POLL)));
        }
    }
    if let Err(m) = snapshot_hooks(ctx, &open, HookStage::Post).await? {
        for r in &open {
            fail(ctx, r, m.clone()).await?;
        }
        return Ok(Some(Action::await_change()));
    }
    Ok(None)
}

/// The open members of a group after its leader (the first); `None` when
/// none is open (a list freshly read can be empty).
pub(crate) fn followers<T>(open: &[T]) -> Option<&[T]> {
    open.get(1..)
}

/// A run's VolumeSnapshot, as far as it is.
pub(crate) enum Found {
    /// Its own (named after the run), or its member of the group's
    /// VolumeGroupSnapshot.
    Snapshot(Box<VolumeSnapshot>),
    /// None taken yet.
    Missing,
    /// The group's VolumeGroupSnapshot is not ready yet: look again after
    /// this.
    Wait(Duration),
    /// The group's VolumeGroupSnapshot failed, was not ready in time, or has
    /// no snapshot of the run's PVC: why.
    Failed(String),
}

pub(crate) async fn find_snapshot(ctx: &Ctx, r: &VolumeBackup) -> Result<Found, Error> {
    let ns = r.namespace().unwrap_or_default();
    let child = child_name(r);
    let snaps: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(vs) = snaps
        .get_opt(&child)
        .await
        .map_err(kube_err(format!("reading VolumeSnapshot {ns}/{child}")))?
    {
        return Ok(Found::Snapshot(Box::new(vs)));
    }
    let Some(g) = &r.spec.group else {
        return Ok(Found::Missing);
    };
    let Some(api) = group_snapshot_api(&ctx.client, &ctx.group_api).await? else {
        return Ok(Found::Missing);
    };
    let name = group_snapshot_name(g);
    let Some(vgs) = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &api.snapshots)
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading VolumeGroupSnapshot {ns}/{name}")))?
    else {
        return Ok(Found::Missing);
    };
    Ok(match group_snapshot_state(&vgs) {
        SnapshotState::Failed(m) => {
            Found::Failed(format!("VolumeGroupSnapshot {ns}/{name} failed: {m}"))
        }
        SnapshotState::Pending => {
            let left = remaining(
                vgs.metadata.creation_timestamp.as_ref(),
                ctx.opts.snapshot_timeout,
            );
            if left.is_zero() {
                Found::Failed(format!(
                    "VolumeGroupSnapshot {ns}/{name} did not become ready within {}; check the CSI driver and the snapshot controller (kubectl -n {ns} describe volumegroupsnapshot {name})",
                    humantime::format_duration(ctx.opts.snapshot_timeout)
                ))
            } else {
                Found::Wait(left.min(GROUP_POLL))
            }
        }
        SnapshotState::Ready(_) => {
            let pvc = r.status.as_ref().and_then(|s| s.pvc.clone());
            let member = snaps
                .list(&ListParams::default())
                .await
                .map_err(kube_err(format!("listing VolumeSnapshots in {ns}")))?
                .items
                .into_iter()
                .find(|vs| {
                    let of_group = vs
                        .status
                        .as_ref()
                        .and_then(|s| s.volume_group_snapshot_name.as_ref())
                        == Some(&name)
                        || vs
                            .owner_references()
                            .iter()
                            .any(|o| o.kind == "VolumeGroupSnapshot" && o.name == name);
                    of_group && vs.spec.source.persistent_volume_claim_name == pvc
                });
            match member {
                Some(vs) => Found::Snapshot(Box::new(vs)),
                None => Found::Failed(format!(
                    "VolumeGroupSnapshot {ns}/{name} is ready but holds no VolumeSnapshot of PVC {}",
                    pvc.unwrap_or_default()
                )),
            }
        }
    })
}

/// The name of a group's VolumeGroupSnapshot.
pub(crate) fn group_snapshot_name(g: &crate::crd::RunGroup) -> String {
    object_name(&["coffer", &g.name])
}

/// Whether the group `runs` is snapshotted with one VolumeGroupSnapshot:
/// when the cluster serves the API and their PVCs are on one CSI driver
/// that has a VolumeGroupSnapshotClass chosen as for VolumeSnapshots (the
/// one labelled `backup.coffer.dev/default`, else the driver's default).
/// Otherwise their VolumeSnapshots are taken one by one, between the same
/// hooks.
pub(crate) async fn group_snapshot_plan(
    ctx: &Ctx,
    g: &crate::crd::RunGroup,
    runs: &[VolumeBackup],
) -> Result<Option<(GroupApi, String)>, Error> {
    let Some(api) = group_snapshot_api(&ctx.client, &ctx.group_api).await? else {
        return Ok(None);
    };
    let mut drivers = BTreeSet::new();
    for r in runs {
        let ns = r.namespace().unwrap_or_default();
        let pvc = r.status.as_ref().and_then(|s| s.pvc.clone());
        let pvc = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&pvc.unwrap_or_default())
            .await
            .map_err(kube_err(format!(
                "reading the PVC of VolumeBackup {ns}/{}",
                r.name_any()
            )))?;
        drivers.insert(match pvc {
            Some(p) => pvc_driver(&ctx.client, &p).await?,
            None => None,
        });
    }
    let driver = match (drivers.len(), drivers.pop_first()) {
        (1, Some(Some(d))) => d,
        _ => return Ok(None),
    };
    let classes = list_classes(
        &ctx.client,
        &api.classes,
        "VolumeGroupSnapshotClasses",
        IS_DEFAULT_GROUP_CLASS,
    )
    .await?;
    Ok(choose_class(&g.name, None, &driver, &classes)
        .ok()
        .map(|class| (api, class)))
}

/// Sets (or removes) [`crate::names::GROUP_LABEL`] on the PVCs of `runs`.
pub(crate) async fn label_group(ctx: &Ctx, runs: &[VolumeBackup], set: bool) -> Result<(), Error> {
    for r in runs {
        let (Some(g), Some(pvc)) = (
            r.spec.group.as_ref(),
            r.status.as_ref().and_then(|s| s.pvc.clone()),
        ) else {
            continue;
        };
        let ns = r.namespace().unwrap_or_default();
        let value = set.then(|| label_value(&g.name));
        let patch = json!({"metadata": {"labels": {crate::names::GROUP_LABEL: value}}});
        match Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .patch(&pvc, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 && !set => {}
            Err(e) => return Err(kube_err(format!("labelling PVC {ns}/{pvc}"))(e)),
        }
    }
    Ok(())
}

/// The last step of a run of a group taken by a VolumeGroupSnapshot: once
/// every run of the group has ended and has no mover pod, clone or clone
/// volume left, the VolumeGroupSnapshot is deleted (its VolumeSnapshots go
/// with it), or kept when a run retains its snapshot, and the PVCs lose
/// their group label. Until then the run waits. Returns whether it is done.
pub(crate) async fn group_cleanup(
    ctx: &Ctx,
    vb: &VolumeBackup,
    g: &crate::crd::RunGroup,
) -> Result<bool, Error> {
    let Some(api) = group_snapshot_api(&ctx.client, &ctx.group_api).await? else {
        return Ok(true);
    };
    let ns = vb.namespace().unwrap_or_default();
    let name = group_snapshot_name(g);
    let vgss = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &api.snapshots);
    let Some(vgs) = vgss
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading VolumeGroupSnapshot {ns}/{name}")))?
    else {
        return Ok(true);
    };
    let Group::Claimed(runs) = group(ctx, vb).await? else {
        return Ok(true);
    };
    let clones: BTreeSet<String> = runs.iter().map(child_name).collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for r in &runs {
        let c = child_name(r);
        let busy = !r.status.as_ref().is_some_and(|s| s.phase.is_final())
            || pods
                .get_opt(&c)
                .await
                .map_err(kube_err(format!("reading pod {ns}/{c}")))?
                .is_some()
            || pvcs
                .get_opt(&c)
                .await
                .map_err(kube_err(format!("reading PVC {ns}/{c}")))?
                .is_some();
        if busy {
            return Ok(false);
        }
    }
    let clone_volumes = Api::<PersistentVolume>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing PersistentVolumes"))?
        .items
        .into_iter()
        .any(|pv| {
            pv.spec.and_then(|s| s.claim_ref).is_some_and(|r| {
                r.namespace.as_deref() == Some(ns.as_str())
                    && r.name.as_ref().is_some_and(|n| clones.contains(n))
            })
        });
    if clone_volumes {
        return Ok(false);
    }
    label_group(ctx, &runs, false).await?;
    if runs.iter().any(|r| r.spec.retain_snapshot) {
        if vgs
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| !o.is_empty())
        {
            vgss.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
            )
            .await
            .map_err(kube_err(format!(
                "releasing VolumeGroupSnapshot {ns}/{name}"
            )))?;
        }
        return Ok(true);
    }
    if vgs.metadata.deletion_timestamp.is_none() {
        delete(&vgss, &name, &format!("VolumeGroupSnapshot {ns}/{name}")).await?;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `thaw` sliced `&open[1..]` from a group it had just listed, which is
    /// empty once the run was canceled or left its group meanwhile: the
    /// controller panicked (and its standby after it).
    #[test]
    fn a_group_with_no_open_member_has_no_followers_and_no_panic() {
        assert_eq!(followers::<&str>(&[]), None);
        assert_eq!(followers(&["leader"]), Some(&[][..]));
        assert_eq!(followers(&["leader", "b", "c"]), Some(&["b", "c"][..]));
    }

    fn run(name: &str, group: Option<&str>) -> VolumeBackup {
        serde_json::from_value(json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"method": "Snapshot", "pvc": format!("data-{name}"), "repository": "r",
                     "group": group.map(|g| json!({"name": g, "size": 3}))},
        }))
        .unwrap()
    }

    fn pvc(name: &str, class: Result<&str, &str>) -> Member {
        Member::Pvc {
            pvc: format!("data-{name}"),
            class: class.map(String::from).map_err(String::from),
        }
    }

    fn group_api() -> (GroupApi, String) {
        let gvk = kube::api::GroupVersionKind::gvk(
            "groupsnapshot.storage.k8s.io",
            "v1beta1",
            "VolumeGroupSnapshot",
        );
        let class_gvk = kube::api::GroupVersionKind::gvk(
            "groupsnapshot.storage.k8s.io",
            "v1beta1",
            "VolumeGroupSnapshotClass",
        );
        let api = GroupApi {
            snapshots: kube::api::ApiResource::from_gvk(&gvk),
            classes: kube::api::ApiResource::from_gvk(&class_gvk),
        };
        (api, "group-class".into())
    }

    fn names(runs: &[VolumeBackup]) -> Vec<String> {
        runs.iter().map(ResourceExt::name_any).collect()
    }

    #[test]
    fn a_run_whose_pvc_went_or_has_no_class_ends_alone_and_the_others_are_snapshotted() {
        let reads = vec![
            (run("a", Some("g")), pvc("a", Ok("csi-snap"))),
            (run("b", Some("g")), Member::PvcGone("data-b".into())),
            (
                run("c", Some("g")),
                pvc("c", Err("no VolumeSnapshotClass for driver x")),
            ),
            (run("d", Some("g")), Member::Taken),
            (run("e", Some("g")), pvc("e", Ok("csi-snap"))),
        ];
        let plan = plan_snapshots(reads, None);
        let failed: Vec<(String, String)> = plan
            .fail
            .iter()
            .map(|(r, why)| (r.name_any(), why.clone()))
            .collect();
        assert_eq!(
            failed,
            [
                (
                    "b".to_string(),
                    "PersistentVolumeClaim shop/data-b was deleted before it was snapshotted"
                        .to_string()
                ),
                (
                    "c".to_string(),
                    "no VolumeSnapshotClass for driver x".to_string()
                ),
            ]
        );
        assert_eq!(names(&plan.runs), ["a", "e"]);
        match plan.take {
            Take::Each(each) => assert_eq!(
                each,
                [
                    ("data-a".to_string(), "csi-snap".to_string()),
                    ("data-e".to_string(), "csi-snap".to_string())
                ]
            ),
            Take::Group { .. } => panic!("no group class was offered"),
        }
    }

    #[test]
    fn a_group_is_one_volume_group_snapshot_only_with_two_runs_and_a_class() {
        let two = || {
            vec![
                (run("a", Some("g")), pvc("a", Ok("csi-snap"))),
                (run("b", Some("g")), pvc("b", Ok("csi-snap"))),
            ]
        };
        match plan_snapshots(two(), Some(group_api())).take {
            Take::Group { class, group, .. } => {
                assert_eq!((class.as_str(), group.name.as_str()), ("group-class", "g"))
            }
            Take::Each(_) => panic!("two runs of a group with a class are one group snapshot"),
        }
        // One run left (the other's PVC went): its own VolumeSnapshot.
        let one = vec![
            (run("a", Some("g")), pvc("a", Ok("csi-snap"))),
            (run("b", Some("g")), Member::PvcGone("data-b".into())),
        ];
        let plan = plan_snapshots(one, Some(group_api()));
        assert_eq!(names(&plan.runs), ["a"]);
        assert!(matches!(plan.take, Take::Each(ref e) if e.len() == 1));
        // Runs without a group are never grouped.
        let alone = vec![
            (run("a", None), pvc("a", Ok("csi-snap"))),
            (run("b", None), pvc("b", Ok("csi-snap"))),
        ];
        assert!(matches!(
            plan_snapshots(alone, Some(group_api())).take,
            Take::Each(ref e) if e.len() == 2
        ));
        // Nothing due: nothing to take, nothing failed.
        let plan = plan_snapshots(vec![(run("a", Some("g")), Member::Taken)], None);
        assert!(plan.fail.is_empty() && plan.runs.is_empty());
    }
}
