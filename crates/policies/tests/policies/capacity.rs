//! Capacity policies inside the simulator: the autoscaler's signals (queue depth,
//! tokens in flight, p99 TTFT) with boot delay, scheduled pre-warming, GPU pool
//! autoscaling with drain, and spot capacity with preemptions. Each check would fail if
//! the mechanism were wrong: exact trajectories on constructed cases, conservation, and
//! a Poisson interval on preemption counts.

use super::{invalid, scenario};
use policies::Standard;
use sim_core::gpu::gpu_station::{GpuPoolReport, ReplicaPicker};
use sim_core::metrics::{HopStatus, RunResult, SpotReclaim};
use sim_core::policy::{
    AutoscaleSpec, Autoscaler, BootTime, DisciplineSpec, PolicyFactory, QueueDiscipline,
    RoutingSpec, ScaleObservation, TierRouter,
};
use sim_core::{RunOptions, ScenarioSpec, SimDuration};
use std::sync::{Arc, Mutex};

/// One autoscaler decision: when, what it saw, what it asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Decision {
    t_s: f64,
    running: u32,
    booting: u32,
    tokens: u64,
    p99_s: Option<f64>,
    oldest_s: Option<f64>,
    target: u32,
}

type Log = Arc<Mutex<Vec<Decision>>>;

const NS: u64 = 1_000_000_000;

/// `policies::Standard`, with every autoscaler decision logged.
struct Logging(Log);

struct LoggedScaler {
    inner: Box<dyn Autoscaler>,
    log: Log,
}

impl Autoscaler for LoggedScaler {
    fn target(&mut self, obs: &ScaleObservation) -> u32 {
        let target = self.inner.target(obs);
        if let Ok(mut log) = self.log.lock() {
            log.push(Decision {
                t_s: obs.now.as_secs_f64(),
                running: obs.running,
                booting: obs.booting,
                tokens: obs.tokens_in_flight,
                p99_s: obs.ttft_p99.map(SimDuration::as_secs_f64),
                oldest_s: obs.oldest_wait.map(SimDuration::as_secs_f64),
                target,
            });
        }
        target
    }
}

impl PolicyFactory for Logging {
    fn discipline(&self, spec: DisciplineSpec) -> Box<dyn QueueDiscipline> {
        Standard.discipline(spec)
    }
    fn router(&self, spec: RoutingSpec) -> Box<dyn TierRouter> {
        Standard.router(spec)
    }
    fn autoscaler(&self, spec: &AutoscaleSpec) -> Box<dyn Autoscaler> {
        Box::new(LoggedScaler {
            inner: Standard.autoscaler(spec),
            log: self.0.clone(),
        })
    }
    fn supports(&self, spec: DisciplineSpec) -> bool {
        Standard.supports(spec)
    }
    fn replica_picker(&self, name: &str) -> Option<Box<dyn ReplicaPicker>> {
        Standard.replica_picker(name)
    }
}

fn run_logged(text: &str) -> (RunResult, Vec<Decision>) {
    let sc = scenario(text);
    let log: Log = Arc::default();
    let factory = Logging(log.clone());
    let r = sim_core::run(
        &sc,
        RunOptions {
            policies: Some(&factory),
            ..Default::default()
        },
    );
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    (r, log)
}

/// As [`run_logged`], with the hop log too.
fn run_logged_hops(text: &str) -> (RunResult, Vec<Decision>, Vec<sim_core::metrics::HopRecord>) {
    let sc = scenario(text);
    let log: Log = Arc::default();
    let factory = Logging(log.clone());
    let mut hops = Vec::new();
    let r = sim_core::run(
        &sc,
        RunOptions {
            policies: Some(&factory),
            hop_log: Some(&mut hops),
            ..Default::default()
        },
    );
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    (r, log, hops)
}

#[test]
fn gpu_p99_ttft_signal_sees_first_tokens_before_the_answers_end() {
    // Answers of 3,000 tokens take far longer than the first token (tens of seconds
    // against well under one): the autoscaler's window holds each TTFT from the moment
    // the first token comes, so the first look at 10s already sees a p99 (it used to
    // see none until the first answer ended). At every look the p99 is exactly the
    // nearest-rank p99 of the TTFTs whose first token (start + prefill) came within
    // the window and of the requests still without one (at their wait so far: 16
    // sequences at most per replica make a queue), recomputed from the hop log.
    let text = r#"
[simulation]
horizon = "3m"
drain = true
[pools.g]
servers = 1
gpu = { model = "llama-3-8b", gpu = "h100-80gb", max_num_seqs = 16 }
autoscale = { metric = "p99_ttft", target = 0.05, window = "30s", min = 1, max = 3, boot = "20s", interval = "10s" }
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
[[classes.c.nodes]]
id = "a"
pool = "g"
input_tokens = { dist = "constant", value = 1500 }
output_tokens = { dist = "constant", value = 3000 }
"#;
    let (r, log, hops) = run_logged_hops(text);
    let c = &r.classes[0];
    assert_eq!(c.completed, c.arrived);
    let first_finish = hops.iter().map(|h| h.finished.0).min().expect("hops");
    assert!(first_finish > 20_000_000_000, "{first_finish}");
    assert_eq!(log[0].t_s, 10.0);
    assert!(log[0].p99_s.is_some(), "{:?}", log[0]);
    let window_ns = 30_000_000_000u64;
    let mut checked = 0;
    let mut waiting_seen = 0;
    for d in &log {
        let t = (d.t_s * 1e9).round() as u64;
        let mut ttfts: Vec<u64> = hops
            .iter()
            .map(|h| (h.started.0 + h.prefill.as_nanos(), h))
            .filter(|&(at, _)| at <= t && at + window_ns >= t)
            .map(|(at, h)| at - h.submitted.0)
            .collect();
        // Requests submitted and still without their first token count at their wait
        // so far.
        let queued: Vec<u64> = hops
            .iter()
            .filter(|h| h.submitted.0 <= t && h.started.0 + h.prefill.as_nanos() > t)
            .map(|h| t - h.submitted.0)
            .collect();
        waiting_seen += !queued.is_empty() as u32;
        ttfts.extend(queued);
        ttfts.sort_unstable();
        let want = (!ttfts.is_empty()).then(|| {
            let rank = (ttfts.len() * 99).div_ceil(100).max(1);
            ttfts[rank - 1] as f64 / 1e9
        });
        assert_eq!(d.p99_s, want, "{d:?}");
        checked += want.is_some() as u32;
    }
    assert!(checked >= 15, "{checked} looks with a p99");
    assert!(
        waiting_seen >= 3,
        "{waiting_seen} looks with requests waiting"
    );
    // The signal works: the pool grew.
    assert!(log.iter().any(|d| d.target > 1), "{log:?}");
}

