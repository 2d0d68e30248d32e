//! Trees: directory listings, stored as tree blobs.
//!
//! A directory is one tree blob or, when it is large, a B-tree of tree blobs: a
//! *leaf page* holds nodes sorted by name; an *index page* holds references to
//! child pages in name order. A writer closes a page at [`PAGE_MAX_NODES`]
//! entries or [`PAGE_TARGET_BYTES`] of encoding, so that neither writing nor
//! reading a directory of any size needs more than one page per level in memory.

use serde::{Deserialize, Serialize};

use crate::blob::MAX_BLOB_SIZE;
use crate::cbor::{self, RawBytes};
use crate::error::{FormatError, Result};
use crate::id::BlobId;

/// Version of tree pages.
pub const TREE_VERSION: u32 = 1;
/// A writer closes a page when it holds this many nodes or references.
pub const PAGE_MAX_NODES: usize = 4096;
/// A writer closes a page when its nodes' encoding reaches this many bytes.
pub const PAGE_TARGET_BYTES: usize = 1024 * 1024;

/// Seconds and nanoseconds since the Unix epoch (negative before 1970);
/// `nanos` is always in `0..1_000_000_000`. Encoded as `[secs, nanos]`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64, pub u32);

impl Timestamp {
    /// Seconds since the epoch.
    pub fn secs(&self) -> i64 {
        self.0
    }
    /// Nanoseconds within the second.
    pub fn nanos(&self) -> u32 {
        self.1
    }
}

/// The type of a filesystem object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    Chardev,
    /// Block device.
    Blockdev,
}

/// A piece of a file's content: a blob, or a run of zero bytes that is not stored.
/// Encoded as `[id, len]` with `id` a 32-byte string, or `null` for zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(Option<BlobId>, u64)", into = "(Option<BlobId>, u64)")]
pub struct ContentRef {
    /// The data blob, or `None` for a run of zeros.
    pub id: Option<BlobId>,
    /// Length in bytes of the plaintext.
    pub len: u64,
}

impl From<(Option<BlobId>, u64)> for ContentRef {
    fn from((id, len): (Option<BlobId>, u64)) -> Self {
        ContentRef { id, len }
    }
}

impl From<ContentRef> for (Option<BlobId>, u64) {
    fn from(c: ContentRef) -> Self {
        (c.id, c.len)
    }
}

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Full name, with its namespace (`user.`, `security.`, `system.`, `trusted.`).
    pub name: RawBytes,
    /// Value.
    pub value: RawBytes,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name: one path component, raw bytes.
    pub name: RawBytes,
    /// Type.
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Owner name, when the backing host knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group name, when the backing host knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Modification time.
    pub mtime: Timestamp,
    /// Access time.
    pub atime: Timestamp,
    /// Status change time (recorded for change detection; not restorable).
    pub ctime: Timestamp,
    /// Inode number on the source filesystem.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inode: u64,
    /// Device id of the source filesystem (`st_dev`).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub device: u64,
    /// Number of hard links (`st_nlink`); members of a hard-link group share
    /// `device` and `inode`.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub links: u64,
    /// Size in bytes (files), or `st_size` of other types.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub size: u64,
    /// Device number of character and block devices (`st_rdev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    /// Target of a symbolic link, raw bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RawBytes>,
    /// Extended attributes, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// File content in order; the lengths add up to `size`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<ContentRef>,
    /// Root page of a directory's listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
}

impl Node {
    /// A node of `kind` with the given name and every other field empty.
    pub fn new(name: impl Into<RawBytes>, kind: NodeKind) -> Self {
        Node {
            name: name.into(),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: Timestamp::default(),
            atime: Timestamp::default(),
            ctime: Timestamp::default(),
            inode: 0,
            device: 0,
            links: 0,
            size: 0,
            rdev: None,
            target: None,
            xattrs: Vec::new(),
            content: Vec::new(),
            subtree: None,
        }
    }

