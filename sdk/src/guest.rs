//! The component side: the one `wit_bindgen::generate!` for plugins, and the glue that turns
//! the contract's columns into the SDK's types and back. Used through `export_plugin!`.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "ferrule_sdk::guest::bindings",
    });
}

use bindings::exports::ferrule::plugin::transform as wit_export;
use bindings::ferrule::plugin::types as wit;

use crate::types::{
    Batch, Columns, Command, CommandDecision, DataType, Extra, ExtraValue, Planes, PluginInfo,
    TagDecision, TagInfo,
};
use crate::{Config, Plugin};

fn columns(c: Columns) -> wit::Columns {
    let mut out = wit::Columns::empty();
    if c.contains(Columns::VALUES) {
        out |= wit::Columns::VALUES;
    }
    if c.contains(Columns::QUALITY) {
        out |= wit::Columns::QUALITY;
    }
    if c.contains(Columns::TIMESTAMPS) {
        out |= wit::Columns::TIMESTAMPS;
    }
    if c.contains(Columns::EXTRAS) {
        out |= wit::Columns::EXTRAS;
    }
    out
}

#[doc(hidden)]
pub fn describe<P: Plugin>() -> wit::PluginInfo {
    let info: PluginInfo = P::info();
    let mut planes = wit::Planes::empty();
    if info.planes.contains(Planes::TAG) {
        planes |= wit::Planes::TAG;
    }
    if info.planes.contains(Planes::SAMPLE) {
        planes |= wit::Planes::SAMPLE;
    }
    if info.planes.contains(Planes::COMMAND) {
        planes |= wit::Planes::COMMAND;
    }
    wit::PluginInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        planes,
        reads: columns(info.reads),
        writes: columns(info.writes),
        config_keys: info
            .config_keys
            .into_iter()
            .map(|k| wit::ConfigKey {
                name: k.name,
                description: k.description,
                required: k.required,
            })
            .collect(),
        reasons: info
            .reasons
            .into_iter()
            .map(|r| wit::Reason {
                code: r.code,
                name: r.name,
                description: r.description,
            })
            .collect(),
    }
}

/// A live plugin instance and what it declared it writes.
#[doc(hidden)]
pub struct State<P> {
    plugin: P,
    writes: Columns,
}

#[doc(hidden)]
pub fn init<P: Plugin>(config: &str) -> Result<State<P>, String> {
    let plugin = P::init(Config::from_json(config)?)?;
    Ok(State {
        plugin,
        writes: P::info().writes,
    })
}

fn data_type(t: wit::DataType) -> DataType {
    match t {
        wit::DataType::Float64 => DataType::Float64,
        wit::DataType::Float32 => DataType::Float32,
        wit::DataType::Int64 => DataType::Int64,
        wit::DataType::Uint64 => DataType::Uint64,
        wit::DataType::Int32 => DataType::Int32,
        wit::DataType::Uint32 => DataType::Uint32,
        wit::DataType::Int16 => DataType::Int16,
        wit::DataType::Uint16 => DataType::Uint16,
        wit::DataType::Boolean => DataType::Boolean,
        wit::DataType::Text => DataType::Text,
    }
}

fn decision(d: TagDecision) -> wit::TagDecision {
    match d {
        TagDecision::Reject(reason) => wit::TagDecision::Reject(reason),
        TagDecision::Accept(a) => wit::TagDecision::Accept(wit::TagAccept {
            path: a.path,
            unit: a.unit,
            limits: a.limits.map(|l| wit::Limits {
                low: l.low,
                high: l.high,
                max_rate_per_second: l.max_rate_per_second,
            }),
            enrichment: a.enrichment,
        }),
    }
}

#[doc(hidden)]
pub fn on_tags<P: Plugin>(
    state: Option<&mut State<P>>,
    tags: Vec<wit::TagInfo>,
) -> Vec<wit::TagDecision> {
    let Some(State { plugin, .. }) = state else {
        return tags
            .into_iter()
            .map(|_| wit::TagDecision::Reject("plugin not initialised".into()))
            .collect();
    };
    tags.into_iter()
        .map(|t| {
            let tag = TagInfo {
                id: t.id,
                path: t.path,
                vendor_path: t.vendor_path,
                unit: t.unit,
                data_type: data_type(t.data_type),
                source: t.source,
                metadata: t.metadata,
            };
            decision(plugin.on_tag(&tag))
        })
        .collect()
}

#[doc(hidden)]
pub fn on_batch<P: Plugin>(
    state: Option<&mut State<P>>,
    tag_ids: Vec<u32>,
    values: Vec<f64>,
    quality: Vec<u32>,
    timestamps: Vec<u64>,
    extras: Vec<wit::Extra>,
) -> Result<wit::BatchOutput, String> {
    let state = state.ok_or("plugin not initialised")?;
    let extras = extras
        .into_iter()
        .map(|e| Extra {
            index: e.index,
            value: extra_value(e.value),
        })
        .collect();
    let mut batch = Batch::new(tag_ids, values, quality, timestamps, extras);
    state.plugin.on_batch(&mut batch)?;
    let out = batch.into_output(state.writes);
    Ok(wit::BatchOutput {
        values: out.values,
        quality: out.quality,
        extras: out.extras.map(|extras| {
            extras
                .into_iter()
                .map(|e| wit::Extra {
                    index: e.index,
                    value: wit_extra_value(e.value),
                })
                .collect()
        }),
        dropped: out
            .dropped
            .into_iter()
            .map(|d| wit::Drop {
                index: d.index,
                reason: d.reason,
            })
            .collect(),
        rejected: out
            .rejected
            .into_iter()
            .map(|r| wit::Rejection {
                index: r.index,
                reason: r.reason,
                detail: r.detail,
            })
            .collect(),
    })
}

pub(crate) fn extra_value(v: wit::ExtraValue) -> ExtraValue {
    match v {
        wit::ExtraValue::Text(s) => ExtraValue::Text(s),
        wit::ExtraValue::Signed(v) => ExtraValue::Signed(v),
        wit::ExtraValue::Unsigned(v) => ExtraValue::Unsigned(v),
    }
}

fn wit_extra_value(v: ExtraValue) -> wit::ExtraValue {
    match v {
        ExtraValue::Text(s) => wit::ExtraValue::Text(s),
        ExtraValue::Signed(v) => wit::ExtraValue::Signed(v),
        ExtraValue::Unsigned(v) => wit::ExtraValue::Unsigned(v),
    }
}

#[doc(hidden)]
pub fn on_command<P: Plugin>(
    state: Option<&mut State<P>>,
    cmd: wit::Command,
) -> wit::CommandDecision {
    let Some(State { plugin, .. }) = state else {
        return wit::CommandDecision::Refuse(wit::CommandRefusal {
            reason: 0,
            detail: "plugin not initialised".into(),
        });
    };
    let cmd = Command {
        id: cmd.id,
        tag_id: cmd.tag_id,
        path: cmd.path,
        value: cmd.value,
        extra: cmd.extra.map(extra_value),
        expected_current: cmd.expected_current,
        requester: cmd.requester,
        deadline_ns: cmd.deadline,
        dry_run: cmd.dry_run,
    };
    match plugin.on_command(&cmd) {
        CommandDecision::Allow(v) => wit::CommandDecision::Allow(v),
        CommandDecision::Refuse { reason, detail } => {
            wit::CommandDecision::Refuse(wit::CommandRefusal { reason, detail })
        }
    }
}

#[doc(hidden)]
pub use wit_export::Guest;
