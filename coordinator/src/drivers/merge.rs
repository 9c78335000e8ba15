//! The merge driver: reads the safetensors headers of the base and the models (ranged reads),
//! validates them, plans output shards from the base's tensor list and `max_shard_size`, then
//! runs rounds over the shards: statistics rounds while some unit (the whole model in global
//! scope, else a tensor) still needs order statistics (docs/algorithms.md §5; `merge::passes`), and
//! finally the write round. Results of a round are combined here between rounds. When every
//! shard is written it writes the index and copies the base's config/tokenizer files, so
//! `OUTPUT/model/` is a complete Hugging Face directory.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use mirrorplay_proto::v1::{
    task, task_result, MergeShardTask, MergeSpec, MergeTensor, MergeUnitSweep, TaskResult,
    TensorSource,
};
use mirrorplay_worker::io::hf::{open_model, ModelFiles, TensorEntry, INDEX_FILE};
use mirrorplay_worker::io::shard_plan::{index_json, plan_shards, Shard};
use mirrorplay_worker::io::store::Location;
use mirrorplay_worker::jobs::merge_shard::{
    dtype_from_proto, dtype_to_proto, method_from_spec, num_chunks,
};
use mirrorplay_worker::jobs::merge_wire;
use mirrorplay_worker::merge::passes::{SweepStats, UnitPlan};
use mirrorplay_worker::merge::{Method, Scope};

use super::{DriverError, Log, NewTask, Step};

/// Elements per streamed range: 8 MiB of f32 per input. With 3 chunks in flight, each holding
/// every input's range raw and decoded plus the method's temporaries, a PCB worker on 3 × 2 GiB
/// models was seen at 0.9 GiB RSS with 16 MiB ranges; measured peaks in BENCHMARKS.md.
pub const CHUNK_ELEMENTS: u64 = 2 * 1024 * 1024;
/// Overrides `CHUNK_ELEMENTS` (tests use tiny chunks so that units cross chunk boundaries).
pub const CHUNK_ELEMENTS_ENV: &str = "MIRRORPLAY_MERGE_CHUNK_ELEMENTS";

fn chunk_elements() -> u64 {
    std::env::var(CHUNK_ELEMENTS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &u64| n > 0)
        .unwrap_or(CHUNK_ELEMENTS)
}

/// A statistics unit and the results of its current sweep.
struct Unit {
    plan: UnitPlan,
    stats: Option<SweepStats>,
}

pub struct MergeDriver {
    spec: MergeSpec,
    /// The job's output prefix; the model goes to `OUTPUT/model/`.
    output: String,
    chunk_elements: u64,
    shards: Vec<Shard>,
    /// Output tensors in name order (with unit assignments).
    tensors: Vec<MergeTensor>,
    /// Tensor names in output order with their byte sizes.
    names: Vec<(String, u64)>,
    units: Vec<Unit>,
    round: u32,
    /// Shards whose task in the current round has not reported.
    outstanding: std::collections::BTreeSet<usize>,
    written: BTreeMap<usize, u64>,
    base: Option<ModelFiles>,
    inputs: Vec<(String, u64, Option<String>)>,
}

fn source(model: &ModelFiles, entry: &TensorEntry) -> TensorSource {
    TensorSource {
        url: model.file_of(entry).url().to_string(),
        offset: entry.info.start,
        dtype: dtype_to_proto(entry.info.dtype)
            .map(|d| d as i32)
            .unwrap_or_default(),
    }
}

impl MergeDriver {
    pub fn new(spec: MergeSpec, output: String) -> Self {
        MergeDriver {
            spec,
            output,
            chunk_elements: chunk_elements(),
            shards: vec![],
            tensors: vec![],
            names: vec![],
            units: vec![],
            round: 0,
            outstanding: Default::default(),
            written: BTreeMap::new(),
            base: None,
            inputs: vec![],
        }
    }

    pub fn inputs(&self) -> Vec<(String, u64, Option<String>)> {
        self.inputs.clone()
    }

