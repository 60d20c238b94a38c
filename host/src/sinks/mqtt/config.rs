//! Config of the MQTT sink (`type = "mqtt"`).

use serde::Deserialize;

use crate::buffer::BufferConfig;
use crate::mqtt::{BrokerConfig, QosLevel};

/// Publishes each sample to its tag path (`plant/<site>/<area>/<line>/<device>/<metric>`)
/// over MQTT 5, through a durable store-and-forward buffer: a sample is removed from the
/// buffer only after the broker acknowledged it (PUBACK at QoS 1). Samples whose path does not
/// fit the topic spec go to the dead-letter with the reason.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// `[sinks.<name>.broker]`: host, port, client id, credentials, keep-alive, session expiry.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// 0, 1 (default: at-least-once; consumers deduplicate on tag and source time) or 2.
    #[serde(default)]
    pub qos: QosLevel,
    /// Publish telemetry retained (off by default).
    #[serde(default)]
    pub retain: bool,
    /// MQTT 5 message expiry, seconds: the broker discards undelivered messages older than
    /// this. Default: none.
    #[serde(default)]
    pub message_expiry_s: Option<u32>,
    /// Most MQTT 5 topic aliases to use per connection (capped by the broker's maximum);
    /// 0 turns them off.
    #[serde(default = "default_topic_aliases")]
    pub topic_aliases: u16,
    /// Send several samples of one tag from one buffered batch as one message (the batch
    /// form of the payload); off sends one message per sample.
    #[serde(default = "default_true")]
    pub batch_form: bool,
    /// Include `vendor_path` and `meta` in each payload.
    #[serde(default = "default_true")]
    pub include_metadata: bool,
    /// Birth/death topic (retained `{"state":"online"|"offline",…}`; the last will publishes
    /// `offline` if the connection drops). Default: `ferrule/<client id>/status`.
    #[serde(default)]
    pub status_topic: Option<String>,
    /// Messages published but not yet acknowledged, at most (the in-flight window).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Samples per second published at most (0: unlimited). Paces the replay of a backlog
    /// after an outage so a returning gateway does not flood the broker; set it above the
    /// live rate so the backlog drains.
    #[serde(default)]
    pub max_rate: u64,
    /// On shutdown, how long to keep sending what is buffered before leaving the rest on
    /// disk for the next start, ms.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Stamp every telemetry message with the MQTT 5 user properties `ferrule-pub`,
    /// `ferrule-epoch` and `ferrule-seq` (a sequence number per publisher, kept durable with
    /// the buffer), so a receiving Ferrule can detect messages lost on the way.
    #[serde(default = "default_true")]
    pub sequence: bool,
    /// The publisher id in `ferrule-pub`. Default: the client id. Unique per publisher.
    #[serde(default)]
    pub publisher_id: Option<String>,
    /// `[sinks.<name>.buffer]`: the durable buffer (path, max_bytes, overflow, max_age_s).
    #[serde(default)]
    pub buffer: BufferConfig,
}

fn default_true() -> bool {
    true
}
fn default_topic_aliases() -> u16 {
    1024
}
fn default_max_inflight() -> u16 {
    256
}
fn default_drain_timeout_ms() -> u64 {
    5000
}

impl MqttSinkConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.broker
            .validate()
            .map_err(|(k, m)| (format!("broker.{k}"), m))?;
        self.buffer
            .validate()
            .map_err(|(k, m)| (format!("buffer.{k}"), m))?;
        if self.max_inflight == 0 {
            return Err(("max_inflight".into(), "must be at least 1".into()));
        }
        if let Some(t) = &self.status_topic {
            if t.is_empty() || t.contains(['+', '#']) {
                return Err((
                    "status_topic".into(),
                    "must be a topic name without wildcards".into(),
                ));
            }
        }
        Ok(())
    }
}
