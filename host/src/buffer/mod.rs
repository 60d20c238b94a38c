//! The durable store-and-forward buffer that sits between the pipeline and a sink whose
//! destination can go away (an MQTT broker, a database). Samples are committed to a local
//! redb database (fsync'd, several batches per commit) before their sources are acknowledged;
//! the sink's forwarder reads them back in order and removes them once the destination has
//! confirmed them. The engine was chosen by `host/benches/buffer-engines` (README).
//!
//! A record is one batch; tags are stored once in their own table under a durable id, so a
//! record survives a restart even though the pipeline's tag ids do not. The buffer is bounded
//! by `max_bytes` with a documented overflow policy; every drop is counted and logged.

mod codec;
mod config;

pub use codec::DecodeError;
pub use config::{BufferConfig, OverflowPolicy};

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;

use crate::model::now_ns;
use crate::model::{OutputBatch, TagTable};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const TAGS: TableDefinition<u32, &[u8]> = TableDefinition::new("tags");
/// `identity` (random, made with the buffer) and `next_seq` (kept with every append, so
/// sequence numbers never restart, even after the buffer ran empty); `cursor_record` and
/// `cursor_message`: the sink's message numbering at the oldest record not yet removed (kept
/// with every removal, so a replay after a restart numbers the same messages the same way).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer `{name}` at {path}: {message}")]
    Open {
        name: String,
        path: String,
        message: String,
    },
    #[error("buffer `{name}`: {message}")]
    Storage { name: String, message: String },
    #[error("buffer `{name}`: record {seq}: {source}")]
    Damaged {
        name: String,
        seq: u64,
        source: DecodeError,
    },
}

/// Counters of one buffer (shown in the host status).
#[derive(Debug, Default)]
pub struct BufferStats {
    pub depth_records: AtomicU64,
    pub depth_samples: AtomicU64,
    pub depth_bytes: AtomicU64,
    /// Append time of the oldest record still buffered (ns since the epoch; 0 when empty).
    pub oldest_appended_ns: AtomicU64,
    pub appended_samples: AtomicU64,
    pub delivered_samples: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub dropped_expired: AtomicU64,
    /// Times an append waited for room (`refuse-new` at `max_bytes`).
    pub full_waits: AtomicU64,
    /// Times the database was reopened after an I/O error.
    pub reopens: AtomicU64,
}

/// A point-in-time view of `BufferStats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct BufferStatus {
    pub path: String,
    pub overflow: String,
    pub max_bytes: u64,
    pub depth_records: u64,
    pub depth_samples: u64,
    pub depth_bytes: u64,
    /// Seconds the oldest buffered record has waited.
    pub oldest_age_s: f64,
    pub appended_samples: u64,
    pub delivered_samples: u64,
    pub dropped_overflow: u64,
    pub dropped_expired: u64,
    pub full_waits: u64,
    /// Why the buffer cannot write now (an I/O error such as a full disk), while it retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_error: Option<String>,
    #[serde(default)]
    pub reopens: u64,
}

/// A record read back from the buffer.
pub struct StoredRecord {
    pub seq: u64,
    /// When it entered the buffer (ns since the epoch).
    pub appended_ns: u64,
    /// Tag ids are durable ids into `batch.tags`.
    pub batch: OutputBatch,
}

/// A sink's message numbering at a record: the first message of record `record` (or of the
/// first record after it still buffered) is number `message`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageCursor {
    pub record: u64,
    pub message: u64,
}

/// What `append` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// Committed durably with these sequence numbers.
    Committed(Vec<u64>),
    /// `refuse-new` and no room: nothing was written; retry once the forwarder freed space.
    Full,
}

struct RecordMeta {
    seq: u64,
    samples: u64,
    bytes: u64,
    appended_ns: u64,
}

/// Removes the `n` oldest records from `index`; returns their bytes and samples.
fn drained(index: &mut VecDeque<RecordMeta>, n: usize) -> (u64, u64) {
    index
        .drain(..n)
        .fold((0, 0), |(b, s), m| (b + m.bytes, s + m.samples))
}

