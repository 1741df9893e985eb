//! `haimg render`: from a [`ClusterSpec`] to the files that make the cluster.
//!
//! Pure functions from spec (+ templates) to [`Artifact`]s; only [`cmd`] touches the
//! file system. `haimg up` applies these same artifacts.
//!
//! The output tree (DESIGN §3):
//! ```text
//! cloud-init/master.yaml, cloud-init/worker-<pool>.yaml        #cloud-config user-data
//! launch-templates/master.json, launch-templates/worker-<pool>.json
//! autoscaling/master.json, autoscaling/worker-<pool>.json
//! load-balancer/{load-balancer,target-group,target-group-attributes,listener}.json
//! iam/master-policy.json, iam/worker-policy.json
//! security-groups/cluster-ingress.json                            `aws ec2 authorize-security-group-ingress` input
//! vip/<node>/{keepalived.conf,check_apiserver.sh,haproxy.cfg}  VIP mode
//! external-lb/<lb node>/{keepalived.conf,check_apiserver.sh,haproxy.cfg} | nginx.conf
//! ```

pub mod cmd;
mod external;
pub mod iam;
pub mod names;
pub mod security;
pub mod templates;
mod userdata;
mod vip;

use serde::Serialize;

use crate::contract::artifacts::{
    AsgTag, Attribute, AutoScalingGroup, BlockDeviceMapping, Ebs, InstanceProfile, LaunchTemplate,
    LaunchTemplateData, LaunchTemplateRef, LifecycleHook, Listener, ListenerAction, LoadBalancer,
    Matcher, MetadataOptions, PrivateDnsNameOptions, Tag, TagSpecification, TargetGroup,
    TargetGroupAttributes,
};
use crate::contract::layout;
use crate::contract::node_config::{
    FixedIdentity, NodeAutoscaling, NodeConfig, NodeEndpoint, NodeKubernetes, NodeSsm, Role,
    StaticJoin, NODE_CONFIG_KIND,
};
use crate::contract::types::PoolName;
use crate::error::Result;
use crate::spec::{ClusterSpec, Credentials, Endpoint, ImageSource, VipNode, WorkerPool};
use templates::Templates;
pub use userdata::{UserData, USER_DATA_LIMIT};

/// One rendered file, by its path relative to the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub path: String,
    pub contents: String,
}

/// A group of identical nodes: the control plane (NLB mode), one VIP-mode master (each
/// has its own keepalived configuration), or one worker pool.
#[derive(Debug, Clone, Copy)]
pub enum Group<'a> {
    Master,
    FixedMaster { node: &'a VipNode, index: usize },
    Worker(&'a WorkerPool),
}

impl Group<'_> {
    pub fn role(&self) -> Role {
        match self {
            Group::Master | Group::FixedMaster { .. } => Role::Master,
            Group::Worker(_) => Role::Worker,
        }
    }
    /// `master`, `master-<node>` or `worker-<pool>`: the file stem of its artifacts.
    pub fn stem(&self) -> String {
        match self {
            Group::Master => "master".into(),
            Group::FixedMaster { node, .. } => format!("master-{}", node.name),
            Group::Worker(p) => format!("worker-{}", p.name),
        }
    }
    /// The Auto Scaling group it runs in (VIP-mode masters have fixed addresses: none).
    pub fn asg_name(&self, spec: &ClusterSpec) -> Option<String> {
        match self {
            Group::Master => Some(names::master_group(&spec.name)),
            Group::FixedMaster { .. } => None,
            Group::Worker(p) => Some(names::worker_group(&spec.name, &p.name)),
        }
    }
    fn pool_tag(&self) -> &str {
        match self {
            Group::Master | Group::FixedMaster { .. } => "control-plane",
            Group::Worker(p) => p.name.as_str(),
        }
    }
}

