//! EC2 launch templates: what `up` creates and versions, and `down` deletes.
//!
//! The one two-way mapping of a launch template's content: [`request_data`] (haimg's
//! [`LaunchTemplateData`] to what EC2 takes) and [`data_of`] (what EC2 answers to haimg's
//! type), so a field added to the type is added here, in both directions.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types as sdk;
use aws_sdk_ec2::Client;

use super::observed::{Ec2Instance, ObservedLaunchTemplate};
use super::{settle, text, SETTLE};
use crate::contract::artifacts::{
    BlockDeviceMapping, Ebs, InstanceProfile, LaunchTemplate, LaunchTemplateData, MetadataOptions,
    PrivateDnsNameOptions, Tag, TagSpecification,
};
use crate::error::{Error, Result};

fn tags_to(tags: &[Tag]) -> Vec<sdk::Tag> {
    super::tags_to(tags, |k, v| sdk::Tag::builder().key(k).value(v).build())
}

fn tags_from(tags: &[sdk::Tag]) -> Vec<Tag> {
    super::tags_from(tags, |t| (t.key(), t.value()))
}

/// haimg's launch template content as EC2 takes it.
pub fn request_data(d: &LaunchTemplateData) -> sdk::RequestLaunchTemplateData {
    let metadata = &d.metadata_options;
    let dns = &d.private_dns_name_options;
    sdk::RequestLaunchTemplateData::builder()
        .image_id(&d.image_id)
        .instance_type(sdk::InstanceType::from(d.instance_type.as_str()))
        .iam_instance_profile(
            sdk::LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name(&d.iam_instance_profile.name)
                .build(),
        )
        .set_security_group_ids(Some(d.security_group_ids.clone()))
        .metadata_options(
            sdk::LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_endpoint(sdk::LaunchTemplateInstanceMetadataEndpointState::from(
                    metadata.http_endpoint.as_str(),
                ))
                .http_tokens(sdk::LaunchTemplateHttpTokensState::from(
                    metadata.http_tokens.as_str(),
                ))
                .http_put_response_hop_limit(metadata.http_put_response_hop_limit)
                .instance_metadata_tags(sdk::LaunchTemplateInstanceMetadataTagsState::from(
                    metadata.instance_metadata_tags.as_str(),
                ))
                .build(),
        )
        .private_dns_name_options(
            sdk::LaunchTemplatePrivateDnsNameOptionsRequest::builder()
                .hostname_type(sdk::HostnameType::from(dns.hostname_type.as_str()))
                .enable_resource_name_dns_a_record(dns.enable_resource_name_dns_a_record)
                .enable_resource_name_dns_aaaa_record(dns.enable_resource_name_dns_aaaa_record)
                .build(),
        )
        .set_block_device_mappings(Some(
            d.block_device_mappings
                .iter()
                .map(|b| {
                    sdk::LaunchTemplateBlockDeviceMappingRequest::builder()
                        .device_name(&b.device_name)
                        .ebs(
                            sdk::LaunchTemplateEbsBlockDeviceRequest::builder()
                                .volume_size(b.ebs.volume_size)
                                .volume_type(sdk::VolumeType::from(b.ebs.volume_type.as_str()))
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
                    sdk::LaunchTemplateTagSpecificationRequest::builder()
                        .resource_type(sdk::ResourceType::from(t.resource_type.as_str()))
                        .set_tags(Some(tags_to(&t.tags)))
                        .build()
                })
                .collect(),
        ))
        .user_data(&d.user_data)
        .build()
}

/// What EC2 holds of a launch template version, as haimg's type.
pub fn data_of(d: &sdk::ResponseLaunchTemplateData) -> LaunchTemplateData {
    let m = d.metadata_options();
    let p = d.private_dns_name_options();
    LaunchTemplateData {
        image_id: d.image_id().unwrap_or_default().into(),
        instance_type: text(d.instance_type()),
        iam_instance_profile: InstanceProfile {
            name: d
                .iam_instance_profile()
                .and_then(|p| p.name())
                .unwrap_or_default()
                .into(),
        },
        security_group_ids: d.security_group_ids().to_vec(),
        metadata_options: MetadataOptions {
            http_endpoint: text(m.and_then(|m| m.http_endpoint())),
            http_tokens: text(m.and_then(|m| m.http_tokens())),
            http_put_response_hop_limit: m
                .and_then(|m| m.http_put_response_hop_limit())
                .unwrap_or_default(),
            instance_metadata_tags: text(m.and_then(|m| m.instance_metadata_tags())),
        },
        private_dns_name_options: PrivateDnsNameOptions {
            hostname_type: text(p.and_then(|p| p.hostname_type())),
            enable_resource_name_dns_a_record: p
                .and_then(|p| p.enable_resource_name_dns_a_record())
                .unwrap_or_default(),
            enable_resource_name_dns_aaaa_record: p
                .and_then(|p| p.enable_resource_name_dns_aaaa_record())
                .unwrap_or_default(),
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
                        volume_type: text(e.and_then(|e| e.volume_type())),
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
                resource_type: text(t.resource_type()),
                tags: tags_from(t.tags()),
            })
            .collect(),
        user_data: d.user_data().unwrap_or_default().into(),
    }
}

