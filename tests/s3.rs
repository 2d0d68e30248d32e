//! The whole command-line round trip against a real S3-compatible server:
//! the one `scripts/s3-server.sh` starts (moto in CI; Garage through
//! `scripts/garage-test.sh`). Its endpoint comes in `COFFER_TEST_S3_ENDPOINT`;
//! without it the tests say they are skipped, unless `COFFER_TEST_REQUIRE_S3=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

mod common;
use common::{noise, walk_files, write};

/// A secret no output may ever contain.
const SECRET: &str = "SeCrEt-4f9a0c1d2e3b";

fn endpoint() -> Option<String> {
    match std::env::var("COFFER_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var("COFFER_TEST_REQUIRE_S3").as_deref() != Ok("1"),
                "COFFER_TEST_REQUIRE_S3=1 but COFFER_TEST_S3_ENDPOINT is not set"
            );
            eprintln!("skipped: no S3 server (set COFFER_TEST_S3_ENDPOINT; scripts/test.sh does)");
            None
        }
    }
}

struct S3Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    endpoint: String,
    repo: String,
    outputs: std::cell::RefCell<Vec<String>>,
}

static N: AtomicU32 = AtomicU32::new(0);

impl S3Env {
    fn new(endpoint: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let n = N.fetch_add(1, Ordering::SeqCst);
        // A fresh bucket (created by init) unless the server has a fixed one.
        let repo = match std::env::var("COFFER_TEST_S3_BUCKET") {
            Ok(b) => format!("s3://{b}/cli-{}-{n}", std::process::id()),
            Err(_) => format!("s3://cli-{}-{n}/repo", std::process::id()),
        };
        S3Env {
            root: dir.path().to_path_buf(),
            _dir: dir,
            endpoint,
            repo,
            outputs: Default::default(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.args(args)
            .env("COFFER_REPOSITORY", &self.repo)
            .env("COFFER_PASSWORD", "correct horse")
            .env("COFFER_CACHE_DIR", self.root.join("cache"))
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env_remove("COFFER_PASSWORD_FILE")
            .env_remove("COFFER_PASSWORD_COMMAND")
            .current_dir(&self.root);
        if std::env::var("AWS_SECRET_ACCESS_KEY").is_err() {
            // moto checks no signature: any credentials do, so use a marked one.
            c.env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", SECRET);
        }
        if std::env::var("AWS_REGION").is_err() {
            c.env("AWS_REGION", "us-east-1");
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().unwrap();
        let mut o = self.outputs.borrow_mut();
        o.push(String::from_utf8_lossy(&out.stdout).into_owned());
        o.push(String::from_utf8_lossy(&out.stderr).into_owned());
        out
    }

    fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "coffer {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn assert_no_secret(&self) {
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or(SECRET.into());
        for o in self.outputs.borrow().iter() {
            assert!(!o.contains(&secret), "a credential was printed: {o}");
        }
    }
}

fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = walk_files(dir)
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p.strip_prefix(dir).unwrap().to_path_buf(), data)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn init_backup_restore_check_forget_prune_on_s3() {
    let Some(endpoint) = endpoint() else { return };
    let env = S3Env::new(endpoint);
    let src = env.root.join("src");
    write(&src.join("a.txt"), b"hello, s3\n");
    write(&src.join("big/noise.bin"), &noise(1, 6_000_000));
    write(&src.join("big/copy.bin"), &noise(1, 6_000_000));
    write(&src.join("sub/empty"), b"");

    env.expect(
        0,
        &[
            "init",
            "--kdf-memory",
            "64",
            "--kdf-iterations",
            "1",
            "--pack-size",
            "1MiB",
        ],
    );
    env.expect(1, &["init", "--kdf-memory", "64", "--kdf-iterations", "1"]);
    let first = env.expect(0, &["backup", "src", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(first.lines().last().unwrap()).unwrap();
    assert_eq!(summary["files_new"], 4, "{summary}");

    let target = env.root.join("restored");
    env.expect(
        0,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_eq!(files_under(&src), files_under(&target));

    let check = env.expect(0, &["check", "--read-data"]);
    assert!(check.contains("no errors were found"), "{check}");

    // The cache holds the metadata, verified: a damaged entry is replaced.
    let cached = walk_files(&env.root.join("cache"));
    let snapshot_entry = cached
        .iter()
        .find(|p| p.parent().unwrap().ends_with("snapshots"))
        .expect("the snapshot is cached")
        .clone();
    assert!(cached
        .iter()
        .any(|p| p.to_string_lossy().contains("/index/")));
    let good = std::fs::read(&snapshot_entry).unwrap();
    let mut bad = good.clone();
    bad[10] ^= 0x40;
    std::fs::write(&snapshot_entry, bad).unwrap();
    let listed = env.expect(0, &["snapshots", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&listed)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        std::fs::read(&snapshot_entry).unwrap(),
        good,
        "re-read and re-cached"
    );
    env.expect(0, &["snapshots", "--no-cache", "-vv"]);

    // A second backup after a change; forget the first; prune; all still checks.
    write(&src.join("big/noise.bin"), &noise(2, 6_000_000));
    env.expect(0, &["backup", "src"]);
    let forget = env.expect(0, &["forget", "--keep-last", "1", "--prune"]);
    assert!(forget.contains("delete"), "{forget}");
    let check = env.expect(0, &["check", "--read-data"]);
    assert!(check.contains("no errors were found"), "{check}");
    let target2 = env.root.join("restored2");
    env.expect(
        0,
        &["restore", "latest", "--target", target2.to_str().unwrap()],
    );
    assert_eq!(files_under(&src), files_under(&target2));
    let snaps = env.expect(0, &["snapshots", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&snaps)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    env.assert_no_secret();
}

#[test]
fn store_errors_name_the_object_and_never_print_credentials() {
    let Some(endpoint) = endpoint() else { return };
    let env = S3Env::new(endpoint);

    // A repository that does not exist in an existing bucket: exit 10.
    env.expect(0, &["init", "--kdf-memory", "64", "--kdf-iterations", "1"]);
    let mut missing = S3Env::new(env.endpoint.clone());
    missing.repo = format!("{}-nothing-here", env.repo);
    let out = missing.run(&["snapshots"]);
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing listens: a clear error naming the object, after bounded retries.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut down = S3Env::new(format!("http://127.0.0.1:{dead}"));
    down.repo = env.repo.clone();
    let out = down.run(&["-o", "retries=1", "-o", "connect-timeout=2", "snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("config"), "names the object: {err}");
    assert!(err.contains("after 2 attempts"), "{err}");

    // Bad options and URLs are refused before anything is sent.
    let out = env.run(&["-o", "s3.no_such_key=1", "snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("s3.no_such_key"), "{err}");
    let mut creds_in_url = S3Env::new(env.endpoint.clone());
    creds_in_url.repo = format!("s3://AKIA:{SECRET}@bucket/x");
    let out = creds_in_url.run(&["snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("carry no credentials"), "{err}");
    for e in [&env, &missing, &down] {
        e.assert_no_secret();
    }
    let printed = creds_in_url.outputs.borrow().join("\n");
    assert!(!printed.contains(SECRET), "{printed}");
}

/// `coffer copy` from S3 into a local repository, and from that into a
/// second S3 repository: every snapshot restores byte for byte, and a
/// second copy sends nothing.
#[test]
fn copy_from_s3_to_local_and_from_local_to_s3() {
    let Some(endpoint) = endpoint() else { return };
    let s3 = S3Env::new(endpoint.clone());
    let weak = [
        "--kdf-memory",
        "64",
        "--kdf-iterations",
        "1",
        "--pack-size",
        "1MiB",
    ];
    let init: Vec<&str> = std::iter::once("init").chain(weak).collect();
    s3.expect(0, &init);
    let src = s3.root.join("src");
    write(&src.join("a.txt"), b"hello, copy\n");
    write(&src.join("big.bin"), &noise(5, 3_000_000));
    s3.expect(0, &["backup", "src"]);

    let local = s3.root.join("local");
    let to_local = |args: &[&str]| {
        let mut c = s3.cmd(args);
        c.env("COFFER_REPOSITORY", &local)
            .env("COFFER_PASSWORD", "local password")
            .env("COFFER_FROM_REPOSITORY", &s3.repo)
            .env("COFFER_FROM_PASSWORD", "correct horse");
        let out = c.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    to_local(&init);
    let first: serde_json::Value = serde_json::from_str(&to_local(&["copy", "--json"])).unwrap();
    assert!(first["snapshots"][0]["new"].is_string(), "{first}");
    let again: serde_json::Value = serde_json::from_str(&to_local(&["copy", "--json"])).unwrap();
    assert!(again["snapshots"][0]["already"].is_string(), "{again}");
    let out = s3.root.join("from-local");
    to_local(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(files_under(&src), files_under(&out));

    let s3b = S3Env::new(endpoint);
    let to_s3 = |args: &[&str]| {
        let mut c = s3b.cmd(args);
        c.env("COFFER_FROM_REPOSITORY", &local)
            .env("COFFER_FROM_PASSWORD", "local password");
        let out = c.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    to_s3(&init);
    to_s3(&["copy"]);
    let out2 = s3.root.join("from-s3b");
    to_s3(&["restore", "latest", "--target", out2.to_str().unwrap()]);
    assert_eq!(files_under(&src), files_under(&out2));
    to_s3(&["check", "--read-data"]);
    s3.assert_no_secret();
}
