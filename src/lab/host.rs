//! The lab's edges on this machine: network namespaces and the bridge, the image's root
//! mounted read-only, a copy-on-write root per node, cgroups, node processes, the machine-
//! wide sysctls the kubelet and kube-proxy change. Every step has its undo in [`teardown`],
//! which finds what exists from the machine itself (mounts, namespaces, cgroups), so it also
//! cleans up after a crashed or interrupted `up`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The names a lab uses on the machine, from its cluster name and state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub cluster: String,
    pub state: PathBuf,
}

/// The cgroup v1 controller directories (the unified hierarchy holds no controller here).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What kube-proxy and the kubelet set machine-wide from inside the nodes: recorded by `up`
/// and written back by `down`.
pub const MACHINE_SYSCTLS: &[&str] = &[
    "net/netfilter/nf_conntrack_max",
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

impl Layout {
    pub fn lab_netns(&self) -> String {
        format!("haimg-{}", self.cluster)
    }
    pub fn node_netns(&self, key: &str) -> String {
        format!("haimg-{}-{key}", self.cluster)
    }
    pub fn node_dir(&self, key: &str) -> PathBuf {
        self.state.join("nodes").join(key)
    }
    pub fn root(&self, key: &str) -> PathBuf {
        self.node_dir(key).join("root")
    }
    pub fn lower(&self) -> PathBuf {
        self.state.join("lower")
    }
    pub fn cgroup_name(&self, key: &str) -> String {
        format!("haimg-lab-{}-{key}", self.cluster)
    }
    pub fn record(&self) -> PathBuf {
        self.state.join("lab.json")
    }
    pub fn sysctls(&self) -> PathBuf {
        self.state.join("sysctls.json")
    }
    pub fn identities(&self) -> PathBuf {
        self.state.join("imds.json")
    }
    /// What the nodes told the lab's Auto Scaling (one JSON document per line).
    pub fn events(&self) -> PathBuf {
        self.state.join("autoscaling-events.jsonl")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("admin.conf")
    }
}

/// Runs a tool to completion; its stdout, or an error with the tail of its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Runtime(format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(4).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Runtime(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            tail.join(" / ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The lab's network: a bridge in a namespace of its own with the lab's address and the
/// metadata address, and nothing else: no uplink, no forwarding, no route out.
pub fn create_lab_network(l: &Layout, host: &str, prefix: u8) -> Result<()> {
    let ns = l.lab_netns();
    ip(&["netns", "add", &ns])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{host}/{prefix}"),
        "dev",
        "br0",
    ])?;
    let imds = format!("{}/32", super::plan::IMDS_ADDRESS);
    ip(&["-n", &ns, "addr", "add", &imds, "dev", "br0"])?;
    ip(&["-n", &ns, "link", "set", "br0", "up"])?;
    Ok(())
}

/// A node's namespace, joined to the bridge by a veth pair; `eth0` inside, as on EC2.
pub fn create_node_network(
    l: &Layout,
    key: &str,
    address: &str,
    prefix: u8,
    gateway: &str,
) -> Result<()> {
    let (lab, ns) = (l.lab_netns(), l.node_netns(key));
    let peer = format!("v-{key}");
    ip(&["netns", "add", &ns])?;
    ip(&[
        "link", "add", &peer, "netns", &lab, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    ip(&["-n", &lab, "link", "set", &peer, "master", "br0", "up"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{address}/{prefix}"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    // The gateway is the lab itself, which forwards nothing: a default route exists (the
    // kubelet and kube-proxy look for one) and leads nowhere.
    ip(&["-n", &ns, "route", "add", "default", "via", gateway])?;
    Ok(())
}

/// The image's root partition, mounted read-only at `lower`: the partition named `root`
/// (or the first Linux filesystem) of a raw GPT disk.
pub fn mount_image_root(raw: &Path, lower: &Path) -> Result<()> {
    let table = run("sfdisk", &["-J", &raw.to_string_lossy()])?;
    let v: serde_json::Value = serde_json::from_str(&table)
        .map_err(|e| Error::Runtime(format!("sfdisk -J {}: {e}", raw.display())))?;
    let t = &v["partitiontable"];
    let sector = t["sectorsize"].as_u64().unwrap_or(512);
    let parts = t["partitions"].as_array().cloned().unwrap_or_default();
    let linux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    let root = parts
        .iter()
        .find(|p| p["name"] == "root")
        .or_else(|| {
            parts.iter().find(|p| {
                p["type"]
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case(linux))
            })
        })
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: no root partition (a Linux filesystem on GPT)",
                raw.display()
            ))
        })?;
    let (start, size) = (
        root["start"].as_u64().unwrap_or_default() * sector,
        root["size"].as_u64().unwrap_or_default() * sector,
    );
    std::fs::create_dir_all(lower).map_err(Error::io(lower))?;
    run(
        "mount",
        &[
            "-o",
            &format!("loop,ro,offset={start},sizelimit={size}"),
            &raw.to_string_lossy(),
            &lower.to_string_lossy(),
        ],
    )?;
    Ok(())
}