    fn model_dir(&self) -> Result<Location, DriverError> {
        Ok(Location::parse(&format!("{}/model", self.output))?)
    }

    pub async fn plan(&mut self, log: &dyn Log) -> Result<Vec<NewTask>, DriverError> {
        let method =
            method_from_spec(&self.spec).map_err(|e| DriverError::Invalid(e.to_string()))?;
        let base = open_model(&self.spec.base).await?;
        let models = try_join_all(self.spec.models.iter().map(|m| open_model(m))).await?;
        let mut tensors = validate(&base, &models, log)?;
        for file in base
            .files
            .iter()
            .chain(models.iter().flat_map(|m| m.files.iter()))
        {
            let (size, etag) = file.head().await?;
            self.inputs.push((file.url().to_string(), size, etag));
        }
        self.units = assign_units(&method, &mut tensors, self.chunk_elements)?;
        self.names = tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.shape.iter().product::<u64>() * dtype_size(t.dtype),
                )
            })
            .collect();
        let sizes: Vec<u64> = self.names.iter().map(|(_, s)| *s).collect();
        self.shards = plan_shards(&sizes, self.spec.max_shard_size);
        log.info(format!(
            "{}: merging {} tensors ({} bytes) of {} models into {} shard(s) under {}",
            method.name(),
            tensors.len(),
            sizes.iter().sum::<u64>(),
            models.len(),
            self.shards.len(),
            self.model_dir()?
        ));
        self.tensors = tensors;
        self.base = Some(base);
        self.next_round(log)
    }

    /// The next round's tasks: statistics while a unit needs them, else the write.
    fn next_round(&mut self, log: &dyn Log) -> Result<Vec<NewTask>, DriverError> {
        self.round += 1;
        let dir = self.model_dir()?;
        let writing = self.units.iter().all(|u| u.plan.is_ready());
        let mut sweeps = Vec::new();
        for (i, unit) in self.units.iter_mut().enumerate() {
            let sweep = unit.plan.sweep();
            unit.stats = (!writing && !unit.plan.is_ready()).then(|| SweepStats::new(&sweep));
            if writing || unit.stats.is_some() {
                sweeps.push((
                    i as u32,
                    MergeUnitSweep {
                        unit: i as u32,
                        sweep: Some(merge_wire::sweep_to_proto(&sweep)),
                    },
                ));
            }
        }
        if !writing {
            log.info(format!(
                "round {}: statistics for {} unit(s)",
                self.round,
                sweeps.len()
            ));
        }
        let mut tasks = Vec::new();
        for (k, shard) in self.shards.iter().enumerate() {
            let tensors: Vec<MergeTensor> = shard
                .tensors
                .iter()
                .map(|&i| &self.tensors[i])
                .filter(|t| {
                    writing
                        || (!t.local
                            && !t.models.is_empty()
                            && self.units[t.unit as usize].stats.is_some())
                })
                .cloned()
                .collect();
            if tensors.is_empty() && !writing {
                continue;
            }
            let used: std::collections::BTreeSet<u32> = tensors
                .iter()
                .filter(|t| !t.local && !t.models.is_empty())
                .map(|t| t.unit)
                .collect();
            self.outstanding.insert(k);
            tasks.push(NewTask {
                key: format!("r{}-shard-{:05}", self.round, k + 1),
                group_size: 1,
                min_group_size: 0,
                work: task::Work::MergeShard(MergeShardTask {
                    spec: Some(self.spec.clone()),
                    file_url: dir.join(&shard.file_name).url().to_string(),
                    tensors,
                    chunk_elements: self.chunk_elements,
                    sweeps: sweeps
                        .iter()
                        .filter(|(u, _)| used.contains(u))
                        .map(|(_, s)| s.clone())
                        .collect(),
                    write: writing,
                }),
            });
        }
        Ok(tasks)
    }

    pub async fn on_result(
        &mut self,
        key: &str,
        result: TaskResult,
        log: &dyn Log,
    ) -> Result<Step, DriverError> {
        let parsed = key
            .strip_prefix('r')
            .and_then(|k| k.split_once("-shard-"))
            .and_then(|(r, s)| Some((r.parse::<u32>().ok()?, s.parse::<usize>().ok()?)));
        let shard = match parsed {
            Some((r, s)) if r == self.round && s >= 1 && self.outstanding.contains(&(s - 1)) => {
                s - 1
            }
            _ => {
                return Err(DriverError::Invalid(format!(
                    "unexpected task key `{key}` in round {}",
                    self.round
                )))
            }
        };
        self.outstanding.remove(&shard);
        match result.result {
            Some(task_result::Result::MergeStats(stats)) => {
                for s in stats.stats {
                    let unit = self.units.get_mut(s.unit as usize).ok_or_else(|| {
                        DriverError::Invalid(format!(
                            "task `{key}` reported unknown unit {}",
                            s.unit
                        ))
                    })?;
                    let decoded = s
                        .stats
                        .as_ref()
                        .ok_or_else(|| {
                            mirrorplay_worker::merge::MergeError::Counts("no statistics".into())
                        })
                        .and_then(merge_wire::stats_from_proto)
                        .map_err(|e| DriverError::Invalid(format!("task `{key}`: {e}")))?;
                    let acc = unit.stats.as_mut().ok_or_else(|| {
                        DriverError::Invalid(format!(
                            "task `{key}` reported unit {} outside its round",
                            s.unit
                        ))
                    })?;
                    acc.add(s.chunk as usize, decoded)
                        .map_err(|e| DriverError::Invalid(e.to_string()))?;
                }
                if !self.outstanding.is_empty() {
                    return Ok(Step::Wait);
                }
                for unit in &mut self.units {
                    if let Some(stats) = unit.stats.take() {
                        unit.plan
                            .absorb(stats)
                            .map_err(|e| DriverError::Invalid(e.to_string()))?;
                    }
                }
                Ok(Step::Run(self.next_round(log)?))
            }
            Some(task_result::Result::MergeShard(r)) => {
                self.written.insert(shard, r.bytes_written);
                if self.written.len() < self.shards.len() {
                    return Ok(Step::Wait);
                }
                self.finish(log).await?;
                Ok(Step::Done)
            }
            _ => Err(DriverError::Invalid(format!(
                "task `{key}` returned no merge result"
            ))),
        }
    }

    /// Writes the index and copies the base's non-weight files.
    async fn finish(&self, log: &dyn Log) -> Result<(), DriverError> {
        let dir = self.model_dir()?;
        let names: Vec<&str> = self.names.iter().map(|(n, _)| n.as_str()).collect();
        let index = index_json(&self.shards, &names);
        let base = self
            .base
            .as_ref()
            .ok_or_else(|| DriverError::Invalid("finish before plan".into()))?;
        for extra in &base.extras {
            let bytes = base.root.join(extra).read().await?;
            dir.join(extra).put(bytes).await?;
        }
        dir.join(INDEX_FILE).put(index).await?;
        log.info(format!(
            "wrote {} shard(s) and {INDEX_FILE} to {dir}",
            self.shards.len()
        ));
        Ok(())
    }
}

