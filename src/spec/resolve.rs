//! From what the file says ([`wire`]) to what haimg uses ([`ClusterSpec`]): every domain
//! string through its validated type, defaults applied, and the rules that relate fields.
//! Every finding is collected; nothing stops at the first.

use std::collections::{BTreeMap, HashSet};

use super::wire::{self, API_VERSION};
use super::*;
use crate::contract::types::*;
use crate::error::Diagnostic;
use crate::yaml::dotted;
use crate::yaml::{escape, Document};

pub struct Outcome {
    pub spec: Option<ClusterSpec>,
    /// (JSON pointer, diagnostic)
    pub errors: Vec<(String, Diagnostic)>,
    pub warnings: Vec<Diagnostic>,
}

/// Default root volume: the image (~4 GB with pre-pulled images) plus room for
/// container images, logs and, on masters, etcd's data directory.
const DEFAULT_ROOT_VOLUME_GIB: i64 = 50;
/// gp3 limits.
const MIN_ROOT_VOLUME_GIB: i64 = 20;
const MAX_ROOT_VOLUME_GIB: i64 = 16_384;
/// AWS allows 50 tags per resource; haimg sets up to 6 of its own.
const MAX_USER_TAGS: usize = 40;
/// Pod network: the controller manager hands each node a /24 by default, so the pod
/// network must be at least that large.
const MAX_POD_SUBNET_PREFIX_V4: u8 = 24;
/// kube-apiserver refuses a service network larger than 2^20 addresses (a /12 in IPv4).
const MIN_SERVICE_SUBNET_PREFIX_V4: u8 = 12;

/// Collects diagnostics against a positioned document while resolving (the cluster spec
/// here, image recipes in [`crate::recipe`]).
pub(crate) struct Ctx<'a> {
    doc: &'a Document,
    file: &'a str,
    pub(crate) errors: Vec<(String, Diagnostic)>,
    pub(crate) warnings: Vec<Diagnostic>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(doc: &'a Document, file: &'a str) -> Self {
        Ctx {
            doc,
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }
    fn diag(&self, pointer: &str, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.into(),
            pos: self.doc.value_pos(pointer),
            path: dotted(pointer),
            message,
        }
    }
    pub(crate) fn error(&mut self, pointer: &str, message: impl Into<String>) {
        let d = self.diag(pointer, message.into());
        self.errors.push((pointer.to_string(), d));
    }
    pub(crate) fn warn(&mut self, pointer: &str, message: impl Into<String>) {
        let d = self.diag(pointer, message.into());
        self.warnings.push(d);
    }
    /// Parses `value` as `T`, recording the error at `pointer`.
    pub(crate) fn parse<T: for<'s> TryFrom<&'s str, Error = String>>(
        &mut self,
        pointer: &str,
        value: &str,
    ) -> Option<T> {
        match T::try_from(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(pointer, e);
                None
            }
        }
    }
    fn parse_list<T: for<'s> TryFrom<&'s str, Error = String>>(
        &mut self,
        pointer: &str,
        values: &[String],
    ) -> Option<Vec<T>> {
        let parsed: Vec<Option<T>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| self.parse(&format!("{pointer}/{i}"), v))
            .collect();
        parsed.into_iter().collect()
    }
    fn unique(&mut self, pointer: &str, values: &[String], what: &str) {
        let mut seen = HashSet::new();
        for (i, v) in values.iter().enumerate() {
            if !seen.insert(v) {
                self.error(&format!("{pointer}/{i}"), format!("duplicate {what} `{v}`"));
            }
        }
    }
    fn volume(&mut self, pointer: &str, v: Option<i64>) -> Option<u32> {
        let v = v.unwrap_or(DEFAULT_ROOT_VOLUME_GIB);
        if !(MIN_ROOT_VOLUME_GIB..=MAX_ROOT_VOLUME_GIB).contains(&v) {
            self.error(pointer, format!("{v} GiB is out of range: the root volume must be {MIN_ROOT_VOLUME_GIB} to {MAX_ROOT_VOLUME_GIB} GiB (gp3)"));
            return None;
        }
        Some(v as u32)
    }
}

