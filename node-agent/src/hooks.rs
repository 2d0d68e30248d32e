//! Application hooks and dumps, through `pods/exec`.
//!
//! | annotation | value |
//! |---|---|
//! | `pre.hook.backup.coffer.dev/command` | a JSON array, run before the volume is read (or snapshotted) |
//! | `pre.hook.backup.coffer.dev/container` | where (default: the pod's first container) |
//! | `pre.hook.backup.coffer.dev/on-error` | `Fail` (default: no backup) or `Continue` (a Warning Event) |
//! | `pre.hook.backup.coffer.dev/timeout` | at most this long (default `30s`) |
//! | `post.hook.backup.coffer.dev/...` | the same, run after the read (or the snapshot), whatever its outcome, when the pre-hook ran |
//! | `backup.coffer.dev/command` | a dump: its stdout becomes a snapshot (a JSON array, or a shell line run by `sh -c`) |
//! | `backup.coffer.dev/command-container` | where (default: the pod's first container) |
//! | `backup.coffer.dev/command-filename` | the file's name in the snapshot (default `<container>.dump`) |
//!
//! Parsing is pure; [`run`] and [`start_dump`] call the API server.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, AttachedProcess};
use kube::Client;
use tokio::io::AsyncReadExt;

use crate::crd::HookRun;

/// The pre-hook annotations' prefix.
pub const PRE: &str = "pre.hook.backup.coffer.dev/";
/// The post-hook annotations' prefix.
pub const POST: &str = "post.hook.backup.coffer.dev/";
/// A dump's command.
pub const COMMAND: &str = "backup.coffer.dev/command";
/// A dump's container.
pub const COMMAND_CONTAINER: &str = "backup.coffer.dev/command-container";
/// A dump's file name in the snapshot.
pub const COMMAND_FILENAME: &str = "backup.coffer.dev/command-filename";
/// How long the dump command may run (at most, and by default, the
/// administrator's `--max-dump-duration`).
pub const COMMAND_TIMEOUT: &str = "backup.coffer.dev/command-timeout";
/// How long a hook may take when its annotation does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a failed hook's output its message keeps.
const OUTPUT_TAIL: usize = 400;

/// What a hook's failure does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// The backup fails (a pre-hook: nothing is read).
    Fail,
    /// The backup goes on; the failure is a Warning Event.
    Continue,
}

/// One hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// `pre` or `post`.
    pub stage: HookStage,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The container; `None`: the pod's first.
    pub container: Option<String>,
    /// What a failure does.
    pub on_error: OnError,
    /// At most this long.
    pub timeout: Duration,
}

/// A pod's hooks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Before the read or the snapshot.
    pub pre: Option<Hook>,
    /// After it.
    pub post: Option<Hook>,
}

/// A pod's dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The container; `None`: the pod's first.
    pub container: Option<String>,
    /// The file's name in the snapshot.
    pub filename: String,
    /// The command must have written its last byte and exited within this.
    pub timeout: Duration,
}

/// A hook or dump annotation that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("annotation {annotation}: {why}")]
pub struct HookError {
    /// The annotation.
    pub annotation: String,
    /// What is wrong, and what it should be.
    pub why: String,
}

fn bad(annotation: String, why: impl Into<String>) -> HookError {
    HookError {
        annotation,
        why: why.into(),
    }
}

