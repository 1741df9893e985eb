//! `endpoint.type: external`: dedicated load balancer nodes outside the cluster, rendered
//! under `external-lb/<node>/` for the operator to install (they are not cluster nodes).
//!
//! - `software: haproxy` (seed 003): haproxy and keepalived on every LB node, the VIP
//!   moving between them by unicast VRRP; the same files as VIP mode's, pointed at the
//!   masters' API servers on the client port.
//! - `software: nginx` (seed 004): one nginx `stream` proxy. It is a single point of
//!   failure: the cluster's API is down whenever that host is.

use serde::Serialize;

use super::templates::Templates;
use super::vip::{check_script, haproxy, host_port, keepalived, Server};
use super::Artifact;
use crate::error::Result;
use crate::spec::{ClusterSpec, Endpoint, LbSoftware};

#[derive(Serialize)]
struct NginxCtx {
    description: String,
    listen: String,
    servers: Vec<Server>,
}

/// The files of every load balancer node (none unless the endpoint is external).
pub fn artifacts(spec: &ClusterSpec, t: &Templates) -> Result<Vec<Artifact>> {
    let Endpoint::External(e) = &spec.control_plane.endpoint else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for (index, node) in e.lb_nodes.iter().enumerate() {
        let description = format!(
            "haimg {}: cluster {}, API endpoint {}, load balancer node {}",
            env!("CARGO_PKG_VERSION"),
            spec.name,
            host_port(&e.address, e.port),
            node.name
        );
        let file = |name: &str, contents: String| Artifact {
            path: format!("external-lb/{}/{name}", node.name),
            contents,
        };
        match &e.software {
            LbSoftware::Haproxy {
                interface,
                router_id,
            } => {
                out.push(file(
                    "keepalived.conf",
                    keepalived(
                        t,
                        &description,
                        spec,
                        node,
                        index,
                        &e.lb_nodes,
                        interface,
                        *router_id,
                        e.address,
                    )?,
                ));
                out.push(file(
                    "check_apiserver.sh",
                    check_script(t, &description, e.address, e.port)?,
                ));
                out.push(file(
                    "haproxy.cfg",
                    haproxy(t, &description, e.port, &e.nodes, e.port)?,
                ));
            }
            LbSoftware::Nginx => {
                let ctx = NginxCtx {
                    description,
                    listen: e.port.to_string(),
                    servers: e
                        .nodes
                        .iter()
                        .map(|n| Server {
                            name: n.name.to_string(),
                            address: host_port(&n.address, e.port),
                        })
                        .collect(),
                };
                out.push(file("nginx.conf", t.render("vip/nginx.conf.tera", &ctx)?));
            }
        }
    }
    Ok(out)
}
