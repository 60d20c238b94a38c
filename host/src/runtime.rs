//! The runtime wiring, at the top of the crate: `start` builds a running host from a validated
//! `HostConfig` — the embedded broker, the plugin engine and its stages, the sinks and the
//! dead-letter sink behind bounded queues, the chain worker, the sources and the plugin file
//! watcher — and `PipelineHandle` is what the admin API, the CLI's `run` and the tests hold:
//! the chain's stage controls plus the status of sources, sinks and buffers. Data flows one
//! way, sources → chain → (buffer →) sinks, and every module below this one imports only the
//! model and what is beneath it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::config::HostConfig;
use crate::model::{DeadLetter, TagRegistry};
use crate::pipeline::{ChainHandle, PipelineError, StageStatus};
use crate::plugin::host_api::{PluginCounters, StaticReferenceData};
use crate::plugin::{HostBackends, PluginEngine};
use crate::sinks::{SinkStatus, SinkView};
use crate::sources::WritePorts;
use crate::writes::{LatestStore, WriteService};

/// How many dead-letters the admin endpoint can show.
pub const RECENT_DEAD_LETTERS: usize = 200;

/// Counters outside the stages.
#[derive(Default, Debug)]
pub struct PipelineStats {
    pub produced: BTreeMap<String, Arc<AtomicU64>>,
    pub written: BTreeMap<String, Arc<AtomicU64>>,
    pub dead_letters: Arc<AtomicU64>,
    /// The latest dead-letters (at most `RECENT_DEAD_LETTERS`), for the admin endpoint.
    pub recent_dead_letters: Arc<Mutex<VecDeque<DeadLetter>>>,
    pub sinks: BTreeMap<String, Arc<SinkView>>,
    /// Per source, what its upstream sequence check found.
    pub upstream: BTreeMap<String, Arc<crate::sources::sequence::UpstreamAccounts>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineStatus {
    pub tags: usize,
    /// The most tags message sources may add (`pipeline.max_tags`), and how many new tags
    /// were refused past it.
    pub max_tags: usize,
    pub tags_refused: u64,
    pub produced: BTreeMap<String, u64>,
    pub written: BTreeMap<String, u64>,
    pub dead_letters: u64,
    /// Per sink: delivered samples, health, link state, buffer depth and drops.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkStatus>,
    pub stages: Vec<StageStatus>,
    pub plugin_counters: Vec<(String, String, u64)>,
    /// Per source and publisher: the upstream sequence check (gaps, redeliveries, epochs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream: BTreeMap<String, BTreeMap<String, crate::sources::sequence::PublisherStatus>>,
    /// Write-back commands by outcome and reason (empty without `[writes]`).
    #[serde(default)]
    pub writes: Vec<WriteCount>,
}

/// Write-back commands with one outcome and reason.
#[derive(Clone, Debug, Serialize)]
pub struct WriteCount {
    pub outcome: &'static str,
    pub reason: Option<crate::writes::ReasonCode>,
    pub count: u64,
}

struct Inner {
    chain: ChainHandle,
    stats: PipelineStats,
    shutdown: watch::Sender<bool>,
    writes: Option<Arc<WriteService>>,
}

/// Steers a running host; cheap to clone. Derefs to the chain's `ChainHandle` for the stage
/// controls (load, swap, rollback, shadow, quarantine, release).
#[derive(Clone)]
pub struct PipelineHandle {
    inner: Arc<Inner>,
}

impl std::ops::Deref for PipelineHandle {
    type Target = ChainHandle;
    fn deref(&self) -> &ChainHandle {
        &self.inner.chain
    }
}

impl PipelineHandle {
    pub fn chain(&self) -> &ChainHandle {
        &self.inner.chain
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.inner.stats
    }

    /// The write-back service (with `[writes]`).
    pub fn writes(&self) -> Option<&Arc<WriteService>> {
        self.inner.writes.as_ref()
    }

