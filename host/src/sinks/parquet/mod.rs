//! The Parquet sink: rolling files partitioned by the samples' UTC hour, one row per sample
//! with typed value columns, zstd-compressed, the text columns dictionary-encoded.
//!
//! Layout: `<directory>/date=YYYY-MM-DD/hour=HH/<sink>-<opened ns>-<seq>.parquet`. A file is
//! written under a hidden name (`.<name>.parquet.inprogress`, which Parquet readers and
//! `*.parquet` globs skip), then closed (footer written, fsync), renamed to its final name and
//! the directory fsynced: a reader never sees a half file. A crash leaves at most the hidden
//! in-progress files, which the sink deletes when it starts again.
//!
//! Rows reach the disk in row groups; a file's rows are durable once it is closed (on size,
//! age, when more hours are open than `max_open_files`, and when the sink is dropped).
//! With `s3` configured, published files are then uploaded (see `upload`).
//!
//! In a running host the sink sits behind the durable buffer (`BufferedSink`): it is handed
//! buffer records with their sequence numbers, and a published file's name records the
//! buffer's identity and the range of records whose rows (of its hour) it holds
//! (`…-b<identity>-r<first>-<last>.parquet`). The buffer removes a record only once every file
//! holding its rows is published; after a crash the records still buffered are handed over
//! again and the rows a published file already holds are skipped: every row lands exactly
//! once. Encoding, fsync and rename run on a blocking thread, off the async workers.

mod config;
mod upload;

pub use config::ParquetSinkConfig;
pub use upload::{S3Config, UploadError, Uploader};

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{
    ByteArray, ByteArrayType, DoubleType, FixedLenByteArray, FixedLenByteArrayType, Int64Type,
};
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::{ColumnPath, Type as SchemaType};

use super::{PerTag, Sink, SinkError};
use crate::model::{ExtraValue, Quality};
use crate::model::{OutputBatch, ResolvedTag};

/// The file schema (columns in this order).
pub const SCHEMA: &str = "
message ferrule_samples {
    REQUIRED INT64 time (TIMESTAMP(NANOS,true));
    REQUIRED BYTE_ARRAY tag (STRING);
    OPTIONAL DOUBLE value_double;
    OPTIONAL FIXED_LEN_BYTE_ARRAY (9) value_int (DECIMAL(20,0));
    OPTIONAL BYTE_ARRAY value_text (STRING);
    REQUIRED BYTE_ARRAY unit (STRING);
    REQUIRED BYTE_ARRAY quality (STRING);
    REQUIRED INT64 status;
    OPTIONAL BYTE_ARRAY metadata (JSON);
}
";

/// How many published file names (and uploaded keys) a sink remembers.
pub const RECENT_FILES: usize = 10_000;

/// Appends `item`, dropping the oldest beyond `RECENT_FILES` (a gateway runs for months).
fn push_recent<T>(list: &mut Vec<T>, item: T) {
    if list.len() >= RECENT_FILES {
        list.drain(..list.len() + 1 - RECENT_FILES);
    }
    list.push(item);
}

/// Suffix of files still being written.
const IN_PROGRESS_SUFFIX: &str = ".parquet.inprogress";

#[derive(Debug, thiserror::Error)]
pub enum ParquetSinkError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("sample {index} names tag id {tag_id}, unknown to the batch's tag table")]
    UnknownTag { index: usize, tag_id: u32 },
}

/// A UTC hour: days since the Unix epoch and hour of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    pub days: i64,
    pub hour: u8,
}

impl Partition {
    pub fn of(ts_ns: u64) -> Partition {
        let hours = (ts_ns / 3_600_000_000_000) as i64;
        Partition {
            days: hours.div_euclid(24),
            hour: hours.rem_euclid(24) as u8,
        }
    }

