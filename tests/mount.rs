//! `coffer mount`, through the kernel: the binary mounts a repository with
//! FUSE and the tests read it as any program would. They need root and
//! /dev/fuse; without them they say they are skipped, and with
//! `COFFER_TEST_REQUIRE_FUSE=1` (scripts/test.sh sets it where it can
//! mount) a skip is a failure.

use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{contains, init_args, noise, pack_holding, write, Env};

#[path = "../engine/tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

const INIT: [&str; 9] = init_args("256KiB");
/// How long the mount may take to appear or to answer (a deadline, not a
/// pause: every wait here ends on its event).
const DEADLINE: Duration = Duration::from_secs(120);

fn fuse() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let dev = Path::new("/dev/fuse").exists();
    if root && dev {
        return true;
    }
    let why = if root { "no /dev/fuse" } else { "not root" };
    assert!(
        std::env::var("COFFER_TEST_REQUIRE_FUSE").as_deref() != Ok("1"),
        "COFFER_TEST_REQUIRE_FUSE=1 but the mount tests cannot run: {why}"
    );
    eprintln!("skipped: the mount tests need root and /dev/fuse ({why})");
    false
}

fn mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let at = at.as_os_str().as_bytes();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1).map(str::as_bytes) == Some(at))
}

/// A running `coffer mount`, its stderr lines as they come.
struct Mount {
    child: Option<Child>,
    at: PathBuf,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Mount {
    fn start(cmd: Command, at: &Path) -> Mount {
        Self::start_with(cmd, at, &[])
    }

    /// `coffer mount AT ARGS`.
    fn start_with(mut cmd: Command, at: &Path, args: &[&str]) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let mut child = cmd
            .arg("mount")
            .arg(at)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut m = Mount {
            child: Some(child),
            at: at.to_path_buf(),
            lines,
            log: Vec::new(),
        };
        m.wait_for("mounted on");
        assert!(mounted(at), "not in /proc/self/mounts: {:?}", m.log);
        m
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        loop {
            match self.lines.recv_timeout(DEADLINE) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.log.push(line);
                    if hit {
                        return;
                    }
                }
                Err(e) => panic!("no {needle:?} from coffer mount ({e}): {:?}", self.log),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Ends the mount with `sig`; returns how the process ended, after
    /// checking that the mount is gone.
    fn stop(mut self, sig: &str) -> (ExitStatus, Vec<String>) {
        self.signal(sig);
        let status = self.child.take().unwrap().wait().unwrap();
        self.log.extend(self.lines.try_iter());
        assert!(
            !mounted(&self.at),
            "still mounted after {sig}: {:?}",
            self.log
        );
        (status, std::mem::take(&mut self.log))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        if mounted(&self.at) {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

#[test]
fn every_file_and_every_metadata_field_as_a_restore_shows_them() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    env.expect(0, &INIT);
    let src = env.root.join("src");
    support::kitchen_sink(&src);
    env.expect(
        0,
        &[
            "backup",
            src.to_str().unwrap(),
            "--tag",
            "nightly",
            "--host",
            "db-1",
        ],
    );
    let restored = env.root.join("restored");
    env.expect(
        0,
        &["restore", "latest", "--target", restored.to_str().unwrap()],
    );
    let expected = support::manifest(&restored);

    let mnt = env.root.join("mnt");
    let m = Mount::start(env.cmd(&[]), &mnt);
    let id = env.expect(0, &["snapshots", "--json"]);
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    let short = id[0]["short_id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| id[0]["id"].as_str().unwrap()[..8].to_string());
    for view in [
        mnt.join("snapshots/latest"),
        mnt.join("ids").join(&short),
        mnt.join("hosts/db-1/latest"),
        mnt.join("tags/nightly/latest"),
    ] {
        let view = std::fs::canonicalize(&view).unwrap();
        support::assert_same(&expected, &support::manifest(&view));
    }
    let (status, log) = m.stop("-INT");
    assert!(status.success(), "{status}: {log:?}");
    assert!(log.iter().any(|l| l.contains("unmounted")), "{log:?}");
}

/// `repo-format/testdata/repo/`, the reference repository: every entry of
/// both snapshots as `repo.expected` lists it.
#[test]
fn the_reference_repository_reads_as_its_expected_listing() {
    if !fuse() {
        return;
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("repo-format/testdata");
    let env = Env::new();
    let mnt = env.root.join("mnt");
    let mut cmd = env.cmd(&[]);
    cmd.env("COFFER_REPOSITORY", data.join("repo"))
        .env("COFFER_PASSWORD", "coffer reference password");
    let m = Mount::start(cmd, &mnt);
    let expected = std::fs::read_to_string(data.join("repo.expected")).unwrap();
    let mut blocks = 0;
    for block in expected.split("# ").filter(|b| !b.is_empty()) {
        let (head, body) = block.split_once('\n').unwrap();
        let (tag, id) = head.split_once(' ').unwrap();
        let dir = mnt.join("ids").join(&id[..8]);
        assert_eq!(listing(&dir), body, "snapshot {tag}");
        // The same through the tag's latest link.
        assert_eq!(listing(&mnt.join("tags").join(tag).join("latest")), body);
        blocks += 1;
    }
    assert_eq!(blocks, 2);
    let (status, _) = m.stop("-TERM");
    assert!(status.success());
}

/// The format of `repo.expected`.
fn listing(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap();
    let mut out = String::new();
    for e in walkdir::WalkDir::new(&dir)
        .min_depth(1)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
    {
        let e = e.unwrap();
        let rel = escape(e.path().strip_prefix(&dir).unwrap().as_os_str().as_bytes());
        let ft = e.file_type();
        if ft.is_dir() {
            out += &format!("dir {rel}\n");
        } else if ft.is_symlink() {
            let t = std::fs::read_link(e.path()).unwrap();
            out += &format!("symlink {rel} {}\n", escape(t.as_os_str().as_bytes()));
        } else {
            let bytes = std::fs::read(e.path()).unwrap();
            out += &format!(
                "file {rel} {} {}\n",
                bytes.len(),
                blake3::hash(&bytes).to_hex()
            );
        }
    }
    out
}

fn escape(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_graphic() && c != b'\\' || c == b' ' {
                (c as char).to_string()
            } else {
                format!("\\x{c:02x}")
            }
        })
        .collect()
}

#[test]
fn reads_at_random_offsets_of_a_large_file_return_its_bytes() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    env.expect(0, &INIT);
    let src = env.root.join("src");
    let mut big = noise(3, 16 << 20);
    big[5 << 20..7 << 20].fill(0);
    write(&src.join("big.img"), &big);
    env.expect(0, &["backup", src.to_str().unwrap()]);
    let mnt = env.root.join("mnt");
    // A cache smaller than the file: reads far apart evict each other.
    let m = Mount::start_with(env.cmd(&[]), &mnt, &["--cache-size", "1MiB"]);
    let f = std::fs::File::open(mnt.join("snapshots/latest/big.img")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), big.len() as u64);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = x % big.len() as u64;
        let len = ((x >> 40) % 300_000) as usize + 1;
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off).unwrap();
        let want = &big[off as usize..(off as usize + len).min(big.len())];
        assert_eq!(n, want.len(), "at {off}");
        assert!(
            buf[..n] == *want,
            "bytes at {off}..{} differ",
            off as usize + n
        );
    }
    // Past the end: nothing.
    assert_eq!(f.read_at(&mut [0u8; 10], big.len() as u64).unwrap(), 0);
    drop(f);
    assert!(m.stop("-TERM").0.success());
}

