//! Chooses the store-and-forward buffer's storage engine by measuring the buffer's own
//! workload on redb, fjall and SQLite in one run: append records of 1024 encoded samples
//! (24 bytes each) with a durable (fsync'd) commit per group of records, then replay them in
//! order and delete each acknowledged group with a durable commit.
//!
//! Run: `cargo run --release -p ferrule-bench-buffer-engines [-- RECORDS GROUP]`

use std::time::{Duration, Instant};

const SAMPLES_PER_RECORD: usize = 1024;
const SAMPLE_BYTES: usize = 24;

fn record(seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(SAMPLES_PER_RECORD * SAMPLE_BYTES);
    for i in 0..SAMPLES_PER_RECORD as u64 {
        out.extend_from_slice(&((seq * 1024 + i) as u32 % 30_000).to_le_bytes());
        out.extend_from_slice(&((i as f64) * 1.25 + seq as f64).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(1_764_000_000_000_000_000 + seq * 1_000_000_000).to_le_bytes());
    }
    out
}

trait Engine {
    fn name(&self) -> &'static str;
    fn append(&mut self, records: &[(u64, Vec<u8>)]);
    /// Reads up to `n` records from `from` in order; returns their (seq, len).
    fn read(&mut self, from: u64, n: usize) -> Vec<(u64, usize)>;
    fn remove_through(&mut self, from: u64, through: u64);
}

struct Redb {
    db: redb::Database,
}
const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("records");

impl Engine for Redb {
    fn name(&self) -> &'static str {
        "redb 4.6"
    }
    fn append(&mut self, records: &[(u64, Vec<u8>)]) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for (k, v) in records {
                t.insert(k, v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn read(&mut self, from: u64, n: usize) -> Vec<(u64, usize)> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(TABLE).unwrap();
        t.range(from..)
            .unwrap()
            .take(n)
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value(), std::hint::black_box(v.value()).len())
            })
            .collect()
    }
    fn remove_through(&mut self, from: u64, through: u64) {
        let tx = self.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            t.retain_in(from..=through, |_, _| false).unwrap();
        }
        tx.commit().unwrap();
    }
}

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Engine for Fjall {
    fn name(&self) -> &'static str {
        "fjall 3.1"
    }
    fn append(&mut self, records: &[(u64, Vec<u8>)]) {
        let mut b = self.db.batch();
        for (k, v) in records {
            b.insert(&self.ks, k.to_be_bytes(), v.as_slice());
        }
        b.commit().unwrap();
        self.db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    fn read(&mut self, from: u64, n: usize) -> Vec<(u64, usize)> {
        self.ks
            .range(from.to_be_bytes()..)
            .take(n)
            .map(|g| {
                let (k, v) = g.into_inner().unwrap();
                (
                    u64::from_be_bytes(k.as_ref().try_into().unwrap()),
                    std::hint::black_box(v).len(),
                )
            })
            .collect()
    }
    fn remove_through(&mut self, from: u64, through: u64) {
        let mut b = self.db.batch();
        for k in from..=through {
            b.remove(&self.ks, k.to_be_bytes());
        }
        b.commit().unwrap();
        self.db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
}

struct Sqlite {
    conn: rusqlite::Connection,
}

impl Engine for Sqlite {
    fn name(&self) -> &'static str {
        "SQLite (WAL, synchronous=FULL)"
    }
    fn append(&mut self, records: &[(u64, Vec<u8>)]) {
        let tx = self.conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare("INSERT INTO records(seq, data) VALUES (?1, ?2)")
                .unwrap();
            for (k, v) in records {
                st.execute(rusqlite::params![*k as i64, v]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn read(&mut self, from: u64, n: usize) -> Vec<(u64, usize)> {
        let mut st = self
            .conn
            .prepare("SELECT seq, data FROM records WHERE seq >= ?1 ORDER BY seq LIMIT ?2")
            .unwrap();
        st.query_map(rusqlite::params![from as i64, n as i64], |r| {
            let k: i64 = r.get(0)?;
            let v: Vec<u8> = r.get(1)?;
            Ok((k as u64, std::hint::black_box(v).len()))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
    }
    fn remove_through(&mut self, from: u64, through: u64) {
        self.conn
            .execute(
                "DELETE FROM records WHERE seq BETWEEN ?1 AND ?2",
                rusqlite::params![from as i64, through as i64],
            )
            .unwrap();
    }
}

fn rate(records: usize, took: Duration) -> f64 {
    (records * SAMPLES_PER_RECORD) as f64 / took.as_secs_f64()
}

fn run(engine: &mut dyn Engine, records: usize, group: usize) -> (f64, f64) {
    let data: Vec<(u64, Vec<u8>)> = (0..records as u64).map(|s| (s, record(s))).collect();
    let t = Instant::now();
    for chunk in data.chunks(group) {
        engine.append(chunk);
    }
    let write = rate(records, t.elapsed());
    let t = Instant::now();
    let mut next = 0u64;
    let mut seen = 0;
    loop {
        let got = engine.read(next, group);
        if got.is_empty() {
            break;
        }
        seen += got.len();
        let last = got.last().unwrap().0;
        engine.remove_through(next, last);
        next = last + 1;
    }
    assert_eq!(seen, records, "{} lost records", engine.name());
    let replay = rate(records, t.elapsed());
    (write, replay)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let records = args.first().copied().unwrap_or(2000);
    let group = args.get(1).copied().unwrap_or(8);
    println!(
        "{records} records x {SAMPLES_PER_RECORD} samples x {SAMPLE_BYTES} B, durable commit per {group} records"
    );
    for round in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut engines: Vec<Box<dyn Engine>> = vec![
            Box::new(Redb {
                db: redb::Database::create(dir.path().join("b.redb")).unwrap(),
            }),
            {
                let db = fjall::Database::builder(dir.path().join("fjall"))
                    .open()
                    .unwrap();
                let ks = db
                    .keyspace("records", fjall::KeyspaceCreateOptions::default)
                    .unwrap();
                Box::new(Fjall { db, ks })
            },
            {
                let conn = rusqlite::Connection::open(dir.path().join("b.sqlite")).unwrap();
                conn.execute_batch(
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
                     CREATE TABLE records(seq INTEGER PRIMARY KEY, data BLOB NOT NULL);",
                )
                .unwrap();
                Box::new(Sqlite { conn })
            },
        ];
        for e in engines.iter_mut() {
            let (w, r) = run(e.as_mut(), records, group);
            println!(
                "round {round} {:<32} write {:>6.2} M samples/s   replay+delete {:>6.2} M samples/s",
                e.name(),
                w / 1e6,
                r / 1e6
            );
        }
    }
}
