//! The S7 source against python-snap7's server (a child process): 2 000 items polled at 1 Hz
//! and at 10 Hz, in two layouts: 2 000 REALs back to back in one DB (the reads are a few
//! large ranges cut to the PDU), and 2 000 REALs scattered over 100 DBs with gaps wider than
//! `max_gap` (2 000 ranges, packed 20 items per request). A loopback proxy between the source
//! and the server counts the requests. Reports samples/s, good samples, requests per poll,
//! CPU % of the source process and of the server.
//!
//! Needs python-snap7 in `.venv-peers` (scripts/peers), or `FERRULE_PEERS_PYTHON`.
//! Run: `cargo bench -p ferrule --bench s7` (or with a word of the case labels).

mod common;

use common::{cpu_seconds, rss_mib};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrule::model::TagRegistry;
use ferrule::sources::s7::S7Config;
use ferrule::sources::{SourceConfig, SourceContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const WARMUP: Duration = Duration::from_secs(3);
const MEASURE: Duration = Duration::from_secs(10);
const ITEMS: usize = 2000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn python() -> PathBuf {
    std::env::var_os("FERRULE_PEERS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-peers/bin/python")
        })
}

/// Forwards `listen` → `server`, counting the TPKT frames the client sends.
async fn counting_proxy(listener: TcpListener, server: u16, frames: Arc<AtomicU64>) {
    while let Ok((mut client, _)) = listener.accept().await {
        let Ok(upstream) = TcpStream::connect(("127.0.0.1", server)).await else {
            continue;
        };
        // Frames are forwarded whole and at once (Nagle would hold a split write back).
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let frames = frames.clone();
        tokio::spawn(async move {
            let (mut cr, mut cw) = client.split();
            let (mut ur, mut uw) = { upstream }.into_split();
            let up = async {
                let mut h = [0u8; 4];
                while cr.read_exact(&mut h).await.is_ok() {
                    let n = u16::from_be_bytes([h[2], h[3]]) as usize;
                    let mut body = vec![0u8; n.saturating_sub(4)];
                    if cr.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    frames.fetch_add(1, Ordering::Relaxed);
                    let frame: Vec<u8> = h.iter().chain(&body).copied().collect();
                    if uw.write_all(&frame).await.is_err() {
                        break;
                    }
                }
            };
            let down = tokio::io::copy(&mut ur, &mut cw);
            tokio::select! { _ = up => {}, _ = down => {} }
        });
    }
}

struct Figures {
    samples: u64,
    good: u64,
    polls: u64,
    requests: u64,
    seconds: f64,
    cpu: f64,
    server_cpu: f64,
}

