//! Store-and-forward figures, each measured in this run:
//! 1. buffer writes: batches of 1024 samples committed durably (fsync), in groups of 8 and
//!    one by one, samples/s;
//! 2. buffer replay: read back in order and removed, samples/s;
//! 3. publish at QoS 1 through the buffer to a real Mosquitto (started on a free port):
//!    30 000 tags, one sample per message, and 100 high-rate tags in the batch form;
//! 4. replay of a filled buffer over MQTT after an "outage" (buffer filled first), unpaced
//!    and paced at a configured rate;
//!
//! and the peak RSS.
//!
//! Run: `cargo bench -p ferrule --bench mqtt` (needs `mosquitto` on PATH or in /usr/sbin).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrule::buffer::{Appended, BufferConfig, DurableBuffer, OverflowPolicy};
use ferrule::model::{DataType, Quality, SampleBatch};
use ferrule::model::{OutputBatch, ResolvedTag, TagTable};
use ferrule::sinks::mqtt::{MqttSinkConfig, MqttSinkParts};
use ferrule::sinks::LinkStats;
use tokio::sync::mpsc;

fn table(tags: u32) -> Arc<TagTable> {
    Arc::new(
        (0..tags)
            .map(|i| {
                Some(Arc::new(ResolvedTag {
                    id: i,
                    source: "plant".into(),
                    vendor_path: format!("Site1.Area1.Line1.Dev{}.M{}", i / 6, i % 6),
                    path: format!("plant/site1/area1/line1/dev{}/m{}", i / 6, i % 6),
                    unit: "kPa".into(),
                    data_type: DataType::Float64,
                    metadata: vec![("asset_id".into(), format!("A-{}", i / 6))],
                }))
            })
            .collect(),
    )
}

/// Batch `k` of 1024 samples cycling over the table's tags.
fn batch(tags: &Arc<TagTable>, k: u64) -> Arc<OutputBatch> {
    let n = tags.len() as u64;
    let mut s = SampleBatch::with_capacity(1024);
    for i in 0..1024u64 {
        let j = k * 1024 + i;
        s.push(
            (j % n) as u32,
            (j as f64) * 0.5,
            Quality::GOOD,
            1_764_000_000_000_000_000 + j,
        );
    }
    Arc::new(OutputBatch::new(s, tags.clone()))
}

fn peak_rss_mib() -> f64 {
    common::rss_mib().1
}

fn buffer_config(dir: &Path, name: &str) -> BufferConfig {
    BufferConfig {
        path: Some(dir.join(format!("{name}.redb"))),
        max_bytes: 8 << 30,
        overflow: OverflowPolicy::RefuseNew,
        ..BufferConfig::default()
    }
}

fn buffer_rates(dir: &Path) {
    let tags = table(30_000);
    for group in [8usize, 1] {
        let c = buffer_config(dir, &format!("w{group}"));
        let b = DurableBuffer::open("bench", c.path.as_ref().unwrap(), &c).unwrap();
        let records = if group == 1 { 300 } else { 2000 };
        let batches: Vec<_> = (0..records).map(|k| batch(&tags, k)).collect();
        let t = Instant::now();
        for g in batches.chunks(group) {
            assert!(matches!(b.append(g).unwrap(), Appended::Committed(_)));
        }
        let w = (records * 1024) as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut next = 1;
        let mut n = 0;
        loop {
            let r = b.read_from(next, 16).unwrap();
            let Some(last) = r.last() else { break };
            n += r.iter().map(|x| x.batch.samples.len()).sum::<usize>();
            next = last.seq + 1;
            b.remove_through(last.seq).unwrap();
        }
        assert_eq!(n as u64, records * 1024);
        let r = n as f64 / t.elapsed().as_secs_f64();
        println!(
            "buffer, durable commit per {group} batch(es) of 1024: write {:.2} M samples/s, replay (read + remove) {:.2} M samples/s",
            w / 1e6,
            r / 1e6
        );
    }
}

