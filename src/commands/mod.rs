//! One module per command.

mod backup;
mod cat;
mod check;
mod diff;
mod dump;
mod forget;
mod init;
mod key;
mod ls;
mod prune;
mod restore;
mod snapshots;
mod stats;

use std::sync::Arc;

use anyhow::Context;
use coffer_engine::{storage, Error, Repository};

use crate::cli::{Cli, Command, Global};

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => init::run(g, a).await,
        Command::Backup(a) => backup::run(g, *a).await,
        Command::Snapshots(a) => snapshots::run(g, a).await,
        Command::Ls(a) => ls::run(g, a).await,
        Command::Restore(a) => restore::run(g, a).await,
        Command::Cat(a) => cat::run(g, a).await,
        Command::Check(a) => check::run(g, a).await,
        Command::Stats(a) => stats::run(g, a).await,
        Command::Dump(a) => dump::run(g, a).await,
        Command::Forget(a) => forget::run(g, a).await,
        Command::Prune(a) => prune::run(g, a).await,
        Command::Unlock => prune::unlock(g).await,
        Command::Tag(a) => diff::tag(g, a).await,
        Command::Diff(a) => diff::diff(g, a).await,
        Command::Find(a) => diff::find(g, a).await,
        Command::Key(k) => key::run(g, k).await,
    }
}

pub(crate) fn location(g: &Global) -> anyhow::Result<String> {
    match &g.repo {
        Some(r) if !r.is_empty() => Ok(r.clone()),
        _ => anyhow::bail!("no repository given: use --repo or set COFFER_REPOSITORY"),
    }
}

/// Opens the store `--repo` names, with `--option` and the cache settings.
pub(crate) fn open_store(g: &Global, create: bool) -> anyhow::Result<storage::DynStore> {
    let location = location(g)?;
    let remote = ["s3://", "gs://", "az://"]
        .iter()
        .any(|s| location.starts_with(s));
    let cache_dir = match (&g.cache_dir, g.no_cache) {
        (_, true) => None,
        (Some(dir), false) => Some(dir.clone()),
        // Local repositories are read at disk speed: no cache unless asked.
        (None, false) if remote => dirs::cache_dir().map(|d| d.join("coffer")),
        (None, false) => None,
    };
    let opts = storage::OpenOptions {
        create,
        options: g.options.clone(),
        cache_dir,
        // The command line follows the usual conventions of each store.
        from_env: true,
    };
    Ok(storage::open(&location, &opts)?)
}

/// Opens the repository: checks that it exists, then asks for the password.
pub(crate) async fn open(g: &Global) -> anyhow::Result<Arc<Repository>> {
    let location = location(g)?;
    let store = open_store(g, false)?;
    let location = if store.location().contains("://") {
        store.location()
    } else {
        location
    };
    match store.size("config").await {
        Ok(_) => {}
        Err(e) if e.kind == storage::StoreErrorKind::NotFound => {
            return Err(Error::RepositoryNotFound { location }.into());
        }
        Err(e) => {
            return Err(Error::Store {
                location,
                source: e,
            }
            .into())
        }
    }
    let password = crate::password::get(g, false)?;
    let repo = Repository::open(store, &password).await?;
    Ok(Arc::new(repo))
}

/// Splits `SNAPSHOT[:PATH]`.
pub(crate) fn split_snapshot(spec: &str) -> (String, Option<String>) {
    match spec.split_once(':') {
        Some((s, p)) => (s.to_string(), Some(p.to_string()).filter(|p| !p.is_empty())),
        None => (spec.to_string(), None),
    }
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string(value).context("cannot encode JSON")?
    );
    Ok(())
}

/// A cancellation token that SIGINT or SIGTERM trips, so that a long
/// operation stops at a safe point and cleans up (its session or lock goes)
/// instead of dying; and the exit status the signal asks for (0 until one
/// arrives).
pub fn cancel_on_signal() -> (
    coffer_engine::CancelToken,
    std::sync::Arc<std::sync::atomic::AtomicI32>,
) {
    let cancel = coffer_engine::CancelToken::new();
    let signal = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let (token, code) = (cancel.clone(), signal.clone());
    tokio::spawn(async move {
        use tokio::signal::unix::{signal as unix_signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            unix_signal(SignalKind::interrupt()),
            unix_signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let c = tokio::select! {
            _ = int.recv() => crate::exit::INTERRUPTED,
            _ = term.recv() => crate::exit::TERMINATED,
        };
        code.store(c, std::sync::atomic::Ordering::SeqCst);
        token.cancel();
    });
    (cancel, signal)
}
