//! Network stores: S3 and S3-compatible stores, Google Cloud Storage, Azure
//! Blob Storage, configured the way their users already configure them
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*` environment variables) plus `--option`.

use std::str::FromStr;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

use super::bucket::BucketMaker;
use super::object::{ObjectStoreBackend, Remote};
use super::{RetryPolicy, TenantLimits};

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
/// (those with the scheme's prefix, prefix removed); a tenant's are capped.
fn split_options(
    scheme: &str,
    options: &[(String, String)],
    tenant: Option<&TenantLimits>,
) -> crate::Result<(Common, Vec<(String, String)>)> {
    let mut client = vec![
        (ClientConfigKey::Timeout, "120s".to_string()),
        (ClientConfigKey::ConnectTimeout, "10s".to_string()),
    ];
    let mut policy = RetryPolicy::default();
    let mut own = Vec::new();
    let over = |k: &str, v: &str, limit: String| {
        invalid(format!(
            "option {k}={v} is above the limit the cluster's administrator set ({limit})"
        ))
    };
    let capped_duration = |k: &str, v: &str| -> crate::Result<String> {
        let d = duration(k, v)?;
        if let Some(t) = tenant {
            let ms: u64 = d.trim_end_matches("ms").parse().unwrap_or(u64::MAX);
            if ms > t.max_timeout.as_millis() as u64 {
                return Err(over(k, v, format!("{}s", t.max_timeout.as_secs())));
            }
        }
        Ok(d)
    };
    for (k, v) in options {
        match k.as_str() {
            "timeout" => client.push((ClientConfigKey::Timeout, capped_duration(k, v)?)),
            "connect-timeout" => {
                client.push((ClientConfigKey::ConnectTimeout, capped_duration(k, v)?))
            }
            "connections" => {
                policy.concurrency = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| invalid(format!("option {k}={v}: give a number from 1 to 1024")))?;
                if let Some(t) = tenant.filter(|t| policy.concurrency > t.max_connections) {
                    return Err(over(k, v, t.max_connections.to_string()));
                }
            }
            "retries" => {
                policy.attempts = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= 100)
                    .map(|n| n + 1)
                    .ok_or_else(|| invalid(format!("option {k}={v}: give a number from 0 to 100")))?;
                if let Some(t) = tenant.filter(|t| policy.attempts > t.max_retries + 1) {
                    return Err(over(k, v, t.max_retries.to_string()));
                }
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
    tenant: Option<&TenantLimits>,
) -> crate::Result<(ObjectStoreBackend, RetryPolicy)> {
    // A tenant's repository uses the process's environment only where the
    // administrator allows ambient credentials for it.
    let from_env = match tenant {
        Some(t) => t.ambient_credentials,
        None => from_env,
    };
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
    let (common, own) = split_options(scheme, options, tenant)?;
    let refused = |k: &str| {
        invalid(format!(
            "option {scheme}.{k} is not allowed for a repository named by a namespaced object: \
             it names a file, a credential endpoint or process, a proxy or a client setting; \
             give static credentials in the credentials Secret, or ask the cluster's \
             administrator to allow ambient credentials for this URL"
        ))
    };

    let bad_key = |k: &str, e: object_store::Error| {
        invalid(format!(
            "option {scheme}.{k}: {}",
            super::redact(&super::chain(&e))
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
    let no_credentials = || {
        invalid(format!(
            "{location}: no credentials given, and the cluster's administrator allows no \
             ambient credentials (the node's or pod's own identity) for this URL; {credentials_hint}"
        ))
    };
    let build_err = |e: object_store::Error| {
        invalid(format!(
            "cannot open {location}: {}; {credentials_hint}",
            super::redact(&super::chain(&e))
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
                if tenant.is_some() && !s3_allowed(&key) {
                    return Err(refused(k));
                }
                b = b.with_config(key, v);
            }
            let has = |k: AmazonS3ConfigKey| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
            let anonymous = b
                .get_config_value(&AmazonS3ConfigKey::SkipSignature)
                .is_some_and(|v| v == "true");
            if tenant.is_some_and(|t| !t.ambient_credentials)
                && !(anonymous
                    || has(AmazonS3ConfigKey::AccessKeyId)
                        && has(AmazonS3ConfigKey::SecretAccessKey))
            {
                return Err(no_credentials());
            }
            let region = b
                .get_config_value(&AmazonS3ConfigKey::Region)
                .unwrap_or_else(|| "us-east-1".into());
            let s3 = Arc::new(b.build().map_err(build_err)?);
            bucket_maker = Some(BucketMaker::new(s3.clone(), bucket.to_string(), region));
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
                if tenant.is_some() && !gcs_allowed(&key) {
                    return Err(refused(k));
                }
                b = b.with_config(key, v);
            }
            let has = |k: GoogleConfigKey| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
            if tenant.is_some_and(|t| !t.ambient_credentials)
                && !(has(GoogleConfigKey::ServiceAccountKey)
                    || has(GoogleConfigKey::BearerToken)
                    || b.get_config_value(&GoogleConfigKey::SkipSignature)
                        .is_some_and(|v| v == "true"))
            {
                return Err(no_credentials());
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
                if tenant.is_some() && !azure_allowed(&key) {
                    return Err(refused(k));
                }
                b = b.with_config(key, v);
            }
            let has = |k: AzureConfigKey| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
            let yes = |k: AzureConfigKey| b.get_config_value(&k).is_some_and(|v| v == "true");
            let principal = has(AzureConfigKey::ClientId)
                && has(AzureConfigKey::ClientSecret)
                && has(AzureConfigKey::AuthorityId);
            let key = has(AzureConfigKey::AccessKey)
                || has(AzureConfigKey::SasKey)
                || has(AzureConfigKey::Token)
                || principal;
            if tenant.is_some_and(|t| !t.ambient_credentials)
                && !(yes(AzureConfigKey::UseEmulator)
                    || yes(AzureConfigKey::SkipSignature)
                    || has(AzureConfigKey::AccountName) && key)
            {
                return Err(no_credentials());
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

/// Client settings a tenant may give: plain HTTP to its own endpoint.
fn client_allowed(k: &ClientConfigKey) -> bool {
    matches!(k, ClientConfigKey::AllowHttp)
}

/// The S3 options a tenant may give: static credentials, where the store
/// is, and how to talk to it. Not: files, credential endpoints (instance
/// metadata, container credentials, STS), roles, the bucket (the URL's).
fn s3_allowed(k: &AmazonS3ConfigKey) -> bool {
    use AmazonS3ConfigKey as K;
    match k {
        K::AccessKeyId
        | K::SecretAccessKey
        | K::Token
        | K::Region
        | K::DefaultRegion
        | K::Endpoint
        | K::S3Endpoint
        | K::VirtualHostedStyleRequest
        | K::UnsignedPayload
        | K::Checksum
        | K::CopyIfNotExists
        | K::ConditionalPut
        | K::SkipSignature
        | K::DisableTagging
        | K::DisableBulkDelete
        | K::S3Express
        | K::RequestPayer
        | K::Encryption(_) => true,
        K::Client(c) => client_allowed(c),
        _ => false,
    }
}

/// The Azure options a tenant may give: an account with a key, a SAS, a
/// bearer token or a service principal's secret; the endpoint; Azurite.
/// Not: managed identity, workload identity (a token file), the Azure CLI,
/// Fabric, another authority host, the container (the URL's).
fn azure_allowed(k: &AzureConfigKey) -> bool {
    use AzureConfigKey as K;
    match k {
        K::AccountName
        | K::AccessKey
        | K::SasKey
        | K::Token
        | K::ClientId
        | K::ClientSecret
        | K::AuthorityId
        | K::UseEmulator
        | K::Endpoint
        | K::SkipSignature
        | K::DisableTagging
        | K::EncryptionKey => true,
        K::Client(c) => client_allowed(c),
        _ => false,
    }
}

/// The Google Cloud Storage options a tenant may give: a service account
/// key's JSON (not a key file's path), a bearer token, the endpoint.
fn gcs_allowed(k: &GoogleConfigKey) -> bool {
    use GoogleConfigKey as K;
    match k {
        K::ServiceAccountKey | K::BearerToken | K::BaseUrl | K::SkipSignature => true,
        K::Client(c) => client_allowed(c),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tenant() -> TenantLimits {
        TenantLimits::default()
    }

    const S3_KEYS: [(&str, &str); 3] = [
        ("s3.endpoint", "http://127.0.0.1:9"),
        ("s3.access_key_id", "AKIA"),
        ("s3.secret_access_key", "secret"),
    ];

    /// A tenant may not name a file, a credential endpoint or process, a
    /// proxy or a client setting, under any of the key's spellings; the
    /// error names the option. The command line's user may.
    #[test]
    fn a_tenant_cannot_reach_files_credential_endpoints_or_proxies() {
        let refused = [
            (
                "s3://b/p",
                "s3.web_identity_token_file",
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
            ),
            (
                "s3://b/p",
                "s3.aws_web_identity_token_file",
                "/etc/hostname",
            ),
            ("s3://b/p", "s3.role_arn", "arn:aws:iam::1:role/x"),
            ("s3://b/p", "s3.endpoint_url_sts", "http://127.0.0.1:1"),
            ("s3://b/p", "s3.aws_endpoint_url_sts", "http://127.0.0.1:1"),
            (
                "s3://b/p",
                "s3.container_credentials_full_uri",
                "http://127.0.0.1:1",
            ),
            (
                "s3://b/p",
                "s3.container_authorization_token_file",
                "/etc/hostname",
            ),
            ("s3://b/p", "s3.metadata_endpoint", "http://127.0.0.1:1"),
            ("s3://b/p", "s3.imdsv1_fallback", "true"),
            ("s3://b/p", "s3.proxy_url", "http://127.0.0.1:1"),
            ("s3://b/p", "s3.timeout", "1h"),
            ("az://c/p", "az.federated_token_file", "/etc/hostname"),
            ("az://c/p", "az.authority_host", "http://127.0.0.1:1"),
            ("az://c/p", "az.msi_endpoint", "http://127.0.0.1:1"),
            ("az://c/p", "az.use_azure_cli", "true"),
            ("gs://b/p", "gs.service_account", "/etc/hostname"),
            ("gs://b/p", "gs.application_credentials", "/etc/hostname"),
        ];
        for (url, key, value) in refused {
            let mut o = opts(&S3_KEYS);
            o.retain(|(k, _)| k.starts_with(&url[..2]));
            o.push((key.to_string(), value.to_string()));
            let err = open(url, &o, false, Some(&tenant()))
                .err()
                .unwrap_or_else(|| panic!("{key} was accepted"))
                .to_string();
            assert!(
                err.contains(key) && err.contains("not allowed"),
                "{key}: {err}"
            );
            // The command line trusts its user with it.
            if let Err(e) = open(url, &o, false, None) {
                assert!(!e.to_string().contains("not allowed"), "{key}: {e}");
            }
        }
    }

    /// Without static credentials a tenant's repository does not fall back
    /// to the process's own identity, unless the administrator allows it.
    #[test]
    fn no_ambient_credentials_unless_the_administrator_allows_them() {
        let bare = opts(&[("s3.endpoint", "http://127.0.0.1:9")]);
        let err = open("s3://b/p", &bare, false, Some(&tenant()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no credentials") && err.contains("administrator"),
            "{err}"
        );
        let allowed = TenantLimits {
            ambient_credentials: true,
            ..tenant()
        };
        assert!(open("s3://b/p", &bare, false, Some(&allowed)).is_ok());
        assert!(open("s3://b/p", &opts(&S3_KEYS), false, Some(&tenant())).is_ok());
        for (url, o) in [
            ("az://c/p", opts(&[("az.account_name", "a")])),
            ("gs://b/p", Vec::new()),
        ] {
            let err = open(url, &o, false, Some(&tenant()))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("no credentials"), "{url}: {err}");
        }
        let az = opts(&[("az.account_name", "a"), ("az.access_key", "a2V5")]);
        assert!(open("az://c/p", &az, false, Some(&tenant())).is_ok());
    }

    /// Timeouts, retries and connections are capped for a tenant.
    #[test]
    fn a_tenant_cannot_raise_the_administrator_s_caps() {
        for (k, v) in [
            ("retries", "11"),
            ("timeout", "301"),
            ("connect-timeout", "600s"),
            ("connections", "65"),
        ] {
            let mut o = opts(&S3_KEYS);
            o.push((k.to_string(), v.to_string()));
            let err = open("s3://b/p", &o, false, Some(&tenant()))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(k) && err.contains("limit"), "{k}: {err}");
            assert!(open("s3://b/p", &o, false, None).is_ok(), "{k}");
        }
        let mut o = opts(&S3_KEYS);
        o.extend(opts(&[
            ("retries", "10"),
            ("timeout", "300"),
            ("connections", "64"),
        ]));
        assert!(open("s3://b/p", &o, false, Some(&tenant())).is_ok());
    }
}
