//! The controller's ApplicationBackups: a namespace backed up as an
//! application, one step per pass.
//!
//! 1. **claim**: check the repository, add the cleanup finalizer, mark the
//!    backup InProgress (stage `Snapshotting`);
//! 2. **volumes**: one VolumeBackup per claim of the namespace (those the
//!    selector picks; none with `volumeData: false`), owned by the backup
//!    and tagged with it: method `Snapshot` where the claim's CSI driver
//!    has a VolumeSnapshotClass, all of them one group (their pods'
//!    pre-hooks, every snapshot at one instant, then the post-hooks, as a
//!    schedule's workload has them); otherwise method `Filesystem`, by the
//!    node agent, through a running pod that mounts the claim. The backup
//!    waits until every one has ended and records each one's snapshot;
//! 3. **capture** (stage `Capturing`): a pod in the namespace, as
//!    `spec.serviceAccountName` (the tenant's account, never coffer's),
//!    runs `coffer-agent mover capture`: every object that account can
//!    list, into one snapshot whose `application.json` names each claim's
//!    data snapshot. A per-backup Role lets that account write this
//!    backup's status and read the repository's Secrets, nothing else;
//! 4. **end**: Completed when every volume completed and nothing was
//!    skipped; PartiallyFailed, saying what, when a volume did not complete
//!    or the account could not read something; Failed when the capture
//!    failed.
//!
//! Why the volumes first: the capture then records each claim's data
//! snapshot, so the objects' snapshot alone leads a restore to all the
//! data, from the bucket, in a cluster that never saw this backup; and the
//! application's hooks freeze it only for the instant of its snapshots,
//! not for the capture.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    ApplicationBackup, ApplicationBackupStatus, ApplicationVolume, BackupRepository, Phase,
    RunStatus, VolumeBackup,
};

use crate::api::{create, kube_err, Error};
use crate::controller::context::Ctx;
use crate::controller::lifecycle::{self, ControllerRun, Triage};
use crate::controller::movers::pod::local_repository_dir;
use crate::controller::movers::{common_args, create_granted, SecretsOf, StatusOf};
use crate::controller::tenant_pods::{self, Followed};
use crate::mover::args::{CaptureArgs, MoverArgs};
use crate::names::{application_tag, label_value, managed_by, object_name, short_hash};
use crate::run::Stage;

pub use crate::names::APPLICATION_LABEL;

pub use crate::names::APPLICATION_RESTORE_LABEL as RESTORE_LABEL;

/// Where the capture pod writes the objects before they are backed up: a
/// memory-backed emptyDir, so that Secrets never reach the node's disk.
pub const CAPTURE_DIR: &str = "/tmp";

/// Reconciles one ApplicationBackup.
pub(crate) async fn reconcile(ab: Arc<ApplicationBackup>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    lifecycle::reconcile(ab, ctx).await
}

impl ControllerRun for ApplicationBackup {
    const METRIC: &'static str = "application-backup";
    const FIRST_STAGE: Stage = Stage::Snapshotting;

    fn triage(&self) -> (Triage, Option<String>) {
        (Triage::Ours, None)
    }

    fn cancel_requested(&self) -> bool {
        self.spec.cancel
    }

    async fn claim(&self, ctx: &Ctx) -> Result<Action, Error> {
        let Some(repo) = repository(ctx, self).await? else {
            return Ok(Action::await_change());
        };
        // A repository the administrator does not allow fails it now.
        let ns = self.namespace().unwrap_or_default();
        common_args(ctx, &ns, &self.name_any(), &repo)?;
        lifecycle::claim(
            ctx,
            self,
            None,
            None,
            format!("backing up namespace {ns} as an application"),
        )
        .await
    }

    async fn advance(&self, ctx: &Ctx, _st: &RunStatus) -> Result<Action, Error> {
        let status = self.status.clone().unwrap_or_default();
        match Stage::of(&status.run) {
            Some(Stage::Capturing) => capture(ctx, self, &status).await,
            _ => match &status.volumes {
                None => plan(ctx, self).await,
                Some(volumes) => wait_volumes(ctx, self, volumes).await,
            },
        }
    }

