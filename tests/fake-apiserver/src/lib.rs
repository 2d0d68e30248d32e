//! A stateful fake Kubernetes API server for tests: plain HTTP on a local port, in-memory
//! state, enough of the API for kube-rs clients, `kube::runtime::watcher` and `kubectl`.
//!
//! ```
//! use coffer_fake_apiserver::FakeServer;
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = FakeServer::start("127.0.0.1:0".parse()?).await?;
//! let client = kube::Client::try_from(kube::Config::new(server.url.parse()?))?;
//! let cms: Api<ConfigMap> = Api::namespaced(client, "default");
//! let mut cm = ConfigMap::default();
//! cm.metadata.generate_name = Some("settings-".into());
//! let created = cms.create(&PostParams::default(), &cm).await?;
//! assert!(created.metadata.name.is_some_and(|n| n.starts_with("settings-")));
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Faithful to Kubernetes
//!
//! - Paths: `/api/v1/...` and `/apis/{group}/{version}/...`, namespaced and cluster-scoped,
//!   collections across all namespaces, and `/status` subresources.
//! - Discovery for `kubectl`: `/version`, `/api`, `/apis`, `/apis/{group}`, the resource lists,
//!   `/healthz`, `/readyz`, `/livez`. Only the legacy JSON forms are served; clients that ask for
//!   aggregated discovery fall back to them, as they do with older servers.
//! - One global resourceVersion counter; a write that changes nothing keeps the old version and
//!   notifies nobody.
//! - Create (with `generateName` and `dryRun=All`), get, list, replace, delete, deletecollection;
//!   errors as `v1` Status objects with Kubernetes' codes, reasons and messages.
//! - Optimistic concurrency: a write that carries a stale resourceVersion gets 409 Conflict.
//! - The status subresource: the main endpoint keeps the stored status, `/status` changes only
//!   the status. `metadata.generation` grows when anything outside metadata and status changes.
//! - Watches: replay from a resourceVersion out of a bounded change log (410 Expired when it
//!   is too old, or after [`FakeServer::compact`]), `sendInitialEvents` with the
//!   initial-events-end bookmark, `timeoutSeconds`, selectors (an object leaving the selection
//!   is a DELETED to that watcher). Slow watchers never block writers: they get 410 instead.
//! - RBAC for service accounts: a bearer token that is a service account's user name,
//!   `system:serviceaccount:{namespace}:{name}` ([`service_account_kubeconfig_yaml`]), is
//!   allowed only what the Roles and ClusterRoles bound to it allow (API group, resource and
//!   subresource, verb, resource names), and gets 403 Forbidden, worded as Kubernetes words
//!   it, otherwise; 401 once that ServiceAccount is deleted. A pod that names a
//!   `serviceAccountName` which does not exist is refused, as the ServiceAccount admission
//!   plugin refuses it.
//! - Pod Security admission: a pod created in a namespace labelled
//!   `pod-security.kubernetes.io/enforce=baseline` or `=restricted` (an unknown value counts as
//!   `restricted`) must pass that level's checks of the Pod Security Standards, or it gets
//!   403 Forbidden worded as Kubernetes words it:
//!   `pods "x" is forbidden: violates PodSecurity "restricted:latest": runAsUser=0 (...), ...`.
//!   Dry-run creations are checked too.
//! - Finalizers (deletion marks the object until the last finalizer is removed), background
//!   garbage collection through `ownerReferences`, namespace deletion taking its contents
//!   (the namespace stays `Terminating`, refusing new content, until the last of them is gone).
//! - CustomResourceDefinitions: creating one serves its versions (no conversion: every version
//!   sees the same stored object) and marks it Established; deleting one drops its objects.
//!
//! # Simplified
//!
//! - No authentication, validation against schemas, defaulting or field pruning, and no
//!   admission beyond the ServiceAccount and Pod Security checks above. Pod Security enforces
//!   on pod creation only, always at version `latest` (the `-version` labels, `audit` and `warn`
//!   are ignored), and without the AppArmor, Windows `hostProcess` and probe `host` checks.
//!   Any other token acts as a cluster admin (the exec subresource is not authorized at all).
//!   Any JSON object is accepted as long as it has a name, except where a test forbids
//!   creations ([`FakeServer::forbid_creates`]), as an admission policy would.
//! - Created objects keep the status they were given, also for resources with a status
//!   subresource (Kubernetes drops it there): tests use it to set up running pods quickly.
//! - Nothing runs: no scheduler, no kubelet, no controllers. Pods get no status, and a deleted
//!   pod goes at once instead of waiting for its grace period. The four standard namespaces
//!   exist from the start, and objects may be created in namespaces that do not exist.
//! - Strategic merge patches and server-side apply are applied as JSON merge patches: lists
//!   are replaced rather than merged by key, and no managed fields or field ownership are
//!   tracked (`fieldManager` and `force` are ignored).
//! - `limit` and `continue` are ignored: a list returns everything. List `resourceVersion`
//!   parameters are ignored too; lists always read the current state.
//! - Field selectors accept any dotted path on every resource.
//! - `core/v1` and `events.k8s.io/v1` Events are stored separately.
//! - Deletion options (propagation policy, preconditions, grace periods) are ignored;
//!   dependents are always deleted in the background, after their owner is gone. The one
//!   exception: pods of a namespace given to [`FakeServer::leave_pod_deletions_unconfirmed`]
//!   stay Terminating until a deletion with grace period 0 (their `deletionTimestamp` is the
//!   time of the first deletion; Kubernetes adds the grace period).
//! - JSON only: a protobuf or CBOR request body gets 415 (typed client-go commands such as
//!   `kubectl create configmap` send protobuf; `kubectl apply`, `create -f`, `patch`, `label`,
//!   `delete`, `get` and `wait` send JSON and work). Requests for metadata-only
//!   (`PartialObjectMetadata`) or Table responses get the full objects, which kube-rs and
//!   `kubectl` accept.
//! - OpenAPI: `/openapi/v2` is 404, and `/openapi/v3` serves skeletal documents (no schemas)
//!   that only tell `kubectl` that PATCH takes `fieldValidation`, so that it leaves validation
//!   to the server instead of downloading schemas.
//! - No periodic bookmarks; HTTP/1.1 only.

