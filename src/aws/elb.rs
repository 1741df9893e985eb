//! Elastic Load Balancing v2: the API endpoint's NLB, its target group and listener.
//!
//! In: the rendered inputs ([`crate::contract::artifacts`]) with every `haimg-ref:` already
//! resolved to an ARN by the caller. Out: ARNs and [`observed`](super::observed) types.

use aws_sdk_elasticloadbalancingv2::error::ProvideErrorMetadata;
use aws_sdk_elasticloadbalancingv2::types as sdk;
use aws_sdk_elasticloadbalancingv2::Client;

use super::observed::{ObservedListener, ObservedLoadBalancer, ObservedTargetGroup, Target};
use super::{settle, text, SETTLE};
use crate::contract::artifacts::{
    Attribute, HealthCheck, Listener, LoadBalancer, Tag, TargetGroup, TargetGroupIdentity,
};
use crate::error::{Error, Result};

fn tags_to(tags: &[Tag]) -> Vec<sdk::Tag> {
    super::tags_to(tags, |k, v| sdk::Tag::builder().key(k).value(v).build())
}

fn tags_from(tags: &[sdk::Tag]) -> Vec<Tag> {
    super::tags_from(tags, |t| (t.key(), t.value()))
}

/// The load balancer named `lb_name`, if it exists.
async fn find_load_balancer(c: &Client, lb_name: &str) -> Result<Option<sdk::LoadBalancer>> {
    match c.describe_load_balancers().names(lb_name).send().await {
        Ok(o) => Ok(o.load_balancers().first().cloned()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_load_balancer_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::aws(format!("elbv2 DescribeLoadBalancers {lb_name}"))(e)),
    }
}

/// The target group named `tg_name`, if it exists.
async fn find_target_group(c: &Client, tg_name: &str) -> Result<Option<sdk::TargetGroup>> {
    match c.describe_target_groups().names(tg_name).send().await {
        Ok(o) => Ok(o.target_groups().first().cloned()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_target_group_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::aws(format!("elbv2 DescribeTargetGroups {tg_name}"))(
            e,
        )),
    }
}

/// The load balancer, target group and listener (on `port`) named by the spec, with their
/// tags and the target group's attributes.
pub async fn api(
    c: &Client,
    lb_name: &str,
    tg_name: &str,
    port: i32,
) -> Result<(
    Option<ObservedLoadBalancer>,
    Option<ObservedTargetGroup>,
    Option<ObservedListener>,
)> {
    let lb = find_load_balancer(c, lb_name).await?;
    let tg = find_target_group(c, tg_name).await?;
    let listener = match &lb {
        Some(lb) => c
            .describe_listeners()
            .load_balancer_arn(lb.load_balancer_arn().unwrap_or_default())
            .send()
            .await
            .map_err(Error::aws(format!("elbv2 DescribeListeners {lb_name}")))?
            .listeners()
            .iter()
            .find(|l| l.port() == Some(port))
            .cloned(),
        None => None,
    };
    let arns: Vec<String> = [
        lb.as_ref().and_then(|l| l.load_balancer_arn()),
        tg.as_ref().and_then(|t| t.target_group_arn()),
        listener.as_ref().and_then(|l| l.listener_arn()),
    ]
    .into_iter()
    .flatten()
    .map(str::to_string)
    .collect();
    let tags_of = if arns.is_empty() {
        vec![]
    } else {
        c.describe_tags()
            .set_resource_arns(Some(arns))
            .send()
            .await
            .map_err(Error::aws(format!("elbv2 DescribeTags {lb_name}")))?
            .tag_descriptions()
            .to_vec()
    };
    let tags = |arn: Option<&str>| -> Vec<Tag> {
        tags_of
            .iter()
            .find(|d| d.resource_arn().is_some() && d.resource_arn() == arn)
            .map(|d| tags_from(d.tags()))
            .unwrap_or_default()
    };
    let lb = lb.map(|l| ObservedLoadBalancer {
        arn: l.load_balancer_arn().unwrap_or_default().into(),
        r#type: text(l.r#type()),
        scheme: text(l.scheme()),
        subnets: l
            .availability_zones()
            .iter()
            .filter_map(|z| z.subnet_id().map(str::to_string))
            .collect(),
        tags: tags(l.load_balancer_arn()),
    });
    let tg = match tg {
        None => None,
        Some(t) => {
            let arn = t.target_group_arn().unwrap_or_default().to_string();
            let attributes = attributes(c, &arn, tg_name).await?;
            Some(ObservedTargetGroup {
                identity: identity_of(&t),
                health_check: health_check_of(&t),
                attributes,
                tags: tags(Some(&arn)),
                arn,
            })
        }
    };
    let listener = listener.map(|l| ObservedListener {
        arn: l.listener_arn().unwrap_or_default().into(),
        protocol: text(l.protocol()),
        port: l.port().unwrap_or_default(),
        target_group_arns: l
            .default_actions()
            .iter()
            .filter_map(|a| a.target_group_arn().map(str::to_string))
            .collect(),
        tags: tags(l.listener_arn()),
    });
    Ok((lb, tg, listener))
}

