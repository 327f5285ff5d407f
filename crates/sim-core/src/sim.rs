//! The run loop: a single-threaded discrete-event simulation of one scenario.
//!
//! Event order is (time, insertion sequence). Workflow arrivals of each class come from
//! the class's own stream; each workflow draws its work from its own stream (seeded by
//! the class and the workflow number), so a policy that reorders hops can never change
//! what any workflow asks for (common random numbers).

use crate::event_queue::EventQueue;
use crate::metrics::{ClassStats, PoolStats, RunResult};
use crate::queue_station::QueueStation;
use crate::rng::{SimRng, StreamFactory, WorkflowRng, workflow_stream};
use crate::scenario::{Arrival, Scenario};
use crate::station::{HopJob, JobId, Station, StationOutput, Work};
use crate::time::{SimDuration, SimTime};
use rand::RngExt;
use rand_distr::{Distribution, Exp};

#[derive(Clone, Copy, Debug)]
enum Event {
    Arrival { class: u32 },
    Wake { pool: u32, token: u64 },
    MeasureStart,
}

struct Workflow {
    class: u32,
    arrived: SimTime,
    next_hop: u32,
    usd: f64,
    counted: bool,
    rng: WorkflowRng,
}

struct ClassRuntime {
    arrivals_rng: SimRng,
    interarrival: Exp<f64>,
    /// Seed of the per-workflow streams (see [`workflow_stream`]).
    work_seed: u64,
    next_workflow: u64,
}

/// Options that are not part of the scenario.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Called about every 65k events with the fraction of the horizon simulated.
    pub progress: Option<&'a mut dyn FnMut(f64)>,
}