struct State {
    next_seq: u64,
    /// Records on disk, oldest first.
    index: VecDeque<RecordMeta>,
    /// Bytes and samples of the records in `index` (kept as they change, not summed).
    bytes: u64,
    samples: u64,
    /// Durable tag id by encoded tag.
    tag_ids: HashMap<Vec<u8>, u32>,
    /// Durable tags by id (what read-back batches carry).
    tags: Arc<TagTable>,
    /// The live tag table last appended from, and durable ids by its tag ids.
    live_table: Option<Arc<TagTable>>,
    live_to_durable: Vec<u32>,
}

pub struct DurableBuffer {
    name: String,
    path: String,
    config: BufferConfig,
    file: std::path::PathBuf,
    /// The database; None after an I/O error until it is reopened.
    db: std::sync::RwLock<Option<Arc<redb::Database>>>,
    identity: u64,
    /// The message numbering kept with the last removal.
    cursor: Mutex<Option<MessageCursor>>,
    state: Mutex<State>,
    stats: Arc<BufferStats>,
    /// The error that stops writes now, if any.
    write_error: Mutex<Option<String>>,
}

impl DurableBuffer {
    /// Opens (or creates) the buffer at `path` and loads its index; records left by a
    /// previous run are kept and will be sent first.
    pub fn open(name: &str, path: &Path, config: &BufferConfig) -> Result<Arc<Self>, BufferError> {
        let open_err = |message: String| BufferError::Open {
            name: name.into(),
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = redb::Database::create(path).map_err(|e| open_err(e.to_string()))?;
        let tx = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        let cursor;
        tx.open_table(RECORDS)
            .map_err(|e| open_err(e.to_string()))?;
        tx.open_table(TAGS).map_err(|e| open_err(e.to_string()))?;
        let (identity, stored_next_seq) = {
            let mut meta = tx.open_table(META).map_err(|e| open_err(e.to_string()))?;
            let stored = meta
                .get("identity")
                .map_err(|e| open_err(e.to_string()))?
                .map(|v| v.value());
            let identity = match stored {
                Some(v) => v,
                None => {
                    let id = new_identity();
                    meta.insert("identity", id)
                        .map_err(|e| open_err(e.to_string()))?;
                    id
                }
            };
            let next = meta
                .get("next_seq")
                .map_err(|e| open_err(e.to_string()))?
                .map_or(1, |v| v.value());
            let get = |k: &str| {
                meta.get(k)
                    .map_err(|e| open_err(e.to_string()))
                    .map(|v| v.map(|v| v.value()))
            };
            cursor = match (get("cursor_record")?, get("cursor_message")?) {
                (Some(r), Some(m)) => Some(MessageCursor {
                    record: r,
                    message: m,
                }),
                _ => None,
            };
            (identity, next)
        };
        tx.commit().map_err(|e| open_err(e.to_string()))?;

        let mut tag_ids = HashMap::new();
        let mut tags = TagTable::new();
        let mut index = VecDeque::new();
        let mut bytes = 0;
        {
            let rx = db.begin_read().map_err(|e| open_err(e.to_string()))?;
            let t = rx.open_table(TAGS).map_err(|e| open_err(e.to_string()))?;
            for row in t.iter().map_err(|e| open_err(e.to_string()))? {
                let (k, v) = row.map_err(|e| open_err(e.to_string()))?;
                let (id, enc) = (k.value(), v.value());
                let tag =
                    codec::decode_tag(id, enc).map_err(|e| open_err(format!("tag {id}: {e}")))?;
                if tags.len() <= id as usize {
                    tags.resize(id as usize + 1);
                }
                tags[id as usize] = Some(Arc::new(tag));
                tag_ids.insert(enc.to_vec(), id);
            }
            let r = rx
                .open_table(RECORDS)
                .map_err(|e| open_err(e.to_string()))?;
            for row in r.iter().map_err(|e| open_err(e.to_string()))? {
                let (k, v) = row.map_err(|e| open_err(e.to_string()))?;
                let (seq, enc) = (k.value(), v.value());
                let appended_ns =
                    codec::record_appended_ns(enc).map_err(|source| BufferError::Damaged {
                        name: name.into(),
                        seq,
                        source,
                    })?;
                let samples = enc
                    .get(9..13)
                    .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()) as u64);
                bytes += enc.len() as u64;
                index.push_back(RecordMeta {
                    seq,
                    samples,
                    bytes: enc.len() as u64,
                    appended_ns,
                });
            }
        }
        let next_seq = index.back().map_or(1, |m| m.seq + 1).max(stored_next_seq);
        let buffer = DurableBuffer {
            name: name.into(),
            path: path.display().to_string(),
            config: config.clone(),
            file: path.to_path_buf(),
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            identity,
            cursor: Mutex::new(cursor),
            write_error: Mutex::new(None),
            state: Mutex::new(State {
                next_seq,
                samples: index.iter().map(|m| m.samples).sum(),
                index,
                bytes,
                tag_ids,
                tags: Arc::new(tags),
                live_table: None,
                live_to_durable: Vec::new(),
            }),
            stats: Arc::new(BufferStats::default()),
        };
        {
            let st = buffer.lock();
            buffer.publish_depth(&st);
            if !st.index.is_empty() {
                tracing::info!(
                    buffer = %buffer.name,
                    records = st.index.len(),
                    samples = buffer.stats.depth_samples.load(Ordering::Relaxed),
                    "buffered samples from the previous run will be sent first"
                );
            }
        }
        Ok(Arc::new(buffer))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A random number made with the buffer's database: sequence numbers are unique within one
    /// identity (a sink that records them, like Parquet, tells buffers apart by it).
    pub fn identity(&self) -> u64 {
        self.identity
    }

