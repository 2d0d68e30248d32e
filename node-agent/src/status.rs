//! Status transitions, pure: what an agent does with a run it sees, the
//! status a result becomes, and the conditions of the other kinds.

use crate::crd::{Condition, Phase, Progress, RunErrors, RunStatus, Timestamp, MAX_ATTEMPTS};
use crate::run::Stage;

/// The status of a run just claimed by `node`.
pub fn started(previous: Option<&RunStatus>, node: &str, path: Option<String>) -> RunStatus {
    let attempts = previous.map(|s| s.attempts).unwrap_or(0) + 1;
    RunStatus {
        phase: Phase::InProgress,
        node: Some(node.to_string()),
        path,
        start_time: Some(Timestamp::now()),
        attempts,
        message: (attempts > 1).then(|| {
            format!("resumed on node {node} after the agent restarted (attempt {attempts} of {MAX_ATTEMPTS})")
        }),
        conditions: previous.map(|s| s.conditions.clone()).unwrap_or_default(),
        ..Default::default()
    }
    .with_conditions()
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

/// Ends `status` now: its completion time, and how long it ran.
fn ended(status: &mut RunStatus) {
    let now = Timestamp::now();
    status.completion_time = Some(now);
    status.duration = status.start_time.map(|start| {
        let secs = (now.at() - start.at()).num_seconds().max(0);
        humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
    });
}

/// The final status of a run.
pub fn finished(mut status: RunStatus, outcome: Outcome) -> RunStatus {
    ended(&mut status);
    match outcome {
        Outcome::Done {
            snapshot_id,
            incremental_bytes,
            progress,
            errors,
        } => {
            status.snapshot_id = Some(snapshot_id);
            status.incremental_bytes = incremental_bytes;
            status.size = Some(bytesize::ByteSize(progress.bytes_done).to_string());
            status.progress = Some(progress);
            status.errors = (!errors.is_empty()).then(|| RunErrors {
                count: errors.len() as u64,
                paths: errors.into_iter().take(MAX_ERROR_PATHS).collect(),
            });
            return complete(status);
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
    status.with_conditions()
}

/// The final status of a run whose controller judged the outcome itself
/// (an application backup): `phase`, with `message`, ended now.
pub fn concluded(mut status: RunStatus, phase: Phase, message: Option<String>) -> RunStatus {
    ended(&mut status);
    status.phase = phase;
    status.message = message;
    status.with_conditions()
}

/// A restore whose data is in the volume it filled: its result recorded,
/// still InProgress, at stage HandingOver, until the controller has handed
/// the volume to the target claim and ends it ([`handed_over`]). Any other
/// outcome ends it.
pub fn filled(status: RunStatus, outcome: Outcome) -> RunStatus {
    let mut done = match outcome {
        Outcome::Done { .. } => finished(status, outcome),
        other => return finished(status, other),
    };
    done.phase = Phase::InProgress;
    done.stage = Some(Stage::HandingOver.into());
    done.completion_time = None;
    done.duration = None;
    done.message = None;
    done.with_conditions()
}

/// A filled restore whose volume its target claim now holds: Completed,
/// or PartiallyFailed when files could not be written.
pub fn handed_over(mut status: RunStatus) -> RunStatus {
    ended(&mut status);
    complete(status)
}

/// Completed, or PartiallyFailed where files could not be processed.
fn complete(mut status: RunStatus) -> RunStatus {
    match status.errors.as_ref().map(|e| e.count).unwrap_or(0) {
        0 => {
            status.phase = Phase::Completed;
            status.message = None;
        }
        n => {
            status.phase = Phase::PartiallyFailed;
            status.message = Some(format!(
                "{n} file(s) could not be processed; the snapshot holds everything else"
            ));
        }
    }
    status.with_conditions()
}

impl RunStatus {
    /// This status with its conditions following its phase: `Completed`
    /// and `Failed` both `False` while it runs, then `Completed` `True`
    /// (reason `Completed` or `PartiallyFailed`) or `Failed` `True` (reason
    /// `Failed` or `Canceled`), with the message.
    pub fn with_conditions(mut self) -> RunStatus {
        let (completed, failed) = match self.phase {
            Phase::New => return self,
            Phase::InProgress => (false, false),
            Phase::Completed | Phase::PartiallyFailed => (true, false),
            Phase::Failed | Phase::Canceled => (false, true),
        };
        let reason = format!("{:?}", self.phase);
        let message = self.message.clone().unwrap_or_default();
        let now = Timestamp::now();
        for (type_, ok) in [("Completed", completed), ("Failed", failed)] {
            set_condition(
                &mut self.conditions,
                type_,
                ok,
                &reason,
                message.clone(),
                now,
            );
        }
        self.observe(self.observed_generation);
        self
    }

    /// Records that this status (and each of its conditions) describes
    /// generation `generation` of its object.
    pub fn observe(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
        for c in &mut self.conditions {
            c.observed_generation = generation;
        }
    }
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

/// Sets condition `type_`, keeping its transition time when the status
/// did not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    let status = if ok { "True" } else { "False" };
    let since = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time)
        .unwrap_or(now);
    let generation = conditions.iter().find_map(|c| c.observed_generation);
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: Some(since),
        observed_generation: generation,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_restore_stays_in_progress_until_its_volume_is_handed_over() {
        let done = |errors: Vec<String>| Outcome::Done {
            snapshot_id: "abc".into(),
            incremental_bytes: None,
            progress: Progress::default(),
            errors,
        };
        let st = filled(RunStatus::default(), done(vec![]));
        assert_eq!(st.phase, Phase::InProgress);
        assert_eq!(Stage::of(&st), Some(Stage::HandingOver));
        assert_eq!(st.snapshot_id.as_deref(), Some("abc"));
        assert!(st.completion_time.is_none());
        let end = handed_over(st);
        assert_eq!(end.phase, Phase::Completed);
        assert!(end.completion_time.is_some());
        let partial = handed_over(filled(
            RunStatus::default(),
            done(vec!["/x: denied".into()]),
        ));
        assert_eq!(partial.phase, Phase::PartiallyFailed);
        assert_eq!(partial.errors.unwrap().count, 1);
        // Anything but a result ends the run at once.
        let failed = filled(RunStatus::default(), Outcome::Failed("no space".into()));
        assert_eq!(failed.phase, Phase::Failed);
    }

    #[test]
    fn an_ended_run_says_how_long_it_ran_and_how_much_it_moved_for_humans() {
        let start = Timestamp::new(chrono::Utc::now() - chrono::Duration::seconds(90));
        let running = RunStatus {
            start_time: Some(start),
            ..Default::default()
        };
        let done = finished(
            running.clone(),
            Outcome::Done {
                snapshot_id: "ab".into(),
                incremental_bytes: None,
                progress: Progress {
                    bytes_done: 3 * 1024 * 1024 / 2,
                    ..Default::default()
                },
                errors: vec![],
            },
        );
        // Ninety seconds, give or take the second the test may cross.
        let d = done.duration.unwrap();
        assert!(d == "1m 30s" || d == "1m 31s", "{d}");
        assert_eq!(done.size.as_deref(), Some("1.5 MiB"));
        // A failed run has a duration and no size.
        let failed = finished(running, Outcome::Failed("no".into()));
        assert!(failed.duration.is_some() && failed.size.is_none());
        // A run that never started has no duration.
        let never = finished(RunStatus::default(), Outcome::Failed("no".into()));
        assert_eq!(never.duration, None);
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

    fn condition(s: &RunStatus, type_: &str) -> (String, String, String) {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn a_run_has_completed_and_failed_conditions_as_a_job_has() {
        let strs = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert!(RunStatus::default().with_conditions().conditions.is_empty());
        let mut s = started(None, "n1", None);
        assert_eq!(condition(&s, "Completed"), strs("False", "InProgress", ""));
        assert_eq!(condition(&s, "Failed"), strs("False", "InProgress", ""));
        s.observe(Some(3));
        let done = finished(s.clone(), Outcome::Failed("pod db-0 was deleted".into()));
        assert_eq!(
            condition(&done, "Failed"),
            strs("True", "Failed", "pod db-0 was deleted")
        );
        assert_eq!(condition(&done, "Completed").0, "False");
        assert_eq!(done.conditions.len(), 2, "a list-map keyed by type");
        assert!(done
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(3) && c.last_transition_time.is_some()));
        let ok = Outcome::Done {
            snapshot_id: "ab".into(),
            incremental_bytes: None,
            progress: Progress::default(),
            errors: vec!["/x: denied".into()],
        };
        let partial = finished(s.clone(), ok);
        assert_eq!(condition(&partial, "Completed").0, "True");
        assert_eq!(condition(&partial, "Completed").1, "PartiallyFailed");
        let canceled = finished(s, Outcome::Canceled);
        assert_eq!(condition(&canceled, "Failed").1, "Canceled");
        // A resumed run keeps its conditions' transition times.
        let resumed = started(Some(&canceled), "n2", None);
        let before = canceled.conditions.iter().find(|c| c.type_ == "Completed");
        let after = resumed.conditions.iter().find(|c| c.type_ == "Completed");
        assert_eq!(
            before.unwrap().last_transition_time,
            after.unwrap().last_transition_time
        );
    }

    #[test]
    fn conditions_keep_their_transition_time_until_they_change() {
        let [t1, t2, t3] = [
            "2026-12-01T00:00:00Z",
            "2026-12-02T00:00:00Z",
            "2026-12-03T00:00:00Z",
        ]
        .map(crate::time::stamp);
        let mut c = Vec::new();
        set_condition(&mut c, "Scheduled", true, "Scheduled", String::new(), t1);
        set_condition(&mut c, "Scheduled", true, "Scheduled", String::new(), t2);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Some(t1));
        set_condition(&mut c, "Scheduled", false, "Paused", String::new(), t3);
        assert_eq!(c[0].status, "False");
        assert_eq!(c[0].last_transition_time, Some(t3));
    }
}
