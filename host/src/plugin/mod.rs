//! The plugin engine: loading, sandboxing and calling WebAssembly plugin components that
//! implement the contract in wit/. `engine` loads and caches, `instance` calls under limits,
//! `host_api` is what plugins may import, `conformance` checks a component against the
//! contract's invariants, `package` loads and checks plugin packages (component + manifest).

pub mod bindings;
pub mod cache;
pub mod conformance;
pub mod engine;
pub mod host_api;
pub mod instance;
pub mod limits;
pub mod meter;
pub mod package;

pub use bindings::{
    BatchOutput, Columns, Command, CommandDecision, CommandRefusal, DataType, Extra, ExtraValue,
    LatestSample, Planes, PluginInfo, Rejection, SampleDrop, TagAccept, TagDecision, TagInfo,
    CONTRACT_VERSION, CONTRACT_VERSIONS,
};
pub use cache::{CacheOutcome, Digest};
pub use engine::{
    spoken_versions, CpuLimitMode, EngineConfig, LoadTimings, LoadedPlugin, PluginEngine,
};
pub use host_api::{HostBackends, LatestValues, NoLatestValues, PluginLabel};
pub use instance::{BatchColumns, PluginInstance};
pub use limits::{Grant, PluginLimits};
pub use meter::{CallMeter, HistogramSnapshot, MeterSnapshot};
pub use package::{Manifest, NeededLimits, StageTerms};

/// Why a plugin was refused at load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("plugin {path}: digest {actual} does not match the pinned {expected}")]
    DigestMismatch {
        path: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("plugin {origin} is not a valid WebAssembly component: {reason}")]
    Invalid { origin: String, reason: String },
    #[error("plugin {origin} does not export the Ferrule contract (ferrule:plugin/transform)")]
    NoContract { origin: String },
    #[error(
        "plugin {origin} speaks contract {found}; this host speaks {}",
        engine::spoken_versions()
    )]
    ContractVersion { origin: String, found: String },
    #[error("plugin {origin} imports `{import}`, which this host does not provide")]
    UnknownImport { origin: String, import: String },
    #[error("plugin {origin} cannot be linked: {reason}")]
    Link { origin: String, reason: String },
    #[error("plugin {origin} failed to instantiate: {error}")]
    Instantiate { origin: String, error: CallError },
    #[error("plugin {origin}: describe failed: {error}")]
    Describe { origin: String, error: CallError },
    #[error("plugin {origin}: invalid self-description: {reason}")]
    BadInfo { origin: String, reason: String },
    #[error("plugin {plugin} refused its config: {reason}")]
    Init { plugin: String, reason: String },
    #[error("plugin {plugin}: init failed: {error}")]
    InitCall { plugin: String, error: CallError },
    #[error("plugin {plugin}: tag plane failed: {error}")]
    TagPlane { plugin: String, error: CallError },
    #[error("package {package}: cannot read {file}: {source}")]
    ManifestRead {
        package: String,
        file: String,
        source: std::io::Error,
    },
    #[error("package {package}: {file}: {reason}")]
    Manifest {
        package: String,
        file: String,
        reason: String,
    },
    #[error(
        "package {package} declares contract {declared}; this host speaks {}",
        engine::spoken_versions()
    )]
    PackageContract { package: String, declared: String },
    #[error(
        "package {package}: the manifest declares contract {declared}, but the component exports {}@{exported}",
        bindings::CONTRACT_PACKAGE
    )]
    PackageContractMismatch {
        package: String,
        declared: String,
        exported: String,
    },
    #[error(
        "package {package}: component {component} has digest {actual}, but the manifest says {declared}; the package is tampered with or corrupt"
    )]
    PackageDigest {
        package: String,
        component: String,
        declared: Digest,
        actual: Digest,
    },
    #[error(
        "package {package}: the manifest names {manifest}, but the component describes itself as {component}"
    )]
    PackageIdentity {
        package: String,
        manifest: String,
        component: String,
    },
    #[error(
        "package {package} asks for {}, which stage `{stage}` does not grant (add {} to the stage's `grants` to allow it)",
        package::capability_phrase(.missing),
        package::quoted_list(.missing)
    )]
    NotGranted {
        package: String,
        stage: String,
        missing: Vec<Grant>,
    },
    #[error(
        "package {package} needs {limit} ≥ {needs}, stage `{stage}` allows {allows} (raise the stage's `limits.{limit}` to allow it)"
    )]
    LimitTooLow {
        package: String,
        stage: String,
        limit: &'static str,
        needs: u64,
        allows: u64,
    },
}

/// Why one call into a plugin failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("CPU budget exceeded ({0})")]
    CpuLimit(String),
    #[error("memory limit of {limit_mib} MiB exceeded")]
    MemoryLimit { limit_mib: u64 },
    #[error("trapped: {0}")]
    Trap(String),
    #[error("malformed result: {0}")]
    Malformed(String),
    #[error("plugin returned an error: {0}")]
    Plugin(String),
    #[error("instance unusable after an earlier failure")]
    Poisoned,
}
