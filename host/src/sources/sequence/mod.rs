//! Upstream accounting at a receiving Ferrule (MQTT and Kafka sources): follows each
//! publisher's sequence numbers (stamped by a sending Ferrule's MQTT or Kafka sink) and finds
//! the messages that never arrived. Per publisher and epoch it keeps the highest number seen
//! and the ranges still missing below it; a missing range is declared a gap once the sequence
//! is `reorder_window` messages past it or it has been missing `reorder_timeout_ms` (so
//! reordering within the in-flight window is not a gap). A number at or below the highest
//! that is not missing is a redelivery. A new epoch (the publisher lost its durable state and
//! numbers from 1 again) is reported as such, not as a gap. The first message seen from a
//! publisher after this process starts sets the baseline. What the check finds is shared with
//! the status (`UpstreamAccounts`), from which `/ready`, the status page and `/metrics` read.

mod config;

pub use config::{SequenceCheck, SequenceConfig};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::now_ns;

/// Epochs remembered per publisher (older ones are forgotten).
const EPOCHS_KEPT: usize = 4;

/// A range of messages that did not arrive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub publisher: String,
    pub epoch: String,
    /// First and last missing sequence number (inclusive).
    pub from: u64,
    pub to: u64,
    /// When it was declared (ns since the Unix epoch).
    pub at_ns: u64,
}

impl Gap {
    pub fn messages(&self) -> u64 {
        self.to - self.from + 1
    }
}

/// What the check knows about one publisher (in the status).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PublisherStatus {
    /// The publisher's current epoch.
    pub epoch: String,
    /// Highest sequence number seen in it.
    pub highest_seq: u64,
    /// Messages taken for the first time, and redeliveries (numbers seen before).
    pub messages: u64,
    pub redelivered: u64,
    /// Gaps declared, and the messages in them.
    pub gaps: u64,
    pub missing_messages: u64,
    /// Messages missing now but not yet declared lost (within the reorder window).
    pub pending_missing: u64,
    /// Epoch changes seen (the publisher lost its durable state).
    pub new_epochs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gap: Option<Gap>,
    /// `/ready` reports the last gap until then (ns since the Unix epoch; 0: not).
    #[serde(default)]
    pub not_ready_until_ns: u64,
}

/// Per publisher, what a source's sequence check found; shared with the status.
#[derive(Debug, Default)]
pub struct UpstreamAccounts {
    publishers: Mutex<BTreeMap<String, PublisherStatus>>,
}

impl UpstreamAccounts {
    pub fn snapshot(&self) -> BTreeMap<String, PublisherStatus> {
        self.publishers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn with<R>(&self, publisher: &str, f: impl FnOnce(&mut PublisherStatus) -> R) -> R {
        let mut p = self.publishers.lock().unwrap_or_else(|e| e.into_inner());
        if !p.contains_key(publisher) {
            p.insert(publisher.to_string(), PublisherStatus::default());
        }
        f(p.get_mut(publisher).expect("inserted above"))
    }
}

/// Why the host is not ready because of an upstream gap (for `/ready`).
pub fn not_ready_reason(
    source: &str,
    publisher: &str,
    p: &PublisherStatus,
    now_ns: u64,
) -> Option<String> {
    let g = p.last_gap.as_ref()?;
    (p.not_ready_until_ns > now_ns).then(|| {
        format!(
            "source `{source}`: upstream gap: publisher `{publisher}` epoch {} lost messages {}..={} ({}); {} lost in total",
            g.epoch,
            g.from,
            g.to,
            g.messages(),
            p.missing_messages
        )
    })
}

/// How a message fits its publisher's sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The first message seen from this publisher: the baseline.
    Baseline,
    /// Next in sequence, ahead of it (what lies between is missing for now), or a missing
    /// one arriving late within the window.
    Fresh,
    /// A number seen before.
    Redelivered,
    /// The first message of an epoch not seen before from a known publisher.
    NewEpoch,
}

