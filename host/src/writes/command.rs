//! The command model: what a command source hands in (`Command`, parsed from a JSON
//! payload), and the record of what became of it (`WriteRecord`), which is at once the reply,
//! the audit line and the admin view's entry.

use serde::{Deserialize, Serialize};

use crate::model::{now_ns, ExtraValue};

/// A write request, as a command source received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// Unique per command (given by the requester, or made up on receipt).
    pub id: String,
    /// The tag's normalized path.
    pub path: String,
    /// The requested value, in the tag's normalized unit (NaN for text).
    pub value: f64,
    /// Text, or an integer a double cannot hold exactly.
    pub extra: Option<ExtraValue>,
    /// Compare-and-set: write only if the device's current value equals this.
    pub expected_current: Option<f64>,
    pub requester: String,
    /// Not executed after this time (ns since the Unix epoch).
    pub deadline_ns: u64,
    /// Everything but the write.
    pub dry_run: bool,
    /// When the command source received it (ns since the Unix epoch).
    pub received_ns: u64,
    /// Where it came from (`mqtt <topic>`), for the audit.
    pub channel: String,
}

/// The JSON payload of a command.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CommandPayload {
    #[serde(default)]
    pub id: Option<String>,
    /// Overrides the path the channel gives (e.g. the topic); must agree with it if both.
    #[serde(default)]
    pub path: Option<String>,
    /// A number, a boolean (1/0) or a text.
    pub value: serde_json::Value,
    #[serde(default)]
    pub expected_current: Option<f64>,
    pub requester: String,
    /// Absolute deadline, ms since the Unix epoch.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub dry_run: bool,
}

/// Parses a command payload; `channel_path` is the path the channel names (the topic), if
/// any. The error is the reason in words.
pub fn parse(
    payload: &[u8],
    channel_path: Option<&str>,
    channel: &str,
    default_deadline_ms: u64,
) -> Result<Command, (Option<String>, String)> {
    let received_ns = now_ns();
    let p: CommandPayload = serde_json::from_slice(payload)
        .map_err(|e| (None, format!("the payload is not a command: {e}")))?;
    let id =
        p.id.clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("cmd-{received_ns:x}"));
    let fail = |m: String| (Some(id.clone()), m);
    let path = match (p.path.as_deref(), channel_path) {
        (Some(a), Some(b)) if a != b => {
            return Err(fail(format!(
                "`path` {a} disagrees with the path {b} the channel names"
            )))
        }
        (Some(a), _) | (None, Some(a)) => a.to_string(),
        (None, None) => return Err(fail("no `path` given".into())),
    };
    if p.requester.trim().is_empty() {
        return Err(fail("`requester` must not be empty".into()));
    }
    let (value, extra) = match &p.value {
        serde_json::Value::Bool(b) => (if *b { 1.0 } else { 0.0 }, None),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64().filter(|u| *u > 1 << 53) {
                (u as f64, Some(ExtraValue::Unsigned(u)))
            } else if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() > 1 << 53) {
                (i as f64, Some(ExtraValue::Signed(i)))
            } else {
                (n.as_f64().unwrap_or(f64::NAN), None)
            }
        }
        serde_json::Value::String(s) => (f64::NAN, Some(ExtraValue::Text(s.clone()))),
        other => {
            return Err(fail(format!(
                "`value` must be a number, bool or text, not {other}"
            )))
        }
    };
    let deadline_ns = match p.deadline_ms {
        Some(ms) => ms.saturating_mul(1_000_000),
        None => received_ns + default_deadline_ms * 1_000_000,
    };
    Ok(Command {
        id,
        path,
        value,
        extra,
        expected_current: p.expected_current,
        requester: p.requester,
        deadline_ns,
        dry_run: p.dry_run,
        received_ns,
        channel: channel.to_string(),
    })
}

/// What became of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Written, and the device reads back the value written.
    Verified,
    /// Written, but the device reads back something else.
    Mismatch,
    /// Sent, but whether the device holds the value is not known (no read-back answer, the
    /// write timed out or the connection went mid-write).
    Unverified,
    /// The device refused the write (an exception, a bad status): nothing was written.
    Failed,
    /// Refused by a safety check: nothing was sent to the device.
    Refused,
    /// Every check passed; not written because of `dry_run`.
    DryRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::Mismatch => "mismatch",
            Outcome::Unverified => "unverified",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::DryRun => "dry-run",
        }
    }
}

