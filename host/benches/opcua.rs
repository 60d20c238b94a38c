//! The OPC UA source at plant scale: 30 000 Double variables of Ferrule's in-process OPC UA
//! simulator changing once a second, one subscription (publishing interval 100 ms); then the
//! same with a second server whose 3 000 variables change every 100 ms (10 % at 10 Hz). Then
//! polled reads, as a minimal edge worker does them: 1 000 variables changing every 100 ms,
//! every one polled every 10 ms (no subscription at all), and in the same run the mixed case
//! of one subscribed and 999 polled. The servers run in a child process so the figures are the
//! client's alone. Reports samples/s sustained, bad samples, CPU % of the source process (and
//! of the servers), RSS, and the latency from the server's source timestamp to the moment the
//! pipeline's queue hands the batch over.
//!
//! Run: `cargo bench -p ferrule --bench opcua` (all cases), or with a word of the case names
//! to run only those: `cargo bench -p ferrule --bench opcua -- polled`.

mod common;

use common::{cpu_seconds, rss_mib};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrule::model::TagRegistry;
use ferrule::sources::opcua::{serve_plant, simulator_nodes, OpcUaConfig, OpcUaSimulatorConfig};
use ferrule::sources::{SourceConfig, SourceContext};
use tokio::sync::{mpsc, watch};

const WARMUP: Duration = Duration::from_secs(5);
/// A source with no good sample by then is measured anyway (its bad samples are the figure).
const FLOW_DEADLINE: Duration = Duration::from_secs(60);
const MEASURE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq)]
enum Case {
    /// 30 000 subscribed, all changing at 1 Hz.
    Flat,
    /// 27 000 at 1 Hz + 3 000 at 10 Hz, subscribed.
    Burst,
    /// 1 000 changing at 10 Hz, the first `.0` subscribed, the others polled every 10 ms.
    Polled(usize),
}

/// Every node but the first `subscribed` is polled at this interval.
const POLL_MS: u64 = 10;

impl Case {
    fn arg(self) -> String {
        match self {
            Case::Flat => "flat".into(),
            Case::Burst => "burst".into(),
            Case::Polled(n) => format!("polled-{n}"),
        }
    }

    fn from_arg(arg: &str) -> Case {
        match arg {
            "flat" => Case::Flat,
            "burst" => Case::Burst,
            other => Case::Polled(
                other
                    .strip_prefix("polled-")
                    .and_then(|n| n.parse().ok())
                    .expect("a case"),
            ),
        }
    }

    /// (first tag, tags, update interval ms) of each server.
    fn servers(self) -> Vec<(u32, u32, u64)> {
        match self {
            Case::Flat => vec![(0, 30_000, 1000)],
            Case::Burst => vec![(0, 27_000, 1000), (27_000, 3_000, 100)],
            Case::Polled(_) => vec![(0, 1_000, 100)],
        }
    }
}

