//! Fault injection, for tests: a [`Store`] wrapper that fails, delays or
//! truncates operations on purpose.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Operations held until a test releases them.
    pub holds: Vec<Arc<Hold>>,
}

/// Which operations a [`Hold`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldOp {
    /// Writes.
    Put,
    /// Deletions.
    Delete,
    /// Whole-object reads.
    Get,
}

/// Holds the matching operations (a kind, a key prefix) until released: a
/// stalled store, or a request stuck in a proxy. Deterministic: a test
/// waits until an operation is held ([`Hold::wait_held`]), does what must
/// happen meanwhile, then [`Hold::release`]s it.
#[derive(Debug)]
pub struct Hold {
    op: HoldOp,
    prefix: String,
    /// Matching operations let through before the hold starts holding.
    skip: AtomicU64,
    armed: AtomicBool,
    lands_late: bool,
    held: AtomicU64,
    held_changed: tokio::sync::Notify,
    released: tokio::sync::watch::Sender<bool>,
}

impl Hold {
    /// Holds every `op` on a key that starts with `prefix`, from now on.
    pub fn new(op: HoldOp, prefix: &str) -> Self {
        Hold {
            op,
            prefix: prefix.to_string(),
            skip: AtomicU64::new(0),
            armed: AtomicBool::new(true),
            lands_late: false,
            held: AtomicU64::new(0),
            held_changed: tokio::sync::Notify::new(),
            released: tokio::sync::watch::channel(false).0,
        }
    }

    /// Lets the first `n` matching operations through.
    pub fn after(self, n: u64) -> Self {
        self.skip.store(n, Ordering::SeqCst);
        self
    }

    /// Holds nothing until [`Hold::arm`].
    pub fn disarmed(self) -> Self {
        self.armed.store(false, Ordering::SeqCst);
        self
    }

    /// A held write is carried out when released even if its caller gave up
    /// meanwhile (a request that a proxy delivers late); otherwise a caller
    /// that gives up takes its operation back.
    pub fn lands_late(mut self) -> Self {
        self.lands_late = true;
        self
    }

    /// Starts holding.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Lets every held operation go, and holds nothing more.
    pub fn release(&self) {
        self.armed.store(false, Ordering::SeqCst);
        self.released.send_replace(true);
    }

    /// How many operations were held so far.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Returns once at least `n` operations were held.
    pub async fn wait_held(&self, n: u64) {
        loop {
            let changed = self.held_changed.notified();
            if self.held() >= n {
                return;
            }
            changed.await;
        }
    }

    /// Whether this hold takes `op` on `key` now (counting it if so).
    fn takes(&self, op: HoldOp, key: &str) -> bool {
        if op != self.op || !key.starts_with(&self.prefix) || !self.armed.load(Ordering::SeqCst) {
            return false;
        }
        let skipped = self
            .skip
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if skipped {
            return false;
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        self.held_changed.notify_waiters();
        true
    }

    async fn until_released(mut released: tokio::sync::watch::Receiver<bool>) {
        let _ = released.wait_for(|r| *r).await;
    }
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

    fn holding(&self, op: HoldOp, key: &str) -> Option<&Arc<Hold>> {
        self.faults.holds.iter().find(|h| h.takes(op, key))
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
        if let Some(hold) = self.holding(HoldOp::Get, key) {
            Hold::until_released(hold.released.subscribe()).await;
        }
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
        if let Some(hold) = self.holding(HoldOp::Put, key) {
            let released = Hold::until_released(hold.released.subscribe());
            if hold.lands_late {
                // The request is on its way whatever the caller does now.
                let (inner, key) = (self.inner.clone(), key.to_string());
                let late = tokio::spawn(async move {
                    released.await;
                    inner.put(&key, data, mode).await
                });
                return late.await.unwrap_or_else(|e| {
                    Err(StoreError {
                        kind: StoreErrorKind::Transient,
                        operation: "writing",
                        key: String::new(),
                        message: format!("held write failed: {e}"),
                    })
                });
            }
            released.await;
        }
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
        if let Some(hold) = self.holding(HoldOp::Delete, key) {
            Hold::until_released(hold.released.subscribe()).await;
        }
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
