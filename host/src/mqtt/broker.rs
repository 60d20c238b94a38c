//! Broker connection settings shared by the MQTT sink and source (`[sinks.<n>]` /
//! `[sources.<n>]` with `type = "mqtt"`), and the rumqttc options built from them.

use std::time::Duration;

use serde::Deserialize;

/// Where the broker is and how to log in. MQTT 5 over TCP.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Broker host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Broker port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// MQTT client id; must be unique per broker (default: `ferrule-<sink or source name>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name (password auth); use `${VAR}` in the config to keep secrets out of it.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Keep-alive interval, seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// How long the broker keeps the session after a disconnect, seconds (MQTT 5 session
    /// expiry). The source relies on it to get unacknowledged messages again after a restart.
    #[serde(default = "default_session_expiry_s")]
    pub session_expiry_s: u32,
}

/// MQTT quality of service, as a number in the config: 0, 1 (default) or 2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QosLevel {
    AtMostOnce,
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

impl<'de> Deserialize<'de> for QosLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(QosLevel::AtMostOnce),
            1 => Ok(QosLevel::AtLeastOnce),
            2 => Ok(QosLevel::ExactlyOnce),
            n => Err(serde::de::Error::custom(format!(
                "qos must be 0, 1 or 2, not {n}"
            ))),
        }
    }
}

impl QosLevel {
    pub fn to_rumqttc(self) -> rumqttc::v5::mqttbytes::QoS {
        use rumqttc::v5::mqttbytes::QoS;
        match self {
            QosLevel::AtMostOnce => QoS::AtMostOnce,
            QosLevel::AtLeastOnce => QoS::AtLeastOnce,
            QosLevel::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    1883
}
fn default_keep_alive_s() -> u64 {
    30
}
fn default_session_expiry_s() -> u32 {
    3600
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            host: default_host(),
            port: default_port(),
            client_id: None,
            username: None,
            password: None,
            keep_alive_s: default_keep_alive_s(),
            session_expiry_s: default_session_expiry_s(),
        }
    }
}

impl BrokerConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.host.trim().is_empty() {
            return Err(("host".into(), "must not be empty".into()));
        }
        if self.port == 0 {
            return Err(("port".into(), "must not be 0".into()));
        }
        if self.keep_alive_s < 5 {
            return Err(("keep_alive_s".into(), "must be at least 5".into()));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(("password".into(), "set username too".into()));
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 128 {
                return Err(("client_id".into(), "must be 1 to 128 characters".into()));
            }
        }
        Ok(())
    }

    pub fn client_id_or(&self, default: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| default.to_string())
    }

    /// rumqttc options for `client_id`.
    pub fn options(&self, client_id: &str) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_s));
        o.set_connection_timeout(10);
        o.set_max_packet_size(Some(16 * 1024 * 1024));
        if let Some(u) = &self.username {
            o.set_credentials(u.clone(), self.password.clone().unwrap_or_default());
        }
        o
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}
