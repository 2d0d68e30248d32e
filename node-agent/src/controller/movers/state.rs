//! What a mover pod's status says about its fate, pure.

use k8s_openapi::api::core::v1::Pod;

/// Why a mover pod will never finish its work, when its status already
/// says so: it failed, it is being deleted (evicted, drained, or its node
/// was lost), it cannot be scheduled, or its container cannot start.
/// `None` while it may still run (or ran to the end).
pub fn mover_failure(pod: &Pod) -> Option<String> {
    let name = format!(
        "mover pod {}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let st = pod.status.clone().unwrap_or_default();
    if st.phase.as_deref() == Some("Succeeded") {
        return None;
    }
    if pod.metadata.deletion_timestamp.is_some() && st.phase.as_deref() != Some("Failed") {
        // Only cleanup deletes a mover, after its run ended: this one is
        // going for another reason and will not finish (a node that died
        // leaves it Terminating until the node comes back).
        let why = st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
            .map(|c| {
                let reason = c.reason.as_deref().unwrap_or("deleted");
                match c.message.as_deref().filter(|m| !m.is_empty()) {
                    Some(m) => format!("{reason}: {m}"),
                    None => reason.to_string(),
                }
            })
            .unwrap_or_else(|| "deleted or evicted".into());
        return Some(format!(
            "{name} is being deleted before it finished ({why})"
        ));
    }
    let containers = st.container_statuses.iter().flatten();
    if st.phase.as_deref() == Some("Failed") {
        let why = containers
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
            .map(|t| {
                let mut s = format!("exit code {}", t.exit_code);
                if let Some(r) = &t.reason {
                    s.push_str(&format!(" ({r})"));
                }
                if let Some(m) = t
                    .message
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                {
                    s.push_str(&format!(": {}", last_line(m)));
                }
                s
            })
            .next()
            .or_else(|| st.message.clone())
            .or_else(|| st.reason.clone())
            .unwrap_or_else(|| "no reason given".into());
        return Some(format!("{name} failed: {why}"));
    }
    for c in st.conditions.iter().flatten() {
        if c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && !c.message.as_deref().is_some_and(waits_for_its_claim)
        {
            return Some(format!(
                "{name} cannot be scheduled: {}",
                c.message.as_deref().unwrap_or("no node fits")
            ));
        }
    }
    for c in containers {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.as_deref().unwrap_or_default();
        // Not `ErrImagePull`: a first pull can fail on a passing registry
        // error; the kubelet says `ImagePullBackOff` seconds later if the
        // next one fails too.
        if matches!(
            reason,
            "ImagePullBackOff"
                | "InvalidImageName"
                | "CreateContainerConfigError"
                | "CreateContainerError"
        ) {
            return Some(format!(
                "{name} cannot start: {reason}: {}",
                w.message.as_deref().unwrap_or_default()
            ));
        }
    }
    None
}

/// Whether the scheduler's reason is only that the pod's claim is not bound
/// yet (a clone or restore target still being provisioned): the scheduler
/// tries again once it binds, so this is left to `--prepare-timeout`.
pub(crate) fn waits_for_its_claim(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("unbound immediate persistentvolumeclaims")
        || (m.contains("persistentvolumeclaim") && m.contains("not found"))
}

/// A mount the kubelet reports it can never make, from a pod's events: a
/// hostPath of type `Directory` that is missing on the node (a `file://`
/// repository that is not there). Other mount failures may pass (a volume
/// still attaching) and are left to `--prepare-timeout`.
pub fn permanent_mount_failure(events: &[k8s_openapi::api::core::v1::Event]) -> Option<String> {
    events
        .iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("FailedMount")
        })
        .filter_map(|e| e.message.as_deref())
        .find(|m| m.contains("hostPath type check failed"))
        .map(|m| format!("FailedMount: {m}"))
}

/// Whether a mover pod's container has started (preparation is over).
pub fn mover_started(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running" | "Succeeded" | "Failed")
    )
}

