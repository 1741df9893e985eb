//! What a lab is made of, decided from the spec alone (pure: no file, no process).
//!
//! One node per node of the spec: the masters at their fixed addresses, the workers of every
//! pool (its `desiredCapacity`) at addresses the lab picks in the same network. Every node
//! carries exactly the user-data `haimg render` prints for it, and the identity an EC2
//! instance would read from its metadata.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::contract::node_config::Role;
use crate::error::{Error, Result};
use crate::render::templates::Templates;
use crate::render::{self, Group};
use crate::spec::{ClusterSpec, Endpoint};

/// The metadata stand-in's address, as on EC2.
pub const IMDS_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Where the lab's Auto Scaling ([`super::asg`]) and moto (Parameter Store) listen, on the
/// lab's own address.
pub const AUTOSCALING_PORT: u16 = 8080;
pub const SSM_PORT: u16 = 5000;
/// Workers are numbered from this host offset in the lab network (masters and the VIP
/// usually sit low, as in the examples); taken addresses are skipped.
const FIRST_WORKER_OFFSET: u32 = 201;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabNode {
    /// The node's Kubernetes name (a fixed master's name, or the EC2-style private DNS name).
    pub name: String,
    /// Short and unique: names the node's namespace, directories and interfaces.
    pub key: String,
    pub role: Role,
    /// The worker pool, for workers.
    pub pool: Option<String>,
    pub address: Ipv4Addr,
    pub instance_id: String,
    pub availability_zone: String,
    /// The instance profile of the node's group (its role's credentials come from IMDS).
    pub instance_profile: String,
    /// The Auto Scaling group (workers; fixed masters are in none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabPlan {
    pub cluster: String,
    /// The lab network (a bridge with no route out): the spec's VPC CIDR holding the masters.
    pub network: Ipv4Net,
    /// The lab's own address on that bridge (the nodes' default gateway, leading nowhere).
    pub host_address: Ipv4Addr,
    /// The API endpoint every client uses.
    pub endpoint: (Ipv4Addr, u16),
    pub nodes: Vec<LabNode>,
    /// Workers scaled in: their keys, addresses and instance ids are never given again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<LabNode>,
}

impl LabPlan {
    pub fn masters(&self) -> impl Iterator<Item = &LabNode> {
        self.nodes.iter().filter(|n| n.role == Role::Master)
    }
    pub fn node(&self, key: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.key == key)
    }
}

/// Why a spec cannot run in the lab, at the field it is about (a JSON pointer into the
/// spec file, which the command line turns into file:line:column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub pointer: String,
    pub message: String,
}

fn problem(pointer: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        pointer: pointer.into(),
        message: message.into(),
    }
}

/// Lays out the lab for `spec`. Only clusters with fixed masters (VIP mode) can run here:
/// an NLB is an AWS service, and an external load balancer is the operator's machine.
pub fn plan(spec: &ClusterSpec) -> std::result::Result<LabPlan, Problem> {
    let Endpoint::Vip(vip) = &spec.control_plane.endpoint else {
        return Err(problem(
            "/spec/controlPlane/endpoint/type",
            "the lab needs fixed masters behind a VIP (endpoint.type: vip); an NLB exists only on AWS",
        ));
    };
    let v4 = |ip: IpAddr, pointer: String| match ip {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(problem(
            pointer,
            format!("{ip} is IPv6; the lab network is IPv4"),
        )),
    };
    let vip_address = v4(vip.address, "/spec/controlPlane/endpoint/address".into())?;
    let network = spec
        .network
        .vpc_cidrs
        .iter()
        .filter_map(|c| match c.net() {
            ipnet::IpNet::V4(n) => Some(n),
            ipnet::IpNet::V6(_) => None,
        })
        .find(|n| n.contains(&vip_address))
        .ok_or_else(|| {
            problem(
                "/spec/network/vpcCidrs",
                format!("no IPv4 CIDR here holds the VIP {vip_address}: the lab's network is the one that does"),
            )
        })?;
    let mut taken = vec![vip_address];
    let mut nodes = Vec::new();
    for (i, m) in vip.nodes.iter().enumerate() {
        let at = format!("/spec/controlPlane/endpoint/nodes/{i}/address");
        let address = v4(m.address, at.clone())?;
        if !network.contains(&address) {
            return Err(problem(
                at,
                format!(
                    "master {} ({address}) is outside {network}, the network holding the VIP",
                    m.name
                ),
            ));
        }
        taken.push(address);
        nodes.push(LabNode {
            name: m.name.to_string(),
            key: format!("m{}", i + 1),
            role: Role::Master,
            pool: None,
            address,
            instance_id: instance_id(spec.name.as_str(), m.name.as_str()),
            availability_zone: zone(spec, i),
            instance_profile: spec.control_plane.instance_profile.to_string(),
            group: None,
        });
    }
    let host_address = free_addresses(network, &taken, 1).next().ok_or_else(|| {
        problem(
            "/spec/network/vpcCidrs",
            format!("{network} has no free address for the lab itself"),
        )
    })?;
    taken.push(host_address);
    let mut plan = LabPlan {
        cluster: spec.name.to_string(),
        network,
        host_address,
        endpoint: (vip_address, vip.port),
        nodes,
        retired: vec![],
    };
    for (i, pool) in spec.worker_pools.iter().enumerate() {
        let more =
            add_workers(&plan, spec, pool.name.as_str(), pool.desired_capacity).map_err(|e| {
                problem(
                    format!("/spec/workerPools/{i}/desiredCapacity"),
                    e.to_string(),
                )
            })?;
        plan.nodes.extend(more);
    }
    Ok(plan)
}

