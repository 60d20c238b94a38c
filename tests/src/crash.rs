//! The crash harness: the `ferrule` binary killed with SIGKILL at pseudo-random moments while
//! a feed keeps sending upstream, restarted each time, then stopped cleanly (SIGINT); an
//! independent reader then counts what reached the destination against what the upstream
//! acknowledged.
//!
//! One function per delivery path ([`mqtt_file`], [`mqtt_parquet`], [`mqtt_kafka`],
//! [`kafka_postgres`], [`kafka_parquet`]); each starts the real peers it needs on free ports
//! (its own Mosquitto with `max_queued_messages 0`, Tansu for Kafka, a fresh database on the
//! machine's PostgreSQL) and returns a [`Report`].
//!
//! - **Acknowledged upstream** (what must not be lost): for MQTT, a message the broker
//!   PUBACKed to the feed's publisher (QoS 1); for Kafka, a record whose delivery report the
//!   feed's producer (confluent-kafka, idempotent, `acks=all`) received without error.
//! - **Independent readers**: the file sink's lines read and parsed here; Parquet read by
//!   pyarrow (`tests/peers/parquet_tally.py`); PostgreSQL by SQL; Kafka by confluent-kafka
//!   (`tests/peers/kafka_read.py` for the final count, `tests/peers/kafka_follow.py` while it
//!   runs).
//! - **Lost**: acknowledged samples (keyed by tag and source time) absent from the destination
//!   after the clean stop. **Duplicates**: rows / lines / records beyond the first of an
//!   acknowledged sample.
//! - **Recovery time**: from spawning the restarted host until the independent reader first
//!   sees the destination grow past what it held at the kill — a line appended to the file, a
//!   Parquet file published, a row added to the table (a replay adds none: `ON CONFLICT DO
//!   NOTHING`), a record in Kafka produced by the new process (its CreateTime is after the
//!   restart). It includes the process start, reconnecting, replaying the buffer and (for the
//!   Kafka source) rejoining the consumer group; for Parquet it also includes the file age
//!   (`max_file_age_s = 1`), since rows become visible only when a file is published.
//!   A quarter of the restarts (pseudo-random) are killed again early — within 500 ms of the
//!   spawn, before they need have delivered anything — to hit startup and replay; those
//!   restarts have no recovery time.
//! - **Catch-up**: from the feed's last acknowledgment until the destination holds every
//!   acknowledged sample (while the host still runs, before the SIGINT).

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::peers::{self, Peer};
use crate::storage::TestDatabase;
use crate::{kafka, mqtt, repo_root};

/// Source time of message 0.
pub const START_NS: u64 = 1_700_000_000_000_000_000;
/// Messages are this far apart in source time (a µs multiple: PostgreSQL keeps it exactly).
pub const STEP_NS: u64 = 1_000;
/// The Kafka topic of both Kafka paths (3 partitions).
pub const TOPIC: &str = "plant.telemetry";
/// The tag of the probe messages that show an MQTT-fed host has subscribed (not counted).
const CANARY: &str = "plant/site0/area0/line0/probe/canary";

/// A delivery path, source → sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryPath {
    MqttFile,
    MqttParquet,
    MqttKafka,
    KafkaPostgres,
    KafkaParquet,
}

