//! The storage sinks against real peers: the machine's PostgreSQL (a database per test) and
//! Parquet files read back by independent readers (pyarrow and DuckDB from `.venv-peers`).
//! Every row is compared with the sample it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::runtime;
use ferrule::sinks::parquet::{ParquetSink, ParquetSinkConfig};
use ferrule::sinks::postgres::{PostgresSink, PostgresSinkConfig, WriteMethod};
use ferrule::sinks::{Sink, SinkConfig};
use ferrule::sources::simulator::{describe_tag, sample, SimulatorConfig};
use ferrule_tests::peers::{free_port, python, Peer};
use ferrule_tests::storage::{
    assert_rows_are, assert_rows_are_samples, batch, tag_table, Row, TestDatabase, START_NS,
};
use serde_json::Value;

const TABLE: &str = "ferrule_samples";

fn pg_sink(db: &TestDatabase, method: WriteMethod) -> PostgresSink {
    let mut c = PostgresSinkConfig::new(db.connection());
    c.method = method;
    c.insert_rows = 97; // not a divisor of the batch sizes: full and partial statements
    PostgresSink::open("hot", &c).unwrap()
}

async fn round_trip(method: WriteMethod, purpose: &str) {
    let db = TestDatabase::create(purpose).await;
    let tags = tag_table(40);
    let mut sink = pg_sink(&db, method);
    // 5 batches of 700 samples: every kind of value (text, i64::MIN.., u64::MAX.., NaN),
    // every quality, tags with and without metadata.
    for b in 0..5u64 {
        sink.write(&batch(b * 700, 700, &tags)).await.unwrap();
    }
    sink.flush().await.unwrap();
    assert!(!sink.is_hypertable(), "plain PostgreSQL has no TimescaleDB");
    let rows = db.rows(TABLE).await;
    assert_eq!(rows.len(), 3500);
    assert_rows_are_samples(&rows, 3500, &tags, true);
    // The documented key: one row per (tag, time).
    let key: Vec<String> = db
        .client()
        .await
        .query(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
             AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey, a.attnum)",
            &[&TABLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(key, ["tag", "time"]);
}

#[tokio::test]
async fn postgres_copy_stores_every_sample_as_given() {
    round_trip(WriteMethod::Copy, "copy").await;
}

#[tokio::test]
async fn postgres_insert_stores_every_sample_as_given() {
    round_trip(WriteMethod::Insert, "insert").await;
}

#[tokio::test]
async fn postgres_replayed_batches_add_no_rows() {
    for method in [WriteMethod::Copy, WriteMethod::Insert] {
        let db = TestDatabase::create("replay").await;
        let tags = tag_table(30);
        let mut sink = pg_sink(&db, method);
        let first = batch(0, 1000, &tags);
        sink.write(&first).await.unwrap();
        assert_eq!(db.count(TABLE).await, 1000);
        // The same batch again, on the same connection.
        sink.write(&first).await.unwrap();
        assert_eq!(
            db.count(TABLE).await,
            1000,
            "{method:?}: replay duplicated rows"
        );
        // After a restart: a new sink (new connection, new staging table) replays it.
        drop(sink);
        let mut restarted = pg_sink(&db, method);
        restarted.write(&first).await.unwrap();
        assert_eq!(
            db.count(TABLE).await,
            1000,
            "{method:?}: replay after restart"
        );
        // A replay overlapping new samples adds only the new ones.
        restarted.write(&batch(500, 1000, &tags)).await.unwrap();
        let rows = db.rows(TABLE).await;
        assert_eq!(rows.len(), 1500, "{method:?}");
        assert_rows_are_samples(&rows, 1500, &tags, true);
    }
}

#[tokio::test]
async fn postgres_config_from_toml_with_password_from_the_environment() {
    // Trust auth ignores the password; this checks it reaches the sink config and that the
    // table name and method are honoured through the config loader.
    std::env::set_var("FERRULE_TEST_PG_PASSWORD", "not used by trust auth");
    let db = TestDatabase::create("toml").await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[sources.plant]\ntype = \"simulator\"\n\n[sinks.hot]\ntype = \"postgres\"\n\
         connection = \"{}\"\npassword = \"${{FERRULE_TEST_PG_PASSWORD}}\"\n\
         table = \"public.history\"\nmethod = \"insert\"\ninclude_metadata = false\n",
        db.connection()
    );
    let cfg = HostConfig::from_text(&text, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let SinkConfig::Postgres(pg) = &cfg.sinks["hot"] else {
        panic!("not a postgres sink: {:?}", cfg.sinks["hot"]);
    };
    assert_eq!(pg.password.as_deref(), Some("not used by trust auth"));
    let mut sink = cfg.sinks["hot"].build("hot").unwrap();
    let tags = tag_table(10);
    sink.write(&batch(0, 200, &tags)).await.unwrap();
    let rows = db.rows("public.history").await;
    assert_rows_are_samples(&rows, 200, &tags, false);

    let bad = text.replace("public.history", "bad name");
    let errors = HostConfig::from_text(&bad, dir.path()).unwrap_err();
    assert!(
        errors.iter().any(|e| e.key == "sinks.hot.table"),
        "{errors:?}"
    );
}

/// The whole pipeline (simulator → PostgreSQL sink) while the sink's backend connections are
/// terminated again and again: every sample lands exactly once, with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reconnect_mid_stream_lands_every_sample_once() {
    let db = TestDatabase::create("reconnect").await;
    let dir = tempfile::tempdir().unwrap();
    let (tags, scans) = (200u32, 40u64);
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0

[admin]
enabled = false

[sources.plant]
type = "simulator"
tags = {tags}
scans = {scans}
interval_ms = 75
batch_size = 100
start_ns = {START_NS}

[sinks.hot]
type = "postgres"
connection = "{conn}"
"#,
        conn = db.connection()
    );
    let cfg = HostConfig::from_text(&text, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let running = runtime::start(&cfg).await.unwrap();

    // Kill the sink's connection again and again while the samples flow (about 3 s of
    // scans); count the kills that hit it while rows were still missing.
    let total = tags as u64 * scans;
    let stop = Arc::new(AtomicBool::new(false));
    let kills_mid_stream = Arc::new(AtomicU64::new(0));
    let killer = {
        let (stop, kills) = (stop.clone(), kills_mid_stream.clone());
        let db_name = db.name.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let killed = TestDatabase::terminate_backends(&db_name).await;
                let sink_killed = killed.iter().any(|a| a == "ferrule sink hot");
                let (client, conn) = tokio_postgres::connect(
                    &format!("{} dbname={db_name}", ferrule_tests::storage::PG_SERVER),
                    tokio_postgres::NoTls,
                )
                .await
                .unwrap();
                tokio::spawn(conn);
                let stored: i64 = client
                    .query_one("SELECT count(*) FROM ferrule_samples", &[])
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                if sink_killed && (stored as u64) < total {
                    kills.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let status = running.wait().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    killer.await.unwrap();

    assert_eq!(status.produced["plant"], total);
    let kills = kills_mid_stream.load(Ordering::Relaxed);
    assert!(
        kills >= 3,
        "the sink's connection was terminated mid-stream only {kills} times"
    );

    // Every simulated sample exactly once, with its value and quality.
    let sim = SimulatorConfig {
        tags,
        ..SimulatorConfig::default()
    };
    let paths: BTreeMap<String, u32> = (0..tags)
        .map(|i| (describe_tag(&sim, "plant", i).vendor_path, i))
        .collect();
    let rows = db.rows(TABLE).await;
    let mut seen = std::collections::HashSet::new();
    for r in &rows {
        let tag = paths[&r.tag];
        let scan = (r.time_ns - START_NS) / (75 * 1_000_000);
        assert_eq!(r.time_ns, START_NS + scan * 75_000_000, "{r:?}");
        assert!(seen.insert((tag, scan)), "stored twice: {r:?}");
        let (value, quality) = sample(&sim, tag, scan);
        let got = r.value_double.unwrap();
        assert!(
            got == value || (got.is_nan() && value.is_nan()),
            "tag {tag} scan {scan}: {got} != {value}"
        );
        assert_eq!(r.status, quality.0 as i64, "{r:?}");
    }
    assert_eq!(rows.len() as u64, total, "rows lost across the reconnects");
}

// ---------------------------------------------------------------------------------------
// Parquet

/// Reads every `*.parquet` under a directory with pyarrow (rows, column types, encodings,
/// compression) and DuckDB (hive-partitioned scan), printing JSON.
const READ_BACK: &str = r#"
import glob, json, os, sys
import pyarrow.parquet as pq
import duckdb

root = sys.argv[1]
files = []
for path in sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True)):
    f = pq.ParquetFile(path)
    t = f.read()
    md = f.metadata
    chunks = {}
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for c in range(rg.num_columns):
            cc = rg.column(c)
            chunks.setdefault(cc.path_in_schema, {"compression": cc.compression, "encodings": []})
            chunks[cc.path_in_schema]["encodings"] += [e for e in cc.encodings]
    files.append({
        "path": os.path.relpath(path, root),
        "types": {fld.name: str(fld.type) for fld in t.schema},
        "row_groups": md.num_row_groups,
        "chunks": chunks,
        "rows": rows_of(t),
    })
