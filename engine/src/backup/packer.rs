//! Packer: gathers sealed blobs into packs of the configured target size.
//!
//! Data blobs go to one of two open data packs at random (as restic 0.18 does),
//! so that the size of a pack does not reveal the chunk sizes of one file; tree
//! blobs go to their own pack. A full pack is finished (sealed header, trailer,
//! name = BLAKE3 of its bytes) and handed to the uploader.
//!
//! Where the store offers a staging directory (a local repository), a pack is
//! written to a file there as it fills, hashed on the way, and stored by a
//! link: pack bytes never sit in memory. Otherwise packs are buffered in
//! memory, and the buffers are reused.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use coffer_repo_format::blob::BlobType;
use coffer_repo_format::envelope::Sealer;
use coffer_repo_format::pack::{self, PackEntry, MAX_BLOBS_PER_PACK};
use coffer_repo_format::{BlobId, PackId};

use crate::error::{Error, Result};

/// A finished pack's bytes.
pub(crate) enum PackData {
    Memory(Bytes),
    /// A staged file, for `Store::put_file`.
    File(PathBuf),
}

/// A finished pack on its way to the store.
pub(crate) struct FinishedPack {
    pub(crate) id: PackId,
    pub(crate) data: PackData,
    pub(crate) size: u32,
    pub(crate) entries: Vec<PackEntry>,
}

/// Pack buffers, reused: a finished pack's buffer comes back after its upload,
/// so the process does not churn 16 MiB allocations (which glibc's malloc
/// would keep around as heap, growing the resident size).
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept for reuse.
const POOL_KEEP: usize = 4;

impl BufferPool {
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match free.pop() {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Gives a buffer back (dropped when the pool is full).
    pub(crate) fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_KEEP {
            free.push(buf);
        }
    }
}

/// Where an open pack's bytes go.
enum Sink {
    Memory(Vec<u8>),
    File {
        out: std::io::BufWriter<std::fs::File>,
        path: PathBuf,
        hasher: Box<blake3::Hasher>,
    },
}

struct OpenPack {
    sink: Sink,
    len: usize,
    entries: Vec<PackEntry>,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, e)
}

impl OpenPack {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.sink {
            Sink::Memory(v) => v.extend_from_slice(bytes),
            Sink::File { out, path, hasher } => {
                out.write_all(bytes).map_err(|e| io_err(path, e))?;
                hasher.update(bytes);
            }
        }
        self.len += bytes.len();
        Ok(())
    }

    fn push(&mut self, blob_type: BlobType, id: BlobId, raw_len: u32, stored: &[u8]) -> Result<()> {
        self.entries.push(PackEntry {
            blob_type,
            id,
            offset: self.len as u32,
            stored_len: stored.len() as u32,
            raw_len,
        });
        self.write(stored)
    }
}

/// The open packs, each behind its own lock so that workers adding to
/// different packs do not wait for each other.
struct State {
    data: [Mutex<Option<OpenPack>>; 2],
    tree: Mutex<Option<OpenPack>>,
    /// Picks a data pack for each blob (splitmix64 of a random seed and a counter).
    seed: u64,
    counter: std::sync::atomic::AtomicU64,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) struct Packer {
    target: usize,
    pool: std::sync::Arc<BufferPool>,
    staging: Option<PathBuf>,
    state: State,
    header_sealer: Mutex<Sealer>,
    out: std::sync::RwLock<Option<tokio::sync::mpsc::Sender<FinishedPack>>>,
}

