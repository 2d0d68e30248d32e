//! `coffer-fake-apiserver`: runs the fake Kubernetes API server until SIGTERM or SIGINT.
//!
//! The first line on stdout is the server's URL; `--url-file` also writes it to a file
//! (atomically, so a script may wait for the file to appear).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use coffer_fake_apiserver::FakeServer;
use tokio::signal::unix::{signal, SignalKind};

/// A stateful fake Kubernetes API server for tests, on plain HTTP.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Also write the URL to this file.
    #[arg(long)]
    url_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut terminate = signal(SignalKind::terminate())?;
    let server = FakeServer::start(args.listen).await?;
    // The file first: whoever reads the URL on stdout may then read the file.
    if let Some(path) = &args.url_file {
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        std::fs::write(&partial, format!("{}\n", server.url))?;
        std::fs::rename(&partial, path)?;
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", server.url)?;
    stdout.flush()?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result?,
    }
    server.shutdown().await;
    Ok(())
}
