//! Fitting a workload profile to a trace and writing it as a scenario fragment.
//!
//! Arrivals: `{ process = "piecewise", step = "1h", rates = [...] }` (per-second rates
//! of consecutive steps from the trace start, the list repeating) when the trace covers
//! at least two steps; else a renewal process with gamma gaps of the trace's mean
//! inter-arrival time and inter-arrival CV, `{ process = "renewal", interarrival =
//! { dist = "gamma", mean = M, cv = CV } }` (so both the rate and the burstiness are
//! reproduced), or `{ process = "poisson", rate = R }` when the CV is within 0.05 of 1
//! or cannot be measured. Token counts: `{ dist = "empirical", values = [...] }`
//! with at most `max_values` values, each the mean of an equal-count slice of the
//! sorted data (so the distribution's mean equals the trace's mean up to rounding to
//! whole tokens), or `{ dist = "lognormal", median = p50, p99 = p99 }`.

use crate::stats::{ClassStats, RequestStats, SpanStats, quantile};
use sim_core::dist::{DistSpec, Num};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Which distribution family to write for token counts and latencies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DistFamily {
    #[default]
    Empirical,
    Lognormal,
}

/// Fitting options.
#[derive(Clone, Debug, PartialEq)]
pub struct FitOptions {
    /// Piecewise arrival step (ns); also the step of the stats' rate table.
    pub step_ns: u64,
    /// At most this many values in an empirical distribution.
    pub max_values: usize,
    pub family: DistFamily,
    /// Class name for request traces (span traces use their own class names).
    pub class_name: String,
    /// The pool named by the fragment's LLM node (edit to match the scenario).
    pub pool: String,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            step_ns: crate::stats::DEFAULT_STEP_NS,
            max_values: 200,
            family: DistFamily::Empirical,
            class_name: "fitted".into(),
            pool: "llm".into(),
        }
    }
}

/// A fitted arrival process.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrivalFit {
    Poisson {
        rate: f64,
    },
    /// Gamma-distributed gaps: mean `mean_gap_s` seconds, coefficient of variation `cv`.
    Renewal {
        mean_gap_s: f64,
        cv: f64,
    },
    /// Rates per step, cycling; with `cv`, gamma gaps of that CV in operational time
    /// (the trace's burstiness within its steps, `ArrivalStats::step_cv`).
    Piecewise {
        step_s: f64,
        rates: Vec<f64>,
        cv: Option<f64>,
    },
}

impl ArrivalFit {
    /// The long-run mean rate per second.
    pub fn mean_rate(&self) -> f64 {
        match self {
            ArrivalFit::Poisson { rate } => *rate,
            ArrivalFit::Renewal { mean_gap_s, .. } => {
                if *mean_gap_s > 0.0 {
                    1.0 / mean_gap_s
                } else {
                    0.0
                }
            }
            ArrivalFit::Piecewise { rates, .. } => {
                if rates.is_empty() {
                    0.0
                } else {
                    rates.iter().sum::<f64>() / rates.len() as f64
                }
            }
        }
    }
}

/// Agent-workflow figures fitted from span traces.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentFit {
    /// Children per span that has children.
    pub fanout: Option<DistSpec>,
    /// LLM hops per workflow.
    pub llm_hops: Option<DistSpec>,
    /// Tool latency in seconds.
    pub tool_latency: Option<DistSpec>,
    pub retry_probability: f64,
    /// The share of LLM spans that ended in an error: an `error_rate` of the pool
    /// they run on (a pool's, not the class's, so written as a comment).
    pub llm_error_share: f64,
    pub shared_prefix_share: f64,
    /// Mean input-token growth from an LLM hop to its LLM child.
    pub context_growth_tokens: f64,
    /// The workflow graph written for the class: one node per role, in the order of
    /// the roles' first starts; `None` when the roles do not fit that shape (a role
    /// missing from some workflows), and a single LLM node fanned out to the class's
    /// LLM hops per workflow is written instead.
    pub nodes: Option<Vec<FitNode>>,
}

