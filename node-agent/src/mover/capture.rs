//! An application backup's capture (`coffer-agent mover capture`): every
//! namespaced object of one namespace that the capturing account can list,
//! found through discovery (every API group, its preferred version), as one
//! JSON file per object in a snapshot laid out as SPEC.md §16 fixes.
//!
//! It runs with the tenant's rights, never coffer's: what the account may
//! not list is recorded as skipped, with the API server's reason, and the
//! capture goes on. The objects are written into a private directory
//! (`work_dir`, an emptyDir in the pod), then backed up with the engine as
//! any directory is; memory stays bounded by one page of a list (500
//! objects), whatever the namespace holds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use coffer_application::layout::{ObjectPath, Scope, MANIFEST};
use coffer_application::select::Selection;
use coffer_application::ApiResource;
use coffer_engine::backup::{backup, BackupOptions};
use coffer_engine::format::snapshot::KubernetesOrigin;
use coffer_engine::CancelToken;
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::{self, Scope as KubeScope};
use kube::Client;
use serde_json::json;

use crate::mover::RepoAccess;

pub use crate::names::{application_tag, objects_tag, OBJECTS_TAG};

/// Objects per list request.
const PAGE: u32 = 500;

/// One capture.
#[derive(Clone, Debug)]
pub struct CaptureJob {
    /// The namespace captured.
    pub namespace: String,
    /// The application backup's name (its snapshot's tag).
    pub application: String,
    /// The repository written.
    pub repo: RepoAccess,
    /// Which resources and objects.
    pub selection: Selection,
    /// Only objects with these labels (a label selector), if given.
    pub label_selector: Option<String>,
    /// Where the objects are written before the backup (private).
    pub work_dir: PathBuf,
    /// The cluster's name, recorded in the origin.
    pub cluster: Option<String>,
    /// Tags besides the application's.
    pub tags: Vec<String>,
    /// The claims whose data the application backup wrote, with their
    /// snapshots (`application.json`'s `volumes`).
    pub volumes: Vec<(String, String)>,
}

/// What could not be captured.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// `plural.group`, or an API group whose discovery failed.
    pub resource: String,
    /// Why (the API server's words).
    pub reason: String,
}

/// What a capture wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Captured {
    /// The snapshot.
    pub snapshot_id: String,
    /// Objects captured, by kind.
    pub counts: BTreeMap<String, u64>,
    /// What the account could not list.
    pub skipped: Vec<Skipped>,
    /// The cluster-scoped objects depended on that the account could not
    /// read (recorded for reference only: a restore does not need them).
    pub unrecorded: Vec<Skipped>,
    /// Bytes of JSON written.
    pub bytes: u64,
}

/// The API resources to list, in a stable order, and the groups whose
/// discovery failed.
async fn resources(
    client: &Client,
    selection: &Selection,
) -> Result<(Vec<kube::discovery::ApiResource>, Vec<Skipped>), String> {
    let mut names = vec![String::new()];
    names.extend(
        client
            .list_api_groups()
            .await
            .map_err(|e| format!("discovery: {e}"))?
            .groups
            .into_iter()
            .map(|g| g.name),
    );
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    for name in names {
        let group = match discovery::group(client, &name).await {
            Ok(g) => g,
            Err(e) => {
                // An aggregated API that is down must not stop the rest.
                skipped.push(Skipped {
                    resource: if name.is_empty() { "core".into() } else { name },
                    reason: format!("discovery failed: {e}"),
                });
                continue;
            }
        };
        for (ar, caps) in group.recommended_resources() {
            let r = ApiResource {
                group: ar.group.clone(),
                version: ar.version.clone(),
                kind: ar.kind.clone(),
                plural: ar.plural.clone(),
                namespaced: caps.scope == KubeScope::Namespaced,
                verbs: caps.operations.clone(),
            };
            if selection.lists(&r) {
                found.push(ar);
            }
        }
    }
    found.sort_by(|a, b| (&a.group, &a.plural).cmp(&(&b.group, &b.plural)));
    Ok((found, skipped))
}

/// The cluster-scoped objects that captured objects depend on: each
/// claim's PersistentVolume and StorageClass, and the
/// CustomResourceDefinition of each custom resource's kind. Recorded beside
/// the namespace's objects for reference (a restore does not create them).
#[derive(Default)]
struct Dependencies(std::collections::BTreeSet<((String, String, String), String)>);

