//! Why a read failed, as an OPC UA status code that means the same thing (the sample's
//! quality) and as words for the log: Modbus exception codes, timeouts, lost connections and
//! malformed responses.

use std::fmt;

pub use crate::model::status::{codes, Failure};

/// The name of a Modbus exception code and the status code its tags get.
pub fn exception(code: u8) -> Failure {
    use codes::*;
    let (name, status) = match code {
        0x01 => ("illegal function", BAD_NOT_SUPPORTED),
        0x02 => ("illegal data address", BAD_NODE_ID_UNKNOWN),
        0x03 => ("illegal data value", BAD_OUT_OF_RANGE),
        0x04 => ("server device failure", BAD_DEVICE_FAILURE),
        0x05 => (
            "acknowledge (request still in progress)",
            BAD_WAITING_FOR_RESPONSE,
        ),
        0x06 => ("server device busy", BAD_RESOURCE_UNAVAILABLE),
        0x08 => ("memory parity error", BAD_DEVICE_FAILURE),
        0x0A => ("gateway path unavailable", BAD_NOT_CONNECTED),
        0x0B => (
            "gateway target device failed to respond",
            BAD_NO_COMMUNICATION,
        ),
        _ => ("unknown exception", BAD_UNEXPECTED_ERROR),
    };
    Failure {
        code: status,
        reason: format!("Modbus exception 0x{code:02X} {name}"),
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

pub fn malformed(message: impl fmt::Display) -> Failure {
    Failure {
        code: codes::BAD_DECODING_ERROR,
        reason: format!("malformed response: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_are_named_and_bad() {
        let f = exception(2);
        assert_eq!(f.code, codes::BAD_NODE_ID_UNKNOWN);
        assert!(f.reason.contains("illegal data address"), "{f}");
        for c in 0..=255u8 {
            assert_eq!(exception(c).code >> 30, 2, "exception {c} must be bad");
        }
        assert!(format!("{}", exception(4)).contains("0x808B0000"));
    }
}
