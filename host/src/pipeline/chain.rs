//! The chain worker: one thread that takes batches from the sources, runs them through the
//! stages in order, sends what passes to every sink and what is refused to the dead-letter,
//! and installs new plugin instances between batches (hot swap, rollback, recycle). It owns
//! every plugin instance; nothing else calls into a plugin while the pipeline runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::reason_name;
use super::shadow::{live_outcomes, Shadow, ShadowRun, ShadowState, SharedReport};
use super::stage::{
    any_reject, changed_decisions, decide, Decisions, PrepareKind, Prepared, StageHandle,
    StageState,
};
use super::QuarantinePolicy;
use crate::model::{
    DeadLetter, DeadLetterBatch, OutputBatch, Refusal, ResolvedTag, TagNames, TagTable,
};
use crate::model::{SampleBatch, TagRegistry};
use crate::plugin::{
    BatchColumns, CallError, Command, CommandDecision, LoadedPlugin, Planes, PluginInstance,
    TagDecision, TagInfo,
};

/// What happened at an install.
#[derive(Clone, Debug)]
pub struct InstallReport {
    pub stage: String,
    pub from: String,
    pub to: String,
    /// Time the chain spent installing (it processed no batch meanwhile).
    pub stall: Duration,
    /// Tags whose decision changed and were passed again through later stages.
    pub retagged: usize,
}

pub enum Control {
    Install {
        stage: usize,
        prepared: Box<Prepared>,
        reply: Option<oneshot::Sender<Result<InstallReport, String>>>,
    },
    /// Lift a quarantine and try the plugin again (a fresh instance).
    Release {
        stage: usize,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Quarantine a stage by hand (its policy applies as after failures).
    Quarantine {
        stage: usize,
        reason: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Run a prepared instance in shadow beside the stage's live one (replaces any shadow).
    StartShadow {
        stage: usize,
        prepared: Box<Prepared>,
        reply: oneshot::Sender<Result<SharedReport, String>>,
    },
    /// End the stage's shadow run: install it (`promote`) or drop it.
    EndShadow {
        stage: usize,
        promote: bool,
        reply: oneshot::Sender<Result<Option<InstallReport>, String>>,
    },
    /// Run a write request through the stages' command plane, last stage first.
    Command {
        command: Box<Command>,
        reply: oneshot::Sender<CommandVerdict>,
    },
    /// Stop: dead-letter anything held, drain the queue, flush.
    Shutdown,
}

/// What the command plane decided for a write request.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandVerdict {
    /// On to the device with `value` (in the unit the first stage receives, the source's);
    /// `stages` checked it, in the order they were asked.
    Allow { value: f64, stages: Vec<String> },
    /// `stage` refused: the reason's declared name and the detail.
    Refuse {
        stage: String,
        reason: String,
        detail: String,
    },
}

struct StageRuntime {
    handle: Arc<StageHandle>,
    loaded: LoadedPlugin,
    instance: PluginInstance,
    decisions: Decisions,
    any_tag_rejected: bool,
    sample_plane: bool,
    consecutive_failures: u32,
    quarantined: Option<String>,
    recycle_pending: bool,
    shadow: Option<Shadow>,
    /// Sample-plane refusals of the last live call (index, reason name), kept only while a
    /// shadow needs them.
    live_refusals: Vec<(u32, String)>,
}

impl StageRuntime {
    /// Takes over a prepared instance; returns the replaced instance and decisions, whose
    /// teardown (unmapping linear memory, freeing 30 k decisions) the caller can move off the
    /// hot path.
    fn adopt(&mut self, mut p: Prepared) -> Retired {
        self.sample_plane = p.loaded.info().planes.contains(Planes::SAMPLE);
        self.loaded = p.loaded;
        p.instance.set_meter(self.handle.meter.clone());
        let old_instance = std::mem::replace(&mut self.instance, p.instance);
        let old_decisions = std::mem::replace(&mut self.decisions, Arc::new(p.decisions));
        self.any_tag_rejected = p.any_reject;
        self.handle.publish_decisions(self.decisions.clone());
        Box::new((old_instance, old_decisions))
    }

    /// The decisions, for changing in place. Releases the handle's shared copy first so this
    /// does not deep-clone 30 k decisions; call `publish_decisions` when done.
    fn decisions_mut(&mut self) -> &mut Vec<Option<TagDecision>> {
        self.handle.publish_decisions(Arc::new(Vec::new()));
        Arc::make_mut(&mut self.decisions)
    }

    fn publish_decisions(&mut self) {
        self.any_tag_rejected = any_reject(&self.decisions);
        self.handle.publish_decisions(self.decisions.clone());
    }

    fn label(&self) -> String {
        format!("{}@{}", self.loaded.name(), self.loaded.version())
    }

    /// Runs the shadow's tag plane on changed or new inputs (`ids`) and recounts the tags
    /// the two versions decide differently among the first `known`.
    fn shadow_decide(&mut self, ids: &[u32], inputs: &[Option<TagInfo>], known: usize) {
        if let Some(shadow) = self.shadow.as_ref().filter(|s| s.active()) {
            shadow.tags(ids.to_vec(), inputs.to_vec(), self.decisions.clone(), known);
        }
    }

