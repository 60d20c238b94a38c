//! Plugin packages with the real components from dist/plugins: a package written by the
//! function behind `ferrule plugin package` loads and runs in a pipeline; each refusal (the
//! manifest's contract, the component's contract, a tampered component, the stage's pin, an
//! ungranted capability, a limit above the stage's, a name mismatch, an unknown or missing
//! manifest key) names the package, what and why; a refused swap or package change keeps the
//! running version and data flowing; a package's instances get only the capabilities it
//! declares.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrule::config::HostConfig;
use ferrule::pipeline::{PipelineError, StageState};
use ferrule::plugin::package::{self, NeededLimits, PackageOptions, MANIFEST_FILE};
use ferrule::plugin::{
    Digest, EngineConfig, Grant, LoadError, PluginEngine, PluginLimits, StageTerms,
};
use ferrule::runtime;
use ferrule_tests::{plugin, read_jsonl, reference_stages_toml, repo_root};

fn engine() -> PluginEngine {
    PluginEngine::new(EngineConfig::default()).unwrap()
}

/// Writes the package `<dir>/<name>` from the built component `component`.
fn pack(
    engine: &PluginEngine,
    dir: &Path,
    name: &str,
    component: &str,
    options: PackageOptions,
) -> PathBuf {
    let out = dir.join(name);
    package::write_package(engine, &plugin(component), &out, options)
        .unwrap_or_else(|e| panic!("packaging {component}: {e}"));
    out
}

fn needing(capabilities: &[Grant]) -> PackageOptions {
    PackageOptions {
        capabilities: capabilities.to_vec(),
        ..PackageOptions::default()
    }
}

/// Rewrites a package's manifest through `f`.
fn edit_manifest(pkg: &Path, f: impl FnOnce(&mut toml::Table)) {
    let path = pkg.join(MANIFEST_FILE);
    let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut table);
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
}

fn terms(stage: &str, grants: &[Grant]) -> StageTerms {
    StageTerms::new(
        stage,
        None,
        PluginLimits {
            grants: grants.to_vec(),
            ..PluginLimits::default()
        },
    )
}

fn refused(engine: &PluginEngine, terms: &StageTerms, pkg: &Path) -> LoadError {
    match terms.load(engine, pkg) {
        Ok(p) => panic!("{} was loaded: {}@{}", pkg.display(), p.name(), p.version()),
        Err(e) => e,
    }
}