    /// `date=YYYY-MM-DD/hour=HH`.
    pub fn dir(&self) -> String {
        let (y, m, d) = civil_from_days(self.days);
        format!("date={y:04}-{m:02}-{d:02}/hour={:02}", self.hour)
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Rows buffered for the next row group, one vector per column (nullable columns keep only
/// their non-null values plus a definition level per row).
#[derive(Default)]
struct Columns {
    time: Vec<i64>,
    tag: Vec<ByteArray>,
    value_double: Vec<f64>,
    value_double_def: Vec<i16>,
    value_int: Vec<FixedLenByteArray>,
    value_int_def: Vec<i16>,
    value_text: Vec<ByteArray>,
    value_text_def: Vec<i16>,
    unit: Vec<ByteArray>,
    quality: Vec<ByteArray>,
    status: Vec<i64>,
    metadata: Vec<ByteArray>,
    metadata_def: Vec<i16>,
}

impl Columns {
    fn len(&self) -> usize {
        self.time.len()
    }
}

/// Per tag, its constant columns, built once per tag table.
#[derive(Clone)]
struct TagColumns {
    tag: ByteArray,
    unit: ByteArray,
    metadata: Option<ByteArray>,
}

/// The quality words as column values.
struct QualityWords {
    good: ByteArray,
    uncertain: ByteArray,
    bad: ByteArray,
}

struct OpenFile {
    partition: Partition,
    /// Buffer records whose rows of this hour the file holds (behind a buffer).
    records: Option<(u64, u64)>,
    temp_path: PathBuf,
    final_path: PathBuf,
    writer: SerializedFileWriter<BufWriter<File>>,
    buffered: Columns,
    rows: u64,
    opened: Instant,
}

pub struct ParquetSink {
    name: String,
    config: ParquetSinkConfig,
    schema: Arc<SchemaType>,
    properties: Arc<WriterProperties>,
    open: Vec<OpenFile>,
    tag_columns: PerTag<TagColumns>,
    quality_words: QualityWords,
    /// The last files published (at most `RECENT_FILES`), oldest first.
    published: Vec<PathBuf>,
    /// Uploads published files when an object store is configured.
    uploader: Option<Uploader>,
    /// Behind a buffer: its identity, and per hour the record ranges of files published
    /// before this start (their rows are skipped when the records are handed over again).
    buffer_identity: Option<u64>,
    published_ranges: std::collections::HashMap<Partition, Vec<(u64, u64)>>,
    /// The buffer record being written, and the last one handed over.
    current_record: Option<u64>,
    last_record: Option<u64>,
}

/// Distinguishes files opened in the same nanosecond by one process.
static FILE_SEQ: AtomicU64 = AtomicU64::new(0);

impl ParquetSink {
    /// Creates the directory and deletes in-progress files a crash of this sink left behind.
    pub fn open(name: &str, config: &ParquetSinkConfig) -> Result<Self, SinkError> {
        let err = |m: String| SinkError::Transient {
            sink: name.into(),
            message: m,
        };
        std::fs::create_dir_all(&config.directory)
            .map_err(|e| err(format!("cannot create {}: {e}", config.directory.display())))?;
        let removed = remove_in_progress(&config.directory, &file_prefix(name))
            .map_err(|e| err(e.to_string()))?;
        if removed > 0 {
            tracing::warn!(sink = %name, removed, "deleted in-progress Parquet files left by an earlier run");
        }
        let schema = Arc::new(parse_message_type(SCHEMA).expect("the schema parses"));
        let level =
            ZstdLevel::try_new(config.zstd_level).map_err(|e| err(format!("zstd_level: {e}")))?;
        let mut props = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_compression(Compression::ZSTD(level))
            .set_dictionary_enabled(false)
            .set_created_by(format!("ferrule {}", env!("CARGO_PKG_VERSION")));
        for column in ["tag", "value_text", "unit", "quality", "metadata"] {
            props = props.set_column_dictionary_enabled(ColumnPath::from(column), true);
        }
        let byte_array = |s: &str| ByteArray::from(s.as_bytes().to_vec());
        let uploader = match &config.s3 {
            None => None,
            Some(s3) => {
                let store = s3.build().map_err(|e| err(format!("s3: {e}")))?;
                let mut uploader = Uploader::new(store, &s3.prefix, &config.directory);
                // Files published but not uploaded before the last stop.
                for path in upload::staged_files(&config.directory, &file_prefix(name))
                    .map_err(|e| err(format!("{}: {e}", config.directory.display())))?
                {
                    uploader.add(path);
                }
                Some(uploader)
            }
        };
        Ok(ParquetSink {
            name: name.into(),
            config: config.clone(),
            schema,
            properties: Arc::new(props.build()),
            open: Vec::new(),
            tag_columns: PerTag::default(),
            quality_words: QualityWords {
                good: byte_array("good"),
                uncertain: byte_array("uncertain"),
                bad: byte_array("bad"),
            },
            published: Vec::new(),
            uploader,
            buffer_identity: None,
            published_ranges: Default::default(),
            current_record: None,
            last_record: None,
        })
    }

    /// Opens the sink behind the buffer with identity `buffer_identity`: reads which records
    /// the files it published before hold (from their names), to skip their rows on replay.
    pub fn open_behind(
        name: &str,
        config: &ParquetSinkConfig,
        buffer_identity: u64,
    ) -> Result<Self, SinkError> {
        let mut sink = ParquetSink::open(name, config)?;
        sink.buffer_identity = Some(buffer_identity);
        let marker = format!("-b{buffer_identity:016x}-r");
        let files = published_files(&config.directory, &file_prefix(name)).map_err(|e| {
            SinkError::transient(name, format!("{}: {e}", config.directory.display()))
        })?;
        let mut ranges = 0;
        for (partition, file_name) in files {
            if let Some(range) = file_name
                .split_once(&marker)
                .and_then(|(_, r)| r.strip_suffix(".parquet"))
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            {
                sink.published_ranges
                    .entry(partition)
                    .or_default()
                    .push(range);
                ranges += 1;
            }
        }
        if ranges > 0 {
            tracing::info!(sink = %name, files = ranges, "Parquet files of this buffer found; rows they hold are not written again");
        }
        Ok(sink)
    }

    /// Whether a file published before this start holds the rows of hour `p` of record `seq`.
    fn already_published(&self, p: Partition, seq: u64) -> bool {
        self.published_ranges
            .get(&p)
            .is_some_and(|rs| rs.iter().any(|&(a, b)| a <= seq && seq <= b))
    }

    /// Behind a buffer: every record at or below the returned seq has all its rows in
    /// published files (None: none handed over yet).
    fn published_through(&self) -> Option<u64> {
        let last = self.last_record?;
        match self
            .open
            .iter()
            .filter_map(|f| f.records.map(|(first, _)| first))
            .min()
        {
            None => Some(last),
            Some(first_open) => first_open.checked_sub(1).filter(|&s| s > 0),
        }
    }

    /// Object keys uploaded so far (with `s3`).
    pub fn uploaded(&self) -> &[String] {
        self.uploader.as_ref().map_or(&[], |u| u.uploaded())
    }

    /// Published files still waiting for the object store (with `s3`).
    pub fn pending_uploads(&self) -> &[PathBuf] {
        self.uploader.as_ref().map_or(&[], |u| u.pending())
    }

    /// Uploads what is pending (unless backing off after a failure); a failure is logged and
    /// retried later, never failing the write that triggered it (its rows are on disk).
    async fn upload(&mut self) {
        if let Some(u) = self.uploader.as_mut() {
            if let Err(e) = u.run().await {
                tracing::warn!(sink = %self.name, pending = u.pending().len(), "upload failed, retrying later: {e}");
            }
        }
    }

    /// Final paths of the files this sink has published, in order (the last `RECENT_FILES`).
    pub fn published(&self) -> &[PathBuf] {
        &self.published
    }

    /// Closes and publishes every open file.
    pub fn close_all(&mut self) -> Result<(), ParquetSinkError> {
        let mut first_error = None;
        while let Some(file) = self.open.pop() {
            if let Err(e) = self.publish(file) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn append(&mut self, batch: &OutputBatch) -> Result<Vec<Partition>, ParquetSinkError> {
        self.tag_columns.follow(&batch.tags);
        let s = &batch.samples;
        // Check every tag first: a refused batch leaves nothing buffered.
        for (index, &tag_id) in s.tag_ids.iter().enumerate() {
            if !matches!(batch.tags.get(tag_id as usize), Some(Some(_))) {
                return Err(ParquetSinkError::UnknownTag { index, tag_id });
            }
        }
        let mut extras: Vec<Option<&ExtraValue>> = Vec::new();
        if !s.extras.is_empty() {
            extras.resize(s.len(), None);
            for e in &s.extras {
                if let Some(slot) = extras.get_mut(e.index as usize) {
                    *slot = Some(&e.value);
                }
            }
        }
        let mut touched = Vec::new();
        let mut current: Option<usize> = None;
        for i in 0..s.len() {
            let ts = s.timestamps[i];
            let partition = Partition::of(ts);
            if let Some(seq) = self
                .current_record
                .filter(|_| !self.published_ranges.is_empty())
            {
                if self.already_published(partition, seq) {
                    continue;
                }
            }
            // Opening a file may close another and shift the indices: look up afresh then.
            let slot = match current {
                Some(c) if self.open[c].partition == partition => c,
                _ => self.file_for(partition)?,
            };
            current = Some(slot);
            if !touched.contains(&partition) {
                touched.push(partition);
            }
            if let Some(seq) = self.current_record {
                let f = &mut self.open[slot];
                f.records = Some(f.records.map_or((seq, seq), |(first, _)| (first, seq)));
            }
            let tag_id = s.tag_ids[i] as usize;
            let include_metadata = self.config.include_metadata;
            let tag_slot = self.tag_columns.slot(tag_id).expect("checked above");
            let tag_cols = tag_slot.get_or_insert_with(|| {
                let tag = batch.tags[tag_id].as_deref().expect("checked above");
                tag_columns(tag, include_metadata)
            });
            let quality = match Quality(s.quality[i]).level() {
                "good" => &self.quality_words.good,
                "uncertain" => &self.quality_words.uncertain,
                _ => &self.quality_words.bad,
            };
            let c = &mut self.open[slot].buffered;
            c.time.push(ts as i64);
            c.tag.push(tag_cols.tag.clone());
            let extra = extras.get(i).copied().flatten();
            match extra {
                Some(ExtraValue::Text(t)) => {
                    c.value_double_def.push(0);
                    c.value_text.push(ByteArray::from(t.as_bytes().to_vec()));
                    c.value_text_def.push(1);
                }
                _ => {
                    c.value_double.push(s.values[i]);
                    c.value_double_def.push(1);
                    c.value_text_def.push(0);
                }
            }
            match extra {
                Some(ExtraValue::Signed(v)) => {
                    c.value_int.push(decimal(*v as i128));
                    c.value_int_def.push(1);
                }
                Some(ExtraValue::Unsigned(v)) => {
                    c.value_int.push(decimal(*v as i128));
                    c.value_int_def.push(1);
                }
                _ => c.value_int_def.push(0),
            }
            c.unit.push(tag_cols.unit.clone());
            c.quality.push(quality.clone());
            c.status.push(s.quality[i] as i64);
            match &tag_cols.metadata {
                Some(m) => {
                    c.metadata.push(m.clone());
                    c.metadata_def.push(1);
                }
                None => c.metadata_def.push(0),
            }
        }
        Ok(touched)
    }

    /// Index of the open file of `partition`, opening one (and closing the oldest beyond
    /// `max_open_files`) when there is none.
    fn file_for(&mut self, partition: Partition) -> Result<usize, ParquetSinkError> {
        if let Some(i) = self.open.iter().position(|f| f.partition == partition) {
            return Ok(i);
        }
        // Beyond `max_open_files`, the oldest is closed after this batch (`write_out`), never
        // in the middle of one: a file then holds all rows of its hour of every record in
        // its range.
        let dir = self.config.directory.join(partition.dir());
        std::fs::create_dir_all(&dir).map_err(|source| ParquetSinkError::Io {
            path: dir.clone(),
            source,
        })?;
        let now_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seq = FILE_SEQ.fetch_add(1, Ordering::Relaxed);
        let stem = format!("{}{now_ns}-{seq}", file_prefix(&self.name));
        let final_path = dir.join(format!("{stem}.parquet"));
        let temp_path = dir.join(format!(".{stem}{IN_PROGRESS_SUFFIX}"));
        let file = File::create(&temp_path).map_err(|source| ParquetSinkError::Io {
            path: temp_path.clone(),
            source,
        })?;
        let writer = SerializedFileWriter::new(
            BufWriter::with_capacity(1 << 20, file),
            self.schema.clone(),
            self.properties.clone(),
        )
        .map_err(|source| ParquetSinkError::Parquet {
            path: temp_path.clone(),
            source,
        })?;
        self.open.push(OpenFile {
            partition,
            records: None,
            temp_path,
            final_path,
            writer,
            buffered: Columns::default(),
            rows: 0,
            opened: Instant::now(),
        });
        Ok(self.open.len() - 1)
    }

    /// Writes full row groups of the files `touched`, then closes what is too big or too old.
    fn write_out(&mut self, touched: &[Partition]) -> Result<(), ParquetSinkError> {
        let row_group_rows = self.config.row_group_rows;
        for f in self.open.iter_mut() {
            if touched.contains(&f.partition) && f.buffered.len() >= row_group_rows {
                write_row_group(f)?;
            }
        }
        while self.open.len() > self.config.max_open_files {
            let oldest = (0..self.open.len())
                .min_by_key(|&i| self.open[i].opened)
                .expect("at least one open file");
            let file = self.open.remove(oldest);
            self.publish(file)?;
        }
        let max_age = Duration::from_secs(self.config.max_file_age_s);
        let mut i = 0;
        while i < self.open.len() {
            let f = &self.open[i];
            let size = f.writer.bytes_written() as u64;
            if size >= self.config.max_file_bytes || f.opened.elapsed() >= max_age {
                let file = self.open.remove(i);
                self.publish(file)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Writes what is buffered, the footer, fsyncs, renames to the final name, fsyncs the
    /// directory. On failure the in-progress file is deleted (its rows are lost).
    fn publish(&mut self, mut f: OpenFile) -> Result<(), ParquetSinkError> {
        let temp_path = f.temp_path.clone();
        let result = (|| {
            if f.buffered.len() > 0 {
                write_row_group(&mut f)?;
            }
            let parquet_err = |source| ParquetSinkError::Parquet {
                path: f.temp_path.clone(),
                source,
            };
            let io_err = |source| ParquetSinkError::Io {
                path: f.temp_path.clone(),
                source,
            };
            let file = f
                .writer
                .into_inner()
                .map_err(parquet_err)?
                .into_inner()
                .map_err(|e| io_err(e.into_error()))?;
            file.sync_all().map_err(io_err)?;
            drop(file);
            if let (Some(id), Some((first, last))) = (self.buffer_identity, f.records) {
                let stem = f
                    .final_path
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy();
                f.final_path = f
                    .final_path
                    .with_file_name(format!("{stem}-b{id:016x}-r{first}-{last}.parquet"));
            }
            std::fs::rename(&f.temp_path, &f.final_path).map_err(io_err)?;
            if let Some(dir) = f.final_path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|source| ParquetSinkError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?;
            }
            tracing::debug!(sink = %self.name, rows = f.rows, path = %f.final_path.display(), "published Parquet file");
            Ok(f.final_path)
        })();
        match result {
            Ok(path) => {
                if let Some(u) = self.uploader.as_mut() {
                    u.add(path.clone());
                }
                push_recent(&mut self.published, path);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp_path);
                Err(e)
            }
        }
    }
}

/// Writes the buffered rows of `f` as one row group.
fn write_row_group(f: &mut OpenFile) -> Result<(), ParquetSinkError> {
    let path = f.temp_path.clone();
    let err = |source| ParquetSinkError::Parquet {
        path: path.clone(),
        source,
    };
    let c = std::mem::take(&mut f.buffered);
    let mut group = f.writer.next_row_group().map_err(err)?;
    let mut column = 0;
    while let Some(mut w) = group.next_column().map_err(err)? {
        match column {
            0 => w.typed::<Int64Type>().write_batch(&c.time, None, None),
            1 => w.typed::<ByteArrayType>().write_batch(&c.tag, None, None),
            2 => w.typed::<DoubleType>().write_batch(
                &c.value_double,
                Some(&c.value_double_def),
                None,
            ),
            3 => w.typed::<FixedLenByteArrayType>().write_batch(
                &c.value_int,
                Some(&c.value_int_def),
                None,
            ),
            4 => {
                w.typed::<ByteArrayType>()
                    .write_batch(&c.value_text, Some(&c.value_text_def), None)
            }
            5 => w.typed::<ByteArrayType>().write_batch(&c.unit, None, None),
            6 => w
                .typed::<ByteArrayType>()
                .write_batch(&c.quality, None, None),
            7 => w.typed::<Int64Type>().write_batch(&c.status, None, None),
            _ => w
                .typed::<ByteArrayType>()
                .write_batch(&c.metadata, Some(&c.metadata_def), None),
        }
        .map_err(err)?;
        w.close().map_err(err)?;
        column += 1;
    }
    group.close().map_err(err)?;
    f.rows += c.len() as u64;
    Ok(())
}

/// An integer as DECIMAL(20,0) in 9 big-endian two's-complement bytes.
fn decimal(v: i128) -> FixedLenByteArray {
    FixedLenByteArray::from(v.to_be_bytes()[16 - 9..].to_vec())
}

fn tag_columns(tag: &ResolvedTag, include_metadata: bool) -> TagColumns {
    let metadata = (include_metadata && !tag.metadata.is_empty()).then(|| {
        let map: serde_json::Map<String, serde_json::Value> = tag
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        ByteArray::from(serde_json::Value::Object(map).to_string().into_bytes())
    });
    TagColumns {
        tag: ByteArray::from(tag.path.as_bytes().to_vec()),
        unit: ByteArray::from(tag.unit.as_bytes().to_vec()),
        metadata,
    }
}

/// File names of sink `name` start with this (the name made safe for a file name).
fn file_prefix(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-")
}

/// Deletes `.<prefix>*.parquet.inprogress` files under `dir`; returns how many.
fn remove_in_progress(dir: &Path, prefix: &str) -> Result<usize, ParquetSinkError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ParquetSinkError::Io { path, source }
    };
    let mut removed = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let ours = name
                    .strip_prefix('.')
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(IN_PROGRESS_SUFFIX));
                if ours {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

impl Drop for ParquetSink {
    /// Publishes the open files (a clean shutdown leaves no rows behind).
    /// With `s3`, also tries (for up to a minute) to upload what is pending; what is left is
    /// uploaded at the next start.
    fn drop(&mut self) {
        if let Err(e) = self.close_all() {
            tracing::error!(sink = %self.name, "closing Parquet files at shutdown: {e}");
        }
        let Some(mut uploader) = self.uploader.take() else {
            return;
        };
        if uploader.pending().is_empty() {
            return;
        }
        let name = self.name.clone();
        // Own thread and runtime: drop may run inside a runtime, which must not block.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            rt.block_on(async {
                let upload = tokio::time::timeout(Duration::from_secs(60), uploader.run());
                match upload.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(sink = %name, "upload at shutdown failed, left for the next start: {e}"),
                    Err(_) => tracing::warn!(sink = %name, "upload at shutdown timed out, left for the next start"),
                }
            });
        })
        .join();
    }
}