/// The launch templates `filter` finds.
async fn describe(c: &Client, filter: sdk::Filter, what: &str) -> Result<Vec<sdk::LaunchTemplate>> {
    let out = c
        .describe_launch_templates()
        .filters(filter)
        .send()
        .await
        .map_err(Error::aws(format!("ec2 DescribeLaunchTemplates {what}")))?;
    Ok(out.launch_templates().to_vec())
}

/// Launch templates by name, with their default version's content.
pub async fn launch_templates(
    c: &Client,
    names: &[String],
) -> Result<Vec<(String, ObservedLaunchTemplate)>> {
    if names.is_empty() {
        return Ok(vec![]);
    }
    let filter = sdk::Filter::builder()
        .name("launch-template-name")
        .set_values(Some(names.to_vec()))
        .build();
    let mut found = Vec::new();
    for t in describe(c, filter, &names.join(",")).await? {
        let name = t.launch_template_name().unwrap_or_default().to_string();
        let id = t.launch_template_id().unwrap_or_default().to_string();
        let v = c
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
                tags: tags_from(t.tags()),
            },
        ));
    }
    Ok(found)
}

/// The (id, name) of every launch template tagged `key=value`.
pub async fn tagged(c: &Client, key: &str, value: &str) -> Result<Vec<(String, String)>> {
    let filter = sdk::Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build();
    Ok(describe(c, filter, &format!("{key}={value}"))
        .await?
        .iter()
        .map(|t| {
            (
                t.launch_template_id().unwrap_or_default().into(),
                t.launch_template_name().unwrap_or_default().into(),
            )
        })
        .collect())
}

/// Creates a launch template, tagged as `lt` says.
pub async fn create_launch_template(c: &Client, lt: &LaunchTemplate) -> Result<()> {
    let name = &lt.launch_template_name;
    c.create_launch_template()
        .launch_template_name(name)
        .version_description(&lt.version_description)
        .launch_template_data(request_data(&lt.launch_template_data))
        .set_tag_specifications(Some(
            lt.tag_specifications
                .iter()
                .map(|t| {
                    sdk::TagSpecification::builder()
                        .resource_type(sdk::ResourceType::from(t.resource_type.as_str()))
                        .set_tags(Some(tags_to(&t.tags)))
                        .build()
                })
                .collect(),
        ))
        .send()
        .await
        .map_err(Error::aws(format!("ec2 CreateLaunchTemplate {name}")))?;
    Ok(())
}

