//! What the plots draw, read back from their SVG: data marks per class or pool (an
//! empty plot fails), axis labels with units, legends, and the notes for empty classes,
//! clipped tails, overlapping lines and missing or tiny bars.

use super::{quickstart, read, run_ok, tempdir};
use serde_json::Value;
use std::path::Path;

/// Colours of the first classes/pools/variants (the plots' palette).
const BLUE: &str = "#1F77B4";
const ORANGE: &str = "#FF7F0E";
const GREEN: &str = "#2CA02C";

/// The attribute strings of every `<tag ...>` element.
fn elements<'a>(svg: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag} ");
    svg.match_indices(&open)
        .map(|(i, _)| {
            let rest = &svg[i + open.len()..];
            &rest[..rest.find('>').unwrap_or(rest.len())]
        })
        .collect()
}

fn attr<'a>(el: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = format!(" {el}").find(&key)?;
    let rest = &el[i + key.len() - 1..];
    Some(&rest[..rest.find('"')?])
}

/// The text of every `<text>` element, trimmed.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text ")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// Polylines in `colour` with at least `min_points` points.
fn lines(svg: &str, colour: &str, min_points: usize) -> usize {
    elements(svg, "polyline")
        .iter()
        .filter(|e| attr(e, "stroke") == Some(colour))
        .filter(|e| attr(e, "points").is_some_and(|p| p.split_whitespace().count() >= min_points))
        .count()
}

/// Filled rectangles in `colour` taller than 0 px.
fn bars(svg: &str, colour: &str) -> usize {
    elements(svg, "rect")
        .iter()
        .filter(|e| attr(e, "fill") == Some(colour))
        .filter(|e| {
            attr(e, "height")
                .and_then(|h| h.parse::<f64>().ok())
                .is_some_and(|h| h > 0.0)
        })
        .count()
}

fn assert_texts(svg: &str, file: &str, needles: &[&str]) {
    let all = texts(svg).join("\n");
    for n in needles {
        assert!(all.contains(n), "{file} lacks text {n:?}:\n{all}");
    }
}

/// A whole count of workflows or hops, never 0.2 of one.
fn no_fractional_counts(svg: &str, file: &str) {
    for t in texts(svg) {
        let frac = t.contains('.') && t.parse::<f64>().is_ok_and(|x| x.fract() != 0.0);
        assert!(!frac, "{file}: fractional tick label {t:?}");
    }
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&read(&dir.join("summary.json"))).unwrap()
}

