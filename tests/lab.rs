//! `haimg lab`, for real: the debian-12 image baked locally, then three masters behind the
//! keepalived VIP and one worker booted from it as system containers, each with exactly its
//! rendered user-data, static credentials (no AWS). Checked from outside the nodes (there is
//! no way in): the agents' own console lines, kubectl through the VIP, etcd's member list,
//! CoreDNS answering, no port 22, no route out, no secret in any log. Then `lab down`
//! leaves nothing: no namespace, mount, cgroup, process or file, and the machine-wide
//! sysctls as they were.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn agent() -> PathBuf {
    std::env::var_os("HAIMG_TEST_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_haimg")))
}

/// A debian-12 image in `store` (a cache hit when the inputs did not change).
fn image(store: &Path) -> PathBuf {
    let mut c = haimg();
    c.args(["bake", "debian-12", "--target", "qemu", "--store"])
        .arg(store)
        .arg("--sources")
        .arg(kube_artifacts())
        .arg("--haimg-binary")
        .arg(agent())
        .args(["--output", "json"]);
    let o = run(c);
    assert!(o.status.success(), "bake: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    PathBuf::from(v["image"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
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

fn sh(netns: &str, cmd: &[&str]) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} in {netns}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn kubectl(state: &Path, args: &[&str]) -> String {
    let k = state.join("lower/usr/bin/kubectl");
    let conf = state.join("admin.conf");
    let mut all = vec![k.to_str().unwrap(), "--kubeconfig", conf.to_str().unwrap()];
    all.extend_from_slice(args);
    sh("haimg-lab", &all)
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
        assert!(
            !cmd.contains(state.to_str().unwrap()),
            "process left: {cmd}"
        );
    }
    assert_eq!(
        sysctls(),
        before,
        "the machine-wide sysctls are back ({SYSCTLS:?})"
    );
}