pub fn resolve(f: &wire::ClusterFile, doc: &Document, file: &str) -> Outcome {
    let mut cx = Ctx {
        doc,
        file,
        errors: Vec::new(),
        warnings: Vec::new(),
    };

    if f.api_version != API_VERSION {
        cx.error(
            "/apiVersion",
            format!("must be `{API_VERSION}`, found `{}`", f.api_version),
        );
    }
    if f.kind != "Cluster" {
        cx.error("/kind", format!("must be `Cluster`, found `{}`", f.kind));
    }
    let name: Option<ClusterName> = cx.parse("/metadata/name", &f.metadata.name);
    let s = &f.spec;
    let region: Option<Region> = cx.parse("/spec/region", &s.region);

    let version = resolve_version(&mut cx, &s.kubernetes_version);
    let image = resolve_image(&mut cx, &s.image);

    let network = resolve_network(&mut cx, &s.network);
    let control_plane =
        resolve_control_plane(&mut cx, &s.control_plane, s.network.subnet_ids.len());
    let worker_pools = resolve_pools(&mut cx, &s.worker_pools);

    let prefix = match (&s.ssm.prefix, &name) {
        (Some(p), _) => cx.parse::<SsmPath>("/spec/ssm/prefix", p),
        (None, Some(n)) => SsmPath::try_from(format!("/haimg/{n}").as_str()).ok(),
        (None, None) => None,
    };
    let kms_key_id = cx.parse::<KmsKeyId>(
        "/spec/ssm/kmsKeyId",
        s.ssm.kms_key_id.as_deref().unwrap_or("alias/aws/ssm"),
    );

    let tags = resolve_tags(&mut cx, &s.tags);
    if let (Some(cp), Some(n)) = (&control_plane, &network) {
        check_endpoint_outside_cluster_networks(&mut cx, cp, n);
    }
    let credentials = resolve_credentials(&mut cx, &s.credentials, &control_plane, &name);

    let spec = (|| {
        Some(ClusterSpec {
            name: name?,
            region: region?,
            kubernetes_version: version?,
            image: image?,
            network: network?,
            control_plane: control_plane?,
            worker_pools: worker_pools?,
            ssm: Ssm {
                prefix: prefix?,
                kms_key_id: kms_key_id?,
            },
            credentials: credentials?,
            tags: tags?,
        })
    })();
    Outcome {
        spec: if cx.errors.is_empty() { spec } else { None },
        errors: cx.errors,
        warnings: cx.warnings,
    }
}

/// Where join material comes from: Parameter Store, or a file of static credentials
/// (offline VIP and external-endpoint clusters only).
fn resolve_credentials(
    cx: &mut Ctx,
    c: &wire::CredentialsFile,
    control_plane: &Option<ControlPlane>,
    name: &Option<ClusterName>,
) -> Option<Credentials> {
    match (c.source, control_plane) {
        (None | Some(wire::CredentialSourceFile::Ssm), _) => {
            if c.file.is_some() {
                cx.error(
                    "/spec/credentials/file",
                    "only `source: static` keeps credentials in a file",
                );
            }
            Some(Credentials::Ssm)
        }
        (Some(wire::CredentialSourceFile::Static), cp) => {
            if let Some(ControlPlane {
                endpoint: Endpoint::Nlb { .. },
                ..
            }) = cp
            {
                cx.error("/spec/credentials/source", "static credentials are for offline VIP or external-endpoint clusters; an NLB cluster is on AWS, where Parameter Store (`source: ssm`) keeps join material fresh and out of the user-data");
            }
            let default = name.as_ref().map(|n| format!("{n}-credentials.yaml"));
            let file = c.file.clone().or(default);
            if file.as_deref() == Some("") {
                cx.error("/spec/credentials/file", "must not be empty");
            }
            cx.warn("/spec/credentials/source", "static credentials: the bootstrap token and certificate key are written into every node's user-data, where anyone who can read instance user-data can join the cluster; masters must join within 2 h and workers within 24 h of the first master's init");
            file.map(|file| Credentials::Static {
                file,
                material: None,
            })
        }
    }
}

