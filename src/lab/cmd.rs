//! `haimg lab up|status|down`: the command line over [`super::plan`] and [`super::host`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::host::{self, Layout};
use super::imds::Identity;
use super::plan::{self, LabPlan};
use crate::error::{Error, Result};
use crate::render::templates::Templates;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Boot one node per node of the spec from a local image, each with its own user-data,
    /// on a private network with no route out; wait until every node is Ready.
    Up(UpArgs),
    /// The lab's nodes: running, cloud-init done, Kubernetes Ready (exit 1 when not all are).
    Status(CommonArgs),
    /// Stop every node and remove everything the lab made (also after a failed `up`).
    Down(CommonArgs),
    /// Power a node off (its root and network kept), as a failed instance looks.
    Stop(StopArgs),
    /// Boot a stopped node again from its root.
    Start(NodeArgs),
    /// Set a worker pool's desired capacity, as its Auto Scaling group would: new workers
    /// boot with the pool's user-data and join; the newest are scaled in through the
    /// termination lifecycle (each drains itself and completes the action, then stops).
    Scale(ScaleArgs),
    /// Scale in one worker, as `aws autoscaling terminate-instance-in-auto-scaling-group
    /// --should-decrement-desired-capacity` does: through the termination lifecycle.
    Terminate(TerminateArgs),
    /// The metadata stand-in and the lab's Auto Scaling (started by `up` in the lab's namespace).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        imds: std::net::SocketAddr,
        #[arg(long)]
        autoscaling: std::net::SocketAddr,
        #[arg(long)]
        identities: PathBuf,
        #[arg(long)]
        events: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// The cluster spec (default ./cluster.yaml, else the embedded lab example).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the lab keeps its disks, roots and logs (default /var/lib/haimg/lab/<cluster>).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// `json` for a machine-readable report (`lab status`: `{cluster, up, healthy, nodes}`).
    #[arg(long, value_enum, default_value = "text")]
    pub output: crate::cli::Output,
}

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The node: its name or its key (m1, w1, …).
    pub node: String,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Cut the power: kill every process of the node at once, with no shutdown (keepalived
    /// cannot hand the VIP over; the others must notice the node is gone).
    #[arg(long)]
    pub kill: bool,
}

#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The worker pool.
    pub pool: String,
    /// Its new desired capacity.
    pub desired: u32,
    /// Bound on the new workers becoming Ready, and on each scaled-in worker's lifecycle
    /// action (Auto Scaling's heartbeat timeout for the `haimg-drain` hook is 600 s).
    #[arg(long, default_value = "600", value_name = "SECONDS")]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct TerminateArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Bound on the worker's lifecycle action (the hook's heartbeat timeout).
    #[arg(long, default_value = "600", value_name = "SECONDS")]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The local image: a store entry of `haimg bake --target qemu`, or its disk (qcow2 or raw).
    #[arg(long, value_name = "PATH")]
    pub image: PathBuf,
    /// Give up (and remove everything) when the nodes are not all Ready by then.
    #[arg(long, default_value = "600", value_name = "SECONDS")]
    pub timeout: u64,
    /// moto's server, which plays Parameter Store when the spec's credentials come from SSM
    /// (`pip install 'moto[server]'`); not used with static credentials.
    #[arg(long, value_name = "PATH", default_value = "moto_server")]
    pub moto_server: PathBuf,
}

/// What `up` leaves for `status` and `down`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    plan: LabPlan,
    image: PathBuf,
    started_at: u64,
    /// Where the nodes' AWS calls go.
    ssm: Option<String>,
    autoscaling: String,
    /// A plain base (`bake --plain`): what its nodes install from at boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plain: Option<crate::bake::local::cmd::PlainEntry>,
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("tokio: {e}")))?;
    match args.command {
        LabCommand::Up(a) => rt.block_on(up(a)),
        LabCommand::Status(a) => rt.block_on(status(a)),
        LabCommand::Down(a) => down(a),
        LabCommand::Stop(a) => stop_or_start(a.node, Some(a.kill)),
        LabCommand::Start(a) => stop_or_start(a, None),
        LabCommand::Scale(a) => rt.block_on(scale(a)),
        LabCommand::Terminate(a) => rt.block_on(terminate(a)),
        LabCommand::Serve {
            imds,
            autoscaling,
            identities,
            events,
        } => rt.block_on(super::serve::run(imds, autoscaling, identities, events)),
    }
}

/// The spec as `render` loads it (static credentials beside it, created on first use).
fn load(c: &CommonArgs) -> Result<(crate::spec::ClusterSpec, Layout)> {
    let (spec, l, _) = load_with_source(c)?;
    Ok((spec, l))
}

/// The spec file's name and text, for messages that point into it.
struct Source {
    name: String,
    text: String,
}

fn load_with_source(c: &CommonArgs) -> Result<(crate::spec::ClusterSpec, Layout, Source)> {
    let path = match &c.config {
        Some(p) => Some(p.clone()),
        None if Path::new("cluster.yaml").exists() => Some(PathBuf::from("cluster.yaml")),
        None => None,
    };
    let source = match &path {
        Some(p) => Source {
            name: p.display().to_string(),
            text: std::fs::read_to_string(p).map_err(|e| {
                Error::Usage(format!("cannot read cluster spec {}: {e}", p.display()))
            })?,
        },
        None => Source {
            name: "<embedded examples/lab.yaml>".into(),
            text: super::EXAMPLE.into(),
        },
    };
    let dir = match path.as_ref().map(|p| p.parent()) {
        Some(Some(d)) if !d.as_os_str().is_empty() => d.to_path_buf(),
        Some(_) => PathBuf::from("."),
        None => PathBuf::new(),
    };
    let mut loaded = crate::spec::load_str(&source.text, &source.name)?;
    for w in &loaded.warnings {
        crate::progress::warn(w);
    }
    let cluster = loaded.spec.name.to_string();
    let state = c
        .state
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/haimg/lab").join(&cluster));
    // The embedded example keeps its credentials with the lab's state.
    let spec_dir = if dir.as_os_str().is_empty() {
        state.clone()
    } else {
        dir
    };
    if matches!(
        loaded.spec.credentials,
        crate::spec::Credentials::Static { .. }
    ) {
        std::fs::create_dir_all(&spec_dir).map_err(Error::io(&spec_dir))?;
        crate::render::cmd::load_static_credentials(&mut loaded.spec, &spec_dir, true)?;
    }
    Ok((loaded.spec, Layout { cluster, state }, source))
}

