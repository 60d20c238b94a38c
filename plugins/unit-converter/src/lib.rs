//! # Unit converter
//!
//! Owns the **tag plane** and the **sample plane** (reads `VALUES`, writes `VALUES`): it
//! converts the values of every tag whose engineering unit belongs to a quantity with a
//! configured target unit (e.g. all pressures to `kPa`, all temperatures to `degC`).
//!
//! * Tag plane: the tag's unit is looked up (config `aliases` first, then the built-in
//!   units). An unknown unit rejects the tag, naming the unit. A unit whose quantity has no
//!   target keeps the tag unchanged. Otherwise the tag is accepted with the target unit and
//!   a linear conversion `value * scale + offset` is stored for its id (a dense `Vec`).
//!   Tags with an **empty unit** are kept unchanged (nothing is known to convert), and so are
//!   `text` and `boolean` tags whatever their unit says.
//! * Sample plane: every value of a tag with a non-identity conversion becomes
//!   `value * scale + offset` (NaN stays NaN). No allocation, no hashing per sample: one
//!   `Vec` index by tag id.
//!
//! Built-in units (names are case-sensitive; map other spellings with `aliases`):
//!
//! | quantity      | units                                     |
//! |---------------|-------------------------------------------|
//! | `pressure`    | `Pa`, `kPa`, `MPa`, `bar`, `mbar`, `psi`, `atm` |
//! | `temperature` | `degC`, `degF`, `K`                       |
//! | `flow`        | `l/min`, `l/s`, `m3/h`, `gal/min` (US gallon) |
//! | `length`      | `mm`, `cm`, `m`, `in`, `ft`               |
//! | `mass`        | `g`, `kg`, `t`, `lb`                      |
//! | `energy`      | `J`, `kJ`, `MJ`, `Wh`, `kWh`, `MWh`       |

use std::collections::BTreeMap;

use ferrule_sdk::prelude::*;
use serde::Deserialize;

/// A physical quantity the converter knows units of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quantity {
    Pressure,
    Temperature,
    Flow,
    Length,
    Mass,
    Energy,
}

impl Quantity {
    /// All quantities, in config-name order.
    pub const ALL: [Quantity; 6] = [
        Quantity::Pressure,
        Quantity::Temperature,
        Quantity::Flow,
        Quantity::Length,
        Quantity::Mass,
        Quantity::Energy,
    ];

    /// The name used in the config's `targets` table.
    pub fn name(self) -> &'static str {
        match self {
            Quantity::Pressure => "pressure",
            Quantity::Temperature => "temperature",
            Quantity::Flow => "flow",
            Quantity::Length => "length",
            Quantity::Mass => "mass",
            Quantity::Energy => "energy",
        }
    }

    /// Parses a config quantity name.
    pub fn from_name(name: &str) -> Option<Quantity> {
        Quantity::ALL.into_iter().find(|q| q.name() == name)
    }
}

/// A built-in unit: `base = (value + zero) * factor`, the base unit of each quantity being
/// Pa, K, m³/s, m, kg and J.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Unit {
    pub name: &'static str,
    pub quantity: Quantity,
    factor: f64,
    zero: f64,
}

const fn unit(name: &'static str, quantity: Quantity, factor: f64) -> Unit {
    Unit {
        name,
        quantity,
        factor,
        zero: 0.0,
    }
}

/// Pound-force per square inch in Pa: 0.45359237 kg · 9.80665 m/s² / (0.0254 m)².
const PSI: f64 = 6_894.757_293_168_361;
/// US gallon in m³.
const US_GALLON: f64 = 3.785_411_784e-3;

