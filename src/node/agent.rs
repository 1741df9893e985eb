//! What every flow of the node agent shares: its seams (DESIGN §7), its configuration,
//! the node's identity from IMDSv2, the SSM store, and the kubeadm/kubectl runner.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::kubeadm::NodeIdentity;
use super::store::Store;
use crate::contract::node_config::NodeConfig;
use crate::error::{Error, Result};

/// The seams that let the agent run on a laptop (DESIGN §7).
#[derive(Debug, Clone)]
pub struct Seams {
    /// `HAIMG_ROOT`: prefix for every file the agent reads or writes (default `/`).
    pub root: PathBuf,
    /// `HAIMG_NODE_CONFIG`: the node config (default `/etc/haimg/node.yaml` under the root).
    pub node_config: PathBuf,
    /// `HAIMG_KUBEADM`, `HAIMG_KUBECTL`: the executables (default from `PATH`).
    pub kubeadm: PathBuf,
    pub kubectl: PathBuf,
}

impl Seams {
    pub fn from_env() -> Self {
        let root = std::env::var_os("HAIMG_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        let node_config = std::env::var_os("HAIMG_NODE_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                root.join(crate::contract::node_config::NODE_CONFIG_PATH.trim_start_matches('/'))
            });
        Self {
            kubeadm: std::env::var_os("HAIMG_KUBEADM")
                .map(PathBuf::from)
                .unwrap_or_else(|| "kubeadm".into()),
            kubectl: std::env::var_os("HAIMG_KUBECTL")
                .map(PathBuf::from)
                .unwrap_or_else(|| "kubectl".into()),
            root,
            node_config,
        }
    }

    /// An absolute node path under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
}

/// Files the agent and kubeadm use on a node.
pub mod paths {
    pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
    pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
    pub const CA_CERT: &str = "/etc/kubernetes/pki/ca.crt";
    pub const CA_KEY: &str = "/etc/kubernetes/pki/ca.key";
    pub const MANIFESTS: &str = "/etc/kubernetes/manifests";
    pub const CNI_MANIFEST: &str = "/usr/share/haimg/cni/manifest.yaml";
    /// What the bake put into the image (packages, images with digests).
    pub const IMAGE_MANIFEST: &str = "/etc/haimg/image-manifest.json";
    /// Kubeadm config files holding secrets: 0600, removed after use.
    pub const INIT_CONFIG: &str = "/etc/haimg/kubeadm-init.yaml";
    pub const JOIN_CONFIG: &str = "/etc/haimg/kubeadm-join.yaml";
    pub const UPLOAD_CERTS_CONFIG: &str = "/etc/haimg/kubeadm-upload-certs.yaml";
}

pub struct Agent {
    pub seams: Seams,
    pub cfg: NodeConfig,
    pub id: NodeIdentity,
    pub aws: aws_config::SdkConfig,
    pub store: Store,
    pub imds: crate::aws::imds::Client,
}

impl Agent {
    /// Loads the node config (exit 2 when it is invalid, before anything is touched),
    /// then the node's identity from IMDSv2.
    pub async fn load() -> Result<Agent> {
        let seams = Seams::from_env();
        let cfg = load_config(&seams)?;
        let aws = crate::aws::load(Some(cfg.region.as_str()), None).await;
        let imds = crate::aws::imds::client();
        let id = match &cfg.node {
            // VIP-mode masters have a fixed name and address (and may run where no IMDS is).
            Some(fixed) => NodeIdentity {
                instance_id: fixed.name.clone(),
                hostname: fixed.name.clone(),
                private_ip: fixed.address.to_string(),
                availability_zone: String::new(),
            },
            None => identity(&imds).await?,
        };
        let store = Store::new(
            aws_sdk_ssm::Client::new(&aws),
            cfg.ssm.prefix.as_str(),
            cfg.ssm.kms_key_id.as_str(),
        );
        Ok(Agent {
            seams,
            cfg,
            id,
            aws,
            store,
            imds,
        })
    }

    pub fn path(&self, abs: &str) -> PathBuf {
        self.seams.path(abs)
    }

    pub fn is_control_plane_ready(&self) -> bool {
        self.path(paths::ADMIN_CONF).is_file()
    }

    pub fn has_joined(&self) -> bool {
        self.path(paths::KUBELET_CONF).is_file()
    }

    /// Runs kubeadm with `args`; `None` timeout means the tool's own.
    pub async fn kubeadm(&self, args: &[&str], timeout: Duration) -> Result<String> {
        run_tool(&self.seams.kubeadm, args, timeout).await
    }

    /// Runs kubectl against this master's admin kubeconfig (or the kubelet's on workers).
    pub async fn kubectl(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let conf = if self.is_control_plane_ready() {
            paths::ADMIN_CONF
        } else {
            paths::KUBELET_CONF
        };
        let kubeconfig = self.path(conf);
        let mut all: Vec<&str> = vec!["--kubeconfig", kubeconfig.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        run_tool(&self.seams.kubectl, &all, timeout).await
    }
}

/// The node config the seams point at (exit 2 when it is missing or invalid).
pub fn load_config(seams: &Seams) -> Result<NodeConfig> {
    let text = std::fs::read_to_string(&seams.node_config).map_err(|e| {
        Error::Usage(format!(
            "cannot read node config {}: {e}",
            seams.node_config.display()
        ))
    })?;
    NodeConfig::from_yaml(&text, &seams.node_config.display().to_string())
}

/// The node's identity, from IMDSv2 (hop limit 1: only the host itself can ask).
async fn identity(imds: &crate::aws::imds::Client) -> Result<NodeIdentity> {
    let get = |path: &'static str| crate::aws::imds::get(imds, path);
    Ok(NodeIdentity {
        instance_id: get("instance-id").await?,
        hostname: get("local-hostname").await?,
        private_ip: get("local-ipv4").await?,
        availability_zone: get("placement/availability-zone").await?,
    })
}

/// Runs a tool, bounded by `timeout`; stdout on success, an error with the tail of its
/// stderr otherwise. Arguments never carry secrets (those go in 0600 files).
pub async fn run_tool(program: &Path, args: &[&str], timeout: Duration) -> Result<String> {
    let shown = format!("{} {}", program.display(), args.join(" "));
    tracing::info!(command = %shown, "running");
    let child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, child)
        .await
        .map_err(|_| {
            Error::Timeout(format!(
                "`{shown}` did not finish within {}s",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| Error::Runtime(format!("cannot run `{shown}`: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(Error::Runtime(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            tail.join(" | ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes a file readable by root only, creating it with mode 0600 (never briefly wider).
pub fn write_secret_file(path: &Path, contents: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    let _ = std::fs::remove_file(path);
    crate::files::create_secret(path, contents.as_bytes())
}

/// Removes a secret file when dropped, on every path out of the scope that wrote it.
pub struct SecretFile(pub PathBuf);

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
