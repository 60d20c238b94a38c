//! The admin endpoint over HTTP: mutating calls refused without the bearer token, health and
//! readiness (a sink whose broker is down makes the host not ready), recent dead-letters,
//! `/metrics` parsed by the official Prometheus Python parser with values matching the status,
//! the status page in headless Chromium, and the plugin lifecycle under load (load, swap,
//! rollback, quarantine, release, shadow runs with promotion and abandonment) with every
//! sample accounted for.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::sources::simulator::{describe_tag, SimulatorConfig};
use ferrule::{pipeline, runtime};
use ferrule_tests::peers;
use ferrule_tests::{account, plugin, read_jsonl, reference_stages_toml, repo_root};
use serde_json::{json, Value};

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
    let running = runtime::start(&config).await.unwrap();
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
    // Call costs: the latency histogram (per plane), CPU, memory, failures by kind.
    let calls = &validate.calls;
    assert!(calls.sample_plane.count > 0);
    assert_eq!(
        get("ferrule_plugin_call_seconds_count{plane=\"sample\",stage=\"validate\"}"),
        calls.sample_plane.count as f64
    );
    assert_eq!(
        get("ferrule_plugin_call_seconds_bucket{le=\"+Inf\",plane=\"sample\",stage=\"validate\"}"),
        calls.sample_plane.count as f64
    );
    let within_1ms = calls
        .sample_plane
        .buckets
        .iter()
        .take_while(|(bound, _)| *bound <= 0.001)
        .map(|(_, n)| n)
        .sum::<u64>();
    assert_eq!(
        get("ferrule_plugin_call_seconds_bucket{le=\"0.001\",plane=\"sample\",stage=\"validate\"}"),
        within_1ms as f64
    );
    assert!(
        (get("ferrule_plugin_call_seconds_sum{plane=\"sample\",stage=\"validate\"}")
            - calls.sample_plane.sum_s)
            .abs()
            < 1e-6
    );
    assert!(get("ferrule_plugin_call_seconds_count{plane=\"tag\",stage=\"normalize\"}") > 0.0);
    assert!(get("ferrule_plugin_memory_bytes{stage=\"validate\"}") >= 65536.0);
    assert_eq!(
        get("ferrule_plugin_failures_total{kind=\"trap\",stage=\"validate\"}"),
        0.0
    );
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
    let running = runtime::start(&config).await.unwrap();
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
    // Call latency: the sample-plane stages show a p99 bound; no shadow runs.
    assert!(dom.contains("<th>on-batch p99</th>"));
    assert!(dom.matches(" µs</td>").count() >= 2, "{dom}");
    assert_eq!(dom.matches("<td class=\"shadow\">–</td>").count(), 4);
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

/// Equal but for the last bits (serde_json's default float parsing is not exact).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(1.0)
}

/// A host on a temporary dir with the admin endpoint served, token `TOKEN`.
struct Host {
    dir: tempfile::TempDir,
    running: Option<runtime::RunningPipeline>,
    handle: runtime::PipelineHandle,
    base: String,
    http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Host {
    async fn start(source: &str, stages: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
queue_batches = 2
[admin]
enabled = false
token = "{TOKEN}"
[reference_data.assets]
path = "{assets}"
{source}
{stages}
[sinks.samples]
type = "file"
path = "samples.jsonl"
[dead_letter]
type = "file"
path = "dead-letter.jsonl"
"#,
            assets = repo_root().join("examples/assets.csv").display(),
        );
        let config = HostConfig::from_text(&text, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
        let running = runtime::start(&config).await.unwrap();
        let handle = running.handle.clone();
        let (addr, server) = ferrule::admin::serve(
            "127.0.0.1:0".parse().unwrap(),
            handle.clone(),
            config.admin.token.clone(),
        )
        .await
        .unwrap();
        Host {
            dir,
            running: Some(running),
            handle,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            server,
        }
    }

    /// POSTs with the token; returns (status, JSON body or null).
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn stage(&self, name: &str) -> pipeline::StageStatus {
        self.handle
            .status()
            .stages
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
    }

    fn written(&self) -> u64 {
        self.handle.status().written["samples"]
    }

    /// Stops the host; returns what the source produced.
    async fn stop(&mut self) -> runtime::PipelineStatus {
        self.handle.stop();
        let status = self.running.take().unwrap().wait().await.unwrap();
        self.server.abort();
        status
    }
}

/// Waits until `f` holds (checked every 50 ms), or fails naming `what`.
async fn until(what: &str, timeout_s: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const PACED_PLANT: &str = r#"
[sources.plant]
type = "simulator"
tags = 1000
interval_ms = 10
batch_size = 500
start_ns = 1700000000000000000
"#;

/// The whole lifecycle through HTTP while 100 k samples/s flow: load (checked, not
/// installed), swap to the candidate, roll back, a refused swap, a manual quarantine that
/// holds the stream, release. Every sample produced ends in the sink or the dead-letter once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_swap_rollback_quarantine_and_release_through_the_api_under_load() {
    let mut host = Host::start(PACED_PLANT, &reference_stages_toml()).await;
    let copy = host.dir.path().join("validator-next.wasm");
    std::fs::copy(plugin("validator"), &copy).unwrap();

    // Every new mutating call needs the token.
    for path in [
        "/stages/validate/load",
        "/stages/validate/quarantine",
        "/stages/validate/shadow",
        "/stages/validate/shadow/promote",
        "/stages/validate/shadow/abandon",
    ] {
        let r = host
            .http
            .post(format!("{}{path}", host.base))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }

    until("traffic", 20, || host.written() > 5_000).await;
    let running = host.stage("validate");

    // Load: checked and kept as the candidate, nothing installed.
    let (code, loaded) = host
        .post("/stages/validate/load", json!({"plugin": copy}))
        .await;
    assert_eq!(code, 200, "{loaded}");
    assert_eq!(loaded["plugin"], "validator");
    assert_eq!(loaded["digest"], running.digest);
    assert_eq!(loaded["contract"], "0.2.0");
    let (_, stages) = host.get("/stages").await;
    let validate = stages
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "validate")
        .unwrap();
    assert_eq!(
        validate["candidate"],
        format!("validator@{}", running.version)
    );
    assert_eq!(validate["swaps"], 0);
    assert_eq!(validate["limits"]["memory_mib"], 64);
    assert_eq!(validate["path"], running.path, "load must not install");

