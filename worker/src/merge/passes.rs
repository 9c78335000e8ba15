//! The statistics passes of every method, as a state machine per unit with no I/O: the
//! coordinator side ([`UnitPlan`]) says what the next sweep computes ([`Sweep`], small and plain,
//! sent to workers) and absorbs the results; the worker side ([`chunk_stats`], [`write_chunk`],
//! [`merge_local`]) computes one chunk. [`reference::merge_in_memory`](super::reference) drives
//! exactly this loop; a distributed driver does the same with task messages in between.
//!
//! Sweeps per unit (each reads every chunk of the unit once):
//!
//! | method            | statistics sweeps                                                   | then  |
//! |-------------------|---------------------------------------------------------------------|-------|
//! | `task_arithmetic` | –                                                                   | write |
//! | `dare_*`          | `rescale = l1` only: L1 partials (unit = tensor)                    | write |
//! | `ties`            | count \|τ\| high, count \|τ\| low; census only if a tie is cut     | write |
//! | `pcb`             | count \|τ\| high, \|τ\| low (lo, hi); count β high (+max), β low (t)| write |
//!
//! docs/algorithms.md §5 counts PCB's statistics as "two sweeps" (|τ|, then β): with the two-level
//! radix each is two counting sweeps, so PCB reads its inputs five times in all.
//!
//! How results combine: [`Counts`] add (any order, any grouping: workers may merge the counts of
//! their chunks before sending); census counts and L1 partials are kept **per chunk** and
//! combined by the coordinator in the unit's chunk order (census: prefix sums; L1: f64 sums), so
//! the output does not depend on how chunks were spread over workers.
//!
//! Units are independent: in per-tensor scope, a tensor that fits one chunk is merged in one go
//! by [`merge_local`]; a larger one can run its sweeps on one worker (re-reading its chunks) or
//! across workers, with the same result.

use super::dare::{self, L1Partial, Scale};
use super::pcb::{self, Clip, Ramp};
use super::radix::{Counts, NanAt, Round, Selection};
use super::ties::{self, Keep, TopK};
use super::{task_arithmetic, Chunk, MergeError, Method, Rescale, Result};

/// What one chunk computes for the values counted in a [`Sweep::Count`].
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// |τ_i| (TIES thresholds, PCB lo/hi).
    AbsTau,
    /// PCB's β_i, which needs every task's clip.
    PcbScores(Vec<Clip>),
}

/// The final statistics of a unit: all a chunk of the write sweep needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Finals {
    TaskArithmetic,
    /// Per task (`None`: keep all); `equal_before[chunk][task]` when a census ran, else empty.
    Ties {
        topk: Vec<Option<TopK>>,
        equal_before: Vec<Vec<u64>>,
    },
    /// Per task, for this unit's tensor.
    Dare {
        scales: Vec<Scale>,
    },
    Pcb {
        clips: Vec<Clip>,
        ramps: Vec<Ramp>,
    },
}

/// What every chunk of a unit computes in the next sweep.
#[derive(Debug, Clone, PartialEq)]
pub enum Sweep {
    /// Count `values` of each task that has a round (`None`: this task needs no count).
    Count {
        values: Values,
        rounds: Vec<Option<Round>>,
    },
    /// TIES census: per task, count the entries with |τ_i| equal to this threshold (`None`: skip).
    Census(Vec<Option<f32>>),
    /// DARE `l1`: the chunk's [`L1Partial`] per task.
    DareL1,
    /// Write the output.
    Write(Finals),
}

/// One chunk's result for a statistics sweep.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkStats {
    Counts(Vec<Option<Counts>>),
    Census(Vec<u64>),
    L1(Vec<L1Partial>),
}

impl ChunkStats {
    /// Worker side: folds another chunk's counts into these (counts only; census and L1 results
    /// stay per chunk).
    pub fn merge_counts(&mut self, other: &ChunkStats) -> Result<()> {
        match (self, other) {
            (ChunkStats::Counts(a), ChunkStats::Counts(b)) if a.len() == b.len() => {
                for (a, b) in a.iter_mut().zip(b) {
                    match (a, b) {
                        (Some(a), Some(b)) => a.merge(b)?,
                        (None, None) => {}
                        _ => return Err(MergeError::Counts("counts of different sweeps".into())),
                    }
                }
                Ok(())
            }
            _ => Err(MergeError::Counts(
                "only counts of the same sweep merge".into(),
            )),
        }
    }
}

