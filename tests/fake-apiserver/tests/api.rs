//! The fake API server as kube-rs and kubectl see it.

use std::path::PathBuf;
use std::time::Duration;

use coffer_fake_apiserver::{kubeconfig_yaml, service_account_kubeconfig_yaml, FakeServer};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

async fn setup() -> (FakeServer, Client) {
    let server = FakeServer::start("127.0.0.1:0".parse().expect("address parses"))
        .await
        .expect("server starts");
    let config = kube::Config::new(server.url.parse().expect("URL parses"));
    let client = Client::try_from(config).expect("client builds");
    (server, client)
}

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test object deserializes")
}

fn config_map(name: &str, labels: Value, data: Value) -> ConfigMap {
    from_json(json!({"metadata": {"name": name, "labels": labels}, "data": data}))
}

fn pod(name: &str, app: &str, node: &str) -> Pod {
    from_json(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Pending"},
    }))
}

/// The status code of a failed call.
fn api_code<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The next watcher event; the timeout only keeps a broken server from hanging the suite.
async fn next_event<K>(
    stream: &mut (impl Stream<Item = watcher::Result<Event<K>>> + Unpin),
) -> Event<K> {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("an event arrives")
        .expect("the stream goes on")
        .expect("the watcher reports no error")
}

#[tokio::test]
async fn create_with_generate_name_and_dry_run() {
    let (_server, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut cm = config_map("", json!({}), json!({"k": "v"}));
    cm.metadata.name = None;
    cm.metadata.generate_name = Some("gen-".into());
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let name = created.name_any();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(created.uid().map(|u| u.len()), Some(36));
    assert!(created.metadata.creation_timestamp.is_some());
    assert!(created
        .resource_version()
        .is_some_and(|rv| rv.parse::<u64>().is_ok()));
    assert_eq!(cms.get(&name).await.expect("get").uid(), created.uid());

    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let planned = config_map("planned", json!({}), json!({}));
    cms.create(&dry, &planned).await.expect("dry-run create");
    assert_eq!(api_code(cms.get("planned").await), (404, "NotFound".into()));
    assert_eq!(
        api_code(cms.create(&PostParams::default(), &created).await).0,
        409
    );
    let mut nameless = planned.clone();
    nameless.metadata.name = None;
    assert_eq!(
        api_code(cms.create(&PostParams::default(), &nameless).await).0,
        422
    );
}

#[tokio::test]
async fn get_missing_is_not_found() {
    let (_server, client) = setup().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    match pods.get("x").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.reason, "NotFound");
            assert_eq!(status.message, "pods \"x\" not found");
        }
        other => panic!("expected 404, got {other:?}"),
    }
    assert!(pods.get_opt("x").await.expect("get_opt").is_none());
    let ns: Api<Namespace> = Api::all(client);
    assert!(
        ns.get("default").await.is_ok(),
        "the default namespace exists"
    );
}

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    let (_server, client) = setup().await;
    let default: Api<Pod> = Api::namespaced(client.clone(), "default");
    let other: Api<Pod> = Api::namespaced(client.clone(), "other");
    let pp = PostParams::default();
    default
        .create(&pp, &pod("p1", "web", "n1"))
        .await
        .expect("create p1");
    default
        .create(&pp, &pod("p2", "web", "n2"))
        .await
        .expect("create p2");
    other
        .create(&pp, &pod("p3", "db", "n1"))
        .await
        .expect("create p3");
    let all: Api<Pod> = Api::all(client);
    let names = |list: kube::core::ObjectList<Pod>| {
        list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    };
    let cases = [
        (ListParams::default(), vec!["p1", "p2", "p3"]),
        (
            ListParams::default().fields("spec.nodeName=n1"),
            vec!["p1", "p3"],
        ),
        (
            ListParams::default().fields("spec.nodeName!=n1"),
            vec!["p2"],
        ),
        (ListParams::default().labels("app=web"), vec!["p1", "p2"]),
        (
            ListParams::default()
                .labels("app=web")
                .fields("spec.nodeName==n1"),
            vec!["p1"],
        ),
        (
            ListParams::default().labels("app in (db,cache)"),
            vec!["p3"],
        ),
        (
            ListParams::default().labels("app notin (db),!missing"),
            vec!["p1", "p2"],
        ),
        (
            ListParams::default().fields("metadata.namespace=other"),
            vec!["p3"],
        ),
        (
            ListParams::default().fields("status.phase=Pending,metadata.name=p2"),
            vec!["p2"],
        ),
    ];
    for (lp, expected) in cases {
        let list = all.list(&lp).await.expect("list");
        assert!(list.metadata.resource_version.is_some());
        assert_eq!(
            names(list),
            expected,
            "{:?} {:?}",
            lp.label_selector,
            lp.field_selector
        );
    }
    let metadata = all
        .list_metadata(&ListParams::default().labels("app=db"))
        .await;
    let metadata = metadata.expect("list_metadata");
    assert_eq!(metadata.items.len(), 1);
    assert_eq!(metadata.items[0].metadata.name.as_deref(), Some("p3"));
    let one = other.get_metadata("p3").await.expect("get_metadata");
    assert_eq!(
        one.metadata
            .labels
            .unwrap_or_default()
            .get("app")
            .map(String::as_str),
        Some("db")
    );
    assert_eq!(
        names(default.list(&ListParams::default()).await.expect("list")),
        ["p1", "p2"]
    );
}

