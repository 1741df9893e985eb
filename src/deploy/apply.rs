//! Carries out a plan (the edge: every write `up` makes is here). One change at a time, in
//! the plan's order; each names its resource in errors. ARNs and ids of what is created
//! are recorded as it goes, so later changes can refer to them.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::ProvideErrorMetadata;

use super::desired::{self, Tag, CLUSTER_TAG};
use super::observe::Clients;
use super::plan::{resolve_ref, Change, Kind, Observed};
use crate::error::{Error, Result};

/// What has been applied so far (shared with the Ctrl-C handler).
pub type Progress = Arc<Mutex<Vec<String>>>;

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

/// Runs `call` until it succeeds, fails for real, or has settled for `bound`.
pub async fn settle<T, E, F, Fut>(what: &str, bound: Duration, mut call: F) -> Result<T>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let deadline = Instant::now() + bound;
    let mut delay = Duration::from_millis(500);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if is_settling(e.code(), e.message()) && Instant::now() + delay < deadline => {
                tracing::debug!(what, code = e.code(), "not visible yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            Err(e) => return Err(Error::aws(what)(e)),
        }
    }
}

const SETTLE: Duration = Duration::from_secs(60);

fn elb_tags(tags: &[Tag]) -> Vec<aws_sdk_elasticloadbalancingv2::types::Tag> {
    tags.iter()
        .map(|t| {
            aws_sdk_elasticloadbalancingv2::types::Tag::builder()
                .key(&t.key)
                .value(&t.value)
                .build()
        })
        .collect()
}

fn ec2_tags(tags: &[Tag]) -> Vec<aws_sdk_ec2::types::Tag> {
    tags.iter()
        .map(|t| {
            aws_sdk_ec2::types::Tag::builder()
                .key(&t.key)
                .value(&t.value)
                .build()
        })
        .collect()
}

fn asg_tags(group: &str, tags: &[Tag]) -> Vec<aws_sdk_autoscaling::types::Tag> {
    tags.iter()
        .map(|t| {
            aws_sdk_autoscaling::types::Tag::builder()
                .resource_id(group)
                .resource_type("auto-scaling-group")
                .key(&t.key)
                .value(&t.value)
                // Instances and volumes get their tags from the launch template.
                .propagate_at_launch(false)
                .build()
        })
        .collect()
}

fn launch_template_data(
    d: &super::desired::LaunchTemplateData,
) -> aws_sdk_ec2::types::RequestLaunchTemplateData {
    use aws_sdk_ec2::types::*;
    RequestLaunchTemplateData::builder()
        .image_id(&d.image_id)
        .instance_type(InstanceType::from(d.instance_type.as_str()))
        .iam_instance_profile(
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name(&d.iam_instance_profile.name)
                .build(),
        )
        .set_security_group_ids(Some(d.security_group_ids.clone()))
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::from(
                    d.metadata_options.http_endpoint.as_str(),
                ))
                .http_tokens(LaunchTemplateHttpTokensState::from(
                    d.metadata_options.http_tokens.as_str(),
                ))
                .http_put_response_hop_limit(d.metadata_options.http_put_response_hop_limit)
                .instance_metadata_tags(LaunchTemplateInstanceMetadataTagsState::from(
                    d.metadata_options.instance_metadata_tags.as_str(),
                ))
                .build(),
        )
        .private_dns_name_options(
            LaunchTemplatePrivateDnsNameOptionsRequest::builder()
                .hostname_type(HostnameType::from(
                    d.private_dns_name_options.hostname_type.as_str(),
                ))
                .enable_resource_name_dns_a_record(
                    d.private_dns_name_options.enable_resource_name_dns_a_record,
                )
                .enable_resource_name_dns_aaaa_record(
                    d.private_dns_name_options
                        .enable_resource_name_dns_aaaa_record,
                )
                .build(),
        )
        .set_block_device_mappings(Some(
            d.block_device_mappings
                .iter()
                .map(|b| {
                    LaunchTemplateBlockDeviceMappingRequest::builder()
                        .device_name(&b.device_name)
                        .ebs(
                            LaunchTemplateEbsBlockDeviceRequest::builder()
                                .volume_size(b.ebs.volume_size)
                                .volume_type(VolumeType::from(b.ebs.volume_type.as_str()))
                                .encrypted(b.ebs.encrypted)
                                .delete_on_termination(b.ebs.delete_on_termination)
                                .build(),
                        )
                        .build()
                })
                .collect(),
        ))
        .set_tag_specifications(Some(
            d.tag_specifications
                .iter()
                .map(|t| {
                    LaunchTemplateTagSpecificationRequest::builder()
                        .resource_type(ResourceType::from(t.resource_type.as_str()))
                        .set_tags(Some(ec2_tags(&t.tags)))
                        .build()
                })
                .collect(),
        ))
        .user_data(&d.user_data)
        .build()
}

