//! One model replica serving LLM hops with iteration-level continuous batching in the
//! manner of vLLM: a waiting queue (FIFO, or ordered by a rank: see below), a running
//! set, a paged KV cache with prefix caching, chunked prefill, admission with a
//! free-block watermark, and preemption by recompute.
//!
//! # Order of the waiting queue
//! FIFO by default. A replica with a ranked queue ([`Replica::set_ranked`], the pool's
//! `discipline = "priority"` or `"earliest_deadline"`) keeps it sorted by each
//! request's rank, smallest first, in arrival order within a rank: an arrival goes
//! behind every waiting request of its rank or smaller, a sequence preempted by
//! recompute in front of every waiting request of its rank or larger (the front of its
//! own class, as vLLM's priority policy re-sorts the preempted request into the
//! queue). Admission still takes the head only, so a blocked head blocks everyone
//! behind it. With every rank equal, the ranked queue is the FIFO queue.
//!
//! # Preemption by rank
//! A ranked queue (not a fair one) also chooses victims by rank, as vLLM V1 does with
//! `scheduling_policy = "priority"`: when a running sequence needs a KV block that is not
//! there, the victim is the worst-ranked running sequence (largest rank), the most
//! recently admitted among equals, instead of simply the most recently admitted. With
//! every rank equal that is the same sequence, so FIFO and equal-rank runs are
//! unchanged. A victim already scheduled in the iteration being planned is taken back
//! out of it (its tokens return to the budget); when the sequence that needs the block
//! is itself the victim, the better-ranked sequences behind it still get their tokens.
//!
//! With priority preemption ([`Replica::set_priority_preemption`], the pool's
//! `preempt_for_priority = true`; vLLM V0's `_schedule_priority_preemption`), a head of
//! the queue that cannot be admitted for want of a sequence slot (`max_num_seqs`) or of
//! KV blocks above the watermark preempts the worst-ranked running sequence that ranks
//! strictly below it, by recompute as above, and is checked again, until it is admitted
//! or no running sequence ranks below it (a head that still does not fit has preempted
//! them anyway, as in vLLM V0). A head blocked by the token budget preempts nobody: the
//! budget renews every iteration. This happens when an iteration is planned, after the
//! running sequences have been scheduled, and only if that planning preempted nobody
//! for a block. Admission then goes on in queue order; the heads it reaches rank no
//! better than the last, so a sequence never preempts one of its own rank or better and
//! each running sequence is preempted at most once per planning: no livelock.
//!
//! # Weighted fair queuing
//! A replica with a fair queue ([`Replica::set_weighted_fair`], the pool's
//! `discipline = "weighted_fair"`) ranks by start-time fair queuing tags (Goyal et al.
//! 1996) across lanes: a request's start tag is max(V, its lane's last finish tag) and
//! its lane's finish tag becomes start + size / weight, where V, the virtual time, is
//! the start tag of the most recently admitted request. The queue is the ranked queue
//! above with start tags as ranks, in arrival order on equal tags. The size is the
//! tokens the replica computes for the request: its prompt tokens not served from the
//! prefix cache plus its output tokens. Prefix hits are only known at admission, so the
//! finish tag is set then, and only the first waiting request of each lane holds a tag:
//! the others wait untagged at the back of the queue and the next one is tagged (with
//! its predecessor's finish tag, which is where SFQ puts a backlogged lane's next
//! request) when its predecessor is admitted. Tags are integers (tokens x 2^32 / weight
//! in 1/65536), so runs are exact. Recomputation after a preemption is not charged:
//! the preempted request keeps its tag.
//!
//! # One iteration, planned at time `t`
//! 1. Running sequences in admission order: a decoding sequence gets one token (and a
//!    new KV block when its length crosses a block boundary); a sequence still
//!    prefilling (chunked prefill) gets the token budget left after reserving one token
//!    for every decoding sequence behind it, shrunk to the free blocks. When a sequence
//!    cannot get even one block, the most recently admitted running sequence (under a
//!    ranked queue the worst-ranked, see above) is preempted (blocks freed, back to the
//!    front of the waiting queue (of its rank), its generated tokens folded into the
//!    prompt to recompute) until one frees up, or the sequence itself is the victim and
//!    is preempted.
//! 2. If nobody was preempted, waiting sequences are admitted in queue order while the
//!    sequence limit and token budget allow and KV blocks for the prompt's first chunk
//!    (what is left of the budget) are available above the watermark (with priority
//!    preemption, a blocked head may first preempt worse-ranked running sequences, see
//!    above). On an empty replica the watermark is waived and the chunk shrunk to the
//!    cache, so that any request that fits the cache can always start. Prefix-cache hits
//!    skip prefill; at least one prompt token is always computed.
//! 3. The iteration lasts `PerfModel::iteration_time` of its shape. At its end a
//!    sequence whose prefill completed emits its first token, a decoding one its next
//!    token; a sequence with all its output tokens finishes and frees its blocks.
//!
//! # Decode skipping
//! When an iteration is pure decode and nothing can change the batch for a while (no
//! sequence finishes, every block-boundary crossing finds a block, the head of the
//! waiting queue stays blocked), the following `k` decode iterations are planned at
//! once and applied lazily: one wake-up instead of `k`. Their effects are applied
//! iteration by iteration in time order whenever the replica is looked at, so every
//! figure is identical (not close) to the iteration-by-iteration run. A submit that
//! would become admissible cuts the stretch at the end of the iteration in progress;
//! so does one that goes ahead of the head of a ranked queue (the new head may fit
//! where the old one did not), and, with priority preemption, one that becomes the
//! head and outranks a running sequence, even with every slot taken (it may preempt at
//! the next boundary). No stretch is planned after an iteration that preempted, nor
//! while the head could preempt.
//!
//! # Time semantics
//! Every call at time `now` first applies all effects at times `<= now`. A request
//! submitted at `now` is therefore never part of an iteration that starts at `now`
//! unless the replica was idle, whatever the order of same-time events.
//!
//! # Cost
//! Each iteration's duration is split among its sequences in proportion to the tokens
//! each processed in it, in integer fixed point (1/2^20 ns), so that the split is exact
//! and independent of how iterations are grouped.

use super::kv::{KvCache, PrefixMatch, prefix_block_ids};
use super::{IterationShape, LlmRequest, LlmTimings, PerfModel};
use crate::station::{FirstToken, HopDone, JobId, Refused, TimeIntegral, TokenGaps};
use crate::time::{SimDuration, SimTime};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Where a request goes in a replica's waiting queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A fixed rank, smaller first (ignored by a FIFO replica).
    Rank(u64),
    /// A lane of a fair queue, with its weight from [`fair_weight`].
    Fair { lane: u32, weight: u64 },
}

/// A lane weight as a fair queue takes it: in 1/65536, at least 1/65536 and at most
/// 2^32 (weights are positive; the bounds keep tags in range).
pub fn fair_weight(weight: f64) -> u64 {
    ((weight * 65536.0).round() as u64).clamp(1, 1 << 48)
}

/// The rank of a request of a fair queue not yet tagged: behind every tagged one.
const UNTAGGED: u128 = u128::MAX;

/// Start-time fair queuing state of a replica (see the module docs).
#[derive(Debug, Default)]
struct FairQueue {
    /// The start tag of the most recently admitted request (the largest admitted).
    virtual_time: u128,
    lanes: BTreeMap<u32, FairLane>,
    /// Requests submitted so far: the arrival order that breaks ties between tags.
    arrivals: u64,
}

#[derive(Debug, Default)]
struct FairLane {
    /// Finish tag of the lane's latest admitted request.
    last_finish: u128,
    /// The lane's waiting requests never admitted; the first of them is tagged.
    fresh: u32,
}

/// A fair-queued request's lane, weight and arrival number.
#[derive(Clone, Copy, Debug)]
struct FairSeq {
    lane: u32,
    weight: u64,
    arrival: u64,
}

/// Finish tag minus start tag of a request of `tokens` on a lane of `weight`.
pub(crate) fn fair_delta(tokens: u64, weight: u64) -> u128 {
    ((tokens as u128) << 32) / weight.max(1) as u128
}

/// A request refused at `now` (submitted at `submitted`): no service, no cost.
pub(crate) fn refused_done(
    id: JobId,
    submitted: SimTime,
    now: SimTime,
    refused: Refused,
) -> HopDone {
    HopDone {
        id,
        submitted,
        started: now,
        finished: now,
        busy: SimDuration::ZERO,
        usd: 0.0,
        llm: Some(LlmTimings::default()),
        refused: Some(refused),
    }
}

/// Takes running sequence `s`, scheduled in the iteration being planned, back out of
/// it: its tokens return to the budget and leave the iteration's shape.
fn unschedule(
    s: &Seq,
    shape: &mut IterationShape,
    budget: &mut u32,
    total_tokens: &mut u64,
    batch: &mut u32,
) {
    let tok = s.scheduled;
    if tok == 0 {
        return;
    }
    *budget += tok;
    *total_tokens -= tok as u64;
    *batch -= 1;
    if s.in_decode() {
        shape.decode_seqs -= 1;
        shape.decode_context_tokens -= s.computed as u64 + 1;
    } else {
        shape.prefill_tokens -= tok as u64;
        shape.prefill_seqs -= 1;
        shape.prefill_context_tokens -= s.computed as u64;
    }
}

/// Fixed-point scale of cost shares: 1/2^20 ns.
const SHARE_SCALE: u128 = 1 << 20;

/// `dur x tokens / total` in 1/SHARE_SCALE ns, floored; in u64 when that cannot
/// overflow (the same value, faster).
#[inline]
fn share_of(dur: SimDuration, tokens: u64, total: u64) -> u128 {
    match dur.as_nanos().checked_mul(tokens) {
        Some(p) if p < 1 << 43 => ((p << 20) / total) as u128,
        _ => dur.as_nanos() as u128 * tokens as u128 * SHARE_SCALE / total as u128,
    }
}
/// Bounds on the decode iterations planned at once. The bound adapts: it doubles when a
/// stretch runs to its end and halves when a submit cuts one short, so that a busy
/// arrival stream does not waste time planning iterations that never happen. Stretch
/// lengths never change results.
const MIN_STRETCH: u32 = 8;
const MAX_STRETCH: u32 = 4096;

/// Scheduler and cache settings of a replica (vLLM's names where they exist).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaConfig {
    /// Most sequences in the running set (vLLM `max_num_seqs`). Default 256.
    pub max_num_seqs: u32,
    /// Token budget of one iteration (vLLM `max_num_batched_tokens`). Default 8192.
    pub max_batched_tokens: u32,
    /// Tokens per KV block. Default 16.
    pub block_size: u32,
    /// KV cache size in blocks.
    pub kv_capacity_blocks: u32,
    /// Fraction of blocks that admission leaves free (floor of fraction x capacity).
    /// Default 0.01.
    pub watermark: f64,
    /// Split long prompts across iterations within the token budget. Default true.
    pub chunked_prefill: bool,
    /// Reuse cached prompt prefixes across requests. Default true.
    pub prefix_caching: bool,
    /// Advance decode-only stretches in one event. Results are identical either way.
    /// Default true.
    pub decode_skipping: bool,
}

impl ReplicaConfig {
    /// The defaults above for a cache of `kv_capacity_blocks`, not yet validated.
    pub fn defaults(kv_capacity_blocks: u32) -> Self {
        ReplicaConfig {
            max_num_seqs: 256,
            max_batched_tokens: 8192,
            block_size: 16,
            kv_capacity_blocks,
            watermark: 0.01,
            chunked_prefill: true,
            prefix_caching: true,
            decode_skipping: true,
        }
    }

    /// The defaults, validated.
    pub fn new(kv_capacity_blocks: u32) -> Result<Self, String> {
        Self::defaults(kv_capacity_blocks).validated()
    }

    /// Checks the settings; use as `ReplicaConfig { .., ..ReplicaConfig::defaults(n) }.validated()`.
    pub fn validated(self) -> Result<Self, String> {
        if self.max_num_seqs == 0 {
            return Err("max_num_seqs must be at least 1".into());
        }
        if self.max_batched_tokens < self.max_num_seqs {
            return Err(format!(
                "max_batched_tokens ({}) must be at least max_num_seqs ({}) so that every running sequence can decode in each iteration",
                self.max_batched_tokens, self.max_num_seqs
            ));
        }
        if self.block_size == 0 || self.block_size > 1 << 16 {
            return Err(format!(
                "block_size must be between 1 and 65536 tokens, not {}",
                self.block_size
            ));
        }
        if self.kv_capacity_blocks == 0 {
            return Err(
                "kv_capacity_blocks must be at least 1: the model leaves no room for KV cache"
                    .into(),
            );
        }
        if !(self.watermark.is_finite() && (0.0..1.0).contains(&self.watermark)) {
            return Err(format!(
                "watermark must be a fraction in [0, 1), not {}",
                self.watermark
            ));
        }
        Ok(self)
    }

