//! A reward member's model (docs/algorithms.md §2, "Reward model"): a one-label
//! `*ForSequenceClassification` Llama with trainable weights. From a fresh tiny model of a
//! task's vocabulary (every weight drawn from the member seed), a pretrained causal LM (its LM
//! head replaced by a new `score.weight` [1, hidden] ~ N(0, initializer_range²) from the member
//! seed, as transformers initialises it), or a one-label sequence classifier (kept as it is).
//! config.json always names the pad token, which transformers' pooling needs.

use candle_core::Device;
use mirrorplay_proto::v1::ModelSource;
use serde_json::json;

use super::RewardError;
use crate::model::{random_matrix, Head, Model, ModelConfig};
use crate::train::models::{self, Loaded};

/// Loads or builds the member's model from `source`: a tiny backbone drawn from
/// `backbone_seed` (the member seed, or the job seed when members share the backbone), a new
/// head from `member_seed`; a pretrained backbone is read as it is.
pub async fn load(
    source: &ModelSource,
    backbone_seed: u64,
    member_seed: u64,
    device: &Device,
) -> Result<Loaded, RewardError> {
    let loaded = models::load(source, false, backbone_seed, device).await?;
    with_reward_head(loaded, member_seed)
}

/// `loaded` as a trainable one-label sequence classifier (see the module doc).
pub fn with_reward_head(loaded: Loaded, member_seed: u64) -> Result<Loaded, RewardError> {
    let config = loaded.model.config();
    let pad = loaded
        .pad_token_id
        .or_else(|| loaded.eos_token_ids.first().copied())
        .ok_or_else(|| {
            RewardError::Invalid(format!(
                "{}: names neither a pad nor an EOS token, so a reward model cannot pool",
                loaded.source
            ))
        })?;
    let model = match config.head {
        Head::SequenceClassification { num_labels: 1 } => {
            let config = reward_config(config, pad)?;
            Model::new(config, loaded.model.tensors().clone(), true)?
        }
        Head::SequenceClassification { num_labels } => {
            return Err(RewardError::Invalid(format!(
                "{}: a reward model has one label, this classifier has {num_labels}",
                loaded.source
            )))
        }
        Head::CausalLm => {
            let config = reward_config(config, pad)?;
            let std = config
                .raw
                .get("initializer_range")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.02);
            let mut tensors = loaded.model.tensors().clone();
            tensors.remove("lm_head.weight");
            let shape = [1, config.hidden_size];
            let head = random_matrix(
                "score.weight",
                &shape,
                member_seed,
                std,
                loaded.model.device(),
            )?;
            tensors.insert("score.weight".into(), head);
            Model::new(config, tensors, true)?
        }
    };
    Ok(Loaded {
        model,
        pad_token_id: Some(pad),
        ..loaded
    })
}

/// `config` with a one-label classification head, `num_labels` and `pad_token_id` written out.
fn reward_config(config: &ModelConfig, pad: u32) -> Result<ModelConfig, RewardError> {
    let mut raw = config.with_classification_head(1).raw;
    if let Some(obj) = raw.as_object_mut() {
        obj.insert("num_labels".into(), json!(1));
        obj.insert("pad_token_id".into(), json!(pad));
    }
    Ok(ModelConfig::from_json(&raw, "<reward model config>")?)
}
