//! `mount`: the snapshots as a read-only filesystem, until unmounted.

use std::time::Duration;

use anyhow::Context;
use fuser::{Config, MountOption, SessionACL};

use crate::cli::{Global, MountArgs};
use crate::exit;
use crate::mount::{CofferFs, MountSettings};

pub async fn run(g: &Global, a: MountArgs) -> anyhow::Result<i32> {
    let meta = std::fs::metadata(&a.mountpoint).with_context(|| {
        format!(
            "cannot use {} as the mount point (make an empty directory there)",
            a.mountpoint.display()
        )
    })?;
    if !meta.is_dir() {
        anyhow::bail!(
            "the mount point {} is not a directory",
            a.mountpoint.display()
        );
    }
    let repo = super::open(g).await?;
    let refresh: Duration = a.refresh.into();
    let settings = MountSettings {
        cache_bytes: usize::try_from(a.cache_size).unwrap_or(usize::MAX),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    let rt = tokio::runtime::Handle::current();
    let fs = tokio::task::spawn_blocking(move || CofferFs::new(repo, rt, settings))
        .await
        .context("the mount's setup failed")??;
    // The snapshot list is read again on a timer and on SIGHUP.
    let refresher = fs.refresher();
    let quiet = g.quiet;
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        let mut timer = tokio::time::interval(if refresh.is_zero() {
            Duration::from_secs(u64::from(u32::MAX))
        } else {
            refresh
        });
        timer.tick().await;
        loop {
            tokio::select! {
                _ = timer.tick() => {}
                _ = hup.recv() => {}
            }
            let r = refresher.clone();
            match tokio::task::spawn_blocking(move || r.refresh()).await {
                Ok(Ok(Some(n))) if !quiet => {
                    eprintln!("coffer: snapshot list read again: {n} snapshot(s)")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("coffer: cannot read the snapshot list again: {e}"),
                Err(e) => eprintln!("coffer: cannot read the snapshot list again: {e}"),
            }
        }
    });
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName("coffer".into()),
        MountOption::Subtype("coffer".into()),
        MountOption::DefaultPermissions,
    ];
    if a.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(4);
    let session = fuser::spawn_mount(fs, &a.mountpoint, &config).with_context(|| {
        format!(
            "cannot mount on {} (FUSE needs /dev/fuse, and fusermount3 when not root: \
             apt-get install fuse3)",
            a.mountpoint.display()
        )
    })?;
    if !g.quiet {
        eprintln!(
            "coffer: repository mounted on {}; Ctrl-C (or umount) ends it, SIGHUP reads \
             the snapshot list again",
            a.mountpoint.display()
        );
    }
    let (cancel, signal) = super::cancel_on_signal();
    // Until a signal comes or the filesystem is unmounted from outside.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !cancel.is_cancelled() && !session.guard.is_finished() {
        tick.tick().await;
    }
    let ended = tokio::task::spawn_blocking(move || {
        if session.guard.is_finished() {
            session.join()
        } else {
            session.umount_and_join()
        }
    })
    .await
    .context("unmounting failed")?;
    if let Err(e) = ended {
        anyhow::bail!("unmounting {} failed: {e}", a.mountpoint.display());
    }
    if !g.quiet {
        eprintln!("coffer: unmounted {}", a.mountpoint.display());
    }
    // Ending on a signal is how a mount is meant to end: success.
    let _ = signal;
    Ok(exit::OK)
}
