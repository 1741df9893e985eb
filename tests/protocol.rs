//! The agent's protocol under real timing: leases held by slow holders, holders that fail
//! or freeze, rotations that overlap joins or fail half-way, and addresses EC2 recycles.
//! Real `haimg node` processes against moto, with the strict kubeadm/kubectl doubles
//! (tests/common/fleet.rs). Every wait is on an observable event: a double's event, a
//! log line, a parameter's value, or a lease's own expiry time.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::fleet::*;
use common::proxy::Proxy;

const BOUND: Duration = Duration::from_secs(120);

/// Makes the published control-plane material look `age` old, so the next refresh rotates.
async fn age_material(c: &Cluster, age: Duration) {
    let mut v = parameter(&c.sdk, "/haimg/demo/join/control-plane")
        .await
        .unwrap();
    v["issuedAt"] = humantime::format_rfc3339_seconds(SystemTime::now() - age)
        .to_string()
        .into();
    put_secure(c, "/haimg/demo/join/control-plane", &v).await;
}

async fn put_secure(c: &Cluster, name: &str, v: &serde_json::Value) {
    aws_sdk_ssm::Client::new(&c.sdk)
        .put_parameter()
        .name(name)
        .value(v.to_string())
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
}

/// The certificate key the (simulated) cluster's uploaded certificates are encrypted with.
fn live_key(f: &Fleet) -> String {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.cluster_dir.join("state.json")).unwrap())
            .unwrap();
    s["certificateKey"]["key"].as_str().unwrap().to_string()
}

/// A gate file for FAKE_KUBEADM_GATE: kubeadm holds until it exists.
fn gate(f: &Fleet, name: &str) -> PathBuf {
    f.dir.path().join(format!("gate-{name}"))
}

fn open_gate(p: &Path) {
    std::fs::write(p, "").unwrap();
}

/// This node's double events, as command names (failed ones marked).
fn cmds_of(f: &Fleet, node: &str, keep: &[&str]) -> Vec<String> {
    f.events()
        .into_iter()
        .filter(|e| e["node"] == node && keep.iter().any(|k| e["cmd"] == *k))
        .map(|e| {
            let c = e["cmd"].as_str().unwrap().to_string();
            if e["failed"] == true {
                format!("{c}!")
            } else if e["orphan"] == true {
                format!("{c}(orphan)")
            } else {
                c
            }
        })
        .collect()
}

fn with(
    f: &Fleet,
    name: &str,
    id: &Identity,
    master: bool,
    tweak: impl FnOnce(&mut haimg::contract::node_config::NodeConfig),
    env: &[(&str, String)],
) -> Node {
    let mut n = f.node(name, id.clone(), &node_yaml(master, tweak));
    n.extra_env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    n
}

/// A node config tweak: this init lease.
fn init_lease(secs: u64) -> impl Fn(&mut haimg::contract::node_config::NodeConfig) + Copy {
    move |cfg| cfg.agent.init_lease_seconds = secs
}

/// Master m0 with an init lease of `lease_secs`, whose `kubeadm init` holds until the
/// returned gate is opened.
fn gated_init_holder(f: &Fleet, c: &Cluster, lease_secs: u64) -> (Node, PathBuf) {
    let g = gate(f, "init");
    let m0 = with(
        f,
        "m0",
        &c.masters[0],
        true,
        init_lease(lease_secs),
        &[("FAKE_KUBEADM_GATE", format!("init:{}", g.display()))],
    );
    (m0, g)
}

/// Starts m0's bootstrap and waits until its kubeadm init is held at the gate.
fn start_gated(f: &Fleet, m0: &Node) -> std::process::Child {
    let child = f.spawn(m0, "bootstrap");
    eventually("m0's kubeadm init to start", BOUND, || {
        !f.events_of("init-gated").is_empty()
    });
    child
}

