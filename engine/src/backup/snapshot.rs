//! Snapshot stage: the last object a backup writes.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use coffer_repo_format::snapshot::{Snapshot, SnapshotSummary, SNAPSHOT_VERSION};
use coffer_repo_format::tree::{Node, Timestamp};

use super::{BackupOptions, Monitor, Stats};
use crate::repository::{now_rfc3339, Identity};

pub(crate) fn timestamp_now() -> Timestamp {
    let now = chrono::Utc::now();
    Timestamp(now.timestamp(), now.timestamp_subsec_nanos())
}

pub(crate) fn build(
    monitor: &Monitor,
    opts: &BackupOptions,
    paths: &[PathBuf],
    root: Node,
    start_time: String,
) -> Snapshot {
    let me = Identity::current();
    let s = &monitor.stats;
    let files = Stats::get(&s.files);
    let dirs = Stats::get(&s.dirs);
    let (files_new, files_changed) = (Stats::get(&s.files_new), Stats::get(&s.files_changed));
    let (dirs_new, dirs_changed) = (Stats::get(&s.dirs_new), Stats::get(&s.dirs_changed));
    Snapshot {
        version: SNAPSHOT_VERSION,
        time: start_time.clone(),
        hostname: opts.hostname.clone().unwrap_or(me.hostname),
        username: opts.username.clone().unwrap_or(me.username),
        uid: me.uid,
        gid: me.gid,
        paths: paths
            .iter()
            .map(|p| p.as_os_str().as_bytes().into())
            .collect(),
        tags: opts.tags.clone(),
        root,
        parent: None,
        program: opts
            .program
            .clone()
            .unwrap_or_else(|| format!("coffer {}", env!("CARGO_PKG_VERSION"))),
        summary: SnapshotSummary {
            backup_start: start_time,
            backup_end: now_rfc3339(),
            files_new,
            files_changed,
            files_unmodified: files - files_new - files_changed,
            dirs_new,
            dirs_changed,
            dirs_unmodified: dirs - dirs_new - dirs_changed,
            data_blobs: Stats::get(&s.data_blobs),
            tree_blobs: Stats::get(&s.tree_blobs),
            data_added: Stats::get(&s.data_added),
            data_added_packed: Stats::get(&s.data_added_packed),
            total_files_processed: files,
            total_bytes_processed: Stats::get(&s.bytes_processed),
        },
        origin: opts.origin.clone(),
        original: None,
        ignored_changes: opts.changes.ignored(),
    }
}
