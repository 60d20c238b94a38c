//! Config of a sink's durable store-and-forward buffer (`[sinks.<name>.buffer]`).

use std::path::PathBuf;

use serde::Deserialize;

/// The durable buffer in front of a sink: every sample is committed here (fsync'd) before its
/// source is acknowledged, and removed only once the destination confirmed it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Buffer file (a redb database), relative to the config file. Default:
    /// `data/buffer/<sink>.redb` beside the config file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Most bytes of buffered samples kept on disk (encoded records; about 24 bytes per
    /// sample). Default 1 GiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// What happens when `max_bytes` is reached: `refuse-new` (default: the buffer stops
    /// taking samples, which pushes back on the pipeline and so on the sources; nothing is
    /// dropped) or `drop-oldest` (the oldest records are deleted to make room; counted in
    /// `dropped_overflow` and logged at warn).
    #[serde(default)]
    pub overflow: OverflowPolicy,
    /// Samples older than this (time in the buffer) are dropped instead of sent, counted in
    /// `dropped_expired` and logged at warn. Default: never.
    #[serde(default)]
    pub max_age_s: Option<u64>,
    /// Records committed together at most (group commit: one fsync for all batches waiting).
    #[serde(default = "default_group_commit")]
    pub group_commit: usize,
}

/// `overflow` of a buffer.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    #[default]
    RefuseNew,
    DropOldest,
}

impl OverflowPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OverflowPolicy::RefuseNew => "refuse-new",
            OverflowPolicy::DropOldest => "drop-oldest",
        }
    }
}

fn default_max_bytes() -> u64 {
    1 << 30
}
fn default_group_commit() -> usize {
    64
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            path: None,
            max_bytes: default_max_bytes(),
            overflow: OverflowPolicy::default(),
            max_age_s: None,
            group_commit: default_group_commit(),
        }
    }
}

impl BufferConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_bytes < 64 * 1024 {
            return Err(("max_bytes".into(), "must be at least 65536".into()));
        }
        if self.group_commit == 0 {
            return Err(("group_commit".into(), "must be at least 1".into()));
        }
        if self.max_age_s == Some(0) {
            return Err((
                "max_age_s".into(),
                "must be at least 1 (or left out)".into(),
            ));
        }
        Ok(())
    }
}
