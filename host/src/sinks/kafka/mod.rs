//! The Kafka sink and the Kafka dead-letter. The sink renders each sample once, routes it by
//! its tag path to one or more topics (key: the path, so per-tag order holds within a
//! partition), drops samples it already forwarded within the dedup window (same tag, source
//! time, value and quality; another value for the same tag and time is a correction, passed
//! with the header `correction: true`), and hands the records to an idempotent producer.
//! `write` enqueues; `flush` returns only when Kafka acknowledged every record (and the dedup
//! window's new entries are durable), and the pipeline holds each batch (so its upstream
//! acknowledgment, e.g. the MQTT PUBACK) until `flush` returned: a Kafka outage backs up into
//! the source, never into memory past the bounded window.
//!
//! Records are numbered (headers `ferrule-pub`, `ferrule-epoch`, `ferrule-seq`) per
//! topic-partition, so a downstream Ferrule's Kafka source can find records missing from a
//! partition; the sink picks the partition itself (CRC32 of the key modulo the partition
//! count, as librdkafka's default partitioner does). With the durable window the numbering
//! and the epoch (the window file's identity) outlive a restart.
//!
//! Across a crash the window is restored before the first write (`window.rs`): a redelivered
//! sample already in Kafka is not written again. What remains at-least-once: a record Kafka
//! reports failed and that we send again (idempotence only covers librdkafka's own retries)
//! if it did land after all.

mod config;
pub mod dedup;
mod producer;
pub mod route;
pub mod window;

pub use config::{
    Compression, DedupConfig, DedupRestore, KafkaDeadLetterConfig, KafkaSinkConfig, RouteConfig,
};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};

use super::{DeadLetterSink, LinkStats, PerTag, Sink, SinkError};
use crate::model::now_ns;
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
    /// CRC32 of the key (the partition is this modulo the topic's partition count).
    crc: u32,
}

/// The record numbering (`sequence = true`).
struct Stamp {
    publisher: String,
    epoch: String,
    /// Partitions per topic (known after `prepare`).
    partitions: std::collections::HashMap<String, i32>,
    /// Next number per (topic, partition).
    next: window::Sequences,
}

pub struct KafkaSink {
    name: String,
    config: KafkaSinkConfig,
    producer: Producer,
    dedup: Option<dedup::Dedup>,
    /// The durable dedup window (`dedup.restore = "durable"`), and the entries added since
    /// its last commit.
    window: Option<Arc<window::DurableWindow>>,
    unflushed: Vec<dedup::Entry>,
    /// Whether the dedup window was restored and the partitions looked up (done before the
    /// first write).
    restored: bool,
    stamp: Option<Stamp>,
    plans: PerTag<Arc<Plan>>,
    link: Arc<LinkStats>,
    /// Where records Kafka refused at delivery go (refusals at hand-over are returned by
    /// `write` instead).
    dead_letters: tokio::sync::mpsc::Sender<crate::model::DeadLetterBatch>,
}

impl KafkaSink {
    /// Takes back the dedup window entry of a sample that was not sent.
    fn take_back(&mut self, checked: Option<(u64, u64)>) {
        let Some((key, content)) = checked else {
            return;
        };
        if let Some(d) = self.dedup.as_mut() {
            d.forget_last(key, content);
        }
        if self
            .unflushed
            .last()
            .is_some_and(|e| e.key == key && e.content == content)
        {
            self.unflushed.pop();
        }
    }

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
            dedup::Dedup::new(config.dedup.window_s * 1_000_000_000, config.dedup.max_keys)
        });
        let window = match (&dedup, config.dedup.restore) {
            (Some(_), DedupRestore::Durable) => {
                let path = config
                    .dedup
                    .path
                    .clone()
                    .unwrap_or_else(|| format!("data/dedup/{name}.redb").into());
                Some(Arc::new(window::DurableWindow::open(&path).map_err(
                    |e| SinkError::Transient {
                        sink: name.into(),
                        message: e.to_string(),
                    },
                )?))
            }
            _ => None,
        };
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("ferrule-{name}"));
        let stamp = config.sequence.then(|| Stamp {
            publisher: config.publisher_id.clone().unwrap_or(client_id),
            // Without the durable window numbering cannot continue: a new epoch per start.
            epoch: format!(
                "{:016x}",
                window
                    .as_ref()
                    .map_or_else(|| random_epoch(name), |w| w.identity())
            ),
            partitions: Default::default(),
            next: Default::default(),
        });
        Ok(KafkaSink {
            name: name.into(),
            config: config.clone(),
            producer,
            dedup,
            window,
            unflushed: Vec::new(),
            restored: false,
            stamp,
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
                crc: crc32fast::hash(tag.path.as_bytes()),
            }));
        }
        slot.clone()
    }
}

