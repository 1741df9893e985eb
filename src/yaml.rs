//! The one place haimg reads and writes YAML.
//!
//! Reading: `yaml-rust2`'s event parser builds a `serde_json::Value` together with the
//! line/column of every key and value, so any later check (JSON Schema, typed rules) can
//! point at the exact spot in the user's file. Plain scalars are resolved with the YAML 1.2
//! core schema (`yes`/`no` are strings, as in serde_yaml). Duplicate keys are errors.
//!
//! Writing: [`to_string`], a small block-style emitter of our own. Its readers are PyYAML
//! (cloud-init, YAML 1.1) and Go's YAML (kubeadm), so a string is written plain only when it
//! reads back as that same string under YAML 1.1 and 1.2 alike (`1.30.4`, `/haimg/demo`,
//! `IfNotPresent`); any other string is written as a JSON string, which both read as a
//! double-quoted scalar. (serde_yaml, used before, is deprecated upstream; yaml-rust2's emitter
//! leaves YAML 1.1 dates and `1_000` unquoted.)

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::error::Pos;

/// A parsed YAML document with positions, keyed by JSON pointer (`/spec/controlPlane/count`).
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
    /// The source text of plain scalars that resolved to a number or bool, for messages
    /// like "`1.30` was read as the number 1.3".
    raw: HashMap<String, String>,
}

impl Document {
    /// Position of the value at `pointer`, or of its nearest ancestor that has one.
    pub fn value_pos(&self, pointer: &str) -> Option<Pos> {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.values.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind('/')?;
            p = &p[..cut];
        }
    }

    /// Position of the key of the member at `pointer` (falls back to the value's position).
    pub fn key_pos(&self, pointer: &str) -> Option<Pos> {
        self.keys
            .get(pointer)
            .copied()
            .or_else(|| self.value_pos(pointer))
    }

    /// The source text of a plain scalar that YAML resolved to a number or a bool.
    pub fn raw_scalar(&self, pointer: &str) -> Option<&str> {
        self.raw.get(pointer).map(String::as_str)
    }

    /// Moves the object member at `from` to the sibling key of `to` (used to keep checking
    /// past a misspelt key as if it had been spelt right).
    pub fn rename(&mut self, from: &str, to: &str) {
        let (Some(a), Some(b)) = (from.rfind('/'), to.rfind('/')) else {
            return;
        };
        let (parent, key, new_key) = (&from[..a], unescape(&from[a + 1..]), unescape(&to[b + 1..]));
        if let Some(Value::Object(map)) = self.value.pointer_mut(parent) {
            if map.contains_key(&new_key) {
                map.shift_remove(&key);
            } else if let Some(v) = map.shift_remove(&key) {
                map.insert(new_key, v);
            }
        }
    }

    /// Removes the object member at `pointer` (used to keep checking past unknown keys).
    pub fn remove(&mut self, pointer: &str) {
        let Some(cut) = pointer.rfind('/') else {
            return;
        };
        let (parent, key) = (&pointer[..cut], unescape(&pointer[cut + 1..]));
        if let Some(Value::Object(map)) = self.value.pointer_mut(parent) {
            map.shift_remove(&key);
        }
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Option<Pos>,
    pub message: String,
}

/// Parses one YAML document (an empty input is `null`).
pub fn parse(text: &str) -> Result<Document, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        pos: Some(to_pos(e.marker())),
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(Document {
        value: builder.root.unwrap_or(Value::Null),
        values: builder.values,
        keys: builder.keys,
        raw: builder.raw,
    })
}

/// Deserializes a parsed document into `T`; on failure, the JSON pointer of the offending
/// value (as far as serde tells) and the message.
pub fn from_document<T: serde::de::DeserializeOwned>(
    doc: &Document,
) -> Result<T, (String, String)> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(&doc.value, &mut track);
    T::deserialize(de).map_err(|e| {
        let path = track.path();
        let pointer: String = path
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(format!("/{index}")),
                serde_path_to_error::Segment::Map { key } => Some(format!("/{}", escape(key))),
                serde_path_to_error::Segment::Enum { variant } => {
                    Some(format!("/{}", escape(variant)))
                }
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        (pointer, e.to_string())
    })
}

/// Serializes a value as block-style YAML (see the module's documentation for quoting).
pub fn to_string<T: serde::Serialize>(value: &T) -> String {
    // Plain data structs (string keys only) always convert to a JSON value.
    let v = serde_json::to_value(value).expect("YAML serialization of plain data");
    let mut out = String::new();
    match &v {
        Value::Object(m) if !m.is_empty() => emit_map(&mut out, m, 0, false),
        Value::Array(a) if !a.is_empty() => emit_seq(&mut out, a, 0, false),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

/// A scalar, or an empty collection, as it is written after `key: ` or `- `.
fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
        _ => false,
    }
}