/// A duration annotation `key` (`what` it bounds), within `max` (the
/// administrator's cap, which no annotation can raise).
fn duration(
    a: &BTreeMap<String, String>,
    key: String,
    default: Duration,
    max: Duration,
) -> Result<Duration, HookError> {
    let Some(t) = a.get(&key) else {
        return Ok(default.min(max));
    };
    let d = humantime::parse_duration(t)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            bad(
                key.clone(),
                format!("{t:?} is not a duration such as 30s or 5m"),
            )
        })?;
    if d > max {
        return Err(bad(
            key,
            format!(
                "{t} is above the limit the cluster's administrator set ({})",
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn one(
    a: &BTreeMap<String, String>,
    prefix: &str,
    stage: HookStage,
    max_timeout: Duration,
) -> Result<Option<Hook>, HookError> {
    let key = |k: &str| format!("{prefix}{k}");
    let Some(text) = a.get(&key("command")) else {
        for k in ["container", "on-error", "timeout"] {
            if a.contains_key(&key(k)) {
                return Err(bad(key(k), format!("set, but {} is not", key("command"))));
            }
        }
        return Ok(None);
    };
    let command: Vec<String> = serde_json::from_str(text).map_err(|_| {
        bad(
            key("command"),
            format!("{text:?} is not a JSON array of strings, e.g. [\"/sbin/fsfreeze\", \"--freeze\", \"/data\"]"),
        )
    })?;
    if command.is_empty() || command[0].is_empty() {
        return Err(bad(key("command"), "the array is empty"));
    }
    let on_error = match a.get(&key("on-error")).map(String::as_str) {
        None | Some("Fail") => OnError::Fail,
        Some("Continue") => OnError::Continue,
        Some(other) => {
            return Err(bad(
                key("on-error"),
                format!("{other:?} is neither Fail nor Continue"),
            ))
        }
    };
    let timeout = duration(a, key("timeout"), DEFAULT_TIMEOUT, max_timeout)?;
    Ok(Some(Hook {
        stage,
        command,
        container: a.get(&key("container")).cloned(),
        on_error,
        timeout,
    }))
}

/// The hooks a pod's annotations ask for; a timeout above `max_timeout`
/// (the administrator's) is refused.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    max_timeout: Duration,
) -> Result<Hooks, HookError> {
    Ok(Hooks {
        pre: one(annotations, PRE, HookStage::Pre, max_timeout)?,
        post: one(annotations, POST, HookStage::Post, max_timeout)?,
    })
}

/// The dump a pod's annotations ask for, if any. `first_container` names
/// the default file; `max_duration` (the administrator's) bounds it, and is
/// its timeout unless [`COMMAND_TIMEOUT`] asks for less.
pub fn parse_dump(
    annotations: &BTreeMap<String, String>,
    first_container: &str,
    max_duration: Duration,
) -> Result<Option<Dump>, HookError> {
    let Some(text) = annotations.get(COMMAND) else {
        return Ok(None);
    };
    let command = if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<String>>(text).map_err(|_| {
            bad(
                COMMAND.into(),
                format!("{text:?} is not a JSON array of strings"),
            )
        })?
    } else {
        vec!["sh".into(), "-c".into(), text.clone()]
    };
    if command.is_empty() || command.iter().all(|c| c.trim().is_empty()) {
        return Err(bad(COMMAND.into(), "the command is empty"));
    }
    let container = annotations.get(COMMAND_CONTAINER).cloned();
    let filename = match annotations.get(COMMAND_FILENAME) {
        Some(f) if f.is_empty() || f.contains('/') || f == "." || f == ".." => {
            return Err(bad(
                COMMAND_FILENAME.into(),
                format!("{f:?} is not a file name (no '/', not empty)"),
            ))
        }
        Some(f) => f.clone(),
        None => format!("{}.dump", container.as_deref().unwrap_or(first_container)),
    };
    let timeout = duration(
        annotations,
        COMMAND_TIMEOUT.into(),
        max_duration,
        max_duration,
    )?;
    Ok(Some(Dump {
        command,
        container,
        filename,
        timeout,
    }))
}

/// The name of a pod's first container (the default for hooks and dumps).
pub fn first_container(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

fn attach(container: &str, stdout: bool) -> AttachParams {
    AttachParams::default()
        .container(container)
        .stdin(false)
        .stdout(stdout)
        .stderr(true)
}

/// Why a finished exec failed, from its final Status; `None`: exit 0.
fn exec_failure(
    status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
) -> Option<String> {
    let Some(s) = status else {
        return Some("the connection ended without an exit status".into());
    };
    if s.status.as_deref() == Some("Success") {
        return None;
    }
    let code = s
        .details
        .and_then(|d| d.causes)
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message);
    Some(match code {
        Some(c) => format!("exit code {c}"),
        None => s.message.unwrap_or_else(|| "failed".into()),
    })
}

/// `Ok` on exit 0; otherwise why, with the end of the command's `output`.
fn exit_result(
    status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
    output: &[u8],
) -> Result<(), String> {
    let Some(why) = exec_failure(status) else {
        return Ok(());
    };
    let output = tail(output);
    Err(if output.is_empty() {
        why
    } else {
        format!("{why}: {output}")
    })
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| text.len() - i <= OUTPUT_TAIL)
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// Why an exec failed; a refusal (403) says how the namespace opts in.
fn exec_refused(ns: &str, e: &kube::Error) -> String {
    let text = e.to_string();
    if matches!(e, kube::Error::Api(s) if s.code == 403) || text.contains("403") {
        format!(
            "cannot exec: namespace {ns} has not allowed coffer to run hooks in its pods ({text}); \
             its admin opts it in: {}",
            crate::policy::opt_in_command(ns)
        )
    } else {
        format!("cannot exec: {text}")
    }
}

/// Runs `hook` in pod `ns/pod` (whose first container is `first`) and
/// returns what happened, for the run's status; `ok` tells whether it
/// succeeded within its timeout.
pub async fn run(client: &Client, ns: &str, pod: &str, first: &str, hook: &Hook) -> HookRun {
    let container = hook.container.clone().unwrap_or_else(|| first.to_string());
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let go = async {
        let mut p = api
            .exec(pod, hook.command.clone(), &attach(&container, true))
            .await
            .map_err(|e| exec_refused(ns, &e))?;
        let (mut out, err) = tokio::join!(drain(p.stdout()), drain(p.stderr()));
        let status = match p.take_status() {
            Some(s) => s.await,
            None => None,
        };
        out.extend_from_slice(&err);
        exit_result(status, &out)
    };
    let result = match tokio::time::timeout(hook.timeout, go).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "did not finish within {}",
            humantime::format_duration(hook.timeout)
        )),
    };
    HookRun {
        stage: hook.stage.as_str().into(),
        pod: pod.into(),
        container,
        succeeded: result.is_ok(),
        message: result.err().map(|why| {
            format!(
                "{} hook {:?} in pod {ns}/{pod}: {why}",
                hook.stage, hook.command
            )
        }),
    }
}

