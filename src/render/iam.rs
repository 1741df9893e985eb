//! IAM policies rendered from typed statements (the instance policies are still templates:
//! see `launch-templates/*-policy.json.tera`).
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
    pub resource: Vec<String>,
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
    let mut statement = vec![Statement {
        sid: "DescribeGroupsAndTargets",
        effect: "Allow",
        action: STATUS_DESCRIBE_ACTIONS.to_vec(),
        // These describe calls have no resource-level permissions.
        resource: vec!["*".into()],
    }];
    if !parameter_arns.is_empty() {
        statement.push(Statement {
            sid: "ReadStateAndJoinTimes",
            effect: "Allow",
            action: vec!["ssm:GetParameter"],
            resource: parameter_arns,
        });
    }
    Policy {
        version: "2012-10-17",
        statement,
    }
}
