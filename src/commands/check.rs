use coffer_engine::check::{self, CheckOptions, ReadData};

use crate::cli::{CheckArgs, Global};
use crate::{exit, fmt};

pub async fn run(g: &Global, a: CheckArgs) -> anyhow::Result<i32> {
    let read_data = match (&a.read_data_subset, a.read_data) {
        (Some(s), _) => ReadData::parse_subset(s)?,
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    let repo = super::open(g).await?;
    // --json prints one report object: no status lines in between.
    let (progress, bar) = super::op_progress(g, false);
    let report = check::check(
        repo,
        CheckOptions {
            read_data,
            cancel: super::cancel_on_signal().0,
            progress,
            ..Default::default()
        },
    )
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    if g.json {
        let mut v = serde_json::to_value(&report)?;
        v["ok"] = report.is_ok().into();
        super::print_json(&v)?;
    } else {
        for p in &report.problems {
            eprintln!("error: {}: {}", p.object, p.message);
        }
        if !g.quiet {
            println!(
                "checked {} snapshots, {} trees, {} packs{}",
                report.snapshots,
                report.trees,
                report.packs,
                if read_data == ReadData::None {
                    String::new()
                } else {
                    format!(
                        "; read {} packs ({}), verified {} blobs",
                        report.packs_read,
                        fmt::size(report.bytes_read),
                        report.blobs_read
                    )
                }
            );
            if !report.unindexed_packs.is_empty() {
                println!(
                    "{} pack(s) are in no index (left by an interrupted backup; harmless, prune removes them)",
                    report.unindexed_packs.len()
                );
            }
        }
    }
    if report.is_ok() {
        if !g.json && !g.quiet {
            println!("no errors were found");
        }
        Ok(exit::OK)
    } else {
        eprintln!("{} problem(s) found", report.problems.len());
        Ok(exit::FATAL)
    }
}
