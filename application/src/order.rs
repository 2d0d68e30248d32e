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
        // Custom resources (VolumeSnapshots, Gateways, an operator's
        // kinds): before the workloads, which may need them, and after
        // everything they may refer to.
        _ => 5,
    }
}

/// Kubernetes' own API groups (their kinds are no custom resources). Other
/// groups, `snapshot.storage.k8s.io` and `gateway.networking.k8s.io`
/// included, are defined by CustomResourceDefinitions.
pub const BUILTIN_GROUPS: &[&str] = &[
    "",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io",
    "metrics.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
    "storagemigration.k8s.io",
];

/// Whether API group `g` is one of Kubernetes' own.
pub fn is_builtin(g: &str) -> bool {
    BUILTIN_GROUPS.contains(&g)
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
            ("gateway.networking.k8s.io", "HTTPRoute", "web"),
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
                "HTTPRoute",
                "Widget",
                "Deployment",
                "StatefulSet",
                "Service",
                "Ingress"
            ]
        );
    }
}
