//! End-to-end accounting against real peers: an edge Ferrule numbers its MQTT messages, a
//! bridge Ferrule checks the numbers and reports what a default Mosquitto dropped while the
//! bridge was down — checked against what an independent subscriber saw published and what
//! reached the bridge's sink; the MQTT → Kafka bridge killed with SIGKILL again and again
//! writes every sample exactly once (read back by confluent-kafka); a corrected value with
//! an equal timestamp reaches Kafka marked as a correction.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::runtime;
use ferrule_tests::kafka::{self, Record};
use ferrule_tests::mqtt::publish_all;
use ferrule_tests::peers::mosquitto;
use ferrule_tests::{ferrule_bin, read_jsonl, reference_stages_toml, repo_root};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

const START_NS: u64 = 1_700_000_000_000_000_000;

fn load(dir: &Path, text: &str) -> HostConfig {
    HostConfig::from_text(text, dir).unwrap_or_else(|e| panic!("{e:?}"))
}

/// One message as the independent subscriber saw it: its sequence stamp and its samples.
#[derive(Clone, Debug)]
struct Seen {
    publisher: String,
    seq: u64,
    topic: String,
    ts: Vec<u64>,
}

/// An always-connected subscriber (its own rumqttc client, clean session) that keeps the
/// `ferrule-seq` stamp of every message published on `plant/#`.
async fn seq_reader(port: u16) -> (Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let mut o = MqttOptions::new("independent-reader", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(Some(16 * 1024 * 1024));
    let (client, mut events) = AsyncClient::new(o, 1000);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => client
                    .subscribe_many([Filter::new("plant/#", QoS::AtLeastOnce)])
                    .await
                    .unwrap(),
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let props = p.properties.map(|p| p.user_properties).unwrap_or_default();
                    let get = |k: &str| props.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                    let payload: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    sink.lock().unwrap().push(Seen {
                        publisher: get("ferrule-pub").unwrap_or_default(),
                        seq: get("ferrule-seq").and_then(|s| s.parse().ok()).unwrap_or(0),
                        topic: String::from_utf8_lossy(&p.topic).into(),
                        ts: ferrule_tests::mqtt::samples_of(&payload)
                            .into_iter()
                            .map(|s| s.2)
                            .collect(),
                    });
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("subscribed")
        .unwrap();
    (seen, task)
}

/// `set` as inclusive ranges.
fn ranges(set: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in set {
        match out.last_mut() {
            Some(r) if r.1 + 1 == s => r.1 = s,
            _ => out.push((s, s)),
        }
    }
    out
}

fn common(dir: &Path) -> String {
    format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0

[admin]
enabled = false

[reference_data.assets]
path = "{}"

[dead_letter]
type = "file"
path = "{}"
"#,
        repo_root().join("examples/assets.csv").display(),
        dir.join("dead-letter.jsonl").display()
    )
}

