//! Turning register words and bits into values: every value type, byte and word order,
//! bit extraction, scale and offset. Pure functions, no I/O.

use super::config::{ValueType, WordOrder};
use crate::model::ExtraValue;

/// A decoded value: the scaled number (NaN for text) and, for text and integers a double
/// cannot hold exactly, the side-channel value.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub value: f64,
    pub extra: Option<ExtraValue>,
}

/// How to read one tag out of a block of registers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    pub value_type: ValueType,
    pub order: WordOrder,
    pub bit: Option<u8>,
    pub scale: f64,
    pub offset: f64,
}

impl Layout {
    fn scaled(&self, raw: f64) -> f64 {
        raw * self.scale + self.offset
    }

    fn unscaled(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }
}

/// The bytes of `words` most significant first, as `order` stores them.
fn ordered_bytes(words: &[u16], order: WordOrder) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 2);
    let mut push = |w: u16| {
        let [hi, lo] = w.to_be_bytes();
        if order.bytes_swapped() {
            out.extend([lo, hi]);
        } else {
            out.extend([hi, lo]);
        }
    };
    if order.words_swapped() {
        words.iter().rev().copied().for_each(&mut push);
    } else {
        words.iter().copied().for_each(&mut push);
    }
    out
}

/// Decodes a register-table value from exactly the registers it takes.
pub fn decode_registers(layout: &Layout, words: &[u16]) -> Decoded {
    let plain = |value: f64| Decoded {
        value: layout.scaled(value),
        extra: None,
    };
    let b = ordered_bytes(words, layout.order);
    match layout.value_type {
        ValueType::U16 => plain(u16::from_be_bytes([b[0], b[1]]) as f64),
        ValueType::I16 => plain(i16::from_be_bytes([b[0], b[1]]) as f64),
        ValueType::U32 => plain(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64),
        ValueType::I32 => plain(i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64),
        ValueType::F32 => plain(f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64),
        ValueType::F64 => plain(f64::from_be_bytes(b[..8].try_into().expect("4 registers"))),
        ValueType::U64 => {
            let v = u64::from_be_bytes(b[..8].try_into().expect("4 registers"));
            let exact = (v as f64) as u64 == v && v <= 1 << 53;
            Decoded {
                value: layout.scaled(v as f64),
                extra: (layout.unscaled() && !exact).then_some(ExtraValue::Unsigned(v)),
            }
        }
        ValueType::I64 => {
            let v = i64::from_be_bytes(b[..8].try_into().expect("4 registers"));
            let exact = v.unsigned_abs() <= 1 << 53;
            Decoded {
                value: layout.scaled(v as f64),
                extra: (layout.unscaled() && !exact).then_some(ExtraValue::Signed(v)),
            }
        }
        ValueType::Bool => {
            // The bit is of the register's value; byte order only matters for swapped devices.
            let w = u16::from_be_bytes([b[0], b[1]]);
            let bit = layout.bit.unwrap_or(0) & 15;
            plain(((w >> bit) & 1) as f64)
        }
        ValueType::String => {
            let end = b
                .iter()
                .rposition(|c| *c != 0 && *c != b' ')
                .map_or(0, |i| i + 1);
            let start = b.iter().position(|c| *c != 0).unwrap_or(end).min(end);
            Decoded {
                value: f64::NAN,
                extra: Some(ExtraValue::Text(
                    String::from_utf8_lossy(&b[start..end]).into_owned(),
                )),
            }
        }
    }
}

/// Decodes a coil or discrete input.
pub fn decode_bit(layout: &Layout, bit: bool) -> Decoded {
    Decoded {
        value: layout.scaled(if bit { 1.0 } else { 0.0 }),
        extra: None,
    }
}

/// Encodes `bytes` (most significant first) into registers as `order` stores them; the
/// inverse of the decoder, used by the simulator server and tests.
pub fn encode_bytes(bytes: &[u8], order: WordOrder) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let (hi, lo) = (c[0], c.get(1).copied().unwrap_or(0));
            if order.bytes_swapped() {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if order.words_swapped() {
        words.reverse();
    }
    words
}

