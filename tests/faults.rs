//! Delivery guarantees under faults, against real peers, counted by an independent reader:
//! - Parquet after `kill -9`: every sample the broker saw acknowledged is in the Parquet files
//!   (read back by DuckDB), duplicates bounded by the broker's redelivery window;
//! - a poison record for PostgreSQL (a NUL character; a value a CHECK constraint refuses) is
//!   dead-lettered by the sink alone, and every good row lands;
//! - `/ready` answers 503 naming the sink while it is stuck, and 200 again once it recovers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferrule::config::HostConfig;
use ferrule::runtime;
use ferrule_tests::mqtt::publish_all;
use ferrule_tests::peers::{self, mosquitto};
use ferrule_tests::storage::TestDatabase;
use ferrule_tests::{ferrule_bin, read_jsonl};

const START_NS: u64 = 1_700_000_000_000_000_000;

/// The `ferrule` binary running `config` in `dir` (quiet), with `env` set.
fn spawn_host(config: &Path, dir: &Path, env: &[(&str, &str)]) -> std::process::Child {
    Command::new(ferrule_bin())
        .arg("run")
        .arg(config)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The head of a test host config: no watcher or progress line, no admin endpoint, a file
/// dead-letter (`dead.jsonl`), and an MQTT source `edge` on `plant/#` at the broker on `port`.
fn mqtt_edge(port: u16, client_id: &str, pipeline_extra: &str, source_extra: &str) -> String {
    format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
{pipeline_extra}
[admin]
enabled = false
[dead_letter]
type = "file"
path = "dead.jsonl"
[sources.edge]
type = "mqtt"
topics = ["plant/#"]
linger_ms = 5
{source_extra}
[sources.edge.broker]
port = {port}
client_id = "{client_id}"
"#
    )
}

fn payload(value: f64, unit: &str, ts: u64) -> Vec<u8> {
    serde_json::json!({"value": value, "unit": unit, "quality": "good", "ts_ns": ts})
        .to_string()
        .into_bytes()
}

fn topic(i: u64) -> String {
    format!("plant/site1/area1/line{}/dev{}/flow", i % 3, i % 50)
}

