//! Application backups: the capture of a namespace's objects, with the
//! tenant's rights, into a snapshot laid out as SPEC.md §16 fixes.

use coffer_application::clean::{clean, repoint_owners, CleanOptions};
use coffer_application::layout::{ObjectPath, MANIFEST};
use coffer_engine::trees;
use coffer_node_agent::crd::{ApplicationBackup, ApplicationRestore, Phase, SecretKeyRef};
use coffer_node_agent::mover::capture::{application_tag, capture, CaptureJob};
use coffer_node_agent::mover::RepoAccess;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::ResourceExt;
use serde_json::json;

use crate::harness::*;
use crate::snapshots::fake_cluster;

/// A file of the snapshot, as JSON; `None` when it is not there.
async fn read_json(
    repo: &coffer_engine::Repository,
    index: &coffer_engine::Index,
    root: &coffer_engine::format::snapshot::Snapshot,
    path: &str,
) -> Option<serde_json::Value> {
    let node = trees::lookup(repo, index, &root.root, format!("/{path}").as_bytes())
        .await
        .unwrap()?;
    let bytes = coffer_engine::dump::read_small_file(repo, index, &node, 1 << 20, path)
        .await
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// A namespace's objects are captured with the rights its owner gave the
/// capturing account, and nothing more: what it may list is in the
/// snapshot, one JSON file per object, equal to what the API server holds;
/// the ReplicaSet its Deployment recreates is left out; Secrets, which the
/// account may not list, are recorded as skipped with the API server's
/// reason. `coffer k8s manifests`' cleaning of a captured object gives it
/// back without what belonged to the old cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_is_captured_with_the_tenants_rights_one_file_per_object() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("shop").await;
    let repo_dir = env.repository(&ns, "default", PASSWORD).await;
    let cm: ConfigMap = env
        .create(
            &ns,
            json!({"metadata": {"name": "cfg", "labels": {"app": "shop"}}, "data": {"a": "b"}}),
        )
        .await;
    env.secret(&ns, "db-credentials", "password", "hunter2")
        .await;
    let deploy: Deployment = env
        .create(
            &ns,
            json!({"metadata": {"name": "web"},
                "spec": {"selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
        )
        .await;
    let _rs: ReplicaSet = env
        .create(
            &ns,
            json!({"metadata": {"name": "web-5d8f", "ownerReferences": [{"apiVersion": "apps/v1",
                    "kind": "Deployment", "name": "web", "uid": deploy.metadata.uid, "controller": true}]},
                "spec": {"selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
        )
        .await;
    let _svc: Service = env
        .create(&ns, json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}], "clusterIP": "10.0.0.9"}}))
        .await;
    // A claim on a volume of class hostpath, and a custom resource.
    let data = env.dir.path().join("csi/source/shop-data");
    fill(&data, 3, 2);
    crate::sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    env.create_cluster::<k8s_openapi::api::storage::v1::StorageClass>(
        json!({"metadata": {"name": "hostpath"}, "provisioner": "hostpath.csi.k8s.io"}),
    )
    .await;
    env.create::<coffer_node_agent::crd::BackupSchedule>(
        &ns,
        json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "nightly"}, "spec": {"schedule": "@daily", "selector": {}}}),
    )
    .await;
    // The capturing account, as the namespace's owner binds it: it may read
    // the workloads, ConfigMaps and Services, and the repository's password
    // by name; it may not list Secrets.
    env.create::<ServiceAccount>(&ns, json!({"metadata": {"name": "coffer-application"}}))
        .await;
    env.create::<Role>(
        &ns,
        json!({"metadata": {"name": "capture"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps", "services", "serviceaccounts", "persistentvolumeclaims"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "replicasets", "statefulsets"], "verbs": ["get", "list"]},
            {"apiGroups": ["coffer.dev"], "resources": ["backupschedules"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["default-password"], "verbs": ["get"]},
        ]}),
    )
    .await;
    env.create::<RoleBinding>(
        &ns,
        json!({"metadata": {"name": "capture"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "capture"},
            "subjects": [{"kind": "ServiceAccount", "name": "coffer-application", "namespace": ns}]}),
    )
    .await;
    // And, cluster-wide, to read volumes and storage classes (not CRDs).
    env.create_cluster::<k8s_openapi::api::rbac::v1::ClusterRole>(json!({
        "metadata": {"name": format!("{ns}-capture")},
        "rules": [{"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get"]},
            {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get"]}]}))
        .await;
    env.create_cluster::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(json!({
        "metadata": {"name": format!("{ns}-capture")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{ns}-capture")},
        "subjects": [{"kind": "ServiceAccount", "name": "coffer-application", "namespace": ns}]}))
    .await;
    let tenant = env.client_as(&ns, "coffer-application").await;
    let job = CaptureJob {
        namespace: ns.clone(),
        application: "shop".into(),
        repo: RepoAccess {
            url: format!("file://{}", repo_dir.display()),
            options: vec![],
            namespace: ns.clone(),
            repository: "default".into(),
            password: SecretKeyRef {
                name: "default-password".into(),
                key: "password".into(),
            },
            credentials: None,
            init: true,
            policy: coffer_node_agent::policy::TenantPolicy {
                file_repositories: vec![env.dir.path().to_path_buf()],
                ..Default::default()
            },
        },
        selection: Default::default(),
        label_selector: None,
        work_dir: env.dir.path().to_path_buf(),
        cluster: Some("test-cluster".into()),
        tags: vec![],
        volumes: vec![],
    };
    let got = capture(&tenant, &job, &Default::default()).await.unwrap();
    assert_eq!(got.counts.get("ConfigMap"), Some(&1), "{got:#?}");
    assert_eq!(got.counts.get("Deployment"), Some(&1), "{got:#?}");
    assert_eq!(got.counts.get("Service"), Some(&1), "{got:#?}");
    assert_eq!(
        got.counts.get("ReplicaSet"),
        None,
        "recreated by its Deployment: {got:#?}"
    );
    assert_eq!(got.counts.get("Secret"), None, "{got:#?}");
    let secrets = got
        .skipped
        .iter()
        .find(|s| s.resource == "secrets")
        .expect("secrets skipped");
    assert!(secrets.reason.contains("forbidden"), "{secrets:?}");

    // The snapshot, as SPEC.md §16 lays it out.
    let repo = open_repo(&repo_dir, PASSWORD).await;
    let index = repo.load_index().await.unwrap();
    let (_, snap) = repo.find_snapshot(&got.snapshot_id).await.unwrap();
    assert_eq!(
        snap.tags,
        vec![
            application_tag("shop"),
            coffer_node_agent::mover::capture::objects_tag("shop")
        ]
    );
    assert_eq!(
        snap.origin.as_ref().unwrap().namespace.as_deref(),
        Some(ns.as_str())
    );
    let path = ObjectPath::of(
        coffer_application::layout::Scope::Namespaced,
        "v1",
        "ConfigMap",
        "cfg",
    )
    .unwrap()
    .path();
    let stored = read_json(&repo, &index, &snap, &path).await.unwrap();
    let mut held = serde_json::to_value(
        Api::<ConfigMap>::namespaced(env.client.clone(), &ns)
            .get("cfg")
            .await
            .unwrap(),
    )
    .unwrap();
    held["apiVersion"] = json!("v1");
    held["kind"] = json!("ConfigMap");
    assert_eq!(stored, held, "the object as the API server holds it");
    assert_eq!(
        cm.metadata.uid.as_deref(),
        stored["metadata"]["uid"].as_str()
    );
    assert!(read_json(
        &repo,
        &index,
        &snap,
        "objects/apps/v1/ReplicaSet/web-5d8f.json"
    )
    .await
    .is_none());
    assert!(read_json(
        &repo,
        &index,
        &snap,
        "objects/core/v1/Secret/db-credentials.json"
    )
    .await
    .is_none());
    // The volume and the class it depends on, recorded for reference.
    let pv = read_json(
        &repo,
        &index,
        &snap,
        &format!("cluster/core/v1/PersistentVolume/pv-{ns}-data.json"),
    )
    .await
    .expect("the claim's volume is recorded");
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
    let sc = read_json(
        &repo,
        &index,
        &snap,
        "cluster/storage.k8s.io/v1/StorageClass/hostpath.json",
    )
    .await
    .expect("the claim's class is recorded");
    assert_eq!(sc["provisioner"], "hostpath.csi.k8s.io");
    let manifest = read_json(&repo, &index, &snap, MANIFEST).await.unwrap();
    assert_eq!(
        manifest["recorded"].as_array().unwrap().len(),
        2,
        "{manifest}"
    );
    assert_eq!(manifest["namespace"], json!(ns));
    assert!(manifest["objects"]
        .as_array()
        .unwrap()
        .contains(&json!(path)));
    assert!(manifest["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["resource"] == "secrets"));

    // Cleaned for a restore elsewhere: the old cluster's fields go.
    let svc = read_json(&repo, &index, &snap, "objects/core/v1/Service/web.json")
        .await
        .unwrap();
    let mut c = clean(
        "Service",
        &svc,
        &CleanOptions {
            namespace: "shop-2".into(),
            ..Default::default()
        },
    );
    repoint_owners(&mut c, |_, _| None);
    assert_eq!(c["metadata"].get("uid"), None);
    assert_eq!(c["metadata"]["namespace"], "shop-2");
    assert_eq!(c["spec"].get("clusterIP"), None);
    assert_eq!(c["spec"]["ports"], json!([{"port": 80}]));
}

/// The capturing account of `ns`, as its owner binds it: it reads the
/// namespace's ConfigMaps, claims and Services, and the repository's
/// password by name; Secrets it lists only `with_secrets`.
async fn capturing_account(env: &Env, ns: &str, with_secrets: bool) {
    env.create::<ServiceAccount>(ns, json!({"metadata": {"name": "coffer-application"}}))
        .await;
    let mut rules = vec![
        json!({"apiGroups": [""], "resources": ["configmaps", "services", "persistentvolumeclaims"], "verbs": ["get", "list"]}),
        json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["default-password"], "verbs": ["get"]}),
    ];
    if with_secrets {
        rules.push(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}));
    }
    env.create::<Role>(ns, json!({"metadata": {"name": "capture"}, "rules": rules}))
        .await;
    env.create::<RoleBinding>(
        ns,
        json!({"metadata": {"name": "capture"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "capture"},
            "subjects": [{"kind": "ServiceAccount", "name": "coffer-application", "namespace": ns}]}),
    )
    .await;
}

async fn application_backup(env: &Env, ns: &str, name: &str) -> ApplicationBackup {
    env.create::<ApplicationBackup>(
        ns,
        json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "ApplicationBackup",
            "metadata": {"name": name}, "spec": {"tags": ["by-test"]}}),
    )
    .await;
    env.wait_for::<ApplicationBackup>(ns, name, "final and cleaned up", |b| {
        b.status.as_ref().is_some_and(|s| s.run.phase.is_final())
            && !b
                .finalizers()
                .iter()
                .any(|f| f == coffer_node_agent::names::FINALIZER)
    })
    .await
}

/// An ApplicationBackup backs up each claim's data through its own
/// VolumeBackup, then captures the namespace's objects as the tenant's
/// account, in a pod of the namespace: the objects' snapshot names each
/// claim's data snapshot, which restores byte for byte. An account that
/// may not list Secrets makes it PartiallyFailed, naming them; with that
/// right the next one is Completed and holds the Secret. The capture pod
/// and its Role go at the end; the tenant's account stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_backup_takes_the_claims_data_then_the_objects_as_the_tenant() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("shop").await;
    // The repository in these tests is a node's directory, mounted by
    // hostPath, which only a privileged namespace admits (with an object
    // store the capture pod is `restricted`: a unit test checks it).
    env.allow_host_paths(&ns).await;
    env.allow_applications(&ns).await;
    let repo_dir = env.repository(&ns, "default", PASSWORD).await;
    let (orders, media) = (
        env.dir.path().join("csi/source/orders"),
        env.dir.path().join("csi/source/media"),
    );
    fill(&orders, 21, 6);
    fill(&media, 22, 3);
    crate::sim::csi_pvc(&env, &ns, "orders", "Filesystem", &orders, json!({})).await;
    crate::sim::csi_pvc(&env, &ns, "media", "Filesystem", &media, json!({})).await;
    env.create::<ConfigMap>(
        &ns,
        json!({"metadata": {"name": "cfg"}, "data": {"a": "b"}}),
    )
    .await;
    env.secret(&ns, "db-credentials", "password", "hunter2")
        .await;
    capturing_account(&env, &ns, false).await;
    let _c = Controller::start(&env, "a", &[]);

    let ab = application_backup(&env, &ns, "shop").await;
    let st = ab.status.clone().unwrap();
    assert_eq!(st.run.phase, Phase::PartiallyFailed, "{st:#?}");
    let message = st.run.message.clone().unwrap_or_default();
    assert!(message.contains("secrets"), "{message}");
    let objects = st.objects.clone().unwrap();
    assert_eq!(objects.counts.get("ConfigMap"), Some(&1), "{objects:#?}");
    assert_eq!(objects.counts.get("PersistentVolumeClaim"), Some(&2));
    assert!(objects
        .skipped
        .iter()
        .any(|s| s.resource == "secrets" && s.reason.contains("forbidden")));
    let volumes = st.volumes.clone().unwrap();
    assert_eq!(volumes.len(), 2, "{volumes:#?}");
    assert_eq!(st.volume_count, Some(2));
    for v in &volumes {
        assert_eq!(v.phase, Some(Phase::Completed), "{v:#?}");
    }
    // Each claim's run is the backup's own, and says so.
    for vb in env.list_backups(&ns).await {
        assert_eq!(vb.owner_references()[0].name, "shop");
        assert!(vb.spec.tags.contains(&application_tag("shop")));
    }

    // The objects' snapshot leads to each claim's data.
    let repo = open_repo(&repo_dir, PASSWORD).await;
    let index = repo.load_index().await.unwrap();
    let id = st.run.snapshot_id.clone().unwrap();
    let (_, snap) = repo.find_snapshot(&id).await.unwrap();
    assert!(snap.tags.contains(&application_tag("shop")) && snap.tags.contains(&"by-test".into()));
    let manifest = read_json(&repo, &index, &snap, MANIFEST).await.unwrap();
    let recorded: Vec<(String, String)> = manifest["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["pvc"].as_str().unwrap().into(),
                v["snapshot"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(recorded.len(), 2, "{manifest}");
    for (pvc, snapshot) in &recorded {
        let v = volumes.iter().find(|v| &v.pvc == pvc).unwrap();
        assert_eq!(v.snapshot_id.as_ref(), Some(snapshot));
        let source = if pvc == "orders" { &orders } else { &media };
        let restored = restore(&repo_dir, snapshot, env.dir.path()).await;
        assert_same_tree(source, &restored);
    }
    assert!(
        read_json(&repo, &index, &snap, "objects/core/v1/ConfigMap/cfg.json")
            .await
            .is_some()
    );
    assert!(read_json(
        &repo,
        &index,
        &snap,
        "objects/core/v1/Secret/db-credentials.json"
    )
    .await
    .is_none());
    // What ran in the namespace is gone; the tenant's account is not.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    assert!(pods.get_opt("coffer-capture-shop").await.unwrap().is_none());
    let roles: Api<Role> = Api::namespaced(env.client.clone(), &ns);
    assert!(roles
        .get_opt("coffer-capture-shop")
        .await
        .unwrap()
        .is_none());
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &ns);
    assert!(accounts
        .get_opt("coffer-application")
        .await
        .unwrap()
        .is_some());

    // The claims' volumes and class it could not read are noted, not
    // counted against it.
    assert!(
        objects
            .unrecorded
            .iter()
            .any(|s| s.resource.starts_with("PersistentVolume ")),
        "{objects:#?}"
    );

    // Allowed to read everything in the namespace (as `view` and Secrets
    // bound there), the next one is complete.
    env.create::<Role>(
        &ns,
        json!({"metadata": {"name": "capture-secrets"}, "rules": [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}]}),
    )
    .await;
    env.create::<RoleBinding>(
        &ns,
        json!({"metadata": {"name": "capture-secrets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "capture-secrets"},
            "subjects": [{"kind": "ServiceAccount", "name": "coffer-application", "namespace": ns}]}),
    )
    .await;
    let ab = application_backup(&env, &ns, "shop-2").await;
    let st = ab.status.clone().unwrap();
    assert_eq!(st.run.phase, Phase::Completed, "{st:#?}");
    let repo = open_repo(&repo_dir, PASSWORD).await;
    let index = repo.load_index().await.unwrap();
    let (_, snap) = repo
        .find_snapshot(st.run.snapshot_id.as_deref().unwrap())
        .await
        .unwrap();
    let secret = read_json(
        &repo,
        &index,
        &snap,
        "objects/core/v1/Secret/db-credentials.json",
    )
    .await
    .expect("the Secret is captured");
    assert_eq!(secret["data"]["password"], json!("aHVudGVyMg=="));
    // Secrets never reach a status.
    assert!(!serde_json::to_string(&ab).unwrap().contains("aHVudGVyMg"));

    // A namespace that opted in to coffer, but not to its pods: the
    // backup fails, saying how the namespace allows them.
    let bare = env.namespace("bare").await;
    env.repository(&bare, "default", PASSWORD).await;
    capturing_account(&env, &bare, true).await;
    let ab = application_backup(&env, &bare, "shop").await;
    let st = ab.status.unwrap();
    assert_eq!(st.run.phase, Phase::Failed, "{st:#?}");
    let m = st.run.message.unwrap_or_default();
    assert!(
        m.contains(&format!(
            "kubectl -n {bare} create rolebinding coffer-applications"
        )),
        "{m}"
    );
}

/// An account of `ns` named `name` allowed `rules`.
async fn account_with(env: &Env, ns: &str, name: &str, rules: serde_json::Value) {
    env.create::<ServiceAccount>(ns, json!({"metadata": {"name": name}}))
        .await;
    env.create::<Role>(ns, json!({"metadata": {"name": name}, "rules": rules}))
        .await;
    env.create::<RoleBinding>(
        ns,
        json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]}),
    )
    .await;
}