async fn watcher_follows_changes(config: watcher::Config) {
    let (_server, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    cms.create(&pp, &config_map("first", json!({"app": "web"}), json!({})))
        .await
        .expect("create");
    cms.create(&pp, &config_map("other", json!({"app": "db"}), json!({})))
        .await
        .expect("create");
    let mut events = watcher::watcher(cms.clone(), config.labels("app=web")).boxed();
    assert!(matches!(next_event(&mut events).await, Event::Init));
    match next_event(&mut events).await {
        Event::InitApply(cm) => assert_eq!(cm.name_any(), "first"),
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(next_event(&mut events).await, Event::InitDone));

    cms.create(&pp, &config_map("second", json!({"app": "web"}), json!({})))
        .await
        .expect("create");
    match next_event(&mut events).await {
        Event::Apply(cm) => assert_eq!(cm.name_any(), "second"),
        other => panic!("expected Apply(second), got {other:?}"),
    }
    let data = Patch::Merge(json!({"data": {"k": "v"}}));
    cms.patch("second", &PatchParams::default(), &data)
        .await
        .expect("patch");
    match next_event(&mut events).await {
        Event::Apply(cm) => assert_eq!(
            cm.data.and_then(|d| d.get("k").cloned()).as_deref(),
            Some("v")
        ),
        other => panic!("expected Apply with data, got {other:?}"),
    }
    // Changes outside the selector are not seen; an object leaving it is a deletion.
    cms.patch("other", &PatchParams::default(), &data)
        .await
        .expect("patch other");
    let leave = Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}}));
    cms.patch("first", &PatchParams::default(), &leave)
        .await
        .expect("relabel");
    match next_event(&mut events).await {
        Event::Delete(cm) => assert_eq!(cm.name_any(), "first"),
        other => panic!("expected Delete(first), got {other:?}"),
    }
    cms.delete("second", &DeleteParams::default())
        .await
        .expect("delete");
    match next_event(&mut events).await {
        Event::Delete(cm) => assert_eq!(cm.name_any(), "second"),
        other => panic!("expected Delete(second), got {other:?}"),
    }
}

#[tokio::test]
async fn watcher_with_list_then_watch() {
    watcher_follows_changes(watcher::Config::default()).await;
}