/// The edge publishes through a Mosquitto with its default queue limit
/// (`max_queued_messages 1000`) while the bridge is down for longer than that queue lasts:
/// the broker drops messages for the bridge's session. The bridge reports the gap — count
/// and ranges — exactly as an independent subscriber's record of what was published, minus
/// what reached the bridge's sink, says; in the dead-letter, the status, `/ready` and
/// `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_down_on_a_default_mosquitto_reports_exactly_the_gap_the_broker_made() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), ""); // defaults: max_queued_messages 1000
    let port = broker.port;
    let (seen, reader) = seq_reader(port).await;

    let bridge_dir = dir.path().join("bridge");
    std::fs::create_dir_all(&bridge_dir).unwrap();
    let bridge_text = format!(
        r#"{common}
[sources.bridge]
type = "mqtt"
topics = ["plant/#"]
linger_ms = 10
[sources.bridge.broker]
port = {port}
client_id = "bridge-1"
[sources.bridge.sequence]
reorder_timeout_ms = 1500

[sinks.samples]
type = "file"
path = "samples.jsonl"
"#,
        common = common(&bridge_dir),
    );
    let bridge_config = load(&bridge_dir, &bridge_text);
    let bridge = runtime::start(&bridge_config).await.unwrap();

    let edge_dir = dir.path().join("edge");
    std::fs::create_dir_all(&edge_dir).unwrap();
    // 20 tags every 10 ms, one message per sample: ~2 000 messages/s for 4 s.
    let edge_text = format!(
        r#"{common}
[sources.plant]
type = "simulator"
tags = 20
scans = 400
interval_ms = 10
start_ns = {START_NS}
spike_every = 0
nan_every = 0
bad_quality_every = 0

{stages}

[sinks.uplink]
type = "mqtt"
batch_form = false
[sinks.uplink.broker]
port = {port}
client_id = "edge-1"
"#,
        common = common(&edge_dir),
        stages = reference_stages_toml(),
    );
    let edge = runtime::start(&load(&edge_dir, &edge_text)).await.unwrap();
    let edge_handle = edge.handle.clone();

    // The bridge takes the first second, then is down for ~2 s (the broker keeps 1 000
    // messages for its session and drops the rest), then comes back.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    bridge.handle.stop();
    let first = bridge.wait().await.unwrap();
    assert!(
        first.produced["bridge"] > 0,
        "the bridge took nothing before it went down"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let bridge = runtime::start(&bridge_config).await.unwrap();
    let handle = bridge.handle.clone();

    let edge_status = edge.wait().await.unwrap();
    let published = edge_status.sinks["uplink"].written;
    assert!(
        published > 6_000,
        "the edge published only {published} samples"
    );
    assert_eq!(
        edge_handle.status().sinks["uplink"]
            .buffer
            .as_ref()
            .unwrap()
            .depth_samples,
        0
    );

    // The independent subscriber saw every message: numbers 1..=published, one sample each.
    let deadline = Instant::now() + Duration::from_secs(60);
    let by_sample: HashMap<(String, u64), u64> = loop {
        let s = seen.lock().unwrap().clone();
        let seqs: BTreeSet<u64> = s.iter().map(|m| m.seq).collect();
        if seqs.len() as u64 >= published || Instant::now() > deadline {
            assert_eq!(
                seqs,
                (1..=published).collect::<BTreeSet<u64>>(),
                "the subscriber did not see 1..={published}"
            );
            assert!(s.iter().all(|m| m.publisher == "edge-1" && m.ts.len() == 1));
            break s
                .iter()
                .map(|m| ((m.topic.clone(), m.ts[0]), m.seq))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    reader.abort();

    // What reached the bridge's sink, and so which numbers are missing there.
    let missing = loop {
        let status = handle.status();
        let lines = read_jsonl(&bridge_dir.join("samples.jsonl"));
        let got: BTreeSet<u64> = lines
            .iter()
            .map(|v| {
                let key = (
                    v["path"].as_str().unwrap().to_string(),
                    v["ts_ns"].as_u64().unwrap(),
                );
                *by_sample
                    .get(&key)
                    .unwrap_or_else(|| panic!("{key:?} was never published"))
            })
            .collect();
        let missing: BTreeSet<u64> = (1..=published).filter(|s| !got.contains(s)).collect();
        let p = status.upstream.get("bridge").and_then(|u| u.get("edge-1"));
        let settled = p.is_some_and(|p| {
            p.highest_seq == published
                && p.pending_missing == 0
                && p.missing_messages == missing.len() as u64
        });
        if settled || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.len() > 1000,
        "the broker dropped only {} messages: was the bridge down long enough?",
        missing.len()
    );

    let status = handle.status();
    let p = &status.upstream["bridge"]["edge-1"];
    assert_eq!(p.missing_messages, missing.len() as u64, "{p:?}");
    assert_eq!(p.highest_seq, published);
    assert_eq!(p.new_epochs, 0);
    // The dead-letter holds each gap with its range; together exactly the missing numbers.
    let mut reported = BTreeSet::new();
    let letters = read_jsonl(&bridge_dir.join("dead-letter.jsonl"));
    let gaps: Vec<&serde_json::Value> = letters
        .iter()
        .filter(|l| l["reason"] == "upstream-gap")
        .collect();
    assert_eq!(gaps.len() as u64, p.gaps);
    for g in &gaps {
        let range: serde_json::Value = serde_json::from_str(g["extra"].as_str().unwrap()).unwrap();
        assert_eq!(range["publisher"], "edge-1");
        let (from, to) = (
            range["from"].as_u64().unwrap(),
            range["to"].as_u64().unwrap(),
        );
        assert_eq!(range["missing"].as_u64().unwrap(), to - from + 1);
        reported.extend(from..=to);
    }
    assert_eq!(
        ranges(&reported),
        ranges(&missing),
        "reported gaps differ from what is missing"
    );
    // Every other letter is not a gap of ours (nothing else was refused).
    assert_eq!(letters.len(), gaps.len(), "{letters:?}");
    // `/ready` names it, `/metrics` counts it.
    let reasons = runtime::not_ready_reasons(&status);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("upstream gap") && r.contains("edge-1")),
        "{reasons:?}"
    );
    let metrics = ferrule::metrics::render(&status);
    let line = format!(
        "ferrule_upstream_gap_messages_total{{source=\"bridge\",publisher=\"edge-1\"}} {}",
        missing.len()
    );
    assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    eprintln!(
        "published {published}, missing at the bridge {} in {:?}",
        missing.len(),
        ranges(&missing)
    );
    handle.stop();
    bridge.wait().await.unwrap();
}