/// Reads a stream to its end, keeping its last bytes.
async fn drain(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut r) = r else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 4 * OUTPUT_TAIL {
            kept.drain(..kept.len() - 4 * OUTPUT_TAIL);
        }
    }
    kept
}

/// A dump's stdout.
pub type DumpOutput = tokio::io::ReadHalf<tokio::io::SimplexStream>;

/// A started dump, less its stdout: ask, after the last byte, whether it
/// exited 0.
pub struct DumpProcess {
    stderr: tokio::task::JoinHandle<Vec<u8>>,
    process: AttachedProcess,
}

impl DumpProcess {
    /// After the last byte: `Err(why)` unless the command exited 0.
    pub async fn finish(mut self) -> Result<(), String> {
        let err = self.stderr.await.unwrap_or_default();
        let status = match self.process.take_status() {
            Some(s) => s.await,
            None => None,
        };
        exit_result(status, &err)
    }
}

/// Starts `dump` in pod `ns/pod`: its stdout, and the process.
pub async fn start_dump(
    client: &Client,
    ns: &str,
    pod: &str,
    first: &str,
    dump: &Dump,
) -> Result<(DumpOutput, DumpProcess), String> {
    let container = dump.container.clone().unwrap_or_else(|| first.to_string());
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut process = api
        .exec(pod, dump.command.clone(), &attach(&container, true))
        .await
        .map_err(|e| {
            format!(
                "{:?} in pod {ns}/{pod} container {container}: {}",
                dump.command,
                exec_refused(ns, &e)
            )
        })?;
    let stdout = process
        .stdout()
        .ok_or_else(|| "the exec has no stdout".to_string())?;
    // Drained beside stdout, so that a chatty command never blocks.
    let stderr = tokio::spawn(drain(process.stderr()));
    Ok((stdout, DumpProcess { stderr, process }))
}

