//! The `coffer.dev/v1alpha1` custom resources. Every kind is namespaced, so
//! that tenancy follows namespaces: a namespace's repository, password and
//! runs live in that namespace.
//!
//! `coffer-agent crds` prints these definitions as YAML; `deploy/crds.yaml`
//! holds the same text, and a test fails when the two differ.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::time::Timestamp;

/// The repository name a run uses when it names none.
pub const DEFAULT_REPOSITORY: &str = "default";

fn default_repository() -> String {
    DEFAULT_REPOSITORY.to_string()
}

/// A repository, with the Secrets that open it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "BackupRepository",
    namespaced,
    doc = "A namespace's repository: where its snapshots are stored (file, S3, GCS or Azure) and the Secrets that open it. The node agent opens it and says whether it is Ready.",
    category = "coffer",
    status = "BackupRepositoryStatus",
    shortname = "brepo",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositorySpec {
    /// Where the repository lives: `file:///path`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix` or `az://container/prefix`.
    pub url: String,
    /// The Secret key that holds the repository password, in this namespace.
    pub password_secret_ref: SecretKeyRef,
    /// A Secret in this namespace whose keys are the store's credentials
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AZURE_STORAGE_ACCOUNT_KEY`,
    /// `GOOGLE_SERVICE_ACCOUNT_KEY`, ...). They go to the engine as values,
    /// never through the agent's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Store options, as `coffer --option` takes them (`s3.endpoint`,
    /// `s3.region`, `timeout`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Create the repository when it does not exist yet.
    #[serde(default)]
    pub init: bool,
    /// Namespaces whose VolumeRestores may restore into this namespace with
    /// this repository (`spec.target.namespace` naming this one). A restore
    /// from another namespace reads this namespace's repository and writes
    /// a claim here, so it needs this namespace's consent; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_source_namespaces: Vec<String>,
    /// Scheduled prune and check, run by the controller in mover pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
}

/// A repository's scheduled maintenance. Each job runs in a mover pod in the
/// repository's namespace, beside running backups (the engine's protocol
/// needs no lock), never beside the other job.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// When to prune, in the schedule language of the backup annotation
    /// (`@daily`, `H 3 * * 0`, ...); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_schedule: Option<String>,
    /// When to check; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_schedule: Option<String>,
    /// What each check downloads and verifies, as `coffer check
    /// --read-data-subset` takes it: `P%` (a random sample) or `n/m` (part n
    /// of m; the controller moves to the next part at each check, so m
    /// checks cover the repository). None: the structure only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_data_subset: Option<String>,
    /// Unused space prune leaves in packs, in percent (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_unused_percent: Option<u32>,
    /// The maintenance pods' memory limit (default: the controller's
    /// `--mover-memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// A second BackupRepository in this namespace (another bucket, region
    /// or account) that `copySchedule` keeps in step with this one: every
    /// snapshot not copied yet is copied into it (`coffer copy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_to: Option<String>,
    /// When to copy into `copyTo`; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_schedule: Option<String>,
}

/// A key of a Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key inside it.
    #[serde(default = "default_password_key")]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_string()
}

/// A Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
}

/// Whether a repository can be used.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RepositoryPhase {
    /// It opened with its password.
    Ready,
    /// It did not; `message` says why and what to do.
    NotReady,
}

/// What the agent last found about a repository.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// Ready or NotReady.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RepositoryPhase>,
    /// The repository's id (from its config).
    #[serde(
        default,
        rename = "repositoryID",
        skip_serializing_if = "Option::is_none"
    )]
    pub repository_id: Option<String>,
    /// Why it is not ready, and the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it was last opened or tried (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<Timestamp>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub observed_generation: Option<i64>,
    /// `Ready`: whether it opened with its password (`kubectl wait
    /// --for=condition=Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Scheduling of the prune job (the controller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<JobTimes>,
    /// Scheduling of the check job (the controller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<JobTimes>,
    /// What the last prune did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<PruneResult>,
    /// What the last check found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<CheckResult>,
    /// Scheduling of the copy job (the controller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<JobTimes>,
    /// What the last copy did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_copy: Option<CopyResult>,
}