#[test]
fn a_pool_scaled_to_zero_wakes_on_demand_and_pays_only_while_up() {
    // A cold pool (servers = 0, min = 0) and one closed-loop user (think 93s, 5s
    // hops): every hop waits for the next look (every 10s), a 30s boot, then its 5s.
    // By hand: arrivals at 93, 228, 358, 488, 618; the look after each (100, 230, ...)
    // wakes one server: activation, since nothing runs and a hop waits, so at least
    // one whatever the signal, and whatever the 2-minute cooldown (the wake-ups at
    // 230, 360, ... come 10s after a scale-down). The server is up 30s later, the hop
    // ends 5s after that, and the pool goes back to zero at the first look the
    // cooldown allows: 2 minutes after the wake-up (220, 350, 480, 610), as
    // `zero_after_idle = "0s"` asks for no idle time first.
    let text = r#"
[simulation]
horizon = "700s"
[pools.p]
servers = 0
usd_per_server_hour = 3.6
service = { dist = "constant", value = 5 }
autoscale = { target = 1.0, min = 0, max = 3, boot = "30s", interval = "10s", cooldown = "2m", zero_after_idle = "0s" }
[classes.c]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = 93 } }
hops = [{ pool = "p" }]
"#;
    let (r, log, hops) = run_logged_hops(text);
    let c = &r.classes[0];
    let got: Vec<(u64, u64, u64)> = hops
        .iter()
        .map(|h| (h.submitted.0 / NS, h.started.0 / NS, h.finished.0 / NS))
        .collect();
    assert_eq!(
        got,
        vec![
            (93, 130, 135),
            (228, 260, 265),
            (358, 390, 395),
            (488, 520, 525),
            (618, 650, 655)
        ]
    );
    assert_eq!((c.arrived, c.completed, c.failed), (5, 5, 0));
    let wakes: Vec<u32> = log
        .iter()
        .filter(|d| d.running + d.booting == 0 && d.target == 1)
        .map(|d| d.t_s as u32)
        .collect();
    assert_eq!(wakes, vec![100, 230, 360, 490, 620]);
    let sleeps: Vec<u32> = log
        .iter()
        .filter(|d| d.running == 1 && d.target == 0)
        .map(|d| d.t_s as u32)
        .collect();
    assert_eq!(sleeps, vec![220, 350, 480, 610]);
    // Paid from each boot start to its retirement (the last to the horizon): 4 x 120s
    // + 80s at $0.001/s; up 90s each time, the last 50s.
    let rep = &r.pool_reports[0];
    assert!((rep.usd_capacity - 0.56).abs() < 1e-9, "{rep:?}");
    assert!((rep.capacity_server_s - 410.0).abs() < 1e-9, "{rep:?}");
    assert!((rep.busy_server_s - 25.0).abs() < 1e-9, "{rep:?}");
    // Per-minute utilisation is over the servers up during the minute: 120-180s has
    // one up from 130 (50s) busy 5s; 180-240s up until 220, idle; 240-300s up from
    // 260, busy 5s. (Over the servers left at the minute's end it read 5/60, 0, 5/60.)
    let util: Vec<(u32, f64, u32)> = r
        .timeseries
        .iter()
        .take(5)
        .map(|row| {
            (
                row.t_s as u32,
                row.pools[0].utilization,
                row.pools[0].servers,
            )
        })
        .collect();
    let want = [
        (60, 0.0, 0),
        (120, 0.0, 0),
        (180, 0.1, 1),
        (240, 0.0, 0),
        (300, 0.125, 1),
    ];
    for (g, w) in util.iter().zip(&want) {
        assert!(
            g.0 == w.0 && (g.1 - w.1).abs() < 1e-12 && g.2 == w.2,
            "{util:?}"
        );
    }
    // With no cooldown and `zero_after_idle = "60s"` the last server stays until the
    // pool has been idle a minute: idle since its hop ended at 135, gone at the first
    // look after 195, 200; so the hop arriving at 228 finds it cold again, at 358 too
    // (idle since 265, gone at 330).
    let idle = text.replace(
        r#"cooldown = "2m", zero_after_idle = "0s""#,
        r#"zero_after_idle = "60s""#,
    );
    let (_, log, hops) = run_logged_hops(&idle);
    let sleeps: Vec<u32> = log
        .iter()
        .filter(|d| d.running == 1 && d.target == 0)
        .map(|d| d.t_s as u32)
        .collect();
    assert_eq!(sleeps, vec![200, 330, 460, 590]);
    let starts: Vec<u64> = hops.iter().map(|h| h.started.0 / NS).collect();
    assert_eq!(starts, vec![130, 260, 390, 520, 650]);
    // 90 seconds of idle time: the hop at 228 finds the server up (idle since 135,
    // 85 s at the look at 220).
    let warm = text.replace(
        r#"cooldown = "2m", zero_after_idle = "0s""#,
        r#"zero_after_idle = "90s""#,
    );
    let (_, _, hops) = run_logged_hops(&warm);
    let starts: Vec<u64> = hops.iter().map(|h| h.started.0 / NS).collect();
    assert_eq!(starts[..2], [130, 228]);
    // `activation = "on_arrival"`: a hop finding the pool at zero boots a server at
    // once, not at the next look. 93: boot, up 123, done 128. The look at 220 (the
    // cooldown ran from 93 to 213) sends it to zero; 221: boot, up 251, done 256.
    // 349: the server is still up (the cooldown from 221 holds it until 341, and the
    // next look is 350), so it starts at once; zero at 360. 447: boot, up 477, done
    // 482, zero at 570 (the cooldown from 447); 575: boot, up 605.
    let eager = text.replace(
        r#"zero_after_idle = "0s""#,
        r#"zero_after_idle = "0s", activation = "on_arrival""#,
    );
    let (_, log, hops) = run_logged_hops(&eager);
    let got: Vec<(u64, u64)> = hops
        .iter()
        .map(|h| (h.submitted.0 / NS, h.started.0 / NS))
        .collect();
    assert_eq!(
        got,
        vec![(93, 123), (221, 251), (349, 349), (447, 477), (575, 605)]
    );
    let wakes: Vec<u32> = log
        .iter()
        .filter(|d| d.running + d.booting == 0 && d.target == 1)
        .map(|d| d.t_s as u32)
        .collect();
    assert_eq!(wakes, vec![93, 221, 447, 575]);
}

#[test]
fn the_idle_clock_runs_from_the_last_hop_not_the_first_idle_look() {
    // A warm pool (min = 0) looked at every 10s, 2s hops, zero after 90s idle, one
    // user thinking 95s. 95: cold, woken at the look at 100, up 130, done 132. 227:
    // the server is still up (idle 88s at the look at 220), done 229. The pool has
    // been idle since 229, so it goes to zero at the first look 90s on, 320 (idle
    // since the first idle look, 140, would take it at 230, right after the hop).
    // 324: cold, woken at 330, up 360, done 362; 457: up (88s idle at 450), done 459;
    // zero at 550; 554: cold, woken at 560, up 590, done 592; 687: up (88s idle).
    let text = r#"
[simulation]
horizon = "700s"
[pools.p]
servers = 0
usd_per_server_hour = 3.6
service = { dist = "constant", value = 2 }
autoscale = { target = 1.0, min = 0, max = 1, boot = "30s", interval = "10s", zero_after_idle = "90s" }
[classes.c]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = 95 } }
hops = [{ pool = "p" }]
"#;
    let (_, log, hops) = run_logged_hops(text);
    let got: Vec<(u64, u64)> = hops
        .iter()
        .map(|h| (h.submitted.0 / NS, h.started.0 / NS))
        .collect();
    assert_eq!(
        got,
        vec![
            (95, 130),
            (227, 227),
            (324, 360),
            (457, 457),
            (554, 590),
            (687, 687)
        ]
    );
    let sleeps: Vec<u32> = log
        .iter()
        .filter(|d| d.running == 1 && d.target == 0)
        .map(|d| d.t_s as u32)
        .collect();
    assert_eq!(sleeps, vec![320, 550]);
}