fn dtype_size(d: i32) -> u64 {
    dtype_from_proto(d).map(|d| d.size() as u64).unwrap_or(4)
}

/// Groups the merged tensors into statistics units (docs/algorithms.md §5: "global" statistics run
/// over every merged parameter at once, "per-tensor" over one tensor) and numbers their chunks.
/// A per-tensor unit that fits one chunk is merged locally in the write round.
fn assign_units(
    method: &Method,
    tensors: &mut [MergeTensor],
    chunk_elements: u64,
) -> Result<Vec<Unit>, DriverError> {
    let scope = match method {
        Method::Pcb(p) => p.scope,
        Method::Ties(t) => t.scope,
        Method::TaskArithmetic(_) | Method::Dare(_) => Scope::PerTensor,
    };
    let mut units = Vec::new();
    let invalid = |e: mirrorplay_worker::merge::MergeError| DriverError::Invalid(e.to_string());
    match scope {
        Scope::Global => {
            let (mut d, mut chunks) = (0u64, 0u64);
            for t in tensors.iter_mut().filter(|t| !t.models.is_empty()) {
                let numel: u64 = t.shape.iter().product();
                t.unit = 0;
                t.first_chunk = chunks;
                d += numel;
                chunks += num_chunks(numel, chunk_elements);
            }
            if d > 0 {
                units.push(Unit {
                    plan: UnitPlan::new(method, "the whole model", d, chunks as usize)
                        .map_err(invalid)?,
                    stats: None,
                });
            }
        }
        Scope::PerTensor => {
            for t in tensors.iter_mut().filter(|t| !t.models.is_empty()) {
                let numel: u64 = t.shape.iter().product();
                let chunks = num_chunks(numel, chunk_elements);
                if chunks <= 1 {
                    t.local = true;
                    continue;
                }
                t.unit = units.len() as u32;
                t.first_chunk = 0;
                units.push(Unit {
                    plan: UnitPlan::new(method, &t.name, numel, chunks as usize)
                        .map_err(invalid)?,
                    stats: None,
                });
            }
        }
    }
    Ok(units)
}

