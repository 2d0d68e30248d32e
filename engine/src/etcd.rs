//! etcd's state, streamed into a snapshot.
//!
//! [`backup_etcd`] asks one etcd member for its v3 Maintenance Snapshot and
//! passes the bytes, as they arrive, to the stream backup
//! ([`crate::backup::backup_stream`]): the snapshot holds them as one file, and
//! nothing is written to a local disk. etcd ends the stream with the SHA-256 of
//! everything before it. That checksum is verified before the snapshot is
//! written, so a stream that breaks, stops short or arrives damaged leaves no
//! snapshot. The stored file is exactly what `etcdctl snapshot save` writes,
//! checksum included, so `etcdutl snapshot restore` (or `etcdctl snapshot
//! restore` for etcd 3.4) accepts it as it is.
//!
//! The snapshot is tagged with the member's revision, member id and cluster id
//! ([`EtcdInfo::tags`]).
//!
//! Only TLS material given as values is used ([`EtcdSource`]); nothing is read
//! from the environment, and keys are never logged.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Certificate, Client, Identity, TlsOptions};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::backup::{backup_stream, BackupOptions, BackupSummary, StreamSource};
use crate::error::{Error, Result};
use crate::repository::Repository;
use crate::storage::chain;

/// The file name etcd's snapshot gets when none is chosen (the one etcd's own
/// documentation uses).
pub const DEFAULT_FILE_NAME: &str = "etcd-snapshot.db";

/// Bytes of the checksum at the end of etcd's snapshot stream.
const CHECKSUM_LEN: usize = 32;

/// Messages from etcd held between the network and the backup: with etcd's
/// 32 KiB messages, well under a megabyte.
const QUEUE_MESSAGES: usize = 16;

/// Which etcd member to snapshot, and how to reach it.
#[derive(Clone)]
pub struct EtcdSource {
    /// `host:port`, `http://host:port` or `https://host:port`. Without a scheme,
    /// TLS is used when any TLS material is given.
    pub endpoint: String,
    /// The CA certificate (PEM) that signed etcd's server certificate. Needed
    /// for TLS.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), for etcd's
    /// `--client-cert-auth`.
    pub client_identity: Option<ClientIdentity>,
    /// Bounds connecting, each request, and any pause in the stream.
    pub timeout: Duration,
    /// The snapshot's file name ([`DEFAULT_FILE_NAME`] by default).
    pub file_name: String,
}

/// A client certificate and its private key, both PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate.
    pub cert_pem: Vec<u8>,
    /// The private key; wiped from memory when dropped.
    pub key_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSource")
            .field("endpoint", &self.endpoint)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<given>"))
            .field(
                "client_identity",
                &self.client_identity.as_ref().map(|_| "<given>"),
            )
            .field("timeout", &self.timeout)
            .field("file_name", &self.file_name)
            .finish()
    }
}

impl EtcdSource {
    /// Plain-text access to `endpoint`, a 30 s timeout and the default file
    /// name.
    pub fn new(endpoint: impl Into<String>) -> Self {
        EtcdSource {
            endpoint: endpoint.into(),
            ca_pem: None,
            client_identity: None,
            timeout: Duration::from_secs(30),
            file_name: DEFAULT_FILE_NAME.to_string(),
        }
    }

    fn uses_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
            || self.ca_pem.is_some()
            || self.client_identity.is_some()
    }

    /// The endpoint as a URL with its scheme.
    fn url(&self) -> Result<String> {
        let tls = self.uses_tls();
        let e = &self.endpoint;
        if e.starts_with("http://") {
            if tls {
                return Err(self.fail(
                    "TLS material was given for an http:// endpoint; use https:// or leave the scheme out",
                ));
            }
            return Ok(e.clone());
        }
        if e.starts_with("https://") {
            return Ok(e.clone());
        }
        if e.is_empty() || e.contains("://") {
            return Err(
                self.fail("not an endpoint: give host:port, http://host:port or https://host:port")
            );
        }
        Ok(format!("{}://{e}", if tls { "https" } else { "http" }))
    }

    fn fail(&self, reason: impl Into<String>) -> Error {
        Error::Etcd {
            endpoint: self.endpoint.clone(),
            reason: reason.into(),
        }
    }
}

