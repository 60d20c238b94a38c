//! Write-back command round trip against the local peers: an MQTT 5 request (through the
//! Mosquitto on 127.0.0.1:1883 with its defaults, then through one started with
//! `set_tcp_nodelay true`) → the safety checks → the read before, the write and the read-back on a
//! pymodbus server (`tests/peers/modbus_server.py`, polled every 100 ms meanwhile) → the
//! audit line fsync'd → the reply on the Response Topic. Commands go one at a time; reports
//! the round trip p50/p99/max seen by the requester, and the host's own step timings
//! (device read, write, read-back, audit+reply) p50 from the replies, and in the same run the
//! two costs outside the device: an MQTT QoS 1 echo through the same broker and an fsync'd
//! append like the audit's.
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

const WARMUP: usize = 20;
const COMMANDS: usize = 500;

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
    // The same commands through the shared Mosquitto (its defaults) and through a Mosquitto
    // with `set_tcp_nodelay true`: with Nagle on the broker's sockets, each small packet that
    // follows an unacknowledged one waits for the peer's delayed ACK (~40 ms).
    rt.block_on(run(1883, "Mosquitto 127.0.0.1:1883 (defaults)"));
    let conf_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = conf_dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"),
    )
    .unwrap();
    let _broker = Kill(
        Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.block_on(run(port, "Mosquitto with set_tcp_nodelay true"));
}

async fn run(broker: u16, label: &str) {
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
broker = {{ host = "127.0.0.1", port = {broker}, client_id = "ferrule-bench-{site}" }}
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

    let mut o = MqttOptions::new(format!("bench-req-{site}"), "127.0.0.1", broker);
    o.set_keep_alive(Duration::from_secs(30));
    // The requester's own small packets are not held back by Nagle either.
    let mut net = o.network_options();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    let (client, mut events) = AsyncClient::new(o, 64);
    let reply_topic = format!("replies/{site}");
    let (tx, mut rx) = mpsc::unbounded_channel::<(Option<Bytes>, serde_json::Value)>();
    // Replies are JSON; the echo baseline's payload is too.
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
    let mut steps: [Vec<f64>; 5] = Default::default();
    let started = Instant::now();
    for i in 0..WARMUP + COMMANDS {
        let corr = Bytes::from(i.to_string());
        let body = serde_json::json!({"id": format!("b{i}"), "value": (i % 100) as f64 + 0.5, "requester": "bench"});
        let t = Instant::now();
        let sent_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
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
            let inbound = (reply["received_ns"].as_u64().unwrap() as f64 - sent_ns as f64) / 1e6;
            steps[4].push(inbound);
        }
    }
    let wall = started.elapsed();

    // The same run's baselines: an MQTT QoS 1 echo through the same broker (publish to a topic
    // the requester itself subscribes to) and an fsync'd append of an audit-sized line.
    let echo_topic = format!("echo/{site}");
    client
        .subscribe(echo_topic.clone(), QoS::AtLeastOnce)
        .await
        .unwrap();
    sub_rx.recv().await.unwrap();
    let mut echo = Vec::new();
    for i in 0..200usize {
        let corr = Bytes::from(format!("e{i}"));
        let t = Instant::now();
        client
            .publish_with_properties(
                echo_topic.clone(),
                QoS::AtLeastOnce,
                false,
                "{}",
                PublishProperties {
                    correlation_data: Some(corr.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        loop {
            let (c, _) = rx.recv().await.unwrap();
            if c.as_ref() == Some(&corr) {
                break;
            }
        }
        echo.push(t.elapsed().as_secs_f64() * 1e3);
    }
    echo.sort_by(f64::total_cmp);
    let mut fsync = Vec::new();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("fsync-probe.jsonl"))
            .unwrap();
        let line = vec![b'x'; 1200];
        for _ in 0..200 {
            let t = Instant::now();
            f.write_all(&line).unwrap();
            f.sync_data().unwrap();
            fsync.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    fsync.sort_by(f64::total_cmp);
    rtt.sort_by(f64::total_cmp);
    for s in steps.iter_mut() {
        s.sort_by(f64::total_cmp);
    }
    println!(
        "writeback round trip via {label} (MQTT in → read, write, read back on pymodbus → audit fsync → reply), {COMMANDS} commands one at a time:"
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
    println!(
        "  MQTT in (publish → the host parsed it) p50 {:.2} ms; the rest after the read-back (audit fsync, reply) p50 {:.2} ms",
        pct(&steps[4], 0.5),
        pct(&steps[3], 0.5) - pct(&steps[4], 0.5)
    );
    println!(
        "  same run baselines p50/p99 ms: MQTT QoS 1 echo {:.2}/{:.2}; fsync'd 1.2 kB append {:.2}/{:.2}",
        pct(&echo, 0.5),
        pct(&echo, 0.99),
        pct(&fsync, 0.5),
        pct(&fsync, 0.99)
    );
    running.handle.stop();
    running.wait().await.unwrap();
}
