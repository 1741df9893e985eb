//! `haimg render`: golden files, real validators on every output, and the secrets scan.

mod common;

use std::io::Read;
use std::path::Path;

use base64::Engine;
use common::*;

/// Renders the whole tree of `spec` into a temporary directory.
fn render_all(spec: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = haimg();
    cmd.args(["render", "--all", "-c"]).arg(spec).arg("--out").arg(out.path());
    let o = run(cmd);
    assert!(o.status.success(), "render failed: {}", stderr(&o));
    out
}

/// The AWS CLI operation each rendered JSON file is the input of.
fn operation_of(rel: &str) -> &'static str {
    match rel {
        r if r.starts_with("launch-templates/") => "ec2:CreateLaunchTemplate",
        r if r.starts_with("autoscaling/") => "autoscaling:CreateAutoScalingGroup",
        "load-balancer/load-balancer.json" => "elbv2:CreateLoadBalancer",
        "load-balancer/target-group.json" => "elbv2:CreateTargetGroup",
        "load-balancer/target-group-attributes.json" => "elbv2:ModifyTargetGroupAttributes",
        "load-balancer/listener.json" => "elbv2:CreateListener",
        r if r.starts_with("iam/") => "iam-policy",
        other => panic!("no validator known for {other}"),
    }
}

fn decode_user_data(b64: &str) -> String {
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut s).unwrap();
        s
    } else {
        String::from_utf8(raw).unwrap()
    }
}

/// Every check on a rendered tree: AWS CLI validation of each JSON file, cloud-init
/// schema on each user-data (the file, and what the launch template carries), the
/// launch template invariants, and the secrets scan.
fn check_tree(root: &Path) {
    let mut aws = Vec::new();
    for rel in files(root) {
        let path = root.join(&rel);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_no_secrets(&rel, &text);
        if rel.ends_with(".json") {
            aws.push(format!("{}={}", operation_of(&rel), path.display()));
        }
        if rel.starts_with("cloud-init/") {
            cloud_init_schema(&text, &rel);
            check_node_yaml(&rel, &text);
        }
        if rel.starts_with("launch-templates/") {
            let lt: serde_json::Value = serde_json::from_str(&text).unwrap();
            let data = &lt["LaunchTemplateData"];
            assert_eq!(data["MetadataOptions"]["HttpTokens"], "required", "{rel}");
            assert_eq!(data["MetadataOptions"]["HttpPutResponseHopLimit"], 1, "{rel}");
            assert_eq!(data["MetadataOptions"]["HttpEndpoint"], "enabled", "{rel}");
            assert!(data.get("KeyName").is_none(), "{rel}: no key pair, ever");
            let ebs = &data["BlockDeviceMappings"][0]["Ebs"];
            assert_eq!((ebs["VolumeType"].as_str(), ebs["Encrypted"].as_bool()), (Some("gp3"), Some(true)), "{rel}");
            let ud = decode_user_data(data["UserData"].as_str().unwrap());
            let stem = rel.trim_start_matches("launch-templates/").trim_end_matches(".json");
            let file_ud = std::fs::read_to_string(root.join(format!("cloud-init/{stem}.yaml"))).unwrap();
            assert_eq!(ud, file_ud, "{rel}: the launch template carries exactly cloud-init/{stem}.yaml");
            for spec in data["TagSpecifications"].as_array().unwrap() {
                let keys: Vec<&str> = spec["Tags"].as_array().unwrap().iter().map(|t| t["Key"].as_str().unwrap()).collect();
                for k in ["haimg:cluster", "haimg:role", "haimg:pool"] {
                    assert!(keys.contains(&k), "{rel}: {k} missing in {keys:?}");
                }
                assert!(keys.iter().any(|k| k.starts_with("kubernetes.io/cluster/")), "{rel}");
            }
        }
    }
    aws_validate(&aws);
}

/// The node config embedded in user-data parses as the agent will parse it.
fn check_node_yaml(rel: &str, text: &str) {
    let doc = haimg::yaml::parse(text).unwrap().value;
    let files = doc["write_files"].as_array().unwrap();
    let node = files.iter().find(|f| f["path"] == "/etc/haimg/node.yaml").unwrap_or_else(|| panic!("{rel}: no node.yaml"));
    let cfg = haimg::node::config::NodeConfig::from_yaml(node["content"].as_str().unwrap(), rel).unwrap();
    assert_eq!(cfg.role.as_str(), if rel.contains("master") { "master" } else { "worker" });
    let runcmd = format!("{:?}", doc["runcmd"]);
    assert!(runcmd.contains("bootstrap"), "{rel}: runs haimg node bootstrap");
    for forbidden in ["packages", "apt", "snap"] {
        assert!(doc.get(forbidden).is_none(), "{rel}: an air-gapped node installs nothing ({forbidden})");
    }
    assert!(!text.contains("curl ") && !text.contains("wget "), "{rel}: downloads nothing");
}