impl DeliveryPath {
    pub const ALL: [DeliveryPath; 5] = [
        DeliveryPath::MqttFile,
        DeliveryPath::MqttParquet,
        DeliveryPath::MqttKafka,
        DeliveryPath::KafkaPostgres,
        DeliveryPath::KafkaParquet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DeliveryPath::MqttFile => "mqtt-file",
            DeliveryPath::MqttParquet => "mqtt-parquet",
            DeliveryPath::MqttKafka => "mqtt-kafka",
            DeliveryPath::KafkaPostgres => "kafka-postgres",
            DeliveryPath::KafkaParquet => "kafka-parquet",
        }
    }

    pub fn from_name(name: &str) -> Option<DeliveryPath> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether the destination promises each sample once whatever the upstream redelivers
    /// (PostgreSQL rows, by their (tag, time) key).
    pub fn exactly_once(self) -> bool {
        matches!(self, DeliveryPath::KafkaPostgres)
    }

    /// The most duplicates one kill may cause on this path, or None for at-least-once paths
    /// without a stated bound. Parquet skips what the host itself replays from its buffer,
    /// but a message the upstream redelivers after a crash (taken into the buffer, its
    /// acknowledgment lost in the crash) is a new record: at most the source's
    /// unacknowledged window — the MQTT source's `receive_maximum` (1 024), the Kafka
    /// source's uncommitted records (a `commit_interval_ms` of 200 ms at this feed's rate
    /// plus one batch of 1 024).
    pub fn duplicates_per_kill(self) -> Option<u64> {
        match self {
            DeliveryPath::KafkaPostgres => Some(0),
            DeliveryPath::MqttParquet => Some(1024),
            DeliveryPath::KafkaParquet => Some(2048),
            _ => None,
        }
    }

    fn mqtt_source(self) -> bool {
        matches!(
            self,
            DeliveryPath::MqttFile | DeliveryPath::MqttParquet | DeliveryPath::MqttKafka
        )
    }
}

impl fmt::Display for DeliveryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How hard to shake the host.
#[derive(Clone, Debug)]
pub struct Options {
    /// SIGKILLs (each followed by a restart).
    pub kills: u32,
    /// At least this many messages are fed; the feed goes on until the last restart.
    pub messages: u64,
    /// Messages per second fed upstream.
    pub rate: u64,
    /// Seeds the kill moments.
    pub seed: u64,
    /// A restart that delivered is killed within this long (uniform), ms.
    pub max_run_ms: u64,
    /// How long a restart may take to deliver before it counts as not recovered.
    pub recovery_timeout: Duration,
    /// How long to wait for the destination to catch up before the clean stop.
    pub catch_up_timeout: Duration,
    /// The `ferrule` binary; default `$FERRULE_BIN`, else `target/<profile>/ferrule` beside
    /// the running test or binary.
    pub ferrule: Option<PathBuf>,
    /// Keep the working directory (configs, host log, files) even when nothing went wrong.
    pub keep_dir: bool,
    /// Progress lines on stderr.
    pub verbose: bool,
}

impl Options {
    pub fn new(kills: u32, messages: u64) -> Options {
        Options {
            kills,
            messages,
            rate: 1000,
            seed: 0x9e37_79b9_7f4a_7c15,
            max_run_ms: 1000,
            recovery_timeout: Duration::from_secs(60),
            catch_up_timeout: Duration::from_secs(60),
            ferrule: None,
            keep_dir: false,
            verbose: false,
        }
    }
}

/// What one run found.
#[derive(Clone, Debug)]
pub struct Report {
    pub path: DeliveryPath,
    pub kills: u32,
    /// Samples acknowledged upstream.
    pub sent: u64,
    /// Distinct acknowledged samples at the destination.
    pub delivered: u64,
    /// Acknowledged samples missing from the destination.
    pub lost: u64,
    /// Rows / lines / records beyond the first of an acknowledged sample.
    pub duplicates: u64,
    /// Distinct samples at the destination the feed never had acknowledged (Kafka records
    /// whose delivery report failed, or anything else).
    pub unexpected: u64,
    /// File-sink lines that do not parse (a torn or interleaved write).
    pub corrupt: u64,
    /// Entries in the dead-letter file.
    pub dead_letters: u64,
    /// Recovery time of each restart that was not killed early (see the module docs).
    pub recoveries: Vec<Duration>,
    /// Restarts killed again within 500 ms, before they were waited for.
    pub early_kills: u32,
    /// Restarts that delivered nothing within `recovery_timeout`.
    pub unrecovered: u32,
    /// From the feed's last acknowledgment until every acknowledged sample was there.
    pub catch_up: Option<Duration>,
    /// How the clean stop went: `Ok` for exit code 0 after SIGINT.
    pub exit: Result<(), String>,
    /// A few lost samples (tag, source time ns).
    pub lost_examples: Vec<(String, u64)>,
    /// The working directory, kept when something went wrong (or on request).
    pub kept: Option<PathBuf>,
    pub elapsed: Duration,
}

