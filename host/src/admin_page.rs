//! The status page (`GET /` on the admin endpoint): one self-contained HTML page rendered on
//! the server from the pipeline's status — sources; stages with plugin versions, digests,
//! call latency and any shadow run; sinks with their link and buffer; upstream publishers
//! with their sequence accounting (gaps, redeliveries, epochs) — refreshed by the
//! browser every 5 s. No script, no external assets, so it works on an air-gapped plant
//! network.

use std::fmt::Write;

use crate::pipeline::{ShadowState, StageState};
use crate::runtime::PipelineStatus;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page for `status`.
pub fn render(status: &PipelineStatus) -> String {
    let mut h = String::with_capacity(8 * 1024);
    h.push_str(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\"><title>Ferrule</title><style>\
         body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
         table{border-collapse:collapse;margin:.5em 0 1.5em}\
         th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
         th{background:#f3f3f3}.bad{color:#b00;font-weight:bold}.ok{color:#070}\
         code{font-size:12px}</style></head><body>",
    );
    let _ = write!(
        h,
        "<h1>Ferrule</h1><p id=\"summary\">{} tags · {} dead-letters</p>",
        status.tags, status.dead_letters
    );
    h.push_str("<h2>Sources</h2><table id=\"sources\"><tr><th>source</th><th>samples</th></tr>");
    for (name, n) in &status.produced {
        let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(name));
    }
    h.push_str("</table><h2>Pipeline</h2><table id=\"stages\"><tr><th>stage</th><th>plugin</th><th>version</th><th>digest</th><th>state</th><th>in</th><th>out</th><th>rejected</th><th>failures</th><th>swaps</th><th>on-batch p99</th><th>shadow</th></tr>");
    for st in &status.stages {
        let state = match &st.state {
            StageState::Running => "<span class=\"ok\">running</span>".to_string(),
            StageState::Quarantined { reason, policy } => format!(
                "<span class=\"bad\">quarantined ({})</span>: {}",
                esc(policy),
                esc(reason)
            ),
        };
        let p99 = match st.calls.sample_plane.quantile_bound(0.99) {
            Some(b) if b.is_finite() => format!("≤ {} µs", (b * 1e6).round()),
            Some(_) => "> 1 s".into(),
            None => "–".into(),
        };
        let shadow = match &st.shadow {
            Some(sh) => format!(
                "{} ({}): {} of {} samples differ, {} tags",
                esc(&sh.plugin),
                match &sh.state {
                    ShadowState::Running => "running",
                    ShadowState::Failed { .. } => "failed",
                    ShadowState::Promoted => "promoted",
                    ShadowState::Abandoned => "abandoned",
                },
                sh.samples_differing,
                sh.samples_compared,
                sh.tags_differing
            ),
            None => "–".into(),
        };
        let _ = write!(
            h,
            "<tr class=\"stage\"><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{p99}</td><td class=\"shadow\">{shadow}</td></tr>",
            esc(&st.name),
            esc(&st.plugin),
            esc(&st.version),
            esc(st.digest.get(..19).unwrap_or(&st.digest)),
            st.samples_in,
            st.samples_out,
            st.rejected,
            st.failures,
            st.swaps
        );
    }
    h.push_str("</table><h2>Sinks</h2><table id=\"sinks\"><tr><th>sink</th><th>state</th><th>delivered</th><th>refused</th><th>link</th><th>buffered samples</th><th>oldest (s)</th><th>dropped</th></tr>");
    for (name, s) in &status.sinks {
        let link = match s.connected {
            Some(true) => "<span class=\"ok\">connected</span>".to_string(),
            Some(false) => format!(
                "<span class=\"bad\">disconnected</span> ({} reconnects)",
                s.reconnects
            ),
            None => "–".into(),
        };
        let (depth, age, dropped) = match &s.buffer {
            Some(b) => (
                b.depth_samples.to_string(),
                format!("{:.1}", b.oldest_age_s),
                (b.dropped_overflow + b.dropped_expired).to_string(),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        let state = match (&s.health.error, s.health.state) {
            (_, crate::sinks::SinkState::Idle | crate::sinks::SinkState::Working) => {
                format!("<span class=\"ok\">{}</span>", s.health.state.as_str())
            }
            (Some(e), st) => format!("<span class=\"bad\">{}</span>: {}", st.as_str(), esc(e)),
            (None, st) => format!("<span class=\"bad\">{}</span>", st.as_str()),
        };
        let _ = write!(
            h,
            "<tr class=\"sink\"><td>{}</td><td>{state}</td><td>{}</td><td>{}</td><td>{link}</td><td>{depth}</td><td>{age}</td><td>{dropped}</td></tr>",
            esc(name),
            s.written,
            s.health.refused_samples
        );
    }
    h.push_str("</table>");
    if !status.upstream.is_empty() {
        h.push_str("<h2>Upstream publishers</h2><table id=\"upstream\"><tr><th>source</th><th>publisher</th><th>epoch</th><th>highest seq</th><th>messages</th><th>redelivered</th><th>lost (gaps)</th><th>last gap</th><th>new epochs</th></tr>");
        for (source, publishers) in &status.upstream {
            for (publisher, p) in publishers {
                let last = match &p.last_gap {
                    Some(g) => format!(
                        "<span class=\"bad\">{}..={} ({})</span>",
                        g.from,
                        g.to,
                        g.messages()
                    ),
                    None => "–".into(),
                };
                let lost = if p.missing_messages > 0 {
                    format!(
                        "<span class=\"bad\">{} ({})</span>",
                        p.missing_messages, p.gaps
                    )
                } else {
                    "<span class=\"ok\">0</span>".into()
                };
                let _ = write!(
                    h,
                    "<tr class=\"publisher\"><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{lost}</td><td>{last}</td><td>{}</td></tr>",
                    esc(source),
                    esc(publisher),
                    esc(&p.epoch),
                    p.highest_seq,
                    p.messages,
                    p.redelivered,
                    p.new_epochs
                );
            }
        }
        h.push_str("</table>");
    }
    h.push_str("<p><a href=\"/status\">status JSON</a> · <a href=\"/metrics\">metrics</a> · <a href=\"/dead-letters\">recent dead-letters</a></p></body></html>");
    h
}
