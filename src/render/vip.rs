//! VIP mode (DESIGN §4): per-master keepalived (unicast VRRP), its health check, haproxy in
//! front of every API server, and the static pods that run them.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::templates::Templates;
use super::Group;
use crate::error::Result;
use crate::spec::ClusterSpec;

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
struct Server {
    name: String,
    address: String,
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
fn host_port(ip: &std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        v4 => format!("{v4}:{port}"),
    }
}

/// The files a VIP-mode master's user-data writes (none for other groups).
pub fn files(spec: &ClusterSpec, group: Group, t: &Templates) -> Result<Vec<NodeFile>> {
    let Group::VipMaster { node, index, vip } = group else {
        return Ok(vec![]);
    };
    let description = format!(
        "haimg {}: cluster {}, API VIP {}, node {}",
        env!("CARGO_PKG_VERSION"),
        spec.name,
        host_port(&vip.address, vip.port),
        node.name
    );
    // VRRP PASS authentication is at most 8 characters and travels in clear: derive it from
    // the cluster and router id, so it separates clusters without pretending to be a secret.
    let digest = Sha256::digest(format!("haimg/{}/{}", spec.name, vip.router_id));
    let auth_pass: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let prefix = if vip.address.is_ipv4() { 32 } else { 128 };
    let keepalived = KeepalivedCtx {
        description: description.clone(),
        router_name: format!("haimg_{}_{}", spec.name, node.name).replace('-', "_"),
        instance_name: format!("haimg_{}_api", spec.name).replace('-', "_"),
        interface: vip.interface.clone(),
        router_id: vip.router_id,
        priority: TOP_PRIORITY - index,
        self_address: node.address.to_string(),
        peers: vip
            .nodes
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| n.address.to_string())
            .collect(),
        auth_pass,
        vip_cidr: format!("{}/{prefix}", vip.address),
    };
    let mut out = vec![
        NodeFile {
            path: "/etc/keepalived/keepalived.conf".into(),
            permissions: "0644",
            content: t.render("vip/keepalived.conf.tera", &keepalived)?,
            vip_name: Some("keepalived.conf"),
        },
        NodeFile {
            path: "/etc/keepalived/check_apiserver.sh".into(),
            permissions: "0755",
            content: t.render(
                "vip/check_apiserver.sh.tera",
                &CheckCtx {
                    description: description.clone(),
                    vip: vip.address.to_string(),
                    port: vip.port,
                },
            )?,
            vip_name: Some("check_apiserver.sh"),
        },
    ];
    if vip.haproxy {
        let haproxy = HaproxyCtx {
            description: description.clone(),
            bind: format!("*:{}", vip.port),
            servers: vip
                .nodes
                .iter()
                .map(|n| Server {
                    name: n.name.to_string(),
                    address: host_port(&n.address, vip.api_server_port()),
                })
                .collect(),
        };
        out.push(NodeFile {
            path: "/etc/haproxy/haproxy.cfg".into(),
            permissions: "0644",
            content: t.render("vip/haproxy.cfg.tera", &haproxy)?,
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
