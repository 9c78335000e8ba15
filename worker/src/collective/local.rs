//! One rank alone: every collective is the identity.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::{Collective, CollectiveError};

#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, _: &mut BTreeMap<String, Tensor>) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, _: &mut [f64]) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn broadcast(&mut self, _: &mut BTreeMap<String, Tensor>) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        Ok(())
    }
}
