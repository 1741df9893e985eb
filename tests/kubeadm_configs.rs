//! Every kind of kubeadm config the agent writes (init, control-plane join, worker join,
//! the upload-certs rotation), for every endpoint mode and both config APIs, through the real
//! upstream `kubeadm config validate`: v1.30.0 for kubeadm.k8s.io/v1beta3, v1.31.2 for
//! v1beta4 (`../shared/kubernetes`). The fleet's kubeadm double runs the same check on every
//! config written in the fleet scenarios.

mod common;

use std::time::Duration;

use common::*;
use haimg::contract::secret;
use haimg::node::kubeadm::{init_config, join_config, NodeIdentity};
use haimg::render::Group;

fn validate(kubeadm: &str, text: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("kubeadm.yaml");
    std::fs::write(&f, text).unwrap();
    let o = run({
        // No network: kubeadm needs none to validate and would spend a second on lookups.
        let mut c = std::process::Command::new(require_tool("unshare"));
        c.arg("-n")
            .arg(shared_tool(kubeadm))
            .args(["config", "validate", "--config"])
            .arg(&f);
        c
    });
    assert!(
        o.status.success(),
        "{kubeadm} config validate rejects {what}:\n{}{}\n--- the config ---\n{text}",
        stdout(&o),
        stderr(&o)
    );
}

fn id() -> NodeIdentity {
    NodeIdentity {
        instance_id: "i-0123456789abcdef0".into(),
        hostname: "ip-10-0-1-23.us-west-2.compute.internal".into(),
        private_ip: "10.0.1.23".into(),
        availability_zone: "us-west-2a".into(),
    }
}

/// All configs one spec's nodes get, validated by the kubeadm of `version`'s config API.
fn check_spec(spec_file: &str, version: &str, kubeadm: &str) {
    let text = std::fs::read_to_string(repo().join(spec_file))
        .unwrap()
        .replace(
            "kubernetesVersion: 1.30.4",
            &format!("kubernetesVersion: {version}"),
        );
    let spec = haimg::spec::load_str(&text, spec_file).unwrap().spec;
    let token = secret::bootstrap_token();
    let key = secret::certificate_key();
    let hashes = vec![format!("sha256:{}", "ab".repeat(32))];
    let endpoint = "demo-api-0123456789.elb.us-west-2.amazonaws.com:6443";
    let mut groups = haimg::render::master_groups(&spec);
    groups.extend(spec.worker_pools.iter().map(Group::Worker));
    for g in groups {
        let cfg = haimg::render::node_config(&spec, g);
        assert_eq!(cfg.kubernetes.version.to_string(), version);
        let what = |kind: &str| format!("{spec_file} {version} {kind} ({:?})", cfg.role);
        if matches!(cfg.role, haimg::contract::node_config::Role::Master) {
            let ttl = Duration::from_secs(cfg.agent.token_ttl_seconds);
            validate(
                kubeadm,
                &init_config(
                    &cfg,
                    &id(),
                    endpoint,
                    Some(&token),
                    ttl,
                    &key,
                    Some("3.5.21-0"),
                ),
                &what("init"),
            );
            // The rotation's `kubeadm init phase upload-certs --config`: no token.
            validate(
                kubeadm,
                &init_config(&cfg, &id(), endpoint, None, Duration::ZERO, &key, None),
                &what("upload-certs"),
            );
            validate(
                kubeadm,
                &join_config(&cfg, &id(), endpoint, &token, &hashes, Some(&key)),
                &what("control-plane join"),
            );
        } else {
            validate(
                kubeadm,
                &join_config(&cfg, &id(), endpoint, &token, &hashes, None),
                &what("worker join"),
            );
        }
    }
}

#[test]
fn v1beta3_configs_pass_kubeadm_1_30() {
    check_spec("examples/cluster.yaml", "1.30.4", "kubeadm-1.30.0");
    check_spec("examples/cluster-vip.yaml", "1.30.0", "kubeadm-1.30.0");
}

#[test]
fn v1beta4_configs_pass_kubeadm_1_31() {
    check_spec("examples/cluster.yaml", "1.31.2", "kubeadm-1.31.2");
    check_spec("examples/cluster-vip.yaml", "1.31.2", "kubeadm-1.31.2");
}

#[test]
fn the_real_validator_can_fail() {
    let spec = haimg::spec::load_str(haimg::spec::EXAMPLE, "example")
        .unwrap()
        .spec;
    let cfg = haimg::render::node_config(&spec, Group::Master);
    let key = secret::certificate_key();
    let good = init_config(&cfg, &id(), "lb:6443", None, Duration::ZERO, &key, None);
    // The v1beta4 spelling of the control-plane wait is an unknown field to v1beta3.
    let bad = good.replace("timeoutForControlPlane", "controlPlaneComponentHealthCheck");
    assert_ne!(good, bad, "the config names the control-plane wait");
    let r = std::panic::catch_unwind(|| validate("kubeadm-1.30.0", &bad, "a wrong field"));
    assert!(r.is_err(), "kubeadm 1.30 must reject an unknown field");
}