/// One epoch of one publisher.
struct Track {
    epoch: String,
    highest: u64,
    /// Missing ranges below `highest`: start → (end, since).
    missing: BTreeMap<u64, (u64, Instant)>,
}

impl Track {
    fn new(epoch: &str, highest: u64) -> Self {
        Track {
            epoch: epoch.to_string(),
            highest,
            missing: BTreeMap::new(),
        }
    }

    fn observe(&mut self, seq: u64, now: Instant) -> Observed {
        if seq > self.highest {
            if seq > self.highest + 1 {
                self.missing.insert(self.highest + 1, (seq - 1, now));
            }
            self.highest = seq;
            return Observed::Fresh;
        }
        let Some((&start, &(end, since))) = self.missing.range(..=seq).next_back() else {
            return Observed::Redelivered;
        };
        if seq > end {
            return Observed::Redelivered;
        }
        // A late one: split its range.
        self.missing.remove(&start);
        if start < seq {
            self.missing.insert(start, (seq - 1, since));
        }
        if seq < end {
            self.missing.insert(seq + 1, (end, since));
        }
        Observed::Fresh
    }

    fn pending(&self) -> u64 {
        self.missing.iter().map(|(s, (e, _))| e - s + 1).sum()
    }

    /// Ranges past the window or the timeout, removed and returned.
    fn expired(&mut self, window: u64, timeout: Duration, now: Instant) -> Vec<(u64, u64)> {
        let due: Vec<u64> = self
            .missing
            .iter()
            .filter(|(_, (end, since))| {
                self.highest.saturating_sub(*end) >= window || now.duration_since(*since) >= timeout
            })
            .map(|(s, _)| *s)
            .collect();
        due.into_iter()
            .filter_map(|s| self.missing.remove(&s).map(|(e, _)| (s, e)))
            .collect()
    }
}

/// The sequence check of one source.
pub struct SequenceChecker {
    source: String,
    config: SequenceConfig,
    publishers: HashMap<String, VecDeque<Track>>,
    accounts: Arc<UpstreamAccounts>,
}

impl SequenceChecker {
    pub fn new(source: &str, config: SequenceConfig, accounts: Arc<UpstreamAccounts>) -> Self {
        SequenceChecker {
            source: source.into(),
            config,
            publishers: HashMap::new(),
            accounts,
        }
    }

    /// Takes message `seq` of `publisher`'s `epoch`; returns how it fits and the gaps now
    /// declared (already counted and logged; the caller dead-letters them).
    pub fn observe(
        &mut self,
        publisher: &str,
        epoch: &str,
        seq: u64,
        now: Instant,
    ) -> (Observed, Vec<Gap>) {
        if !self.publishers.contains_key(publisher) {
            self.publishers.insert(
                publisher.to_string(),
                VecDeque::from([Track::new(epoch, seq)]),
            );
            tracing::info!(source = %self.source, publisher, epoch, seq, "following a publisher's sequence");
            self.accounts.with(publisher, |p| {
                p.epoch = epoch.into();
                p.highest_seq = seq;
                p.messages += 1;
            });
            return (Observed::Baseline, Vec::new());
        }
        let tracks = self.publishers.get_mut(publisher).expect("known publisher");
        let observed = match tracks.iter_mut().find(|t| t.epoch == epoch) {
            Some(t) => t.observe(seq, now),
            None => {
                let previous = tracks.back().map(|t| t.epoch.clone()).unwrap_or_default();
                tracing::warn!(source = %self.source, publisher, epoch, previous_epoch = %previous, seq, "publisher started a new epoch (it lost its durable state and numbers again from 1); not a gap");
                // Numbers below the first one seen may still come (reordering), else they
                // are a gap of the new epoch.
                let mut t = Track::new(epoch, 0);
                t.observe(seq, now);
                tracks.push_back(t);
                if tracks.len() > EPOCHS_KEPT {
                    tracks.pop_front();
                }
                Observed::NewEpoch
            }
        };
        let current = tracks.back().expect("at least one epoch");
        let (cur_epoch, cur_highest) = (current.epoch.clone(), current.highest);
        let pending: u64 = tracks.iter().map(Track::pending).sum();
        self.accounts.with(publisher, |p| {
            match observed {
                Observed::Redelivered => p.redelivered += 1,
                Observed::NewEpoch => {
                    p.new_epochs += 1;
                    p.messages += 1;
                }
                _ => p.messages += 1,
            }
            p.epoch = cur_epoch;
            p.highest_seq = cur_highest;
            p.pending_missing = pending;
        });
        let gaps = self.declare(publisher, now);
        (observed, gaps)
    }

