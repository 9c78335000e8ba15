//! The in-memory reference driver: every method run on tensors held in memory through the same
//! chunk functions and the same statistics rounds a distributed merge uses. Chunks are dealt to
//! simulated workers whose counts are serialised, parsed and added, as a coordinator does with
//! task results; so this file is the specification of the distributed driver's rounds, and tests
//! run it with tiny chunks to cross chunk boundaries.
//!
//! Rounds per method (one *sweep* reads every chunk of the inputs once):
//! - `task_arithmetic`: write.
//! - `dare_*`: [l1 only: L1 partials per (chunk, model), summed per tensor in chunk order] → write.
//! - `ties`, per unit: |τ| high → |τ| low → [census, only if a threshold tie is cut] → write.
//! - `pcb`, per unit: |τ| high → |τ| low (lo, hi) → β high (+ max) → β low (t) → write.
//!
//! In per-tensor scope a tensor of at most `chunk_elems` elements is one chunk and is merged by
//! the methods' `*_local` functions in one go (no rounds); larger tensors take the rounds.

use std::collections::BTreeMap;

use super::dare::{self, L1Partial, Scale};
use super::pcb::{self, Clip, Ramp};
use super::radix::{Counts, NanAt, Selection};
use super::ties::{self, Keep, TopK};
use super::{
    task_arithmetic, Chunk, MergeError, Method, Rescale, Result, Scope, DEFAULT_CHUNK_ELEMS,
};

/// A merge's result: the output tensors (flat, f32) and, per merged tensor, the entries of each
/// model that contributed (PCB: S_i > 0; TIES: the top-k; DARE: the mask; task arithmetic: all).
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub tensors: BTreeMap<String, Vec<f32>>,
    pub kept: BTreeMap<String, Vec<u64>>,
}

/// Merges flat f32 tensors in memory with 16 MiB chunks ([`DEFAULT_CHUNK_ELEMS`]).
pub fn merge_in_memory(
    method: &Method,
    base: &BTreeMap<String, Vec<f32>>,
    models: &[BTreeMap<String, Vec<f32>>],
) -> Result<Merged> {
    merge_in_memory_chunked(method, base, models, DEFAULT_CHUNK_ELEMS)
}

/// [`merge_in_memory`] with chunks of at most `chunk_elems` elements. The result does not
/// depend on `chunk_elems` (bit for bit).
pub fn merge_in_memory_chunked(
    method: &Method,
    base: &BTreeMap<String, Vec<f32>>,
    models: &[BTreeMap<String, Vec<f32>>],
    chunk_elems: usize,
) -> Result<Merged> {
    method.validate(models.len())?;
    assert!(chunk_elems > 0, "chunk_elems must be positive");
    let ctx = Ctx::new(base, models, chunk_elems)?;
    let mut merged = Merged {
        tensors: BTreeMap::new(),
        kept: BTreeMap::new(),
    };
    for (t, name) in ctx.names.iter().enumerate() {
        merged
            .tensors
            .insert(name.to_string(), vec![0.0; ctx.base[t].len()]);
        merged.kept.insert(name.to_string(), vec![0; models.len()]);
    }
    match method {
        Method::TaskArithmetic(p) => ctx.write(&mut merged, |c, _, out| {
            task_arithmetic::task_arithmetic_chunk(p, c, out)?;
            Ok(vec![c.len() as u64; c.models.len()])
        })?,
        Method::Dare(p) => run_dare(&ctx, p, &mut merged)?,
        Method::Ties(p) => {
            for unit in ctx.units(p.scope) {
                run_ties(&ctx, p, &unit, &mut merged)?;
            }
        }
        Method::Pcb(p) => {
            for unit in ctx.units(p.scope) {
                run_pcb(&ctx, p, &unit, &mut merged)?;
            }
        }
    }
    // A tensor absent from the base is copied from the first model that has it.
    for (m, model) in models.iter().enumerate() {
        for (name, values) in model {
            if !base.contains_key(name) && !merged.tensors.contains_key(name) {
                tracing::warn!(
                    tensor = name.as_str(),
                    model = m,
                    "tensor absent from the base: copied from model {m}"
                );
                merged.tensors.insert(name.clone(), values.clone());
            }
        }
    }
    Ok(merged)
}

