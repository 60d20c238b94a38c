//! The sample payload contract `ferrule.sample.v1`, one for every transport: rendered by the
//! MQTT and Kafka sinks, parsed by the MQTT and Kafka sources. On MQTT the topic is the tag's
//! path; on Kafka the record key is.
//!
//! One sample:
//! `{"value":612.3,"unit":"kPa","quality":"good","status":0,"ts_ns":1764070000000000000,
//!   "vendor_path":"Site1.Area1.Line1.Press1.Pressure","meta":{"asset_id":"P-1"}}`
//!
//! Several samples of one tag (the batch form, used when a buffered batch holds more than one
//! sample of a tag, i.e. for high-rate tags):
//! `{"unit":"kPa","vendor_path":"…","meta":{…},"samples":[{"value":1.5,"quality":"good",
//!   "status":0,"ts_ns":…},…]}`
//!
//! `value` is a number, or null for NaN/infinite; text values and integers beyond 2^53 travel
//! as `"text"` / `"int"` beside it. `quality` is the severity word and `status` the full
//! OPC UA status code. `vendor_path` and `meta` are optional.

use std::fmt::Write;

use crate::model::ResolvedTag;
use crate::model::{ExtraValue, Quality};

/// Contract name, sent as the MQTT 5 user property `contract`.
pub const CONTRACT: &str = "ferrule.sample.v1";

/// The publisher sequence beside the payload (MQTT 5 user properties, Kafka headers): the
/// sinks stamp it, the sources check it. The publisher id, its epoch (changes only when the
/// publisher's durable state is lost) and the number (1, 2, 3, … per publisher and epoch;
/// in Kafka per topic-partition).
pub const PUBLISHER_PROPERTY: &str = "ferrule-pub";
pub const EPOCH_PROPERTY: &str = "ferrule-epoch";
pub const SEQ_PROPERTY: &str = "ferrule-seq";

/// One sample as rendered or parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct WireSample {
    pub value: f64,
    pub extra: Option<ExtraValue>,
    pub status: u32,
    pub ts_ns: u64,
}

fn json_str(out: &mut String, s: &str) {
    // serde_json escapes exactly as JSON requires.
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
}

/// The tag's constant fields (`"unit":…,"vendor_path":…,"meta":{…}`), rendered once per tag.
pub fn tag_fields(tag: &ResolvedTag, include_metadata: bool) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("\"unit\":");
    json_str(&mut out, &tag.unit);
    if include_metadata {
        out.push_str(",\"vendor_path\":");
        json_str(&mut out, &tag.vendor_path);
        if !tag.metadata.is_empty() {
            out.push_str(",\"meta\":{");
            for (i, (k, v)) in tag.metadata.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_str(&mut out, k);
                out.push(':');
                json_str(&mut out, v);
            }
            out.push('}');
        }
    }
    out
}

fn sample_fields(out: &mut String, s: &WireSample) {
    out.push_str("\"value\":");
    if s.value.is_finite() {
        let _ = write!(out, "{}", s.value);
    } else {
        out.push_str("null");
    }
    match &s.extra {
        Some(ExtraValue::Text(t)) => {
            out.push_str(",\"text\":");
            json_str(out, t);
        }
        Some(ExtraValue::Signed(i)) => {
            let _ = write!(out, ",\"int\":{i}");
        }
        Some(ExtraValue::Unsigned(u)) => {
            let _ = write!(out, ",\"int\":{u}");
        }
        None => {}
    }
    let _ = write!(
        out,
        ",\"quality\":\"{}\",\"status\":{},\"ts_ns\":{}",
        Quality(s.status).level(),
        s.status,
        s.ts_ns
    );
}

/// A payload for one sample (`samples.len() == 1`) or the batch form.
pub fn render(tag_fields: &str, samples: &[WireSample]) -> Vec<u8> {
    let mut out = String::with_capacity(96 + tag_fields.len() + samples.len() * 80);
    out.push('{');
    if let [one] = samples {
        sample_fields(&mut out, one);
        out.push(',');
        out.push_str(tag_fields);
    } else {
        out.push_str(tag_fields);
        out.push_str(",\"samples\":[");
        for (i, s) in samples.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('{');
            sample_fields(&mut out, s);
            out.push('}');
        }
        out.push(']');
    }
    out.push('}');
    out.into_bytes()
}

/// A parsed payload: the tag's fields and its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The payload's `path` when it is a string (the Kafka source's fallback for a record
    /// without a key).
    pub path: Option<String>,
    pub unit: String,
    pub vendor_path: Option<String>,
    pub meta: Vec<(String, String)>,
    pub samples: Vec<WireSample>,
}