    pub fn status(&self) -> PipelineStatus {
        let load = |m: &BTreeMap<String, Arc<AtomicU64>>| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
                .collect()
        };
        let stats = &self.inner.stats;
        PipelineStatus {
            tags: self.inner.chain.registry().len(),
            max_tags: self.inner.chain.registry().limit(),
            tags_refused: self.inner.chain.registry().refused(),
            produced: load(&stats.produced),
            written: load(&stats.written),
            dead_letters: stats.dead_letters.load(Ordering::Relaxed),
            sinks: stats
                .sinks
                .iter()
                .map(|(name, v)| (name.clone(), v.status()))
                .collect(),
            stages: self.inner.chain.stage_statuses(),
            plugin_counters: self.inner.chain.plugin_counters(),
            writes: self
                .inner
                .writes
                .as_ref()
                .map(|w| {
                    w.counts()
                        .into_iter()
                        .map(|(outcome, reason, count)| WriteCount {
                            outcome: outcome.as_str(),
                            reason,
                            count,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            upstream: stats
                .upstream
                .iter()
                .map(|(name, a)| (name.clone(), a.snapshot()))
                .filter(|(_, p)| !p.is_empty())
                .collect(),
        }
    }

    /// Asks the sources to stop; the chain then drains and the sinks flush.
    pub fn stop(&self) {
        let _ = self.inner.shutdown.send(true);
        let chain = self.inner.chain.clone();
        tokio::spawn(async move { chain.shut_down().await });
    }
}

fn flush_policy(p: &crate::pipeline::PipelineConfig) -> crate::sinks::FlushPolicy {
    crate::sinks::FlushPolicy {
        interval: Duration::from_millis(p.flush_interval_ms),
        batches: p.flush_batches,
        stall_after: Duration::from_secs(p.stall_after_s),
    }
}

/// Why the host is not ready (empty: ready): a sink stalled, retrying or not connected, a
/// buffer full or unable to write, a stage quarantined, the tag table at its bound, an
/// upstream gap (for `sequence.not_ready_s` after it).
pub fn not_ready_reasons(status: &PipelineStatus) -> Vec<String> {
    let mut not_ready = Vec::new();
    for (name, s) in &status.sinks {
        if s.connected == Some(false) {
            not_ready.push(format!("sink `{name}` is not connected"));
        }
        if let Some(reason) = s.health.not_ready_reason(name) {
            not_ready.push(reason);
        }
        if let Some(b) = &s.buffer {
            if b.overflow == "refuse-new" && b.depth_bytes * 100 >= b.max_bytes * 95 {
                not_ready.push(format!(
                    "sink `{name}`: buffer full ({} of {} bytes)",
                    b.depth_bytes, b.max_bytes
                ));
            }
            if let Some(e) = &b.write_error {
                not_ready.push(format!("sink `{name}`: buffer cannot write: {e}"));
            }
        }
    }
    for st in &status.stages {
        if let crate::pipeline::StageState::Quarantined { reason, .. } = &st.state {
            not_ready.push(format!("stage `{}` is quarantined: {reason}", st.name));
        }
    }
    let now = crate::model::now_ns();
    for (source, publishers) in &status.upstream {
        for (publisher, p) in publishers {
            if let Some(reason) =
                crate::sources::sequence::not_ready_reason(source, publisher, p, now)
            {
                not_ready.push(reason);
            }
        }
    }
    if status.tags_refused > 0 && status.tags >= status.max_tags {
        not_ready.push(format!(
            "tag table full: {} tags (pipeline.max_tags); {} new tags refused",
            status.tags, status.tags_refused
        ));
    }
    not_ready
}

/// A started host.
pub struct RunningPipeline {
    pub handle: PipelineHandle,
    chain: std::thread::JoinHandle<Result<(), String>>,
    sources: Vec<tokio::task::JoinHandle<Result<(), crate::sources::SourceError>>>,
    sinks: Vec<tokio::task::JoinHandle<()>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// The write-back command sources.
    commands: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the host described by `config` (already validated). Must run inside a
/// multi-threaded tokio runtime.
pub async fn start(config: &HostConfig) -> Result<RunningPipeline, PipelineError> {
    let start_err = |key: String, message: String| PipelineError::Start { key, message };
    if let Some(broker) = &config.embedded_broker {
        broker
            .start()
            .map_err(|e| start_err("embedded_broker.listen".into(), e.to_string()))?;
    }
    let engine = PluginEngine::new(config.engine.clone())
        .map_err(|e| start_err("engine".into(), e.to_string()))?;
    let mut reference = StaticReferenceData::default();
    for (table, t) in &config.reference_data {
        let rows = reference
            .load_csv(table, &t.path)
            .map_err(|e| start_err(format!("reference_data.{table}.path"), e.to_string()))?;
        tracing::info!(table, rows, "reference data loaded");
    }
    let counters = Arc::new(PluginCounters::default());
    // Write-back: the latest value of every tag (fed below from one more output of the
    // chain), also behind the plugins' `latest` import.
    let latest = config.writes.as_ref().map(|_| LatestStore::new());
    let mut backends = HostBackends {
        counters: counters.clone(),
        reference: Arc::new(reference),
        ..HostBackends::default()
    };
    if let Some(l) = &latest {
        backends.latest = l.clone();
    }
    let stages = crate::pipeline::load_stages(&config.stages, &engine, &backends).await?;

    let queue = config.pipeline.queue_batches;
    let registry = Arc::new(TagRegistry::with_limit(config.pipeline.max_tags));
    let (dl_tx, dl_rx) = mpsc::channel(queue * 4);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut stats = PipelineStats::default();

    let mut sink_tasks = Vec::new();
    let mut outputs = Vec::new();
    for (name, s) in &config.sinks {
        let (tx, rx) = mpsc::channel(queue);
        let written = Arc::new(AtomicU64::new(0));
        let running = s
            .start(crate::sinks::SinkContext {
                name: name.clone(),
                queue: rx,
                dead_letters: dl_tx.clone(),
                written: written.clone(),
                flush: flush_policy(&config.pipeline),
            })
            .map_err(|e| start_err(format!("sinks.{name}"), e.to_string()))?;
        outputs.push(tx);
        stats.written.insert(name.clone(), written);
        stats.sinks.insert(name.clone(), running.view);
        sink_tasks.push(running.task);
    }
    let dead_letter_view = Arc::new(SinkView {
        stall_after: flush_policy(&config.pipeline).stall_after,
        ..SinkView::new(stats.dead_letters.clone())
    });
    let dead_letter_task = crate::sinks::start_dead_letter_sink(
        config.dead_letter.as_ref().expect("resolved at load"),
        dl_rx,
        crate::sinks::DeadLetterOutputs {
            written: stats.dead_letters.clone(),
            recent: stats.recent_dead_letters.clone(),
            keep_recent: RECENT_DEAD_LETTERS,
            health: dead_letter_view.health.clone(),
            flush: flush_policy(&config.pipeline),
        },
    )
    .map_err(|e| start_err("dead_letter".into(), e.to_string()))?;
    sink_tasks.push(dead_letter_task);
    stats
        .sinks
        .insert(crate::sinks::DEAD_LETTER_SINK.into(), dead_letter_view);

    if let Some(latest) = &latest {
        let (tx, rx) = mpsc::channel(queue);
        outputs.push(tx);
        sink_tasks.push(tokio::spawn(crate::writes::latest::feed(
            latest.clone(),
            rx,
        )));
    }
    let write_ports = WritePorts::default();

    let spawned = crate::pipeline::spawn(
        stages,
        registry.clone(),
        counters,
        outputs,
        dl_tx.clone(),
        queue,
    )?;

    let mut sources = Vec::new();
    for (name, s) in &config.sources {
        let produced = Arc::new(AtomicU64::new(0));
        stats.produced.insert(name.clone(), produced.clone());
        let upstream = Arc::new(crate::sources::sequence::UpstreamAccounts::default());
        stats.upstream.insert(name.clone(), upstream.clone());
        let ctx = crate::sources::SourceContext {
            name: name.clone(),
            registry: registry.clone(),
            out: spawned.input.clone(),
            shutdown: shutdown_rx.clone(),
            produced,
            dead_letters: dl_tx.clone(),
            write_ports: write_ports.clone(),
            upstream,
        };
        sources.push(tokio::spawn(s.clone().run(ctx)));
    }
    drop(spawned.input);
    drop(dl_tx);

    let mut commands = Vec::new();
    let writes = match (&config.writes, latest) {
        (Some(w), Some(latest)) => {
            let service = WriteService::new(
                w.clone(),
                latest,
                write_ports,
                Some(Arc::new(crate::writes::ChainPlane(spawned.handle.clone()))),
            )
            .map_err(|e| start_err("writes.audit_path".into(), e.to_string()))?;
            let service = Arc::new(service);
            if let Some(m) = &w.mqtt {
                commands.push(tokio::spawn(crate::writes::mqtt::run(
                    m.clone(),
                    service.clone(),
                    shutdown_rx.clone(),
                )));
            }
            #[cfg(feature = "kafka")]
            if let Some(k) = &w.kafka {
                commands.push(tokio::spawn(crate::writes::kafka::run(
                    k.clone(),
                    service.clone(),
                    shutdown_rx.clone(),
                )));
            }
            Some(service)
        }
        _ => None,
    };

    let handle = PipelineHandle {
        inner: Arc::new(Inner {
            chain: spawned.handle,
            stats,
            shutdown: shutdown_tx,
            writes,
        }),
    };
    let watched: Vec<bool> = config
        .stages
        .iter()
        .map(|s| s.watched(&config.pipeline))
        .collect();
    let watcher = watched.contains(&true).then(|| {
        tokio::spawn(crate::pipeline::watch_plugin_files(
            handle.chain().clone(),
            watched,
            Duration::from_millis(config.pipeline.watch_interval_ms),
        ))
    });
    Ok(RunningPipeline {
        handle,
        chain: spawned.thread,
        sources,
        sinks: sink_tasks,
        watcher,
        commands,
    })
}

impl RunningPipeline {
    /// Waits until the sources are done (or stopped), the chain drained and sinks flushed.
    pub async fn wait(self) -> Result<PipelineStatus, PipelineError> {
        let mut first_error = None;
        for s in self.sources {
            match s.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!("{e}");
                    first_error.get_or_insert(e.to_string());
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        // Sources are done: let the chain see the end of its input.
        self.handle.chain().shut_down().await;
        let chain = self.chain;
        let chain_result = tokio::task::spawn_blocking(move || chain.join())
            .await
            .map_err(|e| PipelineError::Start {
                key: "pipeline".into(),
                message: e.to_string(),
            })?;
        match chain_result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert("the chain thread panicked".into());
            }
        }
        if let Some(w) = self.watcher {
            w.abort();
        }
        for c in self.commands {
            c.abort();
        }
        for s in self.sinks {
            let _ = s.await;
        }
        let status = self.handle.status();
        match first_error {
            None => Ok(status),
            Some(message) => Err(PipelineError::Start {
                key: "pipeline".into(),
                message,
            }),
        }
    }
}
