//! Reads what AWS holds for a cluster (the edge: describe calls only, never a write).

use aws_config::SdkConfig;
use aws_sdk_ec2::error::ProvideErrorMetadata;

use super::desired::{
    AsgSettings, Attribute, BlockDeviceMapping, Desired, Ebs, HealthCheck, Image, InstanceProfile,
    LaunchTemplateData, LaunchTemplateRef, LifecycleHook, MetadataOptions, PrivateDnsNameOptions,
    Tag, TagSpecification, TargetGroupIdentity,
};
use super::plan::{
    Observed, ObservedGroup, ObservedLaunchTemplate, ObservedListener, ObservedLoadBalancer,
    ObservedSsm, ObservedTargetGroup,
};
use crate::error::{Error, Result};

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

/// The AMI the launch templates get: the pinned id, or the parameter's value now.
pub async fn resolve_image(c: &Clients, image: &Image) -> Result<String> {
    match image {
        Image::Ami(id) => Ok(id.clone()),
        Image::Parameter(p) => {
            let out = c
                .ssm
                .get_parameter()
                .name(p)
                .send()
                .await
                .map_err(|e| {
                    if e.as_service_error().is_some_and(|s| s.is_parameter_not_found()) {
                        Error::Runtime(format!(
                            "spec.image.ssmParameter {p} does not exist in this region: bake the image first (`haimg bake`), or pin spec.image.ami"
                        ))
                    } else {
                        Error::aws(format!("ssm GetParameter {p}"))(e)
                    }
                })?;
            let v = out.parameter().and_then(|p| p.value()).unwrap_or_default();
            if !v.starts_with("ami-") {
                return Err(Error::Runtime(format!(
                    "spec.image.ssmParameter {p} holds {v:?}, not an AMI id"
                )));
            }
            Ok(v.to_string())
        }
    }
}

fn elb_tags(t: &[aws_sdk_elasticloadbalancingv2::types::Tag]) -> Vec<Tag> {
    t.iter()
        .map(|t| Tag {
            key: t.key().unwrap_or_default().into(),
            value: t.value().unwrap_or_default().into(),
        })
        .collect()
}

fn ec2_tags(t: &[aws_sdk_ec2::types::Tag]) -> Vec<Tag> {
    t.iter()
        .map(|t| Tag {
            key: t.key().unwrap_or_default().into(),
            value: t.value().unwrap_or_default().into(),
        })
        .collect()
}

