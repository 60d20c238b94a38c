//! Why an S7 read failed, as the OPC UA status code its tags get (as the Modbus source maps
//! its failures) and as words for the log: item return codes, refused requests, timeouts,
//! lost connections and malformed frames.

use std::fmt;

pub use crate::model::status::{codes, Failure};

use super::proto::{FrameError, ItemError};

/// An item refused by the CPU.
pub fn item(e: ItemError) -> Failure {
    use codes::*;
    let code = match e.0 {
        0x01 => BAD_DEVICE_FAILURE,
        0x03 => BAD_USER_ACCESS_DENIED,
        0x05 => BAD_OUT_OF_RANGE,
        0x06 => BAD_NOT_SUPPORTED,
        0x07 => BAD_TYPE_MISMATCH,
        0x0A => BAD_NODE_ID_UNKNOWN,
        _ => BAD_UNEXPECTED_ERROR,
    };
    Failure {
        code,
        reason: format!("S7 {e}"),
    }
}

/// A frame the client cannot use: a refused request or a malformed response.
pub fn frame(e: &FrameError) -> Failure {
    Failure {
        code: match e {
            FrameError::Refused { .. } => codes::BAD_NOT_SUPPORTED,
            FrameError::Malformed(_) => codes::BAD_DECODING_ERROR,
        },
        reason: e.to_string(),
    }
}

/// A value whose bytes are not valid for its type.
pub fn undecodable(why: impl fmt::Display) -> Failure {
    Failure {
        code: codes::BAD_DECODING_ERROR,
        reason: format!("cannot decode: {why}"),
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
    fn every_item_error_is_bad_and_named() {
        assert_eq!(item(ItemError(0x0A)).code, codes::BAD_NODE_ID_UNKNOWN);
        assert!(item(ItemError(0x05))
            .reason
            .contains("address out of range"));
        for c in 0..=0xFEu8 {
            assert_eq!(item(ItemError(c)).code >> 30, 2, "return code {c:#04x}");
        }
        let f = frame(&FrameError::Refused {
            class: 0x81,
            code: 0x04,
        });
        assert!(f.to_string().contains("0x803D0000"), "{f}");
    }
}
