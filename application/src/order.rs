//! The order a restore creates objects in: what others refer to first
//! (ServiceAccounts, ConfigMaps and Secrets, quotas, RBAC), then the claims
//! (filled with their data before anything mounts them), then custom
//! resources and workloads, then Services and the rest.

/// A kind's rank in the restore order (lower first), by its API group and
/// kind.
pub fn rank(group: &str, kind: &str) -> u8 {
    match (group, kind) {
        ("", "ServiceAccount") => 0,
        ("", "ConfigMap" | "Secret") => 1,
        ("", "LimitRange" | "ResourceQuota") => 2,
        ("rbac.authorization.k8s.io", "Role" | "RoleBinding") => 3,
        ("", "PersistentVolumeClaim") => 4,
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job" | "CronJob")
        | ("", "Pod" | "ReplicationController") => 6,
        ("", "Service") => 7,
        (g, _) if is_builtin(g) => 8,
        // Custom resources: before the workloads, which may need them
        // (and after everything they may refer to).
        _ => 5,
    }
}

/// Whether API group `g` is one of Kubernetes' own (or an add-on's that
/// every cluster has, such as snapshots).
pub fn is_builtin(g: &str) -> bool {
    !g.contains('.') || g.ends_with(".k8s.io")
}

/// Sorts `(group, kind, name)` triples into the restore order: by rank,
/// then kind, then name, so that the order is the same every time.
pub fn sort<T>(objects: &mut [T], key: impl Fn(&T) -> (&str, &str, &str)) {
    objects.sort_by(|a, b| {
        let (ga, ka, na) = key(a);
        let (gb, kb, nb) = key(b);
        (rank(ga, ka), ka, na).cmp(&(rank(gb, kb), kb, nb))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_others_refer_to_comes_first_and_claims_before_what_mounts_them() {
        let mut objects = vec![
            ("", "Service", "web"),
            ("apps", "StatefulSet", "db"),
            ("example.com", "Widget", "w"),
            ("", "PersistentVolumeClaim", "data-db-0"),
            ("rbac.authorization.k8s.io", "RoleBinding", "rb"),
            ("", "Secret", "creds"),
            ("networking.k8s.io", "Ingress", "web"),
            ("", "ConfigMap", "cfg"),
            ("", "ServiceAccount", "app"),
            ("apps", "Deployment", "web"),
        ];
        sort(&mut objects, |o| *o);
        let kinds: Vec<&str> = objects.iter().map(|o| o.1).collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "ConfigMap",
                "Secret",
                "RoleBinding",
                "PersistentVolumeClaim",
                "Widget",
                "Deployment",
                "StatefulSet",
                "Service",
                "Ingress"
            ]
        );
    }
}
