//! EtherNet/IP encapsulation and the CIP messages a Logix tag reader needs: register session,
//! Forward Open (connected messaging) and unconnected messages (Unconnected Send with a route
//! path), symbolic tag paths (`Program:Main.Motor.Speed`, `Temp[3]`), Read Tag, Multiple
//! Service Packet, and decoding the atomic types and strings. Bytes in, bytes out; no I/O.
//! Tested against frames captured between pylogix and cpppo.

use std::fmt;

use crate::model::{DataType, ExtraValue};

pub const ENCAP_HEADER: usize = 24;
pub const REGISTER_SESSION: u16 = 0x0065;
pub const UNREGISTER_SESSION: u16 = 0x0066;
pub const SEND_RR_DATA: u16 = 0x006F;
pub const SEND_UNIT_DATA: u16 = 0x0070;

const READ_TAG: u8 = 0x4C;
const MULTIPLE_SERVICE: u8 = 0x0A;
const FORWARD_OPEN: u8 = 0x54;
const UNCONNECTED_SEND: u8 = 0x52;
/// Path to the Message Router (class 2, instance 1) and the Connection Manager (6, 1).
const MESSAGE_ROUTER: [u8; 4] = [0x20, 0x02, 0x24, 0x01];
const CONNECTION_MANAGER: [u8; 4] = [0x20, 0x06, 0x24, 0x01];

/// A frame or message that is not what it should be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed EtherNet/IP frame: {0}")]
pub struct Malformed(pub String);

fn bad(s: impl Into<String>) -> Malformed {
    Malformed(s.into())
}

fn u16le(b: &[u8], at: usize) -> Result<u16, Malformed> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| bad(format!("cut short at byte {at}")))
}

fn u32le(b: &[u8], at: usize) -> Result<u32, Malformed> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| bad(format!("cut short at byte {at}")))
}

/// An encapsulation frame: command, session handle, sender context and data.
pub fn encap(command: u16, session: u32, context: u64, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ENCAP_HEADER + data.len());
    v.extend(command.to_le_bytes());
    v.extend((data.len() as u16).to_le_bytes());
    v.extend(session.to_le_bytes());
    v.extend(0u32.to_le_bytes());
    v.extend(context.to_le_bytes());
    v.extend(0u32.to_le_bytes());
    v.extend(data);
    v
}

/// The header fields of a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapHeader {
    pub command: u16,
    pub length: u16,
    pub session: u32,
    pub status: u32,
    pub context: u64,
}

pub fn parse_header(h: &[u8; ENCAP_HEADER]) -> EncapHeader {
    EncapHeader {
        command: u16::from_le_bytes([h[0], h[1]]),
        length: u16::from_le_bytes([h[2], h[3]]),
        session: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        status: u32::from_le_bytes([h[8], h[9], h[10], h[11]]),
        context: u64::from_le_bytes(h[12..20].try_into().expect("8 bytes")),
    }
}

/// Register Session data: protocol version 1, no options.
pub fn register_session() -> Vec<u8> {
    encap(REGISTER_SESSION, 0, 0, &[1, 0, 0, 0])
}

/// SendRRData (unconnected): a null address item and an unconnected data item.
pub fn send_rr_data(session: u32, context: u64, cip: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(16 + cip.len());
    d.extend([0, 0, 0, 0, 0x0A, 0x00, 0x02, 0x00, 0, 0, 0, 0, 0xB2, 0x00]);
    d.extend((cip.len() as u16).to_le_bytes());
    d.extend(cip);
    encap(SEND_RR_DATA, session, context, &d)
}

/// SendUnitData (connected): the connection's address item and a sequenced data item.
pub fn send_unit_data(session: u32, connection: u32, sequence: u16, cip: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(22 + cip.len());
    d.extend([0, 0, 0, 0, 0, 0, 0x02, 0x00, 0xA1, 0x00, 0x04, 0x00]);
    d.extend(connection.to_le_bytes());
    d.extend([0xB1, 0x00]);
    d.extend((cip.len() as u16 + 2).to_le_bytes());
    d.extend(sequence.to_le_bytes());
    d.extend(cip);
    encap(SEND_UNIT_DATA, session, 0, &d)
}

