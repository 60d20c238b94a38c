//! The built component against the contract, in the real engine (`--features conformance`;
//! off by default because it builds the host). Build the component first:
//! `cargo build --target wasm32-wasip2 --profile plugin`, then
//! `cargo test --features conformance`. The same kit without building the host:
//! `ferrule plugin test target/wasm32-wasip2/plugin/<lib>.wasm --config '{"deadband": 0.5}'`.
#![cfg(feature = "conformance")]

use std::path::PathBuf;

/// `PLUGIN_WASM`, or `<target dir>/wasm32-wasip2/plugin/<package name with _>.wasm`: the
/// target dir this test runs from, so it holds inside a workspace and outside one alike.
fn component() -> PathBuf {
    if let Ok(path) = std::env::var("PLUGIN_WASM") {
        return path.into();
    }
    // <target>/<profile>/deps/conformance-<hash>
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test runs from <target>/<profile>/deps");
    let lib = env!("CARGO_PKG_NAME").replace('-', "_");
    target
        .join("wasm32-wasip2/plugin")
        .join(format!("{lib}.wasm"))
}

#[test]
fn the_component_keeps_the_contract() {
    ferrule_sdk::conformance::assert_conformant(
        &component(),
        &serde_json::json!({ "deadband": 0.5 }),
    );
}