fn payload(value: f64, ts: u64) -> Vec<u8> {
    format!("{{\"value\":{value},\"unit\":\"bar\",\"quality\":\"good\",\"ts_ns\":{ts}}}")
        .into_bytes()
}

fn bridge_to_kafka(mqtt_port: u16, kafka_port: u16, client: &str) -> String {
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
linger_ms = 10
[sources.bridge.broker]
port = {mqtt_port}
client_id = "{client}"

[sinks.kafka]
type = "kafka"
brokers = "127.0.0.1:{kafka_port}"
linger_ms = 5
[[sinks.kafka.routes]]
match = "plant/**"
topics = ["plant.telemetry"]

[dead_letter]
type = "kafka"
brokers = "127.0.0.1:{kafka_port}"
topic = "dead"
"#
    )
}

/// The test traffic: `n` samples over 10 tags, one message each.
fn traffic(n: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("plant/site1/area1/line1/dev{}/flow", i % 10),
                payload(i as f64, START_NS + i),
            )
        })
        .collect()
}

fn tag_of(message: u64) -> String {
    format!("plant/site1/area1/line1/dev{}/flow", message % 10)
}

/// `messages` batch-form messages of `per` samples of one tag each (tags in turn); sample
/// `i` has ts `START_NS + i`.
fn batched_traffic(messages: u64, per: u64) -> Vec<(String, Vec<u8>)> {
    (0..messages)
        .map(|m| {
            let samples: Vec<String> = (0..per)
                .map(|j| {
                    let i = m * per + j;
                    format!(
                        "{{\"value\":{},\"quality\":\"good\",\"ts_ns\":{}}}",
                        i as f64,
                        START_NS + i
                    )
                })
                .collect();
            let body = format!("{{\"unit\":\"bar\",\"samples\":[{}]}}", samples.join(","));
            (tag_of(m), body.into_bytes())
        })
        .collect()
}

