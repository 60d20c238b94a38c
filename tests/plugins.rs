//! The plugin engine against real components: the four reference plugins under the
//! conformance kit and in direct calls, the hostile fixtures each stopped with a clear error
//! while the host keeps serving other plugins, and the contract-version check.

use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::plugin::conformance;
use ferrule::plugin::{
    BatchColumns, CallError, CpuLimitMode, DataType, EngineConfig, HostBackends, LoadError,
    PluginEngine, PluginInstance, PluginLimits, TagDecision, TagInfo,
};
use ferrule_tests::{plugin, repo_root};

/// Whether a call error is the one a hostile mode must produce.
type ErrorCheck = fn(&CallError) -> bool;

fn engine() -> PluginEngine {
    PluginEngine::new(EngineConfig::default()).unwrap()
}

fn hostile(
    engine: &PluginEngine,
    mode: &str,
    limits: &PluginLimits,
) -> Result<PluginInstance, LoadError> {
    let loaded = engine.load_file(&plugin("fixture_hostile"), None)?;
    loaded.instantiate(
        "test",
        &format!(r#"{{"mode":"{mode}"}}"#),
        limits,
        HostBackends::default(),
    )
}

fn tag(id: u32, path: &str, unit: &str) -> TagInfo {
    TagInfo {
        id,
        path: path.into(),
        vendor_path: path.into(),
        unit: unit.into(),
        data_type: DataType::Float64,
        source: "test".into(),
        metadata: vec![],
    }
}

fn batch_call(
    instance: &mut PluginInstance,
    values: &[f64],
) -> Result<ferrule::plugin::BatchOutput, CallError> {
    let n = values.len();
    let tag_ids: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
    let quality = vec![0u32; n];
    let timestamps: Vec<u64> = (0..n as u64).map(|i| 1_000 + i).collect();
    instance.on_batch(BatchColumns {
        tag_ids: &tag_ids,
        values,
        quality: &quality,
        timestamps: &timestamps,
        extras: &[],
    })
}

/// The example plant's stage configs, by stage name.
fn example_stage_configs() -> Vec<(String, std::path::PathBuf, String)> {
    let config = HostConfig::load(&repo_root().join("examples/plant.toml")).unwrap();
    config
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.plugin.clone(), s.config_json()))
        .collect()
}

#[test]
fn reference_plugins_pass_the_conformance_kit() {
    let engine = engine();
    let stages = example_stage_configs();
    assert_eq!(stages.len(), 4);
    for (name, path, config) in stages {
        let report = conformance::run(&engine, &path, &config);
        assert!(report.passed(), "stage {name}:\n{report}");
        assert!(
            report.checks.len() >= 4,
            "stage {name}: too few checks:\n{report}"
        );
    }
}

#[test]
fn conformance_kit_fails_a_broken_plugin_naming_the_invariant() {
    let engine = engine();
    let report = conformance::run(
        &engine,
        &plugin("fixture_hostile"),
        r#"{"mode":"bad-reject-index"}"#,
    );
    assert!(!report.passed());
    let failure = report.first_failure().unwrap();
    // The fixture rejects sample n+5, so even the empty batch names a sample that is not there.
    assert!(
        failure.starts_with("sample plane: empty batch handled"),
        "{failure}"
    );
    assert!(failure.contains("1 rejections for 0 samples"), "{failure}");

    let report = conformance::run(
        &engine,
        &plugin("fixture_hostile"),
        r#"{"mode":"short-tags"}"#,
    );
    let failure = report.first_failure().unwrap();
    assert!(
        failure.contains("tag plane: one decision per tag"),
        "{failure}"
    );

    let report = conformance::run(&engine, &plugin("fixture_hostile"), r#"{"mode":"ok"}"#);
    assert!(report.passed(), "{report}");
}

#[test]
fn unit_converter_component_converts_and_rejects_unknown_units() {
    let engine = engine();
    let loaded = engine.load_file(&plugin("unit_converter"), None).unwrap();
    let mut i = loaded
        .instantiate(
            "units",
            r#"{"targets":{"pressure":"kPa","temperature":"degC"}}"#,
            &PluginLimits::default(),
            HostBackends::default(),
        )
        .unwrap();
    let d = i
        .on_tags(&[
            tag(0, "a", "bar"),
            tag(1, "b", "degF"),
            tag(2, "c", "furlongs"),
        ])
        .unwrap();
    match &d[0] {
        TagDecision::Accept(a) => assert_eq!(a.unit.as_deref(), Some("kPa")),
        other => panic!("{other:?}"),
    }
    match &d[2] {
        TagDecision::Reject(r) => assert!(r.contains("furlongs"), "{r}"),
        other => panic!("{other:?}"),
    }
    let out = batch_call(&mut i, &[3.0, 212.0]).unwrap();
    let v = out.values.unwrap();
    assert!((v[0] - 300.0).abs() < 1e-9, "{v:?}");
    assert!((v[1] - 100.0).abs() < 1e-9, "{v:?}");
}

#[test]
fn hostile_plugins_are_stopped_with_clear_errors_while_others_keep_working() {
    let engine = engine();
    let limits = PluginLimits {
        // Generous, so the memory bomb meets the memory cap first even on a busy machine.
        cpu_ms_per_call: 1000,
        memory_mib: 32,
        recycle_at_mib: 16,
        ..PluginLimits::default()
    };
    let mut healthy = hostile(&engine, "ok", &limits).unwrap();
    healthy
        .on_tags(&[tag(0, "a", ""), tag(1, "b", "")])
        .unwrap();

    let err = hostile(&engine, "fail-init", &limits).err().unwrap();
    assert!(matches!(err, LoadError::Init { .. }), "{err}");
    assert!(err.to_string().contains("refused its config"), "{err}");

    let cases: &[(&str, ErrorCheck)] = &[
        ("trap", |e| matches!(e, CallError::Trap(_))),
        ("infinite-loop", |e| matches!(e, CallError::CpuLimit(_))),
        ("memory-bomb", |e| {
            matches!(e, CallError::MemoryLimit { limit_mib: 32 })
        }),
        (
            "oversized-output",
            |e| matches!(e, CallError::Malformed(m) if m.contains("values column")),
        ),
        (
            "mismatched-columns",
            |e| matches!(e, CallError::Malformed(m) if m.contains("quality column")),
        ),
        (
            "undeclared-reason",
            |e| matches!(e, CallError::Malformed(m) if m.contains("undeclared reason")),
        ),
    ];
    for (mode, expected) in cases {
        let mut bad = hostile(&engine, mode, &limits).unwrap();
        bad.on_tags(&[tag(0, "a", ""), tag(1, "b", "")]).unwrap();
        let started = Instant::now();
        let err = batch_call(&mut bad, &[1.0, 2.0, 3.0]).unwrap_err();
        assert!(expected(&err), "mode {mode}: unexpected error {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "mode {mode} took {:?}",
            started.elapsed()
        );
        assert!(
            bad.is_poisoned(),
            "mode {mode}: instance must not be reused"
        );
        assert_eq!(
            batch_call(&mut bad, &[1.0]).unwrap_err(),
            CallError::Poisoned
        );
        // The host goes on serving the healthy plugin.
        let out = batch_call(&mut healthy, &[4.0, 5.0]).unwrap();
        assert!(out.rejected.is_empty());
    }

    let mut short = hostile(&engine, "short-tags", &limits).unwrap();
    let err = short
        .on_tags(&[tag(0, "a", ""), tag(1, "b", "")])
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Malformed(m) if m.contains("1 decisions for 2 tags")),
        "{err}"
    );
}