/// The control-plane groups: one in NLB mode, one per node in VIP mode.
pub fn master_groups(spec: &ClusterSpec) -> Vec<Group<'_>> {
    match &spec.control_plane.endpoint {
        Endpoint::Nlb { .. } => vec![Group::Master],
        e => e
            .fixed_masters()
            .iter()
            .enumerate()
            .map(|(index, node)| Group::FixedMaster { node, index })
            .collect(),
    }
}

/// The node config cloud-init writes to `/etc/haimg/node.yaml` for a group.
pub fn node_config(spec: &ClusterSpec, group: Group) -> NodeConfig {
    let mut node_labels = std::collections::BTreeMap::new();
    let pool = match group {
        Group::Master | Group::FixedMaster { .. } => None,
        Group::Worker(p) => {
            node_labels.insert("haimg.dev/pool".to_string(), p.name.to_string());
            node_labels.extend(p.labels.clone());
            Some(p.name.clone())
        }
    };
    NodeConfig {
        api_version: crate::contract::API_VERSION.into(),
        kind: NODE_CONFIG_KIND.into(),
        cluster: spec.name.clone(),
        role: group.role(),
        pool,
        region: spec.region.clone(),
        ssm: NodeSsm {
            prefix: spec.ssm.prefix.clone(),
            kms_key_id: spec.ssm.kms_key_id.clone(),
        },
        endpoint: match &spec.control_plane.endpoint {
            Endpoint::Nlb { .. } => NodeEndpoint::Nlb {
                load_balancer_name: names::load_balancer(&spec.name),
                port: names::API_PORT,
            },
            Endpoint::Vip(v) => NodeEndpoint::Vip {
                address: v.address,
                port: v.port,
                api_server_bind_port: v.api_server_port(),
                static_pods: matches!(group, Group::FixedMaster { .. }),
            },
            // Dedicated load balancers: the API servers keep the client port, no static pods.
            Endpoint::External(e) => NodeEndpoint::Vip {
                address: e.address,
                port: e.port,
                api_server_bind_port: e.port,
                static_pods: false,
            },
        },
        kubernetes: NodeKubernetes {
            version: spec.kubernetes_version,
            pod_subnet: spec.network.pod_subnet,
            service_subnet: spec.network.service_subnet,
            image_pull_policy: "IfNotPresent".into(),
            node_labels,
        },
        autoscaling: group.asg_name(spec).map(|group_name| NodeAutoscaling {
            group_name,
            lifecycle_hook_name: names::LIFECYCLE_HOOK.into(),
        }),
        node: match group {
            Group::FixedMaster { node, .. } => Some(FixedIdentity {
                name: node.name.to_string(),
                address: node.address,
            }),
            _ => None,
        },
        credentials: match &spec.credentials {
            Credentials::Ssm => None,
            Credentials::Static { material, .. } => {
                let m = material
                    .as_ref()
                    .expect("static credentials are loaded before rendering");
                Some(StaticJoin {
                    init: matches!(group, Group::FixedMaster { index: 0, .. }),
                    token: m.token.clone(),
                    certificate_key: (group.role() == Role::Master)
                        .then(|| m.certificate_key.clone()),
                    ca_cert_hashes: vec![m.ca_cert_hash()],
                })
            }
        },
        agent: Default::default(),
    }
}

/// The user-data of a group.
pub fn user_data(spec: &ClusterSpec, group: Group, t: &Templates) -> Result<UserData> {
    userdata::render(spec, group, t)
}

/// Tags on everything haimg creates for a group: identity first, then the user's.
fn tags(spec: &ClusterSpec, name: &str, role: &str, pool: &str) -> Vec<Tag> {
    let own = [
        ("Name", name),
        (
            &format!("kubernetes.io/cluster/{}", spec.name) as &str,
            "owned",
        ),
        ("haimg:cluster", spec.name.as_str()),
        ("haimg:role", role),
        ("haimg:pool", pool),
    ];
    own.iter()
        .map(|(k, v)| Tag {
            key: k.to_string(),
            value: v.to_string(),
        })
        .chain(spec.tags.iter().map(|(k, v)| Tag {
            key: k.clone(),
            value: v.clone(),
        }))
        .collect()
}

