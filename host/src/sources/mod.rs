//! Sources: where samples come from. A source registers its tags in the `TagRegistry` and
//! sends `SampleBatch`es into the pipeline's bounded queue (a full queue slows it down).
//! Sources are registered by their config `type`; protocol sources (Modbus, OPC UA, MQTT)
//! plug in beside the simulator.

#[cfg(feature = "enip")]
pub mod enip;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "modbus")]
pub mod modbus;
pub mod mqtt;
#[cfg(feature = "opcua")]
pub mod opcua;
#[cfg(any(feature = "s7", feature = "enip"))]
mod poll;
#[cfg(feature = "s7")]
pub mod s7;
pub mod sequence;
pub mod simulator;
pub mod write_port;

pub use write_port::{DeviceValue, PortError, WritePort, WritePorts};

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

#[allow(unused_imports)]
use crate::features::NotBuilt;
use crate::model::DeadLetterBatch;
use crate::model::{SampleBatch, TagRegistry};

/// `[sources.<name>]`, by `type`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SourceConfig {
    /// The built-in simulated plant.
    Simulator(simulator::SimulatorConfig),
    /// MQTT 5 subscription (the bridge input).
    Mqtt(mqtt::MqttSourceConfig),
    /// Modbus TCP devices (and optionally an in-process Modbus simulator server).
    #[cfg(feature = "modbus")]
    Modbus(modbus::ModbusConfig),
    #[cfg(not(feature = "modbus"))]
    Modbus(NotBuilt),
    /// An OPC UA server (subscriptions, or polled reads per node).
    #[cfg(feature = "opcua")]
    Opcua(opcua::OpcUaConfig),
    #[cfg(not(feature = "opcua"))]
    Opcua(NotBuilt),
    /// Kafka consumer-group member (scale-out past one machine).
    #[cfg(feature = "kafka")]
    Kafka(Box<kafka::KafkaSourceConfig>),
    #[cfg(not(feature = "kafka"))]
    Kafka(NotBuilt),
    /// A Siemens S7 CPU over S7comm (ISO-on-TCP), polled in multi-item reads.
    #[cfg(feature = "s7")]
    S7(Box<s7::S7Config>),
    #[cfg(not(feature = "s7"))]
    S7(NotBuilt),
    /// A Logix controller over EtherNet/IP (CIP), symbolic tag reads.
    #[cfg(feature = "enip")]
    Enip(Box<enip::EnipConfig>),
    #[cfg(not(feature = "enip"))]
    Enip(NotBuilt),
}

/// What a running source gets from the pipeline.
pub struct SourceContext {
    pub name: String,
    pub registry: Arc<TagRegistry>,
    pub out: mpsc::Sender<SampleBatch>,
    /// Becomes true when the source should stop.
    pub shutdown: watch::Receiver<bool>,
    /// Samples sent so far.
    pub produced: Arc<AtomicU64>,
    /// Where a source sends what it cannot turn into samples (malformed messages).
    pub dead_letters: mpsc::Sender<DeadLetterBatch>,
    /// Where a source that can write to its devices registers its write path.
    pub write_ports: WritePorts,
    /// What the source's upstream sequence check found (MQTT, Kafka), for the status.
    pub upstream: Arc<sequence::UpstreamAccounts>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source `{name}`: {message}")]
    Failed { name: String, message: String },
}

impl SourceConfig {
    /// Checks the config; errors name the key under `sources.<name>`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            SourceConfig::Simulator(c) => c.validate(),
            SourceConfig::Mqtt(c) => c.validate(),
            #[cfg(feature = "modbus")]
            SourceConfig::Modbus(c) => c.validate(),
            #[cfg(not(feature = "modbus"))]
            SourceConfig::Modbus(n) => n.refuse("modbus", "modbus"),
            #[cfg(feature = "opcua")]
            SourceConfig::Opcua(c) => c.validate(),
            #[cfg(not(feature = "opcua"))]
            SourceConfig::Opcua(n) => n.refuse("opcua", "opcua"),
            #[cfg(feature = "kafka")]
            SourceConfig::Kafka(c) => c.validate(),
            #[cfg(not(feature = "kafka"))]
            SourceConfig::Kafka(n) => n.refuse("kafka", "kafka"),
            #[cfg(feature = "s7")]
            SourceConfig::S7(c) => c.validate(),
            #[cfg(not(feature = "s7"))]
            SourceConfig::S7(n) => n.refuse("s7", "s7"),
            #[cfg(feature = "enip")]
            SourceConfig::Enip(c) => c.validate(),
            #[cfg(not(feature = "enip"))]
            SourceConfig::Enip(n) => n.refuse("enip", "enip"),
        }
    }

    /// Runs the source until it is done or told to stop.
    pub async fn run(self, ctx: SourceContext) -> Result<(), SourceError> {
        match self {
            SourceConfig::Simulator(c) => simulator::run(c, ctx).await,
            SourceConfig::Mqtt(c) => mqtt::run(c, ctx).await,
            #[cfg(feature = "modbus")]
            SourceConfig::Modbus(c) => modbus::run(c, ctx).await,
            #[cfg(feature = "opcua")]
            SourceConfig::Opcua(c) => opcua::run(c, ctx).await,
            #[cfg(feature = "kafka")]
            SourceConfig::Kafka(c) => kafka::run(*c, ctx).await,
            #[cfg(feature = "s7")]
            SourceConfig::S7(c) => s7::run(*c, ctx).await,
            #[cfg(feature = "enip")]
            SourceConfig::Enip(c) => enip::run(*c, ctx).await,
            #[allow(unreachable_patterns)]
            _ => Err(SourceError::Failed {
                name: ctx.name,
                message: "this source's component is not built into this binary".into(),
            }),
        }
    }
}
