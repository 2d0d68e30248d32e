use coffer_engine::format::snapshot::Snapshot;
use coffer_engine::format::SnapshotId;

use crate::cli::{Global, SnapshotsArgs};
use crate::{exit, fmt};

/// A snapshot in restic's JSON shape.
pub fn to_json(id: &SnapshotId, s: &Snapshot) -> serde_json::Value {
    serde_json::json!({
        "id": id.to_hex(),
        "short_id": id.short(),
        "time": s.time,
        "hostname": s.hostname,
        "username": s.username,
        "uid": s.uid,
        "gid": s.gid,
        "paths": s.paths.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>(),
        "tags": s.tags,
        "tree": s.root.subtree.map(|t| t.to_hex()),
        "parent": s.parent.map(|p| p.to_hex()),
        "program_version": s.program,
        "summary": s.summary,
        "origin": s.origin,
    })
}

/// Applies --tag/--host/--path, the origin flags and --latest N (per host and paths).
pub fn select(
    snaps: Vec<(SnapshotId, Snapshot)>,
    tags: &[String],
    hosts: &[String],
    paths: &[String],
    origin: coffer_engine::forget::OriginFilter,
    latest: Option<usize>,
) -> Vec<(SnapshotId, Snapshot)> {
    let filter = coffer_engine::forget::Filter {
        hosts: hosts.to_vec(),
        tags: tags.to_vec(),
        paths: paths.to_vec(),
        origin,
    };
    coffer_engine::forget::select(snaps, &filter, latest)
}

pub async fn run(g: &Global, a: SnapshotsArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let snaps = select(
        repo.snapshots().await?,
        &a.tag,
        &a.host,
        &a.path,
        a.origin.filter(),
        a.latest,
    );
    if g.json {
        let list: Vec<_> = snaps.iter().map(|(id, s)| to_json(id, s)).collect();
        super::print_json(&list)?;
        return Ok(exit::OK);
    }
    println!(
        "{:<9} {:<19}  {:<15} {:<15} {:>11}  Paths",
        "ID", "Time", "Host", "Tags", "Size"
    );
    println!("{}", "-".repeat(90));
    for (id, s) in &snaps {
        let paths: Vec<String> = s.paths.iter().map(|p| p.to_string_lossy()).collect();
        println!(
            "{:<9} {:<19}  {:<15} {:<15} {:>11}  {}",
            id.short(),
            fmt::time(&s.time),
            s.hostname,
            s.tags.join(","),
            fmt::size(s.summary.total_bytes_processed),
            paths.join(", ")
        );
    }
    println!("{}", "-".repeat(90));
    println!("{} snapshot(s)", snaps.len());
    Ok(exit::OK)
}