    /// Quarantines the stage (state, counter) and returns the policy that now applies.
    fn quarantine(&mut self, reason: String) -> QuarantinePolicy {
        let policy = self.handle.policy;
        self.handle
            .stats
            .quarantines
            .fetch_add(1, Ordering::Relaxed);
        self.handle.set_state(StageState::Quarantined {
            reason: reason.clone(),
            policy: policy.as_str().into(),
        });
        self.quarantined = Some(reason);
        policy
    }

    /// Whether a running shadow wants this stage's batches.
    fn shadowed(&self) -> bool {
        self.shadow.as_ref().is_some_and(|s| s.active())
    }
}

/// What an install replaced, to be dropped away from the chain thread.
type Retired = Box<dyn Send>;

/// Drops retired instances on a thread of its own, so an install stalls the chain only for
/// the pointer swap.
struct Reaper(std::sync::mpsc::Sender<Retired>);

impl Reaper {
    fn start() -> Reaper {
        let (tx, rx) = std::sync::mpsc::channel::<Retired>();
        let spawned = std::thread::Builder::new()
            .name("ferrule-reaper".into())
            .spawn(move || rx.into_iter().for_each(drop));
        if let Err(e) = spawned {
            tracing::warn!("no reaper thread ({e}); retired instances drop on the chain thread");
        }
        Reaper(tx)
    }
    fn retire(&self, retired: Retired) {
        // If the reaper is gone the value comes back in the error and drops here.
        let _ = self.0.send(retired);
    }
}

/// Outcome of running a batch from some stage on.
enum Flow {
    Done,
    Held(SampleBatch, usize),
    Stop(String),
}

pub struct Chain {
    stages: Vec<StageRuntime>,
    registry: Arc<TagRegistry>,
    known_tags: usize,
    table: Arc<TagTable>,
    outputs: Vec<mpsc::Sender<Arc<OutputBatch>>>,
    dead_letters: mpsc::Sender<DeadLetterBatch>,
    control_tx: mpsc::Sender<Control>,
    held: Option<(SampleBatch, usize)>,
    reaper: Reaper,
}

/// A stage's first instance, made by the pipeline at start.
pub struct InitialStage {
    pub handle: Arc<StageHandle>,
    pub prepared: Prepared,
}

impl Chain {
    pub fn new(
        stages: Vec<InitialStage>,
        registry: Arc<TagRegistry>,
        outputs: Vec<mpsc::Sender<Arc<OutputBatch>>>,
        dead_letters: mpsc::Sender<DeadLetterBatch>,
        control_tx: mpsc::Sender<Control>,
    ) -> Self {
        let stages = stages
            .into_iter()
            .map(|s| {
                let mut instance = s.prepared.instance;
                instance.set_meter(s.handle.meter.clone());
                let mut rt = StageRuntime {
                    handle: s.handle,
                    loaded: s.prepared.loaded.clone(),
                    instance,
                    decisions: Arc::new(Vec::new()),
                    any_tag_rejected: false,
                    sample_plane: false,
                    consecutive_failures: 0,
                    quarantined: None,
                    recycle_pending: false,
                    shadow: None,
                    live_refusals: Vec::new(),
                };
                rt.sample_plane = rt.loaded.info().planes.contains(Planes::SAMPLE);
                rt
            })
            .collect();
        Chain {
            stages,
            registry,
            known_tags: 0,
            table: Arc::new(TagTable::new()),
            outputs,
            dead_letters,
            control_tx,
            held: None,
            reaper: Reaper::start(),
        }
    }

    /// Runs until the sources are done (their senders dropped) or `Control::Shutdown`.
    pub fn run(
        mut self,
        rt: tokio::runtime::Handle,
        mut input: mpsc::Receiver<SampleBatch>,
        mut control: mpsc::Receiver<Control>,
    ) -> Result<(), String> {
        enum Next {
            Control(Option<Control>),
            Batch(Option<SampleBatch>),
        }
        let mut shutting_down = false;
        loop {
            if let Some((batch, k)) = self.held.take() {
                if shutting_down {
                    self.abandon_at_shutdown(batch, k)?;
                    continue;
                }
                let msg = rt.block_on(control.recv());
                match msg {
                    Some(Control::Shutdown) | None => {
                        shutting_down = true;
                        self.held = Some((batch, k));
                    }
                    Some(c) => {
                        let resumable = self.handle_control(c);
                        if resumable {
                            self.flow(batch, k)?;
                        } else {
                            self.held = Some((batch, k));
                        }
                    }
                }
                continue;
            }
            let next = rt.block_on(async {
                tokio::select! {
                    biased;
                    c = control.recv(), if !shutting_down => Next::Control(c),
                    b = input.recv() => Next::Batch(b),
                }
            });
            match next {
                Next::Control(Some(Control::Shutdown)) | Next::Control(None) => {
                    shutting_down = true;
                }
                Next::Control(Some(c)) => {
                    self.handle_control(c);
                }
                Next::Batch(Some(batch)) => {
                    self.extend_tags();
                    if shutting_down
                        && self.stages.iter().any(|s| {
                            s.quarantined.is_some() && s.handle.policy == QuarantinePolicy::Hold
                        })
                    {
                        self.abandon_at_shutdown(batch, 0)?;
                        continue;
                    }
                    self.flow(batch, 0)?;
                }
                Next::Batch(None) => break,
            }
        }
        Ok(())
    }