/// A new version of the launch template `name`, made its default.
pub async fn new_default_version(
    c: &Client,
    name: &str,
    description: &str,
    data: &LaunchTemplateData,
) -> Result<()> {
    let out = c
        .create_launch_template_version()
        .launch_template_name(name)
        .version_description(description)
        .launch_template_data(request_data(data))
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
            c.modify_launch_template()
                .launch_template_name(name)
                .default_version(version.to_string())
                .send()
        },
    )
    .await?;
    Ok(())
}

/// Adds (or overwrites) `tags` on the launch template `id` (`name` in errors).
pub async fn add_tags(c: &Client, id: &str, name: &str, tags: &[Tag]) -> Result<()> {
    c.create_tags()
        .resources(id)
        .set_tags(Some(tags_to(tags)))
        .send()
        .await
        .map_err(Error::aws(format!("ec2 CreateTags launch template {name}")))?;
    Ok(())
}

/// Deletes the launch template `id` (`name` in errors): `false` when it was gone already.
pub async fn delete_launch_template(c: &Client, id: &str, name: &str) -> Result<bool> {
    match c
        .delete_launch_template()
        .launch_template_id(id)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.code(),
                Some(
                    "InvalidLaunchTemplateId.NotFound"
                        | "InvalidLaunchTemplateName.NotFoundException"
                )
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(Error::aws(format!(
            "ec2 DeleteLaunchTemplate {name} ({id})"
        ))(e)),
    }
}

/// Every instance tagged `key=value`, in every state.
pub async fn tagged_instances(c: &Client, key: &str, value: &str) -> Result<Vec<Ec2Instance>> {
    let filter = sdk::Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build();
    let mut pages = c
        .describe_instances()
        .filters(filter)
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(Error::aws(format!(
            "ec2 DescribeInstances tag:{key}={value}"
        )))?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            out.push(Ec2Instance {
                id: i.instance_id().unwrap_or_default().to_string(),
                private_dns: i.private_dns_name().unwrap_or_default().to_string(),
                private_ip: i.private_ip_address().unwrap_or_default().to_string(),
                state: text(i.state().and_then(|s| s.name())),
            });
        }
    }
    Ok(out)
}

/// The newest available image of this account tagged `key=value`.
pub async fn newest_image_tagged(c: &Client, key: &str, value: &str) -> Result<Option<String>> {
    let out = c
        .describe_images()
        .owners("self")
        .filters(
            sdk::Filter::builder()
                .name(format!("tag:{key}"))
                .values(value)
                .build(),
        )
        .filters(
            sdk::Filter::builder()
                .name("state")
                .values("available")
                .build(),
        )
        .send()
        .await
        .map_err(Error::aws(format!("ec2 DescribeImages tag:{key}={value}")))?;
    let mut images: Vec<_> = out
        .images()
        .iter()
        .filter_map(|i| Some((i.creation_date()?.to_string(), i.image_id()?.to_string())))
        .collect();
    images.sort();
    Ok(images.pop().map(|(_, id)| id))
}

/// The id of this account's image named `name`, if any.
pub async fn image_named(c: &Client, name: &str) -> Result<Option<String>> {
    let out = c
        .describe_images()
        .owners("self")
        .filters(sdk::Filter::builder().name("name").values(name).build())
        .send()
        .await
        .map_err(Error::aws(format!("ec2 DescribeImages name={name}")))?;
    Ok(out
        .images()
        .first()
        .and_then(|i| i.image_id())
        .map(str::to_string))
}

/// The instance a bake provisions.
pub struct Builder<'a> {
    pub image_id: &'a str,
    pub instance_type: &'a str,
    pub instance_profile: &'a str,
    pub subnet_id: Option<&'a str>,
    /// On the instance and its volume from the start, so IAM conditions and cleanup by
    /// tag see them on every resource the launch makes.
    pub tags: Vec<Tag>,
}

