//! Evaluation on held-out prompts (docs/algorithms.md §4): for each judge (the task's gold
//! judge when the job has a task, the preference source when it is another), the mean score of
//! policy samples, `eval/<judge>`, and, with a reference, the win rate against it,
//! P(s(y) > s(y_ref)) + ½ P(tie): `eval/win_rate` for the gold judge,
//! `eval/<judge>_win_rate` for another. The prompts are split across the ranks of a gang and
//! the sums reduced, so the figures do not depend on the world size (samples are keyed by the
//! prompt's global index). The reference's samples are scored once (they do not change); the
//! policy's are keyed by the step.

use std::ops::Range;
use std::sync::Arc;

use super::rollout::{self, Source, SAMPLE_EVAL_POLICY, SAMPLE_EVAL_REFERENCE};
use super::{shard, TrainError};
use crate::collective::Collective;
use crate::model::Model;
use crate::preference::{Judge, PromptRow};
use crate::sample::TokenRules;
use crate::tasks::win_score;

/// This rank's share of the held-out prompts an evaluation uses.
pub struct EvalSet {
    seed: u64,
    /// Global indices of this rank's prompts.
    rows: Range<usize>,
    prompts: Vec<PromptRow>,
    sampling: mirrorplay_proto::v1::SamplingSpec,
    rules: TokenRules,
    judges: Vec<Arc<dyn Judge>>,
    /// Per judge, the scores of the reference's samples (self-play only).
    reference: Option<Vec<Vec<f64>>>,
}

/// One judge's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeEval {
    pub judge: &'static str,
    /// Mean score / unit.
    pub mean: f64,
    pub win_rate: Option<f64>,
}

/// An evaluation: one entry per judge, the first the primary one (gold when there is one).
#[derive(Debug, Clone, PartialEq)]
pub struct Eval(pub Vec<JudgeEval>);

impl Eval {
    /// (mean, win rate) of the primary judge for the job's result (NaN when absent).
    pub fn headline(&self) -> (f64, f64) {
        self.0.first().map_or((f64::NAN, f64::NAN), |e| {
            (e.mean, e.win_rate.unwrap_or(f64::NAN))
        })
    }

    /// Logs [`Eval::metrics`] as the eval line of `step`.
    pub fn log(&self, metrics: &mut super::metrics::MetricsLog, step: u64) {
        let values = self.metrics();
        let refs: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        metrics.log(step, super::metrics::Split::Eval, &refs);
    }

    /// Metric (name, value) pairs: `eval/gold`, `eval/win_rate`, `eval/reward`,
    /// `eval/reward_win_rate`.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for e in &self.0 {
            out.push((format!("eval/{}", e.judge), e.mean));
            if let Some(w) = e.win_rate {
                let name = if e.judge == "gold" {
                    "eval/win_rate".to_string()
                } else {
                    format!("eval/{}_win_rate", e.judge)
                };
                out.push((name, w));
            }
        }
        out
    }
}

impl EvalSet {
    /// This rank's slice of the first `n` held-out prompts (`held_out` gives them by global
    /// index); with a reference, its samples are drawn and scored now.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seed: u64,
        n: usize,
        held_out: impl FnOnce(Range<usize>) -> Result<Vec<PromptRow>, TrainError>,
        sampling: &mirrorplay_proto::v1::SamplingSpec,
        rules: &TokenRules,
        judges: Vec<Arc<dyn Judge>>,
        reference: Option<&Model>,
        collective: &dyn Collective,
    ) -> Result<Self, TrainError> {
        let rows = shard(n, collective.rank(), collective.world_size());
        let prompts = held_out(rows.clone())?;
        let mut set = EvalSet {
            seed,
            rows,
            prompts,
            sampling: *sampling,
            rules: rules.clone(),
            judges,
            reference: None,
        };
        if let Some(r) = reference {
            set.reference = Some(set.scores(r, 0, SAMPLE_EVAL_REFERENCE)?);
        }
        Ok(set)
    }

    /// Per judge, the scores of `model`'s samples of this rank's prompts.
    fn scores(&self, model: &Model, step: u64, sample: u64) -> Result<Vec<Vec<f64>>, TrainError> {
        if self.prompts.is_empty() {
            return Ok(vec![vec![]; self.judges.len()]);
        }
        let ids: Vec<Vec<u32>> = self.prompts.iter().map(|p| p.ids.clone()).collect();
        let config = rollout::generate_config(&self.rules, &self.sampling, self.seed, step);
        let keys = rollout::keys(self.rows.clone().map(|i| i as u64), sample);
        let ys = rollout::sample(Source::Policy(model), &ids, &keys, &config)?;
        let rows: Vec<&PromptRow> = self.prompts.iter().collect();
        self.judges
            .iter()
            .map(|j| Ok(j.scores(&rows, &ys)?))
            .collect()
    }

    /// Evaluates `policy` (a detached view) at `step`; every rank of the gang calls it and
    /// gets the same figures.
    pub fn run(
        &self,
        policy: &Model,
        step: u64,
        collective: &mut dyn Collective,
    ) -> Result<Eval, TrainError> {
        let scores = self.scores(policy, step, SAMPLE_EVAL_POLICY)?;
        // Per judge: [Σ score, #prompts, Σ win score (2 per win, 1 per tie), #pairs]
        let mut sums = Vec::with_capacity(4 * self.judges.len());
        for (j, s) in scores.iter().enumerate() {
            sums.extend([s.iter().sum::<f64>(), s.len() as f64, 0.0, 0.0]);
            if let Some(reference) = &self.reference {
                let pairs: Vec<(f64, f64)> = s
                    .iter()
                    .copied()
                    .zip(reference[j].iter().copied())
                    .collect();
                sums[4 * j + 2] = win_score(&pairs) as f64;
                sums[4 * j + 3] = pairs.len() as f64;
            }
        }
        collective.all_reduce_sum_f64(&mut sums)?;
        let evals = self
            .judges
            .iter()
            .zip(sums.chunks(4))
            .map(|(judge, s)| JudgeEval {
                judge: judge.name(),
                mean: s[0] / s[1].max(1.0) / judge.unit(),
                win_rate: match &self.reference {
                    Some(_) if s[3] > 0.0 => Some(s[2] / (2.0 * s[3])),
                    _ => None,
                },
            })
            .collect();
        Ok(Eval(evals))
    }
}
