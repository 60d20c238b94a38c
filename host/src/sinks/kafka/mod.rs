//! The Kafka sink and the Kafka dead-letter. The sink renders each sample once, routes it by
//! its tag path to one or more topics (key: the path, so per-tag order holds within a
//! partition), drops (tag, source timestamp) repeats seen within the dedup window, and hands
//! the records to an idempotent producer. `write` enqueues; `flush` returns only when Kafka
//! acknowledged every record, and the pipeline holds each batch (so its upstream
//! acknowledgment, e.g. the MQTT PUBACK) until `flush` returned: a Kafka outage backs up into
//! the source, never into memory past the bounded window.
//!
//! At-least-once window: a record Kafka reports failed is sent again by us (idempotence only
//! covers librdkafka's own retries), and a crash before the upstream acknowledgment makes the
//! source redeliver what may already be in Kafka; dedup catches the latter only within one
//! process's lifetime.

mod config;
pub mod dedup;
mod producer;
pub mod route;

pub use config::{Compression, DedupConfig, KafkaDeadLetterConfig, KafkaSinkConfig, RouteConfig};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};

use super::{DeadLetterSink, LinkStats, PerTag, Sink, SinkError};
use crate::model::Quality;
use crate::model::{DeadLetter, OutputBatch, ResolvedTag};
use crate::payload::{self, WireSample};
use producer::{Producer, Settings};

/// What a tag's samples become, worked out once per tag table.
struct Plan {
    /// Normalized tag path: the record key.
    key: String,
    /// The payload's tag fields (`"unit":…,…,"path":…`).
    fields: String,
    unit: String,
    topics: Vec<String>,
}

pub struct KafkaSink {
    name: String,
    config: KafkaSinkConfig,
    producer: Producer,
    dedup: Option<dedup::Dedup>,
    plans: PerTag<Arc<Plan>>,
    link: Arc<LinkStats>,
    /// Where records Kafka refused at delivery go (refusals at hand-over are returned by
    /// `write` instead).
    dead_letters: tokio::sync::mpsc::Sender<crate::model::DeadLetterBatch>,
}

impl KafkaSink {
    pub fn open(
        name: &str,
        config: &KafkaSinkConfig,
        link: Arc<LinkStats>,
        health: Arc<crate::sinks::SinkHealth>,
        dead_letters: tokio::sync::mpsc::Sender<crate::model::DeadLetterBatch>,
    ) -> Result<Self, SinkError> {
        let producer = Producer::new(
            name,
            Settings {
                brokers: &config.brokers,
                client_id: config
                    .client_id
                    .clone()
                    .unwrap_or_else(|| format!("ferrule-{name}")),
                compression: config.compression,
                linger_ms: config.linger_ms,
                message_timeout_ms: config.message_timeout_ms,
                max_inflight: config.max_inflight,
                properties: &config.properties,
            },
            link.clone(),
            Some(health),
        )?;
        let dedup = (config.dedup.window_s > 0).then(|| {
            dedup::Dedup::new(
                Duration::from_secs(config.dedup.window_s),
                config.dedup.max_keys,
            )
        });
        Ok(KafkaSink {
            name: name.into(),
            config: config.clone(),
            producer,
            dedup,
            plans: PerTag::default(),
            link,
            dead_letters,
        })
    }

    fn plan(&mut self, batch: &OutputBatch, id: usize) -> Option<Arc<Plan>> {
        self.plans.follow(&batch.tags);
        let slot = self.plans.slot(id)?;
        if slot.is_none() {
            let tag: &ResolvedTag = batch.tags.get(id)?.as_deref()?;
            let mut fields = payload::tag_fields(tag, self.config.include_metadata);
            fields.push_str(",\"path\":");
            fields.push_str(&serde_json::to_string(&tag.path).expect("a string serializes"));
            *slot = Some(Arc::new(Plan {
                key: tag.path.clone(),
                fields,
                unit: tag.unit.clone(),
                topics: route::topics_for(&self.config.routes, &tag.path),
            }));
        }
        slot.clone()
    }
}

