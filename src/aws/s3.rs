//! S3, as `bake` uses it: a staging bucket of the bake's own, the files the builder
//! fetches through presigned GETs, and the log it uploads through a presigned PUT.
//!
//! A presigned URL is a credential until it expires: the functions return it for the
//! builder's environment only, and no error message here ever holds one.

use std::path::Path;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
pub use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_s3::Client;

use crate::error::{Error, Result};

/// A client for `sdk`'s region; path-style addressing where an endpoint is overridden
/// (S3-compatible servers and emulators have no per-bucket host names).
pub fn client(sdk: &SdkConfig) -> Client {
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .build();
    Client::from_conf(conf)
}

/// Creates `bucket` in `region` (us-east-1 takes no location constraint).
pub async fn create_bucket(c: &Client, bucket: &str, region: Option<&str>) -> Result<()> {
    let mut create = c.create_bucket().bucket(bucket);
    if let Some(r) = region.filter(|r| *r != "us-east-1") {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(r))
                .build(),
        );
    }
    create
        .send()
        .await
        .map_err(Error::aws(format!("s3 CreateBucket {bucket}")))?;
    Ok(())
}

/// What an uploaded object is made of: a file on this machine, or bytes in memory.
pub enum Body<'a> {
    Path(&'a Path),
    Bytes(&'a [u8]),
}

/// Uploads `body` to `bucket/key`; `what` says what it is in errors.
pub async fn put(c: &Client, bucket: &str, key: &str, body: Body<'_>, what: &str) -> Result<()> {
    let stream = match body {
        Body::Path(path) => ByteStream::from_path(path)
            .await
            .map_err(|e| Error::Runtime(format!("reading {}: {e}", path.display())))?,
        Body::Bytes(b) => ByteStream::from(b.to_vec()),
    };
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(stream)
        .send()
        .await
        .map_err(Error::aws(format!(
            "s3 PutObject s3://{bucket}/{key} ({what})"
        )))?;
    Ok(())
}

/// How long presigned URLs last: `valid` (the bake's script timeout and some margin).
pub fn presigning(valid: Duration) -> Result<PresigningConfig> {
    PresigningConfig::expires_in(valid).map_err(|e| Error::Runtime(format!("presigning: {e}")))
}

/// A presigned GET of `bucket/key`.
pub async fn presign_get(
    c: &Client,
    bucket: &str,
    key: &str,
    presigning: &PresigningConfig,
) -> Result<String> {
    let req = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(presigning.clone())
        .await
        .map_err(Error::aws(format!("presigning s3://{bucket}/{key}")))?;
    Ok(req.uri().to_string())
}

/// A presigned PUT of a `text/plain` object at `bucket/key`.
pub async fn presign_put_text(
    c: &Client,
    bucket: &str,
    key: &str,
    presigning: &PresigningConfig,
) -> Result<String> {
    let req = c
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("text/plain")
        .presigned(presigning.clone())
        .await
        .map_err(Error::aws(format!("presigning s3://{bucket}/{key}")))?;
    Ok(req.uri().to_string())
}

/// The object's text; empty when it does not exist (yet) or cannot be read.
pub async fn text_or_empty(c: &Client, bucket: &str, key: &str) -> String {
    match c.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => match o.body.collect().await {
            Ok(b) => String::from_utf8_lossy(&b.into_bytes()).into_owned(),
            Err(_) => String::new(),
        },
        Err(_) => String::new(),
    }
}

/// S3 has no typed variant for a missing bucket on these calls: its error code says so.
fn no_such_bucket<E: ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("NoSuchBucket")
}

/// Deletes the objects `keys` and then `bucket`, best effort: every one is attempted, a
/// bucket that is gone counts as deleted. Returns what could not be removed, and whether
/// the bucket was deleted by this call.
pub async fn delete_bucket_with(c: &Client, bucket: &str, keys: &[String]) -> (Vec<String>, bool) {
    let mut left = Vec::new();
    for k in keys {
        if let Err(e) = c.delete_object().bucket(bucket).key(k).send().await {
            if !no_such_bucket(&e) {
                left.push(format!(
                    "staged object s3://{bucket}/{k}: {}",
                    DisplayErrorContext(&e)
                ));
            }
        }
    }
    match c.delete_bucket().bucket(bucket).send().await {
        Ok(_) => (left, true),
        Err(e) if no_such_bucket(&e) => (left, false),
        Err(e) => {
            left.push(format!(
                "staging bucket {bucket}: {}",
                DisplayErrorContext(&e)
            ));
            (left, false)
        }
    }
}
