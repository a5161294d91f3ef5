//! A training report: figures (PNG and SVG) and a `report.md` drawn from a
//! [`History`].
//!
//! [`write_report`] writes four kinds of figure, each as a PNG and an SVG of
//! [`WIDTH`] x [`HEIGHT`] pixels:
//!
//! 1. `loss`: the per-step batch loss (light) with a trailing mean (bold),
//!    and the per-epoch train and test accuracy;
//! 2. `scales`: each tensor's data scale against the training step, one
//!    staircase line per tensor that has a scale;
//! 3. `saturation`: each tensor's saturation rate against the step, and a
//!    bar chart of its mean and final rate;
//! 4. `weights_NN_name`: for each weight snapshot, a histogram of the f32
//!    master values with the quantization grid of its format drawn over it
//!    (every representable value `code * 2^(scale + 1 - bits)` when the lines
//!    are at least a few pixels apart, and always the clamp limits
//!    `-2^scale` and `2^scale - step`).
//!
//! Text is drawn with DejaVu Sans, embedded from the `dejavu` crate and
//! registered with plotters' `ab_glyph` renderer, so no system font library
//! (fontconfig, freetype) is needed. PNGs are encoded with the `png` crate.
//!
//! Non-finite values (NaN, infinities) in the history are skipped; an empty
//! history gives empty charts marked "no data".

use std::fmt::Write as _;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

use crate::history::{History, TensorSeries, WeightSnapshot};

/// Width of every figure, in pixels.
pub const WIDTH: u32 = 1000;
/// Height of every figure, in pixels.
pub const HEIGHT: u32 = 640;

/// A chart with `f64` axes.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The font family every text in the figures uses.
const FONT: &str = "sans-serif";

/// Grid lines closer than this many pixels are not drawn one by one.
const MIN_GRID_SPACING_PX: f64 = 4.0;
/// At most this many grid lines are drawn.
const MAX_GRID_LINES: i64 = 1024;
/// Histogram bins of a weight figure.
const WEIGHT_BINS: usize = 60;

/// Line colours, cycled by tensor index (the "tab10" palette).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Writes the figures of `h` and a `report.md` into `dir`, creating it if
/// needed.
///
/// Returns every written path: for each figure its `.png` then its `.svg`,
/// in the order loss, scales, saturation, then one weight figure per
/// snapshot (`weights_NN_name`, `NN` its index in `h.weights`), and last
/// `report.md`. Existing files of the same names are overwritten.
///
/// # Errors
///
/// A message naming the path when `dir` cannot be created, a figure cannot
/// be drawn or encoded, or a file cannot be written.
///
/// # Panics
///
/// Never; an empty history gives charts marked "no data".
///
/// # Examples
///
/// ```
/// use fixnn_std::history::History;
/// let dir = std::env::temp_dir().join(format!("fixnn-report-doc-{}", std::process::id()));
/// let h = History { name: "demo".into(), ..History::default() };
/// let written = fixnn_std::report::write_report(&h, &dir).unwrap();
/// assert_eq!(written.len(), 7); // 3 figures x (PNG + SVG) + report.md
/// assert!(written.iter().all(|p| p.exists()));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn write_report(h: &History, dir: &Path) -> Result<Vec<PathBuf>, String> {
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create report directory {}: {e}", dir.display()))?;
    ensure_font()?;

    let mut figures = vec![Figure::Loss, Figure::Scales, Figure::Saturation];
    figures.extend(
        h.weights
            .iter()
            .enumerate()
            .map(|(i, w)| Figure::Weights(i, w)),
    );

    let mut written = Vec::with_capacity(2 * figures.len() + 1);
    let mut listing = Vec::with_capacity(figures.len());
    for fig in &figures {
        let stem = fig.stem();
        written.extend(render(fig, h, dir, &stem)?);
        listing.push((stem, fig.caption(h)));
    }
    let md_path = dir.join("report.md");
    fs::write(&md_path, markdown(h, &listing))
        .map_err(|e| format!("cannot write {}: {e}", md_path.display()))?;
    written.push(md_path);
    Ok(written)
}

/// Registers the embedded DejaVu Sans as [`FONT`] once per process.
fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font cannot be parsed".to_string())
        })
        .clone()
}

