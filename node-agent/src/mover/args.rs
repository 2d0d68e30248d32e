//! The mover's command line: one type that the controller writes
//! ([`MoverArgs::to_argv`]) into a mover pod's arguments and the mover parses
//! (clap), so that the two sides cannot drift apart. A round trip through
//! both is tested for every kind of mover.
//!
//! Paths are arguments of their own (`--source /coffer/source`), never
//! parts of another, so that whoever runs a pod's arguments can see them.

use std::path::PathBuf;

use coffer_engine::format::snapshot::KubernetesOrigin;
use serde::de::DeserializeOwned;

use crate::crd::{Retention, SnapshotSource, Timestamp};
use crate::policy::TenantPolicy;

/// What a mover pod does; `coffer-agent mover <this>`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq)]
pub enum MoverArgs {
    /// Back up a mounted clone into the repository
    Backup(Box<BackupArgs>),
    /// Find the snapshot a VolumeRestore names; write its id and recorded claim into the run's status
    Resolve(Box<ResolveArgs>),
    /// Restore a snapshot into a mounted new volume
    Restore(Box<RestoreArgs>),
    /// Apply a schedule's retention policy, per origin, to its snapshots
    Forget(Box<ForgetArgs>),
    /// Prune the repository (scheduled maintenance); write what it freed into the BackupRepository's status
    Prune(Box<PruneArgs>),
    /// Check the repository (scheduled maintenance); write the result into the BackupRepository's status
    Check(Box<CheckArgs>),
    /// Copy every snapshot not copied yet into a second repository (scheduled maintenance); write the result into the BackupRepository's status
    Copy(Box<CopyArgs>),
    /// Capture a namespace's objects, with this pod's account's rights, into an application snapshot (SPEC.md §16); write what was captured into the ApplicationBackup's status
    Capture(Box<CaptureArgs>),
    /// Restore an application snapshot's objects into the namespace, with this pod's account's rights; write each object's result into the ApplicationRestore's status
    RestoreApplication(Box<RestoreApplicationArgs>),
}

/// `mover restore-application`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct RestoreApplicationArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: MoverCommon,
    /// The ApplicationRestore's uid (its RestoreSources are owned by it)
    #[arg(long)]
    pub restore_uid: String,
    /// Which snapshot, as JSON (spec.snapshot's fields)
    #[arg(long, value_parser = json::<SnapshotSource>)]
    pub snapshot: SnapshotSource,
    /// Only these resources (repeatable)
    #[arg(long = "include")]
    pub include: Vec<String>,
    /// Not these resources (repeatable)
    #[arg(long = "exclude")]
    pub exclude: Vec<String>,
    /// Only objects with this label (KEY=VALUE, repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// Replace objects that exist (else leave them and report them)
    #[arg(long)]
    pub update_existing: bool,
    /// A storage class renamed (OLD=NEW, repeatable)
    #[arg(long = "storage-class", value_name = "OLD=NEW", value_parser = parse_pair)]
    pub storage_classes: Vec<(String, String)>,
    /// Create the claims empty (not filled with their data)
    #[arg(long)]
    pub no_volume_data: bool,
    /// How long the restored claims may take to be filled and bound
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub bind_timeout: std::time::Duration,
}

/// `mover capture`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct CaptureArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: MoverCommon,
    /// Only these resources (`plural.group`, `plural` or the kind; repeatable)
    #[arg(long = "include")]
    pub include: Vec<String>,
    /// Not these resources (same spelling; repeatable)
    #[arg(long = "exclude")]
    pub exclude: Vec<String>,
    /// Also objects that their controller recreates (a Deployment's ReplicaSets, their Pods, ...)
    #[arg(long)]
    pub include_recreated: bool,
    /// Only objects with these labels (a label selector)
    #[arg(long)]
    pub selector: Option<String>,
    /// Where the objects are written before they are backed up (private to the pod)
    #[arg(long, default_value = "/tmp")]
    pub work_dir: PathBuf,
    /// The cluster's name, recorded in the snapshot's origin
    #[arg(long)]
    pub cluster: Option<String>,
    /// Tags recorded in the snapshot besides the application's (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A claim whose data the application backup wrote, and that snapshot (PVC=SNAPSHOT, repeatable): recorded in application.json
    #[arg(long = "volume", value_name = "PVC=SNAPSHOT", value_parser = parse_pair)]
    pub volumes: Vec<(String, String)>,
}

