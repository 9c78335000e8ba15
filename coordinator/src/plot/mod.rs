//! `mirrorplay plot INPUT --out FILE.svg|.png`: figures of a best-of-n CSV ([`bon_csv`]) or of a
//! training run's metric lines ([`run_metrics`]), laid out as panels ([`figures`]) and drawn
//! with plotters ([`draw`]). Text uses the DejaVu Sans font shipped in `assets/fonts/`, so
//! no system font library is needed.

mod bon_csv;
mod draw;
mod figures;
mod run_metrics;

use std::path::Path;

pub use draw::Format;

/// Why a plot was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// A bad argument, or an input that is missing or malformed (names the file and line).
    #[error("{0}")]
    Input(String),
    /// Drawing or writing the figure failed.
    #[error("{0}")]
    Draw(String),
}

/// Pixel size of the figure: `WxH`, e.g. `1200x500`.
pub fn parse_size(s: &str) -> Result<(u32, u32), PlotError> {
    let bad = || {
        PlotError::Input(format!(
            "--size `{s}`: expected WIDTHxHEIGHT, e.g. 1200x500"
        ))
    };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let w: u32 = w.trim().parse().map_err(|_| bad())?;
    let h: u32 = h.trim().parse().map_err(|_| bad())?;
    if !(100..=10_000).contains(&w) || !(100..=10_000).contains(&h) {
        return Err(PlotError::Input(format!(
            "--size `{s}`: width and height must be 100 to 10000 pixels"
        )));
    }
    Ok((w, h))
}

/// Draws `input` (a best-of-n `.csv`, a run directory, or a pipeline output directory) into
/// `out`, whose extension picks the format. `size` defaults to 640x480 per panel (up to three in a row).
pub fn run(input: &Path, out: &Path, size: Option<(u32, u32)>) -> Result<(), PlotError> {
    let format = Format::from_path(out)?;
    let meta = std::fs::metadata(input)
        .map_err(|e| PlotError::Input(format!("{}: cannot read: {e}", input.display())))?;
    let (title, panels) = if meta.is_dir() {
        let runs = run_metrics::load(input)?;
        (
            format!("{} (training metrics)", display_name(input)),
            figures::run_panels(&runs)?,
        )
    } else if input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        let table = bon_csv::read(input)?;
        (
            format!("{} (best-of-n)", display_name(input)),
            figures::bon_panels(&table),
        )
    } else {
        return Err(PlotError::Input(format!(
            "{}: expected a best-of-n .csv file or a training run (or pipeline) output directory",
            input.display()
        )));
    };
    let (rows, cols) = draw::grid(panels.len());
    let size = size.unwrap_or((640 * cols as u32, 480 * rows as u32));
    draw::render(&title, &panels, out, format, size)
}

/// The last path component (or the whole path when it has none).
fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

#[cfg(test)]
mod tests;