fn hook_spec(
    h: &super::desired::LifecycleHook,
) -> aws_sdk_autoscaling::types::LifecycleHookSpecification {
    aws_sdk_autoscaling::types::LifecycleHookSpecification::builder()
        .lifecycle_hook_name(&h.lifecycle_hook_name)
        .lifecycle_transition(&h.lifecycle_transition)
        .heartbeat_timeout(h.heartbeat_timeout)
        .default_result(&h.default_result)
        .build()
}

async fn put_hook(c: &Clients, group: &str, h: &super::desired::LifecycleHook) -> Result<()> {
    let what = format!(
        "autoscaling PutLifecycleHook {group}/{}",
        h.lifecycle_hook_name
    );
    settle(&what, SETTLE, || {
        c.asg
            .put_lifecycle_hook()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(&h.lifecycle_hook_name)
            .lifecycle_transition(&h.lifecycle_transition)
            .heartbeat_timeout(h.heartbeat_timeout)
            .default_result(&h.default_result)
            .send()
    })
    .await?;
    Ok(())
}

/// Applies one change; `refs` learns the ARNs and ids of what it creates.
async fn apply_one(c: &Clients, change: &Change, refs: &mut Observed) -> Result<()> {
    match change {
        Change::CreateLoadBalancer(lb) => create_load_balancer(c, lb, refs).await?,
        Change::CreateTargetGroup(tg) => create_target_group(c, tg, refs).await?,
        Change::ModifyHealthCheck {
            target_group, to, ..
        } => modify_health_check(c, target_group, to, refs).await?,
        Change::SetAttributes {
            target_group,
            attributes,
            ..
        } => set_attributes(c, target_group, attributes, refs).await?,
        Change::CreateListener(l) | Change::ModifyListener { to: l, .. } => {
            put_listener(c, change, l, refs).await?
        }
        Change::AddTags {
            kind,
            name,
            target,
            tags,
        } => add_tags(c, kind, name, target, tags).await?,
        Change::CreateLaunchTemplate(lt) => create_launch_template(c, lt).await?,
        Change::NewLaunchTemplateVersion {
            name,
            description,
            data,
            ..
        } => new_launch_template_version(c, name, description, data).await?,
        Change::DeleteLeftovers { names } => {
            crate::aws::delete_parameters(&c.ssm, names, |_| {}).await?;
        }
        Change::CreateGroup(g) => create_group(c, g, refs).await?,
        Change::UpdateGroup { name, to, .. } => update_group(c, name, to).await?,
        Change::AttachTargetGroups { group, arns } => {
            attach_target_groups(c, group, arns, refs).await?
        }
        Change::PutLifecycleHook { group, hook } => put_hook(c, group, hook).await?,
        Change::SuspendAzRebalance { group } => suspend_az_rebalance(c, group).await?,
        Change::WriteMarker { name, cluster } => write_marker(c, name, cluster).await?,
    }
    Ok(())
}

