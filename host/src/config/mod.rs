//! The host config file: one TOML file for engine, pipeline, admin endpoint, reference data,
//! sources, stages and sinks. Loading substitutes environment variables, parses with unknown
//! keys refused, resolves relative paths against the file's directory, and validates; every
//! error names the offending key and, where it can, the line.

mod env;
mod locate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pipeline::{PipelineConfig, StageConfig};
use crate::plugin::{Digest, EngineConfig};
use crate::sinks::{DeadLetterConfig, SinkConfig};
use crate::sources::SourceConfig;

/// The whole config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Plugin engine: CPU-limit mode, compiled-artifact cache.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Queues, plugin file watching, progress line.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The admin endpoint (`ferrule plugin swap|rollback` talk to it).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Reference data plugins may look up, by table name.
    #[serde(default)]
    pub reference_data: BTreeMap<String, ReferenceTableConfig>,
    /// Sources, by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Plugin stages, in chain order.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// Sinks, by name; every sample that passes the chain goes to each.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Where refused samples go (default: `dead-letter.jsonl` beside the config file).
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// An in-process MQTT broker on loopback (the default run publishes to it).
    #[serde(default)]
    pub embedded_broker: Option<crate::mqtt::embedded::EmbeddedBrokerConfig>,
    /// Write-back to devices (default deny: nothing is writable without it).
    #[serde(default)]
    pub writes: Option<crate::writes::WritesConfig>,
}

/// `[admin]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin endpoint.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address to listen on; loopback only unless `allow_remote`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` address.
    #[serde(default)]
    pub allow_remote: bool,
    /// Bearer token every mutating call (swap, rollback, release) must present; without it
    /// they are all refused. Keep it out of the file: `token = "${FERRULE_ADMIN_TOKEN}"`.
    #[serde(default)]
    pub token: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7878))
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: default_admin_listen(),
            allow_remote: false,
            token: None,
        }
    }
}

/// `[reference_data.<table>]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReferenceTableConfig {
    /// CSV file with a header; the first column is the key (e.g. a device path).
    pub path: PathBuf,
}

/// One problem with a config file.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    /// Key path, e.g. `stages[1].plugin`; empty for whole-file problems.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.key.is_empty(), self.line) {
            (false, Some(l)) => write!(f, "`{}` (line {l}): {}", self.key, self.message),
            (false, None) => write!(f, "`{}`: {}", self.key, self.message),
            (true, Some(l)) => write!(f, "line {l}: {}", self.message),
            (true, None) => write!(f, "{}", self.message),
        }
    }
}

