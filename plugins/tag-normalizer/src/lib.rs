//! # Tag normalizer
//!
//! Owns the **tag plane only**: it rewrites each vendor tag name into the plant topic spec
//! `plant/<site>/<area>/<line>/<device>/<metric>` (exactly six segments, lowercase, each
//! segment only `[a-z0-9_-]`). It never sees a sample: it declares no sample plane.
//!
//! A tag is normalised by, in order:
//!
//! 1. `exact`: a map from vendor path to the full normalised path (for the odd PLC address
//!    such as `PLC3:DB10.W4` that no pattern describes);
//! 2. `rules`, in order, first match wins: `pattern` is a regular expression with named
//!    captures, matched against the **whole** vendor path (it is anchored for you), and `path`
//!    is a template such as `plant/{site}/{area}/{line}/{device}/{metric}`.
//!
//! A tag that nothing matches, or whose template does not produce a valid path, is rejected
//! with a reason naming the vendor path and what went wrong.
//!
//! ## Template placeholders
//!
//! * `{name}`: the named capture `name` of the rule's pattern;
//! * `{meta.key}`: the value of metadata key `key` of the tag (e.g. `{meta.area}`);
//! * `{site}`: the capture `site` if the pattern has one and it matched something, otherwise
//!   the config's default `site`.
//!
//! ## How values become segments ([`sanitize_segment`])
//!
//! Every substituted value is mapped to the segment alphabet the same way:
//!
//! * ASCII letters are lowercased; `a-z`, `0-9`, `_` and `-` are kept;
//! * common accented Latin letters are transliterated (`ä` → `ae`, `ß` → `ss`, `é` → `e`,
//!   `Ø` → `o`, ...);
//! * a run of whitespace becomes one `_` (`Line 3` → `line_3`);
//! * a run of any other characters (`.`, `:`, `/`, `#`, `(`, `°`, other non-ASCII, ...),
//!   possibly mixed with whitespace, becomes one `-` (`DB10.W4` → `db10-w4`);
//! * such runs at the start or the end of the value are dropped (`Temp (°C)` → `temp-c`).
//!
//! A value that maps to nothing (e.g. `°`) leaves its segment empty, and the tag is rejected.
//! Literal text of a template is only lowercased: any other character outside `[a-z0-9_-]`
//! makes the config invalid. `exact` targets are not rewritten at all: they must already be
//! valid paths. Both are checked when the plugin starts, as is the shape of every template
//! (six segments, the first `plant`, every placeholder resolvable).

use std::collections::BTreeMap;

use ferrule_sdk::prelude::*;
use regex_lite::Regex;
use serde::Deserialize;

/// Number of segments of a normalised path.
pub const SEGMENTS: usize = 6;
/// First segment of every normalised path.
pub const ROOT: &str = "plant";
/// What each segment of a normalised path stands for (used in messages).
pub const SEGMENT_NAMES: [&str; SEGMENTS] = ["plant", "site", "area", "line", "device", "metric"];

/// Configuration of the tag normalizer (the stage's `config` table).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NormalizerConfig {
    /// Site used for `{site}` when a rule's pattern captures none. Mapped to the segment
    /// alphabet like any value (`Site 1` → `site_1`). Optional; a template that needs it
    /// without a `site` capture makes the config invalid.
    #[serde(default = "default_site")]
    pub site: Option<String>,
    /// Ordered rules; the first whose pattern matches the vendor path wins.
    #[serde(default = "default_rules")]
    pub rules: Vec<RuleConfig>,
    /// Vendor path → full normalised path, checked before the rules.
    #[serde(default = "default_exact")]
    pub exact: BTreeMap<String, String>,
}

/// One normalisation rule.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Regular expression with named captures such as `(?P<area>[^.]+)` or `(?<area>...)`,
    /// in the syntax of the `regex` crate (as implemented by `regex-lite`: `\d`, `\w`, `\s`
    /// and `(?i)` are ASCII-only, Unicode classes like `\p{L}` are not supported). It must
    /// match the whole vendor path: it is anchored as `^(?:pattern)$`.
    pub pattern: String,
    /// Template of the normalised path, e.g. `plant/{site}/{area}/{line}/{device}/{metric}`.
    pub path: String,
}