/// When a maintenance job last fired and fires next.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTimes {
    /// The time the last job was started for (RFC 3339, ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Timestamp>,
    /// The next time, when the schedule has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Timestamp>,
    /// The last `maintenance.coffer.dev/{prune,check}-now` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<String>,
    /// Why the schedule cannot be used, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a prune did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneResult {
    /// The `lastScheduleTime` it ran for.
    pub scheduled_at: Timestamp,
    /// When it ended.
    pub time: Timestamp,
    /// Bytes freed in the store.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub bytes_freed: u64,
    /// Bytes of used blobs copied out of repacked packs.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub bytes_repacked: u64,
    /// Packs deleted whole, repacked, and left unindexed by interrupted
    /// backups.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub packs_deleted: u64,
    /// Bytes of packs left in the repository.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub total_bytes: u64,
    /// Running backups it waited for.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub sessions_waited: u64,
    /// False when it stopped waiting for backups; the next prune finishes.
    pub executed: bool,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a check found.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The `lastScheduleTime` it ran for.
    pub scheduled_at: Timestamp,
    /// When it ended.
    pub time: Timestamp,
    /// Whether the repository is sound (and the check ran).
    pub ok: bool,
    /// The subset of packs read, when data was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_data_subset: Option<String>,
    /// Snapshots, packs checked, and packs downloaded and verified.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub snapshots: u64,
    /// Packs whose headers were checked.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub packs: u64,
    /// Packs downloaded and verified blob by blob.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub packs_read: u64,
    /// Problems found.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub problems: u64,
    /// The first problems, each naming its object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_problems: Vec<String>,
    /// Why it could not run, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a copy into `spec.maintenance.copyTo` did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyResult {
    /// The `lastScheduleTime` it ran for.
    pub scheduled_at: Timestamp,
    /// When it ended.
    pub time: Timestamp,
    /// The BackupRepository copied into.
    pub destination: String,
    /// Snapshots copied now.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub snapshots_copied: u64,
    /// Snapshots the destination had already.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub snapshots_skipped: u64,
    /// Content bytes read from this repository.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub bytes_read: u64,
    /// Bytes stored in the destination (before compression), new there.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub bytes_stored: u64,
    /// Why it failed, when it did (snapshots copied before the failure stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One backup of one volume: a pod's volume read in place by the node agent
/// (`Filesystem`), or a PersistentVolumeClaim read from a CSI snapshot by a
/// mover pod that the controller runs (`Snapshot`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "VolumeBackup",
    namespaced,
    doc = "One backup of one volume: a pod's volume read in place by the node agent (Filesystem, Command), or a PersistentVolumeClaim read from a CSI snapshot by a mover pod (Snapshot). Its status says where it stands and which snapshot it wrote.",
    category = "coffer",
    status = "RunStatus",
    shortname = "vb",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Method","type":"string","jsonPath":".spec.method"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.pod"}"#,
    printcolumn = r#"{"name":"Volume","type":"string","jsonPath":".spec.volume"}"#,
    printcolumn = r#"{"name":"PVC","type":"string","jsonPath":".spec.pvc"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".status.snapshotID"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node","priority":1}"#,
    printcolumn = r#"{"name":"Bytes","type":"integer","jsonPath":".status.progress.bytesDone","priority":1}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.stage","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.method != 'Snapshot' || has(self.pvc) != (has(self.pod) && has(self.volume))",
     "message": "method Snapshot reads spec.pvc, or the PVC that spec.pod mounts as spec.volume: set one of the two"},
    {"rule": "self.method != 'Filesystem' || (has(self.pod) && has(self.volume) && !has(self.pvc))",
     "message": "method Filesystem reads a pod's volume in place: set spec.pod and spec.volume, not spec.pvc"},
    {"rule": "self.method != 'Command' || (has(self.pod) && !has(self.pvc))",
     "message": "method Command runs a command in a pod: set spec.pod, not spec.pvc"}
]))]
pub struct VolumeBackupSpec {
    /// How the volume is read: `Filesystem` (in place, by the node agent of
    /// the pod's node; needs `pod` and `volume`) or `Snapshot` (through a CSI
    /// VolumeSnapshot and a mover pod; needs `pvc`, or `pod` and `volume`
    /// naming a PVC).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.method cannot change; create a new run"}]))]
    pub method: BackupMethod,
    /// The pod, in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.pod cannot change; create a new run"}]))]
    pub pod: Option<String>,
    /// The volume's name in the pod's spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.volume cannot change; create a new run"}]))]
    pub volume: Option<String>,
    /// The PersistentVolumeClaim, in this namespace (method `Snapshot`; no
    /// pod needs to use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.pvc cannot change; create a new run"}]))]
    pub pvc: Option<String>,
    /// The BackupRepository, in this namespace.
    #[serde(default = "default_repository")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.repository cannot change; create a new run"}]))]
    pub repository: String,
    /// Tags recorded in the snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Patterns to leave out, in `coffer backup --exclude`'s language,
    /// relative to the volume's root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Keep the CSI VolumeSnapshot after the run (method `Snapshot`); by
    /// default it is deleted once its data is in the repository.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retain_snapshot: bool,
    /// Set to true to stop the run; it ends Canceled.
    #[serde(default)]
    pub cancel: bool,
    /// Method `Snapshot`: the runs of this namespace with this group are
    /// snapshotted at one instant (a BackupSchedule groups the PVCs of one
    /// workload). The controller waits until `size` of them exist, runs
    /// every pre-hook, takes all the VolumeSnapshots, waits until they are
    /// ready, then runs every post-hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<RunGroup>,
}