async fn application_restore(
    env: &Env,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> ApplicationRestore {
    env.create::<ApplicationRestore>(
        ns,
        json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "ApplicationRestore",
            "metadata": {"name": name}, "spec": spec}),
    )
    .await;
    env.wait_for::<ApplicationRestore>(ns, name, "final and cleaned up", |r| {
        r.status.as_ref().is_some_and(|s| s.run.phase.is_final())
            && !r
                .finalizers()
                .iter()
                .any(|f| f == coffer_node_agent::names::FINALIZER)
    })
    .await
}

fn result_of(r: &ApplicationRestore, kind: &str, name: &str) -> (String, String) {
    let st = r.status.as_ref().unwrap();
    let o = st
        .objects
        .as_ref()
        .unwrap()
        .results
        .iter()
        .find(|o| o.kind == kind && o.name == name)
        .unwrap_or_else(|| panic!("no result for {kind} {name}: {st:#?}"));
    (o.result.clone(), o.message.clone().unwrap_or_default())
}

/// A namespace backed up as an application comes back in another namespace
/// from the bucket alone (a BackupRepository and its password there, the
/// origin's cluster and namespace): every object equal to the original but
/// for what belonged to the old cluster, the claim filled with its data
/// byte for byte before the Deployment that mounts it is created; a
/// RoleBinding the restoring account may not create is reported as failed
/// with the API server's words, and the rest is restored. Restoring again
/// leaves an object changed since as it is (`None`) or puts the backed-up
/// one back (`Update`), and `includedResources` restores nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_comes_back_in_another_namespace_from_the_bucket_alone() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("shop").await;
    env.allow_host_paths(&ns).await;
    env.allow_applications(&ns).await;
    let repo_dir = env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/shop-orders");
    fill(&data, 31, 5);
    crate::sim::csi_pvc(
        &env,
        &ns,
        "orders",
        "Filesystem",
        &data,
        json!({"app": "shop"}),
    )
    .await;
    let cm: ConfigMap = env
        .create(&ns, json!({"metadata": {"name": "cfg", "labels": {"app": "shop"}}, "data": {"mode": "live"}}))
        .await;
    env.secret(&ns, "db-credentials", "password", "hunter2")
        .await;
    let deploy: Deployment = env
        .create(
            &ns,
            json!({"metadata": {"name": "web"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}],
                                 "volumes": [{"name": "orders", "persistentVolumeClaim": {"claimName": "orders"}}]}}}}),
        )
        .await;
    env.create::<Service>(&ns, json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}], "clusterIP": "10.0.0.9"}}))
        .await;
    // A custom resource of a CRD, and a StatefulSet of two replicas whose
    // claims its controller made from volumeClaimTemplates (labelled with
    // its selector, named <template>-<set>-<ordinal>).
    env.create_cluster::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))
    .await;
    let widgets = kube::discovery::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widget: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1", "namespace": ns}, "spec": {"size": 3, "colour": "teal"}}))
    .unwrap();
    Api::<kube::api::DynamicObject>::namespaced_with(env.client.clone(), &ns, &widgets)
        .create(&Default::default(), &widget)
        .await
        .unwrap();
    let sts: StatefulSet = env
        .create(
            &ns,
            json!({"metadata": {"name": "db"},
                "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                    "template": {"metadata": {"labels": {"app": "db"}},
                        "spec": {"containers": [{"name": "pg", "image": "postgres:17",
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql"}]}]}},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "hostpath",
                            "resources": {"requests": {"storage": "1Gi"}}}}]}}),
        )
        .await;
    let mut replicas = Vec::new();
    for i in 0..2 {
        let dir = env.dir.path().join(format!("csi/source/shop-db-{i}"));
        fill(&dir, 40 + i, 3);
        let claim = format!("data-db-{i}");
        crate::sim::csi_pvc(&env, &ns, &claim, "Filesystem", &dir, json!({"app": "db"})).await;
        replicas.push((claim, dir));
    }
    env.create::<ServiceAccount>(&ns, json!({"metadata": {"name": "app"}}))
        .await;
    env.create::<RoleBinding>(
        &ns,
        json!({"metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns}]}),
    )
    .await;
    account_with(
        &env,
        &ns,
        "coffer-application",
        json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}]),
    )
    .await;
    let _c = Controller::start(&env, "a", &[]);
    let started = std::time::Instant::now();
    let ab = application_backup(&env, &ns, "shop").await;
    let backup_wall = started.elapsed();
    let backed = ab.status.clone().unwrap();
    assert_eq!(backed.run.phase, Phase::Completed, "{backed:#?}");

    // Another namespace: the repository and its password, an account that
    // may create what a namespace's `edit` may (no RBAC), and nothing else.
    let copy = env.namespace("shop-copy").await;
    env.allow_host_paths(&copy).await;
    env.allow_applications(&copy).await;
    env.secret(&copy, "shop-password", "password", PASSWORD)
        .await;
    env.repository_at(&copy, "default", &repo_dir, "shop-password")
        .await;
    account_with(
        &env,
        &copy,
        "coffer-restore",
        json!([{"apiGroups": ["", "apps", "example.com"], "resources": ["*"], "verbs": ["*"]}]),
    )
    .await;
    let started = std::time::Instant::now();
    let r = application_restore(
        &env,
        &copy,
        "shop",
        json!({"snapshot": {"cluster": "test-cluster", "namespace": ns}}),
    )
    .await;
    let st = r.status.clone().unwrap();
    // The round trip, for the record (not asserted: speed is measured in
    // benches/).
    let objects = backed.objects.clone().unwrap();
    let data_bytes: u64 = backed
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.bytes)
        .sum();
    eprintln!(
        "round trip: backed up {} objects ({:?}), {} bytes of JSON, {} claims with {data_bytes} \
         bytes of data in {backup_wall:?}; restored {:?} in {:?}",
        objects.total,
        objects.counts,
        objects.bytes,
        backed.volume_count.unwrap_or_default(),
        st.objects.as_ref().map(|o| &o.counts),
        started.elapsed()
    );
    assert_eq!(st.run.phase, Phase::PartiallyFailed, "{st:#?}");
    assert_eq!(st.run.snapshot_id, backed.run.snapshot_id);
    assert_eq!(st.source_namespace.as_deref(), Some(ns.as_str()));
    let (result, why) = result_of(&r, "RoleBinding.rbac.authorization.k8s.io", "reader");
    assert_eq!(result, "Failed");
    assert!(why.contains("forbidden"), "{why}");
    let message = st.run.message.clone().unwrap_or_default();
    assert!(message.contains("reader"), "{message}");
    for (kind, name) in [
        ("ConfigMap", "cfg"),
        ("Secret", "db-credentials"),
        ("Deployment.apps", "web"),
        ("Service", "web"),
        ("ServiceAccount", "app"),
        ("PersistentVolumeClaim", "orders"),
    ] {
        assert_eq!(result_of(&r, kind, name).0, "Created", "{kind} {name}");
    }
    // Equal to the originals but for the old cluster's fields.
    let got: ConfigMap = Api::namespaced(env.client.clone(), &copy)
        .get("cfg")
        .await
        .unwrap();
    assert_eq!(got.data, cm.data);
    assert_eq!(got.metadata.labels, cm.metadata.labels);
    assert_ne!(got.metadata.uid, cm.metadata.uid);
    let secret: k8s_openapi::api::core::v1::Secret = Api::namespaced(env.client.clone(), &copy)
        .get("db-credentials")
        .await
        .unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"hunter2");
    let web: Deployment = Api::namespaced(env.client.clone(), &copy)
        .get("web")
        .await
        .unwrap();
    assert_eq!(web.spec, deploy.spec);
    let svc: Service = Api::namespaced(env.client.clone(), &copy)
        .get("web")
        .await
        .unwrap();
    assert_ne!(svc.spec.unwrap().cluster_ip.as_deref(), Some("10.0.0.9"));
    // The claim came back with its data, bound before the Deployment was
    // made (it is created after the claim in the results' order).
    let (pvc, path) = crate::pvc_restores::restored_pvc(&env, &copy, "orders").await;
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));
    assert_same_tree(&data, &path);
    let order: Vec<String> = st
        .objects
        .as_ref()
        .unwrap()
        .results
        .iter()
        .map(|o| format!("{} {}", o.kind, o.name))
        .collect();
    let at = |s: &str| order.iter().position(|o| o == s).unwrap();
    assert!(
        at("PersistentVolumeClaim orders") < at("Deployment.apps web"),
        "{order:?}"
    );
    assert!(
        at("ServiceAccount app") < at("PersistentVolumeClaim orders"),
        "{order:?}"
    );
    assert_eq!(st.volumes.len(), 3, "{:#?}", st.volumes);
    // The custom resource, as it was.
    let got = Api::<kube::api::DynamicObject>::namespaced_with(env.client.clone(), &copy, &widgets)
        .get("w1")
        .await
        .unwrap();
    assert_eq!(got.data["spec"], json!({"size": 3, "colour": "teal"}));
    // The StatefulSet and, under the names its templates look for and with
    // its selector's labels, its claims, each with its replica's data,
    // bound before it was created: it adopts them.
    let got: StatefulSet = Api::namespaced(env.client.clone(), &copy)
        .get("db")
        .await
        .unwrap();
    assert_eq!(got.spec, sts.spec);
    for (claim, dir) in &replicas {
        let (pvc, path) = crate::pvc_restores::restored_pvc(&env, &copy, claim).await;
        assert_eq!(pvc.metadata.labels.unwrap()["app"], "db");
        assert_same_tree(dir, &path);
        assert!(
            at(&format!("PersistentVolumeClaim {claim}")) < at("StatefulSet.apps db"),
            "{order:?}"
        );
    }
    // What coffer made for the backup (its capture pod, that pod's Role)
    // was never part of the application.
    assert!(
        !order.iter().any(|o| o.contains("coffer-capture")),
        "{order:?}"
    );

    // Changed since: left alone (None), then put back (Update); only
    // ConfigMaps are looked at.
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &copy);
    cms.patch(
        "cfg",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"mode": "maintenance"}})),
    )
    .await
    .unwrap();
    // With restore hooks: the first runs in each pod it picks once all are
    // Ready (not before); a failing one with onError Continue is a
    // Warning, not a failure.
    let ran = env.dir.path().join("hook-ran");
    env.create::<Pod>(
        &copy,
        json!({"metadata": {"name": "web-0", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}}),
    )
    .await;
    env.create::<ApplicationRestore>(
        &copy,
        json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "ApplicationRestore",
            "metadata": {"name": "again"},
            "spec": {"snapshot": {"id": backed.run.snapshot_id}, "includedResources": ["configmaps"],
                "hooks": [
                    {"selector": {"matchLabels": {"app": "web"}}, "container": "c",
                     "command": ["sh", "-c", format!("echo \"$COFFER_FAKE_POD ran\" >> {}", ran.display())]},
                    {"selector": {"matchLabels": {"app": "web"}}, "command": ["false"], "onError": "Continue"}]}}),
    )
    .await;
    env.wait_for::<ApplicationRestore>(&copy, "again", "restored, waiting for its hooks", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.objects.is_some() && s.hook_waiting_since.is_some())
    })
    .await;
    assert!(!ran.exists(), "the hook waited for the pod to be Ready");
    Api::<Pod>::namespaced(env.client.clone(), &copy)
        .patch_status(
            "web-0",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            ),
        )
        .await
        .unwrap();
    let again = env
        .wait_for::<ApplicationRestore>(&copy, "again", "final and cleaned up", |r| {
            r.status.as_ref().is_some_and(|s| s.run.phase.is_final())
                && !r
                    .finalizers()
                    .iter()
                    .any(|f| f == coffer_node_agent::names::FINALIZER)
        })
        .await;
    assert_eq!(
        std::fs::read_to_string(&ran).unwrap(),
        format!("{copy}/web-0 ran\n")
    );
    let hooks = &again.status.as_ref().unwrap().run.hooks;
    assert_eq!(hooks.len(), 2, "{hooks:#?}");
    assert!(hooks[0].succeeded && !hooks[1].succeeded, "{hooks:#?}");
    assert!(env
        .event_notes(&copy, "HookFailed")
        .await
        .iter()
        .any(|n| n.contains("false")));
    assert_eq!(again.status.as_ref().unwrap().run.phase, Phase::Completed);
    assert_eq!(result_of(&again, "ConfigMap", "cfg").0, "Existing");
    let results = &again
        .status
        .as_ref()
        .unwrap()
        .objects
        .as_ref()
        .unwrap()
        .results;
    assert!(
        results.iter().all(|o| o.kind == "ConfigMap"),
        "{results:#?}"
    );
    assert_eq!(
        cms.get("cfg").await.unwrap().data.unwrap()["mode"],
        "maintenance"
    );
    let update = application_restore(
        &env,
        &copy,
        "update",
        json!({"snapshot": {"id": backed.run.snapshot_id}, "includedResources": ["configmaps"],
               "existingResourcePolicy": "Update"}),
    )
    .await;
    assert_eq!(result_of(&update, "ConfigMap", "cfg").0, "Updated");
    assert_eq!(cms.get("cfg").await.unwrap().data.unwrap()["mode"], "live");
    // What ran in the namespace is gone.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &copy);
    assert!(pods.get_opt("coffer-restore-shop").await.unwrap().is_none());
}