#[async_trait]
impl Sink for ParquetSink {
    async fn write(&mut self, batch: &OutputBatch) -> Result<Vec<super::RefusedSample>, SinkError> {
        let result = self
            .append(batch)
            .and_then(|touched| self.write_out(&touched));
        result.map_err(|e| SinkError::Transient {
            sink: self.name.clone(),
            message: e.to_string(),
        })?;
        self.upload().await;
        Ok(Vec::new())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        // Closes files that have grown too old while no samples came.
        self.write_out(&[]).map_err(|e| SinkError::Transient {
            sink: self.name.clone(),
            message: e.to_string(),
        })?;
        self.upload().await;
        Ok(())
    }
}

/// The sink's published files under `dir`, and those uploaded from it (the upload ledger):
/// (hour, file name).
fn published_files(dir: &Path, prefix: &str) -> std::io::Result<Vec<(Partition, String)>> {
    let mut found = Vec::new();
    if let Ok(ledger) = std::fs::read_to_string(dir.join(upload::UPLOADED_LEDGER)) {
        for line in ledger.lines() {
            let path = dir.join(line);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if let (true, Some(p)) = (
                name.starts_with(prefix),
                path.parent().and_then(partition_of_dir),
            ) {
                found.push((p, name));
            }
        }
    }
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            if !(kind.is_file() && name.starts_with(prefix) && name.ends_with(".parquet")) {
                continue;
            }
            if let Some(p) = partition_of_dir(&d) {
                found.push((p, name));
            }
        }
    }
    Ok(found)
}

