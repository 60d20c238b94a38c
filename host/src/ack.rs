//! Upstream acknowledgment: a source that must confirm what it received (an MQTT message, a
//! Kafka offset) attaches an `Ack` to the batch. Every part of the pipeline that holds any of
//! the batch's samples holds a clone; the callback runs once the last clone is released, i.e.
//! once every sink (and the dead-letter) has durably taken its share. A crash before that
//! means no acknowledgment, so the source redelivers.

use std::sync::{Arc, Mutex};

type Callback = Box<dyn FnOnce() + Send>;

/// Runs its callback when the last clone is dropped.
#[derive(Clone)]
pub struct Ack(Arc<AckInner>);

struct AckInner {
    on_done: Mutex<Option<Callback>>,
}

impl Ack {
    pub fn new(on_done: impl FnOnce() + Send + 'static) -> Ack {
        Ack(Arc::new(AckInner {
            on_done: Mutex::new(Some(Box::new(on_done))),
        }))
    }
}

impl Drop for AckInner {
    fn drop(&mut self) {
        let callback = self
            .on_done
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(f) = callback {
            f();
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ack({} holders)", Arc::strong_count(&self.0))
    }
}

/// Batches compare by content; who acknowledges them is not part of it.
impl PartialEq for Ack {
    fn eq(&self, _: &Ack) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn fires_once_when_the_last_holder_lets_go() {
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        let a = Ack::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
        });
        let b = a.clone();
        let c = b.clone();
        drop(a);
        drop(c);
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        std::thread::spawn(move || drop(b)).join().unwrap();
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }
}
