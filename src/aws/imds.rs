//! Instance metadata, as the node agent reads it: IMDSv2 through aws-config's client
//! (session tokens, hop limit 1 on haimg's launch templates: only the host itself asks).

use crate::error::{Error, Result};

pub use aws_config::imds::Client;

/// A client for the instance's metadata service (`AWS_EC2_METADATA_SERVICE_ENDPOINT`
/// points it elsewhere, as the SDK's standard environment says).
pub fn client() -> Client {
    Client::builder().build()
}

/// `/latest/meta-data/<path>`, trimmed. IMDS answers 404 for what does not apply (yet),
/// such as an instance's lifecycle state before it is InService in a group.
pub async fn get(c: &Client, path: &str) -> Result<String> {
    c.get(format!("/latest/meta-data/{path}"))
        .await
        .map(|s| s.as_ref().trim().to_string())
        .map_err(|e| {
            Error::Runtime(format!(
                "IMDS {path}: {}",
                aws_sdk_ssm::error::DisplayErrorContext(&e)
            ))
        })
}
