//! What Ferrule's MQTT sink and MQTT source share: the broker connection settings, the topic
//! spec (`plant/<site>/<area>/<line>/<device>/<metric>`), and the embedded broker
//! for the default run. The payload contract they carry lives in `crate::payload`.

mod broker;
pub mod embedded;
pub mod topic;

pub use broker::{BrokerConfig, MqttTlsConfig, QosLevel};

use std::time::Duration;

use rumqttc::v5::{Event, EventLoop};
use tokio::sync::mpsc;

/// Drives a rumqttc event loop on its own task and hands its events over a channel, so the
/// owner can `select!` on them without cancelling a half-done network read or connect.
pub struct EventPump {
    pub events: mpsc::Receiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventPump {
    /// With `reconnect`, errors are reported and the loop reconnects after a backoff
    /// (doubling from 200 ms to 10 s, reset by a successful event); without, the pump stops
    /// at the first error.
    pub fn spawn(mut events: EventLoop, reconnect: bool) -> EventPump {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match events.poll().await {
                    Ok(ev) => {
                        backoff = Duration::from_millis(200);
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        if tx.send(Err(e.to_string())).await.is_err() || !reconnect {
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
        EventPump { events: rx, task }
    }
}

impl Drop for EventPump {
    fn drop(&mut self) {
        // Dropping the event loop closes the connection.
        self.task.abort();
    }
}