/// Why a command was refused (or failed), one code per check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum ReasonCode {
    /// The payload is not a command.
    Malformed,
    /// Past its deadline: not executed.
    DeadlineExpired,
    /// No tag has this normalized path (or it has not produced a sample yet).
    UnknownTag,
    /// More than one tag has this path.
    AmbiguousTag,
    /// The tag's source does not list the path in `writes.sources.<source>.allow`.
    NotAllowListed,
    /// The tag does not map to exactly one writable device address.
    NotWritable,
    /// A stage's `on-command` refused it.
    RefusedByStage,
    /// The value does not fit the device type.
    InvalidValue,
    /// The tag's rate limit.
    TagRateLimited,
    /// The global rate limit.
    GlobalRateLimited,
    /// The device's current value is not `expected_current`.
    CompareAndSetFailed,
    /// The device could not be read before the write (nothing was sent).
    DeviceUnavailable,
    /// The write got an error answer or none.
    WriteFailed,
    /// The read-back failed.
    ReadBackFailed,
    /// The read-back differs from what was written.
    ReadBackDiffers,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub detail: String,
    /// The stage that refused (for `refused-by-stage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// A device value as the record shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueView {
    /// The value in the device's unit (null for text).
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The device representation (registers, bit, typed value).
    pub raw: String,
}

/// Microseconds spent per step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub checks_us: u64,
    pub command_plane_us: u64,
    pub device_wait_us: u64,
    pub read_us: u64,
    pub write_us: u64,
    pub read_back_us: u64,
    pub total_us: u64,
}

/// The record of one command: the reply, the audit line and the admin view's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteRecord {
    pub id: String,
    pub requester: String,
    pub path: String,
    pub channel: String,
    pub received_ns: u64,
    /// The value requested (number, or text), in the path's unit.
    pub requested: serde_json::Value,
    #[serde(default)]
    pub expected_current: Option<f64>,
    pub dry_run: bool,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub vendor_path: Option<String>,
    /// The one device address the tag maps to.
    #[serde(default)]
    pub address: Option<String>,
    /// The value for the device, in its unit, after the command plane.
    #[serde(default)]
    pub device_value: Option<f64>,
    /// The device's value before the write.
    #[serde(default)]
    pub old: Option<ValueView>,
    /// The value written (its device representation) and read back.
    #[serde(default)]
    pub written: Option<String>,
    #[serde(default)]
    pub read_back: Option<ValueView>,
    /// The checks passed, in order.
    pub checks: Vec<String>,
    pub outcome: Outcome,
    #[serde(default)]
    pub reason: Option<Reason>,
    pub timings: Timings,
}

/// A JSON view of a requested value.
pub fn requested_json(value: f64, extra: Option<&ExtraValue>) -> serde_json::Value {
    match extra {
        Some(ExtraValue::Text(t)) => serde_json::Value::String(t.clone()),
        Some(ExtraValue::Signed(i)) => serde_json::json!(i),
        Some(ExtraValue::Unsigned(u)) => serde_json::json!(u),
        None => serde_json::Number::from_f64(value)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_bad_ones_say_why() {
        let c = parse(
            br#"{"id":"c1","value":2.5,"requester":"mes","expected_current":1.0,"deadline_ms":5}"#,
            Some("plant/a/b/c/d/sp"),
            "mqtt",
            1000,
        )
        .unwrap();
        assert_eq!(
            (c.id.as_str(), c.path.as_str(), c.value, c.expected_current),
            ("c1", "plant/a/b/c/d/sp", 2.5, Some(1.0))
        );
        assert_eq!(c.deadline_ns, 5_000_000);
        let t = parse(
            br#"{"value":"AB","requester":"x","path":"p"}"#,
            None,
            "m",
            1000,
        )
        .unwrap();
        assert_eq!(t.extra, Some(ExtraValue::Text("AB".into())));
        assert!(t.deadline_ns > t.received_ns);
        let (id, why) = parse(
            br#"{"value":1,"requester":"x","path":"p"}"#,
            Some("q"),
            "m",
            1,
        )
        .unwrap_err();
        assert!(id.is_some() && why.contains("disagrees"), "{why}");
        assert!(parse(b"{", None, "m", 1)
            .unwrap_err()
            .1
            .contains("not a command"));
        assert!(parse(br#"{"value":1,"path":"p"}"#, None, "m", 1)
            .unwrap_err()
            .1
            .contains("requester"));
    }
}
