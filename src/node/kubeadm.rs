//! kubeadm configuration files, typed, for the config API of the pinned version:
//! `kubeadm.k8s.io/v1beta3` up to 1.30, `v1beta4` from 1.31 (where `extraArgs` became a
//! list of `{name, value}`).
//!
//! Secrets (token, certificate key) only ever go into these files, written 0600 while
//! kubeadm runs and removed after: kubeadm refuses `--config` together with
//! `--certificate-key`, and flags would show secrets in the process list.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::contract::node_config::NodeConfig;
use crate::contract::secret::Secret;
use crate::kubernetes::kubeadm_api_version;

/// What the agent knows about this node (from IMDS).
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub instance_id: String,
    /// The EC2 private DNS name: the node name.
    pub hostname: String,
    pub private_ip: String,
    pub availability_zone: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapToken<'a> {
    token: &'a str,
    ttl: String,
    usages: [&'static str; 2],
    groups: [&'static str; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiEndpoint<'a> {
    advertise_address: &'a str,
    bind_port: u16,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ExtraArgs {
    /// v1beta3: a map.
    Map(BTreeMap<String, String>),
    /// v1beta4: a list of {name, value}.
    List(Vec<NameValue>),
}

#[derive(Serialize)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRegistration<'a> {
    name: &'a str,
    cri_socket: &'static str,
    image_pull_policy: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubelet_extra_args: Option<ExtraArgs>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitConfiguration<'a> {
    api_version: &'static str,
    kind: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bootstrap_tokens: Vec<BootstrapToken<'a>>,
    certificate_key: &'a str,
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: ApiEndpoint<'a>,
    node_registration: NodeRegistration<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeouts: Option<Timeouts>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Networking<'a> {
    pod_subnet: String,
    service_subnet: String,
    dns_domain: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiServer {
    #[serde(rename = "certSANs")]
    cert_sans: Vec<String>,
    /// v1beta3 only (v1beta4 moved it to `InitConfiguration.timeouts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_for_control_plane: Option<String>,
}

/// v1beta4's `timeouts` (InitConfiguration and JoinConfiguration).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Timeouts {
    control_plane_component_health_check: String,
}

/// How long `kubeadm init` waits for the control plane to answer. kubeadm 1.30 asks through
/// `controlPlaneEndpoint`, the NLB, which takes minutes to pass a new target's health checks
/// (kubeadm's default of 4 minutes is not always enough); 10 minutes is well inside the
/// agent's own bound on a kubeadm run (`agent.kubeadmTimeoutSeconds`, 15 minutes).
pub const CONTROL_PLANE_WAIT: &str = "10m0s";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterConfiguration<'a> {
    api_version: &'static str,
    kind: &'static str,
    cluster_name: &'a str,
    kubernetes_version: String,
    control_plane_endpoint: &'a str,
    networking: Networking<'a>,
    api_server: ApiServer,
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd: Option<EtcdConfig<'a>>,
}

#[derive(Serialize)]
struct EtcdConfig<'a> {
    local: EtcdLocal<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EtcdLocal<'a> {
    image_tag: &'a str,
}

