//! A sink behind the durable store-and-forward buffer (PostgreSQL with `buffer`, Parquet): the
//! writer commits incoming batches to the buffer (which releases their sources'
//! acknowledgments); the forwarder hands the buffered records to the sink strictly in order
//! and removes them once the sink says they are published — for PostgreSQL when a write
//! committed, for Parquet when the file holding them is closed, fsync'd and renamed. After a
//! crash the records not yet removed are handed over again: the sink must be idempotent
//! (PostgreSQL's write is: ON CONFLICT (tag, time) DO NOTHING) or skip what it already
//! published (Parquet records the buffer's sequence range in each file it publishes).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::{RefusedSample, Sink, SinkError, SinkView};
use crate::buffer::DurableBuffer;
use crate::model::{DeadLetterBatch, OutputBatch};
use crate::retry::Backoff;

/// Records read from the buffer per step.
const RECORDS_PER_READ: usize = 8;
/// On shutdown, how long to keep writing the backlog before leaving it for the next start.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a sink that publishes in its own time is asked to (a file past its age).
const PUBLISH_TICK: Duration = Duration::from_millis(200);

/// A destination behind the buffer.
#[async_trait]
pub trait BufferedSink: Send {
    /// Takes buffered record `seq`; returns the samples the destination refused for good.
    async fn write_record(
        &mut self,
        seq: u64,
        batch: &OutputBatch,
    ) -> Result<Vec<RefusedSample>, SinkError>;
    /// Publishes what is due (all of it with `force`); returns the highest seq below which
    /// every record handed over is published (None: nothing yet).
    async fn publish(&mut self, force: bool) -> Result<Option<u64>, SinkError>;
    /// Records at or below this seq were published before the last stop (skipped on replay).
    fn published_before_start(&self) -> Option<u64> {
        None
    }
}

/// A batch-writing `Sink` behind the buffer: each write commits, so every record written is
/// published once the sink has flushed.
pub struct EachWrite {
    sink: Box<dyn Sink>,
    last: Option<u64>,
}

impl EachWrite {
    pub fn new(sink: Box<dyn Sink>) -> EachWrite {
        EachWrite { sink, last: None }
    }
}

#[async_trait]
impl BufferedSink for EachWrite {
    async fn write_record(
        &mut self,
        seq: u64,
        batch: &OutputBatch,
    ) -> Result<Vec<RefusedSample>, SinkError> {
        let refused = self.sink.write(batch).await?;
        self.last = Some(seq);
        Ok(refused)
    }
    async fn publish(&mut self, _force: bool) -> Result<Option<u64>, SinkError> {
        self.sink.flush().await?;
        Ok(self.last)
    }
}

/// What the forwarder needs besides the sink.
pub struct Forwarding {
    pub name: String,
    pub buffer: Arc<DurableBuffer>,
    pub view: Arc<SinkView>,
    pub dead_letters: mpsc::Sender<DeadLetterBatch>,
}