impl Parsed {
    /// The tag a source registers for a payload that arrived for `path` (its MQTT topic or
    /// Kafka key): text if any sample carries text, otherwise a double; the payload's
    /// `vendor_path` is kept as `origin_vendor_path` metadata.
    pub fn descriptor(&self, source: &str, path: &str) -> crate::model::TagDescriptor {
        let text = self
            .samples
            .iter()
            .any(|s| matches!(s.extra, Some(ExtraValue::Text(_))));
        let mut metadata = self.meta.clone();
        if let Some(v) = &self.vendor_path {
            metadata.push(("origin_vendor_path".into(), v.clone()));
        }
        crate::model::TagDescriptor {
            source: source.to_string(),
            vendor_path: path.to_string(),
            unit: self.unit.clone(),
            data_type: if text {
                crate::model::DataType::Text
            } else {
                crate::model::DataType::Float64
            },
            metadata,
        }
    }

    /// Appends the samples to `batch` as tag `id`, in order.
    pub fn append_to(self, id: crate::model::TagId, batch: &mut crate::model::SampleBatch) {
        for s in self.samples {
            let index = batch.len() as u32;
            batch.push(id, s.value, Quality(s.status), s.ts_ns);
            if let Some(value) = s.extra {
                batch.extras.push(crate::model::Extra { index, value });
            }
        }
    }
}

/// Why a payload was refused: a stable reason name and a detail naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct PayloadError {
    /// `malformed-json`, `schema` or `oversize`.
    pub reason: &'static str,
    pub detail: String,
}

fn schema(detail: String) -> PayloadError {
    PayloadError {
        reason: "schema",
        detail,
    }
}

fn parse_sample(
    o: &serde_json::Map<String, serde_json::Value>,
    at: &str,
) -> Result<WireSample, PayloadError> {
    use serde_json::Value;
    let value = match o.get("value") {
        Some(Value::Number(n)) => n
            .as_f64()
            .ok_or_else(|| schema(format!("{at}value: not a number")))?,
        Some(Value::Null) => f64::NAN,
        Some(other) => {
            return Err(schema(format!(
                "{at}value: expected a number or null, got {}",
                kind(other)
            )))
        }
        None => return Err(schema(format!("{at}value: missing"))),
    };
    let extra = match (o.get("text"), o.get("int")) {
        (Some(Value::String(t)), _) => Some(ExtraValue::Text(t.clone())),
        (Some(other), _) => {
            return Err(schema(format!(
                "{at}text: expected a string, got {}",
                kind(other)
            )))
        }
        (None, Some(Value::Number(n))) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Some(ExtraValue::Signed(i)),
            (None, Some(u)) => Some(ExtraValue::Unsigned(u)),
            _ => return Err(schema(format!("{at}int: not an integer"))),
        },
        (None, Some(other)) => {
            return Err(schema(format!(
                "{at}int: expected an integer, got {}",
                kind(other)
            )))
        }
        (None, None) => None,
    };
    let status = match (o.get("status"), o.get("quality")) {
        (Some(Value::Number(n)), _) => n
            .as_u64()
            .filter(|s| *s <= u32::MAX as u64)
            .ok_or_else(|| schema(format!("{at}status: not a 32-bit status code")))?
            as u32,
        (Some(other), _) => {
            return Err(schema(format!(
                "{at}status: expected a number, got {}",
                kind(other)
            )))
        }
        (None, Some(Value::String(q))) => match q.as_str() {
            "good" => Quality::GOOD.0,
            "uncertain" => Quality::UNCERTAIN.0,
            "bad" => Quality::BAD.0,
            other => {
                return Err(schema(format!(
                    "{at}quality: `{other}` is not good, uncertain or bad"
                )))
            }
        },
        (None, Some(other)) => {
            return Err(schema(format!(
                "{at}quality: expected a string, got {}",
                kind(other)
            )))
        }
        (None, None) => Quality::GOOD.0,
    };
    let ts_ns = match o.get("ts_ns") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| schema(format!("{at}ts_ns: not a non-negative integer")))?,
        Some(other) => {
            return Err(schema(format!(
                "{at}ts_ns: expected an integer, got {}",
                kind(other)
            )))
        }
        None => return Err(schema(format!("{at}ts_ns: missing"))),
    };
    Ok(WireSample {
        value,
        extra,
        status,
        ts_ns,
    })
}