/// Every expected (key, ts) exactly once, one partition per key, per-key order kept.
fn assert_exactly_once_in_order(records: &[Record], expected: &HashSet<(String, u64)>) {
    let mut count: HashMap<(String, u64), usize> = HashMap::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut partition_of: HashMap<&str, i64> = HashMap::new();
    for r in sorted {
        let ts = r.value["ts_ns"].as_u64().unwrap();
        *count.entry((r.key.clone(), ts)).or_default() += 1;
        assert_eq!(
            *partition_of.entry(&r.key).or_insert(r.partition),
            r.partition
        );
        if let Some(prev) = last.insert(&r.key, ts) {
            if prev >= ts {
                let around: Vec<(i64, u64, String)> = records
                    .iter()
                    .filter(|x| {
                        let t = x.value["ts_ns"].as_u64().unwrap();
                        x.key == r.key && (t == ts || t == prev)
                    })
                    .map(|x| {
                        (
                            x.offset,
                            x.value["ts_ns"].as_u64().unwrap() - START_NS,
                            x.headers["ferrule-seq"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect();
                panic!("{}: {ts} after {prev}; around it: {around:?}", r.key);
            }
        }
    }
    let dupes: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dupes.is_empty(),
        "{} samples written more than once, e.g. {:?}",
        dupes.len(),
        &dupes[..dupes.len().min(5)]
    );
    let keys: HashSet<(String, u64)> = count.into_keys().collect();
    assert_eq!(
        expected.difference(&keys).count(),
        0,
        "samples missing from Kafka"
    );
    assert_eq!(&keys, expected, "unexpected samples");
}

/// The MQTT → Kafka bridge SIGKILLed six times while it works through a backlog, with the
/// broker's queue unbounded: every sample is in Kafka exactly once (the dedup window survives
/// each kill), in order, and the record numbers run 1..=n in every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_killed_six_times_writes_every_sample_to_kafka_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(
        dir.path(),
        "max_queued_messages 0\nmax_inflight_messages 0\n",
    );
    let k = kafka::tansu();
    kafka::create_topic(k.port, "plant.telemetry", 3);
    kafka::create_topic(k.port, "dead", 1);
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, bridge_to_kafka(broker.port, k.port, "bridge-x")).unwrap();
    let bin = ferrule_bin();
    let log = |i: usize| std::fs::File::create(dir.path().join(format!("bridge-{i}.log"))).unwrap();
    let start = |i: usize| {
        std::process::Command::new(&bin)
            .arg("run")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log(i))
            .spawn()
            .unwrap()
    };
    // The first start creates the persistent MQTT session.
    let mut child = start(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 12 000 messages of 20 samples of one tag, published faster than the bridge forwards
    // them: it works through a backlog at full speed, with messages in Kafka but not yet
    // acknowledged whenever it is killed.
    let (messages, per) = (12_000u64, 20u64);
    let n = messages * per;
    let port = broker.port;
    let publisher = tokio::spawn(async move {
        let all = batched_traffic(messages, per);
        for chunk in all.chunks(1000) {
            publish_all(port, "test-pub", chunk.to_vec()).await;
        }
    });
    // Each run lives long enough to restore its window (≥ 1 s) and write.
    for (i, run_ms) in [1500, 2000, 1300, 2200, 1600, 1800].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = start(i + 1);
    }
    publisher.await.unwrap();
    let expected: HashSet<(String, u64)> =
        (0..n).map(|i| (tag_of(i / per), START_NS + i)).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let records = loop {
        let records = kafka::read(k.port, &["plant.telemetry"], n as usize, 30);
        let keys: HashSet<(String, u64)> = records
            .iter()
            .map(|r| (r.key.clone(), r.value["ts_ns"].as_u64().unwrap()))
            .collect();
        if keys.len() >= expected.len() || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        records
            .iter()
            .all(|r| r.headers.get("correction").is_none()),
        "a redelivery was taken for a correction"
    );
    assert_exactly_once_in_order(&records, &expected);
    // The restarts restored the window before writing (a run killed before its first
    // write has nothing to restore yet).
    let restored = (1..=6)
        .filter(|i| {
            std::fs::read_to_string(dir.path().join(format!("bridge-{i}.log")))
                .unwrap()
                .contains("dedup window restored")
        })
        .count();
    assert!(
        restored >= 3,
        "only {restored} of 6 restarts restored the dedup window"
    );
    // The record numbers continued across every kill: 1..=n per partition, no hole, no
    // number twice.
    let mut per_partition: HashMap<i64, Vec<u64>> = HashMap::new();
    for r in &records {
        per_partition
            .entry(r.partition)
            .or_default()
            .push(r.headers["ferrule-seq"].as_str().unwrap().parse().unwrap());
    }
    for (p, mut seqs) in per_partition {
        seqs.sort();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "partition {p}"
        );
    }
    eprintln!(
        "sigkill x6: {n} samples, {} records, 0 duplicates",
        records.len()
    );
}