/// The load balancer, target group and listener named by the spec, with their tags.
pub async fn api(
    c: &Clients,
    lb_name: &str,
    tg_name: &str,
    port: i32,
) -> Result<(
    Option<ObservedLoadBalancer>,
    Option<ObservedTargetGroup>,
    Option<ObservedListener>,
)> {
    let lb = match c.elb.describe_load_balancers().names(lb_name).send().await {
        Ok(o) => o.load_balancers().first().cloned(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_load_balancer_not_found_exception()) =>
        {
            None
        }
        Err(e) => return Err(Error::aws(format!("elbv2 DescribeLoadBalancers {lb_name}"))(e)),
    };
    let tg = match c.elb.describe_target_groups().names(tg_name).send().await {
        Ok(o) => o.target_groups().first().cloned(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_target_group_not_found_exception()) =>
        {
            None
        }
        Err(e) => {
            return Err(Error::aws(format!("elbv2 DescribeTargetGroups {tg_name}"))(
                e,
            ))
        }
    };
    let listener = match &lb {
        Some(lb) => {
            let arn = lb.load_balancer_arn().unwrap_or_default();
            let out = c
                .elb
                .describe_listeners()
                .load_balancer_arn(arn)
                .send()
                .await
                .map_err(Error::aws(format!("elbv2 DescribeListeners {lb_name}")))?;
            out.listeners()
                .iter()
                .find(|l| l.port() == Some(port))
                .cloned()
        }
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
        c.elb
            .describe_tags()
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
            .map(|d| elb_tags(d.tags()))
            .unwrap_or_default()
    };
    let lb = lb.map(|l| ObservedLoadBalancer {
        arn: l.load_balancer_arn().unwrap_or_default().into(),
        r#type: l
            .r#type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        scheme: l
            .scheme()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
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
            let attrs = c
                .elb
                .describe_target_group_attributes()
                .target_group_arn(&arn)
                .send()
                .await
                .map_err(Error::aws(format!(
                    "elbv2 DescribeTargetGroupAttributes {tg_name}"
                )))?;
            Some(ObservedTargetGroup {
                identity: TargetGroupIdentity {
                    protocol: t
                        .protocol()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                    port: t.port().unwrap_or_default(),
                    vpc_id: t.vpc_id().unwrap_or_default().into(),
                    target_type: t
                        .target_type()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                },
                health_check: HealthCheck {
                    health_check_enabled: t.health_check_enabled().unwrap_or(false),
                    health_check_protocol: t
                        .health_check_protocol()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                    health_check_port: t.health_check_port().unwrap_or_default().into(),
                    health_check_path: t.health_check_path().unwrap_or_default().into(),
                    health_check_interval_seconds: t
                        .health_check_interval_seconds()
                        .unwrap_or_default(),
                    health_check_timeout_seconds: t
                        .health_check_timeout_seconds()
                        .unwrap_or_default(),
                    healthy_threshold_count: t.healthy_threshold_count().unwrap_or_default(),
                    unhealthy_threshold_count: t.unhealthy_threshold_count().unwrap_or_default(),
                    matcher: t
                        .matcher()
                        .and_then(|m| m.http_code())
                        .unwrap_or_default()
                        .into(),
                },
                attributes: attrs
                    .attributes()
                    .iter()
                    .map(|a| Attribute {
                        key: a.key().unwrap_or_default().into(),
                        value: a.value().unwrap_or_default().into(),
                    })
                    .collect(),
                tags: tags(Some(&arn)),
                arn,
            })
        }
    };
    let listener = listener.map(|l| ObservedListener {
        arn: l.listener_arn().unwrap_or_default().into(),
        protocol: l
            .protocol()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
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

fn data_of(d: &aws_sdk_ec2::types::ResponseLaunchTemplateData) -> LaunchTemplateData {
    LaunchTemplateData {
        image_id: d.image_id().unwrap_or_default().into(),
        instance_type: d
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        iam_instance_profile: InstanceProfile {
            name: d
                .iam_instance_profile()
                .and_then(|p| p.name())
                .unwrap_or_default()
                .into(),
        },
        security_group_ids: d.security_group_ids().to_vec(),
        metadata_options: {
            let m = d.metadata_options();
            MetadataOptions {
                http_endpoint: m
                    .and_then(|m| m.http_endpoint())
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default(),
                http_tokens: m
                    .and_then(|m| m.http_tokens())
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default(),
                http_put_response_hop_limit: m
                    .and_then(|m| m.http_put_response_hop_limit())
                    .unwrap_or_default(),
                instance_metadata_tags: m
                    .and_then(|m| m.instance_metadata_tags())
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default(),
            }
        },
        private_dns_name_options: {
            let p = d.private_dns_name_options();
            PrivateDnsNameOptions {
                hostname_type: p
                    .and_then(|p| p.hostname_type())
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default(),
                enable_resource_name_dns_a_record: p
                    .and_then(|p| p.enable_resource_name_dns_a_record())
                    .unwrap_or_default(),
                enable_resource_name_dns_aaaa_record: p
                    .and_then(|p| p.enable_resource_name_dns_aaaa_record())
                    .unwrap_or_default(),
            }
        },
        block_device_mappings: d
            .block_device_mappings()
            .iter()
            .map(|b| {
                let e = b.ebs();
                BlockDeviceMapping {
                    device_name: b.device_name().unwrap_or_default().into(),
                    ebs: Ebs {
                        volume_size: e.and_then(|e| e.volume_size()).unwrap_or_default(),
                        volume_type: e
                            .and_then(|e| e.volume_type())
                            .map(|v| v.as_str().to_string())
                            .unwrap_or_default(),
                        encrypted: e.and_then(|e| e.encrypted()).unwrap_or_default(),
                        delete_on_termination: e
                            .and_then(|e| e.delete_on_termination())
                            .unwrap_or_default(),
                    },
                }
            })
            .collect(),
        tag_specifications: d
            .tag_specifications()
            .iter()
            .map(|t| TagSpecification {
                resource_type: t
                    .resource_type()
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_default(),
                tags: ec2_tags(t.tags()),
            })
            .collect(),
        user_data: d.user_data().unwrap_or_default().into(),
    }
}

/// Launch templates by name, with their default version's content.
pub async fn launch_templates(
    c: &Clients,
    names: &[String],
) -> Result<Vec<(String, ObservedLaunchTemplate)>> {
    if names.is_empty() {
        return Ok(vec![]);
    }
    let out = c
        .ec2
        .describe_launch_templates()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("launch-template-name")
                .set_values(Some(names.to_vec()))
                .build(),
        )
        .send()
        .await
        .map_err(Error::aws(format!(
            "ec2 DescribeLaunchTemplates {}",
            names.join(",")
        )))?;
    let mut found = Vec::new();
    for t in out.launch_templates() {
        let name = t.launch_template_name().unwrap_or_default().to_string();
        let id = t.launch_template_id().unwrap_or_default().to_string();
        let v = c
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(&id)
            .versions("$Default")
            .send()
            .await
            .map_err(Error::aws(format!(
                "ec2 DescribeLaunchTemplateVersions {name}"
            )))?;
        let default_data = v
            .launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data())
            .map(data_of)
            .ok_or_else(|| {
                Error::Runtime(format!("launch template {name} has no default version"))
            })?;
        found.push((
            name,
            ObservedLaunchTemplate {
                id,
                default_version: t.default_version_number().unwrap_or_default(),
                latest_version: t.latest_version_number().unwrap_or_default(),
                default_data,
                tags: ec2_tags(t.tags()),
            },
        ));
    }
    Ok(found)
}

/// Auto Scaling groups by name, with hooks, suspended processes and tags.
pub async fn groups(
    c: &Clients,
    names: &[String],
) -> Result<
    Vec<(
        String,
        ObservedGroup,
        aws_sdk_autoscaling::types::AutoScalingGroup,
    )>,
> {
    if names.is_empty() {
        return Ok(vec![]);
    }
    let out = c
        .asg
        .describe_auto_scaling_groups()
        .set_auto_scaling_group_names(Some(names.to_vec()))
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling DescribeAutoScalingGroups {}",
            names.join(",")
        )))?;
    let mut found = Vec::new();
    for g in out.auto_scaling_groups() {
        let name = g.auto_scaling_group_name().unwrap_or_default().to_string();
        let hooks = c
            .asg
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(&name)
            .send()
            .await
            .map_err(Error::aws(format!(
                "autoscaling DescribeLifecycleHooks {name}"
            )))?;
        let lt = g.launch_template();
        found.push((
            name,
            ObservedGroup {
                settings: AsgSettings {
                    launch_template: LaunchTemplateRef {
                        launch_template_name: lt
                            .and_then(|l| l.launch_template_name())
                            .unwrap_or_default()
                            .into(),
                        version: lt.and_then(|l| l.version()).unwrap_or_default().into(),
                    },
                    min_size: g.min_size().unwrap_or_default(),
                    max_size: g.max_size().unwrap_or_default(),
                    desired_capacity: g.desired_capacity().unwrap_or_default(),
                    vpc_zone_identifier: g.vpc_zone_identifier().unwrap_or_default().into(),
                    health_check_type: g.health_check_type().unwrap_or_default().into(),
                    health_check_grace_period: g.health_check_grace_period().unwrap_or_default(),
                    termination_policies: g.termination_policies().to_vec(),
                },
                target_group_arns: g.target_group_arns().to_vec(),
                hooks: hooks
                    .lifecycle_hooks()
                    .iter()
                    .map(|h| LifecycleHook {
                        lifecycle_hook_name: h.lifecycle_hook_name().unwrap_or_default().into(),
                        lifecycle_transition: h.lifecycle_transition().unwrap_or_default().into(),
                        heartbeat_timeout: h.heartbeat_timeout().unwrap_or_default(),
                        default_result: h.default_result().unwrap_or_default().into(),
                    })
                    .collect(),
                suspended: g
                    .suspended_processes()
                    .iter()
                    .filter_map(|p| p.process_name().map(str::to_string))
                    .collect(),
                tags: g
                    .tags()
                    .iter()
                    .map(|t| Tag {
                        key: t.key().unwrap_or_default().into(),
                        value: t.value().unwrap_or_default().into(),
                    })
                    .collect(),
                status: g.status().map(str::to_string),
            },
            g.clone(),
        ));
    }
    Ok(found)
}