/// One figure of the report.
enum Figure<'a> {
    Loss,
    Scales,
    Saturation,
    /// Index in `History::weights` and the snapshot.
    Weights(usize, &'a WeightSnapshot),
}

impl Figure<'_> {
    /// File name without extension.
    fn stem(&self) -> String {
        match self {
            Figure::Loss => "loss".into(),
            Figure::Scales => "scales".into(),
            Figure::Saturation => "saturation".into(),
            Figure::Weights(i, w) => format!("weights_{i:02}_{}", file_safe(&w.name)),
        }
    }

    /// One line for `report.md`.
    fn caption(&self, h: &History) -> String {
        match self {
            Figure::Loss => format!(
                "Per-step batch loss (light) with its trailing mean over {} step(s) (bold); \
                 per-epoch train and test accuracy.",
                smoothing_window(h.steps.iter().filter(|s| s.loss.is_finite()).count())
            ),
            Figure::Scales => {
                let n = h.tensors.iter().filter(|t| has_scale(t)).count();
                format!(
                    "Data scale of each of the {n} tensors with a scale against the step \
                     (staircase; lines offset by a fraction of a unit so equal scales stay visible)."
                )
            }
            Figure::Saturation => format!(
                "Saturation rate (share of elements clamped between samples) of each of the {} \
                 tensors against the step; bars: mean over the samples and last sample.",
                h.tensors.len()
            ),
            Figure::Weights(_, w) => match grid_of(w) {
                Some(g) => format!(
                    "`{}`: histogram of {} master values against the {}-bit grid of scale {} \
                     (step 2^{}, clamp limits {} and {}).",
                    w.name,
                    finite(&w.master).count(),
                    g.bits,
                    g.scale,
                    g.step_exp,
                    num(g.lo),
                    num(g.hi)
                ),
                None => format!(
                    "`{}`: histogram of {} master values (full precision, no grid).",
                    w.name,
                    finite(&w.master).count()
                ),
            },
        }
    }

    fn draw<DB: DrawingBackend>(
        &self,
        h: &History,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), String> {
        root.fill(&WHITE).map_err(de)?;
        match self {
            Figure::Loss => draw_loss(h, root),
            Figure::Scales => draw_scales(h, root),
            Figure::Saturation => draw_saturation(h, root),
            Figure::Weights(_, w) => draw_weights(w, root),
        }
    }
}

/// Draws `fig` to `dir/stem.png` and `dir/stem.svg`.
fn render(fig: &Figure<'_>, h: &History, dir: &Path, stem: &str) -> Result<[PathBuf; 2], String> {
    let png_path = dir.join(format!("{stem}.png"));
    let mut rgb = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        fig.draw(h, &root)
            .and_then(|()| root.present().map_err(de))
            .map_err(|e| format!("cannot draw {}: {e}", png_path.display()))?;
    }
    let bytes = encode_png(&rgb, WIDTH, HEIGHT)
        .map_err(|e| format!("cannot encode {}: {e}", png_path.display()))?;
    fs::write(&png_path, bytes).map_err(|e| format!("cannot write {}: {e}", png_path.display()))?;

    let svg_path = dir.join(format!("{stem}.svg"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        fig.draw(h, &root)
            .and_then(|()| root.present().map_err(de))
            .map_err(|e| format!("cannot draw {}: {e}", svg_path.display()))?;
    }
    fs::write(&svg_path, svg).map_err(|e| format!("cannot write {}: {e}", svg_path.display()))?;
    Ok([png_path, svg_path])
}

/// Encodes 8-bit RGB pixels as a PNG file.
fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// `report.md`: the figure list and the epoch table.
fn markdown(h: &History, listing: &[(String, String)]) -> String {
    let name = if h.name.is_empty() {
        "unnamed run"
    } else {
        h.name.as_str()
    };
    let mut md = format!("# Training report: {name}\n\n## Figures\n\n");
    for (stem, caption) in listing {
        let _ = writeln!(
            md,
            "- [{stem}.png]({stem}.png) ([SVG]({stem}.svg)): {caption}"
        );
    }
    md.push_str("\n## Epochs\n\n");
    if h.epochs.is_empty() {
        md.push_str("No epochs recorded.\n");
    } else {
        md.push_str("| epoch | train loss | train accuracy (%) | test accuracy (%) | seconds |\n");
        md.push_str("|---:|---:|---:|---:|---:|\n");
        for e in &h.epochs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                e.epoch,
                cell(e.train_loss, 4),
                cell(e.train_accuracy, 2),
                cell(e.test_accuracy, 2),
                cell(e.seconds, 1)
            );
        }
    }
    md
}

