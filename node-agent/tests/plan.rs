//! Golden test of the volume planner over a real kubelet layout on disk:
//! every kind of volume a pod can have, with bind mounts and a loop device
//! (as root). The expected plans are in `testdata/plan.golden`; set
//! `COFFER_UPDATE_GOLDEN=1` to rewrite it after a deliberate change.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use coffer_node_agent::node::kubelet::read_listing;
use coffer_node_agent::node::plan::{plan_pod, NodeConfig, VolumePlan};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use serde_json::json;

const UID: &str = "0b7c5d9e-1111-4c2a-9a77-5f0e8d6f0001";

fn pod() -> Pod {
    let vols = [
        json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}),
        json!({"name": "cache", "emptyDir": {}}),
        json!({"name": "logs", "hostPath": {"path": "/var/lib/rancher/k3s/storage/logs"}}),
        json!({"name": "etc", "hostPath": {"path": "/etc"}}),
        json!({"name": "sneaky", "hostPath": {"path": "/var/lib/rancher/k3s/storage/../../../etc"}}),
        json!({"name": "token", "projected": {"sources": []}}),
        json!({"name": "config", "configMap": {"name": "db-config"}}),
        json!({"name": "creds", "secret": {"secretName": "db"}}),
        json!({"name": "podinfo", "downwardAPI": {"items": []}}),
        json!({"name": "spare", "emptyDir": {}}),
        json!({"name": "pending", "persistentVolumeClaim": {"claimName": "pending"}}),
        json!({"name": "missing", "persistentVolumeClaim": {"claimName": "nope"}}),
        json!({"name": "share", "nfs": {"server": "nfs.example", "path": "/export"}}),
        json!({"name": "local", "persistentVolumeClaim": {"claimName": "local"}}),
        json!({"name": "ebs", "persistentVolumeClaim": {"claimName": "ebs"}}),
        json!({"name": "gce", "persistentVolumeClaim": {"claimName": "gce"}}),
        json!({"name": "raw", "persistentVolumeClaim": {"claimName": "raw"}}),
        json!({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}),
        json!({"name": "k3s", "persistentVolumeClaim": {"claimName": "k3s"}}),
        json!({"name": "late", "persistentVolumeClaim": {"claimName": "late"}}),
        json!({"name": "inline-csi", "csi": {"driver": "secrets-store.csi.k8s.io"}}),
        // A claim whose volumeName names another namespace's local-path PV.
        json!({"name": "stolen", "persistentVolumeClaim": {"claimName": "stolen"}}),
    ];
    let mounts: Vec<_> = vols
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .filter(|n| *n != "spare" && *n != "raw")
        .map(|n| json!({"name": n, "mountPath": format!("/mnt/{n}")}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "db-0",
            "namespace": "team-a",
            "uid": UID,
            "labels": {"app": "db"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                "uid": "5", "controller": true
            }]
        },
        "spec": {
            "nodeName": "node-1",
            "initContainers": [{"name": "init", "image": "busybox",
                "volumeMounts": [{"name": "data", "mountPath": "/init-data"}]}],
            "containers": [
                {"name": "db", "image": "mysql",
                 "volumeMounts": [{"name": "data", "mountPath": "/var/lib/mysql"}],
                 "volumeDevices": [{"name": "raw", "devicePath": "/dev/xvdb"}]},
                {"name": "sidecar", "image": "busybox", "volumeMounts": mounts}
            ],
            "volumes": vols
        },
        "status": {"phase": "Running"}
    }))
    .unwrap()
}

/// A claim of team-a (uid `uid-NAME`), Bound when it names a volume.
fn pvc(name: &str, pv: Option<&str>, class: &str) -> (String, PersistentVolumeClaim) {
    let mut spec = json!({"storageClassName": class});
    let mut status = json!({"phase": "Pending"});
    if let Some(pv) = pv {
        spec["volumeName"] = json!(pv);
        status = json!({"phase": "Bound"});
    }
    (
        name.to_string(),
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}")},
            "spec": spec,
            "status": status
        }))
        .unwrap(),
    )
}

/// A volume bound to claim `ns/claim` (as the PV binder records it).
fn pv(
    name: &str,
    (ns, claim): (&str, &str),
    source: serde_json::Value,
    mode: &str,
) -> (String, PersistentVolume) {
    let mut spec = source;
    spec["volumeMode"] = json!(mode);
    spec["claimRef"] = json!({"kind": "PersistentVolumeClaim", "namespace": ns, "name": claim,
        "uid": format!("uid-{claim}")});
    (
        name.to_string(),
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap(),
    )
}

