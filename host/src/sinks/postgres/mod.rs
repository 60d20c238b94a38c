//! The PostgreSQL / TimescaleDB sink: one row per sample in a documented table (see the
//! README), created on first connect; a hypertable when the `timescaledb` extension is
//! installed in the database.
//!
//! A batch is written in one transaction: binary COPY straight into the table; when that
//! hits the (tag, time) key (the batch repeats stored rows), the transaction rolls back to a
//! savepoint and copies the batch into a session-local staging table, then `INSERT … SELECT …
//! ON CONFLICT (tag, time) DO NOTHING`. So a batch written again (a retry after a lost commit
//! acknowledgement, a replay after a restart) adds no rows, and `write` returning Ok means
//! the rows are committed. A lost connection
//! fails the write; the next attempt reconnects (the caller retries with backoff).
//!
//! A sample the database refuses for good never holds the others back: text with a NUL
//! character (which PostgreSQL cannot store) is refused before the write, and when the
//! database refuses a batch with a data error (SQLSTATE class 22, e.g. a value out of range,
//! or 23, e.g. a CHECK constraint) the batch is bisected in separate transactions until the
//! offending rows are found; they alone go to the dead-letter (`postgres-data-error`, with the
//! server's message), the rest is committed.
//! With `tls`, the connection is encrypted by rustls and the server certificate verified.

mod config;
mod encode;

pub use config::{quoted_table, PostgresSinkConfig, WriteMethod, MAX_INSERT_ROWS};
pub use encode::{PgJsonb, PgNumeric, PgTimestamp};

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{PerTag, RefusedSample, Sink, SinkError};

/// The dead-letter reason of a sample PostgreSQL refused.
pub const REFUSED_REASON: &str = "postgres-data-error";
use crate::model::{ExtraValue, Quality};
use crate::model::{OutputBatch, ResolvedTag};

/// Columns in write order, with their types.
pub const COLUMNS: [(&str, Type); 9] = [
    ("time", Type::TIMESTAMPTZ),
    ("tag", Type::TEXT),
    ("value_double", Type::FLOAT8),
    ("value_int", Type::NUMERIC),
    ("value_text", Type::TEXT),
    ("unit", Type::TEXT),
    ("quality", Type::TEXT),
    ("status", Type::INT8),
    ("metadata", Type::JSONB),
];

/// Session-local table each batch is copied into before it is merged into the target.
const STAGING_TABLE: &str = "ferrule_staging";

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("cannot connect: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot create the table {table}: {source}")]
    Schema {
        table: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("writing a batch of {rows} rows failed: {source}")]
    Write {
        rows: usize,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what} took longer than {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("sample {index} names tag id {tag_id}, unknown to the batch's tag table")]
    UnknownTag { index: usize, tag_id: u32 },
}

/// The SQL that creates the sample table (idempotent).
pub fn create_table_sql(table: &str) -> String {
    let index = format!(
        "{}_time_idx",
        table.rsplit('.').next().unwrap_or(table).trim_matches('"')
    );
    let quoted = quoted_table(table).unwrap_or_else(|| table.to_string());
    format!(
        "CREATE TABLE IF NOT EXISTS {quoted} (
    time         TIMESTAMPTZ      NOT NULL,
    tag          TEXT             NOT NULL,
    value_double DOUBLE PRECISION,
    value_int    NUMERIC(20, 0),
    value_text   TEXT,
    unit         TEXT             NOT NULL,
    quality      TEXT             NOT NULL,
    status       BIGINT           NOT NULL,
    metadata     JSONB,
    PRIMARY KEY (tag, time)
);
CREATE INDEX IF NOT EXISTS \"{index}\" ON {quoted} (time DESC);"
    )
}

pub struct PostgresSink {
    name: String,
    config: PostgresSinkConfig,
    pg_config: tokio_postgres::Config,
    table: String,
    client: Option<Client>,
    /// The TLS connector, with `tls`.
    tls: Option<MakeRustlsConnect>,
    /// Per tag id, its metadata as JSON text (None: no metadata), rendered once per table.
    metadata_json: PerTag<Option<Arc<str>>>,
    /// Whether the last connect found TimescaleDB and made the table a hypertable.
    hypertable: bool,
}

/// One sample as the row it becomes.
struct Row<'a> {
    time: PgTimestamp,
    tag: &'a str,
    value_double: Option<f64>,
    value_int: Option<PgNumeric>,
    value_text: Option<&'a str>,
    unit: &'a str,
    quality: &'static str,
    status: i64,
    metadata: Option<PgJsonb>,
}

impl Row<'_> {
    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.time,
            &self.tag,
            &self.value_double,
            &self.value_int,
            &self.value_text,
            &self.unit,
            &self.quality,
            &self.status,
            &self.metadata,
        ]
    }
}