fn sim(port: u16, (first_tag, tags, interval_ms): (u32, u32, u64)) -> OpcUaSimulatorConfig {
    OpcUaSimulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        plant_tags: 30_000,
        first_tag,
        tags,
        interval_ms,
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The child: serves until killed. Args: case, pki dir, ports.
fn serve(case: Case, pki: &str, ports: &[u16]) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_stop, shutdown) = watch::channel(false);
        let mut tasks = Vec::new();
        for (k, s) in case.servers().into_iter().enumerate() {
            let (_, task) = serve_plant(
                &sim(ports[k], s),
                "bench",
                std::path::PathBuf::from(pki).join(format!("server{k}")),
                shutdown.clone(),
            )
            .await
            .expect("serve");
            tasks.push(task);
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

struct Servers(Child);
impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Figures {
    samples: u64,
    bad: u64,
    seconds: f64,
    cpu: f64,
    server_cpu: f64,
    latencies_us: Vec<u64>,
}

fn run(case: Case, pki: &std::path::Path) -> Figures {
    let ports: Vec<u16> = case.servers().iter().map(|_| free_port()).collect();
    let child = Command::new(std::env::current_exe().unwrap())
        .arg("--serve")
        .arg(case.arg())
        .arg(pki)
        .args(ports.iter().map(|p| p.to_string()))
        .spawn()
        .expect("start the OPC UA simulator servers");
    let servers_child = Servers(child);
    for p in &ports {
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
            assert!(Instant::now() < deadline, "server on {p} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let server_pid = servers_child.0.id().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (out, mut rx) = mpsc::channel(64);
        let (stop, shutdown) = watch::channel(false);
        let registry = Arc::new(TagRegistry::default());
        let produced = Arc::new(AtomicU64::new(0));
        let mut sources = Vec::new();
        for (k, s) in case.servers().into_iter().enumerate() {
            let c = sim(ports[k], s);
            let mut nodes = simulator_nodes(&c, "bench");
            if let Case::Polled(subscribed) = case {
                for n in nodes.iter_mut().skip(subscribed) {
                    n.poll_interval_ms = Some(POLL_MS);
                }
            }
            let config = SourceConfig::Opcua(OpcUaConfig {
                endpoint: format!("opc.tcp://127.0.0.1:{}/", ports[k]),
                security_policy: Default::default(),
                security_mode: Default::default(),
                username: None,
                password: None,
                pki_dir: pki.join(format!("client{k}")),
                trust_server_certs: false,
                publishing_interval_ms: 100,
                timestamps: Default::default(),
                keep_alive_ms: 5000,
                reconnect_min_ms: 500,
                reconnect_max_ms: 5000,
                nodes,
                browse: None,
                simulator: None,
            });
            config.validate().expect("valid config");
            let ctx = SourceContext {
                name: "bench".into(),
                registry: registry.clone(),
                out: out.clone(),
                shutdown: shutdown.clone(),
                produced: produced.clone(),
                // Protocol sources do not dead-letter; nothing is sent here.
                dead_letters: tokio::sync::mpsc::channel(1).0,
                write_ports: Default::default(),
                upstream: Default::default(),
            };
            sources.push(tokio::spawn(config.run(ctx)));
        }
        drop(out);
        let mut f = Figures {
            samples: 0,
            bad: 0,
            seconds: 0.0,
            cpu: 0.0,
            server_cpu: 0.0,
            latencies_us: Vec::with_capacity(2_000_000),
        };
        // Warm-up: until data flows (or FLOW_DEADLINE), then WARMUP more.
        let started = Instant::now();
        let mut flowing: Option<Instant> = None;
        let mut t0 = Instant::now();
        let mut measuring = false;
        while let Some(batch) = rx.recv().await {
            let now = now_ns();
            if flowing.is_none() && batch.quality.contains(&0) {
                flowing = Some(Instant::now());
                println!(
                    "    (data flowing {:.1} s after start)",
                    started.elapsed().as_secs_f64()
                );
            } else if flowing.is_none() && started.elapsed() >= FLOW_DEADLINE {
                flowing = Some(Instant::now());
                println!("    (no good sample within {FLOW_DEADLINE:?}; measuring anyway)");
            }
            if !measuring && flowing.is_some_and(|t| t.elapsed() >= WARMUP) {
                measuring = true;
                t0 = Instant::now();
                f.cpu = cpu_seconds("self");
                f.server_cpu = cpu_seconds(&server_pid);
            }
            if measuring {
                f.samples += batch.len() as u64;
                f.bad += batch.quality.iter().filter(|q| **q >> 30 >= 2).count() as u64;
                f.latencies_us.extend(
                    batch
                        .timestamps
                        .iter()
                        .map(|ts| now.saturating_sub(*ts) / 1000),
                );
                if t0.elapsed() >= MEASURE {
                    break;
                }
            }
        }
        f.seconds = t0.elapsed().as_secs_f64();
        f.cpu = cpu_seconds("self") - f.cpu;
        f.server_cpu = cpu_seconds(&server_pid) - f.server_cpu;
        let _ = stop.send(true);
        drop(rx);
        for s in sources {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
        f
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let ports: Vec<u16> = args[i + 3..]
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        serve(Case::from_arg(&args[i + 1]), &args[i + 2], &ports);
        return;
    }
    // `cargo bench` passes `--bench`; any other word picks the cases whose label contains it.
    let only: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let pki = std::env::temp_dir().join(format!("ferrule-opcua-bench-{}", std::process::id()));
    println!(
        "OPC UA source, Double variables of in-process simulator servers (child process), publishing interval 100 ms, {MEASURE:?} after warm-up:"
    );
    for (label, case) in [
        ("30000 subscribed, all change at 1 Hz", Case::Flat),
        (
            "30000 subscribed, 90 % at 1 Hz + 10 % at 10 Hz",
            Case::Burst,
        ),
        (
            "1000 changing at 10 Hz, all polled every 10 ms (no subscription)",
            Case::Polled(0),
        ),
        (
            "1000 changing at 10 Hz, 1 subscribed + 999 polled every 10 ms",
            Case::Polled(1),
        ),
    ] {
        if !only.is_empty() && !only.iter().any(|w| label.contains(w.as_str())) {
            continue;
        }
        println!("  {label}:");
        let mut f = run(case, &pki);
        f.latencies_us.sort_unstable();
        let (rss, hwm) = rss_mib();
        println!(
            "    {:.0} samples/s sustained, {:.0} good/s ({} samples, {} bad), source process CPU {:.1} % of one core, simulator servers {:.1} %",
            f.samples as f64 / f.seconds,
            (f.samples - f.bad) as f64 / f.seconds,
            f.samples,
            f.bad,
            100.0 * f.cpu / f.seconds,
            100.0 * f.server_cpu / f.seconds,
        );
        println!(
            "    source-timestamp-to-pipeline latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; RSS {rss:.0} MiB (peak {hwm:.0} MiB)",
            percentile(&f.latencies_us, 0.5) as f64 / 1000.0,
            percentile(&f.latencies_us, 0.99) as f64 / 1000.0,
            f.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
    }
    let _ = std::fs::remove_dir_all(&pki);
}
