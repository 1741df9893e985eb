//! The template engine: tera, in strict mode, with templates embedded in the binary.
//!
//! * Every template is rendered from a typed context (a `Serialize` struct); an unknown
//!   variable is an error, never an empty string.
//! * Templates are for text: user-data, the provisioning script, keepalived, haproxy and
//!   nginx configs. The JSON files are serialised from typed values
//!   ([`crate::contract::artifacts`], [`crate::render::iam`]), never templated.
//! * Escaping is explicit and per format: in YAML templates every value goes through
//!   `| yaml_str` (a double-quoted scalar), `| json` (a number or string, valid YAML too),
//!   `| block(indent=N)` (the body of a literal block) or `| comment` (inside a `#`
//!   line). A test checks that no template interpolates a value any other way.
//! * `--templates DIR` replaces any embedded template with `DIR/<same relative path>`.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Every embedded template, by its path in the repository.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "cloud-init/base.yaml.tera",
        include_str!("../../cloud-init/base.yaml.tera"),
    ),
    (
        "cloud-init/master.yaml.tera",
        include_str!("../../cloud-init/master.yaml.tera"),
    ),
    (
        "cloud-init/worker.yaml.tera",
        include_str!("../../cloud-init/worker.yaml.tera"),
    ),
    (
        "vip/keepalived.conf.tera",
        include_str!("../../vip/keepalived.conf.tera"),
    ),
    (
        "vip/check_apiserver.sh.tera",
        include_str!("../../vip/check_apiserver.sh.tera"),
    ),
    (
        "vip/haproxy.cfg.tera",
        include_str!("../../vip/haproxy.cfg.tera"),
    ),
    (
        "vip/keepalived.pod.yaml.tera",
        include_str!("../../vip/keepalived.pod.yaml.tera"),
    ),
    (
        "vip/haproxy.pod.yaml.tera",
        include_str!("../../vip/haproxy.pod.yaml.tera"),
    ),
    (
        "image-recipes/provision.sh.tera",
        include_str!("../../image-recipes/provision.sh.tera"),
    ),
    // Plain bash, included verbatim by the script (and sourced on its own by the tests).
    (
        "image-recipes/provision-lib.sh",
        include_str!("../../image-recipes/provision-lib.sh"),
    ),
    (
        "vip/nginx.conf.tera",
        include_str!("../../vip/nginx.conf.tera"),
    ),
];

pub struct Templates {
    tera: tera::Tera,
}

impl Templates {
    /// The embedded templates.
    pub fn embedded() -> Self {
        Self::build(
            EMBEDDED
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        )
        .expect("embedded templates parse (checked by tests)")
    }

    /// The embedded templates, with any file present under `dir` taking precedence.
    pub fn with_overrides(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "--templates {}: not a directory",
                dir.display()
            )));
        }
        // A template file haimg no longer has (the JSON files are typed values now) or
        // never had would be silently ignored: refuse it, by name.
        let unknown: Vec<String> = tera_files(dir)
            .into_iter()
            .filter(|rel| !EMBEDDED.iter().any(|(n, _)| n == rel))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::Usage(format!(
                "--templates {}: {} {} not a haimg template (the templates are {}; launch templates, groups, the load balancer and IAM policies are typed values, no longer templates: change them through the spec, or edit the rendered JSON)",
                dir.display(),
                unknown.join(", "),
                if unknown.len() == 1 { "is" } else { "are" },
                EMBEDDED
                    .iter()
                    .map(|(n, _)| *n)
                    .filter(|n| n.ends_with(".tera"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut sources = Vec::new();
        for (name, text) in EMBEDDED {
            let p = dir.join(name);
            let text = if p.exists() {
                std::fs::read_to_string(&p).map_err(Error::io(&p))?
            } else {
                text.to_string()
            };
            sources.push((name.to_string(), text));
        }
        Self::build(sources)
    }

    fn build(sources: Vec<(String, String)>) -> Result<Self> {
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        tera.add_raw_templates(sources)
            .map_err(|e| Error::Template {
                name: "(parse)".into(),
                message: chain(&e),
            })?;
        tera.register_filter("json", json_filter);
        tera.register_filter("yaml_str", yaml_str_filter);
        tera.register_filter("block", block_filter);
        tera.register_filter("comment", comment_filter);
        tera.register_filter("conf", conf_filter);
        tera.register_filter("sh", sh_filter);
        tera.register_filter("heredoc", heredoc_filter);
        Ok(Self { tera })
    }

    pub fn render<C: Serialize>(&self, name: &str, ctx: &C) -> Result<String> {
        let ctx = tera::Context::from_serialize(ctx).map_err(|e| Error::Template {
            name: name.into(),
            message: chain(&e),
        })?;
        self.tera.render(name, &ctx).map_err(|e| Error::Template {
            name: name.into(),
            message: chain(&e),
        })
    }
}

/// Every `*.tera` file under `dir`, by its path relative to `dir` (`/`-separated).
fn tera_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "tera") {
                if let Ok(rel) = p.strip_prefix(dir) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
    }
    out.sort();
    out
}

/// tera's errors keep the useful part in their source chain.
use crate::error::chain;

fn json_filter(v: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    Ok(Value::String(serde_json::to_string(v)?))
}

/// A string as a YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_str_filter(v: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    let s = v
        .as_str()
        .ok_or_else(|| tera::Error::msg("yaml_str takes a string"))?;
    Ok(Value::String(serde_json::to_string(s)?))
}

