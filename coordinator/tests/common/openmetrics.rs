//! A small strict parser of the OpenMetrics / Prometheus text format, written for the tests from
//! the format's rules (not the exporter's code): every sample belongs to a family declared by
//! `# TYPE` before it, with the suffixes its type allows; label sets are well formed and
//! escaped; values are numbers; no series appears twice; a histogram's buckets grow with `le`
//! and its `+Inf` bucket equals its `_count`; the text ends with `# EOF`.

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Default)]
pub struct Scrape {
    /// Family name → type.
    pub types: BTreeMap<String, String>,
    /// (sample name, labels) → value.
    pub samples: BTreeMap<(String, Labels), f64>,
}

impl Scrape {
    /// The value of `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_string(), labels)).copied()
    }

    /// The value of `name` with `labels`, which must be there.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {:#?}", self.samples))
    }

    /// Every sample of `name`: its labels and value.
    pub fn series(&self, name: &str) -> Vec<(Labels, f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect()
    }
}

fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "gauge" | "unknown" | "info" | "stateset" => &[""],
        "summary" => &["", "_count", "_sum", "_created"],
        _ => &[],
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("`{s}` is not a number")),
    }
}

/// Parses `{k="v",...}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = s.strip_prefix('{').ok_or("expected `{`")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without `=`")?;
        let key = &rest[..eq];
        if !is_name(key) {
            return Err(format!("bad label name `{key}`"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label `{key}`: value not quoted"));
        }
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label `{key}`: unterminated value")),
                Some((i, '"')) => break eq + 1 + i + 1,
                Some((_, '\\')) => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("label `{key}`: bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err(format!("label `{key}`: raw newline")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label `{key}` twice"));
        }
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected `,` or `}` after a label".into());
        }
    }
}

/// Parses a whole exposition; any deviation is an error naming the line.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: `{line}`", n + 1);
        if eof {
            return Err(at("content after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !is_name(name) {
                return Err(at(format!("bad metric name `{name}`")));
            }
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if suffixes(t).is_empty() {
                        return Err(at(format!("unknown type `{t}`")));
                    }
                    if scrape
                        .types
                        .insert(name.to_string(), t.to_string())
                        .is_some()
                    {
                        return Err(at(format!("family `{name}` declared twice")));
                    }
                }
                other => return Err(at(format!("unknown comment `{other}`"))),
            }
            continue;
        }
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(at(format!("bad sample name `{name}`")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Labels::new(), &line[name_end..])
        };
        let fields: Vec<&str> = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("expected a space before the value".into()))?
            .split(' ')
            .collect();
        if fields.is_empty() || fields.len() > 2 {
            return Err(at("expected a value and at most a timestamp".into()));
        }
        let value = parse_value(fields[0]).map_err(at)?;
        let family = scrape
            .types
            .iter()
            .filter(|(f, t)| {
                suffixes(t)
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .map(|(f, _)| f.clone())
            .next()
            .ok_or_else(|| at(format!("sample `{name}` of no declared family")))?;
        if scrape.types[&family] == "histogram"
            && name.ends_with("_bucket")
            && !labels.contains_key("le")
        {
            return Err(at("a bucket without `le`".into()));
        }
        if scrape
            .samples
            .insert((name.to_string(), labels), value)
            .is_some()
        {
            return Err(at("the same series twice".into()));
        }
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    check_histograms(&scrape)?;
    Ok(scrape)
}

fn check_histograms(scrape: &Scrape) -> Result<(), String> {
    for (family, _) in scrape.types.iter().filter(|(_, t)| *t == "histogram") {
        let mut by_series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for (mut labels, v) in scrape.series(&format!("{family}_bucket")) {
            let le = parse_value(&labels.remove("le").unwrap())?;
            by_series.entry(labels).or_default().push((le, v));
        }
        for (labels, mut buckets) in by_series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family} {labels:?}: buckets decrease"));
            }
            let inf = buckets.last().filter(|b| b.0.is_infinite()).map(|b| b.1);
            let count = scrape
                .samples
                .get(&(format!("{family}_count"), labels.clone()))
                .copied();
            if inf.is_none() || inf != count {
                return Err(format!(
                    "{family} {labels:?}: +Inf bucket {inf:?} != count {count:?}"
                ));
            }
        }
    }
    Ok(())
}
