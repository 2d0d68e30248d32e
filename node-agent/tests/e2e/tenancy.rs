//! The tenant boundary (the README's "Security model"): what one namespace
//! may do to coffer must not reach another namespace, the node, or the
//! privileges of the agent and the controller. Each test is an attack that
//! worked before its fix, and checks that nothing outside its target
//! changed.

use coffer_node_agent::crd::{BackupRepository, Phase, RepositoryPhase, VolumeBackup};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DynamicObject, PostParams};
use kube::ResourceExt;
use serde_json::json;

use crate::harness::*;
use crate::snapshots::{fake_cluster, snapshot_backup, wait_cleaned};
use crate::{common, sim};

fn run_message(vb: &VolumeBackup) -> String {
    vb.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

async fn repository_message(env: &Env, ns: &str, name: &str) -> String {
    let r = env
        .wait_for::<BackupRepository>(ns, name, "NotReady", |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(RepositoryPhase::NotReady))
        })
        .await;
    r.status.unwrap().message.unwrap_or_default()
}

/// A pod `p` on `node_name` with one emptyDir `vol` holding a small tree.
async fn pod_with_data(env: &Env, node: &common::Node, ns: &str, node_name: &str) {
    let pod: Pod = env
        .create(
            ns,
            json!({
                "metadata": {"name": "p", "namespace": ns},
                "spec": {
                    "nodeName": node_name,
                    "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "vol", "mountPath": "/vol"}]}],
                    "volumes": [{"name": "vol", "emptyDir": {}}]
                }
            }),
        )
        .await;
    fill(&node.empty_dir(&pod.uid().unwrap(), "vol"), 41, 5);
    set_pod_running(env, ns, "p").await;
}

async fn set_pod_running(env: &Env, ns: &str, pod: &str) {
    Api::<Pod>::namespaced(env.client.clone(), ns)
        .patch_status(
            pod,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
}

async fn backup_of(env: &Env, ns: &str, name: &str, repository: &str) -> VolumeBackup {
    env.create::<VolumeBackup>(
        ns,
        json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"pod": "p", "volume": "vol", "repository": repository}}),
    )
    .await;
    env.wait_for::<VolumeBackup>(ns, name, "final", |v| is_final(&v.status))
        .await
}

/// Item 1: options that name a file, a credential endpoint or the node's
/// identity are refused, and a listener posing as STS receives nothing; a
/// file repository outside the administrator's directories is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_options_cannot_reach_files_credential_endpoints_or_other_paths() {
    let mut env = Env::new().await;
    let ns = env.namespace("tenant").await;
    let sts = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    sts.set_nonblocking(true).unwrap();
    let sts_url = format!("http://{}", sts.local_addr().unwrap());
    env.secret(&ns, "pw", "password", PASSWORD).await;
    let attacks = [
        (
            "sts",
            json!({"url": "s3://bucket/p", "passwordSecretRef": {"name": "pw", "key": "password"},
                   "options": {"s3.endpoint": "http://127.0.0.1:9",
                               "s3.role_arn": "arn:aws:iam::1:role/r",
                               "s3.web_identity_token_file": "/var/run/secrets/kubernetes.io/serviceaccount/token",
                               "s3.endpoint_url_sts": sts_url}}),
            "s3.endpoint_url_sts",
        ),
        (
            "ambient",
            json!({"url": "s3://bucket/p", "passwordSecretRef": {"name": "pw", "key": "password"},
                   "options": {"s3.endpoint": "http://127.0.0.1:9"}}),
            "no credentials",
        ),
        (
            "elsewhere",
            json!({"url": "file:///var/lib/kubelet/pods", "passwordSecretRef": {"name": "pw", "key": "password"},
                   "init": true}),
            "not at or below a directory the cluster's administrator allows",
        ),
        (
            "memory",
            json!({"url": "memory://", "passwordSecretRef": {"name": "pw", "key": "password"}, "init": true}),
            "in-memory repositories are for tests",
        ),
    ];
    for (name, spec, _) in &attacks {
        env.create::<BackupRepository>(
            &ns,
            json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "BackupRepository",
                   "metadata": {"name": name, "namespace": ns}, "spec": spec}),
        )
        .await;
    }
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    pod_with_data(&env, &node, &ns, &node_name).await;
    let _agent = Agent::start(&env, &AgentConfig::new(&node_name, &node));
    for (name, _, says) in &attacks {
        let run = backup_of(&env, &ns, &format!("via-{name}"), name).await;
        assert_eq!(
            phase(&run.status),
            Phase::Failed,
            "{name}: {:#?}",
            run.status
        );
        assert!(
            run_message(&run).contains(says),
            "{name}: {}",
            run_message(&run)
        );
        let m = repository_message(&env, &ns, name).await;
        assert!(m.contains(says), "{name}: {m}");
    }
    assert_eq!(
        sts.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the STS impostor was contacted"
    );
}

