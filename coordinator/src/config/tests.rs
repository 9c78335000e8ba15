use std::path::Path;

use mirrorplay_proto::v1::{job_spec, merge_spec};

use super::*;

const MERGE: &str = r#"
[job]
kind = "merge"
output = "out"

[merge]
method = "task_arithmetic"
base = "examples/base"
models = ["examples/task-a", "s3://bucket/task-b"]
"#;

fn merge_spec(spec: &JobSpec) -> &mirrorplay_proto::v1::MergeSpec {
    match &spec.kind {
        Some(job_spec::Kind::Merge(m)) => m,
        other => panic!("not a merge: {other:?}"),
    }
}

#[test]
fn defaults_and_absolute_paths() {
    let loaded = parse("a.toml", MERGE, &[], Path::new("/work/repo"), "a").unwrap();
    let spec = loaded.spec;
    assert_eq!(spec.name, "a");
    assert_eq!(spec.output, "file:///work/repo/out");
    assert_eq!((spec.seed, spec.workers, spec.overwrite), (0, 0, false));
    let m = merge_spec(&spec);
    assert_eq!(m.base, "file:///work/repo/examples/base");
    assert_eq!(
        m.models,
        vec!["file:///work/repo/examples/task-a", "s3://bucket/task-b"]
    );
    assert_eq!(m.weights, vec![1.0, 1.0]);
    assert_eq!(m.lambda, 1.0);
    assert_eq!(m.max_shard_size, 5_000_000_000);
    assert!(matches!(
        m.method,
        Some(merge_spec::Method::TaskArithmetic(_))
    ));
    // The resolved config shows every default.
    let resolved: toml::Table = toml::from_str(&loaded.resolved_toml).unwrap();
    assert_eq!(resolved["merge"]["lambda"].as_float(), Some(1.0));
    assert_eq!(resolved["job"]["seed"].as_integer(), Some(0));
}

#[test]
fn set_overrides_and_sizes() {
    let sets = vec![
        "merge.lambda=0.5".to_string(),
        "merge.max_shard_size=\"2MiB\"".to_string(),
        "job.name=renamed".to_string(),
    ];
    let spec = parse("a.toml", MERGE, &sets, Path::new("/r"), "a")
        .unwrap()
        .spec;
    assert_eq!(spec.name, "renamed");
    assert_eq!(merge_spec(&spec).lambda, 0.5);
    assert_eq!(merge_spec(&spec).max_shard_size, 2 << 20);
    let err = parse(
        "a.toml",
        MERGE,
        &["merge.lambda=\"x\"".into()],
        Path::new("/r"),
        "a",
    )
    .unwrap_err();
    assert_eq!(err.key, "merge.lambda");
    assert!(err.file.contains("--set merge.lambda"), "{err}");
    assert_eq!(parse_size("5GB"), Some(5_000_000_000));
    assert_eq!(parse_size("32 KiB"), Some(32 << 10));
    assert_eq!(parse_size("lots"), None);
}

#[test]
fn errors_name_line_and_key() {
    let bad = MERGE.replace("models = [", "lambda = \"big\"\nmodels = [");
    let err = parse("c.toml", &bad, &[], Path::new("/r"), "c").unwrap_err();
    assert_eq!((err.line, err.key.as_str()), (Some(9), "merge.lambda"));
    assert_eq!(
        err.to_string(),
        "c.toml:9: `merge.lambda`: expected a number, found string `\"big\"`"
    );
}

