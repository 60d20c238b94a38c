//! Broker connection settings shared by the MQTT sink and source (`[sinks.<n>]` /
//! `[sources.<n>]` with `type = "mqtt"`), and the rumqttc options built from them.

use std::path::{Path, PathBuf};
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
    /// `[….broker.tls]`: connect over TLS (rustls). The broker's certificate must chain to
    /// `ca_file` and name `host`.
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
}

/// TLS to the broker.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// PEM file with the CA certificate(s) to trust, relative to the config file.
    pub ca_file: PathBuf,
    /// PEM client certificate and key, for brokers that require client authentication.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
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
            tls: None,
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
        if let Some(t) = &self.tls {
            for (key, path) in [
                ("tls.ca_file", Some(&t.ca_file)),
                ("tls.client_cert_file", t.client_cert_file.as_ref()),
                ("tls.client_key_file", t.client_key_file.as_ref()),
            ] {
                if let Some(p) = path {
                    if !p.is_file() {
                        return Err((key.into(), format!("no file at {}", p.display())));
                    }
                }
            }
            if t.client_cert_file.is_some() != t.client_key_file.is_some() {
                return Err((
                    "tls.client_key_file".into(),
                    "set both client_cert_file and client_key_file, or neither".into(),
                ));
            }
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

    /// Resolves relative TLS file paths against the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(t) = self.tls.as_mut() {
            for p in [
                Some(&mut t.ca_file),
                t.client_cert_file.as_mut(),
                t.client_key_file.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }

    /// rumqttc options for `client_id`. TLS files are read here; a missing file was refused
    /// at config load, one that became unreadable since gives a plain TCP attempt that the
    /// broker refuses, logged.
    pub fn options(&self, client_id: &str) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, self.host.clone(), self.port);
        if let Some(t) = &self.tls {
            match tls_transport(t) {
                Ok(transport) => {
                    o.set_transport(transport);
                }
                Err(e) => tracing::error!(broker = %self.address(), "TLS files: {e}"),
            }
        }
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

fn tls_transport(t: &MqttTlsConfig) -> std::io::Result<rumqttc::Transport> {
    let ca = std::fs::read(&t.ca_file)?;
    let client_auth = match (&t.client_cert_file, &t.client_key_file) {
        (Some(c), Some(k)) => Some((std::fs::read(c)?, std::fs::read(k)?)),
        _ => None,
    };
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        },
    ))
}
