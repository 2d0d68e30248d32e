//! Prefetch: between the walker and the file workers, opens each queued file
//! and asks the kernel to start reading it (`posix_fadvise(WILLNEED)`), so a
//! worker finds a small file in the page cache instead of waiting for the disk
//! one file at a time (a cold tree of small files was read at two files in
//! flight, one per worker).
//!
//! Bounded in files and bytes, whatever the source: at most [`QUEUE`] files
//! wait opened for a worker, with at most [`AHEAD`] bytes of each advised (the
//! rest of a large file is read ahead by the worker and the kernel as it is
//! read). The file is opened exactly as a worker would open it
//! ([`crate::fsmeta::At::open_regular`]); one that cannot be opened here goes on
//! unopened, and the worker's own open reports why.

use crossbeam_channel::{Receiver, Sender};

use super::source::{FileAt, FileJob};
use crate::cancel::CancelToken;

/// Files opened and advised ahead of the workers.
pub(crate) const QUEUE: usize = 64;
/// Bytes advised of each file.
const AHEAD: u64 = 4 * 1024 * 1024;

/// Passes every job from `jobs` to `ready`, opened and advised; ends when
/// either side closes or the backup is cancelled.
pub(crate) fn run(
    untrusted: bool,
    cancel: &CancelToken,
    jobs: Receiver<FileJob>,
    ready: Sender<FileJob>,
) {
    for mut job in jobs {
        if cancel.is_cancelled() {
            return;
        }
        // Files in a walked directory only: a device named on the command
        // line is read as it is.
        if let FileAt::Dir(..) = job.at {
            if let Ok((file, md)) = job.at.at().open_regular(untrusted) {
                let len = md.size.min(AHEAD) as nix::libc::off_t;
                if let Err(e) = nix::fcntl::posix_fadvise(
                    &file,
                    0,
                    len,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
                ) {
                    tracing::trace!("{}: fadvise: {e}", job.path.display());
                }
                job.opened = Some((file, md));
            }
        }
        if ready.send(job).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::sync::Arc;

    use coffer_repo_format::tree::{Node, NodeKind};
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;

    use super::*;

    fn job(dir: &Arc<OwnedFd>, name: &str) -> FileJob {
        FileJob {
            at: FileAt::Dir(dir.clone(), name.into()),
            path: name.into(),
            node: Node::new(name.as_bytes().to_vec(), NodeKind::File),
            reply: crossbeam_channel::bounded(1).0,
            opened: None,
        }
    }

    /// Runs the stage over `names` in `dir`; returns each job as it came out.
    fn through(dir: &std::path::Path, names: &[&str], untrusted: bool) -> Vec<FileJob> {
        let fd = Arc::new(
            nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap(),
        );
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(QUEUE);
        for n in names {
            tx.send(job(&fd, n)).unwrap();
        }
        drop(tx);
        run(untrusted, &CancelToken::new(), rx, ready_tx);
        ready_rx.iter().collect()
    }

    #[test]
    fn regular_files_come_out_opened_and_anything_else_unopened_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"alpha").unwrap();
        std::fs::write(dir.path().join("c"), vec![7u8; 3 * 1024 * 1024]).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("link")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let names = ["a", "fifo", "link", "missing", "sub", "c"];
        for untrusted in [false, true] {
            let out = through(dir.path(), &names, untrusted);
            let got: Vec<_> = out.iter().map(|j| j.path.to_str().unwrap()).collect();
            assert_eq!(got, names, "every job passes, in order");
            for j in &out {
                let opened = j.opened.as_ref();
                match j.path.to_str().unwrap() {
                    "a" => {
                        let (file, md) = opened.expect("a regular file is opened");
                        assert_eq!(md.size, 5);
                        let mut s = String::new();
                        std::io::Read::read_to_string(&mut &*file, &mut s).unwrap();
                        assert_eq!(s, "alpha");
                    }
                    "c" => assert_eq!(opened.unwrap().1.size, 3 * 1024 * 1024),
                    // A FIFO is never opened for reading (no hang), a symlink
                    // never followed; the worker's own open reports them.
                    other => assert!(opened.is_none(), "{other} was opened"),
                }
            }
        }
    }

    #[test]
    fn a_cancelled_backup_stops_the_stage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"alpha").unwrap();
        let fd = Arc::new(
            nix::fcntl::open(
                dir.path(),
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .unwrap(),
        );
        let (tx, rx) = crossbeam_channel::bounded(4);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(4);
        tx.send(job(&fd, "a")).unwrap();
        let cancel = CancelToken::new();
        cancel.cancel();
        // The walker is still there (tx open): the stage must not wait for it.
        run(false, &cancel, rx, ready_tx);
        assert!(ready_rx.try_recv().is_err());
        drop(tx);
    }
}