#[test]
fn pipeline_stage_references() {
    let text = r#"
[job]
kind = "pipeline"
output = "/out"

[[stage]]
name = "first"
kind = "merge"
[stage.merge]
method = "task_arithmetic"
base = "/m/base"
models = ["/m/a"]

[[stage]]
name = "second"
kind = "merge"
[stage.merge]
method = "task_arithmetic"
base = "stage:first"
models = ["/m/b"]
"#;
    let spec = parse("p.toml", text, &[], Path::new("/r"), "p")
        .unwrap()
        .spec;
    let Some(job_spec::Kind::Pipeline(p)) = &spec.kind else {
        panic!("not a pipeline")
    };
    assert_eq!(p.stages.len(), 2);
    let second = p.stages[1].job.as_ref().unwrap();
    assert_eq!(second.output, "file:///out/second");
    assert_eq!(merge_spec(second).base, "file:///out/first/model");
    let forward = text.replace("base = \"stage:first\"", "base = \"stage:third\"");
    let err = parse("p.toml", &forward, &[], Path::new("/r"), "p").unwrap_err();
    assert_eq!(
        (err.line, err.key.as_str()),
        (Some(19), "stage.1.merge.base")
    );
    assert!(
        err.message.contains("no earlier stage named `third`"),
        "{err}"
    );
}

const SFT: &str = r#"
[job]
kind = "sft"
output = "out"

[sft]
init = "tiny"
task = "goodhart_digits"
"#;

#[test]
fn world_size_defaults_to_one_and_is_checked() {
    let loaded = parse("t.toml", SFT, &[], Path::new("/r"), "t").unwrap();
    let Some(job_spec::Kind::Sft(sft)) = &loaded.spec.kind else {
        panic!("not sft")
    };
    let p = sft.parallel.unwrap();
    assert_eq!(
        (p.world_size, p.min_world_size, p.collective_timeout_ms),
        (1, 1, 120_000)
    );
    // validate prints the resolved value.
    let resolved: toml::Table = toml::from_str(&loaded.resolved_toml).unwrap();
    assert_eq!(resolved["sft"]["world_size"].as_integer(), Some(1));

    let sets = vec!["sft.world_size=3".to_string()];
    let spec = parse("t.toml", SFT, &sets, Path::new("/r"), "t")
        .unwrap()
        .spec;
    let Some(job_spec::Kind::Sft(sft)) = &spec.kind else {
        panic!("not sft")
    };
    assert_eq!(
        sft.parallel.unwrap().min_world_size,
        3,
        "defaults to world_size"
    );

    let sets = vec![
        "sft.world_size=2".to_string(),
        "sft.min_world_size=3".to_string(),
    ];
    let err = parse("t.toml", SFT, &sets, Path::new("/r"), "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sft.min_world_size") && err.contains("[1, world_size = 2]"),
        "{err}"
    );

    let sets = vec!["sft.collective_timeout_s=0".to_string()];
    let err = parse("t.toml", SFT, &sets, Path::new("/r"), "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("collective_timeout_s"), "{err}");
}

fn selfplay_spec(text: &str) -> Result<mirrorplay_proto::v1::SelfplaySpec, ConfigError> {
    match parse("s.toml", text, &[], Path::new("/r"), "s")?.spec.kind {
        Some(job_spec::Kind::Selfplay(s)) => Ok(s),
        other => panic!("not self-play: {other:?}"),
    }
}

const SELFPLAY_HEAD: &str = "[job]\nkind = \"selfplay\"\noutput = \"out\"\n\n[selfplay]\n\
                             algorithm = \"nash_md\"\n";

