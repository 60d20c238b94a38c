//! The Modbus TCP source: registers every mapped tag, plans coalesced reads per poll group
//! and runs one task per device (its own connection, so a slow or dead device never stalls
//! the others). Optionally serves the simulated plant from an in-process Modbus TCP server
//! and polls it, so the embedded default exercises the real client end to end.

mod codec;
mod config;
mod device;
mod plan;
mod server;
mod status;
mod write;

pub use codec::{
    decode_registers, encode_bit, encode_bytes, encode_registers, Decoded, EncodeError, Layout,
};
pub use config::{
    DeviceConfig, ModbusConfig, RegisterConfig, SimulatorServerConfig, Table, ValueType, WordOrder,
};
pub use plan::{plan, ReadBlock, Wanted};
pub use server::serve_plant;
pub use status::{codes, exception as exception_status, Failure};
pub use write::ModbusWritePort;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinSet;

use super::{SourceContext, SourceError};
use crate::model::{DataType, TagDescriptor};
use crate::sources::simulator::describe_tag;
use device::{Device, DeviceTag, PollGroup};

/// The register map generated for the in-process simulator: tag `first_tag + k` of the
/// plant as an `f32` at holding register `2k`, named as the simulator names it.
pub fn simulator_device(c: &SimulatorServerConfig, source: &str) -> DeviceConfig {
    let plant = server::plant_of(c);
    let registers = (0..c.tags)
        .map(|k| {
            let d = describe_tag(&plant, source, c.first_tag + k);
            RegisterConfig {
                tag: d.vendor_path,
                table: Table::Holding,
                address: (2 * k) as u16,
                value_type: Some(ValueType::F32),
                order: WordOrder::ABCD,
                bit: None,
                length: None,
                scale: 1.0,
                offset: 0.0,
                unit: d.unit,
                group: None,
                metadata: d.metadata.into_iter().collect(),
            }
        })
        .collect();
    DeviceConfig {
        name: "simulator".into(),
        host: c.listen.ip().to_string(),
        port: c.listen.port(),
        unit_id: 1,
        interval_ms: c.poll_interval_ms,
        poll_groups: BTreeMap::new(),
        timeout_ms: 1000,
        reconnect_min_ms: 200,
        reconnect_max_ms: 5000,
        max_registers_per_read: 125,
        max_bits_per_read: 2000,
        max_gap: 0,
        registers,
    }
}

fn data_type(r: &RegisterConfig) -> DataType {
    let scaled = r.scale != 1.0 || r.offset != 0.0;
    match r.value_type() {
        ValueType::String => DataType::Text,
        ValueType::Bool if !scaled => DataType::Boolean,
        _ if scaled => DataType::Float64,
        ValueType::U16 => DataType::Uint16,
        ValueType::I16 => DataType::Int16,
        ValueType::U32 => DataType::Uint32,
        ValueType::I32 => DataType::Int32,
        ValueType::U64 => DataType::Uint64,
        ValueType::I64 => DataType::Int64,
        ValueType::F32 => DataType::Float32,
        ValueType::F64 | ValueType::Bool => DataType::Float64,
    }
}

/// Registers the device's tags and plans its poll groups.
fn build_device(
    source: &str,
    d: DeviceConfig,
    ctx: &SourceContext,
    requests: tokio::sync::mpsc::Receiver<device::DeviceRequest>,
) -> Device {
    let tags: Vec<DeviceTag> = d
        .registers
        .iter()
        .map(|r| {
            let mut metadata: Vec<(String, String)> = r
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            metadata.push(("modbus.device".into(), d.name.clone()));
            metadata.push((
                "modbus.address".into(),
                format!("{} {}", r.table.as_str(), r.address),
            ));
            let id = ctx.registry.intern(TagDescriptor {
                source: source.to_string(),
                vendor_path: r.tag.clone(),
                unit: r.unit.clone(),
                data_type: data_type(r),
                metadata,
            });
            DeviceTag {
                id,
                name: r.tag.clone(),
                layout: Layout {
                    value_type: r.value_type(),
                    order: r.order,
                    bit: r.bit,
                    scale: r.scale,
                    offset: r.offset,
                },
                span: r.span(),
            }
        })
        .collect();
    let mut by_group: BTreeMap<Option<&String>, Vec<Wanted>> = BTreeMap::new();
    for (i, r) in d.registers.iter().enumerate() {
        by_group.entry(r.group.as_ref()).or_default().push(Wanted {
            tag: i,
            table: r.table,
            address: r.address,
            span: r.span(),
        });
    }
    let groups = by_group
        .into_iter()
        .map(|(g, wanted)| PollGroup {
            name: g.cloned().unwrap_or_else(|| "default".into()),
            interval: Duration::from_millis(match g {
                Some(g) => d.poll_groups[g],
                None => d.interval_ms,
            }),
            blocks: plan(
                wanted,
                d.max_registers_per_read,
                d.max_bits_per_read,
                d.max_gap,
            ),
        })
        .collect::<Vec<_>>();
    for g in &groups {
        tracing::info!(
            "modbus source `{source}` device `{}`: poll group `{}` every {:?}: {} tags in {} reads",
            d.name,
            g.name,
            g.interval,
            g.blocks.iter().map(|b| b.tags.len()).sum::<usize>(),
            g.blocks.len()
        );
    }
    Device {
        source: source.to_string(),
        config: d,
        tags,
        groups,
        out: ctx.out.clone(),
        shutdown: ctx.shutdown.clone(),
        produced: ctx.produced.clone(),
        requests: Some(requests),
    }
}

pub async fn run(c: ModbusConfig, ctx: SourceContext) -> Result<(), SourceError> {
    let name = ctx.name.clone();
    let mut devices = c.devices.clone();
    let mut server = None;
    if let Some(sim) = &c.simulator {
        let (addr, task) =
            serve_plant(sim, ctx.shutdown.clone())
                .await
                .map_err(|e| SourceError::Failed {
                    name: name.clone(),
                    message: format!("modbus simulator cannot listen on {}: {e}", sim.listen),
                })?;
        tracing::info!(
            "modbus source `{name}`: simulator serving {} plant tags on {addr}",
            sim.tags
        );
        if devices.is_empty() {
            let mut d = simulator_device(sim, &name);
            d.port = addr.port();
            devices.push(d);
        }
        server = Some(task);
    }
    // The write path: one request queue into each device task.
    let (port, requests) = ModbusWritePort::new(&devices);
    ctx.write_ports.register(&name, std::sync::Arc::new(port));
    let mut tasks = JoinSet::new();
    for (d, requests) in devices.into_iter().zip(requests) {
        tasks.spawn(build_device(&name, d, &ctx, requests).run());
    }
    while tasks.join_next().await.is_some() {}
    if let Some(task) = server {
        task.abort();
    }
    Ok(())
}