/// A BackupSchedule of application backups makes one ApplicationBackup per
/// time, and its retention keeps or forgets each one whole: with keepLast
/// 1, after two times the first one's objects' snapshot and its claim's
/// data snapshot are both gone, the second's both stay, and an application
/// backup made by hand (not the schedule's) is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_of_application_backups_forgets_each_one_whole() {
    use coffer_node_agent::crd::BackupSchedule;
    use coffer_node_agent::names::SCHEDULE_LABEL;
    use kube::api::ListParams;
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("sched").await;
    env.allow_host_paths(&ns).await;
    env.allow_applications(&ns).await;
    let repo_dir = env.repository(&ns, "default", PASSWORD).await;
    let orders = env.dir.path().join("csi/source/sched-orders");
    fill(&orders, 31, 3);
    crate::sim::csi_pvc(&env, &ns, "orders", "Filesystem", &orders, json!({})).await;
    env.create::<ConfigMap>(
        &ns,
        json!({"metadata": {"name": "cfg"}, "data": {"a": "b"}}),
    )
    .await;
    capturing_account(&env, &ns, true).await;
    let _c = Controller::start(&env, "a", &[]);
    let by_hand = application_backup(&env, &ns, "by-hand").await;
    let by_hand = by_hand.status.unwrap();

    env.create::<BackupSchedule>(
        &ns,
        json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "nightly"},
            "spec": {"schedule": "@daily", "application": {}, "retention": {"keepLast": 1},
                     "successfulRunsHistoryLimit": 1}}),
    )
    .await;
    let list = || async {
        let mut runs = Api::<ApplicationBackup>::namespaced(env.client.clone(), &ns)
            .list(&ListParams::default().labels(SCHEDULE_LABEL))
            .await
            .unwrap()
            .items;
        runs.sort_by_key(|r| r.name_any());
        runs
    };
    let mut runs = Vec::new();
    for i in ["1", "2"] {
        env.annotate_object::<BackupSchedule>(&ns, "nightly", "backup.coffer.dev/backup-now", i)
            .await;
        env.wait_for::<BackupSchedule>(&ns, "nightly", "run and retained", |b| {
            b.status.as_ref().is_some_and(|s| {
                s.last_trigger.as_deref() == Some(i)
                    && s.active.is_empty()
                    && s.last_retention.as_ref().map(|r| &r.after) == s.last_schedule_time.as_ref()
            })
        })
        .await;
        runs.push(list().await.pop().unwrap());
    }
    // Past the history limit (1), the first ApplicationBackup went, and
    // its VolumeBackup with it; its snapshots went by retention.
    let kept = list().await;
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(kept[0].name_any(), runs[1].name_any());
    let first_volume = runs[0].status.as_ref().unwrap().volumes.as_ref().unwrap()[0]
        .volume_backup
        .clone();
    env.wait_gone::<coffer_node_agent::crd::VolumeBackup>(&ns, &first_volume)
        .await;
    // Each run's snapshots: its objects' and its claim's data.
    let snapshots = |st: &coffer_node_agent::crd::ApplicationBackupStatus| {
        let mut ids = vec![st.run.snapshot_id.clone().unwrap()];
        for v in st.volumes.iter().flatten() {
            ids.push(v.snapshot_id.clone().unwrap());
        }
        assert_eq!(ids.len(), 2, "{st:#?}");
        ids
    };
    let mut expected: Vec<String> = snapshots(&by_hand);
    let old = runs[0].status.clone().unwrap();
    let new = runs[1].status.clone().unwrap();
    for st in [&old, &new] {
        assert!(
            matches!(st.run.phase, Phase::Completed | Phase::PartiallyFailed),
            "{st:#?}"
        );
    }
    expected.extend(snapshots(&new));
    expected.sort();
    let left = snapshot_ids(&repo_dir, PASSWORD).await;
    assert_eq!(left, expected, "the first scheduled backup forgotten whole");
    for id in snapshots(&old) {
        assert!(!left.contains(&id), "{id} of the forgotten backup is left");
    }
    let bs = Api::<BackupSchedule>::namespaced(env.client.clone(), &ns)
        .get_status("nightly")
        .await
        .unwrap();
    let ret = bs.status.unwrap().last_retention.unwrap();
    assert_eq!((ret.kept, ret.removed), (2, 2), "{ret:#?}");
    assert!(ret.error.is_none(), "{ret:#?}");
    // What is kept restores: the claim's data, byte for byte.
    let data = new.volumes.as_ref().unwrap()[0]
        .snapshot_id
        .clone()
        .unwrap();
    assert_same_tree(&orders, &restore(&repo_dir, &data, env.dir.path()).await);
}