    fn flow(&mut self, batch: SampleBatch, from: usize) -> Result<(), String> {
        match self.run_from(batch, from)? {
            Flow::Done => Ok(()),
            Flow::Held(b, k) => {
                self.held = Some((b, k));
                Ok(())
            }
            Flow::Stop(reason) => Err(reason),
        }
    }

    /// Returns whether a held batch may be retried now.
    fn handle_control(&mut self, c: Control) -> bool {
        match c {
            Control::Install {
                stage,
                prepared,
                reply,
            } => {
                let result = self.install(stage, *prepared);
                if let Err(e) = &result {
                    tracing::warn!(stage = %self.stages[stage].handle.name, "install refused: {e}");
                }
                let ok = result.is_ok();
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
                ok
            }
            Control::Release { stage, reply } => {
                let result = self.release(stage);
                let ok = result.is_ok();
                let _ = reply.send(result);
                ok
            }
            Control::Quarantine {
                stage,
                reason,
                reply,
            } => {
                let _ = reply.send(self.quarantine_by_operator(stage, reason));
                false
            }
            Control::StartShadow {
                stage,
                prepared,
                reply,
            } => {
                let _ = reply.send(self.start_shadow(stage, *prepared));
                false
            }
            Control::EndShadow {
                stage,
                promote,
                reply,
            } => {
                let result = self.end_shadow(stage, promote);
                let installed = matches!(result, Ok(Some(_)));
                let _ = reply.send(result);
                installed
            }
            Control::Command { command, reply } => {
                let _ = reply.send(self.command(*command));
                false
            }
            Control::Shutdown => false,
        }
    }

    /// The command plane: each stage declaring it sees the command with the tag's path as
    /// that stage produces it and the value in its output unit, last stage first; its
    /// `allow` value goes on to the stage before. A quarantined stage, a stage that rejects
    /// the tag, a trap or a malformed decision refuses the command.
    fn command(&mut self, mut cmd: Command) -> CommandVerdict {
        let id = cmd.tag_id as usize;
        let refuse = |stage: &str, reason: &str, detail: String| CommandVerdict::Refuse {
            stage: stage.to_string(),
            reason: reason.to_string(),
            detail,
        };
        let Some(d) = self.registry.get(cmd.tag_id) else {
            return refuse("", "unknown-tag", format!("no tag {id}"));
        };
        let mut input = Some(TagInfo {
            id: cmd.tag_id,
            path: d.vendor_path.clone(),
            vendor_path: d.vendor_path.clone(),
            unit: d.unit.clone(),
            data_type: d.data_type,
            source: d.source.clone(),
            metadata: d.metadata.clone(),
        });
        let mut produced = Vec::with_capacity(self.stages.len());
        for st in &self.stages {
            input = next_input(
                input.as_ref(),
                st.decisions.get(id).and_then(|d| d.as_ref()),
            );
            produced.push(input.as_ref().map(|t| t.path.clone()));
        }
        let mut asked = Vec::new();
        for k in (0..self.stages.len()).rev() {
            let st = &mut self.stages[k];
            if !st.loaded.info().planes.contains(Planes::COMMAND) {
                continue;
            }
            let name = st.handle.name.clone();
            let Some(path) = &produced[k] else {
                return refuse(&name, "tag-rejected", "the stage rejects this tag".into());
            };
            if let Some(q) = &st.quarantined {
                return refuse(&name, "stage-quarantined", q.clone());
            }
            cmd.path = path.clone();
            match st.instance.on_command(&cmd) {
                Ok(CommandDecision::Allow(v)) => {
                    if let Some(v) = v {
                        cmd.value = v;
                    }
                    asked.push(name);
                }
                Ok(CommandDecision::Refuse(r)) => {
                    let reason = reason_name(st.loaded.info(), r.reason).to_string();
                    return refuse(&name, &reason, r.detail);
                }
                Err(e) => return refuse(&name, "plugin-failed", e.to_string()),
            }
        }
        CommandVerdict::Allow {
            value: cmd.value,
            stages: asked,
        }
    }

    fn quarantine_by_operator(&mut self, k: usize, reason: String) -> Result<(), String> {
        let st = &mut self.stages[k];
        if st.quarantined.is_some() {
            return Err("already quarantined".into());
        }
        let reason = format!("{}: quarantined by the operator: {reason}", st.label());
        let policy = st.quarantine(reason.clone());
        tracing::warn!(stage = %st.handle.name, policy = policy.as_str(), "{reason}");
        Ok(())
    }

