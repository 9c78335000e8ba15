//! Metric lines (docs/architecture.md#metric-lines):
//! `{"step", "time", "split", "attempt", <flat keys>}`, non-finite values as `null`. Each line goes
//! to the coordinator at once (through the task's metrics sink, then `TaskProgress.metrics` →
//! `WatchJob`) and into `OUTPUT/metrics/`, where a new `part-aAAA-NNNNNN.jsonl` is written at least
//! every 30 s, at each checkpoint and at job end (object stores cannot append; parts are named per
//! attempt, so a re-issued attempt never overwrites a lost one's). Must not compute the values it
//! logs.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::TrainError;
use crate::io::Location;
use crate::report::MetricsSink;

/// A new part is written at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Eval,
}

pub struct MetricsLog<'a> {
    dir: Location,
    attempt: u32,
    /// False on ranks other than 0: lines are computed (every rank takes part in the
    /// reductions) but neither streamed nor written.
    writes: bool,
    sink: MetricsSink<'a>,
    pending: Vec<String>,
    next_part: u32,
    last_flush: Instant,
}

impl<'a> MetricsLog<'a> {
    /// Metrics under `output`/metrics/; `writes` = false keeps them to itself.
    pub fn new(
        output: &str,
        attempt: u32,
        sink: MetricsSink<'a>,
        writes: bool,
    ) -> Result<Self, TrainError> {
        Ok(MetricsLog {
            dir: Location::parse(&format!("{output}/metrics"))?,
            attempt,
            writes,
            sink,
            pending: vec![],
            next_part: 0,
            last_flush: Instant::now(),
        })
    }

    pub fn url(&self) -> &str {
        self.dir.url()
    }

    /// Logs one line of `values` (key, value) for `step`.
    pub fn log(&mut self, step: u64, split: Split, values: &[(&str, f64)]) {
        if !self.writes {
            return;
        }
        let line = line(step, crate::clock::unix_now(), split, self.attempt, values);
        (self.sink)(line.clone());
        self.pending.push(line);
    }

    /// Writes a part if 30 s have passed since the last one.
    pub async fn maybe_flush(&mut self) -> Result<(), TrainError> {
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the pending lines as the next part (nothing when none are pending).
    pub async fn flush(&mut self) -> Result<(), TrainError> {
        self.last_flush = Instant::now();
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut text = self.pending.join("\n");
        text.push('\n');
        let name = crate::checkpoint::attempts::part_name(self.attempt, self.next_part);
        self.dir.join(&name).put(text.into_bytes()).await?;
        self.pending.clear();
        self.next_part += 1;
        Ok(())
    }
}

/// One metric line as JSON text.
pub fn line(step: u64, time: f64, split: Split, attempt: u32, values: &[(&str, f64)]) -> String {
    let mut obj = Map::new();
    obj.insert("step".into(), Value::from(step));
    obj.insert("time".into(), number(time));
    obj.insert(
        "split".into(),
        Value::from(match split {
            Split::Train => "train",
            Split::Eval => "eval",
        }),
    );
    obj.insert("attempt".into(), Value::from(attempt));
    for (k, v) in values {
        obj.insert((*k).to_string(), number(*v));
    }
    Value::Object(obj).to_string()
}

fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_the_schema_and_nulls_for_non_finite_values() {
        let l = line(
            3,
            1.5,
            Split::Eval,
            2,
            &[("eval/win_rate", 0.75), ("loss", f64::NAN)],
        );
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["step"], 3);
        assert_eq!(v["split"], "eval");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["eval/win_rate"], 0.75);
        assert!(v["loss"].is_null());
    }
}
