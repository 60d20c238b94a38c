//! Plugin packages: a directory holding a manifest (`ferrule-plugin.toml`: name, version,
//! contract, the component's digest, the capabilities and limits the plugin needs) and the
//! component it names. Owns the manifest format, the checks that refuse a package (pure
//! functions over the manifest and what the component says of itself), loading a stage's
//! plugin path (a package directory, or a bare `.wasm` as before) under the stage's terms,
//! and writing a package from a component.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::bindings::CONTRACT_PACKAGE;
use super::cache::Digest;
use super::engine::{speaks, CpuLimitMode, LoadedPlugin, PluginEngine};
use super::limits::{Grant, PluginLimits};
use super::LoadError;

/// File name of the manifest inside a package directory.
pub const MANIFEST_FILE: &str = "ferrule-plugin.toml";
/// Component file name when the manifest does not name one.
pub const DEFAULT_COMPONENT: &str = "plugin.wasm";

/// The manifest of a plugin package, `ferrule-plugin.toml`. Unknown keys are refused.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name. Must equal the name the component reports in `describe`.
    pub name: String,
    /// The plugin's version. Must equal the version the component reports in `describe`.
    pub version: String,
    /// What the plugin does (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who makes the plugin (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// The contract the component implements, `ferrule:plugin@<version>`. The host refuses a
    /// contract it does not speak, and a component that exports another version than this.
    pub contract: String,
    /// File name of the component inside the package directory. Default `plugin.wasm`.
    #[serde(default = "default_component")]
    pub component: String,
    /// `sha256:<hex>` of the component file. A component with another digest is refused
    /// (the package was tampered with or is corrupt).
    pub digest: String,
    /// Ambient capabilities the plugin needs: `clock`, `random`, `stdio`. Default none. The
    /// stage must grant each one; the plugin's instances get only these, even when the stage
    /// grants more.
    #[serde(default)]
    pub capabilities: Vec<Grant>,
    /// The least limits the plugin needs to work; a stage allowing less is refused.
    #[serde(default, skip_serializing_if = "NeededLimits::is_empty")]
    pub limits: NeededLimits,
}

fn default_component() -> String {
    DEFAULT_COMPONENT.into()
}

/// `[limits]` of a manifest: minimums the stage's `limits` must meet. Each is optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NeededLimits {
    /// Linear memory in MiB: the stage's `limits.memory_mib` must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// CPU per call in ms: the stage's `limits.cpu_ms_per_call` must be at least this
    /// (checked when the engine limits CPU by epoch, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms_per_call: Option<u64>,
    /// Fuel per call: the stage's `limits.fuel_per_call` must be at least this (checked when
    /// the engine limits CPU by fuel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_per_call: Option<u64>,
}

impl NeededLimits {
    pub fn is_empty(&self) -> bool {
        *self == NeededLimits::default()
    }
}

impl Manifest {
    /// Parses and checks manifest text; the error names the key (and line) at fault.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            match e.span() {
                Some(span) if span.start > 0 && !message.starts_with("missing field") => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {message}")
                }
                _ => message,
            }
        })?;
        manifest
            .validate()
            .map_err(|(key, reason)| format!("`{key}`: {reason}"))?;
        Ok(manifest)
    }

    /// Checks the values: the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.name.trim().is_empty() {
            return Err(("name", "must not be empty".into()));
        }
        if self.version.trim().is_empty() {
            return Err(("version", "must not be empty".into()));
        }
        if !matches!(self.contract.split_once('@'), Some((p, v)) if !p.is_empty() && !v.is_empty())
        {
            return Err((
                "contract",
                format!(
                    "`{}` is not a contract: expected {CONTRACT_PACKAGE}@<version>",
                    self.contract
                ),
            ));
        }
        let plain = Path::new(&self.component)
            .file_name()
            .is_some_and(|f| f == self.component.as_str());
        if !plain || self.component == ".." {
            return Err((
                "component",
                format!(
                    "`{}` must be a file name inside the package, without a directory",
                    self.component
                ),
            ));
        }
        self.digest().map_err(|m| ("digest", m))?;
        Ok(())
    }

    /// The declared component digest.
    pub fn digest(&self) -> Result<Digest, String> {
        Digest::parse(&self.digest)
    }

    /// `name version`, as refusals name a package.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }

    /// The manifest as written into a package (with a header comment).
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!("# Ferrule plugin package manifest (see the README, \"Plugin packages\").\n{body}")
    }
}

