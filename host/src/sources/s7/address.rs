//! S7 addresses in the usual notations and the data types read from them: the parser
//! (`DB10.DBD4`, `DB10.DBX2.3`, `MW20`, `I0.1`, `E0.1`, `QB3`, `A4.0`, `FW6` …), the type a
//! width defaults to, and decoding the bytes of a value (big-endian, as the CPU stores them).
//! Pure functions, no I/O.

use std::fmt;

use crate::model::{DataType, ExtraValue};

/// A memory area of the CPU, with its S7 area code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    /// Process inputs (`I`, German `E`).
    Inputs,
    /// Process outputs (`Q`, German `A`).
    Outputs,
    /// Markers / flags (`M`, also `F`).
    Markers,
    /// A data block by number.
    Db(u16),
}

impl Area {
    /// The area code in a read request's address.
    pub fn code(self) -> u8 {
        match self {
            Area::Inputs => 0x81,
            Area::Outputs => 0x82,
            Area::Markers => 0x83,
            Area::Db(_) => 0x84,
        }
    }

    /// The DB number (0 outside data blocks).
    pub fn db(self) -> u16 {
        match self {
            Area::Db(n) => n,
            _ => 0,
        }
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Area::Inputs => write!(f, "I"),
            Area::Outputs => write!(f, "Q"),
            Area::Markers => write!(f, "M"),
            Area::Db(n) => write!(f, "DB{n}"),
        }
    }
}

/// The width an address names: one bit, a byte, a word (2 bytes) or a double word (4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Bit(u8),
    Byte,
    Word,
    DWord,
}

/// A parsed address: area, first byte and width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    pub area: Area,
    pub byte: u32,
    pub width: Width,
}

/// The S7 data types a tag can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S7Type {
    Bool,
    Byte,
    Char,
    SInt,
    USInt,
    Word,
    Int,
    UInt,
    DWord,
    DInt,
    UDInt,
    Real,
    /// IEC time: signed milliseconds (a DINT).
    Time,
    LReal,
    LInt,
    ULInt,
    LWord,
    /// DATE_AND_TIME: 8 BCD bytes, read as milliseconds since the Unix epoch (the CPU's
    /// local time taken as UTC).
    DateAndTime,
    /// STRING[n]: a max-length byte, a current-length byte, then n characters.
    String(u8),
}

impl S7Type {
    /// Parses a type name (case-insensitive): `real`, `int`, `string[20]`, `date_and_time` …
    pub fn parse(s: &str) -> Result<S7Type, String> {
        let l = s.trim().to_ascii_lowercase();
        if let Some(rest) = l.strip_prefix("string") {
            let n = rest
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .ok_or_else(|| format!("`{s}`: a string needs its length, e.g. `string[20]`"))?;
            let n: u16 = n
                .trim()
                .parse()
                .map_err(|_| format!("`{s}`: the length must be a number"))?;
            if !(1..=254).contains(&n) {
                return Err(format!("`{s}`: a string holds 1 to 254 characters"));
            }
            return Ok(S7Type::String(n as u8));
        }
        Ok(match l.as_str() {
            "bool" => S7Type::Bool,
            "byte" => S7Type::Byte,
            "char" => S7Type::Char,
            "sint" => S7Type::SInt,
            "usint" => S7Type::USInt,
            "word" => S7Type::Word,
            "int" => S7Type::Int,
            "uint" => S7Type::UInt,
            "dword" => S7Type::DWord,
            "dint" => S7Type::DInt,
            "udint" => S7Type::UDInt,
            "real" => S7Type::Real,
            "time" => S7Type::Time,
            "lreal" => S7Type::LReal,
            "lint" => S7Type::LInt,
            "ulint" => S7Type::ULInt,
            "lword" => S7Type::LWord,
            "date_and_time" | "dt" => S7Type::DateAndTime,
            _ => {
                return Err(format!(
                    "unknown type `{s}` (bool, byte, char, sint, usint, word, int, uint, dword, \
                     dint, udint, real, time, lreal, lint, ulint, lword, date_and_time, string[n])"
                ))
            }
        })
    }

