//! Sampling from models: batched KV-cached generation (plain, from the geometric mixture of
//! policy and reference, docs/algorithms.md §1, or both in one pass with a coefficient per row)
//! and the scoring pass that gives per-token log-probs of given completions (graph-connected for
//! a trainable model). A [`TokenRules`] value (forbidden ids, EOS timing, length limit) defines
//! the support of what is sampled; generation masks with it and [`score_constrained`]
//! renormalises with it, so both are under the same constrained distribution (`rules` module
//! doc).
//!
//! All randomness comes from `crate::rng` streams keyed by (seed, step, global prompt index,
//! sample index), never from rank, world size or batch composition. This module must not
//! compute losses, preferences or metrics.

mod device_draw;
mod draw;
pub mod filter;
pub mod generate;
pub mod rules;
pub mod score;
pub mod stream;

#[cfg(test)]
mod constrained_tests;
#[cfg(test)]
mod joint_tests;
#[cfg(test)]
mod large_vocab_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;

pub use draw::{draw_row, Drawn};
pub use filter::{mixed_logits, token_distribution, SamplingParams};
pub use generate::{
    generate, generate_mixture, generate_rows, GenerateConfig, Generation, MixtureError, RowKey,
};
pub use rules::{Masks, RulesError, Slot, TokenRules};
pub use score::{
    classify_completions, pooled_completions, score_completions, score_constrained, Scored,
};
pub use stream::{generate_stream, Streamed};