/// Launches the builder: no key pair, IMDSv2 only with hop limit 1, an encrypted 20 GiB
/// gp3 root, stopping (not terminating) on shutdown. Returns its instance id.
pub async fn run_builder(c: &Client, b: &Builder<'_>) -> Result<String> {
    let tags = |rt: sdk::ResourceType| {
        sdk::TagSpecification::builder()
            .resource_type(rt)
            .set_tags(Some(tags_to(&b.tags)))
            .build()
    };
    let mut req = c
        .run_instances()
        .image_id(b.image_id)
        .instance_type(sdk::InstanceType::from(b.instance_type))
        .min_count(1)
        .max_count(1)
        .iam_instance_profile(
            sdk::IamInstanceProfileSpecification::builder()
                .name(b.instance_profile)
                .build(),
        )
        .metadata_options(
            sdk::InstanceMetadataOptionsRequest::builder()
                .http_tokens(sdk::HttpTokensState::Required)
                .http_put_response_hop_limit(1)
                .http_endpoint(sdk::InstanceMetadataEndpointState::Enabled)
                .build(),
        )
        .block_device_mappings(
            sdk::BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(
                    sdk::EbsBlockDevice::builder()
                        .volume_size(20)
                        .volume_type(sdk::VolumeType::Gp3)
                        .encrypted(true)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .instance_initiated_shutdown_behavior(sdk::ShutdownBehavior::Stop)
        .tag_specifications(tags(sdk::ResourceType::Instance))
        .tag_specifications(tags(sdk::ResourceType::Volume));
    if let Some(s) = b.subnet_id {
        req = req.subnet_id(s);
    }
    let out = req.send().await.map_err(Error::aws(format!(
        "ec2 RunInstances (builder from {})",
        b.image_id
    )))?;
    out.instances()
        .first()
        .and_then(|i| i.instance_id())
        .map(str::to_string)
        .ok_or_else(|| Error::Runtime("RunInstances returned no instance".into()))
}

/// Stops the instance (it may take minutes: [`wait_stopped`]).
pub async fn stop(c: &Client, instance: &str) -> Result<()> {
    c.stop_instances()
        .instance_ids(instance)
        .send()
        .await
        .map_err(Error::aws(format!("ec2 StopInstances {instance}")))?;
    Ok(())
}

/// What a waiter's error comes to, for a message in haimg's words.
fn waited<O, E>(
    what: &str,
    failed: &str,
    max_wait: std::time::Duration,
    e: aws_smithy_runtime_api::client::waiters::error::WaiterError<O, E>,
) -> Error
where
    O: std::fmt::Debug,
    E: std::error::Error + Send + Sync + 'static,
{
    use aws_smithy_runtime_api::client::waiters::error::WaiterError as W;
    match e {
        W::ExceededMaxWait(_) => {
            Error::Timeout(format!("{what}: not reached after {}s", max_wait.as_secs()))
        }
        W::FailureState(_) => Error::Runtime(failed.to_string()),
        W::OperationFailed(f) => Error::aws(what)(f.into_error()),
        other => Error::Runtime(format!("{what}: {}", crate::error::chain(&other))),
    }
}

/// Waits (bounded by `max_wait`) for the instance to be stopped, with EC2's own waiter
/// (DescribeInstances every 15 s, backing off to 2 min, as the EC2 API model says).
pub async fn wait_stopped(c: &Client, instance: &str, max_wait: std::time::Duration) -> Result<()> {
    use aws_sdk_ec2::client::Waiters;
    c.wait_until_instance_stopped()
        .instance_ids(instance)
        .wait(max_wait)
        .await
        .map_err(|e| {
            let failed = format!("{instance} is pending or terminated, not stopping");
            waited(&format!("{instance} stopped"), &failed, max_wait, e)
        })?;
    Ok(())
}

/// Images an instance; returns the new image's id (pending: [`wait_image_available`]).
pub async fn create_image(
    c: &Client,
    instance: &str,
    name: &str,
    description: &str,
) -> Result<String> {
    c.create_image()
        .instance_id(instance)
        .name(name)
        .description(description)
        .send()
        .await
        .map_err(Error::aws(format!("ec2 CreateImage from {instance}")))?
        .image_id()
        .map(str::to_string)
        .ok_or_else(|| Error::Runtime(format!("CreateImage from {instance} returned no image id")))
}

/// Copies `source_region/image` into this client's region; returns the copy's id.
pub async fn copy_image(
    c: &Client,
    source_region: &str,
    image: &str,
    name: &str,
    description: &str,
) -> Result<String> {
    let to = c
        .config()
        .region()
        .map(|r| r.to_string())
        .unwrap_or_default();
    c.copy_image()
        .source_region(source_region)
        .source_image_id(image)
        .name(name)
        .description(description)
        .send()
        .await
        .map_err(Error::aws(format!(
            "ec2 CopyImage {source_region}/{image} to {to}"
        )))?
        .image_id()
        .map(str::to_string)
        .ok_or_else(|| Error::Runtime(format!("CopyImage to {to} returned no image id")))
}

/// Waits (bounded by `max_wait`) for the image to be available, with EC2's own waiter
/// (DescribeImages every 15 s, backing off to 2 min); an image that failed is an error.
pub async fn wait_image_available(
    c: &Client,
    image: &str,
    max_wait: std::time::Duration,
) -> Result<()> {
    use aws_sdk_ec2::client::Waiters;
    c.wait_until_image_available()
        .image_ids(image)
        .wait(max_wait)
        .await
        .map_err(|e| {
            let failed = format!("image {image} failed");
            waited(&format!("image {image} available"), &failed, max_wait, e)
        })?;
    Ok(())
}

/// The EBS snapshots behind an image.
pub async fn snapshots_of(c: &Client, image: &str) -> Result<Vec<String>> {
    let out = c
        .describe_images()
        .image_ids(image)
        .send()
        .await
        .map_err(Error::aws(format!("ec2 DescribeImages {image}")))?;
    Ok(out
        .images()
        .iter()
        .flat_map(|i| i.block_device_mappings())
        .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect())
}

/// Tags the resources `ids` (images, snapshots, instances).
pub async fn tag(c: &Client, ids: &[String], tags: &[Tag]) -> Result<()> {
    c.create_tags()
        .set_resources(Some(ids.to_vec()))
        .set_tags(Some(tags_to(tags)))
        .send()
        .await
        .map_err(Error::aws(format!("ec2 CreateTags on {}", ids.join(", "))))?;
    Ok(())
}

/// The ids of the instances tagged `key=value` that are not terminated or going.
pub async fn live_instances_tagged(c: &Client, key: &str, value: &str) -> Result<Vec<String>> {
    let out = c
        .describe_instances()
        .filters(
            sdk::Filter::builder()
                .name(format!("tag:{key}"))
                .values(value)
                .build(),
        )
        .filters(
            sdk::Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        )
        .send()
        .await
        .map_err(Error::aws(format!(
            "ec2 DescribeInstances tag:{key}={value}"
        )))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect())
}

pub async fn terminate(c: &Client, instance: &str) -> Result<()> {
    c.terminate_instances()
        .instance_ids(instance)
        .send()
        .await
        .map_err(Error::aws(format!("ec2 TerminateInstances {instance}")))?;
    Ok(())
}

pub async fn deregister_image(c: &Client, image: &str) -> Result<()> {
    c.deregister_image()
        .image_id(image)
        .send()
        .await
        .map_err(Error::aws(format!("ec2 DeregisterImage {image}")))?;
    Ok(())
}

pub async fn delete_snapshot(c: &Client, snapshot: &str) -> Result<()> {
    c.delete_snapshot()
        .snapshot_id(snapshot)
        .send()
        .await
        .map_err(Error::aws(format!("ec2 DeleteSnapshot {snapshot}")))?;
    Ok(())
}
