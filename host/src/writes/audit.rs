//! The audit log: every command, accepted or refused, appended as one JSON line and fsync'd
//! before its reply goes out; the latest ones kept in memory for `GET /writes`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::command::WriteRecord;

/// How many records `GET /writes` shows.
pub const RECENT_WRITES: usize = 200;

#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {message}")]
pub struct AuditError {
    pub path: PathBuf,
    pub message: String,
}

/// The durable audit log.
pub struct AuditLog {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    recent: Mutex<VecDeque<WriteRecord>>,
}

impl AuditLog {
    /// Opens (creating) the log for appending.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let err = |e: std::io::Error| AuditError {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
            recent: Mutex::new(VecDeque::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` and waits until it is on disk (fsync).
    pub async fn append(&self, record: &WriteRecord) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record).map_err(|e| AuditError {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
            f.write_all(&line)?;
            f.sync_data()
        })
        .await;
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_WRITES {
                recent.pop_front();
            }
            recent.push_back(record.clone());
        }
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError {
                path: self.path.clone(),
                message: e.to_string(),
            }),
            Err(e) => Err(AuditError {
                path: self.path.clone(),
                message: e.to_string(),
            }),
        }
    }

    /// The latest records, oldest first.
    pub fn recent(&self) -> Vec<WriteRecord> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
