//! The engine used the way the node agent uses it: one long-lived tokio
//! program, repositories opened with their own options, backups recorded by
//! Kubernetes origin with progress, a cancelled backup, two backups at once,
//! a restore by origin, then forget and prune.
//!
//! `cargo run -p coffer-engine --example agent` (the test suite runs it). It
//! works in a temporary directory and ends with an error on any mismatch.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use coffer_engine::backup::{self, BackupOptions, ParentChoice};
use coffer_engine::forget::{self, Filter, GroupBy, OriginFilter, Policy};
use coffer_engine::format::snapshot::KubernetesOrigin;
use coffer_engine::keys::KdfCost;
use coffer_engine::prune::PruneOptions;
use coffer_engine::restore::{self, RestoreOptions};
use coffer_engine::storage::{self, OpenOptions};
use coffer_engine::{protocol, CancelToken, Error, InitOptions, Repository};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A volume's origin, as the agent records it for a PVC.
fn origin(namespace: &str, pvc: &str) -> KubernetesOrigin {
    KubernetesOrigin {
        cluster: Some("example".into()),
        namespace: Some(namespace.into()),
        pvc: Some(pvc.into()),
        volume: Some("data".into()),
        ..Default::default()
    }
}

fn by_pvc(namespace: &str, pvc: &str) -> OriginFilter {
    OriginFilter {
        namespace: Some(namespace.into()),
        pvc: Some(pvc.into()),
        ..Default::default()
    }
}

/// A backup of `source` recorded as `/data` of the PVC, its parent found by
/// origin (a new pod UID does not force a full read).
fn volume_backup(source: &Path, namespace: &str, pvc: &str) -> BackupOptions {
    let mut opts = BackupOptions::new([source]);
    opts.record_path = Some("/data".into());
    opts.origin = Some(origin(namespace, pvc));
    opts.parent = ParentChoice::Origin(by_pvc(namespace, pvc));
    opts.hostname = Some("node-1".into());
    opts.program = Some("coffer-agent example".into());
    opts
}

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn check(ok: bool, what: &str) -> Res<()> {
    if ok {
        println!("ok: {what}");
        Ok(())
    } else {
        Err(format!("FAILED: {what}").into())
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    // This program frees large buffers on many threads, as the agent does.
    coffer_engine::memory::return_freed_memory();
    let work = tempfile::tempdir()?;
    let (db, web) = (work.path().join("db"), work.path().join("web"));
    for (dir, seed) in [(&db, 1), (&web, 2)] {
        std::fs::create_dir_all(dir.join("sub"))?;
        std::fs::write(dir.join("table.dat"), noise(seed, 6 << 20))?;
        std::fs::write(dir.join("sub/notes.txt"), format!("volume {seed}\n"))?;
    }

    // A repository with its own options (a tenant's Secret would fill
    // `options` with its credentials; nothing comes from the environment).
    let location = work.path().join("repo");
    let store = storage::open(
        location.to_str().ok_or("temporary path is not UTF-8")?,
        &OpenOptions {
            create: true,
            ..Default::default()
        },
    )?;
    let init = InitOptions {
        // A cheap key for the example; keep the default in production.
        kdf: KdfCost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        ..Default::default()
    };
    Repository::init(store, b"tenant password", init).await?;
    let store = storage::open(
        location.to_str().unwrap_or_default(),
        &OpenOptions::default(),
    )?;
    let repo = Arc::new(Repository::open(store, b"tenant password").await?);
    check(true, "init, then open with the tenant's password")?;

    // A backup by origin, with progress while bytes flow.
    let events = Arc::new(AtomicU64::new(0));
    let mut opts = volume_backup(&db, "shop", "db-data");
    let seen = events.clone();
    opts.progress = Some(Arc::new(move |_p: &backup::BackupProgress| {
        seen.fetch_add(1, Ordering::Relaxed);
    }));
    let first = backup::backup(repo.clone(), opts).await?;
    check(
        first.errors.is_empty() && events.load(Ordering::Relaxed) > 0,
        "a backup of the db volume, with progress events",
    )?;

    // A cancelled backup: slowed to 2 MiB/s, cancelled at its first progress
    // report. It ends Cancelled and leaves no session behind.
    let cancel = CancelToken::new();
    let mut opts = volume_backup(&web, "shop", "web-data");
    opts.read_limit = Some(2 << 20);
    opts.cancel = cancel.clone();
    let on_progress = cancel.clone();
    opts.progress = Some(Arc::new(move |p: &backup::BackupProgress| {
        if p.bytes_done > 0 {
            on_progress.cancel();
        }
    }));
    let cancelled = backup::backup(repo.clone(), opts).await;
    check(
        matches!(cancelled, Err(Error::Cancelled)),
        "a cancelled backup ends with Error::Cancelled",
    )?;
    check(
        protocol::running(&repo).await?.is_empty(),
        "the cancelled backup left no session",
    )?;

    // Two backups at once into the one repository.
    std::fs::write(db.join("sub/notes.txt"), "volume 1, changed\n")?;
    let (a, b) = tokio::join!(
        backup::backup(repo.clone(), volume_backup(&db, "shop", "db-data")),
        backup::backup(repo.clone(), volume_backup(&web, "shop", "web-data")),
    );
    let (a, b) = (a?, b?);
    check(
        a.snapshot.parent == Some(first.snapshot_id) && b.snapshot.parent.is_none(),
        "two concurrent backups; the db one found its parent by origin",
    )?;

    // A restore of the latest snapshot of one PVC, chosen by origin.
    let target = work.path().join("restored");
    let mut opts = RestoreOptions::new("latest", &target);
    opts.filter = Filter {
        origin: by_pvc("shop", "db-data"),
        ..Default::default()
    };
    let restored = restore::restore(repo.clone(), repo.load_tree_index().await?, opts).await?;
    let same = std::fs::read(target.join("table.dat"))? == std::fs::read(db.join("table.dat"))?
        && std::fs::read(target.join("sub/notes.txt"))? == b"volume 1, changed\n";
    check(
        restored.errors.is_empty() && restored.snapshot_id == a.snapshot_id && same,
        "the db volume's latest snapshot restores byte for byte",
    )?;

    // Retention per origin (keep the last one of each PVC), then prune.
    let snapshots = repo.snapshots().await?;
    let plan = forget::plan(
        &snapshots,
        &Policy {
            last: 1,
            ..Default::default()
        },
        GroupBy {
            host: false,
            paths: false,
            tags: false,
            origin: true,
        },
        &Filter::default(),
    )?;
    let done = forget::execute_and_prune(
        repo.clone(),
        &plan,
        PruneOptions {
            max_unused_percent: 0.0,
            ..Default::default()
        },
    )
    .await?;
    let (removed, pruned) = (done.removed, done.prune.ok_or("no prune ran")?);
    check(
        removed == 1 && pruned.executed && pruned.bytes_freed > 0,
        "forget kept one snapshot per PVC; prune freed the old one's data",
    )?;
    let check = coffer_engine::check::check(repo.clone(), Default::default()).await?;
    if !check.is_ok() {
        return Err(format!("FAILED: the repository checks clean: {check:?}").into());
    }
    println!("ok: the repository checks clean");
    Ok(())
}