/// The CIP message in a SendRRData or SendUnitData reply (without the connected sequence
/// number), and that sequence number for connected data.
pub fn cip_payload(data: &[u8]) -> Result<(&[u8], Option<u16>), Malformed> {
    let count = u16le(data, 6)? as usize;
    let mut at = 8;
    for _ in 0..count {
        let kind = u16le(data, at)?;
        let len = u16le(data, at + 2)? as usize;
        let body = data
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| bad("an item runs past the frame"))?;
        match kind {
            0x00B2 => return Ok((body, None)),
            0x00B1 if len >= 2 => return Ok((&body[2..], Some(u16le(body, 0)?))),
            _ => {}
        }
        at += 4 + len;
    }
    Err(bad("no data item in the reply"))
}

/// A Logix tag path as CIP segments: `.`-separated symbols (a program scope such as
/// `Program:Main` is one symbol), each with optional `[i]` or `[i,j,k]` element indices.
pub fn tag_path(tag: &str) -> Result<Vec<u8>, String> {
    let mut p = Vec::new();
    if tag.trim().is_empty() {
        return Err("an empty tag path".into());
    }
    for part in split_members(tag)? {
        let (name, indices) = match part.find('[') {
            Some(i) => {
                let inner = part[i + 1..]
                    .strip_suffix(']')
                    .ok_or_else(|| format!("`{tag}`: `[` without a closing `]`"))?;
                let idx = inner
                    .split(',')
                    .map(|n| n.trim().parse::<u32>())
                    .collect::<Result<Vec<u32>, _>>()
                    .map_err(|_| format!("`{tag}`: array indices must be numbers"))?;
                (&part[..i], idx)
            }
            None => (part, Vec::new()),
        };
        let name = name.trim();
        if name.is_empty() || name.len() > 255 {
            return Err(format!("`{tag}`: empty or too long member name"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!("`{tag}`: `{name}` is not a Logix symbol"));
        }
        p.push(0x91);
        p.push(name.len() as u8);
        p.extend(name.as_bytes());
        if name.len() % 2 == 1 {
            p.push(0);
        }
        for i in indices {
            if i < 0x100 {
                p.extend([0x28, i as u8]);
            } else if i < 0x1_0000 {
                p.extend([0x29, 0x00]);
                p.extend((i as u16).to_le_bytes());
            } else {
                p.extend([0x2A, 0x00]);
                p.extend(i.to_le_bytes());
            }
        }
    }
    Ok(p)
}

/// Splits at `.` outside brackets.
fn split_members(tag: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0i32, 0);
    for (i, c) in tag.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                parts.push(&tag[from..i]);
                from = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("`{tag}`: `]` without `[`"));
        }
    }
    parts.push(&tag[from..]);
    Ok(parts)
}

/// Read Tag of one element of the tag at `path`.
pub fn read_tag(path: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + path.len());
    v.push(READ_TAG);
    v.push((path.len() / 2) as u8);
    v.extend(path);
    v.extend(1u16.to_le_bytes());
    v
}

/// A Multiple Service Packet of `requests` to the Message Router.
pub fn multiple(requests: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![MULTIPLE_SERVICE, 0x02];
    v.extend(MESSAGE_ROUTER);
    v.extend((requests.len() as u16).to_le_bytes());
    let mut offset = 2 + 2 * requests.len();
    for r in requests {
        v.extend((offset as u16).to_le_bytes());
        offset += r.len();
    }
    for r in requests {
        v.extend(r);
    }
    v
}

/// Bytes a Multiple Service Packet of requests of these sizes takes.
pub fn multiple_size(request_sizes: impl Iterator<Item = usize>) -> usize {
    let (n, sum) = request_sizes.fold((0, 0), |(n, s), r| (n + 1, s + r));
    6 + 2 + 2 * n + sum
}

/// Bytes its reply takes, for replies of these sizes.
pub fn multiple_reply_size(reply_sizes: impl Iterator<Item = usize>) -> usize {
    let (n, sum) = reply_sizes.fold((0, 0), |(n, s), r| (n + 1, s + r));
    4 + 2 + 2 * n + sum
}