/// The task defaults to goodhart_digits without a prompt file and to none with one; gold needs
/// a task, a reward model needs its model, tiny models need a task with its own vocabulary.
#[test]
fn preference_sources_tasks_and_prompt_format() {
    let s = selfplay_spec(&format!(
        "{SELFPLAY_HEAD}policy = \"tiny\"\nreference = \"tiny\"\n"
    ))
    .unwrap();
    assert_eq!(s.task, "goodhart_digits");
    let p = s.preference.unwrap();
    assert_eq!(
        (p.source.as_str(), p.temperature, p.model),
        ("gold", 1.0, None)
    );
    assert_eq!((s.chat, s.max_prompt_tokens), (false, 1024));

    let rm = selfplay_spec(&format!(
        "{SELFPLAY_HEAD}policy = \"m.gguf\"\nreference = \"m.gguf\"\nprompts = \"p.jsonl\"\n\
         chat = true\nmax_prompt_tokens = 64\n[selfplay.preference]\nsource = \"reward_model\"\n\
         model = \"rm\"\ntemperature = 0.5\n"
    ))
    .unwrap();
    assert_eq!(rm.task, "");
    assert_eq!((rm.chat, rm.max_prompt_tokens), (true, 64));
    let p = rm.preference.unwrap();
    assert_eq!((p.source.as_str(), p.temperature), ("reward_model", 0.5));
    assert!(format!("{:?}", p.model).contains("file:///r/rm"));

    let err = |text: String, want: &str| {
        let e = selfplay_spec(&text).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    };
    err(
        format!("{SELFPLAY_HEAD}policy = \"m\"\nreference = \"m\"\nprompts = \"p.jsonl\"\n"),
        "needs a built-in `task`",
    );
    err(
        format!(
            "{SELFPLAY_HEAD}policy = \"m\"\nreference = \"m\"\n[selfplay.preference]\n\
             source = \"reward_model\"\n"
        ),
        "selfplay.preference.model",
    );
    err(
        format!("{SELFPLAY_HEAD}task = \"exact_words\"\npolicy = \"tiny\"\nreference = \"tiny\"\n"),
        "no vocabulary of its own",
    );
    err(
        format!(
            "{SELFPLAY_HEAD}policy = \"m\"\nreference = \"m\"\n[selfplay.preference]\nmodel = \"rm\"\n"
        ),
        "only a reward_model source takes a model",
    );
}

/// An ensemble source: members resolved like `model`, defaults mean / 0.5 / center / 64; the
/// aggregate must be one of the worker's names with `member:N` naming a member, ≥ 2 members,
/// and the ensemble keys belong to an ensemble source only. Errors name the key.
#[test]
fn ensemble_preference_source() {
    let head = format!(
        "{SELFPLAY_HEAD}policy = \"m\"\nreference = \"m\"\nprompts = \"p.jsonl\"\n\
         [selfplay.preference]\nsource = \"ensemble\"\n"
    );
    let s = selfplay_spec(&format!("{head}members = [\"a\", \"b\"]\n")).unwrap();
    let p = s.preference.unwrap();
    assert_eq!(p.members.len(), 2);
    assert!(
        format!("{:?}", p.members[1]).contains("file:///r/b"),
        "{p:?}"
    );
    assert_eq!(
        (
            p.aggregate.as_str(),
            p.uwo_lambda,
            p.normalize.as_str(),
            p.norm_prompts
        ),
        ("mean", 0.5, "center", 64)
    );
    let s = selfplay_spec(&format!(
        "{head}members = [\"a\", \"b\", \"c\"]\naggregate = \"member:2\"\n\
         uwo_lambda = 2.0\nnormalize = \"zscore\"\nnorm_prompts = 8\n"
    ))
    .unwrap();
    let p = s.preference.unwrap();
    assert_eq!(
        (
            p.aggregate.as_str(),
            p.uwo_lambda,
            p.normalize.as_str(),
            p.norm_prompts
        ),
        ("member:2", 2.0, "zscore", 8)
    );

    let err = |text: String, want: &[&str]| {
        let e = selfplay_spec(&text).unwrap_err().to_string();
        assert!(want.iter().all(|w| e.contains(w)), "{e}");
    };
    err(
        format!("{head}members = [\"a\", \"b\"]\naggregate = \"median\"\n"),
        &[
            "selfplay.preference.aggregate",
            "median",
            "mean, wco, uwo, lsc, member:N",
        ],
    );
    err(
        format!("{head}members = [\"a\", \"b\"]\naggregate = \"lsc\"\n"),
        &[
            "selfplay.preference.aggregate",
            "`lsc` needs reference-policy samples",
            "not supported in self-play yet",
        ],
    );
    err(
        format!("{head}members = [\"a\", \"b\"]\naggregate = \"member:5\"\n"),
        &["selfplay.preference.aggregate", "member:5", "2 members"],
    );
    err(
        format!("{head}members = [\"a\"]\n"),
        &["selfplay.preference.members", "at least 2 members, found 1"],
    );
    err(head.clone(), &["selfplay.preference.members", "missing"]);
    err(
        format!("{head}members = [\"a\", \"b\"]\nnormalize = \"minmax\"\n"),
        &["selfplay.preference.normalize", "center, zscore, none"],
    );
    err(
        format!(
            "{SELFPLAY_HEAD}policy = \"tiny\"\nreference = \"tiny\"\n[selfplay.preference]\n\
             aggregate = \"wco\"\n"
        ),
        &["selfplay.preference.aggregate", "only an ensemble source"],
    );
}

