//! `coffer-agent controller`: the Deployment. One replica leads (a Lease);
//! the others wait and take over when it dies. The leader runs four
//! controllers, each in its own module, level-triggered, one step per pass:
//!
//! - `backup`: VolumeBackups with `method: Snapshot` (CSI snapshot, clone,
//!   mover pod, cleanup);
//! - [`restore`]: VolumeRestores with a `target` (a new claim filled by a
//!   mover pod);
//! - [`schedules`]: BackupSchedules (runs on time, retention);
//! - [`maintenance`]: the prune, check and copy of each BackupRepository;
//! - [`application`]: ApplicationBackups (a VolumeBackup per claim, then a
//!   capture pod in the namespace, as the tenant's account);
//! - [`application_restore`]: ApplicationRestores (a restore pod in the
//!   namespace, as the tenant's account).
//!
//! What they share sits beside them: `context` (settings, the context of
//! a reconcile, the error policy), `lifecycle` (the finalizer, the end of
//! a run), [`movers`] (mover pods and their one-object accounts), [`csi`]
//! (snapshot kinds and classes) and [`claims`] (the claims the controller
//! makes). Only this module names the controllers; they never name each
//! other.
//!
//! Mover pods, and what they read (a backup's exposed snapshot and clone),
//! run in coffer's own namespace: the application's namespace needs no Pod
//! Security exception and grants no right to create pods. Every object made
//! for a run carries the run label and either an owner reference to the run
//! (in the run's namespace) or the run's `namespace/name` in an annotation
//! (in coffer's), so a new leader finds where the run stands from the
//! cluster alone, and a start-up sweep removes what a deleted run left.

pub mod application;
pub mod application_restore;
pub(crate) mod backup;
pub mod claims;
pub(crate) mod context;
pub mod csi;
pub(crate) mod lifecycle;
pub mod maintenance;
pub mod movers;
pub mod populator;
pub mod restore;
pub mod schedules;
pub(crate) mod tenant_pods;
pub(crate) mod volumes;

pub use context::Options;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::crd::{
    ApplicationBackup, ApplicationRestore, BackupRepository, BackupSchedule, VolumeBackup,
    VolumeRestore,
};
use crate::lenient::Lenient;
use crate::metrics::Metrics;

use crate::controller::context::Ctx;
use crate::controller::csi::VolumeSnapshot;
use crate::names::RUN_LABEL;
use crate::reconcile::{log_error, parsed, parsed_policy, retry_policy};

/// The run of kind `K` that `o` was made for: its owner, or, for what lies
/// in coffer's namespace (where no owner reference reaches), the run its
/// annotation names. The controllers' watch mapper.
pub fn run_of<K, O>(o: O) -> Option<ObjectRef<Lenient<K>>>
where
    K: Resource<DynamicType = ()>,
    O: ResourceExt,
{
    let kind = K::kind(&());
    if let Some(owner) = o.owner_references().iter().find(|r| r.kind == kind) {
        return Some(ObjectRef::new(&owner.name).within(&o.namespace()?));
    }
    let (ns, name) = crate::names::annotated_run(o.annotations())?;
    Some(ObjectRef::new(name).within(ns))
}

