//! Collectives across the ranks of a training gang (DESIGN.md "Runtime model"). The training
//! step calls [`Collective::all_reduce_mean`] once per optimizer step on the gradients in name
//! order; today the only implementation is [`Local`] (world size 1), and the TCP ring and NCCL
//! implementations plug in behind the same trait without touching the loop.
//! Must not know about models, losses or the coordinator.

use crate::optim::{Gradients, OptimError};

/// A group of `world_size` ranks that reduce gradients together.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Replaces every gradient by its mean over the ranks, in name order (the bucket order).
    fn all_reduce_mean(&mut self, grads: &mut Gradients) -> Result<(), OptimError>;
}

/// One rank alone: the all-reduce is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_mean(&mut self, _grads: &mut Gradients) -> Result<(), OptimError> {
        Ok(())
    }
}