#[test]
fn a_gpu_replica_cold_start_is_node_boot_plus_model_load() {
    // Without `boot`, a GPU pool's autoscaler and spot replacements take the replica's
    // cold start: the H100 profile's 5-minute node boot plus Llama-3-8B's 16.06 GB of
    // BF16 weights (8.03B parameters x 2 bytes) read at 2 GB/s: 8.03 s. With tp = 2
    // each GPU reads half.
    let gpu_pool = |tp: u32| {
        format!(
            r#"
[simulation]
horizon = "40m"
seed = 3
[pools.g]
servers = 1
usd_per_server_hour = 3.6
gpu = {{ model = "llama-3-8b", gpu = "h100-80gb", max_num_seqs = 8, tp = {tp}, model_load_gb_per_s = 2.0 }}
autoscale = {{ metric = "queue_depth", target = 8.0, min = 1, max = 4, cooldown = "1m", interval = "30s" }}
spot = {{ servers = 1, preemptions_per_hour = 1.0, usd_per_server_hour = 1.0 }}
[classes.c]
arrival = {{ process = "piecewise", step = "20m", rates = [6.0, 0.0] }}
[[classes.c.nodes]]
id = "a"
pool = "g"
input_tokens = {{ dist = "constant", value = 1500 }}
output_tokens = {{ dist = "constant", value = 400 }}
"#
        )
    };
    let weights = 2 * sim_core::gpu::profiles::ProfileCatalog::builtin()
        .model("llama-3-8b")
        .map(|m| m.weight_bytes() / 2)
        .unwrap_or(0);
    assert!((16.0e9..16.1e9).contains(&(weights as f64)), "{weights}");
    for (tp, load_ms) in [(1u64, 8_030u64), (2, 4_015)] {
        // Rounded to whole milliseconds.
        assert_eq!(load_ms, (weights / tp + 1_000_000) / 2_000_000, "tp {tp}");
        let sc = scenario(&gpu_pool(tp as u32));
        let p = &sc.pools[0];
        let g = p.gpu.as_ref().expect("a GPU pool");
        assert_eq!(g.node_boot, SimDuration::from_secs(300));
        assert_eq!(g.model_load, SimDuration::from_millis(load_ms), "tp {tp}");
        let cold = SimDuration::from_millis(300_000 + load_ms);
        assert_eq!(
            p.autoscale.as_ref().map(|a| a.boot().clone()),
            Some(BootTime::Fixed(cold))
        );
        assert_eq!(
            p.spot.as_ref().map(|s| s.boot.clone()),
            Some(BootTime::Fixed(cold))
        );
    }
    // The run pays each boot for exactly its cold start: paid - up replica-hours =
    // boots x (300 s + 8.03 s), on demand and on spot alike.
    let (r, log) = run_logged(&gpu_pool(1));
    let cap = gpu_report(&r).capacity.expect("an autoscaled pool");
    assert!(cap.boots >= 1, "{cap:?}");
    let booting_h = (cap.replica_hours - cap.running_replica_hours)
        + (cap.spot_replica_hours - cap.spot_running_replica_hours);
    assert!(
        (booting_h - cap.boots as f64 * 308.03 / 3600.0).abs() < 1e-9,
        "{booting_h} h booting for {} boots",
        cap.boots
    );
    // No replica the autoscaler asked for is up before its cold start is over.
    let first = log
        .iter()
        .find(|d| d.target > d.running + d.booting)
        .map(|d| d.t_s)
        .expect("a boot");
    assert!(log.iter().any(|d| d.t_s > first + 308.03 && d.running >= 2));
    for d in log.iter().filter(|d| d.t_s < first + 308.03) {
        assert!(d.running <= 1, "at {}: {d:?}", d.t_s);
    }
    // An explicit `boot` still wins, and a bad rate is refused by key.
    let explicit = gpu_pool(1).replace(r#"interval = "30s""#, r#"interval = "30s", boot = "2m""#);
    let sc = scenario(&explicit);
    assert_eq!(
        sc.pools[0].autoscale.as_ref().map(|a| a.boot().clone()),
        Some(BootTime::Fixed(SimDuration::from_secs(120)))
    );
    for bad in ["0.0", "-2.0", "nan", "0.0001"] {
        let text = gpu_pool(1).replace(
            "model_load_gb_per_s = 2.0",
            &format!("model_load_gb_per_s = {bad}"),
        );
        let e = invalid(&text).to_string();
        assert!(e.contains("pools.g.gpu.model_load_gb_per_s"), "{bad}: {e}");
        assert!(e.contains("at least 0.001 GB/s"), "{bad}: {e}");
    }
}

#[test]
fn drawn_boot_times_follow_their_distribution_per_boot() {
    // A pre-warm floor of 400 from t = 10 s starts 399 boots at once, each drawn from
    // uniform(60 s, 180 s): the autoscaler's looks (every second) see none up before
    // 70 s, all by 190 s, and in between Binomial(399, F) of them, F = (x - 60) / 120
    // at x seconds after the boots began (checked within 4.5 standard deviations at
    // each look, so a fixed boot, a shared draw or a wrong scale fails).
    let text = r#"
[simulation]
horizon = "250s"
seed = 11
[pools.p]
servers = 1
usd_per_server_hour = 3.6
service = { dist = "constant", value = 1 }
autoscale = { target = 1e9, min = 1, max = 400, interval = "1s", boot = { dist = "uniform", low = "60s", high = "180s" }, prewarm = [{ from = "10s", until = "1h", min = 400 }] }
[classes.c]
arrival = { process = "poisson", rate = 0.01 }
hops = [{ pool = "p" }]
"#;
    let (r, log) = run_logged(text);
    let at = |t: u32| {
        log.iter()
            .find(|d| d.t_s as u32 == t)
            .unwrap_or_else(|| panic!("no look at {t}s"))
    };
    assert_eq!((at(10).running, at(10).target), (1, 400));
    assert_eq!(at(11).booting, 399);
    assert_eq!(at(70).running, 1);
    assert_eq!((at(191).running, at(191).booting), (400, 0));
    let mut distinct = std::collections::BTreeSet::new();
    for t in 71..190u32 {
        let f = (f64::from(t - 10) - 60.0) / 120.0;
        let (mean, sd) = (399.0 * f, (399.0 * f * (1.0 - f)).sqrt());
        let up = f64::from(at(t).running - 1);
        assert!(
            (up - mean).abs() <= 4.5 * sd + 1.0,
            "at {t}s: {up} up, expected {mean:.1} +- {sd:.1}"
        );
        distinct.insert(at(t).running);
    }
    // Boots finish one by one, not in a block.
    assert!(distinct.len() > 100, "{} distinct counts", distinct.len());
    // Paid from each boot start ($0.001 a server-second): the 399 boots' booting
    // seconds are their draws, whose mean is 120 s (the sum's sd is 34.6 s x
    // sqrt(399) = 692 s).
    let rep = &r.pool_reports[0];
    let booting_s = rep.usd_capacity * 1000.0 - rep.capacity_server_s;
    assert!(
        (booting_s - 399.0 * 120.0).abs() < 4.5 * 692.0,
        "{booting_s} s booting"
    );
    // A bad distribution is refused naming the key and the parameter.
    let bad = text.replace(r#"low = "60s""#, r#"low = "-60s""#);
    let e = toml::from_str::<ScenarioSpec>(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("boot"), "{e}");
}

#[test]
fn a_cold_gpu_pool_parks_its_requests_until_a_replica_boots() {
    // A GPU pool with no replica at the start: its requests wait in the pool's queue
    // (they used to be refused with "no replica") until the autoscaler's replica is
    // up, then take exactly the solo time; p99_ttft wakes it although the first
    // request's wait (0.5s at the look) is far below the 5s target.
    let text = r#"
[simulation]
horizon = "15s"
drain = true
[pools.g]
servers = 0
gpu = { model = "llama-3-8b", gpu = "h100-80gb" }
autoscale = { metric = "p99_ttft", target = 5.0, min = 0, max = 2, boot = "60s", interval = "10s" }
[classes.c]
arrival = { process = "closed", users = 1, think = { dist = "constant", value = 9.5 } }
[[classes.c.nodes]]
id = "a"
pool = "g"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 100 }
"#;
    let (r, log, hops) = run_logged_hops(text);
    let c = &r.classes[0];
    assert_eq!((c.arrived, c.completed, c.failed), (1, 1, 0));
    let h = &hops[0];
    assert_eq!(
        (h.submitted.0, h.started.0),
        (9_500_000_000, 70_000_000_000)
    );
    let wake = log.iter().find(|d| d.target > 0).map(|d| (d.t_s, d.p99_s));
    assert_eq!(wake, Some((10.0, Some(0.5))));
    // Once up, exactly the time the same request takes on a warm replica.
    let warm = text.replace("servers = 0", "servers = 1").replace(
        r#"autoscale = { metric = "p99_ttft", target = 5.0, min = 0, max = 2, boot = "60s", interval = "10s" }"#,
        "",
    );
    let (_, _, warm_hops) = run_logged_hops(&warm);
    let w = &warm_hops[0];
    assert_eq!((w.submitted.0, w.started.0), (9_500_000_000, 9_500_000_000));
    assert_eq!(h.finished.0 - h.started.0, w.finished.0 - w.started.0);
    assert!(w.finished.0 - w.started.0 > 100_000_000, "{w:?}");
}

fn run(text: &str) -> RunResult {
    sim_core::run(
        &scenario(text),
        RunOptions {
            policies: Some(&Standard),
            ..Default::default()
        },
    )
}

fn gpu_report(r: &RunResult) -> GpuPoolReport {
    r.gpu_reports[0].clone().expect("a gpu pool")
}

/// (t, running, booting, tokens, target) rows of the log.
fn rows(log: &[Decision]) -> Vec<(u32, u32, u32, u64, u32)> {
    log.iter()
        .map(|d| (d.t_s as u32, d.running, d.booting, d.tokens, d.target))
        .collect()
}

#[test]
fn tokens_in_flight_trajectory_with_boot_delay_and_drain() {
    // Ten closed-loop users arrive together at 295s (think 295s), each with one hop of
    // 1,000 prompt tokens taking exactly 100s on an abstract pool of one server. Target
    // 2,500 tokens per server; ticks every 30s; a new server boots in 60s.
    let text = r#"
[simulation]
horizon = "11m"
[pools.p]
servers = 1
service = { dist = "constant", value = 100 }
autoscale = { metric = "tokens_in_flight", target = 2500.0, min = 1, max = 8, boot = "60s", interval = "30s" }
[classes.c]
arrival = { process = "closed", users = 10, think = { dist = "constant", value = 295 } }
[[classes.c.nodes]]
id = "a"
pool = "p"
input_tokens = { dist = "constant", value = 1000 }
output_tokens = { dist = "constant", value = 0 }
"#;
    let (r, log) = run_logged(text);
    // Hand-derived: 10,000 tokens at the 300s tick ask for 4 servers; three boot until
    // 360s. U1 (295-395) leaves 9,000; U2-U4 (360-460) leave 6,000: 3 servers, the
    // fourth drains with U5 (395-495); 5,000 at 510s ask for 2, the third drains with
    // U6-U8 (460-560); 2,000 at 570s ask for 1, the second drains with U9/U10
    // (560-660). `running` never counts a draining server.
    let mut want: Vec<(u32, u32, u32, u64, u32)> = (1..=9).map(|k| (30 * k, 1, 0, 0, 1)).collect();
    want.extend([
        (300, 1, 0, 10_000, 4),
        (330, 1, 3, 10_000, 4),
        (360, 4, 0, 10_000, 4),
        (390, 4, 0, 10_000, 4),
        (420, 4, 0, 9_000, 4),
        (450, 4, 0, 9_000, 4),
        (480, 4, 0, 6_000, 3),
        (510, 3, 0, 5_000, 2),
        (540, 2, 0, 5_000, 2),
        (570, 2, 0, 2_000, 1),
        (600, 1, 0, 2_000, 1),
        (630, 1, 0, 2_000, 1),
        (660, 1, 0, 0, 1),
    ]);
    assert_eq!(rows(&log), want);
    // Paid from boot start (300s) to drain end: 3 x 60s booting; the servers ran
    // 360-495, 360-560 and 360-660, and the first server the whole 660s.
    let rep = &r.pool_reports[0];
    let running_s = 660.0 + (495.0 - 360.0) + (560.0 - 360.0) + (660.0 - 360.0);
    assert!((rep.capacity_server_s - running_s).abs() < 1e-6, "{rep:?}");
}

#[test]
fn p99_ttft_trajectory_with_boot_delay() {
    // Four closed-loop users (think 1s) on one server with 30s constant service: the
    // queue builds. TTFT on an abstract pool is the wait for service, seen when the
    // service starts; a hop still queued at a tick counts at its wait so far. Target
    // p99 5s, window 60s, ticks every 30s, boot 45s, max 4.
    let text = r#"
[simulation]
horizon = "270s"
[pools.p]
servers = 1
service = { dist = "constant", value = 30 }
autoscale = { metric = "p99_ttft", target = 5.0, window = "60s", min = 1, max = 4, boot = "45s", interval = "30s" }
[classes.c]
arrival = { process = "closed", users = 4, think = { dist = "constant", value = 1 } }
hops = [{ pool = "p" }]
"#;
    let (_, log) = run_logged(text);
    let got: Vec<(u32, u32, u32, Option<f64>, u32)> = log
        .iter()
        .map(|d| (d.t_s as u32, d.running, d.booting, d.p99_s, d.target))
        .collect();
    // By hand (nearest-rank p99 of the waits started in the window and the ages of
    // those still queued): A, B, C, D arrive at 1, A starts (wait 0).
    // 30s: {A 0; B, C, D queued 29} -> 29 > 5: max(1 + 1, ceil(1 x 29 / 5)) = 6,
    //      clamped to 4: boot 3 (up at 75).
    // B starts at 31 (30), C at 61 (60); A2 arrives at 32, B2 at 62.
    // 60s: {0, 30; C, D queued 59, A2 28} -> 59, at max.
    // 75s: three servers up start D (74), A2 (43), B2 (13); C2 at 92, D2-B3 at 106 (0).
    // 90s and 120s: p99 74 (D's wait), at max.
    // 150s: window 90-150 holds only zero waits, nothing queued: down to 3; C3's
    //      server drains at 153, so C4 (154) waits for 167 (13), and of D4, A5, B5
    //      (168) two start, one queues until C4 ends at 197 (29).
    // 180s: {0 x4, 13, 0, 0; one queued 12} -> 13 > 5: max(3 + 1, ceil(3 x 13 / 5)) = 8,
    //      clamped: 4, boot 1 (up at 225).
    // 210s: 29 (queued at 168, started at 197), at max; of the two arriving at 199 one
    //      starts, one waits for the server up at 225 (26).
    // 240s: 29; 270s: 26.
    // (When a queued hop counted only once it started, every decision came a tick
    // later: the first scale-up at 60s, not 30s.)
    let want = vec![
        (30, 1, 0, Some(29.0), 4),
        (60, 1, 3, Some(59.0), 4),
        (90, 4, 0, Some(74.0), 4),
        (120, 4, 0, Some(74.0), 4),
        (150, 4, 0, Some(0.0), 3),
        (180, 3, 0, Some(13.0), 4),
        (210, 3, 1, Some(29.0), 4),
        (240, 4, 0, Some(29.0), 4),
        (270, 4, 0, Some(26.0), 4),
    ];
    assert_eq!(got, want);
}

#[test]
fn queue_age_trajectory_scales_on_the_oldest_wait() {
    // The p99_ttft case above on `queue_age` (target 5s): at 30s B, C and D have waited
    // 29s since 1s: max(1 + 1, ceil(1 x 29 / 5)) = 6, clamped to 4 (three boot, up at
    // 75); at 60s C and D still wait, 59s. From 75s the four users keep the four
    // servers busy (each idle only in the second a user thinks, between ticks), nothing
    // waits, so the count holds at 4 (p99_ttft went down at 150s on a window of zero
    // waits).
    let text = r#"
[simulation]
horizon = "270s"
[pools.p]
servers = 1
service = { dist = "constant", value = 30 }
autoscale = { metric = "queue_age", target = 5.0, min = 1, max = 4, boot = "45s", interval = "30s" }
[classes.c]
arrival = { process = "closed", users = 4, think = { dist = "constant", value = 1 } }
hops = [{ pool = "p" }]
"#;
    let rows_of = |log: &[Decision]| -> Vec<(u32, u32, u32, Option<f64>, u32)> {
        log.iter()
            .map(|d| (d.t_s as u32, d.running, d.booting, d.oldest_s, d.target))
            .collect()
    };
    let (_, log) = run_logged(text);
    let mut want = vec![(30, 1, 0, Some(29.0), 4), (60, 1, 3, Some(59.0), 4)];
    want.extend((90..=270).step_by(30).map(|t| (t, 4, 0, None, 4)));
    assert_eq!(rows_of(&log), want);
    // Scale-in: four servers, two users. No hop ever waits; while a server is idle the
    // count drops by one a look (30s: 3, 60s: 2), then holds at 2 with both busy at
    // every look (their hops run 1-31, 32-62, 63-93, ...).
    let two = text
        .replace("servers = 1", "servers = 4")
        .replace("users = 4", "users = 2");
    let (_, log) = run_logged(&two);
    let mut want = vec![(30, 4, 0, None, 3), (60, 3, 0, None, 2)];
    want.extend((90..=270).step_by(30).map(|t| (t, 2, 0, None, 2)));
    assert_eq!(rows_of(&log), want);
    // The rule itself, on constructed observations (c = 4 running, target 10s, scale
    // down below 5s): 25s waited -> ceil(4 x 25 / 10) = 10, capped at max 8; 11s ->
    // at least one more; 7s -> hold; 3s -> one fewer; nothing waiting with an idle
    // server -> one fewer, with all four busy -> hold.
    let spec: AutoscaleSpec = toml::from_str(
        r#"metric = "queue_age"
target = 10.0
min = 1
max = 8"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let obs = |oldest: Option<u64>, busy: u64| ScaleObservation {
        now: sim_core::SimTime(1_000 * NS),
        running: 4,
        booting: 0,
        busy,
        queued: u64::from(oldest.is_some()),
        tokens_in_flight: 0,
        ttft_p99: None,
        ttft_samples: 0,
        oldest_wait: oldest.map(SimDuration::from_secs),
        idle_since: None,
    };
    for (oldest, busy, want) in [
        (Some(25), 4, 8),
        (Some(11), 4, 5),
        (Some(7), 4, 4),
        (Some(3), 4, 3),
        (None, 3, 3),
        (None, 4, 4),
    ] {
        let mut a = Standard.autoscaler(&spec);
        assert_eq!(
            a.target(&obs(oldest, busy)),
            want,
            "{oldest:?} waited, {busy} busy"
        );
    }
    let e = invalid(&text.replace("queue_age", "queue_agee"));
    assert!(e.message.contains("\"queue_age\""), "{e}");
}

#[test]
fn prewarm_raises_the_floor_at_the_scheduled_time_before_load() {
    // Load arrives at 61m (six users, think 61m, 10s hops). A pre-warm window from
    // 3010s (50m10s) to 70m, repeating every 2h, keeps at least 8 servers; boot 10m.
    let text = r#"
[simulation]
horizon = "3h"
[pools.p]
servers = 1
usd_per_server_hour = 1.0
service = { dist = "constant", value = 10 }
autoscale = { target = 1.0, min = 1, max = 20, boot = "10m", cooldown = "5m", interval = "30s", prewarm = [{ from = "3010s", until = "70m", min = 8, every = "2h" }] }
[classes.c]
arrival = { process = "closed", users = 6, think = { dist = "constant", value = 3660 } }
hops = [{ pool = "p" }]
"#;
    let (r, log) = run_logged(text);
    // The floor is applied at 3010s exactly (not at a tick): 7 boots start.
    let first_up = log.iter().find(|d| d.target > 1).expect("a scale-up");
    assert_eq!(
        (first_up.t_s, first_up.running, first_up.target),
        (3010.0, 1, 8)
    );
    // Nothing scales below 8 while the window is open, though the pool is idle.
    for d in log.iter().filter(|d| d.t_s >= 3010.0 && d.t_s < 4200.0) {
        assert_eq!(d.target, 8, "{d:?}");
    }
    // After the window the idle pool goes back to its minimum.
    let at_close = log.iter().find(|d| d.t_s == 4200.0).expect("tick at 70m");
    assert_eq!(at_close.target, 1, "{at_close:?}");
    // And again two hours later.
    let again = log
        .iter()
        .find(|d| d.t_s == 10210.0)
        .expect("second window");
    assert_eq!((again.running, again.target), (1, 8));
    // Eight servers are up (booted 3010 + 600 = 3610s) before the load arrives at
    // 3660s: the sample at 60m still has 1, the one at 61m has 8.
    let servers_at = |t: f64| {
        r.timeseries
            .iter()
            .find(|row| row.t_s == t)
            .map(|row| row.pools[0].servers)
    };
    assert_eq!(servers_at(3600.0), Some(1));
    assert_eq!(servers_at(3660.0), Some(8));
    // None of the six 61m hops waited; of the six of the next round (at 2h02m10s, one
    // server again), five did.
    assert_eq!((r.pools[0].hops, r.pools[0].waited), (12, 5));
}

/// A GPU pool autoscaled on queue depth: requests arrive for 20 minutes, then stop.
const GPU_SCALED: &str = r#"
[simulation]
horizon = "40m"
seed = 3
[pools.g]
servers = 1
usd_per_server_hour = 3.6
gpu = { model = "llama-3-8b", gpu = "h100-80gb", max_num_seqs = 8 }
autoscale = { metric = "METRIC", target = TARGET, min = 1, max = 4, boot = "2m", cooldown = "1m", interval = "30s" }
[classes.c]
arrival = { process = "piecewise", step = "20m", rates = [6.0, 0.0] }
[[classes.c.nodes]]
id = "a"
pool = "g"
input_tokens = { dist = "constant", value = 1500 }
output_tokens = { dist = "constant", value = 400 }
"#;

#[test]
fn gpu_pool_autoscaling_charges_from_boot_start_to_drain_end() {
    for (metric, target) in [
        ("queue_depth", "8.0"),
        ("tokens_in_flight", "15000.0"),
        ("p99_ttft", "1.0"),
    ] {
        let text = GPU_SCALED
            .replace("METRIC", metric)
            .replace("TARGET", target);
        let (r, log) = run_logged(&text);
        let g = gpu_report(&r);
        let cap = g.capacity.expect("an autoscaled pool reports capacity");
        // It scaled up, then back to one replica after the load stopped.
        assert!(cap.boots >= 1, "{metric}: {cap:?}");
        assert!(cap.retirements >= 1, "{metric}: {cap:?}");
        let max_seen = log.iter().map(|d| d.running).max().unwrap_or(0);
        assert!(max_seen >= 2, "{metric}: {log:?}");
        assert_eq!(log.last().map(|d| d.target), Some(1), "{metric}");
        // Boot delay: no replica is running earlier than 2 minutes after the first
        // decision that booted one.
        let first_boot = log.iter().find(|d| d.target > d.running + d.booting);
        let first_boot = first_boot.map(|d| d.t_s).expect("a boot");
        for d in &log {
            if d.t_s < first_boot + 120.0 {
                assert_eq!(d.running, 1, "{metric} at {}: {d:?}", d.t_s);
            }
        }
        // Capacity dollars are the paid replica-hours x price, exactly; paid time
        // exceeds running time by exactly the boots (2 minutes each).
        let rep = &r.pool_reports[0];
        assert!(
            (rep.usd_capacity - cap.replica_hours * 3.6).abs() < 1e-9,
            "{metric}: {} vs {}",
            rep.usd_capacity,
            cap.replica_hours
        );
        let booting_h = cap.replica_hours - cap.running_replica_hours;
        assert!(
            (booting_h - cap.boots as f64 * 120.0 / 3600.0).abs() < 1e-9,
            "{metric}: {booting_h} h booting for {} boots",
            cap.boots
        );
        eprintln!(
            "{metric}: {} boots, {} retirements, {:.3} replica-hours paid, {:.3} up, ${:.4}",
            cap.boots,
            cap.retirements,
            cap.replica_hours,
            cap.running_replica_hours,
            rep.usd_capacity
        );
        // Every request was served.
        let c = &r.classes[0];
        assert_eq!(c.arrived, c.completed + c.in_flight, "{metric}");
        assert!(c.completed > 5000, "{metric}: {}", c.completed);
    }
}

#[test]
fn reserved_replicas_are_paid_whole_and_cover_on_demand_ones() {
    // The autoscaled GPU pool (1 to 4 replicas at $3.6/h on demand) with 2 reserved at
    // $1.8/h: the same run (prices decide nothing), paid 2 x $1.8 x 40 minutes for the
    // slots plus $3.6 for each replica-hour beyond them.
    let text = GPU_SCALED
        .replace("METRIC", "queue_depth")
        .replace("TARGET", "8.0");
    let reserved = text.replace(
        "autoscale = {",
        "reserved = { servers = 2, usd_per_server_hour = 1.8 }\nautoscale = {",
    );
    let (plain, plain_log) = run_logged(&text);
    let (r, log) = run_logged(&reserved);
    assert_eq!(plain_log, log, "the autoscaler saw the same pool");
    let (c0, c) = (&plain.classes[0], &r.classes[0]);
    assert_eq!((c0.arrived, c0.completed), (c.arrived, c.completed));
    let cap0 = gpu_report(&plain).capacity.expect("autoscaled");
    let cap = gpu_report(&r).capacity.expect("autoscaled");
    assert!((cap.replica_hours - cap0.replica_hours).abs() < 1e-12);
    assert_eq!(cap0.reserved_replicas, None);
    assert_eq!(cap.reserved_replicas, Some(2));
    let t_h = 40.0 / 60.0;
    let used = cap.reserved_used_hours.expect("reserved");
    let unused = cap.reserved_unused_hours.expect("reserved");
    // One replica at least is always paid, two for part of the run.
    assert!(used > t_h && used < 2.0 * t_h, "{cap:?}");
    assert!((used + unused - 2.0 * t_h).abs() < 1e-9, "{cap:?}");
    assert!(
        cap.replica_hours > used + 0.1,
        "it ran beyond the slots: {cap:?}"
    );
    let rep = &r.pool_reports[0];
    let want = 2.0 * 1.8 * t_h + 3.6 * (cap.replica_hours - used);
    assert!(
        (rep.usd_capacity - want).abs() < 1e-9,
        "{} vs {want}",
        rep.usd_capacity
    );
    assert!(rep.usd_capacity < plain.pool_reports[0].usd_capacity);
    // Requests on reserved replicas pay less: the attributed dollars drop, never above
    // what was paid.
    let attributed = |x: &RunResult| x.pools[0].usd_attributed;
    assert!(attributed(&r) < attributed(&plain));
    assert!(attributed(&r) <= rep.usd_capacity);
    // Reserving more than the pool ever runs pays for slots no replica uses.
    let (big, _) = run_logged(&reserved.replace("servers = 2, usd", "servers = 6, usd"));
    let cap6 = gpu_report(&big).capacity.expect("autoscaled");
    let unused6 = cap6.reserved_unused_hours.expect("reserved");
    assert!((cap6.reserved_used_hours.unwrap_or(0.0) - cap.replica_hours).abs() < 1e-9);
    assert!((unused6 - (6.0 * t_h - cap.replica_hours)).abs() < 1e-9);
    assert!((big.pool_reports[0].usd_capacity - 6.0 * 1.8 * t_h).abs() < 1e-9);
    // An upfront payment is amortised over its term: $0.90/h plus $7,884 upfront for
    // a year (8,760 h: $0.90/h more) is the $1.80/h reservation, dollar for dollar,
    // in capacity and in what the requests are charged.
    let (upfront, _) = run_logged(&reserved.replace(
        "usd_per_server_hour = 1.8 }",
        "usd_per_server_hour = 0.9, upfront_usd = 7884.0, term = \"365d\" }",
    ));
    assert!((upfront.pool_reports[0].usd_capacity - rep.usd_capacity).abs() < 1e-9);
    assert!((attributed(&upfront) - attributed(&r)).abs() < 1e-9);
    // An upfront payment without a term, a zero term or a negative payment is refused.
    for (bad, key) in [
        ("upfront_usd = 7884.0 }", "pools.g.reserved.term"),
        (
            "upfront_usd = 1.0, term = \"0s\" }",
            "pools.g.reserved.term",
        ),
        ("upfront_usd = -1.0 }", "pools.g.reserved.upfront_usd"),
    ] {
        let e = invalid(&reserved.replace(
            "usd_per_server_hour = 1.8 }",
            &format!("usd_per_server_hour = 0.9, {bad}"),
        ));
        assert_eq!(e.key, key, "{bad}: {e}");
    }
}

/// A GPU pool with spot replicas under light load.
const SPOT: &str = r#"
[simulation]
horizon = "2h"
seed = SEED
drain = true
[pools.g]
servers = 4
gpu = { model = "llama-3-8b", gpu = "h100-80gb" }
spot = { preemptions_per_hour = 10.0, usd_per_server_hour = 1.0, boot = "2m", on_preempt = "ON_PREEMPT" }
[classes.c]
arrival = { process = "poisson", rate = 2.0 }
[[classes.c.nodes]]
id = "a"
pool = "g"
input_tokens = { dist = "constant", value = 2000 }
output_tokens = { dist = "constant", value = 600 }
"#;

#[test]
fn spot_preemptions_follow_the_rate_and_victims_are_conserved() {
    let (mut preemptions, mut exposure_h) = (0u64, 0.0f64);
    for seed in 1..=5 {
        for on_preempt in ["recompute", "fail"] {
            let text = SPOT
                .replace("SEED", &seed.to_string())
                .replace("ON_PREEMPT", on_preempt);
            let (r, log) = run_spot_logged(&text);
            let cap = gpu_report(&r).capacity.expect("a spot pool");
            let c = &r.classes[0];
            // Conservation: every arrival ends completed or failed (drain), and every
            // victim is either recomputed or fails its (one-hop) workflow.
            assert_eq!(c.in_flight, 0);
            assert_eq!(c.arrived, c.completed + c.failed, "{on_preempt}");
            assert!(cap.spot_preemptions > 0);
            match on_preempt {
                "recompute" => {
                    assert_eq!(c.failed, 0);
                    assert_eq!(cap.victims_failed, 0);
                    assert!(cap.victims_recomputed > 0, "{cap:?}");
                }
                _ => {
                    assert_eq!(cap.victims_recomputed, 0);
                    assert!(cap.victims_failed > 0, "{cap:?}");
                    assert_eq!(c.failed, cap.victims_failed, "{cap:?}");
                    assert_eq!(
                        c.failed_by_cause.get("preempted on g").copied(),
                        Some(cap.victims_failed)
                    );
                    // Their lost GPU time is charged to the failed workflows (waste).
                    assert!(c.usd_waste_failed > 0.0);
                }
            }
            // Every replica is spot at $1/h: capacity dollars = paid replica-hours.
            let rep = &r.pool_reports[0];
            assert!((rep.usd_capacity - cap.spot_replica_hours).abs() < 1e-9);
            // A replacement boots 2 minutes per preemption, paid (up to the end for
            // one still booting when the last workflow finished).
            let booting_h = cap.spot_replica_hours - cap.spot_running_replica_hours;
            let expected_h = replacement_boot_hours(&log, 120.0, r.end.as_secs_f64());
            assert!(
                (booting_h - expected_h).abs() < 1e-6,
                "{booting_h} h vs {expected_h} h"
            );
            assert!(expected_h > cap.boots as f64 * 1.9 / 60.0, "{cap:?}");
            assert_eq!(cap.boots, cap.spot_preemptions);
            // The hop log marks each lost call `lost` (none under recompute, where a
            // victim's call goes on elsewhere and returns); every other one returned.
            let (_, _, hops) = run_logged_hops(&text);
            let count = |s: HopStatus| hops.iter().filter(|h| h.status == s).count() as u64;
            assert_eq!(count(HopStatus::Lost), cap.victims_failed, "{on_preempt}");
            assert_eq!(count(HopStatus::Ok), c.completed, "{on_preempt}");
            assert_eq!(hops.len() as u64, c.arrived, "{on_preempt}");
            if on_preempt == "recompute" {
                preemptions += cap.spot_preemptions;
                exposure_h += cap.spot_running_replica_hours;
            }
        }
    }
    // Preemptions are Poisson with mean rate x exposure (spot replica-hours up):
    // within 3 standard deviations.
    let mean = 10.0 * exposure_h;
    let sd = mean.sqrt();
    eprintln!(
        "{preemptions} preemptions over {exposure_h:.2} spot replica-hours up (expected {mean:.1})"
    );
    assert!(
        (preemptions as f64 - mean).abs() < 3.0 * sd,
        "{preemptions} preemptions, expected {mean:.1} +/- {:.1}",
        3.0 * sd
    );
    // Without replacements, half the pool on spot: both spot replicas are lost for
    // good (at 10 per hour each over 2h), the on-demand half carries on.
    let text = SPOT
        .replace("SEED", "1")
        .replace("ON_PREEMPT", "recompute")
        .replace("spot = { ", "spot = { servers = 2, ")
        .replace("boot = \"2m\"", "replace = false");
    let r = run(&text);
    let cap = gpu_report(&r).capacity.expect("a spot pool");
    assert_eq!((cap.spot_preemptions, cap.boots), (2, 0), "{cap:?}");
    let c = &r.classes[0];
    assert_eq!(c.arrived, c.completed);
}

#[test]
fn spot_replacements_draw_their_boot_per_replica() {
    // Replacements booting in uniform(60 s, 180 s): over five runs the booting
    // replica-hours are the sum of the draws (mean 120 s, sd 34.6 s each), not boots x
    // a fixed figure; a boot still going when the drained run ends is cut there, so
    // those runs are left out of the sum.
    let (mut boots, mut booting_s) = (0u64, 0.0f64);
    for seed in 1..=5 {
        let text = SPOT
            .replace("SEED", &seed.to_string())
            .replace("ON_PREEMPT", "recompute")
            .replace(
                "boot = \"2m\"",
                "boot = { dist = \"uniform\", low = \"60s\", high = \"180s\" }",
            );
        let (r, log) = run_spot_logged(&text);
        let cap = gpu_report(&r).capacity.expect("a spot pool");
        assert_eq!(cap.boots, cap.spot_preemptions);
        let end = r.end.as_secs_f64();
        if log.iter().any(|e| e.at.as_secs_f64() + 180.0 > end) {
            continue;
        }
        let h = cap.spot_replica_hours - cap.spot_running_replica_hours;
        // Every boot lies within the distribution's bounds.
        assert!(h * 3600.0 >= 60.0 * cap.boots as f64 - 1e-6, "{cap:?}");
        assert!(h * 3600.0 <= 180.0 * cap.boots as f64 + 1e-6, "{cap:?}");
        boots += cap.boots;
        booting_s += h * 3600.0;
    }
    assert!(boots > 100, "{boots} boots");
    let sd = 34.64 * (boots as f64).sqrt();
    assert!(
        (booting_s - 120.0 * boots as f64).abs() < 4.5 * sd,
        "{booting_s:.0} s booting over {boots} boots"
    );
    // Not all equal: with a fixed 2-minute boot the sum would be exactly 120 s each.
    assert!((booting_s - 120.0 * boots as f64).abs() > 1.0);
}

/// [`run`], with every spot reclaim logged.
fn run_spot_logged(text: &str) -> (RunResult, Vec<SpotReclaim>) {
    let mut log = Vec::new();
    let r = sim_core::run(
        &scenario(text),
        RunOptions {
            policies: Some(&Standard),
            spot_log: Some(&mut log),
            ..Default::default()
        },
    );
    (r, log)
}

/// Hours spent booting by the replacements of a run's reclaims (each victim's boots
/// `boot_s` from its reclaim, or its notice): a boot still going at the run's end
/// `end_s` (a drained run ends with its last workflow) is paid up to there.
fn replacement_boot_hours(log: &[SpotReclaim], boot_s: f64, end_s: f64) -> f64 {
    log.iter()
        .map(|e| f64::from(e.taken) * boot_s.min(end_s - e.at.as_secs_f64()).max(0.0))
        .sum::<f64>()
        / 3600.0
}

/// The spot replicas exposed over a run rebuilt from its reclaims alone (`servers`
/// all on spot, each victim replaced by a boot of `boot_s`, no autoscaler): checks
/// that each reclaim saw that many and took min(`size`, them), and returns the time
/// integrals up to `end_s` of exposed, of the reclaim rate (exposed / replicas per
/// reclaim) and of exposed x replicas per reclaim (the variance of the replica count),
/// each per unit of `preemptions_per_hour`, in hours.
fn rebuild_exposure(
    log: &[SpotReclaim],
    servers: u32,
    size: u32,
    boot_s: f64,
    end_s: f64,
) -> (f64, f64, f64) {
    // (time, change): a reclaim takes its replicas, their replacements join later.
    let mut steps: Vec<(f64, i64)> = Vec::new();
    for e in log {
        let t = e.at.as_secs_f64();
        steps.push((t, -i64::from(e.taken)));
        steps.extend(std::iter::repeat_n((t + boot_s, 1), e.taken as usize));
    }
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut level, mut t0) = (i64::from(servers), 0.0f64);
    let (mut exposed_h, mut rate_h, mut var_h) = (0.0, 0.0, 0.0);
    let mut reclaims = log.iter();
    for (t, change) in steps {
        let dt_h = (t.min(end_s) - t0).max(0.0) / 3600.0;
        let up = level as f64;
        let m = level.min(i64::from(size)) as f64;
        exposed_h += up * dt_h;
        if level > 0 {
            rate_h += up / m * dt_h;
            var_h += up * m * dt_h;
        }
        t0 = t0.max(t.min(end_s));
        if change < 0 {
            let e = reclaims.next().expect("a reclaim for each drop");
            assert_eq!(i64::from(e.exposed), level, "{e:?}");
            assert_eq!(e.taken, e.exposed.min(size), "{e:?}");
            assert!(e.taken >= 1);
        }
        level += change;
        assert!((0..=i64::from(servers)).contains(&level));
    }
    let dt_h = (end_s - t0).max(0.0) / 3600.0;
    let (up, m) = (level as f64, level.min(i64::from(size)) as f64);
    exposed_h += up * dt_h;
    if level > 0 {
        rate_h += up / m * dt_h;
        var_h += up * m * dt_h;
    }
    (exposed_h, rate_h, var_h)
}

