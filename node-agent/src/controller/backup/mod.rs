//! VolumeBackups with `method: Snapshot`: the reconciler ([`reconcile`]),
//! group snapshots and their hooks, and the cleanup of what a run made.
//!
//! 1. **claim**: check the PVC and the repository, add the cleanup
//!    finalizer, mark the run InProgress;
//! 2. **snapshot**: create a VolumeSnapshot of the PVC (class:
//!    [`crate::controller::csi::choose_class`]) and wait for `readyToUse`, at most
//!    `--snapshot-timeout`; a snapshot error ends the run with its message.
//!    The pre-hooks run just before, the post-hooks once it is ready; the
//!    runs of a group (`spec.group`) share them: every pre-hook, every
//!    snapshot, then every post-hook (`take_snapshots`, `thaw`);
//! 3. **clone**: a PVC provisioned from the snapshot
//!    ([`crate::controller::claims::clone_claim`]);
//! 4. **move**: a mover pod ([`crate::controller::movers::pod::mover_pod`], running
//!    [`crate::mover`]) reads the clone into the repository and writes the
//!    run's status; a pod that cannot be scheduled, cannot pull its image or
//!    fails ends the run at once with the pod's own reason
//!    ([`crate::controller::movers::state::mover_failure`]); one that has not started after
//!    `--prepare-timeout` ends it with the pod's last events;
//! 5. **clean up**, after success, failure and cancellation alike: the mover
//!    pod, then the clone PVC and its PV, then the VolumeSnapshot (unless
//!    `retainSnapshot`); each step waits until the previous object is gone.
//!    The finalizer is removed last.
//!

mod cleanup;
mod group;
mod hooks;
mod reconcile;
mod run;

pub(crate) use cleanup::sweep;
pub(crate) use reconcile::reconcile;
