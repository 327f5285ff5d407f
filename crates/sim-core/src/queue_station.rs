//! The abstract queueing station: `c` identical servers and one queue. This is the
//! teaching model (M/M/c, M/D/1, ...) and the oracle that checks the engine. The queue
//! discipline is a policy (FIFO by default); the server count can change at run time
//! (autoscaling: booting servers are paid for, retiring servers finish their hop first).

use crate::policy::{Fifo, JobMeta, QueueDiscipline};
use crate::station::{
    FirstToken, HopDone, HopJob, JobId, LoadNow, Station, StationOutput, StationReport,
    TimeIntegral, Work,
};
use crate::time::{SimDuration, SimTime};
use std::collections::{BTreeMap, VecDeque};

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
    /// Aborted: its server is free, and the slot waits for its (now empty) wake-up
    /// before it is reused.
    aborted: bool,
}

pub struct QueueStation {
    /// Running servers; `u32::MAX` for an unlimited station (tool without a bulkhead).
    servers: u32,
    booting: u32,
    /// Servers to take out of service as soon as they finish their hop.
    retiring: u32,
    /// Hops in service.
    in_service: u32,
    max_busy: u64,
    usd_per_server_ns: f64,
    usd_per_server_hour: f64,
    discipline: Box<dyn QueueDiscipline>,
    /// The waiting keys in arrival order when the discipline is plain FIFO
    /// (`QueueDiscipline::is_fifo`), kept here instead of behind the `dyn` call.
    fifo: Option<VecDeque<u64>>,
    /// Keys in the discipline (pushed, not yet popped): its `len` without a dynamic call.
    queued_now: usize,
    /// Of `queued_now`, keys of aborted hops (their `waiting` entry is empty; the key is
    /// reused once the discipline pops it).
    aborted_waiting: usize,
    waiting: Vec<Option<Waiting>>,
    free_waiting: Vec<u32>,
    /// Slot per hop in service; the wake token is the slot index. Created lazily so
    /// unlimited stations stay small.
    slots: Vec<Option<InService>>,
    free_slots: Vec<u32>,
    busy: TimeIntegral,
    queued: TimeIntegral,
    /// Running servers over time (for utilisation when the size changes).
    running: TimeIntegral,
    /// Running + booting servers over time (what is paid for).
    provisioned: TimeIntegral,
    resized: bool,
    window_start: SimTime,
    /// TTFT and TPOT of the paid-API calls in the station, reported when they finish.
    api_timings: BTreeMap<JobId, crate::gpu::LlmTimings>,
    /// Report each hop's wait as it starts service ([`QueueStation::with_first_tokens`]).
    first_tokens: bool,
}

impl QueueStation {
    pub fn new(servers: u32, usd_per_server_hour: f64) -> Self {
        Self::with_discipline(servers, usd_per_server_hour, Box::new(Fifo::default()))
    }

    pub fn with_discipline(
        servers: u32,
        usd_per_server_hour: f64,
        discipline: Box<dyn QueueDiscipline>,
    ) -> Self {
        let mut s = QueueStation {
            servers,
            booting: 0,
            retiring: 0,
            in_service: 0,
            max_busy: 0,
            usd_per_server_ns: usd_per_server_hour / 3.6e12,
            usd_per_server_hour,
            fifo: discipline.is_fifo().then(VecDeque::new),
            discipline,
            queued_now: 0,
            aborted_waiting: 0,
            waiting: Vec::new(),
            free_waiting: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            busy: TimeIntegral::default(),
            queued: TimeIntegral::default(),
            running: TimeIntegral::default(),
            provisioned: TimeIntegral::default(),
            resized: false,
            window_start: SimTime::ZERO,
            api_timings: BTreeMap::new(),
            first_tokens: false,
        };
        if servers != u32::MAX {
            s.running.set(SimTime::ZERO, servers as u64);
            s.provisioned.set(SimTime::ZERO, servers as u64);
        }
        s
    }

    /// A station for a downstream system: `limit` calls at once (a bulkhead shared by
    /// every workflow), or unlimited. Tools are paid per call, not per hour.
    pub fn bulkhead(limit: Option<u32>) -> Self {
        Self::new(limit.unwrap_or(u32::MAX), 0.0)
    }

