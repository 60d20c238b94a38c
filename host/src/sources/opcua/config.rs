//! Config of the OPC UA source (`type = "opcua"`): endpoint, security, identity, PKI
//! directory, and the nodes to monitor (subscription by default, polled reads per node).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::Deserialize;

use super::node_ref::NodeRef;

/// Reads nodes of one OPC UA server over one session, re-created after a lost connection.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpcUaConfig {
    /// `opc.tcp://host:port/path` (with `simulator` and no `nodes`: the simulator's).
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub security_policy: SecurityPolicy,
    #[serde(default)]
    pub security_mode: SecurityMode,
    /// User name and password; none: anonymous.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Client certificate, private key and trust store (`trusted/`, `rejected/`); created
    /// with a self-signed client certificate when empty. Relative to the config file.
    #[serde(default = "default_pki_dir")]
    pub pki_dir: PathBuf,
    /// Trust server certificates not in the trust store (logged at start as a warning).
    #[serde(default)]
    pub trust_server_certs: bool,
    /// Publishing interval of the subscription, in ms.
    #[serde(default = "default_publishing_ms")]
    pub publishing_interval_ms: u64,
    /// Which timestamp samples carry: `source` (the device's, the default) or `server`.
    #[serde(default)]
    pub timestamps: TimestampChoice,
    /// With no data for this long, the server is asked for its time; two unanswered asks in
    /// a row end the session (data notifications count as proof of life). In ms.
    #[serde(default = "default_keep_alive_ms")]
    pub keep_alive_ms: u64,
    /// Wait between reconnect attempts, in ms (doubles up to `reconnect_max_ms`).
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// The nodes.
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    /// Subscribe to every variable under this folder or object too (e.g. `ns=2;s=Line1` or
    /// `nsu=urn:x;i=1001`): browsed at every session start, so variables added on the server
    /// are picked up after a reconnect. Each is a tag named by its browse path below the node
    /// (`Press1.Pressure`), with the defaults of `nodes`; a configured node of the same tag
    /// name takes precedence. Print the same list with `ferrule discover opcua --under`.
    #[serde(default)]
    pub browse: Option<String>,
    /// Serve the simulated plant from an OPC UA server in this process (on loopback), and,
    /// when `nodes` is empty, subscribe to all its variables.
    #[serde(default)]
    pub simulator: Option<OpcUaSimulatorConfig>,
}

/// `[sources.<name>.simulator]`: tags `first_tag..first_tag + tags` of a `plant_tags` plant
/// (named and valued as the `simulator` source does) as Double variables in namespace
/// `urn:ferrule:plant`, string ids = vendor paths, updated every `interval_ms`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpcUaSimulatorConfig {
    /// Address to serve on; loopback only.
    pub listen: std::net::SocketAddr,
    #[serde(default = "default_plant_tags")]
    pub plant_tags: u32,
    #[serde(default)]
    pub first_tag: u32,
    #[serde(default = "default_sim_tags")]
    pub tags: u32,
    #[serde(default = "default_publishing_ms")]
    pub interval_ms: u64,
}

fn default_plant_tags() -> u32 {
    1000
}
fn default_sim_tags() -> u32 {
    1000
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
pub enum SecurityPolicy {
    #[default]
    None,
    Basic256Sha256,
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
pub enum SecurityMode {
    #[default]
    None,
    Sign,
    SignAndEncrypt,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimestampChoice {
    #[default]
    Source,
    Server,
}

/// `[[sources.<name>.nodes]]`: one tag.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The vendor tag name the normalizer sees (unique within the source).
    pub tag: String,
    /// `ns=2;s=Line1.Press1.Bar`, `ns=2;i=1001`, `ns=2;g=<guid>`, `ns=2;b=<base64>`, or with
    /// `nsu=<namespace uri>;` instead of `ns=` (resolved on every (re)connect).
    pub node_id: String,
    #[serde(default)]
    pub unit: String,
    /// Sampling interval of the monitored item, in ms (default: the publishing interval).
    #[serde(default)]
    pub sampling_interval_ms: Option<f64>,
    /// Queue size of the monitored item.
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Absolute deadband (where the server supports it).
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Read the node every this many ms instead of subscribing (for servers or nodes where
    /// subscriptions do not work).
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn default_pki_dir() -> PathBuf {
    PathBuf::from("pki")
}
fn default_publishing_ms() -> u64 {
    1000
}
fn default_keep_alive_ms() -> u64 {
    5000
}
pub(super) fn default_queue_size() -> u32 {
    10
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    10_000
}

impl OpcUaConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: String, m: String| Err((k, m));
        #[cfg(not(feature = "opcua-simulator"))]
        if self.simulator.is_some() {
            return err(
                "simulator".into(),
                crate::features::missing("the in-process OPC UA simulator", "opcua-simulator"),
            );
        }
        let simulated = self.simulator.is_some() && self.nodes.is_empty();
        if let Some(s) = &self.simulator {
            if !s.listen.ip().is_loopback() {
                return err(
                    "simulator.listen".into(),
                    format!("{} is not a loopback address", s.listen),
                );
            }
            if s.tags == 0 || s.first_tag as u64 + s.tags as u64 > s.plant_tags as u64 {
                return err(
                    "simulator.tags".into(),
                    "must be at least 1, and first_tag + tags at most plant_tags".into(),
                );
            }
            if s.interval_ms == 0 {
                return err("simulator.interval_ms".into(), "must be at least 1".into());
            }
        }
        if !simulated && !self.endpoint.starts_with("opc.tcp://") {
            return err("endpoint".into(), "must start with opc.tcp://".into());
        }
        let secure = self.security_policy != SecurityPolicy::None;
        if secure == (self.security_mode == SecurityMode::None) {
            return err(
                "security_mode".into(),
                "security_policy None goes with security_mode None, Basic256Sha256 with Sign or SignAndEncrypt".into(),
            );
        }
        if self.username.is_some() != self.password.is_some() {
            return err(
                "password".into(),
                "username and password go together".into(),
            );
        }
        if self.publishing_interval_ms == 0 {
            return err("publishing_interval_ms".into(), "must be at least 1".into());
        }
        if self.keep_alive_ms < 100 {
            return err("keep_alive_ms".into(), "must be at least 100".into());
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return err(
                "reconnect_min_ms".into(),
                "must be at least 1 and at most reconnect_max_ms".into(),
            );
        }
        if let Some(b) = &self.browse {
            if let Err(m) = NodeRef::parse(b) {
                return err("browse".into(), m);
            }
        }
        if self.nodes.is_empty() && !simulated && self.browse.is_none() {
            return err(
                "nodes".into(),
                "no node configured (and no `browse`)".into(),
            );
        }
        let mut tags = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let key = |k: &str| format!("nodes[{i}].{k}");
            if n.tag.trim().is_empty() {
                return err(key("tag"), "must not be empty".into());
            }
            if !tags.insert(n.tag.as_str()) {
                return err(key("tag"), format!("tag `{}` twice", n.tag));
            }
            if let Err(m) = NodeRef::parse(&n.node_id) {
                return err(key("node_id"), m);
            }
            if n.poll_interval_ms == Some(0) {
                return err(key("poll_interval_ms"), "must be at least 1".into());
            }
            if n.deadband.is_some_and(|d| !d.is_finite() || d < 0.0) {
                return err(key("deadband"), "must be a finite value ≥ 0".into());
            }
        }
        Ok(())
    }
}
