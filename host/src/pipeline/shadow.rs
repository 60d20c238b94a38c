//! Shadow runs: a candidate plugin version runs beside a stage's live version on the same
//! batches and the same tags. Its outputs never leave the stage: they are compared with the
//! live version's, sample by sample and tag by tag, and the differences (counts and the latest
//! examples) are reported through the admin API. Promotion installs the shadow instance, warm
//! state and all; abandonment drops it.
//!
//! The shadow runs on a thread of its own, fed by a short queue: the chain hands it each batch
//! as it entered the stage with the live version's outcome for every sample, and never waits
//! for it. When the shadow falls behind, batches are skipped (counted); tag-plane updates are
//! never skipped. A failing shadow is retried on a fresh instance (made on its own thread) and
//! stops itself after the stage's failure limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::reason_name;
use super::stage::{decide, Decisions, Prepared, StageHandle};
use crate::model::SampleBatch;
use crate::plugin::{
    BatchColumns, CallMeter, LoadedPlugin, MeterSnapshot, Planes, PluginInstance, TagDecision,
    TagInfo,
};

/// Messages a shadow's queue holds before the chain skips batches.
const QUEUE: usize = 8;

/// How many example differences a report keeps (the latest).
pub const DIFF_EXAMPLES: usize = 100;

/// What became of a sample in one version of the stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Passed on with this value and quality (`value` null for NaN).
    Passed { value: Option<f64>, quality: u32 },
    /// Refused or dropped; `reason` is the declared reason name, `tag-rejected: <reason>`, or
    /// `dropped: <reason>` for a sample dropped on purpose.
    Rejected { reason: String },
}

impl Outcome {
    fn passed(value: f64, quality: u32) -> Outcome {
        Outcome::Passed {
            value: (!value.is_nan()).then_some(value),
            quality,
        }
    }
}

/// One sample the two versions treated differently.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampleDiff {
    pub tag_id: u32,
    pub vendor_path: String,
    /// The tag's path as it reaches the stage.
    pub path: String,
    pub timestamp_ns: u64,
    /// The value as it entered the stage (null for NaN).
    pub input: Option<f64>,
    pub live: Outcome,
    pub shadow: Outcome,
}

/// One tag the two versions decided differently.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TagDiff {
    pub tag_id: u32,
    pub vendor_path: String,
    pub path: String,
    pub live: String,
    pub shadow: String,
}

/// Where a shadow run stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ShadowState {
    Running,
    /// Stopped itself after `failures_before_quarantine` consecutive failed calls.
    Failed {
        reason: String,
    },
    Promoted,
    Abandoned,
}

/// What a shadow run found so far.
#[derive(Clone, Debug, Serialize)]
pub struct ShadowReport {
    pub stage: String,
    /// The live version it is compared with (at the latest batch).
    pub live: String,
    pub plugin: String,
    pub version: String,
    pub digest: String,
    pub started_unix_s: u64,
    #[serde(flatten)]
    pub state: ShadowState,
    /// Batches both versions processed.
    pub batches: u64,
    /// Batches the live version did not finish (quarantined, held, failed): not compared.
    pub batches_skipped: u64,
    pub samples_compared: u64,
    pub samples_same: u64,
    pub samples_differing: u64,
    /// Of the differing: both passed, with another value.
    pub value_differs: u64,
    /// Of the differing: both passed with the same value, another quality.
    pub quality_differs: u64,
    pub rejected_only_by_live: u64,
    pub rejected_only_by_shadow: u64,
    /// Both refused, for different reasons.
    pub reason_differs: u64,
    /// Tags known to the stage, and how many of them the versions decide differently now.
    pub tags_compared: u64,
    pub tags_differing: u64,
    pub shadow_failures: u64,
    pub last_failure: Option<String>,
    /// The latest differing samples (at most `DIFF_EXAMPLES`).
    pub sample_diffs: VecDeque<SampleDiff>,
    /// Differing tag decisions (at most `DIFF_EXAMPLES`).
    pub tag_diffs: Vec<TagDiff>,
    /// Cost of the shadow's calls (compare with the stage's `calls`).
    pub calls: MeterSnapshot,
    #[serde(skip)]
    meter: Arc<CallMeter>,
}

