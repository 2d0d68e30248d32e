//! Cancellation: a token the caller trips; operations stop at the next safe point
//! and leave the repository as consistent as a finished operation would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cheap, cloneable cancellation flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    cancelled: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder of the token to stop.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
    }

    /// Returns once cancellation is asked for (at once if it was).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.0.cancelled.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// `Err(Cancelled)` once cancellation is asked for.
    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() {
            Err(crate::Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Sleeps for `d`, or less when cancellation is asked for: then `Err(Cancelled)`.
    pub(crate) async fn sleep(&self, d: std::time::Duration) -> crate::Result<()> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            () = self.cancelled() => Err(crate::Error::Cancelled),
        }
    }
}

/// Cancels a token when dropped, unless disarmed: an operation whose future
/// the caller drops stops its blocking and spawned work too.
pub(crate) struct CancelOnDrop(Option<CancelToken>);

impl CancelOnDrop {
    pub(crate) fn new(token: CancelToken) -> Self {
        CancelOnDrop(Some(token))
    }

    /// The operation ended: leave the token as it is.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_ends_when_the_token_is_tripped() {
        let token = CancelToken::new();
        let waiter = {
            let token = token.clone();
            tokio::spawn(async move { token.sleep(std::time::Duration::from_secs(3600)).await })
        };
        tokio::task::yield_now().await;
        token.cancel();
        assert!(matches!(
            waiter.await.unwrap(),
            Err(crate::Error::Cancelled)
        ));
        // Already cancelled: returns at once.
        token.cancelled().await;
        assert!(token.check().is_err());
    }
}
