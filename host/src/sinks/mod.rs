//! Sinks: where samples that passed the chain go, and where dead-letters go. Each sink runs
//! as its own task behind a bounded queue; a failing write is retried with backoff (the
//! queue fills and pushes back on the chain) — a sink never drops a batch. Sinks are
//! registered by their config `type`; MQTT, Kafka, PostgreSQL and Parquet plug in here.

pub mod buffered;
pub mod file;
mod health;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod mqtt;
#[cfg(feature = "parquet")]
pub mod parquet;
#[cfg(feature = "postgres")]
pub mod postgres;
mod supervisor;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use health::{SinkHealth, SinkHealthStatus, SinkState, SinkView};

use crate::buffer::{BufferStatus, DurableBuffer};
#[allow(unused_imports)]
use crate::features::NotBuilt;
use crate::model::{DeadLetter, DeadLetterBatch, OutputBatch};
use crate::retry::Backoff;

/// `[sinks.<name>]`, by `type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SinkConfig {
    /// JSON lines in a local file.
    File(file::FileSinkConfig),
    /// MQTT 5 broker, through a durable store-and-forward buffer.
    Mqtt(Box<mqtt::MqttSinkConfig>),
    /// Rows in a PostgreSQL / TimescaleDB table (binary COPY, idempotent).
    #[cfg(feature = "postgres")]
    Postgres(postgres::PostgresSinkConfig),
    #[cfg(not(feature = "postgres"))]
    Postgres(NotBuilt),
    /// Rolling Parquet files partitioned by hour, in a directory or an object store.
    #[cfg(feature = "parquet")]
    Parquet(parquet::ParquetSinkConfig),
    #[cfg(not(feature = "parquet"))]
    Parquet(NotBuilt),
    /// Kafka topics by routing rules, idempotent producer, acknowledged before release.
    #[cfg(feature = "kafka")]
    Kafka(Box<kafka::KafkaSinkConfig>),
    #[cfg(not(feature = "kafka"))]
    Kafka(NotBuilt),
}

/// `[dead_letter]`, by `type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeadLetterConfig {
    /// JSON lines in a local file (the default: `dead-letter.jsonl` beside the config).
    File(file::FileSinkConfig),
    /// JSON records on a Kafka topic.
    #[cfg(feature = "kafka")]
    Kafka(Box<kafka::KafkaDeadLetterConfig>),
    #[cfg(not(feature = "kafka"))]
    Kafka(NotBuilt),
}

/// A sink's error, by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Link down, timeout, broker unavailable, disk full: retried with backoff, forever, while
    /// the queue (or the durable buffer) absorbs the wait; shown in health meanwhile.
    #[error("sink `{sink}`: {message}")]
    Transient { sink: String, message: String },
    /// The client is unusable (a fatal error of Kafka's idempotent producer, an expired
    /// session): it is rebuilt, counted, and what was not acknowledged is sent again.
    #[error("sink `{sink}`: {message} (fatal to the client: rebuilding it)")]
    Fatal { sink: String, message: String },
}

impl SinkError {
    pub fn transient(sink: &str, message: impl std::fmt::Display) -> SinkError {
        SinkError::Transient {
            sink: sink.into(),
            message: message.to_string(),
        }
    }
}

/// A sample of a batch that the destination refused for good (a PostgreSQL data error, an
/// MQTT reason code >= 0x80 for its message, a record the Kafka broker refuses). It alone goes
/// to the dead-letter, with the sink's name; the rest of its batch is written.
#[derive(Clone, Debug, PartialEq)]
pub struct RefusedSample {
    /// Index in the batch's samples.
    pub index: usize,
    /// Stable reason name (`postgres-data-error`, `broker-refused`, …).
    pub reason: &'static str,
    pub detail: String,
}