/// (rows, distinct (tag, time)) in the Parquet files under `dir`, read by DuckDB.
fn parquet_counts(dir: &Path) -> (u64, u64) {
    let glob = format!("{}/**/*.parquet", dir.display());
    let out = Command::new(peers::python())
        .arg("-c")
        .arg(
            "import duckdb,sys; r = duckdb.sql(\"SELECT count(*), count(DISTINCT (tag, time)) \
             FROM read_parquet('\" + sys.argv[1] + \"')\").fetchall()[0]; print(r[0], r[1])",
        )
        .arg(&glob)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut n = text.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

/// MQTT (QoS 1) → Parquet with the default settings, 10 000 messages acknowledged by the
/// broker while the host is killed with SIGKILL twice mid-stream: after a clean restart and
/// stop, the Parquet files hold every sample (no loss); duplicate rows only from the broker's
/// redelivery of messages whose PUBACK the kill lost, never from the host's own replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_after_kill_9_holds_every_acknowledged_sample() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(
        dir.path(),
        "max_queued_messages 0\nmax_inflight_messages 0\n",
    );
    let warm = dir.path().join("warm");
    let config = dir.path().join("storage.toml");
    std::fs::write(
        &config,
        format!(
            r#"
{edge}
[sinks.warm]
type = "parquet"
directory = "{warm}"
max_file_bytes = 16384
row_group_rows = 500
"#,
            edge = mqtt_edge(broker.port, "kill-parquet-in", "", ""),
            warm = warm.display(),
        ),
    )
    .unwrap();
    let start = || spawn_host(&config, dir.path(), &[]);
    let mut child = start();
    // The first start creates the persistent session at the broker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n: u64 = 10_000;
    let msgs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (topic(i), payload(i as f64, "bar", START_NS + i * 1000)))
        .collect();
    let publisher = tokio::spawn({
        let port = broker.port;
        async move {
            for chunk in msgs.chunks(500) {
                publish_all(port, "kill-parquet-pub", chunk.to_vec()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    for wait_ms in [700, 900] {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = start();
    }
    publisher.await.unwrap();
    // Every message is acknowledged by the broker now. Let the host take them, then stop it
    // cleanly (it publishes its open files).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exited.success(), "host exit: {exited:?}");
    let (rows, distinct) = parquet_counts(&warm);
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    eprintln!(
        "parquet after kill -9 x2: {rows} rows, {distinct} distinct, {} dead-letters",
        dead.len()
    );
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(
        distinct,
        n,
        "{} acknowledged samples lost",
        n - distinct.min(n)
    );
    // The host's own replay adds none; the broker's redelivery of messages whose PUBACK was
    // lost in a kill may, at most the source's unacknowledged window (1 024) per kill.
    assert!(rows - n <= 2 * 1024, "{} duplicate rows", rows - n);
}

fn postgres_config(dir: &Path, broker_port: u16, connection: &str, extra: &str) -> HostConfig {
    let text = format!(
        r#"
{edge}
[sinks.hot]
type = "postgres"
connection = "{connection}"
{extra}
"#,
        edge = mqtt_edge(
            broker_port,
            &format!("pg-poison-in-{}", ferrule::model::now_ns()),
            "stall_after_s = 1",
            ""
        ),
    );
    HostConfig::from_text(&text, dir).unwrap_or_else(|e| panic!("{e:?}"))
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One message whose `unit` holds a NUL character, then 1 000 good ones: the sink dead-letters
/// that sample alone (with its name and the reason) and every good row lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dead_letters_a_nul_sample_and_the_good_rows_land() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "max_queued_messages 0\n");
    let db = TestDatabase::create("nul").await;
    let config = postgres_config(dir.path(), broker.port, &db.connection(), "");
    let running = runtime::start(&config).await.unwrap();
    let handle = running.handle.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A tag's unit is part of the tag: the poisoned one has a topic of its own.
    let poisoned = "plant/site1/area1/line9/dev99/flow".to_string();
    let mut msgs = vec![(poisoned, payload(1.0, "ba\u{0}r", START_NS))];
    msgs.extend((1..=1000u64).map(|i| (topic(i), payload(i as f64, "bar", START_NS + i * 1000))));
    publish_all(broker.port, "pg-poison-pub", msgs).await;
    wait_until(
        "1 000 rows and one dead-letter",
        Duration::from_secs(30),
        || {
            let s = handle.status();
            s.written["hot"] >= 1000 && s.dead_letters >= 1
        },
    )
    .await;
    assert_eq!(db.count("ferrule_samples").await, 1000);
    let health = &handle.status().sinks["hot"].health;
    assert_eq!(health.refused_samples, 1);
    assert_eq!(health.error, None, "not retrying: {health:?}");
    handle.stop();
    running.wait().await.unwrap();
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "sink.hot");
    assert_eq!(dead[0]["reason"], "postgres-data-error");
    assert!(
        dead[0]["detail"].as_str().unwrap().contains("NUL"),
        "{}",
        dead[0]
    );
    assert_eq!(dead[0]["timestamp_ns"], START_NS);
}

/// A table with a CHECK constraint the plant added: three values it refuses among 1 000. The
/// sink bisects the refused batch, dead-letters exactly those three with the server's message
/// and commits the 997 others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bisects_a_refused_batch_to_the_offending_rows() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "max_queued_messages 0\n");
    let db = TestDatabase::create("check").await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "{}; ALTER TABLE ferrule_samples ADD CONSTRAINT plausible CHECK (value_double < 1e6)",
            ferrule::sinks::postgres::create_table_sql("ferrule_samples")
        ))
        .await
        .unwrap();
    let config = postgres_config(dir.path(), broker.port, &db.connection(), "");
    let running = runtime::start(&config).await.unwrap();
    let handle = running.handle.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bad = [17u64, 500, 999];
    let msgs: Vec<(String, Vec<u8>)> = (0..1000u64)
        .map(|i| {
            let v = if bad.contains(&i) { 5e6 } else { i as f64 };
            (topic(i), payload(v, "bar", START_NS + i * 1000))
        })
        .collect();
    publish_all(broker.port, "pg-check-pub", msgs).await;
    wait_until(
        "997 rows and three dead-letters",
        Duration::from_secs(30),
        || {
            let s = handle.status();
            s.written["hot"] >= 997 && s.dead_letters >= 3
        },
    )
    .await;
    handle.stop();
    running.wait().await.unwrap();
    assert_eq!(db.count("ferrule_samples").await, 997);
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    let mut times: Vec<u64> = dead
        .iter()
        .map(|d| {
            assert_eq!(d["reason"], "postgres-data-error");
            assert!(d["detail"].as_str().unwrap().contains("plausible"), "{d}");
            d["timestamp_ns"].as_u64().unwrap()
        })
        .collect();
    times.sort();
    assert_eq!(times, bad.map(|i| START_NS + i * 1000).to_vec());
}