    async fn cleanup(&self, ctx: &Ctx, st: &RunStatus) -> Result<bool, Error> {
        let ns = self.namespace().unwrap_or_default();
        // Its volumes' runs end with it when it did not complete.
        if st.phase != Phase::Completed && st.phase != Phase::PartiallyFailed {
            let runs: Api<VolumeBackup> = Api::namespaced(ctx.client.clone(), &ns);
            for vb in owned_runs(ctx, self).await? {
                if vb.status.as_ref().is_some_and(|s| s.phase.is_final()) || vb.spec.cancel {
                    continue;
                }
                let what = format!("VolumeBackup {ns}/{}", vb.name_any());
                match runs
                    .patch(
                        &vb.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"cancel": true}})),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(kube_err(format!("canceling {what}"))(e)),
                }
            }
        }
        tenant_pods::remove(ctx, &ns, &capture_pod_name(self)).await
    }
}

/// The capture pod's name (and its Role's).
fn capture_pod_name(ab: &ApplicationBackup) -> String {
    object_name(&["coffer-capture", &ab.name_any()])
}

/// The VolumeBackup of `pvc` for backup `ab`.
fn volume_run_name(ab: &ApplicationBackup, pvc: &str) -> String {
    object_name(&[&ab.name_any(), pvc])
}

fn labels(ab: &ApplicationBackup) -> BTreeMap<String, String> {
    BTreeMap::from([
        (APPLICATION_LABEL.to_string(), label_value(&ab.name_any())),
        managed_by(),
    ])
}

/// The BackupRepository it names; a missing one fails it.
async fn repository(ctx: &Ctx, ab: &ApplicationBackup) -> Result<Option<BackupRepository>, Error> {
    lifecycle::repository_or_fail(ctx, ab, &ab.spec.repository).await
}

/// Whether `ab` owns VolumeBackup `vb`.
fn owned_by(vb: &VolumeBackup, ab: &ApplicationBackup) -> bool {
    let uid = ab.uid().unwrap_or_default();
    vb.owner_references().iter().any(|o| o.uid == uid)
}

/// The VolumeBackups this backup owns.
async fn owned_runs(ctx: &Ctx, ab: &ApplicationBackup) -> Result<Vec<VolumeBackup>, Error> {
    let ns = ab.namespace().unwrap_or_default();
    let selector = format!("{APPLICATION_LABEL}={}", label_value(&ab.name_any()));
    Ok(Api::<VolumeBackup>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!("listing the VolumeBackups of {ns}")))?
        .items
        .into_iter()
        .filter(|vb| owned_by(vb, ab))
        .collect())
}

/// How one claim's data is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeMethod {
    /// Through a CSI snapshot, by a mover.
    Snapshot,
    /// In place, by the node agent, through this pod's volume.
    Filesystem {
        /// The pod.
        pod: String,
        /// The claim's volume in it.
        volume: String,
    },
}

/// A running pod of `pods` that mounts claim `pvc`, with the volume's
/// name: the node agent's way to a claim no snapshot class serves.
pub fn pod_mounting(pods: &[Pod], pvc: &str) -> Option<(String, String)> {
    pods.iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(|p| {
            let v = p.spec.as_ref()?.volumes.iter().flatten().find(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == pvc)
            })?;
            Some((p.name_any(), v.name.clone()))
        })
}

