//! Uploading closed Parquet files to an S3-compatible object store (object_store, `aws`).
//!
//! The local directory stages the files: a file is uploaded once published there (complete,
//! fsynced), under the same relative key below the configured prefix, and deleted locally once
//! the store has it. A PUT (or a completed multipart upload) is atomic, so readers of the
//! bucket never see a half object. An upload that fails stays pending and is retried with
//! backoff at later writes and flushes; files still local at a restart are uploaded then
//! (uploading one twice writes the same object again).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// `[sinks.<name>.s3]`: where closed files go instead of staying in `directory`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix the partitions go under (`site1/samples`); empty for the bucket root.
    #[serde(default)]
    pub prefix: String,
    /// Region (default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (MinIO, Ceph, …), e.g. `https://minio.plant:9000`;
    /// none for AWS S3.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Access key; default `AWS_ACCESS_KEY_ID` (or instance credentials).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret key; default `AWS_SECRET_ACCESS_KEY`. Use `"${S3_SECRET}"`, not the key itself.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// Address buckets as `https://<bucket>.<endpoint>` instead of `<endpoint>/<bucket>`.
    #[serde(default)]
    pub virtual_hosted_style: bool,
}

/// The secret never shows in logs or error messages.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

impl S3Config {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.bucket.trim().is_empty() {
            return Err(("s3.bucket".into(), "must not be empty".into()));
        }
        if let Some(e) = &self.endpoint {
            if e.starts_with("http://") && !self.allow_http {
                return Err((
                    "s3.endpoint".into(),
                    "is plain http: set s3.allow_http = true to allow it".into(),
                ));
            }
        }
        Ok(())
    }

    /// The store, with bounded retries (the uploader retries later itself).
    pub fn build(&self) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_allow_http(self.allow_http)
            .with_virtual_hosted_style_request(self.virtual_hosted_style)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: Duration::from_secs(30),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(self.allow_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            );
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(k) = &self.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &self.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        Ok(Arc::new(b.build()?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("uploading {path} to {key}: {source}")]
    Store {
        path: PathBuf,
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not under the staging directory")]
    OutsideStaging { path: PathBuf },
}

/// Files waiting for the store, oldest first, and when to try again after a failure.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    staging: PathBuf,
    pending: Vec<PathBuf>,
    next_attempt: Option<Instant>,
    backoff: Duration,
    uploaded: Vec<String>,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// In the staging directory: the relative paths of files uploaded (and deleted locally).
pub const UPLOADED_LEDGER: &str = ".ferrule-uploaded";
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Uploader {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, staging: &Path) -> Uploader {
        Uploader {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            staging: staging.to_path_buf(),
            pending: Vec::new(),
            next_attempt: None,
            backoff: FIRST_BACKOFF,
            uploaded: Vec::new(),
        }
    }

    /// Queues a published local file.
    pub fn add(&mut self, path: PathBuf) {
        self.pending.push(path);
    }

    /// Files not uploaded yet.
    pub fn pending(&self) -> &[PathBuf] {
        &self.pending
    }

    /// Keys uploaded by this uploader, in order (the last `RECENT_FILES`).
    pub fn uploaded(&self) -> &[String] {
        &self.uploaded
    }

    /// The object key of a staged file: prefix + its path below the staging directory.
    pub fn key_of(&self, path: &Path) -> Result<String, UploadError> {
        let relative =
            path.strip_prefix(&self.staging)
                .map_err(|_| UploadError::OutsideStaging {
                    path: path.to_path_buf(),
                })?;
        let relative = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        Ok(if self.prefix.is_empty() {
            relative
        } else {
            format!("{}/{relative}", self.prefix)
        })
    }

    /// Uploads pending files in order unless backing off; stops at the first failure (the
    /// file stays pending). Returns the failure, if any.
    pub async fn run(&mut self) -> Result<(), UploadError> {
        if self.next_attempt.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        while let Some(path) = self.pending.first().cloned() {
            match self.upload(&path).await {
                Ok(key) => {
                    self.pending.remove(0);
                    super::push_recent(&mut self.uploaded, key);
                    self.next_attempt = None;
                    self.backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    self.next_attempt = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn upload(&self, path: &Path) -> Result<String, UploadError> {
        let key = self.key_of(path)?;
        let read_err = |source| UploadError::Read {
            path: path.to_path_buf(),
            source,
        };
        let store_err = |source| UploadError::Store {
            path: path.to_path_buf(),
            key: key.clone(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
        // One PUT for small files, a multipart upload (completed atomically) for large ones.
        let mut writer = BufWriter::new(self.store.clone(), ObjectPath::from(key.as_str()));
        if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
            let _ = writer.abort().await;
            return Err(store_err(e));
        }
        writer.shutdown().await.map_err(store_err)?;
        // Remember the name before the local copy goes: after a crash the sink reads which
        // buffer records the uploaded files hold from it (exactly-once replay).
        let line = format!(
            "{}\n",
            path.strip_prefix(&self.staging).unwrap_or(path).display()
        );
        let ledger = self.staging.join(UPLOADED_LEDGER);
        let noted = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&ledger)?;
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })
        .await;
        if !matches!(noted, Ok(Ok(()))) {
            tracing::warn!(path = %path.display(), "cannot note the uploaded file in the ledger; a crash before its buffer records are removed may upload its rows again");
        }
        tokio::fs::remove_file(path).await.map_err(read_err)?;
        Ok(key)
    }
}

/// Published (`*.parquet`) files under `dir` whose names start with `prefix`, oldest name first.
pub fn staged_files(dir: &Path, prefix: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let name = entry.file_name().to_string_lossy().to_string();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() && name.starts_with(prefix) && name.ends_with(".parquet") {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_partition_path_below_the_prefix() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let u = Uploader::new(store.clone(), "/site1/samples/", Path::new("/stage"));
        assert_eq!(
            u.key_of(Path::new("/stage/date=2024-01-01/hour=03/w-1-0.parquet"))
                .unwrap(),
            "site1/samples/date=2024-01-01/hour=03/w-1-0.parquet"
        );
        let u = Uploader::new(store, "", Path::new("/stage"));
        assert_eq!(
            u.key_of(Path::new("/stage/date=2024-01-01/hour=03/w.parquet"))
                .unwrap(),
            "date=2024-01-01/hour=03/w.parquet"
        );
        assert!(u.key_of(Path::new("/elsewhere/x.parquet")).is_err());
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let mut c: S3Config =
            toml::from_str("bucket = \"b\"\nendpoint = \"http://m:9000\"\n").unwrap();
        assert_eq!(c.validate().unwrap_err().0, "s3.endpoint");
        c.allow_http = true;
        assert!(c.validate().is_ok());
        c.secret_access_key = Some("s3cret".into());
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
