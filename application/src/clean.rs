//! An object as it is restored: what belonged to the old cluster removed
//! (its identity, its status, what the API server or a controller filled
//! in), its namespace mapped, its storage classes mapped. The same cleaning
//! serves the controller's restore and `coffer k8s manifests`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Metadata the API server writes; a new object gets its own.
pub const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "managedFields",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// A claim's annotations that record its binding in the old cluster.
pub const BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];

/// Labels the Job controller adds to a Job's selector and pods.
const JOB_LABELS: &[&str] = &[
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
];

/// How objects are cleaned for one restore.
#[derive(Clone, Debug, Default)]
pub struct CleanOptions {
    /// The namespace the objects go into.
    pub namespace: String,
    /// The namespace they were backed up from: a RoleBinding's subjects in
    /// it are moved to `namespace` with the objects.
    pub from_namespace: Option<String>,
    /// Storage classes to replace (old name → new name), for claims and a
    /// StatefulSet's claim templates.
    pub storage_classes: BTreeMap<String, String>,
}

/// Kubernetes' cluster-scoped kinds: never among a namespace's objects. A
/// snapshot that has one under `objects/` is hostile or damaged, and
/// applying it would act on the whole cluster.
pub const CLUSTER_SCOPED: &[&str] = &[
    "APIService",
    "CertificateSigningRequest",
    "ClusterRole",
    "ClusterRoleBinding",
    "ComponentStatus",
    "CSIDriver",
    "CSINode",
    "CustomResourceDefinition",
    "FlowSchema",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "PriorityLevelConfiguration",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
    "VolumeSnapshotClass",
    "VolumeSnapshotContent",
];

/// Why an object is not restored at all.
pub fn not_restored(kind: &str, o: &Value) -> Option<&'static str> {
    if CLUSTER_SCOPED.contains(&kind) {
        return Some(
            "a cluster-scoped kind among a namespace's objects: the snapshot is damaged or hostile",
        );
    }
    match kind {
        "Secret" if o["type"] == "kubernetes.io/service-account-token" => {
            Some("a ServiceAccount's token Secret: the new cluster issues its own tokens")
        }
        _ => None,
    }
}

fn object_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    v.get_mut(key)?.as_object_mut()
}

fn map_class(v: &mut Value, classes: &BTreeMap<String, String>) {
    let Some(spec) = object_mut(v, "spec") else {
        return;
    };
    if let Some(new) = spec
        .get("storageClassName")
        .and_then(Value::as_str)
        .and_then(|c| classes.get(c))
    {
        spec.insert("storageClassName".into(), Value::String(new.clone()));
    }
}

/// The object `o` of kind `kind`, cleaned for a restore by `opts`. Owner
/// references are kept without their uid: [`repoint_owners`] gives them the
/// restored owners' uids, or drops them.
pub fn clean(kind: &str, o: &Value, opts: &CleanOptions) -> Value {
    let mut o = o.clone();
    if let Some(root) = o.as_object_mut() {
        root.remove("status");
    }
    if let Some(meta) = object_mut(&mut o, "metadata") {
        for k in SERVER_METADATA {
            meta.remove(*k);
        }
        meta.insert("namespace".into(), Value::String(opts.namespace.clone()));
        if let Some(owners) = meta
            .get_mut("ownerReferences")
            .and_then(Value::as_array_mut)
        {
            for r in owners.iter_mut().filter_map(Value::as_object_mut) {
                r.remove("uid");
            }
        }
    }
    match kind {
        "Service" => {
            if let Some(spec) = object_mut(&mut o, "spec") {
                // A headless Service stays headless.
                if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
                spec.remove("healthCheckNodePort");
                for p in spec
                    .get_mut("ports")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object_mut)
                {
                    p.remove("nodePort");
                }
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(spec) = object_mut(&mut o, "spec") {
                spec.remove("volumeName");
                // The old cluster's snapshot or populator: the restore fills
                // the claim itself.
                spec.remove("dataSource");
                spec.remove("dataSourceRef");
            }
            if let Some(a) = o
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                for k in BINDING_ANNOTATIONS {
                    a.remove(*k);
                }
            }
            map_class(&mut o, &opts.storage_classes);
        }
        "StatefulSet" => {
            for t in o
                .pointer_mut("/spec/volumeClaimTemplates")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                map_class(t, &opts.storage_classes);
            }
        }
        "Pod" => {
            if let Some(spec) = object_mut(&mut o, "spec") {
                spec.remove("nodeName");
            }
        }
        "Job" if o["spec"]["manualSelector"] != Value::Bool(true) => {
            // The Job controller makes a new selector for the new uid.
            if let Some(spec) = object_mut(&mut o, "spec") {
                spec.remove("selector");
            }
            if let Some(labels) = o
                .pointer_mut("/spec/template/metadata/labels")
                .and_then(Value::as_object_mut)
            {
                for k in JOB_LABELS {
                    labels.remove(*k);
                }
            }
        }
        "RoleBinding" => {
            if let Some(from) = &opts.from_namespace {
                for subject in o
                    .get_mut("subjects")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object_mut)
                {
                    if subject.get("kind").and_then(Value::as_str) == Some("ServiceAccount")
                        && subject.get("namespace").and_then(Value::as_str) == Some(from)
                    {
                        subject.insert("namespace".into(), Value::String(opts.namespace.clone()));
                    }
                }
            }
        }
        "ServiceAccount" => {
            // Token Secrets of the old cluster are not restored.
            let sa = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(list) = o.get_mut("secrets").and_then(Value::as_array_mut) {
                list.retain(|s| {
                    !s["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&format!("{sa}-token-")))
                });
            }
        }
        _ => {}
    }
    o
}

