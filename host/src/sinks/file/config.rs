//! Config of the file sink (`type = "file"`).

use std::path::PathBuf;

use serde::Deserialize;

/// Appends JSON lines to a local file, one per sample (or per dead-letter).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File to append to, relative to the config file; its directory is created.
    pub path: PathBuf,
    /// Add the tag's metadata (source metadata and enrichment) to each line.
    #[serde(default = "default_true")]
    pub include_metadata: bool,
    /// Slow each batch down by this many ms (for demonstrating and testing backpressure).
    #[serde(default)]
    pub delay_ms: u64,
    /// Rotate the file once it holds this many bytes: `path` becomes `path.1`, `path.1`
    /// becomes `path.2`, …, and a new `path` is started (at a batch boundary, so a line is
    /// never split). None (the default): the file grows without bound — set it on a host
    /// that runs unattended.
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
    /// Rotated files kept (`path.1` … `path.N`); the oldest beyond them is deleted.
    #[serde(default = "default_keep_files")]
    pub keep_files: u32,
    /// When lines reach the disk: `"batch"` (the default) fsyncs at every flush, before the
    /// sources are acknowledged, so a power loss loses nothing acknowledged; `"interval"`
    /// fsyncs at most every `fsync_interval_ms` — faster, but a power loss (not a crash of
    /// the host: the kernel keeps written lines) can lose the acknowledged lines of the last
    /// interval.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`, the longest time between two fsyncs.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
}

/// See `FileSinkConfig::fsync`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    #[default]
    Batch,
    Interval,
}

fn default_fsync_interval_ms() -> u64 {
    1000
}

fn default_true() -> bool {
    true
}

fn default_keep_files() -> u32 {
    5
}

impl FileSinkConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSinkConfig {
            path: path.into(),
            include_metadata: true,
            delay_ms: 0,
            rotate_bytes: None,
            keep_files: default_keep_files(),
            fsync: FsyncPolicy::default(),
            fsync_interval_ms: default_fsync_interval_ms(),
        }
    }
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.path.as_os_str().is_empty() {
            return Err(("path".into(), "must not be empty".into()));
        }
        if self.rotate_bytes.is_some_and(|b| b < 4096) {
            return Err(("rotate_bytes".into(), "must be at least 4096".into()));
        }
        if self.rotate_bytes.is_some() && self.keep_files == 0 {
            return Err((
                "keep_files".into(),
                "must be at least 1 when rotate_bytes is set".into(),
            ));
        }
        Ok(())
    }
}