    /// The database, reopening it first if an I/O error closed it (redb refuses every call
    /// after one until it is reopened).
    fn database(&self) -> Result<Arc<redb::Database>, BufferError> {
        if let Some(db) = self.db.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(db.clone());
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = redb::Database::create(&self.file).map_err(|e| self.storage_err(e))?;
        let db = Arc::new(db);
        *slot = Some(db.clone());
        self.stats.reopens.fetch_add(1, Ordering::Relaxed);
        tracing::info!(buffer = %self.name, "buffer database reopened");
        Ok(db)
    }

    /// After a storage error: close the database (reopened at the next call) and say why
    /// writes stop; `Ok` clears it.
    fn note<T>(&self, result: Result<T, BufferError>) -> Result<T, BufferError> {
        match &result {
            Ok(_) => {
                let mut e = self.write_error.lock().unwrap_or_else(|e| e.into_inner());
                if e.take().is_some() {
                    tracing::info!(buffer = %self.name, "buffer writes again");
                }
            }
            Err(err) => {
                *self.write_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(err.to_string());
                *self.db.write().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        result
    }

    pub fn stats(&self) -> &Arc<BufferStats> {
        &self.stats
    }

    pub fn status(&self) -> BufferStatus {
        let s = &self.stats;
        let oldest = s.oldest_appended_ns.load(Ordering::Relaxed);
        BufferStatus {
            path: self.path.clone(),
            overflow: self.config.overflow.as_str().into(),
            max_bytes: self.config.max_bytes,
            depth_records: s.depth_records.load(Ordering::Relaxed),
            depth_samples: s.depth_samples.load(Ordering::Relaxed),
            depth_bytes: s.depth_bytes.load(Ordering::Relaxed),
            oldest_age_s: if oldest == 0 {
                0.0
            } else {
                now_ns().saturating_sub(oldest) as f64 / 1e9
            },
            appended_samples: s.appended_samples.load(Ordering::Relaxed),
            delivered_samples: s.delivered_samples.load(Ordering::Relaxed),
            dropped_overflow: s.dropped_overflow.load(Ordering::Relaxed),
            dropped_expired: s.dropped_expired.load(Ordering::Relaxed),
            full_waits: s.full_waits.load(Ordering::Relaxed),
            write_error: self
                .write_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            reopens: s.reopens.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn storage_err(&self, e: impl std::fmt::Display) -> BufferError {
        BufferError::Storage {
            name: self.name.clone(),
            message: e.to_string(),
        }
    }

    fn publish_depth(&self, st: &State) {
        let s = &self.stats;
        s.depth_records
            .store(st.index.len() as u64, Ordering::Relaxed);
        s.depth_samples.store(st.samples, Ordering::Relaxed);
        s.depth_bytes.store(st.bytes, Ordering::Relaxed);
        s.oldest_appended_ns.store(
            st.index.front().map_or(0, |m| m.appended_ns),
            Ordering::Relaxed,
        );
    }

    /// Commits `batches` durably, in order, in one transaction (one fsync). Blocking. On an
    /// error nothing of it stays, in the database or in memory (tags interned for it are
    /// forgotten), and the database is reopened at the next call.
    pub fn append(&self, batches: &[Arc<OutputBatch>]) -> Result<Appended, BufferError> {
        let mut st = self.lock();
        let mut new_tags: Vec<(u32, Vec<u8>)> = Vec::new();
        let result = self.append_locked(&mut st, batches, &mut new_tags);
        if result.is_err() {
            for (_, enc) in &new_tags {
                st.tag_ids.remove(enc);
            }
            st.live_table = None;
        }
        self.note(result)
    }

    fn append_locked(
        &self,
        st: &mut State,
        batches: &[Arc<OutputBatch>],
        new_tags: &mut Vec<(u32, Vec<u8>)>,
    ) -> Result<Appended, BufferError> {
        let appended_ns = now_ns();
        let db = self.database()?;
        let tx = db.begin_write().map_err(|e| self.storage_err(e))?;
        let mut encoded = Vec::with_capacity(batches.len());
        // The durable tag table, copied only if a batch brings a tag it does not have yet.
        let mut grown: Option<TagTable> = None;
        for b in batches {
            let ids = self.durable_ids(st, b, &mut grown, new_tags);
            encoded.push((
                codec::encode_record(&b.samples, &ids, appended_ns),
                b.samples.len() as u64,
            ));
        }
        let incoming: u64 = encoded.iter().map(|(e, _)| e.len() as u64).sum();
        let mut dropped = 0u64;
        let mut drop_through = None;
        if st.bytes + incoming > self.config.max_bytes {
            match self.config.overflow {
                OverflowPolicy::RefuseNew => {
                    // Interned tags are kept in memory only once committed: undo.
                    for (_, enc) in new_tags.drain(..) {
                        st.tag_ids.remove(&enc);
                    }
                    st.live_table = None;
                    drop(tx);
                    self.stats.full_waits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Appended::Full);
                }
                OverflowPolicy::DropOldest => {
                    let mut freed = 0;
                    while st.bytes - freed + incoming > self.config.max_bytes {
                        let Some(m) = st.index.get(drop_through.map_or(0, |(i, _)| i + 1)) else {
                            break;
                        };
                        freed += m.bytes;
                        dropped += m.samples;
                        drop_through = Some((drop_through.map_or(0, |(i, _)| i + 1), m.seq));
                    }
                }
            }
        }
        let mut seqs = Vec::with_capacity(encoded.len());
        {
            let mut records = tx.open_table(RECORDS).map_err(|e| self.storage_err(e))?;
            if let Some((_, through)) = drop_through {
                records
                    .retain_in(..=through, |_, _| false)
                    .map_err(|e| self.storage_err(e))?;
            }
            let mut tag_table = tx.open_table(TAGS).map_err(|e| self.storage_err(e))?;
            for (id, enc) in new_tags.iter() {
                tag_table
                    .insert(id, enc.as_slice())
                    .map_err(|e| self.storage_err(e))?;
            }
            for (i, (enc, _)) in encoded.iter().enumerate() {
                let seq = st.next_seq + i as u64;
                records
                    .insert(seq, enc.as_slice())
                    .map_err(|e| self.storage_err(e))?;
                seqs.push(seq);
            }
            let mut meta = tx.open_table(META).map_err(|e| self.storage_err(e))?;
            meta.insert("next_seq", st.next_seq + seqs.len() as u64)
                .map_err(|e| self.storage_err(e))?;
        }
        tx.commit().map_err(|e| self.storage_err(e))?;
        st.next_seq += seqs.len() as u64;
        if let Some(tags) = grown {
            st.tags = Arc::new(tags);
        }
        if let Some((i, _)) = drop_through {
            let (freed, freed_samples) = drained(&mut st.index, i + 1);
            st.bytes -= freed;
            st.samples -= freed_samples;
            self.stats
                .dropped_overflow
                .fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                buffer = %self.name,
                dropped,
                total = self.stats.dropped_overflow.load(Ordering::Relaxed),
                max_bytes = self.config.max_bytes,
                "buffer full: dropped the oldest samples (overflow = drop-oldest)"
            );
        }
        for (seq, (enc, samples)) in seqs.iter().zip(&encoded) {
            st.bytes += enc.len() as u64;
            st.samples += *samples;
            st.index.push_back(RecordMeta {
                seq: *seq,
                samples: *samples,
                bytes: enc.len() as u64,
                appended_ns,
            });
            self.stats
                .appended_samples
                .fetch_add(*samples, Ordering::Relaxed);
        }
        self.publish_depth(st);
        Ok(Appended::Committed(seqs))
    }

    /// Durable ids of the batch's tags, interning new ones (added to `grown`, a copy of the
    /// durable table made on the first new tag, and to `new_tags`).
    fn durable_ids(
        &self,
        st: &mut State,
        b: &OutputBatch,
        grown: &mut Option<TagTable>,
        new_tags: &mut Vec<(u32, Vec<u8>)>,
    ) -> Vec<u32> {
        if !st
            .live_table
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, &b.tags))
        {
            st.live_table = Some(b.tags.clone());
            st.live_to_durable.clear();
        }
        if st.live_to_durable.len() < b.tags.len() {
            st.live_to_durable.resize(b.tags.len(), u32::MAX);
        }
        b.samples
            .tag_ids
            .iter()
            .map(|&live| {
                let cached = st
                    .live_to_durable
                    .get(live as usize)
                    .copied()
                    .unwrap_or(u32::MAX);
                if cached != u32::MAX {
                    return cached;
                }
                let Some(Some(tag)) = b.tags.get(live as usize) else {
                    // The chain only emits samples of resolved tags; keep the sample anyway.
                    return u32::MAX;
                };
                let enc = codec::encode_tag(tag);
                let id = match st.tag_ids.get(&enc) {
                    Some(id) => *id,
                    None => {
                        let tags = grown.get_or_insert_with(|| (*st.tags).clone());
                        let id = tags.len() as u32;
                        tags.push(Some(Arc::new(
                            codec::decode_tag(id, &enc).expect("own encoding"),
                        )));
                        st.tag_ids.insert(enc.clone(), id);
                        new_tags.push((id, enc));
                        id
                    }
                };
                if let Some(slot) = st.live_to_durable.get_mut(live as usize) {
                    *slot = id;
                }
                id
            })
            .collect()
    }