/// Runs snapshotted together.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RunGroup {
    /// The group's name, shared by its runs.
    pub name: String,
    /// How many runs it has.
    #[schemars(range(min = 1, max = 10000))]
    pub size: u32,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl VolumeBackupSpec {
    /// The pod and the volume, when both are given.
    pub fn pod_volume(&self) -> Option<(&str, &str)> {
        Some((self.pod.as_deref()?, self.volume.as_deref()?))
    }
}

/// How a VolumeBackup reads its volume.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BackupMethod {
    /// In place, from the kubelet's directory, by the node agent.
    #[default]
    Filesystem,
    /// From a CSI VolumeSnapshot of the PVC, by a mover pod (crash-consistent).
    Snapshot,
    /// The stdout of the pod's `backup.coffer.dev/command` (a dump), read
    /// through `pods/exec` by the node agent of the pod's node; the snapshot
    /// is written only if the command exits 0. Needs `pod`.
    Command,
}

/// A snapshot restored into one volume of a running pod.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "VolumeRestore",
    namespaced,
    doc = "One restore of a snapshot: into a running pod's volume (pod, volume), or into a new PersistentVolumeClaim (target), here or in another namespace or cluster.",
    category = "coffer",
    status = "RunStatus",
    shortname = "vr",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.pod"}"#,
    printcolumn = r#"{"name":"Volume","type":"string","jsonPath":".spec.volume"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target.pvc"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".status.snapshotID"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node","priority":1}"#,
    printcolumn = r#"{"name":"Bytes","type":"integer","jsonPath":".status.progress.bytesDone","priority":1}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.stage","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.target) != has(self.pod)",
     "message": "set spec.target (a new PVC) or spec.pod with spec.volume (in place): one of the two"},
    {"rule": "!has(self.pod) || has(self.volume)",
     "message": "spec.pod needs spec.volume: the volume to restore into"}
]))]
pub struct VolumeRestoreSpec {
    /// Which snapshot.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.snapshot cannot change; create a new run"}]))]
    pub snapshot: SnapshotSource,
    /// The pod, in this namespace, whose volume receives the data (restored
    /// in place by the node agent of the pod's node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.pod cannot change; create a new run"}]))]
    pub pod: Option<String>,
    /// The volume's name in the pod's spec (with `pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.volume cannot change; create a new run"}]))]
    pub volume: Option<String>,
    /// Instead of `pod` and `volume`: a new PersistentVolumeClaim, created by
    /// the controller from the claim recorded in the snapshot and filled by
    /// a mover pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.target cannot change; create a new run"}]))]
    pub target: Option<RestoreTarget>,
    /// The BackupRepository, in this namespace (with `target`: in the
    /// target's namespace, whose Secrets open it).
    #[serde(default = "default_repository")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.repository cannot change; create a new run"}]))]
    pub repository: String,
    /// Restore only this path inside the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// Deprecated spelling of `subPath`, still read for this release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    /// What to do with a volume that already holds data.
    #[serde(default)]
    pub policy: RestorePolicy,
    /// Also restore device nodes and the setuid/setgid bits of files. Off
    /// by default: device nodes are skipped (with a warning) and those bits
    /// cleared, as a snapshot is its namespace's to write.
    #[serde(default)]
    pub special_files: bool,
    /// Set to true to stop the run; it ends Canceled.
    #[serde(default)]
    pub cancel: bool,
}

impl VolumeRestoreSpec {
    /// The pod and the volume, when both are given.
    pub fn pod_volume(&self) -> Option<(&str, &str)> {
        Some((self.pod.as_deref()?, self.volume.as_deref()?))
    }

    /// The path to restore, `subPath` or its older spelling `subpath`.
    pub fn sub_path(&self) -> Option<&str> {
        self.sub_path.as_deref().or(self.subpath.as_deref())
    }
}

/// A new PersistentVolumeClaim to restore into.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTarget {
    /// Its namespace (this namespace when not given). That namespace needs
    /// a BackupRepository named `spec.repository` (its Secrets open the
    /// repository) that allows restores from this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name; it must not exist yet (unless `existing`).
    pub pvc: String,
    /// Its storage class (default: the recorded one, renamed by the
    /// controller's `--restore-storage-class`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Its size (default: the recorded capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Fill this claim, which exists already, instead of creating it: it
    /// must not be Bound, and its `spec.dataSourceRef` must name a
    /// RestoreSource (the volume populator sets this).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

