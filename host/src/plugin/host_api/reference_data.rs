//! Reference data a plugin may read (the asset registry used for enrichment): the backend
//! trait and the static backend loaded from CSV files named in the host config.

use std::collections::HashMap;
use std::path::Path;

/// Read-only lookup into host reference data.
pub trait ReferenceData: Send + Sync {
    fn lookup(&self, table: &str, key: &str) -> Option<Vec<(String, String)>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceDataError {
    #[error("reference table `{table}`: cannot read {path}: {source}")]
    Read {
        table: String,
        path: String,
        source: std::io::Error,
    },
    #[error("reference table `{table}`: {path} line {line}: {message}")]
    Parse {
        table: String,
        path: String,
        line: usize,
        message: String,
    },
}

type Row = Vec<(String, String)>;

/// Tables held in memory: table → key → row.
#[derive(Default, Debug, Clone)]
pub struct StaticReferenceData {
    tables: HashMap<String, HashMap<String, Row>>,
}

impl StaticReferenceData {
    pub fn from_rows(table: &str, rows: Vec<(String, Row)>) -> Self {
        let mut data = StaticReferenceData::default();
        data.tables
            .insert(table.to_string(), rows.into_iter().collect());
        data
    }

    /// Adds table `table` from a CSV file with a header line; the first column is the key,
    /// the other columns become the row's key/values (empty cells are left out).
    /// Lines starting with `#` are comments.
    pub fn load_csv(&mut self, table: &str, path: &Path) -> Result<usize, ReferenceDataError> {
        let parse_err = |line: u64, message: String| ReferenceDataError::Parse {
            table: table.into(),
            path: path.display().to_string(),
            line: line as usize,
            message,
        };
        let csv_err = |e: csv::Error| match e.kind() {
            csv::ErrorKind::Io(_) => ReferenceDataError::Read {
                table: table.into(),
                path: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            },
            _ => parse_err(e.position().map_or(0, |p| p.line()), e.to_string()),
        };
        let mut reader = csv::ReaderBuilder::new()
            .comment(Some(b'#'))
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(csv_err)?;
        let header: Vec<String> = reader
            .headers()
            .map_err(csv_err)?
            .iter()
            .map(String::from)
            .collect();
        if header.len() < 2 {
            return Err(parse_err(
                1,
                "need a key column and at least one value column".into(),
            ));
        }
        let rows = self.tables.entry(table.to_string()).or_default();
        let mut count = 0;
        for record in reader.records() {
            let record = record.map_err(csv_err)?;
            let row = header[1..]
                .iter()
                .zip(record.iter().skip(1))
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
            rows.insert(record[0].to_string(), row);
            count += 1;
        }
        Ok(count)
    }
}

impl ReferenceData for StaticReferenceData {
    fn lookup(&self, table: &str, key: &str) -> Option<Vec<(String, String)>> {
        self.tables.get(table)?.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_csv_with_quotes_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("assets.csv");
        std::fs::write(
            &path,
            "key,asset_id,description\nplant/s/a/l/d,A-1,\"Press, main\"\nplant/s/a/l/e,A-2,\n",
        )
        .unwrap();
        let mut data = StaticReferenceData::default();
        assert_eq!(data.load_csv("assets", &path).unwrap(), 2);
        assert_eq!(
            data.lookup("assets", "plant/s/a/l/d").unwrap(),
            vec![
                ("asset_id".to_string(), "A-1".to_string()),
                ("description".to_string(), "Press, main".to_string())
            ]
        );
        assert_eq!(
            data.lookup("assets", "plant/s/a/l/e").unwrap(),
            vec![("asset_id".to_string(), "A-2".to_string())]
        );
        std::fs::write(&path, "key,a\nx,1\ny,2,3\n").unwrap();
        let err = StaticReferenceData::default()
            .load_csv("assets", &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
    }
}