/// Workers simulated in the statistics rounds (any number gives the same counts).
const SIMULATED_WORKERS: usize = 3;

/// One chunk: an element range of one tensor (index into the sorted base names).
#[derive(Debug, Clone, Copy)]
struct ChunkRef {
    tensor: usize,
    start: usize,
    end: usize,
}

/// A unit of statistics: its label (for errors and warnings), its chunks in flat order and its
/// size d.
struct Unit {
    label: String,
    chunks: Vec<ChunkRef>,
    d: u64,
}

struct Ctx<'a> {
    names: Vec<&'a str>,
    base: Vec<&'a [f32]>,
    /// `models[t][i]`: tensor t of model i.
    models: Vec<Vec<&'a [f32]>>,
    chunk_elems: usize,
}

impl<'a> Ctx<'a> {
    fn new(
        base: &'a BTreeMap<String, Vec<f32>>,
        models: &'a [BTreeMap<String, Vec<f32>>],
        chunk_elems: usize,
    ) -> Result<Self> {
        let mut ctx = Ctx {
            names: vec![],
            base: vec![],
            models: vec![],
            chunk_elems,
        };
        for (name, b) in base {
            let mut per_model = Vec::with_capacity(models.len());
            for (i, m) in models.iter().enumerate() {
                let v = m.get(name).ok_or_else(|| MergeError::Tensor {
                    tensor: name.clone(),
                    reason: format!("present in the base, missing from model {i}"),
                })?;
                if v.len() != b.len() {
                    return Err(MergeError::Tensor {
                        tensor: name.clone(),
                        reason: format!("model {i} has {} elements, the base {}", v.len(), b.len()),
                    });
                }
                per_model.push(v.as_slice());
            }
            ctx.names.push(name);
            ctx.base.push(b);
            ctx.models.push(per_model);
        }
        Ok(ctx)
    }

