//! Token buckets for the per-tag and global rate limits.

use std::collections::HashMap;
use std::time::Instant;

use super::config::RateLimit;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Bucket {
        Bucket {
            tokens: limit.burst as f64,
            at: now,
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * limit.per_second).min(limit.burst as f64);
        self.at = now;
    }
}

/// The global bucket and one per tag.
pub struct Rates {
    global_limit: RateLimit,
    global: Bucket,
    tags: HashMap<String, Bucket>,
}

/// Which limit a command would break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breach {
    Tag,
    Global,
}

impl Rates {
    pub fn new(global_limit: RateLimit) -> Rates {
        Rates {
            global_limit,
            global: Bucket::full(global_limit, Instant::now()),
            tags: HashMap::new(),
        }
    }

    /// Checks both limits for one command on `tag`; with `take`, uses a token of each.
    pub fn admit(&mut self, tag: &str, limit: RateLimit, take: bool) -> Result<(), Breach> {
        let now = Instant::now();
        let bucket = self
            .tags
            .entry(tag.to_string())
            .or_insert_with(|| Bucket::full(limit, now));
        bucket.refill(limit, now);
        self.global.refill(self.global_limit, now);
        if bucket.tokens < 1.0 {
            return Err(Breach::Tag);
        }
        if self.global.tokens < 1.0 {
            return Err(Breach::Global);
        }
        if take {
            bucket.tokens -= 1.0;
            self.global.tokens -= 1.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_tag_and_the_global_limits_refuse() {
        let tag = RateLimit {
            per_second: 0.001,
            burst: 2,
        };
        let mut r = Rates::new(RateLimit {
            per_second: 0.001,
            burst: 3,
        });
        assert_eq!(r.admit("a", tag, true), Ok(()));
        // A dry run checks without using a token.
        assert_eq!(r.admit("a", tag, false), Ok(()));
        assert_eq!(r.admit("a", tag, true), Ok(()));
        assert_eq!(r.admit("a", tag, true), Err(Breach::Tag));
        assert_eq!(r.admit("b", tag, true), Ok(()));
        assert_eq!(r.admit("c", tag, true), Err(Breach::Global));
    }
}
