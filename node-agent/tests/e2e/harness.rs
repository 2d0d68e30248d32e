//! The end-to-end harness: an API server (the fake one in-process, or a real
//! cluster named by `COFFER_TEST_KUBECONFIG`), the real `coffer-agent`
//! binary talking to it over HTTP, and the test playing the parts no fake
//! runs: the kubelet (directories and mounts under a temporary kubelet root)
//! and the scheduler (`spec.nodeName`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coffer_fake_apiserver::FakeServer;
use coffer_node_agent::crd::{BackupRepository, Phase, VolumeBackup, VolumeRestore};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;

use crate::common;

/// How long any wait may take before the test fails (a bound, not a
/// measurement: nothing asserts on time).
pub const WAIT: Duration = Duration::from_secs(240);

/// The password every test repository uses (each in its own namespace).
pub const PASSWORD: &str = "correct horse battery staple";

/// A namespaced object a test can wait for.
pub trait Watchable:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + 'static
{
}

impl<K> Watchable for K where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static
{
}

/// Where deploy/ runs the agent and the controller (their accounts, and the
/// controller's Lease).
pub const COFFER_NAMESPACE: &str = "coffer-system";

/// The label that sets a namespace's enforced Pod Security level.
pub const POD_SECURITY: &str = "pod-security.kubernetes.io/enforce";

/// A pod spec as a workload in a `restricted` namespace is written: not
/// root, no privilege escalation, no capability, the runtime's seccomp
/// profile (what the spec sets itself is kept).
pub fn as_restricted(spec: &mut serde_json::Value) {
    if spec.get("securityContext").is_none() {
        spec["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"}});
    }
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            if c.get("securityContext").is_none() {
                c["securityContext"] = json!({"allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}});
            }
        }
    }
}

/// Creates what deploy/ creates for RBAC, as the manifests say: the
/// coffer-system namespace, the agent's and the controller's accounts,
/// ClusterRoles and bindings, the Lease Role, and ClusterRole coffer-tenant.
async fn install_deploy_rbac(client: &Client) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let create = |r: Result<serde_json::Value, kube::Error>| match r {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("installing deploy/'s RBAC: {e}"),
    };
    let pp = PostParams::default();
    create(
        Api::<Namespace>::all(client.clone())
            .create(
                &pp,
                &serde_json::from_value(json!({"metadata": {"name": COFFER_NAMESPACE}})).unwrap(),
            )
            .await
            .map(|_| json!({})),
    );
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for file in ["rbac.yaml", "controller.yaml", "tenant.yaml"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            let ns = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or(COFFER_NAMESPACE)
                .to_string();
            let r = match v["kind"].as_str().unwrap_or_default() {
                "ServiceAccount" => Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                    .create(&pp, &serde_json::from_value(v).unwrap())
                    .await
                    .map(|_| json!({})),
                "ClusterRole" => Api::<ClusterRole>::all(client.clone())
                    .create(&pp, &serde_json::from_value(v).unwrap())
                    .await
                    .map(|_| json!({})),
                "ClusterRoleBinding" => Api::<ClusterRoleBinding>::all(client.clone())
                    .create(&pp, &serde_json::from_value(v).unwrap())
                    .await
                    .map(|_| json!({})),
                "Role" => Api::<Role>::namespaced(client.clone(), &ns)
                    .create(&pp, &serde_json::from_value(v).unwrap())
                    .await
                    .map(|_| json!({})),
                "RoleBinding" => Api::<RoleBinding>::namespaced(client.clone(), &ns)
                    .create(&pp, &serde_json::from_value(v).unwrap())
                    .await
                    .map(|_| json!({})),
                _ => continue,
            };
            create(r);
        }
    }
}

/// One test's world.
pub struct Env {
    pub server: Option<FakeServer>,
    pub client: Client,
    pub kubeconfig: PathBuf,
    /// The agent's and the controller's kubeconfigs: on the fake API server
    /// their own ServiceAccounts (coffer-system/coffer-agent and
    /// coffer-controller), allowed only what deploy/ grants them.
    pub agent_kubeconfig: PathBuf,
    pub controller_kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
    /// Namespaces created by this test (deleted at the end on a real cluster).
    namespaces: Vec<String>,
}

