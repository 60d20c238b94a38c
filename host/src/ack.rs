//! Upstream acknowledgment: a source that must confirm what it received (an MQTT message, a
//! Kafka offset) attaches an `Ack` to the batch. Every part of the pipeline that holds any of
//! the batch's samples holds a clone of it and must say `done()` once its share is durably
//! taken (written and flushed by a sink, committed to a buffer, written to the dead-letter).
//! When the last clone goes, the source's callback learns the outcome: `Settled::Done` only if
//! every holder said done; a clone dropped without `done()` — a panicking sink task, a
//! cancelled task, a failed send, a batch left unwritten at shutdown — makes it
//! `Settled::Failed`, and the source does not acknowledge, so the broker or Kafka redelivers.
//! A drop is never a success.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How a batch's acknowledgment ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Every holder said done: the source may acknowledge upstream.
    Done,
    /// At least one holder let go without saying done: do not acknowledge; redeliver.
    Failed,
}

type Callback = Box<dyn FnOnce(Settled) + Send>;

/// One holder's share of a batch's acknowledgment. Clone it for every further holder.
pub struct Ack {
    shared: Arc<AckInner>,
    /// Whether this holder said done.
    settled: AtomicBool,
}

struct AckInner {
    on_settled: Mutex<Option<Callback>>,
    failed: AtomicBool,
}

impl Ack {
    pub fn new(on_settled: impl FnOnce(Settled) + Send + 'static) -> Ack {
        Ack {
            shared: Arc::new(AckInner {
                on_settled: Mutex::new(Some(Box::new(on_settled))),
                failed: AtomicBool::new(false),
            }),
            settled: AtomicBool::new(false),
        }
    }

    /// This holder has durably taken its share. Idempotent; the outcome is known when the last
    /// holder goes.
    pub fn done(&self) {
        self.settled.store(true, Ordering::Release);
    }

    /// This holder could not take its share: the batch is redelivered, whatever the others do.
    pub fn fail(&self) {
        self.shared.failed.store(true, Ordering::Release);
        self.settled.store(true, Ordering::Release);
    }

    /// Holders of this acknowledgment (for tests and diagnostics).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.shared)
    }
}

impl Clone for Ack {
    fn clone(&self) -> Ack {
        Ack {
            shared: self.shared.clone(),
            settled: AtomicBool::new(false),
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Acquire) {
            self.shared.failed.store(true, Ordering::Release);
        }
    }
}

impl Drop for AckInner {
    fn drop(&mut self) {
        let callback = self
            .on_settled
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(f) = callback {
            f(if *self.failed.get_mut() {
                Settled::Failed
            } else {
                Settled::Done
            });
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ack({} holders)", self.holders())
    }
}

/// Batches compare by content; who acknowledges them is not part of it.
impl PartialEq for Ack {
    fn eq(&self, _: &Ack) -> bool {
        true
    }
}

/// Says done for every acknowledgment in `acks` (a sink's flushed batches).
pub fn all_done<'a>(acks: impl IntoIterator<Item = &'a Option<Ack>>) {
    for a in acks.into_iter().flatten() {
        a.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<Settled>>>, Ack) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, Ack::new(move |o| s.lock().unwrap().push(o)))
    }

    #[test]
    fn settles_done_once_when_every_holder_said_done() {
        let (seen, a) = recorder();
        let b = a.clone();
        let c = b.clone();
        a.done();
        drop(a);
        c.done();
        drop(c);
        assert!(seen.lock().unwrap().is_empty());
        std::thread::spawn(move || {
            b.done();
            drop(b)
        })
        .join()
        .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Settled::Done]);
    }

    #[test]
    fn a_holder_dropped_without_done_fails_the_batch() {
        let (seen, a) = recorder();
        let b = a.clone();
        a.done();
        drop(a);
        drop(b); // e.g. a sink task that panicked
        assert_eq!(*seen.lock().unwrap(), vec![Settled::Failed]);
    }

    #[test]
    fn a_panicking_holder_fails_the_batch() {
        let (seen, a) = recorder();
        let b = a.clone();
        let _ = std::thread::spawn(move || {
            let _held = b;
            panic!("sink fault");
        })
        .join();
        a.done();
        drop(a);
        assert_eq!(*seen.lock().unwrap(), vec![Settled::Failed]);
    }

    #[test]
    fn fail_wins_over_done() {
        let (seen, a) = recorder();
        let b = a.clone();
        b.fail();
        drop(b);
        a.done();
        drop(a);
        assert_eq!(*seen.lock().unwrap(), vec![Settled::Failed]);
    }
}
