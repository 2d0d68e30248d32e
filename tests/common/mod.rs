//! Helpers shared by the command-line integration tests (`tests/cli.rs`,
//! `tests/s3.rs`).

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Writes a file, making its parent directories.
pub fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Every file below `dir`, recursively (not directories).
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Incompressible bytes (xorshift), the same for the same seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A temporary directory with a repository path, and the `coffer` binary to
/// run in it.
pub struct Env {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub repo: PathBuf,
    /// Run commands as this uid/gid (to drop root for unreadable-file tests).
    pub as_user: Option<(u32, u32)>,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Env {
            repo: root.join("repo"),
            root,
            _dir: dir,
            as_user: None,
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coffer"));
        c.args(args)
            .env("COFFER_REPOSITORY", &self.repo)
            .env("COFFER_PASSWORD", "correct horse")
            .env_remove("COFFER_PASSWORD_FILE")
            .env_remove("COFFER_PASSWORD_COMMAND")
            .current_dir(&self.root);
        if let Some((uid, gid)) = self.as_user {
            c.uid(uid).gid(gid);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and expects exit status `code`; returns stdout.
    pub fn expect(&self, code: i32, args: &[&str]) -> String {
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

    pub fn init(&self) {
        self.expect(0, &init_args("1MiB"));
    }

    pub fn source(&self) -> PathBuf {
        let src = self.root.join("src");
        write(&src.join("hello.txt"), b"hello, coffer\n");
        write(
            &src.join("sub/data.bin"),
            &(0..300_000u32)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<_>>(),
        );
        write(&src.join("sub/empty"), b"");
        std::os::unix::fs::symlink("hello.txt", src.join("link")).unwrap();
        src
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

pub fn last_json_line(s: &str) -> serde_json::Value {
    json(s.lines().last().unwrap_or_default())
}

/// `coffer init` with a cheap key and small chunks and packs.
pub const fn init_args(pack_size: &'static str) -> [&'static str; 9] {
    [
        "init",
        "--kdf-memory",
        "64",
        "--kdf-iterations",
        "1",
        "--chunk-size",
        "64KiB",
        "--pack-size",
        pack_size,
    ]
}

/// Waits until process `pid` is stopped (state `T` in /proc), as it is
/// once it raised SIGSTOP. Polls: the event has no other signal.
pub fn wait_stopped(child: &mut std::process::Child) {
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat.rsplit(')').next().unwrap().trim_start().chars().next();
        if state == Some('T') {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the process ended ({status}) before it stopped");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The data pack of `env`'s repository holding a blob whose first 64 bytes
/// occur in `file[piece]`, and no data of anything but `file`: damaging it
/// loses a piece of that file and of no other, however the backup's
/// workers interleaved the files' chunks in packs.
pub fn pack_holding(env: &Env, file: &[u8], piece: std::ops::Range<usize>) -> PathBuf {
    let starts = |blob: &[u8], hay: &[u8]| blob.len() >= 64 && contains(hay, &blob[..64]);
    for pack in walk_files(&env.repo.join("data")) {
        let id = pack.file_name().unwrap().to_str().unwrap();
        let header = json(&env.expect(0, &["cat", "pack", id]));
        let blobs: Vec<Vec<u8>> = header["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "data")
            .map(|b| env.run(&["cat", "blob", b["id"].as_str().unwrap()]).stdout)
            .collect();
        if blobs.iter().any(|b| starts(b, &file[piece.clone()]))
            && blobs.iter().all(|b| starts(b, file))
        {
            return pack;
        }
    }
    panic!("no pack holds the piece alone");
}
