//! Any batch-writing `Sink` (PostgreSQL) behind the durable store-and-forward buffer: the
//! writer commits incoming batches to the buffer (which releases their sources'
//! acknowledgments); the forwarder writes the buffered records to the sink strictly in order,
//! retrying a failing write with backoff, and removes them once the sink has committed them.
//! After a crash the records not yet removed are written again: the sink's write must be
//! idempotent (the PostgreSQL sink's is: ON CONFLICT (tag, time) DO NOTHING).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::Sink;
use crate::buffer::DurableBuffer;
use crate::pipeline::OutputBatch;

/// Records read from the buffer per write.
const RECORDS_PER_READ: usize = 8;
/// On shutdown, how long to keep writing the backlog before leaving it for the next start.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(
    name: String,
    mut sink: Box<dyn Sink>,
    buffer: Arc<DurableBuffer>,
    mut queue: mpsc::Receiver<Arc<OutputBatch>>,
    written: Arc<AtomicU64>,
) {
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

    let mut next = buffer.first_seq().unwrap_or(1);
    let mut drain_deadline: Option<Instant> = None;
    loop {
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
            if *done_rx.borrow() {
                break;
            }
            tokio::select! {
                _ = appended_rx.changed() => {}
                _ = done_rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        if *done_rx.borrow() {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
            if Instant::now() > deadline {
                let (records, samples) = buffer.depth();
                tracing::warn!(sink = %name, records, samples, "stopping with samples still buffered; they are written at the next start");
                break;
            }
        }
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        let last = records.last().expect("non-empty").seq;
        let samples: u64 = records.iter().map(|r| r.batch.samples.len() as u64).sum();
        'write: loop {
            if *done_rx.borrow() {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                if attempt > 0 && Instant::now() > deadline {
                    let (records, samples) = buffer.depth();
                    tracing::warn!(sink = %name, records, samples, "stopping while the destination fails; buffered samples are written at the next start");
                    let _ = writer.await;
                    return;
                }
            }
            for r in &records {
                if let Err(e) = sink.write(&r.batch).await {
                    attempt += 1;
                    tracing::warn!(sink = %name, attempt, "write failed, retrying in {delay:?} (the batch stays buffered): {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue 'write;
                }
            }
            match sink.flush().await {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(sink = %name, attempt, "flush failed, retrying in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let b = buffer.clone();
        match tokio::task::spawn_blocking(move || b.remove_through(last)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(sink = %name, "cannot remove written records (they will be written again): {e}")
            }
            Err(_) => {}
        }
        written.fetch_add(samples, Ordering::Relaxed);
        buffer
            .stats()
            .delivered_samples
            .fetch_add(samples, Ordering::Relaxed);
        next = last + 1;
    }
    let _ = writer.await;
}
