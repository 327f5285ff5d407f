//! The abstract queueing station: `c` identical servers and one FIFO queue. This is the
//! teaching model (M/M/c, M/D/1, ...) and the oracle that checks the engine.

use crate::station::{
    HopDone, HopJob, JobId, Station, StationOutput, StationReport, TimeIntegral, Work,
};
use crate::time::{SimDuration, SimTime};
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug)]
struct Waiting {
    id: JobId,
    service: SimDuration,
    submitted: SimTime,
}

#[derive(Clone, Copy, Debug)]
struct InService {
    id: JobId,
    submitted: SimTime,
    started: SimTime,
}

pub struct QueueStation {
    /// Capacity; `u32::MAX` for an unlimited station (tool without a bulkhead).
    servers: u32,
    /// Slots ever created; slots are created lazily so unlimited stations stay small.
    created: u32,
    max_busy: u64,
    usd_per_server_ns: f64,
    usd_per_server_hour: f64,
    queue: VecDeque<Waiting>,
    /// Slot per server; the wake token is the slot index.
    slots: Vec<Option<InService>>,
    free: Vec<u32>,
    busy: TimeIntegral,
    in_system: TimeIntegral,
    queued: TimeIntegral,
    window_start: SimTime,
}

impl QueueStation {
    pub fn new(servers: u32, usd_per_server_hour: f64) -> Self {
        QueueStation {
            servers,
            usd_per_server_ns: usd_per_server_hour / 3.6e12,
            usd_per_server_hour,
            queue: VecDeque::new(),
            slots: Vec::new(),
            free: Vec::new(),
            created: 0,
            max_busy: 0,
            busy: TimeIntegral::default(),
            in_system: TimeIntegral::default(),
            queued: TimeIntegral::default(),
            window_start: SimTime::ZERO,
        }
    }

    /// A station for a downstream system: `limit` calls at once (a bulkhead shared by
    /// every workflow), or unlimited. Tools are paid per call, not per hour.
    pub fn bulkhead(limit: Option<u32>) -> Self {
        Self::new(limit.unwrap_or(u32::MAX), 0.0)
    }

    fn busy(&self) -> u32 {
        self.created - self.free.len() as u32
    }

    fn has_free_server(&self) -> bool {
        !self.free.is_empty() || self.created < self.servers
    }

    fn start(&mut self, now: SimTime, w: Waiting, out: &mut StationOutput) {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                // Only called when a server is free: create the next slot.
                self.slots.push(None);
                self.created += 1;
                self.created - 1
            }
        };
        self.slots[slot as usize] = Some(InService {
            id: w.id,
            submitted: w.submitted,
            started: now,
        });
        out.wakeups.push((now + w.service, slot as u64));
    }

    fn update_levels(&mut self, now: SimTime) {
        let busy = self.busy() as u64;
        self.max_busy = self.max_busy.max(busy);
        let queued = self.queue.len() as u64;
        self.busy.set(now, busy);
        self.queued.set(now, queued);
        self.in_system.set(now, busy + queued);
    }
}

impl Station for QueueStation {
    fn submit(&mut self, now: SimTime, job: HopJob, out: &mut StationOutput) {
        let service = match job.work {
            Work::Service(d) => d,
            // A queueing station has no notion of tokens; validation never routes an
            // LLM hop here, and if one arrives anyway it is served in zero time.
            Work::Llm(_) => SimDuration::ZERO,
        };
        let w = Waiting {
            id: job.id,
            service,
            submitted: now,
        };
        if self.has_free_server() {
            self.start(now, w, out);
        } else {
            self.queue.push_back(w);
        }
        self.update_levels(now);
    }

    fn wake(&mut self, now: SimTime, token: u64, out: &mut StationOutput) {
        let slot = token as usize;
        if let Some(done) = self.slots.get_mut(slot).and_then(Option::take) {
            let busy = now - done.started;
            out.done.push(HopDone {
                id: done.id,
                submitted: done.submitted,
                started: done.started,
                finished: now,
                busy,
                usd: busy.as_nanos() as f64 * self.usd_per_server_ns,
                llm: None,
            });
            self.free.push(slot as u32);
            if let Some(next) = self.queue.pop_front() {
                self.start(now, next, out);
            }
            self.update_levels(now);
        }
    }

    fn begin_measurement(&mut self, now: SimTime) {
        self.busy.reset(now);
        self.in_system.reset(now);
        self.queued.reset(now);
        self.window_start = now;
    }

    fn report(&mut self, now: SimTime) -> StationReport {
        let window = now - self.window_start;
        let unlimited = self.servers == u32::MAX;
        StationReport {
            // An unlimited station has no capacity to be a fraction of.
            servers: if unlimited { 0 } else { self.servers },
            window,
            busy_server_s: self.busy.area_s(now),
            in_system_s: self.in_system.area_s(now),
            queued_s: self.queued.area_s(now),
            usd_capacity: if unlimited {
                0.0
            } else {
                self.servers as f64 * self.usd_per_server_hour * window.as_secs_f64() / 3600.0
            },
            in_system_now: self.in_system.level(),
            max_busy: self.max_busy,
        }
    }
}
