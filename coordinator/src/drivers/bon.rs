//! The best-of-n driver: checks the ensemble manifest before any work, splits the held-out
//! prompts into shards of `prompts_per_shard` (one task each, any worker), and when every
//! shard has reported writes `OUTPUT/bon.csv`: one row per (scorer, n) with KL_bon and the
//! estimated proxy and gold of best-of-n averaged over the prompts (docs/algorithms.md §4).

use mirrorplay_proto::v1::{task, task_result, BonShardTask, BonSpec, TaskResult};
use mirrorplay_worker::io::Location;
use mirrorplay_worker::preference::bon::kl_bon;
use mirrorplay_worker::preference::manifest::Manifest;

use super::{inputs, DriverError, Log, NewTask, Step};

pub struct BonDriver {
    spec: BonSpec,
    output: String,
    seed: u64,
    shards: usize,
    done: usize,
    prompts: u64,
    scorers: Vec<String>,
    ns: Vec<u32>,
    proxy: Vec<f64>,
    gold: Vec<f64>,
    /// The files it reads, found when planning (job.json).
    inputs: Vec<inputs::Input>,
}

impl BonDriver {
    pub fn new(spec: BonSpec, output: String, seed: u64) -> Self {
        BonDriver {
            spec,
            output: output.trim_end_matches('/').to_string(),
            seed,
            shards: 0,
            done: 0,
            prompts: 0,
            scorers: vec![],
            ns: vec![],
            proxy: vec![],
            gold: vec![],
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
            inputs::model_url(self.spec.policy.as_ref()),
        ]
        .into_iter()
        .flatten()
        .chain(members)
        .collect();
        self.inputs = inputs::files_at(&urls).await;
        let per = self.spec.prompts_per_shard.max(1);
        let total = self.spec.prompts;
        let tasks: Vec<NewTask> = (0..total)
            .step_by(per as usize)
            .enumerate()
            .map(|(i, first)| NewTask {
                key: format!("shard-{i}"),
                work: task::Work::BonShard(BonShardTask {
                    spec: Some(self.spec.clone()),
                    first_prompt: u64::from(first),
                    prompts: per.min(total - first),
                    seed: self.seed,
                }),
                group_size: 1,
                min_group_size: 1,
            })
            .collect();
        self.shards = tasks.len();
        log.info(format!(
            "best-of-n: {} held-out prompts × {} samples, n up to {}, {} shards, writing {}/bon.csv",
            total,
            self.spec.samples,
            self.spec.max_n,
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
        let Some(task_result::Result::BonShard(r)) = result.result else {
            return Err(DriverError::Invalid(format!(
                "task `{key}` returned no best-of-n result"
            )));
        };
        let rows = r.scorers.len() * r.ns.len();
        if self.scorers.is_empty() {
            self.scorers = r.scorers.clone();
            self.ns = r.ns.clone();
            self.proxy = vec![0.0; rows];
            self.gold = vec![0.0; rows];
        }
        if r.scorers != self.scorers
            || r.ns != self.ns
            || r.proxy_sums.len() != rows
            || r.gold_sums.len() != rows
        {
            return Err(DriverError::Invalid(format!(
                "task `{key}` returned a different scorer × n grid than the other shards"
            )));
        }
        for (a, b) in self.proxy.iter_mut().zip(&r.proxy_sums) {
            *a += b;
        }
        for (a, b) in self.gold.iter_mut().zip(&r.gold_sums) {
            *a += b;
        }
        self.prompts += u64::from(r.prompts);
        self.done += 1;
        if self.done < self.shards {
            return Ok(Step::Wait);
        }
        let url = format!("{}/bon.csv", self.output);
        Location::parse(&url)?.put(self.csv().into_bytes()).await?;
        log.info(format!("best-of-n over {} prompts: {url}", self.prompts));
        Ok(Step::Done)
    }

    /// `scorer,n,kl_bon,proxy,gold`, means over the prompts.
    fn csv(&self) -> String {
        let p = self.prompts.max(1) as f64;
        let mut out = String::from("scorer,n,kl_bon,proxy,gold\n");
        for (s, scorer) in self.scorers.iter().enumerate() {
            for (j, &n) in self.ns.iter().enumerate() {
                let i = s * self.ns.len() + j;
                out.push_str(&format!(
                    "{scorer},{n},{},{},{}\n",
                    kl_bon(n as usize),
                    self.proxy[i] / p,
                    self.gold[i] / p
                ));
            }
        }
        out
    }
}
