//! Metrics across attempts (docs/checkpoints.md "Metrics across attempts"): a re-issued task
//! resumes from a checkpoint and logs again the steps the lost attempt had logged after it.
//! Parts are named per attempt ([`part_name`]) so no attempt overwrites another's, and
//! [`merge_attempts`] turns all parts into one continuous series: per (split, step) the line of
//! the highest attempt; lines of an attempt beyond the step at which a later attempt resumed
//! are dropped (that later attempt replaces them, or they were lost). Must not write.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{CheckpointError, Result};
use crate::io::{IoError, Location};

/// The metrics part `n` of attempt `attempt`: `part-a{attempt:03}-{n:06}.jsonl` (still matched
/// by readers' `part-*.jsonl`).
pub fn part_name(attempt: u32, n: u32) -> String {
    format!("part-a{attempt:03}-{n:06}.jsonl")
}

/// One metrics line with the fields the merge needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricLine {
    pub split: String,
    pub step: u64,
    pub attempt: u32,
    pub line: Value,
}

impl MetricLine {
    /// Parses one line of a part; `at` names it (`URL:LINE`) in errors.
    pub fn parse(text: &str, at: &str) -> Result<Self> {
        let bad = |field: &str, reason: String| CheckpointError::BadFile {
            url: at.to_string(),
            field: field.to_string(),
            reason,
        };
        let line: Value =
            serde_json::from_str(text).map_err(|e| bad("(line)", format!("not JSON: {e}")))?;
        let step = line
            .get("step")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("step", "missing or not a non-negative integer".into()))?;
        let attempt = line
            .get("attempt")
            .and_then(Value::as_u64)
            .and_then(|a| u32::try_from(a).ok())
            .ok_or_else(|| bad("attempt", "missing or not a u32".into()))?;
        let split = line
            .get("split")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("split", "missing or not a string".into()))?
            .to_string();
        Ok(MetricLine {
            split,
            step,
            attempt,
            line,
        })
    }
}

/// The step an attempt resumed at, from its own lines: train lines count steps done (a run
/// resumed at S first logs train step S + 1) and an eval line may be logged at S itself.
fn resumed_at(lines: &[MetricLine]) -> HashMap<u32, u64> {
    let mut start: HashMap<u32, u64> = HashMap::new();
    for l in lines {
        let s = if l.split == "train" {
            l.step.saturating_sub(1)
        } else {
            l.step
        };
        start
            .entry(l.attempt)
            .and_modify(|v| *v = (*v).min(s))
            .or_insert(s);
    }
    start
}

/// One continuous series, sorted by (step, split): see the module comment.
pub fn merge_attempts(lines: Vec<MetricLine>) -> Vec<MetricLine> {
    let start = resumed_at(&lines);
    // For each attempt, the lowest resume step among later attempts.
    let mut attempts: Vec<u32> = start.keys().copied().collect();
    attempts.sort_unstable();
    let mut cutoff: HashMap<u32, u64> = HashMap::new();
    let mut later_min = u64::MAX;
    for a in attempts.iter().rev() {
        cutoff.insert(*a, later_min);
        later_min = later_min.min(start[a]);
    }
    let mut best: BTreeMap<(u64, String), MetricLine> = BTreeMap::new();
    for l in lines {
        if l.step > cutoff.get(&l.attempt).copied().unwrap_or(u64::MAX) {
            continue;
        }
        let key = (l.step, l.split.clone());
        match best.get(&key) {
            Some(b) if b.attempt > l.attempt => {}
            _ => {
                best.insert(key, l);
            }
        }
    }
    best.into_values().collect()
}

/// Reads every `OUTPUT/metrics/part-*.jsonl` and merges the attempts.
pub async fn read_metrics(output: &Location) -> Result<Vec<MetricLine>> {
    let dir = output.join("metrics");
    let listed = match dir.list().await {
        Ok(l) => l,
        Err(IoError::NotFound { .. }) => vec![],
        Err(e) => return Err(e.into()),
    };
    let mut lines = Vec::new();
    for (name, _) in listed {
        if !(name.starts_with("part-") && name.ends_with(".jsonl")) || name.contains('/') {
            continue;
        }
        let loc = dir.join(&name);
        let bytes = loc.read().await?;
        let text = String::from_utf8_lossy(&bytes);
        for (i, t) in text.lines().enumerate() {
            if t.trim().is_empty() {
                continue;
            }
            lines.push(MetricLine::parse(t, &format!("{}:{}", loc.url(), i + 1))?);
        }
    }
    Ok(merge_attempts(lines))
}