    fn start_shadow(&mut self, k: usize, mut p: Prepared) -> Result<SharedReport, String> {
        let known = self.known_tags;
        let st = &mut self.stages[k];
        p.catch_up(&st.handle, known)
            .map_err(|e| format!("tag plane of the shadow version failed: {e}"))?;
        p.decisions.resize(known, None);
        let run = ShadowRun::start(&st.handle, st.label(), p);
        let shadow = Shadow::spawn(st.handle.clone(), run, st.decisions.clone(), known)
            .map_err(|e| format!("cannot start the shadow's thread: {e}"))?;
        let report = shadow.report.clone();
        st.handle.set_shadow_report(report.clone());
        st.live_refusals.clear();
        if let Some(old) = st.shadow.replace(shadow) {
            // Its thread drops the instance once it has drained its queue.
            old.set_state(ShadowState::Abandoned);
        }
        tracing::info!(stage = %st.handle.name, "shadow run started");
        Ok(report)
    }

    fn end_shadow(&mut self, k: usize, promote: bool) -> Result<Option<InstallReport>, String> {
        let st = &mut self.stages[k];
        let Some(shadow) = st.shadow.take() else {
            return Err("no shadow run on this stage".into());
        };
        st.live_refusals = Vec::new();
        if !promote {
            shadow.set_state(ShadowState::Abandoned);
            tracing::info!(stage = %st.handle.name, "shadow run abandoned");
            return Ok(None);
        }
        let failed = |report: &SharedReport| {
            let reason = report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_failure
                .clone()
                .unwrap_or_default();
            format!("the shadow version failed ({reason}); abandon it instead")
        };
        if !shadow.active() {
            let message = failed(&shadow.report);
            st.shadow = Some(shadow);
            return Err(message);
        }
        // Waits for the shadow to work through its queue: its decisions and state are then
        // those of every batch and tag the chain handed it.
        let report = shadow.report.clone();
        let Some(shadow) = shadow.finish() else {
            return Err("the shadow's thread stopped".into());
        };
        if !shadow.active() || shadow.instance.is_poisoned() {
            return Err(failed(&report));
        }
        let instance = shadow.instance;
        let any_reject = any_reject(&shadow.decisions);
        let prepared = Prepared {
            kind: PrepareKind::Swap,
            loaded: shadow.loaded,
            config_json: shadow.config_json,
            instance,
            decisions: shadow.decisions,
            generation: st.handle.generation(),
            // Not the running decisions: the install compares them itself.
            diffed_against: Arc::new(Vec::new()),
            changed: Vec::new(),
            any_reject,
        };
        let installed = self.install(k, prepared)?;
        report.lock().unwrap_or_else(|e| e.into_inner()).state = ShadowState::Promoted;
        Ok(Some(installed))
    }

    fn release(&mut self, k: usize) -> Result<(), String> {
        let st = &mut self.stages[k];
        if st.instance.is_poisoned() {
            let p = st.handle.fresh_instance().map_err(|e| e.to_string())?;
            self.reaper.retire(st.adopt(p));
        }
        st.consecutive_failures = 0;
        st.quarantined = None;
        st.handle.set_state(StageState::Running);
        tracing::info!(stage = %st.handle.name, plugin = %st.label(), "stage released from quarantine");
        Ok(())
    }

    fn install(&mut self, k: usize, mut p: Prepared) -> Result<InstallReport, String> {
        let started = Instant::now();
        let known = self.known_tags;
        let st = &mut self.stages[k];
        let diffed_here = p.decisions.len() != known || p.generation != st.handle.generation();
        p.catch_up(&st.handle, known)
            .map_err(|e| format!("tag plane of the new version failed: {e}"))?;
        if diffed_here {
            p.decisions.truncate(known);
            p.decisions.resize(known, None);
            p.any_reject = any_reject(&p.decisions);
        }
        // The preparer compared with the running decisions; redo it only if those changed since.
        let changed: Vec<u32> = if !diffed_here && Arc::ptr_eq(&p.diffed_against, &st.decisions) {
            std::mem::take(&mut p.changed)
        } else {
            changed_decisions(&st.decisions, &p.decisions, known)
        };
        let from = st.label();
        let kind = p.kind;
        let loaded = p.loaded.clone();
        let config_json = p.config_json.clone();
        let retired = st.adopt(p);
        st.consecutive_failures = 0;
        st.quarantined = None;
        st.recycle_pending = false;
        st.handle.set_state(StageState::Running);
        st.handle.installed(kind, &loaded, &config_json);
        let to = st.label();
        let stage_name = st.handle.name.clone();
        match kind {
            PrepareKind::Recycle => st.handle.stats.recycles.fetch_add(1, Ordering::Relaxed),
            _ => st.handle.stats.swaps.fetch_add(1, Ordering::Relaxed),
        };
        if !changed.is_empty() {
            self.propagate(k, &changed);
        }
        let st = &mut self.stages[k];
        st.live_refusals.clear();
        if let Some(shadow) = &st.shadow {
            shadow.live_changed(st.decisions.clone(), known);
        }
        let stall = started.elapsed();
        self.stages[k].handle.record_stall(stall);
        // Tear the old instance down only now: unmapping its memory contends with the chain.
        self.reaper.retire(retired);
        tracing::info!(stage = %stage_name, %from, %to, ?kind, stall_us = stall.as_micros() as u64, retagged = changed.len(), "plugin installed");
        Ok(InstallReport {
            stage: stage_name,
            from,
            to,
            stall,
            retagged: changed.len(),
        })
    }

