//! The plugin chain: the stages a batch passes in order, the worker thread that runs them
//! (`spawn`), and `ChainHandle`, how the admin API, the plugin file watcher and tests steer
//! the stages: load, swap, roll back, shadow, quarantine, release. It takes `SampleBatch`es
//! from the sources and hands `OutputBatch`es and dead-letters on; it knows nothing of the
//! sinks behind those queues (`crate::runtime` wires them).

mod chain;
mod config;
mod shadow;
mod stage;

pub use chain::InitialStage;
pub use chain::{next_input, CommandVerdict, InstallReport};
pub use config::{PipelineConfig, QuarantinePolicy, StageConfig};
pub use shadow::{Outcome, SampleDiff, ShadowReport, ShadowState, TagDiff};
pub use stage::{PrepareKind, StageHandle, StageState, StageStats};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::model::{DeadLetterBatch, OutputBatch, SampleBatch, TagRegistry};
use crate::plugin::host_api::PluginCounters;
use crate::plugin::package::source_stamp;
use crate::plugin::{Digest, HostBackends, PluginEngine};
use chain::{Chain, Control};
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

struct HandleInner {
    stages: Vec<Arc<StageHandle>>,
    control: mpsc::Sender<Control>,
    registry: Arc<TagRegistry>,
    counters: Arc<PluginCounters>,
}

/// Steers the stages of a running chain; cheap to clone.
#[derive(Clone)]
pub struct ChainHandle {
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
    /// Samples dropped on purpose (filters, deadbands), by reason name; not dead-lettered.
    pub dropped: std::collections::BTreeMap<String, u64>,
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

impl ChainHandle {
    pub fn stages(&self) -> &[Arc<StageHandle>] {
        &self.inner.stages
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

    /// Re-initialises stage `name`'s running version with a new plugin config (a config-only
    /// swap): a fresh instance is prepared off the hot path and installed between batches; on
    /// any error (the plugin refuses the config) the running instance and config stay.
    pub async fn swap_config(
        &self,
        name: &str,
        config_json: String,
    ) -> Result<InstallReport, PipelineError> {
        let (k, stage) = self.stage(name)?;
        let _guard = stage.change_lock.lock().await;
        let prepared = prepare(&stage, PrepareKind::Swap, stage.current(), config_json).await?;
        self.install(k, prepared)
            .await
            .map_err(|m| refused(name, m))
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

    /// Runs a write request through the stages' command plane (`Control::Command`).
    pub async fn on_command(
        &self,
        command: crate::plugin::Command,
    ) -> Result<CommandVerdict, PipelineError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .control
            .send(Control::Command {
                command: Box::new(command),
                reply: tx,
            })
            .await
            .map_err(|_| PipelineError::Stopped)?;
        rx.await.map_err(|_| PipelineError::Stopped)
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

    /// Every stage's status, in chain order.
    pub fn stage_statuses(&self) -> Vec<StageStatus> {
        self.inner.stages.iter().map(|s| stage_status(s)).collect()
    }

    /// The plugins' own counters (host API `counters`): (stage, name, value).
    pub fn plugin_counters(&self) -> Vec<(String, String, u64)> {
        self.inner.counters.snapshot()
    }

    /// Tells the chain its input is over: it finishes what it holds and stops once the
    /// sources have dropped their senders.
    pub async fn shut_down(&self) {
        let _ = self.inner.control.send(Control::Shutdown).await;
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
        dropped: st.dropped.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        batches: get(&st.batches),
        failures: get(&st.failures),
        swaps: get(&st.swaps),
        recycles: get(&st.recycles),
        quarantines: get(&st.quarantines),
    }
}

const NO_CANDIDATE: &str = "no version loaded for this stage: name a plugin file, give a new config to re-initialise the running version, or load a version first (`ferrule plugin load`)";
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

/// Loads and prepares every stage's plugin (at start: an error names the stage's config key
/// and refuses the start).
pub async fn load_stages(
    configs: &[StageConfig],
    engine: &PluginEngine,
    backends: &HostBackends,
) -> Result<Vec<InitialStage>, PipelineError> {
    let start_err = |key: String, message: String| PipelineError::Start { key, message };
    let mut stages = Vec::new();
    for (i, s) in configs.iter().enumerate() {
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

    Ok(stages)
}

/// A chain running on its own thread.
pub struct SpawnedChain {
    pub handle: ChainHandle,
    pub thread: std::thread::JoinHandle<Result<(), String>>,
    /// Where sources send their batches; the chain stops once every clone is dropped.
    pub input: mpsc::Sender<SampleBatch>,
}

/// Starts the chain worker on its own thread: batches from `input` run through `stages`; what
/// passes goes to every one of `outputs`, what is refused to `dead_letters`. Must run inside a
/// multi-threaded tokio runtime.
pub fn spawn(
    stages: Vec<InitialStage>,
    registry: Arc<TagRegistry>,
    counters: Arc<PluginCounters>,
    outputs: Vec<mpsc::Sender<Arc<OutputBatch>>>,
    dead_letters: mpsc::Sender<DeadLetterBatch>,
    queue_batches: usize,
) -> Result<SpawnedChain, PipelineError> {
    let (input_tx, input_rx) = mpsc::channel(queue_batches);
    let (control_tx, control_rx) = mpsc::channel(64);
    let stage_handles: Vec<Arc<StageHandle>> = stages.iter().map(|s| s.handle.clone()).collect();
    let chain = Chain::new(
        stages,
        registry.clone(),
        outputs,
        dead_letters,
        control_tx.clone(),
    );
    let rt = tokio::runtime::Handle::current();
    let thread = std::thread::Builder::new()
        .name("ferrule-chain".into())
        .spawn(move || chain.run(rt, input_rx, control_rx))
        .map_err(|e| PipelineError::Start {
            key: "pipeline".into(),
            message: e.to_string(),
        })?;
    Ok(SpawnedChain {
        handle: ChainHandle {
            inner: Arc::new(HandleInner {
                stages: stage_handles,
                control: control_tx,
                registry,
                counters,
            }),
        },
        thread,
        input: input_tx,
    })
}

/// Swaps a stage's plugin when its file or package changes (a new digest or manifest); the
/// pin, if any, and a package's checks apply. Only stages whose `watched` entry is true.
pub async fn watch_plugin_files(handle: ChainHandle, watched: Vec<bool>, every: Duration) {
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
            if !watched.get(i).copied().unwrap_or(false) {
                continue;
            }
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

/// The name plugin `info` declared for reason `code` (`rejected` if it declared none).
fn reason_name(info: &crate::plugin::PluginInfo, code: u16) -> &str {
    info.reasons
        .iter()
        .find(|r| r.code == code)
        .map_or("rejected", |r| r.name.as_str())
}
