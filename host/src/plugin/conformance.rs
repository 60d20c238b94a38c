//! The conformance kit: loads a built component in the real engine and checks the contract's
//! invariants — valid self-description, init with the given config, one decision per tag,
//! no trap on empty and arbitrary batches, every input sample accounted for as passed,
//! rejected or dropped with a declared reason, written extras naming existing samples, and
//! (for plugins declaring it) an answer on the command plane. `ferrule plugin test` prints
//! its report. It runs 0.2.0 and 0.1.0 components alike (the report names the contract).

use std::path::Path;

use super::bindings::{
    Command, CommandDecision, DataType, Extra, ExtraValue, TagDecision, TagInfo,
};
use super::instance::BatchColumns;
use super::{HostBackends, LoadedPlugin, Planes, PluginEngine, PluginLimits};

/// One invariant and whether the plugin kept it.
#[derive(Clone, Debug)]
pub struct Check {
    pub invariant: &'static str,
    /// `Ok(detail)` when kept, `Err(what broke it)` otherwise.
    pub outcome: Result<String, String>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub plugin: String,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.outcome.is_ok())
    }
    /// The first broken invariant, with what broke it.
    pub fn first_failure(&self) -> Option<String> {
        self.checks.iter().find_map(|c| {
            c.outcome
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}", c.invariant))
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "conformance of {}", self.plugin)?;
        for c in &self.checks {
            match &c.outcome {
                Ok(d) => writeln!(f, "  ok    {} ({d})", c.invariant)?,
                Err(e) => writeln!(f, "  FAIL  {}: {e}", c.invariant)?,
            }
        }
        let failed = self.checks.iter().filter(|c| c.outcome.is_err()).count();
        write!(
            f,
            "{} passed, {} failed",
            self.checks.len() - failed,
            failed
        )
    }
}

/// Tags of many shapes, as sources produce them.
pub fn sample_tags() -> Vec<TagInfo> {
    let tag = |id: u32, path: &str, unit: &str, data_type: DataType| TagInfo {
        id,
        path: path.into(),
        vendor_path: path.into(),
        unit: unit.into(),
        data_type,
        source: "conformance".into(),
        metadata: vec![
            ("site".into(), "site1".into()),
            ("area".into(), "area1".into()),
            ("line".into(), "line1".into()),
        ],
    };
    vec![
        tag(
            0,
            "Site1.Area1.Line1.Press1.Pressure",
            "bar",
            DataType::Float64,
        ),
        tag(
            1,
            "Site1.Area1.Line1.Oven2.Temperature",
            "degC",
            DataType::Float32,
        ),
        tag(2, "PLC3:DB10.W4", "", DataType::Int16),
        tag(
            3,
            "plant/site1/area1/line1/pump3/flow",
            "l/min",
            DataType::Float64,
        ),
        tag(4, "Line1.Press1.Bar", "psi", DataType::Float64),
        tag(
            5,
            "Site1.Area1.Line1.Meter1.Energy",
            "kWh",
            DataType::Uint64,
        ),
        tag(6, "", "", DataType::Text),
        tag(7, &"x".repeat(300), "furlongs", DataType::Boolean),
        tag(8, "Ünïcødé.Tag/with spaces#+", "°C", DataType::Float64),
        tag(9, "Site1.Area1.Line1.Valve1.Open", "", DataType::Boolean),
    ]
}

/// Deterministic xorshift, so a failing batch is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct ArbitraryBatch {
    tag_ids: Vec<u32>,
    values: Vec<f64>,
    quality: Vec<u32>,
    timestamps: Vec<u64>,
    extras: Vec<Extra>,
}

