//! Config of the upstream sequence check (`[sources.<name>.sequence]`, MQTT and Kafka sources).

use serde::Deserialize;

/// Checks the publisher sequence numbers a sending Ferrule stamps on its messages
/// (`ferrule-pub`, `ferrule-epoch`, `ferrule-seq`): a message missing from a publisher's
/// sequence is a gap, counted (`upstream_gap_messages_total`), logged at warn with the range,
/// recorded in the dead-letter (reason `upstream-gap`) and reported by `/ready` for
/// `not_ready_s`. Messages without a sequence are taken as before.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SequenceConfig {
    /// `auto` (default): on, unless a topic filter is a shared subscription (`$share/…`: each
    /// instance sees only part of every publisher's sequence); `on`; `off`.
    #[serde(default)]
    pub check: SequenceCheck,
    /// A missing message is declared lost once the publisher's sequence is this many messages
    /// past it (messages may arrive out of order within the in-flight window).
    #[serde(default = "default_reorder_window")]
    pub reorder_window: u64,
    /// … or once it has been missing this long, ms.
    #[serde(default = "default_reorder_timeout_ms")]
    pub reorder_timeout_ms: u64,
    /// How long after a gap `/ready` reports it (503), s; 0: never.
    #[serde(default = "default_not_ready_s")]
    pub not_ready_s: u64,
}

/// Whether the sequence check runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SequenceCheck {
    #[default]
    Auto,
    On,
    Off,
}

fn default_reorder_window() -> u64 {
    1024
}
fn default_reorder_timeout_ms() -> u64 {
    10_000
}
fn default_not_ready_s() -> u64 {
    300
}

impl Default for SequenceConfig {
    fn default() -> Self {
        SequenceConfig {
            check: SequenceCheck::default(),
            reorder_window: default_reorder_window(),
            reorder_timeout_ms: default_reorder_timeout_ms(),
            not_ready_s: default_not_ready_s(),
        }
    }
}

impl SequenceConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.reorder_window == 0 {
            return Err((
                "sequence.reorder_window".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Whether the check runs for a source subscribed to `topics`.
    pub fn enabled(&self, topics: &[String]) -> bool {
        match self.check {
            SequenceCheck::On => true,
            SequenceCheck::Off => false,
            SequenceCheck::Auto => !topics.iter().any(|t| t.starts_with("$share/")),
        }
    }
}
