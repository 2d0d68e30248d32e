//! An application restore (`coffer-agent mover restore-application`): the
//! objects of an application snapshot (SPEC.md §16), cleaned of what
//! belonged to the old cluster, created in this namespace in dependency
//! order with the rights of the pod's account (the namespace owner's
//! grant), each one's result recorded.
//!
//! Claims whose data the backup wrote are created with a `dataSourceRef` to
//! a RestoreSource naming that data's snapshot, so that the controller's
//! volume populator fills them before they bind; the workloads (and
//! everything ranked after the claims) are created only once those claims
//! are Bound, so no pod starts on an empty volume. A StatefulSet's claims
//! come back under their own names (`<template>-<set>-<ordinal>`), which is
//! what the StatefulSet looks for: it adopts them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use coffer_application::clean::{clean, not_restored, repoint_owners, CleanOptions};
use coffer_application::select::Selection;
use coffer_application::ApiResource as AppResource;
use coffer_engine::CancelToken;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::Scope as KubeScope;
use kube::Client;
use serde_json::{json, Value};

use crate::crd::SnapshotSource;
use crate::mover::RepoAccess;

/// What an existing object gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Existing {
    /// Left alone, and reported.
    #[default]
    None,
    /// Replaced by the backed-up object (its spec and data).
    Update,
}

/// One restore.
#[derive(Clone, Debug)]
pub struct ApplyJob {
    /// The namespace restored into (the restore's own).
    pub namespace: String,
    /// The ApplicationRestore.
    pub restore: String,
    /// Its uid: the RestoreSources it makes are owned by it.
    pub restore_uid: String,
    /// The repository read.
    pub repo: RepoAccess,
    /// Which snapshot.
    pub source: SnapshotSource,
    /// Which resources.
    pub selection: Selection,
    /// Only objects with all these labels.
    pub match_labels: BTreeMap<String, String>,
    /// What an existing object gets.
    pub existing: Existing,
    /// Storage classes renamed (old → new).
    pub storage_classes: BTreeMap<String, String>,
    /// Restore the claims' data (else claims are created empty).
    pub volume_data: bool,
    /// How long the restored claims may take to bind.
    pub bind_timeout: Duration,
}

pub use crate::crd::ObjectResult;

/// What a restore did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Applied {
    /// The snapshot read.
    pub snapshot_id: String,
    /// The namespace it was captured in.
    pub source_namespace: Option<String>,
    /// Every object's result, in creation order.
    pub results: Vec<ObjectResult>,
    /// The claims filled from their snapshots: (claim, snapshot).
    pub volumes: Vec<(String, String)>,
    /// The bytes of each filled claim's data, as its snapshot records them.
    pub volume_bytes: HashMap<String, u64>,
}

impl Applied {
    /// Results counted by kind of result.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut c = BTreeMap::new();
        for r in &self.results {
            *c.entry(r.result.clone()).or_default() += 1;
        }
        c
    }
}

fn label_of(group: &str, kind: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}

