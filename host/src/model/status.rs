//! Why a device read failed, in the one vocabulary every sink understands: the OPC UA status
//! code a tag's samples get as their quality (bits 31..30 `10` = bad), with the reason in words
//! for the log. Every protocol source (Modbus, S7, EtherNet/IP) maps its own errors onto these.

use std::fmt;

/// OPC UA status codes the protocol sources use for failed reads.
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
    pub const BAD_NOT_CONNECTED: u32 = 0x808A_0000;
    pub const BAD_DEVICE_FAILURE: u32 = 0x808B_0000;
    pub const BAD_WAITING_FOR_RESPONSE: u32 = 0x80B2_0000;
}

/// A failed read: the quality its tags get and the reason in words.
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
