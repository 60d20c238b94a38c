//! The running pipeline: sources → chain of plugin stages → sinks, with the dead-letter
//! beside it. `start` wires it from a `HostConfig` (bounded queues everywhere), and
//! `PipelineHandle` is how the admin API, the plugin file watcher and tests steer it:
//! swap, roll back, release, status, stop.

mod chain;
mod config;
mod dead_letter;
mod shadow;
mod stage;

pub use chain::{next_input, InstallReport, OutputBatch, ResolvedTag, TagTable};
pub use config::{PipelineConfig, QuarantinePolicy, StageConfig};
pub use dead_letter::{DeadLetter, DeadLetterBatch};
pub use shadow::{Outcome, SampleDiff, ShadowReport, ShadowState, TagDiff};
pub use stage::{PrepareKind, StageHandle, StageState, StageStats};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::HostConfig;
use crate::model::TagRegistry;
use crate::plugin::host_api::{PluginCounters, StaticReferenceData};
use crate::plugin::package::source_stamp;
use crate::plugin::{Digest, HostBackends, PluginEngine};
use chain::{Chain, Control, InitialStage};
use stage::StageSpec;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("`{key}`: {message}")]
    Start { key: String, message: String },
    #[error("no stage named `{0}`")]
    NoStage(String),
    #[error("stage `{stage}`: {message}")]
    Refused { stage: String, message: String },
    /// The call does not fit the stage's state (nothing to roll back to, no candidate, no
    /// shadow run, already quarantined).
    #[error("stage `{stage}`: {message}")]
    Conflict { stage: String, message: String },
    #[error("the pipeline is not running")]
    Stopped,
}

/// Counters outside the stages.
#[derive(Default, Debug)]
pub struct PipelineStats {
    pub produced: BTreeMap<String, Arc<AtomicU64>>,
    pub written: BTreeMap<String, Arc<AtomicU64>>,
    pub dead_letters: Arc<AtomicU64>,
    /// The latest dead-letters (at most `RECENT_DEAD_LETTERS`), for the admin endpoint.
    pub recent_dead_letters: Arc<std::sync::Mutex<std::collections::VecDeque<DeadLetter>>>,
    pub sinks: BTreeMap<String, Arc<SinkView>>,
}

/// How many dead-letters the admin endpoint can show.
pub const RECENT_DEAD_LETTERS: usize = 200;

/// What the status reads of a running sink.
#[derive(Default)]
pub struct SinkView {
    pub buffer: Option<Arc<crate::buffer::DurableBuffer>>,
    pub link: Option<Arc<crate::sinks::LinkStats>>,
}

struct HandleInner {
    stages: Vec<Arc<StageHandle>>,
    control: mpsc::Sender<Control>,
    stats: PipelineStats,
    registry: Arc<TagRegistry>,
    counters: Arc<PluginCounters>,
    shutdown: watch::Sender<bool>,
}

/// Steers a running pipeline; cheap to clone.
#[derive(Clone)]
pub struct PipelineHandle {
    inner: Arc<HandleInner>,
}

/// Status of a stage, as the admin API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct StageStatus {
    pub name: String,
    pub plugin: String,
    pub version: String,
    pub digest: String,
    pub path: String,
    pub previous: Option<String>,
    pub quarantine_policy: &'static str,
    /// Capabilities the operator granted the stage.
    pub grants: Vec<crate::plugin::Grant>,
    /// Capabilities the running version's instances get: the grants, narrowed to what a
    /// package declares.
    pub capabilities: Vec<crate::plugin::Grant>,
    pub limits: crate::plugin::PluginLimits,
    #[serde(flatten)]
    pub state: StageState,
    /// A version loaded for a later swap or shadow run (`name@version`).
    pub candidate: Option<String>,
    /// The current or last shadow run: `name@version` and its state.
    pub shadow: Option<ShadowSummary>,
    /// Cost of the live version's calls: latency histograms, CPU, fuel, memory, failures.
    pub calls: crate::plugin::MeterSnapshot,
    pub samples_in: u64,
    pub samples_out: u64,
    pub rejected: u64,
    pub batches: u64,
    pub failures: u64,
    pub swaps: u64,
    pub recycles: u64,
    pub quarantines: u64,
}

