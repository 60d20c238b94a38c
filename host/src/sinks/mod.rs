//! Sinks: where samples that passed the chain go, and where dead-letters go. Each sink runs
//! as its own task behind a bounded queue; a failing write is retried with backoff (the
//! queue fills and pushes back on the chain) — a sink never drops a batch. Sinks are
//! registered by their config `type`; MQTT, Kafka, PostgreSQL and Parquet plug in here.

pub mod buffered;
pub mod file;
pub mod kafka;
pub mod mqtt;
pub mod parquet;
pub mod postgres;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::buffer::{BufferStatus, DurableBuffer};
use crate::pipeline::{DeadLetter, DeadLetterBatch, OutputBatch};

/// `[sinks.<name>]`, by `type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SinkConfig {
    /// JSON lines in a local file.
    File(file::FileSinkConfig),
    /// MQTT 5 broker, through a durable store-and-forward buffer.
    Mqtt(Box<mqtt::MqttSinkConfig>),
    /// Rows in a PostgreSQL / TimescaleDB table (binary COPY, idempotent).
    Postgres(postgres::PostgresSinkConfig),
    /// Rolling Parquet files partitioned by hour, in a directory or an object store.
    Parquet(parquet::ParquetSinkConfig),
    /// Kafka topics by routing rules, idempotent producer, acknowledged before release.
    Kafka(Box<kafka::KafkaSinkConfig>),
}

/// `[dead_letter]`, by `type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeadLetterConfig {
    /// JSON lines in a local file (the default: `dead-letter.jsonl` beside the config).
    File(file::FileSinkConfig),
    /// JSON records on a Kafka topic.
    Kafka(Box<kafka::KafkaDeadLetterConfig>),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink `{sink}`: {message}")]
    Io { sink: String, message: String },
}

/// A destination for samples.
#[async_trait]
pub trait Sink: Send {
    async fn write(&mut self, batch: &OutputBatch) -> Result<(), SinkError>;
    async fn flush(&mut self) -> Result<(), SinkError>;
}

/// A destination for dead-letters.
#[async_trait]
pub trait DeadLetterSink: Send {
    async fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError>;
    async fn flush(&mut self) -> Result<(), SinkError>;
}

/// What a sink renders once per tag (a line prefix, a record plan, metadata JSON), kept
/// until the chain hands over another tag table. It holds the table it was made for, so a new
/// table at a reused address is never mistaken for the old one.
pub(crate) struct PerTag<T> {
    table: Option<Arc<crate::pipeline::TagTable>>,
    items: Vec<Option<T>>,
}

impl<T> Default for PerTag<T> {
    fn default() -> Self {
        PerTag {
            table: None,
            items: Vec::new(),
        }
    }
}

impl<T> PerTag<T> {
    /// Starts over if `table` is another table than the items were made for; makes a slot
    /// for each of its tags.
    pub fn follow(&mut self, table: &Arc<crate::pipeline::TagTable>) {
        if !self.table.as_ref().is_some_and(|t| Arc::ptr_eq(t, table)) {
            self.items.clear();
            self.table = Some(table.clone());
        }
        if self.items.len() < table.len() {
            self.items.resize_with(table.len(), || None);
        }
    }

    /// The slot of tag `id` (None: not a tag of the table followed).
    pub fn slot(&mut self, id: usize) -> Option<&mut Option<T>> {
        self.items.get_mut(id)
    }
}

/// Health of a sink's link to its destination.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    /// Messages handed to the broker.
    pub published: AtomicU64,
    /// Publishes the broker refused (sent again after a reconnect).
    pub refused: AtomicU64,
    /// Samples dropped as repeats of one already forwarded (dedup).
    pub deduplicated: AtomicU64,
}

/// What the host status shows of a sink.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct SinkStatus {
    /// Samples delivered (acknowledged by the destination where it acknowledges).
    pub written: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    pub reconnects: u64,
    pub published_messages: u64,
    pub refused_by_broker: u64,
    #[serde(default)]
    pub deduplicated: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer: Option<BufferStatus>,
}

/// What a sink gets from the pipeline.
pub struct SinkContext {
    pub name: String,
    pub queue: mpsc::Receiver<Arc<OutputBatch>>,
    pub dead_letters: mpsc::Sender<DeadLetterBatch>,
    /// Samples delivered so far.
    pub written: Arc<AtomicU64>,
}

/// A started sink: its task and what the status reads.
pub struct RunningSink {
    pub task: tokio::task::JoinHandle<()>,
    pub buffer: Option<Arc<DurableBuffer>>,
    pub link: Option<Arc<LinkStats>>,
}

