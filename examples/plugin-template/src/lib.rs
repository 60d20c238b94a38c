//! # Deadband filter: a template for your own Ferrule plugin
//!
//! Copy this crate, rename it, and replace the logic (see README.md). It is small but real:
//! it stops samples that changed less than a `deadband` since the last value forwarded for
//! the same tag, so slowly drifting or noisy signals cost less to store and send.
//!
//! It owns:
//! * the **tag plane**: each tag gets its deadband (the config's, or the tag's own metadata
//!   key `deadband` when a source provides one); `text` tags are never filtered;
//! * the **sample plane** (reads `VALUES | QUALITY | TIMESTAMPS`, writes nothing): a sample is
//!   forwarded when it is the tag's first, when its quality differs from the last forwarded
//!   one, when `|value - last forwarded value| >= deadband`, or when `heartbeat_ms` of source
//!   time have passed since the last forwarded sample; otherwise it is **dropped** with reason
//!   `1 suppressed-by-deadband`. NaN values are always forwarded.
//!
//! Dropped samples are not errors: they leave the pipeline without a dead-letter entry, and
//! the host counts them per stage and reason (`ferrule_stage_dropped_samples_total`). A sample
//! that is *wrong* would be rejected instead (`s.reject(code, detail)`), and go to the
//! dead-letter.

// The prelude brings `Plugin`, `export_plugin!`, the tag-plane and sample-plane types and
// `host` (log, counters, reference data).
use ferrule_sdk::prelude::*;
use serde::Deserialize;

/// Reason code for the samples this plugin holds back. Declared in `info()`; the host refuses
/// a drop (or rejection) whose code was not declared.
pub const SUPPRESSED: u16 = 1;

/// The stage's `config` table from the host config, as JSON. Doc comments here are the
/// user documentation of the plugin: keep them accurate.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadbandConfig {
    /// Smallest change (in the tag's unit, absolute) that is forwarded. Must be >= 0;
    /// 0 forwards every sample.
    pub deadband: f64,
    /// Forward a sample anyway when this many ms of source time passed since the last
    /// forwarded one, so consumers see the tag is alive. None by default.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: Option<u64>,
}

fn default_heartbeat_ms() -> Option<u64> {
    None
}

/// What we remember per tag, in a `Vec` indexed by tag id (ids are dense): no hashing and no
/// allocation on the sample plane.
#[derive(Clone, Copy, Debug)]
struct TagState {
    /// This tag's deadband; `None` never filters (text tags).
    deadband: Option<f64>,
    /// Last forwarded sample: value, quality, timestamp.
    last: Option<(f64, Quality, u64)>,
}

/// The plugin. `pub` so the host's benchmarks (and you) can drive it natively.
#[derive(Debug)]
pub struct Deadband {
    deadband: f64,
    heartbeat_ns: Option<u64>,
    tags: Vec<TagState>,
}

impl Plugin for Deadband {
    /// Self-description, read by the host (and `ferrule plugin inspect`) before `init`.
    fn info() -> PluginInfo {
        PluginInfo::new("deadband", env!("CARGO_PKG_VERSION"))
            .description("Holds back samples that changed less than a deadband since the last forwarded one.")
            .sample_plane(
                Columns::VALUES | Columns::QUALITY | Columns::TIMESTAMPS,
                Columns::NONE,
            )
            .config_key("deadband", "Smallest absolute change that is forwarded (>= 0).", true)
            .config_key(
                "heartbeat_ms",
                "Forward anyway after this many ms of source time (optional).",
                false,
            )
            .reason(
                SUPPRESSED,
                "suppressed-by-deadband",
                "Changed less than the deadband since the last forwarded value of the tag.",
            )
    }

    /// Parse and check the config; an error here refuses the plugin (the running version,
    /// if any, stays).
    fn init(config: Config) -> Result<Self, String> {
        let config: DeadbandConfig = config.parse()?;
        if config.deadband.is_nan() || config.deadband < 0.0 {
            return Err(format!("deadband must be >= 0, got {}", config.deadband));
        }
        Ok(Deadband {
            deadband: config.deadband,
            heartbeat_ns: config.heartbeat_ms.map(|ms| ms.saturating_mul(1_000_000)),
            tags: Vec::new(),
        })
    }