// ---------------------------------------------------------------- figures --

/// Figure 1: loss over steps (top) and accuracy over epochs (bottom).
fn draw_loss<DB: DrawingBackend>(h: &History, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
    let area = root
        .titled(&title("loss and accuracy", h), text_style(22))
        .map_err(de)?;
    let (top, bottom) = area.split_vertically(area.dim_in_pixel().1 as i32 * 55 / 100);

    // Top: per-step loss, raw and smoothed.
    let raw: Vec<(f64, f64)> = h
        .steps
        .iter()
        .map(|s| (s.step as f64, f64::from(s.loss)))
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let window = smoothing_window(raw.len());
    let smooth = trailing_mean(&raw, window);
    let (x0, x1) = padded(range_of(raw.iter().map(|p| p.0)), 0.0);
    let (y0, y1) = padded(range_of(raw.iter().map(|p| p.1)), 0.05);
    let y0 = if raw.iter().all(|p| p.1 >= 0.0) {
        y0.max(0.0)
    } else {
        y0
    };
    let mut chart = new_chart(&top, x0..x1, y0..y1, 60)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&integer_label)
        .y_desc("batch loss")
        .label_style(text_style(13))
        .axis_desc_style(text_style(14))
        .draw()
        .map_err(de)?;
    if raw.is_empty() {
        note(&top, "no step records")?;
    } else {
        let light = PALETTE[0].mix(0.3);
        chart
            .draw_series(LineSeries::new(raw.iter().copied(), light.stroke_width(1)))
            .map_err(de)?
            .label("batch loss")
            .legend(line_key(light.stroke_width(2)));
        let bold = PALETTE[0];
        chart
            .draw_series(LineSeries::new(
                smooth.iter().copied(),
                bold.stroke_width(2),
            ))
            .map_err(de)?
            .label(match window {
                1 => "trailing mean (1 step)".to_string(),
                w => format!("trailing mean ({w} steps)"),
            })
            .legend(line_key(bold.stroke_width(2)));
        if raw.len() == 1 {
            chart
                .draw_series(raw.iter().map(|&p| Circle::new(p, 4, bold.filled())))
                .map_err(de)?;
        }
        series_labels(&mut chart, SeriesLabelPosition::UpperRight)?;
    }

    // Bottom: per-epoch train and test accuracy.
    let train: Vec<(f64, f64)> = h
        .epochs
        .iter()
        .map(|e| (f64::from(e.epoch), e.train_accuracy))
        .filter(|p| p.1.is_finite())
        .collect();
    let test: Vec<(f64, f64)> = h
        .epochs
        .iter()
        .map(|e| (f64::from(e.epoch), e.test_accuracy))
        .filter(|p| p.1.is_finite())
        .collect();
    let all = || train.iter().chain(test.iter());
    let (x0, x1) = padded(range_of(all().map(|p| p.0)), 0.05);
    let (y0, y1) = match range_of(all().map(|p| p.1)) {
        None => (0.0, 100.0),
        r => padded(r, 0.1),
    };
    let (y0, y1) = (y0.max(0.0), y1.min(100.0));
    let (y0, y1) = if y1 > y0 { (y0, y1) } else { (0.0, 100.0) };
    let mut chart = new_chart(&bottom, x0..x1, y0..y1, 60)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("accuracy (%)")
        .x_label_formatter(&integer_label)
        .label_style(text_style(13))
        .axis_desc_style(text_style(14))
        .draw()
        .map_err(de)?;
    if train.is_empty() && test.is_empty() {
        note(&bottom, "no epoch records")?;
        return Ok(());
    }
    for (pts, label, color) in [(&train, "train", PALETTE[0]), (&test, "test", PALETTE[1])] {
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(de)?
            .label(label)
            .legend(line_key(color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(de)?;
    }
    series_labels(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Figure 2: scale over steps, one staircase per tensor with a scale.
fn draw_scales<DB: DrawingBackend>(
    h: &History,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let area = root
        .titled(&title("data scale per tensor", h), text_style(22))
        .map_err(de)?;
    let (plot, legend) = area.split_horizontally(area.dim_in_pixel().0 as i32 * 74 / 100);
    let tensors: Vec<(usize, &TensorSeries)> = h
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| has_scale(t))
        .collect();

    let points = || {
        tensors.iter().flat_map(|(_, t)| {
            t.points
                .iter()
                .filter_map(|p| p.scale.map(|s| (p.step as f64, f64::from(s))))
        })
    };
    let (x0, x1) = padded(range_of(points().map(|p| p.0)), 0.0);
    let (y0, y1) = range_of(points().map(|p| p.1)).unwrap_or((0.0, 0.0));
    let (y0, y1) = (y0 - 1.0, y1 + 1.0);
    let mut chart = new_chart(&plot, x0..x1, y0..y1, 50)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&integer_label)
        .y_desc("scale (values in [-2^scale, 2^scale))")
        .y_label_formatter(&integer_label)
        .label_style(text_style(13))
        .axis_desc_style(text_style(14))
        .draw()
        .map_err(de)?;
    if tensors.is_empty() {
        note(&plot, "no tensor with a scale")?;
    }

    // Equal scales would hide each other: spread the lines over at most
    // +-0.3 of a unit around the true value.
    let n = tensors.len();
    let spread = if n > 1 {
        (0.6 / (n - 1) as f64).min(0.08)
    } else {
        0.0
    };
    let mut entries = Vec::with_capacity(n);
    for (k, (i, t)) in tensors.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let offset = (k as f64 - (n - 1) as f64 / 2.0) * spread;
        for segment in staircases(t, offset) {
            chart
                .draw_series(LineSeries::new(
                    segment.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(de)?;
        }
        // A marker where the scale is first known and wherever it changes.
        let mut prev = None;
        let mut marks = Vec::new();
        for p in &t.points {
            if let Some(s) = p.scale {
                if prev != Some(s) {
                    marks.push((p.step as f64, f64::from(s) + offset));
                }
            }
            prev = p.scale;
        }
        chart
            .draw_series(marks.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(de)?;
        entries.push((t.name.as_str(), color));
    }
    let without = h.tensors.len() - n;
    let extra = (without > 0).then(|| format!("{without} without a scale not shown"));
    draw_legend(&legend, &entries, extra.as_deref())
}

/// Figure 3: saturation over steps (top) and mean/final rate bars (bottom).
fn draw_saturation<DB: DrawingBackend>(
    h: &History,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let area = root
        .titled(&title("saturation per tensor", h), text_style(22))
        .map_err(de)?;
    let (left, legend) = area.split_horizontally(area.dim_in_pixel().0 as i32 * 74 / 100);
    let (top, bottom) = left.split_vertically(left.dim_in_pixel().1 as i32 / 2);

    let series: Vec<Vec<(f64, f64)>> = h
        .tensors
        .iter()
        .map(|t| {
            t.points
                .iter()
                .map(|p| (p.step as f64, f64::from(p.saturation) * 100.0))
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect()
        })
        .collect();
    let all = || series.iter().flatten();
    let (x0, x1) = padded(range_of(all().map(|p| p.0)), 0.0);
    let y1 = range_of(all().map(|p| p.1)).map_or(0.0, |r| r.1);
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let mut chart = new_chart(&top, x0..x1, 0.0..y1, 60)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&integer_label)
        .y_desc("clamped (%)")
        .label_style(text_style(13))
        .axis_desc_style(text_style(14))
        .draw()
        .map_err(de)?;
    if all().next().is_none() {
        note(&top, "no saturation samples")?;
    }
    let mut entries = Vec::with_capacity(h.tensors.len());
    for (i, (t, pts)) in h.tensors.iter().zip(&series).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(de)?;
        if pts.len() == 1 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(de)?;
        }
        entries.push((t.name.as_str(), color));
    }

    // Bottom: horizontal bars, first tensor on top.
    let rates: Vec<Option<(f64, f64)>> = series
        .iter()
        .map(|pts| {
            let last = pts.last()?.1;
            Some((
                pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64,
                last,
            ))
        })
        .collect();
    let n = rates.len();
    // Names shrink with the row height so that they do not overlap.
    let rows = bottom.dim_in_pixel().1.saturating_sub(56) / n.max(1) as u32;
    let label = text_style(rows.clamp(7, 13)).pos(Pos::new(HPos::Right, VPos::Center));
    let mut label_width = 40;
    for t in &h.tensors {
        let w = bottom
            .estimate_text_size(&short(&t.name), &label)
            .map_err(de)?
            .0;
        label_width = label_width.max(w + 16);
    }
    let label_width = label_width.min(bottom.dim_in_pixel().0 / 3);
    let x1 = rates
        .iter()
        .flatten()
        .map(|r| r.0.max(r.1))
        .fold(0.0, f64::max);
    let x1 = if x1 > 0.0 { x1 * 1.15 } else { 1.0 };
    let mut chart = new_chart(&bottom, 0.0..x1, -0.5..(n.max(1) as f64 - 0.5), label_width)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_label_formatter(&|_| String::new())
        .x_desc("clamped (%): mean of the samples (solid), last sample (light)")
        .label_style(text_style(13))
        .axis_desc_style(text_style(14))
        .draw()
        .map_err(de)?;
    if n == 0 {
        note(&bottom, "no tensors")?;
    }
    let base = bottom.get_base_pixel();
    for (i, (t, rate)) in h.tensors.iter().zip(&rates).enumerate() {
        let y = (n - 1 - i) as f64;
        let color = PALETTE[i % PALETTE.len()];
        if let Some((mean, last)) = *rate {
            chart
                .draw_series([
                    Rectangle::new([(0.0, y + 0.02), (mean, y + 0.38)], color.filled()),
                    Rectangle::new(
                        [(0.0, y - 0.38), (last, y - 0.02)],
                        color.mix(0.35).filled(),
                    ),
                ])
                .map_err(de)?;
        }
        let (px, py) = chart.backend_coord(&(0.0, y));
        let text = Text::new(
            short(&t.name),
            (px - base.0 - 6, py - base.1),
            label.clone(),
        );
        bottom.draw(&text).map_err(de)?;
    }
    draw_legend(&legend, &entries, None)
}

