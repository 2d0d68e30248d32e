//! Status transitions of a run (VolumeBackup or VolumeRestore), pure: what
//! an agent does with a run it sees, and the status a result becomes.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};

use crate::crd::{Phase, Progress, RunErrors, RunStatus, MAX_ATTEMPTS};

/// The current time as Kubernetes writes it (RFC 3339, seconds, `Z`).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What this node's agent should do with a run it sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: it is over, or it belongs to another node, or it runs here.
    Nothing,
    /// Claim and start it (a new run whose pod is on this node).
    Start,
    /// It was InProgress on this node when the agent stopped: run it again
    /// (the engine reuses what was already stored).
    Resume,
    /// It was InProgress on this node too many times: mark it Failed.
    GiveUp,
    /// Stop the running task (`spec.cancel`).
    Cancel,
}

/// Decides for a run with `status`, whose pod is on `pod_node` (if known),
/// seen by the agent of `me`; `running_here` says whether this process runs
/// it now.
pub fn decide(
    status: Option<&RunStatus>,
    cancel: bool,
    pod_node: Option<&str>,
    me: &str,
    running_here: bool,
) -> Decision {
    let phase = status.map(|s| s.phase).unwrap_or_default();
    if phase.is_final() {
        return Decision::Nothing;
    }
    if running_here {
        return if cancel {
            Decision::Cancel
        } else {
            Decision::Nothing
        };
    }
    match phase {
        Phase::InProgress => {
            let mine = status.and_then(|s| s.node.as_deref()) == Some(me);
            if !mine {
                Decision::Nothing
            } else if status.map(|s| s.attempts).unwrap_or(0) >= MAX_ATTEMPTS {
                Decision::GiveUp
            } else {
                Decision::Resume
            }
        }
        _ if pod_node == Some(me) => Decision::Start,
        _ => Decision::Nothing,
    }
}

