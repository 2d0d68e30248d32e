//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
pub use coffer_engine::backup::parse_size;

/// coffer: deduplicating, encrypted backups of directories and volumes.
///
/// Exit codes: 0 success; 1 fatal error; 3 the backup or restore finished but
/// some files could not be read or restored (they are listed); 10 the
/// repository does not exist; 12 wrong password; 130 interrupted (SIGINT);
/// 143 terminated (SIGTERM).
#[derive(Parser, Debug)]
#[command(name = "coffer", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Repository: a local path, file:///path, s3://BUCKET/PREFIX,
    /// gs://BUCKET/PREFIX or az://CONTAINER/PREFIX
    #[arg(
        short = 'r',
        long = "repo",
        env = "COFFER_REPOSITORY",
        global = true,
        value_name = "REPO"
    )]
    pub repo: Option<String>,
    /// Read the password from the first line of FILE
    #[arg(long, env = "COFFER_PASSWORD_FILE", global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Run CMD with `sh -c` and use the first line of its output as the password
    #[arg(
        long,
        env = "COFFER_PASSWORD_COMMAND",
        global = true,
        value_name = "CMD"
    )]
    pub password_command: Option<String>,
    /// Set a store option, KEY=VALUE (repeatable): s3.endpoint=URL, s3.region=NAME,
    /// any s3./gs./az. key of the object_store crate, timeout=SECONDS,
    /// connect-timeout=SECONDS, connections=N (requests at once), retries=N
    #[arg(short = 'o', long = "option", global = true, value_name = "KEY=VALUE", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// Cache repository metadata of network stores here [default: $XDG_CACHE_HOME/coffer]
    #[arg(long, env = "COFFER_CACHE_DIR", global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not use a local cache
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print more (repeat for debug output)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn parse_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "{s:?} is not KEY=VALUE (such as s3.endpoint=http://127.0.0.1:9000)"
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Back up files and directories into a new snapshot
    Backup(Box<BackupArgs>),
    /// List snapshots
    Snapshots(SnapshotsArgs),
    /// List the files in a snapshot
    Ls(LsArgs),
    /// Restore a snapshot, or a path in it, into a directory
    Restore(RestoreArgs),
    /// Print a repository object, decoded, as JSON
    Cat(CatArgs),
    /// Verify the repository: structure, and with --read-data every byte
    Check(CheckArgs),
    /// Show how much snapshots restore to and what they store
    Stats(StatsArgs),
    /// Write a file of a snapshot to standard output, or a directory as a tar stream
    Dump(DumpArgs),
    /// Manage the keys (passwords) of the repository
    #[command(subcommand)]
    Key(KeyCommand),
    /// Remove snapshots by a retention policy (and with --prune, their data)
    Forget(ForgetArgs),
    /// Remove data no snapshot needs; safe while backups run
    Prune(PruneArgs),
    /// Show running backups and prunes (sessions and locks); nothing to unlock by hand
    Unlock,
    /// Add, remove or set the tags of snapshots
    Tag(TagArgs),
    /// Show what changed between two snapshots (+ added, - removed, M modified, U metadata, T type)
    Diff(DiffArgs),
    /// Find which snapshots contain paths matching a pattern
    Find(FindArgs),
    /// Write new snapshots without the paths that match --exclude (a secret
    /// backed up by mistake); with --forget the originals go, and a prune then
    /// deletes the data
    Rewrite(RewriteArgs),
    /// Copy snapshots from another repository (--from-repo) into this one
    Copy(CopyArgs),
    /// Browse every snapshot as a read-only filesystem (FUSE) until unmounted
    Mount(MountArgs),
    /// Repair a damaged repository (after `check` found damage)
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Kubernetes application backups, read from the repository alone
    #[command(subcommand)]
    K8s(K8sCommand),
}

#[derive(Subcommand, Debug)]
pub enum K8sCommand {
    /// Print an application backup's objects as YAML, cleaned of what
    /// belonged to the old cluster and in the order a restore creates them,
    /// for `kubectl apply -f -` (or Git)
    Manifests(ManifestsArgs),
}