    /// Reports each hop's queue wait when it starts service, as its "first token"
    /// ([`StationOutput::first_tokens`]): the `p99_ttft` autoscaling signal of an
    /// abstract pool, which should not wait for the hop to finish.
    pub fn with_first_tokens(mut self) -> Self {
        self.first_tokens = true;
        self
    }

    fn has_free_server(&self) -> bool {
        self.in_service < self.servers
    }

    fn start(&mut self, now: SimTime, w: Waiting, out: &mut StationOutput) {
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.in_service += 1;
        self.slots[slot as usize] = Some(InService {
            id: w.id,
            submitted: w.submitted,
            started: now,
            aborted: false,
        });
        if self.first_tokens {
            out.first_tokens.push(FirstToken {
                at: now,
                id: w.id,
                ttft: now - w.submitted,
            });
        }
        out.wakeups.push((now + w.service, slot as u64));
    }

    /// Starts waiting hops while servers are free. Inlined: most calls find every
    /// server busy or nothing queued (an empty discipline is not asked).
    #[inline(always)]
    fn fill(&mut self, now: SimTime, out: &mut StationOutput) {
        if self.has_free_server() && self.queued_now > 0 {
            self.start_waiting(now, out);
        }
    }

    #[inline(never)]
    fn start_waiting(&mut self, now: SimTime, out: &mut StationOutput) {
        while self.has_free_server() && self.queued_now > 0 {
            let next = match self.fifo.as_mut() {
                Some(q) => q.pop_front(),
                None => self.discipline.pop(now),
            };
            let Some(key) = next else {
                break;
            };
            self.queued_now = self.queued_now.saturating_sub(1);
            match self.waiting.get_mut(key as usize).and_then(Option::take) {
                Some(w) => {
                    self.free_waiting.push(key as u32);
                    self.start(now, w, out);
                }
                None if self.aborted_waiting > 0 => {
                    self.aborted_waiting -= 1;
                    self.free_waiting.push(key as u32);
                }
                None => {}
            }
        }
    }

    /// A hop left its server: a retiring server leaves, else the next waiting hop
    /// starts.
    #[inline(always)]
    fn server_freed(&mut self, now: SimTime, out: &mut StationOutput) {
        self.in_service -= 1;
        if self.retiring > 0 {
            self.retiring -= 1;
            self.servers -= 1;
        }
        self.fill(now, out);
        self.update_levels(now);
    }

    #[inline]
    fn update_levels(&mut self, now: SimTime) {
        let busy = self.in_service as u64;
        debug_assert_eq!(
            self.queued_now,
            self.fifo
                .as_ref()
                .map_or_else(|| self.discipline.len(), VecDeque::len)
        );
        let queued = (self.queued_now - self.aborted_waiting) as u64;
        self.max_busy = self.max_busy.max(busy);
        // A level left unchanged integrates exactly without being touched (integer
        // area): only changes are written.
        if busy != self.busy.level() {
            self.busy.set(now, busy);
        }
        if queued != self.queued.level() {
            self.queued.set(now, queued);
        }
        // Hops in the system = busy + queued: integrated from those two in `report`.
        // The server count only changes when autoscaling boots or retires a server;
        // a level left unchanged integrates correctly without being touched.
        if self.resized && self.servers != u32::MAX {
            self.running.set(now, self.servers as u64);
            self.provisioned
                .set(now, (self.servers + self.booting) as u64);
        }
    }
}

impl Station for QueueStation {
    fn submit(&mut self, now: SimTime, job: HopJob, out: &mut StationOutput) {
        self.submit_meta(now, job, &JobMeta::default(), out);
    }

