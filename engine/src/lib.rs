//! # coffer-engine
//!
//! The library behind the `coffer` command: back up directories into a
//! content-addressed, deduplicating, encrypted repository on any object store,
//! and restore them exactly. It keeps no global state and needs no terminal or
//! current directory, so one process can run several operations on several
//! repositories at once.
//!
//! ```
//! # async fn demo() -> coffer_engine::Result<()> {
//! use std::sync::Arc;
//! use coffer_engine::{backup, restore, storage, Repository, InitOptions};
//!
//! let source = tempfile::tempdir().unwrap();
//! std::fs::write(source.path().join("hello.txt"), b"hello, world").unwrap();
//!
//! // A repository in memory (a path or file:// URL gives a local one).
//! let store = storage::open_location("memory://", true)?;
//! let mut opts = InitOptions::default();
//! opts.kdf = coffer_engine::keys::KdfCost { memory_kib: 64, iterations: 1, parallelism: 1 };
//! let repo = Arc::new(Repository::init(store, b"password", opts).await?);
//!
//! // Back up, then restore into a new directory.
//! let summary = backup::backup(repo.clone(), backup::BackupOptions::new([source.path()])).await?;
//! let target = tempfile::tempdir().unwrap();
//! let restored = restore::restore(
//!     repo.clone(),
//!     repo.load_tree_index().await?,
//!     restore::RestoreOptions::new(summary.snapshot_id.to_hex(), target.path()),
//! )
//! .await?;
//! assert!(restored.errors.is_empty());
//! assert_eq!(std::fs::read(target.path().join("hello.txt")).unwrap(), b"hello, world");
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

#![warn(missing_docs)]

pub mod backup;
mod beneath;
pub mod cancel;
pub mod check;
pub mod copy;
pub mod diff;
pub mod dump;
pub mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod filter;
pub mod forget;
pub(crate) mod fsmeta;
pub mod identity;
pub mod index;
pub mod keys;
pub mod memory;
pub mod progress;
pub mod protocol;
pub mod prune;
pub mod repair;
pub mod repository;
pub mod restore;
pub mod rewrite;
pub mod select;
pub mod stats;
pub mod storage;
pub mod trees;

pub use cancel::CancelToken;
pub use coffer_repo_format as format;
pub use error::{Error, Result};
pub use index::Index;
pub use repository::{InitOptions, OpenLimits, Repository};
