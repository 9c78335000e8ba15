//! Token rules: the hard constraints on what a completion may contain, as one value that both
//! generation ([`super::generate()`]) and scoring ([`super::score_constrained`]) apply, so
//! that the distribution completions are sampled from and the one they are scored under are
//! the same distribution.
//!
//! # The constrained distribution
//!
//! Let p(v | x, y_<t) = softmax(logits)_v be a model's next-token distribution at T = 1. The
//! rules give an allowed set A_t ⊆ V at each completion position t = 0, 1, … (0-based):
//!
//! - a forbidden id is never allowed;
//! - an EOS id is not allowed while t < `min_new_tokens`;
//! - with `eos_at_limit`, only EOS ids are allowed at t = `max_new_tokens` − 1: the length
//!   limit is part of the distribution (a row the limit stops ends with an EOS that was drawn,
//!   with probability 1), not an EOS appended to a cut row after the fact.
//!
//! The constrained next-token distribution is p restricted to A_t and renormalised,
//!
//! ```text
//! p_A(v | x, y_<t) = 1[v ∈ A_t] · p(v | x, y_<t) / Σ_{u ∈ A_t} p(u | x, y_<t),
//! ```
//!
//! i.e. softmax of the logits with −∞ outside A_t: the logit masking of constrained decoding
//! (transformers' `NoBadWordsLogitsProcessor`, `MinNewTokensLengthLogitsProcessor` and
//! `ForcedEOSTokenLogitsProcessor` do the same before their softmax). A forced token
//! (A_t = {EOS}) has log-prob exactly 0. The sequence probability
//! p_A(y | x) = Π_t p_A(y_t | x, y_<t) sums to 1 over the completions the rules allow (each
//! ends at its first EOS, or after `max_new_tokens` tokens when `eos_at_limit` is off), so on
//! y ~ p_A, log p_A(y) − log q_A(y) is an unbiased estimate of KL(p_A ‖ q_A) ≥ 0 (k1 of
//! Schulman 2020, "Approximating KL Divergence").
//!
//! Temperature, top-k and top-p only change how a token is drawn
//! ([`super::filter::token_distribution`], applied after these masks); the log-probs that
//! generation records and scoring returns are always p_A at T = 1 without those filters (the
//! convention of `crate::objectives`), which is the sampling distribution exactly when
//! T = 1, top_k = 0 and top_p = 1.

use crate::model::ModelError;

/// The hard constraints on a completion (see the module doc). Build it once (for the task:
/// `train::rollout::task_rules`) and hand the same value to generation and scoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    /// A row finishes when it emits one of these.
    pub eos_token_ids: Vec<u32>,
    /// Never allowed in a completion (prompts may hold them).
    pub forbidden_token_ids: Vec<u32>,
    /// EOS ids are not allowed until a row has this many tokens (1 = "no EOS first").
    pub min_new_tokens: usize,
    /// Most tokens in a completion, EOS included.
    pub max_new_tokens: usize,
    /// Only EOS is allowed at position `max_new_tokens` − 1, so every completion ends with
    /// an EOS; when false, a row the limit stops simply ends (without EOS).
    pub eos_at_limit: bool,
}

/// A completion or a rule set that the rules cannot score or sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error(
        "no token is allowed at completion position {position} (forbidden ids, \
         min_new_tokens {min_new_tokens}, max_new_tokens {max_new_tokens}, eos_at_limit \
         {eos_at_limit}, vocabulary {vocab})"
    )]
    NothingAllowed {
        position: usize,
        min_new_tokens: usize,
        max_new_tokens: usize,
        eos_at_limit: bool,
        vocab: usize,
    },
    #[error("completion {row} has {len} tokens; the rules allow at most {max}")]
    TooLong { row: usize, len: usize, max: usize },
    #[error(
        "completion {row} has token {token} at position {position}, which the rules forbid there"
    )]
    Forbidden {
        row: usize,
        position: usize,
        token: u32,
    },
    #[error("completion {row} continues after the EOS at position {position}")]
    AfterEos { row: usize, position: usize },
}

impl From<RulesError> for ModelError {
    fn from(e: RulesError) -> Self {
        ModelError::Input(e.to_string())
    }
}

/// Which allowed set applies at a position; also the row of [`Masks::additive_table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `min_new_tokens` ≤ t < the forced position: all but the forbidden ids.
    Open = 0,
    /// t < `min_new_tokens`: all but the forbidden ids and EOS.
    Early = 1,
    /// t = `max_new_tokens` − 1 with `eos_at_limit`: EOS only.
    Limit = 2,
    /// No constraint (padding positions of a scored batch).
    Free = 3,
}

/// The rules over one vocabulary: per [`Slot`], `forbidden[v]`. Built by [`TokenRules::masks`],
/// which checks that every reachable position allows some token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masks {
    rules: TokenRules,
    /// Indexed by `Slot as usize`.
    forbidden: [Vec<bool>; 4],
}

