//! Per-model key/value cache for incremental decoding, with the bookkeeping the attention mask
//! and RoPE positions need: which cached keys are padding, and each row's next position.
//! One cache belongs to one model and one batch; it must not be shared between models (the
//! geometric mixture keeps one for the policy and one for the reference).

use candle_core::{DType, Device, Tensor};

use super::error::{ModelError, Result};

/// Keys and values of every layer ([b, kv_heads, s, head_dim]) for the tokens seen so far.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
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
        for layer in self.layers.iter_mut().flatten() {
            let idx = Tensor::from_vec(
                rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                rows.len(),
                layer.0.device(),
            )?;
            *layer = (
                layer.0.index_select(&idx, 0)?,
                layer.1.index_select(&idx, 0)?,
            );
        }
        Ok(())
    }

    /// Appends this call's keys/values of layer `l` and returns the full ones.
    pub(crate) fn append(&mut self, l: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let kv = match self.layers[l].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        self.layers[l] = Some(kv.clone());
        Ok(kv)
    }
}
