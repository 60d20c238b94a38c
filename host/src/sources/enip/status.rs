//! Why an EtherNet/IP read failed, as the OPC UA status code its tag gets (as the Modbus and
//! S7 sources map theirs) and in words for the log.

use std::fmt;

use super::cip::{self, Malformed};

pub mod codes {
    pub const BAD_UNEXPECTED_ERROR: u32 = 0x8001_0000;
    pub const BAD_RESOURCE_UNAVAILABLE: u32 = 0x8004_0000;
    pub const BAD_COMMUNICATION_ERROR: u32 = 0x8005_0000;
    pub const BAD_DECODING_ERROR: u32 = 0x8007_0000;
    pub const BAD_TIMEOUT: u32 = 0x800A_0000;
    pub const BAD_USER_ACCESS_DENIED: u32 = 0x801F_0000;
    pub const BAD_NO_COMMUNICATION: u32 = 0x8031_0000;
    pub const BAD_NODE_ID_INVALID: u32 = 0x8033_0000;
    pub const BAD_NODE_ID_UNKNOWN: u32 = 0x8034_0000;
    pub const BAD_OUT_OF_RANGE: u32 = 0x803C_0000;
    pub const BAD_NOT_SUPPORTED: u32 = 0x803D_0000;
    pub const BAD_TYPE_MISMATCH: u32 = 0x8074_0000;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: u32,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (status 0x{:08X})", self.reason, self.code)
    }
}

/// A CIP error status of one tag's reply.
pub fn cip_status(status: u8, extended: &[u16]) -> Failure {
    use codes::*;
    let code = match (status, extended.first()) {
        (0x04 | 0x05, _) => BAD_NODE_ID_UNKNOWN,
        (0x26, _) => BAD_NODE_ID_INVALID,
        (0x08, _) => BAD_NOT_SUPPORTED,
        (0x0F, _) => BAD_USER_ACCESS_DENIED,
        (0x02, _) => BAD_RESOURCE_UNAVAILABLE,
        (0xFF, Some(0x2105)) => BAD_OUT_OF_RANGE,
        (0xFF, Some(0x2107)) => BAD_TYPE_MISMATCH,
        _ => BAD_UNEXPECTED_ERROR,
    };
    Failure {
        code,
        reason: format!(
            "CIP status 0x{status:02X} ({}){}",
            cip::status_name(status),
            if extended.is_empty() {
                String::new()
            } else {
                format!(", extended {extended:04X?}")
            }
        ),
    }
}

pub fn type_mismatch(want: cip::CipType, got: cip::CipType) -> Failure {
    Failure {
        code: codes::BAD_TYPE_MISMATCH,
        reason: format!("the controller has {got} where {want} is configured"),
    }
}

pub fn undecodable(why: impl fmt::Display) -> Failure {
    Failure {
        code: codes::BAD_DECODING_ERROR,
        reason: format!("cannot decode: {why}"),
    }
}

pub fn malformed(e: &Malformed) -> Failure {
    Failure {
        code: codes::BAD_DECODING_ERROR,
        reason: e.to_string(),
    }
}

pub fn timeout(ms: u64) -> Failure {
    Failure {
        code: codes::BAD_TIMEOUT,
        reason: format!("no response within {ms} ms"),
    }
}

pub fn connection(message: impl fmt::Display) -> Failure {
    Failure {
        code: codes::BAD_COMMUNICATION_ERROR,
        reason: format!("connection failed: {message}"),
    }
}

pub fn not_connected(last: &Failure) -> Failure {
    Failure {
        code: codes::BAD_NO_COMMUNICATION,
        reason: format!("not connected, reconnecting (last error: {})", last.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_bad_and_unknown_tags_are_node_id_unknown() {
        assert_eq!(cip_status(0x05, &[0]).code, codes::BAD_NODE_ID_UNKNOWN);
        assert_eq!(cip_status(0xFF, &[0x2105]).code, codes::BAD_OUT_OF_RANGE);
        for s in 1..=255u8 {
            assert_eq!(cip_status(s, &[]).code >> 30, 2);
        }
        assert!(cip_status(0x04, &[]).reason.contains("unknown tag"));
    }
}
