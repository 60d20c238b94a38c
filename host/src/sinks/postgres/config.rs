//! Config of the PostgreSQL / TimescaleDB sink (`type = "postgres"`).

use std::path::PathBuf;

use serde::Deserialize;

/// Writes samples into a PostgreSQL table (a TimescaleDB hypertable when the extension is
/// installed in the database), idempotently: a batch written twice adds no rows.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection string, key/value (`host=db.plant user=ferrule dbname=historian`) or URL
    /// (`postgresql://ferrule@db.plant/historian`). Put the password in `password`, not here.
    pub connection: String,
    /// Password for password (md5 / SCRAM) authentication. Keep it out of the file with an
    /// environment variable: `password = "${FERRULE_PG_PASSWORD}"`.
    #[serde(default)]
    pub password: Option<String>,
    /// Encrypt the connection with TLS, verifying the server's certificate and host name
    /// against the system's root certificates and `ca_file` (`sslmode=require`, verified).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of further CA certificates to trust with `tls` (a private CA, or a
    /// self-signed server certificate), relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Table the samples go to, optionally schema-qualified (`historian.samples`).
    #[serde(default = "default_table")]
    pub table: String,
    /// Create the table (and, with TimescaleDB, the hypertable) on first connect if absent.
    #[serde(default = "default_true")]
    pub create_table: bool,
    /// TimescaleDB chunk interval for a newly created hypertable (a PostgreSQL interval).
    #[serde(default = "default_chunk_interval")]
    pub chunk_interval: String,
    /// `copy` (binary COPY through a staging table, the default) or `insert` (multi-row
    /// INSERT statements; slower, for servers or poolers that refuse COPY).
    #[serde(default)]
    pub method: WriteMethod,
    /// Rows per INSERT statement with `method = "insert"` (at most 7000: 9 parameters a row).
    #[serde(default = "default_insert_rows")]
    pub insert_rows: usize,
    /// Store each tag's metadata (source metadata and enrichment) as JSONB in every row.
    #[serde(default = "default_true")]
    pub include_metadata: bool,
    /// Give up on a connection attempt after this many seconds (then retried with backoff).
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: u64,
    /// Give up on one batch write after this many seconds, drop the connection and retry.
    #[serde(default = "default_write_timeout_s")]
    pub write_timeout_s: u64,
    /// `[sinks.<name>.buffer]`: put the durable store-and-forward buffer (the MQTT sink's) in
    /// front of the database: batches are committed locally first (and their sources
    /// acknowledged), written to PostgreSQL in order, and removed once committed there; a
    /// database outage fills the buffer instead of holding the pipeline back. Without it, a
    /// failing write is retried and pushes back on the pipeline.
    #[serde(default)]
    pub buffer: Option<crate::buffer::BufferConfig>,
}

/// How rows reach the table.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMethod {
    #[default]
    Copy,
    Insert,
}

/// Maximum rows per INSERT: PostgreSQL allows 65535 bind parameters, 9 per row.
pub const MAX_INSERT_ROWS: usize = 7000;

fn default_table() -> String {
    "ferrule_samples".into()
}
fn default_true() -> bool {
    true
}
fn default_chunk_interval() -> String {
    "1 day".into()
}
fn default_insert_rows() -> usize {
    1000
}
fn default_connect_timeout_s() -> u64 {
    10
}
fn default_write_timeout_s() -> u64 {
    60
}

/// The password never shows in logs or error messages.
impl std::fmt::Debug for PostgresSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSinkConfig")
            .field("connection", &self.connection)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("table", &self.table)
            .field("create_table", &self.create_table)
            .field("chunk_interval", &self.chunk_interval)
            .field("method", &self.method)
            .field("insert_rows", &self.insert_rows)
            .field("include_metadata", &self.include_metadata)
            .field("connect_timeout_s", &self.connect_timeout_s)
            .field("write_timeout_s", &self.write_timeout_s)
            .field("buffer", &self.buffer)
            .finish()
    }
}

