//! File metadata: reading it into tree nodes at backup (restore applies it
//! through descriptors, in `restore/target.rs`). Unix only; every call here
//! leaves symlinks themselves alone (no following).

use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use coffer_repo_format::tree::{Node, NodeKind, Timestamp, Xattr};

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

/// The names in a directory, sorted by their bytes, read without changing the
/// directory's access time: a backup must not change what it backs up (an
/// atime that moved would make the next backup write a new tree).
pub(crate) fn dir_names(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStringExt;
    let file = open_noatime(dir, true)?;
    let mut d = nix::dir::Dir::from_fd(file.into()).map_err(io::Error::from)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(std::ffi::OsString::from_vec(name.to_vec()));
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// The kind of a file type, or `None` for sockets, which are not backed up.
pub(crate) fn kind_of(md: &Metadata) -> Option<NodeKind> {
    let ft = md.file_type();
    if ft.is_file() {
        Some(NodeKind::File)
    } else if ft.is_dir() {
        Some(NodeKind::Dir)
    } else if ft.is_symlink() {
        Some(NodeKind::Symlink)
    } else if ft.is_fifo() {
        Some(NodeKind::Fifo)
    } else if ft.is_char_device() {
        Some(NodeKind::Chardev)
    } else if ft.is_block_device() {
        Some(NodeKind::Blockdev)
    } else {
        None
    }
}

/// Builds a node from `lstat` metadata and the path's extended attributes.
/// Content and subtree are filled in later.
pub(crate) fn read_node(
    name: &[u8],
    path: &Path,
    md: &Metadata,
    kind: NodeKind,
    owners: &mut Owners,
) -> io::Result<Node> {
    let mut node = read_node_stat(name, path, md, kind, owners)?;
    node.xattrs = read_xattrs(path);
    Ok(node)
}

/// As [`read_node`], without the extended attributes.
pub(crate) fn read_node_stat(
    name: &[u8],
    path: &Path,
    md: &Metadata,
    kind: NodeKind,
    owners: &mut Owners,
) -> io::Result<Node> {
    let mut node = Node::new(name, kind);
    node.mode = md.mode() & 0o7777;
    node.uid = md.uid();
    node.gid = md.gid();
    node.user = owners.user(md.uid());
    node.group = owners.group(md.gid());
    node.mtime = Timestamp(md.mtime(), md.mtime_nsec() as u32);
    node.atime = Timestamp(md.atime(), md.atime_nsec() as u32);
    node.ctime = Timestamp(md.ctime(), md.ctime_nsec() as u32);
    node.inode = md.ino();
    node.device = md.dev();
    node.links = md.nlink();
    match kind {
        NodeKind::File => node.size = md.size(),
        NodeKind::Symlink => {
            node.target = Some(std::fs::read_link(path)?.as_os_str().as_bytes().into());
        }
        NodeKind::Chardev | NodeKind::Blockdev => node.rdev = Some(md.rdev()),
        _ => {}
    }
    Ok(node)
}

/// Every extended attribute the process can read; none where the filesystem
/// does not support them.
pub(crate) fn read_xattrs(path: &Path) -> Vec<Xattr> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<Xattr> = names
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok().flatten()?;
            Some(Xattr {
                name: name.as_bytes().into(),
                value: value.into(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Whether the process runs as root and can restore owners and device nodes.
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
