//! Config of the EtherNet/IP source (`type = "enip"`): one Logix controller (ControlLogix,
//! CompactLogix), its poll groups and the tags to read by name.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::cip::{tag_path, CipType};

/// Polls one Logix controller over EtherNet/IP (CIP, port 44818): symbolic reads of atomic
/// tags, array elements and UDT members, many per Multiple Service Packet, over a connected
/// (Forward Open) session where the controller grants one, unconnected messages otherwise.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnipConfig {
    /// The controller's (or its Ethernet module's) host name or address.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Backplane slot of the CPU behind the Ethernet module (route path 1, slot).
    #[serde(default)]
    pub slot: u8,
    /// The controller is addressed directly, with no backplane route (a CompactLogix or
    /// Micro800 on its own port that refuses a route path).
    #[serde(default)]
    pub direct: bool,
    /// Open a CIP connection (Forward Open) and read over it; when the controller refuses,
    /// the source reads with unconnected messages (logged once).
    #[serde(default = "default_true")]
    pub connected: bool,
    /// Bytes of one request or reply (the connection size; 500 fits every Logix).
    #[serde(default = "default_packet")]
    pub max_packet_bytes: u16,
    /// Poll interval of tags without a `group`, in ms.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Named poll groups and their intervals in ms, e.g. `{ fast = 100 }`.
    #[serde(default)]
    pub poll_groups: BTreeMap<String, u64>,
    /// Time allowed for connecting and for each request, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// First wait before reconnecting, in ms; doubles per failed attempt up to
    /// `reconnect_max_ms`, each wait with up to +50 % jitter.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// The tags to read.
    pub tags: Vec<TagConfig>,
}

/// `[[sources.<name>.tags]]`: one value.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TagConfig {
    /// The vendor tag name the normalizer sees (unique within the source).
    pub tag: String,
    /// The Logix tag: `Temp`, `Program:Main.Temp`, `Temp[3]`, `Motor.Speed`, `Line[2].Rate`.
    pub path: String,
    /// The type the tag must have (bool, sint, int, dint, lint, usint, uint, udint, ulint,
    /// real, lreal, string); another type read gives BadTypeMismatch. Without it, any atomic
    /// type or string is taken as it comes.
    #[serde(default, rename = "type")]
    pub value_type: Option<String>,
    #[serde(default)]
    pub unit: String,
    /// Poll group (from `poll_groups`); none: `interval_ms`.
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl EnipConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if self.host.trim().is_empty() {
            return err("host", "must not be empty");
        }
        if !(100..=4000).contains(&self.max_packet_bytes) {
            return err("max_packet_bytes", "must be 100 to 4000");
        }
        if self.interval_ms == 0 {
            return err("interval_ms", "must be at least 1");
        }
        for (g, ms) in &self.poll_groups {
            if *ms == 0 {
                return Err((format!("poll_groups.{g}"), "must be at least 1".into()));
            }
        }
        if self.timeout_ms == 0 {
            return err("timeout_ms", "must be at least 1");
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return err(
                "reconnect_min_ms",
                "must be at least 1 and at most reconnect_max_ms",
            );
        }
        if self.tags.is_empty() {
            return err("tags", "no tag configured");
        }
        let mut names = HashSet::new();
        for (i, t) in self.tags.iter().enumerate() {
            let key = |k: &str| format!("tags[{i}].{k}");
            if t.tag.trim().is_empty() {
                return Err((key("tag"), "must not be empty".into()));
            }
            if !names.insert(t.tag.as_str()) {
                return Err((key("tag"), format!("tag `{}` configured twice", t.tag)));
            }
            let path = tag_path(&t.path).map_err(|e| (key("path"), e))?;
            if path.len() > 200 {
                return Err((key("path"), "longer than 200 bytes as a CIP path".into()));
            }
            if let Some(ty) = &t.value_type {
                CipType::parse(ty).map_err(|e| (key("type"), e))?;
            }
            if let Some(g) = &t.group {
                if !self.poll_groups.contains_key(g) {
                    return Err((key("group"), format!("no poll group `{g}` in poll_groups")));
                }
            }
        }
        Ok(())
    }
}

fn default_port() -> u16 {
    44818
}
fn default_true() -> bool {
    true
}
fn default_packet() -> u16 {
    500
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    2000
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_and_bad_ones_name_the_key() {
        let ok: EnipConfig = toml::from_str(
            "host = \"10.0.0.9\"\nslot = 2\n[[tags]]\ntag = \"t\"\npath = \"Program:Main.Temp[3]\"\ntype = \"real\"\n",
        )
        .unwrap();
        assert_eq!(ok.validate(), Ok(()));
        for (extra, key) in [
            ("path = \"A[\"\n", "tags[0].path"),
            ("path = \"A\"\ntype = \"float\"\n", "tags[0].type"),
            ("path = \"A\"\ngroup = \"g\"\n", "tags[0].group"),
        ] {
            let c: EnipConfig =
                toml::from_str(&format!("host = \"h\"\n[[tags]]\ntag = \"t\"\n{extra}")).unwrap();
            assert_eq!(c.validate().unwrap_err().0, key, "{extra}");
        }
    }
}
