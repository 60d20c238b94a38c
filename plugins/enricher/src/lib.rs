//! # Enricher
//!
//! Owns the **tag plane only**: it adds asset data from the host's reference data to each
//! tag's metadata. For every tag it looks up a key derived from the tag's (normalised) path
//! in a host reference table (`ferrule_sdk::host::lookup(table, key)`) and adds every
//! key/value of the row found with `enrich`, optionally under a `prefix`.
//!
//! * `key = "device"` (default): the key is the first five segments of the path,
//!   `plant/<site>/<area>/<line>/<device>`, so one asset row covers every metric of a
//!   device. A path with five segments or fewer is used whole.
//! * `key = "path"`: the key is the whole path.
//!
//! A tag without a row is kept unchanged and counted in the plugin counter `missing`, or
//! rejected when `required = true`. It never sees a sample: it declares no sample plane.

use ferrule_sdk::prelude::*;
use serde::Deserialize;

/// How the lookup key is made from the tag path.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    /// The first five segments: `plant/<site>/<area>/<line>/<device>`.
    #[default]
    Device,
    /// The whole path.
    Path,
}

/// Configuration of the enricher (the stage's `config` table).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnricherConfig {
    /// Host reference-data table to look tags up in.
    #[serde(default = "default_table")]
    pub table: String,
    /// `"device"` (default: the path's first five segments) or `"path"` (the whole path).
    #[serde(default = "default_key")]
    pub key: KeyMode,
    /// `false` (default): a tag without a row is kept unchanged and counted as `missing`;
    /// `true`: it is rejected.
    #[serde(default = "default_required")]
    pub required: bool,
    /// Prepended to every added metadata key (e.g. `"asset."`); none by default.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

impl Default for EnricherConfig {
    fn default() -> Self {
        EnricherConfig {
            table: default_table(),
            key: default_key(),
            required: default_required(),
            prefix: default_prefix(),
        }
    }
}

fn default_table() -> String {
    "assets".to_string()
}
fn default_key() -> KeyMode {
    KeyMode::Device
}
fn default_required() -> bool {
    false
}
fn default_prefix() -> String {
    String::new()
}

/// Number of path segments that name a device.
pub const DEVICE_SEGMENTS: usize = 5;

/// The lookup key for `path` under `mode`.
pub fn lookup_key(path: &str, mode: KeyMode) -> &str {
    match mode {
        KeyMode::Path => path,
        KeyMode::Device => match path.match_indices('/').nth(DEVICE_SEGMENTS - 1) {
            Some((at, _)) => &path[..at],
            None => path,
        },
    }
}

/// The enricher plugin.
#[derive(Debug)]
pub struct Enricher {
    config: EnricherConfig,
}

impl Enricher {
    /// Builds the enricher from its typed config.
    pub fn from_config(config: EnricherConfig) -> Result<Self, String> {
        if config.table.is_empty() {
            return Err("`table` is empty".to_string());
        }
        Ok(Enricher { config })
    }
}

impl Plugin for Enricher {
    fn info() -> PluginInfo {
        PluginInfo::new("enricher", env!("CARGO_PKG_VERSION"))
            .description(
                "Adds asset data from host reference data (by device or by path) to tag \
                 metadata. Tag plane only.",
            )
            .config_key("table", "Reference-data table (default \"assets\").", false)
            .config_key(
                "key",
                "\"device\" (default: first 5 path segments) or \"path\" (whole path).",
                false,
            )
            .config_key(
                "required",
                "Reject tags without a row (default false: keep them, count as `missing`).",
                false,
            )
            .config_key(
                "prefix",
                "Prefix for the added metadata keys (default none).",
                false,
            )
    }

    fn init(config: Config) -> Result<Self, String> {
        Enricher::from_config(config.parse()?)
    }

    fn on_tag(&mut self, tag: &TagInfo) -> TagDecision {
        let key = lookup_key(&tag.path, self.config.key);
        let Some(row) = host::lookup(&self.config.table, key) else {
            host::counter_add("missing", 1);
            if self.config.required {
                return TagDecision::reject(format!(
                    "no row for key '{key}' in reference table '{}' (tag '{}')",
                    self.config.table, tag.path
                ));
            }
            return TagDecision::keep();
        };
        let mut decision = TagDecision::keep();
        for (k, v) in row {
            decision = if self.config.prefix.is_empty() {
                decision.enrich(k, v)
            } else {
                decision.enrich(format!("{}{k}", self.config.prefix), v)
            };
        }
        decision
    }
}