impl Env {
    /// A fresh fake API server (or the real cluster) with the CRDs installed.
    pub async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (server, yaml) = match std::env::var("COFFER_TEST_KUBECONFIG") {
            Ok(path) => (None, std::fs::read_to_string(path).unwrap()),
            Err(_) => {
                let s = FakeServer::start("127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
                let yaml = coffer_fake_apiserver::kubeconfig_yaml(&s.url, "default");
                (Some(s), yaml)
            }
        };
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, &yaml).unwrap();
        let kc = Kubeconfig::from_yaml(&yaml).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        let client = Client::try_from(config).unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in [
            BackupRepository::crd(),
            VolumeBackup::crd(),
            VolumeRestore::crd(),
            coffer_node_agent::crd::BackupSchedule::crd(),
            coffer_node_agent::crd::RestoreSource::crd(),
            coffer_node_agent::crd::ApplicationBackup::crd(),
            coffer_node_agent::crd::ApplicationRestore::crd(),
        ] {
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("installing CRD {}: {e}", crd.name_any()),
            }
        }
        // The agent and the controller run as their own accounts, with the
        // RBAC of deploy/ and nothing more: a missing or too wide grant
        // fails the tests.
        let (agent_kubeconfig, controller_kubeconfig) = match &server {
            Some(s) => {
                install_deploy_rbac(&client).await;
                let write = |account: &str| {
                    let path = dir.path().join(format!("kubeconfig-{account}"));
                    let yaml = coffer_fake_apiserver::service_account_kubeconfig_yaml(
                        &s.url,
                        COFFER_NAMESPACE,
                        account,
                    );
                    std::fs::write(&path, yaml).unwrap();
                    path
                };
                (write("coffer-agent"), write("coffer-controller"))
            }
            None => (kubeconfig.clone(), kubeconfig.clone()),
        };
        Env {
            server,
            client,
            kubeconfig,
            agent_kubeconfig,
            controller_kubeconfig,
            dir,
            namespaces: Vec::new(),
        }
    }

    /// A new namespace with a unique name, opted in to coffer (the
    /// RoleBinding of ClusterRole coffer-tenant its admin makes).
    pub async fn namespace(&mut self, prefix: &str) -> String {
        let name = self.namespace_not_opted_in(prefix).await;
        self.opt_in(&name).await;
        name
    }

    /// Namespace `ns` admits pods with hostPath volumes (Pod Security
    /// `privileged`): the workloads of tests that back up a hostPath
    /// volume in place.
    pub async fn allow_host_paths(&self, ns: &str) {
        Api::<Namespace>::all(self.client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {POD_SECURITY: "privileged"}}})),
            )
            .await
            .unwrap();
    }

    /// Namespace `name`'s admin opts it in to coffer.
    pub async fn opt_in(&self, name: &str) {
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), name);
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "coffer", "namespace": name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "coffer-tenant"},
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "coffer-agent", "namespace": COFFER_NAMESPACE},
                        {"kind": "ServiceAccount", "name": "coffer-controller", "namespace": COFFER_NAMESPACE}
                    ]
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }

    /// Namespace `name`'s admin lets the controller run application
    /// backups' and restores' pods there (ClusterRole coffer-applications).
    pub async fn allow_applications(&self, name: &str) {
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), name);
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "coffer-applications", "namespace": name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "coffer-applications"},
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "coffer-controller", "namespace": COFFER_NAMESPACE}
                    ]
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }

    /// A new namespace with a unique name that has not opted in to coffer.
    pub async fn namespace_not_opted_in(&mut self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", short_id());
        self.create_namespace(&name).await;
        self.namespaces.push(name.clone());
        name
    }

    /// Creates namespace `name` (not opted in).
    async fn create_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        // Coffer runs no pod in an application namespace: the strictest
        // level admits everything it does there.
        let labels = json!({POD_SECURITY: "restricted"});
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        )
        .await
        .unwrap();
    }

    /// `kubectl delete namespace NAME` and wait until it is gone (its
    /// contents with it, finalizers removed by whoever holds them).
    pub async fn delete_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.delete(name, &Default::default()).await.unwrap();
        let gone = |o: Option<&Namespace>| o.is_none();
        let waited =
            tokio::time::timeout(WAIT, kube::runtime::wait::await_condition(api, name, gone)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "namespace {name} is still there: {waited:?}"
        );
    }

    /// Namespace `name`, deleted before, made again and opted in.
    pub async fn recreate_namespace(&self, name: &str) {
        self.create_namespace(name).await;
        self.opt_in(name).await;
    }

    /// A client acting as the ServiceAccount `ns/account`, allowed only what
    /// its Roles allow (the fake API server only).
    pub async fn client_as(&self, ns: &str, account: &str) -> Client {
        let url = &self.server.as_ref().expect("a fake API server").url;
        let yaml = coffer_fake_apiserver::service_account_kubeconfig_yaml(url, ns, account);
        let kc = Kubeconfig::from_yaml(&yaml).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    /// Asserts that the mover `name`'s account is gone: its ServiceAccount
    /// in `ns`, its Role and RoleBinding in `writes_ns`.
    pub async fn assert_no_mover_account(&self, ns: &str, writes_ns: &str, name: &str) {
        let sa = Api::<ServiceAccount>::namespaced(self.client.clone(), ns);
        let roles = Api::<Role>::namespaced(self.client.clone(), writes_ns);
        let bindings = Api::<RoleBinding>::namespaced(self.client.clone(), writes_ns);
        assert!(
            sa.get_opt(name).await.unwrap().is_none(),
            "ServiceAccount {ns}/{name} is left"
        );
        assert!(
            roles.get_opt(name).await.unwrap().is_none(),
            "Role {writes_ns}/{name} is left"
        );
        assert!(
            bindings.get_opt(name).await.unwrap().is_none(),
            "RoleBinding {writes_ns}/{name} is left"
        );
    }

    /// A password Secret and a BackupRepository named `name` at a local path
    /// (created on first use), in `ns`. Returns the repository's directory.
    pub async fn repository(&self, ns: &str, name: &str, password: &str) -> PathBuf {
        let path = self.dir.path().join("repos").join(ns).join(name);
        // As an administrator makes it on the share: mover pods mount it.
        std::fs::create_dir_all(&path).unwrap();
        self.secret(ns, &format!("{name}-password"), "password", password)
            .await;
        self.repository_at(ns, name, &path, &format!("{name}-password"))
            .await;
        path
    }

    /// A BackupRepository at `path` whose password is in Secret `secret`.
    pub async fn repository_at(&self, ns: &str, name: &str, path: &Path, secret: &str) {
        let api: Api<BackupRepository> = Api::namespaced(self.client.clone(), ns);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "coffer.dev/v1alpha1",
                "kind": "BackupRepository",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "url": format!("file://{}", path.display()),
                    "passwordSecretRef": {"name": secret, "key": "password"},
                    "init": true
                }
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    }

    /// Namespace `ns`'s owner lets VolumeRestores of namespace `from` use
    /// its BackupRepository `name` (`spec.allowedSourceNamespaces`).
    pub async fn allow_restores_from(&self, ns: &str, name: &str, from: &str) {
        let api: Api<BackupRepository> = Api::namespaced(self.client.clone(), ns);
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"allowedSourceNamespaces": [from]}})),
        )
        .await
        .unwrap();
    }

    pub async fn secret(&self, ns: &str, name: &str, key: &str, value: &str) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                key.to_string(),
                k8s_openapi::ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        api.create(&PostParams::default(), &secret).await.unwrap();
    }

    /// Creates a pod from `spec` (volumes and containers) scheduled on
    /// `node`, Pending (the test, as the kubelet, mounts its volumes and then
    /// marks it Running), with `annotations`; returns it with its UID.
    pub async fn pod(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        spec: serde_json::Value,
        annotations: &[(&str, &str)],
    ) -> Pod {
        let ann: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut spec = spec;
        spec["nodeName"] = json!(node);
        as_restricted(&mut spec);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "annotations": ann},
                "spec": spec,
                "status": {"phase": "Pending"}
            }))
            .unwrap(),
        )
        .await
        .unwrap()
    }

    pub async fn annotate(&self, ns: &str, pod: &str, key: &str, value: &str) {
        self.annotate_object::<Pod>(ns, pod, key, value).await
    }

    /// The notes of the `events.k8s.io` Events of namespace `ns` with `reason`.
    pub async fn event_notes(&self, ns: &str, reason: &str) -> Vec<String> {
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(self.client.clone(), ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .collect()
    }

    /// Sets annotation `key` of any namespaced object.
    pub async fn annotate_object<K>(&self, ns: &str, name: &str, key: &str, value: &str)
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .unwrap();
    }

    pub async fn delete_pod(&self, ns: &str, pod: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        api.delete(pod, &DeleteParams::default()).await.unwrap();
    }

    pub async fn create<K>(&self, ns: &str, obj: serde_json::Value) -> K
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let mut obj = obj;
        if K::kind(&()) == "Pod" {
            as_restricted(&mut obj["spec"]);
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(obj).unwrap(),
        )
        .await
        .unwrap()
    }

    /// Creates a cluster-scoped object.
    pub async fn create_cluster<K>(&self, obj: serde_json::Value) -> K
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        Api::<K>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(obj).unwrap(),
            )
            .await
            .unwrap()
    }

    /// Waits until `name` satisfies `cond`; returns it.
    pub async fn wait_for<K: Watchable>(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        cond: impl Fn(&K) -> bool,
    ) -> K {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher::watcher(api, cfg).boxed();
        let mut last = None;
        let found = tokio::time::timeout(WAIT, async {
            while let Some(ev) = stream.next().await {
                if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                    if cond(&o) {
                        return Some(o);
                    }
                    last = Some(o);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(o)) => o,
            _ => panic!("{ns}/{name} never became {what}; last seen: {last:#?}"),
        }
    }

    /// Waits until pod `name` is Running (a held mover, in the sim).
    pub async fn wait_running(&self, ns: &str, name: &str) {
        self.wait_for::<Pod>(ns, name, "running", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    }

    /// Waits until `name` does not exist.
    pub async fn wait_gone<K: Watchable>(&self, ns: &str, name: &str) {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let gone = |o: Option<&K>| o.is_none();
        let waited =
            tokio::time::timeout(WAIT, kube::runtime::wait::await_condition(api, name, gone)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "{} {ns}/{name} is still there: {waited:?}",
            K::kind(&())
        );
    }

    /// Waits until the VolumeBackups of pod `pod` satisfy `cond`; returns them.
    pub async fn wait_backups(
        &self,
        ns: &str,
        pod: &str,
        what: &str,
        cond: impl Fn(&[VolumeBackup]) -> bool,
    ) -> Vec<VolumeBackup> {
        let api: Api<VolumeBackup> = Api::namespaced(self.client.clone(), ns);
        let cfg = watcher::Config::default().labels(&format!("coffer.dev/pod={pod}"));
        let mut stream = watcher::watcher(api, cfg).boxed();
        let mut all: BTreeMap<String, VolumeBackup> = BTreeMap::new();
        let found = tokio::time::timeout(WAIT, async {
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        all.insert(o.name_any(), o);
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        all.remove(&o.name_any());
                    }
                    _ => continue,
                }
                if cond(&all.values().cloned().collect::<Vec<_>>()) {
                    return true;
                }
            }
            false
        })
        .await;
        if found != Ok(true) {
            panic!("the VolumeBackups of {ns}/{pod} never became {what}; last seen: {all:#?}");
        }
        all.into_values().collect()
    }

    pub async fn list_backups(&self, ns: &str) -> Vec<VolumeBackup> {
        let api: Api<VolumeBackup> = Api::namespaced(self.client.clone(), ns);
        api.list(&ListParams::default()).await.unwrap().items
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.server.is_none() && !self.namespaces.is_empty() {
            // A real cluster: leave nothing behind.
            for ns in &self.namespaces {
                let _ = Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&self.kubeconfig)
                    .args(["delete", "namespace", ns, "--wait=false"])
                    .status();
            }
        }
    }
}