    /// Reads up to `max` records with seq ≥ `from`, in order. Blocking.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<StoredRecord>, BufferError> {
        let tags = self.lock().tags.clone();
        let db = self.database()?;
        let rx = db.begin_read().map_err(|e| self.storage_err(e))?;
        let t = rx.open_table(RECORDS).map_err(|e| self.storage_err(e))?;
        let mut out = Vec::new();
        for row in t.range(from..).map_err(|e| self.storage_err(e))?.take(max) {
            let (k, v) = row.map_err(|e| self.storage_err(e))?;
            let seq = k.value();
            let (samples, appended_ns) =
                codec::decode_record(v.value()).map_err(|source| BufferError::Damaged {
                    name: self.name.clone(),
                    seq,
                    source,
                })?;
            out.push(StoredRecord {
                seq,
                appended_ns,
                batch: OutputBatch::new(samples, tags.clone()),
            });
        }
        Ok(out)
    }

    /// Removes every record with seq ≤ `through` (delivered or expired; the caller counts
    /// which), durably: the forwarder calls it at most every 100 ms, so the fsync is cheap, and
    /// after a crash only what was confirmed since the last removal is sent again. Blocking.
    pub fn remove_through(&self, through: u64) -> Result<(), BufferError> {
        self.remove_through_at(through, None)
    }

    /// `remove_through`, keeping `cursor` (the sink's message numbering at the next record) in
    /// the same commit.
    pub fn remove_through_at(
        &self,
        through: u64,
        cursor: Option<MessageCursor>,
    ) -> Result<(), BufferError> {
        let mut st = self.lock();
        let n = st.index.iter().take_while(|m| m.seq <= through).count();
        if n == 0 {
            return Ok(());
        }
        let removed = (|| {
            let db = self.database()?;
            let tx = db.begin_write().map_err(|e| self.storage_err(e))?;
            {
                let mut records = tx.open_table(RECORDS).map_err(|e| self.storage_err(e))?;
                records
                    .retain_in(..=through, |_, _| false)
                    .map_err(|e| self.storage_err(e))?;
                if let Some(c) = cursor {
                    let mut meta = tx.open_table(META).map_err(|e| self.storage_err(e))?;
                    meta.insert("cursor_record", c.record)
                        .map_err(|e| self.storage_err(e))?;
                    meta.insert("cursor_message", c.message)
                        .map_err(|e| self.storage_err(e))?;
                }
            }
            tx.commit().map_err(|e| self.storage_err(e))
        })();
        self.note(removed)?;
        if cursor.is_some() {
            *self.cursor.lock().unwrap_or_else(|e| e.into_inner()) = cursor;
        }
        let (bytes, samples) = drained(&mut st.index, n);
        st.bytes -= bytes;
        st.samples -= samples;
        self.publish_depth(&st);
        Ok(())
    }

    /// Samples and records waiting.
    pub fn depth(&self) -> (u64, u64) {
        (
            self.stats.depth_records.load(Ordering::Relaxed),
            self.stats.depth_samples.load(Ordering::Relaxed),
        )
    }

    /// The message numbering kept with the last removal (None: never kept).
    pub fn message_cursor(&self) -> Option<MessageCursor> {
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lowest buffered seq, if any.
    pub fn first_seq(&self) -> Option<u64> {
        self.lock().index.front().map(|m| m.seq)
    }

    /// The highest buffered seq, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.lock().index.back().map(|m| m.seq)
    }

    pub fn config(&self) -> &BufferConfig {
        &self.config
    }

    /// Commits `group` (async; the disk work runs on a blocking thread), waiting while the
    /// buffer is full (`refuse-new`) and retrying a failing disk: never gives up on a batch.
    pub async fn commit(self: &Arc<Self>, group: &[Arc<OutputBatch>]) -> Vec<u64> {
        let mut backoff = crate::retry::Backoff::default();
        let mut warned_full = false;
        loop {
            let buffer = self.clone();
            let batches = group.to_vec();
            match tokio::task::spawn_blocking(move || buffer.append(&batches)).await {
                Ok(Ok(Appended::Committed(seqs))) => {
                    if warned_full {
                        tracing::info!(buffer = %self.name, "buffer has room again");
                    }
                    // Durable now: the sources may be acknowledged.
                    for b in group {
                        b.done();
                    }
                    return seqs;
                }
                Ok(Ok(Appended::Full)) => {
                    if !warned_full {
                        tracing::warn!(
                            buffer = %self.name,
                            max_bytes = self.config.max_bytes,
                            "buffer full (overflow = refuse-new): holding the pipeline back until the destination takes samples"
                        );
                        warned_full = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => {
                    let delay = backoff.next_delay();
                    tracing::error!(buffer = %self.name, "buffer write failed (new samples wait: backpressure), retrying in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::error!(buffer = %self.name, "buffer task failed, retrying: {e}");
                    backoff.wait().await;
                }
            }
        }
    }
}

/// A random identity for a new buffer database.
fn new_identity() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.write_u32(std::process::id());
    h.finish().max(1)
}
