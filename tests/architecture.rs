//! The module layering the crate documents (src/lib.rs), checked on the source itself: a
//! dependency that points the wrong way fails here, not in a reviewer's head.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every `crate::<module>` a file names, with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((n + 1, name));
            rest = tail;
        }
    }
    out
}

fn src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel)
}

/// Which of haimg's modules `files` use beyond `allowed`, as `file:line: crate::name`.
fn uses_beyond(files: &[PathBuf], allowed: &[&str]) -> Vec<String> {
    let mut bad = vec![];
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for (line, name) in crate_paths(&text) {
            if !allowed.contains(&name.as_str()) {
                bad.push(format!("{}:{line}: crate::{name}", f.display()));
            }
        }
        if text.contains("super::super") {
            bad.push(format!("{}: super::super", f.display()));
        }
    }
    bad
}

#[test]
fn the_contracts_use_nothing_of_haimg_but_errors_and_yaml() {
    let files = sources(&src("contract"));
    assert!(files.len() >= 6, "{files:?}");
    let bad = uses_beyond(&files, &["contract", "error", "yaml"]);
    assert!(
        bad.is_empty(),
        "the contract module must stay a leaf:\n{}",
        bad.join("\n")
    );
}

#[test]
fn errors_and_yaml_use_nothing_of_haimg() {
    let bad = uses_beyond(&[src("error.rs"), src("yaml.rs")], &["error"]);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_layering_check_sees_a_wrong_way_dependency() {
    let text = "use crate::error::Error;\nfn f() { crate::node::run(); }\n";
    assert_eq!(
        crate_paths(text),
        vec![(1, "error".to_string()), (2, "node".to_string())]
    );
}

/// Every `aws_sdk_<service>::<item>` a file names outside `src/aws/`, beyond a client
/// (`aws_sdk_ec2::Client`), as `file:line: path`: SDK types, builders, errors and
/// operations belong to the edge.
fn sdk_beyond_clients(files: &[PathBuf]) -> Vec<String> {
    let mut bad = vec![];
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("aws_sdk_") {
                let tail = &rest[at..];
                let path: String = tail
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let item = path.split("::").nth(1).unwrap_or("");
                if item != "Client" {
                    bad.push(format!("{}:{}: {path}", f.display(), n + 1));
                }
                rest = &tail["aws_sdk_".len()..];
            }
        }
    }
    bad
}

#[test]
fn sdk_calls_and_types_live_in_the_aws_module() {
    let files: Vec<PathBuf> = sources(&src(""))
        .into_iter()
        .filter(|f| !f.starts_with(src("aws")) && *f != src("error.rs"))
        .collect();
    assert!(files.len() > 40, "{}", files.len());
    let bad = sdk_beyond_clients(&files);
    assert!(
        bad.is_empty(),
        "the AWS SDK beyond its clients outside src/aws:\n{}",
        bad.join("\n")
    );
    // The scanner sees a wrong one.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.rs");
    std::fs::write(
        &f,
        "let c = aws_sdk_ec2::Client::new(&sdk);\nlet t = aws_sdk_ec2::types::Tag::builder();\n",
    )
    .unwrap();
    assert_eq!(
        sdk_beyond_clients(std::slice::from_ref(&f)),
        [format!(
            "{}:2: aws_sdk_ec2::types::Tag::builder",
            f.display()
        )]
    );
}
