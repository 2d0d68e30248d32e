//! The in-memory state: the resource registry, the objects, the global resourceVersion counter
//! and the bounded log of changes that watches replay.
//!
//! Every write takes one lock, bumps the counter, stores the object and publishes one
//! [`Change`] to the log and to a broadcast channel, all under that lock, so that watchers see
//! changes in resourceVersion order without gaps.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::RngExt;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use crate::podsecurity::{self, Level};
use crate::selector::Filter;

/// How many changes the log keeps; a watch that resumes from before them gets 410 Expired.
const LOG_CAPACITY: usize = 20_000;
/// Room in each watcher's queue; a watcher that falls this far behind gets 410 Expired.
const BROADCAST_CAPACITY: usize = 16_384;

/// Built-in resources: group, version, kind, plural, namespaced, status subresource, short names.
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    bool,
    &'static [&'static str],
);
#[rustfmt::skip]
const BUILTINS: &[Builtin] = &[
    ("", "v1", "Pod", "pods", true, true, &["po"]),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true, true, &["pvc"]),
    ("", "v1", "PersistentVolume", "persistentvolumes", false, true, &["pv"]),
    ("", "v1", "Secret", "secrets", true, false, &[]),
    ("", "v1", "ConfigMap", "configmaps", true, false, &["cm"]),
    ("", "v1", "Event", "events", true, false, &["ev"]),
    ("", "v1", "Namespace", "namespaces", false, true, &["ns"]),
    ("", "v1", "Node", "nodes", false, true, &["no"]),
    ("", "v1", "ServiceAccount", "serviceaccounts", true, false, &["sa"]),
    ("", "v1", "Service", "services", true, false, &["svc"]),
    ("", "v1", "Endpoints", "endpoints", true, false, &["ep"]),
    ("apps", "v1", "DaemonSet", "daemonsets", true, true, &["ds"]),
    ("apps", "v1", "Deployment", "deployments", true, true, &["deploy"]),
    ("apps", "v1", "StatefulSet", "statefulsets", true, true, &["sts"]),
    ("apps", "v1", "ReplicaSet", "replicasets", true, true, &["rs"]),
    ("batch", "v1", "Job", "jobs", true, true, &[]),
    ("batch", "v1", "CronJob", "cronjobs", true, true, &["cj"]),
    ("storage.k8s.io", "v1", "CSIDriver", "csidrivers", false, false, &[]),
    ("storage.k8s.io", "v1", "StorageClass", "storageclasses", false, false, &["sc"]),
    ("coordination.k8s.io", "v1", "Lease", "leases", true, false, &[]),
    ("events.k8s.io", "v1", "Event", "events", true, false, &["ev"]),
    ("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, false, &[]),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, false, &[]),
    ("rbac.authorization.k8s.io", "v1", "Role", "roles", true, false, &[]),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, false, &[]),
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false, true, &["crd", "crds"]),
    ("snapshot.storage.k8s.io", "v1", "VolumeSnapshot", "volumesnapshots", true, true, &["vs"]),
    ("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent", "volumesnapshotcontents", false, true, &["vsc", "vscs"]),
    ("snapshot.storage.k8s.io", "v1", "VolumeSnapshotClass", "volumesnapshotclasses", false, false, &["vsclass", "vsclasses"]),
];

/// Namespaces that exist in every new cluster.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

const CRD_GROUP: &str = "apiextensions.k8s.io";
const CRDS: &str = "customresourcedefinitions";

/// One servable resource: a group, version and plural with its kind and scope.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub singular: String,
    pub plural: String,
    pub namespaced: bool,
    /// Whether the resource has a `/status` subresource.
    pub status: bool,
    pub short_names: Vec<String>,
    /// The CustomResourceDefinition that registered it; `None` for built-ins.
    pub crd: Option<String>,
}

impl ResourceType {
    /// `v1` for the core group, `group/version` otherwise.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Objects are stored per group and plural, shared by all versions (no conversion).
    fn storage_key(&self) -> StorageKey {
        (self.group.clone(), self.plural.clone())
    }

    fn is_crd(&self) -> bool {
        self.group == CRD_GROUP && self.plural == CRDS
    }