/// Waits until a lease lock has been held for longer than `lease` by the reader's clock,
/// so a takeover would be allowed were it not renewed.
async fn wait_past_lease(c: &Cluster, lock: &str, lease: Duration) {
    let lock = parameter(&c.sdk, lock).await.expect("the lock exists");
    let acquired = humantime::parse_rfc3339_weak(lock["acquiredAt"].as_str().unwrap()).unwrap();
    eventually("the lease's first term to pass", BOUND, || {
        SystemTime::now() > acquired + lease + lease
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_that_loses_its_key_to_a_rotation_rereads_the_material_and_joins() {
    let c = cluster(2, 0).await;
    let f = &c.fleet;
    let m0 = f.node("m0", c.masters[0].clone(), &node_yaml(true, |_| {}));
    f.run_all(std::slice::from_ref(&m0), "bootstrap", BOUND);
    // m1 reads generation 1 and starts its join; it may try kubeadm only once.
    let g = gate(f, "join");
    let m1 = with(
        f,
        "m1",
        &c.masters[1],
        true,
        |cfg| cfg.agent.kubeadm_attempts = 1,
        &[("FAKE_KUBEADM_GATE", format!("join:{}", g.display()))],
    );
    let mut joining = f.spawn(&m1, "bootstrap");
    eventually("m1's join to start", BOUND, || {
        f.events_of("join-gated").iter().any(|e| e["node"] == "m1")
    });
    // While it joins, the material is rotated: upload-certs kills the key m1 holds.
    age_material(&c, Duration::from_secs(8000)).await;
    let mut refresh = f.spawn(&m0, "refresh");
    assert!(
        wait_child(&mut refresh, BOUND).unwrap().success(),
        "{}",
        f.log(&m0, "refresh")
    );
    assert_eq!(
        parameter(&c.sdk, "/haimg/demo/join/control-plane")
            .await
            .unwrap()["generation"],
        2
    );
    open_gate(&g);
    assert!(
        wait_child(&mut joining, BOUND).unwrap().success(),
        "{}",
        f.log(&m1, "bootstrap")
    );
    assert_eq!(
        cmds_of(f, "m1", &["join-start", "join", "reset"]),
        ["join-start", "join!", "reset", "join-start", "join"],
        "the join with the dead key failed, was reset and retried with the new material"
    );
    assert!(
        f.log(&m1, "bootstrap")
            .contains("rotated (generation 1 to 2)"),
        "{}",
        f.log(&m1, "bootstrap")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_that_uploaded_but_did_not_publish_is_redone_by_the_next_run() {
    let c = cluster(2, 0).await;
    let f = &c.fleet;
    let proxy = Proxy::start(&f.moto);
    let m0 = with(
        f,
        "m0",
        &c.masters[0],
        true,
        |_| {},
        &[("AWS_ENDPOINT_URL", proxy.url.clone())],
    );
    f.run_all(std::slice::from_ref(&m0), "bootstrap", BOUND);
    age_material(&c, Duration::from_secs(8000)).await;
    // SSM refuses the publication (once) after upload-certs made the new key the live one.
    proxy.set_rules(serde_json::json!([{
        "action": "ssm:PutParameter", "body": "join/control-plane", "times": 1,
        "error": {"status": 400, "code": "AccessDeniedException", "message": "injected"}
    }]));
    let mut refresh = f.spawn(&m0, "refresh");
    assert_eq!(
        wait_child(&mut refresh, BOUND).unwrap().code(),
        Some(1),
        "{}",
        f.log(&m0, "refresh")
    );
    let published = parameter(&c.sdk, "/haimg/demo/join/control-plane")
        .await
        .unwrap();
    assert_eq!(published["generation"], 1);
    assert_ne!(
        published["certificateKey"],
        live_key(f).as_str(),
        "the published key is dead now"
    );

    // Make the (dead) material look fresh: the unfinished rotation alone must trigger the
    // next one, not the half-life an hour away.
    age_material(&c, Duration::ZERO).await;
    let mut again = f.spawn(&m0, "refresh");
    assert!(
        wait_child(&mut again, BOUND).unwrap().success(),
        "{}",
        f.log(&m0, "refresh")
    );
    let published = parameter(&c.sdk, "/haimg/demo/join/control-plane")
        .await
        .unwrap();
    assert_eq!(published["generation"], 2);
    assert_eq!(
        published["certificateKey"],
        live_key(f).as_str(),
        "what is published is the live key"
    );
    // A master joins with it (the double refuses a key that does not decrypt the certs).
    let m1 = f.node("m1", c.masters[1].clone(), &node_yaml(true, |_| {}));
    f.run_all(std::slice::from_ref(&m1), "bootstrap", BOUND);
    assert_eq!(cmds_of(f, "m1", &["join"]), ["join"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_rotation_keeps_its_lease_and_never_publishes_over_a_newer_generation() {
    let c = cluster(2, 0).await;
    let f = &c.fleet;
    let lease = Duration::from_secs(2);
    let short =
        |cfg: &mut haimg::contract::node_config::NodeConfig| cfg.agent.rotation_lease_seconds = 2;
    let g = gate(f, "upload");
    let m0 = with(
        f,
        "m0",
        &c.masters[0],
        true,
        short,
        &[("FAKE_KUBEADM_GATE", format!("upload-certs:{}", g.display()))],
    );
    let m1 = with(f, "m1", &c.masters[1], true, short, &[]);
    let nodes = [m0, m1];
    f.run_all(&nodes, "bootstrap", BOUND);
    let [m0, m1] = &nodes;
    age_material(&c, Duration::from_secs(8000)).await;
    let mut slow = f.spawn(m0, "refresh");
    eventually("m0's upload-certs to start", BOUND, || {
        f.events_of("upload-certs-gated")
            .iter()
            .any(|e| e["node"] == "m0")
    });
    // Longer than the lease: m0 is slow, not dead, and renews.
    wait_past_lease(&c, "/haimg/demo/rotation/2/lock-1", lease).await;
    let lock = parameter(&c.sdk, "/haimg/demo/rotation/2/lock-1")
        .await
        .unwrap();
    assert!(
        lock["renewedAt"].is_string(),
        "the holder renews its lease: {lock}"
    );
    let mut other = f.spawn(m1, "refresh");
    assert!(
        wait_child(&mut other, BOUND).unwrap().success(),
        "{}",
        f.log(m1, "refresh")
    );
    assert!(
        f.log(m1, "refresh").contains("another master is rotating"),
        "{}",
        f.log(m1, "refresh")
    );
    assert_eq!(
        f.events_of("token-create").len(),
        1,
        "one rotation of generation 2"
    );
    assert!(parameter(&c.sdk, "/haimg/demo/rotation/2/lock-2")
        .await
        .is_none());

    // Meanwhile a newer generation appears (as after a takeover elsewhere): m0's late
    // publish must not overwrite it.
    let mut newer = parameter(&c.sdk, "/haimg/demo/join/control-plane")
        .await
        .unwrap();
    newer["generation"] = 3.into();
    put_secure(&c, "/haimg/demo/join/control-plane", &newer).await;
    open_gate(&g);
    assert!(
        wait_child(&mut slow, BOUND).unwrap().success(),
        "{}",
        f.log(m0, "refresh")
    );
    assert_eq!(
        parameter(&c.sdk, "/haimg/demo/join/control-plane")
            .await
            .unwrap()["generation"],
        3
    );
    assert!(
        f.log(m0, "refresh")
            .contains("newer generation is already published"),
        "{}",
        f.log(m0, "refresh")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_init_holder_keeps_its_lease_and_there_is_one_init() {
    let c = cluster(3, 0).await;
    let f = &c.fleet;
    let lease = Duration::from_secs(2);
    let short = init_lease(2);
    let (m0, g) = gated_init_holder(f, &c, 2);
    let mut holder = start_gated(f, &m0);
    wait_past_lease(&c, "/haimg/demo/init/lock-1", lease).await;
    let others = [
        with(f, "m1", &c.masters[1], true, short, &[]),
        with(f, "m2", &c.masters[2], true, short, &[]),
    ];
    let mut children: Vec<_> = others.iter().map(|n| f.spawn(n, "bootstrap")).collect();
    eventually("the others to find the lease held", BOUND, || {
        others.iter().all(|n| {
            f.log(n, "bootstrap")
                .contains("init lock epoch 1 is held by")
        })
    });
    open_gate(&g);
    assert!(
        wait_child(&mut holder, BOUND).unwrap().success(),
        "{}",
        f.log(&m0, "bootstrap")
    );
    for (n, ch) in others.iter().zip(children.iter_mut()) {
        assert!(
            wait_child(ch, BOUND).unwrap().success(),
            "{}",
            f.log(n, "bootstrap")
        );
    }
    assert_eq!(
        f.events_of("init-start").len(),
        1,
        "exactly one kubeadm init: {:?}",
        f.events()
    );
    assert!(
        parameter(&c.sdk, "/haimg/demo/init/lock-2").await.is_none(),
        "no takeover"
    );
    assert_eq!(
        f.events_of("join")
            .iter()
            .filter(|e| e["failed"] != true)
            .count(),
        2
    );
}

/// The refresh timer fires on the init holder mid-init (a node whose boot took longer than
/// the timer's first delay: found by the lab's plain base, which installs for ~100 s at
/// boot). admin.conf exists from kubeadm's kubeconfig phase on, but nothing is published:
/// the refresh must leave the first generation to the init, which then publishes it, with
/// no reset and one init.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_during_the_init_leaves_the_first_generation_to_the_init_holder() {
    let c = cluster(1, 0).await;
    let f = &c.fleet;
    let (m0, g) = gated_init_holder(f, &c, 60);
    let mut holder = start_gated(f, &m0);
    assert!(m0.root.join("etc/kubernetes/admin.conf").is_file());
    let mut refresh = f.spawn(&m0, "refresh");
    assert!(
        wait_child(&mut refresh, BOUND).unwrap().success(),
        "{}",
        f.log(&m0, "refresh")
    );
    assert!(
        f.log(&m0, "refresh").contains("not initialized yet"),
        "{}",
        f.log(&m0, "refresh")
    );
    assert!(
        parameter(&c.sdk, "/haimg/demo/join/control-plane")
            .await
            .is_none(),
        "the refresh published nothing"
    );
    assert!(f.events_of("token-create").is_empty(), "{:?}", f.events());
    open_gate(&g);
    assert!(
        wait_child(&mut holder, BOUND).unwrap().success(),
        "{}",
        f.log(&m0, "bootstrap")
    );
    assert_eq!(
        cmds_of(f, "m0", &["init-start", "init", "reset"]),
        ["init-start", "init"],
        "one init, never reset"
    );
    let m = parameter(&c.sdk, "/haimg/demo/join/control-plane")
        .await
        .unwrap();
    assert_eq!(m["generation"], 1);
    // Now Ready and published: the same refresh finds it fresh.
    let mut again = f.spawn(&m0, "refresh");
    assert!(wait_child(&mut again, BOUND).unwrap().success());
    assert!(
        f.log(&m0, "refresh").contains("join material is fresh"),
        "{}",
        f.log(&m0, "refresh")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_init_holder_that_lost_its_lease_resets_and_joins_the_winner() {
    let c = cluster(2, 0).await;
    let f = &c.fleet;
    let lease = Duration::from_secs(2);
    let short = init_lease(2);
    let (m0, g) = gated_init_holder(f, &c, 2);
    let mut frozen = start_gated(f, &m0);
    // The whole node freezes (a paused VM): the agent and its kubeadm. A stopped process
    // never times out: whatever happens below, the guard resumes and kills it.
    let thaw = Thaw(frozen.id());
    signal_group(&frozen, "STOP");
    wait_past_lease(&c, "/haimg/demo/init/lock-1", lease).await;
    let m1 = with(f, "m1", &c.masters[1], true, short, &[]);
    f.run_all(std::slice::from_ref(&m1), "bootstrap", BOUND);
    assert!(
        parameter(&c.sdk, "/haimg/demo/init/lock-2").await.is_some(),
        "m1 took over"
    );
    let history_before = state_history(&c).await;
    // m0 wakes up, finishes its init, finds the lease lost, resets and joins m1's cluster.
    open_gate(&g);
    signal_group(&frozen, "CONT");
    drop(thaw);
    assert!(
        wait_child(&mut frozen, BOUND).unwrap().success(),
        "{}",
        f.log(&m0, "bootstrap")
    );
    assert_eq!(
        cmds_of(
            f,
            "m0",
            &["init-start", "init", "reset", "join-start", "join"]
        ),
        ["init-start", "init(orphan)", "reset", "join-start", "join"]
    );
    assert!(
        f.log(&m0, "bootstrap").contains("lease lost")
            || f.log(&m0, "bootstrap").contains("taken over"),
        "{}",
        f.log(&m0, "bootstrap")
    );
    // The loser wrote nothing to P/state after the winner.
    let history = state_history(&c).await;
    assert_eq!(
        history, history_before,
        "P/state changed after the winner wrote it"
    );
    let last = history.last().unwrap();
    assert_eq!(last["initializedBy"], c.masters[1].instance_id.as_str());
    assert_eq!(last["phase"], "ready");
    let published = parameter(&c.sdk, "/haimg/demo/join/control-plane")
        .await
        .unwrap();
    assert_eq!(published["generation"], 1);
}

/// Resumes and kills a process group that a test stopped, if the test ends while it is
/// stopped (a failed assertion); disarmed by dropping it after the group was resumed.
struct Thaw(u32);

impl Drop for Thaw {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for sig in ["CONT", "KILL"] {
                let _ = std::process::Command::new("kill")
                    .args(["-s", sig, "--", &format!("-{}", self.0)])
                    .status();
            }
        }
    }
}

fn signal_group(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args(["-s", sig, "--", &format!("-{}", child.id())])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -s {sig}");
}

/// Every version of P/state, oldest first.
async fn state_history(c: &Cluster) -> Vec<serde_json::Value> {
    let out = aws_sdk_ssm::Client::new(&c.sdk)
        .get_parameter_history()
        .name("/haimg/demo/state")
        .send()
        .await
        .unwrap();
    out.parameters()
        .iter()
        .map(|p| serde_json::from_str(p.value().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_init_holder_that_fails_releases_its_lease_at_once() {
    let c = cluster(2, 0).await;
    let f = &c.fleet;
    // A lease far longer than this test may take: only a release lets m1 in.
    let long = |cfg: &mut haimg::contract::node_config::NodeConfig| {
        cfg.agent.init_lease_seconds = 3600;
        cfg.agent.kubeadm_attempts = 1;
    };
    let m0 = with(
        f,
        "m0",
        &c.masters[0],
        true,
        long,
        &[("FAKE_KUBEADM_FAIL", "init".into())],
    );
    let mut failing = f.spawn(&m0, "bootstrap");
    assert_eq!(
        wait_child(&mut failing, BOUND).unwrap().code(),
        Some(1),
        "{}",
        f.log(&m0, "bootstrap")
    );
    let lock = parameter(&c.sdk, "/haimg/demo/init/lock-1").await.unwrap();
    assert_eq!(lock["released"], true, "{lock}");
    let m1 = with(f, "m1", &c.masters[1], true, long, &[]);
    f.run_all(
        std::slice::from_ref(&m1),
        "bootstrap",
        Duration::from_secs(30),
    );
    let lock = parameter(&c.sdk, "/haimg/demo/init/lock-2").await.unwrap();
    assert_eq!(lock["instanceId"], c.masters[1].instance_id.as_str());
    assert_eq!(
        f.events_of("init")
            .iter()
            .filter(|e| e["failed"] != true)
            .map(|e| e["node"].clone())
            .collect::<Vec<_>>(),
        ["m1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replacement_at_its_predecessors_address_keeps_its_node_and_the_dead_member_goes() {
    let (c, nodes, mut etcd) = masters_with_etcd(3).await;
    let f = &c.fleet;
    let old = c.masters[2].clone();
    // Master 2 dies; its replacement gets the same private address, and so the same DNS
    // name and node name, while EC2 still lists the terminated predecessor. (moto will
    // not hand out an address a terminated instance held, so the recycled name and
    // address reach the replacement through its instance metadata, as kubeadm sees them.)
    etcd.kill(2);
    let asg = aws_sdk_autoscaling::Client::new(&c.sdk);
    let ec2 = aws_sdk_ec2::Client::new(&c.sdk);
    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&old.instance_id)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    let subnet = ec2.describe_subnets().send().await.unwrap().subnets()[0]
        .subnet_id()
        .unwrap()
        .to_string();
    let image = ec2.describe_images().send().await.unwrap().images()[0]
        .image_id()
        .unwrap()
        .to_string();
    let run = ec2
        .run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("haimg:cluster")
                        .value("demo")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let new_id = run.instances()[0].instance_id().unwrap().to_string();
    asg.attach_instances()
        .auto_scaling_group_name("demo-master")
        .instance_ids(&new_id)
        .send()
        .await
        .unwrap();
    let replacement = Identity {
        instance_id: new_id.clone(),
        ..old.clone()
    };

    let m3 = f.node(
        "m3",
        replacement.clone(),
        &node_yaml(true, |cfg| cfg.agent.membership_wait_seconds = 120),
    );
    let mut joining = f.spawn(&m3, "bootstrap");
    eventually(
        "the replacement to wait for a membership check",
        BOUND,
        || f.log(&m3, "bootstrap").contains("membership check"),
    );
    // Reconcile removes the predecessor's member and its Node (by the Node's providerID).
    let reconcile = |f: &Fleet| {
        let mut r = f.spawn(&nodes[0], "reconcile");
        assert!(
            wait_child(&mut r, BOUND).unwrap().success(),
            "{}",
            f.log(&nodes[0], "reconcile")
        );
    };
    reconcile(f);
    assert_eq!(etcd.member_names(0).len(), 2, "the dead member is gone");
    assert!(
        wait_child(&mut joining, BOUND).unwrap().success(),
        "{}",
        f.log(&m3, "bootstrap")
    );
    let cluster_nodes = || -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(f.cluster_dir.join("state.json")).unwrap(),
        )
        .unwrap()["nodes"]
            .clone()
    };
    assert_eq!(
        cluster_nodes()[&old.hostname]["providerID"],
        format!("aws:///{}/{new_id}", replacement.az).as_str(),
        "the replacement's Node took the name"
    );
    // The next reconcile must leave the live replacement's Node alone.
    let deletes_before = f.events_of("kubectl-delete-node").len();
    reconcile(f);
    assert_eq!(
        f.events_of("kubectl-delete-node").len(),
        deletes_before,
        "{}",
        f.log(&nodes[0], "reconcile")
    );
    assert!(cluster_nodes().get(&old.hostname).is_some());
    let state = parameter(&c.sdk, "/haimg/demo/state").await.unwrap();
    assert_eq!(state["etcd"]["dead"], serde_json::json!([]));
    assert!(parameter(&c.sdk, &format!("/haimg/demo/members/{new_id}"))
        .await
        .is_some());
    assert!(
        parameter(&c.sdk, &format!("/haimg/demo/members/{}", old.instance_id))
            .await
            .is_none(),
        "the terminated predecessor's record is removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clocks_that_disagree_within_two_thirds_of_the_lease_never_take_over_a_live_holder() {
    let c = cluster(2, 0).await;
    let f = &c.fleet;
    let lease = Duration::from_secs(3);
    let short = init_lease(3);
    let (m0, g) = gated_init_holder(f, &c, 3);
    let mut holder = start_gated(f, &m0);
    wait_past_lease(&c, "/haimg/demo/init/lock-1", lease).await;
    // m1's clock runs 1 s ahead: m0's renewals (every second) look older to it, but
    // never older than the lease.
    let m1 = with(
        f,
        "m1",
        &c.masters[1],
        true,
        short,
        &[("HAIMG_CLOCK_SKEW_SECONDS", "1".into())],
    );
    let mut other = f.spawn(&m1, "bootstrap");
    eventually("m1 to find the lease held three times", BOUND, || {
        f.log(&m1, "bootstrap")
            .matches("init lock epoch 1 is held by")
            .count()
            >= 3
    });
    open_gate(&g);
    assert!(
        wait_child(&mut holder, BOUND).unwrap().success(),
        "{}",
        f.log(&m0, "bootstrap")
    );
    assert!(
        wait_child(&mut other, BOUND).unwrap().success(),
        "{}",
        f.log(&m1, "bootstrap")
    );
    assert_eq!(f.events_of("init-start").len(), 1, "{:?}", f.events());
    assert!(
        parameter(&c.sdk, "/haimg/demo/init/lock-2").await.is_none(),
        "no takeover"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_the_clock_tolerance_a_takeover_still_leaves_one_cluster() {
    let c = cluster(2, 0).await;
    let f = &c.fleet;
    let short = init_lease(3);
    let (m0, g) = gated_init_holder(f, &c, 3);
    let mut holder = start_gated(f, &m0);
    // Ten seconds ahead: every lease of m0's looks expired to m1 (the documented limit).
    let m1 = with(
        f,
        "m1",
        &c.masters[1],
        true,
        short,
        &[("HAIMG_CLOCK_SKEW_SECONDS", "10".into())],
    );
    f.run_all(std::slice::from_ref(&m1), "bootstrap", BOUND);
    assert!(
        parameter(&c.sdk, "/haimg/demo/init/lock-2").await.is_some(),
        "m1 took over"
    );
    open_gate(&g);
    assert!(
        wait_child(&mut holder, BOUND).unwrap().success(),
        "{}",
        f.log(&m0, "bootstrap")
    );
    // The create-only publication decides: m1's cluster; m0 reset its own and joined.
    assert_eq!(
        cmds_of(f, "m0", &["init", "reset", "join"]),
        ["init(orphan)", "reset", "join"]
    );
    assert_eq!(
        parameter(&c.sdk, "/haimg/demo/state").await.unwrap()["initializedBy"],
        c.masters[1].instance_id.as_str()
    );
}
