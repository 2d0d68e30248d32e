//! Forget: which snapshots a retention policy keeps, and why.
//!
//! Snapshots are grouped (by host and paths unless told otherwise) and each
//! group is sorted newest first. A snapshot is kept when any rule keeps it:
//!
//! - `last N`: the N newest;
//! - `hourly/daily/weekly/monthly/yearly N`: the newest snapshot of each of the
//!   N newest distinct hours (days, ISO weeks, months, years) that have one,
//!   in the snapshot's own recorded time zone;
//! - `within D`: every snapshot at most D older than the group's newest one
//!   (no clock is read: the group's newest snapshot is the reference);
//! - `tag T`: every snapshot carrying T.
//!
//! Computing the plan changes nothing; [`execute`] removes the snapshot files.
//! The data they referenced is freed by prune.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, FixedOffset, Timelike};

use coffer_repo_format::snapshot::Snapshot;
use coffer_repo_format::SnapshotId;

use crate::error::{Error, Result};
use crate::repository::{snapshot_time, Repository};

pub use crate::filter::{Filter, OriginFilter};

/// A retention policy. Counts of 0 are off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the N newest.
    pub last: usize,
    /// Keep the newest of each of the N newest hours.
    pub hourly: usize,
    /// Days.
    pub daily: usize,
    /// ISO weeks.
    pub weekly: usize,
    /// Months.
    pub monthly: usize,
    /// Years.
    pub yearly: usize,
    /// Keep everything at most this long before the group's newest snapshot.
    pub within: Option<chrono::Duration>,
    /// Keep snapshots with any of these tags.
    pub tags: Vec<String>,
}

impl Policy {
    /// Whether the policy keeps anything at all (an empty policy is refused:
    /// it would forget every snapshot).
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// Parses a duration such as `7d`, `2w`, `1y6m`, `36h`; units: `y` (365 days),
/// `m` (30 days), `w`, `d`, `h`.
pub fn parse_duration(s: &str) -> Result<chrono::Duration> {
    let bad =
        || Error::InvalidArgument(format!("{s:?} is not a duration like 7d, 2w, 1y6m or 36h"));
    let mut total = chrono::Duration::zero();
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += match c {
            'y' => chrono::Duration::days(365 * n),
            'm' => chrono::Duration::days(30 * n),
            'w' => chrono::Duration::weeks(n),
            'd' => chrono::Duration::days(n),
            'h' => chrono::Duration::hours(n),
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() || total <= chrono::Duration::zero() {
        return Err(bad());
    }
    Ok(total)
}

/// What groups snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    /// By host name.
    pub host: bool,
    /// By the set of paths.
    pub paths: bool,
    /// By the set of tags.
    pub tags: bool,
    /// By Kubernetes origin: cluster, namespace, then the PVC, else the
    /// owning workload and volume, else the pod and volume. One volume stays
    /// one group when its pod moves to another node or gets a new name.
    pub origin: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
            origin: false,
        }
    }
}

impl GroupBy {
    /// Parses `host,paths,tags,origin` (any subset; empty for one group).
    pub fn parse(s: &str) -> Result<Self> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
            origin: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" | "path" => g.paths = true,
                "tags" | "tag" => g.tags = true,
                "origin" => g.origin = true,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "cannot group by {other:?}: use host, paths, tags and/or origin"
                    )));
                }
            }
        }
        Ok(g)
    }

    fn key(&self, s: &Snapshot) -> String {
        let mut parts = Vec::new();
        if self.host {
            parts.push(format!("host {}", s.hostname));
        }
        if self.paths {
            let mut p: Vec<String> = s.paths.iter().map(|p| p.to_string_lossy()).collect();
            p.sort();
            parts.push(format!("paths [{}]", p.join(", ")));
        }
        if self.tags {
            let mut t = s.tags.clone();
            t.sort();
            parts.push(format!("tags [{}]", t.join(", ")));
        }
        if self.origin {
            parts.push(origin_key(s));
        }
        parts.join(", ")
    }
}