/// No bootstrap token, certificate key or private key in any output.
fn assert_no_secrets(rel: &str, text: &str) {
    let mut texts = vec![text.to_string()];
    // Look inside base64 user-data too.
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(ud) = v["LaunchTemplateData"]["UserData"].as_str() {
            texts.push(decode_user_data(ud));
        }
    }
    for t in texts {
        assert!(!t.contains("PRIVATE KEY"), "{rel}: contains a private key");
        for (i, w) in t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.')).enumerate() {
            // kubeadm bootstrap token: [a-z0-9]{6}.[a-z0-9]{16}
            if let Some((a, b)) = w.split_once('.') {
                let tok = |s: &str, n: usize| s.len() == n && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
                assert!(!(tok(a, 6) && tok(b, 16)), "{rel}: word {i} looks like a bootstrap token");
            }
            // kubeadm certificate key: 64 hex characters.
            assert!(!(w.len() == 64 && w.bytes().all(|c| c.is_ascii_hexdigit())), "{rel}: word {i} looks like a certificate key");
        }
        for key in ["token", "certificateKey", "caCertHashes"] {
            assert!(!t.contains(&format!("{key}:")) && !t.contains(&format!("\"{key}\"")), "{rel}: carries `{key}`");
        }
    }
}

#[test]
fn example_tree_matches_golden_and_passes_validators() {
    let out = render_all(&repo().join("examples/cluster.yaml"));
    assert_golden("example", out.path());
    check_tree(out.path());
}

#[test]
fn five_master_tree_matches_golden_and_passes_validators() {
    let out = render_all(&repo().join("tests/fixtures/five-masters.yaml"));
    assert_golden("five-masters", out.path());
    check_tree(out.path());
    let asg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("autoscaling/master.json")).unwrap()).unwrap();
    assert_eq!((asg["MinSize"].as_u64(), asg["MaxSize"].as_u64(), asg["DesiredCapacity"].as_u64()), (Some(5), Some(5), Some(5)));
}

#[test]
fn the_secrets_scan_catches_what_it_looks_for() {
    // The scan must be able to fail: feed it each kind of secret.
    for bad in [
        "token: abcdef.0123456789abcdef",
        "x: 3f9ba1c1c8f5c6b3f6a8d6b1e4f2a9c7d5e3b1a9f7c5e3d1b9a7f5e3c1a9b7d5",
        "-----BEGIN RSA PRIVATE KEY-----",
        "{\"certificateKey\": \"x\"}",
    ] {
        let caught = std::panic::catch_unwind(|| assert_no_secrets("probe", bad)).is_err();
        assert!(caught, "the secrets scan missed: {bad}");
    }
}

#[test]
fn render_role_master_works_in_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = haimg();
    cmd.current_dir(dir.path()).args(["render", "--role", "master"]);
    let o = run(cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("#cloud-config\n"));
    cloud_init_schema(&text, "stdout");
}

#[test]
fn base64_format_is_the_launch_template_user_data() {
    let dir = tempfile::tempdir().unwrap();
    let spec = repo().join("examples/cluster.yaml");
    let mut cmd = haimg();
    cmd.args(["render", "--role", "worker", "--pool", "general", "--format", "base64", "-c"]).arg(&spec);
    let b64 = stdout(&run(cmd)).trim().to_string();
    let mut cmd = haimg();
    cmd.args(["render", "--role", "worker", "--pool", "general", "-c"]).arg(&spec).arg("--out").arg(dir.path());
    assert!(run(cmd).status.success());
    let lt: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("launch-templates/worker-general.json")).unwrap()).unwrap();
    assert_eq!(lt["LaunchTemplateData"]["UserData"].as_str().unwrap(), b64);
    let mut got = files(dir.path());
    got.sort();
    assert_eq!(got, ["autoscaling/worker-general.json", "cloud-init/worker-general.yaml", "iam/worker-policy.json", "launch-templates/worker-general.json"]);
}

/// A pool with enough labels to push user-data past 16 KB: gzipped in the launch
/// template, still valid cloud-config after gunzip.
#[test]
fn oversized_user_data_is_gzipped_and_still_valid() {
    let mut spec = std::fs::read_to_string(repo().join("examples/cluster.yaml")).unwrap();
    let labels: String = (0..400).map(|i| format!("        example.com/label-{i:03}: value-{i:03}\n")).collect();
    spec = spec.replace("      desiredCapacity: 2\n", &format!("      desiredCapacity: 2\n      labels:\n{labels}"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.yaml");
    std::fs::write(&f, spec).unwrap();
    let out = render_all(&f);
    let text = std::fs::read_to_string(out.path().join("cloud-init/worker-general.yaml")).unwrap();
    assert!(text.len() > 16 * 1024, "the test spec must exceed the limit");
    let lt: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("launch-templates/worker-general.json")).unwrap()).unwrap();
    let raw = base64::engine::general_purpose::STANDARD.decode(lt["LaunchTemplateData"]["UserData"].as_str().unwrap()).unwrap();
    assert!(raw.starts_with(&[0x1f, 0x8b]) && raw.len() <= 16 * 1024, "gzipped and within the limit");
    check_tree(out.path());
}

#[test]
fn incompressible_oversized_user_data_fails_with_exit_2() {
    let mut spec = std::fs::read_to_string(repo().join("examples/cluster.yaml")).unwrap();
    // Label values that do not compress: a xorshift sequence.
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let mut labels = String::new();
    for i in 0..700 {
        let v: String = (0..40)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                alphabet[(x % alphabet.len() as u64) as usize] as char
            })
            .collect();
        labels.push_str(&format!("        l{i}: {v}\n"));
    }
    spec = spec.replace("      desiredCapacity: 2\n", &format!("      desiredCapacity: 2\n      labels:\n{labels}"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("huge.yaml");
    std::fs::write(&f, spec).unwrap();
    let mut cmd = haimg();
    cmd.args(["render", "--all", "-c"]).arg(&f).arg("--out").arg(dir.path().join("out"));
    let o = run(cmd);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("16384") && stderr(&o).contains("worker-general"), "{}", stderr(&o));
}
