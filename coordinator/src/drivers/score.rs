//! The score driver: checks every row of the data (`reward::score_rows`: single completions or
//! chosen/rejected pairs, one form per file) and the ensemble manifest before any work, splits
//! the rows into shards of `shard_rows` (one task each, any worker), and when all are scored
//! writes `OUTPUT/summary.json`: rows, completions, each scorer's mean over completions and the
//! mean ensemble variance, and for pairs each scorer's accuracy (the fraction of pairs whose
//! chosen completion it scores higher, ties ½). Each shard writes its own
//! `OUTPUT/scores/part-NNNNN.jsonl`.

use mirrorplay_proto::v1::{task, task_result, ScoreShardTask, ScoreSpec, TaskResult};
use mirrorplay_worker::io::jsonl::read_objects;
use mirrorplay_worker::io::Location;
use mirrorplay_worker::preference::manifest::Manifest;
use mirrorplay_worker::reward::score_rows::{check_rows, RowForm};
use serde_json::json;

use super::{inputs, DriverError, Log, NewTask, Step};

pub struct ScoreDriver {
    spec: ScoreSpec,
    output: String,
    seed: u64,
    shards: usize,
    done: usize,
    rows: u64,
    completions: u64,
    pairs: u64,
    form: Option<RowForm>,
    scorers: Vec<String>,
    sums: Vec<f64>,
    variance_sum: f64,
    prefers_chosen: Vec<f64>,
    /// The files it reads, found when planning (job.json).
    inputs: Vec<inputs::Input>,
}

impl ScoreDriver {
    pub fn new(spec: ScoreSpec, output: String, seed: u64) -> Self {
        ScoreDriver {
            spec,
            output: output.trim_end_matches('/').to_string(),
            seed,
            shards: 0,
            done: 0,
            rows: 0,
            completions: 0,
            pairs: 0,
            form: None,
            scorers: vec![],
            sums: vec![],
            variance_sum: 0.0,
            prefers_chosen: vec![],
            inputs: vec![],
        }
    }

    pub fn inputs(&self) -> Vec<(String, u64, Option<String>)> {
        self.inputs.clone()
    }

    pub async fn plan(&mut self, log: &dyn Log) -> Result<Vec<NewTask>, DriverError> {
        let (_, members) = Manifest::read(&self.spec.ensemble)
            .await
            .map_err(|e| DriverError::Invalid(e.to_string()))?;
        let urls: Vec<String> = [
            Some(self.spec.ensemble.clone()),
            Some(self.spec.data_url.clone()),
            inputs::model_url(self.spec.reference.as_ref()),
        ]
        .into_iter()
        .flatten()
        .chain(members)
        .collect();
        self.inputs = inputs::files_at(&urls).await;
        let url = &self.spec.data_url;
        let objects = read_objects(url).await?;
        self.form = Some(check_rows(url, &objects)?);
        let per = self.spec.shard_rows.max(1) as usize;
        let tasks: Vec<NewTask> = (0..objects.len())
            .step_by(per)
            .enumerate()
            .map(|(i, first)| NewTask {
                key: format!("shard-{i}"),
                work: task::Work::ScoreShard(ScoreShardTask {
                    spec: Some(self.spec.clone()),
                    shard: i as u32,
                    first_row: first as u64,
                    rows: per.min(objects.len() - first) as u64,
                    output_url: format!("{}/scores/part-{i:05}.jsonl", self.output),
                    seed: self.seed,
                }),
                group_size: 1,
                min_group_size: 1,
            })
            .collect();
        self.shards = tasks.len();
        log.info(format!(
            "score: {} rows ({}) of {url} in {} shards, writing under {}",
            objects.len(),
            match self.form {
                Some(RowForm::Pair) => "chosen/rejected pairs",
                _ => "single completions",
            },
            tasks.len(),
            self.output
        ));
        Ok(tasks)
    }

    pub async fn on_result(
        &mut self,
        key: &str,
        result: TaskResult,
        log: &dyn Log,
    ) -> Result<Step, DriverError> {
        let Some(task_result::Result::ScoreShard(r)) = result.result else {
            return Err(DriverError::Invalid(format!(
                "task `{key}` returned no score result"
            )));
        };
        if self.scorers.is_empty() {
            self.scorers = r.scorers.clone();
            self.sums = vec![0.0; r.scorers.len()];
            self.prefers_chosen = vec![0.0; r.scorers.len()];
        }
        if r.scorers != self.scorers
            || r.sums.len() != self.sums.len()
            || (r.pairs > 0 && r.prefers_chosen.len() != self.prefers_chosen.len())
        {
            return Err(DriverError::Invalid(format!(
                "task `{key}` scored with {:?}, other shards with {:?}",
                r.scorers, self.scorers
            )));
        }
        for (s, v) in self.sums.iter_mut().zip(&r.sums) {
            *s += v;
        }
        for (s, v) in self.prefers_chosen.iter_mut().zip(&r.prefers_chosen) {
            *s += v;
        }
        self.variance_sum += r.variance_sum;
        self.rows += r.rows;
        self.completions += r.completions;
        self.pairs += r.pairs;
        self.done += 1;
        if self.done < self.shards {
            return Ok(Step::Wait);
        }
        let n = self.completions.max(1) as f64;
        let per_scorer = |values: &[f64], d: f64| -> serde_json::Map<String, serde_json::Value> {
            self.scorers
                .iter()
                .zip(values)
                .map(|(name, s)| (name.clone(), json!(s / d)))
                .collect()
        };
        let means = per_scorer(&self.sums, n);
        let mut summary = json!({
            "rows": self.rows,
            "completions": self.completions,
            "ensemble": self.spec.ensemble,
            "data": self.spec.data_url,
            "normalize": self.spec.normalize,
            "uwo_lambda": self.spec.uwo_lambda,
            "mean": means,
            "mean_variance": self.variance_sum / n,
            "parts": format!("{}/scores/", self.output),
        });
        if self.pairs > 0 {
            let fields = summary.as_object_mut().expect("an object");
            fields.insert("pairs".into(), json!(self.pairs));
            fields.insert(
                "accuracy".into(),
                json!(per_scorer(&self.prefers_chosen, self.pairs as f64)),
            );
        }
        let url = format!("{}/summary.json", self.output);
        Location::parse(&url)?
            .put(serde_json::to_vec_pretty(&summary).expect("JSON"))
            .await?;
        log.info(format!("scored {} rows; summary: {url}", self.rows));
        if self.pairs > 0 {
            let acc = |name: &str| {
                let i = self.scorers.iter().position(|s| s == name)?;
                Some(self.prefers_chosen[i] / self.pairs as f64)
            };
            if let (Some(mean), Some(wco)) = (acc("mean"), acc("wco")) {
                log.info(format!(
                    "pair accuracy over {} pairs: mean {mean:.3}, wco {wco:.3} (every scorer in the summary)",
                    self.pairs
                ));
            }
        }
        Ok(Step::Done)
    }
}
