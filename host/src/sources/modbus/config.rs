//! Config of the Modbus TCP source (`type = "modbus"`): devices, poll groups, register maps
//! and the optional in-process simulator server.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use serde::Deserialize;

/// Polls Modbus TCP devices. Each device has its own connection and task, so a slow or dead
/// device never stalls the others.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// The devices to poll.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Serve the simulated plant over a real Modbus TCP server in this process (on loopback),
    /// and, when `devices` is empty, poll it with a generated register map.
    #[serde(default)]
    pub simulator: Option<SimulatorServerConfig>,
}

/// `[[sources.<name>.devices]]`: one Modbus TCP device (or one unit behind a gateway).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device name, used in logs and in each tag's `modbus.device` metadata.
    pub name: String,
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Modbus unit (slave) id.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Poll interval of registers without a `group`, in ms.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Named poll groups and their intervals in ms, e.g. `{ critical = 100, slow = 5000 }`.
    #[serde(default)]
    pub poll_groups: BTreeMap<String, u64>,
    /// Time allowed for connecting and for each request, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// First wait before reconnecting, in ms; doubles per failed attempt up to
    /// `reconnect_max_ms`, each wait with ±20 % jitter.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Most registers in one read (the protocol allows 125).
    #[serde(default = "default_max_registers")]
    pub max_registers_per_read: u16,
    /// Most coils or discrete inputs in one read (the protocol allows 2000).
    #[serde(default = "default_max_bits")]
    pub max_bits_per_read: u16,
    /// Unmapped addresses a read may span to join two mapped ranges (0: only adjacent
    /// addresses are joined; devices often refuse reads over gaps in their map).
    #[serde(default)]
    pub max_gap: u16,
    /// The register map.
    #[serde(default)]
    pub registers: Vec<RegisterConfig>,
}

/// The four Modbus data tables.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Table {
    /// Function 3, read/write registers.
    Holding,
    /// Function 4, read-only registers.
    Input,
    /// Function 1, read/write bits.
    Coil,
    /// Function 2, read-only bits.
    DiscreteInput,
}

impl Table {
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete-input",
        }
    }
}

/// How a value is stored in registers.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// One bit: a coil or discrete input, or bit `bit` of a register.
    Bool,
    /// `length` registers of text, two characters each, trailing NULs and spaces trimmed.
    String,
}

impl ValueType {
    /// Registers the value takes (`length` for strings).
    pub fn registers(self, length: u16) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 | ValueType::Bool => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 4,
            ValueType::String => length,
        }
    }
}

/// Byte order of a multi-byte value, named by where bytes A (most significant) to D land:
/// `ABCD` big-endian (the Modbus default), `CDAB` word-swapped, `BADC` byte-swapped,
/// `DCBA` little-endian. For 64-bit values the same rule applies to all four words.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
pub enum WordOrder {
    #[default]
    ABCD,
    CDAB,
    BADC,
    DCBA,
}

impl WordOrder {
    /// Registers come least significant first.
    pub fn words_swapped(self) -> bool {
        matches!(self, WordOrder::CDAB | WordOrder::DCBA)
    }
    /// Each register holds its low byte first.
    pub fn bytes_swapped(self) -> bool {
        matches!(self, WordOrder::BADC | WordOrder::DCBA)
    }
}

/// `[[sources.<name>.devices.registers]]`: one tag.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// The vendor tag name the normalizer sees (unique within the source).
    pub tag: String,
    #[serde(default = "default_table")]
    pub table: Table,
    /// Protocol address (0-based; register 40001 is holding address 0).
    pub address: u16,
    /// Value type (default `u16` for registers, `bool` for coils and discrete inputs).
    #[serde(default, rename = "type")]
    pub value_type: Option<ValueType>,
    #[serde(default)]
    pub order: WordOrder,
    /// Bit of the register (0 = least significant) for `type = "bool"` on registers.
    #[serde(default)]
    pub bit: Option<u8>,
    /// Registers of a `string`.
    #[serde(default)]
    pub length: Option<u16>,
    /// value = raw × scale + offset.
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit of the scaled value.
    #[serde(default)]
    pub unit: String,
    /// Poll group (from the device's `poll_groups`); none: the device's `interval_ms`.
    #[serde(default)]
    pub group: Option<String>,
    /// Extra metadata for the tag (e.g. site, line, device for the normalizer).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl RegisterConfig {
    pub fn value_type(&self) -> ValueType {
        self.value_type.unwrap_or(if self.table.is_bits() {
            ValueType::Bool
        } else {
            ValueType::U16
        })
    }

    /// Addresses (registers or bits) the tag takes.
    pub fn span(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.value_type().registers(self.length.unwrap_or(0))
        }
    }
}