/// `count` more workers of `pool` (a scale-out): the next keys, and free addresses from
/// [`FIRST_WORKER_OFFSET`] on, never one a node of the lab ever had (keys and addresses of
/// scaled-in workers are not reused, as EC2 gives a new instance a new identity).
pub fn add_workers(
    plan: &LabPlan,
    spec: &ClusterSpec,
    pool: &str,
    count: u32,
) -> Result<Vec<LabNode>> {
    let p = spec
        .worker_pools
        .iter()
        .find(|p| p.name.as_str() == pool)
        .ok_or_else(|| Error::Usage(format!("lab: no worker pool {pool} in the spec")))?;
    let vip = plan.endpoint.0;
    let mut taken: Vec<Ipv4Addr> = [vip, plan.host_address]
        .into_iter()
        .chain(plan.nodes.iter().chain(&plan.retired).map(|n| n.address))
        .collect();
    let mut worker = plan
        .nodes
        .iter()
        .chain(&plan.retired)
        .filter_map(|n| n.key.strip_prefix('w')?.parse::<usize>().ok())
        .max()
        .unwrap_or(0);
    let mut out = Vec::new();
    for _ in 0..count {
        let network = plan.network;
        let address = free_addresses(network, &taken, FIRST_WORKER_OFFSET)
            .next()
            .ok_or_else(|| {
                Error::Usage(format!(
                    "lab: {network} has no free address for worker {}",
                    worker + 1
                ))
            })?;
        taken.push(address);
        worker += 1;
        let name = ec2_private_dns_name(address, spec.region.as_str());
        out.push(LabNode {
            instance_id: instance_id(spec.name.as_str(), &name),
            name,
            key: format!("w{worker}"),
            role: Role::Worker,
            pool: Some(pool.to_string()),
            address,
            availability_zone: zone(spec, worker - 1),
            instance_profile: p.instance_profile.to_string(),
            group: Some(crate::render::names::worker_group(&spec.name, &p.name)),
        });
    }
    Ok(out)
}

/// The user-data of `node`: exactly what `haimg render` prints for it.
pub fn user_data(spec: &ClusterSpec, node: &LabNode, t: &Templates) -> Result<Vec<u8>> {
    let group = match &node.pool {
        Some(pool) => Group::Worker(
            spec.worker_pools
                .iter()
                .find(|p| p.name.as_str() == pool)
                .ok_or_else(|| Error::Usage(format!("lab: no worker pool {pool} in the spec")))?,
        ),
        None => *render::master_groups(spec)
            .iter()
            .find(
                |g| matches!(g, Group::FixedMaster { node: n, .. } if n.name.as_str() == node.name),
            )
            .ok_or_else(|| Error::Usage(format!("lab: no master {} in the spec", node.name)))?,
    };
    Ok(render::user_data(spec, group, t)?.payload)
}

/// The NoCloud `meta-data` of a node: what cloud-init reads its identity from.
pub fn meta_data(node: &LabNode) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        node.instance_id, node.name
    )
}

/// EC2's name for an instance in a VPC with the default DHCP options.
pub fn ec2_private_dns_name(address: Ipv4Addr, region: &str) -> String {
    let o = address.octets();
    let domain = if region == "us-east-1" {
        "ec2.internal".to_string()
    } else {
        format!("{region}.compute.internal")
    };
    format!("ip-{}-{}-{}-{}.{domain}", o[0], o[1], o[2], o[3])
}

/// A stable instance id in EC2's form (`i-` and 17 hex digits), from the cluster and node.
fn instance_id(cluster: &str, node: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("haimg-lab/{cluster}/{node}").as_bytes());
    let hex = hex::encode(d);
    format!("i-{}", &hex[..17])
}

fn zone(spec: &ClusterSpec, i: usize) -> String {
    let letters = ['a', 'b', 'c'];
    format!("{}{}", spec.region.as_str(), letters[i % letters.len()])
}