/// The hour of a `…/date=YYYY-MM-DD/hour=HH` directory.
fn partition_of_dir(dir: &Path) -> Option<Partition> {
    let hour: u8 = dir
        .file_name()?
        .to_str()?
        .strip_prefix("hour=")?
        .parse()
        .ok()?;
    let date = dir.parent()?.file_name()?.to_str()?.strip_prefix("date=")?;
    let mut parts = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    Some(Partition {
        days: days_from_civil(y, m as u32, d as u32),
        hour,
    })
}

/// Days since 1970-01-01 of a (year, month, day) (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Moves the sink to a blocking thread for `work` (encoding, fsync, rename) and back.
pub struct ParquetBehindBuffer {
    sink: Option<Box<ParquetSink>>,
    name: String,
}

impl ParquetBehindBuffer {
    pub fn new(sink: ParquetSink) -> Self {
        ParquetBehindBuffer {
            name: sink.name.clone(),
            sink: Some(Box::new(sink)),
        }
    }

    async fn off_worker<R: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut ParquetSink) -> R + Send + 'static,
    ) -> Result<R, SinkError> {
        let Some(mut sink) = self.sink.take() else {
            return Err(SinkError::transient(
                &self.name,
                "the sink was lost to a failed task",
            ));
        };
        let (sink, r) = tokio::task::spawn_blocking(move || {
            let r = work(&mut sink);
            (sink, r)
        })
        .await
        .map_err(|e| SinkError::transient(&self.name, format!("Parquet task failed: {e}")))?;
        self.sink = Some(sink);
        Ok(r)
    }
}