/// One node of a fitted agent graph.
#[derive(Clone, Debug, PartialEq)]
pub struct FitNode {
    pub id: String,
    /// `Some(tool)` for a tool node, `None` for an LLM node.
    pub tool: Option<String>,
    /// LLM nodes: per-call token distributions.
    pub input_tokens: Option<DistSpec>,
    pub output_tokens: Option<DistSpec>,
    /// Tool nodes: latency in seconds.
    pub latency: Option<DistSpec>,
    /// Tool nodes: the share of their spans that ended in an error (each try fails
    /// with it), and the retries after a failure (the highest `attempt` seen, less
    /// one); 0 and 0 where none failed.
    pub failure_probability: f64,
    pub retries: u32,
    /// Calls per workflow when not always one: a fan-out of that many branches.
    pub count: Option<DistSpec>,
    /// The fan-out branch runs from this node to `through` (a following role with the
    /// same count in every workflow whose spans all hang under this one).
    pub through: Option<String>,
    pub after: Option<String>,
}

/// One fitted workflow class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassFit {
    pub name: String,
    pub arrival: ArrivalFit,
    /// Inter-arrival CV of the source (reported; the arrival spec is Poisson within a
    /// step, CV 1).
    pub interarrival_cv: f64,
    pub input_tokens: DistSpec,
    pub output_tokens: DistSpec,
    pub agent: Option<AgentFit>,
    /// Rows (requests, or workflows) behind the fit.
    pub rows: u64,
    pub duration_s: f64,
}

/// A fitted profile: what `factorysim fit` writes.
#[derive(Clone, Debug, PartialEq)]
pub struct FitProfile {
    pub source: String,
    /// The pool the fragment's LLM nodes name.
    pub pool: String,
    pub classes: Vec<ClassFit>,
}

/// At most `m` values: the means of `m` equal-count slices of `sorted` (all values if
/// there are no more than `m`), rounded to `decimals`.
pub fn downsample(sorted: &[f64], m: usize, decimals: i32) -> Vec<f64> {
    let scale = 10f64.powi(decimals);
    let round = |x: f64| (x * scale).round() / scale;
    let n = sorted.len();
    if n <= m.max(1) {
        return sorted.iter().map(|&x| round(x)).collect();
    }
    let m = m.max(1);
    (0..m)
        .map(|i| {
            let a = i * n / m;
            let b = ((i + 1) * n / m).max(a + 1);
            round(sorted[a..b].iter().sum::<f64>() / (b - a) as f64)
        })
        .collect()
}

fn dist(sorted: &[f64], opts: &FitOptions, decimals: i32) -> Option<DistSpec> {
    if sorted.is_empty() {
        return None;
    }
    Some(match opts.family {
        DistFamily::Empirical => DistSpec::Empirical {
            values: downsample(sorted, opts.max_values, decimals)
                .into_iter()
                .map(Num)
                .collect(),
        },
        DistFamily::Lognormal => {
            // The sampler needs 0 < median <= p99.
            let median = quantile(sorted, 0.5).max(1e-9);
            let p99 = quantile(sorted, 0.99).max(median);
            DistSpec::Lognormal {
                median: Num(median),
                p99: Num(p99),
            }
        }
    })
}

/// A count distribution (calls per workflow) as an empirical list of at most
/// `max_values` whole values: every distinct count, repeated in proportion to its
/// frequency (largest remainders), so its shares and mean stay those of the data (the
/// slice means of `downsample` would blend neighbouring counts).
pub fn count_dist(sorted: &[f64], max_values: usize) -> Option<DistSpec> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let m = max_values.max(1);
    let mut distinct: Vec<(f64, usize)> = Vec::new();
    for &x in sorted {
        match distinct.last_mut() {
            Some((v, c)) if *v == x => *c += 1,
            _ => distinct.push((x, 1)),
        }
    }
    let values: Vec<f64> = if n <= m {
        sorted.to_vec()
    } else {
        let mut slots: Vec<(usize, usize, f64)> = distinct
            .iter()
            .enumerate()
            .map(|(i, &(_, c))| {
                let exact = c as f64 * m as f64 / n as f64;
                (i, exact.floor() as usize, exact - exact.floor())
            })
            .collect();
        let mut left = m - slots.iter().map(|s| s.1).sum::<usize>();
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_by(|&a, &b| slots[b].2.total_cmp(&slots[a].2).then(a.cmp(&b)));
        for k in order {
            if left == 0 {
                break;
            }
            slots[k].1 += 1;
            left -= 1;
        }
        slots
            .iter()
            .flat_map(|&(i, k, _)| std::iter::repeat_n(distinct[i].0, k))
            .collect()
    };
    Some(DistSpec::Empirical {
        values: values.into_iter().map(Num).collect(),
    })
}

