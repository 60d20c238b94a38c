//! Which components this binary was built with (Cargo features, one per component, Vector's
//! model), and the config error for a component it was built without. A config that names
//! such a component is refused at start with the key and the feature to build with; the
//! config parses either way, so every other error is reported beside it.

use serde::{Deserialize, Deserializer};

/// The optional components, as (feature, built in).
pub const COMPONENTS: &[(&str, bool)] = &[
    ("modbus", cfg!(feature = "modbus")),
    ("s7", cfg!(feature = "s7")),
    ("enip", cfg!(feature = "enip")),
    ("opcua", cfg!(feature = "opcua")),
    ("opcua-simulator", cfg!(feature = "opcua-simulator")),
    ("kafka", cfg!(feature = "kafka")),
    ("postgres", cfg!(feature = "postgres")),
    ("parquet", cfg!(feature = "parquet")),
    ("mqtt-broker", cfg!(feature = "mqtt-broker")),
];

/// The features this binary was built with, comma-separated (for `ferrule --version`).
pub fn built_in() -> String {
    COMPONENTS
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The message for a component this binary was built without.
pub fn missing(what: &str, feature: &str) -> String {
    format!(
        "{what} needs the `{feature}` feature, and this ferrule binary was built without it \
         (built with: {}); build with `cargo build -p ferrule --features {feature}` or use the \
         default features",
        match built_in() {
            b if b.is_empty() => "no optional components".to_string(),
            b => b,
        }
    )
}

/// The config of a component this binary was built without: accepts whatever the table
/// holds, so the config parses and `validate` can name the missing feature.
#[derive(Clone, Debug, PartialEq)]
pub struct NotBuilt;

impl<'de> Deserialize<'de> for NotBuilt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(NotBuilt)
    }
}

impl NotBuilt {
    /// The validation error for `type = "<kind>"` built without `feature`.
    pub fn refuse(&self, kind: &str, feature: &str) -> Result<(), (String, String)> {
        Err((
            "type".to_string(),
            missing(&format!("type `{kind}`"), feature),
        ))
    }
}