duck = None
if files:
    duck = duckdb.sql(f"""
        SELECT count(*), count(DISTINCT (tag, time)),
               count(*) FILTER (WHERE epoch_ns(time) // 3600000000000 % 24 <> "hour"
                   OR epoch_ns(time) // 86400000000000 <> ("date" - DATE '1970-01-01'))
        FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true)
    """).fetchall()[0]
print(json.dumps({"files": files, "duckdb": duck}))
"#;

/// Python: the rows of a pyarrow table as JSON-able dicts (doubles as their bits, decimals as
/// text), used by the read-back scripts.
const ROWS_OF: &str = r#"
import json, struct
import pyarrow as pa

def rows_of(t):
    col = lambda n: t.column(n).to_pylist()
    bits = lambda v: None if v is None else struct.unpack("<q", struct.pack("<d", v))[0]
    return [
        {"time_ns": tm, "tag": tg, "value_double_bits": bits(vd),
         "value_int": None if vi is None else str(vi), "value_text": vt, "unit": u,
         "quality": q, "status": s, "metadata": None if m is None else json.loads(m)}
        for tm, tg, vd, vi, vt, u, q, s, m in zip(
            t.column("time").cast(pa.int64()).to_pylist(), col("tag"), col("value_double"),
            col("value_int"), col("value_text"), col("unit"), col("quality"), col("status"),
            col("metadata"))
    ]
