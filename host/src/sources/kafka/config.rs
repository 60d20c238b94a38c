//! Config of the Kafka source (`type = "kafka"`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::sources::sequence::SequenceConfig;

/// Consumes `ferrule.sample.v1` records (what the Kafka sink produces; the key, or else the
/// payload's `path`, names the tag) as a member of a consumer group: several instances with
/// the same `group_id` split the partitions. Offsets are committed only after every sink took
/// the batch (and the dead-letter every refusal), so a crash or a rebalance re-reads, never
/// skips (at-least-once).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The consumer group.
    pub group_id: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Kafka client id. Default: `ferrule-<source name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Where a group without a committed offset starts: `earliest` (default) or `latest`.
    #[serde(default = "default_offset_reset")]
    pub offset_reset: String,
    /// Samples per batch into the pipeline.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest a partial batch waits before it is sent on, ms.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// How often acknowledged offsets are committed, ms.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Larger payloads are dead-lettered (`oversize`).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Further librdkafka consumer properties (not `enable.auto.commit`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// `[sources.<name>.sequence]`: the check of the record numbers a Ferrule Kafka sink
    /// writes (per publisher and topic-partition, so it works within a consumer group;
    /// `auto` is on).
    #[serde(default)]
    pub sequence: SequenceConfig,
}

fn default_offset_reset() -> String {
    "earliest".into()
}
fn default_batch_size() -> usize {
    1024
}
fn default_linger_ms() -> u64 {
    20
}
fn default_commit_interval_ms() -> u64 {
    200
}
fn default_max_payload_bytes() -> usize {
    256 * 1024
}

impl KafkaSourceConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.brokers.trim().is_empty() {
            return Err(("brokers".into(), "name at least one host:port".into()));
        }
        if self.group_id.is_empty() {
            return Err(("group_id".into(), "must not be empty".into()));
        }
        if self.topics.is_empty() {
            return Err(("topics".into(), "name at least one topic".into()));
        }
        if !matches!(self.offset_reset.as_str(), "earliest" | "latest") {
            return Err(("offset_reset".into(), "`earliest` or `latest`".into()));
        }
        if self.batch_size == 0 {
            return Err(("batch_size".into(), "must be at least 1".into()));
        }
        for k in self.properties.keys() {
            if matches!(
                k.as_str(),
                "enable.auto.commit" | "group.id" | "bootstrap.servers"
            ) {
                return Err((
                    format!("properties.\"{k}\""),
                    "is set by Ferrule and cannot be overridden".into(),
                ));
            }
        }
        self.sequence.validate()
    }
}
