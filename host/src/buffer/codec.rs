//! The buffer's on-disk encoding: a record is one batch of samples as little-endian columns
//! (24 bytes a sample plus extras) naming tags by durable id; tags are stored once each in
//! their own table. Decoding checks every length, so a damaged record is an error, not a panic.

use crate::model::ResolvedTag;
use crate::model::{DataType, Extra, ExtraValue, SampleBatch};

const RECORD_VERSION: u8 = 1;
const TAG_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("damaged buffer record: {0}")]
pub struct DecodeError(pub String);

/// Encodes `batch` with `durable_ids[i]` as the tag of sample `i`; `appended_ns` is the
/// wall-clock time the record entered the buffer.
pub fn encode_record(batch: &SampleBatch, durable_ids: &[u32], appended_ns: u64) -> Vec<u8> {
    let n = batch.len();
    let mut out = Vec::with_capacity(1 + 8 + 4 + n * 24 + 4);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&appended_ns.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for id in durable_ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    for v in &batch.values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for q in &batch.quality {
        out.extend_from_slice(&q.to_le_bytes());
    }
    for t in &batch.timestamps {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out.extend_from_slice(&(batch.extras.len() as u32).to_le_bytes());
    for e in &batch.extras {
        out.extend_from_slice(&e.index.to_le_bytes());
        match &e.value {
            ExtraValue::Text(s) => {
                out.push(0);
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            ExtraValue::Signed(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            ExtraValue::Unsigned(u) => {
                out.push(2);
                out.extend_from_slice(&u.to_le_bytes());
            }
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            DecodeError(format!(
                "needs {n} bytes at offset {}, has {}",
                self.at,
                self.bytes.len() - self.at
            ))
        })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| DecodeError(e.to_string()))
    }
}

/// The time a record entered the buffer, without decoding the rest.
pub fn record_appended_ns(bytes: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    r.u8()?;
    r.u64()
}

/// Decodes a record into a batch whose tag ids are durable ids, and its append time.
pub fn decode_record(bytes: &[u8]) -> Result<(SampleBatch, u64), DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8()?;
    if version != RECORD_VERSION {
        return Err(DecodeError(format!("unknown record version {version}")));
    }
    let appended = r.u64()?;
    let n = r.u32()? as usize;
    if n.saturating_mul(24) > bytes.len() {
        return Err(DecodeError(format!(
            "{n} samples cannot fit {} bytes",
            bytes.len()
        )));
    }
    let mut b = SampleBatch::with_capacity(n);
    for c in r.take(n * 4)?.chunks_exact(4) {
        b.tag_ids.push(u32::from_le_bytes(c.try_into().unwrap()));
    }
    for c in r.take(n * 8)?.chunks_exact(8) {
        b.values.push(f64::from_le_bytes(c.try_into().unwrap()));
    }
    for c in r.take(n * 4)?.chunks_exact(4) {
        b.quality.push(u32::from_le_bytes(c.try_into().unwrap()));
    }
    for c in r.take(n * 8)?.chunks_exact(8) {
        b.timestamps.push(u64::from_le_bytes(c.try_into().unwrap()));
    }
    let extras = r.u32()?;
    for _ in 0..extras {
        let index = r.u32()?;
        if index as usize >= n {
            return Err(DecodeError(format!("extra for sample {index} of {n}")));
        }
        let value = match r.u8()? {
            0 => ExtraValue::Text(r.string()?),
            1 => ExtraValue::Signed(r.u64()? as i64),
            2 => ExtraValue::Unsigned(r.u64()?),
            k => return Err(DecodeError(format!("unknown extra kind {k}"))),
        };
        b.extras.push(Extra { index, value });
    }
    Ok((b, appended))
}

fn data_type_code(t: DataType) -> u8 {
    match t {
        DataType::Float64 => 0,
        DataType::Float32 => 1,
        DataType::Int64 => 2,
        DataType::Uint64 => 3,
        DataType::Int32 => 4,
        DataType::Uint32 => 5,
        DataType::Int16 => 6,
        DataType::Uint16 => 7,
        DataType::Boolean => 8,
        DataType::Text => 9,
    }
}

fn data_type_of(code: u8) -> Result<DataType, DecodeError> {
    Ok(match code {
        0 => DataType::Float64,
        1 => DataType::Float32,
        2 => DataType::Int64,
        3 => DataType::Uint64,
        4 => DataType::Int32,
        5 => DataType::Uint32,
        6 => DataType::Int16,
        7 => DataType::Uint16,
        8 => DataType::Boolean,
        9 => DataType::Text,
        c => return Err(DecodeError(format!("unknown data type {c}"))),
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes what a sink needs of a tag (everything but the process-local id). Equal tags
/// encode to equal bytes, so the encoding is also the key that interns them.
pub fn encode_tag(t: &ResolvedTag) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(TAG_VERSION);
    out.push(data_type_code(t.data_type));
    put_str(&mut out, &t.source);
    put_str(&mut out, &t.vendor_path);
    put_str(&mut out, &t.path);
    put_str(&mut out, &t.unit);
    out.extend_from_slice(&(t.metadata.len() as u32).to_le_bytes());
    for (k, v) in &t.metadata {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out
}

pub fn decode_tag(id: u32, bytes: &[u8]) -> Result<ResolvedTag, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8()?;
    if version != TAG_VERSION {
        return Err(DecodeError(format!("unknown tag version {version}")));
    }
    let data_type = data_type_of(r.u8()?)?;
    let source = r.string()?;
    let vendor_path = r.string()?;
    let path = r.string()?;
    let unit = r.string()?;
    let n = r.u32()?;
    let mut metadata = Vec::new();
    for _ in 0..n {
        metadata.push((r.string()?, r.string()?));
    }
    Ok(ResolvedTag {
        id,
        source,
        vendor_path,
        path,
        unit,
        data_type,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;

    #[test]
    fn records_and_tags_round_trip_and_damage_is_an_error() {
        let mut b = SampleBatch::default();
        b.push(3, 1.5, Quality::GOOD, 10);
        b.push(4, f64::NAN, Quality::BAD, 11);
        b.extras.push(Extra {
            index: 1,
            value: ExtraValue::Text("open".into()),
        });
        b.extras.push(Extra {
            index: 0,
            value: ExtraValue::Signed(-9_007_199_254_740_993),
        });
        let bytes = encode_record(&b, &[7, 8], 99);
        let (d, appended) = decode_record(&bytes).unwrap();
        assert_eq!(appended, 99);
        assert_eq!(record_appended_ns(&bytes).unwrap(), 99);
        assert_eq!(d.tag_ids, vec![7, 8]);
        assert_eq!(d.values[0], 1.5);
        assert!(d.values[1].is_nan());
        assert_eq!(d.quality, b.quality);
        assert_eq!(d.timestamps, b.timestamps);
        assert_eq!(d.extras, b.extras);
        for cut in [0, 5, 20, bytes.len() - 1] {
            assert!(decode_record(&bytes[..cut]).is_err(), "cut at {cut}");
        }

        let t = ResolvedTag {
            id: 3,
            source: "plc".into(),
            vendor_path: "DB1.W2".into(),
            path: "plant/s/a/l/d/m".into(),
            unit: "kPa".into(),
            data_type: DataType::Int32,
            metadata: vec![("asset".into(), "P-1".into())],
        };
        let enc = encode_tag(&t);
        let back = decode_tag(11, &enc).unwrap();
        assert_eq!(back, ResolvedTag { id: 11, ..t });
        assert!(decode_tag(1, &enc[..enc.len() - 2]).is_err());
    }
}