/// The origin a snapshot's retention follows (`origin none` without one).
fn origin_key(s: &Snapshot) -> String {
    let Some(o) = &s.origin else {
        return "origin none".into();
    };
    let f = |v: &Option<String>| v.clone().unwrap_or_default();
    let what = match (&o.pvc, &o.owner, &o.pod) {
        (Some(pvc), _, _) => format!("pvc {pvc}"),
        (None, Some(owner), _) => format!("{owner} volume {}", f(&o.volume)),
        (None, None, _) => format!("pod {} volume {}", f(&o.pod), f(&o.volume)),
    };
    format!("origin {}/{} {what}", f(&o.cluster), f(&o.namespace))
}

/// The snapshots of `snaps` (oldest first) that `filter` passes; with
/// `latest`, only the newest `latest` of each host and set of paths
/// (`coffer snapshots --latest N`). Order is kept.
pub fn select(
    snaps: Vec<(SnapshotId, Snapshot)>,
    filter: &Filter,
    latest: Option<usize>,
) -> Vec<(SnapshotId, Snapshot)> {
    let mut v: Vec<_> = snaps
        .into_iter()
        .filter(|(_, s)| filter.matches(s))
        .collect();
    if let Some(n) = latest {
        let key = |s: &Snapshot| {
            let mut p: Vec<String> = s.paths.iter().map(|p| p.to_string_lossy()).collect();
            p.sort();
            (s.hostname.clone(), p)
        };
        let mut counts: std::collections::HashMap<_, usize> = std::collections::HashMap::new();
        let mut keep = vec![false; v.len()];
        for i in (0..v.len()).rev() {
            let c = counts.entry(key(&v[i].1)).or_default();
            if *c < n {
                keep[i] = true;
                *c += 1;
            }
        }
        let mut it = keep.into_iter();
        v.retain(|_| it.next().unwrap_or(false));
    }
    v
}

/// A plan that removes the snapshots `specs` name (each `latest`, an id or
/// a unique prefix) and keeps everything else: `coffer forget ID...`.
pub async fn plan_ids(repo: &Repository, specs: &[String]) -> Result<ForgetPlan> {
    let mut remove = Vec::new();
    for spec in specs {
        let (id, s) = repo.find_snapshot(spec).await?;
        if remove.iter().any(|d: &Decision| d.id == id) {
            continue;
        }
        remove.push(Decision {
            id,
            time: s.time,
            reasons: Vec::new(),
        });
    }
    Ok(ForgetPlan {
        groups: vec![GroupPlan {
            key: "given by id".into(),
            keep: Vec::new(),
            remove,
        }],
    })
}

/// One snapshot's fate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its time.
    pub time: String,
    /// Why it is kept (`last`, `daily`, `within 7d`, `tag monthly`...); empty
    /// when it is removed.
    pub reasons: Vec<String>,
}

/// One group's plan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupPlan {
    /// What the group shares (`host a, paths [/data]`).
    pub key: String,
    /// Kept snapshots, newest first.
    pub keep: Vec<Decision>,
    /// Removed snapshots, newest first.
    pub remove: Vec<Decision>,
}

/// The whole plan.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ForgetPlan {
    /// Per group.
    pub groups: Vec<GroupPlan>,
}

impl ForgetPlan {
    /// Every snapshot to remove.
    pub fn removed(&self) -> Vec<SnapshotId> {
        self.groups
            .iter()
            .flat_map(|g| g.remove.iter().map(|d| d.id))
            .collect()
    }
}

fn bucket(t: &DateTime<FixedOffset>, unit: &str) -> (i32, u32, u32, u32) {
    match unit {
        "hourly" => (t.year(), t.month(), t.day(), t.hour()),
        "daily" => (t.year(), t.month(), t.day(), 0),
        "weekly" => {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }
        "monthly" => (t.year(), t.month(), 0, 0),
        _ => (t.year(), 0, 0, 0),
    }
}