/// The last non-empty line of a message (a mover's log ends with its error).
pub(crate) fn last_line(m: &str) -> &str {
    m.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "m", "namespace": "ns"}, "status": status}),
        )
        .unwrap()
    }

    #[test]
    fn a_missing_host_path_is_a_permanent_mount_failure_and_an_attaching_volume_is_not() {
        let event = |type_: &str, reason: &str, message: &str| {
            serde_json::from_value::<k8s_openapi::api::core::v1::Event>(json!({
                "metadata": {"name": "e"}, "involvedObject": {},
                "type": type_, "reason": reason, "message": message
            }))
            .unwrap()
        };
        let attaching = event(
            "Warning",
            "FailedMount",
            "Unable to attach or mount volumes: unmounted volumes=[source]: timed out waiting for the condition",
        );
        let missing = event(
            "Warning",
            "FailedMount",
            r#"MountVolume.SetUp failed for volume "repository" : hostPath type check failed: /srv/backup is not a directory"#,
        );
        let normal = event("Normal", "Scheduled", "hostPath type check failed (quoted)");
        assert_eq!(permanent_mount_failure(&[attaching.clone(), normal]), None);
        assert_eq!(
            permanent_mount_failure(&[attaching, missing]).unwrap(),
            r#"FailedMount: MountVolume.SetUp failed for volume "repository" : hostPath type check failed: /srv/backup is not a directory"#
        );
    }

    #[test]
    fn mover_failures_are_read_from_conditions_and_container_states() {
        assert_eq!(mover_failure(&pod(json!({"phase": "Pending"}))), None);
        assert_eq!(mover_failure(&pod(json!({"phase": "Succeeded"}))), None);
        let unsched = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory."}]}),
        );
        assert_eq!(
            mover_failure(&unsched).unwrap(),
            "mover pod ns/m cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory."
        );
        // The clone is still being provisioned: the scheduler tries again.
        for message in [
            "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.",
            r#"persistentvolumeclaim "coffer-clone-x" not found"#,
        ] {
            let waiting = pod(
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": message}]}),
            );
            assert_eq!(mover_failure(&waiting), None, "{message}");
        }
        let waiting = |reason: &str| {
            pod(
                json!({"phase": "Pending", "containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": "pulling x"}}}]}),
            )
        };
        assert_eq!(mover_failure(&waiting("ErrImagePull")), None);
        assert_eq!(mover_failure(&waiting("ContainerCreating")), None);
        let pull = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off pulling x"}}}]}),
        );
        assert!(mover_failure(&pull)
            .unwrap()
            .contains("ImagePullBackOff: back-off pulling x"));
        let failed = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error",
            "message": "starting\nrepository: wrong password\n"}}}]}),
        );
        assert_eq!(
            mover_failure(&failed).unwrap(),
            "mover pod ns/m failed: exit code 1 (Error): repository: wrong password"
        );
        let evicted = pod(
            json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on memory."}),
        );
        assert!(mover_failure(&evicted)
            .unwrap()
            .ends_with("The node was low on memory."));
        assert!(!mover_started(&unsched) && mover_started(&failed));
    }

    #[test]
    fn a_mover_deleted_before_it_finished_fails_naming_why() {
        let deleted = |status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "m", "namespace": "ns",
                "deletionTimestamp": "2026-12-03T10:00:00Z"}, "status": status}))
            .unwrap()
        };
        // Its node was lost: the taint manager evicts it and it stays
        // Terminating, Running as far as the API server knows.
        let lost = deleted(
            json!({"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True",
            "reason": "DeletionByTaintManager", "message": "Taint manager: deleting due to NoExecute taint"}]}),
        );
        assert_eq!(
            mover_failure(&lost).unwrap(),
            "mover pod ns/m is being deleted before it finished (DeletionByTaintManager: Taint manager: deleting due to NoExecute taint)"
        );
        assert!(mover_failure(&deleted(json!({"phase": "Pending"})))
            .unwrap()
            .ends_with("(deleted or evicted)"));
        // One that finished is not a failure while it goes, nor is one that
        // failed described twice.
        assert_eq!(mover_failure(&deleted(json!({"phase": "Succeeded"}))), None);
        assert!(
            mover_failure(&deleted(json!({"phase": "Failed", "message": "boom"})))
                .unwrap()
                .ends_with("failed: boom")
        );
    }
}