fn run(scattered: bool, interval_ms: u64) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let (areas, items): (Vec<String>, Vec<String>) = if scattered {
        let areas = (1..=100)
            .map(|db| format!(r#"{{"area": "DB", "index": {db}, "size": 640}}"#))
            .collect();
        let items = (0..ITEMS)
            .map(|i| {
                format!(
                    "[[items]]\ntag = \"t{i}\"\naddress = \"DB{}.DBD{}\"\ntype = \"real\"\n",
                    i / 20 + 1,
                    (i % 20) * 32
                )
            })
            .collect();
        (areas, items)
    } else {
        let items = (0..ITEMS)
            .map(|i| {
                format!(
                    "[[items]]\ntag = \"t{i}\"\naddress = \"DB1.DBD{}\"\ntype = \"real\"\n",
                    i * 4
                )
            })
            .collect();
        (
            vec![format!(
                r#"{{"area": "DB", "index": 1, "size": {}}}"#,
                ITEMS * 4
            )],
            items,
        )
    };
    let spec = format!(r#"{{"areas": [{}]}}"#, areas.join(","));
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec).unwrap();
    let server_port = free_port();
    let mut server = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/s7_server.py"))
        .arg(server_port.to_string())
        .arg(&spec_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python with python-snap7 (scripts/peers, or FERRULE_PEERS_PYTHON)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", server_port)).is_err() {
        assert!(Instant::now() < deadline, "the S7 server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let server_pid = server.id().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let f = rt.block_on(async {
        let frames = Arc::new(AtomicU64::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_port = listener.local_addr().unwrap().port();
        let proxy = tokio::spawn(counting_proxy(listener, server_port, frames.clone()));
        let text = format!(
            "host = \"127.0.0.1\"\nport = {proxy_port}\ninterval_ms = {interval_ms}\npdu_size = 480\n{}",
            items.join("")
        );
        let config: S7Config = toml::from_str(&text).unwrap();
        config.validate().expect("valid config");
        let (out, mut rx) = mpsc::channel(64);
        let (stop, shutdown) = watch::channel(false);
        let ctx = SourceContext {
            name: "bench".into(),
            registry: Arc::new(TagRegistry::default()),
            out,
            shutdown,
            produced: Arc::new(AtomicU64::new(0)),
            dead_letters: mpsc::channel(1).0,
            write_ports: Default::default(),
            upstream: Default::default(),
        };
        let source = tokio::spawn(SourceConfig::S7(Box::new(config)).run(ctx));
        let mut f = Figures {
            samples: 0,
            good: 0,
            polls: 0,
            requests: 0,
            seconds: 0.0,
            cpu: 0.0,
            server_cpu: 0.0,
        };
        let started = Instant::now();
        let mut t0 = Instant::now();
        let mut frames0 = 0;
        let mut measuring = false;
        let mut flowing: Option<Instant> = None;
        while let Some(batch) = rx.recv().await {
            if flowing.is_none() && (batch.quality.contains(&0) || started.elapsed() > Duration::from_secs(60)) {
                flowing = Some(Instant::now());
            }
            if !measuring && flowing.is_some_and(|t| t.elapsed() >= WARMUP) {
                measuring = true;
                t0 = Instant::now();
                frames0 = frames.load(Ordering::Relaxed);
                f.cpu = cpu_seconds("self");
                f.server_cpu = cpu_seconds(&server_pid);
                continue;
            }
            if measuring {
                f.polls += 1;
                f.samples += batch.len() as u64;
                f.good += batch.quality.iter().filter(|q| **q == 0).count() as u64;
                if t0.elapsed() >= MEASURE {
                    break;
                }
            }
        }
        f.seconds = t0.elapsed().as_secs_f64();
        f.requests = frames.load(Ordering::Relaxed) - frames0;
        f.cpu = cpu_seconds("self") - f.cpu;
        f.server_cpu = cpu_seconds(&server_pid) - f.server_cpu;
        let _ = stop.send(true);
        drop(rx);
        let _ = tokio::time::timeout(Duration::from_secs(5), source).await;
        proxy.abort();
        f
    });
    let _ = server.kill();
    let _ = server.wait();
    f
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    println!(
        "S7 source, {ITEMS} REAL items, python-snap7 server (child process, PDU 480), {MEASURE:?} after {WARMUP:?} warm-up:"
    );
    for (label, scattered, interval_ms) in [
        ("contiguous in one DB at 1 Hz", false, 1000),
        ("contiguous in one DB at 10 Hz", false, 100),
        ("scattered over 100 DBs at 1 Hz", true, 1000),
        ("scattered over 100 DBs at 10 Hz", true, 100),
    ] {
        if !only.is_empty() && !only.iter().any(|w| label.contains(w.as_str())) {
            continue;
        }
        let f = run(scattered, interval_ms);
        let (rss, _) = rss_mib();
        println!(
            "  {label}: {:.0} samples/s ({:.0} good/s), {:.1} requests per poll ({} polls), source CPU {:.1} % of one core, server CPU {:.1} %, RSS {rss:.0} MiB",
            f.samples as f64 / f.seconds,
            f.good as f64 / f.seconds,
            f.requests as f64 / f.polls.max(1) as f64,
            f.polls,
            100.0 * f.cpu / f.seconds,
            100.0 * f.server_cpu / f.seconds,
        );
    }
}