/// Host addresses of `net` from `offset` on (wrapping once), skipping `taken`, the network
/// and broadcast addresses.
fn free_addresses(
    net: Ipv4Net,
    taken: &[Ipv4Addr],
    offset: u32,
) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let base = u32::from(net.network());
    let size = 1u64 << (32 - net.prefix_len());
    let hosts = size.saturating_sub(2) as u32;
    let start = if offset as u64 >= size.saturating_sub(1) {
        1
    } else {
        offset.max(1)
    };
    (0..hosts)
        .map(move |i| base + 1 + (start - 1 + i) % hosts.max(1))
        .map(Ipv4Addr::from)
        .filter(move |a| !taken.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> ClusterSpec {
        crate::spec::load_str(text, "lab.yaml").expect("valid").spec
    }

    #[test]
    fn masters_keep_their_addresses_and_workers_get_ec2_names() {
        let s = spec(crate::lab::EXAMPLE);
        let p = plan(&s).unwrap();
        assert_eq!(p.network.to_string(), "10.0.0.0/16");
        assert_eq!(p.host_address, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.endpoint, (Ipv4Addr::new(10, 0, 0, 100), 6443));
        let got: Vec<(&str, &str, String)> = p
            .nodes
            .iter()
            .map(|n| (n.key.as_str(), n.name.as_str(), n.address.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("m1", "m1", "10.0.0.11".to_string()),
                ("m2", "m2", "10.0.0.12".into()),
                ("m3", "m3", "10.0.0.13".into()),
                (
                    "w1",
                    "ip-10-0-0-201.us-west-2.compute.internal",
                    "10.0.0.201".into()
                ),
            ]
        );
        let w = &p.nodes[3];
        assert_eq!(w.pool.as_deref(), Some("general"));
        assert!(
            w.instance_id.starts_with("i-") && w.instance_id.len() == 19,
            "{}",
            w.instance_id
        );
        assert_ne!(p.nodes[0].instance_id, p.nodes[1].instance_id);
        assert_eq!(plan(&s).unwrap(), p, "the same spec gives the same lab");
    }

    #[test]
    fn taken_addresses_are_skipped() {
        let net: Ipv4Net = "10.1.0.0/29".parse().unwrap();
        let taken = [Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 3)];
        let got: Vec<String> = free_addresses(net, &taken, 1)
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"]);
        // An offset past the end starts again from the first host.
        let got: Vec<String> = free_addresses(net, &taken, 201)
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got[0], "10.1.0.2");
    }

    #[test]
    fn scaled_out_workers_never_take_a_retired_workers_identity() {
        let s = spec(crate::lab::EXAMPLE);
        let mut p = plan(&s).unwrap();
        assert_eq!(p.nodes[3].group.as_deref(), Some("lab-worker-general"));
        assert_eq!(p.nodes[3].instance_profile, "lab-worker");
        assert_eq!(
            (
                p.nodes[0].group.as_ref(),
                p.nodes[0].instance_profile.as_str()
            ),
            (None, "lab-master")
        );
        let two = add_workers(&p, &s, "general", 2).unwrap();
        let got: Vec<(&str, String)> = two
            .iter()
            .map(|n| (n.key.as_str(), n.address.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("w2", "10.0.0.202".to_string()),
                ("w3", "10.0.0.203".into())
            ]
        );
        // w1 is scaled in: the next worker is w2, at .202, with a new instance id.
        let w1 = p.nodes.remove(3);
        p.retired.push(w1.clone());
        let next = add_workers(&p, &s, "general", 1).unwrap();
        assert_eq!(
            (next[0].key.as_str(), next[0].address.to_string()),
            ("w2", "10.0.0.202".into())
        );
        assert_ne!(next[0].instance_id, w1.instance_id);
        let e = add_workers(&p, &s, "gpu", 1).unwrap_err().to_string();
        assert!(e.contains("no worker pool gpu"), "{e}");
    }

    #[test]
    fn an_nlb_cluster_cannot_run_in_the_lab() {
        let s = spec(crate::spec::EXAMPLE);
        let e = plan(&s).unwrap_err();
        assert_eq!(e.pointer, "/spec/controlPlane/endpoint/type");
        assert!(e.message.contains("endpoint.type: vip"), "{e:?}");
    }

    #[test]
    fn us_east_1_names_its_instances_like_ec2() {
        let a = Ipv4Addr::new(10, 0, 3, 7);
        assert_eq!(
            ec2_private_dns_name(a, "us-east-1"),
            "ip-10-0-3-7.ec2.internal"
        );
        assert_eq!(
            ec2_private_dns_name(a, "eu-west-1"),
            "ip-10-0-3-7.eu-west-1.compute.internal"
        );
    }
}
