//! Helpers shared by the integration tests: the haimg binary, the real validators, and
//! golden files. A validator that is missing fails the test that needs it: run
//! `scripts/install-test-deps.sh` (the README's test command does).
#![allow(dead_code)]

pub mod containerd;
pub mod etcd;
pub mod fleet;
pub mod kubeapi;
pub mod proxy;
pub mod qemu;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn haimg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_haimg"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What scripts/kube-artifacts.sh makes from ../shared/kubernetes (made once, cached):
/// the `--sources` directory of the debian-12 recipe.
pub fn kube_artifacts() -> PathBuf {
    let o = run({
        let mut c = Command::new(repo().join("scripts/kube-artifacts.sh"));
        c.arg("v1.30.0");
        c
    });
    assert!(o.status.success(), "kube-artifacts.sh: {}", stderr(&o));
    PathBuf::from(stdout(&o).trim())
}

/// The debian-12 recipe (with `sources`) and a local mirror frozen with exactly what its
/// bake installs, as scripts/local-mirror.sh makes it (made once for the same packages,
/// cached): the directory holding `mirror/` and `key.gpg`.
pub fn frozen_mirror(sources: &Path) -> (haimg::recipe::Recipe, PathBuf) {
    let recipe = haimg::recipe::load_from(Some("debian-12"), Some(sources))
        .unwrap()
        .recipe;
    let mut wanted: Vec<String> = haimg::bake::local::BASE_PACKAGES
        .iter()
        .map(|p| p.to_string())
        .collect();
    wanted.extend(recipe.packages.iter().map(|(p, v)| format!("{p}={v}")));
    let o = run({
        let mut c = Command::new(repo().join("scripts/local-mirror.sh"));
        c.arg(sources).args(&wanted);
        c
    });
    assert!(o.status.success(), "local-mirror.sh: {}", stderr(&o));
    (recipe, PathBuf::from(stdout(&o).trim()))
}

/// `haimg render --all` of `spec` into `out`.
pub fn render_all_into(spec: &Path, out: &Path) {
    let mut cmd = haimg();
    cmd.args(["render", "--all", "-c"])
        .arg(spec)
        .arg("--out")
        .arg(out);
    let o = run(cmd);
    assert!(o.status.success(), "render failed: {}", stderr(&o));
}

/// `haimg render --all` of `spec` into a temporary directory.
pub fn render_all(spec: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    render_all_into(spec, out.path());
    out
}

pub fn run(mut cmd: Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A tool the tests need: its path, or a failure that says how to install it.
pub fn require_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is required by this test and was not found: run scripts/install-test-deps.sh"
        )
    })
}

/// The virtualenv with moto and the AWS CLI (botocore).
pub fn venv() -> PathBuf {
    let dir = std::env::var_os("HAIMG_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/haimg/venv")
        });
    let py = dir.join("bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run scripts/install-test-deps.sh",
        py.display()
    );
    dir
}

/// Validates AWS CLI inputs (`service:Operation=FILE`, `iam-policy=FILE`) with botocore's
/// ParamValidator, the service models' enums, and moto's IAM policy validator.
pub fn aws_validate(args: &[String]) {
    if args.is_empty() {
        return;
    }
    let mut cmd = Command::new(venv().join("bin/python"));
    cmd.arg(repo().join("tests/validators/aws_validate.py"))
        .args(args);
    let o = run(cmd);
    assert!(
        o.status.success(),
        "AWS CLI validation failed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}

/// `cloud-init schema` on a #cloud-config text (plain; gunzip before calling).
pub fn cloud_init_schema(text: &str, what: &str) {
    let bin = require_tool("cloud-init");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("user-data.yaml");
    std::fs::write(&f, text).unwrap();
    let o = run({
        let mut c = Command::new(bin);
        c.args(["schema", "--config-file"]).arg(&f);
        c
    });
    assert!(
        o.status.success(),
        "cloud-init schema rejected {what}:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}

/// Compares every file under `actual` with `tests/golden/<case>`; with
/// `HAIMG_UPDATE_GOLDEN=1` rewrites the golden files instead.
pub fn assert_golden(case: &str, actual: &Path) {
    let golden = repo().join("tests/golden").join(case);
    let update = std::env::var_os("HAIMG_UPDATE_GOLDEN").is_some();
    let mut got = files(actual);
    got.sort();
    if update {
        let _ = std::fs::remove_dir_all(&golden);
        for rel in &got {
            let dst = golden.join(rel);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(actual.join(rel), dst).unwrap();
        }
        return;
    }
    let mut want = files(&golden);
    want.sort();
    assert_eq!(got, want, "the set of rendered files differs from tests/golden/{case} (HAIMG_UPDATE_GOLDEN=1 rewrites it)");
    for rel in &got {
        let a = std::fs::read_to_string(actual.join(rel)).unwrap();
        let g = std::fs::read_to_string(golden.join(rel)).unwrap();
        if a != g {
            let line = a
                .lines()
                .zip(g.lines())
                .position(|(x, y)| x != y)
                .map(|i| i + 1)
                .unwrap_or(0);
            panic!("{rel} differs from tests/golden/{case}/{rel} near line {line} (review, then HAIMG_UPDATE_GOLDEN=1 to accept)");
        }
    }
}

pub fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// A program `scripts/shared-tools.sh` unpacked from `../shared` (haproxy-2.0.33,
/// keepalived-2.0.19, kubeadm-1.30.0, kubeadm-1.31.2): its path, or a failure saying how
/// to get it.
pub fn shared_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("HAIMG_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/haimg/tools")
        });
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/install-test-deps.sh (it unpacks ../shared's programs)",
        p.display()
    );
    p
}

/// The sha256 of a file, lowercase hex (what recipes pin).
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}