fn default_site() -> Option<String> {
    None
}
fn default_rules() -> Vec<RuleConfig> {
    Vec::new()
}
fn default_exact() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Maps `value` to the segment alphabet `[a-z0-9_-]` (see the crate docs), appending to `out`.
fn push_sanitized(out: &mut String, value: &str) {
    // Pending replacement for a run of characters outside the alphabet: '_' if the run was
    // only whitespace, '-' otherwise. Written only once a kept character follows it.
    let mut pending: Option<char> = None;
    let mut wrote = false;
    for c in value.chars() {
        let lower = c.to_ascii_lowercase();
        let mut buf = [0u8; 4];
        let kept: &str = if is_segment_char(lower) {
            lower.encode_utf8(&mut buf)
        } else if let Some(t) = transliterate(c) {
            t
        } else {
            if c.is_whitespace() {
                pending.get_or_insert('_');
            } else {
                pending = Some('-');
            }
            continue;
        };
        if let Some(p) = pending.take() {
            if wrote {
                out.push(p);
            }
        }
        out.push_str(kept);
        wrote = true;
    }
}

/// Lowercase ASCII spelling of common accented Latin letters.
fn transliterate(c: char) -> Option<&'static str> {
    Some(match c {
        'ä' | 'Ä' | 'æ' | 'Æ' => "ae",
        'ö' | 'Ö' | 'œ' | 'Œ' => "oe",
        'ü' | 'Ü' => "ue",
        'ß' => "ss",
        'à' | 'á' | 'â' | 'ã' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Å' => "a",
        'ç' | 'Ç' => "c",
        'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => "e",
        'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => "i",
        'ñ' | 'Ñ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ø' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ø' => "o",
        'ù' | 'ú' | 'û' | 'Ù' | 'Ú' | 'Û' => "u",
        'ý' | 'ÿ' | 'Ý' => "y",
        _ => return None,
    })
}

/// Maps a value to the segment alphabet `[a-z0-9_-]`, as the normalizer does for every
/// substituted value. May return an empty string.
pub fn sanitize_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    push_sanitized(&mut out, value);
    out
}

fn is_segment_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '_' | '-')
}

/// Checks that `path` is a valid normalised path: six non-empty `[a-z0-9_-]` segments,
/// the first being `plant`.
pub fn validate_path(path: &str) -> Result<(), String> {
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() != SEGMENTS {
        return Err(format!(
            "'{path}' has {} segments, a normalised path has {SEGMENTS} (plant/<site>/<area>/<line>/<device>/<metric>)",
            segments.len()
        ));
    }
    if segments[0] != ROOT {
        return Err(format!("'{path}' does not start with '{ROOT}/'"));
    }
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            return Err(format!("'{path}': segment {} is empty", SEGMENT_NAMES[i]));
        }
        if let Some(c) = seg.chars().find(|&c| !is_segment_char(c)) {
            return Err(format!(
                "'{path}': segment {} contains '{c}' (allowed: a-z 0-9 _ -)",
                SEGMENT_NAMES[i]
            ));
        }
    }
    Ok(())
}

/// A piece of one template segment.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Capture(String),
    Meta(String),
    /// `{site}`: the `site` capture if it matched, else the config default.
    Site,
}

/// A rule compiled at init.
#[derive(Debug)]
struct Rule {
    pattern_text: String,
    template_text: String,
    regex: Regex,
    segments: Vec<Vec<Part>>,
}

