//! The cluster spec as written in `cluster.yaml` (DESIGN §4): plain data, strict keys.
//!
//! Domain strings stay `String` here and are checked when the file is resolved into
//! [`super::ClusterSpec`], so that every bad value in a file is reported at once; their
//! JSON Schema still comes from the validated type (`#[schemars(with = …)]`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::contract::types::*;

pub use crate::contract::API_VERSION;

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
    /// Where nodes get their join credentials (token, CA hash, certificate key).
    #[serde(default)]
    pub credentials: CredentialsFile,
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

/// How clients reach the API servers.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum EndpointFile {
    /// An AWS Network Load Balancer in front of the API servers.
    Nlb {
        /// NLB scheme: internal (default) or internet-facing.
        internal: Option<bool>,
    },
    /// A virtual IP held by keepalived on the masters (on-prem, or any network without a
    /// managed load balancer), with haproxy on every master by default.
    Vip(VipFile),
    /// Dedicated load balancer nodes outside the cluster (seeds 003 and 004): a haproxy +
    /// keepalived pair holding a VIP, or a single nginx `stream` proxy (not HA).
    External(ExternalFile),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalFile {
    /// The address clients use: the pair's VIP (haproxy), or the nginx node's address.
    pub address: String,
    /// The port clients use (default 6443).
    pub port: Option<i64>,
    /// The masters, the load balancer's backends: exactly `controlPlane.count` of them.
    pub nodes: Vec<VipNodeFile>,
    pub load_balancer: ExternalLbFile,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalLbFile {
    /// `haproxy`: haproxy and keepalived on every load balancer node (at least 2), sharing
    /// the VIP `address`. `nginx`: one nginx `stream` proxy on one node, which is a single
    /// point of failure.
    pub software: LbSoftwareFile,
    /// The interface that carries the VIP on the load balancer nodes (haproxy only;
    /// default eth0).
    #[schemars(with = "Option<InterfaceName>")]
    pub interface: Option<String>,
    /// VRRP virtual router id, 1-255 (haproxy only).
    pub router_id: Option<i64>,
    /// The load balancer nodes, in keepalived priority order.
    pub nodes: Vec<VipNodeFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LbSoftwareFile {
    Haproxy,
    Nginx,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VipFile {
    /// The virtual IP clients use; it must not be a node's address or inside the pod or
    /// service network.
    pub address: String,
    /// The port clients use (default 6443).
    pub port: Option<i64>,
    /// The network interface that carries the VIP on every master (default eth0).
    #[schemars(with = "Option<InterfaceName>")]
    pub interface: Option<String>,
    /// VRRP virtual router id, 1-255, unique on the network segment.
    pub router_id: i64,
    /// Run haproxy on every master in front of all API servers (default true). The API
    /// servers then listen on 6444 and haproxy owns the VIP port.
    pub haproxy: Option<bool>,
    /// The masters, in priority order: exactly `controlPlane.count` of them.
    pub nodes: Vec<VipNodeFile>,
    /// Container images of the keepalived and haproxy static pods (pre-pull them in the
    /// image recipe's `extraImages`).
    #[serde(default)]
    pub images: VipImagesFile,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VipNodeFile {
    /// The node's host name (its Kubernetes node name).
    #[schemars(with = "NodeName")]
    pub name: String,
    /// The node's address on `interface`.
    pub address: String,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VipImagesFile {
    /// Default `docker.io/osixia/keepalived:2.0.20`.
    #[schemars(with = "Option<ImageRef>")]
    pub keepalived: Option<String>,
    /// Default `docker.io/library/haproxy:2.8.14`.
    #[schemars(with = "Option<ImageRef>")]
    pub haproxy: Option<String>,
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
pub struct CredentialsFile {
    /// `ssm` (default): the agent keeps fresh join material in Parameter Store, rotated
    /// before it expires. `static`: one-shot offline bootstrap; the token, certificate key
    /// and cluster CA are generated once into `file` and written into the user-data. Nodes
    /// must join within the token's 24 h and masters within the certificate key's 2 h
    /// after the first master initializes. VIP and external endpoints only.
    pub source: Option<CredentialSourceFile>,
    /// Where static credentials are kept (0600; created by `haimg render` when missing),
    /// relative to the spec file. Default `<metadata.name>-credentials.yaml`.
    pub file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialSourceFile {
    Ssm,
    Static,
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