impl Report {
    pub fn recovery_p50(&self) -> Option<Duration> {
        percentile(&self.recoveries, 50)
    }

    pub fn recovery_max(&self) -> Option<Duration> {
        self.recoveries.iter().max().copied()
    }
}

fn percentile(values: &[Duration], p: usize) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort();
    Some(v[((v.len() - 1) * p).div_ceil(100)])
}

/// `1.23 s`, or `-`.
pub fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} kills ({} early), {} sent, {} delivered, {} lost, {} duplicates, \
             {} unexpected, {} corrupt lines, {} dead-letters, recovery p50 {} max {} \
             ({} measured, {} unrecovered), catch-up {}, exit {}, {:.0} s",
            self.path,
            self.kills,
            self.early_kills,
            self.sent,
            self.delivered,
            self.lost,
            self.duplicates,
            self.unexpected,
            self.corrupt,
            self.dead_letters,
            secs(self.recovery_p50()),
            secs(self.recovery_max()),
            self.recoveries.len(),
            self.unrecovered,
            secs(self.catch_up),
            match &self.exit {
                Ok(()) => "clean".to_string(),
                Err(e) => e.clone(),
            },
            self.elapsed.as_secs_f64(),
        )?;
        if !self.lost_examples.is_empty() {
            write!(f, "; lost e.g. {:?}", self.lost_examples)?;
        }
        if let Some(dir) = &self.kept {
            write!(f, "; kept {}", dir.display())?;
        }
        Ok(())
    }
}

/// MQTT (QoS 1) → file sink (`fsync = "batch"`).
pub async fn mqtt_file(opts: &Options) -> Report {
    run(DeliveryPath::MqttFile, opts).await
}

/// MQTT (QoS 1) → Parquet (behind its durable buffer).
pub async fn mqtt_parquet(opts: &Options) -> Report {
    run(DeliveryPath::MqttParquet, opts).await
}

/// The bridge: MQTT (QoS 1) → Kafka (idempotent producer, dedup window).
pub async fn mqtt_kafka(opts: &Options) -> Report {
    run(DeliveryPath::MqttKafka, opts).await
}

/// Kafka (consumer group, manual commits) → PostgreSQL (`ON CONFLICT DO NOTHING`).
pub async fn kafka_postgres(opts: &Options) -> Report {
    run(DeliveryPath::KafkaPostgres, opts).await
}

/// Kafka (consumer group, manual commits) → Parquet.
pub async fn kafka_parquet(opts: &Options) -> Report {
    run(DeliveryPath::KafkaParquet, opts).await
}

/// The tag of message `i`: 150 tags over 3 lines.
pub fn tag(i: u64) -> String {
    format!("plant/site1/area1/line{}/dev{}/flow", i % 3, i % 50)
}

/// The source time of message `i`.
pub fn ts(i: u64) -> u64 {
    START_NS + i * STEP_NS
}

fn payload(i: u64, ts: u64) -> Vec<u8> {
    format!("{{\"value\":{i},\"unit\":\"bar\",\"quality\":\"good\",\"ts_ns\":{ts}}}").into_bytes()
}