impl Dependencies {
    fn want(&mut self, group: &str, version: &str, kind: &str, name: &str) {
        if !name.is_empty() {
            self.0
                .insert(((group.into(), version.into(), kind.into()), name.into()));
        }
    }

    /// Notes what object `v` of resource `ar` depends on.
    fn note(&mut self, ar: &kube::discovery::ApiResource, v: &serde_json::Value) {
        if ar.group.is_empty() && ar.kind == "PersistentVolumeClaim" {
            let spec = &v["spec"];
            self.want(
                "",
                "v1",
                "PersistentVolume",
                spec["volumeName"].as_str().unwrap_or_default(),
            );
            self.want(
                "storage.k8s.io",
                "v1",
                "StorageClass",
                spec["storageClassName"].as_str().unwrap_or_default(),
            );
        } else if !coffer_application::order::is_builtin(&ar.group) {
            self.want(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                &format!("{}.{}", ar.plural, ar.group),
            );
        }
    }

    fn wanted(&self) -> impl Iterator<Item = ((String, String, String), String)> + '_ {
        self.0.iter().cloned()
    }
}

/// Captures `job.namespace` into a new snapshot of `job.repo`.
pub async fn capture(
    client: &Client,
    job: &CaptureJob,
    cancel: &CancelToken,
) -> Result<Captured, String> {
    // The repository first: a wrong password fails before anything is read.
    let repo = job.repo.open(client).await?;
    let work = tempfile::Builder::new()
        .prefix("capture-")
        .tempdir_in(&job.work_dir)
        .map_err(|e| format!("a private directory in {}: {e}", job.work_dir.display()))?;
    let root = work.path().to_path_buf();
    let (kinds, mut skipped) = resources(client, &job.selection).await?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut paths = Vec::new();
    let mut bytes = 0u64;
    let mut depends = Dependencies::default();
    for ar in &kinds {
        let qualified = if ar.group.is_empty() {
            ar.plural.clone()
        } else {
            format!("{}.{}", ar.plural, ar.group)
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &job.namespace, ar);
        let first = paths.len();
        let mut params = ListParams::default().limit(PAGE);
        if let Some(s) = &job.label_selector {
            params = params.labels(s);
        }
        loop {
            if cancel.is_cancelled() {
                return Err("canceled".into());
            }
            let page = match api.list(&params).await {
                Ok(p) => p,
                Err(e) => {
                    // A list that fails after its first pages (an expired
                    // continue token) keeps nothing of the resource: it is
                    // skipped whole, never captured in part.
                    let partial = paths.len() - first;
                    for path in paths.drain(first..) {
                        let file = root.join(&path);
                        bytes = bytes.saturating_sub(file.metadata().map(|m| m.len()).unwrap_or(0));
                        std::fs::remove_file(&file)
                            .map_err(|e| format!("{}: {e}", file.display()))?;
                    }
                    if let Some(n) = counts.get_mut(&ar.kind) {
                        *n -= partial as u64;
                        if *n == 0 {
                            counts.remove(&ar.kind);
                        }
                    }
                    skipped.push(Skipped {
                        resource: qualified.clone(),
                        reason: if partial > 0 {
                            format!(
                                "listing failed after {partial} objects, none kept: {}",
                                reason(&e)
                            )
                        } else {
                            reason(&e)
                        },
                    });
                    break;
                }
            };
            for o in &page.items {
                let mut v = serde_json::to_value(o).map_err(|e| e.to_string())?;
                // List items do not always say what they are.
                v["apiVersion"] = json!(ar.api_version);
                v["kind"] = json!(ar.kind);
                if !job.selection.keeps(&ar.kind, &v) {
                    continue;
                }
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                let Some(place) =
                    ObjectPath::of(Scope::Namespaced, &ar.api_version, &ar.kind, name)
                else {
                    skipped.push(Skipped {
                        resource: qualified.clone(),
                        reason: format!("object {name:?} has a name no file can have"),
                    });
                    continue;
                };
                depends.note(ar, &v);
                let path = place.path();
                let file = root.join(&path);
                let text = serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())?;
                write_private(&file, &text)?;
                bytes += text.len() as u64;
                *counts.entry(ar.kind.clone()).or_default() += 1;
                paths.push(path);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(next) => params = params.continue_token(&next),
                None => break,
            }
        }
    }
    // The cluster-scoped objects it depends on, recorded for reference.
    let mut recorded = Vec::new();
    let mut unrecorded = Vec::new();
    for (gvk, name) in depends.wanted() {
        let (group, version, kind) = (&gvk.0, &gvk.1, &gvk.2);
        let ar = kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            group, version, kind,
        ));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        match api.get_opt(&name).await {
            Ok(Some(o)) => {
                let mut v = serde_json::to_value(&o).map_err(|e| e.to_string())?;
                v["apiVersion"] = json!(ar.api_version);
                v["kind"] = json!(ar.kind);
                if let Some(place) =
                    ObjectPath::of(Scope::Cluster, &ar.api_version, &ar.kind, &name)
                {
                    let text = serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())?;
                    write_private(&root.join(place.path()), &text)?;
                    bytes += text.len() as u64;
                    recorded.push(place.path());
                }
            }
            Ok(None) => {}
            Err(e) => unrecorded.push(Skipped {
                resource: format!("{kind} {name}"),
                reason: reason(&e),
            }),
        }
    }
    let manifest = json!({
        "namespace": job.namespace,
        "cluster": job.cluster,
        "objects": paths,
        "recorded": recorded,
        "unrecorded": unrecorded,
        "skipped": skipped,
        "volumes": job.volumes.iter().map(|(pvc, snapshot)| json!({"pvc": pvc, "snapshot": snapshot})).collect::<Vec<_>>(),
    });
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    write_private(&root.join(MANIFEST), &text)?;
    let mut o = BackupOptions::new([&root]);
    o.record_path = Some("/".into());
    o.tags = [
        application_tag(&job.application),
        objects_tag(&job.application),
    ]
    .into_iter()
    .chain(job.tags.iter().cloned())
    .collect();
    o.hostname = Some("kubernetes".into());
    o.program = Some(format!("coffer-agent {}", env!("CARGO_PKG_VERSION")));
    o.origin = Some(KubernetesOrigin {
        cluster: job.cluster.clone(),
        namespace: Some(job.namespace.clone()),
        ..Default::default()
    });
    o.cancel = cancel.clone();
    let summary = backup(repo, o).await.map_err(|e| e.to_string())?;
    Ok(Captured {
        snapshot_id: summary.snapshot_id.to_hex(),
        counts,
        skipped,
        unrecorded,
        bytes,
    })
}

