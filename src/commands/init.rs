use coffer_engine::format::chunker::ChunkerParams;
use coffer_engine::{InitOptions, Repository};

use crate::cli::{Global, InitArgs};
use crate::exit;

pub async fn run(g: &Global, a: InitArgs) -> anyhow::Result<i32> {
    let avg =
        u32::try_from(a.chunk_size).map_err(|_| anyhow::anyhow!("--chunk-size is too large"))?;
    let opts = InitOptions {
        chunker: ChunkerParams::from_average(avg, a.chunk_normalization),
        compression: a.compression,
        pack_size: u32::try_from(a.pack_size)
            .map_err(|_| anyhow::anyhow!("--pack-size is too large"))?,
        kdf: a.kdf.cost()?,
        key_owner: None,
        same_chunker_as: None,
    };
    let opts = if a.copy_chunker_params {
        let source = super::open_source(g, &a.from).await?;
        InitOptions {
            chunker: source.config().chunker,
            same_chunker_as: Some(source),
            ..opts
        }
    } else {
        opts
    };
    let store = super::open_store(g, true)?;
    if store.size("config").await.is_ok() {
        return Err(coffer_engine::Error::RepositoryExists {
            location: store.location(),
        }
        .into());
    }
    let password = crate::password::get(g, true)?;
    let repo = Repository::init(store, &password, opts).await?;
    if g.json {
        super::print_json(&serde_json::json!({
            "message_type": "initialized",
            "id": repo.config().id_hex(),
            "repository": repo.location(),
        }))?;
    } else if !g.quiet {
        println!(
            "created coffer repository {} at {}",
            &repo.config().id_hex()[..10],
            repo.location()
        );
        println!("Keep the password safe: without it the data in this repository cannot be read.");
    }
    Ok(exit::OK)
}
