//! The restore target: every path a restore touches is opened beneath the
//! target directory's descriptor, and never through a symbolic link.
//!
//! A snapshot is the tenant's, and so is the volume a restore writes into:
//! a crafted snapshot (the same name as a directory and then as a symlink)
//! or a process racing on the volume (a directory swapped for a symlink
//! while the restore runs) must not make the restore write, chmod or delete
//! anything outside the target. So paths below the target are resolved with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or `O_NOFOLLOW` at every
//! step where the kernel lacks `openat2`), the last component is never
//! followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `linkat` without
//! `AT_SYMLINK_FOLLOW`), and metadata is set through the descriptor of the
//! object itself (`fchown`, `fchmod`, `futimens`, `fsetxattr`) after `fstat`
//! said it is of the kind the snapshot records.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{AtFlags, OFlag};

use crate::beneath::open_beneath;
use nix::sys::stat::{FileStat, Mode, SFlag};

use coffer_repo_format::tree::{Node, NodeKind, Timestamp};

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// What is at a path, as `lstat` says.
pub(crate) struct Found {
    pub(crate) stat: FileStat,
}

impl Found {
    pub(crate) fn is_dir(&self) -> bool {
        SFlag::from_bits_truncate(self.stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
    }
}

/// The directory a restore writes into, held open.
pub(crate) struct Target {
    root: OwnedFd,
    path: PathBuf,
    /// The directory of the last path used, which the next path most likely
    /// shares (the plan and the metadata pass go directory by directory).
    last_dir: Mutex<Option<(PathBuf, Arc<OwnedFd>)>>,
}

impl Target {
    /// Opens the target directory `path` (given by the caller, trusted).
    pub(crate) fn open(path: &Path) -> io::Result<Target> {
        let root = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Target {
            root,
            path: path.to_path_buf(),
            last_dir: Mutex::new(None),
        })
    }