fn token_dist(sorted: &[f64], opts: &FitOptions) -> DistSpec {
    dist(sorted, opts, 0).unwrap_or(DistSpec::Constant { value: Num(0.0) })
}

fn arrival_fit(a: &crate::stats::ArrivalStats) -> ArrivalFit {
    if a.rate_by_step.len() >= 2 && a.duration_s >= 2.0 * a.step_s {
        ArrivalFit::Piecewise {
            step_s: a.step_s,
            rates: a.rate_by_step.clone(),
            // Burstiness within the steps, as the renewal fit below keeps it overall.
            cv: (a.rows >= 3 && a.step_cv > 0.0 && (a.step_cv - 1.0).abs() > 0.05)
                .then_some(a.step_cv),
        }
    } else if a.rows >= 3
        && a.mean_rate_per_s > 0.0
        && a.interarrival_cv > 0.0
        && (a.interarrival_cv - 1.0).abs() > 0.05
    {
        ArrivalFit::Renewal {
            mean_gap_s: 1.0 / a.mean_rate_per_s,
            cv: a.interarrival_cv,
        }
    } else {
        ArrivalFit::Poisson {
            rate: a.mean_rate_per_s,
        }
    }
}

/// Fits one class to a request trace's statistics.
pub fn fit_requests(stats: &RequestStats, source: &str, opts: &FitOptions) -> FitProfile {
    FitProfile {
        source: source.to_string(),
        pool: opts.pool.clone(),
        classes: vec![ClassFit {
            name: opts.class_name.clone(),
            arrival: arrival_fit(&stats.arrivals),
            interarrival_cv: stats.arrivals.interarrival_cv,
            input_tokens: token_dist(&stats.input_sorted, opts),
            output_tokens: token_dist(&stats.output_sorted, opts),
            agent: None,
            rows: stats.arrivals.rows,
            duration_s: stats.arrivals.duration_s,
        }],
    }
}

/// A TOML-safe node id from a role name.
fn node_id(role: &str, kind: crate::span::SpanKind, used: &mut Vec<String>) -> String {
    let mut id: String = role
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        id = kind.name().to_string();
    }
    let base = id.clone();
    let mut k = 2;
    while used.contains(&id) {
        id = format!("{base}-{k}");
        k += 1;
    }
    used.push(id.clone());
    id
}

/// One node per role in first-start order, each after the previous; a role with more
/// than one call in some workflow fans out (its count distribution), and a following
/// role whose spans all hang under it with the same count in every workflow runs in
/// its branch. `None` when a role is missing from some workflow (no way to say "sometimes"
/// for a model or tool node).
fn role_graph(c: &ClassStats, opts: &FitOptions) -> Option<Vec<FitNode>> {
    use crate::span::SpanKind;
    let roles = &c.roles;
    if roles.is_empty() || roles.iter().any(|r| r.counts.iter().any(|&n| n < 1.0)) {
        return None;
    }
    let mut used = Vec::new();
    let ids: Vec<String> = roles
        .iter()
        .map(|r| node_id(&r.role, r.kind, &mut used))
        .collect();
    let mut nodes: Vec<FitNode> = Vec::new();
    let mut i = 0;
    while i < roles.len() {
        let r = &roles[i];
        let varies = r.counts.iter().any(|&n| n != 1.0);
        // The branch: following roles with the same count in every workflow whose
        // parents are all the previous role of the branch.
        let mut end = i;
        if varies {
            while end + 1 < roles.len()
                && roles[end + 1].counts == r.counts
                && roles[end + 1].parent_roles.len() == 1
                && roles[end + 1].parent_roles.contains(&roles[end].role)
            {
                end += 1;
            }
        }
        for j in i..=end {
            let rj = &roles[j];
            let mut counts = rj.counts.clone();
            counts.sort_by(f64::total_cmp);
            let tool = rj.kind == SpanKind::Tool;
            let tool_name = if rj.tier.is_empty() {
                rj.role.clone()
            } else {
                rj.tier.clone()
            };
            let lat_s: Vec<f64> = rj.latency_sorted_ms.iter().map(|ms| ms / 1e3).collect();
            nodes.push(FitNode {
                id: ids[j].clone(),
                tool: tool.then_some(tool_name),
                input_tokens: (!tool).then(|| token_dist(&rj.input_sorted, opts)),
                output_tokens: (!tool).then(|| token_dist(&rj.output_sorted, opts)),
                latency: if tool { dist(&lat_s, opts, 4) } else { None },
                failure_probability: if tool && rj.spans > 0 {
                    rj.errors as f64 / rj.spans as f64
                } else {
                    0.0
                },
                retries: if tool {
                    rj.max_attempt.saturating_sub(1)
                } else {
                    0
                },
                count: (j == i && varies).then(|| dist(&counts, opts, 0)).flatten(),
                through: (j == i && end > i).then(|| ids[end].clone()),
                after: (j > 0).then(|| ids[j - 1].clone()),
            });
        }
        i = end + 1;
    }
    Some(nodes)
}

