//! `coffer-agent`: the node agent's binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use coffer_node_agent::crd::Phase;
use coffer_node_agent::mover::args::MoverArgs;
use coffer_node_agent::node::plan::NodeConfig;
use coffer_node_agent::{cluster_name, controller, metrics, mover, node};

#[derive(Parser, Debug)]
#[command(name = "coffer-agent", version, about = "coffer's Kubernetes agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run on a node (DaemonSet): back up and restore the volumes of its pods
    Node(Box<NodeArgs>),
    /// Run the controller (Deployment): back up PVCs through CSI snapshots and mover pods
    Controller(Box<ControllerArgs>),
    /// Run inside a mover pod (started by the controller)
    #[command(subcommand)]
    Mover(MoverArgs),
    /// Print the CustomResourceDefinitions as YAML (kubectl apply -f -)
    Crds,
}

#[derive(clap::Args, Debug)]
struct ControllerArgs {
    /// The namespace of the leader-election Lease (the controller's own)
    #[arg(long, env = "POD_NAMESPACE", default_value = "coffer-system")]
    namespace: String,
    /// This replica's identity in the Lease
    #[arg(long, env = "POD_NAME")]
    identity: String,
    /// How often the cluster name is compared with the other side's again
    /// while running (each side refuses to run while they differ)
    #[arg(long, env = "CLUSTER_NAME_RECHECK", default_value = "5m", value_parser = parse_duration, hide = true)]
    cluster_name_recheck: std::time::Duration,
    /// The Lease's name
    #[arg(long, env = "LEASE_NAME", default_value = "coffer-controller")]
    lease_name: String,
    /// How long the Lease holds without renewal; a standby takes over after it
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: std::time::Duration,
    /// The cluster's name, recorded in every snapshot
    #[arg(long, env = "CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// The image of mover pods (default: this pod's own image, read from
    /// the pod POD_NAME in POD_NAMESPACE)
    #[arg(long, env = "MOVER_IMAGE")]
    mover_image: Option<String>,
    /// Image pull Secrets of mover pods, in coffer's namespace
    /// (comma-separated; default: this pod's own imagePullSecrets)
    #[arg(long, env = "MOVER_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    mover_image_pull_secrets: Option<Vec<String>>,
    /// Memory limit of mover pods
    #[arg(long, env = "MOVER_MEMORY", default_value = "1Gi")]
    mover_memory: String,
    /// Engine threads in each mover pod
    #[arg(long, env = "MOVER_THREADS", default_value_t = 2)]
    mover_threads: usize,
    /// A backup mover reads its clone no faster than RATE (e.g. 50MiB/s)
    #[arg(long, env = "MOVER_LIMIT_READ", value_name = "RATE", value_parser = coffer_engine::backup::parse_rate)]
    mover_limit_read: Option<u64>,
    /// How long a VolumeSnapshot may take to become ready
    #[arg(long, env = "SNAPSHOT_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    snapshot_timeout: std::time::Duration,
    /// How long a mover pod may take to start (scheduling, attaching, pulling)
    #[arg(long, env = "PREPARE_TIMEOUT", default_value = "30m", value_parser = parse_duration)]
    prepare_timeout: std::time::Duration,
    /// How long past its grace period a mover pod may stay Terminating (its node gone)
    /// before it is deleted at once (grace period 0)
    #[arg(long, env = "TERMINATING_LIMIT", default_value = "60s", value_parser = parse_duration)]
    terminating_limit: std::time::Duration,
    /// Clones of PVCs of storage class OLD use class NEW (repeatable)
    #[arg(long = "clone-storage-class", value_name = "OLD=NEW", value_parser = parse_pair)]
    clone_storage_class: Vec<(String, String)>,
    /// Restored PVCs whose recorded storage class is OLD use class NEW (repeatable)
    #[arg(long = "restore-storage-class", value_name = "OLD=NEW", value_parser = parse_pair)]
    restore_storage_class: Vec<(String, String)>,
    /// Clones ask for ReadOnlyMany instead of the source's access modes
    #[arg(long, env = "CLONE_READ_ONLY_MANY")]
    clone_read_only_many: bool,
    /// Serve /metrics, /healthz and /readyz here
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9464")]
    metrics_addr: SocketAddr,
    /// Log format: json (default) or text
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// What namespaced objects may ask for (passed on to every mover)
    #[command(flatten)]
    policy: coffer_node_agent::policy::TenantPolicy,
    /// A node agent's run whose node is deleted, or not Ready this long, is ended (Failed, naming the node)
    #[arg(long, env = "LOST_NODE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    lost_node_timeout: std::time::Duration,
    /// A finished one-off VolumeBackup, VolumeRestore or ApplicationBackup
    /// (not a schedule's) is deleted this long after it ended; its snapshots
    /// stay. 0 keeps them
    #[arg(long, env = "FINISHED_RUN_TTL", default_value = "30d", value_parser = parse_duration)]
    finished_run_ttl: std::time::Duration,
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// This node's name (from the downward API)
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// How often the cluster name is compared with the other side's again
    /// while running (each side refuses to run while they differ)
    #[arg(long, env = "CLUSTER_NAME_RECHECK", default_value = "5m", value_parser = parse_duration, hide = true)]
    cluster_name_recheck: std::time::Duration,
    /// coffer's own namespace (from the downward API), where the cluster
    /// name is compared with the controller's
    #[arg(long, env = "POD_NAMESPACE", default_value = "coffer-system")]
    namespace: String,
    /// The kubelet's root directory as mounted in the agent
    #[arg(long, env = "KUBELET_ROOT", default_value = "/var/lib/kubelet")]
    kubelet_root: PathBuf,
    /// Where the host's / is mounted, for hostPath volumes (none: hostPath volumes are skipped)
    #[arg(long, env = "HOST_ROOT")]
    host_root: Option<PathBuf>,
    /// hostPath volumes are read only at or below this host path (repeatable)
    #[arg(
        long = "host-path-allow",
        env = "HOST_PATH_ALLOW",
        value_delimiter = ',',
        value_name = "PREFIX"
    )]
    host_path_allow: Vec<PathBuf>,
    /// Backups and restores at once on this node
    #[arg(long, env = "MAX_CONCURRENT", default_value_t = 2)]
    max_concurrent: usize,
    /// Engine threads per backup or restore
    #[arg(long, env = "THREADS_PER_RUN", default_value_t = 2)]
    threads_per_run: usize,
    /// Bytes of a large file each backup thread holds at once (e.g. 4MiB): what
    /// a backup's memory follows (README: "The agent's memory")
    #[arg(long, env = "RUN_READ_WINDOW", default_value = "4MiB", value_parser = read_window)]
    run_read_window: usize,
    /// Each backup reads its volume no faster than RATE (e.g. 50MiB/s), leaving the disk to the application
    #[arg(long, env = "LIMIT_READ", value_name = "RATE", value_parser = coffer_engine::backup::parse_rate)]
    limit_read: Option<u64>,
    /// Serve /metrics, /healthz and /readyz here
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9464")]
    metrics_addr: SocketAddr,
    /// The cluster's name, recorded in every snapshot (restores in another cluster select by it)
    #[arg(long, env = "CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// How long a VolumeBackup or VolumeRestore waits for its pod to exist before it fails (e.g. 2m, 30s)
    #[arg(long, env = "POD_WAIT", default_value = "2m", value_parser = parse_duration)]
    pod_wait: std::time::Duration,
    /// Log format: json (default) or text
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// What namespaced objects may ask for
    #[command(flatten)]
    policy: coffer_node_agent::policy::TenantPolicy,
    /// An opened repository nobody used for this long is closed, its keys
    /// leaving memory
    #[arg(long, env = "REPOSITORY_IDLE", default_value = "10m", value_parser = parse_duration)]
    repository_idle: std::time::Duration,
}

