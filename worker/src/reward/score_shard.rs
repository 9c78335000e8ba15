//! One shard of a score job: rows `[first_row, first_row + rows)` of a JSONL of
//! `{prompt, completion}` (or `{messages}` ending with the assistant's completion) scored by
//! an ensemble: each row's raw member scores, normalised scores z, every scorer's value
//! (`super::scorers`) and the ensemble variance, written as one JSONL part
//! (`OUTPUT/scores/part-NNNNN.jsonl`) with the sums the coordinator's summary needs.
//!
//! Text is tokenised as SFT examples are (`train::data`): the prompt through `PromptFormat`,
//! the completion without special tokens and ending with the members' EOS.

use std::collections::BTreeMap;

use candle_core::Device;
use mirrorplay_proto::v1::{ScoreShardResult, ScoreShardTask};
use serde_json::{json, Value};

use super::ensemble::LoadedEnsemble;
use super::scorers::Scorers;
use super::{samples_of_prompt, RewardError};
use crate::io::jsonl::{bad, read_objects};
use crate::io::Location;
use crate::preference::aggregate::NormKind;
use crate::preference::{JudgeError, PromptRow};
use crate::report::Progress;
use crate::train::prompts::{example_text, PromptFormat};
use crate::train::rollout;

/// Rows scored per progress report.
const BATCH: usize = 64;
/// Step of LSC's reference samples' streams.
const STEP_LSC_REFERENCE: u64 = 1;

/// One row to score: its 1-based line, prompt ids and completion ids (ending in EOS).
struct Row {
    line: usize,
    prompt: PromptRow,
    completion: Vec<u32>,
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
    let mut sums = vec![0.0; scorers.names().len()];
    let mut variance_sum = 0.0;
    for (b, batch) in rows.chunks(BATCH).enumerate() {
        let prompts: Vec<&PromptRow> = batch.iter().map(|r| &r.prompt).collect();
        let completions: Vec<Vec<u32>> = batch.iter().map(|r| r.completion.clone()).collect();
        let raw = ensemble.member_scores(&prompts, &completions)?;
        for (i, row) in batch.iter().enumerate() {
            let member_raw: Vec<f64> = raw.iter().map(|m| m[i]).collect();
            let reference = references
                .as_ref()
                .map_or(&[][..], |r| r[&row.prompt.ids].as_slice());
            let scored = scorers.score(&member_raw, reference);
            for (sum, v) in sums.iter_mut().zip(&scored.values) {
                *sum += v;
            }
            variance_sum += scored.variance;
            let values: serde_json::Map<String, Value> = scorers
                .names()
                .iter()
                .zip(&scored.values)
                .map(|(name, v)| (name.clone(), json!(v)))
                .collect();
            let line = json!({
                "row": task.first_row + (b * BATCH + i) as u64,
                "line": row.line,
                "raw": member_raw,
                "z": scored.z,
                "variance": scored.variance,
                "scores": values,
            });
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
        sums,
        variance_sum,
    })
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
            let (prompt, completion) = example_text(obj).map_err(|r| bad(url, *line, r))?;
            let (ids, truncated) = format.ids(&prompt).map_err(|r| bad(url, *line, r))?;
            let mut completion = tokenizer
                .encode(&completion)
                .map_err(|e| bad(url, *line, e.to_string()))?;
            completion.extend(eos_token_ids.first());
            Ok(Row {
                line: *line,
                prompt: PromptRow {
                    ids,
                    task: None,
                    truncated,
                },
                completion,
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
