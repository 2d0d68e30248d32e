//! `coffer-agent`: the node agent's binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use coffer_node_agent::{metrics, node, plan::NodeConfig};

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
    /// Print the CustomResourceDefinitions as YAML (kubectl apply -f -)
    Crds,
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// This node's name (from the downward API)
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            print!("{}", coffer_node_agent::crd::crds_yaml()?);
            Ok(())
        }
        Command::Node(a) => {
            let a = *a;
            init_logs(&a.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_node(a))
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
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the Kubernetes API (in-cluster config, else KUBECONFIG): {e}")
    })?;
    let m = metrics::Metrics::new();
    let bound = metrics::serve(a.metrics_addr, m.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {}: {e}", a.metrics_addr))?;
    tracing::info!(%bound, "metrics, /healthz and /readyz");
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
        pod_wait: a.pod_wait,
    };
    let agent = node::Agent::new(client, opts, m);
    tokio::select! {
        r = agent.run() => r,
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

/// `90s`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (write e.g. 30s, 2m, 1h)"))
}