fn consoles(state: &Path) -> Vec<(String, String)> {
    ["m1", "m2", "m3", "w1"]
        .iter()
        .map(|k| {
            let p = state.join("nodes").join(k).join("console.log");
            (
                k.to_string(),
                std::fs::read_to_string(&p).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn three_masters_and_a_worker_from_the_local_image_form_a_cluster_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let image = image(&dir.path().join("store"));
    let spec = dir.path().join("lab.yaml");
    std::fs::copy(repo().join("examples/lab.yaml"), &spec).unwrap();
    let state = dir.path().join("state");
    let before = sysctls();

    let o = run(lab(
        &["up", "--image", image.to_str().unwrap(), "--timeout", "480"],
        &spec,
        &state,
    ));
    let err = stderr(&o);
    eprintln!("{err}");
    let checks = std::panic::catch_unwind(|| {
        assert!(o.status.success(), "lab up: {err}");
        let logs = consoles(&state);
        let count = |needle: &str| logs.iter().filter(|(_, l)| l.contains(needle)).count();
        // Exactly one init; two control-plane joins; one worker join (the agents' own words).
        assert_eq!(count("running command=kubeadm init"), 1);
        assert!(
            logs[0]
                .1
                .contains("cluster initialized with static credentials"),
            "m1 inits"
        );
        assert_eq!(count("joining as control-plane node"), 2);
        assert_eq!(count(": joined"), 3);
        assert!(logs[3].1.contains("role=\"worker\""), "w1 is a worker");

        // Every node Ready, seen through the VIP.
        let nodes = kubectl(&state, &["get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"]);
        let mut got: Vec<&str> = nodes.lines().collect();
        got.sort();
        assert_eq!(
            got,
            [
                "ip-10-0-0-201.us-west-2.compute.internal=True",
                "m1=True",
                "m2=True",
                "m3=True"
            ],
            "{nodes}"
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
        assert_eq!(
            sh(
                "haimg-lab",
                &["curl", "-sk", "https://10.0.0.100:6443/readyz"]
            ),
            "ok"
        );

        // etcd: three started members (a started member has a name).
        // (the etcd image has no etcdctl: this machine's, with the API server's client
        // certificate read from m1's disk, as an operator would from a volume snapshot).
        let pki = state.join("nodes/m1/root/etc/kubernetes/pki");
        let arg = |k: &str, f: &str| format!("--{k}={}", pki.join(f).display());
        let (ca, cert, key) = (
            arg("cacert", "etcd/ca.crt"),
            arg("cert", "apiserver-etcd-client.crt"),
            arg("key", "apiserver-etcd-client.key"),
        );
        let members = sh(
            "haimg-lab",
            &[
                "etcdctl",
                "--endpoints=https://10.0.0.11:2379",
                &ca,
                &cert,
                &key,
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

        // No secret in any console or in the metadata stand-in's log.
        let creds = std::fs::read_to_string(dir.path().join("lab-credentials.yaml")).unwrap();
        let field = |k: &str| {
            creds
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .unwrap()
                .to_string()
        };
        let imds = std::fs::read_to_string(state.join("imds.log")).unwrap();
        for secret in [field("token"), field("certificateKey")] {
            let secret_part = secret.split('.').next_back().unwrap();
            for (k, l) in logs
                .iter()
                .chain([("imds".to_string(), imds.clone())].iter())
            {
                assert!(!l.contains(secret_part), "a secret in {k}'s log");
            }
        }

        let o = run(lab(&["status", "--output", "json"], &spec, &state));
        assert!(o.status.success(), "status: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["healthy"], true, "{v}");

        // Failover: the VIP's holder stops; the VIP moves and the API answers through it again.
        let masters = ["m1", "m2", "m3"];
        let holds = |k: &str| {
            sh(
                &format!("haimg-lab-{k}"),
                &["ip", "-o", "addr", "show", "dev", "eth0"],
            )
            .contains(" 10.0.0.100/")
        };
        let holder = *masters
            .iter()
            .find(|k| holds(k))
            .expect("a master holds the VIP");
        let readyz = |url: &str| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    "haimg-lab",
                    "curl",
                    "-sk",
                    "--max-time",
                    "2",
                    url,
                ])
                .output()
                .map(|o| o.stdout == b"ok")
                .unwrap_or(false)
        };
        let t = std::time::Instant::now();
        let o = run(lab(&["stop", holder], &spec, &state));
        assert!(o.status.success(), "lab stop: {}", stderr(&o));
        let stopped = t.elapsed();
        let bound = std::time::Duration::from_secs(60);
        while !readyz("https://10.0.0.100:6443/readyz") {
            assert!(
                t.elapsed() < stopped + bound,
                "the API did not answer through the VIP within {bound:?} of {holder} stopping"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let back = t.elapsed() - stopped;
        let new_holder: Vec<&str> = masters
            .iter()
            .copied()
            .filter(|k| *k != holder && holds(k))
            .collect();
        assert_eq!(
            new_holder.len(),
            1,
            "exactly one other master holds the VIP"
        );
        eprintln!("failover: {holder} stopped in {:.1} s; the API answered through the VIP on {} {:.1} s later", stopped.as_secs_f64(), new_holder[0], back.as_secs_f64());
        let others: Vec<String> = masters
            .iter()
            .filter(|k| **k != holder)
            .map(|k| format!("https://10.0.0.1{}:2379", &k[1..]))
            .collect();
        let health = |endpoints: &str| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    "haimg-lab",
                    "etcdctl",
                    &format!("--endpoints={endpoints}"),
                    &ca,
                    &cert,
                    &key,
                    "endpoint",
                    "health",
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        assert!(
            health(&others.join(",")),
            "the other two etcd members keep quorum"
        );
        let nodes = kubectl(&state, &["get", "nodes", "-o", "name"]);
        assert_eq!(
            nodes.lines().count(),
            4,
            "the API serves reads without {holder}: {nodes}"
        );

        // It comes back healthy: its etcd member and its API server answer again.
        let o = run(lab(&["start", holder], &spec, &state));
        assert!(o.status.success(), "lab start: {}", stderr(&o));
        let all = "https://10.0.0.11:2379,https://10.0.0.12:2379,https://10.0.0.13:2379";
        let own = format!("https://10.0.0.1{}:6444/readyz", &holder[1..]);
        let t = std::time::Instant::now();
        while !(health(all) && readyz(&own)) {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(240),
                "{holder} did not come back healthy"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        eprintln!(
            "failover: {holder} healthy again {:.1} s after its start",
            t.elapsed().as_secs_f64()
        );
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
    let o = run(lab(
        &["up", "--image", image.to_str().unwrap(), "--timeout", "1"],
        &spec,
        &state,
    ));
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
fn clusters_the_lab_cannot_run_and_missing_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let nlb = repo().join("examples/cluster.yaml");
    let o = run(lab(&["up", "--image", "/nonexistent"], &nlb, &state));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("endpoint.type: vip"), "{}", stderr(&o));
    let spec = dir.path().join("lab.yaml");
    std::fs::copy(repo().join("examples/lab.yaml"), &spec).unwrap();
    let o = run(lab(
        &["up", "--image", "/nonexistent/disk.qcow2"],
        &spec,
        &state,
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/nonexistent/disk.qcow2: no such file"),
        "{}",
        stderr(&o)
    );
    assert!(!state.exists(), "nothing made for a bad input");
}
