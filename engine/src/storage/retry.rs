//! Retries: a [`Store`] wrapper that repeats operations that failed with a
//! transient error, with exponential backoff and full jitter, and bounds the
//! number of requests in flight.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::{DynStore, ObjectInfo, Store, StoreError, StoreErrorKind, WriteMode};

/// How a [`Retrying`] store retries.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included).
    pub attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub initial: Duration,
    /// The longest backoff.
    pub max: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// An attempt that takes longer than this is abandoned and counts as a
    /// transient failure (a backstop behind the HTTP client's own timeouts,
    /// for a connection that hangs).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, 100 ms doubling to 10 s, 16 requests at once, 10 minutes
    /// at most per attempt.
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            concurrency: 16,
            attempt_timeout: Duration::from_secs(600),
        }
    }
}

/// Retries transient failures of an inner store.
#[derive(Debug)]
pub struct Retrying {
    inner: DynStore,
    policy: RetryPolicy,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Retrying {
    /// Wraps `inner`.
    pub fn new(inner: DynStore, policy: RetryPolicy) -> Self {
        Retrying {
            inner,
            permits: Arc::new(tokio::sync::Semaphore::new(policy.concurrency.max(1))),
            policy,
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.policy.initial.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.policy.max);
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        // Full jitter: a uniform share of the capped backoff.
        cap.mul_f64(f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX))
    }

    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        key: &str,
        op: F,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let _permit = self.permits.acquire().await;
        let mut attempt = 0;
        loop {
            let limit = self.policy.attempt_timeout;
            let outcome = match tokio::time::timeout(limit, op()).await {
                Ok(r) => r,
                Err(_) => Err(StoreError {
                    kind: StoreErrorKind::Transient,
                    operation,
                    key: key.to_string(),
                    message: format!("no answer within {limit:?}"),
                }),
            };
            match outcome {
                Err(e)
                    if e.kind == StoreErrorKind::Transient
                        && attempt + 1 < self.policy.attempts =>
                {
                    tracing::debug!("retrying after: {e}");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(mut e) if e.kind == StoreErrorKind::Transient => {
                    e.message = format!("{} (after {} attempts)", e.message, attempt + 1);
                    return Err(e);
                }
                other => return other,
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for Retrying {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.run("reading", key, || self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.run("reading", key, || self.inner.get_range(key, range.clone()))
            .await
    }
    async fn size(&self, key: &str) -> Result<u64, StoreError> {
        self.run("reading", key, || self.inner.size(key)).await
    }
    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> Result<(), StoreError> {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let r = self
            .run("writing", key, || {
                tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.inner.put(key, data.clone(), mode)
            })
            .await;
        match r {
            // A create-if-absent write that failed on the way back may have
            // been stored: if what is there now is what we wrote, it was ours.
            Err(e)
                if e.kind == StoreErrorKind::AlreadyExists
                    && tries.load(std::sync::atomic::Ordering::Relaxed) > 1 =>
            {
                match self.get(key).await {
                    Ok(stored) if stored == data => Ok(()),
                    _ => Err(e),
                }
            }
            other => other,
        }
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run("deleting", key, || self.inner.delete(key)).await
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxStream<'a, Result<ObjectInfo, StoreError>> {
        // A listing is retried as a whole: it is collected, then replayed.
        let listed = async move {
            self.run("listing", prefix, || {
                self.inner.list(prefix).try_collect::<Vec<_>>()
            })
            .await
        };
        futures::stream::once(listed)
            .map_ok(|v| futures::stream::iter(v.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }
    async fn get_tree_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.run("reading", key, || {
            self.inner.get_tree_range(key, range.clone())
        })
        .await
    }
    fn discard_cached(&self, key: &str) {
        self.inner.discard_cached(key);
    }
    async fn conditional_writes(&self) -> Result<bool, StoreError> {
        self.run("probing", "probe/", || self.inner.conditional_writes())
            .await
    }
    async fn prepare_container(&self) -> Result<(), StoreError> {
        self.run("preparing", "the bucket", || self.inner.prepare_container())
            .await
    }
    fn staging_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.staging_dir()
    }
    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        mode: WriteMode,
    ) -> Result<(), StoreError> {
        if self.inner.staging_dir().is_some() {
            // Staged next to the store: storing is a link, nothing to retry.
            return self.inner.put_file(key, path, mode).await;
        }
        super::put_staged(self, key, path, mode).await
    }
}
