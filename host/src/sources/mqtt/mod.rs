//! The MQTT source: subscribes (shared subscriptions let several instances split a plant),
//! parses each message into samples and feeds the pipeline. Acknowledgments are manual: a
//! message's PUBACK is sent only when every holder of its samples said done (every sink has
//! durably taken them, or the dead-letter has its refusal), so nothing acknowledged is ever
//! lost; after a crash the broker delivers the unacknowledged messages again (the session
//! outlives the connection). PUBACKs go out in the order the messages arrived (MQTT 5 §4.6),
//! and only on the connection they arrived on. A batch that fails (a holder let go without
//! saying done) is never acknowledged: the source stops acknowledging on that connection and
//! reconnects, so the broker redelivers it and what came after it.
//!
//! Messages a sending Ferrule stamped with its publisher sequence (`ferrule-pub`,
//! `ferrule-epoch`, `ferrule-seq` user properties) go through the sequence check
//! (`sources::sequence`) before they are parsed: a gap is counted, logged and dead-lettered
//! (`upstream-gap`). Messages without them are taken as they are.

mod config;

pub use config::MqttSourceConfig;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event};

use super::sequence::{Gap, SequenceChecker};
use super::{SourceContext, SourceError};
use crate::ack::{Ack, Settled};
use crate::model::{DeadLetter, DeadLetterBatch};
use crate::model::{SampleBatch, TagId};
use crate::mqtt::topic;
use crate::payload;

struct Pending {
    batch: SampleBatch,
    /// Tickets (`AckOrder`) of the messages whose samples are in `batch`.
    messages: Vec<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Pending,
    Done,
    Failed,
}

/// The QoS 1/2 messages of the session in arrival order, each acknowledged once it and every
/// message before it are settled, on the connection it arrived on.
struct AckOrder {
    client: AsyncClient,
    /// Counts connections: a message's PUBACK is sent only on the connection it came on.
    epoch: u64,
    /// Ticket of `entries[0]`.
    base: u64,
    entries: VecDeque<(u64, Publish, EntryState)>,
    /// A batch of this connection failed: nothing more is acknowledged on it.
    failed_epoch: Option<u64>,
    reconnect: Arc<tokio::sync::Notify>,
    source: String,
    /// Messages left unacknowledged for redelivery.
    withheld: u64,
}

impl AckOrder {
    fn register(&mut self, p: &Publish) -> u64 {
        let ticket = self.base + self.entries.len() as u64;
        let stripped = Publish {
            payload: Bytes::new(),
            ..p.clone()
        };
        self.entries
            .push_back((self.epoch, stripped, EntryState::Pending));
        ticket
    }

    fn new_connection(&mut self, client: Option<AsyncClient>) {
        self.epoch += 1;
        if let Some(c) = client {
            self.client = c;
        }
        self.drain();
    }

    fn settle(&mut self, tickets: &[u64], outcome: Settled) {
        for &t in tickets {
            if let Some(e) = t
                .checked_sub(self.base)
                .and_then(|i| self.entries.get_mut(i as usize))
            {
                e.2 = match outcome {
                    Settled::Done => EntryState::Done,
                    Settled::Failed => EntryState::Failed,
                };
            }
        }
        self.drain();
    }

    /// Acknowledges the settled prefix, in order.
    fn drain(&mut self) {
        while let Some((epoch, p, state)) = self.entries.front() {
            match state {
                EntryState::Pending => break,
                EntryState::Failed => {
                    if *epoch == self.epoch && self.failed_epoch != Some(self.epoch) {
                        self.failed_epoch = Some(self.epoch);
                        tracing::warn!(source = %self.source, "a batch was not delivered; reconnecting so the broker redelivers it");
                        self.reconnect.notify_one();
                    }
                    self.withheld += 1;
                }
                EntryState::Done if *epoch != self.epoch || self.failed_epoch == Some(*epoch) => {
                    // Not on this connection (or after a failure on it): the broker
                    // redelivers it; a duplicate, never a loss.
                    self.withheld += 1;
                }
                EntryState::Done => {
                    if let Err(e) = self.client.try_ack(p) {
                        tracing::warn!(source = %self.source, "could not acknowledge a message: {e}");
                    }
                }
            }
            self.entries.pop_front();
            self.base += 1;
        }
    }
}

