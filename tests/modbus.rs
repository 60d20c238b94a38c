//! The Modbus TCP source end to end through the pipeline, against an independent server
//! (pymodbus), a misbehaving one (raw frames from Python), a silent one, and Ferrule's own
//! in-process simulator: every value type and word order, exceptions named and mapped to bad
//! quality, malformed responses, a server killed and restarted mid-stream, and a dead device
//! that does not stall a live one.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferrule::config::HostConfig;
use ferrule::runtime::{self, RunningPipeline};
use ferrule::sources::simulator::{describe_tag, sample, SimulatorConfig};
use ferrule_tests::peers::{free_port, python, Peer};
use ferrule_tests::{read_jsonl, repo_root};
use serde_json::{json, Value};

const BAD_NODE_ID_UNKNOWN: u64 = 0x8034_0000;
const BAD_DEVICE_FAILURE: u64 = 0x808B_0000;
const BAD_DECODING_ERROR: u64 = 0x8007_0000;
const BAD_TIMEOUT: u64 = 0x800A_0000;
const BAD_NO_COMMUNICATION: u64 = 0x8031_0000;
const BAD_COMMUNICATION_ERROR: u64 = 0x8005_0000;

async fn start(dir: &Path, sources: &str) -> RunningPipeline {
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0

[admin]
enabled = false

{sources}

[sinks.samples]
type = "file"
path = "samples.jsonl"
"#
    );
    let cfg = HostConfig::from_text(&text, dir).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    runtime::start(&cfg).await.unwrap()
}

async fn stop(running: RunningPipeline, dir: &Path) -> Vec<Value> {
    running.handle.stop();
    running.wait().await.unwrap();
    read_jsonl(&dir.join("samples.jsonl"))
}

/// Samples by vendor path, in time order.
fn by_tag(samples: &[Value]) -> HashMap<String, Vec<Value>> {
    let mut m: HashMap<String, Vec<Value>> = HashMap::new();
    for s in samples {
        m.entry(s["vendor_path"].as_str().unwrap().to_string())
            .or_default()
            .push(s.clone());
    }
    for v in m.values_mut() {
        v.sort_by_key(|s| s["ts_ns"].as_u64().unwrap());
    }
    m
}

fn status(s: &Value) -> u64 {
    s["status"].as_u64().unwrap()
}

fn pymodbus(dir: &Path, port: u16, spec: &Value) -> Peer {
    let spec_path = dir.join(format!("spec-{port}.json"));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/peers/modbus_server.py"))
        .arg(port.to_string())
        .arg(&spec_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Peer::start(cmd, port)
}

/// One value of the interop table: (type, order, value as JSON, expected double).
fn typed_values() -> Vec<(&'static str, &'static str, Value, f64)> {
    let mut v = Vec::new();
    for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
        v.push(("u16", order, json!(51234), 51234.0));
        v.push(("i16", order, json!(-12345), -12345.0));
        v.push(("u32", order, json!(3_000_000_123u64), 3_000_000_123.0));
        v.push(("i32", order, json!(-1_234_567_890), -1_234_567_890.0));
        v.push((
            "u64",
            order,
            json!(1u64 << 52 | 0x0102_0304),
            (1u64 << 52 | 0x0102_0304) as f64,
        ));
        v.push((
            "i64",
            order,
            json!(-(1i64 << 50) - 77),
            (-(1i64 << 50) - 77) as f64,
        ));
        v.push(("f32", order, json!(-273.15f32 as f64), -273.15f32 as f64));
        v.push(("f64", order, json!(6.02214076e23), 6.02214076e23));
    }
    v
}

