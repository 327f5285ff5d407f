//! GPU replica speed: simulated iterations per second on one core.
//!
//! `replica/decode64`: one replica kept at 64 running sequences (closed loop: each
//! finished request is replaced at once) of 128-token prompts and 512-1016-token
//! outputs, 512 requests in all: decode-heavy continuous batching with a steady churn
//! of arrivals and departures.
//! `replica/batch64`: 64 identical requests (128-token prompts, 1024 outputs) decoded
//! together to the end: the best case for decode skipping.
//! Each runs with decode skipping on (`skip`) and off (`step`); throughput is in
//! simulated iterations. Requests report their inter-token gaps (two groups).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sim_core::gpu::gpu_station::GpuPoolStation;
use sim_core::gpu::replica::ReplicaConfig;
use sim_core::gpu::{IterationShape, LlmRequest, PerfModel};
use sim_core::station::{HopJob, JobId, Station, StationOutput, Work};
use sim_core::{SimDuration, SimTime};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::sync::Arc;

/// A linear iteration-time model of roughly an 8B model on one GPU.
#[derive(Debug)]
struct LinearPerf;
impl PerfModel for LinearPerf {
    fn iteration_time(&self, s: &IterationShape) -> SimDuration {
        SimDuration(
            6_000_000
                + 60 * s.prefill_tokens
                + 2 * s.prefill_context_tokens
                + 15_000 * s.decode_seqs as u64
                + 20 * s.decode_context_tokens,
        )
    }
    fn name(&self) -> &str {
        "linear"
    }
}

const CONCURRENCY: u64 = 64;
const REQUESTS: u64 = 512;

fn output_tokens(i: u64, refill: bool) -> u32 {
    if refill {
        512 + (i * 37 % 64) as u32 * 8
    } else {
        1024
    }
}

fn request(i: u64, refill: bool) -> Work {
    Work::Llm(Box::new(LlmRequest {
        input_tokens: 128,
        output_tokens: output_tokens(i, refill),
        shared_prefix_tokens: 64,
        prefix_group: 1,
        block_hashes: None,
        hash_block_tokens: 0,
        // Two classes' requests interleaved: inter-token gaps are recorded per group.
        itl_group: Some((i % 2) as u32),
    }))
}

/// Runs the closed loop (or, without `refill`, one batch) to the end; returns the
/// iterations simulated.
fn decode64(skip: bool, refill: bool) -> u64 {
    let cfg = ReplicaConfig {
        decode_skipping: skip,
        ..ReplicaConfig::defaults(40_000)
    };
    let mut st = GpuPoolStation::new("bench", 1, cfg, Arc::new(LinearPerf), 2.0)
        .unwrap_or_else(|e| panic!("bench pool: {e}"));
    let mut out = StationOutput::default();
    let mut heap: BinaryHeap<Reverse<(SimTime, u64, u64)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut submitted = 0u64;
    let mut finished = 0u64;
    let mut gaps = 0u64;
    for _ in 0..CONCURRENCY {
        st.submit(
            SimTime::ZERO,
            HopJob {
                id: JobId(submitted),
                work: request(submitted, refill),
            },
            &mut out,
        );
        submitted += 1;
    }
    let mut now = SimTime::ZERO;
    loop {
        for (t, token) in out.wakeups.drain(..) {
            seq += 1;
            heap.push(Reverse((t, seq, token)));
        }
        let replace = out.done.len() as u64;
        finished += replace;
        out.done.clear();
        gaps += out.gaps.drain(..).map(|g| g.count).sum::<u64>();
        for _ in 0..replace {
            if refill && submitted < REQUESTS {
                st.submit(
                    now,
                    HopJob {
                        id: JobId(submitted),
                        work: request(submitted, refill),
                    },
                    &mut out,
                );
                submitted += 1;
            }
        }
        if !out.wakeups.is_empty() || !out.done.is_empty() {
            continue;
        }
        let Some(Reverse((t, _, token))) = heap.pop() else {
            break;
        };
        now = t;
        st.wake(now, token, &mut out);
    }
    assert_eq!(finished, submitted);
    // Every output token after a request's first ends one gap.
    let mut rest = Vec::new();
    st.drain_token_gaps(&mut rest);
    gaps += rest.iter().map(|g| g.count).sum::<u64>();
    let outputs: u64 = (0..submitted)
        .map(|i| output_tokens(i, refill) as u64 - 1)
        .sum();
    assert_eq!(gaps, outputs);
    st.gpu_report(now).map_or(0, |r| r.iterations)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("replica");
    g.sample_size(10);
    for (name, refill) in [("decode64", true), ("batch64", false)] {
        let iterations = decode64(true, refill);
        assert_eq!(iterations, decode64(false, refill));
        g.throughput(Throughput::Elements(iterations));
        g.bench_function(format!("{name}/skip"), |b| {
            b.iter(|| black_box(decode64(true, refill)))
        });
        g.bench_function(format!("{name}/step"), |b| {
            b.iter(|| black_box(decode64(false, refill)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
