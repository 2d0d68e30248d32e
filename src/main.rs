//! The `coffer` command line.

mod cli;
pub(crate) mod commands;
mod fmt;
mod mount;
mod password;

use clap::Parser;

/// Exit status for each outcome, as restic's.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Fatal error.
    pub const FATAL: i32 = 1;
    /// Finished, but some files could not be read or restored.
    pub const PARTIAL: i32 = 3;
    /// The repository does not exist.
    pub const NO_REPOSITORY: i32 = 10;
    /// Wrong password.
    pub const WRONG_PASSWORD: i32 = 12;
    /// Interrupted (SIGINT).
    pub const INTERRUPTED: i32 = 130;
    /// Terminated (SIGTERM).
    pub const TERMINATED: i32 = 143;
}

fn exit_code(err: &anyhow::Error) -> i32 {
    use coffer_engine::Error;
    match err.downcast_ref::<Error>() {
        Some(Error::RepositoryNotFound { .. }) => exit::NO_REPOSITORY,
        Some(Error::WrongPassword { .. }) => exit::WRONG_PASSWORD,
        Some(Error::Cancelled) => exit::INTERRUPTED,
        _ => exit::FATAL,
    }
}

fn init_logging(global: &cli::Global) {
    // Libraries (HTTP clients among them) stay at warn: only coffer's own
    // messages, which never carry credentials, get more verbose.
    let level = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "warn,coffer=info,coffer_engine=info",
        (false, _) => "warn,coffer=debug,coffer_engine=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Writing to a closed pipe (`coffer snapshots | head -1`) ends the process
/// quietly, killed by SIGPIPE as other Unix tools are. SIGPIPE itself stays
/// ignored (Rust's default): a socket the other end has closed must give an
/// error to retry on, not kill the process (vectored socket writes, as
/// HTTP/2 and TLS make, raise it; only plain `send` can suppress it). So the
/// signal is raised only when standard output is the closed pipe: `println!`
/// panics then, and this hook turns that panic into the signal (raw output
/// goes through [`commands::RawStdout`], which does the same).
fn die_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        // The text after the colon is the OS error: "Broken pipe (os error 32)".
        if message.starts_with("failed printing to stdout")
            && message.contains(&format!("(os error {})", libc::EPIPE))
        {
            die_of_sigpipe();
        }
        default(info);
    }));
}

/// Ends the process by SIGPIPE: standard output's reader is gone.
#[allow(unsafe_code)]
pub(crate) fn die_of_sigpipe() -> ! {
    // SAFETY: SIG_DFL is a valid disposition, and raise only sends this
    // process the signal it then dies of.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

fn main() {
    die_quietly_on_closed_stdout();
    coffer_engine::memory::return_freed_memory();
    let cli = cli::Cli::parse();
    init_logging(&cli.global);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coffer: cannot start the async runtime: {e}");
            std::process::exit(exit::FATAL);
        }
    };
    let code = match rt.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            match hint(&err) {
                Some(h) => eprintln!("coffer: {}; {h}", describe(&err)),
                None => eprintln!("coffer: {}", describe(&err)),
            }
            exit_code(&err)
        }
    };
    drop(rt);
    std::process::exit(code);
}

/// The next step on the command line, for the engine's errors that have one
/// (the engine's own messages name no command or flag).
fn hint(err: &anyhow::Error) -> Option<&'static str> {
    use coffer_engine::error::{Conflict, Missing};
    use coffer_engine::Error;
    let check = "run `coffer check` to see everything that is wrong";
    Some(match err.chain().find_map(|c| c.downcast_ref::<Error>())? {
        Error::RepositoryNotFound { .. } => "create one with `coffer init`",
        Error::Corrupt { .. } => check,
        Error::Unreadable { source, .. } if !source.is_transient() => check,
        Error::NotFound { missing, .. } => match missing {
            Missing::Snapshot => "list snapshots with `coffer snapshots`",
            Missing::Path => "list the snapshot with `coffer ls SNAPSHOT`",
            Missing::Key => "list keys with `coffer key list`",
            Missing::Object => check,
            _ => return None,
        },
        Error::TargetExists { conflict, .. } => match conflict {
            Conflict::BlockDevice => "pass --overwrite-device to overwrite everything on it",
            _ => "pass --overwrite to replace what is there",
        },
        Error::KeyInUse { .. } => "change its password with `coffer key passwd`",
        Error::NoPolicy => "use --keep-last, --keep-daily, --keep-within, ...",
        Error::Cache { .. } => "give another with --cache-dir, or use --no-cache",
        _ => return None,
    })
}

/// The error and its causes, each cause only when the message does not
/// already say it.
fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
