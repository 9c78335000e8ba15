//! A training run's metric lines (docs/architecture.md#metric-lines) read from
//! `DIR/metrics/part-*.jsonl`, attempts merged by the documented rule
//! ([`merge_attempts`]: a later attempt's lines replace an earlier one's from the step it
//! resumed at). A pipeline output directory holds one run per stage (`DIR/<stage>/metrics/`).

use std::path::{Path, PathBuf};

use mirrorplay_worker::checkpoint::attempts::{merge_attempts, MetricLine};
use serde_json::Value;

use super::PlotError;

/// The keys the figures read; a line holding one of them as anything but a number or `null`
/// is an error.
pub const PLOTTED_KEYS: [&str; 5] = ["loss", "kl/k1", "kl/k3", "eval/win_rate", "eval/gold"];

/// One run (a job, or one pipeline stage): its merged lines, sorted by (step, split).
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub lines: Vec<MetricLine>,
}

impl Run {
    /// (step, value) of `key` on the lines of `split`, where it is a number.
    pub fn series(&self, split: &str, key: &str) -> Vec<(u64, f64)> {
        self.lines
            .iter()
            .filter(|l| l.split == split)
            .filter_map(|l| Some((l.step, l.line.get(key)?.as_f64()?)))
            .collect()
    }

    /// The earliest `time` of its lines (orders pipeline stages).
    fn first_time(&self) -> f64 {
        self.lines
            .iter()
            .filter_map(|l| l.line.get("time")?.as_f64())
            .fold(f64::INFINITY, f64::min)
    }
}

/// The runs under `dir`: `dir` itself when it has `metrics/`, else each `dir/<stage>/` that
/// has one, in the order they ran.
pub fn load(dir: &Path) -> Result<Vec<Run>, PlotError> {
    let own = dir.join("metrics");
    if own.is_dir() {
        return Ok(vec![read_run(&own, &name_of(dir))?]);
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| PlotError::Input(format!("{}: cannot list: {e}", dir.display())))?;
    let mut stages: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("metrics").is_dir())
        .collect();
    stages.sort();
    if stages.is_empty() {
        return Err(PlotError::Input(format!(
            "{}: no metrics/ directory (nor <stage>/metrics/ of a pipeline): not a training run's output",
            dir.display()
        )));
    }
    let mut runs = stages
        .iter()
        .map(|s| read_run(&s.join("metrics"), &name_of(s)))
        .collect::<Result<Vec<_>, _>>()?;
    runs.sort_by(|a, b| a.first_time().total_cmp(&b.first_time()));
    Ok(runs)
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Reads every `part-*.jsonl` in `metrics` and merges the attempts.
fn read_run(metrics: &Path, name: &str) -> Result<Run, PlotError> {
    let entries = std::fs::read_dir(metrics)
        .map_err(|e| PlotError::Input(format!("{}: cannot list: {e}", metrics.display())))?;
    let mut parts: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("part-") && n.ends_with(".jsonl"))
        })
        .collect();
    parts.sort();
    if parts.is_empty() {
        return Err(PlotError::Input(format!(
            "{}: no part-*.jsonl metric files",
            metrics.display()
        )));
    }
    let mut lines = Vec::new();
    for part in &parts {
        let text = std::fs::read_to_string(part)
            .map_err(|e| PlotError::Input(format!("{}: cannot read: {e}", part.display())))?;
        lines.extend(parse_part(&text, &part.display().to_string())?);
    }
    Ok(Run {
        name: name.to_string(),
        lines: merge_attempts(lines),
    })
}

/// Parses one part's lines; `name` names it in errors (`NAME:LINE: ...`).
pub fn parse_part(text: &str, name: &str) -> Result<Vec<MetricLine>, PlotError> {
    let mut lines = Vec::new();
    for (i, t) in text.lines().enumerate() {
        if t.trim().is_empty() {
            continue;
        }
        let at = format!("{name}:{}", i + 1);
        let l = MetricLine::parse(t, &at).map_err(|e| PlotError::Input(e.to_string()))?;
        for key in PLOTTED_KEYS {
            match l.line.get(key) {
                None | Some(Value::Null) | Some(Value::Number(_)) => {}
                Some(v) => {
                    return Err(PlotError::Input(format!(
                        "{at}: `{key}` = {v} is neither a number nor null"
                    )))
                }
            }
        }
        lines.push(l);
    }
    Ok(lines)
}
