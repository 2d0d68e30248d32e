//! CBOR (RFC 8949) encoding of the structured objects: trees, snapshots, config.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{FormatError, Result};

/// Encodes a value as CBOR.
pub fn to_vec<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out)
        .map_err(|e| FormatError::malformed(what, format!("cannot encode: {e}")))?;
    Ok(out)
}

/// Decodes exactly one CBOR value that must fill `bytes`.
pub fn from_slice<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    let mut reader = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, 64)
        .map_err(|e| FormatError::malformed(what, e.to_string()))?;
    if !reader.is_empty() {
        return Err(FormatError::malformed(
            what,
            format!("{} unexpected bytes after the value", reader.len()),
        ));
    }
    Ok(value)
}

/// Raw bytes: a file name, a path, a link target or an attribute value.
///
/// CBOR stores them as a byte string. Human-readable encodings (the JSON of
/// `coffer cat`) show valid UTF-8 as a string and anything else as
/// `{"hex": "..."}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RawBytes(pub Vec<u8>);

impl RawBytes {
    /// The bytes as (lossy) text, for display.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl std::fmt::Debug for RawBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => write!(f, "{s:?}"),
            Err(_) => write!(f, "hex:{}", hex::encode(&self.0)),
        }
    }
}

impl From<&[u8]> for RawBytes {
    fn from(b: &[u8]) -> Self {
        RawBytes(b.to_vec())
    }
}

impl From<Vec<u8>> for RawBytes {
    fn from(b: Vec<u8>) -> Self {
        RawBytes(b)
    }
}

impl From<&str> for RawBytes {
    fn from(s: &str) -> Self {
        RawBytes(s.as_bytes().to_vec())
    }
}

impl Serialize for RawBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            match std::str::from_utf8(&self.0) {
                Ok(text) => s.serialize_str(text),
                Err(_) => {
                    use serde::ser::SerializeMap;
                    let mut m = s.serialize_map(Some(1))?;
                    m.serialize_entry("hex", &hex::encode(&self.0))?;
                    m.end()
                }
            }
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for RawBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        if d.is_human_readable() {
            #[derive(serde::Deserialize)]
            #[serde(untagged)]
            enum Human {
                Text(String),
                Hex { hex: String },
            }
            match Human::deserialize(d)? {
                Human::Text(t) => Ok(RawBytes(t.into_bytes())),
                Human::Hex { hex } => hex::decode(hex)
                    .map(RawBytes)
                    .map_err(serde::de::Error::custom),
            }
        } else {
            serde_bytes::ByteBuf::deserialize(d).map(|b| RawBytes(b.into_vec()))
        }
    }
}