fn render(plans: &[VolumePlan], root: &std::path::Path) -> String {
    let root = root.display().to_string();
    let mut out = String::new();
    for p in plans {
        let line = match p {
            Ok(p) => {
                let o = &p.origin;
                format!(
                    "{}: backup {:?} {} path={} record={} host={:?} origin=cluster:{:?} ns:{:?} pod:{:?} owner:{:?} pvc:{:?} pv:{:?} class:{:?} mode:{:?} node:{:?} volume:{:?} parent={:?}",
                    p.volume,
                    p.source,
                    p.mode.as_str(),
                    p.path.display(),
                    p.record_path.display(),
                    p.host_path,
                    o.cluster, o.namespace, o.pod, o.owner, o.pvc, o.pv, o.storage_class, o.volume_mode, o.node, o.volume,
                    p.parent_filter(),
                )
            }
            Err(s) => format!("{}: skip {:?}: {}", s.volume, s.reason, s.message),
        };
        out.push_str(&line.replace(&root, "$ROOT"));
        out.push('\n');
    }
    out
}

#[test]
fn every_volume_kind_on_a_real_kubelet_layout() {
    if !common::is_root() {
        eprintln!("skipped: needs root for bind mounts and loop devices");
        return;
    }
    let mut node = common::Node::new();
    // What the kubelet has set up for this pod.
    node.mounted(UID, "volumes/kubernetes.io~csi/pv-data/mount");
    node.empty_dir(UID, "cache");
    node.empty_dir(UID, "spare");
    node.host_dir("/var/lib/rancher/k3s/storage/logs");
    node.host_dir("/var/lib/rancher/k3s/storage/pvc-k3s_team-a_k3s");
    node.host_dir("/var/lib/rancher/k3s/storage/pvc-x_team-b_data");
    node.mounted(UID, "volumes/kubernetes.io~nfs/share");
    node.mounted(UID, "volumes/kubernetes.io~local-volume/pv-local");
    node.mounted(UID, "volumes/kubernetes.io~aws-ebs/pv-ebs");
    // A GCE PD migrated to CSI: the kubelet uses the CSI layout.
    node.mounted(UID, "volumes/kubernetes.io~csi/pv-gce/mount");
    node.block(UID, "volumeDevices/kubernetes.io~csi/pv-raw", 1 << 20)
        .expect("losetup");
    node.mounted(UID, "volumes/kubernetes.io~csi/pv-scratch/mount");
    // "late": the kubelet made the directory but has not mounted it yet.
    std::fs::create_dir_all(
        node.pod_dir(UID)
            .join("volumes/kubernetes.io~csi/pv-late/mount"),
    )
    .unwrap();
    node.mounted(UID, "volumes/kubernetes.io~csi/inline-csi/mount");

    let pvcs: BTreeMap<_, _> = [
        pvc("data-db-0", Some("pv-data"), "fast"),
        pvc("pending", None, "fast"),
        pvc("local", Some("pv-local"), "local"),
        pvc("ebs", Some("pv-ebs"), "gp2"),
        pvc("gce", Some("pv-gce"), "standard"),
        pvc("raw", Some("pv-raw"), "fast"),
        pvc("db-0-scratch", Some("pv-scratch"), "fast"),
        pvc("k3s", Some("pv-k3s"), "local-path"),
        pvc("late", Some("pv-late"), "fast"),
        pvc("stolen", Some("pv-theirs"), "local-path"),
    ]
    .into_iter()
    .collect();
    let pvs: BTreeMap<_, _> = [
        pv(
            "pv-data",
            ("team-a", "data-db-0"),
            json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}}),
            "Filesystem",
        ),
        pv(
            "pv-local",
            ("team-a", "local"),
            json!({"local": {"path": "/mnt/disks/ssd1"}}),
            "Filesystem",
        ),
        pv(
            "pv-ebs",
            ("team-a", "ebs"),
            json!({"awsElasticBlockStore": {"volumeID": "vol-2"}}),
            "Filesystem",
        ),
        pv(
            "pv-gce",
            ("team-a", "gce"),
            json!({"gcePersistentDisk": {"pdName": "disk-1"}}),
            "Filesystem",
        ),
        pv(
            "pv-raw",
            ("team-a", "raw"),
            json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-3"}}),
            "Block",
        ),
        pv(
            "pv-scratch",
            ("team-a", "db-0-scratch"),
            json!({"csi": {"driver": "pd.csi.storage.gke.io", "volumeHandle": "v"}}),
            "Filesystem",
        ),
        pv(
            "pv-k3s",
            ("team-a", "k3s"),
            json!({"hostPath": {"path": "/var/lib/rancher/k3s/storage/pvc-k3s_team-a_k3s"}}),
            "Filesystem",
        ),
        pv(
            "pv-late",
            ("team-a", "late"),
            json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-4"}}),
            "Filesystem",
        ),
        // team-b's data, under an allowed host path.
        pv(
            "pv-theirs",
            ("team-b", "data"),
            json!({"hostPath": {"path": "/var/lib/rancher/k3s/storage/pvc-x_team-b_data"}}),
            "Filesystem",
        ),
    ]
    .into_iter()
    .collect();
    let cfg = NodeConfig {
        kubelet_root: node.kubelet(),
        host_root: Some(node.host()),
        host_path_allow: vec![PathBuf::from("/var/lib/rancher/k3s/storage")],
        cluster: Some("prod-eu".into()),
        node: "node-1".into(),
    };
    let listing = read_listing(&node.kubelet(), UID).unwrap();
    let plans = plan_pod(&pod(), &pvcs, &pvs, &listing, &cfg);
    let got = render(&plans, node.dir.path());
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/plan.golden");
    if std::env::var("COFFER_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(got, want, "plans differ from {}", golden.display());

    // The same pod before the kubelet has done anything: every volume is
    // skipped with a reason, none is a failure.
    let empty = plan_pod(&pod(), &pvcs, &pvs, &Default::default(), &cfg);
    for p in &empty {
        if let Err(s) = p {
            assert!(!s.message.is_empty());
        }
    }
    let planned: Vec<_> = empty
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|p| p.volume.clone())
        .collect();
    // Only hostPath volumes do not depend on the kubelet's directory.
    assert_eq!(planned, ["logs", "k3s"]);
}