/// Tags for the shared API load balancer resources.
fn api_tags(spec: &ClusterSpec) -> Vec<Tag> {
    tags(
        spec,
        &names::load_balancer(&spec.name),
        "control-plane-endpoint",
        "control-plane",
    )
}

/// The AWS partition of a region (ARNs differ in GovCloud and China).
fn partition(spec: &ClusterSpec) -> &'static str {
    let r = spec.region.as_str();
    if r.starts_with("us-gov-") {
        "aws-us-gov"
    } else if r.starts_with("cn-") {
        "aws-cn"
    } else {
        "aws"
    }
}

/// Ubuntu's AMIs boot from /dev/sda1; the root volume mapping must name that device.
const ROOT_DEVICE: &str = "/dev/sda1";
/// Masters: long enough for a replacement to wait for the dead member's removal
/// (reconcile runs every minute) and join etcd before its status checks count.
const MASTER_HEALTH_GRACE_SECONDS: i32 = 900;
/// Workers: EC2 status checks only; the kubelet's own readiness is Kubernetes' business.
const WORKER_HEALTH_GRACE_SECONDS: i32 = 300;
/// Time the watcher has to drain (bounded at 5 minutes) and leave etcd before EC2
/// terminates the instance anyway.
const LIFECYCLE_HEARTBEAT_SECONDS: i32 = 600;
/// Target group deregistration delay (see [`load_balancer`]).
const DEREGISTRATION_DELAY_SECONDS: u32 = 30;

/// `aws ec2 create-launch-template --cli-input-json file://…`:
/// - MetadataOptions: IMDSv2 only, hop limit 1: a pod (one hop further) cannot read the
///   instance role's credentials; a master's role can read the certificate key.
/// - PrivateDnsNameOptions: IP-based host names, so the node name (= private DNS name) is
///   the ip-… form kubeadm and the AWS tooling expect.
/// - No KeyName: nodes have no SSH.
/// - ImageId may be `resolve:ssm:<parameter>`: EC2 resolves it at every launch.
fn launch_template(spec: &ClusterSpec, group: Group, t: &Templates) -> Result<LaunchTemplate> {
    let name = group
        .asg_name(spec)
        .unwrap_or_else(|| format!("{}-{}", spec.name, group.stem()));
    let (instance_type, instance_profile, root) = match group {
        Group::Master | Group::FixedMaster { .. } => (
            &spec.control_plane.instance_type,
            &spec.control_plane.instance_profile,
            spec.control_plane.root_volume_gib,
        ),
        Group::Worker(p) => (&p.instance_type, &p.instance_profile, p.root_volume_gib),
    };
    let tags = tags(spec, &name, group.role().as_str(), group.pool_tag());
    let tagged = |resource_type: &str| TagSpecification {
        resource_type: resource_type.into(),
        tags: tags.clone(),
    };
    Ok(LaunchTemplate {
        version_description: format!(
            "haimg {}: {} {}",
            env!("CARGO_PKG_VERSION"),
            spec.name,
            group.stem()
        ),
        launch_template_data: LaunchTemplateData {
            image_id: match &spec.image {
                ImageSource::Ami(a) => a.to_string(),
                ImageSource::SsmParameter(p) => format!("resolve:ssm:{p}"),
            },
            instance_type: instance_type.to_string(),
            iam_instance_profile: InstanceProfile {
                name: instance_profile.to_string(),
            },
            security_group_ids: spec
                .network
                .security_group_ids
                .iter()
                .map(|s| s.to_string())
                .collect(),
            metadata_options: MetadataOptions {
                http_endpoint: "enabled".into(),
                http_tokens: "required".into(),
                http_put_response_hop_limit: 1,
                instance_metadata_tags: "disabled".into(),
            },
            private_dns_name_options: PrivateDnsNameOptions {
                hostname_type: "ip-name".into(),
                enable_resource_name_dns_a_record: false,
                enable_resource_name_dns_aaaa_record: false,
            },
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: ROOT_DEVICE.into(),
                ebs: Ebs {
                    volume_size: i32::try_from(root).expect("validated: at most 16 TiB"),
                    volume_type: "gp3".into(),
                    encrypted: true,
                    delete_on_termination: true,
                },
            }],
            tag_specifications: vec![tagged("instance"), tagged("volume")],
            user_data: user_data(spec, group, t)?.base64(),
        },
        tag_specifications: vec![tagged("launch-template")],
        launch_template_name: name,
    })
}