impl KafkaSink {
    /// The topics the sink writes (every route's).
    fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .config
            .routes
            .iter()
            .flat_map(|r| r.topics.iter().cloned())
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// A consumer config for reading the window back (connection settings only).
    fn reader_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.config.brokers)
            .set("group.id", format!("ferrule-dedup-{}", self.name))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        for (k, v) in &self.config.properties {
            if k.starts_with("security.") || k.starts_with("ssl.") || k.starts_with("sasl.") {
                c.set(k, v);
            }
        }
        c
    }

    /// Before the first write (once): looks up the partitions of the topics (for numbering)
    /// and restores the dedup window (see `window.rs`).
    async fn prepare(&mut self) -> Result<(), SinkError> {
        if self.restored {
            return Ok(());
        }
        if self.stamp.is_some() {
            let handle = self.producer.handle();
            let topics = self.topics();
            let name = self.name.clone();
            let found = tokio::task::spawn_blocking(move || {
                use rdkafka::producer::Producer as _;
                let mut found = std::collections::HashMap::new();
                for t in topics {
                    let md = handle
                        .client()
                        .fetch_metadata(Some(t.as_str()), Duration::from_secs(10))
                        .map_err(|e| format!("partitions of `{t}`: {e}"))?;
                    if let Some(n) = md
                        .topics()
                        .iter()
                        .find(|m| m.name() == t && m.error().is_none())
                        .map(|m| m.partitions().len() as i32)
                        .filter(|n| *n > 0)
                    {
                        found.insert(t, n);
                    }
                }
                Ok::<_, String>(found)
            })
            .await
            .map_err(|e| SinkError::transient(&name, e))?
            .map_err(|e| SinkError::transient(&name, e))?;
            if let Some(stamp) = self.stamp.as_mut() {
                stamp.partitions = found;
            }
        }
        let restore = self.config.dedup.restore;
        if self.dedup.is_none() || restore == DedupRestore::None {
            self.restored = true;
            return Ok(());
        }
        let started = Instant::now();
        let oldest = now_ns().saturating_sub(self.config.dedup.window_s * 1_000_000_000);
        let store = self.window.clone();
        let client = self.reader_config();
        let topics = self.topics();
        let timeout = Duration::from_secs(self.config.dedup.restore_timeout_s);
        let name = self.name.clone();
        let stamp = self
            .stamp
            .as_ref()
            .map(|s| (s.publisher.clone(), s.epoch.clone()));
        let result = tokio::task::spawn_blocking(move || {
            let (stored, checkpoint, mut next) = match &store {
                Some(w) => w.load(oldest)?,
                None => Default::default(),
            };
            let stamp = stamp.as_ref().map(|(p, e)| (p.as_str(), e.as_str()));
            // A durable window that never recorded a write has no producer of ours to wait for.
            let quiet = if store.is_some() && checkpoint.is_empty() && stored.is_empty() {
                window::QUIET_FIRST_START
            } else {
                window::QUIET
            };
            let tail =
                window::read_tail(&client, &topics, &checkpoint, oldest, stamp, quiet, timeout)?;
            for (tp, n) in &tail.next_seq {
                let e = next.entry(tp.clone()).or_insert(*n);
                *e = (*e).max(*n);
            }
            if let Some(w) = &store {
                // The records read back are now covered: a later restart starts after them.
                w.commit(&tail.entries, &tail.end, &next, oldest, usize::MAX)?;
            }
            Ok::<_, window::WindowError>((stored, tail, next))
        })
        .await
        .map_err(|e| SinkError::transient(&name, e))?
        .map_err(|e| SinkError::transient(&name, e))?;
        let (stored, tail, next) = result;
        if let Some(s) = self.stamp.as_mut() {
            s.next = next;
        }
        let d = self.dedup.as_mut().expect("checked above");
        let (n_stored, n_tail) = (stored.len(), tail.entries.len());
        d.reserve(n_stored + n_tail);
        for e in stored.into_iter().chain(tail.entries) {
            d.restore(e);
        }
        tracing::info!(
            sink = %self.name,
            restore = ?restore,
            from_store = n_stored,
            read_from_kafka = tail.records,
            from_kafka = n_tail,
            window = d.len(),
            seconds = started.elapsed().as_secs_f64(),
            "dedup window restored"
        );
        self.restored = true;
        Ok(())
    }
}