/// Every unit the converter knows.
pub const UNITS: &[Unit] = &[
    unit("Pa", Quantity::Pressure, 1.0),
    unit("kPa", Quantity::Pressure, 1e3),
    unit("MPa", Quantity::Pressure, 1e6),
    unit("bar", Quantity::Pressure, 1e5),
    unit("mbar", Quantity::Pressure, 1e2),
    unit("psi", Quantity::Pressure, PSI),
    unit("atm", Quantity::Pressure, 101_325.0),
    Unit {
        name: "degC",
        quantity: Quantity::Temperature,
        factor: 1.0,
        zero: 273.15,
    },
    Unit {
        name: "degF",
        quantity: Quantity::Temperature,
        factor: 5.0 / 9.0,
        zero: 459.67,
    },
    unit("K", Quantity::Temperature, 1.0),
    unit("l/min", Quantity::Flow, 1e-3 / 60.0),
    unit("l/s", Quantity::Flow, 1e-3),
    unit("m3/h", Quantity::Flow, 1.0 / 3600.0),
    unit("gal/min", Quantity::Flow, US_GALLON / 60.0),
    unit("mm", Quantity::Length, 1e-3),
    unit("cm", Quantity::Length, 1e-2),
    unit("m", Quantity::Length, 1.0),
    unit("in", Quantity::Length, 0.0254),
    unit("ft", Quantity::Length, 0.3048),
    unit("g", Quantity::Mass, 1e-3),
    unit("kg", Quantity::Mass, 1.0),
    unit("t", Quantity::Mass, 1e3),
    unit("lb", Quantity::Mass, 0.453_592_37),
    unit("J", Quantity::Energy, 1.0),
    unit("kJ", Quantity::Energy, 1e3),
    unit("MJ", Quantity::Energy, 1e6),
    unit("Wh", Quantity::Energy, 3.6e3),
    unit("kWh", Quantity::Energy, 3.6e6),
    unit("MWh", Quantity::Energy, 3.6e9),
];

/// The built-in unit called exactly `name`.
pub fn builtin_unit(name: &str) -> Option<&'static Unit> {
    UNITS.iter().find(|u| u.name == name)
}

/// A linear conversion `value * scale + offset`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conversion {
    pub scale: f64,
    pub offset: f64,
}

impl Conversion {
    pub const IDENTITY: Conversion = Conversion {
        scale: 1.0,
        offset: 0.0,
    };

    /// From `from` to `to`, or `None` when they measure different quantities.
    pub fn between(from: &Unit, to: &Unit) -> Option<Conversion> {
        if from.quantity != to.quantity {
            return None;
        }
        if from.name == to.name {
            return Some(Conversion::IDENTITY);
        }
        // to = (from + z_from) * f_from / f_to - z_to
        let scale = from.factor / to.factor;
        Some(Conversion {
            scale,
            offset: from.zero * scale - to.zero,
        })
    }

    pub fn is_identity(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }

    pub fn apply(&self, value: f64) -> f64 {
        value * self.scale + self.offset
    }
}

/// Configuration of the unit converter (the stage's `config` table).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConverterConfig {
    /// Quantity name → target unit, e.g. `pressure = "kPa"`. Quantities: `pressure`,
    /// `temperature`, `flow`, `length`, `mass`, `energy`. A quantity without a target is
    /// left as it comes. The target may be a built-in unit or an alias.
    #[serde(default = "default_targets")]
    pub targets: BTreeMap<String, String>,
    /// Other spellings of built-in units as sources write them, e.g. `"°C" = "degC"`,
    /// `"PSI" = "psi"`. Checked before the built-in names; may not redefine a built-in name.
    #[serde(default = "default_aliases")]
    pub aliases: BTreeMap<String, String>,
}

fn default_targets() -> BTreeMap<String, String> {
    BTreeMap::new()
}
fn default_aliases() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Per-tag conversion state, indexed by tag id.
#[derive(Clone, Copy, Debug)]
struct Slot {
    conversion: Conversion,
    active: bool,
}

const INACTIVE: Slot = Slot {
    conversion: Conversion::IDENTITY,
    active: false,
};

