//! Where each object lives in a repository (SPEC.md §2): the one place that
//! names keys. A store is a flat namespace of `/`-separated keys.

use crate::{IndexId, KeyId, PackId, SnapshotId};

/// The config object.
pub const CONFIG: &str = "config";
/// Prefix of key files.
pub const KEYS: &str = "keys/";
/// Prefix of pack files.
pub const DATA: &str = "data/";
/// Prefix of index files.
pub const INDEX: &str = "index/";
/// Prefix of snapshot files.
pub const SNAPSHOTS: &str = "snapshots/";
/// Prefix of the sessions of running backups (§13).
pub const SESSIONS: &str = "sessions/";
/// Prefix of the locks of running prunes (§13).
pub const LOCKS: &str = "locks/";
/// Prefix of a prune's lock within [`LOCKS`].
pub const PRUNE_LOCK: &str = "locks/prune-";
/// Prefix of prune plans (§13).
pub const PLANS: &str = "plans/";
/// Prefix of conditional-write probes (§13).
pub const PROBES: &str = "probe/";
/// Writer-private staging directory; not part of the repository.
pub const STAGING: &str = "tmp";

/// The prefixes of objects named by the BLAKE3 of their bytes: a reader can
/// check them without the password.
pub const CONTENT_ADDRESSED: [&str; 4] = [KEYS, INDEX, SNAPSHOTS, DATA];

/// `data/<first two hex digits>/<id>`.
pub fn pack(id: &PackId) -> String {
    let h = id.to_hex();
    format!("{DATA}{}/{h}", &h[..2])
}

/// `index/<id>`.
pub fn index(id: &IndexId) -> String {
    format!("{INDEX}{id}")
}

/// `snapshots/<id>`.
pub fn snapshot(id: &SnapshotId) -> String {
    format!("{SNAPSHOTS}{id}")
}

/// `keys/<id>`.
pub fn key(id: &KeyId) -> String {
    format!("{KEYS}{id}")
}

/// `sessions/<random>`: a backup's session, `random` being 32 hex digits.
pub fn session(random: &str) -> String {
    format!("{SESSIONS}{random}")
}

/// `locks/prune-<random>`: a prune's lock.
pub fn prune_lock(random: &str) -> String {
    format!("{PRUNE_LOCK}{random}")
}

/// `plans/<random>`: a prune plan.
pub fn plan(random: &str) -> String {
    format!("{PLANS}{random}")
}

/// `probe/<random>`: a conditional-write probe.
pub fn probe(random: &str) -> String {
    format!("{PROBES}{random}")
}

/// Bytes an object's envelope, length fields and slack may add to the
/// largest plaintext a reader accepts (§14).
const STORED_SLACK: u64 = 1 << 20;

/// The largest stored object a reader reads whole at `key` (§14): larger
/// ones cannot be valid, so a reader refuses them before reading them.
pub fn max_stored_size(key: &str) -> u64 {
    let plain = if key == CONFIG || key.starts_with(KEYS) || key.starts_with(PROBES) {
        64 * 1024
    } else if key.starts_with(SNAPSHOTS) {
        crate::snapshot::MAX_SNAPSHOT_SIZE as u64
    } else if key.starts_with(INDEX) {
        crate::index::MAX_INDEX_SIZE as u64
    } else if key.starts_with(SESSIONS) || key.starts_with(LOCKS) || key.starts_with(PLANS) {
        crate::protocol::MAX_PROTOCOL_OBJECT as u64
    } else {
        crate::pack::MAX_PACK_SIZE
    };
    plain + STORED_SLACK
}

/// The name part of a key: what follows its last `/`.
pub fn name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_as_the_spec_lays_them_out() {
        let id: PackId = "ab".repeat(32).parse().unwrap();
        assert_eq!(pack(&id), format!("data/ab/{}", "ab".repeat(32)));
        assert_eq!(session("0f"), "sessions/0f");
        assert_eq!(prune_lock("0f"), "locks/prune-0f");
        assert!(prune_lock("0f").starts_with(LOCKS));
        assert_eq!(plan("0f"), "plans/0f");
        assert_eq!(name(&pack(&id)), "ab".repeat(32));
        assert_eq!(name(CONFIG), "config");
    }
}
