//! One module per command.

mod backup;
mod cat;
mod check;
mod copy;
mod diff;
mod dump;
mod forget;
mod init;
mod k8s;
mod key;
mod ls;
mod mount;
mod prune;
mod repair;
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
        Command::Rewrite(a) => repair::rewrite(g, a).await,
        Command::Copy(a) => copy::run(g, a).await,
        Command::Mount(a) => mount::run(g, a).await,
        Command::Repair(c) => repair::run(g, c).await,
        Command::Key(k) => key::run(g, k).await,
        Command::K8s(k) => k8s::run(g, k).await,
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
    let cache_dir = match (&g.cache_dir, g.no_cache) {
        (_, true) => None,
        (Some(dir), false) => Some(dir.clone()),
        (None, false) => storage::default_cache_dir(&location, dirs::cache_dir().as_deref()),
    };
    let opts = storage::OpenOptions {
        create,
        options: g.options.clone(),
        cache_dir,
        // The command line follows the usual conventions of each store,
        // and trusts its user with every option.
        from_env: true,
        tenant: None,
    };
    Ok(storage::open(&location, &opts)?)
}

/// Opens the repository: checks that it exists, then asks for the password.
pub(crate) async fn open(g: &Global) -> anyhow::Result<Arc<Repository>> {
    open_as(g, false).await
}

/// Opens the source repository of `copy` or `init --from-repo`.
pub(crate) async fn open_source(
    g: &Global,
    from: &crate::cli::FromRepoArgs,
) -> anyhow::Result<Arc<Repository>> {
    if from.from_repo.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!("no source repository given: use --from-repo or set COFFER_FROM_REPOSITORY");
    }
    open_as(&from.global(g), true).await
}

async fn open_as(g: &Global, source: bool) -> anyhow::Result<Arc<Repository>> {
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
    let password = if source {
        crate::password::get_source(g)?
    } else {
        crate::password::get(g, false)?
    };
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

/// Progress of restore, check and prune: a bar on a terminal; with `--json`
/// and `json_status`, status lines at most once a second and at each phase's
/// start; nothing otherwise. The bar must be cleared when the operation ends.
pub(crate) fn op_progress(
    g: &Global,
    json_status: bool,
) -> (
    Option<coffer_engine::progress::ProgressFn>,
    Option<indicatif::ProgressBar>,
) {
    use coffer_engine::progress::{Progress, ProgressFn};
    use std::io::IsTerminal;
    if g.quiet {
        return (None, None);
    }
    if g.json {
        if !json_status {
            return (None, None);
        }
        let last: std::sync::Mutex<Option<(coffer_engine::progress::Phase, std::time::Instant)>> =
            std::sync::Mutex::new(None);
        let cb = ProgressFn::new(move |p: &Progress| {
            let Ok(mut last) = last.lock() else { return };
            // A phase's start and end always print; between, once a second.
            let ended = p.total_bytes == Some(p.bytes_done) || p.total_items == Some(p.items_done);
            let due = match *last {
                Some((phase, at)) => ended || phase != p.phase || at.elapsed().as_secs() >= 1,
                None => true,
            };
            if !due {
                return;
            }
            *last = Some((p.phase, std::time::Instant::now()));
            status_line(serde_json::json!({
                "phase": p.phase,
                "seconds_elapsed": p.seconds_elapsed,
                "percent_done": fraction(p.bytes_done, p.total_bytes),
                "total_bytes": p.total_bytes,
                "bytes_done": p.bytes_done,
                "total_items": p.total_items,
                "items_done": p.items_done,
            }));
        });
        return (Some(cb), None);
    }
    if !std::io::stderr().is_terminal() {
        return (None, None);
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "[{elapsed_precise}] {msg} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    let b = bar.clone();
    let cb = ProgressFn::new(move |p: &Progress| {
        b.set_length(p.total_bytes.unwrap_or(0).max(p.bytes_done));
        b.set_position(p.bytes_done);
        let items = match p.total_items {
            Some(t) => format!(" {}/{t}", p.items_done),
            None => String::new(),
        };
        b.set_message(format!("{}{items}", p.phase.name()));
    });
    (Some(cb), Some(bar))
}

/// `done` of `total` as a fraction (restic's `percent_done`); 0 while the
/// total is unknown.
pub(crate) fn fraction(done: u64, total: Option<u64>) -> f64 {
    match total {
        Some(t) if t > 0 => (done as f64 / t as f64).min(1.0),
        _ => 0.0,
    }
}

/// Prints a `--json` status line: `fields` with `"message_type": "status"`.
pub(crate) fn status_line(mut fields: serde_json::Value) {
    fields["message_type"] = "status".into();
    println!("{fields}");
}

/// Standard output for raw bytes (`dump`, `cat blob`): when its reader is
/// gone, the process ends by SIGPIPE, as it does for `println!` (main.rs).
pub(crate) struct RawStdout(std::io::Stdout);

impl RawStdout {
    pub(crate) fn new() -> Self {
        RawStdout(std::io::stdout())
    }

    fn check<T>(r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                crate::die_of_sigpipe();
            }
        }
        r
    }
}

impl std::io::Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Self::check(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Self::check(self.0.flush())
    }
}

/// The concurrency protocol's timings
/// ([`coffer_engine::protocol::Timing::from_env`]).
pub fn timing() -> coffer_engine::protocol::Timing {
    coffer_engine::protocol::Timing::from_env()
}

/// For the protocol's tests: `COFFER_TEST_STOP_AT=session-open|pack-stored|
/// snapshot-write` freezes this process with SIGSTOP the first time the
/// backup reaches that checkpoint, as a node that pauses a pod does; the
/// test thaws it with SIGCONT.
pub(crate) fn stop_at_checkpoint() -> Option<coffer_engine::backup::CheckpointFn> {
    let at = std::env::var("COFFER_TEST_STOP_AT").ok()?;
    let once = std::sync::Once::new();
    Some(Arc::new(move |cp: coffer_engine::backup::Checkpoint| {
        if cp.name() == at {
            once.call_once(|| {
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
            });
        }
    }))
}