    /// Stage `k`'s decisions changed for `ids`: pass those tags through the later stages again.
    fn propagate(&mut self, k: usize, ids: &[u32]) {
        let mut current: Vec<(u32, Option<TagInfo>)> = {
            let st = &self.stages[k];
            st.handle.with_inputs(|inputs| {
                ids.iter()
                    .map(|&id| {
                        let input = inputs.get(id as usize).cloned().flatten();
                        let d = st.decisions.get(id as usize).cloned().flatten();
                        (id, next_input(input.as_ref(), d.as_ref()))
                    })
                    .collect()
            })
        };
        let known = self.known_tags;
        for j in k + 1..self.stages.len() {
            self.stages[j].handle.set_inputs(current.clone());
            let present: Vec<Option<TagInfo>> = current.iter().map(|(_, t)| t.clone()).collect();
            let decisions = self.decide_or_reject(j, &present);
            let st = &mut self.stages[j];
            let mine = st.decisions_mut();
            for ((id, input), d) in current.iter_mut().zip(decisions) {
                *input = next_input(input.as_ref(), d.as_ref());
                mine[*id as usize] = d;
            }
            st.publish_decisions();
            st.shadow_decide(ids, &present, known);
        }
        let table = Arc::make_mut(&mut self.table);
        for (id, info) in current {
            table[id as usize] = info.map(|t| Arc::new(resolved(&t)));
        }
    }