#[test]
fn spot_episodes_scale_the_hazard_inside_their_windows_only() {
    // Four spot replicas at 2 preemptions per replica-hour over 4 hours, with a
    // shortage from 1h to 2h at 10x and a calm spell from 3h to 3h30 at 0x: the
    // reclaims in each stretch are Poisson with mean rate x factor x the spot
    // replica-hours exposed in it (rebuilt from the reclaims), none in the calm spell.
    let base = SPOT
        .replace("horizon = \"2h\"", "horizon = \"4h\"")
        .replace("drain = true", "drain = false")
        .replace("preemptions_per_hour = 10.0", "preemptions_per_hour = 2.0")
        .replace(
            "spot = { ",
            "spot = { episodes = [{ start = \"3h\", duration = \"30m\", factor = 0.0 }, { start = \"1h\", duration = \"1h\", factor = 10.0 }], ",
        )
        .replace("ON_PREEMPT", "recompute");
    let (mut inside, mut outside) = (0u64, 0u64);
    let (mut inside_mean, mut outside_mean) = (0.0f64, 0.0f64);
    for seed in 1..=8 {
        let (r, log) = run_spot_logged(&base.replace("SEED", &seed.to_string()));
        let end = r.end.as_secs_f64();
        let exposed = |to_s: f64| rebuild_exposure(&log, 4, 1, 120.0, to_s.min(end)).0;
        let at = |e: &SpotReclaim| e.at.as_secs_f64();
        assert!(
            !log.iter().any(|e| (10_800.0..12_600.0).contains(&at(e))),
            "a reclaim in the calm spell: {log:?}"
        );
        inside += log
            .iter()
            .filter(|e| (3_600.0..7_200.0).contains(&at(e)))
            .count() as u64;
        outside += log
            .iter()
            .filter(|e| !(3_600.0..7_200.0).contains(&at(e)))
            .count() as u64;
        let in_h = exposed(7_200.0) - exposed(3_600.0);
        let calm_h = exposed(12_600.0) - exposed(10_800.0);
        inside_mean += 2.0 * 10.0 * in_h;
        outside_mean += 2.0 * (exposed(end) - in_h - calm_h);
    }
    eprintln!(
        "reclaims inside the shortage {inside} (expected {inside_mean:.1}), outside {outside} (expected {outside_mean:.1})"
    );
    for (what, n, mean) in [
        ("inside", inside, inside_mean),
        ("outside", outside, outside_mean),
    ] {
        assert!(
            (n as f64 - mean).abs() < 4.0 * mean.sqrt(),
            "{what} the shortage: {n} reclaims, expected {mean:.1}"
        );
    }
    // The shortage is visible: its hour has more than three times the reclaims of an
    // hour outside it (2.5 hours: the 4 less the shortage and the calm spell).
    assert!(
        inside as f64 > 3.0 * outside as f64 / 2.5,
        "{inside} vs {outside}"
    );
    // Bad episodes are refused by key: overlapping windows, a negative factor, an empty
    // window.
    for (bad, key, what) in [
        (
            "{ start = \"1h\", duration = \"1h\", factor = 2.0 }, { start = \"90m\", duration = \"1h\", factor = 3.0 }",
            "pools.g.spot.episodes",
            "overlap",
        ),
        (
            "{ start = \"1h\", duration = \"1h\", factor = -1.0 }",
            "pools.g.spot.episodes[0].factor",
            "hazard multiplier >= 0",
        ),
        (
            "{ start = \"1h\", duration = \"0s\", factor = 2.0 }",
            "pools.g.spot.episodes[0].duration",
            "positive duration",
        ),
    ] {
        let text = SPOT
            .replace("SEED", "1")
            .replace("ON_PREEMPT", "recompute")
            .replace("spot = { ", &format!("spot = {{ episodes = [{bad}], "));
        let e = invalid(&text).to_string();
        assert!(e.contains(key) && e.contains(what), "{bad}: {e}");
    }
}

