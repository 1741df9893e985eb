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
    Stop(NodeArgs),
    /// Boot a stopped node again from its root.
    Start(NodeArgs),
    /// The metadata stand-in (started by `up` inside the lab's namespace).
    #[command(hide = true)]
    Imds {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        identities: PathBuf,
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
    /// `json` for a machine-readable report.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
}

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The node: its name or its key (m1, w1, …).
    pub node: String,
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
}

/// What `up` leaves for `status` and `down`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    plan: LabPlan,
    image: PathBuf,
    started_at: u64,
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
        LabCommand::Stop(a) => stop_or_start(a, false),
        LabCommand::Start(a) => stop_or_start(a, true),
        LabCommand::Imds { listen, identities } => {
            rt.block_on(super::imds::serve(listen, identities))
        }
    }
}

/// The spec as `render` loads it (static credentials beside it, created on first use).
fn load(c: &CommonArgs) -> Result<(crate::spec::ClusterSpec, Layout)> {
    let (mut loaded, dir) = match &c.config {
        Some(p) => {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (crate::spec::load(Some(p))?, dir)
        }
        None if Path::new("cluster.yaml").exists() => {
            (crate::spec::load(None)?, PathBuf::from("."))
        }
        None => (
            crate::spec::load_str(super::EXAMPLE, "<embedded examples/lab.yaml>")?,
            PathBuf::new(),
        ),
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
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
    Ok((loaded.spec, Layout { cluster, state }))
}

fn say(msg: &str) {
    eprintln!("haimg lab: {msg}");
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
    let (spec, l) = load(&a.common)?;
    let plan = plan::plan(&spec)?;
    let t = Templates::embedded();
    // Every user-data before anything exists: a spec that cannot render stops here.
    let user_data: Vec<Vec<u8>> = plan
        .nodes
        .iter()
        .map(|n| plan::user_data(&spec, n, &t))
        .collect::<Result<_>>()?;
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
    let work = async {
        start(&l, &plan, &disk, &a.image, &user_data).await?;
        say(&format!(
            "{} nodes started in {:.1} s; waiting for every node Ready",
            plan.nodes.len(),
            t0.elapsed().as_secs_f64()
        ));
        wait_ready(&l, &plan, t0, Duration::from_secs(a.timeout)).await
    };
    let outcome = tokio::select! {
        r = work => r,
        s = crate::signals::stop() => Err(Error::Runtime(format!("lab up: stopped by {s}"))),
    };
    if let Err(e) = outcome {
        say(&format!("{e}; removing the lab"));
        keep_logs(&l, &keys);
        for left in host::teardown(&l, &keys) {
            eprintln!("warning: lab down: could not remove {left}");
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

async fn start(
    l: &Layout,
    plan: &LabPlan,
    disk: &Path,
    image: &Path,
    user_data: &[Vec<u8>],
) -> Result<()> {
    std::fs::create_dir_all(&l.state).map_err(Error::io(&l.state))?;
    let record = Record {
        plan: plan.clone(),
        image: image.to_path_buf(),
        started_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    host::write(
        &l.record(),
        serde_json::to_string_pretty(&record)
            .expect("plain data")
            .as_bytes(),
        false,
    )?;
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
    check_image(l, &record)?;

    let prefix = plan.network.prefix_len();
    host::create_lab_network(l, &plan.host_address.to_string(), prefix)?;
    let identities: BTreeMap<String, Identity> = plan
        .nodes
        .iter()
        .map(|n| (n.address.to_string(), Identity::of(n)))
        .collect();
    host::write(
        &l.identities(),
        serde_json::to_string_pretty(&identities)
            .expect("plain data")
            .as_bytes(),
        false,
    )?;
    start_imds(l).await?;
    host::write_sysctl(
        "net/netfilter/nf_conntrack_max",
        &host::kube_proxy_conntrack_max().to_string(),
    )?;

    let containerd = std::fs::read_to_string(l.lower().join("etc/containerd/config.toml"))
        .map_err(Error::io(l.lower().join("etc/containerd/config.toml")))?;
    let drop_ins = super::dropins::drop_ins(&containerd)?;
    // Roots in parallel: each copies the image's containerd store (~750 MB).
    let mut tasks = tokio::task::JoinSet::new();
    for n in &plan.nodes {
        let (l, key) = (l.clone(), n.key.clone());
        tasks.spawn_blocking(move || host::prepare_root(&l, &key));
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Error::Runtime(format!("lab: preparing a root: {e}")))??;
    }
    for (n, ud) in plan.nodes.iter().zip(user_data) {
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
        host::write(&seed.join("user-data"), ud, true)?;
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
        let pid = host::start_node(l, &n.key, &n.key, &procs)?;
        host::write(
            &l.node_dir(&n.key).join("pid"),
            pid.to_string().as_bytes(),
            false,
        )?;
        say(&format!("{} ({}, {}) booting", n.name, n.key, n.address));
    }
    Ok(())
}

/// The image must be a haimg image with a control plane (its manifest lists kube-apiserver);
/// whether it carries the spec's Kubernetes version and VIP images is not checked here yet.
fn check_image(l: &Layout, r: &Record) -> Result<()> {
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
    if !images
        .iter()
        .any(|i| i.starts_with("registry.k8s.io/kube-apiserver:"))
    {
        return Err(Error::Usage(format!(
            "--image {}: holds no kube-apiserver image",
            r.image.display()
        )));
    }
    Ok(())
}

async fn start_imds(l: &Layout) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::Runtime(format!("lab: own path: {e}")))?;
    let log_path = l.state.join("imds.log");
    let log = std::fs::File::create(&log_path).map_err(Error::io(&log_path))?;
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &l.lab_netns()])
        .arg(&exe)
        .args(["lab", "imds", "--listen"])
        .arg(format!("{}:80", plan::IMDS_ADDRESS))
        .arg("--identities")
        .arg(l.identities())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(Error::io(&log_path))?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let mut child = c
        .spawn()
        .map_err(|e| Error::Runtime(format!("lab: metadata stand-in: {e}")))?;
    host::write(
        &l.state.join("imds.pid"),
        child.id().to_string().as_bytes(),
        false,
    )?;
    // Ready when it says it listens; an early exit is an error.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("listening on") {
            return Ok(());
        }
        if let Ok(Some(s)) = child.try_wait() {
            return Err(Error::Runtime(format!(
                "lab: the metadata stand-in exited ({s}): {}",
                text.trim()
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(
                "the metadata stand-in did not listen within 10 s".into(),
            ));
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
        l.lower()
            .join("usr/bin/kubectl")
            .to_string_lossy()
            .into_owned(),
        "--kubeconfig".into(),
        l.kubeconfig().to_string_lossy().into_owned(),
        "--request-timeout=5s".into(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    host::run("ip", &all.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The nodes Kubernetes reports Ready, by name.
fn ready_nodes(l: &Layout) -> Result<Vec<String>> {
    let out = kubectl(l, &["get", "nodes", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| Error::Runtime(format!("kubectl get nodes: {e}")))?;
    Ok(v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|n| {
            n["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

/// Copies an admin kubeconfig out of the first master that has one.
fn fetch_kubeconfig(l: &Layout, plan: &LabPlan) -> bool {
    if l.kubeconfig().is_file() {
        return true;
    }
    for m in plan.masters() {
        let src = l.root(&m.key).join("etc/kubernetes/admin.conf");
        if let Ok(b) = std::fs::read(&src) {
            return host::write(&l.kubeconfig(), &b, true).is_ok();
        }
    }
    false
}

async fn wait_ready(l: &Layout, plan: &LabPlan, t0: Instant, bound: Duration) -> Result<()> {
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut node_up = std::collections::BTreeSet::new();
    loop {
        for n in &plan.nodes {
            if node_up.contains(&n.key) {
                continue;
            }
            let log =
                std::fs::read_to_string(l.node_dir(&n.key).join("console.log")).unwrap_or_default();
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
        if fetch_kubeconfig(l, plan) {
            if let Ok(ready) = ready_nodes(l) {
                for r in &ready {
                    if seen.insert(r.clone(), ()).is_none() {
                        say(&format!("{r} Ready at {:.1} s", t0.elapsed().as_secs_f64()));
                    }
                }
                if plan.nodes.iter().all(|n| ready.contains(&n.name)) {
                    return Ok(());
                }
            }
        }
        for n in &plan.nodes {
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
                "not every node was Ready within {} s",
                bound.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
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
    let _ = std::fs::copy(l.state.join("imds.log"), dir.join("imds.log"));
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
    let (spec, l) = load(&a)?;
    let plan = read_record(&l)
        .map(|r| r.plan)
        .unwrap_or(plan::plan(&spec)?);
    let ready = if fetch_kubeconfig(&l, &plan) {
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
    if a.output == "json" {
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
    let (spec, l) = load(&a)?;
    let plan = match read_record(&l) {
        Some(r) => r.plan,
        None => plan::plan(&spec)?,
    };
    let keys: Vec<String> = plan.nodes.iter().map(|n| n.key.clone()).collect();
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

fn stop_or_start(a: NodeArgs, start: bool) -> Result<()> {
    require_root()?;
    let (_, l) = load(&a.common)?;
    let r = read_record(&l).ok_or_else(|| {
        Error::Usage(format!(
            "lab {}: not up (no {})",
            l.cluster,
            l.record().display()
        ))
    })?;
    let n = r
        .plan
        .nodes
        .iter()
        .find(|n| n.key == a.node || n.name == a.node)
        .ok_or_else(|| Error::Usage(format!("lab {}: no node {}", l.cluster, a.node)))?;
    let pid = std::fs::read_to_string(l.node_dir(&n.key).join("pid")).unwrap_or_default();
    let running = !pid.trim().is_empty() && Path::new(&format!("/proc/{}", pid.trim())).exists();
    if start {
        if running {
            return Err(Error::Usage(format!("lab: node {} is running", n.name)));
        }
        let procs = host::create_cgroups(&l, &n.key)?;
        let pid = host::start_node(&l, &n.key, &n.key, &procs)?;
        host::write(
            &l.node_dir(&n.key).join("pid"),
            pid.to_string().as_bytes(),
            false,
        )?;
        say(&format!("{} booting again", n.name));
    } else {
        host::stop_node(&l, &n.key);
        say(&format!("{} stopped", n.name));
    }
    Ok(())
}
