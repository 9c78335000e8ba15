//! The optimizer side of a training step: gradients in a fixed name-sorted order, gradient
//! accumulation, global-norm clipping, learning-rate schedules and AdamW, whose whole state
//! saves to and loads from one safetensors file and continues bit-identically.
//!
//! It does not compute gradients (candle's `backward` does) nor reduce them across workers (the
//! collective does, on [`Gradients`] in name order); it never touches the model's weights on
//! disk (the checkpointer does).

mod adamw;
mod adamw_fused;
mod grads;
mod schedule;

use std::collections::BTreeMap;

pub use adamw::{AdamW, AdamWConfig, StepStats};
pub use grads::{GradAccumulator, Gradients};
pub use schedule::{Decay, Schedule};

/// Trainable parameters by name; the BTreeMap fixes the order every rank iterates in.
pub type Params = BTreeMap<String, candle_core::Var>;

/// Errors of the optimizer: tensor arithmetic, storage, or a state that does not fit.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    #[error("parameter `{name}`: {reason}")]
    Param { name: String, reason: String },
    #[error("{url}: optimizer state: {reason}")]
    BadState { url: String, reason: String },
}

pub type Result<T, E = OptimError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