/// `[sources.<name>.simulator]`: the simulated plant served by an in-process Modbus TCP
/// server. Tag `first_tag + k` of a `plant_tags` plant (named and valued as the `simulator`
/// source names and values it) is an `f32` (ABCD) at holding and input registers `2k`, `2k+1`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimulatorServerConfig {
    /// Address to serve on; loopback only.
    pub listen: SocketAddr,
    /// Size of the simulated plant the tags are taken from.
    #[serde(default = "default_plant_tags")]
    pub plant_tags: u32,
    /// First plant tag served.
    #[serde(default)]
    pub first_tag: u32,
    /// Tags served.
    #[serde(default = "default_sim_tags")]
    pub tags: u32,
    /// The signals advance one simulator scan per interval, in ms.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Poll interval of the generated device (when `devices` is empty), in ms.
    #[serde(default = "default_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_port() -> u16 {
    502
}
fn default_unit_id() -> u8 {
    1
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_max_registers() -> u16 {
    125
}
fn default_max_bits() -> u16 {
    2000
}
fn default_table() -> Table {
    Table::Holding
}
fn default_scale() -> f64 {
    1.0
}
fn default_plant_tags() -> u32 {
    1000
}
fn default_sim_tags() -> u32 {
    1000
}

impl ModbusConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: String, m: String| Err((k, m));
        if self.devices.is_empty() && self.simulator.is_none() {
            return err("devices".into(), "no device configured".into());
        }
        if let Some(s) = &self.simulator {
            if !s.listen.ip().is_loopback() {
                return err(
                    "simulator.listen".into(),
                    format!("{} is not a loopback address", s.listen),
                );
            }
            if s.tags == 0 || s.tags > 32_000 {
                return err(
                    "simulator.tags".into(),
                    "must be between 1 and 32000 (two registers each)".into(),
                );
            }
            if s.first_tag as u64 + s.tags as u64 > s.plant_tags as u64 {
                return err(
                    "simulator.tags".into(),
                    "first_tag + tags must not exceed plant_tags".into(),
                );
            }
            if s.interval_ms == 0 || s.poll_interval_ms == 0 {
                return err(
                    "simulator.interval_ms".into(),
                    "intervals must be at least 1 ms".into(),
                );
            }
        }
        let mut names = HashSet::new();
        let mut tags = HashSet::new();
        for (d, dev) in self.devices.iter().enumerate() {
            let key = |k: &str| format!("devices[{d}].{k}");
            if dev.name.trim().is_empty() {
                return err(key("name"), "must not be empty".into());
            }
            if !names.insert(dev.name.as_str()) {
                return err(key("name"), format!("device `{}` twice", dev.name));
            }
            if dev.host.trim().is_empty() {
                return err(key("host"), "must not be empty".into());
            }
            if dev.interval_ms == 0 {
                return err(key("interval_ms"), "must be at least 1".into());
            }
            for (g, ms) in &dev.poll_groups {
                if *ms == 0 {
                    return err(
                        key(&format!("poll_groups.{g}")),
                        "must be at least 1".into(),
                    );
                }
            }
            if dev.timeout_ms == 0 {
                return err(key("timeout_ms"), "must be at least 1".into());
            }
            if dev.reconnect_min_ms == 0 || dev.reconnect_max_ms < dev.reconnect_min_ms {
                return err(
                    key("reconnect_min_ms"),
                    "must be at least 1 and at most reconnect_max_ms".into(),
                );
            }
            if !(1..=125).contains(&dev.max_registers_per_read) {
                return err(key("max_registers_per_read"), "must be 1 to 125".into());
            }
            if !(1..=2000).contains(&dev.max_bits_per_read) {
                return err(key("max_bits_per_read"), "must be 1 to 2000".into());
            }
            if dev.registers.is_empty() {
                return err(key("registers"), "no register mapped".into());
            }
            for (r, reg) in dev.registers.iter().enumerate() {
                let key = |k: &str| format!("devices[{d}].registers[{r}].{k}");
                if reg.tag.trim().is_empty() {
                    return err(key("tag"), "must not be empty".into());
                }
                if !tags.insert(reg.tag.as_str()) {
                    return err(key("tag"), format!("tag `{}` mapped twice", reg.tag));
                }
                let vt = reg.value_type();
                if reg.table.is_bits() && vt != ValueType::Bool {
                    return err(
                        key("type"),
                        format!("{} tables hold bits: type must be bool", reg.table.as_str()),
                    );
                }
                if !reg.table.is_bits() && vt == ValueType::Bool {
                    match reg.bit {
                        Some(b) if b < 16 => {}
                        _ => {
                            return err(
                                key("bit"),
                                "bool from a register needs `bit` (0 to 15)".into(),
                            )
                        }
                    }
                } else if reg.bit.is_some() {
                    return err(key("bit"), "only for type bool on registers".into());
                }
                match (vt, reg.length) {
                    (ValueType::String, Some(n)) if (1..=125).contains(&n) => {}
                    (ValueType::String, _) => {
                        return err(
                            key("length"),
                            "a string needs `length` in registers (1 to 125)".into(),
                        )
                    }
                    (_, Some(_)) => return err(key("length"), "only for type string".into()),
                    _ => {}
                }
                if reg.span() > dev.max_registers_per_read && !reg.table.is_bits() {
                    return err(key("length"), "longer than max_registers_per_read".into());
                }
                if reg.address as u32 + reg.span() as u32 > 65_536 {
                    return err(key("address"), "runs past address 65535".into());
                }
                if !reg.scale.is_finite() || reg.scale == 0.0 || !reg.offset.is_finite() {
                    return err(
                        key("scale"),
                        "scale must be finite and not 0, offset finite".into(),
                    );
                }
                if let Some(g) = &reg.group {
                    if !dev.poll_groups.contains_key(g) {
                        return err(
                            key("group"),
                            format!("no poll group `{g}` in the device's poll_groups"),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ModbusConfig {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_device_with_groups_parses_and_validates() {
        let c = parse(
            r#"
[[devices]]
name = "press1"
host = "127.0.0.1"
port = 5020
poll_groups = { critical = 100 }
[[devices.registers]]
tag = "Line1.Press1.Pressure"
address = 10
type = "f32"
order = "CDAB"
unit = "bar"
group = "critical"
[[devices.registers]]
tag = "Line1.Press1.Running"
table = "coil"
address = 3
"#,
        );
        assert_eq!(c.validate(), Ok(()));
        let r = &c.devices[0].registers;
        assert_eq!(r[0].span(), 2);
        assert_eq!(r[0].order, WordOrder::CDAB);
        assert_eq!(r[1].value_type(), ValueType::Bool);
    }

    #[test]
    fn bad_maps_are_refused_with_the_key() {
        let base = "[[devices]]\nname = \"d\"\nhost = \"h\"\n[[devices.registers]]\ntag = \"t\"\naddress = 0\n";
        let cases = [
            ("type = \"bool\"\n", "devices[0].registers[0].bit"),
            ("type = \"string\"\n", "devices[0].registers[0].length"),
            ("group = \"nope\"\n", "devices[0].registers[0].group"),
            ("scale = 0.0\n", "devices[0].registers[0].scale"),
            (
                "table = \"coil\"\ntype = \"f32\"\n",
                "devices[0].registers[0].type",
            ),
        ];
        for (extra, key) in cases {
            let c = parse(&format!("{base}{extra}"));
            assert_eq!(c.validate().unwrap_err().0, key, "{extra}");
        }
        assert!(toml::from_str::<ModbusConfig>(&format!("{base}order = \"ACBD\"\n")).is_err());
    }
}