impl PostgresSink {
    /// Checks the config; connects lazily, at the first write.
    pub fn open(name: &str, config: &PostgresSinkConfig) -> Result<Self, SinkError> {
        let err = |message: String| SinkError::Transient {
            sink: name.into(),
            message,
        };
        let mut pg_config: tokio_postgres::Config = config
            .connection
            .parse()
            .map_err(|e| err(format!("connection: {e}")))?;
        if let Some(p) = &config.password {
            pg_config.password(p);
        }
        if pg_config.get_application_name().is_none() {
            pg_config.application_name(format!("ferrule sink {name}"));
        }
        pg_config.connect_timeout(Duration::from_secs(config.connect_timeout_s));
        let table = quoted_table(&config.table)
            .ok_or_else(|| err(format!("table: `{}` is not a valid name", config.table)))?;
        let tls = if config.tls {
            pg_config.ssl_mode(SslMode::Require);
            Some(tls_connector(config.ca_file.as_deref()).map_err(|e| err(e.to_string()))?)
        } else {
            None
        };
        Ok(PostgresSink {
            name: name.into(),
            config: config.clone(),
            pg_config,
            table,
            client: None,
            tls,
            metadata_json: PerTag::default(),
            hypertable: false,
        })
    }

    /// Whether the table is a TimescaleDB hypertable (known after the first connect).
    pub fn is_hypertable(&self) -> bool {
        self.hypertable
    }

