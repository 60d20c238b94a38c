//! The storage sinks: rows/s into PostgreSQL by binary COPY (the sink's default: COPY straight
//! into the table; a batch that hits the key goes through a staging table and INSERT … ON
//! CONFLICT DO NOTHING, timed as "replay") and by batched multi-row INSERT … ON CONFLICT, in
//! one run against the same server; then rows/s and bytes per row for Parquet; last, the file
//! sink alone with `fsync = "batch"` against `fsync = "interval"` (flush after every batch).
//!
//! Data: a simulated plant of 5 000 tags (the simulator's paths, units and values), 1 Hz
//! scans, batches of 5 000 samples, tag metadata (asset id, line) on every row.
//!
//! Run: `cargo bench -p ferrule --bench storage` (PostgreSQL at FERRULE_BENCH_PG, default
//! `host=127.0.0.1 port=5432 user=postgres`; the bench creates and drops its own database).

use std::sync::Arc;
use std::time::Instant;

use ferrule::model::SampleBatch;
use ferrule::model::{OutputBatch, ResolvedTag, TagTable};
use ferrule::sinks::file::{FileSink, FileSinkConfig, FsyncPolicy};
use ferrule::sinks::parquet::{ParquetSink, ParquetSinkConfig};
use ferrule::sinks::postgres::{PostgresSink, PostgresSinkConfig, WriteMethod};
use ferrule::sinks::Sink;
use ferrule::sources::simulator::{describe_tag, sample, SimulatorConfig};

const TAGS: u32 = 5_000;
const BATCH: usize = 5_000;
const START_NS: u64 = 1_764_000_000_000_000_000;

fn tag_table(sim: &SimulatorConfig) -> Arc<TagTable> {
    Arc::new(
        (0..TAGS)
            .map(|i| {
                let d = describe_tag(sim, "plant", i);
                let mut metadata = d.metadata.clone();
                metadata.push(("asset_id".into(), format!("A-{:05}", i / 8)));
                metadata.push(("line".into(), format!("L{}", i % 6 + 1)));
                Some(Arc::new(ResolvedTag {
                    id: i,
                    source: d.source.clone(),
                    path: d.vendor_path.to_lowercase().replace('.', "/"),
                    vendor_path: d.vendor_path,
                    unit: d.unit,
                    data_type: d.data_type,
                    metadata,
                }))
            })
            .collect(),
    )
}

/// Batches covering `rows` samples: scan after scan of every tag, 1 s apart.
fn batches(sim: &SimulatorConfig, tags: &Arc<TagTable>, rows: usize) -> Vec<OutputBatch> {
    let mut out = Vec::new();
    let mut n = 0u64;
    while (n as usize) < rows {
        let mut samples = SampleBatch::with_capacity(BATCH);
        for _ in 0..BATCH {
            let (tag, scan) = ((n % TAGS as u64) as u32, n / TAGS as u64);
            let (value, quality) = sample(sim, tag, scan);
            samples.push(tag, value, quality, START_NS + scan * 1_000_000_000);
            n += 1;
        }
        out.push(OutputBatch::new(samples, tags.clone()));
    }
    out
}

async fn pg(conn: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at `{conn}`: {e}"));
    tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
}

