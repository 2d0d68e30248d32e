//! The pods of this node: watched, cached, and each change turned into
//! triggers (annotations) and wake-ups (runs waiting for their pod).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use tokio::sync::Notify;

use crate::node::context::{lock, Agent, StopReason};

impl Agent /* watch_pods */ {
    pub(crate) async fn watch_pods(self: Arc<Self>, synced: Arc<Notify>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", self.me()));
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        let mut seen_init: Vec<(String, String)> = Vec::new();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(p)) => self.on_pod(p).await,
                Ok(Event::InitApply(p)) => {
                    seen_init.push((p.namespace().unwrap_or_default(), p.name_any()));
                    self.on_pod(p).await;
                }
                Ok(Event::Delete(p)) => self.on_pod_gone(&p, "was deleted"),
                Ok(Event::Init) => seen_init.clear(),
                Ok(Event::InitDone) => {
                    // Pods that vanished while the watch was down.
                    let gone: Vec<Pod> = lock(&self.pods)
                        .iter()
                        .filter(|(k, _)| !seen_init.contains(k))
                        .map(|(_, p)| p.clone())
                        .collect();
                    for p in gone {
                        self.on_pod_gone(&p, "was deleted");
                    }
                    synced.notify_one();
                }
                Err(e) => tracing::warn!("pod watch: {e}; retrying"),
            }
        }
    }
}

impl Agent /* on_pod */ {
    // ---- pods and annotations ----

    pub(crate) async fn on_pod(self: &Arc<Self>, pod: Pod) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_some() {
            self.on_pod_gone(&pod, "is being deleted");
            return;
        }
        lock(&self.pods).insert((ns.clone(), name.clone()), pod.clone());
        self.annotations(&pod).await;
        // Runs that waited for this pod to reach the node.
        self.start_waiting_runs(&ns, &name).await;
    }
}

impl Agent /* on_pod_gone */ {
    pub(crate) fn on_pod_gone(&self, pod: &Pod, how: &str) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        lock(&self.pods).remove(&(ns.clone(), name.clone()));
        lock(&self.schedules).retain(|k, _| !(k.0 == ns && k.1 == name));
        let runs = lock(&self.runs);
        for h in runs.values() {
            if h.pod == (ns.clone(), name.clone()) {
                *lock(&h.reason) = Some(StopReason::PodGone(format!(
                    "pod {ns}/{name} {how} during the run; no snapshot was written"
                )));
                h.cancel.cancel();
            }
        }
    }
}
