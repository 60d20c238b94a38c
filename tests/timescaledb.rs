//! The PostgreSQL sink against PostgreSQL 15 with TimescaleDB 2.28.3 (built and installed by
//! `scripts/timescaledb`): each test starts its own cluster with the extension preloaded on a
//! free port (`ferrule_tests::timescale`). The sink is driven through its public API, as in
//! `tests/storage.rs`; what lands is read back with plain SQL and compared with the samples
//! it came from, row by row and by exact counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrule::model::TagTable;
use ferrule::sinks::postgres::{PostgresSink, PostgresSinkConfig, WriteMethod};
use ferrule::sinks::Sink;
use ferrule_tests::storage::{
    assert_rows_are, assert_rows_are_samples, batch, sample, tag_table, START_NS, STEP_NS,
};
use ferrule_tests::timescale::{count, rows, TimescaleCluster, TIMESCALEDB_VERSION};

const TABLE: &str = "ferrule_samples";

fn sink(connection: &str, method: WriteMethod, chunk_interval: &str) -> PostgresSink {
    let mut c = PostgresSinkConfig::new(connection);
    c.method = method;
    c.chunk_interval = chunk_interval.into();
    PostgresSink::open("hot", &c).unwrap()
}

/// Writes samples `first..first + rows` in batches of at most 10 000.
async fn write(sink: &mut PostgresSink, first: u64, rows: u64, tags: &Arc<TagTable>) {
    let mut n = first;
    while n < first + rows {
        let len = (first + rows - n).min(10_000);
        sink.write(&batch(n, len as usize, tags)).await.unwrap();
        n += len;
    }
}

/// Sample times are in microseconds since the Unix epoch in the database.
fn micros(n: u64) -> i64 {
    ((START_NS + n * STEP_NS) / 1_000) as i64
}

