//! The running pipeline end to end with the real plugin components: every sample accounted
//! for in the sink or the dead-letter, backpressure, hot swap under load, a refused swap,
//! rollback, each quarantine policy, and instance recycling at the memory high-water mark.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::pipeline::StageState;
use ferrule::runtime;
use ferrule::sources::simulator::{describe_tag, sample, SimulatorConfig};
use ferrule_tests::{account, plugin, reference_stages_toml, repo_root};
use serde_json::Value;

const START_NS: u64 = 1_700_000_000_000_000_000;

struct Plant {
    tags: u32,
    scans: u64,
    batch: usize,
    interval_ms: u64,
}

impl Plant {
    /// Samples the simulator produces over all its scans.
    fn total(&self) -> usize {
        self.tags as usize * self.scans as usize
    }
}

fn config(dir: &Path, plant: &Plant, stages: &str, sink_extra: &str) -> HostConfig {
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
queue_batches = 2

[admin]
enabled = false

[reference_data.assets]
path = "{assets}"

[sources.plant]
type = "simulator"
tags = {tags}
scans = {scans}
interval_ms = {interval}
batch_size = {batch}
start_ns = {START_NS}

{stages}

[sinks.samples]
type = "file"
path = "samples.jsonl"
{sink_extra}

[dead_letter]
type = "file"
path = "dead-letter.jsonl"
"#,
        assets = repo_root().join("examples/assets.csv").display(),
        tags = plant.tags,
        scans = plant.scans,
        interval = plant.interval_ms,
        batch = plant.batch,
    );
    HostConfig::from_text(&text, dir).unwrap_or_else(|e| panic!("{e:?}"))
}

fn stage(name: &str, file: &str, config: &str, extra: &str) -> String {
    format!(
        "[[stages]]\nname = \"{name}\"\nplugin = \"{}\"\nconfig = {config}\n{extra}\n",
        plugin(file).display()
    )
}

fn sim(plant: &Plant) -> SimulatorConfig {
    SimulatorConfig {
        tags: plant.tags,
        ..SimulatorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_chain_accounts_for_every_sample_with_the_right_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 600,
        scans: 5,
        batch: 256,
        interval_ms: 0,
    };
    let cfg = config(dir.path(), &plant, &reference_stages_toml(), "");
    let status = runtime::start(&cfg).await.unwrap().wait().await.unwrap();
    assert_eq!(status.produced["plant"], 3000);
    let (samples, dead) = account(dir.path(), plant.total());

    // What the simulator produced, to check each reason.
    let sim = sim(&plant);
    let calm = SimulatorConfig {
        spike_every: 0,
        ..sim.clone()
    };
    let mut expected_reason: HashMap<String, &str> = HashMap::new();
    for i in 0..plant.tags {
        for s in 0..plant.scans {
            let (v, _) = sample(&sim, i, s);
            let key = format!(
                "{}@{}",
                describe_tag(&sim, "plant", i).vendor_path,
                START_NS + s * 1_000_000
            );
            if v.is_nan() {
                expected_reason.insert(key, "not-a-number");
            } else if v != sample(&calm, i, s).0 {
                expected_reason.insert(key, "above-high-limit");
            }
        }
    }
    assert!(expected_reason.values().any(|r| *r == "not-a-number"));
    assert!(expected_reason.values().any(|r| *r == "above-high-limit"));
    for d in &dead {
        let key = format!(
            "{}@{}",
            d["vendor_path"].as_str().unwrap(),
            d["timestamp_ns"]
        );
        let want = expected_reason
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected dead-letter {d}"));
        assert_eq!(d["reason"], *want, "{d}");
        assert_eq!(d["stage"], "validate", "{d}");
        assert_eq!(d["plugin"], "validator", "{d}");
        assert!(d["plugin_version"].as_str().is_some_and(|v| !v.is_empty()));
    }
    assert_eq!(dead.len(), expected_reason.len());

    let topic = regex_like_topic;
    for s in &samples {
        let path = s["path"].as_str().unwrap();
        assert!(topic(path), "path off the topic spec: {path}");
    }
    let pressure: Vec<&Value> = samples
        .iter()
        .filter(|s| s["path"].as_str().unwrap().ends_with("/pressure"))
        .collect();
    assert!(!pressure.is_empty());
    for p in &pressure {
        assert_eq!(p["unit"], "kPa", "{p}");
        let v = p["value"].as_f64().unwrap();
        assert!(
            (300.0..=900.0).contains(&v),
            "pressure {v} kPa out of the simulated band: {p}"
        );
    }
    let enriched = samples
        .iter()
        .filter(|s| s["meta"]["asset_id"].is_string())
        .count();
    assert!(
        enriched > 0,
        "no sample carries the asset registry's asset_id"
    );
}

