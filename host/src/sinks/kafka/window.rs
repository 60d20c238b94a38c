//! Keeping the Kafka sink's dedup window across a restart. Two ways, measured against each
//! other (`host/benches/accounting.rs`, README):
//! - `durable`: every flush appends the entries it added to a local redb database as one
//!   segment, together with the next offset per topic-partition the sink had written up to
//!   (the checkpoint); old segments are deleted as they leave the window. At start the
//!   segments are loaded and only the records written after the checkpoint are read back
//!   from Kafka — the ones a crash left between Kafka's acknowledgment and the next flush.
//! - `topics`: the whole window is read back from the tail of the topics the sink writes
//!   (records newer than `window_s`).
//!
//! Either way Kafka is the truth for what reached it, so a redelivered sample already in
//! Kafka is dropped, and one that never reached it is not (no loss by remembering too much).
//!
//! The same file keeps the sink's record numbering (`ferrule-seq` per topic-partition) and
//! its epoch (the file's identity); the tail read also finds the highest number the sink
//! wrote after the checkpoint, so numbering continues exactly after a crash.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::dedup::{self, Entry};

/// Segment number → `[n entries × (key, content, at_ns)]`, little-endian u64s.
const SEGMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("segments");
/// `<partition>/<topic>` → next offset the window covers.
const CHECKPOINT: TableDefinition<&str, i64> = TableDefinition::new("checkpoint");
/// `<partition>/<topic>` → next record number; and `identity` in META.
const SEQUENCE: TableDefinition<&str, u64> = TableDefinition::new("sequence");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("dedup window at {path}: {message}")]
    Store { path: String, message: String },
    #[error("reading the dedup window back from Kafka: {0}")]
    Kafka(String),
}

/// Next offset per (topic, partition).
pub type Offsets = HashMap<(String, i32), i64>;
/// Next record number per (topic, partition).
pub type Sequences = HashMap<(String, i32), u64>;

fn tp_key(t: &str, p: i32) -> String {
    format!("{p}/{t}")
}

fn parse_tp(k: &str) -> Option<(String, i32)> {
    let (p, t) = k.split_once('/')?;
    Some((t.to_string(), p.parse().ok()?))
}

/// The durable dedup window (see the module comment).
pub struct DurableWindow {
    path: PathBuf,
    db: redb::Database,
    identity: u64,
    /// Segments on disk, oldest first: (number, entries, newest at_ns).
    segments: std::sync::Mutex<VecDeque<(u64, usize, u64)>>,
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 24);
    for e in entries {
        out.extend_from_slice(&e.key.to_le_bytes());
        out.extend_from_slice(&e.content.to_le_bytes());
        out.extend_from_slice(&e.at_ns.to_le_bytes());
    }
    out
}

fn decode(bytes: &[u8], out: &mut Vec<Entry>) {
    let u = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    for c in bytes.chunks_exact(24) {
        out.push(Entry {
            key: u(&c[..8]),
            content: u(&c[8..16]),
            at_ns: u(&c[16..]),
        });
    }
}

