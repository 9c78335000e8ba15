//! Best-of-n CSV: header `scorer,n,kl_bon,proxy,gold` (columns in any order, extra columns
//! ignored), one row per (scorer, n). `proxy` and `gold` may be empty or `nan` (no point);
//! `kl_bon` is a finite number >= 0. Errors name the file and line.

use std::path::Path;

use super::PlotError;

/// The columns a best-of-n CSV must have.
const COLUMNS: [&str; 5] = ["scorer", "n", "kl_bon", "proxy", "gold"];

/// One (scorer, n) row.
#[derive(Debug, Clone, PartialEq)]
pub struct BonPoint {
    pub n: u64,
    pub kl: f64,
    pub proxy: Option<f64>,
    pub gold: Option<f64>,
}

/// One scorer's rows, sorted by n.
#[derive(Debug, Clone, PartialEq)]
pub struct BonSeries {
    pub scorer: String,
    pub points: Vec<BonPoint>,
}

impl BonSeries {
    /// A single ensemble member's own scorer (`member:K`).
    pub fn is_member(&self) -> bool {
        self.scorer.starts_with("member:")
    }
}

/// Reads and parses `path`.
pub fn read(path: &Path) -> Result<Vec<BonSeries>, PlotError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PlotError::Input(format!("{}: cannot read: {e}", path.display())))?;
    parse(&text, &path.display().to_string())
}

/// Parses CSV `text`; `name` names it in errors (`NAME:LINE: ...`). Scorers keep the order of
/// their first row.
pub fn parse(text: &str, name: &str) -> Result<Vec<BonSeries>, PlotError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    let (header_no, header) = lines.next().ok_or_else(|| {
        PlotError::Input(format!(
            "{name}: empty file (expected a header `{}`)",
            COLUMNS.join(",")
        ))
    })?;
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut index = [0usize; 5];
    for (slot, col) in index.iter_mut().zip(COLUMNS) {
        *slot = names.iter().position(|n| *n == col).ok_or_else(|| {
            PlotError::Input(format!(
                "{name}:{header_no}: the header has no `{col}` column (expected `{}`)",
                COLUMNS.join(",")
            ))
        })?;
    }
    let mut series: Vec<BonSeries> = Vec::new();
    for (no, line) in lines {
        let at = |reason: String| PlotError::Input(format!("{name}:{no}: {reason}"));
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != names.len() {
            return Err(at(format!(
                "{} fields where the header has {}",
                fields.len(),
                names.len()
            )));
        }
        let [scorer, n, kl, proxy, gold] = index.map(|i| fields[i]);
        if scorer.is_empty() {
            return Err(at("empty `scorer`".into()));
        }
        let n: u64 = n
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| at(format!("`n` = `{n}` is not a positive integer")))?;
        let kl = number(kl, "kl_bon")
            .map_err(at)?
            .filter(|k| *k >= 0.0)
            .ok_or_else(|| at(format!("`kl_bon` = `{kl}` is not a number >= 0")))?;
        let point = BonPoint {
            n,
            kl,
            proxy: number(proxy, "proxy").map_err(at)?,
            gold: number(gold, "gold").map_err(at)?,
        };
        let s = match series.iter_mut().position(|s| s.scorer == scorer) {
            Some(i) => &mut series[i],
            None => {
                series.push(BonSeries {
                    scorer: scorer.to_string(),
                    points: vec![],
                });
                series.last_mut().expect("just pushed")
            }
        };
        if s.points.iter().any(|p| p.n == n) {
            return Err(at(format!("a second row for scorer `{scorer}`, n = {n}")));
        }
        s.points.push(point);
    }
    if series.is_empty() {
        return Err(PlotError::Input(format!(
            "{name}: no rows after the header"
        )));
    }
    for s in &mut series {
        s.points.sort_by_key(|p| p.n);
    }
    Ok(series)
}

/// A finite number, or `None` for an empty field or `nan`/`null`.
fn number(field: &str, column: &str) -> Result<Option<f64>, String> {
    if field.is_empty() || field.eq_ignore_ascii_case("nan") || field == "null" {
        return Ok(None);
    }
    match field.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(format!("`{column}` = `{field}` is not a finite number")),
    }
}