fn parse_template(
    template: &str,
    regex: &Regex,
    default_site: Option<&str>,
) -> Result<Vec<Vec<Part>>, String> {
    let captures: Vec<&str> = regex.capture_names().flatten().collect();
    let mut segments = Vec::new();
    for seg in template.split('/') {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = seg.chars();
        while let Some(c) = chars.next() {
            match c {
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => {
                                return Err(format!("unclosed '{{' in template '{template}'"))
                            }
                            Some(c) => name.push(c),
                        }
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    let part = if name == "site" {
                        if !captures.contains(&"site") && default_site.is_none() {
                            return Err(format!(
                                "template '{template}' uses {{site}} but the pattern has no `site` capture and the config no default `site`"
                            ));
                        }
                        Part::Site
                    } else if let Some(key) = name.strip_prefix("meta.") {
                        if key.is_empty() {
                            return Err(format!("empty metadata key in template '{template}'"));
                        }
                        Part::Meta(key.to_string())
                    } else if captures.contains(&name.as_str()) {
                        Part::Capture(name)
                    } else {
                        return Err(format!(
                            "template '{template}': {{{name}}} is neither a named capture of the pattern (has: {}), {{site}}, nor {{meta.<key>}}",
                            if captures.is_empty() { "none".to_string() } else { captures.join(", ") }
                        ));
                    };
                    parts.push(part);
                }
                '}' => return Err(format!("unmatched '}}' in template '{template}'")),
                'A'..='Z' => literal.push(c.to_ascii_lowercase()),
                c if is_segment_char(c) => literal.push(c),
                c => {
                    return Err(format!(
                        "template '{template}' contains '{c}' outside a placeholder (allowed: a-z 0-9 _ - /)"
                    ))
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        segments.push(parts);
    }
    if segments.len() != SEGMENTS {
        return Err(format!(
            "template '{template}' has {} segments, a normalised path has {SEGMENTS} (plant/<site>/<area>/<line>/<device>/<metric>)",
            segments.len()
        ));
    }
    if segments[0] != [Part::Literal(ROOT.to_string())] {
        return Err(format!("template '{template}' must start with '{ROOT}/'"));
    }
    Ok(segments)
}

/// The tag normalizer plugin.
#[derive(Debug)]
pub struct TagNormalizer {
    site: Option<String>,
    exact: BTreeMap<String, String>,
    rules: Vec<Rule>,
}

impl TagNormalizer {
    /// Builds the normalizer from its typed config.
    pub fn from_config(config: NormalizerConfig) -> Result<Self, String> {
        let site = match config.site {
            Some(s) => {
                let clean = sanitize_segment(&s);
                if clean.is_empty() {
                    return Err(format!("site '{s}' has no usable characters (a-z 0-9 _ -)"));
                }
                Some(clean)
            }
            None => None,
        };
        if config.rules.is_empty() && config.exact.is_empty() {
            return Err(
                "no `rules` and no `exact` entries: every tag would be rejected".to_string(),
            );
        }
        for (vendor, path) in &config.exact {
            validate_path(path).map_err(|e| format!("exact entry for '{vendor}': {e}"))?;
        }
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, r) in config.rules.iter().enumerate() {
            let n = i + 1;
            let regex = Regex::new(&format!("^(?:{})$", r.pattern))
                .map_err(|e| format!("rule {n}: invalid pattern '{}': {e}", r.pattern))?;
            let segments = parse_template(&r.path, &regex, site.as_deref())
                .map_err(|e| format!("rule {n}: {e}"))?;
            rules.push(Rule {
                pattern_text: r.pattern.clone(),
                template_text: r.path.clone(),
                regex,
                segments,
            });
        }
        Ok(TagNormalizer {
            site,
            exact: config.exact,
            rules,
        })
    }

    /// The normalised path for a vendor path and its metadata, or why there is none.
    pub fn normalize(&self, tag: &TagInfo) -> Result<String, String> {
        let vendor = tag.vendor_path.as_str();
        if let Some(path) = self.exact.get(vendor) {
            return Ok(path.clone());
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let Some(caps) = rule.regex.captures(vendor) else {
                continue;
            };
            return self.render(rule, &caps, tag).map_err(|e| {
                format!(
                    "vendor path '{vendor}' matched rule {} (pattern '{}') but template '{}' gives no valid path: {e}",
                    i + 1,
                    rule.pattern_text,
                    rule.template_text
                )
            });
        }
        Err(format!(
            "vendor path '{vendor}' matches no `exact` entry and no rule"
        ))
    }

    fn render(
        &self,
        rule: &Rule,
        caps: &regex_lite::Captures<'_>,
        tag: &TagInfo,
    ) -> Result<String, String> {
        let mut path = String::with_capacity(tag.vendor_path.len() + 16);
        for (i, seg) in rule.segments.iter().enumerate() {
            if i > 0 {
                path.push('/');
            }
            let start = path.len();
            for part in seg {
                match part {
                    Part::Literal(s) => path.push_str(s),
                    Part::Capture(name) => match caps.name(name) {
                        Some(m) => push_sanitized(&mut path, m.as_str()),
                        None => {
                            return Err(format!(
                                "capture '{name}' did not participate in the match"
                            ))
                        }
                    },
                    Part::Meta(key) => match tag.metadata_value(key) {
                        Some(v) => push_sanitized(&mut path, v),
                        None => return Err(format!("metadata key '{key}' is missing")),
                    },
                    Part::Site => {
                        let captured = caps
                            .name("site")
                            .map(|m| m.as_str())
                            .filter(|s| !s.is_empty());
                        match (captured, &self.site) {
                            (Some(s), _) => push_sanitized(&mut path, s),
                            (None, Some(s)) => path.push_str(s),
                            (None, None) => {
                                return Err(
                                    "no site: the pattern captured none and the config has no default `site`"
                                        .to_string(),
                                )
                            }
                        }
                    }
                }
            }
            if path.len() == start {
                return Err(format!(
                    "segment {} is empty (its value has no usable characters)",
                    SEGMENT_NAMES[i]
                ));
            }
        }
        debug_assert!(validate_path(&path).is_ok(), "{path}");
        Ok(path)
    }
}

