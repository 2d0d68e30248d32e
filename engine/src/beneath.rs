//! Paths beneath a directory descriptor, never through a symbolic link:
//! how backup reads a volume and restore writes one, when a tenant's process
//! may be changing it meanwhile (SPEC §15, the README's "Security model").

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Whether the kernel has `openat2` (Linux 5.6); learnt at the first call.
static OPENAT2: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Opens `rel` (relative, no `..`) beneath `root`: no symbolic link is
/// followed on the way or at the end, and nothing outside `root` is reached.
pub(crate) fn open_beneath(
    root: &impl AsFd,
    rel: &Path,
    flags: OFlag,
    mode: Mode,
) -> io::Result<OwnedFd> {
    use std::sync::atomic::Ordering;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if OPENAT2.load(Ordering::Relaxed) != 2 {
        use nix::fcntl::{OpenHow, ResolveFlag};
        let how = OpenHow::new().flags(flags).mode(mode).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        match nix::fcntl::openat2(root.as_fd(), rel, how) {
            Err(nix::errno::Errno::ENOSYS) => OPENAT2.store(2, Ordering::Relaxed),
            r => {
                OPENAT2.store(1, Ordering::Relaxed);
                return r.map_err(errno);
            }
        }
    }
    // No openat2: one component at a time, none followed.
    let mut comps: Vec<&OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => comps.push(n),
            std::path::Component::CurDir => {}
            _ => return Err(io::Error::from_raw_os_error(nix::libc::EXDEV)),
        }
    }
    let Some((last, dirs)) = comps.split_last() else {
        return nix::fcntl::openat(root.as_fd(), ".", flags, mode).map_err(errno);
    };
    let mut dir: Option<OwnedFd> = None;
    for c in dirs {
        let at = dir.as_ref().map(|d| d.as_fd()).unwrap_or(root.as_fd());
        let next = nix::fcntl::openat(
            at,
            *c,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        dir = Some(next);
    }
    let at = dir.as_ref().map(|d| d.as_fd()).unwrap_or(root.as_fd());
    nix::fcntl::openat(at, *last, flags, mode).map_err(errno)
}
