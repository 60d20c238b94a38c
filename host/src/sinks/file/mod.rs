//! The file sink: JSON lines, one per sample, rendered in memory per batch and appended at
//! each flush, then fsync'd (`fsync = "batch"`, the default) before the sources are
//! acknowledged; optionally rotated by size (`rotate_bytes`, `keep_files`) at a batch
//! boundary. A failed append (a full disk) is cut back to the last whole line, so the file
//! never holds a torn line, and the lines are appended again at the next try. File work runs
//! off the async workers.
//!
//! A sample line: `{"path":"plant/site1/area1/line1/press1/pressure","unit":"kPa",
//! "vendor_path":"Site1.Area1.Line1.Press1.Pressure","meta":{"asset_id":"P-1"},
//! "value":612.3,"quality":"good","status":0,"ts_ns":1764070000000000000}`.
//! `value` is null for NaN/infinite values; `text`/`int` carry side-channel values.

mod config;

pub use config::{FileSinkConfig, FsyncPolicy};

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use super::{DeadLetterSink, PerTag, Sink, SinkError};
use crate::model::{DeadLetter, OutputBatch, ResolvedTag};
use crate::model::{ExtraValue, Quality};

pub struct FileSink {
    name: String,
    path: String,
    file: PathBuf,
    out: File,
    /// Bytes in the file (kept, not asked for at every flush).
    len: u64,
    /// Lines rendered and not yet appended.
    pending: Vec<u8>,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
    last_sync: Instant,
    rotate_bytes: Option<u64>,
    keep_files: u32,
    include_metadata: bool,
    delay: Duration,
    /// Per tag id, the JSON of its constant fields (path, unit, vendor path, metadata),
    /// rendered once per tag table rather than once per sample.
    prefixes: PerTag<Box<[u8]>>,
}

/// Metadata as a JSON object, keys in order.
struct Meta<'a>(&'a [(String, String)]);

impl Serialize for Meta<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl FileSink {
    pub fn open(name: &str, c: &FileSinkConfig) -> Result<Self, SinkError> {
        let err = |m: String| SinkError::Transient {
            sink: name.into(),
            message: m,
        };
        if let Some(dir) = c.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let file = append_to(&c.path)
            .map_err(|e| err(format!("cannot open {}: {e}", c.path.display())))?;
        Ok(FileSink {
            name: name.into(),
            path: c.path.display().to_string(),
            file: c.path.clone(),
            len: file
                .metadata()
                .map_err(|e| err(format!("cannot read {}: {e}", c.path.display())))?
                .len(),
            out: file,
            pending: Vec::with_capacity(1 << 20),
            fsync: c.fsync,
            fsync_interval: Duration::from_millis(c.fsync_interval_ms),
            last_sync: Instant::now(),
            rotate_bytes: c.rotate_bytes,
            keep_files: c.keep_files,
            include_metadata: c.include_metadata,
            delay: Duration::from_millis(c.delay_ms),
            prefixes: PerTag::default(),
        })
    }

    /// Appends the pending lines whole (a failed append is cut back to where it started and
    /// the lines stay pending), fsyncs per `fsync`; then, if the file reached `rotate_bytes`,
    /// shifts the rotated files up by one (dropping the oldest beyond `keep_files`) and
    /// starts a new file.
    fn flush_and_rotate(&mut self) -> Result<(), SinkError> {
        if !self.pending.is_empty() {
            // Into the page cache, on this thread; the fsync below goes off the workers.
            if let Err(e) = self.out.write_all(&self.pending) {
                // No torn line: cut back to the last whole line; the lines stay pending.
                let _ = self.out.set_len(self.len);
                return Err(self.io(e));
            }
            self.len += self.pending.len() as u64;
            self.pending.clear();
        }
        let due = match self.fsync {
            FsyncPolicy::Batch => true,
            FsyncPolicy::Interval => self.last_sync.elapsed() >= self.fsync_interval,
        };
        if due {
            super::off_worker(|| self.out.sync_data()).map_err(|e| self.io(e))?;
            self.last_sync = Instant::now();
        }
        let Some(limit) = self.rotate_bytes else {
            return Ok(());
        };
        let len = self.len;
        if len < limit {
            return Ok(());
        }
        super::off_worker(|| self.rotate(len))
    }

