//! Ferrule plugin SDK: write one type implementing [`Plugin`], call [`export_plugin!`] once,
//! and the same code builds as a wasm32-wasip2 component for the host and natively for
//! `cargo test` (with [`testing::Harness`] standing in for the host).
//!
//! ```
//! use ferrule_sdk::prelude::*;
//!
//! pub struct Doubler;
//! impl Plugin for Doubler {
//!     fn info() -> PluginInfo {
//!         PluginInfo::new("doubler", "0.1.0").sample_plane(Columns::VALUES, Columns::VALUES)
//!     }
//!     fn init(_config: Config) -> Result<Self, String> { Ok(Doubler) }
//!     fn on_batch(&mut self, batch: &mut Batch) -> Result<(), String> {
//!         for s in batch.samples_mut() { *s.value *= 2.0; }
//!         Ok(())
//!     }
//! }
//! export_plugin!(Doubler);
//! ```

#[cfg(all(feature = "conformance", not(target_arch = "wasm32")))]
pub mod conformance;
pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod types;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;

pub use types::*;

/// The contract version this SDK builds against (the WIT package version).
pub const CONTRACT_VERSION: &str = "0.2.0";

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::host::{self, Level};
    pub use crate::types::*;
    pub use crate::{export_plugin, Plugin};
}

/// A plugin: its self-description, its construction from config, and the two planes.
pub trait Plugin: Sized + 'static {
    /// Self-description: name, version, planes, the columns read and written, config keys,
    /// and the reason codes used for rejected samples.
    fn info() -> PluginInfo;

    /// Builds the plugin from the stage's config; an error refuses the plugin at load.
    fn init(config: Config) -> Result<Self, String>;

    /// Tag plane: decide once per tag (path, unit, limits, enrichment, or rejection).
    /// May be called again for the same tag id; the newer answer replaces the older.
    fn on_tag(&mut self, tag: &TagInfo) -> TagDecision {
        let _ = tag;
        TagDecision::keep()
    }

    /// Sample plane: transform a batch in place; reject samples (dead-letter) or drop them
    /// (on purpose, no dead-letter) through the batch. Only called when `info()` declares the
    /// sample plane. An error fails the whole batch.
    fn on_batch(&mut self, batch: &mut Batch) -> Result<(), String> {
        let _ = batch;
        Ok(())
    }

    /// Command plane: check or convert one write request on its way to a device (it arrives
    /// in the unit and under the path this stage produces; allow it with the value in the unit
    /// this stage receives). Only called when `info()` declares `command_plane()`.
    fn on_command(&mut self, cmd: &Command) -> CommandDecision {
        let _ = cmd;
        CommandDecision::allow()
    }
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as the component's `transform`
/// interface. Natively it expands to nothing, so the crate still builds for `cargo test`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::guest::bindings::exports::ferrule::plugin::transform as __wit_export;
            use $crate::guest::bindings::ferrule::plugin::types as __wit;

            struct __FerruleGuest;

            ::std::thread_local! {
                static __FERRULE_STATE: ::core::cell::RefCell<
                    ::core::option::Option<$crate::guest::State<$plugin>>,
                > = const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            impl __wit_export::Guest for __FerruleGuest {
                fn describe() -> __wit::PluginInfo {
                    $crate::guest::describe::<$plugin>()
                }
                fn init(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    let state = $crate::guest::init::<$plugin>(&config)?;
                    __FERRULE_STATE.with(|s| *s.borrow_mut() = ::core::option::Option::Some(state));
                    ::core::result::Result::Ok(())
                }
                fn on_tags(tags: ::std::vec::Vec<__wit::TagInfo>) -> ::std::vec::Vec<__wit::TagDecision> {
                    __FERRULE_STATE.with(|s| $crate::guest::on_tags::<$plugin>(s.borrow_mut().as_mut(), tags))
                }
                fn on_command(cmd: __wit::Command) -> __wit::CommandDecision {
                    __FERRULE_STATE.with(|s| $crate::guest::on_command::<$plugin>(s.borrow_mut().as_mut(), cmd))
                }
                fn on_batch(
                    tag_ids: ::std::vec::Vec<u32>,
                    values: ::std::vec::Vec<f64>,
                    quality: ::std::vec::Vec<u32>,
                    timestamps: ::std::vec::Vec<u64>,
                    extras: ::std::vec::Vec<__wit::Extra>,
                ) -> ::core::result::Result<__wit::BatchOutput, ::std::string::String> {
                    __FERRULE_STATE.with(|s| {
                        $crate::guest::on_batch::<$plugin>(
                            s.borrow_mut().as_mut(),
                            tag_ids,
                            values,
                            quality,
                            timestamps,
                            extras,
                        )
                    })
                }
            }

            $crate::guest::bindings::export_raw!(__FerruleGuest with_types_in $crate::guest::bindings);
        };
    };
}
