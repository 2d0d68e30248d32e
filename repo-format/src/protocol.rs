//! The objects of the concurrency protocol (SPEC.md §13): beacons (a
//! backup's session, a prune's lock) and prune plans. Both are CBOR sealed in
//! an envelope (contexts `session` and `plan`).

use serde::{Deserialize, Serialize};

use crate::{cbor, FormatError, PackId};

/// Largest beacon or plan plaintext a reader accepts: a plan lists packs
/// (32 bytes each), so this allows about 2 million of them.
pub const MAX_PROTOCOL_OBJECT: usize = 64 << 20;

/// The stored content of a session or lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    /// Format version, 1.
    pub version: u32,
    /// `backup` or `prune`.
    pub kind: String,
    /// Host of the process.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// When it started, by its own clock (informational only).
    pub started: String,
    /// Increases with every heartbeat.
    pub beat: u64,
    /// The writer's stale-after in milliseconds (optional, added within
    /// version 1): it stops within a fifth of this after its last stored
    /// heartbeat, and an observer waits at least this long (§13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_ms: Option<u64>,
}

/// A prune plan: the packs that backups must not deduplicate against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPlan {
    /// Version, 1.
    pub version: u32,
    /// Packs the plan may delete or repack.
    pub packs: Vec<PackId>,
}

fn check_size(what: &'static str, bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() > MAX_PROTOCOL_OBJECT {
        return Err(FormatError::TooLarge {
            what,
            size: bytes.len() as u64,
            limit: MAX_PROTOCOL_OBJECT as u64,
        });
    }
    Ok(())
}

fn check_version(what: &'static str, version: u32) -> Result<(), FormatError> {
    if version != 1 {
        return Err(FormatError::malformed(
            what,
            format!("version {version}, expected 1"),
        ));
    }
    Ok(())
}

impl Beacon {
    /// The plaintext encoding.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        cbor::to_vec("session", self)
    }

    /// Decodes and validates a plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        check_size("session", bytes)?;
        let b: Beacon = cbor::from_slice("session", bytes)?;
        check_version("session", b.version)?;
        if b.kind != "backup" && b.kind != "prune" {
            return Err(FormatError::malformed(
                "session",
                format!("kind {:?}, expected backup or prune", b.kind),
            ));
        }
        Ok(b)
    }
}

impl StoredPlan {
    /// The plaintext encoding.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        cbor::to_vec("prune plan", self)
    }

    /// Decodes and validates a plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        check_size("prune plan", bytes)?;
        let p: StoredPlan = cbor::from_slice("prune plan", bytes)?;
        check_version("prune plan", p.version)?;
        Ok(p)
    }
}
