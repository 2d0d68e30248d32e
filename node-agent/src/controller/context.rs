//! What every reconciler of the controller shares: its settings, the
//! context handed to each reconcile, and how errors are logged and retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::metrics::Metrics;

use crate::controller::csi::GroupApiCache;

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
    /// The image pull Secrets of mover pods (in coffer's namespace).
    pub mover_pull_secrets: Vec<String>,
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
    /// A finished one-off run is deleted this long after it ended (zero:
    /// never).
    pub finished_run_ttl: Duration,
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