fn kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a payload in either form, refusing anything off the documented shape.
pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<Parsed, PayloadError> {
    use serde_json::Value;
    if bytes.len() > max_bytes {
        return Err(PayloadError {
            reason: "oversize",
            detail: format!("{} bytes, limit {max_bytes}", bytes.len()),
        });
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| PayloadError {
        reason: "malformed-json",
        detail: e.to_string(),
    })?;
    let Value::Object(o) = v else {
        return Err(schema(format!("expected an object, got {}", kind(&v))));
    };
    let unit = match o.get("unit") {
        Some(Value::String(u)) => u.clone(),
        Some(other) => {
            return Err(schema(format!(
                "unit: expected a string, got {}",
                kind(other)
            )))
        }
        None => String::new(),
    };
    let vendor_path = match o.get("vendor_path") {
        Some(Value::String(p)) => Some(p.clone()),
        Some(other) => {
            return Err(schema(format!(
                "vendor_path: expected a string, got {}",
                kind(other)
            )))
        }
        None => None,
    };
    let meta = match o.get("meta") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(schema(format!(
                    "meta.{k}: expected a string, got {}",
                    kind(other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(schema(format!(
                "meta: expected an object, got {}",
                kind(other)
            )))
        }
        None => Vec::new(),
    };
    let samples = match o.get("samples") {
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(schema("samples: empty".into()));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(s) => parse_sample(s, &format!("samples[{i}].")),
                    other => Err(schema(format!(
                        "samples[{i}]: expected an object, got {}",
                        kind(other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(other) => {
            return Err(schema(format!(
                "samples: expected an array, got {}",
                kind(other)
            )))
        }
        None => vec![parse_sample(&o, "")?],
    };
    let path = o.get("path").and_then(Value::as_str).map(String::from);
    Ok(Parsed {
        path,
        unit,
        vendor_path,
        meta,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DataType;

    fn tag() -> ResolvedTag {
        ResolvedTag {
            id: 0,
            source: "plc".into(),
            vendor_path: "Site1.Press1.\"P\"".into(),
            path: "plant/site1/area1/line1/press1/pressure".into(),
            unit: "kPa".into(),
            data_type: DataType::Float64,
            metadata: vec![("asset_id".into(), "P-1".into())],
        }
    }

    #[test]
    fn render_then_parse_gives_the_samples_back_in_both_forms() {
        let fields = tag_fields(&tag(), true);
        let one = vec![WireSample {
            value: 612.3,
            extra: None,
            status: 0,
            ts_ns: 1_764_070_000_000_000_000,
        }];
        let p = render(&fields, &one);
        let text = std::str::from_utf8(&p).unwrap();
        assert!(
            text.starts_with("{\"value\":612.3,\"quality\":\"good\""),
            "{text}"
        );
        let back = parse(&p, 1 << 20).unwrap();
        assert_eq!(back.samples, one);
        assert_eq!(back.unit, "kPa");
        assert_eq!(back.vendor_path.as_deref(), Some("Site1.Press1.\"P\""));
        assert_eq!(back.meta, vec![("asset_id".to_string(), "P-1".to_string())]);

        let many = vec![
            WireSample {
                value: f64::NAN,
                extra: Some(ExtraValue::Text("open".into())),
                status: 0x8005_0000,
                ts_ns: 1,
            },
            WireSample {
                value: 1.0,
                extra: Some(ExtraValue::Unsigned(u64::MAX)),
                status: 0x4000_0000,
                ts_ns: 2,
            },
        ];
        let back = parse(&render(&fields, &many), 1 << 20).unwrap();
        assert!(back.samples[0].value.is_nan());
        assert_eq!(back.samples[0].extra, many[0].extra);
        assert_eq!(back.samples[0].status, 0x8005_0000);
        assert_eq!(back.samples[1], many[1]);
    }

    #[test]
    fn refusals_name_the_field() {
        for (payload, reason, says) in [
            (&b"{not json"[..], "malformed-json", ""),
            (b"[1,2]", "schema", "expected an object"),
            (b"{\"ts_ns\":1}", "schema", "value: missing"),
            (
                b"{\"value\":\"12\",\"ts_ns\":1}",
                "schema",
                "value: expected a number",
            ),
            (b"{\"value\":1}", "schema", "ts_ns: missing"),
            (
                b"{\"value\":1,\"ts_ns\":-5}",
                "schema",
                "ts_ns: not a non-negative",
            ),
            (
                b"{\"value\":1,\"ts_ns\":1,\"quality\":\"ok\"}",
                "schema",
                "quality",
            ),
            (
                b"{\"samples\":[{\"value\":1,\"ts_ns\":1},{\"value\":true,\"ts_ns\":2}]}",
                "schema",
                "samples[1].value",
            ),
            (
                b"{\"value\":1,\"ts_ns\":1,\"meta\":{\"a\":1}}",
                "schema",
                "meta.a",
            ),
        ] {
            let e = parse(payload, 1 << 20).unwrap_err();
            assert_eq!(e.reason, reason, "{}", String::from_utf8_lossy(payload));
            assert!(e.detail.contains(says), "{e}");
        }
        let big = vec![b' '; 100];
        assert_eq!(parse(&big, 99).unwrap_err().reason, "oversize");
    }
}