#[tokio::test]
async fn watcher_with_streaming_lists() {
    watcher_follows_changes(watcher::Config::default().streaming_lists()).await;
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_expired() {
    let (server, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = cms
        .create(
            &PostParams::default(),
            &config_map("a", json!({}), json!({})),
        )
        .await
        .expect("create");
    let before = created.resource_version().expect("a resourceVersion");
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await
    .expect("patch");
    // Before compaction the change after `before` is replayed.
    let mut replay = cms
        .watch(&WatchParams::default().timeout(1), &before)
        .await
        .expect("watch")
        .boxed();
    match replay.next().await {
        Some(Ok(WatchEvent::Modified(cm))) => assert_eq!(cm.name_any(), "a"),
        other => panic!("expected the replayed change, got {other:?}"),
    }
    server.compact();
    let mut stream = cms
        .watch(&WatchParams::default(), &before)
        .await
        .expect("watch")
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected a 410 error event, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "the stream ends after 410");
}

#[tokio::test]
async fn replace_with_stale_resource_version_conflicts() {
    let (_server, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    let original = cms
        .create(&pp, &config_map("c", json!({}), json!({"v": "1"})))
        .await
        .expect("create");
    let mut fresh = original.clone();
    fresh.data = Some([("v".to_string(), "2".to_string())].into());
    let replaced = cms.replace("c", &pp, &fresh).await.expect("replace");
    assert_ne!(replaced.resource_version(), original.resource_version());
    assert_eq!(replaced.uid(), original.uid());
    assert_eq!(
        replaced.metadata.creation_timestamp,
        original.metadata.creation_timestamp
    );
    let (code, reason) = api_code(cms.replace("c", &pp, &original).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let stale = Patch::Merge(
        json!({"metadata": {"resourceVersion": original.resource_version()}, "data": {"v": "3"}}),
    );
    assert_eq!(
        api_code(cms.patch("c", &PatchParams::default(), &stale).await).0,
        409
    );
    // Without a resourceVersion the write is unconditional; a write that changes nothing
    // keeps the version.
    fresh.metadata.resource_version = None;
    let again = cms
        .replace("c", &pp, &fresh)
        .await
        .expect("unconditional replace");
    assert_eq!(again.resource_version(), replaced.resource_version());
    assert_eq!(
        api_code(
            cms.replace("missing", &pp, &config_map("missing", json!({}), json!({})))
                .await
        )
        .0,
        404
    );
}

#[tokio::test]
async fn merge_json_strategic_and_apply_patches() {
    let (_server, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let pp = PatchParams::default();
    let data = |cm: &ConfigMap| {
        cm.data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect::<Vec<_>>()
    };
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());

    let apply = PatchParams::apply("coffer-test").force();
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p"}, "data": {"a": "1"}});
    let created = cms
        .patch("p", &apply, &Patch::Apply(&config))
        .await
        .expect("apply creates");
    assert_eq!(data(&created), [pair("a", "1")]);

    let merged = cms
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"data": {"a": null, "b": "2"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(data(&merged), [pair("b", "2")]);

    let ops: Value = json!([{"op": "add", "path": "/data/c", "value": "3"}, {"op": "test", "path": "/data/b", "value": "2"}]);
    let patched = cms
        .patch("p", &pp, &Patch::Json::<()>(from_json(ops)))
        .await
        .expect("json patch");
    assert_eq!(data(&patched), [pair("b", "2"), pair("c", "3")]);
    let failing: Value = json!([{"op": "test", "path": "/data/b", "value": "nope"}]);
    assert_eq!(
        api_code(
            cms.patch("p", &pp, &Patch::Json::<()>(from_json(failing)))
                .await
        )
        .0,
        422
    );

    let labelled = cms
        .patch(
            "p",
            &pp,
            &Patch::Strategic(json!({"metadata": {"labels": {"l": "x"}}})),
        )
        .await
        .expect("strategic merge patch");
    assert_eq!(labelled.labels().get("l").map(String::as_str), Some("x"));

    let reapplied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p"}, "data": {"d": "4"}});
    let applied = cms
        .patch("p", &apply, &Patch::Apply(&reapplied))
        .await
        .expect("apply merges");
    assert_eq!(
        data(&applied),
        [pair("b", "2"), pair("c", "3"), pair("d", "4")]
    );
    let missing = cms
        .patch("nothing", &pp, &Patch::Merge(json!({"data": {}})))
        .await;
    assert_eq!(api_code(missing).0, 404);
}

#[tokio::test]
async fn status_subresource_is_isolated() {
    let (_server, client) = setup().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let created = pods
        .create(&PostParams::default(), &pod("s", "web", "n1"))
        .await
        .expect("create");
    let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone());
    let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    assert_eq!(
        phase(&created),
        Some("Pending".into()),
        "a created object keeps its status"
    );

    let status_patch =
        Patch::Merge(json!({"status": {"phase": "Running"}, "spec": {"nodeName": "elsewhere"}}));
    let after_status = pods
        .patch_status("s", &PatchParams::default(), &status_patch)
        .await
        .expect("patch_status");
    assert_eq!(phase(&after_status), Some("Running".into()));
    assert_eq!(
        node(&after_status),
        Some("n1".into()),
        "patch_status leaves spec alone"
    );
    assert_eq!(after_status.metadata.generation, Some(1));

    let spec_patch =
        Patch::Merge(json!({"status": {"phase": "Failed"}, "spec": {"activeDeadlineSeconds": 5}}));
    let after_spec = pods
        .patch("s", &PatchParams::default(), &spec_patch)
        .await
        .expect("patch");
    assert_eq!(
        phase(&after_spec),
        Some("Running".into()),
        "a spec patch leaves status alone"
    );
    assert_eq!(
        after_spec
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds),
        Some(5)
    );
    assert_eq!(after_spec.metadata.generation, Some(2));

    let mut replaced = after_spec.clone();
    replaced.status.as_mut().expect("status").phase = Some("Succeeded".into());
    replaced.spec.as_mut().expect("spec").node_name = Some("n9".into());
    let after_replace = pods
        .replace_status("s", &PostParams::default(), &replaced)
        .await
        .expect("replace_status");
    assert_eq!(phase(&after_replace), Some("Succeeded".into()));
    assert_eq!(node(&after_replace), Some("n1".into()));
}

#[tokio::test]
async fn finalizers_delay_deletion() {
    let (_server, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut cm = config_map("held", json!({}), json!({}));
    cm.metadata.finalizers = Some(vec!["coffer.dev/cleanup".into()]);
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let marked = cms
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let marked = marked
        .left()
        .expect("the object comes back while finalizers remain");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let still = cms.get("held").await.expect("still there");
    assert!(still.metadata.deletion_timestamp.is_some());
    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    cms.patch("held", &PatchParams::default(), &release)
        .await
        .expect("remove finalizer");
    assert_eq!(api_code(cms.get("held").await).0, 404);
    assert_eq!(
        api_code(cms.delete("held", &DeleteParams::default()).await).0,
        404
    );
}

#[tokio::test]
async fn deletion_collects_dependents_and_namespace_contents() {
    let (_server, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let owner = cms
        .create(&pp, &config_map("owner", json!({}), json!({})))
        .await
        .expect("create owner");
    let owned_by = |o: &ConfigMap, name: &str| {
        let mut cm = config_map(name, json!({}), json!({}));
        cm.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: o.name_any(),
            uid: o.uid().expect("uid"),
            ..OwnerReference::default()
        }]);
        cm
    };
    let child = cms
        .create(&pp, &owned_by(&owner, "child"))
        .await
        .expect("create child");
    cms.create(&pp, &owned_by(&child, "grandchild"))
        .await
        .expect("create grandchild");
    cms.create(&pp, &config_map("bystander", json!({}), json!({})))
        .await
        .expect("create bystander");
    cms.delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    for name in ["owner", "child", "grandchild"] {
        assert_eq!(api_code(cms.get(name).await).0, 404, "{name} is gone");
    }
    assert!(cms.get("bystander").await.is_ok());

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&pp, &from_json(json!({"metadata": {"name": "doomed"}})))
        .await
        .expect("create ns");
    let inside: Api<ConfigMap> = Api::namespaced(client, "doomed");
    inside
        .create(&pp, &config_map("x", json!({}), json!({})))
        .await
        .expect("create inside");
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete ns");
    assert_eq!(api_code(inside.get("x").await).0, 404);
    assert_eq!(api_code(namespaces.get("doomed").await).0, 404);
}