/// A dump's output that ends (with an error) when its time is up or its run
/// is stopped: a command that neither writes nor exits cannot hold a run,
/// even while a read of its output waits.
pub struct Bounded<R> {
    inner: R,
    timeout: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    stopped: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// `stopped` completed (it must not be polled again).
    stopped_now: bool,
}

impl<R> Bounded<R> {
    /// `inner` until `timeout` from now, or until `cancel` is tripped.
    pub fn new(inner: R, timeout: Duration, cancel: coffer_engine::CancelToken) -> Self {
        Bounded {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            stopped: Box::pin(async move { cancel.cancelled().await }),
            stopped_now: false,
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Bounded<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        // (Not `Interrupted`: readers retry that one.)
        if self.stopped_now || self.stopped.as_mut().poll(cx).is_ready() {
            self.stopped_now = true;
            return Poll::Ready(Err(std::io::Error::other("the run was stopped")));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let t = humantime::format_duration(self.timeout);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the command did not finish within {t} ({COMMAND_TIMEOUT}, at most the administrator's --max-dump-duration)"),
            )));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// When a hook runs: before the volume is read (or snapshotted), or after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookStage {
    /// Before: a freeze, a flush.
    Pre,
    /// After: the thaw.
    Post,
}

impl HookStage {
    /// The name recorded in `status.hooks[].stage`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookStage::Pre => "pre",
            HookStage::Post => "post",
        }
    }

    /// Whether a recorded hook ran at this stage.
    pub fn of(self, h: &HookRun) -> bool {
        h.stage == self.as_str()
    }
}

