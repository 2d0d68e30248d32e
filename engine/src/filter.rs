//! Which snapshots an operation considers: by host, tag, path and
//! Kubernetes origin. A leaf below `forget`, `repository`, `restore` and
//! `backup`, which all select snapshots this way.

use coffer_repo_format::snapshot::Snapshot;

/// Which snapshots forget considers (all when empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only snapshots with one of these hosts.
    pub hosts: Vec<String>,
    /// Only snapshots with all of these tags.
    pub tags: Vec<String>,
    /// Only snapshots that include all of these paths.
    pub paths: Vec<String>,
    /// Only snapshots of this Kubernetes origin.
    pub origin: OriginFilter,
}

impl Filter {
    /// Whether `s` passes the filter.
    pub fn matches(&self, s: &Snapshot) -> bool {
        self.origin.matches(s)
            && (self.hosts.is_empty() || self.hosts.contains(&s.hostname))
            && self.tags.iter().all(|t| s.tags.contains(t))
            && self
                .paths
                .iter()
                .all(|p| s.paths.iter().any(|sp| sp.to_string_lossy() == *p))
    }
}

/// Snapshots by Kubernetes origin: each field given must equal the snapshot's;
/// a field left `None` matches anything. An empty filter matches every
/// snapshot, with or without an origin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginFilter {
    /// The cluster name.
    pub cluster: Option<String>,
    /// The namespace.
    pub namespace: Option<String>,
    /// The pod.
    pub pod: Option<String>,
    /// The PersistentVolumeClaim.
    pub pvc: Option<String>,
    /// The pod's controlling workload, `Kind/name`.
    pub owner: Option<String>,
    /// The volume's name in the pod spec.
    pub volume: Option<String>,
}

impl OriginFilter {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == OriginFilter::default()
    }

    /// Whether `s` passes the filter.
    pub fn matches(&self, s: &Snapshot) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(o) = &s.origin else {
            return false;
        };
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        eq(&self.cluster, &o.cluster)
            && eq(&self.namespace, &o.namespace)
            && eq(&self.pod, &o.pod)
            && eq(&self.pvc, &o.pvc)
            && eq(&self.owner, &o.owner)
            && eq(&self.volume, &o.volume)
    }
}