fn mosquitto(dir: &Path) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("mosquitto");
    let conf = dir.join("m.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\n"),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

fn sink_config(dir: &Path, name: &str, port: u16, max_rate: u64) -> MqttSinkConfig {
    let mut c: MqttSinkConfig = toml::from_str(&format!(
        "max_inflight = 1024\nmax_rate = {max_rate}\ninclude_metadata = false\n[broker]\nport = {port}\nclient_id = \"bench-{name}\"\n"
    ))
    .unwrap();
    c.buffer = buffer_config(dir, name);
    c
}

/// Feeds `batches` to an MQTT sink and returns (samples/s acknowledged, messages).
async fn publish_through(
    dir: &Path,
    name: &str,
    port: u16,
    batches: Vec<Arc<OutputBatch>>,
    max_rate: u64,
    already_buffered: u64,
) -> (f64, u64) {
    let config = sink_config(dir, name, port, max_rate);
    let buffer =
        DurableBuffer::open(name, config.buffer.path.as_ref().unwrap(), &config.buffer).unwrap();
    let (tx, rx) = mpsc::channel(8);
    let (dl_tx, _dl_rx) = mpsc::channel(8);
    let delivered = Arc::new(AtomicU64::new(0));
    let link = Arc::new(LinkStats::default());
    let total: u64 = batches.iter().map(|b| b.samples.len() as u64).sum::<u64>() + already_buffered;
    let task = tokio::spawn(ferrule::sinks::mqtt::run(MqttSinkParts {
        name: name.into(),
        config,
        buffer,
        queue: rx,
        dead_letters: dl_tx,
        view: Arc::new(ferrule::sinks::SinkView::new(delivered.clone())),
        link: link.clone(),
    }));
    let t = Instant::now();
    for b in batches {
        tx.send(b).await.unwrap();
    }
    while delivered.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    drop(tx);
    task.await.unwrap();
    (rate, link.published.load(Ordering::Relaxed))
}

/// Fills a buffer (as an outage would), then measures its drain over MQTT (samples/s).
async fn replay(dir: &Path, name: &str, port: u16, records: u64, max_rate: u64) -> f64 {
    let tags = table(30_000);
    let config = sink_config(dir, name, port, max_rate);
    {
        let b = DurableBuffer::open(name, config.buffer.path.as_ref().unwrap(), &config.buffer)
            .unwrap();
        let all: Vec<_> = (0..records).map(|k| batch(&tags, k)).collect();
        for g in all.chunks(8) {
            b.append(g).unwrap();
        }
    }
    let (rate, _) = publish_through(dir, name, port, Vec::new(), max_rate, records * 1024).await;
    rate
}

fn main() {
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    buffer_rates(dir.path());
    let (mut broker, port) = mosquitto(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tags = table(30_000);
        let batches: Vec<_> = (0..300).map(|k| batch(&tags, k)).collect();
        let (rate, msgs) = publish_through(dir.path(), "wide", port, batches, 0, 0).await;
        println!(
            "MQTT QoS 1 via buffer, 30 000 tags, 1 sample/message: {:.0} samples/s ({msgs} messages)",
            rate
        );
        let hot = table(100);
        let batches: Vec<_> = (0..2000).map(|k| batch(&hot, k)).collect();
        let (rate, msgs) = publish_through(dir.path(), "hot", port, batches, 0, 0).await;
        println!(
            "MQTT QoS 1 via buffer, 100 high-rate tags, batch form: {:.0} samples/s ({msgs} messages)",
            rate
        );
        let r = replay(dir.path(), "replay", port, 200, 0).await;
        println!("replay of a 204 800-sample backlog (30 000 tags), unpaced: {r:.0} samples/s");
        let r = replay(dir.path(), "paced", port, 100, 50_000).await;
        println!("replay of a 102 400-sample backlog, max_rate = 50 000: {r:.0} samples/s");
    });
    println!("peak RSS {:.0} MiB", peak_rss_mib());
    let _ = broker.kill();
}