/// A shadow run in a stage's status (the full report is at `/stages/{stage}/shadow`).
#[derive(Clone, Debug, Serialize)]
pub struct ShadowSummary {
    pub plugin: String,
    #[serde(flatten)]
    pub state: ShadowState,
    pub samples_compared: u64,
    pub samples_differing: u64,
    pub tags_differing: u64,
}

/// What `load` checked and kept for a stage.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LoadedVersion {
    pub stage: String,
    pub plugin: String,
    pub version: String,
    pub digest: String,
    pub contract: String,
    pub path: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineStatus {
    pub tags: usize,
    pub produced: BTreeMap<String, u64>,
    pub written: BTreeMap<String, u64>,
    pub dead_letters: u64,
    /// Per sink: delivered samples, link state, buffer depth and drops.
    #[serde(default)]
    pub sinks: BTreeMap<String, crate::sinks::SinkStatus>,
    pub stages: Vec<StageStatus>,
    pub plugin_counters: Vec<(String, String, u64)>,
}

impl PipelineHandle {
    pub fn stages(&self) -> &[Arc<StageHandle>] {
        &self.inner.stages
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.inner.stats
    }

    pub fn registry(&self) -> &Arc<TagRegistry> {
        &self.inner.registry
    }

    fn stage(&self, name: &str) -> Result<(usize, Arc<StageHandle>), PipelineError> {
        self.inner
            .stages
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .map(|(i, s)| (i, s.clone()))
            .ok_or_else(|| PipelineError::NoStage(name.into()))
    }

    /// Loads the component or package at `path` for stage `name` (`StageHandle::load`: the
    /// stage's pin, grants and limits apply), prepares it off the hot path and
    /// installs it between batches. On any error the running version stays.
    /// `config_json` replaces the stage's plugin config (none keeps the running one).
    pub async fn swap(
        &self,
        name: &str,
        path: &Path,
        config_json: Option<String>,
    ) -> Result<InstallReport, PipelineError> {
        let (k, stage) = self.stage(name)?;
        let _guard = stage.change_lock.lock().await;
        let prepared = self
            .load_and_prepare(&stage, PrepareKind::Swap, path, config_json)
            .await?;
        self.install(k, prepared)
            .await
            .map_err(|m| refused(name, m))
    }

    /// Loads the component at `path` for stage `name` and checks it fully (digest pin,
    /// contract, init with its config, tag plane for every known tag) without installing it;
    /// keeps it as the stage's candidate for `swap_candidate` or `shadow_candidate`.
    pub async fn load(
        &self,
        name: &str,
        path: &Path,
        config_json: Option<String>,
    ) -> Result<LoadedVersion, PipelineError> {
        let (_, stage) = self.stage(name)?;
        let _guard = stage.change_lock.lock().await;
        let prepared = self
            .load_and_prepare(&stage, PrepareKind::Swap, path, config_json)
            .await?;
        let loaded = prepared.loaded.clone();
        let config = prepared.config_json.clone();
        // The prepared instance is not needed: swap and shadow prepare a fresh one.
        tokio::task::spawn_blocking(move || drop(prepared));
        let version = LoadedVersion {
            stage: name.into(),
            plugin: loaded.name().into(),
            version: loaded.version().into(),
            digest: loaded.digest().to_string(),
            contract: loaded.contract_version().into(),
            path: loaded.origin().into(),
        };
        stage.set_candidate(Some((loaded, config)));
        tracing::info!(stage = %name, plugin = %version.plugin, version = %version.version, "candidate loaded");
        Ok(version)
    }

    /// Installs the stage's candidate (see `load`).
    pub async fn swap_candidate(&self, name: &str) -> Result<InstallReport, PipelineError> {
        let (k, stage) = self.stage(name)?;
        let _guard = stage.change_lock.lock().await;
        let (loaded, config) = stage
            .candidate()
            .ok_or_else(|| conflict(name, NO_CANDIDATE))?;
        let prepared = prepare(&stage, PrepareKind::Swap, loaded, config).await?;
        let report = self
            .install(k, prepared)
            .await
            .map_err(|m| refused(name, m))?;
        stage.set_candidate(None);
        Ok(report)
    }

