//! What an application backup captures: which API resources are listed
//! (namespaced, listable, not excluded) and which of their objects are
//! kept (not the ones a controller recreates).

use serde_json::Value;

use crate::ApiResource;

/// Resources never captured unless an include list names them: what the
/// cluster recreates or what is noise (`plural.group` as
/// [`ApiResource::qualified`] spells it).
pub const DEFAULT_EXCLUDED: &[&str] = &[
    "events",
    "events.events.k8s.io",
    "endpoints",
    "endpointslices.discovery.k8s.io",
    "controllerrevisions.apps",
    "leases.coordination.k8s.io",
    "localsubjectaccessreviews.authorization.k8s.io",
    "pods.metrics.k8s.io",
    // coffer's own runs: history, not the application.
    "volumebackups.coffer.dev",
    "volumerestores.coffer.dev",
    "applicationbackups.coffer.dev",
    "applicationrestores.coffer.dev",
    "restoresources.coffer.dev",
];

/// Owner kinds whose children are recreated by their controller, so the
/// children are left out (a Deployment's ReplicaSets, a ReplicaSet's,
/// StatefulSet's, DaemonSet's or Job's Pods, a CronJob's Jobs).
pub const RECREATING_OWNERS: &[(&str, &str)] = &[
    ("ReplicaSet", "Deployment"),
    ("Pod", "ReplicaSet"),
    ("Pod", "StatefulSet"),
    ("Pod", "DaemonSet"),
    ("Pod", "Job"),
    ("Job", "CronJob"),
];

/// The label of what coffer's controller makes for a run (mover, capture
/// and restore pods, their Roles): never part of an application.
pub const MADE_BY_COFFER: (&str, &str) = ("app.kubernetes.io/managed-by", "coffer-controller");

/// The include and exclude lists of an ApplicationBackup or restore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these resources (`plural.group`, `plural` for the core group,
    /// or the kind, case-insensitively); empty: all.
    pub include: Vec<String>,
    /// Not these (same spelling); wins over `include`.
    pub exclude: Vec<String>,
    /// Also the objects that controllers recreate (see
    /// [`RECREATING_OWNERS`]).
    pub include_recreated: bool,
}

fn names(r: &ApiResource, wanted: &str) -> bool {
    let w = wanted.trim().to_ascii_lowercase();
    w == r.qualified() || w == r.plural || w == r.kind.to_ascii_lowercase()
}

impl Selection {
    /// Whether resource `r` is listed: namespaced, with `list` and `get`,
    /// not a subresource, included (by the list, or by default) and not
    /// excluded.
    pub fn lists(&self, r: &ApiResource) -> bool {
        let can = |v: &str| r.verbs.iter().any(|x| x == v);
        if !r.namespaced || r.plural.contains('/') || !can("list") || !can("get") {
            return false;
        }
        if self.exclude.iter().any(|e| names(r, e)) {
            return false;
        }
        if !self.include.is_empty() {
            return self.include.iter().any(|i| names(r, i));
        }
        !DEFAULT_EXCLUDED.contains(&r.qualified().as_str())
    }

    /// Whether object `o` (of kind `kind`) is kept: not one that coffer
    /// made for a run (labelled [`MADE_BY_COFFER`]: a capture or restore pod
    /// and its Role), and not one that its controlling owner recreates,
    /// unless asked for.
    pub fn keeps(&self, kind: &str, o: &Value) -> bool {
        let (label, value) = MADE_BY_COFFER;
        if o["metadata"]["labels"][label].as_str() == Some(value) {
            return false;
        }
        if self.include_recreated {
            return true;
        }
        let owner = o["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["controller"].as_bool() == Some(true));
        let Some(owner) = owner else {
            return true;
        };
        let owner_kind = owner["kind"].as_str().unwrap_or_default();
        !RECREATING_OWNERS.contains(&(kind, owner_kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(group: &str, kind: &str, plural: &str, namespaced: bool) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: "v1".into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            verbs: ["get", "list", "watch", "create"]
                .map(String::from)
                .to_vec(),
        }
    }

    #[test]
    fn what_coffer_made_for_a_run_is_never_kept() {
        let pod = json!({"metadata": {"name": "coffer-capture-shop",
            "labels": {"app.kubernetes.io/managed-by": "coffer-controller"}}});
        let all = Selection {
            include_recreated: true,
            ..Default::default()
        };
        assert!(!all.keeps("Pod", &pod));
        assert!(all.keeps("Pod", &json!({"metadata": {"name": "web"}})));
    }

    #[test]
    fn namespaced_listable_resources_are_listed_but_the_noise_is_not() {
        let all = Selection::default();
        assert!(all.lists(&res("apps", "Deployment", "deployments", true)));
        assert!(all.lists(&res("", "ConfigMap", "configmaps", true)));
        assert!(all.lists(&res("example.com", "Widget", "widgets", true)));
        assert!(!all.lists(&res("", "Event", "events", true)));
        assert!(!all.lists(&res(
            "discovery.k8s.io",
            "EndpointSlice",
            "endpointslices",
            true
        )));
        assert!(!all.lists(&res("coffer.dev", "VolumeBackup", "volumebackups", true)));
        assert!(!all.lists(&res(
            "storage.k8s.io",
            "StorageClass",
            "storageclasses",
            false
        )));
        assert!(!all.lists(&res("", "Pod", "pods/log", true)));
        let mut no_list = res("", "Binding", "bindings", true);
        no_list.verbs = vec!["create".into()];
        assert!(!all.lists(&no_list));
    }

    #[test]
    fn include_and_exclude_name_resources_as_kubectl_does_and_exclude_wins() {
        let only = Selection {
            include: vec![
                "deployments.apps".into(),
                "ConfigMap".into(),
                "events".into(),
            ],
            exclude: vec!["configmaps".into()],
            ..Default::default()
        };
        assert!(only.lists(&res("apps", "Deployment", "deployments", true)));
        assert!(!only.lists(&res("", "ConfigMap", "configmaps", true)));
        assert!(!only.lists(&res("", "Secret", "secrets", true)));
        // An include list brings back a default exclusion.
        assert!(only.lists(&res("", "Event", "events", true)));
    }

    #[test]
    fn objects_a_controller_recreates_are_left_out_unless_asked_for() {
        let owned = |kind: &str| {
            json!({"metadata": {"name": "x", "ownerReferences": [
                {"kind": kind, "name": "o", "controller": true}
            ]}})
        };
        let s = Selection::default();
        assert!(!s.keeps("Pod", &owned("ReplicaSet")));
        assert!(!s.keeps("Pod", &owned("StatefulSet")));
        assert!(!s.keeps("ReplicaSet", &owned("Deployment")));
        assert!(!s.keeps("Job", &owned("CronJob")));
        // A pod on its own, or owned by something else, is kept.
        assert!(s.keeps("Pod", &json!({"metadata": {"name": "x"}})));
        assert!(s.keeps("Pod", &owned("Widget")));
        assert!(s.keeps("Secret", &owned("ReplicaSet")));
        let all = Selection {
            include_recreated: true,
            ..Default::default()
        };
        assert!(all.keeps("Pod", &owned("ReplicaSet")));
    }
}
