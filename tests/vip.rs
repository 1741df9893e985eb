//! VIP mode: every rendered keepalived.conf, haproxy.cfg and check script through the real
//! tools (`keepalived --config-test` in a throwaway network namespace, `haproxy -c`,
//! `shellcheck`), user-data through `cloud-init schema`, golden files for 3 and 5 masters.

mod common;

use std::path::Path;
use std::process::Command;

use common::tree::*;
use common::*;

fn render_all(spec: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = haimg();
    cmd.args(["render", "--all", "-c"]).arg(spec).arg("--out").arg(out.path());
    let o = run(cmd);
    assert!(o.status.success(), "render failed: {}", stderr(&o));
    out
}

/// A network namespace with the interfaces keepalived's config names, removed on drop.
struct Netns(String);

impl Netns {
    fn with_interface(name: &str, interface: &str) -> Netns {
        let ip = require_tool("ip");
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ns = format!("haimg-{name}-{}-{n}", std::process::id());
        let ok = |args: &[&str]| {
            let o = run({
                let mut c = Command::new(&ip);
                c.args(args);
                c
            });
            assert!(o.status.success(), "ip {args:?}: {} (keepalived --config-test needs root to create a network namespace)", stderr(&o));
        };
        ok(&["netns", "add", &ns]);
        let guard = Netns(ns.clone());
        ok(&["-n", &ns, "link", "add", interface, "type", "veth", "peer", "name", "haimgpeer0"]);
        ok(&["-n", &ns, "link", "set", interface, "up"]);
        guard
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

fn keepalived_config_test(conf: &Path, check_script: &Path, interface: &str) {
    let keepalived = require_tool("keepalived");
    // The config names the script where the node has it; point it at this copy.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("check_apiserver.sh");
    std::fs::copy(check_script, &script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(conf).unwrap().replace("/etc/keepalived/check_apiserver.sh", script.to_str().unwrap());
    let f = dir.path().join("keepalived.conf");
    std::fs::write(&f, text).unwrap();
    let ns = Netns::with_interface("ka", interface);
    let o = run({
        let mut c = Command::new(require_tool("ip"));
        // -e: a missing file is an error; any warning makes it exit non-zero.
        c.args(["netns", "exec", &ns.0]).arg(&keepalived).args(["-e", "--config-test", "-f"]).arg(&f);
        c
    });
    assert!(o.status.success(), "keepalived --config-test {}: exit {:?}\n{}{}", conf.display(), o.status.code(), stdout(&o), stderr(&o));
}

fn haproxy_check(cfg: &Path) {
    let o = run({
        let mut c = Command::new(require_tool("haproxy"));
        // -dW: warnings are errors.
        c.args(["-dW", "-c", "-f"]).arg(cfg);
        c
    });
    assert!(o.status.success(), "haproxy -c {}:\n{}{}", cfg.display(), stdout(&o), stderr(&o));
}

fn shellcheck(script: &Path) {
    let o = run({
        let mut c = Command::new(require_tool("shellcheck"));
        c.arg(script);
        c
    });
    assert!(o.status.success(), "shellcheck {}:\n{}", script.display(), stdout(&o));
}

/// Every VIP file, and that the user-data writes exactly these files on its node.
fn check_vip_tree(root: &Path, nodes: &[&str], haproxy: bool) {
    check_tree(root);
    for node in nodes {
        let dir = root.join("vip").join(node);
        keepalived_config_test(&dir.join("keepalived.conf"), &dir.join("check_apiserver.sh"), "eth0");
        shellcheck(&dir.join("check_apiserver.sh"));
        assert_eq!(dir.join("haproxy.cfg").exists(), haproxy);
        if haproxy {
            haproxy_check(&dir.join("haproxy.cfg"));
        }
        let ud = haimg::yaml::parse(&std::fs::read_to_string(root.join(format!("cloud-init/master-{node}.yaml"))).unwrap()).unwrap().value;
        let files = ud["write_files"].as_array().unwrap();
        let content = |path: &str| files.iter().find(|f| f["path"] == path).map(|f| f["content"].as_str().unwrap().to_string());
        assert_eq!(content("/etc/keepalived/keepalived.conf").unwrap(), std::fs::read_to_string(dir.join("keepalived.conf")).unwrap());
        assert_eq!(content("/etc/keepalived/check_apiserver.sh").unwrap(), std::fs::read_to_string(dir.join("check_apiserver.sh")).unwrap());
        let pods = if haproxy { vec!["keepalived", "haproxy"] } else { vec!["keepalived"] };
        for pod in pods {
            let manifest = content(&format!("/etc/kubernetes/manifests/{pod}.yaml")).unwrap_or_else(|| panic!("{node}: no {pod} static pod"));
            let v = haimg::yaml::parse(&manifest).unwrap().value;
            assert_eq!((v["apiVersion"].as_str(), v["kind"].as_str()), (Some("v1"), Some("Pod")));
            assert_eq!(v["spec"]["hostNetwork"], true);
            assert_eq!(v["metadata"]["namespace"], "kube-system");
        }
        let node_yaml = content("/etc/haimg/node.yaml").unwrap();
        let cfg = haimg::node::config::NodeConfig::from_yaml(&node_yaml, node).unwrap();
        assert_eq!(cfg.node.as_ref().map(|n| n.name.as_str()), Some(*node));
        assert!(cfg.autoscaling.is_none(), "VIP masters are not in an Auto Scaling group");
    }
    // Masters of a VIP cluster have fixed addresses: no launch template, group or NLB.
    assert!(!root.join("launch-templates/master.json").exists());
    assert!(!root.join("load-balancer").exists());
}

#[test]
fn three_vip_masters_with_haproxy() {
    let out = render_all(&repo().join("examples/cluster-vip.yaml"));
    assert_golden("vip-three", out.path());
    check_vip_tree(out.path(), &["m1", "m2", "m3"], true);
    let ka = std::fs::read_to_string(out.path().join("vip/m1/keepalived.conf")).unwrap();
    assert!(ka.contains("unicast_src_ip 10.0.0.11") && ka.contains("priority 150") && ka.contains("nopreempt"));
    let ka3 = std::fs::read_to_string(out.path().join("vip/m3/keepalived.conf")).unwrap();
    assert!(ka3.contains("priority 148") && ka3.contains("        10.0.0.11\n        10.0.0.12\n"));
    let hp = std::fs::read_to_string(out.path().join("vip/m2/haproxy.cfg")).unwrap();
    for a in ["10.0.0.11:6444", "10.0.0.12:6444", "10.0.0.13:6444"] {
        assert!(hp.contains(a), "haproxy balances over every API server on 6444: {a}");
    }
}

#[test]
fn five_vip_masters_without_haproxy() {
    let out = render_all(&repo().join("tests/fixtures/vip-five.yaml"));
    assert_golden("vip-five", out.path());
    check_vip_tree(out.path(), &["m1", "m2", "m3", "m4", "m5"], false);
    let ud = std::fs::read_to_string(out.path().join("cloud-init/master-m4.yaml")).unwrap();
    assert!(ud.contains("apiServerBindPort: 6443"), "without haproxy the API server owns the VIP port");
}

#[test]
fn the_validators_reject_broken_configs() {
    // The checks above must be able to fail.
    let out = render_all(&repo().join("examples/cluster-vip.yaml"));
    let dir = out.path().join("vip/m1");
    let ka = std::fs::read_to_string(dir.join("keepalived.conf")).unwrap().replace("interface eth0", "interface eth7");
    std::fs::write(dir.join("bad-keepalived.conf"), ka).unwrap();
    let r = std::panic::catch_unwind(|| keepalived_config_test(&dir.join("bad-keepalived.conf"), &dir.join("check_apiserver.sh"), "eth0"));
    assert!(r.is_err(), "keepalived must reject an interface that does not exist");
    let hp = std::fs::read_to_string(dir.join("haproxy.cfg")).unwrap().replace("balance roundrobin", "balance sideways");
    std::fs::write(dir.join("bad-haproxy.cfg"), hp).unwrap();
    assert!(std::panic::catch_unwind(|| haproxy_check(&dir.join("bad-haproxy.cfg"))).is_err());
    std::fs::write(dir.join("bad.sh"), "#!/bin/sh\necho $1\n").unwrap();
    assert!(std::panic::catch_unwind(|| shellcheck(&dir.join("bad.sh"))).is_err());
}

#[test]
fn render_master_needs_a_node_in_vip_mode() {
    let spec = repo().join("examples/cluster-vip.yaml");
    let o = run({
        let mut c = haimg();
        c.args(["render", "--role", "master", "-c"]).arg(&spec);
        c
    });
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--node") && stderr(&o).contains("m1, m2, m3"), "{}", stderr(&o));
    let o = run({
        let mut c = haimg();
        c.args(["render", "--role", "master", "--node", "m4", "-c"]).arg(&spec);
        c
    });
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no such node"), "{}", stderr(&o));
    let o = run({
        let mut c = haimg();
        c.args(["render", "--role", "master", "--node", "m2", "-c"]).arg(&spec);
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    cloud_init_schema(&stdout(&o), "m2 user-data");
    assert!(stdout(&o).contains("unicast_src_ip 10.0.0.12"));
}
