//! The Modbus source's write path: maps a vendor path to its one device address, encodes a
//! value with the read path's codec (every type and word order), and sends single requests
//! into the device's task (`DeviceRequest`), which runs them between polls on its connection:
//! write single/multiple registers, mask-write for a bit of a register, write a coil, and the
//! reads before and after.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_modbus::{Request, Response};

use super::codec::{decode_bit, decode_registers, encode_bit, encode_registers, Layout};
use super::config::{DeviceConfig, Table, ValueType};
use super::device::DeviceRequest;
use crate::model::ExtraValue;
use crate::sources::{DeviceValue, PortError, WritePort};

/// Where one tag lives.
#[derive(Clone, Debug)]
struct Address {
    device: usize,
    table: Table,
    address: u16,
    span: u16,
    layout: Layout,
}

struct DeviceLink {
    name: String,
    requests: mpsc::Sender<DeviceRequest>,
    /// Longest a request may wait for the device task and the device (two timeouts: one for
    /// a poll the request waits behind, one for its own).
    wait: Duration,
}

/// The write path of one Modbus source.
pub struct ModbusWritePort {
    tags: HashMap<String, Result<Address, String>>,
    devices: Vec<DeviceLink>,
}

impl ModbusWritePort {
    /// The port for `devices`, and the request queue each device task takes.
    pub fn new(devices: &[DeviceConfig]) -> (ModbusWritePort, Vec<mpsc::Receiver<DeviceRequest>>) {
        let mut tags = HashMap::new();
        let mut links = Vec::new();
        let mut receivers = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            let (tx, rx) = mpsc::channel(16);
            links.push(DeviceLink {
                name: d.name.clone(),
                requests: tx,
                wait: Duration::from_millis(d.timeout_ms * 2 + 100),
            });
            receivers.push(rx);
            for r in &d.registers {
                let addr = Address {
                    device: i,
                    table: r.table,
                    address: r.address,
                    span: r.span(),
                    layout: Layout {
                        value_type: r.value_type(),
                        order: r.order,
                        bit: r.bit,
                        scale: r.scale,
                        offset: r.offset,
                    },
                };
                let entry = if matches!(r.table, Table::Input | Table::DiscreteInput) {
                    Err(format!(
                        "`{}` is in the read-only {} table of device `{}`",
                        r.tag,
                        r.table.as_str(),
                        d.name
                    ))
                } else {
                    Ok(addr)
                };
                // The same vendor path twice in one source is two device addresses.
                tags.entry(r.tag.clone())
                    .and_modify(|e| {
                        *e = Err(format!("`{}` maps to more than one device address", r.tag))
                    })
                    .or_insert(entry);
            }
        }
        (
            ModbusWritePort {
                tags,
                devices: links,
            },
            receivers,
        )
    }

    fn lookup(&self, vendor_path: &str) -> Result<&Address, PortError> {
        match self.tags.get(vendor_path) {
            None => Err(PortError::NotWritable(format!(
                "`{vendor_path}` is not in this source's register map"
            ))),
            Some(Err(e)) => Err(PortError::NotWritable(e.clone())),
            Some(Ok(a)) => Ok(a),
        }
    }

    async fn call(&self, a: &Address, request: Request<'static>) -> Result<Response, PortError> {
        let link = &self.devices[a.device];
        let (tx, rx) = oneshot::channel();
        let send = link.requests.send(DeviceRequest { request, reply: tx });
        let answer = async {
            send.await
                .map_err(|_| PortError::Unavailable(format!("device `{}` stopped", link.name)))?;
            rx.await
                .map_err(|_| PortError::Unavailable(format!("device `{}` stopped", link.name)))
        };
        match tokio::time::timeout(link.wait, answer).await {
            Err(_) => Err(PortError::Timeout(format!(
                "device `{}` did not answer within {} ms",
                link.name,
                link.wait.as_millis()
            ))),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Err(f))) if f.code == super::codes::BAD_TIMEOUT => {
                Err(PortError::Timeout(format!("device `{}`: {f}", link.name)))
            }
            Ok(Ok(Err(f))) if f.reason.starts_with("Modbus exception") => {
                Err(PortError::Device(format!("device `{}`: {f}", link.name)))
            }
            Ok(Ok(Err(f))) => Err(PortError::Unavailable(format!(
                "device `{}`: {f}",
                link.name
            ))),
            Ok(Ok(Ok(r))) => Ok(r),
        }
    }

    fn encoded(a: &Address, value: f64, extra: Option<&ExtraValue>) -> Result<Encoded, PortError> {
        let e = |e: super::codec::EncodeError| PortError::Encode(e.to_string());
        Ok(match a.table {
            Table::Coil => Encoded::Coil(encode_bit(&a.layout, value).map_err(e)?),
            _ if a.layout.value_type == ValueType::Bool => {
                let words = encode_registers(&a.layout, 1, value, extra).map_err(e)?;
                Encoded::Bit(words[0] != 0)
            }
            _ => Encoded::Words(encode_registers(&a.layout, a.span, value, extra).map_err(e)?),
        })
    }
}

