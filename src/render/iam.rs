//! IAM policies, from typed statements.
//!
//! `iam/master-policy.json` and `iam/worker-policy.json`: the instance roles' policies
//! ([`master_policy`], [`worker_policy`]).
//!
//! `iam/operator-policy.json`: the least privilege for whoever runs `bake`, `up`, `status`
//! and `down` on this cluster: every action one of them calls (checked against the calls
//! the moto runs of each make: tests/deploy.rs, tests/bake.rs), on the cluster's own
//! resources by name or by its `haimg:cluster` tag where IAM can say so, and no KMS: the
//! operator never reads the join material.
//!
//! `iam/status-policy.json`: the least privilege for `haimg status` (and `up --wait`, which
//! reads the same snapshot): describe calls, which have no resource-level permissions, and
//! the two plain parameters it reads. No KMS, no SecureString: the join material's
//! timestamps are in `P/join/times`, so whoever watches the cluster cannot read its secrets.

use serde::Serialize;

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Policy {
    pub version: &'static str,
    pub statement: Vec<Statement>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Statement {
    pub sid: &'static str,
    pub effect: &'static str,
    pub action: Vec<&'static str>,
    pub resource: Resource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<serde_json::Value>,
}

/// A statement's `Resource`: one ARN (pattern) or a list, as IAM takes either.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Resource {
    One(String),
    Many(Vec<String>),
}

impl From<Vec<String>> for Resource {
    fn from(v: Vec<String>) -> Self {
        Resource::Many(v)
    }
}

impl From<String> for Resource {
    fn from(v: String) -> Self {
        Resource::One(v)
    }
}

impl From<&str> for Resource {
    fn from(v: &str) -> Self {
        Resource::One(v.into())
    }
}