pub async fn run(
    f: Forwarding,
    mut sink: Box<dyn BufferedSink>,
    mut queue: mpsc::Receiver<Arc<OutputBatch>>,
) {
    let Forwarding {
        name,
        buffer,
        view,
        dead_letters,
    } = f;
    let health = view.health.clone();
    let (done_tx, mut done_rx) = watch::channel(false);
    let (appended_tx, mut appended_rx) = watch::channel(0u64);
    let writer_buffer = buffer.clone();
    let group_commit = buffer.config().group_commit;
    let writer = tokio::spawn(async move {
        while let Some(group) = super::next_group(&mut queue, group_commit).await {
            let seqs = writer_buffer.commit(&group).await;
            let _ = appended_tx.send(seqs.last().copied().unwrap_or(0));
        }
        let _ = done_tx.send(true);
    });

    let skip_through = sink.published_before_start();
    let mut next = buffer.first_seq().unwrap_or(1);
    // The last seq handed to the sink and not yet removed from the buffer.
    let mut handed: Option<u64> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut last_publish = Instant::now();
    loop {
        let stopping = *done_rx.borrow();
        if stopping {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
            if Instant::now() > deadline {
                let (records, samples) = buffer.depth();
                tracing::warn!(sink = %name, records, samples, "stopping with samples still buffered; they are written at the next start");
                break;
            }
        }
        let b = buffer.clone();
        let from = next;
        let records =
            match tokio::task::spawn_blocking(move || b.read_from(from, RECORDS_PER_READ)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!(sink = %name, "cannot read the buffer: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(_) => return,
            };
        if records.is_empty() {
            if handed.is_some() {
                publish(&name, sink.as_mut(), &buffer, &view, &mut handed, stopping).await;
            }
            if stopping {
                break;
            }
            if handed.is_none() {
                health.idle();
            }
            tokio::select! {
                _ = appended_rx.changed() => {}
                _ = done_rx.changed() => {}
                _ = tokio::time::sleep(PUBLISH_TICK) => {}
            }
            continue;
        }
        health.working();
        for r in &records {
            if skip_through.is_some_and(|s| r.seq <= s) {
                // Already in a file published before the restart: exactly once.
                handed = Some(r.seq);
                continue;
            }
            let mut backoff = Backoff::default();
            let refused = loop {
                match sink.write_record(r.seq, &r.batch).await {
                    Ok(refused) => {
                        health.progressed();
                        break refused;
                    }
                    Err(e) => {
                        health.failed(&e);
                        let deadline = (*done_rx.borrow()).then(|| {
                            *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT)
                        });
                        if deadline.is_some_and(|d| Instant::now() > d) {
                            let (records, samples) = buffer.depth();
                            tracing::warn!(sink = %name, records, samples, "stopping while the destination fails; buffered samples are written at the next start");
                            let _ = writer.await;
                            return;
                        }
                        let delay = backoff.next_delay();
                        tracing::warn!(sink = %name, attempt = backoff.attempts(), "write failed, retrying in {delay:?} (the record stays buffered): {e}");
                        tokio::time::sleep(delay).await;
                    }
                }
            };
            super::dead_letter_refused(&name, &r.batch, &refused, &dead_letters, &health).await;
            view.written.fetch_add(
                (r.batch.samples.len() - refused.len()) as u64,
                Ordering::Relaxed,
            );
            buffer
                .stats()
                .delivered_samples
                .fetch_add(r.batch.samples.len() as u64, Ordering::Relaxed);
            handed = Some(r.seq);
        }
        next = records.last().expect("non-empty").seq + 1;
        if last_publish.elapsed() >= PUBLISH_TICK {
            publish(&name, sink.as_mut(), &buffer, &view, &mut handed, false).await;
            last_publish = Instant::now();
        }
    }
    if handed.is_some() {
        publish(&name, sink.as_mut(), &buffer, &view, &mut handed, true).await;
    }
    let _ = writer.await;
}

/// Asks the sink to publish and removes from the buffer what it published.
async fn publish(
    name: &str,
    sink: &mut dyn BufferedSink,
    buffer: &Arc<DurableBuffer>,
    view: &SinkView,
    handed: &mut Option<u64>,
    force: bool,
) {
    let Some(last) = *handed else { return };
    let mut backoff = Backoff::default();
    let published = loop {
        match sink.publish(force).await {
            Ok(Some(p)) => {
                view.health.progressed();
                break p.min(last);
            }
            Ok(None) => return,
            Err(e) => {
                view.health.failed(&e);
                let delay = backoff.next_delay();
                tracing::warn!(sink = %name, attempt = backoff.attempts(), "publish failed, retrying in {delay:?}: {e}");
                if force && backoff.attempts() > 3 {
                    return;
                }
                tokio::time::sleep(delay).await;
            }
        }
    };
    let b = buffer.clone();
    match tokio::task::spawn_blocking(move || b.remove_through(published)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(sink = %name, "cannot remove published records (they will be handed over again): {e}")
        }
        Err(_) => {}
    }
    if published >= last {
        *handed = None;
    }
}
