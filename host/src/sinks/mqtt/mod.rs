//! The MQTT sink: samples → durable buffer → MQTT 5 broker. Two tasks:
//! - the writer takes batches from the pipeline, dead-letters samples whose path breaks the
//!   topic spec, and commits the rest to the buffer (several batches per fsync); only then
//!   are the batches released, which acknowledges them to their sources;
//! - the forwarder publishes buffered records strictly in order (so per tag, too), within an
//!   in-flight window and an optional rate, and removes a record once the broker acknowledged
//!   every message of it. A message the broker refuses for good (a PUBACK reason code of
//!   0x80 or more other than quota-exceeded, e.g. not-authorized from an ACL) has its
//!   samples dead-lettered with the reason; the rest of the record goes on. When the
//!   connection drops it reconnects with backoff and jitter and resends from the oldest
//!   unacknowledged record (at-least-once: a consumer may see a message twice, never miss
//!   one). Records from the pipeline are handed over in memory while the forwarder keeps up
//!   and read back from disk when it does not.
//!
//! Accounting: every telemetry message carries the MQTT 5 user properties `ferrule-pub` (the
//! publisher id), `ferrule-epoch` (the buffer's identity: it changes only when the buffer's
//! database is lost) and `ferrule-seq` (1, 2, 3, … per publisher and epoch). A record's
//! messages are numbered when it is loaded, consecutively from where the previous record
//! ended; the numbering at the oldest unremoved record is committed with each removal, so a
//! replay after a crash or a reconnect sends the same message under the same number (a
//! redelivery for the receiver, not a new message and not a gap).

mod config;

pub use config::MqttSinkConfig;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    LastWill, Packet, PubAckReason, PubCompReason, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, watch};

use super::{LinkStats, PerTag, SinkError, SinkView};
use crate::buffer::{DurableBuffer, MessageCursor};
use crate::model::now_ns;
use crate::model::{DeadLetter, DeadLetterBatch, OutputBatch};
use crate::mqtt::topic;
use crate::payload::{self, WireSample};
use crate::payload::{EPOCH_PROPERTY, PUBLISHER_PROPERTY, SEQ_PROPERTY};
use crate::retry::Backoff;

/// Most samples in one batch-form message.
const MAX_SAMPLES_PER_MESSAGE: usize = 500;
/// Records handed over in memory at most (the rest is read back from disk).
const LIVE_HANDOFF: usize = 64;
/// Publishes that are not telemetry (birth/death) in the ack bookkeeping.
const NOT_A_RECORD: u64 = u64::MAX;

/// Everything the MQTT sink needs from the pipeline.
pub struct MqttSinkParts {
    pub name: String,
    pub config: MqttSinkConfig,
    pub buffer: Arc<DurableBuffer>,
    pub queue: mpsc::Receiver<Arc<OutputBatch>>,
    pub dead_letters: mpsc::Sender<DeadLetterBatch>,
    pub view: Arc<SinkView>,
    pub link: Arc<LinkStats>,
}

/// Runs the sink until its queue closes and the buffer is drained (or the drain timeout).
pub async fn run(parts: MqttSinkParts) {
    let (live_tx, live_rx) = mpsc::channel(LIVE_HANDOFF);
    let (done_tx, done_rx) = watch::channel(false);
    let writer = Writer {
        name: parts.name.clone(),
        buffer: parts.buffer.clone(),
        group_commit: parts.config.buffer.group_commit,
        dead_letters: parts.dead_letters.clone(),
        checked: TopicCheck::default(),
    };
    let writer = tokio::spawn(writer.run(parts.queue, live_tx, done_tx));
    let forwarder = Forwarder::new(
        parts.name,
        parts.config,
        parts.buffer,
        parts.view,
        parts.link,
        parts.dead_letters,
    );
    forwarder.run(live_rx, done_rx).await;
    let _ = writer.await;
}