/// A destination for samples.
#[async_trait]
pub trait Sink: Send {
    /// Writes `batch`. Ok carries the samples the destination refused for good (the others
    /// are written); an error means nothing may be assumed written and the batch is written
    /// again, so a write must be idempotent.
    async fn write(&mut self, batch: &OutputBatch) -> Result<Vec<RefusedSample>, SinkError>;
    /// Makes what was written durable; acknowledgments are released after it.
    async fn flush(&mut self) -> Result<(), SinkError>;
    /// Drops and recreates the client after an error fatal to it.
    async fn rebuild(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
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
    table: Option<Arc<crate::model::TagTable>>,
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
    pub fn follow(&mut self, table: &Arc<crate::model::TagTable>) {
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
    /// Samples forwarded as corrections (same tag and time as one forwarded, another value).
    pub corrections: AtomicU64,
}

/// What the host status shows of a sink.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct SinkStatus {
    /// Samples delivered (acknowledged by the destination where it acknowledges).
    pub written: u64,
    /// State (idle, working, retrying, stalled), last success, current error, retries.
    pub health: SinkHealthStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    pub reconnects: u64,
    pub published_messages: u64,
    pub refused_by_broker: u64,
    #[serde(default)]
    pub deduplicated: u64,
    #[serde(default)]
    pub corrections: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer: Option<BufferStatus>,
}

/// When a sink flushes (and so releases its sources' acknowledgments) while its queue stays
/// busy, and when it counts as stalled (`[pipeline]` keys).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlushPolicy {
    pub interval: Duration,
    pub batches: usize,
    pub stall_after: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            interval: Duration::from_secs(1),
            batches: 64,
            stall_after: Duration::from_secs(30),
        }
    }
}

/// What a sink gets from the pipeline.
pub struct SinkContext {
    pub name: String,
    pub queue: mpsc::Receiver<Arc<OutputBatch>>,
    pub dead_letters: mpsc::Sender<DeadLetterBatch>,
    /// Samples delivered so far.
    pub written: Arc<AtomicU64>,
    pub flush: FlushPolicy,
}

/// A started sink: its task and what the status reads.
pub struct RunningSink {
    pub task: tokio::task::JoinHandle<()>,
    pub view: Arc<SinkView>,
}

/// The name the dead-letter sink has in the status and in `/ready`.
pub const DEAD_LETTER_SINK: &str = "dead_letter";

