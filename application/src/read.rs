//! An application snapshot's objects, read from a repository (feature
//! `engine`). The repository is hostile: every path is checked
//! ([`ObjectPath::parse`]), every file is bounded in size, and a file that
//! holds another object than its path names is refused, naming it.

use std::path::PathBuf;

use coffer_engine::format::snapshot::Snapshot;
use coffer_engine::trees::{self, Step, Walk};
use coffer_engine::{Index, Repository};
use serde_json::Value;

use crate::layout::{ObjectPath, Scope, MANIFEST, OBJECTS};

/// The largest object file read: the API server's own limit is about
/// 1.5 MiB per object.
pub const MAX_OBJECT_BYTES: u64 = 8 << 20;

/// The most memory one application's objects may take once parsed, as
/// [`held_size`] estimates it: a restore holds them all (to order them),
/// so this bounds its memory, within the movers' default limit (1 GiB).
/// Typical objects take about four times their JSON, so this is some
/// 64 MiB of JSON, many times what a namespace holds (a whole cluster's
/// etcd holds 2 GiB by default).
pub const MAX_APPLICATION_BYTES: u64 = 256 << 20;

/// About what `json` takes in memory parsed into a `serde_json::Value`:
/// its bytes, and 32 more for every value and member it can hold (every
/// `{`, `[`, `,` and `:`), so that many tiny values count for what they
/// cost, not for their few bytes.
pub fn held_size(json: &[u8]) -> u64 {
    let values = json
        .iter()
        .filter(|b| matches!(b, b'{' | b'[' | b',' | b':'))
        .count() as u64;
    json.len() as u64 + 32 * values
}

/// The most objects one application may have (small objects cost more held
/// than their JSON).
pub const MAX_OBJECTS: usize = 200_000;

/// What a read may still take, counted object by object.
#[derive(Clone, Debug)]
pub struct Budget {
    /// Bytes of JSON left.
    pub bytes: u64,
    /// Objects left.
    pub objects: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            bytes: MAX_APPLICATION_BYTES,
            objects: MAX_OBJECTS,
        }
    }
}

impl Budget {
    /// Takes one object that holds `len` bytes ([`held_size`]) at `path`,
    /// or says why not (in snapshot `short`).
    pub fn take(&mut self, short: &str, path: &str, len: u64) -> Result<(), String> {
        let (Some(bytes), Some(objects)) =
            (self.bytes.checked_sub(len), self.objects.checked_sub(1))
        else {
            return Err(format!(
                "snapshot {short}: at {path}, its objects are more than {} objects or take more \
                 than {} MiB parsed, more than a restore holds (a whole cluster's etcd holds \
                 2 GiB by default): the snapshot is damaged or is not an application backup",
                MAX_OBJECTS,
                MAX_APPLICATION_BYTES >> 20
            ));
        };
        (self.bytes, self.objects) = (bytes, objects);
        Ok(())
    }
}

/// An application snapshot's namespaced objects, as captured.
#[derive(Debug, Default)]
pub struct Application {
    /// `application.json` (`Null` when the snapshot has none).
    pub manifest: Value,
    /// The namespace it was captured in: `application.json`'s, else the
    /// snapshot's origin's.
    pub namespace: Option<String>,
    /// Each object under `objects/`, with its place, in tree order.
    pub objects: Vec<(ObjectPath, Value)>,
}

impl Application {
    /// The claims whose data the backup wrote, with their snapshots
    /// (`application.json`'s `volumes`; malformed entries are skipped).
    pub fn volumes(&self) -> Vec<(String, String)> {
        self.manifest["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let pvc = v["pvc"].as_str().filter(|p| !p.is_empty())?;
                let snap = v["snapshot"]
                    .as_str()
                    .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))?;
                Some((pvc.to_string(), snap.to_string()))
            })
            .collect()
    }
}