fn connect(config: &MqttSourceConfig, client_id: &str) -> (AsyncClient, crate::mqtt::EventPump) {
    let mut o = config.broker.options(client_id);
    o.set_clean_start(config.clean_start);
    o.set_session_expiry_interval(Some(config.broker.session_expiry_s));
    o.set_manual_acks(true);
    o.set_receive_maximum(Some(config.receive_maximum));
    // Acks come from pipeline threads; the request queue must hold a window's worth.
    let (client, events) = AsyncClient::new(o, config.receive_maximum as usize * 2 + 64);
    (client, crate::mqtt::EventPump::spawn(events, true))
}

pub async fn run(config: MqttSourceConfig, mut ctx: SourceContext) -> Result<(), SourceError> {
    let client_id = config.broker.client_id_or(&format!("ferrule-{}", ctx.name));
    let (mut client, mut pump) = connect(&config, &client_id);
    let reconnect = Arc::new(tokio::sync::Notify::new());
    let order = Arc::new(Mutex::new(AckOrder {
        client: client.clone(),
        epoch: 0,
        base: 0,
        entries: VecDeque::new(),
        failed_epoch: None,
        reconnect: reconnect.clone(),
        source: ctx.name.clone(),
        withheld: 0,
    }));
    let mut tags: HashMap<String, TagId> = HashMap::new();
    let mut pending = Pending {
        batch: SampleBatch::with_capacity(config.batch_size),
        messages: Vec::new(),
    };
    let linger = Duration::from_millis(config.linger_ms);
    let mut first_pending_at: Option<tokio::time::Instant> = None;
    let mut down_since: Option<std::time::Instant> = None;
    let mut checker = config
        .sequence
        .enabled(&config.topics)
        .then(|| SequenceChecker::new(&ctx.name, config.sequence.clone(), ctx.upstream.clone()));
    if checker.is_none() {
        tracing::info!(source = %ctx.name, "upstream sequence check off (sequence.check, or a shared subscription: each instance sees part of every publisher's sequence)");
    }
    let mut gap_tick = tokio::time::interval(Duration::from_millis(500));
    gap_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let linger_wait = first_pending_at
            .map(|t| t + linger)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = pump.events.recv() => match ev.unwrap_or_else(|| Err("event loop stopped".into())) {
                Ok(Event::Incoming(Packet::ConnAck(c))) => {
                    lock(&order).new_connection(None);
                    match down_since.take() {
                        Some(t) => tracing::info!(source = %ctx.name, broker = %config.broker.address(), session_present = c.session_present, outage_s = t.elapsed().as_secs_f64(), "reconnected"),
                        None => tracing::info!(source = %ctx.name, broker = %config.broker.address(), session_present = c.session_present, "connected"),
                    }
                    let filters: Vec<Filter> = config
                        .topics
                        .iter()
                        .map(|t| Filter::new(t.clone(), config.qos.to_rumqttc()))
                        .collect();
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::error!(source = %ctx.name, "cannot subscribe: {e}");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    tracing::debug!(source = %ctx.name, codes = ?s.return_codes, "subscribed");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(c) = checker.as_mut() {
                        if let Some((publisher, epoch, seq)) = stamp(&p) {
                            let (_, gaps) = c.observe(publisher, epoch, seq, std::time::Instant::now());
                            report_gaps(&ctx, c, gaps).await;
                        }
                    }
                    if let Some(refusal) = take_message(&config, &ctx, &mut tags, &mut pending, &p, &order) {
                        refuse(&ctx, &order, p, refusal).await;
                    }
                    if first_pending_at.is_none() && !pending.batch.is_empty() {
                        first_pending_at = Some(tokio::time::Instant::now());
                    }
                    if pending.batch.len() >= config.batch_size {
                        flush(&ctx, &order, &mut pending).await?;
                        first_pending_at = None;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if down_since.is_none() {
                        down_since = Some(std::time::Instant::now());
                        tracing::warn!(source = %ctx.name, broker = %config.broker.address(), "broker unreachable: {e}");
                    }
                }
            },
            _ = gap_tick.tick(), if checker.is_some() => {
                if let Some(c) = checker.as_mut() {
                    let gaps = c.tick(std::time::Instant::now());
                    report_gaps(&ctx, c, gaps).await;
                }
            }
            _ = tokio::time::sleep_until(linger_wait), if first_pending_at.is_some() => {
                flush(&ctx, &order, &mut pending).await?;
                first_pending_at = None;
            }
            _ = reconnect.notified() => {
                // Drop the connection without DISCONNECT: the session stays and the broker
                // redelivers every message not acknowledged on it.
                flush(&ctx, &order, &mut pending).await?;
                first_pending_at = None;
                drop(pump);
                let (c, p) = connect(&config, &client_id);
                client = c;
                pump = p;
                lock(&order).new_connection(Some(client.clone()));
            }
            _ = ctx.shutdown.changed() => {
                if *ctx.shutdown.borrow() {
                    flush(&ctx, &order, &mut pending).await?;
                    // Let the acknowledgments of what is in the pipeline go out for a moment.
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        while let Some(Ok(_)) = pump.events.recv().await {}
                    })
                    .await;
                    let _ = client.try_disconnect();
                    return Ok(());
                }
            }
        }
    }
}

