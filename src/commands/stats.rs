use crate::cli::{Global, StatsArgs};
use crate::{exit, fmt};

pub async fn run(g: &Global, a: StatsArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let index = repo.load_index().await?;
    let st = coffer_engine::stats::stats(&repo, &index, &a.snapshots, &a.origin.snapshot_filter())
        .await?;
    if g.json {
        super::print_json(&st)?;
        return Ok(exit::OK);
    }
    println!("Snapshots:          {}", st.snapshots);
    println!("Files:              {}", st.total_file_count);
    println!("Restore size:       {}", fmt::size(st.total_size));
    println!(
        "Unique data:        {} in {} data and {} tree blobs",
        fmt::size(st.raw_size),
        st.data_blobs,
        st.tree_blobs
    );
    println!(
        "Stored size:        {} in {} packs",
        fmt::size(st.stored_size),
        st.packs
    );
    println!("Dedup ratio:        {:.2}x", st.dedup_ratio);
    println!("Compression ratio:  {:.2}x", st.compression_ratio);
    println!("Repository packs:   {}", fmt::size(st.repository_size));
    Ok(exit::OK)
}