impl Packer {
    pub(crate) fn new(
        target: usize,
        header_sealer: Sealer,
        out: tokio::sync::mpsc::Sender<FinishedPack>,
        pool: std::sync::Arc<BufferPool>,
        staging: Option<PathBuf>,
    ) -> Result<Self> {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed)
            .map_err(|e| Error::InvalidArgument(format!("random number generator: {e}")))?;
        Ok(Packer {
            target,
            pool,
            staging,
            state: State {
                data: [Mutex::new(None), Mutex::new(None)],
                tree: Mutex::new(None),
                seed: u64::from_le_bytes(seed),
                counter: std::sync::atomic::AtomicU64::new(0),
            },
            header_sealer: Mutex::new(header_sealer),
            out: std::sync::RwLock::new(Some(out)),
        })
    }

    fn open(&self, first_blob: usize) -> Result<OpenPack> {
        let sink = match &self.staging {
            Some(dir) => {
                let mut name = [0u8; 12];
                getrandom::fill(&mut name)
                    .map_err(|e| Error::InvalidArgument(format!("random number generator: {e}")))?;
                let path = dir.join(format!("pack-{}", hex::encode(name)));
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?;
                Sink::File {
                    out: std::io::BufWriter::with_capacity(256 * 1024, file),
                    path,
                    hasher: Box::new(blake3::Hasher::new()),
                }
            }
            // Room for the target and one more large blob.
            None => Sink::Memory(self.pool.take(self.target + self.target / 4 + first_blob)),
        };
        Ok(OpenPack {
            sink,
            len: 0,
            entries: Vec::new(),
        })
    }

    /// Adds a blob; ships the pack it went into if that pack is now full.
    pub(crate) fn add(
        &self,
        blob_type: BlobType,
        id: BlobId,
        raw_len: u32,
        stored: &[u8],
    ) -> Result<()> {
        let slot = match blob_type {
            BlobType::Tree => &self.state.tree,
            BlobType::Data => {
                let n = self
                    .state
                    .counter
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                &self.state.data[(splitmix64(self.state.seed ^ n) >> 63) as usize]
            }
        };
        let full = {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            let open = match &mut *slot {
                Some(p) => p,
                None => slot.insert(self.open(stored.len())?),
            };
            open.push(blob_type, id, raw_len, stored)?;
            if open.len >= self.target || open.entries.len() as u32 >= MAX_BLOBS_PER_PACK {
                slot.take()
            } else {
                None
            }
        };
        match full {
            Some(p) => self.ship(p),
            None => Ok(()),
        }
    }

    /// Ships every open pack. Two small data packs are merged first, so that a
    /// small backup does not leave its chunk sizes visible in two tiny packs.
    pub(crate) fn flush(&self) -> Result<()> {
        let take = |m: &Mutex<Option<OpenPack>>| m.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (a, b, tree) = (
            take(&self.state.data[0]),
            take(&self.state.data[1]),
            take(&self.state.tree),
        );
        match (a, b) {
            (Some(mut a), Some(b)) if a.len + b.len < self.target => {
                append(&mut a, b)?;
                self.ship(a)?;
            }
            (a, b) => {
                for p in [a, b].into_iter().flatten() {
                    self.ship(p)?;
                }
            }
        }
        if let Some(t) = tree {
            self.ship(t)?;
        }
        Ok(())
    }

    /// Drops the channel to the uploader, which then finishes.
    pub(crate) fn close(&self) {
        self.out.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn ship(&self, mut open: OpenPack) -> Result<()> {
        let header = {
            let mut sealer = self.header_sealer.lock().unwrap_or_else(|p| p.into_inner());
            let mut header = Vec::new();
            pack::finish_pack(&mut sealer, &mut header, &open.entries)
                .map_err(|e| Error::corrupt("new pack header", e))?;
            header
        };
        open.write(&header)?;
        let size = open.len as u32;
        let (id, data) = match open.sink {
            Sink::Memory(v) => (PackId::of(&v), PackData::Memory(Bytes::from(v))),
            Sink::File { out, path, hasher } => {
                let file = out
                    .into_inner()
                    .map_err(|e| io_err(&path, e.into_error()))?;
                drop(file);
                (PackId(*hasher.finalize().as_bytes()), PackData::File(path))
            }
        };
        let out = self.out.read().unwrap_or_else(|p| p.into_inner());
        let Some(out) = out.as_ref() else {
            return Err(Error::Cancelled);
        };
        out.blocking_send(FinishedPack {
            id,
            data,
            size,
            entries: open.entries,
        })
        // The uploader stopped; its error is the one to report.
        .map_err(|_| Error::Cancelled)
    }
}

/// Appends pack `b`'s blobs to pack `a`.
fn append(a: &mut OpenPack, b: OpenPack) -> Result<()> {
    let base = a.len as u32;
    let bytes = match b.sink {
        Sink::Memory(v) => v,
        Sink::File { out, path, .. } => {
            drop(
                out.into_inner()
                    .map_err(|e| io_err(&path, e.into_error()))?,
            );
            let v = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
            let _ = std::fs::remove_file(&path);
            v
        }
    };
    a.write(&bytes)?;
    a.entries.extend(b.entries.into_iter().map(|mut e| {
        e.offset += base;
        e
    }));
    Ok(())
}
