//! `copy`: snapshots from another repository into this one.

use coffer_engine::copy::{self, CopyOptions};

use crate::cli::{CopyArgs, Global};
use crate::{exit, fmt};

pub async fn run(g: &Global, a: CopyArgs) -> anyhow::Result<i32> {
    let src = super::open_source(g, &a.from).await?;
    let dst = super::open(g).await?;
    let snapshots = super::repair::selected(&src, &a.select).await?;
    let opts = CopyOptions {
        dry_run: a.dry_run,
        timing: super::timing(),
        cancel: super::cancel_on_signal().0,
        checkpoint: super::stop_at_checkpoint(),
    };
    let done = copy::copy(src, dst, snapshots, opts).await?;
    if g.json {
        super::print_json(&serde_json::json!({
            "message_type": "copy", "dry_run": a.dry_run, "snapshots": done,
        }))?;
        return Ok(exit::OK);
    }
    if g.quiet {
        return Ok(exit::OK);
    }
    let (mut copied, mut skipped) = (0, 0);
    for c in &done {
        if let Some(already) = &c.already {
            skipped += 1;
            if g.verbose > 0 {
                println!(
                    "snapshot {} was copied before as {}",
                    c.source.short(),
                    already.short()
                );
            }
            continue;
        }
        let Some(new) = &c.new else {
            println!(
                "would copy snapshot {}{}",
                c.source.short(),
                c.parent
                    .map(|p| format!(" (parent {})", p.short()))
                    .unwrap_or_default()
            );
            continue;
        };
        copied += 1;
        println!(
            "snapshot {} -> {}: {} file(s) read ({}), {} unchanged file(s) and {} directory(ies) \
             taken from the last copy; {} new blob(s), {}{}",
            c.source.short(),
            new.short(),
            c.files_read,
            fmt::size(c.bytes_read),
            c.files_reused,
            c.dirs_reused,
            c.blobs_stored,
            fmt::size(c.bytes_stored),
            if c.same_chunking { "" } else { " (re-chunked)" }
        );
    }
    if a.dry_run {
        println!(
            "dry run: {} snapshot(s) would be copied, {skipped} were copied before",
            done.len() - skipped
        );
    } else {
        println!("{copied} snapshot(s) copied, {skipped} were copied before");
    }
    Ok(exit::OK)
}