/// Checks the inputs against each other and lists the output tensors in name order.
/// (docs/algorithms.md §5: a tensor missing from a model is an error naming both; a tensor absent
/// from the base is copied from the first model with a warning; shapes and dtypes must agree.)
fn validate(
    base: &ModelFiles,
    models: &[ModelFiles],
    log: &dyn Log,
) -> Result<Vec<MergeTensor>, DriverError> {
    let mut out = Vec::new();
    for (name, entry) in &base.tensors {
        let dtype = dtype_to_proto(entry.info.dtype).ok_or_else(|| {
            DriverError::Invalid(format!(
                "{}: tensor `{name}` has dtype {}; only F32, F16 and BF16 can be merged",
                base.source, entry.info.dtype
            ))
        })?;
        let mut sources = Vec::new();
        for model in models {
            let m = model.tensors.get(name).ok_or_else(|| {
                DriverError::Invalid(format!(
                    "tensor `{name}` of the base {} is missing from model {}",
                    base.source, model.source
                ))
            })?;
            if m.info.shape != entry.info.shape {
                return Err(DriverError::Invalid(format!(
                    "tensor `{name}`: shape {:?} in model {} differs from {:?} in the base {}",
                    m.info.shape, model.source, entry.info.shape, base.source
                )));
            }
            if m.info.dtype != entry.info.dtype {
                return Err(DriverError::Invalid(format!(
                    "tensor `{name}`: dtype {} in model {} differs from {} in the base {}",
                    m.info.dtype, model.source, entry.info.dtype, base.source
                )));
            }
            sources.push(source(model, m));
        }
        out.push(MergeTensor {
            name: name.clone(),
            shape: entry.info.shape.clone(),
            dtype: dtype as i32,
            base: Some(source(base, entry)),
            models: sources,
            index: out.len() as u64,
            ..Default::default()
        });
    }
    if let Some(first) = models.first() {
        for (name, entry) in &first.tensors {
            if base.tensors.contains_key(name) {
                continue;
            }
            let dtype = dtype_to_proto(entry.info.dtype).ok_or_else(|| {
                DriverError::Invalid(format!(
                    "{}: tensor `{name}` has unsupported dtype {}",
                    first.source, entry.info.dtype
                ))
            })?;
            log.warn(format!(
                "tensor `{name}` is not in the base; copying it from {}",
                first.source
            ));
            out.push(MergeTensor {
                name: name.clone(),
                shape: entry.info.shape.clone(),
                dtype: dtype as i32,
                base: Some(source(first, entry)),
                ..Default::default()
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if out.is_empty() {
        return Err(DriverError::Invalid(format!(
            "the base {} has no tensors",
            base.source
        )));
    }
    Ok(out)
}