impl SinkConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            SinkConfig::File(c) => c.validate(),
            SinkConfig::Mqtt(c) => c.validate(),
            #[cfg(feature = "postgres")]
            SinkConfig::Postgres(c) => c.validate(),
            #[cfg(not(feature = "postgres"))]
            SinkConfig::Postgres(n) => n.refuse("postgres", "postgres"),
            #[cfg(feature = "parquet")]
            SinkConfig::Parquet(c) => c.validate(),
            #[cfg(not(feature = "parquet"))]
            SinkConfig::Parquet(n) => n.refuse("parquet", "parquet"),
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(c) => c.validate(),
            #[cfg(not(feature = "kafka"))]
            SinkConfig::Kafka(n) => n.refuse("kafka", "kafka"),
        }
    }

    /// Opens a sink that writes batch by batch (`Sink`); the MQTT sink is not one (it owns a
    /// buffer and a forwarder: see `start`).
    pub fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkError> {
        match self {
            SinkConfig::File(c) => Ok(Box::new(file::FileSink::open(name, c)?)),
            #[cfg(feature = "postgres")]
            SinkConfig::Postgres(c) => Ok(Box::new(postgres::PostgresSink::open(name, c)?)),
            #[cfg(feature = "parquet")]
            SinkConfig::Parquet(c) => Ok(Box::new(parquet::ParquetSink::open(name, c)?)),
            SinkConfig::Mqtt(_) | SinkConfig::Kafka(_) => Err(SinkError::Transient {
                sink: name.into(),
                message: "this sink needs the pipeline's context; start it with `start`".into(),
            }),
            #[allow(unreachable_patterns)]
            _ => Err(not_built(name)),
        }
    }

    /// Opens the sink (errors here refuse the start) and spawns its task: a supervisor that
    /// restarts the sink's runner in place if it panics (see `supervisor`).
    pub fn start(&self, ctx: SinkContext) -> Result<RunningSink, SinkError> {
        let mut view = SinkView::new(ctx.written.clone());
        view.stall_after = ctx.flush.stall_after;
        let name = ctx.name.clone();
        let config = self.clone();
        let dead_letters = ctx.dead_letters.clone();
        let flush = ctx.flush;
        let spawn: supervisor::SpawnRunner<Arc<OutputBatch>>;
        let view = match self {
            #[cfg(feature = "postgres")]
            SinkConfig::Postgres(c) if c.buffer.is_some() => {
                let buffer = open_buffer(&name, c.buffer.as_ref().expect("checked"))?;
                view.buffer = Some(buffer.clone());
                let view = Arc::new(view);
                let v = view.clone();
                spawn = Box::new(move |queue| {
                    let sink = config.build(&name)?;
                    Ok(tokio::spawn(buffered::run(
                        buffered::Forwarding {
                            name: name.clone(),
                            buffer: buffer.clone(),
                            view: v.clone(),
                            dead_letters: dead_letters.clone(),
                        },
                        Box::new(buffered::EachWrite::new(sink)),
                        queue,
                    )))
                });
                view
            }
            #[cfg(feature = "parquet")]
            SinkConfig::Parquet(c) => {
                let buffer = open_buffer(&name, &c.buffer)?;
                view.buffer = Some(buffer.clone());
                let view = Arc::new(view);
                let v = view.clone();
                let c = c.clone();
                spawn = Box::new(move |queue| {
                    let sink = parquet::ParquetBehindBuffer::new(
                        parquet::ParquetSink::open_behind(&name, &c, buffer.identity())?,
                    );
                    Ok(tokio::spawn(buffered::run(
                        buffered::Forwarding {
                            name: name.clone(),
                            buffer: buffer.clone(),
                            view: v.clone(),
                            dead_letters: dead_letters.clone(),
                        },
                        Box::new(sink),
                        queue,
                    )))
                });
                view
            }
            SinkConfig::File(_) | SinkConfig::Postgres(_) => {
                let view = Arc::new(view);
                let v = view.clone();
                spawn = Box::new(move |queue| {
                    let sink = config.build(&name)?;
                    Ok(tokio::spawn(run_sink(
                        name.clone(),
                        sink,
                        queue,
                        v.clone(),
                        dead_letters.clone(),
                        flush,
                    )))
                });
                view
            }
            SinkConfig::Mqtt(c) => {
                let buffer = open_buffer(&name, &c.buffer)?;
                let link = Arc::new(LinkStats::default());
                view.buffer = Some(buffer.clone());
                view.link = Some(link.clone());
                let view = Arc::new(view);
                let v = view.clone();
                let c = (**c).clone();
                spawn = Box::new(move |queue| {
                    Ok(tokio::spawn(mqtt::run(mqtt::MqttSinkParts {
                        name: name.clone(),
                        config: c.clone(),
                        buffer: buffer.clone(),
                        queue,
                        dead_letters: dead_letters.clone(),
                        view: v.clone(),
                        link: link.clone(),
                    })))
                });
                view
            }
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(c) => {
                let link = Arc::new(LinkStats::default());
                view.link = Some(link.clone());
                let view = Arc::new(view);
                let v = view.clone();
                let c = c.clone();
                spawn = Box::new(move |queue| {
                    let sink = Box::new(kafka::KafkaSink::open(
                        &name,
                        &c,
                        link.clone(),
                        v.health.clone(),
                        dead_letters.clone(),
                    )?);
                    Ok(tokio::spawn(run_sink(
                        name.clone(),
                        sink,
                        queue,
                        v.clone(),
                        dead_letters.clone(),
                        flush,
                    )))
                });
                view
            }
            #[allow(unreachable_patterns)]
            _ => return Err(not_built(&name)),
        };
        let task = supervisor::start(ctx.name, ctx.queue, view.health.clone(), spawn)?;
        Ok(RunningSink { task, view })
    }
}