fn main() -> anyhow::Result<()> {
    // Restores and backups free large buffers on many threads: give that memory back.
    coffer_engine::memory::return_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            print!("{}", coffer_node_agent::crd::crds_yaml()?);
            Ok(())
        }
        Command::Node(a) => {
            let a = *a;
            init_logs(&a.log_format);
            let rt = runtime()?;
            rt.block_on(run_node(a))
        }
        Command::Controller(a) => {
            let a = *a;
            init_logs(&a.log_format);
            let rt = runtime()?;
            rt.block_on(run_controller(a))
        }
        Command::Mover(m) => {
            init_logs(&m.common().log_format);
            let rt = runtime()?;
            if rt.block_on(run_mover(m))? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the Kubernetes API (in-cluster config, else KUBECONFIG): {e}")
    })
}

/// Metrics, /healthz and /readyz on `addr`.
async fn serve_metrics(addr: SocketAddr) -> anyhow::Result<std::sync::Arc<metrics::Metrics>> {
    let m = metrics::Metrics::new();
    let bound = metrics::serve(addr, m.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    tracing::info!(%bound, "metrics, /healthz and /readyz");
    Ok(m)
}

async fn run_controller(a: ControllerArgs) -> anyhow::Result<()> {
    let client = client().await?;
    let agreeing = cluster_name::agree(
        &client,
        &a.namespace,
        cluster_name::Side::Controller,
        a.cluster_name.as_deref(),
        a.cluster_name_recheck,
    )
    .await?;
    // What movers take from this controller's own pod, unless told.
    let own = match (&a.mover_image, &a.mover_image_pull_secrets) {
        (Some(_), Some(_)) => None,
        _ => {
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(client.clone(), &a.namespace);
            Some(pods.get(&a.identity).await)
        }
    };
    let mover_image = match (a.mover_image, &own) {
        (Some(image), _) => image,
        (None, Some(Ok(pod))) => {
            controller::movers::pod::own_image(pod).map_err(|e| anyhow::anyhow!(e))?
        }
        (None, Some(Err(e))) => anyhow::bail!(
            "cannot read this controller's pod {}/{} to learn the mover image ({e}); set MOVER_IMAGE (--mover-image), or POD_NAME and POD_NAMESPACE through the downward API",
            a.namespace,
            a.identity
        ),
        (None, None) => unreachable!("the pod is read when no image is given"),
    };
    let mover_pull_secrets = match (a.mover_image_pull_secrets, &own) {
        (Some(names), _) => names,
        (None, Some(Ok(pod))) => controller::movers::pod::own_pull_secrets(pod),
        (None, _) => Vec::new(),
    };
    tracing::info!(
        image = mover_image,
        pull_secrets = ?mover_pull_secrets,
        "mover pods run this image"
    );
    let m = serve_metrics(a.metrics_addr).await?;
    let opts = controller::Options {
        cluster: a.cluster_name,
        namespace: a.namespace,
        lease_name: a.lease_name,
        identity: a.identity,
        lease_duration: a.lease_duration,
        mover_image,
        mover_pull_secrets,
        mover_memory: a.mover_memory,
        mover_threads: a.mover_threads.max(1),
        mover_read_limit: a.mover_limit_read,
        snapshot_timeout: a.snapshot_timeout,
        prepare_timeout: a.prepare_timeout,
        terminating_limit: a.terminating_limit,
        storage_class_map: a.clone_storage_class.into_iter().collect(),
        restore_storage_class_map: a.restore_storage_class.into_iter().collect(),
        read_only_many: a.clone_read_only_many,
        policy: a.policy,
        lost_node_timeout: a.lost_node_timeout,
        finished_run_ttl: a.finished_run_ttl,
    };
    tokio::select! {
        r = controller::run(client, opts, m) => r,
        why = agreeing => Err(why),
        _ = shutdown() => {
            tracing::info!("stopping");
            Ok(())
        }
    }
}

/// Runs a mover; returns whether it succeeded (its exit status).
async fn run_mover(m: MoverArgs) -> anyhow::Result<bool> {
    let cancel = coffer_engine::CancelToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        shutdown().await;
        tracing::info!("stopping: the run ends unfinished");
        stop.cancel();
    });
    let done = |p: Phase| matches!(p, Phase::Completed | Phase::PartiallyFailed);
    match m {
        MoverArgs::Backup(a) => {
            let job = mover::BackupJob {
                namespace: a.common.namespace.clone(),
                run: a.common.run.clone(),
                repo: a.common.repo(),
                source: coffer_node_agent::volume_backup::Source {
                    hostname: a.hostname,
                    tags: a.tags,
                    excludes: a.excludes,
                    threads: a.threads,
                    read_limit: a.limit_read,
                    ..mover::clone_source(a.source, a.record_path, a.origin)
                },
            };
            Ok(done(mover::backup(client().await?, job, cancel).await))
        }
        MoverArgs::Resolve(a) => {
            let job = mover::ResolveJob {
                namespace: a.common.namespace.clone(),
                run: a.common.run.clone(),
                repo: a.common.repo(),
                repository: a.common.repository.clone(),
                snapshot: a.snapshot,
            };
            Ok(mover::resolve(client().await?, job).await)
        }
        MoverArgs::Capture(a) => {
            let job = mover::capture::CaptureJob {
                namespace: a.common.namespace.clone(),
                application: a.common.run.clone(),
                repo: a.common.repo(),
                selection: coffer_application::select::Selection {
                    include: a.include,
                    exclude: a.exclude,
                    include_recreated: a.include_recreated,
                },
                label_selector: a.selector,
                work_dir: a.work_dir,
                cluster: a.cluster,
                tags: a.tags,
                volumes: a.volumes,
            };
            let client = client().await?;
            let done = match mover::capture::capture(&client, &job, &cancel).await {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(
                        namespace = job.namespace,
                        application = job.application,
                        "{e}"
                    );
                    return Ok(false);
                }
            };
            println!("{}", serde_json::to_string(&done)?);
            match mover::capture::report(&client, &job, &done).await {
                Ok(()) => Ok(true),
                Err(e) => {
                    tracing::error!(
                        namespace = job.namespace,
                        application = job.application,
                        "{e}"
                    );
                    Ok(false)
                }
            }
        }
        MoverArgs::RestoreApplication(a) => {
            let job = mover::apply::ApplyJob {
                namespace: a.common.namespace.clone(),
                restore: a.common.run.clone(),
                restore_uid: a.restore_uid,
                repo: a.common.repo(),
                source: a.snapshot,
                selection: coffer_application::select::Selection {
                    include: a.include,
                    exclude: a.exclude,
                    // Recreated objects are not captured unless asked; those
                    // that were are restored.
                    include_recreated: true,
                },
                match_labels: a.labels.into_iter().collect(),
                existing: if a.update_existing {
                    mover::apply::Existing::Update
                } else {
                    mover::apply::Existing::None
                },
                storage_classes: a.storage_classes.into_iter().collect(),
                volume_data: !a.no_volume_data,
                bind_timeout: a.bind_timeout,
            };
            let client = client().await?;
            let done = match mover::apply::apply(&client, &job, &cancel).await {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!(namespace = job.namespace, restore = job.restore, "{e}");
                    return Ok(false);
                }
            };
            match mover::apply::report(&client, &job, &done).await {
                Ok(()) => Ok(true),
                Err(e) => {
                    tracing::error!(namespace = job.namespace, restore = job.restore, "{e}");
                    Ok(false)
                }
            }
        }
        MoverArgs::Forget(a) => {
            let job = mover::ForgetJob {
                namespace: a.common.namespace.clone(),
                schedule: a.common.run.clone(),
                repo: a.common.repo(),
                policy: a.keep.policy()?,
                tag: a.tag,
                cluster: a.cluster,
                after: a.after,
                applications: a.applications,
                running: a.running,
            };
            Ok(mover::forget(client().await?, job, cancel).await)
        }
        MoverArgs::Prune(a) => {
            let job = a.common.maintenance(a.scheduled_at);
            let unused = a.max_unused_percent.unwrap_or(5.0);
            Ok(mover::prune(client().await?, job, unused, cancel).await)
        }
        MoverArgs::Check(a) => {
            let job = a.common.maintenance(a.scheduled_at);
            Ok(mover::check(client().await?, job, a.read_data_subset, cancel).await)
        }
        MoverArgs::Copy(a) => {
            let destination = mover::CopyDestination {
                name: a.to.clone(),
                repo: mover::RepoAccess {
                    url: a.to_repository_url,
                    options: a.to_options,
                    namespace: a.common.repo().namespace,
                    repository: a.to.clone(),
                    password: coffer_node_agent::crd::SecretKeyRef {
                        name: a.to_password_secret,
                        key: a.to_password_key,
                    },
                    credentials: a.to_credentials_secret,
                    init: a.to_init,
                    policy: a.common.policy.clone(),
                },
            };
            let job = a.common.maintenance(a.scheduled_at);
            Ok(mover::copy(client().await?, job, destination, cancel).await)
        }
        MoverArgs::Restore(a) => {
            let job = mover::RestoreJob {
                namespace: a.common.namespace.clone(),
                run: a.common.run.clone(),
                repo: a.common.repo(),
                snapshot: a.snapshot,
                subpath: a.subpath,
                target: a.target,
                block: a.block,
                special_files: a.special_files,
            };
            Ok(done(mover::restore(client().await?, job, cancel).await))
        }
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,coffer_engine=warn,kube=warn,hyper=warn")
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        b.init();
    } else {
        b.json().with_current_span(true).flatten_event(true).init();
    }
}

