//! Sinks: where samples that passed the chain go, and where dead-letters go. Each sink runs
//! as its own task behind a bounded queue; a failing write is retried with backoff (the
//! queue fills and pushes back on the chain) — a sink never drops a batch. Sinks are
//! registered by their config `type`; MQTT, Kafka, PostgreSQL and Parquet plug in here.

pub mod file;
pub mod parquet;
pub mod postgres;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::pipeline::{DeadLetter, OutputBatch};

/// `[sinks.<name>]`, by `type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SinkConfig {
    /// JSON lines in a local file.
    File(file::FileSinkConfig),
    /// Rows in a PostgreSQL / TimescaleDB table (binary COPY, idempotent).
    Postgres(postgres::PostgresSinkConfig),
    /// Rolling Parquet files partitioned by hour, in a directory or an object store.
    Parquet(parquet::ParquetSinkConfig),
}

/// `[dead_letter]`, by `type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeadLetterConfig {
    /// JSON lines in a local file (the default: `dead-letter.jsonl` beside the config).
    File(file::FileSinkConfig),
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

impl SinkConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            SinkConfig::File(c) => c.validate(),
            SinkConfig::Postgres(c) => c.validate(),
            SinkConfig::Parquet(c) => c.validate(),
        }
    }
    pub fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkError> {
        match self {
            SinkConfig::File(c) => Ok(Box::new(file::FileSink::open(name, c)?)),
            SinkConfig::Postgres(c) => Ok(Box::new(postgres::PostgresSink::open(name, c)?)),
            SinkConfig::Parquet(c) => Ok(Box::new(parquet::ParquetSink::open(name, c)?)),
        }
    }
}

impl DeadLetterConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            DeadLetterConfig::File(c) => c.validate(),
        }
    }
    pub fn build(&self) -> Result<Box<dyn DeadLetterSink>, SinkError> {
        match self {
            DeadLetterConfig::File(c) => Ok(Box::new(file::FileSink::open("dead_letter", c)?)),
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

/// Runs a sink until its queue closes; counts samples written.
pub async fn run_sink(
    name: String,
    mut sink: Box<dyn Sink>,
    mut queue: mpsc::Receiver<Arc<OutputBatch>>,
    written: Arc<AtomicU64>,
) {
    while let Some(batch) = queue.recv().await {
        retry!(name, sink.write(&batch));
        written.fetch_add(batch.samples.len() as u64, Ordering::Relaxed);
        if queue.is_empty() {
            retry!(name, sink.flush());
        }
    }
    retry!(name, sink.flush());
}

/// Runs the dead-letter sink until its queue closes; counts letters written.
pub async fn run_dead_letter_sink(
    mut sink: Box<dyn DeadLetterSink>,
    mut queue: mpsc::Receiver<Vec<DeadLetter>>,
    written: Arc<AtomicU64>,
) {
    while let Some(letters) = queue.recv().await {
        retry!("dead_letter", sink.write(&letters));
        written.fetch_add(letters.len() as u64, Ordering::Relaxed);
        if queue.is_empty() {
            retry!("dead_letter", sink.flush());
        }
    }
    retry!("dead_letter", sink.flush());
}