/// Which tags of a tag table fit the topic spec, remembered per table.
#[derive(Default)]
struct TopicCheck(PerTag<Option<String>>);

impl TopicCheck {
    fn violation(&mut self, b: &OutputBatch, tag: u32) -> Option<String> {
        self.0.follow(&b.tags);
        let verdict = || match b.tags.get(tag as usize) {
            Some(Some(t)) => topic::spec_violation(&t.path),
            _ => Some(format!("tag {tag} has no resolved path")),
        };
        match self.0.slot(tag as usize) {
            Some(slot) => slot.get_or_insert_with(verdict).clone(),
            None => verdict(),
        }
    }
}

struct Writer {
    name: String,
    buffer: Arc<DurableBuffer>,
    group_commit: usize,
    dead_letters: mpsc::Sender<DeadLetterBatch>,
    checked: TopicCheck,
}

impl Writer {
    async fn run(
        mut self,
        mut queue: mpsc::Receiver<Arc<OutputBatch>>,
        live: mpsc::Sender<(u64, Arc<OutputBatch>)>,
        done: watch::Sender<bool>,
    ) {
        while let Some(group) = super::next_group(&mut queue, self.group_commit).await {
            let mut valid = Vec::with_capacity(group.len());
            for b in group {
                if let Some(b) = self.split_off_spec_violations(b).await {
                    valid.push(b);
                }
            }
            if valid.is_empty() {
                continue;
            }
            // Committing says done for the batches' acknowledgment shares.
            let seqs = self.buffer.commit(&valid).await;
            for (seq, b) in seqs.into_iter().zip(valid) {
                // In memory if the forwarder keeps up; otherwise it reads the record back.
                let _ = live.try_send((seq, b));
            }
        }
        let _ = done.send(true);
    }

    /// Sends samples whose path breaks the topic spec to the dead-letter; returns the rest.
    async fn split_off_spec_violations(&mut self, b: Arc<OutputBatch>) -> Option<Arc<OutputBatch>> {
        let mut reasons: Vec<Option<String>> = Vec::new();
        for (i, &tag) in b.samples.tag_ids.iter().enumerate() {
            if let Some(v) = self.checked.violation(&b, tag) {
                if reasons.is_empty() {
                    reasons = vec![None; b.samples.len()];
                }
                reasons[i] = Some(v);
            }
        }
        if reasons.is_empty() {
            return Some(b);
        }
        let mut kept = (*b.samples).clone();
        let marks: Vec<bool> = reasons.iter().map(|r| r.is_some()).collect();
        let refused = kept.split_off_marked(&marks);
        let details: Vec<String> = reasons.into_iter().flatten().collect();
        let letters = (0..refused.len())
            .map(|i| {
                DeadLetter::refused_by_sink(
                    &self.name,
                    "topic-spec",
                    details[i].clone(),
                    &refused,
                    &b.tags,
                    i,
                )
            })
            .collect();
        if self
            .dead_letters
            .send(DeadLetterBatch::new(letters, b.ack.clone()))
            .await
            .is_err()
        {
            // That share drops unsaid: the batch is not acknowledged, its source redelivers.
            tracing::error!(sink = %self.name, "the dead-letter sink stopped; keeping the refused samples out of MQTT");
        }
        let kept = (!kept.is_empty()).then(|| {
            Arc::new(OutputBatch {
                samples: Arc::new(kept),
                tags: b.tags.clone(),
                ack: b.ack.clone(),
            })
        });
        // This share was handed on, to the dead-letter and to what is kept.
        b.done();
        kept
    }
}

/// One MQTT message of a record.
struct Message {
    topic: String,
    payload: Bytes,
    samples: u64,
    /// Its number in the publisher's sequence.
    seq: u64,
}

