//! S7comm framing over ISO-on-TCP (RFC 1006): TPKT, COTP connection request/confirm and data
//! transfer, S7 "setup communication" (PDU size negotiation) and "read var" with many items.
//! Builds requests and parses responses from bytes; no I/O (the client in `client.rs` moves
//! the bytes). Tested against frames captured from python-snap7.

use std::fmt;

/// TPKT header: version 3, reserved, total length (big-endian).
pub const TPKT_LEN: usize = 4;
/// COTP data-transfer header: length 2, type DT (0xF0), last-data-unit flag + number.
const COTP_DT: [u8; 3] = [0x02, 0xF0, 0x80];
const PROTOCOL_ID: u8 = 0x32;
const ROSCTR_JOB: u8 = 0x01;
const ROSCTR_ACK: u8 = 0x02;
const ROSCTR_ACK_DATA: u8 = 0x03;
const FN_READ_VAR: u8 = 0x04;
const FN_SETUP: u8 = 0xF0;
/// Transport size "BYTE" in a request's item address.
const TS_BYTE: u8 = 0x02;

/// S7 header of a job request (10 bytes) and of an acknowledgement with data (12 bytes).
pub const JOB_HEADER: usize = 10;
pub const ACK_HEADER: usize = 12;
/// Bytes a read request takes per item, and a response per item before its data.
pub const REQUEST_ITEM: usize = 12;
pub const RESPONSE_ITEM_HEADER: usize = 4;

/// A protocol violation or refusal in a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The CPU refused the whole request (error class and code of the S7 header).
    #[error("the CPU refused the request: error class 0x{class:02X} code 0x{code:02X} ({})", header_error_name(*class, *code))]
    Refused { class: u8, code: u8 },
}

fn malformed(s: impl Into<String>) -> FrameError {
    FrameError::Malformed(s.into())
}

fn header_error_name(class: u8, code: u8) -> &'static str {
    match (class, code) {
        (0x81, 0x04) => "function not supported or context not allowed",
        (0x85, 0x00) => "PDU size exceeded",
        (0x81, _) => "application relationship error",
        (0x82, _) => "object definition error",
        (0x83, _) => "no resources available",
        (0x84, _) => "error on service processing",
        (0x85, _) => "error on supplies",
        (0x87, _) => "access error",
        _ => "unknown error",
    }
}

fn tpkt(payload_len: usize) -> Vec<u8> {
    let total = (TPKT_LEN + payload_len) as u16;
    let mut v = Vec::with_capacity(total as usize);
    v.extend([0x03, 0x00]);
    v.extend(total.to_be_bytes());
    v
}

/// The TPKT length of a frame whose 4-byte header is `h` (the bytes still to read after it).
pub fn tpkt_remaining(h: &[u8; TPKT_LEN]) -> Result<usize, FrameError> {
    if h[0] != 0x03 {
        return Err(malformed(format!("TPKT version {} (expected 3)", h[0])));
    }
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if len < TPKT_LEN + 3 {
        return Err(malformed(format!("TPKT length {len} is too short")));
    }
    Ok(len - TPKT_LEN)
}

/// COTP connection request with the calling (local) and called (remote) TSAPs, asking for
/// 1024-byte TPDUs.
pub fn connect_request(local_tsap: u16, remote_tsap: u16) -> Vec<u8> {
    let [l0, l1] = local_tsap.to_be_bytes();
    let [r0, r1] = remote_tsap.to_be_bytes();
    let cotp = [
        0x11, 0xE0, 0x00, 0x00, 0x00, 0x01, 0x00, // CR, dst ref 0, src ref 1, class 0
        0xC1, 0x02, l0, l1, // calling TSAP
        0xC2, 0x02, r0, r1, // called TSAP
        0xC0, 0x01, 0x0A, // TPDU size 2^10
    ];
    let mut v = tpkt(cotp.len());
    v.extend(cotp);
    v
}