#[derive(Args, Debug)]
pub struct ManifestsArgs {
    /// The application backup's snapshot (`latest`, an id or a unique prefix)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,
    /// Put the objects into this namespace (default: the one they were
    /// backed up from)
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Replace storage class OLD by NEW in claims and claim templates
    /// (repeatable)
    #[arg(long = "storage-class-map", value_name = "OLD=NEW")]
    pub storage_class_map: Vec<String>,
}

/// The source repository of `copy` and `init --copy-chunker-params`.
#[derive(Args, Debug, Clone, Default)]
pub struct FromRepoArgs {
    /// Source repository (same forms as --repo)
    #[arg(long, env = "COFFER_FROM_REPOSITORY", value_name = "REPO")]
    pub from_repo: Option<String>,
    /// Read the source repository's password from the first line of FILE
    /// (else COFFER_FROM_PASSWORD, or a prompt)
    #[arg(long, env = "COFFER_FROM_PASSWORD_FILE", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Run CMD with `sh -c` for the source repository's password
    #[arg(long, env = "COFFER_FROM_PASSWORD_COMMAND", value_name = "CMD")]
    pub from_password_command: Option<String>,
    /// A store option of the source repository, KEY=VALUE (repeatable; as -o)
    #[arg(long = "from-option", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub from_options: Vec<(String, String)>,
}

impl FromRepoArgs {
    /// `g` as it would be with the source repository's settings.
    pub fn global(&self, g: &Global) -> Global {
        Global {
            repo: self.from_repo.clone(),
            password_file: self.from_password_file.clone(),
            password_command: self.from_password_command.clone(),
            options: self.from_options.clone(),
            ..g.clone()
        }
    }
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  coffer -r s3://offsite/db copy --from-repo /srv/backup --from-password-file pw.txt\n  coffer -r /mnt/usb copy --from-repo s3://main/db latest --host db1\n  coffer -r /mnt/usb init --from-repo s3://main/db --copy-chunker-params   # copies without re-chunking\n\nThe destination is --repo (with --password-file etc.); the source is --from-repo.\nA snapshot copied before (the destination records its id as \"original\") is\nskipped, so running copy again copies only new snapshots; and files unchanged\nsince the last copied snapshot of the same host and paths are not read again."
)]
pub struct CopyArgs {
    #[command(flatten)]
    pub from: FromRepoArgs,
    #[command(flatten)]
    pub select: SnapshotSelection,
    /// Print which snapshots would be copied, copy nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Layout:\n  snapshots/<time>/        every snapshot by time (UTC), and latest\n  ids/<id>/                by short id\n  hosts/<host>/<time>/     by host, and latest\n  tags/<tag>/<time>/       by tag, and latest\n  k8s/<cluster>/<namespace>/<pvc or pod-volume>/<time>/   by Kubernetes origin, and latest\n\nStop with Ctrl-C (or SIGTERM, or `umount MOUNTPOINT`): coffer unmounts and exits.\nA damaged blob makes the read of its file fail with EIO; the log names the blob.\nAs root the mount needs /dev/fuse; as another user also fusermount3 (Debian: fuse3)."
)]
pub struct MountArgs {
    /// Empty directory to mount on
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Memory for verified file data read through the mount (blobs)
    #[arg(long, value_name = "SIZE", default_value = "128MiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Read the snapshot list again this often, so that new snapshots
    /// appear (0 turns it off; SIGHUP reads it at once)
    #[arg(long, value_name = "DURATION", default_value = "1m")]
    pub refresh: humantime::Duration,
    /// Let other users (and root) use the mount (needs user_allow_other in
    /// /etc/fuse.conf unless run as root)
    #[arg(long)]
    pub allow_other: bool,
}

