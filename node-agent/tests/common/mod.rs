//! A kubelet directory built on disk, as the kubelet leaves it: plugin
//! directories, bind mounts for mounted volumes and loop devices for block
//! volumes (both need root; without root they are left out and the callers
//! skip what needs them).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this process can mount and attach loop devices.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A fake node: `root/kubelet` is the kubelet's directory, `root/host` the
/// host's `/`, `root/disks` the volumes' backing directories. Mounts and loop
/// devices are undone on drop.
pub struct Node {
    pub dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
}

impl Node {
    pub fn new() -> Node {
        Node {
            dir: tempfile::tempdir().unwrap(),
            mounts: Vec::new(),
            loops: Vec::new(),
        }
    }

    pub fn kubelet(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    pub fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.kubelet().join("pods").join(uid)
    }

    /// A plain directory (emptyDir), returned for the caller to fill.
    pub fn empty_dir(&self, uid: &str, volume: &str) -> PathBuf {
        let p = self
            .pod_dir(uid)
            .join("volumes/kubernetes.io~empty-dir")
            .join(volume);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// A mounted volume at `rel` below the pod directory, backed by a new
    /// directory under `disks/` (bind-mounted as root; as another user the
    /// directory exists but is no mount point). Returns the backing directory,
    /// which shows what the volume holds.
    pub fn mounted(&mut self, uid: &str, rel: &str) -> PathBuf {
        let target = self.pod_dir(uid).join(rel);
        std::fs::create_dir_all(&target).unwrap();
        let backing = self.dir.path().join("disks").join(uid).join(rel);
        std::fs::create_dir_all(&backing).unwrap();
        if is_root() {
            let ok = Command::new("mount")
                .arg("--bind")
                .arg(&backing)
                .arg(&target)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "mount --bind {} {}",
                backing.display(),
                target.display()
            );
            self.mounts.push(target);
        }
        backing
    }

    /// A block device of `size` bytes (a loop device over a file) linked at
    /// `rel` below the pod directory, as the kubelet links CSI block volumes.
    /// `None` without root.
    pub fn block(&mut self, uid: &str, rel: &str, size: u64) -> Option<(String, PathBuf)> {
        if !is_root() {
            return None;
        }
        let img = self
            .dir
            .path()
            .join("disks")
            .join(format!("{}.img", rel.replace('/', "_")));
        std::fs::create_dir_all(img.parent().unwrap()).unwrap();
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        self.loops.push(dev.clone());
        let link = self.pod_dir(uid).join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&dev, &link).unwrap();
        Some((dev, img))
    }

    /// A directory on the "host" (for hostPath volumes).
    pub fn host_dir(&self, path: &str) -> PathBuf {
        let p = self.host().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        for d in &self.loops {
            let _ = Command::new("losetup").arg("-d").arg(d).status();
        }
    }
}

/// Writes a file, making its parent directories.
pub fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}