/// As Kubernetes does: a namespace whose contents are held by a finalizer
/// stays `Terminating` and refuses new content until the last of them is
/// gone; then it goes, and its name can be used again.
#[tokio::test]
async fn a_namespace_terminates_until_its_last_object_is_gone() {
    let (_server, client) = setup().await;
    let pp = PostParams::default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = || from_json::<Namespace>(json!({"metadata": {"name": "slow"}}));
    namespaces.create(&pp, &ns()).await.expect("create ns");
    let inside: Api<ConfigMap> = Api::namespaced(client, "slow");
    let mut held = config_map("held", json!({}), json!({}));
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    inside.create(&pp, &held).await.expect("create held");
    inside
        .create(&pp, &config_map("free", json!({}), json!({})))
        .await
        .expect("create free");
    namespaces
        .delete("slow", &DeleteParams::default())
        .await
        .expect("delete ns");
    assert_eq!(api_code(inside.get("free").await).0, 404);
    let terminating = namespaces.get("slow").await.expect("still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(
        terminating.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    let refused = inside
        .create(&pp, &config_map("new", json!({}), json!({})))
        .await;
    let Err(kube::Error::Api(e)) = refused else {
        panic!("created in a Terminating namespace: {refused:?}")
    };
    assert_eq!(e.code, 403);
    assert!(
        e.message.contains(
            "unable to create new content in namespace slow because it is being terminated"
        ),
        "{}",
        e.message
    );
    // Admission answers before storage: 403, also for a name that exists.
    assert_eq!(
        api_code(inside.create(&pp, &held).await),
        (403, "Forbidden".to_string())
    );
    inside
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove finalizer");
    assert_eq!(api_code(inside.get("held").await).0, 404);
    assert_eq!(api_code(namespaces.get("slow").await).0, 404);
    namespaces.create(&pp, &ns()).await.expect("the name again");
    inside
        .create(&pp, &config_map("new", json!({}), json!({})))
        .await
        .expect("content again");
}

/// A small custom resource, as the agent defines its own.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "test.coffer.dev",
    version = "v1",
    kind = "Gadget",
    namespaced,
    status = "GadgetStatus"
)]
pub struct GadgetSpec {
    size: u32,
}

/// The status of a [`Gadget`].
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct GadgetStatus {
    ready: bool,
}

#[tokio::test]
async fn custom_resource_definition_serves_its_type() {
    let (_server, client) = setup().await;
    let gadgets: Api<Gadget> = Api::namespaced(client.clone(), "default");
    assert_eq!(
        api_code(gadgets.list(&ListParams::default()).await).0,
        404,
        "not served before the CRD"
    );

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .create(&PostParams::default(), &Gadget::crd())
        .await
        .expect("create CRD");
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    for kind in ["Established", "NamesAccepted"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == kind && c.status == "True"),
            "{kind}"
        );
    }

    let created = gadgets
        .create(
            &PostParams::default(),
            &Gadget::new("g", GadgetSpec { size: 3 }),
        )
        .await
        .expect("create gadget");
    assert_eq!(created.metadata.generation, Some(1));
    let status = Patch::Merge(json!({"status": {"ready": true}, "spec": {"size": 99}}));
    let patched = gadgets
        .patch_status("g", &PatchParams::default(), &status)
        .await
        .expect("patch_status");
    assert!(patched.status.as_ref().is_some_and(|s| s.ready));
    assert_eq!(patched.spec.size, 3);
    let listed = gadgets.list(&ListParams::default()).await.expect("list");
    assert_eq!(listed.items.len(), 1);

    crds.delete(&crd.metadata.name.expect("name"), &DeleteParams::default())
        .await
        .expect("delete CRD");
    assert_eq!(api_code(gadgets.get("g").await).0, 404);
}

#[tokio::test]
async fn kubeconfig_helper_works_with_kube() {
    let (server, _) = setup().await;
    let yaml = kubeconfig_yaml(&server.url, "team-a");
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config loads");
    assert_eq!(config.default_namespace, "team-a");
    let client = Client::try_from(config).expect("client builds");
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.git_version, "v1.33.0");
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let cm = cms
        .create(
            &PostParams::default(),
            &config_map("k", json!({}), json!({})),
        )
        .await
        .expect("create");
    assert_eq!(cm.metadata.namespace.as_deref(), Some("team-a"));
}

