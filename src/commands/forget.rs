use coffer_engine::forget::{self, Filter, GroupBy, Policy};

use crate::cli::{ForgetArgs, Global};
use crate::{exit, fmt};

pub async fn run(g: &Global, a: ForgetArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let snapshots = repo.snapshots().await?;
    let plan = if a.snapshots.is_empty() {
        let policy = Policy {
            last: a.keep_last,
            hourly: a.keep_hourly,
            daily: a.keep_daily,
            weekly: a.keep_weekly,
            monthly: a.keep_monthly,
            yearly: a.keep_yearly,
            within: a
                .keep_within
                .as_deref()
                .map(forget::parse_duration)
                .transpose()?,
            tags: a.keep_tag.clone(),
        };
        let filter = Filter {
            hosts: a.host.clone(),
            tags: a.tag.clone(),
            paths: a.path.clone(),
            origin: a.origin.filter(),
        };
        forget::plan(&snapshots, &policy, GroupBy::parse(&a.group_by)?, &filter)?
    } else {
        forget::plan_ids(&repo, &a.snapshots).await?
    };
    if g.json {
        super::print_json(
            &serde_json::json!({ "message_type": "forget", "dry_run": a.dry_run, "groups": plan.groups }),
        )?;
    } else if !g.quiet {
        for grp in &plan.groups {
            println!("{}:", grp.key);
            for d in &grp.keep {
                println!(
                    "  keep    {}  {}  ({})",
                    d.id.short(),
                    fmt::time(&d.time),
                    d.reasons.join(", ")
                );
            }
            for d in &grp.remove {
                println!("  remove  {}  {}", d.id.short(), fmt::time(&d.time));
            }
        }
    }
    if a.dry_run {
        if !g.json && !g.quiet {
            println!("dry run: nothing removed");
        }
        return Ok(exit::OK);
    }
    // One signal handler for both steps: prune's options carry its token.
    let prune_opts = super::prune::options(&a.prune_opts, false)?;
    let (removed, pruned) = if a.prune {
        let done = super::prune::showing_progress(g, prune_opts, |opts| {
            forget::execute_and_prune(repo, &plan, opts)
        })
        .await?;
        (done.removed, done.prune)
    } else {
        (
            forget::execute(&repo, &plan, &prune_opts.cancel).await?,
            None,
        )
    };
    if !g.json && !g.quiet {
        println!("removed {removed} snapshot(s)");
    }
    if let Some(p) = &pruned {
        super::prune::print(g, p)?;
    } else if a.prune && !g.json && !g.quiet {
        println!("nothing removed: no prune needed");
    }
    Ok(exit::OK)
}