    /// Tag plane: called once per tag (and again after a swap or an upstream change).
    fn on_tag(&mut self, tag: &TagInfo) -> TagDecision {
        let deadband = if tag.data_type == DataType::Text {
            None
        } else {
            match tag.metadata_value("deadband") {
                None => Some(self.deadband),
                Some(text) => match text.trim().parse::<f64>() {
                    Ok(d) if d >= 0.0 => Some(d),
                    _ => {
                        return TagDecision::reject(format!(
                            "tag '{}': metadata deadband '{text}' is not a number >= 0",
                            tag.path
                        ))
                    }
                },
            }
        };
        let i = tag.id as usize;
        if i >= self.tags.len() {
            self.tags.resize(
                i + 1,
                TagState {
                    deadband: Some(self.deadband),
                    last: None,
                },
            );
        }
        // Forget the last value: the unit may have changed upstream.
        self.tags[i] = TagState {
            deadband,
            last: None,
        };
        TagDecision::keep()
    }

    /// Sample plane: one call per batch. Drop through the sample; don't allocate per sample.
    fn on_batch(&mut self, batch: &mut Batch) -> Result<(), String> {
        // Tags the tag plane has not seen yet (should not happen) use the config's deadband.
        if let Some(&max) = batch.tag_ids().iter().max() {
            if max as usize >= self.tags.len() {
                let fill = TagState {
                    deadband: Some(self.deadband),
                    last: None,
                };
                self.tags.resize(max as usize + 1, fill);
            }
        }
        let heartbeat_ns = self.heartbeat_ns;
        for s in batch.samples_mut() {
            let state = &mut self.tags[s.tag as usize];
            let (value, quality, ts) = (*s.value, *s.quality, s.timestamp_ns);
            let forward = match (state.deadband, state.last) {
                (None, _) | (_, None) => true,
                (Some(deadband), Some((last_value, last_quality, last_ts))) => {
                    let change = (value - last_value).abs();
                    quality != last_quality
                        // NaN now or before: always forward, so consumers see it come and go.
                        || change.is_nan()
                        || change >= deadband
                        || heartbeat_ns.is_some_and(|hb| ts.saturating_sub(last_ts) >= hb)
                }
            };
            if forward {
                state.last = Some((value, quality, ts));
            } else {
                // On purpose, not an error: no dead-letter entry, counted by the host.
                s.drop(SUPPRESSED);
            }
        }
        Ok(())
    }
}

// Exports `Deadband` as the component's `transform` interface when built for
// wasm32-wasip2; expands to nothing natively, so `cargo test` works.
export_plugin!(Deadband);

