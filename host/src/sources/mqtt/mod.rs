//! The MQTT source: subscribes (shared subscriptions let several instances split a plant),
//! parses each message into samples and feeds the pipeline. Acknowledgments are manual: a
//! message's PUBACK is sent only when every sink has durably taken its samples (or the
//! dead-letter has its refusal), so nothing acknowledged is ever lost; after a crash the
//! broker delivers the unacknowledged messages again (the session outlives the connection).

mod config;

pub use config::MqttSourceConfig;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event};

use super::{SourceContext, SourceError};
use crate::ack::Ack;
use crate::model::{SampleBatch, TagId};
use crate::mqtt::{payload, topic};
use crate::pipeline::{DeadLetter, DeadLetterBatch};

struct Pending {
    batch: SampleBatch,
    /// Messages whose samples are in `batch`, acknowledged with it.
    messages: Vec<Publish>,
}

pub async fn run(config: MqttSourceConfig, mut ctx: SourceContext) -> Result<(), SourceError> {
    let client_id = config.broker.client_id_or(&format!("ferrule-{}", ctx.name));
    let mut o = config.broker.options(&client_id);
    o.set_clean_start(config.clean_start);
    o.set_session_expiry_interval(Some(config.broker.session_expiry_s));
    o.set_manual_acks(true);
    o.set_receive_maximum(Some(config.receive_maximum));
    // Acks come from pipeline threads; the request queue must hold a window's worth.
    let (client, events) = AsyncClient::new(o, config.receive_maximum as usize * 2 + 64);
    let mut pump = crate::mqtt::EventPump::spawn(events, true);
    let mut tags: HashMap<String, TagId> = HashMap::new();
    let mut pending = Pending {
        batch: SampleBatch::with_capacity(config.batch_size),
        messages: Vec::new(),
    };
    let linger = Duration::from_millis(config.linger_ms);
    let mut first_pending_at: Option<tokio::time::Instant> = None;
    let mut down_since: Option<std::time::Instant> = None;
    loop {
        let linger_wait = first_pending_at
            .map(|t| t + linger)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = pump.events.recv() => match ev.unwrap_or_else(|| Err("event loop stopped".into())) {
                Ok(Event::Incoming(Packet::ConnAck(c))) => {
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
                    if let Some(refusal) = take_message(&config, &ctx, &mut tags, &mut pending, &p) {
                        refuse(&ctx, &client, p, refusal).await;
                    }
                    if first_pending_at.is_none() && !pending.batch.is_empty() {
                        first_pending_at = Some(tokio::time::Instant::now());
                    }
                    if pending.batch.len() >= config.batch_size {
                        flush(&ctx, &client, &mut pending).await?;
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
            _ = tokio::time::sleep_until(linger_wait), if first_pending_at.is_some() => {
                flush(&ctx, &client, &mut pending).await?;
                first_pending_at = None;
            }
            _ = ctx.shutdown.changed() => {
                if *ctx.shutdown.borrow() {
                    flush(&ctx, &client, &mut pending).await?;
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

/// Adds a message's samples to the pending batch; returns the refusal (reason, detail) of a
/// message that cannot be taken.
fn take_message(
    config: &MqttSourceConfig,
    ctx: &SourceContext,
    tags: &mut HashMap<String, TagId>,
    pending: &mut Pending,
    p: &Publish,
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
    let id = *tags
        .entry(topic.clone())
        .or_insert_with(|| ctx.registry.intern(parsed.descriptor(&ctx.name, &topic)));
    parsed.append_to(id, &mut pending.batch);
    if p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce {
        pending.messages.push(Publish {
            payload: Bytes::new(),
            ..p.clone()
        });
    }
    None
}

/// An acknowledgment that sends the PUBACKs of `messages` when released.
fn ack_for(client: &AsyncClient, messages: Vec<Publish>, source: &str) -> Option<Ack> {
    if messages.is_empty() {
        return None;
    }
    let client = client.clone();
    let source = source.to_string();
    Some(Ack::new(move || {
        for m in &messages {
            if let Err(e) = client.try_ack(m) {
                // The broker sends it again after a reconnect: a duplicate, never a loss.
                tracing::warn!(source = %source, "could not acknowledge a message: {e}");
            }
        }
    }))
}

async fn flush(
    ctx: &SourceContext,
    client: &AsyncClient,
    pending: &mut Pending,
) -> Result<(), SourceError> {
    if pending.batch.is_empty() {
        return Ok(());
    }
    let mut batch = std::mem::replace(&mut pending.batch, SampleBatch::with_capacity(1024));
    batch.ack = ack_for(client, std::mem::take(&mut pending.messages), &ctx.name);
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
    client: &AsyncClient,
    p: Publish,
    (reason, detail): (&'static str, String),
) {
    let topic = String::from_utf8_lossy(&p.topic).to_string();
    tracing::debug!(source = %ctx.name, topic, reason, "message refused: {detail}");
    let letter = DeadLetter::refused_by_source(&ctx.name, reason, detail, topic, &p.payload);
    let messages = if p.qos == rumqttc::v5::mqttbytes::QoS::AtMostOnce {
        Vec::new()
    } else {
        vec![Publish {
            payload: Bytes::new(),
            ..p
        }]
    };
    let ack = ack_for(client, messages, &ctx.name);
    if ctx
        .dead_letters
        .send(DeadLetterBatch::new(vec![letter], ack))
        .await
        .is_err()
    {
        tracing::error!(source = %ctx.name, "the dead-letter sink stopped; the message stays unacknowledged");
    }
}
