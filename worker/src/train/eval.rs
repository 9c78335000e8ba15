//! Evaluation on held-out prompts (ALGORITHMS.md §4): `eval/gold` (mean gold of policy samples)
//! and `eval/win_rate` against the reference, P(G(y) > G(y_ref)) + ½ P(tie). The reference's
//! samples are drawn once (they do not change); the policy's are keyed by the step.

use mirrorplay_proto::v1::SamplingSpec;

use super::preference::golds;
use super::rollout::{self, Source, SAMPLE_EVAL_POLICY, SAMPLE_EVAL_REFERENCE};
use super::TrainError;
use crate::model::Model;
use crate::tasks::goodhart_digits as gd;

/// The held-out prompts an evaluation uses.
pub struct EvalSet {
    seed: u64,
    prompts: Vec<gd::Prompt>,
    sampling: SamplingSpec,
    /// Golds of the reference's samples (self-play only).
    reference: Option<Vec<gd::Gold>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Eval {
    pub gold: f64,
    pub win_rate: Option<f64>,
}

impl EvalSet {
    /// The first `n` held-out prompts; with a reference, its samples are drawn now.
    pub fn new(
        seed: u64,
        n: usize,
        sampling: &SamplingSpec,
        reference: Option<&Model>,
    ) -> Result<Self, TrainError> {
        let prompts: Vec<gd::Prompt> = (0..n as u64)
            .map(|i| gd::prompt(seed, gd::Split::HeldOut, i))
            .collect();
        let mut set = EvalSet {
            seed,
            prompts,
            sampling: *sampling,
            reference: None,
        };
        if let Some(r) = reference {
            set.reference = Some(set.golds(r, 0, SAMPLE_EVAL_REFERENCE)?);
        }
        Ok(set)
    }

    fn golds(&self, model: &Model, step: u64, sample: u64) -> Result<Vec<gd::Gold>, TrainError> {
        let ids: Vec<Vec<u32>> = self.prompts.iter().map(|p| p.tokens().to_vec()).collect();
        let config = rollout::task_config(&self.sampling, self.seed, step);
        let keys = rollout::keys(0..ids.len() as u64, sample);
        let ys = rollout::sample(Source::Policy(model), &ids, &keys, &config)?;
        golds(&self.prompts, &ys)
    }

    /// Evaluates `policy` (a detached view) at `step`.
    pub fn run(&self, policy: &Model, step: u64) -> Result<Eval, TrainError> {
        let g = self.golds(policy, step, SAMPLE_EVAL_POLICY)?;
        let gold = g.iter().map(|x| x.value()).sum::<f64>() / g.len().max(1) as f64;
        let win_rate = match &self.reference {
            Some(r) => {
                let pairs: Vec<(gd::Gold, gd::Gold)> =
                    g.iter().copied().zip(r.iter().copied()).collect();
                gd::win_rate(&pairs)
            }
            None => None,
        };
        Ok(Eval { gold, win_rate })
    }
}
