//! The node agent (`haimg node …`, DESIGN §7): runs on the nodes, elects the first master,
//! runs kubeadm, keeps join material in SSM, joins, rotates and cleans up.

pub mod agent;
pub mod bootstrap;
pub mod clock;
pub mod etcd;
pub mod evict;
pub mod kubeadm;
pub mod preflight;
pub mod reconcile;
pub mod refresh;
pub mod store;
pub mod watch;

use crate::error::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Elect, init or join (run once by cloud-init); runs the preflight first.
    Bootstrap,
    /// Check that this node can run Kubernetes: cgroup v2, no swap, ip_forward and
    /// br_netfilter, containerd listening (waited for). Exit 0 or 1, every problem named.
    Preflight,
    /// Rotate join material before it expires (systemd timer on masters).
    Refresh,
    /// Remove etcd members and Node objects of instances that are gone (timer on masters).
    Reconcile,
    /// Drain and leave on scale-in (service on every node).
    Watch,
}

pub fn run(args: Args) -> Result<()> {
    init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        if let NodeCommand::Preflight = args.command {
            // Needs neither AWS nor instance metadata: only the node config's bounds, and
            // the defaults on an image no user-data has configured yet (a boot test).
            let seams = agent::Seams::from_env();
            let settings = if seams.node_config.exists() {
                agent::load_config(&seams)?.agent
            } else {
                crate::contract::node_config::AgentSettings::default()
            };
            let bound = std::time::Duration::from_secs(settings.cri_wait_seconds);
            return preflight::run(&seams, bound).await;
        }
        let agent = agent::Agent::load().await?;
        let span = tracing::info_span!("node", cluster = %agent.cfg.cluster, instance = %agent.id.instance_id, role = agent.cfg.role.as_str());
        let _g = span.enter();
        match args.command {
            NodeCommand::Bootstrap => bootstrap::run(&agent).await,
            NodeCommand::Refresh => refresh::run(&agent).await,
            NodeCommand::Reconcile => reconcile::run(&agent).await,
            NodeCommand::Watch => watch::run(&agent).await,
            NodeCommand::Preflight => unreachable!("handled before the agent loads"),
        }
    })
}

/// One logging facade: tracing to stderr (the journal under systemd). `HAIMG_LOG` sets
/// the filter (default `info`); `NO_COLOR` turns colour off.
fn init_logging() {
    crate::progress::init_tracing("info,aws=warn,hyper=warn");
}