    // Swap to the candidate, then roll back.
    let (code, swapped) = host.post("/stages/validate/swap", json!({})).await;
    assert_eq!(code, 200, "{swapped}");
    assert_eq!(host.stage("validate").path, copy.display().to_string());
    assert!(host.stage("validate").candidate.is_none());
    let (code, _) = host.post("/stages/validate/swap", json!({})).await;
    assert_eq!(code, 409, "a second swap has no candidate left");
    // A body is read whatever its Content-Type, and a bad one is named, not ignored.
    let r = host
        .http
        .post(format!("{}/stages/validate/swap", host.base))
        .bearer_auth(TOKEN)
        .body(json!({"plugn": copy}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("unknown field `plugn`"), "{text}");
    let (code, back) = host.post("/stages/validate/rollback", json!({})).await;
    assert_eq!(code, 200, "{back}");
    assert_eq!(host.stage("validate").path, running.path);
    assert_eq!(host.stage("validate").swaps, 2);

    // A component speaking another contract is refused by name; the running one stays.
    let (code, refused) = host
        .post(
            "/stages/validate/swap",
            json!({"plugin": plugin("fixture_wrong_contract")}),
        )
        .await;
    assert_eq!(code, 422);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("ferrule:plugin@0.3.0"),
        "{refused}"
    );
    assert_eq!(host.stage("validate").path, running.path);

    // Manual quarantine with the `hold` policy: the stream stops, nothing is dropped.
    let (code, body) = host
        .post(
            "/stages/validate/quarantine",
            json!({"reason": "recalibrating"}),
        )
        .await;
    assert_eq!(code, 204, "{body}");
    let (code, ready) = host.get("/ready").await;
    assert_eq!(code, 503);
    assert!(
        ready["reasons"][0]
            .as_str()
            .unwrap()
            .contains("quarantined by the operator: recalibrating"),
        "{ready}"
    );
    let (code, _) = host.post("/stages/validate/quarantine", json!({})).await;
    assert_eq!(code, 409, "quarantining twice is refused");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held_at = host.written();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(host.written(), held_at, "a held stage must stop the stream");
    let (code, _) = host.post("/stages/validate/release", json!({})).await;
    assert_eq!(code, 204);
    until("the stream to resume", 20, || {
        host.written() > held_at + 5_000
    })
    .await;
    assert_eq!(host.get("/ready").await.0, 200);
    assert_eq!(host.stage("validate").quarantines, 1);

    let status = host.stop().await;
    account(host.dir.path(), status.produced["plant"] as usize);
}

