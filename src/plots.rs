//! Plots of a run (plotters, SVG and PNG): latency CDF per class, $/outcome histogram
//! per class, pool time series (queue depth, utilisation, servers), and the grouped bar
//! chart used to compare variants. Text uses the embedded DejaVu Sans
//! (assets/fonts), so plots render the same on a machine without fonts.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use sim_core::metrics::RunResult;
use std::path::{Path, PathBuf};
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Errors drawing or writing a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot draw {path}: {detail}")]
    Draw { path: String, detail: String },
    #[error("embedded font is not a valid font")]
    Font,
}

fn register_font() -> Result<(), PlotError> {
    static ONCE: Once = Once::new();
    let mut ok = true;
    ONCE.call_once(|| {
        ok = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok()
            && plotters::style::register_font(FAMILY, FontStyle::Bold, FONT).is_ok();
    });
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

/// Tableau-10 colours: distinct, colour-blind friendlier than pure RGB.
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

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

type DrawResult = Result<(), String>;

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Draws `draw` into `stem.svg` and `stem.png`.
macro_rules! render_both {
    ($stem:expr, $size:expr, $draw:ident ( $($arg:expr),* )) => {{
        let stem: &Path = $stem;
        let svg = stem.with_extension("svg");
        let png = stem.with_extension("png");
        let draw_err = |p: &Path, detail: String| PlotError::Draw {
            path: p.display().to_string(),
            detail,
        };
        {
            let root = SVGBackend::new(&svg, $size).into_drawing_area();
            $draw(&root, $($arg),*)
                .and_then(|_| root.present().map_err(s))
                .map_err(|d| draw_err(&svg, d))?;
        }
        {
            let root = BitMapBackend::new(&png, $size).into_drawing_area();
            $draw(&root, $($arg),*)
                .and_then(|_| root.present().map_err(s))
                .map_err(|d| draw_err(&png, d))?;
        }
        vec![svg, png]
    }};
}

/// A nice upper bound for an axis: 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 x 10^k at or
/// above `x`.
fn nice_ceil(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if m * p >= x * (1.0 - 1e-12) {
            return m * p;
        }
    }
    10.0 * p
}

/// A nice lower bound for a log axis: 1, 2 or 5 x 10^k at or below `x`.
fn nice_floor(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    for m in [5.0, 2.0, 1.0] {
        if m * p <= x * (1.0 + 1e-12) {
            return m * p;
        }
    }
    p
}

/// Seconds with a unit, short.
fn fmt_s(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{}", (v * 10.0).round() / 10.0)
    } else if v >= 0.01 {
        format!("{}", (v * 1000.0).round() / 1000.0)
    } else {
        format!("{v:.1e}")
    }
}

fn fmt_usd_axis(v: f64, span: f64) -> String {
    let decimals = if span <= 0.0 {
        4
    } else {
        ((-span.log10()).ceil() as i32 + 1).clamp(0, 6) as usize
    };
    format!("${v:.decimals$}")
}

// ---------------------------------------------------------------------------------
// Legends sit in a strip above the plots, never on top of data.

#[derive(Clone, Copy)]
enum Mark {
    Line,
    Dashed,
    Box,
}

struct Entry {
    label: String,
    colour: RGBColor,
    mark: Mark,
}

const LEGEND_ROW: i32 = 24;
const LEGEND_LEFT: i32 = 80;

/// Lays out entries in rows across `width`: (x, row) per entry, and the rows used.
fn legend_layout<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[Entry],
) -> (Vec<(i32, i32)>, i32) {
    let width = area.dim_in_pixel().0 as i32;
    let font: TextStyle = (FAMILY, 14).into_font().into();
    let (mut x, mut row) = (LEGEND_LEFT, 0);
    let mut at = Vec::with_capacity(entries.len());
    for e in entries {
        let tw = area
            .estimate_text_size(&e.label, &font)
            .map(|(w, _)| w as i32)
            .unwrap_or(8 * e.label.chars().count() as i32);
        let w = 30 + tw + 26;
        if x + w > width - 10 && x > LEGEND_LEFT {
            x = LEGEND_LEFT;
            row += 1;
        }
        at.push((x, row));
        x += w;
    }
    (at, if entries.is_empty() { 0 } else { row + 1 })
}

/// Height of the strip `draw_legend` needs.
fn legend_height<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[Entry]) -> u32 {
    (legend_layout(area, entries).1 * LEGEND_ROW + 8) as u32
}

fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[Entry]) -> DrawResult {
    let (at, _) = legend_layout(area, entries);
    let font = (FAMILY, 14).into_font();
    for (e, &(x, row)) in entries.iter().zip(&at) {
        let y = 4 + row * LEGEND_ROW + LEGEND_ROW / 2;
        let c = e.colour;
        match e.mark {
            Mark::Line => area
                .draw(&PathElement::new(
                    vec![(x, y), (x + 24, y)],
                    c.stroke_width(3),
                ))
                .map_err(s)?,
            Mark::Dashed => {
                for dx in [0, 10, 20] {
                    area.draw(&PathElement::new(
                        vec![(x + dx, y), (x + dx + 5, y)],
                        c.stroke_width(2),
                    ))
                    .map_err(s)?;
                }
            }
            Mark::Box => area
                .draw(&Rectangle::new(
                    [(x + 4, y - 7), (x + 20, y + 7)],
                    c.filled(),
                ))
                .map_err(s)?,
        }
        area.draw(&Text::new(
            e.label.clone(),
            (x + 30, y),
            font.color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(s)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Data extracted from a run, independent of the backend.

/// Empirical CDF of one class's latency, from its HDR histogram.
pub struct CdfSeries {
    pub class: String,
    /// (latency seconds, cumulative share), increasing.
    pub points: Vec<(f64, f64)>,
    pub slo_s: Option<f64>,
    pub workflows: u64,
}

pub fn latency_cdfs(r: &RunResult) -> Vec<CdfSeries> {
    r.classes
        .iter()
        .map(|c| {
            let total = c.latency_ns.len() as f64;
            let mut points = Vec::new();
            if total > 0.0 {
                for v in c.latency_ns.iter_recorded() {
                    let x = c.latency_ns.highest_equivalent(v.value_iterated_to()) as f64 / 1e9;
                    let y = v.count_since_last_iteration() as f64;
                    let prev = points.last().map(|p: &(f64, f64)| p.1).unwrap_or(0.0);
                    points.push((x, prev + y / total));
                }
            }
            CdfSeries {
                class: c.name.clone(),
                points,
                slo_s: c.slo.map(|d| d.as_secs_f64()),
                workflows: c.latency_ns.len(),
            }
        })
        .collect()
}

fn draw_cdf<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, series: &[CdfSeries]) -> DrawResult {
    root.fill(&WHITE).map_err(s)?;
    let all = series.iter().flat_map(|c| c.points.iter().map(|p| p.0));
    let (mut lo, mut hi) = all.fold((f64::INFINITY, 0f64), |(l, h), x| (l.min(x), h.max(x)));
    for c in series {
        if let Some(slo) = c.slo_s {
            hi = hi.max(slo);
            lo = lo.min(slo);
        }
    }
    if !lo.is_finite() || lo <= 0.0 {
        lo = 1e-3;
    }
    let lo = nice_floor(lo);
    let hi = nice_ceil((hi * 1.15).max(lo * 10.0));
    // Ticks at 1, 2 and 5 x 10^k; faint grid at every integer multiple.
    let (mut ticks, mut grid) = (Vec::new(), Vec::new());
    let mut p = 10f64.powf(lo.log10().floor());
    while p <= hi {
        for m in 1..10 {
            let v = p * m as f64;
            if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                if matches!(m, 1 | 2 | 5) {
                    ticks.push(v);
                } else {
                    grid.push(v);
                }
            }
        }
        p *= 10.0;
    }
    let mut entries = Vec::new();
    for (i, c) in series.iter().enumerate() {
        entries.push(Entry {
            label: format!("{} ({} workflows)", c.class, c.workflows),
            colour: colour(i),
            mark: Mark::Line,
        });
        if let Some(slo) = c.slo_s {
            entries.push(Entry {
                label: format!("{} SLO {}s", c.class, fmt_s(slo)),
                colour: colour(i),
                mark: Mark::Dashed,
            });
        }
    }
    let root = root
        .titled(
            "Workflow latency CDF per class (completed workflows)",
            (FAMILY, 22).into_font(),
        )
        .map_err(s)?;
    let (legend, plot) = root.split_vertically(legend_height(&root, &entries));
    draw_legend(&legend, &entries)?;
    let mut chart = ChartBuilder::on(&plot)
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (lo..hi)
                .log_scale()
                .with_key_points(ticks)
                .with_light_points(grid),
            0f64..1.0,
        )
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc("end-to-end latency (seconds, log scale)")
        .y_desc("cumulative share of workflows")
        .x_label_formatter(&|v| fmt_s(*v))
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(s)?;
    for (i, c) in series.iter().enumerate() {
        let col = colour(i);
        // Step function: each bucket's share is reached at its upper edge.
        let mut pts = Vec::with_capacity(c.points.len() * 2 + 1);
        let mut prev = 0.0;
        for &(x, y) in &c.points {
            pts.push((x, prev));
            pts.push((x, y));
            prev = y;
        }
        chart
            .draw_series(LineSeries::new(pts, col.stroke_width(2)))
            .map_err(s)?;
        if let Some(slo) = c.slo_s {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(slo, 0.0), (slo, 1.0)],
                    6,
                    4,
                    col.stroke_width(2),
                ))
                .map_err(s)?;
        }
    }
    Ok(())
}

