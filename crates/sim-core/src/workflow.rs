//! Agent workflows as graphs: the node schema a scenario writes, and its validation
//! into a [`WorkflowGraph`] (checked with petgraph: no cycles other than declared loops,
//! every id known, every node reachable from the entry).
//!
//! Edges are written on the child: `after = ["plan"]`. The first node listed is the
//! entry; every other node must name at least one parent.

use crate::dist::{DistSpec, Sampler};
use crate::time::SimDuration;
use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Deserialize;
use std::collections::BTreeMap;

/// What a node does.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A model call on a pool.
    #[default]
    Llm,
    /// A call to a named downstream system (see `[tools.NAME]`).
    Tool,
    /// Human review, taken with some probability.
    Human,
    /// A model call that summarises the inherited context down to `compact_to` tokens.
    Compact,
}

/// The most branches one fan-out may draw (`fan_out.count`'s largest draw, or its
/// 99.9th percentile when unbounded).
pub const MAX_BRANCHES: f64 = 100_000.0;

/// `[[classes.NAME.nodes]]`: one node of a workflow graph, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub id: String,
    #[serde(default)]
    pub kind: NodeKind,
    /// A disabled node passes its inherited context straight on, taking no time (to
    /// switch steps on and off from the command line: `--set ...enabled=false`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Parents: this node starts when all of them have finished.
    #[serde(default)]
    pub after: Vec<String>,
    /// Agent role, for reports and prefix grouping (defaults to the id).
    #[serde(default)]
    pub role: Option<String>,
    /// llm/compact: the pool that serves the call.
    #[serde(default)]
    pub pool: Option<String>,
    /// llm/compact: instead of a pool, a tier; the router picks among its pools.
    #[serde(default)]
    pub tier: Option<String>,
    /// llm/compact on a queueing pool: service time (defaults to the pool's `service`);
    /// tool: this call's latency (defaults to the tool's `latency`).
    #[serde(default)]
    pub service: Option<DistSpec>,
    /// llm: prompt tokens written by this node itself (system prompt + instructions).
    #[serde(default, deserialize_with = "crate::dist::counts_opt")]
    pub input_tokens: Option<DistSpec>,
    /// llm: generated tokens.
    #[serde(default, deserialize_with = "crate::dist::counts_opt")]
    pub output_tokens: Option<DistSpec>,
    /// llm: leading prompt tokens shared by every call of this role (prefix caching).
    #[serde(default)]
    pub shared_prefix_tokens: u32,
    /// Fraction of the parents' context carried into this node's prompt (default 1).
    #[serde(default)]
    pub inherit: Option<f64>,
    /// llm/tool: the caller gives up after this long and the workflow fails (the server
    /// does not cancel the work; its cost is waste).
    #[serde(default)]
    pub timeout: Option<SimDuration>,
    /// tool: which `[tools.NAME]`.
    #[serde(default)]
    pub tool: Option<String>,
    /// human: probability that a workflow goes to review at this node (default 1).
    #[serde(default)]
    pub probability: Option<f64>,
    /// human: review time in minutes.
    #[serde(default, deserialize_with = "crate::dist::counts_opt")]
    pub minutes: Option<DistSpec>,
    /// human: reviewer cost per minute.
    #[serde(default)]
    pub usd_per_minute: f64,
    /// compact: the context size after compaction, in tokens.
    #[serde(default)]
    pub compact_to: Option<u64>,
    /// Run this node (or the chain from it to `through`) as parallel branches.
    #[serde(default)]
    pub fan_out: Option<FanOutSpec>,
    /// After this node, with some probability go back to an ancestor (a verifier loop).
    #[serde(default, rename = "loop")]
    pub loop_back: Option<LoopSpec>,
    /// With some probability the call is redone on a higher tier (another pool).
    #[serde(default)]
    pub escalate: Option<EscalateSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanOutSpec {
    /// Number of branches.
    #[serde(deserialize_with = "crate::dist::counts")]
    pub count: DistSpec,
    /// Wait for all branches (default) or the first `quorum`.
    #[serde(default)]
    pub quorum: Option<u32>,
    /// Launch at most this many branches at a time (staggered waves).
    #[serde(default)]
    pub wave: Option<u32>,
    /// The branch is the chain from this node to `through` (inclusive); default: the
    /// node alone.
    #[serde(default)]
    pub through: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopSpec {
    /// The ancestor to go back to.
    pub to: String,
    pub probability: f64,
    /// Most repetitions (default unlimited).
    #[serde(default)]
    pub max: Option<u32>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalateSpec {
    pub probability: f64,
    pub pool: String,
}

/// A validated node.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: String,
    pub enabled: bool,
    /// The tier a router chooses a pool from (instead of a fixed `pool`).
    pub tier: Option<usize>,
    pub role: String,
    /// Identifies the node's shared prompt prefix for prefix caching: a stable hash of
    /// "class/role", set when the class is validated.
    pub prefix_group: u64,
    pub kind: NodeKind,
    pub pool: Option<usize>,
    pub tool: Option<usize>,
    pub service: Option<Sampler>,
    pub input_tokens: Option<Sampler>,
    pub output_tokens: Option<Sampler>,
    pub shared_prefix_tokens: u32,
    pub inherit: f64,
    pub timeout: Option<SimDuration>,
    pub probability: f64,
    pub minutes: Option<Sampler>,
    pub usd_per_minute: f64,
    pub compact_to: Option<u64>,
    pub fan_out: Option<FanOut>,
    pub loop_back: Option<Loop>,
    pub escalate: Option<Escalate>,
    pub parents: Vec<usize>,
    pub children: Vec<usize>,
    /// Set on nodes inside a fan-out chain (not the head): the head's index.
    pub in_branch_of: Option<usize>,
    /// Replayed sessions: the node starts no earlier than this long after the
    /// workflow's arrival (the turn's recorded arrival).
    pub not_before: Option<SimDuration>,
    /// Replayed model calls: the call's recorded prefix-block hashes (Mooncake), one
    /// per `hash_block_tokens` prompt tokens, for the GPU replica's prefix cache.
    pub block_hashes: Option<std::sync::Arc<[u64]>>,
    pub hash_block_tokens: u32,
}

#[derive(Clone, Debug)]
pub struct FanOut {
    pub count: Sampler,
    pub quorum: Option<u32>,
    pub wave: Option<u32>,
    /// Last node of the branch chain (the head itself for a single-node fan-out).
    pub through: usize,
}

#[derive(Clone, Debug)]
pub struct Loop {
    pub to: usize,
    pub probability: f64,
    pub max: Option<u32>,
    /// Nodes re-run by the loop: on a path from `to` to this node, in topological order.
    pub body: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Escalate {
    pub probability: f64,
    pub pool: usize,
}

/// A validated workflow graph. Node 0 is the entry.
#[derive(Clone, Debug)]
pub struct WorkflowGraph {
    pub nodes: Vec<Node>,
    /// Topological order (loops excluded).
    pub order: Vec<usize>,
}

fn yes() -> bool {
    true
}

/// What node validation needs to know about the rest of the scenario.
pub struct Names<'a> {
    pub tiers: &'a BTreeMap<String, usize>,
    /// Pool names of each tier, in fallback order.
    pub tier_pools: &'a [Vec<String>],
    pub pools: &'a BTreeMap<String, usize>,
    /// Pools whose default service distribution exists (queueing stations).
    pub pool_service: &'a BTreeMap<String, Option<DistSpec>>,
    /// Pools that are GPU replica pools (token-driven: no service time needed).
    pub gpu_pools: &'a BTreeMap<String, bool>,
    pub tools: &'a BTreeMap<String, usize>,
    /// `[routing] roles`: the tier of an llm/compact node of this role that names
    /// neither a pool nor a tier.
    pub role_tiers: &'a BTreeMap<String, String>,
    /// `[routing] default_tier`: the tier of such a node whose role is not mapped.
    pub default_tier: Option<&'a String>,
}

fn probability(key: &str, p: f64) -> Result<f64, (String, String)> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err((
            key.to_string(),
            format!("expected a probability in [0, 1], got {p}"),
        ))
    }
}

