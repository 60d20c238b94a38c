//! The `ferrule` binary: `check` names the offending key and line; `plugin inspect`,
//! `plugin test` and `plugin package` work on a built component (from dist/plugins, written by
//! scripts/build-plugins) or a package.

use std::path::Path;
use std::process::Command;

/// The admin token of the host the run test starts (`admin.token`).
const TOKEN: &str = "test-token-0123456789";

fn ferrule(args: &[&str]) -> (i32, String) {
    ferrule_with_env(args, &[("FERRULE_ADMIN_TOKEN", TOKEN)])
}

fn ferrule_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrule"));
    cmd.args(args).env_remove("FERRULE_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn dist(name: &str) -> String {
    // Run-time manifest dir: the target dir may be shared with another checkout.
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let p = Path::new(&manifest_dir)
        .join("../dist/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: run scripts/build-plugins",
        p.display()
    );
    p.display().to_string()
}

#[test]
fn check_names_the_offending_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[sources.plant]\ntype = \"simulator\"\nbatch_size = 0\n\n[[stages]]\nname = \"v\"\nplugin = \"nope.wasm\"\n\n[sinks.out]\ntype = \"file\"\npath = \"o.jsonl\"\n",
    )
    .unwrap();
    let (code, text) = ferrule(&["check", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("`sources.plant.batch_size` (line 3)"),
        "{text}"
    );
    assert!(text.contains("`stages[0].plugin` (line 7)"), "{text}");

    std::fs::write(
        &cfg,
        "[sinks.out]\ntype = \"file\"\npath = \"o.jsonl\"\nrotate = true\n",
    )
    .unwrap();
    let (code, text) = ferrule(&["check", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("rotate"), "{text}");

    std::fs::write(&cfg, "[sources.plant]\ntype = \"simulator\"\n[sinks.out]\ntype = \"file\"\npath = \"${NO_SUCH_VAR_FERRULE}\"\n").unwrap();
    let (code, text) = ferrule(&["check", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("line 5") && text.contains("NO_SUCH_VAR_FERRULE"),
        "{text}"
    );

    // A plugin whose init refuses the stage config: named as stages[i].config.
    std::fs::write(
        &cfg,
        format!("[sources.plant]\ntype = \"simulator\"\n[[stages]]\nname = \"u\"\nplugin = \"{}\"\n[stages.config]\nbogus = 1\n[sinks.out]\ntype = \"file\"\npath = \"o.jsonl\"\n", dist("unit_converter")),
    )
    .unwrap();
    let (code, text) = ferrule(&["check", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("`stages[0].config`") && text.contains("bogus"),
        "{text}"
    );
}

#[test]
fn plugin_inspect_and_test() {
    let (code, text) = ferrule(&["plugin", "inspect", &dist("validator")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("plugin:      validator@"), "{text}");
    assert!(
        text.contains("contract:    ferrule:plugin@0.2.0 (current)"),
        "{text}"
    );
    assert!(
        text.contains("reason:") && text.contains("above-high-limit"),
        "{text}"
    );

    let (code, text) = ferrule(&["plugin", "test", &dist("validator")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0 failed"), "{text}");

    let (code, text) = ferrule(&[
        "plugin",
        "test",
        &dist("fixture_hostile"),
        "--config",
        r#"{"mode":"trap"}"#,
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL") && text.contains("trapped"), "{text}");
}

/// `ferrule plugin package` writes a package from a component; `inspect` shows its manifest
/// and checks, `test` runs the kit on it, `check` refuses a stage that does not grant what it
/// asks for, and `inspect` refuses a tampered one.
#[test]
fn plugin_package_inspect_test_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("validator-pkg");
    let pkg_s = pkg.to_str().unwrap();
    let (code, text) = ferrule(&[
        "plugin",
        "package",
        &dist("validator"),
        "--out",
        pkg_s,
        "--capability",
        "clock",
        "--memory-mib",
        "32",
        "--vendor",
        "Acme",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("name = \"validator\""), "{text}");
    assert!(text.contains("capabilities = [\"clock\"]"), "{text}");
    let manifest = std::fs::read_to_string(pkg.join("ferrule-plugin.toml")).unwrap();
    assert!(
        manifest.contains("contract = \"ferrule:plugin@0.2.0\""),
        "{manifest}"
    );
    assert!(manifest.contains("memory_mib = 32"), "{manifest}");
    assert_eq!(
        std::fs::read(pkg.join("plugin.wasm")).unwrap(),
        std::fs::read(dist("validator")).unwrap()
    );

    let (code, text) = ferrule(&["plugin", "inspect", pkg_s]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("package:     validator "), "{text}");
    assert!(text.contains("capabilities: clock"), "{text}");
    assert!(text.contains("needs:        memory_mib ≥ 32"), "{text}");
    assert!(text.contains("checks:      ok"), "{text}");
    assert!(text.contains("plugin:      validator@"), "{text}");

    let (code, text) = ferrule(&["plugin", "test", pkg_s]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0 failed"), "{text}");

    let (code, text) = ferrule(&[
        "plugin",
        "package",
        &dist("validator"),
        "--out",
        pkg_s,
        "--capability",
        "network",
    ]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("unknown capability `network`"), "{text}");

    let cfg = dir.path().join("plant.toml");
    std::fs::write(
        &cfg,
        format!("[sources.plant]\ntype = \"simulator\"\n[[stages]]\nname = \"v\"\nplugin = \"{pkg_s}\"\n[sinks.out]\ntype = \"file\"\npath = \"o.jsonl\"\n"),
    )
    .unwrap();
    let (code, text) = ferrule(&["check", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("`stages[0].plugin`: package validator ")
            && text.contains("asks for capability `clock`, which stage `v` does not grant"),
        "{text}"
    );

    std::fs::copy(dist("unit_converter"), pkg.join("plugin.wasm")).unwrap();
    let (code, text) = ferrule(&["plugin", "inspect", pkg_s]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("package:     validator "), "{text}");
    assert!(
        text.contains("checks:      refused: package validator ")
            && text.contains("tampered with or corrupt"),
        "{text}"
    );
}

/// `ferrule run` as an operator runs it, steered through the admin endpoint by `ferrule plugin
/// swap|rollback|load|shadow|quarantine|release`, `ferrule stages|status|dead-letters`, then
/// stopped with Ctrl-C (SIGINT): it drains.
#[test]
fn run_swap_rollback_status_and_ctrl_c_drain() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{port}");
    let cfg = dir.path().join("plant.toml");
    std::fs::write(
        &cfg,
        format!(
            "[pipeline]\nprogress_interval_s = 0\n[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
             [sources.plant]\ntype = \"simulator\"\ntags = 100\ninterval_ms = 10\n\
             [[stages]]\nname = \"x\"\nplugin = \"{}\"\nconfig = {{}}\n\
             [sinks.out]\ntype = \"file\"\npath = \"out.jsonl\"\n",
            dist("fixture_hostile")
        ),
    )
    .unwrap();
    let host = Command::new(env!("CARGO_BIN_EXE_ferrule"))
        .args(["run", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the admin endpoint.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(&admin).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "admin endpoint never came up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Without the token, or with a wrong one, a swap is refused.
    let swap = [
        "plugin",
        "swap",
        "x",
        &dist("unit_converter"),
        "--admin",
        &admin,
    ];
    let (code, text) = ferrule_with_env(&swap, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("needs `Authorization: Bearer"), "{text}");
    let (code, text) = ferrule_with_env(&swap, &[("FERRULE_ADMIN_TOKEN", "guess")]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("wrong admin token"), "{text}");
    let (code, text) = ferrule(&swap);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("hostile@1.0.0 -> unit-converter@"), "{text}");
    let (code, text) = ferrule(&[
        "plugin",
        "swap",
        "nope",
        &dist("unit_converter"),
        "--admin",
        &admin,
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no stage named `nope`"), "{text}");
    let (code, text) = ferrule(&[
        "plugin",
        "swap",
        "x",
        &dist("validator"),
        "--admin",
        &admin,
        "--config",
        "{\"bogus\":1}",
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("refused its config"), "{text}");
    let (code, text) = ferrule(&["plugin", "rollback", "x", "--admin", &admin]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("-> hostile@1.0.0"), "{text}");

    // A config-only swap, no file: the running version re-initialised. The admin address and
    // token come from the host's config file (no --admin, no FERRULE_ADMIN_TOKEN).
    let host_config = cfg.to_str().unwrap();
    let (code, text) = ferrule_with_env(
        &[
            "plugin",
            "swap",
            "x",
            "--config",
            "{\"mode\":\"slow\",\"slow_ms\":0}",
            "--host-config",
            host_config,
        ],
        &[],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("hostile@1.0.0 -> hostile@1.0.0"), "{text}");
    // A config the plugin refuses: refused by name, the running version and config stay.
    let (code, text) = ferrule_with_env(
        &["plugin", "swap", "x", "--config", "{\"mode\":\"nope\"}"],
        &[("FERRULE_CONFIG", host_config)],
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("unknown mode 'nope'"), "{text}");
    // Without a file, a config or a loaded version: says what to give, no HTTP route.
    let (code, text) = ferrule(&["plugin", "swap", "x", "--admin", &admin]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("name a plugin file, give a new config"),
        "{text}"
    );
    assert!(!text.contains("POST"), "{text}");
    // The address from FERRULE_ADMIN.
    let (code, text) = ferrule_with_env(&["stages"], &[("FERRULE_ADMIN", &admin)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("\"plugin\": \"hostile\""), "{text}");
    // Output into a pipe closed early (`ferrule stages | head`): no panic.
    let mut early = Command::new(env!("CARGO_BIN_EXE_ferrule"))
        .args(["stages", "--admin", &admin])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(early.stdout.take());
    let out = early.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Load a version (checked, not installed), run it in shadow, read the report, abandon it.
    let (code, text) = ferrule(&[
        "plugin",
        "load",
        "x",
        &dist("unit_converter"),
        "--admin",
        &admin,
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("loaded unit-converter@"), "{text}");
    assert!(text.contains("not installed"), "{text}");
    let (code, text) = ferrule(&["stages", "--admin", &admin]);
    assert_eq!(code, 0, "{text}");
    let stages: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stages[0]["plugin"], "hostile");
    assert!(
        stages[0]["candidate"]
            .as_str()
            .unwrap()
            .starts_with("unit-converter@"),
        "{stages}"
    );
    let (code, text) = ferrule(&["plugin", "shadow", "start", "x", "--admin", &admin]);
    assert_eq!(code, 0, "{text}");
    let started: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(started["plugin"], "unit-converter");
    assert_eq!(started["live"], "hostile@1.0.0");
    let (code, text) = ferrule(&["plugin", "shadow", "report", "x", "--admin", &admin]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["state"],
        "running"
    );
    let (code, text) = ferrule(&["plugin", "shadow", "abandon", "x", "--admin", &admin]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["state"],
        "abandoned"
    );
    let (code, text) = ferrule(&["plugin", "shadow", "promote", "x", "--admin", &admin]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no shadow run on this stage"), "{text}");

    // Quarantine by hand, seen in the status; release.
    let (code, text) = ferrule(&[
        "plugin",
        "quarantine",
        "x",
        "--reason",
        "cli test",
        "--admin",
        &admin,
    ]);
    assert_eq!(code, 0, "{text}");
    let (_, text) = ferrule(&["stages", "--admin", &admin]);
    let stages: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stages[0]["state"], "quarantined");
    assert!(stages[0]["reason"].as_str().unwrap().contains("cli test"));
    let (code, text) = ferrule(&["plugin", "release", "x", "--admin", &admin]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = ferrule(&["dead-letters", "--admin", &admin]);
    assert_eq!(code, 0, "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .is_array());

    let (code, text) = ferrule(&["status", "--admin", &admin]);
    assert_eq!(code, 0, "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["stages"][0]["state"], "running");
    assert_eq!(status["stages"][0]["plugin"], "hostile");
    assert_eq!(status["stages"][0]["swaps"], 3);

    // Ctrl-C: the host drains and reports every produced sample as written.
    let pid = host.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = host.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Refused admin calls are in the host's log, with their reasons.
    for refusal in [
        "admin call refused: wrong admin token",
        "admin call refused: this call needs `Authorization: Bearer",
        "unknown mode 'nope'",
    ] {
        assert!(
            stderr.lines().any(|l| l.contains("admin call refused")
                && l.contains(refusal.trim_start_matches("admin call refused: "))),
            "no `{refusal}` in the host's log:\n{stderr}"
        );
    }
    let done = stderr
        .lines()
        .find(|l| l.starts_with("done:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let lines = std::fs::read_to_string(dir.path().join("out.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(
        done.contains(&format!("\"plant\": {lines}")),
        "{done} vs {lines} lines written"
    );
    assert!(
        done.contains(&format!("\"out\": {lines}")),
        "{done} vs {lines} lines written"
    );
}

/// `--log-format json`: every log line is one JSON object whose fields a log shipper can
/// index (here: the quarantine of a trapping stage, with its stage and policy).
#[test]
fn json_logs_carry_the_event_fields() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("trap.toml");
    std::fs::write(
        &cfg,
        format!(
            "[pipeline]\nprogress_interval_s = 0\n[admin]\nenabled = false\n\
             [sources.plant]\ntype = \"simulator\"\ntags = 10\nscans = 3\ninterval_ms = 1\n\
             [[stages]]\nname = \"x\"\nplugin = \"{}\"\nconfig = {{ mode = \"trap\" }}\n\
             quarantine = \"dead-letter\"\n\
             [sinks.out]\ntype = \"file\"\npath = \"out.jsonl\"\n",
            dist("fixture_hostile")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrule"))
        .args(["--log-format", "json", "run", cfg.to_str().unwrap()])
        .env("FERRULE_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(events.len() >= 5, "{stderr}");
    assert!(events.iter().all(|e| e["timestamp"].is_string()));
    let quarantine = events
        .iter()
        .find(|e| e["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error event: {stderr}"));
    assert_eq!(quarantine["fields"]["stage"], "x");
    assert_eq!(quarantine["fields"]["policy"], "dead-letter");
    assert!(quarantine["fields"]["message"]
        .as_str()
        .unwrap()
        .contains("quarantined after 3 consecutive failures"));
    let failures: Vec<i64> = events
        .iter()
        .filter(|e| e["level"] == "WARN")
        .filter_map(|e| e["fields"]["failures"].as_i64())
        .collect();
    assert_eq!(failures, [1, 2, 3]);
}
