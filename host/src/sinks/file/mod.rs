//! The file sink: JSON lines, one per sample, appended and flushed per batch.
//!
//! A sample line: `{"path":"plant/site1/area1/line1/press1/pressure","value":612.3,
//! "unit":"kPa","quality":"good","status":0,"ts_ns":1764070000000000000,
//! "vendor_path":"Site1.Area1.Line1.Press1.Pressure","meta":{"asset_id":"P-1"}}`.
//! `value` is null for NaN/infinite values; `text`/`int` carry side-channel values.

mod config;

pub use config::FileSinkConfig;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::{DeadLetterSink, Sink, SinkError};
use crate::model::{ExtraValue, Quality};
use crate::pipeline::{DeadLetter, OutputBatch};

pub struct FileSink {
    name: String,
    path: String,
    out: BufWriter<File>,
    include_metadata: bool,
    delay: Duration,
}

#[derive(Serialize)]
struct Line<'a> {
    path: &'a str,
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    int: Option<String>,
    unit: &'a str,
    quality: &'static str,
    status: u32,
    ts_ns: u64,
    vendor_path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Meta<'a>>,
}

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
        let err = |m: String| SinkError::Io {
            sink: name.into(),
            message: m,
        };
        if let Some(dir) = c.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&c.path)
            .map_err(|e| err(format!("cannot open {}: {e}", c.path.display())))?;
        Ok(FileSink {
            name: name.into(),
            path: c.path.display().to_string(),
            out: BufWriter::with_capacity(1 << 20, file),
            include_metadata: c.include_metadata,
            delay: Duration::from_millis(c.delay_ms),
        })
    }

    fn io(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Io {
            sink: self.name.clone(),
            message: format!("{}: {e}", self.path),
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &OutputBatch) -> Result<(), SinkError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let s = &batch.samples;
        let mut extras = s.extras.iter().peekable();
        for i in 0..s.len() {
            let Some(Some(tag)) = batch.tags.get(s.tag_ids[i] as usize) else {
                return Err(self.io(format!("tag id {} unknown to the tag table", s.tag_ids[i])));
            };
            let mut text = None;
            let mut int = None;
            while let Some(e) = extras.next_if(|e| e.index as usize <= i) {
                if e.index as usize == i {
                    match &e.value {
                        ExtraValue::Text(t) => text = Some(t.as_str()),
                        ExtraValue::Signed(v) => int = Some(v.to_string()),
                        ExtraValue::Unsigned(v) => int = Some(v.to_string()),
                    }
                }
            }
            let value = s.values[i];
            let line = Line {
                path: &tag.path,
                value: value.is_finite().then_some(value),
                text,
                int,
                unit: &tag.unit,
                quality: Quality(s.quality[i]).level(),
                status: s.quality[i],
                ts_ns: s.timestamps[i],
                vendor_path: &tag.vendor_path,
                meta: (self.include_metadata && !tag.metadata.is_empty())
                    .then_some(Meta(&tag.metadata)),
            };
            serde_json::to_writer(&mut self.out, &line).map_err(|e| self.io(e))?;
            self.out.write_all(b"\n").map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.io(e))
    }
}

#[async_trait]
impl DeadLetterSink for FileSink {
    async fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        for l in letters {
            serde_json::to_writer(&mut self.out, l).map_err(|e| self.io(e))?;
            self.out.write_all(b"\n").map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.io(e))
    }
}
