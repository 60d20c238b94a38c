//! Honest health of one sink: whether it has work, when it last made progress, whether it is
//! retrying and why, how many samples its destination refused for good and how often its
//! client was rebuilt. The sink's runner updates it; the status, `/ready` and `/metrics` read
//! it (`SinkView`), so no error is retried without showing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{LinkStats, SinkError};
use crate::buffer::{BufferStatus, DurableBuffer};
use crate::model::now_ns;

#[derive(Debug, Default)]
pub struct SinkHealth {
    /// When the sink took work it has not finished (ns since the epoch; 0 when idle).
    busy_since_ns: AtomicU64,
    last_success_ns: AtomicU64,
    retrying: AtomicBool,
    /// Failed attempts (writes, flushes, reconnects) in all.
    retries: AtomicU64,
    /// Samples the destination refused for good (dead-lettered with the sink's name).
    refused_samples: AtomicU64,
    /// Times the client was rebuilt after an error fatal to it.
    client_rebuilds: AtomicU64,
    /// Times the sink's runner was restarted after it panicked.
    runner_restarts: AtomicU64,
    /// `last_success_ns` when the runner last died (progress after it resets the backoff).
    died_at_success_ns: AtomicU64,
    error: Mutex<Option<String>>,
}

impl SinkHealth {
    /// The sink took work (a batch, a buffered record).
    pub fn working(&self) {
        let _ = self.busy_since_ns.compare_exchange(
            0,
            now_ns().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A write or flush succeeded.
    pub fn progressed(&self) {
        self.last_success_ns.store(now_ns(), Ordering::Relaxed);
        if self.retrying.swap(false, Ordering::Relaxed) {
            *self.error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Everything taken is finished.
    pub fn idle(&self) {
        self.busy_since_ns.store(0, Ordering::Relaxed);
    }

    /// An attempt failed and will be retried.
    pub fn failed(&self, error: &SinkError) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.retrying.store(true, Ordering::Relaxed);
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
    }

    pub fn refused(&self, samples: usize) {
        self.refused_samples
            .fetch_add(samples as u64, Ordering::Relaxed);
    }

    pub fn rebuilt(&self) {
        self.client_rebuilds.fetch_add(1, Ordering::Relaxed);
    }

    /// The sink's runner died (`why`: "panicked: …"); it shows as retrying with that error
    /// until a restarted runner makes progress.
    pub fn runner_died(&self, why: &str) {
        self.died_at_success_ns.store(
            self.last_success_ns.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.retrying.store(true, Ordering::Relaxed);
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("the sink's runner {why}"));
    }

    /// A new runner started after the previous one died.
    pub fn runner_restarted(&self) {
        self.runner_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the sink wrote or flushed anything since its runner last died.
    pub fn progressed_since_restart(&self) -> bool {
        self.last_success_ns.load(Ordering::Relaxed)
            > self.died_at_success_ns.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self, stall_after: Duration) -> SinkHealthStatus {
        let now = now_ns();
        let busy_since = self.busy_since_ns.load(Ordering::Relaxed);
        let last = self.last_success_ns.load(Ordering::Relaxed);
        let error = self.error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let retrying = self.retrying.load(Ordering::Relaxed);
        let quiet_s = if busy_since != 0 {
            now.saturating_sub(busy_since.max(last)) as f64 / 1e9
        } else {
            0.0
        };
        let state = if busy_since != 0 && quiet_s >= stall_after.as_secs_f64() {
            SinkState::Stalled
        } else if retrying {
            SinkState::Retrying
        } else if busy_since != 0 {
            SinkState::Working
        } else {
            SinkState::Idle
        };
        SinkHealthStatus {
            state,
            last_success_age_s: (last != 0).then(|| now.saturating_sub(last) as f64 / 1e9),
            no_progress_s: quiet_s,
            error,
            retries: self.retries.load(Ordering::Relaxed),
            refused_samples: self.refused_samples.load(Ordering::Relaxed),
            client_rebuilds: self.client_rebuilds.load(Ordering::Relaxed),
            runner_restarts: self.runner_restarts.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkState {
    /// Nothing to do.
    Idle,
    /// Writing, making progress.
    Working,
    /// The last attempt failed; retrying with backoff.
    Retrying,
    /// Has work and made no progress for `pipeline.stall_after_s`.
    Stalled,
}

impl SinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Idle => "idle",
            SinkState::Working => "working",
            SinkState::Retrying => "retrying",
            SinkState::Stalled => "stalled",
        }
    }
}

/// A point-in-time view of `SinkHealth`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SinkHealthStatus {
    pub state: SinkState,
    /// Seconds since the last successful write or flush (None: none yet).
    pub last_success_age_s: Option<f64>,
    /// Seconds the sink has had work without progress.
    pub no_progress_s: f64,
    /// The error of the failing attempt, while retrying.
    pub error: Option<String>,
    pub retries: u64,
    pub refused_samples: u64,
    pub client_rebuilds: u64,
    /// Times the sink's runner was restarted in place after it panicked.
    #[serde(default)]
    pub runner_restarts: u64,
}

impl SinkHealthStatus {
    /// Why this sink makes the host not ready, if it does.
    pub fn not_ready_reason(&self, sink: &str) -> Option<String> {
        match self.state {
            SinkState::Stalled => Some(format!(
                "sink `{sink}` made no progress for {:.0} s while it has work{}",
                self.no_progress_s,
                self.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
            SinkState::Retrying => Some(format!(
                "sink `{sink}` is retrying: {}",
                self.error.as_deref().unwrap_or("unknown error")
            )),
            _ => None,
        }
    }
}

/// What the status reads of a running sink.
pub struct SinkView {
    pub written: Arc<AtomicU64>,
    pub health: Arc<SinkHealth>,
    pub buffer: Option<Arc<DurableBuffer>>,
    pub link: Option<Arc<LinkStats>>,
    pub stall_after: Duration,
}

impl SinkView {
    pub fn new(written: Arc<AtomicU64>) -> SinkView {
        SinkView {
            written,
            health: Arc::default(),
            buffer: None,
            link: None,
            stall_after: Duration::from_secs(30),
        }
    }

    pub fn status(&self) -> super::SinkStatus {
        let link = self.link.as_deref();
        let get =
            |f: fn(&LinkStats) -> &AtomicU64| link.map_or(0, |l| f(l).load(Ordering::Relaxed));
        let buffer: Option<BufferStatus> = self.buffer.as_ref().map(|b| b.status());
        super::SinkStatus {
            written: self.written.load(Ordering::Relaxed),
            health: self.health.snapshot(self.stall_after),
            connected: link.map(|l| l.connected.load(Ordering::Relaxed)),
            reconnects: get(|l| &l.reconnects),
            published_messages: get(|l| &l.published),
            refused_by_broker: get(|l| &l.refused),
            deduplicated: get(|l| &l.deduplicated),
            corrections: get(|l| &l.corrections),
            buffer,
        }
    }
}

impl std::fmt::Debug for SinkView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkView")
            .field("buffered", &self.buffer.is_some())
            .field("link", &self.link)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_sink_without_progress_is_stalled_and_says_why() {
        let h = SinkHealth::default();
        assert_eq!(h.snapshot(Duration::from_secs(30)).state, SinkState::Idle);
        h.working();
        assert_eq!(
            h.snapshot(Duration::from_secs(30)).state,
            SinkState::Working
        );
        h.failed(&SinkError::Transient {
            sink: "pg".into(),
            message: "connection refused".into(),
        });
        let s = h.snapshot(Duration::from_secs(30));
        assert_eq!(s.state, SinkState::Retrying);
        assert!(s
            .not_ready_reason("pg")
            .unwrap()
            .contains("connection refused"));
        std::thread::sleep(Duration::from_millis(20));
        let s = h.snapshot(Duration::from_millis(10));
        assert_eq!(s.state, SinkState::Stalled);
        assert!(s.not_ready_reason("pg").unwrap().contains("no progress"));
        h.progressed();
        h.idle();
        let s = h.snapshot(Duration::from_millis(10));
        assert_eq!(s.state, SinkState::Idle);
        assert_eq!(s.error, None);
        assert_eq!(s.retries, 1);
        assert_eq!(s.not_ready_reason("pg"), None);
    }
}
