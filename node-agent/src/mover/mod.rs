//! `coffer-agent mover`: the process inside a mover pod. It backs up one
//! mounted path or block device (a clone of a CSI snapshot), or restores a
//! snapshot into a new one, with the engine, in-process, and writes its
//! progress and result into the status of its VolumeBackup or VolumeRestore:
//! the only API access its ServiceAccount has.
//!
//! Everything else comes from its arguments (written by the controller) and
//! the repository's Secrets, which it reads through the API: its account may
//! read those Secrets (by name) and write that one status, nothing else.

use std::path::PathBuf;
use std::sync::Arc;

use coffer_engine::backup::ChangeRules;
use coffer_engine::forget::OriginFilter;
use coffer_engine::format::snapshot::KubernetesOrigin;
use coffer_engine::{CancelToken, Repository};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::Client;

use crate::crd::{
    BackupRepository, BackupSchedule, CheckResult, CopyResult, Phase, PruneResult, RestorePolicy,
    RetentionResult, SecretKeyRef, SnapshotSource, Timestamp, VolumeBackup, VolumeRestore,
};
use crate::report::STATUS_INTERVAL;
use crate::repos::{read_credentials, read_password};

pub mod apply;
pub mod args;
pub mod capture;
use crate::status::{self, Outcome};
use crate::volume_backup;

/// How a mover opens its repository: its arguments, and the Secrets they
/// name, read through the API with the mover's own account.
#[derive(Clone, Debug)]
pub struct RepoAccess {
    /// The repository.
    pub url: String,
    /// Store options (`s3.endpoint`, ...).
    pub options: Vec<(String, String)>,
    /// The namespace of the BackupRepository and its Secrets.
    pub namespace: String,
    /// The BackupRepository, for messages.
    pub repository: String,
    /// Its password Secret and key.
    pub password: SecretKeyRef,
    /// Its credentials Secret.
    pub credentials: Option<String>,
    /// Create the repository when it does not exist.
    pub init: bool,
    /// What the administrator allows (the controller's, passed on).
    pub policy: crate::policy::TenantPolicy,
}

impl RepoAccess {
    /// Reads its Secrets, then opens (or creates) the repository; the
    /// error is the run's message.
    pub(crate) async fn open(&self, client: &Client) -> Result<Arc<Repository>, String> {
        let ns = &self.namespace;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let password = read_password(&secrets, ns, &self.repository, &self.password)
            .await
            .map_err(|e| e.to_string())?;
        let mut options = self.options.clone();
        if let Some(name) = &self.credentials {
            let data = read_credentials(&secrets, ns, name)
                .await
                .map_err(|e| e.to_string())?;
            options.extend(crate::repos::credential_options(&self.url, &data));
        }
        crate::repos::open_or_init(&self.url, options, &password, self.init, &self.policy)
            .await
            .map(Arc::new)
            .map_err(|e| {
                format!(
                    "repository {}: {e}",
                    coffer_engine::storage::redact(&self.url)
                )
            })
    }
}

/// One backup, as the controller describes it.
#[derive(Clone, Debug)]
pub struct BackupJob {
    /// The VolumeBackup's namespace.
    pub namespace: String,
    /// The VolumeBackup whose status is written.
    pub run: String,
    /// The repository.
    pub repo: RepoAccess,
    /// What is read (the clone's mount or device) and recorded.
    pub source: volume_backup::Source,
}

/// The backup of a clone of PVC `origin.pvc`, read at `path`: its parent is
/// the newest snapshot of that claim. Every clone is new: a CSI driver that
/// clones by copying files gives every file a new inode and ctime, so those
/// do not count as changes (`--ignore-inode`; the snapshot records it).
pub fn clone_source(
    path: PathBuf,
    record_path: PathBuf,
    origin: KubernetesOrigin,
) -> volume_backup::Source {
    volume_backup::Source {
        path,
        record_path,
        parent: OriginFilter {
            cluster: origin.cluster.clone(),
            namespace: origin.namespace.clone(),
            pvc: origin.pvc.clone(),
            ..Default::default()
        },
        origin,
        hostname: String::new(),
        program: format!("coffer-agent mover {}", env!("CARGO_PKG_VERSION")),
        tags: Vec::new(),
        excludes: Vec::new(),
        threads: 1,
        read_window: coffer_engine::backup::DEFAULT_SEGMENT_SIZE,
        read_limit: None,
        timing: coffer_engine::protocol::Timing::from_env(),
        changes: ChangeRules {
            ignore_inode: true,
            ignore_ctime: false,
        },
    }
}