#[test]
fn quickstart_plots_draw_their_data_with_labels_and_legends() {
    let (dir, _) = quickstart(&[]);
    let s = summary(dir.path());
    let plots = dir.path().join("plots");
    let minutes = 30;

    let cdf = read(&plots.join("latency_cdf.svg"));
    // One step line per class, two points per recorded latency bucket (hundreds), and
    // one dashed SLO line per class (dashes: many short polylines).
    for colour in [BLUE, ORANGE] {
        assert_eq!(
            lines(&cdf, colour, 100),
            1,
            "latency_cdf: one CDF in {colour}"
        );
        assert!(
            lines(&cdf, colour, 2) > 10,
            "latency_cdf: SLO dashes in {colour}"
        );
    }
    assert_texts(
        &cdf,
        "latency_cdf",
        &[
            "end-to-end latency (seconds, log scale)",
            "cumulative share of workflows",
            "chat (4260 workflows)",
            "report (245 workflows)",
            "chat SLO 8s",
            "report SLO 60s",
            "100%",
        ],
    );

    let usd = read(&plots.join("usd_per_outcome.svg"));
    // 40 bins per class; the quickstart fills most of them.
    let (chat_bars, report_bars) = (bars(&usd, BLUE), bars(&usd, ORANGE));
    assert!((35..=40).contains(&chat_bars), "{chat_bars}");
    assert!((20..=40).contains(&report_bars), "{report_bars}");
    // chat's tail beyond its p99 is clipped and counted: every completion above the
    // nearest-rank p99.
    let n = s["classes"]["chat"]["completed"].as_u64().unwrap();
    let above = n - (0.99 * n as f64).ceil() as u64;
    assert_eq!(above, 42);
    assert_texts(
        &usd,
        "usd_per_outcome",
        &[
            "USD per successful workflow",
            "workflows",
            "mean",
            "p95",
            "chat: 4260 successful workflows, mean $0.0077, p95 $0.0141",
            &format!("; {above} above $0.0187 (p99) not shown"),
            "report: 245 successful workflows",
        ],
    );
    no_fractional_counts(&usd, "usd_per_outcome");

    let ts = read(&plots.join("timeseries.svg"));
    // Three panels, one line per pool in each, one point per minute.
    for colour in [BLUE, ORANGE] {
        assert_eq!(lines(&ts, colour, minutes), 3, "timeseries: {colour}");
    }
    assert_texts(
        &ts,
        "timeseries",
        &[
            "Queue depth: hops waiting (not in service)",
            "hops waiting",
            "busy share of servers (%)",
            "servers",
            "simulated time (minutes)",
            "llm-large",
            "tools",
        ],
    );
    // Queue depth is the waiting count (timeseries.csv's `_queued`), not hops in the
    // pool: its peak is the CSV's peak of llm-large_queued, below that of _in_system.
    let csv = read(&dir.path().join("timeseries.csv"));
    let head: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let peak = |c: usize| {
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').nth(c).unwrap().parse::<f64>().unwrap())
            .fold(0f64, f64::max)
    };
    let (queued, in_system) = (
        peak(col("llm-large_queued")),
        peak(col("llm-large_in_system")),
    );
    assert!(queued < in_system, "{queued} {in_system}");
    // The y axis ends at the first nice value above 1.1 x the peak waiting count.
    let top = if queued * 1.1 <= 15.0 { "15" } else { "20" };
    assert_texts(&ts, "timeseries", &[top]);
}

#[test]
fn an_empty_class_gets_a_note_and_a_small_one_whole_number_ticks() {
    let (dir, _) = quickstart(&["--set", "classes.report.arrival.rate=0.000001"]);
    let usd = read(&dir.path().join("plots/usd_per_outcome.svg"));
    assert_eq!(bars(&usd, ORANGE), 0);
    assert_texts(
        &usd,
        "usd_per_outcome",
        &[
            "report: no successful workflow",
            "no successful workflow, so no cost per outcome to plot",
        ],
    );
    // No empty $0-$1 axis for it.
    assert!(!texts(&usd).iter().any(|t| t == "$1.0" || t == "$0.2"));
    // Five reports: one bar per workflow at most, y ticks 0, 1, 2.
    let (dir, _) = quickstart(&["--set", "classes.report.arrival.rate=0.002"]);
    let s = summary(dir.path());
    assert_eq!(s["classes"]["report"]["completed"], 5);
    let usd = read(&dir.path().join("plots/usd_per_outcome.svg"));
    let b = bars(&usd, ORANGE);
    assert!((1..=5).contains(&b), "{b}");
    no_fractional_counts(&usd, "usd_per_outcome");
    let t = texts(&usd);
    for tick in ["0", "1", "2"] {
        assert!(t.iter().any(|x| x == tick), "tick {tick} missing");
    }
}

#[test]
fn cost_axis_clips_a_long_tail_at_the_p99() {
    use factorysim::plots::cost_axis_end;
    // 1,000 costs 1..1000 cents plus 5 outliers at $100: the axis ends at the p99.
    let mut v: Vec<f64> = (1..=1000).map(|c| c as f64 / 100.0).collect();
    v.extend([100.0; 5]);
    let (end, above) = cost_axis_end(&v).unwrap();
    // nearest rank: ceil(0.99 x 1005) = 995th value = $9.95
    assert_eq!(end, 9.95);
    assert_eq!(above, 10);
    // No long tail: the axis runs to the largest.
    let v: Vec<f64> = (1..=100).map(|c| c as f64).collect();
    assert_eq!(cost_axis_end(&v), Some((100.0, 0)));
    assert_eq!(cost_axis_end(&[]), None);
    assert_eq!(cost_axis_end(&[0.5]), Some((0.5, 0)));
}