/// `aws autoscaling create-auto-scaling-group --cli-input-json file://…`:
/// - LaunchTemplate Version `$Default`: `haimg up` makes each new launch template version
///   the default, so instance refreshes and replacements pick it up.
/// - The termination lifecycle hook gives `haimg node watch` time to drain the node (and,
///   on a master, remove its etcd member) before EC2 terminates it. CONTINUE: a node that
///   cannot finish still goes away when the timeout expires.
/// - TargetGroupARNs (masters) holds a haimg-ref: `haimg up` fills in the ARN.
fn auto_scaling_group(spec: &ClusterSpec, group: Group) -> AutoScalingGroup {
    let name = group.asg_name(spec).unwrap_or_default();
    let (min, max, desired) = match group {
        Group::Master | Group::FixedMaster { .. } => {
            let n = u32::from(spec.control_plane.count);
            (n, n, n)
        }
        Group::Worker(p) => (p.min_size, p.max_size, p.desired_capacity),
    };
    let size = |n: u32| i32::try_from(n).expect("validated: group sizes fit an i32");
    AutoScalingGroup {
        launch_template: LaunchTemplateRef {
            launch_template_name: name.clone(),
            version: "$Default".into(),
        },
        min_size: size(min),
        max_size: size(max),
        desired_capacity: size(desired),
        vpc_zone_identifier: spec
            .network
            .subnet_ids
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(","),
        // EC2 status checks only, for masters too. The target group's `/readyz` includes
        // etcd: with ELB health checks a quorum loss or a partition marks every master
        // unhealthy at once, the group replaces them all, and their etcd data goes with
        // the root volumes. `/readyz` still decides routing; replacement waits for a
        // failed instance.
        health_check_type: "EC2".into(),
        health_check_grace_period: if matches!(group, Group::Master) {
            MASTER_HEALTH_GRACE_SECONDS
        } else {
            WORKER_HEALTH_GRACE_SECONDS
        },
        target_group_arns: match group {
            Group::Master => vec![names::reference(
                "target-group",
                &names::target_group(&spec.name),
            )],
            _ => vec![],
        },
        termination_policies: vec!["OldestLaunchTemplate".into(), "OldestInstance".into()],
        lifecycle_hook_specification_list: vec![LifecycleHook {
            lifecycle_hook_name: names::LIFECYCLE_HOOK.into(),
            lifecycle_transition: "autoscaling:EC2_INSTANCE_TERMINATING".into(),
            heartbeat_timeout: LIFECYCLE_HEARTBEAT_SECONDS,
            default_result: "CONTINUE".into(),
        }],
        tags: tags(spec, &name, group.role().as_str(), group.pool_tag())
            .into_iter()
            .map(|tag| AsgTag {
                resource_id: name.clone(),
                resource_type: "auto-scaling-group".into(),
                key: tag.key,
                value: tag.value,
                // Instances and volumes get their tags from the launch template.
                propagate_at_launch: false,
            })
            .collect(),
        auto_scaling_group_name: name,
    }
}

