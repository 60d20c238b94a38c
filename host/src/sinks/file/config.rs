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
}

fn default_true() -> bool {
    true
}

impl FileSinkConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSinkConfig {
            path: path.into(),
            include_metadata: true,
            delay_ms: 0,
        }
    }
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.path.as_os_str().is_empty() {
            return Err(("path".into(), "must not be empty".into()));
        }
        Ok(())
    }
}
