//! EC2 Auto Scaling: the cluster's groups, their lifecycle hooks, processes, tags and
//! instances, as `up`, `status` and `down` use them.

use aws_sdk_autoscaling::types as sdk;
use aws_sdk_autoscaling::Client;

use super::observed::{Instance, ObservedGroup};
use super::{settle, SETTLE};
use crate::contract::artifacts::{
    AsgSettings, AutoScalingGroup, LaunchTemplateRef, LifecycleHook, Tag, CLUSTER_TAG,
};
use crate::error::{Error, Result};

/// Group tags as Auto Scaling takes them: on the group only (instances and volumes get
/// theirs from the launch template).
fn tags_to(group: &str, tags: &[Tag]) -> Vec<sdk::Tag> {
    super::tags_to(tags, |key, value| {
        sdk::Tag::builder()
            .resource_id(group)
            .resource_type("auto-scaling-group")
            .key(key)
            .value(value)
            .propagate_at_launch(false)
            .build()
    })
}

fn launch_template_spec(lt: &LaunchTemplateRef) -> sdk::LaunchTemplateSpecification {
    sdk::LaunchTemplateSpecification::builder()
        .launch_template_name(&lt.launch_template_name)
        .version(&lt.version)
        .build()
}

fn observed(g: &sdk::AutoScalingGroup, hooks: &[sdk::LifecycleHook]) -> ObservedGroup {
    let lt = g.launch_template();
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
        tags: super::tags_from(g.tags(), |t| (t.key(), t.value())),
        status: g.status().map(str::to_string),
    }
}

fn instances(g: &sdk::AutoScalingGroup) -> Vec<Instance> {
    g.instances()
        .iter()
        .map(|i| Instance {
            id: i.instance_id().unwrap_or_default().into(),
            availability_zone: i.availability_zone().unwrap_or_default().into(),
            lifecycle_state: i
                .lifecycle_state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            health: i.health_status().unwrap_or_default().into(),
            launch_template_version: i
                .launch_template()
                .and_then(|l| l.version())
                .unwrap_or_default()
                .into(),
        })
        .collect()
}

/// The lifecycle hooks of the group `name`.
async fn hooks(c: &Client, name: &str) -> Result<Vec<sdk::LifecycleHook>> {
    Ok(c.describe_lifecycle_hooks()
        .auto_scaling_group_name(name)
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling DescribeLifecycleHooks {name}"
        )))?
        .lifecycle_hooks()
        .to_vec())
}

/// Auto Scaling groups by name (those that exist), with hooks, suspended processes, tags
/// and instances.
pub async fn groups(
    c: &Client,
    names: &[String],
) -> Result<Vec<(String, ObservedGroup, Vec<Instance>)>> {
    if names.is_empty() {
        return Ok(vec![]);
    }
    let out = c
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
        let hooks = hooks(c, &name).await?;
        found.push((name, observed(g, &hooks), instances(g)));
    }
    Ok(found)
}