/// Runs blocking file work (writes, fsync, rename) off the async workers where the runtime
/// allows it (a multi-threaded one), in place otherwise.
pub(crate) fn off_worker<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
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
    DurableBuffer::open(name, path, config).map_err(|e| SinkError::Transient {
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
            #[cfg(feature = "kafka")]
            DeadLetterConfig::Kafka(c) => c.validate(),
            #[cfg(not(feature = "kafka"))]
            DeadLetterConfig::Kafka(n) => n.refuse("kafka", "kafka"),
        }
    }
    pub fn build(&self) -> Result<Box<dyn DeadLetterSink>, SinkError> {
        match self {
            DeadLetterConfig::File(c) => Ok(Box::new(file::FileSink::open("dead_letter", c)?)),
            #[cfg(feature = "kafka")]
            DeadLetterConfig::Kafka(c) => Ok(Box::new(kafka::KafkaDeadLetterSink::open(c)?)),
            #[cfg(not(feature = "kafka"))]
            DeadLetterConfig::Kafka(_) => Err(not_built(DEAD_LETTER_SINK)),
        }
    }
}

/// A sink whose component this binary was built without (refused by `validate` before).
#[allow(dead_code)]
fn not_built(name: &str) -> SinkError {
    SinkError::Transient {
        sink: name.into(),
        message: "this sink's component is not built into this binary".into(),
    }
}

/// Writes `batch` until the destination takes it; returns what it refused for good. Transient
/// errors are retried with backoff (and shown in `health`); an error fatal to the client
/// rebuilds it first.
pub(crate) async fn write_until_taken(
    name: &str,
    sink: &mut dyn Sink,
    batch: &OutputBatch,
    health: &SinkHealth,
) -> Vec<RefusedSample> {
    let mut backoff = Backoff::default();
    loop {
        match sink.write(batch).await {
            Ok(refused) => {
                health.progressed();
                return refused;
            }
            Err(e) => retry_after(name, sink, &e, health, &mut backoff, "write").await,
        }
    }
}

/// Flushes until the destination confirms.
pub(crate) async fn flush_until_done(name: &str, sink: &mut dyn Sink, health: &SinkHealth) {
    let mut backoff = Backoff::default();
    loop {
        match sink.flush().await {
            Ok(()) => {
                health.progressed();
                return;
            }
            Err(e) => retry_after(name, sink, &e, health, &mut backoff, "flush").await,
        }
    }
}

async fn retry_after(
    name: &str,
    sink: &mut dyn Sink,
    e: &SinkError,
    health: &SinkHealth,
    backoff: &mut Backoff,
    what: &str,
) {
    health.failed(e);
    let delay = backoff.next_delay();
    tracing::warn!(sink = %name, attempt = backoff.attempts(), "{what} failed, retrying in {delay:?}: {e}");
    if let SinkError::Fatal { .. } = e {
        health.rebuilt();
        if let Err(e) = sink.rebuild().await {
            tracing::warn!(sink = %name, "rebuilding the client failed: {e}");
        }
    }
    tokio::time::sleep(delay).await;
}

