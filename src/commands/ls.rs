use coffer_engine::format::tree::Node;
use coffer_engine::trees::{self, Step, Walk};

use crate::cli::{Global, LsArgs};
use crate::{exit, fmt};

fn ts(t: coffer_engine::format::tree::Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.secs(), t.nanos())
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_default()
}

fn node_json(path: &str, n: &Node) -> serde_json::Value {
    serde_json::json!({
        "message_type": "node",
        "name": n.name.to_string_lossy(),
        "type": n.kind,
        "path": path,
        "uid": n.uid,
        "gid": n.gid,
        "user": n.user,
        "group": n.group,
        "size": n.size,
        "mode": n.mode,
        "mtime": ts(n.mtime),
        "atime": ts(n.atime),
        "ctime": ts(n.ctime),
        "inode": n.inode,
        "links": n.links,
        "target": n.target.as_ref().map(|t| t.to_string_lossy()),
    })
}

fn print_node(g: &Global, long: bool, path: &str, n: &Node) -> anyhow::Result<()> {
    if g.json {
        super::print_json(&node_json(path, n))?;
    } else if long {
        let link = n
            .target
            .as_ref()
            .map(|t| format!(" -> {}", t.to_string_lossy()))
            .unwrap_or_default();
        println!(
            "{} {:>8} {:>8} {:>12} {} {path}{link}",
            fmt::mode(&n.kind, n.mode),
            n.user.clone().unwrap_or_else(|| n.uid.to_string()),
            n.group.clone().unwrap_or_else(|| n.gid.to_string()),
            n.size,
            fmt::timestamp(n.mtime.secs(), n.mtime.nanos()),
        );
    } else {
        println!("{path}");
    }
    Ok(())
}

pub async fn run(g: &Global, a: LsArgs) -> anyhow::Result<i32> {
    let (snap, sub) = super::split_snapshot(&a.snapshot);
    let repo = super::open(g).await?;
    let index = repo.load_tree_index().await?;
    let (id, snapshot) = repo.find_snapshot(&snap).await?;
    if g.json {
        let mut v = super::snapshots::to_json(&id, &snapshot);
        v["message_type"] = "snapshot".into();
        super::print_json(&v)?;
    }
    let root = &snapshot.root;
    let prefix = sub
        .as_deref()
        .map(|s| format!("/{}", s.trim_matches('/')))
        .unwrap_or_default();
    let start = match &sub {
        None => root.clone(),
        Some(p) => trees::lookup(&repo, &index, root, p.as_bytes())
            .await?
            .ok_or_else(|| coffer_engine::Error::NotFound {
                what: format!("path {p} in snapshot {}", id.short()),
                missing: coffer_engine::error::Missing::Path,
            })?,
    };
    let root = if prefix.is_empty() { "/" } else { &prefix };
    let mut walk = Walk::new(&repo, &index, root.into(), start);
    // The start is listed only when it is not a directory.
    let mut at_start = true;
    while let Some(step) = walk.next().await? {
        match step {
            Step::Enter(_) if at_start => {}
            Step::Enter(e) | Step::Leaf(e) => {
                print_node(g, a.long, &e.path.display().to_string(), &e.node)?
            }
            _ => {}
        }
        at_start = false;
    }
    Ok(exit::OK)
}