/// The Kubernetes version: supported, with its known issues as warnings.
fn resolve_version(cx: &mut Ctx, v: &str) -> Option<KubernetesVersion> {
    let v: KubernetesVersion = cx.parse("/spec/kubernetesVersion", v)?;
    if let Err(e) = crate::kubernetes::check_supported(&v) {
        cx.error("/spec/kubernetesVersion", e);
        return None;
    }
    if let Some(w) = crate::kubernetes::known_issues(&v) {
        cx.warn("/spec/kubernetesVersion", w);
    }
    Some(v)
}

/// Exactly one image source: an AMI id or an SSM parameter.
fn resolve_image(cx: &mut Ctx, i: &wire::ImageFile) -> Option<ImageSource> {
    match (&i.ami, &i.ssm_parameter) {
        (Some(ami), None) => cx.parse("/spec/image/ami", ami).map(ImageSource::Ami),
        (None, Some(p)) => cx
            .parse("/spec/image/ssmParameter", p)
            .map(ImageSource::SsmParameter),
        (Some(_), Some(_)) => {
            cx.error(
                "/spec/image",
                "give exactly one image source: `ami` or `ssmParameter`, not both",
            );
            None
        }
        (None, None) => {
            cx.error("/spec/image", "give exactly one image source: `ami` (an AMI id) or `ssmParameter` (e.g. /haimg/images/ubuntu-20.04-k8s/latest)");
            None
        }
    }
}

/// A fixed endpoint address (VIP, external) must not fall in the pod or service network.
fn check_endpoint_outside_cluster_networks(cx: &mut Ctx, cp: &ControlPlane, n: &Network) {
    let Some((address, _)) = cp.endpoint.fixed_address() else {
        return;
    };
    for (field, net) in [
        ("podSubnet", n.pod_subnet),
        ("serviceSubnet", n.service_subnet),
    ] {
        if net.contains(&address) {
            cx.error("/spec/controlPlane/endpoint/address", format!("the endpoint address {address} is inside the {field} {net}: it would collide with pod or service addresses"));
        }
    }
}

fn resolve_network(cx: &mut Ctx, n: &wire::NetworkFile) -> Option<Network> {
    let vpc_id = cx.parse("/spec/network/vpcId", &n.vpc_id);
    if n.subnet_ids.is_empty() {
        cx.error(
            "/spec/network/subnetIds",
            "at least one subnet is needed (one per availability zone is best)",
        );
    }
    cx.unique("/spec/network/subnetIds", &n.subnet_ids, "subnet");
    let subnet_ids = cx.parse_list("/spec/network/subnetIds", &n.subnet_ids);
    if n.security_group_ids.is_empty() {
        cx.error("/spec/network/securityGroupIds", "at least one security group is needed (nodes must reach each other on 6443, 2379-2380, 10250 and the CNI's ports)");
    }
    if n.security_group_ids.len() > 5 {
        cx.error(
            "/spec/network/securityGroupIds",
            format!(
                "{} security groups given: EC2 allows at most 5 per network interface",
                n.security_group_ids.len()
            ),
        );
    }
    cx.unique(
        "/spec/network/securityGroupIds",
        &n.security_group_ids,
        "security group",
    );
    let security_group_ids = cx.parse_list("/spec/network/securityGroupIds", &n.security_group_ids);
    let pod: Option<Cidr> = cx.parse(
        "/spec/network/podSubnet",
        n.pod_subnet.as_deref().unwrap_or("192.168.0.0/16"),
    );
    let svc: Option<Cidr> = cx.parse(
        "/spec/network/serviceSubnet",
        n.service_subnet.as_deref().unwrap_or("10.96.0.0/12"),
    );
    let vpc_cidrs: Option<Vec<Cidr>> = cx.parse_list("/spec/network/vpcCidrs", &n.vpc_cidrs);

    if let Some(p) = pod {
        if p.is_ipv4() && p.prefix_len() > MAX_POD_SUBNET_PREFIX_V4 {
            cx.error("/spec/network/podSubnet", format!("{p} is too small: each node gets a /24 of the pod network, so it must be a /{MAX_POD_SUBNET_PREFIX_V4} or larger"));
        }
    }
    if let Some(sv) = svc {
        if sv.is_ipv4() && sv.prefix_len() < MIN_SERVICE_SUBNET_PREFIX_V4 {
            cx.error("/spec/network/serviceSubnet", format!("{sv} is too large: kube-apiserver accepts at most a /{MIN_SERVICE_SUBNET_PREFIX_V4} service network"));
        }
    }
    if let (Some(p), Some(sv)) = (pod, svc) {
        if p.overlaps(&sv) {
            cx.error("/spec/network/serviceSubnet", format!("{sv} overlaps the pod network {p}: pods and services need separate address ranges"));
        }
    }
    for (i, v) in vpc_cidrs.iter().flatten().enumerate() {
        for (field, net) in [("podSubnet", pod), ("serviceSubnet", svc)] {
            if let Some(net) = net {
                if net.overlaps(v) {
                    cx.error(&format!("/spec/network/{field}"), format!("{net} overlaps the VPC's {v} (spec.network.vpcCidrs[{i}]): pod and service addresses must not collide with node addresses"));
                }
            }
        }
    }
    Some(Network {
        vpc_id: vpc_id?,
        subnet_ids: subnet_ids?,
        security_group_ids: security_group_ids?,
        pod_subnet: pod?,
        service_subnet: svc?,
        vpc_cidrs: vpc_cidrs?,
    })
}