    /// The resource name as Kubernetes writes it in messages: `pods`, `widgets.example.com`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Sets `kind` and `apiVersion` to this version's.
    pub(crate) fn stamp(&self, obj: &mut Value) {
        if let Value::Object(map) = obj {
            map.insert("kind".into(), Value::String(self.kind.clone()));
            map.insert("apiVersion".into(), Value::String(self.api_version()));
        }
    }
}

/// An error returned to the client as a `v1` Status.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status: name, group and kind (a resource or kind name, as Kubernetes).
    pub details: Option<(String, String, String)>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        ApiError {
            code,
            reason,
            message,
            details: None,
        }
    }

    fn with_details(mut self, name: &str, rt: &ResourceType, kind: &str) -> Self {
        self.details = Some((name.to_string(), rt.group.clone(), kind.to_string()));
        self
    }

    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        let message = format!("{} \"{name}\" not found", rt.qualified());
        Self::new(404, "NotFound", message).with_details(name, rt, &rt.plural)
    }

    /// 404 for a path that names no registered resource.
    pub(crate) fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
    }

    fn already_exists(rt: &ResourceType, name: &str) -> Self {
        let message = format!("{} \"{name}\" already exists", rt.qualified());
        Self::new(409, "AlreadyExists", message).with_details(name, rt, &rt.plural)
    }

    fn conflict(rt: &ResourceType, name: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            rt.qualified()
        );
        Self::new(409, "Conflict", message).with_details(name, rt, &rt.plural)
    }

    /// As Kubernetes words an admission refusal (Pod Security, a quota).
    fn forbidden(rt: &ResourceType, name: &str, why: &str) -> Self {
        let message = format!("{} \"{name}\" is forbidden: {why}", rt.plural);
        Self::new(403, "Forbidden", message).with_details(name, rt, &rt.plural)
    }

    /// As Kubernetes words an authorization refusal: `why` names the user and what it
    /// may not do.
    pub(crate) fn unauthorized(rt: &ResourceType, name: &str, why: &str) -> Self {
        let message = if name.is_empty() {
            format!("{} is forbidden: {why}", rt.qualified())
        } else {
            format!("{} \"{name}\" is forbidden: {why}", rt.qualified())
        };
        Self::new(403, "Forbidden", message).with_details(name, rt, &rt.plural)
    }

    pub(crate) fn invalid(rt: &ResourceType, name: &str, why: &str) -> Self {
        let message = format!("{} \"{name}\" is invalid: {why}", rt.kind);
        Self::new(422, "Invalid", message).with_details(name, rt, &rt.kind)
    }

    /// 401, as for a token that does not authenticate.
    pub(crate) fn unauthenticated() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into())
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    pub(crate) fn method_not_allowed() -> Self {
        let message = "the server does not allow this method on the requested resource".into();
        Self::new(405, "MethodNotAllowed", message)
    }

    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        let message = format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json, application/json-patch+json, application/merge-patch+json, \
             application/strategic-merge-patch+json, application/apply-patch+yaml (got {content_type:?}; \
             this fake API server speaks JSON only)"
        );
        Self::new(415, "UnsupportedMediaType", message)
    }

    pub(crate) fn expired(message: String) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `v1` Status object.
    pub(crate) fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some((name, group, kind)) = &self.details {
            let mut details = json!({"name": name, "kind": kind});
            if !group.is_empty() {
                details["group"] = Value::String(group.clone());
            }
            status["details"] = details;
        }
        status
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One logged change, as watches replay and receive it.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub kind: ChangeKind,
    pub object: Value,
    /// The object before a modification, to tell watchers with selectors when it left them.
    pub old: Option<Value>,
}

/// Which endpoint a write came through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Endpoint {
    /// The object itself: with a status subresource, its status is kept as stored.
    Main,
    /// `/status`: only the status changes.
    Status,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum WatchStart {
    /// ADDED for every current object, then live changes.
    Current,
    /// ADDED for every current object, a BOOKMARK marking their end, then live changes.
    InitialEvents,
    /// Every logged change after this resourceVersion, then live changes.
    After(u64),
}