/// The cluster's NLB; `refs` learns its ARN and DNS name.
async fn create_load_balancer(
    c: &Clients,
    lb: &desired::LoadBalancer,
    refs: &mut Observed,
) -> Result<()> {
    use aws_sdk_elasticloadbalancingv2::types as elb;
    let out = c
        .elb
        .create_load_balancer()
        .name(&lb.name)
        .set_subnets(Some(lb.subnets.clone()))
        .scheme(elb::LoadBalancerSchemeEnum::from(lb.scheme.as_str()))
        .r#type(elb::LoadBalancerTypeEnum::from(lb.r#type.as_str()))
        .ip_address_type(elb::IpAddressType::from(lb.ip_address_type.as_str()))
        .set_tags(Some(elb_tags(&lb.tags)))
        .send()
        .await
        .map_err(Error::aws(format!("elbv2 CreateLoadBalancer {}", lb.name)))?;
    let arn = out
        .load_balancers()
        .first()
        .and_then(|l| l.load_balancer_arn())
        .unwrap_or_default();
    refs.load_balancer = Some(super::plan::ObservedLoadBalancer {
        arn: arn.into(),
        r#type: lb.r#type.clone(),
        scheme: lb.scheme.clone(),
        subnets: lb.subnets.clone(),
        tags: lb.tags.clone(),
    });
    Ok(())
}

/// The API servers' target group; `refs` learns its ARN.
async fn create_target_group(
    c: &Clients,
    tg: &desired::TargetGroup,
    refs: &mut Observed,
) -> Result<()> {
    use aws_sdk_elasticloadbalancingv2::types as elb;
    let out = c
        .elb
        .create_target_group()
        .name(&tg.name)
        .protocol(elb::ProtocolEnum::from(tg.protocol.as_str()))
        .port(tg.port)
        .vpc_id(&tg.vpc_id)
        .target_type(elb::TargetTypeEnum::from(tg.target_type.as_str()))
        .health_check_enabled(tg.health_check_enabled)
        .health_check_protocol(elb::ProtocolEnum::from(tg.health_check_protocol.as_str()))
        .health_check_port(&tg.health_check_port)
        .health_check_path(&tg.health_check_path)
        .health_check_interval_seconds(tg.health_check_interval_seconds)
        .health_check_timeout_seconds(tg.health_check_timeout_seconds)
        .healthy_threshold_count(tg.healthy_threshold_count)
        .unhealthy_threshold_count(tg.unhealthy_threshold_count)
        .matcher(
            elb::Matcher::builder()
                .http_code(&tg.matcher.http_code)
                .build(),
        )
        .set_tags(Some(elb_tags(&tg.tags)))
        .send()
        .await
        .map_err(Error::aws(format!("elbv2 CreateTargetGroup {}", tg.name)))?;
    let arn = out
        .target_groups()
        .first()
        .and_then(|t| t.target_group_arn())
        .unwrap_or_default();
    refs.target_group = Some(super::plan::ObservedTargetGroup {
        arn: arn.into(),
        identity: tg.identity(),
        health_check: tg.health_check(),
        attributes: vec![],
        tags: tg.tags.clone(),
    });
    Ok(())
}

/// The target group's health check, as the spec wants it.
async fn modify_health_check(
    c: &Clients,
    target_group: &str,
    to: &desired::HealthCheck,
    refs: &Observed,
) -> Result<()> {
    use aws_sdk_elasticloadbalancingv2::types as elb;
    let arn = resolve_ref(&format!("haimg-ref:target-group:{target_group}"), refs)?;
    c.elb
        .modify_target_group()
        .target_group_arn(arn)
        .health_check_enabled(to.health_check_enabled)
        .health_check_protocol(elb::ProtocolEnum::from(to.health_check_protocol.as_str()))
        .health_check_port(&to.health_check_port)
        .health_check_path(&to.health_check_path)
        .health_check_interval_seconds(to.health_check_interval_seconds)
        .health_check_timeout_seconds(to.health_check_timeout_seconds)
        .healthy_threshold_count(to.healthy_threshold_count)
        .unhealthy_threshold_count(to.unhealthy_threshold_count)
        .matcher(elb::Matcher::builder().http_code(&to.matcher).build())
        .send()
        .await
        .map_err(Error::aws(format!(
            "elbv2 ModifyTargetGroup {target_group}"
        )))?;
    Ok(())
}

