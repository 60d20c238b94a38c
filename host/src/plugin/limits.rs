//! Per-plugin resource limits (config and enforcement): linear memory cap, CPU budget per
//! call, output size, the failure count that quarantines a plugin, and the memory high-water
//! mark at which an instance is recycled.

use serde::Deserialize;

/// An ambient capability the operator grants one plugin. Without grants a plugin sees a
/// clock stuck at the Unix epoch, a fixed pseudo-random stream, and no stdio.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// The host's wall and monotonic clocks.
    Clock,
    /// The host's secure and insecure random sources.
    Random,
    /// The host's stdout and stderr (for debugging a plugin).
    Stdio,
}

impl Grant {
    pub const ALL: [Grant; 3] = [Grant::Clock, Grant::Random, Grant::Stdio];

    /// The name used in configs and manifests (`clock`, `random`, `stdio`).
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Clock => "clock",
            Grant::Random => "random",
            Grant::Stdio => "stdio",
        }
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Grant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Grant::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| format!("unknown capability `{s}`: expected clock, random or stdio"))
    }
}

/// Wall-time budget (ms) of the calls that set an instance up — instantiation, `describe`,
/// `init` — when `cpu_ms_per_call` is lower: they run once per instance, off the hot path, and
/// a big guest (CPython, ~18 MB) pages in its memory image during them.
pub const SETUP_CPU_MS: u64 = 1000;

/// Limits for one stage's plugin. Every field has a safe default.
#[derive(Clone, Debug, Deserialize, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimits {
    /// Largest linear memory an instance may grow to, in MiB (all its memories together).
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Memory (MiB) past which an instance is replaced with a fresh one between batches.
    /// Must be below `memory_mib`. Catches plugins that leak.
    #[serde(default = "default_recycle_at_mib")]
    pub recycle_at_mib: u64,
    /// CPU budget of one call, in milliseconds of wall time (epoch mode). Instantiation,
    /// `describe` and `init` get at least `SETUP_CPU_MS` (1 s).
    #[serde(default = "default_cpu_ms")]
    pub cpu_ms_per_call: u64,
    /// CPU budget of one call in Wasm fuel units (fuel mode only).
    #[serde(default = "default_fuel")]
    pub fuel_per_call: u64,
    /// Largest result a call may return (bytes, counting columns and strings).
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// Consecutive failed calls after which the plugin is quarantined.
    #[serde(default = "default_failures_before_quarantine")]
    pub failures_before_quarantine: u32,
    /// Capabilities granted (set from the stage's `grants`, not from this table).
    #[serde(skip)]
    pub grants: Vec<Grant>,
}

fn default_memory_mib() -> u64 {
    64
}
fn default_recycle_at_mib() -> u64 {
    48
}
fn default_cpu_ms() -> u64 {
    100
}
fn default_fuel() -> u64 {
    1_000_000_000
}
fn default_max_output_bytes() -> u64 {
    16 << 20
}
fn default_failures_before_quarantine() -> u32 {
    3
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_mib: default_memory_mib(),
            recycle_at_mib: default_recycle_at_mib(),
            cpu_ms_per_call: default_cpu_ms(),
            fuel_per_call: default_fuel(),
            max_output_bytes: default_max_output_bytes(),
            failures_before_quarantine: default_failures_before_quarantine(),
            grants: Vec::new(),
        }
    }
}

impl PluginLimits {
    /// Checks the limits make sense together; the error names the offending key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.memory_mib == 0 || self.memory_mib > 4096 {
            return Err(("memory_mib", "must be between 1 and 4096".into()));
        }
        if self.recycle_at_mib == 0 || self.recycle_at_mib >= self.memory_mib {
            return Err((
                "recycle_at_mib",
                format!("must be above 0 and below memory_mib ({})", self.memory_mib),
            ));
        }
        if self.cpu_ms_per_call == 0 {
            return Err(("cpu_ms_per_call", "must be above 0".into()));
        }
        if self.fuel_per_call == 0 {
            return Err(("fuel_per_call", "must be above 0".into()));
        }
        if self.failures_before_quarantine == 0 {
            return Err(("failures_before_quarantine", "must be at least 1".into()));
        }
        Ok(())
    }
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib << 20) as usize
    }
    pub fn recycle_bytes(&self) -> usize {
        (self.recycle_at_mib << 20) as usize
    }
}

/// Store limiter: caps linear memory and tables, remembers the current size and whether a
/// growth was refused (so a trap after a refused growth is reported as the memory limit).
pub struct MemoryLimiter {
    max_memory: usize,
    current_memory: usize,
    refused: bool,
}

/// Table entries an instance may have (Rust components use a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    pub fn new(max_memory: usize) -> Self {
        MemoryLimiter {
            max_memory,
            current_memory: 0,
            refused: false,
        }
    }
    pub fn current_memory(&self) -> usize {
        self.current_memory
    }
    /// Whether a growth was refused since the last call; clears the flag.
    pub fn take_refused(&mut self) -> bool {
        std::mem::take(&mut self.refused)
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    /// Called for each linear memory of the instance (at instantiation from 0, and on every
    /// growth): the cap applies to their sum. A component made from an interpreter (CPython
    /// through componentize-py) has several memories, not one.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.current_memory.saturating_sub(current) + desired;
        if total > self.max_memory {
            self.refused = true;
            return Ok(false);
        }
        self.current_memory = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        // A component instantiates a few core modules (the plugin, adapters, shims).
        32
    }
    fn memories(&self) -> usize {
        8
    }
    fn tables(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn limiter_refuses_growth_past_the_cap_and_remembers() {
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 65536, None).unwrap());
        assert_eq!(l.current_memory(), 65536);
        assert!(!l.memory_growing(65536, 2 << 20, None).unwrap());
        assert!(l.take_refused());
        assert!(!l.take_refused());
        assert_eq!(l.current_memory(), 65536);
    }

    #[test]
    fn the_cap_applies_to_all_memories_together() {
        let mut l = MemoryLimiter::new(4 << 20);
        // Two memories instantiated, then the first grows: 1 + 2 + 1 MiB fits, one more does not.
        assert!(l.memory_growing(0, 1 << 20, None).unwrap());
        assert!(l.memory_growing(0, 2 << 20, None).unwrap());
        assert!(l.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert_eq!(l.current_memory(), 4 << 20);
        assert!(!l.memory_growing(2 << 20, 3 << 20, None).unwrap());
        assert!(l.take_refused());
        assert_eq!(l.current_memory(), 4 << 20);
    }

    #[test]
    fn validate_names_the_key() {
        let limits = PluginLimits {
            recycle_at_mib: 64,
            ..PluginLimits::default()
        };
        assert_eq!(limits.validate().unwrap_err().0, "recycle_at_mib");
        assert!(PluginLimits::default().validate().is_ok());
    }
}
