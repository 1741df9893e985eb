//! The cluster spec (`cluster.yaml`, DESIGN §4): loading, validation and the resolved model.
//!
//! Loading runs in three steps, and reports every problem it finds, each with file,
//! line:column and field path:
//! 1. YAML syntax ([`crate::yaml`]), with positions for every key and value;
//! 2. structure, against the published JSON Schema ([`schema`]): unknown keys with a
//!    "did you mean", missing keys, wrong types;
//! 3. meaning ([`resolve`]): each domain string through its validated type, then the rules
//!    that relate fields (etcd quorum, CIDR overlaps, pool sizes, …), producing a
//!    [`ClusterSpec`] in which every default is applied and nothing is optional.

pub mod credentials;
pub(crate) mod resolve;
pub mod schema;
pub mod wire;

use std::collections::BTreeMap;
use std::path::Path;

use crate::contract::types::*;
use crate::error::{Diagnostic, Diagnostics, Error};
pub use resolve::resolve;

/// The example cluster embedded in the binary: the default when no `cluster.yaml` exists.
pub const EXAMPLE: &str = include_str!("../../examples/cluster.yaml");
pub const EXAMPLE_NAME: &str = "<embedded examples/cluster.yaml>";

/// A fully validated cluster, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    pub name: ClusterName,
    pub region: Region,
    pub kubernetes_version: KubernetesVersion,
    pub image: ImageSource,
    pub network: Network,
    pub control_plane: ControlPlane,
    pub worker_pools: Vec<WorkerPool>,
    pub ssm: Ssm,
    pub credentials: Credentials,
    /// User tags, already checked against the reserved prefixes.
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Ami(AmiId),
    SsmParameter(AmiParameter),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub vpc_id: VpcId,
    pub subnet_ids: Vec<SubnetId>,
    pub security_group_ids: Vec<SecurityGroupId>,
    pub pod_subnet: Cidr,
    pub service_subnet: Cidr,
    pub vpc_cidrs: Vec<Cidr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlane {
    /// 1, 3, 5 or 7.
    pub count: u8,
    pub instance_type: InstanceType,
    pub instance_profile: InstanceProfileName,
    pub root_volume_gib: u32,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Nlb { internal: bool },
    Vip(Vip),
    External(External),
}

impl Endpoint {
    /// The masters' fixed identities (VIP and external modes; NLB masters run in an ASG).
    pub fn fixed_masters(&self) -> &[VipNode] {
        match self {
            Endpoint::Nlb { .. } => &[],
            Endpoint::Vip(v) => &v.nodes,
            Endpoint::External(e) => &e.nodes,
        }
    }
    /// The address and port clients use, when fixed.
    pub fn fixed_address(&self) -> Option<(std::net::IpAddr, u16)> {
        match self {
            Endpoint::Nlb { .. } => None,
            Endpoint::Vip(v) => Some((v.address, v.port)),
            Endpoint::External(e) => Some((e.address, e.port)),
        }
    }
}

/// Dedicated load balancer nodes in front of the masters (seeds 003, 004).
#[derive(Debug, Clone, PartialEq)]
pub struct External {
    pub address: std::net::IpAddr,
    pub port: u16,
    /// The masters (backends, API servers on `port`).
    pub nodes: Vec<VipNode>,
    pub software: LbSoftware,
    /// The load balancer nodes (keepalived priority order for haproxy; one for nginx).
    pub lb_nodes: Vec<VipNode>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LbSoftware {
    /// haproxy + keepalived on every LB node, sharing the VIP.
    Haproxy { interface: String, router_id: u8 },
    /// A single nginx `stream` proxy: not HA.
    Nginx,
}

/// Where nodes get join credentials.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// Parameter Store, kept fresh by the masters (the default).
    Ssm,
    /// Generated once into a local file and written into the user-data (one-shot, offline).
    /// `material` is filled by [`credentials::load_or_create`] before rendering.
    Static {
        file: String,
        material: Option<Box<credentials::StaticMaterial>>,
    },
}

/// A keepalived VIP on the masters (DESIGN §4, VIP mode).
#[derive(Debug, Clone, PartialEq)]
pub struct Vip {
    pub address: std::net::IpAddr,
    pub port: u16,
    pub interface: String,
    pub router_id: u8,
    /// haproxy on every master; the API servers then bind 6444.
    pub haproxy: bool,
    pub nodes: Vec<VipNode>,
    pub keepalived_image: String,
    pub haproxy_image: String,
}

