//! One stage of the chain. `StageHandle` is the shared, thread-safe face of a stage (its
//! plugin versions, status, counters, the tag-plane inputs) used by the admin API and the
//! file watcher; `prepare` builds a new instance off the hot path (compile, init, tag plane
//! for every known tag) for the chain to install between batches.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;

use super::config::QuarantinePolicy;
use super::shadow::SharedReport;
use crate::plugin::{
    package, CallMeter, Digest, HostBackends, LoadError, LoadedPlugin, PluginEngine,
    PluginInstance, PluginLimits, StageTerms, TagDecision, TagInfo,
};

/// Tags passed to one `on-tags` call. Small enough that a call stays well inside the CPU budget
/// per call (`cpu_ms_per_call`, wall time) even on a loaded machine: about 8 µs a tag here.
pub const TAG_CHUNK: usize = 256;

/// Counters of one stage (samples, not batches, unless named so).
#[derive(Default, Debug)]
pub struct StageStats {
    pub batches: AtomicU64,
    pub samples_in: AtomicU64,
    pub samples_out: AtomicU64,
    pub rejected: AtomicU64,
    /// Samples the stage dropped on purpose (contract 0.2.0 `dropped`), by reason name;
    /// never dead-lettered.
    pub dropped: Mutex<BTreeMap<String, u64>>,
    pub failures: AtomicU64,
    pub swaps: AtomicU64,
    pub recycles: AtomicU64,
    pub quarantines: AtomicU64,
}

/// Where a stage stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum StageState {
    Running,
    Quarantined { reason: String, policy: String },
}

/// How a new instance came to be prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrepareKind {
    Swap,
    Rollback,
    Recycle,
    /// A shadow run beside the live version (installed only by a promotion, as a swap).
    Shadow,
}

/// A new instance, initialised and with tag decisions for the tags known when it was made.
pub struct Prepared {
    pub kind: PrepareKind,
    pub loaded: LoadedPlugin,
    /// The plugin config the instance was initialised with.
    pub config_json: String,
    pub instance: PluginInstance,
    pub decisions: Vec<Option<TagDecision>>,
    /// Inputs generation the decisions were made from.
    pub generation: u64,
    /// The running version's decisions these were compared with, and the tag ids whose
    /// decision differs — worked out here so an install need not compare 30 k decisions.
    pub diffed_against: Decisions,
    pub changed: Vec<u32>,
    /// Whether any decision is a rejection (so the chain need not scan them at install).
    pub any_reject: bool,
}

impl Prepared {
    /// Brings the decisions up to the first `known` tags of `handle`'s inputs as they are now:
    /// decided again if an upstream decision changed since this was prepared, extended if
    /// tags appeared. Runs on the chain thread, between batches.
    pub(super) fn catch_up(
        &mut self,
        handle: &StageHandle,
        known: usize,
    ) -> Result<(), crate::plugin::CallError> {
        if self.generation != handle.generation() {
            let instance = &mut self.instance;
            self.decisions = handle
                .with_inputs(|inputs| decide(instance, &inputs[..known.min(inputs.len())]))?;
        } else if self.decisions.len() < known {
            let from = self.decisions.len();
            let instance = &mut self.instance;
            let tail = handle.with_inputs(|inputs| decide(instance, &inputs[from..known]))?;
            self.decisions.extend(tail);
        }
        Ok(())
    }
}

/// A stage's tag decisions by tag id, shared between the chain and the stage's handle.
pub type Decisions = Arc<Vec<Option<TagDecision>>>;

/// Whether any decision rejects its tag.
pub(super) fn any_reject(decisions: &[Option<TagDecision>]) -> bool {
    decisions
        .iter()
        .any(|d| matches!(d, Some(TagDecision::Reject(_))))
}

/// Tag ids (below `known`) whose decision differs between `old` and `new`.
pub(super) fn changed_decisions(
    old: &[Option<TagDecision>],
    new: &[Option<TagDecision>],
    known: usize,
) -> Vec<u32> {
    (0..known)
        .filter(|&i| new.get(i).and_then(|d| d.as_ref()) != old.get(i).and_then(|d| d.as_ref()))
        .map(|i| i as u32)
        .collect()
}

