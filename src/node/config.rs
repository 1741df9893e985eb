//! `/etc/haimg/node.yaml` (DESIGN §7): what cloud-init hands the node agent.
//!
//! Written by `haimg render` into the user-data, read by `haimg node …`. It holds no
//! secret of any kind: join material lives only in SSM Parameter Store and in 0600 files
//! the agent writes at run time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Diagnostic, Diagnostics, Error};
use crate::spec::types::{Cidr, ClusterName, KmsKeyId, KubernetesVersion, PoolName, Region, SsmPath};

pub const NODE_CONFIG_KIND: &str = "NodeConfig";
/// Where cloud-init writes the node config.
pub const NODE_CONFIG_PATH: &str = "/etc/haimg/node.yaml";

impl NodeConfig {
    /// Parses a node config; errors name the file, position and field.
    pub fn from_yaml(text: &str, file: &str) -> Result<Self, Error> {
        let invalid = |pos, path: String, message: String| {
            Error::Invalid(Diagnostics(vec![Diagnostic { file: file.into(), pos, path, message }]))
        };
        let doc = crate::yaml::parse(text).map_err(|e| invalid(e.pos, String::new(), format!("invalid YAML: {}", e.message)))?;
        let cfg: NodeConfig = crate::yaml::from_document(&doc).map_err(|(pointer, msg)| {
            invalid(doc.value_pos(&pointer), crate::spec::schema::dotted(&pointer), msg)
        })?;
        if cfg.api_version != crate::spec::wire::API_VERSION || cfg.kind != NODE_CONFIG_KIND {
            return Err(invalid(
                doc.value_pos("/apiVersion"),
                "apiVersion".into(),
                format!("expected apiVersion {} and kind {NODE_CONFIG_KIND}", crate::spec::wire::API_VERSION),
            ));
        }
        if (cfg.role == Role::Worker) != cfg.pool.is_some() {
            return Err(invalid(doc.value_pos("/pool"), "pool".into(), "workers name their pool; masters have none".into()));
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
    pub autoscaling: NodeAutoscaling,
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
    Nlb { load_balancer_name: String, port: u16 },
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