    /// Starts a shadow run of the component at `path` (or, with None, of the stage's
    /// candidate) beside stage `name`'s live version. Replaces a running shadow.
    pub async fn shadow(
        &self,
        name: &str,
        path: Option<&Path>,
        config_json: Option<String>,
    ) -> Result<ShadowReport, PipelineError> {
        let (k, stage) = self.stage(name)?;
        let _guard = stage.change_lock.lock().await;
        let prepared = match path {
            Some(path) => {
                self.load_and_prepare(&stage, PrepareKind::Shadow, path, config_json)
                    .await?
            }
            None => {
                let (loaded, config) = stage
                    .candidate()
                    .ok_or_else(|| conflict(name, NO_CANDIDATE))?;
                let config = config_json.unwrap_or(config);
                prepare(&stage, PrepareKind::Shadow, loaded, config).await?
            }
        };
        let prepared = Box::new(prepared);
        let report = self
            .ask(name, |reply| Control::StartShadow {
                stage: k,
                prepared,
                reply,
            })
            .await?;
        Ok(ShadowReport::snapshot(&report))
    }

    /// The current or last shadow run of stage `name`.
    pub fn shadow_report(&self, name: &str) -> Result<ShadowReport, PipelineError> {
        let (_, stage) = self.stage(name)?;
        let report = stage
            .shadow_report()
            .ok_or_else(|| conflict(name, NO_SHADOW))?;
        Ok(ShadowReport::snapshot(&report))
    }

    /// Ends stage `name`'s shadow run: `promote` installs the shadow instance (with the state
    /// it built on the live traffic) as the live version; otherwise it is dropped.
    pub async fn end_shadow(
        &self,
        name: &str,
        promote: bool,
    ) -> Result<Option<InstallReport>, PipelineError> {
        let (k, stage) = self.stage(name)?;
        let _guard = stage.change_lock.lock().await;
        match stage
            .shadow_report()
            .map(|r| ShadowReport::snapshot(&r).state)
        {
            Some(ShadowState::Running) => {}
            Some(ShadowState::Failed { reason }) if promote => {
                return Err(conflict(
                    name,
                    &format!("the shadow version failed ({reason}); abandon it instead"),
                ))
            }
            Some(ShadowState::Failed { .. }) => {}
            _ => return Err(conflict(name, NO_SHADOW)),
        }
        self.ask(name, |reply| Control::EndShadow {
            stage: k,
            promote,
            reply,
        })
        .await
    }

    /// Quarantines stage `name` by hand; its quarantine policy applies until `release`.
    pub async fn quarantine(&self, name: &str, reason: &str) -> Result<(), PipelineError> {
        let (k, stage) = self.stage(name)?;
        let _guard = stage.change_lock.lock().await;
        if let StageState::Quarantined { reason, .. } = stage.state() {
            return Err(conflict(name, &format!("already quarantined: {reason}")));
        }
        self.ask(name, |reply| Control::Quarantine {
            stage: k,
            reason: reason.into(),
            reply,
        })
        .await
    }