/// The target group's attributes (deregistration delay, stickiness and the like).
async fn set_attributes(
    c: &Clients,
    target_group: &str,
    attributes: &[desired::Attribute],
    refs: &Observed,
) -> Result<()> {
    use aws_sdk_elasticloadbalancingv2::types as elb;
    let arn = resolve_ref(&format!("haimg-ref:target-group:{target_group}"), refs)?;
    c.elb
        .modify_target_group_attributes()
        .target_group_arn(arn)
        .set_attributes(Some(
            attributes
                .iter()
                .map(|a| {
                    elb::TargetGroupAttribute::builder()
                        .key(&a.key)
                        .value(&a.value)
                        .build()
                })
                .collect(),
        ))
        .send()
        .await
        .map_err(Error::aws(format!(
            "elbv2 ModifyTargetGroupAttributes {target_group}"
        )))?;
    Ok(())
}

/// Creates the listener, or modifies the one observed (`change` says which); `refs` learns a new one's ARN.
async fn put_listener(
    c: &Clients,
    change: &Change,
    l: &desired::Listener,
    refs: &mut Observed,
) -> Result<()> {
    use aws_sdk_elasticloadbalancingv2::types as elb;
    let lb = resolve_ref(&l.load_balancer_arn, refs)?;
    let actions = l
        .default_actions
        .iter()
        .map(|a| {
            Ok(elb::Action::builder()
                .r#type(elb::ActionTypeEnum::from(a.r#type.as_str()))
                .target_group_arn(resolve_ref(&a.target_group_arn, refs)?)
                .build())
        })
        .collect::<Result<Vec<_>>>()?;
    let what = format!("listener {}/{}", l.protocol, l.port);
    match change {
        Change::ModifyListener { arn, .. } => {
            c.elb
                .modify_listener()
                .listener_arn(arn)
                .protocol(elb::ProtocolEnum::from(l.protocol.as_str()))
                .port(l.port)
                .set_default_actions(Some(actions))
                .send()
                .await
                .map_err(Error::aws(format!("elbv2 ModifyListener {what}")))?;
        }
        _ => {
            let out = settle(&format!("elbv2 CreateListener {what}"), SETTLE, || {
                c.elb
                    .create_listener()
                    .load_balancer_arn(&lb)
                    .protocol(elb::ProtocolEnum::from(l.protocol.as_str()))
                    .port(l.port)
                    .set_default_actions(Some(actions.clone()))
                    .set_tags(Some(elb_tags(&l.tags)))
                    .send()
            })
            .await?;
            refs.listener = out
                .listeners()
                .first()
                .map(|x| super::plan::ObservedListener {
                    arn: x.listener_arn().unwrap_or_default().into(),
                    protocol: l.protocol.clone(),
                    port: l.port,
                    target_group_arns: vec![],
                    tags: l.tags.clone(),
                });
        }
    }
    Ok(())
}

/// haimg's tags on a resource that lacks them (elbv2, a launch template or a group).
async fn add_tags(c: &Clients, kind: &Kind, name: &str, target: &str, tags: &[Tag]) -> Result<()> {
    match kind {
        Kind::LoadBalancer | Kind::TargetGroup | Kind::Listener => {
            c.elb
                .add_tags()
                .resource_arns(target)
                .set_tags(Some(elb_tags(tags)))
                .send()
                .await
                .map_err(Error::aws(format!("elbv2 AddTags {} {name}", kind.noun())))?;
        }
        Kind::LaunchTemplate => {
            c.ec2
                .create_tags()
                .resources(target)
                .set_tags(Some(ec2_tags(tags)))
                .send()
                .await
                .map_err(Error::aws(format!("ec2 CreateTags launch template {name}")))?;
        }
        Kind::AutoScalingGroup => {
            c.asg
                .create_or_update_tags()
                .set_tags(Some(asg_tags(target, tags)))
                .send()
                .await
                .map_err(Error::aws(format!("autoscaling CreateOrUpdateTags {name}")))?;
        }
        Kind::Parameter => unreachable!("parameters are tagged when created"),
    }
    Ok(())
}

