//! Keeps a sink running in place. A sink's runner (the task that writes to the destination)
//! gets its batches through a one-slot relay from the sink's queue, which the supervisor owns;
//! when the runner panics, the supervisor counts and shows it, reopens the sink with backoff
//! and starts a new runner on the same queue. The rest of the host never notices beyond the
//! sink's health: everything still queued stays queued. What the panicked runner held and had
//! not flushed was never acknowledged, so its sources deliver it again (or it stays in the
//! sink's durable buffer).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

use super::{SinkError, SinkHealth};
use crate::retry::Backoff;

/// Opens the sink afresh and spawns a runner that reads from the given receiver until it
/// closes.
pub(crate) type SpawnRunner<T> =
    Box<dyn FnMut(mpsc::Receiver<T>) -> Result<JoinHandle<()>, SinkError> + Send>;

/// The first restart waits this long, doubling to `RESTART_BACKOFF_MAX` while the runner keeps
/// panicking without making progress in between.
const RESTART_BACKOFF_FIRST: Duration = Duration::from_millis(200);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Starts the sink's first runner (an error here refuses the host's start, like any sink that
/// cannot open) and the supervisor task that keeps it running until `queue` closes.
pub(crate) fn start<T: Send + 'static>(
    name: String,
    queue: mpsc::Receiver<T>,
    health: Arc<SinkHealth>,
    spawn: SpawnRunner<T>,
) -> Result<JoinHandle<()>, SinkError> {
    start_with_backoff(
        name,
        queue,
        health,
        spawn,
        Backoff::new(RESTART_BACKOFF_FIRST, RESTART_BACKOFF_MAX),
    )
}

fn start_with_backoff<T: Send + 'static>(
    name: String,
    queue: mpsc::Receiver<T>,
    health: Arc<SinkHealth>,
    mut spawn: SpawnRunner<T>,
    backoff: Backoff,
) -> Result<JoinHandle<()>, SinkError> {
    let (relay, rx) = mpsc::channel(1);
    let runner = spawn(rx)?;
    Ok(tokio::spawn(
        Supervisor {
            name,
            health,
            spawn,
            backoff,
        }
        .run(queue, relay, runner),
    ))
}

struct Supervisor<T> {
    name: String,
    health: Arc<SinkHealth>,
    spawn: SpawnRunner<T>,
    backoff: Backoff,
}

/// What the supervisor's wait ended with.
enum Woke<T> {
    RunnerEnded(Result<(), JoinError>),
    Queued(Option<T>),
    Relayed(Result<(), T>),
}