fn fit_class(c: &ClassStats, opts: &FitOptions) -> ClassFit {
    let tool_s: Vec<f64> = c.tool_latency_sorted_ms.iter().map(|ms| ms / 1e3).collect();
    ClassFit {
        name: c.class.clone(),
        arrival: arrival_fit(&c.arrivals),
        interarrival_cv: c.arrivals.interarrival_cv,
        input_tokens: token_dist(&c.input_sorted, opts),
        output_tokens: token_dist(&c.output_sorted, opts),
        agent: Some(AgentFit {
            fanout: dist(&c.fanout_sorted, opts, 0),
            llm_hops: count_dist(&c.llm_hops_sorted, opts.max_values),
            tool_latency: dist(&tool_s, opts, 4),
            retry_probability: c.retry_rate,
            llm_error_share: {
                let llm = c
                    .roles
                    .iter()
                    .filter(|r| r.kind == crate::span::SpanKind::Llm);
                let (errors, spans) = llm.fold((0, 0), |(e, n), r| (e + r.errors, n + r.spans));
                if spans > 0 {
                    errors as f64 / spans as f64
                } else {
                    0.0
                }
            },
            shared_prefix_share: c.shared_prefix_share,
            context_growth_tokens: c.context_growth.mean,
            nodes: role_graph(c, opts),
        }),
        rows: c.workflows,
        duration_s: c.arrivals.duration_s,
    }
}

/// Fits every workflow class of a span trace.
pub fn fit_spans(stats: &SpanStats, source: &str, opts: &FitOptions) -> FitProfile {
    FitProfile {
        source: source.to_string(),
        pool: opts.pool.clone(),
        classes: stats.classes.values().map(|c| fit_class(c, opts)).collect(),
    }
}

/// A number for TOML: integers without a fraction, others to 6 significant digits.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return "0".into();
    }
    if x == x.trunc() && x.abs() < 1e15 {
        return format!("{}", x as i64);
    }
    let digits = (6 - 1 - x.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{x:.digits$}");
    let s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// A distribution as an inline TOML table, in `DistSpec`'s format.
pub fn dist_toml(d: &DistSpec) -> String {
    match d {
        DistSpec::Empirical { values } => {
            let v: Vec<String> = values.iter().map(|x| num(x.0)).collect();
            format!("{{ dist = \"empirical\", values = [{}] }}", v.join(", "))
        }
        DistSpec::Lognormal { median, p99 } => format!(
            "{{ dist = \"lognormal\", median = {}, p99 = {} }}",
            num(median.0),
            num(p99.0)
        ),
        DistSpec::Constant { value } | DistSpec::Deterministic { value } => {
            format!("{{ dist = \"constant\", value = {} }}", num(value.0))
        }
        DistSpec::Uniform { low, high } => format!(
            "{{ dist = \"uniform\", low = {}, high = {} }}",
            num(low.0),
            num(high.0)
        ),
        DistSpec::Exponential { mean } => {
            format!("{{ dist = \"exponential\", mean = {} }}", num(mean.0))
        }
        DistSpec::Normal { mean, std } => format!(
            "{{ dist = \"normal\", mean = {}, std = {} }}",
            num(mean.0),
            num(std.0)
        ),
        DistSpec::Gamma { mean, cv } => format!(
            "{{ dist = \"gamma\", mean = {}, cv = {} }}",
            num(mean.0),
            num(*cv)
        ),
    }
}

/// A duration in seconds as a scenario duration string ("1h", "90s").
fn duration_str(s: f64) -> String {
    if s >= 3600.0 && s % 3600.0 == 0.0 {
        format!("{}h", (s / 3600.0) as u64)
    } else if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", (s / 60.0) as u64)
    } else {
        format!("{}s", num(s))
    }
}

