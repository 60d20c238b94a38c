//! The Kafka source: a consumer-group member (rdkafka `StreamConsumer`, auto-commit off) that
//! turns `ferrule.sample.v1` records into samples. Each batch carries an `Ack`; per partition
//! the offsets of batches (and of dead-lettered records) wait in order, and an offset is
//! committed only once every earlier entry of its partition was released too, i.e. once the
//! sinks took everything before it. A rebalance or crash re-reads from the last commit
//! (at-least-once; duplicates, never gaps).

mod config;

pub use config::KafkaSourceConfig;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{SourceContext, SourceError};
use crate::ack::Ack;
use crate::model::{SampleBatch, TagId};
use crate::mqtt::payload;
use crate::pipeline::{DeadLetter, DeadLetterBatch};

type Partition = (String, i32);

/// Per partition, the next offset after each released-or-pending entry, in read order.
#[derive(Default)]
struct Tracker {
    queues: HashMap<Partition, VecDeque<(u64, i64, bool)>>,
}

impl Tracker {
    fn push(&mut self, p: Partition, id: u64, next: i64) {
        self.queues
            .entry(p)
            .or_default()
            .push_back((id, next, false));
    }
    fn done(&mut self, id: u64) {
        for q in self.queues.values_mut() {
            for e in q.iter_mut().filter(|e| e.0 == id) {
                e.2 = true;
            }
        }
    }
    /// Offsets that may be committed now (every entry before them released).
    fn committable(&mut self) -> Vec<(Partition, i64)> {
        let mut out = Vec::new();
        for (p, q) in self.queues.iter_mut() {
            let mut last = None;
            while q.front().is_some_and(|e| e.2) {
                last = q.pop_front().map(|e| e.1);
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
    /// Highest offset per partition in `batch`.
    offsets: HashMap<Partition, i64>,
    next_id: u64,
}

fn failed(name: &str, message: String) -> SourceError {
    SourceError::Failed {
        name: name.into(),
        message,
    }
}

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
        .set("auto.offset.reset", &config.offset_reset);
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    let consumer: StreamConsumer = c
        .create()
        .map_err(|e| failed(&ctx.name, format!("cannot create the Kafka consumer: {e}")))?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| failed(&ctx.name, format!("cannot subscribe: {e}")))?;
    let linger = Duration::from_millis(config.linger_ms);
    let mut commit_tick = tokio::time::interval(Duration::from_millis(config.commit_interval_ms));
    let mut r = Reader {
        batch: SampleBatch::with_capacity(config.batch_size),
        config,
        ctx,
        tracker: Arc::default(),
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
            _ = commit_tick.tick() => r.commit(&consumer),
            _ = r.ctx.shutdown.changed() => {
                if *r.ctx.shutdown.borrow() {
                    r.flush().await?;
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
        let (registry, source) = (&self.ctx.registry, &self.ctx.name);
        let id = *self
            .tags
            .entry(path.clone())
            .or_insert_with(|| registry.intern(parsed.descriptor(source, &path)));
        parsed.append_to(id, &mut self.batch);
        let o = self.offsets.entry(p).or_insert(m.offset());
        *o = (*o).max(m.offset());
        Ok(())
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
            for (p, o) in self.offsets.drain() {
                t.push(p, id, o + 1);
            }
        }
        let tracker = self.tracker.clone();
        let ack = Ack::new(move || tracker.lock().unwrap_or_else(|e| e.into_inner()).done(id));
        if self.batch.is_empty() {
            return Ok(()); // `ack` drops here: nothing to wait for.
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
        self.tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p, id, m.offset() + 1);
        let tracker = self.tracker.clone();
        let ack = Ack::new(move || tracker.lock().unwrap_or_else(|e| e.into_inner()).done(id));
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

    /// Commits the offsets whose every earlier entry was released.
    fn commit(&self, consumer: &StreamConsumer) {
        let ready = self
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .committable();
        if ready.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in ready {
            let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(next));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(source = %self.ctx.name, "offset commit failed (records are read again after a rebalance): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tracker;

    #[test]
    fn an_offset_is_committable_only_after_everything_before_it() {
        let mut t = Tracker::default();
        let p = ("t".to_string(), 0);
        t.push(p.clone(), 1, 10);
        t.push(p.clone(), 2, 20);
        t.push(p.clone(), 3, 30);
        t.done(2);
        assert!(t.committable().is_empty());
        t.done(1);
        assert_eq!(t.committable(), vec![(p.clone(), 20)]);
        t.done(3);
        assert_eq!(t.committable(), vec![(p, 30)]);
    }
}
