//! Writes one output shard of a merge: for each tensor in name order, stream element ranges of
//! the base and every model (ranged reads, no mmap), combine them in f32, encode in the output
//! dtype and append to the streaming safetensors writer. Reads of the next range overlap the
//! computation of the current one, so the shard is written at close to I/O speed.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::try_join_all;
use mirrorplay_proto::v1::{
    merge_spec, Dtype as ProtoDtype, MergeShardResult, MergeShardTask, MergeSpec, MergeTensor,
    TensorSource,
};

use super::{JobError, Progress};
use crate::io::dtype::{decode_f32, encode_f32, Dtype};
use crate::io::safetensors::{pt_metadata, TensorLayout};
use crate::io::store::Location;
use crate::io::writer::SafetensorsWriter;

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

/// Element ranges of one tensor read together: base, then each model, decoded to f32.
struct Chunk {
    base: Vec<f32>,
    models: Vec<Vec<f32>>,
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

async fn read_range(
    loc: Location,
    src_dtype: Dtype,
    offset: u64,
    start: u64,
    end: u64,
) -> Result<Vec<f32>, JobError> {
    let size = src_dtype.size() as u64;
    let bytes = loc
        .read_range(offset + start * size..offset + end * size)
        .await?;
    let mut out = Vec::with_capacity((end - start) as usize);
    decode_f32(src_dtype, &bytes, &mut out);
    Ok(out)
}

fn source_dtype(tensor: &str, src: &TensorSource) -> Result<Dtype, JobError> {
    dtype_from_proto(src.dtype).ok_or_else(|| JobError::Tensor {
        tensor: tensor.into(),
        reason: format!("unsupported source dtype {}", src.dtype),
    })
}

/// Combines one chunk into `out`: θ = θ_base + λ Σ_i w_i (θ_i − θ_base) (task arithmetic,
/// Ilharco et al. 2023, "Editing Models with Task Arithmetic", §2). A tensor with no models is
/// copied from its base source.
fn combine(spec: &MergeSpec, chunk: &Chunk, out: &mut Vec<f32>) {
    out.clear();
    out.extend_from_slice(&chunk.base);
    match &spec.method {
        Some(merge_spec::Method::TaskArithmetic(_)) | None => {
            for (model, &w) in chunk.models.iter().zip(&spec.weights) {
                let scale = spec.lambda * w;
                for ((o, &m), &b) in out.iter_mut().zip(model).zip(&chunk.base) {
                    *o += scale * (m - b);
                }
            }
        }
        Some(_) => unreachable!("validate() rejects methods other than task_arithmetic"),
    }
}

fn validate(task: &MergeShardTask) -> Result<&MergeSpec, JobError> {
    let spec = task
        .spec
        .as_ref()
        .ok_or_else(|| JobError::InvalidTask("merge shard task without a spec".into()))?;
    match &spec.method {
        Some(merge_spec::Method::TaskArithmetic(_)) => {}
        other => {
            return Err(JobError::InvalidTask(format!(
                "merge method {other:?} is not supported by this worker"
            )))
        }
    }
    if spec.weights.len() != spec.models.len() {
        return Err(JobError::InvalidTask(format!(
            "{} weights for {} models",
            spec.weights.len(),
            spec.models.len()
        )));
    }
    if task.chunk_elements == 0 {
        return Err(JobError::InvalidTask("chunk_elements is 0".into()));
    }
    Ok(spec)
}

/// Runs a merge shard task; the file appears only when complete.
pub async fn run(
    task: &MergeShardTask,
    progress: Progress<'_>,
) -> Result<MergeShardResult, JobError> {
    let spec = validate(task)?;
    let mut files = Files::default();
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
    let total_elements: u64 = layout
        .iter()
        .map(|l| l.shape.iter().product::<u64>())
        .sum::<u64>()
        .max(1);
    let out_loc = Location::parse(&task.file_url)?;
    let mut writer = SafetensorsWriter::create(&out_loc, layout.clone(), &pt_metadata()).await?;
    let result = write_tensors(
        task,
        spec,
        &layout,
        &mut files,
        &mut writer,
        total_elements,
        progress,
    )
    .await;
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

/// The reads of one chunk, started ahead of time.
type PendingChunk = tokio::task::JoinHandle<Result<Chunk, JobError>>;

fn start_chunk(
    files: &mut Files,
    tensor: &MergeTensor,
    start: u64,
    end: u64,
) -> Result<PendingChunk, JobError> {
    let base_src = tensor.base.as_ref().ok_or_else(|| JobError::Tensor {
        tensor: tensor.name.clone(),
        reason: "no base source".into(),
    })?;
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
    Ok(tokio::spawn(async move {
        let base_read = read_range(base.0, base.1, base.2, start, end);
        let model_reads = try_join_all(
            models
                .into_iter()
                .map(|(loc, dtype, offset)| read_range(loc, dtype, offset, start, end)),
        );
        let (base, models) = futures::try_join!(base_read, model_reads)?;
        Ok(Chunk { base, models })
    }))
}

async fn write_tensors(
    task: &MergeShardTask,
    spec: &MergeSpec,
    layout: &[TensorLayout],
    files: &mut Files,
    writer: &mut SafetensorsWriter,
    total_elements: u64,
    progress: Progress<'_>,
) -> Result<(), JobError> {
    // All (tensor, start, end) ranges of the shard, in write order.
    let ranges: Vec<(usize, u64, u64)> = layout
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            let numel = l.shape.iter().product::<u64>();
            (0..numel)
                .step_by(task.chunk_elements as usize)
                .map(move |s| (i, s, (s + task.chunk_elements).min(numel)))
        })
        .collect();
    let spec = Arc::new(spec.clone());
    let mut pending: Option<PendingChunk> = match ranges.first() {
        Some(&(i, s, e)) => Some(start_chunk(files, &task.tensors[i], s, e)?),
        None => None,
    };
    let mut done_elements = 0u64;
    for (k, &(i, start, end)) in ranges.iter().enumerate() {
        let chunk = pending
            .take()
            .expect("a chunk is pending for every range")
            .await
            .map_err(|e| JobError::InvalidTask(format!("read task panicked: {e}")))??;
        if let Some(&(ni, ns, ne)) = ranges.get(k + 1) {
            pending = Some(start_chunk(files, &task.tensors[ni], ns, ne)?);
        }
        let name = task.tensors[i].name.clone();
        let dtype = layout[i].dtype;
        let spec = spec.clone();
        let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, JobError> {
            for (which, values) in std::iter::once(&chunk.base)
                .chain(&chunk.models)
                .enumerate()
            {
                if let Some(pos) = values.iter().position(|v| v.is_nan()) {
                    let input = if which == 0 {
                        "the base".to_string()
                    } else {
                        format!("model {which}")
                    };
                    return Err(JobError::Tensor {
                        tensor: name,
                        reason: format!("NaN in {input} at flat index {}", start + pos as u64),
                    });
                }
            }
            let mut out = Vec::new();
            combine(&spec, &chunk, &mut out);
            let mut bytes = Vec::with_capacity(out.len() * dtype.size());
            encode_f32(dtype, &out, &mut bytes);
            Ok(bytes)
        })
        .await
        .map_err(|e| JobError::InvalidTask(format!("compute task panicked: {e}")))??;
        writer.write(&bytes).await?;
        done_elements += end - start;
        progress(done_elements as f64 / total_elements as f64);
    }
    Ok(())
}
