//! # coffer-application
//!
//! An application backup is an ordinary coffer snapshot whose tree holds one
//! JSON file per Kubernetes object of a namespace (SPEC.md, "Application
//! snapshots"). This crate is the pure part of it, shared by the node
//! agent's capture and restore pods and by `coffer k8s manifests`:
//!
//! - [`layout`]: where an object lies in the snapshot's tree, and reading a
//!   path back (a repository is hostile: every path is checked);
//! - [`select`]: which API resources and which objects are captured (the
//!   default exclusions, the include/exclude lists);
//! - [`clean`]: an object as it is restored: what belonged to the old
//!   cluster removed, the namespace mapped, storage classes mapped;
//! - [`order`]: the order objects are created in on restore;
//! - `read` (feature `engine`, the one module with I/O): an application
//!   snapshot's objects read from a repository, each checked against its
//!   path.
//!
//! Objects are `serde_json::Value`s: this crate knows Kubernetes' object
//! conventions, not its types, so custom resources are handled as any
//! other.

pub mod clean;
pub mod layout;
pub mod order;
#[cfg(feature = "engine")]
pub mod read;
pub mod select;

/// An application's objects as `coffer k8s manifests` prints them for
/// `kubectl apply`, and as a restore creates them before the cluster is
/// asked: those a restore leaves out set aside with why
/// ([`clean::not_restored`]), the rest cleaned ([`clean::clean`]) with
/// their owner references dropped (an owner reference needs the restored
/// owner's uid, which only the cluster gives; a restore re-points them as
/// it goes), in the order a restore creates them ([`order::sort`]).
pub fn manifests(
    objects: Vec<(layout::ObjectPath, serde_json::Value)>,
    opts: &clean::CleanOptions,
) -> Manifests {
    let mut out = Manifests::default();
    for (place, o) in objects {
        if let Some(why) = clean::not_restored(&place.kind, &o) {
            out.left_out.push((place, why));
            continue;
        }
        let mut c = clean::clean(&place.kind, &o, opts);
        clean::repoint_owners(&mut c, |_, _| None);
        out.objects.push((place, c));
    }
    order::sort(&mut out.objects, |(p, _)| (&p.group, &p.kind, &p.name));
    out
}

/// What [`manifests`] gives.
#[derive(Debug, Default)]
pub struct Manifests {
    /// The objects, cleaned, in creation order.
    pub objects: Vec<(layout::ObjectPath, serde_json::Value)>,
    /// The objects a restore leaves out, with why.
    pub left_out: Vec<(layout::ObjectPath, &'static str)>,
}

/// An API resource as discovery lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResource {
    /// The API group (`""` for the core group).
    pub group: String,
    /// The version (the group's preferred one).
    pub version: String,
    /// The kind (`Deployment`).
    pub kind: String,
    /// The plural resource name (`deployments`).
    pub plural: String,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
    /// The verbs the API server allows on it.
    pub verbs: Vec<String>,
}

impl ApiResource {
    /// `plural.group`, or `plural` for the core group: how include and
    /// exclude lists name a resource (as `kubectl get` does).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}