/// Unconnected Send through the Connection Manager to the CPU at `route` (port, link pairs).
pub fn unconnected_send(cip: &[u8], route: &[u8]) -> Vec<u8> {
    let mut v = vec![UNCONNECTED_SEND, 0x02];
    v.extend(CONNECTION_MANAGER);
    v.extend([0x0A, 0x0E]);
    v.extend((cip.len() as u16).to_le_bytes());
    v.extend(cip);
    if cip.len() % 2 == 1 {
        v.push(0);
    }
    v.push((route.len() / 2) as u8);
    v.push(0);
    v.extend(route);
    v
}

/// Forward Open to the CPU at `route`, for a class 3 (explicit messaging) connection of
/// `size` bytes each way.
pub fn forward_open(t_to_o: u32, serial: u16, route: &[u8], size: u16) -> Vec<u8> {
    let mut v = vec![FORWARD_OPEN, 0x02];
    v.extend(CONNECTION_MANAGER);
    v.extend([0x0A, 0x0E]);
    v.extend(0u32.to_le_bytes()); // O→T id, chosen by the target
    v.extend(t_to_o.to_le_bytes());
    v.extend(serial.to_le_bytes());
    v.extend(0x1337u16.to_le_bytes()); // originator vendor id
    v.extend(0x4652_4C45u32.to_le_bytes()); // originator serial ("FRLE")
    v.extend([0x03, 0, 0, 0]); // timeout multiplier ×32, reserved
    let params = 0x4200u16 | (size & 0x01FF);
    v.extend(2_000_000u32.to_le_bytes());
    v.extend(params.to_le_bytes());
    v.extend(2_000_000u32.to_le_bytes());
    v.extend(params.to_le_bytes());
    v.push(0xA3); // class 3, application trigger, server
    let path: Vec<u8> = route.iter().copied().chain(MESSAGE_ROUTER).collect();
    v.push((path.len() / 2) as u8);
    v.extend(path);
    v
}

/// A CIP reply: its service, general status, extended status words and data.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    pub service: u8,
    pub status: u8,
    pub extended: Vec<u16>,
    pub data: &'a [u8],
}

pub fn parse_reply(b: &[u8]) -> Result<Reply<'_>, Malformed> {
    if b.len() < 4 {
        return Err(bad(format!("a CIP reply of {} bytes", b.len())));
    }
    let words = b[3] as usize;
    let data_at = 4 + 2 * words;
    if b.len() < data_at {
        return Err(bad("extended status runs past the reply"));
    }
    let extended = (0..words)
        .map(|i| u16::from_le_bytes([b[4 + 2 * i], b[5 + 2 * i]]))
        .collect();
    Ok(Reply {
        service: b[0],
        status: b[2],
        extended,
        data: &b[data_at..],
    })
}

/// The replies inside a Multiple Service Packet reply's data.
pub fn parse_multiple(data: &[u8], expected: usize) -> Result<Vec<Reply<'_>>, Malformed> {
    let n = u16le(data, 0)? as usize;
    if n != expected {
        return Err(bad(format!("{n} replies to {expected} requests")));
    }
    let offsets = (0..n)
        .map(|i| u16le(data, 2 + 2 * i).map(|o| o as usize))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let from = offsets[i];
        let to = offsets.get(i + 1).copied().unwrap_or(data.len());
        if from > to || to > data.len() {
            return Err(bad("reply offsets out of order"));
        }
        out.push(parse_reply(&data[from..to])?);
    }
    Ok(out)
}

/// The connection ids of a Forward Open reply: (O→T, T→O).
pub fn parse_forward_open(r: &Reply<'_>) -> Result<(u32, u32), Malformed> {
    Ok((u32le(r.data, 0)?, u32le(r.data, 4)?))
}

/// The CIP type codes of Logix atomic types and strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipType {
    Bool,
    SInt,
    Int,
    DInt,
    LInt,
    USInt,
    UInt,
    UDInt,
    ULInt,
    Real,
    LReal,
    /// A Logix STRING (structure: DINT length, SINT[82]).
    String,
}