/// Checks a COTP payload (after the TPKT header) is a connection confirm.
pub fn check_connect_confirm(cotp: &[u8]) -> Result<(), FrameError> {
    match cotp.get(1) {
        Some(0xD0) => Ok(()),
        Some(0x80) => Err(malformed(
            "the CPU disconnected (COTP DR): wrong rack/slot or TSAP?",
        )),
        Some(t) => Err(malformed(format!(
            "COTP type 0x{t:02X} where a connection confirm (0xD0) was expected"
        ))),
        None => Err(malformed("empty COTP payload")),
    }
}

/// The S7 PDU in a COTP data-transfer payload, and whether it is the last fragment.
pub fn data_payload(cotp: &[u8]) -> Result<(&[u8], bool), FrameError> {
    if cotp.len() < 3 || cotp[1] != 0xF0 {
        return Err(malformed(format!(
            "expected COTP data (0xF0), got {:02X?}",
            &cotp[..cotp.len().min(3)]
        )));
    }
    let hlen = cotp[0] as usize + 1;
    if hlen > cotp.len() {
        return Err(malformed("COTP header longer than the frame"));
    }
    Ok((&cotp[hlen..], cotp[2] & 0x80 != 0))
}

fn job(pdu_ref: u16, params: &[u8]) -> Vec<u8> {
    let mut v = tpkt(COTP_DT.len() + JOB_HEADER + params.len());
    v.extend(COTP_DT);
    v.extend([PROTOCOL_ID, ROSCTR_JOB, 0, 0]);
    v.extend(pdu_ref.to_be_bytes());
    v.extend((params.len() as u16).to_be_bytes());
    v.extend(0u16.to_be_bytes());
    v.extend(params);
    v
}

/// "Setup communication" asking for `pdu_size` bytes per PDU and one job in flight.
pub fn setup_request(pdu_ref: u16, pdu_size: u16) -> Vec<u8> {
    let mut p = vec![FN_SETUP, 0x00, 0x00, 0x01, 0x00, 0x01];
    p.extend(pdu_size.to_be_bytes());
    job(pdu_ref, &p)
}

/// One item of a read request: `len` bytes from `start` in `area` (`db` for data blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemSpec {
    pub area: u8,
    pub db: u16,
    pub start: u32,
    pub len: u16,
}

/// "Read var" of `items`, each as BYTE × len.
pub fn read_request(pdu_ref: u16, items: &[ItemSpec]) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + items.len() * REQUEST_ITEM);
    p.extend([FN_READ_VAR, items.len() as u8]);
    for it in items {
        let bits = it.start * 8;
        p.extend([0x12, 0x0A, 0x10, TS_BYTE]);
        p.extend(it.len.to_be_bytes());
        p.extend(it.db.to_be_bytes());
        p.push(it.area);
        p.extend(&bits.to_be_bytes()[1..]);
    }
    job(pdu_ref, &p)
}

/// An acknowledgement: its PDU reference, parameters and data.
#[derive(Debug, PartialEq, Eq)]
pub struct Ack<'a> {
    pub pdu_ref: u16,
    pub params: &'a [u8],
    pub data: &'a [u8],
}

/// Parses an S7 acknowledgement PDU; a header error is `FrameError::Refused`.
pub fn parse_ack(pdu: &[u8]) -> Result<Ack<'_>, FrameError> {
    if pdu.len() < ACK_HEADER || pdu[0] != PROTOCOL_ID {
        return Err(malformed(format!(
            "not an S7 acknowledgement: {:02X?}",
            &pdu[..pdu.len().min(12)]
        )));
    }
    if pdu[1] != ROSCTR_ACK_DATA && pdu[1] != ROSCTR_ACK {
        return Err(malformed(format!(
            "S7 PDU type 0x{:02X} is not an acknowledgement",
            pdu[1]
        )));
    }
    let pdu_ref = u16::from_be_bytes([pdu[4], pdu[5]]);
    let plen = u16::from_be_bytes([pdu[6], pdu[7]]) as usize;
    let dlen = u16::from_be_bytes([pdu[8], pdu[9]]) as usize;
    let (class, code) = (pdu[10], pdu[11]);
    if class != 0 || code != 0 {
        return Err(FrameError::Refused { class, code });
    }
    if ACK_HEADER + plen + dlen > pdu.len() {
        return Err(malformed(format!(
            "parameter {plen} + data {dlen} bytes exceed the {}-byte PDU",
            pdu.len()
        )));
    }
    Ok(Ack {
        pdu_ref,
        params: &pdu[ACK_HEADER..ACK_HEADER + plen],
        data: &pdu[ACK_HEADER + plen..ACK_HEADER + plen + dlen],
    })
}