    fn tensor_chunks(&self, t: usize) -> impl Iterator<Item = ChunkRef> + '_ {
        let len = self.base[t].len();
        (0..len)
            .step_by(self.chunk_elems)
            .map(move |start| ChunkRef {
                tensor: t,
                start,
                end: (start + self.chunk_elems).min(len),
            })
    }

    fn units(&self, scope: Scope) -> Vec<Unit> {
        let unit = |label: String, tensors: &mut dyn Iterator<Item = usize>| {
            let chunks: Vec<ChunkRef> = tensors.flat_map(|t| self.tensor_chunks(t)).collect();
            let d = chunks.iter().map(|c| (c.end - c.start) as u64).sum();
            Unit { label, chunks, d }
        };
        match scope {
            Scope::Global => vec![unit(
                "(all tensors, global scope)".into(),
                &mut (0..self.names.len()),
            )],
            Scope::PerTensor => (0..self.names.len())
                .map(|t| unit(self.names[t].to_string(), &mut std::iter::once(t)))
                .collect(),
        }
    }

    /// Calls `f` with the chunk's inputs (the models' slices are built in `models`).
    fn with_chunk<R>(&self, c: &ChunkRef, f: impl FnOnce(&Chunk) -> R) -> R {
        let models: Vec<&[f32]> = self.models[c.tensor]
            .iter()
            .map(|m| &m[c.start..c.end])
            .collect();
        f(&Chunk {
            tensor: self.names[c.tensor],
            tensor_index: c.tensor as u64,
            start: c.start as u64,
            base: &self.base[c.tensor][c.start..c.end],
            models: &models,
        })
    }

    /// Write sweep over every chunk of every tensor.
    fn write(
        &self,
        merged: &mut Merged,
        mut f: impl FnMut(&Chunk, &ChunkRef, &mut [f32]) -> Result<Vec<u64>>,
    ) -> Result<()> {
        for t in 0..self.names.len() {
            for c in self.tensor_chunks(t).collect::<Vec<_>>() {
                self.write_chunk(merged, &c, &mut f)?;
            }
        }
        Ok(())
    }

    fn write_chunk(
        &self,
        merged: &mut Merged,
        c: &ChunkRef,
        f: &mut impl FnMut(&Chunk, &ChunkRef, &mut [f32]) -> Result<Vec<u64>>,
    ) -> Result<()> {
        let name = self.names[c.tensor];
        let out = &mut merged.tensors.get_mut(name).expect("allocated")[c.start..c.end];
        let kept = self.with_chunk(c, |chunk| f(chunk, c, out))?;
        for (k, add) in merged
            .kept
            .get_mut(name)
            .expect("allocated")
            .iter_mut()
            .zip(kept)
        {
            *k += add;
        }
        Ok(())
    }

    /// Runs the selections of a unit (one per listed task) to completion. For each round every
    /// chunk computes its values (`values(chunk, out)` fills `out[j]` for the j-th listed task)
    /// and counts them.
    fn run_selections(
        &self,
        unit: &Unit,
        sels: &mut [Selection],
        values: impl Fn(&Chunk, &mut [Vec<f32>]) -> Result<()>,
    ) -> Result<()> {
        while let Some(first) = sels.first().and_then(|s| s.round()) {
            let rounds: Vec<_> = sels
                .iter()
                .map(|s| s.round().expect("selections advance together"))
                .collect();
            debug_assert_eq!(rounds[0], first);
            let mut totals: Vec<Counts> = rounds.iter().map(|r| Counts::new(r.clone())).collect();
            // Chunks dealt round-robin to simulated workers; each counts its chunks into one
            // `Counts` per task and sends the bytes; the coordinator parses and adds them.
            for w in 0..SIMULATED_WORKERS {
                let mut counts: Vec<Counts> =
                    rounds.iter().map(|r| Counts::new(r.clone())).collect();
                for c in unit.chunks.iter().skip(w).step_by(SIMULATED_WORKERS) {
                    let mut bufs = vec![vec![0.0f32; c.end - c.start]; sels.len()];
                    self.with_chunk(c, |chunk| values(chunk, &mut bufs))?;
                    for (j, buf) in bufs.iter().enumerate() {
                        counts[j]
                            .add_slice(buf)
                            .map_err(|NanAt(e)| MergeError::Nan {
                                tensor: self.names[c.tensor].to_string(),
                                input: format!(
                                    "a derived statistic at element {} (inf in an input?)",
                                    c.start + e
                                ),
                            })?;
                    }
                }
                for (t, c) in totals.iter_mut().zip(&counts) {
                    t.merge(&Counts::from_bytes(&c.to_bytes())?)?;
                }
            }
            for (s, t) in sels.iter_mut().zip(&totals) {
                s.advance(t)?;
            }
        }
        Ok(())
    }

    /// Whether a per-tensor unit is held as one chunk (merged locally, no rounds).
    fn is_local(&self, scope: Scope, unit: &Unit) -> bool {
        scope == Scope::PerTensor && unit.chunks.len() == 1
    }
}

fn run_pcb(ctx: &Ctx, p: &super::Pcb, unit: &Unit, merged: &mut Merged) -> Result<()> {
    if unit.d == 0 {
        return Ok(());
    }
    if ctx.is_local(p.scope, unit) {
        return ctx.write_chunk(merged, &unit.chunks[0], &mut |chunk, _, out| {
            pcb::pcb_local(p, chunk, out)
        });
    }
    let n = p.lambdas.len();
    // Rounds 1-2: lo_i, hi_i of |τ_i|.
    let mut sels = (0..n)
        .map(|_| Selection::new(unit.d, pcb::clip_ranks(unit.d, p.clip_ratio).to_vec()))
        .collect::<Result<Vec<_>>>()?;
    ctx.run_selections(unit, &mut sels, |chunk, out| {
        (0..n).try_for_each(|i| pcb::abs_tau(chunk, i, &mut out[i]))
    })?;
    let clips: Vec<Clip> = sels
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let st = s.stats().expect("done");
            Clip::new(&unit.label, i, st[0].value, st[1].value)
        })
        .collect();
    // Rounds 3-4: t_i of β_i, M_i = max β_i (round 3).
    let mut sels = (0..n)
        .map(|_| Selection::new(unit.d, vec![pcb::keep_rank(unit.d, p.keep_ratio)]))
        .collect::<Result<Vec<_>>>()?;
    ctx.run_selections(unit, &mut sels, |chunk, out| {
        pcb::scores(p, &clips, chunk, out)
    })?;
    let ramps: Vec<Ramp> = sels
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Ramp::new(
                &unit.label,
                i,
                unit.d,
                p.keep_ratio,
                s.stats().expect("done")[0].value,
                s.max().expect("done"),
            )
        })
        .collect();
    // Round 5: write.
    for c in &unit.chunks {
        ctx.write_chunk(merged, c, &mut |chunk, _, out| {
            pcb::pcb_chunk(p, &clips, &ramps, chunk, out)
        })?;
    }
    Ok(())
}

