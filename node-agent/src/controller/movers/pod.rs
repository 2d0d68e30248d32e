//! The mover pod's spec, pure: its volumes, its Secrets, its command line.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::json;
use std::collections::BTreeMap;

/// Where a mover pod sees a filesystem clone (read-only).
pub const SOURCE_DIR: &str = "/coffer/source";

/// Where a mover pod sees a block clone.
pub const SOURCE_DEVICE: &str = "/dev/coffer-source";

/// Where a restore mover finds its new filesystem volume.
pub const TARGET_DIR: &str = "/coffer/target";

/// Where a restore mover finds its new block volume.
pub const TARGET_DEVICE: &str = "/dev/coffer-target";

/// The image a controller's own pod runs: its container `controller`, or
/// its only container. Mover pods run it unless `--mover-image` names
/// another, so that a kustomize `images:` override changes both.
pub fn own_image(pod: &Pod) -> Result<String, String> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let chosen = match containers {
        [only] => Some(only),
        all => all.iter().find(|c| c.name == "controller"),
    };
    chosen
        .and_then(|c| c.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| {
            format!(
                "pod {name} has no container named controller with an image; set MOVER_IMAGE (--mover-image) to the image mover pods run"
            )
        })
}

/// The image pull Secrets of a controller's own pod, which its movers get
/// too (they run in its namespace, where those Secrets are).
pub fn own_pull_secrets(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The directory of a local repository URL (`file:///path` or `/path`),
/// which a mover pod can only reach as the same directory on its node (an
/// NFS share mounted on every node, or a one-node cluster). `None` for an
/// object store, and for a relative path, which names nothing in a pod.
pub fn local_repository_dir(url: &str) -> Option<&str> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    (!url.contains("://") || url.starts_with("file://"))
        .then_some(path)
        .filter(|p| p.starts_with('/'))
}

/// What a mover pod runs with.
pub struct MoverPod<'a> {
    /// The pod's name (in the run's namespace).
    pub name: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// The image holding `coffer-agent`.
    pub image: &'a str,
    /// The Secrets the image is pulled with.
    pub pull_secrets: &'a [String],
    /// The volume it reads or writes (none for a mover that only looks
    /// into the repository).
    pub volume: Option<MoverVolume<'a>>,
    /// `coffer-agent` arguments.
    pub args: Vec<String>,
    /// A local repository's directory (see [`local_repository_dir`]),
    /// mounted from the node at the same path.
    pub repository_dir: Option<&'a str>,
    /// Memory limit (`512Mi`).
    pub memory: &'a str,
    /// Labels (the run label).
    pub labels: &'a BTreeMap<String, String>,
    /// The owning run (none when it is in another namespace).
    pub owner: Option<&'a OwnerReference>,
    /// A copy's second repository, where it is a local directory (mounted
    /// from the node at the same path).
    pub destination_dir: Option<&'a str>,
}

/// A mover's one volume.
#[derive(Clone, Copy, Debug)]
pub struct MoverVolume<'a> {
    /// The claim.
    pub claim: &'a str,
    /// Whether it is a block device.
    pub block: bool,
    /// Written (a restore, mounted at [`TARGET_DIR`] or [`TARGET_DEVICE`])
    /// rather than read (a backup, at [`SOURCE_DIR`] or [`SOURCE_DEVICE`],
    /// read-only).
    pub write: bool,
}

impl MoverVolume<'_> {
    /// Where the mover finds it.
    pub fn path(&self) -> &'static str {
        match (self.write, self.block) {
            (false, false) => SOURCE_DIR,
            (false, true) => SOURCE_DEVICE,
            (true, false) => TARGET_DIR,
            (true, true) => TARGET_DEVICE,
        }
    }
}

