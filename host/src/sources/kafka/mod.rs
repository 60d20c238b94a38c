//! The Kafka source: a consumer-group member (rdkafka `StreamConsumer`, auto-commit off) that
//! turns `ferrule.sample.v1` records into samples. Each batch carries an `Ack`; per partition
//! the offsets of batches (and of dead-lettered records) wait in order, and an offset is
//! committed only once every earlier entry of its partition was released too, i.e. once the
//! sinks took everything before it. A batch that fails (a holder let go without saying done)
//! is never committed: the source seeks its partitions back to it and reads it again. A
//! rebalance or crash re-reads from the last commit (at-least-once; duplicates, never gaps).
//! When a rebalance revokes partitions, what may be committed for them is committed then and
//! there (synchronously, before they go), and nothing is committed for them afterwards: a
//! late acknowledgment of a revoked partition's batch is dropped, since its new owner reads
//! from the last commit.
//!
//! Records numbered by a Ferrule Kafka sink (headers `ferrule-pub`, `ferrule-epoch`,
//! `ferrule-seq`, per topic-partition) go through the sequence check (`sources::sequence`),
//! one sequence per publisher and partition (`<publisher>@<topic>:<partition>`): records
//! missing from a partition (deleted by retention before they were read, or never written)
//! are reported as a gap.

mod config;

pub use config::KafkaSourceConfig;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::ClientContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::sequence::SequenceChecker;
use super::{SourceContext, SourceError};
use crate::ack::{Ack, Settled};
use crate::model::{DeadLetter, DeadLetterBatch};
use crate::model::{SampleBatch, TagId};
use crate::payload;

type Partition = (String, i32);

/// Prefetched records librdkafka may hold per partition, in KiB.
const PREFETCH_KBYTES: &str = "8192";

/// At shutdown, how long the source waits for the pipeline to settle what it sent before the
/// last commit (what is not settled by then is read again after the restart).
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Per partition, each released-or-pending entry in read order: (id, first offset, next
/// offset after it, released).
#[derive(Default)]
struct Tracker {
    queues: HashMap<Partition, VecDeque<(u64, i64, i64, bool)>>,
    /// Partitions to read again from an offset (a failed batch), for the reader to seek.
    rewind: Vec<(Partition, i64)>,
    /// Offsets ready to commit whose commit has not succeeded yet.
    uncommitted: HashMap<Partition, i64>,
    /// Partitions a rebalance took away (until assigned again): never committed.
    revoked: std::collections::HashSet<Partition>,
}

impl Tracker {
    fn push(&mut self, p: Partition, id: u64, first: i64, next: i64) {
        if self.revoked.contains(&p) {
            return;
        }
        self.queues
            .entry(p)
            .or_default()
            .push_back((id, first, next, false));
    }
    fn settle(&mut self, id: u64, outcome: Settled) {
        for (p, q) in self.queues.iter_mut() {
            let Some(i) = q.iter().position(|e| e.0 == id) else {
                continue;
            };
            match outcome {
                Settled::Done => q[i].3 = true,
                Settled::Failed => {
                    // Read it (and all after it) again; later entries are dropped.
                    self.rewind.push((p.clone(), q[i].1));
                    q.truncate(i);
                }
            }
        }
    }
    fn is_empty(&self) -> bool {
        self.queues.values().all(|q| q.is_empty())
    }

    /// Partitions leave: returns what may still be committed for them, and forgets them.
    fn revoke(&mut self, partitions: &[Partition]) -> Vec<(Partition, i64)> {
        let mut ready: HashMap<Partition, i64> = HashMap::new();
        for (p, next) in self.committable() {
            // Other partitions' offsets stay ready for the next commit.
            let into = if partitions.contains(&p) {
                &mut ready
            } else {
                &mut self.uncommitted
            };
            let e = into.entry(p).or_insert(next);
            *e = (*e).max(next);
        }
        for p in partitions {
            if let Some(o) = self.uncommitted.remove(p) {
                let e = ready.entry(p.clone()).or_insert(o);
                *e = (*e).max(o);
            }
            self.queues.remove(p);
            self.rewind.retain(|(r, _)| r != p);
            self.revoked.insert(p.clone());
        }
        ready.into_iter().collect()
    }

    fn assign(&mut self, partitions: &[Partition]) {
        for p in partitions {
            self.revoked.remove(p);
        }
    }

    /// Offsets that may be committed now (every entry before them released).
    fn committable(&mut self) -> Vec<(Partition, i64)> {
        let mut out = Vec::new();
        for (p, q) in self.queues.iter_mut() {
            let mut last = None;
            while q.front().is_some_and(|e| e.3) {
                last = q.pop_front().map(|e| e.2);
            }
            if let Some(next) = last {
                out.push((p.clone(), next));
            }
        }
        out
    }
}

struct Reader {
    config: KafkaSourceConfig,
    ctx: SourceContext,
    tracker: Arc<Mutex<Tracker>>,
    tags: HashMap<String, TagId>,
    batch: SampleBatch,
    /// Lowest and highest offset per partition in `batch`.
    offsets: HashMap<Partition, (i64, i64)>,
    next_id: u64,
    checker: Option<SequenceChecker>,
}

/// The record number stamped by a Ferrule Kafka sink (publisher, epoch, number), if complete.
fn stamp<'a>(m: &'a BorrowedMessage<'_>) -> Option<(&'a str, &'a str, u64)> {
    use rdkafka::message::Headers;
    let h = m.headers()?;
    let get = |k: &str| {
        h.iter()
            .find(|x| x.key == k)
            .and_then(|x| std::str::from_utf8(x.value?).ok())
    };
    Some((
        get(payload::PUBLISHER_PROPERTY)?,
        get(payload::EPOCH_PROPERTY)?,
        get(payload::SEQ_PROPERTY)?.parse().ok()?,
    ))
}