/// The publisher sequence stamp of a message (`ferrule-pub`, `ferrule-epoch`, `ferrule-seq`),
/// if it has a complete one.
fn stamp(p: &Publish) -> Option<(&str, &str, u64)> {
    use crate::payload::{EPOCH_PROPERTY, PUBLISHER_PROPERTY, SEQ_PROPERTY};
    let props = &p.properties.as_ref()?.user_properties;
    let get = |k: &str| props.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    Some((
        get(PUBLISHER_PROPERTY)?,
        get(EPOCH_PROPERTY)?,
        get(SEQ_PROPERTY)?.parse().ok()?,
    ))
}

/// Dead-letters the gaps the sequence check declared (an event: nothing to acknowledge).
async fn report_gaps(ctx: &SourceContext, checker: &SequenceChecker, gaps: Vec<Gap>) {
    if gaps.is_empty() {
        return;
    }
    let letters = gaps.iter().map(|g| checker.dead_letter(g)).collect();
    if ctx
        .dead_letters
        .send(DeadLetterBatch::new(letters, None))
        .await
        .is_err()
    {
        tracing::error!(source = %ctx.name, "the dead-letter sink stopped; upstream gaps are only logged and counted");
    }
}

/// Adds a message's samples to the pending batch; returns the refusal (reason, detail) of a
/// message that cannot be taken.
fn take_message(
    config: &MqttSourceConfig,
    ctx: &SourceContext,
    tags: &mut HashMap<String, TagId>,
    pending: &mut Pending,
    p: &Publish,
    order: &Arc<Mutex<AckOrder>>,
) -> Option<(&'static str, String)> {
    let topic = match std::str::from_utf8(&p.topic) {
        Ok(t) => t.to_string(),
        Err(_) => return Some(("topic-spec", "topic is not UTF-8".into())),
    };
    if config.require_topic_spec {
        if let Some(v) = topic::spec_violation(&topic) {
            return Some(("topic-spec", v));
        }
    }
    let parsed = match payload::parse(&p.payload, config.max_payload_bytes) {
        Ok(parsed) => parsed,
        Err(e) => return Some((e.reason, e.detail)),
    };
    let id = match tags.get(&topic) {
        Some(id) => *id,
        None => match ctx
            .registry
            .try_intern(parsed.descriptor(&ctx.name, &topic))
        {
            Ok(id) => *tags.entry(topic).or_insert(id),
            Err(e) => return Some(("tag-limit", e.to_string())),
        },
    };
    parsed.append_to(id, &mut pending.batch);
    if p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce {
        pending.messages.push(lock(order).register(p));
    }
    None
}

fn lock(order: &Mutex<AckOrder>) -> std::sync::MutexGuard<'_, AckOrder> {
    order.lock().unwrap_or_else(|e| e.into_inner())
}

/// An acknowledgment that settles the messages with `tickets` (their PUBACKs then go out in
/// arrival order).
fn ack_for(order: &Arc<Mutex<AckOrder>>, tickets: Vec<u64>) -> Option<Ack> {
    if tickets.is_empty() {
        return None;
    }
    let order = order.clone();
    Some(Ack::new(move |outcome| {
        lock(&order).settle(&tickets, outcome)
    }))
}