#[tokio::test]
async fn a_lost_nodes_pod_stays_terminating_until_a_force_deletion() {
    let (server, client) = setup().await;
    server.leave_pod_deletions_unconfirmed("default");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("p", "web", "gone"))
        .await
        .expect("create");
    pods.delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    let p = pods.get("p").await.expect("still there");
    assert!(p.metadata.deletion_timestamp.is_some(), "{p:?}");
    pods.delete("p", &DeleteParams::default())
        .await
        .expect("again");
    assert!(pods.get_opt("p").await.expect("get").is_some());
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete("p", &force).await.expect("force");
    assert!(pods.get_opt("p").await.expect("get").is_none());
}

/// A client that authenticates as the ServiceAccount `account` in `ns`.
async fn service_account_client(server: &FakeServer, ns: &str, account: &str) -> Client {
    let yaml = service_account_kubeconfig_yaml(&server.url, ns, account);
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config loads");
    Client::try_from(config).expect("client builds")
}

#[tokio::test]
async fn a_service_account_may_do_only_what_its_roles_allow() {
    let (server, admin) = setup().await;
    let ns = "team-a";
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    for name in ["mine", "theirs"] {
        cms.create(
            &PostParams::default(),
            &config_map(name, json!({}), json!({})),
        )
        .await
        .expect("admin creates");
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    pods.create(&PostParams::default(), &pod("p", "web", "n1"))
        .await
        .expect("admin creates");
    let create = |plural: &str, body: Value| {
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            admin.clone(),
            ns,
            &kube::api::ApiResource {
                group: "rbac.authorization.k8s.io".into(),
                version: "v1".into(),
                api_version: "rbac.authorization.k8s.io/v1".into(),
                kind: String::new(),
                plural: plural.into(),
            },
        );
        async move {
            api.create(&PostParams::default(), &from_json(body))
                .await
                .expect("admin creates RBAC objects");
        }
    };
    create(
        "roles",
        json!({"metadata": {"name": "mover"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["mine"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
        ]}),
    )
    .await;
    create(
        "rolebindings",
        json!({"metadata": {"name": "mover"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mover"},
            "subjects": [{"kind": "ServiceAccount", "name": "mover", "namespace": ns}]}),
    )
    .await;

    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    for name in ["mover", "other"] {
        accounts
            .create(
                &PostParams::default(),
                &from_json(json!({"metadata": {"name": name}})),
            )
            .await
            .expect("admin creates");
    }

    let mover = service_account_client(&server, ns, "mover").await;
    let as_mover: Api<ConfigMap> = Api::namespaced(mover.clone(), ns);
    as_mover.get("mine").await.expect("its own object");
    let patch = Patch::Merge(json!({"data": {"k": "v"}}));
    as_mover
        .patch("mine", &PatchParams::default(), &patch)
        .await
        .expect("a verb its Role lists");
    let refused = |r: kube::Result<ConfigMap>| match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (code, message) = refused(as_mover.get("theirs").await);
    assert_eq!(code, 403);
    assert_eq!(
        message,
        "configmaps \"theirs\" is forbidden: User \"system:serviceaccount:team-a:mover\" \
         cannot get resource \"configmaps\" in API group \"\" in the namespace \"team-a\""
    );
    assert_eq!(
        refused(
            as_mover
                .delete("mine", &DeleteParams::default())
                .await
                .map(|_| ConfigMap::default())
        )
        .0,
        403,
        "a verb its Role does not list"
    );
    match as_mover.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "a named rule never allows a list"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let elsewhere: Api<ConfigMap> = Api::namespaced(mover.clone(), "default");
    assert_eq!(
        refused(elsewhere.get("mine").await).0,
        403,
        "another namespace"
    );

    // A subresource is its own resource: the status, not the pod.
    let as_mover: Api<Pod> = Api::namespaced(mover.clone(), ns);
    let status = Patch::Merge(json!({"status": {"phase": "Running"}}));
    as_mover
        .patch_status("p", &PatchParams::default(), &status)
        .await
        .expect("pods/status");
    match as_mover.patch("p", &PatchParams::default(), &status).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "pods is not pods/status"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // pods/exec is `create` on the subresource: refused without it, then
    // allowed by a RoleBinding of a ClusterRole in this namespace only (as
    // a namespace opts in to coffer with ClusterRole coffer-tenant).
    let ap = kube::api::AttachParams::default().stderr(false);
    match as_mover.exec("p", ["true"], &ap).await {
        Err(e) => assert!(
            e.to_string().contains("403") || e.to_string().contains("forbidden"),
            "{e}"
        ),
        Ok(_) => panic!("exec without pods/exec"),
    }
    let cluster: Api<kube::api::DynamicObject> = Api::all_with(
        admin.clone(),
        &kube::api::ApiResource {
            group: "rbac.authorization.k8s.io".into(),
            version: "v1".into(),
            api_version: "rbac.authorization.k8s.io/v1".into(),
            kind: String::new(),
            plural: "clusterroles".into(),
        },
    );
    cluster
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "exec"}, "rules": [
                {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]})),
        )
        .await
        .expect("admin creates");
    create(
        "rolebindings",
        json!({"metadata": {"name": "exec"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "exec"},
            "subjects": [{"kind": "ServiceAccount", "name": "mover", "namespace": ns}]}),
    )
    .await;
    let mut run = as_mover
        .exec("p", ["true"], &ap)
        .await
        .expect("exec allowed");
    let st = run.take_status().expect("status").await.expect("a status");
    assert_eq!(st.status.as_deref(), Some("Success"));
    // Another account, and the admin, are unaffected by the Role.
    let other = service_account_client(&server, ns, "other").await;
    assert_eq!(
        refused(Api::<ConfigMap>::namespaced(other, ns).get("mine").await).0,
        403
    );
    cms.get("theirs")
        .await
        .expect("the admin token is not a service account");

    // A deleted account's token no longer authenticates.
    accounts
        .delete("mover", &DeleteParams::default())
        .await
        .expect("delete");
    match Api::<ConfigMap>::namespaced(mover, ns).get("mine").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // A pod may only name an account that exists, as the ServiceAccount
    // admission plugin sees to.
    let mut p = pod("q", "web", "n1");
    p.spec.as_mut().unwrap().service_account_name = Some("mover".into());
    match pods.create(&PostParams::default(), &p).await {
        Err(kube::Error::Api(s)) => assert_eq!(
            (s.code, s.message.as_str()),
            (403, "pods \"q\" is forbidden: error looking up service account team-a/mover: serviceaccount \"mover\" not found")
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    p.spec.as_mut().unwrap().service_account_name = Some("other".into());
    pods.create(&PostParams::default(), &p)
        .await
        .expect("an existing account");
}

/// The label that names a namespace's Pod Security level.
const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Creates namespace `name`, labelled to enforce Pod Security `level` (unlabelled for `None`),
/// and returns its pods.
async fn pods_enforcing(client: &Client, name: &str, level: Option<&str>) -> Api<Pod> {
    let labels = level.map_or_else(|| json!({}), |level| json!({ ENFORCE: level }));
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": name, "labels": labels}})),
        )
        .await
        .expect("namespace created");
    Api::namespaced(client.clone(), name)
}