/// Figure 4: histogram of one snapshot's master values over its grid.
fn draw_weights<DB: DrawingBackend>(
    w: &WeightSnapshot,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let grid = grid_of(w);
    let heading = match &grid {
        Some(g) => format!(
            "{}: {}-bit grid, scale {}, step 2^{}",
            short(&w.name),
            g.bits,
            g.scale,
            g.step_exp
        ),
        None => format!("{}: full precision", short(&w.name)),
    };
    let area = root.titled(&heading, text_style(22)).map_err(de)?;
    let values: Vec<f64> = finite(&w.master).collect();

    // The plotted range covers the values and the clamp limits.
    let data = range_of(values.iter().copied());
    let hull = match (&grid, data) {
        (Some(g), Some((lo, hi))) => Some((lo.min(g.lo), hi.max(g.hi))),
        (Some(g), None) => Some((g.lo, g.hi)),
        (None, d) => d,
    };
    let (x0, x1) = padded(hull, 0.05);
    let (origin, width, bins) = bins_of(x0, x1, grid.as_ref().map(|g| g.step));
    let mut counts = vec![0u64; bins];
    for &v in &values {
        let bin = ((v - origin) / width).floor().clamp(0.0, (bins - 1) as f64) as usize;
        counts[bin] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.1;

    let mut chart = new_chart(&area, x0..x1, 0.0..top, 70)?;
    chart
        .configure_mesh()
        .x_desc("master value")
        .y_desc("count")
        .x_label_formatter(&|v| num(if v.abs() < (x1 - x0) * 1e-9 { 0.0 } else { *v }))
        .y_label_formatter(&integer_label)
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .label_style(text_style(13))
        .axis_desc_style(text_style(14))
        .draw()
        .map_err(de)?;

    let fill = PALETTE[0].mix(0.6);
    chart
        .draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(b, &c)| {
                    let left = origin + b as f64 * width;
                    Rectangle::new([(left, 0.0), (left + width, c as f64)], fill.filled())
                }),
        )
        .map_err(de)?
        .label(format!("master values ({})", values.len()))
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], fill.filled()));

    if let Some(g) = &grid {
        let plot_px = f64::from(chart.plotting_area().dim_in_pixel().0.max(1));
        let spacing = plot_px * g.step / (x1 - x0);
        // Codes whose values fall inside the plotted range.
        let c0 = (x0 / g.step).ceil().max(g.code_min as f64) as i64;
        let c1 = (x1 / g.step).floor().min(g.code_max as f64) as i64;
        let count = (c1 - c0 + 1).max(0);
        let dense = spacing < MIN_GRID_SPACING_PX || count > MAX_GRID_LINES;
        let grey = RGBColor(110, 40, 160).mix(if spacing >= 12.0 { 0.75 } else { 0.45 });
        if !dense {
            chart
                .draw_series((c0..=c1).map(|c| {
                    let v = c as f64 * g.step;
                    PathElement::new(vec![(v, 0.0), (v, top)], grey.stroke_width(1))
                }))
                .map_err(de)?
                .label(format!("grid values ({count} shown)"))
                .legend(move |(x, y)| PathElement::new(vec![(x + 8, y - 6), (x + 8, y + 6)], grey));
        }
        chart
            .draw_series(
                [g.lo, g.hi]
                    .map(|v| PathElement::new(vec![(v, 0.0), (v, top)], RED.stroke_width(2))),
            )
            .map_err(de)?
            .label(format!("clamp limits {} and {}", num(g.lo), num(g.hi)))
            .legend(|(x, y)| {
                PathElement::new(vec![(x + 8, y - 6), (x + 8, y + 6)], RED.stroke_width(2))
            });
        let outside = values.iter().filter(|&&v| v < g.lo || v > g.hi).count();
        let share = if values.is_empty() {
            0.0
        } else {
            100.0 * outside as f64 / values.len() as f64
        };
        let mut info = format!(
            "step {}; {share:.2}% of values outside the clamp limits",
            num(g.step)
        );
        if dense {
            let _ = write!(
                info,
                "; grid too dense to draw ({} values)",
                g.code_max - g.code_min + 1
            );
        }
        let style = text_style(14).pos(Pos::new(HPos::Left, VPos::Top));
        area.draw(&Text::new(info, (90, 8), style)).map_err(de)?;
    }
    if values.is_empty() {
        note(&area, "no finite master values")?;
    } else {
        series_labels(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- helpers --

/// Histogram bins over `x0..x1` as `(origin, width, count)`: about
/// [`WEIGHT_BINS`] bins; with a grid of step `step` the width is the step
/// times a power of two, so bin edges fall on grid values.
fn bins_of(x0: f64, x1: f64, step: Option<f64>) -> (f64, f64, usize) {
    let even = (x1 - x0) / WEIGHT_BINS as f64;
    let width = match step {
        Some(step) => {
            let w = step * 2f64.powi((even / step).log2().round() as i32);
            if w.is_finite() && w > 0.0 {
                w
            } else {
                even
            }
        }
        None => even,
    };
    let origin = (x0 / width).floor() * width;
    let count = ((x1 - origin) / width)
        .ceil()
        .clamp(1.0, (4 * WEIGHT_BINS) as f64) as usize;
    (origin, width, count)
}

/// The grid of a weight snapshot's format.
struct Grid {
    bits: u8,
    scale: i8,
    step_exp: i32,
    /// `2^step_exp`.
    step: f64,
    code_min: i64,
    code_max: i64,
    /// Clamp limits: `code_min * step = -2^scale` and `code_max * step`.
    lo: f64,
    hi: f64,
}

/// The grid of `w`, or `None` for full precision or a format out of the
/// range this report can draw (bits outside 1..=48).
fn grid_of(w: &WeightSnapshot) -> Option<Grid> {
    let (bits, scale) = (w.bits?, w.scale?);
    if !(1..=48).contains(&bits) {
        return None;
    }
    let step_exp = i32::from(scale) + 1 - i32::from(bits);
    let step = 2f64.powi(step_exp);
    let half = 1i64 << (bits - 1);
    let (code_min, code_max) = (-half, half - 1);
    let (lo, hi) = (code_min as f64 * step, code_max as f64 * step);
    (step > 0.0 && lo.is_finite() && hi.is_finite()).then_some(Grid {
        bits,
        scale,
        step_exp,
        step,
        code_min,
        code_max,
        lo,
        hi,
    })
}

fn has_scale(t: &TensorSeries) -> bool {
    t.points.iter().any(|p| p.scale.is_some())
}

/// The line segments of `t`'s scale as a staircase, shifted by `offset`;
/// a sample without a scale breaks the line.
fn staircases(t: &TensorSeries, offset: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for p in &t.points {
        let x = p.step as f64;
        match p.scale {
            Some(s) => {
                let y = f64::from(s) + offset;
                if let Some(&(_, prev)) = current.last() {
                    current.push((x, prev));
                }
                current.push((x, y));
            }
            None => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Steps in the trailing mean of the loss curve: about 2% of the points,
/// at least 1 and at most 200.
fn smoothing_window(points: usize) -> usize {
    (points / 50).clamp(1, 200)
}

/// The mean of each point's value and the `window - 1` values before it.
fn trailing_mean(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(points.len());
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= window {
            sum -= points[i - window].1;
        }
        out.push((x, sum / (i + 1).min(window) as f64));
    }
    out
}

/// The finite values of `v` as `f64`.
fn finite(v: &[f32]) -> impl Iterator<Item = f64> + '_ {
    v.iter().map(|&x| f64::from(x)).filter(|x| x.is_finite())
}

/// Smallest and largest finite value, or `None` when there is none.
fn range_of(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |r, v| match r {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// `range` widened by `frac` of its span on each side; an empty range gives
/// `0..1` and a single value `v` gives `v - d..v + d` with `d = max(|v|, 1) / 2`.
fn padded(range: Option<(f64, f64)>, frac: f64) -> (f64, f64) {
    match range {
        None => (0.0, 1.0),
        Some((lo, hi)) if hi > lo => {
            let pad = (hi - lo) * frac;
            (lo - pad, hi + pad)
        }
        Some((v, _)) => {
            let d = v.abs().max(1.0) / 2.0;
            (v - d, v + d)
        }
    }
}

/// A table cell: `v` with `decimals` decimals, or `n/a` when not finite.
fn cell(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "n/a".into()
    }
}

/// An axis label showing only whole numbers.
fn integer_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// A number in a short form: plain for 1e-3..1e5 (exact when that takes at
/// most 10 characters, as for grid values, else 6 decimals), scientific
/// otherwise.
fn num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if (1e-3..1e5).contains(&a) {
        let exact = v.to_string();
        if exact.len() <= 10 {
            return exact;
        }
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.3e}")
    }
}

/// `name` cut to 40 characters.
fn short(name: &str) -> String {
    if name.chars().count() <= 40 {
        name.to_string()
    } else {
        let mut s: String = name.chars().take(39).collect();
        s.push('…');
        s
    }
}

/// `name` with every character other than ASCII letters, digits, `-` and
/// `_` replaced by `_`, cut to 60 characters.
fn file_safe(name: &str) -> String {
    let s: String = name
        .chars()
        .take(60)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "tensor".into()
    } else {
        s
    }
}

fn title(what: &str, h: &History) -> String {
    if h.name.is_empty() {
        what.to_string()
    } else {
        format!("{}: {what}", short(&h.name))
    }
}

fn text_style(size: u32) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).color(&BLACK)
}

