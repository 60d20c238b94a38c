//! Ferrule: a host for the edge and bridge layer of industrial IoT. Sources read the plant,
//! a chain of sandboxed WebAssembly plugins normalises, converts, validates and enriches,
//! sinks deliver. Data flows one way: `sources` → `pipeline` (plugin chain) → `sinks`; the
//! way back, `writes`, takes commands to devices through the sources' write paths.

pub mod ack;
pub mod admin;
pub mod admin_page;
pub mod buffer;
pub mod config;
pub mod features;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod payload;
pub mod pipeline;
pub mod plugin;
pub mod progress;
pub mod retry;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod writes;