    /// Checks the invariants a reader relies on before it touches a filesystem.
    pub fn validate(&self) -> Result<()> {
        check_name(&self.name.0)?;
        let what = "tree node";
        for t in [self.mtime, self.atime, self.ctime] {
            if t.1 >= 1_000_000_000 {
                return Err(FormatError::malformed(
                    what,
                    format!("nanoseconds {} out of range", t.1),
                ));
            }
        }
        if self.mode > 0o7777 {
            return Err(FormatError::malformed(
                what,
                format!("mode {:o} has bits above 0o7777", self.mode),
            ));
        }
        match self.kind {
            NodeKind::File => {
                let mut total: u64 = 0;
                for c in &self.content {
                    if c.id.is_some() && c.len > u64::from(MAX_BLOB_SIZE) {
                        return Err(FormatError::malformed(
                            what,
                            "a content blob is longer than the blob limit",
                        ));
                    }
                    total = total
                        .checked_add(c.len)
                        .ok_or_else(|| FormatError::malformed(what, "content lengths overflow"))?;
                }
                if total != self.size {
                    return Err(FormatError::malformed(
                        what,
                        format!("content adds up to {total} bytes but size is {}", self.size),
                    ));
                }
            }
            NodeKind::Dir if self.subtree.is_none() => {
                return Err(FormatError::malformed(what, "directory without subtree"));
            }
            NodeKind::Symlink if self.target.is_none() => {
                return Err(FormatError::malformed(what, "symlink without target"));
            }
            NodeKind::Chardev | NodeKind::Blockdev if self.rdev.is_none() => {
                return Err(FormatError::malformed(what, "device without device number"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A reference from an index page to a child page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    /// Name of the first node under the child page.
    pub first: RawBytes,
    /// The child page's blob id.
    pub id: BlobId,
    /// Number of nodes under the child page.
    pub count: u64,
}

/// One tree blob: a leaf page (`nodes`) or an index page (`pages`), never both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreePage {
    /// [`TREE_VERSION`].
    pub version: u32,
    /// Nodes, strictly sorted by name (leaf page).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<Node>,
    /// Child pages in name order (index page).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<PageRef>,
}

impl TreePage {
    /// A leaf page.
    pub fn leaf(nodes: Vec<Node>) -> Self {
        TreePage {
            version: TREE_VERSION,
            nodes,
            pages: Vec::new(),
        }
    }

    /// An index page.
    pub fn index(pages: Vec<PageRef>) -> Self {
        TreePage {
            version: TREE_VERSION,
            nodes: Vec::new(),
            pages,
        }
    }

    /// The blob plaintext.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let bytes = cbor::to_vec("tree", self)?;
        if bytes.len() > MAX_BLOB_SIZE as usize {
            return Err(FormatError::TooLarge {
                what: "tree page",
                size: bytes.len() as u64,
                limit: MAX_BLOB_SIZE.into(),
            });
        }
        Ok(bytes)
    }

    /// Decodes and validates a blob plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let page: TreePage = cbor::from_slice("tree", bytes)?;
        if page.version != TREE_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "tree",
                found: page.version.into(),
                supported: TREE_VERSION.into(),
            });
        }
        if !page.nodes.is_empty() && !page.pages.is_empty() {
            return Err(FormatError::malformed(
                "tree",
                "a page holds both nodes and page references",
            ));
        }
        for n in &page.nodes {
            n.validate()?;
        }
        for w in page.nodes.windows(2) {
            if w[0].name >= w[1].name {
                return Err(FormatError::malformed(
                    "tree",
                    format!("names not strictly sorted at {:?}", w[1].name),
                ));
            }
        }
        for w in page.pages.windows(2) {
            if w[0].first >= w[1].first {
                return Err(FormatError::malformed("tree", "page references not sorted"));
            }
        }
        Ok(page)
    }
}

/// Checks that a name is one safe path component: not empty, not `.` or `..`,
/// no `/` and no NUL byte, at most 4096 bytes.
pub fn check_name(name: &[u8]) -> Result<()> {
    let bad = |why: &str| {
        Err(FormatError::malformed(
            "tree node",
            format!("name {:?} {why}", String::from_utf8_lossy(name)),
        ))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name == b"." || name == b".." {
        return bad("is a relative path component");
    }
    if name.contains(&b'/') || name.contains(&0) {
        return bad("contains '/' or NUL");
    }
    if name.len() > 4096 {
        return bad("is longer than 4096 bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> Node {
        let mut n = Node::new(name, NodeKind::File);
        n.size = 10;
        n.content = vec![
            ContentRef {
                id: Some(BlobId([1; 32])),
                len: 6,
            },
            ContentRef { id: None, len: 4 },
        ];
        n.mtime = Timestamp(-5, 999_999_999);
        n
    }

    #[test]
    fn leaf_round_trip() {
        let page = TreePage::leaf(vec![file("a"), file("b")]);
        assert_eq!(TreePage::decode(&page.encode().unwrap()).unwrap(), page);
    }

    #[test]
    fn unsafe_names_are_refused() {
        for name in ["..", ".", "a/b", ""] {
            let page = TreePage::leaf(vec![file(name)]);
            assert!(
                TreePage::decode(&page.encode().unwrap()).is_err(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn unsorted_or_duplicate_names_are_refused() {
        let page = TreePage::leaf(vec![file("b"), file("a")]);
        assert!(TreePage::decode(&page.encode().unwrap()).is_err());
        let page = TreePage::leaf(vec![file("a"), file("a")]);
        assert!(TreePage::decode(&page.encode().unwrap()).is_err());
    }

    #[test]
    fn size_must_match_content() {
        let mut n = file("a");
        n.size = 11;
        assert!(n.validate().is_err());
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut page = TreePage::leaf(vec![file("a")]);
        page.version = 2;
        let err = TreePage::decode(&page.encode().unwrap()).unwrap_err();
        assert!(matches!(
            err,
            FormatError::UnsupportedVersion { found: 2, .. }
        ));
    }
}
