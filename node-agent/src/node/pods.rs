//! The pods of this node: each one's annotations carried out (see
//! [`Agent::annotations`]), and a pod that goes stops its runs.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::runtime::watcher::Event;
use kube::ResourceExt;

use crate::api::Error;
use crate::node::context::{lock, Agent, StopReason};

impl Agent /* reconcile_pod */ {
    /// A pass over a pod of this node: one being deleted stops its runs;
    /// otherwise its annotations are carried out, and it is looked at
    /// again when its next scheduled time comes.
    pub(crate) async fn reconcile_pod(self: Arc<Self>, pod: Arc<Pod>) -> Result<Action, Error> {
        if pod.metadata.deletion_timestamp.is_some() {
            self.pod_gone(
                &pod.namespace().unwrap_or_default(),
                &pod.name_any(),
                "is being deleted",
            );
            return Ok(Action::await_change());
        }
        Ok(self.annotations(&pod).await)
    }
}

impl Agent /* on_pod_event */ {
    /// What the pod watch says beyond the cache (already updated when this
    /// runs): a deleted pod, or one gone while the watch was down (not in
    /// a new listing), stops its runs.
    pub(crate) fn on_pod_event(&self, ev: &Event<Pod>) {
        match ev {
            Event::Delete(p) => {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                lock(&self.fired).retain(|k, _| k.0 != uid);
                self.pod_gone(
                    &p.namespace().unwrap_or_default(),
                    &p.name_any(),
                    "was deleted",
                );
            }
            Event::InitDone => {
                let here: HashSet<(String, String)> = self
                    .pods
                    .state()
                    .iter()
                    .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
                    .collect();
                let uids: HashSet<String> = self
                    .pods
                    .state()
                    .iter()
                    .filter_map(|p| p.metadata.uid.clone())
                    .collect();
                lock(&self.fired).retain(|k, _| uids.contains(&k.0));
                let gone: Vec<(String, String)> = lock(&self.runs)
                    .values()
                    .map(|h| h.pod.clone())
                    .filter(|p| !here.contains(p))
                    .collect();
                for (ns, name) in gone {
                    self.pod_gone(&ns, &name, "was deleted");
                }
            }
            _ => {}
        }
    }
}

impl Agent /* pod_gone */ {
    /// Stops the runs of pod `ns/name`.
    pub(crate) fn pod_gone(&self, ns: &str, name: &str, how: &str) {
        let runs = lock(&self.runs);
        for h in runs.values() {
            if h.pod.0 == ns && h.pod.1 == name {
                *lock(&h.reason) = Some(StopReason::PodGone(format!(
                    "pod {ns}/{name} {how} during the run; no snapshot was written"
                )));
                h.cancel.cancel();
            }
        }
    }
}
