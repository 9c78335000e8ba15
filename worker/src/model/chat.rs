//! Chat templates: the Jinja template a Hugging Face tokenizer carries (`chat_template.jinja`,
//! or `chat_template` in tokenizer_config.json), compiled and rendered with minijinja set up as
//! transformers sets up Jinja2 for `apply_chat_template`: `trim_blocks` and `lstrip_blocks`,
//! no auto-escaping, loop controls, Python's `str`/`dict` methods (minijinja-contrib's
//! `pycompat`), `None`/`True`/`False` printed as Python prints them, the globals
//! `raise_exception(message)` and `strftime_now(format)` (local time), a `tojson` filter that
//! writes what Python's `json.dumps` writes, and the variables `messages`,
//! `add_generation_prompt`, `tools` and `documents` (none), and the special tokens of
//! tokenizer_config.json (`bos_token`, `eos_token`, ...). Templates that use the `{% generation %}`
//! tag (transformers' assistant-mask extension) do not compile.
//! Turns messages into text only; must not tokenise (see `super::tokenizer`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Serde, Value as JValue, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;
use serde_json::Value;

use super::error::{ModelError, Result};

/// The name the template has inside its minijinja environment.
const NAME: &str = "chat_template";

/// The special-token keys transformers hands to templates (`SPECIAL_TOKENS_ATTRIBUTES` less
/// `additional_special_tokens`, which is a list).
pub const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may accept others).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// The special tokens a template sees as variables (transformers' `special_tokens_map`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// [`SPECIAL_TOKEN_KEYS`] that are set → their text.
    pub tokens: BTreeMap<String, String>,
    /// `additional_special_tokens`.
    pub additional: Vec<String>,
}

/// The text of a special-token entry: a string, or an AddedToken object `{"content": ...}`.
fn token_text(v: &Value) -> Option<String> {
    v.as_str()
        .or_else(|| v.get("content").and_then(Value::as_str))
        .map(str::to_string)
}

impl SpecialTokens {
    /// The special tokens of a tokenizer_config.json value (missing or null keys are left out).
    pub fn from_config(config: &Value) -> Self {
        let tokens = SPECIAL_TOKEN_KEYS
            .iter()
            .filter_map(|k| Some((k.to_string(), token_text(config.get(*k)?)?)))
            .collect();
        let additional = config
            .get("additional_special_tokens")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(token_text).collect())
            .unwrap_or_default();
        SpecialTokens { tokens, additional }
    }
}

/// The chat template of a tokenizer_config.json value: `chat_template` as a string, or the
/// entry named `default` of a list of `{name, template}` (transformers' named templates).
/// `Ok(None)` when there is none (or only named ones without a default); an error (the reason)
/// when the key has another shape.
pub fn config_chat_template(config: &Value) -> std::result::Result<Option<&str>, String> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Array(list)) => {
            for (i, entry) in list.iter().enumerate() {
                let (Some(name), Some(template)) = (
                    entry.get("name").and_then(Value::as_str),
                    entry.get("template").and_then(Value::as_str),
                ) else {
                    return Err(format!(
                        "entry {i} is not an object with string `name` and `template`"
                    ));
                };
                if name == "default" {
                    return Ok(Some(template));
                }
            }
            Ok(None)
        }
        Some(other) => Err(format!(
            "expected a string or a list of {{name, template}}, found {other}"
        )),
    }
}

/// A compiled chat template with its special tokens.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    special: SpecialTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate({})", self.origin)
    }
}

/// The message `raise_exception` was called with, carried as the source of its error.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn template_err(origin: &str, reason: String) -> ModelError {
    ModelError::ChatTemplate {
        origin: origin.to_string(),
        reason,
    }
}

/// Why minijinja failed, with the template line and the causes; `raise_exception` calls say so.
fn describe(e: &Error) -> String {
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    let mut out = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(raised) = c.downcast_ref::<Raised>() {
            return format!("the template raised an exception{line}: {raised}");
        }
        if let Some(j) = c.downcast_ref::<Error>() {
            if !out.is_empty() {
                out.push_str(": ");
            }
            match j.detail() {
                Some(d) => write!(out, "{}: {d}", j.kind()).expect("write to String"),
                None => write!(out, "{}", j.kind()).expect("write to String"),
            }
        } else {
            write!(out, ": {c}").expect("write to String");
        }
        cause = c.source();
    }
    format!("{out}{line}")
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names where it came from (a file URL, or a file and key) in
    /// every error. A syntax error is a [`ModelError::ChatTemplate`] naming origin and line.
    pub fn new(origin: &str, source: &str, special: &SpecialTokens) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters are valid"),
        );
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, state, value| match value.kind() {
            ValueKind::None => Ok(out.write_str("None")?),
            ValueKind::Bool => Ok(out.write_str(if value.is_true() { "True" } else { "False" })?),
            _ => minijinja::escape_formatter(out, state, value),
        });
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<JValue, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, "raise_exception")
                    .with_source(Raised(message)))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| template_err(origin, describe(&e)))?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_string(),
            special: special.clone(),
        })
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Renders `messages` (transformers' `apply_chat_template(tokenize=False)`); with
    /// `add_generation_prompt` the template appends the start of an assistant turn. Errors
    /// (including `raise_exception`) are [`ModelError::ChatTemplate`]s naming the origin.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut vars: BTreeMap<String, JValue> = self
            .special
            .tokens
            .iter()
            .map(|(k, v)| (k.clone(), JValue::from(v.as_str())))
            .collect();
        if !self.special.additional.is_empty() {
            vars.insert(
                "additional_special_tokens".into(),
                JValue::from(self.special.additional.clone()),
            );
        }
        vars.insert("messages".into(), JValue::from(Serde(messages)));
        vars.insert(
            "add_generation_prompt".into(),
            JValue::from(add_generation_prompt),
        );
        vars.insert("tools".into(), JValue::from(()));
        vars.insert("documents".into(), JValue::from(()));
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| template_err(&self.origin, describe(&e)))?;
        template
            .render(JValue::from(vars))
            .map_err(|e| template_err(&self.origin, describe(&e)))
    }
}