fn resolve_control_plane(
    cx: &mut Ctx,
    c: &wire::ControlPlaneFile,
    subnets: usize,
) -> Option<ControlPlane> {
    let count = match c.count {
        1 | 3 | 5 | 7 => Some(c.count as u8),
        n => {
            let why = if n > 0 && n % 2 == 0 {
                format!(
                    "{n} is even: etcd needs a majority (quorum = floor(N/2)+1 = {}), so {n} members tolerate {} failure(s), no more than {}; use {} or {}",
                    n / 2 + 1,
                    (n - 1) / 2,
                    n - 1,
                    n - 1,
                    n + 1
                )
            } else if n > 7 {
                format!("{n} is too many: every etcd write waits for a majority, and beyond 7 members that costs more latency than the extra failure it tolerates")
            } else {
                format!("{n} is not a valid control-plane size")
            };
            cx.error(
                "/spec/controlPlane/count",
                format!("must be odd (1, 3, 5, 7): {why}"),
            );
            None
        }
    };
    if let Some(n) = count {
        if n > 1 && subnets == 1 {
            cx.warn("/spec/network/subnetIds", format!("{n} control-plane nodes in a single subnet share one availability zone: an AZ outage takes the whole control plane down"));
        }
        if n == 1 {
            cx.warn("/spec/controlPlane/count", "a single control-plane node is not highly available: losing it loses the cluster's etcd");
        }
    }
    let instance_type = cx.parse("/spec/controlPlane/instanceType", &c.instance_type);
    let instance_profile = cx.parse("/spec/controlPlane/instanceProfile", &c.instance_profile);
    let root_volume_gib = cx.volume("/spec/controlPlane/rootVolumeSize", c.root_volume_size);
    let endpoint = match &c.endpoint {
        wire::EndpointFile::Nlb { internal } => Some(Endpoint::Nlb {
            internal: internal.unwrap_or(true),
        }),
        wire::EndpointFile::Vip(v) => resolve_vip(cx, v, count).map(Endpoint::Vip),
        wire::EndpointFile::External(e) => resolve_external(cx, e, count).map(Endpoint::External),
    };
    Some(ControlPlane {
        count: count?,
        instance_type: instance_type?,
        instance_profile: instance_profile?,
        root_volume_gib: root_volume_gib?,
        endpoint: endpoint?,
    })
}

/// Default static pod images for VIP mode (pre-pulled through the recipe's extraImages).
pub const DEFAULT_KEEPALIVED_IMAGE: &str = "docker.io/osixia/keepalived:2.0.20";
pub const DEFAULT_HAPROXY_IMAGE: &str = "docker.io/library/haproxy:2.8.14";

