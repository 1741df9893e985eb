//! The published JSON Schema of `cluster.yaml`, and the structural check that uses it.
//!
//! The schema is generated from the very types the file is parsed into
//! ([`super::wire::ClusterFile`]), published as `schema/cluster.schema.json` (a test fails
//! when it is stale), and used to report every structural problem of a file at once.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::types::JsonType;
use serde_json::Value;

use super::wire::ClusterFile;
use crate::contract::types::explain_pattern;
use crate::error::Diagnostic;
use crate::yaml::{self, Document};

/// The schema as JSON.
pub fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut s = schemars::schema_for!(ClusterFile).to_value();
        if let Value::Object(m) = &mut s {
            m.insert(
                "$id".into(),
                "https://haimg.dev/schemas/v1alpha1/cluster.schema.json".into(),
            );
        }
        s
    })
}

/// The schema as the pretty-printed text that is published.
pub fn schema_text() -> String {
    let mut s = serde_json::to_string_pretty(schema()).expect("schema serializes");
    s.push('\n');
    s
}

/// Structural problems of one document: unknown keys, missing keys, wrong types, bad
/// enum values, malformed ids.
pub struct Structural {
    pub diagnostics: Vec<(String, Diagnostic)>,
    /// Whether the document still deserializes into the wire types once unknown keys are
    /// removed (only then can the typed rules run and add their own findings).
    pub blocking: bool,
    /// Pointers of unknown keys, to be removed before deserializing, with the key they
    /// most likely meant (the typed rules then check the value under that name).
    pub unknown: Vec<(String, Option<String>)>,
}

pub fn check(doc: &Document, file: &str) -> Structural {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        jsonschema::validator_for(schema()).expect("the generated schema is valid")
    });

    let mut out = Structural {
        diagnostics: Vec::new(),
        blocking: false,
        unknown: Vec::new(),
    };
    let mut acc = Acc {
        suggested: Vec::new(),
        required: Vec::new(),
    };
    for err in validator.iter_errors(&doc.value) {
        handle(&err, doc, file, &mut out, &mut acc);
    }
    let Acc {
        suggested,
        required,
    } = acc;
    for (parent, name) in required {
        let pointer = format!("{parent}/{}", yaml::escape(&name));
        // A misspelt key already says "did you mean `name`?": do not also say it is missing
        // (the value is checked under the name it was meant to have).
        if suggested.contains(&pointer) {
            continue;
        }
        out.blocking = true;
        let where_ = if parent.is_empty() {
            "the document".to_string()
        } else {
            format!("`{}`", crate::yaml::dotted(&parent))
        };
        let message = format!("missing required field `{name}` in {where_}");
        out.diagnostics.push((
            pointer.clone(),
            Diagnostic {
                file: file.to_string(),
                pos: doc.value_pos(&parent),
                path: crate::yaml::dotted(&pointer),
                message,
            },
        ));
    }
    out
}

/// What `check` gathers across errors.
struct Acc {
    suggested: Vec<String>,
    required: Vec<(String, String)>,
}

/// Turns one schema error into diagnostics. A `oneOf` of tagged variants (the endpoint
/// `type`) is resolved to the variant the document names, and that variant's own errors
/// are reported; an unknown tag is reported on the tag.
fn handle(
    err: &jsonschema::ValidationError,
    doc: &Document,
    file: &str,
    out: &mut Structural,
    acc: &mut Acc,
) {
    let at = err.instance_path.as_str().to_string();
    let mut report = |message: String, blocking: bool| {
        push(out, file, doc, &at, message, blocking);
    };
    match &err.kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            unknown_fields(unexpected, &at, doc, file, out, acc)
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default().to_string();
            acc.required.push((at, name));
        }
        ValidationErrorKind::Type { kind } => report(type_message(kind, err, doc, &at), true),
        ValidationErrorKind::Pattern { pattern } => {
            let value = err.instance.as_str().unwrap_or_default();
            let message = explain_pattern(pattern, value)
                .unwrap_or_else(|| format!("`{value}` does not match `{pattern}`"));
            report(message, false)
        }
        ValidationErrorKind::Constant { expected_value } => {
            let message = format!(
                "must be `{}`, found {}",
                plain(expected_value),
                describe(&err.instance, None)
            );
            report(message, true)
        }
        ValidationErrorKind::Enum { options } => {
            let choices: Vec<String> = options
                .as_array()
                .into_iter()
                .flatten()
                .map(plain)
                .collect();
            let found = err
                .instance
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| describe(&err.instance, None));
            report(not_one_of(&found, &choices), true)
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            one_of(err, context, doc, file, out, acc)
        }
        // Ranges and lengths: the typed rules re-check these with a better message, but
        // keep the schema's word in case they do not.
        _ => report(err.to_string(), false),
    }
}