/// The PDU size the CPU granted in its setup acknowledgement.
pub fn parse_setup(ack: &Ack<'_>) -> Result<u16, FrameError> {
    if ack.params.len() < 8 || ack.params[0] != FN_SETUP {
        return Err(malformed("not a setup-communication acknowledgement"));
    }
    Ok(u16::from_be_bytes([ack.params[6], ack.params[7]]))
}

/// An item's return code other than success (0xFF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemError(pub u8);

impl ItemError {
    pub fn name(self) -> &'static str {
        match self.0 {
            0x01 => "hardware fault",
            0x03 => "access denied",
            0x05 => "address out of range",
            0x06 => "data type not supported",
            0x07 => "data type inconsistent",
            0x0A => "object does not exist",
            _ => "unknown item error",
        }
    }
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item return code 0x{:02X} ({})", self.0, self.name())
    }
}

/// The items of a read-var acknowledgement, in request order: the bytes, or the item's error.
pub fn parse_read(
    ack: &Ack<'_>,
    expected: &[ItemSpec],
) -> Result<Vec<Result<Vec<u8>, ItemError>>, FrameError> {
    if ack.params.len() < 2 || ack.params[0] != FN_READ_VAR {
        return Err(malformed("not a read-var acknowledgement"));
    }
    let count = ack.params[1] as usize;
    if count != expected.len() {
        return Err(malformed(format!(
            "{count} items in the response to a read of {}",
            expected.len()
        )));
    }
    let d = ack.data;
    let mut at = 0;
    let mut out = Vec::with_capacity(count);
    for (i, want) in expected.iter().enumerate() {
        if at + RESPONSE_ITEM_HEADER > d.len() {
            // A failed last item may come as its return code alone.
            if at < d.len() && d[at] != 0xFF {
                out.push(Err(ItemError(d[at])));
                at = d.len();
                continue;
            }
            return Err(malformed(format!("item {i} runs past the data")));
        }
        let (rc, ts) = (d[at], d[at + 1]);
        let raw_len = u16::from_be_bytes([d[at + 2], d[at + 3]]) as usize;
        at += RESPONSE_ITEM_HEADER;
        if rc != 0xFF {
            out.push(Err(ItemError(rc)));
            continue;
        }
        // Lengths are in bits for BIT/BYTE/INT transport sizes, in bytes otherwise.
        let len = match ts {
            0x03..=0x05 => raw_len.div_ceil(8),
            _ => raw_len,
        };
        if len != want.len as usize {
            return Err(malformed(format!(
                "item {i}: {len} bytes for a read of {}",
                want.len
            )));
        }
        if at + len > d.len() {
            return Err(malformed(format!("item {i} runs past the data")));
        }
        out.push(Ok(d[at..at + len].to_vec()));
        at += len;
        // Items are padded to an even length, but not the last.
        if len % 2 == 1 && i + 1 < count {
            at += 1;
        }
    }
    Ok(out)
}

/// Bytes a read-var request of `items` items takes in a PDU.
pub fn request_size(items: usize) -> usize {
    JOB_HEADER + 2 + items * REQUEST_ITEM
}

