//! The names coffer gives Kubernetes objects, and the labels, annotations and
//! finalizer it puts on them: shared by the node agent, the controller and
//! the tests, so that each is spelled once.

use kube::{Resource, ResourceExt};

/// Eight hex digits of BLAKE3.
pub(crate) fn short_hash(s: &str) -> String {
    blake3::hash(s.as_bytes()).to_hex()[..8].to_string()
}

/// A valid object name from parts: joined with `-`, lowercased, at most 253
/// characters (a long one keeps its head and gets a hash).
pub fn object_name(parts: &[&str]) -> String {
    let joined: String = parts
        .join("-")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if joined.len() <= 253 {
        return joined;
    }
    format!("{}-{}", &joined[..240], short_hash(&joined))
}

/// The name of what is made in coffer's own namespace (or cluster-wide)
/// for the `kind` of work (`backup`, `restore`, `prune`...) of object
/// `name` of namespace `ns`: `coffer-<ns>-<kind>-<name>-<hash>`, a DNS
/// label (at most 63 characters) that no other namespace's object, and no
/// other kind of work, shares (the hash is of all three).
pub fn home_name(kind: &str, ns: &str, name: &str) -> String {
    let hash = short_hash(&format!("{kind}/{ns}/{name}"));
    let head = object_name(&["coffer", ns, kind, name]);
    let head = head[..head.len().min(63 - 9)].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

/// The [`RUN_ANNOTATION`] of what is made in coffer's namespace for object
/// `ns/name` (a run, a schedule, a repository).
pub fn run_annotation(ns: &str, name: &str) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([(RUN_ANNOTATION.to_string(), format!("{ns}/{name}"))])
}

