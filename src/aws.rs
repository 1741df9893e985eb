//! The edge to AWS: SDK configuration shared by every AWS-using command.
//!
//! The endpoint comes only from the SDK's standard environment (`AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`): no custom endpoint
//! code. Transient failures (throttling, 5xx, timeouts) are retried by the SDK's standard
//! retry strategy; `AWS_MAX_ATTEMPTS` tunes it.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Loads the SDK configuration: explicit region/profile first, then the environment,
/// profile files and instance metadata.
pub async fn load(region: Option<&str>, profile: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    loader.load().await
}

/// Polls `probe` every `poll` until it reports done (`Ok(None)`), fails, or `timeout`
/// passes; `Ok(Some(state))` means not yet, and names the state for the timeout message.
pub async fn wait_until<F, Fut>(
    timeout: std::time::Duration,
    poll: std::time::Duration,
    what: &str,
    mut probe: F,
) -> crate::error::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<Option<String>>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let state = match probe().await? {
            None => return Ok(()),
            Some(state) => state,
        };
        if std::time::Instant::now() >= deadline {
            return Err(crate::error::Error::Timeout(format!(
                "{what} still {state} after {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Deletes SSM parameters ten at a time (DeleteParameters' limit), calling `deleted` with
/// each batch once AWS has taken it.
pub async fn delete_parameters(
    ssm: &aws_sdk_ssm::Client,
    names: &[String],
    mut deleted: impl FnMut(&[String]),
) -> crate::error::Result<()> {
    for chunk in names.chunks(10) {
        ssm.delete_parameters()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(crate::error::Error::aws(format!(
                "ssm DeleteParameters {}",
                chunk.join(",")
            )))?;
        deleted(chunk);
    }
    Ok(())
}