fn run_ties(ctx: &Ctx, p: &super::Ties, unit: &Unit, merged: &mut Merged) -> Result<()> {
    if unit.d == 0 {
        return Ok(());
    }
    if ctx.is_local(p.scope, unit) {
        return ctx.write_chunk(merged, &unit.chunks[0], &mut |chunk, _, out| {
            ties::ties_local(p, chunk, out)
        });
    }
    let n = p.density.len();
    let ks = (0..n)
        .map(|i| ties::keep_count(&unit.label, i, p.density[i], unit.d))
        .collect::<Result<Vec<_>>>()?;
    // Rounds 1-2: the threshold of the tasks that do not keep everything.
    let selected: Vec<usize> = (0..n).filter(|&i| ks[i].is_some()).collect();
    let mut sels = selected
        .iter()
        .map(|&i| {
            Selection::new(
                unit.d,
                vec![ties::threshold_rank(unit.d, ks[i].expect("selected"))],
            )
        })
        .collect::<Result<Vec<_>>>()?;
    ctx.run_selections(unit, &mut sels, |chunk, out| {
        for (j, &i) in selected.iter().enumerate() {
            pcb::abs_tau(chunk, i, &mut out[j])?;
        }
        Ok(())
    })?;
    let mut topk: Vec<Option<TopK>> = vec![None; n];
    for (j, &i) in selected.iter().enumerate() {
        let tk = TopK::new(
            unit.d,
            ks[i].expect("selected"),
            &sels[j].stats().expect("done")[0],
        );
        if tk.threshold == 0.0 {
            tracing::warn!(
                unit = unit.label.as_str(),
                model = i,
                "TIES: fewer than k non-zero task-vector entries; zeros fill the top-k"
            );
        }
        topk[i] = Some(tk);
    }
    // Round 3 (only if a tie at a threshold is cut): per chunk, entries equal to the threshold;
    // prefix sums in flat order give each chunk its `equal_before`.
    let mut equal_before = vec![vec![0u64; n]; unit.chunks.len()];
    let census: Vec<usize> = (0..n)
        .filter(|&i| topk[i].is_some_and(|t| t.needs_census()))
        .collect();
    if !census.is_empty() {
        let mut running = vec![0u64; n];
        for (ci, c) in unit.chunks.iter().enumerate() {
            equal_before[ci] = running.clone();
            for &i in &census {
                running[i] += ctx.with_chunk(c, |chunk| {
                    ties::count_equal(chunk, i, topk[i].expect("census").threshold)
                })?;
            }
        }
    }
    // Last round: write.
    for (ci, c) in unit.chunks.iter().enumerate() {
        let keep: Vec<Keep> = (0..n)
            .map(|i| Keep {
                topk: topk[i],
                equal_before: equal_before[ci][i],
            })
            .collect();
        ctx.write_chunk(merged, c, &mut |chunk, _, out| {
            ties::ties_chunk(p, &keep, chunk, out)
        })?;
    }
    Ok(())
}