    /// Sends the chain a control message for stage `name` and waits for its answer; a
    /// refusal names the stage.
    async fn ask<T>(
        &self,
        name: &str,
        control: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Control,
    ) -> Result<T, PipelineError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .control
            .send(control(tx))
            .await
            .map_err(|_| PipelineError::Stopped)?;
        rx.await
            .map_err(|_| PipelineError::Stopped)?
            .map_err(|m| refused(name, m))
    }

    /// Loads `path` with the stage's pin and prepares an instance off the hot path.
    async fn load_and_prepare(
        &self,
        stage: &Arc<StageHandle>,
        kind: PrepareKind,
        path: &Path,
        config_json: Option<String>,
    ) -> Result<stage::Prepared, PipelineError> {
        let path = path.to_path_buf();
        let s = stage.clone();
        let config = config_json.unwrap_or_else(|| stage.current_config());
        tokio::task::spawn_blocking(move || {
            let loaded = s.load(&path)?;
            s.prepare(kind, loaded, config)
        })
        .await
        .map_err(|e| refused(&stage.name, e.to_string()))?
        .map_err(|e| refused(&stage.name, e.to_string()))
    }

    /// Reinstalls the previous version of stage `name`.
    pub async fn rollback(&self, name: &str) -> Result<InstallReport, PipelineError> {
        let (k, stage) = self.stage(name)?;
        let _guard = stage.change_lock.lock().await;
        let (previous, config) = stage
            .previous_with_config()
            .ok_or_else(|| conflict(name, "no previous version to roll back to"))?;
        let prepared = prepare(&stage, PrepareKind::Rollback, previous, config).await?;
        self.install(k, prepared)
            .await
            .map_err(|m| refused(name, m))
    }

    /// Lifts stage `name`'s quarantine: the plugin is tried again (held batches first).
    pub async fn release(&self, name: &str) -> Result<(), PipelineError> {
        let (k, _) = self.stage(name)?;
        self.ask(name, |reply| Control::Release { stage: k, reply })
            .await
    }

    async fn install(&self, k: usize, prepared: stage::Prepared) -> Result<InstallReport, String> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .control
            .send(Control::Install {
                stage: k,
                prepared: Box::new(prepared),
                reply: Some(tx),
            })
            .await
            .map_err(|_| "the pipeline is not running".to_string())?;
        rx.await.map_err(|_| "the pipeline stopped".to_string())?
    }

    pub fn status(&self) -> PipelineStatus {
        let load = |m: &BTreeMap<String, Arc<AtomicU64>>| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
                .collect()
        };
        PipelineStatus {
            tags: self.inner.registry.len(),
            produced: load(&self.inner.stats.produced),
            written: load(&self.inner.stats.written),
            dead_letters: self.inner.stats.dead_letters.load(Ordering::Relaxed),
            sinks: self
                .inner
                .stats
                .sinks
                .iter()
                .map(|(name, v)| {
                    let written = self.inner.stats.written[name].load(Ordering::Relaxed);
                    (name.clone(), sink_status(v, written))
                })
                .collect(),
            stages: self.inner.stages.iter().map(|s| stage_status(s)).collect(),
            plugin_counters: self.inner.counters.snapshot(),
        }
    }

    /// Asks the sources to stop; the chain then drains and the sinks flush.
    pub fn stop(&self) {
        let _ = self.inner.shutdown.send(true);
        let control = self.inner.control.clone();
        tokio::spawn(async move {
            let _ = control.send(Control::Shutdown).await;
        });
    }
}

impl std::fmt::Debug for SinkView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkView")
            .field("buffered", &self.buffer.is_some())
            .field("link", &self.link)
            .finish()
    }
}

fn sink_status(v: &SinkView, written: u64) -> crate::sinks::SinkStatus {
    let link = v.link.as_deref();
    let get = |f: fn(&crate::sinks::LinkStats) -> &AtomicU64| {
        link.map_or(0, |l| f(l).load(Ordering::Relaxed))
    };
    crate::sinks::SinkStatus {
        written,
        connected: link.map(|l| l.connected.load(Ordering::Relaxed)),
        reconnects: get(|l| &l.reconnects),
        published_messages: get(|l| &l.published),
        refused_by_broker: get(|l| &l.refused),
        deduplicated: get(|l| &l.deduplicated),
        buffer: v.buffer.as_ref().map(|b| b.status()),
    }
}

