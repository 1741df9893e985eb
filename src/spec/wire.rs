//! The cluster spec as written in `cluster.yaml` (DESIGN §4): plain data, strict keys.
//!
//! Domain strings stay `String` here and are checked when the file is resolved into
//! [`super::ClusterSpec`], so that every bad value in a file is reported at once; their
//! JSON Schema still comes from the validated type (`#[schemars(with = …)]`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::types::*;

pub const API_VERSION: &str = "haimg.dev/v1alpha1";

/// A highly-available kubeadm cluster on AWS, rendered and applied by haimg.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "haimg Cluster")]
pub struct ClusterFile {
    #[schemars(extend("const" = "haimg.dev/v1alpha1"))]
    pub api_version: String,
    #[schemars(extend("const" = "Cluster"))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: SpecFile,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    #[schemars(with = "ClusterName")]
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecFile {
    /// The AWS region everything is created in.
    #[schemars(with = "Region")]
    pub region: String,
    /// Exact Kubernetes version; must equal the version pinned in the image.
    #[schemars(with = "KubernetesVersion")]
    pub kubernetes_version: String,
    /// Where the node image comes from: exactly one of `ami` and `ssmParameter`.
    pub image: ImageFile,
    pub network: NetworkFile,
    pub control_plane: ControlPlaneFile,
    /// Worker Auto Scaling groups (may be empty: a control-plane-only cluster).
    #[serde(default)]
    pub worker_pools: Vec<WorkerPoolFile>,
    #[serde(default)]
    pub ssm: SsmFile,
    /// Extra tags on everything haimg creates. Keys under `aws:`, `haimg:` and
    /// `kubernetes.io/cluster/` are reserved.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageFile {
    /// A pinned AMI id (reproducible).
    #[schemars(with = "Option<AmiId>")]
    pub ami: Option<String>,
    /// An SSM parameter holding the AMI id, e.g. what `haimg bake` publishes:
    /// `/haimg/images/<recipe>/latest`. Launch templates resolve it at launch time.
    #[schemars(with = "Option<AmiParameter>")]
    pub ssm_parameter: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkFile {
    #[schemars(with = "VpcId")]
    pub vpc_id: String,
    /// One subnet per availability zone; the Auto Scaling groups spread across them.
    #[schemars(with = "Vec<SubnetId>")]
    pub subnet_ids: Vec<String>,
    #[schemars(with = "Vec<SecurityGroupId>")]
    pub security_group_ids: Vec<String>,
    /// Pod network (default 192.168.0.0/16, Calico's default pool).
    #[schemars(with = "Option<Cidr>")]
    pub pod_subnet: Option<String>,
    /// Service network (default 10.96.0.0/12, kubeadm's default). At most a /12.
    #[schemars(with = "Option<Cidr>")]
    pub service_subnet: Option<String>,
    /// The VPC's CIDR blocks, when known: the pod and service networks must not overlap them.
    #[serde(default)]
    #[schemars(with = "Vec<Cidr>")]
    pub vpc_cidrs: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneFile {
    /// Number of control-plane nodes: 1, 3, 5 or 7 (etcd needs a majority).
    pub count: i64,
    #[schemars(with = "InstanceType")]
    pub instance_type: String,
    /// An existing instance profile; `iam/master-policy.json` is what its role needs.
    #[schemars(with = "InstanceProfileName")]
    pub instance_profile: String,
    /// Root volume size in GiB (gp3, encrypted). Default 50.
    pub root_volume_size: Option<i64>,
    pub endpoint: EndpointFile,
}

/// How clients reach the API servers: `nlb`, an AWS Network Load Balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointType {
    Nlb,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointFile {
    #[serde(rename = "type")]
    pub kind: EndpointType,
    /// NLB scheme: internal (default) or internet-facing.
    pub internal: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerPoolFile {
    #[schemars(with = "PoolName")]
    pub name: String,
    #[schemars(with = "InstanceType")]
    pub instance_type: String,
    #[schemars(with = "InstanceProfileName")]
    pub instance_profile: String,
    pub min_size: i64,
    pub max_size: i64,
    pub desired_capacity: i64,
    /// Root volume size in GiB (gp3, encrypted). Default 50.
    pub root_volume_size: Option<i64>,
    /// Extra Kubernetes node labels for this pool's nodes.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SsmFile {
    /// Parameter Store prefix for join material and state. Default `/haimg/<metadata.name>`.
    #[schemars(with = "Option<SsmPath>")]
    pub prefix: Option<String>,
    /// KMS key for the SecureString join parameters. Default `alias/aws/ssm`.
    #[schemars(with = "Option<KmsKeyId>")]
    pub kms_key_id: Option<String>,
}
