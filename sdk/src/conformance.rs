//! The conformance kit for a plugin's own tests (feature `conformance`): loads the built
//! component in the real host engine and checks the contract's invariants — the same kit as
//! `ferrule plugin test <file>`.

use std::path::Path;

pub use ferrule::plugin::conformance::{Check, Report};

/// Runs the kit against the component at `component`, initialised with `config`.
pub fn check(component: &Path, config: &serde_json::Value) -> Report {
    let engine = ferrule::plugin::PluginEngine::new(ferrule::plugin::EngineConfig::default())
        .expect("the plugin engine starts");
    ferrule::plugin::conformance::run(&engine, component, &config.to_string())
}

/// Panics with the kit's report unless the component keeps every invariant.
pub fn assert_conformant(component: &Path, config: &serde_json::Value) {
    assert!(
        component.is_file(),
        "{} not found: build the component first (cargo build --target wasm32-wasip2 --profile plugin)",
        component.display()
    );
    let report = check(component, config);
    assert!(report.passed(), "{report}");
}
