//! Prometheus metrics (`GET /metrics` on the admin endpoint), rendered at each scrape from the
//! pipeline's status with the official Prometheus client's text encoder: samples in/out/
//! rejected per source, stage and sink, plugin call latency (histogram per plane; its sum is
//! the time inside the plugin), fuel and memory, failures by kind (traps, limits),
//! quarantines, swaps, recycles, shadow-run comparisons, sink links and the store-and-forward
//! buffers (depth, age, drops), write-back commands by outcome, and the upstream accounting
//! per source and publisher (gaps, redeliveries, epochs).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::pipeline::{ShadowState, StageState};
use crate::plugin::HistogramSnapshot;
use crate::runtime::PipelineStatus;

/// A histogram already counted elsewhere (the stage's call meter), encoded as one.
#[derive(Clone, Debug, Default)]
struct CountedHistogram(Arc<Mutex<HistogramSnapshot>>);

impl CountedHistogram {
    fn set(&self, h: &HistogramSnapshot) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = h.clone();
    }
}

impl TypedMetric for CountedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for CountedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        encoder.encode_histogram::<NoLabelSet>(h.sum_s, h.count, &h.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

type Labels = Vec<(String, String)>;

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    registry.register(name, help, f.clone());
    f
}

fn gauge_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(name, help, f.clone());
    f
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The status as Prometheus text exposition format.
pub fn render(status: &PipelineStatus) -> String {
    let mut r = Registry::with_prefix("ferrule");
    let tags = gauge_family(&mut r, "tags", "Tags known to the pipeline");
    tags.get_or_create(&vec![]).set(status.tags as f64);

    let produced = counter_family(&mut r, "source_samples", "Samples produced by a source");
    for (source, n) in &status.produced {
        produced.get_or_create(&l(&[("source", source)])).inc_by(*n);
    }
    let dead = counter_family(&mut r, "dead_letters", "Samples sent to the dead-letter");
    dead.get_or_create(&vec![]).inc_by(status.dead_letters);

    let s_in = counter_family(&mut r, "stage_samples_in", "Samples into a stage");
    let s_out = counter_family(&mut r, "stage_samples_out", "Samples out of a stage");
    let s_rej = counter_family(&mut r, "stage_rejected", "Samples a stage refused");
    let s_drop = counter_family(
        &mut r,
        "stage_dropped_samples",
        "Samples a stage dropped on purpose (filter, deadband), by reason; not dead-lettered",
    );
    let s_fail = counter_family(
        &mut r,
        "stage_failures",
        "Failed plugin calls (trap, CPU or memory limit, malformed output)",
    );
    let s_quar = counter_family(&mut r, "stage_quarantines", "Times a stage was quarantined");
    let s_swap = counter_family(
        &mut r,
        "stage_swaps",
        "Plugin versions installed (swaps and rollbacks)",
    );
    let s_rec = counter_family(
        &mut r,
        "stage_recycles",
        "Instances replaced at their memory high-water mark",
    );
    let s_q = gauge_family(
        &mut r,
        "stage_quarantined",
        "1 while a stage is quarantined",
    );
    let s_info = gauge_family(
        &mut r,
        "stage_plugin_info",
        "The plugin a stage runs (always 1)",
    );
    let call_latency = Family::<Labels, CountedHistogram>::default();
    r.register(
        "plugin_call_seconds",
        "Latency of calls into a stage's live plugin instance, by plane (tag: on-tags; sample: on-batch); the sum is the time spent inside the plugin",
        call_latency.clone(),
    );
    let fuel = counter_family(
        &mut r,
        "plugin_fuel",
        "Wasm fuel a stage's plugin consumed (cpu_limit = fuel only)",
    );
    let memory = gauge_family(
        &mut r,
        "plugin_memory_bytes",
        "Linear memory of a stage's plugin instance",
    );
    let failures = counter_family(&mut r, "plugin_failures", "Failed plugin calls by kind (cpu-limit, memory-limit, trap, malformed, plugin-error, poisoned)");
    let shadow_compared = counter_family(
        &mut r,
        "shadow_samples_compared",
        "Samples a shadow run compared with the live version",
    );
    let shadow_differing = counter_family(
        &mut r,
        "shadow_samples_differing",
        "Samples the shadow version treated differently from the live one",
    );
    let shadow_tags = gauge_family(
        &mut r,
        "shadow_tags_differing",
        "Tags the shadow version decides differently from the live one",
    );
    let shadow_running = gauge_family(
        &mut r,
        "shadow_running",
        "1 while a shadow run is active on a stage",
    );
    for st in &status.stages {
        let stage = l(&[("stage", &st.name)]);
        for (plane, h) in [
            ("tag", &st.calls.tag_plane),
            ("sample", &st.calls.sample_plane),
        ] {
            call_latency
                .get_or_create(&l(&[("stage", &st.name), ("plane", plane)]))
                .set(h);
        }
        fuel.get_or_create(&stage).inc_by(st.calls.fuel);
        memory
            .get_or_create(&stage)
            .set(st.calls.memory_bytes as f64);
        for (kind, n) in &st.calls.failures {
            failures
                .get_or_create(&l(&[("stage", &st.name), ("kind", kind)]))
                .inc_by(*n);
        }
        if let Some(shadow) = &st.shadow {
            let labels = l(&[("stage", &st.name), ("shadow", &shadow.plugin)]);
            shadow_compared
                .get_or_create(&labels)
                .inc_by(shadow.samples_compared);
            shadow_differing
                .get_or_create(&labels)
                .inc_by(shadow.samples_differing);
            shadow_tags
                .get_or_create(&labels)
                .set(shadow.tags_differing as f64);
            let running = matches!(shadow.state, ShadowState::Running);
            shadow_running
                .get_or_create(&stage)
                .set(if running { 1.0 } else { 0.0 });
        }
        s_in.get_or_create(&stage).inc_by(st.samples_in);
        s_out.get_or_create(&stage).inc_by(st.samples_out);
        s_rej.get_or_create(&stage).inc_by(st.rejected);
        for (reason, n) in &st.dropped {
            s_drop
                .get_or_create(&l(&[("stage", &st.name), ("reason", reason)]))
                .inc_by(*n);
        }
        s_fail.get_or_create(&stage).inc_by(st.failures);
        s_quar.get_or_create(&stage).inc_by(st.quarantines);
        s_swap.get_or_create(&stage).inc_by(st.swaps);
        s_rec.get_or_create(&stage).inc_by(st.recycles);
        let q = matches!(st.state, StageState::Quarantined { .. });
        s_q.get_or_create(&stage).set(if q { 1.0 } else { 0.0 });
        s_info
            .get_or_create(&l(&[
                ("stage", &st.name),
                ("plugin", &st.plugin),
                ("version", &st.version),
                ("digest", &st.digest),
            ]))
            .set(1.0);
    }

    let k_out = counter_family(
        &mut r,
        "sink_samples",
        "Samples a sink delivered (acknowledged where the destination acknowledges)",
    );
    let k_conn = gauge_family(&mut r, "sink_connected", "1 while a sink's link is up");
    let k_rec = counter_family(&mut r, "sink_reconnects", "Times a sink's link was lost");
    let k_pub = counter_family(
        &mut r,
        "sink_messages_published",
        "Messages handed to the broker",
    );
    let k_err = counter_family(&mut r, "sink_errors", "Publishes the destination refused");
    let b_samples = gauge_family(
        &mut r,
        "buffer_depth_samples",
        "Samples waiting in a sink's durable buffer",
    );
    let b_bytes = gauge_family(
        &mut r,
        "buffer_depth_bytes",
        "Bytes waiting in a sink's durable buffer",
    );
    let b_max = gauge_family(&mut r, "buffer_max_bytes", "A buffer's configured limit");
    let b_age = gauge_family(
        &mut r,
        "buffer_oldest_age_seconds",
        "Age of the oldest buffered record",
    );
    let b_drop = counter_family(
        &mut r,
        "buffer_dropped_samples",
        "Samples a buffer dropped, by reason (overflow, expired)",
    );
    let h_state = gauge_family(
        &mut r,
        "sink_state",
        "1 for a sink's current state (idle, working, retrying, stalled)",
    );
    let h_retries = counter_family(
        &mut r,
        "sink_retries",
        "Failed attempts a sink retried (writes, flushes, reconnects)",
    );
    let h_refused = counter_family(
        &mut r,
        "sink_refused_samples",
        "Samples a sink's destination refused for good (dead-lettered with the sink's name)",
    );
    let h_rebuilds = counter_family(
        &mut r,
        "sink_client_rebuilds",
        "Times a sink rebuilt its client after an error fatal to it",
    );
    let h_restarts = counter_family(
        &mut r,
        "sink_runner_restarts",
        "Times a sink's runner was restarted in place after it panicked",
    );
    let h_age = gauge_family(
        &mut r,
        "sink_last_success_age_seconds",
        "Seconds since a sink's last successful write or flush",
    );
    let b_fail = gauge_family(
        &mut r,
        "buffer_write_failing",
        "1 while a buffer cannot write (an I/O error such as a full disk)",
    );
    let tags_refused = counter_family(
        &mut r,
        "tags_refused",
        "New tags refused past pipeline.max_tags (their messages dead-lettered)",
    );
    tags_refused
        .get_or_create(&l(&[]))
        .inc_by(status.tags_refused);
    for (name, sink) in &status.sinks {
        let sink_l = l(&[("sink", name)]);
        k_out.get_or_create(&sink_l).inc_by(sink.written);
        for state in [
            crate::sinks::SinkState::Idle,
            crate::sinks::SinkState::Working,
            crate::sinks::SinkState::Retrying,
            crate::sinks::SinkState::Stalled,
        ] {
            h_state
                .get_or_create(&l(&[("sink", name), ("state", state.as_str())]))
                .set(if sink.health.state == state { 1.0 } else { 0.0 });
        }
        h_retries.get_or_create(&sink_l).inc_by(sink.health.retries);
        h_refused
            .get_or_create(&sink_l)
            .inc_by(sink.health.refused_samples);
        h_rebuilds
            .get_or_create(&sink_l)
            .inc_by(sink.health.client_rebuilds);
        h_restarts
            .get_or_create(&sink_l)
            .inc_by(sink.health.runner_restarts);
        if let Some(age) = sink.health.last_success_age_s {
            h_age.get_or_create(&sink_l).set(age);
        }
        if let Some(c) = sink.connected {
            k_conn.get_or_create(&sink_l).set(if c { 1.0 } else { 0.0 });
            k_rec.get_or_create(&sink_l).inc_by(sink.reconnects);
            k_pub.get_or_create(&sink_l).inc_by(sink.published_messages);
            k_err.get_or_create(&sink_l).inc_by(sink.refused_by_broker);
        }
        if let Some(b) = &sink.buffer {
            b_samples.get_or_create(&sink_l).set(b.depth_samples as f64);
            b_bytes.get_or_create(&sink_l).set(b.depth_bytes as f64);
            b_max.get_or_create(&sink_l).set(b.max_bytes as f64);
            b_age.get_or_create(&sink_l).set(b.oldest_age_s);
            b_fail
                .get_or_create(&sink_l)
                .set(if b.write_error.is_some() { 1.0 } else { 0.0 });
            b_drop
                .get_or_create(&l(&[("sink", name), ("reason", "overflow")]))
                .inc_by(b.dropped_overflow);
            b_drop
                .get_or_create(&l(&[("sink", name), ("reason", "expired")]))
                .inc_by(b.dropped_expired);
        }
    }
    let writes = counter_family(
        &mut r,
        "write_commands",
        "Write-back commands by outcome (verified, mismatch, unverified, failed, refused, dry-run) and reason",
    );
    for w in &status.writes {
        let reason = w
            .reason
            .map(|r| {
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        writes
            .get_or_create(&l(&[("outcome", w.outcome), ("reason", &reason)]))
            .inc_by(w.count);
    }
    let u_gap_msgs = counter_family(
        &mut r,
        "upstream_gap_messages",
        "Messages missing from a publisher's sequence (declared lost: an upstream gap)",
    );
    let u_gaps = counter_family(
        &mut r,
        "upstream_gaps",
        "Gaps (missing ranges) declared in a publisher's sequence",
    );
    let u_msgs = counter_family(
        &mut r,
        "upstream_messages",
        "Sequenced messages taken from a publisher for the first time",
    );
    let u_redelivered = counter_family(
        &mut r,
        "upstream_redelivered_messages",
        "Sequenced messages received again (a number seen before)",
    );
    let u_epochs = counter_family(
        &mut r,
        "upstream_new_epochs",
        "Times a publisher started a new epoch (it lost its durable state)",
    );
    let u_pending = gauge_family(
        &mut r,
        "upstream_pending_missing_messages",
        "Messages missing now within the reorder window (not yet declared lost)",
    );
    let u_highest = gauge_family(
        &mut r,
        "upstream_highest_seq",
        "Highest sequence number seen from a publisher in its current epoch",
    );
    for (source, publishers) in &status.upstream {
        for (publisher, p) in publishers {
            let labels = l(&[("source", source), ("publisher", publisher)]);
            u_gap_msgs.get_or_create(&labels).inc_by(p.missing_messages);
            u_gaps.get_or_create(&labels).inc_by(p.gaps);
            u_msgs.get_or_create(&labels).inc_by(p.messages);
            u_redelivered.get_or_create(&labels).inc_by(p.redelivered);
            u_epochs.get_or_create(&labels).inc_by(p.new_epochs);
            u_pending
                .get_or_create(&labels)
                .set(p.pending_missing as f64);
            u_highest.get_or_create(&labels).set(p.highest_seq as f64);
        }
    }
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}
