//! The plugin engine: one wasmtime `Engine` with safe defaults (CPU limit by epoch deadline or
//! fuel), one `Linker` with the host capabilities and a WASI context that grants nothing, the
//! compiled-artifact cache, and `load` which turns a component file into a `LoadedPlugin`
//! (contract version checked, imports checked, `InstancePre` cached, self-description read).
//! A `LoadedPlugin` from a package also carries its manifest, and its instances get only the
//! capabilities the manifest declares (see `package`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::Engine;

use super::bindings::{v0_1, Plugin, PluginPre, CONTRACT_PACKAGE, CONTRACT_VERSIONS};
use super::cache::{ArtifactCache, CacheOutcome, Digest};
use super::host_api::HostBackends;
use super::instance::{check_info, ContractPre, InstanceTimings, PluginInstance, StoreState};
use super::limits::{Grant, PluginLimits};
use super::package::Manifest;
use super::{CallError, LoadError, PluginInfo};

/// How the CPU budget of a call is enforced.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CpuLimitMode {
    /// Wall-clock deadline per call, checked at loop heads and calls (cheap; the default).
    #[default]
    Epoch,
    /// Deterministic instruction budget per call (costlier on the hot path).
    Fuel,
}

/// Engine-wide settings (the `[engine]` table of the host config).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// `epoch` (default) or `fuel`; see the README for the measured cost of each.
    #[serde(default)]
    pub cpu_limit: CpuLimitMode,
    /// Directory for precompiled artifacts; none keeps them in memory only.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Epoch tick in milliseconds: the granularity of `cpu_ms_per_call`.
    #[serde(default = "default_epoch_tick_ms")]
    pub epoch_tick_ms: u64,
}

fn default_epoch_tick_ms() -> u64 {
    1
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cpu_limit: CpuLimitMode::Epoch,
            cache_dir: None,
            epoch_tick_ms: default_epoch_tick_ms(),
        }
    }
}

/// Shared handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<EngineInner>,
}

