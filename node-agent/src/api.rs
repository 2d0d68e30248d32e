//! Talking to the API server: the errors a reconciler returns, and creating
//! and deleting objects with 404, 409 and refusals classified in one place.

use kube::api::{Api, DeleteParams, PostParams};
use kube::Resource;

/// A status the API server did not take, after every try.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the status of {kind} {ns}/{name}; the API server failed every try")]
pub struct NotWritten {
    /// The run's kind.
    pub kind: String,
    /// Its namespace.
    pub ns: String,
    /// Its name.
    pub name: String,
}

/// Why a reconcile step failed (it is tried again).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// An object could not be built.
    #[error("{0}")]
    Invalid(String),
    /// The API server refused to create an object, for a reason that trying
    /// again does not change (admission, quota, validation, permissions):
    /// the run fails with it rather than waiting for ever.
    #[error("{0}")]
    Refused(String),
    /// The API server refused to create an object for an exhausted quota,
    /// which frees up as other runs' objects go: a run waits up to
    /// `--prepare-timeout` from its creation, then fails with it.
    #[error("{0}")]
    Quota(String),
    /// A run's status could not be written (the API server failed every
    /// try); the step is tried again.
    #[error(transparent)]
    Status(#[from] crate::api::NotWritten),
}

pub(crate) fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// Creates `obj`; one that exists already is fine (a step done before a
/// restart). A refusal that trying again will not change
/// ([`refused_for_good`]) is [`Error::Refused`].
pub(crate) async fn create<K>(api: &Api<K>, obj: &K, what: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        // RBAC's refusal (not admission's, not a quota's): not opted in.
        Err(kube::Error::Api(e))
            if e.code == 403 && e.message.contains("cannot create resource") =>
        {
            let ns = obj.meta().namespace.clone().unwrap_or_default();
            Err(Error::Refused(format!(
                "the API server refused to create {what}: {} (403); if namespace {ns} has not \
                 allowed coffer to work there, its admin opts it in: {}",
                e.message,
                crate::policy::opt_in_command(&ns)
            )))
        }
        Err(kube::Error::Api(e)) if refused_for_good(&e) => {
            let why = format!(
                "the API server refused to create {what}: {} ({}, {}); \
                 check the admission policies, quotas and the controller's RBAC in that namespace",
                e.message, e.code, e.reason
            );
            Err(if e.message.contains("exceeded quota") {
                Error::Quota(why)
            } else {
                Error::Refused(why)
            })
        }
        Err(e) => Err(kube_err(format!("creating {what}"))(e)),
    }
}

/// Whether trying again cannot change a refusal: a 4xx, except a conflict,
/// throttling and an expired credential.
fn refused_for_good(e: &kube::core::Status) -> bool {
    (400..500).contains(&e.code) && !matches!(e.code, 401 | 409 | 429)
}

/// Deletes `name` unless it is gone or going; returns whether it was still
/// there (a cleanup step then waits for it to go).
pub(crate) async fn delete_present<K>(api: &Api<K>, name: &str, what: &str) -> Result<bool, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(o) = api
        .get_opt(name)
        .await
        .map_err(kube_err(format!("reading {what}")))?
    else {
        return Ok(false);
    };
    if o.meta().deletion_timestamp.is_none() {
        delete(api, name, what).await?;
    }
    Ok(true)
}

pub(crate) async fn delete<K>(api: &Api<K>, name: &str, what: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            tracing::info!("deleted {what}");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        // A namespace that opted out since: the object is owned by its
        // run, and Kubernetes' garbage collector takes it with the run.
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::warn!(
                "cannot delete {what} ({}); leaving it to the garbage collector",
                e.message
            );
            Ok(())
        }
        Err(e) => Err(kube_err(format!("deleting {what}"))(e)),
    }
}

/// Whether `e` is the API server answering with HTTP status `code`.
pub(crate) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}