/// A record being sent: messages not yet handed to the client, and messages not yet acked.
struct InFlight {
    seq: u64,
    /// Number of the record's first message, and how many messages the record numbers
    /// (including any the broker refused and that are not sent again).
    first_message: u64,
    messages: u64,
    batch: Arc<OutputBatch>,
    unsent: VecDeque<Message>,
    unacked: usize,
    samples: u64,
    /// Samples the broker refused for good (dead-lettered).
    refused: u64,
}

struct Forwarder {
    name: String,
    config: MqttSinkConfig,
    client_id: String,
    status_topic: String,
    buffer: Arc<DurableBuffer>,
    view: Arc<SinkView>,
    link: Arc<LinkStats>,
    dead_letters: mpsc::Sender<DeadLetterBatch>,
    /// Next record to load.
    next_seq: u64,
    /// Number of the first message of the next record loaded.
    next_message: u64,
    /// `ferrule-pub` and `ferrule-epoch` (None: sequence numbers are off).
    stamp: Option<(String, String)>,
    /// The message numbering after the last retired record (kept with the next removal).
    acked_cursor: Option<MessageCursor>,
    ready: VecDeque<(u64, u64, Arc<OutputBatch>)>,
    inflight: VecDeque<InFlight>,
    /// Per record not yet settled, the topics the broker refused for good (kept across
    /// reconnects: their samples are dead-lettered once and not sent again).
    refused_topics: HashMap<u64, Vec<String>>,
    /// Record and topic of each publish handed to the client, until its packet id is known.
    sent_order: VecDeque<(u64, String)>,
    by_pkid: HashMap<u16, (u64, String)>,
    outstanding: usize,
    acked_through: Option<u64>,
    removed_through: Option<u64>,
    aliases: HashMap<String, u16>,
    alias_max: u16,
    tokens: f64,
    tokens_at: Instant,
}

impl Forwarder {
    fn new(
        name: String,
        config: MqttSinkConfig,
        buffer: Arc<DurableBuffer>,
        view: Arc<SinkView>,
        link: Arc<LinkStats>,
        dead_letters: mpsc::Sender<DeadLetterBatch>,
    ) -> Self {
        let client_id = config.broker.client_id_or(&format!("ferrule-{name}"));
        let status_topic = config
            .status_topic
            .clone()
            .unwrap_or_else(|| format!("ferrule/{client_id}/status"));
        let next_seq = buffer.first_seq().unwrap_or(1);
        // Continue the numbering kept with the last removal: the first buffered record is
        // the one after it (removals and the cursor are committed together).
        let next_message = buffer.message_cursor().map_or(1, |c| c.message);
        let stamp = config.sequence.then(|| {
            (
                config
                    .publisher_id
                    .clone()
                    .unwrap_or_else(|| client_id.clone()),
                format!("{:016x}", buffer.identity()),
            )
        });
        Forwarder {
            name,
            config,
            client_id,
            status_topic,
            buffer,
            view,
            link,
            dead_letters,
            next_seq,
            next_message,
            stamp,
            acked_cursor: None,
            ready: VecDeque::new(),
            inflight: VecDeque::new(),
            refused_topics: HashMap::new(),
            sent_order: VecDeque::new(),
            by_pkid: HashMap::new(),
            outstanding: 0,
            acked_through: None,
            removed_through: None,
            aliases: HashMap::new(),
            alias_max: 0,
            tokens: 0.0,
            tokens_at: Instant::now(),
        }
    }

    fn status_payload(&self, state: &str, reason: &str) -> Vec<u8> {
        serde_json::json!({
            "state": state,
            "reason": reason,
            "client_id": self.client_id,
            "sink": self.name,
            "version": env!("CARGO_PKG_VERSION"),
            "ts_ns": now_ns(),
        })
        .to_string()
        .into_bytes()
    }