/// One diagnostic at the value of `at`; `blocking` when the typed pass cannot run on it.
fn push(
    out: &mut Structural,
    file: &str,
    doc: &Document,
    at: &str,
    message: String,
    blocking: bool,
) {
    out.diagnostics.push((
        at.to_string(),
        Diagnostic {
            file: file.to_string(),
            pos: doc.value_pos(at),
            path: crate::yaml::dotted(at),
            message,
        },
    ));
    out.blocking |= blocking;
}

/// `` `found` is not one of: a, b`` with the nearest one suggested.
fn not_one_of(found: &str, choices: &[String]) -> String {
    let mut message = format!("`{found}` is not one of: {}", choices.join(", "));
    if let Some(best) = did_you_mean(found, choices) {
        message.push_str(&format!(" (did you mean `{best}`?)"));
    }
    message
}

/// Unknown keys, each at its key, with the nearest known one suggested.
fn unknown_fields(
    unexpected: &[String],
    at: &str,
    doc: &Document,
    file: &str,
    out: &mut Structural,
    acc: &mut Acc,
) {
    let known = known_keys(schema(), at, doc.value.pointer(at));
    for key in unexpected {
        let pointer = format!("{at}/{}", yaml::escape(key));
        let mut message = format!("unknown field `{key}`");
        let mut meant = None;
        if let Some(best) = did_you_mean(key, &known) {
            message.push_str(&format!(", did you mean `{best}`?"));
            let target = format!("{at}/{}", yaml::escape(&best));
            acc.suggested.push(target.clone());
            meant = Some(target);
        } else if !known.is_empty() {
            message.push_str(&format!(" (expected one of: {})", known.join(", ")));
        }
        out.diagnostics.push((
            pointer.clone(),
            Diagnostic {
                file: file.to_string(),
                pos: doc.key_pos(&pointer),
                path: crate::yaml::dotted(&pointer),
                message,
            },
        ));
        out.unknown.push((pointer, meant));
    }
}

fn type_message(
    kind: &TypeKind,
    err: &jsonschema::ValidationError,
    doc: &Document,
    at: &str,
) -> String {
    let types: Vec<JsonType> = match kind {
        TypeKind::Single(t) => vec![*t],
        TypeKind::Multiple(ts) => ts.iter().filter(|t| *t != JsonType::Null).collect(),
    };
    let expected = types
        .iter()
        .map(|t| type_word(*t))
        .collect::<Vec<_>>()
        .join(" or ");
    let found = describe(&err.instance, doc.raw_scalar(at));
    let mut message = format!("expected {expected}, found {found}");
    if expected.starts_with("a string") && doc.raw_scalar(at).is_some() {
        message.push_str(": quote it to keep it a string");
    }
    message
}

/// A `oneOf` (or `anyOf`) that failed: the errors of the branch the document's `type` tag
/// names, or an unknown tag on the tag, or no form at all.
fn one_of(
    err: &jsonschema::ValidationError,
    context: &[Vec<jsonschema::ValidationError>],
    doc: &Document,
    file: &str,
    out: &mut Structural,
    acc: &mut Acc,
) {
    let at = err.instance_path.as_str();
    let tag = format!("{at}/type");
    let on_tag = |errs: &Vec<jsonschema::ValidationError>| {
        errs.iter().any(|e| e.instance_path.as_str() == tag)
    };
    if let Some(branch) = context.iter().find(|errs| !on_tag(errs)) {
        for e in branch {
            handle(e, doc, file, out, acc);
        }
        return;
    }
    let tags: Vec<String> = context
        .iter()
        .flatten()
        .filter(|e| e.instance_path.as_str() == tag)
        .filter_map(|e| match &e.kind {
            ValidationErrorKind::Constant { expected_value } => Some(plain(expected_value)),
            ValidationErrorKind::Enum { options } => {
                options.as_array().and_then(|o| o.first()).map(plain)
            }
            _ => None,
        })
        .collect();
    if !tags.is_empty() && err.instance.get("type").is_some() {
        let found = err.instance["type"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| describe(&err.instance["type"], None));
        push(out, file, doc, &tag, not_one_of(&found, &tags), true);
        return;
    }
    let found = describe(&err.instance, doc.raw_scalar(at));
    push(
        out,
        file,
        doc,
        at,
        format!("{found} matches none of the allowed forms"),
        true,
    );
}