/// A corrected value re-sent with the same timestamp reaches Kafka marked as a correction
/// and counted; an exact repeat does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrected_value_with_an_equal_timestamp_reaches_kafka_marked_as_a_correction() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "");
    let k = kafka::tansu();
    kafka::create_topic(k.port, "plant.telemetry", 3);
    kafka::create_topic(k.port, "dead", 1);
    let running = runtime::start(&load(
        dir.path(),
        &bridge_to_kafka(broker.port, k.port, "bridge-c"),
    ))
    .await
    .unwrap();
    let handle = running.handle.clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tag = "plant/site1/area1/line1/dev1/flow".to_string();
    let other = "plant/site1/area1/line1/dev2/flow".to_string();
    let msgs = vec![
        (tag.clone(), payload(1.5, START_NS)),
        (other.clone(), payload(7.0, START_NS)),
        (tag.clone(), payload(1.5, START_NS)), // an exact repeat: dropped
        (tag.clone(), payload(1.75, START_NS)), // the correction
        (tag.clone(), payload(1.75, START_NS)), // the correction again: dropped
        (tag.clone(), payload(2.0, START_NS + 1)),
    ];
    publish_all(broker.port, "test-pub", msgs).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    // `written` counts every sample the sink took, repeats included.
    while handle.status().sinks["kafka"].written < 6 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            handle.status().sinks["kafka"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = kafka::read(k.port, &["plant.telemetry"], 4, 20);
    let mine: Vec<(f64, u64, Option<&str>)> = records
        .iter()
        .filter(|r| r.key == tag)
        .map(|r| {
            (
                r.value["value"].as_f64().unwrap(),
                r.value["ts_ns"].as_u64().unwrap(),
                r.headers.get("correction").and_then(|v| v.as_str()),
            )
        })
        .collect();
    assert_eq!(
        mine,
        vec![
            (1.5, START_NS, None),
            (1.75, START_NS, Some("true")),
            (2.0, START_NS + 1, None)
        ]
    );
    assert_eq!(records.iter().filter(|r| r.key == other).count(), 1);
    let s = &handle.status().sinks["kafka"];
    assert_eq!((s.deduplicated, s.corrections), (2, 1), "{s:?}");
    handle.stop();
    running.wait().await.unwrap();
    // The durable window holds the four forwarded samples and where the sink got to.
    let w = ferrule::sinks::kafka::window::DurableWindow::open(
        &dir.path().join("data/dedup/kafka.redb"),
    )
    .unwrap();
    let (entries, checkpoint, numbers) = w.load(0).unwrap();
    assert_eq!(entries.len(), 4, "{entries:?}");
    assert_eq!(checkpoint.values().sum::<i64>(), 4, "{checkpoint:?}");
    assert_eq!(
        numbers.values().map(|n| n - 1).sum::<u64>(),
        4,
        "{numbers:?}"
    );
}

/// An edge (MQTT in → MQTT out through the buffer) SIGKILLed five times mid-stream: every
/// message it sends again after a restart carries the number it had (a redelivery), numbers
/// continue across restarts in one epoch, and no number is skipped or given to two messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_five_times_resends_under_the_same_numbers_and_skips_none() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = mosquitto(
        dir.path(),
        "max_queued_messages 0\nmax_inflight_messages 0\n",
    );
    let downstream = mosquitto(dir.path(), "max_queued_messages 0\n");
    let (seen, reader) = seq_reader(downstream.port).await;
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            r#"{common}
[sources.field]
type = "mqtt"
topics = ["plant/#"]
linger_ms = 5
[sources.field.broker]
port = {up}
client_id = "edge-in"