impl CipType {
    pub fn parse(s: &str) -> Result<CipType, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "bool" => CipType::Bool,
            "sint" => CipType::SInt,
            "int" => CipType::Int,
            "dint" => CipType::DInt,
            "lint" => CipType::LInt,
            "usint" => CipType::USInt,
            "uint" => CipType::UInt,
            "udint" => CipType::UDInt,
            "ulint" => CipType::ULInt,
            "real" => CipType::Real,
            "lreal" => CipType::LReal,
            "string" => CipType::String,
            _ => {
                return Err(format!(
                    "unknown type `{s}` (bool, sint, int, dint, lint, usint, uint, udint, ulint, real, lreal, string)"
                ))
            }
        })
    }

    /// Bytes a Read Tag reply of this type takes (type code, value).
    pub fn reply_size(self) -> usize {
        4 + match self {
            CipType::Bool | CipType::SInt | CipType::USInt => 2 + 1,
            CipType::Int | CipType::UInt => 2 + 2,
            CipType::DInt | CipType::UDInt | CipType::Real => 2 + 4,
            CipType::LInt | CipType::ULInt | CipType::LReal => 2 + 8,
            CipType::String => 4 + 4 + 84,
        }
    }

    pub fn data_type(self) -> DataType {
        match self {
            CipType::Bool => DataType::Boolean,
            CipType::SInt | CipType::Int => DataType::Int16,
            CipType::USInt | CipType::UInt => DataType::Uint16,
            CipType::DInt => DataType::Int32,
            CipType::UDInt => DataType::Uint32,
            CipType::LInt => DataType::Int64,
            CipType::ULInt => DataType::Uint64,
            CipType::Real => DataType::Float32,
            CipType::LReal => DataType::Float64,
            CipType::String => DataType::Text,
        }
    }
}

impl fmt::Display for CipType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CipType::Bool => "BOOL",
            CipType::SInt => "SINT",
            CipType::Int => "INT",
            CipType::DInt => "DINT",
            CipType::LInt => "LINT",
            CipType::USInt => "USINT",
            CipType::UInt => "UINT",
            CipType::UDInt => "UDINT",
            CipType::ULInt => "ULINT",
            CipType::Real => "REAL",
            CipType::LReal => "LREAL",
            CipType::String => "STRING",
        })
    }
}

/// A decoded value: the number (NaN for text), the side-channel value for text and for
/// 64-bit integers a double cannot hold, and the type the controller said it has.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub value: f64,
    pub extra: Option<ExtraValue>,
    pub ty: CipType,
}

