//! Reporting a run: its status written to the API server (with conflicts and
//! missing objects handled here), its progress, and its Events.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::Client;

use crate::api::NotWritten;
use crate::crd::{Progress, RunStatus};
use crate::run::RunObject;

/// How often a run's progress is written into its status, at most.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);

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
            update_run::<crate::crd::VolumeRestore>(&client, &ns, &name, |s| {
                s.progress = Some(progress.clone())
            })
            .await;
            last = Some(std::time::Instant::now());
        }
    });
    (callback, task)
}

/// What became of a status write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// It was written.
    Applied,
    /// The object changed since the version given: the next pass reads it.
    Conflict,
    /// The object is gone.
    Gone,
}

/// The one way coffer writes a status: a merge patch of `fields` (the
/// status object, or the fields of it to change) on the status
/// subresource of `K` `ns/name`; with `at_version`, only if the object is
/// still at that resourceVersion. Conflicts and missing objects are told
/// apart here, never by the callers; other errors are the API server's.
pub async fn patch_status<K>(
    client: &Client,
    ns: &str,
    name: &str,
    fields: serde_json::Value,
    at_version: Option<String>,
) -> Result<Written, kube::Error>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut patch = serde_json::json!({ "status": fields });
    if let Some(rv) = at_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    match Api::<K>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Written::Applied),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Written::Conflict),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Written::Gone),
        Err(e) => Err(e),
    }
}

/// Writes a run's status; with `rv`, only if the object is still at that
/// resourceVersion. Returns whether it was written (a conflict or a missing
/// object is not retried; a failing API server is, 5 times).
pub async fn write_run<K>(
    client: &Client,
    ns: &str,
    name: &str,
    s: &RunStatus,
    rv: Option<String>,
) -> bool
where
    K: RunObject,
{
    let fields = serde_json::json!(s);
    for attempt in 0..5u32 {
        match patch_status::<K>(client, ns, name, fields.clone(), rv.clone()).await {
            Ok(Written::Applied) => return true,
            Ok(w) => {
                tracing::debug!(namespace = ns, name, "status not written: {w:?}");
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
/// server failed every try (see [`try_update_run`] to tell these apart).
pub async fn update_run<K>(
    client: &Client,
    ns: &str,
    name: &str,
    change: impl Fn(&mut RunStatus),
) -> Option<RunStatus>
where
    K: RunObject,
{
    try_update_run::<K>(client, ns, name, change)
        .await
        .ok()
        .flatten()
}

/// [`update_run`], saying when the status could not be written: `Ok(None)`
/// when the run had ended or is gone, `Err` when the API server failed
/// every try (the caller tries again later, so that no run stays open for
/// want of one write).
pub async fn try_update_run<K>(
    client: &Client,
    ns: &str,
    name: &str,
    change: impl Fn(&mut RunStatus),
) -> Result<Option<RunStatus>, NotWritten>
where
    K: RunObject,
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
        s.observe(current.meta().generation);
        if write_run::<K>(
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

/// The one reporter of Events and run metrics, for the node agent and the
/// controller alike.
pub struct Reporter {
    recorder: kube::runtime::events::Recorder,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Reporter {
    /// Events signed by `controller` (`coffer-agent`, `coffer-controller`)
    /// from `instance` (the node, the replica).
    pub fn new(
        client: Client,
        controller: &str,
        instance: String,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Reporter {
        let recorder = kube::runtime::events::Recorder::new(
            client,
            kube::runtime::events::Reporter {
                controller: controller.into(),
                instance: Some(instance),
            },
        );
        Reporter { recorder, metrics }
    }

    /// An Event about the object `reference` names.
    pub async fn event_on_ref(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: kube::runtime::events::EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        publish_event(&self.recorder, reference, type_, reason, action, note).await
    }

    /// An Event about any object.
    pub async fn event_on<K: kube::Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        action: &str,
        type_: kube::runtime::events::EventType,
        reason: &str,
        note: String,
    ) {
        self.event_on_ref(&obj.object_ref(&()), type_, reason, action, note)
            .await
    }

    /// An Event about a run; its action is the run's (`Backup`, `Restore`).
    pub async fn run_event<K: RunObject>(
        &self,
        run: &K,
        type_: kube::runtime::events::EventType,
        reason: &str,
        note: String,
    ) {
        self.event_on(run, K::ACTION, type_, reason, note).await
    }

    /// The metrics of a run that ended (nothing for one that has not):
    /// its count by phase, the bytes it read (`bytes`, where known) and
    /// added, and how long it took (where known).
    pub fn run_ended(
        &self,
        kind: &str,
        ns: &str,
        st: &RunStatus,
        bytes: Option<u64>,
        took: Option<Duration>,
    ) {
        use crate::metrics::{NamespaceLabels, RunLabels};
        if !st.phase.is_final() {
            return;
        }
        let m = &self.metrics;
        m.runs
            .get_or_create(&RunLabels {
                kind: kind.into(),
                namespace: ns.into(),
                phase: st.phase.as_str().into(),
            })
            .inc();
        let l = NamespaceLabels {
            kind: kind.into(),
            namespace: ns.into(),
        };
        if let Some(b) = bytes {
            m.bytes.get_or_create(&l).inc_by(b);
        }
        if let Some(added) = st.incremental_bytes {
            m.bytes_added.get_or_create(&l).inc_by(added);
        }
        if let Some(t) = took {
            m.duration.get_or_create(&l).observe(t.as_secs_f64());
        }
    }
}

/// The type and reason of the Event that says a run of kind `K` ended in
/// `phase` (`BackupCompleted`, `RestoreFailed`): one table for the node
/// agent and the controller. A phase that is no end reads as a failure.
pub fn end_event<K: RunObject>(
    phase: crate::crd::Phase,
) -> (kube::runtime::events::EventType, String) {
    use crate::crd::Phase;
    use kube::runtime::events::EventType;
    let (type_, word) = match phase {
        Phase::Completed => (EventType::Normal, "Completed"),
        Phase::PartiallyFailed => (EventType::Warning, "PartiallyFailed"),
        Phase::Canceled => (EventType::Normal, "Canceled"),
        _ => (EventType::Warning, "Failed"),
    };
    (type_, format!("{}{word}", K::ACTION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_at_a_character_boundary() {
        // 999 ASCII bytes, then a 3-byte character across the limit.
        let note = format!("{}€tail", "a".repeat(999));
        let cut = cut_note(note);
        assert_eq!(cut, "a".repeat(999));
        assert_eq!(cut_note("short".into()), "short");
    }

    #[test]
    fn the_end_of_a_run_is_announced_with_its_kind_and_phase() {
        use crate::crd::{Phase, VolumeBackup, VolumeRestore};
        use kube::runtime::events::EventType;
        let reason = |p| end_event::<VolumeBackup>(p).1;
        assert_eq!(reason(Phase::Completed), "BackupCompleted");
        assert_eq!(reason(Phase::PartiallyFailed), "BackupPartiallyFailed");
        assert_eq!(reason(Phase::Canceled), "BackupCanceled");
        assert_eq!(reason(Phase::Failed), "BackupFailed");
        let (type_, reason) = end_event::<VolumeRestore>(Phase::Failed);
        assert_eq!(
            (type_, reason.as_str()),
            (EventType::Warning, "RestoreFailed")
        );
    }
}
