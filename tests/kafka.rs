//! MQTT → Ferrule bridge → Kafka against a real Mosquitto and a real Kafka-protocol broker
//! (Tansu) on free ports, read back by an independent consumer (Python confluent-kafka):
//! every sample once, keyed by its tag path, per-tag order kept, fan-out by routing rules,
//! QoS 1 repeats removed, refusals in the Kafka dead-letter topic with their reason, and a
//! frozen broker (SIGSTOP/SIGCONT) mid-stream losing nothing.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::runtime;
use ferrule_tests::kafka::{self, Record};
use ferrule_tests::mqtt::publish_all;
use ferrule_tests::peers::mosquitto;

const START_NS: u64 = 1_700_000_000_000_000_000;

fn load(dir: &Path, text: &str) -> HostConfig {
    HostConfig::from_text(text, dir).unwrap_or_else(|e| panic!("{e:?}"))
}

fn payload(value: f64, ts: u64) -> Vec<u8> {
    format!("{{\"value\":{value},\"unit\":\"bar\",\"quality\":\"good\",\"ts_ns\":{ts}}}")
        .into_bytes()
}

/// A bridge: MQTT source on `mqtt_port` (`topics`), Kafka sink with the routes, Kafka
/// dead-letter topic `dead`.
fn bridge_config(mqtt_port: u16, kafka_port: u16, topics: &str, client: &str) -> String {
    format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0

[admin]
enabled = false

[sources.bridge]
type = "mqtt"
topics = [{topics}]
linger_ms = 10
max_payload_bytes = 8192
[sources.bridge.broker]
port = {mqtt_port}
client_id = "{client}"

[sinks.kafka]
type = "kafka"
brokers = "127.0.0.1:{kafka_port}"
compression = "zstd"
linger_ms = 5
[[sinks.kafka.routes]]
match = "plant/**"
topics = ["plant.telemetry"]
[[sinks.kafka.routes]]
match = "plant/**/alarm_*"
topics = ["plant.alarms"]
[[sinks.kafka.routes]]
match = "plant/site2/**"
topics = ["plant.site2"]

[dead_letter]
type = "kafka"
brokers = "127.0.0.1:{kafka_port}"
topic = "dead"
instance = "{client}"
"#
    )
}

fn kafka_with_topics() -> ferrule_tests::peers::Peer {
    let k = kafka::tansu();
    for (t, p) in [
        ("plant.telemetry", 3),
        ("plant.alarms", 1),
        ("plant.site2", 2),
        ("dead", 1),
    ] {
        kafka::create_topic(k.port, t, p);
    }
    k
}

/// The test traffic: `n` samples over 10 tags on two sites, one of them an alarm.
fn traffic(n: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let tag = i % 10;
            let site = if tag < 5 { "site1" } else { "site2" };
            let metric = if tag == 3 { "alarm_high" } else { "flow" };
            (
                format!("plant/{site}/area1/line1/dev{tag}/{metric}"),
                payload(i as f64, START_NS + i),
            )
        })
        .collect()
}