fn resolve_vip(cx: &mut Ctx, v: &wire::VipFile, count: Option<u8>) -> Option<Vip> {
    let at = "/spec/controlPlane/endpoint";
    let address = ip(cx, &format!("{at}/address"), &v.address);
    let port = tcp_port(cx, &format!("{at}/port"), v.port.unwrap_or(6443));
    let haproxy = v.haproxy.unwrap_or(true);
    if haproxy && port == Some(STACKED_API_SERVER_PORT) {
        cx.error(&format!("{at}/port"), format!("{STACKED_API_SERVER_PORT} is where the API servers listen when haproxy runs on the masters: give the VIP another port"));
    }
    let router_id = vrrp_router_id(cx, &format!("{at}/routerId"), v.router_id);
    let interface = cx.parse::<InterfaceName>(
        &format!("{at}/interface"),
        v.interface.as_deref().unwrap_or("eth0"),
    );
    if let Some(n) = count {
        if v.nodes.len() != n as usize {
            cx.error(&format!("{at}/nodes"), format!("{} node(s) listed, but controlPlane.count is {n}: list every master, in priority order", v.nodes.len()));
        }
    }
    let nodes = resolve_nodes(cx, &format!("{at}/nodes"), &v.nodes, address, "VIP");
    let keepalived_image = cx.parse::<ImageRef>(
        &format!("{at}/images/keepalived"),
        v.images
            .keepalived
            .as_deref()
            .unwrap_or(DEFAULT_KEEPALIVED_IMAGE),
    );
    let haproxy_image = cx.parse::<ImageRef>(
        &format!("{at}/images/haproxy"),
        v.images.haproxy.as_deref().unwrap_or(DEFAULT_HAPROXY_IMAGE),
    );
    Some(Vip {
        nodes: nodes?,
        address: address?,
        port: port?,
        interface: interface?.to_string(),
        router_id: router_id?,
        haproxy,
        keepalived_image: keepalived_image?.to_string(),
        haproxy_image: haproxy_image?.to_string(),
    })
}

fn ip(cx: &mut Ctx, pointer: &str, s: &str) -> Option<std::net::IpAddr> {
    match s.parse::<std::net::IpAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.error(pointer, format!("`{s}` is not an IP address"));
            None
        }
    }
}

fn tcp_port(cx: &mut Ctx, pointer: &str, p: i64) -> Option<u16> {
    match p {
        p @ 1..=65535 => Some(p as u16),
        p => {
            cx.error(pointer, format!("{p} is not a TCP port (1-65535)"));
            None
        }
    }
}

fn vrrp_router_id(cx: &mut Ctx, pointer: &str, r: i64) -> Option<u8> {
    match r {
        r @ 1..=255 => Some(r as u8),
        r => {
            cx.error(
                pointer,
                format!("{r} is not a VRRP virtual router id (1-255)"),
            );
            None
        }
    }
}

/// Named nodes with unique names and addresses, none of them holding `shared` (the address
/// clients use, which keepalived moves between nodes).
fn resolve_nodes(
    cx: &mut Ctx,
    at: &str,
    nodes: &[wire::VipNodeFile],
    shared: Option<std::net::IpAddr>,
    shared_what: &str,
) -> Option<Vec<VipNode>> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, n) in nodes.iter().enumerate() {
        let np = format!("{at}/{i}");
        let name = cx.parse::<NodeName>(&format!("{np}/name"), &n.name);
        if !names.insert(n.name.clone()) {
            cx.error(
                &format!("{np}/name"),
                format!("duplicate node name `{}`", n.name),
            );
        }
        let addr = ip(cx, &format!("{np}/address"), &n.address);
        if let Some(a) = addr {
            if !addresses.insert(a) {
                cx.error(
                    &format!("{np}/address"),
                    format!("duplicate node address {a}"),
                );
            }
            if Some(a) == shared {
                cx.error("/spec/controlPlane/endpoint/address", format!("the {shared_what} {a} is also the address of node `{}`: keepalived would move a node's own address", n.name));
            }
        }
        if let (Some(name), Some(address)) = (name, addr) {
            out.push(VipNode { name, address });
        }
    }
    (out.len() == nodes.len()).then_some(out)
}

