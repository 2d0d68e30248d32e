//! Fault injection, for tests: a [`Store`] wrapper that fails, delays or
//! truncates operations on purpose.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;

use super::{DynStore, ObjectInfo, Store, StoreError, StoreErrorKind, WriteMode};

/// What to inject.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Probability that any operation fails with a transient error.
    pub error_rate: f64,
    /// Probability that a read returns fewer bytes than asked (reported as a
    /// transient error by the wrapped store's contract).
    pub truncate_rate: f64,
    /// Probability that a write is stored but its reply is lost (reported as
    /// a transient error): the retry then finds the object present.
    pub lost_reply_rate: f64,
    /// Probability that an operation hangs (for an hour: a dead connection).
    pub hang_rate: f64,
    /// Delay added to every operation.
    pub delay: Duration,
    /// The write with this number (1-based) and every later one fails permanently.
    pub fail_writes_from: Option<u64>,
}

/// A store that misbehaves as [`Faults`] says.
#[derive(Debug)]
pub struct Faulty {
    inner: DynStore,
    faults: Faults,
    writes: AtomicU64,
    rng: Mutex<u64>,
    injected: AtomicU64,
}

impl Faulty {
    /// Wraps `inner`.
    pub fn new(inner: DynStore, faults: Faults, seed: u64) -> Self {
        Faulty {
            inner,
            faults,
            writes: AtomicU64::new(0),
            rng: Mutex::new(seed | 1),
            injected: AtomicU64::new(0),
        }
    }

    /// How many faults were injected.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn roll(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let mut x = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        ((*x >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    async fn before(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        if !self.faults.delay.is_zero() {
            tokio::time::sleep(self.faults.delay).await;
        }
        if self.roll(self.faults.hang_rate) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if self.roll(self.faults.error_rate) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError {
                kind: StoreErrorKind::Transient,
                operation: op,
                key: key.to_string(),
                message: "injected fault: 503 Slow Down".into(),
            });
        }
        Ok(())
    }

    fn write_allowed(&self, key: &str) -> Result<(), StoreError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        match self.faults.fail_writes_from {
            Some(from) if n >= from => Err(StoreError {
                kind: StoreErrorKind::Permanent,
                operation: "writing",
                key: key.to_string(),
                message: "injected fault: 403 Access Denied".into(),
            }),
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Store for Faulty {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.before("reading", key).await?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.before("reading", key).await?;
        let b = self.inner.get_range(key, range).await?;
        if b.len() > 1 && self.roll(self.faults.truncate_rate) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError {
                kind: StoreErrorKind::Transient,
                operation: "reading",
                key: key.to_string(),
                message: format!(
                    "injected fault: connection reset after {} of {} bytes",
                    b.len() / 2,
                    b.len()
                ),
            });
        }
        Ok(b)
    }
    async fn size(&self, key: &str) -> Result<u64, StoreError> {
        self.before("reading", key).await?;
        self.inner.size(key).await
    }
    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> Result<(), StoreError> {
        self.before("writing", key).await?;
        self.write_allowed(key)?;
        self.inner.put(key, data, mode).await?;
        if self.roll(self.faults.lost_reply_rate) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError {
                kind: StoreErrorKind::Transient,
                operation: "writing",
                key: key.to_string(),
                message: "injected fault: connection reset after the request was sent".into(),
            });
        }
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.before("deleting", key).await?;
        self.inner.delete(key).await
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>> {
        if self.roll(self.faults.error_rate) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Box::pin(futures::stream::iter(vec![Err(StoreError {
                kind: StoreErrorKind::Transient,
                operation: "listing",
                key: prefix.to_string(),
                message: "injected fault: 500 Internal Error".into(),
            })]));
        }
        self.inner.list(prefix)
    }
    fn discard_cached(&self, key: &str) {
        self.inner.discard_cached(key);
    }
    async fn conditional_writes(&self) -> Result<bool, StoreError> {
        self.inner.conditional_writes().await
    }
    async fn prepare_container(&self) -> Result<(), StoreError> {
        self.inner.prepare_container().await
    }
}