/// Why a value cannot be written to a tag.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("{value} is outside what a {kind} register value holds ({low} to {high})")]
    OutOfRange {
        value: f64,
        kind: &'static str,
        low: f64,
        high: f64,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Encodes `value` (in the tag's scaled unit; `text` for strings, `wide` for 64-bit integers
/// a double cannot hold) into the registers the tag takes, as `order` stores them: the inverse
/// of `decode_registers` (raw = (value − offset) ÷ scale, rounded for integers). For a bit of a
/// register (`bool`) the result is the one register with only that bit set to the value; the
/// writer applies it with a mask so the other bits stay. `span` is the tag's register count.
pub fn encode_registers(
    layout: &Layout,
    span: u16,
    value: f64,
    extra: Option<&ExtraValue>,
) -> Result<Vec<u16>, EncodeError> {
    if let (Some(ExtraValue::Text(text)), ValueType::String) = (extra, layout.value_type) {
        let bytes = text.as_bytes();
        if bytes.len() > span as usize * 2 {
            return Err(EncodeError::Invalid(format!(
                "text of {} bytes does not fit {span} registers",
                bytes.len()
            )));
        }
        let mut padded = bytes.to_vec();
        padded.resize(span as usize * 2, 0);
        return Ok(encode_bytes(&padded, layout.order));
    }
    if layout.value_type == ValueType::String {
        return Err(EncodeError::Invalid(
            "a string tag takes a text value".into(),
        ));
    }
    let wide = match extra {
        Some(ExtraValue::Signed(v)) if layout.unscaled() => Some(*v as i128),
        Some(ExtraValue::Unsigned(v)) if layout.unscaled() => Some(*v as i128),
        Some(ExtraValue::Text(_)) => {
            return Err(EncodeError::Invalid("text given for a numeric tag".into()))
        }
        _ => None,
    };
    if !value.is_finite() && wide.is_none() {
        return Err(EncodeError::Invalid(format!(
            "{value} is not a finite number"
        )));
    }
    let raw = (value - layout.offset) / layout.scale;
    let int = |kind: &'static str, low: f64, high: f64| -> Result<i128, EncodeError> {
        if let Some(w) = wide {
            if (w as f64) < low || (w as f64) > high {
                return Err(EncodeError::OutOfRange {
                    value: w as f64,
                    kind,
                    low,
                    high,
                });
            }
            return Ok(w);
        }
        let r = raw.round();
        if r < low || r > high {
            return Err(EncodeError::OutOfRange {
                value,
                kind,
                low,
                high,
            });
        }
        Ok(r as i128)
    };
    let bytes: Vec<u8> = match layout.value_type {
        ValueType::U16 => (int("u16", 0.0, u16::MAX as f64)? as u16)
            .to_be_bytes()
            .to_vec(),
        ValueType::I16 => (int("i16", i16::MIN as f64, i16::MAX as f64)? as i16)
            .to_be_bytes()
            .to_vec(),
        ValueType::U32 => (int("u32", 0.0, u32::MAX as f64)? as u32)
            .to_be_bytes()
            .to_vec(),
        ValueType::I32 => (int("i32", i32::MIN as f64, i32::MAX as f64)? as i32)
            .to_be_bytes()
            .to_vec(),
        ValueType::U64 => (int("u64", 0.0, u64::MAX as f64)? as u64)
            .to_be_bytes()
            .to_vec(),
        ValueType::I64 => (int("i64", i64::MIN as f64, i64::MAX as f64)? as i64)
            .to_be_bytes()
            .to_vec(),
        ValueType::F32 => {
            if raw.abs() > f32::MAX as f64 {
                return Err(EncodeError::OutOfRange {
                    value,
                    kind: "f32",
                    low: f32::MIN as f64,
                    high: f32::MAX as f64,
                });
            }
            (raw as f32).to_be_bytes().to_vec()
        }
        ValueType::F64 => raw.to_be_bytes().to_vec(),
        ValueType::Bool => {
            let on = encode_bit(layout, value)?;
            let bit = layout.bit.unwrap_or(0) & 15;
            let word = (on as u16) << bit;
            // Byte-swapped devices keep the register's value with its bytes swapped.
            return Ok(encode_bytes(&word.to_be_bytes(), layout.order));
        }
        ValueType::String => unreachable!("handled above"),
    };
    Ok(encode_bytes(&bytes, layout.order))
}

/// The bit value to write to a coil for `value` (in the tag's scaled unit).
pub fn encode_bit(layout: &Layout, value: f64) -> Result<bool, EncodeError> {
    let raw = (value - layout.offset) / layout.scale;
    if raw == 0.0 {
        Ok(false)
    } else if raw == 1.0 {
        Ok(true)
    } else {
        Err(EncodeError::Invalid(format!(
            "{value} is not a bit value (0 or 1 before scaling)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: [WordOrder; 4] = [
        WordOrder::ABCD,
        WordOrder::CDAB,
        WordOrder::BADC,
        WordOrder::DCBA,
    ];

    fn layout(value_type: ValueType, order: WordOrder) -> Layout {
        Layout {
            value_type,
            order,
            bit: None,
            scale: 1.0,
            offset: 0.0,
        }
    }

    #[test]
    fn the_four_orders_place_bytes_as_named() {
        // 0x11223344 as f32 bits: A=0x11 B=0x22 C=0x33 D=0x44.
        let l = |o| layout(ValueType::U32, o);
        assert_eq!(
            decode_registers(&l(WordOrder::ABCD), &[0x1122, 0x3344]).value,
            0x1122_3344 as f64
        );
        assert_eq!(
            decode_registers(&l(WordOrder::CDAB), &[0x3344, 0x1122]).value,
            0x1122_3344 as f64
        );
        assert_eq!(
            decode_registers(&l(WordOrder::BADC), &[0x2211, 0x4433]).value,
            0x1122_3344 as f64
        );
        assert_eq!(
            decode_registers(&l(WordOrder::DCBA), &[0x4433, 0x2211]).value,
            0x1122_3344 as f64
        );
    }

    #[test]
    fn every_type_round_trips_in_every_order() {
        for o in ORDERS {
            let cases: Vec<(ValueType, Vec<u8>, f64)> = vec![
                (ValueType::U16, 65000u16.to_be_bytes().to_vec(), 65000.0),
                (ValueType::I16, (-1234i16).to_be_bytes().to_vec(), -1234.0),
                (ValueType::U32, 4_000_000_000u32.to_be_bytes().to_vec(), 4e9),
                (
                    ValueType::I32,
                    (-2_000_000_000i32).to_be_bytes().to_vec(),
                    -2e9,
                ),
                (ValueType::F32, 12.5f32.to_be_bytes().to_vec(), 12.5),
                (ValueType::F64, (-0.1f64).to_be_bytes().to_vec(), -0.1),
                (
                    ValueType::U64,
                    1u64.wrapping_shl(40).to_be_bytes().to_vec(),
                    2f64.powi(40),
                ),
                (ValueType::I64, (-5i64).to_be_bytes().to_vec(), -5.0),
            ];
            for (t, bytes, want) in cases {
                let words = encode_bytes(&bytes, o);
                let d = decode_registers(&layout(t, o), &words);
                assert_eq!(d.value, want, "{t:?} {o:?}");
                assert_eq!(d.extra, None);
            }
        }
    }

    #[test]
    fn large_integers_keep_every_digit_in_the_side_channel() {
        let v = u64::MAX - 1;
        let d = decode_registers(
            &layout(ValueType::U64, WordOrder::DCBA),
            &encode_bytes(&v.to_be_bytes(), WordOrder::DCBA),
        );
        assert_eq!(d.extra, Some(ExtraValue::Unsigned(v)));
        let v = i64::MIN + 3;
        let d = decode_registers(
            &layout(ValueType::I64, WordOrder::ABCD),
            &encode_bytes(&v.to_be_bytes(), WordOrder::ABCD),
        );
        assert_eq!(d.extra, Some(ExtraValue::Signed(v)));
    }

    #[test]
    fn strings_bits_and_scaling() {
        let words = encode_bytes(b"PUMP-7\0\0", WordOrder::ABCD);
        let d = decode_registers(&layout(ValueType::String, WordOrder::ABCD), &words);
        assert!(d.value.is_nan());
        assert_eq!(d.extra, Some(ExtraValue::Text("PUMP-7".into())));
        let swapped = encode_bytes(b"AB CD ", WordOrder::BADC);
        let d = decode_registers(&layout(ValueType::String, WordOrder::BADC), &swapped);
        assert_eq!(d.extra, Some(ExtraValue::Text("AB CD".into())));

        let mut l = layout(ValueType::Bool, WordOrder::ABCD);
        l.bit = Some(9);
        assert_eq!(decode_registers(&l, &[1 << 9]).value, 1.0);
        assert_eq!(decode_registers(&l, &[!(1 << 9)]).value, 0.0);

        let mut l = layout(ValueType::I16, WordOrder::ABCD);
        l.scale = 0.1;
        l.offset = -40.0;
        let d = decode_registers(&l, &[(-100i16) as u16]);
        assert!((d.value - (-50.0)).abs() < 1e-9, "{}", d.value);
        assert_eq!(decode_bit(&l, true).value, 0.1 - 40.0);
    }

    #[test]
    fn encoding_inverts_decoding_for_every_type_and_order() {
        for o in ORDERS {
            for (t, v, span) in [
                (ValueType::U16, 65000.0, 1),
                (ValueType::I16, -1234.0, 1),
                (ValueType::U32, 4e9, 2),
                (ValueType::I32, -2e9, 2),
                (ValueType::F32, 12.5, 2),
                (ValueType::F64, -0.1, 4),
                (ValueType::U64, 2f64.powi(40), 4),
                (ValueType::I64, -5.0, 4),
            ] {
                let l = layout(t, o);
                let words = encode_registers(&l, span, v, None).unwrap();
                assert_eq!(words.len(), span as usize, "{t:?} {o:?}");
                assert_eq!(decode_registers(&l, &words).value, v, "{t:?} {o:?}");
            }
            let wide = ExtraValue::Unsigned(u64::MAX - 1);
            let l = layout(ValueType::U64, o);
            let words = encode_registers(&l, 4, f64::NAN, Some(&wide)).unwrap();
            assert_eq!(decode_registers(&l, &words).extra, Some(wide));
            let l = layout(ValueType::String, o);
            let words = encode_registers(&l, 4, f64::NAN, Some(&ExtraValue::Text("PUMP-7".into())))
                .unwrap();
            assert_eq!(
                decode_registers(&l, &words).extra,
                Some(ExtraValue::Text("PUMP-7".into()))
            );
        }
        // Scale and offset are undone; integers out of their range are refused.
        let mut l = layout(ValueType::I16, WordOrder::ABCD);
        l.scale = 0.1;
        l.offset = -40.0;
        let words = encode_registers(&l, 1, -50.0, None).unwrap();
        assert_eq!(words, vec![(-100i16) as u16]);
        assert!(matches!(
            encode_registers(&l, 1, 1e6, None),
            Err(EncodeError::OutOfRange { kind: "i16", .. })
        ));
        assert!(encode_registers(&layout(ValueType::U16, WordOrder::ABCD), 1, -1.0, None).is_err());
        let mut b = layout(ValueType::Bool, WordOrder::ABCD);
        b.bit = Some(9);
        assert_eq!(encode_registers(&b, 1, 1.0, None).unwrap(), vec![1 << 9]);
        assert!(encode_registers(&b, 1, 0.5, None).is_err());
        assert_eq!(encode_bit(&b, 1.0), Ok(true));
        assert!(encode_bit(&b, 2.0).is_err());
    }
}