/// What a new watch sends first, and where it continues.
pub(crate) struct WatchInit {
    /// `(type, object)` pairs to send before live changes.
    pub initial: Vec<(&'static str, Value)>,
    /// The resourceVersion for the initial-events-end bookmark, if one was asked for.
    pub bookmark: Option<u64>,
    /// Live changes at or below this resourceVersion were already covered.
    pub after: u64,
    pub rx: broadcast::Receiver<Arc<Change>>,
}

type StorageKey = (String, String);
type ObjectKey = (String, String);

struct State {
    rv: u64,
    types: Vec<ResourceType>,
    objects: BTreeMap<StorageKey, BTreeMap<ObjectKey, Value>>,
    log: VecDeque<Arc<Change>>,
    /// Watches may resume from this resourceVersion or later.
    oldest_resumable: u64,
    tx: broadcast::Sender<Arc<Change>>,
    /// Creations refused as an admission policy would: (plural, namespace, why).
    forbidden: Vec<(String, String, String)>,
    /// How many creations were refused so.
    refusals: usize,
    /// Namespaces whose pods' graceful deletions no kubelet confirms.
    unconfirmed: Vec<String>,
}

/// The whole cluster state behind one lock.
pub(crate) struct Store {
    state: Mutex<State>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// A cluster with the built-in resources and the four standard namespaces.
    pub(crate) fn new() -> Store {
        let types = BUILTINS
            .iter()
            .map(
                |&(group, version, kind, plural, namespaced, status, short)| ResourceType {
                    group: group.into(),
                    version: version.into(),
                    kind: kind.into(),
                    singular: kind.to_lowercase(),
                    plural: plural.into(),
                    namespaced,
                    status,
                    short_names: short.iter().map(|s| s.to_string()).collect(),
                    crd: None,
                },
            )
            .collect();
        let store = Store {
            state: Mutex::new(State {
                rv: 0,
                types,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                oldest_resumable: 0,
                forbidden: Vec::new(),
                refusals: 0,
                unconfirmed: Vec::new(),
                tx: broadcast::channel(BROADCAST_CAPACITY).0,
            }),
        };
        if let Some(ns_type) = store.resource("", "v1", "namespaces") {
            for ns in INITIAL_NAMESPACES {
                let body = json!({"metadata": {"name": ns}, "status": {"phase": "Active"}});
                // The names are fixed and distinct, so creation cannot fail.
                let _ = store.create(&ns_type, None, body, false);
            }
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps behind: keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The registered resource for a group, version and plural.
    pub(crate) fn resource(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<ResourceType> {
        self.lock()
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// Every registered resource, built-ins first.
    pub(crate) fn types(&self) -> Vec<ResourceType> {
        self.lock().types.clone()
    }

    /// The current resourceVersion.
    pub(crate) fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Drops the change log, like an etcd compaction: watches from older versions get 410.
    pub(crate) fn compact(&self) {
        let mut state = self.lock();
        state.log.clear();
        state.oldest_resumable = state.rv;
    }

    /// From now on, creating `plural` in `namespace` gets 403 Forbidden with `why`.
    pub(crate) fn forbid_creates(&self, plural: &str, namespace: &str, why: &str) {
        self.lock()
            .forbidden
            .push((plural.into(), namespace.into(), why.into()));
    }

    /// Lifts the refusals of [`Store::forbid_creates`] for `plural` in `namespace`.
    pub(crate) fn allow_creates(&self, plural: &str, namespace: &str) {
        self.lock()
            .forbidden
            .retain(|(p, ns, _)| !(p == plural && ns == namespace));
    }

    /// From now on, a pod in `namespace` deleted with a grace period other than 0 stays
    /// Terminating until it is deleted with grace period 0.
    pub(crate) fn leave_pod_deletions_unconfirmed(&self, namespace: &str) {
        self.lock().unconfirmed.push(namespace.into());
    }

    /// How many creations were refused so far.
    pub(crate) fn refusals(&self) -> usize {
        self.lock().refusals
    }

    /// One object, or 404.
    pub(crate) fn get(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let state = self.lock();
        let mut obj = state
            .objects
            .get(&rt.storage_key())
            .and_then(|m| m.get(&(ns.unwrap_or("").to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        rt.stamp(&mut obj);
        Ok(obj)
    }

    /// The matching objects (in one namespace, or all) and the current resourceVersion.
    pub(crate) fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        filter: &Filter,
    ) -> (Vec<Value>, u64) {
        let state = self.lock();
        (state.matching(rt, ns, filter), state.rv)
    }

    /// Stores a new object; `ns` is the namespace from the URL.
    pub(crate) fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let meta = metadata_mut(&mut obj)?;
        if rt.namespaced {
            let body_ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            let ns = match (ns, body_ns) {
                (Some(url), Some(body)) if url != body => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                (Some(url), _) => url.to_string(),
                (None, Some(body)) => body.to_string(),
                (None, None) => return Err(ApiError::bad_request("a namespace is required")),
            };
            meta.insert("namespace".into(), Value::String(ns));
        } else {
            meta.remove("namespace");
        }
        for key in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
        ] {
            meta.remove(key);
        }
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let given = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if given.is_empty() && generate.is_empty() {
            return Err(ApiError::invalid(
                rt,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
        let mut state = self.lock();
        let key = rt.storage_key();
        let ns = namespace(&obj).to_string();
        let exists = |state: &State, name: &str| {
            state
                .objects
                .get(&key)
                .is_some_and(|m| m.contains_key(&(ns.clone(), name.to_string())))
        };
        let mut name = given.clone();
        if given.is_empty() {
            for _ in 0..8 {
                name = format!("{generate}{}", random_suffix());
                if !exists(&state, &name) {
                    break;
                }
            }
        }
        // Admission (a terminating namespace) answers before storage.
        if rt.namespaced && state.terminating(&ns) {
            let why = format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            );
            return Err(ApiError::forbidden(rt, &name, &why));
        }
        if exists(&state, &name) {
            return Err(ApiError::already_exists(rt, &name));
        }
        if let Some((_, _, why)) = state
            .forbidden
            .iter()
            .find(|(plural, in_ns, _)| *plural == rt.plural && *in_ns == ns)
        {
            let refused = ApiError::forbidden(rt, &name, why);
            state.refusals += 1;
            return Err(refused);
        }
        if rt.group.is_empty() && rt.plural == "pods" {
            let level = state.enforced_level(&ns);
            if let Some(why) = podsecurity::refusal(level, &obj) {
                return Err(ApiError::forbidden(rt, &name, &why));
            }
        }
        set_meta(&mut obj, "name", Value::String(name.clone()));
        let crd_types = if rt.is_crd() {
            Some(crd_types(&obj).map_err(|why| ApiError::invalid(rt, &name, &why))?)
        } else {
            None
        };
        let rv = state.rv + 1;
        set_meta(&mut obj, "uid", Value::String(uuid_v4()));
        set_meta(&mut obj, "creationTimestamp", Value::String(now()));
        set_meta(&mut obj, "resourceVersion", Value::String(rv.to_string()));
        set_meta(&mut obj, "generation", json!(1));
        rt.stamp(&mut obj);
        if let Some(types) = &crd_types {
            establish_crd(&mut obj);
            if !dry_run {
                state.register(&name, types.clone());
            }
        }
        if dry_run {
            return Ok(obj);
        }
        state.rv = rv;
        state
            .objects
            .entry(key.clone())
            .or_default()
            .insert((ns, name), obj.clone());
        state.emit(ChangeKind::Added, &key, obj.clone(), None);
        Ok(obj)
    }

    /// Replaces an existing object with what `f` makes of it (an update or a patch).
    ///
    /// `f` sees the stored object and returns the whole proposed object. A proposed
    /// resourceVersion that differs from the stored one is a conflict. Through
    /// [`Endpoint::Main`] the status of a resource with a status subresource is kept; through
    /// [`Endpoint::Status`] only the status changes. The generation grows when anything outside
    /// metadata and status changes. A write that changes nothing stores nothing.
    pub(crate) fn modify(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        endpoint: Endpoint,
        dry_run: bool,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let key = rt.storage_key();
        let obj_key = (ns.unwrap_or("").to_string(), name.to_string());
        let cur = state
            .objects
            .get(&key)
            .and_then(|m| m.get(&obj_key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let mut new = f(&cur)?;
        let meta = metadata_mut(&mut new)?;
        for (field, url) in [("name", Some(name)), ("namespace", ns)] {
            match (meta.get(field).and_then(Value::as_str).filter(|s| !s.is_empty()), url) {
                (Some(body), Some(url)) if body != url => {
                    return Err(ApiError::bad_request(format!(
                        "the {field} of the object ({body}) does not match the {field} on the URL ({url})"
                    )))
                }
                (_, Some(url)) => {
                    meta.insert(field.into(), Value::String(url.to_string()));
                }
                (_, None) => {
                    meta.remove(field);
                }
            }
        }
        let proposed_rv = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !proposed_rv.is_empty()
            && Some(proposed_rv)
                != cur
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        {
            return Err(ApiError::conflict(rt, name));
        }
        match endpoint {
            Endpoint::Main if rt.status => copy_field(&cur, &mut new, "status"),
            Endpoint::Main => {}
            Endpoint::Status => {
                let mut only_status = cur.clone();
                copy_field(&new, &mut only_status, "status");
                new = only_status;
            }
        }
        let cur_meta = cur.get("metadata").cloned().unwrap_or_else(|| json!({}));
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            copy_field(&cur_meta, metadata_mut(&mut new)?, field);
        }
        rt.stamp(&mut new);
        let crd = if rt.is_crd() {
            Some(crd_types(&new).map_err(|why| ApiError::invalid(rt, name, &why))?)
        } else {
            None
        };
        if spec_of(&cur) != spec_of(&new) {
            let generation = cur
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            set_meta(&mut new, "generation", json!(generation + 1));
        }
        let mut stored = cur.clone();
        rt.stamp(&mut stored);
        if new == stored {
            return Ok(stored);
        }
        if dry_run {
            set_meta(
                &mut new,
                "resourceVersion",
                Value::String((state.rv + 1).to_string()),
            );
            return Ok(new);
        }
        if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&new).is_empty() {
            // The last finalizer is gone: the object goes, and watchers see only DELETED.
            if let Some(map) = state.objects.get_mut(&key) {
                map.insert(obj_key.clone(), new.clone());
            }
            return Ok(state.remove_now(&key, &obj_key).unwrap_or(new));
        }
        state.rv += 1;
        set_meta(
            &mut new,
            "resourceVersion",
            Value::String(state.rv.to_string()),
        );
        if let Some(map) = state.objects.get_mut(&key) {
            map.insert(obj_key.clone(), new.clone());
        }
        state.emit(ChangeKind::Modified, &key, new.clone(), Some(cur));
        if let Some(types) = crd {
            state.register(name, types);
        }
        Ok(new)
    }

    /// Deletes an object: at once, or, while it has finalizers, by marking it.
    pub(crate) fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        dry_run: bool,
        force: bool,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let obj_key = (ns.unwrap_or("").to_string(), name.to_string());
        let key = rt.storage_key();
        let cur = state
            .objects
            .get(&key)
            .and_then(|m| m.get(&obj_key))
            .cloned();
        let unconfirmed =
            key.0.is_empty() && key.1 == "pods" && !force && state.unconfirmed.contains(&obj_key.0);
        let mut obj = match cur {
            None => return Err(ApiError::not_found(rt, name)),
            Some(cur) if dry_run => cur,
            Some(_) if unconfirmed => state
                .mark_deleting(&key, &obj_key)
                .ok_or_else(|| ApiError::not_found(rt, name))?,
            Some(_) => state
                .delete_request(&key, &obj_key)
                .ok_or_else(|| ApiError::not_found(rt, name))?,
        };
        rt.stamp(&mut obj);
        Ok(obj)
    }

    /// Starts a watch: what to send first, and a receiver for what follows.
    ///
    /// A start before the oldest logged change is a 410 Expired error.
    pub(crate) fn watch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        filter: &Filter,
        start: WatchStart,
    ) -> Result<WatchInit, ApiError> {
        let state = self.lock();
        let initial = match start {
            WatchStart::Current | WatchStart::InitialEvents => state
                .matching(rt, ns, filter)
                .into_iter()
                .map(|o| ("ADDED", o))
                .collect(),
            WatchStart::After(rv) if rv < state.oldest_resumable => {
                return Err(ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    state.oldest_resumable
                )))
            }
            WatchStart::After(rv) => state
                .log
                .iter()
                .filter(|c| c.rv > rv)
                .filter_map(|c| watch_event(c, rt, ns, filter))
                .collect(),
        };
        Ok(WatchInit {
            initial,
            bookmark: (start == WatchStart::InitialEvents).then_some(state.rv),
            after: state.rv,
            rx: state.tx.subscribe(),
        })
    }
}

/// How a change looks to one watcher: `None` if it should not see it. A modified object that
/// leaves the selection is a DELETED, one that enters it an ADDED, as in Kubernetes.
pub(crate) fn watch_event(
    change: &Change,
    rt: &ResourceType,
    ns: Option<&str>,
    filter: &Filter,
) -> Option<(&'static str, Value)> {
    if change.group != rt.group || change.plural != rt.plural {
        return None;
    }
    if ns.is_some_and(|ns| namespace(&change.object) != ns) {
        return None;
    }
    let now = filter.matches(&change.object);
    let before = change.old.as_ref().is_some_and(|old| filter.matches(old));
    let event = match (change.kind, before, now) {
        (ChangeKind::Added, _, true) => "ADDED",
        (ChangeKind::Deleted, _, true) => "DELETED",
        (ChangeKind::Modified, true, true) => "MODIFIED",
        (ChangeKind::Modified, false, true) => "ADDED",
        (ChangeKind::Modified, true, false) => "DELETED",
        _ => return None,
    };
    let mut obj = change.object.clone();
    rt.stamp(&mut obj);
    Some((event, obj))
}

impl State {
    /// The Pod Security level that namespace `ns` enforces on its pods: `privileged` where the
    /// namespace does not exist (the fake lets objects be created there).
    fn enforced_level(&self, ns: &str) -> Level {
        self.objects
            .get(&(String::new(), "namespaces".to_string()))
            .and_then(|m| m.get(&(String::new(), ns.to_string())))
            .map_or(Level::Privileged, Level::of_namespace)
    }

    fn matching(&self, rt: &ResourceType, ns: Option<&str>, filter: &Filter) -> Vec<Value> {
        let Some(objects) = self.objects.get(&rt.storage_key()) else {
            return Vec::new();
        };
        objects
            .iter()
            .filter(|((obj_ns, _), obj)| ns.is_none_or(|ns| ns == obj_ns) && filter.matches(obj))
            .map(|(_, obj)| {
                let mut obj = obj.clone();
                rt.stamp(&mut obj);
                obj
            })
            .collect()
    }

    /// Logs and broadcasts a change at the current resourceVersion.
    fn emit(&mut self, kind: ChangeKind, key: &StorageKey, object: Value, old: Option<Value>) {
        let change = Arc::new(Change {
            rv: self.rv,
            group: key.0.clone(),
            plural: key.1.clone(),
            kind,
            object,
            old,
        });
        self.log.push_back(Arc::clone(&change));
        while self.log.len() > LOG_CAPACITY {
            if let Some(dropped) = self.log.pop_front() {
                self.oldest_resumable = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
    }

    /// Registers the types of a CRD, replacing those it registered before.
    fn register(&mut self, crd: &str, types: Vec<ResourceType>) {
        self.types.retain(|t| {
            t.crd.as_deref() != Some(crd)
                && !types
                    .iter()
                    .any(|n| n.group == t.group && n.version == t.version && n.plural == t.plural)
        });
        self.types.extend(types);
    }

    /// The deletion rules: a namespace takes its contents along, and stays `Terminating`
    /// until the last of them (held by a finalizer) is gone; an object with finalizers is only
    /// marked; otherwise it goes at once. Returns the object as it is afterwards.
    fn delete_request(&mut self, key: &StorageKey, obj_key: &ObjectKey) -> Option<Value> {
        let obj = self.objects.get(key)?.get(obj_key)?.clone();
        if is_namespace(key) {
            for (k, o) in self.contents(&obj_key.1) {
                self.delete_request(&k, &o);
            }
            if !self.contents(&obj_key.1).is_empty() {
                // Marked with its phase, in one change watchers see.
                if let Some(ns) = self.objects.get_mut(key).and_then(|m| m.get_mut(obj_key)) {
                    ns["status"] = json!({"phase": "Terminating"});
                }
                return self.mark_deleting(key, obj_key);
            }
        }
        if finalizers(&obj).is_empty() {
            return self.remove_now(key, obj_key);
        }
        self.mark_deleting(key, obj_key)
    }

    /// The objects of namespace `ns`.
    fn contents(&self, ns: &str) -> Vec<(StorageKey, ObjectKey)> {
        self.objects
            .iter()
            .flat_map(|(k, m)| {
                m.keys()
                    .filter(|(in_ns, _)| in_ns == ns)
                    .map(|o| (k.clone(), o.clone()))
            })
            .collect()
    }

    /// Whether namespace `ns` is being deleted (new content is refused there).
    pub(crate) fn terminating(&self, ns: &str) -> bool {
        self.objects
            .get(&(String::new(), "namespaces".to_string()))
            .and_then(|m| m.get(&(String::new(), ns.to_string())))
            .is_some_and(|n| n.pointer("/metadata/deletionTimestamp").is_some())
    }

    /// Sets `deletionTimestamp` (once) and keeps the object, for what will remove it.
    fn mark_deleting(&mut self, key: &StorageKey, obj_key: &ObjectKey) -> Option<Value> {
        let mut obj = self.objects.get(key)?.get(obj_key)?.clone();
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            let old = obj.clone();
            self.rv += 1;
            set_meta(&mut obj, "deletionTimestamp", Value::String(now()));
            set_meta(&mut obj, "deletionGracePeriodSeconds", json!(0));
            set_meta(
                &mut obj,
                "resourceVersion",
                Value::String(self.rv.to_string()),
            );
            if let Some(map) = self.objects.get_mut(key) {
                map.insert(obj_key.clone(), obj.clone());
            }
            self.emit(ChangeKind::Modified, key, obj.clone(), Some(old));
        }
        Some(obj)
    }

    /// Removes an object now, emits DELETED, then collects what depended on it: the types and
    /// objects of a CRD, and every object that names it in `ownerReferences`.
    fn remove_now(&mut self, key: &StorageKey, obj_key: &ObjectKey) -> Option<Value> {
        let mut obj = self.objects.get_mut(key)?.remove(obj_key)?;
        self.rv += 1;
        set_meta(
            &mut obj,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        self.emit(ChangeKind::Deleted, key, obj.clone(), None);
        // The last object of a Terminating namespace: the namespace goes.
        let ns = obj_key.0.clone();
        if !ns.is_empty() && self.terminating(&ns) && self.contents(&ns).is_empty() {
            let namespaces = (String::new(), "namespaces".to_string());
            self.remove_now(&namespaces, &(String::new(), ns));
        }
        if key.0 == CRD_GROUP && key.1 == CRDS {
            self.types
                .retain(|t| t.crd.as_deref() != Some(obj_key.1.as_str()));
            let group = obj
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or("");
            let plural = obj
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or("");
            let custom = (group.to_string(), plural.to_string());
            let keys: Vec<ObjectKey> = self
                .objects
                .get(&custom)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for k in keys {
                self.remove_now(&custom, &k);
            }
        }
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        let dependents: Vec<(StorageKey, ObjectKey)> = self
            .objects
            .iter()
            .flat_map(|(k, m)| {
                m.iter()
                    .filter(|(_, o)| owned_by(o, uid))
                    .map(|(o, _)| (k.clone(), o.clone()))
            })
            .collect();
        for (k, o) in dependents {
            self.delete_request(&k, &o);
        }
        Some(obj)
    }
}

fn is_namespace(key: &StorageKey) -> bool {
    key.0.is_empty() && key.1 == "namespaces"
}

fn owned_by(obj: &Value, uid: &str) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

fn finalizers(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Everything outside metadata and status (and the type fields): what the generation tracks.
fn spec_of(obj: &Value) -> Map<String, Value> {
    let mut map = obj.as_object().cloned().unwrap_or_default();
    for key in ["metadata", "status", "kind", "apiVersion"] {
        map.remove(key);
    }
    map
}

fn namespace(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The metadata map of a body, created if absent; a body that is no object is a bad request.
fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    map.entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Ok(meta) = metadata_mut(obj) {
        meta.insert(field.into(), value);
    }
}

/// Sets `to[field]` to `from[field]`, or removes it where `from` has none.
fn copy_field(from: &Value, to: &mut impl FieldMap, field: &str) {
    match from.get(field) {
        Some(v) => to.put(field, v.clone()),
        None => to.take(field),
    }
}

/// A JSON object or a map, for [`copy_field`].
trait FieldMap {
    fn put(&mut self, field: &str, value: Value);
    fn take(&mut self, field: &str);
}

impl FieldMap for Map<String, Value> {
    fn put(&mut self, field: &str, value: Value) {
        self.insert(field.into(), value);
    }
    fn take(&mut self, field: &str) {
        self.remove(field);
    }
}

impl FieldMap for Value {
    fn put(&mut self, field: &str, value: Value) {
        if let Value::Object(map) = self {
            map.put(field, value);
        }
    }
    fn take(&mut self, field: &str) {
        if let Value::Object(map) = self {
            map.take(field);
        }
    }
}

/// The types a CustomResourceDefinition serves, or why it is invalid.
fn crd_types(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let text = |path: &str| {
        crd.pointer(path)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (group, plural, kind) = (
        text("/spec/group"),
        text("/spec/names/plural"),
        text("/spec/names/kind"),
    );
    for (value, field) in [
        (&group, "spec.group"),
        (&plural, "spec.names.plural"),
        (&kind, "spec.names.kind"),
    ] {
        if value.is_empty() {
            return Err(format!("{field}: Required value"));
        }
    }
    let name = text("/metadata/name");
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let namespaced = match text("/spec/scope").as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        other => return Err(format!("spec.scope: Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\"")),
    };
    let singular = Some(text("/spec/names/singular"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| kind.to_lowercase());
    let short_names: Vec<String> = crd
        .pointer("/spec/names/shortNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty());
    let versions = versions.ok_or(
        "spec.versions: Required value: must have exactly one version marked as storage version",
    )?;
    let mut types = Vec::new();
    for v in versions {
        let version = v
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("spec.versions[].name: Required value")?;
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        types.push(ResourceType {
            group: group.clone(),
            version: version.to_string(),
            kind: kind.clone(),
            singular: singular.clone(),
            plural: plural.clone(),
            namespaced,
            status: v.pointer("/subresources/status").is_some(),
            short_names: short_names.clone(),
            crd: Some(name.clone()),
        });
    }
    Ok(types)
}

/// Sets the conditions a CRD reaches once the API server has accepted it.
fn establish_crd(crd: &mut Value) {
    let names = crd
        .pointer("/spec/names")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()});
    if let Value::Object(map) = crd {
        map.insert(
            "status".into(),
            json!({
                "conditions": [
                    condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                    condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                ],
                "acceptedNames": names,
                "storedVersions": stored,
            }),
        );
    }
}

/// The current time as Kubernetes writes it: RFC 3339, whole seconds, `Z`.
fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random version 4 UUID in its usual text form.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Five characters from the alphabet Kubernetes uses for `generateName`.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(store: &Store) -> ResourceType {
        store
            .resource("", "v1", "configmaps")
            .expect("configmaps are built in")
    }

    #[test]
    fn uuid_has_v4_shape() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!("89ab".contains(&id[19..20]));
    }

    #[test]
    fn noop_write_keeps_resource_version() {
        let store = Store::new();
        let rt = cm(&store);
        let created = store
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
                false,
            )
            .expect("create");
        let same = store
            .modify(&rt, Some("default"), "a", Endpoint::Main, false, |cur| {
                Ok(cur.clone())
            })
            .expect("modify");
        assert_eq!(created, same);
    }

    #[test]
    fn compaction_expires_old_watches() {
        let store = Store::new();
        let rt = cm(&store);
        store.compact();
        let filter = Filter::default();
        assert!(store
            .watch(&rt, None, &filter, WatchStart::After(1))
            .is_err_and(|e| e.code == 410));
        assert!(store
            .watch(&rt, None, &filter, WatchStart::After(4))
            .is_ok());
    }

    #[test]
    fn namespace_deletion_takes_contents() {
        let store = Store::new();
        let rt = cm(&store);
        store
            .create(
                &rt,
                Some("default"),
                json!({"metadata": {"name": "a"}}),
                false,
            )
            .expect("create");
        let ns = store
            .resource("", "v1", "namespaces")
            .expect("namespaces are built in");
        store
            .delete(&ns, None, "default", false, false)
            .expect("delete namespace");
        assert_eq!(
            store.get(&rt, Some("default"), "a").map_err(|e| e.code),
            Err(404)
        );
    }
}