fn arbitrary_batch(rng: &mut Rng, tags: &[u32], n: usize) -> ArbitraryBatch {
    let specials = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        f64::MAX,
        f64::MIN_POSITIVE,
        -1e300,
    ];
    let qualities = [
        0u32,
        0x4000_0000,
        0x8000_0000,
        0x803C_0000,
        0x4094_0000,
        0xC000_0000,
    ];
    let mut c = ArbitraryBatch {
        tag_ids: Vec::with_capacity(n),
        values: Vec::with_capacity(n),
        quality: Vec::with_capacity(n),
        timestamps: Vec::with_capacity(n),
        extras: Vec::new(),
    };
    for i in 0..n {
        let r = rng.next();
        c.tag_ids.push(tags[(r % tags.len() as u64) as usize]);
        c.values.push(if r.is_multiple_of(11) {
            specials[(r >> 8) as usize % specials.len()]
        } else {
            ((r >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2e4
        });
        c.quality
            .push(qualities[(r >> 20) as usize % qualities.len()]);
        // Mostly increasing time, sometimes repeated or going back.
        c.timestamps
            .push(1_700_000_000_000_000_000 + i as u64 * 1_000_000 - (r % 7) * 3_000_000);
        if r.is_multiple_of(17) {
            c.extras.push(Extra {
                index: i as u32,
                value: match r % 3 {
                    0 => ExtraValue::Text("running".into()),
                    1 => ExtraValue::Signed(i64::MIN),
                    _ => ExtraValue::Unsigned(u64::MAX),
                },
            });
        }
    }
    c
}

/// Runs the kit against the component (or package) at `path`, initialised with `config_json`.
pub fn run(engine: &PluginEngine, path: &Path, config_json: &str) -> Report {
    let mut checks = Vec::new();
    let loaded = match super::package::load_unstaged(engine, path) {
        Ok(p) => {
            checks.push(Check {
                invariant: "loads: contract version, imports and self-description valid",
                outcome: Ok(format!(
                    "{}@{} contract {}{}",
                    p.name(),
                    p.version(),
                    p.contract_version(),
                    if p.adapted() {
                        " (older contract, adapted)"
                    } else {
                        ""
                    }
                )),
            });
            p
        }
        Err(e) => {
            checks.push(Check {
                invariant: "loads: contract version, imports and self-description valid",
                outcome: Err(e.to_string()),
            });
            return Report {
                plugin: path.display().to_string(),
                checks,
            };
        }
    };
    let plugin = format!("{}@{}", loaded.name(), loaded.version());
    run_loaded(&loaded, config_json, &mut checks);
    Report { plugin, checks }
}

fn run_loaded(loaded: &LoadedPlugin, config_json: &str, checks: &mut Vec<Check>) {
    let limits = PluginLimits::default();
    let mut instance =
        match loaded.instantiate("conformance", config_json, &limits, HostBackends::default()) {
            Ok(i) => {
                checks.push(Check {
                    invariant: "init accepts the given config",
                    outcome: Ok("initialised".into()),
                });
                i
            }
            Err(e) => {
                checks.push(Check {
                    invariant: "init accepts the given config",
                    outcome: Err(e.to_string()),
                });
                return;
            }
        };
    let tags = sample_tags();
    let accepted: Vec<u32> = match instance.on_tags(&tags) {
        Ok(decisions) => {
            let accepted: Vec<u32> = tags
                .iter()
                .zip(&decisions)
                .filter(|(_, d)| matches!(d, TagDecision::Accept(_)))
                .map(|(t, _)| t.id)
                .collect();
            checks.push(Check {
                invariant: "tag plane: one decision per tag, no trap",
                outcome: Ok(format!(
                    "{} of {} tags accepted",
                    accepted.len(),
                    tags.len()
                )),
            });
            accepted
        }
        Err(e) => {
            checks.push(Check {
                invariant: "tag plane: one decision per tag, no trap",
                outcome: Err(e.to_string()),
            });
            return;
        }
    };
    checks.push(Check {
        invariant: "tag plane: a repeated call for the same tags (after a swap) is answered",
        outcome: instance
            .on_tags(&tags)
            .map(|d| format!("{} decisions", d.len()))
            .map_err(|e| e.to_string()),
    });
    let commands = loaded.info().planes.contains(Planes::COMMAND);
    if !loaded.info().planes.contains(Planes::SAMPLE) {
        if commands {
            check_command_plane(&mut instance, &tags, &accepted, checks);
        }
        checks.push(Check {
            invariant: "sample plane",
            outcome: Ok("not implemented: the host never calls it per batch".into()),
        });
        return;
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let sizes: &[usize] = if accepted.is_empty() {
        &[0]
    } else {
        &[0, 1, 7, 64, 1024, 4096]
    };
    for &n in sizes {
        let c = arbitrary_batch(
            &mut rng,
            if accepted.is_empty() { &[0] } else { &accepted },
            n,
        );
        let cols = BatchColumns {
            tag_ids: &c.tag_ids,
            values: &c.values,
            quality: &c.quality,
            timestamps: &c.timestamps,
            extras: &c.extras,
        };
        let outcome = match instance.on_batch(cols) {
            Ok(out) => Ok(format!(
                "{} passed, {} rejected, {} dropped",
                n - out.rejected.len() - out.dropped.len(),
                out.rejected.len(),
                out.dropped.len()
            )),
            // A plugin may refuse a batch as a whole; that is accounted for (the host
            // applies the stage's policy), unless it broke the contract doing so.
            Err(super::CallError::Plugin(m)) => Ok(format!("batch refused by the plugin: {m}")),
            Err(e) => Err(e.to_string()),
        };
        let failed = outcome.is_err();
        checks.push(Check {
            invariant: match n {
                0 => "sample plane: empty batch handled",
                _ => "sample plane: arbitrary batch, every sample passed, rejected or dropped with a declared reason",
            },
            outcome: outcome.map(|d| format!("batch of {n}: {d}")),
        });
        if failed {
            return;
        }
    }
    if commands {
        check_command_plane(&mut instance, &tags, &accepted, checks);
    }
}

/// A command for every accepted tag (a dry run, a real one, a text value): each must be
/// answered, without a trap, with a declared reason when refused.
fn check_command_plane(
    instance: &mut super::PluginInstance,
    tags: &[TagInfo],
    accepted: &[u32],
    checks: &mut Vec<Check>,
) {
    let (mut allowed, mut refused) = (0, 0);
    for (i, &id) in accepted.iter().enumerate() {
        let tag = &tags[id as usize];
        let text = i % 3 == 2;
        let cmd = Command {
            id: format!("conformance-{i}"),
            tag_id: id,
            path: tag.path.clone(),
            value: if text { f64::NAN } else { 42.5 },
            extra: text.then(|| ExtraValue::Text("on".into())),
            expected_current: (i % 2 == 1).then_some(1.0),
            requester: "conformance".into(),
            deadline: 1_700_000_060_000_000_000,
            dry_run: i % 2 == 0,
        };
        match instance.on_command(&cmd) {
            Ok(CommandDecision::Allow(_)) => allowed += 1,
            Ok(CommandDecision::Refuse(_)) => refused += 1,
            Err(e) => {
                checks.push(Check {
                    invariant:
                        "command plane: every command answered, refusals with a declared reason",
                    outcome: Err(format!("command for tag {id}: {e}")),
                });
                return;
            }
        }
    }
    checks.push(Check {
        invariant: "command plane: every command answered, refusals with a declared reason",
        outcome: Ok(format!("{allowed} allowed, {refused} refused")),
    });
}
