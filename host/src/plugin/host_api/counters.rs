//! Plugin counters: the backend trait and the in-memory registry the host exports.

use std::collections::HashMap;
use std::sync::Mutex;

use super::PluginLabel;

/// Where `counter-add` calls go.
pub trait CounterSink: Send + Sync {
    fn add(&self, label: &PluginLabel, name: &str, delta: u64);
}

/// Counters keyed by (plugin name, counter name), summed across versions and instances.
#[derive(Default)]
pub struct PluginCounters {
    values: Mutex<HashMap<(String, String), u64>>,
}

/// Longest counter name kept; longer names are cut so a plugin cannot grow host memory.
const MAX_NAME: usize = 64;
/// Most distinct counters per host.
const MAX_COUNTERS: usize = 10_000;

impl PluginCounters {
    pub fn get(&self, plugin: &str, name: &str) -> u64 {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values
            .get(&(plugin.to_string(), name.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// All counters, sorted, for the status report.
    pub fn snapshot(&self) -> Vec<(String, String, u64)> {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = values
            .iter()
            .map(|((p, n), v)| (p.clone(), n.clone(), *v))
            .collect();
        out.sort();
        out
    }
}

impl CounterSink for PluginCounters {
    fn add(&self, label: &PluginLabel, name: &str, delta: u64) {
        let name: String = name.chars().take(MAX_NAME).collect();
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        let key = (label.plugin.clone(), name);
        if values.len() >= MAX_COUNTERS && !values.contains_key(&key) {
            return;
        }
        *values.entry(key).or_default() += delta;
    }
}
