//! The simulated plant: deterministic signals for a configurable number of tags, named the
//! way PLCs and SCADA systems name them (`Site1.Area2.Line3.Press4.Pressure`, and for every
//! tenth device `PLC7:DB12.W8` with the location in metadata), in mixed units.

mod config;

pub use config::SimulatorConfig;

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{SourceContext, SourceError};
use crate::model::{DataType, Quality, SampleBatch, TagDescriptor};

/// The metrics every device has, with the two units devices alternate between, and a
/// typical value and swing in the first unit.
const METRICS: [(&str, [&str; 2], f64, f64); 6] = [
    ("pressure", ["bar", "psi"], 6.0, 2.0),
    ("temperature", ["degC", "degF"], 80.0, 15.0),
    ("flow", ["l/min", "gal/min"], 120.0, 30.0),
    ("energy", ["kWh", "MJ"], 500.0, 100.0),
    ("weight", ["kg", "lb"], 250.0, 40.0),
    ("position", ["mm", "in"], 300.0, 120.0),
];
const DEVICE_KINDS: [&str; 5] = ["Press", "Oven", "Pump", "Mixer", "Conveyor"];

/// Location and naming of tag `i`.
pub fn describe_tag(c: &SimulatorConfig, source: &str, i: u32) -> TagDescriptor {
    let metric = (i % METRICS.len() as u32) as usize;
    let device = i / METRICS.len() as u32;
    let site = device % c.sites + 1;
    let area = (device / c.sites) % c.areas_per_site + 1;
    let line = (device / (c.sites * c.areas_per_site)) % c.lines_per_area + 1;
    let number = device / (c.sites * c.areas_per_site * c.lines_per_area) + 1;
    let kind = DEVICE_KINDS[(device % DEVICE_KINDS.len() as u32) as usize];
    let (name, units, _, _) = METRICS[metric];
    let unit = units[(device % 2) as usize];
    let device_name = format!("{kind}{number}");
    let metric_title = {
        let mut m = name.to_string();
        m[..1].make_ascii_uppercase();
        m
    };
    let plc_style = device % 10 == 9;
    let vendor_path = if plc_style {
        format!("PLC{device}:DB{}.W{}", 10 + metric, metric * 4)
    } else {
        format!("Site{site}.Area{area}.Line{line}.{device_name}.{metric_title}")
    };
    TagDescriptor {
        source: source.to_string(),
        vendor_path,
        unit: unit.to_string(),
        data_type: DataType::Float64,
        metadata: vec![
            ("site".into(), format!("site{site}")),
            ("area".into(), format!("area{area}")),
            ("line".into(), format!("line{line}")),
            ("device".into(), device_name.to_ascii_lowercase()),
            ("metric".into(), name.to_string()),
        ],
    }
}

/// The sample of tag `i` at scan `scan`: (value, quality). Deterministic.
pub fn sample(c: &SimulatorConfig, i: u32, scan: u64) -> (f64, Quality) {
    let metric = (i % METRICS.len() as u32) as usize;
    let device = i / METRICS.len() as u32;
    let (_, _, base, swing) = METRICS[metric];
    let n = scan.wrapping_mul(c.tags as u64).wrapping_add(i as u64);
    let phase = (i as f64) * 0.618;
    let mut value = base + swing * ((scan as f64) * 0.05 + phase).sin();
    if device % 2 == 1 {
        // The device reports in its second unit; keep the physical value the same.
        value = to_second_unit(metric, value);
    }
    let hit = |every: u64, salt: u64| every > 0 && n.wrapping_add(salt).is_multiple_of(every);
    if hit(c.spike_every, 0) {
        value *= 100.0;
    }
    if hit(c.nan_every, 7) {
        value = f64::NAN;
    }
    let quality = if hit(c.bad_quality_every, 13) {
        Quality(0x8031_0000) // Bad_NoCommunication
    } else {
        Quality::GOOD
    };
    (value, quality)
}

fn to_second_unit(metric: usize, v: f64) -> f64 {
    match metric {
        0 => v * 14.503_773_773,   // bar → psi
        1 => v * 9.0 / 5.0 + 32.0, // degC → degF
        2 => v / 3.785_411_784,    // l/min → gal/min
        3 => v * 3.6,              // kWh → MJ
        4 => v / 0.453_592_37,     // kg → lb
        _ => v / 25.4,             // mm → in
    }
}

pub async fn run(c: SimulatorConfig, mut ctx: SourceContext) -> Result<(), SourceError> {
    let ids: Vec<u32> = (0..c.tags)
        .map(|i| ctx.registry.intern(describe_tag(&c, &ctx.name, i)))
        .collect();
    let start_ns = c.start_ns.unwrap_or_else(crate::model::now_ns);
    let step_ns = if c.interval_ms == 0 {
        1_000_000
    } else {
        c.interval_ms * 1_000_000
    };
    let mut ticker = (c.interval_ms > 0).then(|| {
        let mut t = tokio::time::interval(Duration::from_millis(c.interval_ms));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut scan: u64 = 0;
    loop {
        if c.scans.is_some_and(|max| scan >= max) || *ctx.shutdown.borrow() {
            return Ok(());
        }
        if let Some(t) = ticker.as_mut() {
            tokio::select! {
                _ = t.tick() => {}
                _ = ctx.shutdown.changed() => return Ok(()),
            }
        }
        let ts = start_ns + scan * step_ns;
        for first in (0..c.tags).step_by(c.batch_size) {
            let last = (first as u64 + c.batch_size as u64).min(c.tags as u64) as u32;
            let mut batch = SampleBatch::with_capacity((last - first) as usize);
            for i in first..last {
                let (value, quality) = sample(&c, i, scan);
                batch.push(ids[i as usize], value, quality, ts);
            }
            let n = batch.len() as u64;
            tokio::select! {
                sent = ctx.out.send(batch) => {
                    if sent.is_err() {
                        return Err(SourceError::Failed { name: ctx.name.clone(), message: "pipeline stopped".into() });
                    }
                }
                // A stop request while the queue is full: this scan's remaining samples are
                // not produced (and so not counted).
                _ = ctx.shutdown.changed() => return Ok(()),
            }
            ctx.produced.fetch_add(n, Ordering::Relaxed);
        }
        scan += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_both_vendor_styles_and_samples_are_deterministic() {
        let c = SimulatorConfig {
            tags: 120,
            ..Default::default()
        };
        let t0 = describe_tag(&c, "plant", 0);
        assert_eq!(t0.vendor_path, "Site1.Area1.Line1.Press1.Pressure");
        assert_eq!(t0.unit, "bar");
        let t7 = describe_tag(&c, "plant", 7);
        assert_eq!(t7.unit, "degF");
        let plc = describe_tag(&c, "plant", 9 * 6 + 2);
        assert_eq!(plc.vendor_path, "PLC9:DB12.W8");
        assert!(plc.metadata.contains(&("metric".into(), "flow".into())));
        assert_eq!(sample(&c, 5, 3), sample(&c, 5, 3));
        let values: Vec<f64> = (0..c.tags)
            .flat_map(|i| (0..50).map(move |s| (i, s)))
            .map(|(i, s)| sample(&c, i, s).0)
            .collect();
        assert!(values.iter().any(|v| v.is_nan()));
        assert!(values.iter().any(|v| *v > 10_000.0));
    }
}