/// What a new PersistentVolumeClaim is populated from: a claim whose
/// `spec.dataSourceRef` names a RestoreSource (`apiGroup: coffer.dev`) is
/// filled by the controller and appears Bound with the data in it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "RestoreSource",
    namespaced,
    doc = "A snapshot that new PersistentVolumeClaims are populated from: a claim whose spec.dataSourceRef names this object (apiGroup coffer.dev, kind RestoreSource) is filled by the controller, then bound, as a volume populator does.",
    category = "coffer",
    printcolumn = r#"{"name":"Repository","type":"string","jsonPath":".spec.repository"}"#,
    printcolumn = r#"{"name":"PVC","type":"string","jsonPath":".spec.snapshot.pvc"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSourceSpec {
    /// Which snapshot: by id, or the latest of an origin. An origin that
    /// names no `pvc` means each claim's own name, so that the
    /// volumeClaimTemplates of a StatefulSet restore each replica's volume.
    #[serde(default)]
    pub snapshot: SnapshotSource,
    /// The BackupRepository, in this namespace.
    #[serde(default = "default_repository")]
    pub repository: String,
}

impl RestoreSourceSpec {
    /// The snapshot that claim `pvc` is populated from.
    pub fn snapshot_for(&self, pvc: &str) -> SnapshotSource {
        let mut s = self.snapshot.clone();
        if s.id.is_none() && s.pvc.is_none() && s.owner.is_none() {
            s.pvc = Some(pvc.to_string());
        }
        s
    }
}

/// A snapshot by id, or the latest of an origin (at a point in time, with
/// `asOf`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// A snapshot id or unique prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The origin's cluster (`--cluster-name` of the agent that made it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The origin's namespace (this namespace when only pvc, owner or volume
    /// is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The origin's PersistentVolumeClaim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    /// The origin pod's controlling workload, `Kind/name` (`StatefulSet/db`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The origin's volume name (with `owner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// With an origin: the latest of its snapshots taken at or before this
    /// time (RFC 3339, such as `2026-11-24T02:00:00Z`), instead of the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
}

/// What a restore does with a volume that already holds data.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RestorePolicy {
    /// Restore only into an empty volume (`lost+found` aside); otherwise fail.
    #[default]
    IfEmpty,
    /// Replace what is there (a block volume is overwritten whole).
    Overwrite,
}

/// The ServiceAccount an application backup captures objects as, when it
/// names none: the namespace's owner creates it and binds it to what may be
/// captured (the built-in `view` ClusterRole, plus `get`/`list` on Secrets
/// to capture them).
pub const DEFAULT_APPLICATION_ACCOUNT: &str = "coffer-application";

fn default_application_account() -> String {
    DEFAULT_APPLICATION_ACCOUNT.to_string()
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A backup of an application: the objects of this namespace (one JSON file
/// each, in a snapshot laid out as SPEC.md §16 fixes) together with the data
/// of its PersistentVolumeClaims (one owned VolumeBackup each).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "ApplicationBackup",
    namespaced,
    doc = "Backs up this namespace as an application: the data of its PersistentVolumeClaims (one owned VolumeBackup each, snapshotted together) and then its objects, captured with the rights of spec.serviceAccountName into one snapshot. Its status names every snapshot written.",
    category = "coffer",
    status = "ApplicationBackupStatus",
    shortname = "appb",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Objects","type":"integer","jsonPath":".status.objects.total"}"#,
    printcolumn = r#"{"name":"Volumes","type":"integer","jsonPath":".status.volumeCount"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".status.snapshotID"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Stage","type":"string","jsonPath":".status.stage","priority":1}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationBackupSpec {
    /// The BackupRepository, in this namespace.
    #[serde(default = "default_repository")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.repository cannot change; create a new backup"}]))]
    pub repository: String,
    /// The ServiceAccount of this namespace whose rights the objects are
    /// captured with: what it cannot list is reported as skipped.
    #[serde(default = "default_application_account")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.serviceAccountName cannot change; create a new backup"}]))]
    pub service_account_name: String,
    /// Only these resources (`plural.group`, `plural` or the kind, as
    /// `kubectl get` takes them); all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.includedResources cannot change; create a new backup"}]))]
    pub included_resources: Vec<String>,
    /// Not these resources (same spelling). Events, Endpoints and
    /// EndpointSlices are left out unless included by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.excludedResources cannot change; create a new backup"}]))]
    pub excluded_resources: Vec<String>,
    /// Also capture the objects their controllers recreate (a Deployment's
    /// ReplicaSets, owned Pods, ControllerRevisions, a CronJob's Jobs).
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.includeRecreated cannot change; create a new backup"}]))]
    pub include_recreated: bool,
    /// Only objects (and claims) with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.selector cannot change; create a new backup"}]))]
    pub selector: Option<Selector>,
    /// Back up the data of the namespace's claims (the default); `false`
    /// captures the objects alone.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.volumeData cannot change; create a new backup"}]))]
    pub volume_data: bool,
    /// Tags recorded in every snapshot (besides `coffer.dev/application=NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Set to true to stop the backup; it ends Canceled.
    #[serde(default)]
    pub cancel: bool,
}

/// The status of an ApplicationBackup: that of every run (phase, stage,
/// times, conditions; `snapshotID` is the objects' snapshot), and what it
/// captured.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationBackupStatus {
    /// Where it stands, as for every run.
    #[serde(flatten)]
    pub run: RunStatus,
    /// The claims whose data it backs up, each with its VolumeBackup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<ApplicationVolume>>,
    /// How many claims (the Volumes column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub volume_count: Option<u32>,
    /// What the capture wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<CapturedObjects>,
}