/// The API endpoint's four `aws elbv2` inputs (NLB mode), by path.
fn load_balancer(spec: &ClusterSpec) -> Vec<Artifact> {
    let Endpoint::Nlb { internal } = spec.control_plane.endpoint else {
        return vec![];
    };
    let (lb, tg) = (
        names::load_balancer(&spec.name),
        names::target_group(&spec.name),
    );
    let port = i32::from(names::API_PORT);
    let target_group_arn = names::reference("target-group", &tg);
    // `create-load-balancer`: an NLB in every subnet (AZ).
    let load_balancer = LoadBalancer {
        name: lb.clone(),
        subnets: spec
            .network
            .subnet_ids
            .iter()
            .map(|s| s.to_string())
            .collect(),
        scheme: if internal {
            "internal"
        } else {
            "internet-facing"
        }
        .into(),
        r#type: "network".into(),
        ip_address_type: "ipv4".into(),
        tags: api_tags(spec),
    };
    // `create-target-group`. Health check: HTTPS GET /readyz on 6443 (anonymous access to
    // /readyz is allowed by the system:public-info-viewer role), every 10 s, 2 to become
    // healthy and 2 to become unhealthy: a failed API server leaves rotation in about 20 s.
    let target_group = TargetGroup {
        name: tg,
        protocol: "TCP".into(),
        port,
        vpc_id: spec.network.vpc_id.to_string(),
        target_type: "instance".into(),
        health_check_enabled: true,
        health_check_protocol: "HTTPS".into(),
        health_check_port: names::API_PORT.to_string(),
        health_check_path: "/readyz".into(),
        health_check_interval_seconds: 10,
        health_check_timeout_seconds: 5,
        healthy_threshold_count: 2,
        unhealthy_threshold_count: 2,
        matcher: Matcher {
            http_code: "200".into(),
        },
        tags: api_tags(spec),
    };
    // `modify-target-group-attributes`:
    // - preserve_client_ip.enabled=false: with client IP preservation a master that reaches
    //   its own API server through the NLB (kubeadm init does) gets its packets back with
    //   its own source address and drops them: the "hairpinning" timeouts of seed 000.
    // - deregistration_delay 30 s: API clients reconnect fast; long requests (watches) are
    //   re-established by client-go anyway. connection_termination closes what is left.
    // - cross-zone load balancing on: a zone whose master is down still serves the API.
    let attribute = |key: &str, value: &str| Attribute {
        key: key.into(),
        value: value.into(),
    };
    let attributes = TargetGroupAttributes {
        target_group_arn: target_group_arn.clone(),
        attributes: vec![
            attribute("preserve_client_ip.enabled", "false"),
            attribute(
                "deregistration_delay.timeout_seconds",
                &DEREGISTRATION_DELAY_SECONDS.to_string(),
            ),
            attribute(
                "deregistration_delay.connection_termination.enabled",
                "true",
            ),
            attribute("load_balancing.cross_zone.enabled", "true"),
        ],
    };
    // `create-listener`: TCP pass-through to the API servers (TLS ends at kube-apiserver).
    let listener = Listener {
        load_balancer_arn: names::reference("load-balancer", &lb),
        protocol: "TCP".into(),
        port,
        default_actions: vec![ListenerAction {
            r#type: "forward".into(),
            target_group_arn,
        }],
        tags: api_tags(spec),
    };
    vec![
        json_artifact("load-balancer/load-balancer.json".into(), &load_balancer),
        json_artifact("load-balancer/target-group.json".into(), &target_group),
        json_artifact(
            "load-balancer/target-group-attributes.json".into(),
            &attributes,
        ),
        json_artifact("load-balancer/listener.json".into(), &listener),
    ]
}

/// The least privilege of `haimg status` for this cluster.
pub fn status_policy(spec: &ClusterSpec) -> iam::Policy {
    let part = partition(spec);
    let region = &spec.region;
    let prefix = spec.ssm.prefix.as_str();
    let arns = if matches!(spec.credentials, crate::spec::Credentials::Ssm) {
        [layout::STATE, layout::JOIN_TIMES]
            .iter()
            .map(|rel| format!("arn:{part}:ssm:{region}:*:parameter{prefix}/{rel}"))
            .collect()
    } else {
        vec![]
    };
    iam::status_policy(arns)
}