"#;

/// Creates a bucket (`create`) or reads every object of it back (`read`) from an S3 endpoint.
const S3_PEER: &str = r#"
import io, json, sys
import boto3
import pyarrow.parquet as pq

endpoint, bucket, command = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
if command == "create":
    s3.create_bucket(Bucket=bucket)
    print("{}")
else:
    files = []
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        files.append({"path": obj["Key"], "rows": rows_of(pq.read_table(io.BytesIO(body)))})
    print(json.dumps({"files": files}))
"#;

fn run_python(script: &str, args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg("-c")
        .arg(format!("{ROWS_OF}\n{script}"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn read_back(dir: &Path) -> Value {
    run_python(READ_BACK, &[dir.to_str().unwrap()])
}

fn row_of(v: &Value) -> Row {
    Row {
        time_ns: v["time_ns"].as_u64().unwrap(),
        tag: v["tag"].as_str().unwrap().into(),
        value_double: v["value_double_bits"]
            .as_i64()
            .map(|b| f64::from_bits(b as u64)),
        value_int: v["value_int"].as_str().map(|s| s.parse().unwrap()),
        value_text: v["value_text"].as_str().map(Into::into),
        unit: v["unit"].as_str().unwrap().into(),
        quality: v["quality"].as_str().unwrap().into(),
        status: v["status"].as_i64().unwrap(),
        metadata: (!v["metadata"].is_null()).then(|| v["metadata"].clone()),
    }
}

fn all_rows(read: &Value) -> Vec<Row> {
    read["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["rows"].as_array().unwrap().iter().map(row_of))
        .collect()
}

fn files_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                pending.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn parquet_files_read_back_by_pyarrow_and_duckdb_hold_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let tags = tag_table(40);
    let mut config = ParquetSinkConfig::new(dir.path().join("warm"));
    config.row_group_rows = 500;
    config.max_file_bytes = 8 * 1024;
    let mut sink = ParquetSink::open("warm", &config).unwrap();
    // Sample n is at 22:13:20 + n ms. Three runs: 4000 samples from 22:13:20; 3000 around
    // 23:00:00 (batches that straddle the hour); 1000 at 01:00:20 the next day.
    let hour_23 = 2_800_000u64; // 46 min 40 s after the first sample
    let next_day = 10_020_000u64; // 2 h 47 min after
    let runs = [(0u64, 4000u64), (hour_23 - 1500, 3000), (next_day, 1000)];
    for (first, count) in runs {
        for b in 0..count / 500 {
            sink.write(&batch(first + b * 500, 500, &tags))
                .await
                .unwrap();
        }
    }
    let written: Vec<u64> = runs.iter().flat_map(|&(f, c)| f..f + c).collect();
    let count = written.len() as u64;
    // Before the sink closes its files, readers see only published files.
    let published_before_close = sink.published().len();
    assert!(
        !files_named(dir.path(), ".parquet.inprogress").is_empty(),
        "open files are written under a hidden in-progress name"
    );
    drop(sink); // closes and publishes the open files
    assert!(files_named(dir.path(), ".parquet.inprogress").is_empty());

    let read = read_back(&dir.path().join("warm"));
    let files = read["files"].as_array().unwrap();
    assert!(
        files.len() > published_before_close && published_before_close >= 2,
        "files must roll on size: {} published before close, {} in all",
        published_before_close,
        files.len()
    );
    let rows = all_rows(&read);
    assert_eq!(rows.len() as u64, count);
    assert_rows_are(&rows, written.iter().copied(), &tags, true);

    // Layout, partitions, schema, encodings.
    let mut partitions = std::collections::BTreeSet::new();
    for f in files {
        let path = f["path"].as_str().unwrap();
        let (partition, name) = path.rsplit_once('/').unwrap();
        partitions.insert(partition.to_string());
        assert!(
            name.starts_with("warm-") && name.ends_with(".parquet"),
            "{path}"
        );
        let types = &f["types"];
        assert_eq!(types["time"], "timestamp[ns, tz=UTC]");
        assert_eq!(types["tag"], "string");
        assert_eq!(types["value_double"], "double");
        assert_eq!(types["value_int"], "decimal128(20, 0)");
        assert_eq!(types["status"], "int64");
        for (column, chunk) in f["chunks"].as_object().unwrap() {
            assert_eq!(chunk["compression"], "ZSTD", "{path} {column}");
        }
        let tag_encodings = f["chunks"]["tag"]["encodings"].to_string();
        assert!(
            tag_encodings.contains("DICTIONARY"),
            "{path}: tag column not dictionary-encoded: {tag_encodings}"
        );
    }
    assert_eq!(
        partitions.into_iter().collect::<Vec<_>>(),
        [
            "date=2023-11-14/hour=22",
            "date=2023-11-14/hour=23",
            "date=2023-11-15/hour=01"
        ]
        .map(String::from)
        .to_vec(),
        "partitions by the samples' UTC hour"
    );
    let duck = read["duckdb"].as_array().unwrap();
    assert_eq!(duck[0], count, "DuckDB row count");
    assert_eq!(duck[1], count, "DuckDB distinct (tag, time)");
    assert_eq!(
        duck[2], 0,
        "rows whose time is outside their hive partition"
    );
}

/// SIGKILL a process writing Parquet files mid-stream: every visible file is complete and
/// holds exactly the samples written to it; the next start deletes the in-progress leftover.
#[test]
fn parquet_sigkill_during_write_leaves_only_valid_files() {
    let tags = tag_table(50);
    for attempt in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let warm = dir.path().join("warm");
        std::fs::create_dir_all(&warm).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_storage_parquet_writer"))
            .arg(&warm)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while files_named(&warm, ".parquet").len() < 3 {
            assert!(Instant::now() < deadline, "the writer published no files");
            assert!(child.try_wait().unwrap().is_none(), "the writer exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        // Every visible file reads completely; together they hold samples 0..n exactly once
        // (one partition, files closed in order), each as it was generated.
        let read = read_back(&warm);
        let rows = all_rows(&read);
        assert!(!rows.is_empty());
        let n = rows.len() as u64;
        assert_rows_are_samples(&rows, n, &tags, true);
        let published: Vec<PathBuf> = files_named(&warm, ".parquet");

        if files_named(&warm, ".parquet.inprogress").is_empty() {
            // Killed between closing a file and opening the next: not mid-write, try again.
            eprintln!("attempt {attempt}: no file was being written at the kill");
            continue;
        }

        // A restart removes the in-progress leftover and leaves the published files alone.
        let sink = ParquetSink::open("warm", &ParquetSinkConfig::new(&warm)).unwrap();
        drop(sink);
        assert!(files_named(&warm, ".parquet.inprogress").is_empty());
        assert_eq!(files_named(&warm, ".parquet"), published);
        return;
    }
    panic!("never killed the writer mid-file in 3 attempts");
}

/// Parquet into an S3-compatible store (moto): files written while the store is down wait
/// in the staging directory and are uploaded once it is up; files left staged at a stop are
/// uploaded by the next start; every row read back from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_to_s3_uploads_after_the_store_comes_back_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tags = tag_table(40);
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let config = |endpoint: &str| {
        let text = format!(
            "directory = \"staging\"\nmax_file_bytes = 8192\nrow_group_rows = 500\n\
             [s3]\nbucket = \"warm\"\nprefix = \"/site1/samples/\"\nendpoint = \"{endpoint}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n\
             allow_http = true\n"
        );
        let mut c: ParquetSinkConfig = toml::from_str(&text).unwrap();
        c.directory = dir.path().join("staging");
        c.validate().unwrap();
        c
    };
    let staging = dir.path().join("staging");

    // The store is down: files are published locally and wait.
    let mut sink = ParquetSink::open("warm", &config(&endpoint)).unwrap();
    for b in 0..6 {
        sink.write(&batch(b * 500, 500, &tags)).await.unwrap();
    }
    sink.close_all().unwrap();
    sink.flush().await.unwrap();
    assert!(sink.uploaded().is_empty());
    let waiting = sink.pending_uploads().len();
    assert!(waiting >= 2, "{waiting} files waiting");
    assert_eq!(files_named(&staging, ".parquet").len(), waiting);

    // The store comes up: the next flushes upload everything and empty the staging directory.
    let mut moto = Command::new(python());
    moto.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]);
    moto.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _moto = Peer::start(moto, port);
    run_python(S3_PEER, &[&endpoint, "warm", "create"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.pending_uploads().is_empty() {
        assert!(Instant::now() < deadline, "uploads still pending");
        tokio::time::sleep(Duration::from_millis(200)).await;
        sink.flush().await.unwrap();
    }
    assert_eq!(sink.uploaded().len(), waiting);
    assert!(files_named(&staging, ".parquet").is_empty());
    drop(sink);

    // A sink pointed at a dead endpoint stops with its files staged; the next start (the
    // right endpoint) uploads them.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut sink = ParquetSink::open("warm", &config(&dead)).unwrap();
    sink.write(&batch(3000, 1000, &tags)).await.unwrap();
    drop(sink);
    let staged = files_named(&staging, ".parquet").len();
    assert!(staged >= 1);
    let mut sink = ParquetSink::open("warm", &config(&endpoint)).unwrap();
    assert_eq!(sink.pending_uploads().len(), staged);
    sink.flush().await.unwrap();
    assert!(sink.pending_uploads().is_empty());
    assert!(files_named(&staging, ".parquet").is_empty());
    drop(sink);

    let read = run_python(S3_PEER, &[&endpoint, "warm", "read"]);
    for f in read["files"].as_array().unwrap() {
        let key = f["path"].as_str().unwrap();
        assert!(
            key.starts_with("site1/samples/date=2023-11-14/hour=22/warm-")
                && key.ends_with(".parquet"),
            "{key}"
        );
    }
    assert_eq!(read["files"].as_array().unwrap().len(), waiting + staged);
    assert_rows_are_samples(&all_rows(&read), 4000, &tags, true);
}

#[test]
fn parquet_directory_resolves_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[sources.plant]\ntype = \"simulator\"\n\n[sinks.warm]\ntype = \"parquet\"\n\
                directory = \"history\"\nzstd_level = 9\n";
    let cfg = HostConfig::from_text(text, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let SinkConfig::Parquet(p) = &cfg.sinks["warm"] else {
        panic!("not a parquet sink");
    };
    assert_eq!(p.directory, dir.path().join("history"));
    assert_eq!(p.zstd_level, 9);
    let errors = HostConfig::from_text(&text.replace("= 9", "= 30"), dir.path()).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.key == "sinks.warm.zstd_level" && e.line == Some(7)),
        "{errors:?}"
    );
}

/// The machine's PostgreSQL serves TLS with Debian's self-signed "snakeoil" certificate
/// (CN and SAN `localhost`), trusted here through `ca_file`: the sink's connection is
/// encrypted (the server says so) and the rows land; the same certificate presented for
/// another name (`127.0.0.1`) is refused.
#[tokio::test]
async fn postgres_tls_verifies_the_server_certificate() {
    const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    assert!(
        Path::new(SNAKEOIL).is_file(),
        "{SNAKEOIL} missing: PostgreSQL as scripts/peers installs it serves TLS with it"
    );
    let db = TestDatabase::create("tls").await;
    let tags = tag_table(20);
    let at = |host: &str| {
        let mut c = PostgresSinkConfig::new(format!(
            "host={host} hostaddr=127.0.0.1 port=5432 user=postgres dbname={}",
            db.name
        ));
        c.tls = true;
        c.ca_file = Some(SNAKEOIL.into());
        c.connect_timeout_s = 5;
        c
    };
    let mut wrong_name = PostgresSink::open("tls", &at("127.0.0.1")).unwrap();
    let refused = wrong_name
        .write(&batch(0, 100, &tags))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.to_lowercase().contains("certificate"),
        "not refused for its certificate: {refused}"
    );

    // Connect to 127.0.0.1, verify the certificate for the name `localhost`.
    let config = at("localhost");
    config.validate().unwrap();
    let mut sink = PostgresSink::open("tls", &config).unwrap();
    sink.write(&batch(0, 300, &tags)).await.unwrap();
    let encrypted: bool = db
        .client()
        .await
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'ferrule sink tls'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted, "the sink's connection is not encrypted");
    assert_rows_are_samples(&db.rows(TABLE).await, 300, &tags, true);

    // Without tls, asking for sslmode=require is a config error, not a silent plain connection.
    let mut plain = PostgresSinkConfig::new(format!("{} sslmode=require", config.connection));
    plain.tls = false;
    assert_eq!(plain.validate().unwrap_err().0, "connection");
}

