//! Per-model key/value cache for incremental decoding, with the bookkeeping the attention mask
//! and RoPE positions need: which cached keys are padding, and each row's next position.
//! One cache belongs to one model and one batch; it must not be shared between models (the
//! geometric mixture keeps one for the policy and one for the reference).
//!
//! Decoding writes each token's keys and values in place into per-layer buffers allocated once
//! for [`KvCache::with_capacity`] tokens (grown by doubling if a row outlives the estimate), and
//! hands attention views of the filled part: no per-token reallocation or copy of the cache
//! (docs/architecture.md#decoding-kernels). Keys and values that autograd tracks (a training
//! forward) are kept as given and concatenated, since an in-place write has no backward.

use candle_core::{DType, Device, Tensor};

use super::error::{ModelError, Result};

/// One layer's keys and values.
enum LayerKv {
    /// Tensors [b, kv_heads, s, head_dim] exactly as computed (possibly tracked by autograd).
    Plain(Tensor, Tensor),
    /// Buffers [b, kv_heads, capacity, head_dim] of which the first `len` positions are filled.
    Buffered { k: Tensor, v: Tensor, len: usize },
}

impl LayerKv {
    /// Views of the filled part.
    fn filled(&self) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            LayerKv::Plain(k, v) => (k.clone(), v.clone()),
            LayerKv::Buffered { k, v, len } => (k.narrow(2, 0, *len)?, v.narrow(2, 0, *len)?),
        })
    }
}

