//! Network stores: S3 and S3-compatible stores, Google Cloud Storage, Azure
//! Blob Storage, configured the way their users already configure them
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*` environment variables) plus `--option`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

use super::object::{ObjectStoreBackend, Remote};
use super::{RetryPolicy, StoreError, StoreErrorKind};

/// Objects at least this large are uploaded in parts (packs are 16 MiB by default).
const MULTIPART_THRESHOLD: usize = 32 * 1024 * 1024;
/// One part; real S3 refuses parts under 5 MiB except the last.
const PART_SIZE: usize = 16 * 1024 * 1024;

fn invalid(msg: String) -> crate::Error {
    crate::Error::InvalidArgument(msg)
}

/// Settings every network store shares.
struct Common {
    client: Vec<(ClientConfigKey, String)>,
    policy: RetryPolicy,
}

fn duration(key: &str, value: &str) -> crate::Result<String> {
    let secs = value.strip_suffix('s').unwrap_or(value);
    match secs.parse::<f64>() {
        Ok(s) if s > 0.0 && s < 86_400.0 => Ok(format!("{}ms", (s * 1000.0) as u64)),
        _ => Err(invalid(format!(
            "option {key}={value}: give seconds, such as 60 or 60s"
        ))),
    }
}

/// Splits `options` into the shared settings and the backend's own keys
/// (those with the scheme's prefix, prefix removed).
fn split_options(
    scheme: &str,
    options: &[(String, String)],
) -> crate::Result<(Common, Vec<(String, String)>)> {
    let mut client = vec![
        (ClientConfigKey::Timeout, "120s".to_string()),
        (ClientConfigKey::ConnectTimeout, "10s".to_string()),
    ];
    let mut policy = RetryPolicy::default();
    let mut own = Vec::new();
    for (k, v) in options {
        match k.as_str() {
            "timeout" => client.push((ClientConfigKey::Timeout, duration(k, v)?)),
            "connect-timeout" => client.push((ClientConfigKey::ConnectTimeout, duration(k, v)?)),
            "connections" => {
                policy.concurrency = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| invalid(format!("option {k}={v}: give a number from 1 to 1024")))?
            }
            "retries" => {
                policy.attempts = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= 100)
                    .map(|n| n + 1)
                    .ok_or_else(|| invalid(format!("option {k}={v}: give a number from 0 to 100")))?
            }
            _ => match k.split_once('.') {
                Some((prefix, key)) if prefix == scheme && !key.is_empty() => {
                    own.push((key.replace('-', "_"), v.clone()))
                }
                _ => {
                    return Err(invalid(format!(
                        "option {k} is not known for a {scheme}:// repository; use {scheme}.KEY=VALUE (such as {}) or timeout, connect-timeout, connections, retries",
                        match scheme {
                            "s3" => "s3.endpoint=http://127.0.0.1:9000 or s3.region=eu-west-1",
                            "gs" => "gs.service_account=/path/key.json",
                            _ => "az.account_name=NAME",
                        }
                    )))
                }
            },
        }
    }
    Ok((Common { client, policy }, own))
}

/// No retries inside `object_store`: [`super::Retrying`] retries every
/// operation once, with the policy the user configured.
fn no_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        ..Default::default()
    }
}

/// Opens `s3://`, `gs://` or `az://` locations.
pub(crate) fn open(
    location: &str,
    options: &[(String, String)],
    from_env: bool,
) -> crate::Result<(ObjectStoreBackend, RetryPolicy)> {
    let (scheme, rest) = location
        .split_once("://")
        .ok_or_else(|| invalid(format!("not a URL: {location}")))?;
    if rest
        .split('/')
        .next()
        .is_some_and(|host| host.contains('@'))
    {
        return Err(invalid(format!(
            "{scheme}:// repository URLs carry no credentials; give them in the environment ({})",
            match scheme {
                "s3" => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                "gs" => "GOOGLE_SERVICE_ACCOUNT",
                _ => "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
            }
        )));
    }
    if rest.contains('?') {
        return Err(invalid(format!(
            "{scheme}:// repository URLs take no query string; give settings as store options ({scheme}.KEY=VALUE)"
        )));
    }
    let (bucket, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (rest, ""),
    };
    if bucket.is_empty() {
        return Err(invalid(format!(
            "{location}: no bucket; write {scheme}://BUCKET/PREFIX"
        )));
    }
    let (common, own) = split_options(scheme, options)?;
    let bad_key = |k: &str, e: object_store::Error| {
        invalid(format!(
            "option {scheme}.{k}: {}",
            super::redact(&super::object::chain(&e))
        ))
    };
    let credentials_hint = match (scheme, from_env) {
        ("s3", true) => "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION, AWS_ENDPOINT_URL for other S3 stores)",
        ("gs", true) => "set GOOGLE_SERVICE_ACCOUNT (or GOOGLE_APPLICATION_CREDENTIALS) to a service account key file",
        (_, true) => "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or -o az.account_name=NAME with another credential)",
        ("s3", false) => "give the options s3.access_key_id and s3.secret_access_key (and s3.region, s3.endpoint for other S3 stores)",
        ("gs", false) => "give the option gs.service_account_key (the key file's JSON)",
        (_, false) => "give the options az.account_name and az.access_key",
    };
    let build_err = |e: object_store::Error| {
        invalid(format!(
            "cannot open {location}: {}; {credentials_hint}",
            super::redact(&super::object::chain(&e))
        ))
    };
    let mut bucket_maker = None;
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" => {
            let b = if from_env {
                AmazonS3Builder::from_env()
            } else {
                AmazonS3Builder::new()
            };
            let mut b = b.with_bucket_name(bucket).with_retry(no_retries());
            for (k, v) in &common.client {
                b = b.with_config(AmazonS3ConfigKey::Client(*k), v);
            }
            for (k, v) in &own {
                let key = AmazonS3ConfigKey::from_str(k)
                    .or_else(|e| {
                        ClientConfigKey::from_str(k)
                            .map(AmazonS3ConfigKey::Client)
                            .map_err(|_| e)
                    })
                    .map_err(|e| bad_key(k, e))?;
                b = b.with_config(key, v);
            }
            let region = b
                .get_config_value(&AmazonS3ConfigKey::Region)
                .unwrap_or_else(|| "us-east-1".into());
            let s3 = Arc::new(b.build().map_err(build_err)?);
            bucket_maker = Some(BucketMaker {
                s3: s3.clone(),
                bucket: bucket.to_string(),
                region,
            });
            s3
        }
        "gs" => {
            let b = if from_env {
                GoogleCloudStorageBuilder::from_env()
            } else {
                GoogleCloudStorageBuilder::new()
            };
            let mut b = b.with_bucket_name(bucket).with_retry(no_retries());
            for (k, v) in &common.client {
                b = b.with_config(GoogleConfigKey::Client(*k), v);
            }
            for (k, v) in &own {
                let key = GoogleConfigKey::from_str(k)
                    .or_else(|e| {
                        ClientConfigKey::from_str(k)
                            .map(GoogleConfigKey::Client)
                            .map_err(|_| e)
                    })
                    .map_err(|e| bad_key(k, e))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(build_err)?)
        }
        _ => {
            let b = if from_env {
                MicrosoftAzureBuilder::from_env()
            } else {
                MicrosoftAzureBuilder::new()
            };
            let mut b = b.with_container_name(bucket).with_retry(no_retries());
            for (k, v) in &common.client {
                b = b.with_config(AzureConfigKey::Client(*k), v);
            }
            for (k, v) in &own {
                let key = AzureConfigKey::from_str(k)
                    .or_else(|e| {
                        ClientConfigKey::from_str(k)
                            .map(AzureConfigKey::Client)
                            .map_err(|_| e)
                    })
                    .map_err(|e| bad_key(k, e))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(build_err)?)
        }
    };
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    };
    let remote = Remote {
        multipart_threshold: MULTIPART_THRESHOLD,
        part_size: PART_SIZE,
        bucket: bucket_maker,
        credentials_hint,
        conditional_writes: Default::default(),
    };
    let location = format!("{scheme}://{bucket}/{prefix}");
    Ok((
        ObjectStoreBackend::remote(store, location, remote),
        common.policy,
    ))
}