/// A file that reaches `max_file_age_s` is published at the next flush (the sink gets one
/// whenever its queue runs empty), even with no new samples.
#[tokio::test]
async fn parquet_file_closes_on_age_at_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let tags = tag_table(10);
    let mut config = ParquetSinkConfig::new(dir.path());
    config.max_file_age_s = 1;
    let mut sink = ParquetSink::open("aged", &config).unwrap();
    sink.write(&batch(0, 300, &tags)).await.unwrap();
    sink.flush().await.unwrap();
    assert!(sink.published().is_empty(), "published before its age");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sink.flush().await.unwrap();
    assert_eq!(sink.published().len(), 1, "not published at its age");
    assert!(files_named(dir.path(), ".parquet.inprogress").is_empty());
    let read = read_back(dir.path());
    assert_rows_are_samples(&all_rows(&read), 300, &tags, true);
}

/// With `[sinks.hot.buffer]`, a database that cannot be reached fills the durable buffer (the
/// pipeline is not held back), the batches survive a restart of the host, and they are
/// written, every one once, when the database is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_behind_the_durable_buffer_waits_out_an_outage_and_a_restart() {
    let db = TestDatabase::create("buffered").await;
    let dir = tempfile::tempdir().unwrap();
    let (tags, scans) = (100u32, 30u64);
    let config = |connection: &str, scans: u64| {
        format!(
            r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
[admin]
enabled = false
[sources.plant]
type = "simulator"
tags = {tags}
scans = {scans}
interval_ms = 0
start_ns = {START_NS}
[sinks.hot]
type = "postgres"
connection = "{connection}"
connect_timeout_s = 1
[sinks.hot.buffer]
path = "hot.redb"
"#
        )
    };
    // No database listens on this port: everything stays buffered, the run still completes.
    let nowhere = format!("host=127.0.0.1 port={} user=postgres dbname=x", free_port());
    let cfg = HostConfig::from_text(&config(&nowhere, scans), dir.path()).unwrap();
    let status = runtime::start(&cfg).await.unwrap().wait().await.unwrap();
    let b = status.sinks["hot"].buffer.clone().unwrap();
    assert_eq!(status.produced["plant"], tags as u64 * scans);
    assert_eq!(b.depth_samples, tags as u64 * scans, "{b:?}");
    assert_eq!(status.written["hot"], 0);

    // Restart against the real database with a source that produces nothing new: the
    // buffered batches from the previous run are written.
    let cfg = HostConfig::from_text(&config(&db.connection(), 0), dir.path()).unwrap();
    let status = runtime::start(&cfg).await.unwrap().wait().await.unwrap();
    let b = status.sinks["hot"].buffer.clone().unwrap();
    assert_eq!(b.depth_samples, 0, "{b:?}");
    assert_eq!(status.written["hot"], tags as u64 * scans);
    let rows = db.rows(TABLE).await;
    assert_eq!(rows.len() as u64, tags as u64 * scans);
    let distinct: std::collections::HashSet<(String, u64)> =
        rows.iter().map(|r| (r.tag.clone(), r.time_ns)).collect();
    assert_eq!(distinct.len(), rows.len());
}
