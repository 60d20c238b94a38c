//! Metering of plugin calls: a latency histogram per plane (its sum is the time spent inside
//! the plugin: on the chain's dedicated thread, the plugin's CPU use), the Wasm fuel the calls
//! used, the instance's linear memory, and failed calls by kind. One `CallMeter` per
//! stage (and one per shadow), shared by every instance the stage makes; lock-free, so the
//! chain thread records without waiting for a scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::CallError;

/// Upper bounds (seconds) of the call-latency buckets: 10 µs to 1 s. A 30 k-tag batch through
/// a sample-plane plugin takes 50–500 µs here; the CPU budget per call is 100 ms by default.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 1.0,
];

/// Which plane of the contract a call belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// `describe`, `init`, `on-tags`.
    Tag,
    /// `on-batch`.
    Sample,
}

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Calls per bucket (not cumulative); the last one counts calls above the last bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_S
            .iter()
            .zip(&self.buckets)
            .map(|(&b, n)| (b, n.load(Ordering::Relaxed)))
            .collect();
        buckets.push((
            f64::INFINITY,
            self.buckets[LATENCY_BUCKETS_S.len()].load(Ordering::Relaxed),
        ));
        HistogramSnapshot {
            // From the buckets read, so `count` always equals the `+Inf` bucket.
            count: buckets.iter().map(|b| b.1).sum(),
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

/// A histogram as read at one moment.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_s: f64,
    /// (upper bound in seconds, calls in this bucket — not cumulative); the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl HistogramSnapshot {
    /// The smallest bucket bound at or below which `q` (0..1) of the calls fell.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q * self.count as f64).ceil() as u64;
        let mut seen = 0;
        for &(bound, n) in &self.buckets {
            seen += n;
            if seen >= want {
                return Some(bound);
            }
        }
        None
    }
}

/// Kinds of failed calls, as metrics label them.
pub const FAILURE_KINDS: [&str; 6] = [
    "cpu-limit",
    "memory-limit",
    "trap",
    "malformed",
    "plugin-error",
    "poisoned",
];

fn kind_index(e: &CallError) -> usize {
    match e {
        CallError::CpuLimit(_) => 0,
        CallError::MemoryLimit { .. } => 1,
        CallError::Trap(_) => 2,
        CallError::Malformed(_) => 3,
        CallError::Plugin(_) => 4,
        CallError::Poisoned => 5,
    }
}

/// Everything metered about one stage's plugin calls.
#[derive(Debug, Default)]
pub struct CallMeter {
    pub tag_plane: LatencyHistogram,
    pub sample_plane: LatencyHistogram,
    fuel: AtomicU64,
    memory_bytes: AtomicU64,
    failures: [AtomicU64; FAILURE_KINDS.len()],
}

/// What one call cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallCost {
    pub wall: Duration,
    /// Fuel consumed (fuel mode only; 0 in epoch mode).
    pub fuel: u64,
    /// Linear memory of the instance after the call.
    pub memory_bytes: usize,
}

impl CallMeter {
    pub fn record(&self, plane: Plane, cost: CallCost) {
        match plane {
            Plane::Tag => self.tag_plane.observe(cost.wall),
            Plane::Sample => self.sample_plane.observe(cost.wall),
        }
        self.fuel.fetch_add(cost.fuel, Ordering::Relaxed);
        self.memory_bytes
            .store(cost.memory_bytes as u64, Ordering::Relaxed);
    }

    pub fn record_failure(&self, e: &CallError) {
        self.failures[kind_index(e)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MeterSnapshot {
        MeterSnapshot {
            tag_plane: self.tag_plane.snapshot(),
            sample_plane: self.sample_plane.snapshot(),
            fuel: self.fuel.load(Ordering::Relaxed),
            memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
            failures: FAILURE_KINDS
                .iter()
                .zip(&self.failures)
                .map(|(k, n)| (k.to_string(), n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// A meter as read at one moment (part of the stage status).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct MeterSnapshot {
    pub tag_plane: HistogramSnapshot,
    pub sample_plane: HistogramSnapshot,
    /// Wasm fuel consumed (only with `cpu_limit = "fuel"`).
    pub fuel: u64,
    /// Linear memory of the current instance after its last call.
    pub memory_bytes: u64,
    /// Failed calls by kind (see `FAILURE_KINDS`).
    pub failures: Vec<(String, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_each_call_in_its_bucket_and_sums() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(2));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets.len(), LATENCY_BUCKETS_S.len() + 1);
        assert_eq!(s.buckets[0], (0.000_01, 1));
        assert_eq!(s.buckets[2], (0.000_05, 1));
        assert_eq!(s.buckets[8], (0.005, 1));
        assert_eq!(s.buckets.last().unwrap(), &(f64::INFINITY, 1));
        assert!((s.sum_s - 2.003_035).abs() < 1e-9, "{}", s.sum_s);
        assert_eq!(s.quantile_bound(0.5), Some(0.000_05));
        assert_eq!(s.quantile_bound(1.0), Some(f64::INFINITY));
    }

    #[test]
    fn failures_are_counted_by_kind() {
        let m = CallMeter::default();
        m.record_failure(&CallError::CpuLimit("x".into()));
        m.record_failure(&CallError::CpuLimit("y".into()));
        m.record_failure(&CallError::Trap("t".into()));
        let s = m.snapshot();
        assert_eq!(s.failures[0], ("cpu-limit".into(), 2));
        assert_eq!(s.failures[2], ("trap".into(), 1));
        assert_eq!(s.failures[1].1, 0);
    }
}