/// `kubectl delete namespace` by mistake: the namespace and everything in
/// it go (the backup's own objects with it). Made again under the same
/// name with only its opt-ins, a repository and a restore account, it gets
/// its application back from the bucket: every object equal to the
/// original but for the old cluster's fields, the claim bound with its
/// data byte for byte before the Deployment that mounts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_comes_back_under_its_own_name() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("oops").await;
    env.allow_host_paths(&ns).await;
    env.allow_applications(&ns).await;
    let repo_dir = env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join("csi/source/oops-orders");
    fill(&data, 51, 4);
    crate::sim::csi_pvc(
        &env,
        &ns,
        "orders",
        "Filesystem",
        &data,
        json!({"app": "shop"}),
    )
    .await;
    let cm: ConfigMap = env
        .create(
            &ns,
            json!({"metadata": {"name": "cfg"}, "data": {"mode": "live"}}),
        )
        .await;
    env.secret(&ns, "db-credentials", "password", "hunter2")
        .await;
    let deploy: Deployment = env
        .create(
            &ns,
            json!({"metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}],
                                 "volumes": [{"name": "orders", "persistentVolumeClaim": {"claimName": "orders"}}]}}}}),
        )
        .await;
    let svc: Service = env
        .create(&ns, json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}], "clusterIP": "10.0.0.7"}}))
        .await;
    account_with(
        &env,
        &ns,
        "coffer-application",
        json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}]),
    )
    .await;
    let _c = Controller::start(&env, "a", &[]);
    let backed = application_backup(&env, &ns, "shop").await.status.unwrap();
    assert_eq!(backed.run.phase, Phase::Completed, "{backed:#?}");

    env.delete_namespace(&ns).await;
    assert!(Api::<ConfigMap>::namespaced(env.client.clone(), &ns)
        .get_opt("cfg")
        .await
        .unwrap()
        .is_none());

    // The same name again: its admin's opt-ins, the repository's password,
    // an account that may create what `edit` may (no RBAC: the opt-in
    // bindings are made again by the admin, so RBAC objects are left out)
    // and read the BackupRepository it restores from, which is there.
    env.recreate_namespace(&ns).await;
    env.allow_host_paths(&ns).await;
    env.allow_applications(&ns).await;
    env.secret(&ns, "again-password", "password", PASSWORD)
        .await;
    env.repository_at(&ns, "default", &repo_dir, "again-password")
        .await;
    account_with(
        &env,
        &ns,
        "coffer-restore",
        json!([{"apiGroups": ["", "apps"], "resources": ["*"], "verbs": ["*"]},
               {"apiGroups": ["coffer.dev"], "resources": ["backuprepositories"], "verbs": ["get"]}]),
    )
    .await;
    let r = application_restore(
        &env,
        &ns,
        "back",
        json!({"snapshot": {"cluster": "test-cluster", "namespace": ns},
               "excludedResources": ["roles.rbac.authorization.k8s.io", "rolebindings.rbac.authorization.k8s.io"]}),
    )
    .await;
    let st = r.status.clone().unwrap();
    assert_eq!(st.run.phase, Phase::Completed, "{st:#?}");
    assert_eq!(st.run.snapshot_id, backed.run.snapshot_id);
    assert_eq!(st.source_namespace.as_deref(), Some(ns.as_str()));
    for (kind, name) in [
        ("ConfigMap", "cfg"),
        ("Secret", "db-credentials"),
        ("Deployment.apps", "web"),
        ("Service", "web"),
        ("ServiceAccount", "coffer-application"),
        ("PersistentVolumeClaim", "orders"),
    ] {
        assert_eq!(result_of(&r, kind, name).0, "Created", "{kind} {name}");
    }
    // Not creatable by this account, but there: existing, not failed.
    assert_eq!(
        result_of(&r, "BackupRepository.coffer.dev", "default").0,
        "Existing"
    );
    let got: ConfigMap = Api::namespaced(env.client.clone(), &ns)
        .get("cfg")
        .await
        .unwrap();
    assert_eq!(got.data, cm.data);
    assert_ne!(got.metadata.uid, cm.metadata.uid);
    let secret: k8s_openapi::api::core::v1::Secret = Api::namespaced(env.client.clone(), &ns)
        .get("db-credentials")
        .await
        .unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"hunter2");
    let web: Deployment = Api::namespaced(env.client.clone(), &ns)
        .get("web")
        .await
        .unwrap();
    assert_eq!(web.spec, deploy.spec);
    assert_eq!(web.metadata.labels, deploy.metadata.labels);
    let got: Service = Api::namespaced(env.client.clone(), &ns)
        .get("web")
        .await
        .unwrap();
    assert_eq!(got.spec.as_ref().unwrap().ports, svc.spec.unwrap().ports);
    assert_ne!(got.spec.unwrap().cluster_ip.as_deref(), Some("10.0.0.7"));
    let (pvc, path) = crate::pvc_restores::restored_pvc(&env, &ns, "orders").await;
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));
    assert_eq!(pvc.metadata.labels.unwrap()["app"], "shop");
    assert_same_tree(&data, &path);
    // The status names the claim filled, its snapshot and its bytes.
    let size: u64 = walkdir::WalkDir::new(&data)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(st.volumes.len(), 1, "{:#?}", st.volumes);
    assert_eq!(st.volumes[0].pvc, "orders");
    assert_eq!(st.volumes[0].bytes, Some(size));
    let order: Vec<String> = st
        .objects
        .as_ref()
        .unwrap()
        .results
        .iter()
        .map(|o| format!("{} {}", o.kind, o.name))
        .collect();
    let at = |s: &str| order.iter().position(|o| o == s).unwrap();
    assert!(
        at("PersistentVolumeClaim orders") < at("Deployment.apps web"),
        "{order:?}"
    );

    // What `coffer k8s manifests` prints for the snapshot is what the
    // controller restored: the same objects in the same order (but the
    // RBAC objects this restore left out), and each one's fields are in the
    // live object (where the cluster added its own, and a claim its data
    // source).
    let repo = open_repo(&repo_dir, PASSWORD).await;
    let index = repo.load_index().await.unwrap();
    let (_, snap) = repo
        .find_snapshot(backed.run.snapshot_id.as_deref().unwrap())
        .await
        .unwrap();
    let app = coffer_application::read::read(&repo, &index, &snap, "backup")
        .await
        .unwrap();
    let opts = CleanOptions {
        namespace: ns.clone(),
        from_namespace: app.namespace.clone(),
        ..Default::default()
    };
    let printed: Vec<_> = coffer_application::manifests(app.objects, &opts)
        .objects
        .into_iter()
        .filter(|(p, _)| p.group != "rbac.authorization.k8s.io")
        .collect();
    let kind = |p: &ObjectPath| match p.group.as_str() {
        "" => p.kind.clone(),
        g => format!("{}.{g}", p.kind),
    };
    let label = |p: &ObjectPath| format!("{} {}", kind(p), p.name);
    let restored: Vec<String> = st
        .objects
        .as_ref()
        .unwrap()
        .results
        .iter()
        .filter(|o| o.result == "Created" || o.result == "Existing")
        .map(|o| format!("{} {}", o.kind, o.name))
        .collect();
    assert_eq!(
        printed.iter().map(|(p, _)| label(p)).collect::<Vec<_>>(),
        restored
    );
    for (p, want) in &printed {
        if result_of(&r, &kind(p), &p.name).0 != "Created" {
            // Existing: the object made before the restore, not the backup's.
            continue;
        }
        let gvk = kube::api::GroupVersionKind::gvk(&p.group, &p.version, &p.kind);
        let ar = kube::discovery::ApiResource::from_gvk(&gvk);
        let live = Api::<kube::api::DynamicObject>::namespaced_with(env.client.clone(), &ns, &ar)
            .get(&p.name)
            .await
            .unwrap();
        let live = serde_json::to_value(live).unwrap();
        for field in ["spec", "data", "stringData"] {
            assert!(
                holds(&live[field], &want[field]),
                "{}: {field} printed {} but restored {}",
                label(p),
                want[field],
                live[field]
            );
        }
        assert!(
            holds(&live["metadata"]["labels"], &want["metadata"]["labels"]),
            "{}",
            label(p)
        );
    }
}

