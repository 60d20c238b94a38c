//! MQTT northbound and bridge input against a real Mosquitto on a free port: the topic spec
//! and payload read back by an independent subscriber, birth/death status, dead-letters for
//! paths off the spec and malformed messages, shared subscriptions, a broker outage with
//! nothing lost and per-tag order kept, the buffer's overflow policies, and the host killed
//! with SIGKILL twenty times while every acknowledged sample still arrives.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::runtime;
use ferrule_tests::mqtt::{publish_all, samples_of, Collector, Received};
use ferrule_tests::peers::{self, mosquitto, mosquitto_on};
use ferrule_tests::{read_jsonl, reference_stages_toml, repo_root};

const START_NS: u64 = 1_700_000_000_000_000_000;

fn load(dir: &Path, text: &str) -> HostConfig {
    HostConfig::from_text(text, dir).unwrap_or_else(|e| panic!("{e:?}"))
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

/// (topic, ts_ns) → count, over every sample in the messages.
fn sample_keys(msgs: &[Received]) -> HashMap<(String, u64), usize> {
    let mut m = HashMap::new();
    for r in msgs.iter().filter(|r| r.topic.starts_with("plant/")) {
        for (_, _, ts) in samples_of(&r.payload) {
            *m.entry((r.topic.clone(), ts)).or_insert(0) += 1;
        }
    }
    m
}

fn count_samples(msgs: &[Received]) -> usize {
    msgs.iter()
        .filter(|r| r.topic.starts_with("plant/"))
        .map(|r| samples_of(&r.payload).len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_topic_spec_and_payload_with_birth_and_death() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "");
    let sub = Collector::start(broker.port, "test-sub", &["plant/#", "ferrule/#"], false).await;
    let text = format!(
        r#"{common}
[sources.plant]
type = "simulator"
tags = 120
scans = 5
interval_ms = 0
start_ns = {START_NS}

{stages}

[sinks.samples]
type = "file"
path = "samples.jsonl"

[sinks.uplink]
type = "mqtt"
message_expiry_s = 600
[sinks.uplink.broker]
port = {port}
client_id = "edge-1"
"#,
        common = common(dir.path()),
        stages = reference_stages_toml(),
        port = broker.port,
    );
    let config = load(dir.path(), &text);
    let status = runtime::start(&config).await.unwrap().wait().await.unwrap();
    let file = read_jsonl(&dir.path().join("samples.jsonl"));
    assert_eq!(status.written["uplink"], file.len() as u64);
    assert!(
        file.len() > 500,
        "only {} samples passed the chain",
        file.len()
    );

    // Every sample in the file sink arrived once on its tag's topic, with the same fields.
    sub.wait_for(Duration::from_secs(20), "every sample", |m| {
        count_samples(m) >= file.len()
    })
    .await;
    let msgs = sub.snapshot();
    let keys = sample_keys(&msgs);
    assert_eq!(keys.len(), file.len());
    assert!(keys.values().all(|n| *n == 1), "a sample arrived twice");
    let by_key: HashMap<(String, u64), &serde_json::Value> = file
        .iter()
        .map(|v| {
            (
                (
                    v["path"].as_str().unwrap().to_string(),
                    v["ts_ns"].as_u64().unwrap(),
                ),
                v,
            )
        })
        .collect();
    for r in msgs.iter().filter(|r| r.topic.starts_with("plant/")) {
        assert_eq!(ferrule::mqtt::topic::spec_violation(&r.topic), None);
        assert_eq!(r.contract.as_deref(), Some("ferrule.sample.v1"));
        assert!(!r.retain);
        let expected = by_key[&(r.topic.clone(), r.payload["ts_ns"].as_u64().unwrap())];
        assert_eq!(r.payload["value"], expected["value"], "{}", r.topic);
        assert_eq!(r.payload["unit"], expected["unit"]);
        assert_eq!(r.payload["quality"], expected["quality"]);
        assert_eq!(r.payload["status"], expected["status"]);
        assert_eq!(r.payload["vendor_path"], expected["vendor_path"]);
        assert_eq!(r.payload["meta"], expected["meta"]);
    }
    // Birth on connect, `offline` (retained) on a clean shutdown.
    sub.wait_for(Duration::from_secs(5), "the offline status", |m| {
        m.iter()
            .any(|r| r.topic == "ferrule/edge-1/status" && r.payload["state"] == "offline")
    })
    .await;
    let states: Vec<String> = sub
        .snapshot()
        .iter()
        .filter(|r| r.topic == "ferrule/edge-1/status")
        .map(|r| r.payload["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["online", "offline"]);
    // The buffer is empty after delivery.
    let buffer = status.sinks["uplink"].buffer.clone().unwrap();
    assert_eq!(buffer.depth_samples, 0);
    assert_eq!(buffer.delivered_samples, file.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_will_announces_a_lost_connection_and_paths_off_the_spec_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "");
    let sub = Collector::start(broker.port, "test-sub", &["#"], false).await;
    // No stages: paths stay the simulator's vendor paths, which are not topics.
    let bin = ferrule_bin();
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            r#"{common}
[sources.plant]
type = "simulator"
tags = 12
interval_ms = 100

[sinks.uplink]
type = "mqtt"
[sinks.uplink.broker]
port = {port}
client_id = "edge-will"
keep_alive_s = 5
"#,
            common = common(dir.path()),
            port = broker.port
        ),
    )
    .unwrap();
    let mut child = Command::new(&bin)
        .arg("run")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sub.wait_for(Duration::from_secs(30), "birth", |m| {
        m.iter()
            .any(|r| r.topic == "ferrule/edge-will/status" && r.payload["state"] == "online")
    })
    .await;
    let dead = dir.path().join("dead-letter.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_jsonl(&dead).len() < 24 {
        assert!(Instant::now() < deadline, "no dead-letters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    sub.wait_for(Duration::from_secs(20), "the last will", |m| {
        m.iter().any(|r| {
            r.topic == "ferrule/edge-will/status" && r.payload["reason"] == "connection-lost"
        })
    })
    .await;
    assert_eq!(
        sub.snapshot()
            .iter()
            .filter(|r| r.topic.starts_with("Site"))
            .count(),
        0,
        "published a topic off the spec"
    );
    let letters = read_jsonl(&dead);
    for l in &letters {
        assert_eq!(l["reason"], "topic-spec");
        assert_eq!(l["stage"], "sink.uplink");
        assert!(
            l["detail"].as_str().unwrap().contains("levels"),
            "{}",
            l["detail"]
        );
    }
}

use ferrule_tests::ferrule_bin;

fn payload(value: f64, ts: u64) -> Vec<u8> {
    format!("{{\"value\":{value},\"unit\":\"bar\",\"quality\":\"good\",\"ts_ns\":{ts}}}")
        .into_bytes()
}

fn source_config(dir: &Path, port: u16, topics: &str, client: &str, out: &str) -> String {
    format!(
        r#"{common}
[sources.bridge]
type = "mqtt"
topics = [{topics}]
linger_ms = 10
[sources.bridge.broker]
port = {port}
client_id = "{client}"

[sinks.samples]
type = "file"
path = "{out}"
"#,
        common = common(dir)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_source_takes_good_messages_and_dead_letters_bad_ones_with_topic_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "");
    let config = load(
        dir.path(),
        &source_config(
            dir.path(),
            broker.port,
            "\"plant/#\"",
            "bridge-1",
            "samples.jsonl",
        ),
    );
    let running = runtime::start(&config).await.unwrap();
    let handle = running.handle.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let good = "plant/site1/area1/line1/press1/pressure";
    let mut msgs = vec![
        (good.to_string(), payload(1.5, 10)),
        (
            good.to_string(),
            br#"{"unit":"bar","samples":[{"value":2.5,"ts_ns":11},{"value":null,"status":2152071168,"ts_ns":12}]}"#.to_vec(),
        ),
        (good.to_string(), b"{not json".to_vec()),
        (good.to_string(), br#"{"value":"3.5","ts_ns":13}"#.to_vec()),
        (good.to_string(), br#"{"value":3.5}"#.to_vec()),
        ("plant/site1/Area1/line1/press1/pressure".to_string(), payload(4.5, 14)),
        ("plant/site1/area1/line1/press1".to_string(), payload(5.5, 15)),
    ];
    let mut big = br#"{"value":1,"ts_ns":16,"unit":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 300 * 1024));
    big.extend(br#""}"#);
    msgs.push((good.to_string(), big));
    publish_all(broker.port, "test-pub", msgs).await;

    let dead_path = dir.path().join("dead-letter.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_jsonl(&dead_path).len() < 6
        || read_jsonl(&dir.path().join("samples.jsonl")).len() < 3
    {
        assert!(Instant::now() < deadline, "messages did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop();
    running.wait().await.unwrap();

    let samples = read_jsonl(&dir.path().join("samples.jsonl"));
    let got: Vec<(u64, serde_json::Value, u64)> = samples
        .iter()
        .map(|s| {
            assert_eq!(s["vendor_path"], good);
            assert_eq!(s["unit"], "bar");
            (
                s["ts_ns"].as_u64().unwrap(),
                s["value"].clone(),
                s["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (10, serde_json::json!(1.5), 0),
            (11, serde_json::json!(2.5), 0),
            (12, serde_json::Value::Null, 0x8046_0000),
        ]
    );
    let dead = read_jsonl(&dead_path);
    let reasons: BTreeMap<String, String> = dead
        .iter()
        .map(|d| {
            assert_eq!(d["stage"], "source.bridge");
            (
                format!(
                    "{} {}",
                    d["path"].as_str().unwrap(),
                    d["reason"].as_str().unwrap()
                ),
                d["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = [
        (format!("{good} malformed-json"), ""),
        (format!("{good} oversize"), "limit"),
        (
            "plant/site1/Area1/line1/press1/pressure topic-spec".to_string(),
            "uppercase",
        ),
        (
            "plant/site1/area1/line1/press1 topic-spec".to_string(),
            "5 levels",
        ),
    ];
    for (key, says) in expect {
        let detail = reasons
            .get(&key)
            .unwrap_or_else(|| panic!("no dead-letter {key}: {reasons:?}"));
        assert!(detail.contains(says), "{key}: {detail}");
    }
    // Both schema failures (a string value, a missing ts_ns) are there, each named.
    let mut schema: Vec<&str> = dead
        .iter()
        .filter(|d| d["reason"] == "schema")
        .map(|d| d["detail"].as_str().unwrap())
        .collect();
    schema.sort();
    assert_eq!(schema.len(), 2, "{schema:?}");
    assert!(schema[0].starts_with("ts_ns: missing"), "{schema:?}");
    assert!(
        schema[1].starts_with("value: expected a number"),
        "{schema:?}"
    );
    // The original payload travels with the refusal.
    assert!(dead.iter().any(|d| d["extra"] == "{not json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_shared_subscription_split_the_messages_and_deliver_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "");
    let mut running = Vec::new();
    for i in 0..2 {
        let d = dir.path().join(format!("b{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let text = source_config(
            &d,
            broker.port,
            "\"$share/bridges/plant/#\"",
            &format!("bridge-{i}"),
            "samples.jsonl",
        );
        running.push((d.clone(), runtime::start(&load(&d, &text)).await.unwrap()));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let n = 2000u64;
    let msgs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("plant/site1/area1/line1/dev{}/flow", i % 20),
                payload(i as f64, START_NS + i),
            )
        })
        .collect();
    publish_all(broker.port, "test-pub", msgs).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let total: usize = running
            .iter()
            .map(|(d, _)| read_jsonl(&d.join("samples.jsonl")).len())
            .sum();
        if total >= n as usize {
            break;
        }
        assert!(Instant::now() < deadline, "{total} of {n} arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut all = HashSet::new();
    let mut per_instance = Vec::new();
    for (d, r) in running {
        r.handle.stop();
        r.wait().await.unwrap();
        let s = read_jsonl(&d.join("samples.jsonl"));
        per_instance.push(s.len());
        for v in s {
            assert!(
                all.insert(v["ts_ns"].as_u64().unwrap()),
                "delivered twice: {v}"
            );
        }
    }
    assert_eq!(all.len(), n as usize);
    assert!(
        per_instance.iter().all(|c| *c > 0),
        "one instance got nothing: {per_instance:?}"
    );
}

/// Checks that every (topic, ts) of `expected` arrived and that per topic the first
/// arrivals are in source-time order (redelivered duplicates are allowed).
fn assert_all_in_order(msgs: &[Received], expected: &HashSet<(String, u64)>) {
    let mut first_seen: HashMap<String, Vec<u64>> = HashMap::new();
    let mut seen = HashSet::new();
    for r in msgs.iter().filter(|r| r.topic.starts_with("plant/")) {
        for (_, _, ts) in samples_of(&r.payload) {
            if seen.insert((r.topic.clone(), ts)) {
                first_seen.entry(r.topic.clone()).or_default().push(ts);
            }
        }
    }
    let missing: Vec<_> = expected.difference(&seen).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} samples never arrived, e.g. {missing:?}",
        expected.difference(&seen).count(),
        expected.len()
    );
    for (topic, ts) in first_seen {
        assert!(
            ts.windows(2).all(|w| w[0] < w[1]),
            "{topic}: out of order: {ts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_and_keeps_per_tag_order() {
    let dir = tempfile::tempdir().unwrap();
    let persist = format!(
        "persistence true\npersistence_location {}/\nmax_queued_messages 0\n",
        dir.path().display()
    );
    let mut broker = mosquitto(dir.path(), &persist);
    let port = broker.port;
    let sub = Collector::start(port, "test-sub", &["plant/#"], true).await;
    let text = format!(
        r#"{common}
[sources.plant]
type = "simulator"
tags = 60
scans = 60
interval_ms = 50
start_ns = {START_NS}

{stages}

[sinks.samples]
type = "file"
path = "samples.jsonl"

[sinks.uplink]
type = "mqtt"
max_inflight = 32
[sinks.uplink.broker]
port = {port}
keep_alive_s = 5
"#,
        common = common(dir.path()),
        stages = reference_stages_toml(),
    );
    let running = runtime::start(&load(dir.path(), &text)).await.unwrap();
    let handle = running.handle.clone();
    // Let it publish, then stop the broker (SIGTERM: it saves the subscriber's queue).
    tokio::time::sleep(Duration::from_millis(700)).await;
    unsafe_terminate(broker.pid());
    let _ = broker.child.wait();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = handle.status().sinks["uplink"].clone();
    assert_eq!(during.connected, Some(false));
    assert!(
        during.buffer.as_ref().unwrap().depth_samples > 0,
        "nothing buffered during the outage: {during:?}"
    );
    let _broker = mosquitto_on(dir.path(), port, &persist);
    let status = running.wait().await.unwrap();
    let file = read_jsonl(&dir.path().join("samples.jsonl"));
    let expected: HashSet<(String, u64)> = file
        .iter()
        .map(|v| {
            (
                v["path"].as_str().unwrap().to_string(),
                v["ts_ns"].as_u64().unwrap(),
            )
        })
        .collect();
    // Generous: the sink reconnects with backoff up to 10 s, slower on a loaded machine.
    sub.wait_for(
        Duration::from_secs(60),
        "every sample after the outage",
        |m| sample_keys(m).len() >= expected.len(),
    )
    .await;
    assert_all_in_order(&sub.snapshot(), &expected);
    let uplink = &status.sinks["uplink"];
    assert!(uplink.reconnects >= 1);
    assert_eq!(uplink.buffer.as_ref().unwrap().depth_samples, 0);
    assert_eq!(uplink.buffer.as_ref().unwrap().dropped_overflow, 0);
}

fn unsafe_terminate(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_drop_oldest_counts_what_it_drops_and_refuse_new_holds_the_pipeline_back() {
    let dir = tempfile::tempdir().unwrap();
    // A port where nothing listens: the broker is unreachable throughout.
    let port = peers::free_port();
    let config = |policy: &str, scans: u64| {
        format!(
            r#"{common}
[sources.plant]
type = "simulator"
tags = 1000
scans = {scans}
interval_ms = 0
batch_size = 1000

{stages}

[sinks.uplink]
type = "mqtt"
drain_timeout_ms = 200
[sinks.uplink.broker]
port = {port}
[sinks.uplink.buffer]
path = "{policy}.redb"
max_bytes = 131072
overflow = "{policy}"
"#,
            common = common(dir.path()),
            stages = reference_stages_toml(),
        )
    };
    // drop-oldest: the run completes; the buffer stays under its limit and counts the rest.
    let status = runtime::start(&load(dir.path(), &config("drop-oldest", 30)))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let b = status.sinks["uplink"].buffer.clone().unwrap();
    assert!(b.depth_bytes <= 131072, "{b:?}");
    assert!(b.dropped_overflow > 0, "{b:?}");
    // Everything that passed the chain was appended; dropped + still buffered = appended.
    assert_eq!(
        b.appended_samples,
        status.produced["plant"] - status.dead_letters,
        "{status:?}"
    );
    assert!(b.appended_samples > 29_000);
    assert_eq!(
        b.dropped_overflow + b.depth_samples,
        b.appended_samples,
        "{b:?}"
    );
    assert_eq!(b.delivered_samples, 0);

    // refuse-new: nothing is dropped; the source is held back once the buffer is full.
    let running = runtime::start(&load(dir.path(), &config("refuse-new", 1_000_000)))
        .await
        .unwrap();
    let handle = running.handle.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s1 = handle.status();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s2 = handle.status();
    let b = s2.sinks["uplink"].buffer.clone().unwrap();
    assert_eq!(b.dropped_overflow, 0);
    assert!(b.full_waits > 0, "{b:?}");
    assert!(b.depth_bytes <= 131072);
    assert_eq!(
        s1.produced["plant"], s2.produced["plant"],
        "the source kept producing into a full buffer"
    );
    assert!(s2.produced["plant"] < 20_000, "{:?}", s2.produced);
    handle.stop();
    drop(running);
}

/// The host killed with SIGKILL at random points, twenty times, while a publisher keeps
/// sending QoS 1 messages upstream: every message the upstream broker saw acknowledged
/// reaches the downstream subscriber (duplicates allowed, losses not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twenty_times_loses_no_acknowledged_sample() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = mosquitto(
        dir.path(),
        "max_queued_messages 0\nmax_inflight_messages 0\n",
    );
    let downstream = mosquitto(dir.path(), "max_queued_messages 0\n");
    let sub = Collector::start(downstream.port, "test-sub", &["plant/#"], true).await;
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"{common}
[sources.edge]
type = "mqtt"
topics = ["plant/#"]
linger_ms = 5
[sources.edge.broker]
port = {up}
client_id = "kill-test-in"

[sinks.uplink]
type = "mqtt"
max_inflight = 64
[sinks.uplink.broker]
port = {down}
client_id = "kill-test-out"
"#,
            common = common(dir.path()),
            up = upstream.port,
            down = downstream.port
        ),
    )
    .unwrap();
    let bin = ferrule_bin();
    let start = || {
        Command::new(&bin)
            .arg("run")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // The first start creates the persistent upstream session.
    let mut child = start();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let n: u64 = 20_000;
    let expected: HashSet<(String, u64)> = (0..n)
        .map(|i| {
            (
                format!("plant/site1/area1/line{}/dev{}/flow", i % 3, i % 50),
                START_NS + i,
            )
        })
        .collect();
    let msgs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("plant/site1/area1/line{}/dev{}/flow", i % 3, i % 50),
                payload(i as f64, START_NS + i),
            )
        })
        .collect();
    let publisher = tokio::spawn({
        let port = upstream.port;
        async move {
            for chunk in msgs.chunks(500) {
                publish_all(port, "test-pub", chunk.to_vec()).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_ms = 150 + seed % 450;
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = start();
    }
    publisher.await.unwrap();
    sub.wait_for(Duration::from_secs(60), "every acknowledged sample", |m| {
        sample_keys(m).len() >= expected.len()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let msgs = sub.snapshot();
    let keys = sample_keys(&msgs);
    let missing = expected.iter().filter(|k| !keys.contains_key(*k)).count();
    assert_eq!(missing, 0, "{missing} acknowledged samples lost");
    let duplicates: usize = keys.values().map(|c| c - 1).sum();
    eprintln!(
        "sigkill x20: {} samples, {} duplicates (at-least-once)",
        expected.len(),
        duplicates
    );
}

fn sh(cmd: &str, dir: &Path) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "failed: {cmd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_tls_with_a_password_and_a_wrong_password_gets_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA, a server certificate for 127.0.0.1 signed by it, a password file.
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=ferrule-test-ca", d);
    sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1", d);
    sh("printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile san.ext", d);
    sh("mosquitto_passwd -b -c passwd edge s3cret", d);
    // Mosquitto started as root drops to its own user, which must read these.
    sh("chmod 755 . && chmod 644 *", d);
    let (tls_port, plain_port) = (peers::free_port(), peers::free_port());
    let conf = d.join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings true\n\
             listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             allow_anonymous false\npassword_file {d}/passwd\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\n",
            d = d.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(peers::mosquitto_binary());
    cmd.arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _broker = peers::Peer::start(cmd, plain_port);
    peers::wait_for_port(tls_port, Duration::from_secs(10));
    let sub = Collector::start(plain_port, "test-sub", &["plant/#"], false).await;

    let config = |password: &str, name: &str| {
        format!(
            r#"{common}
[sources.plant]
type = "simulator"
tags = 60
scans = 3
interval_ms = 0

{stages}

[sinks.uplink]
type = "mqtt"
drain_timeout_ms = 1500
[sinks.uplink.broker]
port = {tls_port}
client_id = "{name}"
username = "edge"
password = "{password}"
[sinks.uplink.broker.tls]
ca_file = "ca.pem"
[sinks.uplink.buffer]
path = "{name}.redb"
"#,
            common = common(d),
            stages = reference_stages_toml(),
        )
    };
    let status = runtime::start(&load(d, &config("s3cret", "good")))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let sent = status.written["uplink"];
    assert!(sent > 100, "{status:?}");
    sub.wait_for(Duration::from_secs(10), "samples over TLS", |m| {
        count_samples(m) as u64 >= sent
    })
    .await;

    // A wrong password: nothing delivered, everything stays buffered for the next start.
    let status = runtime::start(&load(d, &config("wrong", "bad")))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let uplink = &status.sinks["uplink"];
    assert_eq!(uplink.written, 0);
    assert_eq!(uplink.connected, Some(false));
    let buffered = uplink.buffer.as_ref().unwrap().depth_samples;
    assert!(buffered > 100, "{uplink:?}");
    assert_eq!(count_samples(&sub.snapshot()) as u64, sent);
}