/// Whether a run is over.
pub fn is_final(s: &Option<coffer_node_agent::crd::RunStatus>) -> bool {
    s.as_ref().is_some_and(|s| s.phase.is_final())
}

pub fn phase(s: &Option<coffer_node_agent::crd::RunStatus>) -> Phase {
    s.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// A running `coffer-agent node`, killed on drop (its log is printed when the
/// test fails).
pub struct Agent {
    pub child: Child,
    pub metrics: std::net::SocketAddr,
    pub log: PathBuf,
}

pub struct AgentConfig<'a> {
    pub node_name: &'a str,
    pub node: &'a common::Node,
    pub host_path_allow: &'a [&'a str],
    pub max_concurrent: usize,
    pub threads: usize,
    /// `--limit-read`: slows a backup down without a large volume on disk.
    pub limit_read: Option<&'a str>,
}

impl<'a> AgentConfig<'a> {
    /// Node `node_name` with its kubelet directory under `node`: no hostPath
    /// prefixes, 2 runs at once, 2 threads each.
    pub fn new(node_name: &'a str, node: &'a common::Node) -> Self {
        AgentConfig {
            node_name,
            node,
            host_path_allow: &[],
            max_concurrent: 2,
            threads: 2,
            limit_read: None,
        }
    }

    pub fn limit_read(mut self, rate: &'a str) -> Self {
        self.limit_read = Some(rate);
        self
    }

    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }
}