impl PostgresSinkConfig {
    /// A config with every default, writing to the database named by `connection`.
    pub fn new(connection: impl Into<String>) -> Self {
        PostgresSinkConfig {
            connection: connection.into(),
            password: None,
            tls: false,
            ca_file: None,
            table: default_table(),
            create_table: true,
            chunk_interval: default_chunk_interval(),
            method: WriteMethod::Copy,
            insert_rows: default_insert_rows(),
            include_metadata: true,
            connect_timeout_s: default_connect_timeout_s(),
            write_timeout_s: default_write_timeout_s(),
            buffer: None,
        }
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(b) = &self.buffer {
            b.validate().map_err(|(k, m)| (format!("buffer.{k}"), m))?;
        }
        match self.connection.parse::<tokio_postgres::Config>() {
            Err(e) => {
                return Err(("connection".into(), format!("not a connection string: {e}")));
            }
            Ok(c) if c.get_ssl_mode() == tokio_postgres::config::SslMode::Require && !self.tls => {
                return Err((
                    "connection".into(),
                    "asks for sslmode=require: set tls = true (and ca_file if needed)".into(),
                ));
            }
            Ok(_) => {}
        }
        if let Some(f) = &self.ca_file {
            if !self.tls {
                return Err(("ca_file".into(), "is used only with tls = true".into()));
            }
            if !f.is_file() {
                return Err(("ca_file".into(), format!("no file at {}", f.display())));
            }
        }
        if quoted_table(&self.table).is_none() {
            return Err((
                "table".into(),
                "must be `name` or `schema.name`, each a letter or `_` then letters, digits or `_`"
                    .into(),
            ));
        }
        if self.chunk_interval.trim().is_empty() || self.chunk_interval.contains('\'') {
            return Err((
                "chunk_interval".into(),
                "must be a PostgreSQL interval such as `1 day`".into(),
            ));
        }
        if self.insert_rows == 0 || self.insert_rows > MAX_INSERT_ROWS {
            return Err((
                "insert_rows".into(),
                format!("must be between 1 and {MAX_INSERT_ROWS}"),
            ));
        }
        if self.connect_timeout_s == 0 {
            return Err(("connect_timeout_s".into(), "must be at least 1".into()));
        }
        if self.write_timeout_s == 0 {
            return Err(("write_timeout_s".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

/// `table` as a quoted SQL identifier (`"schema"."name"`), or None when it is not a plain
/// identifier or schema-qualified one.
pub fn quoted_table(table: &str) -> Option<String> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.is_empty() || parts.len() > 2 {
        return None;
    }
    let plain = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && p.len() <= 63
    };
    if !parts.iter().all(|p| plain(p)) {
        return None;
    }
    Some(
        parts
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join("."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_checked_and_quoted() {
        assert_eq!(quoted_table("samples").unwrap(), "\"samples\"");
        assert_eq!(quoted_table("h.samples_1").unwrap(), "\"h\".\"samples_1\"");
        for bad in ["", "a.b.c", "1x", "x;drop", "x\"y", "a."] {
            assert!(quoted_table(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = PostgresSinkConfig::new("host=127.0.0.1 user=postgres");
        assert!(c.validate().is_ok());
        c.insert_rows = MAX_INSERT_ROWS + 1;
        assert_eq!(c.validate().unwrap_err().0, "insert_rows");
        c.insert_rows = 10;
        c.table = "bad name".into();
        assert_eq!(c.validate().unwrap_err().0, "table");
        c.table = "ok".into();
        c.connection = "host=".into();
        c.connection = "nonsense_key=1".into();
        assert_eq!(c.validate().unwrap_err().0, "connection");
    }

    #[test]
    fn debug_hides_the_password() {
        let mut c = PostgresSinkConfig::new("host=x");
        c.password = Some("s3cret".into());
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
