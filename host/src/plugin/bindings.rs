//! The host's `bindgen!` of the plugin contract, one per version it speaks: the current one
//! (wit/plugin.wit, `ferrule:plugin@0.2.0`), whose types the whole host uses, and the frozen
//! previous one (wit/v0.1.0/plugin.wit) in `v0_1`, with the conversions that adapt a 0.1.0
//! component to the 0.2.0 shape. Everything else in the host talks to plugins through
//! `plugin::instance`, never through these types' call paths.

mod current {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        additional_derives: [PartialEq],
    });
}

/// Contract 0.1.0 (frozen), for components built against it.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/v0.1.0",
        additional_derives: [PartialEq],
    });

    use self::exports::ferrule::plugin::transform as old;
    use self::ferrule::plugin::types as t;

    /// The oldest contract version this host runs.
    pub const VERSION: &str = "0.1.0";

    fn columns(c: t::Columns) -> super::Columns {
        let mut out = super::Columns::empty();
        for (old, new) in [
            (t::Columns::VALUES, super::Columns::VALUES),
            (t::Columns::QUALITY, super::Columns::QUALITY),
            (t::Columns::TIMESTAMPS, super::Columns::TIMESTAMPS),
            (t::Columns::EXTRAS, super::Columns::EXTRAS),
        ] {
            if c.contains(old) {
                out |= new;
            }
        }
        out
    }

    fn data_type(d: super::DataType) -> t::DataType {
        use super::DataType as D;
        match d {
            D::Float64 => t::DataType::Float64,
            D::Float32 => t::DataType::Float32,
            D::Int64 => t::DataType::Int64,
            D::Uint64 => t::DataType::Uint64,
            D::Int32 => t::DataType::Int32,
            D::Uint32 => t::DataType::Uint32,
            D::Int16 => t::DataType::Int16,
            D::Uint16 => t::DataType::Uint16,
            D::Boolean => t::DataType::Boolean,
            D::Text => t::DataType::Text,
        }
    }

    /// A 0.1.0 self-description as 0.2.0 says it (no command plane; same flag bits).
    pub fn info(i: old::PluginInfo) -> super::PluginInfo {
        let mut planes = super::Planes::empty();
        if i.planes.contains(t::Planes::TAG) {
            planes |= super::Planes::TAG;
        }
        if i.planes.contains(t::Planes::SAMPLE) {
            planes |= super::Planes::SAMPLE;
        }
        super::PluginInfo {
            name: i.name,
            version: i.version,
            description: i.description,
            planes,
            reads: columns(i.reads),
            writes: columns(i.writes),
            config_keys: i
                .config_keys
                .into_iter()
                .map(|k| super::ConfigKey {
                    name: k.name,
                    description: k.description,
                    required: k.required,
                })
                .collect(),
            reasons: i
                .reasons
                .into_iter()
                .map(|r| super::Reason {
                    code: r.code,
                    name: r.name,
                    description: r.description,
                })
                .collect(),
        }
    }

    pub fn tag_info(i: &super::TagInfo) -> t::TagInfo {
        t::TagInfo {
            id: i.id,
            path: i.path.clone(),
            vendor_path: i.vendor_path.clone(),
            unit: i.unit.clone(),
            data_type: data_type(i.data_type),
            source: i.source.clone(),
            metadata: i.metadata.clone(),
        }
    }

    pub fn decision(d: t::TagDecision) -> super::TagDecision {
        match d {
            t::TagDecision::Reject(r) => super::TagDecision::Reject(r),
            t::TagDecision::Accept(a) => super::TagDecision::Accept(super::TagAccept {
                path: a.path,
                unit: a.unit,
                limits: a.limits.map(|l| super::Limits {
                    low: l.low,
                    high: l.high,
                    max_rate_per_second: l.max_rate_per_second,
                }),
                enrichment: a.enrichment,
            }),
        }
    }

    pub fn extra(e: &super::Extra) -> t::Extra {
        t::Extra {
            index: e.index,
            value: match &e.value {
                super::ExtraValue::Text(s) => t::ExtraValue::Text(s.clone()),
                super::ExtraValue::Signed(v) => t::ExtraValue::Signed(*v),
                super::ExtraValue::Unsigned(v) => t::ExtraValue::Unsigned(*v),
            },
        }
    }

    /// A 0.1.0 batch result: no extras written, nothing dropped.
    pub fn output(o: old::BatchOutput) -> super::BatchOutput {
        super::BatchOutput {
            values: o.values,
            quality: o.quality,
            extras: None,
            rejected: o
                .rejected
                .into_iter()
                .map(|r| super::Rejection {
                    index: r.index,
                    reason: r.reason,
                    detail: r.detail,
                })
                .collect(),
            dropped: Vec::new(),
        }
    }
}

pub use self::current::exports::ferrule::plugin::transform::BatchOutput;
pub use self::current::ferrule;
pub use self::current::ferrule::plugin::host::Level;
pub use self::current::ferrule::plugin::types::{
    Columns, Command, CommandDecision, CommandRefusal, ConfigKey, DataType, Drop as SampleDrop,
    Extra, ExtraValue, LatestSample, Limits, Planes, PluginInfo, Reason, Rejection, TagAccept,
    TagDecision, TagInfo,
};
pub use self::current::{Plugin, PluginPre};

/// The contract version this host speaks (the WIT package version).
pub const CONTRACT_VERSION: &str = "0.2.0";
/// Every contract version this host runs, newest first.
pub const CONTRACT_VERSIONS: [&str; 2] = [CONTRACT_VERSION, v0_1::VERSION];
/// The WIT package name of the contract.
pub const CONTRACT_PACKAGE: &str = "ferrule:plugin";
