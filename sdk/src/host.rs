//! The host capabilities a plugin may call: logging, counters, reference-data lookup and the
//! latest sample per tag.
//! In a component they call the host's imports; natively (in `cargo test`) they go to the
//! thread-local stand-in that `testing::Harness` sets up.

/// Log severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes a structured log line; the host tags it with the plugin's name and version.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    imp::log(level, message, fields)
}

/// Adds `delta` to the plugin-scoped counter `name`.
pub fn counter_add(name: &str, delta: u64) {
    imp::counter_add(name, delta)
}

/// Looks up `key` in the host's reference-data table `table` (e.g. the asset registry).
pub fn lookup(table: &str, key: &str) -> Option<Vec<(String, String)>> {
    imp::lookup(table, key)
}

/// The latest sample the host holds for the tag at normalised `path` (for interlocks on the
/// command plane); `None` when the tag is unknown or has no sample yet.
pub fn latest(path: &str) -> Option<crate::types::LatestSample> {
    imp::latest(path)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::guest::bindings::ferrule::plugin::host as wit;

    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wit::log(level, message, &fields);
    }
    pub fn counter_add(name: &str, delta: u64) {
        wit::counter_add(name, delta)
    }
    pub fn lookup(table: &str, key: &str) -> Option<Vec<(String, String)>> {
        wit::lookup(table, key)
    }
    pub fn latest(path: &str) -> Option<crate::types::LatestSample> {
        wit::latest(path).map(|s| crate::types::LatestSample {
            value: s.value,
            extra: s.extra.map(crate::guest::extra_value),
            quality: crate::types::Quality(s.quality),
            timestamp_ns: s.timestamp,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;
    use crate::testing::NATIVE_HOST;

    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        NATIVE_HOST.with(|h| h.borrow_mut().log(level, message, fields))
    }
    pub fn counter_add(name: &str, delta: u64) {
        NATIVE_HOST.with(|h| h.borrow_mut().counter_add(name, delta))
    }
    pub fn lookup(table: &str, key: &str) -> Option<Vec<(String, String)>> {
        NATIVE_HOST.with(|h| h.borrow().lookup(table, key))
    }
    pub fn latest(path: &str) -> Option<crate::types::LatestSample> {
        NATIVE_HOST.with(|h| h.borrow().latest(path))
    }
}