/// What every mover takes: its run, and how to open the repository.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct MoverCommon {
    /// The run's namespace
    #[arg(long)]
    pub namespace: String,
    /// The VolumeBackup, VolumeRestore, BackupSchedule or BackupRepository whose status this mover writes
    #[arg(long)]
    pub run: String,
    /// The repository's URL
    #[arg(long)]
    pub repository_url: String,
    /// Store options, KEY=VALUE (repeatable)
    #[arg(long = "option", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub options: Vec<(String, String)>,
    /// The BackupRepository opened, for messages
    #[arg(long)]
    pub repository: String,
    /// The namespace of the BackupRepository and its Secrets, when it is not --namespace
    #[arg(long)]
    pub repository_namespace: Option<String>,
    /// The Secret holding the repository's password, read through the API
    #[arg(long)]
    pub password_secret: String,
    /// The password's key in that Secret
    #[arg(long, default_value = "password")]
    pub password_key: String,
    /// The Secret holding the store's credentials, read through the API
    #[arg(long)]
    pub credentials_secret: Option<String>,
    /// Create the repository when it does not exist
    #[arg(long)]
    pub init: bool,
    /// Log format: json (default) or text; never written by the controller
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// The administrator's limits, as the controller that started this mover has them
    #[command(flatten)]
    pub policy: TenantPolicy,
}

/// `mover backup`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct BackupArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: MoverCommon,
    /// The mounted clone (a directory or a block device)
    #[arg(long)]
    pub source: PathBuf,
    /// The path recorded in the snapshot
    #[arg(long)]
    pub record_path: PathBuf,
    /// The Kubernetes origin recorded in the snapshot (JSON)
    #[arg(long, value_parser = json::<KubernetesOrigin>)]
    pub origin: KubernetesOrigin,
    /// Tags (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Exclude patterns (repeatable)
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// Engine threads
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Read the source no faster than RATE (e.g. 50MiB/s)
    #[arg(long, value_name = "RATE", value_parser = coffer_engine::backup::parse_rate)]
    pub limit_read: Option<u64>,
    /// The hostname recorded in the snapshot
    #[arg(long, default_value = "kubernetes")]
    pub hostname: String,
}

/// `mover resolve`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct ResolveArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: MoverCommon,
    /// The VolumeRestore's spec.snapshot (JSON)
    #[arg(long, value_parser = json::<SnapshotSource>)]
    pub snapshot: SnapshotSource,
}

/// `mover restore`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct RestoreArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: MoverCommon,
    /// The snapshot's id
    #[arg(long)]
    pub snapshot: String,
    /// The mounted new volume (a directory, or a block device with --block)
    #[arg(long)]
    pub target: PathBuf,
    /// The target is a block device
    #[arg(long)]
    pub block: bool,
    /// Restore only this path inside the snapshot
    #[arg(long)]
    pub subpath: Option<String>,
    /// Restore device nodes and setuid/setgid bits (the run's spec.specialFiles)
    #[arg(long)]
    pub special_files: bool,
}

/// `mover forget`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct ForgetArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: MoverCommon,
    /// Only snapshots with this tag (the schedule's)
    #[arg(long)]
    pub tag: String,
    /// The schedule time whose runs this pass follows
    #[arg(long)]
    pub after: Timestamp,
    /// Only snapshots of this cluster
    #[arg(long)]
    pub cluster: Option<String>,
    /// The schedule makes application backups: the policy keeps or forgets
    /// each one whole (its objects' snapshot and its volumes' snapshots)
    #[arg(long)]
    pub applications: bool,
    /// The schedule's ApplicationBackups not ended yet: their volumes'
    /// snapshots stay
    #[arg(long)]
    pub running: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub keep: KeepArgs,
}

/// A retention policy as flags: only the rules that are set are written.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct KeepArgs {
    /// Keep the newest N
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep the newest of each of N hours
    #[arg(long)]
    pub keep_hourly: Option<u32>,
    /// ... days
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// ... weeks
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// ... months
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    /// ... years
    #[arg(long)]
    pub keep_yearly: Option<u32>,
    /// Keep everything within this of the newest (30d, 12h)
    #[arg(long)]
    pub keep_within: Option<String>,
    /// Keep snapshots with this tag (repeatable)
    #[arg(long)]
    pub keep_tag: Vec<String>,
}

/// `mover prune`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct PruneArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: MoverCommon,
    /// The schedule time this job runs for
    #[arg(long)]
    pub scheduled_at: Timestamp,
    /// Unused space to leave in packs, in percent (default 5)
    #[arg(long)]
    pub max_unused_percent: Option<f64>,
}

