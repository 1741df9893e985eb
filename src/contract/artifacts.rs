//! The JSON files `haimg render --all` writes and `haimg up` applies (DESIGN §3): each is
//! exactly the `--cli-input-json` of the AWS CLI command that creates the resource.
//!
//! `render` builds these values and serialises them; `up` reads the files back into the
//! same types, with `deny_unknown_fields`, so a file that gains a field `up` does not apply
//! fails there, loudly, instead of being silently dropped. A field is written in its type
//! here, where `render` fills it in, and where `deploy` maps it to and from the SDK.
//!
//! The fixed values (enums, limits) and why they have them are in the render module, which
//! chooses them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LoadBalancer {
    pub name: String,
    pub subnets: Vec<String>,
    pub scheme: String,
    pub r#type: String,
    pub ip_address_type: String,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Matcher {
    pub http_code: String,
}

/// The target group's settings that can change in place (its health check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    pub health_check_enabled: bool,
    pub health_check_protocol: String,
    pub health_check_port: String,
    pub health_check_path: String,
    pub health_check_interval_seconds: i32,
    pub health_check_timeout_seconds: i32,
    pub healthy_threshold_count: i32,
    pub unhealthy_threshold_count: i32,
    pub matcher: String,
}

/// The target group's settings that are fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetGroupIdentity {
    pub protocol: String,
    pub port: i32,
    pub vpc_id: String,
    pub target_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TargetGroup {
    pub name: String,
    pub protocol: String,
    pub port: i32,
    pub vpc_id: String,
    pub target_type: String,
    pub health_check_enabled: bool,
    pub health_check_protocol: String,
    pub health_check_port: String,
    pub health_check_path: String,
    pub health_check_interval_seconds: i32,
    pub health_check_timeout_seconds: i32,
    pub healthy_threshold_count: i32,
    pub unhealthy_threshold_count: i32,
    pub matcher: Matcher,
    pub tags: Vec<Tag>,
}

impl TargetGroup {
    pub fn identity(&self) -> TargetGroupIdentity {
        TargetGroupIdentity {
            protocol: self.protocol.clone(),
            port: self.port,
            vpc_id: self.vpc_id.clone(),
            target_type: self.target_type.clone(),
        }
    }
    pub fn health_check(&self) -> HealthCheck {
        HealthCheck {
            health_check_enabled: self.health_check_enabled,
            health_check_protocol: self.health_check_protocol.clone(),
            health_check_port: self.health_check_port.clone(),
            health_check_path: self.health_check_path.clone(),
            health_check_interval_seconds: self.health_check_interval_seconds,
            health_check_timeout_seconds: self.health_check_timeout_seconds,
            healthy_threshold_count: self.healthy_threshold_count,
            unhealthy_threshold_count: self.unhealthy_threshold_count,
            matcher: self.matcher.http_code.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Attribute {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TargetGroupAttributes {
    pub target_group_arn: String,
    pub attributes: Vec<Attribute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ListenerAction {
    pub r#type: String,
    pub target_group_arn: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Listener {
    pub load_balancer_arn: String,
    pub protocol: String,
    pub port: i32,
    pub default_actions: Vec<ListenerAction>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TagSpecification {
    pub resource_type: String,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct InstanceProfile {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct MetadataOptions {
    pub http_endpoint: String,
    pub http_tokens: String,
    pub http_put_response_hop_limit: i32,
    pub instance_metadata_tags: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PrivateDnsNameOptions {
    pub hostname_type: String,
    pub enable_resource_name_dns_a_record: bool,
    #[serde(rename = "EnableResourceNameDnsAAAARecord")]
    pub enable_resource_name_dns_aaaa_record: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Ebs {
    pub volume_size: i32,
    pub volume_type: String,
    pub encrypted: bool,
    pub delete_on_termination: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct BlockDeviceMapping {
    pub device_name: String,
    pub ebs: Ebs,
}

/// A launch template version's content: what decides whether a new version is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateData {
    pub image_id: String,
    pub instance_type: String,
    pub iam_instance_profile: InstanceProfile,
    pub security_group_ids: Vec<String>,
    pub metadata_options: MetadataOptions,
    pub private_dns_name_options: PrivateDnsNameOptions,
    pub block_device_mappings: Vec<BlockDeviceMapping>,
    pub tag_specifications: Vec<TagSpecification>,
    pub user_data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplate {
    pub launch_template_name: String,
    pub version_description: String,
    pub launch_template_data: LaunchTemplateData,
    pub tag_specifications: Vec<TagSpecification>,
}

impl LaunchTemplate {
    /// The tags of the launch template itself.
    pub fn tags(&self) -> Vec<Tag> {
        self.tag_specifications
            .iter()
            .filter(|t| t.resource_type == "launch-template")
            .flat_map(|t| t.tags.clone())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchTemplateRef {
    pub launch_template_name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LifecycleHook {
    pub lifecycle_hook_name: String,
    pub lifecycle_transition: String,
    pub heartbeat_timeout: i32,
    pub default_result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AsgTag {
    pub resource_id: String,
    pub resource_type: String,
    pub key: String,
    pub value: String,
    pub propagate_at_launch: bool,
}

/// The group's settings that `UpdateAutoScalingGroup` changes in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AsgSettings {
    pub launch_template: LaunchTemplateRef,
    pub min_size: i32,
    pub max_size: i32,
    pub desired_capacity: i32,
    #[serde(rename = "VPCZoneIdentifier")]
    pub vpc_zone_identifier: String,
    pub health_check_type: String,
    pub health_check_grace_period: i32,
    pub termination_policies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AutoScalingGroup {
    pub auto_scaling_group_name: String,
    pub launch_template: LaunchTemplateRef,
    pub min_size: i32,
    pub max_size: i32,
    pub desired_capacity: i32,
    #[serde(rename = "VPCZoneIdentifier")]
    pub vpc_zone_identifier: String,
    pub health_check_type: String,
    pub health_check_grace_period: i32,
    #[serde(rename = "TargetGroupARNs")]
    pub target_group_arns: Vec<String>,
    pub termination_policies: Vec<String>,
    pub lifecycle_hook_specification_list: Vec<LifecycleHook>,
    pub tags: Vec<AsgTag>,
}

impl AutoScalingGroup {
    pub fn settings(&self) -> AsgSettings {
        AsgSettings {
            launch_template: self.launch_template.clone(),
            min_size: self.min_size,
            max_size: self.max_size,
            desired_capacity: self.desired_capacity,
            vpc_zone_identifier: self.vpc_zone_identifier.clone(),
            health_check_type: self.health_check_type.clone(),
            health_check_grace_period: self.health_check_grace_period,
            termination_policies: self.termination_policies.clone(),
        }
    }
    pub fn tags(&self) -> Vec<Tag> {
        self.tags
            .iter()
            .map(|t| Tag {
                key: t.key.clone(),
                value: t.value.clone(),
            })
            .collect()
    }
    /// The control plane's group (tagged `haimg:role=master`).
    pub fn is_master(&self) -> bool {
        self.tags
            .iter()
            .any(|t| t.key == CLUSTER_ROLE_TAG && t.value == "master")
    }
}

pub const CLUSTER_TAG: &str = "haimg:cluster";
const CLUSTER_ROLE_TAG: &str = "haimg:role";