/// `iam/operator-policy.json` (see [`iam::operator_policy`]).
pub fn operator_policy(spec: &ClusterSpec) -> iam::Policy {
    let part = partition(spec);
    let region = spec.region.as_str();
    let param = |path: &str| format!("arn:{part}:ssm:{region}:*:parameter{path}");
    let prefix = spec.ssm.prefix.as_str();
    let parameter_arns = if matches!(spec.credentials, crate::spec::Credentials::Ssm) {
        vec![param(prefix), param(&format!("{prefix}/*"))]
    } else {
        vec![]
    };
    let group_arn = |name: &str| {
        format!("arn:{part}:autoscaling:{region}:*:autoScalingGroup:*:autoScalingGroupName/{name}")
    };
    let group_arns = master_groups(spec)
        .iter()
        .filter_map(|g| g.asg_name(spec))
        .chain(
            spec.worker_pools
                .iter()
                .map(|p| names::worker_group(&spec.name, &p.name)),
        )
        .map(|n| group_arn(&n))
        .collect();
    let load_balancer = matches!(
        spec.control_plane.endpoint,
        crate::spec::Endpoint::Nlb { .. }
    )
    .then(|| {
        let elb = format!("arn:{part}:elasticloadbalancing:{region}:*");
        let lb = names::load_balancer(&spec.name);
        iam::LoadBalancerArns {
            load_balancer: format!("{elb}:loadbalancer/net/{lb}/*"),
            listeners: format!("{elb}:listener/net/{lb}/*"),
            target_group: format!("{elb}:targetgroup/{}/*", names::target_group(&spec.name)),
        }
    });
    // bake publishes `/haimg/images/<recipe>/{latest,<hash>}` in every region it copies to.
    let images = match &spec.image {
        ImageSource::SsmParameter(p) => match p.as_str().rsplit_once('/') {
            Some((dir, _)) if !dir.is_empty() => format!("{dir}/*"),
            _ => "/haimg/images/*".to_string(),
        },
        ImageSource::Ami(_) => "/haimg/images/*".to_string(),
    };
    iam::operator_policy(&iam::OperatorScope {
        partition: part,
        region: region.to_string(),
        cluster: spec.name.to_string(),
        parameter_arns,
        group_arns,
        load_balancer,
        image_parameter_arns: vec![format!("arn:{part}:ssm:*:*:parameter{images}")],
    })
}

/// `iam/master-policy.json` and `iam/worker-policy.json` (see [`iam::master_policy`]).
fn policies(spec: &ClusterSpec) -> (iam::Policy, iam::Policy) {
    let part = partition(spec);
    let region = &spec.region;
    let param = |path: &str| format!("arn:{part}:ssm:{region}:*:parameter{path}");
    let prefix = spec.ssm.prefix.as_str();
    let key = &spec.ssm.kms_key_id;
    let kms_resource = if key.as_str().starts_with("arn:") && key.alias().is_none() {
        key.to_string()
    } else if key.alias().is_none() {
        format!("arn:{part}:kms:{region}:*:key/{key}")
    } else {
        // An alias names a key we cannot resolve offline: allow keys that carry the alias.
        format!("arn:{part}:kms:{region}:*:key/*")
    };
    let group_arn = |name: &str| {
        format!("arn:{part}:autoscaling:{region}:*:autoScalingGroup:*:autoScalingGroupName/{name}")
    };
    let scope = |group_arns: Vec<String>| iam::InstanceScope {
        parameter_arns: vec![param(prefix), param(&format!("{prefix}/*"))],
        worker_join_arn: param(&format!("{prefix}/{}", layout::JOIN_WORKER)),
        denied_arns: vec![
            param(&format!("{prefix}/{}", layout::JOIN_CONTROL_PLANE)),
            param(prefix),
            param(&format!("{prefix}/join")),
        ],
        kms_resource: kms_resource.clone(),
        kms_alias: key.alias().map(|a| format!("alias/{a}")),
        ssm_service: format!("ssm.{region}.amazonaws.com"),
        group_arns,
    };
    let master_groups: Vec<String> = master_groups(spec)
        .iter()
        .filter_map(|g| g.asg_name(spec))
        .map(|n| group_arn(&n))
        .collect();
    let workers: Vec<String> = spec
        .worker_pools
        .iter()
        .map(|p| group_arn(&names::worker_group(&spec.name, &p.name)))
        .collect();
    (
        iam::master_policy(&scope(master_groups)),
        iam::worker_policy(&scope(workers)),
    )
}