    fn connect(&mut self) -> (AsyncClient, EventLoop) {
        let mut o = self.config.broker.options(&self.client_id);
        o.set_clean_start(true);
        o.set_session_expiry_interval(Some(self.config.broker.session_expiry_s));
        o.set_outgoing_inflight_upper_limit(self.config.max_inflight);
        o.set_last_will(LastWill::new(
            self.status_topic.clone(),
            self.status_payload("offline", "connection-lost"),
            QoS::AtLeastOnce,
            true,
            None,
        ));
        // Everything not acknowledged is sent again from the buffer on this connection.
        self.next_seq = self
            .inflight
            .front()
            .map(|r| r.seq)
            .or_else(|| self.ready.front().map(|r| r.0))
            .unwrap_or(self.next_seq);
        if let Some(r) = self.inflight.front() {
            // Resent under the same numbers.
            self.next_message = r.first_message;
        }
        self.inflight.clear();
        self.ready.clear();
        self.sent_order.clear();
        self.by_pkid.clear();
        self.outstanding = 0;
        self.aliases.clear();
        self.alias_max = 0;
        AsyncClient::new(o, self.config.max_inflight as usize + 16)
    }

    async fn run(
        mut self,
        mut live: mpsc::Receiver<(u64, Arc<OutputBatch>)>,
        mut writer_done: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut outage_started: Option<Instant> = None;
        let mut drain_deadline: Option<Instant> = None;
        let mut removal_tick = tokio::time::interval(Duration::from_millis(100));
        removal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'connection: loop {
            let (client, events) = self.connect();
            let mut pump = crate::mqtt::EventPump::spawn(events, false);
            let mut connected = false;
            loop {
                if *writer_done.borrow() {
                    let deadline = *drain_deadline.get_or_insert_with(|| {
                        Instant::now() + Duration::from_millis(self.config.drain_timeout_ms)
                    });
                    let drained = self.buffer.depth().0 == 0
                        || (self.inflight.is_empty()
                            && self.ready.is_empty()
                            && self.next_seq > self.last_committed());
                    if drained || Instant::now() > deadline {
                        self.remove_acked().await;
                        if connected {
                            self.goodbye(&client, &mut pump).await;
                        }
                        let (records, samples) = self.buffer.depth();
                        if samples > 0 {
                            tracing::warn!(sink = %self.name, records, samples, "stopping with samples still buffered; they are sent at the next start");
                        }
                        return;
                    }
                }
                if connected {
                    self.pump(&client).await;
                }
                let wait = self.rate_wait();
                tokio::select! {
                    ev = pump.events.recv() => match ev.unwrap_or_else(|| Err("event loop stopped".into())) {
                        Ok(Event::Incoming(Packet::ConnAck(c))) => {
                            connected = true;
                            self.link.connected.store(true, Ordering::Relaxed);
                            self.alias_max = c
                                .properties
                                .as_ref()
                                .and_then(|p| p.topic_alias_max)
                                .unwrap_or(0)
                                .min(self.config.topic_aliases);
                            backoff.reset();
                            self.view.health.progressed();
                            match outage_started.take() {
                                Some(t) => tracing::info!(sink = %self.name, broker = %self.config.broker.address(), outage_s = t.elapsed().as_secs_f64(), backlog = self.buffer.depth().1, "reconnected; sending the backlog in order"),
                                None => tracing::info!(sink = %self.name, broker = %self.config.broker.address(), "connected"),
                            }
                            let birth = self.status_payload("online", "connected");
                            if client.try_publish(self.status_topic.clone(), QoS::AtLeastOnce, true, birth).is_ok() {
                                self.sent_order.push_back((NOT_A_RECORD, String::new()));
                            }
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            let sent = self.sent_order.pop_front().unwrap_or((NOT_A_RECORD, String::new()));
                            if self.config.qos == crate::mqtt::QosLevel::AtMostOnce {
                                self.message_acked(sent.0);
                            } else {
                                self.by_pkid.insert(pkid, sent);
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(a))) => {
                            let (seq, topic) = self.by_pkid.remove(&a.pkid).unwrap_or((NOT_A_RECORD, String::new()));
                            match a.reason {
                                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                                    self.view.health.progressed();
                                    self.message_acked(seq)
                                }
                                PubAckReason::QuotaExceeded => {
                                    self.link.refused.fetch_add(1, Ordering::Relaxed);
                                    self.view.health.failed(&SinkError::transient(&self.name, "broker: quota exceeded"));
                                    tracing::warn!(sink = %self.name, "broker over its quota; reconnecting to send again");
                                    break;
                                }
                                other => {
                                    self.link.refused.fetch_add(1, Ordering::Relaxed);
                                    self.refuse_message(seq, &topic, &format!("{other:?}")).await;
                                    self.message_acked(seq);
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::PubComp(c))) => {
                            let (seq, _) = self.by_pkid.remove(&c.pkid).unwrap_or((NOT_A_RECORD, String::new()));
                            if c.reason == PubCompReason::Success {
                                self.message_acked(seq);
                            }
                        }
                        Ok(Event::Incoming(Packet::Disconnect(d))) => {
                            tracing::warn!(sink = %self.name, reason = ?d.reason_code, "broker disconnected us");
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.view.health.failed(&SinkError::transient(&self.name, &e));
                            if outage_started.is_none() {
                                outage_started = Some(Instant::now());
                                tracing::warn!(sink = %self.name, broker = %self.config.broker.address(), "broker unreachable, buffering: {e}");
                            } else {
                                tracing::debug!(sink = %self.name, "reconnect failed: {e}");
                            }
                            break;
                        }
                    },
                    Some((seq, b)) = live.recv() => self.take_live(seq, b, &mut live),
                    _ = writer_done.changed(), if !*writer_done.borrow() => {}
                    _ = removal_tick.tick() => self.remove_acked().await,
                    _ = tokio::time::sleep(wait.unwrap_or(Duration::from_millis(50))) => {}
                }
            }
            // Connection lost: reconnect with backoff and jitter.
            self.link.connected.store(false, Ordering::Relaxed);
            self.link.reconnects.fetch_add(1, Ordering::Relaxed);
            drop(client);
            drop(pump);
            self.remove_acked().await;
            let deadline = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    Some((seq, b)) = live.recv() => self.take_live(seq, b, &mut live),
                    _ = writer_done.changed(), if !*writer_done.borrow() => {}
                }
            }
            if *writer_done.borrow() && drain_deadline.is_some_and(|d| Instant::now() > d) {
                let (records, samples) = self.buffer.depth();
                tracing::warn!(sink = %self.name, records, samples, "stopping while the broker is unreachable; buffered samples are sent at the next start");
                return;
            }
            continue 'connection;
        }
    }

    fn last_committed(&self) -> u64 {
        self.buffer
            .last_seq()
            .unwrap_or(0)
            .max(self.ready.back().map_or(0, |r| r.0))
    }

    fn take_live(
        &mut self,
        seq: u64,
        b: Arc<OutputBatch>,
        live: &mut mpsc::Receiver<(u64, Arc<OutputBatch>)>,
    ) {
        // Keep only records that continue what is loaded; others are read back from disk.
        let accept = |fw: &mut Forwarder, seq: u64, b: Arc<OutputBatch>| {
            let expected = fw.ready.back().map_or(fw.next_seq, |r| r.0 + 1);
            if seq == expected && fw.ready.len() < LIVE_HANDOFF {
                fw.ready.push_back((seq, now_ns(), b));
            }
        };
        accept(self, seq, b);
        while let Ok((seq, b)) = live.try_recv() {
            accept(self, seq, b);
        }
    }

    /// How long until the rate limit allows the next message (None: not limited now).
    fn rate_wait(&self) -> Option<Duration> {
        if self.config.max_rate == 0 || self.tokens >= 1.0 {
            return None;
        }
        Some(Duration::from_secs_f64(
            ((1.0 - self.tokens) / self.config.max_rate as f64).max(0.001),
        ))
    }

    fn refill(&mut self) {
        if self.config.max_rate == 0 {
            return;
        }
        let now = Instant::now();
        let rate = self.config.max_rate as f64;
        self.tokens = (self.tokens + now.duration_since(self.tokens_at).as_secs_f64() * rate)
            .min(rate.max(MAX_SAMPLES_PER_MESSAGE as f64));
        self.tokens_at = now;
    }

    /// Hands messages to the client while the window and the rate allow.
    async fn pump(&mut self, client: &AsyncClient) {
        self.refill();
        loop {
            if self.outstanding >= self.config.max_inflight as usize {
                return;
            }
            if self.config.max_rate > 0 && self.tokens < 1.0 {
                return;
            }
            // The first record with unsent messages, loading one if needed.
            let idx = match self.inflight.iter().position(|r| !r.unsent.is_empty()) {
                Some(i) => i,
                None => {
                    if !self.load_next().await {
                        return;
                    }
                    self.inflight.len() - 1
                }
            };
            let rec = &mut self.inflight[idx];
            let Some(m) = rec.unsent.front() else {
                continue;
            };
            let mut user_properties = vec![("contract".into(), payload::CONTRACT.into())];
            if let Some((publisher, epoch)) = &self.stamp {
                user_properties.push((PUBLISHER_PROPERTY.into(), publisher.clone()));
                user_properties.push((EPOCH_PROPERTY.into(), epoch.clone()));
                user_properties.push((SEQ_PROPERTY.into(), m.seq.to_string()));
            }
            let mut props = PublishProperties {
                message_expiry_interval: self.config.message_expiry_s,
                content_type: Some("application/json".into()),
                payload_format_indicator: Some(1),
                user_properties,
                ..Default::default()
            };
            let mut topic = m.topic.clone();
            let mut new_alias = None;
            if self.alias_max > 0 {
                match self.aliases.get(&m.topic) {
                    Some(a) => {
                        props.topic_alias = Some(*a);
                        topic.clear();
                    }
                    None if (self.aliases.len() as u16) < self.alias_max => {
                        let a = self.aliases.len() as u16 + 1;
                        props.topic_alias = Some(a);
                        new_alias = Some(a);
                    }
                    None => {}
                }
            }
            let r = client.try_publish_with_properties(
                topic,
                self.config.qos.to_rumqttc(),
                self.config.retain,
                m.payload.clone(),
                props,
            );
            if r.is_err() {
                // The client's queue is full; the event loop drains it.
                return;
            }
            if let Some(a) = new_alias {
                self.aliases.insert(m.topic.clone(), a);
            }
            let m = rec.unsent.pop_front().expect("front exists");
            rec.unacked += 1;
            self.outstanding += 1;
            self.sent_order.push_back((rec.seq, m.topic.clone()));
            self.link.published.fetch_add(1, Ordering::Relaxed);
            if self.config.max_rate > 0 {
                self.tokens -= m.samples as f64;
            }
        }
    }

    /// Loads the next record (from memory or disk) into `inflight`; false if none is ready.
    async fn load_next(&mut self) -> bool {
        loop {
            while self.ready.front().is_some_and(|r| r.0 < self.next_seq) {
                self.ready.pop_front();
            }
            let (seq, appended_ns, batch) = match self.ready.front() {
                Some(r) if r.0 == self.next_seq => self.ready.pop_front().expect("front exists"),
                _ => {
                    // Not in memory: read a few records from disk.
                    let buffer = self.buffer.clone();
                    let from = self.next_seq;
                    let read =
                        tokio::task::spawn_blocking(move || buffer.read_from(from, 16)).await;
                    let records = match read {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => {
                            tracing::error!(sink = %self.name, "cannot read the buffer: {e}");
                            return false;
                        }
                        Err(_) => return false,
                    };
                    if records.is_empty() {
                        return false;
                    }
                    self.ready.clear();
                    for r in records {
                        self.ready
                            .push_back((r.seq, r.appended_ns, Arc::new(r.batch)));
                    }
                    let first = self.ready.front().expect("non-empty").0;
                    // Records before `first` were dropped (overflow) meanwhile.
                    self.next_seq = first;
                    continue;
                }
            };
            self.next_seq = seq + 1;
            let samples = batch.samples.len() as u64;
            let expired = self
                .buffer
                .config()
                .max_age_s
                .is_some_and(|age| now_ns().saturating_sub(appended_ns) > age * 1_000_000_000);
            let first_message = self.next_message;
            let (unsent, messages) = if expired {
                self.buffer
                    .stats()
                    .dropped_expired
                    .fetch_add(samples, Ordering::Relaxed);
                tracing::warn!(sink = %self.name, samples, max_age_s = self.buffer.config().max_age_s, "dropping expired buffered samples");
                (VecDeque::new(), 0)
            } else {
                self.messages(seq, &batch, first_message)
            };
            self.next_message += messages;
            let refused = self.refused_samples(seq, &batch);
            self.inflight.push_back(InFlight {
                seq,
                first_message,
                messages,
                batch,
                unsent,
                unacked: 0,
                samples: if expired { 0 } else { samples },
                refused,
            });
            if expired {
                self.settle();
                continue;
            }
            self.view.health.working();
            return true;
        }
    }

    /// The messages of a record: per tag in order of first appearance; several samples of a
    /// tag become one batch-form message when `batch_form` is on. Numbered from `first`, also
    /// the messages of topics the broker refused (not sent again); returns how many numbers
    /// the record takes.
    fn messages(&self, seq: u64, b: &OutputBatch, first: u64) -> (VecDeque<Message>, u64) {
        let refused = self.refused_topics.get(&seq);
        let s = &b.samples;
        let mut order: Vec<u32> = Vec::new();
        let mut by_tag: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, &t) in s.tag_ids.iter().enumerate() {
            by_tag
                .entry(t)
                .or_insert_with(|| {
                    order.push(t);
                    Vec::new()
                })
                .push(i);
        }
        let wire = |i: usize| WireSample {
            value: s.values[i],
            extra: s.extra(i).cloned(),
            status: s.quality[i],
            ts_ns: s.timestamps[i],
        };
        let mut out = VecDeque::with_capacity(order.len());
        let mut numbered = 0;
        let chunk = if self.config.batch_form {
            MAX_SAMPLES_PER_MESSAGE
        } else {
            1
        };
        for t in order {
            let Some(Some(tag)) = b.tags.get(t as usize) else {
                continue;
            };
            let idx = &by_tag[&t];
            if refused.is_some_and(|r| r.contains(&tag.path)) {
                // Dead-lettered already, on an earlier connection (its numbers stay taken).
                numbered += idx.len().div_ceil(chunk) as u64;
                continue;
            }
            let fields = payload::tag_fields(tag, self.config.include_metadata);
            for part in idx.chunks(chunk) {
                let samples: Vec<WireSample> = part.iter().map(|&i| wire(i)).collect();
                out.push_back(Message {
                    topic: tag.path.clone(),
                    payload: Bytes::from(payload::render(&fields, &samples)),
                    samples: part.len() as u64,
                    seq: first + numbered,
                });
                numbered += 1;
            }
        }
        (out, numbered)
    }

    fn message_acked(&mut self, seq: u64) {
        if seq == NOT_A_RECORD {
            return;
        }
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Some(r) = self.inflight.iter_mut().find(|r| r.seq == seq) {
            r.unacked = r.unacked.saturating_sub(1);
        }
        self.settle();
    }

    /// Retires fully acknowledged records at the head, in order.
    fn settle(&mut self) {
        while self
            .inflight
            .front()
            .is_some_and(|r| r.unacked == 0 && r.unsent.is_empty())
        {
            let r = self.inflight.pop_front().expect("front exists");
            self.acked_through = Some(r.seq);
            self.acked_cursor = Some(MessageCursor {
                record: r.seq + 1,
                message: r.first_message + r.messages,
            });
            self.refused_topics.remove(&r.seq);
            self.view
                .written
                .fetch_add(r.samples.saturating_sub(r.refused), Ordering::Relaxed);
            self.buffer
                .stats()
                .delivered_samples
                .fetch_add(r.samples, Ordering::Relaxed);
        }
        if self.inflight.is_empty() && self.ready.is_empty() {
            self.view.health.idle();
        }
    }

    /// Samples of record `seq` whose topic the broker refused on an earlier connection.
    fn refused_samples(&self, seq: u64, b: &OutputBatch) -> u64 {
        let Some(topics) = self.refused_topics.get(&seq) else {
            return 0;
        };
        b.samples
            .tag_ids
            .iter()
            .filter(|&&t| {
                b.tags
                    .get(t as usize)
                    .and_then(|t| t.as_deref())
                    .is_some_and(|t| topics.contains(&t.path))
            })
            .count() as u64
    }

    /// The broker refused the message on `topic` of record `seq` for good: its samples go to
    /// the dead-letter with the reason (buffered records hold no acknowledgment: their sources
    /// were acknowledged when they entered the buffer).
    async fn refuse_message(&mut self, seq: u64, topic: &str, reason: &str) {
        let Some(r) = self.inflight.iter_mut().find(|r| r.seq == seq) else {
            return;
        };
        // A tag's samples may have gone as several messages: dead-lettered once, and not
        // sent again after a reconnect.
        let refused_here = self.refused_topics.entry(seq).or_default();
        if refused_here.iter().any(|t| t == topic) {
            return;
        }
        refused_here.push(topic.to_string());
        let b = r.batch.clone();
        let refused: Vec<super::RefusedSample> = (0..b.samples.len())
            .filter(|&i| {
                b.tags
                    .get(b.samples.tag_ids[i] as usize)
                    .and_then(|t| t.as_deref())
                    .is_some_and(|t| t.path == topic)
            })
            .map(|index| super::RefusedSample {
                index,
                reason: "broker-refused",
                detail: format!("the broker refused the publish on `{topic}`: {reason}"),
            })
            .collect();
        r.refused = (r.refused + refused.len() as u64).min(r.samples);
        super::dead_letter_refused(
            &self.name,
            &b,
            &refused,
            &self.dead_letters,
            &self.view.health,
        )
        .await;
    }

    /// Deletes acknowledged records from the buffer.
    async fn remove_acked(&mut self) {
        let Some(through) = self.acked_through else {
            return;
        };
        if self.removed_through == Some(through) {
            return;
        }
        let buffer = self.buffer.clone();
        let cursor = self.acked_cursor;
        match tokio::task::spawn_blocking(move || buffer.remove_through_at(through, cursor)).await {
            Ok(Ok(_)) => self.removed_through = Some(through),
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name, "cannot remove delivered records (they will be sent again): {e}")
            }
            Err(_) => {}
        }
    }

    /// Publishes the retained `offline` status and disconnects cleanly (no last will).
    async fn goodbye(&mut self, client: &AsyncClient, pump: &mut crate::mqtt::EventPump) {
        let bye = self.status_payload("offline", "shutdown");
        if client
            .try_publish(self.status_topic.clone(), QoS::AtLeastOnce, true, bye)
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let Some(ev) = pump.events.recv().await else {
                    break;
                };
                match ev {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let sent = self
                            .sent_order
                            .pop_front()
                            .unwrap_or((NOT_A_RECORD, String::new()));
                        if sent.0 == NOT_A_RECORD {
                            self.by_pkid.insert(pkid, sent);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(a)))
                        if self
                            .by_pkid
                            .get(&a.pkid)
                            .is_some_and(|s| s.0 == NOT_A_RECORD) =>
                    {
                        let _ = client.try_disconnect();
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        self.link.connected.store(false, Ordering::Relaxed);
    }
}