impl TokenRules {
    /// Whether `token` is an EOS id.
    pub fn is_eos(&self, token: u32) -> bool {
        self.eos_token_ids.contains(&token)
    }

    /// The slot of completion position `t`.
    pub fn slot(&self, t: usize) -> Slot {
        if self.eos_at_limit && t + 1 == self.max_new_tokens {
            Slot::Limit
        } else if t < self.min_new_tokens {
            Slot::Early
        } else {
            Slot::Open
        }
    }

    /// The forbidden sets over a vocabulary of `vocab` ids (ids outside it are ignored); an
    /// error when a position the rules can reach allows no token.
    pub fn masks(&self, vocab: usize) -> Result<Masks, RulesError> {
        let mark = |ids: &[u32], set: &mut Vec<bool>, value: bool| {
            for &id in ids {
                if let Some(slot) = set.get_mut(id as usize) {
                    *slot = value;
                }
            }
        };
        let mut open = vec![false; vocab];
        mark(&self.forbidden_token_ids, &mut open, true);
        let mut early = open.clone();
        mark(&self.eos_token_ids, &mut early, true);
        let mut limit = vec![true; vocab];
        mark(&self.eos_token_ids, &mut limit, false);
        mark(&self.forbidden_token_ids, &mut limit, true);
        let masks = Masks {
            rules: self.clone(),
            forbidden: [open, early, limit, vec![false; vocab]],
        };
        masks.check_reachable(vocab)?;
        Ok(masks)
    }
}

impl Masks {
    /// The rules these masks were built from.
    pub fn rules(&self) -> &TokenRules {
        &self.rules
    }

    /// `forbidden[v]` at completion position `t`.
    pub fn at(&self, t: usize) -> &[bool] {
        &self.forbidden[self.rules.slot(t) as usize]
    }

    /// Rows [`Slot::Open`], [`Slot::Early`], [`Slot::Limit`], [`Slot::Free`] of additive
    /// logit masks (0 where allowed, −∞ where forbidden), flattened [4 · vocab].
    pub fn additive_table(&self) -> Vec<f32> {
        self.forbidden
            .iter()
            .flatten()
            .map(|&f| if f { f32::NEG_INFINITY } else { 0.0 })
            .collect()
    }

    /// Checks that completion `row` lies in the rules' support: no longer than
    /// `max_new_tokens`, every token allowed at its position, nothing after an EOS.
    pub fn check(&self, row: usize, completion: &[u32]) -> Result<(), RulesError> {
        let max = self.rules.max_new_tokens;
        if completion.len() > max {
            return Err(RulesError::TooLong {
                row,
                len: completion.len(),
                max,
            });
        }
        for (position, &token) in completion.iter().enumerate() {
            // Ids outside the vocabulary are left to the model's own check.
            if self.at(position).get(token as usize) == Some(&true) {
                return Err(RulesError::Forbidden {
                    row,
                    position,
                    token,
                });
            }
            if self.rules.is_eos(token) && position + 1 < completion.len() {
                return Err(RulesError::AfterEos { row, position });
            }
        }
        Ok(())
    }

    /// Every position below `max_new_tokens` must allow at least one token.
    fn check_reachable(&self, vocab: usize) -> Result<(), RulesError> {
        let empty = |slot: Slot| self.forbidden[slot as usize].iter().all(|&f| f);
        let r = &self.rules;
        // The forced EOS cannot come before EOS is allowed at all.
        let contradiction = (r.eos_at_limit && r.max_new_tokens > 0)
            .then(|| r.max_new_tokens - 1)
            .filter(|&last| last < r.min_new_tokens);
        let first_empty = [Slot::Early, Slot::Open, Slot::Limit]
            .into_iter()
            .filter(|&s| empty(s))
            .filter_map(|s| (0..r.max_new_tokens).find(|&t| r.slot(t) == s))
            .chain(contradiction)
            .min();
        match first_empty {
            None => Ok(()),
            Some(position) => Err(RulesError::NothingAllowed {
                position,
                min_new_tokens: r.min_new_tokens,
                max_new_tokens: r.max_new_tokens,
                eos_at_limit: r.eos_at_limit,
                vocab,
            }),
        }
    }
}

/// log p_A(v) for every v: `logprobs` (a log-softmaxed row) renormalised over the allowed
/// tokens, −∞ at forbidden ones (see the module doc). At least one token must be allowed.
pub fn constrained_logprobs(logprobs: &[f64], forbidden: &[bool]) -> Vec<f64> {
    let allowed = || {
        logprobs
            .iter()
            .zip(forbidden)
            .filter(|(_, &f)| !f)
            .map(|(&x, _)| x)
    };
    let max = allowed().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + allowed().map(|x| (x - max).exp()).sum::<f64>().ln();
    logprobs
        .iter()
        .zip(forbidden)
        .map(|(&x, &f)| if f { f64::NEG_INFINITY } else { x - lse })
        .collect()
}