/// The names of the Auto Scaling groups tagged `haimg:cluster=<cluster>`.
pub async fn tagged_groups(c: &Clients, cluster: &str) -> Result<Vec<String>> {
    use super::desired::CLUSTER_TAG;
    let filter = |name: &str, value: &str| {
        aws_sdk_autoscaling::types::Filter::builder()
            .name(name)
            .values(value)
            .build()
    };
    let mut names: Vec<String> = Vec::new();
    let mut pages = c
        .asg
        .describe_tags()
        .filters(filter("key", CLUSTER_TAG))
        .filters(filter("value", cluster))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(Error::aws(format!(
            "autoscaling DescribeTags {CLUSTER_TAG}={cluster}"
        )))?;
        for t in page.tags() {
            if t.key() == Some(CLUSTER_TAG) && t.value() == Some(cluster) {
                if let Some(id) = t.resource_id() {
                    if !names.iter().any(|x| x == id) {
                        names.push(id.to_string());
                    }
                }
            }
        }
    }
    Ok(names)
}

/// `P/cluster`'s owner, if the marker exists.
pub async fn marker(c: &Clients, prefix: &str) -> Result<Option<String>> {
    let name = format!("{prefix}/{}", crate::contract::layout::CLUSTER);
    match c.ssm.get_parameter().name(&name).send().await {
        Ok(o) => {
            let v = o.parameter().and_then(|p| p.value()).unwrap_or_default();
            let owner = serde_json::from_str::<serde_json::Value>(v)
                .ok()
                .and_then(|v| v["cluster"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("<unreadable {name}>"));
            Ok(Some(owner))
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::aws(format!("ssm GetParameter {name}"))(e)),
    }
}

/// haimg's parameters under the prefix (full names), by [`crate::contract::layout::is_layout_name`].
pub async fn layout_parameters(c: &Clients, prefix: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut pages = c
        .ssm
        .get_parameters_by_path()
        .path(prefix)
        .recursive(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(Error::aws(format!("ssm GetParametersByPath {prefix}")))?;
        for p in page.parameters() {
            let name = p.name().unwrap_or_default();
            if let Some(rel) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
                if crate::contract::layout::is_layout_name(rel) {
                    names.push(name.to_string());
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Everything the plan compares.
pub async fn observe(c: &Clients, d: &Desired) -> Result<Observed> {
    let lt_names: Vec<String> = d
        .groups
        .iter()
        .map(|g| g.launch_template.launch_template_name.clone())
        .collect();
    let group_names: Vec<String> = d
        .groups
        .iter()
        .map(|g| g.asg.auto_scaling_group_name.clone())
        .collect();
    let api_fut = async {
        match &d.api {
            Some(a) => {
                api(
                    c,
                    &a.load_balancer.name,
                    &a.target_group.name,
                    a.listener.port,
                )
                .await
            }
            None => Ok((None, None, None)),
        }
    };
    let (api, lts, groups) = tokio::try_join!(
        api_fut,
        launch_templates(c, &lt_names),
        groups(c, &group_names)
    )?;
    let (load_balancer, target_group, listener) = api;
    let mut o = Observed {
        load_balancer,
        target_group,
        listener,
        launch_templates: lts.into_iter().collect(),
        groups: groups.into_iter().map(|(n, g, _)| (n, g)).collect(),
        ssm: ObservedSsm::default(),
    };
    if let Some(prefix) = &d.ssm_prefix {
        o.ssm.marker = marker(c, prefix).await?;
        let master_exists = d
            .groups
            .iter()
            .any(|g| g.asg.is_master() && o.groups.contains_key(&g.asg.auto_scaling_group_name));
        if d.masters_in_asg && !master_exists {
            o.ssm.leftovers = layout_parameters(c, prefix)
                .await?
                .into_iter()
                .filter(|n| !n.ends_with(&format!("/{}", crate::contract::layout::CLUSTER)))
                .collect();
        }
    }
    Ok(o)
}

/// An AWS error's code, for decisions (the SDK's metadata).
pub fn code<E: ProvideErrorMetadata>(e: &E) -> Option<&str> {
    e.code()
}
