//! Training rates from the metric lines a job's workers stream (docs/architecture.md#metric-lines):
//! per job, the (step, time) of its latest train lines; steps per second over that window. A
//! step lower than the last one (a new attempt resuming from a checkpoint) starts the window
//! afresh.

use std::collections::{BTreeMap, VecDeque};

/// Train lines a rate is measured over.
const WINDOW: usize = 20;

#[derive(Debug, Default)]
pub struct Rate {
    points: VecDeque<(u64, f64)>,
}

impl Rate {
    fn add(&mut self, step: u64, time: f64) {
        if self.points.back().is_some_and(|&(s, _)| step <= s) {
            if self.points.back().is_some_and(|&(s, _)| step == s) {
                return;
            }
            self.points.clear();
        }
        self.points.push_back((step, time));
        if self.points.len() > WINDOW {
            self.points.pop_front();
        }
    }

    pub fn last_step(&self) -> u64 {
        self.points.back().map_or(0, |&(s, _)| s)
    }

    /// None until two lines are some time apart.
    pub fn steps_per_second(&self) -> Option<f64> {
        let (&(s0, t0), &(s1, t1)) = (self.points.front()?, self.points.back()?);
        (t1 > t0).then(|| (s1 - s0) as f64 / (t1 - t0))
    }
}

#[derive(Debug, Default)]
pub struct Rates(BTreeMap<String, Rate>);

impl Rates {
    /// Takes one metric line of `job`; lines that are not train lines with a step and a time
    /// are ignored.
    pub fn add_line(&mut self, job: &str, line: &str) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        if value.get("split").and_then(|s| s.as_str()) != Some("train") {
            return;
        }
        let (Some(step), Some(time)) = (
            value.get("step").and_then(|s| s.as_u64()),
            value.get("time").and_then(|t| t.as_f64()),
        ) else {
            return;
        };
        self.0.entry(job.to_string()).or_default().add(step, time);
    }

    /// Forgets jobs not in `running`.
    pub fn retain(&mut self, running: &[String]) {
        self.0.retain(|job, _| running.contains(job));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Rate)> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: u64, time: f64) -> String {
        format!(r#"{{"attempt":1,"loss":0.5,"split":"train","step":{step},"time":{time}}}"#)
    }

    #[test]
    fn the_rate_is_steps_over_seconds_of_the_window_and_restarts_on_a_lower_step() {
        let mut r = Rates::default();
        r.add_line("j", &line(1, 100.0));
        assert_eq!(r.0["j"].steps_per_second(), None);
        r.add_line("j", &line(3, 100.5));
        r.add_line(
            "j",
            r#"{"split":"eval","step":3,"time":100.6,"eval/gold":0.5}"#,
        );
        r.add_line("j", "not json");
        r.add_line("j", &line(5, 101.0));
        assert_eq!(r.0["j"].steps_per_second(), Some(4.0));
        assert_eq!(r.0["j"].last_step(), 5);
        // A resumed attempt starts over from its checkpoint.
        r.add_line("j", &line(2, 200.0));
        assert_eq!(r.0["j"].steps_per_second(), None);
        r.retain(&[]);
        assert_eq!(r.iter().count(), 0);
    }
}
