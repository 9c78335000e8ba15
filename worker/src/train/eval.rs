//! Evaluation on held-out prompts (ALGORITHMS.md §4): `eval/gold` (mean gold of policy samples)
//! and `eval/win_rate` against the reference, P(G(y) > G(y_ref)) + ½ P(tie). The prompts are
//! split across the ranks of a gang and the sums reduced, so the figures do not depend on the
//! world size (samples are keyed by the prompt's global index). The reference's samples are
//! drawn once (they do not change); the policy's are keyed by the step.

use std::ops::Range;

use mirrorplay_proto::v1::SamplingSpec;

use super::preference::golds;
use super::rollout::{self, Source, SAMPLE_EVAL_POLICY, SAMPLE_EVAL_REFERENCE};
use super::{shard, TrainError};
use crate::collective::Collective;
use crate::model::Model;
use crate::tasks::goodhart_digits as gd;

/// This rank's share of the held-out prompts an evaluation uses.
pub struct EvalSet {
    seed: u64,
    /// Global indices of this rank's prompts.
    rows: Range<usize>,
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
    /// This rank's slice of the first `n` held-out prompts; with a reference, its samples are
    /// drawn now.
    pub fn new(
        seed: u64,
        n: usize,
        sampling: &SamplingSpec,
        reference: Option<&Model>,
        collective: &dyn Collective,
    ) -> Result<Self, TrainError> {
        let rows = shard(n, collective.rank(), collective.world_size());
        let prompts: Vec<gd::Prompt> = rows
            .clone()
            .map(|i| gd::prompt(seed, gd::Split::HeldOut, i as u64))
            .collect();
        let mut set = EvalSet {
            seed,
            rows,
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
        if self.prompts.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<Vec<u32>> = self.prompts.iter().map(|p| p.tokens().to_vec()).collect();
        let config = rollout::task_config(&self.sampling, self.seed, step);
        let keys = rollout::keys(self.rows.clone().map(|i| i as u64), sample);
        let ys = rollout::sample(Source::Policy(model), &ids, &keys, &config)?;
        golds(&self.prompts, &ys)
    }

    /// Evaluates `policy` (a detached view) at `step`; every rank of the gang calls it and
    /// gets the same figures.
    pub fn run(
        &self,
        policy: &Model,
        step: u64,
        collective: &mut dyn Collective,
    ) -> Result<Eval, TrainError> {
        let g = self.golds(policy, step, SAMPLE_EVAL_POLICY)?;
        // [Σ gold, #prompts, Σ win score (2 per win, 1 per tie), #pairs]
        let mut sums = [
            g.iter().map(|x| x.value()).sum::<f64>(),
            g.len() as f64,
            0.0,
            0.0,
        ];
        if let Some(r) = &self.reference {
            let pairs: Vec<(gd::Gold, gd::Gold)> =
                g.iter().copied().zip(r.iter().copied()).collect();
            sums[2] = gd::win_score(&pairs) as f64;
            sums[3] = pairs.len() as f64;
        }
        collective.all_reduce_sum_f64(&mut sums)?;
        let [gold_sum, n, score, pairs] = sums;
        let win_rate = match &self.reference {
            Some(_) if pairs > 0.0 => Some(score / (2.0 * pairs)),
            _ => None,
        };
        Ok(Eval {
            gold: gold_sum / n.max(1.0),
            win_rate,
        })
    }
}