/// Cost of each successful workflow of a class.
pub struct CostSeries {
    pub class: String,
    pub usd: Vec<f64>,
}

pub fn cost_series(r: &RunResult) -> Vec<CostSeries> {
    r.classes
        .iter()
        .map(|c| CostSeries {
            class: c.name.clone(),
            usd: c.usd_per_success.clone(),
        })
        .collect()
}

fn draw_cost_hist<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[CostSeries],
) -> DrawResult {
    root.fill(&WHITE).map_err(s)?;
    let root = root
        .titled(
            "Cost per successful workflow, by class",
            (FAMILY, 22).into_font(),
        )
        .map_err(s)?;
    let entries = [
        Entry {
            label: "mean".into(),
            colour: BLACK,
            mark: Mark::Line,
        },
        Entry {
            label: "p95".into(),
            colour: BLACK,
            mark: Mark::Dashed,
        },
    ];
    let (legend, plots) = root.split_vertically(legend_height(&root, &entries));
    draw_legend(&legend, &entries)?;
    let panels = plots.split_evenly((series.len().max(1), 1));
    for (i, (c, area)) in series.iter().zip(panels.iter()).enumerate() {
        draw_cost_panel(area, c, colour(i))?;
    }
    Ok(())
}

/// Largest count shown on a histogram's y axis and the number of labels, so that every
/// label is a whole number of workflows (0, 1, 2 for one workflow, not 0, 0.2, ...).
fn count_axis(max_count: u64) -> (f64, usize) {
    if max_count < 10 {
        let top = max_count + 1;
        (top as f64, top as usize + 1)
    } else {
        (nice_ceil(max_count as f64 * 1.1), 8)
    }
}

/// Where a cost histogram's x axis stops: the largest cost, or the p99 when the tail
/// above it would squeeze the rest into a few bars (the largest more than 1.5x the
/// p99). Returns (axis end, workflows above it).
pub fn cost_axis_end(sorted: &[f64]) -> Option<(f64, usize)> {
    let (&lo, &max) = (sorted.first()?, sorted.last()?);
    let p99 = sim_core::metrics::exact_quantile(sorted, 0.99)?;
    if max - lo > 1.5 * (p99 - lo) && p99 > lo {
        let above = sorted.iter().filter(|&&x| x > p99).count();
        Some((p99, above))
    } else {
        Some((max, 0))
    }
}