fn span(t: &str) -> u16 {
    match t {
        "u16" | "i16" => 1,
        "u32" | "i32" | "f32" => 2,
        _ => 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_every_type_and_word_order_decodes_and_exceptions_are_bad_quality() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Holding registers: every type in every order, each followed by a one-register gap
    // that the server does not map (so coalescing must not read across it).
    let mut holding = Vec::new();
    let mut registers = String::new();
    let mut expected: HashMap<String, f64> = HashMap::new();
    let mut address = 0u16;
    for (t, order, value, want) in typed_values() {
        let tag = format!("H.{t}.{order}");
        holding.push(json!({"address": address, "type": t, "order": order, "value": value}));
        registers += &format!(
            "[[sources.plc.devices.registers]]\ntag = \"{tag}\"\naddress = {address}\ntype = \"{t}\"\norder = \"{order}\"\n"
        );
        expected.insert(tag, want);
        address += span(t) + 1;
    }
    // A big u64 that only the side channel keeps exactly.
    let big = u64::MAX - 12345;
    holding.push(json!({"address": 300, "type": "u64", "order": "CDAB", "value": big}));
    // Adjacent registers without gaps (one read), incl. bits of a register and scaling.
    holding.push(json!({"address": 400, "type": "u16", "value": 0b1000_0000_0000_0101}));
    holding.push(json!({"address": 401, "type": "i16", "value": -250}));
    holding.push(
        json!({"address": 402, "type": "string", "length": 4, "order": "ABCD", "value": "PUMP-7"}),
    );
    holding.push(
        json!({"address": 406, "type": "string", "length": 3, "order": "BADC", "value": "Line 1"}),
    );
    // A register the device refuses with "server device failure".
    holding.push(json!({"address": 500, "type": "u16", "value": 1}));
    let spec = json!({
        "unit": 3,
        "holding": holding,
        "input": [{"address": 7, "type": "f32", "order": "DCBA", "value": 12.5},
                  {"address": 9, "type": "i32", "order": "CDAB", "value": -70000}],
        "coils": [{"address": 0, "values": [true, false, true]}],
        "discrete": [{"address": 20, "values": [false, true]}],
        "failures": [{"table": "holding", "address": 500, "exception": 4}],
    });
    let _peer = pymodbus(dir.path(), port, &spec);
    registers += r#"
[[sources.plc.devices.registers]]
tag = "H.u64.big"
address = 300
type = "u64"
order = "CDAB"
[[sources.plc.devices.registers]]
tag = "H.bit0"
address = 400
type = "bool"
bit = 0
[[sources.plc.devices.registers]]
tag = "H.bit1"
address = 400
type = "bool"
bit = 1
[[sources.plc.devices.registers]]
tag = "H.bit15"
address = 400
type = "bool"
bit = 15
[[sources.plc.devices.registers]]
tag = "H.scaled"
address = 401
type = "i16"
scale = 0.1
offset = 40.0
unit = "degC"
[[sources.plc.devices.registers]]
tag = "H.name"
address = 402
type = "string"
length = 4
[[sources.plc.devices.registers]]
tag = "H.name.swapped"
address = 406
type = "string"
length = 3
order = "BADC"
[[sources.plc.devices.registers]]
tag = "H.failing"
address = 500
[[sources.plc.devices.registers]]
tag = "H.unmapped"
address = 600
[[sources.plc.devices.registers]]
tag = "I.f32"
table = "input"
address = 7
type = "f32"
order = "DCBA"
[[sources.plc.devices.registers]]
tag = "I.i32"
table = "input"
address = 9
type = "i32"
order = "CDAB"
[[sources.plc.devices.registers]]
tag = "C.0"
table = "coil"
address = 0
[[sources.plc.devices.registers]]
tag = "C.1"
table = "coil"
address = 1
[[sources.plc.devices.registers]]
tag = "C.2"
table = "coil"
address = 2
[[sources.plc.devices.registers]]
tag = "D.21"
table = "discrete-input"
address = 21
"#;
    expected.extend([
        ("H.u64.big".to_string(), big as f64),
        ("H.bit0".into(), 1.0),
        ("H.bit1".into(), 0.0),
        ("H.bit15".into(), 1.0),
        ("H.scaled".into(), 15.0),
        ("I.f32".into(), 12.5),
        ("I.i32".into(), -70000.0),
        ("C.0".into(), 1.0),
        ("C.1".into(), 0.0),
        ("C.2".into(), 1.0),
        ("D.21".into(), 1.0),
    ]);
    let sources = format!(
        "[sources.plc]\ntype = \"modbus\"\n[[sources.plc.devices]]\nname = \"pymodbus\"\nhost = \"127.0.0.1\"\nport = {port}\nunit_id = 3\ninterval_ms = 100\n{registers}"
    );
    let running = start(dir.path(), &sources).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);

    for (tag, want) in &expected {
        let got = tags
            .get(tag)
            .unwrap_or_else(|| panic!("no sample of {tag}"));
        assert!(got.len() >= 3, "{tag}: {} samples", got.len());
        for s in got {
            assert_eq!(status(s), 0, "{tag} not good: {s}");
            let v = s["value"].as_f64().unwrap();
            assert!(
                (v - want).abs() <= want.abs() * 1e-12,
                "{tag}: got {v}, expected {want}"
            );
        }
    }
    assert_eq!(tags["H.u64.big"][0]["int"], big.to_string());
    for (tag, text) in [("H.name", "PUMP-7"), ("H.name.swapped", "Line 1")] {
        let s = &tags[tag][0];
        assert_eq!(status(s), 0, "{s}");
        assert_eq!(s["text"], text, "{s}");
        assert!(s["value"].is_null());
    }
    for (tag, code) in [
        ("H.failing", BAD_DEVICE_FAILURE),
        ("H.unmapped", BAD_NODE_ID_UNKNOWN),
    ] {
        let got = &tags[tag];
        assert!(got.len() >= 3, "{tag}");
        for s in got {
            assert_eq!(status(s), code, "{tag}: {s}");
            assert_eq!(s["quality"], "bad");
            assert!(s["value"].is_null(), "a failed read carries no value: {s}");
        }
    }
}