/// Runs the backup and reports it; returns the final phase (also when the
/// run had already been ended by the controller: then nothing is written).
pub async fn backup(client: Client, job: BackupJob, cancel: CancelToken) -> Phase {
    let outcome = run_backup(&client, &job, &cancel).await;
    report::<VolumeBackup>(&client, &job.namespace, &job.run, outcome).await
}

/// Writes a run's result into its status; returns its final phase (also
/// when the run had already been ended by the controller: then nothing is
/// written).
async fn report<K>(client: &Client, ns: &str, name: &str, outcome: Outcome) -> Phase
where
    K: crate::run::RunObject,
{
    report_as::<K>(client, ns, name, outcome, status::finished).await
}

/// [`report`], with `write` making the status of the outcome.
async fn report_as<K>(
    client: &Client,
    ns: &str,
    name: &str,
    outcome: Outcome,
    write: fn(crate::crd::RunStatus, Outcome) -> crate::crd::RunStatus,
) -> Phase
where
    K: crate::run::RunObject,
{
    if let Outcome::Failed(m) = &outcome {
        tracing::error!(namespace = ns, run = name, "{m}");
    }
    let written = crate::report::update_run::<K>(client, ns, name, |s| {
        *s = write(s.clone(), outcome.clone());
    })
    .await;
    match written {
        Some(s) => s.phase,
        None => {
            tracing::info!(
                namespace = ns,
                run = name,
                "the run had already ended; its status is left as it is"
            );
            match outcome {
                Outcome::Done { .. } => Phase::Completed,
                Outcome::Canceled => Phase::Canceled,
                Outcome::Failed(_) => Phase::Failed,
            }
        }
    }
}

/// A schedule's retention pass.
#[derive(Clone, Debug)]
pub struct ForgetJob {
    /// The BackupSchedule's namespace (and its snapshots' origin namespace).
    pub namespace: String,
    /// The BackupSchedule whose status is written.
    pub schedule: String,
    /// The repository.
    pub repo: RepoAccess,
    /// Only snapshots with this tag (the schedule's).
    pub tag: String,
    /// Only snapshots of this cluster.
    pub cluster: Option<String>,
    /// The schedule time whose runs this pass follows.
    pub after: Timestamp,
    /// What to keep, per origin.
    pub policy: coffer_engine::forget::Policy,
    /// The schedule makes application backups: each is kept or forgotten
    /// whole ([`crate::repos::forget_applications`]).
    pub applications: bool,
    /// The schedule's ApplicationBackups not ended yet.
    pub running: Vec<String>,
}