fn failed(name: &str, message: String) -> SourceError {
    SourceError::Failed {
        name: name.into(),
        message,
    }
}

/// Commits what is ready for partitions a rebalance revokes, before they go.
struct RebalanceContext {
    tracker: Arc<Mutex<Tracker>>,
    source: String,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions = partitions_of(tpl);
        let ready = self
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revoke(&partitions);
        if ready.is_empty() {
            return;
        }
        let mut commit = TopicPartitionList::new();
        for ((topic, partition), next) in &ready {
            let _ = commit.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        match consumer.commit(&commit, CommitMode::Sync) {
            Ok(()) => {
                tracing::info!(source = %self.source, partitions = ready.len(), "committed revoked partitions before the rebalance")
            }
            Err(e) => {
                tracing::warn!(source = %self.source, "commit of revoked partitions failed (their records are read again by the new owner): {e}")
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .assign(&partitions_of(tpl));
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

type KafkaConsumer = StreamConsumer<RebalanceContext>;

pub async fn run(config: KafkaSourceConfig, ctx: SourceContext) -> Result<(), SourceError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set(
            "client.id",
            config
                .client_id
                .clone()
                .unwrap_or_else(|| format!("ferrule-{}", ctx.name)),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", &config.offset_reset)
        // librdkafka prefetches up to 64 MiB and 100 000 records per partition, 50 MiB per
        // fetch, by default: a backlog would hold that in memory. These keep a gateway's
        // memory bounded and still fetch ahead (`properties` can override each).
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
        .set("queued.min.messages", "10000")
        .set("fetch.max.bytes", "4194304");
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    let tracker: Arc<Mutex<Tracker>> = Arc::default();
    let consumer: KafkaConsumer = c
        .create_with_context(RebalanceContext {
            tracker: tracker.clone(),
            source: ctx.name.clone(),
        })
        .map_err(|e| failed(&ctx.name, format!("cannot create the Kafka consumer: {e}")))?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| failed(&ctx.name, format!("cannot subscribe: {e}")))?;
    let linger = Duration::from_millis(config.linger_ms);
    let mut commit_tick = tokio::time::interval(Duration::from_millis(config.commit_interval_ms));
    let checker = (config.sequence.check != super::sequence::SequenceCheck::Off)
        .then(|| SequenceChecker::new(&ctx.name, config.sequence.clone(), ctx.upstream.clone()));
    let mut r = Reader {
        checker,
        batch: SampleBatch::with_capacity(config.batch_size),
        config,
        ctx,
        tracker,
        tags: HashMap::new(),
        offsets: HashMap::new(),
        next_id: 0,
    };
    let mut first_pending_at: Option<tokio::time::Instant> = None;
    loop {
        let linger_wait = first_pending_at
            .map(|t| t + linger)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            m = consumer.recv() => match m {
                Ok(m) => {
                    r.take(&m).await?;
                    if first_pending_at.is_none() && !r.offsets.is_empty() {
                        first_pending_at = Some(tokio::time::Instant::now());
                    }
                    if r.batch.len() >= r.config.batch_size {
                        r.flush().await?;
                        first_pending_at = None;
                    }
                }
                Err(e) => tracing::warn!(source = %r.ctx.name, "Kafka: {e}"),
            },
            _ = tokio::time::sleep_until(linger_wait), if first_pending_at.is_some() => {
                r.flush().await?;
                first_pending_at = None;
            }
            _ = commit_tick.tick() => {
                r.rewind(&consumer, &mut first_pending_at);
                r.commit(&consumer);
                if let Some(c) = r.checker.as_mut() {
                    let gaps = c.tick(std::time::Instant::now());
                    r.report_gaps(gaps).await;
                }
            }
            _ = r.ctx.shutdown.changed() => {
                if *r.ctx.shutdown.borrow() {
                    r.flush().await?;
                    // The last commit waits for the pipeline to drain what it holds (bounded).
                    let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
                    while !r.tracker.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
                        && tokio::time::Instant::now() < deadline
                    {
                        r.commit(&consumer);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    r.commit(&consumer);
                    return Ok(());
                }
            }
        }
    }
}

impl Reader {
    /// Adds a record's samples to the batch, or dead-letters it.
    async fn take(&mut self, m: &BorrowedMessage<'_>) -> Result<(), SourceError> {
        if let Some(c) = self.checker.as_mut() {
            if let Some((publisher, epoch, seq)) = stamp(m) {
                let stream = format!("{publisher}@{}:{}", m.topic(), m.partition());
                let (_, gaps) = c.observe(&stream, epoch, seq, std::time::Instant::now());
                self.report_gaps(gaps).await;
            }
        }
        let p = (m.topic().to_string(), m.partition());
        let bytes = m.payload().unwrap_or_default();
        let parsed = payload::parse(bytes, self.config.max_payload_bytes);
        let key = m.key().and_then(|k| std::str::from_utf8(k).ok());
        let path = match (&parsed, key) {
            (_, Some(k)) if !k.is_empty() => Some(k.to_string()),
            (Ok(parsed), _) => parsed.path.clone(),
            _ => None,
        };
        let (parsed, path) = match (parsed, path) {
            (Ok(parsed), Some(path)) => (parsed, path),
            (Err(e), _) => return self.refuse(m, p, e.reason, e.detail).await,
            (Ok(_), None) => {
                return self
                    .refuse(m, p, "schema", "no key and no `path`".into())
                    .await
            }
        };
        let id = match self.tags.get(&path) {
            Some(id) => *id,
            None => match self
                .ctx
                .registry
                .try_intern(parsed.descriptor(&self.ctx.name, &path))
            {
                Ok(id) => *self.tags.entry(path).or_insert(id),
                Err(e) => return self.refuse(m, p, "tag-limit", e.to_string()).await,
            },
        };
        parsed.append_to(id, &mut self.batch);
        let o = self.offsets.entry(p).or_insert((m.offset(), m.offset()));
        o.0 = o.0.min(m.offset());
        o.1 = o.1.max(m.offset());
        Ok(())
    }

    /// Dead-letters the gaps the sequence check declared (events: nothing to acknowledge).
    async fn report_gaps(&self, gaps: Vec<super::sequence::Gap>) {
        let Some(c) = self.checker.as_ref() else {
            return;
        };
        if gaps.is_empty() {
            return;
        }
        let letters = gaps.iter().map(|g| c.dead_letter(g)).collect();
        if self
            .ctx
            .dead_letters
            .send(DeadLetterBatch::new(letters, None))
            .await
            .is_err()
        {
            tracing::error!(source = %self.ctx.name, "the dead-letter sink stopped; upstream gaps are only logged and counted");
        }
    }

    /// Sends the batch on with an acknowledgment that releases its offsets.
    async fn flush(&mut self) -> Result<(), SourceError> {
        if self.offsets.is_empty() {
            return Ok(());
        }
        let id = self.next_id;
        self.next_id += 1;
        {
            let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
            for (p, (first, last)) in self.offsets.drain() {
                t.push(p, id, first, last + 1);
            }
        }
        let tracker = self.tracker.clone();
        let ack = Ack::new(move |outcome| {
            tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .settle(id, outcome)
        });
        if self.batch.is_empty() {
            ack.done(); // Nothing to wait for.
            return Ok(());
        }
        let mut batch = std::mem::replace(
            &mut self.batch,
            SampleBatch::with_capacity(self.config.batch_size),
        );
        batch.ack = Some(ack);
        let n = batch.len() as u64;
        self.ctx
            .out
            .send(batch)
            .await
            .map_err(|_| failed(&self.ctx.name, "the pipeline stopped".into()))?;
        self.ctx.produced.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    async fn refuse(
        &mut self,
        m: &BorrowedMessage<'_>,
        p: Partition,
        reason: &'static str,
        detail: String,
    ) -> Result<(), SourceError> {
        // Earlier records first, so the partition's entries stay in offset order.
        self.flush().await?;
        let id = self.next_id;
        self.next_id += 1;
        self.tracker.lock().unwrap_or_else(|e| e.into_inner()).push(
            p,
            id,
            m.offset(),
            m.offset() + 1,
        );
        let tracker = self.tracker.clone();
        let ack = Ack::new(move |outcome| {
            tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .settle(id, outcome)
        });
        let bytes = m.payload().unwrap_or_default();
        let where_ = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
        let letter = DeadLetter::refused_by_source(
            &self.ctx.name,
            reason,
            format!("{where_}: {detail}"),
            where_,
            bytes,
        );
        if self
            .ctx
            .dead_letters
            .send(DeadLetterBatch::new(vec![letter], Some(ack)))
            .await
            .is_err()
        {
            tracing::error!(source = %self.ctx.name, "the dead-letter sink stopped");
        }
        Ok(())
    }

    /// Seeks partitions back to the first record of a failed batch (read again, at least once).
    fn rewind(
        &mut self,
        consumer: &KafkaConsumer,
        first_pending_at: &mut Option<tokio::time::Instant>,
    ) {
        let rewind = std::mem::take(
            &mut self
                .tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .rewind,
        );
        if rewind.is_empty() {
            return;
        }
        // What is being gathered comes after the failed records: it is read again too.
        self.batch = SampleBatch::with_capacity(self.config.batch_size);
        self.offsets.clear();
        *first_pending_at = None;
        for ((topic, partition), offset) in rewind {
            tracing::warn!(source = %self.ctx.name, topic, partition, offset, "a batch was not delivered; reading it again");
            if let Err(e) = consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                tracing::error!(source = %self.ctx.name, topic, partition, "cannot seek back ({e}); the records come again after a restart or rebalance");
            }
        }
    }

    /// Commits the offsets whose every earlier entry was released; offsets whose commit
    /// failed are kept and committed again at the next call, not forgotten.
    fn commit(&mut self, consumer: &KafkaConsumer) {
        let mut t = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        for (p, next) in t.committable() {
            let o = t.uncommitted.entry(p).or_insert(next);
            *o = (*o).max(next);
        }
        if t.uncommitted.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &t.uncommitted {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        // Held across the commit call: a rebalance callback cannot revoke meanwhile.
        match consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => t.uncommitted.clear(),
            Err(e) => {
                tracing::warn!(source = %self.ctx.name, "offset commit failed, retrying at the next commit: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Settled, Tracker};
    use std::collections::HashMap;

    #[test]
    fn an_offset_is_committable_only_after_everything_before_it() {
        let mut t = Tracker::default();
        let p = ("t".to_string(), 0);
        t.push(p.clone(), 1, 0, 10);
        t.push(p.clone(), 2, 10, 20);
        t.push(p.clone(), 3, 20, 30);
        t.settle(2, Settled::Done);
        assert!(t.committable().is_empty());
        t.settle(1, Settled::Done);
        assert_eq!(t.committable(), vec![(p.clone(), 20)]);
        t.settle(3, Settled::Done);
        assert_eq!(t.committable(), vec![(p, 30)]);
    }

    #[test]
    fn a_failed_batch_is_never_committed_and_is_read_again() {
        let mut t = Tracker::default();
        let p = ("t".to_string(), 0);
        t.push(p.clone(), 1, 0, 10);
        t.push(p.clone(), 2, 10, 20);
        t.push(p.clone(), 3, 20, 30);
        t.settle(1, Settled::Done);
        t.settle(3, Settled::Done);
        t.settle(2, Settled::Failed);
        assert_eq!(t.committable(), vec![(p.clone(), 10)]);
        assert_eq!(t.rewind, vec![(p.clone(), 10)]);
        // Entry 3 was dropped with it: a late release of it commits nothing past the gap.
        t.settle(3, Settled::Done);
        assert!(t.committable().is_empty());
    }

    #[test]
    fn a_revoked_partition_is_committed_once_and_then_never_again() {
        let mut t = Tracker::default();
        let (p, q) = (("t".to_string(), 0), ("t".to_string(), 1));
        t.push(p.clone(), 1, 0, 10);
        t.push(q.clone(), 1, 0, 5);
        t.push(p.clone(), 2, 10, 20);
        t.settle(1, Settled::Done);
        let ready = t.revoke(std::slice::from_ref(&p));
        assert_eq!(ready, vec![(p.clone(), 10)]);
        // A late release of the revoked partition's batch commits nothing for it.
        t.settle(2, Settled::Done);
        t.push(p.clone(), 3, 20, 30);
        t.settle(3, Settled::Done);
        assert!(t.committable().is_empty());
        assert_eq!(t.uncommitted, HashMap::from([(q.clone(), 5)]));
        // Assigned again: tracked again.
        t.assign(std::slice::from_ref(&p));
        t.push(p.clone(), 4, 40, 50);
        t.settle(4, Settled::Done);
        assert_eq!(t.committable(), vec![(p, 50)]);
    }
}