/// The unit converter plugin.
#[derive(Debug)]
pub struct UnitConverter {
    aliases: BTreeMap<String, &'static Unit>,
    /// Target unit per quantity, indexed by `Quantity as usize`.
    targets: [Option<&'static Unit>; 6],
    slots: Vec<Slot>,
}

impl UnitConverter {
    /// Builds the converter from its typed config.
    pub fn from_config(config: ConverterConfig) -> Result<Self, String> {
        let mut aliases = BTreeMap::new();
        for (alias, name) in config.aliases {
            if builtin_unit(&alias).is_some() {
                return Err(format!(
                    "alias '{alias}' would redefine the built-in unit '{alias}'"
                ));
            }
            let unit = builtin_unit(&name).ok_or_else(|| {
                format!(
                    "alias '{alias}' maps to '{name}', which is not a built-in unit ({})",
                    unit_list()
                )
            })?;
            aliases.insert(alias, unit);
        }
        let mut targets = [None; 6];
        for (quantity, name) in config.targets {
            let q = Quantity::from_name(&quantity).ok_or_else(|| {
                format!(
                    "unknown quantity '{quantity}' in `targets` (known: {})",
                    Quantity::ALL.map(Quantity::name).join(", ")
                )
            })?;
            let unit = aliases
                .get(name.as_str())
                .copied()
                .or_else(|| builtin_unit(&name))
                .ok_or_else(|| {
                    format!("target unit '{name}' for {quantity} is not a known unit")
                })?;
            if unit.quantity != q {
                return Err(format!(
                    "target unit '{name}' for {quantity} is a unit of {}",
                    unit.quantity.name()
                ));
            }
            targets[q as usize] = Some(unit);
        }
        Ok(UnitConverter {
            aliases,
            targets,
            slots: Vec::new(),
        })
    }

    fn resolve(&self, unit: &str) -> Option<&'static Unit> {
        self.aliases
            .get(unit)
            .copied()
            .or_else(|| builtin_unit(unit))
    }

    fn set_slot(&mut self, id: u32, slot: Slot) {
        let i = id as usize;
        if i >= self.slots.len() {
            if !slot.active {
                return;
            }
            self.slots.resize(i + 1, INACTIVE);
        }
        self.slots[i] = slot;
    }

    /// The conversion applied to samples of tag `id`, if any.
    pub fn conversion(&self, id: u32) -> Option<Conversion> {
        self.slots
            .get(id as usize)
            .filter(|s| s.active)
            .map(|s| s.conversion)
    }
}

fn unit_list() -> String {
    UNITS.iter().map(|u| u.name).collect::<Vec<_>>().join(", ")
}

impl Plugin for UnitConverter {
    fn info() -> PluginInfo {
        PluginInfo::new("unit-converter", env!("CARGO_PKG_VERSION"))
            .description(
                "Converts tag values to a target unit per quantity (pressure, temperature, \
                 flow, length, mass, energy); rejects tags with unknown units.",
            )
            .sample_plane(Columns::VALUES, Columns::VALUES)
            .command_plane()
            .config_key(
                "targets",
                "Map quantity (pressure, temperature, flow, length, mass, energy) -> target unit.",
                false,
            )
            .config_key(
                "aliases",
                "Map unit spelling -> built-in unit, e.g. \"°C\" = \"degC\".",
                false,
            )
    }

    fn init(config: Config) -> Result<Self, String> {
        UnitConverter::from_config(config.parse()?)
    }

    fn on_tag(&mut self, tag: &TagInfo) -> TagDecision {
        // A later answer for the same id replaces the earlier one.
        self.set_slot(tag.id, INACTIVE);
        let unit = tag.unit.trim();
        if unit.is_empty() || matches!(tag.data_type, DataType::Text | DataType::Boolean) {
            return TagDecision::keep();
        }
        let Some(from) = self.resolve(unit) else {
            return TagDecision::reject(format!(
                "unknown unit '{unit}' on tag '{}': not a built-in unit ({}) and no alias maps it",
                tag.path,
                unit_list()
            ));
        };
        let Some(to) = self.targets[from.quantity as usize] else {
            return TagDecision::keep();
        };
        let conversion = Conversion::between(from, to).expect("target has the same quantity");
        self.set_slot(
            tag.id,
            Slot {
                conversion,
                active: !conversion.is_identity(),
            },
        );
        TagDecision::keep().with_unit(to.name)
    }

    fn on_batch(&mut self, batch: &mut Batch) -> Result<(), String> {
        let slots = self.slots.as_slice();
        if slots.is_empty() {
            return Ok(());
        }
        let (tags, values) = batch.tags_and_values_mut();
        for (&tag, value) in tags.iter().zip(values.iter_mut()) {
            if let Some(slot) = slots.get(tag as usize) {
                if slot.active {
                    *value = slot.conversion.apply(*value);
                }
            }
        }
        Ok(())
    }

