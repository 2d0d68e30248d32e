//! Time as the API server writes it.

use chrono::{DateTime, Utc};
use kube::Resource;
use std::time::Duration;

/// The current time as Kubernetes writes it (RFC 3339, seconds, `Z`).
pub fn now_secs() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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
