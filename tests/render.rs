//! `haimg render`: golden files, real validators on every output, and the secrets scan.

mod common;

use std::path::Path;

use base64::Engine;
use common::tree::*;
use common::*;

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
    let asg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("autoscaling/master.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            asg["MinSize"].as_u64(),
            asg["MaxSize"].as_u64(),
            asg["DesiredCapacity"].as_u64()
        ),
        (Some(5), Some(5), Some(5))
    );
}

#[test]
fn masters_are_replaced_on_ec2_status_checks_not_on_readyz() {
    // `/readyz` includes etcd: as the group's health check, a quorum loss would mark every
    // master unhealthy and the group would replace them all, etcd data included.
    let out = render_all(&repo().join("examples/cluster.yaml"));
    let asg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("autoscaling/master.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(asg["HealthCheckType"], "EC2");
    // Routing still follows /readyz.
    let tg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("load-balancer/target-group.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            tg["HealthCheckProtocol"].as_str(),
            tg["HealthCheckPath"].as_str()
        ),
        (Some("HTTPS"), Some("/readyz"))
    );
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
    cmd.current_dir(dir.path())
        .args(["render", "--role", "master"]);
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
    cmd.args([
        "render", "--role", "worker", "--pool", "general", "--format", "base64", "-c",
    ])
    .arg(&spec);
    let b64 = stdout(&run(cmd)).trim().to_string();
    let mut cmd = haimg();
    cmd.args(["render", "--role", "worker", "--pool", "general", "-c"])
        .arg(&spec)
        .arg("--out")
        .arg(dir.path());
    assert!(run(cmd).status.success());
    let lt: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("launch-templates/worker-general.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(lt["LaunchTemplateData"]["UserData"].as_str().unwrap(), b64);
    let mut got = files(dir.path());
    got.sort();
    assert_eq!(
        got,
        [
            "autoscaling/worker-general.json",
            "cloud-init/worker-general.yaml",
            "iam/worker-policy.json",
            "launch-templates/worker-general.json"
        ]
    );
}

/// A pool with enough labels to push user-data past 16 KB: gzipped in the launch
/// template, still valid cloud-config after gunzip.
#[test]
fn oversized_user_data_is_gzipped_and_still_valid() {
    let mut spec = std::fs::read_to_string(repo().join("examples/cluster.yaml")).unwrap();
    let labels: String = (0..400)
        .map(|i| format!("        example.com/label-{i:03}: value-{i:03}\n"))
        .collect();
    spec = spec.replace(
        "      desiredCapacity: 2\n",
        &format!("      desiredCapacity: 2\n      labels:\n{labels}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big.yaml");
    std::fs::write(&f, spec).unwrap();
    let out = render_all(&f);
    let text = std::fs::read_to_string(out.path().join("cloud-init/worker-general.yaml")).unwrap();
    assert!(
        text.len() > 16 * 1024,
        "the test spec must exceed the limit"
    );
    let lt: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("launch-templates/worker-general.json")).unwrap(),
    )
    .unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(lt["LaunchTemplateData"]["UserData"].as_str().unwrap())
        .unwrap();
    assert!(
        raw.starts_with(&[0x1f, 0x8b]) && raw.len() <= 16 * 1024,
        "gzipped and within the limit"
    );
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
    spec = spec.replace(
        "      desiredCapacity: 2\n",
        &format!("      desiredCapacity: 2\n      labels:\n{labels}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("huge.yaml");
    std::fs::write(&f, spec).unwrap();
    let mut cmd = haimg();
    cmd.args(["render", "--all", "-c"])
        .arg(&f)
        .arg("--out")
        .arg(dir.path().join("out"));
    let o = run(cmd);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("16384") && stderr(&o).contains("worker-general"),
        "{}",
        stderr(&o)
    );
}

/// `render --all --out DIR --output json`: every file written, with its size and digest as
/// on disk, and the ones holding static join material marked secret (and 0600).
#[test]
fn render_reports_the_files_it_wrote_as_json() {
    use std::os::unix::fs::PermissionsExt;
    for (spec, secrets) in [
        ("examples/cluster.yaml", false),
        ("examples/lab.yaml", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut cmd = haimg();
        cmd.args(["render", "--all", "--output", "json", "-c"])
            .arg(repo().join(spec))
            .arg("--out")
            .arg(&out);
        let o = run(cmd);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["out"], out.display().to_string());
        let files = v["files"].as_array().unwrap();
        let on_disk = walk(&out);
        assert_eq!(files.len(), on_disk.len(), "{spec}: every file once");
        for f in files {
            let p = out.join(f["path"].as_str().unwrap());
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(f["bytes"], bytes.len(), "{}", p.display());
            assert_eq!(f["sha256"], sha256_file(&p), "{}", p.display());
            assert_eq!(f["secret"], secrets);
        }
    }
    // Static credentials: the user-data and launch templates carry them, written 0600.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("examples/lab.yaml")).unwrap();
    let spec = dir.path().join("lab.yaml");
    std::fs::write(
        &spec,
        format!("{text}  credentials:\n    source: static\n    file: creds.yaml\n"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let mut cmd = haimg();
    cmd.args(["render", "--all", "--output", "json", "-c"])
        .arg(&spec)
        .arg("--out")
        .arg(&out);
    let o = run(cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let secret: Vec<&serde_json::Value> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["secret"] == true)
        .collect();
    assert!(!secret.is_empty());
    for f in secret {
        let p = out.join(f["path"].as_str().unwrap());
        assert!(
            f["path"].as_str().unwrap().starts_with("cloud-init/")
                || f["path"].as_str().unwrap().starts_with("launch-templates/")
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            p.display()
        );
    }
    // Without --out there is nothing to report.
    let mut cmd = haimg();
    cmd.args([
        "render", "--role", "master", "--node", "m1", "--output", "json", "-c",
    ])
    .arg(repo().join("examples/lab.yaml"));
    assert_eq!(run(cmd).status.code(), Some(2));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
