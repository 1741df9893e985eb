//! Checks every rendered tree goes through: the real validators and the secrets scan.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;

use base64::Engine;

use super::*;

/// The AWS CLI operation each rendered JSON file is the input of.
pub fn operation_of(rel: &str) -> &'static str {
    match rel {
        r if r.starts_with("launch-templates/") => "ec2:CreateLaunchTemplate",
        r if r.starts_with("autoscaling/") => "autoscaling:CreateAutoScalingGroup",
        "load-balancer/load-balancer.json" => "elbv2:CreateLoadBalancer",
        "load-balancer/target-group.json" => "elbv2:CreateTargetGroup",
        "load-balancer/target-group-attributes.json" => "elbv2:ModifyTargetGroupAttributes",
        "load-balancer/listener.json" => "elbv2:CreateListener",
        r if r.starts_with("iam/") => "iam-policy",
        "security-groups/cluster-ingress.json" => "ec2:AuthorizeSecurityGroupIngress",
        other => panic!("no validator known for {other}"),
    }
}

pub fn decode_user_data(b64: &str) -> String {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut s)
            .unwrap();
        s
    } else {
        String::from_utf8(raw).unwrap()
    }
}

/// Every check on a rendered tree: AWS CLI validation of each JSON file, cloud-init
/// schema on each user-data (the file, and what the launch template carries), the
/// launch template invariants, and the secrets scan.
pub fn check_tree(root: &Path) {
    check_tree_with(root, false)
}

/// `static_credentials`: user-data (and the launch templates that carry it) may hold join
/// secrets, and must then be 0600; every other file still holds none.
pub fn check_tree_with(root: &Path, static_credentials: bool) {
    let mut aws = Vec::new();
    for rel in files(root) {
        let path = root.join(&rel);
        let text = std::fs::read_to_string(&path).unwrap();
        let carries_user_data =
            rel.starts_with("cloud-init/") || rel.starts_with("launch-templates/");
        if static_credentials && carries_user_data {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{rel}: holds static credentials, must be 0600");
        } else {
            assert_no_secrets(&rel, &text);
        }
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
            assert_eq!(
                data["MetadataOptions"]["HttpPutResponseHopLimit"], 1,
                "{rel}"
            );
            assert_eq!(data["MetadataOptions"]["HttpEndpoint"], "enabled", "{rel}");
            assert!(data.get("KeyName").is_none(), "{rel}: no key pair, ever");
            let ebs = &data["BlockDeviceMappings"][0]["Ebs"];
            assert_eq!(
                (ebs["VolumeType"].as_str(), ebs["Encrypted"].as_bool()),
                (Some("gp3"), Some(true)),
                "{rel}"
            );
            let ud = decode_user_data(data["UserData"].as_str().unwrap());
            let stem = rel
                .trim_start_matches("launch-templates/")
                .trim_end_matches(".json");
            let file_ud =
                std::fs::read_to_string(root.join(format!("cloud-init/{stem}.yaml"))).unwrap();
            assert_eq!(
                ud, file_ud,
                "{rel}: the launch template carries exactly cloud-init/{stem}.yaml"
            );
            for spec in data["TagSpecifications"].as_array().unwrap() {
                let keys: Vec<&str> = spec["Tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["Key"].as_str().unwrap())
                    .collect();
                for k in ["haimg:cluster", "haimg:role", "haimg:pool"] {
                    assert!(keys.contains(&k), "{rel}: {k} missing in {keys:?}");
                }
                assert!(
                    keys.iter().any(|k| k.starts_with("kubernetes.io/cluster/")),
                    "{rel}"
                );
            }
        }
    }
    aws_validate(&aws);
}

/// The node config embedded in user-data parses as the agent will parse it.
pub fn check_node_yaml(rel: &str, text: &str) {
    let doc = haimg::yaml::parse(text).unwrap().value;
    let files = doc["write_files"].as_array().unwrap();
    let node = files
        .iter()
        .find(|f| f["path"] == "/etc/haimg/node.yaml")
        .unwrap_or_else(|| panic!("{rel}: no node.yaml"));
    let cfg =
        haimg::contract::node_config::NodeConfig::from_yaml(node["content"].as_str().unwrap(), rel)
            .unwrap();
    assert_eq!(
        cfg.role.as_str(),
        if rel.contains("master") {
            "master"
        } else {
            "worker"
        }
    );
    let runcmd = format!("{:?}", doc["runcmd"]);
    assert!(
        runcmd.contains("bootstrap"),
        "{rel}: runs haimg node bootstrap"
    );
    for forbidden in ["packages", "apt", "snap"] {
        assert!(
            doc.get(forbidden).is_none(),
            "{rel}: an air-gapped node installs nothing ({forbidden})"
        );
    }
    // Nothing the node runs at boot fetches anything (files may hold health checks that
    // talk to the local API server; cloud-init does not run those).
    for key in ["runcmd", "bootcmd"] {
        let cmds = format!("{:?}", doc.get(key).cloned().unwrap_or_default());
        for tool in ["curl", "wget", "apt", "snap", "pip"] {
            assert!(
                !cmds.contains(tool),
                "{rel}: {key} runs {tool}: an air-gapped node downloads nothing"
            );
        }
    }
}

/// No bootstrap token, certificate key or private key in any output.
pub fn assert_no_secrets(rel: &str, text: &str) {
    let mut texts = vec![text.to_string()];
    // Look inside base64 user-data too.
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(ud) = v["LaunchTemplateData"]["UserData"].as_str() {
            texts.push(decode_user_data(ud));
        }
    }
    for t in texts {
        assert!(!t.contains("PRIVATE KEY"), "{rel}: contains a private key");
        for (i, w) in t
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .enumerate()
        {
            // kubeadm bootstrap token: [a-z0-9]{6}.[a-z0-9]{16}
            if let Some((a, b)) = w.split_once('.') {
                let tok = |s: &str, n: usize| {
                    s.len() == n
                        && s.bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                };
                assert!(
                    !(tok(a, 6) && tok(b, 16)),
                    "{rel}: word {i} looks like a bootstrap token"
                );
            }
            // kubeadm certificate key: 64 hex characters.
            assert!(
                !(w.len() == 64 && w.bytes().all(|c| c.is_ascii_hexdigit())),
                "{rel}: word {i} looks like a certificate key"
            );
        }
        for key in ["token", "certificateKey", "caCertHashes"] {
            assert!(
                !t.contains(&format!("{key}:")) && !t.contains(&format!("\"{key}\"")),
                "{rel}: carries `{key}`"
            );
        }
    }
}