/// A pod with one container of the same name, with `pod_security` and `container_security`
/// as their securityContexts, and `volumes`.
fn secured_pod(name: &str, pod_security: Value, container_security: Value, volumes: Value) -> Pod {
    from_json(json!({
        "metadata": {"name": name},
        "spec": {
            "securityContext": pod_security,
            "containers": [{"name": name, "image": "busybox", "securityContext": container_security}],
            "volumes": volumes,
        },
    }))
}

/// The code and message of a refused call.
fn refusal<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.reason, "Forbidden", "{}", status.message);
            (status.code, status.message)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn pod_security_restricted_refuses_a_root_pod_and_admits_a_hardened_one() {
    let (_server, client) = setup().await;
    let pods = pods_enforcing(&client, "apps", Some("restricted")).await;
    let root = secured_pod(
        "mover",
        json!({}),
        json!({"runAsUser": 0, "capabilities": {"add": ["DAC_READ_SEARCH"]}}),
        json!([]),
    );
    let expected = (
        403,
        "pods \"mover\" is forbidden: violates PodSecurity \"restricted:latest\": \
         allowPrivilegeEscalation != false (container \"mover\" must set securityContext.allowPrivilegeEscalation=false), \
         unrestricted capabilities (container \"mover\" must set securityContext.capabilities.drop=[\"ALL\"]; \
         container \"mover\" must not include \"DAC_READ_SEARCH\" in securityContext.capabilities.add), \
         runAsNonRoot != true (pod or container \"mover\" must set securityContext.runAsNonRoot=true), \
         runAsUser=0 (container \"mover\" must not set runAsUser=0), \
         seccompProfile (pod or container \"mover\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
            .to_string(),
    );
    let before = pods.list(&ListParams::default()).await.expect("list");
    assert_eq!(
        refusal(pods.create(&PostParams::default(), &root).await),
        expected
    );
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    assert_eq!(refusal(pods.create(&dry, &root).await), expected);
    // Nothing was stored, and the resourceVersion did not move: no watcher heard of it.
    assert_eq!(api_code(pods.get("mover").await).0, 404);
    let after = pods.list(&ListParams::default()).await.expect("list");
    assert!(after.items.is_empty());
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );

    let hardened = secured_pod(
        "app",
        json!({"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}),
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}),
        json!([
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "scratch", "emptyDir": {}},
        ]),
    );
    pods.create(&PostParams::default(), &hardened)
        .await
        .expect("a hardened pod is admitted");
    assert!(pods.get("app").await.is_ok());

    // Only pods are enforced: a workload with a privileged template is stored (Kubernetes
    // only warns about it).
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "apps");
    let privileged: Deployment = from_json(json!({
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"hostNetwork": true, "containers": [{"name": "web", "securityContext": {"privileged": true}}]},
            },
        },
    }));
    deployments
        .create(&PostParams::default(), &privileged)
        .await
        .expect("workloads are not enforced");

    // A level Kubernetes does not know counts as restricted.
    let unknown = pods_enforcing(&client, "typo", Some("restrcted")).await;
    let (code, message) = refusal(unknown.create(&PostParams::default(), &root).await);
    assert_eq!(code, 403);
    assert!(
        message.starts_with(
            "pods \"mover\" is forbidden: violates PodSecurity \"restricted:latest\": "
        ),
        "{message}"
    );
}