/// `mover check`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct CheckArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: MoverCommon,
    /// The schedule time this job runs for
    #[arg(long)]
    pub scheduled_at: Timestamp,
    /// Download and verify this subset of packs: n/m or P%
    #[arg(long)]
    pub read_data_subset: Option<String>,
}

/// `mover copy`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct CopyArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: MoverCommon,
    /// The schedule time this job runs for
    #[arg(long)]
    pub scheduled_at: Timestamp,
    /// The BackupRepository copied into (in --namespace)
    #[arg(long)]
    pub to: String,
    /// The destination's URL
    #[arg(long)]
    pub to_repository_url: String,
    /// The destination's store options, KEY=VALUE (repeatable)
    #[arg(long = "to-option", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub to_options: Vec<(String, String)>,
    /// The Secret holding the destination's password
    #[arg(long)]
    pub to_password_secret: String,
    /// The password's key in that Secret
    #[arg(long, default_value = "password")]
    pub to_password_key: String,
    /// The Secret holding the destination store's credentials
    #[arg(long)]
    pub to_credentials_secret: Option<String>,
    /// Create the destination when it does not exist
    #[arg(long)]
    pub to_init: bool,
}

/// The arguments written: flags and their values, in order.
struct Argv(Vec<String>);

impl Argv {
    fn flag(&mut self, name: &str, value: impl Into<String>) {
        self.0.push(name.into());
        self.0.push(value.into());
    }

    fn opt(&mut self, name: &str, value: Option<impl ToString>) {
        if let Some(v) = value {
            self.flag(name, v.to_string());
        }
    }

    fn each<'a>(&mut self, name: &str, values: impl IntoIterator<Item = &'a String>) {
        for v in values {
            self.flag(name, v.clone());
        }
    }

    fn switch(&mut self, name: &str, on: bool) {
        if on {
            self.0.push(name.into());
        }
    }

    fn path(&mut self, name: &str, p: &std::path::Path) {
        self.flag(name, p.to_string_lossy());
    }

    fn pairs(&mut self, name: &str, pairs: &[(String, String)]) {
        for (k, v) in pairs {
            self.flag(name, format!("{k}={v}"));
        }
    }
}

impl MoverArgs {
    /// The arguments every mover takes.
    pub fn common(&self) -> &MoverCommon {
        match self {
            MoverArgs::Backup(a) => &a.common,
            MoverArgs::Resolve(a) => &a.common,
            MoverArgs::Restore(a) => &a.common,
            MoverArgs::Forget(a) => &a.common,
            MoverArgs::Prune(a) => &a.common,
            MoverArgs::Check(a) => &a.common,
            MoverArgs::Copy(a) => &a.common,
            MoverArgs::Capture(a) => &a.common,
            MoverArgs::RestoreApplication(a) => &a.common,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            MoverArgs::Backup(_) => "backup",
            MoverArgs::Resolve(_) => "resolve",
            MoverArgs::Restore(_) => "restore",
            MoverArgs::Forget(_) => "forget",
            MoverArgs::Prune(_) => "prune",
            MoverArgs::Check(_) => "check",
            MoverArgs::Copy(_) => "copy",
            MoverArgs::Capture(_) => "capture",
            MoverArgs::RestoreApplication(_) => "restore-application",
        }
    }