    /// A live connection with the table and the staging table in place.
    async fn connection(&mut self) -> Result<&mut Client, PostgresError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(self.client.as_mut().expect("checked above"));
        }
        self.client = None;
        let name = self.name.clone();
        let closed = move |e: tokio_postgres::Error| {
            tracing::warn!(sink = %name, "PostgreSQL connection closed: {e}");
        };
        let client = match &self.tls {
            None => {
                let (client, connection) = self
                    .pg_config
                    .connect(NoTls)
                    .await
                    .map_err(PostgresError::Connect)?;
                tokio::spawn(async move { connection.await.unwrap_or_else(closed) });
                client
            }
            Some(tls) => {
                let (client, connection) = self
                    .pg_config
                    .connect(tls.clone())
                    .await
                    .map_err(PostgresError::Connect)?;
                tokio::spawn(async move { connection.await.unwrap_or_else(closed) });
                client
            }
        };
        let schema_err = |source| PostgresError::Schema {
            table: self.config.table.clone(),
            source,
        };
        if self.config.create_table {
            client
                .batch_execute(&create_table_sql(&self.config.table))
                .await
                .map_err(schema_err)?;
            let timescale = client
                .query_opt(
                    "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'",
                    &[],
                )
                .await
                .map_err(schema_err)?
                .is_some();
            if timescale {
                client
                    .execute(
                        &format!(
                            "SELECT create_hypertable('{}', 'time', \
                             chunk_time_interval => INTERVAL '{}', if_not_exists => TRUE, \
                             migrate_data => TRUE)",
                            self.table.replace('\'', "''"),
                            self.config.chunk_interval
                        ),
                        &[],
                    )
                    .await
                    .map_err(schema_err)?;
            }
            self.hypertable = timescale;
        }
        if self.config.method == WriteMethod::Copy {
            client
                .batch_execute(&format!(
                    "CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} \
                     (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                    self.table
                ))
                .await
                .map_err(schema_err)?;
        }
        tracing::info!(sink = %self.name, table = %self.config.table, hypertable = self.hypertable, "connected to PostgreSQL");
        Ok(self.client.insert(client))
    }

    /// The rows of `batch`, in sample order, with their sample indices; samples whose text
    /// PostgreSQL cannot store (a NUL character) are refused instead.
    fn rows<'a>(
        &mut self,
        batch: &'a OutputBatch,
        refused: &mut Vec<RefusedSample>,
    ) -> Result<(Vec<Row<'a>>, Vec<usize>), PostgresError> {
        self.metadata_json.follow(&batch.tags);
        let s = &batch.samples;
        let mut extras: Vec<Option<&'a ExtraValue>> = Vec::new();
        if !s.extras.is_empty() {
            extras.resize(s.len(), None);
            for e in &s.extras {
                if let Some(slot) = extras.get_mut(e.index as usize) {
                    *slot = Some(&e.value);
                }
            }
        }
        let mut rows = Vec::with_capacity(s.len());
        let mut indices = Vec::with_capacity(s.len());
        for i in 0..s.len() {
            let tag_id = s.tag_ids[i];
            let tag: &'a ResolvedTag = batch
                .tags
                .get(tag_id as usize)
                .and_then(|t| t.as_deref())
                .ok_or(PostgresError::UnknownTag { index: i, tag_id })?;
            let metadata = if self.config.include_metadata {
                let slot = self
                    .metadata_json
                    .slot(tag_id as usize)
                    .expect("a tag of the table followed");
                slot.get_or_insert_with(|| metadata_json(tag)).clone()
            } else {
                None
            };
            let (value_double, value_int, value_text) = match extras.get(i).copied().flatten() {
                Some(ExtraValue::Text(t)) => (None, None, Some(t.as_str())),
                Some(ExtraValue::Signed(v)) => {
                    (Some(s.values[i]), Some(PgNumeric(*v as i128)), None)
                }
                Some(ExtraValue::Unsigned(v)) => {
                    (Some(s.values[i]), Some(PgNumeric(*v as i128)), None)
                }
                None => (Some(s.values[i]), None, None),
            };
            let nul = [
                ("tag", Some(tag.path.as_str())),
                ("unit", Some(tag.unit.as_str())),
                ("value_text", value_text),
                ("metadata", metadata.as_deref()),
            ]
            .into_iter()
            .find(|(_, text)| text.is_some_and(|t| t.contains('\0')));
            if let Some((column, _)) = nul {
                refused.push(RefusedSample {
                    index: i,
                    reason: REFUSED_REASON,
                    detail: format!(
                        "{column} contains a NUL character (0x00), which PostgreSQL text cannot hold"
                    ),
                });
                continue;
            }
            rows.push(Row {
                time: PgTimestamp(s.timestamps[i]),
                tag: &tag.path,
                value_double,
                value_int,
                value_text,
                unit: &tag.unit,
                quality: Quality(s.quality[i]).level(),
                status: s.quality[i] as i64,
                metadata: metadata.map(PgJsonb),
            });
            indices.push(i);
        }
        Ok((rows, indices))
    }

    /// Writes `batch`; returns the samples the database refused for good.
    async fn write_batch(
        &mut self,
        batch: &OutputBatch,
    ) -> Result<Vec<RefusedSample>, PostgresError> {
        let mut refused = Vec::new();
        let (rows, indices) = self.rows(batch, &mut refused)?;
        // Bisect only after a data error: most batches go in one transaction.
        let mut pending = vec![(0, rows.len())];
        while let Some((a, b)) = pending.pop() {
            if a == b {
                continue;
            }
            match self.write_rows(&rows[a..b]).await {
                Ok(()) => {}
                Err(e) => match data_error(&e) {
                    Some(message) if b - a == 1 => refused.push(RefusedSample {
                        index: indices[a],
                        reason: REFUSED_REASON,
                        detail: message,
                    }),
                    Some(_) => {
                        let m = (a + b) / 2;
                        pending.push((m, b));
                        pending.push((a, m));
                    }
                    None => return Err(e),
                },
            }
        }
        refused.sort_by_key(|r| r.index);
        Ok(refused)
    }

    /// Writes `rows` in one transaction.
    async fn write_rows(&mut self, rows: &[Row<'_>]) -> Result<(), PostgresError> {
        let rows_len = rows.len();
        let method = self.config.method;
        let insert_rows = self.config.insert_rows;
        let table = self.table.clone();
        let client = self.connection().await?;
        let write_err = |source| PostgresError::Write {
            rows: rows_len,
            source,
        };
        let mut tx = client.transaction().await.map_err(write_err)?;
        match method {
            WriteMethod::Copy => {
                let columns = column_list();
                // Most batches are new: COPY straight into the table. A batch that repeats
                // rows (a replay) hits the key; then, from a savepoint, it goes through the
                // staging table and `ON CONFLICT DO NOTHING`.
                let direct = tx
                    .savepoint("ferrule_direct_copy")
                    .await
                    .map_err(write_err)?;
                let copied = copy_rows(
                    &direct,
                    &format!("COPY {table} ({columns}) FROM STDIN (FORMAT binary)"),
                    rows,
                )
                .await;
                match copied {
                    Ok(()) => direct.commit().await.map_err(write_err)?,
                    Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                        direct.rollback().await.map_err(write_err)?;
                        copy_rows(
                            &tx,
                            &format!("COPY {STAGING_TABLE} ({columns}) FROM STDIN (FORMAT binary)"),
                            rows,
                        )
                        .await
                        .map_err(write_err)?;
                        tx.execute(
                            &format!(
                                "INSERT INTO {table} ({columns}) SELECT {columns} \
                                 FROM {STAGING_TABLE} ON CONFLICT (tag, time) DO NOTHING"
                            ),
                            &[],
                        )
                        .await
                        .map_err(write_err)?;
                    }
                    Err(e) => return Err(write_err(e)),
                }
            }
            WriteMethod::Insert => {
                let full = tx
                    .prepare_typed(&insert_sql(&table, insert_rows), &insert_types(insert_rows))
                    .await
                    .map_err(write_err)?;
                for chunk in rows.chunks(insert_rows) {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        chunk.iter().flat_map(|r| r.params()).collect();
                    if chunk.len() == insert_rows {
                        tx.execute(&full, &params).await.map_err(write_err)?;
                    } else {
                        tx.execute(&insert_sql(&table, chunk.len()), &params)
                            .await
                            .map_err(write_err)?;
                    }
                }
            }
        }
        tx.commit().await.map_err(write_err)?;
        Ok(())
    }
}

