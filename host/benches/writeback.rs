//! Write-back command round trip against the local peers: an MQTT 5 request (Mosquitto on
//! 127.0.0.1:1883) → the safety checks → the read before, the write and the read-back on a
//! pymodbus server (`tests/peers/modbus_server.py`, polled every 100 ms meanwhile) → the
//! audit line fsync'd → the reply on the Response Topic. Commands go one at a time; reports
//! the round trip p50/p99/max seen by the requester, and the host's own step timings
//! (device read, write, read-back, audit+reply) p50 from the replies.
//!
//! Run: `cargo bench -p ferrule --bench writeback` (needs `.venv-peers`, see scripts/peers).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrule::config::HostConfig;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

const WARMUP: usize = 30;
const COMMANDS: usize = 1000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"holding": [{"address": 0, "type": "f32", "value": 1.0}]}"#,
    )
    .unwrap();
    let python = repo().join(".venv-peers/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/peers",
        python.display()
    );
    let _device = Kill(
        Command::new(&python)
            .arg(repo().join("tests/peers/modbus_server.py"))
            .arg(port.to_string())
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pymodbus did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let site = format!("bench{}", std::process::id());
    let path = format!("plant/{site}/a/l/press/setpoint");
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
[admin]
enabled = false
[sources.plc]
type = "modbus"
[[sources.plc.devices]]
name = "press"
host = "127.0.0.1"
port = {port}
interval_ms = 100
[[sources.plc.devices.registers]]
tag = "{path}"
address = 0
type = "f32"
[writes]
audit_path = "audit.jsonl"
global_rate = {{ per_second = 100000.0, burst = 100000 }}
[writes.sources.plc]
allow = ["{path}"]
tag_rate = {{ per_second = 100000.0, burst = 100000 }}
[writes.mqtt]
broker = {{ host = "127.0.0.1", port = 1883, client_id = "ferrule-bench-{site}" }}
topics = ["plant/{site}/+/+/+/+/set"]
[sinks.samples]
type = "file"
path = "samples.jsonl"
"#
    );
    let cfg = HostConfig::from_text(&text, dir.path()).unwrap();
    let running = ferrule::runtime::start(&cfg).await.unwrap();
    let writes = running.handle.writes().unwrap().clone();
    while writes.latest().latest(&path).is_none() || !writes.mqtt_subscribed() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut o = MqttOptions::new(format!("bench-req-{site}"), "127.0.0.1", 1883);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 64);
    let reply_topic = format!("replies/{site}");
    let (tx, mut rx) = mpsc::unbounded_channel::<(Option<Bytes>, serde_json::Value)>();
    let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            match ev {
                Event::Incoming(Packet::SubAck(_)) => {
                    let _ = sub_tx.send(());
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let corr = p.properties.and_then(|pr| pr.correlation_data);
                    let _ = tx.send((corr, serde_json::from_slice(&p.payload).unwrap()));
                }
                _ => {}
            }
        }
    });
    client
        .subscribe(reply_topic.clone(), QoS::AtLeastOnce)
        .await
        .unwrap();
    sub_rx.recv().await.unwrap();

    let topic = format!("{path}/set");
    let mut rtt = Vec::with_capacity(COMMANDS);
    let mut steps: [Vec<f64>; 4] = Default::default();
    let started = Instant::now();
    for i in 0..WARMUP + COMMANDS {
        let corr = Bytes::from(i.to_string());
        let body = serde_json::json!({"id": format!("b{i}"), "value": (i % 100) as f64 + 0.5, "requester": "bench"});
        let t = Instant::now();
        client
            .publish_with_properties(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                body.to_string(),
                PublishProperties {
                    response_topic: Some(reply_topic.clone()),
                    correlation_data: Some(corr.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let reply = loop {
            let (c, v) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a reply within 10 s")
                .unwrap();
            if c.as_ref() == Some(&corr) {
                break v;
            }
        };
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(reply["outcome"], "verified", "{reply}");
        if i >= WARMUP {
            rtt.push(elapsed);
            let tm = &reply["timings"];
            let ms = |k: &str| tm[k].as_f64().unwrap() / 1e3;
            steps[0].push(ms("read_us"));
            steps[1].push(ms("write_us"));
            steps[2].push(ms("read_back_us"));
            steps[3].push(elapsed - ms("total_us"));
        }
    }
    let wall = started.elapsed();
    rtt.sort_by(f64::total_cmp);
    for s in steps.iter_mut() {
        s.sort_by(f64::total_cmp);
    }
    println!(
        "writeback round trip (MQTT in → read, write, read back on pymodbus → audit fsync → reply), {COMMANDS} commands one at a time:"
    );
    println!(
        "  round trip ms: p50 {:.2}  p99 {:.2}  max {:.2}   ({:.0} commands/s sequential)",
        pct(&rtt, 0.5),
        pct(&rtt, 0.99),
        rtt[rtt.len() - 1],
        (WARMUP + COMMANDS) as f64 / wall.as_secs_f64()
    );
    println!(
        "  host steps p50 ms: read before {:.2}, write {:.2}, read back {:.2}; outside the checks (MQTT both ways, audit fsync) {:.2}",
        pct(&steps[0], 0.5),
        pct(&steps[1], 0.5),
        pct(&steps[2], 0.5),
        pct(&steps[3], 0.5)
    );
    running.handle.stop();
    running.wait().await.unwrap();
}
