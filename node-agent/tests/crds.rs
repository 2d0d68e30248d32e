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
    ] {
        assert!(generated.contains(&format!("kind: {kind}\n")), "{kind}");
    }
    assert_eq!(generated.matches("scope: Namespaced").count(), 4);
}