fn type_word(t: JsonType) -> &'static str {
    match t {
        JsonType::Array => "a list",
        JsonType::Boolean => "a boolean (true or false)",
        JsonType::Integer => "a whole number",
        JsonType::Null => "nothing",
        JsonType::Number => "a number",
        JsonType::Object => "a mapping",
        JsonType::String => "a string",
    }
}

fn plain(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn describe(v: &Value, raw: Option<&str>) -> String {
    let shown = raw.map(str::to_string).unwrap_or_else(|| plain(v));
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(_) => format!("the boolean `{shown}`"),
        Value::Number(_) => format!("the number `{shown}`"),
        Value::String(s) => format!("the string `{s}`"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean(word: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.clone())
}

/// The property names the schema allows for the object at `pointer`.
fn known_keys(root: &Value, pointer: &str, instance: Option<&Value>) -> Vec<String> {
    let mut nodes = vec![root];
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        let mut next = Vec::new();
        for node in nodes.iter().flat_map(|n| expand(root, n)) {
            if let Some(p) = node.get("properties").and_then(|p| p.get(&seg)) {
                next.push(p);
            } else if let Some(items) = node.get("items") {
                if seg.parse::<usize>().is_ok() {
                    next.push(items);
                }
            } else if let Some(ap @ Value::Object(_)) = node.get("additionalProperties") {
                next.push(ap);
            }
        }
        nodes = next;
    }
    // Of a tagged union (`type: nlb | vip`), only the variant the document names.
    let tag = instance.and_then(|i| i.get("type")).and_then(Value::as_str);
    let matches_tag = |n: &&Value| {
        let Some(t) = n.get("properties").and_then(|p| p.get("type")) else {
            return true;
        };
        let consts: Vec<&str> = t
            .get("const")
            .and_then(Value::as_str)
            .into_iter()
            .chain(
                t.get("enum")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            )
            .collect();
        consts.is_empty() || tag.is_none_or(|tag| consts.contains(&tag))
    };
    let mut keys: Vec<String> = nodes
        .iter()
        .flat_map(|n| expand(root, n))
        .filter(matches_tag)
        .filter_map(|n| n.get("properties").and_then(Value::as_object))
        .flat_map(|m| m.keys().cloned())
        .collect();
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys
}

/// A schema node with its `$ref` followed and its `anyOf`/`oneOf`/`allOf` branches listed.
fn expand<'a>(root: &'a Value, node: &'a Value) -> Vec<&'a Value> {
    let mut out = vec![];
    let mut todo = vec![node];
    while let Some(n) = todo.pop() {
        if let Some(r) = n.get("$ref").and_then(Value::as_str) {
            if let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                todo.push(target);
            }
        }
        for k in ["anyOf", "oneOf", "allOf"] {
            if let Some(Value::Array(bs)) = n.get(k) {
                todo.extend(bs.iter());
            }
        }
        out.push(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = vec!["controlPlane".to_string(), "workerPools".to_string()];
        assert_eq!(
            did_you_mean("contrlPlane", &keys).as_deref(),
            Some("controlPlane")
        );
        assert_eq!(did_you_mean("zzz", &keys), None);
    }

    #[test]
    fn known_keys_follow_refs() {
        let keys = known_keys(schema(), "/spec/controlPlane", None);
        assert!(keys.contains(&"instanceType".to_string()), "{keys:?}");
        let keys = known_keys(schema(), "/spec/workerPools/3", None);
        assert!(keys.contains(&"desiredCapacity".to_string()), "{keys:?}");
    }
}