/// Decodes a Read Tag reply's data: type code, then the value.
pub fn decode(data: &[u8]) -> Result<Value, String> {
    let code = u16le(data, 0).map_err(|e| e.0)?;
    let v = &data[2..];
    let need = |n: usize| {
        if v.len() < n {
            Err(format!("type 0x{code:04X} with {} of {n} bytes", v.len()))
        } else {
            Ok(())
        }
    };
    let num = |value: f64, ty| Value {
        value,
        extra: None,
        ty,
    };
    Ok(match code {
        0xC1 => {
            need(1)?;
            num(if v[0] != 0 { 1.0 } else { 0.0 }, CipType::Bool)
        }
        0xC2 => {
            need(1)?;
            num(v[0] as i8 as f64, CipType::SInt)
        }
        0xC6 => {
            need(1)?;
            num(v[0] as f64, CipType::USInt)
        }
        0xC3 => {
            need(2)?;
            num(i16::from_le_bytes([v[0], v[1]]) as f64, CipType::Int)
        }
        0xC7 => {
            need(2)?;
            num(u16::from_le_bytes([v[0], v[1]]) as f64, CipType::UInt)
        }
        0xC4 => {
            need(4)?;
            num(
                i32::from_le_bytes(v[..4].try_into().unwrap()) as f64,
                CipType::DInt,
            )
        }
        0xC8 => {
            need(4)?;
            num(
                u32::from_le_bytes(v[..4].try_into().unwrap()) as f64,
                CipType::UDInt,
            )
        }
        0xCA => {
            need(4)?;
            num(
                f32::from_le_bytes(v[..4].try_into().unwrap()) as f64,
                CipType::Real,
            )
        }
        0xCB => {
            need(8)?;
            num(
                f64::from_le_bytes(v[..8].try_into().unwrap()),
                CipType::LReal,
            )
        }
        0xC5 => {
            need(8)?;
            let x = i64::from_le_bytes(v[..8].try_into().unwrap());
            Value {
                value: x as f64,
                extra: (x.unsigned_abs() > 1 << 53).then_some(ExtraValue::Signed(x)),
                ty: CipType::LInt,
            }
        }
        0xC9 => {
            need(8)?;
            let x = u64::from_le_bytes(v[..8].try_into().unwrap());
            Value {
                value: x as f64,
                extra: (x > 1 << 53).then_some(ExtraValue::Unsigned(x)),
                ty: CipType::ULInt,
            }
        }
        // CIP STRING (UINT length) and SHORT_STRING (USINT length).
        0xD0 | 0xDA => {
            let (len, at) = if code == 0xD0 {
                need(2)?;
                (u16::from_le_bytes([v[0], v[1]]) as usize, 2)
            } else {
                need(1)?;
                (v[0] as usize, 1)
            };
            need(at + len)?;
            text(&v[at..at + len])
        }
        // A structure: the Logix STRING (handle 0x0FCE) is DINT length + SINT[82].
        0xA0 => {
            let handle = u16le(v, 0).map_err(|e| e.0)?;
            if handle != 0x0FCE {
                return Err(format!(
                    "a structure (handle 0x{handle:04X}); read its atomic members (`Tag.Member`)"
                ));
            }
            need(6)?;
            let len = u32::from_le_bytes(v[2..6].try_into().unwrap()) as usize;
            if len > 82 || v.len() < 6 + len {
                return Err(format!("a STRING of length {len} in {} bytes", v.len()));
            }
            text(&v[6..6 + len])
        }
        other => return Err(format!("unsupported CIP type 0x{other:04X}")),
    })
}

fn text(b: &[u8]) -> Value {
    Value {
        value: f64::NAN,
        extra: Some(ExtraValue::Text(b.iter().map(|c| char::from(*c)).collect())),
        ty: CipType::String,
    }
}

