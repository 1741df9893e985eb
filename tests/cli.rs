//! The command line's own documentation: shell completions and man pages, generated from
//! the clap definitions, checked by the tools that read them.

mod common;

use std::process::Command;

use common::*;

#[test]
fn bash_completes_subcommands_and_flags_from_the_generated_script() {
    let o = run({
        let mut c = haimg();
        c.args(["completions", "bash"]);
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("haimg.bash");
    std::fs::write(&script, stdout(&o)).unwrap();
    // bash itself: the script parses, registers a completion for haimg, and completes.
    let complete = |words: &str| -> String {
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!(
                r#"source "$1" || exit 1; complete -p haimg >/dev/null || exit 1
                COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}
                _haimg haimg "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"; printf '%s\n' "${{COMPREPLY[@]}}""#
            ))
            .arg("bash")
            .arg(&script)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let subs = complete("haimg ''");
    for s in [
        "bake",
        "render",
        "up",
        "status",
        "down",
        "validate",
        "lab",
        "completions",
        "man",
    ] {
        assert!(subs.lines().any(|l| l == s), "{s} in {subs}");
    }
    assert_eq!(complete("haimg la").trim(), "lab");
    let flags = complete("haimg bake --pl");
    assert_eq!(flags.trim(), "--plain", "{flags}");
    let lab = complete("haimg lab ''");
    for s in ["up", "status", "down", "scale", "terminate"] {
        assert!(lab.lines().any(|l| l == s), "lab {s} in {lab}");
    }
    // clap_complete offers hidden subcommands too (`lab serve`, which `lab up` starts):
    // known upstream, harmless; not asserted either way.
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    for shell in ["zsh", "fish"] {
        let o = run({
            let mut c = haimg();
            c.args(["completions", shell]);
            c
        });
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        // Neither shell is on this machine to load them: their generator's words, checked.
        for word in ["bake", "lab", "terminate", "plain"] {
            assert!(text.contains(word), "{shell}: {word}");
        }
    }
    let o = run({
        let mut c = haimg();
        c.args(["completions", "tcsh"]);
        c
    });
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// groff reads a page with every warning on; anything it says fails the test.
fn groff_clean(page: &[u8], what: &str) {
    let mut child = Command::new(require_tool("groff"))
        // -k: preconv first, as man(1) reads a page (the help texts hold UTF-8).
        .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), page).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn man_pages_come_from_the_command_line_and_groff_reads_them_cleanly() {
    let o = run({
        let mut c = haimg();
        c.arg("man");
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(
        page.starts_with(".ie") || page.contains(".TH haimg 1"),
        "{page}"
    );
    assert!(page.contains("lab"), "the subcommands are listed");
    groff_clean(page.as_bytes(), "haimg.1");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let o = run({
        let mut c = haimg();
        c.args(["man", "--out"]).arg(&out);
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: Vec<String> = stdout(&o).lines().map(String::from).collect();
    for name in [
        "haimg.1",
        "haimg-bake.1",
        "haimg-lab.1",
        "haimg-lab-up.1",
        "haimg-lab-terminate.1",
        "haimg-man.1",
    ] {
        let p = out.join(name);
        assert!(
            listed.contains(&p.display().to_string()),
            "{name} in {listed:?}"
        );
        groff_clean(&std::fs::read(&p).unwrap(), name);
    }
    assert!(
        !out.join("haimg-lab-serve.1").exists(),
        "no page for a hidden command"
    );
    let bake = std::fs::read_to_string(out.join("haimg-bake.1")).unwrap();
    assert!(bake.contains("plain"), "the flags are documented");
}

/// The project's own scripts (the test command, CI's entry, the benchmarks and the helpers
/// they source) pass shellcheck, following what they source.
#[test]
fn every_script_is_shellcheck_clean() {
    let mut scripts: Vec<std::path::PathBuf> = std::fs::read_dir(repo().join("scripts"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 10, "{scripts:?}");
    scripts.push(repo().join(".ci/run"));
    let o = run({
        let mut c = Command::new(require_tool("shellcheck"));
        c.current_dir(repo()).arg("-x").args(&scripts);
        c
    });
    assert!(o.status.success(), "shellcheck:\n{}", stdout(&o));
}