/// A pymodbus server with one f32 at holding 0 and one u16 at holding 2.
fn small_spec() -> Value {
    json!({"unit": 1, "holding": [
        {"address": 0, "type": "f32", "value": 42.25},
        {"address": 2, "type": "u16", "value": 7}]})
}

fn small_device(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
[[sources.plc.devices]]
name = "{name}"
host = "127.0.0.1"
port = {port}
interval_ms = 100
timeout_ms = 400
reconnect_min_ms = 100
reconnect_max_ms = 400
{extra}
[[sources.plc.devices.registers]]
tag = "{name}.Pressure"
address = 0
type = "f32"
unit = "bar"
[[sources.plc.devices.registers]]
tag = "{name}.Count"
address = 2
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_and_restarted_mid_stream_shows_the_gap_as_bad_quality() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut peer = pymodbus(dir.path(), port, &small_spec());
    let sources = format!(
        "[sources.plc]\ntype = \"modbus\"\n{}",
        small_device("press", port, "")
    );
    let running = start(dir.path(), &sources).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = now_ns();
    peer.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted_at = now_ns();
    let _peer = pymodbus(dir.path(), port, &small_spec());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);
    let got = &tags["press.Pressure"];

    let good_before = got
        .iter()
        .filter(|s| s["ts_ns"].as_u64().unwrap() < killed_at && status(s) == 0)
        .count();
    assert!(
        good_before >= 3,
        "{good_before} good samples before the kill"
    );
    // Between kill and restart: samples keep coming, all bad, none passing off an old value.
    let gap: Vec<&Value> = got
        .iter()
        .filter(|s| {
            let t = s["ts_ns"].as_u64().unwrap();
            t > killed_at + 50_000_000 && t < restarted_at
        })
        .collect();
    assert!(
        gap.len() >= 3,
        "the gap is not visible: {} samples",
        gap.len()
    );
    for s in &gap {
        assert_eq!(
            s["quality"], "bad",
            "good sample while the server was down: {s}"
        );
        assert!(s["value"].is_null(), "{s}");
        assert!(
            [BAD_COMMUNICATION_ERROR, BAD_NO_COMMUNICATION, BAD_TIMEOUT].contains(&status(s)),
            "{s}"
        );
    }
    // After the restart the source reconnects by itself.
    let after: Vec<&Value> = got
        .iter()
        .filter(|s| s["ts_ns"].as_u64().unwrap() > restarted_at && status(s) == 0)
        .collect();
    assert!(
        after.len() >= 3,
        "no recovery: {} good samples after restart",
        after.len()
    );
    for s in got.iter().filter(|s| status(s) == 0) {
        assert_eq!(s["value"].as_f64().unwrap(), 42.25, "{s}");
    }
    // Once recovered, it stays good.
    let last = got.last().unwrap();
    assert_eq!(status(last), 0, "{last}");
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_times_out_without_stalling_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _peer = pymodbus(dir.path(), port, &small_spec());
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(50) {
            conns.push(c);
        }
    });
    let sources = format!(
        "[sources.plc]\ntype = \"modbus\"\n{}{}",
        small_device("live", port, ""),
        small_device("silent", silent_port, "")
    );
    let running = start(dir.path(), &sources).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let samples = stop(running, dir.path()).await;
    drop(held);
    let tags = by_tag(&samples);

    let silent = &tags["silent.Pressure"];
    assert!(!silent.is_empty());
    assert!(silent
        .iter()
        .all(|s| s["quality"] == "bad" && s["value"].is_null()));
    assert!(
        silent.iter().any(|s| status(s) == BAD_TIMEOUT),
        "no BadTimeout: {:?}",
        silent.first()
    );
    // The live device kept its own pace: at 100 ms it polled many more times than the silent
    // device's 400 ms timeouts would allow if they shared a task.
    let live = &tags["live.Pressure"];
    assert!(live.iter().all(|s| status(s) == 0));
    assert!(
        live.len() > 2 * silent.len().max(5),
        "live device stalled: {} samples vs {} of the silent one",
        live.len(),
        silent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_give_bad_quality_never_wrong_values() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/peers/modbus_malformed.py"))
        .arg(port.to_string());
    let _peer = Peer::start(cmd, port);
    let sources = format!(
        r#"
[sources.plc]
type = "modbus"
[[sources.plc.devices]]
name = "odd"
host = "127.0.0.1"
port = {port}
interval_ms = 100
reconnect_min_ms = 50
reconnect_max_ms = 100
[[sources.plc.devices.registers]]
tag = "short"
address = 0
type = "u32"
[[sources.plc.devices.registers]]
tag = "fine"
address = 30
# Frames that break the connection get a device (connection) of their own each.
[[sources.plc.devices]]
name = "garbage"
host = "127.0.0.1"
port = {port}
interval_ms = 100
reconnect_min_ms = 50
reconnect_max_ms = 100
[[sources.plc.devices.registers]]
tag = "garbage"
address = 10
[[sources.plc.devices]]
name = "wrongtid"
host = "127.0.0.1"
port = {port}
interval_ms = 100
reconnect_min_ms = 50
reconnect_max_ms = 100
[[sources.plc.devices.registers]]
tag = "wrongtid"
address = 20
"#
    );
    let running = start(dir.path(), &sources).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);
    for tag in ["short", "garbage", "wrongtid"] {
        let got = &tags[tag];
        assert!(!got.is_empty(), "{tag}");
        assert!(
            got.iter()
                .all(|s| s["quality"] == "bad" && s["value"].is_null()),
            "{tag}: {:?}",
            got.iter().find(|s| s["quality"] != "bad")
        );
        assert!(
            got.iter().any(|s| status(s) == BAD_DECODING_ERROR),
            "{tag}: never BadDecodingError: {}",
            got[0]
        );
    }
    // Responses that were fine are decoded, and only with their own value.
    let fine = &tags["fine"];
    let good: Vec<&Value> = fine.iter().filter(|s| status(s) == 0).collect();
    assert!(!good.is_empty(), "no good sample of `fine`");
    assert!(good.iter().all(|s| s["value"] == 30.0), "{:?}", good[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_simulator_serves_the_plant_and_refuses_unmapped_reads() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Scans advance once per 1000 s: every read in the test sees scan 0.
    let sources = format!(
        r#"
[sources.sim]
type = "modbus"
[sources.sim.simulator]
listen = "127.0.0.1:{port}"
plant_tags = 600
first_tag = 300
tags = 300
interval_ms = 1000000
poll_interval_ms = 100

[sources.probe]
type = "modbus"
[[sources.probe.devices]]
name = "probe"
host = "127.0.0.1"
port = {port}
interval_ms = 100
reconnect_min_ms = 50
[[sources.probe.devices.registers]]
tag = "last"
address = 598
type = "f32"
[[sources.probe.devices.registers]]
tag = "past-the-end"
address = 600
type = "f32"
"#
    );
    let running = start(dir.path(), &sources).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);
    let plant = SimulatorConfig {
        tags: 600,
        ..SimulatorConfig::default()
    };
    let mut checked = 0;
    for i in 300..600 {
        let d = describe_tag(&plant, "sim", i);
        let got = tags
            .get(&d.vendor_path)
            .unwrap_or_else(|| panic!("no sample of {}", d.vendor_path));
        let want = sample(&plant, i, 0).0 as f32 as f64;
        for s in got {
            assert_eq!(status(s), 0, "{s}");
            assert_eq!(s["unit"], d.unit.as_str());
            if want.is_nan() {
                assert!(s["value"].is_null(), "{s}");
            } else {
                // JSON text round trip: equal to the f32 within a double's last digits.
                let v = s["value"].as_f64().unwrap();
                assert!((v - want).abs() <= want.abs() * 1e-14, "{s}, want {want}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 300 * 3, "{checked} samples checked");
    // The probe may start before the `sim` source's server listens: until it connects its
    // tags are BadNoCommunication; from then on the mapped one is served, the other refused.
    let connected = |s: &&Value| status(s) != BAD_NO_COMMUNICATION;
    let last: Vec<&Value> = tags["last"].iter().skip_while(|s| !connected(s)).collect();
    assert!(last.len() >= 3, "{:?}", tags["last"]);
    for s in last {
        assert_eq!(status(s), 0, "{s}");
        assert_eq!(
            s["value"].as_f64().unwrap(),
            sample(&plant, 599, 0).0 as f32 as f64
        );
    }
    let past: Vec<&Value> = tags["past-the-end"]
        .iter()
        .skip_while(|s| !connected(s))
        .collect();
    assert!(!past.is_empty());
    for s in past {
        assert_eq!(status(s), BAD_NODE_ID_UNKNOWN, "{s}");
    }
}

#[test]
fn bad_modbus_configs_are_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[sources.plc]
type = "modbus"
[[sources.plc.devices]]
name = "d"
host = "127.0.0.1"
[[sources.plc.devices.registers]]
tag = "t"
address = 0
type = "f32"
group = "fast"

[sinks.samples]
type = "file"
path = "samples.jsonl"
"#;
    let e = HostConfig::from_text(text, dir.path()).unwrap_err();
    assert_eq!(
        e[0].key, "sources.plc.devices[0].registers[0].group",
        "{e:?}"
    );
    assert!(e[0].message.contains("fast"), "{e:?}");
}

/// The embedded default's Modbus section (examples/plant.toml), on a free port, through the
/// reference plugin chain: the served plant tags come out normalized, in target units, good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_plant_reads_its_modbus_simulator_through_the_reference_chain() {
    let dir = tempfile::tempdir().unwrap();
    let plant = std::fs::read_to_string(repo_root().join("examples/plant.toml")).unwrap();
    let section = &plant[plant.find("[sources.plc]").unwrap()..plant.find("[[stages]]").unwrap()];
    assert!(
        section.contains("listen = \"127.0.0.1:15020\""),
        "{section}"
    );
    let section = section.replace("127.0.0.1:15020", &format!("127.0.0.1:{}", free_port()));
    let sources = format!(
        "[reference_data.assets]\npath = \"{}\"\n{section}\n{}",
        repo_root().join("examples/assets.csv").display(),
        ferrule_tests::reference_stages_toml()
    );
    let running = start(dir.path(), &sources).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);
    // The validator may dead-letter a sample (spike, NaN), never a tag for the whole run.
    assert_eq!(tags.len(), 2000, "tags seen");
    let pressure: Vec<&Value> = samples
        .iter()
        .filter(|s| s["path"].as_str().unwrap().ends_with("/pressure"))
        .collect();
    assert!(pressure.len() >= 300, "{} pressure samples", pressure.len());
    for p in &pressure {
        assert!(
            p["path"].as_str().unwrap().starts_with("plant/site1/"),
            "{p}"
        );
        assert_eq!(p["unit"], "kPa", "{p}");
        assert_eq!(p["quality"], "good", "{p}");
        let v = p["value"].as_f64().unwrap();
        assert!((300.0..=900.0).contains(&v), "{p}");
    }
}
