//! `haimg lab`, for real: the debian-12 image baked locally, then three masters behind the
//! keepalived VIP and a worker booted from it as system containers, each with exactly its
//! rendered user-data. Checked from outside the nodes (there is no way in): the agents' own
//! console lines and journals, kubectl through the VIP, etcd's member list, CoreDNS
//! answering, Parameter Store (moto in the lab's namespace), no port 22, no route out, no
//! secret in any log. The cluster then lives through what a cluster on AWS lives through:
//! its join material rotated, a worker added, a worker scaled in (drained with a disruption
//! budget honoured), the VIP's holder losing its power. Then `lab down` leaves nothing: no
//! namespace, mount, cgroup, process or file, and the machine-wide sysctls as they were.
//!
//! The lab tests run one at a time (a lab takes the machine's two cores) and share one bake.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;

fn agent() -> PathBuf {
    std::env::var_os("HAIMG_TEST_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_haimg")))
}

/// One lab at a time.
static LABS: Mutex<()> = Mutex::new(());

/// The debian-12 image, baked once for every test here, into a store of the lab tests'
/// own outside the clone: a later run with the same inputs is the bake's cache hit. Older
/// entries (another agent, another recipe) are removed: each is ~2 GB.
fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let store =
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/haimg/lab-test-store");
        let mut c = haimg();
        c.args(["bake", "debian-12", "--target", "qemu", "--store"])
            .arg(&store)
            .arg("--sources")
            .arg(kube_artifacts())
            .arg("--haimg-binary")
            .arg(agent())
            .args(["--output", "json"]);
        let o = run(c);
        assert!(o.status.success(), "bake: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let entry = PathBuf::from(v["image"].as_str().unwrap())
            .parent()
            .unwrap()
            .to_path_buf();
        assert!(
            entry.starts_with(&store),
            "{} is in the store",
            entry.display()
        );
        for e in std::fs::read_dir(&store).unwrap().flatten() {
            if e.path() != entry {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        entry
    })
}

fn moto_server() -> PathBuf {
    venv().join("bin/moto_server")
}

fn lab(args: &[&str], spec: &Path, state: &Path) -> Command {
    let mut c = haimg();
    c.arg("lab")
        .args(args)
        .arg("-c")
        .arg(spec)
        .arg("--state")
        .arg(state);
    c
}

fn up(spec: &Path, state: &Path, timeout: &str) -> std::process::Output {
    let moto = moto_server();
    run(lab(
        &[
            "up",
            "--image",
            image().to_str().unwrap(),
            "--timeout",
            timeout,
            "--moto-server",
            moto.to_str().unwrap(),
        ],
        spec,
        state,
    ))
}

fn try_sh(netns: &str, cmd: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(cmd)
        .output()
        .unwrap()
}