/// Keys and values of every layer ([b, kv_heads, s, head_dim]) for the tokens seen so far.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    /// Tokens per row to allocate buffers for (0: no estimate; grown on demand).
    capacity: usize,
    /// key_valid[r][j]: whether cached token j of row r is real (not padding).
    key_valid: Vec<Vec<bool>>,
    /// Position the next valid token of each row gets (= number of valid tokens so far).
    next_position: Vec<u32>,
    /// Tokens cached before the current forward call (its queries start here).
    start: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache that allocates room for `tokens` per row (prompt plus new tokens) at once, so
    /// decoding up to that length never reallocates.
    pub fn with_capacity(tokens: usize) -> Self {
        Self {
            capacity: tokens,
            ..Self::default()
        }
    }

    /// Tokens cached per row (padding included).
    pub fn len(&self) -> usize {
        self.key_valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of valid tokens per row so far.
    pub fn positions(&self) -> &[u32] {
        &self.next_position
    }

    pub(crate) fn ensure(&mut self, batch: usize, num_layers: usize) -> Result<()> {
        if self.key_valid.is_empty() {
            self.key_valid = vec![Vec::new(); batch];
            self.next_position = vec![0; batch];
            self.layers = (0..num_layers).map(|_| None).collect();
        } else if self.key_valid.len() != batch {
            return Err(ModelError::Input(format!(
                "cache holds {} rows but the input has {batch}",
                self.key_valid.len()
            )));
        }
        Ok(())
    }

    /// Records the new tokens' validity and returns their RoPE positions [b][t] (a padding
    /// token gets the position the next valid token will have; its output is never used).
    pub(crate) fn advance(&mut self, valid: &[Vec<bool>]) -> Vec<Vec<u32>> {
        self.start = self.len();
        let mut positions = Vec::with_capacity(valid.len());
        for (r, row) in valid.iter().enumerate() {
            let mut p = self.next_position[r];
            positions.push(
                row.iter()
                    .map(|&v| {
                        let here = p;
                        p += v as u32;
                        here
                    })
                    .collect(),
            );
            self.next_position[r] = p;
            self.key_valid[r].extend_from_slice(row);
        }
        positions
    }

    /// Additive mask [b, 1, 1, t, s] for the last `t` tokens: 0 where query i may attend key j
    /// (j ≤ i in sequence order and j is valid), −∞ elsewhere. A query always sees itself, so
    /// a padding query's softmax stays finite (its output is discarded).
    pub(crate) fn attention_mask(&self, t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let s = self.len();
        let b = self.key_valid.len();
        let mut m = vec![0f32; b * t * s];
        for (r, keys) in self.key_valid.iter().enumerate() {
            for i in 0..t {
                let q = self.start + i;
                let row = &mut m[(r * t + i) * s..(r * t + i + 1) * s];
                for (j, slot) in row.iter_mut().enumerate() {
                    if !(j == q || (j < q && keys[j])) {
                        *slot = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(m, (b, 1, 1, t, s), device)?.to_dtype(dtype)?)
    }

    /// Keeps only the given rows (in that order), e.g. to drop finished rows while sampling.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        if rows.len() == self.key_valid.len() && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        let batch = self.key_valid.len();
        if let Some(&bad) = rows.iter().find(|&&r| r >= batch) {
            return Err(ModelError::Input(format!(
                "row {bad} is not in a cache of {batch} rows"
            )));
        }
        self.key_valid = rows.iter().map(|&r| self.key_valid[r].clone()).collect();
        self.next_position = rows.iter().map(|&r| self.next_position[r]).collect();
        if rows.is_empty() {
            self.layers.iter_mut().for_each(|l| *l = None);
            return Ok(());
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        for layer in self.layers.iter_mut().flatten() {
            let (k, v) = match layer {
                LayerKv::Plain(k, v) | LayerKv::Buffered { k, v, .. } => (k, v),
            };
            let idx = Tensor::from_slice(&idx, idx.len(), k.device())?;
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        Ok(())
    }

    /// Appends this call's keys/values of layer `l` ([b, kv_heads, t, head_dim], contiguous)
    /// and returns views of all of them so far.
    pub(crate) fn append(&mut self, l: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let tracked = k.track_op() || v.track_op();
        let layer = match self.layers[l].take() {
            None if tracked || self.capacity == 0 => LayerKv::Plain(k, v),
            None => self.buffered(None, &k, &v)?,
            Some(LayerKv::Plain(pk, pv)) if tracked || pk.track_op() || pv.track_op() => {
                LayerKv::Plain(Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?)
            }
            Some(LayerKv::Plain(pk, pv)) => {
                let len = pk.dim(2)?;
                self.buffered(Some((pk.contiguous()?, pv.contiguous()?, len)), &k, &v)?
            }
            Some(LayerKv::Buffered { k: bk, v: bv, len }) => {
                self.buffered(Some((bk, bv, len)), &k, &v)?
            }
        };
        let out = layer.filled()?;
        self.layers[l] = Some(layer);
        Ok(out)
    }

    /// Writes k, v after the `len` filled positions of `previous` (buffers or plain contiguous
    /// tensors of `len` positions), first moving them to a larger buffer if they lack room.
    fn buffered(
        &self,
        previous: Option<(Tensor, Tensor, usize)>,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<LayerKv> {
        let t = k.dim(2)?;
        let (bk, bv, len) = match previous {
            Some((bk, bv, len)) if bk.dim(2)? >= len + t => (bk, bv, len),
            previous => {
                let len = previous.as_ref().map_or(0, |p| p.2);
                let old_room = previous.as_ref().map_or(Ok(0), |p| p.0.dim(2))?;
                let room = (len + t).max(self.capacity).max(2 * old_room);
                let (b, heads, _, d) = k.dims4()?;
                let nk = Tensor::zeros((b, heads, room, d), k.dtype(), k.device())?;
                let nv = Tensor::zeros((b, heads, room, d), v.dtype(), v.device())?;
                if let Some((pk, pv, _)) = previous {
                    nk.slice_set(&pk, 2, 0)?;
                    nv.slice_set(&pv, 2, 0)?;
                }
                (nk, nv, len)
            }
        };
        bk.slice_set(k, 2, len)?;
        bv.slice_set(v, 2, len)?;
        Ok(LayerKv::Buffered {
            k: bk,
            v: bv,
            len: len + t,
        })
    }
}
