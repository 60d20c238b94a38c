//! The OPC UA source's write path: the Write service on the source's live session (shared
//! with the read path: async-opcua sessions take concurrent requests, so a write never waits
//! for a subscription), with the value converted to the node's own data type — learned from
//! the node's current value, read before every write — and a Read for the value before and
//! after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AttributeId, DataValue, NumericRange, ReadValueId, StatusCode, TimestampsToReturn, UAString,
    Variant, VariantScalarTypeId, WriteValue,
};

use super::node_ref::NodeRef;
use super::values::variant_value;
use crate::model::ExtraValue;
use crate::sources::{DeviceValue, PortError, WritePort};

/// The live session and the server's namespace array, while connected.
pub type SessionSlot = Arc<Mutex<Option<(Arc<Session>, Vec<String>)>>>;

/// The write path of one OPC UA source.
pub struct OpcUaWritePort {
    source: String,
    nodes: HashMap<String, (String, NodeRef)>,
    session: SessionSlot,
    timeout: Duration,
    /// The data type of each node's value, from its last read.
    types: Mutex<HashMap<String, VariantScalarTypeId>>,
}

impl OpcUaWritePort {
    /// `nodes`: vendor path → node id text.
    pub fn new(
        source: &str,
        nodes: impl IntoIterator<Item = (String, String)>,
        session: SessionSlot,
        timeout: Duration,
    ) -> OpcUaWritePort {
        OpcUaWritePort {
            source: source.to_string(),
            nodes: nodes
                .into_iter()
                .filter_map(|(tag, id)| NodeRef::parse(&id).ok().map(|r| (tag, (id, r))))
                .collect(),
            session,
            timeout,
            types: Mutex::new(HashMap::new()),
        }
    }

    fn node(&self, vendor_path: &str) -> Result<&(String, NodeRef), PortError> {
        self.nodes.get(vendor_path).ok_or_else(|| {
            PortError::NotWritable(format!("`{vendor_path}` is not a node of this source"))
        })
    }

    fn session(
        &self,
        vendor_path: &str,
    ) -> Result<(Arc<Session>, opcua::types::NodeId), PortError> {
        let (_, node) = self.node(vendor_path)?;
        let slot = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let Some((session, namespaces)) = slot.as_ref() else {
            return Err(PortError::Unavailable(format!(
                "opcua source `{}` has no session",
                self.source
            )));
        };
        let id = node.resolve(namespaces).map_err(PortError::NotWritable)?;
        Ok((session.clone(), id))
    }

    fn timed_out(&self) -> PortError {
        PortError::Timeout(format!(
            "opcua source `{}`: no answer within {} ms",
            self.source,
            self.timeout.as_millis()
        ))
    }
}

/// `value` as a variant of type `t`, or why it does not fit.
pub fn to_variant(
    t: VariantScalarTypeId,
    value: f64,
    extra: Option<&ExtraValue>,
) -> Result<Variant, String> {
    use VariantScalarTypeId as T;
    if let Some(ExtraValue::Text(s)) = extra {
        return match t {
            T::String => Ok(Variant::String(UAString::from(s.as_str()))),
            _ => Err(format!("text given for a node of type {t:?}")),
        };
    }
    let wide: Option<i128> = match extra {
        Some(ExtraValue::Signed(i)) => Some(*i as i128),
        Some(ExtraValue::Unsigned(u)) => Some(*u as i128),
        _ => None,
    };
    if wide.is_none() && !value.is_finite() {
        return Err(format!("{value} is not a finite number"));
    }
    let int = |low: i128, high: i128| -> Result<i128, String> {
        let v = match wide {
            Some(w) => w,
            None if value.fract() != 0.0 => {
                return Err(format!("{value} is not an integer (node type {t:?})"))
            }
            None => value as i128,
        };
        if v < low || v > high {
            return Err(format!(
                "{v} is outside what a {t:?} node holds ({low} to {high})"
            ));
        }
        Ok(v)
    };
    Ok(match t {
        T::Boolean if value == 0.0 || value == 1.0 => Variant::Boolean(value == 1.0),
        T::Boolean => return Err(format!("{value} is not a boolean (0 or 1)")),
        T::SByte => Variant::SByte(int(i8::MIN as i128, i8::MAX as i128)? as i8),
        T::Byte => Variant::Byte(int(0, u8::MAX as i128)? as u8),
        T::Int16 => Variant::Int16(int(i16::MIN as i128, i16::MAX as i128)? as i16),
        T::UInt16 => Variant::UInt16(int(0, u16::MAX as i128)? as u16),
        T::Int32 => Variant::Int32(int(i32::MIN as i128, i32::MAX as i128)? as i32),
        T::UInt32 => Variant::UInt32(int(0, u32::MAX as i128)? as u32),
        T::Int64 => Variant::Int64(int(i64::MIN as i128, i64::MAX as i128)? as i64),
        T::UInt64 => Variant::UInt64(int(0, u64::MAX as i128)? as u64),
        T::Float => {
            if value.abs() > f32::MAX as f64 {
                return Err(format!("{value} is outside what a Float node holds"));
            }
            Variant::Float(value as f32)
        }
        T::Double => Variant::Double(value),
        other => return Err(format!("writing {other:?} nodes is not supported")),
    })
}

