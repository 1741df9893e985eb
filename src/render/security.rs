//! The security group rules the cluster needs, as the input of
//! `aws ec2 authorize-security-group-ingress --cli-input-json` (one file, rules on the
//! spec's first security group, which every node carries).
//!
//! Rendered from typed structs (serde), not a template: the JSON is the struct.
//!
//! | port | from | why |
//! |---|---|---|
//! | API (6443, or the VIP port and 6444 behind haproxy) | the group, `spec.network.vpcCidrs` | nodes, the NLB (client IP preservation off: it connects from its own addresses in the VPC) and in-VPC clients |
//! | 2379-2380/tcp | the group | etcd clients and peers (stacked etcd on the masters) |
//! | 10250/tcp | the group | the kubelet API (logs, exec, metrics from the API server) |
//! | 179/tcp | the group | Calico's BGP between nodes |
//! | IP protocol 4 | the group | Calico's IP-in-IP pod traffic |
//! | IP protocol 112 | the group | VRRP between keepalived peers (VIP mode) |

use serde::Serialize;

use crate::spec::{ClusterSpec, Endpoint};

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ingress {
    pub group_id: String,
    pub ip_permissions: Vec<Permission>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Permission {
    pub ip_protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_port: Option<u16>,
    pub user_id_group_pairs: Vec<GroupPair>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_ranges: Vec<IpRange>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupPair {
    pub group_id: String,
    pub description: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpRange {
    pub cidr_ip: String,
    pub description: String,
}

/// The cluster's ingress rules.
pub fn ingress(spec: &ClusterSpec) -> Ingress {
    let group = spec.network.security_group_ids[0].to_string();
    let own = |why: &str| {
        vec![GroupPair {
            group_id: group.clone(),
            description: why.to_string(),
        }]
    };
    let tcp = |from: u16, to: u16, why: &str, cidrs: Vec<IpRange>| Permission {
        ip_protocol: "tcp",
        from_port: Some(from),
        to_port: Some(to),
        user_id_group_pairs: own(why),
        ip_ranges: cidrs,
    };
    let proto = |p: &'static str, why: &str| Permission {
        ip_protocol: p,
        from_port: None,
        to_port: None,
        user_id_group_pairs: own(why),
        ip_ranges: vec![],
    };
    let clients = |why: &str| -> Vec<IpRange> {
        spec.network
            .vpc_cidrs
            .iter()
            .filter(|c| c.is_ipv4())
            .map(|c| IpRange {
                cidr_ip: c.to_string(),
                description: why.to_string(),
            })
            .collect()
    };
    let mut rules = vec![];
    match &spec.control_plane.endpoint {
        Endpoint::Nlb { .. } => rules.push(tcp(
            6443,
            6443,
            "haimg: Kubernetes API from the nodes",
            clients("haimg: Kubernetes API from the NLB and clients in the VPC"),
        )),
        Endpoint::Vip(v) => {
            rules.push(tcp(
                v.port,
                v.port,
                "haimg: Kubernetes API (VIP) from the nodes",
                clients("haimg: Kubernetes API (VIP) from clients in the VPC"),
            ));
            if v.api_server_port() != v.port {
                rules.push(tcp(
                    v.api_server_port(),
                    v.api_server_port(),
                    "haimg: API servers behind haproxy on every master",
                    vec![],
                ));
            }
            rules.push(proto("112", "haimg: VRRP between the masters' keepalived"));
        }
        Endpoint::External(e) => rules.push(tcp(
            e.port,
            e.port,
            "haimg: Kubernetes API from the nodes",
            clients("haimg: Kubernetes API from the load balancer nodes and clients"),
        )),
    }
    rules.push(tcp(2379, 2380, "haimg: etcd clients and peers", vec![]));
    rules.push(tcp(10250, 10250, "haimg: kubelet API", vec![]));
    rules.push(tcp(179, 179, "haimg: Calico BGP", vec![]));
    rules.push(proto("4", "haimg: Calico IP-in-IP"));
    Ingress {
        group_id: group,
        ip_permissions: rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_opens_what_kubeadm_and_calico_use_and_nothing_wide() {
        let spec = crate::spec::load_str(crate::spec::EXAMPLE, "example")
            .unwrap()
            .spec;
        let r = ingress(&spec);
        let ports: Vec<(&str, Option<u16>, Option<u16>)> = r
            .ip_permissions
            .iter()
            .map(|p| (p.ip_protocol, p.from_port, p.to_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("tcp", Some(6443), Some(6443)),
                ("tcp", Some(2379), Some(2380)),
                ("tcp", Some(10250), Some(10250)),
                ("tcp", Some(179), Some(179)),
                ("4", None, None),
            ]
        );
        // Only the API is reachable from outside the group, and only from the VPC.
        let cidrs: Vec<&str> = r
            .ip_permissions
            .iter()
            .flat_map(|p| p.ip_ranges.iter().map(|c| c.cidr_ip.as_str()))
            .collect();
        assert_eq!(cidrs, ["10.0.0.0/16"]);
        assert!(r
            .ip_permissions
            .iter()
            .all(|p| p.user_id_group_pairs[0].group_id == r.group_id));
    }
}
