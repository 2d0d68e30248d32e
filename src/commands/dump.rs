use crate::cli::{DumpArgs, Global};
use crate::exit;

pub async fn run(g: &Global, a: DumpArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    let index = repo.load_index().await?;
    let out = Box::new(std::io::BufWriter::with_capacity(
        1 << 20,
        super::RawStdout::new(),
    ));
    coffer_engine::dump::dump(repo, index, &a.snapshot, &a.path, out).await?;
    Ok(exit::OK)
}