    /// `path` relative to the target.
    fn rel<'p>(&self, path: &'p Path) -> io::Result<&'p Path> {
        path.strip_prefix(&self.path)
            .map_err(|_| io::Error::other(format!("{} is outside the target", path.display())))
    }

    /// The directory `path` is in, opened beneath the target, and its name.
    fn parent(&self, path: &Path) -> io::Result<(Arc<OwnedFd>, OsString)> {
        let rel = self.rel(path)?;
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{} has no name", path.display())))?
            .to_os_string();
        let dir = rel.parent().unwrap_or(Path::new(""));
        let mut last = self.last_dir.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((p, fd)) = last.as_ref() {
            if p == dir {
                return Ok((fd.clone(), name));
            }
        }
        let fd = Arc::new(open_beneath(
            &self.root,
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )?);
        *last = Some((dir.to_path_buf(), fd.clone()));
        Ok((fd, name))
    }

    /// What is at `path` (not following a symlink there); `None` if nothing.
    pub(crate) fn lstat(&self, path: &Path) -> io::Result<Option<Found>> {
        if self.rel(path)?.as_os_str().is_empty() {
            return nix::sys::stat::fstat(&self.root)
                .map(|stat| Some(Found { stat }))
                .map_err(errno);
        }
        let (dir, name) = self.parent(path)?;
        match nix::sys::stat::fstatat(&*dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(Found { stat })),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// Makes the directory `path` (mode 0700 until its metadata is set).
    pub(crate) fn mkdir(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        nix::sys::stat::mkdirat(&*dir, name.as_os_str(), Mode::from_bits_truncate(0o700))
            .map_err(errno)
    }

    /// Creates the regular file `path`, which must not exist (mode 0600 until
    /// its metadata is set); returns it and its inode.
    pub(crate) fn create_file(&self, path: &Path) -> io::Result<(File, u64)> {
        let (dir, name) = self.parent(path)?;
        let fd = nix::fcntl::openat(
            &*dir,
            name.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(errno)?;
        let file = File::from(fd);
        let ino = nix::sys::stat::fstat(&file).map_err(errno)?.st_ino;
        Ok((file, ino))
    }

    /// Opens the regular file at `path` for writing; fails if it is anything
    /// else, or (with `inode`) another file than the one the plan created.
    pub(crate) fn open_write(&self, path: &Path, inode: Option<u64>) -> io::Result<File> {
        let fd = open_beneath(&self.root, self.rel(path)?, OFlag::O_WRONLY, Mode::empty())?;
        let file = File::from(fd);
        let st = nix::sys::stat::fstat(&file).map_err(errno)?;
        let regular =
            SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG;
        if !regular || inode.is_some_and(|i| i != st.st_ino) {
            return Err(io::Error::other(
                "it was replaced by something else while the restore ran",
            ));
        }
        Ok(file)
    }

    /// Makes a symbolic link at `path` pointing to `target` (never followed).
    pub(crate) fn symlink(&self, target: &[u8], path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        nix::unistd::symlinkat(OsStr::from_bytes(target), &*dir, name.as_os_str()).map_err(errno)
    }

    /// Makes a FIFO or device node at `path`.
    pub(crate) fn make_special(&self, path: &Path, node: &Node) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let perm = Mode::from_bits_truncate((node.mode & 0o777) as nix::libc::mode_t);
        let kind = match node.kind {
            NodeKind::Fifo => SFlag::S_IFIFO,
            NodeKind::Chardev => SFlag::S_IFCHR,
            NodeKind::Blockdev => SFlag::S_IFBLK,
            _ => return Err(io::Error::other("not a special file")),
        };
        let rdev = node.rdev.unwrap_or(0) as nix::libc::dev_t;
        nix::sys::stat::mknodat(&*dir, name.as_os_str(), kind, perm, rdev).map_err(errno)
    }

    /// Makes `path` a hard link to the regular file at `first`: both beneath
    /// the target, neither followed. Where the link cannot be made, a copy,
    /// descriptor to descriptor, of a regular file only.
    pub(crate) fn hard_link(&self, first: &Path, path: &Path) -> io::Result<bool> {
        let (from_dir, from) = self.parent(first)?;
        let st =
            nix::sys::stat::fstatat(&*from_dir, from.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(errno)?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(io::Error::other(format!(
                "{} is no longer a regular file",
                first.display()
            )));
        }
        let (to_dir, to) = self.parent(path)?;
        match nix::unistd::linkat(
            &*from_dir,
            from.as_os_str(),
            &*to_dir,
            to.as_os_str(),
            AtFlags::empty(),
        ) {
            Ok(()) => return Ok(true),
            Err(e) => tracing::debug!("{}: cannot hard-link: {e}", path.display()),
        }
        let src = File::from(open_beneath(
            &self.root,
            self.rel(first)?,
            OFlag::O_RDONLY,
            Mode::empty(),
        )?);
        let src_st = nix::sys::stat::fstat(&src).map_err(errno)?;
        if src_st.st_ino != st.st_ino {
            return Err(io::Error::other(format!(
                "{} was replaced while the restore ran",
                first.display()
            )));
        }
        let (mut dst, _) = self.create_file(path)?;
        io::copy(&mut &src, &mut dst)?;
        Ok(false)
    }

    /// Removes what is at `path`: a file, a link, or a directory with
    /// everything in it, without following any symlink.
    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let st = nix::sys::stat::fstatat(&*dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(errno)?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFDIR {
            return nix::unistd::unlinkat(
                &*dir,
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )
            .map_err(errno);
        }
        // Depth first, with an explicit stack (the tree on disk is the
        // tenant's, of any depth): each directory is emptied, then removed.
        let mut stack: Vec<(OwnedFd, OsString, Option<OwnedFd>)> = Vec::new();
        let open_dir = |at: &OwnedFd, name: &OsStr| -> io::Result<OwnedFd> {
            nix::fcntl::openat(
                at,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)
        };
        let parent = nix::fcntl::openat(
            &*dir,
            ".",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let first = open_dir(&parent, &name)?;
        stack.push((parent, name, Some(first)));
        while let Some((_, _, Some(fd))) = stack.last_mut() {
            let fd_dup = fd.try_clone()?;
            let mut d = nix::dir::Dir::from_fd(fd_dup).map_err(errno)?;
            let mut child_dir: Option<OsString> = None;
            for entry in d.iter() {
                let entry = entry.map_err(errno)?;
                let n = OsStr::from_bytes(entry.file_name().to_bytes());
                if n == "." || n == ".." {
                    continue;
                }
                let st = nix::sys::stat::fstatat(&*fd, n, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(errno)?;
                if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR {
                    child_dir = Some(n.to_os_string());
                    break;
                }
                nix::unistd::unlinkat(&*fd, n, nix::unistd::UnlinkatFlags::NoRemoveDir)
                    .map_err(errno)?;
            }
            match child_dir {
                Some(n) => {
                    let at = fd.try_clone()?;
                    let child = open_dir(&at, &n)?;
                    stack.push((at, n, Some(child)));
                }
                None => {
                    let Some((at, n, fd)) = stack.pop() else {
                        break;
                    };
                    drop(fd);
                    nix::unistd::unlinkat(
                        &at,
                        n.as_os_str(),
                        nix::unistd::UnlinkatFlags::RemoveDir,
                    )
                    .map_err(errno)?;
                }
            }
        }
        Ok(())
    }

    /// Applies owner (as root), extended attributes, mode and times to what
    /// is at `path`, through its own descriptor, after checking that it is
    /// of the kind `node` records; a symlink's through its directory's
    /// descriptor, without following it. `keep_setid`: keep the setuid and
    /// setgid bits of the recorded mode. Returns the problems that did not
    /// stop the restore of the path.
    pub(crate) fn apply_metadata(
        &self,
        path: &Path,
        node: &Node,
        as_root: bool,
        keep_setid: bool,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let mode = if keep_setid {
            node.mode
        } else {
            node.mode & !0o6000
        };
        let result = if node.kind == NodeKind::Symlink {
            self.apply_symlink(path, node, as_root, &mut problems)
        } else {
            self.apply_fd(path, node, mode, as_root, &mut problems)
        };
        if let Err(e) = result {
            problems.push(format!("cannot set metadata: {e}"));
        }
        problems
    }

    fn apply_fd(
        &self,
        path: &Path,
        node: &Node,
        mode: u32,
        as_root: bool,
        problems: &mut Vec<String>,
    ) -> io::Result<()> {
        let (kind, flags) = match node.kind {
            NodeKind::File => (SFlag::S_IFREG, OFlag::O_RDONLY | OFlag::O_NONBLOCK),
            NodeKind::Dir => (SFlag::S_IFDIR, OFlag::O_RDONLY | OFlag::O_DIRECTORY),
            NodeKind::Fifo => (SFlag::S_IFIFO, OFlag::O_RDONLY | OFlag::O_NONBLOCK),
            // Opening a device may act on it: a path descriptor only.
            NodeKind::Chardev => (SFlag::S_IFCHR, OFlag::O_PATH),
            NodeKind::Blockdev => (SFlag::S_IFBLK, OFlag::O_PATH),
            NodeKind::Symlink => unreachable!("symlinks are handled by apply_symlink"),
        };
        let fd = open_beneath(&self.root, self.rel(path)?, flags, Mode::empty())?;
        let st = nix::sys::stat::fstat(&fd).map_err(errno)?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != kind {
            return Err(io::Error::other(
                "it was replaced by something else while the restore ran",
            ));
        }
        let path_fd = flags.contains(OFlag::O_PATH);
        // A path descriptor is reached through its /proc link, which names
        // exactly the inode it was opened on.
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if as_root {
            let owner = (
                Some(nix::unistd::Uid::from_raw(node.uid)),
                Some(nix::unistd::Gid::from_raw(node.gid)),
            );
            if let Err(e) = nix::unistd::fchownat(&fd, "", owner.0, owner.1, AtFlags::AT_EMPTY_PATH)
            {
                problems.push(format!("cannot set owner {}:{}: {e}", node.uid, node.gid));
            }
        }
        for x in &node.xattrs {
            let name = OsStr::from_bytes(&x.name.0);
            let set = if path_fd {
                xattr::set(&proc_path, name, &x.value.0)
            } else {
                use xattr::FileExt;
                File::from(fd.try_clone()?).set_xattr(name, &x.value.0)
            };
            if let Err(e) = set {
                // security.selinux and system.* need privileges or support the
                // target may lack; report, do not fail.
                problems.push(format!(
                    "cannot set extended attribute {}: {e}",
                    x.name.to_string_lossy()
                ));
            }
        }
        let perm = Mode::from_bits_truncate(mode as nix::libc::mode_t);
        let chmod = if path_fd {
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &proc_path,
                perm,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
        } else {
            nix::sys::stat::fchmod(&fd, perm)
        };
        if let Err(e) = chmod {
            problems.push(format!("cannot set mode {mode:o}: {e}"));
        }
        let times = if path_fd {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &proc_path,
                &timespec(node.atime),
                &timespec(node.mtime),
                nix::sys::stat::UtimensatFlags::FollowSymlink,
            )
        } else {
            nix::sys::stat::futimens(&fd, &timespec(node.atime), &timespec(node.mtime))
        };
        if let Err(e) = times {
            problems.push(format!("cannot set times: {e}"));
        }
        Ok(())
    }

    fn apply_symlink(
        &self,
        path: &Path,
        node: &Node,
        as_root: bool,
        problems: &mut Vec<String>,
    ) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let st = nix::sys::stat::fstatat(&*dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(errno)?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFLNK {
            return Err(io::Error::other(
                "it was replaced by something else while the restore ran",
            ));
        }
        if as_root {
            if let Err(e) = nix::unistd::fchownat(
                &*dir,
                name.as_os_str(),
                Some(nix::unistd::Uid::from_raw(node.uid)),
                Some(nix::unistd::Gid::from_raw(node.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                problems.push(format!("cannot set owner {}:{}: {e}", node.uid, node.gid));
            }
        }
        // The link itself, named through its directory's descriptor.
        let link = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(&name);
        for x in &node.xattrs {
            if let Err(e) = xattr::set(&link, OsStr::from_bytes(&x.name.0), &x.value.0) {
                problems.push(format!(
                    "cannot set extended attribute {}: {e}",
                    x.name.to_string_lossy()
                ));
            }
        }
        if let Err(e) = nix::sys::stat::utimensat(
            &*dir,
            name.as_os_str(),
            &timespec(node.atime),
            &timespec(node.mtime),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        ) {
            problems.push(format!("cannot set times: {e}"));
        }
        Ok(())
    }
}

fn timespec(t: Timestamp) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(t.secs() as nix::libc::time_t, t.nanos() as _)
}
