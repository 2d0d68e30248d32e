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
    /// A child token is also cancelled when its parent is.
    parent: Option<CancelToken>,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new token that is cancelled when this one is, and may also be
    /// cancelled on its own (without cancelling this one): an operation
    /// that must stop for its own reasons as well as for its caller's.
    pub fn child(&self) -> Self {
        CancelToken(Arc::new(Inner {
            parent: Some(self.clone()),
            ..Inner::default()
        }))
    }

    /// Asks every holder of the token to stop.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Relaxed)
            || self.0.parent.as_ref().is_some_and(|p| p.is_cancelled())
    }

    /// Returns once cancellation is asked for (at once if it was).
    pub async fn cancelled(&self) {
        match &self.0.parent {
            None => self.own().await,
            Some(parent) => {
                let parent = Box::pin(parent.cancelled());
                tokio::select! {
                    () = self.own() => {}
                    () = parent => {}
                }
            }
        }
    }

    /// Returns once this token itself is cancelled.
    async fn own(&self) {
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

    #[tokio::test]
    async fn a_child_stops_with_its_parent_but_not_the_other_way_round() {
        let parent = CancelToken::new();
        let child = parent.child();
        child.cancel();
        assert!(child.is_cancelled());
        assert!(!parent.is_cancelled());

        let child = parent.child();
        let waiter = {
            let child = child.clone();
            tokio::spawn(async move { child.cancelled().await })
        };
        tokio::task::yield_now().await;
        parent.cancel();
        waiter.await.unwrap();
        assert!(child.is_cancelled());
    }
}