impl Plugin for TagNormalizer {
    fn info() -> PluginInfo {
        PluginInfo::new("tag-normalizer", env!("CARGO_PKG_VERSION"))
            .description(
                "Rewrites vendor tag names (Site1.Area2.Line3.Press4.Pressure, PLC3:DB10.W4) into \
                 plant/<site>/<area>/<line>/<device>/<metric>. Tag plane only.",
            )
            .config_key(
                "site",
                "Default site for {site} when a rule's pattern captures none.",
                false,
            )
            .config_key(
                "rules",
                "Ordered list of {pattern, path}: pattern is an anchored regex with named \
                 captures matched against the vendor path; path a template using {capture}, \
                 {meta.key} and {site}. First match wins.",
                false,
            )
            .config_key(
                "exact",
                "Map vendor path -> full normalised path, checked before the rules.",
                false,
            )
    }

    fn init(config: Config) -> Result<Self, String> {
        TagNormalizer::from_config(config.parse()?)
    }

    fn on_tag(&mut self, tag: &TagInfo) -> TagDecision {
        match self.normalize(tag) {
            Ok(path) => TagDecision::keep().with_path(path),
            Err(reason) => TagDecision::reject(reason),
        }
    }
}

export_plugin!(TagNormalizer);

#[cfg(test)]
mod tests {
    use super::*;
    use ferrule_sdk::testing::Harness;
    use serde_json::json;

    const DOTTED: &str =
        r"(?P<site>[^.]+)\.(?P<area>[^.]+)\.(?P<line>[^.]+)\.(?P<device>[^.]+)\.(?P<metric>[^.]+)";

    fn harness(config: serde_json::Value) -> Harness<TagNormalizer> {
        Harness::new(config).expect("config accepted")
    }

    fn path_of(d: &TagDecision) -> &str {
        d.accepted()
            .unwrap_or_else(|| panic!("expected accept, got {d:?}"))
            .path
            .as_deref()
            .expect("path set")
    }

