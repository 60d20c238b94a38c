//! Config of the pipeline's stages (`[[stages]]`) and of the pipeline itself (`[pipeline]`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::plugin::{Grant, PluginLimits};

/// What happens to a stage's traffic once its plugin is quarantined (after
/// `limits.failures_before_quarantine` consecutive failures).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum QuarantinePolicy {
    /// Keep the failing batch and stop taking new ones until an operator swaps, rolls back or
    /// releases the stage; upstream buffers absorb the wait. Order is kept. The default.
    #[default]
    Hold,
    /// Pass batches through the stage unchanged.
    PassThrough,
    /// Send the stage's batches to the dead-letter with the quarantine reason.
    DeadLetter,
}

impl QuarantinePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantinePolicy::Hold => "hold",
            QuarantinePolicy::PassThrough => "pass-through",
            QuarantinePolicy::DeadLetter => "dead-letter",
        }
    }
}

/// One plugin stage, in chain order.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Unique stage name (used by `ferrule plugin swap <stage>` and in dead-letters).
    pub name: String,
    /// Path of the plugin, relative to the config file: a component (.wasm), or a package
    /// directory (`ferrule-plugin.toml` + component; see the README, "Plugin packages").
    pub plugin: PathBuf,
    /// Optional pin `sha256:<hex>` of the component: a component with another digest is
    /// refused (for a package, the digest of the component inside it).
    #[serde(default)]
    pub digest: Option<String>,
    /// `hold` (default), `pass-through` or `dead-letter`.
    #[serde(default)]
    pub quarantine: QuarantinePolicy,
    /// Resource limits of the plugin.
    #[serde(default)]
    pub limits: PluginLimits,
    /// Ambient capabilities granted to this plugin: `clock`, `random`, `stdio`. Default
    /// none. Files, sockets and the environment are never granted.
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// The plugin's own config, handed to its `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Swap this stage's plugin when its file changes on disk (a rebuild in place swaps the
    /// running version). Default: `[pipeline] watch_plugins`.
    #[serde(default = "default_watch")]
    pub watch: Option<bool>,
}

fn default_watch() -> Option<bool> {
    None
}

impl StageConfig {
    /// The limits with the stage's grants, as the engine takes them.
    pub fn sandbox(&self) -> PluginLimits {
        PluginLimits {
            grants: self.grants.clone(),
            ..self.limits.clone()
        }
    }

    /// Whether the file watcher swaps this stage when its plugin file changes.
    pub fn watched(&self, pipeline: &PipelineConfig) -> bool {
        self.watch.unwrap_or(pipeline.watch_plugins)
    }

    /// The plugin config as the JSON text `init` receives.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }
}

/// `[pipeline]`: queues, plugin file watching, progress line.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Batches each queue (source → chain, chain → each sink) holds before it pushes back.
    #[serde(default = "default_queue_batches")]
    pub queue_batches: usize,
    /// Swap a stage's plugin when its file changes on disk (a plugin rebuilt in place is
    /// swapped in within `watch_interval_ms`). A stage's own `watch` overrides it.
    #[serde(default = "default_true")]
    pub watch_plugins: bool,
    /// How often plugin files are checked, in ms.
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
    /// Seconds between progress lines on stderr (0: none).
    #[serde(default = "default_progress_interval_s")]
    pub progress_interval_s: u64,
    /// A sink flushes (and releases its sources' acknowledgments) at least this often, in ms,
    /// even while its queue never empties (a Kafka backlog).
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// … and at least every this many batches, which bounds the memory a sink holds for
    /// batches written but not yet flushed.
    #[serde(default = "default_flush_batches")]
    pub flush_batches: usize,
    /// A sink that has work but made no progress for this many seconds is reported stalled:
    /// `/ready` answers 503 naming it.
    #[serde(default = "default_stall_after_s")]
    pub stall_after_s: u64,
    /// Most tags the host keeps (sources that name tags by message — MQTT topics, Kafka keys —
    /// can grow it without bound). Past it, messages naming a new tag are dead-lettered
    /// (`tag-limit`), counted, and `/ready` says so.
    #[serde(default = "default_max_tags")]
    pub max_tags: usize,
}

fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_flush_batches() -> usize {
    64
}
fn default_stall_after_s() -> u64 {
    30
}
fn default_max_tags() -> usize {
    1_000_000
}

fn default_queue_batches() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_watch_interval_ms() -> u64 {
    1000
}
fn default_progress_interval_s() -> u64 {
    1
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_batches: default_queue_batches(),
            watch_plugins: default_true(),
            watch_interval_ms: default_watch_interval_ms(),
            progress_interval_s: default_progress_interval_s(),
            flush_interval_ms: default_flush_interval_ms(),
            flush_batches: default_flush_batches(),
            stall_after_s: default_stall_after_s(),
            max_tags: default_max_tags(),
        }
    }
}
