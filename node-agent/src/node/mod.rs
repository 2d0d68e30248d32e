//! `coffer-agent node`: the DaemonSet process.
//!
//! Three controllers (`kube::runtime::Controller`), watch, plan, run,
//! report:
//! - **pods** of this node (a field selector on `spec.nodeName`): their
//!   annotations become VolumeBackup objects (`backup-now` at once,
//!   `schedule` on time: the pod is looked at again when its next time
//!   comes), so every run has one status path; a pod that goes stops its
//!   runs;
//! - **VolumeBackups** and **VolumeRestores**: a run whose pod is not here
//!   yet is looked at again when the pod comes to this node (a watch of
//!   the node's pods mapped to the runs that wait for them) or when
//!   `--pod-wait` is up (a requeue); a deleted run is stopped;
//! - a run whose pod is on this node is **claimed** (its status written with
//!   the object's resourceVersion, so only one agent wins), **planned**
//!   ([`crate::node::plan`]) and **run** as a task with the engine, at most
//!   `--max-concurrent` at once;
//! - progress and the result are **reported** in the run's status (at most
//!   every [`crate::report::STATUS_INTERVAL`]), as Events and as metrics.
//!
//! A run that was InProgress on this node when the agent stopped is resumed
//! (the engine reuses what was stored); after [`crate::crd::MAX_ATTEMPTS`]
//! starts it is marked Failed. `spec.cancel` and a deleted pod stop a run
//! through the engine's cancellation token.

pub mod annotations;
mod backup;
mod context;
pub mod decide;
pub mod kubelet;
pub mod plan;
mod pods;
mod restore;
mod runs;
mod triggers;

pub(crate) use context::Agent;
pub use context::Options;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::crd::{Phase, VolumeBackup, VolumeRestore};
use crate::lenient::Lenient;
use crate::metrics::Metrics;
use crate::node::context::NodeRun;
use crate::reconcile::{log_error, parsed, parsed_policy, retry_policy};

/// Runs the node agent until a watch ends for good.
pub async fn run(client: Client, opts: Options, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={}", opts.node.node));
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (backups, backups_writer) = reflector::store::<Lenient<VolumeBackup>>();
    let (restores, restores_writer) = reflector::store::<Lenient<VolumeRestore>>();
    // Readiness is said through channels: a Store's own wait wakes only one
    // waiter, and its controller is one already.
    let (pods_listed, mut pods_ready) = watch::channel(false);
    let (backups_listed, backups_ready) = watch::channel(false);
    let (restores_listed, _) = watch::channel(false);
    let agent = Agent::new(
        client.clone(),
        opts,
        metrics,
        pods.clone(),
        backups.clone(),
        backups_ready,
    );

    // The pods of this node first, so that runs find their pod.
    let pod_events = agent.clone();
    // The caches keep no managedFields: often most of an object's bytes,
    // and never read here.
    let pod_stream = watcher(Api::<Pod>::all(client.clone()), on_node.clone())
        .default_backoff()
        .modify(|pod| pod.managed_fields_mut().clear())
        .reflect(pods_writer)
        .inspect_ok(move |ev| {
            pod_events.on_pod_event(ev);
            if matches!(ev, Event::InitDone) {
                pods_listed.send_replace(true);
            }
        })
        .applied_objects();
    let pods_task = tokio::spawn(
        Controller::for_stream(pod_stream, pods.clone())
            .run(
                |pod, agent: Arc<Agent>| async move { agent.reconcile_pod(pod).await },
                retry_policy,
                agent.clone(),
            )
            .for_each(log_error),
    );
    pods_ready
        .wait_for(|listed| *listed)
        .await
        .map_err(|_| anyhow::anyhow!("the pod watch ended before it listed"))?;
    let backups_task = tokio::spawn(run_controller::<VolumeBackup>(
        &client,
        &agent,
        backups,
        backups_writer,
        backups_listed,
        on_node.clone(),
    ));
    let restores_task = tokio::spawn(run_controller::<VolumeRestore>(
        &client,
        &agent,
        restores,
        restores_writer,
        restores_listed,
        on_node,
    ));

    // Repositories idle for --repository-idle leave memory, keys and all.
    let idle = agent.opts.repository_idle;
    let me = agent.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep((idle / 4).max(Duration::from_secs(1))).await;
            let n = me.repos.evict_idle(idle);
            if n > 0 {
                tracing::debug!("{n} idle repositories closed");
            }
        }
    });
    agent.metrics.set_ready();
    tracing::info!(
        node = agent.me(),
        "watching pods, VolumeBackups and VolumeRestores"
    );
    tokio::select! {
        r = pods_task => r?,
        r = backups_task => r?,
        r = restores_task => r?,
    }
    anyhow::bail!("a watch ended")
}

/// The controller of one kind of run. Lenient: one run that does not
/// parse, in any namespace, is logged and skipped, never the whole list. A
/// deleted run is stopped; a pod that comes to this node wakes the runs
/// that wait for it.
fn run_controller<K>(
    client: &Client,
    agent: &Arc<Agent>,
    store: reflector::Store<Lenient<K>>,
    writer: reflector::store::Writer<Lenient<K>>,
    listed: watch::Sender<bool>,
    on_node: watcher::Config,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    K: NodeRun,
{
    let deleted = agent.clone();
    let stream = watcher(Api::<Lenient<K>>::all(client.clone()), Default::default())
        .default_backoff()
        .modify(|o| {
            o.metadata.managed_fields = None;
            if let Ok(run) = &mut o.parsed {
                run.managed_fields_mut().clear();
            }
        })
        .reflect(writer)
        .inspect_ok(move |ev| match ev {
            Event::Delete(o) => {
                if let Ok(run) = &o.parsed {
                    let key = K::key(run.namespace().unwrap_or_default(), run.name_any());
                    deleted.stop(&key, context::StopReason::Canceled);
                }
            }
            Event::InitDone => {
                listed.send_replace(true);
            }
            _ => {}
        })
        .applied_objects();
    let waiting = store.clone();
    Controller::for_stream(stream, store)
        .watches(Api::<Pod>::all(client.clone()), on_node, move |pod: Pod| {
            waiting_for(&waiting, &pod)
        })
        .run(
            parsed(|run: Arc<K>, agent: Arc<Agent>| async move {
                Ok(agent.on_run((*run).clone().into_run()).await)
            }),
            parsed_policy(retry_policy),
            agent.clone(),
        )
        .for_each(log_error)
}

/// The runs of `pod` that have not started: they wait for it.
fn waiting_for<K: NodeRun>(
    runs: &reflector::Store<Lenient<K>>,
    pod: &Pod,
) -> Vec<ObjectRef<Lenient<K>>> {
    let (ns, name) = (pod.namespace(), pod.name_any());
    runs.state()
        .iter()
        .filter(|o| o.metadata.namespace == ns)
        .filter_map(|o| o.parsed.as_ref().ok().map(|run| (o, run)))
        .filter(|(_, run)| run.target_pod() == Some(name.as_str()))
        .filter(|(_, run)| run.run_status().is_none_or(|s| s.phase == Phase::New))
        .map(|(o, _)| ObjectRef::from_obj(o.as_ref()))
        .collect()
}