/// What etcd said about the state it sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdInfo {
    /// The store's revision when the snapshot began.
    pub revision: i64,
    /// The member that sent the snapshot.
    pub member_id: u64,
    /// Its cluster.
    pub cluster_id: u64,
    /// The member's etcd version.
    pub version: String,
    /// Bytes of the stored file, checksum included.
    pub size: u64,
}

impl EtcdInfo {
    /// The snapshot's tags: `etcd-revision=N`, `etcd-member=<hex>`,
    /// `etcd-cluster=<hex>` (ids in hex, as `etcdctl member list` shows them).
    pub fn tags(&self) -> Vec<String> {
        tags(self.revision, self.member_id, self.cluster_id)
    }
}

fn tags(revision: i64, member_id: u64, cluster_id: u64) -> Vec<String> {
    vec![
        format!("etcd-revision={revision}"),
        format!("etcd-member={member_id:x}"),
        format!("etcd-cluster={cluster_id:x}"),
    ]
}

/// A finished etcd backup.
#[derive(Debug)]
pub struct EtcdBackup {
    /// The backup's summary; the snapshot holds one file.
    pub summary: BackupSummary,
    /// What etcd said about the state.
    pub info: EtcdInfo,
}

/// Streams one etcd member's snapshot into a new snapshot of `repo`, tagged
/// with [`EtcdInfo::tags`] besides `opts.tags`. `opts.paths` is ignored.
///
/// Errors: [`Error::Etcd`] when etcd cannot be reached, refuses, breaks off
/// the stream, or sends a stream whose checksum does not match; no snapshot is
/// written then. Cancelling `opts.cancel`, or dropping the future, stops the
/// stream as it stops any backup.
pub async fn backup_etcd(
    repo: Arc<Repository>,
    src: EtcdSource,
    mut opts: BackupOptions,
) -> Result<EtcdBackup> {
    let url = src.url()?;
    let limit = src.timeout;
    let bounded = |what: &'static str| {
        let src = &src;
        move |_| src.fail(format!("no answer {what} within {}", show(limit)))
    };
    let channel = tokio::time::timeout(limit, connect(&src, &url))
        .await
        .map_err(bounded("to the connection"))??;
    let mut client = Client::from_channel(etcd_client::Channel::Tonic(channel), None)
        .await
        .map_err(|e| src.fail(chain(&e)))?;
    let status = tokio::time::timeout(limit, client.status())
        .await
        .map_err(bounded("to the status request"))?
        .map_err(|e| {
            // With TLS 1.3 a refused client certificate shows only here, as a
            // closed connection.
            let hint = if src.uses_tls() && src.client_identity.is_none() {
                "; if etcd requires client certificates (--client-cert-auth), give one"
            } else {
                ""
            };
            src.fail(format!("status request failed: {}{hint}", chain(&e)))
        })?;
    let header = status
        .header()
        .ok_or_else(|| src.fail("the status reply has no header"))?;
    let (member_id, cluster_id, mut revision) =
        (header.member_id(), header.cluster_id(), header.revision());
    let mut stream = tokio::time::timeout(limit, client.snapshot())
        .await
        .map_err(bounded("to the snapshot request"))?
        .map_err(|e| src.fail(format!("snapshot request failed: {}", chain(&e))))?;
    let first = tokio::time::timeout(limit, stream.message())
        .await
        .map_err(bounded("with the first bytes of the snapshot"))?
        .map_err(|e| src.fail(format!("the snapshot stream failed: {}", chain(&e))))?;
    // Members that fill in the stream's header give the snapshot's own revision.
    if let Some(h) = first.as_ref().and_then(|m| m.header()) {
        if h.revision() > 0 {
            revision = h.revision();
        }
    }
    let tags = tags(revision, member_id, cluster_id);
    opts.tags.extend(tags);

    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let verified: Arc<Mutex<Option<u64>>> = Arc::default();
    let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
    let producer = tokio::spawn(pump(
        stream,
        first.map(|m| m.blob().to_vec()),
        tx,
        limit,
        failure.clone(),
    ));
    let _stop = AbortOnDrop(producer.abort_handle());
    let reader = ChannelReader {
        rx,
        current: Vec::new(),
        pos: 0,
        check: TrailingSha256::default(),
        verified: verified.clone(),
        ended: false,
    };
    let source = StreamSource {
        name: src.file_name.clone(),
        reader: Box::new(reader),
        finish: Box::new(|| Ok(())),
    };
    let result = backup_stream(repo, source, opts).await;
    let summary = match result {
        Ok(s) => s,
        Err(Error::StreamFailed { reason, .. }) => {
            let why = lock(&failure).take().unwrap_or(reason);
            return Err(src.fail(why));
        }
        Err(e) => return Err(e),
    };
    let size = lock(&verified).take().ok_or_else(|| {
        Error::Internal("the etcd stream was stored without being verified".into())
    })?;
    Ok(EtcdBackup {
        summary,
        info: EtcdInfo {
            revision,
            member_id,
            cluster_id,
            version: status.version().to_string(),
            size,
        },
    })
}