/// Writes `text` in the middle of `area`.
fn note<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, text: &str) -> Result<(), String> {
    let (w, h) = area.dim_in_pixel();
    let style = text_style(18)
        .color(&RGBColor(120, 120, 120))
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(
        text.to_string(),
        (w as i32 / 2, h as i32 / 2),
        style,
    ))
    .map_err(de)
}

/// A chart on `area` with `x` and `y` as axes and `y_labels` pixels for the
/// y labels.
fn new_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    x: Range<f64>,
    y: Range<f64>,
    y_labels: u32,
) -> Result<Chart<'_, DB>, String> {
    ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(y_labels)
        .build_cartesian_2d(x, y)
        .map_err(de)
}

/// A series label key: a short horizontal line in `style`.
fn line_key(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
}

/// Draws the series labels of `chart` at `pos`.
fn series_labels<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    pos: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(pos)
        .label_font(text_style(13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(de)
}

/// A column of coloured lines with names, then `extra` in grey; entries that
/// do not fit are counted in a last line.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(&str, RGBColor)],
    extra: Option<&str>,
) -> Result<(), String> {
    const ROW: i32 = 20;
    let rows = (area.dim_in_pixel().1 as i32 - 2 * ROW) / ROW;
    let fits = if entries.len() as i32 > rows {
        (rows - 1).max(0) as usize
    } else {
        entries.len()
    };
    let style = text_style(13).pos(Pos::new(HPos::Left, VPos::Center));
    let mut y = ROW + 10;
    for (name, color) in &entries[..fits] {
        area.draw(&PathElement::new(
            vec![(8, y), (30, y)],
            color.stroke_width(3),
        ))
        .map_err(de)?;
        area.draw(&Text::new(short(name), (38, y), style.clone()))
            .map_err(de)?;
        y += ROW;
    }
    let grey = style.color(&RGBColor(110, 110, 110));
    if fits < entries.len() {
        let more = format!("… and {} more", entries.len() - fits);
        area.draw(&Text::new(more, (8, y), grey.clone()))
            .map_err(de)?;
        y += ROW;
    }
    if let Some(text) = extra {
        area.draw(&Text::new(text.to_string(), (8, y), grey))
            .map_err(de)?;
    }
    Ok(())
}