const SELFPLAY: &str = r#"
[job]
kind = "selfplay"
output = "out"

[selfplay]
algorithm = "ipo_md"
policy = "tiny"
reference = "tiny"
"#;

#[test]
fn save_dtype_and_max_shard_size_default_to_the_source_and_5gb() {
    let loaded = parse("t.toml", SFT, &[], Path::new("/r"), "t").unwrap();
    let Some(job_spec::Kind::Sft(sft)) = &loaded.spec.kind else {
        panic!("not sft")
    };
    let save = sft.save.clone().unwrap();
    assert_eq!(
        (save.dtype.as_str(), save.max_shard_size),
        ("", 5_000_000_000)
    );
    // validate prints them.
    let resolved: toml::Table = toml::from_str(&loaded.resolved_toml).unwrap();
    assert_eq!(resolved["sft"]["save_dtype"].as_str(), Some("auto"));
    assert_eq!(
        resolved["sft"]["max_shard_size"].as_integer(),
        Some(5_000_000_000)
    );

    let sets = vec![
        "selfplay.save_dtype=\"bf16\"".to_string(),
        "selfplay.max_shard_size=\"2MiB\"".to_string(),
    ];
    let loaded = parse("t.toml", SELFPLAY, &sets, Path::new("/r"), "t").unwrap();
    let Some(job_spec::Kind::Selfplay(sp)) = &loaded.spec.kind else {
        panic!("not selfplay")
    };
    let save = sp.save.clone().unwrap();
    assert_eq!(
        (save.dtype.as_str(), save.max_shard_size),
        ("bf16", 2 << 20)
    );

    let sets = vec!["sft.save_dtype=\"int8\"".to_string()];
    let err = parse("t.toml", SFT, &sets, Path::new("/r"), "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sft.save_dtype") && err.contains("auto, f32, bf16, f16"),
        "{err}"
    );
    let sets = vec!["selfplay.max_shard_size=\"lots\"".to_string()];
    let err = parse("t.toml", SELFPLAY, &sets, Path::new("/r"), "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("selfplay.max_shard_size") && err.contains("not a size"),
        "{err}"
    );
}

#[test]
fn min_new_tokens_defaults_to_0_and_may_not_exceed_max_new_tokens() {
    let sampling = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        parse("t.toml", SELFPLAY, &sets, Path::new("/r"), "t")
    };
    let Some(job_spec::Kind::Selfplay(sp)) = sampling(&[]).unwrap().spec.kind else {
        panic!("not selfplay")
    };
    assert_eq!(sp.sampling.unwrap().min_new_tokens, 0);
    let forced = sampling(&[
        "selfplay.sampling.max_new_tokens=12",
        "selfplay.sampling.min_new_tokens=12",
    ])
    .unwrap();
    let Some(job_spec::Kind::Selfplay(sp)) = forced.spec.kind else {
        panic!("not selfplay")
    };
    let s = sp.sampling.unwrap();
    assert_eq!((s.min_new_tokens, s.max_new_tokens), (12, 12));
    let err = sampling(&[
        "selfplay.sampling.max_new_tokens=12",
        "selfplay.sampling.min_new_tokens=13",
    ])
    .unwrap_err();
    assert_eq!(err.key, "selfplay.sampling.min_new_tokens");
    assert!(
        err.message
            .contains("must be in [0, max_new_tokens = 12], found 13"),
        "{err}"
    );
}