/// The results of one statistics sweep, gathered by the coordinator.
#[derive(Debug, Clone)]
pub struct SweepStats {
    counts: Vec<Option<Counts>>,
    /// Census or L1 results by chunk index (combined in chunk order).
    per_chunk: std::collections::BTreeMap<usize, ChunkStats>,
}

impl SweepStats {
    /// Empty results for `sweep`.
    pub fn new(sweep: &Sweep) -> SweepStats {
        SweepStats {
            counts: empty_counts(sweep),
            per_chunk: Default::default(),
        }
    }

    /// Adds the result of chunk `chunk` (its index in the unit's flat order). Counts may also come
    /// pre-merged over several chunks (any index of theirs will do); census and L1 results must
    /// be one per chunk.
    pub fn add(&mut self, chunk: usize, stats: ChunkStats) -> Result<()> {
        match stats {
            ChunkStats::Counts(c) => {
                let mut mine = ChunkStats::Counts(std::mem::take(&mut self.counts));
                let merged = mine.merge_counts(&ChunkStats::Counts(c));
                let ChunkStats::Counts(mine) = mine else {
                    unreachable!()
                };
                self.counts = mine;
                merged?;
            }
            other => {
                if self.per_chunk.insert(chunk, other).is_some() {
                    return Err(MergeError::Counts(format!("two results for chunk {chunk}")));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum State {
    PcbClip(Vec<Selection>),
    PcbRamp(Vec<Clip>, Vec<Selection>),
    TiesThreshold(Vec<Option<u64>>, Vec<Option<Selection>>),
    TiesCensus(Vec<Option<TopK>>),
    DareL1,
    Write(Finals),
}

/// The coordinator's state for one unit of one merge: which sweep comes next, and the
/// statistics gathered so far.
#[derive(Debug, Clone)]
pub struct UnitPlan {
    method: Method,
    label: String,
    d: u64,
    chunks: usize,
    state: State,
}

impl UnitPlan {
    /// A unit named `label` (a tensor name, or a description of the global unit) of `d > 0`
    /// elements in `chunks` chunks. Errors: an empty unit (its output is the empty base), TIES
    /// keeping 0 entries of some model.
    pub fn new(method: &Method, label: &str, d: u64, chunks: usize) -> Result<UnitPlan> {
        if d == 0 || chunks == 0 {
            return Err(MergeError::Tensor {
                tensor: label.to_string(),
                reason: "empty unit: nothing to merge".into(),
            });
        }
        let state = match method {
            Method::TaskArithmetic(_) => State::Write(Finals::TaskArithmetic),
            Method::Dare(p) if p.rescale == Rescale::L1 => State::DareL1,
            Method::Dare(p) => State::Write(Finals::Dare {
                scales: (0..p.density.len())
                    .map(|i| Scale::direct(p, i).expect("not l1"))
                    .collect(),
            }),
            Method::Ties(p) => {
                let ks = (0..p.density.len())
                    .map(|i| ties::keep_count(label, i, p.density[i], d))
                    .collect::<Result<Vec<_>>>()?;
                let sels = ks
                    .iter()
                    .map(|k| {
                        k.map(|k| Selection::new(d, vec![ties::threshold_rank(d, k)]))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>>>()?;
                if sels.iter().all(Option::is_none) {
                    State::Write(Finals::Ties {
                        topk: vec![None; ks.len()],
                        equal_before: vec![],
                    })
                } else {
                    State::TiesThreshold(ks, sels)
                }
            }
            Method::Pcb(p) => State::PcbClip(
                (0..p.lambdas.len())
                    .map(|_| Selection::new(d, pcb::clip_ranks(d, p.clip_ratio).to_vec()))
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(UnitPlan {
            method: method.clone(),
            label: label.to_string(),
            d,
            chunks,
            state,
        })
    }

    /// What every chunk of the unit computes next.
    pub fn sweep(&self) -> Sweep {
        let rounds = |sels: &[Selection]| sels.iter().map(|s| s.round()).collect();
        match &self.state {
            State::PcbClip(sels) => Sweep::Count {
                values: Values::AbsTau,
                rounds: rounds(sels),
            },
            State::PcbRamp(clips, sels) => Sweep::Count {
                values: Values::PcbScores(clips.clone()),
                rounds: rounds(sels),
            },
            State::TiesThreshold(_, sels) => Sweep::Count {
                values: Values::AbsTau,
                rounds: sels
                    .iter()
                    .map(|s| s.as_ref().and_then(Selection::round))
                    .collect(),
            },
            State::TiesCensus(topk) => Sweep::Census(
                topk.iter()
                    .map(|t| t.filter(TopK::needs_census).map(|t| t.threshold))
                    .collect(),
            ),
            State::DareL1 => Sweep::DareL1,
            State::Write(f) => Sweep::Write(f.clone()),
        }
    }

    /// Whether the next sweep is the write.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Write(_))
    }

    /// Takes the results of the sweep [`UnitPlan::sweep`] described, over every chunk.
    pub fn absorb(&mut self, stats: SweepStats) -> Result<()> {
        let advance = |sels: &mut [Selection], counts: &[Option<Counts>]| -> Result<bool> {
            for (s, c) in sels.iter_mut().zip(counts) {
                s.advance(
                    c.as_ref()
                        .ok_or_else(|| MergeError::Counts("missing counts".into()))?,
                )?;
            }
            Ok(sels.iter().all(|s| s.stats().is_some()))
        };
        let label = self.label.as_str();
        self.state = match (&mut self.state, &self.method) {
            (State::PcbClip(sels), Method::Pcb(p)) => {
                if !advance(sels, &stats.counts)? {
                    return Ok(());
                }
                let clips = sels
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        Clip::new(
                            label,
                            i,
                            s.stats().unwrap()[0].value,
                            s.stats().unwrap()[1].value,
                        )
                    })
                    .collect();
                let keep = vec![pcb::keep_rank(self.d, p.keep_ratio)];
                State::PcbRamp(
                    clips,
                    (0..p.lambdas.len())
                        .map(|_| Selection::new(self.d, keep.clone()))
                        .collect::<Result<_>>()?,
                )
            }
            (State::PcbRamp(clips, sels), Method::Pcb(p)) => {
                if !advance(sels, &stats.counts)? {
                    return Ok(());
                }
                let ramps = sels
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        Ramp::new(
                            label,
                            i,
                            self.d,
                            p.keep_ratio,
                            s.stats().unwrap()[0].value,
                            s.max().expect("max after round high"),
                        )
                    })
                    .collect();
                State::Write(Finals::Pcb {
                    clips: clips.clone(),
                    ramps,
                })
            }
            (State::TiesThreshold(ks, sels), _) => {
                for (s, c) in sels.iter_mut().zip(&stats.counts) {
                    if let Some(s) = s {
                        s.advance(
                            c.as_ref()
                                .ok_or_else(|| MergeError::Counts("missing counts".into()))?,
                        )?;
                    }
                }
                if sels.iter().flatten().any(|s| s.stats().is_none()) {
                    return Ok(());
                }
                let topk: Vec<Option<TopK>> = sels
                    .iter()
                    .zip(ks.iter())
                    .enumerate()
                    .map(|(i, (s, k))| {
                        let s = s.as_ref()?;
                        let t = TopK::new(self.d, k.expect("selected"), &s.stats().unwrap()[0]);
                        if t.threshold == 0.0 {
                            tracing::warn!(unit = label, model = i, "TIES: fewer than k non-zero task-vector entries; zeros fill the top k");
                        }
                        Some(t)
                    })
                    .collect();
                if topk.iter().flatten().any(TopK::needs_census) {
                    State::TiesCensus(topk)
                } else {
                    State::Write(Finals::Ties {
                        topk,
                        equal_before: vec![],
                    })
                }
            }
            (State::TiesCensus(topk), _) => {
                let mut running = vec![0u64; topk.len()];
                let mut equal_before = Vec::with_capacity(self.chunks);
                for c in 0..self.chunks {
                    equal_before.push(running.clone());
                    match stats.per_chunk.get(&c) {
                        Some(ChunkStats::Census(counts)) => {
                            running.iter_mut().zip(counts).for_each(|(r, c)| *r += c)
                        }
                        _ => {
                            return Err(MergeError::Counts(format!(
                                "{label}: no census for chunk {c}"
                            )))
                        }
                    }
                }
                State::Write(Finals::Ties {
                    topk: topk.clone(),
                    equal_before,
                })
            }
            (State::DareL1, Method::Dare(p)) => {
                let mut norms = vec![L1Partial::default(); p.density.len()];
                for c in 0..self.chunks {
                    match stats.per_chunk.get(&c) {
                        Some(ChunkStats::L1(parts)) => {
                            norms.iter_mut().zip(parts).for_each(|(a, b)| a.add(b))
                        }
                        _ => {
                            return Err(MergeError::Counts(format!(
                                "{label}: no L1 partials for chunk {c}"
                            )))
                        }
                    }
                }
                State::Write(Finals::Dare {
                    scales: norms
                        .iter()
                        .enumerate()
                        .map(|(i, s)| Scale::l1(label, i, s))
                        .collect(),
                })
            }
            (State::Write(_), _) => {
                return Err(MergeError::Counts(format!(
                    "{label}: statistics already complete"
                )))
            }
            _ => unreachable!("state matches method"),
        };
        Ok(())
    }
}

/// DARE's masks for a chunk, one per model.
fn dare_masks(p: &super::Dare, chunk: &Chunk) -> Vec<Vec<bool>> {
    (0..p.density.len())
        .map(|i| {
            let mut m = vec![false; chunk.len()];
            dare::mask(
                p.seed,
                chunk.tensor_index,
                i as u64,
                p.density[i],
                chunk.start,
                &mut m,
            );
            m
        })
        .collect()
}

/// Empty counts for a [`Sweep::Count`] (one per task that counts), for [`count_chunk`].
pub fn empty_counts(sweep: &Sweep) -> Vec<Option<Counts>> {
    match sweep {
        Sweep::Count { rounds, .. } => rounds.iter().map(|r| r.clone().map(Counts::new)).collect(),
        _ => vec![],
    }
}

/// Worker side of a [`Sweep::Count`]: adds one chunk's values to `counts` (from
/// [`empty_counts`]), so that a worker keeps one set of counts for all its chunks of a unit.
/// Checks the chunk's inputs (NaN is an error naming the tensor).
pub fn count_chunk(
    method: &Method,
    sweep: &Sweep,
    chunk: &Chunk,
    counts: &mut [Option<Counts>],
) -> Result<()> {
    chunk.check_lengths()?;
    let Sweep::Count { values, rounds } = sweep else {
        return Err(MergeError::Counts(format!(
            "count_chunk called for sweep {sweep:?}"
        )));
    };
    if counts.len() != rounds.len() {
        return Err(MergeError::Counts(format!(
            "{} counts for {} tasks",
            counts.len(),
            rounds.len()
        )));
    }
    let mut pcb = match (values, method) {
        (Values::AbsTau, _) => None,
        (Values::PcbScores(clips), Method::Pcb(p)) => {
            Some((p, clips, pcb::Block::new(clips.len())))
        }
        _ => {
            return Err(MergeError::Counts(format!(
                "{} has no sweep {values:?}",
                method.name()
            )))
        }
    };
    // Block by block, so the values counted never take more than a block per task.
    let mut abs = vec![0.0f32; pcb::BLOCK];
    for start in (0..chunk.len()).step_by(pcb::BLOCK) {
        let len = pcb::BLOCK.min(chunk.len() - start);
        chunk.check_nan(start, len)?;
        if let Some((p, clips, block)) = &mut pcb {
            block.compute(p.inter, clips, chunk, start, len);
        }
        for (i, c) in counts.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            let values = match &pcb {
                Some((_, _, block)) => block.beta(i),
                None => {
                    let abs = &mut abs[..len];
                    let range = start..start + len;
                    pcb::abs_tau(&chunk.models[i][range.clone()], &chunk.base[range], abs);
                    abs
                }
            };
            c.add_slice(values).map_err(|NanAt(e)| MergeError::Nan {
                tensor: chunk.tensor.to_string(),
                input: super::Input::Other(format!(
                    "a statistic of model {i} at element {}",
                    chunk.start + (start + e) as u64
                )),
            })?;
        }
    }
    Ok(())
}

/// Worker side of a statistics sweep: what one chunk contributes (for counts, [`count_chunk`]
/// into running counts is cheaper over many chunks). Checks the chunk's inputs.
pub fn chunk_stats(method: &Method, sweep: &Sweep, chunk: &Chunk) -> Result<ChunkStats> {
    if let Sweep::Count { .. } = sweep {
        let mut counts = empty_counts(sweep);
        count_chunk(method, sweep, chunk, &mut counts)?;
        return Ok(ChunkStats::Counts(counts));
    }
    chunk.check()?;
    match (sweep, method) {
        (Sweep::Census(thresholds), _) => Ok(ChunkStats::Census(
            thresholds
                .iter()
                .enumerate()
                .map(|(i, t)| t.map_or(0, |t| ties::count_equal(chunk, i, t)))
                .collect(),
        )),
        (Sweep::DareL1, Method::Dare(p)) => {
            let masks = dare_masks(p, chunk);
            Ok(ChunkStats::L1(dare::l1_partials(
                chunk,
                &masks.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            )))
        }
        _ => Err(MergeError::Counts(format!(
            "{}: no statistics for sweep {sweep:?}",
            method.name()
        ))),
    }
}

/// Worker side of the write sweep: the output of chunk `chunk_index` (in the unit's flat order)
/// into `out`. Returns the entries kept per model. Checks the chunk's inputs.
pub fn write_chunk(
    method: &Method,
    finals: &Finals,
    chunk_index: usize,
    chunk: &Chunk,
    out: &mut [f32],
) -> Result<Vec<u64>> {
    if let (Method::Pcb(p), Finals::Pcb { clips, ramps }) = (method, finals) {
        // Checks NaN block by block itself.
        chunk.check_lengths()?;
        return pcb::pcb_chunk(p, clips, ramps, chunk, out);
    }
    chunk.check()?;
    Ok(match (method, finals) {
        (Method::TaskArithmetic(p), Finals::TaskArithmetic) => {
            task_arithmetic::task_arithmetic_chunk(p, chunk, out);
            vec![chunk.len() as u64; chunk.models.len()]
        }
        (Method::Ties(p), Finals::Ties { topk, equal_before }) => {
            let keep: Vec<Keep> = topk
                .iter()
                .enumerate()
                .map(|(i, &topk)| Keep {
                    topk,
                    equal_before: equal_before.get(chunk_index).map_or(0, |e| e[i]),
                })
                .collect();
            ties::ties_chunk(p, &keep, chunk, out)
        }
        (Method::Dare(p), Finals::Dare { scales }) => {
            let masks = dare_masks(p, chunk);
            dare::dare_chunk(
                p,
                scales,
                &masks.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                chunk,
                out,
            )
        }
        _ => {
            return Err(MergeError::Counts(format!(
                "{}: finals of another method",
                method.name()
            )))
        }
    })
}

/// A whole unit held as one chunk (per-tensor scope, a tensor no larger than the chunk size):
/// statistics and output in one go. Same result as the sweeps. Checks the chunk's inputs.
pub fn merge_local(method: &Method, chunk: &Chunk, out: &mut [f32]) -> Result<Vec<u64>> {
    if chunk.is_empty() {
        chunk.check()?;
        return Ok(vec![0; chunk.models.len()]);
    }
    match method {
        Method::Pcb(p) => pcb::pcb_local(p, chunk, out),
        Method::Ties(p) => ties::ties_local(p, chunk, out),
        _ => {
            let mut plan = UnitPlan::new(method, chunk.tensor, chunk.len() as u64, 1)?;
            loop {
                match plan.sweep() {
                    Sweep::Write(f) => return write_chunk(method, &f, 0, chunk, out),
                    sweep => {
                        let mut stats = SweepStats::new(&sweep);
                        stats.add(0, chunk_stats(method, &sweep, chunk)?)?;
                        plan.absorb(stats)?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{Dare, Inter, Pcb, Scope, TaskArithmetic, Ties};

    /// Drives a plan over one in-memory unit split into `chunk`-element chunks; returns the kind
    /// of every sweep it asked for.
    fn sweeps(method: &Method, base: &[f32], models: &[&[f32]], chunk: usize) -> Vec<&'static str> {
        let ranges: Vec<(usize, usize)> = (0..base.len())
            .step_by(chunk)
            .map(|s| (s, (s + chunk).min(base.len())))
            .collect();
        let chunk_at = |s: usize, e: usize| {
            (
                base[s..e].to_vec(),
                models.iter().map(|m| m[s..e].to_vec()).collect::<Vec<_>>(),
            )
        };
        let mut plan = UnitPlan::new(method, "w", base.len() as u64, ranges.len()).unwrap();
        let mut kinds = vec![];
        loop {
            let sweep = plan.sweep();
            kinds.push(match &sweep {
                Sweep::Count {
                    values: Values::AbsTau,
                    rounds,
                } if rounds[0] == Some(Round::High) => "|τ| high",
                Sweep::Count {
                    values: Values::AbsTau,
                    ..
                } => "|τ| low",
                Sweep::Count { rounds, .. } if rounds[0] == Some(Round::High) => "β high",
                Sweep::Count { .. } => "β low",
                Sweep::Census(_) => "census",
                Sweep::DareL1 => "l1",
                Sweep::Write(_) => "write",
            });
            if plan.is_ready() {
                return kinds;
            }
            let mut stats = SweepStats::new(&sweep);
            for (ci, &(s, e)) in ranges.iter().enumerate() {
                let (b, ms) = chunk_at(s, e);
                let ms: Vec<&[f32]> = ms.iter().map(Vec::as_slice).collect();
                let c = Chunk {
                    tensor: "w",
                    tensor_index: 0,
                    start: s as u64,
                    base: &b,
                    models: &ms,
                };
                stats
                    .add(ci, chunk_stats(method, &sweep, &c).unwrap())
                    .unwrap();
            }
            plan.absorb(stats).unwrap();
        }
    }

    #[test]
    fn sweeps_per_method() {
        let base = vec![0.0f32; 40];
        let a: Vec<f32> = (0..40)
            .map(|e| (e as f32 + 0.5) / if e % 2 == 0 { 7.0 } else { -7.0 })
            .collect();
        let ties_all: Vec<f32> = (0..40)
            .map(|e| if e % 3 == 0 { 1.0 } else { -1.0 })
            .collect();
        let models: [&[f32]; 2] = [&a, &ties_all];
        let pcb = Method::Pcb(Pcb {
            scope: Scope::Global,
            keep_ratio: 0.1,
            clip_ratio: 0.01,
            inter: Inter::SumRaw,
            lambda: 1.0,
            lambdas: vec![1.0; 2],
        });
        assert_eq!(
            sweeps(&pcb, &base, &models, 16),
            ["|τ| high", "|τ| low", "β high", "β low", "write"]
        );
        let ties = |density: Vec<f64>| {
            Method::Ties(Ties {
                scope: Scope::Global,
                density,
                weights: vec![1.0; 2],
                normalize: true,
                lambda: 1.0,
            })
        };
        // Model 1's |τ| are all equal: keeping 20 of 40 cuts a tie, so a census runs.
        assert_eq!(
            sweeps(&ties(vec![0.5, 0.5]), &base, &models, 16),
            ["|τ| high", "|τ| low", "census", "write"]
        );
        assert_eq!(
            sweeps(&ties(vec![0.5, 1.0]), &base, &models, 16),
            ["|τ| high", "|τ| low", "write"]
        );
        assert_eq!(sweeps(&ties(vec![1.0, 1.0]), &base, &models, 16), ["write"]);
        let dare = |rescale| {
            Method::Dare(Dare {
                density: vec![0.5; 2],
                weights: vec![1.0; 2],
                rescale,
                seed: 1,
                lambda: 1.0,
                ties: None,
            })
        };
        assert_eq!(
            sweeps(&dare(Rescale::L1), &base, &models, 16),
            ["l1", "write"]
        );
        assert_eq!(
            sweeps(&dare(Rescale::InvDensity), &base, &models, 16),
            ["write"]
        );
        let ta = Method::TaskArithmetic(TaskArithmetic {
            weights: vec![1.0; 2],
            lambda: 1.0,
        });
        assert_eq!(sweeps(&ta, &base, &models, 16), ["write"]);
    }

    #[test]
    fn census_needs_every_chunk() {
        let base = vec![0.0f32; 10];
        let m = vec![1.0f32; 10];
        let models: [&[f32]; 1] = [&m];
        let method = Method::Ties(Ties {
            scope: Scope::Global,
            density: vec![0.5],
            weights: vec![1.0],
            normalize: true,
            lambda: 1.0,
        });
        let mut plan = UnitPlan::new(&method, "w", 10, 2).unwrap();
        for _ in 0..2 {
            let sweep = plan.sweep();
            let mut stats = SweepStats::new(&sweep);
            let c = Chunk {
                tensor: "w",
                tensor_index: 0,
                start: 0,
                base: &base,
                models: &models,
            };
            stats
                .add(0, chunk_stats(&method, &sweep, &c).unwrap())
                .unwrap();
            plan.absorb(stats).unwrap();
        }
        let sweep = plan.sweep();
        assert_eq!(sweep, Sweep::Census(vec![Some(1.0)]));
        let mut stats = SweepStats::new(&sweep);
        stats.add(0, ChunkStats::Census(vec![5])).unwrap();
        assert!(stats.add(0, ChunkStats::Census(vec![5])).is_err());
        assert!(plan
            .absorb(stats)
            .unwrap_err()
            .to_string()
            .contains("chunk 1"));
    }
}