/// The status of a run just claimed by `node`.
pub fn started(previous: Option<&RunStatus>, node: &str, path: Option<String>) -> RunStatus {
    let attempts = previous.map(|s| s.attempts).unwrap_or(0) + 1;
    RunStatus {
        phase: Phase::InProgress,
        node: Some(node.to_string()),
        path,
        start_time: Some(now()),
        attempts,
        message: (attempts > 1).then(|| {
            format!("resumed on node {node} after the agent restarted (attempt {attempts} of {MAX_ATTEMPTS})")
        }),
        ..Default::default()
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The engine finished.
    Done {
        /// The snapshot written or read.
        snapshot_id: String,
        /// Bytes added to the repository (backups).
        incremental_bytes: Option<u64>,
        /// Final progress.
        progress: Progress,
        /// Files that could not be read or written: `path: reason`.
        errors: Vec<String>,
    },
    /// Stopped through `spec.cancel`.
    Canceled,
    /// Did not produce a result.
    Failed(String),
}

/// Paths listed in `status.errors`.
pub const MAX_ERROR_PATHS: usize = 10;

/// The final status of a run.
pub fn finished(mut status: RunStatus, outcome: Outcome) -> RunStatus {
    status.completion_time = Some(now());
    match outcome {
        Outcome::Done {
            snapshot_id,
            incremental_bytes,
            progress,
            errors,
        } => {
            status.snapshot_id = Some(snapshot_id);
            status.incremental_bytes = incremental_bytes;
            status.progress = Some(progress);
            if errors.is_empty() {
                status.phase = Phase::Completed;
                status.message = None;
            } else {
                status.phase = Phase::PartiallyFailed;
                status.message = Some(format!(
                    "{} file(s) could not be processed; the snapshot holds everything else",
                    errors.len()
                ));
                status.errors = Some(RunErrors {
                    count: errors.len() as u64,
                    paths: errors.into_iter().take(MAX_ERROR_PATHS).collect(),
                });
            }
        }
        Outcome::Canceled => {
            status.phase = Phase::Canceled;
            status.message = Some("canceled through spec.cancel".into());
        }
        Outcome::Failed(m) => {
            status.phase = Phase::Failed;
            status.message = Some(m);
        }
    }
    status
}

/// A backup's progress as status shows it.
pub fn progress_of(p: &coffer_engine::backup::BackupProgress) -> Progress {
    Progress {
        bytes_done: p.bytes_done,
        total_bytes: p.total_bytes,
        files_done: p.files_done,
        total_files: p.total_files,
    }
}

/// Writes a restore's progress (bytes placed of bytes to place) into its
/// VolumeRestore's status, at most every `every`, until the returned task is
/// aborted.
pub fn restore_progress(
    client: Client,
    ns: String,
    name: String,
    every: Duration,
) -> (
    coffer_engine::progress::ProgressFn,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    let callback = coffer_engine::progress::ProgressFn::new(move |p| {
        let _ = tx.send(Some(p.clone()));
    });
    let task = tokio::spawn(async move {
        let mut last: Option<std::time::Instant> = None;
        while rx.changed().await.is_ok() {
            if let Some(at) = last {
                tokio::time::sleep(every.saturating_sub(at.elapsed())).await;
            }
            let Some(p) = rx.borrow_and_update().clone() else {
                continue;
            };
            let progress = Progress {
                bytes_done: p.bytes_done,
                total_bytes: p.total_bytes,
                files_done: 0,
                total_files: None,
            };
            update::<crate::crd::VolumeRestore>(&client, &ns, &name, |s| {
                s.progress = Some(progress.clone())
            })
            .await;
            last = Some(std::time::Instant::now());
        }
    });
    (callback, task)
}

/// Writes a run's status (merge patch on the status subresource); with
/// `rv`, only if the object is still at that resourceVersion. Returns whether
/// it was written (a conflict or a missing object is not retried).
pub async fn write<K>(
    client: &Client,
    ns: &str,
    name: &str,
    s: &RunStatus,
    rv: Option<String>,
) -> bool
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut patch = serde_json::json!({ "status": s });
    if let Some(rv) = rv {
        patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    for attempt in 0..5u32 {
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return true,
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                tracing::debug!(namespace = ns, name, "status not written: {e}");
                return false;
            }
            Err(e) => {
                tracing::warn!(namespace = ns, name, attempt, "cannot write status: {e}");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    false
}

/// Changes a run's status unless it is over: reads it, applies `change`,
/// writes it back at the version read (again on a conflict). Returns the
/// status written, or `None` when the run had ended, is gone, or the API
/// server failed every try (see [`try_update`] to tell these apart).
pub async fn update<K>(
    client: &Client,
    ns: &str,
    name: &str,
    change: impl Fn(&mut RunStatus),
) -> Option<RunStatus>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + HasRunStatus,
{
    try_update::<K>(client, ns, name, change)
        .await
        .ok()
        .flatten()
}

/// A status the API server did not take, after every try.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the status of {kind} {ns}/{name}; the API server failed every try")]
pub struct NotWritten {
    /// The run's kind.
    pub kind: String,
    /// Its namespace.
    pub ns: String,
    /// Its name.
    pub name: String,
}

/// [`update`], saying when the status could not be written: `Ok(None)`
/// when the run had ended or is gone, `Err` when the API server failed
/// every try (the caller tries again later, so that no run stays open for
/// want of one write).
pub async fn try_update<K>(
    client: &Client,
    ns: &str,
    name: &str,
    change: impl Fn(&mut RunStatus),
) -> Result<Option<RunStatus>, NotWritten>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + HasRunStatus,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    for attempt in 0..8u32 {
        let current = match api.get_status(name).await {
            Ok(o) => o,
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
            Err(e) => {
                tracing::warn!(namespace = ns, name, attempt, "cannot read status: {e}");
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                continue;
            }
        };
        let mut s = current.run_status().cloned().unwrap_or_default();
        if s.phase.is_final() {
            return Ok(None);
        }
        change(&mut s);
        if write::<K>(
            client,
            ns,
            name,
            &s,
            current.meta().resource_version.clone(),
        )
        .await
        {
            return Ok(Some(s));
        }
    }
    Err(NotWritten {
        kind: K::kind(&()).into_owned(),
        ns: ns.into(),
        name: name.into(),
    })
}

/// Longest Event note, in bytes.
pub const MAX_NOTE: usize = 1000;

/// Publishes an Event about `reference` (its note cut to [`MAX_NOTE`] bytes,
/// at a character boundary). A failure is logged, never fatal.
pub async fn publish_event(
    recorder: &kube::runtime::events::Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: kube::runtime::events::EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = kube::runtime::events::Event {
        type_,
        reason: reason.into(),
        note: Some(cut_note(note)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        tracing::debug!("cannot publish an Event: {e}");
    }
}

/// `note` cut to at most [`MAX_NOTE`] bytes, at a character boundary.
fn cut_note(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    note
}

/// Kinds whose status is a [`RunStatus`].
pub trait HasRunStatus {
    /// `Backup` or `Restore`: the action of its Events, and the first word
    /// of their reasons (`BackupFailed`).
    const ACTION: &'static str;
    /// The status, if any.
    fn run_status(&self) -> Option<&RunStatus>;
}

impl HasRunStatus for crate::crd::VolumeBackup {
    const ACTION: &'static str = "Backup";
    fn run_status(&self) -> Option<&RunStatus> {
        self.status.as_ref()
    }
}

impl HasRunStatus for crate::crd::VolumeRestore {
    const ACTION: &'static str = "Restore";
    fn run_status(&self) -> Option<&RunStatus> {
        self.status.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(phase: Phase, node: Option<&str>, attempts: u32) -> RunStatus {
        RunStatus {
            phase,
            node: node.map(str::to_string),
            attempts,
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        use Decision::*;
        // New runs start on the pod's node only.
        assert_eq!(decide(None, false, Some("n1"), "n1", false), Start);
        assert_eq!(decide(None, false, Some("n2"), "n1", false), Nothing);
        assert_eq!(decide(None, false, None, "n1", false), Nothing);
        assert_eq!(
            decide(
                Some(&st(Phase::New, None, 0)),
                false,
                Some("n1"),
                "n1",
                false
            ),
            Start
        );
        // Final phases are left alone, even when canceled afterwards.
        for p in [
            Phase::Completed,
            Phase::PartiallyFailed,
            Phase::Failed,
            Phase::Canceled,
        ] {
            assert_eq!(
                decide(Some(&st(p, Some("n1"), 1)), true, Some("n1"), "n1", false),
                Nothing
            );
        }
        // Running here: only a cancel matters.
        let running = st(Phase::InProgress, Some("n1"), 1);
        assert_eq!(
            decide(Some(&running), false, Some("n1"), "n1", true),
            Nothing
        );
        assert_eq!(decide(Some(&running), true, Some("n1"), "n1", true), Cancel);
        // InProgress here but not in this process: a restart; resume, then give up.
        assert_eq!(
            decide(Some(&running), false, Some("n1"), "n1", false),
            Resume
        );
        let tired = st(Phase::InProgress, Some("n1"), MAX_ATTEMPTS);
        assert_eq!(decide(Some(&tired), false, Some("n1"), "n1", false), GiveUp);
        // Another node's run.
        assert_eq!(
            decide(Some(&running), false, Some("n1"), "n2", false),
            Nothing
        );
    }

    #[test]
    fn event_notes_are_cut_at_a_character_boundary() {
        // 999 ASCII bytes, then a 3-byte character across the limit.
        let note = format!("{}€tail", "a".repeat(999));
        let cut = cut_note(note);
        assert_eq!(cut, "a".repeat(999));
        assert_eq!(cut_note("short".into()), "short");
    }

    #[test]
    fn outcomes() {
        let s = started(None, "n1", Some("/data".into()));
        assert_eq!(
            (s.phase, s.attempts, s.message.is_none()),
            (Phase::InProgress, 1, true)
        );
        let again = started(Some(&s), "n1", None);
        assert_eq!(again.attempts, 2);
        assert!(again.message.unwrap().contains("attempt 2 of 3"));
        let done = finished(
            s.clone(),
            Outcome::Done {
                snapshot_id: "ab".into(),
                incremental_bytes: Some(5),
                progress: Progress::default(),
                errors: vec![],
            },
        );
        assert_eq!(done.phase, Phase::Completed);
        assert!(done.completion_time.is_some());
        let partial = finished(
            s.clone(),
            Outcome::Done {
                snapshot_id: "ab".into(),
                incremental_bytes: None,
                progress: Progress::default(),
                errors: (0..25)
                    .map(|i| format!("/f{i}: permission denied"))
                    .collect(),
            },
        );
        assert_eq!(partial.phase, Phase::PartiallyFailed);
        let e = partial.errors.unwrap();
        assert_eq!((e.count, e.paths.len()), (25, MAX_ERROR_PATHS));
        assert_eq!(
            finished(s.clone(), Outcome::Canceled).phase,
            Phase::Canceled
        );
        let f = finished(s, Outcome::Failed("pod db-0 was deleted".into()));
        assert_eq!(f.phase, Phase::Failed);
        assert_eq!(f.message.as_deref(), Some("pod db-0 was deleted"));
    }
}