/// Sends the samples of `batch` that sink `name` refused for good to the dead-letter, each
/// with the sink's name and reason; they hold a share of the batch's acknowledgment.
pub(crate) async fn dead_letter_refused(
    name: &str,
    batch: &OutputBatch,
    refused: &[RefusedSample],
    dead_letters: &mpsc::Sender<DeadLetterBatch>,
    health: &SinkHealth,
) {
    if refused.is_empty() {
        return;
    }
    health.refused(refused.len());
    tracing::warn!(sink = %name, samples = refused.len(), first = %refused[0].detail, "destination refused samples; dead-lettered");
    let letters = refused
        .iter()
        .map(|r| {
            DeadLetter::refused_by_sink(
                name,
                r.reason,
                r.detail.clone(),
                &batch.samples,
                &batch.tags,
                r.index,
            )
        })
        .collect();
    if dead_letters
        .send(DeadLetterBatch::new(letters, batch.ack.clone()))
        .await
        .is_err()
    {
        // The share drops unsaid: the batch is not acknowledged and comes again.
        tracing::error!(sink = %name, "the dead-letter sink stopped; refused samples stay unacknowledged");
    }
}

/// Runs a sink until its queue closes. Batches (and so their sources' acknowledgments) are
/// held until the sink has flushed them: it flushes when its queue runs empty, after
/// `flush.batches` batches and at least every `flush.interval`, so acknowledgments flow and the
/// memory held for unflushed batches stays bounded even when the queue never empties.
pub async fn run_sink(
    name: String,
    mut sink: Box<dyn Sink>,
    mut queue: mpsc::Receiver<Arc<OutputBatch>>,
    view: Arc<SinkView>,
    dead_letters: mpsc::Sender<DeadLetterBatch>,
    flush: FlushPolicy,
) {
    let health = view.health.clone();
    let mut unflushed: Vec<Arc<OutputBatch>> = Vec::new();
    let mut flush_due: Option<tokio::time::Instant> = None;
    #[cfg(debug_assertions)]
    let mut batches_written = 0u64;
    loop {
        let next = match flush_due {
            None => queue.recv().await,
            Some(due) => match tokio::time::timeout_at(due, queue.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    flush_until_done(&name, sink.as_mut(), &health).await;
                    release(&mut unflushed);
                    flush_due = None;
                    continue;
                }
            },
        };
        let Some(batch) = next else { break };
        health.working();
        let refused = write_until_taken(&name, sink.as_mut(), &batch, &health).await;
        dead_letter_refused(&name, &batch, &refused, &dead_letters, &health).await;
        view.written.fetch_add(
            (batch.samples.len() - refused.len()) as u64,
            Ordering::Relaxed,
        );
        unflushed.push(batch);
        #[cfg(debug_assertions)]
        {
            batches_written += 1;
            injected_panic(&name, batches_written);
        }
        flush_due.get_or_insert_with(|| tokio::time::Instant::now() + flush.interval);
        if queue.is_empty() || unflushed.len() >= flush.batches {
            flush_until_done(&name, sink.as_mut(), &health).await;
            release(&mut unflushed);
            flush_due = None;
            if queue.is_empty() {
                health.idle();
            }
        }
    }
    flush_until_done(&name, sink.as_mut(), &health).await;
    release(&mut unflushed);
    health.idle();
}

/// Fault injection for the fault tests, compiled only into debug builds (never into the
/// release binary): `FERRULE_FAULT_SINK_PANIC=<sink>:<n>` makes sink `<sink>` panic right after
/// writing its n-th batch, before flushing it; once per process (the restarted runner does not).
#[cfg(debug_assertions)]
fn injected_panic(name: &str, batches: u64) {
    static FIRED: AtomicBool = AtomicBool::new(false);
    let Ok(spec) = std::env::var("FERRULE_FAULT_SINK_PANIC") else {
        return;
    };
    if let Some((sink, n)) = spec.split_once(':') {
        if sink == name
            && n.parse::<u64>().ok() == Some(batches)
            && !FIRED.swap(true, Ordering::SeqCst)
        {
            panic!("injected fault: sink `{name}` panics after writing batch {batches}");
        }
    }
}

/// Says done for the flushed batches' acknowledgment shares and lets them go.
fn release(flushed: &mut Vec<Arc<OutputBatch>>) {
    for b in flushed.drain(..) {
        b.done();
    }
}

