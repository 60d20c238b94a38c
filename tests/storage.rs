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
use ferrule::pipeline;
use ferrule::sinks::parquet::{ParquetSink, ParquetSinkConfig};
use ferrule::sinks::postgres::{PostgresSink, PostgresSinkConfig, WriteMethod};
use ferrule::sinks::{Sink, SinkConfig};
use ferrule::sources::simulator::{describe_tag, sample, SimulatorConfig};
use ferrule_tests::peers::python;
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
    let running = pipeline::start(&cfg).await.unwrap();

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
import glob, json, math, os, struct, sys
import pyarrow as pa, pyarrow.parquet as pq
import duckdb

root = sys.argv[1]
files = []
for path in sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True)):
    f = pq.ParquetFile(path)
    t = f.read()
    col = lambda n: t.column(n).to_pylist()
    bits = lambda v: None if v is None else struct.unpack("<q", struct.pack("<d", v))[0]
    rows = [
        {"time_ns": tm, "tag": tg, "value_double_bits": bits(vd),
         "value_int": None if vi is None else str(vi), "value_text": vt, "unit": u,
         "quality": q, "status": s, "metadata": None if m is None else json.loads(m)}
        for tm, tg, vd, vi, vt, u, q, s, m in zip(
            t.column("time").cast(pa.int64()).to_pylist(), col("tag"), col("value_double"),
            col("value_int"), col("value_text"), col("unit"), col("quality"), col("status"),
            col("metadata"))
    ]
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
        "rows": rows,
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

fn read_back(dir: &Path) -> Value {
    let out = Command::new(python())
        .arg("-c")
        .arg(READ_BACK)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading back failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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
        let leftovers = files_named(&warm, ".parquet.inprogress");
        if leftovers.is_empty() {
            // Killed between closing a file and opening the next: not mid-write, try again.
            eprintln!("attempt {attempt}: no file was being written at the kill");
            continue;
        }

        // Every visible file reads completely; together they hold samples 0..n exactly once
        // (one partition, files closed in order), each as it was generated.
        let read = read_back(&warm);
        let rows = all_rows(&read);
        assert!(!rows.is_empty());
        let n = rows.len() as u64;
        assert_rows_are_samples(&rows, n, &tags, true);
        let published: Vec<PathBuf> = files_named(&warm, ".parquet");

        // A restart removes the in-progress leftover and leaves the published files alone.
        let sink = ParquetSink::open("warm", &ParquetSinkConfig::new(&warm)).unwrap();
        drop(sink);
        assert!(files_named(&warm, ".parquet.inprogress").is_empty());
        assert_eq!(files_named(&warm, ".parquet"), published);
        return;
    }
    panic!("never killed the writer mid-file in 3 attempts");
}
