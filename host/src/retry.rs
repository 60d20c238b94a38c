//! One retry schedule for every reconnect and every retried write in the host: exponential
//! backoff from `first` doubling to `max`, with jitter so a plant's gateways do not retry in
//! step after a shared outage. `reset` after a success.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    attempts: u32,
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s: the sinks' write retries.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            next: first,
            attempts: 0,
        }
    }

    /// The pause before the next attempt: the current step plus up to half of it again as
    /// jitter; the step then doubles (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        self.attempts += 1;
        step + Duration::from_millis(jitter_ms(step.as_millis() as u64 / 2))
    }

    /// Sleeps for `next_delay`.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn reset(&mut self) {
        self.next = self.first;
        self.attempts = 0;
    }
}

/// A pseudo-random number in `0..=max_ms` (good enough to spread retries; not for security).
fn jitter_ms(max_ms: u64) -> u64 {
    if max_ms == 0 {
        return 0;
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() % (max_ms + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
        for (d, step) in d.iter().zip([100u64, 200, 400, 400]) {
            assert!(*d >= Duration::from_millis(step), "{d:?} < {step} ms");
            assert!(
                *d <= Duration::from_millis(step + step / 2),
                "{d:?} > 1.5 × {step} ms"
            );
        }
        assert_eq!(b.attempts(), 4);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= Duration::from_millis(150));
    }
}