    /// Bytes the value takes in the CPU's memory (1 for a bit: its byte is read).
    pub fn size(self) -> u32 {
        match self {
            S7Type::Bool | S7Type::Byte | S7Type::Char | S7Type::SInt | S7Type::USInt => 1,
            S7Type::Word | S7Type::Int | S7Type::UInt => 2,
            S7Type::DWord | S7Type::DInt | S7Type::UDInt | S7Type::Real | S7Type::Time => 4,
            S7Type::LReal | S7Type::LInt | S7Type::ULInt | S7Type::LWord | S7Type::DateAndTime => 8,
            S7Type::String(n) => n as u32 + 2,
        }
    }

    /// The width of address that names a value of this type (8-byte values and strings are
    /// named by their first byte).
    fn width_class(self) -> u8 {
        match self {
            S7Type::Bool => 0,
            S7Type::Byte | S7Type::Char | S7Type::SInt | S7Type::USInt => 1,
            S7Type::Word | S7Type::Int | S7Type::UInt => 2,
            S7Type::DWord | S7Type::DInt | S7Type::UDInt | S7Type::Real | S7Type::Time => 4,
            _ => 1,
        }
    }

    /// The sample's data type.
    pub fn data_type(self) -> DataType {
        match self {
            S7Type::Bool => DataType::Boolean,
            S7Type::Byte | S7Type::USInt | S7Type::Word | S7Type::UInt => DataType::Uint16,
            S7Type::SInt | S7Type::Int => DataType::Int16,
            S7Type::DWord | S7Type::UDInt => DataType::Uint32,
            S7Type::DInt | S7Type::Time => DataType::Int32,
            S7Type::Real => DataType::Float32,
            S7Type::LReal => DataType::Float64,
            S7Type::LInt | S7Type::DateAndTime => DataType::Int64,
            S7Type::ULInt | S7Type::LWord => DataType::Uint64,
            S7Type::Char | S7Type::String(_) => DataType::Text,
        }
    }
}

impl fmt::Display for S7Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            S7Type::Bool => "BOOL",
            S7Type::Byte => "BYTE",
            S7Type::Char => "CHAR",
            S7Type::SInt => "SINT",
            S7Type::USInt => "USINT",
            S7Type::Word => "WORD",
            S7Type::Int => "INT",
            S7Type::UInt => "UINT",
            S7Type::DWord => "DWORD",
            S7Type::DInt => "DINT",
            S7Type::UDInt => "UDINT",
            S7Type::Real => "REAL",
            S7Type::Time => "TIME",
            S7Type::LReal => "LREAL",
            S7Type::LInt => "LINT",
            S7Type::ULInt => "ULINT",
            S7Type::LWord => "LWORD",
            S7Type::DateAndTime => "DATE_AND_TIME",
            S7Type::String(n) => return write!(f, "STRING[{n}]"),
        };
        f.write_str(s)
    }
}

