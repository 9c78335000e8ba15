//! One round of a merge over one output shard's tensors. Element ranges of the base and every
//! model are streamed with ranged reads (no mmap; a few ranges of at most `chunk_elements` per
//! input in memory, later ranges read and combined while earlier ones are written). A
//! statistics round returns the counts the coordinator's driver asked for (`merge::passes`);
//! the write round combines each range in f32, encodes it in the output dtype and appends it to
//! the streaming safetensors writer, so the file appears only when complete.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::try_join_all;
use mirrorplay_proto::v1::{
    merge_spec, DareRescale, Dtype as ProtoDtype, MergeScope, MergeShardResult, MergeShardTask,
    MergeSpec, MergeStatsResult, MergeTensor, MergeUnitStats, PcbInter, TensorSource,
};

use super::merge_wire;
use super::{JobError, Progress};
use crate::io::dtype::{encode_f32_owned, Dtype};
use crate::io::safetensors::{pt_metadata, TensorLayout};
use crate::io::store::Location;
use crate::io::writer::SafetensorsWriter;
use crate::merge::passes::{self, ChunkStats, Sweep};
use crate::merge::{self, Chunk, Method};

pub fn dtype_from_proto(d: i32) -> Option<Dtype> {
    match ProtoDtype::try_from(d).ok()? {
        ProtoDtype::F32 => Some(Dtype::F32),
        ProtoDtype::F16 => Some(Dtype::F16),
        ProtoDtype::Bf16 => Some(Dtype::BF16),
        ProtoDtype::Unspecified => None,
    }
}

pub fn dtype_to_proto(d: Dtype) -> Option<ProtoDtype> {
    match d {
        Dtype::F32 => Some(ProtoDtype::F32),
        Dtype::F16 => Some(ProtoDtype::F16),
        Dtype::BF16 => Some(ProtoDtype::Bf16),
        _ => None,
    }
}

fn scope(s: i32) -> Result<merge::Scope, JobError> {
    match MergeScope::try_from(s) {
        Ok(MergeScope::Global) => Ok(merge::Scope::Global),
        Ok(MergeScope::PerTensor) => Ok(merge::Scope::PerTensor),
        _ => Err(JobError::InvalidTask(format!(
            "merge scope {s} is not resolved"
        ))),
    }
}

/// The merge method of a resolved spec (the config layer applied every default).
pub fn method_from_spec(spec: &MergeSpec) -> Result<Method, JobError> {
    let n = spec.models.len();
    if spec.weights.len() != n {
        return Err(JobError::InvalidTask(format!(
            "{} weights for {n} models",
            spec.weights.len()
        )));
    }
    let method = match &spec.method {
        Some(merge_spec::Method::TaskArithmetic(_)) => {
            Method::TaskArithmetic(merge::TaskArithmetic {
                weights: spec.weights.clone(),
                lambda: spec.lambda,
            })
        }
        Some(merge_spec::Method::Pcb(p)) => Method::Pcb(merge::Pcb {
            scope: scope(p.scope)?,
            keep_ratio: p.keep_ratio,
            clip_ratio: p.clip_ratio,
            inter: match PcbInter::try_from(p.inter) {
                Ok(PcbInter::SumRaw) => merge::Inter::SumRaw,
                Ok(PcbInter::Pairwise) => merge::Inter::Pairwise,
                _ => return Err(JobError::InvalidTask("PCB inter is not resolved".into())),
            },
            lambda: spec.lambda,
            lambdas: p.lambdas.clone(),
        }),
        Some(merge_spec::Method::Ties(t)) => Method::Ties(merge::Ties {
            scope: scope(t.scope)?,
            density: t.density.clone(),
            weights: spec.weights.clone(),
            normalize: t.normalize,
            lambda: spec.lambda,
        }),
        Some(merge_spec::Method::Dare(d)) => Method::Dare(merge::Dare {
            density: d.density.clone(),
            weights: spec.weights.clone(),
            rescale: match DareRescale::try_from(d.rescale) {
                Ok(DareRescale::InvDensity) => merge::Rescale::InvDensity,
                Ok(DareRescale::L1) => merge::Rescale::L1,
                Ok(DareRescale::None) => merge::Rescale::None,
                _ => return Err(JobError::InvalidTask("DARE rescale is not resolved".into())),
            },
            seed: d.seed,
            lambda: spec.lambda,
            ties: d.ties.then_some(d.normalize),
        }),
        None => return Err(JobError::InvalidTask("merge spec without a method".into())),
    };
    method
        .validate(n)
        .map_err(|e| JobError::InvalidTask(e.to_string()))?;
    Ok(method)
}

