//! What every reconciler shares, in the node agent and the controller alike:
//! objects that do not parse are skipped, errors are logged where they
//! happen and the object is looked at again a little later.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::api::Error;
use crate::lenient::Lenient;

/// A reconcile's error is logged where it happens (the error policy); the
/// stream's copy is for debugging.
pub(crate) async fn log_error<T, E: std::fmt::Display>(r: Result<T, E>) {
    if let Err(e) = r {
        tracing::debug!("reconcile: {e}");
    }
}

/// A reconciler over the objects that parse: one that does not is logged
/// (by [`Lenient::object`]) and left until it changes.
pub(crate) fn parsed<K, C, F, Fut>(
    reconcile: F,
) -> impl FnMut(Arc<Lenient<K>>, Arc<C>) -> futures::future::BoxFuture<'static, Result<Action, Error>>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<C>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        let reconcile = reconcile.clone();
        Box::pin(async move {
            match obj.object() {
                Some(k) => reconcile(Arc::new(k.clone()), ctx).await,
                None => Ok(Action::await_change()),
            }
        })
    }
}

/// `policy` for objects that parse (others are never reconciled).
pub(crate) fn parsed_policy<K: Resource<DynamicType = ()> + Clone, C>(
    policy: fn(Arc<K>, &Error, Arc<C>) -> Action,
) -> impl Fn(Arc<Lenient<K>>, &Error, Arc<C>) -> Action {
    move |obj, e, ctx| match &obj.parsed {
        Ok(k) => policy(Arc::new(k.clone()), e, ctx),
        Err(_) => Action::await_change(),
    }
}

/// The one error policy: the error is logged with the object's kind,
/// namespace and name, and the object is looked at again in 5 s.
pub(crate) fn retry_policy<K: Resource<DynamicType = ()>, C>(
    obj: Arc<K>,
    e: &Error,
    _: Arc<C>,
) -> Action {
    tracing::warn!(
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any(),
        "{} {e}; trying again",
        K::kind(&())
    );
    Action::requeue(Duration::from_secs(5))
}