/// `indent` spaces before every line but the first when `inline_first` (after `- `).
fn emit_map(out: &mut String, m: &Map<String, Value>, indent: usize, inline_first: bool) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !inline_first {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&scalar(k));
        out.push(':');
        match v {
            Value::Object(m) if is_block(v) => {
                out.push('\n');
                emit_map(out, m, indent + 2, false);
            }
            Value::Array(a) if is_block(v) => {
                out.push('\n');
                emit_seq(out, a, indent + 2, false);
            }
            _ => {
                out.push(' ');
                out.push_str(&inline(v));
                out.push('\n');
            }
        }
    }
}

fn emit_seq(out: &mut String, a: &[Value], indent: usize, inline_first: bool) {
    for (i, v) in a.iter().enumerate() {
        if i > 0 || !inline_first {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str("- ");
        match v {
            Value::Object(m) if is_block(v) => emit_map(out, m, indent + 2, true),
            Value::Array(a) if is_block(v) => emit_seq(out, a, indent + 2, true),
            _ => {
                out.push_str(&inline(v));
                out.push('\n');
            }
        }
    }
}

/// A string plain when YAML 1.1 and 1.2 both read it back as itself, else JSON-quoted.
fn scalar(s: &str) -> String {
    if plain_is_safe(s) {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string serializes")
    }
}

/// Conservative on purpose: words, paths, versions and addresses stay readable; anything a
/// YAML 1.1 reader might take for a bool, null, number, date or indicator is quoted.
fn plain_is_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
    {
        return false;
    }
    if first.is_ascii_digit() {
        // Only digits, slashes and two or more dots (1.30.4, 10.0.0.1, 10.96.0.0/12): no int,
        // float or date reads that way. `1_000`, `1e5`, `2026-12-04` and `0x1f` are quoted.
        return s
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '/')
            && s.matches('.').count() >= 2;
    }
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_') {
        return false; // `-x`, `.inf`
    }
    const KEYWORDS: [&str; 11] = [
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
    ];
    !KEYWORDS.contains(&s.to_ascii_lowercase().as_str())
}

/// Escapes a JSON pointer segment (RFC 6901).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

fn to_pos(m: &Marker) -> Pos {
    // yaml-rust2 markers: line is 1-based, col is 0-based.
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

enum Frame {
    Seq {
        pointer: String,
        items: Vec<Value>,
    },
    Map {
        pointer: String,
        map: Map<String, Value>,
        key: Option<String>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
    raw: HashMap<String, String>,
    anchors: HashMap<usize, Value>,
    error: Option<SyntaxError>,
}

impl Builder {
    /// The pointer the next value will have.
    fn next_pointer(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { pointer, items }) => format!("{pointer}/{}", items.len()),
            Some(Frame::Map { pointer, key, .. }) => {
                format!("{pointer}/{}", escape(key.as_deref().unwrap_or_default()))
            }
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                pos: Some(to_pos(&mark)),
                message,
            });
        }
    }

    fn insert(&mut self, value: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => {
                if let Some(k) = key.take() {
                    map.insert(k, value);
                }
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        if self.expecting_key() {
            let key = match ev {
                Event::Scalar(s, ..) => s,
                Event::MappingEnd => {
                    self.close(mark);
                    return;
                }
                _ => return self.fail(mark, "only plain string keys are supported".into()),
            };
            let Some(Frame::Map {
                pointer,
                map,
                key: slot,
            }) = self.stack.last_mut()
            else {
                unreachable!("expecting_key checked the top frame")
            };
            let child = format!("{pointer}/{}", escape(&key));
            if map.contains_key(&key) {
                let msg = format!("duplicate key `{key}`");
                return self.fail(mark, msg);
            }
            *slot = Some(key);
            self.keys.insert(child, to_pos(&mark));
            return;
        }
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let pointer = self.next_pointer();
                self.values.insert(pointer.clone(), to_pos(&mark));
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if style == TScalarStyle::Plain && !is_str_tag {
                    let v = resolve_plain(&text);
                    if matches!(v, Value::Number(_) | Value::Bool(_)) {
                        self.raw.insert(pointer, text);
                    }
                    v
                } else {
                    Value::String(text)
                };
                self.insert(value, anchor);
            }
            Event::SequenceStart(_anchor, _) => {
                let pointer = self.next_pointer();
                self.values.insert(pointer.clone(), to_pos(&mark));
                self.stack.push(Frame::Seq {
                    pointer,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(_anchor, _) => {
                let pointer = self.next_pointer();
                self.values.insert(pointer.clone(), to_pos(&mark));
                self.stack.push(Frame::Map {
                    pointer,
                    map: Map::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(mark),
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(v) => {
                    let pointer = self.next_pointer();
                    self.values.insert(pointer, to_pos(&mark));
                    self.insert(v, 0);
                }
                None => self.fail(mark, "alias to an unknown anchor".into()),
            },
            Event::DocumentStart if self.root.is_some() => {
                self.fail(mark, "expected one YAML document, found several".into())
            }
            _ => {}
        }
    }
}

impl Builder {
    fn close(&mut self, _mark: Marker) {
        // Anchors on collections are not tracked (none of haimg's files need them).
        let value = match self.stack.pop() {
            Some(Frame::Seq { items, .. }) => Value::Array(items),
            Some(Frame::Map { map, .. }) => Value::Object(map),
            None => return,
        };
        self.insert(value, 0);
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Number(i.into());
        }
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Number(i.into());
        }
    }
    if let Some(oct) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Number(i.into());
        }
    }
    let looks_float = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.matches('.').count() <= 1;
    if looks_float {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_string())
}

