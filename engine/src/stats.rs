//! Statistics of snapshots: how much they restore to, and what they store.

use std::collections::HashSet;
use std::sync::Arc;

use coffer_repo_format::tree::NodeKind;
use coffer_repo_format::{BlobId, PackId};

use crate::error::Result;
use crate::index::Index;
use crate::repository::Repository;
use crate::trees::{Step, Walk};

/// What a set of snapshots holds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Snapshots counted.
    pub snapshots: u64,
    /// Files (of every type) over all the snapshots, as a restore would create them.
    pub total_file_count: u64,
    /// Bytes a restore of every snapshot would write (file sizes, holes included).
    pub total_size: u64,
    /// Distinct data blobs referenced.
    pub data_blobs: u64,
    /// Distinct tree blobs referenced.
    pub tree_blobs: u64,
    /// Plaintext bytes of the distinct blobs.
    pub raw_size: u64,
    /// Stored bytes of the distinct blobs (compressed and encrypted).
    pub stored_size: u64,
    /// Packs that hold at least one of the blobs.
    pub packs: u64,
    /// `total_size / raw_size`: how much deduplication and holes saved.
    pub dedup_ratio: f64,
    /// `raw_size / stored_size`: how much compression saved.
    pub compression_ratio: f64,
    /// Bytes of every pack in the repository, referenced or not.
    pub repository_size: u64,
}

/// Counts `snapshots` (all of them when empty).
pub async fn stats(
    repo: &Arc<Repository>,
    index: &Index,
    snapshots: &[String],
    filter: &crate::filter::Filter,
) -> Result<Stats> {
    let list = repo.select_snapshots(snapshots, filter).await?;
    let mut st = Stats {
        snapshots: list.len() as u64,
        ..Default::default()
    };
    let mut blobs: HashSet<BlobId> = HashSet::new();
    let mut packs: HashSet<PackId> = HashSet::new();
    let mut count = |id: BlobId, st: &mut Stats, data: bool| {
        if !blobs.insert(id) {
            return;
        }
        if let Some(loc) = index.get(&id) {
            st.raw_size += u64::from(loc.raw_len);
            st.stored_size += u64::from(loc.stored_len);
            packs.insert(loc.pack);
        }
        if data {
            st.data_blobs += 1;
        } else {
            st.tree_blobs += 1;
        }
    };
    for (_, snap) in &list {
        // Each snapshot restores in full, even where it shares trees with others.
        let mut walk = Walk::new(repo, index, "/".into(), snap.root.clone());
        while let Some(step) = walk.next().await? {
            match step {
                Step::Enter(e) => {
                    if walk.depth() > 0 {
                        st.total_file_count += 1;
                    }
                    if let Some(tree) = e.node.subtree {
                        count(tree, &mut st, false);
                    }
                }
                Step::Leaf(e) => {
                    st.total_file_count += 1;
                    if e.node.kind == NodeKind::File {
                        st.total_size += e.node.size;
                        for id in e.node.content.iter().filter_map(|c| c.id) {
                            count(id, &mut st, true);
                        }
                    }
                }
                Step::Leave(_, pages) => {
                    for page in pages {
                        count(page, &mut st, false);
                    }
                }
                Step::Unreadable { error, .. } => return Err(error),
            }
        }
    }
    st.packs = packs.len() as u64;
    st.repository_size = index.packs().iter().map(|(_, size)| u64::from(*size)).sum();
    if st.raw_size > 0 {
        st.dedup_ratio = st.total_size as f64 / st.raw_size as f64;
    }
    if st.stored_size > 0 {
        st.compression_ratio = st.raw_size as f64 / st.stored_size as f64;
    }
    Ok(st)
}