/// The VolumeBackup that reads claim `pvc` for `ab`: owned by it, labelled
/// and tagged with it; those by snapshot are one group of `group_size`.
pub fn volume_run(
    ab: &ApplicationBackup,
    pvc: &str,
    method: &VolumeMethod,
    group_size: u32,
) -> VolumeBackup {
    let mut spec = json!({
        "repository": ab.spec.repository,
        "tags": std::iter::once(application_tag(&ab.name_any()))
            .chain(ab.spec.tags.iter().cloned())
            .collect::<Vec<_>>(),
    });
    match method {
        VolumeMethod::Snapshot => {
            spec["method"] = json!("Snapshot");
            spec["pvc"] = json!(pvc);
            if group_size > 1 {
                spec["group"] =
                    json!({"name": format!("application-{}", ab.name_any()), "size": group_size});
            }
        }
        VolumeMethod::Filesystem { pod, volume } => {
            spec["method"] = json!("Filesystem");
            spec["pod"] = json!(pod);
            spec["volume"] = json!(volume);
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "coffer.dev/v1alpha1",
        "kind": "VolumeBackup",
        "metadata": {
            "name": volume_run_name(ab, pvc),
            "namespace": ab.namespace(),
            "labels": labels(ab),
            "ownerReferences": ab.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
        },
        "spec": spec,
    }))
    .expect("a VolumeBackup")
}

/// Step 2a: the claims in scope, each with its VolumeBackup, created and
/// recorded in the status.
async fn plan(ctx: &Ctx, ab: &ApplicationBackup) -> Result<Action, Error> {
    let ns = ab.namespace().unwrap_or_default();
    let mut claims: Vec<PersistentVolumeClaim> = Vec::new();
    if ab.spec.volume_data {
        let mut params = ListParams::default();
        if let Some(s) = ab.spec.selector.as_ref().map(|s| s.to_query()) {
            params = params.labels(&s);
        }
        claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .list(&params)
            .await
            .map_err(kube_err(format!("listing the PVCs of {ns}")))?
            .items
            .into_iter()
            // Only a bound claim has data; a pending one is captured as an
            // object and made again empty.
            .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .collect();
    }
    let pods = if claims.is_empty() {
        Vec::new()
    } else {
        Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(kube_err(format!("listing the pods of {ns}")))?
            .items
    };
    let mut methods = Vec::new();
    for c in &claims {
        let name = c.name_any();
        let method = match crate::controller::csi::snapshot_class(&ctx.client, c).await? {
            Ok(_) => VolumeMethod::Snapshot,
            Err(no_class) => match pod_mounting(&pods, &name) {
                Some((pod, volume)) => VolumeMethod::Filesystem { pod, volume },
                // Its run fails saying why; the backup is PartiallyFailed.
                None => {
                    tracing::info!(namespace = ns, pvc = name, "{no_class}");
                    VolumeMethod::Snapshot
                }
            },
        };
        methods.push((name, method));
    }
    let group = methods
        .iter()
        .filter(|(_, m)| *m == VolumeMethod::Snapshot)
        .count() as u32;
    let runs: Api<VolumeBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let mut volumes = Vec::new();
    for (pvc, method) in &methods {
        let mut vb = volume_run(ab, pvc, method, group);
        let base = vb.name_any();
        // `<backup>-<claim>` can be another's (backup `a` of claim `b-c`,
        // backup `a-b` of claim `c`): never adopted, another name instead.
        // Checked after the create (which takes "exists" for done), so that
        // two backups planning at once cannot both take it.
        let hashed = object_name(&[&base, &short_hash(&ab.uid().unwrap_or_default())]);
        let mut name = String::new();
        for candidate in [base, hashed] {
            vb.metadata.name = Some(candidate.clone());
            let what = format!("VolumeBackup {ns}/{candidate}");
            create(&runs, &vb, &what).await?;
            let ours = runs
                .get_opt(&candidate)
                .await
                .map_err(kube_err(format!("reading {what}")))?
                .is_some_and(|made| owned_by(&made, ab));
            if ours {
                name = candidate;
                break;
            }
        }
        if name.is_empty() {
            let why = format!(
                "the names of claim {pvc}'s VolumeBackup are taken by other runs; delete them \
                 or name this backup otherwise"
            );
            lifecycle::fail(ctx, ab, why).await?;
            return Ok(Action::await_change());
        }
        volumes.push(ApplicationVolume {
            pvc: pvc.clone(),
            volume_backup: name,
            ..Default::default()
        });
    }
    let count = volumes.len() as u32;
    write(
        ctx,
        ab,
        json!({"volumes": volumes, "volumeCount": count}),
        true,
    )
    .await?;
    Ok(Action::requeue(Duration::ZERO))
}