/// A node's root: an overlay of the image (its changes in the node's own directory), and a
/// real directory for containerd (its overlay snapshotter cannot work on an overlay).
pub fn prepare_root(l: &Layout, key: &str) -> Result<()> {
    let d = l.node_dir(key);
    for s in ["upper", "work", "root", "containerd", "lab"] {
        let p = d.join(s);
        std::fs::create_dir_all(&p).map_err(Error::io(&p))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.lower().display(),
        d.join("upper").display(),
        d.join("work").display()
    );
    run(
        "mount",
        &[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &opts,
            &d.join("root").to_string_lossy(),
        ],
    )?;
    // A plain base has none yet: its install fills the node's own.
    if l.lower().join("var/lib/containerd").is_dir() {
        let from = format!("{}/var/lib/containerd/.", l.lower().display());
        run(
            "cp",
            &["-a", &from, &d.join("containerd").to_string_lossy()],
        )?;
    }
    Ok(())
}

/// Writes `contents` at `path` (parents made), mode 0644 unless `secret`.
pub fn write(path: &Path, contents: &[u8], secret: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(Error::io(p))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(Error::io(path))?;
    std::io::Write::write_all(&mut f, contents).map_err(Error::io(path))
}

/// Replaces `path` whole (a reader sees the old contents or the new, never a part).
pub fn write_atomic(path: &Path, contents: &[u8], secret: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write(&tmp, contents, secret)?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// The node's cgroup in every v1 controller (the cpuset one needs its CPUs and memory
/// nodes before it takes a process); returns the `cgroup.procs` files to join.
pub fn create_cgroups(l: &Layout, key: &str) -> Result<Vec<PathBuf>> {
    let name = l.cgroup_name(key);
    let mut procs = vec![];
    for c in controllers() {
        let dir = c.join(&name);
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        if c.ends_with("cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = std::fs::read(c.join(f)).map_err(Error::io(c.join(f)))?;
                std::fs::write(dir.join(f), v).map_err(Error::io(dir.join(f)))?;
            }
        }
        procs.push(dir.join("cgroup.procs"));
    }
    Ok(procs)
}

/// The mounted cgroup v1 hierarchies (controllers and the named `systemd` one).
fn controllers() -> Vec<PathBuf> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    mountinfo
        .lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|f| f.starts_with("cgroup "))
        })
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(CGROUP_ROOT))
        .map(PathBuf::from)
        .collect()
}

/// Every process in the node's cgroups, and the cgroups themselves once empty.
pub fn remove_cgroups(l: &Layout, key: &str) {
    let name = l.cgroup_name(key);
    for c in controllers() {
        let dir = c.join(&name);
        if !dir.exists() {
            continue;
        }
        for _ in 0..50 {
            let pids = pids_below(&dir);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) with a pid read from the node's own cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        rmdir_tree(&dir);
    }
}