    /// Tag plane for tags the sources registered since the last batch.
    fn extend_tags(&mut self) {
        if self.registry.len() <= self.known_tags {
            return;
        }
        let base = self.known_tags;
        let new = self.registry.since(base);
        let mut inputs: Vec<Option<TagInfo>> = new
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Some(TagInfo {
                    id: (base + i) as u32,
                    path: d.vendor_path.clone(),
                    vendor_path: d.vendor_path.clone(),
                    unit: d.unit.clone(),
                    data_type: d.data_type,
                    source: d.source.clone(),
                    metadata: d.metadata.clone(),
                })
            })
            .collect();
        for k in 0..self.stages.len() {
            self.stages[k].handle.set_inputs(
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| ((base + i) as u32, t.clone()))
                    .collect(),
            );
            let decisions = self.decide_or_reject(k, &inputs);
            let st = &mut self.stages[k];
            let shadow_inputs = st.shadowed().then(|| inputs.clone());
            let mine = st.decisions_mut();
            mine.resize(base, None);
            for (input, d) in inputs.iter_mut().zip(decisions) {
                *input = next_input(input.as_ref(), d.as_ref());
                mine.push(d);
            }
            st.publish_decisions();
            if let Some(shadow_inputs) = shadow_inputs {
                let ids: Vec<u32> = (base..base + new.len()).map(|i| i as u32).collect();
                st.shadow_decide(&ids, &shadow_inputs, base + new.len());
            }
        }
        let table = Arc::make_mut(&mut self.table);
        table.extend(
            inputs
                .into_iter()
                .map(|t| t.map(|t| Arc::new(resolved(&t)))),
        );
        self.known_tags = base + new.len();
    }

    /// Stage `k`'s decisions for `inputs`; a failing tag plane gets one fresh instance, then
    /// its tags are rejected with the failure as the reason (their samples dead-lettered).
    fn decide_or_reject(
        &mut self,
        k: usize,
        inputs: &[Option<TagInfo>],
    ) -> Vec<Option<TagDecision>> {
        let st = &mut self.stages[k];
        match decide(&mut st.instance, inputs) {
            Ok(d) => return d,
            Err(e) => {
                st.handle.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(stage = %st.handle.name, plugin = %st.label(), "tag plane failed: {e}");
            }
        }
        if let Ok(p) = st.handle.fresh_instance() {
            self.reaper.retire(st.adopt(p));
            if let Ok(d) = decide(&mut st.instance, inputs) {
                return d;
            }
        }
        let reason = format!("tag plane of {} failed", st.label());
        tracing::error!(stage = %st.handle.name, "{reason}; rejecting {} tags", inputs.len());
        inputs
            .iter()
            .map(|t| t.as_ref().map(|_| TagDecision::Reject(reason.clone())))
            .collect()
    }

    fn run_from(&mut self, mut batch: SampleBatch, from: usize) -> Result<Flow, String> {
        for k in from..self.stages.len() {
            if batch.is_empty() {
                batch.handed_on();
                return Ok(Flow::Done);
            }
            let n = batch.len() as u64;
            {
                let stats = &self.stages[k].handle.stats;
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.samples_in.fetch_add(n, Ordering::Relaxed);
            }
            // A shadow needs the batch as it entered and the live decisions it was cut with.
            let entering = self.stages[k].shadowed().then(|| {
                let copy = batch.clone();
                self.stages[k].live_refusals.clear();
                (copy, self.stages[k].decisions.clone())
            });
            let (step, live_finished) = self.run_stage(k, &mut batch)?;
            // A held batch is compared when it is taken up again, not counted as skipped now.
            let held = matches!(step, Some(Flow::Held(..)));
            if let (Some((entering, decisions)), false) = (entering, held) {
                self.shadow_compare(k, entering, &decisions, &batch, live_finished);
            }
            if let Some(flow) = step {
                if matches!(flow, Flow::Done) {
                    // Whatever is left went on (dead-letter, pass-through): nothing held here.
                    batch.handed_on();
                }
                return Ok(flow);
            }
        }
        if batch.is_empty() {
            batch.handed_on();
            return Ok(Flow::Done);
        }
        // Every sink gets its own acknowledgment share; the chain's own is then handed on.
        let out = OutputBatch::new(batch, self.table.clone());
        for sink in &self.outputs {
            if sink
                .blocking_send(Arc::new(out.for_another_destination()))
                .is_err()
            {
                return Ok(Flow::Stop(
                    "a sink stopped; the pipeline cannot deliver".into(),
                ));
            }
        }
        out.done();
        Ok(Flow::Done)
    }

    /// Runs stage `k` on the batch. Returns the flow if the batch stops here (None: on to the
    /// next stage) and whether the live version processed it (so a shadow can compare).
    fn run_stage(
        &mut self,
        k: usize,
        batch: &mut SampleBatch,
    ) -> Result<(Option<Flow>, bool), String> {
        if self.stages[k].any_tag_rejected {
            self.drop_rejected_tags(k, batch)?;
            if batch.is_empty() {
                return Ok((Some(Flow::Done), true));
            }
        }
        if let Some(reason) = self.stages[k].quarantined.clone() {
            return match self.stages[k].handle.policy {
                QuarantinePolicy::Hold => Ok((Some(Flow::Held(std::mem::take(batch), k)), false)),
                QuarantinePolicy::PassThrough => {
                    self.count_out(k, batch.len());
                    Ok((None, false))
                }
                QuarantinePolicy::DeadLetter => {
                    let b = std::mem::take(batch);
                    self.dead_letter_all(b, k, "stage-quarantined", Some(reason))?;
                    Ok((Some(Flow::Done), false))
                }
            };
        }
        if !self.stages[k].sample_plane {
            self.count_out(k, batch.len());
            return Ok((None, true));
        }
        match self.call_stage(k, batch)? {
            Flow::Done => {}
            other => return Ok((Some(other), false)),
        }
        // A quarantine during the call passed or dead-lettered the batch unprocessed.
        let processed = self.stages[k].quarantined.is_none();
        if !processed && batch.is_empty() {
            return Ok((Some(Flow::Done), false));
        }
        self.count_out(k, batch.len());
        self.maybe_recycle(k);
        Ok((None, processed))
    }

    /// Runs stage `k`'s shadow on the batch as it entered the stage and compares with what the
    /// live version made of it (`out`), if the live version processed it.
    fn shadow_compare(
        &mut self,
        k: usize,
        entering: SampleBatch,
        decisions: &[Option<TagDecision>],
        out: &SampleBatch,
        live_finished: bool,
    ) {
        let st = &mut self.stages[k];
        let label = st.label();
        let Some(shadow) = &st.shadow else {
            return;
        };
        if !live_finished {
            shadow.skipped();
            return;
        }
        let live = live_outcomes(&entering, decisions, &st.live_refusals, out);
        st.live_refusals.clear();
        shadow.offer(entering, live, label);
    }

    fn count_out(&self, k: usize, n: usize) {
        self.stages[k]
            .handle
            .stats
            .samples_out
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Calls stage `k` on the batch, retrying on a fresh instance until the failure limit;
    /// then applies the quarantine policy. `Flow::Done` means the batch went through.
    fn call_stage(&mut self, k: usize, batch: &mut SampleBatch) -> Result<Flow, String> {
        loop {
            let st = &mut self.stages[k];
            let cols = BatchColumns {
                tag_ids: &batch.tag_ids,
                values: &batch.values,
                quality: &batch.quality,
                timestamps: &batch.timestamps,
                extras: &batch.extras,
            };
            let error = match st.instance.on_batch(cols) {
                Ok(out) => {
                    st.consecutive_failures = 0;
                    if st.shadowed() {
                        let info = st.loaded.info();
                        st.live_refusals =
                            out.rejected
                                .iter()
                                .map(|r| (r.index, reason_name(info, r.reason).to_string()))
                                .chain(out.dropped.iter().map(|d| {
                                    (d.index, dropped_outcome(reason_name(info, d.reason)))
                                }))
                                .collect();
                        st.live_refusals.sort_by_key(|r| r.0);
                    }
                    if let Some(v) = out.values {
                        batch.values = v;
                    }
                    if let Some(q) = out.quality {
                        batch.quality = q;
                    }
                    if let Some(mut extras) = out.extras {
                        // Checked: indexes exist and are unique. Kept in index order.
                        extras.sort_unstable_by_key(|e| e.index);
                        batch.extras = extras;
                    }
                    let mut rejected = out.rejected;
                    if !out.dropped.is_empty() {
                        self.drop_samples(k, batch, out.dropped, &mut rejected);
                    }
                    if !rejected.is_empty() {
                        self.split_rejections(k, batch, rejected)?;
                    }
                    return Ok(Flow::Done);
                }
                Err(e) => e,
            };
            st.consecutive_failures += 1;
            st.handle.stats.failures.fetch_add(1, Ordering::Relaxed);
            let limit = st.handle.limits.failures_before_quarantine;
            tracing::warn!(
                stage = %st.handle.name,
                plugin = %st.label(),
                failures = st.consecutive_failures,
                limit,
                "batch of {} samples failed: {error}",
                batch.len()
            );
            if st.instance.is_poisoned() || matches!(error, CallError::MemoryLimit { .. }) {
                match st.handle.fresh_instance() {
                    Ok(p) => self.reaper.retire(st.adopt(p)),
                    Err(e) => {
                        tracing::error!(stage = %st.handle.name, "cannot make a fresh instance: {e}");
                        st.consecutive_failures = limit;
                    }
                }
            }
            if st.consecutive_failures >= limit {
                let reason = format!("{}: {error}", st.label());
                let policy = st.quarantine(reason.clone());
                tracing::error!(
                    stage = %st.handle.name,
                    policy = policy.as_str(),
                    "stage quarantined after {limit} consecutive failures: {reason}"
                );
                return match policy {
                    QuarantinePolicy::Hold => Ok(Flow::Held(std::mem::take(batch), k)),
                    QuarantinePolicy::PassThrough => Ok(Flow::Done),
                    QuarantinePolicy::DeadLetter => {
                        let b = std::mem::take(batch);
                        self.dead_letter_all(b, k, "stage-quarantined", Some(reason))?;
                        Ok(Flow::Done)
                    }
                };
            }
        }
    }

    fn maybe_recycle(&mut self, k: usize) {
        let st = &mut self.stages[k];
        if st.recycle_pending || !st.instance.needs_recycle() {
            return;
        }
        st.recycle_pending = true;
        tracing::info!(
            stage = %st.handle.name,
            plugin = %st.label(),
            memory_mib = st.instance.memory_bytes() >> 20,
            recycle_at_mib = st.handle.limits.recycle_at_mib,
            "instance passed its memory high-water mark; preparing a fresh one"
        );
        let handle = st.handle.clone();
        let control = self.control_tx.clone();
        std::thread::spawn(move || match handle.fresh_instance() {
            Ok(p) => {
                let _ = control.blocking_send(Control::Install {
                    stage: k,
                    prepared: Box::new(p),
                    reply: None,
                });
            }
            Err(e) => tracing::error!(stage = %handle.name, "recycle failed: {e}"),
        });
    }

    fn drop_rejected_tags(&mut self, k: usize, batch: &mut SampleBatch) -> Result<(), String> {
        let st = &self.stages[k];
        let mark: Vec<bool> = batch
            .tag_ids
            .iter()
            .map(|&t| {
                matches!(
                    st.decisions.get(t as usize),
                    Some(Some(TagDecision::Reject(_)))
                )
            })
            .collect();
        if !mark.contains(&true) {
            return Ok(());
        }
        let refused = batch.split_off_marked(&mark);
        let letters = st.handle.with_inputs(|inputs| {
            (0..refused.len())
                .map(|i| {
                    let tag = refused.tag_ids[i] as usize;
                    let detail = match &st.decisions[tag] {
                        Some(TagDecision::Reject(r)) => Some(r.clone()),
                        _ => None,
                    };
                    let refusal = Refusal {
                        stage: &st.handle.name,
                        plugin: st.loaded.name(),
                        plugin_version: st.loaded.version(),
                        reason: "tag-rejected",
                        reason_code: None,
                    };
                    DeadLetter::from_sample(&refusal, names(inputs, tag), &refused, i, detail)
                })
                .collect::<Vec<_>>()
        });
        self.send_dead_letters(k, letters, refused.ack)
    }

    /// Takes the samples stage `k` dropped on purpose out of the batch: counted per reason,
    /// their acknowledgment share settled (nothing is left to deliver), never dead-lettered.
    /// Moves the indexes of `rejected` to the batch left after the drops.
    fn drop_samples(
        &self,
        k: usize,
        batch: &mut SampleBatch,
        dropped: Vec<crate::plugin::SampleDrop>,
        rejected: &mut [crate::plugin::Rejection],
    ) {
        let mut mark = vec![false; batch.len()];
        for d in &dropped {
            mark[d.index as usize] = true;
        }
        // Drops before each index, to move the rejections' indexes.
        let mut before = Vec::with_capacity(mark.len());
        let mut n = 0u32;
        for &m in &mark {
            before.push(n);
            n += m as u32;
        }
        for r in rejected.iter_mut() {
            r.index -= before[r.index as usize];
        }
        let mut taken = batch.split_off_marked(&mark);
        taken.handed_on();
        let st = &self.stages[k];
        let info = st.loaded.info();
        let mut counts = st
            .handle
            .stats
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for d in &dropped {
            let name = reason_name(info, d.reason);
            match counts.get_mut(name) {
                Some(c) => *c += 1,
                None => {
                    counts.insert(name.to_string(), 1);
                }
            }
        }
    }

    fn split_rejections(
        &mut self,
        k: usize,
        batch: &mut SampleBatch,
        rejected: Vec<crate::plugin::Rejection>,
    ) -> Result<(), String> {
        let mut mark = vec![false; batch.len()];
        let mut details: Vec<Option<(u16, Option<String>)>> = vec![None; batch.len()];
        for r in rejected {
            mark[r.index as usize] = true;
            details[r.index as usize] = Some((r.reason, r.detail));
        }
        let refused = batch.split_off_marked(&mark);
        let details: Vec<(u16, Option<String>)> = details.into_iter().flatten().collect();
        let st = &self.stages[k];
        let info = st.loaded.info();
        let letters = st.handle.with_inputs(|inputs| {
            details
                .into_iter()
                .enumerate()
                .map(|(i, (code, detail))| {
                    let name = reason_name(info, code);
                    let refusal = Refusal {
                        stage: &st.handle.name,
                        plugin: &info.name,
                        plugin_version: &info.version,
                        reason: name,
                        reason_code: Some(code),
                    };
                    let tag = refused.tag_ids[i] as usize;
                    DeadLetter::from_sample(&refusal, names(inputs, tag), &refused, i, detail)
                })
                .collect::<Vec<_>>()
        });
        self.send_dead_letters(k, letters, refused.ack)
    }

    /// A batch still held by a `hold` quarantine when the host stops: a source that can
    /// redeliver (its batch has an acknowledgment) gets it again after the restart, so it is
    /// let go unacknowledged; a batch of a polling source (nothing upstream keeps it) is
    /// dead-lettered so it is not lost.
    fn abandon_at_shutdown(&mut self, batch: SampleBatch, k: usize) -> Result<(), String> {
        if batch.ack.is_some() {
            tracing::warn!(
                samples = batch.len(),
                "held batch not acknowledged at shutdown; its source redelivers it"
            );
            drop(batch);
            return Ok(());
        }
        self.dead_letter_all(batch, k, "held-at-shutdown", None)
    }

    fn dead_letter_all(
        &mut self,
        batch: SampleBatch,
        k: usize,
        reason: &str,
        detail: Option<String>,
    ) -> Result<(), String> {
        let k = k.min(self.stages.len().saturating_sub(1));
        let Some(st) = self.stages.get(k) else {
            return Ok(());
        };
        let detail = detail.or_else(|| st.quarantined.clone());
        let letters = st.handle.with_inputs(|inputs| {
            (0..batch.len())
                .map(|i| {
                    let refusal = Refusal {
                        stage: &st.handle.name,
                        plugin: st.loaded.name(),
                        plugin_version: st.loaded.version(),
                        reason,
                        reason_code: None,
                    };
                    let tag = batch.tag_ids[i] as usize;
                    DeadLetter::from_sample(&refusal, names(inputs, tag), &batch, i, detail.clone())
                })
                .collect::<Vec<_>>()
        });
        self.send_dead_letters(k, letters, batch.ack)
    }

    fn send_dead_letters(
        &self,
        k: usize,
        letters: Vec<DeadLetter>,
        ack: Option<crate::ack::Ack>,
    ) -> Result<(), String> {
        self.stages[k]
            .handle
            .stats
            .rejected
            .fetch_add(letters.len() as u64, Ordering::Relaxed);
        self.dead_letters
            .blocking_send(DeadLetterBatch::new(letters, ack))
            .map_err(|_| "the dead-letter sink stopped; refusing to drop samples".to_string())
    }
}