/// A value in the device's representation.
enum Encoded {
    Coil(bool),
    /// The value of a bit of a register.
    Bit(bool),
    Words(Vec<u16>),
}

fn raw_words(words: &[u16]) -> String {
    let hex: Vec<String> = words.iter().map(|w| format!("{w:04x}")).collect();
    format!("registers [{}]", hex.join(" "))
}

fn raw_bit(on: bool) -> String {
    format!("bit {}", on as u8)
}

#[async_trait::async_trait]
impl WritePort for ModbusWritePort {
    fn address(&self, vendor_path: &str) -> Result<String, PortError> {
        let a = self.lookup(vendor_path)?;
        let device = &self.devices[a.device].name;
        Ok(match (a.table, a.layout.value_type) {
            (Table::Coil, _) => format!("device `{device}` coil {}", a.address),
            (_, ValueType::Bool) => format!(
                "device `{device}` {} {} bit {}",
                a.table.as_str(),
                a.address,
                a.layout.bit.unwrap_or(0)
            ),
            (t, v) => format!(
                "device `{device}` {} {}..={} {v:?} {:?}",
                t.as_str(),
                a.address,
                a.address as u32 + a.span as u32 - 1,
                a.layout.order
            ),
        })
    }

    fn device_key(&self, vendor_path: &str) -> String {
        match self.lookup(vendor_path) {
            Ok(a) => self.devices[a.device].name.clone(),
            Err(_) => String::new(),
        }
    }

    fn encode(
        &self,
        vendor_path: &str,
        value: f64,
        extra: Option<&ExtraValue>,
    ) -> Result<String, PortError> {
        let a = self.lookup(vendor_path)?;
        Ok(match Self::encoded(a, value, extra)? {
            Encoded::Coil(b) | Encoded::Bit(b) => raw_bit(b),
            Encoded::Words(w) => raw_words(&w),
        })
    }

    async fn read(&self, vendor_path: &str) -> Result<DeviceValue, PortError> {
        let a = self.lookup(vendor_path)?.clone();
        if a.table == Table::Coil {
            return match self.call(&a, Request::ReadCoils(a.address, 1)).await? {
                Response::ReadCoils(bits) if !bits.is_empty() => Ok(DeviceValue {
                    value: decode_bit(&a.layout, bits[0]).value,
                    extra: None,
                    raw: raw_bit(bits[0]),
                }),
                other => Err(PortError::Device(format!("unexpected answer {other:?}"))),
            };
        }
        match self
            .call(&a, Request::ReadHoldingRegisters(a.address, a.span))
            .await?
        {
            Response::ReadHoldingRegisters(words) if words.len() == a.span as usize => {
                let d = decode_registers(&a.layout, &words);
                let raw = if a.layout.value_type == ValueType::Bool {
                    raw_bit(d.value != a.layout.offset)
                } else {
                    raw_words(&words)
                };
                Ok(DeviceValue {
                    value: d.value,
                    extra: d.extra,
                    raw,
                })
            }
            other => Err(PortError::Device(format!("unexpected answer {other:?}"))),
        }
    }

    async fn write(
        &self,
        vendor_path: &str,
        value: f64,
        extra: Option<&ExtraValue>,
    ) -> Result<(), PortError> {
        let a = self.lookup(vendor_path)?.clone();
        let request = match Self::encoded(&a, value, extra)? {
            Encoded::Coil(on) => Request::WriteSingleCoil(a.address, on),
            Encoded::Bit(on) => {
                // Mask write (function 22): only the tag's bit changes, atomically on the device.
                let bit = a.layout.bit.unwrap_or(0) & 15;
                let swap = |w: u16| {
                    if a.layout.order.bytes_swapped() {
                        w.swap_bytes()
                    } else {
                        w
                    }
                };
                Request::MaskWriteRegister(
                    a.address,
                    swap(!(1u16 << bit)),
                    swap((on as u16) << bit),
                )
            }
            Encoded::Words(w) if w.len() == 1 => Request::WriteSingleRegister(a.address, w[0]),
            Encoded::Words(w) => Request::WriteMultipleRegisters(a.address, w.into()),
        };
        self.call(&a, request).await.map(|_| ())
    }
}