/// Which snapshots a command works on: those named, or all that match the
/// filters.
#[derive(Args, Debug, Clone)]
pub struct SnapshotSelection {
    /// Snapshots (`latest`, ids or unique prefixes); all that match the filters when none
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Only snapshots with this tag (repeatable: all of them)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Only snapshots of this host (repeatable)
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// Only snapshots that include this path (repeatable)
    #[arg(long, value_name = "PATH")]
    pub path: Vec<String>,
    #[command(flatten)]
    pub origin: OriginArgs,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  coffer rewrite --exclude /app/.env --dry-run\n  coffer rewrite --exclude /app/.env --forget && coffer prune\n  coffer rewrite 1a2b3c4d --exclude-file secrets.txt\n\nThe new snapshots keep the originals' time, host, paths, tags and origin and\nrecord the original's id (`coffer cat snapshot ID` shows it as \"original\").\nPatterns are those of backup --exclude, matched against the paths `coffer ls` shows."
)]
pub struct RewriteArgs {
    #[command(flatten)]
    pub select: SnapshotSelection,
    /// Leave out paths matching PATTERN (repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Like --exclude, ignoring case
    #[arg(long, value_name = "PATTERN")]
    pub iexclude: Vec<String>,
    /// Read --exclude patterns from FILE, one per line (# comments)
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Remove each original once its rewritten snapshot is stored
    #[arg(long)]
    pub forget: bool,
    /// Print what would be left out, write nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the packs (lost or damaged index files); with
    /// --read-data, also leave out blobs that fail verification
    Index(RepairIndexArgs),
    /// Rewrite snapshots that refer to lost blobs: lost file pieces read as
    /// zeros, lost directory listings as empty, each marked with the xattr
    /// user.coffer.repaired
    Snapshots(RepairSnapshotsArgs),
}