/// The input ranges of one chunk, decoded to f32.
struct ChunkData {
    base: Vec<f32>,
    models: Vec<Vec<f32>>,
}

impl ChunkData {
    fn into_buffers(self) -> impl Iterator<Item = Vec<f32>> {
        std::iter::once(self.base).chain(self.models)
    }
}

/// Decoded-range buffers of chunks already computed, reused by later reads: a sweep then
/// allocates (and page-faults in) only the buffers of the chunks in flight, not one per range.
#[derive(Clone, Default)]
struct BufferPool(Arc<std::sync::Mutex<Vec<Vec<f32>>>>);

impl BufferPool {
    fn take(&self) -> Vec<f32> {
        self.0
            .lock()
            .expect("buffer pool lock")
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, buffers: impl Iterator<Item = Vec<f32>>) {
        self.0.lock().expect("buffer pool lock").extend(buffers);
    }
}

/// Opens each distinct URL once.
#[derive(Default)]
struct Files(HashMap<String, Location>);

impl Files {
    fn get(&mut self, url: &str) -> Result<Location, JobError> {
        if let Some(loc) = self.0.get(url) {
            return Ok(loc.clone());
        }
        let loc = Location::parse(url)?;
        self.0.insert(url.to_string(), loc.clone());
        Ok(loc)
    }
}

/// Reads elements `start..end` of the tensor at byte `offset` of `loc` into `out` (a reused
/// buffer; its contents are replaced).
async fn read_range(
    loc: Location,
    src_dtype: Dtype,
    offset: u64,
    start: u64,
    end: u64,
    out: Vec<f32>,
) -> Result<Vec<f32>, JobError> {
    let size = src_dtype.size() as u64;
    let bytes = offset + start * size..offset + end * size;
    Ok(loc.read_range_f32(bytes, src_dtype, out).await?)
}

fn source_dtype(tensor: &str, src: &TensorSource) -> Result<Dtype, JobError> {
    dtype_from_proto(src.dtype).ok_or_else(|| JobError::Tensor {
        tensor: tensor.into(),
        reason: format!("unsupported source dtype {}", src.dtype),
    })
}

type PendingRead = tokio::task::JoinHandle<Result<ChunkData, JobError>>;

/// Starts reading one element range of a tensor from every input.
fn start_read(
    files: &mut Files,
    pool: &BufferPool,
    tensor: &MergeTensor,
    start: u64,
    end: u64,
) -> Result<PendingRead, JobError> {
    let missing = || JobError::Tensor {
        tensor: tensor.name.clone(),
        reason: "no base source".into(),
    };
    let base_src = tensor.base.as_ref().ok_or_else(missing)?;
    let base = (
        files.get(&base_src.url)?,
        source_dtype(&tensor.name, base_src)?,
        base_src.offset,
    );
    let models = tensor
        .models
        .iter()
        .map(|m| Ok((files.get(&m.url)?, source_dtype(&tensor.name, m)?, m.offset)))
        .collect::<Result<Vec<_>, JobError>>()?;
    let base_buffer = pool.take();
    let model_buffers: Vec<Vec<f32>> = models.iter().map(|_| pool.take()).collect();
    Ok(tokio::spawn(async move {
        let base_read = read_range(base.0, base.1, base.2, start, end, base_buffer);
        let model_reads = try_join_all(models.into_iter().zip(model_buffers).map(
            |((loc, dtype, offset), buffer)| read_range(loc, dtype, offset, start, end, buffer),
        ));
        let (base, models) = futures::try_join!(base_read, model_reads)?;
        Ok(ChunkData { base, models })
    }))
}