    fn reason_of(d: &TagDecision) -> &str {
        match d {
            TagDecision::Reject(r) => r,
            other => panic!("expected reject, got {other:?}"),
        }
    }

    fn init_err(config: serde_json::Value) -> String {
        match Harness::<TagNormalizer>::new(config) {
            Ok(_) => panic!("config should be refused"),
            Err(e) => e,
        }
    }

    #[test]
    fn dotted_vendor_path_becomes_topic() {
        let mut h = harness(json!({
            "rules": [{ "pattern": DOTTED, "path": "plant/{site}/{area}/{line}/{device}/{metric}" }]
        }));
        let d = h.on_tag(&TagInfo::new(1, "Site1.Area2.Line3.Press4.Pressure"));
        assert_eq!(path_of(&d), "plant/site1/area2/line3/press4/pressure");
        // Only the path changes.
        let a = d.accepted().unwrap();
        assert_eq!(
            (a.unit.as_ref(), a.limits, a.enrichment.len()),
            (None, None, 0)
        );
    }

    #[test]
    fn plc_address_via_exact() {
        let mut h = harness(json!({
            "exact": { "PLC3:DB10.W4": "plant/site1/area2/line3/plc3/db10_w4" }
        }));
        let d = h.on_tag(&TagInfo::new(7, "PLC3:DB10.W4"));
        assert_eq!(path_of(&d), "plant/site1/area2/line3/plc3/db10_w4");
    }

    #[test]
    fn plc_address_via_metadata_rule() {
        let mut h = harness(json!({
            "site": "Site1",
            "rules": [{
                "pattern": r"(?P<plc>PLC\d+):(?P<addr>.+)",
                "path": "plant/{site}/{meta.area}/{meta.line}/{plc}/{addr}"
            }]
        }));
        let tag = TagInfo::new(3, "PLC3:DB10.W4")
            .meta("area", "Area 2")
            .meta("line", "Line3");
        assert_eq!(
            path_of(&h.on_tag(&tag)),
            "plant/site1/area_2/line3/plc3/db10-w4"
        );

        // Without the metadata the tag is refused, naming the key and the vendor path.
        let d = h.on_tag(&TagInfo::new(4, "PLC3:DB10.W6").meta("line", "Line3"));
        let r = reason_of(&d);
        assert!(r.contains("PLC3:DB10.W6"), "{r}");
        assert!(r.contains("metadata key 'area' is missing"), "{r}");
    }

    #[test]
    fn exact_is_checked_before_rules() {
        let mut h = harness(json!({
            "exact": { "S.A.L.D.M": "plant/x/y/z/d/m" },
            "rules": [{ "pattern": DOTTED, "path": "plant/{site}/{area}/{line}/{device}/{metric}" }]
        }));
        assert_eq!(
            path_of(&h.on_tag(&TagInfo::new(1, "S.A.L.D.M"))),
            "plant/x/y/z/d/m"
        );
        assert_eq!(
            path_of(&h.on_tag(&TagInfo::new(2, "S.A.L.D.N"))),
            "plant/s/a/l/d/n"
        );
    }

    #[test]
    fn first_matching_rule_wins_and_default_site_fills_in() {
        let mut h = harness(json!({
            "site": "Main Site",
            "rules": [
                { "pattern": r"(?P<line>Line\d+)\.(?P<device>\w+)\.Temp", "path": "plant/{site}/thermal/{line}/{device}/temperature" },
                { "pattern": r"(?P<line>Line\d+)\.(?P<device>\w+)\.(?P<metric>\w+)", "path": "plant/{site}/general/{line}/{device}/{metric}" }
            ]
        }));
        assert_eq!(
            path_of(&h.on_tag(&TagInfo::new(1, "Line1.Oven2.Temp"))),
            "plant/main_site/thermal/line1/oven2/temperature"
        );
        assert_eq!(
            path_of(&h.on_tag(&TagInfo::new(2, "Line1.Oven2.Speed"))),
            "plant/main_site/general/line1/oven2/speed"
        );
    }

