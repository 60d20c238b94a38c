//! The producer shared by the Kafka sink and the Kafka dead-letter: an idempotent
//! (`enable.idempotence=true`, `acks=all`) rdkafka `FutureProducer` with a bounded window of
//! records awaiting acknowledgment. What Kafka reports as failed is sorted by class:
//! - transient (timeouts, a broker away; after librdkafka's own retries, i.e.
//!   `message.timeout.ms`): sent again, never dropped;
//! - permanent for the record (too large, not authorized for the topic, invalid): kept as
//!   refused, for the sink to dead-letter, and not sent again;
//! - fatal for the client (the idempotent producer's fatal error, after which it refuses
//!   everything): the producer is rebuilt, counted, and the record sent again on the new one.
//!
//! It also keeps, per topic-partition, the offset after the last record Kafka acknowledged
//! (the dedup window's checkpoint).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::config::Compression;
use crate::sinks::{LinkStats, SinkError, SinkHealth};

/// A record Kafka refused for good.
pub struct RefusedRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub error: String,
}

/// Whether `e` refuses this record for good (sending it again cannot help).
pub fn permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::TopicAuthorizationFailed
                | C::InvalidTopic
                | C::PolicyViolation
                | C::InvalidRequiredAcks
        )
    )
}

/// Whether `e` leaves the producer unusable (it must be rebuilt).
pub fn fatal(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
}

/// What the producer is built from.
pub struct Settings<'a> {
    pub brokers: &'a str,
    pub client_id: String,
    pub compression: Compression,
    pub linger_ms: u64,
    pub message_timeout_ms: u64,
    pub max_inflight: usize,
    pub properties: &'a BTreeMap<String, String>,
}

pub struct Producer {
    name: String,
    config: ClientConfig,
    inner: FutureProducer,
    /// Delivery futures with the index of their topic in `topics`.
    pending: VecDeque<(usize, DeliveryFuture)>,
    topics: Vec<String>,
    /// Next offset after the last acknowledged record, per (topic index, partition).
    delivered: HashMap<(usize, i32), i64>,
    max_inflight: usize,
    link: Arc<LinkStats>,
    health: Option<Arc<SinkHealth>>,
    refused: Vec<RefusedRecord>,
}

impl Producer {
    pub fn new(
        name: &str,
        s: Settings<'_>,
        link: Arc<LinkStats>,
        health: Option<Arc<SinkHealth>>,
    ) -> Result<Self, SinkError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", s.brokers)
            .set("client.id", &s.client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", s.compression.as_str())
            .set("linger.ms", s.linger_ms.to_string())
            .set("message.timeout.ms", s.message_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                s.max_inflight.max(1000).to_string(),
            );
        for (k, v) in s.properties {
            c.set(k, v);
        }
        let inner: FutureProducer = c.create().map_err(|e| SinkError::Transient {
            sink: name.into(),
            message: format!("cannot create the Kafka producer: {e}"),
        })?;
        Ok(Producer {
            name: name.into(),
            config: c,
            inner,
            pending: VecDeque::new(),
            topics: Vec::new(),
            delivered: HashMap::new(),
            max_inflight: s.max_inflight,
            link,
            health,
            refused: Vec::new(),
        })
    }

    /// Per (topic, partition), the offset after the last record Kafka acknowledged.
    pub fn delivered(&self) -> HashMap<(String, i32), i64> {
        self.delivered
            .iter()
            .map(|(&(t, p), &o)| ((self.topics[t].clone(), p), o))
            .collect()
    }

    fn topic_index(&mut self, topic: &str) -> usize {
        match self.topics.iter().position(|t| t == topic) {
            Some(i) => i,
            None => {
                self.topics.push(topic.to_string());
                self.topics.len() - 1
            }
        }
    }

    /// Records Kafka refused for good since the last call.
    pub fn take_refused(&mut self) -> Vec<RefusedRecord> {
        std::mem::take(&mut self.refused)
    }

