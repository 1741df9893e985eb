//! VIP mode: every rendered keepalived.conf, haproxy.cfg and check script through the real
//! tools (`keepalived --config-test` in a throwaway network namespace, `haproxy -c`,
//! `shellcheck`), user-data through `cloud-init schema`, golden files for 3 and 5 masters.

mod common;

use std::path::Path;
use std::process::Command;

use common::tree::*;
use common::*;

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
        ok(&[
            "-n",
            &ns,
            "link",
            "add",
            interface,
            "type",
            "veth",
            "peer",
            "name",
            "haimgpeer0",
        ]);
        ok(&["-n", &ns, "link", "set", interface, "up"]);
        guard
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
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
    let text = std::fs::read_to_string(conf).unwrap().replace(
        "/etc/keepalived/check_apiserver.sh",
        script.to_str().unwrap(),
    );
    let f = dir.path().join("keepalived.conf");
    std::fs::write(&f, text).unwrap();
    let ns = Netns::with_interface("ka", interface);
    // Debian's keepalived (2.2: `-e` makes a missing file an error, any warning fails) and
    // the 2.0.19 Ubuntu 20.04 pins (no `-e`; `-t` exits 4 on what it refuses).
    for (bin, args) in [
        (keepalived, &["-e", "--config-test", "-f"][..]),
        (shared_tool("keepalived-2.0.19"), &["-t", "-f"][..]),
    ] {
        let o = run({
            let mut c = Command::new(require_tool("ip"));
            c.args(["netns", "exec", &ns.0])
                .arg(&bin)
                .args(args)
                .arg(&f);
            c
        });
        assert!(
            o.status.success(),
            "{} {args:?} {}: exit {:?}\n{}{}",
            bin.display(),
            conf.display(),
            o.status.code(),
            stdout(&o),
            stderr(&o)
        );
    }
}

/// Debian's haproxy (2.6) and the 2.0.33 Ubuntu 20.04 pins, warnings as errors (`-dW`).
fn haproxy_check(cfg: &Path) {
    for bin in [require_tool("haproxy"), shared_tool("haproxy-2.0.33")] {
        let o = run({
            let mut c = Command::new(&bin);
            c.args(["-dW", "-c", "-f"]).arg(cfg);
            c
        });
        assert!(
            o.status.success(),
            "{} -c {}:\n{}{}",
            bin.display(),
            cfg.display(),
            stdout(&o),
            stderr(&o)
        );
    }
}

fn shellcheck(script: &Path) {
    let o = run({
        let mut c = Command::new(require_tool("shellcheck"));
        c.arg(script);
        c
    });
    assert!(
        o.status.success(),
        "shellcheck {}:\n{}",
        script.display(),
        stdout(&o)
    );
}