impl Address {
    /// Parses `DB10.DBD4`, `DB10.DBX2.3`, `DB5.DBB0`, `DB10.DBW8`, `MW20`, `M1.7`, `MB3`,
    /// `MD4`, `I0.1`, `IB2`, `IW4`, `ID8`, `Q0.0`, `QW2`, with the German `E` (inputs), `A`
    /// (outputs) and `F` (flags = markers) too; `X` may be given for bits (`IX0.1`). Case and
    /// spaces are ignored.
    pub fn parse(text: &str) -> Result<Address, String> {
        let s: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase();
        let bad = |why: &str| format!("address `{text}`: {why}");
        let (area, rest) = if let Some(r) = s.strip_prefix("DB") {
            let dot = r
                .find('.')
                .ok_or_else(|| bad("expected `DB<n>.DB<X|B|W|D><byte>`, e.g. `DB10.DBD4`"))?;
            let n: u16 = r[..dot]
                .parse()
                .map_err(|_| bad("the DB number must be 1 to 65535"))?;
            if n == 0 {
                return Err(bad("the DB number must be 1 to 65535"));
            }
            let inner = r[dot + 1..].strip_prefix("DB").ok_or_else(|| {
                bad("expected `.DBX`, `.DBB`, `.DBW` or `.DBD` after the DB number")
            })?;
            (Area::Db(n), inner)
        } else {
            let mut c = s.chars();
            let area =
                match c.next() {
                    Some('I' | 'E') => Area::Inputs,
                    Some('Q' | 'A') => Area::Outputs,
                    Some('M' | 'F') => Area::Markers,
                    _ => return Err(bad(
                        "expected an area: DB<n>., I/E (inputs), Q/A (outputs) or M/F (markers)",
                    )),
                };
            (area, &s[1..])
        };
        let (width_letter, digits) = match rest.chars().next() {
            Some(ch @ ('X' | 'B' | 'W' | 'D')) => (Some(ch), &rest[1..]),
            Some(ch) if ch.is_ascii_digit() => (None, rest),
            _ => return Err(bad("expected X, B, W or D and a byte offset")),
        };
        let (byte, bit) = match digits.split_once('.') {
            Some((b, bit)) => (b, Some(bit)),
            None => (digits, None),
        };
        let byte: u32 = byte
            .parse()
            .map_err(|_| bad("the byte offset must be a number"))?;
        if byte > 0x1F_FFFF {
            return Err(bad("the byte offset is too large"));
        }
        let width = match (width_letter, bit) {
            (Some('X') | None, Some(bit)) => {
                let bit: u8 = bit
                    .parse()
                    .ok()
                    .filter(|b| *b < 8)
                    .ok_or_else(|| bad("the bit must be 0 to 7"))?;
                Width::Bit(bit)
            }
            (Some('X') | None, None) => return Err(bad("a bit address needs `.bit`, e.g. `I0.1`")),
            (Some(_), Some(_)) => return Err(bad("only bit addresses (X) take `.bit`")),
            (Some('B'), None) => Width::Byte,
            (Some('W'), None) => Width::Word,
            (Some('D'), None) => Width::DWord,
            _ => unreachable!("width letters are X, B, W, D"),
        };
        Ok(Address { area, byte, width })
    }

    /// The type the address has without a `type`: BOOL, BYTE, WORD or DWORD.
    pub fn default_type(&self) -> S7Type {
        match self.width {
            Width::Bit(_) => S7Type::Bool,
            Width::Byte => S7Type::Byte,
            Width::Word => S7Type::Word,
            Width::DWord => S7Type::DWord,
        }
    }

    /// Checks that `t` fits the width the address names.
    pub fn check_type(&self, t: S7Type) -> Result<(), String> {
        let class = match self.width {
            Width::Bit(_) => 0,
            Width::Byte => 1,
            Width::Word => 2,
            Width::DWord => 4,
        };
        if class == t.width_class() {
            return Ok(());
        }
        let want = match t.width_class() {
            0 => "a bit address (e.g. `DB1.DBX0.0`, `M1.2`)".to_string(),
            1 if t.size() > 1 => format!(
                "a byte address naming its first byte (e.g. `DB1.DBB{}`); it takes {} bytes",
                self.byte,
                t.size()
            ),
            1 => "a byte address (e.g. `DB1.DBB0`, `MB2`)".into(),
            2 => "a word address (e.g. `DB1.DBW0`, `MW2`)".into(),
            _ => "a double-word address (e.g. `DB1.DBD0`, `MD4`)".into(),
        };
        Err(format!("type {t} needs {want}"))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (w, bit) = match self.width {
            Width::Bit(b) => ("X", Some(b)),
            Width::Byte => ("B", None),
            Width::Word => ("W", None),
            Width::DWord => ("D", None),
        };
        match self.area {
            Area::Db(n) => write!(f, "DB{n}.DB{w}{}", self.byte)?,
            a => write!(f, "{a}{w}{}", self.byte)?,
        }
        if let Some(b) = bit {
            write!(f, ".{b}")?;
        }
        Ok(())
    }
}

/// A decoded value: the number (NaN for text) and the side-channel value for text and for
/// 64-bit integers a double cannot hold exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub value: f64,
    pub extra: Option<ExtraValue>,
}

fn plain(value: f64) -> Decoded {
    Decoded { value, extra: None }
}

fn bcd(b: u8) -> Result<u32, String> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    if hi > 9 || lo > 9 {
        return Err(format!("0x{b:02X} is not a BCD digit pair"));
    }
    Ok(hi as u32 * 10 + lo as u32)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// DATE_AND_TIME bytes → ms since the Unix epoch.