    fn submit_meta(&mut self, now: SimTime, job: HopJob, meta: &JobMeta, out: &mut StationOutput) {
        let service = match job.work {
            Work::Service(d) => d,
            Work::Api(call) => {
                self.api_timings.insert(
                    job.id,
                    crate::gpu::LlmTimings {
                        ttft: call.ttft,
                        tpot: call.tpot,
                        ..Default::default()
                    },
                );
                call.service
            }
            // A queueing station has no notion of tokens; validation never routes an
            // LLM hop here, and if one arrives anyway it is served in zero time.
            Work::Llm(_) => SimDuration::ZERO,
        };
        let w = Waiting {
            id: job.id,
            service,
            submitted: now,
        };
        if self.has_free_server() && self.queued_now == 0 {
            self.start(now, w, out);
        } else {
            let key = match self.free_waiting.pop() {
                Some(k) => {
                    self.waiting[k as usize] = Some(w);
                    k
                }
                None => {
                    self.waiting.push(Some(w));
                    (self.waiting.len() - 1) as u32
                }
            };
            match self.fifo.as_mut() {
                Some(q) => q.push_back(key as u64),
                None => self.discipline.push(now, *meta, key as u64),
            }
            self.queued_now += 1;
            self.fill(now, out);
        }
        self.update_levels(now);
    }

    fn wake(&mut self, now: SimTime, token: u64, out: &mut StationOutput) {
        let slot = token as usize;
        if let Some(done) = self.slots.get_mut(slot).and_then(Option::take) {
            if done.aborted {
                // Reported when it was aborted; its server was freed then.
                self.free_slots.push(slot as u32);
                out.stale_wake = true;
                return;
            }
            let busy = now - done.started;
            out.done.push(HopDone {
                id: done.id,
                submitted: done.submitted,
                started: done.started,
                finished: now,
                busy,
                usd: busy.as_nanos() as f64 * self.usd_per_server_ns,
                llm: if self.api_timings.is_empty() {
                    None
                } else {
                    self.api_timings.remove(&done.id)
                },
                refused: None,
            });
            self.free_slots.push(slot as u32);
            self.server_freed(now, out);
        }
    }

    fn reads_job_meta(&self) -> bool {
        // Only the discipline reads it; a plain FIFO kept here does not.
        self.fifo.is_none()
    }

    fn waiting_since(&self, out: &mut Vec<SimTime>) {
        if self.first_tokens {
            out.extend(self.waiting.iter().flatten().map(|w| w.submitted));
        }
    }

    fn load_now(&self) -> Option<LoadNow> {
        Some(LoadNow {
            servers: self.servers - self.retiring,
            booting: self.booting,
            busy: self.in_service as u64,
            queued: (self.queued_now - self.aborted_waiting) as u64,
        })
    }

