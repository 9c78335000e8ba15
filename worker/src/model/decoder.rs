//! The Llama-family decoder (Touvron et al. 2023, "Llama 2", §2.1: pre-norm RMSNorm, SwiGLU,
//! RoPE, grouped-query attention — Ainslie et al. 2023): embedding → N × [x + attn(norm(x)),
//! x + mlp(norm(x))] → norm → LM head (tied or untied) or sequence-classification `score` head.
//!
//! Weights are held as `Var`s for a trainable model and as plain `Tensor`s for a frozen one
//! (reference, reward models at scoring time); both run the same train-safe composed ops of
//! `ops`. Inputs are rows of token ids with a validity mask (false = padding); a row's RoPE
//! positions count only its valid tokens, so results do not depend on padding or on which rows
//! share a batch. Must not sample, load or save (see `sample`, `model::hf`).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var, D};

use super::cache::KvCache;
use super::config::{Head, ModelConfig};
use super::error::{ModelError, Result};
use super::{ops, rope};
use crate::kernels::attention_op;
use crate::kernels::packed_op::{self, PackedSlot, PackingBuffers};
use crate::kernels::{rowwise_op, train_op};

struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Where the packed copy of `weight` for decoding is kept (see [`Model::for_decoding`]).
    packed: Option<Arc<PackedSlot>>,
}

impl Linear {
    /// `x · Wᵀ (+ b)`, on the packed copy for inputs of at most `packed_rows` rows.
    fn forward(&self, x: &Tensor, packed_rows: usize) -> candle_core::Result<Tensor> {
        let packed = self.packed.as_deref().map(|slot| (slot, packed_rows));
        ops::linear_with(x, &self.weight, self.bias.as_ref(), packed)
    }
}

/// The outputs of several bias-free projections of the same input `x` [b, t, in] from one
/// packed matmul over their stacked weights (`slot`), each contiguous [b, t, out_i] and the
/// same bits as its own projection; `None` when there is no slot, a projection has a bias or
/// the gate does not admit the operands (x of at most `packed_rows` rows; then run them one by
/// one).
fn stacked<const N: usize>(
    x: &Tensor,
    linears: [&Linear; N],
    slot: &Option<Arc<PackedSlot>>,
    packed_rows: usize,
) -> candle_core::Result<Option<[Tensor; N]>> {
    let Some(slot) = slot else {
        return Ok(None);
    };
    if linears.iter().any(|l| l.bias.is_some()) || !crate::kernels::skinny_op::enabled() {
        return Ok(None);
    }
    let (b, t, width) = x.dims3()?;
    let x2 = x.reshape((b * t, width))?;
    let weights = linears.map(|l| &l.weight);
    let Some(y) =
        crate::kernels::packed_op::try_matmul_wt_stacked(&x2, &weights, slot, packed_rows)?
    else {
        return Ok(None);
    };
    let mut start = 0;
    let mut parts = Vec::with_capacity(N);
    for w in weights {
        let n = w.dim(0)?;
        parts.push(y.narrow(1, start, n)?.contiguous()?.reshape((b, t, n))?);
        start += n;
    }
    Ok(parts.try_into().ok())
}

struct Layer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// Where q, k and v's weights packed as one stack are kept, and gate and up's (decoding:
    /// one call each instead of three and two; see [`Model::for_decoding`]).
    qkv_packed: Option<Arc<PackedSlot>>,
    gate_up_packed: Option<Arc<PackedSlot>>,
}

/// A Llama-family model with its weights.
pub struct Model {
    config: ModelConfig,
    tensors: BTreeMap<String, Tensor>,
    vars: Option<BTreeMap<String, Var>>,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// [vocab, hidden] (the embedding when tied) or `score.weight` [num_labels, hidden].
    head: Tensor,
    inv_freq: Vec<f64>,
    /// Whether forwards take the fused row-wise kernels: the inference ones
    /// (`kernels::rowwise_op`) when nothing is tracked, else the training ones with a backward
    /// (`kernels::train_op`).
    fused_kernels: bool,
    /// Where the packed copy of the LM head for decoding is kept (see [`Model::for_decoding`]).
    head_packed: Option<Arc<PackedSlot>>,
    /// The most input rows the packed copies serve: the skinny kernel's 16 for a frozen
    /// model's own forwards (so a model that only scores never gets packed copies), any number
    /// for a decoding view (its prefill too).
    packed_rows: usize,
    /// Whether the weights can never change: a frozen model's own tensors, not a view of a
    /// trainable model's `Var`s. Such a model keeps its packed copies for its whole life.
    weights_fixed: bool,
    /// A trainable model's packed copies' memory, kept between its decoding views (None: a
    /// frozen model, or `MIRRORPLAY_KEEP_PACKED=0`; see [`Model::for_decoding`]).
    packing_buffers: Option<Arc<PackingBuffers>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("model_type", &self.config.model_type)
            .field("head", &self.config.head)
            .field("num_parameters", &self.config.num_parameters())
            .field("trainable", &self.vars.is_some())
            .finish()
    }
}

