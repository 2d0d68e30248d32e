use coffer_engine::diff;
use coffer_engine::select::Patterns;

use crate::cli::{DiffArgs, FindArgs, Global, TagArgs};
use crate::exit;

pub async fn diff(g: &Global, a: DiffArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let index = repo.load_tree_index().await?;
    let (ida, sa) = repo.find_snapshot(&a.a).await?;
    let (idb, sb) = repo.find_snapshot(&a.b).await?;
    let changes = diff::diff(&repo, &index, &sa, &sb).await?;
    if g.json {
        super::print_json(&serde_json::json!({
            "message_type": "diff",
            "from": ida.to_hex(),
            "to": idb.to_hex(),
            "changes": changes,
        }))?;
        return Ok(exit::OK);
    }
    for c in &changes {
        println!("{}    {}", c.change.mark(), c.path);
    }
    if !g.quiet {
        let count = |k: diff::Change| changes.iter().filter(|c| c.change == k).count();
        println!(
            "{} added, {} removed, {} modified, {} metadata only, {} changed type ({} -> {})",
            count(diff::Change::Added),
            count(diff::Change::Removed),
            count(diff::Change::Modified),
            count(diff::Change::Metadata),
            count(diff::Change::Type),
            ida.short(),
            idb.short()
        );
    }
    Ok(exit::OK)
}

pub async fn find(g: &Global, a: FindArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let index = repo.load_tree_index().await?;
    let pattern = if a.ignore_case {
        Patterns::new(&[], std::slice::from_ref(&a.pattern))?
    } else {
        Patterns::new(std::slice::from_ref(&a.pattern), &[])?
    };
    let snaps = repo
        .select_snapshots(&a.snapshots, &a.origin.snapshot_filter())
        .await?;
    let mut results = Vec::new();
    for (id, s) in &snaps {
        let found = diff::find(&repo, &index, s, &pattern).await?;
        if found.is_empty() {
            continue;
        }
        if g.json {
            results.push(serde_json::json!({
                "snapshot": id.to_hex(),
                "time": s.time,
                "hostname": s.hostname,
                "matches": found.iter().map(|(p, n)| serde_json::json!({"path": p, "type": n.kind, "size": n.size})).collect::<Vec<_>>(),
            }));
        } else {
            println!(
                "snapshot {} of {} ({}):",
                id.short(),
                crate::fmt::time(&s.time),
                s.hostname
            );
            for (p, n) in &found {
                println!("  {p}  ({:?}, {} bytes)", n.kind, n.size);
            }
        }
    }
    if g.json {
        super::print_json(&results)?;
    }
    Ok(exit::OK)
}

pub async fn tag(g: &Global, a: TagArgs) -> anyhow::Result<i32> {
    if a.add.is_empty() && a.remove.is_empty() && a.set.is_empty() {
        anyhow::bail!("nothing to do: give --add, --remove or --set");
    }
    let repo = super::open(g).await?;
    let targets = if a.snapshots.is_empty() {
        super::snapshots::select(
            repo.snapshots().await?,
            &a.tag,
            &a.host,
            &[],
            Default::default(),
            None,
        )
    } else {
        let mut v = Vec::new();
        for s in &a.snapshots {
            v.push(repo.find_snapshot(s).await?);
        }
        v
    };
    let set: Vec<String> = a.set.iter().filter(|t| !t.is_empty()).cloned().collect();
    let set = (!a.set.is_empty()).then_some(set.as_slice());
    let mut changed = 0;
    for (id, s) in &targets {
        let new = diff::retag(&repo, id, s, &a.add, &a.remove, set).await?;
        if new != *id {
            changed += 1;
            if !g.quiet && !g.json {
                println!(
                    "{} -> {} [{}]",
                    id.short(),
                    new.short(),
                    repo.read_snapshot(&new).await?.tags.join(", ")
                );
            }
        }
    }
    if g.json {
        super::print_json(&serde_json::json!({"message_type": "tag", "changed": changed}))?;
    } else if !g.quiet {
        println!("{changed} snapshot(s) changed");
    }
    Ok(exit::OK)
}