async fn flush(
    ctx: &SourceContext,
    order: &Arc<Mutex<AckOrder>>,
    pending: &mut Pending,
) -> Result<(), SourceError> {
    if pending.batch.is_empty() {
        return Ok(());
    }
    let mut batch = std::mem::replace(&mut pending.batch, SampleBatch::with_capacity(1024));
    batch.ack = ack_for(order, std::mem::take(&mut pending.messages));
    let n = batch.len() as u64;
    ctx.out.send(batch).await.map_err(|_| SourceError::Failed {
        name: ctx.name.clone(),
        message: "the pipeline stopped".into(),
    })?;
    ctx.produced.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// Dead-letters a message that cannot be taken, with its topic, reason and payload.
async fn refuse(
    ctx: &SourceContext,
    order: &Arc<Mutex<AckOrder>>,
    p: Publish,
    (reason, detail): (&'static str, String),
) {
    let topic = String::from_utf8_lossy(&p.topic).to_string();
    tracing::debug!(source = %ctx.name, topic, reason, "message refused: {detail}");
    let letter = DeadLetter::refused_by_source(&ctx.name, reason, detail, topic, &p.payload);
    let tickets = if p.qos == rumqttc::v5::mqttbytes::QoS::AtMostOnce {
        Vec::new()
    } else {
        vec![lock(order).register(&p)]
    };
    let ack = ack_for(order, tickets);
    if ctx
        .dead_letters
        .send(DeadLetterBatch::new(vec![letter], ack))
        .await
        .is_err()
    {
        tracing::error!(source = %ctx.name, "the dead-letter sink stopped; the message stays unacknowledged");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::Request;

    fn order() -> (AckOrder, flume::Receiver<Request>, Arc<tokio::sync::Notify>) {
        let (tx, rx) = flume::unbounded();
        let reconnect = Arc::new(tokio::sync::Notify::new());
        let order = AckOrder {
            client: AsyncClient::from_senders(tx),
            epoch: 0,
            base: 0,
            entries: VecDeque::new(),
            failed_epoch: None,
            reconnect: reconnect.clone(),
            source: "test".into(),
            withheld: 0,
        };
        (order, rx, reconnect)
    }

    fn publish(pkid: u16) -> Publish {
        let mut p = Publish::new("plant/a/b/c/d/e", QoS::AtLeastOnce, "x", None);
        p.pkid = pkid;
        p
    }

    fn acked(rx: &flume::Receiver<Request>) -> Vec<u16> {
        rx.try_iter()
            .filter_map(|r| match r {
                Request::PubAck(a) => Some(a.pkid),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pubacks_go_out_in_arrival_order_whatever_order_batches_settle_in() {
        let (mut o, rx, _) = order();
        let t: Vec<u64> = (1..=3).map(|k| o.register(&publish(k))).collect();
        o.settle(&[t[2]], Settled::Done);
        assert_eq!(acked(&rx), Vec::<u16>::new());
        o.settle(&[t[0]], Settled::Done);
        assert_eq!(acked(&rx), vec![1]);
        o.settle(&[t[1]], Settled::Done);
        assert_eq!(acked(&rx), vec![2, 3]);
    }

    #[test]
    fn a_failed_batch_stops_acknowledging_on_its_connection_and_asks_for_a_reconnect() {
        let (mut o, rx, reconnect) = order();
        let t: Vec<u64> = (1..=3).map(|k| o.register(&publish(k))).collect();
        o.settle(&[t[0]], Settled::Done);
        o.settle(&[t[1]], Settled::Failed);
        o.settle(&[t[2]], Settled::Done);
        assert_eq!(acked(&rx), vec![1], "nothing after the failed message");
        let notified = reconnect.notified();
        tokio::pin!(notified);
        use std::future::Future;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(
            notified.as_mut().poll(&mut cx).is_ready(),
            "a reconnect was asked for"
        );
        assert_eq!(o.withheld, 2);
        // On the new connection, acknowledgments flow again.
        o.new_connection(None);
        let t4 = o.register(&publish(1));
        o.settle(&[t4], Settled::Done);
        assert_eq!(acked(&rx), vec![1]);
    }

    #[test]
    fn an_acknowledgment_from_before_a_reconnect_is_never_sent_on_the_new_connection() {
        let (mut o, rx, _) = order();
        let old = o.register(&publish(7));
        o.new_connection(None);
        let new = o.register(&publish(7));
        o.settle(&[new], Settled::Done);
        assert_eq!(acked(&rx), Vec::<u16>::new(), "waits for the older message");
        o.settle(&[old], Settled::Done);
        assert_eq!(acked(&rx), vec![7], "only the new connection's message");
        assert_eq!(o.withheld, 1);
    }
}
