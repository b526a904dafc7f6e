//! `realign plot`: the main curves of one run as a single PNG or SVG image, for reports.
//!
//! Text is drawn with an embedded DejaVu Sans subset (fonts/, see its README) through plotters'
//! pure-Rust `ab_glyph` rasteriser, so a PNG renders the same on a bare machine with no system fonts.

use crate::jsonl::JsonlTail;
use crate::metrics::{parse_step_record, scalar_names, series, StepRecord};
use crate::runs::METRICS_FILE;
use anyhow::{anyhow, bail, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";

/// Pixel size of one panel.
const PANEL_W: u32 = 560;
const PANEL_H: u32 = 360;
const COLUMNS: usize = 3;
const TITLE_H: u32 = 48;

/// The panels `realign plot` draws when their metrics exist: title and the scalars overlaid in it.
const PANELS: [(&str, &[&str]); 7] = [
    ("reward", &["reward/mean", "score/mean"]),
    // Held-out accuracy is logged every `eval_every` steps; the line joins those points.
    ("accuracy", &["eval/accuracy", "rollout/accuracy"]),
    ("KL to reference (per token)", &["kl/mean"]),
    ("policy entropy", &["actor/entropy"]),
    (
        "losses",
        &["actor/pg_loss", "critic/vf_loss", "sft/loss", "rm/loss"],
    ),
    ("response length (tokens)", &["response_length/mean"]),
    (
        "clip fraction",
        &["actor/pg_clipfrac", "critic/vf_clipfrac"],
    ),
];

/// Line colours, readable on white and distinct for colour-blind readers (Okabe-Ito).
const COLORS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
];

/// One panel to draw: a title and the scalars in it that the run logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub metrics: Vec<String>,
}

/// What a plot holds, for the caller's message and for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotSummary {
    pub panels: Vec<Panel>,
    pub steps: usize,
    pub skipped_lines: usize,
}

/// The main panels whose metrics the run logged. A run with none of them (a custom stage) gets
/// its first six scalars, one per panel, so `plot` still shows something useful.
pub fn choose_panels(records: &[StepRecord]) -> Vec<Panel> {
    let names = scalar_names(records);
    let has = |m: &str| names.iter().any(|n| n == m);
    let mut panels: Vec<Panel> = PANELS
        .iter()
        .filter_map(|(title, metrics)| {
            let present: Vec<String> = metrics
                .iter()
                .filter(|m| has(m))
                .map(|m| m.to_string())
                .collect();
            (!present.is_empty()).then(|| Panel {
                title: title.to_string(),
                metrics: present,
            })
        })
        .collect();
    if panels.is_empty() {
        panels = names
            .iter()
            .take(6)
            .map(|n| Panel {
                title: n.clone(),
                metrics: vec![n.clone()],
            })
            .collect();
    }
    panels
}

/// Reads `run_dir`/metrics.jsonl and writes the plot to `out` (.png or .svg).
pub fn plot_run(run_dir: &Path, out: &Path) -> anyhow::Result<PlotSummary> {
    let metrics = run_dir.join(METRICS_FILE);
    if !run_dir.is_dir() {
        bail!("run folder {} does not exist", run_dir.display());
    }
    if !metrics.is_file() {
        bail!(
            "{} is not a run folder: it has no {METRICS_FILE}",
            run_dir.display()
        );
    }
    let mut tail = JsonlTail::new(&metrics);
    tail.refresh(parse_step_record)
        .with_context(|| format!("cannot read {}", metrics.display()))?;
    let records = tail.records;
    let panels = choose_panels(&records);
    if panels.is_empty() {
        bail!("{} has no scalars to plot yet", metrics.display());
    }
    let name = run_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| run_dir.display().to_string());
    let title = match records.last() {
        Some(r) => format!("{name} · step {}", r.step),
        None => name,
    };
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let size = image_size(panels.len());
    register_font();
    match ext.as_str() {
        "png" => {
            let root = BitMapBackend::new(out, size).into_drawing_area();
            draw(&root, &title, &panels, &records)?;
            root.present()
                .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))?;
        }
        "svg" => {
            let root = SVGBackend::new(out, size).into_drawing_area();
            draw(&root, &title, &panels, &records)?;
            root.present()
                .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))?;
        }
        _ => bail!(
            "cannot tell the image format of {}: use a .png or .svg file name",
            out.display()
        ),
    }
    Ok(PlotSummary {
        panels,
        steps: records.len(),
        skipped_lines: tail.skipped_lines,
    })
}

/// Renders the plot into an RGB buffer (row-major, 3 bytes a pixel); what the PNG path draws.
pub fn render_rgb(title: &str, records: &[StepRecord]) -> anyhow::Result<(Vec<u8>, (u32, u32))> {
    let panels = choose_panels(records);
    let size = image_size(panels.len().max(1));
    let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
    register_font();
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        draw(&root, title, &panels, records)?;
        root.present().map_err(|e| anyhow!("drawing failed: {e}"))?;
    }
    Ok((buf, size))
}