    /// Replaces the producer after a fatal error (the old one refuses everything).
    pub fn rebuild(&mut self) {
        match self.config.create::<FutureProducer>() {
            Ok(p) => {
                self.inner = p;
                if let Some(h) = &self.health {
                    h.rebuilt();
                }
                tracing::warn!(sink = %self.name, "Kafka producer rebuilt after a fatal error; unacknowledged records are sent again");
            }
            Err(e) => {
                tracing::error!(sink = %self.name, "cannot rebuild the Kafka producer (retrying at the next record): {e}")
            }
        }
    }

    /// The client, for metadata calls (blocking; run them off the async threads).
    pub fn handle(&self) -> FutureProducer {
        self.inner.clone()
    }

    /// Hands a record to the producer (to `partition`, or where the partitioner puts it),
    /// first waiting for room in the window. An error is a refusal of this record for good
    /// (e.g. larger than the broker takes).
    pub async fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), KafkaError> {
        while self.pending.len() >= self.max_inflight {
            self.settle_one().await;
        }
        let mut record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let t = self.topic_index(topic);
        loop {
            match self.inner.send_result(record) {
                Ok(f) => {
                    self.pending.push_back((t, f));
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    if !self.pending.is_empty() {
                        self.settle_one().await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits until Kafka acknowledged every record handed over so far.
    pub async fn settle_all(&mut self) {
        while !self.pending.is_empty() {
            self.settle_one().await;
        }
    }

    async fn settle_one(&mut self) {
        let Some((t, f)) = self.pending.pop_front() else {
            return;
        };
        match f.await {
            Ok(Ok(d)) => {
                let next = d.offset + 1;
                let o = self.delivered.entry((t, d.partition)).or_insert(next);
                *o = (*o).max(next);
                self.link.published.fetch_add(1, Ordering::Relaxed);
                self.link.connected.store(true, Ordering::Relaxed);
            }
            Ok(Err((e, msg))) => {
                self.link.refused.fetch_add(1, Ordering::Relaxed);
                if permanent(&e) {
                    tracing::warn!(sink = %self.name, topic = msg.topic(), "Kafka refused a record for good: {e}");
                    self.refused.push(RefusedRecord {
                        topic: msg.topic().to_string(),
                        key: msg.key().unwrap_or_default().to_vec(),
                        payload: msg.payload().unwrap_or_default().to_vec(),
                        error: e.to_string(),
                    });
                    return;
                }
                if fatal(&e) {
                    self.rebuild();
                }
                if self.link.connected.swap(false, Ordering::Relaxed) {
                    self.link.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(h) = &self.health {
                    h.failed(&SinkError::transient(&self.name, &e));
                }
                tracing::warn!(sink = %self.name, topic = msg.topic(), "Kafka did not acknowledge a record, sending it again: {e}");
                self.resend(msg).await;
            }
            Err(_) => {
                // The producer is owned here and outlives its futures.
                tracing::error!(sink = %self.name, "a delivery report was lost");
            }
        }
    }

    /// Sends a failed record again (at the back of the window).
    async fn resend(&mut self, msg: OwnedMessage) {
        let mut backoff = crate::retry::Backoff::default();
        let t = self.topic_index(msg.topic());
        loop {
            let mut record =
                FutureRecord::to(msg.topic()).payload(msg.payload().unwrap_or_default());
            if let Some(k) = msg.key() {
                record = record.key(k);
            }
            if let Some(h) = msg.headers() {
                record = record.headers(h.clone());
            }
            if msg.partition() >= 0 {
                record = record.partition(msg.partition());
            }
            match self.inner.send_result(record) {
                Ok(f) => {
                    self.pending.push_back((t, f));
                    return;
                }
                Err((e, _)) => {
                    if fatal(&e) {
                        self.rebuild();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = %self.name, "cannot hand a record to the producer again, retrying in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_sorted_into_permanent_fatal_and_transient() {
        let e = |c| KafkaError::MessageProduction(c);
        assert!(permanent(&e(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(permanent(&e(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(!permanent(&e(RDKafkaErrorCode::MessageTimedOut)));
        assert!(!permanent(&e(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(fatal(&e(RDKafkaErrorCode::Fatal)));
        assert!(!fatal(&e(RDKafkaErrorCode::MessageTimedOut)));
    }
}