fn draw_cost_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    c: &CostSeries,
    col: RGBColor,
) -> DrawResult {
    let mut v = c.usd.clone();
    v.sort_by(f64::total_cmp);
    let Some((end, above)) = cost_axis_end(&v) else {
        // Nothing to plot: say so instead of drawing an empty $0-$1 axis.
        let (w, h) = area.dim_in_pixel();
        area.draw(&Text::new(
            format!("{}: no successful workflow", c.class),
            (w as i32 / 2, 24),
            (FAMILY, 16)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(s)?;
        area.draw(&Text::new(
            "no successful workflow, so no cost per outcome to plot",
            (w as i32 / 2, h as i32 / 2),
            (FAMILY, 15)
                .into_font()
                .color(&RGBColor(110, 110, 110))
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(s)?;
        return Ok(());
    };
    let lo = v[0];
    let (lo, hi) = if end > lo {
        (lo, end)
    } else {
        (lo * 0.9, lo * 1.1 + 1e-9)
    };
    let bins = 40usize;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    for x in v.iter().filter(|&&x| x <= hi) {
        let b = (((x - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let (ymax, ylabels) = count_axis(counts.iter().copied().max().unwrap_or(0));
    let span = hi - lo;
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let p95 = sim_core::metrics::exact_quantile(&v, 0.95).unwrap_or(mean);
    let mut caption = format!(
        "{}: {} successful workflows, mean {}, p95 {}",
        c.class,
        v.len(),
        fmt_usd_axis(mean, span / 10.0),
        fmt_usd_axis(p95, span / 10.0)
    );
    if above > 0 {
        let _ = std::fmt::Write::write_fmt(
            &mut caption,
            format_args!(
                "; {above} above {} (p99) not shown",
                fmt_usd_axis(hi, span / 10.0)
            ),
        );
    }
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 16))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(lo..hi, 0f64..ymax)
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc("USD per successful workflow")
        .y_desc("workflows")
        .x_labels(8)
        .y_labels(ylabels)
        .x_label_formatter(&|x| fmt_usd_axis(*x, span))
        // Whole workflows only (a fractional key point, if any, is left unlabelled).
        .y_label_formatter(&|y| {
            if y.fract().abs() < 1e-9 {
                format!("{y:.0}")
            } else {
                String::new()
            }
        })
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()
        .map_err(s)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(b, &n)| {
            let x0 = lo + b as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width, n as f64)], col.mix(0.7).filled())
        }))
        .map_err(s)?;
    let style = BLACK.stroke_width(2);
    if mean <= hi {
        chart
            .draw_series(LineSeries::new(vec![(mean, 0.0), (mean, ymax)], style))
            .map_err(s)?;
    }
    chart
        .draw_series(DashedLineSeries::new(
            vec![(p95, 0.0), (p95, ymax)],
            6,
            4,
            style,
        ))
        .map_err(s)?;
    Ok(())
}

/// Per-pool series over the run, from `RunResult::timeseries`.
pub struct PoolSeries {
    pub pool: String,
    pub in_system: Vec<(f64, f64)>,
    /// Hops waiting, not in service (the queue depth).
    pub queued: Vec<(f64, f64)>,
    pub utilization: Vec<(f64, f64)>,
    pub servers: Vec<(f64, f64)>,
    /// GPU pools only (empty otherwise): KV cache occupancy (%) and tokens in flight.
    pub kv_occupancy: Vec<(f64, f64)>,
    pub tokens_in_flight: Vec<(f64, f64)>,
}

impl PoolSeries {
    fn gpu(&self) -> bool {
        !self.kv_occupancy.is_empty()
    }
}

/// The time axis of the pools-over-time plot: minutes up to two days, hours up to 90
/// days, days beyond; and the sampling interval in words.
struct TimeAxis {
    unit_s: f64,
    unit: &'static str,
    /// "minute" for the default interval, else like "1h interval".
    interval: String,
}

fn time_axis(r: &RunResult) -> TimeAxis {
    let end = r.timeseries.last().map_or(0.0, |row| row.t_s);
    let (unit_s, unit) = if end <= 2.0 * 86_400.0 {
        (60.0, "minutes")
    } else if end <= 90.0 * 86_400.0 {
        (3600.0, "hours")
    } else {
        (86_400.0, "days")
    };
    // Rows are at every interval from one interval on: the first row's time is it.
    let every = r.timeseries.first().map_or(60.0, |row| row.t_s);
    let interval = if (every - 60.0).abs() < 1e-9 {
        "minute".to_string()
    } else {
        format!(
            "{} interval",
            sim_core::time::SimDuration::from_secs_f64(every)
        )
    };
    TimeAxis {
        unit_s,
        unit,
        interval,
    }
}

pub fn pool_series(r: &RunResult) -> Vec<PoolSeries> {
    let unit_s = time_axis(r).unit_s;
    r.pool_names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut p = PoolSeries {
                pool: name.clone(),
                in_system: Vec::new(),
                queued: Vec::new(),
                utilization: Vec::new(),
                servers: Vec::new(),
                kv_occupancy: Vec::new(),
                tokens_in_flight: Vec::new(),
            };
            for row in &r.timeseries {
                if let Some(sample) = row.pools.get(i) {
                    let t = row.t_s / unit_s;
                    p.in_system.push((t, sample.in_system as f64));
                    p.queued.push((t, sample.queued as f64));
                    p.utilization.push((t, sample.utilization * 100.0));
                    p.servers.push((t, sample.servers as f64));
                    if let Some(kv) = sample.kv_occupancy {
                        p.kv_occupancy.push((t, kv * 100.0));
                    }
                    if let Some(k) = sample.tokens_in_flight {
                        p.tokens_in_flight.push((t, k as f64));
                    }
                }
            }
            p
        })
        .collect()
}