fn stage_status(s: &StageHandle) -> StageStatus {
    let current = s.current();
    let st = &s.stats;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    StageStatus {
        name: s.name.clone(),
        plugin: current.name().into(),
        version: current.version().into(),
        digest: current.digest().to_string(),
        path: current.origin().into(),
        previous: s
            .previous()
            .map(|p| format!("{}@{}", p.name(), p.version())),
        quarantine_policy: s.policy.as_str(),
        grants: s.limits.grants.clone(),
        capabilities: current.capabilities(&s.limits.grants),
        limits: s.limits.clone(),
        state: s.state(),
        candidate: s
            .candidate()
            .map(|(c, _)| format!("{}@{}", c.name(), c.version())),
        shadow: s.shadow_report().map(|r| {
            let r = r.lock().unwrap_or_else(|e| e.into_inner());
            ShadowSummary {
                plugin: format!("{}@{}", r.plugin, r.version),
                state: r.state.clone(),
                samples_compared: r.samples_compared,
                samples_differing: r.samples_differing,
                tags_differing: r.tags_differing,
            }
        }),
        calls: s.meter.snapshot(),
        samples_in: get(&st.samples_in),
        samples_out: get(&st.samples_out),
        rejected: get(&st.rejected),
        batches: get(&st.batches),
        failures: get(&st.failures),
        swaps: get(&st.swaps),
        recycles: get(&st.recycles),
        quarantines: get(&st.quarantines),
    }
}

const NO_CANDIDATE: &str =
    "no version loaded for this stage: load one first (POST /stages/{stage}/load)";
const NO_SHADOW: &str = "no shadow run on this stage";

fn conflict(stage: &str, message: &str) -> PipelineError {
    PipelineError::Conflict {
        stage: stage.into(),
        message: message.into(),
    }
}

fn refused(stage: &str, message: String) -> PipelineError {
    PipelineError::Refused {
        stage: stage.into(),
        message,
    }
}

/// Prepares an instance of `loaded` for `stage` off the hot path.
async fn prepare(
    stage: &Arc<StageHandle>,
    kind: PrepareKind,
    loaded: crate::plugin::LoadedPlugin,
    config: String,
) -> Result<stage::Prepared, PipelineError> {
    let s = stage.clone();
    tokio::task::spawn_blocking(move || s.prepare(kind, loaded, config))
        .await
        .map_err(|e| refused(&stage.name, e.to_string()))?
        .map_err(|e| refused(&stage.name, e.to_string()))
}

/// A started pipeline.
pub struct RunningPipeline {
    pub handle: PipelineHandle,
    chain: std::thread::JoinHandle<Result<(), String>>,
    sources: Vec<tokio::task::JoinHandle<Result<(), crate::sources::SourceError>>>,
    sinks: Vec<tokio::task::JoinHandle<()>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the pipeline described by `config` (already validated). Must run inside a
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
    let backends = HostBackends {
        counters: counters.clone(),
        reference: Arc::new(reference),
        ..HostBackends::default()
    };

    let mut stages = Vec::new();
    for (i, s) in config.stages.iter().enumerate() {
        let key = format!("stages[{i}].plugin");
        let pin = match &s.digest {
            Some(d) => {
                Some(Digest::parse(d).map_err(|m| start_err(format!("stages[{i}].digest"), m))?)
            }
            None => None,
        };
        let e = engine.clone();
        let path = s.plugin.clone();
        let terms = crate::plugin::StageTerms::new(&s.name, pin.clone(), s.sandbox());
        let loaded = tokio::task::spawn_blocking(move || terms.load(&e, &path))
            .await
            .map_err(|e| start_err(key.clone(), e.to_string()))?
            .map_err(|e| start_err(key.clone(), e.to_string()))?;
        let handle = Arc::new(StageHandle::new(
            StageSpec {
                name: s.name.clone(),
                policy: s.quarantine,
                limits: s.sandbox(),
                config_json: s.config_json(),
                plugin_path: s.plugin.clone(),
                pin,
            },
            engine.clone(),
            backends.clone(),
            loaded.clone(),
        ));
        let h = handle.clone();
        let config_json = s.config_json();
        let prepared =
            tokio::task::spawn_blocking(move || h.prepare(PrepareKind::Swap, loaded, config_json))
                .await
                .map_err(|e| start_err(key.clone(), e.to_string()))?
                .map_err(|e| start_err(format!("stages[{i}].config"), e.to_string()))?;
        tracing::info!(
            stage = %s.name,
            plugin = %prepared.loaded.name(),
            version = %prepared.loaded.version(),
            digest = %prepared.loaded.digest(),
            quarantine = s.quarantine.as_str(),
            grants = ?s.grants,
            "stage ready"
        );
        stages.push(InitialStage { handle, prepared });
    }

