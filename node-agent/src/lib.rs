//! # coffer-node-agent
//!
//! The Kubernetes half of coffer: `coffer-agent node` runs on every node as a
//! DaemonSet, finds pod volumes under the kubelet's directory, and backs them
//! up (and restores them) with `coffer-engine`, in-process.
//!
//! The shape follows the data: [`crd`] (the API), [`annotations`] and
//! [`schedule`] (what pods ask for), [`plan`] and [`kubelet`] (where each
//! volume lives: pure planning over a listing of the kubelet's directory),
//! [`node`] (watch, run, report), [`repos`] (a namespace's repository and its
//! Secrets), [`metrics`] (Prometheus and health).

pub mod annotations;
pub mod api;
pub mod controller;
pub mod crd;
pub mod hooks;
pub mod kubelet;
pub mod lenient;
pub mod maintenance;
pub mod metrics;
pub mod mover;
pub mod names;
pub mod node;
pub mod plan;
pub mod pods;
pub mod policy;
pub mod report;
pub mod repos;
pub mod restore_target;
pub mod restorer;
pub mod run;
pub mod schedules;
pub mod scheduling;
pub mod snapshot;
pub mod snapshot_source;
pub mod status;
pub mod time;
