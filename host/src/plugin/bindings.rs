//! The host's one `bindgen!` of the plugin contract (wit/plugin.wit). Everything else in the
//! host talks to plugins through `plugin::instance`, never through these types' call paths.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    additional_derives: [PartialEq],
});

pub use self::exports::ferrule::plugin::transform::BatchOutput;
pub use self::ferrule::plugin::host::Level;
pub use self::ferrule::plugin::types::{
    Columns, ConfigKey, DataType, Extra, ExtraValue, Limits, Planes, PluginInfo, Reason, Rejection,
    TagAccept, TagDecision, TagInfo,
};

/// The contract version this host speaks (the WIT package version).
pub const CONTRACT_VERSION: &str = "0.1.0";
/// The WIT package name of the contract.
pub const CONTRACT_PACKAGE: &str = "ferrule:plugin";