/// The lab's plan of `spec`; a spec the lab cannot run is bad input, named at its field.
fn lab_plan(spec: &crate::spec::ClusterSpec, source: &Source) -> Result<LabPlan> {
    plan::plan(spec).map_err(|p| {
        let pos = crate::yaml::parse(&source.text)
            .ok()
            .and_then(|d| d.value_pos(&p.pointer));
        Error::Invalid(crate::error::Diagnostics(vec![crate::error::Diagnostic {
            file: source.name.clone(),
            pos,
            path: crate::yaml::dotted(&p.pointer),
            message: format!("lab: {}", p.message),
        }]))
    })
}

fn say(msg: &str) {
    crate::progress::line("lab", msg);
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Usage(
            "lab: needs root (network namespaces, mounts, systemd-nspawn)".into(),
        ));
    }
    for tool in ["systemd-nspawn", "ip", "mount", "sfdisk", "qemu-img"] {
        if which(tool).is_none() {
            return Err(Error::Runtime(format!(
                "lab: `{tool}` is not installed (Debian: systemd-container, iproute2, mount, fdisk, qemu-utils)"
            )));
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

async fn up(a: UpArgs) -> Result<()> {
    require_root()?;
    let (spec, l, source) = load_with_source(&a.common)?;
    let plan = lab_plan(&spec, &source)?;
    let t = Templates::embedded();
    // Every user-data before anything exists: a spec that cannot render stops here.
    let user_data: Vec<Vec<u8>> = plan
        .nodes
        .iter()
        .map(|n| plan::user_data(&spec, n, &t))
        .collect::<Result<_>>()?;
    for ud in &user_data {
        super::dropins::check_vendor_keys(ud)?;
    }
    let ssm = matches!(spec.credentials, crate::spec::Credentials::Ssm);
    let moto = if ssm {
        Some(find_tool(&a.moto_server).ok_or_else(|| {
            Error::Usage(format!(
                "lab: the spec's credentials come from SSM, which the lab plays with moto: `{}` is not installed (pip install 'moto[server]', or --moto-server PATH)",
                a.moto_server.display()
            ))
        })?)
    } else {
        None
    };
    let disk = image_disk(&a.image)?;
    if l.record().exists() || host::netns_exists(&l.lab_netns()) {
        return Err(Error::Usage(format!(
            "lab: cluster {} is already up (state in {}); `haimg lab down` first",
            l.cluster,
            l.state.display()
        )));
    }
    let t0 = Instant::now();
    let keys: Vec<String> = plan.nodes.iter().map(|n| n.key.clone()).collect();
    let blocking = Blocking::default();
    let work = async {
        start(&l, &plan, &disk, &a.image, moto.as_deref(), &spec).await?;
        boot(&l, &plan, &plan.nodes, &user_data, &blocking).await?;
        say(&format!(
            "{} nodes started in {:.1} s; waiting for every node Ready",
            plan.nodes.len(),
            t0.elapsed().as_secs_f64()
        ));
        wait_ready(&l, &plan.nodes, t0, Duration::from_secs(a.timeout)).await
    };
    let outcome = tokio::select! {
        r = work => r,
        s = crate::signals::stop() => Err(Error::Runtime(format!("lab up: stopped by {s}"))),
    };
    if let Err(e) = outcome {
        say(&format!("{e}; removing the lab"));
        // A root being copied when a signal came must be done before its mounts go.
        blocking.wait_idle(Duration::from_secs(300)).await;
        keep_logs(&l, &keys);
        for left in host::teardown(&l, &keys) {
            crate::progress::warn(format_args!("lab down: could not remove {left}"));
        }
        return Err(e);
    }
    say(&format!(
        "every node Ready in {:.1} s; kubeconfig {} (from the lab's namespace: ip netns exec {} kubectl --kubeconfig …)",
        t0.elapsed().as_secs_f64(),
        l.kubeconfig().display(),
        l.lab_netns()
    ));
    Ok(())
}

/// Counts blocking tasks still running (they cannot be cancelled), so a teardown after a
/// signal waits for them instead of unmounting under them.
#[derive(Clone, Default)]
struct Blocking(std::sync::Arc<std::sync::atomic::AtomicUsize>);

struct BlockingGuard(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for BlockingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Blocking {
    fn enter(&self) -> BlockingGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        BlockingGuard(self.0.clone())
    }
    async fn wait_idle(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        while self.0.load(std::sync::atomic::Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn find_tool(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    which(&p.to_string_lossy())
}

/// The disk of a local image: a store entry's `disk.qcow2`/`disk.raw`, or the file itself.
fn image_disk(image: &Path) -> Result<PathBuf> {
    let disk = if image.is_dir() {
        ["disk.qcow2", "disk.raw"]
            .iter()
            .map(|n| image.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "--image {}: no disk.qcow2 or disk.raw in it",
                    image.display()
                ))
            })?
    } else {
        image.to_path_buf()
    };
    if !disk.is_file() {
        return Err(Error::Usage(format!(
            "--image {}: no such file",
            disk.display()
        )));
    }
    Ok(disk)
}

/// The lab around the nodes: its record, the image's root, the network, the metadata
/// stand-in and Auto Scaling, and moto for SSM.
async fn start(
    l: &Layout,
    plan: &LabPlan,
    disk: &Path,
    image: &Path,
    moto: Option<&Path>,
    spec: &crate::spec::ClusterSpec,
) -> Result<()> {
    std::fs::create_dir_all(&l.state).map_err(Error::io(&l.state))?;
    let host = plan.host_address;
    let record = Record {
        plan: plan.clone(),
        image: image.to_path_buf(),
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ssm: moto.map(|_| format!("http://{host}:{}", plan::SSM_PORT)),
        autoscaling: format!("http://{host}:{}", plan::AUTOSCALING_PORT),
        plain: super::plain::entry_of(image),
    };
    write_record(l, &record)?;
    // Machine-wide settings the nodes will change, recorded before anything runs.
    let saved = host::read_sysctls();
    host::write(
        &l.sysctls(),
        serde_json::to_string(&saved)
            .expect("plain data")
            .as_bytes(),
        false,
    )?;

    say(&format!("image {}", disk.display()));
    let raw = if disk.extension().is_some_and(|e| e == "raw") {
        disk.to_path_buf()
    } else {
        let raw = l.state.join("disk.raw");
        host::run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "raw",
                &disk.to_string_lossy(),
                &raw.to_string_lossy(),
            ],
        )?;
        raw
    };
    host::mount_image_root(&raw, &l.lower())?;
    match &record.plain {
        Some(p) => {
            super::plain::check(p, &spec.kubernetes_version.to_string())?;
            say("a plain base: each node installs everything at boot (bake --plain)");
        }
        None => check_image(l, &record, spec)?,
    }

    let prefix = plan.network.prefix_len();
    host::create_lab_network(l, &host.to_string(), prefix)?;
    write_identities(l, &plan.nodes)?;
    let serve = [
        "lab".to_string(),
        "serve".into(),
        "--imds".into(),
        format!("{}:80", plan::IMDS_ADDRESS),
        "--autoscaling".into(),
        format!("{host}:{}", plan::AUTOSCALING_PORT),
        "--identities".into(),
        l.identities().to_string_lossy().into_owned(),
        "--events".into(),
        l.events().to_string_lossy().into_owned(),
    ];
    let exe = std::env::current_exe().map_err(|e| Error::Runtime(format!("lab: own path: {e}")))?;
    start_service(l, "serve", &exe, &serve, "listening on").await?;
    if let Some(moto) = moto {
        let args = [
            "-H".to_string(),
            host.to_string(),
            "-p".into(),
            plan::SSM_PORT.to_string(),
        ];
        start_service(l, "moto", moto, &args, "Running on").await?;
        say(&format!(
            "Parameter Store: moto at http://{host}:{}",
            plan::SSM_PORT
        ));
    }
    host::write_sysctl(
        "net/netfilter/nf_conntrack_max",
        &host::kube_proxy_conntrack_max().to_string(),
    )?;
    Ok(())
}

