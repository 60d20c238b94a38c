//! `ferrule discover opcua` against an independent OPC UA server (asyncua): the printed block
//! pasted into a config runs as is and delivers every variable's value; and the OPC UA
//! source's `browse` option subscribes to a folder's variables, browsing again after the
//! server restarts with more of them.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::runtime::{self, RunningPipeline};
use ferrule_tests::peers::{free_port, python, Peer};
use ferrule_tests::{ferrule_bin, read_jsonl, repo_root};
use serde_json::Value;

fn asyncua(port: u16, args: &[&str]) -> Peer {
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("tests/peers/opcua_server.py"))
        .arg(port.to_string())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Peer::start(cmd, port)
}

async fn start(dir: &Path, source: &str) -> RunningPipeline {
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0

[admin]
enabled = false

{source}

[sinks.samples]
type = "file"
path = "samples.jsonl"
"#
    );
    let cfg = HostConfig::from_text(&text, dir).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    runtime::start(&cfg).await.unwrap()
}

/// Waits (up to 60 s) until `enough` holds for the samples written so far.
async fn wait_for(dir: &Path, what: &str, enough: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let so_far = read_jsonl(&dir.join("samples.jsonl"));
        if enough(&so_far) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn good_values(samples: &[Value]) -> HashMap<String, Value> {
    let mut m = HashMap::new();
    for s in samples {
        if s["status"].as_u64() == Some(0) {
            let v = if s["text"].is_string() {
                s["text"].clone()
            } else {
                s["value"].clone()
            };
            m.insert(s["vendor_path"].as_str().unwrap().to_string(), v);
        }
    }
    m
}

/// What the asyncua peer's `Line1` folder holds (browse name → value).
fn line1() -> Vec<(&'static str, Value)> {
    vec![
        ("Line1.Press1.Bar", 5.5.into()),
        ("1001", (-42.0).into()),
        ("72962b91-fa75-4ae6-8d28-b404dc7daf63", 2.5.into()),
        ("Line1.Name", "Press 1".into()),
        ("Line1.Running", 1.0.into()),
        ("Line1.Int16", (-300.0).into()),
        ("Line1.Byte", 200.0.into()),
        ("Line1.UInt32", 4_000_000_000.0.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_opcua_prints_a_block_that_runs_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _peer = asyncua(port, &[]);
    let endpoint = format!("opc.tcp://127.0.0.1:{port}/ferrule/");
    let out = Command::new(ferrule_bin())
        .args([
            "discover",
            "opcua",
            &endpoint,
            "--under",
            "nsu=urn:ferrule:test;s=Line1",
        ])
        .args(["--source", "line1", "--pki-dir"])
        .arg(dir.path().join("discover-pki"))
        .output()
        .unwrap();
    let block = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "discover failed: {}\n{block}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every variable of the folder, nothing of the server's own nodes.
    for (tag, _) in line1() {
        assert!(
            block.contains(&format!("tag = \"{tag}\"")),
            "{tag} missing:\n{block}"
        );
    }
    assert!(
        block.contains("node_id = \"nsu=urn:ferrule:test;s=Counter\""),
        "{block}"
    );
    assert!(!block.contains("ServerStatus"), "{block}");
    let nodes = block.matches("[[sources.line1.nodes]]").count();
    assert_eq!(nodes, 13, "{block}");
    // Pasted as is.
    let source = block.clone();
    let running = start(dir.path(), &source).await;
    wait_for(dir.path(), "every discovered variable good", |s| {
        let good = good_values(s);
        line1().iter().all(|(t, _)| good.contains_key(*t))
    })
    .await;
    running.handle.stop();
    running.wait().await.unwrap();
    let good = good_values(&read_jsonl(&dir.path().join("samples.jsonl")));
    for (tag, want) in line1() {
        assert_eq!(good[tag], want, "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_subscribes_to_a_folder_and_browses_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut peer = asyncua(port, &[]);
    let source = format!(
        r#"[sources.line1]
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/ferrule/"
pki_dir = "pki"
publishing_interval_ms = 100
reconnect_min_ms = 200
reconnect_max_ms = 1000
browse = "nsu=urn:ferrule:test;s=Line1"
"#
    );
    let running = start(dir.path(), &source).await;
    wait_for(dir.path(), "the folder's variables", |s| {
        let good = good_values(s);
        line1().iter().all(|(t, _)| good.contains_key(*t))
    })
    .await;
    let good = good_values(&read_jsonl(&dir.path().join("samples.jsonl")));
    for (tag, want) in line1() {
        assert_eq!(good[tag], want, "{tag}");
    }
    assert!(!good.contains_key("Many.0"));
    // The server comes back with three more variables in the folder.
    peer.kill();
    let _peer = asyncua(port, &["--many", "3"]);
    wait_for(dir.path(), "the variables added on the server", |s| {
        let good = good_values(s);
        (0..3).all(|k| good.contains_key(&format!("Many.{k}")))
    })
    .await;
    running.handle.stop();
    running.wait().await.unwrap();
    let samples = read_jsonl(&dir.path().join("samples.jsonl"));
    let good = good_values(&samples);
    for k in 0..3 {
        let v = good[&format!("Many.{k}")].as_f64().unwrap();
        assert_eq!(v % 10000.0, k as f64, "Many.{k} = {v}");
    }
    // The gap shows as bad quality for the browsed tags too.
    assert!(samples
        .iter()
        .any(|s| s["vendor_path"] == "Line1.Press1.Bar" && s["quality"] == "bad"));
}
