//! `/etc/haimg/node.yaml` (DESIGN §7): what cloud-init hands the node agent.
//!
//! Written by `haimg render` into the user-data, read by `haimg node …`. With the default
//! credential source it holds no secret of any kind: join material lives only in SSM
//! Parameter Store and in 0600 files the agent writes at run time. Only with
//! `spec.credentials.source: static` does it carry a token (and, on masters, the
//! certificate key); the file is then written 0600.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::contract::types::{
    Cidr, ClusterName, KmsKeyId, KubernetesVersion, PoolName, Region, SsmPath,
};
use crate::error::{Diagnostic, Diagnostics, Error};

pub const NODE_CONFIG_KIND: &str = "NodeConfig";
/// Where cloud-init writes the node config.
pub const NODE_CONFIG_PATH: &str = "/etc/haimg/node.yaml";

impl NodeConfig {
    /// Parses a node config; errors name the file, position and field.
    pub fn from_yaml(text: &str, file: &str) -> Result<Self, Error> {
        let invalid = |pos, path: String, message: String| {
            Error::Invalid(Diagnostics(vec![Diagnostic {
                file: file.into(),
                pos,
                path,
                message,
            }]))
        };
        let doc = crate::yaml::parse(text)
            .map_err(|e| invalid(e.pos, String::new(), format!("invalid YAML: {}", e.message)))?;
        let cfg: NodeConfig = crate::yaml::from_document(&doc).map_err(|(pointer, msg)| {
            invalid(doc.value_pos(&pointer), crate::yaml::dotted(&pointer), msg)
        })?;
        if cfg.api_version != crate::contract::API_VERSION || cfg.kind != NODE_CONFIG_KIND {
            return Err(invalid(
                doc.value_pos("/apiVersion"),
                "apiVersion".into(),
                format!(
                    "expected apiVersion {} and kind {NODE_CONFIG_KIND}",
                    crate::contract::API_VERSION
                ),
            ));
        }
        if (cfg.role == Role::Worker) != cfg.pool.is_some() {
            return Err(invalid(
                doc.value_pos("/pool"),
                "pool".into(),
                "workers name their pool; masters have none".into(),
            ));
        }
        Ok(cfg)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeConfig {
    pub api_version: String,
    pub kind: String,
    pub cluster: ClusterName,
    pub role: Role,
    /// The worker pool (workers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolName>,
    pub region: Region,
    pub ssm: NodeSsm,
    pub endpoint: NodeEndpoint,
    pub kubernetes: NodeKubernetes,
    /// The Auto Scaling group and lifecycle hook (absent for VIP-mode masters, which have
    /// fixed addresses and no group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<NodeAutoscaling>,
    /// A fixed identity (VIP-mode masters): used instead of instance metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<FixedIdentity>,
    /// Static join credentials (`spec.credentials.source: static`), used instead of SSM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<StaticJoin>,
    /// Timings and local endpoints of the agent; defaults suit AWS, tests shorten them.
    #[serde(default, skip_serializing_if = "AgentSettings::is_default")]
    pub agent: AgentSettings,
}

/// Every timing constant of the agent, with why it has its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AgentSettings {
    /// The init lock's lease. Its holder renews it every third of this while it works
    /// (`kubeadm init`, the CNI, publishing: however long they take), so the lease only
    /// bounds how long a dead or frozen holder stays in charge, and how far the masters'
    /// clocks may disagree (two thirds of it) before a live holder looks expired.
    pub init_lease_seconds: u64,
    /// The rotation lock's lease (renewed the same way): `refresh` runs every 10 minutes,
    /// so a dead rotator is replaced by the next timer run after this.
    pub rotation_lease_seconds: u64,
    /// Overall bound on a bootstrap's waiting: after an hour something needs a human,
    /// and the instance failing its health check gets it replaced.
    pub join_timeout_seconds: u64,
    /// Polling backoff for join material: first delay and cap. With full jitter and a
    /// 20 s cap, 300 waiting nodes average ~30 GetParameter calls/s, inside SSM's default
    /// throughput, and the last of them sees new material within 20 s.
    pub poll_initial_millis: u64,
    pub poll_max_millis: u64,
    /// Join material with less life left than this is never used (a join takes minutes;
    /// the certificate key must still be valid when the node downloads the certs).
    pub min_remaining_seconds: u64,
    /// Lifetime of the bootstrap tokens haimg creates; rotated at half-life.
    pub token_ttl_seconds: u64,
    /// Lifetime of the uploaded certificates (kubeadm's `kubeadm-certs` Secret: fixed 2 h).
    pub certificate_key_ttl_seconds: u64,
    /// Bound on one kubeadm run.
    pub kubeadm_timeout_seconds: u64,
    /// Bound on draining a node on scale-in (the lifecycle hook allows 600 s in all).
    pub drain_timeout_seconds: u64,
    /// How often `watch` polls IMDS for the Auto Scaling lifecycle state.
    pub watch_interval_seconds: u64,
    /// A replacement master waits for a membership check newer than its boot, at most
    /// this long, before joining (reconcile runs every minute on the live masters).
    pub membership_wait_seconds: u64,
    /// Bound on waiting for containerd's CRI socket before kubeadm runs: cloud-init's
    /// final stage is not ordered after containerd; containerd listens within seconds of
    /// starting, so five minutes only ever runs out when it does not start at all.
    pub cri_wait_seconds: u64,
    /// How many times bootstrap runs `kubeadm init` or `join` (each failure reset, backed
    /// off, the material re-read) before it gives up and marks the instance Unhealthy so
    /// its group replaces it. Transient causes (the API not yet behind the load balancer,
    /// a rotation overlapping a join) pass within a few tries; five with the polling
    /// backoff span minutes, not the hour a stuck node would otherwise sit unjoined.
    pub kubeadm_attempts: u32,
    /// How often a drain that waits (a disruption budget, a grace period) records a
    /// lifecycle-action heartbeat: well inside the hook's heartbeat timeout (600 s).
    pub lifecycle_heartbeat_seconds: u64,
    pub etcd: EtcdSettings,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            init_lease_seconds: 180,
            rotation_lease_seconds: 180,
            join_timeout_seconds: 3600,
            poll_initial_millis: 1000,
            poll_max_millis: 20_000,
            min_remaining_seconds: 900,
            token_ttl_seconds: 4 * 3600,
            certificate_key_ttl_seconds: 2 * 3600,
            kubeadm_timeout_seconds: 900,
            drain_timeout_seconds: 300,
            watch_interval_seconds: 5,
            membership_wait_seconds: 600,
            cri_wait_seconds: 300,
            kubeadm_attempts: 5,
            lifecycle_heartbeat_seconds: 60,
            etcd: EtcdSettings::default(),
        }
    }
}

