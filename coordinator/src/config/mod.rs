//! Job configs: TOML → a fully resolved `JobSpec`. All defaults are applied here and every path
//! becomes an absolute URL, so workers apply no defaults. Every error names the file, the line
//! and the dotted key, and is raised before anything runs or is written.

mod inputs;
// docs/configuration.md: the key descriptions and the generator (a test checks the page).
#[cfg(test)]
mod keydoc;
#[cfg(test)]
mod keys;
mod merge;
pub mod mergekit;
mod preference;
mod reader;
mod reward_train;
mod scoring;
mod selfplay;
mod sft;
mod training;

use std::cell::RefCell;
use std::path::Path;

use mirrorplay_proto::v1::{job_spec, JobSpec, PipelineSpec, StageSpec};
use mirrorplay_worker::io::store::absolute_url;
use toml::{Table, Value};

use reader::{Doc, Tbl};

pub use inputs::InputCheck;
use inputs::LocalInput;

/// A config error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    /// Dotted key path (`merge.lambda`, `stage.1.merge.base`); empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A loaded config: the spec to submit and the resolved config (TOML text) for provenance.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub spec: JobSpec,
    pub resolved_toml: String,
    /// Every input location the config names (models, data, prompts, manifests).
    inputs: Vec<LocalInput>,
}

impl Loaded {
    /// With `InputCheck::Local`, the first local input that does not exist as an error naming
    /// its key and path (`inputs::check`).
    pub fn check_inputs(&self, check: InputCheck) -> Result<(), ConfigError> {
        match check {
            InputCheck::Local => inputs::check(&self.inputs),
            InputCheck::Skip => Ok(()),
        }
    }
}

/// Job kinds a config may name.
pub const KINDS: &[&str] = &[
    "merge",
    "pipeline",
    "sft",
    "selfplay",
    "reward_train",
    "score",
    "bon",
];
const STAGE_KINDS: &[&str] = &["merge", "sft", "selfplay", "reward_train", "score", "bon"];

/// What a job's paths resolve against: the CLI's working directory, and for pipeline stages
/// the stages before this one.
struct Resolver<'a> {
    cwd: &'a Path,
    /// (stage name, model URL) of earlier stages.
    stages: Vec<(String, String)>,
    in_pipeline: bool,
    /// The job's seed (default for seeded methods such as DARE).
    seed: u64,
    /// The input locations resolved so far, with their keys.
    inputs: RefCell<Vec<LocalInput>>,
}

impl Resolver<'_> {
    /// A model location: `stage:<name>`, a URL or a path.
    fn model(&self, tbl: &Tbl, key: &str, value: &str) -> Result<String, ConfigError> {
        if let Some(stage) = value.strip_prefix("stage:") {
            if !self.in_pipeline {
                return Err(tbl.error(
                    key,
                    format!("`{value}` refers to a stage, but this job is not a pipeline"),
                ));
            }
            return self
                .stages
                .iter()
                .find(|(n, _)| n == stage)
                .map(|(_, url)| url.clone())
                .ok_or_else(|| {
                    let earlier: Vec<&str> = self.stages.iter().map(|(n, _)| n.as_str()).collect();
                    tbl.error(
                        key,
                        format!(
                            "no earlier stage named `{stage}` (earlier stages: [{}])",
                            earlier.join(", ")
                        ),
                    )
                });
        }
        self.input(tbl, key, value)
    }

    /// A location the job reads (a model, a dataset): resolved as `path`, and recorded for
    /// the input check.
    fn input(&self, tbl: &Tbl, key: &str, value: &str) -> Result<String, ConfigError> {
        let url = self.path(tbl, key, value)?;
        self.inputs.borrow_mut().push(LocalInput {
            at: tbl.error(key, String::new()),
            raw: value.to_string(),
            url: url.clone(),
        });
        Ok(url)
    }

    fn path(&self, tbl: &Tbl, key: &str, value: &str) -> Result<String, ConfigError> {
        absolute_url(value, self.cwd).map_err(|e| tbl.error(key, e.to_string()))
    }
}

/// Loads `path` with `--set` overrides; relative paths resolve against `cwd`.
pub fn load(path: &Path, sets: &[String], cwd: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: None,
        key: String::new(),
        message: format!("cannot read the config: {e}"),
    })?;
    let default_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "job".into());
    if mergekit::is_mergekit_yaml(path) {
        let converted = mergekit::to_toml(&file, &text, &default_name)?;
        // Errors past conversion concern the converted TOML: name its keys, not its lines.
        let converted_error = |e: ConfigError| ConfigError {
            file: format!("{file} (as converted by `mirrorplay convert mergekit {file}`)"),
            line: None,
            ..e
        };
        let mut loaded =
            parse(&file, &converted, sets, cwd, &default_name).map_err(converted_error)?;
        for input in &mut loaded.inputs {
            input.at = converted_error(input.at.clone());
        }
        return Ok(loaded);
    }
    parse(&file, &text, sets, cwd, &default_name)
}

