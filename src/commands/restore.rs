use coffer_engine::restore::{self, RestoreOptions};

use crate::cli::{Global, RestoreArgs};
use crate::{exit, fmt};

pub async fn run(g: &Global, a: RestoreArgs) -> anyhow::Result<i32> {
    let (snap, sub) = super::split_snapshot(&a.snapshot);
    let repo = super::open(g).await?;
    let index = repo.load_tree_index().await?;
    let mut opts = RestoreOptions::new(snap, &a.target);
    opts.subpath = sub.map(Into::into);
    opts.overwrite = a.overwrite;
    opts.include = a.include;
    opts.iinclude = a.iinclude;
    opts.exclude = a.exclude;
    opts.iexclude = a.iexclude;
    opts.overwrite_device = a.overwrite_device;
    opts.device_zeroed = a.device_is_zeroed;
    opts.plan_limit = a.plan_limit;
    opts.filter = a.origin.snapshot_filter();
    let (progress, bar) = super::op_progress(g, true);
    opts.progress = progress;
    let summary = restore::restore(repo, index, opts).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let summary = summary?;
    for e in &summary.errors {
        eprintln!("error: {}: {}", e.path.display(), e.message);
    }
    for w in &summary.warnings {
        if !g.quiet {
            eprintln!("warning: {w}");
        }
    }
    if g.json {
        let mut v = serde_json::to_value(&summary)?;
        v["message_type"] = "summary".into();
        v["snapshot_id"] = summary.snapshot_id.to_hex().into();
        super::print_json(&v)?;
    } else if !g.quiet {
        println!(
            "restored snapshot {} to {}: {} files, {} directories, {} other entries, {} written",
            summary.snapshot_id.short(),
            a.target.display(),
            summary.files_restored,
            summary.dirs_restored,
            summary.others_restored,
            fmt::size(summary.bytes_written)
        );
    }
    if summary.errors.is_empty() {
        Ok(exit::OK)
    } else {
        eprintln!(
            "{} file(s) could not be restored and were removed from the target; run `coffer check --read-data`",
            summary.errors.len()
        );
        Ok(exit::PARTIAL)
    }
}
