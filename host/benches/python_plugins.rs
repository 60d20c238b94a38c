//! The same plugin logic in Rust and in Python, in one run: the unit converter
//! (`plugins/unit-converter`, Rust) against its line-for-line Python twin
//! (`tests/fixtures/py-unit-converter`, built with componentize-py) over 30 k distinct tags,
//! both as components in the engine (epoch CPU limit), as samples/s and their ratio, after
//! checking both produce the same values. Plus the start-up figures of the ~18 MB Python
//! component against the Rust one: first-load compile, load from the disk artifact cache, from
//! the in-memory cache, instantiate + init, instance memory; the tag plane per tag; and the
//! Python rate-alarm reference plugin's sample-plane rate.
//!
//! Run: `scripts/build-plugins && cargo bench -p ferrule --bench python_plugins`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::plugin::{
    BatchColumns, EngineConfig, HostBackends, LoadedPlugin, PluginEngine, PluginInstance,
    PluginLimits, TagInfo,
};
use ferrule::sources::simulator::{describe_tag, sample, SimulatorConfig};

const TAGS: u32 = 30_000;
const SCANS: u64 = 4;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The bench measures speed, not limits: a generous CPU budget on both sides, so a loaded
/// machine does not stop a call (the pipeline sizes tag-plane calls to the budget itself).
fn limits() -> PluginLimits {
    PluginLimits {
        cpu_ms_per_call: 10_000,
        ..PluginLimits::default()
    }
}

fn component(name: &str) -> PathBuf {
    let p = repo().join("dist/plugins").join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: run scripts/build-plugins",
        p.display()
    );
    p
}

struct Columns {
    tag_ids: Vec<u32>,
    values: Vec<f64>,
    quality: Vec<u32>,
    timestamps: Vec<u64>,
}

fn batches(sim: &SimulatorConfig, size: usize) -> Vec<Columns> {
    let mut all = Vec::new();
    let empty = || Columns {
        tag_ids: vec![],
        values: vec![],
        quality: vec![],
        timestamps: vec![],
    };
    let mut cur = empty();
    for scan in 0..SCANS {
        for i in 0..TAGS {
            let (v, q) = sample(sim, i, scan);
            cur.tag_ids.push(i);
            cur.values.push(v);
            cur.quality.push(q.0);
            cur.timestamps
                .push(1_700_000_000_000_000_000 + scan * 1_000_000_000);
            if cur.tag_ids.len() == size {
                all.push(std::mem::replace(&mut cur, empty()));
            }
        }
    }
    if !cur.tag_ids.is_empty() {
        all.push(cur);
    }
    all
}

fn columns(b: &Columns) -> BatchColumns<'_> {
    BatchColumns {
        tag_ids: &b.tag_ids,
        values: &b.values,
        quality: &b.quality,
        timestamps: &b.timestamps,
        extras: &[],
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Load figures of one component: cold compile, disk cache, memory cache, instantiate + init.
fn startup(label: &str, path: &Path, config: &str, limits: &PluginLimits) {
    let cache = tempfile::tempdir().unwrap();
    let engine = |_: ()| {
        PluginEngine::new(EngineConfig {
            cache_dir: Some(cache.path().into()),
            ..EngineConfig::default()
        })
        .unwrap()
    };
    let cold = engine(());
    let c = cold.load_file(path, None).unwrap();
    let m = cold.load_file(path, None).unwrap();
    let warm = engine(());
    let w = warm.load_file(path, None).unwrap();
    let inst = w
        .instantiate("bench", config, limits, HostBackends::default())
        .unwrap();
    let artifact: u64 = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "  {label:<22} {:>6.1} MB  compile {:>9.2?}  disk cache {:>9.2?}  memory cache {:>9.2?}  instantiate {:>8.2?}  init {:>8.2?}  memory {:>6.1} MiB  artifact {:>6.1} MB",
        std::fs::metadata(path).unwrap().len() as f64 / 1e6,
        c.timings().compile_or_load,
        w.timings().compile_or_load,
        m.timings().compile_or_load,
        inst.timings().instantiate,
        inst.timings().init,
        mib(inst.memory_bytes()),
        artifact as f64 / 1e6,
    );
}

fn instance(
    engine: &PluginEngine,
    path: &Path,
    config: &str,
    limits: &PluginLimits,
) -> (LoadedPlugin, PluginInstance) {
    let loaded = engine.load_file(path, None).unwrap();
    let inst = loaded
        .instantiate("bench", config, limits, HostBackends::default())
        .unwrap();
    (loaded, inst)
}

/// The tag plane for every tag in chunks of 256, as the pipeline calls it; returns the time.
fn tag_plane(inst: &mut PluginInstance, tags: &[TagInfo]) -> Duration {
    let t0 = Instant::now();
    for chunk in tags.chunks(256) {
        inst.on_tags(chunk).unwrap();
    }
    t0.elapsed()
}

