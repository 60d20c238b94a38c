//! The admin endpoint over HTTP: mutating calls refused without the bearer token, health and
//! readiness (a sink whose broker is down makes the host not ready), recent dead-letters, and
//! `/metrics` parsed by the official Prometheus Python parser with values matching the status.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::pipeline;
use ferrule_tests::peers;
use ferrule_tests::{reference_stages_toml, repo_root};

const TOKEN: &str = "admin-test-token-42";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_health_ready_dead_letters_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = peers::free_port();
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
[admin]
enabled = false
token = "{TOKEN}"
[reference_data.assets]
path = "{assets}"
[sources.plant]
type = "simulator"
tags = 300
interval_ms = 50
{stages}
[sinks.samples]
type = "file"
path = "samples.jsonl"
[sinks.uplink]
type = "mqtt"
[sinks.uplink.broker]
port = {mqtt_port}
keep_alive_s = 5
[dead_letter]
type = "file"
path = "dead.jsonl"
"#,
        assets = repo_root().join("examples/assets.csv").display(),
        stages = reference_stages_toml(),
    );
    let config = HostConfig::from_text(&text, dir.path()).unwrap();
    let running = pipeline::start(&config).await.unwrap();
    let handle = running.handle.clone();
    let (addr, server) = ferrule::admin::serve(
        "127.0.0.1:0".parse().unwrap(),
        handle.clone(),
        config.admin.token.clone(),
    )
    .await
    .unwrap();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    // Mutating calls: 401 without the token or with a wrong one, for every one of them.
    for path in [
        "/stages/validate/swap",
        "/stages/validate/rollback",
        "/stages/validate/release",
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .json(&serde_json::json!({"plugin": "/nonexistent.wasm"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth("not-the-token")
            .json(&serde_json::json!({"plugin": "/nonexistent.wasm"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    // With the token the call goes through to the pipeline (here: refused for a missing file).
    let r = http
        .post(format!("{base}/stages/validate/swap"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"plugin": "/nonexistent.wasm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // Live, but not ready: the MQTT broker is not there.
    assert_eq!(
        http.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.get(format!("{base}/ready")).send().await.unwrap();
        if r.status() == 503 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(
                body["reasons"][0]
                    .as_str()
                    .unwrap()
                    .contains("`uplink` is not connected"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never reported not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The broker comes up: ready.
    let _broker = ferrule_tests::peers::mosquitto_on(dir.path(), mqtt_port, "");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/ready"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Recent dead-letters (the validator rejects out-of-range values and NaN).
    let deadline = Instant::now() + Duration::from_secs(20);
    let letters: Vec<serde_json::Value> = loop {
        let l: Vec<serde_json::Value> = http
            .get(format!("{base}/dead-letters"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !l.is_empty() {
            break l;
        }
        assert!(Instant::now() < deadline, "no dead-letters shown");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        letters.iter().all(|l| l["stage"] == "validate"),
        "{letters:?}"
    );

    // Metrics, parsed by an independent parser, agree with the status.
    handle.stop();
    let status = running.wait().await.unwrap();
    let body = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut parser = Command::new(peers::python())
        .arg(repo_root().join("tests/peers/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = parser.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused:\n{body}"
    );
    let m: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap();
    let get = |k: &str| {
        m.get(k)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("no metric {k} in {:?}", m.keys().collect::<Vec<_>>()))
    };
    assert_eq!(
        get("ferrule_source_samples_total{source=\"plant\"}"),
        status.produced["plant"] as f64
    );
    assert_eq!(
        get("ferrule_dead_letters_total{}"),
        status.dead_letters as f64
    );
    let validate = status.stages.iter().find(|s| s.name == "validate").unwrap();
    assert_eq!(
        get("ferrule_stage_rejected_total{stage=\"validate\"}"),
        validate.rejected as f64
    );
    assert_eq!(
        get("ferrule_stage_samples_in_total{stage=\"units\"}"),
        status
            .stages
            .iter()
            .find(|s| s.name == "units")
            .unwrap()
            .samples_in as f64
    );
    assert_eq!(
        get("ferrule_sink_samples_total{sink=\"uplink\"}"),
        status.sinks["uplink"].written as f64
    );
    assert!(get("ferrule_sink_reconnects_total{sink=\"uplink\"}") >= 1.0);
    assert_eq!(
        get("ferrule_buffer_max_bytes{sink=\"uplink\"}"),
        (1u64 << 30) as f64
    );
    assert!(
        m.contains_key("ferrule_buffer_dropped_samples_total{reason=\"overflow\",sink=\"uplink\"}")
    );
    assert_eq!(get("ferrule_stage_quarantined{stage=\"validate\"}"), 0.0);
    server.abort();
}

/// The status page rendered by a real browser (headless Chromium): stages with their plugin
/// versions, the sink's link state and buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_headless_chromium() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("chromium is missing: scripts/peers installs it");
    let dir = tempfile::tempdir().unwrap();
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
tags = 120
interval_ms = 50
{stages}
[sinks.uplink]
type = "mqtt"
[sinks.uplink.broker]
port = {port}
[dead_letter]
type = "file"
path = "dead.jsonl"
"#,
        assets = repo_root().join("examples/assets.csv").display(),
        stages = reference_stages_toml(),
        port = peers::free_port(),
    );
    let config = HostConfig::from_text(&text, dir.path()).unwrap();
    let running = pipeline::start(&config).await.unwrap();
    let handle = running.handle.clone();
    let (addr, server) =
        ferrule::admin::serve("127.0.0.1:0".parse().unwrap(), handle.clone(), None)
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--dump-dom",
                &format!("http://{addr}/"),
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dom.contains("<h1>Ferrule</h1>"),
        "no page rendered: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = handle.status();
    for st in &status.stages {
        assert!(
            dom.contains(&format!("<td>{}</td>", st.name)),
            "stage {} missing",
            st.name
        );
        assert!(
            dom.contains(&format!("<td>{}</td><td>{}</td>", st.plugin, st.version)),
            "plugin {}",
            st.plugin
        );
    }
    assert_eq!(dom.matches("class=\"stage\"").count(), 4);
    assert!(dom.contains("<td>uplink</td>"));
    assert!(
        dom.contains("disconnected"),
        "the unreachable broker is not shown"
    );
    assert!(dom.contains("120 tags"), "summary: {dom}");
    handle.stop();
    running.wait().await.unwrap();
    server.abort();
}