fn headers(quality: u32, unit: &str) -> OwnedHeaders {
    let status = quality.to_string();
    OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: "quality",
            value: Some(Quality(quality).level()),
        })
        .insert(Header {
            key: "status",
            value: Some(status.as_str()),
        })
        .insert(Header {
            key: "unit",
            value: Some(unit),
        })
        .insert(Header {
            key: "contract",
            value: Some(payload::CONTRACT),
        })
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: &OutputBatch) -> Result<Vec<super::RefusedSample>, SinkError> {
        let now = Instant::now();
        if let Some(d) = self.dedup.as_mut() {
            d.expire(now);
        }
        let s = &batch.samples;
        let mut extras = s.extras.iter().peekable();
        // (index, reason, detail) of samples that go to the dead-letter instead.
        let mut refused: Vec<(usize, &'static str, String)> = Vec::new();
        for i in 0..s.len() {
            let mut extra = None;
            while let Some(e) = extras.next_if(|e| e.index as usize <= i) {
                if e.index as usize == i {
                    extra = Some(e.value.clone());
                }
            }
            let Some(plan) = self.plan(batch, s.tag_ids[i] as usize) else {
                refused.push((i, "no-route", "tag unknown to the tag table".into()));
                continue;
            };
            if plan.topics.is_empty() {
                refused.push((i, "no-route", format!("no route matches `{}`", plan.key)));
                continue;
            }
            if let Some(d) = self.dedup.as_mut() {
                if !d.first_time(dedup::key(&plan.key, s.timestamps[i]), now) {
                    self.link.deduplicated.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            let body = payload::render(
                &plan.fields,
                &[WireSample {
                    value: s.values[i],
                    extra,
                    status: s.quality[i],
                    ts_ns: s.timestamps[i],
                }],
            );
            let h = headers(s.quality[i], &plan.unit);
            for topic in &plan.topics {
                if let Err(e) = self
                    .producer
                    .send(topic, plan.key.as_bytes(), &body, h.clone())
                    .await
                {
                    if producer::fatal(&e) {
                        // Rebuilt by the runner; the batch is written again (the dedup
                        // window drops what was sent already).
                        return Err(SinkError::Fatal {
                            sink: self.name.clone(),
                            message: e.to_string(),
                        });
                    }
                    if !producer::permanent(&e) {
                        return Err(SinkError::transient(&self.name, format!("{topic}: {e}")));
                    }
                    refused.push((i, "kafka-refused", format!("{topic}: {e}")));
                    break;
                }
            }
        }
        Ok(refused
            .into_iter()
            .map(|(index, reason, detail)| super::RefusedSample {
                index,
                reason,
                detail,
            })
            .collect())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.producer.settle_all().await;
        let refused = self.producer.take_refused();
        if !refused.is_empty() {
            let letters = refused
                .into_iter()
                .map(|r| {
                    let key = String::from_utf8_lossy(&r.key);
                    DeadLetter::refused_record(
                        &format!("sink.{}", self.name),
                        "kafka-refused",
                        format!("{}: {}", r.topic, r.error),
                        format!("{}/{key}", r.topic),
                        &r.payload,
                    )
                })
                .collect();
            if self
                .dead_letters
                .send(crate::model::DeadLetterBatch::new(letters, None))
                .await
                .is_err()
            {
                tracing::error!(sink = %self.name, "the dead-letter sink stopped; records Kafka refused are only logged");
            }
        }
        Ok(())
    }

    async fn rebuild(&mut self) -> Result<(), SinkError> {
        self.producer.rebuild();
        Ok(())
    }
}

/// Dead-letters as JSON records on a Kafka topic.
pub struct KafkaDeadLetterSink {
    topic: String,
    instance: String,
    producer: Producer,
}

impl KafkaDeadLetterSink {
    pub fn open(config: &KafkaDeadLetterConfig) -> Result<Self, SinkError> {
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| "ferrule-dead-letter".into());
        let instance = config.instance.clone().unwrap_or_else(|| client_id.clone());
        let producer = Producer::new(
            "dead_letter",
            Settings {
                brokers: &config.brokers,
                client_id,
                compression: config.compression,
                linger_ms: config.linger_ms,
                message_timeout_ms: config.message_timeout_ms,
                max_inflight: 10_000,
                properties: &config.properties,
            },
            Arc::new(LinkStats::default()),
            None,
        )?;
        Ok(KafkaDeadLetterSink {
            topic: config.topic.clone(),
            instance,
            producer,
        })
    }
}

#[async_trait]
impl DeadLetterSink for KafkaDeadLetterSink {
    async fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        for l in letters {
            let mut v = serde_json::to_value(l).map_err(|e| SinkError::Transient {
                sink: "dead_letter".into(),
                message: e.to_string(),
            })?;
            v["instance"] = self.instance.clone().into();
            let body = v.to_string();
            let h = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: "reason",
                    value: Some(l.reason.as_str()),
                })
                .insert(Header {
                    key: "instance",
                    value: Some(self.instance.as_str()),
                });
            self.producer
                .send(&self.topic, l.path.as_bytes(), body.as_bytes(), h)
                .await
                .map_err(|e| SinkError::Transient {
                    sink: "dead_letter".into(),
                    message: format!("{}: {e}", self.topic),
                })?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.producer.settle_all().await;
        Ok(())
    }
}