/// Item 4: a claim whose volumeName names another namespace's hostPath
/// volume (a local-path PV) does not get that volume's data backed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_cannot_borrow_another_namespace_s_volume() {
    let mut env = Env::new().await;
    let a = env.namespace("thief").await;
    let b = env.namespace("victim").await;
    env.repository(&a, "default", PASSWORD).await;
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    let host_dir = "/var/lib/local-path/pvc-b";
    let data = node.host_dir(host_dir);
    fill(&data, 42, 5);
    // b's claim and its volume, as the binder leaves them.
    let claim: PersistentVolumeClaim = env
        .create(
            &b,
            json!({"metadata": {"name": "data", "namespace": b},
                   "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-b",
                            "resources": {"requests": {"storage": "1Gi"}}},
                   "status": {"phase": "Bound"}}),
        )
        .await;
    Api::<PersistentVolume>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "pv-b"},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "hostPath": {"path": host_dir},
                         "claimRef": {"namespace": b, "name": "data", "uid": claim.uid()}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    // a names b's volume in its own claim (it even says Bound), and mounts it.
    env.create::<PersistentVolumeClaim>(
        &a,
        json!({"metadata": {"name": "data", "namespace": a},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-b",
                        "resources": {"requests": {"storage": "1Gi"}}},
               "status": {"phase": "Bound"}}),
    )
    .await;
    env.create::<Pod>(
        &a,
        json!({"metadata": {"name": "p", "namespace": a},
               "spec": {"nodeName": node_name,
                        "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "vol", "mountPath": "/vol"}]}],
                        "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": "data"}}]}}),
    )
    .await;
    set_pod_running(&env, &a, "p").await;
    let allow = ["/var/lib/local-path"];
    let cfg = AgentConfig {
        host_path_allow: &allow,
        ..AgentConfig::new(&node_name, &node)
    };
    let _agent = Agent::start(&env, &cfg);
    let run = backup_of(&env, &a, "steal", "default").await;
    assert_eq!(phase(&run.status), Phase::Failed, "{:#?}", run.status);
    assert!(
        run_message(&run).contains(&format!(
            "PersistentVolume pv-b is not bound to claim {a}/data"
        )),
        "{}",
        run_message(&run)
    );
    assert!(run.status.unwrap().snapshot_id.is_none());
}

/// Item 4: one object that does not parse (a `group.size` of 2^32, taken
/// by an API server whose schema did not bound it) stops neither the
/// agent's runs nor the controller's, in any other namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_object_that_does_not_parse_stops_nobody_else_s_runs() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let broken = env.namespace("broken").await;
    let ar = kube::api::ApiResource::erase::<VolumeBackup>(&());
    Api::<DynamicObject>::namespaced_with(env.client.clone(), &broken, &ar)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
                "metadata": {"name": "huge", "namespace": broken},
                "spec": {"pvc": "data", "method": "Snapshot",
                         "group": {"name": "g", "size": 4_294_967_296u64}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let _c = Controller::start(&env, "a", &[]);
    // The controller: a snapshot backup in another namespace completes.
    let ns = env.namespace("fine").await;
    env.repository(&ns, "default", PASSWORD).await;
    let data = env.dir.path().join(format!("csi/source/{ns}"));
    fill(&data, 43, 5);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    snapshot_backup(&env, &ns, "nightly", json!({"pvc": "data"})).await;
    let vb = wait_cleaned(&env, &ns, "nightly").await;
    assert_eq!(phase(&vb.status), Phase::Completed, "{:#?}", vb.status);
    // The agent: a volume backup in another namespace completes.
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    let other = env.namespace("also-fine").await;
    env.repository(&other, "default", PASSWORD).await;
    pod_with_data(&env, &node, &other, &node_name).await;
    let agent = Agent::start(&env, &AgentConfig::new(&node_name, &node));
    let run = backup_of(&env, &other, "daily", "default").await;
    assert_eq!(phase(&run.status), Phase::Completed, "{:#?}", run.status);
    // The broken object is left alone, and named in the logs.
    let agent_log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    assert!(
        agent_log.contains(&format!("{broken}/huge does not parse")),
        "{agent_log}"
    );
}