async fn run_node(a: NodeArgs) -> anyhow::Result<()> {
    let client = client().await?;
    let agreeing = cluster_name::agree(
        &client,
        &a.namespace,
        cluster_name::Side::Agent,
        a.cluster_name.as_deref(),
        a.cluster_name_recheck,
    )
    .await?;
    let m = serve_metrics(a.metrics_addr).await?;
    let opts = node::Options {
        node: NodeConfig {
            kubelet_root: a.kubelet_root,
            host_root: a.host_root,
            host_path_allow: a.host_path_allow,
            cluster: a.cluster_name,
            node: a.node_name,
        },
        max_concurrent: a.max_concurrent,
        threads_per_run: a.threads_per_run.max(1),
        read_window: a.run_read_window,
        read_limit: a.limit_read,
        pod_wait: a.pod_wait,
        policy: a.policy,
        repository_idle: a.repository_idle,
    };
    tokio::select! {
        r = node::run(client, opts, m) => r,
        why = agreeing => Err(why),
        _ = shutdown() => {
            tracing::info!("stopping");
            Ok(())
        }
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `KEY=VALUE`.
fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: write KEY=VALUE"))
}

/// `90s`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (write e.g. 30s, 2m, 1h)"))
}

/// `--run-read-window`: a size of 1 MiB to 256 MiB.
fn read_window(s: &str) -> Result<usize, String> {
    let n = coffer_engine::backup::parse_size(s)?;
    if !(1 << 20..=256 << 20).contains(&n) {
        return Err(format!("{s} is outside 1MiB..256MiB"));
    }
    usize::try_from(n).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_window_is_a_size_within_bounds() {
        assert_eq!(read_window("4MiB"), Ok(4 << 20));
        assert!(read_window("512KiB").unwrap_err().contains("outside"));
        assert!(read_window("1GiB").unwrap_err().contains("outside"));
        assert!(read_window("four").is_err());
    }
    use coffer_node_agent::crd::Retention;

    /// A schedule's retention, as the controller writes it into the
    /// retention pod's arguments, is the engine policy the mover applies:
    /// every rule, none lost or renamed on the way.
    #[test]
    fn every_retention_rule_reaches_the_movers_policy() {
        let retention = Retention {
            keep_last: Some(1),
            keep_hourly: Some(2),
            keep_daily: Some(3),
            keep_weekly: Some(4),
            keep_monthly: Some(5),
            keep_yearly: Some(6),
            keep_within: Some("36h".into()),
            keep_tags: vec!["pinned".into(), "legal".into()],
        };
        let mut argv: Vec<String> = [
            "coffer-agent",
            "mover",
            "forget",
            "--namespace",
            "team-a",
            "--run",
            "db",
            "--repository-url",
            "file:///repo",
            "--repository",
            "default",
            "--password-secret",
            "default-password",
            "--tag",
            "schedule:db",
            "--after",
            "2026-12-03T02:00:00Z",
        ]
        .map(String::from)
        .into();
        let common = argv.len();
        argv.extend(coffer_node_agent::controller::schedules::retention_args(
            &retention,
        ));
        let cli = Cli::try_parse_from(&argv).expect("the controller's arguments parse");
        let Command::Mover(MoverArgs::Forget(f)) = cli.command else {
            panic!("not mover forget: {:?}", cli.command)
        };
        let want = coffer_engine::forget::Policy {
            last: 1,
            hourly: 2,
            daily: 3,
            weekly: 4,
            monthly: 5,
            yearly: 6,
            within: Some(chrono::Duration::hours(36)),
            tags: vec!["pinned".into(), "legal".into()],
        };
        assert_eq!(f.keep.policy().unwrap(), want);

        // A duration the engine cannot read is refused, naming the flag.
        let bad = Retention {
            keep_within: Some("soon".into()),
            ..retention
        };
        argv.truncate(common);
        argv.extend(coffer_node_agent::controller::schedules::retention_args(
            &bad,
        ));
        let cli = Cli::try_parse_from(&argv).unwrap();
        let Command::Mover(MoverArgs::Forget(f)) = cli.command else {
            unreachable!()
        };
        let e = f.keep.policy().unwrap_err().to_string();
        assert!(e.starts_with("--keep-within: "), "{e}");
    }
}
