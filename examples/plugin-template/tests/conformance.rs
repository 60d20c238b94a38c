//! The built component against the contract, in the real engine. Build it first:
//! `cargo build --target wasm32-wasip2 --profile plugin` (in this repository,
//! `scripts/build-plugins` does, and copies it to dist/plugins/).

use std::path::PathBuf;

fn component() -> PathBuf {
    if let Ok(path) = std::env::var("PLUGIN_WASM") {
        return path.into();
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo");
    PathBuf::from(manifest_dir).join("../../dist/plugins/my_ferrule_plugin.wasm")
}

#[test]
fn the_component_keeps_the_contract() {
    ferrule_sdk::conformance::assert_conformant(
        &component(),
        &serde_json::json!({ "deadband": 0.5 }),
    );
}
