//! Config of the Kafka sink (`type = "kafka"`) and the Kafka dead-letter (`[dead_letter]
//! type = "kafka"`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Produces each sample as one Kafka record (the `ferrule.sample.v1` single-sample payload
/// plus `"path"`) to every topic its routes name. The key is the normalized tag path, so one
/// tag's samples stay in one partition, in order. Headers: `quality`, `status`, `unit`,
/// `contract`. The producer is idempotent with `acks=all`; the batch a sample came from (and
/// so the upstream acknowledgment, e.g. the MQTT PUBACK) is released only after Kafka
/// acknowledged every record of it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Kafka client id. Default: `ferrule-<sink name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `[[sinks.<name>.routes]]`: tag-path glob → topics. Every matching route applies (a
    /// sample may go to several topics); a sample no route matches is dead-lettered
    /// (`no-route`).
    pub routes: Vec<RouteConfig>,
    /// `none`, `lz4` (default) or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits to fill a batch, ms.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Records handed to the producer but not yet acknowledged, at most; past it the sink
    /// waits for acknowledgments (and so holds the pipeline back).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// How long the producer keeps retrying a record before reporting it failed, ms; a
    /// failed record is sent again by the sink (never dropped).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Include `vendor_path` and `meta` in each payload.
    #[serde(default = "default_true")]
    pub include_metadata: bool,
    /// `[sinks.<name>.dedup]`: drop samples already forwarded (QoS 1 redeliveries).
    #[serde(default)]
    pub dedup: DedupConfig,
    /// Number the records per topic-partition (headers `ferrule-pub`, `ferrule-epoch`,
    /// `ferrule-seq`), so a Ferrule reading the topic can detect missing records. The sink
    /// then picks the partition itself: CRC32 of the key modulo the partition count, as
    /// librdkafka's default partitioner (a `partitioner` property is not used).
    #[serde(default = "default_true")]
    pub sequence: bool,
    /// The publisher id in `ferrule-pub`. Default: the client id.
    #[serde(default)]
    pub publisher_id: Option<String>,
    /// Further librdkafka producer properties (e.g. `"batch.size" = "1000000"`); they
    /// cannot turn off idempotence or `acks=all`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// One routing rule.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Tag-path glob over `/`-separated levels: `*` matches within one level, `**` any
    /// number of levels (e.g. `plant/site1/**`, `plant/**/alarm_*`).
    #[serde(rename = "match")]
    pub pattern: String,
    /// Kafka topics the matching samples go to.
    pub topics: Vec<String>,
}

/// Record batch compression.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Deduplication within a time window: a sample whose (tag path, source timestamp, value,
/// quality) the sink already forwarded is dropped (counted in `deduplicated`); one with the
/// same tag and time but another value or quality is a correction: forwarded with the header
/// `correction: true` and counted (`corrections`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// How long a forwarded sample is remembered, s; 0 turns dedup off.
    #[serde(default = "default_dedup_window_s")]
    pub window_s: u64,
    /// Most samples remembered (the oldest are forgotten first): bounds the memory (about
    /// 50 bytes a sample).
    #[serde(default = "default_dedup_max_keys")]
    pub max_keys: usize,
    /// How the window survives a restart (`kill -9` included): `durable` (default: kept in a
    /// local database at each flush; at start only what was written after the last flush is
    /// read back from Kafka), `topics` (read the whole window back from the tail of the
    /// topics the sink writes), or `none` (start empty: redeliveries after a restart reach
    /// Kafka again).
    #[serde(default)]
    pub restore: DedupRestore,
    /// The durable window's file (a redb database), relative to the config file. Default:
    /// `data/dedup/<sink>.redb` beside the config file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Longest the start-up read from Kafka may take, s (Kafka unreachable: retried).
    #[serde(default = "default_restore_timeout_s")]
    pub restore_timeout_s: u64,
}

/// `dedup.restore`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DedupRestore {
    #[default]
    Durable,
    Topics,
    None,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window_s: default_dedup_window_s(),
            max_keys: default_dedup_max_keys(),
            restore: DedupRestore::default(),
            path: None,
            restore_timeout_s: default_restore_timeout_s(),
        }
    }
}