impl Agent {
    pub fn start(env: &Env, cfg: &AgentConfig) -> Agent {
        // The node is registered, Ready, as its kubelet registers it (the
        // controller ends the runs of a node that does not exist).
        if env.server.is_some() {
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
            let node = serde_json::from_value(json!({
                "metadata": {"name": cfg.node_name},
                "status": {"conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap();
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    match nodes.create(&PostParams::default(), &node).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(e) => panic!("registering node {}: {e}", cfg.node_name),
                    }
                })
            });
        }
        let mut args: Vec<std::ffi::OsString> =
            vec!["node".into(), "--node-name".into(), cfg.node_name.into()];
        args.extend(["--kubelet-root".into(), cfg.node.kubelet().into()]);
        args.extend(["--host-root".into(), cfg.node.host().into()]);
        args.extend([
            "--max-concurrent".into(),
            cfg.max_concurrent.to_string().into(),
        ]);
        args.extend(["--threads-per-run".into(), cfg.threads.to_string().into()]);
        args.extend(["--pod-wait".into(), "1s".into()]);
        for p in cfg.host_path_allow {
            args.extend(["--host-path-allow".into(), (*p).into()]);
        }
        if let Some(rate) = cfg.limit_read {
            args.extend(["--limit-read".into(), rate.into()]);
        }
        let (child, metrics, log) = spawn_agent(env, &format!("agent-{}", cfg.node_name), args);
        Agent {
            child,
            metrics,
            log,
        }
    }

    /// SIGKILL, as a node drain or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GET a path of the metrics server, once it answers.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        get_when_up(self.metrics, path).await
    }
}