impl DurableWindow {
    pub fn open(path: &Path) -> Result<Self, WindowError> {
        let err = |e: &dyn std::fmt::Display| WindowError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let db = redb::Database::create(path).map_err(|e| err(&e))?;
        let tx = db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(SEGMENTS).map_err(|e| err(&e))?;
        tx.open_table(CHECKPOINT).map_err(|e| err(&e))?;
        tx.open_table(SEQUENCE).map_err(|e| err(&e))?;
        let identity = {
            let mut meta = tx.open_table(META).map_err(|e| err(&e))?;
            let stored = meta
                .get("identity")
                .map_err(|e| err(&e))?
                .map(|v| v.value());
            match stored {
                Some(id) => id,
                None => {
                    let id = new_identity();
                    meta.insert("identity", id).map_err(|e| err(&e))?;
                    id
                }
            }
        };
        tx.commit().map_err(|e| err(&e))?;
        Ok(DurableWindow {
            path: path.to_path_buf(),
            db,
            identity,
            segments: Default::default(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> WindowError {
        WindowError::Store {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// A random number made with the file: the sink's epoch.
    pub fn identity(&self) -> u64 {
        self.identity
    }

    /// The entries still within the window (oldest first), the checkpoint and the record
    /// numbering. Blocking.
    pub fn load(&self, oldest_ns: u64) -> Result<(Vec<Entry>, Offsets, Sequences), WindowError> {
        let rx = self.db.begin_read().map_err(|e| self.err(e))?;
        let segs = rx.open_table(SEGMENTS).map_err(|e| self.err(e))?;
        let mut entries = Vec::new();
        let mut index = VecDeque::new();
        for row in segs.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let before = entries.len();
            decode(v.value(), &mut entries);
            let newest = entries[before..].iter().map(|e| e.at_ns).max().unwrap_or(0);
            index.push_back((k.value(), entries.len() - before, newest));
        }
        entries.retain(|e| e.at_ns >= oldest_ns);
        let mut offsets = Offsets::new();
        let cp = rx.open_table(CHECKPOINT).map_err(|e| self.err(e))?;
        for row in cp.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            if let Some(tp) = parse_tp(k.value()) {
                offsets.insert(tp, v.value());
            }
        }
        let mut sequences = Sequences::new();
        let sq = rx.open_table(SEQUENCE).map_err(|e| self.err(e))?;
        for row in sq.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            if let Some(tp) = parse_tp(k.value()) {
                sequences.insert(tp, v.value());
            }
        }
        *self.segments.lock().unwrap_or_else(|e| e.into_inner()) = index;
        Ok((entries, offsets, sequences))
    }

    /// Appends `entries` as one segment with the checkpoint `offsets` and the numbering
    /// `sequences`, and deletes segments wholly older than `oldest_ns` or beyond `max_keys`.
    /// Durable when it returns. Blocking.
    pub fn commit(
        &self,
        entries: &[Entry],
        offsets: &Offsets,
        sequences: &Sequences,
        oldest_ns: u64,
        max_keys: usize,
    ) -> Result<(), WindowError> {
        let mut index = self.segments.lock().unwrap_or_else(|e| e.into_inner());
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut segs = tx.open_table(SEGMENTS).map_err(|e| self.err(e))?;
            if !entries.is_empty() {
                let n = index.back().map_or(1, |s| s.0 + 1);
                segs.insert(n, encode(entries).as_slice())
                    .map_err(|e| self.err(e))?;
                let newest = entries.iter().map(|e| e.at_ns).max().unwrap_or(0);
                index.push_back((n, entries.len(), newest));
            }
            let mut total: usize = index.iter().map(|s| s.1).sum();
            while let Some(&(n, len, newest)) = index.front() {
                if newest >= oldest_ns && total - len < max_keys {
                    break;
                }
                segs.remove(n).map_err(|e| self.err(e))?;
                index.pop_front();
                total -= len;
            }
            let mut cp = tx.open_table(CHECKPOINT).map_err(|e| self.err(e))?;
            for ((t, p), o) in offsets {
                cp.insert(tp_key(t, *p).as_str(), *o)
                    .map_err(|e| self.err(e))?;
            }
            let mut sq = tx.open_table(SEQUENCE).map_err(|e| self.err(e))?;
            for ((t, p), n) in sequences {
                sq.insert(tp_key(t, *p).as_str(), *n)
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

/// What reading the window back from Kafka found.
#[derive(Debug, Default)]
pub struct TailRead {
    pub entries: Vec<Entry>,
    /// Records read (including ones that are not samples of this sink's form).
    pub records: u64,
    /// Per partition, the offset after the last record read (or the start): the window now
    /// covers everything below it.
    pub end: Offsets,
    /// Per partition, the number after the highest this sink (publisher and epoch) wrote.
    pub next_seq: Sequences,
}

/// A random identity for a new window file.
fn new_identity() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::model::now_ns());
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// The value of header `key`.
fn header<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'a str> {
    use rdkafka::message::Headers;
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == key)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// How long the log must stay quiet before the read-back counts as complete: the end is
/// where no record came for this long. Not the high watermark: brokers differ in what they
/// report there (Tansu 0.6 reports the base offset of the last batch + 1), and a producer
/// killed a moment ago may still have requests in the broker's socket that land now.
pub const QUIET: Duration = Duration::from_millis(1000);
/// The same for a window that never wrote anything (no earlier producer of ours to wait for).
pub const QUIET_FIRST_START: Duration = Duration::from_millis(100);

/// Reads the records of `topics` from `start` (per partition; partitions without a start
/// from the first record newer than `since_ns`) to their end, as dedup entries, and the
/// highest record number `stamp` (publisher, epoch) wrote per partition. Blocking; `client`
/// holds the broker address and the connection settings.
pub fn read_tail(
    client: &ClientConfig,
    topics: &[String],
    start: &Offsets,
    since_ns: u64,
    stamp: Option<(&str, &str)>,
    quiet: Duration,
    timeout: Duration,
) -> Result<TailRead, WindowError> {
    let k = |e: rdkafka::error::KafkaError| WindowError::Kafka(e.to_string());
    let consumer: BaseConsumer = client.create().map_err(k)?;
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1))
    };
    let mut read = TailRead::default();
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic.as_str()), left())
            .map_err(k)?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            continue;
        };
        let mut by_time = TopicPartitionList::new();
        for p in t.partitions() {
            match start.get(&(topic.clone(), p.id())) {
                Some(&from) => {
                    read.end.insert((topic.clone(), p.id()), from);
                    tpl.add_partition_offset(topic, p.id(), Offset::Offset(from))
                        .map_err(k)?;
                }
                None => {
                    by_time
                        .add_partition_offset(
                            topic,
                            p.id(),
                            Offset::Offset((since_ns / 1_000_000) as i64),
                        )
                        .map_err(k)?;
                }
            }
        }
        // Partitions without a checkpoint start at the window's oldest record where the
        // broker can tell, else at the beginning (filtered by time below).
        if by_time.count() > 0 {
            let found = consumer.offsets_for_times(by_time.clone(), left()).ok();
            for e in by_time.elements() {
                let at = found
                    .as_ref()
                    .and_then(|f| f.find_partition(e.topic(), e.partition()))
                    .map(|f| f.offset())
                    .filter(|o| matches!(o, Offset::Offset(_)))
                    .unwrap_or(Offset::Beginning);
                tpl.add_partition_offset(e.topic(), e.partition(), at)
                    .map_err(k)?;
            }
        }
    }
    if tpl.count() == 0 {
        return Ok(read);
    }
    consumer.assign(&tpl).map_err(k)?;
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        if Instant::now() > deadline {
            return Err(WindowError::Kafka(format!(
                "timed out after {timeout:?} reading the dedup window back"
            )));
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => continue,
            Err(e) => return Err(k(e)),
        };
        last = Instant::now();
        let tp = (m.topic().to_string(), m.partition());
        read.records += 1;
        let next = read.end.entry(tp.clone()).or_insert(0);
        *next = (*next).max(m.offset() + 1);
        if let Some((publisher, epoch)) = stamp {
            if header(&m, crate::payload::PUBLISHER_PROPERTY) == Some(publisher)
                && header(&m, crate::payload::EPOCH_PROPERTY) == Some(epoch)
            {
                if let Some(seq) =
                    header(&m, crate::payload::SEQ_PROPERTY).and_then(|s| s.parse::<u64>().ok())
                {
                    let next = read.next_seq.entry(tp.clone()).or_insert(seq + 1);
                    *next = (*next).max(seq + 1);
                }
            }
        }
        let at_ns = m
            .timestamp()
            .to_millis()
            .map_or(since_ns, |ms| ms.max(0) as u64 * 1_000_000);
        if let (Some(key), Some(payload)) = (m.key(), m.payload()) {
            if let (Ok(path), Some((fields, ts))) =
                (std::str::from_utf8(key), dedup::sample_fields(payload))
            {
                if at_ns >= since_ns {
                    read.entries.push(Entry {
                        key: dedup::key(path, ts),
                        content: dedup::content(fields),
                        at_ns,
                    });
                }
            }
        }
    }
    read.entries.sort_by_key(|e| e.at_ns);
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_expire_and_keep_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let e = |k: u64, at: u64| Entry {
            key: k,
            content: k * 10,
            at_ns: at,
        };
        let identity;
        {
            let w = DurableWindow::open(&path).unwrap();
            identity = w.identity();
            w.load(0).unwrap();
            let mut off = Offsets::new();
            let mut seqs = Sequences::new();
            off.insert(("t.x".into(), 2), 17);
            w.commit(&[e(1, 100), e(2, 150)], &off, &seqs, 0, 100)
                .unwrap();
            off.insert(("t.x".into(), 2), 30);
            seqs.insert(("t.x".into(), 2), 31);
            w.commit(&[e(3, 200)], &off, &seqs, 0, 100).unwrap();
            // The first segment leaves the window.
            w.commit(&[e(4, 300)], &off, &seqs, 160, 100).unwrap();
        }
        let w = DurableWindow::open(&path).unwrap();
        assert_eq!(w.identity(), identity, "the epoch outlives a restart");
        let (entries, off, seqs) = w.load(160).unwrap();
        assert_eq!(entries, vec![e(3, 200), e(4, 300)]);
        assert_eq!(off[&("t.x".to_string(), 2)], 30);
        assert_eq!(seqs[&("t.x".to_string(), 2)], 31);
        // Bounded by max_keys: the oldest segments go.
        w.commit(&[e(5, 400)], &off, &seqs, 0, 1).unwrap();
        assert_eq!(w.load(0).unwrap().0, vec![e(5, 400)]);
    }
}