fn resolve_external(cx: &mut Ctx, e: &wire::ExternalFile, count: Option<u8>) -> Option<External> {
    let at = "/spec/controlPlane/endpoint";
    let address = ip(cx, &format!("{at}/address"), &e.address);
    let port = tcp_port(cx, &format!("{at}/port"), e.port.unwrap_or(6443));
    if let Some(n) = count {
        if e.nodes.len() != n as usize {
            cx.error(
                &format!("{at}/nodes"),
                format!(
                    "{} node(s) listed, but controlPlane.count is {n}: list every master",
                    e.nodes.len()
                ),
            );
        }
    }
    let lb = &e.load_balancer;
    let lat = format!("{at}/loadBalancer");
    let software = match lb.software {
        wire::LbSoftwareFile::Haproxy => {
            if lb.nodes.len() < 2 {
                cx.error(&format!("{lat}/nodes"), format!("{} load balancer node(s): a haproxy + keepalived pair needs at least 2 (use `software: nginx` for a single, non-HA proxy)", lb.nodes.len()));
            }
            let router_id = match lb.router_id {
                Some(r) => vrrp_router_id(cx, &format!("{lat}/routerId"), r),
                None => {
                    cx.error(&format!("{lat}/routerId"), "haproxy + keepalived needs a VRRP virtual router id (1-255), unique on the network segment");
                    None
                }
            };
            let interface = cx.parse::<InterfaceName>(
                &format!("{lat}/interface"),
                lb.interface.as_deref().unwrap_or("eth0"),
            );
            Some(LbSoftware::Haproxy {
                interface: interface?.to_string(),
                router_id: router_id?,
            })
        }
        wire::LbSoftwareFile::Nginx => {
            if lb.nodes.len() != 1 {
                cx.error(&format!("{lat}/nodes"), format!("{} load balancer node(s): `software: nginx` renders one proxy on one node (for HA use `software: haproxy`)", lb.nodes.len()));
            }
            for field in ["interface", "routerId"] {
                if (field == "interface" && lb.interface.is_some())
                    || (field == "routerId" && lb.router_id.is_some())
                {
                    cx.error(
                        &format!("{lat}/{field}"),
                        "only a haproxy + keepalived pair holds a VIP: remove this field for nginx",
                    );
                }
            }
            Some(LbSoftware::Nginx)
        }
    };
    let shared = matches!(lb.software, wire::LbSoftwareFile::Haproxy)
        .then_some(address)
        .flatten();
    let nodes = resolve_nodes(
        cx,
        &format!("{at}/nodes"),
        &e.nodes,
        address,
        "endpoint address",
    );
    let lb_nodes = resolve_nodes(cx, &format!("{lat}/nodes"), &lb.nodes, shared, "VIP");
    if let (Some(a), wire::LbSoftwareFile::Nginx, [n]) = (
        address,
        lb.software,
        lb_nodes.as_deref().unwrap_or_default(),
    ) {
        if n.address != a {
            cx.error(&format!("{at}/address"), format!("with nginx, clients reach the proxy node itself: the address must be {} (the node's), not {a}", n.address));
        }
    }
    if let (Some(m), Some(l)) = (&nodes, &lb_nodes) {
        for (i, n) in l.iter().enumerate() {
            if let Some(master) = m
                .iter()
                .find(|x| x.address == n.address || x.name == n.name)
            {
                cx.error(&format!("{lat}/nodes/{i}"), format!("load balancer node `{}` is also master `{}`: dedicated load balancer nodes must be separate hosts (for load balancing on the masters use `type: vip`)", n.name, master.name));
            }
        }
    }
    Some(External {
        address: address?,
        port: port?,
        nodes: nodes?,
        software: software?,
        lb_nodes: lb_nodes?,
    })
}