/// A PostgreSQL sink whose database is unreachable: `/ready` answers 503 naming the sink and
/// why (retrying, then no progress for `stall_after_s`); once the database is there the rows
/// land and `/ready` answers 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_a_sink_is_stuck_and_200_after_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "max_queued_messages 0\n");
    let db = TestDatabase::create("stuck").await;
    // A proxy port that refuses connections until we point it at PostgreSQL.
    let port = peers::free_port();
    let connection = format!(
        "host=127.0.0.1 port={port} user=postgres dbname={}",
        db.name
    );
    let config = postgres_config(
        dir.path(),
        broker.port,
        &connection,
        "connect_timeout_s = 1",
    );
    let running = runtime::start(&config).await.unwrap();
    let handle = running.handle.clone();
    let (addr, _server) =
        ferrule::admin::serve("127.0.0.1:0".parse().unwrap(), handle.clone(), None)
            .await
            .unwrap();
    let ready = format!("http://{addr}/ready");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let msgs: Vec<(String, Vec<u8>)> = (0..200u64)
        .map(|i| (topic(i), payload(i as f64, "bar", START_NS + i * 1000)))
        .collect();
    publish_all(broker.port, "pg-stuck-pub", msgs).await;
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let body: serde_json::Value = loop {
        let r = http.get(&ready).send().await.unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        let reasons = body["reasons"].to_string();
        if status == 503 && reasons.contains("no progress") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("sink `hot`"), "{body}");
    let status = handle.status();
    assert!(status.sinks["hot"].health.retries > 0);
    assert!(status.sinks["hot"].health.error.is_some());
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sink_state{sink=\"hot\",state=\"stalled\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("sink_state"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The database comes: a relay from the port to PostgreSQL.
    let relay = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let relay_task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = relay.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    wait_until("the 200 rows", Duration::from_secs(30), || {
        handle.status().written["hot"] >= 200
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.get(&ready).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still not ready: {}",
            r.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(db.count("ferrule_samples").await, 200);
    handle.stop();
    running.wait().await.unwrap();
    relay_task.abort();
}

/// The downstream broker's ACL refuses one topic (PUBACK reason 0x87 NotAuthorized): the MQTT
/// sink dead-letters that topic's samples with the reason and delivers every other sample; it
/// does not reconnect and resend forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sink_dead_letters_what_the_broker_acl_refuses_and_delivers_the_rest() {
    use ferrule_tests::mqtt::{samples_of, Collector};
    let dir = tempfile::tempdir().unwrap();
    let upstream = mosquitto(dir.path(), "max_queued_messages 0\n");
    let acl = dir.path().join("acl");
    let secret = "plant/site1/area1/line9/dev9/secret";
    std::fs::write(
        &acl,
        format!("topic deny {secret}\ntopic readwrite plant/#\ntopic readwrite ferrule/#\n"),
    )
    .unwrap();
    // Default queue limits: Mosquitto 2.0.11 with `max_queued_messages 0` resets the
    // connection after it refuses a publish by ACL (and every later one of that client).
    let downstream = mosquitto(dir.path(), &format!("acl_file {}\n", acl.display()));
    let sub = Collector::start(downstream.port, "acl-sub", &["plant/#"], false).await;
    let text = format!(
        r#"
{edge}
[sinks.uplink]
type = "mqtt"
[sinks.uplink.broker]
port = {down}
client_id = "acl-out"
"#,
        edge = mqtt_edge(upstream.port, "acl-in", "", ""),
        down = downstream.port,
    );
    let config = HostConfig::from_text(&text, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let running = runtime::start(&config).await.unwrap();
    let handle = running.handle.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut msgs: Vec<(String, Vec<u8>)> = (0..1000u64)
        .map(|i| (topic(i), payload(i as f64, "bar", START_NS + i * 1000)))
        .collect();
    for k in 0..5u64 {
        msgs.insert(
            (k * 200) as usize,
            (
                secret.to_string(),
                payload(-1.0, "bar", START_NS + 7 + k * 1000),
            ),
        );
    }
    publish_all(upstream.port, "acl-pub", msgs).await;
    sub.wait_for(Duration::from_secs(30), "the 1 000 allowed samples", |m| {
        m.iter()
            .map(|r| samples_of(&r.payload).len())
            .sum::<usize>()
            >= 1000
    })
    .await;
    wait_until(
        "five dead-letters, 1 000 delivered, the buffer empty",
        Duration::from_secs(20),
        || {
            let s = handle.status();
            let uplink = &s.sinks["uplink"];
            s.dead_letters >= 5
                && uplink.written >= 1000
                && uplink.buffer.as_ref().is_some_and(|b| b.depth_samples == 0)
        },
    )
    .await;
    let status = handle.status();
    let sink = &status.sinks["uplink"];
    assert_eq!(sink.health.refused_samples, 5, "{sink:?}");
    assert_eq!(sink.written, 1000, "{sink:?}");
    handle.stop();
    running.wait().await.unwrap();
    let received = sub.snapshot();
    assert!(received.iter().all(|r| r.topic != secret));
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    assert_eq!(dead.len(), 5, "{dead:?}");
    for d in &dead {
        assert_eq!(d["stage"], "sink.uplink");
        assert_eq!(d["reason"], "broker-refused");
        assert_eq!(d["path"], secret);
        assert!(
            d["detail"].as_str().unwrap().contains("NotAuthorized"),
            "{d}"
        );
    }
}

/// A sink task that panics after writing a batch it had not flushed (a debug-build fault
/// hook): the host keeps running, the sink's runner is restarted in place on the same queue
/// (counted in `/metrics`), nothing of what the sink held was acknowledged, so the broker
/// redelivers it: every sample the broker saw acknowledged is in the file, without a restart of
/// the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_sink_is_restarted_in_place_and_loses_no_acknowledged_sample() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(
        dir.path(),
        "max_queued_messages 0\nmax_inflight_messages 0\n",
    );
    let admin_port = peers::free_port();
    let config = dir.path().join("panic.toml");
    let head = mqtt_edge(broker.port, "panic-in", "", "batch_size = 100").replace(
        "[admin]\nenabled = false",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""),
    );
    std::fs::write(
        &config,
        format!(
            r#"
{head}
[sinks.samples]
type = "file"
path = "samples.jsonl"
delay_ms = 20
"#,
        ),
    )
    .unwrap();
    let mut child = spawn_host(
        &config,
        dir.path(),
        &[("FERRULE_FAULT_SINK_PANIC", "samples:5")],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n: u64 = 3000;
    let msgs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (topic(i), payload(i as f64, "bar", START_NS + i * 1000)))
        .collect();
    publish_all(broker.port, "panic-pub", msgs).await;
    let samples = dir.path().join("samples.jsonl");
    wait_until(
        "every sample, the host still up",
        Duration::from_secs(60),
        || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the host stopped: a panicking sink must be restarted in place"
            );
            // Only whole lines: the sink may be writing the next one.
            let text = std::fs::read_to_string(&samples).unwrap_or_default();
            let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let distinct: std::collections::HashSet<(String, u64)> = whole
                .lines()
                .map(|l| sample_key(&serde_json::from_str(l).unwrap()))
                .collect();
            distinct.len() as u64 >= n
        },
    )
    .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        exited.success(),
        "the host should stop cleanly after Ctrl-C"
    );
    assert!(
        metrics.contains("sink_runner_restarts_total{sink=\"samples\"} 1"),
        "the restart is counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("restarts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let lines = read_jsonl(&samples);
    let distinct: std::collections::HashSet<(String, u64)> = lines.iter().map(sample_key).collect();
    eprintln!(
        "sink panic: {} lines, {} distinct, {} duplicates",
        lines.len(),
        distinct.len(),
        lines.len() - distinct.len()
    );
    assert_eq!(
        distinct.len() as u64,
        n,
        "{} acknowledged samples lost",
        n as usize - distinct.len()
    );
}

