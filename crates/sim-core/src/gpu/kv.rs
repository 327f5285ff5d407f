//! Paged KV cache of one replica: fixed-size blocks with reference counts, and a prefix
//! cache in the manner of vLLM's automatic prefix caching.
//!
//! A block is in exactly one of three states:
//! - *used*: referenced by at least one running sequence;
//! - *evictable*: holds a cached prefix (registered under its chained prefix hash) that
//!   nobody references; reusable by a later request until evicted, least recently
//!   released first;
//! - *free*: holds nothing worth keeping.
//!
//! `used + evictable + free == capacity` at all times. Allocation takes a free block
//! first and evicts only when none is left, so cached prefixes live as long as possible.
//! Physical block ids never influence results: only counts and the LRU order do.

use super::LlmRequest;
use std::collections::HashMap;

const NIL: u32 = u32::MAX;

/// How much of a prompt's identified prefix is in the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Leading blocks found, consecutively from the first.
    pub blocks: u32,
    /// Of those, blocks nobody references now (taking them shrinks the evictable pool).
    pub evictable: u32,
}

#[derive(Clone, Debug)]
pub struct KvCache {
    capacity: u32,
    refs: Vec<u32>,
    /// Prefix hash of each block, meaningful when `cached[b]`.
    hash: Vec<u64>,
    cached: Vec<bool>,
    /// Doubly linked LRU list of evictable blocks: `lru_head` is evicted first.
    prev: Vec<u32>,
    next: Vec<u32>,
    lru_head: u32,
    lru_tail: u32,
    lru_len: u32,
    /// Free blocks; popped from the back.
    free: Vec<u32>,
    /// Prefix hash -> block. Only looked up, never iterated, so its order is irrelevant.
    index: HashMap<u64, u32>,
    used: u32,
    evictions: u64,
}