fn default_restore_timeout_s() -> u64 {
    300
}

/// `[dead_letter] type = "kafka"`: each dead-letter as one JSON record (the dead-letter's
/// fields, with the original payload in `extra`, plus `instance`) to `topic`, keyed by the
/// path, with a `reason` header.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The dead-letter topic.
    pub topic: String,
    /// This bridge instance's name, recorded in every dead-letter. Default: the client id.
    #[serde(default)]
    pub instance: Option<String>,
    /// Kafka client id. Default: `ferrule-dead-letter`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `none`, `lz4` (default) or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits to fill a batch, ms.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// How long the producer keeps retrying a record before the sink sends it again, ms.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Further librdkafka producer properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}
fn default_linger_ms() -> u64 {
    5
}
fn default_max_inflight() -> usize {
    100_000
}
fn default_message_timeout_ms() -> u64 {
    30_000
}
fn default_dedup_window_s() -> u64 {
    600
}
fn default_dedup_max_keys() -> usize {
    1_000_000
}

/// Properties the sink sets itself and a user may not override.
const FIXED: [&str; 4] = [
    "enable.idempotence",
    "acks",
    "bootstrap.servers",
    "client.id",
];

fn check_common(
    brokers: &str,
    properties: &BTreeMap<String, String>,
) -> Result<(), (String, String)> {
    if brokers.trim().is_empty() {
        return Err(("brokers".into(), "name at least one host:port".into()));
    }
    for k in properties.keys() {
        if FIXED.contains(&k.as_str()) {
            return Err((
                format!("properties.\"{k}\""),
                "is set by Ferrule (idempotent, acks=all) and cannot be overridden".into(),
            ));
        }
    }
    Ok(())
}

fn check_topic(t: &str) -> Option<String> {
    if t.is_empty() || t.len() > 249 {
        return Some(format!("`{t}`: a topic has 1 to 249 characters"));
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!("`{t}`: {c:?} is not allowed in a Kafka topic"));
    }
    None
}

impl KafkaSinkConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_common(&self.brokers, &self.properties)?;
        if self.routes.is_empty() {
            return Err(("routes".into(), "add at least one route".into()));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(m) = super::route::pattern_problem(&r.pattern) {
                return Err((format!("routes[{i}].match"), m));
            }
            if r.topics.is_empty() {
                return Err((
                    format!("routes[{i}].topics"),
                    "name at least one topic".into(),
                ));
            }
            for (j, t) in r.topics.iter().enumerate() {
                if let Some(m) = check_topic(t) {
                    return Err((format!("routes[{i}].topics[{j}]"), m));
                }
            }
        }
        if self.max_inflight == 0 {
            return Err(("max_inflight".into(), "must be at least 1".into()));
        }
        if self.dedup.window_s > 0 && self.dedup.max_keys == 0 {
            return Err(("dedup.max_keys".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

impl KafkaDeadLetterConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_common(&self.brokers, &self.properties)?;
        if let Some(m) = check_topic(&self.topic) {
            return Err(("topic".into(), m));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> KafkaSinkConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_and_checks() {
        let base = "brokers = \"k:9092\"\n[[routes]]\nmatch = \"plant/**\"\ntopics = [\"plant.telemetry\"]\n";
        let c = parse(base);
        assert_eq!(c.compression, Compression::Lz4);
        assert_eq!(c.dedup, DedupConfig::default());
        assert_eq!(c.validate(), Ok(()));
        let bad = parse(&format!("{base}[properties]\n\"acks\" = \"1\"\n"));
        assert_eq!(bad.validate().unwrap_err().0, "properties.\"acks\"");
        let bad = parse(&base.replace("plant.telemetry", "plant/telemetry"));
        assert_eq!(bad.validate().unwrap_err().0, "routes[0].topics[0]");
        let bad = parse(&base.replace("plant/**", "plant/a**"));
        assert_eq!(bad.validate().unwrap_err().0, "routes[0].match");
        assert!(toml::from_str::<KafkaSinkConfig>(&format!("acks = 1\n{base}")).is_err());
    }
}
