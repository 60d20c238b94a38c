//! The live progress line: samples/s in, out and rejected, per stage, every few seconds.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::runtime::PipelineHandle;

fn rate(n: u64, secs: f64) -> String {
    let r = n as f64 / secs;
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k/s", r / 1e3)
    } else {
        format!("{r:.0}/s")
    }
}

/// Totals used to compute rates between two lines.
#[derive(Default, Clone)]
struct Totals {
    produced: u64,
    written: u64,
    dead: u64,
    stages: Vec<(u64, u64)>,
}

fn totals(h: &PipelineHandle) -> Totals {
    let s = h.stats();
    Totals {
        produced: s.produced.values().map(|a| a.load(Ordering::Relaxed)).sum(),
        written: s
            .written
            .values()
            .map(|a| a.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0),
        dead: s.dead_letters.load(Ordering::Relaxed),
        stages: h
            .stages()
            .iter()
            .map(|st| {
                (
                    st.stats.samples_in.load(Ordering::Relaxed),
                    st.stats.rejected.load(Ordering::Relaxed),
                )
            })
            .collect(),
    }
}

/// Prints a progress line to stderr every `every` until the task is aborted.
pub async fn run(handle: PipelineHandle, every: Duration) {
    let mut last = totals(&handle);
    let mut at = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let now = totals(&handle);
        let secs = at.elapsed().as_secs_f64().max(1e-3);
        let mut line = format!(
            "in {} | out {} | rejected {}",
            rate(now.produced - last.produced, secs),
            rate(now.written - last.written, secs),
            rate(now.dead - last.dead, secs)
        );
        for (i, st) in handle.stages().iter().enumerate() {
            let (n_in, n_rej) = now.stages[i];
            let (l_in, l_rej) = last.stages.get(i).copied().unwrap_or_default();
            let state = match st.state() {
                crate::pipeline::StageState::Running => String::new(),
                crate::pipeline::StageState::Quarantined { policy, .. } => {
                    format!(" QUARANTINED({policy})")
                }
            };
            line.push_str(&format!(
                " | {} {} rej {}{state}",
                st.name,
                rate(n_in - l_in, secs),
                rate(n_rej - l_rej, secs)
            ));
        }
        // Buffered sinks: link state and backlog.
        for (name, sink) in handle.status().sinks {
            if let Some(b) = sink.buffer {
                let link = match sink.connected {
                    Some(false) => " DISCONNECTED",
                    _ => "",
                };
                line.push_str(&format!(
                    " | {name}{link} buffered {} ({:.0}s)",
                    b.depth_samples, b.oldest_age_s
                ));
                if b.dropped_overflow + b.dropped_expired > 0 {
                    line.push_str(&format!(
                        " DROPPED {}",
                        b.dropped_overflow + b.dropped_expired
                    ));
                }
            }
        }
        eprintln!("{line}");
        last = now;
        at = Instant::now();
    }
}
