//! Fleet simulation: real `haimg node` processes against moto on 127.0.0.1, one IMDS per
//! node, strict kubeadm/kubectl doubles. See tests/common/fleet.rs.

mod common;

use std::time::{Duration, SystemTime};

use common::fleet::*;
use common::kubeapi::KubeApi;

const BOUND: Duration = Duration::from_secs(120);

fn joins(fleet: &Fleet, control_plane: bool) -> Vec<serde_json::Value> {
    fleet
        .events_of("join")
        .into_iter()
        .filter(|e| e["controlPlane"] == control_plane)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_masters_and_three_workers_form_one_cluster() {
    let c = cluster(3, 3).await;
    let f = &c.fleet;
    let nodes: Vec<Node> = c
        .masters
        .iter()
        .enumerate()
        .map(|(i, id)| f.node(&format!("m{i}"), id.clone(), &node_yaml(true, |_| {})))
        .chain(
            c.workers
                .iter()
                .enumerate()
                .map(|(i, id)| f.node(&format!("w{i}"), id.clone(), &node_yaml(false, |_| {}))),
        )
        .collect();
    f.run_all(&nodes, "bootstrap", BOUND);
    assert_eq!(
        f.events_of("init").len(),
        1,
        "exactly one kubeadm init: {:?}",
        f.events()
    );
    let cp = joins(f, true);
    assert_eq!(cp.len(), 2, "two control-plane joins");
    assert!(
        cp.iter().all(|e| e["withCertificateKey"] == true),
        "control-plane joins carry the certificate key"
    );
    assert_eq!(joins(f, false).len(), 3, "three worker joins");
    assert!(joins(f, false)
        .iter()
        .all(|e| e["withCertificateKey"] == false));
    assert_eq!(
        f.events_of("kubectl-apply").len(),
        1,
        "the CNI manifest is applied once, by the first master"
    );

    let worker = parameter(&c.sdk, "/haimg/demo/join/worker").await.unwrap();
    assert!(
        worker.get("certificateKey").is_none(),
        "P/join/worker never holds the certificate key: {worker}"
    );
    let control = parameter(&c.sdk, "/haimg/demo/join/control-plane")
        .await
        .unwrap();
    assert!(control["certificateKey"]
        .as_str()
        .is_some_and(|k| k.len() == 64));
    assert_eq!(
        control["endpoint"].as_str().unwrap().rsplit(':').next(),
        Some("6443")
    );
    assert_eq!(
        parameter(&c.sdk, "/haimg/demo/state").await.unwrap()["phase"],
        "ready"
    );
    // The timestamps `status` reads, without the secrets, in a plain String.
    let times = parameter(&c.sdk, "/haimg/demo/join/times").await.unwrap();
    assert_eq!(times["generation"], 1);
    assert_eq!(times["controlPlaneExpiresAt"], control["expiresAt"]);
    assert_eq!(times["workerExpiresAt"], worker["expiresAt"]);
    assert!(!times
        .to_string()
        .contains(control["token"].as_str().unwrap()));
    let kind = aws_sdk_ssm::Client::new(&c.sdk)
        .get_parameter()
        .name("/haimg/demo/join/times")
        .send()
        .await
        .unwrap();
    assert_eq!(
        kind.parameter().unwrap().r#type(),
        Some(&aws_sdk_ssm::types::ParameterType::String)
    );

    // Secrets hygiene: no config file with secrets remains; no log line shows a secret.
    let token = control["token"].as_str().unwrap();
    let key = control["certificateKey"].as_str().unwrap();
    for n in &nodes {
        for f_ in ["kubeadm-init.yaml", "kubeadm-join.yaml"] {
            assert!(
                !n.root.join("etc/haimg").join(f_).exists(),
                "{}: {f_} was left behind",
                n.name
            );
        }
        let log = f.log(n, "bootstrap");
        assert!(
            !log.contains(token) && !log.contains(key),
            "{}: a secret reached the log",
            n.name
        );
    }
    // Re-running bootstrap on a joined node does nothing.
    let mut again = f.spawn(&nodes[0], "bootstrap");
    assert!(wait_child(&mut again, BOUND).unwrap().success());
    assert_eq!(f.events_of("init").len() + f.events_of("join").len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeadm_is_told_the_etcd_image_the_image_carries() {
    let c = cluster(1, 0).await;
    let f = &c.fleet;
    let m0 = f.node("m0", c.masters[0].clone(), &node_yaml(true, |_| {}));
    // What `haimg bake` writes: an etcd built from another release than kubeadm's default.
    std::fs::write(
        m0.root.join("etc/haimg/image-manifest.json"),
        r#"{"images": [{"image": "registry.k8s.io/etcd:3.5.21-0", "digest": "sha256:00"},
                       {"image": "registry.k8s.io/pause:3.9", "digest": "sha256:01"}]}"#,
    )
    .unwrap();
    f.run_all(std::slice::from_ref(&m0), "bootstrap", BOUND);
    assert_eq!(f.events_of("init")[0]["etcdImageTag"], "3.5.21-0");
    // Without a manifest kubeadm keeps its default (no etcd section at all).
    let c = cluster(1, 0).await;
    let f = &c.fleet;
    let m0 = f.node("m0", c.masters[0].clone(), &node_yaml(true, |_| {}));
    f.run_all(std::slice::from_ref(&m0), "bootstrap", BOUND);
    assert!(f.events_of("init")[0]["etcdImageTag"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_takes_over_when_the_init_holder_dies_before_publishing() {
    let c = cluster(3, 1).await;
    let f = &c.fleet;
    let mut holder_node = f.node("m0", c.masters[0].clone(), &node_yaml(true, |_| {}));
    // The first holder's kubeadm init hangs; it is killed while it runs.
    holder_node
        .extra_env
        .push(("FAKE_KUBEADM_GATE".into(), "init:/nonexistent/never".into()));
    let mut holder = f.spawn(&holder_node, "bootstrap");
    eventually("the first master starts kubeadm init", BOUND, || {
        !f.events_of("init-start").is_empty()
    });
    kill_group(&mut holder);

    let others: Vec<Node> = vec![
        f.node("m1", c.masters[1].clone(), &node_yaml(true, |_| {})),
        f.node("m2", c.masters[2].clone(), &node_yaml(true, |_| {})),
        f.node("w0", c.workers[0].clone(), &node_yaml(false, |_| {})),
    ];
    f.run_all(&others, "bootstrap", BOUND);
    let inits = f.events_of("init");
    assert_eq!(inits.len(), 1, "one init completed: {inits:?}");
    assert_ne!(inits[0]["node"], "m0", "the dead holder never published");
    assert_eq!(joins(f, true).len(), 1);
    assert_eq!(joins(f, false).len(), 1);
    // The takeover created the next epoch.
    assert!(
        parameter(&c.sdk, "/haimg/demo/init/lock-2").await.is_some(),
        "lock epoch 2 exists"
    );
    let state = parameter(&c.sdk, "/haimg/demo/state").await.unwrap();
    assert_ne!(state["initializedBy"], c.masters[0].instance_id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_material_is_never_used_until_refresh_rotates_it() {
    let c = cluster(1, 2).await;
    let f = &c.fleet;
    let m0 = f.node("m0", c.masters[0].clone(), &node_yaml(true, |_| {}));
    f.run_all(std::slice::from_ref(&m0), "bootstrap", BOUND);

    // Days later: the published material has expired (refresh was not running).
    let ssm = aws_sdk_ssm::Client::new(&c.sdk);
    let past = humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(86_400))
        .to_string();
    let long_ago =
        humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(3 * 86_400))
            .to_string();
    for name in ["control-plane", "worker"] {
        let mut v = parameter(&c.sdk, &format!("/haimg/demo/join/{name}"))
            .await
            .unwrap();
        v["expiresAt"] = past.clone().into();
        v["issuedAt"] = long_ago.clone().into();
        ssm.put_parameter()
            .name(format!("/haimg/demo/join/{name}"))
            .value(v.to_string())
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .unwrap();
    }
    let w0 = f.node("w0", c.workers[0].clone(), &node_yaml(false, |_| {}));
    let mut waiting = f.spawn(&w0, "bootstrap");
    eventually(
        "the worker to find the material expiring twice",
        BOUND,
        || {
            f.log(&w0, "bootstrap")
                .matches("too close to expiry")
                .count()
                >= 2
        },
    );
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the worker must wait, not fail:\n{}",
        f.log(&w0, "bootstrap")
    );
    assert!(
        f.events_of("join-start").is_empty(),
        "nobody joins with expired material"
    );

    let mut refresh = f.spawn(&m0, "refresh");
    assert!(
        wait_child(&mut refresh, BOUND).unwrap().success(),
        "{}",
        f.log(&m0, "refresh")
    );
    assert_eq!(f.events_of("token-create").len(), 1);
    assert_eq!(f.events_of("upload-certs").len(), 1);
    assert!(
        wait_child(&mut waiting, BOUND).unwrap().success(),
        "{}",
        f.log(&w0, "bootstrap")
    );
    let rotated_at = f.events_of("token-create")[0]["t"].as_f64().unwrap();
    let joined_at = f.events_of("join-start")[0]["t"].as_f64().unwrap();
    assert!(
        joined_at > rotated_at,
        "the worker joined only after the rotation"
    );
    let control = parameter(&c.sdk, "/haimg/demo/join/control-plane")
        .await
        .unwrap();
    assert_eq!(control["generation"], 2);
    assert_eq!(
        parameter(&c.sdk, "/haimg/demo/join/times").await.unwrap()["generation"],
        2,
        "a rotation updates the times too"
    );
    // The rotated secrets never reach the refresh log (kubeadm printed the token to us).
    let refresh_log = f.log(&m0, "refresh");
    for secret in [
        control["token"].as_str().unwrap(),
        control["certificateKey"].as_str().unwrap(),
    ] {
        assert!(
            !refresh_log.contains(secret),
            "a rotated secret reached the log"
        );
    }

    // A second refresh right away finds fresh material and rotates nothing.
    let mut again = f.spawn(&m0, "refresh");
    assert!(wait_child(&mut again, BOUND).unwrap().success());
    assert_eq!(f.events_of("token-create").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_refreshes_rotate_once() {
    let c = cluster(3, 0).await;
    let f = &c.fleet;
    let nodes: Vec<Node> = c
        .masters
        .iter()
        .enumerate()
        .map(|(i, id)| f.node(&format!("m{i}"), id.clone(), &node_yaml(true, |_| {})))
        .collect();
    f.run_all(&nodes, "bootstrap", BOUND);
    // Make the material look past half-life, then fire every master's timer at once.
    let ssm = aws_sdk_ssm::Client::new(&c.sdk);
    let mut v = parameter(&c.sdk, "/haimg/demo/join/control-plane")
        .await
        .unwrap();
    v["issuedAt"] =
        humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(8000))
            .to_string()
            .into();
    ssm.put_parameter()
        .name("/haimg/demo/join/control-plane")
        .value(v.to_string())
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    f.run_all(&nodes, "refresh", BOUND);
    assert_eq!(
        f.events_of("token-create").len(),
        1,
        "one rotation per period"
    );
    assert_eq!(f.events_of("upload-certs").len(), 1);
}

#[test]
fn a_bad_node_config_exits_2_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.yaml");
    std::fs::write(
        &cfg,
        node_yaml(true, |_| {}).replace("role: master", "role: mastr"),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_haimg"))
        .args(["node", "bootstrap"])
        .env("HAIMG_NODE_CONFIG", &cfg)
        .env("HAIMG_ROOT", dir.path())
        // Nothing may be contacted: point IMDS and AWS at a closed port.
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("node.yaml") && err.contains("role"), "{err}");
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["node.yaml"], "no half-done state");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_master_joins_only_after_the_dead_member_is_removed() {
    let (c, nodes, mut etcd) = masters_with_etcd(3).await;
    let f = &c.fleet;
    // Master 2 dies: its etcd member stops, the Auto Scaling group replaces its instance.
    etcd.kill(2);
    let asg = aws_sdk_autoscaling::Client::new(&c.sdk);
    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&c.masters[2].instance_id)
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .unwrap();
    let now = identities(&c.sdk, "demo-master").await;
    let replacement = now
        .into_iter()
        .find(|i| c.masters.iter().all(|m| m.instance_id != i.instance_id))
        .expect("moto launched a replacement");
    let node = f.node(
        "m3",
        replacement.clone(),
        &node_yaml(true, |cfg| cfg.agent.membership_wait_seconds = 120),
    );
    let mut joining = f.spawn(&node, "bootstrap");
    eventually(
        "the replacement to wait for a membership check twice",
        BOUND,
        || {
            f.log(&node, "bootstrap")
                .matches("membership check")
                .count()
                >= 2
        },
    );
    assert!(
        joining.try_wait().unwrap().is_none(),
        "the replacement waits:\n{}",
        f.log(&node, "bootstrap")
    );
    assert!(
        !f.events_of("join-start").iter().any(|e| e["node"] == "m3"),
        "no join while the dead member is in etcd"
    );
    assert!(
        f.log(&node, "bootstrap").contains("membership check"),
        "{}",
        f.log(&node, "bootstrap")
    );

    // Reconcile on a live master removes the dead member and the dead Node object.
    let mut reconcile = f.spawn(&nodes[0], "reconcile");
    assert!(
        wait_child(&mut reconcile, BOUND).unwrap().success(),
        "{}",
        f.log(&nodes[0], "reconcile")
    );
    assert_eq!(etcd.member_names(0), {
        let mut v = vec![c.masters[0].hostname.clone(), c.masters[1].hostname.clone()];
        v.sort();
        v
    });
    assert!(f
        .events_of("kubectl-delete-node")
        .iter()
        .any(|e| e["target"] == c.masters[2].hostname.as_str()));
    let state = parameter(&c.sdk, "/haimg/demo/state").await.unwrap();
    assert_eq!(state["etcd"]["dead"], serde_json::json!([]));
    assert_eq!(state["etcd"]["members"], 2);

    assert!(
        wait_child(&mut joining, BOUND).unwrap().success(),
        "{}",
        f.log(&node, "bootstrap")
    );
    // Exactly in this order in the one event log: reconcile removed the member, then
    // deleted the Node (logged), then published the check; only then did m3 start its join.
    let events = f.events();
    let deleted = events
        .iter()
        .position(|e| {
            e["cmd"] == "kubectl-delete-node" && e["target"] == c.masters[2].hostname.as_str()
        })
        .unwrap();
    let joined = events
        .iter()
        .position(|e| e["cmd"] == "join-start" && e["node"] == "m3")
        .unwrap();
    assert!(
        deleted < joined,
        "m3 joined before the removal: {events:#?}"
    );
    assert_eq!(events[joined]["controlPlane"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_in_of_a_master_drains_leaves_etcd_and_completes_the_lifecycle_action() {
    let (c, nodes, etcd) = masters_with_etcd(3).await;
    let f = &c.fleet;
    let recorder = Recorder::start(COMPLETE_LIFECYCLE_ACTION_RESPONSE);
    let me = c.masters[1].hostname.clone();
    let api = KubeApi::start(&serde_json::json!({
        "nodes": [me],
        "pods": [
            {"namespace": "kube-system", "name": "etcd-m1", "uid": "u-etcd", "node": me, "mirror": true},
            {"namespace": "kube-system", "name": "coredns-1", "uid": "u-dns", "node": me, "owner": "ReplicaSet"},
        ],
    }));
    let mut leaving = Node {
        extra_env: vec![("AWS_ENDPOINT_URL_AUTO_SCALING".into(), recorder.url())],
        ..f.node(
            "m1-watch",
            c.masters[1].clone(),
            &std::fs::read_to_string(nodes[1].root.join("etc/haimg/node.yaml")).unwrap(),
        )
    };
    leaving.root = nodes[1].root.clone();
    // A master drains with its admin credentials.
    api.kubeconfig(
        &leaving.root,
        "/etc/kubernetes/admin.conf",
        "kubernetes-admin",
        &["system:masters"],
    );
    let mut watch = f.spawn(&leaving, "watch");
    // While InService the watcher keeps polling: wait for three polls, then it still runs.
    let polls = leaving.imds.lifecycle_polls.clone();
    eventually("three lifecycle polls", BOUND, || {
        polls.load(std::sync::atomic::Ordering::SeqCst) >= 3
    });
    assert!(
        watch.try_wait().unwrap().is_none(),
        "watch keeps watching while InService"
    );
    leaving.imds.set_lifecycle("Terminated");
    assert!(
        wait_child(&mut watch, BOUND).unwrap().success(),
        "{}",
        f.log(&leaving, "watch")
    );

    let api_events = api.events();
    let evicted: Vec<&serde_json::Value> = api_events
        .iter()
        .filter(|e| e["kind"] == "request" && e["path"].as_str().unwrap().ends_with("/eviction"))
        .collect();
    assert_eq!(
        evicted.len(),
        1,
        "only coredns-1 is evicted: {api_events:#?}"
    );
    assert_eq!(evicted[0]["code"], 201);
    let me = &me;
    assert!(
        !etcd.member_names(0).contains(me),
        "left etcd: {:?}",
        etcd.member_names(0)
    );
    let reqs = recorder.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    for part in [
        "Action=CompleteLifecycleAction",
        "AutoScalingGroupName=demo-master",
        "LifecycleHookName=haimg-drain",
        &format!("InstanceId={}", c.masters[1].instance_id),
        "LifecycleActionResult=CONTINUE",
    ] {
        assert!(reqs[0].1.contains(part), "{part} missing in {}", reqs[0].1);
    }
    // Order: drain, then leave etcd, then complete the lifecycle action.
    let drained = evicted[0]["t"].as_f64().unwrap();
    let completed = reqs[0].0;
    assert!(
        drained < completed,
        "drained at {drained}, completed at {completed}"
    );
    let log = f.log(&leaving, "watch");
    let left = log
        .find("removed the local etcd member")
        .unwrap_or_else(|| panic!("the watcher left etcd:\n{log}"));
    let done = log
        .find("lifecycle action completed")
        .expect("the watcher completed the action");
    assert!(
        left < done,
        "etcd was left before the lifecycle action was completed:\n{log}"
    );
}

/// The health the Auto Scaling group records for an instance.
async fn instance_health(sdk: &aws_config::SdkConfig, id: &str) -> String {
    aws_sdk_autoscaling::Client::new(sdk)
        .describe_auto_scaling_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap()
        .auto_scaling_instances()[0]
        .health_status()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_that_keeps_failing_is_retried_then_the_instance_is_marked_unhealthy() {
    let c = cluster(1, 1).await;
    let f = &c.fleet;
    let m0 = f.node("m0", c.masters[0].clone(), &node_yaml(true, |_| {}));
    f.run_all(std::slice::from_ref(&m0), "bootstrap", BOUND);
    let mut w0 = f.node("w0", c.workers[0].clone(), &node_yaml(false, |_| {}));
    w0.extra_env
        .push(("FAKE_KUBEADM_FAIL".into(), "join".into()));
    assert_eq!(instance_health(&c.sdk, &w0.id.instance_id).await, "Healthy");
    let mut child = f.spawn(&w0, "bootstrap");
    let status = wait_child(&mut child, BOUND).unwrap();
    let log = f.log(&w0, "bootstrap");
    assert_eq!(status.code(), Some(1), "{log}");
    // Exactly `kubeadmAttempts` joins, each followed by its reset, in that order.
    let mine: Vec<String> = f
        .events()
        .into_iter()
        .filter(|e| e["node"] == "w0" && (e["cmd"] == "join" || e["cmd"] == "reset"))
        .map(|e| e["cmd"].as_str().unwrap().to_string())
        .collect();
    let attempts = settings().kubeadm_attempts as usize;
    assert_eq!(mine, ["join", "reset"].repeat(attempts), "{log}");
    assert!(
        !w0.root.join("etc/haimg/kubeadm-join.yaml").exists(),
        "the join config is removed on failure too"
    );
    assert!(
        log.contains("simulated failure"),
        "the error names kubeadm's complaint: {log}"
    );
    // The group replaces a node that gave up (worker groups use EC2 health checks, which a
    // running but unjoined instance passes).
    assert_eq!(
        instance_health(&c.sdk, &w0.id.instance_id).await,
        "Unhealthy",
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_kubeadm_failures_are_retried_until_the_join_works() {
    let c = cluster(1, 1).await;
    let f = &c.fleet;
    let mut m0 = f.node("m0", c.masters[0].clone(), &node_yaml(true, |_| {}));
    // The first init fails after the control plane was started (the NLB not yet routing):
    // reset, and the lock holder tries again.
    m0.extra_env
        .push(("FAKE_KUBEADM_FAIL_FIRST".into(), "init:1".into()));
    let mut w0 = f.node("w0", c.workers[0].clone(), &node_yaml(false, |_| {}));
    w0.extra_env
        .push(("FAKE_KUBEADM_FAIL_FIRST".into(), "join:2".into()));
    f.run_all(&[m0, w0], "bootstrap", BOUND);
    let of = |node: &str| -> Vec<(String, bool)> {
        f.events()
            .into_iter()
            .filter(|e| {
                e["node"] == node && ["init", "join", "reset"].iter().any(|c| e["cmd"] == *c)
            })
            .map(|e| (e["cmd"].as_str().unwrap().to_string(), e["failed"] == true))
            .collect()
    };
    let s = |c: &str, failed: bool| (c.to_string(), failed);
    assert_eq!(
        of("m0"),
        [s("init", true), s("reset", false), s("init", false)]
    );
    assert_eq!(
        of("w0"),
        [
            s("join", true),
            s("reset", false),
            s("join", true),
            s("reset", false),
            s("join", false)
        ]
    );
    assert_eq!(
        f.events_of("init")
            .iter()
            .filter(|e| e["failed"] != true)
            .count(),
        1
    );
}

/// VIP mode end to end: the files each master's user-data writes (static pods, keepalived,
/// haproxy, node.yaml) are laid down as cloud-init would, then three agents with fixed
/// identities (no IMDS) form the cluster behind the VIP.
#[tokio::test(flavor = "multi_thread")]
async fn vip_masters_with_static_pods_form_a_cluster_behind_the_vip() {
    let moto = Moto::start();
    let f = Fleet::new(moto);
    let text = std::fs::read_to_string(common::repo().join("examples/cluster-vip.yaml")).unwrap();
    let spec = haimg::spec::load_str(&text, "cluster-vip.yaml")
        .unwrap()
        .spec;
    let t = haimg::render::templates::Templates::embedded();
    let mut nodes = Vec::new();
    for g in haimg::render::master_groups(&spec) {
        let haimg::render::Group::FixedMaster { node, .. } = g else {
            unreachable!()
        };
        let ud = haimg::render::user_data(&spec, g, &t).unwrap();
        let mut n = node_from_user_data(&f, node.name.as_str(), fixed_identity(), &ud.text);
        // No instance metadata on these machines: prove it is not needed.
        n.extra_env.push((
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
            "http://127.0.0.1:9/".into(),
        ));
        nodes.push(n);
    }
    f.run_all(&nodes, "bootstrap", BOUND);
    let inits = f.events_of("init");
    assert_eq!(inits.len(), 1);
    assert_eq!(
        inits[0]["endpoint"], "10.0.0.100:6443",
        "controlPlaneEndpoint is the VIP"
    );
    assert_eq!(
        inits[0]["bindPort"], 6444,
        "the API server moves to 6444 for haproxy"
    );
    assert!(
        inits[0]["certSANs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "10.0.0.100"),
        "the VIP is a certificate SAN"
    );
    let init_node = inits[0]["node"].as_str().unwrap();
    let expected_ip = nodes
        .iter()
        .find(|n| n.name == init_node)
        .map(|n| {
            if n.name == "m1" {
                "10.0.0.11"
            } else if n.name == "m2" {
                "10.0.0.12"
            } else {
                "10.0.0.13"
            }
        })
        .unwrap();
    assert_eq!(
        inits[0]["kubeletExtraArgs"]["node-ip"], expected_ip,
        "the kubelet is pinned to the node address, never the VIP"
    );
    let cp = joins(&f, true);
    assert_eq!(cp.len(), 2);
    assert!(cp
        .iter()
        .all(|e| e["endpoint"] == "10.0.0.100:6443" && e["bindPort"] == 6444));
    // A fixed master is in no Auto Scaling group: its watcher exits 0 at once, which
    // `Restart=on-failure` leaves stopped (tests/units.rs).
    let mut watch = f.spawn(&nodes[0], "watch");
    let status = wait_child(&mut watch, BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "watch on a fixed master:\n{}",
        f.log(&nodes[0], "watch")
    );
}

/// What a fixed-address node (VIP or external endpoint) gets instead of instance metadata.
fn fixed_identity() -> Identity {
    Identity {
        instance_id: "unused".into(),
        hostname: "unused".into(),
        private_ip: "0.0.0.0".into(),
        az: "unused".into(),
    }
}

/// The user-data a node gets, applied to a fleet node: node.yaml (with test timings) and
/// every other file it writes, at its path under the node's root.
fn node_from_user_data(f: &Fleet, name: &str, id: Identity, user_data: &str) -> Node {
    let doc = haimg::yaml::parse(user_data).unwrap().value;
    let files = doc["write_files"].as_array().unwrap();
    let node_yaml = files
        .iter()
        .find(|w| w["path"] == "/etc/haimg/node.yaml")
        .unwrap();
    let mut cfg = haimg::contract::node_config::NodeConfig::from_yaml(
        node_yaml["content"].as_str().unwrap(),
        "node.yaml",
    )
    .unwrap();
    cfg.agent = settings();
    let n = f.node(name, id, &haimg::yaml::to_string(&cfg));
    for w in files.iter().filter(|w| w["path"] != "/etc/haimg/node.yaml") {
        let p = n
            .root
            .join(w["path"].as_str().unwrap().trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, w["content"].as_str().unwrap()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = u32::from_str_radix(w["permissions"].as_str().unwrap(), 8).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn static_credentials_bootstrap_offline_with_the_pre_generated_ca() {
    // An external nginx endpoint with static credentials: no Parameter Store, no instance
    // metadata for the masters, and every AWS call would fail (the endpoint is a closed port).
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("cluster.yaml");
    std::fs::copy(
        common::repo().join("tests/fixtures/external-nginx-static.yaml"),
        &spec_path,
    )
    .unwrap();
    let mut spec = haimg::spec::load(Some(&spec_path)).unwrap().spec;
    let haimg::spec::Credentials::Static { file, material } = &mut spec.credentials else {
        panic!("static")
    };
    let (m, _, created) = haimg::spec::credentials::load_or_create(file, dir.path()).unwrap();
    assert!(created);
    *material = Some(Box::new(m.clone()));
    let t = haimg::render::templates::Templates::embedded();
    let f = Fleet::new(Moto::start());
    let gate = f.dir.path().join("gate-init");
    let dead = (
        "AWS_ENDPOINT_URL".to_string(),
        "http://127.0.0.1:9/".to_string(),
    );
    let mut nodes = Vec::new();
    for g in haimg::render::master_groups(&spec) {
        let haimg::render::Group::FixedMaster { node, .. } = g else {
            unreachable!()
        };
        let ud = haimg::render::user_data(&spec, g, &t).unwrap();
        let mut n = node_from_user_data(&f, node.name.as_str(), fixed_identity(), &ud.text);
        // The first master's init is held until the others have found no API server.
        n.extra_env.push((
            "FAKE_KUBEADM_GATE".into(),
            format!("init:{}", gate.display()),
        ));
        n.extra_env.push((
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
            "http://127.0.0.1:9/".into(),
        ));
        n.extra_env.push(dead.clone());
        // The first init fails after kubeadm wrote its files: the retry must find the
        // pre-placed CA still there (kubeadm reset removes /etc/kubernetes/pki).
        if node.name.as_str() == "m1" {
            n.extra_env
                .push(("FAKE_KUBEADM_FAIL_FIRST".into(), "init:1".into()));
        }
        nodes.push(n);
    }
    let wg = haimg::render::Group::Worker(&spec.worker_pools[0]);
    let ud = haimg::render::user_data(&spec, wg, &t).unwrap();
    let id = Identity {
        instance_id: "i-0000000000000w001".into(),
        hostname: "ip-10-0-2-1.us-west-2.compute.internal".into(),
        private_ip: "10.0.2.1".into(),
        az: "us-west-2a".into(),
    };
    let mut w = node_from_user_data(&f, "w1", id, &ud.text);
    w.extra_env.push(dead);
    nodes.push(w);
    // Everyone starts at once: the joiners find no API server at first and retry.
    let mut children: Vec<_> = nodes.iter().map(|n| f.spawn(n, "bootstrap")).collect();
    eventually("each joiner to fail a join before the init", BOUND, || {
        let failed = f.events_of("join-start");
        ["m2", "m3", "w1"]
            .iter()
            .all(|n| failed.iter().any(|e| e["node"] == *n))
    });
    std::fs::write(&gate, "").unwrap();
    for (n, ch) in nodes.iter().zip(children.iter_mut()) {
        assert!(
            wait_child(ch, BOUND).is_some_and(|s| s.success()),
            "{}:\n{}",
            n.name,
            f.log(n, "bootstrap")
        );
    }

    assert_eq!(
        f.events_of("init-existing-ca").len(),
        1,
        "kubeadm init used the pre-generated CA"
    );
    let of_m1: Vec<(String, bool)> = f
        .events()
        .into_iter()
        .filter(|e| e["node"] == "m1" && (e["cmd"] == "init" || e["cmd"] == "reset"))
        .map(|e| (e["cmd"].as_str().unwrap().to_string(), e["failed"] == true))
        .collect();
    assert_eq!(
        of_m1,
        [
            ("init".to_string(), true),
            ("reset".to_string(), false),
            ("init".to_string(), false)
        ],
        "a failed static init is reset and retried"
    );
    let inits: Vec<_> = f
        .events_of("init")
        .into_iter()
        .filter(|e| e["failed"] != true)
        .collect();
    assert_eq!(inits.len(), 1);
    assert_eq!(
        inits[0]["node"], "m1",
        "the first listed master initializes"
    );
    assert_eq!(
        inits[0]["tokenTtls"],
        serde_json::json!(["86400s"]),
        "the static token lives the 24 h the docs promise workers"
    );
    assert_eq!(inits[0]["endpoint"], "10.0.0.9:8443");
    assert_eq!(
        inits[0]["bindPort"], 8443,
        "behind external load balancers the API server keeps the client port"
    );
    let ca = std::fs::read_to_string(f.cluster_dir.join("ca.crt")).unwrap();
    assert_eq!(ca, m.ca_cert, "the cluster's CA is the one every node pins");
    assert_eq!(joins(&f, true).len(), 2);
    assert_eq!(joins(&f, false).len(), 1);
    assert!(
        f.events_of("join-start").len() > 3,
        "the joiners retried while the first master initialized"
    );
    for n in &nodes {
        let log = f.log(n, "bootstrap");
        for s in [m.token.expose(), m.certificate_key.expose()] {
            assert!(!log.contains(s), "{}: a secret reached the log", n.name);
        }
        assert!(
            !n.root.join("etc/haimg/kubeadm-join.yaml").exists()
                && !n.root.join("etc/haimg/kubeadm-init.yaml").exists(),
            "{}: kubeadm config with secrets left behind",
            n.name
        );
    }
}
