//! Integration tests of the `coffer` command: every command and exit code.

use std::path::Path;
use std::process::Command;

mod common;
use common::{
    init_args, json, last_json_line, noise, stderr, wait_stopped, walk_files, write, Env,
};

#[test]
fn init_backup_snapshots_ls_restore_round_trip() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let out = env.expect(
        0,
        &[
            "backup",
            src.to_str().unwrap(),
            "--tag",
            "daily,db",
            "--host",
            "node-1",
            "--json",
        ],
    );
    let summary = last_json_line(&out);
    for field in [
        "files_new",
        "files_changed",
        "files_unmodified",
        "dirs_new",
        "dirs_changed",
        "dirs_unmodified",
        "data_blobs",
        "tree_blobs",
        "data_added",
        "data_added_packed",
        "total_files_processed",
        "total_bytes_processed",
        "total_duration",
        "snapshot_id",
    ] {
        assert!(
            summary.get(field).is_some(),
            "summary lacks {field}: {summary}"
        );
    }
    assert_eq!(summary["files_new"], 4);
    assert_eq!(summary["total_bytes_processed"], 300_014);
    let id = summary["snapshot_id"].as_str().unwrap().to_string();

    let snaps = json(&env.expect(0, &["snapshots", "--json"]));
    let list = snaps.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let s = &list[0];
    for field in [
        "id", "short_id", "time", "hostname", "username", "paths", "tags", "tree", "parent",
    ] {
        assert!(s.get(field).is_some(), "snapshot lacks {field}: {s}");
    }
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["short_id"], &id[..8]);
    assert_eq!(s["hostname"], "node-1");
    assert_eq!(s["tags"], serde_json::json!(["daily", "db"]));
    assert_eq!(s["paths"][0], src.to_str().unwrap());
    let text = env.expect(0, &["snapshots"]);
    assert!(text.contains(&id[..8]) && text.contains("node-1"), "{text}");

    let ls = env.expect(0, &["ls", &id[..10]]);
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        ["/hello.txt", "/link", "/sub", "/sub/data.bin", "/sub/empty"]
    );
    let ls_sub = env.expect(0, &["ls", "latest:sub", "-l"]);
    assert!(
        ls_sub.contains("/sub/data.bin") && ls_sub.contains("300000"),
        "{ls_sub}"
    );
    let ls_json = env.expect(0, &["ls", "latest", "--json"]);
    let lines: Vec<_> = ls_json.lines().map(json).collect();
    assert_eq!(lines[0]["message_type"], "snapshot");
    let link = lines.iter().find(|l| l["path"] == "/link").unwrap();
    assert_eq!(link["type"], "symlink");
    assert_eq!(link["target"], "hello.txt");

    let target = env.root.join("restored");
    env.expect(
        0,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(target.join("hello.txt")).unwrap(),
        b"hello, coffer\n"
    );
    assert_eq!(
        std::fs::read(target.join("sub/data.bin")).unwrap(),
        std::fs::read(src.join("sub/data.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read_link(target.join("link")).unwrap(),
        Path::new("hello.txt")
    );

    // A subpath restores its contents into the target.
    let sub_target = env.root.join("sub-restored");
    env.expect(
        0,
        &[
            "restore",
            &format!("{}:sub", &id[..8]),
            "--target",
            sub_target.to_str().unwrap(),
        ],
    );
    assert!(sub_target.join("data.bin").exists() && !sub_target.join("hello.txt").exists());

    // --json: status lines (restic's message_type), then the summary.
    let json_target = env.root.join("json-restored");
    let out = env.expect(
        0,
        &[
            "restore",
            "latest",
            "--json",
            "--target",
            json_target.to_str().unwrap(),
        ],
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["message_type"], "status", "{out}");
    assert_eq!(lines[0]["phase"], "restore", "{out}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["message_type"], "summary", "{out}");
    assert!(
        lines[0]["total_bytes"].as_u64().unwrap() >= summary["bytes_written"].as_u64().unwrap(),
        "{out}"
    );

    // A non-empty target is refused, and left alone, without --overwrite.
    write(&target.join("hello.txt"), b"changed");
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not empty") && stderr(&out).contains("--overwrite"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(target.join("hello.txt")).unwrap(), b"changed");
    env.expect(
        0,
        &[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
        ],
    );
    assert_eq!(
        std::fs::read(target.join("hello.txt")).unwrap(),
        b"hello, coffer\n"
    );

    // A second, unchanged backup adds no data.
    let again = last_json_line(&env.expect(0, &["backup", src.to_str().unwrap(), "--json"]));
    assert_eq!(again["data_blobs"], 0);
    let text = env.expect(0, &["backup", src.to_str().unwrap()]);
    assert!(
        text.contains("snapshot") && text.contains("saved"),
        "{text}"
    );
}

#[test]
fn cat_prints_every_object_as_json() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let summary = last_json_line(&env.expect(0, &["backup", src.to_str().unwrap(), "--json"]));
    let id = summary["snapshot_id"].as_str().unwrap();

    let config = json(&env.expect(0, &["cat", "config"]));
    assert_eq!(config["version"], 1);
    assert_eq!(config["chunker"]["avg_size"], 65536);
    assert_eq!(config["id"].as_str().unwrap().len(), 64);

    let snap = json(&env.expect(0, &["cat", "snapshot", id]));
    let tree = snap["root"]["subtree"].as_str().unwrap().to_string();
    let page = json(&env.expect(0, &["cat", "tree", &tree]));
    let names: Vec<_> = page["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello.txt", "link", "sub"]);

    let index_dir = env.repo.join("index");
    let index_id = std::fs::read_dir(&index_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let index = json(&env.expect(0, &["cat", "index", index_id.to_str().unwrap()]));
    let pack = index["packs"][0]["id"].as_str().unwrap().to_string();
    let header = json(&env.expect(0, &["cat", "pack", &pack]));
    assert!(!header["blobs"].as_array().unwrap().is_empty());

    // A data blob prints its plaintext.
    let hello_blob = page["nodes"][0]["content"][0][0]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.run(&["cat", "blob", &hello_blob]);
    assert_eq!(out.stdout, b"hello, coffer\n");

    let key_id = std::fs::read_dir(env.repo.join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let key = json(&env.expect(0, &["cat", "key", key_id.to_str().unwrap()]));
    assert_eq!(key["kdf"]["algorithm"], "argon2id");

    let out = env.run(&["cat", "frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown object type"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["cat", "snapshot", "zz"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn exit_codes_for_missing_repository_wrong_password_and_bad_usage() {
    let env = Env::new();
    // 10: no repository.
    let out = env.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(stderr(&out).contains("coffer init"), "{}", stderr(&out));

    env.init();
    // 1: init twice.
    let out = env.run(&["init", "--kdf-memory", "64", "--kdf-iterations", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    // 12: wrong password.
    let out = env
        .cmd(&["snapshots"])
        .env("COFFER_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12));
    assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));

    // Password from a file and from a command; none at all is a clear error.
    let pw = env.root.join("pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let out = env
        .cmd(&["snapshots"])
        .env_remove("COFFER_PASSWORD")
        .env("COFFER_PASSWORD_FILE", &pw)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env
        .cmd(&["snapshots", "--password-command", "echo 'correct horse'"])
        .env_remove("COFFER_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env
        .cmd(&["snapshots"])
        .env_remove("COFFER_PASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no password"), "{}", stderr(&out));

    // Unknown snapshot, missing path to back up, no repository given.
    let out = env.run(&["restore", "deadbeef", "--target", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("deadbeef"), "{}", stderr(&out));
    let out = env.run(&["backup", "/no/such/path"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/no/such/path"), "{}", stderr(&out));
    let out = env
        .cmd(&["snapshots"])
        .env_remove("COFFER_REPOSITORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--repo"), "{}", stderr(&out));
    let out = env.run(&["restore", "latest", "--target", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no snapshots"), "{}", stderr(&out));
    // A rate without a unit is refused, not guessed.
    let out = env.run(&["backup", ".", "--limit-read", "1024"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("50MiB/s"), "{}", stderr(&out));
}

#[test]
fn unreadable_files_give_exit_code_3_and_a_snapshot() {
    let mut env = Env::new();
    if nix_is_root() {
        // As root every file is readable: run as nobody in a world-writable place.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&env.root, std::fs::Permissions::from_mode(0o777)).unwrap();
        env.as_user = Some((65534, 65534));
    }
    env.init();
    let src = env.root.join("src");
    write(&src.join("readable"), b"fine");
    write(&src.join("locked"), b"secret");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(src.join("readable"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = env.run(&["backup", src.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("locked"), "{}", stderr(&out));
    let summary = last_json_line(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(summary["errors"], 1);
    let ls = env.expect(0, &["ls", "latest"]);
    assert_eq!(ls.trim(), "/readable");
}

#[test]
fn a_damaged_pack_makes_restore_exit_3_and_name_the_file() {
    let env = Env::new();
    env.init();
    let src = env.root.join("src");
    write(&src.join("only"), &noise(1, 200_000));
    env.expect(0, &["backup", src.to_str().unwrap()]);
    // Damage every data pack (the tree pack is the one that decodes as a tree).
    for entry in walk_files(&env.repo.join("data")) {
        let mut bytes = std::fs::read(&entry).unwrap();
        if bytes.len() > 2000 {
            bytes[100] ^= 0xff;
            std::fs::write(&entry, bytes).unwrap();
        }
    }
    let target = env.root.join("out");
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("only") && stderr(&out).contains("damaged"),
        "{}",
        stderr(&out)
    );
    assert!(!target.join("only").exists());
}

/// Whether the tests run as root: a new file is owned by the effective uid.
fn nix_is_root() -> bool {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::MetadataExt::uid(&f.as_file().metadata().unwrap()) == 0
}

#[test]
fn check_reports_a_clean_repository_and_names_damage() {
    let env = Env::new();
    env.init();
    let src = env.root.join("src");
    write(&src.join("big"), &noise(1, 300_000));
    env.expect(0, &["backup", src.to_str().unwrap()]);
    let out = env.expect(0, &["check"]);
    assert!(out.contains("no errors were found"), "{out}");
    let out = env.expect(0, &["check", "--read-data"]);
    assert!(
        out.contains("verified") && out.contains("no errors"),
        "{out}"
    );
    let out = env.expect(0, &["check", "--read-data-subset", "1/2"]);
    assert!(out.contains("no errors"), "{out}");
    let v = json(&env.expect(0, &["check", "--json", "--read-data-subset", "50%"]));
    assert_eq!(v["ok"], true);
    let out = env.run(&["check", "--read-data-subset", "3/2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("3/2"), "{}", stderr(&out));

    // A warm cache does not hide damage: check reads the repository itself.
    let cache = env.root.join("cache");
    let cache_arg = cache.to_str().unwrap();
    env.expect(0, &["check", "--cache-dir", cache_arg]);
    env.expect(0, &["snapshots", "--cache-dir", cache_arg]);
    let snap = walk_files(&env.repo.join("snapshots")).pop().unwrap();
    let snap_id = snap.file_name().unwrap().to_str().unwrap().to_string();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&snap)
        .unwrap();
    std::io::Write::write_all(&mut f, b"tail").unwrap();
    drop(f);
    for _ in 0..2 {
        let out = env.run(&["check", "--cache-dir", cache_arg]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(&snap_id), "{}", stderr(&out));
    }
    std::fs::remove_file(&snap).unwrap();

    // Truncate the largest pack: check names it and exits 1.
    let mut packs = walk_files(&env.repo.join("data"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = packs.last().unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let len = std::fs::metadata(victim).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&name) && stderr(&out).contains("problem"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["ok"], false);
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "pack-size"),
        "{v}"
    );
}

#[test]
fn keys_are_listed_added_changed_and_removed() {
    let env = Env::new();
    env.init();
    let new_pw = env.root.join("new-pw");
    std::fs::write(&new_pw, "second password\n").unwrap();
    let kdf = ["--kdf-memory", "64", "--kdf-iterations", "1"];
    let mut args = vec![
        "key",
        "add",
        "--new-password-file",
        new_pw.to_str().unwrap(),
    ];
    args.extend(kdf);
    let out = env.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("weaker than"),
        "a weak key is created with a warning: {}",
        stderr(&out)
    );
    // A cost no reader would accept is refused before anything is written.
    let mut costly = args[..4].to_vec();
    costly.extend(["--kdf-memory", "2097152", "--kdf-iterations", "4"]);
    let out = env.run(&costly);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SPEC.md"), "{}", stderr(&out));
    let list = json(&env.expect(0, &["key", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 2);
    let current = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let text = env.expect(0, &["key", "list"]);
    assert!(
        text.contains(&current[..8]) && text.contains("argon2id"),
        "{text}"
    );

    // The key in use cannot be removed.
    let out = env.run(&["key", "remove", &current[..8]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    // With the second password, remove the first key.
    let out = env
        .cmd(&["key", "remove", &current[..8]])
        .env("COFFER_PASSWORD", "second password")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(env.run(&["snapshots"]).status.code(), Some(12));

    // Change the password of the remaining key.
    let third = env.root.join("third");
    std::fs::write(&third, "third password\n").unwrap();
    let mut args = vec![
        "key",
        "passwd",
        "--new-password-file",
        third.to_str().unwrap(),
    ];
    args.extend(kdf);
    let out = env
        .cmd(&args)
        .env("COFFER_PASSWORD", "second password")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env
        .cmd(&["snapshots"])
        .env("COFFER_PASSWORD", "third password")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env
        .cmd(&["snapshots"])
        .env("COFFER_PASSWORD", "second password")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12));
    let list = json(
        &env.cmd(&["key", "list", "--json"])
            .env("COFFER_PASSWORD", "third password")
            .output()
            .map(|o| String::from_utf8(o.stdout).unwrap())
            .unwrap(),
    );
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_ne!(list[0]["id"], other.as_str());
}

#[test]
fn incremental_backups_stats_and_json_progress() {
    let env = Env::new();
    env.init();
    let src = env.root.join("src");
    let data = noise(1, 400_000);
    write(&src.join("a.bin"), &data);
    write(&src.join("copy.bin"), &data);
    write(&src.join("sparse"), &vec![0u8; 1_000_000]);
    let first = last_json_line(&env.expect(0, &["backup", src.to_str().unwrap(), "--json"]));
    assert_eq!(first["files_new"], 3);
    // Every line of --json output is JSON: status lines, then the summary.
    let out = env.expect(0, &["backup", src.to_str().unwrap(), "--json"]);
    for line in out.lines() {
        let v = json(line);
        assert!(
            v["message_type"] == "status" || v["message_type"] == "summary",
            "{v}"
        );
    }
    let second = last_json_line(&out);
    assert_eq!(
        (
            second["files_new"].as_u64(),
            second["files_unmodified"].as_u64()
        ),
        (Some(0), Some(3))
    );
    let forced =
        last_json_line(&env.expect(0, &["backup", src.to_str().unwrap(), "--json", "--force"]));
    assert_eq!(forced["files_unmodified"], 3);
    assert_eq!(forced["data_blobs"], 0);
    let first_id = first["snapshot_id"].as_str().unwrap();
    let explicit = last_json_line(&env.expect(
        0,
        &[
            "backup",
            src.to_str().unwrap(),
            "--json",
            "--parent",
            &first_id[..8],
        ],
    ));
    let snaps = json(&env.expect(0, &["snapshots", "--json"]));
    let last = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == explicit["snapshot_id"])
        .unwrap();
    assert_eq!(last["parent"], first_id);

    let st = json(&env.expect(0, &["stats", "--json", first_id]));
    assert_eq!(st["snapshots"], 1);
    assert_eq!(st["total_size"], 1_800_000);
    assert!(
        st["raw_size"].as_u64().unwrap() < 450_000,
        "duplicates and zeros are stored once: {st}"
    );
    assert!(st["dedup_ratio"].as_f64().unwrap() > 3.9, "{st}");
    let all = json(&env.expect(0, &["stats", "--json"]));
    assert_eq!(all["snapshots"], 4);
    assert_eq!(all["total_size"], 4 * 1_800_000);
    assert_eq!(all["data_blobs"], st["data_blobs"]);
    let text = env.expect(0, &["stats"]);
    assert!(text.contains("Dedup ratio"), "{text}");
}

#[test]
fn streams_are_stored_only_when_complete_and_dump_gives_them_back() {
    use std::io::Write;
    let env = Env::new();
    env.init();
    let data = noise(1, 700_000);
    let mut child = env
        .cmd(&["backup", "--stdin", "--stdin-filename", "db.sql", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        last_json_line(&String::from_utf8_lossy(&out.stdout))["files_new"],
        1
    );
    assert_eq!(env.expect(0, &["ls", "latest"]).trim(), "/db.sql");
    let dumped = env.run(&["dump", "latest", "db.sql"]);
    assert_eq!(dumped.status.code(), Some(0));
    assert!(dumped.stdout == data, "dump gives back the stream");

    // A command that fails: no snapshot, exit 1, the message says so.
    let before = json(&env.expect(0, &["snapshots", "--json"]))
        .as_array()
        .unwrap()
        .len();
    let out = env.run(&[
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "dump.sql",
        "--",
        "sh",
        "-c",
        "echo partial; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("failed") && stderr(&out).contains("no snapshot"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        json(&env.expect(0, &["snapshots", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        before
    );
    // A command that succeeds.
    env.expect(
        0,
        &[
            "backup",
            "--stdin-from-command",
            "--stdin-filename",
            "dump.sql",
            "--",
            "sh",
            "-c",
            "printf 'CREATE TABLE t;\\n'",
        ],
    );
    assert_eq!(
        env.run(&["dump", "latest", "dump.sql"]).stdout,
        b"CREATE TABLE t;\n"
    );

    // A directory dumps as a tar stream that tar extracts to the same files.
    let src = env.source();
    env.expect(0, &["backup", src.to_str().unwrap()]);
    let tarball = env.run(&["dump", "latest", "/"]);
    assert_eq!(tarball.status.code(), Some(0), "{}", stderr(&tarball));
    let x = env.root.join("x");
    std::fs::create_dir_all(&x).unwrap();
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(&x)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tar.stdin
        .take()
        .unwrap()
        .write_all(&tarball.stdout)
        .unwrap();
    assert!(tar.wait().unwrap().success());
    assert_eq!(
        std::fs::read(x.join("sub/data.bin")).unwrap(),
        std::fs::read(src.join("sub/data.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read_link(x.join("link")).unwrap(),
        Path::new("hello.txt")
    );
    let out = env.run(&["dump", "latest", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
}

#[test]
fn backup_selection_and_restore_filters() {
    let env = Env::new();
    env.init();
    let src = env.root.join("src");
    for f in [
        "app/main.rs",
        "app/debug.log",
        "app/cache/CACHEDIR.TAG",
        "app/cache/blob",
        "data/db.ibd",
        "data/tmp/x",
        "skip/.nobackup",
        "skip/secret",
    ] {
        write(&src.join(f), b"content");
    }
    let mut tag = b"Signature: 8a477f597d28d172789f06886806bc55\n".to_vec();
    tag.extend_from_slice(b"# cache\n");
    write(&src.join("app/cache/CACHEDIR.TAG"), &tag);
    write(&src.join("big.iso"), &vec![1u8; 3 << 20]);
    let patterns = env.root.join("excludes");
    std::fs::write(
        &patterns,
        format!("# comment\n{}/data/tmp\n", src.display()),
    )
    .unwrap();
    let s = src.to_str().unwrap();
    env.expect(
        0,
        &[
            "backup",
            s,
            "--exclude",
            "*.log",
            "--exclude-file",
            patterns.to_str().unwrap(),
            "--exclude-if-present",
            ".nobackup",
            "--exclude-caches",
            "--exclude-larger-than",
            "1MiB",
            "--one-file-system",
        ],
    );
    let ls = env.expect(0, &["ls", "latest"]);
    let got: Vec<&str> = ls.lines().collect();
    assert_eq!(
        got,
        [
            "/app",
            "/app/cache",
            "/app/cache/CACHEDIR.TAG",
            "/app/main.rs",
            "/data",
            "/data/db.ibd"
        ]
    );

    // --files-from adds paths, one per line.
    let list = env.root.join("list");
    std::fs::write(
        &list,
        format!("# what to save\n{s}/app/main.rs\n{s}/data\n"),
    )
    .unwrap();
    env.expect(0, &["backup", "--files-from", list.to_str().unwrap()]);
    let ls = env.expect(0, &["ls", "latest"]);
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        [
            "/data",
            "/data/db.ibd",
            "/data/tmp",
            "/data/tmp/x",
            "/main.rs"
        ]
    );

    // Restore filters: --include keeps matches and their parents, --exclude drops.
    env.expect(0, &["backup", s]);
    let t1 = env.root.join("t1");
    env.expect(
        0,
        &[
            "restore",
            "latest",
            "--target",
            t1.to_str().unwrap(),
            "--include",
            "*.rs",
            "--include",
            "/data",
        ],
    );
    let mut got: Vec<String> = walk_files(&t1)
        .iter()
        .map(|p| p.strip_prefix(&t1).unwrap().display().to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["app/main.rs", "data/db.ibd", "data/tmp/x"]);
    assert!(
        !t1.join("skip").exists(),
        "directories with nothing included are not made"
    );
    let t2 = env.root.join("t2");
    env.expect(
        0,
        &[
            "restore",
            "latest",
            "--target",
            t2.to_str().unwrap(),
            "--exclude",
            "/app",
            "--iexclude",
            "*.ISO",
        ],
    );
    let mut got: Vec<String> = walk_files(&t2)
        .iter()
        .map(|p| p.strip_prefix(&t2).unwrap().display().to_string())
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["data/db.ibd", "data/tmp/x", "skip/.nobackup", "skip/secret"]
    );

    // --plan-limit: the same restore in passes of two blob places; 0 is refused.
    let t3 = env.root.join("t3");
    let t3s = t3.to_str().unwrap();
    env.expect(
        0,
        &["restore", "latest", "--target", t3s, "--plan-limit", "2"],
    );
    for f in ["app/main.rs", "data/db.ibd", "big.iso"] {
        assert_eq!(
            std::fs::read(t3.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    let out = env.run(&["restore", "latest", "--target", t3s, "--plan-limit", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("positive number of blob places"), "{err}");
}

// ---------------------------------------------------------------- many writers, crashes

/// A small random generator; the seed is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new(label: &str) -> Self {
        let seed = std::env::var("COFFER_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{label}: COFFER_TEST_SEED={seed}");
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

impl Env {
    /// Fast protocol timings for the processes of a test.
    fn fast(&self, args: &[&str]) -> Command {
        let mut c = self.cmd(args);
        c.env("COFFER_HEARTBEAT_MS", "100")
            .env("COFFER_STALE_MS", "1000");
        c
    }

    fn check_read_data(&self) {
        let out = self.fast(&["check", "--read-data"]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "check --read-data:\n{}",
            stderr(&out)
        );
    }

    fn snapshot_ids(&self) -> Vec<String> {
        let v = json(&self.expect(0, &["snapshots", "--json"]));
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Writes one generation of a writer's directory: shared files, own files,
/// and `gen-N` whose content is derived from N.
fn generation(dir: &Path, writer: u64, n: u64) {
    let _ = std::fs::remove_dir_all(dir);
    write(&dir.join("shared.bin"), &noise(7, 300_000));
    write(
        &dir.join(format!("own-{writer}.bin")),
        &noise(1000 + writer, 200_000),
    );
    write(
        &dir.join(format!("gen-{n}")),
        &noise(10_000 * writer + n, 150_000),
    );
}

/// A restored generation is exactly what `generation` wrote.
fn verify_generation(dir: &Path) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let writer: u64 = names
        .iter()
        .find_map(|n| n.strip_prefix("own-").and_then(|r| r.strip_suffix(".bin")))
        .unwrap()
        .parse()
        .unwrap();
    let n: u64 = names
        .iter()
        .find_map(|n| n.strip_prefix("gen-"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(std::fs::read(dir.join("shared.bin")).unwrap() == noise(7, 300_000));
    assert!(
        std::fs::read(dir.join(format!("own-{writer}.bin"))).unwrap()
            == noise(1000 + writer, 200_000)
    );
    assert!(
        std::fs::read(dir.join(format!("gen-{n}"))).unwrap() == noise(10_000 * writer + n, 150_000)
    );
}

#[test]
fn four_writers_and_a_prune_loop_lose_nothing() {
    for repetition in 0..2 {
        let env = Env::new();
        env.init();
        let mut rng = Rng::new(&format!("writers repetition {repetition}"));
        let delays: Vec<u64> = (0..16).map(|_| rng.below(300)).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        std::thread::scope(|s| {
            let pruner = {
                let (env, stop) = (&env, stop.clone());
                let pause = delays[15];
                s.spawn(move || {
                    let mut rounds = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) || rounds == 0 {
                        let out = env
                            .fast(&[
                                "forget",
                                "--keep-last",
                                "2",
                                "--prune",
                                "--max-unused",
                                "0%",
                                "--max-wait",
                                "20s",
                            ])
                            .output()
                            .unwrap();
                        assert_eq!(
                            out.status.code(),
                            Some(0),
                            "forget --prune:\n{}",
                            stderr(&out)
                        );
                        rounds += 1;
                        std::thread::sleep(std::time::Duration::from_millis(pause));
                    }
                    rounds
                })
            };
            let writers: Vec<_> = (0..4u64)
                .map(|w| {
                    let env = &env;
                    let delays = &delays;
                    s.spawn(move || {
                        let dir = env.root.join(format!("w{w}"));
                        for n in 0..3u64 {
                            generation(&dir, w, n);
                            std::thread::sleep(std::time::Duration::from_millis(
                                delays[(w * 3 + n) as usize],
                            ));
                            let out = env
                                .fast(&[
                                    "backup",
                                    dir.to_str().unwrap(),
                                    "--host",
                                    &format!("writer-{w}"),
                                ])
                                .output()
                                .unwrap();
                            assert_eq!(out.status.code(), Some(0), "writer {w}:\n{}", stderr(&out));
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(pruner.join().unwrap() >= 1);
        });
        // A last forget and prune with nothing running, then everything must hold.
        env.expect(
            0,
            &[
                "forget",
                "--keep-last",
                "2",
                "--prune",
                "--max-unused",
                "0%",
            ],
        );
        env.check_read_data();
        let ids = env.snapshot_ids();
        assert_eq!(ids.len(), 8, "2 kept per writer: {ids:?}");
        for id in ids {
            let t = env.root.join(format!("restore-{id}"));
            env.expect(0, &["restore", &id, "--target", t.to_str().unwrap()]);
            verify_generation(&t);
        }
    }
}

#[test]
fn backups_killed_at_random_moments_leave_a_checkable_repository_and_resume() {
    let env = Env::new();
    env.expect(0, &INIT_SMALL_PACKS);
    let src = env.root.join("src");
    for i in 0..6u64 {
        write(&src.join(format!("f{i}")), &noise(i + 50, 6_000_000));
    }
    let mut rng = Rng::new("backup kills");
    for _ in 0..6 {
        let mut child = env
            .fast(&["backup", src.to_str().unwrap(), "-q"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.below(700)));
        let _ = child.kill();
        let _ = child.wait();
        let out = env.fast(&["check"]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "check after a kill:\n{}",
            stderr(&out)
        );
    }
    // Kill once more after an index file was written mid-backup; the next
    // backup uploads only what was not indexed.
    let full = {
        let other = Env::new();
        other.expect(0, &INIT_SMALL_PACKS);
        last_json_line(&other.expect(0, &["backup", src.to_str().unwrap(), "--json"]))
            ["data_added_packed"]
            .as_u64()
            .unwrap()
    };
    let resumed = last_json_line(&env.expect(0, &["backup", src.to_str().unwrap(), "--json"]));
    let uploaded = resumed["data_added_packed"].as_u64().unwrap();
    eprintln!("full backup stores {full} bytes; after the kills the backup stored {uploaded}");
    assert!(
        uploaded < full,
        "a resumed backup reuses what the killed ones indexed"
    );
    env.check_read_data();
    let t = env.root.join("out");
    env.expect(0, &["restore", "latest", "--target", t.to_str().unwrap()]);
    for i in 0..6u64 {
        assert!(std::fs::read(t.join(format!("f{i}"))).unwrap() == noise(i + 50, 6_000_000));
    }
}

/// `init` with a weak key and small chunks and packs: many packs from little data.
const INIT_SMALL_PACKS: [&str; 9] = init_args("256KiB");

/// `init` with a weak key (fast tests), 64 KiB chunks and packs of `pack_size`.
/// Bytes stored under `data/`.
fn data_bytes(repo: &Path) -> u64 {
    let data = repo.join("data");
    if !data.exists() {
        return 0;
    }
    walk_files(&data)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

#[test]
fn a_backup_killed_before_it_indexes_its_packs_is_resumed_without_storing_them_again() {
    const PACK: u64 = 256 * 1024;
    let clean = Env::new();
    clean.expect(0, &INIT_SMALL_PACKS);
    let src = clean.root.join("src");
    for i in 0..8u64 {
        write(&src.join(format!("f{i}")), &noise(i + 90, 3_000_000));
    }
    let src_arg = src.to_str().unwrap();
    clean.expect(0, &["backup", src_arg, "-q"]);
    let full = data_bytes(&clean.repo);
    // Kill when this many packs are stored: before the first one completes,
    // then between uploads and the first index file (every 32 packs), then
    // after it.
    for target in [0usize, 1, 6, 20, 40] {
        let env = Env::new();
        env.expect(0, &INIT_SMALL_PACKS);
        let mut child = env.fast(&["backup", src_arg, "-q"]).spawn().unwrap();
        let (data, sessions) = (env.repo.join("data"), env.repo.join("sessions"));
        let count = |d: &Path| if d.exists() { walk_files(d).len() } else { 0 };
        loop {
            let started = count(&sessions) > 0;
            if (started && count(&data) >= target) || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        let left = data_bytes(&env.repo);
        if status.success() {
            eprintln!("target {target}: the backup finished before the kill");
            continue;
        }
        let out = last_json_line(&env.expect(0, &["backup", src_arg, "--json"]));
        let total = data_bytes(&env.repo);
        eprintln!(
            "target {target}: {left} bytes stored before the kill, {total} after the re-run \
             ({} packs adopted); a clean backup stores {full}",
            out["packs_adopted"]
        );
        assert!(
            total <= full + 2 * PACK,
            "killed at {target} packs: the re-run stored {} bytes again ({left} were stored, \
             {total} in all, a clean backup {full})",
            total - full.min(total)
        );
        env.check_read_data();
        let t = env.root.join("out");
        env.expect(0, &["restore", "latest", "--target", t.to_str().unwrap()]);
        for i in 0..8u64 {
            assert!(std::fs::read(t.join(format!("f{i}"))).unwrap() == noise(i + 90, 3_000_000));
        }
    }
}

#[test]
fn sigterm_stops_a_backup_cleanly_and_its_uploads_are_reused() {
    let env = Env::new();
    env.expect(0, &INIT_SMALL_PACKS);
    let src = env.root.join("src");
    for i in 0..8u64 {
        write(&src.join(format!("f{i}")), &noise(i + 70, 5_000_000));
    }
    // 40 MB at 8 MiB/s: about 5 s, so the signal arrives mid-backup.
    let child = env
        .fast(&["backup", src.to_str().unwrap(), "--limit-read", "8MiB/s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until packs are being stored, then ask it to stop.
    let data = env.repo.join("data");
    for _ in 0..200 {
        if data.exists() && !walk_files(&data).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert!(stderr(&out).contains("no snapshot"), "{}", stderr(&out));
    assert!(env.snapshot_ids().is_empty());
    let out = env.fast(&["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        std::fs::read_dir(env.repo.join("index"))
            .map(|d| d.count())
            .unwrap_or(0)
            >= 1,
        "what was uploaded is indexed"
    );
    let sessions = std::fs::read_dir(env.repo.join("sessions"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(sessions, 0, "a clean stop leaves no session");
}

/// SPEC §13, "Leases", scenario 0: a backup frozen (SIGSTOP, as a node
/// freezes a pod) at each moment that matters, while a prune takes it for
/// dead and deletes what it relies on, then thawed (SIGCONT). It must fail
/// saying it lost its session, and leave a repository whose data all
/// checks: no snapshot or index file may point at a deleted pack.
#[test]
fn a_backup_frozen_while_a_prune_takes_it_for_dead_fails_and_loses_nothing() {
    for at in ["session-open", "pack-stored", "snapshot-write"] {
        let env = Env::new();
        env.expect(0, &INIT_SMALL_PACKS);
        let src = env.root.join("src");
        // Packs that nothing needs once their snapshot is forgotten, and
        // that the frozen backup deduplicates against.
        write(&src.join("old.bin"), &noise(7, 1_000_000));
        env.expect(0, &["backup", src.to_str().unwrap()]);
        let old = env.snapshot_ids().remove(0);
        env.expect(0, &["forget", &old]);
        write(&src.join("new.bin"), &noise(8, 600_000));

        let mut backup = env
            .fast(&["backup", src.to_str().unwrap()])
            .env("COFFER_TEST_STOP_AT", at)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_stopped(&mut backup);
        let prune = env
            .fast(&["prune", "--max-unused", "0%", "--json"])
            .output()
            .unwrap();
        assert_eq!(prune.status.code(), Some(0), "{at}: {}", stderr(&prune));
        let p = json(&String::from_utf8_lossy(&prune.stdout));
        assert_eq!(p["stale_sessions_removed"], 1, "{at}: {p}");
        assert_eq!(p["executed"], true, "{at}: {p}");

        let cont = Command::new("kill")
            .args(["-CONT", &backup.id().to_string()])
            .status()
            .unwrap();
        assert!(cont.success());
        let out = backup.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{at}: {err}");
        assert!(err.contains("for dead"), "{at}: {err}");
        assert!(
            env.snapshot_ids().is_empty(),
            "{at}: a snapshot was written"
        );
        env.check_read_data();

        // The next backup stores what was freed again, and restores.
        env.expect(0, &["backup", src.to_str().unwrap()]);
        env.check_read_data();
        let t = env.root.join("restored");
        env.expect(0, &["restore", "latest", "--target", t.to_str().unwrap()]);
        assert_eq!(
            std::fs::read(t.join("old.bin")).unwrap(),
            noise(7, 1_000_000)
        );
        assert_eq!(std::fs::read(t.join("new.bin")).unwrap(), noise(8, 600_000));
    }
}

#[test]
fn prune_killed_at_random_moments_loses_nothing_and_the_next_prune_finishes() {
    let env = Env::new();
    env.expect(0, &INIT_SMALL_PACKS);
    let src = env.root.join("src");
    let mut rng = Rng::new("prune kills");
    for round in 0..4 {
        for n in 0..3u64 {
            generation(&src, round, n);
            env.expect(0, &["backup", src.to_str().unwrap()]);
        }
        env.expect(0, &["forget", "--keep-last", "2"]);
        let mut child = env.fast(&["prune", "--max-unused", "0%"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.below(400)));
        let _ = child.kill();
        let _ = child.wait();
        let out = env.fast(&["check"]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "check after killing prune:\n{}",
            stderr(&out)
        );
    }
    let out = env
        .fast(&["prune", "--max-unused", "0%", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))["executed"],
        true
    );
    env.check_read_data();
    for id in env.snapshot_ids() {
        let t = env.root.join(format!("r-{id}"));
        env.expect(0, &["restore", &id, "--target", t.to_str().unwrap()]);
        verify_generation(&t);
    }
}

#[test]
fn snapshots_filters_tag_diff_find_and_forget() {
    let env = Env::new();
    env.init();
    let src = env.root.join("src");
    write(&src.join("a.txt"), b"one");
    write(&src.join("dir/b.sql"), b"CREATE TABLE b;");
    write(&src.join("gone.txt"), b"bye");
    let s = src.to_str().unwrap();
    let first = last_json_line(&env.expect(
        0,
        &["backup", s, "--json", "--tag", "nightly", "--host", "h1"],
    ))["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    write(&src.join("a.txt"), b"two!");
    std::fs::remove_file(src.join("gone.txt")).unwrap();
    write(&src.join("new/c.sql"), b"CREATE TABLE c;");
    std::fs::set_permissions(
        src.join("dir/b.sql"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let second = last_json_line(&env.expect(0, &["backup", s, "--json", "--host", "h1"]))
        ["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.expect(0, &["backup", s, "--host", "h2"]);

    // snapshots filters.
    let count = |args: &[&str]| {
        let mut a = vec!["snapshots", "--json"];
        a.extend(args);
        json(&env.expect(0, &a)).as_array().unwrap().len()
    };
    assert_eq!(count(&[]), 3);
    assert_eq!(count(&["--host", "h1"]), 2);
    assert_eq!(count(&["--tag", "nightly"]), 1);
    assert_eq!(count(&["--path", s]), 3);
    assert_eq!(count(&["--latest", "1"]), 2, "one per host");

    // diff.
    let d = env.expect(0, &["diff", &first[..8], &second[..8]]);
    let lines: Vec<&str> = d.lines().collect();
    for want in [
        "M    /a.txt",
        "U    /dir/b.sql",
        "-    /gone.txt",
        "+    /new",
        "+    /new/c.sql",
    ] {
        assert!(lines.contains(&want), "{want:?} missing from:\n{d}");
    }
    let dj = json(&env.expect(0, &["diff", &first, &second, "--json"]));
    assert_eq!(dj["changes"].as_array().unwrap().len(), 5, "{dj}");

    // find.
    let f = json(&env.expect(0, &["find", "*.sql", "--json"]));
    let hits: usize = f
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["matches"].as_array().unwrap().len())
        .sum();
    assert_eq!(hits, 1 + 2 + 2, "{f}");
    let f = env.expect(0, &["find", "C.SQL", "-i"]);
    assert!(f.contains("/new/c.sql"), "{f}");

    // tag: add, remove, set; the old snapshot object is replaced.
    env.expect(
        0,
        &["tag", &second[..8], "--add", "keep", "--add", "weekly"],
    );
    assert_eq!(count(&["--tag", "keep"]), 1);
    env.expect(0, &["tag", "--tag", "keep", "--remove", "weekly"]);
    let tagged = json(&env.expect(0, &["snapshots", "--json", "--tag", "keep"]));
    assert_eq!(tagged[0]["tags"], serde_json::json!(["keep"]));
    assert_eq!(count(&[]), 3);

    // forget: dry run changes nothing and explains; a policy removes; explicit ids remove.
    let out = env.expect(
        0,
        &[
            "forget",
            "--keep-last",
            "1",
            "--keep-tag",
            "keep",
            "--dry-run",
        ],
    );
    assert!(
        out.contains("keep") && out.contains("remove") && out.contains("tag keep"),
        "{out}"
    );
    assert_eq!(count(&[]), 3);
    let fj = json(&env.expect(
        0,
        &["forget", "--keep-last", "1", "--keep-tag", "keep", "--json"],
    ));
    assert_eq!(
        fj["groups"].as_array().unwrap().len(),
        2,
        "grouped by host: {fj}"
    );
    assert_eq!(count(&[]), 2);
    let out = env.run(&["forget"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no retention policy") && stderr(&out).contains("--keep-last"),
        "{}",
        stderr(&out)
    );
    let h2 = json(&env.expect(0, &["snapshots", "--json", "--host", "h2"]))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.expect(0, &["forget", &h2[..8], "--prune", "--max-unused", "0%"]);
    assert_eq!(count(&[]), 1);
    env.check_read_data();
}

/// `coffer snapshots --json | head -1`: a reader that goes away ends coffer
/// quietly (SIGPIPE, as other Unix tools), without a panic or a backtrace.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let env = Env::new();
    env.expect(0, &["init"]);
    let src = env.root.join("src");
    common::write(&src.join("a"), b"a");
    for _ in 0..3 {
        env.expect(0, &["backup", src.to_str().unwrap()]);
    }
    common::write(&src.join("big"), &vec![7u8; 4 << 20]);
    env.expect(0, &["backup", src.to_str().unwrap()]);
    // Lines (println!) and raw bytes (dump) alike.
    for args in [&["snapshots", "--json"][..], &["dump", "latest", "big"][..]] {
        let mut child = env
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before coffer writes its first byte.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.signal() == Some(libc::SIGPIPE) || out.status.success(),
            "{args:?}: {:?}: {err}",
            out.status
        );
    }
}

/// Snapshots made by the node agent carry their Kubernetes origin; the
/// command line selects them by it.
#[test]
fn snapshots_and_forget_filter_by_kubernetes_origin() {
    use coffer_engine::backup::{backup, BackupOptions};
    use coffer_engine::format::snapshot::KubernetesOrigin;
    let env = Env::new();
    env.expect(0, &["init"]);
    let src = env.root.join("vol");
    common::write(&src.join("f"), b"data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = opened(&env).await;
        for (cluster, ns, pvc) in [
            ("prod", "team-a", "data-db-0"),
            ("prod", "team-b", "data-db-0"),
            ("dr", "team-a", "logs"),
        ] {
            common::write(&src.join("f"), format!("{cluster}/{ns}/{pvc}").as_bytes());
            let mut o = BackupOptions::new([&src]);
            o.origin = Some(KubernetesOrigin {
                cluster: Some(cluster.into()),
                namespace: Some(ns.into()),
                pvc: Some(pvc.into()),
                pod: Some("db-0".into()),
                ..Default::default()
            });
            backup(repo.clone(), o).await.unwrap();
        }
    });
    env.expect(0, &["backup", src.to_str().unwrap()]);
    let count = |args: &[&str]| {
        let mut all = vec!["snapshots", "--json"];
        all.extend_from_slice(args);
        json(&env.expect(0, &all)).as_array().unwrap().len()
    };
    assert_eq!(count(&[]), 4);
    assert_eq!(count(&["--namespace", "team-a"]), 2);
    assert_eq!(count(&["--cluster", "prod", "--pvc", "data-db-0"]), 2);
    assert_eq!(count(&["--cluster", "prod", "--namespace", "team-b"]), 1);
    assert_eq!(count(&["--pod", "db-0"]), 3);
    assert_eq!(count(&["--namespace", "nobody"]), 0);
    let listed = json(&env.expect(0, &["snapshots", "--json", "--namespace", "team-b"]));
    assert_eq!(listed[0]["origin"]["namespace"], "team-b");
    let team_b = listed[0]["id"].as_str().unwrap().to_string();
    // find, stats and restore take the same filters.
    let found = json(&env.expect(0, &["find", "f", "--json", "--namespace", "team-a"]));
    assert_eq!(found.as_array().unwrap().len(), 2, "{found}");
    let st = json(&env.expect(0, &["stats", "--json", "--cluster", "prod"]));
    assert_eq!(st["snapshots"], 2, "{st}");
    let restored = |args: &[&str]| {
        let target = tempfile::tempdir().unwrap();
        let mut all = vec![
            "restore",
            "latest",
            "--target",
            target.path().to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        env.expect(0, &all);
        let files = walk_files(target.path());
        assert_eq!(files.len(), 1, "{files:?}");
        std::fs::read_to_string(&files[0]).unwrap()
    };
    assert_eq!(
        restored(&["--namespace", "team-b"]),
        "prod/team-b/data-db-0"
    );
    assert_eq!(restored(&["--cluster", "dr"]), "dr/team-a/logs");
    assert_eq!(
        restored(&["--namespace", "team-a", "--pvc", "data-db-0"]),
        "prod/team-a/data-db-0"
    );
    let out = env.run(&[
        "restore",
        "latest",
        "--target",
        "x",
        "--namespace",
        "nobody",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("matches the filter"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["restore", &team_b, "--target", "x", "--namespace", "team-a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not found") && stderr(&out).contains("coffer snapshots"),
        "{}",
        stderr(&out)
    );
    // forget by origin touches only that origin.
    env.expect(0, &["forget", "--keep-last", "1", "--namespace", "team-a"]);
    assert_eq!(count(&["--namespace", "team-a"]), 1);
    assert_eq!(count(&[]), 3, "team-b and the plain backup are untouched");
}

/// restic's `--ignore-inode` and `--ignore-ctime` reach the engine (whose
/// tests show what they read) and the snapshot records the rules used.
#[test]
fn ignore_inode_and_ignore_ctime_are_recorded_in_the_snapshot() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let rules = |extra: &[&str]| {
        let mut args = vec!["backup", src.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let summary = last_json_line(&env.expect(0, &args));
        let id = summary["snapshot_id"].as_str().unwrap().to_string();
        json(&env.expect(0, &["cat", "snapshot", &id]))["ignored_changes"].clone()
    };
    assert_eq!(rules(&[]), serde_json::Value::Null);
    assert_eq!(rules(&["--ignore-ctime"]), serde_json::json!(["ctime"]));
    assert_eq!(
        rules(&["--ignore-inode"]),
        serde_json::json!(["inode", "ctime"])
    );
    let help = env.expect(0, &["backup", "--help"]);
    assert!(help.contains("--ignore-inode") && help.contains("--ignore-ctime"));
}

/// The test repository, opened with the engine.
async fn opened(env: &Env) -> std::sync::Arc<coffer_engine::Repository> {
    let store = coffer_engine::storage::open_location(env.repo.to_str().unwrap(), false).unwrap();
    std::sync::Arc::new(
        coffer_engine::Repository::open(store, b"correct horse")
            .await
            .unwrap(),
    )
}

/// Backs up `dir` as an application snapshot's tree: its contents at the
/// snapshot's root, with the origin's namespace.
fn application_snapshot(env: &Env, dir: &Path, namespace: &str) {
    use coffer_engine::backup::{backup, BackupOptions};
    use coffer_engine::format::snapshot::KubernetesOrigin;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = opened(env).await;
        let mut o = BackupOptions::new([dir]);
        o.record_path = Some("/".into());
        o.origin = Some(KubernetesOrigin {
            cluster: Some("prod".into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        });
        backup(repo, o).await.unwrap();
    });
}

/// `kubectl apply --dry-run=server` accepts `yaml` (into namespace
/// `shop-2`) on the fake API server, and creates nothing. kubectl is
/// `$KUBECTL`, which scripts/test.sh installs and sets; without it the check
/// says it is skipped.
fn server_dry_run(dir: &Path, yaml: &str) {
    let Some(kubectl) = std::env::var_os("KUBECTL") else {
        eprintln!(
            "kubectl apply --dry-run=server: SKIPPED (KUBECTL not set; scripts/test.sh sets it)"
        );
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(coffer_fake_apiserver::FakeServer::start(
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        coffer_fake_apiserver::kubeconfig_yaml(&server.url, "default"),
    )
    .unwrap();
    let kubectl = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(dir.join("kube-cache"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let ns = kubectl(
        &["apply", "--server-side", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop-2}\n",
    );
    assert!(ns.status.success(), "{}", stderr(&ns));
    let out = kubectl(&["apply", "--dry-run=server", "-f", "-"], yaml);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}{}", stderr(&out));
    for object in [
        "configmap/cfg",
        "persistentvolumeclaim/data",
        "deployment.apps/web",
        "service/web",
    ] {
        assert!(
            said.contains(&format!("{object} created (server dry run)")),
            "{said}"
        );
    }
    let get = kubectl(&["get", "-n", "shop-2", "configmap", "cfg"], "");
    assert!(!get.status.success(), "a dry run created nothing");
    drop(server);
}

/// `coffer k8s manifests` prints an application backup's objects from the
/// repository alone: cleaned of the old cluster's fields, in the new
/// namespace, in restore order; a service account's token is left out.
/// A snapshot that is no application backup, or whose file holds another
/// object than its path names, is refused, naming it.
#[test]
fn k8s_manifests_prints_an_application_backups_objects_cleaned_and_in_restore_order() {
    let env = Env::new();
    env.expect(0, &["init"]);
    let app = env.root.join("app");
    let put = |path: &str, v: serde_json::Value| {
        write(
            &app.join(path),
            serde_json::to_string(&v).unwrap().as_bytes(),
        )
    };
    put(
        "application.json",
        serde_json::json!({"namespace": "shop", "objects": []}),
    );
    put(
        "objects/apps/v1/Deployment/web.json",
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "9"},
            "spec": {"replicas": 2}, "status": {"readyReplicas": 2}}),
    );
    put(
        "objects/core/v1/Service/web.json",
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.1.2.3", "clusterIPs": ["10.1.2.3"], "ports": [{"port": 80}]}}),
    );
    put(
        "objects/core/v1/PersistentVolumeClaim/data.json",
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "shop", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u1"}]},
            "spec": {"volumeName": "pv-1", "storageClassName": "gp2"}}),
    );
    put(
        "objects/core/v1/ConfigMap/cfg.json",
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "shop"}, "data": {"a": "b"}}),
    );
    put(
        "objects/core/v1/Secret/app-token.json",
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
            "metadata": {"name": "app-token", "namespace": "shop"}}),
    );
    application_snapshot(&env, &app, "shop");
    let out = env.run(&[
        "k8s",
        "manifests",
        "latest",
        "--namespace",
        "shop-2",
        "--storage-class-map",
        "gp2=fast",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service"
        ],
        "{text}"
    );
    assert!(
        docs.iter().all(|d| d["metadata"]["namespace"] == "shop-2"),
        "{text}"
    );
    assert_eq!(
        docs[2],
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop-2"}, "spec": {"replicas": 2}})
    );
    assert_eq!(
        docs[1]["spec"],
        serde_json::json!({"storageClassName": "fast"}),
        "the old volume goes, the class is mapped"
    );
    assert_eq!(docs[1]["metadata"].get("ownerReferences"), None);
    assert_eq!(
        docs[3]["spec"],
        serde_json::json!({"ports": [{"port": 80}]})
    );
    assert!(
        stderr(&out).contains("left out objects/core/v1/Secret/app-token.json"),
        "{}",
        stderr(&out)
    );
    server_dry_run(&env.root, &text);

    // A file that holds another object than its path names.
    put(
        "objects/core/v1/ConfigMap/cfg.json",
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stolen"}}),
    );
    application_snapshot(&env, &app, "shop");
    let out = env.run(&["k8s", "manifests", "latest"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("objects/core/v1/ConfigMap/cfg.json holds v1 Secret \"stolen\", not the object its path names"),
        "{}",
        stderr(&out)
    );
    // A snapshot of anything else.
    let other = env.root.join("other");
    write(&other.join("f"), b"x");
    env.expect(0, &["backup", other.to_str().unwrap()]);
    let out = env.run(&["k8s", "manifests", "latest"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not an application backup"),
        "{}",
        stderr(&out)
    );
    // A bad mapping is refused before anything is read.
    let out = env.run(&["k8s", "manifests", "latest", "--storage-class-map", "gp2"]);
    assert!(
        stderr(&out).contains("--storage-class-map \"gp2\": expected OLD=NEW"),
        "{}",
        stderr(&out)
    );
}
