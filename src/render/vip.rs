//! VIP mode (DESIGN §4): per-master keepalived (unicast VRRP), its health check, haproxy in
//! front of every API server, and the static pods that run them.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::templates::Templates;
use super::Group;
use crate::error::Result;
use std::net::IpAddr;

use crate::spec::{ClusterSpec, VipNode};

/// A file the user-data writes on the node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFile {
    pub path: String,
    pub permissions: &'static str,
    pub content: String,
    /// Its name under `vip/<node>/` in `render --all` output (static pods are not listed).
    #[serde(skip)]
    pub vip_name: Option<&'static str>,
}

/// Keepalived priorities: the first node 150, then one less per node (all below 255, the
/// priority reserved for an address owner).
const TOP_PRIORITY: usize = 150;

#[derive(Serialize)]
struct KeepalivedCtx {
    description: String,
    router_name: String,
    instance_name: String,
    interface: String,
    router_id: u8,
    priority: usize,
    self_address: String,
    peers: Vec<String>,
    auth_pass: String,
    vip_cidr: String,
}

#[derive(Serialize)]
struct CheckCtx {
    description: String,
    vip: String,
    port: u16,
}

#[derive(Serialize)]
pub(super) struct Server {
    pub(super) name: String,
    pub(super) address: String,
}

#[derive(Serialize)]
struct HaproxyCtx {
    description: String,
    bind: String,
    servers: Vec<Server>,
}

#[derive(Serialize)]
struct PodCtx {
    description: String,
    image: String,
    port: u16,
    api_server_port_text: String,
}

/// `host:port` with IPv6 hosts in brackets.
pub(super) fn host_port(ip: &std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        v4 => format!("{v4}:{port}"),
    }
}

/// The files a VIP-mode master's user-data writes (none for other groups).
pub fn files(spec: &ClusterSpec, group: Group, t: &Templates) -> Result<Vec<NodeFile>> {
    let (Group::FixedMaster { node, index }, crate::spec::Endpoint::Vip(vip)) =
        (group, &spec.control_plane.endpoint)
    else {
        return Ok(vec![]);
    };
    let description = format!(
        "haimg {}: cluster {}, API VIP {}, node {}",
        env!("CARGO_PKG_VERSION"),
        spec.name,
        host_port(&vip.address, vip.port),
        node.name
    );
    let mut out = vec![
        NodeFile {
            path: "/etc/keepalived/keepalived.conf".into(),
            permissions: "0644",
            content: keepalived(
                t,
                &description,
                spec,
                node,
                index,
                &vip.nodes,
                &vip.interface,
                vip.router_id,
                vip.address,
            )?,
            vip_name: Some("keepalived.conf"),
        },
        NodeFile {
            path: "/etc/keepalived/check_apiserver.sh".into(),
            permissions: "0755",
            content: check_script(t, &description, vip.address, vip.port)?,
            vip_name: Some("check_apiserver.sh"),
        },
    ];
    if vip.haproxy {
        out.push(NodeFile {
            path: "/etc/haproxy/haproxy.cfg".into(),
            permissions: "0644",
            content: haproxy(t, &description, vip.port, &vip.nodes, vip.api_server_port())?,
            vip_name: Some("haproxy.cfg"),
        });
    }
    let pod = |image: &str| PodCtx {
        description: description.clone(),
        image: image.to_string(),
        port: vip.port,
        api_server_port_text: format!("port {}", vip.api_server_port()),
    };
    out.push(NodeFile {
        path: "/etc/kubernetes/manifests/keepalived.yaml".into(),
        permissions: "0644",
        content: t.render("vip/keepalived.pod.yaml.tera", &pod(&vip.keepalived_image))?,
        vip_name: None,
    });
    if vip.haproxy {
        out.push(NodeFile {
            path: "/etc/kubernetes/manifests/haproxy.yaml".into(),
            permissions: "0644",
            content: t.render("vip/haproxy.pod.yaml.tera", &pod(&vip.haproxy_image))?,
            vip_name: None,
        });
    }
    Ok(out)
}

/// keepalived.conf for `node` (position `index` in `all`, the VRRP peers) holding `address`.
#[allow(clippy::too_many_arguments)]
pub(super) fn keepalived(
    t: &Templates,
    description: &str,
    spec: &ClusterSpec,
    node: &VipNode,
    index: usize,
    all: &[VipNode],
    interface: &str,
    router_id: u8,
    address: IpAddr,
) -> Result<String> {
    // VRRP PASS authentication is at most 8 characters and travels in clear: derive it from
    // the cluster and router id, so it separates clusters without pretending to be a secret.
    let digest = Sha256::digest(format!("haimg/{}/{}", spec.name, router_id));
    let auth_pass = hex::encode(&digest[..4]);
    let prefix = if address.is_ipv4() { 32 } else { 128 };
    let ctx = KeepalivedCtx {
        description: description.to_string(),
        router_name: format!("haimg_{}_{}", spec.name, node.name).replace('-', "_"),
        instance_name: format!("haimg_{}_api", spec.name).replace('-', "_"),
        interface: interface.to_string(),
        router_id,
        priority: TOP_PRIORITY - index,
        self_address: node.address.to_string(),
        peers: all
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| n.address.to_string())
            .collect(),
        auth_pass,
        vip_cidr: format!("{address}/{prefix}"),
    };
    t.render("vip/keepalived.conf.tera", &ctx)
}

/// The keepalived health check: the API answers through this node, and through the VIP
/// while this node holds it.
pub(super) fn check_script(
    t: &Templates,
    description: &str,
    vip: IpAddr,
    port: u16,
) -> Result<String> {
    t.render(
        "vip/check_apiserver.sh.tera",
        &CheckCtx {
            description: description.to_string(),
            vip: vip.to_string(),
            port,
        },
    )
}

/// haproxy.cfg: TCP on `port`, round robin over `servers` on `backend_port`.
pub(super) fn haproxy(
    t: &Templates,
    description: &str,
    port: u16,
    servers: &[VipNode],
    backend_port: u16,
) -> Result<String> {
    let ctx = HaproxyCtx {
        description: description.to_string(),
        bind: format!("*:{port}"),
        servers: servers
            .iter()
            .map(|n| Server {
                name: n.name.to_string(),
                address: host_port(&n.address, backend_port),
            })
            .collect(),
    };
    t.render("vip/haproxy.cfg.tera", &ctx)
}
