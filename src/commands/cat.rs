use std::io::Write;

use anyhow::{bail, Context};
use coffer_engine::format::blob::BlobType;
use coffer_engine::format::pack::PackEntry;
use coffer_engine::format::tree::TreePage;
use coffer_engine::format::{BlobId, IndexId, KeyId, PackId};

use crate::cli::{CatArgs, Global};
use crate::exit;

fn entries_json(entries: &[PackEntry]) -> serde_json::Value {
    entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "type": e.blob_type,
                "id": e.id.to_hex(),
                "offset": e.offset,
                "length": e.stored_len,
                "uncompressed_length": e.raw_len,
            })
        })
        .collect()
}

fn id<T: std::str::FromStr>(a: &CatArgs) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    let Some(s) = &a.id else {
        bail!("`coffer cat {}` needs an id", a.kind);
    };
    s.parse::<T>().map_err(|e| anyhow::anyhow!("{e}"))
}

fn pretty(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("cannot encode JSON")?
    );
    Ok(())
}

pub async fn run(g: &Global, a: CatArgs) -> anyhow::Result<i32> {
    let repo = super::open(g).await?;
    match a.kind.as_str() {
        "config" => {
            let c = repo.config();
            pretty(&serde_json::json!({
                "version": c.version,
                "id": c.id_hex(),
                "created": c.created,
                "chunker": c.chunker,
                "compression": c.compression,
                "pack_size": c.pack_size,
            }))?;
        }
        "snapshot" => {
            let Some(spec) = &a.id else {
                bail!("`coffer cat snapshot` needs an id or `latest`")
            };
            let (_, s) = repo.find_snapshot(spec).await?;
            pretty(&s)?;
        }
        "index" => {
            let file = repo.read_index(&id::<IndexId>(&a)?).await?;
            let packs: Vec<_> = file
                .packs
                .iter()
                .map(|p| serde_json::json!({"id": p.id.to_hex(), "size": p.size, "blobs": entries_json(&p.blobs)}))
                .collect();
            pretty(&serde_json::json!({ "packs": packs }))?;
        }
        "pack" => {
            let entries = repo.read_pack_header(&id::<PackId>(&a)?).await?;
            pretty(&serde_json::json!({ "blobs": entries_json(&entries) }))?;
        }
        "tree" => {
            let index = repo.load_index().await?;
            let plain = repo
                .read_blob(&index, BlobType::Tree, &id::<BlobId>(&a)?)
                .await?;
            let page = TreePage::decode(&plain).context("the tree blob does not decode")?;
            pretty(&page)?;
        }
        "blob" => {
            let index = repo.load_index().await?;
            let blob = id::<BlobId>(&a)?;
            let t = index
                .get(&blob)
                .map(|l| l.blob_type)
                .unwrap_or(BlobType::Data);
            let plain = repo.read_blob(&index, t, &blob).await?;
            super::RawStdout::new().write_all(&plain)?;
        }
        "key" => {
            let kid = id::<KeyId>(&a)?;
            pretty(&repo.read_key_file(&kid).await?)?;
        }
        other => bail!(
            "unknown object type {other:?}: use config, snapshot, index, pack, tree, blob or key"
        ),
    }
    Ok(exit::OK)
}