#[derive(Args, Debug)]
pub struct RepairIndexArgs {
    /// Download every pack and verify every blob; packs holding damaged blobs
    /// are repacked without them
    #[arg(long)]
    pub read_data: bool,
    /// Print what would be done, change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// How long to wait for a running prune
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_timeout)]
    pub max_wait: std::time::Duration,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Run `coffer repair index` first (with --read-data to find damaged blobs), then\n  coffer repair snapshots --dry-run\n  coffer repair snapshots --forget\n  coffer check"
)]
pub struct RepairSnapshotsArgs {
    #[command(flatten)]
    pub select: SnapshotSelection,
    /// Remove each original once its repaired snapshot is stored
    #[arg(long)]
    pub forget: bool,
    /// Print what would be repaired, write nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PruneOpts {
    /// Unused space that may remain in packs, in percent of the repository
    #[arg(long, value_name = "PERCENT", default_value = "5%", value_parser = coffer_engine::prune::parse_percent)]
    pub max_unused: f64,
    /// Repack at most SIZE of packs (e.g. 10GiB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_repack: Option<u64>,
    /// How long to wait for running backups before leaving the rest to the next prune
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub max_wait: String,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub opts: PruneOpts,
    /// Print the plan only
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  coffer forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --prune\n  coffer forget --keep-within 30d --tag nightly --dry-run\n  coffer forget 1a2b3c4d"
)]
pub struct ForgetArgs {
    /// Snapshots to remove (ids or prefixes), instead of a policy
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest snapshot of each of the N newest hours
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: usize,
    /// ... of each of the N newest days
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: usize,
    /// ... of each of the N newest (ISO) weeks
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: usize,
    /// ... of each of the N newest months
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: usize,
    /// ... of each of the N newest years
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: usize,
    /// Keep snapshots at most DURATION older than the newest of their group (e.g. 7d, 1y6m, 36h)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep snapshots with this tag (repeatable)
    #[arg(long, value_name = "TAG")]
    pub keep_tag: Vec<String>,
    /// Apply the policy per group of: host, paths, tags, origin (Kubernetes cluster/namespace/PVC or workload and volume) (comma-separated)
    #[arg(long, value_name = "FIELDS", default_value = "host,paths")]
    pub group_by: String,
    /// Only consider snapshots with this tag (repeatable: all of them)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Only consider snapshots of this host (repeatable)
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// Only consider snapshots that include this path (repeatable)
    #[arg(long, value_name = "PATH")]
    pub path: Vec<String>,
    #[command(flatten)]
    pub origin: OriginArgs,
    /// Print what would be removed, remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Then prune, if any snapshot was removed
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_opts: PruneOpts,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  coffer dump latest db.sql | mysql db\n  coffer dump latest / > snapshot.tar\n  coffer dump 1a2b3c4d etc | tar -x -C /tmp/etc"
)]
pub struct DumpArgs {
    /// Snapshot (`latest`, an id or a unique prefix)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,
    /// Path inside the snapshot (`/` for all of it)
    #[arg(value_name = "PATH")]
    pub path: String,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Snapshots to count (`latest`, ids or prefixes); all when none is given
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub origin: OriginArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also download every pack and verify every blob
    #[arg(long)]
    pub read_data: bool,
    /// Download and verify part of the packs: n/m (part n of m, the same every
    /// time) or P% (a random sample)
    #[arg(long, value_name = "n/m|P%", conflicts_with = "read_data")]
    pub read_data_subset: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the key files
    List,
    /// Add a key: a new password for the same repository
    Add(NewKeyArgs),
    /// Remove a key (not the one in use, not the last one)
    Remove {
        /// Id or unique prefix of the key
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Change the password of the key in use
    Passwd(NewKeyArgs),
}

#[derive(Args, Debug)]
pub struct NewKeyArgs {
    /// Read the new password from the first line of FILE (else a prompt)
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct KdfArgs {
    /// Memory cost of the password hash (Argon2id) in KiB, at most 1048576
    /// [default: 32768]
    #[arg(long, value_name = "KIB")]
    pub kdf_memory: Option<u32>,
    /// Passes of the password hash (Argon2id), at most 32, and memory times
    /// passes at most 4 GiB [default: measured so that one derivation takes
    /// about 0.25 s, at least 4]
    #[arg(long, value_name = "N")]
    pub kdf_iterations: Option<u32>,
}

impl KdfArgs {
    /// The cost to use: as given, or calibrated on this machine.
    pub fn cost(&self) -> anyhow::Result<coffer_engine::keys::KdfCost> {
        let cost = self.chosen_cost();
        if cost.check().is_err() {
            anyhow::bail!(
                "--kdf-memory {} with --kdf-iterations {} is outside what readers accept \
                 (SPEC.md §3.2): 8 to {} KiB, 1 to {} passes, memory times passes at most {}",
                cost.memory_kib,
                cost.iterations,
                coffer_engine::keys::MAX_KDF_MEMORY_KIB,
                coffer_engine::keys::MAX_KDF_ITERATIONS,
                coffer_engine::keys::MAX_KDF_WORK
            );
        }
        if cost.memory_kib < coffer_engine::keys::CALIBRATED_MEMORY_KIB || cost.iterations < 4 {
            eprintln!(
                "coffer: warning: Argon2id with {} KiB and {} passes is weaker than the {} KiB \
                 and 4 passes SPEC.md §3.2 recommends; use such a key only for tests",
                cost.memory_kib,
                cost.iterations,
                coffer_engine::keys::CALIBRATED_MEMORY_KIB
            );
        }
        Ok(cost)
    }

