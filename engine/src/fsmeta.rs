//! File metadata: reading it into tree nodes at backup (restore applies it
//! through descriptors, in `restore/target.rs`). Unix only. Everything below
//! a walk's root is reached through its directory's descriptor and its name
//! ([`At::Dir`]), never by a path a tenant's process could change, and no
//! call here follows a symbolic link.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use coffer_repo_format::tree::{Node, NodeKind, Timestamp, Xattr};

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Caches uid and gid to name lookups.
#[derive(Default)]
pub(crate) struct Owners {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Owners {
    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

/// What `lstat` says of a file (the link itself for a symlink).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// `st_mode`: type and permission bits.
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) mtime: Timestamp,
    pub(crate) atime: Timestamp,
    pub(crate) ctime: Timestamp,
    pub(crate) ino: u64,
    pub(crate) dev: u64,
    pub(crate) nlink: u64,
    pub(crate) rdev: u64,
}

impl Meta {
    pub(crate) fn from_stat(st: &FileStat) -> Meta {
        let ts = |s: i64, ns: i64| Timestamp(s, ns.clamp(0, 999_999_999) as u32);
        Meta {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size.max(0) as u64,
            mtime: ts(st.st_mtime, st.st_mtime_nsec),
            atime: ts(st.st_atime, st.st_atime_nsec),
            ctime: ts(st.st_ctime, st.st_ctime_nsec),
            ino: st.st_ino,
            dev: st.st_dev,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
        }
    }

    fn format(&self) -> SFlag {
        SFlag::from_bits_truncate(self.mode & SFlag::S_IFMT.bits())
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.format() == SFlag::S_IFDIR
    }

    pub(crate) fn is_file(&self) -> bool {
        self.format() == SFlag::S_IFREG
    }

    pub(crate) fn is_block_device(&self) -> bool {
        self.format() == SFlag::S_IFBLK
    }

    /// Whether `other` is the same file: device, inode and type.
    pub(crate) fn same_file(&self, other: &Meta) -> bool {
        self.dev == other.dev && self.ino == other.ino && self.format() == other.format()
    }
}

/// `lstat` of a path the caller gave (a backup's source, trusted).
pub(crate) fn lstat(path: &Path) -> io::Result<Meta> {
    nix::sys::stat::lstat(path)
        .map(|st| Meta::from_stat(&st))
        .map_err(errno)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn stat_at(dir: &impl AsFd, name: &OsStr) -> io::Result<Meta> {
    nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| Meta::from_stat(&st))
        .map_err(errno)
}

/// `fstat` of an open file.
pub(crate) fn fstat(fd: &impl AsFd) -> io::Result<Meta> {
    nix::sys::stat::fstat(fd.as_fd())
        .map(|st| Meta::from_stat(&st))
        .map_err(errno)
}

