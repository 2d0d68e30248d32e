//! The cluster's name, agreed between the node agents and the controller.
//!
//! Both record it in every snapshot they write or select (the origin's
//! cluster), and schedules' retention forgets only the snapshots of this
//! cluster's name: an agent and a controller that were given different
//! names would write snapshots that retention never matches, silently. So
//! each records the name it was given on one Lease in coffer's namespace
//! ([`RECORD`]: an annotation per side, [`CONTROLLER_KEY`] and
//! [`AGENT_KEY`]), and each refuses to start, and stops, while the other
//! side's recorded name differs from its own, saying both names and the
//! way out. A side records its own name even when it refuses, so the other
//! side notices too, and records it again at each recheck while it runs, so
//! a record left by a pod that is gone does not stand; once both are given
//! the same name (one `deploy/config.env`), they agree.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

/// The Lease (in coffer's namespace) that holds each side's name.
pub const RECORD: &str = "coffer-cluster-name";
/// The annotation with the controller's cluster name.
pub const CONTROLLER_KEY: &str = "coffer.dev/controller-cluster-name";
/// The annotation with the node agents' cluster name (the last to start).
pub const AGENT_KEY: &str = "coffer.dev/agent-cluster-name";

/// Which side this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `coffer-agent controller`.
    Controller,
    /// `coffer-agent node`.
    Agent,
}

impl Side {
    fn key(self) -> &'static str {
        match self {
            Side::Controller => CONTROLLER_KEY,
            Side::Agent => AGENT_KEY,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Controller => Side::Agent,
            Side::Agent => Side::Controller,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Side::Controller => "the controller (Deployment coffer-controller)",
            Side::Agent => "the node agents (DaemonSet coffer-agent)",
        }
    }
}

/// The name as recorded: an unset name is recorded as the empty string, so
/// an unset name and a set one disagree too.
fn recorded(name: Option<&str>) -> &str {
    name.unwrap_or_default()
}

fn shown(name: &str) -> String {
    if name.is_empty() {
        "no CLUSTER_NAME".to_string()
    } else {
        format!("CLUSTER_NAME {name:?}")
    }
}

/// Why side `me`, given `name`, must not run beside what the record's
/// annotations say of the other side; `None` when they agree or the other
/// side has recorded nothing yet.
pub fn disagreement(
    annotations: &BTreeMap<String, String>,
    me: Side,
    name: Option<&str>,
    namespace: &str,
) -> Option<String> {
    let theirs = annotations.get(me.other().key())?;
    let mine = recorded(name);
    (theirs != mine).then(|| {
        format!(
            "{} {} {}, but {} recorded {} (Lease {namespace}/{RECORD}): snapshots would carry one name and retention select the other. \
             Set CLUSTER_NAME once, in deploy/config.env (the ConfigMap coffer-config both read), not on one workload, and apply; \
             each side records its name again when it starts",
            me.what(),
            if me == Side::Agent { "here have" } else { "here has" },
            shown(mine),
            me.other().what(),
            shown(theirs),
        )
    })
}

/// Records `name` as side `me`'s on the Lease (creating it), then says
/// why the other side's recorded name disagrees, if it does.
async fn check(
    api: &Api<Lease>,
    namespace: &str,
    me: Side,
    name: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let lease = record(api, namespace, me, name).await?;
    let none = BTreeMap::new();
    let annotations = lease.metadata.annotations.as_ref().unwrap_or(&none);
    Ok(disagreement(annotations, me, name, namespace))
}

/// Records `name` as side `me`'s and refuses (`Err` with why) while the
/// other side's differs; then returns the watch that goes on checking while
/// this side runs (`keep_agreeing`), which the caller stops on.
pub async fn agree(
    client: &Client,
    namespace: &str,
    me: Side,
    name: Option<&str>,
    recheck: Duration,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Error>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    if let Some(why) = check(&api, namespace, me, name).await? {
        anyhow::bail!(why);
    }
    Ok(keep_agreeing(
        api,
        namespace.to_string(),
        me,
        name.map(str::to_string),
        recheck,
    ))
}

