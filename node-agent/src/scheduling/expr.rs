//! Backup schedules: the annotation's language, parsed once, and the next
//! time a schedule fires. Pure: time comes in as an argument.
//!
//! The language:
//! - five-field cron (`30 2 * * *`), through the `croner` crate;
//! - `@hourly`, `@daily`, `@weekly`, `@monthly`;
//! - `@every DURATION` (`@every 6h`, `@every 90m`, at least one minute);
//! - `@hourly-random`, `@daily-random`, `@weekly-random`, `@monthly-random`:
//!   once per period, at a minute chosen from a hash of the volume's identity,
//!   so that a thousand pods with the same annotation do not start together,
//!   and the same volume keeps its minute across restarts and nodes.
//!
//! `@every` is spread the same way: its phase inside the interval comes from
//! the hash.

use std::str::FromStr;

use chrono::{DateTime, Duration, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A parsed schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// A cron expression (the random forms are turned into one).
    Cron(Box<Cron>),
    /// A fixed interval, phase-shifted by the volume's hash.
    Every {
        /// The interval.
        interval: Duration,
        /// Where inside the interval it fires (seconds after the epoch, mod interval).
        offset: i64,
    },
}

/// Why a schedule was refused.
#[derive(Debug, thiserror::Error)]
#[error("schedule {text:?}: {reason}; use five-field cron (\"30 2 * * *\"), @hourly, @daily, @weekly, @monthly, @every 6h, or @daily-random and friends")]
pub struct ScheduleError {
    text: String,
    reason: String,
}

impl Schedule {
    /// Parses `text`; `identity` (for example `namespace/owner/volume`) picks
    /// the minute of the random forms and the phase of `@every`.
    pub fn parse(text: &str, identity: &str) -> Result<Schedule, ScheduleError> {
        let err = |reason: &str| ScheduleError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let t = text.trim();
        let h = spread(identity);
        if let Some(d) = t.strip_prefix("@every") {
            let interval =
                parse_interval(d.trim()).ok_or_else(|| err("not a duration such as 6h or 90m"))?;
            if interval < Duration::minutes(1) {
                return Err(err("the interval must be at least 1m"));
            }
            let secs = interval.num_seconds();
            // Whole minutes inside the interval.
            let offset = ((h % secs as u64) / 60 * 60) as i64;
            return Ok(Schedule::Every {
                interval,
                offset: offset % secs,
            });
        }
        let minute = h % 60;
        let hour = (h / 60) % 24;
        let weekday = (h / (60 * 24)) % 7;
        let monthday = 1 + (h / (60 * 24 * 7)) % 28;
        let expr = match t {
            "@hourly-random" => format!("{minute} * * * *"),
            "@daily-random" => format!("{minute} {hour} * * *"),
            "@weekly-random" => format!("{minute} {hour} * * {weekday}"),
            "@monthly-random" => format!("{minute} {hour} {monthday} * *"),
            "@monthly" => "0 0 1 * *".to_string(),
            other
                if other.starts_with('@') && !matches!(other, "@hourly" | "@daily" | "@weekly") =>
            {
                return Err(err("unknown @ form"));
            }
            other => other.to_string(),
        };
        if !expr.starts_with('@') && expr.split_whitespace().count() != 5 {
            return Err(err(
                "cron needs exactly five fields (minute hour day month weekday)",
            ));
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).build();
        let cron = parser.parse(&expr).map_err(|e| err(&e.to_string()))?;
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// The first time the schedule fires strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(c) => c.find_next_occurrence(&after, false).ok(),
            Schedule::Every { interval, offset } => {
                let secs = interval.num_seconds();
                let t = after.timestamp();
                let k = (t - offset).div_euclid(secs) + 1;
                Utc.timestamp_opt(k * secs + offset, 0).single()
            }
        }
    }
}