/// Whether `o`'s labels include all of `want`.
fn has_labels(o: &Value, want: &BTreeMap<String, String>) -> bool {
    want.iter()
        .all(|(k, v)| o["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

/// The RestoreSource that fills claim `pvc` from `snapshot`.
fn restore_source(job: &ApplyJob, name: &str, snapshot: &str) -> Value {
    json!({
        "apiVersion": "coffer.dev/v1alpha1",
        "kind": "RestoreSource",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": {
                crate::names::APPLICATION_RESTORE_LABEL: crate::names::label_value(&job.restore),
                "app.kubernetes.io/managed-by": "coffer-controller",
            },
            "ownerReferences": [{"apiVersion": "coffer.dev/v1alpha1", "kind": "ApplicationRestore",
                "name": job.restore, "uid": job.restore_uid}],
        },
        "spec": {"snapshot": {"id": snapshot}, "repository": job.repo.repository},
    })
}

/// The rank of claims in the restore order: what ranks after them waits
/// until the restored claims are bound.
fn claims_rank() -> u8 {
    coffer_application::order::rank("", "PersistentVolumeClaim")
}

/// Restores the application snapshot `job.source` names into
/// `job.namespace`.
pub async fn apply(
    client: &Client,
    job: &ApplyJob,
    cancel: &CancelToken,
) -> Result<Applied, String> {
    let repo = job.repo.open(client).await?;
    let (id, snap) = crate::snapshot_source::find_application_snapshot(
        &repo,
        &job.source,
        &job.namespace,
        &job.repo.repository,
    )
    .await?;
    let index = repo.load_index().await.map_err(|e| e.to_string())?;
    let short = id.chars().take(8).collect::<String>();
    let app = coffer_application::read::read(&repo, &index, &snap, &short).await?;
    let volumes: HashMap<String, String> = app.volumes().into_iter().collect();
    // Only the groups the snapshot uses, each on its own: one aggregated
    // API that is down fails its own objects, not the restore.
    let mut groups: HashMap<String, Result<kube::discovery::ApiGroup, String>> = HashMap::new();
    for (place, _) in &app.objects {
        if !groups.contains_key(&place.group) {
            let found = kube::discovery::group(client, &place.group)
                .await
                .map_err(|e| e.to_string());
            groups.insert(place.group.clone(), found);
        }
    }
    let opts = CleanOptions {
        namespace: job.namespace.clone(),
        from_namespace: app.namespace.clone(),
        storage_classes: job.storage_classes.clone(),
    };
    let mut results = Vec::new();
    let mut todo = Vec::new();
    for (place, o) in app.objects {
        let what = label_of(&place.group, &place.kind);
        let skip = |results: &mut Vec<ObjectResult>, why: String| {
            results.push(ObjectResult {
                kind: what.clone(),
                name: place.name.clone(),
                result: "Skipped".into(),
                message: Some(why),
            })
        };
        let served = match groups.get(&place.group) {
            Some(Ok(g)) => g
                .versioned_resources(&place.version)
                .into_iter()
                .find(|(ar, _)| ar.kind == place.kind),
            Some(Err(e)) => {
                results.push(ObjectResult {
                    kind: what.clone(),
                    name: place.name.clone(),
                    result: "Failed".into(),
                    message: Some(format!("discovery of its API group failed: {e}")),
                });
                continue;
            }
            None => None,
        };
        let Some((ar, caps)) = served else {
            results.push(ObjectResult {
                kind: what.clone(),
                name: place.name.clone(),
                result: "Failed".into(),
                message: Some(format!(
                    "this cluster serves no {}/{} {}: install its CustomResourceDefinition (recorded under cluster/ in the snapshot) first",
                    if place.group.is_empty() { "core" } else { &place.group },
                    place.version,
                    place.kind
                )),
            });
            continue;
        };
        if caps.scope != KubeScope::Namespaced {
            // A hostile snapshot's: a restore creates only namespaced objects.
            skip(
                &mut results,
                "cluster-scoped in this cluster: a restore creates only namespaced objects".into(),
            );
            continue;
        }
        let resource = AppResource {
            group: ar.group.clone(),
            version: ar.version.clone(),
            kind: ar.kind.clone(),
            plural: ar.plural.clone(),
            namespaced: caps.scope == KubeScope::Namespaced,
            verbs: vec!["get".into(), "list".into()],
        };
        if !job.selection.lists(&resource) || !job.selection.keeps(&place.kind, &o) {
            continue;
        }
        if !has_labels(&o, &job.match_labels) {
            continue;
        }
        if let Some(why) = not_restored(&place.kind, &o) {
            skip(&mut results, why.to_string());
            continue;
        }
        let c = clean(&place.kind, &o, &opts);
        todo.push((place, ar, c));
    }
    coffer_application::order::sort(&mut todo, |(p, _, _)| (&p.group, &p.kind, &p.name));
    let mut uids: HashMap<(String, String), String> = HashMap::new();
    let mut filled = Vec::new();
    let mut waited = false;
    for (place, ar, mut c) in todo {
        if cancel.is_cancelled() {
            return Err("canceled".into());
        }
        let what = label_of(&place.group, &place.kind);
        if !waited && coffer_application::order::rank(&place.group, &place.kind) > claims_rank() {
            wait_bound(client, job, &filled).await?;
            waited = true;
        }
        repoint_owners(&mut c, |kind, name| {
            uids.get(&(kind.to_string(), name.to_string())).cloned()
        });
        let mut message = None;
        if place.group == "rbac.authorization.k8s.io" && place.kind == "RoleBinding" {
            let outside = coffer_application::clean::outside_subjects(&c, &job.namespace);
            if !outside.is_empty() {
                message = Some(format!(
                    "grants rights in this namespace to subjects outside it: {}",
                    outside.join(", ")
                ));
            }
        }
        if place.group.is_empty() && place.kind == "PersistentVolumeClaim" && job.volume_data {
            if let Some(snapshot) = volumes.get(&place.name) {
                let source = crate::names::object_name(&["coffer", &job.restore, &place.name]);
                let rs: DynamicObject =
                    serde_json::from_value(restore_source(job, &source, snapshot))
                        .map_err(|e| e.to_string())?;
                let rs_ar = kube::discovery::ApiResource::erase::<crate::crd::RestoreSource>(&());
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &job.namespace, &rs_ar);
                let created = match api.create(&PostParams::default(), &rs).await {
                    Ok(_) => Ok(()),
                    // Ours from a pass before, or another's of the same name.
                    Err(kube::Error::Api(e)) if e.code == 409 => match api.get(&source).await {
                        Ok(found)
                            if found
                                .metadata
                                .owner_references
                                .iter()
                                .flatten()
                                .any(|o| o.uid == job.restore_uid)
                                && found.data["spec"]["snapshot"]["id"].as_str()
                                    == Some(snapshot.as_str()) =>
                        {
                            Ok(())
                        }
                        Ok(_) => Err(format!(
                            "RestoreSource {source} exists and is not this restore's: delete it, or name this restore otherwise"
                        )),
                        Err(e) => Err(format!("RestoreSource {source} for its data: {}", reason(&e))),
                    },
                    Err(e) => Err(format!("RestoreSource {source} for its data: {}", reason(&e))),
                };
                if let Err(why) = created {
                    results.push(ObjectResult {
                        kind: what,
                        name: place.name.clone(),
                        result: "Failed".into(),
                        message: Some(why),
                    });
                    continue;
                }
                let Some(spec) = c.get_mut("spec").and_then(Value::as_object_mut) else {
                    results.push(ObjectResult {
                        kind: what,
                        name: place.name.clone(),
                        result: "Failed".into(),
                        message: Some("its spec is not an object: the snapshot is damaged".into()),
                    });
                    continue;
                };
                spec.insert(
                    "dataSourceRef".into(),
                    json!({"apiGroup": "coffer.dev", "kind": "RestoreSource", "name": source}),
                );
                message = Some(format!("data from snapshot {}", &snapshot[..8]));
                filled.push((place.name.clone(), snapshot.clone()));
            }
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &job.namespace, &ar);
        let obj: DynamicObject = match serde_json::from_value(c.clone()) {
            Ok(o) => o,
            Err(e) => {
                filled.retain(|(n, _)| n != &place.name);
                results.push(ObjectResult {
                    kind: what,
                    name: place.name.clone(),
                    result: "Failed".into(),
                    message: Some(format!("not a valid object: {e}")),
                });
                continue;
            }
        };
        let created = api.create(&PostParams::default(), &obj).await;
        let exists = match &created {
            Err(kube::Error::Api(e)) if e.code == 409 => true,
            // Kubernetes authorizes before it looks: an account that may
            // not create an object that is already there hears RBAC's 403
            // (not admission's, not a terminating namespace's).
            Err(kube::Error::Api(e))
                if e.code == 403 && e.message.contains("cannot create resource") =>
            {
                matches!(api.get_opt(&place.name).await,
                    Ok(Some(o)) if o.metadata.deletion_timestamp.is_none())
            }
            _ => false,
        };
        let (result, uid) = match created {
            Ok(made) => ("Created", made.metadata.uid),
            Err(_) if exists => match job.existing {
                Existing::None => {
                    // A claim restored earlier keeps its data: not ours to fill.
                    filled.retain(|(n, _)| n != &place.name);
                    message =
                        Some("already exists; left as it is (existingResourcePolicy None)".into());
                    let uid = api
                        .get_opt(&place.name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|o| o.metadata.uid);
                    ("Existing", uid)
                }
                Existing::Update => {
                    filled.retain(|(n, _)| n != &place.name);
                    match update(&api, &place.name, c).await {
                        Ok(uid) => ("Updated", uid),
                        Err(e) => {
                            message = Some(e);
                            ("Failed", None)
                        }
                    }
                }
            },
            Err(e) => {
                filled.retain(|(n, _)| n != &place.name);
                message = Some(reason(&e));
                ("Failed", None)
            }
        };
        if let Some(uid) = uid {
            uids.insert((place.kind.clone(), place.name.clone()), uid);
        }
        results.push(ObjectResult {
            kind: what,
            name: place.name.clone(),
            result: result.into(),
            message,
        });
    }
    if !waited {
        wait_bound(client, job, &filled).await?;
    }
    let mut volume_bytes = HashMap::new();
    for (_, snapshot) in &filled {
        if let Ok((_, s)) = repo.find_snapshot(snapshot).await {
            volume_bytes.insert(snapshot.clone(), s.summary.total_bytes_processed);
        }
    }
    Ok(Applied {
        snapshot_id: id,
        source_namespace: app.namespace,
        results,
        volumes: filled,
        volume_bytes,
    })
}

