//! A recording, fault-injecting proxy in front of moto (tests/doubles/awsproxy.py), and
//! the AWS CLI against moto: how the AWS-facing tests count calls, inject faults and check
//! results without haimg's own reads.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::fleet::{wait_for_port, Moto};
use super::{repo, run, stderr, venv};

pub struct Proxy {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    rules: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub fn start(moto: &Moto) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let log = dir.path().join("calls.jsonl");
        let rules = dir.path().join("rules.json");
        let child = Command::new("python3")
            .arg(repo().join("tests/doubles/awsproxy.py"))
            .arg(moto.url())
            .arg(&port_file)
            .arg(&log)
            .arg(&rules)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_file.exists() {
            assert!(Instant::now() < deadline, "proxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let port: u16 = std::fs::read_to_string(&port_file)
            .unwrap()
            .parse()
            .unwrap();
        wait_for_port(port, "proxy");
        Proxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            rules,
            _dir: dir,
        }
    }
    pub fn set_rules(&self, rules: serde_json::Value) {
        std::fs::write(&self.rules, rules.to_string()).unwrap();
    }
    pub fn calls(&self, action: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"action\": \"{action}\"")))
            .count()
    }
    pub fn reset_log(&self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The AWS CLI against moto directly.
pub fn aws(moto: &Moto, region: &str, args: &[&str]) -> serde_json::Value {
    let o = run({
        let mut c = Command::new(venv().join("bin/aws"));
        c.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .args([
                "--endpoint-url",
                &moto.url(),
                "--region",
                region,
                "--output",
                "json",
            ])
            .args(args);
        c
    });
    assert!(o.status.success(), "aws {args:?}: {}", stderr(&o));
    if o.stdout.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

impl Proxy {
    /// Every call since the log was last reset, as `service:Action`.
    pub fn all_calls(&self) -> Vec<String> {
        Self::calls_in(&self.log)
    }
    /// Every call since the proxy started, resets or not.
    pub fn every_call(&self) -> Vec<String> {
        Self::calls_in(&self.log.with_extension("jsonl.all"))
    }
    fn calls_in(log: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!(
                    "{}:{}",
                    v["service"].as_str().unwrap(),
                    v["action"].as_str().unwrap()
                )
            })
            .collect()
    }
    /// The calls that change something: all but Describe*, Get*, List*.
    pub fn mutating_calls(&self) -> Vec<String> {
        self.all_calls()
            .into_iter()
            .filter(|c| {
                let action = c.split(':').nth(1).unwrap_or_default();
                !["Describe", "Get", "List"]
                    .iter()
                    .any(|p| action.starts_with(p))
            })
            .collect()
    }
}

/// The IAM action a recorded call needs: `service:Action` as logged, or for S3's REST calls
/// (logged as `METHOD /bucket[/key]`) the action that method and path map to. `None` for a
/// request signed by no one (a presigned URL the builder uses: its signer's policy is what
/// the presign needed).
pub fn iam_action(call: &str) -> Option<String> {
    let (service, action) = call.split_once(':')?;
    if service == "?" {
        return None;
    }
    if service != "s3" {
        return Some(call.to_string());
    }
    let (method, path) = action.split_once(' ')?;
    let object = path.trim_start_matches('/').contains('/');
    let a = match (method, object) {
        ("PUT", false) => "CreateBucket",
        ("DELETE", false) => "DeleteBucket",
        ("GET" | "HEAD", false) => "ListBucket",
        ("PUT", true) => "PutObject",
        ("GET" | "HEAD", true) => "GetObject",
        ("DELETE", true) => "DeleteObject",
        _ => return Some(call.to_string()),
    };
    Some(format!("s3:{a}"))
}

/// The actions a policy document allows (haimg's policies name each action, no wildcards).
pub fn policy_actions(doc: &serde_json::Value) -> std::collections::BTreeSet<String> {
    doc["Statement"]
        .as_array()
        .expect("a policy's Statement is a list")
        .iter()
        .filter(|st| st["Effect"] == "Allow")
        .flat_map(|st| st["Action"].as_array().expect("Action is a list").iter())
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Asserts the rendered `iam/operator-policy.json` allows every call `calls` made.
pub fn assert_operator_policy_allows(rendered: &std::path::Path, calls: &[String], what: &str) {
    let path = rendered.join("iam/operator-policy.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let allowed = policy_actions(&doc);
    let needed: std::collections::BTreeSet<String> =
        calls.iter().filter_map(|c| iam_action(c)).collect();
    assert!(!needed.is_empty(), "{what}: no calls recorded");
    let missing: Vec<&String> = needed.iter().filter(|a| !allowed.contains(*a)).collect();
    assert!(
        missing.is_empty(),
        "{what} called {missing:?}, which {} does not allow",
        path.display()
    );
}

/// moto's IAM checks a policy document's grammar as AWS does (version, effects, action
/// and ARN syntax, condition operators): every rendered policy must be one it accepts.
pub fn assert_policies_accepted(moto: &Moto, rendered: &std::path::Path) {
    let dir = rendered.join("iam");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".json")
            .to_string();
        let doc = format!("file://{}", e.path().display());
        let v = aws(
            moto,
            "us-east-1",
            &[
                "iam",
                "create-policy",
                "--policy-name",
                &name,
                "--policy-document",
                &doc,
            ],
        );
        assert_eq!(v["Policy"]["PolicyName"], name.as_str());
        n += 1;
    }
    assert!(n >= 3, "only {n} policies in {}", dir.display());
}
