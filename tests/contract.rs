//! Contract 0.2.0 against real components: a 0.1.0 component (the validator as released)
//! runs unchanged beside 0.2.0 ones and decides exactly as the 0.2.0 build of the same
//! plugin; the host's checks on drops, written extras and command decisions; the `latest`
//! host import reaching the host's trait object.

use std::sync::Arc;

use ferrule::plugin::conformance;
use ferrule::plugin::{
    BatchColumns, CallError, Command, CommandDecision, DataType, EngineConfig, Extra, ExtraValue,
    HostBackends, LatestSample, LatestValues, PluginEngine, PluginInstance, PluginLimits, TagInfo,
};
use ferrule_tests::{plugin, repo_root};

fn engine() -> PluginEngine {
    PluginEngine::new(EngineConfig::default()).unwrap()
}

/// The validator as released against contract 0.1.0 (see tests/fixtures/v0.1.0/README.md).
fn validator_0_1_0() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/v0.1.0/validator-0.1.0.wasm")
}

fn hostile(engine: &PluginEngine, mode: &str, backends: HostBackends) -> PluginInstance {
    let loaded = engine.load_file(&plugin("fixture_hostile"), None).unwrap();
    let mut i = loaded
        .instantiate(
            "test",
            &format!(r#"{{"mode":"{mode}"}}"#),
            &PluginLimits::default(),
            backends,
        )
        .unwrap();
    i.on_tags(&[
        tag(0, "plant/s/a/l/d/p", "bar"),
        tag(1, "plant/s/a/l/d/t", ""),
    ])
    .unwrap();
    i
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

fn call(
    i: &mut PluginInstance,
    values: &[f64],
    extras: &[Extra],
) -> Result<ferrule::plugin::BatchOutput, CallError> {
    let n = values.len();
    let tag_ids: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
    let quality = vec![0u32; n];
    let timestamps: Vec<u64> = (0..n as u64).map(|i| 1_000_000_000 * (i + 1)).collect();
    i.on_batch(BatchColumns {
        tag_ids: &tag_ids,
        values,
        quality: &quality,
        timestamps: &timestamps,
        extras,
    })
}

fn command(path: &str) -> Command {
    Command {
        id: "c-1".into(),
        tag_id: 0,
        path: path.into(),
        value: 4.5,
        extra: None,
        expected_current: None,
        requester: "test".into(),
        deadline: u64::MAX,
        dry_run: true,
    }
}

/// The validate stage's config in the example plant.
fn validate_config() -> String {
    let config =
        ferrule::config::HostConfig::load(&repo_root().join("examples/plant.toml")).unwrap();
    config
        .stages
        .iter()
        .find(|s| s.name == "validate")
        .unwrap()
        .config_json()
}

#[test]
fn a_0_1_0_component_runs_unchanged_beside_0_2_0_ones() {
    let engine = engine();
    let old = engine.load_file(&validator_0_1_0(), None).unwrap();
    let new = engine.load_file(&plugin("validator"), None).unwrap();
    assert_eq!(old.contract_version(), "0.1.0");
    assert!(old.adapted());
    assert_eq!(new.contract_version(), "0.2.0");
    assert!(!new.adapted());
    assert_eq!(old.name(), new.name());
    let ours: Vec<String> = old
        .imports()
        .into_iter()
        .filter(|i| i.starts_with("ferrule:plugin/"))
        .collect();
    assert!(!ours.is_empty());
    assert!(ours.iter().all(|i| i.ends_with("@0.1.0")), "{ours:?}");

    // The conformance kit passes it, naming the contract.
    let config = validate_config();
    let report = conformance::run(&engine, &validator_0_1_0(), &config);
    assert!(report.passed(), "{report}");
    assert!(
        report.checks[0]
            .outcome
            .as_ref()
            .unwrap()
            .ends_with("contract 0.1.0 (older contract, adapted)"),
        "{report}"
    );

    // Same tag decisions and the same batch results as the 0.2.0 build of the same plugin.
    let mut a = old
        .instantiate(
            "old",
            &config,
            &PluginLimits::default(),
            HostBackends::default(),
        )
        .unwrap();
    let mut b = new
        .instantiate(
            "new",
            &config,
            &PluginLimits::default(),
            HostBackends::default(),
        )
        .unwrap();
    let tags = conformance::sample_tags();
    let da = a.on_tags(&tags).unwrap();
    assert_eq!(da, b.on_tags(&tags).unwrap());
    let ids: Vec<u32> = tags.iter().map(|t| t.id).collect();
    let n = 512;
    let tag_ids: Vec<u32> = (0..n).map(|i| ids[i % ids.len()]).collect();
    let values: Vec<f64> = (0..n)
        .map(|i| match i % 13 {
            0 => f64::NAN,
            1 => 1e9,
            _ => (i as f64 * 0.37).sin() * 50.0,
        })
        .collect();
    let quality: Vec<u32> = (0..n)
        .map(|i| if i % 7 == 0 { 0x8000_0000 } else { 0 })
        .collect();
    let timestamps: Vec<u64> = (0..n as u64).map(|i| 1_000_000_000 * (i + 1)).collect();
    let extras = vec![Extra {
        index: 3,
        value: ExtraValue::Text("running".into()),
    }];
    let cols = BatchColumns {
        tag_ids: &tag_ids,
        values: &values,
        quality: &quality,
        timestamps: &timestamps,
        extras: &extras,
    };
    let oa = a.on_batch(cols).unwrap();
    let ob = b.on_batch(cols).unwrap();
    assert!(!oa.rejected.is_empty(), "the input has samples to reject");
    assert_eq!(oa, ob);
    assert!(oa.dropped.is_empty() && oa.extras.is_none());

    // No command plane in 0.1.0: a command passes it unchanged.
    assert_eq!(
        a.on_command(&command("plant/s/a/l/d/p")).unwrap(),
        CommandDecision::Allow(None)
    );
}

#[test]
fn drops_extras_and_command_decisions_are_checked() {
    let engine = engine();
    let b = HostBackends::default;

    let mut drop_all = hostile(&engine, "drop-all", b());
    let out = call(&mut drop_all, &[1.0, 2.0, 3.0], &[]).unwrap();
    assert_eq!(out.dropped.len(), 3);
    assert!(out.rejected.is_empty());

    for (mode, why) in [
        (
            "drop-and-reject",
            "sample 0 dropped twice, or both rejected and dropped",
        ),
        (
            "undeclared-drop-reason",
            "drop uses undeclared reason code 999",
        ),
        (
            "bad-extra-index",
            "extra names sample 7 of a 2-sample batch",
        ),
    ] {
        let mut i = hostile(&engine, mode, b());
        let e = call(&mut i, &[1.0, 2.0], &[]).unwrap_err();
        assert!(
            matches!(&e, CallError::Malformed(m) if m == why),
            "{mode}: {e}"
        );
        assert!(i.is_poisoned(), "{mode}");
    }

    // Rewritten extras come back whole: sample 0 gets a wide integer, text is replaced.
    let mut i = hostile(&engine, "rewrite-extras", b());
    let extras = [
        Extra {
            index: 1,
            value: ExtraValue::Text("off".into()),
        },
        Extra {
            index: 2,
            value: ExtraValue::Signed(i64::MIN),
        },
    ];
    let out = call(&mut i, &[1.0, f64::NAN, -9.2e18], &extras).unwrap();
    let mut got = out.extras.unwrap();
    got.sort_by_key(|e| e.index);
    assert_eq!(
        got,
        vec![
            Extra {
                index: 0,
                value: ExtraValue::Unsigned(u64::MAX)
            },
            Extra {
                index: 1,
                value: ExtraValue::Text("rewritten".into())
            },
            Extra {
                index: 2,
                value: ExtraValue::Signed(i64::MIN)
            },
        ]
    );

    // Command plane: allow, a declared refusal, an undeclared one, a trap.
    let path = "plant/s/a/l/d/p";
    let mut ok = hostile(&engine, "ok", b());
    assert_eq!(
        ok.on_command(&command(path)).unwrap(),
        CommandDecision::Allow(None)
    );
    let mut refuse = hostile(&engine, "reject-all", b());
    match refuse.on_command(&command(path)).unwrap() {
        CommandDecision::Refuse(r) => {
            assert_eq!(r.reason, 1);
            assert_eq!(r.detail, format!("refused by reject-all: {path}"));
        }
        other => panic!("{other:?}"),
    }
    let mut undeclared = hostile(&engine, "undeclared-reason", b());
    let e = undeclared.on_command(&command(path)).unwrap_err();
    assert!(
        matches!(&e, CallError::Malformed(m) if m.contains("undeclared reason code 999")),
        "{e}"
    );
    let mut trap = hostile(&engine, "trap", b());
    let e = trap.on_command(&command(path)).unwrap_err();
    assert!(matches!(e, CallError::Trap(_)), "{e}");
    assert!(trap.is_poisoned());
}

/// A latest-value store with one tag.
struct OneTag;

impl LatestValues for OneTag {
    fn latest(&self, path: &str) -> Option<LatestSample> {
        (path == "plant/s/a/l/d/p").then_some(LatestSample {
            value: 7.25,
            extra: None,
            quality: 0x4000_0000,
            timestamp: 1_700_000_000_000_000_000,
        })
    }
}

#[test]
fn the_latest_import_reads_the_hosts_store_and_defaults_to_none() {
    let engine = engine();
    let detail = |i: &mut PluginInstance, path: &str| match i.on_command(&command(path)).unwrap() {
        CommandDecision::Refuse(r) => r.detail,
        other => panic!("{other:?}"),
    };
    let mut default = hostile(&engine, "latest-probe", HostBackends::default());
    assert_eq!(detail(&mut default, "plant/s/a/l/d/p"), "none");
    let backends = HostBackends {
        latest: Arc::new(OneTag),
        ..HostBackends::default()
    };
    let mut with_store = hostile(&engine, "latest-probe", backends);
    assert_eq!(
        detail(&mut with_store, "plant/s/a/l/d/p"),
        "value=7.25 quality=1073741824 ts=1700000000000000000"
    );
    assert_eq!(detail(&mut with_store, "plant/s/a/l/d/other"), "none");
}