/// A merge patch of `fields` into `ab`'s status; `at_version`: only if it
/// has not changed since this pass read it.
async fn write(
    ctx: &Ctx,
    ab: &ApplicationBackup,
    fields: serde_json::Value,
    at_version: bool,
) -> Result<(), Error> {
    let ns = ab.namespace().unwrap_or_default();
    let name = ab.name_any();
    crate::report::patch_status::<ApplicationBackup>(
        &ctx.client,
        &ns,
        &name,
        fields,
        at_version.then(|| ab.resource_version()).flatten(),
    )
    .await
    .map_err(kube_err(format!(
        "writing the status of ApplicationBackup {ns}/{name}"
    )))?;
    Ok(())
}

/// What the status says of each volume once its run ended.
pub fn volume_results(
    volumes: &[ApplicationVolume],
    runs: &[VolumeBackup],
) -> Vec<ApplicationVolume> {
    volumes
        .iter()
        .map(|v| {
            let mut v = v.clone();
            match runs.iter().find(|r| r.name_any() == v.volume_backup) {
                Some(r) => {
                    let st = r.status.clone().unwrap_or_default();
                    v.phase = Some(st.phase);
                    v.snapshot_id = st.snapshot_id;
                    v.bytes = st.progress.map(|p| p.bytes_done);
                    v.message = st.message;
                }
                None => {
                    v.phase = Some(Phase::Failed);
                    v.message = Some(format!(
                        "VolumeBackup {} is not this backup's: it was deleted before it ended, or another object has its name (delete that one, or name this backup otherwise)",
                        v.volume_backup
                    ));
                }
            }
            v
        })
        .collect()
}

/// Step 2b: wait until every volume's run has ended; then record their
/// results and go on to the capture.
async fn wait_volumes(
    ctx: &Ctx,
    ab: &ApplicationBackup,
    volumes: &[ApplicationVolume],
) -> Result<Action, Error> {
    let runs = owned_runs(ctx, ab).await?;
    let open = volumes.iter().any(|v| {
        runs.iter()
            .find(|r| r.name_any() == v.volume_backup)
            .is_some_and(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_final()))
    });
    if open {
        return Ok(Action::await_change());
    }
    let results = volume_results(volumes, &runs);
    write(
        ctx,
        ab,
        json!({"volumes": results, "stage": Stage::Capturing.as_str()}),
        true,
    )
    .await?;
    Ok(Action::requeue(Duration::ZERO))
}

/// A pod of coffer's in a tenant's namespace, as the tenant's account
/// `account`: unprivileged (Pod Security `restricted`: non-root, no
/// capability, no privilege escalation, the runtime's seccomp profile, a
/// read-only root), its work directory in memory. Only a repository in a
/// node's directory adds a hostPath volume, which `restricted` refuses: use
/// an object store for application backups in such namespaces.
pub struct TenantPod<'a> {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its owner (the run it works for).
    pub owner: Option<OwnerReference>,
    /// The tenant's ServiceAccount it runs as.
    pub account: &'a str,
    /// The image holding `coffer-agent`.
    pub image: &'a str,
    /// The Secrets the image is pulled with.
    pub pull_secrets: &'a [String],
    /// Memory limit.
    pub memory: &'a str,
    /// `coffer-agent` arguments.
    pub args: Vec<String>,
    /// A local repository's directory, mounted from the node.
    pub repository_dir: Option<&'a str>,
}