/// The shared face of a stage.
pub struct StageHandle {
    pub name: String,
    pub policy: QuarantinePolicy,
    pub limits: PluginLimits,
    pub plugin_path: PathBuf,
    pub pin: Option<Digest>,
    engine: PluginEngine,
    backends: HostBackends,
    /// The running version and the config it was initialised with.
    current: Mutex<(LoadedPlugin, String)>,
    /// The version it replaced, for rollback.
    previous: Mutex<Option<(LoadedPlugin, String)>>,
    /// Tag-plane input of this stage, by tag id (None: an earlier stage rejected the tag).
    inputs: RwLock<Vec<Option<TagInfo>>>,
    /// Bumped whenever an existing input changes (not on appends).
    generation: AtomicU64,
    /// The running version's decisions, as the chain last published them.
    decisions: Mutex<Decisions>,
    state: Mutex<StageState>,
    pub stats: StageStats,
    swap_stalls: Mutex<VecDeque<Duration>>,
    /// Cost of every call into this stage's live instances (latency, CPU, fuel, memory).
    /// Attached when an instance goes live (`prepare` does not), so candidates, shadows and
    /// refused versions are not counted here.
    pub meter: Arc<CallMeter>,
    /// A version loaded and checked for this stage but not installed (`load`), for a later
    /// swap or shadow run.
    candidate: Mutex<Option<(LoadedPlugin, String)>>,
    /// The report of the current (or last) shadow run.
    shadow: Mutex<Option<SharedReport>>,
    /// Serialises swaps, rollbacks, shadow runs and recycles of this stage.
    pub(super) change_lock: tokio::sync::Mutex<()>,
}

/// Settings a `StageHandle` is made from.
pub struct StageSpec {
    pub name: String,
    pub policy: QuarantinePolicy,
    pub limits: PluginLimits,
    pub config_json: String,
    pub plugin_path: PathBuf,
    pub pin: Option<Digest>,
}

