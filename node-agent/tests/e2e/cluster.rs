//! The snapshot path as one test that runs on either kind of cluster.
//!
//! On the fake API server, [`crate::sim`] plays the CSI driver and a
//! volume's data is a directory here. On a real cluster
//! (`COFFER_TEST_KUBECONFIG`) with a CSI driver that takes snapshots, the
//! volumes are real PVCs, filled and read by pods, and the movers are real
//! pods. The test is the same: fill a PVC, back it up through a
//! VolumeSnapshot, check that nothing of the run is left, restore it into a
//! new PVC in another namespace, and compare every file's SHA-256.
//!
//! A real cluster needs:
//! - `kubectl apply -k deploy/` (the CRDs and the controller's RBAC; the
//!   controller makes each namespace's mover account and Role itself), with
//!   the `coffer-controller` Deployment scaled to 0: the test runs its own
//!   controller, from this checkout, against the cluster;
//! - a VolumeSnapshotClass for the driver, its default or labelled
//!   `backup.coffer.dev/default: "true"`;
//! - these variables:
//!   - `COFFER_TEST_REPOSITORY_URL` (required; the test is skipped without
//!     it): a repository location the mover pods can reach, such as
//!     `s3://bucket/prefix`; each test uses its own prefix below it;
//!   - `COFFER_TEST_REPOSITORY_OPTIONS`: store options, comma-separated
//!     (`s3.endpoint=http://minio.minio:9000,s3.region=us-east-1`);
//!   - `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (or the Azure and
//!     GCS keys the BackupRepository takes), copied into a credentials
//!     Secret;
//!   - `COFFER_TEST_STORAGE_CLASS` (default `csi-hostpath-sc`, the class
//!     `deploy/e2e-kind.sh` installs);
//!   - `COFFER_TEST_MOVER_IMAGE` (default `registry.example.com/coffer/coffer-agent:0.1.0`, the name deploy/ runs);
//!   - `COFFER_TEST_TOOLS_IMAGE`: an image with `sh`, `cp`, `find` and
//!     `sha256sum` (default `busybox:1.36`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use coffer_node_agent::controller::csi::VolumeSnapshot;
use coffer_node_agent::crd::{BackupRepository, Phase};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::harness::*;
use crate::pvc_restores::{volume_restore, wait_restored};
use crate::sim::{self, Sim};
use crate::snapshots::{snapshot_backup, wait_cleaned};

/// Store credentials copied from the environment into a Secret.
const CREDENTIALS: [&str; 5] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
];

/// A real cluster's settings, from the environment.
pub struct Real {
    url: String,
    options: BTreeMap<String, String>,
    storage_class: String,
    tools_image: String,
}

/// Where the volumes live.
pub enum World {
    /// The fake API server, with the simulated driver (running while held).
    Fake {
        _sim: Sim,
    },
    Real(Real),
}

/// A repository, as a BackupRepository names it.
pub enum RepoAt {
    Dir(PathBuf),
    Url(String),
}

