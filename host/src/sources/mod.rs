//! Sources: where samples come from. A source registers its tags in the `TagRegistry` and
//! sends `SampleBatch`es into the pipeline's bounded queue (a full queue slows it down).
//! Sources are registered by their config `type`; protocol sources (Modbus, OPC UA, MQTT)
//! plug in beside the simulator.

pub mod kafka;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
pub mod sequence;
pub mod simulator;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

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
    Modbus(modbus::ModbusConfig),
    /// An OPC UA server (subscriptions, or polled reads per node).
    Opcua(opcua::OpcUaConfig),
    /// Kafka consumer-group member (scale-out past one machine).
    Kafka(Box<kafka::KafkaSourceConfig>),
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
            SourceConfig::Modbus(c) => c.validate(),
            SourceConfig::Opcua(c) => c.validate(),
            SourceConfig::Kafka(c) => c.validate(),
        }
    }

    /// Runs the source until it is done or told to stop.
    pub async fn run(self, ctx: SourceContext) -> Result<(), SourceError> {
        match self {
            SourceConfig::Simulator(c) => simulator::run(c, ctx).await,
            SourceConfig::Mqtt(c) => mqtt::run(c, ctx).await,
            SourceConfig::Modbus(c) => modbus::run(c, ctx).await,
            SourceConfig::Opcua(c) => opcua::run(c, ctx).await,
            SourceConfig::Kafka(c) => kafka::run(*c, ctx).await,
        }
    }
}