/// A drawing error as a message.
fn de<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::TensorPoint;

    #[test]
    fn trailing_mean_averages_the_last_window_values() {
        let pts = [(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (3.0, 7.0)];
        let m = trailing_mean(&pts, 2);
        assert_eq!(m, vec![(0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (3.0, 6.0)]);
        assert!(trailing_mean(&[], 3).is_empty());
    }

    #[test]
    fn ranges_skip_non_finite_values_and_never_collapse() {
        let r = range_of([f64::NAN, 2.0, f64::INFINITY, -1.0].into_iter());
        assert_eq!(r, Some((-1.0, 2.0)));
        assert_eq!(range_of(std::iter::empty()), None);
        assert_eq!(padded(None, 0.1), (0.0, 1.0));
        assert_eq!(padded(Some((4.0, 4.0)), 0.1), (2.0, 6.0));
        assert_eq!(padded(Some((0.0, 10.0)), 0.1), (-1.0, 11.0));
    }

    #[test]
    fn grid_follows_the_format() {
        let w = WeightSnapshot {
            name: "w".into(),
            bits: Some(4),
            scale: Some(0),
            master: vec![],
            quantized: vec![],
        };
        let g = grid_of(&w).unwrap();
        assert_eq!(g.step_exp, -3);
        assert_eq!((g.code_min, g.code_max), (-8, 7));
        assert_eq!((g.lo, g.hi), (-1.0, 0.875));
        assert!(grid_of(&WeightSnapshot {
            bits: None,
            ..w.clone()
        })
        .is_none());
        assert!(grid_of(&WeightSnapshot { bits: Some(0), ..w }).is_none());
    }

    #[test]
    fn bins_align_with_the_grid() {
        // Step 2^-4 over about one unit: 4 bins per step.
        let (origin, width, count) = bins_of(-0.55, 0.48, Some(0.0625));
        assert_eq!(width, 0.015625);
        assert_eq!(origin, -0.5625);
        assert_eq!(count, 67);
        // A dense grid: a power-of-two multiple of the step.
        let (_, width, _) = bins_of(-1.1, 1.1, Some(2f64.powi(-15)));
        assert_eq!(width, 2f64.powi(-5));
        // No grid: even bins from x0.
        assert_eq!(bins_of(0.0, 6.0, None), (0.0, 0.1, WEIGHT_BINS));
    }

    #[test]
    fn staircase_holds_the_previous_scale_and_breaks_on_none() {
        let p = |step, scale| TensorPoint {
            step,
            scale,
            saturation: 0.0,
        };
        let t = TensorSeries {
            name: "a".into(),
            layer: "Linear".into(),
            kind: "param".into(),
            points: vec![p(0, Some(1)), p(10, Some(2)), p(20, None), p(30, Some(0))],
        };
        let s = staircases(&t, 0.0);
        assert_eq!(
            s,
            vec![
                vec![(0.0, 1.0), (10.0, 1.0), (10.0, 2.0)],
                vec![(30.0, 0.0)]
            ]
        );
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(num(0.0078125), "0.0078125");
        assert_eq!(num(-0.0), "0");
        assert_eq!(num(0.1 + 0.2), "0.3");
        assert_eq!(num(-0.9921875), "-0.9921875");
        assert_eq!(num(2f64.powi(-20)), "9.537e-7");
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_safe("fc1.weight"), "fc1_weight");
        assert_eq!(file_safe(""), "tensor");
        assert_eq!(file_safe("a/b c"), "a_b_c");
    }
}