/// `plant/<site>/<area>/<line>/<device>/<metric>`, lowercase, no wildcards.
fn regex_like_topic(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() == 6
        && parts[0] == "plant"
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        })
}

/// The deadband template drops what it suppresses: nothing reaches the dead-letter, every
/// sample is either delivered or counted as dropped, and the count is in `/metrics` per stage
/// and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadband_drops_without_dead_lettering_and_the_drops_are_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 200,
        scans: 20,
        batch: 256,
        interval_ms: 0,
    };
    // A deadband wider than any simulated change: only first values, quality changes and
    // NaNs get through.
    let stages = stage("deadband", "my_ferrule_plugin", "{ deadband = 1e12 }", "");
    let cfg = config(dir.path(), &plant, &stages, "");
    let running = runtime::start(&cfg).await.unwrap();
    let (addr, _server) =
        ferrule::admin::serve("127.0.0.1:0".parse().unwrap(), running.handle.clone(), None)
            .await
            .unwrap();
    let status = running.wait().await.unwrap();
    let total = plant.total() as u64;
    assert_eq!(status.produced["plant"], total);

    let samples = ferrule_tests::read_jsonl(&dir.path().join("samples.jsonl"));
    let dead = ferrule_tests::read_jsonl(&dir.path().join("dead-letter.jsonl"));
    assert!(
        dead.is_empty(),
        "a deadband dead-lettered: {:?}",
        &dead[..1]
    );
    let st = status.stages.iter().find(|s| s.name == "deadband").unwrap();
    assert_eq!(st.rejected, 0);
    let dropped = st.dropped["suppressed-by-deadband"];
    assert_eq!(st.dropped.len(), 1, "{:?}", st.dropped);
    assert!(
        dropped > total / 2,
        "only {dropped} of {total} samples dropped"
    );
    assert!(
        samples.len() as u64 >= plant.tags as u64,
        "first values pass"
    );
    assert_eq!(samples.len() as u64 + dropped, total);
    assert_eq!(st.samples_out + dropped, st.samples_in);

    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "ferrule_stage_dropped_samples_total{{stage=\"deadband\",reason=\"suppressed-by-deadband\"}} {dropped}"
    );
    assert!(body.lines().any(|l| l == line), "no `{line}` in\n{body}");
    assert!(
        body.lines()
            .any(|l| l == "ferrule_stage_rejected_total{stage=\"deadband\"} 0"),
        "{body}"
    );
}