/// One claim of an application backup.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationVolume {
    /// The PersistentVolumeClaim.
    pub pvc: String,
    /// The VolumeBackup (owned by the application backup) that reads it.
    pub volume_backup: String,
    /// That run's phase, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The snapshot of its data.
    #[serde(
        default,
        rename = "snapshotID",
        skip_serializing_if = "Option::is_none"
    )]
    pub snapshot_id: Option<String>,
    /// Bytes read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub bytes: Option<u64>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What an application backup's capture wrote.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapturedObjects {
    /// Objects captured.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub total: u64,
    /// Objects captured, by kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "counts_schema")]
    pub counts: BTreeMap<String, u64>,
    /// Bytes of JSON written.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub bytes: u64,
    /// What the account could not read, with the API server's reason (the
    /// first [`MAX_SKIPPED`]; `skippedCount` has them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedResource>,
    /// How many resources were skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub skipped_count: Option<u64>,
    /// Cluster-scoped objects the captured ones depend on (claims'
    /// PersistentVolumes and StorageClasses, CustomResourceDefinitions)
    /// that the account could not read: they are recorded for reference
    /// only, so their absence does not make the backup PartiallyFailed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrecorded: Vec<SkippedResource>,
}

fn counts_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": "integer", "format": "uint64", "minimum": 0, "maximum": 9_007_199_254_740_991_i64},
    })
}

/// Skipped resources listed in a status.
pub const MAX_SKIPPED: usize = 50;

/// A resource the capture could not read.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SkippedResource {
    /// `plural.group` (or an API group whose discovery failed, or
    /// `Kind name` of a cluster-scoped object).
    pub resource: String,
    /// Why.
    pub reason: String,
}

/// The ServiceAccount an application restore creates objects as, when it
/// names none: the namespace's owner creates it and binds it to `edit` (or
/// `admin`, to restore Roles and RoleBindings).
pub const DEFAULT_RESTORE_ACCOUNT: &str = "coffer-restore";

fn default_restore_account() -> String {
    DEFAULT_RESTORE_ACCOUNT.to_string()
}

/// Object results listed in an ApplicationRestore's status.
pub const MAX_RESULTS: usize = 200;

/// A restore of an application backup into this namespace: its objects,
/// cleaned of the old cluster, created in dependency order with the rights
/// of spec.serviceAccountName, its claims filled with their data first.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "ApplicationRestore",
    namespaced,
    doc = "Restores an application backup into this namespace: from an ApplicationBackup of this namespace by name, or from the repository alone by origin (cluster, namespace, asOf) or id. Claims are created filled with their data (a RestoreSource each) before the workloads; every object's result is in the status.",
    category = "coffer",
    status = "ApplicationRestoreStatus",
    shortname = "appr",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Created","type":"integer","jsonPath":".status.objects.counts.Created"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.objects.counts.Failed"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".status.snapshotID"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.backup) != has(self.snapshot)",
     "message": "name the backup to restore: spec.backup (an ApplicationBackup of this namespace) or spec.snapshot (an id, or an origin's cluster and namespace), not both"},
    {"rule": "self == oldSelf || (self.cancel && !oldSelf.cancel)",
     "message": "an ApplicationRestore cannot change once made, apart from spec.cancel; create a new one"}
]))]
pub struct ApplicationRestoreSpec {
    /// An ApplicationBackup of this namespace, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Or from the repository alone: a snapshot id, or the latest
    /// application backup of an origin (`cluster`, `namespace`, `asOf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSource>,
    /// The BackupRepository, in this namespace.
    #[serde(default = "default_repository")]
    pub repository: String,
    /// The ServiceAccount of this namespace that creates the objects: what
    /// it may not create is reported per object.
    #[serde(default = "default_restore_account")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: String,
    /// Only these resources (`plural.group`, `plural` or the kind).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_resources: Vec<String>,
    /// Not these resources (same spelling).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_resources: Vec<String>,
    /// Only objects with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// What an object that already exists gets: `None` (left alone and
    /// reported, the default) or `Update` (replaced by the backed-up one).
    #[serde(default)]
    pub existing_resource_policy: ExistingResourcePolicy,
    /// Storage classes renamed on the restored claims (old: new).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_class_mapping: BTreeMap<String, String>,
    /// Fill the claims with their backed-up data (the default); `false`
    /// creates them empty.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub volume_data: bool,
    /// Commands run in restored pods once they are Ready (a database's
    /// post-restore step), in order, after the objects are created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<RestoreHook>,
    /// Set to true to stop the restore; it ends Canceled.
    #[serde(default)]
    pub cancel: bool,
}

