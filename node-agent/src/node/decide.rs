//! What this node's agent does with a run it sees, pure.

use crate::crd::{Phase, RunStatus, MAX_ATTEMPTS};

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
}