#[test]
fn fuel_mode_also_stops_an_infinite_loop() {
    let engine = PluginEngine::new(EngineConfig {
        cpu_limit: CpuLimitMode::Fuel,
        ..EngineConfig::default()
    })
    .unwrap();
    let limits = PluginLimits {
        fuel_per_call: 50_000_000,
        ..PluginLimits::default()
    };
    let mut bad = hostile(&engine, "infinite-loop", &limits).unwrap();
    bad.on_tags(&[tag(0, "a", ""), tag(1, "b", "")]).unwrap();
    let err = batch_call(&mut bad, &[1.0]).unwrap_err();
    assert!(
        matches!(&err, CallError::CpuLimit(m) if m.contains("fuel")),
        "{err}"
    );
}

#[test]
fn wrong_contract_version_and_garbage_are_refused_at_load() {
    let engine = engine();
    let err = engine
        .load_file(&plugin("fixture_wrong_contract"), None)
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::ContractVersion { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("speaks contract ferrule:plugin@0.3.0; this host speaks ferrule:plugin@0.2.0 and ferrule:plugin@0.1.0"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm not really").unwrap();
    let err = engine.load_file(&garbage, None).err().unwrap();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");

    let pin = ferrule::plugin::Digest::of(b"something else");
    let err = engine
        .load_file(&plugin("validator"), Some(&pin))
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::DigestMismatch { .. }), "{err}");
}

#[test]
fn compiled_artifacts_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..EngineConfig::default()
    };
    let first = PluginEngine::new(config.clone()).unwrap();
    let p = first.load_file(&plugin("validator"), None).unwrap();
    assert_eq!(p.timings().cache, ferrule::plugin::CacheOutcome::Compiled);
    let again = first.load_file(&plugin("validator"), None).unwrap();
    assert_eq!(again.timings().cache, ferrule::plugin::CacheOutcome::Memory);
    let second = PluginEngine::new(config).unwrap();
    let p2 = second.load_file(&plugin("validator"), None).unwrap();
    assert_eq!(p2.timings().cache, ferrule::plugin::CacheOutcome::Disk);
    assert_eq!(p2.digest(), p.digest());
}

#[test]
fn a_plugin_finds_no_ambient_capability() {
    let engine = engine();
    let mut probe = hostile(&engine, "probe", &PluginLimits::default()).unwrap();
    probe.on_tags(&[tag(0, "a", ""), tag(1, "b", "")]).unwrap();
    let out = batch_call(&mut probe, &[1.0]).unwrap();
    let report = out.rejected[0].detail.clone().unwrap();
    assert_eq!(
        report, "clock_ns=0 env=0 args=0 file=false net=false",
        "the sandbox let something through"
    );

    // Granted the clock, the same plugin reads the host's time, and still nothing else.
    let limits = PluginLimits {
        grants: vec![ferrule::plugin::Grant::Clock],
        ..PluginLimits::default()
    };
    let mut probe = hostile(&engine, "probe", &limits).unwrap();
    probe.on_tags(&[tag(0, "a", ""), tag(1, "b", "")]).unwrap();
    let out = batch_call(&mut probe, &[1.0]).unwrap();
    let report = out.rejected[0].detail.clone().unwrap();
    let clock_ns: u128 = report
        .strip_prefix("clock_ns=")
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(now.abs_diff(clock_ns) < 60_000_000_000, "{report}");
    assert!(
        report.ends_with("env=0 args=0 file=false net=false"),
        "{report}"
    );
}
