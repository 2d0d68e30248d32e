//! `coffer k8s manifests`: an application backup's objects (SPEC.md §16),
//! cleaned and ordered as the controller restores them, printed as YAML.
//! Needs only the repository and its password: the way back when no
//! cluster (or no coffer controller) is left.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use coffer_application::clean::{clean, not_restored, repoint_owners, CleanOptions};
use coffer_application::layout::{ObjectPath, Scope, MANIFEST, OBJECTS};
use coffer_engine::trees::{self, Step, Walk};
use serde_json::Value;

use crate::cli::{Global, K8sCommand, ManifestsArgs};
use crate::exit;

/// The largest object file read: the API server's own limit is about
/// 1.5 MiB per object.
const MAX_OBJECT_BYTES: u64 = 8 << 20;

pub async fn run(g: &Global, c: K8sCommand) -> anyhow::Result<i32> {
    match c {
        K8sCommand::Manifests(a) => manifests(g, a).await,
    }
}

async fn manifests(g: &Global, a: ManifestsArgs) -> anyhow::Result<i32> {
    let mut classes = BTreeMap::new();
    for pair in &a.storage_class_map {
        let Some((old, new)) = pair
            .split_once('=')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty())
        else {
            anyhow::bail!("--storage-class-map {pair:?}: expected OLD=NEW");
        };
        classes.insert(old.to_string(), new.to_string());
    }
    let repo = super::open(g).await?;
    let index = repo.load_index().await?;
    let (id, snap) = repo.find_snapshot(&a.snapshot).await?;
    let short = id.short();
    let not_app = || {
        anyhow::anyhow!(
            "snapshot {short} is not an application backup: it has no /{OBJECTS} directory (SPEC.md §16)"
        )
    };
    let objects = trees::lookup(&repo, &index, &snap.root, format!("/{OBJECTS}").as_bytes())
        .await?
        .ok_or_else(not_app)?;
    let manifest: Value =
        match trees::lookup(&repo, &index, &snap.root, format!("/{MANIFEST}").as_bytes()).await? {
            Some(n) => {
                let bytes = coffer_engine::dump::read_small_file(
                    &repo,
                    &index,
                    &n,
                    MAX_OBJECT_BYTES,
                    MANIFEST,
                )
                .await?;
                serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("snapshot {short}: /{MANIFEST} is not JSON: {e}")
                })?
            }
            None => Value::Null,
        };
    let namespace = a
        .namespace
        .clone()
        .or_else(|| manifest["namespace"].as_str().map(str::to_string))
        .or_else(|| snap.origin.as_ref().and_then(|o| o.namespace.clone()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "snapshot {short} does not say which namespace it was taken in: give --namespace"
            )
        })?;
    let from_namespace = manifest["namespace"]
        .as_str()
        .map(str::to_string)
        .or_else(|| snap.origin.as_ref().and_then(|o| o.namespace.clone()));
    let opts = CleanOptions {
        namespace,
        from_namespace,
        storage_classes: classes,
    };
    let mut found: Vec<(ObjectPath, Value)> = Vec::new();
    let mut walk = Walk::new(&repo, &index, PathBuf::from(OBJECTS), objects);
    while let Some(step) = walk.next().await? {
        let Step::Leaf(entry) = step else {
            continue;
        };
        let path = entry.path.to_string_lossy().to_string();
        let place =
            ObjectPath::parse(&path).map_err(|e| anyhow::anyhow!("snapshot {short}: {e}"))?;
        if place.scope != Scope::Namespaced {
            continue;
        }
        let bytes = coffer_engine::dump::read_small_file(
            &repo,
            &index,
            &entry.node,
            MAX_OBJECT_BYTES,
            &path,
        )
        .await?;
        let o: Value = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("snapshot {short}: {path} is not JSON: {e}"))?;
        let says = (
            o["apiVersion"].as_str().unwrap_or_default(),
            o["kind"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default(),
        );
        if says
            != (
                place.api_version().as_str(),
                place.kind.as_str(),
                place.name.as_str(),
            )
        {
            anyhow::bail!(
                "snapshot {short}: {path} holds {} {} {:?}, not the object its path names",
                says.0,
                says.1,
                says.2
            );
        }
        if let Some(why) = not_restored(&place.kind, &o) {
            eprintln!("left out {path}: {why}");
            continue;
        }
        let mut c = clean(&place.kind, &o, &opts);
        // No owner exists yet for kubectl: an owner reference needs its uid.
        repoint_owners(&mut c, |_, _| None);
        found.push((place, c));
    }
    coffer_application::order::sort(&mut found, |(p, _)| (&p.group, &p.kind, &p.name));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, (_, o)) in found.iter().enumerate() {
        if i > 0 {
            writeln!(out, "---")?;
        }
        serde_yaml::to_writer(&mut out, o)?;
    }
    out.flush()?;
    eprintln!(
        "{} objects of snapshot {short}, for namespace {}",
        found.len(),
        opts.namespace
    );
    Ok(exit::OK)
}