/// How a dropped sample shows in a shadow comparison.
pub(super) fn dropped_outcome(reason: &str) -> String {
    format!("dropped: {reason}")
}

fn names(inputs: &[Option<TagInfo>], tag: usize) -> TagNames<'_> {
    match inputs.get(tag).and_then(|t| t.as_ref()) {
        Some(t) => TagNames {
            source: &t.source,
            vendor_path: &t.vendor_path,
            path: &t.path,
        },
        None => TagNames {
            source: "",
            vendor_path: "",
            path: "",
        },
    }
}

/// The tag as the next stage sees it, after `decision` (none: a rejected tag, or no input).
pub fn next_input(input: Option<&TagInfo>, decision: Option<&TagDecision>) -> Option<TagInfo> {
    match (input, decision) {
        (Some(t), Some(TagDecision::Accept(a))) => {
            let mut t = t.clone();
            if let Some(p) = &a.path {
                t.path = p.clone();
            }
            if let Some(u) = &a.unit {
                t.unit = u.clone();
            }
            t.metadata.extend(a.enrichment.iter().cloned());
            Some(t)
        }
        (Some(t), None) => Some(t.clone()),
        _ => None,
    }
}

fn resolved(t: &TagInfo) -> ResolvedTag {
    ResolvedTag {
        id: t.id,
        source: t.source.clone(),
        vendor_path: t.vendor_path.clone(),
        path: t.path.clone(),
        unit: t.unit.clone(),
        data_type: t.data_type,
        metadata: t.metadata.clone(),
    }
}
