//! Config of the simulated plant (`type = "simulator"`).

use serde::Deserialize;

/// A deterministic plant: `tags` signals spread over sites, areas, lines and devices, six
/// metrics per device in mixed units, with occasional out-of-range values, NaN and bad quality.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Number of tags.
    #[serde(default = "default_tags")]
    pub tags: u32,
    #[serde(default = "default_sites")]
    pub sites: u32,
    #[serde(default = "default_areas")]
    pub areas_per_site: u32,
    #[serde(default = "default_lines")]
    pub lines_per_area: u32,
    /// Time between scans of all tags, in ms; 0 scans as fast as the pipeline takes them
    /// (timestamps then advance 1 ms per scan).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Samples per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Stop after this many scans (none: run until stopped).
    #[serde(default)]
    pub scans: Option<u64>,
    /// One sample in this many is out of range (0: never).
    #[serde(default = "default_spike_every")]
    pub spike_every: u64,
    /// One sample in this many is NaN (0: never).
    #[serde(default = "default_nan_every")]
    pub nan_every: u64,
    /// One sample in this many has bad quality (0: never).
    #[serde(default = "default_bad_every")]
    pub bad_quality_every: u64,
    /// Source time of the first scan, ns since the Unix epoch (default: the start time).
    #[serde(default)]
    pub start_ns: Option<u64>,
}

fn default_tags() -> u32 {
    1000
}
fn default_sites() -> u32 {
    1
}
fn default_areas() -> u32 {
    2
}
fn default_lines() -> u32 {
    3
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_batch_size() -> usize {
    1024
}
fn default_spike_every() -> u64 {
    997
}
fn default_nan_every() -> u64 {
    1999
}
fn default_bad_every() -> u64 {
    1499
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            tags: default_tags(),
            sites: default_sites(),
            areas_per_site: default_areas(),
            lines_per_area: default_lines(),
            interval_ms: default_interval_ms(),
            batch_size: default_batch_size(),
            scans: None,
            spike_every: default_spike_every(),
            nan_every: default_nan_every(),
            bad_quality_every: default_bad_every(),
            start_ns: None,
        }
    }
}

impl SimulatorConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if self.tags == 0 || self.tags > 10_000_000 {
            return err("tags", "must be between 1 and 10000000");
        }
        if self.sites == 0 || self.areas_per_site == 0 || self.lines_per_area == 0 {
            return err(
                "sites",
                "sites, areas_per_site and lines_per_area must be at least 1",
            );
        }
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return err("batch_size", "must be between 1 and 1048576");
        }
        Ok(())
    }
}