/// Where weights came from, for error messages.
const IN_MEMORY: &str = "<in-memory weights>";

impl Model {
    /// Builds a model from named tensors (HF names). Every tensor of `config.tensor_shapes()`
    /// must be present with its shape; extra tensors are an error, except `lm_head.weight` of a
    /// tied model and rotary buffers, which are dropped. `trainable` turns the weights into
    /// `Var`s (copies); otherwise they are used as given (detached).
    pub fn new(
        config: ModelConfig,
        mut tensors: BTreeMap<String, Tensor>,
        trainable: bool,
    ) -> Result<Self> {
        Self::check(&config, &mut tensors, IN_MEMORY)?;
        let (tensors, vars) = if trainable {
            let mut vars = BTreeMap::new();
            let mut ts = BTreeMap::new();
            for (name, t) in tensors {
                let var = Var::from_tensor(&t.detach())?;
                ts.insert(name.clone(), var.as_tensor().clone());
                vars.insert(name, var);
            }
            (ts, Some(vars))
        } else {
            (
                tensors.into_iter().map(|(n, t)| (n, t.detach())).collect(),
                None,
            )
        };
        let fixed = vars.is_none();
        let mut model = Self::assemble(config, tensors, vars);
        if fixed {
            model.weights_fixed = true;
            model.add_packing_slots();
        } else if packed_op::keeps_packed() {
            model.packing_buffers = Some(Arc::default());
        }
        Ok(model)
    }

