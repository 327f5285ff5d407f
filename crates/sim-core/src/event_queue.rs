//! The future-event list, keyed by (time, insertion sequence).
//!
//! Ties are broken by the order in which events were scheduled: two events at the same
//! nanosecond run first-in first-out. This is what makes a run reproducible without any
//! dependence on heap internals or on the event payload.
//!
//! Keys are unique, so any correct priority queue pops the same sequence. A short list
//! (a queueing model has a handful of events pending) is kept sorted, the earliest last:
//! a pop is a `Vec::pop` and a push an insertion-sort step. Past [`SMALL_MAX`] pending
//! events the list becomes a binary heap, and back below [`SMALL_MIN`].

use crate::time::SimTime;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Entry<E> {
    /// (time << 64) | seq: one integer comparison orders by time, then sequence.
    key: u128,
    event: E,
}

impl<E> Entry<E> {
    fn time(&self) -> SimTime {
        SimTime((self.key >> 64) as u64)
    }
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Entry<E> {
    // Reversed so that std's max-heap pops the earliest (time, seq) first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key)
    }
}

/// Pending events above which the sorted list turns into a heap.
const SMALL_MAX: usize = 24;
/// Pending events below which the heap turns back into a sorted list.
const SMALL_MIN: usize = 8;

/// Pending events, popped in (time, insertion sequence) order.
pub struct EventQueue<E> {
    /// Used while few events are pending: sorted by key, descending (the earliest last).
    small: Vec<Entry<E>>,
    /// Used (and `small` empty) while many are.
    heap: BinaryHeap<Entry<E>>,
    large: bool,
    next_seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> EventQueue<E> {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    pub fn with_capacity(n: usize) -> Self {
        EventQueue {
            small: Vec::with_capacity(n.min(SMALL_MAX + 1)),
            heap: BinaryHeap::new(),
            large: false,
            next_seq: 0,
        }
    }

    /// Schedules `event` at `time`; returns its sequence number.
    #[inline]
    pub fn push(&mut self, time: SimTime, event: E) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = ((time.0 as u128) << 64) | seq as u128;
        let entry = Entry { key, event };
        if self.large {
            self.heap.push(entry);
        } else if self.small.len() >= SMALL_MAX {
            // Sorted descending is a valid heap of the reversed order once rebuilt.
            self.small.push(entry);
            self.heap = BinaryHeap::from(std::mem::take(&mut self.small));
            self.large = true;
        } else {
            // Insertion-sort step from the earliest end: the new key is the largest
            // ever issued at its time, so it goes before every earlier event.
            self.small.push(entry);
            let mut i = self.small.len() - 1;
            while i > 0 && self.small[i - 1].key < key {
                self.small.swap(i - 1, i);
                i -= 1;
            }
        }
        seq
    }

    /// Removes and returns the earliest event (FIFO among equal times).
    #[inline]
    pub fn pop(&mut self) -> Option<(SimTime, E)> {
        if !self.large {
            return self.small.pop().map(|e| (e.time(), e.event));
        }
        let e = self.heap.pop();
        if self.heap.len() < SMALL_MIN {
            // Ascending by the reversed order: descending by key, the earliest last.
            self.small = std::mem::take(&mut self.heap).into_sorted_vec();
            self.large = false;
        }
        e.map(|e| (e.time(), e.event))
    }

    pub fn peek_time(&self) -> Option<SimTime> {
        if self.large {
            self.heap.peek().map(Entry::time)
        } else {
            self.small.last().map(Entry::time)
        }
    }

    pub fn len(&self) -> usize {
        self.small.len() + self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of events ever scheduled.
    pub fn scheduled(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_times_run_first_in_first_out() {
        let mut q = EventQueue::new();
        for i in 0..100u32 {
            q.push(SimTime(5), i);
        }
        q.push(SimTime(1), 1000);
        assert_eq!(q.pop(), Some((SimTime(1), 1000)));
        for i in 0..100u32 {
            assert_eq!(q.pop(), Some((SimTime(5), i)));
        }
        assert!(q.pop().is_none());
    }

    #[test]
    fn switching_between_list_and_heap_keeps_the_order() {
        // Grows past SMALL_MAX, shrinks below SMALL_MIN and grows again, pushing while
        // popping; the pops must be exactly the sorted (time, seq) order of what was
        // pending.
        let mut q = EventQueue::new();
        let mut reference = std::collections::BTreeSet::new();
        let mut x: u64 = 7;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let (mut now, mut pushed) = (0u64, 0u64);
        for round in 0..2000u64 {
            let target = if (round / 200) % 2 == 0 { 60 } else { 2 };
            if q.len() < target {
                for _ in 0..3 {
                    let t = now + next() % 50;
                    assert_eq!(q.push(SimTime(t), pushed), pushed);
                    reference.insert((t, pushed));
                    pushed += 1;
                }
            }
            if let Some((t, e)) = q.pop() {
                assert_eq!(Some((t.0, e)), reference.pop_first());
                assert_eq!(q.len(), reference.len());
                now = t.0;
            }
        }
        while let Some((t, e)) = q.pop() {
            assert_eq!(Some((t.0, e)), reference.pop_first());
        }
        assert!(reference.is_empty());
    }

    proptest! {
        #[test]
        fn pops_sorted_by_time_then_sequence(times in proptest::collection::vec(0u64..20, 0..300)) {
            let mut q = EventQueue::new();
            for (i, t) in times.iter().enumerate() {
                q.push(SimTime(*t), i);
            }
            let mut expected: Vec<(u64, usize)> = times.iter().copied().zip(0..).collect();
            expected.sort();
            let got: Vec<(u64, usize)> = std::iter::from_fn(|| q.pop()).map(|(t, i)| (t.0, i)).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