/// Parses config text (see `load`).
pub fn parse(
    file: &str,
    text: &str,
    sets: &[String],
    cwd: &Path,
    default_name: &str,
) -> Result<Loaded, ConfigError> {
    let (mut doc, mut table) = Doc::new(file.to_string(), text)?;
    for set in sets {
        doc.apply_set(&mut table, set)?;
    }
    let root = Tbl::root(&doc, table);
    let job = root.req_table("job")?;
    let kind = job.choice("kind", KINDS, None)?;
    let name = job.str_or("name", default_name)?;
    let output_raw = job.req_str("output")?;
    let seed = job.u64_or("seed", 0)?;
    let mut resolver = Resolver {
        cwd,
        stages: vec![],
        in_pipeline: kind == "pipeline",
        seed,
        inputs: RefCell::default(),
    };
    let output = resolver.path(&job, "output", &output_raw)?;
    job.record("output", Value::String(output.clone()));
    let workers = job.u64_or("workers", 0)? as u32;
    let overwrite = job.bool_or("overwrite", false)?;
    let mut spec = JobSpec {
        name,
        output: output.clone(),
        seed,
        workers,
        overwrite,
        kind: None,
    };

    let kind_spec = if kind == "pipeline" {
        if let Some(k) = STAGE_KINDS.iter().find(|k| root.has(k)) {
            return Err(root.error(
                k,
                format!(
                    "a pipeline's kinds are configured per stage ([stage.{k}]), not at the top"
                ),
            ));
        }
        let stages = root.table_list("stage")?;
        if stages.is_empty() {
            return Err(root.error("stage", "a pipeline needs at least one [[stage]]"));
        }
        let mut specs = Vec::new();
        let mut resolved_stages = Vec::new();
        for stage in stages {
            let stage_name = stage.req_str("name")?;
            if stage_name.is_empty()
                || !stage_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(stage.error(
                    "name",
                    format!("`{stage_name}` must be non-empty letters, digits, `-` or `_`"),
                ));
            }
            if resolver.stages.iter().any(|(n, _)| *n == stage_name) {
                return Err(stage.error("name", format!("duplicate stage name `{stage_name}`")));
            }
            let stage_kind = stage.choice("kind", STAGE_KINDS, None)?;
            let stage_output = format!("{output}/{stage_name}");
            let stage_seed = stage.u64_or("seed", seed)?;
            resolver.seed = stage_seed;
            let stage_workers = stage.u64_or("workers", workers as u64)? as u32;
            let kind = job_kind(&stage, &stage_kind, &resolver)?;
            let job = JobSpec {
                name: format!("{}/{stage_name}", spec.name),
                output: stage_output.clone(),
                seed: stage_seed,
                workers: stage_workers,
                overwrite,
                kind: Some(kind),
            };
            // What `stage:NAME` names: a reward_train stage's ensemble manifest, another
            // stage's model.
            let product = match stage_kind.as_str() {
                "reward_train" => format!(
                    "{stage_output}/{}",
                    mirrorplay_worker::preference::manifest::FILE_NAME
                ),
                _ => format!("{stage_output}/model"),
            };
            resolver.stages.push((stage_name.clone(), product));
            specs.push(StageSpec {
                name: stage_name,
                job: Some(job),
            });
            resolved_stages.push(Value::Table(stage.finish()?));
        }
        root.record("stage", Value::Array(resolved_stages));
        job_spec::Kind::Pipeline(PipelineSpec { stages: specs })
    } else {
        job_kind(&root, &kind, &resolver)?
    };
    spec.kind = Some(kind_spec);
    let job_resolved = job.finish()?;
    root.record_table("job", job_resolved);
    let resolved = root.finish()?;
    Ok(Loaded {
        spec,
        resolved_toml: toml::to_string(&resolved).unwrap_or_default(),
        inputs: resolver.inputs.into_inner(),
    })
}

/// Reads the kind's own table (`[merge]`, ...) from `parent` and records it resolved.
fn job_kind(parent: &Tbl, kind: &str, resolver: &Resolver) -> Result<job_spec::Kind, ConfigError> {
    let table = parent.req_table(kind)?;
    let (spec, resolved): (job_spec::Kind, Table) = match kind {
        "merge" => {
            let spec = merge::read(&table, resolver)?;
            (job_spec::Kind::Merge(spec), table.finish()?)
        }
        "sft" => {
            let spec = sft::read(&table, resolver)?;
            (job_spec::Kind::Sft(spec), table.finish()?)
        }
        "selfplay" => {
            let spec = selfplay::read(&table, resolver)?;
            (job_spec::Kind::Selfplay(spec), table.finish()?)
        }
        "reward_train" => {
            let spec = reward_train::read(&table, resolver)?;
            (job_spec::Kind::RewardTrain(spec), table.finish()?)
        }
        "score" => {
            let spec = scoring::read_score(&table, resolver)?;
            (job_spec::Kind::Score(spec), table.finish()?)
        }
        "bon" => {
            let spec = scoring::read_bon(&table, resolver)?;
            (job_spec::Kind::Bon(spec), table.finish()?)
        }
        other => return Err(parent.error("kind", format!("unknown kind `{other}`"))),
    };
    parent.record_table(kind, resolved);
    Ok(spec)
}

/// Parses a size: an integer number of bytes or a string such as "5GB", "512MiB", "32KB".
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => return None,
    };
    let bytes = num * mult as f64;
    (bytes.is_finite() && bytes >= 1.0).then_some(bytes as u64)
}

#[cfg(test)]
mod tests;
