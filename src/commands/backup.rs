use coffer_engine::backup::{self, BackupOptions};

use crate::cli::{BackupArgs, Global};
use crate::{exit, fmt};

pub async fn run(g: &Global, a: BackupArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let index = repo.load_index().await?;
    let mut opts = BackupOptions::new(a.paths);
    opts.tags = a
        .tags
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    opts.hostname = a.host;
    opts.threads = a.threads;
    opts.compression = a.compression;
    let summary = backup::backup(repo.clone(), index, opts).await?;
    for e in &summary.errors {
        eprintln!("error: cannot read {}: {}", e.path.display(), e.message);
    }
    let s = &summary.snapshot.summary;
    if g.json {
        super::print_json(&serde_json::json!({
            "message_type": "summary",
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "dirs_new": s.dirs_new,
            "dirs_changed": s.dirs_changed,
            "dirs_unmodified": s.dirs_unmodified,
            "data_blobs": s.data_blobs,
            "tree_blobs": s.tree_blobs,
            "data_added": s.data_added,
            "data_added_packed": s.data_added_packed,
            "total_files_processed": s.total_files_processed,
            "total_bytes_processed": s.total_bytes_processed,
            "total_duration": summary.total_duration,
            "backup_start": s.backup_start,
            "backup_end": s.backup_end,
            "snapshot_id": summary.snapshot_id.to_hex(),
            "errors": summary.errors.len(),
        }))?;
    } else if !g.quiet {
        println!(
            "Files:       {:>6} new, {:>6} changed, {:>6} unmodified",
            s.files_new, s.files_changed, s.files_unmodified
        );
        println!(
            "Dirs:        {:>6} new, {:>6} changed, {:>6} unmodified",
            s.dirs_new, s.dirs_changed, s.dirs_unmodified
        );
        println!(
            "Added to the repository: {} ({} stored)",
            fmt::size(s.data_added),
            fmt::size(s.data_added_packed)
        );
        println!(
            "processed {} files, {} in {:.2}s",
            s.total_files_processed,
            fmt::size(s.total_bytes_processed),
            summary.total_duration
        );
        println!("snapshot {} saved", summary.snapshot_id.short());
    }
    if summary.errors.is_empty() {
        Ok(exit::OK)
    } else {
        eprintln!(
            "warning: {} file(s) could not be read; the snapshot was saved without them",
            summary.errors.len()
        );
        Ok(exit::PARTIAL)
    }
}
