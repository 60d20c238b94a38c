//! # Validator
//!
//! Owns the **tag plane** and the **sample plane** (reads `VALUES | QUALITY | TIMESTAMPS`,
//! writes `QUALITY`): it checks every sample against per-tag limits and sanity rules, and
//! either rejects it (dead-letter with a reason code and a detail) or marks its quality.
//!
//! * Tag plane: the first rule whose `match` glob matches the tag's (normalised) path gives
//!   the tag its limits, reported to the host with `with_limits`. A tag no rule matches has
//!   no limits (only the quality, NaN and ordering checks apply to it).
//! * Sample plane, in this order, the first failing check deciding:
//!   1. ordering (only with `stale_after_ms`): the source timestamp must be newer than the
//!      last accepted sample of the same tag → else `6 out-of-order`;
//!   2. quality: a bad sample is rejected (`5 bad-quality`) with `bad_quality = "reject"`,
//!      otherwise forwarded as it is, without value checks (its value is not trusted);
//!   3. NaN: rejected (`4 not-a-number`) unless `nan = "pass"` (`text` tags, whose values are
//!      always NaN, skip this and the value checks);
//!   4. range: below `low` → `1 below-low-limit`, above `high` → `2 above-high-limit`, or with
//!      `out_of_range = "mark"` the sample is kept with quality
//!      `Uncertain_EngineeringUnitsExceeded` (a bad quality is never upgraded);
//!   5. rate of change: `|Δvalue| / Δt` against the last accepted value of the tag, Δt in
//!      seconds of source time, above `max_rate_per_second` → `3 rate-of-change`. A rejected
//!      sample does not become the reference, so a spike is rejected and later values are
//!      compared with the last good one. Skipped for the first sample of a tag, when Δt is
//!      not positive, and when the last accepted value is older than `stale_after_ms`.
//!
//! Per-tag state (limits, last value, last timestamps) lives in a `Vec` indexed by tag id:
//! no hashing and no allocation for an accepted sample (a rejection allocates its detail).
//!
//! ## Globs
//!
//! Paths are split at `/`. In a `match` glob:
//! * `*` as a whole segment matches exactly one segment;
//! * `*` inside a segment matches any characters within that segment (`press*`, `*_temp`);
//! * `**` as a whole segment matches zero or more segments, anywhere (`plant/**/pressure`);
//! * `#` as the last segment matches zero or more remaining segments (MQTT style:
//!   `plant/site1/#` matches `plant/site1` and everything below it).
//!
//! Matching is case-sensitive.

use ferrule_sdk::prelude::*;
use serde::Deserialize;

/// Reason code: value below the low limit.
pub const BELOW_LOW_LIMIT: u16 = 1;
/// Reason code: value above the high limit.
pub const ABOVE_HIGH_LIMIT: u16 = 2;
/// Reason code: change per second above `max_rate_per_second`.
pub const RATE_OF_CHANGE: u16 = 3;
/// Reason code: the value is NaN.
pub const NOT_A_NUMBER: u16 = 4;
/// Reason code: the sample's quality is bad (with `bad_quality = "reject"`).
pub const BAD_QUALITY: u16 = 5;
/// Reason code: the timestamp is not newer than the last accepted one of the tag.
pub const OUT_OF_ORDER: u16 = 6;
/// Reason code (command plane): an interlock's condition does not hold.
pub const INTERLOCK: u16 = 7;

/// What to do with a sample outside `low`..`high`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutOfRange {
    /// Reject it with `below-low-limit` / `above-high-limit`.
    #[default]
    Reject,
    /// Keep it, with quality `Uncertain_EngineeringUnitsExceeded` (bad stays bad).
    Mark,
}

/// What to do with a sample whose quality is bad.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BadQuality {
    /// Forward it unchecked: consumers see the bad status.
    #[default]
    Pass,
    /// Reject it with `bad-quality`.
    Reject,
}

/// What to do with a NaN value.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// Reject it with `not-a-number`.
    #[default]
    Reject,
    /// Forward it unchecked.
    Pass,
}