/// Writes what `done` captured into the status of the ApplicationBackup
/// `job.application` (its mover's one right there): the objects' snapshot
/// and counts, and the skipped resources (the first
/// [`crate::crd::MAX_SKIPPED`]). The controller ends the backup.
pub async fn report(client: &Client, job: &CaptureJob, done: &Captured) -> Result<(), String> {
    use crate::crd::{ApplicationBackup, CapturedObjects, SkippedResource, MAX_SKIPPED};
    let listed = |all: &[Skipped]| -> Vec<SkippedResource> {
        all.iter()
            .take(MAX_SKIPPED)
            .map(|s| SkippedResource {
                resource: s.resource.clone(),
                reason: s.reason.clone(),
            })
            .collect()
    };
    let objects = CapturedObjects {
        total: done.counts.values().sum(),
        counts: done.counts.clone(),
        bytes: done.bytes,
        skipped: listed(&done.skipped),
        skipped_count: (!done.skipped.is_empty()).then_some(done.skipped.len() as u64),
        unrecorded: listed(&done.unrecorded),
    };
    let fields = json!({"snapshotID": done.snapshot_id, "objects": objects});
    let what = format!(
        "the status of ApplicationBackup {}/{}",
        job.namespace, job.application
    );
    write_status::<ApplicationBackup>(client, &job.namespace, &job.application, fields, &what).await
}

/// A merge patch of `fields` into the status of `K` `ns/name` (`what`, for
/// messages), tried 5 times while the API server fails.
pub(crate) async fn write_status<K>(
    client: &Client,
    ns: &str,
    name: &str,
    fields: serde_json::Value,
    what: &str,
) -> Result<(), String>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    for attempt in 0..5u32 {
        match crate::report::patch_status::<K>(client, ns, name, fields.clone(), None).await {
            Ok(crate::report::Written::Applied) => return Ok(()),
            Ok(w) => return Err(format!("{what} was not written: {w:?}")),
            Err(e) if attempt < 4 => {
                tracing::warn!("writing {what}: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => return Err(format!("writing {what}: {e}")),
        }
    }
    Err(format!("{what} was not written"))
}

/// The API server's words for why a request was refused.
fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Writes `data` at `path` (its directories made), readable by this user
/// alone: Secrets pass through here.
fn write_private(path: &std::path::Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| format!("{}: {e}", path.display()))
}