fn sh(netns: &str, cmd: &[&str]) -> String {
    let o = try_sh(netns, cmd);
    assert!(
        o.status.success(),
        "{cmd:?} in {netns}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn kubectl_cmd(state: &Path) -> Vec<String> {
    // The image's; a plain base has none but what its nodes installed.
    let image = state.join("lower/usr/bin/kubectl");
    let program = if image.is_file() {
        image
    } else {
        state.join("nodes/m1/root/usr/bin/kubectl")
    };
    vec![
        program.display().to_string(),
        "--kubeconfig".into(),
        state.join("admin.conf").display().to_string(),
    ]
}

fn kubectl(state: &Path, args: &[&str]) -> String {
    let mut all = kubectl_cmd(state);
    all.extend(args.iter().map(|a| a.to_string()));
    sh(
        "haimg-lab",
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

fn kubectl_apply(state: &Path, manifest: &str) {
    let mut all = kubectl_cmd(state);
    all.extend(["apply".into(), "-f".into(), "-".into()]);
    let mut c = Command::new("ip")
        .args(["netns", "exec", "haimg-lab"])
        .args(&all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "kubectl apply: {}", stderr(&o));
}

/// A parameter under the cluster's prefix, as Parameter Store (moto, in the lab) holds it.
fn parameter(rel: &str) -> serde_json::Value {
    let py = r#"
import boto3, sys
c = boto3.client("ssm", region_name="us-west-2", endpoint_url="http://10.0.0.1:5000",
                 aws_access_key_id="test", aws_secret_access_key="test")
print(c.get_parameter(Name=sys.argv[1], WithDecryption=True)["Parameter"]["Value"])
"#;
    let python = venv().join("bin/python");
    let name = format!("/haimg/lab/{rel}");
    let out = sh(
        "haimg-lab",
        &[python.to_str().unwrap(), "-c", py, name.as_str()],
    );
    serde_json::from_str(out.trim()).unwrap()
}

/// The lab's view of a node's console (nodes scaled in keep theirs under `retired/`).
fn console(state: &Path, key: &str) -> String {
    let live = state.join("nodes").join(key).join("console.log");
    let retired = state.join("retired").join(key).join("console.log");
    std::fs::read_to_string(&live)
        .or_else(|_| std::fs::read_to_string(&retired))
        .unwrap_or_default()
}

/// A node's journal, as text (journalctl reading the node's journal files).
fn journal(state: &Path, key: &str) -> String {
    let live = state.join("nodes").join(key).join("root/var/log/journal");
    let retired = state.join("retired").join(key).join("journal");
    let dir = if live.is_dir() { live } else { retired };
    assert!(dir.is_dir(), "no journal for {key} at {}", dir.display());
    let o = Command::new("journalctl")
        .arg("--directory")
        .arg(&dir)
        .args(["--no-pager", "-o", "short-monotonic"])
        .output()
        .unwrap();
    assert!(o.status.success(), "journalctl: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// After a failed `up`: the agents' last words on every console it kept, the cluster as the
/// API server saw it and each node's journal excerpts, so a CI log says why (the temporary
/// directory goes with the test).
fn show_failed_logs(state: &Path) {
    let dir = state.with_extension("failed-logs");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
        let lines: Vec<&str> = if name.ends_with(".console.log") {
            // The agent's lines and failures, not apt's progress (its mirror path says haimg).
            text.lines()
                .filter(|l| {
                    l.contains("node{")
                        || l.contains("error")
                        || l.contains("Failed")
                        || l.contains("haimg-provision")
                })
                .collect()
        } else {
            text.lines().collect()
        };
        let keep = if name.ends_with(".console.log") {
            40
        } else {
            200
        };
        let from = lines.len().saturating_sub(keep);
        eprintln!("--- {name} (last lines)\n{}", lines[from..].join("\n"));
        if name.ends_with(".console.log") {
            // And where it stopped, whatever said it.
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(25);
            eprintln!("--- {name} (its last 25 lines)\n{}", all[from..].join("\n"));
        }
    }
}

const SYSCTLS: [&str; 4] = [
    "net/netfilter/nf_conntrack_max",
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

fn sysctls() -> Vec<String> {
    SYSCTLS
        .iter()
        .map(|k| std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap())
        .collect()
}

/// Nothing of the lab is left on the machine.
fn assert_nothing_left(state: &Path, before: &[String]) {
    assert!(!state.exists(), "{} left", state.display());
    let netns: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !netns.iter().any(|n| n.starts_with("haimg-lab")),
        "namespaces left: {netns:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(state.to_str().unwrap()),
        "mounts left:\n{mounts}"
    );
    for c in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left: Vec<_> = std::fs::read_dir(c.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("haimg-lab-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "cgroups left in {}: {left:?}",
            c.path().display()
        );
    }
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        let ours = cmd.contains(state.to_str().unwrap())
            || (cmd.contains("moto_server") && cmd.contains("10.0.0.1"));
        assert!(!ours, "process left: {cmd}");
    }
    assert_eq!(
        sysctls(),
        before,
        "the machine-wide sysctls are back ({SYSCTLS:?})"
    );
}

fn readyz(url: &str) -> bool {
    try_sh("haimg-lab", &["curl", "-sk", "--max-time", "1", url]).stdout == b"ok"
}

/// The etcd client flags of the API server's certificate, read from m1's disk (the etcd
/// image has no etcdctl: this machine's is used, as an operator would from a snapshot).
fn etcd_flags(state: &Path) -> [String; 3] {
    let pki = state.join("nodes/m1/root/etc/kubernetes/pki");
    let arg = |k: &str, f: &str| format!("--{k}={}", pki.join(f).display());
    [
        arg("cacert", "etcd/ca.crt"),
        arg("cert", "apiserver-etcd-client.crt"),
        arg("key", "apiserver-etcd-client.key"),
    ]
}

fn etcd_healthy(state: &Path, endpoints: &str) -> bool {
    let f = etcd_flags(state);
    let e = format!("--endpoints={endpoints}");
    try_sh(
        "haimg-lab",
        &["etcdctl", &e, &f[0], &f[1], &f[2], "endpoint", "health"],
    )
    .status
    .success()
}

fn holds_vip(k: &str) -> bool {
    try_sh(
        &format!("haimg-lab-{k}"),
        &["ip", "-o", "addr", "show", "dev", "eth0"],
    )
    .stdout
    .windows(12)
    .any(|w| w == b" 10.0.0.100/")
}

/// Waits on `done`, polling every `every`, at most `bound`.
fn wait_for(what: &str, bound: Duration, every: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(every);
    }
}

/// The token id (`abcdef` of `abcdef.0123456789abcdef`): public, unlike its secret half.
fn token_id(m: &serde_json::Value) -> String {
    m["token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string()
}

const W1: &str = "ip-10-0-0-201.us-west-2.compute.internal";
const W2: &str = "ip-10-0-0-202.us-west-2.compute.internal";

#[test]
fn an_ha_cluster_in_ssm_mode_forms_rotates_scales_fails_over_and_leaves_nothing() {
    let _one = LABS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("lab.yaml");
    std::fs::copy(repo().join("examples/lab.yaml"), &spec).unwrap();
    let state = dir.path().join("state");
    let before = sysctls();

    let o = up(&spec, &state, "480");
    let err = stderr(&o);
    eprintln!("{err}");
    if !o.status.success() {
        show_failed_logs(&state);
    }
    let checks = std::panic::catch_unwind(|| {
        assert!(o.status.success(), "lab up: {err}");
        let logs: Vec<(&str, String)> = ["m1", "m2", "m3", "w1"]
            .iter()
            .map(|k| (*k, console(&state, k)))
            .collect();
        let count = |needle: &str| logs.iter().filter(|(_, l)| l.contains(needle)).count();
        // Exactly one init, through the election in Parameter Store; two control-plane
        // joins; one worker join (the agents' own words).
        assert_eq!(count("running command=kubeadm init"), 1);
        assert_eq!(count("won the init lock"), 1);
        assert_eq!(count("cluster initialized; join material published"), 1);
        assert_eq!(count("joining as control-plane node"), 2);
        assert_eq!(count("joining as worker"), 1);
        assert_eq!(count(": joined"), 3);
        assert!(logs[3].1.contains("role=\"worker\""), "w1 is a worker");

        // The join material is in Parameter Store, as on AWS.
        let cp = parameter("join/control-plane");
        assert_eq!(cp["generation"], 1, "{}", cp["generation"]);
        assert_eq!(cp["endpoint"], "10.0.0.100:6443");
        let worker = parameter("join/worker");
        assert!(worker.get("certificateKey").is_none(), "workers get no key");
        assert_eq!(token_id(&worker), token_id(&cp));

        // Every node Ready, seen through the VIP.
        let ready_nodes = || {
            let nodes = kubectl(&state, &["get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"]);
            let mut got: Vec<String> = nodes.lines().map(str::to_string).collect();
            got.sort();
            got
        };
        assert_eq!(
            ready_nodes(),
            [&format!("{W1}=True"), "m1=True", "m2=True", "m3=True"]
        );
        let server = kubectl(
            &state,
            &[
                "config",
                "view",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ],
        );
        assert_eq!(
            server, "https://10.0.0.100:6443",
            "kubectl went through the VIP"
        );
        assert!(readyz("https://10.0.0.100:6443/readyz"));

        // etcd: three started members (a started member has a name).
        let f = etcd_flags(&state);
        let members = sh(
            "haimg-lab",
            &[
                "etcdctl",
                "--endpoints=https://10.0.0.11:2379",
                &f[0],
                &f[1],
                &f[2],
                "member",
                "list",
                "-w",
                "json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&members).unwrap();
        let mut names: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap_or(""))
            .collect();
        names.sort();
        assert_eq!(names, ["m1", "m2", "m3"], "{members}");

        // The VIP's static pods run on every master.
        for app in ["keepalived", "haproxy"] {
            for m in ["m1", "m2", "m3"] {
                let phase = kubectl(
                    &state,
                    &[
                        "-n",
                        "kube-system",
                        "get",
                        "pod",
                        &format!("{app}-{m}"),
                        "-o",
                        "jsonpath={.status.phase}",
                    ],
                );
                assert_eq!(phase, "Running", "{app} on {m}");
            }
        }

        // CoreDNS answers a query for the API service from a node (through kube-proxy's rules).
        let query = r#"
import socket, struct, sys
q = struct.pack(">HHHHHH", 0x4c41, 0x0100, 1, 0, 0, 0)
for p in "kubernetes.default.svc.cluster.local".split("."):
    q += bytes([len(p)]) + p.encode()
q += b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, ("10.96.0.10", 53)); r = s.recv(512)
print(".".join(str(b) for b in r[-4:]) if struct.unpack(">H", r[6:8])[0] else "no answer")
"#;
        assert_eq!(
            sh("haimg-lab-w1", &["python3", "-c", query]).trim(),
            "10.96.0.1"
        );

        // No node listens on port 22; nothing routes out of the lab.
        for k in ["m1", "m2", "m3", "w1"] {
            let ns = format!("haimg-lab-{k}");
            assert_eq!(
                sh(&ns, &["ss", "-ltnH", "sport = :22"]),
                "",
                "{k} listens on 22"
            );
        }
        assert_eq!(
            sh("haimg-lab", &["ip", "route", "show", "default"]),
            "",
            "the lab has no way out"
        );
        assert_eq!(
            sh("haimg-lab", &["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
            "0"
        );
        let links = sh("haimg-lab", &["ip", "-o", "link", "show"]);
        for l in links.lines() {
            let name = l.split(": ").nth(1).unwrap_or_default();
            assert!(
                name == "lo" || name == "br0" || name.starts_with("v-"),
                "unexpected interface in the lab: {l}"
            );
        }

        let o = run(lab(&["status", "--output", "json"], &spec, &state));
        assert!(o.status.success(), "status: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["healthy"], true, "{v}");

        // A workload with a disruption budget, on the only worker (the masters are tainted):
        // three replicas of the image's pause container, at least two of them always Ready.
        let pause =
            std::fs::read_to_string(state.join("lower/etc/haimg/image-manifest.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&pause).unwrap();
        let pause = manifest["images"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["image"].as_str())
            .find(|i| i.starts_with("registry.k8s.io/pause:"))
            .unwrap()
            .to_string();
        kubectl_apply(
            &state,
            &format!(
                r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: budgeted, namespace: default}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: budgeted}}}}
  template:
    metadata: {{labels: {{app: budgeted}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: pause, image: "{pause}", imagePullPolicy: Never}}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: budgeted, namespace: default}}
spec:
  minAvailable: 2
  selector: {{matchLabels: {{app: budgeted}}}}
"#
            ),
        );
        let placed = || {
            kubectl(
                &state,
                &["get", "pods", "-l", "app=budgeted", "-o", "jsonpath={range .items[*]}{.spec.nodeName}={.status.containerStatuses[0].ready}{\"\\n\"}{end}"],
            )
        };
        let three_ready_on = |node: &str| {
            wait_for(
                &format!("three budgeted pods Ready on {node}"),
                Duration::from_secs(120),
                Duration::from_secs(1),
                || {
                    placed()
                        .lines()
                        .filter(|l| *l == format!("{node}=true"))
                        .count()
                        == 3
                },
            )
        };
        three_ready_on(W1);

        // The refresh timer's service rotates the join material for real. Material is
        // rotated at half-life (1 h): this run's clock is 61 minutes ahead (the agent's
        // clock seam), so it is due now.
        for m in ["m1", "m2", "m3"] {
            let o = node_exec(
                &state,
                m,
                &["systemctl", "is-active", "haimg-refresh.timer"],
            );
            assert_eq!(o.trim(), "active", "{m}'s refresh timer");
        }
        let certs_before = kubectl(
            &state,
            &[
                "-n",
                "kube-system",
                "get",
                "secret",
                "kubeadm-certs",
                "-o",
                "jsonpath={.data}",
            ],
        );
        let dropin = state.join("nodes/m2/root/etc/systemd/system/haimg-refresh.service.d");
        std::fs::create_dir_all(&dropin).unwrap();
        std::fs::write(
            dropin.join("test-clock.conf"),
            "[Service]\nEnvironment=HAIMG_CLOCK_SKEW_SECONDS=3660\n",
        )
        .unwrap();
        node_exec(&state, "m2", &["systemctl", "daemon-reload"]);
        node_exec(
            &state,
            "m2",
            &["systemctl", "start", "haimg-refresh.service"],
        );
        std::fs::remove_file(dropin.join("test-clock.conf")).unwrap();
        node_exec(&state, "m2", &["systemctl", "daemon-reload"]);
        let cp2 = parameter("join/control-plane");
        assert_eq!(cp2["generation"], 2, "rotated once");
        let (old, new) = (token_id(&cp), token_id(&cp2));
        assert_ne!(old, new, "a new token");
        assert_ne!(
            cp2["certificateKey"], cp["certificateKey"],
            "a new certificate key"
        );
        assert_eq!(
            token_id(&parameter("join/worker")),
            new,
            "workers get the new token"
        );
        let j = journal(&state, "m2");
        assert!(j.contains("join material rotated"), "m2's journal says so");
        // The new token exists in the cluster; the superseded one is left to its TTL, as
        // the refresh flow says: it goes at kubeadm init + 4 h.
        let expiration = |id: &str| {
            let e = kubectl(
                &state,
                &[
                    "-n",
                    "kube-system",
                    "get",
                    "secret",
                    &format!("bootstrap-token-{id}"),
                    "-o",
                    "jsonpath={.data.expiration}",
                ],
            );
            let e = String::from_utf8(base64_decode(e.trim())).unwrap();
            humantime::parse_rfc3339_weak(&e).unwrap()
        };
        let issued = |m: &serde_json::Value| {
            humantime::parse_rfc3339_weak(m["issuedAt"].as_str().unwrap()).unwrap()
        };
        let four_h = Duration::from_secs(4 * 3600);
        let off = |a: std::time::SystemTime, b: std::time::SystemTime| {
            a.duration_since(b)
                .or_else(|_| b.duration_since(a))
                .unwrap()
        };
        assert!(
            off(expiration(&old), issued(&cp) + four_h) < Duration::from_secs(300),
            "the superseded token expires 4 h after its issue"
        );
        // The rotation ran 3660 s ahead: its documents carry that clock, the token the real one.
        assert!(
            off(
                expiration(&new) + Duration::from_secs(3660),
                issued(&cp2) + four_h
            ) < Duration::from_secs(300),
            "the new token lives 4 h"
        );
        let certs_after = kubectl(
            &state,
            &[
                "-n",
                "kube-system",
                "get",
                "secret",
                "kubeadm-certs",
                "-o",
                "jsonpath={.data}",
            ],
        );
        assert_ne!(
            certs_before, certs_after,
            "the certificates were uploaded again under the new key"
        );

        // A fresh worker with the pool's user-data joins the running cluster, with the
        // rotated material.
        let t = Instant::now();
        let o = run(lab(
            &["scale", "general", "2", "--timeout", "300"],
            &spec,
            &state,
        ));
        assert!(o.status.success(), "lab scale: {}", stderr(&o));
        eprintln!(
            "{}scale-out: w2 Ready {:.1} s after the scale",
            stderr(&o),
            t.elapsed().as_secs_f64()
        );
        let w2 = console(&state, "w2");
        assert!(
            w2.contains("joining as worker") && w2.contains("generation=2"),
            "w2 joins with the rotated material"
        );
        assert!(ready_nodes().contains(&format!("{W2}=True")));

        // w1 is scaled in: its agent drains it (the budget honoured: never fewer than two
        // Ready), completes the lifecycle action, and the lab powers it off.
        let mut watch_cmd = kubectl_cmd(&state);
        watch_cmd.extend(
            [
                "get",
                "pdb",
                "budgeted",
                "-w",
                "-o",
                "jsonpath={.status.currentHealthy} {.status.desiredHealthy}{\"\\n\"}",
            ]
            .map(String::from),
        );
        let mut watcher = Command::new("ip")
            .args(["netns", "exec", "haimg-lab"])
            .args(&watch_cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let watched = {
            let out = watcher.stdout.take().unwrap();
            std::thread::spawn(move || {
                use std::io::BufRead;
                std::io::BufReader::new(out)
                    .lines()
                    .map_while(|l| l.ok())
                    .collect::<Vec<String>>()
            })
        };
        let t = Instant::now();
        let o = run(lab(&["terminate", "w1", "--timeout", "300"], &spec, &state));
        assert!(o.status.success(), "lab terminate: {}", stderr(&o));
        eprintln!(
            "{}scale-in: w1 drained and gone {:.1} s after the terminate",
            stderr(&o),
            t.elapsed().as_secs_f64()
        );
        let _ = watcher.kill();
        let _ = watcher.wait();
        let seen = watched.join().unwrap();
        let healthy: Vec<(u32, u32)> = seen
            .iter()
            .filter_map(|l| {
                let (a, b) = l.trim().split_once(' ')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        assert!(!healthy.is_empty(), "the budget was watched: {seen:?}");
        assert!(
            healthy.iter().all(|(h, d)| *d == 2 && h >= d),
            "the budget held all along: {healthy:?}"
        );
        let events = std::fs::read_to_string(state.join("autoscaling-events.jsonl")).unwrap();
        assert!(
            events.contains("\"action\":\"CompleteLifecycleAction\""),
            "{events}"
        );
        assert!(events.contains("\"result\":\"CONTINUE\""), "{events}");
        let j = journal(&state, "w1");
        let drained = j
            .lines()
            .filter(|l| l.contains("pod=default/budgeted") && l.contains("evicted"))
            .count();
        assert_eq!(drained, 3, "w1 evicted its three pods:\n{j}");
        assert!(
            j.contains("lifecycle action completed"),
            "w1 completed its lifecycle action"
        );
        eprintln!(
            "scale-in: the budget refused {} eviction round(s); healthy pods seen: {healthy:?}",
            j.matches("a PodDisruptionBudget blocks eviction").count()
        );
        assert!(!Path::new("/run/netns/haimg-lab-w1").exists(), "w1 is gone");
        three_ready_on(W2);

        // Failover: the VIP's holder loses its power (no shutdown: keepalived cannot hand
        // the VIP over). The VIP moves and the API answers through it again.
        let masters = ["m1", "m2", "m3"];
        let holder = *masters
            .iter()
            .find(|k| holds_vip(k))
            .expect("a master holds the VIP");
        let t = Instant::now();
        let o = run(lab(&["stop", "--kill", holder], &spec, &state));
        assert!(o.status.success(), "lab stop --kill: {}", stderr(&o));
        let killed = t.elapsed();
        // keepalived's master-down interval is 3 adverts of 1 s plus skew; then the new
        // holder's haproxy answers, redispatching what the dead master does not accept
        // until its health checks (3 × 2 s) take it out. Answering = 20 requests in a row
        // (100 ms apart) each answered within 3 s; 30 s leaves room for a slow machine.
        let bound = Duration::from_secs(30);
        let (mut first, mut streak_from, mut streak) = (None, Instant::now(), 0);
        while streak < 20 {
            assert!(
                t.elapsed() < killed + bound,
                "the API did not answer steadily through the VIP within {bound:?} of {holder} losing power"
            );
            let asked = Instant::now();
            if try_sh(
                "haimg-lab",
                &[
                    "curl",
                    "-sk",
                    "--max-time",
                    "3",
                    "https://10.0.0.100:6443/readyz",
                ],
            )
            .stdout
                == b"ok"
            {
                first.get_or_insert(asked.duration_since(t));
                if streak == 0 {
                    streak_from = asked;
                }
                streak += 1;
            } else {
                streak = 0;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let first = first.unwrap();
        let gap = streak_from.duration_since(t);
        let new_holder: Vec<&str> = masters
            .iter()
            .copied()
            .filter(|k| *k != holder && holds_vip(k))
            .collect();
        assert_eq!(
            new_holder.len(),
            1,
            "exactly one other master holds the VIP"
        );
        eprintln!(
            "failover: {holder} killed; through the VIP on {}, a request sent {:.1} s after the kill was answered (within 3 s), and every request sent from {:.1} s on",
            new_holder[0],
            first.as_secs_f64(),
            gap.as_secs_f64()
        );
        let others: Vec<String> = masters
            .iter()
            .filter(|k| **k != holder)
            .map(|k| format!("https://10.0.0.1{}:2379", &k[1..]))
            .collect();
        assert!(
            etcd_healthy(&state, &others.join(",")),
            "the other two etcd members keep quorum"
        );
        let nodes = kubectl(&state, &["get", "nodes", "-o", "name"]);
        assert!(
            nodes.contains("node/m1") && nodes.contains("node/m2") && nodes.contains("node/m3"),
            "the API serves reads without {holder}: {nodes}"
        );

        // It comes back healthy: its etcd member and its API server answer again.
        let o = run(lab(&["start", holder], &spec, &state));
        assert!(o.status.success(), "lab start: {}", stderr(&o));
        let all = "https://10.0.0.11:2379,https://10.0.0.12:2379,https://10.0.0.13:2379";
        let own = format!("https://10.0.0.1{}:6444/readyz", &holder[1..]);
        let t = Instant::now();
        wait_for(
            &format!("{holder} healthy again"),
            Duration::from_secs(240),
            Duration::from_millis(500),
            || etcd_healthy(&state, all) && readyz(&own),
        );
        eprintln!(
            "failover: {holder} healthy again {:.1} s after its start",
            t.elapsed().as_secs_f64()
        );

        // No secret (any token's secret half, any certificate key) in any console, journal,
        // or log of the lab's own services.
        let secrets: Vec<String> = [&cp, &cp2]
            .iter()
            .flat_map(|m| {
                [
                    m["token"]
                        .as_str()
                        .unwrap()
                        .split('.')
                        .nth(1)
                        .unwrap()
                        .to_string(),
                    m["certificateKey"].as_str().unwrap().to_string(),
                ]
            })
            .collect();
        let mut texts: Vec<(String, String)> = vec![];
        for k in ["m1", "m2", "m3", "w1", "w2"] {
            texts.push((format!("{k} console"), console(&state, k)));
            texts.push((format!("{k} journal"), journal(&state, k)));
        }
        for f in ["serve.log", "moto.log"] {
            texts.push((f.into(), std::fs::read_to_string(state.join(f)).unwrap()));
        }
        for s in &secrets {
            assert!(s.len() >= 16, "a secret, not a fragment");
            for (what, text) in &texts {
                assert!(!text.contains(s.as_str()), "a secret in {what}");
            }
        }
    });

    let o = run(lab(&["down"], &spec, &state));
    assert!(o.status.success(), "lab down: {}", stderr(&o));
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }
    assert_nothing_left(&state, &before);
    let o = run(lab(&["status"], &spec, &state));
    assert_eq!(
        o.status.code(),
        Some(1),
        "a lab that is down is not healthy"
    );

    // A failed `up` (here: out of time) removes everything itself.
    let o = up(&spec, &state, "1");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not every node was Ready within 1 s"),
        "{}",
        stderr(&o)
    );
    assert_nothing_left(&state, &before);
    let _ = std::fs::remove_dir_all(state.with_extension("failed-logs"));
}

#[test]
fn the_same_cluster_with_static_credentials_needs_no_aws() {
    let _one = LABS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("lab.yaml");
    let text = std::fs::read_to_string(repo().join("examples/lab.yaml")).unwrap();
    std::fs::write(
        &spec,
        format!("{text}  credentials:\n    source: static\n    file: lab-credentials.yaml\n"),
    )
    .unwrap();
    let state = dir.path().join("state");
    let before = sysctls();
    // No moto: a static lab must not need it.
    let o = run(lab(
        &[
            "up",
            "--image",
            image().to_str().unwrap(),
            "--timeout",
            "480",
            "--moto-server",
            "/nonexistent/moto_server",
        ],
        &spec,
        &state,
    ));
    let err = stderr(&o);
    eprintln!("{err}");
    if !o.status.success() {
        show_failed_logs(&state);
    }
    let checks = std::panic::catch_unwind(|| {
        assert!(o.status.success(), "lab up: {err}");
        assert!(!state.join("moto.pid").exists(), "no moto");
        let logs: Vec<String> = ["m1", "m2", "m3", "w1"]
            .iter()
            .map(|k| console(&state, k))
            .collect();
        assert!(
            logs[0].contains("cluster initialized with static credentials"),
            "m1 inits"
        );
        assert_eq!(logs.iter().filter(|l| l.contains(": joined")).count(), 3);
        let nodes = kubectl(&state, &["get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"]);
        assert_eq!(
            nodes.lines().filter(|l| l.ends_with("=True")).count(),
            4,
            "{nodes}"
        );
        assert_cloud_init_succeeded(&state, &["m1", "m2", "m3", "w1"]);
        // Nothing called AWS: the lab's Auto Scaling heard nothing.
        let serve = std::fs::read_to_string(state.join("serve.log")).unwrap();
        assert!(!serve.contains("autoscaling "), "{serve}");
        // The static material is in the user-data, never in a console or a log.
        let creds = std::fs::read_to_string(dir.path().join("lab-credentials.yaml")).unwrap();
        let field = |k: &str| {
            creds
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .unwrap()
                .to_string()
        };
        for secret in [field("token"), field("certificateKey")] {
            let secret_part = secret.split('.').next_back().unwrap().to_string();
            for (k, l) in logs.iter().enumerate() {
                assert!(!l.contains(&secret_part), "a secret in node {k}'s console");
            }
            assert!(!serve.contains(&secret_part));
        }
    });
    let o = run(lab(&["down"], &spec, &state));
    assert!(o.status.success(), "lab down: {}", stderr(&o));
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }
    assert_nothing_left(&state, &before);
}

/// The plain base (`bake --plain`): the same cluster from the recipe's base with nothing
/// installed, each node installing everything at boot from the bake's stage and a frozen
/// local mirror (what `scripts/bench-plain.sh` times). SSM mode: one init, every node
/// Ready, each node's install done before its agent ran.
///
/// In CI it once failed with a master whose cloud-init final stage (and so its install)
/// never started after a failed config stage: the plain base now keeps cloud-init's locale
/// (as a baked image does), the test checks every cloud-init unit succeeded, and a failed
/// `up` keeps each node's systemd jobs and units.
#[test]
fn a_plain_base_installs_everything_at_boot_and_forms_the_same_cluster() {
    let _one = LABS.lock().unwrap_or_else(|e| e.into_inner());
    let sources = kube_artifacts();
    // Frozen, the same mirror tests/local_bake.rs bakes from.
    let (_, mirror) = frozen_mirror(&sources);
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("image-recipes/debian-12.yaml"))
        .unwrap()
        .replace(
            "key: keys/",
            &format!("key: {}/image-recipes/keys/", repo().display()),
        )
        .replace(
            "manifest: cni/",
            &format!("manifest: {}/image-recipes/cni/", repo().display()),
        );
    let (start, end) = (
        text.find("  aptMirror:\n").unwrap(),
        text.find("  packages:\n").unwrap(),
    );
    let key = mirror.join("key.gpg");
    let recipe_file = dir.path().join("debian-12.yaml");
    std::fs::write(
        &recipe_file,
        format!(
            "{}  aptMirror:\n    url: file://{}\n    key: {}\n    sha256: {}\n{}",
            &text[..start],
            mirror.join("mirror").display(),
            key.display(),
            sha256_file(&key),
            &text[end..]
        ),
    )
    .unwrap();
    let mut c = haimg();
    c.arg("bake")
        .arg(&recipe_file)
        .args(["--target", "qemu", "--plain", "--store"])
        .arg(dir.path().join("store"))
        .arg("--sources")
        .arg(&sources)
        .arg("--haimg-binary")
        .arg(agent())
        .args(["--output", "json"]);
    let o = run(c);
    assert!(o.status.success(), "bake --plain: {}", stderr(&o));
    let done: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(done.get("manifest").is_none(), "nothing installed: {done}");
    let entry = Path::new(done["image"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(entry
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("debian-12-k8s-plain-"));
    for f in [
        "install/install.sh",
        "install/provision.sh",
        "install/haimg",
    ] {
        assert!(entry.join(f).is_file(), "{f} staged");
    }

    let spec = dir.path().join("lab.yaml");
    std::fs::copy(repo().join("examples/lab.yaml"), &spec).unwrap();
    let state = dir.path().join("state");
    let before = sysctls();
    let moto = moto_server();
    let o = run(lab(
        &[
            "up",
            "--image",
            entry.to_str().unwrap(),
            "--timeout",
            "600",
            "--moto-server",
            moto.to_str().unwrap(),
        ],
        &spec,
        &state,
    ));
    let err = stderr(&o);
    eprintln!("{err}");
    if !o.status.success() {
        show_failed_logs(&state);
    }
    let checks = std::panic::catch_unwind(|| {
        assert!(o.status.success(), "lab up: {err}");
        assert!(
            err.contains("a plain base: each node installs everything at boot"),
            "{err}"
        );
        let logs: Vec<String> = ["m1", "m2", "m3", "w1"]
            .iter()
            .map(|k| console(&state, k))
            .collect();
        for (k, l) in logs.iter().enumerate() {
            let installed = l
                .find("haimg-provision: OK debian-12-k8s")
                .unwrap_or_else(|| panic!("node {k} installed:\n{l}"));
            let preflight = l.find("preflight passed").expect("the agent ran");
            assert!(
                installed < preflight,
                "node {k}: the install before the agent"
            );
            assert!(
                !l.contains("another master published join material first"),
                "node {k}"
            );
        }
        assert_eq!(
            logs.iter()
                .filter(|l| l.contains("cluster initialized"))
                .count(),
            1,
            "exactly one init"
        );
        assert_eq!(logs.iter().filter(|l| l.contains(": joined")).count(), 3);
        let nodes = kubectl(&state, &["get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"]);
        assert_eq!(
            nodes.lines().filter(|l| l.ends_with("=True")).count(),
            4,
            "{nodes}"
        );
        assert_cloud_init_succeeded(&state, &["m1", "m2", "m3", "w1"]);
        // What a baked image carries, the install made: the manifest, with every image.
        let m: serde_json::Value = serde_json::from_str(&node_exec(
            &state,
            "m2",
            &["cat", "/etc/haimg/image-manifest.json"],
        ))
        .unwrap();
        assert!(
            m["images"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["image"] == "localhost/haimg/haproxy:2.6.12-1-deb12u4"),
            "{m}"
        );
    });
    let o = run(lab(&["down"], &spec, &state));
    assert!(o.status.success(), "lab down: {}", stderr(&o));
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }
    assert_nothing_left(&state, &before);
}

/// Every cloud-init stage succeeded on every node: a failed stage is a defect of the image
/// or the user-data (a failed config stage once left a plain node's final stage waiting).
fn assert_cloud_init_succeeded(state: &Path, keys: &[&str]) {
    for k in keys {
        let results = node_exec(
            state,
            k,
            &[
                "systemctl",
                "show",
                "--property=Result",
                "--value",
                "cloud-init-local.service",
                "cloud-init.service",
                "cloud-config.service",
                "cloud-final.service",
            ],
        );
        assert_eq!(
            // systemctl show puts a blank line between units.
            results
                .lines()
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>(),
            ["success"; 4],
            "{k}: cloud-init's four units"
        );
    }
}

/// Runs `cmd` inside a node (its namespaces, as its own systemd sees them): how a test
/// reaches what only the node can do. The product has no such door.
fn node_exec(state: &Path, key: &str, cmd: &[&str]) -> String {
    let launcher: i32 = std::fs::read_to_string(state.join("nodes").join(key).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The launcher is systemd-nspawn; the node's PID 1 is its child.
    let children =
        std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).unwrap();
    let init = children.split_whitespace().next().expect("the node's init");
    let o = Command::new("nsenter")
        .args([
            "--target", init, "--mount", "--uts", "--ipc", "--net", "--pid",
        ])
        .args(cmd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{cmd:?} in {key}: {}", stderr(&o));
    stdout(&o)
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn the_labs_vendor_data_is_cloud_config_cloud_init_accepts() {
    use haimg::lab::dropins::{vendor_data, AwsEndpoints};
    for ssm in [Some("http://10.0.0.1:5000".to_string()), None] {
        let v = vendor_data(&AwsEndpoints {
            ssm,
            autoscaling: "http://10.0.0.1:8080".into(),
        });
        cloud_init_schema(&v, "the lab's vendor-data");
    }
}

/// A plain base's user-data (`bake --plain`): each node's rendered user-data with the
/// install put first in its runcmd, still cloud-config that cloud-init accepts.
#[test]
fn a_plain_bases_user_data_is_the_rendered_one_with_the_install_first() {
    for args in [
        &["--role", "master", "--node", "m1"][..],
        &["--role", "worker", "--pool", "general"][..],
    ] {
        let mut c = haimg();
        c.args(["render", "-c"])
            .arg(repo().join("examples/lab.yaml"))
            .args(args);
        let o = run(c);
        assert!(o.status.success(), "{}", stderr(&o));
        let rendered = stdout(&o);
        let plain =
            String::from_utf8(haimg::lab::plain::user_data(rendered.as_bytes()).unwrap()).unwrap();
        cloud_init_schema(&plain, &format!("a plain base's user-data ({args:?})"));
        let runcmd = &plain[plain.find("\nruncmd:\n").unwrap()..];
        let install = runcmd.find("/run/haimg-stage/install.sh").unwrap();
        assert!(
            install < runcmd.find("haimg-watch.service").unwrap(),
            "{runcmd}"
        );
        assert_eq!(
            plain.len() - rendered.len(),
            plain
                .find("  # haimg lab, plain base")
                .map(|i| { plain[i..].find("]\n").unwrap() + 2 })
                .unwrap(),
            "only the install entry is added"
        );
    }
}

#[test]
fn clusters_the_lab_cannot_run_and_missing_tools_and_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let nlb = repo().join("examples/cluster.yaml");
    let o = run(lab(&["up", "--image", "/nonexistent"], &nlb, &state));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("endpoint.type: vip"), "{}", stderr(&o));
    let spec = dir.path().join("lab.yaml");
    std::fs::copy(repo().join("examples/lab.yaml"), &spec).unwrap();
    let o = run(lab(
        &[
            "up",
            "--image",
            "/nonexistent/disk.qcow2",
            "--moto-server",
            "/nonexistent/moto",
        ],
        &spec,
        &state,
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`/nonexistent/moto` is not installed"),
        "{}",
        stderr(&o)
    );
    let moto = moto_server();
    let o = run(lab(
        &[
            "up",
            "--image",
            "/nonexistent/disk.qcow2",
            "--moto-server",
            moto.to_str().unwrap(),
        ],
        &spec,
        &state,
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/nonexistent/disk.qcow2: no such file"),
        "{}",
        stderr(&o)
    );
    let o = run(lab(&["scale", "general", "2"], &spec, &state));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not up"), "{}", stderr(&o));
    assert!(!state.exists(), "nothing made for a bad input");
}