impl std::fmt::Display for HookStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that never writes nor exits: its output ends at the
    /// timeout, with an error that says so.
    #[tokio::test]
    async fn a_silent_dump_ends_at_its_timeout() {
        use tokio::io::AsyncReadExt;
        let (_writer, reader) = tokio::io::duplex(64);
        let mut out = Bounded::new(
            reader,
            Duration::from_millis(50),
            coffer_engine::CancelToken::new(),
        );
        let mut buf = Vec::new();
        let e = out.read_to_end(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains(COMMAND_TIMEOUT), "{e}");
        let cancel = coffer_engine::CancelToken::new();
        let (_writer, reader) = tokio::io::duplex(64);
        let mut out = Bounded::new(reader, HOUR, cancel.clone());
        cancel.cancel();
        let e = out.read_to_end(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("stopped"), "{e}");
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hooks_parse_with_defaults_and_bad_values_name_their_annotation() {
        let h = parse(
            &ann(&[
                (
                    "pre.hook.backup.coffer.dev/command",
                    r#"["fsfreeze", "--freeze", "/data"]"#,
                ),
                ("pre.hook.backup.coffer.dev/container", "freezer"),
                (
                    "post.hook.backup.coffer.dev/command",
                    r#"["fsfreeze", "--unfreeze", "/data"]"#,
                ),
                ("post.hook.backup.coffer.dev/on-error", "Continue"),
                ("post.hook.backup.coffer.dev/timeout", "2m"),
            ]),
            HOUR,
        )
        .unwrap();
        let pre = h.pre.unwrap();
        assert_eq!(pre.command, ["fsfreeze", "--freeze", "/data"]);
        assert_eq!(pre.container.as_deref(), Some("freezer"));
        assert_eq!(
            (pre.on_error, pre.timeout),
            (OnError::Fail, DEFAULT_TIMEOUT)
        );
        let post = h.post.unwrap();
        assert_eq!(
            (post.on_error, post.timeout),
            (OnError::Continue, Duration::from_secs(120))
        );
        assert_eq!(parse(&ann(&[]), HOUR).unwrap(), Hooks::default());

        for (pairs, named) in [
            (
                vec![("pre.hook.backup.coffer.dev/command", "fsfreeze --freeze")],
                "pre.hook.backup.coffer.dev/command",
            ),
            (
                vec![("pre.hook.backup.coffer.dev/command", "[]")],
                "pre.hook.backup.coffer.dev/command",
            ),
            (
                vec![
                    ("post.hook.backup.coffer.dev/command", r#"["x"]"#),
                    ("post.hook.backup.coffer.dev/on-error", "Ignore"),
                ],
                "post.hook.backup.coffer.dev/on-error",
            ),
            (
                vec![
                    ("pre.hook.backup.coffer.dev/command", r#"["x"]"#),
                    ("pre.hook.backup.coffer.dev/timeout", "soon"),
                ],
                "pre.hook.backup.coffer.dev/timeout",
            ),
            (
                vec![("pre.hook.backup.coffer.dev/container", "db")],
                "pre.hook.backup.coffer.dev/container",
            ),
        ] {
            let e = parse(&ann(&pairs), HOUR).unwrap_err().to_string();
            assert!(e.starts_with(&format!("annotation {named}:")), "{e}");
        }
    }

    /// A hook or a dump cannot hold a node's run slot longer than the
    /// administrator allows: a longer timeout is refused, naming the
    /// annotation and the limit; a dump's timeout is the limit by default.
    #[test]
    fn timeouts_above_the_administrator_s_limit_are_refused() {
        let pairs = [
            ("pre.hook.backup.coffer.dev/command", r#"["x"]"#),
            ("pre.hook.backup.coffer.dev/timeout", "2h"),
        ];
        let e = parse(&ann(&pairs), HOUR).unwrap_err().to_string();
        assert!(
            e.contains("pre.hook.backup.coffer.dev/timeout")
                && e.contains("limit")
                && e.contains("1h"),
            "{e}"
        );
        let d = parse_dump(&ann(&[(COMMAND, "x")]), "app", HOUR)
            .unwrap()
            .unwrap();
        assert_eq!(d.timeout, HOUR);
        let d = parse_dump(
            &ann(&[(COMMAND, "x"), (COMMAND_TIMEOUT, "5m")]),
            "app",
            HOUR,
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.timeout, Duration::from_secs(300));
        let e = parse_dump(
            &ann(&[(COMMAND, "x"), (COMMAND_TIMEOUT, "2h")]),
            "app",
            HOUR,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(COMMAND_TIMEOUT) && e.contains("limit"), "{e}");
    }

    #[test]
    fn a_dump_is_a_shell_line_or_an_array_with_a_safe_file_name() {
        let d = parse_dump(
            &ann(&[(COMMAND, "mysqldump --all-databases")]),
            "mysql",
            HOUR,
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.command, ["sh", "-c", "mysqldump --all-databases"]);
        assert_eq!(d.filename, "mysql.dump");
        let d = parse_dump(
            &ann(&[
                (COMMAND, r#"["pg_dumpall"]"#),
                (COMMAND_CONTAINER, "pg"),
                (COMMAND_FILENAME, "all.sql"),
            ]),
            "app",
            HOUR,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (d.command, d.container.as_deref(), d.filename.as_str()),
            (vec!["pg_dumpall".to_string()], Some("pg"), "all.sql")
        );
        assert!(parse_dump(&ann(&[]), "app", HOUR).unwrap().is_none());
        let e = parse_dump(
            &ann(&[(COMMAND, "x"), (COMMAND_FILENAME, "../etc/passwd")]),
            "app",
            HOUR,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(COMMAND_FILENAME), "{e}");
    }
}
