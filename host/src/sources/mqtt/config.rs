//! Config of the MQTT source (`type = "mqtt"`).

use serde::Deserialize;

use crate::mqtt::{BrokerConfig, QosLevel};
use crate::sources::sequence::SequenceConfig;

/// Subscribes to topic filters and turns each message (the `ferrule.sample.v1` payload, one
/// sample or the batch form) into samples; the topic is the tag's vendor path. A message is
/// acknowledged to the broker only once its samples are durably buffered by every sink (or
/// dead-lettered with the reason), so a crash makes the broker deliver it again.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// `[sources.<name>.broker]`: host, port, client id, credentials, keep-alive, session
    /// expiry (the session keeps unacknowledged messages across a restart).
    #[serde(default)]
    pub broker: BrokerConfig,
    /// Topic filters, e.g. `plant/#`, or `$share/<group>/plant/#` so several Ferrule
    /// instances with the same group split the messages between them.
    pub topics: Vec<String>,
    /// Subscription QoS: 0, 1 (default) or 2.
    #[serde(default)]
    pub qos: QosLevel,
    /// Start a fresh session (forgetting unacknowledged messages) instead of resuming.
    #[serde(default)]
    pub clean_start: bool,
    /// Messages the broker may send before we acknowledge (MQTT 5 receive maximum).
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
    /// Samples per batch into the pipeline.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest a partial batch waits before it is sent on, ms.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Larger payloads are dead-lettered (`oversize`).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Dead-letter messages whose topic does not follow
    /// `plant/<site>/<area>/<line>/<device>/<metric>` (`topic-spec`).
    #[serde(default = "default_true")]
    pub require_topic_spec: bool,
    /// `[sources.<name>.sequence]`: the check of publishers' sequence numbers (gaps).
    #[serde(default)]
    pub sequence: SequenceConfig,
}

fn default_receive_maximum() -> u16 {
    1024
}
fn default_batch_size() -> usize {
    1024
}
fn default_linger_ms() -> u64 {
    20
}
fn default_max_payload_bytes() -> usize {
    256 * 1024
}
fn default_true() -> bool {
    true
}

impl MqttSourceConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.broker
            .validate()
            .map_err(|(k, m)| (format!("broker.{k}"), m))?;
        if self.topics.is_empty() {
            return Err((
                "topics".into(),
                "subscribe to at least one topic filter".into(),
            ));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Some(m) = filter_problem(t) {
                return Err((format!("topics[{i}]"), m));
            }
        }
        if self.receive_maximum == 0 {
            return Err(("receive_maximum".into(), "must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(("batch_size".into(), "must be at least 1".into()));
        }
        self.sequence.validate()
    }
}

/// Why `filter` is not a valid MQTT topic filter (incl. `$share/<group>/<filter>`).
fn filter_problem(filter: &str) -> Option<String> {
    let inner = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, f)) if !group.is_empty() && !group.contains(['+', '#']) => f,
            _ => return Some(format!("`{filter}`: expected $share/<group>/<filter>")),
        },
        None => filter,
    };
    if inner.is_empty() {
        return Some(format!("`{filter}`: empty filter"));
    }
    let levels: Vec<&str> = inner.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Some(format!("`{filter}`: `#` must be a whole last level"));
        }
        if l.contains('+') && *l != "+" {
            return Some(format!("`{filter}`: `+` must be a whole level"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::filter_problem;

    #[test]
    fn filters_are_checked() {
        for ok in [
            "plant/#",
            "$share/bridge/plant/#",
            "plant/+/+/+/+/pressure",
            "#",
        ] {
            assert_eq!(filter_problem(ok), None, "{ok}");
        }
        for bad in ["plant/#/x", "plant/a+", "$share//plant/#", "$share/g", ""] {
            assert!(filter_problem(bad).is_some(), "{bad}");
        }
    }
}
