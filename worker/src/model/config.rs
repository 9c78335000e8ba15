//! The decoder's configuration, read from and written to a Hugging Face `config.json`.
//!
//! One struct covers the Llama family (`model_type` llama — incl. SmolLM/SmolLM2 and Llama 3's
//! `rope_scaling` type `llama3` —, mistral and qwen2). Anything that would change the maths and is
//! not implemented (another activation, sliding-window attention in use, another RoPE scaling)
//! is an error naming the key, never silently ignored. It must not touch tensors.

use serde_json::{json, Map, Value};

use super::error::{ModelError, Result};

/// Which output head the model carries (from `architectures[0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `*ForCausalLM`: `lm_head.weight` [vocab, hidden], or the embedding when tied.
    CausalLm,
    /// `*ForSequenceClassification`: `score.weight` [num_labels, hidden], no bias, read at the
    /// last non-pad token (reward models).
    SequenceClassification { num_labels: usize },
}

/// Rotary-embedding frequency scaling (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (transformers' `linear`).
    Linear { factor: f64 },
    /// Llama 3.1's piecewise frequency scaling (transformers `_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The model families this decoder implements; they differ only in config switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Llama,
    Mistral,
    Qwen2,
}

impl ModelType {
    pub fn name(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Mistral => "mistral",
            ModelType::Qwen2 => "qwen2",
        }
    }
}

/// Everything the forward pass needs. `raw` keeps the original JSON so that saving preserves
/// keys mirrorplay does not use (chat templates, `transformers_version`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub model_type: ModelType,
    pub head: Head,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate/up/down (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Mistral/Qwen2 sliding window; positions at or beyond it are an error (not implemented).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub raw: Value,
}

fn config_err(url: &str, key: &str, reason: impl Into<String>) -> ModelError {
    ModelError::Config {
        url: url.to_string(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Reads `key` as a non-negative integer.
fn get_usize(obj: &Map<String, Value>, url: &str, key: &str) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            config_err(
                url,
                key,
                format!("expected a non-negative integer, found {v}"),
            )
        }),
    }
}

fn need_usize(obj: &Map<String, Value>, url: &str, key: &str) -> Result<usize> {
    get_usize(obj, url, key)?.ok_or_else(|| config_err(url, key, "missing"))
}

fn get_f64(obj: &Map<String, Value>, url: &str, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| config_err(url, key, format!("expected a number, found {v}"))),
    }
}

fn get_bool(obj: &Map<String, Value>, url: &str, key: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| config_err(url, key, format!("expected true or false, found {v}"))),
    }
}

/// `eos_token_id` may be one id or a list.
pub(crate) fn token_ids(obj: &Map<String, Value>, url: &str, key: &str) -> Result<Vec<u32>> {
    let one = |v: &Value| {
        v.as_u64()
            .filter(|&n| n <= u32::MAX as u64)
            .map(|n| n as u32)
    };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                one(v).ok_or_else(|| config_err(url, key, format!("expected token ids, found {v}")))
            })
            .collect(),
        Some(v) => Ok(vec![one(v).ok_or_else(|| {
            config_err(url, key, format!("expected a token id, found {v}"))
        })?]),
    }
}

