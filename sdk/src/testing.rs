//! Native test harness: runs a plugin's logic with plain `cargo test`, no Wasm involved, with
//! a stand-in host (captured logs and counters, reference data and latest samples the test
//! provides). It checks the same output invariants the host enforces on a component.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::host::Level;
use crate::types::{
    Batch, BatchOutput, Columns, Command, CommandDecision, Config, LatestSample, Planes,
    PluginInfo, TagDecision, TagInfo,
};
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
    latest: HashMap<String, LatestSample>,
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
    pub(crate) fn latest(&self, path: &str) -> Option<LatestSample> {
        self.latest.get(path).cloned()
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

    /// Sets what `host::latest(path)` answers from now on (the host's latest sample).
    pub fn set_latest(&mut self, path: &str, sample: LatestSample) {
        NATIVE_HOST.with(|h| h.borrow_mut().latest.insert(path.to_string(), sample));
    }

    /// Command plane for one command, with the host's checks: a plugin without the command
    /// plane allows it unchanged; a refusal must use a declared reason code.
    pub fn on_command(&mut self, cmd: &Command) -> Result<CommandDecision, String> {
        if !self.info.planes.contains(Planes::COMMAND) {
            return Ok(CommandDecision::allow());
        }
        let decision = self.plugin.on_command(cmd);
        if let CommandDecision::Refuse { reason, .. } = &decision {
            if !self.info.reasons.iter().any(|r| r.code == *reason) {
                return Err(format!(
                    "command refused with undeclared reason code {reason}"
                ));
            }
        }
        Ok(decision)
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
/// written extras name existing samples once each, and a sample is rejected or dropped at
/// most once (across both), with a declared reason.
pub fn check_output(info: &PluginInfo, n: usize, out: &BatchOutput) -> Result<(), String> {
    if let Some(extras) = &out.extras {
        if !info.writes.contains(Columns::EXTRAS) {
            return Err("returned extras it did not declare in `writes`".into());
        }
        let mut seen = vec![false; n];
        for e in extras {
            let i = e.index as usize;
            if i >= n {
                return Err(format!("extra names sample {i} of {n}"));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("sample {i} has two extras"));
            }
        }
    }
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
    for d in &out.dropped {
        let i = d.index as usize;
        if i >= n {
            return Err(format!("drop names sample {i} of {n}"));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!(
                "sample {i} dropped twice, or both rejected and dropped"
            ));
        }
        if !info.reasons.iter().any(|x| x.code == d.reason) {
            return Err(format!("drop uses undeclared reason code {}", d.reason));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Columns, Dropped, Quality};

    /// Drops samples below `min`, refuses commands above `max`, and names its interlock.
    struct Gate {
        min: f64,
        max: f64,
    }

    impl Plugin for Gate {
        fn info() -> PluginInfo {
            PluginInfo::new("gate", "1.0.0")
                .sample_plane(Columns::VALUES, Columns::NONE)
                .command_plane()
                .reason(1, "below-min", "")
                .reason(2, "above-max", "")
        }
        fn init(config: Config) -> Result<Self, String> {
            #[derive(serde::Deserialize)]
            struct C {
                min: f64,
                max: f64,
            }
            let c: C = config.parse()?;
            Ok(Gate {
                min: c.min,
                max: c.max,
            })
        }
        fn on_batch(&mut self, batch: &mut Batch) -> Result<(), String> {
            for s in batch.samples_mut() {
                if *s.value < self.min {
                    s.drop(1);
                }
            }
            Ok(())
        }
        fn on_command(&mut self, cmd: &Command) -> CommandDecision {
            let interlock = crate::host::latest(&cmd.path).is_some_and(|s| s.quality.is_bad());
            if cmd.value > self.max || interlock {
                CommandDecision::refuse(2, format!("{} over {}", cmd.value, self.max))
            } else {
                CommandDecision::allow_value(cmd.value / 2.0)
            }
        }
    }

    fn command(value: f64) -> Command {
        Command {
            id: "1".into(),
            tag_id: 0,
            path: "plant/a".into(),
            value,
            extra: None,
            expected_current: None,
            requester: "test".into(),
            deadline_ns: 0,
            dry_run: false,
        }
    }

    #[test]
    fn the_harness_runs_drops_and_commands_with_the_hosts_checks() {
        let mut h = Harness::<Gate>::new(serde_json::json!({"min": 1.0, "max": 10.0})).unwrap();
        let out = h
            .on_batch(Batch::from_rows(&[
                (0, 0.5, Quality::GOOD, 1),
                (0, 2.0, Quality::GOOD, 2),
            ]))
            .unwrap();
        assert_eq!(
            out.dropped,
            vec![Dropped {
                index: 0,
                reason: 1
            }]
        );
        assert!(out.rejected.is_empty());
        assert_eq!(
            h.on_command(&command(4.0)).unwrap(),
            CommandDecision::Allow(Some(2.0))
        );
        assert_eq!(
            h.on_command(&command(11.0)).unwrap(),
            CommandDecision::refuse(2, "11 over 10")
        );
        // `host::latest` answers what the test set.
        h.set_latest(
            "plant/a",
            LatestSample {
                value: 3.0,
                extra: None,
                quality: Quality::BAD,
                timestamp_ns: 5,
            },
        );
        assert!(matches!(
            h.on_command(&command(4.0)).unwrap(),
            CommandDecision::Refuse { reason: 2, .. }
        ));
        // Config errors name the key.
        let e = Harness::<Gate>::new(serde_json::json!({"min": 1.0, "max": "ten"})).unwrap_err();
        assert!(e.starts_with("invalid config at max: "), "{e}");
    }

    #[test]
    fn check_output_refuses_a_sample_both_rejected_and_dropped() {
        let info = Gate::info();
        let out = BatchOutput {
            rejected: vec![crate::types::Rejection {
                index: 0,
                reason: 1,
                detail: None,
            }],
            dropped: vec![Dropped {
                index: 0,
                reason: 1,
            }],
            ..BatchOutput::default()
        };
        assert_eq!(
            check_output(&info, 1, &out).unwrap_err(),
            "sample 0 dropped twice, or both rejected and dropped"
        );
        let out = BatchOutput {
            dropped: vec![Dropped {
                index: 0,
                reason: 9,
            }],
            ..BatchOutput::default()
        };
        assert_eq!(
            check_output(&info, 1, &out).unwrap_err(),
            "drop uses undeclared reason code 9"
        );
    }
}