#[test]
fn drawn_reclaim_sizes_keep_the_replica_hazard_and_follow_their_distribution() {
    // Six spot replicas at 10 preemptions per replica-hour, each reclaim taking 1, 2 or
    // 4 of them with equal chance (held to those up): with all 6 up an event takes 7/3
    // on average, so events come 6 / (7/3) = 2.57 times per unit of hazard-hour, and
    // the replicas lost per replica-hour exposed stay 10. Over 8 seeds the replicas
    // lost are within 4.5 sd of 10 x the spot replica-hours exposed, a reclaim with at
    // least 4 exposed took 1, 2 and 4 each about a third of the time (4.5 binomial
    // sd), and every reclaim took a listed size or all those exposed.
    let base = SPOT
        .replace("servers = 4", "servers = 6")
        .replace(
            "spot = { ",
            "spot = { reclaim_size = { dist = \"empirical\", values = [1, 2, 4] }, ",
        )
        .replace("ON_PREEMPT", "recompute");
    let (mut lost, mut exposure_h, mut full) = (0u64, 0.0f64, [0u64; 5]);
    for seed in 1..=8 {
        let (r, log) = run_spot_logged(&base.replace("SEED", &seed.to_string()));
        let cap = gpu_report(&r).capacity.expect("a spot pool");
        let n: u64 = log.iter().map(|e| u64::from(e.taken)).sum();
        assert_eq!(cap.spot_preemptions, n);
        assert_eq!(cap.spot_reclaims, Some(log.len() as u64));
        for e in &log {
            assert!(
                [1, 2, 4].contains(&e.taken) || (e.taken == e.exposed && e.exposed < 4),
                "{e:?}"
            );
            if e.exposed >= 4 {
                full[e.taken as usize] += 1;
            }
        }
        lost += n;
        exposure_h += cap.spot_running_replica_hours;
        let c = &r.classes[0];
        assert_eq!(c.arrived, c.completed);
    }
    // Compound Poisson: variance of the replicas lost about 10 x exposure x E[G^2] /
    // E[G] = 3 with all up.
    let mean = 10.0 * exposure_h;
    let sd = (3.0 * mean).sqrt();
    eprintln!(
        "{lost} replicas lost over {exposure_h:.2} spot replica-hours (expected {mean:.1}); sizes with 4+ up {full:?}"
    );
    assert!(
        (lost as f64 - mean).abs() < 4.5 * sd,
        "{lost} lost, expected {mean:.1} +- {sd:.1}"
    );
    let events = (full[1] + full[2] + full[4]) as f64;
    assert!(events > 250.0, "{full:?}");
    for k in [1, 2, 4] {
        let p = 1.0 / 3.0;
        let sd = (events * p * (1.0 - p)).sqrt();
        assert!(
            (full[k] as f64 - events * p).abs() < 4.5 * sd,
            "size {k}: {full:?}"
        );
    }
    // The mean-size table: exact for the empirical sizes (min(G, n) averaged), the
    // sorted draws for a gamma agreeing with E[min(max(R, 1), n)] averaged per n, and a
    // size beyond about 1,000 replicas refused.
    let table = |text: &str, servers: u32| {
        let spec: sim_core::dist::DistSpec = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        sim_core::scenario::ReclaimDraw::new(spec, servers)
    };
    let e = table(
        r#"dist = "empirical"
values = [1, 2, 4]"#,
        6,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let want = [0.0, 1.0, 5.0 / 3.0, 2.0, 7.0 / 3.0, 7.0 / 3.0, 7.0 / 3.0];
    assert!(
        e.mean_taken
            .iter()
            .zip(want)
            .all(|(a, b)| (a - b).abs() < 1e-12),
        "{:?}",
        e.mean_taken
    );
    let g = table(
        r#"dist = "gamma"
mean = 3.0
cv = 1.0"#,
        5000,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.mean_taken.len(), 5001);
    let p_one = g.sampler.mean_capped_count(1);
    for n in [1u64, 2, 3, 5, 10, 30] {
        let direct = 1.0 + g.sampler.mean_capped_count(n) - p_one;
        assert!(
            (g.mean_taken[n as usize] - direct).abs() < 0.02,
            "n {n}: {} vs {direct}",
            g.mean_taken[n as usize]
        );
    }
    // It levels off at the mean of max(R, 1), a little above 3.
    assert!(
        (3.0..3.2).contains(&g.mean_taken[5000]),
        "{}",
        g.mean_taken[5000]
    );
    let big = table(
        r#"dist = "exponential"
mean = 5000.0"#,
        10,
    );
    assert!(big.is_err_and(|m| m.contains("at most about 1000 replicas")));
    // A size distribution that can only draw 0 or negative counts is refused by key.
    let e = invalid(
        &base
            .replace("values = [1, 2, 4]", "values = [-1]")
            .replace("SEED", "1"),
    );
    assert_eq!(e.key, "pools.g.spot.reclaim_size", "{e}");
    let e = invalid(
        &SPOT
            .replace("SEED", "1")
            .replace("ON_PREEMPT", "recompute")
            .replace("spot = { ", "spot = { reclaim_size = 0, "),
    );
    assert!(e.message.contains("integer >= 1"), "{e}");
}

#[test]
fn spot_reclaims_take_their_group_at_once_at_the_same_replica_hazard() {
    // Spot replicas at 10 preemptions per replica-hour, reclaimed 3 at a time:
    // reclaims come a third as often, so about as many replicas are lost per hour as
    // with independent preemptions, in groups. Six replicas are always exposed by
    // threes (replacements of a group boot together); four leave one after a reclaim,
    // which the next reclaim takes alone.
    for servers in [6u32, 4] {
        let base = SPOT
            .replace("servers = 4", &format!("servers = {servers}"))
            .replace("spot = { ", "spot = { reclaim_size = 3, ");
        let (mut taken, mut events, mut short) = (0u64, 0u64, 0u64);
        let (mut taken_mean, mut taken_var, mut events_mean) = (0.0f64, 0.0f64, 0.0f64);
        for seed in 1..=5 {
            for on_preempt in ["recompute", "fail"] {
                let text = base
                    .replace("SEED", &seed.to_string())
                    .replace("ON_PREEMPT", on_preempt);
                let (r, log) = run_spot_logged(&text);
                let cap = gpu_report(&r).capacity.expect("a spot pool");
                let c = &r.classes[0];
                // Each reclaim took exactly min(3, exposed) replicas at its instant, as
                // rebuilt from the reclaims and the 2-minute replacement boots alone.
                let (exposed_h, rate_h, var_h) =
                    rebuild_exposure(&log, servers, 3, 120.0, r.end.as_secs_f64());
                assert!(
                    (exposed_h - cap.spot_running_replica_hours).abs() < 1e-6,
                    "{exposed_h} vs {cap:?}"
                );
                let n: u64 = log.iter().map(|e| u64::from(e.taken)).sum();
                assert_eq!(cap.spot_preemptions, n);
                assert_eq!(cap.spot_reclaims, Some(log.len() as u64));
                // Victims are conserved: recomputed, or failing their (one-hop)
                // workflow.
                assert_eq!(c.in_flight, 0);
                assert_eq!(c.arrived, c.completed + c.failed, "{on_preempt}");
                if on_preempt == "recompute" {
                    assert_eq!((c.failed, cap.victims_failed), (0, 0));
                    assert!(cap.victims_recomputed > 0, "{cap:?}");
                    taken += n;
                    events += log.len() as u64;
                    short += log.iter().filter(|e| e.taken < 3).count() as u64;
                    taken_mean += 10.0 * exposed_h;
                    taken_var += 10.0 * var_h;
                    events_mean += 10.0 * rate_h;
                } else {
                    assert_eq!(cap.victims_recomputed, 0);
                    assert!(cap.victims_failed > 0, "{cap:?}");
                    assert_eq!(c.failed, cap.victims_failed);
                    assert_eq!(
                        c.failed_by_cause.get("preempted on g").copied(),
                        Some(cap.victims_failed)
                    );
                }
                // One replacement boot per victim, 2 minutes each (to the end at
                // most), paid.
                assert_eq!(cap.boots, cap.spot_preemptions);
                let booting_h = cap.spot_replica_hours - cap.spot_running_replica_hours;
                let expected_h = replacement_boot_hours(&log, 120.0, r.end.as_secs_f64());
                assert!(
                    (booting_h - expected_h).abs() < 1e-6,
                    "{booting_h} h vs {expected_h} h"
                );
            }
            // With a 2-minute notice the group is noticed at once, and each replica
            // drains its 4.5 s requests before its notice runs out: nothing fails.
            let text = base
                .replace("SEED", &seed.to_string())
                .replace("ON_PREEMPT", "fail")
                .replace("boot = \"2m\"", "boot = \"2m\", notice = \"2m\"");
            let (r, log) = run_spot_logged(&text);
            let cap = gpu_report(&r).capacity.expect("a spot pool");
            rebuild_exposure(&log, servers, 3, 120.0, r.end.as_secs_f64());
            assert_eq!(cap.spot_reclaims, Some(log.len() as u64));
            assert_eq!(cap.drained_in_notice, cap.spot_preemptions, "{cap:?}");
            assert_eq!((r.classes[0].failed, cap.boots), (0, cap.spot_preemptions));
        }
        // The replicas lost: a compound Poisson count (reclaims of up to 3) with mean
        // rate x spot replica-hours exposed, and variance rate x (exposed x replicas
        // per reclaim) integrated; the reclaims, Poisson with the rate integrated.
        let sd = taken_var.sqrt();
        eprintln!(
            "{servers} replicas: {taken} lost in {events} reclaims ({short} short; expected {taken_mean:.1} +/- {sd:.1} in {events_mean:.1})"
        );
        assert!(
            (taken as f64 - taken_mean).abs() < 3.0 * sd,
            "{taken} replicas preempted, expected {taken_mean:.1} +/- {:.1}",
            3.0 * sd
        );
        assert!(
            (events as f64 - events_mean).abs() < 3.0 * events_mean.sqrt(),
            "{events} reclaims, expected {events_mean:.1}"
        );
        if servers == 6 {
            // Exactly a third as many reclaims as replicas: every one took three.
            assert_eq!((taken, short), (3 * events, 0));
        } else {
            // Some took the one replica left; at most three each.
            assert!(short > 0 && taken < 3 * events && taken > events);
        }
    }
}

#[test]
fn a_drained_run_ends_with_its_last_workflow() {
    // Replacement boots (2 minutes, one starting about every 1.5 minutes) are usually
    // going when the last request ends after the horizon, and a sampling tick is due
    // within the minute: the run stops at that request all the same, pays the boot
    // up to there, and no spot preemption comes after it (running on to the boot's
    // end with no candidate preemptions left biased the count about 2.4% low over
    // 300 seeds, -3.2 sd).
    let mut cut = 0;
    for seed in 1..=5 {
        let text = SPOT
            .replace("SEED", &seed.to_string())
            .replace("ON_PREEMPT", "recompute");
        let (mut hops, mut log) = (Vec::new(), Vec::new());
        let r = sim_core::run(
            &scenario(&text),
            RunOptions {
                policies: Some(&Standard),
                hop_log: Some(&mut hops),
                spot_log: Some(&mut log),
                ..Default::default()
            },
        );
        let last = hops.iter().map(|h| h.finished).max().expect("hops");
        let horizon = sim_core::SimTime::ZERO + SimDuration::from_secs_f64(7200.0);
        assert!(
            last > horizon,
            "seed {seed}: the drain ran past the horizon"
        );
        assert_eq!(r.end, last, "seed {seed}");
        assert_eq!(r.classes[0].arrived, r.classes[0].completed);
        assert!(log.iter().all(|e| e.at <= r.end));
        if log
            .iter()
            .any(|e| e.at + SimDuration::from_secs_f64(120.0) > r.end)
        {
            cut += 1;
        }
    }
    // The case the rule is for: a replacement still booting at the end.
    assert!(cut >= 2, "{cut} of 5 seeds had a boot going at the end");
}

#[test]
fn a_preemption_notice_longer_than_a_request_loses_nothing() {
    // The same spot pool (requests of about 4.5 s) with a 2-minute notice: each noticed
    // replica finishes what it has and leaves before the notice runs out, so under
    // `on_preempt = "fail"` no workflow fails; a 2 s notice is shorter than a request
    // and loses some, fewer than no notice at all.
    let (mut failed_2s, mut failed_none) = (0u64, 0u64);
    for seed in 1..=3 {
        let base = SPOT
            .replace("SEED", &seed.to_string())
            .replace("ON_PREEMPT", "fail");
        let with = |notice: &str| {
            base.replace(
                "boot = \"2m\"",
                &format!("boot = \"2m\", notice = \"{notice}\""),
            )
        };
        let (r, log) = run_spot_logged(&with("2m"));
        let cap = gpu_report(&r).capacity.expect("a spot pool");
        let c = &r.classes[0];
        assert!(cap.spot_preemptions > 5, "{cap:?}");
        assert_eq!(cap.drained_in_notice, cap.spot_preemptions, "{cap:?}");
        assert_eq!(
            (
                cap.victims_failed,
                cap.victims_recomputed,
                cap.moved_waiting
            ),
            (0, 0, 0)
        );
        assert_eq!((c.failed, c.completed), (0, c.arrived));
        // Replacements boot from the notice: 2 minutes each (to the end at most), paid.
        let booting_h = cap.spot_replica_hours - cap.spot_running_replica_hours;
        let expected_h = replacement_boot_hours(&log, 120.0, r.end.as_secs_f64());
        assert!(
            (booting_h - expected_h).abs() < 1e-6,
            "{booting_h} h vs {expected_h} h"
        );
        assert_eq!(cap.boots, cap.spot_preemptions);

        let r = run(&with("2s"));
        let cap = gpu_report(&r).capacity.expect("a spot pool");
        let c = &r.classes[0];
        assert_eq!(c.arrived, c.completed + c.failed);
        assert_eq!(c.failed, cap.victims_failed);
        assert!(cap.drained_in_notice < cap.spot_preemptions, "{cap:?}");
        failed_2s += c.failed;
        failed_none += run(&base).classes[0].failed;
    }
    assert!(
        failed_2s > 0 && failed_2s < failed_none,
        "{failed_2s} vs {failed_none}"
    );
}

#[test]
fn bad_capacity_keys_are_named() {
    let base = r#"
[simulation]
horizon = "1h"
[pools.g]
servers = 2
POOL
[classes.c]
arrival = { process = "poisson", rate = 1.0 }
[[classes.c.nodes]]
id = "a"
pool = "g"
"#;
    let gpu = r#"gpu = { model = "llama-3-8b", gpu = "h100-80gb" }"#;
    let cases = [
        (
            r#"service = { dist = "constant", value = 1 }
autoscale = { target = 1.0, min = 0, max = 0 }"#,
            "pools.g.autoscale",
        ),
        (
            r#"service = { dist = "constant", value = 1 }
autoscale = { target = 1.0, min = 1, max = 2, zero_after_idle = "1m" }"#,
            "pools.g.autoscale.zero_after_idle",
        ),
        (
            r#"service = { dist = "constant", value = 1 }
autoscale = { target = 1.0, min = 1, max = 2, activation = "on_arrival" }"#,
            "pools.g.autoscale.activation",
        ),
        (
            r#"service = { dist = "constant", value = 1 }
autoscale = { metric = "gpu_util", target = 1.0, min = 1, max = 2 }"#,
            "pools.g.autoscale.metric",
        ),
        (
            r#"service = { dist = "constant", value = 1 }
autoscale = { target = 1.0, min = 1, max = 4, prewarm = [{ from = "2h", until = "1h", min = 2 }] }"#,
            "pools.g.autoscale.prewarm[0]",
        ),
        (
            r#"service = { dist = "constant", value = 1 }
autoscale = { target = 1.0, min = 1, max = 4, prewarm = [{ from = "1h", until = "2h", min = 9 }] }"#,
            "pools.g.autoscale.prewarm[0].min",
        ),
        (
            r#"service = { dist = "constant", value = 1 }
autoscale = { target = 1.0, min = 1, max = 4, prewarm = [{ from = "1h", until = "3h", min = 2, every = "1h" }] }"#,
            "pools.g.autoscale.prewarm[0].every",
        ),
        (
            r#"service = { dist = "constant", value = 1 }
autoscale = { metric = "p99_ttft", target = 1.0, min = 1, max = 4, scale_down_below = 1.5 }"#,
            "pools.g.autoscale.scale_down_below",
        ),
        (
            r#"service = { dist = "constant", value = 1 }
spot = { preemptions_per_hour = 1.0, usd_per_server_hour = 1.0 }"#,
            "pools.g.spot",
        ),
        (
            "GPU\nspot = { servers = 3, preemptions_per_hour = 1.0, usd_per_server_hour = 1.0 }",
            "pools.g.spot.servers",
        ),
        (
            "GPU\nspot = { preemptions_per_hour = 0.0, usd_per_server_hour = 1.0 }",
            "pools.g.spot.preemptions_per_hour",
        ),
        (
            "GPU\nspot = { preemptions_per_hour = 1.0, usd_per_server_hour = 1.0, replace = false }",
            "pools.g.spot.replace",
        ),
        (
            "GPU\nspot = { preemptions_per_hour = 1.0, usd_per_server_hour = 1.0, on_notice = \"move_waiting\" }",
            "pools.g.spot.on_notice",
        ),
        (
            "GPU\nspot = { preemptions_per_hour = 1.0, usd_per_server_hour = 1.0, reclaim_size = 0 }",
            "pools.g.spot.reclaim_size",
        ),
        (
            r#"service = { dist = "constant", value = 1 }
reserved = { servers = 1, usd_per_server_hour = 1.0 }"#,
            "pools.g.reserved",
        ),
        (
            "GPU\nreserved = { servers = 0, usd_per_server_hour = 1.0 }",
            "pools.g.reserved.servers",
        ),
        (
            "GPU\nreserved = { servers = 2, usd_per_server_hour = -1.0 }",
            "pools.g.reserved.usd_per_server_hour",
        ),
    ];
    for (pool, key) in cases {
        let text = base.replace("POOL", &pool.replace("GPU", gpu));
        let spec: ScenarioSpec = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        match spec.validate() {
            Err(e) => {
                assert_eq!(e.key, key, "{e}");
                // The message says what was expected, and what came.
                if key.ends_with("reclaim_size") {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("integer >= 1") && msg.contains("got 0"),
                        "{msg}"
                    );
                }
            }
            Ok(_) => panic!("accepted: {pool}"),
        }
    }
    // A cold pool has no replica to put on spot.
    let text = base.replace("servers = 2", "servers = 0").replace(
        "POOL",
        &format!("{gpu}\nautoscale = {{ target = 1.0, min = 0, max = 2 }}\nspot = {{ preemptions_per_hour = 1.0, usd_per_server_hour = 1.0 }}"),
    );
    let spec: ScenarioSpec = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    match spec.validate() {
        Err(e) => assert!(
            e.key == "pools.g.spot" && e.to_string().contains("starts cold"),
            "{e}"
        ),
        Ok(_) => panic!("accepted: {text}"),
    }
    // A cold start (`servers = 0`) needs an autoscaler that may be at zero.
    for autoscale in ["", "autoscale = { target = 1.0, min = 1, max = 2 }"] {
        let pool = format!("service = {{ dist = \"constant\", value = 1 }}\n{autoscale}");
        let text = base
            .replace("servers = 2", "servers = 0")
            .replace("POOL", &pool);
        let spec: ScenarioSpec = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        match spec.validate() {
            Err(e) => {
                assert_eq!(e.key, "pools.g.servers", "{e}");
                assert!(e.to_string().contains("autoscale.min = 0"), "{e}");
            }
            Ok(_) => panic!("accepted: {text}"),
        }
    }
    // A typo inside the new tables is a parse error naming the field.
    let text = base.replace(
        "POOL",
        &format!("{gpu}\nspot = {{ preemptions_per_hour = 1.0, usd_per_server_hour = 1.0, on_preemt = \"fail\" }}"),
    );
    let e = toml::from_str::<ScenarioSpec>(&text)
        .err()
        .map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains("on_preemt")));
}
