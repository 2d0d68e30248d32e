//! `coffer backup --etcd` against a real etcd (Debian's etcd-server 3.4),
//! started here on 127.0.0.1 with its data in a temporary directory.
//! `scripts/test.sh` installs etcd and sets `COFFER_TEST_REQUIRE_ETCD=1`;
//! without etcd on the PATH (or in `COFFER_TEST_ETCD_DIR`) the tests say they
//! are skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

mod common;
use common::{init_args, json, noise, stderr, Env};

/// Where `etcd` and `etcdctl` are, or `None` (skip) when they are not
/// installed and not required.
fn etcd_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("COFFER_TEST_ETCD_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?).find(|d| d.join("etcd").is_file())
        });
    match dir {
        Some(d) if d.join("etcd").is_file() && d.join("etcdctl").is_file() => Some(d),
        _ => {
            assert!(
                std::env::var("COFFER_TEST_REQUIRE_ETCD").as_deref() != Ok("1"),
                "COFFER_TEST_REQUIRE_ETCD=1 but etcd and etcdctl are not on the PATH"
            );
            eprintln!("skipped: etcd is not installed (scripts/test.sh installs it)");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// TLS files for etcd's server and one client.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "coffer test etcd CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, stem: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, stem);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &ca).unwrap();
            let (c, k) = (
                dir.join(format!("{stem}.crt")),
                dir.join(format!("{stem}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        let (client_cert, client_key) = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "client");
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        Pki {
            ca: ca_path,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }
}

/// One etcd member on 127.0.0.1, killed when dropped.
struct Etcd {
    child: Child,
    client_port: u16,
    tls: bool,
}

impl Etcd {
    fn start(bin: &Path, data: &Path, name: &str, pki: Option<&Pki>) -> Etcd {
        let (client_port, peer_port) = (free_port(), free_port());
        let scheme = if pki.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(bin.join("etcd"));
        cmd.args(["--name", name, "--logger", "zap", "--data-dir"])
            .arg(data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(p) = pki {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&p.ca)
                .arg("--cert-file")
                .arg(&p.server_cert)
                .arg("--key-file")
                .arg(&p.server_key);
        }
        let mut child = cmd.spawn().expect("start etcd");
        // Ready when it logs that it serves clients; the log is drained to the
        // end so that etcd never blocks on it.
        let (ready_tx, ready_rx) = mpsc::channel();
        let log = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut tail = Vec::new();
            for line in log.lines().map_while(Result::ok) {
                if line.contains("\"msg\":\"serving client traffic") {
                    let _ = ready_tx.send(Ok(()));
                }
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            let _ = ready_tx.send(Err(tail.join("\n")));
        });
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => {}
            other => {
                let _ = child.kill();
                panic!("etcd did not start: {other:?}");
            }
        }
        Etcd {
            child,
            client_port,
            tls: pki.is_some(),
        }
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn client(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap()
}

/// Every key under `prefix` with its value, in key order.
fn read_all(endpoint: &str, prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    runtime().block_on(async {
        let mut c = client(endpoint).await;
        let opts = etcd_client::GetOptions::new().with_prefix();
        let resp = c.get(prefix, Some(opts)).await.unwrap();
        resp.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect()
    })
}

/// The snapshots' tags, one list per snapshot.
fn snapshot_tags(env: &Env) -> Vec<Vec<String>> {
    let list = json(&env.expect(0, &["snapshots", "--json"]));
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["tags"]
                .as_array()
                .map(|t| t.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn a_snapshot_streamed_from_etcd_restores_with_etcdctl_into_an_etcd_holding_every_key() {
    let Some(bin) = etcd_dir() else { return };
    let env = Env::new();
    env.init();
    let etcd = Etcd::start(&bin, &env.root.join("etcd-a"), "a", None);
    let endpoint = etcd.endpoint();
    let revision = runtime().block_on(async {
        let mut c = client(&endpoint).await;
        let mut rev = 0;
        for i in 0..3000u64 {
            let value = noise(i, 50 + (i as usize * 37) % 900);
            rev = c
                .put(format!("/registry/key/{i:05}"), value, None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
        }
        rev
    });
    let before = read_all(&endpoint, "/registry/");
    assert_eq!(before.len(), 3000);

    // Back up by host:port, without a scheme.
    let addr = endpoint.trim_start_matches("http://");
    let out = env.expect(
        0,
        &["backup", "--etcd", addr, "--tag", "cluster-state", "--json"],
    );
    let summary = json(out.lines().last().unwrap());
    assert_eq!(summary["etcd"]["revision"], revision);
    let tags = snapshot_tags(&env);
    assert_eq!(tags.len(), 1);
    assert!(tags[0].contains(&"cluster-state".to_string()), "{tags:?}");
    assert!(
        tags[0].contains(&format!("etcd-revision={revision}")),
        "{tags:?}"
    );
    let member = summary["etcd"]["member_id"].as_str().unwrap();
    assert!(
        tags[0].contains(&format!("etcd-member={member}")),
        "{tags:?}"
    );
    assert!(
        tags[0].iter().any(|t| t.starts_with("etcd-cluster=")),
        "{tags:?}"
    );

    // The stored file is etcd's stream: bolt database + SHA-256, and it is
    // what `etcdctl snapshot save` stores.
    let dumped = env.root.join("snap.db");
    let out = env
        .cmd(&["dump", "latest", "etcd-snapshot.db"])
        .stdout(std::fs::File::create(&dumped).unwrap())
        .status()
        .unwrap();
    assert!(out.success());
    assert_eq!(
        std::fs::metadata(&dumped).unwrap().len(),
        summary["etcd"]["size"].as_u64().unwrap()
    );
    let saved = env.root.join("saved.db");
    let st = Command::new(bin.join("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoint, "snapshot", "save"])
        .arg(&saved)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::metadata(&saved).unwrap().len(),
        std::fs::metadata(&dumped).unwrap().len(),
        "coffer's stream and etcdctl's file differ in size"
    );
    drop(etcd);

    // etcdctl checks the SHA-256 at the end as it restores.
    let peer = format!("http://127.0.0.1:{}", free_port());
    let restored = env.root.join("etcd-b");
    let out = Command::new(bin.join("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&dumped)
        .arg("--data-dir")
        .arg(&restored)
        .args(["--name", "b", "--initial-cluster", &format!("b={peer}")])
        .args(["--initial-advertise-peer-urls", &peer])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl snapshot restore: {}",
        stderr(&out)
    );
    let second = Etcd::start(&bin, &restored, "b", None);
    let after = read_all(&second.endpoint(), "/registry/");
    assert_eq!(after.len(), before.len());
    assert!(after == before, "a key differs after the restore");
}

#[test]
fn tls_with_a_client_certificate_works_and_without_one_fails_naming_the_endpoint() {
    let Some(bin) = etcd_dir() else { return };
    let env = Env::new();
    env.init();
    let pki = Pki::generate(&env.root);
    let etcd = Etcd::start(&bin, &env.root.join("etcd-tls"), "tls", Some(&pki));
    let endpoint = etcd.endpoint();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));

    let with_cert = |extra: &str| -> Vec<String> {
        [
            "backup",
            "--etcd",
            &endpoint,
            "--etcd-cacert",
            &ca,
            "--etcd-cert",
            &cert,
            "--etcd-key",
            &key,
            extra,
        ]
        .map(String::from)
        .to_vec()
    };
    let args = with_cert("-v");
    let out = env.expect(0, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("verified by its SHA-256"), "{out}");
    assert_eq!(snapshot_tags(&env).len(), 1);

    // Without the client certificate etcd refuses the handshake.
    let out = env.run(&[
        "backup",
        "--etcd",
        &endpoint,
        "--etcd-cacert",
        &ca,
        "--etcd-timeout",
        "5s",
    ]);
    let err = stderr(&out);
    eprintln!("without a client certificate: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("etcd at {endpoint}")), "{err}");
    assert!(err.contains("client certificate"), "{err}");
    assert!(err.contains("no snapshot was written"), "{err}");
    // TLS without the CA is refused before connecting, naming the option.
    let out = env.run(&["backup", "--etcd", &endpoint]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--etcd-cacert") && err.contains(&endpoint),
        "{err}"
    );
    assert_eq!(snapshot_tags(&env).len(), 1);

    // The CronJob's own script (deploy/etcd-backup/cronjob.yaml), with
    // kubeadm's certificate directory here: it backs up and applies the
    // retention to this node's etcd snapshots only.
    let pki_dir = env.root.join("pki-etcd");
    std::fs::create_dir_all(&pki_dir).unwrap();
    for (from, to) in [
        (&pki.ca, "ca.crt"),
        (&pki.client_cert, "healthcheck-client.crt"),
        (&pki.client_key, "healthcheck-client.key"),
    ] {
        std::fs::copy(from, pki_dir.join(to)).unwrap();
    }
    let script = cronjob_script()
        .replace("/etc/kubernetes/pki/etcd", pki_dir.to_str().unwrap())
        .replace("https://127.0.0.1:2379", &endpoint);
    std::fs::write(env.root.join("password"), "correct horse\n").unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_coffer")).parent().unwrap();
    for _ in 0..2 {
        let out = Command::new("/bin/sh")
            .args(["-c", &script])
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .env("NODE_NAME", "cp-1")
            .env("COFFER_REPOSITORY", &env.repo)
            .env_remove("COFFER_PASSWORD")
            .env("COFFER_PASSWORD_FILE", env.root.join("password"))
            .env("COFFER_CACHE_DIR", env.root.join("cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the CronJob's script: {}",
            stderr(&out)
        );
    }
    let tags = snapshot_tags(&env);
    assert_eq!(tags.len(), 2, "{tags:?}");
    assert_eq!(
        tags.iter()
            .filter(|t| t.contains(&"etcd".to_string()))
            .count(),
        1,
        "keep-hourly keeps one snapshot of this hour: {tags:?}"
    );

    // The key never reaches the output, even verbose.
    let key_text = std::fs::read_to_string(&pki.client_key).unwrap();
    let secret_line = key_text.lines().nth(1).unwrap();
    let args = with_cert("-vv");
    let verbose = env.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&verbose.stdout),
        stderr(&verbose)
    );
    assert!(!all.contains(secret_line), "the client key was printed");
}

/// The shell script the etcd CronJob runs: its folded `args` entry.
fn cronjob_script() -> String {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/etcd-backup/cronjob.yaml"),
    )
    .unwrap();
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "- >-");
    let marker = lines.next().expect("the CronJob has a folded script");
    let indent = marker.len() - marker.trim_start().len();
    let script: Vec<&str> = lines
        .take_while(|l| l.len() - l.trim_start().len() > indent)
        .map(str::trim)
        .collect();
    assert!(script.len() > 3, "{script:?}");
    script.join(" ")
}

/// Forwards one port to another and counts the bytes coming back; `cut` is
/// called once when more than `after` bytes have come back.
fn proxy(to: u16, after: u64, cut: impl FnOnce() + Send + 'static) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let back = Arc::new(AtomicU64::new(0));
    let counted = back.clone();
    let cut = Arc::new(Mutex::new(Some(cut)));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                return;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
            });
            let (counted, cut) = (counted.clone(), cut.clone());
            let (mut from, mut to_client) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if to_client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    if counted.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > after {
                        if let Some(f) = cut.lock().unwrap().take() {
                            f();
                        }
                        break;
                    }
                }
                let _ = to_client.shutdown(std::net::Shutdown::Both);
                let _ = from.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, back)
}

#[test]
fn an_etcd_stopped_mid_stream_leaves_no_snapshot_and_exit_status_1() {
    let Some(bin) = etcd_dir() else { return };
    let env = Env::new();
    env.init();
    let etcd = Etcd::start(&bin, &env.root.join("etcd-cut"), "cut", None);
    runtime().block_on(async {
        let mut c = client(&etcd.endpoint()).await;
        for i in 0..24u64 {
            c.put(format!("big/{i}"), noise(i, 1 << 20), None)
                .await
                .unwrap();
        }
    });
    // etcd is killed once 2 MB of its ~25 MB snapshot have come back.
    let pid = etcd.child.id() as i32;
    let (port, back) = proxy(etcd.client_port, 2_000_000, move || {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let endpoint = format!("127.0.0.1:{port}");
    let out = env.run(&["backup", "--etcd", &endpoint, "--etcd-timeout", "10s"]);
    let err = stderr(&out);
    eprintln!("cut mid-stream: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(back.load(Ordering::SeqCst) > 2_000_000);
    assert!(err.contains(&format!("etcd at {endpoint}")), "{err}");
    assert!(err.contains("no snapshot was written"), "{err}");
    assert!(snapshot_tags(&env).is_empty(), "a snapshot was written");
    // The repository is sound, and the next backup works as usual.
    env.expect(0, &["check"]);
}

#[test]
fn a_wrong_endpoint_fails_with_a_clear_error_within_the_timeout() {
    let env = Env::new();
    env.expect(0, &init_args("1MiB"));
    // Nothing listens there.
    let closed = format!("127.0.0.1:{}", free_port());
    let out = env.run(&["backup", "--etcd", &closed, "--etcd-timeout", "3s"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("etcd at {closed}")), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    // Something listens there but never answers: the timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
    let out = env.run(&["backup", "--etcd", &addr, "--etcd-timeout", "1s"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("etcd at {addr}")) && err.contains("no answer"),
        "{err}"
    );
    // Not an endpoint at all.
    let out = env.run(&["backup", "--etcd", "unix:///run/etcd.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not an endpoint"), "{}", stderr(&out));
    assert!(json(&env.expect(0, &["snapshots", "--json"]))
        .as_array()
        .unwrap()
        .is_empty());
}