/// A pool's launch template, tagged with the cluster.
async fn create_launch_template(c: &Clients, lt: &desired::LaunchTemplate) -> Result<()> {
    use aws_sdk_ec2::types::{ResourceType, TagSpecification};
    let name = &lt.launch_template_name;
    c.ec2
        .create_launch_template()
        .launch_template_name(name)
        .version_description(&lt.version_description)
        .launch_template_data(launch_template_data(&lt.launch_template_data))
        .set_tag_specifications(Some(
            lt.tag_specifications
                .iter()
                .map(|t| {
                    TagSpecification::builder()
                        .resource_type(ResourceType::from(t.resource_type.as_str()))
                        .set_tags(Some(ec2_tags(&t.tags)))
                        .build()
                })
                .collect(),
        ))
        .send()
        .await
        .map_err(Error::aws(format!("ec2 CreateLaunchTemplate {name}")))?;
    Ok(())
}

/// A new launch template version, made the default.
async fn new_launch_template_version(
    c: &Clients,
    name: &str,
    description: &str,
    data: &desired::LaunchTemplateData,
) -> Result<()> {
    let out = c
        .ec2
        .create_launch_template_version()
        .launch_template_name(name)
        .version_description(description)
        .launch_template_data(launch_template_data(data))
        .send()
        .await
        .map_err(Error::aws(format!(
            "ec2 CreateLaunchTemplateVersion {name}"
        )))?;
    let version = out
        .launch_template_version()
        .and_then(|v| v.version_number())
        .ok_or_else(|| {
            Error::Runtime(format!(
                "ec2 CreateLaunchTemplateVersion {name}: no version number in the answer"
            ))
        })?;
    settle(
        &format!("ec2 ModifyLaunchTemplate {name} (default version {version})"),
        SETTLE,
        || {
            c.ec2
                .modify_launch_template()
                .launch_template_name(name)
                .default_version(version.to_string())
                .send()
        },
    )
    .await?;
    Ok(())
}

/// A pool's Auto Scaling group, with its lifecycle hooks.
async fn create_group(c: &Clients, g: &desired::AutoScalingGroup, refs: &Observed) -> Result<()> {
    let name = &g.auto_scaling_group_name;
    let tg_arns = g
        .target_group_arns
        .iter()
        .map(|a| resolve_ref(a, refs))
        .collect::<Result<Vec<_>>>()?;
    let tags: Vec<Tag> = g.tags();
    settle(
        &format!("autoscaling CreateAutoScalingGroup {name}"),
        SETTLE,
        || {
            c.asg
                .create_auto_scaling_group()
                .auto_scaling_group_name(name)
                .launch_template(
                    aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                        .launch_template_name(&g.launch_template.launch_template_name)
                        .version(&g.launch_template.version)
                        .build(),
                )
                .min_size(g.min_size)
                .max_size(g.max_size)
                .desired_capacity(g.desired_capacity)
                .vpc_zone_identifier(&g.vpc_zone_identifier)
                .health_check_type(&g.health_check_type)
                .health_check_grace_period(g.health_check_grace_period)
                .set_target_group_arns(Some(tg_arns.clone()))
                .set_termination_policies(Some(g.termination_policies.clone()))
                .set_lifecycle_hook_specification_list(Some(
                    g.lifecycle_hook_specification_list
                        .iter()
                        .map(hook_spec)
                        .collect(),
                ))
                .set_tags(Some(asg_tags(name, &tags)))
                .send()
        },
    )
    .await?;
    // The hooks are part of the create call, so no instance can terminate without
    // one; check they took (not every implementation honours the list) and put the
    // missing ones.
    let have = c
        .asg
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(name)
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling DescribeLifecycleHooks {name}"
        )))?;
    for h in &g.lifecycle_hook_specification_list {
        if !have
            .lifecycle_hooks()
            .iter()
            .any(|x| x.lifecycle_hook_name() == Some(h.lifecycle_hook_name.as_str()))
        {
            put_hook(c, name, h).await?;
        }
    }
    Ok(())
}