    #[test]
    fn captured_site_wins_over_default() {
        let mut h = harness(json!({
            "site": "fallback",
            "rules": [{ "pattern": DOTTED, "path": "plant/{site}/{area}/{line}/{device}/{metric}" }]
        }));
        assert_eq!(
            path_of(&h.on_tag(&TagInfo::new(1, "North.A.L.D.M"))),
            "plant/north/a/l/d/m"
        );
    }

    #[test]
    fn pattern_must_match_whole_vendor_path() {
        let mut h = harness(json!({
            "site": "s",
            "rules": [{ "pattern": r"(?P<device>Press\d)", "path": "plant/{site}/a/l/{device}/pressure" }]
        }));
        assert_eq!(
            path_of(&h.on_tag(&TagInfo::new(1, "Press4"))),
            "plant/s/a/l/press4/pressure"
        );
        let d = h.on_tag(&TagInfo::new(2, "Line1.Press4.Extra"));
        let r = reason_of(&d);
        assert!(r.contains("'Line1.Press4.Extra'"), "{r}");
        assert!(r.contains("no rule"), "{r}");
    }

    #[test]
    fn unmatched_tag_is_rejected_naming_the_vendor_path() {
        let mut h = harness(json!({
            "rules": [{ "pattern": DOTTED, "path": "plant/{site}/{area}/{line}/{device}/{metric}" }]
        }));
        let d = h.on_tag(&TagInfo::new(9, "weird tag"));
        assert!(d.is_reject());
        assert!(reason_of(&d).contains("'weird tag'"));
    }

    #[test]
    fn value_that_sanitizes_to_nothing_is_rejected() {
        let mut h = harness(json!({
            "rules": [{ "pattern": DOTTED, "path": "plant/{site}/{area}/{line}/{device}/{metric}" }]
        }));
        let d = h.on_tag(&TagInfo::new(1, "S.A.L.D.°°"));
        let r = reason_of(&d);
        assert!(r.contains("segment metric is empty"), "{r}");
        assert!(r.contains("rule 1"), "{r}");
    }

    #[test]
    fn optional_capture_that_did_not_match_is_rejected() {
        let mut h = harness(json!({
            "site": "s",
            "rules": [{ "pattern": r"(?P<device>\w+)(?:#(?P<metric>\w+))?", "path": "plant/{site}/a/l/{device}/{metric}" }]
        }));
        assert_eq!(
            path_of(&h.on_tag(&TagInfo::new(1, "Pump#Flow"))),
            "plant/s/a/l/pump/flow"
        );
        let d = h.on_tag(&TagInfo::new(2, "Pump"));
        assert!(reason_of(&d).contains("capture 'metric' did not participate"));
    }

    #[test]
    fn sanitization_table() {
        for (input, expected) in [
            ("Press4", "press4"),
            ("Line 3", "line_3"),
            ("  Line   3  ", "line_3"),
            ("DB10.W4", "db10-w4"),
            ("Temp (°C)", "temp-c"),
            ("flow_rate-2", "flow_rate-2"),
            ("A / B", "a-b"),
            ("Ölpumpe", "oelpumpe"),
            ("Pumpe-Ø1", "pumpe-o1"),
            ("Druck µ", "druck"),
            ("a\u{2013}b", "a-b"),
            ("°", ""),
            ("", ""),
        ] {
            assert_eq!(sanitize_segment(input), expected, "{input:?}");
        }
    }

    #[test]
    fn template_literals_are_lowercased_and_parts_combine() {
        let mut h = harness(json!({
            "site": "s",
            "rules": [{ "pattern": r"(?P<n>\d+)\.(?P<m>\w+)", "path": "plant/{site}/Area-1/line{n}/dev_{n}/{m}" }]
        }));
        assert_eq!(
            path_of(&h.on_tag(&TagInfo::new(1, "7.Speed"))),
            "plant/s/area-1/line7/dev_7/speed"
        );
    }

