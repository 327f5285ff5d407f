//! Trace reading speed: rows per second on one core.
//!
//! - `traces/read_azure_conv`: parse the Azure 2023 conversation trace (19,366 rows:
//!   timestamp parsing, integer fields) with the streaming reader.
//! - `traces/replay_azure_conv`: the same through `replay_requests` at 2x rate with
//!   50% deterministic sampling (read + transform).
//! - `traces/read_mooncake`: the Mooncake conversation trace (12,031 JSON lines with
//!   prefix-block hash lists).
//! - `traces/run_azure_conv_streamed` and `.._held`: the conversation trace replayed in
//!   a whole simulation run (one-hop workflows on an abstract 64-server pool, 1 ms
//!   each), its rows read from the file as the run advances or held in memory: rows
//!   replayed per second, simulation included.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use traces::{ReadOptions, ReplayOptions, RequestReader, replay_requests};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../traces/data")
        .join(rel)
}

fn read_all(path: &Path) -> (u64, u64) {
    let mut rows = 0u64;
    let mut tokens = 0u64;
    for r in RequestReader::open(path, &ReadOptions::default()).expect("open trace") {
        let r = r.expect("valid row");
        rows += 1;
        tokens += r.input_tokens as u64 + r.output_tokens as u64;
    }
    (rows, tokens)
}

fn traces(c: &mut Criterion) {
    let conv = data("azure-llm-2023/AzureLLMInferenceTrace_conv.csv");
    let mooncake = data("mooncake-fast25/conversation_trace.jsonl");
    let conv_rows = read_all(&conv).0;
    let mooncake_rows = read_all(&mooncake).0;
    let mut g = c.benchmark_group("traces");
    g.throughput(Throughput::Elements(conv_rows));
    g.bench_function("read_azure_conv", |b| b.iter(|| black_box(read_all(&conv))));
    let opts = ReplayOptions {
        rate: 2.0,
        sample_fraction: 0.5,
        sample_seed: 1,
        ..ReplayOptions::default()
    };
    g.bench_function("replay_azure_conv", |b| {
        b.iter(|| {
            let replay = replay_requests(&conv, &ReadOptions::default(), &opts).expect("open");
            let mut last = 0u64;
            for r in replay {
                last = r.expect("valid row").arrival_ns;
            }
            black_box(last)
        })
    });
    g.throughput(Throughput::Elements(mooncake_rows));
    g.bench_function("read_mooncake", |b| {
        b.iter(|| black_box(read_all(&mooncake)))
    });
    g.throughput(Throughput::Elements(conv_rows));
    for stream in [true, false] {
        let text = format!(
            r#"
[simulation]
horizon = "2h"
drain = true
[pools.fast]
servers = 64
service = {{ dist = "constant", value = "1ms" }}
[classes.t]
arrival = {{ process = "trace", file = {:?}, stream = {stream} }}
hops = [{{ pool = "fast" }}]
"#,
            conv.display().to_string()
        );
        let loaded = factorysim::parse_scenario("bench.toml", &text, &[]).expect("scenario");
        let name = if stream {
            "run_azure_conv_streamed"
        } else {
            "run_azure_conv_held"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = factorysim::simulate(&loaded.scenario, None);
                assert_eq!(r.classes[0].completed, conv_rows);
                black_box(r.events)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, traces);
criterion_main!(benches);
