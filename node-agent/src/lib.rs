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
pub mod controller;
pub mod crd;
pub mod hooks;
pub mod kubelet;
pub mod lenient;
pub mod maintenance;
pub mod metrics;
pub mod mover;
pub mod node;
pub mod plan;
pub mod policy;
pub mod repos;
pub mod restore;
pub mod restorer;
pub mod schedule;
pub mod schedules;
pub mod snapshot;
pub mod status;