/// The tag of the etcd image the node's image carries, from its image manifest (which
/// lists every baked image): an image may carry another etcd than kubeadm's default for
/// its version (built from another release, say), and kubeadm must be told, or it looks
/// for an image that is not there. `None` when the manifest names no single etcd image.
pub fn baked_etcd_tag(manifest: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(manifest).ok()?;
    let tags: Vec<&str> = v["images"]
        .as_array()?
        .iter()
        .filter_map(|i| i["image"].as_str()?.strip_prefix("registry.k8s.io/etcd:"))
        .collect();
    match tags[..] {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KubeletConfiguration {
    api_version: &'static str,
    kind: &'static str,
    /// containerd is configured with SystemdCgroup = true: both must use systemd.
    cgroup_driver: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Discovery<'a> {
    bootstrap_token: DiscoveryToken<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DiscoveryToken<'a> {
    api_server_endpoint: &'a str,
    token: &'a str,
    ca_cert_hashes: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinControlPlane<'a> {
    #[serde(rename = "localAPIEndpoint")]
    local_api_endpoint: ApiEndpoint<'a>,
    certificate_key: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinConfiguration<'a> {
    api_version: &'static str,
    kind: &'static str,
    discovery: Discovery<'a>,
    node_registration: NodeRegistration<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    control_plane: Option<JoinControlPlane<'a>>,
}

/// containerd's CRI socket (the only runtime the image has).
const CRI_SOCKET: &str = "unix:///run/containerd/containerd.sock";

fn node_registration<'a>(cfg: &'a NodeConfig, id: &'a NodeIdentity) -> NodeRegistration<'a> {
    let mut args = BTreeMap::new();
    let labels = &cfg.kubernetes.node_labels;
    if !labels.is_empty() {
        args.insert(
            "node-labels".to_string(),
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    // A node with a fixed address (VIP mode) pins the kubelet to it: the Node's InternalIP
    // is then never the VIP, and neither is what CNIs autodetect from it (seed 002 §6.8).
    if let Some(fixed) = &cfg.node {
        args.insert("node-ip".to_string(), fixed.address.to_string());
    } else {
        // The Node names its instance, which outlives the address and the DNS name EC2
        // recycles: reconcile matches Nodes to instances by it.
        args.insert(
            "provider-id".to_string(),
            format!("aws:///{}/{}", id.availability_zone, id.instance_id),
        );
    }
    let kubelet_extra_args = (!args.is_empty()).then(|| {
        if kubeadm_api_version(&cfg.kubernetes.version).ends_with("v1beta3") {
            ExtraArgs::Map(args)
        } else {
            ExtraArgs::List(
                args.into_iter()
                    .map(|(name, value)| NameValue { name, value })
                    .collect(),
            )
        }
    });
    NodeRegistration {
        name: &id.hostname,
        cri_socket: CRI_SOCKET,
        image_pull_policy: &cfg.kubernetes.image_pull_policy,
        kubelet_extra_args,
    }
}

fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

/// The `kubeadm init --config` file of the first master (also used, without the token,
/// by `kubeadm init phase upload-certs` on rotation).
pub fn init_config(
    cfg: &NodeConfig,
    id: &NodeIdentity,
    endpoint: &str,
    token: Option<&Secret>,
    token_ttl: std::time::Duration,
    certificate_key: &Secret,
    etcd_image_tag: Option<&str>,
) -> String {
    let api = kubeadm_api_version(&cfg.kubernetes.version);
    let v1beta3 = api.ends_with("v1beta3");
    let host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(endpoint);
    let init = InitConfiguration {
        api_version: api,
        kind: "InitConfiguration",
        bootstrap_tokens: token
            .map(|t| BootstrapToken {
                token: t.expose(),
                ttl: format!("{}s", token_ttl.as_secs()),
                usages: ["signing", "authentication"],
                groups: ["system:bootstrappers:kubeadm:default-node-token"],
            })
            .into_iter()
            .collect(),
        certificate_key: certificate_key.expose(),
        local_api_endpoint: ApiEndpoint {
            advertise_address: &id.private_ip,
            bind_port: cfg.endpoint.api_server_bind_port(),
        },
        node_registration: node_registration(cfg, id),
        timeouts: (!v1beta3).then(|| Timeouts {
            control_plane_component_health_check: CONTROL_PLANE_WAIT.into(),
        }),
    };
    let cluster = ClusterConfiguration {
        api_version: api,
        kind: "ClusterConfiguration",
        cluster_name: cfg.cluster.as_str(),
        kubernetes_version: format!("v{}", cfg.kubernetes.version),
        control_plane_endpoint: endpoint,
        networking: Networking {
            pod_subnet: cfg.kubernetes.pod_subnet.to_string(),
            service_subnet: cfg.kubernetes.service_subnet.to_string(),
            dns_domain: "cluster.local",
        },
        api_server: ApiServer {
            cert_sans: vec![host.to_string()],
            timeout_for_control_plane: v1beta3.then(|| CONTROL_PLANE_WAIT.into()),
        },
        etcd: etcd_image_tag.map(|image_tag| EtcdConfig {
            local: EtcdLocal { image_tag },
        }),
    };
    let kubelet = KubeletConfiguration {
        api_version: "kubelet.config.k8s.io/v1beta1",
        kind: "KubeletConfiguration",
        cgroup_driver: "systemd",
    };
    docs(&[
        crate::yaml::to_string(&init),
        crate::yaml::to_string(&cluster),
        crate::yaml::to_string(&kubelet),
    ])
}

/// The `kubeadm join --config` file; `certificate_key` makes it a control-plane join.
pub fn join_config(
    cfg: &NodeConfig,
    id: &NodeIdentity,
    endpoint: &str,
    token: &Secret,
    ca_cert_hashes: &[String],
    certificate_key: Option<&Secret>,
) -> String {
    let join = JoinConfiguration {
        api_version: kubeadm_api_version(&cfg.kubernetes.version),
        kind: "JoinConfiguration",
        discovery: Discovery {
            bootstrap_token: DiscoveryToken {
                api_server_endpoint: endpoint,
                token: token.expose(),
                ca_cert_hashes,
            },
        },
        node_registration: node_registration(cfg, id),
        control_plane: certificate_key.map(|k| JoinControlPlane {
            local_api_endpoint: ApiEndpoint {
                advertise_address: &id.private_ip,
                bind_port: cfg.endpoint.api_server_bind_port(),
            },
            certificate_key: k.expose(),
        }),
    };
    crate::yaml::to_string(&join)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_baked_etcd_tag_is_read_from_the_image_manifest() {
        let m = |images: &str| format!(r#"{{"recipe": "x", "images": [{images}]}}"#);
        assert_eq!(
            super::baked_etcd_tag(&m(
                r#"{"image": "registry.k8s.io/etcd:3.5.21-0", "digest": "d"}, {"image": "registry.k8s.io/pause:3.9", "digest": "d"}"#
            ))
            .as_deref(),
            Some("3.5.21-0")
        );
        assert_eq!(
            super::baked_etcd_tag(&m(
                r#"{"image": "registry.k8s.io/pause:3.9", "digest": "d"}"#
            )),
            None
        );
        assert_eq!(
            super::baked_etcd_tag(&m(
                r#"{"image": "registry.k8s.io/etcd:3.5.21-0"}, {"image": "registry.k8s.io/etcd:3.5.12-0"}"#
            )),
            None,
            "two etcd images: kubeadm's default decides"
        );
        assert_eq!(super::baked_etcd_tag("not json"), None);
    }
}