/// GET a path of a metrics server, once it answers.
pub async fn get_when_up(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = http_get(addr, path).await {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics server never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- agent log {} ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Starts `coffer-agent ARGS` against `env`'s API server with a free metrics
/// port, the test cluster's name (unless `args` name one), file repositories
/// allowed in the environment's directory, and text logs into
/// `<label>-<id>.log`; returns the process, its metrics address and its log.
fn spawn_agent(
    env: &Env,
    label: &str,
    args: Vec<std::ffi::OsString>,
) -> (Child, std::net::SocketAddr, PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log = env.dir.path().join(format!("{label}-{}.log", short_id()));
    let named = args.iter().any(|a| a == "--cluster-name");
    let kubeconfig = match args.first().and_then(|a| a.to_str()) {
        Some("node") => &env.agent_kubeconfig,
        Some("controller") => &env.controller_kubeconfig,
        _ => &env.kubeconfig,
    };
    let child = Command::new(env!("CARGO_BIN_EXE_coffer-agent"))
        .args(args)
        .args(["--metrics-addr", &port.to_string()])
        .args(if named {
            &[][..]
        } else {
            &["--cluster-name", "test-cluster"][..]
        })
        .args(["--log-format", "text"])
        // The test repositories live in the environment's directory: the
        // administrator allows file repositories there (and nowhere else).
        .arg(format!(
            "--allow-file-repository={}",
            env.dir.path().display()
        ))
        .env("KUBECONFIG", kubeconfig)
        // The cluster names compared every second, not every 5 minutes.
        .env("CLUSTER_NAME_RECHECK", "1s")
        .env(
            "RUST_LOG",
            std::env::var("COFFER_TEST_AGENT_LOG")
                .unwrap_or_else(|_| "info,coffer_node_agent=debug".into()),
        )
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, port, log)
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A running `coffer-agent controller` replica, killed on drop (its log is
/// printed when the test fails).
pub struct Controller {
    pub child: Child,
    pub identity: String,
    pub log: PathBuf,
    pub metrics: std::net::SocketAddr,
}

impl Controller {
    /// Replica `identity`, with a 3 s Lease, and `extra` arguments. Its
    /// mover image is `COFFER_TEST_MOVER_IMAGE` on a real cluster.
    pub fn start(env: &Env, identity: &str, extra: &[&str]) -> Controller {
        let image = match (&env.server, std::env::var("COFFER_TEST_MOVER_IMAGE")) {
            (None, Ok(image)) => image,
            (None, Err(_)) => "registry.example.com/coffer/coffer-agent:0.1.0".into(),
            (Some(_), _) => "coffer/coffer:test".into(),
        };
        let extra: Vec<&str> = ["--mover-image", image.as_str()]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Controller::start_as_deployed(env, identity, &extra)
    }

    /// Replica `identity` as deploy/ runs it: no `--mover-image` unless
    /// `extra` has one (movers then run the image of the pod `identity`).
    pub fn start_as_deployed(env: &Env, identity: &str, extra: &[&str]) -> Controller {
        let args: Vec<std::ffi::OsString> = [
            "controller",
            "--identity",
            identity,
            "--namespace",
            COFFER_NAMESPACE,
        ]
        .iter()
        .chain(&["--lease-duration", "3s"])
        .chain(extra)
        .map(|a| (*a).into())
        .collect();
        let (child, metrics, log) = spawn_agent(env, &format!("controller-{identity}"), args);
        Controller {
            child,
            identity: identity.to_string(),
            log,
            metrics,
        }
    }

    /// SIGKILL, as a node failure or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until GET `path` answers 200 with a body that `ok` accepts,
    /// and returns that body.
    pub async fn http_until(&self, path: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (code, body) = get_when_up(self.metrics, path).await;
            if code == 200 && ok(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "controller {}: GET {path} never showed {what} (last: {code} {body})",
                self.identity
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- controller {} log {} ----\n{}",
                self.identity,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// The ids of every snapshot of the repository at `path`, sorted.
pub async fn snapshot_ids(path: &Path, password: &str) -> Vec<String> {
    let mut ids: Vec<String> = open_repo(path, password)
        .await
        .snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id.to_hex())
        .collect();
    ids.sort();
    ids
}

/// Opens a test repository with the engine.
pub async fn open_repo(path: &Path, password: &str) -> Arc<coffer_engine::Repository> {
    let store = coffer_engine::storage::open_location(&path.display().to_string(), false).unwrap();
    Arc::new(
        coffer_engine::Repository::open(store, password.as_bytes())
            .await
            .unwrap(),
    )
}

/// Restores `snapshot` (or its `subpath`) from the repository at `repo` into a
/// new directory and returns it.
pub async fn restore(repo: &Path, snapshot: &str, dir: &Path) -> PathBuf {
    let r = open_repo(repo, PASSWORD).await;
    let target = dir.join(format!("restore-{}", short_id()));
    let opts = coffer_engine::restore::RestoreOptions::new(snapshot, &target);
    let s = coffer_engine::restore::restore(r.clone(), r.load_index().await.unwrap(), opts)
        .await
        .unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    target
}

/// Asserts that two directory trees hold the same names and the same bytes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let list = |d: &Path| {
        let mut v: Vec<PathBuf> = walkdir(d)
            .into_iter()
            .map(|p| p.strip_prefix(d).unwrap().to_path_buf())
            .collect();
        v.sort();
        v
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(
        la,
        lb,
        "{} and {} list different entries",
        a.display(),
        b.display()
    );
    for rel in la {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let ma = std::fs::symlink_metadata(&pa).unwrap();
        if ma.is_file() {
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "{} differs",
                rel.display()
            );
        }
    }
}

fn walkdir(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walkdir(&p));
        }
    }
    out
}

/// A small tree of files (some incompressible) under `dir`.
pub fn fill(dir: &Path, seed: u64, files: usize) {
    for i in 0..files {
        let data = noise(seed + i as u64, 1000 + (i * 7919) % 50_000);
        common::write(&dir.join(format!("d{}/f{i}.bin", i % 3)), &data);
    }
    common::write(
        &dir.join("README"),
        format!("volume seed {seed}\n").as_bytes(),
    );
}

/// One large incompressible file (`mib` MiB).
pub fn big_file(path: &Path, mib: usize, seed: u64) {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..mib {
        f.write_all(&noise(seed * 1_000_003 + i as u64, 1 << 20))
            .unwrap();
    }
    f.flush().unwrap();
}

/// Incompressible bytes (xorshift), the same for the same seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn short_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{n}", (t ^ std::process::id()) & 0xfffff)
}
