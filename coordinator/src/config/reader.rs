//! A typed reader over a TOML document that remembers where every key is, so each error names
//! the file, the line and the dotted key. Every value read (with its default applied) is also
//! recorded, giving the fully resolved config for provenance.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use toml::{Table, Value};

use super::ConfigError;

/// The document: its name, the line of every key path, and which paths came from `--set`.
pub struct Doc {
    pub file: String,
    lines: HashMap<String, usize>,
    overridden: HashMap<String, String>,
}

impl Doc {
    pub fn new(file: String, text: &str) -> Result<(Doc, Table), ConfigError> {
        let spanned = toml::de::DeTable::parse(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                file: file.clone(),
                line,
                key: String::new(),
                message: e.message().trim().to_string(),
            }
        })?;
        let mut lines = HashMap::new();
        index_table(text, spanned.get_ref(), "", &mut lines);
        let table: Table = toml::from_str(text).map_err(|e| ConfigError {
            file: file.clone(),
            line: e.span().map(|s| line_of(text, s.start)),
            key: String::new(),
            message: e.message().trim().to_string(),
        })?;
        Ok((
            Doc {
                file,
                lines,
                overridden: HashMap::new(),
            },
            table,
        ))
    }

    /// Applies `key=value` (value parsed as TOML, else taken as a string); list items are
    /// addressed by index (`stage.1.merge.lambda=0.5`).
    pub fn apply_set(&mut self, table: &mut Table, assignment: &str) -> Result<(), ConfigError> {
        let Some((key, raw)) = assignment.split_once('=') else {
            return Err(self.error_at(None, assignment, "--set expects key=value".into()));
        };
        let key = key.trim();
        let value = toml::from_str::<Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.to_string()));
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(self.error_at(None, key, "--set key has an empty component".into()));
        }
        let mut root = Value::Table(std::mem::take(table));
        let result = set_path(&mut root, &parts, value);
        if let Value::Table(t) = root {
            *table = t;
        }
        result.map_err(|m| self.error_at(None, key, format!("--set {assignment}: {m}")))?;
        self.overridden
            .insert(key.to_string(), assignment.to_string());
        Ok(())
    }

    pub fn error_at(&self, line: Option<usize>, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message,
        }
    }

    /// An error about `key`: located at the key, or at its table when the key is absent.
    pub fn error(&self, key: &str, message: String) -> ConfigError {
        if let Some(set) = self.overridden.get(key) {
            return ConfigError {
                file: format!("{} (--set {set})", self.file),
                line: None,
                key: key.into(),
                message,
            };
        }
        let mut probe = key.to_string();
        let line = loop {
            if let Some(l) = self.lines.get(&probe) {
                break Some(*l);
            }
            match probe.rfind('.') {
                Some(i) => probe.truncate(i),
                None => break None,
            }
        };
        ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message,
        }
    }
}

fn set_path(value: &mut Value, parts: &[&str], new: Value) -> Result<(), String> {
    let Some((first, rest)) = parts.split_first() else {
        return Err("empty key".into());
    };
    let child = match value {
        Value::Table(t) => {
            if rest.is_empty() {
                t.insert(first.to_string(), new);
                return Ok(());
            }
            t.entry(first.to_string())
                .or_insert_with(|| Value::Table(Table::new()))
        }
        Value::Array(items) => {
            let i: usize = first
                .parse()
                .map_err(|_| format!("`{first}` is not a list index"))?;
            let item = items
                .get_mut(i)
                .ok_or_else(|| format!("the list has no item {i}"))?;
            if rest.is_empty() {
                *item = new;
                return Ok(());
            }
            item
        }
        other => {
            return Err(format!(
                "cannot set `{first}` inside a {}",
                other.type_str()
            ))
        }
    };
    set_path(child, rest, new)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

fn index_table(
    text: &str,
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    lines: &mut HashMap<String, usize>,
) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        lines
            .entry(path.clone())
            .or_insert_with(|| line_of(text, key.span().start));
        index_value(text, value, &path, lines);
    }
}

fn index_value(
    text: &str,
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    path: &str,
    lines: &mut HashMap<String, usize>,
) {
    match value.get_ref() {
        toml::de::DeValue::Table(t) => index_table(text, t, path, lines),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}.{i}");
                lines
                    .entry(item_path.clone())
                    .or_insert_with(|| line_of(text, item.span().start));
                index_value(text, item, &item_path, lines);
            }
        }
        _ => {}
    }
}

