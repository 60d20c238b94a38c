//! Native test harness: runs a plugin's logic with plain `cargo test`, no Wasm involved, with
//! a stand-in host (captured logs and counters, reference data the test provides). It checks
//! the same output invariants the host enforces on a component.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::host::Level;
use crate::types::{Batch, BatchOutput, Config, Planes, PluginInfo, TagDecision, TagInfo};
use crate::Plugin;

/// A log line a plugin wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

/// The stand-in host of the current thread.
#[derive(Default)]
pub struct NativeHost {
    reference: HashMap<(String, String), Vec<(String, String)>>,
    logs: Vec<LogLine>,
    counters: HashMap<String, u64>,
}

impl NativeHost {
    pub(crate) fn log(&mut self, level: Level, message: &str, fields: &[(&str, &str)]) {
        self.logs.push(LogLine {
            level,
            message: message.to_string(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
    }
    pub(crate) fn counter_add(&mut self, name: &str, delta: u64) {
        *self.counters.entry(name.to_string()).or_default() += delta;
    }
    pub(crate) fn lookup(&self, table: &str, key: &str) -> Option<Vec<(String, String)>> {
        self.reference
            .get(&(table.to_string(), key.to_string()))
            .cloned()
    }
}

thread_local! {
    pub(crate) static NATIVE_HOST: RefCell<NativeHost> = RefCell::new(NativeHost::default());
}

/// One reference-data row: table, key, key/values.
type Row = (String, String, Vec<(String, String)>);

/// Reference data for the stand-in host: `(table, key) → key/values`.
#[derive(Clone, Debug, Default)]
pub struct ReferenceData {
    rows: Vec<Row>,
}

impl ReferenceData {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn row(mut self, table: &str, key: &str, values: &[(&str, &str)]) -> Self {
        self.rows.push((
            table.to_string(),
            key.to_string(),
            values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        self
    }
}

/// Runs one plugin natively the way the host runs its component.
/// One harness per test thread: a new one resets the thread's stand-in host.
pub struct Harness<P: Plugin> {
    plugin: P,
    info: PluginInfo,
}

impl<P: Plugin> std::fmt::Debug for Harness<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("plugin", &self.info.name)
            .finish()
    }
}

impl<P: Plugin> Harness<P> {
    /// `describe` + `init` with `config` (a JSON value, like the host's stage config).
    pub fn new(config: serde_json::Value) -> Result<Self, String> {
        Self::with_reference_data(config, ReferenceData::new())
    }

    pub fn with_reference_data(
        config: serde_json::Value,
        reference: ReferenceData,
    ) -> Result<Self, String> {
        NATIVE_HOST.with(|h| {
            let mut h = h.borrow_mut();
            *h = NativeHost::default();
            for (table, key, values) in reference.rows {
                h.reference.insert((table, key), values);
            }
        });
        let info = P::info();
        let plugin = P::init(Config(config))?;
        Ok(Harness { plugin, info })
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Direct access to the plugin (e.g. for benchmarks).
    pub fn plugin_mut(&mut self) -> &mut P {
        &mut self.plugin
    }

    /// Tag plane for one tag.
    pub fn on_tag(&mut self, tag: &TagInfo) -> TagDecision {
        self.plugin.on_tag(tag)
    }

    /// Sample plane for one batch, with the host's output checks applied.
    pub fn on_batch(&mut self, mut batch: Batch) -> Result<BatchOutput, String> {
        let n = batch.len();
        if !self.info.planes.contains(Planes::SAMPLE) {
            return Ok(BatchOutput::default());
        }
        self.plugin.on_batch(&mut batch)?;
        let out = batch.into_output(self.info.writes);
        check_output(&self.info, n, &out)?;
        Ok(out)
    }

    /// Log lines written so far.
    pub fn logs(&self) -> Vec<LogLine> {
        NATIVE_HOST.with(|h| h.borrow().logs.clone())
    }

    /// Value of counter `name`.
    pub fn counter(&self, name: &str) -> u64 {
        NATIVE_HOST.with(|h| h.borrow().counters.get(name).copied().unwrap_or(0))
    }
}

/// The output invariants of the contract: written columns have one entry per input sample,
/// rejections name an existing sample once, with a declared reason.
pub fn check_output(info: &PluginInfo, n: usize, out: &BatchOutput) -> Result<(), String> {
    if let Some(v) = &out.values {
        if v.len() != n {
            return Err(format!(
                "values column has {} entries for {n} samples",
                v.len()
            ));
        }
    }
    if let Some(q) = &out.quality {
        if q.len() != n {
            return Err(format!(
                "quality column has {} entries for {n} samples",
                q.len()
            ));
        }
    }
    let mut seen = vec![false; n];
    for r in &out.rejected {
        let i = r.index as usize;
        if i >= n {
            return Err(format!("rejection names sample {i} of {n}"));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("sample {i} rejected twice"));
        }
        if !info.reasons.iter().any(|x| x.code == r.reason) {
            return Err(format!(
                "rejection uses undeclared reason code {}",
                r.reason
            ));
        }
    }
    Ok(())
}

/// The plugin config of the first `[[stages]]` example in a README's TOML blocks, as the
/// host passes it to `init` (TOML → JSON). Lets a plugin test that its documented example works:
/// `readme_stage_config(include_str!("../README.md"))`.
pub fn readme_stage_config(readme: &str) -> serde_json::Value {
    let block = readme
        .split("```toml")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("[[stages]]"))
        .expect("README has a ```toml block with a [[stages]] example");
    let doc: serde_json::Value = toml::from_str(block).expect("README TOML parses");
    doc["stages"][0]["config"].clone()
}
