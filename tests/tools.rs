//! The tools of a bad day, through the `coffer` binary: `rewrite`, `repair
//! index`, `repair snapshots` and `copy`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{
    contains, init_args, json, noise, pack_holding, stderr, wait_stopped, walk_files, write, Env,
};

const INIT: [&str; 9] = init_args("256KiB");
const SECRET: &[u8] = b"AWS_SECRET_ACCESS_KEY=MARKER-5d41402abc4b2a76b9719d911017c592\n";
const MARKER: &[u8] = b"MARKER-5d41402abc4b2a76b9719d911017c592";

impl Env {
    fn ids(&self) -> Vec<String> {
        let v = json(&self.expect(0, &["snapshots", "--json"]));
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn snapshot(&self, id: &str) -> serde_json::Value {
        json(&self.expect(0, &["cat", "snapshot", id]))
    }

    /// The plaintext of every blob of every pack in the repository, read
    /// through the packs' headers (not only what the index lists).
    fn every_blob(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for pack in walk_files(&self.repo.join("data")) {
            let id = pack.file_name().unwrap().to_str().unwrap();
            let header = json(&self.expect(0, &["cat", "pack", id]));
            for b in header["blobs"].as_array().unwrap() {
                let blob = b["id"].as_str().unwrap();
                let got = self.run(&["cat", "blob", blob]);
                assert_eq!(got.status.code(), Some(0), "blob {blob}: {}", stderr(&got));
                out.push(got.stdout);
            }
        }
        out
    }

    fn restore(&self, snapshot: &str, name: &str) -> PathBuf {
        let target = self.root.join(name);
        self.expect(
            0,
            &["restore", snapshot, "--target", target.to_str().unwrap()],
        );
        target
    }
}

/// Every file below `dir`, by path relative to it, with its content.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = walk_files(dir)
        .into_iter()
        .filter(|p| p.symlink_metadata().unwrap().is_file())
        .map(|p| {
            (
                p.strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_secret_rewritten_out_of_three_snapshots_then_pruned_is_gone_from_every_pack() {
    let env = Env::new();
    env.expect(0, &INIT);
    let src = env.root.join("app");
    write(&src.join("config/.env"), SECRET);
    write(&src.join("config/app.yaml"), b"replicas: 3\n");
    for i in 0..3u64 {
        write(&src.join(format!("data/{i}.bin")), &noise(i, 150_000));
        env.expect(0, &["backup", src.to_str().unwrap(), "--tag", "nightly"]);
    }
    let before = env.ids();
    assert_eq!(before.len(), 3);
    // The test's search finds the secret while it is stored.
    assert!(env.every_blob().iter().any(|b| contains(b, MARKER)));

    // A dry run changes nothing and says what would go.
    let dry = env.expect(0, &["rewrite", "--exclude", ".env", "--dry-run"]);
    assert!(dry.contains("/config/.env"), "{dry}");
    assert_eq!(env.ids(), before);

    let patterns = env.root.join("secrets.txt");
    write(&patterns, b"# what must go\n/**/config/.env\n");
    let v = json(&env.expect(
        0,
        &[
            "rewrite",
            "--exclude-file",
            patterns.to_str().unwrap(),
            "--forget",
            "--json",
        ],
    ));
    let rewritten = v["snapshots"].as_array().unwrap();
    assert_eq!(rewritten.len(), 3);
    let after = env.ids();
    assert_eq!(after.len(), 3);
    for r in rewritten {
        assert_eq!(r["forgotten"], true, "{r}");
        let new = r["new"].as_str().unwrap();
        let old = r["original"].as_str().unwrap();
        assert!(after.contains(&new.to_string()) && !after.contains(&old.to_string()));
        let s = env.snapshot(new);
        assert_eq!(s["original"], old);
        assert_eq!(s["tags"], serde_json::json!(["nightly"]));
    }
    // Time and host are kept: the three keep their order and times.
    env.expect(0, &["prune", "--max-unused", "0%"]);
    env.expect(0, &["check", "--read-data"]);

    let found = env.expect(0, &["find", "*.env"]);
    assert!(!found.contains(".env"), "{found}");
    for (i, id) in after.iter().enumerate() {
        let out = env.restore(id, &format!("out{i}"));
        let root = out;
        assert!(!root.join("config/.env").exists());
        assert_eq!(
            std::fs::read(root.join("config/app.yaml")).unwrap(),
            b"replicas: 3\n"
        );
        for j in 0..=i as u64 {
            assert_eq!(
                std::fs::read(root.join(format!("data/{j}.bin"))).unwrap(),
                noise(j, 150_000)
            );
        }
        for (path, bytes) in files(&root) {
            assert!(!contains(&bytes, MARKER), "{}", path.display());
        }
    }
    for blob in env.every_blob() {
        assert!(
            !contains(&blob, MARKER),
            "a stored blob still holds the secret"
        );
        assert!(!contains(&blob, b".env"), "a tree still lists the file");
    }
}

#[test]
fn rewrite_refuses_no_pattern_and_leaves_unmatched_snapshots_alone() {
    let env = Env::new();
    env.expect(0, &INIT);
    let src = env.source();
    env.expect(0, &["backup", src.to_str().unwrap()]);
    let out = env.run(&["rewrite"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--exclude"), "{}", stderr(&out));
    let before = env.ids();
    let v = json(&env.expect(0, &["rewrite", "--exclude", "nothing-here", "--json"]));
    assert_eq!(v["snapshots"][0]["new"], serde_json::Value::Null);
    assert_eq!(env.ids(), before);
    let out = env.run(&["rewrite", "--exclude", "x", "0000dead"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("0000dead"), "{}", stderr(&out));
}

/// A repository with three files of 2 MB (many packs each) and a small
/// one, and the source.
fn damaged_fixture() -> (Env, PathBuf) {
    let env = Env::new();
    env.expect(0, &INIT);
    let src = env.root.join("src");
    for (i, name) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        write(&src.join(name), &noise(10 + i as u64, 2_000_000));
    }
    write(&src.join("small.txt"), b"small\n");
    // One worker: packs hold the files' chunks in order, not interleaved.
    env.expect(0, &["backup", "--threads", "1", src.to_str().unwrap()]);
    (env, src)
}

/// Restores the latest snapshot and compares it with `src`: every file
/// equal but those named in `lost`, which must exist with their size.
fn restores_but(env: &Env, src: &Path, lost: &[&str], name: &str) {
    let out = env.restore("latest", name);
    let root = out;
    for (path, bytes) in files(src) {
        let got = std::fs::read(root.join(&path)).unwrap();
        let shown = path.to_str().unwrap();
        if lost.contains(&shown) {
            assert_eq!(got.len(), bytes.len(), "{shown}");
            assert!(got != bytes, "{shown} was not damaged");
        } else {
            assert!(got == bytes, "{shown} differs");
        }
    }
}

/// A pack holding a piece of the middle of `file` (2 MB), and of no other file.
fn the_pack_holding(env: &Env, file: &str) -> PathBuf {
    let content = std::fs::read(env.root.join("src").join(file)).unwrap();
    pack_holding(env, &content, 800_000..1_200_000)
}

#[test]
fn repair_index_rebuilds_a_deleted_or_damaged_index_and_everything_restores() {
    for damage in ["deleted", "damaged"] {
        let (env, src) = damaged_fixture();
        let index = walk_files(&env.repo.join("index"));
        assert!(!index.is_empty());
        for f in &index {
            if damage == "deleted" {
                std::fs::remove_file(f).unwrap();
            } else {
                let mut b = std::fs::read(f).unwrap();
                let n = b.len() / 2;
                b[n] ^= 0x40;
                std::fs::write(f, b).unwrap();
            }
        }
        let out = env.run(&["check"]);
        assert_eq!(out.status.code(), Some(1), "{damage}: check passed");
        let dry = env.expect(0, &["repair", "index", "--dry-run"]);
        assert!(dry.contains("dry run"), "{dry}");
        assert_eq!(
            walk_files(&env.repo.join("index")).len(),
            index.len() * usize::from(damage == "damaged")
        );
        let v = json(&env.expect(0, &["repair", "index", "--json"]));
        assert_eq!(v["executed"], true, "{v}");
        if damage == "damaged" {
            assert_eq!(
                v["damaged_index_files"].as_array().unwrap().len(),
                index.len(),
                "{v}"
            );
        }
        env.expect(0, &["check", "--read-data"]);
        restores_but(&env, &src, &[], damage);
    }
}

#[test]
fn a_missing_pack_or_a_flipped_byte_is_repaired_so_that_the_rest_restores() {
    for damage in ["missing", "flipped"] {
        let (env, src) = damaged_fixture();
        let victim = the_pack_holding(&env, "b.bin");
        if damage == "missing" {
            std::fs::remove_file(&victim).unwrap();
        } else {
            let mut b = std::fs::read(&victim).unwrap();
            b[200] ^= 0x01;
            std::fs::write(&victim, b).unwrap();
        }
        let out = env.run(&["check", "--read-data"]);
        assert_eq!(out.status.code(), Some(1), "{damage}: check passed");

        let v = json(&env.expect(0, &["repair", "index", "--read-data", "--json"]));
        assert_eq!(v["executed"], true, "{v}");
        if damage == "missing" {
            assert_eq!(v["missing_packs"].as_array().unwrap().len(), 1, "{v}");
        } else {
            assert!(!v["damaged_blobs"].as_array().unwrap().is_empty(), "{v}");
            assert!(!victim.exists(), "the damaged pack was not replaced");
        }
        let original = env.ids();
        let dry = env.expect(0, &["repair", "snapshots", "--dry-run"]);
        assert!(dry.contains("b.bin"), "{dry}");
        assert_eq!(env.ids(), original);
        let v = json(&env.expect(0, &["repair", "snapshots", "--forget", "--json"]));
        let r = &v["snapshots"][0];
        assert_eq!(r["forgotten"], true, "{v}");
        let files: Vec<&str> = r["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(files.len(), 1, "{v}");
        assert!(files[0].ends_with("/b.bin"), "{v}");
        let ids = env.ids();
        assert_eq!(ids.len(), 1);
        assert_ne!(ids, original);
        assert_eq!(env.snapshot(&ids[0])["original"], original[0].as_str());
        env.expect(0, &["check", "--read-data"]);
        restores_but(&env, &src, &["b.bin"], damage);
        // The repaired file says what happened to it, in the snapshot.
        let root = env.snapshot("latest")["root"]["subtree"]
            .as_str()
            .unwrap()
            .to_string();
        let page = json(&env.expect(0, &["cat", "tree", &root]));
        let b = page["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "b.bin")
            .unwrap();
        let marks = b["xattrs"].to_string();
        assert!(marks.contains("user.coffer.repaired"), "{b}");
        let a = page["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "a.bin")
            .unwrap();
        assert!(!a.to_string().contains("user.coffer.repaired"), "{a}");
    }
}

/// Two repositories: `env.repo` (the source) and `dst`, with another
/// password; `copy` runs with the destination as --repo.
struct Pair {
    env: Env,
    dst: PathBuf,
}

impl Pair {
    fn new(dst_init: &[&str]) -> Pair {
        let env = Env::new();
        env.expect(0, &INIT);
        let pair = Pair {
            dst: env.root.join("dst"),
            env,
        };
        let out = pair.dst_cmd(dst_init).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        pair
    }

    fn dst_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd(args);
        c.env("COFFER_REPOSITORY", &self.dst)
            .env("COFFER_PASSWORD", "another password")
            .env("COFFER_FROM_REPOSITORY", &self.env.repo)
            .env("COFFER_FROM_PASSWORD", "correct horse");
        c
    }

    fn dst(&self, args: &[&str]) -> String {
        let out = self.dst_cmd(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    fn copy(&self) -> serde_json::Value {
        json(&self.dst(&["copy", "--json"]))
    }
}

fn copies_and_restores(dst_init: &[&str], same_chunking: bool) {
    let pair = Pair::new(dst_init);
    let env = &pair.env;
    let src = env.root.join("src");
    write(&src.join("big.bin"), &noise(1, 700_000));
    write(&src.join("dir/small.txt"), b"small\n");
    write(
        &src.join("dir/sparse"),
        &[vec![0u8; 300_000], noise(2, 1000)].concat(),
    );
    env.expect(0, &["backup", src.to_str().unwrap()]);
    write(&src.join("new/more.bin"), &noise(3, 200_000));
    env.expect(0, &["backup", src.to_str().unwrap()]);

    let first = pair.copy();
    let done = first["snapshots"].as_array().unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(done[0]["same_chunking"], same_chunking, "{first}");
    // The second snapshot's unchanged directory and file come from the first copy.
    assert_eq!(done[1]["parent"], done[0]["new"], "{first}");
    assert!(done[1]["dirs_reused"].as_u64().unwrap() >= 1, "{first}");
    assert!(done[1]["files_reused"].as_u64().unwrap() >= 1, "{first}");
    assert_eq!(done[1]["files_read"], 1, "{first}");

    // Again: nothing is copied, nothing stored.
    let data_before = walk_files(&pair.dst.join("data")).len();
    let again = pair.copy();
    for s in again["snapshots"].as_array().unwrap() {
        assert!(s["already"].is_string(), "{again}");
        assert_eq!(s["new"], serde_json::Value::Null);
    }
    assert_eq!(walk_files(&pair.dst.join("data")).len(), data_before);

    let v = json(&pair.dst(&["snapshots", "--json"]));
    let copies = v.as_array().unwrap();
    assert_eq!(copies.len(), 2);
    for (i, c) in copies.iter().enumerate() {
        let id = c["id"].as_str().unwrap();
        let s = json(&pair.dst(&["cat", "snapshot", id]));
        let orig = env.snapshot(s["original"].as_str().unwrap());
        assert_eq!(s["time"], orig["time"]);
        assert_eq!(s["hostname"], orig["hostname"]);
        assert_eq!(s["paths"], orig["paths"]);
        let a = env.restore(s["original"].as_str().unwrap(), &format!("from-src-{i}"));
        let b = env.root.join(format!("from-dst-{i}"));
        pair.dst(&["restore", id, "--target", b.to_str().unwrap()]);
        assert_eq!(files(&a), files(&b));
    }
    pair.dst(&["check", "--read-data"]);
}

#[test]
fn copy_with_the_same_chunking_copies_blobs_and_a_second_copy_sends_nothing() {
    let mut init: Vec<&str> = INIT.to_vec();
    init.push("--copy-chunker-params");
    copies_and_restores(&init, true);
}

#[test]
fn copy_with_other_chunk_parameters_rechunks_and_restores_byte_for_byte() {
    let mut init: Vec<&str> = INIT.to_vec();
    init[6] = "128KiB";
    copies_and_restores(&init, false);
}

#[test]
fn a_copy_killed_mid_way_and_run_again_completes_without_storing_twice() {
    let pair = Pair::new(&INIT);
    let env = &pair.env;
    let src = env.root.join("src");
    for i in 0..4u64 {
        write(&src.join(format!("f{i}.bin")), &noise(20 + i, 400_000));
    }
    env.expect(0, &["backup", src.to_str().unwrap()]);
    let mut child = pair
        .dst_cmd(&["copy"])
        .env("COFFER_TEST_STOP_AT", "pack-stored")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_stopped(&mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(json(&pair.dst(&["snapshots", "--json"]))
        .as_array()
        .unwrap()
        .is_empty());
    let stored_before = walk_files(&pair.dst.join("data")).len();
    assert!(stored_before >= 1);

    let v = pair.copy();
    let s = &v["snapshots"][0];
    assert!(s["new"].is_string(), "{v}");
    // Every blob is listed once: what the killed run stored was adopted.
    let index_blobs = |repo: &Path, cmd: &dyn Fn(&[&str]) -> String| {
        let mut ids = Vec::new();
        for f in walk_files(&repo.join("index")) {
            let idx = json(&cmd(&[
                "cat",
                "index",
                f.file_name().unwrap().to_str().unwrap(),
            ]));
            for p in idx["packs"].as_array().unwrap() {
                for b in p["blobs"].as_array().unwrap() {
                    ids.push(b["id"].as_str().unwrap().to_string());
                }
            }
        }
        ids
    };
    let ids = index_blobs(&pair.dst, &|a| pair.dst(a));
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "a blob was stored twice");
    let rerun_stored = s["blobs_stored"].as_u64().unwrap() as usize;
    assert!(
        rerun_stored < unique.len(),
        "the re-run stored everything again: {v}"
    );
    pair.dst(&["check", "--read-data"]);
    let out = env.root.join("copied");
    pair.dst(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(files(&out), files(&src));
}

#[test]
fn copy_names_a_missing_source_and_refuses_the_same_repository() {
    let pair = Pair::new(&INIT);
    let out = pair
        .dst_cmd(&["copy"])
        .env("COFFER_FROM_REPOSITORY", pair.env.root.join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));
    let out = pair
        .env
        .cmd(&["copy"])
        .env("COFFER_FROM_REPOSITORY", &pair.env.repo)
        .env("COFFER_FROM_PASSWORD", "correct horse")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("same repository"), "{}", stderr(&out));
    let out = pair
        .dst_cmd(&["copy"])
        .env("COFFER_FROM_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
}