async fn connect(src: &EtcdSource, url: &str) -> Result<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| src.fail(format!("not a valid URL: {e}")))?
        .connect_timeout(src.timeout)
        // A member that stops answering mid-stream is noticed.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(src.timeout);
    if src.uses_tls() {
        let Some(ca) = &src.ca_pem else {
            return Err(
                src.fail("TLS needs the CA certificate that signed etcd's server certificate")
            );
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(id) = &src.client_identity {
            tls = tls.identity(Identity::from_pem(&id.cert_pem, &*id.key_pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| src.fail(format!("TLS set-up failed: {}", chain(&e))))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| src.fail(format!("cannot connect: {}", chain(&e))))
}

/// Moves the stream's messages into the queue until it ends, fails or stalls.
async fn pump(
    mut stream: etcd_client::SnapshotStreaming,
    first: Option<Vec<u8>>,
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    limit: Duration,
    failure: Arc<Mutex<Option<String>>>,
) {
    let mut received = 0u64;
    let mut next = first;
    loop {
        let Some(blob) = next.take() else {
            return; // the end: the reader verifies the checksum
        };
        received += blob.len() as u64;
        if tx.send(Ok(blob)).await.is_err() {
            return; // the backup stopped
        }
        next = match tokio::time::timeout(limit, stream.message()).await {
            Ok(Ok(m)) => m.map(|m| m.blob().to_vec()),
            Ok(Err(e)) => {
                let why = format!(
                    "the snapshot stream broke after {received} bytes: {}",
                    chain(&e)
                );
                *lock(&failure) = Some(why.clone());
                let _ = tx.send(Err(io::Error::other(why))).await;
                return;
            }
            Err(_) => {
                let why = format!(
                    "the snapshot stream stalled for {} after {received} bytes",
                    show(limit)
                );
                *lock(&failure) = Some(why.clone());
                let _ = tx.send(Err(io::Error::other(why))).await;
                return;
            }
        };
    }
}

/// The stream's bytes for the backup's thread, checked at the end.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    check: TrailingSha256,
    verified: Arc<Mutex<Option<u64>>>,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.current.len() {
                let n = buf.len().min(self.current.len() - self.pos);
                buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(blob)) => {
                    self.check.update(&blob);
                    self.current = blob;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => {
                    let size = std::mem::take(&mut self.check)
                        .verify()
                        .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
                    *lock(&self.verified) = Some(size);
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
    }
}

/// Checks a stream whose last 32 bytes are the SHA-256 of the bytes before
/// them, as etcd's snapshot stream is, without holding more than 32 bytes.
#[derive(Default)]
pub struct TrailingSha256 {
    hasher: Sha256,
    tail: Vec<u8>,
    len: u64,
}

impl TrailingSha256 {
    /// Takes the stream's next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        if data.len() >= CHECKSUM_LEN {
            self.hasher.update(&self.tail);
            let (body, tail) = data.split_at(data.len() - CHECKSUM_LEN);
            self.hasher.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > CHECKSUM_LEN {
                let extra = self.tail.len() - CHECKSUM_LEN;
                self.hasher.update(&self.tail[..extra]);
                self.tail.drain(..extra);
            }
        }
    }

    /// At the end: the stream's length if its last 32 bytes are the SHA-256 of
    /// the rest, else why not.
    pub fn verify(self) -> std::result::Result<u64, String> {
        if self.tail.len() < CHECKSUM_LEN {
            return Err(format!(
                "the snapshot stream ended after {} bytes, before its SHA-256",
                self.len
            ));
        }
        let digest = self.hasher.finalize();
        if digest.as_slice() != self.tail.as_slice() {
            return Err(format!(
                "the snapshot stream's {} bytes do not match the SHA-256 at their end \
                 (cut short or damaged)",
                self.len
            ));
        }
        Ok(self.len)
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn show(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(body: &[u8]) -> Vec<u8> {
        let mut s = body.to_vec();
        s.extend_from_slice(&Sha256::digest(body));
        s
    }

    fn check_in_pieces(stream: &[u8], piece: usize) -> std::result::Result<u64, String> {
        let mut c = TrailingSha256::default();
        for p in stream.chunks(piece.max(1)) {
            c.update(p);
        }
        c.verify()
    }

    #[test]
    fn a_stream_with_its_checksum_verifies_however_it_is_cut_into_messages() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let stream = stream_of(&body);
        for piece in [1, 5, 31, 32, 33, 4096, 32 * 1024, stream.len()] {
            assert_eq!(
                check_in_pieces(&stream, piece),
                Ok(stream.len() as u64),
                "{piece}"
            );
        }
        assert_eq!(check_in_pieces(&stream_of(b""), 7), Ok(32));
    }

    #[test]
    fn a_truncated_damaged_or_short_stream_fails() {
        let body: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        let stream = stream_of(&body);
        for cut in [1, 31, 32, 33, 1000, stream.len() - 1] {
            let err = check_in_pieces(&stream[..stream.len() - cut], 4096).unwrap_err();
            assert!(err.contains("SHA-256"), "{cut}: {err}");
        }
        let mut flipped = stream.clone();
        flipped[12_345] ^= 0x10;
        let err = check_in_pieces(&flipped, 4096).unwrap_err();
        assert!(err.contains("do not match"), "{err}");
        let err = check_in_pieces(&stream[..20], 3).unwrap_err();
        assert!(err.contains("ended after 20 bytes"), "{err}");
    }

    #[test]
    fn endpoints_get_their_scheme_and_tls_needs_https() {
        let mut s = EtcdSource::new("127.0.0.1:2379");
        assert_eq!(s.url().unwrap(), "http://127.0.0.1:2379");
        s.ca_pem = Some(b"pem".to_vec());
        assert_eq!(s.url().unwrap(), "https://127.0.0.1:2379");
        s.endpoint = "http://10.0.0.1:2379".into();
        let err = s.url().unwrap_err().to_string();
        assert!(
            err.contains("http://10.0.0.1:2379") && err.contains("https://"),
            "{err}"
        );
        s.endpoint = "unix:///run/etcd.sock".into();
        assert!(s.url().is_err());
        let debug = format!(
            "{:?}",
            EtcdSource {
                client_identity: Some(ClientIdentity {
                    cert_pem: b"CERT".to_vec(),
                    key_pem: Zeroizing::new(b"SECRET-KEY".to_vec()),
                }),
                ..EtcdSource::new("x:1")
            }
        );
        assert!(!debug.contains("SECRET-KEY"), "{debug}");
    }

    #[test]
    fn tags_name_the_revision_member_and_cluster_in_hex() {
        assert_eq!(
            tags(42, 0x8e9e05c52164694d, 0xcdf818194e3a8c32),
            [
                "etcd-revision=42",
                "etcd-member=8e9e05c52164694d",
                "etcd-cluster=cdf818194e3a8c32"
            ]
        );
    }
}
