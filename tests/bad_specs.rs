//! The bad-input corpus: every file under tests/bad-specs must make `haimg validate` and
//! `haimg render` exit 2, name the field in its message (the `# expect:` header), point at
//! the file, and never panic.

mod common;

use common::*;

fn expectation(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("# expect:"))
        .map(|s| s.trim().to_string())
        .expect("every corpus file has an `# expect:` header")
}

/// Runs every file of a corpus through each command (the file appended) and collects
/// every way it fails the contract: exit 2, the field and the file named, no panic, nothing
/// on stdout. Any AWS call would fail: bad input must be caught before AWS is touched.
fn check_corpus(corpus: &str, min: usize, commands: &[&[&str]]) {
    let dir = repo().join(corpus);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= min,
        "{corpus} has {} cases, at least {min} are required",
        entries.len()
    );
    let mut failures = Vec::new();
    for path in &entries {
        let expect = expectation(&std::fs::read_to_string(path).unwrap());
        let name = path.file_name().unwrap().to_string_lossy();
        for args in commands {
            let mut cmd = haimg();
            cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
                .args(*args)
                .arg(path);
            let o = run(cmd);
            let err = stderr(&o);
            if o.status.code() != Some(2) {
                failures.push(format!(
                    "{name} ({}): exit {:?}, expected 2\n{err}",
                    args[0],
                    o.status.code()
                ));
            } else if err.contains("panicked") {
                failures.push(format!("{name}: panicked\n{err}"));
            } else if !err.contains(&expect) {
                failures.push(format!("{name}: message does not name `{expect}`:\n{err}"));
            } else if !err.contains(&*path.to_string_lossy()) {
                failures.push(format!("{name}: message does not name the file:\n{err}"));
            } else if !o.stdout.is_empty() {
                failures.push(format!("{name}: wrote to stdout on failure"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n---\n")
    );
}

#[test]
fn every_bad_spec_exits_2_naming_the_field() {
    check_corpus(
        "tests/bad-specs",
        40,
        &[&["validate", "-c"], &["render", "--role", "master", "-c"]],
    );
}

/// All problems are reported at once, each with its line and column.
#[test]
fn several_problems_are_reported_together_with_positions() {
    let spec = std::fs::read_to_string(repo().join("examples/cluster.yaml"))
        .unwrap()
        .replace("count: 3", "count: 4")
        .replace("region: us-west-2", "region: mars-1")
        .replace("desiredCapacity: 2", "desiredCapacity: 9")
        .replace(
            "instanceType: t3.large\n    instanceProfile",
            "instanceTyp: t3.large\n    instanceProfile",
        );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cluster.yaml");
    std::fs::write(&f, &spec).unwrap();
    let mut cmd = haimg();
    cmd.args(["validate", "-c"]).arg(&f);
    let o = run(cmd);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    let line_of = |needle: &str| spec.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (path, needle) in [
        ("spec.controlPlane.instanceTyp: unknown field `instanceTyp`, did you mean `instanceType`?", "instanceTyp:"),
        ("spec.region", "region: mars-1"),
        ("spec.workerPools[0].desiredCapacity", "desiredCapacity: 9"),
    ] {
        let line = line_of(needle);
        assert!(err.contains(&format!("cluster.yaml:{line}:")) && err.contains(path), "expected `{path}` at line {line}:\n{err}");
    }
    // The misspelt key is reported once, as a typo, not also as a missing field.
    assert!(
        !err.contains("missing required field `instanceType`"),
        "{err}"
    );
    // Even count: the quorum is explained.
    assert!(err.contains("quorum"), "{err}");
}

/// `validate --output json`: the same problems, each with its file, line, column and field,
/// as one document on stdout; the exit codes are the same as in text.
#[test]
fn validate_reports_the_same_problems_as_json() {
    let spec = std::fs::read_to_string(repo().join("examples/cluster.yaml"))
        .unwrap()
        .replace("region: us-west-2", "region: mars-1")
        .replace("desiredCapacity: 2", "desiredCapacity: 9");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cluster.yaml");
    std::fs::write(&f, &spec).unwrap();
    let mut cmd = haimg();
    cmd.args(["validate", "--output", "json", "-c"]).arg(&f);
    let o = run(cmd);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["valid"], false);
    let line_of = |needle: &str| spec.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let problems = v["problems"].as_array().unwrap();
    for (field, needle) in [
        ("spec.region", "region: mars-1"),
        ("spec.workerPools[0].desiredCapacity", "desiredCapacity: 9"),
    ] {
        let p = problems
            .iter()
            .find(|p| p["field"] == field)
            .unwrap_or_else(|| panic!("{field} in {v}"));
        assert_eq!(p["file"], f.display().to_string(), "{p}");
        assert_eq!(p["line"], line_of(needle), "{p}");
        assert!(p["column"].as_u64().unwrap() >= 1, "{p}");
        assert!(!p["message"].as_str().unwrap().is_empty());
    }
    // A valid spec and a recipe: both listed, no problem, exit 0.
    let mut cmd = haimg();
    cmd.args(["validate", "--output", "json", "-c"])
        .arg(repo().join("examples/lab.yaml"))
        .arg("ubuntu-22.04");
    let o = run(cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    let kinds: Vec<&str> = v["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["cluster", "recipe"], "{v}");
}

#[test]
fn shipped_examples_and_fixtures_are_valid() {
    for f in [
        "examples/cluster.yaml",
        "examples/cluster-vip.yaml",
        "tests/fixtures/five-masters.yaml",
        "tests/fixtures/vip-five.yaml",
    ] {
        let mut cmd = haimg();
        cmd.args(["validate", "-c"]).arg(repo().join(f));
        let o = run(cmd);
        assert!(o.status.success(), "{f}: {}", stderr(&o));
    }
}

#[test]
fn a_missing_spec_file_is_a_usage_error() {
    let mut cmd = haimg();
    cmd.args(["validate", "-c", "/nonexistent/cluster.yaml"]);
    let o = run(cmd);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/cluster.yaml"));
}

#[test]
fn up_and_down_never_act_on_the_embedded_example() {
    // In a directory without cluster.yaml, `render` uses the embedded example; `up` and
    // `down --yes` must not create or delete a cluster "demo" nobody asked for.
    let dir = tempfile::tempdir().unwrap();
    let aws = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    aws.set_nonblocking(true).unwrap();
    for args in [&["up"][..], &["up", "--dry-run"], &["down", "--yes"]] {
        let mut cmd = haimg();
        cmd.current_dir(dir.path())
            .env(
                "AWS_ENDPOINT_URL",
                format!("http://{}", aws.local_addr().unwrap()),
            )
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .args(args);
        let o = run(cmd);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("needs your cluster spec"),
            "{}",
            stderr(&o)
        );
        assert!(
            matches!(aws.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{args:?}: no AWS call"
        );
    }
    let mut cmd = haimg();
    cmd.current_dir(dir.path())
        .args(["render", "--role", "master"]);
    assert!(
        run(cmd).status.success(),
        "render still runs out of the box"
    );
}

#[test]
fn unknown_pool_is_a_usage_error_with_suggestion() {
    let mut cmd = haimg();
    cmd.args(["render", "--role", "worker", "--pool", "generl", "-c"])
        .arg(repo().join("examples/cluster.yaml"));
    let o = run(cmd);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("did you mean `general`"),
        "{}",
        stderr(&o)
    );
}

/// The bad-recipe corpus: `haimg validate RECIPE` and `haimg bake RECIPE --dry-run`.
#[test]
fn every_bad_recipe_exits_2_naming_the_field() {
    check_corpus(
        "tests/bad-recipes",
        20,
        &[&["validate"], &["bake", "--dry-run"]],
    );
}

#[test]
fn the_shipped_recipes_are_valid() {
    // debian-12 takes its packages and images from --sources (kube-artifacts.sh).
    let sources = kube_artifacts();
    for (name, _) in haimg::recipe::EMBEDDED {
        let o = run({
            let mut c = haimg();
            c.args(["validate", name, "--sources"]).arg(&sources);
            c
        });
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let file = repo().join(format!("image-recipes/{name}.yaml"));
        let o = run({
            let mut c = haimg();
            c.arg("validate").arg(&file).arg("--sources").arg(&sources);
            c
        });
        assert!(o.status.success(), "{}: {}", file.display(), stderr(&o));
    }
}