/// What runs in a node, one process a line: pid, state, its systemd unit's cgroup, command
/// line (for a failed `up`'s logs: what a node that never got on was stuck in).
pub fn processes(l: &Layout, key: &str) -> String {
    let name = l.cgroup_name(key);
    let Some(dir) = controllers()
        .into_iter()
        .map(|c| c.join(&name))
        .find(|d| d.exists())
    else {
        return "no cgroup\n".into();
    };
    let mut pids = pids_below(&dir);
    pids.sort();
    pids.dedup();
    let mut out = String::new();
    for p in pids {
        let proc = PathBuf::from(format!("/proc/{p}"));
        let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
        // The state follows the parenthesised command name, which may hold spaces.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?");
        let unit = std::fs::read_to_string(proc.join("cgroup"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("1:name=systemd:")
                    .or_else(|| l.split_once(":name=systemd:").map(|(_, u)| u))
            })
            .map(|u| u.rsplit(&name).next().unwrap_or(u).to_string())
            .unwrap_or_default();
        let cmd: String = std::fs::read(proc.join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let cmd: String = cmd.trim().chars().take(200).collect();
        out.push_str(&format!("{p:>7} {state} {unit} {cmd}\n"));
    }
    out
}

/// The node's systemd (PID 1 inside it): the process in its `init.scope`.
fn node_init(l: &Layout, key: &str) -> Option<i32> {
    processes(l, key).lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        let pid = cols.next()?.parse().ok()?;
        let _state = cols.next()?;
        cols.next()?.ends_with("/init.scope").then_some(pid)
    })
}

/// What the node's systemd is still doing: its queued jobs and every unit not settled or
/// failed, asked through its own socket inside the node (for a failed `up`'s logs: a unit
/// that never finished holds back everything ordered after it, as cloud-final after
/// cloud-config). Bounded: a stuck PID 1 does not hold up the teardown.
pub fn systemd_state(l: &Layout, key: &str) -> String {
    let Some(pid) = node_init(l, key) else {
        return "no systemd in the node\n".into();
    };
    let pid = pid.to_string();
    let mut out = String::new();
    for args in [
        &["list-jobs"][..],
        &[
            "list-units",
            "--all",
            "--state=activating,deactivating,reloading,failed",
        ],
        &["status", "cloud-config.service", "cloud-final.service"],
    ] {
        out.push_str(&format!("$ systemctl {}\n", args.join(" ")));
        let mut cmd = vec![
            "10",
            "nsenter",
            "--target",
            &pid,
            "--mount",
            "--pid",
            "--",
            "systemctl",
        ];
        cmd.extend(["--no-pager", "--full"]);
        cmd.extend(args);
        // `systemctl status` exits 3 for a unit that is not active: its text still says why.
        let o = Command::new("timeout")
            .args(&cmd)
            .stdin(Stdio::null())
            .output();
        match o {
            Ok(o) => {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
                out.push_str(&String::from_utf8_lossy(&o.stderr));
            }
            Err(e) => out.push_str(&format!("cannot run systemctl: {e}\n")),
        }
    }
    out
}

fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids = vec![];
    if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(pids_below(&e.path()));
            }
        }
    }
    pids
}

fn rmdir_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Starts a node: the launcher joins the node's cgroups, then becomes `systemd-nspawn`
/// booting the node's root in the node's namespace. Returns its pid; it runs on after
/// `lab up` exits (a process group of its own: no terminal signal reaches it).
pub fn start_node(
    l: &Layout,
    key: &str,
    machine: &str,
    cgroup_procs: &[PathBuf],
    binds: &[String],
) -> Result<u32> {
    let d = l.node_dir(key);
    let console = d.join("console.log");
    // Appended to: a node booted again keeps its first boot's console.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console)
        .map_err(Error::io(&console))?;
    let err = out.try_clone().map_err(Error::io(&console))?;
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(r#"while [ "$1" != -- ]; do echo $$ >"$1"; shift; done; shift; exec "$@""#)
        .arg("haimg-lab-launcher")
        .args(cgroup_procs)
        .arg("--")
        .arg("systemd-nspawn")
        .args(nspawn_args(l, key, machine))
        .args(binds)
        // Lab-only, with their reasons in `nspawn_args`.
        .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "yes")
        .env("SYSTEMD_SECCOMP", "0")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let child = c
        .spawn()
        .map_err(|e| Error::Runtime(format!("cannot start node {key}: {e}")))?;
    Ok(child.id())
}

