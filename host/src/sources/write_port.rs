//! The write path of a source, beside its read path: a source that can write to its devices
//! registers a `WritePort` under its name at start; write-back (`crate::writes`) finds a
//! tag's port by the tag's source and addresses the tag by its vendor path. A port only
//! encodes, reads and writes one tag at a time; every safety check lives in `crate::writes`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::model::ExtraValue;

/// A value as a device holds it: the decoded value (in the tag's unit, as the read path
/// reports it) and `raw`, the device representation (registers, a bit, a typed OPC UA value)
/// in a canonical text form, so that equal device contents give equal `raw`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceValue {
    pub value: f64,
    pub extra: Option<ExtraValue>,
    pub raw: String,
}

/// Why a port could not do what it was asked.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PortError {
    /// The tag is not one of this source's, or it cannot be written (a read-only table).
    #[error("not writable: {0}")]
    NotWritable(String),
    /// The value does not fit the tag's device type.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// No answer within the time allowed.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The device answered with an error (an exception, a bad status).
    #[error("device refused: {0}")]
    Device(String),
    /// No connection to the device.
    #[error("device unavailable: {0}")]
    Unavailable(String),
}

/// One source's write path.
#[async_trait::async_trait]
pub trait WritePort: Send + Sync {
    /// The one device address `vendor_path` maps to (e.g. `device plc1 holding 10 f32 CDAB`),
    /// or why it cannot be written.
    fn address(&self, vendor_path: &str) -> Result<String, PortError>;
    /// Writes to one device are serialized on this key (the device the tag is on).
    fn device_key(&self, vendor_path: &str) -> String;
    /// The canonical device representation `value` would be written as, without I/O.
    fn encode(
        &self,
        vendor_path: &str,
        value: f64,
        extra: Option<&ExtraValue>,
    ) -> Result<String, PortError>;
    /// Reads the tag's current value from the device.
    async fn read(&self, vendor_path: &str) -> Result<DeviceValue, PortError>;
    /// Writes `value` to the tag.
    async fn write(
        &self,
        vendor_path: &str,
        value: f64,
        extra: Option<&ExtraValue>,
    ) -> Result<(), PortError>;
}

/// The write ports of the running sources, by source name. Sources register theirs at start.
#[derive(Clone, Default)]
pub struct WritePorts {
    ports: Arc<Mutex<BTreeMap<String, Arc<dyn WritePort>>>>,
}

impl WritePorts {
    pub fn register(&self, source: &str, port: Arc<dyn WritePort>) {
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_string(), port);
    }

    pub fn get(&self, source: &str) -> Option<Arc<dyn WritePort>> {
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .cloned()
    }
}