export_plugin!(Enricher);

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_sdk::testing::{Harness, ReferenceData};
    use serde_json::json;

    const PRESSURE: &str = "plant/site1/area2/line3/press4/pressure";

    fn assets() -> ReferenceData {
        ReferenceData::new()
            .row(
                "assets",
                "plant/site1/area2/line3/press4",
                &[("asset_id", "A-1004"), ("description", "Hydraulic press 4")],
            )
            .row("assets", PRESSURE, &[("sensor", "PT-17")])
            .row("sensors", PRESSURE, &[("calibrated", "2024-03-01")])
    }

    fn harness(config: serde_json::Value) -> Harness<Enricher> {
        Harness::with_reference_data(config, assets()).expect("config accepted")
    }

    fn enrichment(d: &TagDecision) -> Vec<(String, String)> {
        d.accepted()
            .unwrap_or_else(|| panic!("expected accept, got {d:?}"))
            .enrichment
            .clone()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn device_key_adds_the_asset_row() {
        let mut h = harness(json!({}));
        let d = h.on_tag(&TagInfo::new(1, "Site1.Area2.Line3.Press4.Pressure").path(PRESSURE));
        assert_eq!(
            enrichment(&d),
            pairs(&[("asset_id", "A-1004"), ("description", "Hydraulic press 4")])
        );
        // Every metric of the device gets the same row; nothing else changes.
        let d = h.on_tag(&TagInfo::new(2, "x").path("plant/site1/area2/line3/press4/temperature"));
        let a = d.accepted().unwrap();
        assert_eq!(a.enrichment.len(), 2);
        assert_eq!(
            (a.path.as_ref(), a.unit.as_ref(), a.limits),
            (None, None, None)
        );
        assert_eq!(h.counter("missing"), 0);
    }

    #[test]
    fn path_key_and_other_table() {
        let mut h = harness(json!({ "key": "path" }));
        let d = h.on_tag(&TagInfo::new(1, "v").path(PRESSURE));
        assert_eq!(enrichment(&d), pairs(&[("sensor", "PT-17")]));

        let mut h = harness(json!({ "key": "path", "table": "sensors" }));
        let d = h.on_tag(&TagInfo::new(1, "v").path(PRESSURE));
        assert_eq!(enrichment(&d), pairs(&[("calibrated", "2024-03-01")]));
    }

    #[test]
    fn prefix_is_prepended_to_added_keys() {
        let mut h = harness(json!({ "prefix": "asset." }));
        let d = h.on_tag(&TagInfo::new(1, "v").path(PRESSURE));
        assert_eq!(
            enrichment(&d),
            pairs(&[
                ("asset.asset_id", "A-1004"),
                ("asset.description", "Hydraulic press 4")
            ])
        );
    }

    #[test]
    fn missing_row_is_kept_and_counted() {
        let mut h = harness(json!({}));
        let d = h.on_tag(&TagInfo::new(1, "v").path("plant/site1/area2/line3/press5/pressure"));
        assert_eq!(d, TagDecision::keep());
        h.on_tag(&TagInfo::new(2, "v").path("plant/site9/a/l/d/m"));
        assert_eq!(h.counter("missing"), 2);
    }

    #[test]
    fn missing_row_is_rejected_when_required() {
        let mut h = harness(json!({ "required": true }));
        let d = h.on_tag(&TagInfo::new(1, "v").path("plant/site1/area2/line3/press5/pressure"));
        match d {
            TagDecision::Reject(r) => {
                assert!(r.contains("'plant/site1/area2/line3/press5'"), "{r}");
                assert!(r.contains("'assets'"), "{r}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.counter("missing"), 1);
        // A tag with a row is still enriched.
        assert_eq!(
            enrichment(&h.on_tag(&TagInfo::new(2, "v").path(PRESSURE))).len(),
            2
        );
    }

    #[test]
    fn lookup_keys() {
        assert_eq!(
            lookup_key(PRESSURE, KeyMode::Device),
            "plant/site1/area2/line3/press4"
        );
        assert_eq!(lookup_key(PRESSURE, KeyMode::Path), PRESSURE);
        assert_eq!(
            lookup_key("plant/a/b/c/d", KeyMode::Device),
            "plant/a/b/c/d"
        );
        assert_eq!(lookup_key("short/path", KeyMode::Device), "short/path");
        assert_eq!(lookup_key("a/b/c/d/e/f/g", KeyMode::Device), "a/b/c/d/e");
    }

    #[test]
    fn invalid_configs_are_refused() {
        let cases = [
            (json!({ "key": "asset" }), "unknown variant"),
            (json!({ "tables": "x" }), "unknown field"),
            (json!({ "required": "yes" }), "invalid config"),
            (json!({ "table": "" }), "`table` is empty"),
        ];
        for (config, expected) in cases {
            match Harness::<Enricher>::new(config.clone()) {
                Ok(_) => panic!("{config} accepted"),
                Err(e) => assert!(e.contains(expected), "{config}: {e}"),
            }
        }
    }

    #[test]
    fn defaults_and_info() {
        let h = harness(json!({}));
        assert_eq!(
            h.info()
                .config_keys
                .iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            ["table", "key", "required", "prefix"]
        );
        assert_eq!(h.info().planes, Planes::TAG);
        assert_eq!(h.info().version, env!("CARGO_PKG_VERSION"));
        let c: EnricherConfig = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c, EnricherConfig::default());
        assert_eq!(c.table, "assets");
        assert_eq!(c.key, KeyMode::Device);
    }

    #[test]
    fn readme_example_works() {
        let mut h = harness(ferrule_sdk::testing::readme_stage_config(include_str!(
            "../README.md"
        )));
        let d = h.on_tag(&TagInfo::new(1, "v").path(PRESSURE));
        assert_eq!(
            enrichment(&d)[0],
            ("asset.asset_id".to_string(), "A-1004".to_string())
        );
    }
}
