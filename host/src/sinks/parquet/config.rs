//! Config of the Parquet sink (`type = "parquet"`).

use std::path::PathBuf;

use serde::Deserialize;

use super::upload::S3Config;

/// Writes rolling Parquet files, partitioned by the samples' UTC hour
/// (`date=YYYY-MM-DD/hour=HH/`), each published atomically when it is closed.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Directory the partitions go under, relative to the config file; created if absent.
    pub directory: PathBuf,
    /// Close a file once it holds this many bytes (compressed, as written).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Close a file once it has been open this many seconds (checked at every write and
    /// every flush, which the sink gets whenever its queue runs empty).
    #[serde(default = "default_max_file_age_s")]
    pub max_file_age_s: u64,
    /// Rows buffered in memory per open file before they are written as one row group.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// Files open at once (one per hour partition receiving data); opening one more closes
    /// the one opened first.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// zstd compression level, 1 (fast) to 22 (small).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Add each tag's metadata (source metadata and enrichment) as a JSON column.
    #[serde(default = "default_true")]
    pub include_metadata: bool,
    /// Upload closed files to an S3-compatible object store; `directory` then only stages
    /// them until the store has them.
    #[serde(default)]
    pub s3: Option<S3Config>,
    /// `[sinks.<name>.buffer]`: the durable buffer the sink sits behind (always). Samples are
    /// acknowledged to their sources once in the buffer; a record leaves it only when the
    /// file holding its rows is published. Default path `data/buffer/<sink>.redb` beside the
    /// config.
    #[serde(default)]
    pub buffer: crate::buffer::BufferConfig,
}

fn default_max_file_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_max_file_age_s() -> u64 {
    600
}
fn default_row_group_rows() -> usize {
    64 * 1024
}
fn default_max_open_files() -> usize {
    4
}
fn default_zstd_level() -> i32 {
    3
}
fn default_true() -> bool {
    true
}

impl ParquetSinkConfig {
    /// A config with every default, writing under `directory`.
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        ParquetSinkConfig {
            directory: directory.into(),
            max_file_bytes: default_max_file_bytes(),
            max_file_age_s: default_max_file_age_s(),
            row_group_rows: default_row_group_rows(),
            max_open_files: default_max_open_files(),
            zstd_level: default_zstd_level(),
            include_metadata: true,
            s3: None,
            buffer: crate::buffer::BufferConfig::default(),
        }
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.directory.as_os_str().is_empty() {
            return Err(("directory".into(), "must not be empty".into()));
        }
        if self.max_file_bytes == 0 {
            return Err(("max_file_bytes".into(), "must be at least 1".into()));
        }
        if self.max_file_age_s == 0 {
            return Err(("max_file_age_s".into(), "must be at least 1".into()));
        }
        if self.row_group_rows == 0 {
            return Err(("row_group_rows".into(), "must be at least 1".into()));
        }
        if self.max_open_files == 0 {
            return Err(("max_open_files".into(), "must be at least 1".into()));
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(("zstd_level".into(), "must be between 1 and 22".into()));
        }
        if let Some(s3) = &self.s3 {
            s3.validate()?;
        }
        self.buffer
            .validate()
            .map_err(|(k, m)| (format!("buffer.{k}"), m))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let mut c = ParquetSinkConfig::new("out");
        assert!(c.validate().is_ok());
        c.zstd_level = 0;
        assert_eq!(c.validate().unwrap_err().0, "zstd_level");
        c.zstd_level = 3;
        c.row_group_rows = 0;
        assert_eq!(c.validate().unwrap_err().0, "row_group_rows");
    }
}
