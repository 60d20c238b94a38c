//! The four reference plugins as one chain over 30 k distinct tags: samples/s through the
//! Wasm chain (CPU limit on: epoch, and fuel) and through the same plugin logic compiled
//! natively and called directly, in one run, with the ratio; plus start-up figures
//! (component compile, load from the artifact cache, instantiate + init). With the epoch limit
//! the Wasm chain also runs metered (per-call latency histogram, thread CPU time, memory — what
//! the pipeline records for `/metrics`), in the same rounds, to show the metering cost.
//!
//! The normalizer and the enricher act on the tag plane only, so per batch the host calls
//! the unit converter and the validator — on both sides of the comparison.
//!
//! Run: `scripts/build-plugins && cargo bench -p ferrule --bench plugin_chain`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::plugin::{
    BatchColumns, CallMeter, CpuLimitMode, EngineConfig, HostBackends, PluginEngine,
    PluginInstance, PluginLimits, TagInfo,
};
use ferrule::sources::simulator::{describe_tag, sample, SimulatorConfig};
use ferrule_sdk::testing::Harness;
use ferrule_sdk::Batch;

const TAGS: u32 = 30_000;
const SCANS: u64 = 8;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Columns {
    tag_ids: Vec<u32>,
    values: Vec<f64>,
    quality: Vec<u32>,
    timestamps: Vec<u64>,
}

/// `SCANS` scans of every tag, cut into batches of `size`.
fn batches(sim: &SimulatorConfig, size: usize) -> Vec<Columns> {
    let mut all = Vec::new();
    let mut cur = Columns {
        tag_ids: vec![],
        values: vec![],
        quality: vec![],
        timestamps: vec![],
    };
    for scan in 0..SCANS {
        for i in 0..TAGS {
            let (v, q) = sample(sim, i, scan);
            cur.tag_ids.push(i);
            cur.values.push(v);
            cur.quality.push(q.0);
            cur.timestamps
                .push(1_700_000_000_000_000_000 + scan * 1_000_000_000);
            if cur.tag_ids.len() == size {
                all.push(std::mem::replace(
                    &mut cur,
                    Columns {
                        tag_ids: vec![],
                        values: vec![],
                        quality: vec![],
                        timestamps: vec![],
                    },
                ));
            }
        }
    }
    if !cur.tag_ids.is_empty() {
        all.push(cur);
    }
    all
}

fn sdk_tag(t: &TagInfo) -> ferrule_sdk::TagInfo {
    ferrule_sdk::TagInfo::new(t.id, t.vendor_path.clone())
        .path(t.path.clone())
        .unit(t.unit.clone())
}