/// Runs a validated scenario to completion.
pub fn run(scenario: &Scenario, mut opts: RunOptions<'_>) -> RunResult {
    let streams = StreamFactory::new(scenario.seed);
    let horizon = SimTime(scenario.horizon.as_nanos());
    let warmup = SimTime(scenario.warmup.as_nanos());

    let mut stations: Vec<Box<dyn Station>> = scenario
        .pools
        .iter()
        .map(|p| Box::new(QueueStation::new(p.servers, p.usd_per_server_hour)) as Box<dyn Station>)
        .collect();
    let mut classes: Vec<ClassRuntime> = scenario
        .classes
        .iter()
        .map(|c| {
            let Arrival::Poisson { rate_per_s } = c.arrival;
            ClassRuntime {
                arrivals_rng: streams.stream(&format!("class/{}/arrivals", c.name)),
                // Validation guarantees a finite positive rate; the rate is in per-second.
                interarrival: Exp::new(rate_per_s).unwrap_or_else(|_| unreachable!()),
                work_seed: streams.stream(&format!("class/{}/work", c.name)).random(),
                next_workflow: 0,
            }
        })
        .collect();

    let mut class_stats: Vec<ClassStats> = scenario.classes.iter().map(ClassStats::new).collect();
    let mut pool_stats: Vec<PoolStats> = scenario.pools.iter().map(|_| PoolStats::new()).collect();

    let mut queue: EventQueue<Event> = EventQueue::with_capacity(1024);
    let mut workflows: Vec<Option<Workflow>> = Vec::new();
    let mut free_slots: Vec<u32> = Vec::new();
    let mut out = StationOutput::default();

    for (ci, c) in classes.iter_mut().enumerate() {
        let gap = SimDuration::from_secs_f64(c.interarrival.sample(&mut c.arrivals_rng));
        let t = SimTime::ZERO + gap;
        if t < horizon {
            queue.push(t, Event::Arrival { class: ci as u32 });
        }
    }
    if warmup > SimTime::ZERO {
        queue.push(warmup, Event::MeasureStart);
    } else {
        for s in stations.iter_mut() {
            s.begin_measurement(SimTime::ZERO);
        }
    }

    let mut events: u64 = 0;
    let mut now = SimTime::ZERO;
    let horizon_ns = horizon.as_nanos().max(1) as f64;
    while let Some((t, ev)) = queue.pop() {
        if !scenario.drain && t > horizon {
            break;
        }
        now = t;
        events += 1;
        if events & 0xFFFF == 0
            && let Some(p) = opts.progress.as_mut()
        {
            p((now.as_nanos() as f64 / horizon_ns).min(1.0));
        }
        match ev {
            Event::Arrival { class } => {
                let ci = class as usize;
                let c = &mut classes[ci];
                let gap = SimDuration::from_secs_f64(c.interarrival.sample(&mut c.arrivals_rng));
                let next = now + gap;
                if next < horizon {
                    queue.push(next, Event::Arrival { class });
                }
                let rng = workflow_stream(c.work_seed, c.next_workflow);
                c.next_workflow += 1;
                let counted = now >= warmup;
                if counted {
                    class_stats[ci].arrived += 1;
                }
                let wf = Workflow {
                    class,
                    arrived: now,
                    next_hop: 0,
                    usd: 0.0,
                    counted,
                    rng,
                };
                let slot = match free_slots.pop() {
                    Some(s) => {
                        workflows[s as usize] = Some(wf);
                        s
                    }
                    None => {
                        workflows.push(Some(wf));
                        (workflows.len() - 1) as u32
                    }
                };
                let mut ctx = Ctx {
                    scenario,
                    stations: &mut stations,
                    queue: &mut queue,
                    out: &mut out,
                };
                ctx.submit_next_hop(&mut workflows, slot, now);
            }
            Event::Wake { pool, token } => {
                stations[pool as usize].wake(now, token, &mut out);
                flush_wakeups(&mut queue, &mut out, pool as usize);
            }
            Event::MeasureStart => {
                for s in stations.iter_mut() {
                    s.begin_measurement(now);
                }
            }
        }
        // Finishing a hop may submit the next one, which may finish at once and report
        // more, so loop until nothing is pending.
        while !out.done.is_empty() {
            let mut finished = std::mem::take(&mut out.done);
            for done in finished.drain(..) {
                let slot = done.id.0 as u32;
                let Some(wf) = workflows[slot as usize].as_mut() else {
                    continue;
                };
                let ci = wf.class as usize;
                let hop = &scenario.classes[ci].hops[wf.next_hop as usize];
                wf.usd += done.usd;
                if done.submitted >= warmup {
                    pool_stats[hop.pool].record(&done);
                }
                wf.next_hop += 1;
                if (wf.next_hop as usize) < scenario.classes[ci].hops.len() {
                    let mut ctx = Ctx {
                        scenario,
                        stations: &mut stations,
                        queue: &mut queue,
                        out: &mut out,
                    };
                    ctx.submit_next_hop(&mut workflows, slot, now);
                } else if let Some(wf) = workflows[slot as usize].take() {
                    free_slots.push(slot);
                    if wf.counted {
                        class_stats[ci].record_completion(now - wf.arrived, wf.usd);
                    }
                }
            }
            // Hand the (now empty) buffer back so its capacity is reused.
            if out.done.is_empty() {
                out.done = finished;
            }
        }
    }

    let end = if scenario.drain {
        now.max(horizon)
    } else {
        horizon
    };
    // Workflows still in the system, with the cost they have run up so far.
    for wf in workflows.iter().flatten() {
        if wf.counted {
            let cs = &mut class_stats[wf.class as usize];
            cs.in_flight += 1;
            cs.usd_unfinished += wf.usd;
        }
    }
    let reports = stations.iter_mut().map(|s| s.report(end)).collect();
    RunResult::new(
        scenario,
        events,
        end,
        warmup,
        class_stats,
        pool_stats,
        reports,
    )
}

/// Moves the wake-ups a station asked for into the event queue.
#[inline]
fn flush_wakeups(queue: &mut EventQueue<Event>, out: &mut StationOutput, pool: usize) {
    for (t, token) in out.wakeups.drain(..) {
        queue.push(
            t,
            Event::Wake {
                pool: pool as u32,
                token,
            },
        );
    }
}

struct Ctx<'a, 's> {
    scenario: &'a Scenario,
    stations: &'a mut [Box<dyn Station + 's>],
    queue: &'a mut EventQueue<Event>,
    out: &'a mut StationOutput,
}

impl Ctx<'_, '_> {
    fn submit_next_hop(&mut self, workflows: &mut [Option<Workflow>], slot: u32, now: SimTime) {
        let Some(wf) = workflows[slot as usize].as_mut() else {
            return;
        };
        let hop = &self.scenario.classes[wf.class as usize].hops[wf.next_hop as usize];
        let service = hop.service.sample_duration(&mut wf.rng);
        let job = HopJob {
            id: JobId(slot as u64),
            work: Work::Service(service),
        };
        self.stations[hop.pool].submit(now, job, self.out);
        flush_wakeups(self.queue, self.out, hop.pool);
    }
}