/// The pod [`TenantPod`] describes.
pub fn tenant_pod(t: &TenantPod) -> Pod {
    let mut volumes = vec![json!({"name": "work", "emptyDir": {"medium": "Memory"}})];
    let mut mounts = vec![json!({"name": "work", "mountPath": CAPTURE_DIR})];
    if let Some(dir) = t.repository_dir {
        volumes.push(json!({"name": "repository", "hostPath": {"path": dir, "type": "Directory"}}));
        mounts.push(json!({"name": "repository", "mountPath": dir}));
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": t.name,
            "namespace": t.namespace,
            "labels": t.labels,
            "ownerReferences": t.owner.iter().collect::<Vec<_>>(),
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": t.account,
            "automountServiceAccountToken": true,
            "imagePullSecrets": t.pull_secrets.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "coffer",
                "image": t.image,
                "args": t.args,
                "volumeMounts": mounts,
                "resources": {"requests": {"memory": "128Mi"}, "limits": {"memory": t.memory}},
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "volumes": volumes,
        }
    }))
    .expect("a pod")
}

/// The capture pod: `coffer-agent mover capture` as the backup's account.
pub fn capture_pod(
    ab: &ApplicationBackup,
    image: &str,
    pull_secrets: &[String],
    memory: &str,
    args: Vec<String>,
    repository_dir: Option<&str>,
) -> Pod {
    tenant_pod(&TenantPod {
        name: capture_pod_name(ab),
        namespace: ab.namespace().unwrap_or_default(),
        labels: labels(ab),
        owner: ab.controller_owner_ref(&()),
        account: &ab.spec.service_account_name,
        image,
        pull_secrets,
        memory,
        args,
        repository_dir,
    })
}

/// Step 3: the capture pod, made once, followed to its end; then the end.
async fn capture(
    ctx: &Ctx,
    ab: &ApplicationBackup,
    status: &ApplicationBackupStatus,
) -> Result<Action, Error> {
    let ns = ab.namespace().unwrap_or_default();
    let name = capture_pod_name(ab);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod = pods
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading pod {ns}/{name}")))?;
    let Some(pod) = pod else {
        if status.run.snapshot_id.is_some() {
            return conclude(ctx, ab).await;
        }
        let Some(repo) = repository(ctx, ab).await? else {
            return Ok(Action::await_change());
        };
        let volumes = status.volumes.clone().unwrap_or_default();
        let args = MoverArgs::Capture(Box::new(CaptureArgs {
            common: common_args(ctx, &ns, &ab.name_any(), &repo)?,
            include: ab.spec.included_resources.clone(),
            exclude: ab.spec.excluded_resources.clone(),
            include_recreated: ab.spec.include_recreated,
            selector: ab.spec.selector.as_ref().map(|s| s.to_query()),
            work_dir: CAPTURE_DIR.into(),
            cluster: ctx.opts.cluster.clone(),
            tags: ab.spec.tags.clone(),
            volumes: volumes
                .iter()
                .filter_map(|v| Some((v.pvc.clone(), v.snapshot_id.clone()?)))
                .collect(),
        }))
        .to_argv();
        let pod = capture_pod(
            ab,
            &ctx.opts.mover_image,
            &ctx.opts.mover_pull_secrets,
            &ctx.opts.mover_memory,
            args,
            local_repository_dir(&repo.spec.url),
        );
        create_granted(
            ctx,
            &pod,
            &ab.spec.service_account_name,
            &StatusOf::of(ab),
            &SecretsOf::of(&[&repo]),
            Vec::new(),
        )
        .await
        .map_err(tenant_pods::refused_pod)?;
        return Ok(Action::await_change());
    };
    let account = &ab.spec.service_account_name;
    match tenant_pods::follow(ctx, ab, &pod, account, "read what is captured").await? {
        Followed::Done(action) => Ok(action),
        // The capture writes its result before it exits.
        Followed::Exited if fresh(ctx, ab).await?.run.snapshot_id.is_some() => {
            conclude(ctx, ab).await
        }
        Followed::Exited => tenant_pods::exited_silently(ctx, ab, &name).await,
    }
}