    /// `["mover", "<kind>", …]`: what clap parses back into `self` (the log
    /// format aside, which comes from the pod's environment).
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = Argv(vec!["mover".into(), self.name().into()]);
        let c = self.common();
        a.flag("--namespace", &c.namespace);
        a.flag("--run", &c.run);
        a.flag("--repository-url", &c.repository_url);
        a.pairs("--option", &c.options);
        a.flag("--repository", &c.repository);
        a.opt("--repository-namespace", c.repository_namespace.as_ref());
        a.flag("--password-secret", &c.password_secret);
        a.flag("--password-key", &c.password_key);
        a.opt("--credentials-secret", c.credentials_secret.as_ref());
        a.switch("--init", c.init);
        a.0.extend(c.policy.mover_args());
        match self {
            MoverArgs::Backup(b) => {
                a.path("--source", &b.source);
                a.path("--record-path", &b.record_path);
                a.flag(
                    "--origin",
                    serde_json::to_string(&b.origin).unwrap_or_default(),
                );
                a.flag("--threads", b.threads.to_string());
                a.flag("--hostname", &b.hostname);
                a.each("--tag", &b.tags);
                a.each("--exclude", &b.excludes);
                a.opt("--limit-read", b.limit_read.map(|r| format!("{r}B/s")));
            }
            MoverArgs::Resolve(r) => {
                a.flag(
                    "--snapshot",
                    serde_json::to_string(&r.snapshot).unwrap_or_default(),
                );
            }
            MoverArgs::Restore(r) => {
                a.flag("--snapshot", &r.snapshot);
                a.path("--target", &r.target);
                a.switch("--block", r.block);
                a.opt("--subpath", r.subpath.as_ref());
                a.switch("--special-files", r.special_files);
            }
            MoverArgs::Forget(f) => {
                a.flag("--tag", &f.tag);
                a.flag("--after", f.after.to_string());
                a.opt("--cluster", f.cluster.as_ref());
                a.switch("--applications", f.applications);
                a.each("--running", &f.running);
                a.0.extend(f.keep.to_argv());
            }
            MoverArgs::Prune(p) => {
                a.flag("--scheduled-at", p.scheduled_at.to_string());
                a.opt("--max-unused-percent", p.max_unused_percent);
            }
            MoverArgs::Check(c) => {
                a.flag("--scheduled-at", c.scheduled_at.to_string());
                a.opt("--read-data-subset", c.read_data_subset.as_ref());
            }
            MoverArgs::Copy(c) => {
                a.flag("--scheduled-at", c.scheduled_at.to_string());
                a.flag("--to", &c.to);
                a.flag("--to-repository-url", &c.to_repository_url);
                a.pairs("--to-option", &c.to_options);
                a.flag("--to-password-secret", &c.to_password_secret);
                a.flag("--to-password-key", &c.to_password_key);
                a.opt("--to-credentials-secret", c.to_credentials_secret.as_ref());
                a.switch("--to-init", c.to_init);
            }
            MoverArgs::Capture(c) => {
                a.each("--include", &c.include);
                a.each("--exclude", &c.exclude);
                a.switch("--include-recreated", c.include_recreated);
                a.opt("--selector", c.selector.as_ref());
                a.path("--work-dir", &c.work_dir);
                a.opt("--cluster", c.cluster.as_ref());
                a.each("--tag", &c.tags);
                a.pairs("--volume", &c.volumes);
            }
            MoverArgs::RestoreApplication(r) => {
                a.flag("--restore-uid", &r.restore_uid);
                a.flag(
                    "--snapshot",
                    serde_json::to_string(&r.snapshot).unwrap_or_default(),
                );
                a.each("--include", &r.include);
                a.each("--exclude", &r.exclude);
                a.pairs("--label", &r.labels);
                a.switch("--update-existing", r.update_existing);
                a.pairs("--storage-class", &r.storage_classes);
                a.switch("--no-volume-data", r.no_volume_data);
                a.flag(
                    "--bind-timeout",
                    humantime::format_duration(r.bind_timeout).to_string(),
                );
            }
        }
        a.0
    }
}

impl From<&Retention> for KeepArgs {
    fn from(r: &Retention) -> KeepArgs {
        KeepArgs {
            keep_last: r.keep_last,
            keep_hourly: r.keep_hourly,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            keep_yearly: r.keep_yearly,
            keep_within: r.keep_within.clone(),
            keep_tag: r.keep_tags.clone(),
        }
    }
}

impl KeepArgs {
    /// The rules that are set, as flags, in a fixed order.
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = Argv(Vec::new());
        a.opt("--keep-last", self.keep_last);
        a.opt("--keep-hourly", self.keep_hourly);
        a.opt("--keep-daily", self.keep_daily);
        a.opt("--keep-weekly", self.keep_weekly);
        a.opt("--keep-monthly", self.keep_monthly);
        a.opt("--keep-yearly", self.keep_yearly);
        a.opt("--keep-within", self.keep_within.as_ref());
        a.each("--keep-tag", &self.keep_tag);
        a.0
    }

    /// The engine's policy (a rule not set keeps nothing by itself).
    pub fn policy(&self) -> anyhow::Result<coffer_engine::forget::Policy> {
        let within = self
            .keep_within
            .as_deref()
            .map(coffer_engine::forget::parse_duration)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--keep-within: {e}"))?;
        Ok(coffer_engine::forget::Policy {
            last: self.keep_last.unwrap_or(0) as usize,
            hourly: self.keep_hourly.unwrap_or(0) as usize,
            daily: self.keep_daily.unwrap_or(0) as usize,
            weekly: self.keep_weekly.unwrap_or(0) as usize,
            monthly: self.keep_monthly.unwrap_or(0) as usize,
            yearly: self.keep_yearly.unwrap_or(0) as usize,
            within,
            tags: self.keep_tag.clone(),
        })
    }
}