/// Where a file is: beneath a walk's root, its directory's descriptor and
/// its name; or a path the caller gave.
#[derive(Clone, Copy)]
pub(crate) enum At<'a> {
    Dir(&'a OwnedFd, &'a OsStr),
    /// A directory held open (its listing's descriptor).
    Open(&'a OwnedFd),
    Path(&'a Path),
}

impl At<'_> {
    /// A path that names the same file without any lookup a tenant could
    /// redirect: the directory's `/proc/self/fd` link and the name (the last
    /// component is never followed by the calls that take it).
    fn stable_path(&self) -> PathBuf {
        match self {
            At::Dir(dir, name) => {
                PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
            }
            At::Open(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            At::Path(p) => p.to_path_buf(),
        }
    }

    fn read_link(&self) -> io::Result<OsString> {
        match self {
            At::Dir(dir, name) => nix::fcntl::readlinkat(dir.as_fd(), *name).map_err(errno),
            At::Open(_) => Err(io::Error::other("a directory is not a symbolic link")),
            At::Path(p) => std::fs::read_link(p).map(PathBuf::into_os_string),
        }
    }

    /// Opens a regular file for reading, with its metadata: never through a
    /// symlink, and never blocking (`O_NONBLOCK`: a FIFO swapped in is opened
    /// at once, then refused). Anything but a regular file is an error of
    /// kind `InvalidData` that says what it is. Without changing the access
    /// time, where allowed.
    ///
    /// With `untrusted`, nothing but a regular file is even opened: the name
    /// is opened as a path descriptor, checked, and reopened through it (its
    /// `/proc/self/fd` link names exactly that inode), so a device node that
    /// a tenant's pod swaps in is never opened by a privileged process (its
    /// driver's `open` could act). That costs about 4 µs a file.
    pub(crate) fn open_regular(&self, untrusted: bool) -> io::Result<(std::fs::File, Meta)> {
        let (dir, name) = match self {
            At::Dir(dir, name) => (*dir, *name),
            At::Open(_) => return Err(io::Error::other("a directory is not a regular file")),
            At::Path(p) => {
                let f = open_noatime(p, false)?;
                let md = fstat(&f)?;
                return Ok((f, md));
            }
        };
        let not_regular = |md: &Meta| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "changed while it was read: it is now a {}, not a regular file; skipped",
                    kind_name(kind_of(md))
                ),
            )
        };
        let flags = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        if !untrusted {
            let read = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | flags;
            let open =
                |extra: OFlag| nix::fcntl::openat(dir.as_fd(), name, read | extra, Mode::empty());
            let fd = match open(OFlag::O_NOATIME) {
                Err(nix::errno::Errno::EPERM) => open(OFlag::empty()),
                other => other,
            }
            .map_err(errno)?;
            let md = fstat(&fd)?;
            if !md.is_file() {
                return Err(not_regular(&md));
            }
            return Ok((std::fs::File::from(fd), md));
        }
        let handle = nix::fcntl::openat(dir.as_fd(), name, OFlag::O_PATH | flags, Mode::empty())
            .map_err(errno)?;
        let md = fstat(&handle)?;
        if !md.is_file() {
            return Err(not_regular(&md));
        }
        let read = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let link = format!("/proc/self/fd/{}", handle.as_raw_fd());
        let reopen = |extra: OFlag| nix::fcntl::open(link.as_str(), read | extra, Mode::empty());
        let file = match reopen(OFlag::O_NOATIME) {
            Err(nix::errno::Errno::EPERM) => reopen(OFlag::empty()),
            other => other,
        };
        match file {
            Ok(fd) => Ok((std::fs::File::from(fd), md)),
            // No /proc: open the name again, and check it is the same file.
            Err(nix::errno::Errno::ENOENT) => {
                let fd = nix::fcntl::openat(
                    dir.as_fd(),
                    name,
                    read | flags | OFlag::O_NONBLOCK,
                    Mode::empty(),
                )
                .map_err(errno)?;
                let again = fstat(&fd)?;
                if !again.same_file(&md) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "changed while it was read: it was replaced; skipped",
                    ));
                }
                Ok((std::fs::File::from(fd), again))
            }
            Err(e) => Err(errno(e)),
        }
    }
}

/// Opens the directory `rel` beneath `root` for reading its entries, never
/// through a symlink, without changing its access time where allowed.
pub(crate) fn open_dir_beneath(root: &impl AsFd, rel: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    match crate::beneath::open_beneath(root, rel, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => {
            crate::beneath::open_beneath(root, rel, flags, Mode::empty())
        }
        other => other,
    }
}

/// The names in an open directory, sorted by their bytes.
pub(crate) fn names_of(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut d = nix::dir::Dir::from_fd(dir.try_clone()?).map_err(errno)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Opens a file or directory for reading without changing its access time
/// (`O_NOATIME`), where the kernel permits it: it refuses on what the process
/// neither owns nor may override, and then the file is opened plainly.
pub(crate) fn open_noatime(path: &Path, directory: bool) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = nix::libc::O_CLOEXEC;
    if directory {
        flags |= nix::libc::O_DIRECTORY;
    }
    let open = |extra: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | extra)
            .open(path)
    };
    match open(nix::libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => open(0),
        other => other,
    }
}

