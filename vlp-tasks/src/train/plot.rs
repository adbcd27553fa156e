//! PNG plots of the loss terms and evaluation metrics, one panel per series.
//!
//! Drawn with `plotters` into an RGB buffer and encoded with `image`; text uses DejaVu Sans
//! bundled by the `dejavu` crate through plotters' `ab_glyph` backend, so labels render on a
//! machine without any system font. Files are replaced atomically.
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use vlp_core::{Result, VlpError};

use super::checkpoint::write_atomic;

/// A named series of (x, y) points.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Title of its panel.
    pub name: String,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// Most points drawn per series: longer series are thinned evenly (the last point is kept).
pub const MAX_POINTS: usize = 4000;

fn register_font() -> std::result::Result<(), String> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the bundled DejaVu Sans font failed to load".to_string())
    })
    .clone()
}

fn perr(e: impl std::fmt::Display) -> VlpError {
    VlpError::Msg(format!("plot: {e}"))
}

fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.len() <= MAX_POINTS {
        return pts;
    }
    let stride = pts.len().div_ceil(MAX_POINTS);
    let mut out: Vec<(f64, f64)> = pts.iter().step_by(stride).copied().collect();
    if out.last() != pts.last() {
        out.push(*pts.last().expect("non-empty"));
    }
    out
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = if lo.abs() > 0.0 { lo.abs() * 0.05 } else { 0.5 };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// A tick formatter for values in `[lo, hi]`: scientific notation for very small or large
/// magnitudes, otherwise as many decimals as the span needs.
fn tick_format(lo: f64, hi: f64) -> impl Fn(&f64) -> String {
    let mag = lo.abs().max(hi.abs());
    let span = (hi - lo).abs().max(f64::MIN_POSITIVE);
    let sci = mag > 0.0 && !(1e-2..1e5).contains(&mag);
    let decimals = ((-span.log10()).ceil() + 1.0).clamp(0.0, 6.0) as usize;
    move |v: &f64| {
        if sci {
            format!("{v:.2e}")
        } else {
            format!("{v:.decimals$}")
        }
    }
}

/// The last value of a series, for its caption.
fn last_value(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `series` as a grid of line charts (one panel each, x labelled `x_label`) under `title`
/// and writes the PNG to `path`. An empty list draws the title and "no data yet".
pub fn plot_series(path: &Path, title: &str, x_label: &str, series: &[Series]) -> Result<()> {
    register_font().map_err(perr)?;
    let n = series.len().max(1);
    let cols = if n <= 1 {
        1
    } else if n <= 4 {
        2
    } else {
        3
    };
    let rows = n.div_ceil(cols);
    let (w, h) = (480 * cols as u32, 60 + 300 * rows as u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let root = root.titled(title, ("sans-serif", 26)).map_err(perr)?;
        if series.is_empty() {
            root.draw(&Text::new(
                "no data yet",
                (20, 20),
                ("sans-serif", 18).into_font().color(&BLACK),
            ))
            .map_err(perr)?;
        }
        let panels = root.split_evenly((rows, cols));
        for (i, (panel, s)) in panels.iter().zip(series).enumerate() {
            let pts = thin(&s.points);
            let (x0, x1) = range(pts.iter().map(|p| p.0));
            let (y0, y1) = range(pts.iter().map(|p| p.1));
            let last = pts
                .last()
                .map(|p| format!("{} (last {})", s.name, last_value(p.1)));
            let yfmt = tick_format(y0, y1);
            let mut chart = ChartBuilder::on(panel)
                .caption(last.as_deref().unwrap_or(&s.name), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(perr)?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .x_labels(6)
                .y_labels(6)
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 14))
                .y_label_formatter(&yfmt)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(perr)?;
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(perr)?;
            if pts.len() == 1 {
                chart
                    .draw_series(PointSeries::of_element(
                        pts.iter().copied(),
                        4,
                        color.filled(),
                        &|c, s, st| Circle::new(c, s, st),
                    ))
                    .map_err(perr)?;
            }
        }
        root.present().map_err(perr)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| perr("buffer size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(perr)?;
    write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_ends() {
        let pts: Vec<(f64, f64)> = (0..10_001).map(|i| (i as f64, 1.0)).collect();
        let t = thin(&pts);
        assert!(t.len() <= MAX_POINTS + 1);
        assert_eq!(t[0], (0.0, 1.0));
        assert_eq!(*t.last().unwrap(), (10_000.0, 1.0));
        assert_eq!(range([2.0].into_iter()), (1.9, 2.1));
    }
}