fn json_artifact(path: String, v: &impl Serialize) -> Artifact {
    let mut contents = serde_json::to_string_pretty(v).expect("plain data serializes");
    contents.push('\n');
    Artifact { path, contents }
}

/// What to render.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    All,
    /// The control plane; in VIP mode one node, or every node when `None`.
    Master(Option<&'a str>),
    /// One pool, or every pool when `None`.
    Workers(Option<&'a PoolName>),
}

/// Renders the selected artifacts, in a stable order.
pub fn render(spec: &ClusterSpec, sel: Selection, t: &Templates) -> Result<Vec<Artifact>> {
    let mut out = Vec::new();
    let want_master = matches!(sel, Selection::All | Selection::Master(_));
    let pools: Vec<&WorkerPool> = match sel {
        Selection::All | Selection::Workers(None) => spec.worker_pools.iter().collect(),
        Selection::Workers(Some(name)) => spec
            .worker_pools
            .iter()
            .filter(|p| &p.name == name)
            .collect(),
        Selection::Master(_) => vec![],
    };
    let mut selected: Vec<Group> = Vec::new();
    if want_master {
        let node = if let Selection::Master(n) = sel {
            n
        } else {
            None
        };
        selected.extend(master_groups(spec).into_iter().filter(|g| match (g, node) {
            (Group::FixedMaster { node: vn, .. }, Some(n)) => vn.name.as_str() == n,
            _ => true,
        }));
    }
    selected.extend(pools.into_iter().map(Group::Worker));
    for g in &selected {
        let ud = user_data(spec, *g, t)?;
        out.push(Artifact {
            path: format!("cloud-init/{}.yaml", g.stem()),
            contents: ud.text,
        });
    }
    // Launch templates and Auto Scaling groups for the groups that run in one.
    for g in selected.iter().filter(|g| g.asg_name(spec).is_some()) {
        out.push(json_artifact(
            format!("launch-templates/{}.json", g.stem()),
            &launch_template(spec, *g, t)?,
        ));
    }
    for g in selected.iter().filter(|g| g.asg_name(spec).is_some()) {
        out.push(json_artifact(
            format!("autoscaling/{}.json", g.stem()),
            &auto_scaling_group(spec, *g),
        ));
    }
    if want_master {
        out.extend(load_balancer(spec));
    }
    for g in &selected {
        if let Group::FixedMaster { node, .. } = g {
            for f in vip::files(spec, *g, t)? {
                if let Some(name) = f.vip_name {
                    out.push(Artifact {
                        path: format!("vip/{}/{name}", node.name),
                        contents: f.content,
                    });
                }
            }
        }
    }
    if matches!(sel, Selection::All | Selection::Master(None)) {
        out.extend(external::artifacts(spec, t)?);
    }
    if matches!(sel, Selection::All) {
        out.push(json_artifact(
            "security-groups/cluster-ingress.json".into(),
            &security::ingress(spec),
        ));
    }
    if matches!(sel, Selection::All) {
        out.push(json_artifact(
            "iam/status-policy.json".into(),
            &status_policy(spec),
        ));
        out.push(json_artifact(
            "iam/operator-policy.json".into(),
            &operator_policy(spec),
        ));
    }
    let (master_policy, worker_policy) = policies(spec);
    if want_master {
        out.push(json_artifact(
            "iam/master-policy.json".into(),
            &master_policy,
        ));
    }
    if !matches!(sel, Selection::Master(_)) {
        out.push(json_artifact(
            "iam/worker-policy.json".into(),
            &worker_policy,
        ));
    }
    Ok(out)
}
