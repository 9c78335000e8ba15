//! What `watch` and `local` show a person (docs/architecture.md#cli-contract): the job's metric
//! lines read into a short summary for the progress bar (the latest training step's loss, KL
//! and seconds per step) and one readable line per evaluation. The raw JSON lines stay in the
//! job's metrics files and in `--json` output.

use serde_json::{Map, Value};

/// Follows a job's metric lines (`worker::train::metrics::line`: `step`, `time`, `split`,
/// `attempt` and the values).
#[derive(Debug, Default)]
pub struct MetricsView {
    /// (step, time) of the latest training line.
    last_train: Option<(u64, f64)>,
    /// Seconds per step between the two latest training lines.
    step_secs: Option<f64>,
    summary: String,
}

impl MetricsView {
    /// Reads one metric line: a training line updates [`MetricsView::summary`]; an evaluation
    /// (or any other split) returns the line to print. A line that is not a JSON object is
    /// returned as it is.
    pub fn read(&mut self, line: &str) -> Option<String> {
        let Ok(Value::Object(m)) = serde_json::from_str::<Value>(line) else {
            return Some(format!("metrics {line}"));
        };
        let step = m.get("step").and_then(Value::as_u64).unwrap_or(0);
        match m.get("split").and_then(Value::as_str) {
            Some("train") => {
                self.train(step, &m);
                None
            }
            Some(split) => Some(format!(
                "{split} step {step}: {}",
                values(&m, &format!("{split}/"))
            )),
            None => Some(format!("step {step}: {}", values(&m, ""))),
        }
    }

    /// The latest training step, e.g. `step 12 · loss 0.0421 · kl 0.0133 · 0.41 s/step`
    /// (empty before the first).
    pub fn summary(&self) -> &str {
        &self.summary
    }

    fn train(&mut self, step: u64, m: &Map<String, Value>) {
        let time = m.get("time").and_then(Value::as_f64);
        if let (Some((last_step, last_time)), Some(time)) = (self.last_train, time) {
            if step > last_step {
                self.step_secs = Some((time - last_time) / (step - last_step) as f64);
            }
        }
        if let Some(time) = time {
            self.last_train = Some((step, time));
        }
        let mut parts = vec![format!("step {step}")];
        for (key, label) in [("loss", "loss"), ("kl/k3", "kl")] {
            if let Some(v) = m.get(key).and_then(Value::as_f64) {
                parts.push(format!("{label} {}", short(v)));
            }
        }
        if let Some(s) = self.step_secs {
            parts.push(format!("{s:.2} s/step"));
        }
        self.summary = parts.join(" · ");
    }
}

/// `name value` pairs of every numeric value but the line's own fields, `prefix` removed
/// (`eval/win_rate` → `win_rate`).
fn values(m: &Map<String, Value>, prefix: &str) -> String {
    m.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "step" | "time" | "split" | "attempt"))
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(prefix).unwrap_or(k);
            Some(format!("{name} {}", short(v.as_f64()?)))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

/// Four significant digits, without an exponent for ordinary magnitudes.
fn short(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if (1e-3..1e6).contains(&v.abs()) {
        let decimals = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.3e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_lines_make_the_summary_and_evaluations_a_line() {
        let mut view = MetricsView::default();
        let train = |step: u64, time: f64, loss: f64| {
            format!(
                r#"{{"step":{step},"time":{time},"split":"train","attempt":1,"loss":{loss},"kl/k1":0.5,"kl/k3":0.01234567,"lr":0.001}}"#
            )
        };
        assert_eq!(view.read(&train(1, 100.0, 0.5)), None);
        assert_eq!(view.summary(), "step 1 · loss 0.5000 · kl 0.01235");
        assert_eq!(view.read(&train(3, 101.5, 0.04213)), None);
        assert_eq!(
            view.summary(),
            "step 3 · loss 0.04213 · kl 0.01235 · 0.75 s/step"
        );
        let eval = r#"{"step":3,"time":102.0,"split":"eval","attempt":1,"eval/gold":2.3126,"eval/win_rate":0.75}"#;
        assert_eq!(
            view.read(eval).as_deref(),
            Some("eval step 3: gold 2.313  win_rate 0.7500")
        );
        assert_eq!(
            view.summary(),
            "step 3 · loss 0.04213 · kl 0.01235 · 0.75 s/step"
        );
        assert_eq!(view.read("not json").as_deref(), Some("metrics not json"));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(1234.5678), "1235");
        assert_eq!(short(-0.012346), "-0.01235");
        assert_eq!(short(1.5e-7), "1.500e-7");
        assert_eq!(short(3.0e9), "3.000e9");
    }
}