/// One table being read. Keys not read by the time `finish` is called are errors.
pub struct Tbl<'d> {
    doc: &'d Doc,
    path: String,
    table: Table,
    used: RefCell<BTreeSet<String>>,
    resolved: RefCell<Table>,
}

impl<'d> Tbl<'d> {
    pub fn root(doc: &'d Doc, table: Table) -> Self {
        Tbl {
            doc,
            path: String::new(),
            table,
            used: Default::default(),
            resolved: Default::default(),
        }
    }

    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.doc.error(&self.key_path(key), message.into())
    }

    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn raw(&self, key: &str) -> Option<&Value> {
        self.used.borrow_mut().insert(key.to_string());
        self.table.get(key)
    }

    /// Records a resolved value (shown in job.json).
    pub fn record(&self, key: &str, value: Value) {
        self.resolved.borrow_mut().insert(key.to_string(), value);
    }

    fn type_error(&self, key: &str, expected: &str, found: &Value) -> ConfigError {
        self.error(
            key,
            format!("expected {expected}, found {} `{found}`", found.type_str()),
        )
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::String(s)) => {
                self.record(key, Value::String(s.clone()));
                Ok(Some(s.clone()))
            }
            Some(v) => Err(self.type_error(key, "a string", v)),
        }
    }

    pub fn req_str(&self, key: &str) -> Result<String, ConfigError> {
        self.opt_str(key)?
            .ok_or_else(|| self.error(key, "missing required key"))
    }

    pub fn str_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        let v = self.opt_str(key)?.unwrap_or_else(|| default.to_string());
        self.record(key, Value::String(v.clone()));
        Ok(v)
    }

    /// One of `choices`.
    pub fn choice(
        &self,
        key: &str,
        choices: &[&str],
        default: Option<&str>,
    ) -> Result<String, ConfigError> {
        let value = match (self.opt_str(key)?, default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(self.error(
                    key,
                    format!(
                        "missing required key; expected one of {}",
                        choices.join(", ")
                    ),
                ))
            }
        };
        if !choices.contains(&value.as_str()) {
            return Err(self.error(
                key,
                format!(
                    "unknown value `{value}`; expected one of {}",
                    choices.join(", ")
                ),
            ));
        }
        self.record(key, Value::String(value.clone()));
        Ok(value)
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        let v = match self.raw(key) {
            None => return Ok(None),
            Some(Value::Float(f)) => *f,
            Some(Value::Integer(i)) => *i as f64,
            Some(v) => return Err(self.type_error(key, "a number", v)),
        };
        if !v.is_finite() {
            return Err(self.error(key, format!("must be finite, found {v}")));
        }
        self.record(key, Value::Float(v));
        Ok(Some(v))
    }

    /// A number in `range` (inclusive bounds), with a default.
    pub fn f64_in(&self, key: &str, default: f64, lo: f64, hi: f64) -> Result<f64, ConfigError> {
        let v = self.opt_f64(key)?.unwrap_or(default);
        if !(lo..=hi).contains(&v) {
            return Err(self.error(key, format!("must be in [{lo}, {hi}], found {v}")));
        }
        self.record(key, Value::Float(v));
        Ok(v)
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Integer(i)) if *i >= 0 => {
                self.record(key, Value::Integer(*i));
                Ok(Some(*i as u64))
            }
            Some(Value::Integer(i)) => {
                Err(self.error(key, format!("must be a non-negative integer, found {i}")))
            }
            Some(v) => Err(self.type_error(key, "an integer", v)),
        }
    }

    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        let v = self.opt_u64(key)?.unwrap_or(default);
        self.record(key, Value::Integer(v as i64));
        Ok(v)
    }

    /// A positive size: bytes as an integer, or a string such as "5GB" or "512MiB".
    pub fn size_or(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        let v = match self.raw(key) {
            None => default,
            Some(Value::Integer(i)) if *i > 0 => *i as u64,
            Some(Value::String(s)) => super::parse_size(s).ok_or_else(|| {
                self.error(
                    key,
                    format!("`{s}` is not a size (bytes, or e.g. \"5GB\", \"512MiB\")"),
                )
            })?,
            Some(v) => {
                return Err(self.type_error(key, "a positive size (bytes, or e.g. \"5GB\")", v))
            }
        };
        self.record(key, Value::Integer(v as i64));
        Ok(v)
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        let v = match self.raw(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(v) => return Err(self.type_error(key, "true or false", v)),
        };
        self.record(key, Value::Boolean(v));
        Ok(v)
    }

    pub fn opt_str_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            return Err(self.type_error(&format!("{key}.{i}"), "a string", other))
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(v) => Err(self.type_error(key, "a list of strings", v)),
        }
    }

    pub fn opt_f64_list(&self, key: &str) -> Result<Option<Vec<f64>>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let v = match item {
                        Value::Float(f) => *f,
                        Value::Integer(n) => *n as f64,
                        other => {
                            return Err(self.type_error(&format!("{key}.{i}"), "a number", other))
                        }
                    };
                    if !v.is_finite() {
                        return Err(
                            self.error(&format!("{key}.{i}"), format!("must be finite, found {v}"))
                        );
                    }
                    out.push(v);
                }
                self.record(
                    key,
                    Value::Array(out.iter().map(|&v| Value::Float(v)).collect()),
                );
                Ok(Some(out))
            }
            Some(v) => Err(self.type_error(key, "a list of numbers", v)),
        }
    }

    /// A number for every model, or a list with one per model (`density = 0.5` or
    /// `density = [0.5, 0.3]`), each in the range `lo`..`hi` (`lo_open`: excluding `lo`).
    pub fn per_model(
        &self,
        key: &str,
        n: usize,
        lo: f64,
        lo_open: bool,
        hi: f64,
    ) -> Result<Option<Vec<f64>>, ConfigError> {
        let values = match self.raw(key) {
            None => return Ok(None),
            Some(Value::Float(_)) | Some(Value::Integer(_)) => {
                vec![self.opt_f64(key)?.unwrap_or_default(); n]
            }
            Some(Value::Array(_)) => {
                let v = self.opt_f64_list(key)?.unwrap_or_default();
                if v.len() != n {
                    return Err(self.error(
                        key,
                        format!("has {} entries but there are {n} models", v.len()),
                    ));
                }
                v
            }
            Some(v) => {
                return Err(self.type_error(
                    key,
                    "a number or a list of numbers (one per model)",
                    v,
                ))
            }
        };
        for &v in &values {
            if v < lo || (lo_open && v == lo) || v > hi {
                let open = if lo_open { "(" } else { "[" };
                return Err(self.error(key, format!("must be in {open}{lo}, {hi}], found {v}")));
            }
        }
        self.record(
            key,
            Value::Array(values.iter().map(|&v| Value::Float(v)).collect()),
        );
        Ok(Some(values))
    }

    /// A sub-table (`[merge]`), or None when absent.
    pub fn opt_table(&self, key: &str) -> Result<Option<Tbl<'d>>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(Tbl {
                doc: self.doc,
                path: self.key_path(key),
                table: t.clone(),
                used: Default::default(),
                resolved: Default::default(),
            })),
            Some(v) => Err(self.type_error(key, "a table", v)),
        }
    }

    /// An empty sub-table at `key` (read with defaults when the config omits the table).
    pub fn empty_child(&self, key: &str) -> Tbl<'d> {
        Tbl {
            doc: self.doc,
            path: self.key_path(key),
            table: Table::new(),
            used: Default::default(),
            resolved: Default::default(),
        }
    }

    pub fn req_table(&self, key: &str) -> Result<Tbl<'d>, ConfigError> {
        self.opt_table(key)?.ok_or_else(|| {
            self.error(
                key,
                format!("missing required table [{}]", self.key_path(key)),
            )
        })
    }

    /// An array of tables (`[[stage]]`).
    pub fn table_list(&self, key: &str) -> Result<Vec<Tbl<'d>>, ConfigError> {
        match self.raw(key) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Table(t) => Ok(Tbl {
                        doc: self.doc,
                        path: format!("{}.{i}", self.key_path(key)),
                        table: t.clone(),
                        used: Default::default(),
                        resolved: Default::default(),
                    }),
                    other => Err(self.type_error(&format!("{key}.{i}"), "a table", other)),
                })
                .collect(),
            Some(v) => Err(self.type_error(key, "an array of tables ([[...]])", v)),
        }
    }

    /// Records a finished sub-table's resolved values under `key`.
    pub fn record_table(&self, key: &str, child: Table) {
        self.record(key, Value::Table(child));
    }

    /// Checks that every key was read; returns the resolved table.
    pub fn finish(self) -> Result<Table, ConfigError> {
        let used = self.used.borrow();
        if let Some(unknown) = self.table.keys().find(|k| !used.contains(*k)) {
            let known: Vec<&String> = used.iter().collect();
            let known = known
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(self.error(unknown, format!("unknown key; expected one of: {known}")));
        }
        Ok(self.resolved.into_inner())
    }
}