fn identity_of(t: &sdk::TargetGroup) -> TargetGroupIdentity {
    TargetGroupIdentity {
        protocol: text(t.protocol()),
        port: t.port().unwrap_or_default(),
        vpc_id: t.vpc_id().unwrap_or_default().into(),
        target_type: text(t.target_type()),
    }
}

fn health_check_of(t: &sdk::TargetGroup) -> HealthCheck {
    HealthCheck {
        health_check_enabled: t.health_check_enabled().unwrap_or(false),
        health_check_protocol: text(t.health_check_protocol()),
        health_check_port: t.health_check_port().unwrap_or_default().into(),
        health_check_path: t.health_check_path().unwrap_or_default().into(),
        health_check_interval_seconds: t.health_check_interval_seconds().unwrap_or_default(),
        health_check_timeout_seconds: t.health_check_timeout_seconds().unwrap_or_default(),
        healthy_threshold_count: t.healthy_threshold_count().unwrap_or_default(),
        unhealthy_threshold_count: t.unhealthy_threshold_count().unwrap_or_default(),
        matcher: t
            .matcher()
            .and_then(|m| m.http_code())
            .unwrap_or_default()
            .into(),
    }
}

async fn attributes(c: &Client, arn: &str, tg_name: &str) -> Result<Vec<Attribute>> {
    let out = c
        .describe_target_group_attributes()
        .target_group_arn(arn)
        .send()
        .await
        .map_err(Error::aws(format!(
            "elbv2 DescribeTargetGroupAttributes {tg_name}"
        )))?;
    Ok(out
        .attributes()
        .iter()
        .map(|a| Attribute {
            key: a.key().unwrap_or_default().into(),
            value: a.value().unwrap_or_default().into(),
        })
        .collect())
}

/// The target group's ARN and its targets' health; `None` when it does not exist.
pub async fn targets(c: &Client, tg_name: &str) -> Result<Option<Vec<Target>>> {
    let Some(arn) = find_target_group(c, tg_name)
        .await?
        .and_then(|t| t.target_group_arn().map(str::to_string))
    else {
        return Ok(None);
    };
    let out = c
        .describe_target_health()
        .target_group_arn(&arn)
        .send()
        .await
        .map_err(Error::aws(format!("elbv2 DescribeTargetHealth {tg_name}")))?;
    Ok(Some(
        out.target_health_descriptions()
            .iter()
            .map(|t| Target {
                id: t.target().and_then(|t| t.id()).unwrap_or_default().into(),
                state: text(t.target_health().and_then(|h| h.state())),
                reason: t
                    .target_health()
                    .and_then(|h| h.reason())
                    .map(|r| r.as_str().to_string()),
            })
            .collect(),
    ))
}