fn draw_timeseries<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    pools: &[PoolSeries],
    axis: &TimeAxis,
) -> DrawResult {
    root.fill(&WHITE).map_err(s)?;
    let title = if axis.interval == "minute" {
        "Pools over time (one point per simulated minute)".to_string()
    } else {
        format!(
            "Pools over time (one point per {} of simulated time)",
            axis.interval
        )
    };
    let root = root.titled(&title, (FAMILY, 22).into_font()).map_err(s)?;
    let each = &axis.interval;
    let entries: Vec<Entry> = pools
        .iter()
        .enumerate()
        .map(|(i, p)| Entry {
            label: p.pool.clone(),
            colour: colour(i),
            mark: Mark::Line,
        })
        .collect();
    let (legend, plots) = root.split_vertically(legend_height(&root, &entries));
    draw_legend(&legend, &entries)?;
    let gpu = pools.iter().any(PoolSeries::gpu);
    let panels = plots.split_evenly((timeseries_panels(pools), 1));
    let tmax = pools
        .iter()
        .flat_map(|p| p.in_system.iter().map(|x| x.0))
        .fold(0f64, f64::max)
        .max(1.0);
    type Pick = fn(&PoolSeries) -> &Vec<(f64, f64)>;
    // (title, y axis, series, y is a percentage)
    let mut panels_spec: Vec<(String, &str, Pick, bool)> = vec![
        (
            format!("Queue depth: hops waiting (not in service) at the end of each {each}"),
            "hops waiting",
            |p| &p.queued,
            false,
        ),
        (
            format!("Utilisation over each {each}"),
            "busy share of servers (%)",
            |p| &p.utilization,
            true,
        ),
        (
            "Servers / replicas provisioned".to_string(),
            "servers",
            |p| &p.servers,
            false,
        ),
    ];
    if gpu {
        panels_spec.push((
            format!("KV cache occupancy at the end of each {each} (GPU pools)"),
            "KV blocks in use (%)",
            |p| &p.kv_occupancy,
            true,
        ));
        panels_spec.push((
            format!("Tokens in flight at the end of each {each} (GPU pools)"),
            "tokens in KV cache",
            |p| &p.tokens_in_flight,
            false,
        ));
    }
    for ((title, ydesc, pick, pct), area) in panels_spec.iter().zip(panels.iter()) {
        let pct = *pct;
        // Pools whose series equals an earlier pool's would hide behind it: name them in
        // the caption and draw them dashed over it.
        let same = same_as_earlier(pools, *pick);
        let mut caption = title.to_string();
        let groups: Vec<String> = (0..pools.len())
            .filter(|&i| same[i].is_none() && same.contains(&Some(i)))
            .map(|i| {
                std::iter::once(i)
                    .chain((0..pools.len()).filter(|&j| same[j] == Some(i)))
                    .map(|j| pools[j].pool.as_str())
                    .collect::<Vec<_>>()
                    .join(" = ")
            })
            .collect();
        if !groups.is_empty() {
            caption = format!("{caption} (same line: {})", groups.join(", "));
        }
        let ymax_data = pools
            .iter()
            .flat_map(|p| pick(p).iter().map(|x| x.1))
            .fold(0f64, f64::max);
        // Counts below 10 get whole-number ticks (0, 1, 2, not 0, 0.2, 0.4).
        let (ymax, ylabels) = if pct {
            (105.0, 7)
        } else if ymax_data < 10.0 {
            count_axis(ymax_data.ceil() as u64)
        } else {
            (nice_ceil(ymax_data * 1.1), 7)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FAMILY, 16))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..tmax, 0f64..ymax)
            .map_err(s)?;
        chart
            .configure_mesh()
            .x_desc(format!("simulated time ({})", axis.unit))
            .x_label_formatter(&|x| fmt_s(*x))
            .y_desc(*ydesc)
            .y_labels(ylabels)
            .y_label_formatter(&|y| {
                if pct {
                    format!("{y:.0}%")
                } else if ymax <= 10.0 && y.fract().abs() > 1e-9 {
                    String::new()
                } else {
                    fmt_count_axis(*y)
                }
            })
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .draw()
            .map_err(s)?;
        for (i, p) in pools.iter().enumerate() {
            if same[i].is_some() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(pick(p).clone(), colour(i).stroke_width(3)))
                .map_err(s)?;
        }
        // A pool equal to an earlier one: dashes in its colour over the first's line, so
        // both colours show along it.
        for (i, p) in pools.iter().enumerate() {
            if same[i].is_some() {
                chart
                    .draw_series(DashedLineSeries::new(
                        pick(p).clone(),
                        10,
                        10,
                        colour(i).stroke_width(3),
                    ))
                    .map_err(s)?;
            }
        }
    }
    Ok(())
}

