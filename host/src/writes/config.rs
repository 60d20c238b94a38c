//! `[writes]`: write-back to devices. Nothing is writable unless a source lists it here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::mqtt::{BrokerConfig, QosLevel};

/// Write-back: commands from MQTT (and the admin view `GET /writes`) written to the devices
/// of Modbus and OPC UA sources, after the safety checks. Default deny: a tag is writable
/// only if its source's `allow` list matches its normalized path.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WritesConfig {
    /// The audit log: one JSON line per command, accepted or refused, fsync'd before the
    /// reply goes out. Relative paths are against the config file's directory.
    #[serde(default = "default_audit_path")]
    pub audit_path: PathBuf,
    /// Everything but the write, for every source.
    #[serde(default)]
    pub dry_run: bool,
    /// Deadline of a command that names none, in ms after it is received.
    #[serde(default = "default_deadline_ms")]
    pub default_deadline_ms: u64,
    /// Wait between the write and the read-back, in ms (for devices that apply writes on
    /// their next scan).
    #[serde(default)]
    pub verify_delay_ms: u64,
    /// Rate limit over every command executed (dry runs are checked, not counted).
    #[serde(default = "default_global_rate")]
    pub global_rate: RateLimit,
    /// Per source: what may be written and how often.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceWrites>,
    /// Commands from MQTT.
    #[serde(default)]
    pub mqtt: Option<MqttCommandsConfig>,
    /// Commands from Kafka.
    #[serde(default)]
    pub kafka: Option<KafkaCommandsConfig>,
}

/// `[writes.sources.<source>]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceWrites {
    /// Normalized tag paths that may be written, as globs: `*` any characters but `/`, `**`
    /// any characters, `?` one character but `/` (MQTT's `+` and `#` are literal here), e.g.
    /// `plant/site1/*/line1/press*/setpoint`.
    pub allow: Vec<String>,
    /// Everything but the write, for this source.
    #[serde(default)]
    pub dry_run: bool,
    /// Rate limit per tag.
    #[serde(default = "default_tag_rate")]
    pub tag_rate: RateLimit,
}

/// A token bucket: `burst` commands at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

/// `[writes.mqtt]`: commands arrive as MQTT 5 messages; the reply goes to the message's
/// Response Topic with its Correlation Data.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttCommandsConfig {
    #[serde(default)]
    pub broker: BrokerConfig,
    /// Topic filters commands arrive on.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// The tag's normalized path is the topic with this suffix removed.
    #[serde(default = "default_suffix")]
    pub strip_suffix: String,
    /// ... and this prefix removed.
    #[serde(default)]
    pub strip_prefix: String,
    #[serde(default = "default_qos")]
    pub qos: QosLevel,
}

/// `[writes.kafka]`: commands are records on `topic` (key: the tag's normalized path), replies
/// go to `reply_topic` (key: the command id; the `correlation_id` header copied).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaCommandsConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    pub reply_topic: String,
    #[serde(default = "default_group_id")]
    pub group_id: String,
    #[serde(default)]
    pub client_id: Option<String>,
    /// Further librdkafka properties (both clients).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group_id() -> String {
    "ferrule-writes".into()
}
fn default_audit_path() -> PathBuf {
    PathBuf::from("writes-audit.jsonl")
}
fn default_deadline_ms() -> u64 {
    10_000
}
fn default_global_rate() -> RateLimit {
    RateLimit {
        per_second: 20.0,
        burst: 20,
    }
}
fn default_tag_rate() -> RateLimit {
    RateLimit {
        per_second: 1.0,
        burst: 2,
    }
}
fn default_burst() -> u32 {
    1
}
fn default_topics() -> Vec<String> {
    vec!["plant/+/+/+/+/+/set".into()]
}
fn default_suffix() -> String {
    "/set".into()
}
fn default_qos() -> QosLevel {
    QosLevel::AtLeastOnce
}

impl RateLimit {
    fn validate(&self, key: &str) -> Result<(), (String, String)> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err((
                format!("{key}.per_second"),
                "must be a positive number".into(),
            ));
        }
        if self.burst == 0 {
            return Err((format!("{key}.burst"), "must be at least 1".into()));
        }
        Ok(())
    }
}

impl WritesConfig {
    /// Checks the section; `writable` says whether a source exists and can write (its
    /// type). Errors name the key under `writes`.
    pub fn validate(
        &self,
        writable: impl Fn(&str) -> Result<(), String>,
    ) -> Result<(), (String, String)> {
        self.global_rate.validate("global_rate")?;
        if self.default_deadline_ms == 0 {
            return Err(("default_deadline_ms".into(), "must be at least 1".into()));
        }
        for (name, s) in &self.sources {
            writable(name).map_err(|m| (format!("sources.{name}"), m))?;
            s.tag_rate.validate(&format!("sources.{name}.tag_rate"))?;
            if s.allow.is_empty() {
                return Err((
                    format!("sources.{name}.allow"),
                    "list at least one tag path glob (nothing is writable otherwise)".into(),
                ));
            }
            for (i, g) in s.allow.iter().enumerate() {
                super::glob::check(g).map_err(|m| (format!("sources.{name}.allow[{i}]"), m))?;
            }
        }
        if let Some(m) = &self.mqtt {
            m.broker
                .validate()
                .map_err(|(k, v)| (format!("mqtt.broker.{k}"), v))?;
            if m.topics.is_empty() {
                return Err(("mqtt.topics".into(), "list at least one filter".into()));
            }
        }
        #[cfg(not(feature = "kafka"))]
        if self.kafka.is_some() {
            return Err((
                "kafka".into(),
                crate::features::missing("a Kafka command channel", "kafka"),
            ));
        }
        if let Some(k) = &self.kafka {
            for (key, v) in [
                ("brokers", &k.brokers),
                ("topic", &k.topic),
                ("reply_topic", &k.reply_topic),
                ("group_id", &k.group_id),
            ] {
                if v.trim().is_empty() {
                    return Err((format!("kafka.{key}"), "must not be empty".into()));
                }
            }
            if k.topic == k.reply_topic {
                return Err((
                    "kafka.reply_topic".into(),
                    "must differ from `topic`".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        if self.audit_path.is_relative() {
            self.audit_path = base.join(&self.audit_path);
        }
        if let Some(m) = self.mqtt.as_mut() {
            m.broker.resolve_paths(base);
        }
    }
}
