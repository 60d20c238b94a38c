//! Why an EtherNet/IP read failed, as the OPC UA status code its tag gets (as the Modbus and
//! S7 sources map theirs) and in words for the log.

use std::fmt;

pub use crate::model::status::{codes, Failure};

use super::cip::{self, Malformed};

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
