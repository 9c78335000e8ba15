//! Drawing panels side by side into an SVG or PNG file with plotters. Text is rendered by
//! plotters' `ab_glyph` feature from the DejaVu Sans font in `assets/fonts/` (registered once,
//! from `include_bytes!`), so no system font library is involved.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::PlotError;

/// The shipped font (license: `assets/fonts/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Output format, from the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    pub fn from_path(out: &Path) -> Result<Format, PlotError> {
        match out
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => Err(PlotError::Input(format!(
                "--out {}: the file name must end in .svg or .png",
                out.display()
            ))),
        }
    }
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    pub color: RGBColor,
    pub width: u32,
    pub dashed: bool,
    /// Marker radius in pixels (0: none).
    pub marker: u32,
}

/// Distinct colours for aggregates and stages (Tableau 10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];

impl Style {
    /// The `i`-th distinct colour, solid, with markers.
    pub fn distinct(i: usize) -> Style {
        Style {
            color: PALETTE[i % PALETTE.len()],
            width: 2,
            dashed: false,
            marker: 3,
        }
    }

    /// Light grey, thin, small markers: one of many similar lines (ensemble members).
    pub fn muted() -> Style {
        Style {
            color: RGBColor(175, 175, 175),
            width: 1,
            dashed: false,
            marker: 2,
        }
    }

    /// Dark grey, dashed, with markers: a summary of the muted lines.
    pub fn dashed() -> Style {
        Style {
            color: RGBColor(70, 70, 70),
            width: 2,
            dashed: true,
            marker: 3,
        }
    }

    fn shape(&self) -> ShapeStyle {
        ShapeStyle {
            color: self.color.to_rgba(),
            filled: false,
            stroke_width: self.width,
        }
    }
}

/// One line: points in data coordinates; `label` puts it in the legend.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: Option<String>,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

/// One chart.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Registers the shipped font with plotters (once per process).
fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ok.then_some(())
        .ok_or_else(|| PlotError::Draw("the shipped font DejaVuSans.ttf does not load".into()))
}

/// Draws `panels` side by side under `title` into `out`, `size` pixels.
pub fn render(
    title: &str,
    panels: &[Panel],
    out: &Path,
    format: Format,
    size: (u32, u32),
) -> Result<(), PlotError> {
    register_font()?;
    let failed =
        |e: String| PlotError::Draw(format!("{}: cannot draw the plot: {e}", out.display()));
    match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
                draw_all(&root, title, panels).map_err(failed)?;
                root.present().map_err(|e| failed(e.to_string()))?;
            }
            std::fs::write(out, svg)
                .map_err(|e| PlotError::Draw(format!("{}: cannot write: {e}", out.display())))
        }
        Format::Png => {
            let root = BitMapBackend::new(out, size).into_drawing_area();
            draw_all(&root, title, panels).map_err(failed)?;
            root.present()
                .map_err(|e| PlotError::Draw(format!("{}: cannot write: {e}", out.display())))
        }
    }
}

fn draw_all<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[Panel],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let body = root.titled(title, (FAMILY, 22)).map_err(err)?;
    let areas = body.split_evenly(grid(panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel).map_err(err)?;
    }
    Ok(())
}

/// (rows, columns) for `n` panels: one row of up to three, else two rows.
pub fn grid(n: usize) -> (usize, usize) {
    match n {
        0 => (1, 1),
        1..=3 => (1, n),
        _ => (2, n.div_ceil(2)),
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter().copied());
    let x = range(points().map(|p| p.0));
    let y = range(points().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    // Muted lines first, so the coloured ones are drawn over them.
    let mut order: Vec<&Series> = panel.series.iter().collect();
    order.sort_by_key(|s| s.style != Style::muted());
    let mut legend = false;
    for s in order {
        if s.points.is_empty() {
            continue;
        }
        let shape = s.style.shape();
        let anno = if s.style.dashed {
            chart.draw_series(DashedLineSeries::new(s.points.clone(), 8, 5, shape))?
        } else {
            chart.draw_series(LineSeries::new(s.points.clone(), shape))?
        };
        if let Some(label) = &s.label {
            legend = true;
            anno.label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], shape));
        }
        if s.style.marker > 0 {
            let marker = s.style.marker;
            chart.draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, marker, shape.filled())),
            )?;
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
    }
    Ok(())
}

/// The span of `values` with a 5% margin; a single value gets a unit-wide span.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.5
    };
    (lo - pad, hi + pad)
}
