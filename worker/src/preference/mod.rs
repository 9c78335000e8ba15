//! Preference sources (docs/algorithms.md §2): a [`Judge`] scores completions of prompts, and
//! [`preferences`] turns two scores of the same prompt into p = P(y ≻ y′ | x). Sources: the
//! built-in task's gold judge ([`gold::GoldJudge`]), a learned reward model
//! ([`reward_model::RewardModelJudge`]) and an ensemble of them ([`ensemble::EnsembleJudge`],
//! its arithmetic in [`aggregate`]). Training and evaluation go through this seam only, so
//! they never name a task or a model kind. Must not sample or train. The best-of-n estimator's
//! arithmetic over scored samples is [`bon`] (docs/algorithms.md §4).

pub mod aggregate;
pub mod bon;
pub mod ensemble;
pub mod gold;
pub mod manifest;
pub mod reward_model;

use crate::tasks::TaskPrompt;

/// Why a judge could not score.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error(transparent)]
    Task(#[from] crate::tasks::TaskError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Aggregate(#[from] aggregate::AggregateError),
    #[error("{0}")]
    Invalid(String),
}

impl JudgeError {
    /// True when loading the judge's model failed on the way (`ModelError::is_transient`).
    pub fn is_transient(&self) -> bool {
        matches!(self, JudgeError::Model(e) if e.is_transient())
    }
}

/// A prompt as training sees it: the token ids the model reads, and, for a built-in task's
/// prompt, what the task's gold judge needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRow {
    pub ids: Vec<u32>,
    pub task: Option<TaskPrompt>,
    /// The prompt was longer than `max_prompt_tokens` and lost tokens on the left.
    pub truncated: bool,
}

/// Scores completions; higher is better.
pub trait Judge: Send + Sync {
    /// The metric prefix: `gold`, `reward` or `ensemble`.
    fn name(&self) -> &'static str;
    /// Scores are in units of this: the logistic of [`preferences`] and the logged means
    /// divide by it (gold scores are exact integers G, G / unit is the gold).
    fn unit(&self) -> f64;
    /// One score per (prompt, completion) pair; completions are token ids ending in EOS
    /// (when the rules forced or drew one).
    fn scores(
        &self,
        prompts: &[&PromptRow],
        completions: &[Vec<u32>],
    ) -> Result<Vec<f64>, JudgeError>;
    /// Names of per-row statistics a source reports beside its scores (an ensemble's member
    /// means and variance, docs/algorithms.md §2); none by default.
    fn stat_names(&self) -> Vec<String> {
        vec![]
    }
    /// [`Judge::scores`] and, per name of [`Judge::stat_names`], that statistic summed over the
    /// rows (so sums from several calls and ranks add up).
    fn scores_with_stats(
        &self,
        prompts: &[&PromptRow],
        completions: &[Vec<u32>],
    ) -> Result<(Vec<f64>, Vec<f64>), JudgeError> {
        Ok((self.scores(prompts, completions)?, vec![]))
    }
}

/// p = σ((s(y) − s(y′)) / (unit · temperature)) per row (the Bradley–Terry link,
/// docs/algorithms.md §2). Equal scores give exactly ½; the difference is taken before scaling
/// so integer scores keep their exact ties and differences.
pub fn preferences(s_y: &[f64], s_y_prime: &[f64], unit: f64, temperature: f64) -> Vec<f64> {
    s_y.iter()
        .zip(s_y_prime)
        .map(|(a, b)| {
            let diff = (a - b) / unit;
            1.0 / (1.0 + (-diff / temperature).exp())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_scores_give_one_half_and_the_logistic_otherwise() {
        let s = 1_441_440.0;
        let p = preferences(&[s, 0.0], &[s, s], s, 0.5);
        assert_eq!(p[0], 0.5);
        assert!((p[1] - 1.0 / (1.0 + 2f64.exp())).abs() < 1e-15);
        let q = preferences(&[2.0], &[-1.0], 1.0, 3.0);
        assert!((q[0] - 1.0 / (1.0 + (-1f64).exp())).abs() < 1e-15);
    }
}