/// The `ferrule` binary this harness runs.
pub fn ferrule_bin(opts: &Options) -> PathBuf {
    if let Some(p) = &opts.ferrule {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("FERRULE_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> or target/<profile>/<bin> → target/<profile>/ferrule
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap();
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap();
    }
    let bin = dir.join("ferrule");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo build -p ferrule --bin ferrule` (same profile) builds it",
        bin.display()
    );
    bin
}

/// xorshift64*: the kill moments, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The host under test: `ferrule run <config>`, its stderr appended to `host.log`.
struct Host {
    bin: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Host {
    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("host.log"))
            .unwrap();
        use std::io::Write;
        let mut l = &log;
        let _ = writeln!(l, "=== start {} ===", self.starts);
        let child = Command::new(&self.bin)
            .arg("run")
            .arg(&self.config)
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// SIGKILL, and reap.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGINT, then waits for the exit; SIGKILL after `timeout`.
    async fn interrupt(&mut self, timeout: Duration) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Err("not running".into());
        };
        signal(child.id(), "INT");
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return exit_result(status),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("still running {timeout:?} after SIGINT"));
                }
            }
        }
    }
}

fn exit_result(status: ExitStatus) -> Result<(), String> {
    if status.success() {
        Ok(())
    } else {
        Err(format!("exit {status}"))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A child process killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tests/peers/kafka_follow.py`: every record of the topic as it arrives.
struct Follower {
    _child: Reaped,
    /// (key, ts_ns) of every record read so far.
    records: Arc<Mutex<Vec<(String, u64)>>>,
    /// The newest CreateTime seen, ms.
    newest_ms: Arc<AtomicI64>,
}

impl Follower {
    fn start(port: u16) -> Follower {
        let mut child = Command::new(peers::python())
            .arg(repo_root().join("tests/peers/kafka_follow.py"))
            .arg(format!("127.0.0.1:{port}"))
            .arg(TOPIC)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let newest_ms = Arc::new(AtomicI64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let records = records.clone();
            let newest_ms = newest_ms.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if v.get("ready").is_some() {
                        let _ = ready_tx.send(());
                        continue;
                    }
                    let key = v["key"].as_str().unwrap_or_default().to_string();
                    let ts = v["ts_ns"].as_u64().unwrap_or(0);
                    newest_ms.fetch_max(v["create_ms"].as_i64().unwrap_or(0), Ordering::SeqCst);
                    records.lock().unwrap().push((key, ts));
                }
            });
        }
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the Kafka follower assigned its partitions within 30 s");
        Follower {
            _child: Reaped(child),
            records,
            newest_ms,
        }
    }
}

/// What the independent reader found: (tag, source time ns) → rows, and unreadable lines.
#[derive(Default)]
struct Tally {
    counts: HashMap<(String, u64), u64>,
    corrupt: u64,
}

enum Dest {
    File(PathBuf),
    Parquet(PathBuf),
    Postgres {
        client: tokio_postgres::Client,
        /// Dropped (with the database) after the client.
        _db: TestDatabase,
    },
    Kafka {
        port: u16,
        follower: Follower,
    },
}

impl Dest {
    /// Where the destination stands now; [`Dest::grown`] compares with it.
    async fn mark(&self) -> i64 {
        match self {
            Dest::File(p) => std::fs::metadata(p).map_or(0, |m| m.len() as i64),
            Dest::Parquet(dir) => published_parquet(dir) as i64,
            Dest::Postgres { client, .. } => pg_count(client).await,
            Dest::Kafka { .. } => now_ms(),
        }
    }

    async fn grown(&self, mark: i64) -> bool {
        match self {
            // A Kafka record created at or after the mark was produced by the restarted host.
            Dest::Kafka { follower, .. } => follower.newest_ms.load(Ordering::SeqCst) >= mark,
            _ => self.mark().await > mark,
        }
    }