/// For each pool, the first earlier pool whose series (`pick`) is the same, if any.
fn same_as_earlier(
    pools: &[PoolSeries],
    pick: fn(&PoolSeries) -> &Vec<(f64, f64)>,
) -> Vec<Option<usize>> {
    (0..pools.len())
        .map(|i| {
            let v = pick(&pools[i]);
            (0..i).find(|&j| !v.is_empty() && pick(&pools[j]) == v)
        })
        .collect()
}

/// Panels of the time-series plot: queue depth, utilisation and servers, plus KV
/// occupancy and tokens in flight when a pool is a GPU pool.
fn timeseries_panels(pools: &[PoolSeries]) -> usize {
    if pools.iter().any(PoolSeries::gpu) {
        5
    } else {
        3
    }
}

/// A count on an axis: 0, 2.5, 40, 1,200, 35k, 1.2M.
fn fmt_count_axis(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", (v / 1e5).round() / 10.0)
    } else if a >= 1e4 {
        format!("{}k", (v / 1e2).round() / 10.0)
    } else {
        fmt_s(v)
    }
}

fn plots_dir(dir: &Path) -> Result<PathBuf, PlotError> {
    let p = dir.join("plots");
    std::fs::create_dir_all(&p).map_err(|source| PlotError::Dir {
        path: p.display().to_string(),
        source,
    })?;
    Ok(p)
}

