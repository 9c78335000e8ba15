//! The merge driver: reads the safetensors headers of the base and the models (ranged reads),
//! validates them, plans output shards from the base's tensor list and `max_shard_size`, and
//! emits one task per shard. When every shard is written it writes the index and copies the
//! base's config/tokenizer files, so `OUTPUT/model/` is a complete Hugging Face directory.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use mirrorplay_proto::v1::{
    task, task_result, MergeShardTask, MergeSpec, MergeTensor, TaskResult, TensorSource,
};
use mirrorplay_worker::io::hf::{open_model, ModelFiles, TensorEntry, INDEX_FILE};
use mirrorplay_worker::io::store::Location;
use mirrorplay_worker::jobs::merge_shard::{dtype_from_proto, dtype_to_proto};
use serde_json::json;

use super::shard_plan::{plan_shards, Shard};
use super::{DriverError, Log, NewTask, Step};

/// Elements per streamed range: 16 MiB of f32.
pub const CHUNK_ELEMENTS: u64 = 4 * 1024 * 1024;

pub struct MergeDriver {
    spec: MergeSpec,
    /// The job's output prefix; the model goes to `OUTPUT/model/`.
    output: String,
    shards: Vec<Shard>,
    /// Tensor names in output order with their byte sizes.
    names: Vec<(String, u64)>,
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
            shards: vec![],
            names: vec![],
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
        let base = open_model(&self.spec.base).await?;
        let models = try_join_all(self.spec.models.iter().map(|m| open_model(m))).await?;
        let tensors = validate(&base, &models, log)?;
        for file in base
            .files
            .iter()
            .chain(models.iter().flat_map(|m| m.files.iter()))
        {
            let (size, etag) = file.head().await?;
            self.inputs.push((file.url().to_string(), size, etag));
        }
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
        let dir = self.model_dir()?;
        log.info(format!(
            "merging {} tensors ({} bytes) of {} models into {} shard(s) under {}",
            tensors.len(),
            sizes.iter().sum::<u64>(),
            models.len(),
            self.shards.len(),
            dir
        ));
        self.base = Some(base);
        let tasks = self
            .shards
            .iter()
            .enumerate()
            .map(|(k, shard)| NewTask {
                key: format!("shard-{:05}", k + 1),
                group_size: 1,
                work: task::Work::MergeShard(MergeShardTask {
                    spec: Some(self.spec.clone()),
                    file_url: dir.join(&shard.file_name).url().to_string(),
                    tensors: shard.tensors.iter().map(|&i| tensors[i].clone()).collect(),
                    chunk_elements: CHUNK_ELEMENTS,
                }),
            })
            .collect();
        Ok(tasks)
    }

    pub async fn on_result(
        &mut self,
        key: &str,
        result: TaskResult,
        log: &dyn Log,
    ) -> Result<Step, DriverError> {
        let index: usize = key
            .strip_prefix("shard-")
            .and_then(|n| n.parse().ok())
            .filter(|&n: &usize| n >= 1 && n <= self.shards.len())
            .ok_or_else(|| DriverError::Invalid(format!("unexpected task key `{key}`")))?;
        let Some(task_result::Result::MergeShard(r)) = result.result else {
            return Err(DriverError::Invalid(format!(
                "task `{key}` returned no merge result"
            )));
        };
        self.written.insert(index, r.bytes_written);
        if self.written.len() < self.shards.len() {
            return Ok(Step::Wait);
        }
        self.finish(log).await?;
        Ok(Step::Done)
    }

    /// Writes the index and copies the base's non-weight files.
    async fn finish(&self, log: &dyn Log) -> Result<(), DriverError> {
        let dir = self.model_dir()?;
        let mut weight_map = serde_json::Map::new();
        for shard in &self.shards {
            for &i in &shard.tensors {
                weight_map.insert(self.names[i].0.clone(), json!(shard.file_name));
            }
        }
        let total: u64 = self.names.iter().map(|(_, s)| s).sum();
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let mut text = serde_json::to_string_pretty(&index).expect("JSON");
        text.push('\n');
        let base = self
            .base
            .as_ref()
            .ok_or_else(|| DriverError::Invalid("finish before plan".into()))?;
        for extra in &base.extras {
            let bytes = base.root.join(extra).read().await?;
            dir.join(extra).put(bytes).await?;
        }
        dir.join(INDEX_FILE).put(text.into_bytes()).await?;
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

/// Checks the inputs against each other and lists the output tensors in name order.
/// (ALGORITHMS.md §5: a tensor missing from a model is an error naming both; a tensor absent
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
                models: vec![],
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