pub(super) struct EngineInner {
    pub(super) engine: Engine,
    linker: Linker<StoreState>,
    cache: ArtifactCache,
    pub(super) config: EngineConfig,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Times of one load, for the start-up figures.
#[derive(Clone, Copy, Debug)]
pub struct LoadTimings {
    pub cache: CacheOutcome,
    pub compile_or_load: Duration,
    pub link: Duration,
}

impl PluginEngine {
    pub fn new(config: EngineConfig) -> Result<Self, LoadError> {
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true);
        wasm.epoch_interruption(config.cpu_limit == CpuLimitMode::Epoch);
        wasm.consume_fuel(config.cpu_limit == CpuLimitMode::Fuel);
        wasm.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // Deep recursion in a plugin traps instead of eating the host's stack.
        wasm.max_wasm_stack(1 << 20);
        let engine = Engine::new(&wasm).map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let mut linker: Linker<StoreState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| LoadError::Engine(format!("linking WASI: {e:#}")))?;
        Plugin::add_to_linker::<StoreState, HasSelf<super::host_api::HostServices>>(
            &mut linker,
            |state: &mut StoreState| &mut state.host,
        )
        .map_err(|e| LoadError::Engine(format!("linking host interface: {e:#}")))?;
        // The frozen 0.1.0 host interface, for components built against it.
        v0_1::Plugin::add_to_linker::<StoreState, HasSelf<super::host_api::HostServices>>(
            &mut linker,
            |state: &mut StoreState| &mut state.host,
        )
        .map_err(|e| LoadError::Engine(format!("linking host interface 0.1.0: {e:#}")))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        if config.cpu_limit == CpuLimitMode::Epoch {
            let tick = Duration::from_millis(config.epoch_tick_ms.max(1));
            let engine = engine.weak();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("ferrule-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        match engine.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .map_err(|e| LoadError::Engine(format!("starting epoch ticker: {e}")))?;
        }
        let engine_tag = match config.cpu_limit {
            CpuLimitMode::Epoch => "epoch",
            CpuLimitMode::Fuel => "fuel",
        };
        let cache = ArtifactCache::new(config.cache_dir.clone(), engine_tag.into());
        Ok(PluginEngine {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                cache,
                config,
                ticker_stop,
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Loads a component file; with `pin`, refuses it unless its digest matches.
    pub fn load_file(&self, path: &Path, pin: Option<&Digest>) -> Result<LoadedPlugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = pin {
            if *expected != digest {
                return Err(LoadError::DigestMismatch {
                    path: path.display().to_string(),
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        self.load_bytes(&bytes, digest, path.display().to_string())
    }

    /// Compiles (or takes from the cache), checks and links a component.
    pub fn load_bytes(
        &self,
        bytes: &[u8],
        digest: Digest,
        origin: String,
    ) -> Result<LoadedPlugin, LoadError> {
        self.load_component(bytes, digest, origin, None)
    }

    /// `load_bytes` for the component of a package: its instances get only the capabilities
    /// `manifest` declares. The package's own checks are `package`'s.
    pub(super) fn load_packaged(
        &self,
        bytes: &[u8],
        digest: Digest,
        origin: String,
        manifest: Manifest,
    ) -> Result<LoadedPlugin, LoadError> {
        self.load_component(bytes, digest, origin, Some(manifest))
    }

    fn load_component(
        &self,
        bytes: &[u8],
        digest: Digest,
        origin: String,
        package: Option<Manifest>,
    ) -> Result<LoadedPlugin, LoadError> {
        let inner = &self.inner;
        let started = Instant::now();
        let (component, cache) = inner
            .cache
            .get_or_compile(&inner.engine, &digest, bytes)
            .map_err(|e| LoadError::Invalid {
                origin: origin.clone(),
                reason: format!("{e:#}"),
            })?;
        let compile_or_load = started.elapsed();
        let linked = Instant::now();
        let contract = check_contract(&inner.engine, &component, &origin)?;
        let instance_pre =
            inner
                .linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::Link {
                    origin: origin.clone(),
                    reason: format!("{e:#}"),
                })?;
        let link_err = |e: wasmtime::Error| LoadError::Link {
            origin: origin.clone(),
            reason: format!("{e:#}"),
        };
        let pre = if compatible(&contract, v0_1::VERSION) {
            ContractPre::V0_1(v0_1::PluginPre::new(instance_pre).map_err(link_err)?)
        } else {
            ContractPre::Current(PluginPre::new(instance_pre).map_err(link_err)?)
        };
        let link = linked.elapsed();
        let mut plugin = LoadedPlugin {
            inner: Arc::new(LoadedInner {
                engine: self.clone(),
                digest,
                origin: origin.clone(),
                contract,
                pre,
                info: None,
                package,
                timings: LoadTimings {
                    cache,
                    compile_or_load,
                    link,
                },
            }),
        };
        // Read the self-description on a scratch instance with default limits.
        let mut scratch = plugin.new_instance(
            "describe",
            &PluginLimits::default(),
            HostBackends::default(),
        )?;
        let info = scratch.describe().map_err(|error| LoadError::Describe {
            origin: origin.clone(),
            error,
        })?;
        check_info(&info).map_err(|reason| LoadError::BadInfo {
            origin: origin.clone(),
            reason,
        })?;
        Arc::get_mut(&mut plugin.inner)
            .expect("plugin not shared yet")
            .info = Some(info);
        Ok(plugin)
    }

    pub(super) fn inner(&self) -> &EngineInner {
        &self.inner
    }

    /// Drops in-memory compiled artifacts (the disk cache stays); for start-up measurements.
    pub fn forget_compiled(&self) {
        self.inner.cache.forget_memory();
    }
}

/// Finds the `transform` export and checks its contract version; names what it found.
fn check_contract(
    engine: &Engine,
    component: &Component,
    origin: &str,
) -> Result<String, LoadError> {
    let ty = component.component_type();
    let prefix = format!("{CONTRACT_PACKAGE}/transform@");
    let mut found = Vec::new();
    for (name, item) in ty.exports(engine) {
        if let (Some(version), ComponentItem::ComponentInstance(_)) =
            (name.strip_prefix(&prefix), item.ty)
        {
            found.push(version.to_string());
        }
    }
    let Some(version) = found.first() else {
        return Err(LoadError::NoContract {
            origin: origin.into(),
        });
    };
    if !speaks(version) {
        return Err(LoadError::ContractVersion {
            origin: origin.into(),
            found: format!("{CONTRACT_PACKAGE}@{version}"),
        });
    }
    for (name, _) in ty.imports(engine) {
        let known = name.starts_with("wasi:") || name.starts_with(&format!("{CONTRACT_PACKAGE}/"));
        if !known {
            return Err(LoadError::UnknownImport {
                origin: origin.into(),
                import: name.to_string(),
            });
        }
    }
    Ok(version.clone())
}

/// Whether this host runs components of contract `version` (the current one or an older one
/// it adapts).
pub(super) fn speaks(version: &str) -> bool {
    CONTRACT_VERSIONS
        .iter()
        .any(|ours| compatible(version, ours))
}

/// The contract versions this host runs, for messages: `ferrule:plugin@0.2.0 and ferrule:plugin@0.1.0`.
pub fn spoken_versions() -> String {
    CONTRACT_VERSIONS
        .iter()
        .map(|v| format!("{CONTRACT_PACKAGE}@{v}"))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Semver compatibility as the component model uses it: same major, and for 0.x same minor.
pub(super) fn compatible(found: &str, ours: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parse(found), parse(ours)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

/// A compiled, linked, checked plugin version: the cached `InstancePre` and its
/// self-description. Cheap to clone; instantiate it as often as needed.
#[derive(Clone)]
pub struct LoadedPlugin {
    inner: Arc<LoadedInner>,
}

struct LoadedInner {
    engine: PluginEngine,
    digest: Digest,
    origin: String,
    contract: String,
    pre: ContractPre,
    info: Option<PluginInfo>,
    /// The manifest, when the component came from a package.
    package: Option<Manifest>,
    timings: LoadTimings,
}

impl LoadedPlugin {
    pub fn digest(&self) -> &Digest {
        &self.inner.digest
    }
    /// Path (or other origin) the component came from.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }
    /// Contract version the component exports (e.g. `0.2.0`).
    pub fn contract_version(&self) -> &str {
        &self.inner.contract
    }
    /// Whether the component speaks an older contract the host adapts (0.1.0).
    pub fn adapted(&self) -> bool {
        matches!(self.inner.pre, ContractPre::V0_1(_))
    }
    pub fn info(&self) -> &PluginInfo {
        self.inner.info.as_ref().expect("described at load")
    }
    pub fn name(&self) -> &str {
        &self.info().name
    }
    pub fn version(&self) -> &str {
        &self.info().version
    }
    pub fn timings(&self) -> LoadTimings {
        self.inner.timings
    }
    /// The package manifest, if the component came from a package.
    pub fn package(&self) -> Option<&Manifest> {
        self.inner.package.as_ref()
    }
    /// What an instance gets of the capabilities a stage grants: all of them for a bare
    /// component, only those its manifest also declares for a package (least privilege).
    pub fn capabilities(&self, granted: &[Grant]) -> Vec<Grant> {
        match &self.inner.package {
            None => granted.to_vec(),
            Some(m) => granted
                .iter()
                .copied()
                .filter(|g| m.capabilities.contains(g))
                .collect(),
        }
    }
    /// Import names of the component (for `ferrule plugin inspect`).
    pub fn imports(&self) -> Vec<String> {
        let engine = &self.inner.engine.inner().engine;
        self.inner
            .pre
            .component()
            .component_type()
            .imports(engine)
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// A fresh instance with `limits`, initialised with `config_json`. An init error refuses it.
    pub fn instantiate(
        &self,
        stage: &str,
        config_json: &str,
        limits: &PluginLimits,
        backends: HostBackends,
    ) -> Result<PluginInstance, LoadError> {
        let started = Instant::now();
        let mut instance = self.new_instance(stage, limits, backends)?;
        let instantiated = started.elapsed();
        match instance.init(config_json) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Err(LoadError::Init {
                    plugin: format!("{}@{}", self.name(), self.version()),
                    reason,
                })
            }
            Err(error) => {
                return Err(LoadError::InitCall {
                    plugin: format!("{}@{}", self.name(), self.version()),
                    error,
                })
            }
        }
        instance.set_timings(InstanceTimings {
            instantiate: instantiated,
            init: started.elapsed() - instantiated,
        });
        Ok(instance)
    }

    fn new_instance(
        &self,
        stage: &str,
        limits: &PluginLimits,
        backends: HostBackends,
    ) -> Result<PluginInstance, LoadError> {
        let (name, version) = match &self.inner.info {
            Some(info) => (info.name.clone(), info.version.clone()),
            None => (self.inner.origin.clone(), "?".into()),
        };
        let limits = &PluginLimits {
            grants: self.capabilities(&limits.grants),
            ..limits.clone()
        };
        PluginInstance::new(
            self.inner.engine.clone(),
            &self.inner.pre,
            self.inner.info.clone(),
            super::host_api::PluginLabel {
                stage: stage.into(),
                plugin: name,
                version,
            },
            limits,
            backends,
        )
        .map_err(|error: CallError| LoadError::Instantiate {
            origin: self.inner.origin.clone(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{compatible, speaks, spoken_versions};

    #[test]
    fn the_host_speaks_the_current_and_the_frozen_contract() {
        assert!(speaks("0.2.0"));
        assert!(speaks("0.2.4"));
        assert!(speaks("0.1.0"));
        assert!(!speaks("0.3.0"));
        assert!(!speaks("1.0.0"));
        assert_eq!(
            spoken_versions(),
            "ferrule:plugin@0.2.0 and ferrule:plugin@0.1.0"
        );
    }

    #[test]
    fn contract_versions_follow_semver() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.3", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.0.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("garbage", "0.1.0"));
    }
}