/// A token in keepalived.conf or haproxy.cfg: these formats have no quoting that both
/// share, so a value is accepted only if it cannot change the syntax (letters, digits and
/// `. _ : / - * [ ]`); anything else is a render error, never a silently broken config.
fn conf_filter(v: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(tera::Error::msg("conf takes a string or a number")),
    };
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/-*[]".contains(c))
    {
        return Err(tera::Error::msg(format!(
            "`{s}` cannot be written safely into a keepalived/haproxy config"
        )));
    }
    Ok(Value::String(s))
}

/// A POSIX shell word: single-quoted, with embedded single quotes closed and escaped.
fn sh_filter(v: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(tera::Error::msg("sh takes a string or a number")),
    };
    Ok(Value::String(format!("'{}'", s.replace('\'', "'\\''"))))
}

/// The body of a quoted shell here-document (`<<'DELIM'`, no expansion): refused when a
/// line equals the delimiter (it would end the document early); ends with a newline.
fn heredoc_filter(v: &Value, args: &HashMap<String, Value>) -> tera::Result<Value> {
    let s = v
        .as_str()
        .ok_or_else(|| tera::Error::msg("heredoc takes a string"))?;
    let delim = args
        .get("delimiter")
        .and_then(Value::as_str)
        .ok_or_else(|| tera::Error::msg("heredoc needs delimiter=\"…\""))?;
    if s.lines().any(|l| l == delim) {
        return Err(tera::Error::msg(format!(
            "a line of the here-document body is its delimiter `{delim}`"
        )));
    }
    let mut out = s.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(Value::String(out))
}

/// Text for a `#` comment line: line breaks become spaces, so nothing escapes the comment.
fn comment_filter(v: &Value, _: &HashMap<String, Value>) -> tera::Result<Value> {
    let s = v
        .as_str()
        .ok_or_else(|| tera::Error::msg("comment takes a string"))?;
    Ok(Value::String(s.replace(['\n', '\r'], " ")))
}

/// The body of a YAML literal block: every line after the first indented by `indent`.
fn block_filter(v: &Value, args: &HashMap<String, Value>) -> tera::Result<Value> {
    let s = v
        .as_str()
        .ok_or_else(|| tera::Error::msg("block takes a string"))?;
    let n = args
        .get("indent")
        .and_then(Value::as_u64)
        .ok_or_else(|| tera::Error::msg("block needs indent=N"))? as usize;
    let pad = " ".repeat(n);
    let mut out = String::new();
    for (i, line) in s.trim_end_matches('\n').split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&pad);
            }
        }
        out.push_str(line);
    }
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_templates_parse() {
        let _ = Templates::embedded();
    }

    /// Every `{{ … }}` must end in the escaping filter of its format.
    #[test]
    fn every_interpolation_is_escaped_for_its_format() {
        for (name, text) in EMBEDDED {
            let allowed: &[&str] = if name.ends_with(".conf.tera") || name.ends_with(".cfg.tera") {
                &["| conf", "| comment"]
            } else if name.ends_with(".sh.tera") {
                &["| sh", "| comment", "| heredoc("]
            } else {
                // YAML: a JSON number or string is a valid YAML scalar too.
                &["| yaml_str", "| block(indent=", "| comment", "| json"]
            };
            for expr in text.split("{{").skip(1) {
                let expr = expr.split("}}").next().unwrap().trim();
                assert!(
                    allowed.iter().any(|f| expr.contains(f)),
                    "{name}: `{{{{ {expr} }}}}` is not escaped with one of {allowed:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_variables_are_errors() {
        let t = Templates::build(vec![("t".into(), "{{ nope | json }}".into())]).unwrap();
        let err = t.render("t", &serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn filters_escape() {
        let t = Templates::build(vec![(
            "t".into(),
            "{{ s | yaml_str }}|{{ s | json }}|{{ b | block(indent=2) }}".into(),
        )])
        .unwrap();
        let out = t
            .render(
                "t",
                &serde_json::json!({"s": "a\"b: c", "b": "x\ny\n\nz\n"}),
            )
            .unwrap();
        assert_eq!(out, "\"a\\\"b: c\"|\"a\\\"b: c\"|x\n  y\n\n  z");
    }

    #[test]
    fn conf_and_shell_escaping() {
        let t = Templates::build(vec![
            ("c".into(), "{{ v | conf }}".into()),
            ("s".into(), "{{ v | sh }}".into()),
        ])
        .unwrap();
        assert_eq!(
            t.render("c", &serde_json::json!({"v": "10.0.0.1:6444"}))
                .unwrap(),
            "10.0.0.1:6444"
        );
        assert!(t
            .render("c", &serde_json::json!({"v": "x }\n evil {"}))
            .is_err());
        assert_eq!(
            t.render("s", &serde_json::json!({"v": "it's"})).unwrap(),
            "'it'\\''s'"
        );
    }

    #[test]
    fn an_override_haimg_does_not_have_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("launch-templates")).unwrap();
        std::fs::write(
            dir.path()
                .join("launch-templates/launch-template.json.tera"),
            "{}",
        )
        .unwrap();
        let err = Templates::with_overrides(dir.path())
            .err()
            .expect("refused");
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(
            msg.contains("launch-templates/launch-template.json.tera is not a haimg template"),
            "{msg}"
        );
        assert!(msg.contains("cloud-init/master.yaml.tera"), "{msg}");
    }

    #[test]
    fn overrides_replace_embedded_templates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vip")).unwrap();
        std::fs::write(
            dir.path().join("vip/nginx.conf.tera"),
            "listen {{ port | conf }};",
        )
        .unwrap();
        let t = Templates::with_overrides(dir.path()).unwrap();
        assert_eq!(
            t.render("vip/nginx.conf.tera", &serde_json::json!({"port": 1}))
                .unwrap(),
            "listen 1;"
        );
    }
}