    /// Waits until the destination grew past `mark`; how long since `since`.
    async fn wait_grown(&self, mark: i64, since: Instant, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.grown(mark).await {
                return Some(since.elapsed());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads everything back. `settled`: the host has stopped (the final count: Kafka is
    /// read afresh by `kafka_read.py`, expecting `expect` records).
    async fn tally(&self, settled: bool, expect: usize) -> Tally {
        match self {
            Dest::File(p) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || file_tally(&p))
                    .await
                    .unwrap()
            }
            Dest::Parquet(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || parquet_tally(&dir))
                    .await
                    .unwrap()
            }
            Dest::Postgres { client, .. } => pg_tally(client).await,
            Dest::Kafka { port, follower } => {
                let mut t = Tally::default();
                if settled {
                    let port = *port;
                    let records = tokio::task::spawn_blocking(move || {
                        kafka::read(port, &[TOPIC], expect, 90)
                    })
                    .await
                    .unwrap();
                    for r in records {
                        let ts = r.value["ts_ns"].as_u64().unwrap_or(0);
                        *t.counts.entry((r.key, ts)).or_default() += 1;
                    }
                } else {
                    for k in follower.records.lock().unwrap().iter() {
                        *t.counts.entry(k.clone()).or_default() += 1;
                    }
                }
                t
            }
        }
    }
}

fn file_tally(path: &std::path::Path) -> Tally {
    let mut t = Tally::default();
    let Ok(bytes) = std::fs::read(path) else {
        return t;
    };
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) => match (v["path"].as_str(), v["ts_ns"].as_u64()) {
                (Some(p), Some(ts)) => *t.counts.entry((p.to_string(), ts)).or_default() += 1,
                _ => t.corrupt += 1,
            },
            Err(_) => t.corrupt += 1,
        }
    }
    t
}

/// Published Parquet files under `dir` (in-progress ones are hidden: `.<name>.inprogress`).
fn published_parquet(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if e.file_type().is_ok_and(|k| k.is_dir()) {
                pending.push(e.path());
            } else if name.ends_with(".parquet") && !name.starts_with('.') {
                n += 1;
            }
        }
    }
    n
}