    /// Declares the gaps whose time is up (call periodically: a gap at the end of a quiet
    /// stream is declared by the timeout).
    pub fn tick(&mut self, now: Instant) -> Vec<Gap> {
        let names: Vec<String> = self
            .publishers
            .iter()
            .filter(|(_, t)| t.iter().any(|t| !t.missing.is_empty()))
            .map(|(n, _)| n.clone())
            .collect();
        names.iter().flat_map(|n| self.declare(n, now)).collect()
    }

    fn declare(&mut self, publisher: &str, now: Instant) -> Vec<Gap> {
        let Some(tracks) = self.publishers.get_mut(publisher) else {
            return Vec::new();
        };
        let timeout = Duration::from_millis(self.config.reorder_timeout_ms);
        let mut gaps = Vec::new();
        for t in tracks.iter_mut() {
            for (from, to) in t.expired(self.config.reorder_window, timeout, now) {
                gaps.push(Gap {
                    publisher: publisher.into(),
                    epoch: t.epoch.clone(),
                    from,
                    to,
                    at_ns: now_ns(),
                });
            }
        }
        if gaps.is_empty() {
            return gaps;
        }
        let pending: u64 = tracks.iter().map(Track::pending).sum();
        let hold = self.config.not_ready_s * 1_000_000_000;
        for g in &gaps {
            tracing::warn!(
                source = %self.source,
                publisher = %g.publisher,
                epoch = %g.epoch,
                from = g.from,
                to = g.to,
                missing = g.messages(),
                "upstream gap: messages {}..={} of publisher `{}` never arrived (lost between the publisher and this source: a broker's queue limit, Kafka retention)",
                g.from, g.to, g.publisher
            );
        }
        self.accounts.with(publisher, |p| {
            for g in &gaps {
                p.gaps += 1;
                p.missing_messages += g.messages();
                p.last_gap = Some(g.clone());
                if hold > 0 {
                    p.not_ready_until_ns = g.at_ns + hold;
                }
            }
            p.pending_missing = pending;
        });
        gaps
    }