impl KvCache {
    pub fn new(capacity: u32) -> Self {
        let n = capacity as usize;
        KvCache {
            capacity,
            refs: vec![0; n],
            hash: vec![0; n],
            cached: vec![false; n],
            prev: vec![NIL; n],
            next: vec![NIL; n],
            lru_head: NIL,
            lru_tail: NIL,
            lru_len: 0,
            free: (0..capacity).rev().collect(),
            index: HashMap::new(),
            used: 0,
            evictions: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }
    /// Blocks referenced by sequences.
    pub fn used(&self) -> u32 {
        self.used
    }
    /// Blocks an allocation can obtain (free, or evictable).
    pub fn available(&self) -> u32 {
        self.free.len() as u32 + self.lru_len
    }
    /// Blocks obtainable without evicting a cached prefix.
    pub fn free_uncached(&self) -> u32 {
        self.free.len() as u32
    }
    /// Cached blocks nobody references.
    pub fn evictable(&self) -> u32 {
        self.lru_len
    }
    /// Cached prefixes evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Takes a block for a sequence: a free one, else the least recently released
    /// cached one (forgetting its prefix). None when every block is referenced.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let b = self.lru_head;
                if b == NIL {
                    return None;
                }
                self.lru_unlink(b);
                self.index.remove(&self.hash[b as usize]);
                self.cached[b as usize] = false;
                self.evictions += 1;
                b
            }
        };
        self.refs[b as usize] = 1;
        self.used += 1;
        Some(b)
    }

    /// Drops one reference; an unreferenced block becomes evictable (if it holds a
    /// cached prefix, as the most recently used) or free.
    pub fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refs[i] > 0, "release of an unreferenced block");
        if self.refs[i] == 0 {
            return;
        }
        self.refs[i] -= 1;
        if self.refs[i] == 0 {
            self.used -= 1;
            if self.cached[i] {
                self.lru_push_tail(b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// The cached block holding this prefix hash, if any. Does not touch the LRU order.
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        self.index.get(&hash).copied()
    }

    /// Counts the leading blocks of `ids` present in the cache. Read-only.
    pub fn match_prefix(&self, ids: &[u64]) -> PrefixMatch {
        let mut m = PrefixMatch::default();
        for &h in ids {
            let Some(b) = self.lookup(h) else { break };
            m.blocks += 1;
            if self.refs[b as usize] == 0 {
                m.evictable += 1;
            }
        }
        m
    }

    /// References a cached block found by [`KvCache::lookup`] (a prefix hit).
    pub fn acquire(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            self.lru_unlink(b);
            self.used += 1;
        }
        self.refs[i] += 1;
    }

    /// Records that a referenced block now holds the prefix `hash`. Returns false (and
    /// leaves the block uncached) when another block already holds that prefix.
    pub fn register(&mut self, b: u32, hash: u64) -> bool {
        let i = b as usize;
        if self.cached[i] || self.index.contains_key(&hash) {
            return false;
        }
        self.index.insert(hash, b);
        self.hash[i] = hash;
        self.cached[i] = true;
        true
    }

    fn lru_unlink(&mut self, b: u32) {
        let i = b as usize;
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.lru_head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.lru_tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.lru_len -= 1;
    }

    fn lru_push_tail(&mut self, b: u32) {
        let i = b as usize;
        self.prev[i] = self.lru_tail;
        self.next[i] = NIL;
        if self.lru_tail == NIL {
            self.lru_head = b;
        } else {
            self.next[self.lru_tail as usize] = b;
        }
        self.lru_tail = b;
        self.lru_len += 1;
    }

    /// Checks every accounting invariant; for tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let used = self.refs.iter().filter(|&&r| r > 0).count() as u32;
        if used != self.used {
            return Err(format!("used {} but {} blocks referenced", self.used, used));
        }
        let evictable = (0..self.capacity as usize)
            .filter(|&i| self.refs[i] == 0 && self.cached[i])
            .count() as u32;
        if evictable != self.lru_len {
            return Err(format!(
                "{} evictable but LRU holds {}",
                evictable, self.lru_len
            ));
        }
        if self.used + self.lru_len + self.free.len() as u32 != self.capacity {
            return Err(format!(
                "used {} + evictable {} + free {} != capacity {}",
                self.used,
                self.lru_len,
                self.free.len(),
                self.capacity
            ));
        }
        if self
            .free
            .iter()
            .any(|&b| self.refs[b as usize] > 0 || self.cached[b as usize])
        {
            return Err("a free block is referenced or cached".into());
        }
        let cached = self.cached.iter().filter(|&&c| c).count();
        if cached != self.index.len() {
            return Err(format!(
                "{} cached blocks, {} indexed",
                cached,
                self.index.len()
            ));
        }
        let mut n = 0;
        let mut b = self.lru_head;
        while b != NIL {
            n += 1;
            if n > self.capacity {
                return Err("LRU list has a cycle".into());
            }
            b = self.next[b as usize];
        }
        if n != self.lru_len {
            return Err(format!(
                "LRU list has {n} entries, length says {}",
                self.lru_len
            ));
        }
        Ok(())
    }
}

/// Mixes two words into a well-spread 64-bit hash (splitmix64 finaliser). Stable across
/// platforms and Rust versions, unlike `std`'s hashers.
#[inline]
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Root of every prefix chain, so that no block hash is a raw input value.
const CHAIN_ROOT: u64 = 0x6b76_2d70_7265_6669; // "kv-prefi"

