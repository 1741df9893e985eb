//! The fleet simulation harness: a moto server on loopback, one small IMDSv2 server per
//! node, the strict kubeadm/kubectl doubles, and real `haimg node …` processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ssm::config::Credentials;

use super::{repo, venv};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A moto server on 127.0.0.1, killed on drop.
pub struct Moto {
    pub port: u16,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts (scripts/install-test-deps.sh installs it)");
        wait_for_port(port, "moto");
        Moto { port, child }
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub async fn sdk(&self) -> aws_config::SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(self.url())
            .region(Region::new("us-west-2"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one node's IMDS answers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance_id: String,
    pub hostname: String,
    pub private_ip: String,
    pub az: String,
}

/// A minimal IMDSv2: PUT /latest/api/token, then GETs that carry the token.
pub struct Imds {
    pub port: u16,
    pub lifecycle: Arc<Mutex<Option<String>>>,
    /// How many times the lifecycle state was asked for (what a test waits on).
    pub lifecycle_polls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Imds {
    pub fn start(id: Identity) -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let lifecycle = Arc::new(Mutex::new(None::<String>));
        let lc = lifecycle.clone();
        let lifecycle_polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let polls = lifecycle_polls.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let id = id.clone();
                let lc = lc.clone();
                let polls = polls.clone();
                std::thread::spawn(move || serve(conn, &id, &lc, &polls));
            }
        });
        Imds {
            port,
            lifecycle,
            lifecycle_polls,
        }
    }
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
    pub fn set_lifecycle(&self, state: &str) {
        *self.lifecycle.lock().unwrap() = Some(state.to_string());
    }
}

const IMDS_TOKEN: &str = "imds-session-token";

fn serve(
    mut conn: TcpStream,
    id: &Identity,
    lifecycle: &Mutex<Option<String>>,
    polls: &std::sync::atomic::AtomicUsize,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut token_ok = false;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("x-aws-ec2-metadata-token:") && h.contains(IMDS_TOKEN) {
            token_ok = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let (status, text) = if method == "PUT" && path == "/latest/api/token" {
        ("200 OK", IMDS_TOKEN.to_string())
    } else if !token_ok {
        ("401 Unauthorized", String::new())
    } else {
        match path.trim_start_matches("/latest/meta-data/") {
            "instance-id" => ("200 OK", id.instance_id.clone()),
            "local-hostname" => ("200 OK", id.hostname.clone()),
            "local-ipv4" => ("200 OK", id.private_ip.clone()),
            "placement/availability-zone" => ("200 OK", id.az.clone()),
            "autoscaling/target-lifecycle-state" => {
                polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let state = lifecycle.lock().unwrap().clone();
                match state {
                    Some(s) => ("200 OK", s),
                    None => ("404 Not Found", String::new()),
                }
            }
            _ => ("404 Not Found", String::new()),
        }
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

/// Writes an executable wrapper that runs a Python double with the test virtualenv.
pub fn double(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\nexec {} {} \"$@\"\n",
        venv().join("bin/python").display(),
        repo().join(format!("tests/doubles/{name}.py")).display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// One simulated node: its root directory, IMDS and node config.
pub struct Node {
    pub name: String,
    pub id: Identity,
    pub root: PathBuf,
    pub imds: Imds,
    pub extra_env: Vec<(String, String)>,
    /// containerd's CRI socket, listening for the agent's preflight.
    pub cri: Option<std::os::unix::net::UnixListener>,
}

/// What the agent's preflight reads on a healthy node: cgroup v2 at /sys/fs/cgroup, no
/// swap, ip_forward and br_netfilter on, and containerd listening on its socket.
pub fn prepare_node_root(root: &Path) -> std::os::unix::net::UnixListener {
    let w = |p: &str, s: &str| {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, s).unwrap();
    };
    w(
        "proc/self/mountinfo",
        "22 1 259:1 / / rw - ext4 /dev/root rw\n30 26 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
    );
    w("proc/swaps", "Filename Type Size Used Priority\n");
    w("proc/sys/net/ipv4/ip_forward", "1\n");
    w("proc/sys/net/bridge/bridge-nf-call-iptables", "1\n");
    let sock = root.join("run/containerd/containerd.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&sock);
    std::os::unix::net::UnixListener::bind(&sock).unwrap()
}

/// A fleet's shared parts.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub moto: Moto,
    pub kubeadm: PathBuf,
    pub kubectl: PathBuf,
    pub cluster_dir: PathBuf,
    pub kubernetes_version: String,
}

impl Fleet {
    pub fn new(moto: Moto) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let kubeadm = double(dir.path(), "kubeadm");
        let kubectl = double(dir.path(), "kubectl");
        let cluster_dir = dir.path().join("cluster");
        std::fs::create_dir_all(&cluster_dir).unwrap();
        Fleet {
            dir,
            moto,
            kubeadm,
            kubectl,
            cluster_dir,
            kubernetes_version: "1.30.4".into(),
        }
    }

    /// A node with `config` (YAML) as its node.yaml and the image's CNI manifest.
    pub fn node(&self, name: &str, id: Identity, config: &str) -> Node {
        let root = self.dir.path().join("nodes").join(name);
        std::fs::create_dir_all(root.join("etc/haimg")).unwrap();
        std::fs::write(root.join("etc/haimg/node.yaml"), config).unwrap();
        std::fs::create_dir_all(root.join("usr/share/haimg/cni")).unwrap();
        std::fs::write(
            root.join("usr/share/haimg/cni/manifest.yaml"),
            "# baked CNI manifest\n",
        )
        .unwrap();
        let imds = Imds::start(id.clone());
        let cri = Some(prepare_node_root(&root));
        Node {
            name: name.into(),
            id,
            root,
            imds,
            extra_env: vec![],
            cri,
        }
    }

    /// Starts `haimg node <sub>` for a node, in its own process group, logging to a file.
    pub fn spawn(&self, node: &Node, sub: &str) -> Child {
        let log = std::fs::File::create(self.log_path(node, sub)).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_haimg"));
        cmd.args(["node", sub])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("HAIMG_ROOT", &node.root)
            .env("HAIMG_NODE_CONFIG", node.root.join("etc/haimg/node.yaml"))
            .env("HAIMG_KUBEADM", &self.kubeadm)
            .env("HAIMG_KUBECTL", &self.kubectl)
            .env("HAIMG_LOG", "info")
            .env("FAKE_CLUSTER_DIR", &self.cluster_dir)
            .env("FAKE_NODE_NAME", &node.name)
            .env("FAKE_KUBERNETES_VERSION", &self.kubernetes_version)
            .env(
                "FAKE_REAL_KUBEADM_DIR",
                super::shared_tool("kubeadm-1.30.0").parent().unwrap(),
            )
            .env("AWS_ENDPOINT_URL", self.moto.url())
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", node.imds.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_MAX_ATTEMPTS", "2")
            .envs(node.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        cmd.spawn().unwrap()
    }

    /// Runs `haimg node <sub>` on every node at once and asserts each succeeds in time.
    pub fn run_all(&self, nodes: &[Node], sub: &str, timeout: Duration) {
        let mut children: Vec<_> = nodes.iter().map(|n| self.spawn(n, sub)).collect();
        for (n, child) in nodes.iter().zip(children.iter_mut()) {
            let status = wait_child(child, timeout);
            assert!(
                status.is_some_and(|s| s.success()),
                "{} `{sub}` failed:\n{}",
                n.name,
                self.log(n, sub)
            );
        }
    }

    pub fn log_path(&self, node: &Node, sub: &str) -> PathBuf {
        self.dir.path().join(format!("{}-{sub}.log", node.name))
    }

    pub fn log(&self, node: &Node, sub: &str) -> String {
        std::fs::read_to_string(self.log_path(node, sub)).unwrap_or_default()
    }

    /// Every double invocation so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.cluster_dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn events_of(&self, cmd: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["cmd"] == cmd)
            .collect()
    }
}

/// Waits for a child, bounded; kills it (and its process group) on timeout.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            kill_group(child);
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
}

