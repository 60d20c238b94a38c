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
}

impl StageConfig {
    /// The limits with the stage's grants, as the engine takes them.
    pub fn sandbox(&self) -> PluginLimits {
        PluginLimits {
            grants: self.grants.clone(),
            ..self.limits.clone()
        }
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
    /// Swap a stage's plugin when its file changes on disk.
    #[serde(default = "default_true")]
    pub watch_plugins: bool,
    /// How often plugin files are checked, in ms.
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
    /// Seconds between progress lines on stderr (0: none).
    #[serde(default = "default_progress_interval_s")]
    pub progress_interval_s: u64,
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
        }
    }
}
