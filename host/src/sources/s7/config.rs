//! Config of the Siemens S7 source (`type = "s7"`): one CPU reached over ISO-on-TCP (rack and
//! slot, or explicit TSAPs), its poll groups and the items to read.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::address::{Address, S7Type};

/// Polls one S7-300/400/1200/1500 CPU over S7comm (ISO-on-TCP, port 102). Reads of a poll
/// group are grouped into multi-item requests within the PDU size the CPU grants. For an
/// S7-1200/1500, allow PUT/GET access and read non-optimized DBs (absolute addresses).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S7Config {
    /// The CPU's host name or address.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Rack of the CPU (0 for S7-1200/1500 and most S7-300s).
    #[serde(default)]
    pub rack: u8,
    /// Slot of the CPU: 2 on an S7-300, 1 (or 0) on an S7-1200/1500; 3 or more on an S7-400.
    #[serde(default = "default_slot")]
    pub slot: u8,
    /// Connection type in the remote TSAP: `pg` (programming device), `op` (operator panel)
    /// or `basic` (S7 basic). Some CPUs limit the connections of each kind.
    #[serde(default)]
    pub connection_type: ConnectionType,
    /// Explicit local TSAP (e.g. `0x0100`), for a CP or a LOGO!; with `remote_tsap`, replaces
    /// rack, slot and connection type.
    #[serde(default)]
    pub local_tsap: Option<u16>,
    /// Explicit remote TSAP (e.g. `0x0200` for a LOGO!, `0x0102` rack 0 slot 2).
    #[serde(default)]
    pub remote_tsap: Option<u16>,
    /// PDU size asked for; the CPU grants its own maximum when smaller (240 on an S7-300,
    /// 480 on an S7-400, 960 on an S7-1500).
    #[serde(default = "default_pdu_size")]
    pub pdu_size: u16,
    /// Most items in one read request (20 for S7-300/400 CPUs; some allow more).
    #[serde(default = "default_max_items")]
    pub max_items_per_request: usize,
    /// Unused bytes a read may span to join two items of one area into one range (the
    /// surplus bytes are read and dropped; a range that reaches past the end of a DB is
    /// split into its tags and only the tags outside it go bad).
    #[serde(default = "default_max_gap")]
    pub max_gap: u32,
    /// Poll interval of items without a `group`, in ms.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Named poll groups and their intervals in ms, e.g. `{ fast = 100, slow = 10000 }`.
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
    /// The items to read.
    pub items: Vec<ItemConfig>,
}

/// The connection type byte of the remote TSAP.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionType {
    #[default]
    Pg,
    Op,
    Basic,
}

/// `[[sources.<name>.items]]`: one tag.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ItemConfig {
    /// The vendor tag name the normalizer sees (unique within the source).
    pub tag: String,
    /// The address: `DB10.DBD4`, `DB10.DBW8`, `DB10.DBX2.3`, `DB5.DBB0`, `MW20`, `M1.0`,
    /// `I0.1` / `E0.1`, `QB3` / `AB3`, `FW6` …
    pub address: String,
    /// The S7 type: bool, byte, char, sint, usint, word, int, uint, dword, dint, udint, real,
    /// time, lreal, lint, ulint, lword, date_and_time, string[n]. Default by the address's
    /// width: X bool, B byte, W word, D dword. 8-byte types and strings take a byte address
    /// naming their first byte (`DB1.DBB20`). DATE_AND_TIME reads as ms since the Unix epoch.
    #[serde(default, rename = "type")]
    pub value_type: Option<String>,
    /// Engineering unit.
    #[serde(default)]
    pub unit: String,
    /// Poll group (from `poll_groups`); none: `interval_ms`.
    #[serde(default)]
    pub group: Option<String>,
    /// Extra metadata for the tag (e.g. site, line, device for the normalizer).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl ItemConfig {
    /// The parsed address and type (after `S7Config::validate`, never an error).
    pub fn resolve(&self) -> Result<(Address, S7Type), String> {
        let a = Address::parse(&self.address)?;
        let t = match &self.value_type {
            Some(t) => S7Type::parse(t)?,
            None => a.default_type(),
        };
        a.check_type(t)?;
        Ok((a, t))
    }
}

