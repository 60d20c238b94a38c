//! OPC UA data values to samples: the value as a double (text and wide integers in the side
//! channel), the StatusCode kept as the quality, and the chosen timestamp in ns.

use opcua::types::{DataValue, DateTime, StatusCode, Variant};

use super::config::TimestampChoice;
use crate::model::ExtraValue;

/// OPC UA DateTime ticks (100 ns since 1601) at the Unix epoch.
const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;

pub const BAD_TYPE_MISMATCH: u32 = 0x8074_0000;

/// A sample from a data value: (value, extra, quality, timestamp ns).
pub struct Converted {
    pub value: f64,
    pub extra: Option<ExtraValue>,
    pub quality: u32,
    pub timestamp_ns: u64,
}

fn ns_of(t: &DateTime) -> Option<u64> {
    if t.is_null() {
        return None;
    }
    let ticks = t.checked_ticks() - UNIX_EPOCH_TICKS;
    (ticks > 0).then(|| ticks as u64 * 100)
}

fn wide_unsigned(v: u64) -> (f64, Option<ExtraValue>) {
    (v as f64, (v > 1 << 53).then_some(ExtraValue::Unsigned(v)))
}

fn wide_signed(v: i64) -> (f64, Option<ExtraValue>) {
    (
        v as f64,
        (v.unsigned_abs() > 1 << 53).then_some(ExtraValue::Signed(v)),
    )
}

/// The value of a variant, or `None` for a type that is not a scalar number, bool or text.
pub fn variant_value(v: &Variant) -> Option<(f64, Option<ExtraValue>)> {
    Some(match v {
        Variant::Boolean(b) => (if *b { 1.0 } else { 0.0 }, None),
        Variant::SByte(x) => (*x as f64, None),
        Variant::Byte(x) => (*x as f64, None),
        Variant::Int16(x) => (*x as f64, None),
        Variant::UInt16(x) => (*x as f64, None),
        Variant::Int32(x) => (*x as f64, None),
        Variant::UInt32(x) => (*x as f64, None),
        Variant::Int64(x) => wide_signed(*x),
        Variant::UInt64(x) => wide_unsigned(*x),
        Variant::Float(x) => (*x as f64, None),
        Variant::Double(x) => (*x, None),
        Variant::String(s) => (f64::NAN, Some(ExtraValue::Text(s.as_ref().to_string()))),
        Variant::LocalizedText(t) => (
            f64::NAN,
            Some(ExtraValue::Text(t.text.as_ref().to_string())),
        ),
        Variant::DateTime(t) => {
            return ns_of(t).map(|ns| (ns as f64, Some(ExtraValue::Unsigned(ns))))
        }
        _ => return None,
    })
}

/// Converts a data value; `now_ns` stands in for a missing timestamp.
pub fn convert(dv: &DataValue, choice: TimestampChoice, now_ns: u64) -> Converted {
    let status = dv.status.unwrap_or(StatusCode::Good);
    let ts = match choice {
        TimestampChoice::Source => dv
            .source_timestamp
            .as_ref()
            .or(dv.server_timestamp.as_ref()),
        TimestampChoice::Server => dv
            .server_timestamp
            .as_ref()
            .or(dv.source_timestamp.as_ref()),
    }
    .and_then(ns_of)
    .unwrap_or(now_ns);
    let (value, extra, quality) = match dv.value.as_ref().map(variant_value) {
        Some(Some((v, e))) if !status.is_bad() => (v, e, status.bits()),
        // A bad status: the value, if any, is not passed off.
        _ if status.is_bad() => (f64::NAN, None, status.bits()),
        None | Some(None) if matches!(dv.value, None | Some(Variant::Empty)) => {
            (f64::NAN, None, StatusCode::BadNoData.bits())
        }
        _ => (f64::NAN, None, BAD_TYPE_MISMATCH),
    };
    Converted {
        value,
        extra,
        quality,
        timestamp_ns: ts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_status_and_wide_integers() {
        let mut dv = DataValue::new_now(Variant::UInt64(u64::MAX));
        let c = convert(&dv, TimestampChoice::Source, 1);
        assert_eq!(c.quality, 0);
        assert_eq!(c.extra, Some(ExtraValue::Unsigned(u64::MAX)));
        assert!(c.timestamp_ns > 1_600_000_000_000_000_000);
        dv.status = Some(StatusCode::UncertainLastUsableValue);
        let c = convert(&dv, TimestampChoice::Server, 1);
        assert_eq!(c.quality, StatusCode::UncertainLastUsableValue.bits());
        assert_eq!(c.value, u64::MAX as f64);
        dv.status = Some(StatusCode::BadSensorFailure);
        let c = convert(&dv, TimestampChoice::Server, 1);
        assert!(c.value.is_nan());
        assert_eq!(c.quality, StatusCode::BadSensorFailure.bits());
        let odd = DataValue::new_now(Variant::ByteString(vec![1u8, 2].into()));
        assert_eq!(
            convert(&odd, TimestampChoice::Source, 1).quality,
            BAD_TYPE_MISMATCH
        );
        let text = DataValue::new_now(Variant::from("Press 1"));
        let c = convert(&text, TimestampChoice::Source, 1);
        assert_eq!(c.extra, Some(ExtraValue::Text("Press 1".into())));
    }
}
