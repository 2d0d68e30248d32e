//! `rewrite`, `repair index` and `repair snapshots`.

use coffer_engine::format::snapshot::Snapshot;
use coffer_engine::format::SnapshotId;
use coffer_engine::repair::{self, RepairIndexOptions, RepairSnapshotsOptions};
use coffer_engine::rewrite::{self, RewriteOptions};
use coffer_engine::Repository;

use crate::cli::{
    Global, RepairCommand, RepairIndexArgs, RepairSnapshotsArgs, RewriteArgs, SnapshotSelection,
};
use crate::exit;

/// The snapshots `sel` names, or all that match its filters.
pub(crate) async fn selected(
    repo: &Repository,
    sel: &SnapshotSelection,
) -> anyhow::Result<Vec<(SnapshotId, Snapshot)>> {
    if sel.snapshots.is_empty() {
        return Ok(super::snapshots::select(
            repo.snapshots().await?,
            &sel.tag,
            &sel.host,
            &sel.path,
            sel.origin.filter(),
            None,
        ));
    }
    let mut out: Vec<(SnapshotId, Snapshot)> = Vec::new();
    for s in &sel.snapshots {
        let found = repo.find_snapshot(s).await?;
        if !out.iter().any(|(id, _)| *id == found.0) {
            out.push(found);
        }
    }
    Ok(out)
}

pub async fn rewrite(g: &Global, a: RewriteArgs) -> anyhow::Result<i32> {
    let mut exclude = a.exclude.clone();
    for f in &a.exclude_file {
        exclude.extend(coffer_engine::select::read_pattern_file(f)?);
    }
    if exclude.is_empty() && a.iexclude.is_empty() {
        anyhow::bail!("nothing to leave out: give --exclude, --iexclude or --exclude-file");
    }
    let repo = super::open(g).await?;
    let snapshots = selected(&repo, &a.select).await?;
    let opts = RewriteOptions {
        exclude,
        iexclude: a.iexclude.clone(),
        forget: a.forget,
        dry_run: a.dry_run,
        timing: super::timing(),
        cancel: super::cancel_on_signal().0,
    };
    let done = rewrite::rewrite(repo, snapshots, opts).await?;
    if g.json {
        super::print_json(&serde_json::json!({
            "message_type": "rewrite", "dry_run": a.dry_run, "snapshots": done,
        }))?;
        return Ok(exit::OK);
    }
    if g.quiet {
        return Ok(exit::OK);
    }
    let mut changed = 0;
    for r in &done {
        if r.removed.is_empty() {
            continue;
        }
        changed += 1;
        print_head(&r.original, r.new.as_ref(), r.forgotten);
        for p in &r.removed {
            println!("  removed {p}");
        }
    }
    println!(
        "{changed} of {} snapshot(s) {}",
        done.len(),
        if a.dry_run {
            "would be rewritten"
        } else {
            "rewritten"
        }
    );
    if changed > 0 && !a.dry_run {
        println!(
            "{}",
            if a.forget {
                "run `coffer prune` to delete the data only the originals used"
            } else {
                "the originals are kept: `coffer forget` them (or rewrite with --forget), then `coffer prune`"
            }
        );
    }
    Ok(exit::OK)
}

pub async fn run(g: &Global, c: RepairCommand) -> anyhow::Result<i32> {
    match c {
        RepairCommand::Index(a) => index(g, a).await,
        RepairCommand::Snapshots(a) => snapshots(g, a).await,
    }
}

async fn index(g: &Global, a: RepairIndexArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let opts = RepairIndexOptions {
        read_data: a.read_data,
        dry_run: a.dry_run,
        timing: super::timing(),
        max_wait: a.max_wait,
        cancel: super::cancel_on_signal().0,
    };
    let r = repair::repair_index(repo, opts).await?;
    if g.json {
        let mut v = serde_json::to_value(&r)?;
        v["message_type"] = "repair_index".into();
        super::print_json(&v)?;
        return Ok(exit::OK);
    }
    if g.quiet {
        return Ok(exit::OK);
    }
    println!(
        "{} pack(s) in the store; {} pack header(s) read",
        r.packs, r.headers_read
    );
    for id in &r.damaged_index_files {
        println!("damaged index file {id}: replaced");
    }
    for id in &r.missing_packs {
        println!("pack {id} is listed but missing: left out");
    }
    for id in &r.unreadable_packs {
        println!("pack {id}: header unreadable, left out (prune deletes it)");
    }
    for id in &r.damaged_blobs {
        println!("blob {id} is damaged: left out");
    }
    for id in &r.repacked_packs {
        println!("pack {id}: its good blobs repacked, then deleted");
    }
    if r.executed {
        println!(
            "done: {} blob(s) in {} new index file(s); {} old index file(s) removed",
            r.blobs, r.index_files_written, r.index_files_deleted
        );
        if !r.missing_packs.is_empty()
            || !r.damaged_blobs.is_empty()
            || !r.unreadable_packs.is_empty()
        {
            println!("data was lost: run `coffer repair snapshots` so that the rest restores");
        }
    } else {
        println!(
            "dry run: {} blob(s) would be listed; nothing changed",
            r.blobs
        );
    }
    Ok(exit::OK)
}

async fn snapshots(g: &Global, a: RepairSnapshotsArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let snapshots = selected(&repo, &a.select).await?;
    let opts = RepairSnapshotsOptions {
        forget: a.forget,
        dry_run: a.dry_run,
        timing: super::timing(),
        cancel: super::cancel_on_signal().0,
    };
    let done = repair::repair_snapshots(repo, snapshots, opts).await?;
    if g.json {
        super::print_json(&serde_json::json!({
            "message_type": "repair_snapshots", "dry_run": a.dry_run, "snapshots": done,
        }))?;
        return Ok(exit::OK);
    }
    if g.quiet {
        return Ok(exit::OK);
    }
    let mut damaged = 0;
    for r in &done {
        if r.files.is_empty() && r.dirs.is_empty() {
            continue;
        }
        damaged += 1;
        print_head(&r.original, r.new.as_ref(), r.forgotten);
        for p in &r.files {
            println!("  file {p}: lost pieces read as zeros");
        }
        for p in &r.dirs {
            println!("  directory {p}: lost listing");
        }
    }
    println!(
        "{damaged} of {} snapshot(s) {}",
        done.len(),
        if a.dry_run {
            "need repair (dry run: nothing written)"
        } else {
            "repaired"
        }
    );
    Ok(exit::OK)
}

/// The line that heads what happened to one snapshot.
fn print_head(original: &SnapshotId, new: Option<&SnapshotId>, forgotten: bool) {
    match new {
        Some(new) => println!(
            "snapshot {} -> {}{}",
            original.short(),
            new.short(),
            if forgotten { " (original removed)" } else { "" }
        ),
        None => println!("snapshot {} (dry run)", original.short()),
    }
}