/// Where the dead-letter sink reports.
#[derive(Clone)]
pub struct DeadLetterOutputs {
    pub written: Arc<AtomicU64>,
    pub recent: Arc<std::sync::Mutex<std::collections::VecDeque<DeadLetter>>>,
    pub keep_recent: usize,
    pub health: Arc<SinkHealth>,
    pub flush: FlushPolicy,
}

/// Opens the dead-letter sink (an error refuses the start) and spawns its supervised runner.
pub fn start_dead_letter_sink(
    config: &DeadLetterConfig,
    queue: mpsc::Receiver<DeadLetterBatch>,
    out: DeadLetterOutputs,
) -> Result<tokio::task::JoinHandle<()>, SinkError> {
    let config = config.clone();
    let health = out.health.clone();
    supervisor::start(
        DEAD_LETTER_SINK.to_string(),
        queue,
        health,
        Box::new(move |queue| {
            let sink = config.build()?;
            Ok(tokio::spawn(run_dead_letter_sink(sink, queue, out.clone())))
        }),
    )
}

/// Runs the dead-letter sink until its queue closes; counts letters written. Like `run_sink`,
/// it flushes before it says done for the letters' acknowledgment shares.
pub async fn run_dead_letter_sink(
    mut sink: Box<dyn DeadLetterSink>,
    mut queue: mpsc::Receiver<DeadLetterBatch>,
    out: DeadLetterOutputs,
) {
    let name = DEAD_LETTER_SINK;
    let health = out.health;
    let mut unflushed: Vec<Option<crate::ack::Ack>> = Vec::new();
    let mut flush_due: Option<tokio::time::Instant> = None;
    loop {
        let next = match flush_due {
            None => queue.recv().await,
            Some(due) => match tokio::time::timeout_at(due, queue.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    flush_letters(sink.as_mut(), &health).await;
                    crate::ack::all_done(unflushed.iter());
                    unflushed.clear();
                    flush_due = None;
                    continue;
                }
            },
        };
        let Some(batch) = next else { break };
        health.working();
        let mut backoff = Backoff::default();
        loop {
            match sink.write(&batch.letters).await {
                Ok(()) => {
                    health.progressed();
                    break;
                }
                Err(e) => {
                    health.failed(&e);
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = %name, attempt = backoff.attempts(), "write failed, retrying in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        out.written
            .fetch_add(batch.letters.len() as u64, Ordering::Relaxed);
        {
            let mut r = out.recent.lock().unwrap_or_else(|e| e.into_inner());
            let skip = batch.letters.len().saturating_sub(out.keep_recent);
            r.extend(batch.letters.iter().skip(skip).cloned());
            while r.len() > out.keep_recent {
                r.pop_front();
            }
        }
        unflushed.push(batch.ack);
        flush_due.get_or_insert_with(|| tokio::time::Instant::now() + out.flush.interval);
        if queue.is_empty() || unflushed.len() >= out.flush.batches {
            flush_letters(sink.as_mut(), &health).await;
            crate::ack::all_done(unflushed.iter());
            unflushed.clear();
            flush_due = None;
            if queue.is_empty() {
                health.idle();
            }
        }
    }
    flush_letters(sink.as_mut(), &health).await;
    crate::ack::all_done(unflushed.iter());
    health.idle();
}

async fn flush_letters(sink: &mut dyn DeadLetterSink, health: &SinkHealth) {
    let mut backoff = Backoff::default();
    loop {
        match sink.flush().await {
            Ok(()) => {
                health.progressed();
                return;
            }
            Err(e) => {
                health.failed(&e);
                let delay = backoff.next_delay();
                tracing::warn!(
                    sink = DEAD_LETTER_SINK,
                    attempt = backoff.attempts(),
                    "flush failed, retrying in {delay:?}: {e}"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}
