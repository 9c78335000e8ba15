//! The synchronous part of a checkpoint: a host copy of everything it will hold, taken between
//! two training steps so that the next step may change the weights while the copy uploads.
//! Weights (`Var`s, updated in place by AdamW) are copied to host `Vec<f32>`s; AdamW's moments
//! are replaced, not mutated, by each step, so on the CPU they are kept as cheap tensor clones
//! and converted while uploading. Must not do I/O (see `writer`).

use std::collections::BTreeMap;

use bytes::Bytes;
use candle_core::{DType, Device, Tensor};

use super::Result;
use crate::io::dtype::encode_f32_owned;
use crate::io::safetensors::{pt_metadata, TensorLayout};
use crate::io::Dtype;
use crate::model::save::config_file;
use crate::model::Model;
use crate::optim::AdamW;

/// One f32 tensor held on the host.
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<u64>,
    data: HostData,
}

enum HostData {
    Values(Vec<f32>),
    /// An immutable CPU tensor (shares storage with the optimizer; never mutated in place).
    Cpu(Tensor),
}

impl HostTensor {
    fn copy(name: &str, t: &Tensor) -> Result<Self> {
        let shape = t.dims().iter().map(|&d| d as u64).collect();
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(HostTensor {
            name: name.to_string(),
            shape,
            data: HostData::Values(values),
        })
    }

    /// A clone when `t` is an immutable f32 CPU tensor, else a host copy.
    fn share(name: &str, t: &Tensor) -> Result<Self> {
        if matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 {
            return Ok(HostTensor {
                name: name.to_string(),
                shape: t.dims().iter().map(|&d| d as u64).collect(),
                data: HostData::Cpu(t.clone()),
            });
        }
        Self::copy(name, t)
    }

    pub fn layout(&self) -> TensorLayout {
        TensorLayout {
            name: self.name.clone(),
            dtype: Dtype::F32,
            shape: self.shape.clone(),
        }
    }

    pub fn byte_len(&self) -> u64 {
        self.shape.iter().product::<u64>() * 4
    }

    /// The little-endian f32 bytes, without a copy for host values.
    pub fn into_bytes(self) -> Result<Bytes> {
        let values = match self.data {
            HostData::Values(v) => v,
            HostData::Cpu(t) => t.flatten_all()?.to_vec1::<f32>()?,
        };
        Ok(encode_f32_owned(Dtype::F32, values))
    }
}

/// What one checkpoint holds, on the host.
pub struct Snapshot {
    /// `config.json` as `model::save_model` writes it for the f32 weights a checkpoint holds.
    pub config_json: Bytes,
    /// Tokenizer and generation files, written verbatim.
    pub aux_files: BTreeMap<String, Bytes>,
    /// The model's tensors in name order (the layout of `model.safetensors`).
    pub weights: Vec<HostTensor>,
    pub weights_metadata: BTreeMap<String, String>,
    /// AdamW's state tensors in `AdamW::save`'s order.
    pub optimizer: Vec<HostTensor>,
    pub optimizer_metadata: BTreeMap<String, String>,
    /// Optimizer steps taken.
    pub optimizer_step: u64,
    /// config.json's `torch_dtype`/`dtype` before training, for `state.json`.
    pub model_dtype: Option<String>,
}

impl Snapshot {
    /// Copies `model`'s weights and `opt`'s state to the host (the only part of a checkpoint
    /// that the training step waits for).
    pub fn take(model: &Model, aux_files: &BTreeMap<String, Bytes>, opt: &AdamW) -> Result<Self> {
        let weights = model
            .tensors()
            .iter()
            .map(|(name, t)| HostTensor::copy(name, t))
            .collect::<Result<Vec<_>>>()?;
        let optimizer = opt
            .state_tensors()
            .iter()
            .map(|(name, t)| HostTensor::share(name, t))
            .collect::<Result<Vec<_>>>()?;
        let raw = &model.config().raw;
        let model_dtype = ["torch_dtype", "dtype"]
            .iter()
            .find_map(|k| raw.get(*k).and_then(|v| v.as_str()).map(str::to_string));
        Ok(Snapshot {
            config_json: config_file(model.config(), Dtype::F32),
            aux_files: aux_files.clone(),
            weights,
            weights_metadata: pt_metadata(),
            optimizer,
            optimizer_metadata: opt.state_metadata(),
            optimizer_step: opt.steps_taken(),
            model_dtype,
        })
    }

    /// Bytes of tensor data (weights and optimizer state).
    pub fn tensor_bytes(&self) -> u64 {
        self.weights
            .iter()
            .chain(&self.optimizer)
            .map(HostTensor::byte_len)
            .sum()
    }
}