impl StageHandle {
    pub fn new(
        spec: StageSpec,
        engine: PluginEngine,
        backends: HostBackends,
        loaded: LoadedPlugin,
    ) -> Self {
        StageHandle {
            name: spec.name,
            policy: spec.policy,
            limits: spec.limits,
            plugin_path: spec.plugin_path,
            pin: spec.pin,
            engine,
            backends,
            current: Mutex::new((loaded, spec.config_json)),
            previous: Mutex::new(None),
            inputs: RwLock::new(Vec::new()),
            generation: AtomicU64::new(0),
            decisions: Mutex::new(Arc::new(Vec::new())),
            state: Mutex::new(StageState::Running),
            stats: StageStats::default(),
            swap_stalls: Mutex::new(VecDeque::new()),
            meter: Arc::new(CallMeter::default()),
            candidate: Mutex::new(None),
            shadow: Mutex::new(None),
            change_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// Loads a plugin path for this stage: a package directory checked against the stage's
    /// pin, grants and limits, or a bare component file (pin checked).
    pub fn load(&self, path: &Path) -> Result<LoadedPlugin, LoadError> {
        StageTerms::new(&self.name, self.pin.clone(), self.limits.clone()).load(&self.engine, path)
    }

    /// Whether the stage's plugin path still holds the running version (for the watcher).
    pub fn source_unchanged(&self) -> bool {
        package::unchanged(&self.plugin_path, &self.current())
    }

    pub fn current(&self) -> LoadedPlugin {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The plugin config (JSON) the running version was initialised with.
    pub fn current_config(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    pub fn previous(&self) -> Option<LoadedPlugin> {
        self.previous_with_config().map(|p| p.0)
    }

    pub fn previous_with_config(&self) -> Option<(LoadedPlugin, String)> {
        self.previous
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The version loaded for a later swap or shadow run, with its config.
    pub fn candidate(&self) -> Option<(LoadedPlugin, String)> {
        self.candidate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_candidate(&self, candidate: Option<(LoadedPlugin, String)>) {
        *self.candidate.lock().unwrap_or_else(|e| e.into_inner()) = candidate;
    }

    /// The report of the current or last shadow run.
    pub fn shadow_report(&self) -> Option<SharedReport> {
        self.shadow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_shadow_report(&self, report: SharedReport) {
        *self.shadow.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }

    pub fn state(&self) -> StageState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_state(&self, state: StageState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Records that `installed` replaced the current version (`kind` says how).
    /// After a rollback the version rolled back from becomes the previous one, so a second
    /// rollback undoes the first.
    pub(super) fn installed(&self, kind: PrepareKind, installed: &LoadedPlugin, config_json: &str) {
        if kind == PrepareKind::Recycle {
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut previous = self.previous.lock().unwrap_or_else(|e| e.into_inner());
        let new = (installed.clone(), config_json.to_string());
        *previous = Some(std::mem::replace(&mut *current, new));
    }

    /// A fresh, initialised instance of `loaded` with its tag decisions for every known tag.
    /// Runs off the hot path; the chain installs it between batches.
    pub fn prepare(
        &self,
        kind: PrepareKind,
        loaded: LoadedPlugin,
        config_json: String,
    ) -> Result<Prepared, LoadError> {
        let mut instance = loaded.instantiate(
            &self.name,
            &config_json,
            &self.limits,
            self.backends.clone(),
        )?;
        let (inputs, generation) = {
            let inputs = self.inputs.read().unwrap_or_else(|e| e.into_inner());
            (inputs.clone(), self.generation.load(Ordering::Acquire))
        };
        let decisions = decide(&mut instance, &inputs).map_err(|error| LoadError::TagPlane {
            plugin: format!("{}@{}", loaded.name(), loaded.version()),
            error,
        })?;
        let diffed_against = self.decisions_snapshot();
        let changed = changed_decisions(&diffed_against, &decisions, decisions.len());
        let any_reject = any_reject(&decisions);
        Ok(Prepared {
            kind,
            loaded,
            config_json,
            instance,
            decisions,
            generation,
            diffed_against,
            changed,
            any_reject,
        })
    }

    /// A fresh instance of the current version (after a trap), with decisions.
    pub(super) fn fresh_instance(&self) -> Result<Prepared, LoadError> {
        let (loaded, config) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.prepare(PrepareKind::Recycle, loaded, config)
    }

    /// The running version's decisions (cheap: shares the chain's).
    pub(super) fn decisions_snapshot(&self) -> Decisions {
        self.decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn publish_decisions(&self, decisions: Decisions) {
        *self.decisions.lock().unwrap_or_else(|e| e.into_inner()) = decisions;
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs `f` over the inputs (read-only).
    pub(super) fn with_inputs<R>(&self, f: impl FnOnce(&[Option<TagInfo>]) -> R) -> R {
        f(&self.inputs.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sets inputs for tag ids; appends extend, changes of existing ids bump the generation.
    pub(super) fn set_inputs(&self, updates: Vec<(u32, Option<TagInfo>)>) {
        let mut inputs = self.inputs.write().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (id, info) in updates {
            let id = id as usize;
            if id >= inputs.len() {
                inputs.resize(id + 1, None);
            } else {
                changed = true;
            }
            inputs[id] = info;
        }
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(super) fn record_stall(&self, stall: Duration) {
        let mut stalls = self.swap_stalls.lock().unwrap_or_else(|e| e.into_inner());
        if stalls.len() >= 10_000 {
            stalls.pop_front();
        }
        stalls.push_back(stall);
    }

    /// Stalls of the swaps so far (time the chain waited at each install).
    pub fn swap_stalls(&self) -> Vec<Duration> {
        let stalls = self.swap_stalls.lock().unwrap_or_else(|e| e.into_inner());
        stalls.iter().copied().collect()
    }
}

/// Tag decisions of `instance` for every input, in chunks; None where the input is None.
pub(super) fn decide(
    instance: &mut PluginInstance,
    inputs: &[Option<TagInfo>],
) -> Result<Vec<Option<TagDecision>>, crate::plugin::CallError> {
    let mut decisions: Vec<Option<TagDecision>> = vec![None; inputs.len()];
    let present: Vec<(usize, &TagInfo)> = inputs
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
        .collect();
    for chunk in present.chunks(TAG_CHUNK) {
        let tags: Vec<TagInfo> = chunk.iter().map(|(_, t)| (*t).clone()).collect();
        let answers = instance.on_tags(&tags)?;
        for ((i, _), d) in chunk.iter().zip(answers) {
            decisions[*i] = Some(d);
        }
    }
    Ok(decisions)
}