fn known(names: impl Iterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = names.map(|s| s.as_ref().to_string()).collect();
    if v.is_empty() {
        "(none defined)".into()
    } else {
        v.join(", ")
    }
}

/// Validates `specs` (written under `key`); errors are (key path, message).
pub fn compile_graph(
    key: &str,
    specs: &[NodeSpec],
    names: &Names<'_>,
) -> Result<WorkflowGraph, (String, String)> {
    if specs.is_empty() {
        return Err((key.to_string(), "expected at least one node".into()));
    }
    let mut index = BTreeMap::new();
    for (i, n) in specs.iter().enumerate() {
        if n.id.is_empty() {
            return Err((format!("{key}[{i}].id"), "expected a non-empty id".into()));
        }
        if index.insert(n.id.clone(), i).is_some() {
            return Err((
                format!("{key}[{i}].id"),
                format!("duplicate node id `{}`", n.id),
            ));
        }
    }
    let lookup = |k: &str, id: &str| -> Result<usize, (String, String)> {
        index.get(id).copied().ok_or_else(|| {
            (
                k.to_string(),
                format!(
                    "no node with id `{id}`; expected one of: {}",
                    known(index.keys())
                ),
            )
        })
    };

    let mut nodes = Vec::with_capacity(specs.len());
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let gidx: Vec<NodeIndex> = (0..specs.len()).map(|i| graph.add_node(i)).collect();
    for (i, s) in specs.iter().enumerate() {
        let nk = format!("{key}[{i}]");
        let mut parents = Vec::new();
        for p in &s.after {
            let pi = lookup(&format!("{nk}.after"), p)?;
            if pi == i {
                return Err((
                    format!("{nk}.after"),
                    format!(
                        "node `{}` cannot come after itself; use `loop` to repeat it",
                        s.id
                    ),
                ));
            }
            if !parents.contains(&pi) {
                parents.push(pi);
                graph.add_edge(gidx[pi], gidx[i], ());
            }
        }
        if i > 0 && parents.is_empty() {
            return Err((
                format!("{nk}.after"),
                format!(
                    "node `{}` is unreachable: every node but the first (the entry, `{}`) must list its parents in `after`",
                    s.id, specs[0].id
                ),
            ));
        }
        if i == 0 && !parents.is_empty() {
            return Err((
                format!("{nk}.after"),
                format!(
                    "the first node (`{}`) is the entry and cannot have parents: `after` on it makes a cycle; repeat work with `loop = {{ to = ..., probability = ... }}`",
                    s.id
                ),
            ));
        }
        let sampler =
            |field: &str, d: &Option<DistSpec>| -> Result<Option<Sampler>, (String, String)> {
                d.as_ref()
                    .map(|d| d.sampler().map_err(|m| (format!("{nk}.{field}"), m)))
                    .transpose()
            };
        let needs_pool = matches!(s.kind, NodeKind::Llm | NodeKind::Compact);
        // A model node that names neither pool nor tier is left to the router: its
        // role's tier from `[routing] roles`, else `[routing] default_tier`.
        let role = s.role.as_ref().unwrap_or(&s.id);
        let left_to_router = (needs_pool && s.tier.is_none() && s.pool.is_none())
            .then(|| names.role_tiers.get(role).or(names.default_tier))
            .flatten();
        let tier = match (s.tier.as_ref().or(left_to_router), needs_pool) {
            (Some(t), true) => Some(names.tiers.get(t).copied().ok_or_else(|| {
                (
                    format!("{nk}.tier"),
                    format!(
                        "no tier named `{t}`; expected one of: {}",
                        known(names.tiers.keys())
                    ),
                )
            })?),
            (Some(_), false) => {
                return Err((
                    format!("{nk}.tier"),
                    format!(
                        "only llm and compact nodes have a tier; node `{}` is {:?}",
                        s.id, s.kind
                    )
                    .to_lowercase(),
                ));
            }
            (None, _) => None,
        };
        let pool = match (&s.pool, needs_pool, tier.is_some()) {
            (Some(_), true, true) => {
                return Err((
                    format!("{nk}.pool"),
                    format!("node `{}` names both a pool and a tier; give one", s.id),
                ));
            }
            (Some(p), true, false) => Some(names.pools.get(p).copied().ok_or_else(|| {
                (
                    format!("{nk}.pool"),
                    format!(
                        "no pool named `{p}`; expected one of: {}",
                        known(names.pools.keys())
                    ),
                )
            })?),
            (None, true, false) => {
                return Err((
                    format!("{nk}.pool"),
                    format!(
                        "{:?} node `{}` needs a `pool` or a `tier` (or a tier for its role in `[routing] roles`, or `[routing] default_tier`)",
                        s.kind, s.id
                    )
                    .to_lowercase(),
                ));
            }
            (Some(_), false, _) => {
                return Err((
                    format!("{nk}.pool"),
                    format!(
                        "only llm and compact nodes run on a pool; node `{}` is {:?}",
                        s.id, s.kind
                    )
                    .to_lowercase(),
                ));
            }
            (None, _, _) => None,
        };
        let service = sampler("service", &s.service)?;
        // Pools this node may run on must know how long it takes there.
        if needs_pool && service.is_none() {
            let candidates: Vec<&String> = match (tier, &s.pool) {
                (Some(t), _) => names.tier_pools[t].iter().collect(),
                (None, Some(p)) => vec![p],
                _ => vec![],
            };
            for p in candidates {
                let is_gpu = names.gpu_pools.get(p).copied().unwrap_or(false);
                let has_default = names.pool_service.get(p).is_some_and(Option::is_some);
                if !is_gpu && !has_default {
                    return Err((
                        format!("{nk}.service"),
                        format!(
                            "expected a service-time distribution on the node or on pool `{p}`"
                        ),
                    ));
                }
            }
        }
        let tool = match (s.kind, &s.tool) {
            (NodeKind::Tool, Some(t)) => Some(names.tools.get(t).copied().ok_or_else(|| {
                (
                    format!("{nk}.tool"),
                    format!(
                        "no tool named `{t}`; expected one of: {}",
                        known(names.tools.keys())
                    ),
                )
            })?),
            (NodeKind::Tool, None) => {
                return Err((
                    format!("{nk}.tool"),
                    format!("tool node `{}` needs `tool = \"NAME\"`", s.id),
                ));
            }
            (_, Some(_)) => {
                return Err((format!("{nk}.tool"), "only tool nodes name a tool".into()));
            }
            (_, None) => None,
        };
        // Keys of another kind of node would be ignored silently (`probability` on a
        // model call looks like a conditional step and does nothing).
        let kind_name = match s.kind {
            NodeKind::Llm => "an llm",
            NodeKind::Tool => "a tool",
            NodeKind::Human => "a human",
            NodeKind::Compact => "a compact",
        };
        let foreign: &[(&str, bool)] = if s.kind == NodeKind::Human {
            &[
                ("input_tokens", s.input_tokens.is_some()),
                ("output_tokens", s.output_tokens.is_some()),
                ("shared_prefix_tokens", s.shared_prefix_tokens > 0),
                ("service", s.service.is_some()),
                ("timeout", s.timeout.is_some()),
            ]
        } else {
            &[
                ("probability", s.probability.is_some()),
                ("minutes", s.minutes.is_some()),
                ("usd_per_minute", s.usd_per_minute != 0.0),
            ]
        };
        if let Some((key, _)) = foreign.iter().find(|(_, set)| *set) {
            return Err((
                format!("{nk}.{key}"),
                format!(
                    "node `{}` is {kind_name} node, which takes no `{key}` (it would be ignored)",
                    s.id
                ),
            ));
        }
        if s.timeout == Some(SimDuration::ZERO) {
            return Err((
                format!("{nk}.timeout"),
                "expected a positive timeout, like \"30s\" (0 would time out every call)".into(),
            ));
        }
        let minutes = sampler("minutes", &s.minutes)?;
        if s.kind == NodeKind::Human && minutes.is_none() {
            return Err((
                format!("{nk}.minutes"),
                format!(
                    "human node `{}` needs a review-time distribution `minutes`",
                    s.id
                ),
            ));
        }
        if !s.usd_per_minute.is_finite() || s.usd_per_minute < 0.0 {
            return Err((
                format!("{nk}.usd_per_minute"),
                format!("expected a price >= 0, got {}", s.usd_per_minute),
            ));
        }
        let compact_to = match (s.kind, s.compact_to) {
            (NodeKind::Compact, Some(c)) => Some(c),
            (NodeKind::Compact, None) => {
                return Err((
                    format!("{nk}.compact_to"),
                    "a compact node needs `compact_to` (tokens)".into(),
                ));
            }
            (_, Some(_)) => {
                return Err((
                    format!("{nk}.compact_to"),
                    "only compact nodes take `compact_to`".into(),
                ));
            }
            (_, None) => None,
        };
        let inherit = s.inherit.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&inherit) {
            return Err((
                format!("{nk}.inherit"),
                format!("expected a fraction in [0, 1], got {inherit}"),
            ));
        }
        let escalate = match &s.escalate {
            Some(e) => Some(Escalate {
                probability: probability(&format!("{nk}.escalate.probability"), e.probability)?,
                pool: names.pools.get(&e.pool).copied().ok_or_else(|| {
                    (
                        format!("{nk}.escalate.pool"),
                        format!(
                            "no pool named `{}`; expected one of: {}",
                            e.pool,
                            known(names.pools.keys())
                        ),
                    )
                })?,
            }),
            None => None,
        };
        if escalate.is_some() && !needs_pool {
            return Err((
                format!("{nk}.escalate"),
                "only llm and compact nodes can escalate".into(),
            ));
        }
        nodes.push(Node {
            id: s.id.clone(),
            enabled: s.enabled,
            tier,
            role: s.role.clone().unwrap_or_else(|| s.id.clone()),
            prefix_group: 0,
            kind: s.kind,
            pool,
            tool,
            service,
            input_tokens: sampler("input_tokens", &s.input_tokens)?,
            output_tokens: sampler("output_tokens", &s.output_tokens)?,
            shared_prefix_tokens: s.shared_prefix_tokens,
            inherit,
            timeout: s.timeout,
            probability: probability(&format!("{nk}.probability"), s.probability.unwrap_or(1.0))?,
            minutes,
            usd_per_minute: s.usd_per_minute,
            compact_to,
            fan_out: None,
            loop_back: None,
            escalate,
            parents,
            children: Vec::new(),
            in_branch_of: None,
            not_before: None,
            block_hashes: None,
            hash_block_tokens: 0,
        });
    }
    let order: Vec<usize> = match toposort(&graph, None) {
        Ok(o) => o.into_iter().map(|g| graph[g]).collect(),
        Err(cycle) => {
            let at = graph[cycle.node_id()];
            return Err((
                format!("{key}[{at}].after"),
                format!(
                    "the graph has a cycle through node `{}`; repeat work with `loop = {{ to = ..., probability = ... }}` instead",
                    specs[at].id
                ),
            ));
        }
    };
    for i in 0..nodes.len() {
        for p in nodes[i].parents.clone() {
            nodes[p].children.push(i);
        }
    }
    // Fan-outs and loops need the whole graph.
    for (i, s) in specs.iter().enumerate() {
        let nk = format!("{key}[{i}]");
        if let Some(f) = &s.fan_out {
            let count = f
                .count
                .sampler()
                .map_err(|m| (format!("{nk}.fan_out.count"), m))?;
            // Each branch is held in memory while its workflow runs: a count in the
            // millions would exhaust memory mid-run instead of failing here.
            if count.high() > MAX_BRANCHES {
                return Err((
                    format!("{nk}.fan_out.count"),
                    format!(
                        "draws up to about {:.0} branches; at most {MAX_BRANCHES} are allowed (the largest draw, or the 99.9th percentile of an unbounded distribution)",
                        count.high()
                    ),
                ));
            }
            if let Some(q) = f.quorum
                && q == 0
            {
                return Err((
                    format!("{nk}.fan_out.quorum"),
                    "a join needs a quorum of at least 1 branch".into(),
                ));
            }
            // A quorum no draw can reach would silently be a join-all: refuse it where
            // the count has a finite maximum (a draw below the quorum of an unbounded
            // count waits for all its branches, as documented).
            if let (Some(q), Some(max)) = (f.quorum, count.max_value())
                && f64::from(q) > crate::time::round_non_negative(max) as f64
            {
                return Err((
                    format!("{nk}.fan_out.quorum"),
                    format!(
                        "a quorum of {q} can never be reached: the branch count is at most {}",
                        crate::time::round_non_negative(max)
                    ),
                ));
            }
            if f.wave == Some(0) {
                return Err((
                    format!("{nk}.fan_out.wave"),
                    "expected a wave size >= 1".into(),
                ));
            }
            let through = match &f.through {
                Some(t) => lookup(&format!("{nk}.fan_out.through"), t)?,
                None => i,
            };
            // `through` must lie downstream of the head...
            let mut seen = vec![false; nodes.len()];
            let mut stack = vec![i];
            while let Some(n) = stack.pop() {
                if !std::mem::replace(&mut seen[n], true) {
                    stack.extend(nodes[n].children.iter().copied());
                }
            }
            if !seen[through] {
                return Err((
                    format!("{nk}.fan_out.through"),
                    format!(
                        "`{}` is not downstream of `{}`: a fanned-out branch runs from its head down to `through`",
                        specs[through].id, s.id
                    ),
                ));
            }
            // ...and the branch a simple chain head -> ... -> through.
            let mut cur = i;
            let mut chain = Vec::new();
            while cur != through {
                let kids = &nodes[cur].children;
                if kids.len() != 1 || nodes[kids[0]].parents.len() != 1 {
                    return Err((
                        format!("{nk}.fan_out.through"),
                        format!(
                            "the fanned-out branch from `{}` to `{}` must be a simple chain (each node with one child, each child with one parent)",
                            s.id, specs[through].id
                        ),
                    ));
                }
                cur = kids[0];
                chain.push(cur);
            }
            if nodes[i].children.is_empty() && f.quorum.is_some() {
                return Err((
                    format!("{nk}.fan_out.quorum"),
                    "a quorum join with nothing after it has nothing to join".into(),
                ));
            }
            for c in chain {
                if specs[c].fan_out.is_some() {
                    return Err((
                        format!("{nk}.fan_out.through"),
                        format!(
                            "node `{}` inside the branch has its own fan_out; nested fan-out is not supported",
                            specs[c].id
                        ),
                    ));
                }
                nodes[c].in_branch_of = Some(i);
            }
            nodes[i].fan_out = Some(FanOut {
                count,
                quorum: f.quorum,
                wave: f.wave,
                through,
            });
        }
    }
    for (i, s) in specs.iter().enumerate() {
        let nk = format!("{key}[{i}]");
        if let Some(l) = &s.loop_back {
            let to = lookup(&format!("{nk}.loop.to"), &l.to)?;
            let p = probability(&format!("{nk}.loop.probability"), l.probability)?;
            if p >= 1.0 && l.max.is_none() {
                return Err((
                    format!("{nk}.loop"),
                    "a loop with probability 1 and no `max` never ends".into(),
                ));
            }
            // Body: nodes reachable from `to` that reach `i`.
            let from_to = reachable(&nodes, to, |n| &n.children);
            let to_i = reachable(&nodes, i, |n| &n.parents);
            if !from_to[i] {
                return Err((
                    format!("{nk}.loop.to"),
                    format!(
                        "`{}` is not an ancestor of `{}`: a loop must go back",
                        l.to, s.id
                    ),
                ));
            }
            let body: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&n| from_to[n] && to_i[n])
                .collect();
            if nodes[i].in_branch_of.is_some()
                || nodes[i].fan_out.is_some()
                || body.iter().any(|&b| {
                    nodes[b].in_branch_of.is_some()
                        && !body.contains(&nodes[b].in_branch_of.unwrap_or(b))
                })
            {
                return Err((
                    format!("{nk}.loop"),
                    "a loop cannot start or end inside a fan-out branch".into(),
                ));
            }
            nodes[i].loop_back = Some(Loop {
                to,
                probability: p,
                max: l.max,
                body,
            });
        }
    }
    Ok(WorkflowGraph { nodes, order })
}