impl World {
    /// The fake cluster, or the real one when it is configured; `None`
    /// (skipped, with the reason) when the real one lacks a setting.
    pub async fn new() -> Option<(Env, World)> {
        if std::env::var_os("COFFER_TEST_KUBECONFIG").is_none() {
            let env = Env::new().await;
            let sim = Sim::start(&env).await;
            return Some((env, World::Fake { _sim: sim }));
        }
        let Ok(url) = std::env::var("COFFER_TEST_REPOSITORY_URL") else {
            eprintln!(
                "skipped: set COFFER_TEST_REPOSITORY_URL to a repository the mover pods can reach"
            );
            return None;
        };
        let options = std::env::var("COFFER_TEST_REPOSITORY_OPTIONS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
        let real = Real {
            url: url.trim_end_matches('/').to_string(),
            options,
            storage_class: var("COFFER_TEST_STORAGE_CLASS", "csi-hostpath-sc"),
            tools_image: var("COFFER_TEST_TOOLS_IMAGE", "busybox:1.36"),
        };
        Some((Env::new().await, World::Real(real)))
    }

    /// A new repository for `ns`, as BackupRepository `default` there.
    pub async fn repository(&self, env: &Env, ns: &str) -> RepoAt {
        let at = match self {
            World::Fake { .. } => RepoAt::Dir(env.repository(ns, "default", PASSWORD).await),
            World::Real(r) => RepoAt::Url(format!("{}/{ns}", r.url)),
        };
        if let RepoAt::Url(_) = at {
            self.open_in(env, ns, &at).await;
        }
        at
    }

    /// BackupRepository `default` in `ns` for the repository `at`, with its
    /// own password Secret (and credentials Secret on a real cluster).
    pub async fn open_in(&self, env: &Env, ns: &str, at: &RepoAt) {
        env.secret(ns, "repo-password", "password", PASSWORD).await;
        let (url, options, credentials) = match (self, at) {
            (World::Real(r), RepoAt::Url(url)) => {
                let mut creds = BTreeMap::new();
                for key in CREDENTIALS {
                    if let Ok(v) = std::env::var(key) {
                        creds.insert(key.to_string(), ByteString(v.into_bytes()));
                    }
                }
                let secret = k8s_openapi::api::core::v1::Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some("repo-credentials".into()),
                        ..Default::default()
                    },
                    data: Some(creds),
                    ..Default::default()
                };
                Api::<k8s_openapi::api::core::v1::Secret>::namespaced(env.client.clone(), ns)
                    .create(&PostParams::default(), &secret)
                    .await
                    .unwrap();
                (url.clone(), r.options.clone(), Some("repo-credentials"))
            }
            (_, RepoAt::Dir(path)) => (format!("file://{}", path.display()), BTreeMap::new(), None),
            (World::Fake { .. }, RepoAt::Url(url)) => (url.clone(), BTreeMap::new(), None),
        };
        let mut spec = json!({
            "url": url,
            "passwordSecretRef": {"name": "repo-password", "key": "password"},
            "options": options,
            "init": true
        });
        if let Some(name) = credentials {
            spec["credentialsSecretRef"] = json!({ "name": name });
        }
        env.create::<BackupRepository>(
            ns,
            json!({
                "apiVersion": "coffer.dev/v1alpha1", "kind": "BackupRepository",
                "metadata": {"name": "default", "namespace": ns},
                "spec": spec
            }),
        )
        .await;
    }

    /// A bound PVC `name` holding `files` (relative path, content).
    pub async fn filled_pvc(&self, env: &Env, ns: &str, name: &str, files: &[(String, Vec<u8>)]) {
        match self {
            World::Fake { .. } => {
                let dir = env.dir.path().join("csi/source").join(ns).join(name);
                for (path, data) in files {
                    let p = dir.join(path);
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(p, data).unwrap();
                }
                sim::csi_pvc(env, ns, name, "Filesystem", &dir, json!({"app": "db"})).await;
            }
            World::Real(r) => {
                let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
                pvcs.create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "metadata": {"name": name, "labels": {"app": "db"}},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "storageClassName": r.storage_class,
                            "resources": {"requests": {"storage": "1Gi"}}
                        }
                    }))
                    .unwrap(),
                )
                .await
                .unwrap();
                // The files go in through a ConfigMap, copied by a pod.
                let keys: Vec<String> = (0..files.len()).map(|i| format!("f{i}")).collect();
                let data: BTreeMap<String, ByteString> = keys
                    .iter()
                    .zip(files)
                    .map(|(k, (_, d))| (k.clone(), ByteString(d.clone())))
                    .collect();
                let cm = ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        name: Some(format!("{name}-files")),
                        ..Default::default()
                    },
                    binary_data: Some(data),
                    ..Default::default()
                };
                Api::<ConfigMap>::namespaced(env.client.clone(), ns)
                    .create(&PostParams::default(), &cm)
                    .await
                    .unwrap();
                let items: Vec<_> = keys
                    .iter()
                    .zip(files)
                    .map(|(k, (p, _))| json!({"key": k, "path": p}))
                    .collect();
                let volumes = json!([
                    {"name": "data", "persistentVolumeClaim": {"claimName": name}},
                    {"name": "files", "configMap": {"name": format!("{name}-files"), "items": items}}
                ]);
                let mounts = json!([
                    {"name": "data", "mountPath": "/data"},
                    {"name": "files", "mountPath": "/files", "readOnly": true}
                ]);
                // The ConfigMap's own `..data` entries start with a dot: `*` leaves them out.
                r.run_pod(
                    env,
                    ns,
                    &format!("fill-{name}"),
                    "cp -rL /files/* /data/",
                    volumes,
                    mounts,
                )
                .await;
            }
        }
    }

    /// The SHA-256 of every regular file in PVC `name`, by relative path.
    pub async fn contents(&self, env: &Env, ns: &str, name: &str) -> BTreeMap<String, String> {
        match self {
            World::Fake { .. } => hashes_under(&bound_path(env, ns, name).await),
            World::Real(r) => {
                let volumes =
                    json!([{"name": "data", "persistentVolumeClaim": {"claimName": name}}]);
                let mounts = json!([{"name": "data", "mountPath": "/data", "readOnly": true}]);
                let out = r
                    .run_pod(
                        env,
                        ns,
                        &format!("read-{name}"),
                        "cd /data && find . -type f | sort | xargs -r sha256sum",
                        volumes,
                        mounts,
                    )
                    .await;
                out.lines()
                    .filter_map(|l| l.split_once("  "))
                    .map(|(h, p)| (p.trim_start_matches("./").to_string(), h.to_string()))
                    .collect()
            }
        }
    }
}

