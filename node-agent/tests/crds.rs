//! `deploy/crds.yaml` is what `coffer-agent crds` prints.

#[test]
fn deploy_crds_match_the_rust_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds.yaml");
    let generated = coffer_node_agent::crd::crds_yaml().unwrap();
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} differs from the CRDs of node-agent/src/crd.rs; regenerate it: cargo run -p coffer-node-agent -- crds > deploy/crds.yaml",
        path.display()
    );
    // The binary prints the same text.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coffer-agent"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), generated);
    for kind in [
        "BackupRepository",
        "VolumeBackup",
        "VolumeRestore",
        "BackupSchedule",
        "RestoreSource",
        "ApplicationBackup",
        "ApplicationRestore",
    ] {
        assert!(generated.contains(&format!("kind: {kind}\n")), "{kind}");
    }
    assert_eq!(generated.matches("scope: Namespaced").count(), 7);
}

/// Every integer a tenant could write has bounds in the schema, so the API
/// server refuses what would not parse (a `group.size` of 2^32 used to stop
/// every namespace's runs).
#[test]
fn every_integer_of_every_crd_is_bounded() {
    let generated = coffer_node_agent::crd::crds_yaml().unwrap();
    let mut integers = 0;
    for doc in generated.split("\n---\n").filter(|d| d.contains("kind:")) {
        let v: serde_json::Value = serde_yaml::from_str(doc).unwrap();
        let mut todo = vec![(String::new(), v)];
        while let Some((path, v)) = todo.pop() {
            match v {
                serde_json::Value::Object(m) => {
                    let column = path.contains("additionalPrinterColumns");
                    if m.get("type").and_then(|t| t.as_str()) == Some("integer") && !column {
                        integers += 1;
                        assert!(
                            m.contains_key("minimum") && m.contains_key("maximum"),
                            "{path} has no bounds"
                        );
                    }
                    for (k, v) in m {
                        todo.push((format!("{path}.{k}"), v));
                    }
                }
                serde_json::Value::Array(a) => {
                    todo.extend(a.into_iter().map(|v| (path.clone(), v)));
                }
                _ => {}
            }
        }
    }
    assert!(integers >= 35, "{integers}");
}