impl ModelConfig {
    /// Parses a `config.json` value; `url` names the file in errors.
    pub fn from_json(value: &Value, url: &str) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| config_err(url, "<root>", "config.json is not a JSON object"))?;
        let unsupported = |what: &str, found: String, supported: &str| ModelError::Unsupported {
            url: url.to_string(),
            what: what.to_string(),
            found,
            supported: supported.to_string(),
        };
        let model_type = match obj.get("model_type").and_then(Value::as_str) {
            Some("llama") => ModelType::Llama,
            Some("mistral") => ModelType::Mistral,
            Some("qwen2") => ModelType::Qwen2,
            Some(other) => {
                return Err(unsupported(
                    "model_type",
                    other.to_string(),
                    "llama, mistral, qwen2",
                ))
            }
            None => return Err(config_err(url, "model_type", "missing")),
        };
        let arch = obj
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("ForCausalLM");
        let head = if arch.ends_with("ForCausalLM") {
            Head::CausalLm
        } else if arch.ends_with("ForSequenceClassification") {
            let num_labels = match obj.get("id2label").and_then(Value::as_object) {
                Some(m) => m.len(),
                None => get_usize(obj, url, "num_labels")?.unwrap_or(2),
            };
            Head::SequenceClassification { num_labels }
        } else {
            return Err(unsupported(
                "architecture",
                arch.to_string(),
                "*ForCausalLM, *ForSequenceClassification",
            ));
        };
        if let Some(act) = obj.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(unsupported("hidden_act", act.to_string(), "silu"));
            }
        }
        let hidden_size = need_usize(obj, url, "hidden_size")?;
        let num_attention_heads = need_usize(obj, url, "num_attention_heads")?;
        let num_key_value_heads =
            get_usize(obj, url, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || num_attention_heads % num_key_value_heads != 0
        {
            return Err(config_err(
                url,
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} must divide num_attention_heads = {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match get_usize(obj, url, "head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(config_err(
                    url,
                    "hidden_size",
                    format!("{hidden_size} is not a multiple of num_attention_heads"),
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(config_err(
                url,
                "head_dim",
                format!("{head_dim} must be even for RoPE"),
            ));
        }
        // transformers >= 4.56 may nest rope settings under `rope_parameters`.
        let rope_obj = obj
            .get("rope_scaling")
            .or_else(|| obj.get("rope_parameters"));
        let rope_scaling = match rope_obj {
            None | Some(Value::Null) => None,
            Some(Value::Object(r)) => {
                let key = |k: &str| format!("rope_scaling.{k}");
                let kind = r
                    .get("rope_type")
                    .or_else(|| r.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let num = |k: &str| -> Result<f64> {
                    r.get(k)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| config_err(url, &key(k), "missing or not a number"))
                };
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear {
                        factor: num("factor")?,
                    }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position_embeddings: num("original_max_position_embeddings")?,
                    }),
                    other => {
                        return Err(unsupported(
                            "rope_scaling type",
                            other.to_string(),
                            "default, linear, llama3",
                        ))
                    }
                }
            }
            Some(v) => {
                return Err(config_err(
                    url,
                    "rope_scaling",
                    format!("expected an object or null, found {v}"),
                ))
            }
        };
        let rope_theta = get_f64(obj, url, "rope_theta")?
            .or_else(|| {
                rope_obj
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10000.0);
        let attention_bias = get_bool(obj, url, "attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match model_type {
            ModelType::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let mlp_bias = get_bool(obj, url, "mlp_bias")?.unwrap_or(false);
        let sliding_window = match model_type {
            ModelType::Llama => None,
            ModelType::Qwen2 if !get_bool(obj, url, "use_sliding_window")?.unwrap_or(false) => None,
            _ => get_usize(obj, url, "sliding_window")?,
        };
        if get_usize(obj, url, "pretraining_tp")?.unwrap_or(1) != 1 {
            return Err(unsupported(
                "pretraining_tp",
                obj["pretraining_tp"].to_string(),
                "1",
            ));
        }
        Ok(ModelConfig {
            model_type,
            head,
            vocab_size: need_usize(obj, url, "vocab_size")?,
            hidden_size,
            intermediate_size: need_usize(obj, url, "intermediate_size")?,
            num_hidden_layers: need_usize(obj, url, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64(obj, url, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: get_usize(obj, url, "max_position_embeddings")?
                .unwrap_or(2048),
            // transformers' Llama, Mistral and Qwen2 configs all default to untied.
            tie_word_embeddings: get_bool(obj, url, "tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias,
            sliding_window,
            bos_token_id: token_ids(obj, url, "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(obj, url, "eos_token_id")?,
            pad_token_id: token_ids(obj, url, "pad_token_id")?.first().copied(),
            raw: value.clone(),
        })
    }

    /// A tiny Llama for synthetic tasks: hidden 64, 2 layers, 4 heads (2 KV heads), MLP 128,
    /// tied head, context 256; about 0.1 M parameters for vocab 32. Token ids 0, 1, 2 are
    /// `<pad>`, `<s>`, `</s>` as in [`super::tokenizer::Tokenizer::tiny`].
    pub fn tiny(vocab_size: usize) -> Self {
        Self::tiny_with(vocab_size, 64, 2, 4, 2, 128)
    }

    /// A tiny Llama of the given shape (tied head, RoPE θ = 10000, ε = 1e-5).
    pub fn tiny_with(
        vocab_size: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        intermediate: usize,
    ) -> Self {
        let raw = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": true,
            "attention_bias": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "torch_dtype": "float32"
        });
        Self::from_json(&raw, "<tiny config>").expect("the tiny config is valid")
    }

    /// The same config with a sequence-classification head of `num_labels` outputs (reward
    /// models: 1), as `LlamaForSequenceClassification` etc.
    pub fn with_classification_head(&self, num_labels: usize) -> Self {
        let mut c = self.clone();
        c.head = Head::SequenceClassification { num_labels };
        let prefix = match c.model_type {
            ModelType::Llama => "Llama",
            ModelType::Mistral => "Mistral",
            ModelType::Qwen2 => "Qwen2",
        };
        if let Some(obj) = c.raw.as_object_mut() {
            obj.insert(
                "architectures".into(),
                json!([format!("{prefix}ForSequenceClassification")]),
            );
            let id2label: Map<String, Value> = (0..num_labels)
                .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
                .collect();
            let label2id: Map<String, Value> = (0..num_labels)
                .map(|i| (format!("LABEL_{i}"), json!(i)))
                .collect();
            obj.insert("id2label".into(), Value::Object(id2label));
            obj.insert("label2id".into(), Value::Object(label2id));
        }
        c
    }

    /// The JSON to write as `config.json`: the original keys, with the dtype key set to what
    /// is saved (float32; `dtype` in transformers ≥ 5 configs, else `torch_dtype`).
    pub fn to_json(&self) -> Value {
        let mut v = self.raw.clone();
        if let Some(obj) = v.as_object_mut() {
            let key = if obj.contains_key("dtype") {
                "dtype"
            } else {
                "torch_dtype"
            };
            obj.insert(key.into(), json!("float32"));
        }
        v
    }

    /// Number of query heads sharing one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Every weight tensor the model needs, with its shape, sorted by name (HF naming).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        );
        let mut out: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![v, h]),
            ("model.norm.weight".into(), vec![h]),
        ];
        match self.head {
            Head::CausalLm if !self.tie_word_embeddings => {
                out.push(("lm_head.weight".into(), vec![v, h]))
            }
            Head::CausalLm => {}
            Head::SequenceClassification { num_labels } => {
                out.push(("score.weight".into(), vec![num_labels, h]))
            }
        }
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            for (name, rows, cols, bias) in [
                ("self_attn.q_proj", q, h, self.qkv_bias),
                ("self_attn.k_proj", kv, h, self.qkv_bias),
                ("self_attn.v_proj", kv, h, self.qkv_bias),
                ("self_attn.o_proj", h, q, self.o_bias),
                ("mlp.gate_proj", i, h, self.mlp_bias),
                ("mlp.up_proj", i, h, self.mlp_bias),
                ("mlp.down_proj", h, i, self.mlp_bias),
            ] {
                out.push((format!("{p}.{name}.weight"), vec![rows, cols]));
                if bias {
                    out.push((format!("{p}.{name}.bias"), vec![rows]));
                }
            }
        }
        out.sort();
        out
    }

    /// Total number of parameters.
    pub fn num_parameters(&self) -> usize {
        self.tensor_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_families_and_rejects_unsupported() {
        let tiny = ModelConfig::tiny(32);
        assert_eq!(tiny.head_dim, 16);
        assert_eq!(tiny.group_size(), 2);
        assert!(tiny.num_parameters() > 10_000);
        let mut qwen = tiny.raw.clone();
        qwen["model_type"] = json!("qwen2");
        qwen["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let c = ModelConfig::from_json(&qwen, "q").unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
        assert!(c
            .tensor_shapes()
            .iter()
            .any(|(n, _)| n == "model.layers.0.self_attn.k_proj.bias"));
        let cases = [
            ("model_type", json!("gpt2"), "unsupported model_type: gpt2"),
            ("hidden_act", json!("gelu"), "unsupported hidden_act"),
            (
                "rope_scaling",
                json!({"type": "yarn", "factor": 2.0}),
                "unsupported rope_scaling type: yarn",
            ),
            (
                "num_key_value_heads",
                json!(3),
                "`num_key_value_heads`: 3 must divide",
            ),
            (
                "hidden_size",
                json!("big"),
                "`hidden_size`: expected a non-negative integer",
            ),
        ];
        for (key, value, expected) in cases {
            let mut raw = tiny.raw.clone();
            raw[key] = value;
            let err = ModelConfig::from_json(&raw, "dir/config.json")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected) && err.contains("dir/config.json"),
                "{err}"
            );
        }
        let rm = tiny.with_classification_head(1);
        let back = ModelConfig::from_json(&rm.to_json(), "rm").unwrap();
        assert_eq!(back.head, Head::SequenceClassification { num_labels: 1 });
        assert!(back
            .tensor_shapes()
            .iter()
            .any(|(n, s)| n == "score.weight" && s == &vec![1, 64]));
    }
}
