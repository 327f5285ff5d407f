//! Engine speed: events per second on one core.
//!
//! - `event_queue/hold`: the classic "hold" model of the future-event list: pop the
//!   earliest event, push one a random interval later, with 1,000 events pending.
//! - `mmc/run`: the full simulator on an M/M/4 station at rho = 0.85 (arrival, hop
//!   submission, service completion, statistics), reported per processed event.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::RngExt;
use sim_core::{EventQueue, RunOptions, ScenarioSpec, SimTime, StreamFactory};
use std::hint::black_box;

fn hold(c: &mut Criterion) {
    let mut g = c.benchmark_group("event_queue");
    let ops: u64 = 1_000_000;
    g.throughput(Throughput::Elements(ops));
    g.bench_function("hold", |b| {
        b.iter(|| {
            let mut rng = StreamFactory::new(1).stream("bench");
            let mut q: EventQueue<u32> = EventQueue::with_capacity(1024);
            for i in 0..1000u32 {
                q.push(SimTime(rng.random_range(0..1_000_000)), i);
            }
            for _ in 0..ops {
                let (t, e) = q.pop().unwrap_or((SimTime(0), 0));
                q.push(SimTime(t.0 + rng.random_range(0..1_000_000)), e);
            }
            black_box(q.len())
        })
    });
    g.finish();
}

const MMC: &str = r#"
[simulation]
horizon = "100000s"
[pools.q]
servers = 4
service = { dist = "exponential", mean = "1s" }
[classes.jobs]
arrival = { process = "poisson", rate = 3.4 }
hops = [{ pool = "q" }]
"#;

fn mmc(c: &mut Criterion) {
    let spec: ScenarioSpec = toml::from_str(MMC).unwrap_or_else(|e| panic!("bench scenario: {e}"));
    let sc = spec
        .validate()
        .unwrap_or_else(|e| panic!("bench scenario: {e}"));
    let events = sim_core::run(&sc, RunOptions::default()).events;
    let mut g = c.benchmark_group("mmc");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10);
    g.bench_function("run", |b| {
        b.iter(|| black_box(sim_core::run(&sc, RunOptions::default()).events))
    });
    g.finish();
}

criterion_group!(benches, hold, mmc);
criterion_main!(benches);