fn reachable(nodes: &[Node], start: usize, next: impl Fn(&Node) -> &Vec<usize>) -> Vec<bool> {
    let mut seen = vec![false; nodes.len()];
    let mut stack = vec![start];
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut seen[n], true) {
            stack.extend(next(&nodes[n]).iter().copied());
        }
    }
    seen
}

/// What one recorded step (a span of a span log) does, resolved against the scenario.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordedWork {
    /// A model call with exactly these tokens, on a pinned pool or a tier.
    Model {
        pool: Option<usize>,
        tier: Option<usize>,
        input_tokens: u64,
        output_tokens: u64,
        /// Leading prompt tokens shared with other calls of the same role.
        shared_prefix_tokens: u32,
        /// Recorded prefix-block hashes (a Mooncake turn), `hash_block_tokens` prompt
        /// tokens each; they take precedence over `shared_prefix_tokens` on a GPU pool.
        block_hashes: Option<std::sync::Arc<[u64]>>,
        hash_block_tokens: u32,
    },
    /// A call to a tool: its failures, retries and bulkhead; its latency drawn from the
    /// tool's distribution, or `wait` when given (the recorded wait).
    Tool {
        tool: usize,
        wait: Option<SimDuration>,
    },
    /// A structural step that does no work (an agent span enclosing its children).
    Pass,
}