/// Leads (or waits to lead), then reconciles until leadership is lost or a
/// watch ends. Losing the Lease ends the process's work: the caller exits
/// and the Deployment starts it again as a candidate.
pub async fn run(client: Client, opts: Options, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let duration = opts.lease_duration.as_secs().max(2);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &opts.lease_name)
        .with_namespace(&opts.namespace)
        .with_identity(&opts.identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("Lease {}/{}: {e}", opts.namespace, opts.lease_name))?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(
        identity = opts.identity,
        lease = opts.lease_name,
        "waiting for the Lease"
    );
    // Ready as a standby too: readiness says the replica is up and reaches
    // the API server, so a rolling update of two replicas can complete
    // (with only the leader ready, the Deployment never becomes available).
    // Which replica leads is the gauge coffer_controller_leading.
    metrics.set_ready();
    while !*leading.borrow_and_update() {
        leading
            .changed()
            .await
            .map_err(|_| anyhow::anyhow!("the Lease manager stopped"))?;
    }
    tracing::info!(identity = opts.identity, "leading");
    metrics.leading.set(1);
    let reporter = crate::report::Reporter::new(
        client.clone(),
        "coffer-controller",
        opts.identity.clone(),
        metrics.clone(),
    );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        opts,
        reporter,
        schedule_gauges: crate::metrics::ScheduleGauges::new(metrics.clone()),
        metrics,
        group_api: Default::default(),
    });
    backup::sweep(&ctx).await;
    restore::sweep(&ctx).await;
    movers::sweep_movers::<BackupRepository>(&ctx, crate::names::MAINTENANCE_LABEL).await;
    movers::sweep_movers::<BackupSchedule>(&ctx, crate::names::SCHEDULE_LABEL).await;
    // Every watched kind is lenient: one object that does not parse (in
    // any namespace) is logged and skipped, never the whole list.
    let children = watcher::Config::default().labels(RUN_LABEL);
    let home = ctx.opts.namespace.clone();
    let backups = Controller::new(
        Api::<Lenient<VolumeBackup>>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Lenient<Pod>>::namespaced(client.clone(), &home),
        children.clone(),
        run_of::<VolumeBackup, _>,
    )
    .watches(
        Api::<Lenient<PersistentVolumeClaim>>::namespaced(client.clone(), &home),
        children.clone(),
        run_of::<VolumeBackup, _>,
    )
    .watches(
        Api::<Lenient<VolumeSnapshot>>::all(client.clone()),
        children,
        run_of::<VolumeBackup, _>,
    )
    .run(
        parsed(backup::reconcile),
        parsed_policy(retry_policy),
        ctx.clone(),
    )
    .for_each(log_error);
    let restores = Controller::new(
        Api::<Lenient<VolumeRestore>>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Lenient<Pod>>::all(client.clone()),
        watcher::Config::default().labels(crate::names::RESTORE_LABEL),
        run_of::<VolumeRestore, _>,
    )
    .run(
        parsed(restore::reconcile),
        parsed_policy(retry_policy),
        ctx.clone(),
    )
    .for_each(log_error);
    let scheduled = watcher::Config::default().labels(crate::names::SCHEDULE_LABEL);
    let schedules = Controller::new(
        Api::<Lenient<BackupSchedule>>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Lenient<VolumeBackup>>::all(client.clone()),
        scheduled.clone(),
    )
    .owns(
        Api::<Lenient<ApplicationBackup>>::all(client.clone()),
        scheduled.clone(),
    )
    .watches(
        Api::<Lenient<Pod>>::namespaced(client.clone(), &home),
        scheduled,
        run_of::<BackupSchedule, _>,
    )
    .run(
        parsed(schedules::reconcile),
        parsed_policy(retry_policy),
        ctx.clone(),
    )
    .for_each(log_error);
    let maintenance = Controller::new(
        Api::<Lenient<BackupRepository>>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Lenient<Pod>>::namespaced(client.clone(), &home),
        watcher::Config::default().labels(crate::names::MAINTENANCE_LABEL),
        run_of::<BackupRepository, _>,
    )
    .run(
        parsed(maintenance::reconcile),
        parsed_policy(retry_policy),
        ctx.clone(),
    )
    .for_each(log_error);
    let populator = Controller::new(
        Api::<Lenient<PersistentVolumeClaim>>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        parsed(populator::reconcile),
        parsed_policy(retry_policy),
        ctx.clone(),
    )
    .for_each(log_error);
    let applied = watcher::Config::default().labels(application::APPLICATION_LABEL);
    let applications = Controller::new(
        Api::<Lenient<ApplicationBackup>>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Lenient<VolumeBackup>>::all(client.clone()),
        applied.clone(),
    )
    .owns(Api::<Lenient<Pod>>::all(client.clone()), applied)
    .run(
        parsed(application::reconcile),
        parsed_policy(retry_policy),
        ctx.clone(),
    )
    .for_each(log_error);
    let app_restores = Controller::new(
        Api::<Lenient<ApplicationRestore>>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Lenient<Pod>>::all(client.clone()),
        watcher::Config::default().labels(application::RESTORE_LABEL),
    )
    .run(
        parsed(application_restore::reconcile),
        parsed_policy(retry_policy),
        ctx.clone(),
    )
    .for_each(log_error);
    let gauges = schedules::forget_deleted(client.clone(), ctx);
    let lost = async {
        loop {
            if leading.changed().await.is_err() || !*leading.borrow() {
                return;
            }
        }
    };
    tokio::select! {
        _ = futures::future::join4(
            futures::future::join5(backups, restores, schedules, maintenance, gauges),
            populator,
            applications,
            app_restores,
        ) => anyhow::bail!("the controller's watches ended"),
        _ = lost => {
            lease_task.abort();
            anyhow::bail!("lost the Lease; stopping so that the new leader alone acts")
        }
    }
}