#[test]
fn a_flipped_byte_fails_that_file_with_eio_naming_the_blob_and_nothing_else() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    env.expect(0, &INIT);
    let src = env.root.join("src");
    write(&src.join("a.bin"), &noise(10, 2_000_000));
    let b = noise(11, 2_000_000);
    write(&src.join("b.bin"), &b);
    write(&src.join("c.txt"), b"small\n");
    // One worker: packs hold the files' chunks in order.
    env.expect(0, &["backup", "--threads", "1", src.to_str().unwrap()]);
    let victim = pack_holding(&env, &b, 800_000..1_200_000);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[300] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();

    let mnt = env.root.join("mnt");
    let mut m = Mount::start(env.cmd(&[]), &mnt);
    let snap = mnt.join("snapshots/latest");
    let err = std::fs::read(snap.join("b.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    m.wait_for("cannot be read");
    let line = m.log.last().unwrap().clone();
    assert!(
        line.contains("b.bin") && line.contains("data blob"),
        "{line}"
    );
    assert_eq!(
        std::fs::read(snap.join("a.bin")).unwrap(),
        noise(10, 2_000_000)
    );
    assert_eq!(std::fs::read(snap.join("c.txt")).unwrap(), b"small\n");
    // The start of b.bin, before the damage, still reads.
    let f = std::fs::File::open(snap.join("b.bin")).unwrap();
    let mut head = vec![0u8; 100_000];
    f.read_exact_at(&mut head, 0).unwrap();
    assert!(head == b[..100_000]);
    drop(f);
    assert!(m.stop("-TERM").0.success());
}

#[test]
fn new_snapshots_appear_without_remounting_and_umount_ends_the_process() {
    if !fuse() {
        return;
    }
    let env = Env::new();
    env.expect(0, &INIT);
    let src = env.root.join("src");
    write(&src.join("one.txt"), b"1\n");
    env.expect(0, &["backup", src.to_str().unwrap()]);
    let mnt = env.root.join("mnt");
    let mut m = Mount::start(env.cmd(&[]), &mnt);
    let times = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        times(&mnt.join("snapshots")).len(),
        2,
        "one time and latest"
    );
    write(&src.join("two.txt"), b"2\n");
    env.expect(0, &["backup", src.to_str().unwrap()]);
    m.signal("-HUP");
    m.wait_for("read again: 2 snapshot(s)");
    assert_eq!(times(&mnt.join("snapshots")).len(), 3);
    assert_eq!(
        std::fs::read(mnt.join("snapshots/latest/two.txt")).unwrap(),
        b"2\n"
    );
    assert!(contains(
        std::fs::read_link(mnt.join("snapshots/latest"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"T"
    ));
    // Unmounted from outside: the process notices and ends well.
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    let status = m.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!mounted(&mnt));
}
