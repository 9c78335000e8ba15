//! The tensors of a llama GGUF file: llama.cpp names ↔ Hugging Face names, the supported
//! tensor types, checks of names, types and shapes against the config (made before anything is
//! dequantised), and dequantisation to f32 with llama.cpp's rotary row permutation of Q and K
//! undone. Must not read metadata or build configs or tokenizers.

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::gguf_config::unsupported;

/// Tensor types that are dequantised to f32.
pub const SUPPORTED_TYPES: [GgmlDType; 8] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

/// llama.cpp's name of a tensor type (`Q4_K`, ...).
pub fn type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// Whole-model tensors: (llama.cpp name, HF name).
const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer tensors: (suffix after `blk.N.`, suffix after `model.layers.N.`).
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// Splits `<prefix><N>.<suffix>` into (N, suffix), N written without leading zeros.
fn layer_of<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (n, suffix) = name.strip_prefix(prefix)?.split_once('.')?;
    let layer: usize = n.parse().ok()?;
    (layer.to_string() == n).then_some((layer, suffix))
}

/// The HF name of a llama.cpp tensor name; None for a name this loader does not know.
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL_NAMES.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let (layer, suffix) = layer_of(gguf, "blk.")?;
    let (_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == suffix)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The llama.cpp name of an HF tensor name (the inverse of [`hf_name`]).
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((g, _)) = GLOBAL_NAMES.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let (layer, suffix) = layer_of(hf, "model.layers.")?;
    let (g, _) = LAYER_NAMES.iter().find(|(_, h)| *h == suffix)?;
    Some(format!("blk.{layer}.{g}"))
}

/// Undoes llama.cpp's rotary permutation of Q/K rows (its converter's `permute`, reversed as
/// transformers' `reverse_permute_weights`): within each of `heads` heads of d rows, GGUF row
/// 2j + s holds HF row s·d/2 + j (s ∈ {0, 1}, j < d/2).
pub fn unpermute_rows(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    let half = rows / heads / 2;
    Ok(t.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// The tensor names [`hf_name`] knows, for errors.
const KNOWN_TENSORS: &str = "token_embd, output_norm, output, blk.N.{attn_norm, attn_q, attn_k, \
    attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}, all `.weight`; rope_freqs \
    (Llama 3.1 RoPE scaling) is not implemented";

/// Every tensor of the file by HF name (→ GGUF name), after checking that each is a known
/// llama tensor of a supported type. Reads no tensor data.
pub fn known_tensors(content: &Content, url: &str) -> Result<BTreeMap<String, String>> {
    let mut names = BTreeMap::new();
    for (name, info) in &content.tensor_infos {
        let hf = hf_name(name)
            .ok_or_else(|| unsupported(url, "tensor", name.as_str(), KNOWN_TENSORS))?;
        if !SUPPORTED_TYPES.contains(&info.ggml_dtype) {
            let list: Vec<&str> = SUPPORTED_TYPES.iter().map(|&t| type_name(t)).collect();
            return Err(unsupported(
                url,
                format!("type of tensor `{name}`"),
                type_name(info.ggml_dtype),
                &list.join(", "),
            ));
        }
        names.insert(hf, name.clone());
    }
    Ok(names)
}

/// Checks that `names` (from [`known_tensors`]) are exactly the tensors of `config`, with its
/// shapes. Reads no tensor data.
pub fn check_tensors(
    content: &Content,
    names: &BTreeMap<String, String>,
    config: &ModelConfig,
    url: &str,
) -> Result<()> {
    let expected: BTreeMap<String, Vec<usize>> = config.tensor_shapes().into_iter().collect();
    for (hf, shape) in &expected {
        let name = names.get(hf).ok_or_else(|| ModelError::MissingTensor {
            url: url.to_string(),
            name: format!("{} ({hf})", gguf_name(hf).unwrap_or_default()),
        })?;
        let found = content.tensor_infos[name].shape.dims();
        if found != shape.as_slice() {
            return Err(ModelError::Shape {
                url: url.to_string(),
                name: name.clone(),
                expected: shape.clone(),
                found: found.to_vec(),
            });
        }
    }
    if let Some((hf, name)) = names.iter().find(|(hf, _)| !expected.contains_key(*hf)) {
        return Err(ModelError::Input(format!(
            "{url}: tensor `{name}` ({hf}) does not belong to a model of llama.block_count = {}",
            config.num_hidden_layers
        )));
    }
    Ok(())
}

/// Dequantises the checked tensors `names` to f32 on `device`, by HF name, Q and K
/// un-permuted.
pub fn read_tensors<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    names: &BTreeMap<String, String>,
    config: &ModelConfig,
    url: &str,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let mut tensors = BTreeMap::new();
    for (hf, name) in names {
        let q = content
            .tensor(reader, name, &Device::Cpu)
            .map_err(|e| ModelError::Gguf {
                url: url.to_string(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        let mut t = q.dequantize(&Device::Cpu)?;
        if name.ends_with(".attn_q.weight") {
            t = unpermute_rows(&t, config.num_attention_heads)?;
        } else if name.ends_with(".attn_k.weight") {
            t = unpermute_rows(&t, config.num_key_value_heads)?;
        }
        tensors.insert(hf.clone(), t.to_device(device)?);
    }
    Ok(tensors)
}