/// The hypertable's chunks, oldest first: (qualified name, range start µs, range end µs,
/// compressed).
async fn chunks(client: &tokio_postgres::Client) -> Vec<(String, i64, i64, bool)> {
    client
        .query(
            "SELECT format('%I.%I', chunk_schema, chunk_name), \
             (extract(epoch FROM range_start) * 1000000)::int8, \
             (extract(epoch FROM range_end) * 1000000)::int8, is_compressed \
             FROM timescaledb_information.chunks WHERE hypertable_name = $1 \
             ORDER BY range_start",
            &[&TABLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Asserts TimescaleDB lists `ferrule_samples` as a hypertable partitioned on `time` in
/// chunks of `interval` (as PostgreSQL prints it), with no row left in the parent table.
async fn assert_hypertable(client: &tokio_postgres::Client, interval: &str) {
    let dims = client
        .query(
            "SELECT d.column_name::text, d.time_interval::text \
             FROM timescaledb_information.hypertables h \
             JOIN timescaledb_information.dimensions d \
               ON d.hypertable_schema = h.hypertable_schema AND d.hypertable_name = h.hypertable_name \
             WHERE h.hypertable_schema = 'public' AND h.hypertable_name = $1",
            &[&TABLE],
        )
        .await
        .unwrap();
    let dims: Vec<(String, Option<String>)> = dims.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        dims,
        [("time".to_string(), Some(interval.to_string()))],
        "timescaledb_information lists {TABLE} as a hypertable on time"
    );
    assert_eq!(
        count(client, &format!("ONLY {TABLE}")).await,
        0,
        "rows in the hypertable's parent table instead of its chunks"
    );
}

/// On first connect the sink makes its new table a hypertable (the configured chunk
/// interval); every sample lands once, exactly as given, in the chunks its time falls in; a
/// restarted sink reconnects to the existing hypertable and its replay adds nothing.
#[tokio::test]
async fn the_sink_makes_a_hypertable_and_every_row_lands_in_its_chunks() {
    let cluster = TimescaleCluster::start();
    for (method, db) in [(WriteMethod::Copy, "copy"), (WriteMethod::Insert, "insert")] {
        let connection = cluster.create_database(db, true).await;
        let client = cluster.client(db).await;
        let version: String = client
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, TIMESCALEDB_VERSION);

        // 150 000 samples 1 ms apart from 22:13:20: three 1-minute chunks.
        let tags = tag_table(40);
        let total = 150_000;
        let mut sink = sink(&connection, method, "1 minute");
        write(&mut sink, 0, total, &tags).await;
        assert!(
            sink.is_hypertable(),
            "{method:?}: the sink saw no TimescaleDB"
        );
        assert_hypertable(&client, "00:01:00").await;
        assert_eq!(count(&client, TABLE).await, total as i64, "{method:?}");
        assert_rows_are_samples(&rows(&client, TABLE).await, total, &tags, true);

        // Each chunk is one minute and holds exactly the samples of its minute.
        let layout = chunks(&client).await;
        let minutes: Vec<i64> = {
            let mut m: Vec<i64> = (0..total)
                .map(|n| micros(n).div_euclid(60_000_000))
                .collect();
            m.dedup();
            m
        };
        assert_eq!(layout.len(), minutes.len(), "{method:?}: {layout:?}");
        for ((name, start, end, compressed), minute) in layout.iter().zip(&minutes) {
            assert_eq!(
                (*start, *end),
                (minute * 60_000_000, (minute + 1) * 60_000_000)
            );
            assert!(!compressed);
            let want = (0..total)
                .filter(|n| (*start..*end).contains(&micros(*n)))
                .count() as i64;
            assert_eq!(count(&client, name).await, want, "{method:?}: chunk {name}");
        }

        // Restart: a new sink finds the hypertable in place; its replay adds no rows.
        drop(sink);
        let mut restarted = self::sink(&connection, method, "1 minute");
        write(&mut restarted, 40_000, 20_000, &tags).await;
        assert!(restarted.is_hypertable());
        assert_eq!(
            count(&client, TABLE).await,
            total as i64,
            "{method:?}: replay"
        );
        assert_eq!(chunks(&client).await.len(), minutes.len());
    }
}

/// A table the sink created on plain PostgreSQL (no extension in the database yet) becomes a
/// hypertable when the sink reconnects after the DBA installed TimescaleDB; its rows move
/// into chunks (migrate_data) and the replay that follows adds only the new samples.
#[tokio::test]
async fn an_existing_plain_table_becomes_a_hypertable_with_its_rows() {
    let cluster = TimescaleCluster::start();
    let connection = cluster.create_database("migrate", false).await;
    let client = cluster.client("migrate").await;
    let tags = tag_table(30);
    let mut plain = sink(&connection, WriteMethod::Copy, "1 minute");
    write(&mut plain, 0, 50_000, &tags).await;
    assert!(!plain.is_hypertable());
    assert_eq!(count(&client, &format!("ONLY {TABLE}")).await, 50_000);
    drop(plain);

    client
        .batch_execute("CREATE EXTENSION timescaledb")
        .await
        .unwrap();
    let mut sink = sink(&connection, WriteMethod::Copy, "1 minute");
    // Replays the last 10 000 rows and adds 30 000 new ones.
    write(&mut sink, 40_000, 40_000, &tags).await;
    assert!(sink.is_hypertable());
    assert_hypertable(&client, "00:01:00").await;
    assert_eq!(count(&client, TABLE).await, 80_000);
    assert_rows_are_samples(&rows(&client, TABLE).await, 80_000, &tags, true);
}

/// One row of the README's `samples_1m` continuous aggregate.
#[derive(Clone, Debug, PartialEq)]
struct Minute {
    avg: f64,
    min: f64,
    max: f64,
    samples: i64,
    not_good: i64,
}

/// `samples_1m` computed here from the generated samples, as the README's view defines it:
/// per tag and minute, over the samples with a value that is neither NULL (text) nor NaN.
/// The sum is kept exactly (every generated value is a multiple of 0.25).
fn rollup(
    samples: impl IntoIterator<Item = u64>,
    tags: &TagTable,
) -> BTreeMap<(String, i64), Minute> {
    let mut sums: BTreeMap<(String, i64), (i128, Minute)> = BTreeMap::new();
    for n in samples {
        let (tag, value, quality, time, extra) = sample(n, tags.len() as u32);
        let is_text = matches!(extra, Some(ferrule::model::ExtraValue::Text(_)));
        if is_text || value.is_nan() {
            continue;
        }
        let path = tags[tag as usize].as_ref().unwrap().path.clone();
        let minute = ((time / 1_000) as i64).div_euclid(60_000_000) * 60;
        let (sum, m) = sums.entry((path, minute)).or_insert((
            0,
            Minute {
                avg: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                samples: 0,
                not_good: 0,
            },
        ));
        assert_eq!(value * 4.0, (value * 4.0).trunc());
        *sum += (value * 4.0) as i128;
        m.min = m.min.min(value);
        m.max = m.max.max(value);
        m.samples += 1;
        m.not_good += i64::from(quality >> 30 != 0);
    }
    sums.into_iter()
        .map(|(k, (sum, mut m))| {
            m.avg = sum as f64 / 4.0 / m.samples as f64;
            (k, m)
        })
        .collect()
}

/// The README's `samples_1m` as materialized, keyed by (tag, bucket start in Unix seconds).
async fn samples_1m(client: &tokio_postgres::Client) -> BTreeMap<(String, i64), Minute> {
    client
        .query(
            "SELECT tag, extract(epoch FROM bucket)::int8, avg, min, max, samples, not_good \
             FROM samples_1m",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                Minute {
                    avg: r.get(2),
                    min: r.get(3),
                    max: r.get(4),
                    samples: r.get(5),
                    not_good: r.get(6),
                },
            )
        })
        .collect()
}