/// Replaces `name` by backed-up object `c` (at the existing object's
/// version); its uid.
async fn update(
    api: &Api<DynamicObject>,
    name: &str,
    mut c: Value,
) -> Result<Option<String>, String> {
    let current = api.get(name).await.map_err(|e| reason(&e))?;
    c["metadata"]["resourceVersion"] = json!(current.metadata.resource_version);
    // What the cluster assigned stays (a claim's volume, a Service's IPs).
    if let Some(spec) = c["spec"].as_object_mut() {
        let old = serde_json::to_value(&current).unwrap_or_default();
        for keep in ["volumeName", "clusterIP", "clusterIPs", "selector"] {
            if spec.get(keep).is_none() && !old["spec"][keep].is_null() {
                spec.insert(keep.into(), old["spec"][keep].clone());
            }
        }
        if old["kind"] == "PersistentVolumeClaim" {
            // A bound claim's spec cannot change; its labels may.
            c["spec"] = old["spec"].clone();
        }
    }
    let obj: DynamicObject = serde_json::from_value(c).map_err(|e| e.to_string())?;
    api.replace(name, &PostParams::default(), &obj)
        .await
        .map(|o| o.metadata.uid)
        .map_err(|e| reason(&e))
}

/// Waits until every claim of `filled` is Bound (at most
/// `job.bind_timeout`), so that no workload starts on an empty volume.
async fn wait_bound(
    client: &Client,
    job: &ApplyJob,
    filled: &[(String, String)],
) -> Result<(), String> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &job.namespace);
    let deadline = tokio::time::Instant::now() + job.bind_timeout;
    for (name, _) in filled {
        let bound = kube::runtime::wait::await_condition(
            api.clone(),
            name,
            |c: Option<&PersistentVolumeClaim>| {
                c.and_then(|c| c.status.as_ref()?.phase.as_deref()) == Some("Bound")
            },
        );
        match tokio::time::timeout_at(deadline, bound).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("waiting for PVC {}/{name} to bind: {e}", job.namespace)),
            Err(_) => {
                return Err(format!(
                    "PVC {}/{name} was not filled and bound within {}: see its Events and the VolumeRestore the populator made for it; the workloads were not created",
                    job.namespace,
                    humantime::format_duration(job.bind_timeout)
                ))
            }
        }
    }
    Ok(())
}

