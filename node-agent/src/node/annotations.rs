//! Pod annotations: shortcuts that create VolumeBackup objects. Pure parsing.
//!
//! | annotation | value |
//! |---|---|
//! | `backup.coffer.dev/volumes` | `*`, or volume names separated by commas |
//! | `backup.coffer.dev/volumes-excludes` | volume names left out (with `*`) |
//! | `backup.coffer.dev/exclude.<volume>` | patterns inside that volume, comma- or newline-separated |
//! | `backup.coffer.dev/schedule` | see [`crate::scheduling`] |
//! | `backup.coffer.dev/repository` | the BackupRepository (default `default`) |
//! | `backup.coffer.dev/tags` | tags for the snapshots, comma-separated |
//! | `backup.coffer.dev/backup-now` | any new value starts one backup of each selected volume |
//! | `backup.coffer.dev/keep-last`, `keep-hourly`, `keep-daily`, `keep-weekly`, `keep-monthly`, `keep-yearly` | a count: the schedule's retention (`coffer forget --keep-…`), applied per volume after each scheduled backup |
//! | `backup.coffer.dev/keep-within` | a duration such as `14d`: keep every scheduled snapshot that recent |
//! | `backup.coffer.dev/command` | a dump (see [`crate::hooks`]): backed up with the volumes, as the pseudo-volume [`DUMP_VOLUME`] |

use std::collections::BTreeMap;

use crate::crd::DEFAULT_REPOSITORY;
use crate::names::BACKUP_NOW;
use crate::scheduling::{Schedule, ScheduleError};

/// The annotations' common prefix.
pub const PREFIX: &str = "backup.coffer.dev/";
/// Which volumes.
pub const VOLUMES: &str = "backup.coffer.dev/volumes";
/// Which volumes not.
pub const VOLUMES_EXCLUDES: &str = "backup.coffer.dev/volumes-excludes";
/// Per-volume excludes: this prefix plus the volume's name.
pub const EXCLUDE_PREFIX: &str = "backup.coffer.dev/exclude.";
/// When.
pub const SCHEDULE: &str = "backup.coffer.dev/schedule";
/// Into which BackupRepository.
pub const REPOSITORY: &str = "backup.coffer.dev/repository";
/// Tags.
pub const TAGS: &str = "backup.coffer.dev/tags";

/// The retention annotations' prefix: `keep-last`, `keep-hourly`, …,
/// `keep-within`, as `coffer forget` spells its flags.
pub const KEEP_PREFIX: &str = "backup.coffer.dev/keep-";

/// The pseudo-volume that stands for a pod's dump (`backup.coffer.dev/command`)
/// among the selected volumes; its runs have method Command.
pub const DUMP_VOLUME: &str = "coffer-dump";

/// What a pod's annotations ask for.
#[derive(Clone, Debug)]
pub struct BackupRequest {
    /// The volumes selected (checked against the pod spec).
    pub volumes: Vec<String>,
    /// Patterns per volume.
    pub excludes: BTreeMap<String, Vec<String>>,
    /// The schedule, if any (its text, parsed per volume for the spread).
    pub schedule: Option<String>,
    /// The BackupRepository.
    pub repository: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The current `backup-now` value, if any.
    pub backup_now: Option<String>,
    /// What the schedule keeps of each volume's scheduled snapshots; none:
    /// every snapshot is kept.
    pub retention: Option<coffer_engine::forget::Policy>,
}

/// A problem with a pod's annotations, for an Event on the pod.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    /// A volume named in `backup.coffer.dev/volumes` is not in the pod spec.
    #[error("annotation {VOLUMES} names volume {0:?}, which the pod does not have")]
    UnknownVolume(String),
    /// The schedule does not parse.
    #[error("annotation {SCHEDULE}: {0}")]
    Schedule(#[from] ScheduleError),
    /// A retention annotation that is not a count or a duration, or is unknown.
    #[error("annotation {0}: {1}")]
    Retention(String, String),
}

