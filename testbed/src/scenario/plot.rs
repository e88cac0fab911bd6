//! PNG plots of sweeps (plotters): median client-perceived gap against one parameter, one line
//! per value of another — the shape of the seed's Figure 2.

use std::{collections::BTreeMap, fs, path::Path, sync::OnceLock};

use plotters::prelude::*;

use super::Outcome;
use crate::error::{Error, Result};

/// Which parameters go where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlotSpec {
    /// The x axis parameter (e.g. `wait_ms`).
    pub x: &'static str,
    /// One line per value of this parameter (e.g. `rate_mbit`), or a single line.
    pub series: Option<&'static str>,
}

/// Fonts tried in order (Debian's fonts-dejavu-core, which `cargo xtask setup` installs).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
const COLORS: [RGBColor; 6] = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];

fn plot_error(detail: impl std::fmt::Display) -> Error {
    Error::Tool {
        tool: "plot".into(),
        detail: detail.to_string(),
    }
}

/// plotters draws text with a font registered once per process.
fn register_font() -> Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = fs::read(path) {
                // Registered fonts must live for the whole process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{path} is not a usable font"));
            }
        }
        Err(format!(
            "no font found (tried {}); install fonts-dejavu-core (`cargo xtask setup`)",
            FONT_PATHS.join(", ")
        ))
    })
    .clone()
    .map_err(plot_error)
}

/// Median gap per (series value, x value).
fn lines(outcome: &Outcome, spec: &PlotSpec) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut groups: BTreeMap<(String, u64), (f64, Vec<f64>)> = BTreeMap::new();
    for run in &outcome.runs {
        let (Some(&x), Some(gap)) = (run.params.get(spec.x), run.gap_ms) else {
            continue;
        };
        let series = match spec.series {
            Some(name) => match run.params.get(name) {
                Some(value) => format!("{name} = {value}"),
                None => continue,
            },
            None => "median gap".to_owned(),
        };
        groups
            .entry((series, x.to_bits()))
            .or_insert((x, Vec::new()))
            .1
            .push(gap);
    }
    let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for ((series, _), (x, gaps)) in groups {
        if let Some(median) = crate::measure::median(&gaps) {
            lines.entry(series).or_default().push((x, median));
        }
    }
    for points in lines.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines
}

/// Draws the median gap of `outcome` against `spec.x` into a PNG at `path`.
pub fn plot(outcome: &Outcome, spec: &PlotSpec, path: &Path) -> Result<()> {
    let lines = lines(outcome, spec);
    let all: Vec<(f64, f64)> = lines.values().flatten().copied().collect();
    if all.is_empty() {
        return Err(plot_error(format!(
            "{}: no run has both a gap and the parameter {}",
            outcome.scenario, spec.x
        )));
    }
    register_font()?;
    let x_min = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let mut x_max = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    if x_max <= x_min {
        x_max = x_min + 1.0;
    }
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&outcome.scenario, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(spec.x)
        .y_desc("client-perceived gap, median (ms)")
        .draw()
        .map_err(plot_error)?;
    for (i, (label, points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::RunResult;

    fn run(rate: f64, wait: f64, gap: Option<f64>) -> RunResult {
        RunResult {
            point: format!("rate={rate} wait={wait}"),
            params: BTreeMap::from([("rate_mbit".to_owned(), rate), ("wait_ms".to_owned(), wait)]),
            run: 0,
            gap_ms: gap,
            phases_ms: BTreeMap::new(),
            wall_ms: 0.0,
        }
    }

    #[test]
    fn medians_are_grouped_per_series_and_sorted_by_x() {
        let outcome = Outcome {
            scenario: "figure2".into(),
            runs: vec![
                run(2.0, 25.0, Some(30.0)),
                run(2.0, 0.0, Some(50.0)),
                run(2.0, 0.0, Some(10.0)),
                run(2.0, 0.0, Some(20.0)),
                run(1.0, 0.0, None),
                run(1.0, 25.0, Some(7.0)),
            ],
            summary: Vec::new(),
        };
        let spec = PlotSpec {
            x: "wait_ms",
            series: Some("rate_mbit"),
        };
        let lines = lines(&outcome, &spec);
        assert_eq!(lines["rate_mbit = 2"], vec![(0.0, 20.0), (25.0, 30.0)]);
        assert_eq!(lines["rate_mbit = 1"], vec![(25.0, 7.0)]);
    }

    #[test]
    fn a_sweep_becomes_a_png_and_an_empty_one_is_an_error() {
        let mut runs = Vec::new();
        for rate in [2.0, 1.5, 1.0] {
            for step in 0..5 {
                let wait = f64::from(step) * 25.0;
                runs.push(run(rate, wait, Some(100.0 / rate + wait * 0.5)));
            }
        }
        let outcome = Outcome {
            scenario: "figure2".into(),
            runs,
            summary: Vec::new(),
        };
        let spec = PlotSpec {
            x: "wait_ms",
            series: Some("rate_mbit"),
        };
        let path = std::env::temp_dir().join(format!("dsl-plot-{}.png", std::process::id()));
        plot(&outcome, &spec, &path).unwrap();
        let png = fs::read(&path).unwrap();
        let _ = fs::remove_file(&path);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(png.len() > 5_000, "{} bytes", png.len());

        let empty = Outcome {
            scenario: "table1".into(),
            runs: vec![run(2.0, 0.0, None)],
            summary: Vec::new(),
        };
        assert!(plot(&empty, &spec, &path).is_err());
        assert!(!path.exists());
    }
}