/// The name of a CIP general status.
pub fn status_name(s: u8) -> &'static str {
    match s {
        0x01 => "connection failure",
        0x02 => "resource unavailable",
        0x03 => "invalid parameter value",
        0x04 => "path segment error (unknown tag)",
        0x05 => "path destination unknown (unknown tag)",
        0x06 => "partial transfer",
        0x08 => "service not supported",
        0x0A => "attribute list error",
        0x0C => "object state conflict",
        0x0F => "privilege violation",
        0x10 => "device state conflict",
        0x13 => "not enough data",
        0x15 => "too much data",
        0x1E => "embedded service error",
        0x26 => "path size invalid",
        0xFF => "general error",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Frames captured between pylogix 1.1 and cpppo 5.2 (tests/peers/enip_capture.py).
    const REGISTER: &str = "650004000000000000000000312e312e362020200000000001000000";
    const READ_COUNT: &str = "70002200333cfdb5000000005765277265000000000000000000000000000200a1000400d7239fc3b1000e0001004c049105436f756e74000100";
    const READ_COUNT_REPLY: &str = "70002000333cfdb5000000005765277265000000000000000000000000000200a1000400d7239fc3b1000c000100cc000000c40000000000";
    const MULTI: &str = "70005e00333cfdb5000000006b6e6f7700000000000000000000000000000200a1000400d7239fc3b1004a0008000a022002240105000c00180024002e0038004c049105436f756e740001004c04910454656d70280201004c0391044e6f706501004c039104466c616701004c0391034d6964000100";
    const MULTI_REPLY: &str = "70004f00333cfdb5000000006b6e6f7700000000000000000000000000000200a1000400d7239fc3b1003b0008008a00000005000c001600200026002d00cc000000c40040e20100cc000000ca000000c03fcc0005010000cc000000c10000cc000000c3000000";

    #[test]
    fn register_session_matches_pylogix_but_the_context() {
        let ours = register_session();
        let theirs = hex(REGISTER);
        assert_eq!(ours[..12], theirs[..12]);
        assert_eq!(ours[24..], theirs[24..]);
    }

    #[test]
    fn connected_read_and_multiple_service_match_captured_frames() {
        let session = 0xB5FD_3C33;
        let conn = 0xC39F_23D7;
        let count = read_tag(&tag_path("Count").unwrap());
        let frame = send_unit_data(session, conn, 1, &count);
        let theirs = hex(READ_COUNT);
        // pylogix puts text in the sender context; the rest is byte for byte.
        assert_eq!(frame[..12], theirs[..12]);
        assert_eq!(frame[20..], theirs[20..]);

        let requests: Vec<Vec<u8>> = ["Count", "Temp[2]", "Nope", "Flag", "Mid"]
            .iter()
            .map(|t| read_tag(&tag_path(t).unwrap()))
            .collect();
        let frame = send_unit_data(session, conn, 8, &multiple(&requests));
        assert_eq!(frame[20..], hex(MULTI)[20..]);
        assert_eq!(
            multiple_size(requests.iter().map(|r| r.len())),
            multiple(&requests).len()
        );

        let reply = hex(MULTI_REPLY);
        let (cip, seq) = cip_payload(&reply[24..]).unwrap();
        assert_eq!(seq, Some(8));
        let r = parse_reply(cip).unwrap();
        assert_eq!((r.service, r.status), (0x8A, 0));
        let replies = parse_multiple(r.data, 5).unwrap();
        assert_eq!(decode(replies[0].data).unwrap().value, 123456.0);
        assert_eq!(decode(replies[1].data).unwrap().value, 1.5);
        assert_eq!(
            (replies[2].status, replies[2].extended.clone()),
            (0x05, vec![0])
        );
        assert_eq!(decode(replies[3].data).unwrap().ty, CipType::Bool);
        assert_eq!(decode(replies[4].data).unwrap().ty, CipType::Int);

        let one = hex(READ_COUNT_REPLY);
        let (cip, _) = cip_payload(&one[24..]).unwrap();
        let r = parse_reply(cip).unwrap();
        assert_eq!(
            decode(r.data).unwrap(),
            Value {
                value: 0.0,
                extra: None,
                ty: CipType::DInt
            }
        );
    }

    #[test]
    fn tag_paths_encode_programs_members_and_indices() {
        assert_eq!(
            tag_path("Program:Main.Motor.Speed").unwrap(),
            [
                &[0x91, 12][..],
                b"Program:Main",
                &[0x91, 5],
                b"Motor",
                &[0],
                &[0x91, 5],
                b"Speed",
                &[0]
            ]
            .concat()
        );
        assert_eq!(
            tag_path("T[1,300,70000]").unwrap(),
            [
                &[0x91, 1][..],
                b"T",
                &[0, 0x28, 1, 0x29, 0, 0x2C, 0x01, 0x2A, 0],
                &70000u32.to_le_bytes()
            ]
            .concat()
        );
        for bad in ["", "A[", "A]", "A.[1]", "A b", "A[x]"] {
            assert!(tag_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn logix_strings_and_wide_integers_decode() {
        let mut s = vec![0xA0, 0x00, 0xCE, 0x0F, 4, 0, 0, 0];
        s.extend(b"PUMP");
        s.extend([0u8; 78]);
        assert_eq!(
            decode(&s).unwrap().extra,
            Some(ExtraValue::Text("PUMP".into()))
        );
        assert_eq!(
            decode(&[0xD0, 0, 2, 0, b'h', b'i']).unwrap().extra,
            Some(ExtraValue::Text("hi".into()))
        );
        let big = (1i64 << 60) + 7;
        let mut l = vec![0xC5, 0];
        l.extend(big.to_le_bytes());
        assert_eq!(decode(&l).unwrap().extra, Some(ExtraValue::Signed(big)));
        assert!(decode(&[0xA0, 0, 0x34, 0x12, 0, 0])
            .unwrap_err()
            .contains("structure"));
        assert!(decode(&[0xCA, 0, 1, 2]).is_err());
    }
}
