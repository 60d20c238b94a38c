//! The embedded MQTT broker (rumqttd) for the default run: `[embedded_broker]` starts one
//! in-process on loopback so the default plant shows real MQTT traffic without an external
//! server. Point the MQTT sink at Mosquitto instead by leaving this section out and setting
//! the sink's `host`/`port`.

#[cfg(feature = "mqtt-broker")]
use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Deserialize;

/// `[embedded_broker]`: an in-process MQTT 5 broker. (No 3.1.1 listener: rumqttd 0.20 panics
/// forwarding an MQTT 5 publish with properties to a 3.1.1 subscriber; use
/// `mosquitto_sub -V mqttv5`.)
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBrokerConfig {
    /// MQTT 5 listener (loopback by default).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest payload accepted, bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_max_payload() -> usize {
    1024 * 1024
}

#[derive(Debug, thiserror::Error)]
#[error("embedded broker on {listen}: {message}")]
pub struct EmbeddedBrokerError {
    pub listen: SocketAddr,
    pub message: String,
}

impl EmbeddedBrokerConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if cfg!(not(feature = "mqtt-broker")) {
            return Err((
                "listen".into(),
                crate::features::missing("the embedded MQTT broker", "mqtt-broker"),
            ));
        }
        if !self.listen.ip().is_loopback() {
            return Err((
                "listen".into(),
                "the embedded broker serves loopback only; use an external broker otherwise".into(),
            ));
        }
        if self.max_payload_bytes < 1024 {
            return Err(("max_payload_bytes".into(), "must be at least 1024".into()));
        }
        Ok(())
    }

    #[cfg(feature = "mqtt-broker")]
    fn server(&self, name: &str, listen: SocketAddr) -> rumqttd::ServerSettings {
        rumqttd::ServerSettings {
            name: name.into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: self.max_payload_bytes,
                max_inflight_count: 1000,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        }
    }

    /// Without the `mqtt-broker` feature there is no broker to start (`validate` refuses the
    /// config before).
    #[cfg(not(feature = "mqtt-broker"))]
    pub fn start(&self) -> Result<(), EmbeddedBrokerError> {
        Err(EmbeddedBrokerError {
            listen: self.listen,
            message: crate::features::missing("the embedded MQTT broker", "mqtt-broker"),
        })
    }

    /// Starts the broker on its own threads; it runs until the process exits. Returns once
    /// the listener accepts connections.
    #[cfg(feature = "mqtt-broker")]
    pub fn start(&self) -> Result<(), EmbeddedBrokerError> {
        let err = |message: String| EmbeddedBrokerError {
            listen: self.listen,
            message,
        };
        // Refuse a taken port here, with a clear error, rather than in the broker's thread.
        std::net::TcpListener::bind(self.listen).map_err(|e| err(e.to_string()))?;
        let config = rumqttd::Config {
            id: 0,
            router: rumqttd::RouterConfig {
                max_connections: 1000,
                max_outgoing_packet_count: 1000,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                ..Default::default()
            },
            v5: Some(HashMap::from([(
                "1".to_string(),
                self.server("v5", self.listen),
            )])),
            ..Default::default()
        };
        let mut broker = rumqttd::Broker::new(config);
        std::thread::Builder::new()
            .name("ferrule-embedded-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!("embedded MQTT broker stopped: {e}");
                }
            })
            .map_err(|e| err(e.to_string()))?;
        // Ready once the port is taken (probing by binding, not connecting, keeps the
        // broker's log free of half-open connections).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpListener::bind(self.listen).is_ok() {
            if std::time::Instant::now() > deadline {
                return Err(err("did not start listening within 10 s".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::info!(listen = %self.listen, "embedded MQTT broker (rumqttd) ready");
        Ok(())
    }
}