fn sample_key(l: &serde_json::Value) -> (String, u64) {
    (
        l["path"].as_str().unwrap().to_string(),
        l["ts_ns"].as_u64().unwrap(),
    )
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "mounting a tmpfs at {} needs root (the test command runs as root in CI)",
            at.display()
        );
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` until it refuses another byte; returns the filler file.
fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0xA5u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let small = vec![0xA5u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    filler
}

/// The MQTT sink's buffer on a disk that fills up while the broker downstream is unreachable:
/// the buffer cannot write, `/ready` says so, the source stops acknowledging (the upstream
/// broker keeps the messages); when space is freed the buffer reopens and writes again by
/// itself, and once the broker is back every sample the upstream broker acknowledged arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_the_stream_back_and_it_resumes_without_a_restart() {
    use ferrule_tests::mqtt::{samples_of, Collector};
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(dir.path().join("disk"), "4m");
    let upstream = mosquitto(
        dir.path(),
        "max_queued_messages 0\nmax_inflight_messages 0\n",
    );
    let downstream = mosquitto(dir.path(), "max_queued_messages 0\n");
    let sub = Collector::start(downstream.port, "disk-sub", &["plant/#"], true).await;
    // The downstream broker freezes: the sink cannot deliver, its buffer grows.
    let freeze = |sig: &str| {
        Command::new("kill")
            .args([sig, &downstream.pid().to_string()])
            .status()
            .unwrap()
    };
    freeze("-STOP");
    let text = format!(
        r#"
{edge}
[sinks.uplink]
type = "mqtt"
[sinks.uplink.broker]
port = {down}
client_id = "disk-out"
keep_alive_s = 5
[sinks.uplink.buffer]
path = "{buffer}"
"#,
        edge = mqtt_edge(upstream.port, "disk-in", "", ""),
        down = downstream.port,
        buffer = disk.0.join("uplink.redb").display(),
    );
    let config = HostConfig::from_text(&text, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let running = runtime::start(&config).await.unwrap();
    let handle = running.handle.clone();
    let (addr, _server) =
        ferrule::admin::serve("127.0.0.1:0".parse().unwrap(), handle.clone(), None)
            .await
            .unwrap();
    let filler = fill_disk(&disk.0);
    let n: u64 = 20_000;
    let msgs: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (topic(i), payload(i as f64, "bar", START_NS + i * 1000)))
        .collect();
    publish_all(upstream.port, "disk-pub", msgs).await;
    let http = reqwest::Client::new();
    let ready = format!("http://{addr}/ready");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let r = http.get(&ready).send().await.unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        if status == 503 && body["reasons"].to_string().contains("buffer cannot write") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("full disk: {body}");
    let held = handle.status();
    assert!(held.sinks["uplink"]
        .buffer
        .as_ref()
        .unwrap()
        .write_error
        .is_some());
    assert!(
        held.produced["edge"] < n,
        "the source must be held back: {:?}",
        held.produced
    );

    // Space again, then the broker back: no restart.
    std::fs::remove_file(&filler).unwrap();
    freeze("-CONT");
    sub.wait_for(Duration::from_secs(60), "every acknowledged sample", |m| {
        let keys: std::collections::HashSet<u64> = m
            .iter()
            .flat_map(|r| samples_of(&r.payload).into_iter().map(|(_, _, ts)| ts))
            .collect();
        keys.len() as u64 >= n
    })
    .await;
    let status = handle.status();
    let buffer = status.sinks["uplink"].buffer.clone().unwrap();
    assert_eq!(buffer.write_error, None);
    assert!(buffer.reopens >= 1, "{buffer:?}");
    handle.stop();
    running.wait().await.unwrap();
    let received = sub.snapshot();
    let all: Vec<u64> = received
        .iter()
        .flat_map(|r| samples_of(&r.payload).into_iter().map(|(_, _, ts)| ts))
        .collect();
    let distinct: std::collections::HashSet<u64> = all.iter().copied().collect();
    eprintln!(
        "full disk: {} samples received, {} distinct, {} duplicates, {} buffer reopens",
        all.len(),
        distinct.len(),
        all.len() - distinct.len(),
        buffer.reopens
    );
    assert_eq!(distinct.len() as u64, n);
    drop(disk);
}

/// A record over the producer's size limit (`message.max.bytes`) is refused by Kafka's client
/// for good: that sample alone is dead-lettered by the Kafka sink, every other one is in Kafka
/// (read back by confluent-kafka), and the sink does not retry it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_dead_letters_a_record_over_the_size_limit_and_the_rest_lands() {
    use ferrule_tests::kafka;
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto(dir.path(), "max_queued_messages 0\n");
    let k = kafka::tansu();
    kafka::create_topic(k.port, "plant.telemetry", 1);
    let text = format!(
        r#"
{edge}
[sinks.kafka]
type = "kafka"
brokers = "127.0.0.1:{kafka}"
linger_ms = 5
properties = {{ "message.max.bytes" = "4000" }}
[[sinks.kafka.routes]]
match = "plant/**"
topics = ["plant.telemetry"]
"#,
        edge = mqtt_edge(broker.port, "kafka-poison-in", "", ""),
        kafka = k.port,
    );
    let config = HostConfig::from_text(&text, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let running = runtime::start(&config).await.unwrap();
    let handle = running.handle.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let big = serde_json::json!({
        "value": null, "text": "x".repeat(6000), "unit": "", "quality": "good", "ts_ns": START_NS
    })
    .to_string()
    .into_bytes();
    let mut msgs = vec![("plant/site1/area1/line9/dev9/label".to_string(), big)];
    msgs.extend((1..=500u64).map(|i| (topic(i), payload(i as f64, "bar", START_NS + i * 1000))));
    publish_all(broker.port, "kafka-poison-pub", msgs).await;
    wait_until(
        "500 records and one dead-letter",
        Duration::from_secs(60),
        || {
            let s = handle.status();
            s.written["kafka"] >= 500 && s.dead_letters >= 1
        },
    )
    .await;
    let records = kafka::read(k.port, &["plant.telemetry"], 500, 60);
    assert_eq!(records.len(), 500, "records in Kafka");
    assert!(records
        .iter()
        .all(|r| r.key != "plant/site1/area1/line9/dev9/label"));
    let health = handle.status().sinks["kafka"].health.clone();
    assert_eq!(health.refused_samples, 1, "{health:?}");
    handle.stop();
    running.wait().await.unwrap();
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["stage"], "sink.kafka");
    assert_eq!(dead[0]["reason"], "kafka-refused");
    assert!(
        dead[0]["detail"].as_str().unwrap().contains("too large"),
        "{}",
        dead[0]
    );
}

/// Peak resident memory a host may reach while draining the 5 M-record Kafka backlog into a
/// slow sink (the README states it).
const BACKLOG_RSS_BOUND_MIB: u64 = 160;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Offsets the group committed, summed over the topic's partitions (read by confluent-kafka).
fn committed(port: u16, group: &str, topic: &str, partitions: u32) -> i64 {
    let out = Command::new(peers::python())
        .arg("-c")
        .arg(format!(
            "from confluent_kafka import Consumer, TopicPartition\n\
             c = Consumer({{'bootstrap.servers': '127.0.0.1:{port}', 'group.id': '{group}'}})\n\
             print(sum(max(tp.offset, 0) for tp in c.committed([TopicPartition('{topic}', p) \
             for p in range({partitions})], timeout=10)))"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A Kafka source with a backlog of 5 M records in front of a slow sink: memory stays under
/// `BACKLOG_RSS_BOUND_MIB` (the source prefetches a bounded amount, the sink holds at most
/// `flush_batches` unflushed batches) and offsets are committed while it drains, not only
/// when the queue runs empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_backlog_of_five_million_drains_in_bounded_memory_committing_as_it_goes() {
    use ferrule_tests::kafka;
    let dir = tempfile::tempdir().unwrap();
    let k = kafka::tansu();
    kafka::create_topic(k.port, "backlog", 3);
    let n: u64 = 5_000_000;
    let produced = Command::new(peers::python())
        .arg(ferrule_tests::repo_root().join("tests/peers/kafka_backlog.py"))
        .arg(format!("127.0.0.1:{}", k.port))
        .args(["backlog", &n.to_string(), &START_NS.to_string()])
        .output()
        .unwrap();
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&produced.stdout).trim(),
        n.to_string()
    );
    let config = dir.path().join("backlog.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
[admin]
enabled = false
[dead_letter]
type = "file"
path = "dead.jsonl"
[sources.backlog]
type = "kafka"
brokers = "127.0.0.1:{port}"
group_id = "backlog"
topics = ["backlog"]
[sinks.slow]
type = "file"
path = "samples.jsonl"
delay_ms = 20
"#,
            port = k.port
        ),
    )
    .unwrap();
    let mut child = spawn_host(&config, dir.path(), &[]);
    let pid = child.id();
    let mut peak_kib = 0;
    // Joining the group takes Tansu up to ~25 s; then the first commit comes.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let first = loop {
        peak_kib = peak_kib.max(rss_kib(pid));
        let c = committed(k.port, "backlog", "backlog", 3);
        if c > 0 {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no offset committed in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for _ in 0..20 {
        peak_kib = peak_kib.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let second = committed(k.port, "backlog", "backlog", 3);
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "kafka backlog of {n}: committed {first} then {second} 5 s later, peak RSS {} MiB",
        peak_kib / 1024
    );
    assert!(
        second > first,
        "offsets must be committed while the backlog drains"
    );
    assert!(
        (second as u64) < n,
        "the slow sink cannot have drained it all"
    );
    assert!(
        peak_kib / 1024 < BACKLOG_RSS_BOUND_MIB,
        "peak RSS {} MiB over the bound of {BACKLOG_RSS_BOUND_MIB} MiB",
        peak_kib / 1024
    );
}