/// `strftime_now(format)`: the local time formatted by the C library's `strftime`, which is
/// what Python's `datetime.now().strftime` calls (in the C locale).
#[cfg(unix)]
fn strftime_now(format: String) -> std::result::Result<String, Error> {
    let bad = |why: &str| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {why}"));
    if format.is_empty() {
        return Ok(String::new());
    }
    let c_format = std::ffi::CString::new(format).map_err(|_| bad("NUL in format"))?;
    // SAFETY: `time` and `localtime_r` write only to the locals passed; `strftime` writes at
    // most `buf.len()` bytes into `buf` and reads the NUL-terminated `c_format`.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(bad("cannot read the local time"));
        }
        for size in [256usize, 4096, 65536] {
            let mut buf = vec![0u8; size];
            let n = libc::strftime(buf.as_mut_ptr().cast(), size, c_format.as_ptr(), &tm);
            if n > 0 {
                buf.truncate(n);
                return String::from_utf8(buf).map_err(|_| bad("output is not UTF-8"));
            }
        }
    }
    // strftime returns 0 both for an empty result and for one too long for the buffer.
    Ok(String::new())
}

#[cfg(not(unix))]
fn strftime_now(_format: String) -> std::result::Result<String, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        "strftime_now is only supported on Unix",
    ))
}

/// Options of Python's `json.dumps` that transformers' `tojson` exposes.
struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// `x | tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`: Python's
/// `json.dumps` with those arguments, as transformers defines the filter (no HTML escaping).
fn tojson(value: &JValue, kwargs: Kwargs) -> std::result::Result<String, Error> {
    let indent = match kwargs.get::<Option<JValue>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match (v.as_str(), v.as_i64()) {
            (Some(s), _) => s.to_string(),
            (None, Some(n)) => " ".repeat(n.max(0) as usize),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or a string",
                ))
            }
        }),
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(seps) if seps.len() == 2 => (seps[0].clone(), seps[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be two strings",
            ))
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let opts = JsonOptions {
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(out)
}

fn not_serializable(what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: {what} is not JSON serializable"),
    )
}

/// Python's `repr(float)` as `json.dumps` writes it.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's Debug and Python's repr both give the shortest round-trip digits and switch to
    // exponent form outside [1e-4, 1e16); Python writes the exponent with a sign and 2+ digits.
    let s = format!("{f:?}");
    match s.split_once('e') {
        None => s,
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
    }
}

fn py_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(out, "\\u{u:04x}").expect("write to String");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn newline(out: &mut String, opts: &JsonOptions, depth: usize) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

fn write_json(
    out: &mut String,
    v: &JValue,
    opts: &JsonOptions,
    depth: usize,
) -> std::result::Result<(), Error> {
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match serde_json::to_value(v) {
            Ok(Value::Number(n)) => match n.as_f64() {
                Some(f) if n.is_f64() => out.push_str(&py_float(f)),
                _ => out.push_str(&n.to_string()),
            },
            _ => return Err(not_serializable(format!("number {v}"))),
        },
        ValueKind::String => py_string(out, v.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JValue> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, opts, depth + 1);
                write_json(out, item, opts, depth + 1)?;
            }
            newline(out, opts, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let name = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".into(),
                    ValueKind::Bool | ValueKind::Number => {
                        let mut s = String::new();
                        write_json(&mut s, &key, opts, 0)?;
                        s
                    }
                    _ => {
                        return Err(not_serializable(format!(
                            "a map key of kind {}",
                            key.kind()
                        )))
                    }
                };
                entries.push((name, v.get_item(&key)?));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (name, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, opts, depth + 1);
                py_string(out, name, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, item, opts, depth + 1)?;
            }
            newline(out, opts, depth);
            out.push('}');
        }
        kind => return Err(not_serializable(format!("a value of kind {kind}"))),
    }
    Ok(())
}