impl Vip {
    /// The port the API servers listen on.
    pub fn api_server_port(&self) -> u16 {
        if self.haproxy {
            STACKED_API_SERVER_PORT
        } else {
            self.port
        }
    }
}

/// With haproxy stacked on the masters, haproxy owns the VIP port and the API servers move
/// to 6444 (seed 002).
pub const STACKED_API_SERVER_PORT: u16 = 6444;

#[derive(Debug, Clone, PartialEq)]
pub struct VipNode {
    pub name: NodeName,
    pub address: std::net::IpAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerPool {
    pub name: PoolName,
    pub instance_type: InstanceType,
    pub instance_profile: InstanceProfileName,
    pub min_size: u32,
    pub max_size: u32,
    pub desired_capacity: u32,
    pub root_volume_gib: u32,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ssm {
    pub prefix: SsmPath,
    pub kms_key_id: KmsKeyId,
}

/// A loaded spec and the warnings worth showing about it.
#[derive(Debug)]
pub struct Loaded {
    pub spec: ClusterSpec,
    pub warnings: Vec<Diagnostic>,
    /// The display name of the file it came from.
    pub source: String,
}

/// Loads `path`, or `./cluster.yaml`, or the embedded example (in that order).
pub fn load(path: Option<&Path>) -> Result<Loaded, Error> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                Error::Usage(format!("cannot read cluster spec {}: {e}", p.display()))
            })?;
            load_str(&text, &p.display().to_string())
        }
        None if Path::new("cluster.yaml").exists() => load(Some(Path::new("cluster.yaml"))),
        None => load_str(EXAMPLE, EXAMPLE_NAME),
    }
}

/// Parses and validates a spec; `file` is the name used in messages.
pub fn load_str(text: &str, file: &str) -> Result<Loaded, Error> {
    let mut doc = crate::yaml::parse(text).map_err(|e| {
        Error::Invalid(Diagnostics(vec![Diagnostic {
            file: file.into(),
            pos: e.pos,
            path: String::new(),
            message: format!("invalid YAML: {}", e.message),
        }]))
    })?;
    if !doc.value.is_object() {
        return Err(Error::Invalid(Diagnostics(vec![Diagnostic {
            file: file.into(),
            pos: doc.value_pos(""),
            path: String::new(),
            message: "expected a mapping with apiVersion, kind, metadata and spec".into(),
        }])));
    }

    let structural = schema::check(&doc, file);
    if structural.blocking {
        let mut d = Diagnostics(structural.diagnostics.into_iter().map(|(_, d)| d).collect());
        d.sort();
        return Err(Error::Invalid(d));
    }
    for (pointer, meant) in &structural.unknown {
        match meant {
            Some(target) => doc.rename(pointer, target),
            None => doc.remove(pointer),
        }
    }
    let wire: wire::ClusterFile =
        crate::yaml::from_document(&doc).map_err(|(pointer, message)| {
            let mut d = Diagnostics(
                structural
                    .diagnostics
                    .iter()
                    .map(|(_, d)| d.clone())
                    .collect(),
            );
            d.0.push(Diagnostic {
                file: file.into(),
                pos: doc.value_pos(&pointer),
                path: crate::yaml::dotted(&pointer),
                message,
            });
            d.sort();
            Error::Invalid(d)
        })?;
    let outcome = resolve(&wire, &doc, file);

    // Typed findings win over the schema's at the same place; keep the rest of both.
    let typed_at: Vec<String> = outcome.errors.iter().map(|(p, _)| p.clone()).collect();
    let mut all = Diagnostics(
        structural
            .diagnostics
            .into_iter()
            .filter(|(p, _)| !typed_at.contains(p))
            .map(|(_, d)| d)
            .chain(outcome.errors.into_iter().map(|(_, d)| d))
            .collect(),
    );
    match outcome.spec {
        Some(spec) if all.is_empty() => Ok(Loaded {
            spec,
            warnings: outcome.warnings,
            source: file.into(),
        }),
        _ => {
            all.sort();
            Err(Error::Invalid(all))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_example_is_valid() {
        let loaded = load_str(EXAMPLE, EXAMPLE_NAME).unwrap();
        assert_eq!(loaded.spec.name.as_str(), "demo");
        assert_eq!(loaded.spec.control_plane.count, 3);
        assert_eq!(loaded.spec.ssm.prefix.as_str(), "/haimg/demo");
    }
}
