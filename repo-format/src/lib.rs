//! # coffer-repo-format
//!
//! The repository format of coffer, version 1: every object a repository stores,
//! its types, and its encoding to and from bytes. This crate does no I/O; the
//! engine reads and writes the bytes. `SPEC.md` beside this crate is the
//! normative description; the code follows it.
//!
//! Objects and their modules:
//!
//! | stored at | module | encoding |
//! |---|---|---|
//! | `config` | [`config`] | CBOR in an envelope |
//! | `keys/<id>` | [`keys`] | JSON, master key wrapped with Argon2id + AES-256-GCM |
//! | `data/<xx>/<id>` | [`pack`] | blob envelopes, sealed header, header length |
//! | `index/<id>` | [`index`] | fixed binary records in an envelope |
//! | `snapshots/<id>` | [`snapshot`] | CBOR in an envelope |
//! | (tree blobs) | [`tree`] | CBOR pages |
//! | `sessions/<r>`, `locks/prune-<r>`, `plans/<r>` | [`protocol`] | CBOR in an envelope |
//!
//! [`layout`] names every key.
//!
//! ## Example: seal a blob, pack it, read it back
//!
//! ```
//! use coffer_repo_format::{blob, keys::MasterKey, pack};
//!
//! let key = MasterKey::generate()?;
//! let mut sealer = blob::BlobSealer::new(&key, blob::Compression::Zstd(3))?;
//! let text = b"hello, volume".repeat(100);
//! let id = key.blob_id(&text);
//! let sealed = sealer.seal(blob::BlobType::Data, id, &text)?;
//!
//! // A pack with one blob.
//! let entry = pack::PackEntry {
//!     blob_type: blob::BlobType::Data,
//!     id,
//!     offset: 0,
//!     stored_len: sealed.bytes.len() as u32,
//!     raw_len: sealed.raw_len,
//! };
//! let mut bytes = sealed.bytes.clone();
//! pack::finish_pack(&mut key.sealer()?, &mut bytes, &[entry])?;
//!
//! // Read it back: trailer, header, blob.
//! let opener = key.opener();
//! let start = pack::header_start(bytes.len() as u64, &bytes[bytes.len() - 4..])?;
//! let entries = pack::open_header(&opener, start, &bytes[start as usize..bytes.len() - 4])?;
//! let e = entries[0];
//! let blob = &bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
//! let plain = blob::open_blob(&key, &opener, e.blob_type, &e.id, e.raw_len, blob)?;
//! assert_eq!(plain, text);
//! # Ok::<(), coffer_repo_format::FormatError>(())
//! ```

#![warn(missing_docs)]

pub mod blob;
mod bytes;
pub mod cbor;
pub mod chunker;
pub mod config;
pub mod envelope;
pub mod error;
pub mod id;
pub mod index;
pub mod keys;
pub mod layout;
pub mod pack;
pub mod protocol;
pub mod snapshot;
pub mod tree;

pub use error::FormatError;
pub use id::{BlobId, IndexId, KeyId, PackId, SnapshotId, StoredId};
