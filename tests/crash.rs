//! kill -9 of the host mid-stream, per delivery path, counted by an independent reader
//! (`ferrule_tests::crash`): a feed sends QoS 1 MQTT messages or Kafka records while the
//! `ferrule` binary is SIGKILLed a few times at pseudo-random moments and restarted, then
//! stopped with SIGINT. Every sample the upstream acknowledged must be at the destination;
//! PostgreSQL rows exactly once; Parquet without the host's own replays, so its duplicates are
//! only what the upstream redelivered, bounded by its unacknowledged window per kill; the file
//! sink and Kafka at least once (their duplicates are printed). `cargo run -p ferrule-tests --bin chaos` runs the same with 100
//! kills per path.

use ferrule_tests::crash::{self, Options, Report};

/// One path at a time: five hosts, brokers and readers at once would crowd two cores and
/// stretch the recovery times they measure.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 3 kills (2 for the Kafka source, whose group rejoin makes each restart slower) over a
/// feed of at least 3 000 messages at 1 000/s.
fn options(kills: u32) -> Options {
    let mut o = Options::new(kills, 3_000);
    o.verbose = true;
    o
}

fn check(r: &Report) {
    eprintln!("{r}");
    assert!(r.sent > 0, "nothing was fed");
    assert_eq!(
        r.lost, 0,
        "{} of {} acknowledged samples lost: {r}",
        r.lost, r.sent
    );
    assert_eq!(r.corrupt, 0, "unreadable lines: {r}");
    assert_eq!(r.dead_letters, 0, "dead-letters: {r}");
    assert_eq!(r.exit, Ok(()), "the clean stop: {r}");
    assert_eq!(r.unrecovered, 0, "a restart delivered nothing: {r}");
    match r.path.duplicates_per_kill() {
        Some(0) => assert_eq!(r.duplicates, 0, "exactly once promised: {r}"),
        Some(bound) => assert!(
            r.duplicates <= bound * r.kills as u64,
            "more duplicates than the upstream's unacknowledged window per kill ({bound}): {r}"
        ),
        None => eprintln!("{}: {} duplicates (at-least-once)", r.path, r.duplicates),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_file_loses_no_acknowledged_sample_across_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    check(&crash::mqtt_file(&options(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_parquet_holds_every_acknowledged_sample_across_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    check(&crash::mqtt_parquet(&options(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_kafka_loses_no_acknowledged_sample_across_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    check(&crash::mqtt_kafka(&options(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_postgres_holds_every_acknowledged_record_once_across_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    check(&crash::kafka_postgres(&options(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_parquet_holds_every_acknowledged_record_across_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    check(&crash::kafka_parquet(&options(2)).await);
}

fn signal_peer(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// The edge path: a Modbus TCP device (pymodbus) polled every 20 ms → the MQTT sink's durable
/// buffer → Mosquitto, with the host SIGKILLed three times, each time while the broker is stalled. A polled source cannot be asked
/// again, so "acknowledged" here means committed to the buffer: after each kill the test opens
/// the buffer file itself and notes every sample still in it (committed, not yet confirmed by
/// the broker); an independent MQTT subscriber, connected throughout, must receive every one
/// of them once the host is back, and everything else the host committed. Duplicates (a
/// publish the broker confirmed just before the kill) are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_to_mqtt_delivers_every_buffered_sample_across_kill_9() {
    use std::collections::{HashMap, HashSet};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use ferrule::buffer::{BufferConfig, DurableBuffer};
    use ferrule_tests::mqtt::{samples_of, Collector};
    use ferrule_tests::peers::{free_port, mosquitto, python, Peer};

    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "max_queued_messages 0\n");
    let reader = Collector::start(broker.port, "edge-reader", &["plant/#"], true).await;
    const REGISTERS: u16 = 20;
    let holding: Vec<serde_json::Value> = (0..REGISTERS)
        .map(|a| serde_json::json!({"address": a, "type": "u16", "value": 100 + a}))
        .collect();
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        serde_json::json!({"unit": 1, "holding": holding}).to_string(),
    )
    .unwrap();
    let plc_port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(ferrule_tests::repo_root().join("tests/peers/modbus_server.py"))
        .arg(plc_port.to_string())
        .arg(&spec)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _plc = Peer::start(cmd, plc_port);

    let mut config = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
[admin]
enabled = false
[dead_letter]
type = "file"
path = "dead.jsonl"
[sources.plc]
type = "modbus"
[[sources.plc.devices]]
name = "press"
host = "127.0.0.1"
port = {plc_port}
interval_ms = 20
reconnect_min_ms = 50
reconnect_max_ms = 200
[sinks.uplink]
type = "mqtt"
[sinks.uplink.broker]
port = {broker}
client_id = "edge-uplink"
[sinks.uplink.buffer]
path = "uplink.redb"
"#,
        broker = broker.port
    );
    for a in 0..REGISTERS {
        config.push_str(&format!(
            "[[sources.plc.devices.registers]]\ntag = \"plant/site1/area1/line1/press1/r{a}\"\naddress = {a}\ntype = \"u16\"\n"
        ));
    }
    let config_path = dir.path().join("edge.toml");
    std::fs::write(&config_path, config).unwrap();
    let spawn = || {
        Command::new(ferrule_tests::ferrule_bin())
            .arg("run")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let received = |reader: &Collector| -> HashMap<(String, u64), u64> {
        let mut seen = HashMap::new();
        for m in reader.snapshot() {
            for (_, _, ts) in samples_of(&m.payload) {
                *seen.entry((m.topic.clone(), ts)).or_insert(0) += 1;
            }
        }
        seen
    };
    // Every sample found in the buffer after a kill: committed, so it must arrive.
    let mut committed: HashSet<(String, u64)> = HashSet::new();
    let mut run_for = [700u64, 1300, 400].into_iter();
    for kill in 1..=3 {
        let mut host = spawn();
        let before = reader.snapshot().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while reader.snapshot().len() <= before {
            assert!(
                Instant::now() < deadline,
                "start {kill}: nothing reached the broker within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(run_for.next().unwrap())).await;
        // The broker stalls (a slow link) so the buffer holds unconfirmed samples when the
        // host dies; it comes back after the kill.
        signal_peer(broker.pid(), "STOP");
        tokio::time::sleep(Duration::from_millis(500)).await;
        host.kill().unwrap();
        host.wait().unwrap();
        signal_peer(broker.pid(), "CONT");
        let buffer = DurableBuffer::open(
            "uplink",
            &dir.path().join("uplink.redb"),
            &BufferConfig::default(),
        )
        .unwrap();
        let mut in_buffer = 0;
        for r in buffer.read_from(0, usize::MAX).unwrap() {
            let s = &r.batch.samples;
            for (i, id) in s.tag_ids.iter().enumerate() {
                let tag = r.batch.tags.get(*id as usize).cloned().flatten();
                let tag = tag.expect("a buffered sample's tag is in its table");
                committed.insert((tag.path.to_string(), s.timestamps[i]));
                in_buffer += 1;
            }
        }
        drop(buffer);
        eprintln!("kill {kill}: {in_buffer} samples were in the buffer");
    }
    // The last run: stop cleanly once everything committed before has arrived.
    let mut host = spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = received(&reader);
        let missing = committed.iter().filter(|k| !seen.contains_key(*k)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} samples committed to the buffer before a kill never arrived",
            committed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-INT", &host.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || host.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "clean stop: {status}");
    // After a clean stop the buffer is empty: everything committed was confirmed.
    let buffer = DurableBuffer::open(
        "uplink",
        &dir.path().join("uplink.redb"),
        &BufferConfig::default(),
    )
    .unwrap();
    assert_eq!(
        buffer.depth().1,
        0,
        "samples left in the buffer after a clean stop"
    );
    drop(buffer);
    let seen = received(&reader);
    let duplicates: u64 = seen.values().map(|n| n - 1).sum();
    let values_ok = reader.snapshot().iter().all(|m| {
        let r: u64 = m.topic.rsplit('r').next().unwrap().parse().unwrap();
        samples_of(&m.payload)
            .iter()
            .all(|(v, _, _)| *v == Some((100 + r) as f64))
    });
    eprintln!(
        "modbus-mqtt: 3 kills, {} samples committed before a kill (all arrived), {} distinct \
         received, {duplicates} duplicates",
        committed.len(),
        seen.len()
    );
    assert!(values_ok, "a value arrived changed");
    assert!(
        !committed.is_empty(),
        "no kill caught samples in the buffer: the test proved nothing"
    );
}