impl ShadowReport {
    fn new(stage: &str, live: String, loaded: &LoadedPlugin) -> Self {
        ShadowReport {
            stage: stage.into(),
            live,
            plugin: loaded.name().into(),
            version: loaded.version().into(),
            digest: loaded.digest().to_string(),
            started_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            state: ShadowState::Running,
            batches: 0,
            batches_skipped: 0,
            samples_compared: 0,
            samples_same: 0,
            samples_differing: 0,
            value_differs: 0,
            quality_differs: 0,
            rejected_only_by_live: 0,
            rejected_only_by_shadow: 0,
            reason_differs: 0,
            tags_compared: 0,
            tags_differing: 0,
            shadow_failures: 0,
            last_failure: None,
            sample_diffs: VecDeque::new(),
            tag_diffs: Vec::new(),
            calls: MeterSnapshot::default(),
            meter: Arc::new(CallMeter::default()),
        }
    }

    /// The report as it stands, with the call costs read now.
    pub fn snapshot(shared: &SharedReport) -> ShadowReport {
        let mut r = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
        r.calls = r.meter.snapshot();
        r
    }
}

/// The report as shared between the shadow's thread (writer) and the admin API (reader).
pub type SharedReport = Arc<Mutex<ShadowReport>>;

/// What the chain sends a shadow's thread, in the order the chain saw it.
enum ToShadow {
    Batch {
        entering: SampleBatch,
        live: Vec<Outcome>,
        live_label: String,
    },
    /// New or changed inputs of the stage, and the live decisions after them.
    Tags {
        ids: Vec<u32>,
        inputs: Vec<Option<TagInfo>>,
        live: Decisions,
        known: usize,
    },
    /// The live version changed (a swap): compare the tag decisions again.
    CompareTags { live: Decisions, known: usize },
    /// Hand the run back (for promotion) and stop.
    Finish { reply: mpsc::Sender<ShadowRun> },
}

/// The chain's side of a shadow run: the queue to its thread.
pub(super) struct Shadow {
    tx: SyncSender<ToShadow>,
    pub report: SharedReport,
    active: Arc<AtomicBool>,
}

impl Shadow {
    /// Compares `run`'s tag decisions with `live`, then starts the shadow's thread.
    pub fn spawn(
        handle: Arc<StageHandle>,
        run: ShadowRun,
        live: Decisions,
        known: usize,
    ) -> std::io::Result<Shadow> {
        let (tx, rx) = mpsc::sync_channel::<ToShadow>(QUEUE);
        let report = run.report.clone();
        let active = run.active.clone();
        let name = format!("ferrule-shadow-{}", handle.name);
        // Here, so the report the caller gets already has the tag comparison.
        run.compare_tags(&handle, &live, known);
        drop(live);
        std::thread::Builder::new().name(name).spawn(move || {
            // Should the shadow's thread die (a bug), the report says so instead of "running".
            let _stopped = StoppedGuard {
                report: run.report.clone(),
                active: run.active.clone(),
            };
            let mut run = run;
            for msg in rx {
                match msg {
                    ToShadow::Batch {
                        entering,
                        live,
                        live_label,
                    } => run.process(&handle, live_label, &entering, &live),
                    ToShadow::Tags {
                        ids,
                        inputs,
                        live,
                        known,
                    } => {
                        run.decide_tags(&handle, &ids, &inputs);
                        run.compare_tags(&handle, &live, known);
                    }
                    ToShadow::CompareTags { live, known } => {
                        run.compare_tags(&handle, &live, known)
                    }
                    ToShadow::Finish { reply } => {
                        let _ = reply.send(run);
                        return;
                    }
                }
            }
        })?;
        Ok(Shadow { tx, report, active })
    }