/// The API server's words.
fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// The results a status lists: every failure first (up to
/// [`crate::crd::MAX_RESULTS`]), then the others in creation order.
pub fn listed(results: &[ObjectResult]) -> Vec<&ObjectResult> {
    let failed = results.iter().filter(|r| r.result == "Failed");
    let rest = results.iter().filter(|r| r.result != "Failed");
    failed.chain(rest).take(crate::crd::MAX_RESULTS).collect()
}

/// Writes what `done` restored into the ApplicationRestore's status (its
/// mover's one right there); the controller ends it.
pub async fn report(client: &Client, job: &ApplyJob, done: &Applied) -> Result<(), String> {
    use crate::crd::ApplicationRestore;
    let fields = json!({
        "snapshotID": done.snapshot_id,
        "sourceNamespace": done.source_namespace,
        "objects": {
            "counts": done.counts(),
            "results": listed(&done.results),
        },
        "volumes": done.volumes.iter().map(|(pvc, s)| {
            json!({"pvc": pvc, "snapshotID": s, "bytes": done.volume_bytes.get(s)})
        }).collect::<Vec<_>>(),
    });
    let what = format!(
        "the status of ApplicationRestore {}/{}",
        job.namespace, job.restore
    );
    crate::mover::capture::write_status::<ApplicationRestore>(
        client,
        &job.namespace,
        &job.restore,
        fields,
        &what,
    )
    .await
}