/// Applies the policy per origin to the schedule's snapshots and writes
/// what it did into the schedule's `status.lastRetention`. Returns whether
/// it succeeded.
pub async fn forget(client: Client, job: ForgetJob, cancel: CancelToken) -> bool {
    use coffer_engine::forget::Filter;
    let run = async {
        let repo = job.repo.open(&client).await?;
        let filter = Filter {
            tags: vec![job.tag.clone()],
            origin: OriginFilter {
                cluster: job.cluster.clone(),
                namespace: Some(job.namespace.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let cluster = job.cluster.as_ref();
        let (plan, removed) = if job.applications {
            let (policy, running) = (&job.policy, &job.running);
            crate::repos::forget_applications(&repo, cluster, &filter, policy, running, &cancel)
                .await?
        } else {
            crate::repos::forget_per_origin(&repo, cluster, &filter, &job.policy, &cancel).await?
        };
        let kept: usize = plan.groups.iter().map(|g| g.keep.len()).sum();
        // With application backups, each claim's group and the objects'
        // group are origins alike.
        for g in &plan.groups {
            tracing::info!(
                origin = g.key,
                kept = g.keep.len(),
                removed = g.remove.len(),
                "retention"
            );
        }
        Ok::<_, String>(RetentionResult {
            after: job.after,
            time: crate::time::Timestamp::now(),
            kept: kept as u64,
            removed: removed as u64,
            origins: plan.groups.len() as u64,
            error: None,
        })
    };
    let result = run.await.unwrap_or_else(|e| RetentionResult {
        after: job.after,
        time: crate::time::Timestamp::now(),
        error: Some(e),
        ..Default::default()
    });
    let ok = result.error.is_none();
    if let Some(e) = &result.error {
        tracing::error!(namespace = job.namespace, schedule = job.schedule, "{e}");
    }
    let written = crate::report::patch_status::<BackupSchedule>(
        &client,
        &job.namespace,
        &job.schedule,
        serde_json::json!({ "lastRetention": result }),
        None,
    )
    .await;
    if written.as_ref().ok() != Some(&crate::report::Written::Applied) {
        tracing::error!(
            namespace = job.namespace,
            schedule = job.schedule,
            "cannot write the result: {written:?}"
        );
        return false;
    }
    ok
}

/// A repository's scheduled prune or check.
#[derive(Clone, Debug)]
pub struct MaintenanceJob {
    /// The BackupRepository's namespace.
    pub namespace: String,
    /// The BackupRepository whose status is written.
    pub repository: String,
    /// The repository.
    pub repo: RepoAccess,
    /// The schedule time this job runs for.
    pub scheduled_at: Timestamp,
}

impl MaintenanceJob {
    /// Writes `field` of the BackupRepository's status; returns whether it
    /// was written.
    async fn write(&self, client: Client, field: &str, value: serde_json::Value) -> bool {
        let written = crate::report::patch_status::<BackupRepository>(
            &client,
            &self.namespace,
            &self.repository,
            serde_json::json!({ field: value }),
            None,
        )
        .await;
        let ok = written.as_ref().ok() == Some(&crate::report::Written::Applied);
        if !ok {
            tracing::error!(
                namespace = self.namespace,
                repository = self.repository,
                "cannot write {field}: {written:?}"
            );
        }
        ok
    }
}

/// Prunes the repository beside running backups, and writes what it freed
/// into `status.lastPrune`. Returns whether it succeeded.
pub async fn prune(
    client: Client,
    job: MaintenanceJob,
    max_unused_percent: f64,
    cancel: CancelToken,
) -> bool {
    use coffer_engine::prune::{prune, PruneOptions};
    let run = async {
        let repo = job.repo.open(&client).await?;
        let opts = PruneOptions {
            max_unused_percent,
            cancel,
            timing: coffer_engine::protocol::Timing::from_env(),
            ..Default::default()
        };
        prune(repo, opts).await.map_err(|e| e.to_string())
    };
    let result = match run.await {
        Ok(plan) => PruneResult {
            scheduled_at: job.scheduled_at,
            time: crate::time::Timestamp::now(),
            bytes_freed: plan.bytes_freed,
            bytes_repacked: plan.bytes_repacked,
            packs_deleted: (plan.delete_packs.len()
                + plan.repack_packs.len()
                + plan.unindexed_packs.len()) as u64,
            total_bytes: plan.total_bytes.saturating_sub(plan.bytes_freed),
            sessions_waited: plan.sessions_waited as u64,
            executed: plan.executed,
            error: None,
        },
        Err(e) => PruneResult {
            scheduled_at: job.scheduled_at,
            time: crate::time::Timestamp::now(),
            error: Some(e),
            ..Default::default()
        },
    };
    tracing::info!(
        namespace = job.namespace,
        repository = job.repository,
        freed = result.bytes_freed,
        error = result.error,
        "prune"
    );
    let ok = result.error.is_none();
    job.write(client, "lastPrune", serde_json::json!(result))
        .await
        && ok
}

/// The repository a copy writes into.
pub struct CopyDestination {
    /// Its BackupRepository.
    pub name: String,
    /// How to open it.
    pub repo: RepoAccess,
}

/// Copies every snapshot of the repository that the destination does not
/// have yet (`coffer copy`), and writes what it did into
/// `status.lastCopy`. Returns whether it succeeded.
pub async fn copy(
    client: Client,
    job: MaintenanceJob,
    dest: CopyDestination,
    cancel: CancelToken,
) -> bool {
    use coffer_engine::copy::{copy, CopyOptions};
    let run = async {
        let src = job.repo.open(&client).await?;
        let dst = dest.repo.open(&client).await?;
        let snapshots = src.snapshots().await.map_err(|e| e.to_string())?;
        let opts = CopyOptions {
            cancel,
            timing: coffer_engine::protocol::Timing::from_env(),
            ..Default::default()
        };
        copy(src, dst, snapshots, opts)
            .await
            .map_err(|e| e.to_string())
    };
    let result = match run.await {
        Ok(done) => CopyResult {
            scheduled_at: job.scheduled_at,
            time: crate::time::Timestamp::now(),
            destination: dest.name.clone(),
            snapshots_copied: done.iter().filter(|c| c.new.is_some()).count() as u64,
            snapshots_skipped: done.iter().filter(|c| c.already.is_some()).count() as u64,
            bytes_read: done.iter().map(|c| c.bytes_read).sum(),
            bytes_stored: done.iter().map(|c| c.bytes_stored).sum(),
            error: None,
        },
        Err(e) => CopyResult {
            scheduled_at: job.scheduled_at,
            time: crate::time::Timestamp::now(),
            destination: dest.name.clone(),
            error: Some(e),
            ..Default::default()
        },
    };
    tracing::info!(
        namespace = job.namespace,
        repository = job.repository,
        destination = dest.name,
        copied = result.snapshots_copied,
        error = result.error,
        "copy"
    );
    let ok = result.error.is_none();
    job.write(client, "lastCopy", serde_json::json!(result))
        .await
        && ok
}

/// How many problems a check's status lists (the mover's log has them all).
const LISTED_PROBLEMS: usize = 10;

/// Checks the repository (and downloads the subset of packs), and writes
/// the result into `status.lastCheck`. Returns whether the check ran and
/// found nothing wrong.
pub async fn check(
    client: Client,
    job: MaintenanceJob,
    subset: Option<String>,
    cancel: CancelToken,
) -> bool {
    use coffer_engine::check::{check, CheckOptions, ReadData};
    let run = async {
        let read_data = match &subset {
            Some(s) => ReadData::parse_subset(s).map_err(|e| format!("readDataSubset: {e}"))?,
            None => ReadData::None,
        };
        let repo = job.repo.open(&client).await?;
        let opts = CheckOptions {
            read_data,
            cancel,
            ..Default::default()
        };
        check(repo, opts).await.map_err(|e| e.to_string())
    };
    let result = match run.await {
        Ok(report) => {
            for p in &report.problems {
                tracing::error!(object = p.object, kind = p.kind, "{}", p.message);
            }
            CheckResult {
                scheduled_at: job.scheduled_at,
                time: crate::time::Timestamp::now(),
                ok: report.is_ok(),
                read_data_subset: subset.clone(),
                snapshots: report.snapshots,
                packs: report.packs,
                packs_read: report.packs_read,
                problems: report.problems.len() as u64,
                first_problems: report
                    .problems
                    .iter()
                    .take(LISTED_PROBLEMS)
                    .map(|p| format!("{}: {}", p.object, p.message))
                    .collect(),
                error: None,
            }
        }
        Err(e) => CheckResult {
            scheduled_at: job.scheduled_at,
            time: crate::time::Timestamp::now(),
            read_data_subset: subset.clone(),
            error: Some(e),
            ..Default::default()
        },
    };
    tracing::info!(
        namespace = job.namespace,
        repository = job.repository,
        ok = result.ok,
        problems = result.problems,
        error = result.error,
        "check"
    );
    let ok = result.ok;
    job.write(client, "lastCheck", serde_json::json!(result))
        .await
        && ok
}

/// A restore into a new PVC, first step: which snapshot, and the claim it
/// recorded (the controller makes the PVC from it).
#[derive(Clone, Debug)]
pub struct ResolveJob {
    /// The VolumeRestore's namespace.
    pub namespace: String,
    /// The VolumeRestore whose status is written.
    pub run: String,
    /// The repository.
    pub repo: RepoAccess,
    /// The repository's name, for messages.
    pub repository: String,
    /// The snapshot, by id or origin.
    pub snapshot: SnapshotSource,
}

/// Finds the snapshot and writes its id and recorded claim into the run's
/// status (the phase stays InProgress); a snapshot not found fails the run.
/// Returns whether it was found.
pub async fn resolve(client: Client, job: ResolveJob) -> bool {
    let found = match job.repo.open(&client).await {
        Ok(repo) => {
            crate::snapshot_source::find_snapshot(
                &repo,
                &job.snapshot,
                &job.namespace,
                &job.repository,
            )
            .await
        }
        Err(m) => Err(m),
    };
    match found {
        Ok((id, snap)) => {
            let claim = crate::snapshot_source::recorded_claim(&snap);
            tracing::info!(
                namespace = job.namespace,
                run = job.run,
                snapshot = id,
                "found"
            );
            crate::report::update_run::<VolumeRestore>(&client, &job.namespace, &job.run, |s| {
                s.snapshot_id = Some(id.clone());
                s.source_claim = Some(claim.clone());
            })
            .await
            .is_some()
        }
        Err(m) => {
            report::<VolumeRestore>(&client, &job.namespace, &job.run, Outcome::Failed(m)).await;
            false
        }
    }
}

/// A restore into a new PVC, second step: the snapshot written into the
/// mounted volume.
#[derive(Clone, Debug)]
pub struct RestoreJob {
    /// The VolumeRestore's namespace.
    pub namespace: String,
    /// The VolumeRestore whose status is written.
    pub run: String,
    /// The repository.
    pub repo: RepoAccess,
    /// The snapshot's id.
    pub snapshot: String,
    /// Restore only this path inside the snapshot.
    pub subpath: Option<String>,
    /// The new volume: its mount, or its device.
    pub target: PathBuf,
    /// Whether `target` is a block device.
    pub block: bool,
    /// Restore device nodes and setuid/setgid bits.
    pub special_files: bool,
}

/// Restores and reports; returns the final phase.
pub async fn restore(client: Client, job: RestoreJob, cancel: CancelToken) -> Phase {
    let outcome = match job.repo.open(&client).await {
        Err(m) => Outcome::Failed(m),
        Ok(repo) => {
            let target = crate::restore_target::Target {
                path: &job.target,
                block: job.block,
                policy: if job.block {
                    RestorePolicy::Overwrite
                } else {
                    RestorePolicy::IfEmpty
                },
                what: "the new PersistentVolumeClaim",
                special_files: job.special_files,
            };
            let subpath = job.subpath.as_deref();
            let (progress, reporter) = crate::report::restore_progress(
                client.clone(),
                job.namespace.clone(),
                job.run.clone(),
                STATUS_INTERVAL,
            );
            let result = crate::restore_target::restore_into(
                repo,
                &job.snapshot,
                subpath,
                &target,
                &cancel,
                Some(progress),
            )
            .await;
            reporter.abort();
            match result {
                Ok(o) => o,
                Err(coffer_engine::Error::Cancelled) => Outcome::Failed(
                    "the mover was stopped (its pod was deleted or evicted); the restore is incomplete".into(),
                ),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
    };
    // The controller hands the volume to the target claim, then ends the run.
    match report_as::<VolumeRestore>(&client, &job.namespace, &job.run, outcome, status::filled)
        .await
    {
        Phase::InProgress => Phase::Completed,
        phase => phase,
    }
}

async fn run_backup(client: &Client, job: &BackupJob, cancel: &CancelToken) -> Outcome {
    let repo = match job.repo.open(client).await {
        Ok(r) => r,
        Err(m) => return Outcome::Failed(m),
    };
    match volume_backup::run(client, &job.namespace, &job.run, repo, &job.source, cancel).await {
        Ok((outcome, _)) => outcome,
        Err(coffer_engine::Error::Cancelled) => Outcome::Failed(
            "the mover was stopped (its pod was deleted or evicted); no snapshot was written"
                .into(),
        ),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

impl args::MoverCommon {
    /// How this mover opens its repository.
    pub fn repo(&self) -> RepoAccess {
        RepoAccess {
            url: self.repository_url.clone(),
            options: self.options.clone(),
            namespace: self
                .repository_namespace
                .clone()
                .unwrap_or_else(|| self.namespace.clone()),
            repository: self.repository.clone(),
            password: SecretKeyRef {
                name: self.password_secret.clone(),
                key: self.password_key.clone(),
            },
            credentials: self.credentials_secret.clone(),
            init: self.init,
            policy: self.policy.clone(),
        }
    }

    /// A maintenance job on the repository this mover reports to.
    pub fn maintenance(&self, scheduled_at: Timestamp) -> MaintenanceJob {
        MaintenanceJob {
            namespace: self.namespace.clone(),
            repository: self.run.clone(),
            repo: self.repo(),
            scheduled_at,
        }
    }
}