    /// Blocks admission keeps free.
    /// Why a replica of this configuration can never serve `req`, if it cannot: its
    /// prompt and output do not fit the KV cache, or (without chunked prefill) a
    /// recomputed prompt would not fit one iteration's token budget.
    pub fn refusal(&self, req: &LlmRequest) -> Option<Refused> {
        // A prompt of no tokens still has the start token; a hop generates at least one.
        let max_tokens = req.input_tokens.max(1) as u64 + req.output_tokens.max(1) as u64 - 1;
        let fits_cache = max_tokens.div_ceil(self.block_size as u64)
            <= self.kv_capacity_blocks as u64
            && max_tokens <= u32::MAX as u64;
        // Without chunked prefill a (recomputed) prompt must fit one iteration.
        let fits_budget = self.chunked_prefill || max_tokens <= self.max_batched_tokens as u64;
        if !fits_cache {
            Some(Refused::KvCache {
                capacity_tokens: self.kv_capacity_blocks as u64 * self.block_size as u64,
            })
        } else if !fits_budget {
            Some(Refused::TokenBudget {
                budget: self.max_batched_tokens,
            })
        } else {
            None
        }
    }

    pub fn watermark_blocks(&self) -> u32 {
        (self.watermark * self.kv_capacity_blocks as f64).floor() as u32
    }
}

/// One request on the replica.
#[derive(Debug)]
struct Seq {
    id: JobId,
    submitted: SimTime,
    started: Option<SimTime>,
    first_token: Option<SimTime>,
    /// When the sequence's latest output token was produced.
    last_token: SimTime,
    /// Where its inter-token gaps go (`None`: not recorded).
    itl_group: Option<u32>,
    input: u32,
    output: u32,
    /// Tokens to prefill: the prompt, plus generated tokens after a preemption.
    prompt_len: u32,
    /// Tokens whose KV is in the cache.
    computed: u32,
    generated: u32,
    /// Tokens processed in the iteration being run (general iterations only).
    scheduled: u32,
    blocks: Vec<u32>,
    /// Chained prefix hashes of the prompt's identifiable blocks.
    prefix_ids: Vec<u64>,
    /// Leading blocks already in the prefix cache (hit or registered).
    registered: u32,
    cached_tokens: u32,
    preemptions: u32,
    /// Place in a ranked waiting queue: smaller first (0 in a FIFO queue; a start
    /// tag or [`UNTAGGED`] in a fair queue).
    rank: u128,
    /// In a fair queue.
    fair: Option<FairSeq>,
    /// Busy time charged, in 1/SHARE_SCALE ns.
    share: u128,
    /// The part of `share` charged for prefill chunks (prompt and recomputation).
    prefill_share: u128,
    /// Its caller gave up: it leaves the batch at the end of the iteration in progress.
    aborted: bool,
}

impl Seq {
    #[inline]
    fn in_decode(&self) -> bool {
        self.computed >= self.prompt_len
    }
    /// Tokens still to process: prompt left to prefill plus outputs left to generate.
    fn remaining(&self) -> u64 {
        (self.prompt_len - self.computed.min(self.prompt_len)) as u64
            + (self.output - self.generated) as u64
    }
    fn hop_done(&self, end: SimTime, usd_per_ns: f64) -> HopDone {
        let first = self.first_token.unwrap_or(end);
        let tpot = if self.output > 1 {
            SimDuration((end - first).as_nanos() / (self.output as u64 - 1))
        } else {
            SimDuration::ZERO
        };
        HopDone {
            id: self.id,
            submitted: self.submitted,
            started: self.started.unwrap_or(end),
            finished: end,
            busy: SimDuration((self.share / SHARE_SCALE) as u64),
            usd: self.share as f64 / SHARE_SCALE as f64 * usd_per_ns,
            llm: Some(LlmTimings {
                ttft: first - self.submitted,
                tpot,
                cached_tokens: self.cached_tokens,
                preemptions: self.preemptions,
                prefill_busy: SimDuration((self.prefill_share / SHARE_SCALE) as u64),
            }),
            refused: None,
        }
    }
}

/// Decode iterations planned beyond the current general iteration, applied lazily.
#[derive(Debug, Default)]
struct Stretch {
    /// Sequences decoding in every iteration of the stretch (the whole running set).
    n: u32,
    ends: Vec<SimTime>,
    durs: Vec<SimDuration>,
    /// Blocks allocated at the start of each iteration.
    allocs: Vec<u32>,
    /// Iterations whose start / end effects have been applied.
    started: usize,
    ended: usize,
    /// Blocks allocated logically but not yet taken from the cache.
    pending_allocs: u32,
    /// Cost share of one sequence over the ended iterations.
    share: u128,
    /// A submit cut the stretch short.
    cut: bool,
}

#[derive(Debug)]
struct Busy {
    generation: u64,
    general_end: SimTime,
    general_dur: SimDuration,
    general_tokens: u64,
    /// The general iteration's end effects are still to apply.
    general_pending: bool,
    ext: Stretch,
}

impl Busy {
    fn final_end(&self) -> SimTime {
        self.ext.ends.last().copied().unwrap_or(self.general_end)
    }
}

enum Admission {
    Admit {
        hits: u32,
        chunk: u32,
        new_blocks: u32,
    },
    Blocked(Blocked),
}

enum Blocked {
    SeqLimit,
    TokenBudget,
    KvBlocks { hits_evictable: u32 },
}

/// Windowed figures of a replica.
#[derive(Debug)]
struct Stats {
    window_start: SimTime,
    busy: TimeIntegral,
    kv_used: TimeIntegral,
    kv_tokens: TimeIntegral,
    running: TimeIntegral,
    waiting: TimeIntegral,
    kv_max: u64,
    iterations: u64,
    prefill_tokens: u64,
    decode_tokens: u64,
    preemptions: u64,
    prompt_tokens: u64,
    hit_tokens: u64,
    finished: u64,
    rejected: u64,
    /// Iterations by batch size (sequences with tokens in the iteration).
    batch_hist: Vec<u64>,
}

/// Per-replica figures over the measurement window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ReplicaReport {
    pub window: SimDuration,
    /// Fraction of the window with an iteration running.
    pub busy_fraction: f64,
    pub kv_capacity_blocks: u32,
    /// Blocks referenced by sequences: time-average and maximum.
    pub kv_used_blocks_mean: f64,
    pub kv_used_blocks_max: u64,
    /// The same as fractions of capacity.
    pub kv_occupancy_mean: f64,
    pub kv_occupancy_max: f64,
    pub iterations: u64,
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
    /// Sequences per iteration.
    pub batch_size_mean: f64,
    pub batch_size_p50: u32,
    pub batch_size_p99: u32,
    pub batch_size_max: u32,
    /// Iterations by batch size (index = batch size), up to the largest seen.
    pub batch_size_histogram: Vec<u64>,
    pub preemptions: u64,
    /// Prompt tokens admitted (recomputed prompts count again) and those served from
    /// the prefix cache.
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// cached_tokens / prompt_tokens.
    pub prefix_hit_rate: f64,
    /// Time-average of tokens held in the KV cache by running sequences.
    pub tokens_in_flight_mean: f64,
    pub running_mean: f64,
    pub waiting_mean: f64,
    pub finished: u64,
    /// Requests that can never fit this replica (KV cache, or the token budget without
    /// chunked prefill): refused at once without service, a failed hop.
    pub rejected: u64,
    pub running_now: u32,
    pub waiting_now: u32,
    pub outstanding_tokens_now: u64,
}

/// A request taken off a lost replica (see [`Replica::evict_all`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evicted {
    pub id: JobId,
    pub submitted: SimTime,
    /// Server time and dollars it was charged on the replica (work now lost).
    pub busy: SimDuration,
    pub usd: f64,
    pub preemptions: u32,
    /// It was running (admitted, holding KV cache), not waiting.
    pub running: bool,
}

/// One replica. Drive it with [`Replica::advance`] before looking at it at `now`, and
/// collect what it asks for with [`Replica::take_wake`] and [`Replica::drain_done`].
pub struct Replica {
    cfg: ReplicaConfig,
    perf: Arc<dyn PerfModel>,
    usd_per_ns: f64,
    watermark_blocks: u32,
    kv: KvCache,
    /// Sorted by [`Seq::rank`] when `ranked` (stable: arrival order within a rank).
    waiting: VecDeque<Seq>,
    ranked: bool,
    /// Weighted fair queuing (the queue is ranked by start tags).
    fair: Option<FairQueue>,
    /// Priority preemption: a blocked head of a ranked queue preempts worse-ranked
    /// running sequences (see the module docs). Only with a ranked, not fair, queue.
    preempt_for_rank: bool,
    running: Vec<Seq>,
    busy: Option<Busy>,
    generation: u64,
    /// Sum of [`Seq::remaining`] over waiting and running sequences, as of the applied
    /// effects.
    outstanding: u64,
    /// Tokens held in the KV cache by running sequences, as of the applied effects.
    kv_tokens: u64,
    pending_done: Vec<HopDone>,
    /// Inter-token gaps not yet handed over.
    pending_gaps: Vec<TokenGaps>,
    /// First tokens not yet handed over, when asked for ([`Replica::report_first_tokens`]):
    /// (time, request, TTFT from its pool submission).
    pending_first_tokens: Option<Vec<FirstToken>>,
    /// (group, sequences) of the running set during the current stretch: each of its
    /// iterations ends one gap of its length for every sequence.
    stretch_groups: Vec<(u32, u64)>,
    pending_wake: Option<(SimTime, u64)>,
    /// Current bound on stretch length (see [`MIN_STRETCH`]).
    stretch_cap: u32,
    stats: Stats,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("perf", &self.perf.name())
            .field("waiting", &self.waiting.len())
            .field("running", &self.running.len())
            .field("generation", &self.generation)
            .finish()
    }
}

impl Replica {
    /// Changes the replica's price (a reservation taking it over): the requests it
    /// finishes from now are charged their GPU time at the new price.
    pub fn set_usd_per_hour(&mut self, usd_per_hour: f64) {
        self.usd_per_ns = usd_per_hour / 3.6e12;
    }