impl Real {
    /// Runs `script` in a pod of the tools image until it succeeds; returns
    /// its output.
    async fn run_pod(
        &self,
        env: &Env,
        ns: &str,
        name: &str,
        script: &str,
        volumes: serde_json::Value,
        mounts: serde_json::Value,
    ) -> String {
        let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "tools", "image": self.tools_image,
                        "command": ["sh", "-c", script],
                        "volumeMounts": mounts
                    }],
                    "volumes": volumes
                }
            }))
            .unwrap(),
        )
        .await
        .unwrap();
        let pod = env
            .wait_for::<Pod>(ns, name, "finished", |p| {
                matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .await;
        let logs = pods.logs(name, &LogParams::default()).await.unwrap();
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        assert_eq!(phase, "Succeeded", "pod {ns}/{name} ({script}):\n{logs}");
        // The volume is free for the next pod (ReadWriteOnce).
        pods.delete(name, &DeleteParams::default()).await.unwrap();
        logs
    }
}

/// Where the PV bound to PVC `name` keeps its data (the simulated driver).
async fn bound_path(env: &Env, ns: &str, name: &str) -> PathBuf {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    let pv = pvc.spec.and_then(|s| s.volume_name).expect("a bound claim");
    let pv = Api::<PersistentVolume>::all(env.client.clone())
        .get(&pv)
        .await
        .unwrap();
    let attrs = pv
        .spec
        .and_then(|s| s.csi)
        .and_then(|c| c.volume_attributes);
    PathBuf::from(&attrs.expect("a CSI volume")["path"])
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hashes_under(dir: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            (rel, sha256_hex(&std::fs::read(e.path()).unwrap()))
        })
        .collect()
}