/// Binary COPY of `rows` by `copy_sql` (`COPY … FROM STDIN (FORMAT binary)`).
async fn copy_rows(
    tx: &Transaction<'_>,
    copy_sql: &str,
    rows: &[Row<'_>],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(copy_sql).await?;
    let types: Vec<Type> = COLUMNS.iter().map(|(_, t)| t.clone()).collect();
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    for row in rows {
        writer.as_mut().write(&row.params()).await?;
    }
    writer.as_mut().finish().await?;
    Ok(())
}

/// The server's message if `e` is a data error that a retry cannot fix (SQLSTATE class 22,
/// data exception, or 23, integrity constraint violation): the rows are at fault.
fn data_error(e: &PostgresError) -> Option<String> {
    let PostgresError::Write { source, .. } = e else {
        return None;
    };
    let db = source.as_db_error()?;
    let class = &db.code().code()[..2];
    (class == "22" || class == "23").then(|| format!("{} ({})", db.message(), db.code().code()))
}

/// `e` and the errors that caused it, each once (tokio-postgres keeps the server's message
/// and TLS or I/O details in the causes).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

/// A rustls connector trusting the system's roots and the certificates in `ca_file`.
fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<MakeRustlsConnect, PostgresError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| PostgresError::Tls(format!("ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(PostgresError::Tls(format!(
                "ca_file {}: no certificate in it",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| PostgresError::Tls(format!("ca_file {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(PostgresError::Tls(
            "no root certificate: none on the system and no ca_file".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PostgresError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The tag's metadata as a JSON object text, keys in order; None without metadata.
fn metadata_json(tag: &ResolvedTag) -> Option<Arc<str>> {
    if tag.metadata.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = tag
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Some(serde_json::Value::Object(map).to_string().into())
}

fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A multi-row `INSERT … VALUES (…), (…) ON CONFLICT (tag, time) DO NOTHING` for `rows` rows.
fn insert_sql(table: &str, rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", column_list());
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..COLUMNS.len() {
            if c > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("${}", r * COLUMNS.len() + c + 1));
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (tag, time) DO NOTHING");
    sql
}

fn insert_types(rows: usize) -> Vec<Type> {
    (0..rows)
        .flat_map(|_| COLUMNS.iter().map(|(_, t)| t.clone()))
        .collect()
}

#[async_trait]
impl Sink for PostgresSink {
    async fn write(&mut self, batch: &OutputBatch) -> Result<Vec<RefusedSample>, SinkError> {
        if batch.samples.is_empty() {
            return Ok(Vec::new());
        }
        let after = Duration::from_secs(self.config.write_timeout_s);
        let result = match tokio::time::timeout(after, self.write_batch(batch)).await {
            Ok(r) => r,
            Err(_) => Err(PostgresError::Timeout {
                what: "a batch write",
                after,
            }),
        };
        result.map_err(|e| {
            // Start over on a fresh connection: the old one may be dead or mid-transaction.
            self.client = None;
            SinkError::Transient {
                sink: self.name.clone(),
                message: with_causes(&e),
            }
        })
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        // Every successful write is already committed.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Handshake(std::io::Error, &'static str);
    impl std::fmt::Display for Handshake {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
    }
    impl std::error::Error for Handshake {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_messages_carry_their_causes_once() {
        let cause = || std::io::Error::other("certificate not valid for name");
        let e = Handshake(cause(), "error performing TLS handshake");
        assert_eq!(
            with_causes(&e),
            "error performing TLS handshake: certificate not valid for name"
        );
        let e = Handshake(cause(), "handshake: certificate not valid for name");
        assert_eq!(with_causes(&e), "handshake: certificate not valid for name");
    }

    #[test]
    fn insert_sql_numbers_every_parameter() {
        let sql = insert_sql("\"t\"", 2);
        assert!(sql.contains("($1,$2,$3,$4,$5,$6,$7,$8,$9),($10,"), "{sql}");
        assert!(sql
            .ends_with("($10,$11,$12,$13,$14,$15,$16,$17,$18) ON CONFLICT (tag, time) DO NOTHING"));
        assert_eq!(insert_types(2).len(), 18);
    }

    #[test]
    fn create_table_sql_quotes_and_keys_on_tag_and_time() {
        let sql = create_table_sql("h.samples");
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"h\".\"samples\""));
        assert!(sql.contains("PRIMARY KEY (tag, time)"));
        assert!(sql.contains("\"samples_time_idx\" ON \"h\".\"samples\""));
    }
}