/// The names of the groups tagged `haimg:cluster=<cluster>`.
pub async fn tagged_groups(c: &Client, cluster: &str) -> Result<Vec<String>> {
    let filter = |name: &str, value: &str| sdk::Filter::builder().name(name).values(value).build();
    let mut names: Vec<String> = Vec::new();
    let mut pages = c
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

/// Creates the group `g` (its target group ARNs resolved), with its lifecycle hooks.
pub async fn create_group(c: &Client, g: &AutoScalingGroup) -> Result<()> {
    let name = &g.auto_scaling_group_name;
    settle(
        &format!("autoscaling CreateAutoScalingGroup {name}"),
        SETTLE,
        || {
            c.create_auto_scaling_group()
                .auto_scaling_group_name(name)
                .launch_template(launch_template_spec(&g.launch_template))
                .min_size(g.min_size)
                .max_size(g.max_size)
                .desired_capacity(g.desired_capacity)
                .vpc_zone_identifier(&g.vpc_zone_identifier)
                .health_check_type(&g.health_check_type)
                .health_check_grace_period(g.health_check_grace_period)
                .set_target_group_arns(Some(g.target_group_arns.clone()))
                .set_termination_policies(Some(g.termination_policies.clone()))
                .set_lifecycle_hook_specification_list(Some(
                    g.lifecycle_hook_specification_list
                        .iter()
                        .map(|h| {
                            sdk::LifecycleHookSpecification::builder()
                                .lifecycle_hook_name(&h.lifecycle_hook_name)
                                .lifecycle_transition(&h.lifecycle_transition)
                                .heartbeat_timeout(h.heartbeat_timeout)
                                .default_result(&h.default_result)
                                .build()
                        })
                        .collect(),
                ))
                .set_tags(Some(tags_to(name, &g.tags())))
                .send()
        },
    )
    .await?;
    // The hooks are part of the create call, so no instance can terminate without one;
    // check they took (not every implementation honours the list) and put the missing ones.
    let have = hooks(c, name).await?;
    for h in &g.lifecycle_hook_specification_list {
        if !have
            .iter()
            .any(|x| x.lifecycle_hook_name() == Some(h.lifecycle_hook_name.as_str()))
        {
            put_hook(c, name, h).await?;
        }
    }
    Ok(())
}

/// Creates or replaces the lifecycle hook `h` of `group`.
pub async fn put_hook(c: &Client, group: &str, h: &LifecycleHook) -> Result<()> {
    let what = format!(
        "autoscaling PutLifecycleHook {group}/{}",
        h.lifecycle_hook_name
    );
    settle(&what, SETTLE, || {
        c.put_lifecycle_hook()
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

/// Gives the group `name` the sizes and settings `to`.
pub async fn update_group(c: &Client, name: &str, to: &AsgSettings) -> Result<()> {
    c.update_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(launch_template_spec(&to.launch_template))
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

/// Registers the group's instances with the target groups `arns`.
pub async fn attach_target_groups(c: &Client, group: &str, arns: &[String]) -> Result<()> {
    c.attach_load_balancer_target_groups()
        .auto_scaling_group_name(group)
        .set_target_group_arns(Some(arns.to_vec()))
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling AttachLoadBalancerTargetGroups {group}"
        )))?;
    Ok(())
}

/// Suspends the group's AZRebalance process.
pub async fn suspend_az_rebalance(c: &Client, group: &str) -> Result<()> {
    settle(
        &format!("autoscaling SuspendProcesses {group} AZRebalance"),
        SETTLE,
        || {
            c.suspend_processes()
                .auto_scaling_group_name(group)
                .scaling_processes("AZRebalance")
                .send()
        },
    )
    .await?;
    Ok(())
}

/// Adds (or overwrites) `tags` on the group `group`.
pub async fn add_tags(c: &Client, group: &str, tags: &[Tag]) -> Result<()> {
    c.create_or_update_tags()
        .set_tags(Some(tags_to(group, tags)))
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling CreateOrUpdateTags {group}"
        )))?;
    Ok(())
}

/// Starts deleting the group `name` and its instances (force). A group that is gone, or
/// whose deletion already runs (a `down` that was interrupted), is not an error: the
/// caller waits for it to go.
pub async fn delete_group(c: &Client, name: &str) -> Result<()> {
    match c
        .delete_auto_scaling_group()
        .auto_scaling_group_name(name)
        .force_delete(true)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Auto Scaling names a missing group only in the message of a ValidationError.
        Err(e)
            if aws_sdk_autoscaling::error::ProvideErrorMetadata::code(&e)
                == Some("ValidationError")
                && aws_sdk_autoscaling::error::ProvideErrorMetadata::message(&e)
                    .is_some_and(|m| m.contains("not found")) =>
        {
            Ok(())
        }
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_scaling_activity_in_progress_fault() || s.is_resource_in_use_fault()
            }) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::aws(format!(
            "autoscaling DeleteAutoScalingGroup {name}"
        ))(e)),
    }
}

/// The ids of the instances in the group `name`.
pub async fn instance_ids(c: &Client, name: &str) -> Result<Vec<String>> {
    let out = c
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling DescribeAutoScalingGroups {name}"
        )))?;
    Ok(out
        .auto_scaling_groups()
        .iter()
        .flat_map(|g| g.instances())
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect())
}

/// Marks the instance Unhealthy now, past the group's grace period, so the group replaces
/// it (a node that gave up joining).
pub async fn mark_unhealthy(c: &Client, instance_id: &str) -> Result<()> {
    c.set_instance_health()
        .instance_id(instance_id)
        .health_status("Unhealthy")
        // The group's health check grace period must not protect a node that has given up.
        .should_respect_grace_period(false)
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling SetInstanceHealth {instance_id}"
        )))?;
    Ok(())
}

/// The instance's lifecycle hook `hook` of `group` is done: EC2 may go on (CONTINUE).
pub async fn complete_lifecycle_action(
    c: &Client,
    group: &str,
    hook: &str,
    instance_id: &str,
) -> Result<()> {
    c.complete_lifecycle_action()
        .auto_scaling_group_name(group)
        .lifecycle_hook_name(hook)
        .instance_id(instance_id)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling CompleteLifecycleAction {group}/{hook}"
        )))?;
    Ok(())
}

/// More time for the instance's lifecycle action (one more heartbeat timeout).
pub async fn record_heartbeat(
    c: &Client,
    group: &str,
    hook: &str,
    instance_id: &str,
) -> Result<()> {
    c.record_lifecycle_action_heartbeat()
        .auto_scaling_group_name(group)
        .lifecycle_hook_name(hook)
        .instance_id(instance_id)
        .send()
        .await
        .map_err(Error::aws(format!(
            "autoscaling RecordLifecycleActionHeartbeat {group}/{hook}"
        )))?;
    Ok(())
}