/// A command run in the restored pods a selector picks, once every one of
/// them is Ready (waited for at most the controller's `--prepare-timeout`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreHook {
    /// The pods it runs in: each pod with these labels.
    pub selector: Selector,
    /// The container (default: the pod's first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The command and its arguments, as exec takes them (no shell).
    #[schemars(length(min = 1, max = 256))]
    pub command: Vec<String>,
    /// How long it may run in each pod (`30s`, the default; at most `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// `Fail` (the default: the restore ends PartiallyFailed, naming it) or
    /// `Continue` (a Warning Event).
    #[serde(default)]
    pub on_error: HookOnError,
}

/// What a failed restore hook does.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HookOnError {
    /// The restore ends PartiallyFailed, naming the hook.
    #[default]
    Fail,
    /// A Warning Event; the restore goes on.
    Continue,
}

/// What an application restore does with an object that already exists.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExistingResourcePolicy {
    /// Left as it is, and reported as `Existing`.
    #[default]
    None,
    /// Replaced by the backed-up object (what the cluster assigned stays).
    Update,
}

/// The status of an ApplicationRestore.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRestoreStatus {
    /// Where it stands, as for every run (`snapshotID`: the snapshot read).
    #[serde(flatten)]
    pub run: RunStatus,
    /// The namespace the backup was taken in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// What became of the objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<RestoredObjects>,
    /// The claims filled with their data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<RestoredVolume>,
    /// How many of `spec.hooks` have run (their runs are in `hooks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub hooks_done: Option<u32>,
    /// When the next hook began waiting for its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_waiting_since: Option<Timestamp>,
    /// The failures of hooks whose `onError` is `Fail`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_hooks: Vec<String>,
}

/// What became of an application restore's objects.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RestoredObjects {
    /// Objects by result: `Created`, `Existing`, `Updated`, `Skipped`,
    /// `Failed`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "counts_schema")]
    pub counts: BTreeMap<String, u64>,
    /// Each object's result: the failures first, then the others in
    /// creation order (the first [`MAX_RESULTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<ObjectResult>,
}

/// One object of an application restore.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ObjectResult {
    /// Its kind (`Deployment.apps`).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// `Created`, `Existing`, `Updated`, `Skipped` or `Failed`.
    pub result: String,
    /// Why, in the API server's words where it refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A claim an application restore filled.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RestoredVolume {
    /// The claim.
    pub pvc: String,
    /// The snapshot of its data.
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    /// The bytes of its data, as the snapshot records them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub bytes: Option<u64>,
}

/// Where a run stands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Not picked up yet.
    #[default]
    New,
    /// An agent is running it.
    InProgress,
    /// Done, every file included.
    Completed,
    /// Done, but some files could not be read or written (`errors`).
    PartiallyFailed,
    /// Did not produce a result; `message` says why.
    Failed,
    /// Stopped through `spec.cancel`.
    Canceled,
}

impl Phase {
    /// Whether the run is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Phase::Completed | Phase::PartiallyFailed | Phase::Failed | Phase::Canceled
        )
    }

    /// The name used in status, metrics and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::New => "New",
            Phase::InProgress => "InProgress",
            Phase::Completed => "Completed",
            Phase::PartiallyFailed => "PartiallyFailed",
            Phase::Failed => "Failed",
            Phase::Canceled => "Canceled",
        }
    }
}

/// Bytes and files done, with totals when known.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Bytes read (backup) or written (restore).
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub bytes_done: u64,
    /// All bytes, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub total_bytes: Option<u64>,
    /// Files done.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub files_done: u64,
    /// All files, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub total_files: Option<u64>,
}