// Native tests: `Harness` plays the host (and checks the output invariants it enforces).
#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_sdk::testing::Harness;
    use serde_json::json;

    const S: u64 = 1_000_000_000;

    fn harness(config: serde_json::Value) -> Harness<Deadband> {
        let mut h = Harness::new(config).expect("config accepted");
        assert_eq!(
            h.on_tag(&TagInfo::new(0, "plant/s/a/l/d/pressure")),
            TagDecision::keep()
        );
        h
    }

    /// Indices of the dropped samples of a batch of `(tag, value, ts)` (all good quality).
    fn suppressed(h: &mut Harness<Deadband>, rows: &[(u32, f64, u64)]) -> Vec<u32> {
        let rows: Vec<_> = rows
            .iter()
            .map(|&(t, v, ts)| (t, v, Quality::GOOD, ts))
            .collect();
        let out = h.on_batch(Batch::from_rows(&rows)).expect("batch ok");
        assert!(
            out.values.is_none() && out.quality.is_none(),
            "writes nothing"
        );
        assert!(out.rejected.is_empty(), "a deadband never dead-letters");
        assert!(out.dropped.iter().all(|d| d.reason == SUPPRESSED));
        out.dropped.iter().map(|d| d.index).collect()
    }

    #[test]
    fn small_changes_are_suppressed() {
        let mut h = harness(json!({ "deadband": 0.5 }));
        let rows = [
            (0, 10.0, S),
            (0, 10.2, 2 * S),
            (0, 10.49, 3 * S),
            (0, 10.5, 4 * S),
            (0, 10.1, 5 * S),
        ];
        // 10.2 and 10.49 are within 0.5 of 10.0; 10.5 is not; 10.1 is within 0.5 of 10.5.
        assert_eq!(suppressed(&mut h, &rows), vec![1, 2, 4]);
        // The reference is the last *forwarded* value, across batches too.
        assert_eq!(
            suppressed(&mut h, &[(0, 10.9, 6 * S), (0, 11.0, 7 * S)]),
            vec![0]
        );
    }

    #[test]
    fn suppressed_samples_are_dropped_not_rejected() {
        let mut h = harness(json!({ "deadband": 1.0 }));
        let out = h
            .on_batch(Batch::from_rows(&[
                (0, 5.0, Quality::GOOD, S),
                (0, 5.25, Quality::GOOD, 2 * S),
            ]))
            .unwrap();
        assert!(out.rejected.is_empty());
        assert_eq!(
            out.dropped,
            vec![Dropped {
                index: 1,
                reason: SUPPRESSED,
            }]
        );
    }

    #[test]
    fn tags_are_independent() {
        let mut h = harness(json!({ "deadband": 1.0 }));
        h.on_tag(&TagInfo::new(1, "plant/s/a/l/d/temperature"));
        let rows = [(0, 1.0, S), (1, 1.2, S), (0, 1.5, 2 * S), (1, 2.5, 2 * S)];
        assert_eq!(suppressed(&mut h, &rows), vec![2]);
    }

    #[test]
    fn quality_changes_and_nan_are_always_forwarded() {
        let mut h = harness(json!({ "deadband": 1.0 }));
        let rows = [
            (0, 1.0, Quality::GOOD, S),
            (0, 1.0, Quality::UNCERTAIN, 2 * S),
            (0, 1.0, Quality::UNCERTAIN, 3 * S),
            (0, f64::NAN, Quality::UNCERTAIN, 4 * S),
            (0, 1.0, Quality::UNCERTAIN, 5 * S),
        ];
        let out = h.on_batch(Batch::from_rows(&rows)).unwrap();
        let idx: Vec<u32> = out.dropped.iter().map(|d| d.index).collect();
        assert_eq!(idx, vec![2]);
    }

    #[test]
    fn heartbeat_forwards_unchanged_values() {
        let mut h = harness(json!({ "deadband": 1.0, "heartbeat_ms": 10000 }));
        let rows = [
            (0, 1.0, S),
            (0, 1.0, 5 * S),
            (0, 1.0, 11 * S),
            (0, 1.0, 12 * S),
        ];
        assert_eq!(suppressed(&mut h, &rows), vec![1, 3]);
    }

    #[test]
    fn per_tag_deadband_from_metadata_and_text_tags() {
        let mut h = harness(json!({ "deadband": 100.0 }));
        h.on_tag(&TagInfo::new(1, "fine").meta("deadband", "0.1"));
        h.on_tag(&TagInfo::new(2, "label").data_type(DataType::Text));
        let rows = [
            (1, 1.0, S),
            (1, 1.2, 2 * S),
            (2, f64::NAN, S),
            (2, f64::NAN, 2 * S),
        ];
        assert!(suppressed(&mut h, &rows).is_empty());
        let d = h.on_tag(&TagInfo::new(3, "bad").meta("deadband", "wide"));
        assert!(d.is_reject());
    }

    #[test]
    fn zero_deadband_forwards_everything() {
        let mut h = harness(json!({ "deadband": 0.0 }));
        assert!(suppressed(&mut h, &[(0, 1.0, S), (0, 1.0, 2 * S)]).is_empty());
    }

    #[test]
    fn config_is_checked() {
        let err = |config| Harness::<Deadband>::new(config).expect_err("config refused");
        assert!(err(json!({})).contains("missing field `deadband`"));
        assert!(err(json!({ "deadband": -1.0 })).contains(">= 0"));
        assert!(err(json!({ "deadband": 1.0, "dead_band": 2 })).contains("unknown field"));
        // Type errors say where.
        assert!(err(json!({ "deadband": "wide" })).starts_with("invalid config at deadband: "));
    }

    #[test]
    fn info_declares_the_reason() {
        let info = Deadband::info();
        assert_eq!(info.name, "deadband");
        assert_eq!(info.reasons[0].code, SUPPRESSED);
        assert_eq!(info.reasons[0].name, "suppressed-by-deadband");
        assert_eq!(info.writes, Columns::NONE);
    }

    #[test]
    fn readme_example_config_is_accepted() {
        let config = ferrule_sdk::testing::readme_stage_config(include_str!("../README.md"));
        assert_eq!(config, json!({ "deadband": 0.5, "heartbeat_ms": 60000 }));
        let mut h = harness(config);
        assert_eq!(suppressed(&mut h, &[(0, 1.0, S), (0, 1.2, 2 * S)]), vec![1]);
    }
}