    /// Whether it still takes batches (it has not failed).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Offers a batch; skipped (and counted) when the shadow is behind.
    pub fn offer(&self, entering: SampleBatch, live: Vec<Outcome>, live_label: String) {
        let msg = ToShadow::Batch {
            entering,
            live,
            live_label,
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(msg) {
            self.skipped();
        }
    }

    /// Counts a batch the shadow did not see.
    pub fn skipped(&self) {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .batches_skipped += 1;
    }

    /// Tag-plane inputs that are new or changed; waits for room in the queue (never skipped).
    pub fn tags(&self, ids: Vec<u32>, inputs: Vec<Option<TagInfo>>, live: Decisions, known: usize) {
        let _ = self.tx.send(ToShadow::Tags {
            ids,
            inputs,
            live,
            known,
        });
    }

    /// The live decisions changed (a swap of the live version).
    pub fn live_changed(&self, live: Decisions, known: usize) {
        let _ = self.tx.send(ToShadow::CompareTags { live, known });
    }

    pub fn set_state(&self, state: ShadowState) {
        self.report.lock().unwrap_or_else(|e| e.into_inner()).state = state;
    }

    /// Stops the thread once it has worked through its queue and returns the run.
    pub fn finish(self) -> Option<ShadowRun> {
        let (reply, back) = mpsc::channel();
        self.tx.send(ToShadow::Finish { reply }).ok()?;
        back.recv().ok()
    }
}

/// Marks the run failed if its thread unwinds.
struct StoppedGuard {
    report: SharedReport,
    active: Arc<AtomicBool>,
}

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.active.store(false, Ordering::Relaxed);
            self.report.lock().unwrap_or_else(|e| e.into_inner()).state = ShadowState::Failed {
                reason: "the shadow's thread stopped unexpectedly (see the log)".into(),
            };
        }
    }
}

/// A shadow instance and what it decided, owned by the shadow's thread.
pub(super) struct ShadowRun {
    pub loaded: LoadedPlugin,
    pub config_json: String,
    pub instance: PluginInstance,
    pub decisions: Vec<Option<TagDecision>>,
    meter: Arc<CallMeter>,
    pub report: SharedReport,
    consecutive_failures: u32,
    /// False once it failed `failures_before_quarantine` times in a row.
    active: Arc<AtomicBool>,
}