/// Creates a missing S3 bucket (`init` only).
#[derive(Debug)]
pub(crate) struct BucketMaker {
    s3: Arc<AmazonS3>,
    bucket: String,
    region: String,
}

impl BucketMaker {
    fn error(&self, message: String) -> StoreError {
        StoreError {
            kind: StoreErrorKind::Permanent,
            operation: "creating bucket",
            key: self.bucket.clone(),
            message,
        }
    }

    /// Lists the bucket; where the store says it does not exist, creates it
    /// with a pre-signed `PUT` (so that signing stays `object_store`'s job).
    pub(crate) async fn ensure(&self) -> Result<(), StoreError> {
        let listed = self.s3.list_with_delimiter(None).await;
        let missing = match &listed {
            Ok(_) => return Ok(()),
            Err(e) => super::object::chain(e).contains("NoSuchBucket"),
        };
        if !missing {
            let e = listed
                .err()
                .map(|e| super::object::chain(&e))
                .unwrap_or_default();
            return Err(StoreError {
                kind: StoreErrorKind::Permanent,
                operation: "listing bucket",
                key: self.bucket.clone(),
                message: super::redact(&e),
            });
        }
        tracing::info!("bucket {} does not exist; creating it", self.bucket);
        use object_store::signer::Signer;
        let url = self
            .s3
            .signed_url(
                object_store::signer::Method::PUT,
                &object_store::path::Path::from(""),
                Duration::from_secs(300),
            )
            .await
            .map_err(|e| self.error(super::redact(&super::object::chain(&e))))?;
        let body = if self.region == "us-east-1" {
            String::new()
        } else {
            format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            )
        };
        let answer = reqwest::Client::new()
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await
            .map_err(|e| self.error(super::redact(&super::object::chain(&e))))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let text = answer.text().await.unwrap_or_default();
        Err(self.error(format!(
            "the bucket does not exist and could not be created (status {status}: {}); create it, or use credentials that may",
            text.chars().take(300).collect::<String>()
        )))
    }
}