/// Polls `f` until it returns true, bounded.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A recording stand-in for an AWS API moto does not implement (CompleteLifecycleAction
/// answers 500 there): answers every request with `response` and keeps the request bodies.
pub struct Recorder {
    pub port: u16,
    /// (arrival time in seconds since the epoch, request body)
    pub requests: Arc<Mutex<Vec<(f64, String)>>>,
}

impl Recorder {
    /// Answers every awsquery request with an empty result for its own `Action`.
    pub fn start_awsquery() -> Recorder {
        Self::start_with(|body| {
            let action = body
                .split('&')
                .find_map(|kv| kv.strip_prefix("Action="))
                .unwrap_or("Unknown")
                .to_string();
            format!(
                r#"<{action}Response xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><{action}Result/><ResponseMetadata><RequestId>7c6e177f-f082-11e1-ac58-3714bEXAMPLE</RequestId></ResponseMetadata></{action}Response>"#
            )
        })
    }

    pub fn start(response: &'static str) -> Recorder {
        Self::start_with(move |_| response.to_string())
    }

    fn start_with(respond: impl Fn(&str) -> String + Send + 'static) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64();
                let body = String::from_utf8_lossy(&body).into_owned();
                let response = respond(&body);
                reqs.lock().unwrap().push((at, body));
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{response}", response.len());
            }
        });
        Recorder { port, requests }
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub const COMPLETE_LIFECYCLE_ACTION_RESPONSE: &str = r#"<CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><CompleteLifecycleActionResult/><ResponseMetadata><RequestId>7c6e177f-f082-11e1-ac58-3714bEXAMPLE</RequestId></ResponseMetadata></CompleteLifecycleActionResponse>"#;

// ---- a simulated cluster: what `haimg up` would have created in moto ----

use haimg::contract::node_config::{AgentSettings, NodeConfig};
use haimg::render::Group;

pub struct Cluster {
    pub fleet: Fleet,
    pub masters: Vec<Identity>,
    pub workers: Vec<Identity>,
    pub sdk: aws_config::SdkConfig,
}