/// A stable 64-bit hash of an identity (BLAKE3, so it is the same on every
/// node and across versions).
fn spread(identity: &str) -> u64 {
    let h = blake3::hash(identity.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// `6h`, `90m`, `1h30m`, `2d`, `45s` (humantime's language).
fn parse_interval(s: &str) -> Option<Duration> {
    Duration::from_std(humantime::parse_duration(s).ok()?).ok()
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    /// Parses with an empty identity (no spread); for tests and tools.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_and_shortcuts_fire_when_expected() {
        let s: Schedule = "30 2 * * *".parse().unwrap();
        assert_eq!(
            s.next_after(at("2026-11-24T10:00:00Z")),
            Some(at("2026-11-25T02:30:00Z"))
        );
        let s: Schedule = "@hourly".parse().unwrap();
        assert_eq!(
            s.next_after(at("2026-11-24T10:00:00Z")),
            Some(at("2026-11-24T11:00:00Z"))
        );
        let s: Schedule = "@daily".parse().unwrap();
        assert_eq!(
            s.next_after(at("2026-11-24T10:00:00Z")),
            Some(at("2026-11-25T00:00:00Z"))
        );
        let s: Schedule = "@weekly".parse().unwrap();
        // 2026-11-24 is a Tuesday; @weekly is Sunday midnight.
        assert_eq!(
            s.next_after(at("2026-11-24T10:00:00Z")),
            Some(at("2026-11-29T00:00:00Z"))
        );
        let s: Schedule = "@monthly".parse().unwrap();
        assert_eq!(
            s.next_after(at("2026-11-24T10:00:00Z")),
            Some(at("2026-12-01T00:00:00Z"))
        );
    }

    #[test]
    fn every_is_a_fixed_interval_with_a_stable_phase() {
        let s = Schedule::parse("@every 6h", "ns/StatefulSet/db/data").unwrap();
        let a = s.next_after(at("2026-11-24T10:00:00Z")).unwrap();
        let b = s.next_after(a).unwrap();
        assert_eq!(b - a, Duration::hours(6));
        assert!(a > at("2026-11-24T10:00:00Z") && a <= at("2026-11-24T16:00:00Z"));
        assert_eq!(a.timestamp() % 60, 0, "whole minutes");
        // The same identity gives the same phase; the phase spreads identities.
        let again = Schedule::parse("@every 6h", "ns/StatefulSet/db/data").unwrap();
        assert_eq!(again.next_after(at("2026-11-24T10:00:00Z")), Some(a));
        let s = Schedule::parse("@every 1h30m", "x").unwrap();
        let a = s.next_after(at("2026-11-24T10:00:00Z")).unwrap();
        assert_eq!(s.next_after(a).unwrap() - a, Duration::minutes(90));
    }

    #[test]
    fn random_forms_spread_volumes_over_the_period() {
        let now = at("2026-11-24T10:00:00Z");
        let mut minutes = std::collections::HashSet::new();
        let mut hours = std::collections::HashSet::new();
        for i in 0..1000 {
            let id = format!("team-{}/StatefulSet/db-{i}/data", i % 7);
            let s = Schedule::parse("@daily-random", &id).unwrap();
            let t = s.next_after(now).unwrap();
            assert!(t > now && t <= now + Duration::days(1));
            // Deterministic per volume.
            assert_eq!(
                Schedule::parse("@daily-random", &id)
                    .unwrap()
                    .next_after(now),
                Some(t)
            );
            minutes.insert(t.format("%H:%M").to_string());
            hours.insert(t.format("%H").to_string());
        }
        // 1000 volumes over 1440 minutes: far from one start time.
        assert!(
            minutes.len() > 400,
            "only {} distinct minutes",
            minutes.len()
        );
        assert_eq!(hours.len(), 24);
        let s = Schedule::parse("@hourly-random", "a").unwrap();
        let t = s.next_after(now).unwrap();
        assert_eq!(s.next_after(t).unwrap() - t, Duration::hours(1));
        let s = Schedule::parse("@weekly-random", "a").unwrap();
        let t = s.next_after(now).unwrap();
        assert_eq!(s.next_after(t).unwrap() - t, Duration::weeks(1));
        let s = Schedule::parse("@monthly-random", "a").unwrap();
        assert!(s.next_after(now).is_some());
    }

    #[test]
    fn bad_schedules_are_refused_with_the_language() {
        for bad in [
            "",
            "* * *",
            "0 0 * * * *",
            "61 * * * *",
            "@yearly-random",
            "@every",
            "@every 10s",
            "@every 6x",
            "@sometimes",
        ] {
            let e = Schedule::parse(bad, "x").unwrap_err().to_string();
            assert!(e.contains("five-field cron"), "{bad}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