/// One step of a recorded workflow: a node of its replayed graph.
#[derive(Clone, Debug)]
pub struct RecordedStep {
    pub id: String,
    pub role: String,
    pub work: RecordedWork,
    /// Model calls on a queueing pool: the service time (else the pool's); tools: the
    /// latency (else the tool's, or the recorded `wait`).
    pub service: Option<Sampler>,
    pub timeout: Option<SimDuration>,
    /// Starts no earlier than this long after the workflow's arrival.
    pub not_before: Option<SimDuration>,
    /// Steps that must finish before this one starts (indices of earlier steps).
    pub after: Vec<usize>,
}

impl WorkflowGraph {
    /// The graph that replays a recorded workflow: a work-free entry node, then one
    /// node per step (step `i` is node `i + 1`). Steps without parents hang under the
    /// entry. Tokens are taken as recorded (nothing is inherited: a recorded prompt
    /// already contains its context). `class` names the prefix groups (class/role).
    ///
    /// A parent index that is not earlier than its step is ignored, so the result is
    /// always a DAG in topological order.
    pub fn from_recorded(class: &str, steps: &[RecordedStep]) -> WorkflowGraph {
        let constant = Sampler::Constant;
        let mut nodes = Vec::with_capacity(steps.len() + 1);
        nodes.push(Node::pass("start", "start"));
        for (i, s) in steps.iter().enumerate() {
            let mut n = Node::pass(&s.id, &s.role);
            n.prefix_group = crate::rng::stable_hash(&format!("{class}/{}", s.role));
            match &s.work {
                RecordedWork::Model {
                    pool,
                    tier,
                    input_tokens,
                    output_tokens,
                    shared_prefix_tokens,
                    block_hashes,
                    hash_block_tokens,
                } => {
                    n.kind = NodeKind::Llm;
                    n.pool = *pool;
                    n.tier = *tier;
                    n.input_tokens = Some(constant(*input_tokens as f64));
                    n.output_tokens = Some(constant(*output_tokens as f64));
                    n.shared_prefix_tokens = *shared_prefix_tokens;
                    n.block_hashes.clone_from(block_hashes);
                    n.hash_block_tokens = *hash_block_tokens;
                }
                RecordedWork::Tool { tool, wait } => {
                    n.kind = NodeKind::Tool;
                    n.tool = Some(*tool);
                    n.service = wait.map(|w| constant(w.as_secs_f64()));
                }
                RecordedWork::Pass => {}
            }
            if s.service.is_some() {
                n.service.clone_from(&s.service);
            }
            n.timeout = s.timeout;
            n.not_before = s.not_before;
            n.enabled = !matches!(s.work, RecordedWork::Pass);
            let mut parents: Vec<usize> =
                s.after.iter().filter(|&&p| p < i).map(|&p| p + 1).collect();
            parents.sort_unstable();
            parents.dedup();
            if parents.is_empty() {
                parents.push(0);
            }
            n.parents = parents;
            nodes.push(n);
        }
        for i in 0..nodes.len() {
            for p in nodes[i].parents.clone() {
                nodes[p].children.push(i);
            }
        }
        let order = (0..nodes.len()).collect();
        WorkflowGraph { nodes, order }
    }
}

impl Node {
    /// A node that does nothing (disabled: passes its context straight on).
    fn pass(id: &str, role: &str) -> Node {
        Node {
            id: id.to_string(),
            enabled: false,
            tier: None,
            role: role.to_string(),
            prefix_group: 0,
            kind: NodeKind::Llm,
            pool: None,
            tool: None,
            service: None,
            input_tokens: None,
            output_tokens: None,
            shared_prefix_tokens: 0,
            inherit: 0.0,
            timeout: None,
            probability: 1.0,
            minutes: None,
            usd_per_minute: 0.0,
            compact_to: None,
            fan_out: None,
            loop_back: None,
            escalate: None,
            parents: Vec::new(),
            children: Vec::new(),
            in_branch_of: None,
            not_before: None,
            block_hashes: None,
            hash_block_tokens: 0,
        }
    }
}
