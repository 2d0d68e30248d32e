//! Reading the kubelet's directory: the listing [`crate::node::plan`] plans from,
//! and hostPath resolution that keeps symlinks inside the host's root.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use crate::node::plan::KubeletListing;

/// Lists `<kubelet_root>/pods/<uid>/volumes/*/*` (and `*/*/mount`) and
/// `volumeDevices/*/*`, marking mount points from `/proc/self/mountinfo`.
/// A pod directory that does not exist gives an empty listing.
pub fn read_listing(kubelet_root: &Path, uid: &str) -> io::Result<KubeletListing> {
    let pod_dir = kubelet_root.join("pods").join(uid);
    let mounts = mount_points()?;
    let mut out = KubeletListing::default();
    let mut note = |rel: String, abs: &Path| {
        if mounts.contains(abs) {
            out.mounted.insert(rel.clone());
        }
        out.present.insert(rel);
    };
    for (plugin, entry) in two_levels(&pod_dir.join("volumes"))? {
        let rel = format!("volumes/{plugin}/{entry}");
        let abs = pod_dir.join(&rel);
        note(rel.clone(), &abs);
        let mount = abs.join("mount");
        if mount.is_dir() {
            note(format!("{rel}/mount"), &mount);
        }
    }
    for (plugin, entry) in two_levels(&pod_dir.join("volumeDevices"))? {
        let rel = format!("volumeDevices/{plugin}/{entry}");
        // The kubelet links the device here; follow the link.
        if let Ok(md) = std::fs::metadata(pod_dir.join(&rel)) {
            if md.file_type().is_block_device() {
                out.devices.insert(rel);
            }
        }
    }
    Ok(out)
}

/// `(first, second)` names two levels below `dir`; none if `dir` is missing.
fn two_levels(dir: &Path) -> io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let first = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for a in first {
        let a = a?;
        let Ok(an) = a.file_name().into_string() else {
            continue;
        };
        let Ok(second) = std::fs::read_dir(a.path()) else {
            continue;
        };
        for b in second {
            let b = b?;
            if let Ok(bn) = b.file_name().into_string() {
                out.push((an.clone(), bn));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every mount point of this mount namespace.
fn mount_points() -> io::Result<BTreeSet<PathBuf>> {
    let text = match std::fs::read("/proc/self/mountinfo") {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(p))))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Resolves `host_path` (absolute, on the host) below `root` (where the
/// host's `/` is mounted in the agent) as the host would: symlinks, relative
/// or absolute, are followed inside `root` and can never leave it. Returns the
/// resolved host path (to check against the allowed prefixes) and the path to
/// open in the agent.
pub fn resolve_in_root(root: &Path, host_path: &Path) -> io::Result<(PathBuf, PathBuf)> {
    const MAX_LINKS: usize = 40;
    let mut links = 0;
    let mut resolved = PathBuf::from("/");
    let mut pending: Vec<std::ffi::OsString> = host_path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let inside = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        match std::fs::symlink_metadata(&inside) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "{}: too many levels of symbolic links",
                        host_path.display()
                    )));
                }
                let target = std::fs::read_link(&inside)?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => resolved = candidate,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", host_path.display()),
                ))
            }
        }
    }
    let inside = root.join(resolved.strip_prefix("/").unwrap_or(&resolved));
    Ok((resolved, inside))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_host_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("data/db")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::os::unix::fs::symlink("/data/db", r.join("data/current")).unwrap();
        std::os::unix::fs::symlink("../../etc", r.join("data/db/escape")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("data/abs")).unwrap();
        let (host, inside) = resolve_in_root(r, Path::new("/data/current")).unwrap();
        assert_eq!(host, PathBuf::from("/data/db"));
        assert_eq!(inside, r.join("data/db"));
        // A relative link that climbs above the root stops at the root.
        let (host, _) = resolve_in_root(r, Path::new("/data/db/escape")).unwrap();
        assert_eq!(host, PathBuf::from("/etc"));
        let (host, inside) = resolve_in_root(r, Path::new("/data/abs")).unwrap();
        assert_eq!(host, PathBuf::from("/etc"));
        assert_eq!(
            inside,
            r.join("etc"),
            "an absolute link stays inside the root"
        );
        std::os::unix::fs::symlink("loop", r.join("data/loop")).unwrap();
        assert!(resolve_in_root(r, Path::new("/data/loop")).is_err());
        assert!(resolve_in_root(r, Path::new("/data/missing")).is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(b"/a\\040b\\134c"), b"/a b\\c");
        assert_eq!(unescape(b"/plain"), b"/plain");
        assert_eq!(unescape(b"/trail\\04"), b"/trail\\04");
    }
}