impl Statement {
    fn allow(
        sid: &'static str,
        action: &[&'static str],
        resource: impl Into<Resource>,
    ) -> Statement {
        Statement {
            sid,
            effect: "Allow",
            action: action.to_vec(),
            resource: resource.into(),
            condition: None,
        }
    }
    fn deny(
        sid: &'static str,
        action: &[&'static str],
        resource: impl Into<Resource>,
    ) -> Statement {
        Statement {
            effect: "Deny",
            ..Statement::allow(sid, action, resource)
        }
    }
    fn when(mut self, condition: serde_json::Value) -> Statement {
        self.condition = Some(condition);
        self
    }
}

/// What `status` calls, by service: kept beside the code that makes the calls in
/// `deploy/status.rs` and `deploy/observe.rs`, and checked against the calls a moto run
/// of `status` makes (tests/deploy.rs).
pub const STATUS_DESCRIBE_ACTIONS: [&str; 4] = [
    "autoscaling:DescribeAutoScalingGroups",
    // observe::groups reads each group's drain hook with it.
    "autoscaling:DescribeLifecycleHooks",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
];

/// `parameter_arns`: the full ARNs of `P/state` and `P/join/times`, or none when the
/// cluster keeps no state in Parameter Store (static credentials).
pub fn status_policy(parameter_arns: Vec<String>) -> Policy {
    // These describe calls have no resource-level permissions.
    let mut statement = vec![Statement::allow(
        "DescribeGroupsAndTargets",
        &STATUS_DESCRIBE_ACTIONS,
        vec!["*".into()],
    )];
    if !parameter_arns.is_empty() {
        statement.push(Statement::allow(
            "ReadStateAndJoinTimes",
            &["ssm:GetParameter"],
            parameter_arns,
        ));
    }
    Policy {
        version: "2012-10-17",
        statement,
    }
}

/// What the instance roles' policies are scoped to: ARN patterns made from the cluster's
/// names and its SSM key.
#[derive(Debug)]
pub struct InstanceScope {
    /// The cluster's parameters: `P` and `P/*`.
    pub parameter_arns: Vec<String>,
    /// `P/join/worker`.
    pub worker_join_arn: String,
    /// What a worker must never read: `P/join/control-plane`, and the paths that list it.
    pub denied_arns: Vec<String>,
    /// The SecureString key: its ARN, or every key when it is named by an alias.
    pub kms_resource: String,
    /// `alias/<name>` when the key is named by an alias.
    pub kms_alias: Option<String>,
    /// `ssm.<region>.amazonaws.com`: the key is used through SSM only.
    pub ssm_service: String,
    /// The role's own Auto Scaling groups (none for fixed masters).
    pub group_arns: Vec<String>,
}

const OWN_LIFECYCLE_ACTIONS: [&str; 3] = [
    "autoscaling:CompleteLifecycleAction",
    "autoscaling:RecordLifecycleActionHeartbeat",
    "autoscaling:SetInstanceHealth",
];

impl InstanceScope {
    /// The key's use through SSM only, and only a key with the alias when it has one.
    fn through_ssm(&self) -> serde_json::Value {
        let mut c = serde_json::json!({"StringEquals": {"kms:ViaService": self.ssm_service}});
        if let Some(alias) = &self.kms_alias {
            c["ForAnyValue:StringEquals"] = serde_json::json!({"kms:ResourceAliases": alias});
        }
        c
    }

    /// Lifecycle actions, and marking itself Unhealthy when bootstrap gives up: only on
    /// the role's own groups.
    fn own_lifecycle(&self) -> Option<Statement> {
        (!self.group_arns.is_empty()).then(|| {
            Statement::allow(
                "OwnLifecycleActions",
                &OWN_LIFECYCLE_ACTIONS,
                self.group_arns.clone(),
            )
        })
    }
}

/// The control-plane instance role's policy (attach to `spec.controlPlane.instanceProfile`'s
/// role):
/// - SSM: masters init, publish, rotate and read everything under the cluster's prefix.
/// - KMS: SecureString encryption through SSM only (`kms:ViaService`).
/// - Describe calls (no resource-level permissions exist for them): reconcile finds dead
///   instances; bootstrap looks up the NLB's DNS name.
pub fn master_policy(o: &InstanceScope) -> Policy {
    let mut statement = vec![
        Statement::allow(
            "ClusterParameters",
            &[
                "ssm:GetParameter",
                "ssm:GetParameters",
                "ssm:GetParametersByPath",
                "ssm:PutParameter",
                "ssm:DeleteParameter",
                "ssm:DeleteParameters",
                "ssm:AddTagsToResource",
            ],
            o.parameter_arns.clone(),
        ),
        Statement::allow(
            "SecureStringKey",
            &["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
            o.kms_resource.clone(),
        )
        .when(o.through_ssm()),
        Statement::allow(
            "DiscoverInstancesGroupsAndEndpoint",
            &[
                "ec2:DescribeInstances",
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeAutoScalingInstances",
                "elasticloadbalancing:DescribeLoadBalancers",
            ],
            "*",
        ),
    ];
    statement.extend(o.own_lifecycle());
    Policy {
        version: "2012-10-17",
        statement,
    }
}

/// The worker instance roles' policy (attach to every worker pool's instance profile role):
/// - SSM: read exactly one parameter, the worker join material. The control-plane join
///   material holds the certificate key, which decrypts the cluster CA keys: an explicit
///   Deny keeps it out of reach even if a broader policy is attached to the same role.
/// - KMS: decrypt through SSM only.
pub fn worker_policy(o: &InstanceScope) -> Policy {
    let mut statement = vec![
        Statement::allow(
            "WorkerJoinMaterial",
            &["ssm:GetParameter"],
            o.worker_join_arn.clone(),
        ),
        Statement::deny(
            "NeverControlPlaneJoinMaterial",
            &[
                "ssm:GetParameter",
                "ssm:GetParameters",
                "ssm:GetParametersByPath",
                "ssm:GetParameterHistory",
            ],
            o.denied_arns.clone(),
        ),
        Statement::allow(
            "DecryptJoinMaterial",
            &["kms:Decrypt"],
            o.kms_resource.clone(),
        )
        .when(o.through_ssm()),
    ];
    statement.extend(o.own_lifecycle());
    Policy {
        version: "2012-10-17",
        statement,
    }
}

/// What the operator's policy is scoped to: ARN patterns made from the cluster's names.
#[derive(Debug)]
pub struct OperatorScope {
    /// `aws`, `aws-cn` or `aws-us-gov`.
    pub partition: &'static str,
    pub region: String,
    pub cluster: String,
    /// The cluster's parameters (`P` and `P/*`); none with static credentials.
    pub parameter_arns: Vec<String>,
    /// The cluster's Auto Scaling groups.
    pub group_arns: Vec<String>,
    /// The NLB's load balancer, listeners and target group (NLB mode only).
    pub load_balancer: Option<LoadBalancerArns>,
    /// The image parameters `bake` publishes and `up` reads (`/haimg/images/<recipe>/*`).
    pub image_parameter_arns: Vec<String>,
}

#[derive(Debug)]
pub struct LoadBalancerArns {
    pub load_balancer: String,
    pub listeners: String,
    pub target_group: String,
}

/// Read-only calls `up`, `status` and `down` make (no resource-level permissions).
const CLUSTER_DESCRIBE_ACTIONS: [&str; 9] = [
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeLaunchTemplateVersions",
    "autoscaling:DescribeAutoScalingGroups",
    // down finds the groups tagged haimg:cluster that are no longer in the spec.
    "autoscaling:DescribeTags",
    "autoscaling:DescribeLifecycleHooks",
    "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeTargetGroupAttributes",
    "elasticloadbalancing:DescribeTags",
];

/// The operator's policy: `up`, `status`, `down` on this cluster, and `bake` of the image
/// it runs.
pub fn operator_policy(o: &OperatorScope) -> Policy {
    let (p, r) = (o.partition, o.region.as_str());
    let own = serde_json::json!({"StringEquals": {"aws:ResourceTag/haimg:cluster": o.cluster}});
    let mut describe: Vec<&'static str> = CLUSTER_DESCRIBE_ACTIONS.to_vec();
    describe.extend(
        STATUS_DESCRIBE_ACTIONS
            .iter()
            .filter(|a| !describe.contains(a))
            .collect::<Vec<_>>(),
    );
    let mut statement = vec![Statement::allow(
        "DescribeTheCluster",
        &describe,
        vec!["*".into()],
    )];
    if !o.parameter_arns.is_empty() {
        statement.push(Statement::allow(
            "ClusterParameters",
            &[
                "ssm:GetParameter",
                "ssm:GetParametersByPath",
                "ssm:PutParameter",
                "ssm:AddTagsToResource",
                "ssm:DeleteParameters",
            ],
            o.parameter_arns.clone(),
        ));
    }
    let templates = vec![format!("arn:{p}:ec2:{r}:*:launch-template/*")];
    statement.extend([
        // Launch template ARNs carry ids, not names: created only with the cluster's tag,
        // and changed only while they carry it.
        Statement::allow(
            "CreateTaggedLaunchTemplates",
            &["ec2:CreateLaunchTemplate", "ec2:CreateTags"],
            templates.clone(),
        )
        .when(serde_json::json!({"StringEquals": {"aws:RequestTag/haimg:cluster": o.cluster}})),
        Statement::allow(
            "OwnLaunchTemplates",
            &[
                "ec2:CreateLaunchTemplateVersion",
                "ec2:ModifyLaunchTemplate",
                "ec2:DeleteLaunchTemplate",
                "ec2:CreateTags",
            ],
            templates,
        )
        .when(own.clone()),
        // Auto Scaling checks that whoever creates or updates a group may launch from its
        // template and pass its instance profile's role to EC2.
        Statement::allow("LaunchFromLaunchTemplates", &["ec2:RunInstances", "ec2:CreateTags"], vec!["*".into()])
            .when(serde_json::json!({"ArnLike": {"ec2:LaunchTemplate": format!("arn:{p}:ec2:{r}:*:launch-template/*")}})),
        Statement::allow("PassInstanceRolesToEc2", &["iam:PassRole"], vec![format!("arn:{p}:iam::*:role/*")])
            .when(serde_json::json!({"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}})),
    ]);
    if !o.group_arns.is_empty() {
        statement.push(Statement::allow(
            "OwnGroups",
            &[
                "autoscaling:CreateAutoScalingGroup",
                "autoscaling:UpdateAutoScalingGroup",
                "autoscaling:DeleteAutoScalingGroup",
                "autoscaling:PutLifecycleHook",
                // The control plane's group runs without AZRebalance.
                "autoscaling:SuspendProcesses",
                "autoscaling:AttachLoadBalancerTargetGroups",
                "autoscaling:CreateOrUpdateTags",
            ],
            o.group_arns.clone(),
        ));
    }
    if let Some(lb) = &o.load_balancer {
        statement.push(Statement::allow(
            "OwnLoadBalancer",
            &[
                "elasticloadbalancing:CreateLoadBalancer",
                "elasticloadbalancing:DeleteLoadBalancer",
                "elasticloadbalancing:CreateTargetGroup",
                "elasticloadbalancing:ModifyTargetGroup",
                "elasticloadbalancing:ModifyTargetGroupAttributes",
                "elasticloadbalancing:DeleteTargetGroup",
                "elasticloadbalancing:CreateListener",
                "elasticloadbalancing:ModifyListener",
                "elasticloadbalancing:DeleteListener",
                "elasticloadbalancing:AddTags",
            ],
            vec![
                lb.load_balancer.clone(),
                lb.listeners.clone(),
                lb.target_group.clone(),
            ],
        ));
    }
    statement.extend(bake_statements(o));
    Policy {
        version: "2012-10-17",
        statement,
    }
}

/// `bake`: a builder instance tagged `haimg:bake`, driven by SSM Run Command, a staging
/// bucket of its own (`haimg-bake-*`), the image and its copies, the image parameters.
fn bake_statements(o: &OperatorScope) -> Vec<Statement> {
    let p = o.partition;
    let tagged_bake =
        |key: &str| serde_json::json!({"Null": {format!("{key}/haimg:bake"): "false"}});
    vec![
        Statement::allow(
            "BakeDescribe",
            // CancelCommand: a script past its timeout is stopped before the builder goes.
            &[
                "ec2:DescribeImages",
                "ec2:DescribeInstances",
                "ssm:GetCommandInvocation",
                "ssm:CancelCommand",
            ],
            vec!["*".into()],
        ),
        // The builder's own resources carry the bake's tag from the start; what it launches
        // into (its subnet, security group, base image) is named by the bake's options.
        Statement::allow(
            "BakeBuilderTagged",
            &["ec2:RunInstances", "ec2:CreateTags"],
            vec![
                format!("arn:{p}:ec2:*:*:instance/*"),
                format!("arn:{p}:ec2:*:*:volume/*"),
            ],
        )
        .when(tagged_bake("aws:RequestTag")),
        Statement::allow(
            "BakeBuilderLaunchesInto",
            &["ec2:RunInstances"],
            vec![
                format!("arn:{p}:ec2:*::image/*"),
                format!("arn:{p}:ec2:*:*:subnet/*"),
                format!("arn:{p}:ec2:*:*:security-group/*"),
                format!("arn:{p}:ec2:*:*:network-interface/*"),
            ],
        ),
        Statement::allow(
            "BakeStopsOnlyItsBuilder",
            &["ec2:StopInstances", "ec2:TerminateInstances"],
            vec![format!("arn:{p}:ec2:*:*:instance/*")],
        )
        .when(tagged_bake("ec2:ResourceTag")),
        Statement::allow(
            "BakeDrivesItsBuilder",
            &["ssm:SendCommand"],
            vec![
                format!("arn:{p}:ssm:*::document/AWS-RunShellScript"),
                format!("arn:{p}:ec2:*:*:instance/*"),
            ],
        ),
        // Images and snapshots are made, copied, tagged and (on failure) removed by id;
        // CreateImage and CopyImage name no resource IAM can scope beforehand.
        Statement::allow(
            "BakeImages",
            &[
                "ec2:CreateImage",
                "ec2:CopyImage",
                "ec2:CreateTags",
                "ec2:DeregisterImage",
                "ec2:DeleteSnapshot",
            ],
            vec![
                format!("arn:{p}:ec2:*::image/*"),
                format!("arn:{p}:ec2:*::snapshot/*"),
                format!("arn:{p}:ec2:*:*:instance/*"),
            ],
        ),
        Statement::allow(
            "BakeStagingBucket",
            &[
                "s3:CreateBucket",
                "s3:DeleteBucket",
                "s3:PutObject",
                "s3:GetObject",
                "s3:DeleteObject",
            ],
            vec![
                format!("arn:{p}:s3:::haimg-bake-*"),
                format!("arn:{p}:s3:::haimg-bake-*/*"),
            ],
        ),
        // A recipe's base given as a parameter: AWS's public ones (a recipe whose base is
        // a parameter elsewhere needs that one added).
        Statement::allow(
            "BakeBaseImageParameters",
            &["ssm:GetParameter"],
            vec![format!("arn:{p}:ssm:*::parameter/aws/service/*")],
        ),
        Statement::allow(
            "BakeImageParameters",
            &[
                "ssm:GetParameter",
                "ssm:PutParameter",
                "ssm:DeleteParameter",
            ],
            o.image_parameter_arns.clone(),
        ),
    ]
}