    /// Command plane: a setpoint in the target unit goes back to the tag's own unit (the
    /// inverse of the sample plane's conversion); text and unconverted tags pass unchanged.
    fn on_command(&mut self, cmd: &Command) -> CommandDecision {
        match self.conversion(cmd.tag_id) {
            Some(c) if cmd.extra.is_none() => {
                CommandDecision::allow_value((cmd.value - c.offset) / c.scale)
            }
            _ => CommandDecision::allow(),
        }
    }
}

export_plugin!(UnitConverter);

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_sdk::testing::Harness;
    use serde_json::json;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    fn convert(from: &str, to: &str, value: f64) -> f64 {
        let c =
            Conversion::between(builtin_unit(from).unwrap(), builtin_unit(to).unwrap()).unwrap();
        c.apply(value)
    }

    fn harness(config: serde_json::Value) -> Harness<UnitConverter> {
        Harness::new(config).expect("config accepted")
    }

    /// Runs one sample per `(tag, value)` through the plugin; returns the values.
    fn run(h: &mut Harness<UnitConverter>, rows: &[(u32, f64)]) -> Vec<f64> {
        let rows: Vec<_> = rows
            .iter()
            .map(|&(t, v)| (t, v, Quality::GOOD, 1_000))
            .collect();
        let out = h.on_batch(Batch::from_rows(&rows)).unwrap();
        assert!(out.rejected.is_empty());
        out.values.expect("values written")
    }

    fn command(tag_id: u32, path: &str, value: f64) -> Command {
        Command {
            id: "c".into(),
            tag_id,
            path: path.into(),
            value,
            extra: None,
            expected_current: None,
            requester: "test".into(),
            deadline_ns: 0,
            dry_run: false,
        }
    }

    #[test]
    fn a_setpoint_goes_back_to_the_tags_own_unit_on_the_command_plane() {
        let mut h = harness(json!({ "targets": { "pressure": "kPa", "temperature": "degC" } }));
        h.on_tag(&TagInfo::new(0, "p").unit("bar"));
        h.on_tag(&TagInfo::new(1, "t").unit("degF"));
        h.on_tag(&TagInfo::new(2, "n").unit(""));
        let back = |h: &mut Harness<UnitConverter>, id, v| match h.on_command(&command(id, "p", v))
        {
            Ok(CommandDecision::Allow(v)) => v,
            other => panic!("{other:?}"),
        };
        assert!(close(back(&mut h, 0, 250.0).unwrap(), 2.5));
        assert!(close(back(&mut h, 1, 100.0).unwrap(), 212.0));
        assert_eq!(back(&mut h, 2, 7.0), None);
    }

    #[test]
    fn three_bar_is_three_hundred_kpa() {
        let mut h = harness(json!({ "targets": { "pressure": "kPa" } }));
        let d = h.on_tag(&TagInfo::new(0, "p").unit("bar"));
        assert_eq!(d.accepted().unwrap().unit.as_deref(), Some("kPa"));
        let out = run(&mut h, &[(0, 3.0)]);
        assert!(close(out[0], 300.0), "{}", out[0]);
    }

    #[test]
    fn temperatures_with_offsets() {
        let mut h = harness(json!({ "targets": { "temperature": "degC" } }));
        h.on_tag(&TagInfo::new(0, "a").unit("degF"));
        h.on_tag(&TagInfo::new(1, "b").unit("K"));
        let out = run(
            &mut h,
            &[(0, 212.0), (0, 32.0), (0, -40.0), (1, 273.15), (1, 0.0)],
        );
        for (got, want) in out.iter().zip([100.0, 0.0, -40.0, 0.0, -273.15]) {
            assert!(close(*got, want), "{got} != {want}");
        }
        assert!(close(convert("degC", "degF", 100.0), 212.0));
        assert!(close(convert("degC", "K", 0.0), 273.15));
        assert!(close(convert("K", "degF", 0.0), -459.67));
    }

    #[test]
    fn known_factors() {
        let cases = [
            ("psi", "bar", 14.503_773_773_022, 1.0),
            ("atm", "kPa", 1.0, 101.325),
            ("MPa", "bar", 1.0, 10.0),
            ("mbar", "Pa", 1.0, 100.0),
            ("l/min", "m3/h", 1000.0, 60.0),
            ("l/s", "l/min", 1.0, 60.0),
            ("gal/min", "l/min", 1.0, 3.785_411_784),
            ("in", "mm", 1.0, 25.4),
            ("ft", "m", 1.0, 0.3048),
            ("cm", "in", 2.54, 1.0),
            ("lb", "kg", 1.0, 0.453_592_37),
            ("t", "g", 1.0, 1e6),
            ("kWh", "MJ", 1.0, 3.6),
            ("MWh", "kWh", 1.0, 1000.0),
            ("Wh", "kJ", 1.0, 3.6),
            ("J", "kJ", 500.0, 0.5),
        ];
        for (from, to, v, want) in cases {
            let got = convert(from, to, v);
            assert!(close(got, want), "{v} {from} = {got} {to}, want {want}");
        }
    }

    #[test]
    fn every_unit_round_trips_within_its_quantity() {
        for a in UNITS {
            for b in UNITS {
                let c = Conversion::between(a, b);
                if a.quantity != b.quantity {
                    assert!(c.is_none());
                    continue;
                }
                let back = Conversion::between(b, a).unwrap();
                for v in [-12.5, 0.0, 1.0, 987.654] {
                    let r = back.apply(c.unwrap().apply(v));
                    assert!(
                        (r - v).abs() < 1e-9 * v.abs().max(1.0),
                        "{v} {} -> {} -> {r}",
                        a.name,
                        b.name
                    );
                }
                if a.name == b.name {
                    assert!(c.unwrap().is_identity());
                }
            }
        }
    }

    #[test]
    fn unknown_unit_is_rejected_naming_it() {
        let mut h = harness(json!({ "targets": { "pressure": "kPa" } }));
        let d = h.on_tag(&TagInfo::new(0, "plant/s/a/l/d/len").unit("furlong"));
        match d {
            TagDecision::Reject(r) => {
                assert!(r.contains("unknown unit 'furlong'"), "{r}");
                assert!(r.contains("plant/s/a/l/d/len"), "{r}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_unit_and_untargeted_quantity_are_kept_unchanged() {
        let mut h = harness(json!({ "targets": { "pressure": "kPa" } }));
        assert_eq!(h.on_tag(&TagInfo::new(0, "a")), TagDecision::keep());
        assert_eq!(
            h.on_tag(&TagInfo::new(1, "b").unit("degC")),
            TagDecision::keep()
        );
        assert_eq!(
            h.on_tag(&TagInfo::new(2, "c").unit("bar")),
            TagDecision::keep().with_unit("kPa")
        );
        assert_eq!(
            run(&mut h, &[(0, 5.0), (1, 20.0), (2, 1.0)]),
            vec![5.0, 20.0, 100.0]
        );
        assert_eq!(h.plugin_mut().conversion(0), None);
        assert_eq!(h.plugin_mut().conversion(1), None);
    }

    #[test]
    fn text_and_boolean_tags_are_not_converted() {
        let mut h = harness(json!({ "targets": { "pressure": "kPa" } }));
        let t = TagInfo::new(0, "a").unit("bar").data_type(DataType::Text);
        assert_eq!(h.on_tag(&t), TagDecision::keep());
        let b = TagInfo::new(1, "b")
            .unit("whatever")
            .data_type(DataType::Boolean);
        assert_eq!(h.on_tag(&b), TagDecision::keep());
    }

    #[test]
    fn aliases_resolve_tag_units_and_targets() {
        let mut h = harness(json!({
            "targets": { "temperature": "°F", "pressure": "bar" },
            "aliases": { "°C": "degC", "°F": "degF", "PSI": "psi" }
        }));
        let d = h.on_tag(&TagInfo::new(0, "t").unit("°C"));
        assert_eq!(d.accepted().unwrap().unit.as_deref(), Some("degF"));
        let d = h.on_tag(&TagInfo::new(1, "p").unit(" PSI "));
        assert_eq!(d.accepted().unwrap().unit.as_deref(), Some("bar"));
        // Case matters: "Psi" is neither built in nor aliased.
        assert!(h.on_tag(&TagInfo::new(2, "q").unit("Psi")).is_reject());
        let out = run(&mut h, &[(0, 100.0), (1, 14.503_773_773_022)]);
        assert!(close(out[0], 212.0), "{}", out[0]);
        assert!(close(out[1], 1.0), "{}", out[1]);
    }

    #[test]
    fn identity_is_skipped_and_nan_stays_nan() {
        let mut h = harness(json!({ "targets": { "pressure": "kPa", "length": "mm" } }));
        assert_eq!(
            h.on_tag(&TagInfo::new(0, "a").unit("kPa")),
            TagDecision::keep().with_unit("kPa")
        );
        h.on_tag(&TagInfo::new(1, "b").unit("m"));
        assert_eq!(h.plugin_mut().conversion(0), None);
        let out = run(&mut h, &[(0, -0.0), (0, f64::NAN), (1, f64::NAN), (1, 1.5)]);
        assert!(
            out[0] == 0.0 && out[0].is_sign_negative(),
            "identity leaves -0.0 untouched"
        );
        assert!(out[1].is_nan());
        assert!(out[2].is_nan());
        assert!(close(out[3], 1500.0));
    }

    #[test]
    fn unknown_tag_ids_pass_unchanged() {
        let mut h = harness(json!({ "targets": { "pressure": "kPa" } }));
        h.on_tag(&TagInfo::new(3, "a").unit("bar"));
        assert_eq!(
            run(&mut h, &[(0, 1.0), (3, 1.0), (99, 1.0)]),
            vec![1.0, 100.0, 1.0]
        );
    }

    #[test]
    fn a_new_tag_decision_replaces_the_old_conversion() {
        let mut h = harness(json!({ "targets": { "pressure": "kPa" } }));
        h.on_tag(&TagInfo::new(0, "a").unit("bar"));
        assert_eq!(run(&mut h, &[(0, 1.0)]), vec![100.0]);
        h.on_tag(&TagInfo::new(0, "a").unit("MPa"));
        assert_eq!(run(&mut h, &[(0, 1.0)]), vec![1000.0]);
        h.on_tag(&TagInfo::new(0, "a"));
        assert_eq!(run(&mut h, &[(0, 1.0)]), vec![1.0]);
        assert!(h.on_tag(&TagInfo::new(0, "a").unit("??")).is_reject());
        assert_eq!(h.plugin_mut().conversion(0), None);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let cases = [
            (
                json!({ "targets": { "speed": "m/s" } }),
                "unknown quantity 'speed'",
            ),
            (
                json!({ "targets": { "pressure": "hPa" } }),
                "'hPa' for pressure is not a known unit",
            ),
            (
                json!({ "targets": { "pressure": "degC" } }),
                "is a unit of temperature",
            ),
            (
                json!({ "aliases": { "C": "celsius" } }),
                "not a built-in unit",
            ),
            (
                json!({ "aliases": { "bar": "kPa" } }),
                "redefine the built-in unit 'bar'",
            ),
            (json!({ "target": {} }), "unknown field"),
            (json!({ "targets": { "pressure": 3 } }), "invalid config"),
        ];
        for (config, expected) in cases {
            match Harness::<UnitConverter>::new(config.clone()) {
                Ok(_) => panic!("{config} accepted"),
                Err(e) => assert!(e.contains(expected), "{config}: {e}"),
            }
        }
        // No targets at all is valid: the stage then only rejects unknown units.
        assert!(Harness::<UnitConverter>::new(json!({})).is_ok());
    }

    #[test]
    fn info_declares_values_in_and_out() {
        let h = harness(json!({}));
        let info = h.info();
        assert_eq!(info.name, "unit-converter");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert!(info.planes.contains(Planes::TAG | Planes::SAMPLE));
        assert_eq!(
            (info.reads, info.writes),
            (Columns::VALUES, Columns::VALUES)
        );
        assert!(info.reasons.is_empty());
    }

    #[test]
    fn readme_example_works() {
        let mut h = harness(ferrule_sdk::testing::readme_stage_config(include_str!(
            "../README.md"
        )));
        let d = h.on_tag(&TagInfo::new(0, "t").unit("°F"));
        assert_eq!(d.accepted().unwrap().unit.as_deref(), Some("degC"));
        let d = h.on_tag(&TagInfo::new(1, "f").unit("m³/h"));
        assert_eq!(d.accepted().unwrap().unit.as_deref(), Some("m3/h"));
        let out = run(&mut h, &[(0, 212.0)]);
        assert!(close(out[0], 100.0));
    }
}