impl AgentSettings {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The local etcd member, as kubeadm's stacked etcd serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EtcdSettings {
    pub endpoint: String,
    /// Client TLS material (paths on the node); unused for an `http://` endpoint.
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        Self {
            endpoint: "https://127.0.0.1:2379".into(),
            ca_file: "/etc/kubernetes/pki/etcd/ca.crt".into(),
            cert_file: "/etc/kubernetes/pki/etcd/healthcheck-client.crt".into(),
            key_file: "/etc/kubernetes/pki/etcd/healthcheck-client.key".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSsm {
    pub prefix: SsmPath,
    pub kms_key_id: KmsKeyId,
}

/// How the node reaches the API servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum NodeEndpoint {
    /// An NLB whose DNS name the first master looks up by name at run time (it exists
    /// only after `haimg up`) and publishes with the join material.
    #[serde(rename_all = "camelCase")]
    Nlb {
        load_balancer_name: String,
        port: u16,
    },
    /// A keepalived VIP; with haproxy on the masters the API servers bind another port.
    #[serde(rename_all = "camelCase")]
    Vip {
        address: std::net::IpAddr,
        port: u16,
        api_server_bind_port: u16,
        /// Static pods (keepalived, haproxy) are placed in /etc/kubernetes/manifests
        /// before kubeadm runs.
        static_pods: bool,
    },
}

impl NodeEndpoint {
    /// The port the local API server binds.
    pub fn api_server_bind_port(&self) -> u16 {
        match self {
            NodeEndpoint::Nlb { port, .. } => *port,
            NodeEndpoint::Vip {
                api_server_bind_port,
                ..
            } => *api_server_bind_port,
        }
    }
}

/// One-shot join credentials written into the user-data (see `spec::credentials`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticJoin {
    /// This node runs `kubeadm init` (the first master, which also gets the CA key);
    /// every other node joins.
    pub init: bool,
    pub token: super::secret::Secret,
    /// Masters only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_key: Option<super::secret::Secret>,
    pub ca_cert_hashes: Vec<String>,
}

/// The lifetime of the bootstrap token of static credentials (`credentials.source:
/// static`): the 24 h the spec's warnings and the docs promise workers. Nothing rotates
/// it, so it is kubeadm's own default rather than the rotated tokens' shorter life.
pub const STATIC_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A node's fixed name and address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FixedIdentity {
    pub name: String,
    pub address: std::net::IpAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeKubernetes {
    pub version: KubernetesVersion,
    pub pod_subnet: Cidr,
    pub service_subnet: Cidr,
    /// `IfNotPresent`: images are pre-pulled into the image; an air-gapped node must never
    /// try a registry for an image it already has.
    pub image_pull_policy: String,
    /// Extra kubelet node labels (pool labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAutoscaling {
    /// The Auto Scaling group this node belongs to.
    pub group_name: String,
    /// The termination lifecycle hook the watcher completes after draining.
    pub lifecycle_hook_name: String,
}
