use coffer_engine::forget::parse_duration;
use coffer_engine::protocol;
use coffer_engine::prune::{self, PruneOptions, PrunePlan};

use crate::cli::{Global, PruneArgs, PruneOpts};
use crate::{exit, fmt};

pub fn options(o: &PruneOpts, dry_run: bool) -> anyhow::Result<PruneOptions> {
    Ok(PruneOptions {
        max_unused_percent: o.max_unused,
        max_repack: o.max_repack,
        dry_run,
        timing: super::timing(),
        // SIGINT/SIGTERM stop prune at a safe point; its lock goes with it.
        cancel: super::cancel_on_signal().0,
        progress: None,
        max_wait: parse_duration(&o.max_wait)
            .map(|d| d.to_std().unwrap_or_default())
            .or_else(|_| {
                o.max_wait
                    .trim_end_matches('s')
                    .parse::<u64>()
                    .map(std::time::Duration::from_secs)
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "--max-wait {:?} is not a duration like 1h or 30s",
                            o.max_wait
                        )
                    })
            })?,
    })
}

pub fn print(g: &Global, plan: &PrunePlan) -> anyhow::Result<()> {
    if g.json {
        let mut v = serde_json::to_value(plan)?;
        v["message_type"] = "prune".into();
        return super::print_json(&v);
    }
    if g.quiet {
        return Ok(());
    }
    println!(
        "used: {} blobs; unused: {} blobs, {} of {} in packs",
        plan.used_blobs,
        plan.unused_blobs,
        fmt::size(plan.unused_bytes),
        fmt::size(plan.total_bytes)
    );
    println!(
        "plan: delete {} packs, repack {} packs ({} copied), delete {} packs no index lists; frees {}",
        plan.delete_packs.len(),
        plan.repack_packs.len(),
        fmt::size(plan.bytes_repacked),
        plan.unindexed_packs.len(),
        fmt::size(plan.bytes_freed)
    );
    if plan.sessions_waited > 0 {
        println!(
            "waited for {} running backup(s); removed {} stale session(s)",
            plan.sessions_waited, plan.stale_sessions_removed
        );
    }
    println!(
        "{}",
        if plan.executed {
            format!(
                "done: {} index file(s) rewritten",
                plan.index_files_rewritten
            )
        } else {
            "not executed (dry run, or backups still running: the next prune finishes it)"
                .to_string()
        }
    );
    Ok(())
}

pub async fn run(g: &Global, a: PruneArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let plan = with_progress(g, repo, options(&a.opts, a.dry_run)?).await?;
    print(g, &plan)?;
    Ok(exit::OK)
}

/// Prunes with a progress bar on a terminal (nothing between the JSON objects).
pub async fn with_progress(
    g: &Global,
    repo: std::sync::Arc<coffer_engine::Repository>,
    opts: PruneOptions,
) -> anyhow::Result<PrunePlan> {
    showing_progress(g, opts, |opts| prune::prune(repo, opts)).await
}

/// Runs `f` (a prune, or a forget then a prune) with prune's progress shown.
pub async fn showing_progress<T, F, Fut>(
    g: &Global,
    mut opts: PruneOptions,
    f: F,
) -> anyhow::Result<T>
where
    F: FnOnce(PruneOptions) -> Fut,
    Fut: std::future::Future<Output = coffer_engine::Result<T>>,
{
    let (progress, bar) = super::op_progress(g, false);
    opts.progress = progress;
    let out = f(opts).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(out?)
}

/// Lists sessions and locks. There is nothing to unlock by hand: a dead
/// backup's session goes stale and the next prune removes it.
pub async fn unlock(g: &Global) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let rows = protocol::running(&repo).await?;
    if g.json {
        super::print_json(&rows)?;
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        println!("no backup or prune is running");
    }
    for b in &rows {
        println!(
            "{}: {} on {} (pid {}), started {}, heartbeat {}",
            b.key,
            b.kind,
            b.hostname,
            b.pid,
            fmt::time(&b.started),
            b.beat
        );
    }
    println!(
        "Nothing needs unlocking: a backup never waits for these, and prune removes a session whose heartbeat stopped ({} s).",
        super::timing().stale_after.as_secs()
    );
    Ok(exit::OK)
}