/// Its status as the API server has it now.
async fn fresh(ctx: &Ctx, ab: &ApplicationBackup) -> Result<ApplicationBackupStatus, Error> {
    Ok(tenant_pods::fresh(ctx, ab)
        .await?
        .status
        .unwrap_or_default())
}

/// How a backup whose capture wrote its snapshot ended: Completed, or
/// PartiallyFailed naming each volume that did not complete and each
/// resource the account could not read.
pub fn outcome(status: &ApplicationBackupStatus) -> (Phase, Option<String>) {
    let mut problems = Vec::new();
    for v in status.volumes.iter().flatten() {
        if v.phase != Some(Phase::Completed) {
            let phase = v.phase.map(Phase::as_str).unwrap_or("not ended");
            let mut s = format!("PVC {} ({}): {phase}", v.pvc, v.volume_backup);
            if let Some(m) = &v.message {
                s.push_str(&format!(": {m}"));
            }
            problems.push(s);
        }
    }
    if let Some(o) = &status.objects {
        let n = o.skipped_count.unwrap_or(o.skipped.len() as u64);
        if n > 0 {
            let names: Vec<&str> = o.skipped.iter().map(|s| s.resource.as_str()).collect();
            let first = o.skipped.first().map(|s| s.reason.as_str()).unwrap_or("");
            problems.push(format!(
                "{n} resource(s) not captured ({}; first reason: {first}): see status.objects.skipped, and grant the capturing account what it lacks",
                names.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        (Phase::Completed, None)
    } else {
        let mut m = problems.join("; ");
        if m.len() > 2000 {
            let mut cut = 2000;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
            m.push('…');
        }
        (Phase::PartiallyFailed, Some(m))
    }
}

/// Step 4: the end, as [`outcome`] judges it, then its Event.
async fn conclude(ctx: &Ctx, ab: &ApplicationBackup) -> Result<Action, Error> {
    let status = fresh(ctx, ab).await?;
    let (phase, message) = outcome(&status);
    let size = status
        .objects
        .as_ref()
        .map(|o| bytesize::ByteSize(o.bytes).to_string());
    let summary = format!(
        "snapshot {}: {} object(s), {} volume(s)",
        status.run.snapshot_id.as_deref().unwrap_or_default(),
        status.objects.as_ref().map(|o| o.total).unwrap_or(0),
        status.volumes.as_ref().map(Vec::len).unwrap_or(0)
    );
    tenant_pods::conclude(ctx, ab, phase, message, size, summary).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(spec: serde_json::Value) -> ApplicationBackup {
        serde_json::from_value(json!({
            "apiVersion": "coffer.dev/v1alpha1", "kind": "ApplicationBackup",
            "metadata": {"name": "shop", "namespace": "team-a", "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn claims_go_by_snapshot_as_one_group_or_through_a_pod_by_the_node_agent() {
        let ab = backup(json!({"tags": ["release=7"]}));
        let vb = volume_run(&ab, "data-db-0", &VolumeMethod::Snapshot, 2);
        assert_eq!(vb.name_any(), "shop-data-db-0");
        assert_eq!(vb.spec.pvc.as_deref(), Some("data-db-0"));
        assert_eq!(vb.spec.group.as_ref().unwrap().size, 2);
        assert_eq!(
            vb.spec.tags,
            [
                "coffer.dev/application=shop".to_string(),
                "release=7".into()
            ]
        );
        assert_eq!(vb.owner_references()[0].uid, "u-1");
        assert_eq!(vb.labels()[APPLICATION_LABEL], "shop");
        let alone = volume_run(&ab, "data", &VolumeMethod::Snapshot, 1);
        assert!(alone.spec.group.is_none());
        let fs = VolumeMethod::Filesystem {
            pod: "web-0".into(),
            volume: "data".into(),
        };
        let vb = volume_run(&ab, "cache", &fs, 2);
        assert_eq!(vb.spec.pod_volume(), Some(("web-0", "data")));
        assert!(vb.spec.pvc.is_none() && vb.spec.group.is_none());

        let pod = |name: &str, phase: &str, claim: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]},
                "status": {"phase": phase}}))
            .unwrap()
        };
        let pods = [
            pod("done", "Succeeded", "cache"),
            pod("web-0", "Running", "cache"),
        ];
        assert_eq!(
            pod_mounting(&pods, "cache"),
            Some(("web-0".into(), "v".into()))
        );
        assert_eq!(pod_mounting(&pods, "other"), None);
    }

    #[test]
    fn the_capture_pod_passes_the_restricted_pod_security_level() {
        let ab = backup(json!({"serviceAccountName": "capturer"}));
        let pod = capture_pod(&ab, "coffer:1", &[], "256Mi", vec!["mover".into()], None);
        let v = serde_json::to_value(&pod).unwrap();
        let refused = coffer_fake_apiserver::pod_security_violations("restricted", &v);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(v["spec"]["serviceAccountName"], "capturer");
        assert_eq!(v["spec"]["volumes"][0]["emptyDir"]["medium"], "Memory");
        // A repository in a node's directory needs a hostPath: refused
        // there, as the documentation says.
        let local = capture_pod(&ab, "coffer:1", &[], "256Mi", vec![], Some("/srv/backup"));
        let v = serde_json::to_value(&local).unwrap();
        assert!(!coffer_fake_apiserver::pod_security_violations("restricted", &v).is_empty());
    }

    #[test]
    fn a_backup_that_skipped_something_or_lost_a_volume_is_partially_failed_saying_what() {
        let mut st: ApplicationBackupStatus = serde_json::from_value(json!({
            "phase": "InProgress", "snapshotID": "ab",
            "volumes": [{"pvc": "data", "volumeBackup": "shop-data", "phase": "Completed", "snapshotID": "cd"}],
            "objects": {"total": 3, "bytes": 10},
        }))
        .unwrap();
        assert_eq!(outcome(&st), (Phase::Completed, None));
        st.objects.as_mut().unwrap().skipped = vec![crate::crd::SkippedResource {
            resource: "secrets".into(),
            reason: "secrets is forbidden".into(),
        }];
        st.objects.as_mut().unwrap().skipped_count = Some(1);
        let (phase, m) = outcome(&st);
        assert_eq!(phase, Phase::PartiallyFailed);
        let m = m.unwrap();
        assert!(m.contains("secrets") && m.contains("forbidden"), "{m}");
        st.objects.as_mut().unwrap().skipped.clear();
        st.objects.as_mut().unwrap().skipped_count = None;
        st.volumes.as_mut().unwrap()[0].phase = Some(Phase::Failed);
        st.volumes.as_mut().unwrap()[0].message = Some("no VolumeSnapshotClass".into());
        let (phase, m) = outcome(&st);
        assert_eq!(phase, Phase::PartiallyFailed);
        assert!(m
            .unwrap()
            .contains("PVC data (shop-data): Failed: no VolumeSnapshotClass"));
    }

    #[test]
    fn the_status_reads_as_a_run_and_keeps_what_was_captured() {
        let st: ApplicationBackupStatus = serde_json::from_value(json!({
            "phase": "Completed", "stage": "Capturing", "snapshotID": "ab",
            "volumeCount": 1,
            "objects": {"total": 2, "counts": {"ConfigMap": 2}, "bytes": 10},
        }))
        .unwrap();
        assert_eq!(st.run.phase, Phase::Completed);
        assert_eq!(Stage::of(&st.run), Some(Stage::Capturing));
        assert_eq!(st.objects.as_ref().unwrap().counts["ConfigMap"], 2);
        let back = serde_json::to_value(&st).unwrap();
        assert_eq!(back["snapshotID"], "ab");
        assert_eq!(back["volumeCount"], 1);
    }
}