/// Bytes an item of `len` bytes takes in a read-var response (with its padding).
pub fn response_item_size(len: usize) -> usize {
    RESPONSE_ITEM_HEADER + len + len % 2
}

/// Bytes of a read-var response before its items.
pub const RESPONSE_BASE: usize = ACK_HEADER + 2;

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

    // Frames captured between python-snap7 3.3's client and server on loopback
    // (tests/peers/s7_capture.py): the client's bytes must equal ours; the server's parse.

    #[test]
    fn connect_request_matches_snap7_for_rack_0_slot_1() {
        // Client().connect("127.0.0.1", 0, 1): local TSAP 0x0100, remote 0x0101
        // (connection type PG, rack 0, slot 1).
        assert_eq!(connect_request(0x0100, 0x0101), hex(CAPTURED_CR));
        let cc = hex(CAPTURED_CC);
        let n = tpkt_remaining(&cc[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, cc.len() - 4);
        check_connect_confirm(&cc[4..]).unwrap();
        assert!(check_connect_confirm(&[0x06, 0x80, 0, 0, 0, 1, 0]).is_err());
    }

    #[test]
    fn setup_negotiates_the_pdu_size() {
        let ours = setup_request(CAPTURED_SETUP_REF, 480);
        assert_eq!(ours, hex(CAPTURED_SETUP_REQUEST));
        let resp = hex(CAPTURED_SETUP_RESPONSE);
        let (pdu, last) = data_payload(&resp[4..]).unwrap();
        assert!(last);
        let ack = parse_ack(pdu).unwrap();
        assert_eq!(parse_setup(&ack).unwrap(), 480);
    }

    #[test]
    fn multi_item_read_round_trips_captured_frames() {
        let items = captured_items();
        assert_eq!(
            read_request(CAPTURED_READ_REF, &items),
            hex(CAPTURED_READ_REQUEST)
        );
        let resp = hex(CAPTURED_READ_RESPONSE);
        let (pdu, _) = data_payload(&resp[4..]).unwrap();
        let ack = parse_ack(pdu).unwrap();
        assert_eq!(ack.pdu_ref, CAPTURED_READ_REF);
        let got = parse_read(&ack, &items).unwrap();
        assert_eq!(got, captured_read_values());
    }

    #[test]
    fn refusals_and_truncation_are_errors() {
        // A job refused in the header (ROSCTR ACK, class 0x81 code 0x04).
        let pdu = hex("32 02 0000 0005 0000 0000 8104");
        assert_eq!(
            parse_ack(&pdu).unwrap_err(),
            FrameError::Refused {
                class: 0x81,
                code: 0x04
            }
        );
        let items = [ItemSpec {
            area: 0x84,
            db: 1,
            start: 0,
            len: 4,
        }];
        // Data cut short.
        let pdu = hex("32 03 0000 0001 0002 0006 0000 0401 FF04 0020 0102");
        let ack = parse_ack(&pdu).unwrap();
        assert!(matches!(
            parse_read(&ack, &items),
            Err(FrameError::Malformed(_))
        ));
        // Wrong length for the item.
        let pdu = hex("32 03 0000 0001 0002 0006 0000 0401 FF04 0010 0102");
        let ack = parse_ack(&pdu).unwrap();
        assert!(parse_read(&ack, &items)
            .unwrap_err()
            .to_string()
            .contains("2 bytes for a read of 4"));
        // Declared lengths beyond the PDU.
        assert!(parse_ack(&hex("32 03 0000 0001 0002 0010 0000 0401")).is_err());
        assert!(tpkt_remaining(&[0x04, 0, 0, 9]).is_err());
    }

    #[test]
    fn sizes_follow_the_frame_layout() {
        let items = captured_items();
        let req = read_request(1, &items);
        assert_eq!(
            req.len() - TPKT_LEN - COTP_DT.len(),
            request_size(items.len())
        );
        assert_eq!(response_item_size(3), 8);
        assert_eq!(response_item_size(4), 8);
    }

    include!("proto_captured.rs");
}