fn run_dare(ctx: &Ctx, p: &super::Dare, merged: &mut Merged) -> Result<()> {
    let n = p.density.len();
    let masks_of = |chunk: &Chunk| -> Vec<Vec<bool>> {
        (0..n)
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
    };
    for t in 0..ctx.names.len() {
        let chunks: Vec<ChunkRef> = ctx.tensor_chunks(t).collect();
        let scales: Vec<Scale> = if p.rescale == Rescale::L1 {
            // Statistics sweep: L1 partials per chunk, added in chunk order.
            let mut norms = vec![L1Partial::default(); n];
            for c in &chunks {
                let partials = ctx.with_chunk(c, |chunk| {
                    let masks = masks_of(chunk);
                    dare::l1_partials(
                        chunk,
                        &masks.iter().map(|m| m.as_slice()).collect::<Vec<_>>(),
                    )
                })?;
                for (a, b) in norms.iter_mut().zip(&partials) {
                    a.add(b);
                }
            }
            norms
                .iter()
                .enumerate()
                .map(|(i, s)| Scale::l1(ctx.names[t], i, s))
                .collect()
        } else {
            (0..n)
                .map(|i| Scale::direct(p, i).expect("not l1"))
                .collect()
        };
        for c in &chunks {
            ctx.write_chunk(merged, c, &mut |chunk, _, out| {
                let masks = masks_of(chunk);
                dare::dare_chunk(
                    p,
                    &scales,
                    &masks.iter().map(|m| m.as_slice()).collect::<Vec<_>>(),
                    chunk,
                    out,
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{Dare, Inter, Pcb, TaskArithmetic, Ties};
    use crate::rng::{Purpose, StreamKey};

    /// Random models with duplicates, zeros and sizes around the chunk sizes used below.
    pub(crate) fn random_models(
        seed: u64,
        n: usize,
    ) -> (BTreeMap<String, Vec<f32>>, Vec<BTreeMap<String, Vec<f32>>>) {
        let sizes = [
            ("a", 300),
            ("b", 7),
            ("c", 64),
            ("d", 65),
            ("e", 5),
            ("f", 0),
        ];
        let mut s = StreamKey::new(seed, 0, 0, 0, Purpose::Example).stream();
        let mut gen = |len: usize, quantised: bool| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    let x = s.normal() as f32;
                    if quantised {
                        (x * 4.0).round() / 4.0
                    } else {
                        x
                    }
                })
                .collect()
        };
        let base: BTreeMap<String, Vec<f32>> = sizes
            .iter()
            .map(|&(k, l)| (k.to_string(), gen(l, true)))
            .collect();
        let models = (0..n)
            .map(|i| {
                base.iter()
                    .map(|(k, b)| {
                        let d = gen(b.len(), i % 2 == 1);
                        (
                            k.clone(),
                            b.iter().zip(d).map(|(x, y)| x + 0.1 * y).collect(),
                        )
                    })
                    .collect()
            })
            .collect();
        (base, models)
    }

    fn methods() -> Vec<Method> {
        let mut v = vec![Method::TaskArithmetic(TaskArithmetic {
            weights: vec![0.5, 1.0, -0.25],
            lambda: 0.8,
        })];
        for scope in [Scope::Global, Scope::PerTensor] {
            v.push(Method::Ties(Ties {
                scope,
                density: vec![0.2, 0.5, 1.0],
                weights: vec![1.0, 0.5, 2.0],
                normalize: true,
                lambda: 1.0,
            }));
            for inter in [Inter::SumRaw, Inter::Pairwise] {
                v.push(Method::Pcb(Pcb {
                    scope,
                    keep_ratio: 0.2,
                    clip_ratio: 0.01,
                    inter,
                    lambda: 0.9,
                    lambdas: vec![1.0, 1.2, 0.8],
                }));
            }
        }
        for rescale in [Rescale::InvDensity, Rescale::L1, Rescale::None] {
            for ties in [None, Some(true), Some(false)] {
                v.push(Method::Dare(Dare {
                    density: vec![0.3, 0.9, 0.0],
                    weights: vec![1.0, 0.5, 1.0],
                    rescale,
                    seed: 5,
                    lambda: 1.0,
                    ties,
                }));
            }
        }
        v
    }

    /// The result is the same bit for bit whatever the chunk size: every chunk boundary, one
    /// chunk per tensor (local per-tensor path) and everything in between.
    #[test]
    fn chunking_does_not_change_a_bit() {
        let (base, models) = random_models(3, 3);
        for m in methods() {
            let whole = merge_in_memory(&m, &base, &models).unwrap();
            assert_eq!(whole.tensors["f"], Vec::<f32>::new());
            for chunk in [1, 7, 64, 100] {
                let part = merge_in_memory_chunked(&m, &base, &models, chunk).unwrap();
                for (name, v) in &whole.tensors {
                    let bits = |x: &Vec<f32>| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(v),
                        bits(&part.tensors[name]),
                        "{} chunk {chunk} tensor {name}",
                        m.name()
                    );
                }
                assert_eq!(whole.kept, part.kept, "{} chunk {chunk}", m.name());
            }
        }
    }

    #[test]
    fn ties_keeps_exactly_k_per_unit_even_with_ties_across_chunks() {
        // Every |τ| equal: the threshold cut falls inside a run of ties spanning all chunks.
        let base: BTreeMap<String, Vec<f32>> = [
            ("w".to_string(), vec![0.0f32; 50]),
            ("x".to_string(), vec![0.0; 30]),
        ]
        .into();
        let model: BTreeMap<String, Vec<f32>> = base
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.iter()
                        .enumerate()
                        .map(|(e, _)| if e % 2 == 0 { 1.0 } else { -1.0 })
                        .collect(),
                )
            })
            .collect();
        for scope in [Scope::Global, Scope::PerTensor] {
            let m = Method::Ties(Ties {
                scope,
                density: vec![0.3],
                weights: vec![1.0],
                normalize: true,
                lambda: 1.0,
            });
            for chunk in [3, 16, 1000] {
                let r = merge_in_memory_chunked(&m, &base, std::slice::from_ref(&model), chunk)
                    .unwrap();
                let nz = |n: &str| r.tensors[n].iter().filter(|x| **x != 0.0).count();
                match scope {
                    // k = int(0.3·80) = 24, all in `w` (the lower flat indices: its first 24).
                    Scope::Global => {
                        assert_eq!((nz("w"), nz("x")), (24, 0));
                        assert!(r.tensors["w"][..24].iter().all(|x| *x != 0.0));
                    }
                    // k = 15 of `w`, 9 of `x`, each its first entries.
                    Scope::PerTensor => {
                        assert_eq!((nz("w"), nz("x")), (15, 9));
                        assert!(r.tensors["x"][..9].iter().all(|x| *x != 0.0));
                    }
                }
            }
        }
    }

    #[test]
    fn inputs_are_checked_and_named() {
        let (base, mut models) = random_models(4, 2);
        let m = Method::TaskArithmetic(TaskArithmetic {
            weights: vec![1.0, 1.0],
            lambda: 1.0,
        });
        models[1].remove("c");
        let e = merge_in_memory(&m, &base, &models).unwrap_err().to_string();
        assert!(e.contains("`c`") && e.contains("model 1"), "{e}");
        let (base, mut models) = random_models(4, 2);
        models[0].get_mut("d").unwrap()[3] = f32::NAN;
        let e = merge_in_memory(&m, &base, &models).unwrap_err().to_string();
        assert!(
            e.contains("`d`") && e.contains("NaN") && e.contains("model 0"),
            "{e}"
        );
        let (base, mut models) = random_models(4, 2);
        models[1].insert("extra".into(), vec![1.0, 2.0]);
        let r = merge_in_memory(&m, &base, &models).unwrap();
        assert_eq!(r.tensors["extra"], vec![1.0, 2.0]);
        let pcb = Method::Pcb(Pcb {
            scope: Scope::Global,
            keep_ratio: 0.1,
            clip_ratio: 0.01,
            inter: Inter::SumRaw,
            lambda: 1.0,
            lambdas: vec![1.0; 2],
        });
        let (base, mut models) = random_models(4, 2);
        models[1].get_mut("a").unwrap()[0] = f32::NAN;
        assert!(merge_in_memory_chunked(&pcb, &base, &models, 16)
            .unwrap_err()
            .to_string()
            .contains("`a`"));
    }
}
