//! # coffer-node-agent
//!
//! The Kubernetes half of coffer: `coffer-agent node` runs on every node as a
//! DaemonSet, finds pod volumes under the kubelet's directory, and backs them
//! up (and restores them) with `coffer-engine`, in-process.
//!
//! The folders show the roles: [`node`] is the DaemonSet (watches, triggers,
//! backups and restores in place), [`controller`] the Deployment (one module
//! per controller, plus the run lifecycle, mover pods and CSI they share),
//! and [`mover`] the program that a mover pod runs. Below them sit the shared
//! modules: [`crd`] (the API), [`names`] (names, labels, annotations),
//! [`api`] (API calls and their errors), [`run`], [`status`] and [`report`]
//! (what a run is, its status transitions, and writing them),
//! [`volume_backup`] (one volume's backup, as the node agent and the mover
//! both run it), [`time`] (the one format of coffer's times), [`scheduling`]
//! (the schedule language and the one durable rule for firing), [`repos`] (a
//! namespace's repository and its Secrets), [`policy`] (the administrator's
//! limits), [`cluster_name`] (the agents' and the controller's name for the
//! cluster, compared) and [`metrics`] (Prometheus and health). `node` and `controller`
//! never name each other, and no module imports one that imports it back
//! (`tests/layout.rs` checks both).

pub mod api;
pub mod cluster_name;
pub mod controller;
pub mod crd;
pub mod hooks;
pub mod lenient;
pub mod metrics;
pub mod mover;
pub mod names;
pub mod node;
pub mod pods;
pub mod policy;
pub mod reconcile;
pub mod report;
pub mod repos;
pub mod restore_target;
pub mod run;
pub mod scheduling;
pub mod snapshot_source;
pub mod status;
pub mod time;
pub mod volume_backup;
