//! Commands over Kafka: records on a command topic (key: the tag's normalized path, unless
//! the payload names `path`; value: the JSON command) as a consumer-group member; the reply —
//! the command's `WriteRecord`, after it is in the audit log — is produced to the reply topic
//! keyed by the command id, with the command's `correlation_id` header copied. Commands are
//! executed one at a time in partition order; a record's offset is stored for commit only
//! after its reply was produced, so a crash runs unanswered commands again (their deadlines
//! and `expected_current` keep that safe).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::watch;

use super::command;
use super::config::KafkaCommandsConfig;
use super::WriteService;

/// The header whose value the reply carries back.
pub const CORRELATION_HEADER: &str = "correlation_id";

fn clients(c: &KafkaCommandsConfig) -> Result<(StreamConsumer, FutureProducer), String> {
    let client_id = c
        .client_id
        .clone()
        .unwrap_or_else(|| "ferrule-writes".into());
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &c.brokers)
        .set("group.id", &c.group_id)
        .set("client.id", &client_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        // Commands older than the consumer are not wanted: deadlines would refuse most.
        .set("auto.offset.reset", "latest");
    for (k, v) in &c.properties {
        cc.set(k, v);
    }
    let consumer: StreamConsumer = cc.create().map_err(|e| format!("consumer: {e}"))?;
    consumer
        .subscribe(&[c.topic.as_str()])
        .map_err(|e| format!("subscribe to `{}`: {e}", c.topic))?;
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &c.brokers)
        .set("client.id", &client_id)
        .set("acks", "all");
    for (k, v) in &c.properties {
        pc.set(k, v);
    }
    let producer: FutureProducer = pc.create().map_err(|e| format!("producer: {e}"))?;
    Ok((consumer, producer))
}

/// Consumes commands until shutdown.
pub async fn run(
    config: KafkaCommandsConfig,
    service: Arc<WriteService>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (consumer, producer) = match clients(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("write-back commands on Kafka: {e}");
            return;
        }
    };
    let mut failing = false;
    loop {
        let m = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return; }
                continue;
            }
        };
        let m = match m {
            Ok(m) => {
                failing = false;
                m
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(brokers = %config.brokers, "write-back commands on Kafka: {e}");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let channel = format!("kafka {}[{}]@{}", m.topic(), m.partition(), m.offset());
        let key = m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| !k.is_empty());
        let correlation: Option<Vec<u8>> = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == CORRELATION_HEADER)
                .and_then(|h| h.value.map(|v| v.to_vec()))
        });
        let record = match command::parse(
            m.payload().unwrap_or_default(),
            key,
            &channel,
            service.config().default_deadline_ms,
        ) {
            Ok(cmd) => service.execute(cmd).await,
            Err((id, detail)) => service.malformed(id, &channel, key, detail).await,
        };
        let body = serde_json::to_vec(&record).unwrap_or_default();
        let mut headers = OwnedHeaders::new();
        if let Some(c) = &correlation {
            headers = headers.insert(Header {
                key: CORRELATION_HEADER,
                value: Some(c),
            });
        }
        let reply = FutureRecord::to(&config.reply_topic)
            .key(record.id.as_str())
            .payload(&body)
            .headers(headers);
        if let Err((e, _)) = producer.send(reply, Duration::from_secs(10)).await {
            tracing::warn!(id = %record.id, "write-back: cannot produce the reply to `{}`: {e}", config.reply_topic);
        }
        if let Err(e) = consumer.store_offset_from_message(&m) {
            tracing::warn!("write-back commands on Kafka: storing the offset: {e}");
        }
    }
}
