//! The edge to AWS: every SDK call haimg makes, one module per service, each with the
//! domain-level functions the commands need; the rest of haimg sees
//! [`crate::contract::artifacts`] and [`observed`] types, never an SDK builder.
//!
//! * [`elb`]: the API's load balancer, target group, listener (`up`, `status`, `down`);
//! * [`ec2`]: launch templates (`up`, `down`);
//! * [`autoscaling`]: the groups, their hooks and instances (`up`, `status`, `down`);
//! * [`ssm`]: the cluster's parameters and the image parameter (`up`, `down`), the agent's
//!   documents under the cluster prefix;
//! * [`s3`]: `bake`'s staging bucket;
//! * [`imds`]: the instance's metadata (the node agent);
//! * [`observed`]: what the describe calls return, in haimg's terms.
//!
//! Here too: the SDK configuration every AWS-using command shares, and the waiting helpers.
//!
//! The endpoint comes only from the SDK's standard environment (`AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`): no custom endpoint
//! code. Transient failures (throttling, 5xx, timeouts) are retried by the SDK's standard
//! retry strategy; `AWS_MAX_ATTEMPTS` tunes it.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::ProvideErrorMetadata;

use crate::backoff::Backoff;
use crate::contract::artifacts::Tag;
use crate::error::{Error, Result};

pub mod autoscaling;
pub mod ec2;
pub mod elb;
pub mod imds;
pub mod observed;
pub mod s3;
pub mod ssm;

/// The SDK clients `up`, `status` and `down` use.
#[derive(Clone)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub asg: aws_sdk_autoscaling::Client,
    pub ssm: aws_sdk_ssm::Client,
}

impl Clients {
    pub fn new(sdk: &SdkConfig) -> Clients {
        Clients {
            ec2: aws_sdk_ec2::Client::new(sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(sdk),
            asg: aws_sdk_autoscaling::Client::new(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
        }
    }
}

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
    timeout: Duration,
    poll: Duration,
    what: &str,
    mut probe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let state = match probe().await? {
            None => return Ok(()),
            Some(state) => state,
        };
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{what} still {state} after {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// haimg's tags as one service's SDK type (`make` builds one from a key and a value).
fn tags_to<T>(tags: &[Tag], make: impl Fn(&str, &str) -> T) -> Vec<T> {
    tags.iter().map(|t| make(&t.key, &t.value)).collect()
}

/// One service's SDK tags as haimg's (`parts` gives a tag's key and value).
fn tags_from<T>(tags: &[T], parts: impl Fn(&T) -> (Option<&str>, Option<&str>)) -> Vec<Tag> {
    tags.iter()
        .map(|t| {
            let (key, value) = parts(t);
            Tag {
                key: key.unwrap_or_default().into(),
                value: value.unwrap_or_default().into(),
            }
        })
        .collect()
}

/// An SDK enum's wire string, or "" when AWS did not say.
fn text<T: AsRef<str>>(v: Option<&T>) -> String {
    v.map(|v| v.as_ref().to_string()).unwrap_or_default()
}

/// Whether an error is AWS's eventual consistency showing (a resource created a moment ago
/// is not visible to another API yet): worth a few more tries, unlike a real rejection.
pub fn is_settling(code: Option<&str>, message: Option<&str>) -> bool {
    let msg = message.unwrap_or_default().to_ascii_lowercase();
    match code {
        Some(
            "InvalidLaunchTemplateName.NotFoundException"
            | "InvalidLaunchTemplateId.NotFound"
            | "InvalidLaunchTemplateId.VersionNotFound"
            | "TargetGroupNotFound"
            | "LoadBalancerNotFound",
        ) => true,
        Some("ValidationError") => {
            (msg.contains("launch template") || msg.contains("target group"))
                && (msg.contains("not found") || msg.contains("does not exist"))
        }
        _ => false,
    }
}

/// How long a call may keep meeting eventual consistency: AWS documents "seconds" for a
/// new launch template or target group to be visible everywhere; 60 s covers a slow
/// region with room, and a real rejection still fails at once.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Runs `call` until it succeeds, fails for real, or has settled for `bound`.
pub async fn settle<T, E, F, Fut>(what: &str, bound: Duration, mut call: F) -> Result<T>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    // From half a second (a new resource is usually visible within one or two) up to 8 s
    // between tries, jittered so parallel `up`s do not retry in step.
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8), bound);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if is_settling(e.code(), e.message()) => {
                tracing::debug!(what, code = e.code(), "not visible yet; retrying");
                if !backoff.wait().await {
                    return Err(Error::aws(what)(e));
                }
            }
            Err(e) => return Err(Error::aws(what)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_settling;

    #[test]
    fn eventual_consistency_is_told_from_real_rejections() {
        assert!(is_settling(
            Some("InvalidLaunchTemplateName.NotFoundException"),
            None
        ));
        assert!(is_settling(
            Some("ValidationError"),
            Some("You must use a valid fully-formed launch template. The specified launch template, with template name demo-master, does not exist.")
        ));
        assert!(is_settling(
            Some("ValidationError"),
            Some("Target group arn:... not found")
        ));
        assert!(!is_settling(
            Some("ValidationError"),
            Some("Max bound, 2, must be greater than or equal to min bound, 3")
        ));
        assert!(!is_settling(
            Some("AccessDenied"),
            Some("launch template not found")
        ));
        assert!(!is_settling(None, None));
    }
}