    /// Wires checked tensors into layers; keeps them as given (graph included).
    fn assemble(
        config: ModelConfig,
        tensors: BTreeMap<String, Tensor>,
        vars: Option<BTreeMap<String, Var>>,
    ) -> Self {
        let get = |name: &str| tensors[name].clone();
        let lin = |prefix: &str, bias: bool| Linear {
            weight: get(&format!("{prefix}.weight")),
            bias: bias.then(|| get(&format!("{prefix}.bias"))),
            packed: None,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                Layer {
                    input_norm: get(&format!("{p}.input_layernorm.weight")),
                    post_attention_norm: get(&format!("{p}.post_attention_layernorm.weight")),
                    q: lin(&format!("{p}.self_attn.q_proj"), config.qkv_bias),
                    k: lin(&format!("{p}.self_attn.k_proj"), config.qkv_bias),
                    v: lin(&format!("{p}.self_attn.v_proj"), config.qkv_bias),
                    o: lin(&format!("{p}.self_attn.o_proj"), config.o_bias),
                    gate: lin(&format!("{p}.mlp.gate_proj"), config.mlp_bias),
                    up: lin(&format!("{p}.mlp.up_proj"), config.mlp_bias),
                    down: lin(&format!("{p}.mlp.down_proj"), config.mlp_bias),
                    qkv_packed: None,
                    gate_up_packed: None,
                }
            })
            .collect();
        let head = match config.head {
            Head::CausalLm if config.tie_word_embeddings => get("model.embed_tokens.weight"),
            Head::CausalLm => get("lm_head.weight"),
            Head::SequenceClassification { .. } => get("score.weight"),
        };
        Model {
            inv_freq: rope::inv_freq(&config),
            fused_kernels: rowwise_op::model_takes_kernels(config.hidden_size),
            head_packed: None,
            packed_rows: crate::kernels::skinny_op::MAX_ROWS,
            weights_fixed: false,
            packing_buffers: None,
            embed: get("model.embed_tokens.weight"),
            norm: get("model.norm.weight"),
            layers,
            head,
            tensors,
            vars,
            config,
        }
    }

    /// Checks names and shapes against the config; `source` names the weights in errors.
    pub(crate) fn check(
        config: &ModelConfig,
        tensors: &mut BTreeMap<String, Tensor>,
        source: &str,
    ) -> Result<()> {
        let expected = config.tensor_shapes();
        for (name, shape) in &expected {
            let t = tensors.get(name).ok_or_else(|| ModelError::MissingTensor {
                url: source.into(),
                name: name.clone(),
            })?;
            if t.dims() != shape.as_slice() {
                return Err(ModelError::Shape {
                    url: source.into(),
                    name: name.clone(),
                    expected: shape.clone(),
                    found: t.dims().to_vec(),
                });
            }
        }
        let wanted: std::collections::BTreeSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        let extra: Vec<String> = tensors
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in extra {
            let droppable = name.ends_with("rotary_emb.inv_freq")
                || (name == "lm_head.weight" && config.tie_word_embeddings);
            if !droppable {
                return Err(ModelError::Input(format!(
                    "{source}: unexpected tensor `{name}` for this config (check attention_bias / mlp_bias / tie_word_embeddings / architectures)"
                )));
            }
            tensors.remove(&name);
        }
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// The dtype of logits, scores and log-probs: f32 for a half-precision model, else its own.
    pub fn logits_dtype(&self) -> DType {
        match self.dtype() {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        }
    }

    /// All weights by HF name (sorted). For a trainable model these are the `Var`s' tensors.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// The trainable parameters by HF name (sorted: the fixed order collectives use), or None
    /// for a frozen model.
    pub fn vars(&self) -> Option<&BTreeMap<String, Var>> {
        self.vars.as_ref()
    }

    /// A frozen deep copy (plain tensors): the reference policy at the start of training.
    pub fn frozen_copy(&self) -> Result<Model> {
        let tensors = self
            .tensors
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.detach().copy()?)))
            .collect::<Result<_>>()?;
        Model::new(self.config.clone(), tensors, false)
    }

    /// A view of the same weights without gradient tracking (no copy: a trainable model's
    /// later updates show through). Samplers run on this so no graph is recorded.
    pub fn detached(&self) -> Result<Model> {
        let tensors = self
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.detach()))
            .collect();
        // Same names and shapes as this (already checked) model: no re-check per step.
        let mut view = Self::assemble(self.config.clone(), tensors, None);
        view.packing_buffers = self.packing_buffers.clone();
        if self.weights_fixed {
            // The same fixed weights: share the packed copies made so far and to come.
            view.weights_fixed = true;
            view.share_packing_slots(self);
        }
        Ok(view)
    }

    /// A [`Model::detached`] view for decoding: its projections and LM head decode on copies
    /// of their weights packed into column panels (`kernels::packed`), made on first use. A
    /// frozen model's copies are its own and live as long as it does (its weights never
    /// change); a trainable model's view gets fresh ones that die with the view, so make a new
    /// view after every update of the weights (each `sample::generate` call does). Their memory
    /// goes back to the trainable model when the view is dropped, and the next view packs into
    /// it (`kernels::packed_op::PackingBuffers`; off with `MIRRORPLAY_KEEP_PACKED=0`). The view's
    /// packed copies take inputs of any number of rows (the prefill too); the model's own
    /// forwards keep the skinny kernel's 16.
    pub fn for_decoding(&self) -> Result<Model> {
        let mut view = self.detached()?;
        if !view.weights_fixed {
            view.add_packing_slots();
        }
        view.packed_rows = usize::MAX;
        Ok(view)
    }

    /// How many of this model's packed-copy slots hold a copy (tests).
    #[cfg(test)]
    pub(crate) fn packed_copies(&self) -> usize {
        let layers = self.layers.iter().flat_map(|l| {
            [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                .map(|linear| linear.packed.clone())
                .into_iter()
                .chain([l.qkv_packed.clone(), l.gate_up_packed.clone()])
        });
        layers
            .chain([self.head_packed.clone()])
            .filter(|slot| slot.as_ref().is_some_and(|s| s.get().is_some()))
            .count()
    }

    /// Elements of packed copies' memory kept for the next decoding view (tests).
    #[cfg(test)]
    pub(crate) fn packed_elements_kept(&self) -> usize {
        self.packing_buffers.as_ref().map_or(0, |b| b.held())
    }

    /// Empty packed-copy slots for every projection and the LM head, packing into the kept
    /// buffers if this model has them.
    fn add_packing_slots(&mut self) {
        let buffers = self.packing_buffers.clone();
        let slot = || {
            Some(Arc::new(match &buffers {
                Some(b) => PackedSlot::recycling(b.clone()),
                None => PackedSlot::default(),
            }))
        };
        for linear in self.linears_mut() {
            linear.packed = slot();
        }
        for layer in &mut self.layers {
            layer.qkv_packed = slot();
            layer.gate_up_packed = slot();
        }
        self.head_packed = slot();
    }

    /// `other`'s slots (the same weights), layer by layer.
    fn share_packing_slots(&mut self, other: &Model) {
        let theirs: Vec<Option<Arc<PackedSlot>>> = other
            .layers
            .iter()
            .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .map(|linear| linear.packed.clone())
            .collect();
        for (linear, slot) in self.linears_mut().zip(theirs) {
            linear.packed = slot;
        }
        for (mine, theirs) in self.layers.iter_mut().zip(&other.layers) {
            mine.qkv_packed = theirs.qkv_packed.clone();
            mine.gate_up_packed = theirs.gate_up_packed.clone();
        }
        self.head_packed = other.head_packed.clone();
    }

    /// Every projection, layer by layer in a fixed order.
    fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.layers.iter_mut().flat_map(|l| {
            [
                &mut l.q,
                &mut l.k,
                &mut l.v,
                &mut l.o,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ]
        })
    }

    /// A trainable copy (fresh `Var`s) of this model.
    pub fn trainable_copy(&self) -> Result<Model> {
        Model::new(self.config.clone(), self.tensors.clone(), true)
    }

    /// The same model with weights converted to `dtype` (e.g. F64 for gradient checks) and
    /// put on `device`; trainable if this one is.
    pub fn to(&self, dtype: DType, device: &Device) -> Result<Model> {
        let tensors = self
            .tensors
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.detach().to_device(device)?.to_dtype(dtype)?)))
            .collect::<Result<_>>()?;
        Model::new(self.config.clone(), tensors, self.vars.is_some())
    }

    /// Mixed precision: the weights cast to `dtype` for one step's forward passes, still
    /// attached to this model's f32 `Var`s, so backward delivers f32 gradients to the master
    /// weights through the cast (Micikevicius et al. 2018, "Mixed Precision Training", §3.1;
    /// bf16 needs no loss scaling). Casting is part of the graph, so make a new one after every
    /// optimizer step. Logits and log-probs come out in f32 (see `lm_logits`). With `dtype`
    /// equal to this model's, the weights are shared as they are.
    pub fn for_compute(&self, dtype: DType) -> Result<Model> {
        let tensors = self
            .tensors
            .iter()
            .map(|(n, t)| {
                let t = if t.dtype() == dtype {
                    t.clone()
                } else {
                    t.to_dtype(dtype)?
                };
                Ok((n.clone(), t))
            })
            .collect::<Result<_>>()?;
        Ok(Self::assemble(self.config.clone(), tensors, None))
    }

    /// Runs the decoder on `ids` (b rows of t tokens; `valid[r][i] == false` marks padding),
    /// appending to `cache`, and returns the final-norm hidden states [b, t, hidden].
    /// Attention is causal over the cache plus the new tokens and never looks at padding.
    pub fn forward_hidden(
        &self,
        ids: &[Vec<u32>],
        valid: &[Vec<bool>],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, t) = check_rect(ids, valid)?;
        if let Some(&bad) = ids
            .iter()
            .flatten()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        cache.ensure(b, self.config.num_hidden_layers)?;
        let positions = cache.advance(valid);
        if let Some(w) = self.config.sliding_window {
            if positions.iter().flatten().any(|&p| p as usize >= w) {
                return Err(ModelError::Input(format!("position beyond sliding_window = {w}: sliding-window attention is not implemented")));
            }
        }
        let (dev, dtype) = (self.device().clone(), self.dtype());
        let (cos, sin) = rope::cos_sin(&self.inv_freq, &positions, dtype, &dev)?;
        let mask = cache.attention_mask(t, dtype, &dev)?; // [b, 1, 1, t, s]
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let mut x = self
            .embed
            .index_select(&Tensor::from_vec(flat, b * t, &dev)?, 0)?
            .reshape((b, t, self.config.hidden_size))?;
        let rows = self.packed_rows;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = self.rms_norm(&x, &layer.input_norm)?;
            let att = self.attention(layer, &h, &cos, &sin, &mask, cache, l)?;
            x = (x + att)?;
            let h = self.rms_norm(&x, &layer.post_attention_norm)?;
            let [gate, up] =
                match stacked(&h, [&layer.gate, &layer.up], &layer.gate_up_packed, rows)? {
                    Some(gate_up) => gate_up,
                    None => [layer.gate.forward(&h, rows)?, layer.up.forward(&h, rows)?],
                };
            let mlp = layer.down.forward(&self.swiglu(&gate, &up)?, rows)?;
            x = (x + mlp)?;
        }
        self.rms_norm(&x, &self.norm)
    }

    // The row-wise steps of the forward, where the model takes the fused kernels (f32 on the
    // CPU): the inference kernels when nothing is tracked by autograd (sampling and scoring,
    // docs/architecture.md#decoding-kernels), the training kernels with their backward when
    // something is (docs/architecture.md#training-kernels); else the composed ops.

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        if self.fused_kernels {
            if let Some(y) = rowwise_op::try_rms_norm(x, weight, eps)? {
                return Ok(y);
            }
            if let Some(y) = train_op::try_rms_norm(x, weight, eps)? {
                return Ok(y);
            }
        }
        Ok(ops::rms_norm(x, weight, eps)?)
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if self.fused_kernels {
            if let Some(y) = rowwise_op::try_rope(x, cos, sin)? {
                return Ok(y);
            }
            if let Some(y) = train_op::try_rope(x, cos, sin)? {
                return Ok(y);
            }
        }
        Ok(ops::rope(x, cos, sin)?)
    }

    fn masked_softmax(&self, scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
        if self.fused_kernels {
            if let Some(y) = rowwise_op::try_masked_softmax(scores, mask)? {
                return Ok(y);
            }
            if let Some(y) = train_op::try_masked_softmax(scores, mask)? {
                return Ok(y);
            }
        }
        Ok(ops::softmax(&scores.broadcast_add(mask)?)?)
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if self.fused_kernels {
            if let Some(y) = rowwise_op::try_swiglu(gate, up)? {
                return Ok(y);
            }
            if let Some(y) = train_op::try_swiglu(gate, up)? {
                return Ok(y);
            }
        }
        Ok(ops::swiglu(gate, up)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
        l: usize,
    ) -> Result<Tensor> {
        let c = &self.config;
        let rows = self.packed_rows;
        let (b, t, _) = h.dims3()?;
        let (nh, kvh, d, g) = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.group_size(),
        );
        let heads = |x: Tensor, n: usize| x.reshape((b, t, n, d))?.transpose(1, 2);
        let [q, k, v] = match stacked(h, [&layer.q, &layer.k, &layer.v], &layer.qkv_packed, rows)? {
            Some(qkv) => qkv,
            None => [
                layer.q.forward(h, rows)?,
                layer.k.forward(h, rows)?,
                layer.v.forward(h, rows)?,
            ],
        };
        let q = self.rope(&heads(q, nh)?, cos, sin)?;
        let k = self.rope(&heads(k, kvh)?, cos, sin)?;
        let v = heads(v, kvh)?.contiguous()?;
        let (k, v) = cache.append(l, k.contiguous()?, v)?; // [b, kvh, s, d]
        if self.fused_kernels {
            let q = q.contiguous()?;
            if let Some(out) =
                attention_op::try_attention(&q, &k, &v, mask, 1.0 / (d as f64).sqrt())?
            {
                return Ok(layer.o.forward(&out, rows)?);
            }
        }
        let s = k.dim(2)?;
        // Query heads sharing a KV head are stacked along the rows: [b, kvh, g·t, d].
        let q = (q.contiguous()?.reshape((b, kvh, g * t, d))? * (1.0 / (d as f64).sqrt()))?;
        // Kᵀ as a strided view: the gemm reads the cache in place (no per-token copy).
        let scores = q.matmul(&k.transpose(2, 3)?)?.reshape((b, kvh, g, t, s))?;
        let probs = self
            .masked_softmax(&scores, mask)?
            .reshape((b, kvh, g * t, s))?;
        let out = probs
            .matmul(&v)?
            .reshape((b, nh, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, nh * d))?;
        Ok(layer.o.forward(&out, rows)?)
    }

    /// LM-head logits [.., vocab] of hidden states [.., hidden]. Errors for a classifier.
    /// Half-precision (bf16/f16) models return f32 logits, so log-softmax, losses and
    /// log-prob metrics are always computed in at least f32.
    pub fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match self.config.head {
            Head::CausalLm => Ok(upcast(ops::linear_with(
                hidden,
                &self.head,
                None,
                self.head_packed
                    .as_deref()
                    .map(|slot| (slot, self.packed_rows)),
            )?)?),
            Head::SequenceClassification { .. } => Err(ModelError::Input(
                "lm_logits called on a sequence-classification model".into(),
            )),
        }
    }

    /// Logits [b, t, vocab] of a whole batch without a cache (convenience for tests/scoring).
    pub fn logits(&self, ids: &[Vec<u32>], valid: &[Vec<bool>]) -> Result<Tensor> {
        let hidden = self.forward_hidden(ids, valid, &mut KvCache::new())?;
        self.lm_logits(&hidden)
    }

    /// Sequence-classification scores [b, num_labels], read at each row's last valid token
    /// (transformers' `*ForSequenceClassification` pooling). Errors for a causal LM.
    pub fn classify(&self, ids: &[Vec<u32>], valid: &[Vec<bool>]) -> Result<Tensor> {
        if self.config.head == Head::CausalLm {
            return Err(ModelError::Input(
                "classify called on a causal LM (no `score` head)".into(),
            ));
        }
        let pooled = self.pooled(ids, valid)?;
        Ok(upcast(ops::linear(&pooled, &self.head, None)?)?)
    }

    /// The final hidden state [b, hidden] at each row's last valid token: what a
    /// sequence-classification head reads (so a shared backbone's features can feed several
    /// heads, docs/algorithms.md §3).
    pub fn pooled(&self, ids: &[Vec<u32>], valid: &[Vec<bool>]) -> Result<Tensor> {
        let hidden = self.forward_hidden(ids, valid, &mut KvCache::new())?;
        let (b, t, hs) = hidden.dims3()?;
        let mut last = Vec::with_capacity(b);
        for (r, row) in valid.iter().enumerate() {
            let i = row
                .iter()
                .rposition(|&v| v)
                .ok_or_else(|| ModelError::Input(format!("row {r} has no valid token")))?;
            last.push((r * t + i) as u32);
        }
        Ok(hidden
            .reshape((b * t, hs))?
            .index_select(&Tensor::new(last, hidden.device())?, 0)?)
    }
}

