//! `coffer k8s manifests`: an application backup's objects (SPEC.md §16),
//! cleaned and ordered as the controller restores them, printed as YAML.
//! Needs only the repository and its password: the way back when no
//! cluster (or no coffer controller) is left.

use std::collections::BTreeMap;
use std::io::Write;

use coffer_application::clean::CleanOptions;

use crate::cli::{Global, K8sCommand, ManifestsArgs};
use crate::exit;

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
    let app = coffer_application::read::read(&repo, &index, &snap, &short)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let namespace = a
        .namespace
        .clone()
        .or_else(|| app.namespace.clone())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "snapshot {short} does not say which namespace it was taken in: give --namespace"
            )
        })?;
    let opts = CleanOptions {
        namespace,
        from_namespace: app.namespace.clone(),
        storage_classes: classes,
    };
    let made = coffer_application::manifests(app.objects, &opts);
    for (place, why) in &made.left_out {
        eprintln!("left out {}: {why}", place.path());
    }
    let found = made.objects;
    for (place, o) in &found {
        if place.kind == "RoleBinding" {
            let outside = coffer_application::clean::outside_subjects(o, &opts.namespace);
            if !outside.is_empty() {
                eprintln!(
                    "{} grants rights in namespace {} to subjects outside it: {}",
                    place.path(),
                    opts.namespace,
                    outside.join(", ")
                );
            }
        }
    }
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
