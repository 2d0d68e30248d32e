//! Dump: one file of a snapshot to a writer, or a directory as a tar stream,
//! for `coffer dump latest db.sql | mysql` style restores. Every blob is
//! verified before its bytes are written.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use coffer_repo_format::blob::BlobType;
use coffer_repo_format::tree::{ContentRef, Node, NodeKind};

use crate::error::{Error, Missing, Result};
use crate::index::Index;
use crate::repository::Repository;
use crate::trees::{self, Entry, Step, Walk};

/// Reads a file's content blob by blob.
struct ContentReader<'a> {
    repo: &'a Repository,
    index: &'a Index,
    rt: &'a tokio::runtime::Handle,
    content: std::vec::IntoIter<ContentRef>,
    buf: Vec<u8>,
    pos: usize,
    zeros: u64,
}

impl Read for ContentReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.zeros > 0 {
                let n = (self.zeros.min(out.len() as u64)) as usize;
                out[..n].fill(0);
                self.zeros -= n as u64;
                return Ok(n);
            }
            if self.pos < self.buf.len() {
                let n = (self.buf.len() - self.pos).min(out.len());
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.content.next() {
                None => return Ok(0),
                Some(ContentRef { id: None, len }) => self.zeros = len,
                Some(ContentRef { id: Some(id), len }) => {
                    let plain = self
                        .rt
                        .block_on(self.repo.read_blob(self.index, BlobType::Data, &id))
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    if plain.len() as u64 != len {
                        return Err(std::io::Error::other(format!(
                            "blob {id} has {} bytes, the tree says {len}",
                            plain.len()
                        )));
                    }
                    self.buf = plain;
                    self.pos = 0;
                }
            }
        }
    }
}

/// Writes the file or directory at `path` of `snapshot` to `out`: a file's
/// content as is, a directory as a tar stream. Returns what was written: the
/// node that was dumped.
pub async fn dump(
    repo: Arc<Repository>,
    index: Arc<Index>,
    snapshot: &str,
    path: &str,
    out: Box<dyn Write + Send>,
) -> Result<Node> {
    let (id, snap) = repo.find_snapshot(snapshot).await?;
    let node = trees::lookup(&repo, &index, &snap.root, path.as_bytes())
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("path {path} in snapshot {}", id.short()),
            missing: Missing::Path,
        })?;
    let rt = tokio::runtime::Handle::current();
    let n = node.clone();
    let path = path.to_string();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut out = out;
        match n.kind {
            NodeKind::File => {
                let mut r = reader(&repo, &index, &rt, &n);
                std::io::copy(&mut r, &mut out).map_err(|e| Error::io("output", e))?;
            }
            NodeKind::Dir => {
                let mut tar = tar::Builder::new(out);
                tar.mode(tar::HeaderMode::Complete);
                let base = n.name.to_string_lossy();
                let base = if base == "root" || path.trim_matches('/').is_empty() {
                    ".".to_string()
                } else {
                    base
                };
                write_tree(&repo, &index, &rt, &mut tar, &n, PathBuf::from(base))?;
                tar.into_inner()
                    .and_then(|mut w| w.flush())
                    .map_err(|e| Error::io("output", e))?;
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{path} is a {:?}, not a file or directory",
                    n.kind
                )));
            }
        }
        Ok(())
    })
    .await??;
    Ok(node)
}