/// All the problems found in a config file.
#[derive(Debug, thiserror::Error)]
#[error("{} in {}:\n{}", if .errors.len() == 1 { "1 config error".to_string() } else { format!("{} config errors", .errors.len()) }, .file, .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl HostConfig {
    /// Reads, substitutes, parses, resolves paths and validates `path`.
    pub fn load(path: &Path) -> Result<HostConfig, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![ConfigError {
                key: String::new(),
                line: None,
                message: format!("cannot read: {e}"),
            }],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_text(&text, base).map_err(|errors| ConfigErrors { file, errors })
    }

    /// Like `load`, from text; relative paths resolve against `base`.
    pub fn from_text(text: &str, base: &Path) -> Result<HostConfig, Vec<ConfigError>> {
        let text =
            env::substitute(text, |name| std::env::var(name).ok()).map_err(|(line, message)| {
                vec![ConfigError {
                    key: String::new(),
                    line: Some(line),
                    message,
                }]
            })?;
        let mut config: HostConfig = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            let message = e.message().trim().to_string();
            // toml names the field in its message; the span points at the table or value.
            vec![ConfigError {
                key: String::new(),
                line,
                message,
            }]
        })?;
        config.resolve_paths(base);
        let errors: Vec<ConfigError> = config
            .problems()
            .into_iter()
            .map(|(key, message)| ConfigError {
                line: locate::line_of(&text, &key),
                key,
                message,
            })
            .collect();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(d) = self.engine.cache_dir.as_mut() {
            fix(d)
        }
        for s in self.sources.values_mut() {
            match s {
                SourceConfig::Mqtt(m) => m.broker.resolve_paths(base),
                #[cfg(feature = "opcua")]
                SourceConfig::Opcua(o) => fix(&mut o.pki_dir),
                _ => {}
            }
        }
        for t in self.reference_data.values_mut() {
            fix(&mut t.path);
        }
        if let Some(w) = self.writes.as_mut() {
            w.resolve_paths(base);
        }
        for s in &mut self.stages {
            fix(&mut s.plugin);
        }
        for (name, s) in self.sinks.iter_mut() {
            match s {
                SinkConfig::File(f) => fix(&mut f.path),
                SinkConfig::Mqtt(m) => {
                    m.broker.resolve_paths(base);
                    let p = m
                        .buffer
                        .path
                        .get_or_insert_with(|| PathBuf::from(format!("data/buffer/{name}.redb")));
                    fix(p)
                }
                #[cfg(feature = "parquet")]
                SinkConfig::Parquet(p) => {
                    fix(&mut p.directory);
                    fix(p
                        .buffer
                        .path
                        .get_or_insert_with(|| PathBuf::from(format!("data/buffer/{name}.redb"))));
                }
                #[cfg(feature = "postgres")]
                SinkConfig::Postgres(p) => {
                    if let Some(f) = p.ca_file.as_mut() {
                        fix(f)
                    }
                    if let Some(b) = p.buffer.as_mut() {
                        fix(b.path.get_or_insert_with(|| {
                            PathBuf::from(format!("data/buffer/{name}.redb"))
                        }));
                    }
                }
                #[cfg(feature = "kafka")]
                SinkConfig::Kafka(k) => fix(k
                    .dedup
                    .path
                    .get_or_insert_with(|| PathBuf::from(format!("data/dedup/{name}.redb")))),
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        match self.dead_letter.as_mut() {
            Some(DeadLetterConfig::File(f)) => fix(&mut f.path),
            Some(DeadLetterConfig::Kafka(_)) => {}
            None => {
                self.dead_letter = Some(DeadLetterConfig::File(
                    crate::sinks::file::FileSinkConfig::new(base.join("dead-letter.jsonl")),
                ))
            }
        }
    }

    /// Semantic checks, as (key path, message).
    fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.sources.is_empty() {
            p.push(("sources".into(), "no source configured".into()));
        }
        if self.sinks.is_empty() {
            p.push(("sinks".into(), "no sink configured".into()));
        }
        if self.engine.epoch_tick_ms == 0 {
            p.push(("engine.epoch_tick_ms".into(), "must be at least 1".into()));
        }
        for (key, value) in [
            ("pipeline.queue_batches", self.pipeline.queue_batches as u64),
            (
                "pipeline.flush_interval_ms",
                self.pipeline.flush_interval_ms,
            ),
            ("pipeline.flush_batches", self.pipeline.flush_batches as u64),
            ("pipeline.stall_after_s", self.pipeline.stall_after_s),
            ("pipeline.max_tags", self.pipeline.max_tags as u64),
        ] {
            if value == 0 {
                p.push((key.into(), "must be at least 1".into()));
            }
        }
        if self.admin.allow_remote && self.admin.token.as_deref().unwrap_or("").len() < 16 {
            p.push((
                "admin.token".into(),
                "a remote admin endpoint needs a token of at least 16 characters".into(),
            ));
        }
        if self.admin.enabled && !self.admin.listen.ip().is_loopback() && !self.admin.allow_remote {
            p.push((
                "admin.listen".into(),
                format!(
                    "{} is not a loopback address; set admin.allow_remote = true to allow it",
                    self.admin.listen
                ),
            ));
        }
        for (name, t) in &self.reference_data {
            if !t.path.is_file() {
                p.push((
                    format!("reference_data.{name}.path"),
                    format!("no file at {}", t.path.display()),
                ));
            }
        }
        for (name, s) in &self.sources {
            if let Err((key, m)) = s.validate() {
                p.push((format!("sources.{name}.{key}"), m));
            }
        }
        if let Some(w) = &self.writes {
            let writable = |name: &str| match self.sources.get(name) {
                None => Err(format!("no source named `{name}`")),
                Some(SourceConfig::Modbus(_) | SourceConfig::Opcua(_)) => Ok(()),
                Some(_) => Err(format!(
                    "source `{name}` cannot write to devices (only modbus and opcua sources can)"
                )),
            };
            if let Err((key, m)) = w.validate(writable) {
                p.push((format!("writes.{key}"), m));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.stages.iter().enumerate() {
            if s.name.trim().is_empty() {
                p.push((format!("stages[{i}].name"), "must not be empty".into()));
            } else if !seen.insert(s.name.clone()) {
                p.push((
                    format!("stages[{i}].name"),
                    format!("stage `{}` is defined twice", s.name),
                ));
            }
            if !s.plugin.is_file() && !s.plugin.is_dir() {
                p.push((
                    format!("stages[{i}].plugin"),
                    format!(
                        "no plugin file or package directory at {}",
                        s.plugin.display()
                    ),
                ));
            }
            if let Some(d) = &s.digest {
                if let Err(m) = Digest::parse(d) {
                    p.push((format!("stages[{i}].digest"), m));
                }
            }
            if let Err((key, m)) = s.limits.validate() {
                p.push((format!("stages[{i}].limits.{key}"), m));
            }
        }
        if let Some(b) = &self.embedded_broker {
            if let Err((key, m)) = b.validate() {
                p.push((format!("embedded_broker.{key}"), m));
            }
        }
        for (name, s) in &self.sinks {
            if let Err((key, m)) = s.validate() {
                p.push((format!("sinks.{name}.{key}"), m));
            }
        }
        if let Some(d) = &self.dead_letter {
            if let Err((key, m)) = d.validate() {
                p.push((format!("dead_letter.{key}"), m));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        HostConfig::from_text(text, dir.path()).unwrap_err()
    }

    #[test]
    fn unknown_key_is_refused_with_its_name_and_line() {
        let e = errors("[engine]\ncpu_limit = \"epoch\"\ncpu_limitt = 3\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("cpu_limitt"), "{}", e[0].message);
        assert_eq!(e[0].line, Some(3));
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let text = "[sources.plant]\ntype = \"simulator\"\ntags = 0\n\n[[stages]]\nname = \"n\"\nplugin = \"missing.wasm\"\ndigest = \"sha256:zz\"\n\n[sinks.out]\ntype = \"file\"\npath = \"out.jsonl\"\n";
        let e = errors(text);
        let keys: Vec<_> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(keys.contains(&("sources.plant.tags", Some(3))), "{keys:?}");
        assert!(keys.contains(&("stages[0].plugin", Some(7))), "{keys:?}");
        assert!(keys.contains(&("stages[0].digest", Some(8))), "{keys:?}");
    }

    #[test]
    fn only_known_grants_are_accepted() {
        let e = errors(
            "[[stages]]\nname = \"a\"\nplugin = \"a.wasm\"\ngrants = [\"clock\", \"network\"]\n",
        );
        assert_eq!(e[0].line, Some(4), "{e:?}");
        assert!(
            e[0].message.contains("network") && e[0].message.contains("clock"),
            "{e:?}"
        );
    }

    #[test]
    fn a_rotation_too_small_is_refused_naming_the_sink_key() {
        let e = errors(
            "[sinks.out]\ntype = \"file\"\npath = \"o.jsonl\"\nrotate_bytes = 100\n\n[dead_letter]\ntype = \"file\"\npath = \"d.jsonl\"\nrotate_bytes = 65536\nkeep_files = 0\n",
        );
        let keys: Vec<_> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(
            keys.contains(&("sinks.out.rotate_bytes", Some(4))),
            "{keys:?}"
        );
        assert!(
            keys.contains(&("dead_letter.keep_files", Some(10))),
            "{keys:?}"
        );
    }

    #[test]
    fn remote_admin_needs_explicit_permission() {
        let e = errors("[admin]\nlisten = \"0.0.0.0:7878\"\n");
        assert!(
            e.iter()
                .any(|e| e.key == "admin.listen" && e.line == Some(2)),
            "{e:?}"
        );
    }
}