fn parquet_tally(dir: &std::path::Path) -> Tally {
    let out = Command::new(peers::python())
        .arg(repo_root().join("tests/peers/parquet_tally.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "parquet_tally.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut t = Tally::default();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let mut f = line.split(' ');
        let (Some(tag), Some(ns), Some(n)) = (f.next(), f.next(), f.next()) else {
            t.corrupt += 1;
            continue;
        };
        *t.counts
            .entry((tag.to_string(), ns.parse().unwrap()))
            .or_default() += n.parse::<u64>().unwrap();
    }
    t
}

const PG_TABLE: &str = "ferrule_samples";

/// Rows in the table (0 before the sink created it).
async fn pg_count(client: &tokio_postgres::Client) -> i64 {
    match client
        .query_one(&format!("SELECT count(*) FROM {PG_TABLE}"), &[])
        .await
    {
        Ok(r) => r.get(0),
        Err(_) => 0,
    }
}

async fn pg_tally(client: &tokio_postgres::Client) -> Tally {
    let mut t = Tally::default();
    let rows = client
        .query(
            &format!(
                "SELECT tag, (extract(epoch FROM time) * 1000000)::int8, count(*) \
                 FROM {PG_TABLE} GROUP BY 1, 2"
            ),
            &[],
        )
        .await
        .unwrap_or_default();
    for r in rows {
        let us: i64 = r.get(1);
        let n: i64 = r.get(2);
        *t.counts.entry((r.get(0), us as u64 * 1000)).or_default() += n as u64;
    }
    t
}

/// The upstream feed, running while the host is killed and restarted.
enum Feed {
    Mqtt {
        stop: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<u64>,
    },
    Kafka {
        stop_file: PathBuf,
        child: Child,
        /// Reads the producer's lines as they come (its progress into `acked`); returns the
        /// last one, the result.
        lines: std::thread::JoinHandle<String>,
    },
}

impl Feed {
    /// QoS 1 messages in chunks of `rate / 10` every 100 ms; a chunk counts once the broker
    /// acknowledged all of it (`publish_all`). Returns how many were acknowledged.
    fn mqtt(port: u16, opts: &Options, acked: Arc<AtomicU64>) -> Feed {
        let stop = Arc::new(AtomicBool::new(false));
        let (min, rate) = (opts.messages, opts.rate.max(10));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let chunk = (rate / 10).max(1);
                let t0 = tokio::time::Instant::now();
                let mut i = 0u64;
                while i < min || !stop.load(Ordering::SeqCst) {
                    let msgs = (i..i + chunk)
                        .map(|j| (tag(j), payload(j, ts(j))))
                        .collect();
                    mqtt::publish_all(port, "chaos-feed", msgs).await;
                    i += chunk;
                    acked.store(i, Ordering::SeqCst);
                    let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due).await;
                }
                i
            }
        });
        Feed::Mqtt { stop, task }
    }

    fn kafka(port: u16, opts: &Options, dir: &std::path::Path, acked: Arc<AtomicU64>) -> Feed {
        let stop_file = dir.join("feed.stop");
        let mut child = Command::new(peers::python())
            .arg(repo_root().join("tests/peers/kafka_produce_until.py"))
            .arg(format!("127.0.0.1:{port}"))
            .arg(TOPIC)
            .arg(opts.messages.to_string())
            .arg(opts.rate.max(1).to_string())
            .arg(START_NS.to_string())
            .arg(STEP_NS.to_string())
            .arg(&stop_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            let mut last = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(n) = v["acked"].as_u64() {
                        acked.store(n, Ordering::SeqCst);
                    }
                }
                last = line;
            }
            last
        });
        Feed::Kafka {
            stop_file,
            child,
            lines,
        }
    }

    /// Stops the feed (once it sent its minimum) and returns the indices of the messages it
    /// had acknowledged.
    async fn finish(self) -> Vec<u64> {
        match self {
            Feed::Mqtt { stop, task } => {
                stop.store(true, Ordering::SeqCst);
                let n = task
                    .await
                    .expect("the MQTT feed failed (see the panic above)");
                (0..n).collect()
            }
            Feed::Kafka {
                stop_file,
                mut child,
                lines,
            } => {
                std::fs::write(&stop_file, b"").unwrap();
                let out = tokio::task::spawn_blocking(move || {
                    let status = child.wait().unwrap();
                    assert!(status.success(), "kafka_produce_until.py: {status}");
                    lines.join().unwrap()
                })
                .await
                .unwrap();
                let last: serde_json::Value =
                    serde_json::from_str(&out).expect("the feed's result");
                let produced = last["produced"].as_u64().unwrap();
                let unacked: std::collections::HashSet<u64> = last["unacked"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                (0..produced).filter(|i| !unacked.contains(i)).collect()
            }
        }
    }
}

const COMMON: &str = r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0

[admin]
enabled = false

[dead_letter]
type = "file"
path = "dead-letter.jsonl"
"#;

fn mqtt_source(port: u16) -> String {
    format!(
        r#"
[sources.edge]
type = "mqtt"
topics = ["plant/#"]
linger_ms = 5
[sources.edge.broker]
port = {port}
client_id = "chaos-in"
"#
    )
}

fn kafka_source(port: u16) -> String {
    format!(
        r#"
[sources.edge]
type = "kafka"
brokers = "127.0.0.1:{port}"
group_id = "chaos"
topics = ["{TOPIC}"]
client_id = "chaos-in"
linger_ms = 10
[sources.edge.properties]
"session.timeout.ms" = "6000"
"max.poll.interval.ms" = "10000"
"#
    )
}

fn parquet_sink(dir: &std::path::Path) -> String {
    format!(
        r#"
[sinks.warm]
type = "parquet"
directory = "{}"
max_file_bytes = 16384
max_file_age_s = 1
row_group_rows = 500
"#,
        dir.display()
    )
}

