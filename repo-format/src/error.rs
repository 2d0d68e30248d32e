//! The one error type of this crate: what is wrong with a stored object.

/// Why bytes read from a repository could not be turned into a value.
///
/// Every variant names the kind of object (`what`) so that a caller can add the
/// object's id and tell the user which file is damaged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes end before the structure does.
    #[error("{what} is truncated: needs {needed} bytes, has {available}")]
    Truncated {
        /// The kind of object being decoded.
        what: &'static str,
        /// How many bytes the structure needs.
        needed: u64,
        /// How many bytes there are.
        available: u64,
    },
    /// The object was written by a newer or unknown version of the format.
    #[error(
        "{what} has format version {found}, this program reads version {supported}; upgrade coffer"
    )]
    UnsupportedVersion {
        /// The kind of object being decoded.
        what: &'static str,
        /// The version found in the object.
        found: u64,
        /// The newest version this program reads.
        supported: u64,
    },
    /// Authenticated decryption failed: wrong key, or the bytes were changed.
    #[error("{what} failed authentication: it was modified or belongs to another repository")]
    Authentication {
        /// The kind of object being decrypted.
        what: &'static str,
    },
    /// A decrypted blob does not hash to the id it is stored under.
    #[error("{what} does not match its id: stored under {expected}, content hashes to {actual}")]
    IdMismatch {
        /// The kind of object.
        what: &'static str,
        /// The id the object is stored under.
        expected: String,
        /// The id its content hashes to.
        actual: String,
    },
    /// The structure is well-formed bytes but says something impossible.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// The kind of object being decoded.
        what: &'static str,
        /// What is wrong, in a few words.
        reason: String,
    },
    /// A length recorded in the object exceeds what the format allows.
    #[error("{what} is too large: {size} bytes, the limit is {limit}")]
    TooLarge {
        /// The kind of object.
        what: &'static str,
        /// The recorded size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The password does not open this key file.
    #[error("wrong password for key file")]
    WrongPassword,
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
}

impl FormatError {
    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        FormatError::Malformed {
            what,
            reason: reason.into(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