#[tokio::test]
async fn pod_security_baseline_refuses_host_access_and_extra_capabilities() {
    let (_server, client) = setup().await;
    let pods = pods_enforcing(&client, "apps", Some("baseline")).await;
    let cases = [
        (
            secured_pod(
                "host",
                json!({}),
                json!({}),
                json!([{"name": "root", "hostPath": {"path": "/"}}]),
            ),
            "hostPath volumes (volume \"root\")",
        ),
        (
            secured_pod("priv", json!({}), json!({"privileged": true}), json!([])),
            "privileged (container \"priv\" must not set securityContext.privileged=true)",
        ),
        (
            secured_pod(
                "admin",
                json!({}),
                json!({"capabilities": {"add": ["SYS_ADMIN"]}}),
                json!([]),
            ),
            "non-default capabilities (container \"admin\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add)",
        ),
        (
            secured_pod(
                "reader",
                json!({"runAsUser": 0}),
                json!({"capabilities": {"add": ["DAC_READ_SEARCH"]}}),
                json!([]),
            ),
            "non-default capabilities (container \"reader\" must not include \"DAC_READ_SEARCH\" in securityContext.capabilities.add)",
        ),
    ];
    for (pod, violation) in cases {
        let name = pod.name_any();
        assert_eq!(
            refusal(pods.create(&PostParams::default(), &pod).await),
            (
                403,
                format!("pods \"{name}\" is forbidden: violates PodSecurity \"baseline:latest\": {violation}")
            )
        );
        assert_eq!(api_code(pods.get(&name).await).0, 404);
    }
    // Root with capabilities from the runtime's default set meets baseline.
    let root = secured_pod(
        "mover",
        json!({"runAsUser": 0}),
        json!({"capabilities": {"add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]}}),
        json!([]),
    );
    pods.create(&PostParams::default(), &root)
        .await
        .expect("baseline admits the default capabilities");
}

#[tokio::test]
async fn pod_security_privileged_or_unlabelled_namespaces_admit_any_pod() {
    let (_server, client) = setup().await;
    let anything = || {
        from_json::<Pod>(json!({
            "metadata": {"name": "node-agent"},
            "spec": {
                "hostNetwork": true,
                "hostPID": true,
                "securityContext": {"runAsUser": 0},
                "containers": [{"name": "agent", "image": "busybox",
                    "ports": [{"containerPort": 9100, "hostPort": 9100}],
                    "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}}],
                "volumes": [{"name": "kubelet", "hostPath": {"path": "/var/lib/kubelet"}}],
            },
        }))
    };
    for (ns, level) in [("system", Some("privileged")), ("plain", None)] {
        let pods = pods_enforcing(&client, ns, level).await;
        pods.create(&PostParams::default(), &anything())
            .await
            .expect("admitted");
    }
    // A namespace that does not exist enforces nothing either.
    Api::<Pod>::namespaced(client.clone(), "nowhere")
        .create(&PostParams::default(), &anything())
        .await
        .expect("admitted");

    // The label is read at each creation: relabelled, the namespace refuses the next pod.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": { ENFORCE: "baseline" }}})),
        )
        .await
        .expect("relabelled");
    let pods: Api<Pod> = Api::namespaced(client, "plain");
    let mut again = anything();
    again.metadata.name = Some("node-agent-2".into());
    assert_eq!(
        refusal(pods.create(&PostParams::default(), &again).await),
        (
            403,
            "pods \"node-agent-2\" is forbidden: violates PodSecurity \"baseline:latest\": \
             non-default capabilities (container \"agent\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add), \
             host namespaces (hostNetwork, hostPID), \
             hostPath volumes (volume \"kubelet\"), \
             hostPort (container \"agent\" uses hostPort 9100), \
             privileged (container \"agent\" must not set securityContext.privileged=true)"
                .to_string()
        )
    );
    assert!(pods.get("node-agent").await.is_ok(), "stored pods stay");
}

#[test]
fn binary_prints_its_url_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url_file = dir.path().join("url");
    /// Kills the server if the test fails before it stops by itself, so that no stray process
    /// keeps the test's output pipe open.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Running(
        std::process::Command::new(env!("CARGO_BIN_EXE_coffer-fake-apiserver"))
            .arg("--url-file")
            .arg(&url_file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("binary starts"),
    );
    let stdout = child.0.stdout.take().expect("stdout is piped");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first)
        .expect("read URL");
    assert!(first.starts_with("http://127.0.0.1:"), "{first}");
    let written = std::fs::read_to_string(&url_file).expect("URL file");
    assert_eq!(written, first);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    assert!(
        child.0.wait().expect("wait").success(),
        "SIGTERM is a clean exit"
    );
}

/// `kubectl` from `$KUBECTL`, or the first on `PATH`.
fn find_kubectl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
}

const MANIFEST: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
data:
  greeting: hello
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
    subresources: {status: {}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_and_get() {
    let Some(kubectl) = find_kubectl() else {
        println!("kubectl not found: skipped");
        return;
    };
    let (server, client) = setup().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_yaml(&server.url, "default")).expect("write kubeconfig");
    let manifest = dir.path().join("manifest.yaml");
    std::fs::write(&manifest, MANIFEST).expect("write manifest");
    let cache = dir.path().join("cache");
    let run = move |args: Vec<String>| {
        let kubectl = kubectl.clone();
        let (kubeconfig, cache) = (kubeconfig.clone(), cache.clone());
        async move {
            let output = tokio::task::spawn_blocking(move || {
                std::process::Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .arg("--cache-dir")
                    .arg(&cache)
                    .args(&args)
                    .output()
            })
            .await
            .expect("kubectl task")
            .expect("kubectl runs");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "kubectl failed: {stderr}");
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let args = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let applied = run([
        args("apply --server-side -f"),
        vec![manifest.display().to_string()],
    ]
    .concat())
    .await;
    assert!(
        applied.contains("configmap/settings serverside-applied"),
        "{applied}"
    );
    let greeting = run(args(
        "get configmap settings -n demo -o jsonpath={.data.greeting}",
    ))
    .await;
    assert_eq!(greeting, "hello");
    let listed = run(args("get namespaces,crds -o name")).await;
    assert!(listed.contains("namespace/demo"), "{listed}");
    assert!(
        listed.contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com"),
        "{listed}"
    );
    // The same objects through kube-rs.
    let cms: Api<ConfigMap> = Api::namespaced(client, "demo");
    assert!(cms.get("settings").await.is_ok());
    // Applying twice changes nothing.
    let again = run([
        args("apply --server-side -f"),
        vec![manifest.display().to_string()],
    ]
    .concat())
    .await;
    assert!(again.contains("serverside-applied"), "{again}");
}

#[tokio::test]
async fn exec_runs_the_command_streams_its_output_and_reports_its_exit_code() {
    use kube::api::AttachParams;
    use tokio::io::AsyncReadExt;
    let (_server, client) = setup().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("db", "db", "n1"))
        .await
        .expect("pod created");
    let ap = AttachParams::default().stderr(false);
    let script = [
        "sh",
        "-c",
        "echo \"$COFFER_FAKE_POD $COFFER_FAKE_CONTAINER\"; exit 3",
    ];
    // Not running yet: refused, naming the pod.
    let refused = pods.exec("db", script, &ap).await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("db")),
        "{:?}",
        refused.err()
    );
    pods.patch_status(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("status patched");
    let wrong = pods
        .exec("db", script, &AttachParams::default().container("sidecar"))
        .await;
    assert!(
        matches!(&wrong, Err(e) if e.to_string().contains("sidecar")),
        "{:?}",
        wrong.err()
    );

    let mut p = pods.exec("db", script, &ap).await.expect("exec starts");
    let mut out = String::new();
    p.stdout()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("stdout read");
    let status = p.take_status().expect("status").await.expect("a status");
    assert_eq!(out, "default/db main\n");
    assert_eq!(status.status.as_deref(), Some("Failure"));
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let code = status.details.and_then(|d| d.causes).unwrap_or_default();
    assert_eq!(code[0].message.as_deref(), Some("3"));

    let mut ok = pods.exec("db", ["true"], &ap).await.expect("exec starts");
    let status = ok.take_status().expect("status").await.expect("a status");
    assert_eq!(status.status.as_deref(), Some("Success"));
}

/// Discovery serves every built-in kind an application backup lists, each
/// group at its version, as kube-rs discovers them.
#[tokio::test]
async fn discovery_lists_the_workload_kinds_with_their_scope_and_verbs() {
    let (_server, client) = setup().await;
    let apps = kube::discovery::group(&client, "apps").await.unwrap();
    let batch = kube::discovery::group(&client, "batch").await.unwrap();
    let core = kube::discovery::group(&client, "").await.unwrap();
    for (group, kind) in [
        (&apps, "ReplicaSet"),
        (&apps, "Deployment"),
        (&apps, "StatefulSet"),
        (&batch, "Job"),
        (&batch, "CronJob"),
        (&core, "ConfigMap"),
    ] {
        let (ar, caps) = group.recommended_kind(kind).expect(kind);
        assert_eq!(ar.version, "v1");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced, "{kind}");
        assert!(
            caps.supports_operation("list") && caps.supports_operation("get"),
            "{kind}"
        );
    }
    let (_, pv) = core.recommended_kind("PersistentVolume").unwrap();
    assert_eq!(pv.scope, kube::discovery::Scope::Cluster);
}