/// The run an object names in its [`RUN_ANNOTATION`]: `(namespace, name)`.
pub fn annotated_run(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<(&str, &str)> {
    annotations.get(RUN_ANNOTATION)?.split_once('/')
}

/// A valid label value (at most 63 characters).
pub fn label_value(s: &str) -> String {
    if s.len() <= 63 {
        return s.to_string();
    }
    format!("{}-{}", &s[..54], short_hash(s))
}

/// The finalizer that keeps a run until its objects are cleaned up.
pub const FINALIZER: &str = "coffer.dev/cleanup";

/// The label on everything the controller makes, and its value.
pub(crate) const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// See [`MANAGED_BY`].
pub(crate) const MANAGER: &str = "coffer-controller";

/// The [`MANAGED_BY`] label, as a map entry.
pub(crate) fn managed_by() -> (String, String) {
    (MANAGED_BY.to_string(), MANAGER.to_string())
}

/// Whether the controller made this object for a run or a job (a mover
/// pod, a clone PVC). A restored PVC is the workload's, not one of these.
pub(crate) fn made_by_us<K: Resource>(o: &K) -> bool {
    o.labels().get(MANAGED_BY).map(String::as_str) == Some(MANAGER)
}

/// The label that selects the PVCs of a group's VolumeGroupSnapshot; the
/// controller sets it on them while the group is snapshotted.
pub const GROUP_LABEL: &str = "coffer.dev/group";

/// The label on every object the controller creates for a run: the run's
/// name (shortened when needed; the owner reference is exact).
pub const RUN_LABEL: &str = "coffer.dev/volumebackup";

/// The label on the mover pods of a restore (its value: the run's name,
/// shortened when needed).
pub const RESTORE_LABEL: &str = "coffer.dev/volumerestore";

/// The annotation naming the run of a mover pod, or of anything made in
/// coffer's own namespace for a run, exactly: `namespace/name`.
pub const RUN_ANNOTATION: &str = "coffer.dev/run";

/// The annotation on a restored PVC: the run that made it.
pub const RESTORED_BY: &str = "coffer.dev/restored-by";

/// The annotation on a restored PVC: the snapshot it holds.
pub const RESTORED_FROM: &str = "coffer.dev/restored-from";

/// The label on a schedule's VolumeBackups and retention pods.
pub const SCHEDULE_LABEL: &str = "coffer.dev/schedule";

/// The annotation on a schedule's VolumeBackups: the time that made them.
pub const SCHEDULED_AT: &str = "coffer.dev/scheduled-at";

/// The time `obj`'s [`SCHEDULED_AT`] names, when it has one that parses.
pub fn scheduled_at<K: Resource>(obj: &K) -> Option<crate::time::Timestamp> {
    obj.meta()
        .annotations
        .as_ref()?
        .get(SCHEDULED_AT)?
        .parse()
        .ok()
}

/// The tag on every snapshot a schedule makes; retention considers only
/// those.
pub fn schedule_tag(name: &str) -> String {
    format!("{SCHEDULE_LABEL}={name}")
}

/// The key of the tag on every snapshot a pod's `backup.coffer.dev/schedule`
/// makes: [`annotation_schedule_tag`].
pub const ANNOTATION_SCHEDULE_TAG: &str = "coffer.dev/annotation-schedule";

/// The tag on the snapshots that the schedule annotation of workload
/// `owner` (`StatefulSet/db`, or `Pod/<name>` for a pod without one) makes;
/// its `backup.coffer.dev/keep-…` retention considers only those, so two
/// workloads mounting one claim keep their own.
pub fn annotation_schedule_tag(owner: &str) -> String {
    format!("{ANNOTATION_SCHEDULE_TAG}={owner}")
}

/// The workload whose pod annotations made a run: its controlling owner
/// (`Kind/name`), or `Pod/<name>`.
pub fn annotation_owner(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    crate::pods::owner_of(pod)
        .unwrap_or_else(|| format!("Pod/{}", pod.metadata.name.as_deref().unwrap_or_default()))
}

/// The label on maintenance pods: the repository's name.
pub const MAINTENANCE_LABEL: &str = "coffer.dev/maintenance";

/// Starts a prune now, once per value.
pub const PRUNE_NOW: &str = "maintenance.coffer.dev/prune-now";

/// Starts a check now, once per value.
pub const CHECK_NOW: &str = "maintenance.coffer.dev/check-now";

/// Starts a copy into `spec.maintenance.copyTo` now, once per value.
pub const COPY_NOW: &str = "maintenance.coffer.dev/copy-now";

/// A new value runs one backup now.
pub const BACKUP_NOW: &str = "backup.coffer.dev/backup-now";

/// The label on a VolumeBackup that the node agent made for a pod: the pod.
pub const POD_LABEL: &str = "coffer.dev/pod";

/// The label on a VolumeBackup that the node agent made for a pod: the volume.
pub const VOLUME_LABEL: &str = "coffer.dev/volume";

/// The label on a VolumeBackup that the node agent made for a pod: what
/// made it (`schedule` or `backup-now`).
pub const TRIGGER_LABEL: &str = "coffer.dev/trigger";

/// The tag on an application backup's snapshot (and its volumes'):
/// `coffer.dev/application=<name>`.
pub fn application_tag(name: &str) -> String {
    format!("{APPLICATION_TAG}{name}")
}

/// [`application_tag`]'s prefix.
pub const APPLICATION_TAG: &str = "coffer.dev/application=";

/// The tag only an application backup's objects' snapshot carries (its
/// volumes' carry [`application_tag`] alone): `coffer.dev/application-objects=<name>`.
pub fn objects_tag(name: &str) -> String {
    format!("{OBJECTS_TAG}{name}")
}

/// [`objects_tag`]'s prefix.
pub const OBJECTS_TAG: &str = "coffer.dev/application-objects=";

/// The label on what an application backup makes (its VolumeBackups, its
/// capture pod and that pod's Role): the backup's name.
pub const APPLICATION_LABEL: &str = "coffer.dev/applicationbackup";

/// The label on what an application restore makes (its pod, Role and
/// RoleBinding, and RestoreSources): the restore's name.
pub const APPLICATION_RESTORE_LABEL: &str = "coffer.dev/applicationrestore";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_coffers_namespace_are_dns_labels_no_two_namespaces_share() {
        let a = home_name("backup", "a-b", "c");
        let b = home_name("backup", "a", "b-c");
        assert!(a.starts_with("coffer-a-b-backup-c-") && b.starts_with("coffer-a-backup-b-c-"));
        assert_ne!(a, b);
        // Kinds whose visible parts meet stay apart.
        let c = home_name("restore", "a", "x");
        let d = home_name("backup", "a-restore", "x");
        assert_ne!(c, d);
        let long = home_name("backup", &"n".repeat(63), &"r".repeat(253));
        assert!(long.len() <= 63, "{long}");
        assert!(long.starts_with("coffer-nnn"));
        let dots = home_name("backup", "ns", &format!("{}.x", "r".repeat(45)));
        assert!(!dots.contains(".-") && !dots.contains("--"), "{dots}");
    }

    #[test]
    fn names_are_valid_and_deterministic() {
        assert_eq!(
            object_name(&["db-0", "data", "1a2b3c4d"]),
            "db-0-data-1a2b3c4d"
        );
        let long = "x".repeat(300);
        let n = object_name(&[&long, "data"]);
        assert!(n.len() <= 253);
        assert_eq!(n, object_name(&[&long, "data"]));
        assert_eq!(label_value(&"y".repeat(80)).len(), 63);
    }
}
