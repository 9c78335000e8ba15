//! One shard of a score job: rows `[first_row, first_row + rows)` of a JSONL of single
//! completions or of labelled pairs (`super::score_rows`) scored by an ensemble: each
//! completion's raw member scores, normalised scores z, every scorer's value (`super::scorers`)
//! and the ensemble variance — for a pair, both completions and whether each scorer ranks the
//! chosen one higher — written as one JSONL part (`OUTPUT/scores/part-NNNNN.jsonl`) with the sums
//! the coordinator's summary needs.
//!
//! Text is tokenised as SFT examples are (`train::data`): the prompt through `PromptFormat`,
//! the completion without special tokens and ending with the members' EOS.

use std::collections::BTreeMap;

use candle_core::Device;
use mirrorplay_proto::v1::{ScoreShardResult, ScoreShardTask};
use serde_json::{json, Map, Value};

use super::ensemble::LoadedEnsemble;
use super::score_rows::row_text;
use super::scorers::{Scored, Scorers};
use super::{samples_of_prompt, RewardError};
use crate::io::jsonl::{bad, read_objects};
use crate::io::Location;
use crate::preference::aggregate::NormKind;
use crate::preference::{JudgeError, PromptRow};
use crate::report::Progress;
use crate::train::prompts::PromptFormat;
use crate::train::rollout;

/// Rows scored per progress report.
const BATCH: usize = 64;
/// Step of LSC's reference samples' streams.
const STEP_LSC_REFERENCE: u64 = 1;

/// One row to score: its 1-based line, prompt ids and completion ids (each ending in EOS): one
/// completion, or a pair's chosen then rejected.
struct Row {
    line: usize,
    prompt: PromptRow,
    completions: Vec<Vec<u32>>,
}

pub async fn run(
    task: &ScoreShardTask,
    device: &Device,
    progress: Progress<'_>,
) -> Result<ScoreShardResult, RewardError> {
    let spec = task
        .spec
        .as_ref()
        .ok_or_else(|| RewardError::Invalid("the score task carries no spec".into()))?;
    let ensemble = LoadedEnsemble::load(&spec.ensemble, None, device).await?;
    let kind = NormKind::parse(&spec.normalize).map_err(JudgeError::from)?;
    let format = PromptFormat {
        tokenizer: ensemble.tokenizer.clone(),
        chat: spec.chat,
        max_prompt_tokens: spec.max_prompt_tokens as usize,
    };
    let rows = read_rows(task, &spec.data_url, &format, &ensemble.eos_token_ids).await?;
    let references = match &spec.reference {
        Some(source) => Some(reference_quantiles(task, source, &rows, &ensemble, device).await?),
        None => None,
    };
    let scorers = Scorers::new(
        ensemble.len(),
        kind,
        ensemble.normalisation(kind)?,
        spec.uwo_lambda,
        references.is_some(),
    );

    let mut out = String::new();
    let mut totals = Totals::new(scorers.names().len());
    for (b, batch) in rows.chunks(BATCH).enumerate() {
        let mut prompts: Vec<&PromptRow> = vec![];
        let mut completions: Vec<Vec<u32>> = vec![];
        for row in batch {
            for c in &row.completions {
                prompts.push(&row.prompt);
                completions.push(c.clone());
            }
        }
        let raw = ensemble.member_scores(&prompts, &completions)?;
        let mut j = 0;
        for (i, row) in batch.iter().enumerate() {
            let reference = references
                .as_ref()
                .map_or(&[][..], |r| r[&row.prompt.ids].as_slice());
            let mut scored = vec![];
            for _ in &row.completions {
                let member_raw: Vec<f64> = raw.iter().map(|m| m[j]).collect();
                j += 1;
                let s = scorers.score(&member_raw, reference);
                totals.add_completion(&s);
                scored.push((member_raw, s));
            }
            let mut line = json!({
                "row": task.first_row + (b * BATCH + i) as u64,
                "line": row.line,
            });
            let fields = line.as_object_mut().expect("an object");
            match scored.as_slice() {
                [(raw, one)] => fields.extend(completion_fields(scorers.names(), raw, one)),
                [(raw_c, chosen), (raw_r, rejected)] => {
                    let prefers = totals.add_pair(&chosen.values, &rejected.values);
                    fields.insert(
                        "chosen".into(),
                        Value::Object(completion_fields(scorers.names(), raw_c, chosen)),
                    );
                    fields.insert(
                        "rejected".into(),
                        Value::Object(completion_fields(scorers.names(), raw_r, rejected)),
                    );
                    fields.insert(
                        "prefers_chosen".into(),
                        Value::Object(named(scorers.names(), prefers.iter().map(|&p| json!(p)))),
                    );
                }
                _ => unreachable!("a row holds one completion or a pair"),
            }
            out.push_str(&line.to_string());
            out.push('\n');
        }
        progress(((b + 1) * BATCH).min(rows.len()) as f64 / rows.len().max(1) as f64);
    }
    Location::parse(&task.output_url)?
        .put(out.into_bytes())
        .await?;
    Ok(ScoreShardResult {
        rows: rows.len() as u64,
        scorers: scorers.names().to_vec(),
        sums: totals.sums,
        variance_sum: totals.variance_sum,
        completions: totals.completions,
        pairs: totals.pairs,
        prefers_chosen: totals.prefers_chosen,
    })
}

