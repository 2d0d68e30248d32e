//! Which snapshot a VolumeRestore names, shared by the node agent (a
//! restore in place) and the mover (a restore into a new claim).

use coffer_engine::format::snapshot::Snapshot;
use coffer_engine::Repository;

use crate::crd::{RecordedClaim, SnapshotSource};

/// The snapshot `src` names in the repository `repository` of namespace
/// `namespace` (the origin's namespace when `src` gives none): by id or
/// prefix, or the latest of an origin (at or before `asOf`, when given).
/// The error is the run's message.
pub async fn find_snapshot(
    repo: &Repository,
    src: &SnapshotSource,
    namespace: &str,
    repository: &str,
) -> Result<(String, Snapshot), String> {
    find(repo, src, namespace, repository, None).await
}

/// The application backup `src` names: by id or prefix, or the latest
/// application snapshot (tag `coffer.dev/application=…`) of its origin's
/// cluster and namespace, at or before `asOf` when given.
pub async fn find_application_snapshot(
    repo: &Repository,
    src: &SnapshotSource,
    namespace: &str,
    repository: &str,
) -> Result<(String, Snapshot), String> {
    find(
        repo,
        src,
        namespace,
        repository,
        Some("coffer.dev/application="),
    )
    .await
}

async fn find(
    repo: &Repository,
    src: &SnapshotSource,
    namespace: &str,
    repository: &str,
    tag_prefix: Option<&str>,
) -> Result<(String, Snapshot), String> {
    if let (Some(_), Some(_)) = (&src.id, &src.as_of) {
        return Err(
            "spec.snapshot gives both id and asOf: an id names one snapshot; give asOf with an origin instead"
                .into(),
        );
    }
    if let Some(id) = &src.id {
        return repo
            .find_snapshot(id)
            .await
            .map(|(id, s)| (id.to_hex(), s))
            .map_err(|e| format!("BackupRepository {namespace}/{repository}: {e}"));
    }
    if tag_prefix.is_none() && src.pvc.is_none() && src.owner.is_none() && src.volume.is_none() {
        return Err(
            "spec.snapshot names no snapshot: give an id, or an origin (pvc, or owner and volume)"
                .into(),
        );
    }
    let as_of = match src.as_of.as_deref() {
        None => None,
        Some(t) => Some(chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
            format!("spec.snapshot.asOf {t:?} is not an RFC 3339 time such as 2026-11-24T02:00:00Z: {e}")
        })?),
    };
    let filter = coffer_engine::forget::OriginFilter {
        cluster: src.cluster.clone(),
        namespace: Some(
            src.namespace
                .clone()
                .unwrap_or_else(|| namespace.to_string()),
        ),
        pvc: src.pvc.clone(),
        owner: src.owner.clone(),
        volume: src.volume.clone(),
        pod: None,
    };
    let mut all = repo
        .snapshots()
        .await
        .map_err(|e| format!("BackupRepository {namespace}/{repository}: {e}"))?;
    all.retain(|(_, s)| filter.matches(s));
    if let Some(prefix) = tag_prefix {
        all.retain(|(_, s)| s.tags.iter().any(|t| t.starts_with(prefix)));
    }
    let Some(as_of) = as_of else {
        return all.pop().map(|(id, s)| (id.to_hex(), s)).ok_or_else(|| {
            format!("no snapshot in BackupRepository {namespace}/{repository} matches {filter:?}")
        });
    };
    let count = all.len();
    all.into_iter()
        .filter_map(|(id, s)| {
            let t = chrono::DateTime::parse_from_rfc3339(&s.time).ok()?;
            (t <= as_of).then_some((t, id, s))
        })
        .max_by_key(|(t, _, _)| *t)
        .map(|(_, id, s)| (id.to_hex(), s))
        .ok_or_else(|| {
            format!(
                "none of the {count} snapshots in BackupRepository {namespace}/{repository} \
                 that match {filter:?} was taken at or before {as_of}"
            )
        })
}

/// The claim a snapshot recorded (Kubernetes origin and claim spec), from
/// which a new PVC is made.
pub fn recorded_claim(snap: &Snapshot) -> RecordedClaim {
    let origin = snap.origin.clone().unwrap_or_default();
    let claim = origin.claim.unwrap_or_default();
    RecordedClaim {
        capacity: claim.capacity,
        access_modes: claim.access_modes,
        volume_mode: origin.volume_mode,
        storage_class_name: origin.storage_class,
        labels: claim.labels,
    }
}