fn resolve_pools(cx: &mut Ctx, pools: &[wire::WorkerPoolFile]) -> Option<Vec<WorkerPool>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut ok = true;
    for (i, p) in pools.iter().enumerate() {
        let at = format!("/spec/workerPools/{i}");
        if !seen.insert(p.name.as_str()) {
            cx.error(&format!("{at}/name"), format!("duplicate pool name `{}`: pool names must be unique (they name the launch template and Auto Scaling group)", p.name));
        }
        let name = cx.parse::<PoolName>(&format!("{at}/name"), &p.name);
        let instance_type = cx.parse(&format!("{at}/instanceType"), &p.instance_type);
        let instance_profile = cx.parse(&format!("{at}/instanceProfile"), &p.instance_profile);
        let root = cx.volume(&format!("{at}/rootVolumeSize"), p.root_volume_size);
        let mut sizes_ok = true;
        for (field, v) in [
            ("minSize", p.min_size),
            ("maxSize", p.max_size),
            ("desiredCapacity", p.desired_capacity),
        ] {
            if !(0..=10_000).contains(&v) {
                cx.error(
                    &format!("{at}/{field}"),
                    format!("{v} is out of range (0 to 10000)"),
                );
                sizes_ok = false;
            }
        }
        if sizes_ok {
            if p.min_size > p.max_size {
                cx.error(
                    &format!("{at}/minSize"),
                    format!(
                        "minSize {} is greater than maxSize {}",
                        p.min_size, p.max_size
                    ),
                );
                sizes_ok = false;
            } else if p.desired_capacity < p.min_size || p.desired_capacity > p.max_size {
                cx.error(
                    &format!("{at}/desiredCapacity"),
                    format!(
                        "desiredCapacity {} must be between minSize {} and maxSize {}",
                        p.desired_capacity, p.min_size, p.max_size
                    ),
                );
                sizes_ok = false;
            } else if p.max_size == 0 {
                cx.warn(
                    &format!("{at}/maxSize"),
                    "maxSize 0: this pool never has a node",
                );
            }
        }
        for (k, v) in &p.labels {
            let lp = format!("{at}/labels/{}", escape(k));
            if let Err(e) = check_label(k, v) {
                cx.error(&lp, e);
                sizes_ok = false;
            }
        }
        match (name, instance_type, instance_profile, root) {
            (Some(name), Some(instance_type), Some(instance_profile), Some(root_volume_gib))
                if sizes_ok =>
            {
                out.push(WorkerPool {
                    name,
                    instance_type,
                    instance_profile,
                    min_size: p.min_size as u32,
                    max_size: p.max_size as u32,
                    desired_capacity: p.desired_capacity as u32,
                    root_volume_gib,
                    labels: p.labels.clone(),
                })
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// Kubernetes label syntax: `[prefix/]name` = value.
fn check_label(k: &str, v: &str) -> Result<(), String> {
    let name_ok = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let (prefix, name) = k
        .rsplit_once('/')
        .map(|(p, n)| (Some(p), n))
        .unwrap_or((None, k));
    if !name_ok(name, 63)
        || prefix.is_some_and(|p| p.len() > 253 || !p.split('.').all(|l| name_ok(l, 63)))
    {
        return Err(format!("`{k}` is not a valid Kubernetes label key"));
    }
    if prefix.is_some_and(|p| {
        p == "kubernetes.io"
            || p.ends_with(".kubernetes.io")
            || p == "k8s.io"
            || p.ends_with(".k8s.io")
    }) {
        return Err(format!(
            "`{k}`: kubelet may not set labels under kubernetes.io or k8s.io"
        ));
    }
    if !(v.is_empty() || name_ok(v, 63)) {
        return Err(format!("`{v}` is not a valid Kubernetes label value (63 characters of A-Z a-z 0-9 - _ ., alphanumeric at both ends)"));
    }
    Ok(())
}

fn resolve_tags(cx: &mut Ctx, tags: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    let before = cx.errors.len();
    if tags.len() > MAX_USER_TAGS {
        cx.error("/spec/tags", format!("{} tags given: at most {MAX_USER_TAGS} (AWS allows 50 per resource and haimg sets its own)", tags.len()));
    }
    for (k, v) in tags {
        let at = format!("/spec/tags/{}", escape(k));
        let lower = k.to_ascii_lowercase();
        if lower.starts_with("aws:")
            || lower.starts_with("haimg:")
            || lower.starts_with("kubernetes.io/cluster/")
        {
            cx.error(&at, format!("tag key `{k}` is reserved (aws:, haimg: and kubernetes.io/cluster/ are set by AWS and haimg)"));
        } else if k.is_empty() || k.chars().count() > 128 {
            cx.error(&at, "tag keys must be 1 to 128 characters");
        } else if v.chars().count() > 256 {
            cx.error(&at, "tag values must be at most 256 characters");
        }
    }
    (cx.errors.len() == before).then(|| tags.clone())
}