/// Writes the plots of a run into `DIR/plots/`: `latency_cdf`, `usd_per_outcome` and
/// `timeseries`, each as `.svg` and `.png`. Returns the files written.
pub fn write_run_plots(dir: &Path, r: &RunResult) -> Result<Vec<PathBuf>, PlotError> {
    register_font()?;
    let p = plots_dir(dir)?;
    let mut out = Vec::new();
    let cdfs = latency_cdfs(r);
    out.extend(render_both!(
        &p.join("latency_cdf"),
        (1000, 620),
        draw_cdf(&cdfs)
    ));
    let costs = cost_series(r);
    let h = 60 + 320 * costs.len().max(1) as u32;
    out.extend(render_both!(
        &p.join("usd_per_outcome"),
        (1000, h),
        draw_cost_hist(&costs)
    ));
    let pools = pool_series(r);
    let axis = time_axis(r);
    let h = 60 + 320 * timeseries_panels(&pools) as u32;
    out.extend(render_both!(
        &p.join("timeseries"),
        (1000, h),
        draw_timeseries(&pools, &axis)
    ));
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Comparison of variants (for `compare`).

/// One class's figures in each compared variant (same order as the variant names).
#[derive(Clone, Debug)]
pub struct CompareClass {
    pub class: String,
    pub p99_s: Vec<Option<f64>>,
    pub usd_per_outcome: Vec<Option<f64>>,
}

fn draw_compare<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    variants: &[String],
    classes: &[CompareClass],
) -> DrawResult {
    root.fill(&WHITE).map_err(s)?;
    let root = root
        .titled(
            "Variants side by side: p99 latency and $/outcome per class",
            (FAMILY, 22).into_font(),
        )
        .map_err(s)?;
    let entries: Vec<Entry> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| Entry {
            label: v.clone(),
            colour: colour(i),
            mark: Mark::Box,
        })
        .collect();
    let (legend, plots) = root.split_vertically(legend_height(&root, &entries));
    draw_legend(&legend, &entries)?;
    let panels = plots.split_evenly((1, 2));
    let nv = variants.len().max(1) as i32;
    // Each bar is 2 units wide; a class group is 2*nv units plus a 2-unit gap, so the
    // group centre (where the class name goes) falls on an integer.
    let group = 2 * nv + 2;
    let n = classes.len().max(1) as i32;
    type Pick = fn(&CompareClass) -> &Vec<Option<f64>>;
    let spec: [(&str, &str, Pick, bool); 2] = [
        (
            "p99 workflow latency (n/a: no completed workflow)",
            "p99 latency (seconds)",
            |c| &c.p99_s,
            false,
        ),
        (
            "$ per successful workflow (n/a: none succeeded)",
            "USD per outcome (mean)",
            |c| &c.usd_per_outcome,
            true,
        ),
    ];
    for ((title, ydesc, pick, usd), area) in spec.iter().zip(panels.iter()) {
        let ymax_data = classes
            .iter()
            .flat_map(|c| pick(c).iter().flatten().copied())
            .fold(0f64, f64::max);
        let ymax = nice_ceil(ymax_data * 1.1);
        let mut chart = ChartBuilder::on(area)
            .caption(*title, (FAMILY, 15))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(75)
            .build_cartesian_2d(0..n * group, 0f64..ymax)
            .map_err(s)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .set_tick_mark_size(LabelAreaPosition::Bottom, 0)
            .x_desc("workflow class")
            .y_desc(*ydesc)
            .y_label_formatter(&|y| {
                if *usd {
                    fmt_usd_axis(*y, ymax)
                } else {
                    fmt_s(*y)
                }
            })
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 15))
            .draw()
            .map_err(s)?;
        // Class names under their group, 10 px below the axis.
        let base = area.get_base_pixel();
        for (ci, c) in classes.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(ci as i32 * group + 1 + nv, 0.0));
            area.draw(&Text::new(
                c.class.clone(),
                (x - base.0, y - base.1 + 10),
                (FAMILY, 13)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(s)?;
        }
        let fmt_value = |y: f64| {
            if *usd {
                crate::report::fmt_usd(Some(y))
            } else {
                crate::report::fmt_secs(Some(y))
            }
        };
        let label_font = |c: &RGBColor| {
            (FAMILY, 12)
                .into_font()
                .transform(FontTransform::Rotate270)
                .color(c)
                .pos(Pos::new(HPos::Left, VPos::Center))
        };
        for vi in 0..variants.len() {
            let col = colour(vi);
            for (ci, c) in classes.iter().enumerate() {
                let x0 = ci as i32 * group + 1 + 2 * vi as i32;
                let value = pick(c).get(vi).copied().flatten();
                if let Some(y) = value {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(x0, 0.0), (x0 + 2, y)],
                            col.filled(),
                        )))
                        .map_err(s)?;
                }
                // A bar under 2% of the axis could pass for missing: label its value.
                // A missing one says n/a, in grey, over an empty outlined slot.
                let (text, colour_of) = match value {
                    Some(y) if y < ymax * 0.02 => (fmt_value(y), BLACK),
                    Some(_) => continue,
                    None => ("n/a".to_string(), RGBColor(90, 90, 90)),
                };
                let (px, py) = chart.backend_coord(&(x0 + 1, value.unwrap_or(0.0)));
                if value.is_none() {
                    let (x1, _) = chart.backend_coord(&(x0, 0.0));
                    let (x2, _) = chart.backend_coord(&(x0 + 2, 0.0));
                    area.draw(&Rectangle::new(
                        [
                            (x1 - base.0 + 2, py - base.1 - 3),
                            (x2 - base.0 - 2, py - base.1),
                        ],
                        colour_of.stroke_width(1),
                    ))
                    .map_err(s)?;
                }
                area.draw(&Text::new(
                    text,
                    (px - base.0, py - base.1 - 6),
                    label_font(&colour_of),
                ))
                .map_err(s)?;
            }
        }
    }
    Ok(())
}

/// Grouped bar chart of p99 latency and mean $/outcome per class, one bar per variant,
/// written as `stem.svg` and `stem.png` (the parent directory must exist).
pub fn compare_bars(
    stem: &Path,
    variants: &[String],
    classes: &[CompareClass],
) -> Result<Vec<PathBuf>, PlotError> {
    register_font()?;
    let width = (500 + 60 * (variants.len() * classes.len()) as u32).clamp(1000, 2400);
    Ok(render_both!(
        stem,
        (width, 560),
        draw_compare(variants, classes)
    ))
}

// ---------------------------------------------------------------------------------
// Parameter sweeps (for `sweep`).

/// A series of (x, mean, 95% half-width) points.
pub type ErrorSeries = (String, Vec<(f64, f64, f64)>);

/// What `sweep` plots against its first parameter.
#[derive(Clone, Debug)]
pub struct SweepSeries {
    pub x_label: String,
    /// p99 workflow latency per class (and combination of the other swept values).
    pub latency: Vec<ErrorSeries>,
    /// The y label of the wait panel ("p99 wait in queue (s)" or the mean).
    pub wait_label: String,
    /// Simulated wait per pool that has a theory line.
    pub wait_sim: Vec<ErrorSeries>,
    /// The theory's wait per pool, same labels as `wait_sim`.
    pub wait_theory: Vec<(String, Vec<(f64, f64)>)>,
}

