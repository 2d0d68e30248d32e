//! Creating a missing S3 bucket, for `init`.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3;
use object_store::ObjectStore;

use super::{StoreError, StoreErrorKind};

/// Creates a missing S3 bucket (`init` only).
#[derive(Debug)]
pub(crate) struct BucketMaker {
    s3: Arc<AmazonS3>,
    bucket: String,
    region: String,
}

impl BucketMaker {
    pub(crate) fn new(s3: Arc<AmazonS3>, bucket: String, region: String) -> Self {
        BucketMaker { s3, bucket, region }
    }

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
            Err(e) => super::chain(e).contains("NoSuchBucket"),
        };
        if !missing {
            let e = listed.err().map(|e| super::chain(&e)).unwrap_or_default();
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
            .map_err(|e| self.error(super::redact(&super::chain(&e))))?;
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
            .map_err(|e| self.error(super::redact(&super::chain(&e))))?;
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
