//! The Modbus TCP source at plant scale: 30 000 f32 tags on 10 simulated devices (3 000 tags,
//! 6 000 holding registers each) polled at 1 Hz, then the same with 10 % of the tags in a
//! 10 Hz poll group. The devices are Ferrule's in-process Modbus simulator servers, run in a
//! child process so the figures are the client's alone. Reports samples/s sustained, CPU % of
//! the source process (and of the servers), RSS, and the source-to-pipeline latency (sample
//! timestamp, taken when its read completed, to the moment the pipeline's queue hands the
//! batch over) p50/p99/max.
//!
//! Run: `cargo bench -p ferrule --bench modbus`

mod common;

use common::{cpu_seconds, rss_mib};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferrule::model::TagRegistry;
use ferrule::sources::modbus::{
    serve_plant, simulator_device, ModbusConfig, SimulatorServerConfig,
};
use ferrule::sources::{SourceConfig, SourceContext};
use tokio::sync::{mpsc, watch};

const DEVICES: u32 = 10;
const TAGS_PER_DEVICE: u32 = 3000;
const WARMUP: Duration = Duration::from_secs(3);
const MEASURE: Duration = Duration::from_secs(20);

fn server_config(k: u32, port: u16) -> SimulatorServerConfig {
    SimulatorServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        plant_tags: DEVICES * TAGS_PER_DEVICE,
        first_tag: k * TAGS_PER_DEVICE,
        tags: TAGS_PER_DEVICE,
        interval_ms: 100,
        poll_interval_ms: 1000,
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The child: serves the 10 simulated devices until killed.
fn serve(ports: &[u16]) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_stop, shutdown) = watch::channel(false);
        let mut tasks = Vec::new();
        for (k, port) in ports.iter().enumerate() {
            let (_, task) = serve_plant(&server_config(k as u32, *port), shutdown.clone())
                .await
                .expect("bind");
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

fn source_config(ports: &[u16], burst: bool) -> ModbusConfig {
    let devices = ports
        .iter()
        .enumerate()
        .map(|(k, port)| {
            let mut d = simulator_device(&server_config(k as u32, *port), "bench");
            d.name = format!("device{k}");
            if burst {
                d.poll_groups = BTreeMap::from([("burst".to_string(), 100)]);
                for r in d.registers.iter_mut().take(TAGS_PER_DEVICE as usize / 10) {
                    r.group = Some("burst".into());
                }
            }
            d
        })
        .collect();
    ModbusConfig {
        devices,
        simulator: None,
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

fn run(ports: &[u16], burst: bool, server_pid: u32) -> Figures {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = SourceConfig::Modbus(source_config(ports, burst));
        config.validate().expect("valid config");
        let (out, mut rx) = mpsc::channel(64);
        let (stop, shutdown) = watch::channel(false);
        let ctx = SourceContext {
            name: "bench".into(),
            registry: Arc::new(TagRegistry::default()),
            out,
            shutdown,
            produced: Arc::new(AtomicU64::new(0)),
            // Protocol sources do not dead-letter; nothing is sent here.
            dead_letters: tokio::sync::mpsc::channel(1).0,
            write_ports: Default::default(),
            upstream: Default::default(),
        };
        let source = tokio::spawn(config.run(ctx));
        let started = Instant::now();
        let mut measuring = false;
        let mut f = Figures {
            samples: 0,
            bad: 0,
            seconds: 0.0,
            cpu: 0.0,
            server_cpu: 0.0,
            latencies_us: Vec::with_capacity(2_000_000),
        };
        let mut t0 = Instant::now();
        while let Some(batch) = rx.recv().await {
            let now = now_ns();
            if !measuring && started.elapsed() >= WARMUP {
                measuring = true;
                t0 = Instant::now();
                f.cpu = cpu_seconds("self");
                f.server_cpu = cpu_seconds(&server_pid.to_string());
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
        f.server_cpu = cpu_seconds(&server_pid.to_string()) - f.server_cpu;
        let _ = stop.send(true);
        drop(rx);
        let _ = source.await;
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
        let ports: Vec<u16> = args[i + 1..]
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        serve(&ports);
        return;
    }
    let ports: Vec<u16> = (0..DEVICES)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let child = Command::new(std::env::current_exe().unwrap())
        .arg("--serve")
        .args(ports.iter().map(|p| p.to_string()))
        .spawn()
        .expect("start the simulator servers");
    let servers = Servers(child);
    for p in &ports {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
            assert!(Instant::now() < deadline, "server on {p} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let pid = servers.0.id();
    println!(
        "Modbus TCP source, {} tags on {DEVICES} devices (f32, coalesced reads of 124 registers), {MEASURE:?} after {WARMUP:?} warm-up:",
        DEVICES * TAGS_PER_DEVICE
    );
    for (label, burst) in [
        ("all tags at 1 Hz", false),
        ("90 % at 1 Hz + 10 % at 10 Hz", true),
    ] {
        let mut f = run(&ports, burst, pid);
        f.latencies_us.sort_unstable();
        let (rss, hwm) = rss_mib();
        println!("  {label}:");
        println!(
            "    {:.0} samples/s sustained ({} samples, {} bad), source process CPU {:.1} % of one core, simulator servers {:.1} %",
            f.samples as f64 / f.seconds,
            f.samples,
            f.bad,
            100.0 * f.cpu / f.seconds,
            100.0 * f.server_cpu / f.seconds,
        );
        println!(
            "    source-to-pipeline latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; RSS {rss:.0} MiB (peak {hwm:.0} MiB)",
            percentile(&f.latencies_us, 0.5) as f64 / 1000.0,
            percentile(&f.latencies_us, 0.99) as f64 / 1000.0,
            f.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
    }
}
