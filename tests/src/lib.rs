//! Shared helpers of the cross-crate integration tests: where the built plugin components
//! are, and small builders for configs.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A built component from `dist/plugins/` (written by `scripts/build-plugins`).
pub fn plugin(name: &str) -> PathBuf {
    let path = repo_root()
        .join("dist/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-plugins first (the test command does)",
        path.display()
    );
    path
}

/// The example plant config's stage section, with plugin paths made absolute.
pub fn reference_stages_toml() -> String {
    let text = std::fs::read_to_string(repo_root().join("examples/plant.toml")).unwrap();
    let start = text.find("[[stages]]").unwrap();
    let end = text.find("[sinks.samples]").unwrap();
    text[start..end].replace(
        "\"../dist/plugins/",
        &format!("\"{}/dist/plugins/", repo_root().display()),
    )
}

/// Reads a JSON-lines file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
            .collect(),
        Err(_) => Vec::new(),
    }
}
