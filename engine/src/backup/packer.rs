//! Packer: gathers sealed blobs into packs of the configured target size.
//!
//! Data blobs go to one of two open data packs at random (as restic 0.18 does),
//! so that the size of a pack does not reveal the chunk sizes of one file; tree
//! blobs go to their own pack. A full pack is finished (sealed header, trailer,
//! name = BLAKE3 of its bytes) and handed to the uploader.

use std::sync::Mutex;

use bytes::Bytes;

use coffer_repo_format::blob::{BlobType, SealedBlob};
use coffer_repo_format::envelope::Sealer;
use coffer_repo_format::pack::{self, PackEntry, MAX_BLOBS_PER_PACK};
use coffer_repo_format::PackId;

use crate::error::{Error, Result};

/// A finished pack on its way to the store.
pub(crate) struct FinishedPack {
    pub(crate) id: PackId,
    pub(crate) bytes: Bytes,
    pub(crate) entries: Vec<PackEntry>,
}

#[derive(Default)]
struct OpenPack {
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl OpenPack {
    fn push(&mut self, blob: SealedBlob) {
        self.entries.push(PackEntry {
            blob_type: blob.blob_type,
            id: blob.id,
            offset: self.bytes.len() as u32,
            stored_len: blob.bytes.len() as u32,
            raw_len: blob.raw_len,
        });
        self.bytes.extend_from_slice(&blob.bytes);
    }

    fn append(&mut self, other: OpenPack) {
        let base = self.bytes.len() as u32;
        self.bytes.extend_from_slice(&other.bytes);
        self.entries.extend(other.entries.into_iter().map(|mut e| {
            e.offset += base;
            e
        }));
    }
}

struct State {
    data: [OpenPack; 2],
    tree: OpenPack,
    rng: u64,
}

pub(crate) struct Packer {
    target: usize,
    state: Mutex<State>,
    header_sealer: Mutex<Sealer>,
    out: std::sync::RwLock<Option<tokio::sync::mpsc::Sender<FinishedPack>>>,
}

impl Packer {
    pub(crate) fn new(
        target: usize,
        header_sealer: Sealer,
        out: tokio::sync::mpsc::Sender<FinishedPack>,
    ) -> Result<Self> {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed)
            .map_err(|e| Error::InvalidArgument(format!("random number generator: {e}")))?;
        Ok(Packer {
            target,
            state: Mutex::new(State {
                data: Default::default(),
                tree: Default::default(),
                rng: u64::from_le_bytes(seed) | 1,
            }),
            header_sealer: Mutex::new(header_sealer),
            out: std::sync::RwLock::new(Some(out)),
        })
    }

    /// Adds a blob; ships the pack it went into if that pack is now full.
    pub(crate) fn add(&self, blob: SealedBlob) -> Result<()> {
        let full = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let st = &mut *st;
            let open = match blob.blob_type {
                BlobType::Tree => &mut st.tree,
                BlobType::Data => {
                    st.rng ^= st.rng << 13;
                    st.rng ^= st.rng >> 7;
                    st.rng ^= st.rng << 17;
                    &mut st.data[(st.rng >> 32) as usize & 1]
                }
            };
            if open.bytes.capacity() == 0 {
                open.bytes.reserve(self.target + blob.bytes.len());
            }
            open.push(blob);
            if open.bytes.len() >= self.target || open.entries.len() as u32 >= MAX_BLOBS_PER_PACK {
                Some(std::mem::take(open))
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
        let (mut a, b, tree) = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let [a, b] = std::mem::take(&mut st.data);
            (a, b, std::mem::take(&mut st.tree))
        };
        if !a.entries.is_empty()
            && !b.entries.is_empty()
            && a.bytes.len() + b.bytes.len() < self.target
        {
            a.append(b);
            self.ship(a)?;
        } else {
            for p in [a, b] {
                if !p.entries.is_empty() {
                    self.ship(p)?;
                }
            }
        }
        if !tree.entries.is_empty() {
            self.ship(tree)?;
        }
        Ok(())
    }

    /// Drops the channel to the uploader, which then finishes.
    pub(crate) fn close(&self) {
        self.out.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn ship(&self, open: OpenPack) -> Result<()> {
        let OpenPack { mut bytes, entries } = open;
        {
            let mut sealer = self.header_sealer.lock().unwrap_or_else(|p| p.into_inner());
            pack::finish_pack(&mut sealer, &mut bytes, &entries)
                .map_err(|e| Error::corrupt("new pack header", e))?;
        }
        let id = PackId::of(&bytes);
        let out = self.out.read().unwrap_or_else(|p| p.into_inner());
        let Some(out) = out.as_ref() else {
            return Err(Error::Cancelled);
        };
        out.blocking_send(FinishedPack {
            id,
            bytes: Bytes::from(bytes),
            entries,
        })
        // The uploader stopped; its error is the one to report.
        .map_err(|_| Error::Cancelled)
    }
}