/// The arrival spec as an inline TOML table.
pub fn arrival_toml(a: &ArrivalFit) -> String {
    match a {
        ArrivalFit::Poisson { rate } => {
            format!("{{ process = \"poisson\", rate = {} }}", num(*rate))
        }
        ArrivalFit::Renewal { mean_gap_s, cv } => format!(
            "{{ process = \"renewal\", interarrival = {{ dist = \"gamma\", mean = {}, cv = {} }} }}",
            num(*mean_gap_s),
            num(*cv)
        ),
        ArrivalFit::Piecewise { step_s, rates, cv } => {
            let r: Vec<String> = rates.iter().map(|x| num(*x)).collect();
            format!(
                "{{ process = \"piecewise\", step = \"{}\", rates = [{}]{} }}",
                duration_str(*step_s),
                r.join(", "),
                cv.map(|cv| format!(", cv = {}", num(cv)))
                    .unwrap_or_default()
            )
        }
    }
}

/// A TOML bare key, or a quoted one.
fn key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

impl FitProfile {
    /// The scenario fragment: per class a `[classes.NAME]` table with the arrival
    /// spec and one LLM node carrying the token distributions (per LLM hop for span
    /// traces); agent figures of span traces follow as comments.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Fitted by `factorysim fit` from {}.", self.source);
        let _ = writeln!(
            out,
            "# Merge into a scenario that defines pool `{}` (or edit `pool`).",
            self.pool
        );
        for c in &self.classes {
            let name = key(&c.name);
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "# {} rows over {} s; mean rate {}/s; inter-arrival CV {} (1 = Poisson, > 1 burstier).",
                c.rows,
                num(c.duration_s),
                num(if c.duration_s > 0.0 && c.rows > 1 {
                    (c.rows - 1) as f64 / c.duration_s
                } else {
                    c.arrival.mean_rate()
                }),
                num(c.interarrival_cv)
            );
            if let Some(a) = &c.agent {
                let _ = writeln!(
                    out,
                    "# Agent profile of this class (per workflow / per hop):"
                );
                if let Some(d) = &a.llm_hops {
                    let _ = writeln!(out, "#   llm_hops = {}", dist_toml(d));
                }
                if let Some(d) = &a.fanout {
                    let _ = writeln!(out, "#   fan_out count = {}", dist_toml(d));
                }
                if let Some(d) = &a.tool_latency {
                    let _ = writeln!(out, "#   tool latency (s) = {}", dist_toml(d));
                }
                let _ = writeln!(
                    out,
                    "#   retry probability = {}, shared-prefix share = {}, context growth per hop = {} tokens",
                    num(a.retry_probability),
                    num(a.shared_prefix_share),
                    num(a.context_growth_tokens)
                );
                if a.llm_error_share > 0.0 {
                    let _ = writeln!(
                        out,
                        "#   llm calls ending in an error = {} (set it as the pool's error_rate)",
                        num(a.llm_error_share)
                    );
                }
            }
            let _ = writeln!(out, "[classes.{name}]");
            let _ = writeln!(out, "arrival = {}", arrival_toml(&c.arrival));
            let agent_nodes = c.agent.as_ref().and_then(|a| a.nodes.as_ref());
            match (agent_nodes, &c.agent) {
                (Some(nodes), _) => {
                    for n in nodes {
                        let _ = writeln!(out);
                        let _ = writeln!(out, "[[classes.{name}.nodes]]");
                        let _ = writeln!(out, "id = {:?}", n.id);
                        if let Some(after) = &n.after {
                            let _ = writeln!(out, "after = [{after:?}]");
                        }
                        match &n.tool {
                            Some(t) => {
                                let _ = writeln!(out, "kind = \"tool\"");
                                let _ = writeln!(out, "tool = {t:?}");
                                if let Some(l) = &n.latency {
                                    let _ = writeln!(out, "service = {}", dist_toml(l));
                                }
                            }
                            None => {
                                let _ = writeln!(out, "pool = {:?}", self.pool);
                                // A recorded prompt already holds its context.
                                let _ = writeln!(out, "inherit = 0");
                                for (k, d) in [
                                    ("input_tokens", &n.input_tokens),
                                    ("output_tokens", &n.output_tokens),
                                ] {
                                    if let Some(d) = d {
                                        let _ = writeln!(out, "{k} = {}", dist_toml(d));
                                    }
                                }
                            }
                        }
                        if let Some(count) = &n.count {
                            let through = n
                                .through
                                .as_ref()
                                .map(|t| format!(", through = {t:?}"))
                                .unwrap_or_default();
                            let _ = writeln!(
                                out,
                                "fan_out = {{ count = {}{through} }}",
                                dist_toml(count)
                            );
                        }
                    }
                }
                (None, agent) => {
                    let _ = writeln!(out);
                    let _ = writeln!(out, "[[classes.{name}.nodes]]");
                    let _ = writeln!(out, "id = \"call\"");
                    let _ = writeln!(out, "pool = {:?}", self.pool);
                    let _ = writeln!(out, "input_tokens = {}", dist_toml(&c.input_tokens));
                    let _ = writeln!(out, "output_tokens = {}", dist_toml(&c.output_tokens));
                    // Span traces: as many calls per workflow as the recorded LLM hops.
                    if let Some(hops) = agent.as_ref().and_then(|a| a.llm_hops.as_ref())
                        && !matches!(hops, DistSpec::Empirical { values } if values.iter().all(|v| v.0 == 1.0))
                    {
                        let _ = writeln!(out, "inherit = 0");
                        let _ = writeln!(out, "fan_out = {{ count = {} }}", dist_toml(hops));
                    }
                }
            }
        }
        // Tools the fitted graphs call (delete a table the scenario already has).
        let mut tools: BTreeMap<&str, &FitNode> = BTreeMap::new();
        for c in &self.classes {
            for n in c.agent.iter().flat_map(|a| a.nodes.iter().flatten()) {
                if let (Some(t), Some(_)) = (&n.tool, &n.latency) {
                    tools.entry(t.as_str()).or_insert(n);
                }
            }
        }
        for (t, n) in tools {
            let _ = writeln!(out);
            let _ = writeln!(out, "[tools.{}]", key(t));
            if let Some(l) = &n.latency {
                let _ = writeln!(out, "latency = {}", dist_toml(l));
            }
            if n.failure_probability > 0.0 {
                let _ = writeln!(out, "failure_probability = {}", num(n.failure_probability));
                let _ = writeln!(out, "retries = {}", n.retries);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsample_keeps_the_mean() {
        let v: Vec<f64> = (1..=1000).map(|x| (x * x) as f64).collect();
        let d = downsample(&v, 200, 6);
        assert_eq!(d.len(), 200);
        let m1 = v.iter().sum::<f64>() / v.len() as f64;
        let m2 = d.iter().sum::<f64>() / d.len() as f64;
        assert!((m1 - m2).abs() / m1 < 1e-9, "{m1} {m2}");
        assert_eq!(downsample(&[3.0, 1.0], 200, 0), vec![3.0, 1.0]);
    }

    #[test]
    fn numbers_print_cleanly() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(5.531234567), "5.53123");
        assert_eq!(num(0.000123456789), "0.000123457");
        assert_eq!(duration_str(3600.0), "1h");
        assert_eq!(duration_str(90.0), "90s");
    }
}