/// Files that could not be read or written.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunErrors {
    /// How many.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub count: u64,
    /// The first few, each `path: reason`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// The status of a VolumeBackup or a VolumeRestore.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// The hooks run so far, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRun>,
    /// Where the run stands.
    #[serde(default)]
    pub phase: Phase,
    /// The node whose agent runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The path recorded in the snapshot (the volume's mount path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For method `Snapshot`: the PersistentVolumeClaim read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    /// For method `Snapshot`: the step the controller is at
    /// (`Snapshotting`, `Moving`, `CleaningUp`, `Done`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// For a restore into a new PVC: the claim recorded in the snapshot,
    /// from which the PVC is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_claim: Option<RecordedClaim>,
    /// The snapshot written (backup) or read (restore).
    #[serde(
        default,
        rename = "snapshotID",
        skip_serializing_if = "Option::is_none"
    )]
    pub snapshot_id: Option<String>,
    /// Bytes and files done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Bytes added to the repository by this backup (after deduplication
    /// and compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub incremental_bytes: Option<u64>,
    /// When the agent started it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Timestamp>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Timestamp>,
    /// How long it ran, from start to end, for humans (`4m 12s`): the
    /// Duration column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The bytes read (backup) or written (restore) when it ended, for
    /// humans (`1.2 GiB`): the Size column (`progress.bytesDone` has the
    /// number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// What happened, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Files that could not be read (backup) or written (restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<RunErrors>,
    /// How many times an agent started this run (a restart resumes it; after
    /// [`MAX_ATTEMPTS`] it fails).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0, max = 1000000))]
    pub attempts: u32,
    /// `Completed` and `Failed`, as a Job has them: both `False` while it
    /// runs, then one of them `True` (`kubectl wait
    /// --for=condition=Completed`); the reason is the phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub observed_generation: Option<i64>,
}

/// A PersistentVolumeClaim as a snapshot recorded it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedClaim {
    /// Its capacity (`10Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Its access modes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// `Filesystem` or `Block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// Its storage class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Starts of one run before it is marked Failed (an agent that dies on it
/// every time must not loop forever).
pub const MAX_ATTEMPTS: u32 = 3;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Backups on a schedule: at each time, one VolumeBackup per selected
/// volume; after the runs, the retention policy, per origin, over the
/// snapshots this schedule made. Run by the controller.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "coffer.dev",
    version = "v1alpha1",
    kind = "BackupSchedule",
    namespaced,
    doc = "Backs up the volumes its selector picks on a schedule, applies retention to their snapshots, and keeps the runs of its latest times.",
    category = "coffer",
    status = "BackupScheduleStatus",
    shortname = "bsched",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Method","type":"string","jsonPath":".spec.method"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused"}"#,
    printcolumn = r#"{"name":"Last","type":"date","jsonPath":".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name":"Next","type":"string","jsonPath":".status.nextScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.application) == has(oldSelf.application)",
     "message": "spec.application cannot be added or removed: a schedule backs up volumes or an application, and its runs and retention follow that; create a new schedule"}
]))]
pub struct BackupScheduleSpec {
    /// When: the annotation's language (five-field cron, `@daily`,
    /// `@every 6h`, `@daily-random`, ...), spread by this schedule's name.
    pub schedule: String,
    /// Which volumes: pods (method Filesystem), or PVCs and the PVCs of
    /// pods (method Snapshot), whose labels match.
    #[serde(default)]
    pub selector: Selector,
    /// Only these volume names of the selected pods (default: every volume
    /// that is a PVC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// How each volume is read.
    #[serde(default)]
    pub method: BackupMethod,
    /// The BackupRepository, in this namespace.
    #[serde(default = "default_repository")]
    pub repository: String,
    /// Tags recorded in every snapshot (besides `coffer.dev/schedule=NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Patterns to leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// What to keep of this schedule's snapshots, per origin, after each
    /// run (nothing is forgotten without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Stop scheduling (runs already started go on; `backup-now` still works).
    #[serde(default)]
    pub paused: bool,
    /// What a time does while the previous runs are still going: `Forbid`
    /// (skip it, the default), `Allow`, or `Replace` (cancel them).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// How many of the latest times whose runs all succeeded keep their
    /// VolumeBackups (default 3, as a CronJob keeps Jobs); older ones are
    /// deleted. Their snapshots stay in the repository (retention decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub successful_runs_history_limit: Option<u32>,
    /// How many of the latest times with a failed or canceled run keep
    /// their VolumeBackups (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub failed_runs_history_limit: Option<u32>,
    /// Back up the namespace as an application instead: at each time, one
    /// ApplicationBackup with these fields (and this schedule's repository
    /// and tags), owned by the schedule; retention keeps or forgets each
    /// application backup whole (its objects' snapshot and its volumes'
    /// snapshots together). `selector`, `volumes`, `method` and `excludes`
    /// choose volumes and must not be set with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<ScheduledApplication>,
}