/// A plugin built against contract 0.1.0 (the validator as released) in place of today's in
/// the reference chain: every sample accounted for, refusals dead-lettered by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_0_plugin_runs_in_the_chain_beside_0_2_0_ones() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 300,
        scans: 4,
        batch: 256,
        interval_ms: 0,
    };
    let old = repo_root().join("tests/fixtures/v0.1.0/validator-0.1.0.wasm");
    let stages = reference_stages_toml().replace(
        &plugin("validator").display().to_string(),
        &old.display().to_string(),
    );
    assert!(stages.contains("validator-0.1.0.wasm"), "{stages}");
    let cfg = config(dir.path(), &plant, &stages, "");
    let running = runtime::start(&cfg).await.unwrap();
    let validate = running
        .handle
        .stages()
        .iter()
        .find(|s| s.name == "validate")
        .unwrap()
        .current();
    assert_eq!(validate.contract_version(), "0.1.0");
    let status = running.wait().await.unwrap();
    assert_eq!(status.produced["plant"], plant.total() as u64);
    let (samples, dead) = account(dir.path(), plant.total());
    assert!(!samples.is_empty());
    assert!(
        !dead.is_empty(),
        "the simulator's spikes and NaNs are refused"
    );
    assert!(dead.iter().all(|d| d["stage"] == "validate"
        && (d["reason"] == "not-a-number" || d["reason"] == "above-high-limit")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_slows_the_source_and_queues_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 256,
        scans: 1_000_000,
        batch: 64,
        interval_ms: 0,
    };
    let stages = stage("pass", "fixture_hostile", "{}", "");
    let cfg = config(dir.path(), &plant, &stages, "delay_ms = 20");
    let running = runtime::start(&cfg).await.unwrap();
    let h = running.handle.clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let produced = h.stats().produced["plant"].load(Ordering::Relaxed);
    let written = h.stats().written["samples"].load(Ordering::Relaxed);
    // Source queue (2) + the batch in the chain + sink queue (2) + the batch the sink's
    // supervisor holds and its one-slot relay to the runner (2) + the batch in the sink + the
    // batch the source is building.
    let bound = 9 * plant.batch as u64;
    assert!(written > 0, "nothing written");
    assert!(
        produced <= written + bound,
        "source ran ahead of a slow sink: produced {produced}, written {written}"
    );
    // 1.5 s at 20 ms a batch is at most ~75 batches: the source was held back.
    assert!(produced < 100 * plant.batch as u64, "produced {produced}");
    h.stop();
    let status = running.wait().await.unwrap();
    let produced = status.produced["plant"];
    assert_eq!(
        status.written["samples"], produced,
        "stop must drain, not drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swaps_under_load_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 1000,
        // Unbounded, paced (100 k samples/s): the run lasts as long as the swaps do.
        scans: u64::MAX,
        batch: 500,
        interval_ms: 10,
    };
    let cfg = config(dir.path(), &plant, &reference_stages_toml(), "");
    // A second file of the same plugin, as an operator would drop in a new version.
    let copy = dir.path().join("validator-copy.wasm");
    std::fs::copy(plugin("validator"), &copy).unwrap();
    let running = runtime::start(&cfg).await.unwrap();
    let h = running.handle.clone();
    let swaps = 30;
    for n in 0..swaps {
        let file = if n % 2 == 0 {
            copy.clone()
        } else {
            plugin("validator")
        };
        let report = h.swap("validate", &file, None).await.unwrap();
        assert_eq!(report.stage, "validate");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.stop();
    let status = running.wait().await.unwrap();
    let produced = status.produced["plant"];
    assert!(
        produced >= 30 * 1000,
        "too little traffic during the swaps: {produced}"
    );
    let validate = status.stages.iter().find(|s| s.name == "validate").unwrap();
    assert_eq!(validate.swaps, swaps);
    assert!(validate.samples_in > 0, "{:#?}", status.stages);
    let stalls = h.stages()[2].swap_stalls();
    assert_eq!(stalls.len(), swaps as usize);
    account(dir.path(), produced as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_whose_init_fails_leaves_the_old_version_running_and_rollback_works() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 300,
        scans: u64::MAX,
        batch: 100,
        interval_ms: 2,
    };
    let cfg = config(dir.path(), &plant, &reference_stages_toml(), "");
    let running = runtime::start(&cfg).await.unwrap();
    let h = running.handle.clone();
    // The normalizer refuses the unit converter's config: init fails, the old one stays.
    let err = h
        .swap("units", &plugin("tag_normalizer"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused its config"), "{err}");
    let units = h
        .status()
        .stages
        .into_iter()
        .find(|s| s.name == "units")
        .unwrap();
    assert_eq!(units.plugin, "unit-converter");
    assert_eq!(units.state, StageState::Running);
    assert!(units.previous.is_none());

    // A swap with a new config to another plugin, then rollback, then rollback again.
    h.swap(
        "units",
        &plugin("fixture_hostile"),
        Some(r#"{"mode":"ok"}"#.into()),
    )
    .await
    .unwrap();
    let units = h
        .status()
        .stages
        .into_iter()
        .find(|s| s.name == "units")
        .unwrap();
    assert_eq!(units.plugin, "hostile");
    assert_eq!(
        units
            .previous
            .as_deref()
            .map(|p| p.starts_with("unit-converter@")),
        Some(true)
    );
    let r = h.rollback("units").await.unwrap();
    assert!(r.to.starts_with("unit-converter@"), "{r:?}");
    let r = h.rollback("units").await.unwrap();
    assert!(r.to.starts_with("hostile@"), "{r:?}");
    h.rollback("units").await.unwrap();
    let err = h.rollback("nope").await.unwrap_err();
    assert!(err.to_string().contains("no stage named `nope`"), "{err}");
    h.stop();
    let status = running.wait().await.unwrap();
    account(dir.path(), status.produced["plant"] as usize);
}

async fn run_with_trapping_stage(
    policy: &str,
) -> (tempfile::TempDir, Plant, ferrule::runtime::PipelineStatus) {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 100,
        scans: 20,
        batch: 50,
        interval_ms: 0,
    };
    let stages = stage(
        "flaky",
        "fixture_hostile",
        r#"{ mode = "trap" }"#,
        &format!("quarantine = \"{policy}\""),
    );
    let cfg = config(dir.path(), &plant, &stages, "");
    let status = runtime::start(&cfg).await.unwrap().wait().await.unwrap();
    (dir, plant, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_pass_through_delivers_unchanged() {
    let (dir, plant, status) = run_with_trapping_stage("pass-through").await;
    let flaky = &status.stages[0];
    assert_eq!(
        flaky.failures, 3,
        "quarantined after failures_before_quarantine (3) failures"
    );
    assert!(
        matches!(&flaky.state, StageState::Quarantined { policy, reason } if policy == "pass-through" && reason.contains("trapped"))
    );
    let (samples, dead) = account(dir.path(), plant.total());
    assert_eq!(samples.len(), 2000);
    assert!(dead.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_dead_letter_sends_everything_with_the_reason() {
    let (dir, plant, status) = run_with_trapping_stage("dead-letter").await;
    assert!(
        matches!(&status.stages[0].state, StageState::Quarantined { policy, .. } if policy == "dead-letter")
    );
    let (samples, dead) = account(dir.path(), plant.total());
    assert!(samples.is_empty());
    assert!(dead
        .iter()
        .all(|d| d["reason"] == "stage-quarantined"
            && d["detail"].as_str().unwrap().contains("trapped")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_hold_waits_then_a_fixed_version_takes_the_held_batches() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 100,
        scans: 40,
        batch: 50,
        interval_ms: 0,
    };
    let stages = stage("flaky", "fixture_hostile", r#"{ mode = "trap" }"#, "");
    let cfg = config(dir.path(), &plant, &stages, "");
    let running = runtime::start(&cfg).await.unwrap();
    let h = running.handle.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(h.stages()[0].state(), StageState::Quarantined { .. }) {
        assert!(Instant::now() < deadline, "never quarantined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.stats().written["samples"].load(Ordering::Relaxed),
        0,
        "hold must not deliver"
    );
    let produced = h.stats().produced["plant"].load(Ordering::Relaxed);
    assert!(
        produced < 4000,
        "the source must be held back, produced {produced}"
    );
    match h.stages()[0].state() {
        StageState::Quarantined { policy, .. } => assert_eq!(policy, "hold"),
        s => panic!("{s:?}"),
    }
    // The operator ships a fixed config/version: the held batch goes first, nothing lost.
    h.swap(
        "flaky",
        &plugin("fixture_hostile"),
        Some(r#"{"mode":"ok"}"#.into()),
    )
    .await
    .unwrap();
    let status = running.wait().await.unwrap();
    assert_eq!(status.stages[0].state, StageState::Running);
    let (samples, dead) = account(dir.path(), plant.total());
    assert_eq!(samples.len(), 4000);
    assert!(dead.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaking_instance_is_recycled_at_its_high_water_mark() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 100,
        scans: 60,
        batch: 100,
        interval_ms: 5,
    };
    let stages = stage(
        "leaky",
        "fixture_hostile",
        r#"{ mode = "leak", leak_bytes = 1048576 }"#,
        "[stages.limits]\nmemory_mib = 64\nrecycle_at_mib = 8",
    );
    let cfg = config(dir.path(), &plant, &stages, "");
    let status = runtime::start(&cfg).await.unwrap().wait().await.unwrap();
    let leaky = &status.stages[0];
    assert!(leaky.recycles >= 2, "recycles: {}", leaky.recycles);
    assert_eq!(
        leaky.failures, 0,
        "recycled before the memory limit was hit"
    );
    let (samples, _) = account(dir.path(), plant.total());
    assert_eq!(samples.len(), 6000);
}

/// Replaces `path` atomically with `source` (write beside, then rename), as a deploy would.
fn replace_file(source: &Path, path: &Path) {
    let tmp = path.with_extension("tmp");
    std::fs::copy(source, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_plugin_file_is_swapped_in_and_a_pinned_or_unwatched_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 200,
        scans: u64::MAX,
        batch: 100,
        interval_ms: 5,
    };
    let live = dir.path().join("stage.wasm");
    let pinned = dir.path().join("pinned.wasm");
    let unwatched = dir.path().join("unwatched.wasm");
    std::fs::copy(plugin("fixture_hostile"), &live).unwrap();
    std::fs::copy(plugin("fixture_hostile"), &pinned).unwrap();
    std::fs::copy(plugin("fixture_hostile"), &unwatched).unwrap();
    let pin = ferrule::plugin::Digest::of(&std::fs::read(&pinned).unwrap());
    let stages = format!(
        "[[stages]]\nname = \"live\"\nplugin = \"{}\"\nconfig = {{}}\n\n[[stages]]\nname = \"pinned\"\nplugin = \"{}\"\ndigest = \"{pin}\"\nconfig = {{}}\n\n[[stages]]\nname = \"unwatched\"\nplugin = \"{}\"\nwatch = false\nconfig = {{}}\n",
        live.display(),
        pinned.display(),
        unwatched.display()
    );
    let mut cfg = config(dir.path(), &plant, &stages, "");
    cfg.pipeline.watch_plugins = true;
    cfg.pipeline.watch_interval_ms = 100;
    let running = runtime::start(&cfg).await.unwrap();
    let h = running.handle.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The unit converter accepts the empty config, so the new file comes in.
    replace_file(&plugin("unit_converter"), &unwatched);
    replace_file(&plugin("unit_converter"), &live);
    replace_file(&plugin("unit_converter"), &pinned);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = h.status();
        if status.stages[0].plugin == "unit-converter" {
            assert_eq!(
                status.stages[0]
                    .previous
                    .as_deref()
                    .map(|p| p.starts_with("hostile@")),
                Some(true)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "file change never swapped in: {:?}",
            status.stages[0]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give the watcher a few more rounds: the pinned stage must still run the pinned version.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = h.status();
    assert_eq!(status.stages[1].plugin, "hostile");
    assert_eq!(status.stages[1].digest, pin.to_string());
    assert_eq!(status.stages[1].swaps, 0);
    // A stage with `watch = false` keeps its version though its file changed.
    assert_eq!(status.stages[2].plugin, "hostile");
    assert_eq!(status.stages[2].swaps, 0);
    h.stop();
    let status = running.wait().await.unwrap();
    account(dir.path(), status.produced["plant"] as usize);
}

/// Waits until the sink has written `more` samples beyond `from`.
async fn wait_written(h: &runtime::PipelineHandle, from: u64, more: u64) -> u64 {
    let written =
        |h: &runtime::PipelineHandle| h.stats().written["samples"].load(Ordering::Relaxed);
    wait_until(h, from + more, written).await
}

/// Waits until `count` reaches `target`; names the stages' state if it never does.
async fn wait_until(
    h: &runtime::PipelineHandle,
    target: u64,
    count: impl Fn(&runtime::PipelineHandle) -> u64,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = count(h);
        if now >= target {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "reached {now} of {target}; stages: {:#?}",
            h.status()
                .stages
                .iter()
                .map(|s| (&s.name, &s.version, &s.state, s.failures, s.samples_in))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_stage_runs_beside_the_rust_ones_and_swaps_to_a_new_python_version_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let plant = Plant {
        tags: 300,
        // Unbounded, paced (30 k samples/s, 10 ms of source time a scan).
        scans: u64::MAX,
        batch: 300,
        interval_ms: 10,
    };
    // The rate alarm (Python) after the four Rust reference plugins: it sees normalised paths,
    // converted units and the enricher's asset rows; it flags samples changing too fast.
    let alarm = format!(
        r#"
[[stages]]
name = "rate-alarm"
plugin = "{}"
[stages.config]
action = "flag"
rules = [
    {{ match = "plant/*/*/*/*/pressure", max_per_second = 500.0 }},
    {{ match = "plant/*/*/*/*/temperature", max_per_second = 40.0 }},
]
"#,
        plugin("rate_alarm").display()
    );
    let stages = format!("{}\n{alarm}", reference_stages_toml());
    let mut cfg = config(dir.path(), &plant, &stages, "");
    cfg.engine.cache_dir = Some(ferrule_tests::artifact_cache_dir());
    let running = runtime::start(&cfg).await.unwrap();
    let h = running.handle.clone();
    // Each version handles at least 6 000 samples (the stage's own count: the sink lags).
    let seen = |h: &runtime::PipelineHandle| h.status().stages[4].samples_in;
    wait_written(&h, 0, 6_000).await;
    let v2 = h
        .swap("rate-alarm", &plugin("rate_alarm_v2"), None)
        .await
        .unwrap();
    assert_eq!(v2.stage, "rate-alarm");
    assert_eq!(h.status().stages[4].version, "0.2.0");
    wait_until(&h, seen(&h) + 6_000, seen).await;
    h.swap("rate-alarm", &plugin("rate_alarm"), None)
        .await
        .unwrap();
    assert_eq!(h.status().stages[4].version, "0.1.0");
    wait_until(&h, seen(&h) + 6_000, seen).await;
    h.stop();
    let status = running.wait().await.unwrap();
    let alarm = status
        .stages
        .iter()
        .find(|s| s.name == "rate-alarm")
        .unwrap();
    assert_eq!((alarm.plugin.as_str(), alarm.swaps), ("rate-alarm", 2));
    assert_eq!(alarm.failures, 0, "{alarm:?}");
    let (samples, dead) = account(dir.path(), status.produced["plant"] as usize);
    assert!(
        dead.iter().all(|d| d["stage"] == "validate"),
        "only the validator dead-letters here"
    );

    // Every pressure and temperature sample the alarm saw is flagged exactly when it changed
    // faster than its limit since the tag's previous evaluated sample. A version change starts
    // a tag afresh (the new version's tag plane), and the version is in the metadata (0.2.0
    // adds `rate_alarm.version`).
    const FLAGGED: u64 = 0x4000_0000;
    let mut by_tag: HashMap<String, Vec<&Value>> = HashMap::new();
    for s in &samples {
        by_tag
            .entry(s["path"].as_str().unwrap().to_string())
            .or_default()
            .push(s);
    }
    let (mut flagged, mut evaluated, mut versions) = (0, 0, [0usize; 2]);
    for (path, mut list) in by_tag {
        let limit = if path.ends_with("/pressure") {
            500.0
        } else if path.ends_with("/temperature") {
            40.0
        } else {
            assert!(
                list.iter()
                    .all(|s| s["meta"].get("rate_alarm.criticality").is_none()),
                "{path} is not watched"
            );
            continue;
        };
        list.sort_by_key(|s| s["ts_ns"].as_u64().unwrap());
        let mut last: Option<(f64, u64, bool)> = None;
        for s in list {
            let meta = &s["meta"];
            assert_eq!(
                meta["rate_alarm.max_per_second"].as_str(),
                Some(&*format!("{limit:?}")),
                "{s}"
            );
            assert!(meta["rate_alarm.criticality"].is_string(), "{s}");
            let v2 = meta.get("rate_alarm.version").is_some();
            versions[v2 as usize] += 1;
            let status_code = s["status"].as_u64().unwrap();
            let Some(value) = s["value"].as_f64() else {
                continue;
            };
            if status_code != 0 && status_code != FLAGGED {
                continue; // not good when it came: not evaluated
            }
            let ts = s["ts_ns"].as_u64().unwrap();
            let expect = match last {
                Some((lv, lts, lver)) if lver == v2 => {
                    evaluated += 1;
                    (value - lv).abs() * 1e9 / (ts - lts) as f64 > limit
                }
                _ => false,
            };
            assert_eq!(
                status_code == FLAGGED,
                expect,
                "{path}: {s}, previous {last:?}"
            );
            flagged += expect as usize;
            last = Some((value, ts, v2));
        }
    }
    eprintln!(
        "rate alarm: {flagged} of {evaluated} evaluated samples flagged; by version {versions:?}"
    );
    assert!(
        flagged > 100 && flagged < evaluated,
        "{flagged} of {evaluated} evaluated samples flagged"
    );
    assert!(
        versions[0] > 1000 && versions[1] > 1000,
        "samples by version 0.1.0 / 0.2.0: {versions:?}"
    );
}