fn date_and_time(b: &[u8]) -> Result<i64, String> {
    let yy = bcd(b[0])?;
    let year = if yy >= 90 { 1900 + yy } else { 2000 + yy } as i64;
    let (month, day, hour, min, sec) = (bcd(b[1])?, bcd(b[2])?, bcd(b[3])?, bcd(b[4])?, bcd(b[5])?);
    let ms = bcd(b[6])? * 10 + (b[7] >> 4) as u32;
    if (b[7] >> 4) > 9
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || min > 59
        || sec > 59
    {
        return Err(format!("{b:02X?} is not a valid DATE_AND_TIME"));
    }
    let days = days_from_civil(year, month, day);
    Ok(((days * 24 + hour as i64) * 60 + min as i64) * 60_000 + sec as i64 * 1000 + ms as i64)
}

fn int64(v: i64) -> Decoded {
    Decoded {
        value: v as f64,
        extra: (v.unsigned_abs() > 1 << 53).then_some(ExtraValue::Signed(v)),
    }
}

/// Decodes a value from exactly `t.size()` bytes (`bit` for BOOL). Err: the bytes are not a
/// valid value of the type (a malformed DATE_AND_TIME or STRING).
pub fn decode(t: S7Type, bit: u8, b: &[u8]) -> Result<Decoded, String> {
    let n2 = || [b[0], b[1]];
    let n4 = || [b[0], b[1], b[2], b[3]];
    let n8 = || -> [u8; 8] { b[..8].try_into().expect("8 bytes") };
    Ok(match t {
        S7Type::Bool => plain(((b[0] >> (bit & 7)) & 1) as f64),
        S7Type::Byte | S7Type::USInt => plain(b[0] as f64),
        S7Type::SInt => plain(b[0] as i8 as f64),
        S7Type::Char => Decoded {
            value: f64::NAN,
            extra: Some(ExtraValue::Text(char::from(b[0]).to_string())),
        },
        S7Type::Word | S7Type::UInt => plain(u16::from_be_bytes(n2()) as f64),
        S7Type::Int => plain(i16::from_be_bytes(n2()) as f64),
        S7Type::DWord | S7Type::UDInt => plain(u32::from_be_bytes(n4()) as f64),
        S7Type::DInt | S7Type::Time => plain(i32::from_be_bytes(n4()) as f64),
        S7Type::Real => plain(f32::from_be_bytes(n4()) as f64),
        S7Type::LReal => plain(f64::from_be_bytes(n8())),
        S7Type::LInt => int64(i64::from_be_bytes(n8())),
        S7Type::ULInt | S7Type::LWord => {
            let v = u64::from_be_bytes(n8());
            Decoded {
                value: v as f64,
                extra: (v > 1 << 53).then_some(ExtraValue::Unsigned(v)),
            }
        }
        S7Type::DateAndTime => int64(date_and_time(b)?),
        S7Type::String(n) => {
            let (max, len) = (b[0], b[1]);
            if len > max || len > n {
                return Err(format!(
                    "STRING[{n}] says {len} characters of at most {max}"
                ));
            }
            // S7 strings are single-byte (Latin-1).
            let text: String = b[2..2 + len as usize]
                .iter()
                .map(|c| char::from(*c))
                .collect();
            Decoded {
                value: f64::NAN,
                extra: Some(ExtraValue::Text(text)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        Address::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_notation_parses() {
        let cases = [
            ("DB10.DBD4", Area::Db(10), 4, Width::DWord),
            ("DB10.DBW8", Area::Db(10), 8, Width::Word),
            ("db10.dbx2.3", Area::Db(10), 2, Width::Bit(3)),
            ("DB5.DBB0", Area::Db(5), 0, Width::Byte),
            ("MW20", Area::Markers, 20, Width::Word),
            ("FW20", Area::Markers, 20, Width::Word),
            ("M1.7", Area::Markers, 1, Width::Bit(7)),
            ("MD4", Area::Markers, 4, Width::DWord),
            ("I0.1", Area::Inputs, 0, Width::Bit(1)),
            ("E0.1", Area::Inputs, 0, Width::Bit(1)),
            ("IX0.1", Area::Inputs, 0, Width::Bit(1)),
            ("IB2", Area::Inputs, 2, Width::Byte),
            ("EW4", Area::Inputs, 4, Width::Word),
            ("Q0.0", Area::Outputs, 0, Width::Bit(0)),
            ("A4.0", Area::Outputs, 4, Width::Bit(0)),
            ("QD12", Area::Outputs, 12, Width::DWord),
            (" DB1 . DBD 0 ", Area::Db(1), 0, Width::DWord),
        ];
        for (s, area, byte, width) in cases {
            assert_eq!(a(s), Address { area, byte, width }, "{s}");
        }
        assert_eq!(a("db10.dbx2.3").to_string(), "DB10.DBX2.3");
        assert_eq!(a("E0.1").to_string(), "IX0.1");
    }

    #[test]
    fn bad_addresses_say_why() {
        for (s, why) in [
            ("DB0.DBW0", "DB number"),
            ("DB10.DBX2.8", "bit must be 0 to 7"),
            ("DB10.DBX2", "needs `.bit`"),
            ("DB10.DBW2.1", "only bit addresses"),
            ("DB10DBW2", "expected `DB<n>"),
            ("DB10.W2", "expected `.DBX`"),
            ("Z10", "expected an area"),
            ("MZ1", "expected X, B, W or D"),
            ("MWx", "byte offset must be a number"),
        ] {
            let e = Address::parse(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
            assert!(e.contains(s), "{s}: {e}");
        }
    }

    #[test]
    fn types_must_fit_the_width() {
        assert_eq!(a("DB1.DBD4").check_type(S7Type::Real), Ok(()));
        assert_eq!(a("DB1.DBB4").check_type(S7Type::LReal), Ok(()));
        assert_eq!(a("DB1.DBB4").check_type(S7Type::String(10)), Ok(()));
        assert!(a("DB1.DBW4").check_type(S7Type::Real).is_err());
        assert!(a("DB1.DBD4")
            .check_type(S7Type::LReal)
            .unwrap_err()
            .contains("first byte"));
        assert_eq!(S7Type::parse("String[20]"), Ok(S7Type::String(20)));
        assert!(S7Type::parse("string").is_err());
        assert!(S7Type::parse("string[300]").is_err());
        assert!(S7Type::parse("float").unwrap_err().contains("unknown type"));
        assert_eq!(S7Type::String(20).size(), 22);
    }

    #[test]
    fn values_decode_big_endian() {
        let d = |t, bit, b: &[u8]| decode(t, bit, b).unwrap();
        assert_eq!(d(S7Type::Bool, 3, &[0b0000_1000]).value, 1.0);
        assert_eq!(d(S7Type::Bool, 2, &[0b0000_1000]).value, 0.0);
        assert_eq!(
            d(S7Type::Int, 0, &(-12345i16).to_be_bytes()).value,
            -12345.0
        );
        assert_eq!(
            d(S7Type::Real, 0, &(-273.15f32).to_be_bytes()).value,
            -273.15f32 as f64
        );
        assert_eq!(d(S7Type::SInt, 0, &[0xFF]).value, -1.0);
        let big = (1i64 << 60) + 3;
        assert_eq!(
            d(S7Type::LInt, 0, &big.to_be_bytes()).extra,
            Some(ExtraValue::Signed(big))
        );
        assert_eq!(
            d(S7Type::String(8), 0, b"\x08\x05PUMP-xyz").extra,
            Some(ExtraValue::Text("PUMP-".into()))
        );
        assert!(decode(S7Type::String(8), 0, b"\x08\x09PUMP-xyz").is_err());
        // 2024-02-29 13:45:56.789, a Thursday (weekday 5 in the low nibble).
        let dt = d(
            S7Type::DateAndTime,
            0,
            &[0x24, 0x02, 0x29, 0x13, 0x45, 0x56, 0x78, 0x95],
        );
        assert_eq!(dt.value, 1_709_214_356_789.0);
        // 1990-01-01 00:00:00.000 (yy >= 90 is 19yy).
        assert_eq!(
            d(S7Type::DateAndTime, 0, &[0x90, 1, 1, 0, 0, 0, 0, 0x02]).value,
            631_152_000_000.0
        );
        assert!(decode(S7Type::DateAndTime, 0, &[0x24, 0x13, 1, 0, 0, 0, 0, 0]).is_err());
    }
}
