//! Host capabilities a plugin may import, one module each, each with a backend trait so the
//! host functions are tested without Wasm: structured logging, counters, reference data, the
//! latest sample per tag. `HostServices` is what one plugin instance's store holds; it
//! implements the WIT `host` interface of every contract version by forwarding to the backends.

pub mod counters;
pub mod latest;
pub mod logging;
pub mod reference_data;

use std::sync::Arc;

pub use counters::{CounterSink, PluginCounters};
pub use latest::{LatestValues, NoLatestValues};
pub use logging::{LogSink, RateLimitedLog, TracingLogSink};
pub use reference_data::{ReferenceData, ReferenceDataError, StaticReferenceData};

use super::bindings::ferrule::plugin::host::{Host, Level};
use super::bindings::v0_1::ferrule::plugin::host as host_v0_1;
use super::bindings::LatestSample;

/// Which plugin a host call comes from (for logs and counters).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PluginLabel {
    /// Pipeline stage the instance serves (or "inspect"/"conformance").
    pub stage: String,
    pub plugin: String,
    pub version: String,
}

impl std::fmt::Display for PluginLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} (stage {})", self.plugin, self.version, self.stage)
    }
}

/// The backends shared by every instance of a host.
#[derive(Clone)]
pub struct HostBackends {
    pub log: Arc<dyn LogSink>,
    pub counters: Arc<dyn CounterSink>,
    pub reference: Arc<dyn ReferenceData>,
    /// The latest sample per tag (the `latest` import); `NoLatestValues` unless write-back
    /// plugs in its store.
    pub latest: Arc<dyn LatestValues>,
    /// Log lines a plugin instance may write per second before they are dropped (and counted).
    pub log_lines_per_second: u32,
}

impl Default for HostBackends {
    fn default() -> Self {
        HostBackends {
            log: Arc::new(TracingLogSink),
            counters: Arc::new(PluginCounters::default()),
            reference: Arc::new(StaticReferenceData::default()),
            latest: Arc::new(NoLatestValues),
            log_lines_per_second: 100,
        }
    }
}

/// Per-instance host state behind the WIT `host` interface.
pub struct HostServices {
    label: PluginLabel,
    backends: HostBackends,
    log: RateLimitedLog,
}

impl HostServices {
    pub fn new(label: PluginLabel, backends: HostBackends) -> Self {
        let log = RateLimitedLog::new(backends.log_lines_per_second);
        HostServices {
            label,
            backends,
            log,
        }
    }
    pub fn label(&self) -> &PluginLabel {
        &self.label
    }
    /// Log lines dropped by the rate limit so far.
    pub fn dropped_log_lines(&self) -> u64 {
        self.log.dropped()
    }
}

/// The `types` interface has no functions; its host trait is empty.
impl super::bindings::ferrule::plugin::types::Host for HostServices {}

impl Host for HostServices {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        if self.log.admit() {
            self.backends
                .log
                .log(&self.label, level.into(), &message, &fields);
        }
    }
    fn counter_add(&mut self, name: String, delta: u64) {
        self.backends.counters.add(&self.label, &name, delta);
    }
    fn lookup(&mut self, table: String, key: String) -> Option<Vec<(String, String)>> {
        self.backends.reference.lookup(&table, &key)
    }
    fn latest(&mut self, path: String) -> Option<LatestSample> {
        self.backends.latest.latest(&path)
    }
}

/// Contract 0.1.0: the same services, without `latest`.
impl super::bindings::v0_1::ferrule::plugin::types::Host for HostServices {}

impl host_v0_1::Host for HostServices {
    fn log(&mut self, level: host_v0_1::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            host_v0_1::Level::Trace => Level::Trace,
            host_v0_1::Level::Debug => Level::Debug,
            host_v0_1::Level::Info => Level::Info,
            host_v0_1::Level::Warn => Level::Warn,
            host_v0_1::Level::Error => Level::Error,
        };
        Host::log(self, level, message, fields)
    }
    fn counter_add(&mut self, name: String, delta: u64) {
        Host::counter_add(self, name, delta)
    }
    fn lookup(&mut self, table: String, key: String) -> Option<Vec<(String, String)>> {
        Host::lookup(self, table, key)
    }
}

impl From<Level> for logging::LogLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => logging::LogLevel::Trace,
            Level::Debug => logging::LogLevel::Debug,
            Level::Info => logging::LogLevel::Info,
            Level::Warn => logging::LogLevel::Warn,
            Level::Error => logging::LogLevel::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct CapturedLog(Mutex<Vec<(PluginLabel, logging::LogLevel, String)>>);
    impl LogSink for CapturedLog {
        fn log(
            &self,
            label: &PluginLabel,
            level: logging::LogLevel,
            message: &str,
            _fields: &[(String, String)],
        ) {
            self.0
                .lock()
                .unwrap()
                .push((label.clone(), level, message.to_string()));
        }
    }

    fn services(log: Arc<CapturedLog>, per_second: u32) -> (HostServices, Arc<PluginCounters>) {
        let counters = Arc::new(PluginCounters::default());
        let reference = StaticReferenceData::from_rows(
            "assets",
            vec![(
                "plant/s/a/l/d".into(),
                vec![("asset_id".into(), "A-1".into())],
            )],
        );
        let backends = HostBackends {
            log,
            counters: counters.clone(),
            reference: Arc::new(reference),
            latest: Arc::new(NoLatestValues),
            log_lines_per_second: per_second,
        };
        let label = PluginLabel {
            stage: "st".into(),
            plugin: "p".into(),
            version: "1".into(),
        };
        (HostServices::new(label, backends), counters)
    }

    #[test]
    fn host_calls_reach_their_backends() {
        let log = Arc::new(CapturedLog::default());
        let (mut host, counters) = services(log.clone(), 100);
        host.log(Level::Warn, "hello".into(), vec![]);
        host.counter_add("missing".into(), 3);
        host.counter_add("missing".into(), 2);
        assert_eq!(
            host.lookup("assets".into(), "plant/s/a/l/d".into()),
            Some(vec![("asset_id".into(), "A-1".into())])
        );
        assert_eq!(host.lookup("assets".into(), "nope".into()), None);
        assert_eq!(host.lookup("other".into(), "plant/s/a/l/d".into()), None);
        let lines = log.0.lock().unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].1, logging::LogLevel::Warn);
        assert_eq!(lines[0].0.plugin, "p");
        assert_eq!(counters.get("p", "missing"), 5);
    }

    #[test]
    fn log_flood_is_rate_limited_and_counted() {
        let log = Arc::new(CapturedLog::default());
        let (mut host, _) = services(log.clone(), 10);
        for i in 0..1000 {
            host.log(Level::Info, format!("line {i}"), vec![]);
        }
        let written = log.0.lock().unwrap().len();
        assert!(written <= 11, "{written} lines passed a 10/s limit");
        assert_eq!(host.dropped_log_lines() + written as u64, 1000);
    }
}