/// f16/bf16 → f32 (with backward); other dtypes unchanged.
fn upcast(t: Tensor) -> candle_core::Result<Tensor> {
    match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
        _ => Ok(t),
    }
}

/// Checks that ids and valid are rectangular and agree; returns (b, t).
fn check_rect(ids: &[Vec<u32>], valid: &[Vec<bool>]) -> Result<(usize, usize)> {
    let b = ids.len();
    let t = ids.first().map_or(0, Vec::len);
    if b == 0 || t == 0 {
        return Err(ModelError::Input("empty batch".into()));
    }
    if valid.len() != b
        || ids
            .iter()
            .zip(valid)
            .any(|(i, v)| i.len() != t || v.len() != t)
    {
        return Err(ModelError::Input(format!(
            "ids and valid must both be {b} rows of {t} tokens"
        )));
    }
    Ok((b, t))
}

/// Log-softmax of logits along the last dimension (re-exported for samplers and losses).
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(ops::log_softmax(logits)?)
}

/// Picks `logp[.., i, ids[i]]` along the last dimension: [b, t, v] × [b, t] → [b, t].
pub fn gather_last(logp: &Tensor, ids: &[Vec<u32>]) -> Result<Tensor> {
    let (b, t, _) = logp.dims3()?;
    let flat: Vec<u32> = ids.iter().flatten().copied().collect();
    let idx = Tensor::from_vec(flat, (b, t, 1), logp.device())?;
    Ok(logp
        .contiguous()?
        .gather(&idx, D::Minus1)?
        .squeeze(D::Minus1)?)
}