    fn chosen_cost(&self) -> coffer_engine::keys::KdfCost {
        match (self.kdf_memory, self.kdf_iterations) {
            (Some(m), Some(t)) => coffer_engine::keys::KdfCost {
                memory_kib: m,
                iterations: t,
                parallelism: 1,
            },
            (m, t) => {
                let c = coffer_engine::keys::calibrate();
                coffer_engine::keys::KdfCost {
                    memory_kib: m.unwrap_or(c.memory_kib),
                    iterations: t.unwrap_or(c.iterations),
                    parallelism: 1,
                }
            }
        }
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Average chunk size (minimum is 1/4, maximum 4x); the default was chosen by
    /// measurement (benches/RESULTS.md)
    #[arg(long, value_name = "SIZE", default_value = "128KiB", value_parser = parse_size)]
    pub chunk_size: u64,
    /// FastCDC normalization level, 0 to 3 (higher: chunk sizes closer to the average)
    #[arg(long, value_name = "LEVEL", default_value_t = 2)]
    pub chunk_normalization: u8,
    /// Target size of pack files, e.g. 16MiB
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub pack_size: u64,
    /// Default compression of new data: off, auto (zstd 2), max (zstd 19), or a zstd level
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_compression)]
    pub compression: coffer_engine::format::blob::Compression,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// With --from-repo: use the source repository's chunker (seed and
    /// parameters), so that `coffer copy` from it copies chunks without
    /// re-chunking; --chunk-size and --chunk-normalization are then ignored
    #[arg(long, requires = "from_repo")]
    pub copy_chunker_params: bool,
    #[command(flatten)]
    pub from: FromRepoArgs,
}

/// Patterns (--exclude, --iexclude, --exclude-file) use .gitignore syntax,
/// rooted at `/`: a pattern without a slash matches a name at any depth
/// (`*.log`, `node_modules`); a leading or inner slash anchors it (`/var/cache`,
/// `data/tmp`); a trailing slash matches directories only (`cache/`); `*` does
/// not cross `/`, `**` does (`/home/**/.cache`); `!pattern` re-includes.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  coffer backup /var/lib/mysql --tag daily\n  coffer backup /data --exclude '*.tmp' --exclude '/data/cache/' --exclude-caches\n  coffer backup --files-from list.txt\n  mysqldump db | coffer backup --stdin --stdin-filename db.sql\n  coffer backup --stdin-from-command --stdin-filename db.sql -- mysqldump db\n  coffer backup /dev/vdb            # a block device's contents, as one file\n  coffer backup --etcd https://127.0.0.1:2379 --etcd-cacert ca.crt --etcd-cert client.crt --etcd-key client.key"
)]
pub struct BackupArgs {
    /// Files and directories to back up (a block device or image file given here
    /// is backed up as one file with its contents)
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Leave out paths matching PATTERN (repeatable; see above)
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Like --exclude, ignoring case
    #[arg(long, value_name = "PATTERN")]
    pub iexclude: Vec<String>,
    /// Read --exclude patterns from FILE, one per line (# comments)
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Leave out directories that contain a file named NAME (e.g. .nobackup)
    #[arg(long, value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
    /// Leave out the contents of directories tagged with a valid CACHEDIR.TAG
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out files larger than SIZE (e.g. 2GiB)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub exclude_larger_than: Option<u64>,
    /// Stay on the filesystem of each path (mount points are kept, empty)
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Also back up the paths listed in FILE, one per line (# comments; - is stdin)
    #[arg(long, value_name = "FILE")]
    pub files_from: Vec<PathBuf>,
    /// Also back up the paths listed in FILE, separated by NUL bytes (find -print0)
    #[arg(long, value_name = "FILE")]
    pub files_from_raw: Vec<PathBuf>,
    /// Back up standard input as one file
    #[arg(long, conflicts_with_all = ["paths", "stdin_from_command", "etcd"])]
    pub stdin: bool,
    /// Name of the file that --stdin, --stdin-from-command or --etcd stores
    /// [default: stdin; etcd-snapshot.db with --etcd]
    #[arg(long, value_name = "NAME")]
    pub stdin_filename: Option<String>,
    /// Stream this etcd member's snapshot (v3 Maintenance API) into the
    /// repository as one file, tagged with its revision, member and cluster id.
    /// ENDPOINT: host:port, http://host:port or https://host:port
    #[arg(long, value_name = "ENDPOINT", conflicts_with_all = ["paths", "stdin_from_command", "files_from", "files_from_raw"])]
    pub etcd: Option<String>,
    /// CA certificate (PEM) of etcd's server certificate; turns TLS on
    #[arg(long, value_name = "FILE", requires = "etcd")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication
    #[arg(long, value_name = "FILE", requires_all = ["etcd", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires_all = ["etcd", "etcd_cert"])]
    pub etcd_key: Option<PathBuf>,
    /// Give up when etcd does not answer within this time: connecting, each
    /// request, and any pause in the stream
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout, requires = "etcd")]
    pub etcd_timeout: std::time::Duration,
    /// Run the command given after `--` and back up its output as one file; the
    /// snapshot is written only if the command exits with status 0
    #[arg(long, requires = "command")]
    pub stdin_from_command: bool,
    /// The command for --stdin-from-command
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    /// Add a tag to the snapshot (repeatable, or comma-separated)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Host name to record instead of this machine's
    #[arg(long = "host", value_name = "HOST")]
    pub host: Option<String>,
    /// File workers (default: one per core)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// Threads that read directories ahead of the walk (0: none)
    #[arg(long, value_name = "N", default_value_t = coffer_engine::backup::DEFAULT_WALK_THREADS)]
    pub walk_threads: usize,
    /// Compression for this backup: off, auto, max, or a zstd level
    #[arg(long, value_name = "MODE", value_parser = parse_compression)]
    pub compression: Option<coffer_engine::format::blob::Compression>,
    /// Compare with this snapshot instead of the latest one of the same host and paths
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Option<String>,
    /// Read every file, even those unchanged since the parent snapshot
    #[arg(long)]
    pub force: bool,
    /// Ignore inode number and ctime changes when checking for modified files
    /// (a copy of the files, such as a CSI clone made by copying, is not read
    /// again; a file rewritten with its size and mtime put back is missed)
    #[arg(long)]
    pub ignore_inode: bool,
    /// Ignore ctime changes when checking for modified files
    #[arg(long)]
    pub ignore_ctime: bool,
    /// Read the source no faster than RATE (e.g. 50MiB/s), to leave the disk to others
    #[arg(long, value_name = "RATE", value_parser = coffer_engine::backup::parse_rate)]
    pub limit_read: Option<u64>,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only snapshots with this tag (repeatable: all of them)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Only snapshots of this host (repeatable)
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// Only snapshots that include this path (repeatable)
    #[arg(long, value_name = "PATH")]
    pub path: Vec<String>,
    #[command(flatten)]
    pub origin: OriginArgs,
    /// Only the N newest snapshots of each host and set of paths
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Snapshots to change (ids, prefixes or `latest`); all that match the filters when none
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Add this tag (repeatable)
    #[arg(long, value_name = "TAG")]
    pub add: Vec<String>,
    /// Remove this tag (repeatable)
    #[arg(long, value_name = "TAG")]
    pub remove: Vec<String>,
    /// Replace all tags with these (repeatable; give it once empty to clear)
    #[arg(long, value_name = "TAG", num_args = 0..=1, default_missing_value = "")]
    pub set: Vec<String>,
    /// Only snapshots with this tag
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Only snapshots of this host
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot
    #[arg(value_name = "SNAPSHOT_A")]
    pub a: String,
    /// The newer snapshot
    #[arg(value_name = "SNAPSHOT_B")]
    pub b: String,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// Pattern: a name anywhere (`*.sql`), or an anchored path (`/var/lib/**/ibdata1`)
    #[arg(value_name = "PATTERN")]
    pub pattern: String,
    /// Case-insensitive
    #[arg(short, long)]
    pub ignore_case: bool,
    /// Only these snapshots (all when none)
    #[arg(long = "snapshot", short = 's', value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub origin: OriginArgs,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot (`latest`, an id or a unique prefix), optionally `:PATH` inside it
    #[arg(value_name = "SNAPSHOT[:PATH]")]
    pub snapshot: String,
    /// Long listing: type, mode, owner, size, time
    #[arg(short, long)]
    pub long: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot (`latest`, an id or a unique prefix), optionally `:PATH` inside it
    #[arg(value_name = "SNAPSHOT[:PATH]")]
    pub snapshot: String,
    /// Directory to restore into (created if missing; must be empty unless --overwrite)
    #[arg(short, long, value_name = "DIR")]
    pub target: PathBuf,
    /// SNAPSHOT is looked for among these (`latest --namespace db --pvc data`)
    #[command(flatten)]
    pub origin: OriginArgs,
    /// Replace files that exist in the target
    #[arg(long)]
    pub overwrite: bool,
    /// Restore only paths matching PATTERN, and what is in matching directories
    /// (repeatable; .gitignore syntax against the paths `coffer ls` shows)
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Like --include, ignoring case
    #[arg(long, value_name = "PATTERN")]
    pub iinclude: Vec<String>,
    /// Leave out paths matching PATTERN (repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Like --exclude, ignoring case
    #[arg(long, value_name = "PATTERN")]
    pub iexclude: Vec<String>,
    /// Allow --target to be a block device: write the snapshot's one file (a
    /// device or image backup) onto it, replacing everything on it
    #[arg(long)]
    pub overwrite_device: bool,
    /// With --overwrite-device: the device already reads as zeros (e.g. a new
    /// thin volume), so only non-zero regions are written
    #[arg(long, requires = "overwrite_device")]
    pub device_is_zeroed: bool,
    /// Blob places planned before they are fetched (about 190 bytes each):
    /// a larger snapshot is restored in several passes, so memory stays bounded
    #[arg(long, value_name = "N", default_value_t = coffer_engine::restore::DEFAULT_PLAN_LIMIT,
          value_parser = parse_plan_limit)]
    pub plan_limit: usize,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// config, snapshot, index, tree, pack, key or blob
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// Id of the object (not for config); a snapshot also takes `latest` or a prefix
    #[arg(value_name = "ID")]
    pub id: Option<String>,
}

