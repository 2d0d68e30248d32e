//! Time as coffer's objects and the API server write it.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use kube::Resource;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A time in a coffer status, annotation or mover argument: a UTC instant to
/// the millisecond, written as RFC 3339 with milliseconds and `Z`
/// (`2026-12-07T04:07:57.123Z`), and read from any RFC 3339 text.
///
/// One precision and one format: a schedule's `lastScheduleTime`, the
/// `coffer.dev/scheduled-at` annotation of the runs it created and a
/// maintenance job's `--scheduled-at` name the same instant, and compare
/// equal as values after a round trip through any of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// `at`, to the millisecond.
    pub fn new(at: DateTime<Utc>) -> Self {
        Timestamp(at.trunc_subsecs(3))
    }

    /// Now, to the millisecond.
    pub fn now() -> Self {
        Timestamp::new(Utc::now())
    }

    /// The instant.
    pub fn at(self) -> DateTime<Utc> {
        self.0
    }
}

/// The Unix epoch: the time of a result that has none yet.
impl Default for Timestamp {
    fn default() -> Self {
        Timestamp(DateTime::UNIX_EPOCH)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(at: DateTime<Utc>) -> Self {
        Timestamp::new(at)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

impl FromStr for Timestamp {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| Timestamp::new(t.with_timezone(&Utc)))
            .map_err(|e| {
                format!("{text:?} is not an RFC 3339 time ({e}); write it as 2026-12-07T02:00:00Z")
            })
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "date-time"})
    }
}

/// When `obj` was created (`now` when the server did not say).
pub fn created_at<K: Resource>(obj: &K, now: DateTime<Utc>) -> DateTime<Utc> {
    obj.meta()
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
        .unwrap_or(now)
}

/// The time an RFC 3339 text names, for tests.
#[cfg(test)]
pub(crate) fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc)
}

/// The [`Timestamp`] an RFC 3339 text names, for tests.
#[cfg(test)]
pub(crate) fn stamp(text: &str) -> Timestamp {
    Timestamp::new(utc(text))
}

/// How long ago `obj` was created (zero when the server did not say).
pub fn age<K: Resource>(obj: &K, now: DateTime<Utc>) -> Duration {
    (now - created_at(obj, now))
        .to_std()
        .unwrap_or(Duration::ZERO)
}

/// The time left of `limit` since `since` (all of it when unknown).
pub fn remaining(
    since: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    limit: Duration,
) -> Duration {
    let Some(t) = since else { return limit };
    let elapsed = Utc::now().timestamp() - t.0.as_second();
    limit.saturating_sub(Duration::from_secs(elapsed.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_is_written_to_the_millisecond_and_reads_back_equal() {
        let t = Timestamp::new(utc("2026-12-07T04:07:57.123456789+02:00"));
        assert_eq!(t.to_string(), "2026-12-07T02:07:57.123Z");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-12-07T02:07:57.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        // What Kubernetes writes (seconds) reads as the same instant.
        assert_eq!(
            "2026-12-07T02:07:57Z".parse::<Timestamp>().unwrap(),
            Timestamp::new(utc("2026-12-07T02:07:57.000Z"))
        );
    }

    #[test]
    fn a_text_that_is_no_time_is_refused_naming_it() {
        let e = "yesterday".parse::<Timestamp>().unwrap_err();
        assert!(e.contains("\"yesterday\"") && e.contains("RFC 3339"), "{e}");
        let e = serde_json::from_str::<Timestamp>("\"2026-13-01T00:00:00Z\"").unwrap_err();
        assert!(e.to_string().contains("2026-13-01"), "{e}");
    }
}
