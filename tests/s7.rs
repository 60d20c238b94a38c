//! The S7 source end to end through the pipeline against an independent S7 server
//! (python-snap7's, values encoded by snap7.util): every type and address notation decoded
//! to the exact value; an unknown DB and addresses past the end of a DB give those tags bad
//! quality while the others keep their values; the server killed and restarted mid-stream
//! shows the gap as bad quality and never passes off an old value as good.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::model::now_ns;
use ferrule::runtime::{self, RunningPipeline};
use ferrule_tests::peers::{free_port, python, Peer};
use ferrule_tests::{read_jsonl, repo_root};
use serde_json::{json, Value};

const BAD_NODE_ID_UNKNOWN: u64 = 0x8034_0000;
const BAD_OUT_OF_RANGE: u64 = 0x803C_0000;

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

fn s7_server(dir: &Path, port: u16, spec: &Value) -> Peer {
    let spec_path = dir.join(format!("s7-spec-{port}.json"));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/peers/s7_server.py"))
        .arg(port.to_string())
        .arg(&spec_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Peer::start(cmd, port)
}

/// What a tag must read as.
enum Want {
    Number(f64),
    Text(&'static str),
    /// A 64-bit integer a double cannot hold: the exact value in the side channel.
    Int(&'static str, f64),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snap7_every_type_and_address_form_decodes_and_bad_addresses_are_bad_quality() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let lint = (1i64 << 60) + 3;
    let ulint = u64::MAX - 12345;
    let lword = 0x0102_0304_0506_0708u64;
    let spec = json!({"areas": [
        {"area": "DB", "index": 10, "size": 100, "values": [
            {"offset": 0, "bit": 0, "type": "bool", "value": true},
            {"offset": 0, "bit": 7, "type": "bool", "value": true},
            {"offset": 1, "type": "byte", "value": 200},
            {"offset": 2, "type": "sint", "value": -100},
            {"offset": 3, "type": "usint", "value": 250},
            {"offset": 4, "type": "char", "value": "Z"},
            {"offset": 6, "type": "int", "value": -12345},
            {"offset": 8, "type": "word", "value": 54321},
            {"offset": 10, "type": "uint", "value": 65000},
            {"offset": 12, "type": "real", "value": -273.15},
            {"offset": 16, "type": "dint", "value": -1_234_567_890},
            {"offset": 20, "type": "dword", "value": 3_000_000_123u64},
            {"offset": 24, "type": "udint", "value": 4_000_000_000u64},
            {"offset": 28, "type": "time", "value": 3_600_123},
            {"offset": 32, "type": "lreal", "value": 6.02214076e23},
            {"offset": 40, "type": "lint", "value": lint},
            {"offset": 48, "type": "ulint", "value": ulint},
            {"offset": 56, "type": "lword", "value": lword},
            {"offset": 64, "type": "dt", "value": "2024-02-29T13:45:56.789"},
            {"offset": 72, "type": "string", "max": 10, "value": "PUMP-7"}]},
        {"area": "DB", "index": 5, "size": 1, "values": [
            {"offset": 0, "type": "byte", "value": 0x5A}]},
        {"area": "MK", "size": 32, "values": [
            {"offset": 1, "bit": 7, "type": "bool", "value": true},
            {"offset": 2, "type": "byte", "value": 9},
            {"offset": 20, "type": "word", "value": 0x1234},
            {"offset": 22, "type": "int", "value": -2},
            {"offset": 24, "type": "real", "value": 12.5}]},
        {"area": "PE", "size": 8, "values": [
            {"offset": 0, "bit": 1, "type": "bool", "value": true},
            {"offset": 2, "type": "byte", "value": 77},
            {"offset": 4, "type": "int", "value": -300}]},
        {"area": "PA", "size": 8, "values": [
            {"offset": 0, "bit": 0, "type": "bool", "value": true},
            {"offset": 2, "type": "word", "value": 999},
            {"offset": 4, "type": "dint", "value": -70000}]}
    ]});
    let _peer = s7_server(dir.path(), port, &spec);
    let table: Vec<(&str, &str, Option<&str>, Want)> = vec![
        ("db.bit0", "DB10.DBX0.0", None, Want::Number(1.0)),
        ("db.bit5", "DB10.DBX0.5", None, Want::Number(0.0)),
        ("db.bit7", "DB10.DBX0.7", Some("bool"), Want::Number(1.0)),
        ("db.byte", "DB10.DBB1", None, Want::Number(200.0)),
        ("db.sint", "DB10.DBB2", Some("sint"), Want::Number(-100.0)),
        ("db.usint", "DB10.DBB3", Some("usint"), Want::Number(250.0)),
        ("db.char", "DB10.DBB4", Some("char"), Want::Text("Z")),
        ("db.int", "DB10.DBW6", Some("int"), Want::Number(-12345.0)),
        ("db.word", "DB10.DBW8", None, Want::Number(54321.0)),
        ("db.uint", "DB10.DBW10", Some("uint"), Want::Number(65000.0)),
        (
            "db.real",
            "DB10.DBD12",
            Some("real"),
            Want::Number(-273.15f32 as f64),
        ),
        (
            "db.dint",
            "DB10.DBD16",
            Some("dint"),
            Want::Number(-1_234_567_890.0),
        ),
        (
            "db.dword",
            "DB10.DBD20",
            None,
            Want::Number(3_000_000_123.0),
        ),
        (
            "db.udint",
            "DB10.DBD24",
            Some("udint"),
            Want::Number(4_000_000_000.0),
        ),
        (
            "db.time",
            "DB10.DBD28",
            Some("time"),
            Want::Number(3_600_123.0),
        ),
        (
            "db.lreal",
            "DB10.DBB32",
            Some("lreal"),
            Want::Number(6.02214076e23),
        ),
        (
            "db.lint",
            "DB10.DBB40",
            Some("lint"),
            Want::Int("1152921504606846979", lint as f64),
        ),
        (
            "db.ulint",
            "DB10.DBB48",
            Some("ulint"),
            Want::Int("18446744073709539270", ulint as f64),
        ),
        (
            "db.lword",
            "DB10.DBB56",
            Some("lword"),
            Want::Int("72623859790382856", lword as f64),
        ),
        (
            "db.dt",
            "DB10.DBB64",
            Some("date_and_time"),
            Want::Number(1_709_214_356_789.0),
        ),
        (
            "db.string",
            "DB10.DBB72",
            Some("string[10]"),
            Want::Text("PUMP-7"),
        ),
        ("db5.byte", "DB5.DBB0", None, Want::Number(90.0)),
        ("m.bit", "M1.7", None, Want::Number(1.0)),
        ("m.byte", "MB2", None, Want::Number(9.0)),
        ("m.word", "MW20", None, Want::Number(4660.0)),
        ("f.int", "FW22", Some("int"), Want::Number(-2.0)),
        ("m.real", "MD24", Some("real"), Want::Number(12.5)),
        ("i.bit", "I0.1", None, Want::Number(1.0)),
        ("e.bit", "E0.2", None, Want::Number(0.0)),
        ("i.byte", "IB2", None, Want::Number(77.0)),
        ("e.int", "EW4", Some("int"), Want::Number(-300.0)),
        ("q.bit", "Q0.0", None, Want::Number(1.0)),
        ("a.bit", "A0.1", None, Want::Number(0.0)),
        ("q.word", "QW2", None, Want::Number(999.0)),
        ("a.dint", "AD4", Some("dint"), Want::Number(-70000.0)),
    ];
    let mut items = String::new();
    for (tag, address, ty, _) in &table {
        items += &format!("[[sources.plc.items]]\ntag = \"{tag}\"\naddress = \"{address}\"\n");
        if let Some(t) = ty {
            items += &format!("type = \"{t}\"\n");
        }
    }
    // Bad addresses: a DB the CPU does not have, a word past the end of DB5 (in one range
    // with DB5.DBB0, which must stay good), and one far past the end of DB10.
    items += r#"
[[sources.plc.items]]
tag = "bad.unknown_db"
address = "DB99.DBW0"
type = "int"
[[sources.plc.items]]
tag = "bad.db5_past_end"
address = "DB5.DBW1"
[[sources.plc.items]]
tag = "bad.db10_past_end"
address = "DB10.DBD200"
type = "real"
"#;
    let sources = format!(
        "[sources.plc]\ntype = \"s7\"\nhost = \"127.0.0.1\"\nport = {port}\nslot = 1\ninterval_ms = 100\n{items}"
    );
    let running = start(dir.path(), &sources).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);

    for (tag, address, _, want) in &table {
        let got = tags
            .get(*tag)
            .unwrap_or_else(|| panic!("no sample of {tag}"));
        assert!(got.len() >= 3, "{tag}: {} samples", got.len());
        for s in got {
            assert_eq!(status(s), 0, "{tag} ({address}) not good: {s}");
            match want {
                Want::Number(w) => {
                    let v = s["value"].as_f64().unwrap_or_else(|| panic!("{tag}: {s}"));
                    assert_eq!(v, *w, "{tag} ({address}): {s}");
                }
                Want::Text(t) => assert_eq!(s["text"], *t, "{tag}: {s}"),
                Want::Int(i, w) => {
                    assert_eq!(s["int"], *i, "{tag}: {s}");
                    assert_eq!(s["value"].as_f64(), Some(*w), "{tag}: {s}");
                }
            }
        }
    }
    for (tag, code) in [
        ("bad.unknown_db", BAD_NODE_ID_UNKNOWN),
        ("bad.db5_past_end", BAD_OUT_OF_RANGE),
        ("bad.db10_past_end", BAD_OUT_OF_RANGE),
    ] {
        let got = tags
            .get(tag)
            .unwrap_or_else(|| panic!("no sample of {tag}"));
        assert!(got.len() >= 3, "{tag}");
        for s in got {
            assert_eq!(status(s), code, "{tag}: {s}");
            assert_eq!(s["quality"], "bad");
            assert!(s["value"].is_null(), "a failed read carries no value: {s}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snap7_killed_and_restarted_mid_stream_shows_the_gap_as_bad_and_never_an_old_value() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec = |first: i64| {
        json!({"areas": [{"area": "DB", "index": 1, "size": 8,
                          "values": [{"offset": 4, "type": "int", "value": 7}]}],
               "counter": {"area": "DB", "index": 1, "offset": 0, "start": first, "period_ms": 20}})
    };
    let mut peer = s7_server(dir.path(), port, &spec(0));
    let sources = format!(
        r#"[sources.plc]
type = "s7"
host = "127.0.0.1"
port = {port}
interval_ms = 100
timeout_ms = 500
reconnect_min_ms = 100
reconnect_max_ms = 400
[[sources.plc.items]]
tag = "count"
address = "DB1.DBD0"
type = "dint"
[[sources.plc.items]]
tag = "seven"
address = "DB1.DBW4"
type = "int"
"#
    );
    let running = start(dir.path(), &sources).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    peer.kill();
    let killed_at = now_ns();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted_at = now_ns();
    let _peer = s7_server(dir.path(), port, &spec(1_000_000));
    // Wait for the source to reconnect by itself and read the new server's counter.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let so_far = read_jsonl(&dir.path().join("samples.jsonl"));
        let recovered = so_far.iter().filter(|s| {
            s["vendor_path"] == "count" && status(s) == 0 && s["value"].as_f64().unwrap() >= 1e6
        });
        if recovered.count() >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);
    let count = &tags["count"];
    let ts = |s: &Value| s["ts_ns"].as_u64().unwrap();
    let good_before: Vec<f64> = count
        .iter()
        .filter(|s| ts(s) < killed_at && status(s) == 0)
        .map(|s| s["value"].as_f64().unwrap())
        .collect();
    assert!(
        good_before.len() >= 5,
        "{} good samples before the kill",
        good_before.len()
    );
    assert!(
        good_before.windows(2).all(|w| w[0] <= w[1]),
        "{good_before:?}"
    );
    // Between kill and restart: samples keep coming, all bad.
    for tag in ["count", "seven"] {
        let gap: Vec<&Value> = tags[tag]
            .iter()
            .filter(|s| ts(s) > killed_at + 50_000_000 && ts(s) < restarted_at)
            .collect();
        assert!(
            gap.len() >= 5,
            "{tag}: {} samples during the gap",
            gap.len()
        );
        for s in &gap {
            assert_eq!(s["quality"], "bad", "{tag} during the gap: {s}");
            assert!(s["value"].is_null(), "{s}");
        }
    }
    // No good sample after the kill carries a value of the killed server.
    for s in count
        .iter()
        .filter(|s| ts(s) > killed_at + 50_000_000 && status(s) == 0)
    {
        assert!(
            s["value"].as_f64().unwrap() >= 1e6,
            "an old value reported good after the kill: {s}"
        );
    }
    let seven_after: Vec<&Value> = tags["seven"]
        .iter()
        .filter(|s| ts(s) > restarted_at && status(s) == 0)
        .collect();
    assert!(!seven_after.is_empty());
    assert!(seven_after.iter().all(|s| s["value"].as_f64() == Some(7.0)));
}