fn image_size(panels: usize) -> (u32, u32) {
    let cols = panels.clamp(1, COLUMNS);
    let rows = panels.div_ceil(COLUMNS).max(1);
    (PANEL_W * cols as u32, TITLE_H + PANEL_H * rows as u32)
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a font file compiled in from the repository; failing here is a build
        // defect, not a user error.
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            tracing::error!("the embedded font could not be parsed; plot text will be missing");
        }
    });
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[Panel],
    records: &[StepRecord],
) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot failed: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let (top, body) = root.split_vertically(TITLE_H);
    top.draw(&Text::new(
        title.to_string(),
        (16, 12),
        (FAMILY, 26).into_font().color(&RGBColor(30, 30, 30)),
    ))
    .map_err(err)?;
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let cols = panels.len().clamp(1, COLUMNS);
    let cells = body.split_evenly((rows, cols));
    for (cell, panel) in cells.iter().zip(panels) {
        draw_panel(cell, panel, records).map_err(err)?;
    }
    Ok(())
}

/// Consecutive finite (step, value) points of one scalar.
type Segment = Vec<(f64, f64)>;

/// The finite points of one scalar, split into runs of consecutive finite values so that a NaN
/// leaves a gap instead of a line drawn through it.
fn segments(records: &[StepRecord], name: &str) -> Vec<Segment> {
    let mut out: Vec<Segment> = vec![Vec::new()];
    for (step, v) in series(records, name) {
        if v.is_finite() {
            out.last_mut().expect("never empty").push((step as f64, v));
        } else if !out.last().expect("never empty").is_empty() {
            out.push(Vec::new());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    records: &[StepRecord],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let lines: Vec<(&String, Vec<Segment>)> = panel
        .metrics
        .iter()
        .map(|m| (m, segments(records, m)))
        .collect();
    let points = lines.iter().flat_map(|(_, segs)| segs.iter().flatten());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        // Only non-finite values: an empty panel with a unit range, still titled.
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = if y1 > y0 {
        0.06 * (y1 - y0)
    } else {
        0.5 * y0.abs().max(1e-3)
    };
    let (y0, y1) = (y0 - pad, y1 + pad);

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| tick_label(*y))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(228, 228, 228))
        .draw()?;
    for (i, (name, segs)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let style = ShapeStyle::from(&color).stroke_width(2);
        for (j, seg) in segs.iter().enumerate() {
            let drawn = chart.draw_series(LineSeries::new(seg.iter().copied(), style))?;
            if j == 0 {
                drawn.label(name.as_str()).legend(move |(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 18, y)],
                        ShapeStyle::from(&color).stroke_width(2),
                    )
                });
            }
        }
    }
    if lines.len() > 1 || lines.iter().all(|(_, s)| s.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()?;
    }
    Ok(())
}

/// An axis number short enough for a tick: 3 significant digits without trailing zeros,
/// scientific when tiny or huge.
fn tick_label(y: f64) -> String {
    let a = y.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{y:.1e}")
    } else {
        let digits = (2 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{y:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn records(names: &[&str], n: u64) -> Vec<StepRecord> {
        (1..=n)
            .map(|step| StepRecord {
                step,
                time: None,
                scalars: names
                    .iter()
                    .map(|m| (m.to_string(), step as f64))
                    .collect::<BTreeMap<_, _>>(),
            })
            .collect()
    }

    #[test]
    fn panels_follow_what_the_run_logged() {
        let p = choose_panels(&records(
            &[
                "reward/mean",
                "actor/pg_loss",
                "critic/vf_loss",
                "timing_s/gen",
            ],
            3,
        ));
        assert_eq!(
            p,
            vec![
                Panel {
                    title: "reward".into(),
                    metrics: vec!["reward/mean".into()]
                },
                Panel {
                    title: "losses".into(),
                    metrics: vec!["actor/pg_loss".into(), "critic/vf_loss".into()]
                },
            ]
        );
        // No main metric at all: the first scalars, one per panel.
        let p = choose_panels(&records(&["custom/a", "custom/b"], 3));
        assert_eq!(
            p.iter().map(|p| p.title.as_str()).collect::<Vec<_>>(),
            ["custom/a", "custom/b"]
        );
        assert!(choose_panels(&[]).is_empty());
    }

    #[test]
    fn nan_values_split_a_line_into_segments() {
        let mut r = records(&["kl/mean"], 6);
        r[2].scalars.insert("kl/mean".into(), f64::NAN);
        r[3].scalars.insert("kl/mean".into(), f64::INFINITY);
        let s = segments(&r, "kl/mean");
        assert_eq!(
            s,
            vec![vec![(1.0, 1.0), (2.0, 2.0)], vec![(5.0, 5.0), (6.0, 6.0)]]
        );
    }

    #[test]
    fn tick_labels_stay_short() {
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(0.1234), "0.123");
        assert_eq!(tick_label(0.8), "0.8");
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(12.5), "12.5");
        assert_eq!(tick_label(1234.0), "1234");
        assert_eq!(tick_label(0.00001), "1.0e-5");
    }
}