/// A file kind in words (`None`: a socket).
pub(crate) fn kind_name(kind: Option<NodeKind>) -> &'static str {
    match kind {
        Some(NodeKind::File) => "regular file",
        Some(NodeKind::Dir) => "directory",
        Some(NodeKind::Symlink) => "symbolic link",
        Some(NodeKind::Fifo) => "FIFO",
        Some(NodeKind::Chardev) => "character device",
        Some(NodeKind::Blockdev) => "block device",
        None => "socket",
    }
}

/// The kind of a file, or `None` for sockets, which are not backed up.
pub(crate) fn kind_of(md: &Meta) -> Option<NodeKind> {
    match md.format() {
        SFlag::S_IFREG => Some(NodeKind::File),
        SFlag::S_IFDIR => Some(NodeKind::Dir),
        SFlag::S_IFLNK => Some(NodeKind::Symlink),
        SFlag::S_IFIFO => Some(NodeKind::Fifo),
        SFlag::S_IFCHR => Some(NodeKind::Chardev),
        SFlag::S_IFBLK => Some(NodeKind::Blockdev),
        _ => None,
    }
}

/// Builds a node from `lstat` metadata and the file's extended attributes.
/// Content and subtree are filled in later.
pub(crate) fn read_node(
    name: &[u8],
    at: At<'_>,
    md: &Meta,
    kind: NodeKind,
    owners: &mut Owners,
) -> io::Result<Node> {
    let mut node = read_node_stat(name, at, md, kind, owners)?;
    node.xattrs = read_xattrs(at);
    Ok(node)
}

/// Sets a node's metadata fields from `lstat` metadata.
pub(crate) fn set_stat(node: &mut Node, md: &Meta, owners: &mut Owners) {
    node.mode = md.mode & 0o7777;
    node.uid = md.uid;
    node.gid = md.gid;
    node.user = owners.user(md.uid);
    node.group = owners.group(md.gid);
    node.mtime = md.mtime;
    node.atime = md.atime;
    node.ctime = md.ctime;
    node.inode = md.ino;
    node.device = md.dev;
    node.links = md.nlink;
}

/// As [`read_node`], without the extended attributes.
pub(crate) fn read_node_stat(
    name: &[u8],
    at: At<'_>,
    md: &Meta,
    kind: NodeKind,
    owners: &mut Owners,
) -> io::Result<Node> {
    let mut node = Node::new(name, kind);
    set_stat(&mut node, md, owners);
    match kind {
        NodeKind::File => node.size = md.size,
        NodeKind::Symlink => node.target = Some(at.read_link()?.as_bytes().into()),
        NodeKind::Chardev | NodeKind::Blockdev => node.rdev = Some(md.rdev),
        _ => {}
    }
    Ok(node)
}

/// Every extended attribute the process can read; none where the filesystem
/// does not support them. Read without following a symlink.
pub(crate) fn read_xattrs(at: At<'_>) -> Vec<Xattr> {
    let mut out: Vec<Xattr> = if let At::Open(fd) = at {
        // The open directory itself (its /proc link would be the link).
        use xattr::FileExt;
        let Ok(file) = fd.try_clone().map(std::fs::File::from) else {
            return Vec::new();
        };
        let Ok(names) = file.list_xattr() else {
            return Vec::new();
        };
        names
            .filter_map(|name| {
                let value = file.get_xattr(&name).ok().flatten()?;
                Some(Xattr {
                    name: name.as_bytes().into(),
                    value: value.into(),
                })
            })
            .collect()
    } else {
        let path = at.stable_path();
        let Ok(names) = xattr::list(&path) else {
            return Vec::new();
        };
        names
            .filter_map(|name| {
                let value = xattr::get(&path, &name).ok().flatten()?;
                Some(Xattr {
                    name: name.as_bytes().into(),
                    value: value.into(),
                })
            })
            .collect()
    };
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Whether the process runs as root and can restore owners and device nodes.
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
