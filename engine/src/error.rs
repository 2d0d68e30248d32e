//! The engine's error: one sentence for the user that names the object and the
//! next step.

use std::path::PathBuf;

use coffer_repo_format::FormatError;

use crate::storage::{StoreError, StoreErrorKind};

/// Everything that can make an engine operation fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No repository exists at the location.
    #[error("there is no repository at {location}")]
    RepositoryNotFound {
        /// Where we looked.
        location: String,
    },
    /// `init` found a repository already there.
    #[error("a repository already exists at {location}; use it, or choose another location")]
    RepositoryExists {
        /// Where.
        location: String,
    },
    /// No key file opens with the password.
    #[error("wrong password: none of the {keys} key(s) of {location} opens with it")]
    WrongPassword {
        /// The repository.
        location: String,
        /// How many key files were tried.
        keys: usize,
    },
    /// A named object (snapshot, path, key, blob) does not exist.
    #[error("{what} not found{}", missing.note())]
    NotFound {
        /// The object.
        what: String,
        /// What kind of thing is missing.
        missing: Missing,
    },
    /// A stored object could not be decoded or failed verification.
    #[error("{object} is damaged: {source}")]
    Corrupt {
        /// The object with its id, e.g. "pack 1a2b…".
        object: String,
        /// What the format layer found.
        #[source]
        source: FormatError,
    },
    /// A stored object was written by a newer program.
    #[error("{object}: {source}")]
    UnsupportedVersion {
        /// The object.
        object: String,
        /// Which version.
        #[source]
        source: FormatError,
    },
    /// The store failed.
    #[error("storage error at {location}: {source}{}", if source.kind == StoreErrorKind::Transient { " (temporary; try again)" } else { "" })]
    Store {
        /// The repository location.
        location: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A local file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The local path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An object an operation depends on could not be read; the operation
    /// stopped before changing anything.
    #[error("{object} cannot be read: {source}")]
    Unreadable {
        /// The object, e.g. "tree 1a2b3c4d of snapshot 5e6f7a8b".
        object: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A restore would replace something that is already there.
    #[error("{}", conflict.describe(path))]
    TargetExists {
        /// What is there.
        path: PathBuf,
        /// How it is in the way.
        conflict: Conflict,
    },
    /// The key to remove is the one this repository was opened with.
    #[error("key {key} is the one in use; open the repository with another key to remove it, or change its password instead")]
    KeyInUse {
        /// The key's short id.
        key: String,
    },
    /// `forget` was given no rule that keeps anything.
    #[error("no retention policy given: nothing would be kept")]
    NoPolicy,
    /// The local cache directory could not be created.
    #[error("cannot create the cache directory {}: {source}", path.display())]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The caller asked for something impossible.
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation was cancelled; the repository is left consistent.
    #[error("the operation was cancelled")]
    Cancelled,
    /// Another prune holds the prune lock, and `max_wait` ran out.
    #[error("another prune is running (on {holder}); try again when it has finished")]
    PruneRunning {
        /// The host named in the other prune's lock (empty if unknown).
        holder: String,
    },
    /// This process's session or lock may have been taken for dead by others
    /// (its heartbeat was not stored in time, or its beacon is gone), so it
    /// stopped before writing anything others rely on.
    #[error("the session {session} {reason}; nothing more was written")]
    SessionLost {
        /// The beacon's key.
        session: String,
        /// What happened.
        reason: String,
    },
    /// A stream backup's source did not end well (a read failed, a command
    /// exited with an error, a checksum did not match): no snapshot was written.
    #[error("{name}: {reason}; no snapshot was written")]
    StreamFailed {
        /// The stream's file name in the snapshot.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// etcd could not be reached, refused the request, or broke off the
    /// snapshot stream: no snapshot was written.
    #[error("etcd at {endpoint}: {reason}; no snapshot was written")]
    Etcd {
        /// The endpoint as given.
        endpoint: String,
        /// What happened.
        reason: String,
    },
    /// A bug: a worker thread panicked or an internal task failed.
    #[error("internal error: {0}; please report it")]
    Internal(String),
}

/// What kind of thing [`Error::NotFound`] did not find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// No snapshot has this id or id prefix.
    Snapshot,
    /// `latest` was asked of a repository that has no snapshots.
    NoSnapshots,
    /// The snapshot holds no such path.
    Path,
    /// No key file has this id.
    Key,
    /// An object the repository refers to (a blob, a pack, an index entry)
    /// is gone: the repository is damaged.
    Object,
}

impl Missing {
    fn note(self) -> &'static str {
        match self {
            Missing::NoSnapshots => "; the repository has no snapshots yet",
            Missing::Object => "; the repository refers to it, so it is damaged",
            _ => "",
        }
    }
}

/// How a restore's target is in the way ([`Error::TargetExists`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Conflict {
    /// The target directory has entries, and overwriting was not allowed.
    NotEmpty,
    /// A file to restore exists, and overwriting was not allowed.
    Exists,
    /// The target is a block device, and overwriting devices was not allowed.
    BlockDevice,
}

impl Conflict {
    fn describe(self, path: &std::path::Path) -> String {
        let p = path.display();
        match self {
            Conflict::NotEmpty => format!(
                "the target {p} is not empty; restore into an empty or new directory, or allow overwriting"
            ),
            Conflict::Exists => format!("{p} already exists, and overwriting was not allowed"),
            Conflict::BlockDevice => format!(
                "{p} is a block device; a restore overwrites everything on it, which must be allowed explicitly"
            ),
        }
    }
}

impl Error {
    /// Whether retrying the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { source, .. } => source.kind == StoreErrorKind::Transient,
            Error::Unreadable { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    pub(crate) fn corrupt(object: impl Into<String>, source: FormatError) -> Self {
        let object = object.into();
        if matches!(source, FormatError::UnsupportedVersion { .. }) {
            Error::UnsupportedVersion { object, source }
        } else {
            Error::Corrupt { object, source }
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for engine results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("a task failed: {e}"))
    }
}
