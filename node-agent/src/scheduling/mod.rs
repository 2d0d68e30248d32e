//! Schedules: the language ([`expr`]) and the one durable rule for when a
//! schedule fires ([`tick`]), which BackupSchedules and repository
//! maintenance share. Missed times fire once, however long the process was
//! away, because the last time that fired is read from the object.

use chrono::{DateTime, Timelike, Utc};

pub mod expr;

pub use crate::time::created_at;
pub use expr::{Schedule, ScheduleError};

/// What a schedule does now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tick {
    /// Nothing until this time (never, while paused).
    Wait(Option<DateTime<Utc>>),
    /// Create the runs now; `trigger` is the `backup-now` value acted on.
    Fire {
        /// The manual trigger, if that is why.
        trigger: Option<String>,
    },
}

/// Whether a schedule fires at `now`: a new trigger value (one that is not
/// `last_trigger`) always does, paused or not; otherwise the first time of
/// `schedule` after `last` (or `created`), unless paused or there is no
/// schedule. Missed times fire once.
pub fn tick(
    schedule: Option<&Schedule>,
    paused: bool,
    trigger: Option<&str>,
    last_trigger: Option<&str>,
    last: Option<DateTime<Utc>>,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Tick {
    if let Some(t) = trigger.filter(|t| last_trigger != Some(*t)) {
        return Tick::Fire {
            trigger: Some(t.to_string()),
        };
    }
    let Some(schedule) = schedule.filter(|_| !paused) else {
        return Tick::Wait(None);
    };
    match schedule.next_after(last.unwrap_or(created)) {
        Some(next) if next <= now => Tick::Fire { trigger: None },
        next => Tick::Wait(next),
    }
}

/// The latest time of `schedule` at or before `now`, from `due` (a time of
/// the schedule at or before `now`): the one time that fires for all the
/// times missed since `due`, so that missed times fire once.
pub fn latest_due(schedule: &Schedule, due: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    let mut at = due;
    // Bounded: a schedule every minute missed for ten years is 5 million
    // steps; past the bound, the time fired is `now`'s minute.
    for _ in 0..1_000_000 {
        match schedule.next_after(at) {
            Some(n) if n <= now => at = n,
            _ => return at,
        }
    }
    now.with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BackupScheduleStatus, Timestamp};
    use crate::time::stamp;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_schedule_fires_once_per_time_a_trigger_once_per_value_and_not_while_paused() {
        let daily: Schedule = "0 2 * * *".parse().unwrap();
        let created = t("2026-11-20T10:00:00Z");
        let mut st = BackupScheduleStatus::default();
        let tick = |_: &Schedule, paused, trigger, st: &BackupScheduleStatus, created, now| {
            let last = st
                .last_schedule_time
                .max(st.last_skipped_time)
                .map(Timestamp::at);
            let last_trigger = st.last_trigger.as_deref();
            tick(
                Some(&daily),
                paused,
                trigger,
                last_trigger,
                last,
                created,
                now,
            )
        };
        // Before the first time: wait for it.
        let now = t("2026-11-21T01:00:00Z");
        assert_eq!(
            tick(&daily, false, None, &st, created, now),
            Tick::Wait(Some(t("2026-11-21T02:00:00Z")))
        );
        // Three missed times fire once.
        let now = t("2026-11-24T09:00:00Z");
        assert_eq!(
            tick(&daily, false, None, &st, created, now),
            Tick::Fire { trigger: None }
        );
        st.last_schedule_time = Some(stamp("2026-11-24T09:00:00.000Z"));
        assert_eq!(
            tick(&daily, false, None, &st, created, now),
            Tick::Wait(Some(t("2026-11-25T02:00:00Z")))
        );
        // Paused: nothing, but a new backup-now value still fires, once.
        assert_eq!(
            tick(&daily, true, None, &st, created, now),
            Tick::Wait(None)
        );
        assert_eq!(
            tick(&daily, true, Some("1"), &st, created, now),
            Tick::Fire {
                trigger: Some("1".into())
            }
        );
        st.last_trigger = Some("1".into());
        assert_eq!(
            tick(&daily, true, Some("1"), &st, created, now),
            Tick::Wait(None)
        );
        // A skipped time counts as the last one.
        st.last_skipped_time = Some(stamp("2026-11-25T02:00:00Z"));
        let later = t("2026-11-25T03:00:00Z");
        assert_eq!(
            tick(&daily, false, None, &st, created, later),
            Tick::Wait(Some(t("2026-11-26T02:00:00Z")))
        );
        // No schedule: only triggers fire.
        assert_eq!(
            super::tick(None, false, None, None, None, created, later),
            Tick::Wait(None)
        );
        assert_eq!(
            super::tick(None, false, Some("2"), Some("1"), None, created, later),
            Tick::Fire {
                trigger: Some("2".into())
            }
        );
    }

    #[test]
    fn missed_times_collapse_into_the_latest_one() {
        let hourly = Schedule::parse("0 * * * *", "x").unwrap();
        let due = t("2026-01-01T00:00:00Z");
        assert_eq!(
            latest_due(&hourly, due, t("2026-01-02T05:30:00Z")),
            t("2026-01-02T05:00:00Z")
        );
        assert_eq!(latest_due(&hourly, due, t("2026-01-01T00:10:00Z")), due);
        let yearly = Schedule::parse("0 0 1 1 *", "x").unwrap();
        assert_eq!(
            latest_due(
                &yearly,
                t("2024-01-01T00:00:00Z"),
                t("2026-12-06T10:00:00Z")
            ),
            t("2026-01-01T00:00:00Z")
        );
    }
}