/// Creates the NLB; returns its ARN.
pub async fn create_load_balancer(c: &Client, lb: &LoadBalancer) -> Result<String> {
    let out = c
        .create_load_balancer()
        .name(&lb.name)
        .set_subnets(Some(lb.subnets.clone()))
        .scheme(sdk::LoadBalancerSchemeEnum::from(lb.scheme.as_str()))
        .r#type(sdk::LoadBalancerTypeEnum::from(lb.r#type.as_str()))
        .ip_address_type(sdk::IpAddressType::from(lb.ip_address_type.as_str()))
        .set_tags(Some(tags_to(&lb.tags)))
        .send()
        .await
        .map_err(Error::aws(format!("elbv2 CreateLoadBalancer {}", lb.name)))?;
    Ok(out
        .load_balancers()
        .first()
        .and_then(|l| l.load_balancer_arn())
        .unwrap_or_default()
        .to_string())
}

/// Creates the target group; returns its ARN.
pub async fn create_target_group(c: &Client, tg: &TargetGroup) -> Result<String> {
    let out = c
        .create_target_group()
        .name(&tg.name)
        .protocol(sdk::ProtocolEnum::from(tg.protocol.as_str()))
        .port(tg.port)
        .vpc_id(&tg.vpc_id)
        .target_type(sdk::TargetTypeEnum::from(tg.target_type.as_str()))
        .health_check_enabled(tg.health_check_enabled)
        .health_check_protocol(sdk::ProtocolEnum::from(tg.health_check_protocol.as_str()))
        .health_check_port(&tg.health_check_port)
        .health_check_path(&tg.health_check_path)
        .health_check_interval_seconds(tg.health_check_interval_seconds)
        .health_check_timeout_seconds(tg.health_check_timeout_seconds)
        .healthy_threshold_count(tg.healthy_threshold_count)
        .unhealthy_threshold_count(tg.unhealthy_threshold_count)
        .matcher(
            sdk::Matcher::builder()
                .http_code(&tg.matcher.http_code)
                .build(),
        )
        .set_tags(Some(tags_to(&tg.tags)))
        .send()
        .await
        .map_err(Error::aws(format!("elbv2 CreateTargetGroup {}", tg.name)))?;
    Ok(out
        .target_groups()
        .first()
        .and_then(|t| t.target_group_arn())
        .unwrap_or_default()
        .to_string())
}

/// Sets the health check of the target group `arn` (named `tg_name` in errors).
pub async fn modify_health_check(
    c: &Client,
    arn: &str,
    tg_name: &str,
    to: &HealthCheck,
) -> Result<()> {
    c.modify_target_group()
        .target_group_arn(arn)
        .health_check_enabled(to.health_check_enabled)
        .health_check_protocol(sdk::ProtocolEnum::from(to.health_check_protocol.as_str()))
        .health_check_port(&to.health_check_port)
        .health_check_path(&to.health_check_path)
        .health_check_interval_seconds(to.health_check_interval_seconds)
        .health_check_timeout_seconds(to.health_check_timeout_seconds)
        .healthy_threshold_count(to.healthy_threshold_count)
        .unhealthy_threshold_count(to.unhealthy_threshold_count)
        .matcher(sdk::Matcher::builder().http_code(&to.matcher).build())
        .send()
        .await
        .map_err(Error::aws(format!("elbv2 ModifyTargetGroup {tg_name}")))?;
    Ok(())
}

/// Sets attributes of the target group `arn` (others keep their values).
pub async fn set_attributes(
    c: &Client,
    arn: &str,
    tg_name: &str,
    attributes: &[Attribute],
) -> Result<()> {
    c.modify_target_group_attributes()
        .target_group_arn(arn)
        .set_attributes(Some(
            attributes
                .iter()
                .map(|a| {
                    sdk::TargetGroupAttribute::builder()
                        .key(&a.key)
                        .value(&a.value)
                        .build()
                })
                .collect(),
        ))
        .send()
        .await
        .map_err(Error::aws(format!(
            "elbv2 ModifyTargetGroupAttributes {tg_name}"
        )))?;
    Ok(())
}

fn actions(l: &Listener) -> Vec<sdk::Action> {
    l.default_actions
        .iter()
        .map(|a| {
            sdk::Action::builder()
                .r#type(sdk::ActionTypeEnum::from(a.r#type.as_str()))
                .target_group_arn(&a.target_group_arn)
                .build()
        })
        .collect()
}