/// Item 6: a node agent's run in progress on a node that is gone is ended
/// by the controller, naming the node, after --lost-node-timeout (a
/// schedule with Forbid would otherwise skip for ever); a run on a Ready
/// node is left to its agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_a_node_that_is_gone_is_ended_naming_the_node() {
    let mut env = Env::new().await;
    let ns = env.namespace("lost").await;
    env.repository(&ns, "default", PASSWORD).await;
    Api::<k8s_openapi::api::core::v1::Node>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "alive"},
                "status": {"conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    for (run, node) in [("on-gone", "gone"), ("on-alive", "alive")] {
        env.create::<VolumeBackup>(
            &ns,
            json!({"apiVersion": "coffer.dev/v1alpha1", "kind": "VolumeBackup",
                   "metadata": {"name": run, "namespace": ns},
                   "spec": {"pod": "p", "volume": "vol"}}),
        )
        .await;
        // As the agent of that node claims a run.
        Api::<VolumeBackup>::namespaced(env.client.clone(), &ns)
            .patch_status(
                run,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"status": {"phase": "InProgress", "node": node,
                    "startTime": "2026-01-01T00:00:00Z"}})),
            )
            .await
            .unwrap();
    }
    let _c = Controller::start(&env, "a", &["--lost-node-timeout", "1s"]);
    let gone = env
        .wait_for::<VolumeBackup>(&ns, "on-gone", "final", |v| is_final(&v.status))
        .await;
    assert_eq!(phase(&gone.status), Phase::Failed, "{:#?}", gone.status);
    assert!(
        run_message(&gone).contains("node gone no longer exists"),
        "{}",
        run_message(&gone)
    );
    let alive = Api::<VolumeBackup>::namespaced(env.client.clone(), &ns)
        .get("on-alive")
        .await
        .unwrap();
    assert_eq!(phase(&alive.status), Phase::InProgress);
}

/// Item 5: Secrets and pods/exec are granted per namespace only (ClusterRole
/// coffer-tenant, bound by the namespace's admin). In a namespace that has
/// not opted in, a run fails saying so, with the command that opts it in,
/// and the agent read nothing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_has_not_opted_in_is_told_how_and_nothing_is_read() {
    let Some((mut env, _sim)) = fake_cluster().await else {
        return;
    };
    let ns = env.namespace_not_opted_in("closed").await;
    env.repository(&ns, "default", PASSWORD).await;
    let node = common::Node::new();
    let node_name = format!("node-{}", short_id());
    pod_with_data(&env, &node, &ns, &node_name).await;
    let _agent = Agent::start(&env, &AgentConfig::new(&node_name, &node));
    let _c = Controller::start(&env, "a", &[]);
    let opt_in = format!("kubectl -n {ns} create rolebinding coffer --clusterrole=coffer-tenant");
    let run = backup_of(&env, &ns, "by-agent", "default").await;
    assert_eq!(phase(&run.status), Phase::Failed, "{:#?}", run.status);
    let m = run_message(&run);
    assert!(
        m.contains(&format!(
            "namespace {ns} has not allowed coffer to read its Secrets"
        )) && m.contains(&opt_in),
        "{m}"
    );
    assert!(repository_message(&env, &ns, "default")
        .await
        .contains(&opt_in));
    // The controller cannot start a mover there either.
    let data = env.dir.path().join(format!("csi/source/{ns}"));
    fill(&data, 44, 3);
    sim::csi_pvc(&env, &ns, "data", "Filesystem", &data, json!({})).await;
    snapshot_backup(&env, &ns, "by-controller", json!({"pvc": "data"})).await;
    let vb = wait_cleaned(&env, &ns, "by-controller").await;
    assert_eq!(phase(&vb.status), Phase::Failed, "{:#?}", vb.status);
    assert!(run_message(&vb).contains(&opt_in), "{}", run_message(&vb));
    // Opted in, the same runs complete.
    env.opt_in(&ns).await;
    let run = backup_of(&env, &ns, "after", "default").await;
    assert_eq!(phase(&run.status), Phase::Completed, "{:#?}", run.status);
}