/// Whether `live` has every field of `want` with its value (arrays element
/// by element): what the API server adds (defaults, assigned fields) is
/// allowed, nothing of `want` may differ or be missing.
fn holds(live: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (live, want) {
        (_, Value::Null) => true,
        (Value::Object(l), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| v.is_null() || l.get(k).is_some_and(|lv| holds(lv, v))),
        (Value::Array(l), Value::Array(w)) => {
            l.len() == w.len() && l.iter().zip(w).all(|(a, b)| holds(a, b))
        }
        _ => live == want,
    }
}

/// Two application backups whose claims' run names meet (backup `a` of
/// claim `b-c`, backup `a-b` of claim `c`: both `a-b-c`): the second never
/// takes the first's run for its own; it makes its own under another name,
/// and each backup's snapshot of each claim holds that claim's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_whose_run_names_meet_never_share_a_run() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("meet").await;
    env.allow_host_paths(&ns).await;
    env.allow_applications(&ns).await;
    let repo_dir = env.repository(&ns, "default", PASSWORD).await;
    let mut sources = Vec::new();
    for (claim, seed) in [("b-c", 61), ("c", 62)] {
        let dir = env.dir.path().join(format!("csi/source/meet-{claim}"));
        fill(&dir, seed, 2);
        crate::sim::csi_pvc(&env, &ns, claim, "Filesystem", &dir, json!({})).await;
        sources.push((claim, dir));
    }
    capturing_account(&env, &ns, true).await;
    let _c = Controller::start(&env, "a", &[]);
    for backup in ["a", "a-b"] {
        let st = application_backup(&env, &ns, backup).await.status.unwrap();
        assert!(
            matches!(st.run.phase, Phase::Completed | Phase::PartiallyFailed),
            "{st:#?}"
        );
        let volumes = st.volumes.unwrap();
        assert_eq!(volumes.len(), 2, "{volumes:#?}");
        for v in &volumes {
            let vb =
                Api::<coffer_node_agent::crd::VolumeBackup>::namespaced(env.client.clone(), &ns)
                    .get(&v.volume_backup)
                    .await
                    .unwrap();
            assert_eq!(vb.owner_references()[0].name, backup, "{v:#?}");
            assert_eq!(vb.spec.pvc.as_deref(), Some(v.pvc.as_str()));
            let (_, dir) = sources.iter().find(|(c, _)| *c == v.pvc).unwrap();
            let id = v.snapshot_id.as_deref().unwrap();
            assert_same_tree(dir, &restore(&repo_dir, id, env.dir.path()).await);
        }
    }
}