    #[test]
    fn matches_vendor_path_not_current_path() {
        let mut h = harness(json!({
            "rules": [{ "pattern": DOTTED, "path": "plant/{site}/{area}/{line}/{device}/{metric}" }]
        }));
        let tag = TagInfo::new(1, "S.A.L.D.M").path("something/else");
        assert_eq!(path_of(&h.on_tag(&tag)), "plant/s/a/l/d/m");
    }

    #[test]
    fn invalid_configs_are_refused_at_init() {
        let rule =
            |pattern: &str, path: &str| json!({ "rules": [{ "pattern": pattern, "path": path }] });
        let cases = [
            (json!({}), "no `rules`"),
            (json!({ "site": "s", "rule": [] }), "unknown field"),
            (rule("(?P<a>", "plant/x/a/l/d/m"), "invalid pattern"),
            (
                rule(DOTTED, "plant/{site}/{area}/{line}/{device}"),
                "has 5 segments",
            ),
            (
                rule(DOTTED, "plants/{site}/{area}/{line}/{device}/{metric}"),
                "must start with 'plant/'",
            ),
            (
                rule(DOTTED, "plant/{site}/{area}/{line}/{device}/{nope}"),
                "{nope} is neither",
            ),
            (
                rule(DOTTED, "plant/{site}/{area}/{line}/{device}/{metric"),
                "unclosed",
            ),
            (
                rule(DOTTED, "plant/{site}/{area}/{line}/{device}/m.x"),
                "contains '.'",
            ),
            (
                rule(r"(?P<d>\w+)", "plant/{site}/a/l/{d}/m"),
                "no `site` capture",
            ),
            (
                json!({ "exact": { "X": "plant/a/b/c/d" } }),
                "has 5 segments",
            ),
            (
                json!({ "exact": { "X": "plant/a/B/c/d/e" } }),
                "contains 'B'",
            ),
            (
                json!({ "site": "°", "exact": { "X": "plant/a/b/c/d/e" } }),
                "no usable characters",
            ),
            (
                json!({ "rules": [{ "pattern": DOTTED }] }),
                "missing field `path`",
            ),
        ];
        for (config, expected) in cases {
            let err = init_err(config.clone());
            assert!(err.contains(expected), "{config}: {err}");
        }
    }

    #[test]
    fn info_describes_a_tag_plane_plugin() {
        let h = harness(json!({ "exact": { "X": "plant/a/b/c/d/e" } }));
        let info = h.info();
        assert_eq!(info.name, "tag-normalizer");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.planes, Planes::TAG);
        let keys: Vec<&str> = info.config_keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(keys, ["site", "rules", "exact"]);
    }

    #[test]
    fn validate_path_accepts_only_the_topic_spec() {
        assert!(validate_path("plant/site1/area2/line3/press4/pressure").is_ok());
        assert!(validate_path("plant/site1/area2/line3/press4").is_err());
        assert!(validate_path("plant/site1/area2/line3/press4/pressure/x").is_err());
        assert!(validate_path("plant/site1//line3/press4/pressure").is_err());
        assert!(validate_path("factory/site1/area2/line3/press4/pressure").is_err());
        assert!(validate_path("plant/site1/area2/line3/press4/Pressure").is_err());
    }

    #[test]
    fn readme_example_works() {
        let mut h = harness(ferrule_sdk::testing::readme_stage_config(include_str!(
            "../README.md"
        )));
        assert_eq!(
            path_of(&h.on_tag(&TagInfo::new(1, "Site1.Area2.Line3.Press4.Pressure"))),
            "plant/site1/area2/line3/press4/pressure"
        );
        let plc = TagInfo::new(2, "PLC7:DB1.W2")
            .meta("area", "Area 2")
            .meta("line", "Line3");
        assert_eq!(
            path_of(&h.on_tag(&plc)),
            "plant/site1/area_2/line3/plc7/db1-w2"
        );
        assert_eq!(
            path_of(&h.on_tag(&TagInfo::new(3, "PLC3:DB10.W4"))),
            "plant/site1/area2/line3/press4/pressure"
        );
    }
}