/// The ApplicationBackup a schedule of application backups makes at each
/// time: the fields of its spec that say what is captured.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledApplication {
    /// The ServiceAccount the objects are captured with (default
    /// `coffer-application`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Only these resources (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_resources: Vec<String>,
    /// Not these resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_resources: Vec<String>,
    /// Also the objects their controllers recreate.
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_recreated: bool,
    /// Only objects (and claims) with these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Back up the claims' data (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_data: Option<bool>,
}

/// Times whose runs all succeeded that a schedule keeps the runs of, when
/// `successfulRunsHistoryLimit` is not set.
pub const DEFAULT_SUCCESSFUL_HISTORY: u32 = 3;

/// Times with a failed run that a schedule keeps the runs of, when
/// `failedRunsHistoryLimit` is not set.
pub const DEFAULT_FAILED_HISTORY: u32 = 1;

/// Labels to match (all of them).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// `key: value` pairs.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl Selector {
    /// As a label selector string (`a=b,c=d`).
    pub fn to_query(&self) -> String {
        self.match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A retention policy, as `coffer forget` takes it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// The newest N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub keep_last: Option<u32>,
    /// The newest of each of the N newest hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub keep_hourly: Option<u32>,
    /// ... days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub keep_daily: Option<u32>,
    /// ... ISO weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub keep_weekly: Option<u32>,
    /// ... months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub keep_monthly: Option<u32>,
    /// ... years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub keep_yearly: Option<u32>,
    /// Everything within this of the newest (`30d`, `12h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
    /// Snapshots with any of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
}

/// What a schedule does while its previous runs go on.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Skip the new time.
    #[default]
    Forbid,
    /// Start the new runs beside them.
    Allow,
    /// Cancel them, then start the new runs.
    Replace,
}

/// Where a schedule stands.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// When it last created runs (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Timestamp>,
    /// When it last skipped a time (concurrencyPolicy Forbid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped_time: Option<Timestamp>,
    /// When a run of it last completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Timestamp>,
    /// When it fires next (none while paused or invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Timestamp>,
    /// The last `backup.coffer.dev/backup-now` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<String>,
    /// The runs of the last time that are not over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,
    /// A time claimed (`lastScheduleTime`) whose runs are not all created
    /// yet; a controller that stopped in between creates the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creating: Option<Timestamp>,
    /// The last retention pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retention: Option<RetentionResult>,
    /// `Scheduled`, `LastRunSucceeded`, `RetentionApplied`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub observed_generation: Option<i64>,
}

/// What a retention pass did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionResult {
    /// The `lastScheduleTime` whose runs it followed.
    pub after: Timestamp,
    /// When it ran.
    pub time: Timestamp,
    /// Snapshots kept.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub kept: u64,
    /// Snapshots forgotten.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub removed: u64,
    /// Origins (groups) it went through.
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub origins: u64,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One hook run.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookRun {
    /// `pre` or `post`.
    pub stage: String,
    /// The pod it ran in.
    pub pod: String,
    /// The container.
    pub container: String,
    /// Whether it exited 0 within its timeout.
    pub succeeded: bool,
    /// Why not, naming the hook and the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A condition, as Kubernetes objects report them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Its name.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// A CamelCase reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// For humans.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Timestamp>,
    /// The generation of the object it was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0_i64, max = 9_007_199_254_740_991_i64))]
    pub observed_generation: Option<i64>,
}

/// Every definition, as the YAML stream `coffer-agent crds` prints.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut out = String::from(
        "# Generated by `coffer-agent crds` from node-agent/src/crd.rs; do not edit.\n",
    );
    for crd in [
        BackupRepository::crd(),
        VolumeBackup::crd(),
        VolumeRestore::crd(),
        BackupSchedule::crd(),
        RestoreSource::crd(),
        ApplicationBackup::crd(),
        ApplicationRestore::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod spelling_tests {
    use super::*;

    #[test]
    fn sub_path_is_spelled_as_kubernetes_spells_it_and_the_old_spelling_still_reads() {
        let spec = |extra: serde_json::Value| -> VolumeRestoreSpec {
            let mut v = serde_json::json!({"snapshot": {}, "pod": "p", "volume": "v"});
            let fields = v.as_object_mut().unwrap();
            fields.extend(extra.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(
            spec(serde_json::json!({"subPath": "/etc"})).sub_path(),
            Some("/etc")
        );
        assert_eq!(
            spec(serde_json::json!({"subpath": "/var"})).sub_path(),
            Some("/var")
        );
        assert_eq!(
            spec(serde_json::json!({"subPath": "/new", "subpath": "/old"})).sub_path(),
            Some("/new")
        );
        assert_eq!(spec(serde_json::json!({})).sub_path(), None);
        let yaml = crds_yaml().unwrap();
        assert!(yaml.contains("subPath:") && yaml.contains("Deprecated spelling of `subPath`"));
    }
}
