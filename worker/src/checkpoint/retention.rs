//! Retention of committed checkpoints (docs/checkpoints.md): after step N commits, keep the
//! `keep_last` newest committed steps and every step divisible by `keep_every`; delete the other
//! committed steps older than N (manifest first, so a half-deleted directory is never valid)
//! and uncommitted (torn) directories older than N. Runs only after a newer checkpoint is
//! committed; never deletes N or anything newer.

use super::{delete_step_dir, list_steps, step_dir_name, Result, MANIFEST};
use crate::io::Location;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep this many newest committed checkpoints (0: keep all).
    pub keep_last: usize,
    /// Also keep every step divisible by this (0: none).
    pub keep_every: u64,
}

impl Retention {
    /// The committed steps (ascending, the newest last) that the rules delete.
    pub fn to_delete(&self, committed: &[u64]) -> Vec<u64> {
        if self.keep_last == 0 || committed.len() <= self.keep_last {
            return vec![];
        }
        let newest_kept = committed.len() - self.keep_last;
        committed[..newest_kept]
            .iter()
            .copied()
            .filter(|&s| !(self.keep_every > 0 && s.is_multiple_of(self.keep_every)))
            .collect()
    }
}

/// Applies `retention` under `root` (`OUTPUT/checkpoints`) once step `newest` is committed;
/// returns the deleted steps.
pub async fn apply(root: &Location, newest: u64, retention: Retention) -> Result<Vec<u64>> {
    let steps = list_steps(root).await?;
    let mut committed = Vec::new();
    let mut torn = Vec::new();
    for (step, objects) in steps.range(..=newest) {
        if objects.iter().any(|o| o == MANIFEST) {
            committed.push(*step);
        } else if *step < newest {
            torn.push(*step);
        }
    }
    let mut deleted = Vec::new();
    for step in retention.to_delete(&committed).into_iter().chain(torn) {
        delete_step_dir(&root.join(&step_dir_name(step))).await?;
        deleted.push(step);
    }
    deleted.sort_unstable();
    Ok(deleted)
}