fn raw(v: &Variant) -> String {
    format!("{v:?}")
}

#[async_trait::async_trait]
impl WritePort for OpcUaWritePort {
    fn address(&self, vendor_path: &str) -> Result<String, PortError> {
        let (id, _) = self.node(vendor_path)?;
        Ok(format!("node {id}"))
    }

    fn device_key(&self, _vendor_path: &str) -> String {
        // One session per source: its server is the device.
        "session".into()
    }

    fn encode(
        &self,
        vendor_path: &str,
        value: f64,
        extra: Option<&ExtraValue>,
    ) -> Result<String, PortError> {
        self.node(vendor_path)?;
        let t = self
            .types
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(vendor_path)
            .copied();
        match t {
            Some(t) => to_variant(t, value, extra)
                .map(|v| raw(&v))
                .map_err(PortError::Encode),
            // The type is learned at the first read; until then, a number or a text.
            None => Ok(match extra {
                Some(ExtraValue::Text(s)) => format!("String({s:?})"),
                _ => format!("{value}"),
            }),
        }
    }

    async fn read(&self, vendor_path: &str) -> Result<DeviceValue, PortError> {
        let (session, node_id) = self.session(vendor_path)?;
        let ask = ReadValueId {
            node_id,
            attribute_id: AttributeId::Value as u32,
            ..Default::default()
        };
        let values = tokio::time::timeout(
            self.timeout,
            session.read(&[ask], TimestampsToReturn::Neither, 0.0),
        )
        .await
        .map_err(|_| self.timed_out())?
        .map_err(|e| PortError::Unavailable(format!("read: {e}")))?;
        let dv = values
            .into_iter()
            .next()
            .ok_or_else(|| PortError::Device("read: no value returned".into()))?;
        let status = dv.status.unwrap_or(StatusCode::Good);
        if !status.is_good() {
            return Err(PortError::Device(format!("read: {status}")));
        }
        let variant = dv
            .value
            .ok_or_else(|| PortError::Device("read: the node has no value".into()))?;
        let (value, extra) = variant_value(&variant).ok_or_else(|| {
            PortError::NotWritable(format!("the node's value {variant:?} is not a scalar"))
        })?;
        if let Some(t) = variant.scalar_type_id() {
            self.types
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(vendor_path.to_string(), t);
        }
        Ok(DeviceValue {
            value,
            extra,
            raw: raw(&variant),
        })
    }

    async fn write(
        &self,
        vendor_path: &str,
        value: f64,
        extra: Option<&ExtraValue>,
    ) -> Result<(), PortError> {
        let (session, node_id) = self.session(vendor_path)?;
        let t = self
            .types
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(vendor_path)
            .copied()
            .ok_or_else(|| PortError::Encode("the node's data type is not known yet".into()))?;
        let variant = to_variant(t, value, extra).map_err(PortError::Encode)?;
        let write = WriteValue {
            node_id,
            attribute_id: AttributeId::Value as u32,
            index_range: NumericRange::None,
            value: DataValue::value_only(variant),
        };
        let results = tokio::time::timeout(self.timeout, session.write(&[write]))
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| PortError::Unavailable(format!("write: {e}")))?;
        match results.first() {
            Some(s) if s.is_good() => Ok(()),
            Some(s) => Err(PortError::Device(format!("write: {s}"))),
            None => Err(PortError::Device("write: no result returned".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VariantScalarTypeId as T;

    #[test]
    fn values_take_the_node_type_or_are_refused() {
        assert_eq!(to_variant(T::Int16, -5.0, None), Ok(Variant::Int16(-5)));
        assert_eq!(to_variant(T::Float, 2.5, None), Ok(Variant::Float(2.5)));
        assert_eq!(
            to_variant(T::Boolean, 1.0, None),
            Ok(Variant::Boolean(true))
        );
        assert!(to_variant(T::Byte, 300.0, None).is_err());
        assert!(to_variant(T::Int32, 1.5, None).is_err());
        assert!(to_variant(T::Double, 1.0, Some(&ExtraValue::Text("x".into()))).is_err());
        assert_eq!(
            to_variant(T::UInt64, f64::NAN, Some(&ExtraValue::Unsigned(u64::MAX))),
            Ok(Variant::UInt64(u64::MAX))
        );
    }
}
