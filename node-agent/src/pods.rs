//! What a pod spec says about its volumes and its owner, read the same way by
//! the node agent (which volume to back up, and its origin) and the
//! controller (which claim a run names, and which claims form a workload).

use k8s_openapi::api::core::v1::{Pod, Volume};

/// The PVC names a pod refers to (its own claims and generic ephemeral
/// volumes' claims), for the caller to fetch.
pub fn claim_names(pod: &Pod) -> Vec<String> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(|vs| vs.iter().filter_map(|v| claim_of(&pod_name, v)).collect())
        .unwrap_or_default()
}

/// The PVC behind volume `volume` of a pod: `None` when the pod has no such
/// volume, `Some(None)` when the volume is not a claim.
pub fn volume_claim(pod: &Pod, volume: &str) -> Option<Option<String>> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .find(|v| v.name == volume)
        .map(|v| claim_of(&pod_name, v))
}

/// The PVC behind one volume of pod `pod_name`: its claim, or the claim a
/// generic ephemeral volume gets; `None` for any other kind of volume.
pub fn claim_of(pod_name: &str, v: &Volume) -> Option<String> {
    if let Some(c) = &v.persistent_volume_claim {
        return Some(c.claim_name.clone());
    }
    // Generic ephemeral volumes: the PVC is named <pod>-<volume>.
    v.ephemeral
        .as_ref()
        .map(|_| format!("{pod_name}-{}", v.name))
}

/// The pod's controlling workload as `Kind/name`; a ReplicaSet made by a
/// Deployment is named by its Deployment (its name minus the pod template
/// hash), so that a rollout keeps the same origin.
pub fn owner_of(pod: &Pod) -> Option<String> {
    let r = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))?;
    if r.kind == "ReplicaSet" {
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if let Some(base) = hash.and_then(|h| r.name.strip_suffix(&format!("-{h}"))) {
            return Some(format!("Deployment/{base}"));
        }
    }
    Some(format!("{}/{}", r.kind, r.name))
}