impl SinkConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            SinkConfig::File(c) => c.validate(),
            SinkConfig::Mqtt(c) => c.validate(),
            SinkConfig::Postgres(c) => c.validate(),
            SinkConfig::Parquet(c) => c.validate(),
            SinkConfig::Kafka(c) => c.validate(),
        }
    }

    /// Opens a sink that writes batch by batch (`Sink`); the MQTT sink is not one (it owns a
    /// buffer and a forwarder: see `start`).
    pub fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkError> {
        match self {
            SinkConfig::File(c) => Ok(Box::new(file::FileSink::open(name, c)?)),
            SinkConfig::Postgres(c) => Ok(Box::new(postgres::PostgresSink::open(name, c)?)),
            SinkConfig::Parquet(c) => Ok(Box::new(parquet::ParquetSink::open(name, c)?)),
            SinkConfig::Mqtt(_) | SinkConfig::Kafka(_) => Err(SinkError::Io {
                sink: name.into(),
                message: "this sink needs the pipeline's context; start it with `start`".into(),
            }),
        }
    }

    /// Opens the sink (errors here refuse the start) and spawns its task.
    pub fn start(&self, ctx: SinkContext) -> Result<RunningSink, SinkError> {
        match self {
            SinkConfig::Postgres(c) if c.buffer.is_some() => {
                let sink = self.build(&ctx.name)?;
                let buffer = open_buffer(&ctx.name, c.buffer.as_ref().expect("checked"))?;
                Ok(RunningSink {
                    task: tokio::spawn(buffered::run(
                        ctx.name,
                        sink,
                        buffer.clone(),
                        ctx.queue,
                        ctx.written,
                    )),
                    buffer: Some(buffer),
                    link: None,
                })
            }
            SinkConfig::File(_) | SinkConfig::Postgres(_) | SinkConfig::Parquet(_) => {
                let sink = self.build(&ctx.name)?;
                Ok(RunningSink {
                    task: tokio::spawn(run_sink(ctx.name, sink, ctx.queue, ctx.written)),
                    buffer: None,
                    link: None,
                })
            }
            SinkConfig::Mqtt(c) => {
                let buffer = open_buffer(&ctx.name, &c.buffer)?;
                let link = Arc::new(LinkStats::default());
                let task = tokio::spawn(mqtt::run(mqtt::MqttSinkParts {
                    name: ctx.name,
                    config: (**c).clone(),
                    buffer: buffer.clone(),
                    queue: ctx.queue,
                    dead_letters: ctx.dead_letters,
                    delivered: ctx.written,
                    link: link.clone(),
                }));
                Ok(RunningSink {
                    task,
                    buffer: Some(buffer),
                    link: Some(link),
                })
            }
            SinkConfig::Kafka(c) => {
                let link = Arc::new(LinkStats::default());
                let sink = Box::new(kafka::KafkaSink::open(
                    &ctx.name,
                    c,
                    ctx.dead_letters,
                    link.clone(),
                )?);
                Ok(RunningSink {
                    task: tokio::spawn(run_sink(ctx.name, sink, ctx.queue, ctx.written)),
                    buffer: None,
                    link: Some(link),
                })
            }
        }
    }
}

/// Opens a sink's durable buffer (at start, so a bad path refuses the start).
fn open_buffer(
    name: &str,
    config: &crate::buffer::BufferConfig,
) -> Result<Arc<DurableBuffer>, SinkError> {
    let path = config
        .path
        .as_ref()
        .expect("the config loader resolves the buffer path");
    DurableBuffer::open(name, path, config).map_err(|e| SinkError::Io {
        sink: name.into(),
        message: e.to_string(),
    })
}

/// The next batch from `queue` and whatever else is already waiting, `max` at most (a group
/// the buffer commits with one fsync); None once the queue is closed.
async fn next_group(
    queue: &mut mpsc::Receiver<Arc<OutputBatch>>,
    max: usize,
) -> Option<Vec<Arc<OutputBatch>>> {
    let mut group = vec![queue.recv().await?];
    while group.len() < max {
        match queue.try_recv() {
            Ok(b) => group.push(b),
            Err(_) => break,
        }
    }
    Some(group)
}

impl DeadLetterConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            DeadLetterConfig::File(c) => c.validate(),
            DeadLetterConfig::Kafka(c) => c.validate(),
        }
    }
    pub fn build(&self) -> Result<Box<dyn DeadLetterSink>, SinkError> {
        match self {
            DeadLetterConfig::File(c) => Ok(Box::new(file::FileSink::open("dead_letter", c)?)),
            DeadLetterConfig::Kafka(c) => Ok(Box::new(kafka::KafkaDeadLetterSink::open(c)?)),
        }
    }
}

/// Retries an async sink call with backoff (100 ms doubling to 5 s) until it succeeds: a
/// sink never drops a batch; its queue fills and pushes back instead.
macro_rules! retry {
    ($name:expr, $call:expr) => {{
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            match $call.await {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(sink = %$name, attempt, "write failed, retrying in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }};
}

/// Runs a sink until its queue closes; counts samples written. Batches (and so their
/// sources' acknowledgments) are held until the sink has flushed them.
pub async fn run_sink(
    name: String,
    mut sink: Box<dyn Sink>,
    mut queue: mpsc::Receiver<Arc<OutputBatch>>,
    written: Arc<AtomicU64>,
) {
    let mut unflushed = Vec::new();
    while let Some(batch) = queue.recv().await {
        retry!(name, sink.write(&batch));
        written.fetch_add(batch.samples.len() as u64, Ordering::Relaxed);
        unflushed.push(batch);
        if queue.is_empty() {
            retry!(name, sink.flush());
            unflushed.clear();
        }
    }
    retry!(name, sink.flush());
}

/// Runs the dead-letter sink until its queue closes; counts letters written.
pub async fn run_dead_letter_sink(
    mut sink: Box<dyn DeadLetterSink>,
    mut queue: mpsc::Receiver<DeadLetterBatch>,
    written: Arc<AtomicU64>,
    recent: Arc<std::sync::Mutex<std::collections::VecDeque<DeadLetter>>>,
) {
    let mut unflushed = Vec::new();
    while let Some(batch) = queue.recv().await {
        retry!("dead_letter", sink.write(&batch.letters));
        written.fetch_add(batch.letters.len() as u64, Ordering::Relaxed);
        {
            let mut r = recent.lock().unwrap_or_else(|e| e.into_inner());
            let keep = crate::pipeline::RECENT_DEAD_LETTERS;
            let skip = batch.letters.len().saturating_sub(keep);
            r.extend(batch.letters.iter().skip(skip).cloned());
            while r.len() > keep {
                r.pop_front();
            }
        }
        unflushed.push(batch.ack);
        if queue.is_empty() {
            retry!("dead_letter", sink.flush());
            unflushed.clear();
        }
    }
    retry!("dead_letter", sink.flush());
}