    let queue = config.pipeline.queue_batches;
    let registry = Arc::new(TagRegistry::default());
    let (input_tx, input_rx) = mpsc::channel(queue);
    let (control_tx, control_rx) = mpsc::channel(64);
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
            })
            .map_err(|e| start_err(format!("sinks.{name}"), e.to_string()))?;
        outputs.push(tx);
        stats.written.insert(name.clone(), written);
        stats.sinks.insert(
            name.clone(),
            Arc::new(SinkView {
                buffer: running.buffer,
                link: running.link,
            }),
        );
        sink_tasks.push(running.task);
    }
    let dead_letter = config
        .dead_letter
        .as_ref()
        .expect("resolved at load")
        .build()
        .map_err(|e| start_err("dead_letter".into(), e.to_string()))?;
    sink_tasks.push(tokio::spawn(crate::sinks::run_dead_letter_sink(
        dead_letter,
        dl_rx,
        stats.dead_letters.clone(),
        stats.recent_dead_letters.clone(),
    )));

    let stage_handles: Vec<Arc<StageHandle>> = stages.iter().map(|s| s.handle.clone()).collect();
    let chain = Chain::new(
        stages,
        registry.clone(),
        outputs,
        dl_tx.clone(),
        control_tx.clone(),
    );
    let rt = tokio::runtime::Handle::current();
    let chain = std::thread::Builder::new()
        .name("ferrule-chain".into())
        .spawn(move || chain.run(rt, input_rx, control_rx))
        .map_err(|e| start_err("pipeline".into(), e.to_string()))?;

    let mut sources = Vec::new();
    for (name, s) in &config.sources {
        let produced = Arc::new(AtomicU64::new(0));
        stats.produced.insert(name.clone(), produced.clone());
        let ctx = crate::sources::SourceContext {
            name: name.clone(),
            registry: registry.clone(),
            out: input_tx.clone(),
            shutdown: shutdown_rx.clone(),
            produced,
            dead_letters: dl_tx.clone(),
        };
        sources.push(tokio::spawn(s.clone().run(ctx)));
    }
    drop(input_tx);
    drop(dl_tx);

    let handle = PipelineHandle {
        inner: Arc::new(HandleInner {
            stages: stage_handles,
            control: control_tx,
            stats,
            registry,
            counters,
            shutdown: shutdown_tx,
        }),
    };
    let watcher = config.pipeline.watch_plugins.then(|| {
        tokio::spawn(watch_plugin_files(
            handle.clone(),
            Duration::from_millis(config.pipeline.watch_interval_ms),
        ))
    });
    Ok(RunningPipeline {
        handle,
        chain,
        sources,
        sinks: sink_tasks,
        watcher,
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
        let _ = self.handle.inner.control.send(Control::Shutdown).await;
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

/// Swaps a stage's plugin when its file or package changes (a new digest or manifest); the
/// pin, if any, and a package's checks apply.
async fn watch_plugin_files(handle: PipelineHandle, every: Duration) {
    let mut seen: Vec<(PathBuf, Option<(SystemTime, u64)>)> = handle
        .stages()
        .iter()
        .map(|s| (s.plugin_path.clone(), source_stamp(&s.plugin_path)))
        .collect();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for (i, stage) in handle.stages().iter().enumerate() {
            let stamp = source_stamp(&stage.plugin_path);
            if stamp.is_none() || stamp == seen[i].1 {
                continue;
            }
            seen[i].1 = stamp;
            if stage.source_unchanged() {
                continue;
            }
            tracing::info!(stage = %stage.name, path = %stage.plugin_path.display(), "plugin file changed; swapping");
            match handle
                .swap(&stage.name, &stage.plugin_path.clone(), None)
                .await
            {
                Ok(r) => {
                    tracing::info!(stage = %r.stage, from = %r.from, to = %r.to, "swapped from file change")
                }
                Err(e) => tracing::error!(
                    "plugin file change not applied, the running version stays: {e}"
                ),
            }
        }
    }
}
