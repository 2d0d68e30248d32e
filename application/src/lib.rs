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