/// Every (tensor, start, end) range of `tensors`, in order.
fn ranges(tensors: &[MergeTensor], chunk_elements: u64) -> Vec<(usize, u64, u64)> {
    tensors
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            let numel = t.shape.iter().product::<u64>();
            (0..numel)
                .step_by(chunk_elements as usize)
                .map(move |s| (i, s, (s + chunk_elements).min(numel)))
        })
        .collect()
}

/// Chunks read and computed at once: the next ranges are read and combined (on the blocking
/// pool, so on every core) while earlier results are written. Bounds memory to about this many
/// chunks' inputs and outputs (~50–100 MiB each for three f32 models at the driver's 8 MiB
/// ranges, raw and decoded).
const CHUNKS_IN_FLIGHT: usize = 3;

/// What a sweep computes from one chunk (tensor, first element, the inputs' ranges).
type ChunkFn<T> = Arc<dyn Fn(&MergeTensor, u64, &ChunkData) -> Result<T, JobError> + Send + Sync>;

/// Streams the ranges of `tensors` through `f` (run on the blocking pool with the chunk) and
/// hands each result to `sink` in range order.
async fn for_each_chunk<T: Send + 'static>(
    tensors: &[MergeTensor],
    chunk_elements: u64,
    progress: Progress<'_>,
    mut sink: impl FnMut(usize, T) -> futures::future::BoxFuture<'static, Result<(), JobError>>,
    f: ChunkFn<T>,
) -> Result<(), JobError> {
    let ranges = ranges(tensors, chunk_elements);
    let total: u64 = ranges.iter().map(|(_, s, e)| e - s).sum::<u64>().max(1);
    let mut files = Files::default();
    let pool = BufferPool::default();
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = 0;
    let mut done = 0u64;
    while next < ranges.len() || !in_flight.is_empty() {
        while in_flight.len() < CHUNKS_IN_FLIGHT && next < ranges.len() {
            let (i, start, end) = ranges[next];
            let read = start_read(&mut files, &pool, &tensors[i], start, end)?;
            let tensor = tensors[i].clone();
            let (f, pool) = (f.clone(), pool.clone());
            let work = tokio::spawn(async move {
                let data = read
                    .await
                    .map_err(|e| JobError::InvalidTask(format!("read task failed: {e}")))??;
                let (value, data) =
                    tokio::task::spawn_blocking(move || (f(&tensor, start, &data), data))
                        .await
                        .map_err(|e| JobError::InvalidTask(format!("compute task failed: {e}")))?;
                pool.give_back(data.into_buffers());
                value
            });
            in_flight.push_back((i, end - start, work));
            next += 1;
        }
        let (i, elements, work) = in_flight.pop_front().expect("a chunk is in flight");
        let value = work
            .await
            .map_err(|e| JobError::InvalidTask(format!("chunk task failed: {e}")))??;
        sink(i, value).await?;
        done += elements;
        progress(done as f64 / total as f64);
    }
    Ok(())
}

fn merge_error(e: merge::MergeError) -> JobError {
    match e {
        merge::MergeError::Nan { tensor, input } => JobError::Tensor {
            tensor,
            reason: format!("NaN or infinity in {input}"),
        },
        merge::MergeError::Tensor { tensor, reason } => JobError::Tensor { tensor, reason },
        other => JobError::InvalidTask(other.to_string()),
    }
}

/// [`merge_error`] for a chunk of tensor `t`, an input named by its location rather than its
/// position (docs/algorithms.md §5, "Inputs and validation").
fn tensor_error(t: &MergeTensor) -> impl FnOnce(merge::MergeError) -> JobError + '_ {
    move |e| match e {
        merge::MergeError::Nan { tensor, input } => {
            let source = match &input {
                merge::Input::Base => t.base.as_ref(),
                merge::Input::Model(i) => t.models.get(*i),
                merge::Input::Other(_) => None,
            };
            let input = match source {
                Some(s) => merge::Input::Other(s.url.clone()),
                None => input,
            };
            merge_error(merge::MergeError::Nan { tensor, input })
        }
        other => merge_error(other),
    }
}

