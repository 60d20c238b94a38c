//! Commands over MQTT 5: a message on a command topic (`plant/<site>/<area>/<line>/<device>/
//! <metric>/set` by default) carries a JSON command; the tag's path is the topic without the
//! suffix. The reply — the command's `WriteRecord`, after it is in the audit log — goes to the
//! message's Response Topic with its Correlation Data (request/response). A message without a
//! Response Topic is executed and audited without a reply.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::watch;

use super::command::{self, WriteRecord};
use super::{MqttCommandsConfig, WriteService};

/// The tag path a topic names, if it is a command topic.
pub fn path_of(config: &MqttCommandsConfig, topic: &str) -> Option<String> {
    let rest = topic.strip_prefix(config.strip_prefix.as_str())?;
    let path = rest.strip_suffix(config.strip_suffix.as_str())?;
    (!path.is_empty()).then(|| path.to_string())
}

/// Subscribes to the command topics and serves commands until shutdown. Each command runs on
/// its own task (commands to one device queue there; others go on).
pub async fn run(
    config: MqttCommandsConfig,
    service: Arc<WriteService>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client_id = config.broker.client_id_or("ferrule-writes");
    let mut o = config.broker.options(&client_id);
    // Commands queued while Ferrule was away are not wanted: deadlines would refuse most.
    o.set_clean_start(true);
    // A command and its reply are single small packets each way: without TCP_NODELAY, Nagle
    // holds one back for the peer's delayed ACK (~40 ms per direction).
    let mut net = o.network_options();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    let (client, events) = AsyncClient::new(o, 256);
    let mut pump = crate::mqtt::EventPump::spawn(events, true);
    let mut down = false;
    let config = Arc::new(config);
    loop {
        tokio::select! {
            ev = pump.events.recv() => match ev {
                None => return,
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    if down {
                        tracing::info!(broker = %config.broker.address(), "write-back commands: reconnected");
                    }
                    down = false;
                    let filters = config
                        .topics
                        .iter()
                        .map(|t| Filter::new(t.clone(), config.qos.to_rumqttc()));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::error!("write-back commands: cannot subscribe: {e}");
                    }
                }
                Some(Ok(Event::Incoming(Packet::SubAck(_)))) => service.set_mqtt_subscribed(true),
                Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let (service, client, config) = (service.clone(), client.clone(), config.clone());
                    tokio::spawn(async move { serve(&config, &service, &client, p).await });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    service.set_mqtt_subscribed(false);
                    if !down {
                        tracing::warn!(broker = %config.broker.address(), "write-back commands: broker unreachable: {e}");
                        down = true;
                    }
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    let _ = client.try_disconnect();
                    return;
                }
            }
        }
    }
}

async fn serve(
    config: &MqttCommandsConfig,
    service: &WriteService,
    client: &AsyncClient,
    p: Publish,
) {
    let topic = String::from_utf8_lossy(&p.topic).into_owned();
    let channel = format!("mqtt {topic}");
    let path = path_of(config, &topic);
    let record = match command::parse(
        &p.payload,
        path.as_deref(),
        &channel,
        service.config().default_deadline_ms,
    ) {
        Ok(cmd) => service.execute(cmd).await,
        Err((id, detail)) => {
            service
                .malformed(id, &channel, path.as_deref(), detail)
                .await
        }
    };
    let props = p.properties.unwrap_or_default();
    if let Some(reply_to) = props.response_topic {
        reply(client, &reply_to, props.correlation_data, &record).await;
    }
}

async fn reply(
    client: &AsyncClient,
    topic: &str,
    correlation: Option<Bytes>,
    record: &WriteRecord,
) {
    let body = serde_json::to_vec(record).unwrap_or_default();
    let props = PublishProperties {
        correlation_data: correlation,
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    if let Err(e) = client
        .publish_with_properties(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            body,
            props,
        )
        .await
    {
        tracing::warn!(id = %record.id, "write-back: cannot send the reply to `{topic}`: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_the_topic_without_the_suffix() {
        let mut c = MqttCommandsConfig {
            broker: Default::default(),
            topics: vec![],
            strip_suffix: "/set".into(),
            strip_prefix: String::new(),
            qos: Default::default(),
        };
        assert_eq!(
            path_of(&c, "plant/s/a/l/d/sp/set").as_deref(),
            Some("plant/s/a/l/d/sp")
        );
        assert_eq!(path_of(&c, "plant/s/a/l/d/sp"), None);
        c.strip_prefix = "cmd/".into();
        assert_eq!(path_of(&c, "cmd/x/set").as_deref(), Some("x"));
        assert_eq!(path_of(&c, "plant/x/set"), None);
    }
}
