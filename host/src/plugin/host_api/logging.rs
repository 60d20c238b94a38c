//! Plugin logging: the backend trait, the tracing backend, and the per-instance rate limit
//! that keeps a chatty plugin from flooding the host's logs.

use std::time::Instant;

use super::PluginLabel;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Where plugin log lines go.
pub trait LogSink: Send + Sync {
    fn log(&self, label: &PluginLabel, level: LogLevel, message: &str, fields: &[(String, String)]);
}

/// Writes plugin log lines as tracing events (target `ferrule::plugin`).
pub struct TracingLogSink;

impl LogSink for TracingLogSink {
    fn log(
        &self,
        label: &PluginLabel,
        level: LogLevel,
        message: &str,
        fields: &[(String, String)],
    ) {
        let fields = if fields.is_empty() {
            String::new()
        } else {
            fields
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (stage, plugin, version) = (&label.stage, &label.plugin, &label.version);
        match level {
            LogLevel::Trace => {
                tracing::trace!(target: "ferrule::plugin", %stage, %plugin, %version, %fields, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "ferrule::plugin", %stage, %plugin, %version, %fields, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "ferrule::plugin", %stage, %plugin, %version, %fields, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "ferrule::plugin", %stage, %plugin, %version, %fields, "{message}")
            }
            LogLevel::Error => {
                tracing::error!(target: "ferrule::plugin", %stage, %plugin, %version, %fields, "{message}")
            }
        }
    }
}

/// Token bucket: `per_second` lines a second, bursts up to the same number.
pub struct RateLimitedLog {
    per_second: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl RateLimitedLog {
    pub fn new(per_second: u32) -> Self {
        RateLimitedLog {
            per_second: per_second as f64,
            tokens: per_second as f64,
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// Whether one more line may be written now.
    pub fn admit(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "plugin log lines dropped by the rate limit"
                );
            }
            false
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}