/// Configuration of the validator (the stage's `config` table).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValidatorConfig {
    /// Ordered limit rules; the first whose `match` glob matches the tag path applies.
    #[serde(default = "default_rules")]
    pub rules: Vec<RuleConfig>,
    /// `"reject"` (default) or `"mark"` samples outside the limits.
    #[serde(default = "default_out_of_range")]
    pub out_of_range: OutOfRange,
    /// `"pass"` (default) or `"reject"` samples with bad quality.
    #[serde(default = "default_bad_quality")]
    pub bad_quality: BadQuality,
    /// `"reject"` (default) or `"pass"` NaN values.
    #[serde(default = "default_nan")]
    pub nan: NanPolicy,
    /// When set, samples must arrive in source-time order per tag (else `out-of-order`),
    /// and a tag's last accepted value is stale after this many ms of source time: the
    /// rate-of-change check is skipped across such a gap. Off by default.
    #[serde(default = "default_stale_after_ms")]
    pub stale_after_ms: Option<u64>,
    /// Command plane: writes to tags matching `match` are refused (`7 interlock`) unless the
    /// latest value of the tag at `requires` equals `equals` with good quality.
    #[serde(default)]
    pub interlocks: Vec<InterlockConfig>,
}

/// An interlock on the command plane.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InterlockConfig {
    /// Glob on the normalised path of the tags written.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Normalised path of the tag whose latest value must be `equals`.
    pub requires: String,
    pub equals: f64,
}

/// Limits for the tags whose path matches `match`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Glob on the normalised path (`*` one segment, `**` any number, trailing `#` the rest).
    #[serde(rename = "match")]
    pub pattern: String,
    /// Lowest valid value, in the tag's unit as it reaches this stage.
    #[serde(default)]
    pub low: Option<f64>,
    /// Highest valid value.
    #[serde(default)]
    pub high: Option<f64>,
    /// Largest accepted change per second of source time.
    #[serde(default)]
    pub max_rate_per_second: Option<f64>,
}

fn default_rules() -> Vec<RuleConfig> {
    Vec::new()
}
fn default_out_of_range() -> OutOfRange {
    OutOfRange::Reject
}
fn default_bad_quality() -> BadQuality {
    BadQuality::Pass
}
fn default_nan() -> NanPolicy {
    NanPolicy::Reject
}
fn default_stale_after_ms() -> Option<u64> {
    None
}

/// One segment of a compiled glob.
#[derive(Clone, Debug, PartialEq)]
enum Seg {
    /// `*`: exactly one segment.
    One,
    /// `**` or trailing `#`: zero or more segments.
    Rest,
    /// Text, with `*` wildcards inside when it has more than one piece.
    Text(Vec<String>),
}

/// A path glob (see the crate docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Glob {
    segments: Vec<Seg>,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("empty `match` glob".to_string());
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "*" => Seg::One,
                "**" => Seg::Rest,
                "#" if i == last => Seg::Rest,
                p if p.contains('#') => {
                    return Err(format!(
                        "glob '{pattern}': '#' is only allowed as the whole last segment"
                    ))
                }
                p if p.contains("**") => {
                    return Err(format!("glob '{pattern}': '**' must be a whole segment"))
                }
                p => Seg::Text(p.split('*').map(str::to_string).collect()),
            };
            segments.push(seg);
        }
        Ok(Glob { segments })
    }

    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        match_from(&self.segments, &parts)
    }
}

fn match_from(glob: &[Seg], path: &[&str]) -> bool {
    match glob.split_first() {
        None => path.is_empty(),
        Some((Seg::Rest, rest)) => (0..=path.len()).any(|skip| match_from(rest, &path[skip..])),
        Some((seg, rest)) => match path.split_first() {
            None => false,
            Some((first, tail)) => {
                let ok = match seg {
                    Seg::One => true,
                    Seg::Text(pieces) => text_matches(pieces, first),
                    Seg::Rest => unreachable!(),
                };
                ok && match_from(rest, tail)
            }
        },
    }
}

