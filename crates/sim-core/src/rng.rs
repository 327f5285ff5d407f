//! Named random streams. One master seed per scenario; every component (a workflow
//! class, a tool, a replica) draws from its own stream derived from (seed, stable name),
//! so adding a component or changing a policy never shifts another component's draws
//! (common random numbers across compared variants).
//!
//! Generators: ChaCha8 (`rand_chacha`) for component streams; Xoshiro256++ for the
//! per-workflow streams, which are created once per workflow and must be cheap to seed
//! (written out here, the same numbers as `rand_xoshiro`'s, pinned by a test). Both are specified by their algorithms and value-stable
//! across crate versions. The name hash is FNV-1a 64, written out here so that it can
//! never change under us (std's `DefaultHasher` is explicitly unstable).

use rand::SeedableRng;
use rand::TryRng;
use rand_chacha::ChaCha8Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use std::convert::Infallible;

/// The generator every named component stream uses.
pub type SimRng = ChaCha8Rng;

/// The generator of one workflow's own draws (tokens, service times, branch counts):
/// Xoshiro256++, the same numbers as `rand_xoshiro::Xoshiro256PlusPlus` seeded with
/// the same 256 bits (pinned by a test), built from four words directly: a stream is
/// seeded once per workflow and once per model hop, and going through
/// `from_seed`'s bytes cost about as much as the SplitMix64 steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowRng {
    s: [u64; 4],
}

impl WorkflowRng {
    /// The generator `Xoshiro256PlusPlus::from_seed` builds from these words as
    /// little-endian bytes (including its replacement of the all-zero seed).
    #[inline]
    pub fn from_words(s: [u64; 4]) -> Self {
        if s == [0; 4] {
            return Self::zero_seed();
        }
        WorkflowRng { s }
    }

    #[cold]
    fn zero_seed() -> Self {
        let bytes = Xoshiro256PlusPlus::from_seed([0; 32]).state();
        let mut s = [0u64; 4];
        for (w, b) in s.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(b);
            *w = u64::from_le_bytes(le);
        }
        WorkflowRng { s }
    }
}

impl TryRng for WorkflowRng {
    type Error = Infallible;

    #[inline]
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        // As rand_xoshiro: the upper bits (the lowest have linear dependencies).
        self.try_next_u64().map(|x| (x >> 32) as u32)
    }

    #[inline]
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        Ok(result)
    }

    #[inline]
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Infallible> {
        rand::rand_core::utils::fill_bytes_via_next_word(dest, || self.try_next_u64())
    }
}

/// The stream of workflow number `n` of a class whose work seed is `class_seed`: the
/// same workflow draws the same numbers whatever order the simulator serves it in.
#[inline]
pub fn workflow_stream(class_seed: u64, n: u64) -> WorkflowRng {
    let mut state = class_seed ^ n.wrapping_mul(0xd1b5_4a32_d192_ed03);
    // Four SplitMix64 outputs as the 256-bit seed (written out rather than looped:
    // this runs once per workflow and once per model hop).
    let (a, b, c, d) = (
        splitmix64(&mut state),
        splitmix64(&mut state),
        splitmix64(&mut state),
        splitmix64(&mut state),
    );
    WorkflowRng::from_words([a, b, c, d])
}

/// FNV-1a, 64-bit: a stable hash of a stream name.
pub fn stable_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64 step, used to spread (seed, name hash) into a 256-bit ChaCha key.
#[inline]
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Derives independent, reproducible streams from one master seed.
#[derive(Clone, Copy, Debug)]
pub struct StreamFactory {
    master_seed: u64,
}

impl StreamFactory {
    pub fn new(master_seed: u64) -> Self {
        StreamFactory { master_seed }
    }

    pub fn master_seed(&self) -> u64 {
        self.master_seed
    }

    /// The stream for a component, e.g. `"class/chat/arrivals"`.
    pub fn stream(&self, name: &str) -> SimRng {
        let mut state = self.master_seed ^ stable_hash(name).rotate_left(17);
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        ChaCha8Rng::from_seed(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngExt};

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let f = StreamFactory::new(42);
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(f.stream("a"), |r, _: u64| Some(r.random::<u64>()))
            .collect();
        let a2: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(f.stream("a"), |r, _: u64| Some(r.random::<u64>()))
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(f.stream("b"), |r, _: u64| Some(r.random::<u64>()))
            .collect();
        let other_seed: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(StreamFactory::new(43).stream("a"), |r, _: u64| {
                Some(r.random::<u64>())
            })
            .collect();
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_ne!(a, other_seed);
    }

    #[test]
    fn workflow_stream_is_xoshiro256plusplus() {
        // The same draws as rand_xoshiro seeded with the same bytes, every method.
        fn reference(class_seed: u64, n: u64) -> Xoshiro256PlusPlus {
            let mut state = class_seed ^ n.wrapping_mul(0xd1b5_4a32_d192_ed03);
            let mut key = [0u8; 32];
            for chunk in key.chunks_mut(8) {
                chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
            }
            Xoshiro256PlusPlus::from_seed(key)
        }
        for (seed, n) in [
            (0u64, 0u64),
            (1, 2),
            (42, 7),
            (u64::MAX, 12345),
            (0xdead, 1 << 40),
        ] {
            let (mut a, mut b) = (workflow_stream(seed, n), reference(seed, n));
            for i in 0..64 {
                assert_eq!(a.random::<u64>(), b.random::<u64>());
                assert_eq!(a.random::<u32>(), b.random::<u32>());
                assert_eq!(a.random::<f64>().to_bits(), b.random::<f64>().to_bits());
                assert_eq!(
                    a.random_range(0..1000u64 + i),
                    b.random_range(0..1000u64 + i)
                );
                let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
                a.fill_bytes(&mut x);
                b.fill_bytes(&mut y);
                assert_eq!(x, y);
            }
        }
        // The all-zero seed is replaced as rand_xoshiro replaces it.
        let mut z = WorkflowRng::from_words([0; 4]);
        let mut r = Xoshiro256PlusPlus::from_seed([0; 32]);
        for _ in 0..16 {
            assert_eq!(z.random::<u64>(), r.random::<u64>());
        }
    }

    #[test]
    fn hash_is_pinned() {
        // FNV-1a test vectors; if these change, every recorded result changes.
        assert_eq!(stable_hash(""), 0xcbf29ce484222325);
        assert_eq!(stable_hash("a"), 0xaf63dc4c8601ec8c);
        let mut r = StreamFactory::new(7).stream("pinned");
        let first: u64 = r.random();
        let mut r2 = StreamFactory::new(7).stream("pinned");
        assert_eq!(first, r2.random::<u64>());
    }
}