    /// Shifts the rotated files up by one and starts a new file (blocking file work).
    fn rotate(&mut self, len: u64) -> Result<(), SinkError> {
        self.out.sync_all().map_err(|e| self.io(e))?;
        let keep = self.keep_files;
        let dropped = rotated(&self.file, keep);
        if dropped.exists() {
            std::fs::remove_file(&dropped).map_err(|e| self.io(e))?;
        }
        for n in (1..keep).rev() {
            let from = rotated(&self.file, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.file, n + 1)).map_err(|e| self.io(e))?;
            }
        }
        std::fs::rename(&self.file, rotated(&self.file, 1)).map_err(|e| self.io(e))?;
        self.out = append_to(&self.file).map_err(|e| self.io(e))?;
        self.len = 0;
        if let Some(dir) = self.file.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io(e))?;
        }
        tracing::info!(sink = %self.name, path = %self.path, bytes = len, keep, "file rotated");
        Ok(())
    }

    fn io(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Transient {
            sink: self.name.clone(),
            message: format!("{}: {e}", self.path),
        }
    }

    /// `{"path":…,"unit":…,"vendor_path":…,["meta":{…},]` for `tag`.
    fn render_prefix(tag: &ResolvedTag, include_metadata: bool) -> Box<[u8]> {
        let mut b = Vec::with_capacity(128);
        let json = |b: &mut Vec<u8>, s: &str| {
            serde_json::to_writer(&mut *b, s).expect("writing JSON to memory")
        };
        b.extend_from_slice(b"{\"path\":");
        json(&mut b, &tag.path);
        b.extend_from_slice(b",\"unit\":");
        json(&mut b, &tag.unit);
        b.extend_from_slice(b",\"vendor_path\":");
        json(&mut b, &tag.vendor_path);
        if include_metadata && !tag.metadata.is_empty() {
            b.extend_from_slice(b",\"meta\":");
            serde_json::to_writer(&mut b, &Meta(&tag.metadata)).expect("writing JSON to memory");
        }
        b.push(b',');
        b.into_boxed_slice()
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &OutputBatch) -> Result<Vec<super::RefusedSample>, SinkError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.prefixes.follow(&batch.tags);
        let s = &batch.samples;
        let mut extras = s.extras.iter().peekable();
        let json_err = |e: serde_json::Error| SinkError::Transient {
            sink: self.name.clone(),
            message: format!("{}: {e}", self.path),
        };
        for i in 0..s.len() {
            let id = s.tag_ids[i] as usize;
            let prefix = match self.prefixes.slot(id) {
                Some(Some(p)) => p,
                Some(slot) => match batch.tags.get(id) {
                    Some(Some(tag)) => slot.insert(Self::render_prefix(tag, self.include_metadata)),
                    _ => return Err(self.io(format!("tag id {id} unknown to the tag table"))),
                },
                None => return Err(self.io(format!("tag id {id} unknown to the tag table"))),
            };
            let out = &mut self.pending;
            let io = |e: std::io::Error| SinkError::Transient {
                sink: self.name.clone(),
                message: format!("{}: {e}", self.path),
            };
            out.write_all(prefix).map_err(io)?;
            out.write_all(b"\"value\":").map_err(io)?;
            let value = s.values[i];
            if value.is_finite() {
                serde_json::to_writer(&mut *out, &value).map_err(json_err)?;
            } else {
                out.write_all(b"null").map_err(io)?;
            }
            while let Some(e) = extras.next_if(|e| e.index as usize <= i) {
                if e.index as usize == i {
                    match &e.value {
                        ExtraValue::Text(t) => {
                            out.write_all(b",\"text\":").map_err(io)?;
                            serde_json::to_writer(&mut *out, t).map_err(json_err)?;
                        }
                        ExtraValue::Signed(v) => {
                            out.write_all(b",\"int\":").map_err(io)?;
                            serde_json::to_writer(&mut *out, &v.to_string()).map_err(json_err)?;
                        }
                        ExtraValue::Unsigned(v) => {
                            out.write_all(b",\"int\":").map_err(io)?;
                            serde_json::to_writer(&mut *out, &v.to_string()).map_err(json_err)?;
                        }
                    }
                }
            }
            out.write_all(b",\"quality\":\"").map_err(io)?;
            out.write_all(Quality(s.quality[i]).level().as_bytes())
                .map_err(io)?;
            out.write_all(b"\",\"status\":").map_err(io)?;
            serde_json::to_writer(&mut *out, &s.quality[i]).map_err(json_err)?;
            out.write_all(b",\"ts_ns\":").map_err(io)?;
            serde_json::to_writer(&mut *out, &s.timestamps[i]).map_err(json_err)?;
            out.write_all(b"}\n").map_err(io)?;
        }
        Ok(Vec::new())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.flush_and_rotate()
    }
}

#[async_trait]
impl DeadLetterSink for FileSink {
    async fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        for l in letters {
            serde_json::to_writer(&mut self.pending, l).map_err(|e| self.io(e))?;
            self.pending.push(b'\n');
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.flush_and_rotate()
    }
}

