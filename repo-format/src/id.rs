//! Identifiers: 32-byte BLAKE3 digests, shown as 64 lowercase hex digits.
//!
//! Blob ids are keyed digests of plaintext (see [`crate::keys::MasterKey::blob_id`]);
//! the ids of stored files (packs, index files, snapshots, key files) are unkeyed
//! digests of the stored bytes ([`StoredId::of`]).

use std::fmt;
use std::str::FromStr;

use crate::error::FormatError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id as 64 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, as shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// The unkeyed BLAKE3 digest of `bytes`: the name of a stored file.
            pub fn of(bytes: &[u8]) -> Self {
                $name(*blake3::hash(bytes).as_bytes())
            }

            /// Reads an id from exactly 32 bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, FormatError> {
                let arr: [u8; 32] = bytes.try_into().map_err(|_| {
                    FormatError::malformed(stringify!($name), format!("an id has 32 bytes, found {}", bytes.len()))
                })?;
                Ok($name(arr))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = FormatError;
            fn from_str(s: &str) -> Result<Self, FormatError> {
                let bytes = hex::decode(s).map_err(|_| {
                    FormatError::malformed(stringify!($name), format!("{s:?} is not 64 hex digits"))
                })?;
                Self::from_slice(&bytes)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = <String as serde::Deserialize>::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    let b = <serde_bytes::ByteBuf as serde::Deserialize>::deserialize(d)?;
                    Self::from_slice(&b).map_err(serde::de::Error::custom)
                }
            }
        }
    };
}

id_type!(
    /// The id of a blob: BLAKE3 keyed with the repository's id key, over the plaintext.
    BlobId
);
id_type!(
    /// The id of a pack file: BLAKE3 of its stored bytes.
    PackId
);
id_type!(
    /// The id of an index file: BLAKE3 of its stored bytes.
    IndexId
);
id_type!(
    /// The id of a snapshot file: BLAKE3 of its stored bytes.
    SnapshotId
);
id_type!(
    /// The id of a key file: BLAKE3 of its stored bytes.
    KeyId
);

/// Ids of stored files, which are named by the digest of their bytes.
pub trait StoredId: Sized {
    /// The unkeyed BLAKE3 digest of `bytes`.
    fn of(bytes: &[u8]) -> Self;
}

macro_rules! stored_id {
    ($($name:ident),*) => {$(
        impl StoredId for $name {
            fn of(bytes: &[u8]) -> Self {
                $name::of(bytes)
            }
        }
    )*};
}
stored_id!(PackId, IndexId, SnapshotId, KeyId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_short_form() {
        let id = BlobId([0xab; 32]);
        assert_eq!(id.to_hex().len(), 64);
        assert_eq!(id.short(), "abababab");
        assert_eq!(id.to_hex().parse::<BlobId>().unwrap(), id);
    }

    #[test]
    fn bad_hex_is_an_error_that_quotes_the_input() {
        let err = "xyz".parse::<PackId>().unwrap_err();
        assert!(err.to_string().contains("\"xyz\""), "{err}");
        assert!("abcd".parse::<PackId>().is_err());
    }

    #[test]
    fn stored_ids_are_plain_blake3() {
        assert_eq!(PackId::of(b"abc").0, *blake3::hash(b"abc").as_bytes());
    }
}