/// `/spec/workerPools/0/name` → `spec.workerPools[0].name`.
pub fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_yaml_reads_back_as_the_same_value() {
        let v = serde_json::json!({
            "plain": ["IfNotPresent", "/haimg/demo", "alias/aws/ssm", "1.30.4", "10.0.0.1", "10.96.0.0/12", "haimg.dev/v1alpha1"],
            "quoted": ["", "yes", "No", "on", "OFF", "y", "null", "~", "true", "1", "1.5", "1e5", "1_000",
                       "0x1f", "0o17", "2026-12-04", "2026-12-04T16:55:48Z", "1:20", ".inf", "-x", "a b",
                       "a: b", "#c", "it's", "say \"hi\"", "two\nlines", "tab\there", "é", "root:root", "0644"],
            "numbers": [0, -3, 2.5, 6443],
            "bools": [true, false],
            "nothing": null,
            "empty": {"map": {}, "list": []},
            "nested": [{"name": "a", "args": ["x", {"k": "v"}], "more": {"deep": [1, [2, 3]]}}],
            "odd key: yes": "v"
        });
        let text = to_string(&v);
        assert_eq!(parse(&text).unwrap().value, v, "{text}");
        for line in [
            "  - IfNotPresent",
            "  - 1.30.4",
            "  - 10.96.0.0/12",
            "  - \"yes\"",
            "  - \"1_000\"",
            "  - \"2026-12-04\"",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.starts_with("plain:\n  - IfNotPresent\n"), "{text}");
        assert!(
            text.contains("nested:\n  - name: a\n    args:\n      - x\n      - k: v\n"),
            "{text}"
        );
        assert_eq!(to_string(&serde_json::json!("x")), "x\n");
        assert_eq!(to_string(&serde_json::json!({})), "{}\n");
    }

    #[test]
    fn dotted_paths() {
        assert_eq!(
            dotted("/spec/workerPools/0/name"),
            "spec.workerPools[0].name"
        );
        assert_eq!(dotted(""), "");
        assert_eq!(dotted("/spec/tags/a~1b"), "spec.tags.a/b");
    }

    #[test]
    fn positions_of_keys_and_values() {
        let doc = parse("a:\n  b: 1\n  c: [x, \"y\"]\n").unwrap();
        assert_eq!(
            doc.value,
            serde_json::json!({"a": {"b": 1, "c": ["x", "y"]}})
        );
        assert_eq!(doc.key_pos("/a/b"), Some(Pos { line: 2, col: 3 }));
        assert_eq!(doc.value_pos("/a/b"), Some(Pos { line: 2, col: 6 }));
        assert_eq!(doc.value_pos("/a/c/1"), Some(Pos { line: 3, col: 10 }));
        // Unknown pointers fall back to their nearest ancestor.
        assert_eq!(doc.value_pos("/a/c/1/zzz"), Some(Pos { line: 3, col: 10 }));
    }

    #[test]
    fn core_schema_scalars() {
        let doc = parse(
            "v: 1.30.4\nf: 1.30\nq: '1.30'\nyes: yes\nn: ~\nh: 0x1f\ns: !!str 12\nip: 10.0.0.1",
        )
        .unwrap();
        assert_eq!(doc.value["v"], "1.30.4");
        assert_eq!(doc.value["f"], serde_json::json!(1.3));
        assert_eq!(doc.raw_scalar("/f"), Some("1.30"));
        assert_eq!(doc.value["q"], "1.30");
        assert_eq!(doc.value["yes"], "yes");
        assert_eq!(doc.value["n"], Value::Null);
        assert_eq!(doc.value["h"], 31);
        assert_eq!(doc.value["s"], "12");
        assert_eq!(doc.value["ip"], "10.0.0.1");
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_have_positions() {
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.pos.unwrap().line, 3);
        assert!(e.message.contains("duplicate key `a`"), "{}", e.message);
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.is_some());
    }

    #[test]
    fn anchors_and_aliases() {
        let doc = parse("a: &x hello\nb: *x\n").unwrap();
        assert!(parse("a: 1\n---\nb: 2\n")
            .unwrap_err()
            .message
            .contains("several"));
        assert_eq!(doc.value["b"], "hello");
    }

    #[test]
    fn remove_member() {
        let mut doc = parse("a:\n  b: 1\n  c: 2\n").unwrap();
        doc.remove("/a/b");
        assert_eq!(doc.value, serde_json::json!({"a": {"c": 2}}));
    }
}
