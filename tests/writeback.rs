//! Write-back end to end: commands over MQTT 5 (Mosquitto on 127.0.0.1:1883, request/response
//! with Response Topic and Correlation Data) through the safety checks to independent devices
//! (a pymodbus server, an asyncua server), each device value read back by the peer's own
//! client; every refusal named in the reply and in the audit log, the device unchanged; a
//! device that swallows a write is never reported `verified`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferrule::config::HostConfig;
use ferrule::runtime::{self, RunningPipeline};
use ferrule_tests::peers::{free_port, python, Peer};
use ferrule_tests::{read_jsonl, repo_root};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn unique(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{:x}{}", n & 0xFFFF_FFFF, std::process::id())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
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

/// A value read by pymodbus's own client and decoded in Python.
fn modbus_read(port: u16, args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(repo_root().join("tests/peers/modbus_read.py"))
        .arg(port.to_string())
        .args(args)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "modbus_read.py {args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A value read by asyncua's own client: (value, variant type).
fn opcua_read(port: u16, node: &str) -> (Value, String) {
    let out = Command::new(python())
        .arg(repo_root().join("tests/peers/opcua_read.py"))
        .arg(port.to_string())
        .arg(node)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "opcua_read.py {node}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v["value"].clone(), v["type"].as_str().unwrap().to_string())
}

async fn start(dir: &Path, site: &str, body: &str) -> RunningPipeline {
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0

[admin]
enabled = false

{body}

[writes.mqtt]
broker = {{ host = "127.0.0.1", port = 1883, client_id = "ferrule-writes-{site}" }}
topics = ["plant/{site}/+/+/+/+/set"]

[sinks.samples]
type = "file"
path = "samples.jsonl"
"#
    );
    let cfg = HostConfig::from_text(&text, dir).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    runtime::start(&cfg).await.unwrap()
}

/// Waits until the host holds a sample of every path (the tag table knows them).
async fn wait_for_tags(running: &RunningPipeline, paths: &[String]) {
    let writes = running.handle.writes().expect("[writes] configured");
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in paths {
        while writes.latest().latest(p).is_none() {
            assert!(Instant::now() < deadline, "no sample of {p} after 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    while !writes.mqtt_subscribed() {
        assert!(
            Instant::now() < deadline,
            "commands not subscribed after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An MQTT 5 requester: publishes commands with a Response Topic and Correlation Data and
/// takes the replies that carry its correlation.
struct Requester {
    client: AsyncClient,
    replies: mpsc::UnboundedReceiver<(Option<Bytes>, Value)>,
    reply_topic: String,
    task: tokio::task::JoinHandle<()>,
    n: u32,
}

impl Requester {
    async fn connect(site: &str) -> Requester {
        let id = unique("req");
        let mut o = MqttOptions::new(id.clone(), "127.0.0.1", 1883);
        o.set_keep_alive(Duration::from_secs(10));
        let (client, mut events) = AsyncClient::new(o, 64);
        let reply_topic = format!("replies/{site}/{id}");
        let (tx, replies) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let corr = p.properties.and_then(|pr| pr.correlation_data);
                        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let _ = tx.send((corr, v));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        client
            .subscribe(reply_topic.clone(), QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
            .await
            .expect("subscribed to the reply topic");
        Requester {
            client,
            replies,
            reply_topic,
            task,
            n: 0,
        }
    }

    /// Sends `payload` to `topic` and waits for the reply with its correlation.
    async fn send(&mut self, topic: &str, payload: Value) -> Value {
        self.n += 1;
        let corr = Bytes::from(format!("corr-{}", self.n));
        let props = PublishProperties {
            response_topic: Some(self.reply_topic.clone()),
            correlation_data: Some(corr.clone()),
            ..Default::default()
        };
        let body = match &payload {
            Value::String(raw) => raw.clone().into_bytes(),
            v => v.to_string().into_bytes(),
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, body, props)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (c, v) = tokio::time::timeout(left, self.replies.recv())
                .await
                .unwrap_or_else(|_| panic!("no reply to {payload} on {topic} within 30 s"))
                .unwrap();
            if c.as_ref() == Some(&corr) {
                return v;
            }
        }
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn outcome(reply: &Value) -> &str {
    reply["outcome"].as_str().unwrap_or("")
}

fn reason(reply: &Value) -> &str {
    reply["reason"]["code"].as_str().unwrap_or("")
}

/// The audit line of command `id`.
fn audited(dir: &Path, id: &str) -> Value {
    let lines = read_jsonl(&dir.join("audit.jsonl"));
    let mine: Vec<&Value> = lines.iter().filter(|l| l["id"] == id).collect();
    assert_eq!(mine.len(), 1, "one audit line for {id}: {lines:?}");
    mine[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_setpoints_of_every_kind_are_written_read_back_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _device = pymodbus(
        dir.path(),
        port,
        &json!({
            "holding": [
                {"address": 0, "type": "f32", "order": "CDAB", "value": 2.5},
                {"address": 10, "type": "i32", "order": "DCBA", "value": -5},
                {"address": 20, "type": "u16", "value": 1},
                {"address": 30, "type": "string", "length": 4, "value": "AB"},
                {"address": 40, "type": "u64", "order": "BADC", "value": 5},
            ],
            "coils": [{"address": 0, "values": [false]}],
        }),
    );
    let site = unique("wv");
    let p = |m: &str| format!("plant/{site}/a1/l1/press1/{m}");
    let body = format!(
        r#"
[sources.plc]
type = "modbus"

[[sources.plc.devices]]
name = "press1"
host = "127.0.0.1"
port = {port}
interval_ms = 100
timeout_ms = 1000

[[sources.plc.devices.registers]]
tag = "{setpoint}"
address = 0
type = "f32"
order = "CDAB"
unit = "bar"

[[sources.plc.devices.registers]]
tag = "{offset}"
address = 10
type = "i32"
order = "DCBA"
scale = 0.1

[[sources.plc.devices.registers]]
tag = "{enable}"
address = 20
type = "bool"
bit = 3

[[sources.plc.devices.registers]]
tag = "{recipe}"
address = 30
type = "string"
length = 4

[[sources.plc.devices.registers]]
tag = "{count}"
address = 40
type = "u64"
order = "BADC"

[[sources.plc.devices.registers]]
tag = "{start}"
table = "coil"
address = 0

[writes]
audit_path = "audit.jsonl"

[writes.sources.plc]
allow = ["plant/{site}/a1/l1/press1/*"]
"#,
        setpoint = p("setpoint"),
        offset = p("offset"),
        enable = p("enable"),
        recipe = p("recipe"),
        count = p("count"),
        start = p("start"),
    );
    let running = start(dir.path(), &site, &body).await;
    let names = ["setpoint", "offset", "enable", "recipe", "count", "start"];
    wait_for_tags(&running, &names.map(p)).await;
    let mut req = Requester::connect(&site).await;

    let cases: Vec<(&str, Value, Vec<&str>, Value)> = vec![
        (
            "setpoint",
            json!(3.75),
            vec!["holding", "0", "f32", "CDAB"],
            json!(3.75),
        ),
        // Scale undone: −1.5 is raw −15.
        (
            "offset",
            json!(-1.5),
            vec!["holding", "10", "i32", "DCBA"],
            json!(-15),
        ),
        (
            "enable",
            json!(true),
            vec!["holding", "20", "bool", "ABCD", "3"],
            json!(true),
        ),
        (
            "recipe",
            json!("XY12"),
            vec!["holding", "30", "string", "ABCD", "4"],
            json!("XY12"),
        ),
        (
            "count",
            json!(123_456_789u64),
            vec!["holding", "40", "u64", "BADC"],
            json!(123_456_789u64),
        ),
        ("start", json!(true), vec!["coil", "0", "bool"], json!(true)),
    ];
    for (name, value, read, want) in &cases {
        let id = format!("set-{name}");
        let reply = req
            .send(
                &format!("{}/set", p(name)),
                json!({"id": id, "value": value, "requester": "mes-1"}),
            )
            .await;
        assert_eq!(outcome(&reply), "verified", "{name}: {reply:#}");
        assert_eq!(reply["requester"], "mes-1");
        assert_eq!(reply["source"], "plc");
        assert!(
            reply["address"].as_str().unwrap().contains("press1"),
            "{reply}"
        );
        assert!(reply["old"]["raw"].is_string() && reply["read_back"]["raw"] == reply["written"]);
        // The device holds the new value, as pymodbus reads it.
        assert_eq!(&modbus_read(port, read), want, "{name}");
        let line = audited(dir.path(), &id);
        assert_eq!(line["outcome"], "verified");
        assert_eq!(line["old"], reply["old"]);
        let checks: Vec<&str> = line["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for c in [
            "deadline",
            "one-tag",
            "allow-list",
            "device-address",
            "rate-limit",
        ] {
            assert!(checks.contains(&c), "{name}: {checks:?}");
        }
    }
    // The bit write changed bit 3 only: the register's bit 0 (value 1) is still set.
    assert_eq!(modbus_read(port, &["holding", "20", "u16"]), json!(9));
    // The admin view and the metrics count them.
    let writes = running.handle.writes().unwrap();
    assert_eq!(writes.recent().len(), cases.len());
    let status = running.handle.status();
    let verified: u64 = status
        .writes
        .iter()
        .filter(|w| w.outcome == "verified")
        .map(|w| w.count)
        .sum();
    assert_eq!(verified, cases.len() as u64);
    let metrics = ferrule::metrics::render(&status);
    assert!(
        metrics.contains("ferrule_write_commands_total{outcome=\"verified\",reason=\"\"} 6"),
        "{metrics}"
    );
    running.handle.stop();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_refusals_name_their_reason_in_reply_and_audit_and_leave_the_device_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _device = pymodbus(
        dir.path(),
        port,
        &json!({
            "holding": [
                {"address": 0, "type": "f32", "value": 2.5},
                {"address": 10, "type": "u16", "value": 100},
                {"address": 20, "type": "u16", "value": 50},
            ],
            "input": [{"address": 0, "type": "u16", "value": 7}],
        }),
    );
    let site = unique("wr");
    let p = |m: &str| format!("plant/{site}/a1/l1/press1/{m}");
    let body = format!(
        r#"
[sources.plc]
type = "modbus"

[[sources.plc.devices]]
name = "press1"
host = "127.0.0.1"
port = {port}
interval_ms = 100

[[sources.plc.devices.registers]]
tag = "{setpoint}"
address = 0
type = "f32"

[[sources.plc.devices.registers]]
tag = "{limit}"
address = 10

[[sources.plc.devices.registers]]
tag = "{speed}"
address = 20

[[sources.plc.devices.registers]]
tag = "{pv}"
table = "input"
address = 0

[writes]
audit_path = "audit.jsonl"

[writes.sources.plc]
allow = ["{setpoint}", "{speed}", "{pv}"]
tag_rate = {{ per_second = 0.001, burst = 2 }}
"#,
        setpoint = p("setpoint"),
        limit = p("limit"),
        speed = p("speed"),
        pv = p("pv"),
    );
    let running = start(dir.path(), &site, &body).await;
    wait_for_tags(&running, &["setpoint", "limit", "speed", "pv"].map(p)).await;
    let mut req = Requester::connect(&site).await;
    let set = |m: &str| format!("{}/set", p(m));
    let setpoint = || modbus_read(port, &["holding", "0", "f32"]);
    let speed = || modbus_read(port, &["holding", "20", "u16"]);

    // (id, topic, payload, expected reason)
    let refusals: Vec<(&str, String, Value, &str)> = vec![
        (
            "not-listed",
            set("limit"),
            json!({"value": 5, "requester": "mes"}),
            "not-allow-listed",
        ),
        (
            "too-big",
            set("speed"),
            json!({"value": 70000, "requester": "mes"}),
            "invalid-value",
        ),
        (
            "late",
            set("setpoint"),
            json!({"value": 9.0, "requester": "mes", "deadline_ms": now_ms() - 1000}),
            "deadline-expired",
        ),
        (
            "cas",
            set("setpoint"),
            json!({"value": 9.0, "requester": "mes", "expected_current": 1.0}),
            "compare-and-set-failed",
        ),
        (
            "read-only",
            set("pv"),
            json!({"value": 1, "requester": "mes"}),
            "not-writable",
        ),
        (
            "unknown",
            set("nothing"),
            json!({"value": 1, "requester": "mes"}),
            "unknown-tag",
        ),
        (
            "garbled",
            set("setpoint"),
            json!("{\"id\": \"garbled\", \"value\": "),
            "malformed",
        ),
    ];
    for (id, topic, mut payload, want) in refusals {
        if let Some(o) = payload.as_object_mut() {
            o.insert("id".into(), json!(id));
        }
        let reply = req.send(&topic, payload).await;
        assert_eq!(outcome(&reply), "refused", "{id}: {reply:#}");
        assert_eq!(reason(&reply), want, "{id}: {reply:#}");
        assert!(!reply["reason"]["detail"].as_str().unwrap().is_empty());
        if id != "garbled" {
            let line = audited(dir.path(), id);
            assert_eq!(line["outcome"], "refused");
            assert_eq!(line["reason"]["code"], want, "{id}");
            assert!(line["written"].is_null(), "{id}: nothing was written");
        }
    }
    let all = read_jsonl(&dir.path().join("audit.jsonl"));
    assert!(
        all.iter()
            .any(|l| l["reason"]["code"] == "malformed" && l["outcome"] == "refused"),
        "a malformed command is audited too: {all:?}"
    );
    // Nothing changed on the device.
    assert_eq!(setpoint(), json!(2.5));
    assert_eq!(modbus_read(port, &["holding", "10", "u16"]), json!(100));
    assert_eq!(speed(), json!(50));

    // Rate limit (a burst of 2, then 1 per 1000 s): two writes of `speed` go through, the
    // third is refused.
    for (id, v) in [("rate-1", 59), ("rate-2", 60)] {
        let ok = req
            .send(
                &set("speed"),
                json!({"id": id, "value": v, "requester": "mes"}),
            )
            .await;
        assert_eq!(outcome(&ok), "verified", "{ok:#}");
    }
    let third = req
        .send(
            &set("speed"),
            json!({"id": "rate-3", "value": 61, "requester": "mes"}),
        )
        .await;
    assert_eq!(
        (outcome(&third), reason(&third)),
        ("refused", "tag-rate-limited"),
        "{third:#}"
    );
    assert_eq!(
        audited(dir.path(), "rate-3")["reason"]["code"],
        "tag-rate-limited"
    );
    assert_eq!(speed(), json!(60));

    // A dry run passes every check and writes nothing.
    let dry = req
        .send(
            &set("setpoint"),
            json!({"id": "dry", "value": 4.0, "requester": "mes", "dry_run": true, "expected_current": 2.5}),
        )
        .await;
    assert_eq!(outcome(&dry), "dry-run", "{dry:#}");
    assert_eq!(setpoint(), json!(2.5));
    // Compare-and-set with the right current value writes.
    let cas = req
        .send(
            &set("setpoint"),
            json!({"id": "cas-ok", "value": 4.0, "requester": "mes", "expected_current": 2.5}),
        )
        .await;
    assert_eq!(outcome(&cas), "verified", "{cas:#}");
    assert!(cas["checks"]
        .as_array()
        .unwrap()
        .contains(&json!("compare-and-set")));
    assert_eq!(setpoint(), json!(4.0));
    running.handle.stop();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_swallows_the_write_is_never_reported_verified() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/peers/modbus_write_blackhole.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut device = Peer::start(cmd, port);
    let site = unique("wg");
    let path = format!("plant/{site}/a1/l1/press1/speed");
    let body = format!(
        r#"
[sources.plc]
type = "modbus"

[[sources.plc.devices]]
name = "press1"
host = "127.0.0.1"
port = {port}
interval_ms = 100
timeout_ms = 300
reconnect_min_ms = 100
reconnect_max_ms = 200

[[sources.plc.devices.registers]]
tag = "{path}"
address = 0

[writes]
audit_path = "audit.jsonl"

[writes.sources.plc]
allow = ["{path}"]
"#
    );
    let running = start(dir.path(), &site, &body).await;
    wait_for_tags(&running, std::slice::from_ref(&path)).await;
    let mut req = Requester::connect(&site).await;
    let reply = req
        .send(
            &format!("{path}/set"),
            json!({"id": "swallowed", "value": 8, "requester": "mes"}),
        )
        .await;
    // The read before the write was answered (7); the write never was.
    assert_eq!(reply["old"]["value"], json!(7.0), "{reply:#}");
    assert_eq!(outcome(&reply), "unverified", "{reply:#}");
    assert_eq!(reason(&reply), "write-failed", "{reply:#}");
    assert!(
        reply["reason"]["detail"]
            .as_str()
            .unwrap()
            .contains("timeout"),
        "{reply:#}"
    );
    assert_eq!(audited(dir.path(), "swallowed")["outcome"], "unverified");

    // The device gone altogether: nothing is sent, nothing is verified.
    device.kill();
    let gone = req
        .send(
            &format!("{path}/set"),
            json!({"id": "gone", "value": 9, "requester": "mes"}),
        )
        .await;
    assert_ne!(outcome(&gone), "verified", "{gone:#}");
    assert_eq!(
        (outcome(&gone), reason(&gone)),
        ("refused", "device-unavailable"),
        "{gone:#}"
    );
    running.handle.stop();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_values_are_written_with_the_node_data_type_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/peers/opcua_server.py"))
        .arg(port.to_string())
        .arg("--writable")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Peer::start(cmd, port);
    let site = unique("wo");
    let p = |m: &str| format!("plant/{site}/a1/l1/press1/{m}");
    let body = format!(
        r#"
[sources.dcs]
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/ferrule/"
pki_dir = "pki"
publishing_interval_ms = 100

[[sources.dcs.nodes]]
tag = "{bar}"
node_id = "ns=2;s=Line1.Press1.Bar"

[[sources.dcs.nodes]]
tag = "{int16}"
node_id = "ns=2;s=Line1.Int16"

[[sources.dcs.nodes]]
tag = "{byte}"
node_id = "ns=2;s=Line1.Byte"

[[sources.dcs.nodes]]
tag = "{running}"
node_id = "ns=2;s=Line1.Running"

[writes]
audit_path = "audit.jsonl"

[writes.sources.dcs]
allow = ["{bar}", "{int16}", "{byte}"]
"#,
        bar = p("bar"),
        int16 = p("int16"),
        byte = p("byte"),
        running = p("running"),
    );
    let running = start(dir.path(), &site, &body).await;
    wait_for_tags(&running, &["bar", "int16", "byte", "running"].map(p)).await;
    let mut req = Requester::connect(&site).await;

    let bar = req
        .send(
            &format!("{}/set", p("bar")),
            json!({"id": "bar", "value": 6.25, "requester": "scheduler"}),
        )
        .await;
    assert_eq!(outcome(&bar), "verified", "{bar:#}");
    assert_eq!(bar["old"]["raw"], "Double(5.5)");
    assert_eq!(
        opcua_read(port, "ns=2;s=Line1.Press1.Bar"),
        (json!(6.25), "Double".to_string())
    );
    let int16 = req
        .send(
            &format!("{}/set", p("int16")),
            json!({"id": "int16", "value": -12, "requester": "scheduler"}),
        )
        .await;
    assert_eq!(outcome(&int16), "verified", "{int16:#}");
    // Written as the node's own type, not as a double.
    assert_eq!(
        opcua_read(port, "ns=2;s=Line1.Int16"),
        (json!(-12), "Int16".to_string())
    );
    let byte = req
        .send(
            &format!("{}/set", p("byte")),
            json!({"id": "byte", "value": 300, "requester": "scheduler"}),
        )
        .await;
    assert_eq!(
        (outcome(&byte), reason(&byte)),
        ("refused", "invalid-value"),
        "{byte:#}"
    );
    assert_eq!(opcua_read(port, "ns=2;s=Line1.Byte").0, json!(200));
    let not_listed = req
        .send(
            &format!("{}/set", p("running")),
            json!({"id": "running", "value": false, "requester": "scheduler"}),
        )
        .await;
    assert_eq!(reason(&not_listed), "not-allow-listed", "{not_listed:#}");
    assert_eq!(opcua_read(port, "ns=2;s=Line1.Running").0, json!(true));
    for id in ["bar", "int16", "byte", "running"] {
        audited(dir.path(), id);
    }
    running.handle.stop();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_commands_are_executed_and_answered_on_the_reply_topic() {
    use ferrule_tests::kafka::{create_topic, read, tansu};
    let dir = tempfile::tempdir().unwrap();
    let broker = tansu();
    create_topic(broker.port, "commands", 1);
    create_topic(broker.port, "replies", 1);
    let port = free_port();
    let _device = pymodbus(
        dir.path(),
        port,
        &json!({"holding": [{"address": 0, "type": "u16", "value": 10}, {"address": 1, "type": "u16", "value": 20}]}),
    );
    let site = unique("wk");
    let speed = format!("plant/{site}/a1/l1/press1/speed");
    let other = format!("plant/{site}/a1/l1/press1/other");
    let body = format!(
        r#"
[sources.plc]
type = "modbus"

[[sources.plc.devices]]
name = "press1"
host = "127.0.0.1"
port = {port}
interval_ms = 100

[[sources.plc.devices.registers]]
tag = "{speed}"
address = 0

[[sources.plc.devices.registers]]
tag = "{other}"
address = 1

[writes]
audit_path = "audit.jsonl"

[writes.sources.plc]
allow = ["{speed}"]

[writes.kafka]
brokers = "127.0.0.1:{kafka}"
topic = "commands"
reply_topic = "replies"
properties = {{ "auto.offset.reset" = "earliest" }}
"#,
        kafka = broker.port
    );
    let running = start(dir.path(), &site, &body).await;
    wait_for_tags(&running, &[speed.clone(), other.clone()]).await;
    let produce = |key: &str, corr: &str, body: Value| {
        let ok = Command::new(python())
            .arg(repo_root().join("tests/peers/kafka_command.py"))
            .arg(format!("127.0.0.1:{}", broker.port))
            .args(["commands", key, corr])
            .arg(body.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kafka_command.py failed");
    };
    produce(
        &speed,
        "c-1",
        json!({"id": "k1", "value": 77, "requester": "scheduler"}),
    );
    produce(
        &other,
        "c-2",
        json!({"id": "k2", "value": 5, "requester": "scheduler"}),
    );
    let replies = tokio::task::spawn_blocking(move || {
        let r = read(broker.port, &["replies"], 2, 60);
        drop(broker);
        r
    })
    .await
    .unwrap();
    assert_eq!(replies.len(), 2, "{replies:?}");
    let k1 = replies.iter().find(|r| r.key == "k1").expect("reply to k1");
    assert_eq!(k1.value["outcome"], "verified", "{k1:?}");
    assert_eq!(k1.headers["correlation_id"], "c-1");
    let k2 = replies.iter().find(|r| r.key == "k2").expect("reply to k2");
    assert_eq!(k2.value["reason"]["code"], "not-allow-listed", "{k2:?}");
    assert_eq!(k2.headers["correlation_id"], "c-2");
    assert_eq!(modbus_read(port, &["holding", "0", "u16"]), json!(77));
    assert_eq!(modbus_read(port, &["holding", "1", "u16"]), json!(20));
    assert_eq!(
        audited(dir.path(), "k2")["reason"]["code"],
        "not-allow-listed"
    );
    running.handle.stop();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_plane_converts_units_back_and_refuses_by_limit_and_interlock() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _device = pymodbus(
        dir.path(),
        port,
        &json!({"holding": [
            {"address": 0, "type": "f32", "value": 2.5},
            {"address": 10, "type": "u16", "value": 0},
        ]}),
    );
    let site = unique("wc");
    let setpoint = format!("plant/{site}/a1/l1/press7/setpoint");
    let mode = format!("plant/{site}/a1/l1/press7/mode");
    let dist = repo_root().join("dist/plugins");
    let body = format!(
        r#"
[sources.plc]
type = "modbus"

[[sources.plc.devices]]
name = "press7"
host = "127.0.0.1"
port = {port}
interval_ms = 100

[[sources.plc.devices.registers]]
tag = "{site}.A1.L1.Press7.Setpoint"
address = 0
type = "f32"
unit = "bar"

[[sources.plc.devices.registers]]
tag = "{site}.A1.L1.Press7.Mode"
address = 10

[[stages]]
name = "normalize"
plugin = "{dist}/tag_normalizer.wasm"
[[stages.config.rules]]
pattern = '(?P<site>[^.]+)\.(?P<area>[^.]+)\.(?P<line>[^.]+)\.(?P<device>[^.]+)\.(?P<metric>[^.]+)'
path = "plant/{{site}}/{{area}}/{{line}}/{{device}}/{{metric}}"

[[stages]]
name = "units"
plugin = "{dist}/unit_converter.wasm"
[stages.config.targets]
pressure = "kPa"

[[stages]]
name = "validate"
plugin = "{dist}/validator.wasm"
[[stages.config.rules]]
match = "plant/*/*/*/*/setpoint"
low = 0.0
high = 500.0
[[stages.config.interlocks]]
match = "plant/*/*/*/press7/setpoint"
requires = "{mode}"
equals = 1.0

[writes]
audit_path = "audit.jsonl"

[writes.sources.plc]
allow = ["plant/{site}/a1/l1/press7/*"]
tag_rate = {{ per_second = 10.0, burst = 10 }}
"#,
        dist = dist.display()
    );
    let running = start(dir.path(), &site, &body).await;
    wait_for_tags(&running, &[setpoint.clone(), mode.clone()]).await;
    let writes = running.handle.writes().unwrap().clone();
    // The pipeline reports the setpoint in kPa.
    assert_eq!(writes.latest().latest(&setpoint).unwrap().value, 250.0);
    let mut req = Requester::connect(&site).await;
    let device = || modbus_read(port, &["holding", "0", "f32"]);

    // Interlock: mode is 0.
    let r = req
        .send(
            &format!("{setpoint}/set"),
            json!({"id": "interlocked", "value": 300.0, "requester": "mes"}),
        )
        .await;
    assert_eq!(
        (outcome(&r), reason(&r)),
        ("refused", "refused-by-stage"),
        "{r:#}"
    );
    assert_eq!(r["reason"]["stage"], "validate");
    assert!(
        r["reason"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("interlock:"),
        "{r:#}"
    );
    assert_eq!(
        audited(dir.path(), "interlocked")["reason"]["stage"],
        "validate"
    );
    assert_eq!(device(), json!(2.5));

    // Mode to 1 (no unit, no limits: the command plane passes it as it is).
    let m = req
        .send(
            &format!("{mode}/set"),
            json!({"id": "mode", "value": 1, "requester": "operator"}),
        )
        .await;
    assert_eq!(outcome(&m), "verified", "{m:#}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while writes.latest().latest(&mode).map(|l| l.value) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "mode 1 never read back by the source"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Above the validator's high limit (in kPa, the unit the command speaks).
    let r = req
        .send(
            &format!("{setpoint}/set"),
            json!({"id": "too-high", "value": 800.0, "requester": "mes"}),
        )
        .await;
    assert_eq!(reason(&r), "refused-by-stage", "{r:#}");
    assert!(
        r["reason"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("above-high-limit:"),
        "{r:#}"
    );
    assert_eq!(device(), json!(2.5));

    // 300 kPa is written as 3 bar; the compare-and-set value is converted the same way.
    let r = req
        .send(
            &format!("{setpoint}/set"),
            json!({"id": "ok", "value": 300.0, "expected_current": 250.0, "requester": "mes"}),
        )
        .await;
    assert_eq!(outcome(&r), "verified", "{r:#}");
    assert_eq!(r["device_value"], json!(3.0));
    let checks: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let (v, u) = (
        checks.iter().position(|c| *c == "on-command:validate"),
        checks.iter().position(|c| *c == "on-command:units"),
    );
    assert!(v.is_some() && v < u, "last stage first: {checks:?}");
    assert!(checks.contains(&"compare-and-set"), "{checks:?}");
    assert_eq!(device(), json!(3.0));
    running.handle.stop();
    running.wait().await.unwrap();
}