fn chunk<'a>(
    tensor: &'a MergeTensor,
    start: u64,
    data: &'a ChunkData,
    models: &'a [&'a [f32]],
) -> Chunk<'a> {
    Chunk {
        tensor: &tensor.name,
        tensor_index: tensor.index,
        start,
        base: &data.base,
        models,
    }
}

fn decode_sweeps(task: &MergeShardTask) -> Result<HashMap<u32, Sweep>, JobError> {
    task.sweeps
        .iter()
        .map(|s| {
            Ok((
                s.unit,
                s.sweep
                    .as_ref()
                    .ok_or_else(|| JobError::InvalidTask(format!("unit {} has no sweep", s.unit)))
                    .and_then(|w| {
                        merge_wire::sweep_from_proto(w)
                            .map_err(|e| JobError::InvalidTask(e.to_string()))
                    })?,
            ))
        })
        .collect()
}

fn validate(task: &MergeShardTask) -> Result<(&MergeSpec, Method), JobError> {
    let spec = task
        .spec
        .as_ref()
        .ok_or_else(|| JobError::InvalidTask("merge shard task without a spec".into()))?;
    if task.chunk_elements == 0 {
        return Err(JobError::InvalidTask("chunk_elements is 0".into()));
    }
    Ok((spec, method_from_spec(spec)?))
}

/// Runs a statistics round: what each unit's sweep asks of this shard's chunks.
pub async fn run_stats(
    task: &MergeShardTask,
    progress: Progress<'_>,
) -> Result<MergeStatsResult, JobError> {
    let (_, method) = validate(task)?;
    let sweeps = Arc::new(decode_sweeps(task)?);
    let method = Arc::new(method);
    let chunk_elements = task.chunk_elements;
    let compute = {
        let sweeps = sweeps.clone();
        Arc::new(
            move |tensor: &MergeTensor,
                  start: u64,
                  data: &ChunkData|
                  -> Result<(u32, u64, ChunkStats), JobError> {
                let sweep = sweeps.get(&tensor.unit).ok_or_else(|| {
                    JobError::InvalidTask(format!(
                        "no sweep for unit {} of `{}`",
                        tensor.unit, tensor.name
                    ))
                })?;
                let models: Vec<&[f32]> = data.models.iter().map(Vec::as_slice).collect();
                let c = chunk(tensor, start, data, &models);
                let stats =
                    passes::chunk_stats(&method, sweep, &c).map_err(tensor_error(tensor))?;
                Ok((
                    tensor.unit,
                    tensor.first_chunk + start / chunk_elements,
                    stats,
                ))
            },
        )
    };
    // Counts merge per unit; census and L1 results stay per chunk.
    let counts: Arc<std::sync::Mutex<BTreeMap<u32, (u64, ChunkStats)>>> = Default::default();
    let per_chunk: Arc<std::sync::Mutex<Vec<(u32, u64, ChunkStats)>>> = Default::default();
    let sink = {
        let counts = counts.clone();
        let per_chunk = per_chunk.clone();
        move |_i: usize, (unit, chunk_index, stats): (u32, u64, ChunkStats)| {
            let result = match stats {
                ChunkStats::Counts(_) => {
                    let mut counts = counts.lock().expect("counts lock");
                    match counts.get_mut(&unit) {
                        Some((_, acc)) => acc.merge_counts(&stats).map_err(merge_error),
                        None => {
                            counts.insert(unit, (chunk_index, stats));
                            Ok(())
                        }
                    }
                }
                other => {
                    per_chunk
                        .lock()
                        .expect("per-chunk lock")
                        .push((unit, chunk_index, other));
                    Ok(())
                }
            };
            Box::pin(async move { result })
                as futures::future::BoxFuture<'static, Result<(), JobError>>
        }
    };
    let tensors: Vec<MergeTensor> = task
        .tensors
        .iter()
        .filter(|t| !t.local && !t.models.is_empty())
        .cloned()
        .collect();
    for_each_chunk(&tensors, chunk_elements, progress, sink, compute).await?;
    let mut stats: Vec<MergeUnitStats> = Vec::new();
    for (unit, (chunk, s)) in std::mem::take(&mut *counts.lock().expect("counts lock")) {
        stats.push(MergeUnitStats {
            unit,
            chunk,
            stats: Some(merge_wire::stats_to_proto(&s)),
        });
    }
    for (unit, chunk, s) in std::mem::take(&mut *per_chunk.lock().expect("per-chunk lock")) {
        stats.push(MergeUnitStats {
            unit,
            chunk,
            stats: Some(merge_wire::stats_to_proto(&s)),
        });
    }
    Ok(MergeStatsResult { stats })
}