/// A random epoch for a sink without a durable window.
fn random_epoch(name: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(name.as_bytes());
    h.write_u64(now_ns());
    h.finish().max(1)
}

fn headers(
    quality: u32,
    unit: &str,
    correction: bool,
    stamp: Option<(&str, &str, u64)>,
) -> OwnedHeaders {
    let status = quality.to_string();
    let mut h = OwnedHeaders::new_with_capacity(8)
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
        });
    if correction {
        h = h.insert(Header {
            key: "correction",
            value: Some("true"),
        });
    }
    if let Some((publisher, epoch, seq)) = stamp {
        let seq = seq.to_string();
        h = h
            .insert(Header {
                key: payload::PUBLISHER_PROPERTY,
                value: Some(publisher),
            })
            .insert(Header {
                key: payload::EPOCH_PROPERTY,
                value: Some(epoch),
            })
            .insert(Header {
                key: payload::SEQ_PROPERTY,
                value: Some(seq.as_str()),
            });
    }
    h
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: &OutputBatch) -> Result<Vec<super::RefusedSample>, SinkError> {
        self.prepare().await?;
        let now = now_ns();
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
            let body = payload::render(
                &plan.fields,
                &[WireSample {
                    value: s.values[i],
                    extra,
                    status: s.quality[i],
                    ts_ns: s.timestamps[i],
                }],
            );
            let mut correction = false;
            // The window entry made for this sample, taken back if it is not sent.
            let mut checked = None;
            if let Some(d) = self.dedup.as_mut() {
                let fields = dedup::sample_fields(&body).map_or(&body[..], |f| f.0);
                let entry = dedup::Entry {
                    key: dedup::key(&plan.key, s.timestamps[i]),
                    content: dedup::content(fields),
                    at_ns: now,
                };
                match d.check(entry.key, entry.content, now) {
                    dedup::Verdict::Duplicate => {
                        self.link.deduplicated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    dedup::Verdict::Correction => {
                        self.link.corrections.fetch_add(1, Ordering::Relaxed);
                        correction = true;
                    }
                    dedup::Verdict::New => {}
                }
                checked = Some((entry.key, entry.content));
                if self.window.is_some() {
                    self.unflushed.push(entry);
                }
            }
            for topic in &plan.topics {
                let mut partition = None;
                let h = match self.stamp.as_mut() {
                    Some(st) => match st.partitions.get(topic) {
                        Some(&n) => {
                            let p = (plan.crc % n as u32) as i32;
                            partition = Some(p);
                            let next = st.next.entry((topic.clone(), p)).or_insert(1);
                            let seq = *next;
                            *next += 1;
                            headers(
                                s.quality[i],
                                &plan.unit,
                                correction,
                                Some((&st.publisher, &st.epoch, seq)),
                            )
                        }
                        None => headers(s.quality[i], &plan.unit, correction, None),
                    },
                    None => headers(s.quality[i], &plan.unit, correction, None),
                };
                if let Err(e) = self
                    .producer
                    .send(topic, partition, plan.key.as_bytes(), &body, h)
                    .await
                {
                    // Not sent: when the batch is written again this sample is not a
                    // duplicate (remembering it here would lose it).
                    self.take_back(checked);
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
        if let Some(w) = self.window.clone().filter(|_| !self.unflushed.is_empty()) {
            // Durable before the batches are released (and their sources acknowledged).
            let entries = std::mem::take(&mut self.unflushed);
            let offsets = self.producer.delivered();
            let sequences = self
                .stamp
                .as_ref()
                .map(|s| s.next.clone())
                .unwrap_or_default();
            let oldest = now_ns().saturating_sub(self.config.dedup.window_s * 1_000_000_000);
            let max_keys = self.config.dedup.max_keys;
            let done = tokio::task::spawn_blocking(move || {
                let r = w.commit(&entries, &offsets, &sequences, oldest, max_keys);
                (r, entries)
            })
            .await
            .map_err(|e| SinkError::transient(&self.name, e))?;
            if let (Err(e), entries) = done {
                self.unflushed = entries;
                return Err(SinkError::transient(&self.name, e));
            }
        }
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
                .send(&self.topic, None, l.path.as_bytes(), body.as_bytes(), h)
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