impl ShadowRun {
    /// Takes over a prepared instance (its decisions cover the tags known when prepared).
    pub fn start(handle: &StageHandle, live: String, mut p: Prepared) -> ShadowRun {
        let report = ShadowReport::new(&handle.name, live, &p.loaded);
        let meter = report.meter.clone();
        p.instance.set_meter(meter.clone());
        ShadowRun {
            report: Arc::new(Mutex::new(report)),
            loaded: p.loaded,
            config_json: p.config_json,
            instance: p.instance,
            decisions: p.decisions,
            meter,
            consecutive_failures: 0,
            active: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether it still takes batches.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn report(&self) -> std::sync::MutexGuard<'_, ShadowReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_state(&self, state: ShadowState) {
        self.report().state = state;
    }

    /// Decides `inputs` (tag ids `ids`) on the shadow's tag plane. A failure stops the shadow.
    pub fn decide_tags(&mut self, handle: &StageHandle, ids: &[u32], inputs: &[Option<TagInfo>]) {
        if !self.active() {
            return;
        }
        match decide(&mut self.instance, inputs) {
            Ok(decisions) => {
                for (&id, d) in ids.iter().zip(decisions) {
                    let id = id as usize;
                    if id >= self.decisions.len() {
                        self.decisions.resize(id + 1, None);
                    }
                    self.decisions[id] = d;
                }
            }
            Err(e) => self.fail(handle, format!("tag plane failed: {e}"), true),
        }
    }

    /// Recounts the tags whose decisions differ from `live` (the first `known` ids).
    pub fn compare_tags(&self, handle: &StageHandle, live: &[Option<TagDecision>], known: usize) {
        if !self.active() {
            return;
        }
        let mut differing = 0u64;
        let mut examples = Vec::new();
        handle.with_inputs(|inputs| {
            for id in 0..known {
                let l = live.get(id).and_then(|d| d.as_ref());
                let s = self.decisions.get(id).and_then(|d| d.as_ref());
                if l == s {
                    continue;
                }
                differing += 1;
                if examples.len() < DIFF_EXAMPLES {
                    let info = inputs.get(id).and_then(|t| t.as_ref());
                    examples.push(TagDiff {
                        tag_id: id as u32,
                        vendor_path: info.map(|t| t.vendor_path.clone()).unwrap_or_default(),
                        path: info.map(|t| t.path.clone()).unwrap_or_default(),
                        live: describe_decision(l),
                        shadow: describe_decision(s),
                    });
                }
            }
        });
        let mut r = self.report();
        r.tags_compared = known as u64;
        r.tags_differing = differing;
        r.tag_diffs = examples;
    }

    /// Runs the shadow on `entering` (the batch as it entered the stage) and compares each
    /// sample's outcome with the live version's (`live`, by the same index).
    pub fn process(
        &mut self,
        handle: &StageHandle,
        live_label: String,
        entering: &SampleBatch,
        live: &[Outcome],
    ) {
        if !self.active() {
            return;
        }
        let Some(shadow) = self.outcomes(handle, entering) else {
            self.report().batches_skipped += 1;
            return;
        };
        self.consecutive_failures = 0;
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        r.live = live_label;
        r.batches += 1;
        r.samples_compared += entering.len() as u64;
        let mut diffs = Vec::new();
        for (i, (l, s)) in live.iter().zip(&shadow).enumerate() {
            match (l, s) {
                (
                    Outcome::Passed {
                        value: lv,
                        quality: lq,
                    },
                    Outcome::Passed {
                        value: sv,
                        quality: sq,
                    },
                ) => {
                    let same_value = match (lv, sv) {
                        (Some(a), Some(b)) => a.to_bits() == b.to_bits(),
                        (None, None) => true,
                        _ => false,
                    };
                    if !same_value {
                        r.value_differs += 1;
                    } else if lq != sq {
                        r.quality_differs += 1;
                    } else {
                        r.samples_same += 1;
                        continue;
                    }
                }
                (Outcome::Rejected { reason: a }, Outcome::Rejected { reason: b }) => {
                    if a == b {
                        r.samples_same += 1;
                        continue;
                    }
                    r.reason_differs += 1;
                }
                (Outcome::Rejected { .. }, Outcome::Passed { .. }) => r.rejected_only_by_live += 1,
                (Outcome::Passed { .. }, Outcome::Rejected { .. }) => {
                    r.rejected_only_by_shadow += 1
                }
            }
            r.samples_differing += 1;
            if diffs.len() < DIFF_EXAMPLES {
                diffs.push(i);
            }
        }
        if diffs.is_empty() {
            return;
        }
        handle.with_inputs(|inputs| {
            for i in diffs {
                let tag = entering.tag_ids[i];
                let info = inputs.get(tag as usize).and_then(|t| t.as_ref());
                if r.sample_diffs.len() >= DIFF_EXAMPLES {
                    r.sample_diffs.pop_front();
                }
                let input = entering.values[i];
                r.sample_diffs.push_back(SampleDiff {
                    tag_id: tag,
                    vendor_path: info.map(|t| t.vendor_path.clone()).unwrap_or_default(),
                    path: info.map(|t| t.path.clone()).unwrap_or_default(),
                    timestamp_ns: entering.timestamps[i],
                    input: (!input.is_nan()).then_some(input),
                    live: live[i].clone(),
                    shadow: shadow[i].clone(),
                });
            }
        });
    }

    /// The shadow's outcome for every sample of `entering`; None if its call failed.
    fn outcomes(&mut self, handle: &StageHandle, entering: &SampleBatch) -> Option<Vec<Outcome>> {
        let loaded = self.loaded.clone();
        let info = loaded.info();
        let mut tag_refusal: Vec<Option<String>> = entering
            .tag_ids
            .iter()
            .map(|&t| match self.decisions.get(t as usize) {
                Some(Some(TagDecision::Reject(r))) => Some(format!("tag-rejected: {r}")),
                _ => None,
            })
            .collect();
        let mark: Vec<bool> = tag_refusal.iter().map(Option::is_some).collect();
        let mut kept = entering.clone();
        if mark.contains(&true) {
            kept.split_off_marked(&mark);
        }
        let mut sample_refusal: Vec<Option<String>> = vec![None; kept.len()];
        if info.planes.contains(Planes::SAMPLE) && !kept.is_empty() {
            let cols = BatchColumns {
                tag_ids: &kept.tag_ids,
                values: &kept.values,
                quality: &kept.quality,
                timestamps: &kept.timestamps,
                extras: &kept.extras,
            };
            match self.instance.on_batch(cols) {
                Ok(out) => {
                    if let Some(v) = out.values {
                        kept.values = v;
                    }
                    if let Some(q) = out.quality {
                        kept.quality = q;
                    }
                    for rej in out.rejected {
                        sample_refusal[rej.index as usize] =
                            Some(reason_name(info, rej.reason).to_string());
                    }
                    for d in out.dropped {
                        sample_refusal[d.index as usize] =
                            Some(super::chain::dropped_outcome(reason_name(info, d.reason)));
                    }
                }
                Err(e) => {
                    let poisoned = self.instance.is_poisoned();
                    self.fail(handle, e.to_string(), poisoned);
                    return None;
                }
            }
        }
        let mut j = 0;
        let outcomes = tag_refusal
            .iter_mut()
            .map(|refused| match refused.take() {
                Some(reason) => Outcome::Rejected { reason },
                None => {
                    let o = match sample_refusal[j].take() {
                        Some(reason) => Outcome::Rejected { reason },
                        None => Outcome::passed(kept.values[j], kept.quality[j]),
                    };
                    j += 1;
                    o
                }
            })
            .collect();
        Some(outcomes)
    }

    /// Counts a failed call; makes a fresh instance if this one is unusable (on the shadow's
    /// thread: the chain does not wait); stops the shadow after the stage's failure limit.
    fn fail(&mut self, handle: &StageHandle, reason: String, replace_instance: bool) {
        self.consecutive_failures += 1;
        let limit = handle.limits.failures_before_quarantine;
        tracing::warn!(stage = %handle.name, shadow = %format!("{}@{}", self.loaded.name(), self.loaded.version()), failures = self.consecutive_failures, "shadow call failed: {reason}");
        {
            let mut r = self.report();
            r.shadow_failures += 1;
            r.last_failure = Some(reason.clone());
        }
        if replace_instance && self.consecutive_failures < limit {
            match handle.prepare(
                super::PrepareKind::Swap,
                self.loaded.clone(),
                self.config_json.clone(),
            ) {
                Ok(p) => {
                    self.instance = p.instance;
                    self.instance.set_meter(self.meter.clone());
                    self.decisions = p.decisions;
                }
                Err(e) => {
                    self.consecutive_failures = limit;
                    self.report().last_failure = Some(format!("{reason}; no fresh instance: {e}"));
                }
            }
        }
        if self.consecutive_failures >= limit {
            self.active.store(false, Ordering::Relaxed);
            tracing::error!(stage = %handle.name, "shadow stopped after {limit} consecutive failures: {reason}");
            self.set_state(ShadowState::Failed { reason });
        }
    }
}

/// The live version's outcome for every sample of `entering`: `decisions` are the live tag
/// decisions, `refused` the live sample-plane refusals by index into the batch left after
/// the tag refusals (reason names), `out` the batch the live version passed on.
pub(super) fn live_outcomes(
    entering: &SampleBatch,
    decisions: &[Option<TagDecision>],
    refused: &[(u32, String)],
    out: &SampleBatch,
) -> Vec<Outcome> {
    let mut refused = refused.iter().peekable();
    let (mut after_tags, mut passed) = (0u32, 0usize);
    entering
        .tag_ids
        .iter()
        .map(|&t| {
            if let Some(Some(TagDecision::Reject(r))) = decisions.get(t as usize) {
                return Outcome::Rejected {
                    reason: format!("tag-rejected: {r}"),
                };
            }
            let j = after_tags;
            after_tags += 1;
            if let Some((_, reason)) = refused.next_if(|(i, _)| *i == j) {
                return Outcome::Rejected {
                    reason: reason.clone(),
                };
            }
            let o = match (out.values.get(passed), out.quality.get(passed)) {
                (Some(&v), Some(&q)) => Outcome::passed(v, q),
                // Cannot happen: the live output has one row per sample it passed.
                _ => Outcome::Rejected {
                    reason: "missing from the live output".into(),
                },
            };
            passed += 1;
            o
        })
        .collect()
}

fn describe_decision(d: Option<&TagDecision>) -> String {
    match d {
        None => "none".into(),
        Some(TagDecision::Reject(r)) => format!("reject: {r}"),
        Some(TagDecision::Accept(a)) => {
            let mut parts = Vec::new();
            if let Some(p) = &a.path {
                parts.push(format!("path={p}"));
            }
            if let Some(u) = &a.unit {
                parts.push(format!("unit={u}"));
            }
            if let Some(l) = &a.limits {
                parts.push(format!(
                    "limits=[{:?}, {:?}, rate {:?}]",
                    l.low, l.high, l.max_rate_per_second
                ));
            }
            for (k, v) in &a.enrichment {
                parts.push(format!("{k}={v}"));
            }
            if parts.is_empty() {
                "accept".into()
            } else {
                format!("accept {}", parts.join(" "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::TagAccept;

    fn batch(tags: &[u32], values: &[f64]) -> SampleBatch {
        SampleBatch {
            tag_ids: tags.to_vec(),
            values: values.to_vec(),
            quality: vec![0; tags.len()],
            timestamps: (0..tags.len() as u64).collect(),
            ..SampleBatch::default()
        }
    }

    #[test]
    fn live_outcomes_follow_tag_and_sample_refusals_back_to_the_entering_index() {
        let entering = batch(&[0, 1, 2, 0, 2], &[1.0, 2.0, 3.0, 4.0, f64::NAN]);
        let accept = Some(TagDecision::Accept(TagAccept {
            path: None,
            unit: None,
            limits: None,
            enrichment: vec![],
        }));
        let decisions = vec![
            accept.clone(),
            Some(TagDecision::Reject("unknown".into())),
            accept,
        ];
        // After the tag refusal the batch is [0:1.0, 2:3.0, 0:4.0, 2:NaN]; index 1 refused.
        let refused = vec![(1u32, "out-of-range".to_string())];
        let out = SampleBatch {
            quality: vec![0, 7, 0],
            ..batch(&[0, 0, 2], &[10.0, 40.0, f64::NAN])
        };
        let o = live_outcomes(&entering, &decisions, &refused, &out);
        assert_eq!(
            o,
            vec![
                Outcome::Passed {
                    value: Some(10.0),
                    quality: 0
                },
                Outcome::Rejected {
                    reason: "tag-rejected: unknown".into()
                },
                Outcome::Rejected {
                    reason: "out-of-range".into()
                },
                Outcome::Passed {
                    value: Some(40.0),
                    quality: 7
                },
                Outcome::Passed {
                    value: None,
                    quality: 0
                },
            ]
        );
    }

    #[test]
    fn decisions_are_described_for_the_report() {
        let d = TagDecision::Accept(TagAccept {
            path: Some("plant/a/b/c/d/e".into()),
            unit: Some("kPa".into()),
            limits: None,
            enrichment: vec![("asset".into(), "P-1".into())],
        });
        assert_eq!(
            describe_decision(Some(&d)),
            "accept path=plant/a/b/c/d/e unit=kPa asset=P-1"
        );
        assert_eq!(
            describe_decision(Some(&TagDecision::Reject("no".into()))),
            "reject: no"
        );
        assert_eq!(describe_decision(None), "none");
    }
}