/// `KEY=VALUE`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: write KEY=VALUE"))
}

/// A value given as JSON.
fn json<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_str(s).map_err(|e| format!("not the JSON expected here: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        mover: Top,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Top {
        #[command(subcommand)]
        Mover(MoverArgs),
    }

    fn parse(argv: &[String]) -> MoverArgs {
        let mut full = vec!["coffer-agent".to_string()];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(&full) {
            Ok(Cli {
                mover: Top::Mover(m),
            }) => m,
            Err(e) => panic!("{argv:?} does not parse: {e}"),
        }
    }

    fn common() -> MoverCommon {
        MoverCommon {
            namespace: "team-a".into(),
            run: "db-data".into(),
            repository_url: "s3://bucket/team-a".into(),
            options: vec![
                ("s3.endpoint".into(), "http://minio:9000".into()),
                ("s3.region".into(), "eu=1".into()),
            ],
            repository: "main".into(),
            repository_namespace: Some("team-b".into()),
            password_secret: "main-password".into(),
            password_key: "pw".into(),
            credentials_secret: Some("main-s3".into()),
            init: true,
            log_format: "json".into(),
            policy: TenantPolicy {
                file_repositories: vec!["/srv/a".into(), "/srv/b".into()],
                ambient_credentials: vec!["s3://x".into(), "gs://y".into()],
                ..TenantPolicy::default()
            },
        }
    }

    /// Every kind, with every option set and every list holding two
    /// entries, comes back from its arguments as it went in.
    #[test]
    fn every_mover_parses_back_from_the_arguments_the_controller_writes() {
        let all = [
            MoverArgs::Backup(Box::new(BackupArgs {
                common: common(),
                source: "/coffer/source".into(),
                record_path: "/data".into(),
                origin: KubernetesOrigin {
                    cluster: Some("prod".into()),
                    namespace: Some("team-a".into()),
                    pvc: Some("data".into()),
                    ..Default::default()
                },
                tags: vec!["a".into(), "b c".into()],
                excludes: vec!["*.tmp".into(), "/cache".into()],
                threads: 3,
                limit_read: Some(50 * 1024 * 1024),
                hostname: "prod".into(),
            })),
            MoverArgs::Resolve(Box::new(ResolveArgs {
                common: common(),
                snapshot: SnapshotSource {
                    id: Some("abc".into()),
                    ..Default::default()
                },
            })),
            MoverArgs::Restore(Box::new(RestoreArgs {
                common: common(),
                snapshot: "abc".into(),
                target: "/dev/coffer-target".into(),
                block: true,
                subpath: Some("/x".into()),
                special_files: true,
            })),
            MoverArgs::Forget(Box::new(ForgetArgs {
                common: common(),
                tag: "coffer.dev/schedule=db".into(),
                after: crate::time::stamp("2026-12-03T02:00:00.000Z"),
                cluster: Some("prod".into()),
                applications: true,
                running: vec!["db-1".into(), "db-2".into()],
                keep: KeepArgs {
                    keep_last: Some(1),
                    keep_hourly: Some(2),
                    keep_daily: Some(3),
                    keep_weekly: Some(4),
                    keep_monthly: Some(5),
                    keep_yearly: Some(6),
                    keep_within: Some("36h".into()),
                    keep_tag: vec!["pinned".into(), "legal".into()],
                },
            })),
            MoverArgs::Prune(Box::new(PruneArgs {
                common: common(),
                scheduled_at: crate::time::stamp("2026-12-03T02:00:00.000Z"),
                max_unused_percent: Some(2.5),
            })),
            MoverArgs::Check(Box::new(CheckArgs {
                common: common(),
                scheduled_at: crate::time::stamp("2026-12-03T02:00:00.000Z"),
                read_data_subset: Some("1/7".into()),
            })),
            MoverArgs::Copy(Box::new(CopyArgs {
                common: common(),
                scheduled_at: crate::time::stamp("2026-12-03T02:00:00.000Z"),
                to: "offsite".into(),
                to_repository_url: "s3://other/team-a".into(),
                to_options: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
                to_password_secret: "offsite-password".into(),
                to_password_key: "key".into(),
                to_credentials_secret: Some("offsite-s3".into()),
                to_init: true,
            })),
            MoverArgs::Capture(Box::new(CaptureArgs {
                common: common(),
                include: vec!["deployments.apps".into(), "ConfigMap".into()],
                exclude: vec!["secrets".into(), "events".into()],
                include_recreated: true,
                selector: Some("app=shop,tier!=cache".into()),
                work_dir: "/scratch".into(),
                cluster: Some("prod".into()),
                tags: vec!["release=7".into()],
                volumes: vec![
                    ("data-db-0".into(), "ab12".into()),
                    ("logs".into(), "cd34".into()),
                ],
            })),
            MoverArgs::RestoreApplication(Box::new(RestoreApplicationArgs {
                common: common(),
                restore_uid: "u-1".into(),
                snapshot: SnapshotSource {
                    cluster: Some("prod".into()),
                    namespace: Some("shop".into()),
                    as_of: Some("2026-12-01T00:00:00Z".into()),
                    ..Default::default()
                },
                include: vec!["deployments.apps".into()],
                exclude: vec!["secrets".into()],
                labels: vec![("app".into(), "shop".into())],
                update_existing: true,
                storage_classes: vec![("gp2".into(), "standard".into())],
                no_volume_data: true,
                bind_timeout: std::time::Duration::from_secs(600),
            })),
        ];
        for m in all {
            let mut back = parse(&m.to_argv());
            // The log format comes from the pod's environment, not from here.
            let log = match &mut back {
                MoverArgs::Backup(x) => &mut x.common.log_format,
                MoverArgs::Resolve(x) => &mut x.common.log_format,
                MoverArgs::Restore(x) => &mut x.common.log_format,
                MoverArgs::Forget(x) => &mut x.common.log_format,
                MoverArgs::Prune(x) => &mut x.common.log_format,
                MoverArgs::Check(x) => &mut x.common.log_format,
                MoverArgs::Copy(x) => &mut x.common.log_format,
                MoverArgs::Capture(x) => &mut x.common.log_format,
                MoverArgs::RestoreApplication(x) => &mut x.common.log_format,
            };
            *log = "json".into();
            assert_eq!(back, m, "{:?}", m.to_argv());
        }
    }

    /// The order and form of a backup mover's arguments, as mover pods have
    /// them (each path its own argument).
    #[test]
    fn a_backup_movers_arguments_keep_their_form() {
        let mut c = common();
        c.options.truncate(1);
        c.policy = TenantPolicy::default();
        let m = MoverArgs::Backup(Box::new(BackupArgs {
            common: c,
            source: "/coffer/source".into(),
            record_path: "/data".into(),
            origin: KubernetesOrigin::default(),
            tags: vec!["t".into()],
            excludes: vec![],
            threads: 2,
            limit_read: Some(1024),
            hostname: "kubernetes".into(),
        }));
        let argv = m.to_argv().join(" ");
        assert!(
            argv.starts_with(
                "mover backup --namespace team-a --run db-data --repository-url s3://bucket/team-a \
                 --option s3.endpoint=http://minio:9000 --repository main --repository-namespace team-b --password-secret main-password \
                 --password-key pw --credentials-secret main-s3 --init \
                 --max-store-timeout=5m --max-store-retries=10"
            ),
            "{argv}"
        );
        assert!(
            argv.ends_with(
                "--source /coffer/source --record-path /data --origin {} --threads 2 \
                 --hostname kubernetes --tag t --limit-read 1024B/s"
            ),
            "{argv}"
        );
    }

    #[test]
    fn unset_keep_rules_are_not_written_and_keep_nothing() {
        let k = KeepArgs::from(&Retention {
            keep_daily: Some(7),
            ..Default::default()
        });
        assert_eq!(k.to_argv(), ["--keep-daily", "7"]);
        let p = k.policy().unwrap();
        assert_eq!((p.last, p.daily, p.yearly), (0, 7, 0));
    }

    #[test]
    fn a_bad_origin_is_refused_naming_the_flag() {
        let mut argv = MoverArgs::Backup(Box::new(BackupArgs {
            common: common(),
            source: "/s".into(),
            record_path: "/d".into(),
            origin: KubernetesOrigin::default(),
            tags: vec![],
            excludes: vec![],
            threads: 1,
            limit_read: None,
            hostname: "h".into(),
        }))
        .to_argv();
        let i = argv.iter().position(|a| a == "--origin").unwrap();
        argv[i + 1] = "{not json".into();
        let mut full = vec!["coffer-agent".to_string()];
        full.extend(argv);
        let e = Cli::try_parse_from(&full).unwrap_err().to_string();
        assert!(e.contains("--origin"), "{e}");
    }
}
