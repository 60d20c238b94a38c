//! The EtherNet/IP source end to end through the pipeline against cpppo's Logix simulator,
//! the values written by pylogix (an independent client): every atomic type, array elements
//! (8- and 16-bit index segments), member and program-scoped names, short strings, many tags
//! per Multiple Service Packet over a connected session and unconnected (routed and direct); an unknown tag gives that tag bad
//! quality while the others keep running; the simulator killed and restarted mid-stream shows
//! the gap as bad quality and never an old value.

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

/// cpppo's simulator serving `tags` (`Name=TYPE[n]`).
fn cpppo(port: u16, tags: &[&str]) -> Peer {
    let mut cmd = Command::new(python());
    cmd.args(["-m", "cpppo.server.enip", "--address"])
        .arg(format!("127.0.0.1:{port}"))
        .args(tags)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Peer::start(cmd, port)
}

fn write(port: u16, values: &Value) {
    let out = Command::new(python())
        .arg(repo_root().join("tests/peers/enip_write.py"))
        .arg(port.to_string())
        .arg(values.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pylogix writes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const TAGS: &[&str] = &[
    "Flag=BOOL",
    "Small=SINT",
    "Mid=INT",
    "Count=DINT",
    "Big=LINT",
    "B=USINT",
    "W=UINT",
    "U=UDINT",
    "UBig=ULINT",
    "Temp=REAL[10]",
    "L=LREAL",
    "Arr=DINT[300]",
    "Motor.Speed=REAL",
    "Program:Main.Level=DINT",
    "Label=SSTRING",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpppo_every_type_and_path_form_decodes_and_an_unknown_tag_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _peer = cpppo(port, TAGS);
    let big = (1i64 << 60) + 3;
    let ubig = (1u64 << 63) + 5;
    write(
        port,
        &json!([
            ["Flag", true],
            ["Small", -100],
            ["Mid", -12345],
            ["Count", 123456],
            ["Big", big],
            ["B", 250],
            ["W", 65000],
            ["U", 4_000_000_000u64],
            ["UBig", ubig],
            ["Temp[3]", -273.15],
            ["L", 6.02214076e23],
            ["Arr[7]", 77],
            ["Arr[299]", 299],
            ["Motor.Speed", 1.25],
            ["Program:Main.Level", -7],
            ["Label", "PUMP-7"]
        ]),
    );
    let table: Vec<(&str, &str, Option<&str>, Value)> = vec![
        ("flag", "Flag", Some("bool"), json!(1.0)),
        ("small", "Small", Some("sint"), json!(-100.0)),
        ("mid", "Mid", Some("int"), json!(-12345.0)),
        ("count", "Count", Some("dint"), json!(123456.0)),
        ("big", "Big", Some("lint"), json!("1152921504606846979")),
        ("b", "B", Some("usint"), json!(250.0)),
        ("w", "W", Some("uint"), json!(65000.0)),
        ("u", "U", None, json!(4_000_000_000.0)),
        ("ubig", "UBig", Some("ulint"), json!("9223372036854775813")),
        ("temp3", "Temp[3]", Some("real"), json!(-273.15f32 as f64)),
        ("temp0", "Temp[0]", Some("real"), json!(0.0)),
        ("l", "L", Some("lreal"), json!(6.02214076e23)),
        ("arr7", "Arr[7]", None, json!(77.0)),
        ("arr299", "Arr[299]", Some("dint"), json!(299.0)),
        ("speed", "Motor.Speed", Some("real"), json!(1.25)),
        ("level", "Program:Main.Level", Some("dint"), json!(-7.0)),
        ("label", "Label", Some("string"), json!("PUMP-7")),
    ];
    let mut tags = String::new();
    for (tag, path, ty, _) in &table {
        tags += &format!("[[sources.plc.tags]]\ntag = \"{tag}\"\npath = \"{path}\"\n");
        if let Some(t) = ty {
            tags += &format!("type = \"{t}\"\n");
        }
    }
    tags += "[[sources.plc.tags]]\ntag = \"nope\"\npath = \"NoSuchTag\"\n";
    tags += "[[sources.plc.tags]]\ntag = \"wrong_type\"\npath = \"Count\"\ntype = \"real\"\n";
    // Connected (Forward Open), unconnected through the Connection Manager with a route
    // path, and unconnected straight to the controller: the same values every way.
    for mode in [
        "connected = true",
        "connected = false",
        "connected = false\ndirect = true",
    ] {
        let run_dir = dir.path().join(mode.replace(['\n', ' ', '='], "_"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let sources = format!(
            "[sources.plc]\ntype = \"enip\"\nhost = \"127.0.0.1\"\nport = {port}\ninterval_ms = 200\n{mode}\n{tags}"
        );
        let running = start(&run_dir, &sources).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let samples = stop(running, &run_dir).await;
        let by = by_tag(&samples);
        for (tag, path, _, want) in &table {
            let got = by
                .get(*tag)
                .unwrap_or_else(|| panic!("{mode}: no sample of {tag}"));
            assert!(got.len() >= 3, "{mode}: {tag}: {} samples", got.len());
            for s in got {
                assert_eq!(status(s), 0, "{mode}: {tag} ({path}) not good: {s}");
                match want {
                    Value::String(w) if s["text"].is_string() => {
                        assert_eq!(s["text"], *w, "{tag}")
                    }
                    Value::String(w) => assert_eq!(s["int"], *w, "{tag}: {s}"),
                    w => assert_eq!(s["value"].as_f64(), w.as_f64(), "{tag} ({path}): {s}"),
                }
            }
        }
        for s in &by["nope"] {
            assert_eq!(status(s), BAD_NODE_ID_UNKNOWN, "{mode}: {s}");
            assert!(s["value"].is_null());
        }
        for s in &by["wrong_type"] {
            assert_eq!(status(s), 0x8074_0000, "{mode}: {s}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpppo_killed_and_restarted_mid_stream_shows_the_gap_as_bad() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut peer = cpppo(port, &["Count=DINT", "Temp=REAL[4]"]);
    write(port, &json!([["Count", 1], ["Temp[1]", 2.5]]));
    let sources = format!(
        r#"[sources.plc]
type = "enip"
host = "127.0.0.1"
port = {port}
interval_ms = 100
timeout_ms = 500
reconnect_min_ms = 100
reconnect_max_ms = 400
[[sources.plc.tags]]
tag = "count"
path = "Count"
[[sources.plc.tags]]
tag = "temp1"
path = "Temp[1]"
"#
    );
    let running = start(dir.path(), &sources).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    peer.kill();
    let killed_at = now_ns();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted_at = now_ns();
    let _peer = cpppo(port, &["Count=DINT", "Temp=REAL[4]"]);
    write(port, &json!([["Count", 2]]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let so_far = read_jsonl(&dir.path().join("samples.jsonl"));
        let recovered = so_far
            .iter()
            .filter(|s| s["vendor_path"] == "count" && status(s) == 0 && s["value"] == 2.0)
            .count();
        if recovered >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let samples = stop(running, dir.path()).await;
    let tags = by_tag(&samples);
    let ts = |s: &Value| s["ts_ns"].as_u64().unwrap();
    let before = tags["count"]
        .iter()
        .filter(|s| ts(s) < killed_at && status(s) == 0)
        .count();
    assert!(before >= 5, "{before} good samples before the kill");
    for tag in ["count", "temp1"] {
        let gap: Vec<&Value> = tags[tag]
            .iter()
            .filter(|s| ts(s) > killed_at + 50_000_000 && ts(s) < restarted_at)
            .collect();
        assert!(
            gap.len() >= 5,
            "{tag}: {} samples during the gap",
            gap.len()
        );
        for s in gap {
            assert_eq!(s["quality"], "bad", "{tag} during the gap: {s}");
            assert!(s["value"].is_null());
        }
    }
    // After the restart Temp[1] is the new simulator's 0.0, never the old 2.5 as good.
    for s in tags["temp1"]
        .iter()
        .filter(|s| ts(s) > restarted_at && status(s) == 0)
    {
        assert_eq!(
            s["value"], 0.0,
            "an old value reported good after the restart: {s}"
        );
    }
}