fn host_config(dir: &Path, tags: u32, scans: u64, interval_ms: u64, stages: &str) -> HostConfig {
    let text = format!(
        r#"
[pipeline]
watch_plugins = false
progress_interval_s = 0
queue_batches = 2

[admin]
enabled = false

[reference_data.assets]
path = "{assets}"

[sources.plant]
type = "simulator"
tags = {tags}
scans = {scans}
interval_ms = {interval_ms}
batch_size = 100

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
    HostConfig::from_text(&text, dir).unwrap_or_else(|e| panic!("{e:?}"))
}

fn stage_toml(name: &str, path: &Path, extra: &str) -> String {
    format!(
        "[[stages]]\nname = \"{name}\"\nplugin = \"{}\"\nconfig = {{}}\n{extra}\n",
        path.display()
    )
}

/// Lines in the sink and the dead-letter.
fn delivered(dir: &Path) -> (usize, usize) {
    (
        read_jsonl(&dir.join("samples.jsonl")).len(),
        read_jsonl(&dir.join("dead-letter.jsonl")).len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_written_from_the_components_run_the_reference_chain() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    // Every stage of the reference chain as a package instead of a bare component.
    let mut stages = reference_stages_toml();
    for component in ["tag_normalizer", "unit_converter", "validator", "enricher"] {
        let pkg = pack(&engine, dir.path(), component, component, needing(&[]));
        let bare = plugin(component).display().to_string();
        assert!(stages.contains(&bare), "{stages}");
        stages = stages.replace(&bare, &pkg.display().to_string());
    }

    // The manifest says what the component says of itself, and its digest.
    let validator = dir.path().join("validator");
    let text = std::fs::read_to_string(validator.join(MANIFEST_FILE)).unwrap();
    let manifest = ferrule::plugin::Manifest::parse(&text).unwrap();
    let bare = engine.load_file(&plugin("validator"), None).unwrap();
    assert_eq!(manifest.name, "validator");
    assert_eq!(manifest.version, bare.version());
    assert_eq!(manifest.contract, "ferrule:plugin@0.2.0");
    assert_eq!(manifest.component, "plugin.wasm");
    assert_eq!(manifest.digest, bare.digest().to_string());
    assert!(manifest.capabilities.is_empty());

    let cfg = host_config(dir.path(), 600, 5, 0, &stages);
    let running = runtime::start(&cfg).await.unwrap();
    let h = running.handle.clone();
    let validate = h.status().stages[2].clone();
    assert_eq!(validate.plugin, "validator");
    assert_eq!(validate.digest, bare.digest().to_string());
    assert_eq!(
        validate.path,
        validator.join("plugin.wasm").display().to_string()
    );
    let loaded = h.stages()[2].current();
    assert_eq!(loaded.package().map(|m| m.name.as_str()), Some("validator"));
    let status = running.wait().await.unwrap();
    assert_eq!(status.produced["plant"], 3000);
    let (samples, dead) = delivered(dir.path());
    assert_eq!(samples + dead, 3000);
    // The validator ran: the simulator's spikes and NaNs were dead-lettered by it, and the
    // enricher ran after it.
    let dead = read_jsonl(&dir.path().join("dead-letter.jsonl"));
    assert!(!dead.is_empty());
    assert!(dead.iter().all(|d| d["stage"] == "validate"), "{dead:?}");
    let samples = read_jsonl(&dir.path().join("samples.jsonl"));
    assert!(samples.iter().any(|s| s["meta"]["asset_id"].is_string()));
}

#[test]
fn each_refusal_names_the_package_what_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let bare = engine.load_file(&plugin("unit_converter"), None).unwrap();
    let label = format!("{} {}", bare.name(), bare.version());
    let stage = terms("units", &[]);

    let good = pack(&engine, dir.path(), "good", "unit_converter", needing(&[]));
    let p = stage.load(&engine, &good).unwrap();
    assert_eq!(p.name(), "unit-converter");
    assert_eq!(p.digest(), bare.digest());

    // The manifest's contract is one the host does not speak.
    let pkg = pack(
        &engine,
        dir.path(),
        "contract",
        "unit_converter",
        needing(&[]),
    );
    edit_manifest(&pkg, |m| {
        m.insert("contract".into(), "ferrule:plugin@0.3.0".into());
    });
    let e = refused(&engine, &stage, &pkg);
    assert!(matches!(e, LoadError::PackageContract { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "package {label} ({}) declares contract ferrule:plugin@0.3.0; this host speaks ferrule:plugin@0.2.0 and ferrule:plugin@0.1.0",
            pkg.display()
        )
    );

    // A contract the host speaks, but not the one the component exports.
    let pkg = pack(
        &engine,
        dir.path(),
        "exported",
        "unit_converter",
        needing(&[]),
    );
    edit_manifest(&pkg, |m| {
        m.insert("contract".into(), "ferrule:plugin@0.2.9".into());
    });
    let e = refused(&engine, &stage, &pkg);
    assert!(
        matches!(e, LoadError::PackageContractMismatch { .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().ends_with(
            "the manifest declares contract ferrule:plugin@0.2.9, but the component exports ferrule:plugin@0.2.0"
        ),
        "{e}"
    );

    // A component that does not export this host's contract at all, in a package that claims it.
    let pkg = dir.path().join("wrong-contract");
    std::fs::create_dir(&pkg).unwrap();
    let bytes = std::fs::read(plugin("fixture_wrong_contract")).unwrap();
    std::fs::write(pkg.join("plugin.wasm"), &bytes).unwrap();
    std::fs::write(
        pkg.join(MANIFEST_FILE),
        format!(
            "name = \"wrong\"\nversion = \"1.0.0\"\ncontract = \"ferrule:plugin@0.2.0\"\ndigest = \"{}\"\n",
            Digest::of(&bytes)
        ),
    )
    .unwrap();
    let e = refused(&engine, &stage, &pkg);
    assert!(matches!(e, LoadError::ContractVersion { .. }), "{e:?}");

    // The component was replaced after packaging (tampered) or damaged (corrupt).
    let pkg = pack(
        &engine,
        dir.path(),
        "tampered",
        "unit_converter",
        needing(&[]),
    );
    std::fs::copy(plugin("fixture_hostile"), pkg.join("plugin.wasm")).unwrap();
    let e = refused(&engine, &stage, &pkg);
    assert!(matches!(e, LoadError::PackageDigest { .. }), "{e:?}");
    let hostile = Digest::of(&std::fs::read(plugin("fixture_hostile")).unwrap());
    assert_eq!(
        e.to_string(),
        format!(
            "package {label} ({}): component {} has digest {hostile}, but the manifest says {}; the package is tampered with or corrupt",
            pkg.display(),
            pkg.join("plugin.wasm").display(),
            bare.digest()
        )
    );
    let mut corrupt = std::fs::read(plugin("unit_converter")).unwrap();
    corrupt.truncate(corrupt.len() / 2);
    std::fs::write(pkg.join("plugin.wasm"), corrupt).unwrap();
    let e = refused(&engine, &stage, &pkg);
    assert!(e.to_string().contains("tampered with or corrupt"), "{e}");

    // The stage pins another digest; the pinned one loads.
    let pinned = StageTerms {
        pin: Some(Digest::of(b"another build")),
        ..terms("units", &[])
    };
    let e = refused(&engine, &pinned, &good);
    assert!(matches!(e, LoadError::DigestMismatch { .. }), "{e:?}");
    assert!(
        e.to_string().contains("does not match the pinned sha256:"),
        "{e}"
    );
    let pinned = StageTerms {
        pin: Some(bare.digest().clone()),
        ..terms("units", &[])
    };
    pinned.load(&engine, &good).unwrap();

    // A capability the stage does not grant; granted, it loads.
    let pkg = pack(
        &engine,
        dir.path(),
        "clock",
        "unit_converter",
        needing(&[Grant::Clock]),
    );
    let e = refused(&engine, &terms("units", &[Grant::Random]), &pkg);
    assert!(matches!(e, LoadError::NotGranted { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("package {label} asks for capability `clock`, which stage `units` does not grant (add \"clock\" to the stage's `grants` to allow it)")
    );
    terms("units", &[Grant::Clock]).load(&engine, &pkg).unwrap();

    // A limit above the stage's.
    let pkg = pack(
        &engine,
        dir.path(),
        "memory",
        "unit_converter",
        PackageOptions {
            limits: NeededLimits {
                memory_mib: Some(128),
                ..NeededLimits::default()
            },
            ..PackageOptions::default()
        },
    );
    let e = refused(&engine, &stage, &pkg);
    assert!(matches!(e, LoadError::LimitTooLow { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("package {label} needs memory_mib ≥ 128, stage `units` allows 64 (raise the stage's `limits.memory_mib` to allow it)")
    );
    let roomy = StageTerms {
        limits: PluginLimits {
            memory_mib: 128,
            ..PluginLimits::default()
        },
        ..terms("units", &[])
    };
    roomy.load(&engine, &pkg).unwrap();

    // The manifest names another plugin (or version) than the component describes.
    let pkg = pack(&engine, dir.path(), "name", "unit_converter", needing(&[]));
    edit_manifest(&pkg, |m| {
        m.insert("name".into(), "acme-filter".into());
    });
    let e = refused(&engine, &stage, &pkg);
    assert!(matches!(e, LoadError::PackageIdentity { .. }), "{e:?}");
    assert!(
        e.to_string().ends_with(&format!(
            "the manifest names acme-filter {}, but the component describes itself as {label}",
            bare.version()
        )),
        "{e}"
    );
    edit_manifest(&pkg, |m| {
        m.insert("name".into(), "unit-converter".into());
        m.insert("version".into(), "9.9.9".into());
    });
    let e = refused(&engine, &stage, &pkg);
    assert!(
        e.to_string()
            .contains("the manifest names unit-converter 9.9.9"),
        "{e}"
    );

    // Unknown and missing manifest keys, named with the manifest file.
    let pkg = pack(&engine, dir.path(), "keys", "unit_converter", needing(&[]));
    let manifest_file = pkg.join(MANIFEST_FILE).display().to_string();
    edit_manifest(&pkg, |m| {
        m.insert("colour".into(), "red".into());
    });
    let e = refused(&engine, &stage, &pkg);
    assert!(matches!(e, LoadError::Manifest { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&manifest_file) && e.to_string().contains("unknown field `colour`"),
        "{e}"
    );
    edit_manifest(&pkg, |m| {
        m.remove("colour");
        m.remove("digest");
    });
    let e = refused(&engine, &stage, &pkg);
    assert!(
        e.to_string().contains(&manifest_file) && e.to_string().contains("missing field `digest`"),
        "{e}"
    );
    std::fs::remove_file(pkg.join(MANIFEST_FILE)).unwrap();
    let e = refused(&engine, &stage, &pkg);
    assert!(matches!(e, LoadError::ManifestRead { .. }), "{e:?}");

    // A bare component still loads as before, with the stage's pin.
    stage.load(&engine, &plugin("unit_converter")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_package_at_start_names_the_stage_key() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let pkg = pack(
        &engine,
        dir.path(),
        "clock",
        "unit_converter",
        needing(&[Grant::Clock]),
    );
    let stages = format!(
        "{}{}",
        stage_toml("first", &plugin("fixture_hostile"), ""),
        stage_toml("units", &pkg, "grants = [\"random\"]")
    );
    let cfg = host_config(dir.path(), 10, 1, 0, &stages);
    let Err(e) = runtime::start(&cfg).await else {
        panic!("a package asking for an ungranted capability started");
    };
    match &e {
        PipelineError::Start { key, message } => {
            assert_eq!(key, "stages[1].plugin");
            assert!(
                message.contains("asks for capability `clock`, which stage `units` does not grant"),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_to_a_refused_package_keeps_the_running_version_and_data_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let running_pkg = pack(
        &engine,
        dir.path(),
        "running",
        "unit_converter",
        needing(&[]),
    );
    let cfg = host_config(
        dir.path(),
        200,
        u64::MAX,
        5,
        &stage_toml("units", &running_pkg, ""),
    );
    let running = runtime::start(&cfg).await.unwrap();
    let h = running.handle.clone();

    let clock = pack(
        &engine,
        dir.path(),
        "clock",
        "fixture_hostile",
        needing(&[Grant::Clock]),
    );
    let tampered = pack(
        &engine,
        dir.path(),
        "tampered",
        "fixture_hostile",
        needing(&[]),
    );
    std::fs::copy(plugin("validator"), tampered.join("plugin.wasm")).unwrap();
    let contract = pack(
        &engine,
        dir.path(),
        "contract",
        "fixture_hostile",
        needing(&[]),
    );
    edit_manifest(&contract, |m| {
        m.insert("contract".into(), "ferrule:plugin@0.3.0".into());
    });
    let renamed = pack(
        &engine,
        dir.path(),
        "renamed",
        "fixture_hostile",
        needing(&[]),
    );
    edit_manifest(&renamed, |m| {
        m.insert("name".into(), "not-hostile".into());
    });
    let greedy = pack(
        &engine,
        dir.path(),
        "greedy",
        "fixture_hostile",
        PackageOptions {
            limits: NeededLimits {
                cpu_ms_per_call: Some(5000),
                ..NeededLimits::default()
            },
            ..PackageOptions::default()
        },
    );
    let cases = [
        (&clock, "asks for capability `clock`, which stage `units` does not grant"),
        (&tampered, "the package is tampered with or corrupt"),
        (&contract, "declares contract ferrule:plugin@0.3.0"),
        (&renamed, "the manifest names not-hostile 1.0.0, but the component describes itself as hostile 1.0.0"),
        (&greedy, "needs cpu_ms_per_call ≥ 5000, stage `units` allows 100"),
    ];
    for (pkg, why) in cases {
        let written = h.stats().written["samples"].load(std::sync::atomic::Ordering::Relaxed);
        let e = h.swap("units", pkg, None).await.unwrap_err();
        assert!(
            e.to_string().starts_with("stage `units`: package") && e.to_string().contains(why),
            "{e}"
        );
        let units = h.status().stages[0].clone();
        assert_eq!(units.plugin, "unit-converter");
        assert_eq!(units.swaps, 0);
        assert_eq!(units.state, StageState::Running);
        assert!(units.previous.is_none());
        // Data keeps flowing through the running version.
        let deadline = Instant::now() + Duration::from_secs(20);
        while h.stats().written["samples"].load(std::sync::atomic::Ordering::Relaxed) <= written {
            assert!(Instant::now() < deadline, "no data after the refused swap");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // A good package comes in.
    let good = pack(&engine, dir.path(), "good", "fixture_hostile", needing(&[]));
    let r = h.swap("units", &good, None).await.unwrap();
    assert!(r.to.starts_with("hostile@"), "{r:?}");
    h.stop();
    let status = running.wait().await.unwrap();
    let (samples, dead) = delivered(dir.path());
    assert_eq!(samples + dead, status.produced["plant"] as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_package_is_swapped_when_it_changes_and_kept_when_the_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let live = pack(&engine, dir.path(), "live", "unit_converter", needing(&[]));
    let mut cfg = host_config(
        dir.path(),
        200,
        u64::MAX,
        5,
        &stage_toml("units", &live, ""),
    );
    cfg.pipeline.watch_plugins = true;
    cfg.pipeline.watch_interval_ms = 100;
    let running = runtime::start(&cfg).await.unwrap();
    let h = running.handle.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The manifest now asks for a capability the stage does not grant: refused, kept.
    edit_manifest(&live, |m| {
        m.insert("capabilities".into(), vec!["clock"].into());
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let units = h.status().stages[0].clone();
    assert_eq!(units.plugin, "unit-converter");
    assert_eq!(units.swaps, 0);

    // The package is rewritten from another component: swapped in.
    package::write_package(&engine, &plugin("fixture_hostile"), &live, needing(&[])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let units = h.status().stages[0].clone();
        if units.plugin == "hostile" {
            assert_eq!(
                units
                    .previous
                    .as_deref()
                    .map(|p| p.starts_with("unit-converter@")),
                Some(true)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "package change never swapped in: {units:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop();
    let status = running.wait().await.unwrap();
    let (samples, dead) = delivered(dir.path());
    assert_eq!(samples + dead, status.produced["plant"] as usize);
}

/// The `clock_ns` the hostile fixture's `probe` mode reported in each stage's dead-letters.
fn probed_clocks(dir: &Path, stage: &str) -> Vec<u128> {
    let dead = read_jsonl(&dir.join("dead-letter.jsonl"));
    let clocks: Vec<u128> = dead
        .iter()
        .filter(|d| d["stage"] == stage)
        .map(|d| {
            let detail = d["detail"].as_str().unwrap();
            assert!(
                detail.ends_with("env=0 args=0 file=false net=false"),
                "{detail}"
            );
            detail
                .strip_prefix("clock_ns=")
                .and_then(|r| r.split(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{detail}"))
        })
        .collect();
    assert!(!clocks.is_empty(), "stage {stage} reported nothing");
    clocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_gets_only_the_capabilities_it_declares() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let undeclared = pack(
        &engine,
        dir.path(),
        "undeclared",
        "fixture_hostile",
        needing(&[]),
    );
    let declared = pack(
        &engine,
        dir.path(),
        "declared",
        "fixture_hostile",
        needing(&[Grant::Clock]),
    );
    // Three probes in a row, each granted the clock (and more) by its stage: the package that
    // does not declare the clock sees it frozen; the one that does, and a bare component
    // (which gets exactly its stage's grants), see the host's time.
    let grants = "grants = [\"clock\", \"random\", \"stdio\"]";
    let stages = format!(
        "{}{}{}",
        stage_toml("undeclared", &undeclared, grants)
            .replace("config = {}", "config = { mode = \"probe\" }"),
        stage_toml("declared", &declared, grants)
            .replace("config = {}", "config = { mode = \"probe\" }"),
        stage_toml("bare", &plugin("fixture_hostile"), grants)
            .replace("config = {}", "config = { mode = \"probe\" }"),
    );
    let cfg = host_config(dir.path(), 50, 3, 0, &stages);
    let running = runtime::start(&cfg).await.unwrap();
    assert_eq!(
        running.handle.stages()[0]
            .current()
            .capabilities(&[Grant::Clock, Grant::Random]),
        Vec::<Grant>::new()
    );
    let status = running.wait().await.unwrap();
    // The status shows what each stage's instances get, beside what the operator granted.
    let caps: Vec<&[Grant]> = status.stages.iter().map(|s| &s.capabilities[..]).collect();
    assert_eq!(
        caps,
        [
            &[][..],
            &[Grant::Clock][..],
            &[Grant::Clock, Grant::Random, Grant::Stdio][..]
        ]
    );
    assert!(status.stages.iter().all(|s| s.grants.len() == 3));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let frozen = probed_clocks(dir.path(), "undeclared");
    assert!(frozen.iter().all(|&c| c == 0), "{frozen:?}");
    for stage in ["declared", "bare"] {
        let clocks = probed_clocks(dir.path(), stage);
        assert!(
            clocks.iter().all(|&c| now.abs_diff(c) < 60_000_000_000),
            "{stage}: {clocks:?}"
        );
    }
}