impl S7Config {
    /// Local and remote TSAP.
    pub fn tsaps(&self) -> (u16, u16) {
        let ct = match self.connection_type {
            ConnectionType::Pg => 1u16,
            ConnectionType::Op => 2,
            ConnectionType::Basic => 3,
        };
        (
            self.local_tsap.unwrap_or(0x0100),
            self.remote_tsap
                .unwrap_or((ct << 8) | ((self.rack as u16) << 5) | self.slot as u16),
        )
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_string(), m));
        if self.host.trim().is_empty() {
            return err("host", "must not be empty".into());
        }
        if self.rack > 7 {
            return err("rack", "must be 0 to 7".into());
        }
        if self.slot > 31 {
            return err("slot", "must be 0 to 31".into());
        }
        if self.local_tsap.is_some() != self.remote_tsap.is_some() {
            return err(
                "remote_tsap",
                "give both local_tsap and remote_tsap, or neither (rack and slot)".into(),
            );
        }
        if !(240..=8192).contains(&self.pdu_size) {
            return err("pdu_size", "must be 240 to 8192".into());
        }
        if !(1..=255).contains(&self.max_items_per_request) {
            return err("max_items_per_request", "must be 1 to 255".into());
        }
        if self.interval_ms == 0 {
            return err("interval_ms", "must be at least 1".into());
        }
        for (g, ms) in &self.poll_groups {
            if *ms == 0 {
                return err(&format!("poll_groups.{g}"), "must be at least 1".into());
            }
        }
        if self.timeout_ms == 0 {
            return err("timeout_ms", "must be at least 1".into());
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return err(
                "reconnect_min_ms",
                "must be at least 1 and at most reconnect_max_ms".into(),
            );
        }
        if self.items.is_empty() {
            return err("items", "no item configured".into());
        }
        let mut tags = HashSet::new();
        for (i, item) in self.items.iter().enumerate() {
            let key = |k: &str| format!("items[{i}].{k}");
            if item.tag.trim().is_empty() {
                return Err((key("tag"), "must not be empty".into()));
            }
            if !tags.insert(item.tag.as_str()) {
                return Err((key("tag"), format!("tag `{}` configured twice", item.tag)));
            }
            let a = Address::parse(&item.address).map_err(|e| (key("address"), e))?;
            if let Some(t) = &item.value_type {
                let t = S7Type::parse(t).map_err(|e| (key("type"), e))?;
                a.check_type(t).map_err(|e| (key("type"), e))?;
            }
            if let Some(g) = &item.group {
                if !self.poll_groups.contains_key(g) {
                    return Err((key("group"), format!("no poll group `{g}` in poll_groups")));
                }
            }
        }
        Ok(())
    }
}

fn default_port() -> u16 {
    102
}
fn default_slot() -> u8 {
    1
}
fn default_pdu_size() -> u16 {
    960
}
fn default_max_items() -> usize {
    20
}
fn default_max_gap() -> u32 {
    16
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

    fn parse(text: &str) -> S7Config {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = "host = \"10.0.0.5\"\n";

    #[test]
    fn a_cpu_with_groups_parses_and_validates() {
        let c = parse(&format!(
            r#"{BASE}
slot = 2
poll_groups = {{ fast = 100 }}
[[items]]
tag = "Oven.Temp"
address = "DB10.DBD4"
type = "real"
unit = "degC"
group = "fast"
[[items]]
tag = "Oven.Door"
address = "E0.1"
"#
        ));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.tsaps(), (0x0100, 0x0102));
        assert_eq!(c.items[1].resolve().unwrap().1, S7Type::Bool);
        let op = parse(&format!(
            "{BASE}rack = 1\nslot = 3\nconnection_type = \"op\"\n[[items]]\ntag = \"t\"\naddress = \"MW0\"\n"
        ));
        assert_eq!(op.tsaps().1, 0x0223);
        let logo = parse(&format!(
            "{BASE}local_tsap = 0x0100\nremote_tsap = 0x0200\n[[items]]\ntag = \"t\"\naddress = \"MW0\"\n"
        ));
        assert_eq!(logo.tsaps(), (0x0100, 0x0200));
    }

    #[test]
    fn bad_items_are_refused_with_the_key() {
        let item = "[[items]]\ntag = \"t\"\n";
        let cases = [
            ("address = \"DB10.DBX2\"\n", "items[0].address"),
            (
                "address = \"DB10.DBW2\"\ntype = \"real\"\n",
                "items[0].type",
            ),
            (
                "address = \"DB10.DBD2\"\ntype = \"float\"\n",
                "items[0].type",
            ),
            (
                "address = \"DB10.DBW2\"\ngroup = \"nope\"\n",
                "items[0].group",
            ),
        ];
        for (extra, key) in cases {
            let c = parse(&format!("{BASE}{item}{extra}"));
            assert_eq!(c.validate().unwrap_err().0, key, "{extra}");
        }
        let twice = parse(&format!(
            "{BASE}{item}address = \"MW0\"\n{item}address = \"MW2\"\n"
        ));
        assert_eq!(twice.validate().unwrap_err().0, "items[1].tag");
        let half = parse(&format!(
            "{BASE}local_tsap = 256\n{item}address = \"MW0\"\n"
        ));
        assert_eq!(half.validate().unwrap_err().0, "remote_tsap");
        assert!(
            toml::from_str::<S7Config>(&format!("{BASE}{item}address = \"MW0\"\nscale = 2\n"))
                .is_err()
        );
    }
}