/// A tenant's snapshot is hostile. One crafted to reach past its namespace
/// restores only into the restore's own namespace, even with an account
/// that could do more: an object that names another namespace is created
/// in this one (the other's object of that name is untouched); a
/// cluster-scoped kind among its objects is skipped, not created; a claim
/// whose spec is not an object fails naming itself; a RestoreSource of the
/// name the restore needs that is not the restore's own is never used. The
/// rest is restored and the restore is PartiallyFailed, naming each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_application_snapshot_restores_only_into_its_namespace() {
    use coffer_engine::backup::{backup, BackupOptions};
    use coffer_engine::format::snapshot::KubernetesOrigin;
    use coffer_node_agent::crd::RestoreSource;
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace("victim").await;
    let other = env.namespace("bystander").await;
    env.allow_host_paths(&ns).await;
    env.allow_applications(&ns).await;
    env.create::<ConfigMap>(
        &other,
        json!({"metadata": {"name": "cfg"}, "data": {"v": "mine"}}),
    )
    .await;
    let repo_dir = env.repository(&ns, "default", PASSWORD).await;
    let store =
        coffer_engine::storage::open_location(&repo_dir.display().to_string(), true).unwrap();
    let repo = std::sync::Arc::new(
        coffer_engine::Repository::init(store, PASSWORD.as_bytes(), Default::default())
            .await
            .unwrap(),
    );
    let backed_up = |dir: std::path::PathBuf| {
        let repo = repo.clone();
        let other = other.clone();
        async move {
            let mut o = BackupOptions::new([&dir]);
            o.record_path = Some("/".into());
            o.origin = Some(KubernetesOrigin {
                cluster: Some("test-cluster".into()),
                namespace: Some(other),
                ..Default::default()
            });
            backup(repo, o).await.unwrap().snapshot_id.to_hex()
        }
    };
    let data = env.dir.path().join("hostile-data");
    fill(&data, 71, 1);
    let data_id = backed_up(data).await;
    let crafted = env.dir.path().join("hostile-app");
    let put = |path: &str, v: serde_json::Value| {
        let p = crafted.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    put(
        "application.json",
        json!({"namespace": other, "volumes": [{"pvc": "taken", "snapshot": data_id},
                                               {"pvc": "broken", "snapshot": data_id}]}),
    );
    put(
        "objects/core/v1/ConfigMap/cfg.json",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "cfg", "namespace": other}, "data": {"v": "attacker"}}),
    );
    put(
        "objects/rbac.authorization.k8s.io/v1/ClusterRoleBinding/own.json",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "own"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": [{"kind": "ServiceAccount", "name": "coffer-restore", "namespace": ns}]}),
    );
    put(
        "objects/rbac.authorization.k8s.io/v1/RoleBinding/backdoor.json",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "backdoor"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
               "subjects": [{"kind": "User", "name": "mallory"}]}),
    );
    put(
        "objects/core/v1/PersistentVolumeClaim/broken.json",
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "broken"}, "spec": "not an object"}),
    );
    put(
        "objects/core/v1/PersistentVolumeClaim/taken.json",
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "taken"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    );
    let id = backed_up(crafted).await;
    // The name the restore's RestoreSource for claim `taken` would have,
    // made first by someone else, naming other data.
    let squatted = coffer_node_agent::names::object_name(&["coffer", "evil", "taken"]);
    env.create::<RestoreSource>(
        &ns,
        json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "RestoreSource",
               "metadata": {"name": squatted},
               "spec": {"snapshot": {"id": "f".repeat(64)}, "repository": "default"}}),
    )
    .await;
    // An account that may do anything in its namespace, and even create
    // ClusterRoleBindings: coffer itself must refuse what is not the
    // namespace's.
    account_with(
        &env,
        &ns,
        "coffer-restore",
        json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
    )
    .await;
    env.create_cluster::<k8s_openapi::api::rbac::v1::ClusterRole>(json!({
        "metadata": {"name": format!("{ns}-crb")},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterrolebindings"], "verbs": ["*"]}]}))
    .await;
    env.create_cluster::<ClusterRoleBinding>(json!({
        "metadata": {"name": format!("{ns}-crb")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{ns}-crb")},
        "subjects": [{"kind": "ServiceAccount", "name": "coffer-restore", "namespace": ns}]}))
    .await;
    let _c = Controller::start(&env, "a", &[]);
    let r = application_restore(&env, &ns, "evil", json!({"snapshot": {"id": id}})).await;
    let st = r.status.clone().unwrap();
    assert_eq!(st.run.phase, Phase::PartiallyFailed, "{st:#?}");
    // Into this namespace only; the other's object is untouched.
    assert_eq!(result_of(&r, "ConfigMap", "cfg").0, "Created");
    let here: ConfigMap = Api::namespaced(env.client.clone(), &ns)
        .get("cfg")
        .await
        .unwrap();
    assert_eq!(here.data.unwrap()["v"], "attacker");
    let theirs: ConfigMap = Api::namespaced(env.client.clone(), &other)
        .get("cfg")
        .await
        .unwrap();
    assert_eq!(theirs.data.unwrap()["v"], "mine");
    // No cluster-wide object.
    let (result, why) = result_of(&r, "ClusterRoleBinding.rbac.authorization.k8s.io", "own");
    assert_eq!(result, "Skipped", "{why}");
    assert!(why.contains("cluster-scoped"), "{why}");
    assert!(Api::<ClusterRoleBinding>::all(env.client.clone())
        .get_opt("own")
        .await
        .unwrap()
        .is_none());
    // A RoleBinding the account may create is, but never silently when it
    // reaches outside the namespace.
    let (result, why) = result_of(&r, "RoleBinding.rbac.authorization.k8s.io", "backdoor");
    assert_eq!(result, "Created");
    assert!(why.contains("subjects outside it: User mallory"), "{why}");
    // The broken claim fails naming itself; the squatted source is not
    // used, and stays as it was.
    let (result, why) = result_of(&r, "PersistentVolumeClaim", "broken");
    assert_eq!(result, "Failed");
    assert!(why.contains("not an object"), "{why}");
    let (result, why) = result_of(&r, "PersistentVolumeClaim", "taken");
    assert_eq!(result, "Failed");
    assert!(
        why.contains(&format!(
            "RestoreSource {squatted} exists and is not this restore's"
        )),
        "{why}"
    );
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(env.client.clone(), &ns);
    for claim in ["broken", "taken"] {
        assert!(claims.get_opt(claim).await.unwrap().is_none(), "{claim}");
    }
    let left = Api::<RestoreSource>::namespaced(env.client.clone(), &ns)
        .get(&squatted)
        .await
        .unwrap();
    assert_eq!(
        left.spec.snapshot.id.as_deref(),
        Some("f".repeat(64).as_str())
    );
    let message = st.run.message.unwrap_or_default();
    assert!(
        message.contains("broken") && message.contains("taken"),
        "{message}"
    );
}