/// How a node boots. Lab-only, because these containers share this machine's kernel:
/// * `--capability=all`, writable `/proc/sys` and `/sys` (`SYSTEMD_NSPAWN_API_VFS_WRITABLE`),
///   no seccomp filter (`SYSTEMD_SECCOMP=0`), `/dev/kmsg`: what the kubelet, kube-proxy and
///   runc need, as kind gives its nodes;
/// * `--register=no --keep-unit`: this machine's PID 1 is not systemd (no machined, no bus);
/// * the node's containerd directory bound in (a real filesystem for its snapshots);
/// * `/run/haimg-lab` bound read-only: the marker the agent's preflight accepts cgroup v1 by.
pub fn nspawn_args(l: &Layout, key: &str, machine: &str) -> Vec<String> {
    let d = l.node_dir(key);
    vec![
        "--boot".into(),
        "--register=no".into(),
        "--keep-unit".into(),
        "--capability=all".into(),
        "--bind=/dev/kmsg".into(),
        format!("--machine={machine}"),
        format!("--network-namespace-path=/run/netns/{}", l.node_netns(key)),
        format!("--directory={}", d.join("root").display()),
        format!(
            "--bind={}:/var/lib/containerd",
            d.join("containerd").display()
        ),
        format!("--bind-ro={}:/run/haimg-lab", d.join("lab").display()),
    ]
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    let mut m: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    m.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    m.dedup();
    m
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> PathBuf {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&oct, 8) {
                out.push(b as char);
                continue;
            }
            out.push('\\');
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

pub fn read_sysctls() -> Vec<(String, String)> {
    MACHINE_SYSCTLS
        .iter()
        .filter_map(|k| {
            std::fs::read_to_string(Path::new("/proc/sys").join(k))
                .ok()
                .map(|v| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let p = Path::new("/proc/sys").join(key);
    std::fs::write(&p, value).map_err(Error::io(&p))
}

/// kube-proxy sets `nf_conntrack_max` unless it already has the value it wants, and a
/// network namespace other than the machine's may not write it: the lab sets it first, to
/// kube-proxy's default (32768 per CPU, at least 131072).
pub fn kube_proxy_conntrack_max() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    (32_768 * cpus).max(131_072)
}

/// Stops every node and undoes every step, from what exists; never fails half-way (each
/// undo is tried), and reports what it could not undo.
pub fn teardown(l: &Layout, keys: &[String]) -> Vec<String> {
    let mut left = vec![];
    // Nodes first: a graceful poweroff (nspawn turns SIGTERM into one), bounded, then
    // every process of their cgroups killed.
    let pids: Vec<i32> = keys
        .iter()
        .filter_map(|k| std::fs::read_to_string(l.node_dir(k).join("pid")).ok())
        .filter_map(|p| p.trim().parse().ok())
        .filter(|p| is_ours(*p, "systemd-nspawn"))
        .collect();
    for p in &pids {
        // SAFETY: kill(2) of a launcher whose command line was checked just above.
        unsafe { libc::kill(*p, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && std::time::Instant::now() < deadline
    {
        reap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for k in keys {
        remove_cgroups(l, k);
    }
    reap();
    for (service, word) in [("serve", "lab"), ("moto", "moto")] {
        let Ok(p) = std::fs::read_to_string(l.state.join(format!("{service}.pid"))) else {
            continue;
        };
        if let Ok(p) = p.trim().parse::<i32>() {
            if is_ours(p, word) {
                // SAFETY: kill(2) of the service's process group (it leads one), its
                // command line checked.
                unsafe { libc::kill(-p, libc::SIGKILL) };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while is_ours(p, word) && std::time::Instant::now() < deadline {
                    reap();
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }
    for m in mounts_below(&l.state) {
        if let Err(e) = run("umount", &[&m.to_string_lossy()]) {
            // Busy a moment after its processes died: detach it instead.
            if run("umount", &["-l", &m.to_string_lossy()]).is_err() {
                left.push(format!("mount {}: {e}", m.display()));
            }
        }
    }
    for k in keys {
        let ns = l.node_netns(k);
        if netns_exists(&ns) && ip(&["netns", "del", &ns]).is_err() {
            left.push(format!("network namespace {ns}"));
        }
    }
    let ns = l.lab_netns();
    if netns_exists(&ns) && ip(&["netns", "del", &ns]).is_err() {
        left.push(format!("network namespace {ns}"));
    }
    if let Ok(text) = std::fs::read_to_string(l.sysctls()) {
        let saved: Vec<(String, String)> = serde_json::from_str(&text).unwrap_or_default();
        for (k, v) in saved {
            if let Err(e) = write_sysctl(&k, &v) {
                left.push(format!("sysctl {k}={v}: {e}"));
            }
        }
    }
    if mounts_below(&l.state).is_empty() {
        if l.state.exists() {
            if let Err(e) = std::fs::remove_dir_all(&l.state) {
                left.push(format!("{}: {e}", l.state.display()));
            }
        }
    } else {
        left.push(format!(
            "{} still has mounts: left in place",
            l.state.display()
        ));
    }
    left
}

/// Stops one node as a failure would look from the network (a poweroff, then every process
/// left in its cgroups killed), keeping its root and namespace for [`start_node`] again.
pub fn stop_node(l: &Layout, key: &str) {
    let pidfile = l.node_dir(key).join("pid");
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| is_ours(*p, "systemd-nspawn"));
    if let Some(p) = pid {
        // SAFETY: kill(2) of the node's launcher, its command line checked.
        unsafe { libc::kill(p, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while Path::new(&format!("/proc/{p}")).exists() && std::time::Instant::now() < deadline {
            reap();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    remove_cgroups(l, key);
    reap();
    let _ = std::fs::remove_file(pidfile);
}

/// Cuts a node's power: every process in its cgroups killed at once (nothing shuts down,
/// nothing says goodbye), and its network namespace gone with every address on it (a VIP
/// it held included), as a machine's network stack goes with its power. Its root is kept
/// for [`start_node`], after [`create_node_network`] again.
pub fn kill_node(l: &Layout, key: &str) -> Result<()> {
    let pidfile = l.node_dir(key).join("pid");
    remove_cgroups(l, key);
    reap();
    let _ = std::fs::remove_file(pidfile);
    // The veth pair first: a namespace is freed asynchronously, its interfaces with it,
    // and the node's start may come sooner. Deleting one end deletes both at once.
    let peer = format!("v-{key}");
    let _ = ip(&["-n", &l.lab_netns(), "link", "del", &peer]);
    let ns = l.node_netns(key);
    if netns_exists(&ns) {
        ip(&["netns", "del", &ns])?;
    }
    Ok(())
}

/// Removes a stopped node's root, namespace and directory (a scaled-in worker); what could
/// not be removed is returned.
pub fn remove_node(l: &Layout, key: &str) -> Vec<String> {
    let mut left = vec![];
    let dir = l.node_dir(key);
    for m in mounts_below(&dir) {
        if let Err(e) = run("umount", &[&m.to_string_lossy()]) {
            if run("umount", &["-l", &m.to_string_lossy()]).is_err() {
                left.push(format!("mount {}: {e}", m.display()));
            }
        }
    }
    let ns = l.node_netns(key);
    if netns_exists(&ns) && ip(&["netns", "del", &ns]).is_err() {
        left.push(format!("network namespace {ns}"));
    }
    if mounts_below(&dir).is_empty() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            left.push(format!("{}: {e}", dir.display()));
        }
    }
    left
}

/// Whether `pid` runs a command line containing `word` (a pid file may be stale).
fn is_ours(pid: i32, word: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(word))
        .unwrap_or(false)
}

/// Collects exited children (the launchers `up` started, when `down` runs in the same
/// process, as tests and a failed `up` do).
fn reap() {
    loop {
        // SAFETY: waitpid(2) on any child, without blocking.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), PathBuf::from("/a b/c"));
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn conntrack_follows_kube_proxys_default() {
        assert!(kube_proxy_conntrack_max() >= 131_072);
        assert_eq!(kube_proxy_conntrack_max() % 32_768, 0);
    }

    #[test]
    fn names_are_per_cluster_and_node() {
        let l = Layout {
            cluster: "lab".into(),
            state: "/s".into(),
        };
        assert_eq!(l.lab_netns(), "haimg-lab");
        assert_eq!(l.node_netns("w1"), "haimg-lab-w1");
        assert_eq!(l.cgroup_name("m2"), "haimg-lab-lab-m2");
        let a = nspawn_args(&l, "m1", "m1");
        assert!(
            a.contains(&"--network-namespace-path=/run/netns/haimg-lab-m1".to_string()),
            "{a:?}"
        );
        assert!(
            a.contains(&"--bind-ro=/s/nodes/m1/lab:/run/haimg-lab".to_string()),
            "{a:?}"
        );
    }
}