#[async_trait]
impl super::buffered::BufferedSink for ParquetBehindBuffer {
    async fn write_record(
        &mut self,
        seq: u64,
        batch: &OutputBatch,
    ) -> Result<Vec<super::RefusedSample>, SinkError> {
        let batch = batch.clone();
        let name = self.name.clone();
        self.off_worker(move |s| {
            s.current_record = Some(seq);
            let result = s.append(&batch).and_then(|touched| s.write_out(&touched));
            s.current_record = None;
            if result.is_ok() {
                s.last_record = Some(seq);
            }
            result.map_err(|e| SinkError::transient(&name, e))
        })
        .await??;
        if let Some(s) = self.sink.as_mut() {
            s.upload().await;
        }
        Ok(Vec::new())
    }

    async fn publish(&mut self, force: bool) -> Result<Option<u64>, SinkError> {
        let name = self.name.clone();
        let through = self
            .off_worker(move |s| {
                let r = if force {
                    s.close_all()
                } else {
                    s.write_out(&[])
                };
                r.map(|()| s.published_through())
                    .map_err(|e| SinkError::transient(&name, e))
            })
            .await??;
        if let Some(s) = self.sink.as_mut() {
            s.upload().await;
        }
        Ok(through)
    }

    fn published_before_start(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_skips_records_held_by_files_published_or_uploaded_before_for_this_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let hour = dir.path().join("date=2023-11-14/hour=22");
        std::fs::create_dir_all(&hour).unwrap();
        // Published and still here; published for another buffer; uploaded (ledger only).
        std::fs::write(hour.join("warm-1-0-b000000000000002a-r5-9.parquet"), b"").unwrap();
        std::fs::write(hour.join("warm-1-1-b00000000000000ff-r20-30.parquet"), b"").unwrap();
        std::fs::write(
            dir.path().join(upload::UPLOADED_LEDGER),
            "date=2023-11-14/hour=22/warm-2-0-b000000000000002a-r12-14.parquet\n",
        )
        .unwrap();
        let sink =
            ParquetSink::open_behind("warm", &ParquetSinkConfig::new(dir.path()), 42).unwrap();
        let p = Partition::of(1_700_000_000_000_000_000);
        let other = Partition { hour: 23, ..p };
        assert!(sink.already_published(p, 5) && sink.already_published(p, 9));
        assert!(sink.already_published(p, 13), "from the upload ledger");
        assert!(!sink.already_published(p, 10) && !sink.already_published(p, 25));
        assert!(!sink.already_published(other, 7), "another hour");
    }