/// Files like a small database's: nested, of several sizes, some alike.
/// Under 1 MiB in all, so that they fit in one ConfigMap.
fn sample_files(seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for i in 0..12u64 {
        let len = [0, 1, 4096, 70_000][i as usize % 4] + i as usize * 311;
        let dir = ["base/1", "base/2", "pg_wal", "global"][i as usize % 4];
        files.push((format!("{dir}/f{i}.dat"), noise(seed + i, len)));
    }
    files.push(("PG_VERSION".into(), b"17\n".to_vec()));
    files
}

/// What the controller leaves of run `run` of `ns`: mover pods in either
/// namespace, its clone PVC and exposed VolumeSnapshot in coffer's, its
/// own VolumeSnapshot (none once the run is cleaned up).
async fn leftovers(env: &Env, ns: &str, run: &str) -> Vec<String> {
    let home = coffer_node_agent::names::home_name("backup", ns, run);
    let mut left = Vec::new();
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=coffer-controller");
    for in_ns in [ns, COFFER_NAMESPACE] {
        for p in Api::<Pod>::namespaced(env.client.clone(), in_ns)
            .list(&managed)
            .await
            .unwrap()
        {
            let this_run = kube::ResourceExt::annotations(&p)
                .get(coffer_node_agent::names::RUN_ANNOTATION)
                .is_none_or(|r| *r == format!("{ns}/{run}"));
            if this_run {
                left.push(format!("Pod/{in_ns}/{}", kube::ResourceExt::name_any(&p)));
            }
        }
    }
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), COFFER_NAMESPACE);
    if pvcs.get_opt(&home).await.unwrap().is_some() {
        left.push(format!("PersistentVolumeClaim/{home}"));
    }
    for (in_ns, name) in [
        (ns.to_string(), format!("coffer-{run}")),
        (COFFER_NAMESPACE.into(), home),
    ] {
        let snapshots = Api::<VolumeSnapshot>::namespaced(env.client.clone(), &in_ns);
        if snapshots.get_opt(&name).await.unwrap().is_some() {
            left.push(format!("VolumeSnapshot/{in_ns}/{name}"));
        }
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pvc_goes_through_a_csi_snapshot_and_comes_back_as_a_new_pvc_in_another_namespace() {
    let Some((mut env, world)) = World::new().await else {
        return;
    };
    let ns = env.namespace("csi").await;
    let repo = world.repository(&env, &ns).await;
    let files = sample_files(31);
    world.filled_pvc(&env, &ns, "data", &files).await;
    let expected: BTreeMap<String, String> = files
        .iter()
        .map(|(p, d)| (p.clone(), sha256_hex(d)))
        .collect();
    assert_eq!(
        world.contents(&env, &ns, "data").await,
        expected,
        "the filled PVC"
    );
    let _c = Controller::start(&env, "a", &[]);

    snapshot_backup(
        &env,
        &ns,
        "nightly",
        json!({"pvc": "data", "tags": ["e2e"]}),
    )
    .await;
    let vb = wait_cleaned(&env, &ns, "nightly").await;
    let st = vb.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Completed, "{st:#?}");
    assert!(st.snapshot_id.is_some(), "{st:#?}");
    assert_eq!(leftovers(&env, &ns, "nightly").await, Vec::<String>::new());

    // Another namespace opens the same repository with its own Secret; the
    // restore names the source by origin.
    let copy = env.namespace("copy").await;
    world.open_in(&env, &copy, &repo).await;
    env.allow_restores_from(&copy, "default", &ns).await;
    volume_restore(
        &env,
        &ns,
        "back",
        json!({"snapshot": {"pvc": "data"}, "target": {"namespace": copy, "pvc": "data-copy"}}),
    )
    .await;
    let vr = wait_restored(&env, &ns, "back").await;
    let rs = vr.status.clone().unwrap();
    assert_eq!(rs.phase, Phase::Completed, "{rs:#?}");
    assert_eq!(rs.snapshot_id, st.snapshot_id);
    assert_eq!(
        world.contents(&env, &copy, "data-copy").await,
        expected,
        "the restored PVC"
    );
}
