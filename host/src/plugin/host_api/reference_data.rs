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
    pub fn load_csv(&mut self, table: &str, path: &Path) -> Result<usize, ReferenceDataError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReferenceDataError::Read {
            table: table.into(),
            path: path.display().to_string(),
            source,
        })?;
        let parse_err = |line: usize, message: String| ReferenceDataError::Parse {
            table: table.into(),
            path: path.display().to_string(),
            line,
            message,
        };
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
        let (_, header) = lines
            .next()
            .ok_or_else(|| parse_err(1, "no header line".into()))?;
        let header: Vec<String> = split_csv_line(header)
            .map_err(|m| parse_err(1, m))?
            .into_iter()
            .map(|h| h.trim().to_string())
            .collect();
        if header.len() < 2 {
            return Err(parse_err(
                1,
                "need a key column and at least one value column".into(),
            ));
        }
        let rows = self.tables.entry(table.to_string()).or_default();
        let mut count = 0;
        for (i, line) in lines {
            let cells = split_csv_line(line).map_err(|m| parse_err(i + 1, m))?;
            if cells.len() != header.len() {
                return Err(parse_err(
                    i + 1,
                    format!("{} cells, header has {}", cells.len(), header.len()),
                ));
            }
            let key = cells[0].trim().to_string();
            let row = header[1..]
                .iter()
                .zip(&cells[1..])
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            rows.insert(key, row);
            count += 1;
        }
        Ok(count)
    }
}

/// Splits one CSV line: commas separate, double quotes quote, `""` is a quote.
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if cell.is_empty() => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => cells.push(std::mem::take(&mut cell)),
            (c, _) => cell.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    cells.push(cell);
    Ok(cells)
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