mod exec;
mod http;
mod patch;
mod podsecurity;
mod rbac;
mod selector;
mod store;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running fake API server. Dropping it stops the server, like [`FakeServer::shutdown`]
/// without waiting.
pub struct FakeServer {
    /// The base URL, like `http://127.0.0.1:41234`.
    pub url: String,
    addr: SocketAddr,
    store: Arc<store::Store>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Binds `addr` (port 0 picks a free port), starts serving on the current Tokio runtime and
    /// returns at once. The cluster starts with the namespaces `default`, `kube-system`,
    /// `kube-public` and `kube-node-lease`.
    pub async fn start(addr: SocketAddr) -> io::Result<FakeServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let store = Arc::new(store::Store::new());
        let (stop, stopped) = watch::channel(false);
        let app = Arc::new(http::App {
            store: Arc::clone(&store),
            shutdown: stopped.clone(),
            addr,
        });
        let router = http::router(app);
        let mut signal = stopped;
        let task = tokio::spawn(async move {
            let stop = async move {
                // An error means the sender is gone, which also means stop.
                let _ = signal.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                eprintln!("fake apiserver on {addr} stopped: {e}");
            }
        });
        Ok(FakeServer {
            url: format!("http://{addr}"),
            addr,
            store,
            stop,
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forgets the change history, like an etcd compaction: a watch that resumes from any
    /// resourceVersion before now gets a 410 Expired error, and `kube::runtime::watcher`
    /// relists.
    pub fn compact(&self) {
        self.store.compact();
    }

    /// Refuses, from now on, every creation of `plural` (a resource's plural name, such as
    /// `pods`) in `namespace` with 403 Forbidden and `why`, as an admission policy (Pod Security,
    /// a quota, a webhook) refuses: `pods "x" is forbidden: {why}`.
    pub fn forbid_creates(&self, plural: &str, namespace: &str, why: &str) {
        self.store.forbid_creates(plural, namespace, why);
    }

    /// Lifts [`FakeServer::forbid_creates`] for `plural` in `namespace`, as a raised quota would.
    pub fn allow_creates(&self, plural: &str, namespace: &str) {
        self.store.allow_creates(plural, namespace);
    }

    /// From now on, a pod in `namespace` deleted with a grace period (any but 0) stays
    /// Terminating, its `deletionTimestamp` set, until it is deleted with grace period 0: as
    /// the pods of a node that is gone, whose kubelet never confirms, stay until a force
    /// deletion (`kubectl delete --force --grace-period=0`).
    pub fn leave_pod_deletions_unconfirmed(&self, namespace: &str) {
        self.store.leave_pod_deletions_unconfirmed(namespace);
    }

    /// How many creations were refused by [`FakeServer::forbid_creates`] so far.
    pub fn refusals(&self) -> usize {
        self.store.refusals()
    }

    /// Stops accepting connections, ends open watches and waits until the server is down.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            // A panic in the server task has nothing left to clean up.
            let _ = task.await;
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Why `pod` (as JSON) may not run at Pod Security level `level`
/// (`privileged`, `baseline`, `restricted`), as this server judges pods it
/// is asked to create: one entry per failed check, in Kubernetes' words.
/// Empty when the pod is admitted.
pub fn pod_security_violations(level: &str, pod: &serde_json::Value) -> Vec<String> {
    podsecurity::violations(podsecurity::Level::parse(level), pod)
}

/// A kubeconfig that points `kubectl` and kube-rs at `url`: one cluster (TLS verification
/// off, which plain HTTP ignores anyway), one user with a dummy token (a cluster admin), one
/// current context with `namespace` as its default namespace. All three are named `fake`.
pub fn kubeconfig_yaml(url: &str, namespace: &str) -> String {
    kubeconfig_with_token(url, namespace, "fake-token")
}

/// As [`kubeconfig_yaml`], for the ServiceAccount `account` in `namespace`: its requests are
/// allowed only what its Roles allow, as a pod running under that account is.
pub fn service_account_kubeconfig_yaml(url: &str, namespace: &str, account: &str) -> String {
    kubeconfig_with_token(
        url,
        namespace,
        &format!("system:serviceaccount:{namespace}:{account}"),
    )
}

fn kubeconfig_with_token(url: &str, namespace: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url:?}
    insecure-skip-tls-verify: true
users:
- name: fake
  user:
    token: {token:?}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: {namespace:?}
current-context: fake
preferences: {{}}
"
    )
}