/// Applies `policy` to `snapshots` (those passing `filter`), grouped by `group_by`.
pub fn plan(
    snapshots: &[(SnapshotId, Snapshot)],
    policy: &Policy,
    group_by: GroupBy,
    filter: &Filter,
) -> Result<ForgetPlan> {
    if policy.is_empty() {
        return Err(Error::NoPolicy);
    }
    type Dated<'a> = (SnapshotId, &'a Snapshot, DateTime<FixedOffset>);
    let mut groups: BTreeMap<String, Vec<Dated<'_>>> = BTreeMap::new();
    for (id, s) in snapshots.iter().filter(|(_, s)| filter.matches(s)) {
        groups
            .entry(group_by.key(s))
            .or_default()
            .push((*id, s, snapshot_time(s)));
    }
    let mut out = ForgetPlan::default();
    for (key, mut list) in groups {
        list.sort_by(|a, b| b.2.cmp(&a.2).then(b.0.cmp(&a.0)));
        let newest = list.first().map(|x| x.2);
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); list.len()];
        for r in reasons.iter_mut().take(policy.last) {
            r.push("last".into());
        }
        for (unit, n) in [
            ("hourly", policy.hourly),
            ("daily", policy.daily),
            ("weekly", policy.weekly),
            ("monthly", policy.monthly),
            ("yearly", policy.yearly),
        ] {
            let mut seen = Vec::new();
            for (i, (_, _, t)) in list.iter().enumerate() {
                if seen.len() >= n {
                    break;
                }
                let b = bucket(t, unit);
                if !seen.contains(&b) {
                    seen.push(b);
                    reasons[i].push(unit.to_string());
                }
            }
        }
        if let (Some(within), Some(newest)) = (policy.within, newest) {
            for (i, (_, _, t)) in list.iter().enumerate() {
                if newest - *t <= within {
                    reasons[i].push(format!("within {}h", within.num_hours()));
                }
            }
        }
        for (i, (_, s, _)) in list.iter().enumerate() {
            for t in &policy.tags {
                if s.tags.contains(t) {
                    reasons[i].push(format!("tag {t}"));
                }
            }
        }
        let mut g = GroupPlan {
            key,
            keep: Vec::new(),
            remove: Vec::new(),
        };
        for ((id, s, _), r) in list.into_iter().zip(reasons) {
            let d = Decision {
                id,
                time: s.time.clone(),
                reasons: r,
            };
            if d.reasons.is_empty() {
                g.remove.push(d);
            } else {
                g.keep.push(d);
            }
        }
        out.groups.push(g);
    }
    Ok(out)
}

/// Removes the snapshot files the plan forgets. Returns how many were removed;
/// `cancel` stops it between two snapshots (`Err(Cancelled)`).
pub async fn execute(
    repo: &Repository,
    plan: &ForgetPlan,
    cancel: &crate::cancel::CancelToken,
) -> Result<usize> {
    let removed = plan.removed();
    for id in &removed {
        cancel.check()?;
        repo.delete_snapshot(id).await?;
    }
    Ok(removed.len())
}

/// What [`execute_and_prune`] did.
#[derive(Clone, Debug)]
pub struct Forgotten {
    /// Snapshot files removed.
    pub removed: usize,
    /// The prune that followed; `None` when nothing was removed, so there
    /// was nothing new to free.
    pub prune: Option<crate::prune::PrunePlan>,
}