/// Gives each owner reference of `o` the uid of its restored owner, as
/// `uid_of(kind, name)` finds it, and drops those whose owner was not
/// restored (an owner reference needs the owner's uid). `coffer k8s
/// manifests` passes a lookup that finds nothing: its objects have none.
pub fn repoint_owners(o: &mut Value, uid_of: impl Fn(&str, &str) -> Option<String>) {
    let Some(meta) = object_mut(o, "metadata") else {
        return;
    };
    let Some(owners) = meta
        .get_mut("ownerReferences")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    owners.retain_mut(|r| {
        let kind = r["kind"].as_str().unwrap_or_default();
        let name = r["name"].as_str().unwrap_or_default();
        match uid_of(kind, name) {
            Some(uid) => {
                r["uid"] = Value::String(uid);
                true
            }
            None => false,
        }
    });
    if owners.is_empty() {
        meta.remove("ownerReferences");
    }
}

/// The subjects of a cleaned RoleBinding `o` that are not accounts of
/// `namespace` (Users, Groups, another namespace's ServiceAccounts), as
/// `kind name` or `ServiceAccount ns/name`: restoring it gives them rights
/// in this namespace, which a restore reports rather than does silently.
pub fn outside_subjects(o: &Value, namespace: &str) -> Vec<String> {
    o.get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
            let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
            match (kind, s.get("namespace").and_then(Value::as_str)) {
                ("ServiceAccount", Some(ns)) if ns == namespace => None,
                ("ServiceAccount", ns) => {
                    Some(format!("ServiceAccount {}/{name}", ns.unwrap_or("")))
                }
                _ => Some(format!("{kind} {name}")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> CleanOptions {
        CleanOptions {
            namespace: "shop-restored".into(),
            from_namespace: Some("shop".into()),
            storage_classes: BTreeMap::from([("gp2".into(), "fast".into())]),
        }
    }

    #[test]
    fn identity_status_and_the_namespace_of_the_old_cluster_go() {
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "shop", "uid": "u1", "resourceVersion": "42",
                "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 3,
                "managedFields": [{"manager": "kubectl"}], "labels": {"app": "shop"},
                "annotations": {"note": "kept"}},
            "data": {"k": "v"},
            "status": {"x": 1},
        });
        assert_eq!(
            clean("ConfigMap", &cm, &opts()),
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cfg", "namespace": "shop-restored", "labels": {"app": "shop"},
                    "annotations": {"note": "kept"}},
                "data": {"k": "v"},
            })
        );
    }

    #[test]
    fn services_claims_pods_and_jobs_lose_what_the_old_cluster_filled_in() {
        let svc = json!({"kind": "Service", "metadata": {"name": "web"},
            "spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "type": "NodePort",
                "healthCheckNodePort": 31000,
                "ports": [{"port": 80, "nodePort": 30080}]}});
        let c = clean("Service", &svc, &opts());
        assert_eq!(
            c["spec"],
            json!({"type": "NodePort", "ports": [{"port": 80}]})
        );
        let headless = json!({"kind": "Service", "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        assert_eq!(
            clean("Service", &headless, &opts())["spec"]["clusterIP"],
            "None"
        );

        let pvc = json!({"kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "annotations": {
                "pv.kubernetes.io/bind-completed": "yes", "volume.kubernetes.io/selected-node": "n1", "mine": "x"}},
            "spec": {"volumeName": "pv-123", "storageClassName": "gp2", "resources": {"requests": {"storage": "1Gi"}},
                "dataSource": {"kind": "VolumeSnapshot", "name": "old", "apiGroup": "snapshot.storage.k8s.io"},
                "dataSourceRef": {"kind": "VolumeSnapshot", "name": "old", "apiGroup": "snapshot.storage.k8s.io"}}});
        let c = clean("PersistentVolumeClaim", &pvc, &opts());
        assert_eq!(c["metadata"]["annotations"], json!({"mine": "x"}));
        assert_eq!(
            c["spec"],
            json!({"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}})
        );

        let sts = json!({"kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"storageClassName": "gp2"}},
                {"metadata": {"name": "logs"}, "spec": {"storageClassName": "other"}}]}});
        let c = clean("StatefulSet", &sts, &opts());
        assert_eq!(
            c["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
            "fast"
        );
        assert_eq!(
            c["spec"]["volumeClaimTemplates"][1]["spec"]["storageClassName"],
            "other"
        );

        let pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": []}});
        assert_eq!(
            clean("Pod", &pod, &opts())["spec"],
            json!({"containers": []})
        );

        let job = json!({"kind": "Job", "metadata": {"name": "j"},
            "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u",
                    "job-name": "j", "app": "x"}}}}});
        let c = clean("Job", &job, &opts());
        assert_eq!(
            c["spec"],
            json!({"template": {"metadata": {"labels": {"app": "x"}}}})
        );
    }

    #[test]
    fn owner_references_point_at_the_restored_owners_or_go() {
        let o = json!({"kind": "Widget", "metadata": {"name": "w", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "old-1"},
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": "old-2"}]}});
        let mut c = clean("Widget", &o, &opts());
        assert_eq!(c["metadata"]["ownerReferences"][0].get("uid"), None);
        repoint_owners(&mut c, |kind, name| {
            (kind == "Deployment" && name == "web").then(|| "new-1".to_string())
        });
        assert_eq!(
            c["metadata"]["ownerReferences"],
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "new-1"}])
        );
        repoint_owners(&mut c, |_, _| None);
        assert_eq!(c["metadata"].get("ownerReferences"), None);
    }

    #[test]
    fn a_role_bindings_service_accounts_move_with_the_namespace() {
        let rb = json!({"kind": "RoleBinding", "metadata": {"name": "rb"},
            "roleRef": {"kind": "Role", "name": "r"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "app", "namespace": "shop"},
                {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"},
                {"kind": "User", "name": "alice"}]});
        assert_eq!(
            clean("RoleBinding", &rb, &opts())["subjects"],
            json!([
                {"kind": "ServiceAccount", "name": "app", "namespace": "shop-restored"},
                {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"},
                {"kind": "User", "name": "alice"}])
        );
        // Who keeps rights here from outside the namespace: reported.
        assert_eq!(
            outside_subjects(&clean("RoleBinding", &rb, &opts()), "shop-restored"),
            ["ServiceAccount tools/ci", "User alice"]
        );
    }

    #[test]
    fn malformed_objects_are_cleaned_without_a_panic() {
        for kind in [
            "Job",
            "StatefulSet",
            "PersistentVolumeClaim",
            "Service",
            "Pod",
            "RoleBinding",
            "ServiceAccount",
            "ConfigMap",
        ] {
            for o in [
                json!({"spec": "x", "metadata": 3}),
                json!({"spec": {"template": 1}}),
                json!(null),
                json!([]),
                json!({"subjects": 1, "secrets": "x"}),
            ] {
                let _ = clean(kind, &o, &opts());
            }
        }
        let job = clean(
            "Job",
            &json!({"kind": "Job", "metadata": {"name": "j"}}),
            &opts(),
        );
        assert_eq!(job.get("spec"), None, "nothing is added: {job}");
    }

    #[test]
    fn a_cluster_scoped_kind_among_a_namespaces_objects_is_not_restored() {
        for kind in [
            "ClusterRoleBinding",
            "Namespace",
            "MutatingWebhookConfiguration",
            "PersistentVolume",
        ] {
            assert!(
                not_restored(kind, &json!({}))
                    .unwrap()
                    .contains("cluster-scoped"),
                "{kind}"
            );
        }
    }

    #[test]
    fn service_account_tokens_are_not_restored() {
        let token = json!({"kind": "Secret", "type": "kubernetes.io/service-account-token"});
        assert!(not_restored("Secret", &token).is_some());
        assert!(not_restored("Secret", &json!({"type": "Opaque"})).is_none());
        let sa = json!({"kind": "ServiceAccount", "metadata": {"name": "app"},
            "secrets": [{"name": "app-token-x7k2"}, {"name": "registry"}]});
        assert_eq!(
            clean("ServiceAccount", &sa, &opts())["secrets"],
            json!([{"name": "registry"}])
        );
    }
}