/// A timeout such as `30s`, `2m` or `1m30s`.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("a timeout of zero would never wait; give e.g. 30s".into()),
        Err(e) => Err(format!("{s:?} is not a duration like 30s or 2m: {e}")),
    }
}

/// Parses a compression mode.
pub fn parse_compression(s: &str) -> Result<coffer_engine::format::blob::Compression, String> {
    use coffer_engine::format::blob::Compression;
    match s {
        "off" | "none" => Ok(Compression::Off),
        "auto" => Ok(Compression::Zstd(2)),
        "max" => Ok(Compression::Zstd(19)),
        n => match n.parse::<i32>() {
            Ok(l) if (-7..=22).contains(&l) && l != 0 => Ok(Compression::Zstd(l)),
            _ => Err(format!(
                "{s:?} is not a compression mode: use off, auto, max or a zstd level from 1 to 22"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// Snapshot filters by Kubernetes origin (snapshots made by the node agent).
#[derive(Args, Debug, Clone, Default)]
pub struct OriginArgs {
    /// Only snapshots from this cluster
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Only snapshots from this namespace
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only snapshots of this PersistentVolumeClaim
    #[arg(long, value_name = "PVC")]
    pub pvc: Option<String>,
    /// Only snapshots taken from this pod
    #[arg(long, value_name = "POD")]
    pub pod: Option<String>,
}

impl OriginArgs {
    /// A snapshot filter of the origin only.
    pub fn snapshot_filter(&self) -> coffer_engine::forget::Filter {
        coffer_engine::forget::Filter {
            origin: self.filter(),
            ..Default::default()
        }
    }

    /// The engine's filter.
    pub fn filter(&self) -> coffer_engine::forget::OriginFilter {
        coffer_engine::forget::OriginFilter {
            cluster: self.cluster.clone(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            pvc: self.pvc.clone(),
            ..Default::default()
        }
    }
}

/// A restore's plan limit: a positive number of blob places.
fn parse_plan_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{s:?} is not a positive number of blob places, e.g. 65536"
        )),
    }
}