/// Forgets what the plan removes, then prunes with `prune` when anything was
/// removed (restic's `forget --prune`). `prune.cancel` stops both steps.
pub async fn execute_and_prune(
    repo: Arc<Repository>,
    plan: &ForgetPlan,
    prune: crate::prune::PruneOptions,
) -> Result<Forgotten> {
    let removed = execute(&repo, plan, &prune.cancel).await?;
    let prune = if removed > 0 {
        Some(crate::prune::prune(repo, prune).await?)
    } else {
        None
    };
    Ok(Forgotten { removed, prune })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_repo_format::snapshot::{SnapshotSummary, SNAPSHOT_VERSION};
    use coffer_repo_format::tree::{Node, NodeKind};

    fn snap(i: u8, time: &str, host: &str, tags: &[&str]) -> (SnapshotId, Snapshot) {
        let mut root = Node::new("r", NodeKind::Dir);
        root.subtree = Some(coffer_repo_format::BlobId([1; 32]));
        (
            SnapshotId([i; 32]),
            Snapshot {
                version: SNAPSHOT_VERSION,
                time: time.into(),
                hostname: host.into(),
                username: "u".into(),
                uid: 0,
                gid: 0,
                paths: vec!["/data".into()],
                tags: tags.iter().map(|t| t.to_string()).collect(),
                root,
                parent: None,
                program: "t".into(),
                summary: SnapshotSummary::default(),
                origin: None,
                original: None,
                ignored_changes: Vec::new(),
            },
        )
    }

    fn ids(d: &[Decision]) -> Vec<u8> {
        d.iter().map(|d| d.id.0[0]).collect()
    }

    #[test]
    fn select_keeps_the_newest_n_of_each_host_and_paths_in_order() {
        let mut s = vec![
            snap(1, "2026-11-01T10:00:00+00:00", "a", &["x"]),
            snap(2, "2026-11-02T10:00:00+00:00", "b", &[]),
            snap(3, "2026-11-03T10:00:00+00:00", "a", &[]),
            snap(4, "2026-11-04T10:00:00+00:00", "a", &["x"]),
        ];
        s[3].1.paths = vec!["/other".into()];
        let all = |v: Vec<(SnapshotId, Snapshot)>| -> Vec<u8> {
            v.iter().map(|(id, _)| id.0[0]).collect()
        };
        assert_eq!(
            all(select(s.clone(), &Filter::default(), None)),
            [1, 2, 3, 4]
        );
        // a:/data keeps 3 (its newest), b keeps 2, a:/other keeps 4.
        assert_eq!(
            all(select(s.clone(), &Filter::default(), Some(1))),
            [2, 3, 4]
        );
        assert_eq!(
            all(select(s.clone(), &Filter::default(), Some(2))),
            [1, 2, 3, 4]
        );
        let tagged = Filter {
            tags: vec!["x".into()],
            ..Default::default()
        };
        assert_eq!(all(select(s, &tagged, Some(1))), [1, 4]);
    }

    #[test]
    fn grouped_by_origin_a_volume_is_one_group_across_hosts() {
        use coffer_repo_format::snapshot::KubernetesOrigin;
        let with = |i: u8, time: &str, host: &str, pvc: &str| {
            let (id, mut s) = snap(i, time, host, &[]);
            s.origin = Some(KubernetesOrigin {
                cluster: Some("prod".into()),
                namespace: Some("db".into()),
                pvc: Some(pvc.into()),
                ..Default::default()
            });
            (id, s)
        };
        let s = vec![
            with(1, "2026-11-01T10:00:00+00:00", "node-a", "data-0"),
            with(2, "2026-11-02T10:00:00+00:00", "node-b", "data-0"),
            with(3, "2026-11-03T10:00:00+00:00", "node-c", "data-0"),
            with(4, "2026-11-01T10:00:00+00:00", "node-a", "data-1"),
            snap(5, "2026-11-01T10:00:00+00:00", "node-a", &[]),
        ];
        let policy = Policy {
            last: 1,
            ..Default::default()
        };
        let g = GroupBy::parse("origin").unwrap();
        let p = plan(&s, &policy, g, &Filter::default()).unwrap();
        let keys: Vec<&str> = p.groups.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "origin none",
                "origin prod/db pvc data-0",
                "origin prod/db pvc data-1"
            ]
        );
        assert_eq!(ids(&p.groups[1].keep), vec![3]);
        assert_eq!(ids(&p.groups[1].remove), vec![2, 1]);
        assert_eq!(ids(&p.groups[2].keep), vec![4]);
        assert!(GroupBy::parse("origin,pvc").is_err());
    }

    #[test]
    fn daily_weekly_last_and_tags() {
        let s = vec![
            snap(1, "2026-11-01T10:00:00+00:00", "a", &[]),
            snap(2, "2026-11-01T22:00:00+00:00", "a", &[]),
            snap(3, "2026-11-02T10:00:00+00:00", "a", &["keep"]),
            snap(4, "2026-11-08T10:00:00+00:00", "a", &[]),
            snap(5, "2026-11-09T09:00:00+00:00", "a", &[]),
            snap(6, "2026-11-09T10:00:00+00:00", "a", &[]),
        ];
        let p = plan(
            &s,
            &Policy {
                daily: 2,
                ..Default::default()
            },
            GroupBy::default(),
            &Filter::default(),
        )
        .unwrap();
        assert_eq!(ids(&p.groups[0].keep), vec![6, 4]);
        let p = plan(
            &s,
            &Policy {
                weekly: 2,
                last: 1,
                ..Default::default()
            },
            GroupBy::default(),
            &Filter::default(),
        )
        .unwrap();
        // ISO weeks: 9 Nov is a Monday (week 46), 8 Nov Sunday (week 45).
        assert_eq!(ids(&p.groups[0].keep), vec![6, 4]);
        assert_eq!(p.groups[0].keep[0].reasons, vec!["last", "weekly"]);
        let p = plan(
            &s,
            &Policy {
                last: 1,
                tags: vec!["keep".into()],
                ..Default::default()
            },
            GroupBy::default(),
            &Filter::default(),
        )
        .unwrap();
        assert_eq!(ids(&p.groups[0].keep), vec![6, 3]);
        assert_eq!(ids(&p.groups[0].remove), vec![5, 4, 2, 1]);
    }

    #[test]
    fn within_is_relative_to_the_newest_and_groups_are_separate() {
        let s = vec![
            snap(1, "2026-11-01T00:00:00+00:00", "a", &[]),
            snap(2, "2026-11-05T00:00:00+00:00", "a", &[]),
            snap(3, "2026-11-07T00:00:00+00:00", "a", &[]),
            snap(4, "2020-01-01T00:00:00+00:00", "b", &[]),
        ];
        let p = plan(
            &s,
            &Policy {
                within: Some(parse_duration("3d").unwrap()),
                ..Default::default()
            },
            GroupBy::default(),
            &Filter::default(),
        )
        .unwrap();
        assert_eq!(p.groups.len(), 2);
        let a = p.groups.iter().find(|g| g.key.contains("host a")).unwrap();
        assert_eq!(ids(&a.keep), vec![3, 2]);
        let b = p.groups.iter().find(|g| g.key.contains("host b")).unwrap();
        assert_eq!(
            ids(&b.keep),
            vec![4],
            "the newest of a group is always within"
        );
        let only_b = plan(
            &s,
            &Policy {
                last: 1,
                ..Default::default()
            },
            GroupBy::default(),
            &Filter {
                hosts: vec!["b".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(only_b.groups.len(), 1);
        assert!(plan(
            &s,
            &Policy::default(),
            GroupBy::default(),
            &Filter::default()
        )
        .is_err());
    }

    #[test]
    fn durations_and_group_specs() {
        assert_eq!(
            parse_duration("1y6m").unwrap(),
            chrono::Duration::days(365 + 180)
        );
        assert_eq!(parse_duration("36h").unwrap(), chrono::Duration::hours(36));
        assert!(
            parse_duration("7").is_err()
                && parse_duration("x").is_err()
                && parse_duration("0d").is_err()
        );
        assert!(GroupBy::parse("host,tags").unwrap().tags);
        assert!(GroupBy::parse("hostname").is_err());
    }
}
