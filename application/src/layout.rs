//! Where each object lies in an application snapshot's tree (SPEC.md,
//! "Application snapshots"):
//!
//! ```text
//! application.json                                  what was captured, and the volumes' snapshots
//! objects/<group>/<version>/<Kind>/<name>.json      each namespaced object, as the API server gave it
//! cluster/<group>/<version>/<Kind>/<name>.json      cluster-scoped objects it depends on, for reference
//! ```
//!
//! `<group>` is `core` for the core group (whose real name is empty). A
//! path read back from a repository is checked segment by segment: a
//! hostile snapshot cannot name a file outside these directories or an
//! object Kubernetes could not have.

/// The file that describes the capture.
pub const MANIFEST: &str = "application.json";
/// The directory of the namespace's objects.
pub const OBJECTS: &str = "objects";
/// The directory of cluster-scoped objects recorded for reference.
pub const CLUSTER: &str = "cluster";
/// How the core group is spelled in a path.
pub const CORE: &str = "core";

/// Where an object lies: namespaced (restored) or cluster-scoped (recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Under [`OBJECTS`].
    Namespaced,
    /// Under [`CLUSTER`].
    Cluster,
}

/// One object's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectPath {
    /// Namespaced or cluster-scoped.
    pub scope: Scope,
    /// The API group (`""` for the core group).
    pub group: String,
    /// The version.
    pub version: String,
    /// The kind.
    pub kind: String,
    /// The object's name.
    pub name: String,
}

/// Why a path is not an object's place.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path:?} is not an object of an application snapshot: {why}")]
pub struct BadPath {
    /// The path read.
    pub path: String,
    /// What is wrong with it.
    pub why: String,
}

/// Whether `s` can be one segment: not empty, no `/` or NUL, not `.` or `..`.
fn segment_ok(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']) && s.len() <= 253
}

impl ObjectPath {
    /// The place of an object of `api_version` (`apps/v1`, `v1`) and kind,
    /// or `None` when a part cannot be a path segment (the API server
    /// never returns such an object).
    pub fn of(scope: Scope, api_version: &str, kind: &str, name: &str) -> Option<ObjectPath> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let p = ObjectPath {
            scope,
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
        };
        let group_ok = group.is_empty() || (segment_ok(group) && group != CORE);
        (group_ok && [version, kind, name].iter().all(|s| segment_ok(s))).then_some(p)
    }

    /// The path in the snapshot, relative to its root.
    pub fn path(&self) -> String {
        let dir = match self.scope {
            Scope::Namespaced => OBJECTS,
            Scope::Cluster => CLUSTER,
        };
        let group = if self.group.is_empty() {
            CORE
        } else {
            &self.group
        };
        format!(
            "{dir}/{group}/{}/{}/{}.json",
            self.version, self.kind, self.name
        )
    }

    /// The object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Reads a path of the snapshot back.
    pub fn parse(path: &str) -> Result<ObjectPath, BadPath> {
        let bad = |why: &str| BadPath {
            path: path.to_string(),
            why: why.to_string(),
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let [dir, group, version, kind, file] = parts[..] else {
            return Err(bad(
                "expected <objects|cluster>/<group>/<version>/<Kind>/<name>.json",
            ));
        };
        let scope = match dir {
            OBJECTS => Scope::Namespaced,
            CLUSTER => Scope::Cluster,
            _ => return Err(bad("not under objects/ or cluster/")),
        };
        let name = file
            .strip_suffix(".json")
            .ok_or_else(|| bad("not a .json file"))?;
        if group.is_empty() {
            return Err(bad("the group is empty (the core group is spelled `core`)"));
        }
        let group = if group == CORE { "" } else { group };
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        ObjectPath::of(scope, &api_version, kind, name)
            .ok_or_else(|| bad("a segment is empty, `.`, `..` or too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_has_one_place_and_it_reads_back() {
        let d = ObjectPath::of(Scope::Namespaced, "apps/v1", "Deployment", "web").unwrap();
        assert_eq!(d.path(), "objects/apps/v1/Deployment/web.json");
        assert_eq!(ObjectPath::parse(&d.path()).unwrap(), d);
        let cm = ObjectPath::of(Scope::Namespaced, "v1", "ConfigMap", "app.config").unwrap();
        assert_eq!(cm.path(), "objects/core/v1/ConfigMap/app.config.json");
        assert_eq!(ObjectPath::parse(&cm.path()).unwrap(), cm);
        assert_eq!(cm.api_version(), "v1");
        let sc =
            ObjectPath::of(Scope::Cluster, "storage.k8s.io/v1", "StorageClass", "fast").unwrap();
        assert_eq!(
            sc.path(),
            "cluster/storage.k8s.io/v1/StorageClass/fast.json"
        );
        assert_eq!(ObjectPath::parse(&format!("/{}", sc.path())).unwrap(), sc);
    }

    #[test]
    fn a_hostile_path_is_refused_naming_it() {
        for p in [
            "objects/apps/v1/Deployment/../../../etc.json",
            "objects/apps/v1/Deployment/...json",
            "objects/apps/v1/Deployment/web.yaml",
            "objects/apps/v1/Deployment",
            "objects/apps/v1/Deployment/a/b.json",
            "elsewhere/apps/v1/Deployment/web.json",
            "objects//v1/Deployment/web.json",
            "objects/apps/../Deployment/web.json",
            "objects/apps/v1/Deployment/.json",
        ] {
            let e = ObjectPath::parse(p).unwrap_err();
            assert_eq!(e.path, p);
            assert!(
                e.to_string()
                    .starts_with(&format!("{p:?} is not an object")),
                "{e}"
            );
        }
        // What the API server cannot return has no place.
        assert_eq!(
            ObjectPath::of(Scope::Namespaced, "v1", "ConfigMap", ".."),
            None
        );
        assert_eq!(
            ObjectPath::of(Scope::Namespaced, "core/v1", "ConfigMap", "x"),
            None
        );
    }
}
