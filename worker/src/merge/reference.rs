//! The in-memory reference driver: every method run on tensors held in memory through
//! [`passes`](super::passes), the same per-unit state machine and chunk functions a distributed
//! merge uses. In the statistics sweeps, chunks are dealt round-robin to simulated workers; each
//! merges the counts of its chunks and sends them as bytes, which the "coordinator" parses and
//! adds (census and L1 results go per chunk). Tests run it with tiny chunks to cross chunk
//! boundaries and check that the result does not change by a bit.
//!
//! Units: with `Scope::Global` (PCB, TIES) one unit holds every tensor in flat order; otherwise
//! each tensor is a unit (DARE and task arithmetic always). In per-tensor scope a tensor of at
//! most `chunk_elems` elements is one chunk and goes through [`merge_local`]; larger units run
//! the sweeps of their [`UnitPlan`].

use std::collections::BTreeMap;

use super::passes::{
    chunk_stats, count_chunk, empty_counts, merge_local, write_chunk, ChunkStats, Sweep,
    SweepStats, UnitPlan,
};
use super::{Chunk, MergeError, Method, Result, Scope, Tensors, DEFAULT_CHUNK_ELEMS};

/// A merge's result: the output tensors (flat, f32) and, per merged tensor, the entries of each
/// model that contributed (PCB: S_i > 0; TIES: the top k; DARE: the mask; task arithmetic: all).
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub tensors: Tensors,
    pub kept: BTreeMap<String, Vec<u64>>,
}

/// Merges flat f32 tensors in memory with 16 MiB chunks ([`DEFAULT_CHUNK_ELEMS`]). Tensors are
/// matched by name; a tensor absent from the base is copied from the first model holding it.
pub fn merge_in_memory(method: &Method, base: &Tensors, models: &[Tensors]) -> Result<Merged> {
    merge_in_memory_chunked(method, base, models, DEFAULT_CHUNK_ELEMS)
}

/// [`merge_in_memory`] with chunks of at most `chunk_elems` elements. The result does not
/// depend on `chunk_elems` (bit for bit).
pub fn merge_in_memory_chunked(
    method: &Method,
    base: &Tensors,
    models: &[Tensors],
    chunk_elems: usize,
) -> Result<Merged> {
    merge_simulated(method, base, models, chunk_elems, SIMULATED_WORKERS)
}

/// The driver, with `workers` simulated workers in the statistics sweeps.
fn merge_simulated(
    method: &Method,
    base: &Tensors,
    models: &[Tensors],
    chunk_elems: usize,
    workers: usize,
) -> Result<Merged> {
    method.validate(models.len())?;
    assert!(chunk_elems > 0, "chunk_elems must be positive");
    let ctx = Ctx::new(base, models, chunk_elems, workers)?;
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
    let scope = match method {
        Method::Pcb(p) => p.scope,
        Method::Ties(p) => p.scope,
        Method::Dare(_) | Method::TaskArithmetic(_) => Scope::PerTensor,
    };
    for unit in ctx.units(scope) {
        if unit.d == 0 {
            continue;
        }
        if scope == Scope::PerTensor && unit.chunks.len() == 1 {
            ctx.write(&mut merged, &unit.chunks[0], |chunk, out| {
                merge_local(method, chunk, out)
            })?;
            continue;
        }
        let mut plan = UnitPlan::new(method, &unit.label, unit.d, unit.chunks.len())?;
        loop {
            match plan.sweep() {
                Sweep::Write(finals) => {
                    for (ci, c) in unit.chunks.iter().enumerate() {
                        ctx.write(&mut merged, c, |chunk, out| {
                            write_chunk(method, &finals, ci, chunk, out)
                        })?;
                    }
                    break;
                }
                sweep => plan.absorb(ctx.statistics(method, &sweep, &unit)?)?,
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

/// Workers simulated in the statistics sweeps (any number gives the same result).
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
    workers: usize,
}

impl<'a> Ctx<'a> {
    fn new(
        base: &'a Tensors,
        models: &'a [Tensors],
        chunk_elems: usize,
        workers: usize,
    ) -> Result<Self> {
        let mut ctx = Ctx {
            names: vec![],
            base: vec![],
            models: vec![],
            chunk_elems,
            workers,
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

    fn units(&self, scope: Scope) -> Vec<Unit> {
        let unit = |label: String, tensors: &mut dyn Iterator<Item = usize>| {
            let chunks: Vec<ChunkRef> = tensors
                .flat_map(|t| {
                    let len = self.base[t].len();
                    (0..len)
                        .step_by(self.chunk_elems)
                        .map(move |start| ChunkRef {
                            tensor: t,
                            start,
                            end: (start + self.chunk_elems).min(len),
                        })
                })
                .collect();
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

    /// Calls `f` with the chunk's inputs.
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

    /// Writes one chunk's output and adds its kept counts.
    fn write(
        &self,
        merged: &mut Merged,
        c: &ChunkRef,
        f: impl FnOnce(&Chunk, &mut [f32]) -> Result<Vec<u64>>,
    ) -> Result<()> {
        let name = self.names[c.tensor];
        let out = &mut merged.tensors.get_mut(name).expect("allocated")[c.start..c.end];
        let kept = self.with_chunk(c, |chunk| f(chunk, out))?;
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

    /// One statistics sweep over a unit, as workers and the coordinator would run it.
    fn statistics(&self, method: &Method, sweep: &Sweep, unit: &Unit) -> Result<SweepStats> {
        let mut stats = SweepStats::new(sweep);
        for w in 0..self.workers {
            let mut counts = empty_counts(sweep);
            for (ci, c) in unit.chunks.iter().enumerate().skip(w).step_by(self.workers) {
                self.with_chunk(c, |chunk| match sweep {
                    Sweep::Count { .. } => count_chunk(method, sweep, chunk, &mut counts),
                    _ => stats.add(ci, chunk_stats(method, sweep, chunk)?),
                })?;
            }
            stats.add(w, ChunkStats::Counts(counts))?;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{Dare, Inter, Pcb, Rescale, TaskArithmetic, Ties};
    use crate::rng::{Purpose, StreamKey};

    /// Random models with duplicates, zeros and sizes around the chunk sizes used below.
    pub(crate) fn random_models(seed: u64, n: usize) -> (Tensors, Vec<Tensors>) {
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
        let base: Tensors = sizes
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
            for workers in [1, 2, 5] {
                let other = merge_simulated(&m, &base, &models, 7, workers).unwrap();
                let bits = |t: &Tensors| {
                    t.values()
                        .flatten()
                        .map(|f| f.to_bits())
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    bits(&whole.tensors),
                    bits(&other.tensors),
                    "{} with {workers} workers",
                    m.name()
                );
            }
        }
    }

    #[test]
    fn ties_keeps_exactly_k_per_unit_even_with_ties_across_chunks() {
        // Every |τ| equal: the threshold cut falls inside a run of ties spanning all chunks.
        let base: Tensors = [
            ("w".to_string(), vec![0.0f32; 50]),
            ("x".to_string(), vec![0.0; 30]),
        ]
        .into();
        let model: Tensors = base
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
