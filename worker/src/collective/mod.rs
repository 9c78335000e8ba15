//! Collectives across the ranks of a training gang (README, "Data parallelism"): the sums that
//! make W data-parallel ranks compute the gradient of one global batch, the broadcast that
//! starts them bit-identical, and a barrier.
//!
//! Implementations: [`Local`] (world size 1), [`tcp_ring::TcpRing`] (CPUs, a ring over TCP)
//! and, with the `nccl` feature, `nccl::Nccl` (GPUs). Every call on a multi-rank collective
//! has a timeout and honours a cancel flag, so a rank whose peer died fails its task instead
//! of hanging. Every rank must make the same calls with tensors of the same names, shapes and
//! dtypes (maps iterate in name order, so buckets line up on every rank).
//!
//! Must not know about models, losses, optimizers or the coordinator.

mod buckets;
pub mod local;
#[cfg(feature = "nccl")]
pub mod nccl;
mod ring_connect;
mod ring_link;
mod ring_ops;
pub mod tcp_ring;

#[cfg(test)]
mod ring_tests;

use std::collections::BTreeMap;
use std::time::Duration;

use candle_core::Tensor;

pub use local::Local;
pub use tcp_ring::{RingListener, RingOptions, TcpRing};

/// Why a collective call failed. Every variant means the gang is broken for this attempt: the
/// task fails, and the coordinator re-forms the gang.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error(
        "rank {rank}: {op} timed out after {timeout:?} (peer rank {peer} sent or took nothing)"
    )]
    Timeout {
        rank: usize,
        peer: usize,
        op: &'static str,
        timeout: Duration,
    },
    #[error("rank {rank}: link to rank {peer} failed during {op}: {source}")]
    Peer {
        rank: usize,
        peer: usize,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("rank {rank}: {op} cancelled (the gang was ended)")]
    Cancelled { rank: usize, op: &'static str },
    /// The ranks disagree (tensor names, shapes, dtypes, group tag): a bug or a stale peer.
    #[error("rank {rank}: {reason}")]
    Mismatch { rank: usize, reason: String },
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    /// The device library (NCCL, CUDA) reported an error.
    #[error("rank {rank}: {op} failed in the device library: {reason}")]
    Backend {
        rank: usize,
        op: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A group of `world_size` ranks that reduce together.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;

    /// Replaces every tensor by its sum over the ranks, in place. Tensors are f32, visited in
    /// name order and flattened into buckets; afterwards every rank holds the same bits.
    fn all_reduce_sum(
        &mut self,
        tensors: &mut BTreeMap<String, Tensor>,
    ) -> Result<(), CollectiveError>;

    /// Sums a short vector of scalars (counts, metric sums) over the ranks; every rank gets
    /// the same bits (summed in rank order).
    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError>;

    /// Replaces every tensor by rank 0's (same names, shapes and dtypes on every rank).
    fn broadcast(&mut self, tensors: &mut BTreeMap<String, Tensor>) -> Result<(), CollectiveError>;

    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), CollectiveError>;
}

/// The all-reduce sums f32 tensors only (gradients are f32 whatever the compute dtype); any
/// other dtype is a mismatch naming the tensor.
pub(crate) fn require_f32(
    rank: usize,
    name: &str,
    t: &candle_core::Tensor,
) -> Result<(), CollectiveError> {
    if t.dtype() == candle_core::DType::F32 {
        Ok(())
    } else {
        Err(CollectiveError::Mismatch {
            rank,
            reason: format!(
                "tensor `{name}` is {:?}; the all-reduce takes f32",
                t.dtype()
            ),
        })
    }
}