fn main() {
    let config =
        HostConfig::load(&repo().join("examples/plant.toml")).expect("examples/plant.toml");
    let stage_cfg: Vec<(PathBuf, String)> = config
        .stages
        .iter()
        .map(|s| (s.plugin.clone(), s.config_json()))
        .collect();
    let sim = SimulatorConfig {
        tags: TAGS,
        ..SimulatorConfig::default()
    };
    let inputs0: Vec<TagInfo> = (0..TAGS)
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

    // Start-up figures.
    let cache = tempfile::tempdir().unwrap();
    let cold = PluginEngine::new(EngineConfig {
        cache_dir: Some(cache.path().into()),
        ..EngineConfig::default()
    })
    .unwrap();
    let warm = PluginEngine::new(EngineConfig {
        cache_dir: Some(cache.path().into()),
        ..EngineConfig::default()
    })
    .unwrap();
    println!("start-up (per component):");
    for (path, cfg) in &stage_cfg {
        let c = cold.load_file(path, None).unwrap();
        let w = warm.load_file(path, None).unwrap();
        let t0 = Instant::now();
        let inst = w
            .instantiate(
                "bench",
                cfg,
                &PluginLimits::default(),
                HostBackends::default(),
            )
            .unwrap();
        let total = t0.elapsed();
        println!(
            "  {:<16} compile {:>8.1?}  load from cache {:>8.1?}  instantiate {:>8.1?}  init {:>8.1?}  (total {:?})",
            c.name(),
            c.timings().compile_or_load,
            w.timings().compile_or_load,
            inst.timings().instantiate,
            inst.timings().init,
            total
        );
    }

    for mode in [CpuLimitMode::Epoch, CpuLimitMode::Fuel] {
        let engine = PluginEngine::new(EngineConfig {
            cpu_limit: mode,
            ..EngineConfig::default()
        })
        .unwrap();
        let chain = || -> Vec<PluginInstance> {
            stage_cfg
                .iter()
                .map(|(p, c)| {
                    engine
                        .load_file(p, None)
                        .unwrap()
                        .instantiate(
                            "bench",
                            c,
                            &PluginLimits::default(),
                            HostBackends::default(),
                        )
                        .unwrap()
                })
                .collect()
        };
        let mut wasm = chain();
        let mut metered = chain();
        let meter = std::sync::Arc::new(CallMeter::default());
        for inst in metered.iter_mut() {
            inst.set_meter(meter.clone());
        }
        // Tag plane through the chain; remember each stage's inputs for the native side.
        let mut inputs: Vec<Option<TagInfo>> = inputs0.iter().cloned().map(Some).collect();
        let mut stage_inputs = Vec::new();
        let t0 = Instant::now();
        for (inst, twin) in wasm.iter_mut().zip(metered.iter_mut()) {
            stage_inputs.push(inputs.clone());
            let present: Vec<TagInfo> = inputs.iter().flatten().cloned().collect();
            let mut decisions = Vec::new();
            for chunk in present.chunks(256) {
                decisions.extend(inst.on_tags(chunk).unwrap());
                twin.on_tags(chunk).unwrap();
            }
            let mut it = decisions.iter();
            for slot in inputs.iter_mut() {
                if let Some(t) = slot.as_ref() {
                    *slot = ferrule::pipeline::next_input(Some(t), it.next());
                }
            }
        }
        let accepted = inputs.iter().flatten().count();
        if mode == CpuLimitMode::Epoch {
            println!(
                "tag plane, 4 stages x {TAGS} tags: {:?} ({accepted} tags accepted by all)",
                t0.elapsed()
            );
        }

        // Native: the same plugin crates, called directly.
        let json = |i: usize| serde_json::from_str::<serde_json::Value>(&stage_cfg[i].1).unwrap();
        let mut units = Harness::<unit_converter::UnitConverter>::new(json(1)).unwrap();
        let mut validator = Harness::<validator::Validator>::new(json(2)).unwrap();
        for t in stage_inputs[1].iter().flatten() {
            units.on_tag(&sdk_tag(t));
        }
        for t in stage_inputs[2].iter().flatten() {
            validator.on_tag(&sdk_tag(t));
        }

        println!("sample plane, units + validate ({mode:?} CPU limit):");
        let epoch = mode == CpuLimitMode::Epoch;
        if epoch {
            println!(
                "  {:>6}  {:>14}  {:>14}  {:>8}  {:>14}  {:>12}",
                "batch", "wasm M/s", "native M/s", "ratio", "metered M/s", "meter cost"
            );
        } else {
            println!(
                "  {:>6}  {:>14}  {:>14}  {:>8}",
                "batch", "wasm M/s", "native M/s", "ratio"
            );
        }
        // `-- --profile-wasm=SIZE` runs only the Wasm side at one batch size for ~10 s, for a
        // profiler (e.g. `perf record`) to attach to.
        let profile_size: Option<usize> = std::env::args().find_map(|a| {
            a.strip_prefix("--profile-wasm=")
                .and_then(|v| v.parse().ok())
        });
        let sizes: Vec<usize> = match profile_size {
            Some(size) => vec![size],
            None => vec![1, 64, 1024, 8192],
        };
        for size in sizes {
            let data = batches(&sim, size);
            let total: usize = data.iter().map(|b| b.tag_ids.len()).sum();
            let limit = if size == 1 { 200_000 } else { usize::MAX };
            let measure = |f: &mut dyn FnMut(&Columns)| -> f64 {
                let mut n = 0usize;
                let t = Instant::now();
                'outer: while t.elapsed() < Duration::from_millis(300) {
                    for b in &data {
                        f(b);
                        n += b.tag_ids.len();
                        if n >= limit.max(total) {
                            break 'outer;
                        }
                    }
                }
                n as f64 / t.elapsed().as_secs_f64() / 1e6
            };
            let mut run_wasm = |b: &Columns| run_chain(&mut wasm, b);
            let mut run_metered = |b: &Columns| run_chain(&mut metered, b);
            let mut run_native = |b: &Columns| {
                let out = units
                    .on_batch(Batch::new(
                        b.tag_ids.clone(),
                        b.values.clone(),
                        b.quality.clone(),
                        b.timestamps.clone(),
                        vec![],
                    ))
                    .unwrap();
                let values = out.values.unwrap_or_else(|| b.values.clone());
                let out = validator
                    .on_batch(Batch::new(
                        b.tag_ids.clone(),
                        values,
                        b.quality.clone(),
                        b.timestamps.clone(),
                        vec![],
                    ))
                    .unwrap();
                std::hint::black_box(&out);
            };
            if profile_size.is_some() {
                let rate = (0..30).map(|_| measure(&mut run_wasm)).fold(0.0, f64::max);
                println!("  {size:>6}  {rate:>14.2}  (profiling run, Wasm only)");
                return;
            }
            // Best of 10 interleaved rounds of ~0.3 s each: the machine is shared and noisy.
            let (mut wasm_rate, mut native_rate, mut metered_rate) = (0.0f64, 0.0f64, 0.0f64);
            for _ in 0..10 {
                wasm_rate = wasm_rate.max(measure(&mut run_wasm));
                native_rate = native_rate.max(measure(&mut run_native));
                if epoch {
                    metered_rate = metered_rate.max(measure(&mut run_metered));
                }
            }
            if epoch {
                println!(
                    "  {size:>6}  {wasm_rate:>14.2}  {native_rate:>14.2}  {:>8.2}  {metered_rate:>14.2}  {:>11.1}%",
                    native_rate / wasm_rate,
                    (wasm_rate / metered_rate - 1.0) * 100.0
                );
            } else {
                println!(
                    "  {size:>6}  {wasm_rate:>14.2}  {native_rate:>14.2}  {:>8.2}",
                    native_rate / wasm_rate
                );
            }
        }
    }
}

/// The sample plane of the chain (units, then validate) over one batch.
fn run_chain(chain: &mut [PluginInstance], b: &Columns) {
    let mut values = b.values.clone();
    let mut quality = b.quality.clone();
    for k in [1usize, 2] {
        let out = chain[k]
            .on_batch(BatchColumns {
                tag_ids: &b.tag_ids,
                values: &values,
                quality: &quality,
                timestamps: &b.timestamps,
                extras: &[],
            })
            .unwrap();
        if let Some(v) = out.values {
            values = v;
        }
        if let Some(q) = out.quality {
            quality = q;
        }
    }
    std::hint::black_box(&values);
}