/// A group's sizes and settings, as the spec wants them.
async fn update_group(c: &Clients, name: &str, to: &desired::AsgSettings) -> Result<()> {
    c.asg
        .update_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                .launch_template_name(&to.launch_template.launch_template_name)
                .version(&to.launch_template.version)
                .build(),
        )
        .min_size(to.min_size)
        .max_size(to.max_size)
        .desired_capacity(to.desired_capacity)
        .vpc_zone_identifier(&to.vpc_zone_identifier)
        .health_check_type(&to.health_check_type)
        .health_check_grace_period(to.health_check_grace_period)
        .set_termination_policies(Some(to.termination_policies.clone()))
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling UpdateAutoScalingGroup {name}"
        )))?;
    Ok(())
}

/// The API servers' target group on the control plane's group.
async fn attach_target_groups(
    c: &Clients,
    group: &str,
    arns: &[String],
    refs: &Observed,
) -> Result<()> {
    let arns = arns
        .iter()
        .map(|a| resolve_ref(a, refs))
        .collect::<Result<Vec<_>>>()?;
    c.asg
        .attach_load_balancer_target_groups()
        .auto_scaling_group_name(group)
        .set_target_group_arns(Some(arns))
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling AttachLoadBalancerTargetGroups {group}"
        )))?;
    Ok(())
}

/// The control plane's group never rebalances across zones (see [`Change::SuspendAzRebalance`]).
async fn suspend_az_rebalance(c: &Clients, group: &str) -> Result<()> {
    settle(
        &format!("autoscaling SuspendProcesses {group} AZRebalance"),
        SETTLE,
        || {
            c.asg
                .suspend_processes()
                .auto_scaling_group_name(group)
                .scaling_processes("AZRebalance")
                .send()
        },
    )
    .await?;
    Ok(())
}

/// `P/cluster`: the owner marker, created only if absent.
async fn write_marker(c: &Clients, name: &str, cluster: &str) -> Result<()> {
    let value = serde_json::json!({
        "cluster": cluster,
        "createdAt": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "createdBy": format!("haimg {} up", env!("CARGO_PKG_VERSION")),
    });
    let tag = aws_sdk_ssm::types::Tag::builder()
        .key(CLUSTER_TAG)
        .value(cluster)
        .build()
        .map_err(|e| Error::Runtime(format!("ssm tag: {e}")))?;
    match c
        .ssm
        .put_parameter()
        .name(name)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .value(value.to_string())
        .overwrite(false)
        .tags(tag)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_already_exists()) => {}
        Err(e) => return Err(Error::aws(format!("ssm PutParameter {name}"))(e)),
    }
    Ok(())
}

/// Applies the changes in order, printing each to stderr as it completes; on failure the
/// error says what was done, what was not, and how to finish or undo it.
pub async fn apply(
    c: &Clients,
    cluster: &str,
    changes: &[Change],
    observed: &Observed,
    progress: Progress,
) -> Result<()> {
    let mut refs = observed.clone();
    for (i, change) in changes.iter().enumerate() {
        let started = Instant::now();
        if let Err(e) = apply_one(c, change, &mut refs).await {
            let not_done: Vec<String> = changes[i..]
                .iter()
                .map(|c| c.to_string().lines().next().unwrap_or_default().to_string())
                .collect();
            return Err(Error::Runtime(format!(
                "{e}\n{}",
                stopped_report(cluster, "up", i, &not_done)
            )));
        }
        let line = change.to_string();
        let head = line.lines().next().unwrap_or_default();
        crate::progress::raw(format!(
            "[{}/{}] {head} ({} ms)",
            i + 1,
            changes.len(),
            started.elapsed().as_millis()
        ));
        progress.lock().unwrap().push(head.to_string());
    }
    Ok(())
}

/// What to tell a user whose `up` stopped part-way.
pub fn stopped_report(cluster: &str, verb: &str, done: usize, not_done: &[String]) -> String {
    format!(
        "{verb} stopped part-way: {done} change(s) made (listed above), {} not made:\n  {}\nEverything haimg made is tagged {CLUSTER_TAG}={cluster}. Run `haimg up` again to finish (it picks up where this stopped), or `haimg down` to remove it.",
        not_done.len(),
        not_done.join("\n  ")
    )
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