/// Chained prefix hashes of the identifiable full KV blocks of a prompt of
/// `prompt_tokens` tokens: block i's hash covers the identity of blocks 0..=i.
///
/// With explicit `block_hashes` (one per `hash_block_tokens` tokens, as Mooncake traces
/// carry) a KV block of `block_size` tokens is identified by the hash of the hash block
/// holding its last token plus its own index, so a 512-token hash block maps onto 32
/// KV blocks of 16. Otherwise the first `shared_prefix_tokens` are identified by
/// `prefix_group` and the rest of the prompt is unique. Only full blocks are identified.
pub fn prefix_block_ids(req: &LlmRequest, prompt_tokens: u32, block_size: u32, out: &mut Vec<u64>) {
    out.clear();
    let bs = block_size.max(1) as u64;
    let prompt = prompt_tokens as u64;
    let mut parent = CHAIN_ROOT;
    match &req.block_hashes {
        Some(hashes) if req.hash_block_tokens > 0 => {
            let h = req.hash_block_tokens as u64;
            let covered = prompt.min(hashes.len() as u64 * h);
            for i in 0..covered / bs {
                let last_token = (i + 1) * bs - 1;
                let Some(&hb) = hashes.get((last_token / h) as usize) else {
                    break;
                };
                parent = mix(parent, mix(hb, i));
                out.push(parent);
            }
        }
        _ => {
            let shared = (req.shared_prefix_tokens as u64).min(prompt);
            let group = mix(req.prefix_group, 0x7368_6172_6564); // "shared"
            for i in 0..shared / bs {
                parent = mix(parent, mix(group, i));
                out.push(parent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with(capacity: u32, hashes: &[u64]) -> (KvCache, Vec<u32>) {
        let mut kv = KvCache::new(capacity);
        let blocks: Vec<u32> = hashes
            .iter()
            .map(|&h| {
                let b = kv.allocate().unwrap();
                assert!(kv.register(b, h));
                b
            })
            .collect();
        (kv, blocks)
    }

    #[test]
    fn allocation_and_release_keep_counts() {
        let mut kv = KvCache::new(4);
        let a: Vec<u32> = (0..4).map(|_| kv.allocate().unwrap()).collect();
        assert_eq!(kv.allocate(), None);
        assert_eq!(kv.used(), 4);
        for b in a {
            kv.release(b);
        }
        assert_eq!(kv.used(), 0);
        assert_eq!(kv.available(), 4);
        kv.check_invariants().unwrap();
    }

    #[test]
    fn evicts_least_recently_released_first() {
        let (mut kv, blocks) = cache_with(3, &[10, 20, 30]);
        // Released in order 20, 30, 10: 20 is the oldest.
        kv.release(blocks[1]);
        kv.release(blocks[2]);
        kv.release(blocks[0]);
        assert_eq!(kv.evictable(), 3);
        // A hit on 30 takes it out of the LRU; releasing it again makes it the newest.
        let b30 = kv.lookup(30).unwrap();
        kv.acquire(b30);
        kv.release(b30);
        let _ = kv.allocate().unwrap();
        assert!(kv.lookup(20).is_none(), "20 was least recently released");
        assert!(kv.lookup(10).is_some() && kv.lookup(30).is_some());
        let _ = kv.allocate().unwrap();
        assert!(kv.lookup(10).is_none());
        assert!(kv.lookup(30).is_some());
        assert_eq!(kv.evictions(), 2);
        kv.check_invariants().unwrap();
    }

    #[test]
    fn prefix_match_counts_consecutive_hits() {
        let (mut kv, blocks) = cache_with(4, &[1, 2, 3]);
        kv.release(blocks[2]);
        assert_eq!(
            kv.match_prefix(&[1, 2, 3, 4]),
            PrefixMatch {
                blocks: 3,
                evictable: 1
            }
        );
        assert_eq!(
            kv.match_prefix(&[1, 9, 3]),
            PrefixMatch {
                blocks: 1,
                evictable: 0
            }
        );
        // A second block with an already-cached hash stays unique.
        let b = kv.allocate().unwrap();
        assert!(!kv.register(b, 1));
        kv.check_invariants().unwrap();
    }

    #[test]
    fn mooncake_hash_blocks_map_onto_kv_blocks() {
        let req = |hashes: Vec<u64>, input: u32| LlmRequest {
            input_tokens: input,
            output_tokens: 1,
            shared_prefix_tokens: 0,
            prefix_group: 0,
            block_hashes: Some(hashes.into()),
            hash_block_tokens: 512,
            itl_group: None,
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        prefix_block_ids(&req(vec![7, 8, 9], 1500), 1500, 16, &mut a);
        prefix_block_ids(&req(vec![7, 8, 5], 1536), 1536, 16, &mut b);
        assert_eq!(a.len(), 1500 / 16);
        assert_eq!(b.len(), 96);
        // The first two hash blocks (64 KV blocks) agree, the third differs.
        assert_eq!(a[..64], b[..64]);
        assert_ne!(a[64], b[64]);
        // Shared-prefix identity: full blocks only.
        let shared = LlmRequest {
            input_tokens: 100,
            output_tokens: 1,
            shared_prefix_tokens: 40,
            prefix_group: 3,
            block_hashes: None,
            hash_block_tokens: 0,
            itl_group: None,
        };
        prefix_block_ids(&shared, 100, 16, &mut a);
        assert_eq!(a.len(), 2);
    }
}