    pub fn new(
        cfg: ReplicaConfig,
        perf: Arc<dyn PerfModel>,
        usd_per_hour: f64,
    ) -> Result<Self, String> {
        let cfg = cfg.validated()?;
        Ok(Replica {
            usd_per_ns: usd_per_hour / 3.6e12,
            watermark_blocks: cfg.watermark_blocks(),
            kv: KvCache::new(cfg.kv_capacity_blocks),
            waiting: VecDeque::new(),
            ranked: false,
            fair: None,
            preempt_for_rank: false,
            running: Vec::new(),
            busy: None,
            generation: 0,
            outstanding: 0,
            kv_tokens: 0,
            pending_done: Vec::new(),
            pending_gaps: Vec::new(),
            pending_first_tokens: None,
            stretch_groups: Vec::new(),
            pending_wake: None,
            stretch_cap: MIN_STRETCH,
            stats: Stats {
                window_start: SimTime::ZERO,
                busy: TimeIntegral::default(),
                kv_used: TimeIntegral::default(),
                kv_tokens: TimeIntegral::default(),
                running: TimeIntegral::default(),
                waiting: TimeIntegral::default(),
                kv_max: 0,
                iterations: 0,
                prefill_tokens: 0,
                decode_tokens: 0,
                preemptions: 0,
                prompt_tokens: 0,
                hit_tokens: 0,
                finished: 0,
                rejected: 0,
                batch_hist: vec![0; cfg.max_num_seqs as usize + 1],
            },
            cfg,
            perf,
        })
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }
    /// Orders the waiting queue by the rank given at submit (see the module docs);
    /// off (FIFO) by default. Set it before the first submit.
    pub fn set_ranked(&mut self, ranked: bool) {
        debug_assert!(self.waiting.is_empty() || !ranked);
        self.ranked = ranked;
        self.fair = None;
    }
    /// Orders the waiting queue by start-time fair queuing across lanes (see the
    /// module docs); requests say their lane with [`Place::Fair`]. Set it before the
    /// first submit.
    pub fn set_weighted_fair(&mut self) {
        debug_assert!(self.waiting.is_empty());
        self.ranked = true;
        self.fair = Some(FairQueue::default());
    }
    /// Priority preemption (vLLM V0's `_schedule_priority_preemption`): when the head of
    /// a ranked queue cannot be admitted for want of a sequence slot or KV blocks, the
    /// worst-ranked running sequences that rank strictly below it are preempted by
    /// recompute until it fits (see the module docs). Off by default; ignored unless the
    /// queue is ranked ([`Replica::set_ranked`]) and not fair.
    pub fn set_priority_preemption(&mut self, on: bool) {
        self.preempt_for_rank = on;
    }
    /// Victims of a KV shortage are chosen by rank (a ranked queue that is not fair).
    fn victims_by_rank(&self) -> bool {
        self.ranked && self.fair.is_none()
    }
    /// Priority preemption is in force.
    fn preempts_for_rank(&self) -> bool {
        self.preempt_for_rank && self.victims_by_rank()
    }
    /// The running sequence to preempt first: the worst-ranked (largest rank), the most
    /// recently admitted among equals; under FIFO and fair queues the most recently
    /// admitted. With every rank equal, both are the last one.
    fn victim(&self) -> Option<usize> {
        if !self.victims_by_rank() {
            return self.running.len().checked_sub(1);
        }
        // `max_by_key` returns the last of equal maxima: the most recently admitted.
        self.running
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| s.rank)
            .map(|(i, _)| i)
    }
    /// The victim of priority preemption for a waiting request of `rank`: the
    /// [`Replica::victim`] if it ranks strictly worse, so that a request never preempts
    /// one of its own rank or better (no livelock).
    fn victim_below(&self, rank: u128) -> Option<usize> {
        self.victim().filter(|&v| self.running[v].rank > rank)
    }
    /// The head `head` of the queue would preempt a running sequence if it were blocked.
    fn would_preempt_for(&self, head: &Seq) -> bool {
        self.preempts_for_rank() && self.running.iter().any(|s| s.rank > head.rank)
    }
    /// Generation of the current plan; a wake-up for an older one is stale.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// Prompt and output tokens still to process, over queued and running requests.
    pub fn outstanding_tokens(&self) -> u64 {
        self.outstanding
    }
    /// The outstanding tokens a request placed at `place` would not overtake: all of
    /// them, less (in a ranked queue, not a fair one) those of the waiting requests
    /// ranked strictly worse, which it would go in front of. As of the applied effects.
    pub fn outstanding_tokens_ahead(&self, place: Place) -> u64 {
        match place {
            Place::Rank(r) if self.ranked && self.fair.is_none() => {
                let r = u128::from(r);
                let behind: u64 = self
                    .waiting
                    .iter()
                    .rev()
                    .take_while(|s| s.rank > r)
                    .map(Seq::remaining)
                    .sum();
                self.outstanding - behind
            }
            _ => self.outstanding,
        }
    }
    pub fn running_len(&self) -> u32 {
        self.running.len() as u32
    }
    pub fn waiting_len(&self) -> u32 {
        self.waiting.len() as u32
    }
    /// Tokens held in the KV cache by running sequences, as of the applied effects.
    pub fn kv_tokens(&self) -> u64 {
        self.kv_tokens
    }
    /// KV blocks referenced by sequences.
    pub fn kv_used_blocks(&self) -> u64 {
        self.kv.used() as u64
            + self
                .busy
                .as_ref()
                .map_or(0, |b| b.ext.pending_allocs as u64)
    }
    /// Whether a request of `input_tokens` prompt tokens whose prefix blocks are
    /// `prefix_ids` ([`prefix_block_ids`]; empty without prefix caching) sent now would
    /// find a place at once (the pool's queue keeps it otherwise, `queue_at = "pool"`):
    /// an empty replica always has room; otherwise fewer than `max_num_seqs` sequences
    /// are on it (running and waiting) and its KV blocks not in use, above the
    /// watermark, less the uncomputed prompts of the requests already waiting, hold the
    /// prompt's blocks that its prefix cache does not (as admission counts hits: at
    /// least the prompt's last token is computed, and a hit on a cached block nobody
    /// holds takes that block from the free ones). A judgement as of the applied
    /// effects: the replica still admits by its own rule.
    pub fn has_room_for(&self, input_tokens: u32, prefix_ids: &[u64]) -> bool {
        let held = self.running.len() + self.waiting.len();
        if held == 0 {
            return true;
        }
        if held as u32 >= self.cfg.max_num_seqs {
            return false;
        }
        let bs = self.cfg.block_size;
        let reserved: u64 = self
            .waiting
            .iter()
            .map(|s| (s.prompt_len - s.computed.min(s.prompt_len)).div_ceil(bs) as u64)
            .sum();
        let free = (self.cfg.kv_capacity_blocks as u64).saturating_sub(self.kv_used_blocks());
        let prompt = input_tokens.max(1);
        let m = if self.cfg.prefix_caching && !prefix_ids.is_empty() {
            let max_hits = ((prompt - 1) / bs) as usize;
            self.kv
                .match_prefix(&prefix_ids[..prefix_ids.len().min(max_hits)])
        } else {
            PrefixMatch::default()
        };
        let need = prompt.div_ceil(bs).saturating_sub(m.blocks) as u64;
        free.saturating_sub(self.watermark_blocks as u64 + reserved + m.evictable as u64) >= need
    }

    /// The worst rank among running sequences that priority preemption could take for
    /// a request of `rank` (strictly worse than it), if this replica preempts for rank
    /// and has no request waiting already (one blocked head at a time).
    pub fn preemptible_rank_below(&self, rank: u64) -> Option<u128> {
        if !self.preempts_for_rank() || !self.waiting.is_empty() {
            return None;
        }
        self.victim_below(rank as u128)
            .map(|v| self.running[v].rank)
    }

    /// The wake-up the replica wants, if it changed since last asked: (time, generation).
    pub fn take_wake(&mut self) -> Option<(SimTime, u64)> {
        self.pending_wake.take()
    }
    /// Moves finished requests into `out`.
    pub fn drain_done(&mut self, out: &mut Vec<HopDone>) {
        out.append(&mut self.pending_done);
    }
    /// Moves the inter-token gaps of the applied iterations into `out`.
    pub fn drain_gaps(&mut self, out: &mut Vec<TokenGaps>) {
        if !self.pending_gaps.is_empty() {
            out.append(&mut self.pending_gaps);
        }
    }

    /// From now on, report each request's first token as it is produced (for the
    /// `p99_ttft` autoscaling signal, which should not wait for the answer to end).
    pub fn report_first_tokens(&mut self) {
        self.pending_first_tokens.get_or_insert_with(Vec::new);
    }

    /// Moves the first tokens produced since the last call to `out`.
    /// Calls `f(id, pool submission)` for each request here without its first token
    /// yet (waiting, or running its prefill), as of the applied effects.
    pub fn waiting_for_first_token(&self, f: &mut impl FnMut(JobId, SimTime)) {
        for s in self.waiting.iter().chain(&self.running) {
            if s.first_token.is_none() {
                f(s.id, s.submitted);
            }
        }
    }

    pub fn drain_first_tokens(&mut self, out: &mut Vec<FirstToken>) {
        if let Some(f) = self.pending_first_tokens.as_mut()
            && !f.is_empty()
        {
            out.append(f);
        }
    }

    /// A request arrives at `now`. Call [`Replica::advance`] to `now` first.
    pub fn submit(&mut self, now: SimTime, id: JobId, req: &LlmRequest) {
        self.submit_since(now, now, id, req);
    }

    /// A request submitted to the pool at `submitted` reaches this replica at `now`
    /// (later when it was parked or is recomputed after a spot preemption): its TTFT
    /// and latency count from `submitted`.
    pub fn submit_since(&mut self, now: SimTime, submitted: SimTime, id: JobId, req: &LlmRequest) {
        self.submit_ranked(now, submitted, id, req, 0);
    }

    /// [`Replica::submit_since`] with the request's place in a ranked waiting queue
    /// (smaller first; ignored by a FIFO replica).
    pub fn submit_ranked(
        &mut self,
        now: SimTime,
        submitted: SimTime,
        id: JobId,
        req: &LlmRequest,
        rank: u64,
    ) {
        self.submit_placed(now, submitted, id, req, Place::Rank(rank));
    }

    /// [`Replica::submit_since`] with the request's place in the waiting queue: a rank
    /// (ranked queue), or a lane and weight (fair queue). A place that does not match
    /// the queue counts as rank 0, or lane 0 of weight 1.
    pub fn submit_placed(
        &mut self,
        now: SimTime,
        submitted: SimTime,
        id: JobId,
        req: &LlmRequest,
        place: Place,
    ) {
        self.advance(now);
        // A prompt of no tokens still has the start token; a hop generates at least one.
        let input = req.input_tokens.max(1);
        let output = req.output_tokens.max(1);
        if let Some(refused) = self.cfg.refusal(req) {
            // Never servable here: a failed hop, not a finished one.
            self.stats.rejected += 1;
            self.pending_done
                .push(refused_done(id, submitted, now, refused));
            return;
        }
        let mut prefix_ids = Vec::new();
        if self.cfg.prefix_caching {
            prefix_block_ids(req, input, self.cfg.block_size, &mut prefix_ids);
        }
        let (rank, fair) = match (&mut self.fair, place) {
            (Some(q), place) => {
                let (lane, weight) = match place {
                    Place::Fair { lane, weight } => (lane, weight),
                    Place::Rank(_) => (0, fair_weight(1.0)),
                };
                let arrival = q.arrivals;
                q.arrivals += 1;
                let l = q.lanes.entry(lane).or_default();
                // Only the lane's first waiting request is tagged: the others' tags
                // follow from their predecessors' sizes, known at admission.
                let rank = if l.fresh == 0 {
                    q.virtual_time.max(l.last_finish)
                } else {
                    UNTAGGED
                };
                l.fresh += 1;
                (
                    rank,
                    Some(FairSeq {
                        lane,
                        weight,
                        arrival,
                    }),
                )
            }
            (None, Place::Rank(r)) => (r as u128, None),
            (None, Place::Fair { .. }) => (0, None),
        };
        let seq = Seq {
            id,
            submitted,
            started: None,
            first_token: None,
            last_token: now,
            itl_group: req.itl_group,
            input,
            output,
            prompt_len: input,
            computed: 0,
            generated: 0,
            scheduled: 0,
            blocks: Vec::new(),
            prefix_ids,
            registered: 0,
            cached_tokens: 0,
            preemptions: 0,
            rank,
            fair,
            share: 0,
            prefill_share: 0,
            aborted: false,
        };
        self.outstanding += seq.remaining();
        let new_head = if self.ranked {
            // Behind every waiting request of its rank or smaller.
            let pos = self.waiting.partition_point(|s| s.rank <= rank);
            self.waiting.insert(pos, seq);
            pos == 0
        } else {
            self.waiting.push_back(seq);
            self.waiting.len() == 1
        };
        self.set_levels(now);
        if self.busy.is_none() {
            self.plan_at(now);
        } else if new_head {
            self.cut_stretch_for_new_head();
        }
    }

    /// Request `id`'s caller gave up at `now`. Waiting, it leaves the queue and is
    /// reported at once (charged what it used before a preemption, if any); running,
    /// it finishes the iteration in progress (a planned decode stretch is cut there)
    /// and is then reported, its KV blocks freed (prefix blocks stay cached), as vLLM
    /// aborts a request between steps. False if the replica does not hold it.
    pub fn abort(&mut self, now: SimTime, id: JobId) -> bool {
        self.advance(now);
        if let Some(k) = self.waiting.iter().position(|s| s.id == id) {
            let Some(s) = self.waiting.remove(k) else {
                return false;
            };
            self.outstanding -= s.remaining();
            if let Some(f) = s.fair
                && s.preemptions == 0
            {
                self.fair_left_unadmitted(&s, f);
            }
            self.pending_done.push(s.hop_done(now, self.usd_per_ns));
            self.set_levels(now);
            if k == 0 && self.busy.is_some() && !self.waiting.is_empty() {
                // A new head: it may fit at the next boundary.
                self.cut_stretch_for_new_head();
            }
            return true;
        }
        let Some(s) = self.running.iter_mut().find(|s| s.id == id && !s.aborted) else {
            return false;
        };
        s.aborted = true;
        match self.busy.as_mut() {
            Some(b) => {
                // Stop after the iteration in progress.
                let keep = if b.general_pending {
                    0
                } else {
                    b.ext.ended + 1
                };
                if keep < b.ext.ends.len() {
                    b.ext.ends.truncate(keep);
                    b.ext.durs.truncate(keep);
                    b.ext.allocs.truncate(keep);
                    b.ext.cut = true;
                    self.generation += 1;
                    b.generation = self.generation;
                    self.pending_wake = Some((b.final_end(), b.generation));
                }
            }
            None => {
                // Idle with a running sequence cannot happen (every plan runs one);
                // leave at once.
                self.retire_finished(now);
                self.set_levels(now);
            }
        }
        true
    }

    /// Fair queue: `s`, waiting and never admitted, left. Its lane has one fresh
    /// request fewer; if `s` held the lane's tag, its next request takes it.
    fn fair_left_unadmitted(&mut self, s: &Seq, f: FairSeq) {
        let Some(q) = self.fair.as_mut() else { return };
        let Some(l) = q.lanes.get_mut(&f.lane) else {
            return;
        };
        l.fresh = l.fresh.saturating_sub(1);
        if s.rank == UNTAGGED || l.fresh == 0 {
            return;
        }
        self.tag_next_of_lane(f.lane, s.rank);
    }

    /// The replica is lost at `now` (a spot preemption): every request on it is taken
    /// off, running ones losing their KV cache and the iteration in progress. Returns
    /// them in admission order (running first, then waiting); iterations that ended
    /// before `now` stay charged to their requests. The replica is left empty and idle.
    pub fn evict_all(&mut self, now: SimTime) -> Vec<Evicted> {
        self.advance(now);
        if let Some(b) = self.busy.take()
            && !b.general_pending
            && b.ext.ended > 0
        {
            // Stretch iterations that ended are folded in; the one in progress is lost.
            self.materialize(&b.ext);
        }
        self.generation += 1;
        self.pending_wake = None;
        let usd_per_ns = self.usd_per_ns;
        let evicted = |s: Seq, running: bool| Evicted {
            id: s.id,
            submitted: s.submitted,
            busy: SimDuration((s.share / SHARE_SCALE) as u64),
            usd: s.share as f64 / SHARE_SCALE as f64 * usd_per_ns,
            preemptions: s.preemptions,
            running,
        };
        let mut out: Vec<Evicted> = self.running.drain(..).map(|s| evicted(s, true)).collect();
        out.extend(self.waiting.drain(..).map(|s| evicted(s, false)));
        self.forget_waiting();
        self.kv = KvCache::new(self.cfg.kv_capacity_blocks);
        self.outstanding = 0;
        self.kv_tokens = 0;
        self.stats.busy.set(now, 0);
        self.set_levels(now);
        out
    }

    /// Takes every request only waiting in the queue off the replica at `now` (a spot
    /// notice whose load balancer re-sends them), in queue order; those running stay.
    /// A waiting request preempted earlier takes the GPU time it was charged with it
    /// (work lost: it recomputes wherever it goes).
    pub fn take_waiting(&mut self, now: SimTime) -> Vec<Evicted> {
        self.advance(now);
        if self.waiting.is_empty() {
            return Vec::new();
        }
        let usd_per_ns = self.usd_per_ns;
        let taken: Vec<Seq> = self.waiting.drain(..).collect();
        let mut out = Vec::with_capacity(taken.len());
        for s in taken {
            self.outstanding -= s.remaining();
            out.push(Evicted {
                id: s.id,
                submitted: s.submitted,
                busy: SimDuration((s.share / SHARE_SCALE) as u64),
                usd: s.share as f64 / SHARE_SCALE as f64 * usd_per_ns,
                preemptions: s.preemptions,
                running: false,
            });
        }
        self.forget_waiting();
        self.set_levels(now);
        out
    }

    /// Applies every effect at times `<= now`: iteration ends, the next plans.
    pub fn advance(&mut self, now: SimTime) {
        while let Some(b) = &self.busy {
            if b.general_pending {
                if b.general_end > now {
                    return;
                }
                let (end, dur, tokens) = (b.general_end, b.general_dur, b.general_tokens);
                if let Some(b) = self.busy.as_mut() {
                    b.general_pending = false;
                }
                self.end_general(end, dur, tokens);
                continue;
            }
            let j = b.ext.ended;
            if j < b.ext.ends.len() {
                if b.ext.started == j {
                    let start = if j == 0 {
                        b.general_end
                    } else {
                        b.ext.ends[j - 1]
                    };
                    if start > now {
                        return;
                    }
                    self.ext_start(start);
                    continue;
                }
                let end = b.ext.ends[j];
                if end > now {
                    return;
                }
                self.ext_end(end);
                continue;
            }
            let end = b.final_end();
            if let Some(b) = self.busy.take()
                && !b.ext.ends.is_empty()
            {
                if !b.ext.cut {
                    self.stretch_cap = (self.stretch_cap * 2).min(MAX_STRETCH);
                }
                self.materialize(&b.ext);
                self.retire_finished(end);
                self.set_levels(end);
            }
            self.plan_at(end);
        }
    }

    /// Start of the measurement window.
    pub fn begin_measurement(&mut self, now: SimTime) {
        self.advance(now);
        let kv_level = self.kv_used_blocks();
        let st = &mut self.stats;
        st.window_start = now;
        st.busy.reset(now);
        st.kv_used.reset(now);
        st.kv_tokens.reset(now);
        st.running.reset(now);
        st.waiting.reset(now);
        st.kv_max = kv_level;
        st.iterations = 0;
        st.prefill_tokens = 0;
        st.decode_tokens = 0;
        st.preemptions = 0;
        st.prompt_tokens = 0;
        st.hit_tokens = 0;
        st.finished = 0;
        st.rejected = 0;
        st.batch_hist.iter_mut().for_each(|c| *c = 0);
    }

    /// Figures over the window, up to `now`.
    pub fn report(&mut self, now: SimTime) -> ReplicaReport {
        self.advance(now);
        let cap = self.cfg.kv_capacity_blocks;
        let st = &mut self.stats;
        let window = now - st.window_start;
        let secs = window.as_secs_f64();
        let mean = |area: f64| if secs > 0.0 { area / secs } else { 0.0 };
        let kv_mean = mean(st.kv_used.area_s(now));
        let total: u64 = st.batch_hist.iter().sum();
        let weighted: u64 = st
            .batch_hist
            .iter()
            .enumerate()
            .map(|(b, &c)| b as u64 * c)
            .sum();
        let quantile = |num: u64, den: u64| -> u32 {
            let mut cum = 0u64;
            for (b, &c) in st.batch_hist.iter().enumerate() {
                cum += c;
                if total > 0 && cum * den >= total * num {
                    return b as u32;
                }
            }
            0
        };
        let p50 = quantile(1, 2);
        let p99 = quantile(99, 100);
        let max = st.batch_hist.iter().rposition(|&c| c > 0).unwrap_or(0);
        let histogram = if total > 0 {
            st.batch_hist[..=max].to_vec()
        } else {
            Vec::new()
        };
        ReplicaReport {
            window,
            busy_fraction: mean(st.busy.area_s(now)),
            kv_capacity_blocks: cap,
            kv_used_blocks_mean: kv_mean,
            kv_used_blocks_max: st.kv_max,
            kv_occupancy_mean: kv_mean / cap as f64,
            kv_occupancy_max: st.kv_max as f64 / cap as f64,
            iterations: st.iterations,
            prefill_tokens: st.prefill_tokens,
            decode_tokens: st.decode_tokens,
            batch_size_mean: if total > 0 {
                weighted as f64 / total as f64
            } else {
                0.0
            },
            batch_size_p50: p50,
            batch_size_p99: p99,
            batch_size_max: max as u32,
            batch_size_histogram: histogram,
            preemptions: st.preemptions,
            prompt_tokens: st.prompt_tokens,
            cached_tokens: st.hit_tokens,
            prefix_hit_rate: if st.prompt_tokens > 0 {
                st.hit_tokens as f64 / st.prompt_tokens as f64
            } else {
                0.0
            },
            tokens_in_flight_mean: mean(st.kv_tokens.area_s(now)),
            running_mean: mean(st.running.area_s(now)),
            waiting_mean: mean(st.waiting.area_s(now)),
            finished: st.finished,
            rejected: st.rejected,
            running_now: self.running.len() as u32,
            waiting_now: self.waiting.len() as u32,
            outstanding_tokens_now: self.outstanding,
        }
    }

    /// Busy time integrated over the window, in seconds.
    pub fn busy_s(&mut self, now: SimTime) -> f64 {
        self.advance(now);
        self.stats.busy.area_s(now)
    }
    /// Requests queued or running, integrated over the window (hop-seconds).
    pub fn in_system_s(&mut self, now: SimTime) -> f64 {
        self.advance(now);
        self.stats.running.area_s(now) + self.stats.waiting.area_s(now)
    }
    /// Requests waiting, integrated over the window (hop-seconds).
    pub fn queued_s(&mut self, now: SimTime) -> f64 {
        self.advance(now);
        self.stats.waiting.area_s(now)
    }

    fn set_levels(&mut self, t: SimTime) {
        let kv = self.kv_used_blocks();
        let st = &mut self.stats;
        st.kv_used.set(t, kv);
        st.kv_max = st.kv_max.max(kv);
        st.kv_tokens.set(t, self.kv_tokens);
        st.running.set(t, self.running.len() as u64);
        st.waiting.set(t, self.waiting.len() as u64);
    }

    /// Plans the iteration starting at `t` (the replica is not busy), or goes idle.
    fn plan_at(&mut self, t: SimTime) {
        debug_assert!(self.busy.is_none());
        let bs = self.cfg.block_size;
        let mut budget = self.cfg.max_batched_tokens;
        // Decoding sequences not yet given their token: the budget reserved for them.
        let mut decodes_left = self.running.iter().filter(|s| s.in_decode()).count() as u32;
        let mut preempted = false;
        let mut shape = IterationShape::default();
        let mut batch = 0u32;
        let mut total_tokens = 0u64;
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            let decode = s.in_decode();
            if decode {
                decodes_left -= 1;
            }
            let want = if decode {
                1
            } else {
                (s.prompt_len - s.computed).min(budget - decodes_left)
            };
            if want == 0 {
                i += 1;
                continue;
            }
            let held = s.blocks.len() as u32;
            let slack = held * bs - s.computed;
            if slack == 0 && self.kv.available() == 0 {
                let mut self_preempted = false;
                while self.kv.available() == 0 {
                    let Some(v) = self.victim() else { break };
                    if v == i {
                        self.preempt_at(v);
                        preempted = true;
                        self_preempted = true;
                        break;
                    }
                    if v > i {
                        if self.running[v].in_decode() {
                            decodes_left -= 1;
                        }
                    } else {
                        // Scheduled earlier in this iteration (a ranked victim): its
                        // tokens go back to the budget.
                        unschedule(
                            &self.running[v],
                            &mut shape,
                            &mut budget,
                            &mut total_tokens,
                            &mut batch,
                        );
                        i -= 1;
                    }
                    self.preempt_at(v);
                    preempted = true;
                }
                if self_preempted {
                    // The sequences behind it (better-ranked, under a ranked queue)
                    // still get their tokens; under FIFO it was the last one.
                    continue;
                }
            }
            let avail = self.kv.available();
            let s = &mut self.running[i];
            let mut tokens = want;
            let mut need = (s.computed + want).div_ceil(bs) - held;
            if need > avail {
                // Only a prefill chunk can need several blocks: shrink it to what fits.
                need = avail;
                tokens = slack + avail * bs;
            }
            for _ in 0..need {
                if let Some(b) = self.kv.allocate() {
                    s.blocks.push(b);
                }
            }
            s.scheduled = tokens;
            budget -= tokens;
            total_tokens += tokens as u64;
            batch += 1;
            if decode {
                shape.decode_seqs += 1;
                shape.decode_context_tokens += s.computed as u64 + 1;
            } else {
                shape.prefill_tokens += tokens as u64;
                shape.prefill_seqs += 1;
                shape.prefill_context_tokens += s.computed as u64;
            }
            i += 1;
        }
        // After a preemption nothing is admitted: the cache is known to be short.
        if !preempted {
            let mut for_rank = false;
            while let Some(head) = self.waiting.front() {
                let (hits, chunk, new_blocks) = match self.check_admission(head, budget) {
                    Admission::Admit {
                        hits,
                        chunk,
                        new_blocks,
                    } => (hits, chunk, new_blocks),
                    // Priority preemption: a head short of a slot or of blocks preempts
                    // the worst-ranked running sequence below it, then is checked
                    // again. Never for the token budget (it renews every iteration).
                    Admission::Blocked(Blocked::SeqLimit | Blocked::KvBlocks { .. })
                        if self.preempts_for_rank() =>
                    {
                        let Some(v) = self.victim_below(head.rank) else {
                            break;
                        };
                        unschedule(
                            &self.running[v],
                            &mut shape,
                            &mut budget,
                            &mut total_tokens,
                            &mut batch,
                        );
                        self.preempt_at(v);
                        for_rank = true;
                        continue;
                    }
                    Admission::Blocked(_) => break,
                };
                self.admit(t, hits, chunk, new_blocks);
                budget -= chunk;
                total_tokens += chunk as u64;
                batch += 1;
                shape.prefill_tokens += chunk as u64;
                shape.prefill_seqs += 1;
                shape.prefill_context_tokens += (hits * bs) as u64;
            }
            preempted = for_rank;
        }
        if batch == 0 {
            // Unreachable: a request that fits the cache (checked at submit) is always
            // admissible on an empty replica. Refuse the queue rather than hang.
            debug_assert!(
                self.waiting.is_empty(),
                "replica idle with requests waiting"
            );
            let refused = Refused::KvCache {
                capacity_tokens: self.cfg.kv_capacity_blocks as u64 * self.cfg.block_size as u64,
            };
            while let Some(s) = self.waiting.pop_front() {
                self.outstanding -= s.remaining();
                self.stats.rejected += 1;
                self.pending_done
                    .push(refused_done(s.id, s.submitted, t, refused));
            }
            self.forget_waiting();
            self.stats.busy.set(t, 0);
            self.set_levels(t);
            return;
        }
        let dur = self.perf.iteration_time(&shape);
        let end = t + dur;
        let st = &mut self.stats;
        st.iterations += 1;
        st.batch_hist[batch as usize] += 1;
        st.prefill_tokens += shape.prefill_tokens;
        st.decode_tokens += shape.decode_seqs as u64;
        self.generation += 1;
        let mut busy = Busy {
            generation: self.generation,
            general_end: end,
            general_dur: dur,
            general_tokens: total_tokens,
            general_pending: true,
            ext: Stretch::default(),
        };
        if self.cfg.decode_skipping
            && !preempted
            && shape.prefill_seqs == 0
            && shape.decode_seqs as usize == self.running.len()
        {
            self.plan_stretch(&mut busy.ext, end, budget);
            if !busy.ext.ends.is_empty() {
                self.group_stretch();
            }
        }
        self.pending_wake = Some((busy.final_end(), busy.generation));
        self.busy = Some(busy);
        self.stats.busy.set(t, 1);
        self.set_levels(t);
    }

    fn check_admission(&self, head: &Seq, budget_left: u32) -> Admission {
        if self.running.len() as u32 >= self.cfg.max_num_seqs {
            return Admission::Blocked(Blocked::SeqLimit);
        }
        if budget_left == 0 {
            return Admission::Blocked(Blocked::TokenBudget);
        }
        let bs = self.cfg.block_size;
        // At least one prompt token is computed, so the last full block of a fully
        // cached prompt is not a hit.
        let max_hits = ((head.prompt_len - 1) / bs) as usize;
        let m = if self.cfg.prefix_caching {
            let ids = &head.prefix_ids[..head.prefix_ids.len().min(max_hits)];
            self.kv.match_prefix(ids)
        } else {
            PrefixMatch::default()
        };
        let remaining = head.prompt_len - m.blocks * bs;
        let watermark = if self.running.is_empty() {
            0
        } else {
            self.watermark_blocks
        };
        let room = (self.kv.available() - m.evictable).saturating_sub(watermark);
        let blocked = Admission::Blocked(Blocked::KvBlocks {
            hits_evictable: m.evictable,
        });
        if self.cfg.chunked_prefill {
            let chunk = remaining.min(budget_left);
            let blocks = chunk.div_ceil(bs);
            if blocks <= room {
                Admission::Admit {
                    hits: m.blocks,
                    chunk,
                    new_blocks: blocks,
                }
            } else if self.running.is_empty() && room > 0 {
                // Only an empty replica shrinks the first chunk to the cache: elsewhere
                // a partly admitted prompt would just be preempted again.
                Admission::Admit {
                    hits: m.blocks,
                    chunk: room * bs,
                    new_blocks: room,
                }
            } else {
                blocked
            }
        } else if remaining > budget_left {
            Admission::Blocked(Blocked::TokenBudget)
        } else {
            let blocks = remaining.div_ceil(bs);
            if blocks > room {
                blocked
            } else {
                Admission::Admit {
                    hits: m.blocks,
                    chunk: remaining,
                    new_blocks: blocks,
                }
            }
        }
    }

    fn admit(&mut self, t: SimTime, hits: u32, chunk: u32, new_blocks: u32) {
        let Some(mut s) = self.waiting.pop_front() else {
            return;
        };
        let bs = self.cfg.block_size;
        for &h in &s.prefix_ids[..hits as usize] {
            if let Some(b) = self.kv.lookup(h) {
                self.kv.acquire(b);
                s.blocks.push(b);
            }
        }
        for _ in 0..new_blocks {
            if let Some(b) = self.kv.allocate() {
                s.blocks.push(b);
            }
        }
        let hit_tokens = hits * bs;
        s.computed = hit_tokens;
        s.registered = hits;
        s.scheduled = chunk;
        if s.started.is_none() {
            s.started = Some(t);
            s.cached_tokens = hit_tokens;
        }
        self.stats.prompt_tokens += s.prompt_len as u64;
        self.stats.hit_tokens += hit_tokens as u64;
        self.kv_tokens += hit_tokens as u64;
        self.outstanding -= hit_tokens as u64;
        if let Some(f) = s.fair {
            self.fair_admitted(&s, f, hit_tokens);
        }
        self.running.push(s);
    }

    /// Fair queue: `s` (lane `f`) is admitted with `hit_tokens` from the prefix cache.
    /// The virtual time moves to its start tag; on its first admission its lane's
    /// finish tag is set from its size and the lane's next waiting request is tagged.
    fn fair_admitted(&mut self, s: &Seq, f: FairSeq, hit_tokens: u32) {
        let Some(q) = self.fair.as_mut() else { return };
        q.virtual_time = q.virtual_time.max(s.rank);
        // A request readmitted after a preemption keeps its place: the recomputation
        // is not charged to its lane.
        if s.preemptions > 0 {
            return;
        }
        let Some(l) = q.lanes.get_mut(&f.lane) else {
            return;
        };
        let size = (s.prompt_len - hit_tokens) as u64 + s.output as u64;
        l.last_finish = s.rank + fair_delta(size, f.weight);
        l.fresh = l.fresh.saturating_sub(1);
        if l.fresh == 0 {
            return;
        }
        let tag = q.virtual_time.max(l.last_finish);
        self.tag_next_of_lane(f.lane, tag);
    }

    /// Fair queue: lane `lane`'s next waiting request (its first untagged one:
    /// untagged requests wait at the back, in arrival order) gets start tag `tag` and
    /// its place in the queue.
    fn tag_next_of_lane(&mut self, lane: u32, tag: u128) {
        let first_untagged = self.waiting.partition_point(|w| w.rank < UNTAGGED);
        let Some(k) = (first_untagged..self.waiting.len())
            .find(|&k| self.waiting[k].fair.is_some_and(|w| w.lane == lane))
        else {
            return;
        };
        let Some(mut next) = self.waiting.remove(k) else {
            return;
        };
        next.rank = tag;
        let arrival = next.fair.map_or(0, |w| w.arrival);
        // Behind every smaller tag, and among equal tags in arrival order.
        let mut pos = self.waiting.partition_point(|w| w.rank < tag);
        while pos < self.waiting.len()
            && self.waiting[pos].rank == tag
            && self.waiting[pos].fair.is_some_and(|w| w.arrival < arrival)
        {
            pos += 1;
        }
        self.waiting.insert(pos, next);
    }

    /// The waiting queue was emptied: no lane of a fair queue has a request waiting.
    fn forget_waiting(&mut self) {
        if let Some(q) = self.fair.as_mut() {
            q.lanes.values_mut().for_each(|l| l.fresh = 0);
        }
    }

    /// Preempts running sequence `idx` by recompute (the others keep their admission
    /// order).
    fn preempt_at(&mut self, idx: usize) {
        if idx >= self.running.len() {
            return;
        }
        let mut v = self.running.remove(idx);
        let before = v.remaining();
        for &b in v.blocks.iter().rev() {
            self.kv.release(b);
        }
        v.blocks.clear();
        self.kv_tokens -= v.computed as u64;
        v.prompt_len = v.input + v.generated;
        v.computed = 0;
        v.scheduled = 0;
        v.registered = 0;
        v.preemptions += 1;
        self.outstanding = self.outstanding - before + v.remaining();
        self.stats.preemptions += 1;
        if self.ranked {
            // The front of its own rank: ahead of every waiting request of its rank or
            // larger.
            let pos = self.waiting.partition_point(|s| s.rank < v.rank);
            self.waiting.insert(pos, v);
        } else {
            self.waiting.push_front(v);
        }
    }

    /// End effects of the general iteration.
    fn end_general(&mut self, end: SimTime, dur: SimDuration, tokens: u64) {
        let bs = self.cfg.block_size;
        let caching = self.cfg.prefix_caching;
        // This iteration's gaps are merged by (group, gap) among themselves.
        let mark = self.pending_gaps.len();
        for s in self.running.iter_mut() {
            let tok = s.scheduled;
            if tok == 0 {
                continue;
            }
            s.scheduled = 0;
            let part = share_of(dur, tok as u64, tokens);
            s.share += part;
            let was_prefill = !s.in_decode();
            if was_prefill {
                s.prefill_share += part;
            }
            s.computed += tok;
            self.kv_tokens += tok as u64;
            if was_prefill {
                self.outstanding -= tok as u64;
                if caching {
                    while (s.registered as usize) < s.prefix_ids.len()
                        && (s.registered + 1) * bs <= s.computed
                    {
                        let i = s.registered as usize;
                        self.kv.register(s.blocks[i], s.prefix_ids[i]);
                        s.registered += 1;
                    }
                }
                if s.computed >= s.prompt_len {
                    // After a preemption, recomputation ends with the next token: the
                    // stall is one long gap.
                    if s.generated > 0
                        && let Some(g) = s.itl_group
                    {
                        TokenGaps::add_since(
                            &mut self.pending_gaps,
                            mark,
                            g,
                            end - s.last_token,
                            1,
                        );
                    }
                    s.generated += 1;
                    self.outstanding -= 1;
                    if s.first_token.is_none()
                        && let Some(f) = self.pending_first_tokens.as_mut()
                    {
                        f.push(FirstToken {
                            at: end,
                            id: s.id,
                            ttft: end - s.submitted,
                        });
                    }
                    s.first_token.get_or_insert(end);
                    s.last_token = end;
                }
            } else {
                if let Some(g) = s.itl_group {
                    TokenGaps::add_since(&mut self.pending_gaps, mark, g, end - s.last_token, 1);
                }
                s.generated += 1;
                self.outstanding -= 1;
                s.last_token = end;
            }
        }
        self.retire_finished(end);
        self.set_levels(end);
    }

    /// Finished sequences free their blocks (tail first, so that a cached prefix's
    /// root outlives its branches in the LRU) and report.
    fn retire_finished(&mut self, end: SimTime) {
        let usd_per_ns = self.usd_per_ns;
        let kv = &mut self.kv;
        let done = &mut self.pending_done;
        let kv_tokens = &mut self.kv_tokens;
        let stats = &mut self.stats;
        let outstanding = &mut self.outstanding;
        self.running.retain_mut(|s| {
            if s.generated < s.output && !s.aborted {
                return true;
            }
            for &b in s.blocks.iter().rev() {
                kv.release(b);
            }
            *kv_tokens -= s.computed as u64;
            if s.aborted && s.generated < s.output {
                *outstanding -= s.remaining();
            } else {
                stats.finished += 1;
            }
            done.push(s.hop_done(end, usd_per_ns));
            false
        });
    }

    /// Plans decode iterations after the pure-decode iteration ending at `end0` for as
    /// long as the batch cannot change. `budget_left` is that iteration's unused budget.
    fn plan_stretch(&self, ext: &mut Stretch, end0: SimTime, budget_left: u32) {
        let bs = self.cfg.block_size;
        let n = self.running.len() as u32;
        let mut kmax = self.stretch_cap;
        // Context after the first iteration, summed.
        let mut ctx = 0u64;
        for s in &self.running {
            kmax = kmax.min((s.output - s.generated).saturating_sub(1));
            ctx += s.computed as u64 + 1;
        }
        if kmax == 0 {
            return;
        }
        // The head of the queue must stay blocked. Limits on sequences and tokens do
        // not move during a stretch, and fewer blocks only block more, except that an
        // eviction can free a chunked head whose prefix hits were evictable: then the
        // stretch must not evict.
        let may_evict = match self.waiting.front() {
            None => true,
            // A head that would preempt changes the batch at the next boundary. (The
            // admission that planned this iteration has preempted all it could, so
            // this does not happen; it keeps stretches safe should that change.)
            Some(head) if self.would_preempt_for(head) => {
                match self.check_admission(head, budget_left) {
                    Admission::Blocked(Blocked::TokenBudget) => true,
                    _ => return,
                }
            }
            Some(head) => match self.check_admission(head, budget_left) {
                Admission::Admit { .. } => return,
                Admission::Blocked(Blocked::SeqLimit | Blocked::TokenBudget) => true,
                Admission::Blocked(Blocked::KvBlocks { hits_evictable }) => {
                    !self.cfg.chunked_prefill || hits_evictable == 0
                }
            },
        };
        let limit = if may_evict {
            self.kv.available()
        } else {
            self.kv.free_uncached()
        };
        ext.allocs.clear();
        ext.allocs.resize(kmax as usize, 0);
        for s in &self.running {
            // Context before stretch iteration j (1-based) is l + j - 1; a new block is
            // needed when that is a multiple of the block size.
            let l = s.computed + 1;
            let r = l % bs;
            let mut j = if r == 0 { 1 } else { bs - r + 1 };
            while j <= kmax {
                ext.allocs[j as usize - 1] += 1;
                j += bs;
            }
        }
        let mut cum = 0u32;
        let mut k = 0usize;
        for &a in &ext.allocs {
            if cum + a > limit {
                break;
            }
            cum += a;
            k += 1;
        }
        if k == 0 {
            ext.allocs.clear();
            return;
        }
        ext.allocs.truncate(k);
        ext.ends.clear();
        ext.durs.clear();
        let mut t = end0;
        for j in 1..=k as u64 {
            let shape = IterationShape {
                decode_seqs: n,
                decode_context_tokens: ctx + n as u64 * j,
                ..IterationShape::default()
            };
            let d = self.perf.iteration_time(&shape);
            t += d;
            ext.durs.push(d);
            ext.ends.push(t);
        }
        ext.n = n;
    }

    fn ext_start(&mut self, start: SimTime) {
        let Some(b) = self.busy.as_mut() else { return };
        let ext = &mut b.ext;
        let allocs = ext.allocs[ext.started];
        ext.pending_allocs += allocs;
        ext.started += 1;
        let n = ext.n;
        let st = &mut self.stats;
        st.iterations += 1;
        st.batch_hist[n as usize] += 1;
        st.decode_tokens += n as u64;
        // Only the KV level can change at a stretch iteration's start; setting an
        // integral to its current level changes nothing, so the others are skipped.
        if allocs > 0 {
            let kv = self.kv_used_blocks();
            let st = &mut self.stats;
            st.kv_used.set(start, kv);
            st.kv_max = st.kv_max.max(kv);
        }
    }

    /// Counts the running set by gap group, for the stretch just planned.
    fn group_stretch(&mut self) {
        let groups = &mut self.stretch_groups;
        groups.clear();
        for s in &self.running {
            if let Some(g) = s.itl_group {
                match groups.iter_mut().find(|e| e.0 == g) {
                    Some(e) => e.1 += 1,
                    None => groups.push((g, 1)),
                }
            }
        }
    }

    fn ext_end(&mut self, end: SimTime) {
        let Some(b) = self.busy.as_mut() else { return };
        let ext = &mut b.ext;
        let n = ext.n as u64;
        // Every running sequence produced a token at the previous iteration's end: this
        // one ends a gap of its duration for each.
        for &(g, c) in &self.stretch_groups {
            TokenGaps::push(&mut self.pending_gaps, g, ext.durs[ext.ended], c);
        }
        ext.share += share_of(ext.durs[ext.ended], 1, n);
        ext.ended += 1;
        self.kv_tokens += n;
        self.outstanding -= n;
        self.stats.kv_tokens.set(end, self.kv_tokens);
    }

    /// Brings every sequence up to date after a finished stretch.
    fn materialize(&mut self, ext: &Stretch) {
        let k = ext.ended as u32;
        let bs = self.cfg.block_size;
        let last = ext.ends[..ext.ended].last().copied();
        for s in self.running.iter_mut() {
            if let Some(t) = last {
                s.last_token = t;
            }
            s.computed += k;
            s.generated += k;
            s.share += ext.share;
            let need = s.computed.div_ceil(bs) as usize;
            while s.blocks.len() < need {
                let Some(b) = self.kv.allocate() else {
                    debug_assert!(false, "stretch planned more blocks than available");
                    break;
                };
                s.blocks.push(b);
            }
        }
    }

    /// A request became the head of the queue during a stretch: unless it is
    /// blocked for as long as the stretch lasts, end the stretch after the iteration in
    /// progress so that the next boundary considers it.
    fn cut_stretch_for_new_head(&mut self) {
        let n = self.running.len() as u32;
        // A head that outranks a running sequence may preempt it at the next boundary
        // even with every slot taken: cut.
        let preempts = self
            .waiting
            .front()
            .is_some_and(|h| self.would_preempt_for(h));
        if !preempts && (n >= self.cfg.max_num_seqs || self.cfg.max_batched_tokens == n) {
            return;
        }
        let Some(b) = self.busy.as_mut() else { return };
        let keep = if b.general_pending {
            0
        } else {
            b.ext.ended + 1
        };
        if keep >= b.ext.ends.len() {
            return;
        }
        b.ext.ends.truncate(keep);
        b.ext.durs.truncate(keep);
        b.ext.allocs.truncate(keep);
        b.ext.cut = true;
        self.stretch_cap = (self.stretch_cap / 2).max(MIN_STRETCH);
        self.generation += 1;
        b.generation = self.generation;
        self.pending_wake = Some((b.final_end(), b.generation));
    }

    /// Checks the accounting; for tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.kv.check_invariants()?;
        let lazy = self.busy.as_ref().map_or(0, |b| b.ext.ended as u32);
        let bs = self.cfg.block_size;
        if self.kv_used_blocks() > self.cfg.kv_capacity_blocks as u64 {
            return Err(format!(
                "{} blocks used of {}",
                self.kv_used_blocks(),
                self.cfg.kv_capacity_blocks
            ));
        }
        let mut held = 0u64;
        let mut tokens = 0u64;
        let mut outstanding = 0u64;
        for s in &self.running {
            held += s.blocks.len() as u64;
            let computed = s.computed + lazy;
            tokens += computed as u64;
            outstanding += s.remaining() - lazy as u64;
            if s.blocks.len() as u32 * bs < s.computed + s.scheduled {
                return Err(format!("{:?} holds too few blocks", s.id));
            }
        }
        for s in &self.waiting {
            if !s.blocks.is_empty() {
                return Err(format!("{:?} waits holding blocks", s.id));
            }
            outstanding += s.remaining();
        }
        if self.ranked
            && let Some(w) = self
                .waiting
                .iter()
                .zip(self.waiting.iter().skip(1))
                .find(|(a, b)| a.rank > b.rank)
        {
            return Err(format!(
                "{:?} (rank {}) waits ahead of {:?} (rank {})",
                w.0.id, w.0.rank, w.1.id, w.1.rank
            ));
        }
        if let Some(q) = &self.fair {
            for (&lane, l) in &q.lanes {
                // The lane's never-admitted waiting requests, in arrival order.
                let mut fresh: Vec<&Seq> = self
                    .waiting
                    .iter()
                    .filter(|s| s.preemptions == 0 && s.fair.is_some_and(|f| f.lane == lane))
                    .collect();
                fresh.sort_by_key(|s| s.fair.map_or(0, |f| f.arrival));
                if fresh.len() != l.fresh as usize {
                    return Err(format!(
                        "lane {lane}: {} fresh requests waiting, {} counted",
                        fresh.len(),
                        l.fresh
                    ));
                }
                if let Some(s) = fresh
                    .iter()
                    .enumerate()
                    .find(|(k, s)| (*k == 0) == (s.rank == UNTAGGED))
                {
                    return Err(format!(
                        "lane {lane}: {:?} (the {}th waiting) has rank {}",
                        s.1.id, s.0, s.1.rank
                    ));
                }
            }
            if let Some(s) = self.waiting.iter().find(|s| s.fair.is_none()) {
                return Err(format!("{:?} waits in a fair queue without a lane", s.id));
            }
        }
        // Blocks shared through the prefix cache are counted once per holder.
        if held < self.kv.used() as u64 {
            return Err(format!(
                "sequences hold {held} blocks, cache says {} used",
                self.kv.used()
            ));
        }
        if tokens != self.kv_tokens {
            return Err(format!(
                "kv tokens {} but sequences hold {tokens}",
                self.kv_tokens
            ));
        }
        if outstanding != self.outstanding {
            return Err(format!(
                "outstanding {} but sequences need {outstanding}",
                self.outstanding
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Iteration time linear in every term of the shape, to the nanosecond.
    #[derive(Debug)]
    struct LinearPerf;
    impl PerfModel for LinearPerf {
        fn iteration_time(&self, s: &IterationShape) -> SimDuration {
            SimDuration(
                5_000
                    + 40 * s.prefill_tokens
                    + 11 * s.prefill_seqs as u64
                    + 3 * s.prefill_context_tokens
                    + 700 * s.decode_seqs as u64
                    + 2 * s.decode_context_tokens,
            )
        }
        fn name(&self) -> &str {
            "linear"
        }
    }

    fn t(shape: IterationShape) -> u64 {
        LinearPerf.iteration_time(&shape).as_nanos()
    }
    fn prefill(tokens: u64, seqs: u32, ctx: u64) -> u64 {
        t(IterationShape {
            prefill_tokens: tokens,
            prefill_seqs: seqs,
            prefill_context_tokens: ctx,
            ..IterationShape::default()
        })
    }
    fn decode(seqs: u32, ctx: u64) -> u64 {
        t(IterationShape {
            decode_seqs: seqs,
            decode_context_tokens: ctx,
            ..IterationShape::default()
        })
    }

    fn req(input: u32, output: u32) -> LlmRequest {
        LlmRequest {
            input_tokens: input,
            output_tokens: output,
            shared_prefix_tokens: 0,
            prefix_group: 0,
            block_hashes: None,
            hash_block_tokens: 0,
            itl_group: None,
        }
    }

    /// Feeds arrivals (time-ordered) to one replica and runs it dry.
    fn run(cfg: ReplicaConfig, arrivals: &[(u64, LlmRequest)]) -> (Vec<HopDone>, ReplicaReport) {
        let r = Replica::new(cfg, Arc::new(LinearPerf), 3.6).unwrap_or_else(|e| panic!("{e}"));
        let ranked: Vec<(u64, LlmRequest, u64)> =
            arrivals.iter().map(|(t, q)| (*t, q.clone(), 0)).collect();
        drive(r, &ranked)
    }

    /// Feeds ranked arrivals (time, request, rank; time-ordered) to replica `r`, checking
    /// its invariants after every step, and runs it dry.
    fn drive(mut r: Replica, arrivals: &[(u64, LlmRequest, u64)]) -> (Vec<HopDone>, ReplicaReport) {
        let mut done = Vec::new();
        let mut wake: Option<SimTime> = None;
        let mut next = 0;
        loop {
            let arrival = arrivals.get(next).map(|a| SimTime(a.0));
            match (arrival, wake) {
                (Some(a), w) if w.is_none_or(|w| a <= w) => {
                    let (_, req, rank) = &arrivals[next];
                    r.submit_ranked(a, a, JobId(next as u64), req, *rank);
                    next += 1;
                }
                (_, Some(w)) => {
                    wake = None;
                    r.advance(w);
                }
                (None, None) => break,
                (Some(_), None) => unreachable!(),
            }
            if let Some((tw, _)) = r.take_wake() {
                wake = Some(tw);
            }
            r.drain_done(&mut done);
            r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
        }
        done.sort_by_key(|d| d.id);
        let end = done.iter().map(|d| d.finished).max().unwrap_or_default();
        (done, r.report(end))
    }

    /// `run_with(cfg)` with and without decode skipping, which must agree.
    fn skip_and_plain(
        cfg: ReplicaConfig,
        run_with: impl Fn(ReplicaConfig) -> (Vec<HopDone>, ReplicaReport),
    ) -> (Vec<HopDone>, ReplicaReport) {
        let a = run_with(ReplicaConfig {
            decode_skipping: true,
            ..cfg.clone()
        });
        let b = run_with(ReplicaConfig {
            decode_skipping: false,
            ..cfg
        });
        assert_eq!(a, b, "decode skipping changed the result");
        a
    }

    fn both_modes(
        cfg: ReplicaConfig,
        arrivals: &[(u64, LlmRequest)],
    ) -> (Vec<HopDone>, ReplicaReport) {
        skip_and_plain(cfg, |c| run(c, arrivals))
    }

    #[test]
    fn single_request_takes_the_models_prefill_plus_decode_times() {
        let cfg = ReplicaConfig::new(1000).unwrap();
        let (done, rep) = both_modes(cfg, &[(1_000, req(100, 10))]);
        let pre = prefill(100, 1, 0);
        let dec: u64 = (1..=9).map(|j| decode(1, 100 + j)).sum();
        let d = done[0];
        assert_eq!(d.started, SimTime(1_000));
        assert_eq!(d.finished, SimTime(1_000 + pre + dec));
        let llm = d.llm.unwrap();
        assert_eq!(llm.ttft, SimDuration(pre));
        assert_eq!(llm.tpot, SimDuration(dec / 9));
        // Alone in every iteration, it is charged every nanosecond.
        assert_eq!(d.busy, SimDuration(pre + dec));
        assert!((d.usd - (pre + dec) as f64 * 1e-12).abs() < 1e-18);
        assert_eq!(rep.iterations, 10);
        assert_eq!(rep.batch_size_histogram, vec![0, 10]);
    }

    #[test]
    fn chunked_prefill_splits_the_prompt_within_the_budget() {
        let cfg = ReplicaConfig {
            max_batched_tokens: 128,
            max_num_seqs: 4,
            ..ReplicaConfig::defaults(1000)
        };
        let (done, _) = both_modes(cfg, &[(0, req(300, 3))]);
        let pre = prefill(128, 1, 0) + prefill(128, 1, 128) + prefill(44, 1, 256);
        let dec = decode(1, 301) + decode(1, 302);
        assert_eq!(done[0].llm.unwrap().ttft, SimDuration(pre));
        assert_eq!(done[0].finished, SimTime(pre + dec));
    }

    #[test]
    fn identical_batch_iterates_at_the_models_pace() {
        // A one-token request occupies the first iteration so that the batch of eight
        // is admitted together at its end.
        let n = 8u32;
        let mut arrivals = vec![(0, req(16, 1))];
        arrivals.extend((0..n).map(|_| (0, req(64, 20))));
        let (done, rep) = both_modes(ReplicaConfig::new(1000).unwrap(), &arrivals);
        let t0 = prefill(16, 1, 0);
        let pre = prefill(64 * n as u64, n, 0);
        let steps: Vec<u64> = (1..=19).map(|j| decode(n, n as u64 * (64 + j))).collect();
        let dec: u64 = steps.iter().sum();
        for d in &done[1..] {
            let llm = d.llm.unwrap();
            assert_eq!(d.started, SimTime(t0));
            assert_eq!(llm.ttft, SimDuration(t0 + pre));
            assert_eq!(llm.tpot, SimDuration(dec / 19));
            assert_eq!(d.finished, SimTime(t0 + pre + dec));
            // Equal shares of every iteration (floored in fixed point).
            assert!(d.busy.as_nanos().abs_diff((pre + dec) / n as u64) <= 20);
        }
        assert_eq!(rep.iterations, 1 + 1 + 19);
        assert_eq!(rep.batch_size_histogram[n as usize], 20);
        assert_eq!(rep.batch_size_p50, n);
    }

    fn preemption_case(kv_blocks: u32) -> (Vec<HopDone>, ReplicaReport) {
        // Two requests needing ceil((4 + 9 - 1) / 4) = 3 blocks each.
        let cfg = ReplicaConfig {
            block_size: 4,
            watermark: 0.0,
            ..ReplicaConfig::defaults(kv_blocks)
        };
        both_modes(cfg, &[(0, req(4, 9)), (0, req(4, 9))])
    }

    #[test]
    fn preempts_when_and_only_when_it_must() {
        let (done, rep) = preemption_case(6);
        assert_eq!(rep.preemptions, 0);
        assert!(done.iter().all(|d| d.llm.unwrap().preemptions == 0));

        let (done, rep) = preemption_case(4);
        assert_eq!(rep.preemptions, 1);
        // The most recently admitted one is recomputed; both finish.
        assert_eq!(done[0].llm.unwrap().preemptions, 0);
        assert_eq!(done[1].llm.unwrap().preemptions, 1);
        assert!(done[1].finished > done[0].finished);
        assert_eq!(rep.finished, 2);
        assert_eq!(rep.kv_used_blocks_max, 4);
    }

    #[test]
    fn a_ranked_queue_orders_arrivals_and_puts_the_preempted_in_front_of_its_rank() {
        // The preemption case: A and B (rank 5) run, three blocks each wanted of four,
        // so B is preempted when both cross their second block boundary. Meanwhile D
        // (rank 5) and then C (rank 0) arrive with prompts of three blocks, blocked.
        // (IDs: A 0, B 1, C 2, D 3.)
        let cfg = ReplicaConfig {
            block_size: 4,
            watermark: 0.0,
            ..ReplicaConfig::defaults(4)
        };
        let mut r = Replica::new(cfg, Arc::new(LinearPerf), 3.6).unwrap_or_else(|e| panic!("{e}"));
        r.set_ranked(true);
        let ids = |r: &Replica| r.waiting.iter().map(|s| s.id.0).collect::<Vec<_>>();
        r.submit_ranked(SimTime(0), SimTime(0), JobId(0), &req(4, 9), 5);
        r.submit_ranked(SimTime(0), SimTime(0), JobId(1), &req(4, 9), 5);
        r.submit_ranked(SimTime(12_000), SimTime(12_000), JobId(3), &req(12, 2), 5);
        r.submit_ranked(SimTime(12_001), SimTime(12_001), JobId(2), &req(12, 2), 0);
        assert_eq!(r.running_len(), 2);
        assert_eq!(
            ids(&r),
            vec![2, 3],
            "the better rank first, whatever the arrival"
        );
        let mut done = Vec::new();
        let mut seen = Vec::new();
        while let Some((t, _)) = r.take_wake() {
            r.advance(t);
            r.drain_done(&mut done);
            r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
            if r.stats.preemptions == 1 && seen.is_empty() {
                seen = ids(&r);
            }
        }
        // B goes back in front of D (its rank, arrived later) but behind C.
        assert_eq!(seen, vec![2, 1, 3]);
        assert_eq!(done.len(), 4);
        done.sort_by_key(|d| d.started);
        let order: Vec<u64> = done.iter().map(|d| d.id.0).collect();
        assert_eq!(order, vec![0, 1, 2, 3]);
        // C runs before B is readmitted: B finishes after C starts.
        assert!(done[1].finished > done[2].started);

        // In FIFO the same arrivals queue in arrival order and B goes to the very front.
        let mut f = Replica::new(r.cfg.clone(), Arc::new(LinearPerf), 3.6)
            .unwrap_or_else(|e| panic!("{e}"));
        f.submit_ranked(SimTime(0), SimTime(0), JobId(0), &req(4, 9), 5);
        f.submit_ranked(SimTime(0), SimTime(0), JobId(1), &req(4, 9), 5);
        f.submit_ranked(SimTime(12_000), SimTime(12_000), JobId(3), &req(12, 2), 5);
        f.submit_ranked(SimTime(12_001), SimTime(12_001), JobId(2), &req(12, 2), 0);
        assert_eq!(ids(&f), vec![3, 2]);
        let mut seen = Vec::new();
        while let Some((t, _)) = f.take_wake() {
            f.advance(t);
            if f.stats.preemptions == 1 && seen.is_empty() {
                seen = ids(&f);
            }
        }
        assert_eq!(seen, vec![1, 3, 2]);
    }

    #[test]
    fn a_fair_queue_admits_by_start_tags_counting_uncached_tokens() {
        // One sequence at a time. X (lane 2) runs first; meanwhile A1..A4 (lane 0) and
        // B1, B2 (lane 1) arrive in the order A1 B1 A2 B2 A3 A4, each 8 prompt + 4
        // output tokens. (IDs: X 0, A1 1, A2 2, A3 3, A4 4, B1 5, B2 6.)
        let cfg = ReplicaConfig {
            max_num_seqs: 1,
            block_size: 4,
            ..ReplicaConfig::defaults(1000)
        };
        let admitted = |weights: [f64; 2], a: LlmRequest, b: LlmRequest, x: LlmRequest| {
            let mut r = Replica::new(cfg.clone(), Arc::new(LinearPerf), 3.6)
                .unwrap_or_else(|e| panic!("{e}"));
            r.set_weighted_fair();
            let place = |lane: u32| Place::Fair {
                lane,
                weight: fair_weight(if lane < 2 {
                    weights[lane as usize]
                } else {
                    1.0
                }),
            };
            let t0 = SimTime(0);
            r.submit_placed(t0, t0, JobId(0), &x, place(2));
            for (id, lane) in [(1, 0), (5, 1), (2, 0), (6, 1), (3, 0), (4, 0)] {
                let req = if lane == 0 { &a } else { &b };
                r.submit_placed(t0, t0, JobId(id), req, place(lane));
            }
            let mut done = Vec::new();
            while let Some((t, _)) = r.take_wake() {
                r.advance(t);
                r.drain_done(&mut done);
                r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(done.len(), 7);
            done.sort_by_key(|d| d.started);
            done.iter().map(|d| d.id.0).collect::<Vec<u64>>()
        };
        // Weights 3:1, sizes 12: lane 0's start tags are 0, 4, 8, 12 and lane 1's 0, 12
        // (in tokens / weight); A4 and B2 tie at 12 and go in arrival order (B2 first).
        assert_eq!(
            admitted([3.0, 1.0], req(8, 4), req(8, 4), req(8, 4)),
            vec![0, 1, 5, 2, 3, 6, 4]
        );
        // Weights 1:1, but lane 0 shares a 16-token prefix that X (lane 2) left in the
        // cache: 4 uncached prompt tokens + 4 output = 8 tokens against lane 1's 24, so
        // lane 0 again goes 3 for 1 (tags 0, 8, 16, 24 against 0, 24).
        let shared = LlmRequest {
            shared_prefix_tokens: 16,
            prefix_group: 7,
            ..req(20, 4)
        };
        assert_eq!(
            admitted([1.0, 1.0], shared.clone(), req(20, 4), shared.clone()),
            vec![0, 1, 5, 2, 3, 6, 4]
        );
        // With X warming another prefix, A1 is charged its whole prompt (24 tokens, as
        // B1 is): A2 and B2 tie at 24 and the lanes alternate until B2 has gone.
        let cold = LlmRequest {
            prefix_group: 8,
            ..shared.clone()
        };
        assert_eq!(
            admitted([1.0, 1.0], shared, req(20, 4), cold),
            vec![0, 1, 5, 2, 6, 3, 4]
        );
        // Every weight maps to a usable fixed-point weight.
        assert_eq!(fair_weight(1.0), 65536);
        assert_eq!(fair_weight(1e-300), 1);
        assert_eq!(fair_weight(1e300), 1 << 48);
    }

    /// Feeds ranked arrivals (time, request, rank; time-ordered) to one replica with a
    /// ranked queue, priority preemption on or off, and runs it dry.
    fn run_ranked(
        cfg: ReplicaConfig,
        arrivals: &[(u64, LlmRequest, u64)],
        preempt: bool,
    ) -> (Vec<HopDone>, ReplicaReport) {
        let mut r = Replica::new(cfg, Arc::new(LinearPerf), 3.6).unwrap_or_else(|e| panic!("{e}"));
        r.set_ranked(true);
        r.set_priority_preemption(preempt);
        drive(r, arrivals)
    }

    /// [`run_ranked`] with and without decode skipping, which must agree.
    fn ranked_both_modes(
        cfg: ReplicaConfig,
        arrivals: &[(u64, LlmRequest, u64)],
        preempt: bool,
    ) -> (Vec<HopDone>, ReplicaReport) {
        skip_and_plain(cfg, |c| run_ranked(c, arrivals, preempt))
    }

    /// A mixed iteration: one prefill chunk of `tokens` (no context) and one decode.
    fn mixed(tokens: u64, decode_ctx: u64) -> u64 {
        t(IterationShape {
            prefill_tokens: tokens,
            prefill_seqs: 1,
            decode_seqs: 1,
            decode_context_tokens: decode_ctx,
            ..IterationShape::default()
        })
    }

    #[test]
    fn tokens_ahead_leave_out_only_the_waiting_requests_ranked_worse() {
        // One sequence slot: A (rank 5, 10 + 5 tokens) runs, then B (rank 9, 20 + 5),
        // C (rank 1, 30 + 5) and D (rank 5, 40 + 5) wait, queued C, D, B. A request of
        // rank 5 would go in front of B only (behind its equal D); of rank 0 in front of
        // all three; of rank 9 or worse in front of none.
        let cfg = ReplicaConfig {
            max_num_seqs: 1,
            ..ReplicaConfig::defaults(1000)
        };
        for queue in ["ranked", "fifo", "fair"] {
            let mut r = Replica::new(cfg.clone(), Arc::new(LinearPerf), 3.6)
                .unwrap_or_else(|e| panic!("{e}"));
            match queue {
                "ranked" => r.set_ranked(true),
                "fair" => r.set_weighted_fair(),
                _ => {}
            }
            for (id, (input, rank)) in [(10, 5), (20, 9), (30, 1), (40, 5)].into_iter().enumerate()
            {
                r.submit_placed(
                    SimTime(0),
                    SimTime(0),
                    JobId(id as u64),
                    &req(input, 5),
                    Place::Rank(rank),
                );
            }
            assert_eq!((r.running_len(), r.waiting_len()), (1, 3), "{queue}");
            let all = r.outstanding_tokens();
            assert_eq!(all, 15 + 25 + 35 + 45, "{queue}");
            let ahead = |rank| r.outstanding_tokens_ahead(Place::Rank(rank));
            if queue == "ranked" {
                assert_eq!(ahead(5), all - 25);
                assert_eq!(ahead(0), 15);
                assert_eq!(ahead(1), all - 25 - 45);
                assert_eq!((ahead(9), ahead(100)), (all, all));
            } else {
                // FIFO and fair queues: an arrival overtakes nobody.
                for rank in [0, 5, 100] {
                    assert_eq!(ahead(rank), all, "{queue}");
                }
            }
        }
    }

    #[test]
    fn a_kv_shortage_preempts_the_worst_ranked_running_sequence() {
        // Five blocks of 4 tokens. A (rank 5, 5 + 9 tokens: 4 blocks) is admitted alone
        // at 0, B (rank 0, 4 + 9: 3 blocks) one iteration later. In the seventh
        // iteration B (admitted second) crosses a block boundary with no block left.
        // (IDs: A 0, B 1.)
        let cfg = ReplicaConfig {
            block_size: 4,
            watermark: 0.0,
            ..ReplicaConfig::defaults(5)
        };
        let arrivals = |rank_b: u64| vec![(0, req(5, 9), 5), (0, req(4, 9), rank_b)];
        let (done, rep) = ranked_both_modes(cfg.clone(), &arrivals(0), false);
        // A ranks worse: A is preempted although it was admitted first (and was already
        // scheduled in that iteration: its token goes back), and B never stalls.
        assert_eq!(rep.preemptions, 1);
        assert_eq!(done[0].llm.unwrap().preemptions, 1);
        assert_eq!(done[1].llm.unwrap().preemptions, 0);
        // B's iterations: A's prefill; A's decode with B's prefill; four decodes of
        // both (contexts A 7..10 + B 5..8); then alone from context 9 to 12 (A waits:
        // its recomputed prompt of 11 tokens needs 3 blocks, 2 are free).
        let b_end = prefill(5, 1, 0)
            + mixed(4, 6)
            + (0..4).map(|k| decode(2, 12 + 2 * k)).sum::<u64>()
            + (9..=12).map(|c| decode(1, c)).sum::<u64>();
        assert_eq!(done[1].finished, SimTime(b_end));
        assert_eq!(
            done[1].llm.unwrap().ttft,
            SimDuration(prefill(5, 1, 0) + mixed(4, 6))
        );
        assert!(done[0].finished > done[1].finished);
        assert_eq!(done[0].started, SimTime(0), "keeps its first admission");

        // Equal ranks: the most recently admitted (B) is preempted, as under FIFO, and
        // the run is the FIFO run exactly, with priority preemption on or off.
        let (eq, eq_rep) = ranked_both_modes(cfg.clone(), &arrivals(5), false);
        assert_eq!(eq[0].llm.unwrap().preemptions, 0);
        assert_eq!(eq[1].llm.unwrap().preemptions, 1);
        let fifo = both_modes(cfg.clone(), &[(0, req(5, 9)), (0, req(4, 9))]);
        assert_eq!((eq.clone(), eq_rep.clone()), fifo);
        assert_eq!(ranked_both_modes(cfg, &arrivals(5), true), (eq, eq_rep));
    }

    #[test]
    fn priority_preemption_makes_room_for_a_better_ranked_head() {
        // Two sequences at most. Batch A and B (rank 5, 8 + 20 tokens) run, B admitted
        // one iteration after A; interactive C (rank 0, 8 + 2) arrives 100 ns into the
        // first iteration where both decode. (IDs: A 0, B 1, C 2.) Ample KV: only
        // the sequence limit blocks C.
        let cfg = ReplicaConfig {
            max_num_seqs: 2,
            block_size: 4,
            ..ReplicaConfig::defaults(1000)
        };
        // Both decoding, A at its g-th token (B one behind): contexts 8 + g and 7 + g.
        let both = |g: u64| decode(2, 15 + 2 * g);
        let e1 = prefill(8, 1, 0) + mixed(8, 9);
        let x = e1 + 100;
        let arrivals = [(0, req(8, 20), 5), (0, req(8, 20), 5), (x, req(8, 2), 0)];

        // Without the key C waits for a slot: A's last token.
        let (off, off_rep) = ranked_both_modes(cfg.clone(), &arrivals, false);
        let a_end = e1 + (2..=19).map(both).sum::<u64>();
        assert_eq!(off[0].finished, SimTime(a_end));
        assert_eq!(off[2].started, SimTime(a_end));
        // C's prefill shares the iteration with B's last decode (context 27).
        let c_ttft_off = a_end + mixed(8, 27) - x;
        assert_eq!(off[2].llm.unwrap().ttft, SimDuration(c_ttft_off));
        assert_eq!(off[1].finished, SimTime(a_end + mixed(8, 27)));
        assert_eq!(off_rep.preemptions, 0);

        // With it, at the end of the iteration in progress (T) B, the most recently
        // admitted of the two batch sequences, is preempted (2 tokens generated, folded
        // into a 10-token prompt) and C is prefilled next to A's decode (context 11).
        let (on, on_rep) = ranked_both_modes(cfg, &arrivals, true);
        assert_eq!(on_rep.preemptions, 1);
        let p: Vec<u32> = on.iter().map(|d| d.llm.unwrap().preemptions).collect();
        assert_eq!(p, vec![0, 1, 0]);
        let t_boundary = e1 + both(2);
        assert_eq!(on[2].started, SimTime(t_boundary));
        let c_ttft_on = t_boundary + mixed(8, 11) - x;
        assert_eq!(on[2].llm.unwrap().ttft, SimDuration(c_ttft_on));
        // The residue of the iteration in progress plus one iteration, against a wait
        // for A's 20 tokens: 12,391 ns against 122,481 ns.
        assert_eq!((c_ttft_on, c_ttft_off), (12_391, 122_481));
        // C decodes its second token with A (contexts 12 + 9), then B is readmitted
        // (it waits behind C, and never preempts A: equal ranks) and recomputes its
        // 10-token prompt next to A's decode (context 13).
        let c_end = t_boundary + mixed(8, 11) + decode(2, 21);
        assert_eq!(on[2].finished, SimTime(c_end));
        let b_back = c_end + mixed(10, 13);
        // Then both decode, B three tokens behind A, until A's 20th; B's last three alone.
        let a_end_on = b_back + (6..=19).map(|g| decode(2, 13 + 2 * g)).sum::<u64>();
        assert_eq!(on[0].finished, SimTime(a_end_on));
        let b_end_on = a_end_on + (17..=19).map(|g| decode(1, 8 + g)).sum::<u64>();
        assert_eq!(on[1].finished, SimTime(b_end_on));
        assert!(b_end_on > a_end + mixed(8, 27));
        // B's recomputation is charged to it as prefill: its share of its first prefill
        // (8 of 9 tokens) plus its share of the recompute (10 of 11).
        let b_prefill = |shares: &[u128]| SimDuration((shares.iter().sum::<u128>() >> 20) as u64);
        let first = share_of(SimDuration(mixed(8, 9)), 8, 9);
        let again = share_of(SimDuration(mixed(10, 13)), 10, 11);
        assert_eq!(off[1].llm.unwrap().prefill_busy, b_prefill(&[first]));
        assert_eq!(on[1].llm.unwrap().prefill_busy, b_prefill(&[first, again]));
        assert_eq!(
            on[1].started,
            SimTime(prefill(8, 1, 0)),
            "keeps its first admission"
        );
    }

    #[test]
    fn priority_preemption_frees_kv_blocks_for_the_head_and_never_for_equals() {
        // 46 blocks of 4 tokens, watermark 0. Batch A and B (rank 5, 60 + 30 tokens: 23
        // blocks each at the end, so both fit) decode; C (rank 0, 64-token prompt: 16
        // blocks) arrives during B's prefill and finds 14 free at the next boundary.
        // One preemption (B, the most recently admitted) frees enough.
        let cfg = ReplicaConfig {
            block_size: 4,
            watermark: 0.0,
            ..ReplicaConfig::defaults(46)
        };
        let e0 = prefill(60, 1, 0);
        let arrivals = |rank_c: u64| {
            [
                (0, req(60, 30), 5),
                (0, req(60, 30), 5),
                (e0 + 50, req(64, 2), rank_c),
            ]
        };
        let (on, rep) = ranked_both_modes(cfg.clone(), &arrivals(0), true);
        assert_eq!(rep.preemptions, 1);
        let p: Vec<u32> = on.iter().map(|d| d.llm.unwrap().preemptions).collect();
        assert_eq!(p, vec![0, 1, 0]);
        assert!(on[2].finished < on[0].finished);
        // Equal rank: C never preempts (the run is the one without the key).
        let (eq, eq_rep) = ranked_both_modes(cfg.clone(), &arrivals(5), true);
        assert_eq!(eq_rep.preemptions, 0);
        assert_eq!(
            (eq, eq_rep),
            ranked_both_modes(cfg.clone(), &arrivals(5), false)
        );
        // A head that cannot fit even with every worse sequence gone still preempts
        // them (as vLLM V0 does) but no more: D (rank 0, 156-token prompt, 39 blocks)
        // waits for A (rank 0) to finish; B (rank 5) is preempted once.
        let big = [
            (0, req(60, 30), 0),
            (0, req(60, 30), 5),
            (e0 + 50, req(156, 2), 0),
        ];
        let (d, rep) = ranked_both_modes(cfg, &big, true);
        let p: Vec<u32> = d.iter().map(|d| d.llm.unwrap().preemptions).collect();
        assert_eq!(p, vec![0, 1, 0]);
        assert_eq!(rep.preemptions, 1);
        assert!(d[2].started >= d[0].finished, "D waits for A");
    }

    #[test]
    fn the_watermark_holds_a_request_that_would_otherwise_be_admitted() {
        // 100 blocks of 4 tokens. A (300-token prompt, 75 blocks) starts alone at 0;
        // B (64 tokens, 16 blocks) arrives during A's prefill. At the end of that
        // iteration A's first decode token takes block 76: 24 blocks are free.
        // Watermark 0.1 keeps 10 of them: room 14 < 16, so B waits, and keeps waiting
        // as A grows (A ends holding ceil(349 / 4) = 88 blocks), until A finishes and
        // the empty replica waives the watermark. Watermark 0.08 keeps 8: room 16,
        // admitted, as with no watermark.
        let case = |watermark| {
            let cfg = ReplicaConfig {
                block_size: 4,
                watermark,
                ..ReplicaConfig::defaults(100)
            };
            both_modes(cfg, &[(0, req(300, 50)), (1, req(64, 2))])
        };
        let pre_a = prefill(300, 1, 0);
        let a_alone: u64 = pre_a + (1..=49).map(|j| decode(1, 300 + j)).sum::<u64>();
        let (held, _) = case(0.1);
        assert_eq!(held[0].finished, SimTime(a_alone), "A runs alone");
        assert_eq!(held[1].started, held[0].finished, "B waits for A");
        assert_eq!(held[1].queue_wait(), SimDuration(a_alone - 1));
        for w in [0.08, 0.0] {
            let (admitted, _) = case(w);
            assert_eq!(admitted[1].started, SimTime(pre_a), "watermark {w}");
            assert!(
                admitted[0].finished > SimTime(a_alone),
                "A now shares iterations"
            );
        }
    }

    #[test]
    fn oversized_requests_are_refused_as_failed_hops_not_stuck() {
        // 4 blocks of 4 tokens: 16 tokens of KV. A request needs input + output - 1
        // (the last token is never written): 10 + 8 - 1 = 17 is refused, 10 + 7 - 1 =
        // 16 fits exactly and is served.
        let cfg = ReplicaConfig {
            block_size: 4,
            ..ReplicaConfig::defaults(4)
        };
        let (done, rep) = run(cfg, &[(0, req(10, 8)), (0, req(4, 2)), (0, req(10, 7))]);
        assert_eq!(rep.rejected, 1);
        assert_eq!(rep.finished, 2);
        assert_eq!(
            done[0].refused,
            Some(Refused::KvCache {
                capacity_tokens: 16
            })
        );
        assert_eq!((done[0].busy, done[0].usd), (SimDuration::ZERO, 0.0));
        assert_eq!(done[0].finished, SimTime(0));
        // Alone on the replica (from t = 0), the small one takes its solo time.
        assert_eq!(done[1].refused, None);
        assert_eq!(done[1].busy, SimDuration(prefill(4, 1, 0) + decode(1, 5)));
        assert_eq!(done[2].refused, None);
        assert!(done[2].busy > SimDuration::ZERO && done[2].finished > done[1].finished);

        // Without chunked prefill a prompt must fit one iteration's budget: 60 + 5 - 1
        // = 64 tokens fit a budget of 64, 60 + 6 - 1 = 65 do not.
        let cfg = ReplicaConfig {
            chunked_prefill: false,
            max_batched_tokens: 64,
            max_num_seqs: 4,
            ..ReplicaConfig::defaults(1000)
        };
        let (done, rep) = run(cfg, &[(0, req(60, 5)), (0, req(60, 6))]);
        assert_eq!(done[0].refused, None);
        assert!(done[0].busy > SimDuration::ZERO);
        assert_eq!(done[1].refused, Some(Refused::TokenBudget { budget: 64 }));
        assert_eq!((rep.rejected, rep.finished), (1, 1));
    }

    #[test]
    fn second_request_with_the_same_block_hashes_hits_the_prefix_cache() {
        let mooncake = |input| LlmRequest {
            block_hashes: Some(vec![11, 12, 13].into()),
            hash_block_tokens: 512,
            itl_group: None,
            ..req(input, 4)
        };
        let (done, rep) = both_modes(
            ReplicaConfig::new(1000).unwrap(),
            &[(0, mooncake(1100)), (10_000_000, mooncake(1100))],
        );
        assert_eq!(done[0].llm.unwrap().cached_tokens, 0);
        // 68 full blocks of 16 tokens; at least one token is always computed.
        assert_eq!(done[1].llm.unwrap().cached_tokens, 68 * 16);
        assert_eq!(
            done[1].llm.unwrap().ttft,
            SimDuration(prefill(1100 - 1088, 1, 1088))
        );
        assert_eq!(rep.cached_tokens, 1088);
        assert_eq!(rep.prompt_tokens, 2200);
    }

    #[test]
    fn room_for_a_request_counts_the_blocks_its_prefix_cache_holds() {
        // 16 blocks of 16 tokens. A (a 160-token shared prefix, 161-token prompt) runs
        // and holds 11 blocks, 10 of them its prefix's, cached. B, with A's prefix,
        // needs 1 new block of the 5 free: room (and the replica admits it at once);
        // the same prompt with another prefix, or judged without prefix ids, needs 11.
        let cfg = ReplicaConfig {
            watermark: 0.0,
            ..ReplicaConfig::defaults(16)
        };
        let shared = |group| LlmRequest {
            shared_prefix_tokens: 160,
            prefix_group: group,
            ..req(161, 40)
        };
        let mut r =
            Replica::new(cfg.clone(), Arc::new(LinearPerf), 3.6).unwrap_or_else(|e| panic!("{e}"));
        r.submit(SimTime(0), JobId(0), &shared(7));
        // The prefill iteration ends: A's prefix blocks are computed and cached.
        let Some((t, _)) = r.take_wake() else {
            panic!("A runs")
        };
        r.advance(t);
        assert_eq!(r.kv_used_blocks(), 11);
        let ids = |q: &LlmRequest| {
            let mut v = Vec::new();
            prefix_block_ids(q, q.input_tokens, cfg.block_size, &mut v);
            v
        };
        let b = shared(7);
        assert_eq!(ids(&b).len(), 10);
        assert!(r.has_room_for(b.input_tokens, &ids(&b)));
        assert!(!r.has_room_for(b.input_tokens, &[]));
        let other = shared(8);
        assert!(!r.has_room_for(other.input_tokens, &ids(&other)));
        // The replica's own admission agrees: B joins A at the next iteration, on
        // 10 cached blocks, long before A ends.
        r.submit(t, JobId(1), &b);
        let mut done = Vec::new();
        let mut together = false;
        while let Some((w, _)) = r.take_wake() {
            r.advance(w);
            r.check_invariants().unwrap_or_else(|e| panic!("{e}"));
            together |= r.running_len() == 2;
            r.drain_done(&mut done);
        }
        assert!(together);
        done.sort_by_key(|d| d.id);
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].llm.map(|l| l.cached_tokens), Some(160));
        assert!(done[1].started < done[0].finished);
    }

    #[test]
    fn prefix_cache_evicts_least_recently_used_tail_first() {
        let shared = |group, at| {
            (
                at,
                LlmRequest {
                    shared_prefix_tokens: 160,
                    prefix_group: group,
                    ..req(161, 1)
                },
            )
        };
        // 20 blocks: X leaves 10 cached blocks; Y needs 11, so it evicts one of X's,
        // the tail one (released first); Z with X's prefix still hits 9 blocks.
        let cfg = ReplicaConfig {
            watermark: 0.0,
            ..ReplicaConfig::defaults(20)
        };
        let (done, _) = both_modes(
            cfg,
            &[shared(1, 0), shared(2, 10_000_000), shared(1, 20_000_000)],
        );
        assert_eq!(done[1].llm.unwrap().cached_tokens, 0);
        assert_eq!(done[2].llm.unwrap().cached_tokens, 9 * 16);
    }

    #[test]
    fn config_validation_explains_itself() {
        assert!(ReplicaConfig::new(0).is_err());
        let e = ReplicaConfig {
            max_batched_tokens: 8,
            max_num_seqs: 16,
            ..ReplicaConfig::defaults(10)
        }
        .validated()
        .unwrap_err();
        assert!(e.contains("max_batched_tokens"), "{e}");
        assert!(
            ReplicaConfig {
                watermark: 1.0,
                ..ReplicaConfig::defaults(10)
            }
            .validated()
            .is_err()
        );
    }
}