/// Writes every batch through a fresh PostgreSQL sink into `table`; returns rows/s.
async fn postgres_rate(conn: &str, table: &str, method: WriteMethod, data: &[OutputBatch]) -> f64 {
    let mut config = PostgresSinkConfig::new(conn);
    config.table = table.into();
    config.method = method;
    let mut sink = PostgresSink::open(table, &config).unwrap();
    // Connect and create the table outside the timing.
    sink.write(&data[0]).await.unwrap();
    let t0 = Instant::now();
    for b in &data[1..] {
        sink.write(b).await.unwrap();
    }
    let rows: usize = data[1..].iter().map(|b| b.samples.len()).sum();
    rows as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sim = SimulatorConfig {
        tags: TAGS,
        ..SimulatorConfig::default()
    };
    let tags = tag_table(&sim);
    rt.block_on(async {
        let server = std::env::var("FERRULE_BENCH_PG")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into());
        let db = format!("ferrule_bench_{}", std::process::id());
        pg(&format!("{server} dbname=postgres"), &format!("CREATE DATABASE {db}")).await;
        let conn = format!("{server} dbname={db}");

        let rows = 400_000;
        let data = batches(&sim, &tags, rows + BATCH);
        println!("PostgreSQL 5 000 tags, batches of {BATCH}, metadata JSONB on every row, {rows} rows timed per run:");
        // Alternate the methods, each into a fresh table, so neither gets the warmer server.
        let mut copy = Vec::new();
        let mut insert = Vec::new();
        for round in 0..2 {
            copy.push(postgres_rate(&conn, &format!("copy_{round}"), WriteMethod::Copy, &data).await);
            insert.push(
                postgres_rate(&conn, &format!("insert_{round}"), WriteMethod::Insert, &data).await,
            );
        }
        let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
        let (c, i) = (best(&copy), best(&insert));
        println!("  binary COPY (direct; staging on a key hit): {:>9.0} rows/s  (runs: {:.0?})", c, copy);
        println!("  multi-row INSERT ON CONFLICT (1000 rows/stmt): {:>9.0} rows/s  (runs: {:.0?})", i, insert);
        println!("  COPY / INSERT: {:.2}x", c / i);
        // Replay: the same batches again add nothing; time the no-op rewrite.
        let mut config = PostgresSinkConfig::new(&conn);
        config.table = "copy_0".into();
        let mut sink = PostgresSink::open("replay", &config).unwrap();
        sink.write(&data[0]).await.unwrap();
        let t0 = Instant::now();
        for b in &data[1..] {
            sink.write(b).await.unwrap();
        }
        println!(
            "  replay of the same {rows} rows by COPY (all conflicts, nothing added): {:.0} rows/s",
            rows as f64 / t0.elapsed().as_secs_f64()
        );
        drop(sink);
        pg(
            &format!("{server} dbname=postgres"),
            &format!("DROP DATABASE {db} WITH (FORCE)"),
        )
        .await;

        // Parquet: 2 M rows into a local directory with the default settings.
        let rows = 2_000_000;
        let data = batches(&sim, &tags, rows);
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ParquetSink::open("bench", &ParquetSinkConfig::new(dir.path())).unwrap();
        let t0 = Instant::now();
        for b in &data {
            sink.write(b).await.unwrap();
        }
        sink.close_all().unwrap();
        let elapsed = t0.elapsed().as_secs_f64();
        let bytes: u64 = sink
            .published()
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        println!("Parquet, same data, default settings (zstd 3, row groups of 65 536), {rows} rows:");
        println!(
            "  {:.0} rows/s; {} files, {:.2} bytes/row (with metadata)",
            rows as f64 / elapsed,
            sink.published().len(),
            bytes as f64 / rows as f64
        );
        let dir = tempfile::tempdir().unwrap();
        let mut config = ParquetSinkConfig::new(dir.path());
        config.include_metadata = false;
        let mut sink = ParquetSink::open("bench", &config).unwrap();
        let t0 = Instant::now();
        for b in &data {
            sink.write(b).await.unwrap();
        }
        sink.close_all().unwrap();
        let elapsed = t0.elapsed().as_secs_f64();
        let bytes: u64 = sink
            .published()
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        println!(
            "  without the metadata column: {:.0} rows/s, {:.2} bytes/row",
            rows as f64 / elapsed,
            bytes as f64 / rows as f64
        );

        // File sink alone: each batch of 5 000 rendered, then flushed (append + fsync per
        // policy), as a sink whose queue runs empty after every batch; alternated.
        let rows = 400_000;
        let data = &data[..rows / BATCH];
        let file_rate = |fsync: FsyncPolicy| {
            let data = &data;
            async move {
                let dir = tempfile::tempdir().unwrap();
                let mut config = FileSinkConfig::new(dir.path().join("samples.jsonl"));
                config.include_metadata = true;
                config.fsync = fsync;
                let mut sink = FileSink::open("bench", &config).unwrap();
                let t0 = Instant::now();
                for b in data.iter() {
                    Sink::write(&mut sink, b).await.unwrap();
                    Sink::flush(&mut sink).await.unwrap();
                }
                rows as f64 / t0.elapsed().as_secs_f64()
            }
        };
        let (mut batch, mut interval) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            batch.push(file_rate(FsyncPolicy::Batch).await);
            interval.push(file_rate(FsyncPolicy::Interval).await);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!("File sink alone (JSON lines with metadata), batches of {BATCH}, flush after each, {rows} rows per run:");
        println!("  fsync = \"batch\":    {:>9.0} rows/s  (runs: {:.0?})", mean(&batch), batch);
        println!("  fsync = \"interval\": {:>9.0} rows/s  (runs: {:.0?})", mean(&interval), interval);
        println!("  batch/interval: {:.2}x", mean(&batch) / mean(&interval));
    });
}