fn write_record(l: &Layout, r: &Record) -> Result<()> {
    host::write_atomic(
        &l.record(),
        serde_json::to_string_pretty(r)
            .expect("plain data")
            .as_bytes(),
        false,
    )
}

/// The identities the metadata stand-in serves, by address.
fn write_identities(l: &Layout, nodes: &[plan::LabNode]) -> Result<()> {
    let identities: BTreeMap<String, Identity> = nodes
        .iter()
        .map(|n| (n.address.to_string(), Identity::of(n)))
        .collect();
    write_identities_map(l, &identities)
}

fn write_identities_map(l: &Layout, m: &BTreeMap<String, Identity>) -> Result<()> {
    host::write_atomic(
        &l.identities(),
        serde_json::to_string_pretty(m)
            .expect("plain data")
            .as_bytes(),
        false,
    )
}

fn read_identities(l: &Layout) -> BTreeMap<String, Identity> {
    std::fs::read(l.identities())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Boots `nodes` of `plan`: their roots (in parallel: each copies the image's containerd
/// store, ~750 MB), networks, NoCloud seeds (their user-data, and the lab's vendor-data)
/// and lab-only drop-ins, then the nodes themselves.
async fn boot(
    l: &Layout,
    plan: &LabPlan,
    nodes: &[plan::LabNode],
    user_data: &[Vec<u8>],
    blocking: &Blocking,
) -> Result<()> {
    let record = read_record(l).ok_or_else(|| Error::Runtime("lab: its record is gone".into()))?;
    let vendor = super::dropins::vendor_data(&super::dropins::AwsEndpoints {
        ssm: record.ssm.clone(),
        autoscaling: record.autoscaling.clone(),
    });
    let drop_ins = match &record.plain {
        Some(_) => super::dropins::drop_ins(None)?,
        None => {
            let conf = l.lower().join("etc/containerd/config.toml");
            let text = std::fs::read_to_string(&conf).map_err(Error::io(&conf))?;
            super::dropins::drop_ins(Some(&text))?
        }
    };
    let binds = record
        .plain
        .as_ref()
        .map(super::plain::binds)
        .unwrap_or_default();
    let mut tasks = tokio::task::JoinSet::new();
    for n in nodes {
        let (l, key, guard) = (l.clone(), n.key.clone(), blocking.enter());
        tasks.spawn_blocking(move || {
            let _guard = guard;
            host::prepare_root(&l, &key)
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::Runtime(format!("lab: preparing a root: {e}")))??;
    }
    let prefix = plan.network.prefix_len();
    for (n, ud) in nodes.iter().zip(user_data) {
        host::create_node_network(
            l,
            &n.key,
            &n.address.to_string(),
            prefix,
            &plan.host_address.to_string(),
        )?;
        let root = l.root(&n.key);
        let seed = root.join("var/lib/cloud/seed/nocloud");
        // The user-data may hold static join material: root only, as on EC2.
        let ud = match &record.plain {
            Some(_) => super::plain::user_data(ud)?,
            None => ud.clone(),
        };
        host::write(&seed.join("user-data"), &ud, true)?;
        host::write(&seed.join("vendor-data"), vendor.as_bytes(), false)?;
        host::write(
            &seed.join("meta-data"),
            plan::meta_data(n).as_bytes(),
            false,
        )?;
        for d in &drop_ins {
            let p = root.join(d.path.trim_start_matches('/'));
            if super::dropins::is_link(d) {
                std::fs::create_dir_all(p.parent().expect("absolute")).map_err(Error::io(&p))?;
                let _ = std::fs::remove_file(&p);
                std::os::unix::fs::symlink(super::dropins::link_target(), &p)
                    .map_err(Error::io(&p))?;
            } else {
                host::write(&p, d.contents.as_bytes(), false)?;
            }
        }
        host::write(
            &l.node_dir(&n.key)
                .join("lab")
                .join(super::dropins::MARKER_NAME),
            super::dropins::MARKER_TEXT.as_bytes(),
            false,
        )?;
        let procs = host::create_cgroups(l, &n.key)?;
        let pid = host::start_node(l, &n.key, &n.key, &procs, &binds)?;
        host::write(
            &l.node_dir(&n.key).join("pid"),
            pid.to_string().as_bytes(),
            false,
        )?;
        say(&format!("{} ({}, {}) booting", n.name, n.key, n.address));
    }
    Ok(())
}

/// The image must be a haimg image that can run the spec: its manifest lists the spec's
/// Kubernetes version of the control-plane images and the VIP's keepalived and haproxy
/// images (the nodes are offline: a missing image would only show as a node that never
/// becomes Ready).
fn check_image(l: &Layout, r: &Record, spec: &crate::spec::ClusterSpec) -> Result<()> {
    let p = l.lower().join("etc/haimg/image-manifest.json");
    let text = std::fs::read_to_string(&p).map_err(|e| {
        Error::Usage(format!(
            "--image {}: no haimg image manifest ({e})",
            r.image.display()
        ))
    })?;
    let m: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Runtime(format!("{}: {e}", p.display())))?;
    let images: Vec<&str> = m["images"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["image"].as_str()).collect())
        .unwrap_or_default();
    missing_images(&images, spec).map_err(|what| {
        Error::Usage(format!(
            "--image {}: {what}, which the spec needs ({})",
            r.image.display(),
            p.strip_prefix(l.lower()).unwrap_or(&p).display()
        ))
    })
}

/// What a spec needs that an image's list of images lacks (pure).
fn missing_images(
    images: &[&str],
    spec: &crate::spec::ClusterSpec,
) -> std::result::Result<(), String> {
    let version = format!("v{}", spec.kubernetes_version);
    let apiserver = format!("registry.k8s.io/kube-apiserver:{version}");
    if !images.contains(&apiserver.as_str()) {
        let has: Vec<&str> = images
            .iter()
            .filter_map(|i| i.strip_prefix("registry.k8s.io/kube-apiserver:"))
            .collect();
        return Err(format!(
            "holds no {apiserver} (it has kube-apiserver {})",
            if has.is_empty() {
                "none".to_string()
            } else {
                has.join(", ")
            }
        ));
    }
    if let crate::spec::Endpoint::Vip(v) = &spec.control_plane.endpoint {
        let mut need = vec![v.keepalived_image.as_str()];
        if v.haproxy {
            need.push(v.haproxy_image.as_str());
        }
        if let Some(n) = need.iter().find(|n| !images.contains(n)) {
            return Err(format!("holds no {n}"));
        }
    }
    Ok(())
}

/// Starts one of the lab's services (`name`: its pid file and log in the state) inside the
/// lab's namespace, in a process group of its own; ready when its log says `ready`.
async fn start_service(
    l: &Layout,
    name: &str,
    program: &Path,
    args: &[String],
    ready: &str,
) -> Result<()> {
    let log_path = l.state.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).map_err(Error::io(&log_path))?;
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &l.lab_netns()])
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(Error::io(&log_path))?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let mut child = c
        .spawn()
        .map_err(|e| Error::Runtime(format!("lab: {name}: {e}")))?;
    host::write(
        &l.state.join(format!("{name}.pid")),
        child.id().to_string().as_bytes(),
        false,
    )?;
    // moto takes a few seconds to import its services on this machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains(ready) {
            return Ok(());
        }
        if let Ok(Some(s)) = child.try_wait() {
            return Err(Error::Runtime(format!(
                "lab: {name} exited ({s}): {}",
                text.trim()
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "lab: {name} was not ready within 60 s (its log: {})",
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// kubectl from the image, run in the lab's namespace against the lab's kubeconfig.
pub fn kubectl(l: &Layout, args: &[&str]) -> Result<String> {
    let mut all: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        l.lab_netns(),
        kubectl_program(l)
            .ok_or_else(|| {
                Error::Runtime("lab: no kubectl in the image or in any node yet".into())
            })?
            .to_string_lossy()
            .into_owned(),
        "--kubeconfig".into(),
        l.kubeconfig().to_string_lossy().into_owned(),
        "--request-timeout=5s".into(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    host::run("ip", &all.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The image's kubectl, or (a plain base, which has none until its nodes install it) the
/// first installed node's.
fn kubectl_program(l: &Layout) -> Option<PathBuf> {
    let image = l.lower().join("usr/bin/kubectl");
    if image.is_file() {
        return Some(image);
    }
    let mut nodes: Vec<PathBuf> = std::fs::read_dir(l.state.join("nodes"))
        .ok()?
        .flatten()
        .map(|e| e.path().join("root/usr/bin/kubectl"))
        .collect();
    nodes.sort();
    nodes.into_iter().find(|p| p.is_file())
}

/// The nodes Kubernetes reports Ready, by name.
fn ready_nodes(l: &Layout) -> Result<Vec<String>> {
    Ok(node_views(l)?
        .into_iter()
        .filter(|v| v.ready)
        .map(|v| v.name)
        .collect())
}

/// What Kubernetes says of one node: Ready or not, and if not, why (its Ready condition).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeView {
    name: String,
    ready: bool,
    why: String,
}

fn node_views(l: &Layout) -> Result<Vec<NodeView>> {
    let out = kubectl(l, &["get", "nodes", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| Error::Runtime(format!("kubectl get nodes: {e}")))?;
    Ok(node_views_of(&v))
}

/// The nodes of a `kubectl get nodes -o json` answer, each with its Ready condition.
fn node_views_of(v: &serde_json::Value) -> Vec<NodeView> {
    let none = vec![];
    let items = v["items"].as_array().unwrap_or(&none);
    items
        .iter()
        .filter_map(|n| {
            let name = n["metadata"]["name"].as_str()?.to_string();
            let cond = n["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
            let (ready, why) = match cond {
                Some(c) => (
                    c["status"] == "True",
                    format!(
                        "{}: {}",
                        c["reason"].as_str().unwrap_or("no reason"),
                        c["message"].as_str().unwrap_or("no message")
                    ),
                ),
                None => (false, "no Ready condition yet".to_string()),
            };
            Some(NodeView { name, ready, why })
        })
        .collect()
}

/// Why `nodes` are not all Ready, from the last thing the lab saw: one clause per node.
fn not_ready_report(names: &[&str], last: &std::result::Result<Vec<NodeView>, String>) -> String {
    match last {
        Err(e) => format!("the API server never answered the lab: {e}"),
        Ok(views) => names
            .iter()
            .filter_map(|n| match views.iter().find(|v| v.name == *n) {
                Some(v) if v.ready => None,
                Some(v) => Some(format!("{n} not Ready ({})", v.why)),
                None => Some(format!("{n} not registered")),
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Keeps the lab's admin kubeconfig: a copy of the first master's, once that is whole.
/// kubeadm writes the file in place (truncate, then write), so a read can catch it empty or
/// cut short, and a copy taken then would never work: a copy is made only of a whole file,
/// and made again while the lab's is not whole.
fn fetch_kubeconfig(l: &Layout, nodes: &[plan::LabNode]) -> bool {
    let whole = |b: &[u8]| whole_kubeconfig(&String::from_utf8_lossy(b));
    if std::fs::read(l.kubeconfig()).is_ok_and(|b| whole(&b)) {
        return true;
    }
    for m in nodes
        .iter()
        .filter(|n| n.role == crate::contract::node_config::Role::Master)
    {
        let src = l.root(&m.key).join("etc/kubernetes/admin.conf");
        if let Ok(b) = std::fs::read(&src) {
            if whole(&b) {
                return host::write_atomic(&l.kubeconfig(), &b, true).is_ok();
            }
        }
    }
    false
}

/// Whether a kubeconfig is whole: it parses, names a server, and its first user's key (the
/// last thing kubeadm writes) decodes to a complete PEM block, final newline included.
fn whole_kubeconfig(text: &str) -> bool {
    use base64::Engine;
    let Ok(v) = crate::yaml::parse(text).map(|d| d.value) else {
        return false;
    };
    let server = v["clusters"][0]["cluster"]["server"].as_str();
    let key = v["users"][0]["user"]["client-key-data"]
        .as_str()
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
        .map(|k| String::from_utf8_lossy(&k).into_owned());
    server.is_some_and(|s| !s.is_empty())
        && key.is_some_and(|k| k.contains("-----END ") && k.ends_with("-----\n"))
}

/// Waits until every node of `nodes` is Ready, saying when each one's init or join is done;
/// fails as soon as a node stops, its cloud-init final stage fails, or it gives up.
async fn wait_ready(
    l: &Layout,
    nodes: &[plan::LabNode],
    t0: Instant,
    bound: Duration,
) -> Result<()> {
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut node_up = std::collections::BTreeSet::new();
    let mut last: std::result::Result<Vec<NodeView>, String> =
        Err("no admin kubeconfig on any master yet".into());
    loop {
        for n in nodes {
            if node_up.contains(&n.key) {
                continue;
            }
            // systemd colours its status lines on the console: matched without the colours.
            let log = without_colours(
                &std::fs::read_to_string(l.node_dir(&n.key).join("console.log"))
                    .unwrap_or_default(),
            );
            if log.contains("cluster initialized") || log.contains(": joined") {
                node_up.insert(n.key.clone());
                let what = if log.contains("cluster initialized") {
                    "kubeadm init"
                } else {
                    "kubeadm join"
                };
                say(&format!(
                    "{}: {what} done at {:.1} s",
                    n.name,
                    t0.elapsed().as_secs_f64()
                ));
            }
            // cloud-init's final stage failed: `haimg node bootstrap` said why, just before.
            if log.contains("Failed to start cloud-fina") {
                let why = log
                    .lines()
                    .rfind(|l| l.contains("error: "))
                    .map(|l| l.split("error: ").nth(1).unwrap_or(l).trim().to_string())
                    .unwrap_or_else(|| "see its console".into());
                return Err(Error::Runtime(format!(
                    "lab: node {}: cloud-init's final stage failed: {why}",
                    n.name
                )));
            }
        }
        let events = read_events(l);
        for n in nodes {
            let gave_up = events.iter().any(|e| {
                matches!(e, super::asg::Event::SetInstanceHealth { instance, status } if *instance == n.instance_id && status == "Unhealthy")
            });
            if gave_up {
                return Err(Error::Runtime(format!(
                    "lab: node {} gave up and marked itself Unhealthy; its console: {}",
                    n.name,
                    l.node_dir(&n.key).join("console.log").display()
                )));
            }
        }
        if fetch_kubeconfig(l, nodes) {
            last = node_views(l).map_err(|e| e.to_string());
            if let Ok(views) = &last {
                let ready: Vec<&str> = views
                    .iter()
                    .filter(|v| v.ready)
                    .map(|v| v.name.as_str())
                    .collect();
                for r in &ready {
                    if nodes.iter().any(|n| n.name == *r)
                        && seen.insert(r.to_string(), ()).is_none()
                    {
                        say(&format!("{r} Ready at {:.1} s", t0.elapsed().as_secs_f64()));
                    }
                }
                if nodes.iter().all(|n| ready.contains(&n.name.as_str())) {
                    return Ok(());
                }
            }
        }
        for n in nodes {
            let pid = std::fs::read_to_string(l.node_dir(&n.key).join("pid")).unwrap_or_default();
            if !Path::new(&format!("/proc/{}", pid.trim())).exists() {
                return Err(Error::Runtime(format!(
                    "lab: node {} stopped; its console: {}",
                    n.name,
                    l.node_dir(&n.key).join("console.log").display()
                )));
            }
        }
        if t0.elapsed() > bound {
            return Err(Error::Timeout(format!(
                "not every node was Ready within {} s: {}",
                bound.as_secs(),
                not_ready_report(
                    &nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
                    &last
                )
            )));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `text` without its terminal colour sequences (`ESC [ … m`), as a reader sees it.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("\x1b[") {
        out.push_str(&rest[..i]);
        let seq = &rest[i + 2..];
        match seq.find(|c: char| !(c.is_ascii_digit() || c == ';')) {
            Some(j) if seq[j..].starts_with('m') => rest = &seq[j + 1..],
            _ => {
                out.push_str("\x1b[");
                rest = seq;
            }
        }
    }
    out.push_str(rest);
    out
}

/// On a failed `up`, the consoles are kept beside the state (for the error's reader).
fn keep_logs(l: &Layout, keys: &[String]) {
    let dir = l.state.with_extension("failed-logs");
    let _ = std::fs::create_dir_all(&dir);
    for k in keys {
        let _ = std::fs::copy(
            l.node_dir(k).join("console.log"),
            dir.join(format!("{k}.console.log")),
        );
    }
    for log in ["serve.log", "moto.log"] {
        let _ = std::fs::copy(l.state.join(log), dir.join(log));
    }
    // The cluster as the API server last saw it, and each node's journal where the console
    // says too little (kubelet, containerd, and every warning).
    if l.kubeconfig().is_file() {
        let mut text = String::new();
        for args in [
            &["get", "nodes", "-o", "wide"][..],
            &["get", "pods", "-A", "-o", "wide"],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"],
        ] {
            text.push_str(&format!("$ kubectl {}\n", args.join(" ")));
            match kubectl(l, args) {
                Ok(out) => text.push_str(&out),
                Err(e) => text.push_str(&format!("{e}\n")),
            }
        }
        let _ = std::fs::write(dir.join("cluster.txt"), text);
    }
    for k in keys {
        let _ = std::fs::write(
            dir.join(format!("{k}.processes.txt")),
            host::processes(l, k),
        );
        let _ = std::fs::write(
            dir.join(format!("{k}.systemd.txt")),
            host::systemd_state(l, k),
        );
    }
    for k in keys {
        let journal = l.root(k).join("var/log/journal");
        if !journal.is_dir() {
            continue;
        }
        let mut text = String::new();
        for filter in [
            &["-p", "warning"][..],
            &["-u", "kubelet"],
            &["-u", "containerd"],
            &["-u", "cloud-config", "-u", "cloud-final"],
        ] {
            let mut args = vec!["--directory", journal.to_str().unwrap_or_default()];
            args.extend(["--no-pager", "-o", "short-monotonic", "-n", "40"]);
            args.extend(filter);
            text.push_str(&format!("$ journalctl {}\n", filter.join(" ")));
            match host::run("journalctl", &args) {
                Ok(out) => text.push_str(&out),
                Err(e) => text.push_str(&format!("{e}\n")),
            }
        }
        let _ = std::fs::write(dir.join(format!("{k}.journal.txt")), text);
    }
    say(&format!("consoles kept in {}", dir.display()));
}

fn read_record(l: &Layout) -> Option<Record> {
    std::fs::read_to_string(l.record())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeStatus {
    name: String,
    key: String,
    address: String,
    running: bool,
    cloud_init_done: bool,
    ready: bool,
}

async fn status(a: CommonArgs) -> Result<()> {
    require_root()?;
    let (spec, l, source) = load_with_source(&a)?;
    let plan = match read_record(&l) {
        Some(r) => r.plan,
        None => lab_plan(&spec, &source)?,
    };
    let ready = if fetch_kubeconfig(&l, &plan.nodes) {
        ready_nodes(&l).unwrap_or_default()
    } else {
        vec![]
    };
    let nodes: Vec<NodeStatus> = plan
        .nodes
        .iter()
        .map(|n| {
            let pid = std::fs::read_to_string(l.node_dir(&n.key).join("pid")).unwrap_or_default();
            NodeStatus {
                name: n.name.clone(),
                key: n.key.clone(),
                address: n.address.to_string(),
                running: !pid.trim().is_empty()
                    && Path::new(&format!("/proc/{}", pid.trim())).exists(),
                cloud_init_done: l
                    .root(&n.key)
                    .join("var/lib/cloud/data/result.json")
                    .is_file(),
                ready: ready.contains(&n.name),
            }
        })
        .collect();
    let healthy = !nodes.is_empty() && nodes.iter().all(|n| n.running && n.ready);
    if a.output == crate::cli::Output::Json {
        let v = serde_json::json!({"cluster": l.cluster, "up": l.record().exists(), "healthy": healthy, "nodes": nodes});
        println!("{}", serde_json::to_string_pretty(&v).expect("plain data"));
    } else {
        println!(
            "{:<44} {:<4} {:<12} {:<8} {:<10} READY",
            "NODE", "KEY", "ADDRESS", "RUNNING", "CLOUD-INIT"
        );
        for n in &nodes {
            println!(
                "{:<44} {:<4} {:<12} {:<8} {:<10} {}",
                n.name,
                n.key,
                n.address,
                n.running,
                if n.cloud_init_done { "done" } else { "-" },
                n.ready
            );
        }
    }
    if healthy {
        Ok(())
    } else {
        Err(Error::Runtime(format!(
            "lab {}: not every node is running and Ready",
            l.cluster
        )))
    }
}

fn down(a: CommonArgs) -> Result<()> {
    require_root()?;
    let (spec, l, source) = load_with_source(&a)?;
    let plan = match read_record(&l) {
        Some(r) => r.plan,
        None => lab_plan(&spec, &source)?,
    };
    // Retired workers too: a scale-in interrupted half-way may have left one behind.
    let keys: Vec<String> = plan
        .nodes
        .iter()
        .chain(&plan.retired)
        .map(|n| n.key.clone())
        .collect();
    let left = host::teardown(&l, &keys);
    if left.is_empty() {
        say(&format!("lab {} is down; nothing left", l.cluster));
        Ok(())
    } else {
        Err(Error::Runtime(format!(
            "lab down: could not remove {}",
            left.join("; ")
        )))
    }
}

/// A scaled-in worker's console and journal, kept under `retired/<key>/` until `down`.
fn keep_retired_logs(l: &Layout, key: &str) {
    let to = l.state.join("retired").join(key);
    let _ = std::fs::create_dir_all(&to);
    let _ = std::fs::copy(l.node_dir(key).join("console.log"), to.join("console.log"));
    let journal = l.root(key).join("var/log/journal");
    if journal.is_dir() {
        let _ = host::run(
            "cp",
            &[
                "-a",
                &journal.to_string_lossy(),
                &to.join("journal").to_string_lossy(),
            ],
        );
    }
}

fn read_events(l: &Layout) -> Vec<super::asg::Event> {
    super::asg::events(&std::fs::read_to_string(l.events()).unwrap_or_default())
}

/// The lab's record, for commands on a lab that is up.
fn up_record(l: &Layout) -> Result<Record> {
    read_record(l).ok_or_else(|| {
        Error::Usage(format!(
            "lab {}: not up (no {})",
            l.cluster,
            l.record().display()
        ))
    })
}

fn find_node<'a>(l: &Layout, r: &'a Record, node: &str) -> Result<&'a plan::LabNode> {
    r.plan
        .nodes
        .iter()
        .find(|n| n.key == node || n.name == node)
        .ok_or_else(|| Error::Usage(format!("lab {}: no node {node}", l.cluster)))
}

fn is_running(l: &Layout, key: &str) -> bool {
    let pid = std::fs::read_to_string(l.node_dir(key).join("pid")).unwrap_or_default();
    !pid.trim().is_empty() && Path::new(&format!("/proc/{}", pid.trim())).exists()
}

/// `stop` (`kill`: how) when `kill` is given, `start` when it is not.
fn stop_or_start(a: NodeArgs, kill: Option<bool>) -> Result<()> {
    require_root()?;
    let (_, l) = load(&a.common)?;
    let r = up_record(&l)?;
    let n = find_node(&l, &r, &a.node)?;
    let running = is_running(&l, &n.key);
    match kill {
        None => {
            if running {
                return Err(Error::Usage(format!("lab: node {} is running", n.name)));
            }
            if !host::netns_exists(&l.node_netns(&n.key)) {
                // Killed: its network went with it.
                host::create_node_network(
                    &l,
                    &n.key,
                    &n.address.to_string(),
                    r.plan.network.prefix_len(),
                    &r.plan.host_address.to_string(),
                )?;
            }
            let procs = host::create_cgroups(&l, &n.key)?;
            let binds = r
                .plain
                .as_ref()
                .map(super::plain::binds)
                .unwrap_or_default();
            let pid = host::start_node(&l, &n.key, &n.key, &procs, &binds)?;
            host::write(
                &l.node_dir(&n.key).join("pid"),
                pid.to_string().as_bytes(),
                false,
            )?;
            say(&format!("{} booting again", n.name));
        }
        Some(true) => {
            host::kill_node(&l, &n.key)?;
            say(&format!("{} killed (no shutdown)", n.name));
        }
        Some(false) => {
            host::stop_node(&l, &n.key);
            say(&format!("{} stopped", n.name));
        }
    }
    Ok(())
}

async fn scale(a: ScaleArgs) -> Result<()> {
    require_root()?;
    let (spec, l) = load(&a.common)?;
    let mut r = up_record(&l)?;
    let in_pool: Vec<plan::LabNode> = r
        .plan
        .nodes
        .iter()
        .filter(|n| n.pool.as_deref() == Some(a.pool.as_str()))
        .cloned()
        .collect();
    let pool = spec
        .worker_pools
        .iter()
        .find(|p| p.name.as_str() == a.pool)
        .ok_or_else(|| Error::Usage(format!("lab: no worker pool {} in the spec", a.pool)))?;
    if a.desired < pool.min_size || a.desired > pool.max_size {
        return Err(Error::Usage(format!(
            "lab: pool {} takes {}..={} workers (minSize..maxSize), not {}",
            a.pool, pool.min_size, pool.max_size, a.desired
        )));
    }
    let have = in_pool.len() as u32;
    let t0 = Instant::now();
    if a.desired > have {
        let new = plan::add_workers(&r.plan, &spec, &a.pool, a.desired - have)?;
        let t = Templates::embedded();
        let user_data: Vec<Vec<u8>> = new
            .iter()
            .map(|n| plan::user_data(&spec, n, &t))
            .collect::<Result<_>>()?;
        r.plan.nodes.extend(new.iter().cloned());
        // Recorded first: `down` removes them whatever happens next.
        write_record(&l, &r)?;
        let mut ids = read_identities(&l);
        for n in &new {
            ids.insert(n.address.to_string(), Identity::of(n));
        }
        write_identities_map(&l, &ids)?;
        let blocking = Blocking::default();
        let work = async {
            boot(&l, &r.plan, &new, &user_data, &blocking).await?;
            wait_ready(&l, &new, t0, Duration::from_secs(a.timeout)).await
        };
        let outcome = tokio::select! {
            r = work => r,
            s = crate::signals::stop() => Err(Error::Runtime(format!("lab scale: stopped by {s}"))),
        };
        blocking.wait_idle(Duration::from_secs(300)).await;
        outcome?;
        say(&format!(
            "pool {}: {} workers, the new ones Ready in {:.1} s",
            a.pool,
            a.desired,
            t0.elapsed().as_secs_f64()
        ));
    } else {
        // Auto Scaling's default termination policy ends with the newest instances last
        // launched; here: the highest keys.
        let mut victims = in_pool;
        victims.sort_by_key(|n| n.key.trim_start_matches('w').parse::<u32>().unwrap_or(0));
        for n in victims.iter().rev().take((have - a.desired) as usize) {
            scale_in(&l, n, Duration::from_secs(a.timeout)).await?;
        }
        say(&format!("pool {}: {} workers", a.pool, a.desired));
    }
    Ok(())
}

async fn terminate(a: TerminateArgs) -> Result<()> {
    require_root()?;
    let (spec, l) = load(&a.node.common)?;
    let r = up_record(&l)?;
    let n = find_node(&l, &r, &a.node.node)?.clone();
    let Some(pool) = n.pool.as_deref() else {
        return Err(Error::Usage(format!(
            "lab: {} is a fixed master, in no Auto Scaling group",
            n.name
        )));
    };
    let have = r
        .plan
        .nodes
        .iter()
        .filter(|m| m.pool.as_deref() == Some(pool))
        .count() as u32;
    let min = spec
        .worker_pools
        .iter()
        .find(|p| p.name.as_str() == pool)
        .map_or(0, |p| p.min_size);
    if have <= min {
        return Err(Error::Usage(format!(
            "lab: pool {pool} is at its minSize ({min}): terminating {} would go below it",
            n.name
        )));
    }
    scale_in(&l, &n, Duration::from_secs(a.timeout)).await
}

/// One worker leaves as on EC2: its target lifecycle state turns `Terminated` (the group
/// holds it in `Terminating:Wait` for the `haimg-drain` hook), the node drains itself and
/// completes the lifecycle action, and then (or at the bound, as the hook's timeout would)
/// the lab powers it off and removes it.
async fn scale_in(l: &Layout, n: &plan::LabNode, bound: Duration) -> Result<()> {
    let t0 = Instant::now();
    let mut ids = read_identities(l);
    let id = ids
        .get_mut(&n.address.to_string())
        .ok_or_else(|| Error::Runtime(format!("lab: {} has no metadata", n.name)))?;
    id.lifecycle_state = super::imds::TERMINATED.into();
    write_identities_map(l, &ids)?;
    say(&format!(
        "{}: terminating (lifecycle hook haimg-drain)",
        n.name
    ));
    let result = loop {
        let done = read_events(l).into_iter().find_map(|e| match e {
            super::asg::Event::CompleteLifecycleAction { instance, result }
                if instance == n.instance_id =>
            {
                Some(result)
            }
            _ => None,
        });
        if let Some(result) = done {
            break Some(result);
        }
        if t0.elapsed() > bound {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    match &result {
        Some(r) => say(&format!(
            "{}: lifecycle action completed ({r}) after {:.1} s",
            n.name,
            t0.elapsed().as_secs_f64()
        )),
        None => say(&format!(
            "{}: no lifecycle action completed within {} s: terminating anyway, as the hook's timeout does",
            n.name,
            bound.as_secs()
        )),
    }
    host::stop_node(l, &n.key);
    keep_retired_logs(l, &n.key);
    let left = host::remove_node(l, &n.key);
    let mut r = up_record(l)?;
    r.plan.nodes.retain(|m| m.key != n.key);
    r.plan.retired.push(n.clone());
    write_record(l, &r)?;
    let mut ids = read_identities(l);
    ids.remove(&n.address.to_string());
    write_identities_map(l, &ids)?;
    if !left.is_empty() {
        return Err(Error::Runtime(format!(
            "lab: {} terminated; could not remove {}",
            n.name,
            left.join("; ")
        )));
    }
    say(&format!("{} terminated", n.name));
    match result {
        Some(_) => Ok(()),
        None => Err(Error::Timeout(format!(
            "lab: {} did not complete its lifecycle action within {} s",
            n.name,
            bound.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_read_without_their_colours() {
        let line = "[\x1b[0;1;31mFAILED\x1b[0m] Failed to start \x1b[0;1;39mcloud-fina… Execute cloud user/final scripts.";
        assert_eq!(
            without_colours(line),
            "[FAILED] Failed to start cloud-fina… Execute cloud user/final scripts."
        );
        // Not a colour: kept as it is.
        assert_eq!(without_colours("a\x1b[2Jb\x1b["), "a\x1b[2Jb\x1b[");
    }

    #[test]
    fn only_a_whole_kubeconfig_is_copied() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let key =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n";
        let conf = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://10.0.0.10:8443\n  name: lab\n\
             kind: Config\nusers:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64("ca"),
            b64("cert"),
            b64(key)
        );
        assert!(whole_kubeconfig(&conf));
        // What a read racing kubeadm's write sees: nothing, or the file cut short anywhere.
        assert!(!whole_kubeconfig(""));
        for cut in 1..conf.len() - 1 {
            assert!(
                !whole_kubeconfig(&conf[..cut]),
                "cut at {cut}: {}",
                &conf[..cut]
            );
        }
    }

    #[test]
    fn a_timeout_says_which_nodes_are_not_ready_and_why() {
        let answer = serde_json::json!({"items": [
            {"metadata": {"name": "m1"}, "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}]}},
            {"metadata": {"name": "m2"}, "status": {"conditions": [
                {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                 "message": "container runtime network not ready: cni plugin not initialized"}]}},
            {"metadata": {"name": "w1"}, "status": {}},
        ]});
        let views = node_views_of(&answer);
        assert_eq!(
            views
                .iter()
                .map(|v| (v.name.as_str(), v.ready))
                .collect::<Vec<_>>(),
            [("m1", true), ("m2", false), ("w1", false)]
        );
        assert_eq!(
            not_ready_report(&["m1", "m2", "m3", "w1"], &Ok(views)),
            "m2 not Ready (KubeletNotReady: container runtime network not ready: cni plugin not initialized); \
             m3 not registered; w1 not Ready (no Ready condition yet)"
        );
        assert_eq!(
            not_ready_report(&["m1"], &Err("connection refused".into())),
            "the API server never answered the lab: connection refused"
        );
    }

    #[test]
    fn an_image_must_carry_the_specs_kubernetes_and_vip_images() {
        let spec = crate::spec::load_str(super::super::EXAMPLE, "lab.yaml")
            .unwrap()
            .spec;
        let mut images = vec![
            "registry.k8s.io/kube-apiserver:v1.30.0",
            "localhost/haimg/keepalived:2.2.7-1-b2",
            "localhost/haimg/haproxy:2.6.12-1-deb12u4",
        ];
        assert_eq!(missing_images(&images, &spec), Ok(()));
        images[0] = "registry.k8s.io/kube-apiserver:v1.31.2";
        let e = missing_images(&images, &spec).unwrap_err();
        assert!(
            e.contains("no registry.k8s.io/kube-apiserver:v1.30.0 (it has kube-apiserver v1.31.2)"),
            "{e}"
        );
        images[0] = "registry.k8s.io/kube-apiserver:v1.30.0";
        images.pop();
        let e = missing_images(&images, &spec).unwrap_err();
        assert!(
            e.contains("localhost/haimg/haproxy:2.6.12-1-deb12u4"),
            "{e}"
        );
    }
}