fn assert_aggregate_is(
    got: &BTreeMap<(String, i64), Minute>,
    want: &BTreeMap<(String, i64), Minute>,
) {
    let got_keys: Vec<_> = got.keys().collect();
    let want_keys: Vec<_> = want.keys().collect();
    assert_eq!(got_keys, want_keys, "(tag, bucket) rows of samples_1m");
    for (key, w) in want {
        let g = &got[key];
        assert_eq!(
            (g.samples, g.not_good, g.min, g.max),
            (w.samples, w.not_good, w.min, w.max),
            "{key:?}"
        );
        assert!(
            (g.avg - w.avg).abs() <= 1e-12 * w.avg.abs().max(1.0),
            "{key:?}: avg {} != {}",
            g.avg,
            w.avg
        );
    }
}

/// The continuous aggregate the README documents, taken from the README itself and created
/// over the sink's hypertable; refreshed, it holds exactly the per-tag, per-minute counts,
/// minima, maxima and averages computed here from the samples. Samples the sink writes into
/// already materialized minutes (late data, and a replay of stored rows) are picked up by the
/// next refresh, and the replay changes nothing.
#[tokio::test]
async fn the_readme_continuous_aggregate_matches_an_independent_rollup() {
    let cluster = TimescaleCluster::start();
    let connection = cluster.create_database("cagg", true).await;
    let client = cluster.client("cagg").await;
    // 17 tags: tag = n mod 17 fixes each tag's kind of value (the generator picks it by
    // n mod 17), so no tag mixes ±2^63-sized values with small ones and PostgreSQL's float
    // average is exact; tags 5 (text) and 13 (NaN) have no row in the aggregate.
    let tags = tag_table(17);
    let mut sink = sink(&connection, WriteMethod::Copy, "1 day");
    // Minutes 22:13 (from :20), 22:14 and 22:15, with samples 20 000..30 000 (22:13:40 to
    // 22:13:50) held back.
    write(&mut sink, 0, 20_000, &tags).await;
    write(&mut sink, 30_000, 120_000, &tags).await;
    assert!(sink.is_hypertable());

    let readme = std::fs::read_to_string(ferrule_tests::repo_root().join("README.md")).unwrap();
    let start = readme
        .find("CREATE MATERIALIZED VIEW samples_1m")
        .expect("the README documents the samples_1m continuous aggregate");
    let end = start + readme[start..].find("```").unwrap();
    for statement in readme[start..end].split(';').map(str::trim) {
        if !statement.is_empty() {
            client
                .batch_execute(statement)
                .await
                .unwrap_or_else(|e| panic!("README statement failed: {statement}\n{e:?}"));
        }
    }
    let refresh = "CALL refresh_continuous_aggregate('samples_1m', NULL, NULL)";
    client.batch_execute(refresh).await.unwrap();
    let written = (0..20_000).chain(30_000..150_000);
    let want = rollup(written, &tags);
    assert_eq!(want.len(), 15 * 3, "15 tags with values, 3 minutes");
    assert_aggregate_is(&samples_1m(&client).await, &want);

    // Late samples into the materialized minute 22:13, a replay of stored ones, and a new
    // minute (22:16).
    write(&mut sink, 20_000, 10_000, &tags).await;
    write(&mut sink, 0, 40_000, &tags).await;
    write(&mut sink, 150_000, 60_000, &tags).await;
    assert_eq!(count(&client, TABLE).await, 210_000);
    client.batch_execute(refresh).await.unwrap();
    let want = rollup(0..210_000, &tags);
    assert_eq!(want.len(), 15 * 4);
    assert_aggregate_is(&samples_1m(&client).await, &want);
}