/// `pieces` is a segment split at `*`: the first is a prefix, the last a suffix, the middle
/// ones appear in order between them.
fn text_matches(pieces: &[String], text: &str) -> bool {
    if let [only] = pieces {
        return only == text;
    }
    let (first, last) = (&pieces[0], &pieces[pieces.len() - 1]);
    if text.len() < first.len() + last.len()
        || !text.starts_with(first.as_str())
        || !text.ends_with(last.as_str())
    {
        return false;
    }
    let mut middle = &text[first.len()..text.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match middle.find(piece.as_str()) {
            Some(at) => middle = &middle[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// A compiled rule.
#[derive(Clone, Debug)]
struct Rule {
    glob: Glob,
    limits: Limits,
}

/// Per-tag state, indexed by tag id.
#[derive(Clone, Copy, Debug)]
struct TagState {
    /// `-inf` when there is no low limit.
    low: f64,
    /// `+inf` when there is no high limit.
    high: f64,
    /// `+inf` when there is no rate limit.
    max_rate: f64,
    /// Text tag: values are always NaN, value checks are skipped.
    text: bool,
    /// Newest timestamp of an accepted sample (for the ordering check).
    last_ts: Option<u64>,
    /// Last accepted value and its timestamp (for the rate check).
    rate_ref: Option<(f64, u64)>,
}

const UNSEEN: TagState = TagState {
    low: f64::NEG_INFINITY,
    high: f64::INFINITY,
    max_rate: f64::INFINITY,
    text: false,
    last_ts: None,
    rate_ref: None,
};

impl TagState {
    fn accept_ts(&mut self, ts: u64) {
        if self.last_ts.is_none_or(|last| ts > last) {
            self.last_ts = Some(ts);
        }
    }
}

/// The validator plugin.
#[derive(Debug)]
pub struct Validator {
    rules: Vec<Rule>,
    interlocks: Vec<(Glob, InterlockConfig)>,
    out_of_range: OutOfRange,
    bad_quality: BadQuality,
    nan: NanPolicy,
    /// `stale_after_ms` in ns.
    stale_after_ns: Option<u64>,
    tags: Vec<TagState>,
}

impl Validator {
    /// Builds the validator from its typed config.
    pub fn from_config(config: ValidatorConfig) -> Result<Self, String> {
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, r) in config.rules.into_iter().enumerate() {
            let n = i + 1;
            let glob = Glob::new(&r.pattern).map_err(|e| format!("rule {n}: {e}"))?;
            if let (Some(low), Some(high)) = (r.low, r.high) {
                if low > high {
                    return Err(format!(
                        "rule {n} ('{}'): low {low} is above high {high}",
                        r.pattern
                    ));
                }
            }
            if let Some(rate) = r.max_rate_per_second {
                if rate < 0.0 {
                    return Err(format!(
                        "rule {n} ('{}'): max_rate_per_second {rate} is negative",
                        r.pattern
                    ));
                }
            }
            rules.push(Rule {
                glob,
                limits: Limits {
                    low: r.low,
                    high: r.high,
                    max_rate_per_second: r.max_rate_per_second,
                },
            });
        }
        let mut interlocks = Vec::with_capacity(config.interlocks.len());
        for (i, il) in config.interlocks.into_iter().enumerate() {
            let glob = Glob::new(&il.pattern).map_err(|e| format!("interlocks[{i}]: {e}"))?;
            interlocks.push((glob, il));
        }
        Ok(Validator {
            rules,
            interlocks,
            out_of_range: config.out_of_range,
            bad_quality: config.bad_quality,
            nan: config.nan,
            stale_after_ns: config.stale_after_ms.map(|ms| ms.saturating_mul(1_000_000)),
            tags: Vec::new(),
        })
    }

    /// The limits of the first rule matching `path`, if any.
    pub fn limits_for(&self, path: &str) -> Option<Limits> {
        self.rules
            .iter()
            .find(|r| r.glob.matches(path))
            .map(|r| r.limits)
    }

    fn state_mut(&mut self, id: u32) -> &mut TagState {
        let i = id as usize;
        if i >= self.tags.len() {
            self.tags.resize(i + 1, UNSEEN);
        }
        &mut self.tags[i]
    }
}

impl Plugin for Validator {
    fn info() -> PluginInfo {
        PluginInfo::new("validator", env!("CARGO_PKG_VERSION"))
            .description(
                "Checks samples against per-tag limits (low, high, rate of change), NaN, bad \
                 quality and source-time order; rejects them or marks their quality.",
            )
            .sample_plane(
                Columns::VALUES | Columns::QUALITY | Columns::TIMESTAMPS,
                Columns::QUALITY,
            )
            .config_key(
                "rules",
                "Ordered list of {match, low, high, max_rate_per_second}; match is a glob on \
                 the tag path (* one segment, ** any number, trailing # the rest). First match wins.",
                false,
            )
            .config_key(
                "out_of_range",
                "\"reject\" (default) or \"mark\" (quality Uncertain_EngineeringUnitsExceeded).",
                false,
            )
            .config_key("bad_quality", "\"pass\" (default) or \"reject\".", false)
            .config_key("nan", "\"reject\" (default) or \"pass\".", false)
            .config_key(
                "stale_after_ms",
                "Enables the per-tag source-time order check; the rate check is skipped across \
                 gaps longer than this.",
                false,
            )
            .reason(BELOW_LOW_LIMIT, "below-low-limit", "Value below the tag's low limit.")
            .reason(ABOVE_HIGH_LIMIT, "above-high-limit", "Value above the tag's high limit.")
            .reason(
                RATE_OF_CHANGE,
                "rate-of-change",
                "Change per second since the last accepted value above max_rate_per_second.",
            )
            .reason(NOT_A_NUMBER, "not-a-number", "Value is NaN.")
            .reason(BAD_QUALITY, "bad-quality", "Sample quality is bad.")
            .reason(
                OUT_OF_ORDER,
                "out-of-order",
                "Source timestamp not newer than the last accepted sample of the tag.",
            )
            .command_plane()
            .config_key(
                "interlocks",
                "Command plane: list of {match, requires, equals}; a write to a tag matching \
                 `match` is refused unless the latest value at path `requires` equals `equals`.",
                false,
            )
            .reason(
                INTERLOCK,
                "interlock",
                "A write was refused: an interlock's condition does not hold.",
            )
    }

    fn init(config: Config) -> Result<Self, String> {
        Validator::from_config(config.parse()?)
    }

    fn on_tag(&mut self, tag: &TagInfo) -> TagDecision {
        let text = tag.data_type == DataType::Text;
        let limits = if text {
            None
        } else {
            self.limits_for(&tag.path)
        };
        let l = limits.unwrap_or_default();
        let state = self.state_mut(tag.id);
        state.low = l.low.unwrap_or(f64::NEG_INFINITY);
        state.high = l.high.unwrap_or(f64::INFINITY);
        state.max_rate = l.max_rate_per_second.unwrap_or(f64::INFINITY);
        state.text = text;
        // The unit or the limits may have changed upstream: restart the rate check. The
        // ordering reference stays.
        state.rate_ref = None;
        match limits {
            Some(l) if l != Limits::default() => TagDecision::keep().with_limits(l),
            _ => TagDecision::keep(),
        }
    }

    /// Command plane: a write outside the tag's limits is refused (`below-low-limit`,
    /// `above-high-limit`), and so is one an interlock forbids; the value passes unchanged.
    fn on_command(&mut self, cmd: &Command) -> CommandDecision {
        if let Some(t) = self.tags.get(cmd.tag_id as usize).filter(|t| !t.text) {
            if cmd.value < t.low {
                return CommandDecision::refuse(
                    BELOW_LOW_LIMIT,
                    format!("{} is below the low limit {}", cmd.value, t.low),
                );
            }
            if cmd.value > t.high {
                return CommandDecision::refuse(
                    ABOVE_HIGH_LIMIT,
                    format!("{} is above the high limit {}", cmd.value, t.high),
                );
            }
        }
        for (glob, il) in &self.interlocks {
            if !glob.matches(&cmd.path) {
                continue;
            }
            let holds = host::latest(&il.requires)
                .is_some_and(|s| s.value == il.equals && !s.quality.is_bad());
            if !holds {
                return CommandDecision::refuse(
                    INTERLOCK,
                    format!(
                        "writes to {} need {} = {}",
                        cmd.path, il.requires, il.equals
                    ),
                );
            }
        }
        CommandDecision::allow()
    }

    fn on_batch(&mut self, batch: &mut Batch) -> Result<(), String> {
        let ordered = self.stale_after_ns.is_some();
        let stale_after_ns = self.stale_after_ns.unwrap_or(u64::MAX);
        let (out_of_range, bad_quality, nan) = (self.out_of_range, self.bad_quality, self.nan);
        if let Some(max) = batch.tag_ids().iter().max() {
            if *max as usize >= self.tags.len() {
                self.tags.resize(*max as usize + 1, UNSEEN);
            }
        }
        let tags = self.tags.as_mut_slice();
        for s in batch.samples_mut() {
            let st = &mut tags[s.tag as usize];
            let ts = s.timestamp_ns;

            if ordered {
                if let Some(last) = st.last_ts.filter(|&last| ts <= last) {
                    s.reject(
                        OUT_OF_ORDER,
                        format!("timestamp {ts} ns is not newer than the last accepted {last} ns"),
                    );
                    continue;
                }
            }

            let quality = *s.quality;
            if quality.is_bad() {
                if bad_quality == BadQuality::Reject {
                    s.reject(BAD_QUALITY, format!("quality 0x{:08X} is bad", quality.0));
                    continue;
                }
                if ordered {
                    st.accept_ts(ts);
                }
                continue;
            }

            if st.text {
                if ordered {
                    st.accept_ts(ts);
                }
                continue;
            }

            let value = *s.value;
            if value.is_nan() {
                if nan == NanPolicy::Reject {
                    s.reject(NOT_A_NUMBER, "value is NaN");
                    continue;
                }
                if ordered {
                    st.accept_ts(ts);
                }
                continue;
            }

            let mut exceeded = false;
            if value < st.low {
                if out_of_range == OutOfRange::Reject {
                    s.reject(
                        BELOW_LOW_LIMIT,
                        format!("value {value} below low limit {}", st.low),
                    );
                    continue;
                }
                exceeded = true;
            } else if value > st.high {
                if out_of_range == OutOfRange::Reject {
                    s.reject(
                        ABOVE_HIGH_LIMIT,
                        format!("value {value} above high limit {}", st.high),
                    );
                    continue;
                }
                exceeded = true;
            }

            if let Some((last_value, last_ts)) = st.rate_ref {
                if ts > last_ts && ts - last_ts <= stale_after_ns && st.max_rate.is_finite() {
                    let dt = (ts - last_ts) as f64 / 1e9;
                    let change = (value - last_value).abs();
                    let rate = change / dt;
                    if rate > st.max_rate {
                        s.reject(
                            RATE_OF_CHANGE,
                            format!(
                                "change of {change} in {dt} s ({rate}/s) exceeds max rate {}/s (from {last_value} to {value})",
                                st.max_rate
                            ),
                        );
                        continue;
                    }
                }
            }

            if exceeded && !quality.is_bad() {
                *s.quality = Quality::UNCERTAIN_EU_EXCEEDED;
            }
            if ordered {
                st.accept_ts(ts);
            }
            // State is kept only for the checks that read it (order, rate).
            if st.max_rate.is_finite() && st.rate_ref.is_none_or(|(_, last_ts)| ts >= last_ts) {
                st.rate_ref = Some((value, ts));
            }
        }
        Ok(())
    }
}

export_plugin!(Validator);

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_sdk::testing::Harness;
    use serde_json::json;

    const S: u64 = 1_000_000_000;

    fn harness(config: serde_json::Value) -> Harness<Validator> {
        Harness::new(config).expect("config accepted")
    }

    /// A harness with one tag (id 0, path `plant/s/a/l/press1/pressure`) decided.
    fn one_tag(config: serde_json::Value) -> Harness<Validator> {
        let mut h = harness(config);
        h.on_tag(&TagInfo::new(0, "x").path("plant/s/a/l/press1/pressure"));
        h
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
    fn commands_outside_the_limits_or_against_an_interlock_are_refused() {
        let path = "plant/s/a/l/press1/pressure";
        let mut h = one_tag(json!({
            "rules": [{ "match": "plant/**", "low": 0.0, "high": 10.0 }],
            "interlocks": [{ "match": "plant/s/a/l/press1/*", "requires": "plant/s/a/l/press1/mode", "equals": 1.0 }],
        }));
        let refusal = |d: Result<CommandDecision, String>| match d.unwrap() {
            CommandDecision::Refuse { reason, .. } => Some(reason),
            CommandDecision::Allow(_) => None,
        };
        assert_eq!(
            refusal(h.on_command(&command(0, path, 11.0))),
            Some(ABOVE_HIGH_LIMIT)
        );
        assert_eq!(
            refusal(h.on_command(&command(0, path, -1.0))),
            Some(BELOW_LOW_LIMIT)
        );
        // No mode sample yet, then the wrong mode, then the right one.
        assert_eq!(
            refusal(h.on_command(&command(0, path, 5.0))),
            Some(INTERLOCK)
        );
        let mode = |value| LatestSample {
            value,
            extra: None,
            quality: Quality::GOOD,
            timestamp_ns: 1,
        };
        h.set_latest("plant/s/a/l/press1/mode", mode(0.0));
        assert_eq!(
            refusal(h.on_command(&command(0, path, 5.0))),
            Some(INTERLOCK)
        );
        h.set_latest("plant/s/a/l/press1/mode", mode(1.0));
        assert_eq!(
            h.on_command(&command(0, path, 5.0)).unwrap(),
            CommandDecision::Allow(None)
        );
    }

    fn good(tag: u32, value: f64, ts: u64) -> (u32, f64, Quality, u64) {
        (tag, value, Quality::GOOD, ts)
    }

    fn run(h: &mut Harness<Validator>, rows: &[(u32, f64, Quality, u64)]) -> BatchOutput {
        h.on_batch(Batch::from_rows(rows)).expect("batch ok")
    }

    fn codes(out: &BatchOutput) -> Vec<(u32, u16)> {
        out.rejected.iter().map(|r| (r.index, r.reason)).collect()
    }

    #[test]
    fn above_high_limit_is_rejected_with_code_and_detail() {
        let mut h = one_tag(
            json!({ "rules": [{ "match": "plant/*/*/*/*/pressure", "low": 0.0, "high": 1000.0 }] }),
        );
        let out = run(
            &mut h,
            &[
                good(0, 999.0, S),
                good(0, 1234.5, 2 * S),
                good(0, -0.5, 3 * S),
            ],
        );
        assert_eq!(
            codes(&out),
            vec![(1, ABOVE_HIGH_LIMIT), (2, BELOW_LOW_LIMIT)]
        );
        assert_eq!(
            out.rejected[0].detail.as_deref(),
            Some("value 1234.5 above high limit 1000")
        );
        assert_eq!(
            out.rejected[1].detail.as_deref(),
            Some("value -0.5 below low limit 0")
        );
        // Quality is written, unchanged for the accepted sample.
        assert_eq!(out.quality.as_ref().unwrap()[0], Quality::GOOD.0);
        assert_eq!(out.values, None);
    }

    #[test]
    fn tag_plane_reports_the_limits_of_the_first_matching_rule() {
        let mut h = harness(json!({ "rules": [
            { "match": "plant/site1/**/pressure", "high": 10.0 },
            { "match": "plant/#", "low": -1.0, "high": 1.0, "max_rate_per_second": 0.5 }
        ] }));
        let d = h.on_tag(&TagInfo::new(0, "v").path("plant/site1/a/l/d/pressure"));
        assert_eq!(
            d,
            TagDecision::keep().with_limits(Limits {
                low: None,
                high: Some(10.0),
                max_rate_per_second: None
            })
        );
        let d = h.on_tag(&TagInfo::new(1, "v").path("plant/site2/a/l/d/pressure"));
        assert_eq!(
            d.accepted().unwrap().limits,
            Some(Limits {
                low: Some(-1.0),
                high: Some(1.0),
                max_rate_per_second: Some(0.5)
            })
        );
        // No rule: kept without limits.
        let d = h.on_tag(&TagInfo::new(2, "v").path("other/x"));
        assert_eq!(d, TagDecision::keep());
    }

    #[test]
    fn mark_mode_sets_uncertain_quality_instead_of_rejecting() {
        let mut h =
            one_tag(json!({ "out_of_range": "mark", "rules": [{ "match": "#", "high": 100.0 }] }));
        let rows = [
            good(0, 150.0, S),
            (0, 150.0, Quality::UNCERTAIN, 2 * S),
            (0, 150.0, Quality::BAD_OUT_OF_RANGE, 3 * S),
            good(0, 50.0, 4 * S),
        ];
        let out = run(&mut h, &rows);
        assert!(out.rejected.is_empty());
        assert_eq!(
            out.quality.unwrap(),
            vec![
                Quality::UNCERTAIN_EU_EXCEEDED.0,
                Quality::UNCERTAIN_EU_EXCEEDED.0,
                Quality::BAD_OUT_OF_RANGE.0,
                Quality::GOOD.0
            ]
        );
    }

    #[test]
    fn rate_of_change_compares_with_the_last_accepted_value() {
        let mut h = one_tag(json!({ "rules": [{ "match": "**", "max_rate_per_second": 10.0 }] }));
        let rows = [
            good(0, 100.0, S),
            good(0, 105.0, 2 * S),         // 5/s: ok
            good(0, 200.0, 3 * S),         // 95/s: spike
            good(0, 112.0, 4 * S),         // vs 105 two seconds ago: 3.5/s ok
            good(0, 117.0, 4 * S + S / 2), // 10/s: ok (not above)
        ];
        let out = run(&mut h, &rows);
        assert_eq!(codes(&out), vec![(2, RATE_OF_CHANGE)]);
        let detail = out.rejected[0].detail.as_deref().unwrap();
        assert!(
            detail.contains("change of 95 in 1 s (95/s) exceeds max rate 10/s"),
            "{detail}"
        );
        // State carries over to the next batch.
        let out = run(&mut h, &[good(0, 140.0, 5 * S)]);
        assert_eq!(codes(&out), vec![(0, RATE_OF_CHANGE)]);
    }

    #[test]
    fn nan_is_rejected_by_default_and_can_pass() {
        let mut h = one_tag(json!({}));
        let out = run(&mut h, &[good(0, f64::NAN, S), good(0, 1.0, 2 * S)]);
        assert_eq!(codes(&out), vec![(0, NOT_A_NUMBER)]);
        assert_eq!(out.rejected[0].detail.as_deref(), Some("value is NaN"));

        let mut h = one_tag(json!({ "nan": "pass", "rules": [{ "match": "#", "low": 0.0 }] }));
        let out = run(&mut h, &[good(0, f64::NAN, S)]);
        assert!(out.rejected.is_empty());
    }

    #[test]
    fn text_tags_skip_value_checks() {
        let mut h = harness(json!({ "rules": [{ "match": "#", "low": 0.0 }] }));
        let d = h.on_tag(&TagInfo::new(0, "t").data_type(DataType::Text));
        assert_eq!(d, TagDecision::keep());
        let out = run(&mut h, &[good(0, f64::NAN, S)]);
        assert!(out.rejected.is_empty());
    }

    #[test]
    fn bad_quality_passes_unchecked_by_default_or_is_rejected() {
        let mut h = one_tag(json!({ "rules": [{ "match": "#", "low": 0.0 }] }));
        let bad = Quality(0x8031_0000);
        let out = run(&mut h, &[(0, f64::NAN, bad, S), (0, -5.0, bad, 2 * S)]);
        assert!(out.rejected.is_empty());
        assert_eq!(out.quality.unwrap(), vec![bad.0, bad.0]);

        let mut h = one_tag(json!({ "bad_quality": "reject" }));
        let out = run(
            &mut h,
            &[(0, 1.0, bad, S), (0, 1.0, Quality::UNCERTAIN, 2 * S)],
        );
        assert_eq!(codes(&out), vec![(0, BAD_QUALITY)]);
        assert_eq!(
            out.rejected[0].detail.as_deref(),
            Some("quality 0x80310000 is bad")
        );
    }

    #[test]
    fn out_of_order_only_with_stale_after_ms() {
        let rows = [
            good(0, 1.0, 5 * S),
            good(0, 2.0, 5 * S),
            good(0, 3.0, 4 * S),
            good(0, 4.0, 6 * S),
        ];
        let mut h = one_tag(json!({}));
        assert!(run(&mut h, &rows).rejected.is_empty());

        let mut h = one_tag(json!({ "stale_after_ms": 60000 }));
        let out = run(&mut h, &rows);
        assert_eq!(codes(&out), vec![(1, OUT_OF_ORDER), (2, OUT_OF_ORDER)]);
        assert_eq!(
            out.rejected[1].detail.as_deref(),
            Some("timestamp 4000000000 ns is not newer than the last accepted 5000000000 ns")
        );
        // Across batches, and per tag.
        h.on_tag(&TagInfo::new(1, "y").path("plant/s/a/l/press2/pressure"));
        let out = run(&mut h, &[good(0, 1.0, 6 * S), good(1, 1.0, S)]);
        assert_eq!(codes(&out), vec![(0, OUT_OF_ORDER)]);
    }

    #[test]
    fn rate_check_is_skipped_across_a_stale_gap() {
        let mut h = one_tag(
            json!({ "stale_after_ms": 10000, "rules": [{ "match": "#", "max_rate_per_second": 1.0 }] }),
        );
        let out = run(
            &mut h,
            &[
                good(0, 0.0, S),
                good(0, 50.0, 5 * S),
                good(0, 50.0, 30 * S),
                good(0, 80.0, 31 * S),
            ],
        );
        // 50 in 4 s: rejected; 50 after 29 s: the reference (0 at 1 s) is stale, accepted;
        // 80 one second later: 30/s, rejected.
        assert_eq!(codes(&out), vec![(1, RATE_OF_CHANGE), (3, RATE_OF_CHANGE)]);
    }

    #[test]
    fn unseen_tags_get_only_the_generic_checks() {
        let mut h = harness(json!({ "rules": [{ "match": "#", "high": 1.0 }] }));
        let out = run(&mut h, &[good(42, 5.0, S), good(43, f64::NAN, S)]);
        assert_eq!(codes(&out), vec![(1, NOT_A_NUMBER)]);
    }

    #[test]
    fn redeciding_a_tag_replaces_its_limits() {
        let mut h = harness(json!({ "rules": [
            { "match": "plant/*/*/*/*/pressure", "high": 10.0 },
            { "match": "plant/*/*/*/*/temperature", "high": 100.0 }
        ] }));
        h.on_tag(&TagInfo::new(0, "v").path("plant/s/a/l/d/pressure"));
        assert_eq!(
            codes(&run(&mut h, &[good(0, 50.0, S)])),
            vec![(0, ABOVE_HIGH_LIMIT)]
        );
        h.on_tag(&TagInfo::new(0, "v").path("plant/s/a/l/d/temperature"));
        assert!(run(&mut h, &[good(0, 50.0, 2 * S)]).rejected.is_empty());
    }

    #[test]
    fn globs() {
        let m = |g: &str, p: &str| Glob::new(g).unwrap().matches(p);
        assert!(m("plant/*/*/*/*/pressure", "plant/s/a/l/d/pressure"));
        assert!(!m("plant/*/*/*/*/pressure", "plant/s/a/l/pressure"));
        assert!(!m("plant/*/*/*/*/pressure", "plant/s/a/l/d/temperature"));
        assert!(m("plant/**/pressure", "plant/pressure"));
        assert!(m("plant/**/pressure", "plant/s/a/l/d/pressure"));
        assert!(!m("plant/**/pressure", "plant/s/a/l/d/pressure/x"));
        assert!(m("plant/site1/#", "plant/site1"));
        assert!(m("plant/site1/#", "plant/site1/a/l/d/m"));
        assert!(!m("plant/site1/#", "plant/site2/a/l/d/m"));
        assert!(m("#", "anything/at/all"));
        assert!(m("plant/*/*/*/press*/*", "plant/s/a/l/press4/x"));
        assert!(m("plant/*/*/*/*/*_temp", "plant/s/a/l/d/oil_temp"));
        assert!(m("plant/*/*/*/*/a*b*c", "plant/s/a/l/d/axxbyyc"));
        assert!(!m("plant/*/*/*/*/a*b*c", "plant/s/a/l/d/axxcyyb"));
        assert!(!m("plant/*/*/*/*/ab*ba", "plant/s/a/l/d/aba"));
        assert!(!m("Plant/#", "plant/s"));
        assert!(Glob::new("plant/#/x").is_err());
        assert!(Glob::new("plant/a**").is_err());
        assert!(Glob::new("").is_err());
    }

    #[test]
    fn invalid_configs_are_refused() {
        let cases = [
            (
                json!({ "rules": [{ "match": "#", "low": 5.0, "high": 1.0 }] }),
                "low 5 is above high 1",
            ),
            (
                json!({ "rules": [{ "match": "#", "max_rate_per_second": -1.0 }] }),
                "negative",
            ),
            (
                json!({ "rules": [{ "match": "a/#/b" }] }),
                "'#' is only allowed",
            ),
            (json!({ "rules": [{ "pattern": "#" }] }), "unknown field"),
            (json!({ "out_of_range": "drop" }), "unknown variant"),
            (json!({ "nan": "ignore" }), "unknown variant"),
            (json!({ "stale_after_ms": -5 }), "invalid config"),
            (json!({ "limits": [] }), "unknown field"),
        ];
        for (config, expected) in cases {
            match Harness::<Validator>::new(config.clone()) {
                Ok(_) => panic!("{config} accepted"),
                Err(e) => assert!(e.contains(expected), "{config}: {e}"),
            }
        }
    }

    #[test]
    fn info_declares_columns_and_reasons() {
        let h = harness(json!({}));
        let info = h.info();
        assert_eq!(info.name, "validator");
        assert_eq!(
            info.reads,
            Columns::VALUES | Columns::QUALITY | Columns::TIMESTAMPS
        );
        assert_eq!(info.writes, Columns::QUALITY);
        let reasons: Vec<(u16, &str)> = info
            .reasons
            .iter()
            .map(|r| (r.code, r.name.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (1, "below-low-limit"),
                (2, "above-high-limit"),
                (3, "rate-of-change"),
                (4, "not-a-number"),
                (5, "bad-quality"),
                (6, "out-of-order"),
                (7, "interlock"),
            ]
        );
    }

    #[test]
    fn readme_example_works() {
        let mut h = harness(ferrule_sdk::testing::readme_stage_config(include_str!(
            "../README.md"
        )));
        let d = h.on_tag(&TagInfo::new(0, "p").path("plant/site1/a/l/press4/pressure"));
        assert_eq!(d.accepted().unwrap().limits.unwrap().high, Some(25000.0));
        // The lab rule comes first and sets no limits.
        let d = h.on_tag(&TagInfo::new(1, "t").path("plant/site1/lab/l/oven/temperature"));
        assert_eq!(d, TagDecision::keep());
        let out = run(&mut h, &[good(0, 30000.0, S)]);
        assert!(out.rejected.is_empty());
        assert_eq!(out.quality.unwrap(), vec![Quality::UNCERTAIN_EU_EXCEEDED.0]);
    }
}
