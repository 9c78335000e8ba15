//! What to draw: the panels of a best-of-n figure and of a training-run figure.

use super::bon_csv::BonSeries;
use super::draw::{Panel, Series, Style};
use super::run_metrics::Run;
use super::PlotError;

const SQRT_KL: &str = "sqrt(KL)";

/// Best-of-n: gold vs sqrt(KL) and proxy vs sqrt(KL), a line per scorer. Aggregate scorers
/// get distinct colours; `member:K` scorers one muted style (one legend entry), plus their mean
/// per n as a dashed line `single proxy (avg)`.
pub fn bon_panels(table: &[BonSeries]) -> Vec<Panel> {
    let value_panel = |title: &str, value: fn(&super::bon_csv::BonPoint) -> Option<f64>| {
        let mut series = Vec::new();
        let mut colour = 0;
        let mut members = 0;
        for s in table {
            let points = s
                .points
                .iter()
                .filter_map(|p| Some((p.kl.sqrt(), value(p)?)))
                .collect();
            let (label, style) = if s.is_member() {
                members += 1;
                let label = (members == 1).then(|| "single proxy (members)".to_string());
                (label, Style::muted())
            } else {
                colour += 1;
                (Some(s.scorer.clone()), Style::distinct(colour - 1))
            };
            series.push(Series {
                label,
                points,
                style,
            });
        }
        let avg = member_mean(table, value);
        if !avg.is_empty() {
            series.push(Series {
                label: Some("single proxy (avg)".into()),
                points: avg,
                style: Style::dashed(),
            });
        }
        Panel {
            title: format!("{title} vs {SQRT_KL}"),
            x_label: "sqrt(KL_bon)".into(),
            y_label: title.into(),
            series,
        }
    };
    vec![
        value_panel("gold", |p| p.gold),
        value_panel("proxy", |p| p.proxy),
    ]
}

/// Per n, the mean (sqrt(kl), value) over the members that have a value there.
fn member_mean(
    table: &[BonSeries],
    value: fn(&super::bon_csv::BonPoint) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut ns: Vec<u64> = table
        .iter()
        .filter(|s| s.is_member())
        .flat_map(|s| s.points.iter().map(|p| p.n))
        .collect();
    ns.sort_unstable();
    ns.dedup();
    ns.into_iter()
        .filter_map(|n| {
            let at_n: Vec<(f64, f64)> = table
                .iter()
                .filter(|s| s.is_member())
                .filter_map(|s| s.points.iter().find(|p| p.n == n))
                .filter_map(|p| Some((p.kl.sqrt(), value(p)?)))
                .collect();
            let k = at_n.len() as f64;
            (!at_n.is_empty()).then(|| {
                (
                    at_n.iter().map(|p| p.0).sum::<f64>() / k,
                    at_n.iter().map(|p| p.1).sum::<f64>() / k,
                )
            })
        })
        .collect()
}

/// The KL key a run logs: `kl/k1`, else `kl/k3`.
const KL_KEYS: [&str; 2] = ["kl/k1", "kl/k3"];

/// A training run (one series per pipeline stage): eval win rate vs step, train loss vs step
/// (a panel per stage), and eval gold vs sqrt(KL) (KL of the train line nearest the eval step; a negative k1
/// estimate counts as 0). Without any KL (SFT), gold vs step instead. Panels without data are
/// left out; no data at all is an error.
pub fn run_panels(runs: &[Run]) -> Result<Vec<Panel>, PlotError> {
    let labelled = runs.len() > 1;
    let series_of = |points: Vec<Vec<(f64, f64)>>| -> Vec<Series> {
        points
            .into_iter()
            .zip(runs)
            .enumerate()
            .map(|(i, (points, run))| Series {
                label: labelled.then(|| run.name.clone()),
                points,
                style: Style::distinct(i),
            })
            .collect()
    };
    let by_step = |split: &str, key: &str| {
        series_of(
            runs.iter()
                .map(|r| {
                    r.series(split, key)
                        .into_iter()
                        .map(|(s, v)| (s as f64, v))
                        .collect()
                })
                .collect(),
        )
    };
    let kl_key = KL_KEYS
        .into_iter()
        .find(|k| runs.iter().any(|r| !r.series("train", k).is_empty()));
    let mut panels = vec![Panel {
        title: "eval/win_rate vs step".into(),
        x_label: "step".into(),
        y_label: "win rate".into(),
        series: by_step("eval", "eval/win_rate"),
    }];
    // Losses of different stages (SFT cross-entropy, a self-play objective) have unrelated
    // scales: one panel per stage.
    if labelled {
        let loss = by_step("train", "loss");
        for (mut series, run) in loss.into_iter().zip(runs) {
            series.label = None;
            panels.push(Panel {
                title: format!("train loss vs step ({})", run.name),
                x_label: "step".into(),
                y_label: "loss".into(),
                series: vec![series],
            });
        }
    } else {
        panels.push(Panel {
            title: "train loss vs step".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: by_step("train", "loss"),
        });
    }
    match kl_key {
        Some(kl) => panels.push(Panel {
            title: format!("eval/gold vs sqrt({kl})"),
            x_label: format!("sqrt({kl}) of the nearest train step"),
            y_label: "gold".into(),
            series: series_of(runs.iter().map(|r| gold_vs_kl(r, kl)).collect()),
        }),
        None => panels.push(Panel {
            title: "eval/gold vs step".into(),
            x_label: "step".into(),
            y_label: "gold".into(),
            series: by_step("eval", "eval/gold"),
        }),
    }
    panels.retain(|p| p.series.iter().any(|s| !s.points.is_empty()));
    if panels.is_empty() {
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        return Err(PlotError::Input(format!(
            "{}: no eval/win_rate, loss or eval/gold values to plot",
            names.join(", ")
        )));
    }
    Ok(panels)
}

/// (sqrt(KL at the nearest train step), gold) for each eval line with a gold value.
fn gold_vs_kl(run: &Run, kl_key: &str) -> Vec<(f64, f64)> {
    let kl = run.series("train", kl_key);
    run.series("eval", "eval/gold")
        .into_iter()
        .filter_map(|(step, gold)| {
            let (_, k) = kl.iter().min_by_key(|(s, _)| s.abs_diff(step))?;
            Some((k.max(0.0).sqrt(), gold))
        })
        .collect()
}
