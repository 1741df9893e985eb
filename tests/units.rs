//! The systemd units the image installs: `systemd-analyze verify` (any complaint fails,
//! since it exits 0 on many), and every unit the user-data enables exists.

mod common;

use common::*;

#[test]
fn units_verify_cleanly() {
    let bin = require_tool("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for e in std::fs::read_dir(repo().join("systemd")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // verify checks that ExecStart exists: point it at the binary under test.
        let text = std::fs::read_to_string(e.path())
            .unwrap()
            .replace("/usr/local/bin/haimg", env!("CARGO_BIN_EXE_haimg"));
        std::fs::write(dir.path().join(&name), text).unwrap();
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "haimg-reconcile.service",
            "haimg-reconcile.timer",
            "haimg-refresh.service",
            "haimg-refresh.timer",
            "haimg-watch.service"
        ]
    );
    let o = run({
        let mut c = std::process::Command::new(bin);
        c.current_dir(dir.path())
            .arg("verify")
            .args(names.iter().map(|n| format!("./{n}")));
        c
    });
    let complaints: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.contains(".service") || l.contains(".timer"))
        .map(str::to_string)
        .collect();
    assert!(
        o.status.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{}",
        stderr(&o)
    );
}

#[test]
fn every_unit_the_user_data_enables_is_shipped() {
    for t in ["cloud-init/base.yaml.tera", "cloud-init/master.yaml.tera"] {
        let text = std::fs::read_to_string(repo().join(t)).unwrap();
        for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == ']') {
            if word.starts_with("haimg-")
                && (word.ends_with(".service") || word.ends_with(".timer"))
            {
                assert!(
                    repo().join("systemd").join(word).is_file(),
                    "{t} enables {word}, which systemd/ does not ship"
                );
            }
        }
    }
}

/// `key=value` settings of one section of a unit file.
fn unit_settings(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = vec![];
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            if current == section && !line.starts_with('#') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

#[test]
fn the_watcher_is_restarted_on_failure_only() {
    // `watch` exits 0 where there is nothing to watch and after it has left: with
    // Restart=always systemd would start it again every 5 s for ever.
    let text = std::fs::read_to_string(repo().join("systemd/haimg-watch.service")).unwrap();
    let service = unit_settings(&text, "Service");
    let restart: Vec<_> = service.iter().filter(|(k, _)| k == "Restart").collect();
    assert_eq!(
        restart,
        [&("Restart".to_string(), "on-failure".to_string())]
    );
}

#[test]
fn the_test_command_refuses_to_rewrite_golden_files() {
    // With HAIMG_UPDATE_GOLDEN set every golden test rewrites its files and passes.
    let o = run({
        let mut c = std::process::Command::new(repo().join("scripts/test.sh"));
        c.env("HAIMG_UPDATE_GOLDEN", "1");
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("HAIMG_UPDATE_GOLDEN is set"),
        "{}",
        stderr(&o)
    );
}