/// Writes this side's name on the record and returns the record.
async fn record(
    api: &Api<Lease>,
    namespace: &str,
    me: Side,
    name: Option<&str>,
) -> anyhow::Result<Lease> {
    let err = |e: kube::Error| {
        anyhow::anyhow!(
            "cannot record the cluster name on Lease {namespace}/{RECORD} ({e}); the node agents and the controller compare their names there"
        )
    };
    let mine = recorded(name).to_string();
    let patch = json!({"metadata": {"annotations": {me.key(): mine}}});
    match api
        .patch(RECORD, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(l) => return Ok(l),
        Err(e) if crate::api::is_status(&e, 404) => {}
        Err(e) => return Err(err(e)),
    }
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(RECORD.into()),
            namespace: Some(namespace.into()),
            annotations: Some(BTreeMap::from([(me.key().to_string(), mine)])),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "coffer".to_string(),
            )])),
            ..Default::default()
        },
        spec: None,
    };
    match api.create(&PostParams::default(), &lease).await {
        Ok(l) => Ok(l),
        // The other side made it meanwhile: record on it.
        Err(e) if crate::api::is_status(&e, 409) => api
            .patch(RECORD, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err),
        Err(e) => Err(err(e)),
    }
}

/// Records this side's name again and looks at the other side's every
/// `recheck` while this side runs, and returns why they disagree once they
/// do (the caller stops). An API error is logged and tried again later:
/// only a disagreement stops.
async fn keep_agreeing(
    api: Api<Lease>,
    namespace: String,
    me: Side,
    name: Option<String>,
    recheck: Duration,
) -> anyhow::Error {
    loop {
        tokio::time::sleep(recheck).await;
        // Recorded again each time: a record left by a pod of this side that
        // is gone (a rolled-back rename) must not hold the other side off.
        match check(&api, &namespace, me, name.as_deref()).await {
            Ok(Some(why)) => return anyhow::anyhow!(why),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_side_refuses_a_name_the_other_side_recorded_differently() {
        let both = ann(&[(CONTROLLER_KEY, "prod"), (AGENT_KEY, "prod")]);
        assert_eq!(disagreement(&both, Side::Agent, Some("prod"), "cs"), None);
        assert_eq!(
            disagreement(&both, Side::Controller, Some("prod"), "cs"),
            None
        );
        // Nothing recorded by the other side yet: this side goes first.
        assert_eq!(
            disagreement(&ann(&[]), Side::Agent, Some("prod"), "cs"),
            None
        );
        let agent = disagreement(&both, Side::Agent, Some("staging"), "cs").unwrap();
        assert!(
            agent.starts_with(
                "the node agents (DaemonSet coffer-agent) here have CLUSTER_NAME \"staging\", but "
            ),
            "{agent}"
        );
        assert!(agent.contains("the controller (Deployment coffer-controller) recorded CLUSTER_NAME \"prod\" (Lease cs/coffer-cluster-name)"), "{agent}");
        assert!(agent.contains("deploy/config.env"), "{agent}");
        let controller = disagreement(&both, Side::Controller, Some("staging"), "cs").unwrap();
        assert!(
            controller.contains(
                "the node agents (DaemonSet coffer-agent) recorded CLUSTER_NAME \"prod\""
            ),
            "{controller}"
        );
        // An unset name and a set one disagree too.
        let unset = disagreement(&both, Side::Controller, None, "cs").unwrap();
        assert!(unset.contains("here has no CLUSTER_NAME"), "{unset}");
        let recorded_unset = ann(&[(AGENT_KEY, "")]);
        assert_eq!(
            disagreement(&recorded_unset, Side::Controller, None, "cs"),
            None
        );
    }
}