#[test]
fn gpu_timeseries_marks_pools_with_the_same_line() {
    let dir = tempdir();
    run_ok(&[
        "run",
        "scenarios/gpu-pool.toml",
        "--set",
        "simulation.horizon=6m",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let ts = read(&dir.path().join("plots/timeseries.svg"));
    // a100 and h100 both have 4 replicas: named in the servers panel, h100 dashed over
    // a100 (many short orange segments) while a100 keeps one full line there.
    assert_texts(
        &ts,
        "timeseries",
        &["Servers / replicas provisioned (same line: a100 = h100)"],
    );
    let minutes = 6;
    // a100: five panels, one full line each.
    assert_eq!(lines(&ts, BLUE, minutes), 5);
    // h100: four full lines; the servers line is dashes.
    assert_eq!(lines(&ts, ORANGE, minutes), 4);
    assert!(lines(&ts, ORANGE, 2) > 4 + 10);
    assert_texts(
        &ts,
        "timeseries",
        &["KV blocks in use (%)", "tokens in KV cache"],
    );
    no_fractional_counts(&ts, "timeseries");
}

#[test]
fn compare_bars_mark_missing_and_label_tiny_values() {
    use factorysim::plots::{CompareClass, compare_bars};
    let dir = tempdir();
    let variants = vec!["base".to_string(), "cheap".to_string(), "api".to_string()];
    let classes = vec![
        CompareClass {
            class: "chat".into(),
            p99_s: vec![Some(9.72), Some(6.1), Some(7.4)],
            usd_per_outcome: vec![Some(0.05), Some(0.00008), Some(0.011)],
        },
        CompareClass {
            class: "report".into(),
            p99_s: vec![Some(38.3), Some(24.0), None],
            usd_per_outcome: vec![Some(0.0515), Some(0.0602), None],
        },
    ];
    let stem = dir.path().join("compare");
    compare_bars(&stem, &variants, &classes).unwrap();
    let svg = read(&stem.with_extension("svg"));
    // One bar per value present (base 4, cheap 4 with a sub-pixel one, api 2), plus
    // each variant's legend box.
    assert_eq!(bars(&svg, BLUE), 4 + 1);
    assert!((3 + 1..=4 + 1).contains(&bars(&svg, ORANGE)));
    assert_eq!(bars(&svg, GREEN), 2 + 1);
    let t = texts(&svg);
    // The two missing values say so; the tiny one shows its value.
    assert_eq!(t.iter().filter(|x| *x == "n/a").count(), 2);
    assert!(t.iter().any(|x| x == "$0.00008"), "{t:?}");
    assert_texts(
        &svg,
        "compare",
        &[
            "p99 latency (seconds)",
            "USD per outcome (mean)",
            "workflow class",
            "n/a: no completed workflow",
            "base",
            "cheap",
            "api",
            "chat",
            "report",
        ],
    );
    // Class names sit below the axis with a gap: their text top is at least 8 px under
    // the bottom of the bars.
    let axis_y = elements(&svg, "rect")
        .iter()
        .filter(|e| attr(e, "fill") == Some(BLUE))
        .map(|e| {
            attr(e, "y").unwrap().parse::<f64>().unwrap()
                + attr(e, "height").unwrap().parse::<f64>().unwrap()
        })
        .fold(0f64, f64::max);
    let label_y = elements(&svg, "text")
        .iter()
        .zip(texts(&svg))
        .filter(|(_, t)| t == "chat")
        .map(|(e, _)| attr(e, "y").unwrap().parse::<f64>().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert!(
        label_y >= axis_y + 8.0,
        "label at {label_y}, axis at {axis_y}"
    );
}