fn draw_error_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    sim: &[ErrorSeries],
    theory: &[(String, Vec<(f64, f64)>)],
    first_colour: usize,
) -> DrawResult {
    let xs = sim
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .chain(theory.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
        (l.min(x), h.max(x))
    });
    let (x0, x1) = if x0.is_finite() && x1 > x0 {
        let pad = (x1 - x0) * 0.05;
        (x0 - pad, x1 + pad)
    } else if x0.is_finite() {
        (x0 - 1.0, x0 + 1.0)
    } else {
        (0.0, 1.0)
    };
    let ymax = sim
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1 + q.2))
        .chain(theory.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)))
        .fold(0f64, f64::max);
    let ymax = nice_ceil(ymax * 1.1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 15))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0f64..ymax)
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .y_label_formatter(&|y| fmt_s(*y))
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 15))
        .draw()
        .map_err(s)?;
    for (i, (_, pts)) in sim.iter().enumerate() {
        let col = colour(first_colour + i);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                col.stroke_width(2),
            ))
            .map_err(s)?;
        chart
            .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, col.filled())))
            .map_err(s)?;
        chart
            .draw_series(pts.iter().filter(|p| p.2 > 0.0).map(|p| {
                ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, col.stroke_width(1), 8)
            }))
            .map_err(s)?;
    }
    for (label, pts) in theory {
        // Theory in the colour of the simulated series with the same label.
        let i = sim.iter().position(|(l, _)| l == label).unwrap_or(0);
        chart
            .draw_series(DashedLineSeries::new(
                pts.iter().copied(),
                8,
                5,
                colour(first_colour + i).stroke_width(2),
            ))
            .map_err(s)?;
    }
    Ok(())
}

fn draw_sweep<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, sw: &SweepSeries) -> DrawResult {
    root.fill(&WHITE).map_err(s)?;
    let root = root
        .titled(
            &format!("Sweep of {}", sw.x_label),
            (FAMILY, 22).into_font(),
        )
        .map_err(s)?;
    let mut entries: Vec<Entry> = Vec::new();
    for (i, (label, _)) in sw.latency.iter().enumerate() {
        entries.push(Entry {
            label: format!("class {label}"),
            colour: colour(i),
            mark: Mark::Line,
        });
    }
    let first_pool = sw.latency.len();
    for (i, (label, _)) in sw.wait_sim.iter().enumerate() {
        entries.push(Entry {
            label: format!("pool {label} simulated"),
            colour: colour(first_pool + i),
            mark: Mark::Line,
        });
        if sw.wait_theory.iter().any(|(l, _)| l == label) {
            entries.push(Entry {
                label: format!("pool {label} theory"),
                colour: colour(first_pool + i),
                mark: Mark::Dashed,
            });
        }
    }
    let (legend, plots) = root.split_vertically(legend_height(&root, &entries).max(32));
    draw_legend(&legend, &entries)?;
    if sw.wait_sim.is_empty() {
        return draw_error_panel(
            &plots,
            "p99 workflow latency (bars: 95% interval over seeds)",
            &sw.x_label,
            "p99 latency (seconds)",
            &sw.latency,
            &[],
            0,
        );
    }
    let panels = plots.split_evenly((1, 2));
    draw_error_panel(
        &panels[0],
        "p99 workflow latency (bars: 95% interval over seeds)",
        &sw.x_label,
        "p99 latency (seconds)",
        &sw.latency,
        &[],
        0,
    )?;
    draw_error_panel(
        &panels[1],
        "Queue wait per pool: simulated (points, 95% bars) vs theory (dashed)",
        &sw.x_label,
        &sw.wait_label,
        &sw.wait_sim,
        &sw.wait_theory,
        first_pool,
    )
}

/// Line plots of a sweep, written as `stem.svg` and `stem.png` (the parent directory
/// must exist): p99 latency per class against the first swept value and, for pools
/// where queueing theory applies, the simulated wait next to the theory's.
pub fn sweep_lines(stem: &Path, series: &SweepSeries) -> Result<Vec<PathBuf>, PlotError> {
    register_font()?;
    let width = if series.wait_sim.is_empty() {
        900
    } else {
        1400
    };
    Ok(render_both!(stem, (width, 600), draw_sweep(series)))
}