/// Checks the telemetry records: every expected (key, ts) exactly once, key == payload
/// path, one partition per key, source-time order per key in offset order.
fn assert_once_keyed_in_order(records: &[Record], expected: &HashSet<(String, u64)>) {
    let mut seen = HashSet::new();
    let mut partition_of: HashMap<&str, i64> = HashMap::new();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut last_ts: HashMap<&str, u64> = HashMap::new();
    for r in sorted {
        assert_eq!(r.value["path"], r.key.as_str(), "key is the tag path");
        let ts = r.value["ts_ns"].as_u64().unwrap();
        assert!(
            seen.insert((r.key.clone(), ts)),
            "{} {ts} arrived twice",
            r.key
        );
        let p = *partition_of.entry(&r.key).or_insert(r.partition);
        assert_eq!(p, r.partition, "{} spread over partitions", r.key);
        if let Some(prev) = last_ts.insert(&r.key, ts) {
            assert!(prev < ts, "{}: {ts} after {prev}", r.key);
        }
    }
    assert_eq!(&seen, expected, "not every sample arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_forwards_every_sample_once_keyed_routed_deduplicated_and_dead_letters_refusals() {
    let dir = tempfile::tempdir().unwrap();
    // A bridge's broker must keep what it queues for the bridge (README, "Broker settings a
    // bridge needs"): this burst of 2 104 messages arrives while the Kafka sink restores its
    // dedup window, and a default Mosquitto drops past 1 000 queued messages.
    let broker = mosquitto(dir.path(), "max_queued_messages 0\n");
    let k = kafka_with_topics();
    let config = load(
        dir.path(),
        &bridge_config(broker.port, k.port, "\"plant/#\"", "bridge-a"),
    );
    let running = runtime::start(&config).await.unwrap();
    let handle = running.handle.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let n = 2000u64;
    let mut msgs = traffic(n);
    // QoS 1 redeliveries: 100 messages arrive a second time.
    let repeats: Vec<(String, Vec<u8>)> = msgs.iter().step_by(20).cloned().collect();
    msgs.extend(repeats.iter().cloned());
    let good = "plant/site1/area1/line1/dev0/flow";
    let mut big = br#"{"value":1,"ts_ns":16,"unit":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 10_000));
    big.extend(br#""}"#);
    let bad = [
        (good.to_string(), b"{not json".to_vec()),
        (good.to_string(), br#"{"value":"3.5","ts_ns":13}"#.to_vec()),
        (
            "plant/site1/Area1/line1/dev0/flow".to_string(),
            payload(4.5, 14),
        ),
        (good.to_string(), big),
    ];
    msgs.extend(bad.iter().cloned());
    publish_all(broker.port, "test-pub", msgs).await;

    // Everything is acknowledged by Kafka once the MQTT source has had it all.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = handle.status();
        // `written` counts every sample the sink took, repeats included.
        let done = s.sinks["kafka"].written >= n + 100 && s.dead_letters >= 4;
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "not all samples arrived: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.stop();
    let status = running.wait().await.unwrap();
    assert_eq!(status.sinks["kafka"].deduplicated, repeats.len() as u64);

    let expected: HashSet<(String, u64)> = traffic(n)
        .into_iter()
        .map(|(t, _)| t)
        .zip(0..n)
        .map(|(t, i)| (t, START_NS + i))
        .collect();
    let telemetry = kafka::read(k.port, &["plant.telemetry"], n as usize, 60);
    assert_eq!(telemetry.len(), n as usize);
    assert_once_keyed_in_order(&telemetry, &expected);
    for r in &telemetry {
        assert_eq!(r.headers["quality"], "good");
        assert_eq!(r.headers["unit"], "bar");
        assert_eq!(r.headers["contract"], "ferrule.sample.v1");
        assert_eq!(r.headers["status"], "0");
        assert_eq!(r.value["unit"], "bar");
        assert_eq!(r.value["quality"], "good");
    }
    // Fan-out: the alarm tag also in plant.alarms, site2 also in its own topic.
    let alarms = kafka::read(k.port, &["plant.alarms"], (n / 10) as usize, 60);
    let expect_alarms: HashSet<_> = expected
        .iter()
        .filter(|(t, _)| t.ends_with("/alarm_high"))
        .cloned()
        .collect();
    assert_once_keyed_in_order(&alarms, &expect_alarms);
    let site2 = kafka::read(k.port, &["plant.site2"], (n / 2) as usize, 60);
    let expect_site2: HashSet<_> = expected
        .iter()
        .filter(|(t, _)| t.starts_with("plant/site2/"))
        .cloned()
        .collect();
    assert_once_keyed_in_order(&site2, &expect_site2);

    // Refusals in the dead-letter topic, each with topic, reason, original payload, instance.
    let dead = kafka::read(k.port, &["dead"], 4, 60);
    assert_eq!(dead.len(), 4, "{dead:?}");
    let by_reason: HashMap<String, &Record> = dead
        .iter()
        .map(|r| (r.value["reason"].as_str().unwrap().to_string(), r))
        .collect();
    for reason in ["malformed-json", "schema", "topic-spec", "oversize"] {
        let r = by_reason
            .get(reason)
            .unwrap_or_else(|| panic!("no {reason} dead-letter: {dead:?}"));
        assert_eq!(r.headers["reason"], reason);
        assert_eq!(r.value["instance"], "bridge-a");
        assert_eq!(r.headers["instance"], "bridge-a");
        assert!(r.value["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(by_reason["malformed-json"].value["extra"], "{not json");
    assert_eq!(by_reason["malformed-json"].value["path"], good);
    assert_eq!(
        by_reason["schema"].value["extra"],
        r#"{"value":"3.5","ts_ns":13}"#
    );
    assert!(by_reason["schema"].value["detail"]
        .as_str()
        .unwrap()
        .starts_with("value: expected a number"));
    assert_eq!(
        by_reason["topic-spec"].value["path"],
        "plant/site1/Area1/line1/dev0/flow"
    );
    assert!(by_reason["oversize"].value["extra"]
        .as_str()
        .unwrap()
        .starts_with(r#"{"value":1,"ts_ns":16"#));
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_kafka_holds_the_mqtt_acks_back_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "max_queued_messages 0\n");
    let k = kafka_with_topics();
    let receive_maximum = 50u64;
    let text = bridge_config(broker.port, k.port, "\"plant/#\"", "bridge-o").replace(
        "linger_ms = 10\n",
        &format!("linger_ms = 10\nreceive_maximum = {receive_maximum}\n"),
    );
    let running = runtime::start(&load(dir.path(), &text)).await.unwrap();
    let handle = running.handle.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A publisher sends 3000 samples over ~6 s while Kafka is frozen for 8 s of it.
    let n = 3000u64;
    let port = broker.port;
    let publisher = tokio::spawn(async move {
        let all = traffic(n);
        for chunk in all.chunks(100) {
            publish_all(port, "test-pub", chunk.to_vec()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let kafka_pid = k.pid();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    signal(kafka_pid, "STOP");
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Frozen: the bridge took no more than the unacknowledged-message window beyond what
    // Kafka acknowledged, i.e. the MQTT acks were held back and the rest waits in Mosquitto.
    let s = handle.status();
    let acked = s.sinks["kafka"].published_messages;
    let taken = s.produced["bridge"];
    signal(kafka_pid, "CONT");
    eprintln!("during the freeze: {taken} samples taken, {acked} records acknowledged");
    assert!(
        taken < n,
        "the bridge took every sample while Kafka was frozen ({acked} records acknowledged)"
    );
    assert!(
        taken <= acked + receive_maximum,
        "took {taken} samples with only {acked} records acknowledged"
    );
    publisher.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(90);
    while handle.status().sinks["kafka"].written < n {
        assert!(
            Instant::now() < deadline,
            "not all samples arrived: {:?}",
            handle.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.stop();
    running.wait().await.unwrap();
    let expected: HashSet<(String, u64)> = traffic(n)
        .into_iter()
        .map(|(t, _)| t)
        .zip(0..n)
        .map(|(t, i)| (t, START_NS + i))
        .collect();
    let telemetry = kafka::read(k.port, &["plant.telemetry"], n as usize, 60);
    assert_once_keyed_in_order(&telemetry, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_on_one_shared_subscription_split_the_load_and_deliver_every_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "max_queued_messages 0\n");
    let k = kafka_with_topics();
    let mut running = Vec::new();
    for i in 0..2 {
        let d = dir.path().join(format!("b{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let text = bridge_config(
            broker.port,
            k.port,
            "\"$share/bridges/plant/#\"",
            &format!("bridge-{i}"),
        );
        running.push(runtime::start(&load(&d, &text)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let n = 3000u64;
    publish_all(broker.port, "test-pub", traffic(n)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let total: u64 = running
            .iter()
            .map(|r| r.handle.status().sinks["kafka"].written)
            .sum();
        if total >= n {
            break;
        }
        assert!(Instant::now() < deadline, "{total} of {n} arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut per_instance = Vec::new();
    for r in running {
        r.handle.stop();
        per_instance.push(r.wait().await.unwrap().sinks["kafka"].written);
    }
    assert!(
        per_instance.iter().all(|c| *c > 0),
        "one instance got nothing: {per_instance:?}"
    );
    let expected: HashSet<(String, u64)> = traffic(n)
        .into_iter()
        .map(|(t, _)| t)
        .zip(0..n)
        .map(|(t, i)| (t, START_NS + i))
        .collect();
    let telemetry = kafka::read(k.port, &["plant.telemetry"], n as usize, 60);
    // Every sample once. (Per-tag order is not promised across instances: a shared
    // subscription hands one tag's messages to both.)
    let mut seen = HashSet::new();
    for r in &telemetry {
        let ts = r.value["ts_ns"].as_u64().unwrap();
        assert!(seen.insert((r.key.clone(), ts)), "{} {ts} twice", r.key);
    }
    assert_eq!(seen, expected);
}

use ferrule_tests::ferrule_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_killed_with_sigkill_mid_stream_loses_no_sample() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(
        dir.path(),
        "max_queued_messages 0\nmax_inflight_messages 0\n",
    );
    let k = kafka_with_topics();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        bridge_config(broker.port, k.port, "\"plant/#\"", "bridge-k"),
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
    // The first start creates the persistent MQTT session.
    let mut child = start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = 10_000u64;
    let port = broker.port;
    let publisher = tokio::spawn(async move {
        let all = traffic(n);
        for chunk in all.chunks(500) {
            publish_all(port, "test-pub", chunk.to_vec()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    for run_ms in [400, 700, 300, 900, 500] {
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
    // Read until every sample is there (duplicates allowed: at-least-once).
    let deadline = Instant::now() + Duration::from_secs(90);
    let (records, keys) = loop {
        let records = kafka::read(k.port, &["plant.telemetry"], n as usize, 30);
        let keys: HashSet<(String, u64)> = records
            .iter()
            .map(|r| (r.key.clone(), r.value["ts_ns"].as_u64().unwrap()))
            .collect();
        if keys.len() >= expected.len() || Instant::now() > deadline {
            break (records, keys);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let missing = expected.difference(&keys).count();
    assert_eq!(missing, 0, "{missing} samples lost");
    assert_eq!(keys.len(), expected.len(), "unexpected samples");
    eprintln!(
        "sigkill x5: {n} samples, {} duplicates (at-least-once window)",
        records.len() - keys.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kafka_source_instances_in_one_group_rebalance_mid_stream_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let k = kafka::tansu();
    kafka::create_topic(k.port, "plant.telemetry", 4);
    let n = 12_000u64;
    // An independent producer writes for ~12 s while instances join and leave.
    let mut producer = std::process::Command::new(ferrule_tests::peers::python())
        .arg(ferrule_tests::repo_root().join("tests/peers/kafka_produce.py"))
        .arg(format!("127.0.0.1:{}", k.port))
        .arg("plant.telemetry")
        .arg(n.to_string())
        .arg("1000")
        .arg(START_NS.to_string())
        .spawn()
        .unwrap();
    let instance = |i: usize| {
        let d = dir.path().join(format!("c{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let text = format!(
            r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
[admin]
enabled = false
[sources.kafka]
type = "kafka"
brokers = "127.0.0.1:{port}"
group_id = "storage"
topics = ["plant.telemetry"]
client_id = "consumer-{i}"
linger_ms = 10
[sources.kafka.properties]
"session.timeout.ms" = "6000"
"max.poll.interval.ms" = "10000"
[sinks.files]
type = "file"
path = "samples.jsonl"
"#,
            port = k.port
        );
        (d.clone(), load(&d, &text))
    };
    let (d0, c0) = instance(0);
    let (d1, c1) = instance(1);
    let a = runtime::start(&c0).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A second member joins mid-stream: the group rebalances.
    let b = runtime::start(&c1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.handle.status().produced["kafka"] == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a_mid = a.handle.status().produced["kafka"];
    let b_mid = b.handle.status().produced["kafka"];
    // The first member leaves mid-stream: its partitions move to the second.
    a.handle.stop();
    a.wait().await.unwrap();
    assert!(producer.wait().unwrap().success(), "producer failed");
    let expected: HashSet<(String, u64)> = (0..n)
        .map(|i| {
            (
                format!("plant/site1/area1/line1/dev{}/flow", i % 20),
                START_NS + i,
            )
        })
        .collect();
    let keys = |d: &Path| -> Vec<(String, u64)> {
        ferrule_tests::read_jsonl(&d.join("samples.jsonl"))
            .iter()
            .map(|v| {
                (
                    v["vendor_path"].as_str().unwrap().to_string(),
                    v["ts_ns"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<(String, u64)> = keys(&d0).into_iter().chain(keys(&d1)).collect();
        if got.len() >= expected.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} samples arrived",
            got.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.handle.stop();
    b.wait().await.unwrap();
    let all: Vec<(String, u64)> = keys(&d0).into_iter().chain(keys(&d1)).collect();
    let got: HashSet<(String, u64)> = all.iter().cloned().collect();
    assert_eq!(got, expected, "samples lost or invented");
    eprintln!(
        "consumer group: {} samples, {} re-read after rebalances; mid-stream A {a_mid}, B {b_mid}",
        n,
        all.len() - got.len()
    );
    assert!(
        a_mid > 0 && b_mid > 0,
        "both members consumed: {a_mid} {b_mid}"
    );
}