/// The mover pod: its volume mounted (read-only for a backup) or attached
/// as a device, nothing else from the cluster (no Secret: it reads the
/// repository's through the API with its own ServiceAccount, which may read
/// only those), never restarted.
pub fn mover_pod(m: &MoverPod) -> Pod {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut devices = Vec::new();
    if let Some(v) = &m.volume {
        let name = if v.write { "target" } else { "source" };
        volumes.push(json!({
            "name": name,
            "persistentVolumeClaim": {"claimName": v.claim, "readOnly": !v.write && !v.block},
        }));
        if v.block {
            devices.push(json!({"name": name, "devicePath": v.path()}));
        } else {
            mounts.push(json!({"name": name, "mountPath": v.path(), "readOnly": !v.write}));
        }
    }
    // Root reads every file, whoever owns it; a restore also writes them
    // with their recorded owners and modes. Nothing else.
    let capabilities: &[&str] = if m.volume.is_some_and(|v| v.write) {
        &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]
    } else {
        &["DAC_READ_SEARCH"]
    };
    if let Some(dir) = m.repository_dir {
        // `Directory`, not `DirectoryOrCreate`: on a node where the shared
        // directory is missing the pod fails to start instead of writing a
        // repository nobody else sees.
        volumes.push(json!({"name": "repository", "hostPath": {"path": dir, "type": "Directory"}}));
        mounts.push(json!({"name": "repository", "mountPath": dir}));
    }
    let env = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    if let Some(dir) = m
        .destination_dir
        .filter(|dir| Some(*dir) != m.repository_dir)
    {
        volumes
            .push(json!({"name": "destination", "hostPath": {"path": dir, "type": "Directory"}}));
        mounts.push(json!({"name": "destination", "mountPath": dir}));
    }
    volumes.push(json!({"name": "cache", "emptyDir": {}}));
    mounts.push(json!({"name": "cache", "mountPath": "/tmp"}));
    let value = json!({
        "metadata": {
            "name": m.name,
            "namespace": m.namespace,
            "labels": m.labels,
            "ownerReferences": m.owner.map(|o| vec![o]),
        },
        "spec": {
            "restartPolicy": "Never",
            // Its own account ([`crate::controller::create_mover`]).
            "serviceAccountName": m.name,
            "imagePullSecrets": m.pull_secrets.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
            "containers": [{
                "name": "mover",
                "image": m.image,
                "args": m.args,
                "env": env,
                "volumeMounts": mounts,
                "volumeDevices": devices,
                "resources": {"requests": {"memory": "128Mi"}, "limits": {"memory": m.memory}},
                "securityContext": {
                    "runAsUser": 0,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"], "add": capabilities},
                },
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "volumes": volumes,
        }
    });
    serde_json::from_value(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movers_run_the_controllers_own_image() {
        let pod = |containers: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "coffer-controller-1"}, "spec": {"containers": containers}}))
                .unwrap()
        };
        let one = pod(json!([{"name": "main", "image": "r.example/coffer:1"}]));
        assert_eq!(own_image(&one).unwrap(), "r.example/coffer:1");
        assert!(own_pull_secrets(&one).is_empty());
        let pulled: Pod = serde_json::from_value(json!({"metadata": {"name": "c"},
            "spec": {"containers": [], "imagePullSecrets": [{"name": "a"}, {"name": "b"}]}}))
        .unwrap();
        assert_eq!(own_pull_secrets(&pulled), ["a", "b"]);
        let two = pod(
            json!([{"name": "proxy", "image": "envoy"}, {"name": "controller", "image": "r.example/coffer:2"}]),
        );
        assert_eq!(own_image(&two).unwrap(), "r.example/coffer:2");
        let none =
            pod(json!([{"name": "proxy", "image": "envoy"}, {"name": "other", "image": "x"}]));
        let e = own_image(&none).unwrap_err();
        assert!(
            e.contains("coffer-controller-1") && e.contains("MOVER_IMAGE"),
            "{e}"
        );
    }

    #[test]
    fn a_local_repository_is_mounted_into_the_mover_from_its_node() {
        assert_eq!(
            local_repository_dir("file:///srv/backup"),
            Some("/srv/backup")
        );
        assert_eq!(local_repository_dir("/srv/backup"), Some("/srv/backup"));
        assert_eq!(local_repository_dir("repo"), None);
        assert_eq!(local_repository_dir("s3://bucket/file:///x"), None);
        let labels = BTreeMap::new();
        let mover = |dir| {
            let pod = mover_pod(&MoverPod {
                name: "coffer-run",
                namespace: "team-a",
                image: "coffer",
                pull_secrets: &["registry".to_string()],
                volume: None,
                args: Vec::new(),
                repository_dir: dir,
                memory: "1Gi",
                labels: &labels,
                owner: None,
                destination_dir: None,
            });
            serde_json::to_value(pod.spec.unwrap()).unwrap()
        };
        let spec = mover(Some("/srv/backup"));
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "registry"}]));
        assert!(spec["volumes"].as_array().unwrap().contains(&json!(
            {"name": "repository", "hostPath": {"path": "/srv/backup", "type": "Directory"}}
        )));
        assert!(spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "repository", "mountPath": "/srv/backup"})));
        let spec = mover(None);
        assert!(!spec.to_string().contains("hostPath"), "{spec}");
        // No Secret reaches the pod: it reads them through the API.
        let text = spec.to_string();
        assert!(
            !text.contains("secretKeyRef") && !text.contains("\"secret\""),
            "{text}"
        );
    }
}