fn append_to(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `path.n`: the n-th newest rotated file.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TagTable;
    use crate::model::{DataType, Extra, SampleBatch};
    use std::sync::Arc;

    fn tag(id: u32, path: &str) -> Option<Arc<ResolvedTag>> {
        Some(Arc::new(ResolvedTag {
            id,
            source: "s".into(),
            vendor_path: format!("V.{id}"),
            path: path.into(),
            unit: "kPa".into(),
            data_type: DataType::Float64,
            metadata: vec![("asset_id".into(), "A \"1\"".into())],
        }))
    }

    #[tokio::test]
    async fn lines_are_valid_json_with_extras_nan_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let mut sink = FileSink::open("t", &FileSinkConfig::new(&path)).unwrap();
        let table = TagTable::from(vec![tag(0, "plant/a/b/c/d/p"), tag(1, "plant/a/b/c/d/q")]);
        let mut samples = SampleBatch::default();
        samples.push(0, 1.5, Quality::GOOD, 10);
        samples.push(1, f64::NAN, Quality(0x8031_0000), 11);
        samples.push(0, 2.0, Quality::UNCERTAIN, 12);
        samples.extras.push(Extra {
            index: 1,
            value: ExtraValue::Text("run\"ning".into()),
        });
        samples.extras.push(Extra {
            index: 2,
            value: ExtraValue::Unsigned(u64::MAX),
        });
        let batch = OutputBatch::new(samples, Arc::new(table));
        Sink::write(&mut sink, &batch).await.unwrap();
        // A new table (e.g. after a swap) re-renders the prefixes.
        let mut table2: TagTable = (*batch.tags).clone();
        table2[0] = tag(0, "plant/a/b/c/d/renamed");
        let batch2 = OutputBatch::new((*batch.samples).clone(), Arc::new(table2));
        Sink::write(&mut sink, &batch2).await.unwrap();
        Sink::flush(&mut sink).await.unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0]["path"], "plant/a/b/c/d/p");
        assert_eq!(lines[0]["value"], 1.5);
        assert_eq!(lines[0]["meta"]["asset_id"], "A \"1\"");
        assert_eq!(lines[1]["value"], serde_json::Value::Null);
        assert_eq!(lines[1]["text"], "run\"ning");
        assert_eq!(lines[1]["quality"], "bad");
        assert_eq!(lines[1]["status"], 0x8031_0000u32);
        assert_eq!(lines[2]["int"], u64::MAX.to_string());
        assert_eq!(lines[2]["quality"], "uncertain");
        assert_eq!(lines[2]["ts_ns"], 12);
        assert_eq!(lines[3]["path"], "plant/a/b/c/d/renamed");
    }

    #[tokio::test]
    async fn rotation_keeps_every_line_until_the_oldest_file_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.jsonl");
        let config = FileSinkConfig {
            rotate_bytes: Some(4096),
            keep_files: 2,
            ..FileSinkConfig::new(&path)
        };
        let mut sink = FileSink::open("t", &config).unwrap();
        let table = Arc::new(TagTable::from(vec![tag(0, "plant/a/b/c/d/p")]));
        // 30 batches of 20 samples, ~110 bytes a line: a rotation every ~2 batches.
        for b in 0..30u64 {
            let mut samples = SampleBatch::default();
            for i in 0..20 {
                samples.push(0, 1.0, Quality::GOOD, b * 20 + i);
            }
            let batch = OutputBatch::new(samples, table.clone());
            Sink::write(&mut sink, &batch).await.unwrap();
            Sink::flush(&mut sink).await.unwrap();
        }
        let read = |p: &Path| -> Vec<u64> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["ts_ns"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        assert!(!rotated(&path, 3).exists(), "keep_files = 2");
        let (older, newer, current) = (
            read(&rotated(&path, 2)),
            read(&rotated(&path, 1)),
            read(&path),
        );
        for f in [&older, &newer] {
            assert_eq!(f.len() % 20, 0, "a rotation split a batch");
            let bytes = f.len() * 110;
            assert!(bytes >= 3500, "rotated early: {} lines", f.len());
        }
        // Oldest to newest, the kept files hold one contiguous run ending with the last sample.
        let all: Vec<u64> = older
            .iter()
            .chain(&newer)
            .chain(&current)
            .copied()
            .collect();
        let first = all[0];
        assert_eq!(all, (first..600).collect::<Vec<_>>());
        assert!(
            first > 0,
            "nothing was dropped: the test did not rotate enough"
        );
    }
}