fn main() {
    let config =
        HostConfig::load(&repo().join("examples/plant.toml")).expect("examples/plant.toml");
    let units_config = config
        .stages
        .iter()
        .find(|s| s.name == "units")
        .expect("a units stage")
        .config_json();
    // Vendor paths are one segment: `*` watches every tag.
    let alarm_config =
        r#"{"rules": [{"match": "*", "max_per_second": 1.0}], "log_transitions": false}"#;
    let sim = SimulatorConfig {
        tags: TAGS,
        ..SimulatorConfig::default()
    };
    let tags: Vec<TagInfo> = (0..TAGS)
        .map(|i| {
            let d = describe_tag(&sim, "plant", i);
            TagInfo {
                id: i,
                path: d.vendor_path.clone(),
                vendor_path: d.vendor_path,
                unit: d.unit,
                data_type: d.data_type,
                source: d.source,
                metadata: d.metadata,
            }
        })
        .collect();
    let rust_path = component("unit_converter");
    let py_path = component("py_unit_converter");
    let alarm_path = component("rate_alarm");

    println!("start-up (per component; cold = compile with an empty artifact cache):");
    startup(
        "unit-converter (Rust)",
        &rust_path,
        &units_config,
        &limits(),
    );
    startup(
        "unit-converter (Python)",
        &py_path,
        &units_config,
        &limits(),
    );

    let engine = PluginEngine::new(EngineConfig::default()).unwrap();
    let (_, mut rust) = instance(&engine, &rust_path, &units_config, &limits());
    let (_, mut py) = instance(&engine, &py_path, &units_config, &limits());
    let (_, mut alarm) = instance(&engine, &alarm_path, alarm_config, &limits());
    let rust_tags = tag_plane(&mut rust, &tags);
    let py_tags = tag_plane(&mut py, &tags);
    let alarm_tags = tag_plane(&mut alarm, &tags);
    let per_tag = |d: Duration| d.as_secs_f64() * 1e6 / TAGS as f64;
    println!(
        "tag plane, {TAGS} tags in calls of 256: Rust {:.2?} ({:.1} µs/tag), Python {:.2?} ({:.1} µs/tag), ratio {:.1}; rate-alarm (Python, lookup + enrichment) {:.2?} ({:.1} µs/tag)",
        rust_tags,
        per_tag(rust_tags),
        py_tags,
        per_tag(py_tags),
        py_tags.as_secs_f64() / rust_tags.as_secs_f64(),
        alarm_tags,
        per_tag(alarm_tags),
    );

    // Same logic, same values: every batch converts identically on both sides.
    let data = batches(&sim, 1024);
    for b in &data {
        let r = rust.on_batch(columns(b)).unwrap().values.unwrap();
        let p = py.on_batch(columns(b)).unwrap().values.unwrap();
        assert!(
            r.iter()
                .zip(&p)
                .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())),
            "Rust and Python disagree"
        );
    }

    println!("sample plane, unit conversion over {TAGS} tags (epoch CPU limit), best of 10 interleaved rounds:");
    println!(
        "  {:>6}  {:>14}  {:>14}  {:>8}  {:>16}",
        "batch", "Rust M/s", "Python M/s", "ratio", "rate-alarm M/s"
    );
    for size in [64usize, 1024, 8192] {
        let data = batches(&sim, size);
        let total: usize = data.iter().map(|b| b.tag_ids.len()).sum();
        let measure = |inst: &mut PluginInstance| -> f64 {
            let mut n = 0usize;
            let t = Instant::now();
            'outer: while t.elapsed() < Duration::from_millis(300) {
                for b in &data {
                    std::hint::black_box(inst.on_batch(columns(b)).unwrap());
                    n += b.tag_ids.len();
                    if n >= total && t.elapsed() >= Duration::from_millis(300) {
                        break 'outer;
                    }
                }
            }
            n as f64 / t.elapsed().as_secs_f64() / 1e6
        };
        let (mut r, mut p, mut a) = (0.0f64, 0.0f64, 0.0f64);
        for _ in 0..10 {
            r = r.max(measure(&mut rust));
            p = p.max(measure(&mut py));
            a = a.max(measure(&mut alarm));
        }
        println!(
            "  {size:>6}  {r:>14.3}  {p:>14.3}  {:>8.1}  {a:>16.3}",
            r / p
        );
    }
    println!(
        "instance memory after the run: Rust {:.1} MiB, Python unit converter {:.1} MiB, rate-alarm {:.1} MiB",
        mib(rust.memory_bytes()),
        mib(py.memory_bytes()),
        mib(alarm.memory_bytes())
    );
}
