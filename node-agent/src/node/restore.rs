//! A restore in place, into a pod's volume.

use std::sync::{Arc, Mutex};

use coffer_engine::CancelToken;
use kube::ResourceExt;

use crate::crd::VolumeRestore;
use crate::node::context::{stopped, Agent, Ended, StopReason};
use crate::node::plan::VolumeMode;
use crate::report::STATUS_INTERVAL;
use crate::status::Outcome;

impl Agent /* restore */ {
    pub(crate) async fn restore(
        self: &Arc<Self>,
        vr: &VolumeRestore,
        cancel: &CancelToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
    ) -> Ended {
        let ns = vr.namespace().unwrap_or_default();
        let (pod_name, volume) = vr.spec.pod_volume().unwrap_or_default();
        let span = tracing::info_span!(
            "restore",
            namespace = ns,
            pod = pod_name,
            volume = volume,
            run = vr.name_any()
        );
        let _enter = span.enter();
        let Some(pod) = self.pod_here(&ns, pod_name) else {
            return Ended::new(
                Outcome::Failed(format!(
                    "pod {ns}/{pod_name} is not on node {} (deleted or moved)",
                    self.me()
                )),
                None,
                0,
            );
        };
        let planned = match self.plan(&pod, volume).await {
            Ok(p) => p,
            Err(m) => return Ended::new(Outcome::Failed(m), None, 0),
        };
        let path = planned.record_path.display().to_string();
        let repo = match self
            .repos
            .open(&self.client, &ns, &vr.spec.repository)
            .await
        {
            Ok(r) => r,
            Err(e) => return Ended::new(Outcome::Failed(e.to_string()), Some(path), 0),
        };
        let snapshot = match crate::snapshot_source::find_snapshot(
            &repo,
            &vr.spec.snapshot,
            &ns,
            &vr.spec.repository,
        )
        .await
        {
            Ok((id, _)) => id,
            Err(m) => return Ended::new(Outcome::Failed(m), Some(path), 0),
        };
        let what = format!("volume {volume:?} of pod {pod_name}");
        let target = crate::restore_target::Target {
            path: &planned.path,
            block: planned.mode == VolumeMode::Block,
            policy: vr.spec.policy,
            what: &what,
            special_files: vr.spec.special_files,
        };
        let subpath = vr.spec.sub_path();
        let (progress, reporter) = crate::report::restore_progress(
            self.client.clone(),
            ns.clone(),
            vr.name_any(),
            STATUS_INTERVAL,
        );
        let result = crate::restore_target::restore_into(
            repo,
            &snapshot,
            subpath,
            &target,
            cancel,
            Some(progress),
        )
        .await;
        reporter.abort();
        let _ = reporter.await;
        match result {
            Ok(outcome) => {
                let bytes = match &outcome {
                    Outcome::Done { progress, .. } => progress.bytes_done,
                    _ => 0,
                };
                Ended::new(outcome, Some(path), bytes)
            }
            Err(coffer_engine::Error::Cancelled) => Ended::new(stopped(reason), Some(path), 0),
            Err(e) => Ended::new(Outcome::Failed(e.to_string()), Some(path), 0),
        }
    }
}