/// The schedule's retention from the `backup.coffer.dev/keep-…`
/// annotations; `None` when there is none. A policy that keeps nothing
/// cannot be written (every count is zero): the engine would refuse it.
pub fn retention(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<coffer_engine::forget::Policy>, AnnotationError> {
    let mut policy = coffer_engine::forget::Policy::default();
    let mut any = false;
    for (key, value) in annotations {
        let Some(rule) = key.strip_prefix(KEEP_PREFIX) else {
            continue;
        };
        any = true;
        let bad = |why: String| AnnotationError::Retention(key.clone(), why);
        let value = value.trim();
        if rule == "within" {
            let d = coffer_engine::forget::parse_duration(value).map_err(|e| bad(e.to_string()))?;
            policy.within = Some(d);
            continue;
        }
        let slot =
            match rule {
                "last" => &mut policy.last,
                "hourly" => &mut policy.hourly,
                "daily" => &mut policy.daily,
                "weekly" => &mut policy.weekly,
                "monthly" => &mut policy.monthly,
                "yearly" => &mut policy.yearly,
                _ => return Err(bad(
                    "unknown; the retention annotations are keep-last, keep-hourly, keep-daily, \
                     keep-weekly, keep-monthly, keep-yearly and keep-within"
                        .into(),
                )),
            };
        *slot = value
            .parse()
            .map_err(|_| bad(format!("{value:?} is not a count of snapshots (0 or more)")))?;
    }
    if any && policy.is_empty() {
        return Err(AnnotationError::Retention(
            format!("{KEEP_PREFIX}…"),
            "keeps nothing; set a count above 0 or a keep-within, or remove the keep \
             annotations to keep every snapshot"
                .into(),
        ));
    }
    Ok(any.then_some(policy))
}

fn list(value: &str) -> Vec<String> {
    value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Reads the annotations of a pod with volumes `pod_volumes`; `None` when it
/// asks for no backup. `identity` keys the schedule's spread.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    pod_volumes: &[String],
    identity: impl Fn(&str) -> String,
) -> Result<Option<BackupRequest>, AnnotationError> {
    let dump = annotations.contains_key(crate::hooks::COMMAND);
    let selected = match annotations.get(VOLUMES) {
        Some(s) => s.as_str(),
        None if dump => "",
        None => return Ok(None),
    };
    let excluded = annotations
        .get(VOLUMES_EXCLUDES)
        .map(|v| list(v))
        .unwrap_or_default();
    let mut volumes = Vec::new();
    if selected.trim() == "*" {
        volumes.extend(pod_volumes.iter().cloned());
    } else {
        for v in list(selected) {
            if !pod_volumes.contains(&v) {
                return Err(AnnotationError::UnknownVolume(v));
            }
            volumes.push(v);
        }
    }
    volumes.retain(|v| !excluded.contains(v));
    volumes.dedup();
    if dump {
        volumes.push(DUMP_VOLUME.to_string());
    }
    let excludes = annotations
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(EXCLUDE_PREFIX)?.to_string(), list(v))))
        .collect();
    let schedule = match annotations.get(SCHEDULE).map(|s| s.trim()) {
        None | Some("") => None,
        Some(s) => {
            // Refuse a bad schedule now, with the volume-independent error.
            for v in &volumes {
                Schedule::parse(s, &identity(v))?;
            }
            Some(s.to_string())
        }
    };
    let retention = retention(annotations)?;
    Ok(Some(BackupRequest {
        retention,
        volumes,
        excludes,
        schedule,
        repository: annotations
            .get(REPOSITORY)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_REPOSITORY.to_string()),
        tags: annotations.get(TAGS).map(|v| list(v)).unwrap_or_default(),
        backup_now: annotations
            .get(BACKUP_NOW)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn vols() -> Vec<String> {
        ["data", "logs", "cache", "token"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn no_annotation_no_request() {
        assert!(parse(&ann(&[(SCHEDULE, "@daily")]), &vols(), |v| v.into())
            .unwrap()
            .is_none());
    }

    #[test]
    fn star_minus_excludes_with_per_volume_patterns() {
        let r = parse(
            &ann(&[
                (VOLUMES, "*"),
                (VOLUMES_EXCLUDES, "cache, token"),
                ("backup.coffer.dev/exclude.data", "*.tmp,\nlost+found"),
                (SCHEDULE, "@daily-random"),
                (REPOSITORY, "offsite"),
                (TAGS, "nightly, db"),
                (BACKUP_NOW, "2026-11-24T10:00"),
            ]),
            &vols(),
            |v| format!("ns/pod/{v}"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.volumes, ["data", "logs"]);
        assert_eq!(r.excludes["data"], ["*.tmp", "lost+found"]);
        assert_eq!(r.schedule.as_deref(), Some("@daily-random"));
        assert_eq!(r.repository, "offsite");
        assert_eq!(r.tags, ["nightly", "db"]);
        assert_eq!(r.backup_now.as_deref(), Some("2026-11-24T10:00"));
    }

    #[test]
    fn a_list_and_the_default_repository() {
        let r = parse(&ann(&[(VOLUMES, "logs,data")]), &vols(), |v| v.into())
            .unwrap()
            .unwrap();
        assert_eq!(r.volumes, ["logs", "data"]);
        assert_eq!(r.repository, "default");
        assert!(r.schedule.is_none() && r.backup_now.is_none());
    }

    #[test]
    fn keep_annotations_become_the_schedules_retention() {
        let r = parse(
            &ann(&[
                (VOLUMES, "data"),
                (SCHEDULE, "@daily"),
                ("backup.coffer.dev/keep-daily", " 7 "),
                ("backup.coffer.dev/keep-last", "2"),
                ("backup.coffer.dev/keep-within", "36h"),
            ]),
            &vols(),
            |v| v.into(),
        )
        .unwrap()
        .unwrap();
        let want = coffer_engine::forget::Policy {
            daily: 7,
            last: 2,
            within: Some(chrono::Duration::hours(36)),
            ..Default::default()
        };
        assert_eq!(r.retention, Some(want));
        // No keep annotation: every snapshot is kept.
        assert_eq!(retention(&ann(&[(SCHEDULE, "@daily")])).unwrap(), None);
        // Each bad one is named, with what is wrong.
        for (key, value, says) in [
            (
                "backup.coffer.dev/keep-daily",
                "seven",
                "\"seven\" is not a count",
            ),
            (
                "backup.coffer.dev/keep-daily",
                "-1",
                "\"-1\" is not a count",
            ),
            (
                "backup.coffer.dev/keep-within",
                "soon",
                "\"soon\" is not a duration",
            ),
            (
                "backup.coffer.dev/keep-forever",
                "1",
                "unknown; the retention annotations",
            ),
            ("backup.coffer.dev/keep-last", "0", "keeps nothing"),
        ] {
            let e = parse(&ann(&[(VOLUMES, "data"), (key, value)]), &vols(), |v| {
                v.into()
            })
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("annotation backup.coffer.dev/keep-"), "{e}");
            assert!(e.contains(says), "{key}={value}: {e}");
        }
    }

    #[test]
    fn errors_name_the_annotation_and_the_value() {
        let e = parse(&ann(&[(VOLUMES, "data,nope")]), &vols(), |v| v.into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation backup.coffer.dev/volumes names volume \"nope\", which the pod does not have"
        );
        let e = parse(
            &ann(&[(VOLUMES, "data"), (SCHEDULE, "every day")]),
            &vols(),
            |v| v.into(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("annotation backup.coffer.dev/schedule: schedule \"every day\""),
            "{e}"
        );
    }
}