/// Compression: with the first chunk compressed, the same batches replayed through the sink
/// add no rows (the (tag, time) key holds inside compressed chunks), new samples whose time
/// falls in the compressed chunk still land, and after recompressing it every sample is there
/// once with its value. Both write methods (COPY with its conflict fallback, and INSERT … ON
/// CONFLICT DO NOTHING).
#[tokio::test]
async fn a_replay_into_a_compressed_chunk_adds_no_rows_and_new_rows_still_land() {
    let cluster = TimescaleCluster::start();
    for (method, db) in [(WriteMethod::Copy, "copy"), (WriteMethod::Insert, "insert")] {
        let connection = cluster.create_database(db, true).await;
        let client = cluster.client(db).await;
        let tags = tag_table(40);
        let mut sink = sink(&connection, method, "1 minute");
        // Chunk 22:13 gets samples 0..20 000 and 30 000..40 000 (a hole at 22:13:40-50),
        // chunk 22:14 gets 40 000..100 000.
        write(&mut sink, 0, 20_000, &tags).await;
        write(&mut sink, 30_000, 70_000, &tags).await;
        assert_eq!(count(&client, TABLE).await, 90_000);

        client
            .batch_execute(&format!(
                "ALTER TABLE {TABLE} SET (timescaledb.compress, \
                 timescaledb.compress_segmentby = 'tag', timescaledb.compress_orderby = 'time DESC')"
            ))
            .await
            .unwrap();
        let (first, start, end, _) = chunks(&client).await.remove(0);
        assert!(start <= micros(0) && micros(39_999) < end && micros(40_000) >= end);
        let compress = format!("SELECT compress_chunk('{first}')");
        client.batch_execute(&compress).await.unwrap();
        let state = chunks(&client).await;
        assert!(
            state[0].3,
            "{method:?}: first chunk not compressed: {state:?}"
        );
        assert!(!state[1].3);
        assert_eq!(count(&client, TABLE).await, 90_000);

        // Replays into the compressed chunk: on this connection, then from a restarted sink.
        write(&mut sink, 0, 20_000, &tags).await;
        assert_eq!(count(&client, TABLE).await, 90_000, "{method:?}: replay");
        write(&mut sink, 30_000, 10_000, &tags).await;
        assert_eq!(count(&client, TABLE).await, 90_000, "{method:?}: replay");
        drop(sink);
        let mut sink = self::sink(&connection, method, "1 minute");
        write(&mut sink, 0, 20_000, &tags).await;
        assert_eq!(
            count(&client, TABLE).await,
            90_000,
            "{method:?}: replay after restart"
        );

        // New samples in the compressed chunk's time range land; a replay overlapping them
        // and the compressed rows adds nothing.
        write(&mut sink, 20_000, 10_000, &tags).await;
        assert_eq!(
            count(&client, TABLE).await,
            100_000,
            "{method:?}: hole filled"
        );
        write(&mut sink, 10_000, 30_000, &tags).await;
        assert_eq!(count(&client, TABLE).await, 100_000, "{method:?}: overlap");
        assert_eq!(
            count(&client, &first).await,
            40_000,
            "{method:?}: rows of the compressed chunk"
        );
        assert_rows_are_samples(&rows(&client, TABLE).await, 100_000, &tags, true);

        // Recompressed (the replays and new rows left part of it uncompressed), the chunk
        // still holds each sample once; one more replay against it adds nothing.
        let recompress = format!("SELECT compress_chunk('{first}', if_not_compressed => true)");
        client.batch_execute(&recompress).await.unwrap();
        assert!(chunks(&client).await[0].3);
        write(&mut sink, 0, 40_000, &tags).await;
        assert_eq!(count(&client, TABLE).await, 100_000, "{method:?}: replay");
        assert_rows_are(&rows(&client, &first).await, 0..40_000, &tags, true);
    }
}