/// Creates the listener `l` (its ARNs resolved); returns its ARN. Waits out a target group
/// created a moment ago that the listener API cannot see yet.
pub async fn create_listener(c: &Client, l: &Listener) -> Result<String> {
    let what = format!("elbv2 CreateListener listener {}/{}", l.protocol, l.port);
    let out = settle(&what, SETTLE, || {
        c.create_listener()
            .load_balancer_arn(&l.load_balancer_arn)
            .protocol(sdk::ProtocolEnum::from(l.protocol.as_str()))
            .port(l.port)
            .set_default_actions(Some(actions(l)))
            .set_tags(Some(tags_to(&l.tags)))
            .send()
    })
    .await?;
    Ok(out
        .listeners()
        .first()
        .and_then(|x| x.listener_arn())
        .unwrap_or_default()
        .to_string())
}

/// Makes the listener `arn` what `l` (its ARNs resolved) says.
pub async fn modify_listener(c: &Client, arn: &str, l: &Listener) -> Result<()> {
    c.modify_listener()
        .listener_arn(arn)
        .protocol(sdk::ProtocolEnum::from(l.protocol.as_str()))
        .port(l.port)
        .set_default_actions(Some(actions(l)))
        .send()
        .await
        .map_err(Error::aws(format!(
            "elbv2 ModifyListener listener {}/{}",
            l.protocol, l.port
        )))?;
    Ok(())
}

/// Adds (or overwrites) `tags` on the resource `arn`; `what` names it in errors.
pub async fn add_tags(c: &Client, arn: &str, what: &str, tags: &[Tag]) -> Result<()> {
    c.add_tags()
        .resource_arns(arn)
        .set_tags(Some(tags_to(tags)))
        .send()
        .await
        .map_err(Error::aws(format!("elbv2 AddTags {what}")))?;
    Ok(())
}

/// The resource is gone already: a delete of it is done.
fn gone<E: ProvideErrorMetadata>(e: &E) -> bool {
    matches!(
        e.code(),
        Some("LoadBalancerNotFound" | "TargetGroupNotFound" | "ListenerNotFound")
    )
}

/// Deletes the listener `arn`: `false` when it was gone already.
pub async fn delete_listener(c: &Client, arn: &str) -> Result<bool> {
    match c.delete_listener().listener_arn(arn).send().await {
        Ok(_) => Ok(true),
        Err(e) if gone(&e) => Ok(false),
        Err(e) => Err(Error::aws(format!("elbv2 DeleteListener {arn}"))(e)),
    }
}

/// Deletes the load balancer `arn` (`name` in errors): `false` when it was gone already.
pub async fn delete_load_balancer(c: &Client, arn: &str, name: &str) -> Result<bool> {
    match c.delete_load_balancer().load_balancer_arn(arn).send().await {
        Ok(_) => Ok(true),
        Err(e) if gone(&e) => Ok(false),
        Err(e) => Err(Error::aws(format!("elbv2 DeleteLoadBalancer {name}"))(e)),
    }
}

/// What a target group's delete came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetGroupDelete {
    /// Deleted, or gone already.
    Done,
    /// Still used by a load balancer that is going away: try again.
    InUse,
}

/// Deletes the target group `arn` (`name` in errors).
pub async fn delete_target_group(c: &Client, arn: &str, name: &str) -> Result<TargetGroupDelete> {
    match c.delete_target_group().target_group_arn(arn).send().await {
        Ok(_) => Ok(TargetGroupDelete::Done),
        Err(e) if gone(&e) => Ok(TargetGroupDelete::Done),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            Ok(TargetGroupDelete::InUse)
        }
        Err(e) => Err(Error::aws(format!("elbv2 DeleteTargetGroup {name}"))(e)),
    }
}

/// The DNS name of the load balancer `name`.
pub async fn dns_name(c: &Client, name: &str) -> Result<String> {
    let out = c
        .describe_load_balancers()
        .names(name)
        .send()
        .await
        .map_err(Error::aws(format!("elbv2 DescribeLoadBalancers {name}")))?;
    out.load_balancers()
        .first()
        .and_then(|lb| lb.dns_name())
        .map(str::to_string)
        .ok_or_else(|| Error::Runtime(format!("load balancer {name} has no DNS name")))
}