/// Runs the write round: the shard's file, tensors in name order.
pub async fn run_write(
    task: &MergeShardTask,
    progress: Progress<'_>,
) -> Result<MergeShardResult, JobError> {
    let (_, method) = validate(task)?;
    let sweeps = decode_sweeps(task)?;
    let mut finals = HashMap::new();
    for (unit, sweep) in sweeps {
        match sweep {
            Sweep::Write(f) => finals.insert(unit, f),
            other => {
                return Err(JobError::InvalidTask(format!(
                    "write round with a statistics sweep for unit {unit}: {other:?}"
                )))
            }
        };
    }
    let finals = Arc::new(finals);
    let method = Arc::new(method);
    let chunk_elements = task.chunk_elements;
    let layout = task
        .tensors
        .iter()
        .map(|t| {
            let dtype = dtype_from_proto(t.dtype).ok_or_else(|| JobError::Tensor {
                tensor: t.name.clone(),
                reason: "unsupported output dtype".into(),
            })?;
            Ok(TensorLayout {
                name: t.name.clone(),
                dtype,
                shape: t.shape.clone(),
            })
        })
        .collect::<Result<Vec<_>, JobError>>()?;
    let out_loc = Location::parse(&task.file_url)?;
    let writer = SafetensorsWriter::create(&out_loc, layout.clone(), &pt_metadata()).await?;
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let compute = Arc::new(
        move |tensor: &MergeTensor, start: u64, data: &ChunkData| -> Result<Bytes, JobError> {
            let dtype = dtype_from_proto(tensor.dtype).expect("checked in the layout");
            let mut out = vec![0f32; data.base.len()];
            if tensor.models.is_empty() {
                merge::validate::check_finite_input(&tensor.name, merge::Input::Base, &data.base)
                    .map_err(tensor_error(tensor))?;
                out.copy_from_slice(&data.base);
            } else {
                let models: Vec<&[f32]> = data.models.iter().map(Vec::as_slice).collect();
                let c = chunk(tensor, start, data, &models);
                if tensor.local {
                    passes::merge_local(&method, &c, &mut out).map_err(tensor_error(tensor))?;
                } else {
                    let f = finals.get(&tensor.unit).ok_or_else(|| {
                        JobError::InvalidTask(format!(
                            "no statistics for unit {} of `{}`",
                            tensor.unit, tensor.name
                        ))
                    })?;
                    let index = (tensor.first_chunk + start / chunk_elements) as usize;
                    passes::write_chunk(&method, f, index, &c, &mut out)
                        .map_err(tensor_error(tensor))?;
                }
            }
            Ok(encode_f32_owned(dtype, out))
        },
    );
    let sink = {
        let writer = writer.clone();
        move |_i: usize, bytes: Bytes| {
            let writer = writer.clone();
            Box::pin(async move { Ok(writer.lock().await.write_owned(bytes).await?) })
                as futures::future::BoxFuture<'static, Result<(), JobError>>
        }
    };
    let result = for_each_chunk(&task.tensors, chunk_elements, progress, sink, compute).await;
    let mut writer = Arc::try_unwrap(writer)
        .map_err(|_| JobError::InvalidTask("writer still shared".into()))?
        .into_inner();
    if let Err(e) = result {
        writer.abort().await;
        return Err(e);
    }
    let summary = writer.finish().await?;
    Ok(MergeShardResult {
        bytes_written: summary.bytes,
        sha256: summary.sha256,
    })
}

/// The number of chunks of a tensor (0 for an empty one).
pub fn num_chunks(numel: u64, chunk_elements: u64) -> u64 {
    numel.div_ceil(chunk_elements)
}
