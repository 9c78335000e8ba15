//! A learned reward model as the preference source (`[preference] source = "reward_model"`):
//! an HF `*ForSequenceClassification` model with one label, whose score r(x, y) is read at the
//! last token of prompt + completion (EOS included), as transformers pools it
//! (`sample::classify_completions`). The reward model must share the policy's tokenizer, so it
//! reads exactly the ids the policy produced; re-tokenising text for a different vocabulary is
//! not implemented and is refused when the model is loaded.

use super::{Judge, JudgeError, PromptRow};
use crate::model::{Head, Model, Tokenizer};
use crate::sample::classify_completions;

/// Rows scored per forward pass.
pub(crate) const BATCH: usize = 16;

pub struct RewardModelJudge {
    model: Model,
}

impl RewardModelJudge {
    /// Checks that `model` is a one-label sequence classifier over the policy's vocabulary
    /// (same vocabulary size and, when both have one, the same tokenizer).
    pub fn new(
        model: Model,
        tokenizer: Option<&Tokenizer>,
        policy_vocab: usize,
        policy_tokenizer: Option<&Tokenizer>,
        source: &str,
    ) -> Result<Self, JudgeError> {
        Self::check(&model, tokenizer, policy_vocab, policy_tokenizer, source)?;
        Ok(RewardModelJudge { model })
    }

    /// The checks of [`RewardModelJudge::new`], for callers that keep the model themselves.
    pub fn check(
        model: &Model,
        tokenizer: Option<&Tokenizer>,
        policy_vocab: usize,
        policy_tokenizer: Option<&Tokenizer>,
        source: &str,
    ) -> Result<(), JudgeError> {
        match model.config().head {
            Head::SequenceClassification { num_labels: 1 } => {}
            Head::SequenceClassification { num_labels } => {
                return Err(JudgeError::Invalid(format!(
                    "{source}: a reward model has one label, this one has {num_labels}"
                )))
            }
            Head::CausalLm => {
                return Err(JudgeError::Invalid(format!(
                    "{source}: not a reward model (a causal LM; expected an \
                     `*ForSequenceClassification` architecture with num_labels = 1)"
                )))
            }
        }
        if model.config().vocab_size != policy_vocab {
            return Err(JudgeError::Invalid(format!(
                "{source}: vocabulary {} differs from the policy's {policy_vocab}; the reward \
                 model must share the policy's tokenizer",
                model.config().vocab_size
            )));
        }
        if let (Some(a), Some(b)) = (tokenizer, policy_tokenizer) {
            if a.to_json()? != b.to_json()? {
                return Err(JudgeError::Invalid(format!(
                    "{source}: tokenizer.json differs from the policy's; the reward model must \
                     share the policy's tokenizer"
                )));
            }
        }
        Ok(())
    }
}

impl Judge for RewardModelJudge {
    fn name(&self) -> &'static str {
        "reward"
    }

    fn unit(&self) -> f64 {
        1.0
    }

    fn scores(
        &self,
        prompts: &[&PromptRow],
        completions: &[Vec<u32>],
    ) -> Result<Vec<f64>, JudgeError> {
        let mut out = Vec::with_capacity(completions.len());
        for start in (0..completions.len()).step_by(BATCH) {
            let end = (start + BATCH).min(completions.len());
            let ids: Vec<Vec<u32>> = prompts[start..end].iter().map(|p| p.ids.clone()).collect();
            let r = classify_completions(&self.model, &ids, &completions[start..end])?;
            out.extend(
                r.flatten_all()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(f64::from),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::Pretrained;
    use crate::preference::preferences;

    fn fixture(name: &str) -> String {
        format!(
            "{}/tests/fixtures/models/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    /// The fixture's reward model (scored by transformers: `scripts/make_model_fixtures.py`)
    /// gives the fixture's scores for its two sequences split into prompt + completion, and
    /// preferences are the logistic of their difference, computed here by hand.
    #[tokio::test]
    async fn reward_model_preferences_match_hand_computed_ones() {
        let rm = Pretrained::load(&fixture("llama_seqcls"), false, &Device::Cpu)
            .await
            .unwrap();
        let judge = RewardModelJudge::new(rm.model, None, 24, None, "llama_seqcls").unwrap();
        let row = |ids: Vec<u32>| PromptRow {
            ids,
            task: None,
            truncated: false,
        };
        let (a, b) = (row(vec![1, 5, 9]), row(vec![1, 7]));
        let s = judge
            .scores(&[&a, &b], &[vec![13, 17, 21, 3, 8], vec![11, 19, 2]])
            .unwrap();
        // transformers' LlamaForSequenceClassification logits of the two whole sequences
        let want = [-1.0058849, 0.1794128];
        assert!(
            (s[0] - want[0]).abs() < 1e-4 && (s[1] - want[1]).abs() < 1e-4,
            "{s:?}"
        );
        let p = preferences(&[s[0]], &[s[1]], judge.unit(), 0.5);
        let by_hand = 1.0 / (1.0 + ((0.1794128 + 1.0058849) / 0.5f64).exp());
        assert!((p[0] - by_hand).abs() < 1e-4, "{} vs {by_hand}", p[0]);
        assert!(p[0] < 0.1, "the second sequence is clearly preferred");
    }

    #[tokio::test]
    async fn a_causal_lm_or_another_vocabulary_is_refused() {
        let lm = Pretrained::load(&fixture("llama_gqa_tied"), false, &Device::Cpu)
            .await
            .unwrap();
        let vocab = lm.model.config().vocab_size;
        let e = RewardModelJudge::new(lm.model, None, vocab, None, "lm")
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a reward model"), "{e}");
        let rm = Pretrained::load(&fixture("llama_seqcls"), false, &Device::Cpu)
            .await
            .unwrap();
        let e = RewardModelJudge::new(rm.model, None, 25, None, "rm")
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("differs from the policy's 25"),
            "{e}"
        );
    }
}