/// A PV-backed volume is read only when its claim is Bound, the PV's
/// claimRef names that very claim (namespace, name, uid), and the pod runs.
#[test]
fn a_volume_is_a_claim_s_only_when_bound_to_it_and_its_pod_runs() {
    use coffer_node_agent::node::plan::bound_to;
    let p = pod();
    let (_, claim) = pvc("data-db-0", Some("pv-data"), "fast");
    let (_, vol) = pv("pv-data", ("team-a", "data-db-0"), json!({}), "Filesystem");
    assert_eq!(bound_to(&p, "data-db-0", &claim, &vol), Ok(()));
    // Another namespace's claim, another claim, another uid (a claim deleted
    // and made again), no claimRef at all.
    for (ns, name, uid) in [
        ("team-b", "data-db-0", "uid-data-db-0"),
        ("team-a", "other", "uid-data-db-0"),
        ("team-a", "data-db-0", "uid-old"),
    ] {
        let mut v = vol.clone();
        let r = v.spec.as_mut().unwrap().claim_ref.as_mut().unwrap();
        r.namespace = Some(ns.into());
        r.name = Some(name.into());
        r.uid = Some(uid.into());
        let e = bound_to(&p, "data-db-0", &claim, &v).unwrap_err();
        assert!(e.contains("not bound to claim team-a/data-db-0"), "{e}");
        assert!(e.contains(ns) && e.contains(uid), "{e}");
    }
    let mut v = vol.clone();
    v.spec.as_mut().unwrap().claim_ref = None;
    assert!(bound_to(&p, "data-db-0", &claim, &v)
        .unwrap_err()
        .contains("no claim"));
    let (_, pending) = pvc("data-db-0", None, "fast");
    let e = bound_to(&p, "data-db-0", &pending, &vol).unwrap_err();
    assert!(e.contains("not Bound (Pending)"), "{e}");
    let mut done = pod();
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let e = bound_to(&done, "data-db-0", &claim, &vol).unwrap_err();
    assert!(e.contains("not running (Succeeded)"), "{e}");
}

#[test]
fn a_deployment_pod_is_known_by_its_deployment() {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "web-5d8f7c-abcde", "namespace": "team-a", "uid": "u",
            "labels": {"pod-template-hash": "5d8f7c"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-5d8f7c", "uid": "1", "controller": true}]
        }
    }))
    .unwrap();
    assert_eq!(
        coffer_node_agent::pods::owner_of(&p).as_deref(),
        Some("Deployment/web")
    );
    let bare: Pod = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    assert_eq!(coffer_node_agent::pods::owner_of(&bare), None);
}
