//! Binary encodings of the sample columns PostgreSQL has no ready Rust type for here:
//! TIMESTAMPTZ from nanoseconds, NUMERIC from a 128-bit integer, JSONB from JSON text.

use std::error::Error;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A TIMESTAMPTZ from nanoseconds since the Unix epoch. PostgreSQL keeps microseconds: the
/// nanoseconds below are dropped (rounded down).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgTimestamp(pub u64);

impl PgTimestamp {
    /// Microseconds since the PostgreSQL epoch.
    pub fn pg_micros(self) -> i64 {
        (self.0 / 1_000) as i64 - PG_EPOCH_OFFSET_US
    }
}

impl ToSql for PgTimestamp {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_i64(self.pg_micros());
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
    to_sql_checked!();
}

/// An integer as NUMERIC (covers both i64 and u64 side-channel values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgNumeric(pub i128);

impl ToSql for PgNumeric {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // Base-10000 digits, most significant first; trailing zero digits are implied by the
        // weight. Layout: ndigits, weight, sign, dscale (i16 each), then the digits.
        let mut rest = self.0.unsigned_abs();
        let mut digits: Vec<i16> = Vec::with_capacity(10);
        while rest > 0 {
            digits.push((rest % 10_000) as i16);
            rest /= 10_000;
        }
        let weight = digits.len() as i16 - 1;
        let trailing_zeros = digits.iter().take_while(|d| **d == 0).count();
        let significant = &digits[trailing_zeros..];
        out.put_i16(significant.len() as i16);
        out.put_i16(weight.max(0));
        out.put_u16(if self.0 < 0 { 0x4000 } else { 0x0000 });
        out.put_i16(0);
        for d in significant.iter().rev() {
            out.put_i16(*d);
        }
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
    to_sql_checked!();
}

/// JSON text as JSONB (binary format version 1: a version byte, then the text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgJsonb(pub Arc<str>);

impl ToSql for PgJsonb {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(v: i128) -> Vec<u8> {
        let mut b = BytesMut::new();
        PgNumeric(v).to_sql(&Type::NUMERIC, &mut b).unwrap();
        b.to_vec()
    }

    #[test]
    fn numeric_layout() {
        // 0: no digits.
        assert_eq!(numeric(0), vec![0, 0, 0, 0, 0, 0, 0, 0]);
        // 12345 = 1 * 10000^1 + 2345.
        assert_eq!(
            numeric(12345),
            vec![0, 2, 0, 1, 0, 0, 0, 0, 0, 1, 0x09, 0x29]
        );
        // -20000 = -(2 * 10000^1): one digit, weight 1, negative.
        assert_eq!(numeric(-20000), vec![0, 1, 0, 1, 0x40, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn timestamp_drops_sub_microseconds() {
        assert_eq!(PgTimestamp(946_684_800_000_000_999).pg_micros(), 0);
        assert_eq!(PgTimestamp(946_684_800_000_001_000).pg_micros(), 1);
    }
}