    #[test]
    fn dates_round_trip() {
        for days in [-1000, 0, 19_000, 20_000, 60_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn remembers_only_the_recent_files() {
        let mut list: Vec<usize> = (0..RECENT_FILES).collect();
        push_recent(&mut list, RECENT_FILES);
        assert_eq!(list.len(), RECENT_FILES);
        assert_eq!((list[0], *list.last().unwrap()), (1, RECENT_FILES));
    }

    #[test]
    fn partitions_by_utc_hour() {
        // 2023-11-14T22:13:20Z
        let p = Partition::of(1_700_000_000_000_000_000);
        assert_eq!(p.dir(), "date=2023-11-14/hour=22");
        assert_eq!(Partition::of(0).dir(), "date=1970-01-01/hour=00");
        // 2024-02-29T23:59:59.999999999Z, a leap day.
        assert_eq!(
            Partition::of(1_709_251_199_999_999_999).dir(),
            "date=2024-02-29/hour=23"
        );
    }

    #[test]
    fn schema_parses_and_decimal_is_big_endian_twos_complement() {
        let schema = parse_message_type(SCHEMA).unwrap();
        assert_eq!(schema.get_fields().len(), 9);
        assert_eq!(decimal(1).data(), &[0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(decimal(-1).data(), &[0xff; 9]);
        assert_eq!(
            decimal(u64::MAX as i128).data(),
            &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn only_this_sinks_in_progress_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("date=2024-01-01/hour=00");
        std::fs::create_dir_all(&sub).unwrap();
        for name in [
            ".a-1-0.parquet.inprogress",
            ".b-1-0.parquet.inprogress",
            "a-1-0.parquet",
        ] {
            std::fs::write(sub.join(name), b"x").unwrap();
        }
        assert_eq!(remove_in_progress(dir.path(), "a-").unwrap(), 1);
        assert!(sub.join(".b-1-0.parquet.inprogress").exists());
        assert!(sub.join("a-1-0.parquet").exists());
    }
}
