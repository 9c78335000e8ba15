//! The benches' shared pieces: model shapes, a batch of 16-token prompts with per-row keys and
//! an unfiltered T = 1 config (no EOS stop), and the repetition count argument.

use mirrorplay_worker::model::ModelConfig;
use mirrorplay_worker::sample::{GenerateConfig, RowKey, SamplingParams, TokenRules};

/// A random model shaped like SmolLM2-135M (hidden 576, 30 layers, 9 heads / 3 KV heads, MLP
/// 1536, vocab 49152, tied).
pub fn smollm2_135m_shape() -> ModelConfig {
    let mut c = ModelConfig::tiny_with(49152, 576, 30, 9, 3, 1536);
    c.max_position_embeddings = 8192;
    c
}

/// `batch` prompts of 16 tokens, their row keys, and a config drawing `new_tokens` tokens.
pub fn workload(batch: usize, new_tokens: usize) -> (Vec<Vec<u32>>, Vec<RowKey>, GenerateConfig) {
    let prompts = (0..batch)
        .map(|r| (0..16).map(|i| 3 + ((r * 7 + i * 5) % 20) as u32).collect())
        .collect();
    let keys = (0..batch as u64)
        .map(|i| RowKey {
            prompt: i,
            sample: 0,
        })
        .collect();
    let gen = GenerateConfig {
        params: SamplingParams::default(),
        rules: TokenRules {
            eos_token_ids: vec![],
            forbidden_token_ids: vec![],
            min_new_tokens: 0,
            max_new_tokens: new_tokens,
            eos_at_limit: false,
        },
        seed: 0,
        step: 0,
    };
    (prompts, keys, gen)
}

/// The first argument that is not a flag, as a repetition count, or `default` (cargo bench
/// passes `--bench` itself).
#[allow(dead_code)] // not every bench takes one
pub fn reps_arg(default: usize) -> usize {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}