/// Reads snapshot `snap` (`short`, its id for messages) as an application
/// snapshot: an error when it has no `objects/` directory, when a path is
/// outside SPEC.md §16's layout, when a file is too large, is not JSON, or
/// holds another object than its path names, or when the objects together
/// are more than [`Budget`] allows.
pub async fn read(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    short: &str,
) -> Result<Application, String> {
    let objects = trees::lookup(repo, index, &snap.root, format!("/{OBJECTS}").as_bytes())
        .await
        .map_err(|e| format!("snapshot {short}: {e}"))?
        .ok_or_else(|| {
            format!("snapshot {short} is not an application backup: it has no /{OBJECTS} directory (SPEC.md §16)")
        })?;
    let manifest = match trees::lookup(repo, index, &snap.root, format!("/{MANIFEST}").as_bytes())
        .await
        .map_err(|e| format!("snapshot {short}: {e}"))?
    {
        Some(n) => {
            let bytes =
                coffer_engine::dump::read_small_file(repo, index, &n, MAX_OBJECT_BYTES, MANIFEST)
                    .await
                    .map_err(|e| format!("snapshot {short}: {e}"))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("snapshot {short}: /{MANIFEST} is not JSON: {e}"))?
        }
        None => Value::Null,
    };
    let namespace = manifest["namespace"]
        .as_str()
        .map(str::to_string)
        .or_else(|| snap.origin.as_ref().and_then(|o| o.namespace.clone()));
    let mut found = Vec::new();
    let mut budget = Budget::default();
    let mut walk = Walk::new(repo, index, PathBuf::from(OBJECTS), objects);
    while let Some(step) = walk
        .next()
        .await
        .map_err(|e| format!("snapshot {short}: {e}"))?
    {
        let Step::Leaf(entry) = step else {
            continue;
        };
        let path = entry.path.to_string_lossy().to_string();
        let place = ObjectPath::parse(&path).map_err(|e| format!("snapshot {short}: {e}"))?;
        if place.scope != Scope::Namespaced {
            continue;
        }
        let bytes =
            coffer_engine::dump::read_small_file(repo, index, &entry.node, MAX_OBJECT_BYTES, &path)
                .await
                .map_err(|e| format!("snapshot {short}: {e}"))?;
        budget.take(short, &path, held_size(&bytes))?;
        let o: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("snapshot {short}: {path} is not JSON: {e}"))?;
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
            return Err(format!(
                "snapshot {short}: {path} holds {} {} {:?}, not the object its path names",
                says.0, says.1, says.2
            ));
        }
        found.push((place, o));
    }
    Ok(Application {
        manifest,
        namespace,
        objects: found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget takes objects until either bound is passed, then refuses
    /// naming the snapshot, the path and the bounds.
    #[test]
    fn the_budget_bounds_objects_and_bytes() {
        let mut b = Budget {
            bytes: 100,
            objects: 2,
        };
        b.take("ab12", "objects/core/v1/ConfigMap/a.json", 60)
            .unwrap();
        let e = b
            .take("ab12", "objects/core/v1/ConfigMap/b.json", 41)
            .unwrap_err();
        assert!(
            e.starts_with("snapshot ab12: at objects/core/v1/ConfigMap/b.json,"),
            "{e}"
        );
        assert!(e.contains("256 MiB"), "{e}");
        b.take("ab12", "objects/core/v1/ConfigMap/b.json", 40)
            .unwrap();
        assert_eq!((b.bytes, b.objects), (0, 0));
        assert!(b
            .take("ab12", "objects/core/v1/ConfigMap/c.json", 0)
            .is_err());
    }

    /// Tiny values count for what they cost parsed, not for their bytes.
    #[test]
    fn held_size_counts_every_value() {
        assert_eq!(held_size(b"\"abc\""), 5);
        assert_eq!(held_size(b"[1,1,1]"), 7 + 32 * 3);
        assert_eq!(held_size(br#"{"a":1,"b":[2]}"#), 15 + 32 * 5);
    }
}