/// The content of file node `n`, whole, when it is at most `max` bytes (a
/// small file such as an application snapshot's object): every blob is
/// verified, and a file larger than `max` is refused, naming `what`.
pub async fn read_small_file(
    repo: &Repository,
    index: &Index,
    n: &Node,
    max: u64,
    what: &str,
) -> Result<Vec<u8>> {
    if n.kind != NodeKind::File {
        return Err(Error::InvalidArgument(format!(
            "{what} is a {:?}, not a file",
            n.kind
        )));
    }
    let total = n
        .content
        .iter()
        .try_fold(0u64, |t, c| t.checked_add(c.len))
        .unwrap_or(u64::MAX);
    if n.size > max || total > max {
        return Err(Error::InvalidArgument(format!(
            "{what} has {} bytes, more than the {max} this reads",
            n.size.max(total)
        )));
    }
    let mut out = Vec::with_capacity(total as usize);
    for c in &n.content {
        match c.id {
            None => out.resize(out.len() + c.len as usize, 0),
            Some(id) => {
                let plain = repo.read_blob(index, BlobType::Data, &id).await?;
                if plain.len() as u64 != c.len {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: blob {id} has {} bytes, the tree says {}",
                        plain.len(),
                        c.len
                    )));
                }
                out.extend_from_slice(&plain);
            }
        }
    }
    Ok(out)
}

fn reader<'a>(
    repo: &'a Repository,
    index: &'a Index,
    rt: &'a tokio::runtime::Handle,
    n: &Node,
) -> ContentReader<'a> {
    ContentReader {
        repo,
        index,
        rt,
        content: n.content.clone().into_iter(),
        buf: Vec::new(),
        pos: 0,
        zeros: 0,
    }
}

fn header(n: &Node, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(n.mode);
    h.set_uid(n.uid.into());
    h.set_gid(n.gid.into());
    h.set_mtime(n.mtime.secs().max(0) as u64);
    if let Some(u) = &n.user {
        let _ = h.set_username(u);
    }
    if let Some(g) = &n.group {
        let _ = h.set_groupname(g);
    }
    h
}

fn write_tree<W: Write>(
    repo: &Repository,
    index: &Index,
    rt: &tokio::runtime::Handle,
    tar: &mut tar::Builder<W>,
    dir: &Node,
    path: PathBuf,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let io = |e: std::io::Error| Error::io("tar output", e);
    let mut links: std::collections::HashMap<(u64, u64), PathBuf> =
        std::collections::HashMap::new();
    let mut walk = Walk::new(repo, index, path, dir.clone());
    while let Some(step) = rt.block_on(walk.next())? {
        let (Step::Enter(Entry { path: p, node: n }) | Step::Leaf(Entry { path: p, node: n })) =
            step
        else {
            continue;
        };
        if n.kind != NodeKind::Dir && n.links > 1 {
            if let Some(first) = links.get(&(n.device, n.inode)) {
                let mut h = header(&n, tar::EntryType::Link, 0);
                tar.append_link(&mut h, &p, first).map_err(io)?;
                continue;
            }
            links.insert((n.device, n.inode), p.clone());
        }
        match n.kind {
            NodeKind::Dir => {
                let mut h = header(&n, tar::EntryType::Directory, 0);
                tar.append_data(&mut h, &p, std::io::empty()).map_err(io)?;
            }
            NodeKind::File => {
                let mut h = header(&n, tar::EntryType::Regular, n.size);
                tar.append_data(&mut h, &p, reader(repo, index, rt, &n))
                    .map_err(io)?;
            }
            NodeKind::Symlink => {
                let mut h = header(&n, tar::EntryType::Symlink, 0);
                let target = std::ffi::OsStr::from_bytes(
                    n.target
                        .as_ref()
                        .map(|t| t.0.as_slice())
                        .unwrap_or_default(),
                );
                tar.append_link(&mut h, &p, target).map_err(io)?;
            }
            NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
                let kind = match n.kind {
                    NodeKind::Fifo => tar::EntryType::Fifo,
                    NodeKind::Chardev => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                };
                let mut h = header(&n, kind, 0);
                if let Some(rdev) = n.rdev {
                    let _ = h.set_device_major(nix::sys::stat::major(rdev) as u32);
                    let _ = h.set_device_minor(nix::sys::stat::minor(rdev) as u32);
                }
                tar.append_data(&mut h, &p, std::io::empty()).map_err(io)?;
            }
        }
    }
    Ok(())
}
