//! Deduplication of (tag path, source timestamp) keys within a time window, in bounded
//! memory: a set of 64-bit key hashes plus their insertion order; keys older than the window,
//! or beyond `max_keys` (oldest first), are forgotten.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

pub struct Dedup {
    window: Duration,
    max_keys: usize,
    seen: HashSet<u64>,
    order: VecDeque<(Instant, u64)>,
}

/// The key of a sample: a hash of its path and source timestamp (a fixed SipHash; two
/// different samples colliding within the window is a ~n²/2⁶⁴ event).
pub fn key(path: &str, ts_ns: u64) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    path.hash(&mut h);
    ts_ns.hash(&mut h);
    h.finish()
}

impl Dedup {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Dedup {
            window,
            max_keys,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Forgets keys older than the window.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, k)) = self.order.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&k);
        }
    }

    /// Records `key`; false if it was already seen within the window (a duplicate).
    pub fn first_time(&mut self, key: u64, now: Instant) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((now, key));
        while self.order.len() > self.max_keys {
            if let Some((_, k)) = self.order.pop_front() {
                self.seen.remove(&k);
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_repeats_within_the_window_and_stays_bounded() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(10), 3);
        assert!(d.first_time(key("a", 1), t0));
        assert!(!d.first_time(key("a", 1), t0));
        assert!(d.first_time(key("a", 2), t0));
        assert!(d.first_time(key("b", 1), t0));
        assert!(d.first_time(key("c", 1), t0));
        // Bounded: the oldest key was forgotten.
        assert_eq!(d.len(), 3);
        assert!(d.first_time(key("a", 1), t0));
        // Past the window everything is forgotten.
        d.expire(t0 + Duration::from_secs(11));
        assert!(d.is_empty());
        assert!(d.first_time(key("c", 1), t0 + Duration::from_secs(11)));
    }
}