/// Test timings: short leases and polls so scenarios run in seconds.
pub fn settings() -> AgentSettings {
    AgentSettings {
        init_lease_seconds: 3,
        join_timeout_seconds: 90,
        poll_initial_millis: 200,
        poll_max_millis: 1000,
        min_remaining_seconds: 60,
        kubeadm_timeout_seconds: 60,
        membership_wait_seconds: 5,
        watch_interval_seconds: 1,
        drain_timeout_seconds: 10,
        ..AgentSettings::default()
    }
}

/// The node.yaml `haimg render` writes for the example's masters or its worker pool,
/// with test timings.
pub fn node_yaml(master: bool, tweak: impl FnOnce(&mut NodeConfig)) -> String {
    let spec = haimg::spec::load_str(haimg::spec::EXAMPLE, "example")
        .unwrap()
        .spec;
    let group = if master {
        Group::Master
    } else {
        Group::Worker(&spec.worker_pools[0])
    };
    let mut cfg = haimg::render::node_config(&spec, group);
    cfg.agent = settings();
    tweak(&mut cfg);
    haimg::yaml::to_string(&cfg)
}

pub async fn identities(sdk: &aws_config::SdkConfig, group: &str) -> Vec<Identity> {
    let asg = aws_sdk_autoscaling::Client::new(sdk);
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let g = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .unwrap();
    let ids: Vec<String> = g.auto_scaling_groups()[0]
        .instances()
        .iter()
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    let out = ec2
        .describe_instances()
        .set_instance_ids(Some(ids))
        .send()
        .await
        .unwrap();
    let mut v: Vec<Identity> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| Identity {
            instance_id: i.instance_id().unwrap().into(),
            hostname: i.private_dns_name().unwrap().into(),
            private_ip: i.private_ip_address().unwrap().into(),
            az: i
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap()
                .into(),
        })
        .collect();
    v.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    v
}

/// moto with what `haimg up` would have created: the NLB and the two Auto Scaling groups.
pub async fn cluster(masters: i32, workers: i32) -> Cluster {
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.0.1.0/24")
        .availability_zone("us-west-2a")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
    aws_sdk_elasticloadbalancingv2::Client::new(&sdk)
        .create_load_balancer()
        .name("demo-api")
        .subnets(&subnet_id)
        .r#type(aws_sdk_elasticloadbalancingv2::types::LoadBalancerTypeEnum::Network)
        .scheme(aws_sdk_elasticloadbalancingv2::types::LoadBalancerSchemeEnum::Internal)
        .send()
        .await
        .unwrap();
    let image = ec2.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    ec2.create_launch_template()
        .launch_template_name("demo-test")
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id(image)
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Large)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let asg = aws_sdk_autoscaling::Client::new(&sdk);
    for (name, n) in [("demo-master", masters), ("demo-worker-general", workers)] {
        asg.create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_name("demo-test")
                    .version("$Default")
                    .build(),
            )
            .min_size(n)
            .max_size(n + 2)
            .desired_capacity(n)
            .vpc_zone_identifier(&subnet_id)
            .tags(
                aws_sdk_autoscaling::types::Tag::builder()
                    .key("haimg:cluster")
                    .value("demo")
                    .propagate_at_launch(true)
                    .resource_id(name)
                    .resource_type("auto-scaling-group")
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    let m = identities(&sdk, "demo-master").await;
    let w = identities(&sdk, "demo-worker-general").await;
    let all: Vec<String> = m.iter().chain(&w).map(|i| i.instance_id.clone()).collect();
    ec2.create_tags()
        .set_resources(Some(all))
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("haimg:cluster")
                .value("demo")
                .build(),
        )
        .send()
        .await
        .unwrap();
    Cluster {
        fleet: Fleet::new(moto),
        masters: m,
        workers: w,
        sdk,
    }
}

pub async fn parameter(sdk: &aws_config::SdkConfig, name: &str) -> Option<serde_json::Value> {
    let out = aws_sdk_ssm::Client::new(sdk)
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .ok()?;
    serde_json::from_str(out.parameter()?.value()?).ok()
}

/// Three masters with a real etcd whose members carry the masters' node names.
pub async fn masters_with_etcd(masters: i32) -> (Cluster, Vec<Node>, super::etcd::EtcdCluster) {
    let c = cluster(masters, 0).await;
    let names: Vec<String> = c.masters.iter().map(|m| m.hostname.clone()).collect();
    let etcd = super::etcd::EtcdCluster::start(&names);
    let nodes: Vec<Node> = c
        .masters
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let endpoint = etcd.endpoint(i);
            c.fleet.node(
                &format!("m{i}"),
                id.clone(),
                &node_yaml(true, |cfg| {
                    cfg.agent.etcd.endpoint = endpoint;
                    cfg.agent.membership_wait_seconds = 120;
                }),
            )
        })
        .collect();
    c.fleet
        .run_all(&nodes, "bootstrap", Duration::from_secs(120));
    (c, nodes, etcd)
}
