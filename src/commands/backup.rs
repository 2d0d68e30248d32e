use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_engine::backup::{self, BackupOptions, BackupProgress, ParentChoice};

use crate::cli::{BackupArgs, Global};
use crate::{exit, fmt};

pub async fn run(g: &Global, a: BackupArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let mut paths = a.paths.clone();
    for f in &a.files_from {
        paths.extend(coffer_engine::select::read_files_from(f, false)?);
    }
    for f in &a.files_from_raw {
        paths.extend(coffer_engine::select::read_files_from(f, true)?);
    }
    let mut exclude = a.exclude.clone();
    for f in &a.exclude_file {
        exclude.extend(coffer_engine::select::read_pattern_file(f)?);
    }
    if paths.is_empty() && !a.stdin && !a.stdin_from_command && a.etcd.is_none() {
        anyhow::bail!(
            "nothing to back up: give paths, --files-from, --stdin, --stdin-from-command or --etcd"
        );
    }
    let mut opts = BackupOptions::new(paths);
    opts.timing = super::timing();
    opts.selection = coffer_engine::select::Selection {
        exclude,
        iexclude: a.iexclude.clone(),
        exclude_if_present: a.exclude_if_present.clone(),
        exclude_caches: a.exclude_caches,
        exclude_larger_than: a.exclude_larger_than,
        one_file_system: a.one_file_system,
    };
    opts.tags = a
        .tags
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    opts.hostname = a.host.clone();
    opts.threads = a.threads;
    opts.walk_threads = a.walk_threads;
    opts.compression = a.compression;
    opts.force = a.force;
    opts.changes = coffer_engine::backup::ChangeRules {
        ignore_inode: a.ignore_inode,
        ignore_ctime: a.ignore_ctime,
    };
    opts.read_limit = a.limit_read;
    if let Some(p) = a.parent.clone() {
        opts.parent = ParentChoice::Snapshot(p);
    }
    // SIGINT/SIGTERM: stop cleanly (what was uploaded gets indexed, no snapshot).
    let (cancel, signal) = super::cancel_on_signal();
    opts.cancel = cancel;
    opts.checkpoint = super::stop_at_checkpoint();
    let bar = progress(g, &mut opts);
    let mut etcd_info = None;
    let result = if let Some(endpoint) = &a.etcd {
        let src = etcd_source(endpoint, &a)?;
        match coffer_engine::etcd::backup_etcd(repo.clone(), src, opts).await {
            Ok(done) => {
                etcd_info = Some(done.info);
                Ok(done.summary)
            }
            Err(e) => Err(e),
        }
    } else if a.stdin || a.stdin_from_command {
        let src = stream_source(&a)?;
        backup::backup_stream(repo.clone(), src, opts).await
    } else {
        backup::backup(repo.clone(), opts).await
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let summary = match result {
        Err(coffer_engine::Error::Cancelled) => {
            let code = signal.load(std::sync::atomic::Ordering::SeqCst);
            eprintln!("coffer: backup stopped; what was uploaded is indexed and the next backup reuses it; no snapshot was written");
            return Ok(if code == 0 { exit::INTERRUPTED } else { code });
        }
        other => other?,
    };
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
            "packs_adopted": summary.packs_adopted,
            "etcd": etcd_info.as_ref().map(|i| serde_json::json!({
                "revision": i.revision,
                "member_id": format!("{:x}", i.member_id),
                "cluster_id": format!("{:x}", i.cluster_id),
                "version": i.version,
                "size": i.size,
            })),
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
        if let Some(i) = &etcd_info {
            println!(
                "etcd {}: revision {}, member {:x}, cluster {:x}, {} verified by its SHA-256",
                i.version,
                i.revision,
                i.member_id,
                i.cluster_id,
                fmt::size(i.size)
            );
        }
        if summary.packs_adopted > 0 {
            println!(
                "Reused {} pack(s) stored by an interrupted backup",
                summary.packs_adopted
            );
        }
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

/// Progress: a bar on a terminal, status lines with --json, nothing otherwise.
fn progress(g: &Global, opts: &mut BackupOptions) -> Option<indicatif::ProgressBar> {
    if g.quiet {
        return None;
    }
    if g.json {
        let last = Mutex::new(Instant::now());
        opts.progress = Some(Arc::new(move |p: &BackupProgress| {
            let Ok(mut last) = last.lock() else { return };
            if last.elapsed() < Duration::from_secs(1) {
                return;
            }
            *last = Instant::now();
            super::status_line(serde_json::json!({
                "seconds_elapsed": p.seconds_elapsed,
                "percent_done": super::fraction(p.bytes_done, p.total_bytes),
                "total_files": p.total_files,
                "files_done": p.files_done,
                "total_bytes": p.total_bytes,
                "bytes_done": p.bytes_done,
                "error_count": p.errors,
                "current_files": p.current_file.iter().map(|c| c.display().to_string()).collect::<Vec<_>>(),
            }));
        }));
        return None;
    }
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "[{elapsed_precise}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    let b = bar.clone();
    opts.progress = Some(Arc::new(move |p: &BackupProgress| {
        if let Some(t) = p.total_bytes {
            b.set_length(t.max(p.bytes_done));
        }
        b.set_position(p.bytes_done);
        let files = match p.total_files {
            Some(t) => format!("{}/{} files", p.files_done, t),
            None => format!("{} files", p.files_done),
        };
        let current = p
            .current_file
            .as_ref()
            .and_then(|c| c.file_name())
            .map(|n| format!(" {}", n.to_string_lossy()))
            .unwrap_or_default();
        b.set_message(format!("{files}{current}"));
    }));
    Some(bar)
}

/// The etcd member to snapshot, with the TLS files read (never logged).
fn etcd_source(endpoint: &str, a: &BackupArgs) -> anyhow::Result<coffer_engine::etcd::EtcdSource> {
    let read = |what: &str, f: &std::path::Path| {
        std::fs::read(f)
            .map_err(|e| anyhow::anyhow!("cannot read the etcd {what} {}: {e}", f.display()))
    };
    let mut src = coffer_engine::etcd::EtcdSource::new(endpoint);
    if let Some(f) = &a.etcd_cacert {
        src.ca_pem = Some(read("CA certificate", f)?);
    }
    if let (Some(cert), Some(key)) = (&a.etcd_cert, &a.etcd_key) {
        src.client_identity = Some(coffer_engine::etcd::ClientIdentity {
            cert_pem: read("client certificate", cert)?,
            key_pem: read("client key", key)?.into(),
        });
    }
    if src.ca_pem.is_none() && (src.client_identity.is_some() || endpoint.starts_with("https://")) {
        anyhow::bail!(
            "TLS to etcd at {endpoint} needs --etcd-cacert: the CA certificate that signed etcd's server certificate"
        );
    }
    src.timeout = a.etcd_timeout;
    if let Some(name) = &a.stdin_filename {
        src.file_name = name.clone();
    }
    Ok(src)
}

/// Standard input, or the output of the command after `--`.
fn stream_source(a: &BackupArgs) -> anyhow::Result<backup::StreamSource> {
    let name = a.stdin_filename.clone().unwrap_or_else(|| "stdin".into());
    if a.stdin {
        return Ok(backup::StreamSource {
            name,
            reader: Box::new(std::io::stdin()),
            finish: Box::new(|| Ok(())),
        });
    }
    let Some((program, args)) = a.command.split_first() else {
        anyhow::bail!("--stdin-from-command needs a command after `--`");
    };
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {program:?}: {e}"))?;
    let Some(stdout) = child.stdout.take() else {
        anyhow::bail!("cannot read the output of {program:?}");
    };
    let shown = a.command.join(" ");
    Ok(backup::StreamSource {
        name,
        reader: Box::new(stdout),
        finish: Box::new(move || match child.wait() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("the command `{shown}` failed ({status})")),
            Err(e) => Err(format!("cannot wait for the command `{shown}`: {e}")),
        }),
    })
}