    fn abort(&mut self, now: SimTime, id: JobId, out: &mut StationOutput) -> bool {
        let finished = |w_submitted: SimTime, started: SimTime, llm| HopDone {
            id,
            submitted: w_submitted,
            started,
            finished: now,
            busy: now - started,
            usd: (now - started).as_nanos() as f64 * self.usd_per_server_ns,
            llm,
            refused: None,
        };
        if let Some(k) = self
            .waiting
            .iter()
            .position(|w| w.is_some_and(|w| w.id == id))
        {
            // Still queued: it leaves its place (the key is reused once popped).
            let Some(w) = self.waiting[k].take() else {
                return false;
            };
            self.aborted_waiting += 1;
            let llm = self.api_timings.remove(&id);
            out.done.push(finished(w.submitted, now, llm));
            self.update_levels(now);
            return true;
        }
        let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.is_some_and(|s| s.id == id && !s.aborted))
        else {
            return false;
        };
        let Some(s) = self.slots[slot].as_mut() else {
            return false;
        };
        s.aborted = true;
        let (submitted, started) = (s.submitted, s.started);
        let llm = self.api_timings.remove(&id);
        out.done.push(finished(submitted, started, llm));
        self.server_freed(now, out);
        true
    }

    fn boot_started(&mut self, now: SimTime) {
        self.booting += 1;
        self.resized = true;
        self.update_levels(now);
    }

    fn boot_finished(&mut self, now: SimTime, out: &mut StationOutput) {
        if self.booting > 0 {
            self.booting -= 1;
            self.servers += 1;
            self.fill(now, out);
            self.update_levels(now);
        }
    }

    fn retire_server(&mut self, now: SimTime, allow_last: bool) {
        self.resized = true;
        if self.servers - self.retiring <= u32::from(!allow_last) {
            return;
        }
        if self.in_service < self.servers - self.retiring {
            // An idle server: gone at once.
            self.servers -= 1;
        } else {
            // All busy: the next server to finish its hop leaves (drain).
            self.retiring += 1;
        }
        self.update_levels(now);
    }

    fn begin_measurement(&mut self, now: SimTime) {
        self.busy.reset(now);
        self.queued.reset(now);
        self.running.reset(now);
        self.provisioned.reset(now);
        self.window_start = now;
    }

    fn report(&mut self, now: SimTime) -> StationReport {
        let window = now - self.window_start;
        let unlimited = self.servers == u32::MAX;
        let provisioned_s = self.provisioned.area_s(now);
        let busy_server_s = self.busy.area_s(now);
        let queued_s = self.queued.area_s(now);
        StationReport {
            // An unlimited station has no capacity to be a fraction of.
            servers: if unlimited { 0 } else { self.servers },
            window,
            busy_server_s,
            in_system_s: busy_server_s + queued_s,
            queued_s,
            usd_capacity: if unlimited {
                0.0
            } else {
                provisioned_s * self.usd_per_server_hour / 3600.0
            },
            in_system_now: self.busy.level() + self.queued.level(),
            max_busy: self.max_busy,
            capacity_server_s: if self.resized {
                self.running.area_s(now)
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, secs: u64) -> HopJob {
        HopJob {
            id: JobId(id),
            work: Work::Service(SimDuration::from_secs(secs)),
        }
    }

    #[test]
    fn an_aborted_hop_leaves_the_queue_or_frees_its_server() {
        // One server at $3.6/h: hop 0 (10 s) runs, hops 1 and 2 wait. Aborting 1 at 2 s
        // takes it off the queue with no service; aborting 0 at 4 s frees the server
        // for 2 at once, charged 4 s; 0's pending wake-up then does nothing, and the
        // slot it held is reused only after it.
        let mut st = QueueStation::new(1, 3.6);
        let mut out = StationOutput::default();
        let t = |s: u64| SimTime(s * 1_000_000_000);
        st.submit(t(0), job(0, 10), &mut out);
        st.submit(t(0), job(1, 10), &mut out);
        st.submit(t(0), job(2, 10), &mut out);
        let wake0 = out.wakeups.pop().expect("hop 0 started");
        assert_eq!(st.load_now().map(|l| (l.busy, l.queued)), Some((1, 2)));
        assert!(st.abort(t(2), JobId(1), &mut out));
        let d1 = out.done.pop().expect("reported");
        assert_eq!(
            (d1.id, d1.started, d1.finished, d1.busy),
            (JobId(1), t(2), t(2), SimDuration::ZERO)
        );
        assert_eq!(st.load_now().map(|l| l.queued), Some(1));
        assert!(st.abort(t(4), JobId(0), &mut out));
        let d0 = out.done.pop().expect("reported");
        assert_eq!((d0.id, d0.busy), (JobId(0), SimDuration::from_secs(4)));
        assert!((d0.usd - 0.004).abs() < 1e-12);
        // Hop 2 started at 4 s (the aborted key was popped and skipped).
        let wake2 = out.wakeups.pop().expect("hop 2 started");
        assert_eq!(wake2.0, t(14));
        assert_ne!(wake2.1, wake0.1, "the aborted hop's slot is not reused yet");
        assert!(!st.abort(t(5), JobId(0), &mut out), "reported once");
        st.wake(wake0.0, wake0.1, &mut out);
        assert!(out.done.is_empty());
        st.wake(wake2.0, wake2.1, &mut out);
        let d2 = out.done.pop().expect("finished");
        assert_eq!((d2.id, d2.started, d2.finished), (JobId(2), t(4), t(14)));
        let rep = st.report(t(14));
        assert!((rep.busy_server_s - 14.0).abs() < 1e-9);
        // Queued: hop 1 from 0 to 2 s, hop 2 from 0 to 4 s.
        assert!((rep.queued_s - (2.0 + 4.0)).abs() < 1e-9, "{rep:?}");
    }
}