/// What the coordinator's summary adds up over shards.
struct Totals {
    /// Per scorer, Σ over completions of its score.
    sums: Vec<f64>,
    variance_sum: f64,
    completions: u64,
    pairs: u64,
    /// Per scorer, pairs whose chosen completion it scores higher (a tie counts ½).
    prefers_chosen: Vec<f64>,
}

impl Totals {
    fn new(scorers: usize) -> Self {
        Totals {
            sums: vec![0.0; scorers],
            variance_sum: 0.0,
            completions: 0,
            pairs: 0,
            prefers_chosen: vec![0.0; scorers],
        }
    }

    fn add_completion(&mut self, s: &Scored) {
        for (sum, v) in self.sums.iter_mut().zip(&s.values) {
            *sum += v;
        }
        self.variance_sum += s.variance;
        self.completions += 1;
    }

    /// Counts one pair; returns, per scorer, whether it ranks the chosen completion higher.
    fn add_pair(&mut self, chosen: &[f64], rejected: &[f64]) -> Vec<bool> {
        self.pairs += 1;
        chosen
            .iter()
            .zip(rejected)
            .zip(&mut self.prefers_chosen)
            .map(|((c, r), n)| {
                *n += if c > r {
                    1.0
                } else if c == r {
                    0.5
                } else {
                    0.0
                };
                c > r
            })
            .collect()
    }
}

fn named(names: &[String], values: impl Iterator<Item = Value>) -> Map<String, Value> {
    names.iter().cloned().zip(values).collect()
}

/// One completion's columns: raw member scores, z, the ensemble variance and every scorer.
fn completion_fields(names: &[String], raw: &[f64], s: &Scored) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("raw".into(), json!(raw));
    m.insert("z".into(), json!(s.z));
    m.insert("variance".into(), json!(s.variance));
    m.insert(
        "scores".into(),
        Value::Object(named(names, s.values.iter().map(|v| json!(v)))),
    );
    m
}

/// The shard's rows, tokenised; a malformed row is an error naming its line.
async fn read_rows(
    task: &ScoreShardTask,
    url: &str,
    format: &PromptFormat,
    eos_token_ids: &[u32],
) -> Result<Vec<Row>, RewardError> {
    let tokenizer = format.tokenizer.as_ref().ok_or_else(|| {
        RewardError::Invalid(format!(
            "{url}: text needs a tokenizer, but the ensemble's members have no tokenizer.json"
        ))
    })?;
    let objects = read_objects(url).await?;
    let (first, n) = (task.first_row as usize, task.rows as usize);
    let Some(shard) = objects.get(first..first + n) else {
        return Err(RewardError::Invalid(format!(
            "{url}: rows {first}..{} asked for, the file holds {}",
            first + n,
            objects.len()
        )));
    };
    shard
        .iter()
        .map(|(line, obj)| {
            let (prompt, texts) = row_text(obj).map_err(|r| bad(url, *line, r))?;
            let (ids, truncated) = format.ids(&prompt).map_err(|r| bad(url, *line, r))?;
            let completions = texts
                .iter()
                .map(|text| {
                    let mut ids = tokenizer
                        .encode(text)
                        .map_err(|e| bad(url, *line, e.to_string()))?;
                    ids.extend(eos_token_ids.first());
                    Ok(ids)
                })
                .collect::<Result<_, RewardError>>()?;
            Ok(Row {
                line: *line,
                prompt: PromptRow {
                    ids,
                    task: None,
                    truncated,
                },
                completions,
            })
        })
        .collect()
}

/// r_ref,k(x) for each distinct prompt of the shard: member k's `lsc_quantile` over
/// `lsc_samples` samples of the reference policy (docs/algorithms.md §2, LSC).
async fn reference_quantiles(
    task: &ScoreShardTask,
    source: &mirrorplay_proto::v1::ModelSource,
    rows: &[Row],
    ensemble: &LoadedEnsemble,
    device: &Device,
) -> Result<BTreeMap<Vec<u32>, Vec<f64>>, RewardError> {
    let spec = task.spec.as_ref().expect("checked by run");
    let reference = crate::train::models::load(source, false, task.seed, device).await?;
    let sampling = spec
        .sampling
        .ok_or_else(|| RewardError::Invalid("the score spec has no sampling settings".into()))?;
    let rules = rollout::rules(
        None,
        &sampling,
        &reference.eos_token_ids,
        reference.pad_token_id,
    )?;
    let config = rollout::generate_config(&rules, &sampling, task.seed, STEP_LSC_REFERENCE);
    let m = spec.lsc_samples as usize;
    let mut out = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        if out.contains_key(&row.prompt.ids) {
            continue;
        }
        let completions = samples_of_prompt(
            &reference.model,
            &row.prompt.ids,
            task.first_row + i as u64,
            m,
            &config,
        )?;
        let q = ensemble.reference_quantiles(&row.prompt, &completions, spec.lsc_quantile)?;
        out.insert(row.prompt.ids.clone(), q);
    }
    Ok(out)
}
