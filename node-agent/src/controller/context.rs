//! What every reconciler of the controller shares: its settings, the
//! context handed to each reconcile, and how errors are logged and retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};

use crate::lenient::Lenient;
use crate::metrics::Metrics;

use crate::api::Error;
use crate::controller::csi::GroupApiCache;
use crate::run::RunObject;

/// The controller's settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cluster's name, recorded in every snapshot.
    pub cluster: Option<String>,
    /// The namespace of the Lease (the controller's own).
    pub namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// The image mover pods run (`coffer-agent`).
    pub mover_image: String,
    /// Mover pods' memory limit.
    pub mover_memory: String,
    /// Engine threads in a mover.
    pub mover_threads: usize,
    /// A backup mover reads its clone no faster than this (bytes per second).
    pub mover_read_limit: Option<u64>,
    /// How long a VolumeSnapshot may take to become ready.
    pub snapshot_timeout: Duration,
    /// How long a mover pod may take to start.
    pub prepare_timeout: Duration,
    /// How long past its grace period a mover pod may stay Terminating
    /// before it is deleted at once. Only a kubelet that is gone (a dead or
    /// cut-off node) leaves a pod Terminating that long; it would otherwise
    /// hold the clone, the run's finalizer and the next job for as long as
    /// the node stays down.
    pub terminating_limit: Duration,
    /// Storage class renames for clones.
    pub storage_class_map: BTreeMap<String, String>,
    /// Storage class renames for restored PVCs (a class that does not
    /// exist in this cluster, or a cheaper one).
    pub restore_storage_class_map: BTreeMap<String, String>,
    /// Clones ask for ReadOnlyMany.
    pub read_only_many: bool,
    /// What namespaced objects may ask for; every mover gets it too.
    pub policy: crate::policy::TenantPolicy,
    /// A node agent's run whose node is gone (deleted, or not Ready this
    /// long) is ended.
    pub lost_node_timeout: Duration,
}

pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) opts: Options,
    pub(crate) reporter: crate::report::Reporter,
    pub(crate) metrics: Arc<Metrics>,
    /// The last discovery of the VolumeGroupSnapshot API, and when.
    pub(crate) group_api: GroupApiCache,
    /// The BackupSchedules' gauges.
    pub(crate) schedule_gauges: crate::metrics::ScheduleGauges,
}

/// A reconcile's error is logged where it happens (the error policy); the
/// stream's copy is for debugging.
pub(crate) async fn log_error<T, E: std::fmt::Display>(r: Result<T, E>) {
    if let Err(e) = r {
        tracing::debug!("reconcile: {e}");
    }
}

/// A reconciler over the objects that parse: one that does not is logged
/// (by [`Lenient::object`]) and left until it changes.
pub(crate) fn parsed<K, F, Fut>(
    reconcile: F,
) -> impl FnMut(Arc<Lenient<K>>, Arc<Ctx>) -> futures::future::BoxFuture<'static, Result<Action, Error>>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        let reconcile = reconcile.clone();
        Box::pin(async move {
            match obj.object() {
                Some(k) => reconcile(Arc::new(k.clone()), ctx).await,
                None => Ok(Action::await_change()),
            }
        })
    }
}

/// `policy` for objects that parse (others are never reconciled).
pub(crate) fn parsed_policy<K: Resource<DynamicType = ()> + Clone>(
    policy: fn(Arc<K>, &Error, Arc<Ctx>) -> Action,
) -> impl Fn(Arc<Lenient<K>>, &Error, Arc<Ctx>) -> Action {
    move |obj, e, ctx| match &obj.parsed {
        Ok(k) => policy(Arc::new(k.clone()), e, ctx),
        Err(_) => Action::await_change(),
    }
}

pub(crate) fn error_policy<K: RunObject>(run: Arc<K>, e: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(
        namespace = run.namespace().unwrap_or_default(),
        run = run.name_any(),
        "{e}; trying again"
    );
    Action::requeue(Duration::from_secs(5))
}

pub(crate) fn object_error_policy<K: Resource>(obj: Arc<K>, e: &Error, _: Arc<Ctx>) -> Action {
    tracing::warn!(
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        "{e}; trying again"
    );
    Action::requeue(Duration::from_secs(5))
}
