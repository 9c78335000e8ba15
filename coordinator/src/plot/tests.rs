use std::path::Path;

use super::bon_csv;
use super::run_metrics;
use super::{parse_size, run, PlotError};

const BON: &str = "scorer,n,kl_bon,proxy,gold
mean,1,0,0.10,0.20
mean,4,1.636,0.50,0.40
mean,16,2.835,0.80,0.45
wco,4,1.636,0.40,0.42
wco,1,0,0.05,0.20
member:0,1,0,0.12,0.20
member:0,4,1.636,0.70,0.35
member:1,1,0,0.08,0.20
member:1,4,1.636,0.60,
";

fn input_err(r: Result<impl std::fmt::Debug, PlotError>) -> String {
    match r {
        Err(PlotError::Input(m)) => m,
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn a_bon_csv_parses_per_scorer_sorted_by_n() {
    let t = bon_csv::parse(BON, "bon.csv").unwrap();
    let names: Vec<&str> = t.iter().map(|s| s.scorer.as_str()).collect();
    assert_eq!(names, ["mean", "wco", "member:0", "member:1"]);
    assert_eq!(t[1].points.iter().map(|p| p.n).collect::<Vec<_>>(), [1, 4]);
    assert_eq!(t[0].points[1].kl, 1.636);
    assert_eq!(t[0].points[2].proxy, Some(0.80));
    assert_eq!(t[3].points[1].gold, None, "an empty field is no point");
    assert!(t[2].is_member() && !t[0].is_member());
    // Columns may come in any order.
    let t2 = bon_csv::parse("n,gold,scorer,proxy,kl_bon\n2,0.5,uwo,0.6,0.19\n", "x").unwrap();
    assert_eq!(t2[0].scorer, "uwo");
    assert_eq!(t2[0].points[0].gold, Some(0.5));
}

#[test]
fn malformed_bon_rows_are_named_by_file_and_line() {
    let bad_n = "scorer,n,kl_bon,proxy,gold\nmean,1,0,0.1,0.2\n\nmean,four,1.6,0.5,0.4\n";
    let m = input_err(bon_csv::parse(bad_n, "runs/bon.csv"));
    assert!(m.starts_with("runs/bon.csv:4: `n` = `four`"), "{m}");
    let short = "scorer,n,kl_bon,proxy,gold\nmean,1,0,0.1\n";
    let m = input_err(bon_csv::parse(short, "b.csv"));
    assert!(
        m.starts_with("b.csv:2: 4 fields where the header has 5"),
        "{m}"
    );
    let m = input_err(bon_csv::parse("scorer,n,kl,proxy,gold\n", "b.csv"));
    assert!(
        m.contains("b.csv:1: the header has no `kl_bon` column"),
        "{m}"
    );
    let m = input_err(bon_csv::parse(
        "scorer,n,kl_bon,proxy,gold\nmean,1,-0.5,0,0\n",
        "b.csv",
    ));
    assert!(m.contains("b.csv:2: `kl_bon` = `-0.5`"), "{m}");
    let m = input_err(bon_csv::parse(
        "scorer,n,kl_bon,proxy,gold\nmean,1,0,0,x\n",
        "b.csv",
    ));
    assert!(
        m.contains("b.csv:2: `gold` = `x` is not a finite number"),
        "{m}"
    );
    let dup = "scorer,n,kl_bon,proxy,gold\nmean,1,0,0,0\nmean,1,0,0,0\n";
    assert!(input_err(bon_csv::parse(dup, "b.csv")).starts_with("b.csv:3: a second row"));
    assert!(input_err(bon_csv::parse("scorer,n,kl_bon,proxy,gold\n", "b.csv")).contains("no rows"));
    assert!(input_err(bon_csv::parse("", "b.csv")).contains("empty file"));
}

fn line(step: u64, split: &str, attempt: u32, kv: &str) -> String {
    format!(
        r#"{{"step":{step},"time":{},"split":"{split}","attempt":{attempt}{kv}}}"#,
        1000 + step
    )
}

fn write(path: &Path, lines: &[String]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A self-play run: attempt 0 logged steps 1-4 (eval at 2 and 4) and was lost; attempt 1
/// resumed from the checkpoint at step 2 and logged steps 3-5 (eval at 4).
fn two_attempt_run(dir: &Path) {
    let m = dir.join("metrics");
    write(
        &m.join("part-a000-000000.jsonl"),
        &[
            line(0, "eval", 0, r#","eval/win_rate":0.5,"eval/gold":0.1"#),
            line(1, "train", 0, r#","loss":1.0,"kl/k1":0.0"#),
            line(2, "train", 0, r#","loss":0.9,"kl/k1":0.04"#),
            line(2, "eval", 0, r#","eval/win_rate":0.55,"eval/gold":0.2"#),
        ],
    );
    write(
        &m.join("part-a000-000001.jsonl"),
        &[
            line(3, "train", 0, r#","loss":0.8,"kl/k1":0.09"#),
            line(4, "train", 0, r#","loss":0.7,"kl/k1":null"#),
            line(4, "eval", 0, r#","eval/win_rate":0.6,"eval/gold":0.3"#),
        ],
    );
    write(
        &m.join("part-a001-000000.jsonl"),
        &[
            line(3, "train", 1, r#","loss":0.85,"kl/k1":0.09"#),
            line(4, "train", 1, r#","loss":0.75,"kl/k1":0.16"#),
            line(4, "eval", 1, r#","eval/win_rate":0.65,"eval/gold":0.35"#),
            line(5, "train", 1, r#","loss":0.65,"kl/k1":-0.01"#),
        ],
    );
}

#[test]
fn a_later_attempt_replaces_lines_from_the_step_it_resumed_at() {
    let dir = tempfile::tempdir().unwrap();
    two_attempt_run(dir.path());
    let runs = run_metrics::load(dir.path()).unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(
        r.series("train", "loss"),
        [(1, 1.0), (2, 0.9), (3, 0.85), (4, 0.75), (5, 0.65)]
    );
    assert_eq!(
        r.series("eval", "eval/win_rate"),
        [(0, 0.5), (2, 0.55), (4, 0.65)]
    );
    // Gold vs sqrt(KL) of the nearest train step; a negative k1 estimate counts as 0.
    let panels = super::figures::run_panels(&runs).unwrap();
    let titles: Vec<&str> = panels.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "eval/win_rate vs step",
            "train loss vs step",
            "eval/gold vs sqrt(kl/k1)"
        ]
    );
    let gold = &panels[2].series[0].points;
    assert_eq!(gold.len(), 3);
    assert_eq!(gold[1], (0.2, 0.2), "step 2: kl 0.04");
    assert!(
        (gold[2].0 - 0.4).abs() < 1e-12 && gold[2].1 == 0.35,
        "{gold:?}"
    );
}

#[test]
fn malformed_metric_lines_are_named_by_file_and_line() {
    let m = input_err(run_metrics::parse_part(
        "{\"step\":1,\"time\":1,\"split\":\"train\",\"attempt\":0}\n\nnot json\n",
        "p.jsonl",
    ));
    assert!(m.starts_with("p.jsonl:3: "), "{m}");
    let m = input_err(run_metrics::parse_part(
        "{\"time\":1,\"split\":\"train\",\"attempt\":0}\n",
        "p.jsonl",
    ));
    assert!(m.starts_with("p.jsonl:1: field `step`"), "{m}");
    let m = input_err(run_metrics::parse_part(
        "{\"step\":1,\"time\":1,\"split\":\"train\",\"attempt\":0,\"loss\":\"high\"}\n",
        "p.jsonl",
    ));
    assert!(
        m.contains("p.jsonl:1: `loss` = \"high\" is neither a number nor null"),
        "{m}"
    );
    // Through a run directory, the error names the part file.
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("metrics/part-a000-000000.jsonl"),
        &[line(1, "train", 0, ""), "{".into()],
    );
    let m = input_err(run_metrics::load(dir.path()));
    assert!(m.contains("part-a000-000000.jsonl:2: "), "{m}");
    let empty = tempfile::tempdir().unwrap();
    assert!(input_err(run_metrics::load(empty.path())).contains("no metrics/ directory"));
}

/// The PNG's (width, height) from its IHDR chunk, after checking the signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn a_bon_csv_plots_to_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bon.csv");
    std::fs::write(&csv, BON).unwrap();
    let svg = dir.path().join("bon.svg");
    run(&csv, &svg, None).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..80.min(text.len())]);
    for label in [
        "gold vs sqrt(KL)",
        "proxy vs sqrt(KL)",
        "mean",
        "wco",
        "single proxy (members)",
        "single proxy (avg)",
        "bon.csv (best-of-n)",
    ] {
        assert!(text.contains(label), "the SVG lacks `{label}`");
    }
    let png = dir.path().join("bon.PNG");
    run(&csv, &png, Some(parse_size("900x400").unwrap())).unwrap();
    assert_eq!(png_size(&std::fs::read(&png).unwrap()), (900, 400));
}

#[test]
fn a_pipeline_output_plots_one_series_per_stage() {
    let dir = tempfile::tempdir().unwrap();
    // The SFT stage ran first (earlier times), then self-play.
    let sft = |step: u64, split: &str, kv: &str| {
        format!(r#"{{"step":{step},"time":{step},"split":"{split}","attempt":0{kv}}}"#)
    };
    write(
        &dir.path().join("sft/metrics/part-a000-000000.jsonl"),
        &[
            sft(1, "train", r#","loss":2.0,"lr":0.003"#),
            sft(2, "train", r#","loss":1.5,"lr":0.003"#),
            sft(2, "eval", r#","eval/gold":0.1"#),
        ],
    );
    two_attempt_run(&dir.path().join("selfplay"));
    std::fs::write(dir.path().join("job.json"), "{}").unwrap();
    let runs = run_metrics::load(dir.path()).unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["sft", "selfplay"]);
    let svg = dir.path().join("run.svg");
    run(dir.path(), &svg, None).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    // Four panels (a loss panel per stage) in two rows.
    assert!(
        text.contains(r#"width="1280" height="960""#),
        "{}",
        &text[..120]
    );
    for label in [
        "eval/win_rate vs step",
        "train loss vs step (sft)",
        "train loss vs step (selfplay)",
        "eval/gold vs sqrt(kl/k1)",
        "\nselfplay\n",
    ] {
        assert!(text.contains(label), "the SVG lacks `{label}`");
    }
    // One stage: DIR/STAGE, no legend needed; an SFT run alone plots gold vs step.
    let png = dir.path().join("sft.png");
    run(&dir.path().join("sft"), &png, None).unwrap();
    assert_eq!(png_size(&std::fs::read(&png).unwrap()), (1280, 480));
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bon.csv");
    std::fs::write(&csv, BON).unwrap();
    let m = input_err(run(&csv, &dir.path().join("bon.pdf"), None));
    assert!(
        m.contains("bon.pdf: the file name must end in .svg or .png"),
        "{m}"
    );
    let m = input_err(run(
        &dir.path().join("missing.csv"),
        &dir.path().join("x.svg"),
        None,
    ));
    assert!(m.contains("missing.csv: cannot read"), "{m}");
    let txt = dir.path().join("bon.txt");
    std::fs::write(&txt, BON).unwrap();
    assert!(
        input_err(run(&txt, &dir.path().join("x.svg"), None)).contains("expected a best-of-n .csv")
    );
    assert!(input_err(parse_size("12x")).contains("WIDTHxHEIGHT"));
    assert!(input_err(parse_size("5x5")).contains("100 to 10000"));
    assert_eq!(parse_size("1200x500").unwrap(), (1200, 500));
}