/// A package directory with its parsed manifest.
#[derive(Clone, Debug)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Package {
    /// Reads and parses `<dir>/ferrule-plugin.toml`.
    pub fn read(dir: &Path) -> Result<Package, LoadError> {
        let file = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&file).map_err(|source| LoadError::ManifestRead {
            package: dir.display().to_string(),
            file: file.display().to_string(),
            source,
        })?;
        let manifest = Manifest::parse(&text).map_err(|reason| LoadError::Manifest {
            package: dir.display().to_string(),
            file: file.display().to_string(),
            reason,
        })?;
        Ok(Package {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn component_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.component)
    }

    /// `name version (dir)`: for refusals about the package's own integrity.
    fn located(&self) -> String {
        format!("{} ({})", self.manifest.label(), self.dir.display())
    }

    /// The manifest's contract must be one this host speaks.
    pub fn check_host_contract(&self) -> Result<(), LoadError> {
        let declared = &self.manifest.contract;
        let known = declared
            .strip_prefix(CONTRACT_PACKAGE)
            .and_then(|r| r.strip_prefix('@'))
            .is_some_and(speaks);
        if known {
            Ok(())
        } else {
            Err(LoadError::PackageContract {
                package: self.located(),
                declared: declared.clone(),
            })
        }
    }

    /// The stage must grant every capability the package declares, and allow at least the
    /// limits it needs (`mode` says which CPU limit the engine enforces).
    pub fn check_terms(&self, terms: &StageTerms, mode: CpuLimitMode) -> Result<(), LoadError> {
        let m = &self.manifest;
        let mut missing: Vec<Grant> = Vec::new();
        for c in &m.capabilities {
            if !terms.limits.grants.contains(c) && !missing.contains(c) {
                missing.push(*c);
            }
        }
        if !missing.is_empty() {
            return Err(LoadError::NotGranted {
                package: m.label(),
                stage: terms.stage.clone(),
                missing,
            });
        }
        let l = &terms.limits;
        let checks = [
            ("memory_mib", m.limits.memory_mib, l.memory_mib, true),
            (
                "cpu_ms_per_call",
                m.limits.cpu_ms_per_call,
                l.cpu_ms_per_call,
                mode == CpuLimitMode::Epoch,
            ),
            (
                "fuel_per_call",
                m.limits.fuel_per_call,
                l.fuel_per_call,
                mode == CpuLimitMode::Fuel,
            ),
        ];
        for (limit, needs, allows, applies) in checks {
            match needs {
                Some(needs) if applies && needs > allows => {
                    return Err(LoadError::LimitTooLow {
                        package: m.label(),
                        stage: terms.stage.clone(),
                        limit,
                        needs,
                        allows,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The component's bytes must have the digest the manifest declares.
    pub fn check_component_digest(&self, actual: &Digest) -> Result<(), LoadError> {
        let declared = self
            .manifest
            .digest()
            .map_err(|reason| LoadError::Manifest {
                package: self.dir.display().to_string(),
                file: self.dir.join(MANIFEST_FILE).display().to_string(),
                reason: format!("`digest`: {reason}"),
            })?;
        if declared == *actual {
            Ok(())
        } else {
            Err(LoadError::PackageDigest {
                package: self.located(),
                component: self.component_path().display().to_string(),
                declared,
                actual: actual.clone(),
            })
        }
    }

    /// The component must export the contract version the manifest declares and describe
    /// itself with the manifest's name and version.
    pub fn check_component(
        &self,
        exported_contract: &str,
        name: &str,
        version: &str,
    ) -> Result<(), LoadError> {
        let m = &self.manifest;
        if m.contract != format!("{CONTRACT_PACKAGE}@{exported_contract}") {
            return Err(LoadError::PackageContractMismatch {
                package: self.located(),
                declared: m.contract.clone(),
                exported: exported_contract.into(),
            });
        }
        if m.name != name || m.version != version {
            return Err(LoadError::PackageIdentity {
                package: self.located(),
                manifest: m.label(),
                component: format!("{name} {version}"),
            });
        }
        Ok(())
    }
}

/// What a stage allows its plugin: the stage's name (for refusals), its digest pin, its
/// limits and, in `limits.grants`, the capabilities it grants.
#[derive(Clone, Debug)]
pub struct StageTerms {
    pub stage: String,
    pub pin: Option<Digest>,
    pub limits: PluginLimits,
}

impl StageTerms {
    pub fn new(stage: &str, pin: Option<Digest>, limits: PluginLimits) -> Self {
        StageTerms {
            stage: stage.into(),
            pin,
            limits,
        }
    }

    /// Loads a stage's plugin path: a directory is a package, checked against these terms;
    /// a file is a bare component (pin checked; it gets exactly the stage's grants).
    pub fn load(&self, engine: &PluginEngine, path: &Path) -> Result<LoadedPlugin, LoadError> {
        if is_package(path) {
            load_package(engine, path, Some(self))
        } else {
            engine.load_file(path, self.pin.as_ref())
        }
    }
}

/// Whether a plugin path names a package (a directory) rather than a component file.
pub fn is_package(path: &Path) -> bool {
    path.is_dir()
}

/// Loads a plugin path outside any stage (`ferrule plugin inspect|test`): a package gets its
/// own checks (manifest, contract, digest, name and version), none of a stage's.
pub fn load_unstaged(engine: &PluginEngine, path: &Path) -> Result<LoadedPlugin, LoadError> {
    if is_package(path) {
        load_package(engine, path, None)
    } else {
        engine.load_file(path, None)
    }
}

/// Loads a package: manifest, contract, the stage's terms (if any), digest against the
/// manifest and the stage's pin, then the component, its exported contract and identity.
fn load_package(
    engine: &PluginEngine,
    dir: &Path,
    terms: Option<&StageTerms>,
) -> Result<LoadedPlugin, LoadError> {
    let package = Package::read(dir)?;
    package.check_host_contract()?;
    if let Some(terms) = terms {
        package.check_terms(terms, engine.config().cpu_limit)?;
    }
    let component = package.component_path();
    let bytes = std::fs::read(&component).map_err(|source| LoadError::Read {
        path: component.display().to_string(),
        source,
    })?;
    let actual = Digest::of(&bytes);
    package.check_component_digest(&actual)?;
    if let Some(pin) = terms.and_then(|t| t.pin.as_ref()) {
        if *pin != actual {
            return Err(LoadError::DigestMismatch {
                path: component.display().to_string(),
                expected: pin.clone(),
                actual,
            });
        }
    }
    let loaded = engine.load_packaged(
        &bytes,
        actual,
        component.display().to_string(),
        package.manifest.clone(),
    )?;
    package.check_component(loaded.contract_version(), loaded.name(), loaded.version())?;
    Ok(loaded)
}

/// Whether `path` (a component file or a package) still holds what `loaded` was loaded from.
/// A component file that cannot be read (being replaced) counts as unchanged until the next
/// look; a package that cannot be read counts as changed, so a swap is tried and its refusal
/// logged.
pub fn unchanged(path: &Path, loaded: &LoadedPlugin) -> bool {
    if !is_package(path) {
        return std::fs::read(path).map_or(true, |b| Digest::of(&b) == *loaded.digest());
    }
    let Ok(package) = Package::read(path) else {
        return false;
    };
    loaded.package() == Some(&package.manifest)
        && std::fs::read(package.component_path()).is_ok_and(|b| Digest::of(&b) == *loaded.digest())
}

/// A stamp (latest modification time, total length) of a component file or of a package
/// directory and the files in it, for watchers to notice a change cheaply.
pub fn source_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    let mut stamp = (m.modified().ok()?, m.len());
    if m.is_dir() {
        for entry in std::fs::read_dir(path).ok()?.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.is_file() {
                stamp.0 = stamp.0.max(m.modified().ok()?);
                stamp.1 += m.len();
            }
        }
    }
    Some(stamp)
}

/// What `write_package` puts in the manifest besides what the component says of itself.
#[derive(Clone, Debug, Default)]
pub struct PackageOptions {
    pub capabilities: Vec<Grant>,
    pub limits: NeededLimits,
    pub vendor: Option<String>,
    /// Default: the component's own description.
    pub description: Option<String>,
}

/// Why a package could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is neither empty nor a plugin package (no {MANIFEST_FILE}); choose a new or empty directory")]
    NotAPackage { path: String },
    #[error("manifest `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Writes the package directory `out` for `component`: copies it as `plugin.wasm` and writes
/// the manifest with the name, version and contract the component reports and its digest.
/// Loads the package back before returning. `out` must be new, empty or a package.
pub fn write_package(
    engine: &PluginEngine,
    component: &Path,
    out: &Path,
    options: PackageOptions,
) -> Result<Manifest, PackageError> {
    let bytes = std::fs::read(component).map_err(|source| LoadError::Read {
        path: component.display().to_string(),
        source,
    })?;
    let digest = Digest::of(&bytes);
    let loaded = engine.load_bytes(&bytes, digest.clone(), component.display().to_string())?;
    let mut capabilities = Vec::new();
    for c in options.capabilities {
        if !capabilities.contains(&c) {
            capabilities.push(c);
        }
    }
    let described = loaded.info().description.trim();
    let manifest = Manifest {
        name: loaded.name().into(),
        version: loaded.version().into(),
        description: options
            .description
            .or_else(|| (!described.is_empty()).then(|| described.to_string())),
        vendor: options.vendor,
        contract: format!("{CONTRACT_PACKAGE}@{}", loaded.contract_version()),
        component: DEFAULT_COMPONENT.into(),
        digest: digest.to_string(),
        capabilities,
        limits: options.limits,
    };
    manifest
        .validate()
        .map_err(|(key, reason)| PackageError::Invalid { key, reason })?;

    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| PackageError::Write { path, source }
    };
    if out.is_dir() && !out.join(MANIFEST_FILE).is_file() {
        let mut entries = std::fs::read_dir(out).map_err(write_err(out))?;
        if entries.next().is_some() {
            return Err(PackageError::NotAPackage {
                path: out.display().to_string(),
            });
        }
    }
    std::fs::create_dir_all(out).map_err(write_err(out))?;
    // Component first, then the manifest naming it; each through a temporary name and a
    // rename, so a host watching the package never reads a half-written file.
    write_atomically(&out.join(DEFAULT_COMPONENT), &bytes)?;
    write_atomically(&out.join(MANIFEST_FILE), manifest.to_toml().as_bytes())?;
    load_unstaged(engine, out)?;
    Ok(manifest)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let err = |source| PackageError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// "capability `clock`" or "capabilities `clock` and `stdio`" (for refusals).
pub fn capability_phrase(grants: &[Grant]) -> String {
    let names: Vec<String> = grants.iter().map(|g| format!("`{g}`")).collect();
    match names.as_slice() {
        [one] => format!("capability {one}"),
        [init @ .., last] => format!("capabilities {} and {last}", init.join(", ")),
        [] => "no capability".into(),
    }
}

/// `"clock", "stdio"` (for refusals: what to add to a stage's `grants`).
pub fn quoted_list(grants: &[Grant]) -> String {
    grants
        .iter()
        .map(|g| format!("\"{g}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn manifest_text(extra: &str) -> String {
        format!(
            "name = \"acme-filter\"\nversion = \"1.2.0\"\ncontract = \"ferrule:plugin@0.1.0\"\ndigest = \"{DIGEST}\"\n{extra}"
        )
    }

    fn package(extra: &str) -> Package {
        Package {
            dir: PathBuf::from("/plugins/acme-filter"),
            manifest: Manifest::parse(&manifest_text(extra)).unwrap(),
        }
    }

    fn terms(grants: &[Grant], limits: PluginLimits) -> StageTerms {
        StageTerms::new(
            "validate",
            None,
            PluginLimits {
                grants: grants.to_vec(),
                ..limits
            },
        )
    }

    #[test]
    fn a_minimal_manifest_takes_the_defaults() {
        let m = Manifest::parse(&manifest_text("")).unwrap();
        assert_eq!(m.component, "plugin.wasm");
        assert!(m.capabilities.is_empty());
        assert!(m.limits.is_empty());
        assert_eq!(m.description, None);
        // What `to_toml` writes parses back to the same manifest.
        let full = Manifest {
            capabilities: vec![Grant::Clock, Grant::Stdio],
            limits: NeededLimits {
                memory_mib: Some(128),
                ..NeededLimits::default()
            },
            vendor: Some("Acme".into()),
            ..m
        };
        assert_eq!(Manifest::parse(&full.to_toml()).unwrap(), full);
    }

    #[test]
    fn unknown_missing_and_bad_keys_are_named() {
        let e = Manifest::parse(&manifest_text("colour = \"red\"\n")).unwrap_err();
        assert!(e.starts_with("line 5: unknown field `colour`"), "{e}");
        let e = Manifest::parse(&manifest_text("[limits]\nmemory = 3\n")).unwrap_err();
        assert!(e.contains("unknown field `memory`"), "{e}");
        let e =
            Manifest::parse("name = \"a\"\nversion = \"1\"\ncontract = \"ferrule:plugin@0.1.0\"\n")
                .unwrap_err();
        assert!(e.contains("missing field `digest`"), "{e}");
        let e = Manifest::parse(&manifest_text("capabilities = [\"network\"]\n")).unwrap_err();
        assert!(e.contains("network") && e.contains("clock"), "{e}");
        let e = Manifest::parse(&manifest_text("component = \"../x.wasm\"\n")).unwrap_err();
        assert!(e.starts_with("`component`:"), "{e}");
        let e = Manifest::parse(&manifest_text("").replace(DIGEST, "sha256:zz")).unwrap_err();
        assert!(e.starts_with("`digest`:"), "{e}");
        let e = Manifest::parse(&manifest_text("").replace("ferrule:plugin@0.1.0", "0.1.0"))
            .unwrap_err();
        assert!(e.starts_with("`contract`:"), "{e}");
    }

    #[test]
    fn the_manifest_contract_must_be_one_the_host_speaks() {
        assert!(package("").check_host_contract().is_ok());
        let p = Package {
            manifest: Manifest {
                contract: "ferrule:plugin@0.1.7".into(),
                ..package("").manifest
            },
            ..package("")
        };
        assert!(p.check_host_contract().is_ok());
        for declared in ["ferrule:plugin@0.3.0", "acme:plugin@0.1.0"] {
            let p = Package {
                manifest: Manifest {
                    contract: declared.into(),
                    ..package("").manifest
                },
                ..package("")
            };
            let e = p.check_host_contract().unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("package acme-filter 1.2.0 (/plugins/acme-filter) declares contract {declared}; this host speaks ferrule:plugin@0.2.0 and ferrule:plugin@0.1.0")
            );
        }
    }

    #[test]
    fn an_ungranted_capability_is_refused_naming_it_and_the_stage() {
        let p = package("capabilities = [\"clock\"]\n");
        let e = p
            .check_terms(&terms(&[], PluginLimits::default()), CpuLimitMode::Epoch)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "package acme-filter 1.2.0 asks for capability `clock`, which stage `validate` does not grant (add \"clock\" to the stage's `grants` to allow it)"
        );
        let p = package("capabilities = [\"clock\", \"random\", \"stdio\"]\n");
        let e = p
            .check_terms(
                &terms(&[Grant::Random], PluginLimits::default()),
                CpuLimitMode::Epoch,
            )
            .unwrap_err();
        assert!(
            e.to_string().contains(
                "asks for capabilities `clock` and `stdio`, which stage `validate` does not grant (add \"clock\", \"stdio\""
            ),
            "{e}"
        );
        assert!(p
            .check_terms(
                &terms(&Grant::ALL, PluginLimits::default()),
                CpuLimitMode::Epoch
            )
            .is_ok());
    }

    #[test]
    fn a_limit_above_the_stage_limit_is_refused() {
        let p = package("[limits]\nmemory_mib = 128\ncpu_ms_per_call = 200\nfuel_per_call = 5\n");
        let stage = PluginLimits::default();
        let e = p
            .check_terms(&terms(&[], stage.clone()), CpuLimitMode::Epoch)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "package acme-filter 1.2.0 needs memory_mib ≥ 128, stage `validate` allows 64 (raise the stage's `limits.memory_mib` to allow it)"
        );
        let roomy = PluginLimits {
            memory_mib: 128,
            ..stage
        };
        let e = p
            .check_terms(&terms(&[], roomy.clone()), CpuLimitMode::Epoch)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("needs cpu_ms_per_call ≥ 200, stage `validate` allows 100"),
            "{e}"
        );
        // Under fuel metering the wall-clock budget is not what limits a call.
        assert!(p
            .check_terms(&terms(&[], roomy.clone()), CpuLimitMode::Fuel)
            .is_ok());
        let starved = PluginLimits {
            fuel_per_call: 1,
            ..roomy
        };
        let e = p
            .check_terms(&terms(&[], starved), CpuLimitMode::Fuel)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("needs fuel_per_call ≥ 5, stage `validate` allows 1"),
            "{e}"
        );
    }

    #[test]
    fn digest_contract_and_identity_of_the_component_must_match() {
        let p = package("");
        assert!(p
            .check_component_digest(&Digest::parse(DIGEST).unwrap())
            .is_ok());
        let other = Digest::of(b"tampered");
        let e = p.check_component_digest(&other).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("package acme-filter 1.2.0 (/plugins/acme-filter): component /plugins/acme-filter/plugin.wasm has digest {other}, but the manifest says {DIGEST}; the package is tampered with or corrupt")
        );

        assert!(p.check_component("0.1.0", "acme-filter", "1.2.0").is_ok());
        let e = p
            .check_component("0.1.1", "acme-filter", "1.2.0")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "package acme-filter 1.2.0 (/plugins/acme-filter): the manifest declares contract ferrule:plugin@0.1.0, but the component exports ferrule:plugin@0.1.1"
        );
        let e = p
            .check_component("0.1.0", "validator", "0.1.0")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "package acme-filter 1.2.0 (/plugins/acme-filter): the manifest names acme-filter 1.2.0, but the component describes itself as validator 0.1.0"
        );
        let e = p
            .check_component("0.1.0", "acme-filter", "1.2.1")
            .unwrap_err();
        assert!(matches!(e, LoadError::PackageIdentity { .. }), "{e}");
    }

    #[test]
    fn a_directory_without_a_manifest_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = Package::read(dir.path()).unwrap_err();
        assert!(matches!(e, LoadError::ManifestRead { .. }), "{e}");
        assert!(e.to_string().contains(MANIFEST_FILE), "{e}");
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            manifest_text("colour = 1\n"),
        )
        .unwrap();
        let e = Package::read(dir.path()).unwrap_err();
        assert!(
            e.to_string().ends_with(&format!(
                "{MANIFEST_FILE}: line 5: unknown field `colour`, expected one of `name`, `version`, `description`, `vendor`, `contract`, `component`, `digest`, `capabilities`, `limits`"
            )),
            "{e}"
        );
    }
}
