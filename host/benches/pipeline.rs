//! The whole pipeline: simulated plant of 30 k tags → the four reference plugins → file sink
//! (JSON lines) + dead-letter. Reports samples/s (wall), samples per CPU-second of the process
//! (the one-core figure), peak RSS, the validator's call latency; the same with a shadow run
//! beside the validator (the ratio is the cost of a shadow run); then the hot-swap stall (time
//! the chain waits at an install) over 200 swaps of the validator under load, p50/p99/max;
//! last, the file sink's `fsync = "batch"` (the default) against `fsync = "interval"`, same
//! run, alternated (batch, interval, batch, interval), and the ratio.
//!
//! Run: `scripts/build-plugins && cargo bench -p ferrule --bench pipeline` (`-- fsync`: only
//! the fsync comparison)

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::runtime;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// (user + system CPU seconds, peak RSS in MiB) of this process.
fn cpu_and_peak_rss() -> (f64, f64) {
    (common::cpu_seconds("self"), common::rss_mib().1)
}

fn config(dir: &Path, scans: u64, interval_ms: u64) -> HostConfig {
    config_fsync(dir, scans, interval_ms, "batch")
}

/// `fsync` goes on the samples sink and on the dead-letter file alike.
fn config_fsync(dir: &Path, scans: u64, interval_ms: u64, fsync: &str) -> HostConfig {
    let plant = std::fs::read_to_string(repo().join("examples/plant.toml")).unwrap();
    let stages = &plant[plant.find("[[stages]]").unwrap()..plant.find("[sinks.samples]").unwrap()];
    let stages = stages.replace(
        "\"../dist/plugins/",
        &format!("\"{}/dist/plugins/", repo().display()),
    );
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
[admin]
enabled = false
[reference_data.assets]
path = "{assets}"
[sources.plant]
type = "simulator"
tags = 30000
scans = {scans}
interval_ms = {interval_ms}
batch_size = 1024
{stages}
[sinks.samples]
type = "file"
path = "samples.jsonl"
include_metadata = true
fsync = "{fsync}"
[dead_letter]
type = "file"
path = "dead-letter.jsonl"
fsync = "{fsync}"
"#,
        assets = repo().join("examples/assets.csv").display()
    );
    HostConfig::from_text(&text, dir).unwrap_or_else(|e| panic!("{e:?}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Steady-state figures of one throughput run.
struct Throughput {
    first_scan: Duration,
    wall: f64,
    rate: f64,
    cpu: f64,
    per_cpu: f64,
    rss: f64,
    bytes_per_sample: f64,
    nothing_lost: bool,
    /// on-batch latency of `validate` (p50, p99 bucket bounds, s) and the time in its calls.
    validate_calls: (f64, f64, f64),
    compared: u64,
}

impl Throughput {
    fn print(&self, what: &str) {
        println!("{what}, 30 000 tags, simulator as fast as it is taken, file sink (JSON lines with metadata):");
        println!(
            "  start-up to the first full scan delivered: {:.2?}",
            self.first_scan
        );
        println!(
            "  steady state over {:.1} s: {:.2} M samples/s delivered (sink + dead-letter)",
            self.wall,
            self.rate / 1e6
        );
        println!(
            "  CPU, all threads: {:.2} s -> {:.2} M samples per CPU-second",
            self.cpu,
            self.per_cpu / 1e6
        );
        println!(
            "  peak RSS {:.0} MiB; sink file {:.0} bytes/sample; nothing lost: {}",
            self.rss, self.bytes_per_sample, self.nothing_lost
        );
        let (p50, p99, busy) = self.validate_calls;
        println!("  `validate` on-batch (1024 samples): p50 <= {:.0} us, p99 <= {:.0} us; {busy:.2} s inside it in all", p50 * 1e6, p99 * 1e6);
        if self.compared > 0 {
            println!("  shadow compared {} samples", self.compared);
        }
    }
}

async fn throughput(shadow: Option<&str>) -> Throughput {
    throughput_fsync(shadow, "batch").await
}

async fn throughput_fsync(shadow: Option<&str>, fsync: &str) -> Throughput {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_fsync(dir.path(), u64::MAX, 0, fsync);
    let t_start = Instant::now();
    let running = runtime::start(&cfg).await.unwrap();
    let h = running.handle.clone();
    let written = || {
        h.stats().written["samples"].load(std::sync::atomic::Ordering::Relaxed)
            + h.stats()
                .dead_letters
                .load(std::sync::atomic::Ordering::Relaxed)
    };
    while written() < 30_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_scan = t_start.elapsed();
    if let Some(stage) = shadow {
        let copy = dir.path().join("shadow.wasm");
        std::fs::copy(repo().join("dist/plugins/validator.wasm"), &copy).unwrap();
        h.shadow(stage, Some(&copy), None).await.unwrap();
    }
    let (cpu0, _) = cpu_and_peak_rss();
    let (w0, t0) = (written(), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (w1, wall) = (written(), t0.elapsed().as_secs_f64());
    let (cpu1, rss) = cpu_and_peak_rss();
    let compared = shadow.map_or(0, |s| h.shadow_report(s).unwrap().samples_compared);
    h.stop();
    let status = running.wait().await.unwrap();
    let n = (w1 - w0) as f64;
    let bytes = std::fs::metadata(dir.path().join("samples.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0);
    let validate = status.stages.iter().find(|s| s.name == "validate").unwrap();
    let calls = &validate.calls.sample_plane;
    Throughput {
        first_scan,
        wall,
        rate: n / wall,
        cpu: cpu1 - cpu0,
        per_cpu: n / (cpu1 - cpu0),
        rss,
        bytes_per_sample: bytes as f64 / status.written["samples"].max(1) as f64,
        nothing_lost: status.produced["plant"] == status.written["samples"] + status.dead_letters,
        validate_calls: (
            calls.quantile_bound(0.5).unwrap_or(0.0),
            calls.quantile_bound(0.99).unwrap_or(0.0),
            calls.sum_s,
        ),
        compared,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // `-- fsync`: only the fsync comparison at the end.
    let only_fsync = std::env::args().skip(1).any(|a| a == "fsync");
    rt.block_on(async {
        if only_fsync {
            fsync_comparison().await;
            return;
        }
        // Throughput: as fast as the pipeline takes it, then the same with a shadow run of the
        // validator (the most expensive sample-plane stage) beside the live one, same run.
        let plain = throughput(None).await;
        plain.print("whole pipeline");
        let shadowed = throughput(Some("validate")).await;
        shadowed.print("same, with a shadow run of `validate` (same component) beside the live one");
        println!(
            "  shadow/plain: throughput {:.2}x, samples per CPU-second {:.2}x",
            shadowed.rate / plain.rate,
            shadowed.per_cpu / plain.per_cpu
        );

        // Hot-swap stall under load: 30 k tags at 10 Hz (300 k samples/s).
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 100_000, 100);
        let copy = dir.path().join("validator-copy.wasm");
        std::fs::copy(repo().join("dist/plugins/validator.wasm"), &copy).unwrap();
        let original = repo().join("dist/plugins/validator.wasm");
        let running = runtime::start(&cfg).await.unwrap();
        let h = running.handle.clone();
        // Swap once the tag plane has seen every tag (a swap during tag discovery finishes
        // the new version's tag plane for the late tags on the chain thread).
        while h.stats().written["samples"].load(std::sync::atomic::Ordering::Relaxed) < 30_000 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let swaps = 200;
        let t0 = Instant::now();
        let mut prepare = Vec::new();
        for i in 0..swaps {
            let file = if i % 2 == 0 { &copy } else { &original };
            let s = Instant::now();
            h.swap("validate", file, None).await.unwrap();
            prepare.push(s.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = t0.elapsed();
        h.stop();
        let status = running.wait().await.unwrap();
        let mut stalls = h.stages()[2].swap_stalls();
        let mut worst: Vec<(usize, Duration)> = stalls.iter().copied().enumerate().collect();
        worst.sort_by_key(|w| std::cmp::Reverse(w.1));
        worst.truncate(3);
        stalls.sort();
        prepare.sort();
        println!("hot swap of `validate` under load (30 000 tags at 10 Hz), {swaps} swaps in {elapsed:.1?}:");
        println!(
            "  stall (chain waits at the install)  p50 {:?}  p99 {:?}  max {:?}",
            percentile(&stalls, 0.5),
            percentile(&stalls, 0.99),
            stalls.last().unwrap()
        );
        println!("  worst three (swap number, stall): {worst:?}");
        println!(
            "  whole swap call (load, compile or cache, init, tag plane for 30 000 tags, install)  p50 {:?}  p99 {:?}",
            percentile(&prepare, 0.5),
            percentile(&prepare, 0.99)
        );
        println!(
            "  produced {} written {} dead-lettered {} (nothing lost: {})",
            status.produced["plant"],
            status.written["samples"],
            status.dead_letters,
            status.produced["plant"] == status.written["samples"] + status.dead_letters
        );

        fsync_comparison().await;
    });
}

/// The file sink's `fsync = "batch"` (the default: at every flush) against `"interval"` (at
/// most once a second), whole pipeline as in `throughput`, alternated.
async fn fsync_comparison() {
    let mut batch = Vec::new();
    let mut interval = Vec::new();
    for _ in 0..2 {
        batch.push(throughput_fsync(None, "batch").await);
        interval.push(throughput_fsync(None, "interval").await);
    }
    let mean =
        |v: &[Throughput], f: fn(&Throughput) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let rates = |v: &[Throughput]| v.iter().map(|t| t.rate / 1e6).collect::<Vec<_>>();
    let per_cpu = |v: &[Throughput]| v.iter().map(|t| t.per_cpu / 1e6).collect::<Vec<_>>();
    println!("file sink fsync, whole pipeline as above (samples sink and dead-letter file alike), alternated:");
    println!(
        "  fsync = \"batch\":    {:.2} M samples/s (runs {:.2?}), {:.2} M samples per CPU-second (runs {:.2?}); nothing lost: {}",
        mean(&batch, |t| t.rate) / 1e6,
        rates(&batch),
        mean(&batch, |t| t.per_cpu) / 1e6,
        per_cpu(&batch),
        batch.iter().all(|t| t.nothing_lost)
    );
    println!(
        "  fsync = \"interval\": {:.2} M samples/s (runs {:.2?}), {:.2} M samples per CPU-second (runs {:.2?}); nothing lost: {}",
        mean(&interval, |t| t.rate) / 1e6,
        rates(&interval),
        mean(&interval, |t| t.per_cpu) / 1e6,
        per_cpu(&interval),
        interval.iter().all(|t| t.nothing_lost)
    );
    println!(
        "  batch/interval: throughput {:.2}x, samples per CPU-second {:.2}x",
        mean(&batch, |t| t.rate) / mean(&interval, |t| t.rate),
        mean(&batch, |t| t.per_cpu) / mean(&interval, |t| t.per_cpu)
    );
}