impl<T: Send + 'static> Supervisor<T> {
    async fn run(
        mut self,
        mut queue: mpsc::Receiver<T>,
        mut relay: mpsc::Sender<T>,
        mut runner: JoinHandle<()>,
    ) {
        // A batch taken from the queue and not yet handed to a runner: it survives a restart.
        let mut held: Option<T> = None;
        loop {
            let woke = tokio::select! {
                ended = &mut runner => Woke::RunnerEnded(ended),
                next = queue.recv(), if held.is_none() => Woke::Queued(next),
                permit = relay.reserve(), if held.is_some() => {
                    let item = held.take().expect("guarded");
                    match permit {
                        Ok(permit) => {
                            permit.send(item);
                            Woke::Relayed(Ok(()))
                        }
                        Err(_) => Woke::Relayed(Err(item)),
                    }
                }
            };
            match woke {
                Woke::Queued(Some(item)) => held = Some(item),
                Woke::Queued(None) => break,
                Woke::Relayed(Ok(())) => {}
                Woke::RunnerEnded(ended) => (relay, runner) = self.restart(ended).await,
                // The runner let go of its receiver: it is ending; see how.
                Woke::Relayed(Err(item)) => {
                    held = Some(item);
                    let ended = (&mut runner).await;
                    (relay, runner) = self.restart(ended).await;
                }
            }
        }
        // The queue closed (shutdown): let the runner drain and flush what it has.
        drop(relay);
        if let Err(e) = runner.await {
            if e.is_panic() {
                tracing::error!(
                    sink = %self.name,
                    "the sink panicked while draining at shutdown: {}; what it held was not \
                     acknowledged",
                    panic_message(e.into_panic().as_ref())
                );
            }
        }
    }

    /// The runner ended while its queue is open (a panic, or a bug that returned early):
    /// reopens the sink with backoff until a new runner starts, and returns its relay.
    async fn restart(&mut self, ended: Result<(), JoinError>) -> (mpsc::Sender<T>, JoinHandle<()>) {
        let why = match ended {
            Err(e) if e.is_panic() => {
                format!("panicked: {}", panic_message(e.into_panic().as_ref()))
            }
            Err(e) => format!("stopped: {e}"),
            Ok(()) => "stopped although its queue is open".to_string(),
        };
        if self.health.progressed_since_restart() {
            self.backoff.reset();
        }
        self.health.runner_died(&why);
        loop {
            let delay = self.backoff.next_delay();
            tracing::error!(
                sink = %self.name,
                restart = self.backoff.attempts(),
                "the sink's runner {why}; restarting it in {delay:?} (queued batches stay queued; \
                 what it held unflushed was not acknowledged and comes again)"
            );
            tokio::time::sleep(delay).await;
            let (relay, rx) = mpsc::channel(1);
            match (self.spawn)(rx) {
                Ok(runner) => {
                    self.health.runner_restarted();
                    return (relay, runner);
                }
                Err(e) => {
                    self.health.failed(&e);
                    tracing::warn!(sink = %self.name, "reopening the sink failed: {e}");
                }
            }
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A runner that records what it receives and panics on the item `0`.
    fn recording_runner(
        seen: Arc<std::sync::Mutex<Vec<u32>>>,
        spawned: Arc<AtomicUsize>,
    ) -> SpawnRunner<u32> {
        Box::new(move |mut rx: mpsc::Receiver<u32>| {
            spawned.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            Ok(tokio::spawn(async move {
                while let Some(item) = rx.recv().await {
                    if item == 0 {
                        panic!("poison item");
                    }
                    seen.lock().unwrap().push(item);
                }
            }))
        })
    }

    fn fast() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(20))
    }

    #[tokio::test]
    async fn a_panicking_runner_is_restarted_on_the_same_queue() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let spawned = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(SinkHealth::default());
        let (tx, rx) = mpsc::channel(16);
        let task = start_with_backoff(
            "s".into(),
            rx,
            health.clone(),
            recording_runner(seen.clone(), spawned.clone()),
            fast(),
        )
        .unwrap();
        for item in [1, 2, 0, 3, 4, 0, 5] {
            tx.send(item).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        // Items queued behind a poison item reach the next runner.
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert_eq!(spawned.load(Ordering::SeqCst), 3);
        let status = health.snapshot(Duration::from_secs(30));
        assert_eq!(status.runner_restarts, 2);
        assert!(
            status
                .error
                .as_deref()
                .unwrap_or("")
                .contains("poison item"),
            "{status:?}"
        );
    }

    #[tokio::test]
    async fn a_sink_that_cannot_reopen_keeps_retrying_and_shows_it() {
        let health = Arc::new(SinkHealth::default());
        let attempts = Arc::new(AtomicUsize::new(0));
        let a = attempts.clone();
        let spawn: SpawnRunner<u32> = Box::new(move |mut rx: mpsc::Receiver<u32>| {
            if a.fetch_add(1, Ordering::SeqCst) > 0 {
                return Err(SinkError::transient("s", "cannot open"));
            }
            Ok(tokio::spawn(async move {
                let _ = rx.recv().await;
                panic!("first runner dies");
            }))
        });
        let (tx, rx) = mpsc::channel(4);
        let _task = start_with_backoff("s".into(), rx, health.clone(), spawn, fast()).unwrap();
        tx.send(1).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while attempts.load(Ordering::SeqCst) <= 3 {
            assert!(std::time::Instant::now() < deadline, "no reopen attempts");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = health.snapshot(Duration::from_secs(30));
        assert_eq!(status.state, super::super::SinkState::Retrying);
        assert!(status.error.unwrap().contains("cannot open"));
    }
}