[sinks.uplink]
type = "mqtt"
max_inflight = 64
[sinks.uplink.broker]
port = {down}
client_id = "edge-out"
"#,
            common = common(dir.path()),
            up = upstream.port,
            down = downstream.port
        ),
    )
    .unwrap();
    let bin = ferrule_bin();
    let start = || {
        std::process::Command::new(&bin)
            .arg("run")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = 8_000u64;
    let port = upstream.port;
    let publisher = tokio::spawn(async move {
        let all = traffic(n);
        for chunk in all.chunks(250) {
            publish_all(port, "test-pub", chunk.to_vec()).await;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    for run_ms in [500, 800, 350, 900, 600] {
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = start();
    }
    publisher.await.unwrap();
    let expected: HashSet<(String, u64)> = traffic(n)
        .into_iter()
        .map(|(t, _)| t)
        .zip(0..n)
        .map(|(t, i)| (t, START_NS + i))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let msgs = loop {
        let msgs = seen.lock().unwrap().clone();
        let keys: HashSet<(String, u64)> = msgs
            .iter()
            .flat_map(|m| m.ts.iter().map(|t| (m.topic.clone(), *t)))
            .collect();
        if keys.len() >= expected.len() || Instant::now() > deadline {
            assert_eq!(keys, expected, "samples lost or unexpected");
            break msgs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    reader.abort();
    // Each number names one message (the same samples every time it was sent), and the
    // numbers run 1..=max without a hole.
    let mut by_seq: HashMap<u64, (String, Vec<u64>)> = HashMap::new();
    let mut seq_of: HashMap<(String, u64), BTreeSet<u64>> = HashMap::new();
    let mut resent = 0;
    for m in &msgs {
        assert_eq!(m.publisher, "edge-out");
        assert!(m.seq > 0, "a message without a number");
        match by_seq.get(&m.seq) {
            Some(first) => {
                assert_eq!(
                    first,
                    &(m.topic.clone(), m.ts.clone()),
                    "number {} reused",
                    m.seq
                );
                resent += 1;
            }
            None => {
                by_seq.insert(m.seq, (m.topic.clone(), m.ts.clone()));
            }
        }
        for t in &m.ts {
            seq_of
                .entry((m.topic.clone(), *t))
                .or_default()
                .insert(m.seq);
        }
    }
    let max = *by_seq.keys().max().unwrap();
    assert_eq!(by_seq.len() as u64, max, "numbers skipped below {max}");
    // A sample under two numbers came twice from upstream (its PUBACK lost in a kill): a
    // new message for the edge, bounded by the source's receive window per kill.
    let upstream_again = seq_of.values().filter(|s| s.len() > 1).count();
    assert!(upstream_again <= 5 * 1024, "{upstream_again}");
    eprintln!(
        "sigkill x5: {n} samples in {max} numbered messages, {resent} sent again under their number, {upstream_again} samples redelivered from upstream under a new number"
    );
}

/// The Kafka sink numbers its records per topic-partition (read back by confluent-kafka:
/// 1..=n in every partition, one publisher and epoch), and a Kafka source reports records
/// missing from a partition — here a range an independent producer left out — as a gap,
/// while the sink's complete partitions show none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_are_numbered_per_partition_and_a_kafka_source_reports_a_missing_range() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "max_queued_messages 0\n");
    let k = kafka::tansu();
    kafka::create_topic(k.port, "plant.telemetry", 3);
    kafka::create_topic(k.port, "dead", 1);
    kafka::create_topic(k.port, "numbered", 1);
    let bridge_dir = dir.path().join("bridge");
    std::fs::create_dir_all(&bridge_dir).unwrap();
    let running = runtime::start(&load(
        &bridge_dir,
        &bridge_to_kafka(broker.port, k.port, "bridge-n"),
    ))
    .await
    .unwrap();
    let handle = running.handle.clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = 3000u64;
    publish_all(broker.port, "test-pub", traffic(n)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.status().sinks["kafka"].written < n {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            handle.status().sinks["kafka"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.stop();
    running.wait().await.unwrap();
    let records = kafka::read(k.port, &["plant.telemetry"], n as usize, 30);
    assert_eq!(records.len() as u64, n);
    let mut per_partition: HashMap<i64, Vec<u64>> = HashMap::new();
    let mut stamps = HashSet::new();
    for r in &records {
        let h = |k: &str| r.headers[k].as_str().unwrap().to_string();
        stamps.insert((h("ferrule-pub"), h("ferrule-epoch")));
        per_partition
            .entry(r.partition)
            .or_default()
            .push(h("ferrule-seq").parse().unwrap());
    }
    assert_eq!(stamps.len(), 1, "{stamps:?}");
    assert_eq!(stamps.iter().next().unwrap().0, "ferrule-kafka");
    assert!(per_partition.len() > 1, "all records in one partition");
    for (p, mut seqs) in per_partition.clone() {
        let in_offset_order = seqs.clone();
        seqs.sort();
        assert_eq!(
            in_offset_order, seqs,
            "partition {p}: numbers out of offset order"
        );
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "partition {p}"
        );
    }

    // An independent producer leaves 81..=120 out of a numbered partition.
    let ok = std::process::Command::new(ferrule_tests::peers::python())
        .arg(repo_root().join("tests/peers/kafka_produce_numbered.py"))
        .arg(format!("127.0.0.1:{}", k.port))
        .args(["numbered", "ext", "e1", "200", "81", "120"])
        .arg(START_NS.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kafka_produce_numbered.py failed");
    let reader_dir = dir.path().join("reader");
    std::fs::create_dir_all(&reader_dir).unwrap();
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
[admin]
enabled = false
[sources.k]
type = "kafka"
brokers = "127.0.0.1:{kport}"
group_id = "accounting-check"
topics = ["plant.telemetry", "numbered"]
[sources.k.properties]
"session.timeout.ms" = "6000"
"max.poll.interval.ms" = "10000"
[sources.k.sequence]
reorder_timeout_ms = 1000
[sinks.samples]
type = "file"
path = "samples.jsonl"
[dead_letter]
type = "file"
path = "dead-letter.jsonl"
"#,
        kport = k.port
    );
    let running = runtime::start(&load(&reader_dir, &text)).await.unwrap();
    let handle = running.handle.clone();
    let total = n + 160;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = handle.status();
        let gap_declared = s
            .upstream
            .get("k")
            .and_then(|u| u.get("ext@numbered:0"))
            .is_some_and(|p| p.gaps > 0);
        if s.produced["k"] >= total && gap_declared {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            s.produced,
            s.upstream
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = handle.status();
    let upstream = &status.upstream["k"];
    let ext = &upstream["ext@numbered:0"];
    assert_eq!(
        (ext.gaps, ext.missing_messages, ext.highest_seq),
        (1, 40, 200)
    );
    let g = ext.last_gap.as_ref().unwrap();
    assert_eq!((g.from, g.to, g.epoch.as_str()), (81, 120, "e1"));
    for (p, seqs) in &per_partition {
        let s = &upstream[&format!("ferrule-kafka@plant.telemetry:{p}")];
        assert_eq!(
            (s.missing_messages, s.highest_seq, s.messages),
            (0, seqs.len() as u64, seqs.len() as u64),
            "partition {p}: {s:?}"
        );
    }
    handle.stop();
    running.wait().await.unwrap();
    let letters = read_jsonl(&reader_dir.join("dead-letter.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["reason"], "upstream-gap");
    assert!(
        letters[0]["detail"].as_str().unwrap().contains("81..=120"),
        "{letters:?}"
    );
}