/// Two versions of a plugin: the scaler fixture 1.0.0 live (rounds to one decimal), 2.0.0 in
/// shadow (exact, rejects implausible values and raw PLC tags). The report names the
/// differences, exactly; the sink sees only the live version until the promotion, which
/// installs the shadow instance; no sample is lost or doubled across it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_run_reports_the_differences_between_two_versions_and_is_promoted() {
    let tags = 200u32;
    let source = format!(
        r#"
[sources.plant]
type = "simulator"
tags = {tags}
interval_ms = 20
batch_size = 100
spike_every = 97
start_ns = 1700000000000000000
"#
    );
    let stages = format!(
        "[[stages]]\nname = \"scale\"\nplugin = \"{}\"\nconfig = {{ factor = 0.5 }}\n",
        plugin("fixture_scaler").display()
    );
    let mut host = Host::start(&source, &stages).await;
    until("traffic", 20, || host.written() > 1_000).await;
    let live_tag_calls = host.stage("scale").calls.tag_plane.count;
    assert!(live_tag_calls > 0);

    let (code, started) = host
        .post(
            "/stages/scale/shadow",
            json!({"plugin": plugin("fixture_scaler_v2")}),
        )
        .await;
    assert_eq!(code, 200, "{started}");
    assert_eq!(started["version"], "2.0.0");
    assert_eq!(started["live"], "scaler@1.0.0");
    assert_eq!(started["state"], "running");

    // PLC-addressed tags (every 10th device) are refused by version 2 only.
    let plc: Vec<String> = (0..tags)
        .map(|i| describe_tag(&SimulatorConfig::default(), "plant", i).vendor_path)
        .filter(|p| p.starts_with("PLC"))
        .collect();
    assert!(!plc.is_empty());
    assert_eq!(started["tags_compared"], tags);
    assert_eq!(started["tags_differing"], plc.len());
    for d in started["tag_diffs"].as_array().unwrap() {
        assert!(
            plc.contains(&d["vendor_path"].as_str().unwrap().to_string()),
            "{d}"
        );
        assert_eq!(d["live"], "accept scaled=yes");
        assert!(
            d["shadow"]
                .as_str()
                .unwrap()
                .starts_with("reject: raw PLC address"),
            "{d}"
        );
    }

    let report = loop {
        let (code, r) = host.get("/stages/scale/shadow").await;
        assert_eq!(code, 200);
        if r["samples_compared"].as_u64().unwrap() >= 20_000 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let n = |k: &str| report[k].as_u64().unwrap();
    assert_eq!(
        n("samples_compared"),
        n("samples_same") + n("samples_differing")
    );
    assert_eq!(
        n("samples_differing"),
        n("value_differs")
            + n("quality_differs")
            + n("rejected_only_by_live")
            + n("rejected_only_by_shadow")
            + n("reason_differs")
    );
    assert!(n("value_differs") > n("samples_compared") / 2, "{report}");
    assert!(n("rejected_only_by_shadow") > 0, "{report}");
    assert_eq!(n("rejected_only_by_live"), 0, "{report}");
    assert_eq!(n("shadow_failures"), 0, "{report}");
    let diffs = report["sample_diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 100);
    let mut kinds = (0, 0, 0);
    for d in diffs {
        let input = d["input"].as_f64();
        let live = &d["live"];
        let shadow = &d["shadow"];
        match shadow["outcome"].as_str().unwrap() {
            "rejected" => {
                let reason = shadow["reason"].as_str().unwrap();
                if reason == "implausible" {
                    assert!(input.unwrap() * 0.5 > 1000.0, "{d}");
                    kinds.0 += 1;
                } else {
                    assert!(reason.starts_with("tag-rejected: raw PLC address"), "{d}");
                    assert!(plc.contains(&d["vendor_path"].as_str().unwrap().to_string()));
                    kinds.1 += 1;
                }
            }
            "passed" => {
                let exact = input.unwrap() * 0.5;
                assert!(close(shadow["value"].as_f64().unwrap(), exact), "{d}");
                assert!(
                    close(
                        live["value"].as_f64().unwrap(),
                        (exact * 10.0).round() / 10.0
                    ),
                    "{d}"
                );
                kinds.2 += 1;
            }
            other => panic!("unknown outcome {other}"),
        }
        if let (Some(input), "passed") = (input, live["outcome"].as_str().unwrap()) {
            let v = live["value"].as_f64().unwrap();
            assert!(close(v, (input * 0.5 * 10.0).round() / 10.0), "{d}");
        }
    }
    assert!(kinds.2 > 0, "no value differences among the examples");
    // The shadow's calls are metered apart from the live version's.
    assert!(report["calls"]["sample_plane"]["count"].as_u64().unwrap() > 0);
    assert_eq!(host.stage("scale").calls.tag_plane.count, live_tag_calls);

    // The live version alone reached the sink so far: every value rounded to one decimal.
    let before = read_jsonl(&host.dir.path().join("samples.jsonl"));
    assert!(!before.is_empty());
    for s in &before {
        if let Some(v) = s["value"].as_f64() {
            assert!(
                ((v * 10.0).round() - v * 10.0).abs() < 1e-6,
                "unrounded {s}"
            );
        }
    }

    // The shadow run shows on the status page, in /stages and in the metrics.
    let page = host
        .http
        .get(format!("{}/", host.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<td class=\"shadow\">scaler@2.0.0 (running): "),
        "{page}"
    );
    assert!(
        page.contains(&format!("samples differ, {} tags</td>", plc.len())),
        "{page}"
    );
    let (_, stages) = host.get("/stages").await;
    assert_eq!(stages[0]["shadow"]["plugin"], "scaler@2.0.0");
    let (_, metrics) = (
        0,
        host.http
            .get(format!("{}/metrics", host.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(
        metrics.contains(
            "ferrule_shadow_samples_differing_total{stage=\"scale\",shadow=\"scaler@2.0.0\"}"
        ),
        "{metrics}"
    );

    // Promote: version 2 goes live with the state it built.
    let (code, promoted) = host.post("/stages/scale/shadow/promote", json!({})).await;
    assert_eq!(code, 200, "{promoted}");
    assert_eq!(promoted["from"], "scaler@1.0.0");
    assert_eq!(promoted["to"], "scaler@2.0.0");
    assert_eq!(promoted["retagged"], plc.len());
    let (_, after) = host.get("/stages/scale/shadow").await;
    assert_eq!(after["state"], "promoted");
    let live = host.stage("scale");
    assert_eq!(live.version, "2.0.0");
    assert_eq!(live.previous.as_deref(), Some("scaler@1.0.0"));
    let at_promotion = host.written();
    until("samples through version 2", 20, || {
        host.written() > at_promotion + 5_000
    })
    .await;
    let (code, _) = host.post("/stages/scale/shadow/promote", json!({})).await;
    assert_eq!(code, 409, "nothing left to promote");

    let status = host.stop().await;
    let (samples, dead) = account(host.dir.path(), status.produced["plant"] as usize);
    assert!(
        samples.iter().any(|s| s["value"]
            .as_f64()
            .is_some_and(|v| ((v * 10.0).round() - v * 10.0).abs() > 1e-6)),
        "no unrounded value after the promotion"
    );
    let plc_dead = dead
        .iter()
        .filter(|d| d["reason"] == "tag-rejected" && d["plugin_version"] == "2.0.0")
        .count();
    assert!(plc_dead > 0, "version 2 refuses PLC tags once live");
    assert!(dead
        .iter()
        .any(|d| d["reason"] == "implausible" && d["plugin_version"] == "2.0.0"));
}

/// A shadow version that fails (the hostile fixture trapping) stops itself and is reported
/// failed; the live version is never affected; abandoning it drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_stops_itself_without_touching_the_live_stream() {
    let source = r#"
[sources.plant]
type = "simulator"
tags = 100
interval_ms = 20
batch_size = 100
start_ns = 1700000000000000000
spike_every = 0
nan_every = 0
bad_quality_every = 0
"#;
    let stages = format!(
        "[[stages]]\nname = \"scale\"\nplugin = \"{}\"\nconfig = {{ factor = 2.0 }}\n",
        plugin("fixture_scaler").display()
    );
    let mut host = Host::start(source, &stages).await;
    until("traffic", 20, || host.written() > 500).await;
    let (code, r) = host
        .post(
            "/stages/scale/shadow",
            json!({"plugin": plugin("fixture_hostile"), "config": {"mode": "trap"}}),
        )
        .await;
    assert_eq!(code, 200, "{r}");
    let report = loop {
        let (_, r) = host.get("/stages/scale/shadow").await;
        if r["state"] == "failed" {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report["shadow_failures"], 3, "{report}");
    assert!(
        report["reason"].as_str().unwrap().contains("trap"),
        "{report}"
    );
    assert_eq!(report["samples_compared"], 0);
    let (code, refused) = host.post("/stages/scale/shadow/promote", json!({})).await;
    assert_eq!(code, 409, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("abandon"),
        "{refused}"
    );
    let (code, abandoned) = host.post("/stages/scale/shadow/abandon", json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(abandoned["state"], "abandoned");
    let live = host.stage("scale");
    assert_eq!(
        (live.version.as_str(), live.failures, live.quarantines),
        ("1.0.0", 0, 0)
    );
    let status = host.stop().await;
    let (samples, dead) = account(host.dir.path(), status.produced["plant"] as usize);
    assert!(dead.is_empty(), "{:?}", &dead[..dead.len().min(3)]);
    assert!(!samples.is_empty());
}
