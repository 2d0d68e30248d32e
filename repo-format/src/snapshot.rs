//! Snapshots: the root of one backup, stored at `snapshots/<id>`.

use serde::{Deserialize, Serialize};

use crate::cbor::{self, RawBytes};
use crate::error::{FormatError, Result};
use crate::id::{BlobId, SnapshotId};
use crate::tree::{Node, NodeKind};

/// Version of snapshot objects.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Largest snapshot plaintext a reader accepts.
pub const MAX_SNAPSHOT_SIZE: usize = 16 * 1024 * 1024;

/// Where a backup came from in Kubernetes, when the node agent made it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesOrigin {
    /// Cluster name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// PersistentVolumeClaim name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    /// PersistentVolume name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
    /// StorageClass name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// `Filesystem` or `Block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// Node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod's controlling workload, as `Kind/name` (`StatefulSet/db`), so
    /// that the next pod of the same workload finds its parent snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The volume's name in the pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The PersistentVolumeClaim's spec, recorded so that a restore can
    /// create the claim again from the repository alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimSpec>,
}

/// What a restore needs to create a PersistentVolumeClaim again (its
/// `volume_mode` and `storage_class` are the origin's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimSpec {
    /// The claim's size as Kubernetes writes it (`10Gi`): its capacity, else
    /// its request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Its access modes (`ReadWriteOnce`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// Its labels.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Counters of the backup that wrote a snapshot (restic's field names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotSummary {
    /// Start of the backup (RFC 3339).
    pub backup_start: String,
    /// End of the backup (RFC 3339).
    pub backup_end: String,
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files changed since the parent snapshot.
    pub files_changed: u64,
    /// Files unchanged since the parent snapshot.
    pub files_unmodified: u64,
    /// Directories not in the parent snapshot.
    pub dirs_new: u64,
    /// Directories changed since the parent snapshot.
    pub dirs_changed: u64,
    /// Directories unchanged since the parent snapshot.
    pub dirs_unmodified: u64,
    /// Data blobs this backup stored.
    pub data_blobs: u64,
    /// Tree blobs this backup stored.
    pub tree_blobs: u64,
    /// Plaintext bytes of the blobs this backup stored.
    pub data_added: u64,
    /// Stored bytes of the blobs this backup stored (compressed, encrypted).
    pub data_added_packed: u64,
    /// Files (of any type) the backup saw.
    pub total_files_processed: u64,
    /// Bytes of file content the backup saw.
    pub total_bytes_processed: u64,
}

/// A snapshot object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// When the backup started (RFC 3339 with offset).
    pub time: String,
    /// Host name recorded for the backup.
    pub hostname: String,
    /// User that ran the backup.
    pub username: String,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// The paths that were backed up, as given (absolute).
    pub paths: Vec<RawBytes>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The root directory: its own metadata, and `subtree`, its listing.
    pub root: Node,
    /// The snapshot this one was compared against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
    /// Program and version that wrote it.
    pub program: String,
    /// Counters of the backup.
    #[serde(default)]
    pub summary: SnapshotSummary,
    /// Kubernetes origin, when the node agent made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<KubernetesOrigin>,
    /// The snapshot this one was made from by `rewrite`, `repair snapshots`
    /// or `copy` (in the repository it came from); the first one's when
    /// that one had an `original` too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<SnapshotId>,
    /// The attributes that did not count as a change when files were
    /// compared with the parent's: `inode` and `ctime` (`--ignore-inode`),
    /// or `ctime` (`--ignore-ctime`). Empty when size, mtime, ctime and
    /// inode all had to match for a file to be taken from the parent unread.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_changes: Vec<String>,
}

impl Snapshot {
    /// The root page of the snapshot's tree.
    pub fn tree(&self) -> Result<BlobId> {
        self.root
            .subtree
            .ok_or_else(|| FormatError::malformed("snapshot", "root has no subtree"))
    }

    /// The plaintext encoding.
    pub fn encode(&self) -> Result<Vec<u8>> {
        cbor::to_vec("snapshot", self)
    }

    /// Decodes and validates a plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_SNAPSHOT_SIZE {
            return Err(FormatError::TooLarge {
                what: "snapshot",
                size: bytes.len() as u64,
                limit: MAX_SNAPSHOT_SIZE as u64,
            });
        }
        let s: Snapshot = cbor::from_slice("snapshot", bytes)?;
        if s.version != SNAPSHOT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "snapshot",
                found: s.version.into(),
                supported: SNAPSHOT_VERSION.into(),
            });
        }
        if s.root.kind != NodeKind::Dir {
            return Err(FormatError::malformed(
                "snapshot",
                "root is not a directory",
            ));
        }
        s.root.validate()?;
        Ok(s)
    }
}