/// Every VIP file, and that the user-data writes exactly these files on its node.
fn check_vip_tree(root: &Path, nodes: &[&str], haproxy: bool) {
    check_tree(root);
    for node in nodes {
        let dir = root.join("vip").join(node);
        keepalived_config_test(
            &dir.join("keepalived.conf"),
            &dir.join("check_apiserver.sh"),
            "eth0",
        );
        shellcheck(&dir.join("check_apiserver.sh"));
        assert_eq!(dir.join("haproxy.cfg").exists(), haproxy);
        if haproxy {
            haproxy_check(&dir.join("haproxy.cfg"));
        }
        let ud = haimg::yaml::parse(
            &std::fs::read_to_string(root.join(format!("cloud-init/master-{node}.yaml"))).unwrap(),
        )
        .unwrap()
        .value;
        let files = ud["write_files"].as_array().unwrap();
        let content = |path: &str| {
            files
                .iter()
                .find(|f| f["path"] == path)
                .map(|f| f["content"].as_str().unwrap().to_string())
        };
        assert_eq!(
            content("/etc/keepalived/keepalived.conf").unwrap(),
            std::fs::read_to_string(dir.join("keepalived.conf")).unwrap()
        );
        assert_eq!(
            content("/etc/keepalived/check_apiserver.sh").unwrap(),
            std::fs::read_to_string(dir.join("check_apiserver.sh")).unwrap()
        );
        let pods = if haproxy {
            vec!["keepalived", "haproxy"]
        } else {
            vec!["keepalived"]
        };
        for pod in pods {
            let manifest = content(&format!("/etc/kubernetes/manifests/{pod}.yaml"))
                .unwrap_or_else(|| panic!("{node}: no {pod} static pod"));
            let v = haimg::yaml::parse(&manifest).unwrap().value;
            assert_eq!(
                (v["apiVersion"].as_str(), v["kind"].as_str()),
                (Some("v1"), Some("Pod"))
            );
            assert_eq!(v["spec"]["hostNetwork"], true);
            assert_eq!(v["metadata"]["namespace"], "kube-system");
        }
        let node_yaml = content("/etc/haimg/node.yaml").unwrap();
        let cfg = haimg::contract::node_config::NodeConfig::from_yaml(&node_yaml, node).unwrap();
        assert_eq!(cfg.node.as_ref().map(|n| n.name.as_str()), Some(*node));
        assert!(
            cfg.autoscaling.is_none(),
            "VIP masters are not in an Auto Scaling group"
        );
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
    assert!(
        ka.contains("unicast_src_ip 10.0.0.11")
            && ka.contains("priority 150")
            && ka.contains("nopreempt")
    );
    let ka3 = std::fs::read_to_string(out.path().join("vip/m3/keepalived.conf")).unwrap();
    assert!(ka3.contains("priority 148") && ka3.contains("        10.0.0.11\n        10.0.0.12\n"));
    let hp = std::fs::read_to_string(out.path().join("vip/m2/haproxy.cfg")).unwrap();
    for a in ["10.0.0.11:6444", "10.0.0.12:6444", "10.0.0.13:6444"] {
        assert!(
            hp.contains(a),
            "haproxy balances over every API server on 6444: {a}"
        );
    }
}

#[test]
fn five_vip_masters_without_haproxy() {
    let out = render_all(&repo().join("tests/fixtures/vip-five.yaml"));
    assert_golden("vip-five", out.path());
    check_vip_tree(out.path(), &["m1", "m2", "m3", "m4", "m5"], false);
    let ud = std::fs::read_to_string(out.path().join("cloud-init/master-m4.yaml")).unwrap();
    assert!(
        ud.contains("apiServerBindPort: 6443"),
        "without haproxy the API server owns the VIP port"
    );
}

#[test]
fn the_validators_reject_broken_configs() {
    // The checks above must be able to fail.
    let out = render_all(&repo().join("examples/cluster-vip.yaml"));
    let dir = out.path().join("vip/m1");
    let ka = std::fs::read_to_string(dir.join("keepalived.conf"))
        .unwrap()
        .replace("interface eth0", "interface eth7");
    std::fs::write(dir.join("bad-keepalived.conf"), ka).unwrap();
    let r = std::panic::catch_unwind(|| {
        keepalived_config_test(
            &dir.join("bad-keepalived.conf"),
            &dir.join("check_apiserver.sh"),
            "eth0",
        )
    });
    assert!(
        r.is_err(),
        "keepalived must reject an interface that does not exist"
    );
    let hp = std::fs::read_to_string(dir.join("haproxy.cfg"))
        .unwrap()
        .replace("balance roundrobin", "balance sideways");
    std::fs::write(dir.join("bad-haproxy.cfg"), hp).unwrap();
    assert!(std::panic::catch_unwind(|| haproxy_check(&dir.join("bad-haproxy.cfg"))).is_err());
    // What haimg rendered before: Debian's haproxy 2.6 takes `http-check send`, the 2.0 an
    // Ubuntu 20.04 image runs refuses it; the check must be the stricter of the two.
    let hp = std::fs::read_to_string(dir.join("haproxy.cfg"))
        .unwrap()
        .replace(
            "option httpchk GET /healthz",
            "option httpchk\n    http-check send meth GET uri /healthz",
        );
    assert!(hp.contains("http-check send"), "the replacement applies");
    std::fs::write(dir.join("new-haproxy.cfg"), &hp).unwrap();
    assert!(std::panic::catch_unwind(|| haproxy_check(&dir.join("new-haproxy.cfg"))).is_err());
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
    assert!(
        stderr(&o).contains("--node") && stderr(&o).contains("m1, m2, m3"),
        "{}",
        stderr(&o)
    );
    let o = run({
        let mut c = haimg();
        c.args(["render", "--role", "master", "--node", "m4", "-c"])
            .arg(&spec);
        c
    });
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no such node"), "{}", stderr(&o));
    let o = run({
        let mut c = haimg();
        c.args(["render", "--role", "master", "--node", "m2", "-c"])
            .arg(&spec);
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    cloud_init_schema(&stdout(&o), "m2 user-data");
    assert!(stdout(&o).contains("unicast_src_ip 10.0.0.12"));
}

fn nginx_check(conf: &Path) {
    let o = run({
        let mut c = Command::new(require_tool("nginx"));
        c.arg("-t").arg("-c").arg(conf);
        c
    });
    assert!(
        o.status.success(),
        "nginx -t {}:\n{}",
        conf.display(),
        stderr(&o)
    );
}

/// The masters of an external-endpoint cluster: fixed identities, the API server on the
/// client port, no VIP and no static pods of their own.
fn check_external_masters(root: &Path, masters: &[&str], port: u16) {
    assert!(
        !root.join("vip").exists(),
        "external load balancers: nothing VIP-related on the masters"
    );
    assert!(
        !root.join("launch-templates/master.json").exists() && !root.join("load-balancer").exists()
    );
    for m in masters {
        let text =
            std::fs::read_to_string(root.join(format!("cloud-init/master-{m}.yaml"))).unwrap();
        let ud = haimg::yaml::parse(&text).unwrap().value;
        let files = ud["write_files"].as_array().unwrap();
        assert!(
            files
                .iter()
                .all(|f| !f["path"].as_str().unwrap().contains("/manifests/")),
            "{m}: no static pods"
        );
        let node = files
            .iter()
            .find(|f| f["path"] == "/etc/haimg/node.yaml")
            .unwrap();
        let cfg = haimg::contract::node_config::NodeConfig::from_yaml(
            node["content"].as_str().unwrap(),
            m,
        )
        .unwrap();
        match cfg.endpoint {
            haimg::contract::node_config::NodeEndpoint::Vip {
                port: p,
                api_server_bind_port,
                static_pods,
                ..
            } => {
                assert_eq!(
                    (p, api_server_bind_port, static_pods),
                    (port, port, false),
                    "{m}"
                );
            }
            other => panic!("{m}: {other:?}"),
        }
    }
}

#[test]
fn external_haproxy_pair_in_front_of_three_masters() {
    let out = render_all(&repo().join("tests/fixtures/external-haproxy.yaml"));
    assert_golden("external-haproxy", out.path());
    check_tree(out.path());
    check_external_masters(out.path(), &["m1", "m2", "m3"], 6443);
    for lb in ["lb1", "lb2"] {
        let dir = out.path().join("external-lb").join(lb);
        keepalived_config_test(
            &dir.join("keepalived.conf"),
            &dir.join("check_apiserver.sh"),
            "eth0",
        );
        shellcheck(&dir.join("check_apiserver.sh"));
        haproxy_check(&dir.join("haproxy.cfg"));
        let hp = std::fs::read_to_string(dir.join("haproxy.cfg")).unwrap();
        for a in ["10.0.1.11:6443", "10.0.1.12:6443", "10.0.1.13:6443"] {
            assert!(
                hp.contains(a),
                "{lb}: haproxy balances over every master: {a}"
            );
        }
    }
    let ka1 = std::fs::read_to_string(out.path().join("external-lb/lb1/keepalived.conf")).unwrap();
    assert!(
        ka1.contains("unicast_src_ip 10.0.0.5")
            && ka1.contains("        10.0.0.6\n")
            && ka1.contains("10.0.0.100/32 dev eth0")
            && ka1.contains("virtual_router_id 52")
    );
}

#[test]
fn external_nginx_with_static_credentials() {
    // The fixture's credentials file (tests/fixtures/static-credentials.yaml) is committed,
    // so the golden files are stable.
    let out = render_all(&repo().join("tests/fixtures/external-nginx-static.yaml"));
    assert_golden("external-nginx-static", out.path());
    check_tree_with(out.path(), true);
    check_external_masters(out.path(), &["m1", "m2", "m3"], 8443);
    let conf = out.path().join("external-lb/proxy/nginx.conf");
    nginx_check(&conf);
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        text.contains("single point of failure"),
        "the file says a single nginx is not HA"
    );
    for a in ["10.0.1.11:8443", "10.0.1.12:8443", "10.0.1.13:8443"] {
        assert!(text.contains(a));
    }
    // Where each secret goes: the CA key only to the first master, the certificate key
    // only to masters, the token and the CA hash everywhere; node.yaml is then 0600.
    let creds = haimg::spec::credentials::parse(
        &std::fs::read_to_string(repo().join("tests/fixtures/static-credentials.yaml")).unwrap(),
        "creds",
    )
    .unwrap();
    for (file, ca_key, cert_key) in [
        ("master-m1", true, true),
        ("master-m2", false, true),
        ("master-m3", false, true),
        ("worker-general", false, false),
    ] {
        let text =
            std::fs::read_to_string(out.path().join(format!("cloud-init/{file}.yaml"))).unwrap();
        let ud = haimg::yaml::parse(&text).unwrap().value;
        let files = ud["write_files"].as_array().unwrap();
        assert_eq!(
            files
                .iter()
                .any(|f| f["path"] == "/etc/kubernetes/pki/ca.key" && f["permissions"] == "0600"),
            ca_key,
            "{file}: CA key"
        );
        assert_eq!(
            text.contains(creds.ca_key.expose().lines().nth(1).unwrap()),
            ca_key,
            "{file}: CA key material"
        );
        assert_eq!(
            text.contains(creds.certificate_key.expose()),
            cert_key,
            "{file}: certificate key"
        );
        let node = files
            .iter()
            .find(|f| f["path"] == "/etc/haimg/node.yaml")
            .unwrap();
        assert_eq!(
            node["permissions"], "0600",
            "{file}: node.yaml holds the token"
        );
        let cfg = haimg::contract::node_config::NodeConfig::from_yaml(
            node["content"].as_str().unwrap(),
            file,
        )
        .unwrap();
        let st = cfg.credentials.unwrap();
        assert_eq!(st.token, creds.token);
        assert_eq!(st.ca_cert_hashes, vec![creds.ca_cert_hash()]);
        assert_eq!(st.init, file == "master-m1");
        assert!(
            text.contains("STATIC CREDENTIALS"),
            "{file}: says so loudly"
        );
        assert!(
            !format!("{:?}", ud["runcmd"]).contains("haimg-refresh"),
            "{file}: no SSM timers with static credentials"
        );
    }
}

#[test]
fn the_nginx_check_can_fail() {
    let out = render_all(&repo().join("tests/fixtures/external-nginx-static.yaml"));
    let conf = out.path().join("external-lb/proxy/nginx.conf");
    let bad = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("least_conn;", "least_conn_please;");
    std::fs::write(&conf, bad).unwrap();
    assert!(std::panic::catch_unwind(|| nginx_check(&conf)).is_err());
}

#[test]
fn render_writes_static_credentials_once_and_0600() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("c.yaml");
    std::fs::copy(
        repo().join("tests/fixtures/external-nginx-static.yaml"),
        &spec,
    )
    .unwrap();
    let render = |out: &str| {
        let o = run({
            let mut c = haimg();
            c.args(["render", "--role", "worker", "-c"])
                .arg(&spec)
                .arg("--out")
                .arg(dir.path().join(out));
            c
        });
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let first = render("a");
    assert!(
        first.contains("generated static join credentials"),
        "{first}"
    );
    let creds = dir.path().join("static-credentials.yaml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read_to_string(&creds).unwrap();
    let second = render("b");
    assert!(
        !second.contains("generated"),
        "the second render reuses the file"
    );
    assert_eq!(std::fs::read_to_string(&creds).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a/cloud-init/worker-general.yaml")).unwrap(),
        std::fs::read_to_string(dir.path().join("b/cloud-init/worker-general.yaml")).unwrap(),
        "renders agree, so separately rendered roles join one cluster"
    );
    // A damaged file is an input error naming the file and field, never echoing a secret.
    std::fs::write(
        &creds,
        before.replace("certificateKey: ", "certificateKey: zz"),
    )
    .unwrap();
    let o = run({
        let mut c = haimg();
        c.args(["render", "--role", "worker", "-c"]).arg(&spec);
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("static-credentials.yaml") && stderr(&o).contains("certificateKey"),
        "{}",
        stderr(&o)
    );
}
