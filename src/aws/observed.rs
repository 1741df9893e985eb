//! What AWS holds for a cluster, in haimg's terms: what the describe calls of
//! [`super::elb`], [`super::ec2`], [`super::autoscaling`] and [`super::ssm`] return, reduced
//! to what `up` plans from and `status` and `down` report. No SDK type crosses this line.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::contract::artifacts::{
    AsgSettings, Attribute, HealthCheck, LaunchTemplateData, LifecycleHook, Tag,
    TargetGroupIdentity,
};

/// What AWS holds now (`observe`), reduced to what the plan compares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub load_balancer: Option<ObservedLoadBalancer>,
    pub target_group: Option<ObservedTargetGroup>,
    pub listener: Option<ObservedListener>,
    pub launch_templates: BTreeMap<String, ObservedLaunchTemplate>,
    pub groups: BTreeMap<String, ObservedGroup>,
    pub ssm: ObservedSsm,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedLoadBalancer {
    pub arn: String,
    pub r#type: String,
    pub scheme: String,
    pub subnets: Vec<String>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedTargetGroup {
    pub arn: String,
    pub identity: TargetGroupIdentity,
    pub health_check: HealthCheck,
    pub attributes: Vec<Attribute>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedListener {
    pub arn: String,
    pub protocol: String,
    pub port: i32,
    /// `forward` targets of its default actions.
    pub target_group_arns: Vec<String>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedLaunchTemplate {
    pub id: String,
    pub default_version: i64,
    pub latest_version: i64,
    pub default_data: LaunchTemplateData,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservedGroup {
    pub settings: AsgSettings,
    pub target_group_arns: Vec<String>,
    pub hooks: Vec<LifecycleHook>,
    pub suspended: Vec<String>,
    pub tags: Vec<Tag>,
    /// `Delete in progress` while a deletion runs.
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedSsm {
    /// The cluster named by `P/cluster`, when it exists.
    pub marker: Option<String>,
    /// haimg's parameters under `P` (full names), listed only when no control-plane group
    /// exists: then they are left over from an earlier cluster.
    pub leftovers: Vec<String>,
}

/// An instance of an Auto Scaling group, as the group reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    pub availability_zone: String,
    pub lifecycle_state: String,
    pub health: String,
    pub launch_template_version: String,
}

/// A target of the API's target group and its health.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub id: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An EC2 instance, as the node agent's reconcile sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Instance {
    pub id: String,
    pub private_dns: String,
    pub private_ip: String,
    /// EC2 state name: pending, running, shutting-down, terminated, stopping, stopped.
    pub state: String,
}