/// Runs one path: peers, host, feed, kills, clean stop, count.
pub async fn run(path: DeliveryPath, opts: &Options) -> Report {
    let began = Instant::now();
    let workdir = tempfile::Builder::new()
        .prefix(&format!("ferrule-crash-{}-", path.name()))
        .tempdir()
        .unwrap();
    let dir = workdir.path().to_path_buf();
    let say = |what: &str| {
        if opts.verbose {
            eprintln!("[{path} {:>6.1} s] {what}", began.elapsed().as_secs_f64());
        }
    };

    // Peers.
    let mosquitto = path.mqtt_source().then(|| {
        // Mosquitto started as root drops to its own user, which must write its log here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = dir.join("mosquitto.log");
        std::fs::write(&log, b"").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        let conf = format!(
            "max_queued_messages 0\nmax_inflight_messages 0\nlog_dest file {}\n",
            log.display()
        );
        peers::mosquitto(&dir, &conf)
    });
    let tansu: Option<Peer> = (path != DeliveryPath::MqttFile && path != DeliveryPath::MqttParquet)
        .then(|| {
            let k = kafka::tansu();
            kafka::create_topic(k.port, TOPIC, 3);
            k
        });
    let source = match &mosquitto {
        Some(b) => mqtt_source(b.port),
        None => kafka_source(tansu.as_ref().unwrap().port),
    };
    let (dest, sink) = match path {
        DeliveryPath::MqttFile => {
            let p = dir.join("samples.jsonl");
            let sink = format!(
                "\n[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
                p.display()
            );
            (Dest::File(p), sink)
        }
        DeliveryPath::MqttParquet | DeliveryPath::KafkaParquet => {
            let warm = dir.join("warm");
            let sink = parquet_sink(&warm);
            (Dest::Parquet(warm), sink)
        }
        DeliveryPath::KafkaPostgres => {
            let db = TestDatabase::create("crash").await;
            let sink = format!(
                "\n[sinks.hot]\ntype = \"postgres\"\nconnection = \"{}\"\n",
                db.connection()
            );
            let client = db.client().await;
            (Dest::Postgres { client, _db: db }, sink)
        }
        DeliveryPath::MqttKafka => {
            let port = tansu.as_ref().unwrap().port;
            let sink = format!(
                r#"
[sinks.kafka]
type = "kafka"
brokers = "127.0.0.1:{port}"
linger_ms = 5
[[sinks.kafka.routes]]
match = "plant/**"
topics = ["{TOPIC}"]
"#
            );
            let follower = tokio::task::spawn_blocking(move || Follower::start(port))
                .await
                .unwrap();
            (Dest::Kafka { port, follower }, sink)
        }
    };
    let config = dir.join("host.toml");
    std::fs::write(&config, format!("{COMMON}{source}{sink}")).unwrap();
    let mut host = Host {
        bin: ferrule_bin(opts),
        config,
        dir: dir.clone(),
        child: None,
        starts: 0,
    };

    // First start, delivering before the first kill. An MQTT-fed host must have subscribed
    // (its persistent session exists) before the feed starts: probe messages until one lands.
    let mark = dest.mark().await;
    host.spawn();
    let first = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let feed = if let Some(b) = &mosquitto {
        let mut k = 0;
        while !dest.grown(mark).await {
            assert!(
                first.elapsed() < Duration::from_secs(60),
                "{path}: the host delivered no probe within 60 s (see {})",
                dir.join("host.log").display()
            );
            if k % 25 == 0 {
                let probe = vec![(CANARY.to_string(), payload(k, START_NS - 1_000_000 + k))];
                mqtt::publish_all(b.port, "chaos-probe", probe).await;
            }
            k += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Feed::mqtt(b.port, opts, acked.clone())
    } else {
        let feed = Feed::kafka(tansu.as_ref().unwrap().port, opts, &dir, acked.clone());
        let started = dest.wait_grown(mark, first, Duration::from_secs(60)).await;
        assert!(
            started.is_some(),
            "{path}: the host delivered nothing within 60 s of its first start (see {})",
            dir.join("host.log").display()
        );
        feed
    };
    say(&format!(
        "first start delivering after {:?}",
        first.elapsed()
    ));

    // Kills.
    let mut rng = Rng(opts.seed ^ (path as u64 + 1).wrapping_mul(0x1000_0000_01b3));
    let mut recoveries = Vec::new();
    let (mut early_kills, mut unrecovered) = (0, 0);
    let mut restarted: Option<(Instant, i64)> = None;
    for k in 0..opts.kills {
        match restarted {
            Some((at, _)) if rng.below(4) == 0 => {
                // Killed again early: during the start, the reconnect or the replay.
                early_kills += 1;
                let until = at + Duration::from_millis(rng.below(500));
                tokio::time::sleep_until(until.into()).await;
            }
            Some((at, mark)) => {
                match dest.wait_grown(mark, at, opts.recovery_timeout).await {
                    Some(d) => recoveries.push(d),
                    None => unrecovered += 1,
                }
                tokio::time::sleep(Duration::from_millis(rng.below(opts.max_run_ms))).await;
            }
            None => tokio::time::sleep(Duration::from_millis(rng.below(opts.max_run_ms))).await,
        }
        host.kill9();
        let mark = dest.mark().await;
        let at = Instant::now();
        host.spawn();
        restarted = Some((at, mark));
        if opts.verbose && (k + 1) % 10 == 0 {
            say(&format!(
                "{} kills, {} fed, recovery p50 {}",
                k + 1,
                acked.load(Ordering::SeqCst),
                secs(percentile(&recoveries, 50))
            ));
        }
    }
    if let Some((at, mark)) = restarted {
        match dest.wait_grown(mark, at, opts.recovery_timeout).await {
            Some(d) => recoveries.push(d),
            None => unrecovered += 1,
        }
    }

    // The feed stops; the host catches up, then stops cleanly.
    let acknowledged = feed.finish().await;
    let fed_at = Instant::now();
    say(&format!("feed done: {} acknowledged", acknowledged.len()));
    let expected: HashMap<(String, u64), ()> = acknowledged
        .iter()
        .map(|&i| ((tag(i), ts(i)), ()))
        .collect();
    let present = |t: &Tally| {
        expected
            .keys()
            .filter(|k| t.counts.contains_key(*k))
            .count()
    };
    let mut catch_up = None;
    while fed_at.elapsed() < opts.catch_up_timeout {
        let t = dest.tally(false, expected.len()).await;
        if present(&t) >= expected.len() {
            catch_up = Some(fed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    say(&format!("caught up: {}", secs(catch_up)));
    let exit = host.interrupt(Duration::from_secs(60)).await;
    say(&format!("stopped: {exit:?}"));

    // The count.
    let tally = dest.tally(true, expected.len()).await;
    let mut lost_keys: Vec<(String, u64)> = expected
        .keys()
        .filter(|k| !tally.counts.contains_key(*k))
        .cloned()
        .collect();
    lost_keys.sort_by_key(|k| k.1);
    let duplicates: u64 = tally
        .counts
        .iter()
        .filter(|(k, _)| expected.contains_key(*k))
        .map(|(_, n)| n - 1)
        .sum();
    let unexpected = tally
        .counts
        .keys()
        .filter(|k| !expected.contains_key(*k) && k.0 != CANARY)
        .count() as u64;
    let dead_letters = std::fs::read(dir.join("dead-letter.jsonl"))
        .map(|b| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count() as u64)
        .unwrap_or(0);
    let sent = expected.len() as u64;
    let lost = lost_keys.len() as u64;
    let trouble = lost > 0
        || tally.corrupt > 0
        || exit.is_err()
        || dead_letters > 0
        || path
            .duplicates_per_kill()
            .is_some_and(|b| duplicates > b * opts.kills as u64);
    let kept = (opts.keep_dir || trouble).then(|| workdir.keep());
    drop(host);
    Report {
        path,
        kills: opts.kills,
        sent,
        delivered: sent - lost,
        lost,
        duplicates,
        unexpected,
        corrupt: tally.corrupt,
        dead_letters,
        recoveries,
        early_kills,
        unrecovered,
        catch_up,
        exit,
        lost_examples: lost_keys.into_iter().take(5).collect(),
        kept,
        elapsed: began.elapsed(),
    }
}