    /// A dead-letter event for `gap` (reason `upstream-gap`; the range as JSON in `extra`).
    pub fn dead_letter(&self, gap: &Gap) -> crate::model::DeadLetter {
        let detail = format!(
            "publisher `{}` epoch {}: messages {}..={} missing ({})",
            gap.publisher,
            gap.epoch,
            gap.from,
            gap.to,
            gap.messages()
        );
        let range = serde_json::json!({
            "publisher": gap.publisher,
            "epoch": gap.epoch,
            "from": gap.from,
            "to": gap.to,
            "missing": gap.messages(),
        })
        .to_string();
        crate::model::DeadLetter::refused_by_source(
            &self.source,
            "upstream-gap",
            detail,
            gap.publisher.clone(),
            range.as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker(window: u64, timeout_ms: u64) -> (SequenceChecker, Arc<UpstreamAccounts>) {
        let accounts = Arc::new(UpstreamAccounts::default());
        let config = SequenceConfig {
            reorder_window: window,
            reorder_timeout_ms: timeout_ms,
            ..SequenceConfig::default()
        };
        (
            SequenceChecker::new("bridge", config, accounts.clone()),
            accounts,
        )
    }

    #[test]
    fn reordering_within_the_window_and_redeliveries_are_not_gaps() {
        let (mut c, a) = checker(10, 60_000);
        let t = Instant::now();
        assert_eq!(c.observe("edge", "e1", 5, t).0, Observed::Baseline);
        for s in [6, 8, 9, 7, 10, 6, 3] {
            assert!(c.observe("edge", "e1", s, t).1.is_empty(), "{s}");
        }
        let p = &a.snapshot()["edge"];
        assert_eq!((p.gaps, p.missing_messages, p.pending_missing), (0, 0, 0));
        assert_eq!(p.redelivered, 2, "6 again, and 3 from before the baseline");
        assert_eq!(p.highest_seq, 10);
    }

    #[test]
    fn a_gap_is_declared_past_the_window_with_its_range() {
        let (mut c, a) = checker(6, 60_000);
        let t = Instant::now();
        c.observe("edge", "e1", 1, t);
        c.observe("edge", "e1", 2, t);
        // 3..=7 lost; 5 arrives late.
        assert!(c.observe("edge", "e1", 8, t).1.is_empty());
        assert!(c.observe("edge", "e1", 5, t).1.is_empty());
        assert_eq!(a.snapshot()["edge"].pending_missing, 4);
        let mut gaps = Vec::new();
        for s in 9..=13 {
            let (_, g) = c.observe("edge", "e1", s, t);
            if s < 10 {
                assert!(g.is_empty(), "declared before the window passed");
            }
            gaps.extend(g);
        }
        let ranges: Vec<(u64, u64)> = gaps.iter().map(|g| (g.from, g.to)).collect();
        assert_eq!(ranges, vec![(3, 4), (6, 7)]);
        let p = &a.snapshot()["edge"];
        assert_eq!((p.gaps, p.missing_messages, p.pending_missing), (2, 4, 0));
        assert!(not_ready_reason("bridge", "edge", p, now_ns()).is_some());
        assert!(not_ready_reason("bridge", "edge", p, u64::MAX).is_none());
        let letter = c.dead_letter(&gaps[1]);
        assert_eq!(letter.reason, "upstream-gap");
        assert!(letter.detail.unwrap().contains("6..=7"));
    }

    #[test]
    fn a_quiet_stream_declares_its_gap_by_the_timeout() {
        let (mut c, _) = checker(1000, 100);
        let t = Instant::now();
        c.observe("edge", "e1", 1, t);
        c.observe("edge", "e1", 5, t);
        assert!(c.tick(t + Duration::from_millis(50)).is_empty());
        let gaps = c.tick(t + Duration::from_millis(150));
        assert_eq!((gaps[0].from, gaps[0].to), (2, 4));
        assert!(
            c.tick(t + Duration::from_secs(10)).is_empty(),
            "declared once"
        );
    }

    #[test]
    fn a_new_epoch_is_reported_as_such_and_old_epochs_keep_their_numbers() {
        let (mut c, a) = checker(10, 60_000);
        let t = Instant::now();
        c.observe("edge", "e1", 500, t);
        c.observe("edge", "e1", 501, t);
        assert_eq!(c.observe("edge", "e2", 1, t).0, Observed::NewEpoch);
        assert!(c.observe("edge", "e2", 2, t).1.is_empty());
        // A late redelivery from the old epoch is not a gap in the new one.
        assert_eq!(c.observe("edge", "e1", 501, t).0, Observed::Redelivered);
        let p = &a.snapshot()["edge"];
        assert_eq!((p.new_epochs, p.gaps, p.epoch.as_str()), (1, 0, "e2"));
        assert_eq!(p.highest_seq, 2);
        // Publishers are independent.
        assert_eq!(c.observe("other", "x", 90, t).0, Observed::Baseline);
    }
}
