//! What haimg's YAML emitter writes, read back by the readers that consume it on a node:
//! PyYAML (cloud-init reads the user-data with it, YAML 1.1 rules). Go's reader is covered by
//! `kubeadm config validate` on every rendered kubeadm config (tests/kubeadm_configs.rs).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn pyyaml_reads_every_emitted_scalar_back_as_written() {
    // The test venv's Python carries PyYAML (cloud-init's own dependency).
    let python = venv().join("bin/python");
    let v = serde_json::json!({
        "plain": ["IfNotPresent", "/haimg/demo", "alias/aws/ssm", "1.30.4", "10.0.0.1", "10.96.0.0/12", "1.5/2", "haimg.dev/v1alpha1"],
        "quoted": ["", "yes", "No", "on", "OFF", "y", "n", "null", "~", "true", "1", "1.5", "1e5", "1_000",
                   "0x1f", "0o17", "0b101", "017", "2026-12-04", "2026-12-04T16:55:48Z", "1:20", ".inf", ".NaN",
                   "-x", "a b", "a: b", "#c", "it's", "say \"hi\"", "two\nlines", "tab\there", "é", "root:root",
                   "0644", "=", "<<", "*a", "&a", "!tag", "%x", "@x", "`x"],
        "numbers": [0, -3, 2.5, 6443],
        "bools": [true, false],
        "nothing": null,
        "empty": {"map": {}, "list": []},
        "nested": [{"name": "a", "args": ["x", {"k": "v"}]}],
    });
    let text = haimg::yaml::to_string(&v);
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "PyYAML: {}", stderr(&o));
    let back: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(back, v, "PyYAML read\n{text}\nas {back:#}");
}
