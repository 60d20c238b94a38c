//! The poll schedule the polling protocol sources share (S7, EtherNet/IP): each poll group is
//! read at its own interval, the earliest due group first; a poll that overruns skips the
//! missed polls rather than bursting to catch up; a full pipeline queue holds the schedule
//! back; shutdown ends it at once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::SourceContext;
use crate::model::SampleBatch;

/// A source that reads its tags in poll groups.
pub(crate) trait PollGroups {
    /// How many poll groups there are.
    fn group_count(&self) -> usize;
    /// The interval of group `g`.
    fn interval(&self, g: usize) -> Duration;
    /// Reads group `g` (bad quality for what could not be read, never a stale value).
    async fn poll(&mut self, g: usize) -> SampleBatch;
}

/// Polls every group of `source` on its schedule until shutdown or the pipeline closes.
pub(crate) async fn run(source: &mut impl PollGroups, mut ctx: SourceContext) {
    let start = Instant::now();
    let mut due: Vec<Instant> = (0..source.group_count()).map(|_| start).collect();
    loop {
        let Some((g, &when)) = due.iter().enumerate().min_by_key(|(_, t)| **t) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(when.into()) => {}
            _ = ctx.shutdown.changed() => return,
        }
        if *ctx.shutdown.borrow() {
            return;
        }
        let batch = source.poll(g).await;
        let n = batch.len() as u64;
        tokio::select! {
            sent = ctx.out.send(batch) => if sent.is_err() { return },
            _ = ctx.shutdown.changed() => return,
        }
        ctx.produced.fetch_add(n, Ordering::Relaxed);
        let interval = source.interval(g);
        let now = Instant::now();
        due[g] += interval;
        if due[g] < now {
            // Overrun: skip the missed polls rather than bursting to catch up.
            due[g] = now + interval;
        }
    }
}
