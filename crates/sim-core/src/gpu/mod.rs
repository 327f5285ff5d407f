//! The GPU data plane: model and GPU profiles, performance models, and the replica
//! (continuous batching, paged KV cache, prefix caching) that serves LLM hops.
//!
//! Interfaces fixed here so that profiles/performance models and the replica can be
//! built independently:
//! - [`PerfModel`]: how long one iteration of a replica takes, given its shape.
//! - [`crate::station::Work::Llm`] carrying an [`LlmRequest`]: what an LLM hop asks for.

pub mod gpu_station;
pub mod kv;
pub mod perf;
pub mod profiles;
pub mod replica;

use crate::time::SimDuration;

/// What one iteration (one forward pass) of a replica computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IterationShape {
    /// New prompt tokens prefilled in this iteration (all prefill chunks together).
    pub prefill_tokens: u64,
    /// Sequences that have a prefill chunk in this iteration.
    pub prefill_seqs: u32,
    /// Tokens already in the KV cache that the prefill chunks attend to (earlier chunks,
    /// cached prefixes).
    pub prefill_context_tokens: u64,
    /// Sequences producing one output token in this iteration.
    pub decode_seqs: u32,
    /// Sum over decoding sequences of their context length (KV tokens read).
    pub decode_context_tokens: u64,
}

/// Iteration time of a replica (model x GPU x tensor parallelism).
pub trait PerfModel: Send + Sync + std::fmt::Debug {
    /// Wall time of one iteration with this shape.
    fn iteration_time(&self, shape: &IterationShape) -> SimDuration;
    /// Short name for reports, e.g. "roofline" or "calibrated".
    fn name(&self) -> &str;
}

/// What an LLM hop asks of a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlmRequest {
    /// Prompt tokens, including any shared prefix.
    pub input_tokens: u32,
    /// Tokens to generate (at least 1).
    pub output_tokens: u32,
    /// Leading prompt tokens shared by every request of `prefix_group` (a stable system
    /// prompt); reusable through the prefix cache.
    pub shared_prefix_tokens: u32,
    /// Identifies the shared prefix (a stable hash of e.g. class and role).
    pub prefix_group: u64,
    /// Explicit prefix-block hashes (as Mooncake traces carry), one per
    /// `hash_block_tokens` tokens of the prompt. Takes precedence over
    /// `shared_prefix_tokens` when present.
    pub block_hashes: Option<std::sync::Arc<[u64]>>,
    pub hash_block_tokens: u32,
    /// Where the request's inter-token gaps are reported
    /// ([`crate::station::TokenGaps::group`]); `None`: not recorded.
    pub itl_group: Option<u32>,
}

/// Timings of a finished LLM hop (GPU replica or paid API), reported with
/// [`crate::station::HopDone`]. A paid-API call reports only `ttft` and `tpot` (its
/// drawn values); the rest stays zero.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LlmTimings {
    /// Submission to first output token.
    pub ttft: SimDuration,
    /// Mean time per output token after the first.
    pub tpot: SimDuration,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: u32,
    /// Times the sequence was preempted (and recomputed).
    pub preemptions: u32,
    /// The part of the hop's busy time spent prefilling (its share of the iterations in
    /// which it had a prefill chunk: the prompt, and any recomputation after preemption).
    pub prefill_busy: SimDuration,
}
