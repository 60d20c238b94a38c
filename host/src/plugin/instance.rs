//! One live plugin instance: its store (limits, WASI context granting nothing, host
//! services), the CPU budget armed before every call, and the checks on everything a call
//! returns. A trap or limit hit poisons the instance; the owner replaces it. An instance of a
//! 0.1.0 component is adapted here to the 0.2.0 shape (no drops, no extras written, no
//! command plane), so nothing above this module knows which contract a plugin speaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{
    v0_1, BatchOutput, Command, CommandDecision, Extra, Plugin, PluginPre, TagDecision, TagInfo,
};
use super::engine::{CpuLimitMode, PluginEngine};
use super::host_api::{HostBackends, HostServices, PluginLabel};
use super::limits::{Grant, MemoryLimiter, PluginLimits};
use super::meter::{CallCost, CallMeter, Plane};
use super::{CallError, Columns, Planes, PluginInfo};

/// What a store holds for one instance.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    pub(super) host: HostServices,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A clock stuck at the Unix epoch: plugins get no time source unless granted one.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// WASI context that grants nothing but `grants`: no files, sockets, environment or
/// arguments ever; without grants also no stdio, frozen clocks, and a fixed pseudo-random
/// stream (so std's hash maps still work).
fn sandboxed_wasi(grants: &[Grant]) -> WasiCtx {
    let mut b = WasiCtx::builder();
    if !grants.contains(&Grant::Clock) {
        b.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
    }
    if !grants.contains(&Grant::Random) {
        b.secure_random(wasmtime_wasi::Deterministic::new(vec![
            0x5a, 0x17, 0xc3, 0x8e,
        ]))
        .insecure_random(wasmtime_wasi::Deterministic::new(vec![0x2b, 0x91]))
        .insecure_random_seed(0x0f3a_11d2);
    }
    if grants.contains(&Grant::Stdio) {
        b.inherit_stdout().inherit_stderr();
    }
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    b.build()
}

/// How long instantiation and init took.
#[derive(Clone, Copy, Debug, Default)]
pub struct InstanceTimings {
    pub instantiate: Duration,
    pub init: Duration,
}

/// Column slices of one batch as the host holds them.
#[derive(Clone, Copy)]
pub struct BatchColumns<'a> {
    pub tag_ids: &'a [u32],
    pub values: &'a [f64],
    pub quality: &'a [u32],
    pub timestamps: &'a [u64],
    pub extras: &'a [Extra],
}

/// A component linked for the contract version it exports.
pub(super) enum ContractPre {
    Current(PluginPre<StoreState>),
    V0_1(v0_1::PluginPre<StoreState>),
}

impl ContractPre {
    pub(super) fn component(&self) -> &wasmtime::component::Component {
        match self {
            ContractPre::Current(p) => p.instance_pre().component(),
            ContractPre::V0_1(p) => p.instance_pre().component(),
        }
    }

    fn instantiate(&self, store: &mut Store<StoreState>) -> wasmtime::Result<Exports> {
        Ok(match self {
            ContractPre::Current(p) => Exports::Current(p.instantiate(store)?),
            ContractPre::V0_1(p) => Exports::V0_1(p.instantiate(store)?),
        })
    }
}

/// The exports of a live instance, by contract version.
enum Exports {
    Current(Plugin),
    V0_1(v0_1::Plugin),
}

pub struct PluginInstance {
    engine: PluginEngine,
    store: Store<StoreState>,
    bindings: Exports,
    info: Option<PluginInfo>,
    limits: PluginLimits,
    poisoned: bool,
    timings: InstanceTimings,
    meter: Option<Arc<CallMeter>>,
}

impl PluginInstance {
    pub(super) fn new(
        engine: PluginEngine,
        pre: &ContractPre,
        info: Option<PluginInfo>,
        label: PluginLabel,
        limits: &PluginLimits,
        backends: HostBackends,
    ) -> Result<Self, CallError> {
        let state = StoreState {
            wasi: sandboxed_wasi(&limits.grants),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_bytes()),
            host: HostServices::new(label, backends),
        };
        let mut store = Store::new(&engine.inner().engine, state);
        store.limiter(|s| &mut s.limiter);
        // Instantiation runs start functions and data segments: give it the same budget.
        arm(&engine, &mut store, limits);
        let bindings = pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &mut store, limits))?;
        Ok(PluginInstance {
            engine,
            store,
            bindings,
            info,
            limits: limits.clone(),
            poisoned: false,
            timings: InstanceTimings::default(),
            meter: None,
        })
    }

    pub(super) fn set_timings(&mut self, timings: InstanceTimings) {
        self.timings = timings;
    }

    pub fn timings(&self) -> InstanceTimings {
        self.timings
    }

    pub fn label(&self) -> &PluginLabel {
        self.store.data().host.label()
    }

    /// Current linear memory of the instance, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limiter.current_memory()
    }

    /// Whether the instance passed its recycle high-water mark.
    pub fn needs_recycle(&self) -> bool {
        self.memory_bytes() > self.limits.recycle_bytes()
    }

    /// Whether an earlier trap or limit hit made the instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// Records the cost and failures of every later call into `meter`.
    pub fn set_meter(&mut self, meter: Arc<CallMeter>) {
        self.meter = Some(meter);
    }

    /// Counts a failure in the meter and hands it back.
    fn failed(&mut self, e: CallError) -> CallError {
        if !matches!(e, CallError::Plugin(_)) {
            self.poisoned = true;
        }
        if let Some(m) = &self.meter {
            m.record_failure(&e);
        }
        e
    }

    fn call<R>(
        &mut self,
        plane: Plane,
        f: impl FnOnce(&Exports, &mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        if self.poisoned {
            return Err(self.failed(CallError::Poisoned));
        }
        arm(&self.engine, &mut self.store, &self.limits);
        let started = self.meter.is_some().then(Instant::now);
        let result = f(&self.bindings, &mut self.store);
        if let (Some(meter), Some(started)) = (&self.meter, started) {
            let fuel = match self.engine.config().cpu_limit {
                CpuLimitMode::Fuel => self
                    .limits
                    .fuel_per_call
                    .saturating_sub(self.store.get_fuel().unwrap_or(0)),
                CpuLimitMode::Epoch => 0,
            };
            meter.record(
                plane,
                CallCost {
                    wall: started.elapsed(),
                    fuel,
                    memory_bytes: self.store.data().limiter.current_memory(),
                },
            );
        }
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let e = classify(e, &mut self.store, &self.limits);
                Err(self.failed(e))
            }
        }
    }

    pub(super) fn describe(&mut self) -> Result<PluginInfo, CallError> {
        self.call(Plane::Tag, |b, s| match b {
            Exports::Current(p) => p.ferrule_plugin_transform().call_describe(s),
            Exports::V0_1(p) => Ok(v0_1::info(p.ferrule_plugin_transform().call_describe(s)?)),
        })
    }

    pub(super) fn init(&mut self, config_json: &str) -> Result<Result<(), String>, CallError> {
        self.call(Plane::Tag, |b, s| match b {
            Exports::Current(p) => p.ferrule_plugin_transform().call_init(s, config_json),
            Exports::V0_1(p) => p.ferrule_plugin_transform().call_init(s, config_json),
        })
    }

    /// Tag plane: one decision per tag, checked for count and size.
    pub fn on_tags(&mut self, tags: &[TagInfo]) -> Result<Vec<TagDecision>, CallError> {
        let decisions = self.call(Plane::Tag, |b, s| match b {
            Exports::Current(p) => p.ferrule_plugin_transform().call_on_tags(s, tags),
            Exports::V0_1(p) => {
                let old: Vec<_> = tags.iter().map(v0_1::tag_info).collect();
                let out = p.ferrule_plugin_transform().call_on_tags(s, &old)?;
                Ok(out.into_iter().map(v0_1::decision).collect())
            }
        })?;
        if decisions.len() != tags.len() {
            return Err(self.failed(CallError::Malformed(format!(
                "on-tags returned {} decisions for {} tags",
                decisions.len(),
                tags.len()
            ))));
        }
        let bytes: usize = decisions.iter().map(decision_bytes).sum();
        if bytes as u64 > self.limits.max_output_bytes {
            return Err(self.failed(CallError::Malformed(format!(
                "on-tags returned {bytes} bytes, over the {} byte limit",
                self.limits.max_output_bytes
            ))));
        }
        Ok(decisions)
    }

    /// Sample plane: passes the columns the plugin reads (the others empty) and checks the
    /// result against the contract. A plugin-level error is `CallError::Plugin`.
    pub fn on_batch(&mut self, cols: BatchColumns<'_>) -> Result<BatchOutput, CallError> {
        let info = self.info.as_ref().ok_or(CallError::Poisoned)?;
        let reads = info.reads;
        let pick = |c: Columns| reads.contains(c);
        let values: &[f64] = if pick(Columns::VALUES) {
            cols.values
        } else {
            &[]
        };
        let quality: &[u32] = if pick(Columns::QUALITY) {
            cols.quality
        } else {
            &[]
        };
        let timestamps: &[u64] = if pick(Columns::TIMESTAMPS) {
            cols.timestamps
        } else {
            &[]
        };
        let extras: &[Extra] = if pick(Columns::EXTRAS) {
            cols.extras
        } else {
            &[]
        };
        let tag_ids = cols.tag_ids;
        let result = self.call(Plane::Sample, |b, s| match b {
            Exports::Current(p) => p
                .ferrule_plugin_transform()
                .call_on_batch(s, tag_ids, values, quality, timestamps, extras),
            Exports::V0_1(p) => {
                let extras: Vec<_> = extras.iter().map(v0_1::extra).collect();
                let out = p
                    .ferrule_plugin_transform()
                    .call_on_batch(s, tag_ids, values, quality, timestamps, &extras)?;
                Ok(out.map(v0_1::output))
            }
        })?;
        let output = match result {
            Ok(output) => output,
            Err(message) => return Err(self.failed(CallError::Plugin(truncate(message, 1024)))),
        };
        let info = self.info.as_ref().expect("checked above");
        if let Err(reason) =
            check_output(info, tag_ids.len(), &output, self.limits.max_output_bytes)
        {
            // The plugin broke the contract; do not trust its state any more (`failed` poisons).
            return Err(self.failed(CallError::Malformed(reason)));
        }
        Ok(output)
    }

    /// Command plane: the stage's decision on one write request. A plugin that does not declare
    /// the `command` plane (every 0.1.0 plugin among them) allows it unchanged without a call.
    /// A trap, a limit hit or a malformed decision is an error: the caller refuses the command.
    pub fn on_command(&mut self, cmd: &Command) -> Result<CommandDecision, CallError> {
        let info = self.info.as_ref().ok_or(CallError::Poisoned)?;
        if !info.planes.contains(Planes::COMMAND) || matches!(self.bindings, Exports::V0_1(_)) {
            return Ok(CommandDecision::Allow(None));
        }
        let decision = self.call(Plane::Tag, |b, s| match b {
            Exports::Current(p) => p.ferrule_plugin_transform().call_on_command(s, cmd),
            Exports::V0_1(_) => Ok(CommandDecision::Allow(None)),
        })?;
        let info = self.info.as_ref().expect("checked above");
        let problem = match &decision {
            CommandDecision::Refuse(r) if !info.reasons.iter().any(|x| x.code == r.reason) => {
                Some(format!(
                    "on-command refused with undeclared reason code {}",
                    r.reason
                ))
            }
            CommandDecision::Refuse(r) if r.detail.len() as u64 > self.limits.max_output_bytes => {
                Some(format!(
                    "on-command refusal detail of {} bytes is over the {} byte limit",
                    r.detail.len(),
                    self.limits.max_output_bytes
                ))
            }
            CommandDecision::Allow(Some(v)) if v.is_infinite() => {
                Some("on-command allowed with an infinite value".to_string())
            }
            _ => None,
        };
        match problem {
            Some(reason) => Err(self.failed(CallError::Malformed(reason))),
            None => Ok(decision),
        }
    }
}

/// Sets the CPU budget for the next call.
fn arm(engine: &PluginEngine, store: &mut Store<StoreState>, limits: &PluginLimits) {
    let config = engine.config();
    match config.cpu_limit {
        CpuLimitMode::Epoch => {
            let ticks = limits.cpu_ms_per_call.div_ceil(config.epoch_tick_ms.max(1)) + 1;
            store.set_epoch_deadline(ticks);
        }
        CpuLimitMode::Fuel => {
            // Cannot fail: fuel is enabled on this engine.
            let _ = store.set_fuel(limits.fuel_per_call);
        }
    }
}

/// Names what went wrong in a failed call.
fn classify(e: wasmtime::Error, store: &mut Store<StoreState>, limits: &PluginLimits) -> CallError {
    let refused = store.data_mut().limiter.take_refused();
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            CallError::CpuLimit(format!("over {} ms per call", limits.cpu_ms_per_call))
        }
        Some(wasmtime::Trap::OutOfFuel) => {
            CallError::CpuLimit(format!("over {} fuel per call", limits.fuel_per_call))
        }
        _ if refused => CallError::MemoryLimit {
            limit_mib: limits.memory_mib,
        },
        Some(trap) => CallError::Trap(format!("{trap}: {}", first_line(&format!("{e:#}")))),
        None => CallError::Trap(first_line(&format!("{e:#}"))),
    }
}

fn first_line(s: &str) -> String {
    truncate(s.lines().next().unwrap_or("").to_string(), 512)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn decision_bytes(d: &TagDecision) -> usize {
    match d {
        TagDecision::Reject(r) => r.len(),
        TagDecision::Accept(a) => {
            a.path.as_ref().map_or(0, |p| p.len())
                + a.unit.as_ref().map_or(0, |u| u.len())
                + a.enrichment
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
                + 32
        }
    }
}

/// Checks a self-description: names, planes, columns, unique reason codes.
pub fn check_info(info: &PluginInfo) -> Result<(), String> {
    if info.name.trim().is_empty() {
        return Err("name is empty".into());
    }
    if info.version.trim().is_empty() {
        return Err("version is empty".into());
    }
    if !info
        .planes
        .intersects(Planes::TAG | Planes::SAMPLE | Planes::COMMAND)
    {
        return Err("implements none of the tag, sample and command planes".into());
    }
    let writable = Columns::VALUES | Columns::QUALITY | Columns::EXTRAS;
    if !writable.contains(info.writes) {
        return Err("writes columns other than values, quality and extras".into());
    }
    if info.planes.contains(Planes::SAMPLE) && !info.reads.contains(info.writes) {
        return Err("writes a column it does not read".into());
    }
    let mut codes: Vec<u16> = info.reasons.iter().map(|r| r.code).collect();
    codes.sort_unstable();
    if codes.windows(2).any(|w| w[0] == w[1]) {
        return Err("declares a reason code twice".into());
    }
    Ok(())
}

/// The output invariants: written columns have one entry per sample and only declared
/// columns are written; written extras name existing samples once each; a sample is
/// rejected or dropped at most once (across both lists), always with a declared reason; the
/// whole result fits the size limit.
pub fn check_output(
    info: &PluginInfo,
    n: usize,
    out: &BatchOutput,
    max_bytes: u64,
) -> Result<(), String> {
    let mut bytes = 0usize;
    if let Some(v) = &out.values {
        if !info.writes.contains(Columns::VALUES) {
            return Err("returned a values column it did not declare in `writes`".into());
        }
        if v.len() != n {
            return Err(format!(
                "values column has {} entries for {n} samples",
                v.len()
            ));
        }
        bytes += v.len() * 8;
    }
    if let Some(q) = &out.quality {
        if !info.writes.contains(Columns::QUALITY) {
            return Err("returned a quality column it did not declare in `writes`".into());
        }
        if q.len() != n {
            return Err(format!(
                "quality column has {} entries for {n} samples",
                q.len()
            ));
        }
        bytes += q.len() * 4;
    }
    if let Some(extras) = &out.extras {
        if !info.writes.contains(Columns::EXTRAS) {
            return Err("returned extras it did not declare in `writes`".into());
        }
        if extras.len() > n {
            return Err(format!("{} extras for {n} samples", extras.len()));
        }
        let mut seen = vec![false; n];
        for e in extras {
            let i = e.index as usize;
            if i >= n {
                return Err(format!("extra names sample {i} of a {n}-sample batch"));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("sample {i} has two extras"));
            }
            bytes += 16
                + match &e.value {
                    super::ExtraValue::Text(t) => t.len(),
                    _ => 8,
                };
        }
    }
    if out.rejected.len() > n {
        return Err(format!("{} rejections for {n} samples", out.rejected.len()));
    }
    let refused = out.rejected.len() + out.dropped.len();
    if refused > n {
        return Err(format!(
            "{} rejections and {} drops for {n} samples",
            out.rejected.len(),
            out.dropped.len()
        ));
    }
    let mut seen = if refused == 0 {
        Vec::new()
    } else {
        vec![false; n]
    };
    let declared = |code: u16| info.reasons.iter().any(|x| x.code == code);
    for r in &out.rejected {
        let i = r.index as usize;
        if i >= n {
            return Err(format!("rejection names sample {i} of a {n}-sample batch"));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("sample {i} rejected twice"));
        }
        if !declared(r.reason) {
            return Err(format!(
                "rejection uses undeclared reason code {}",
                r.reason
            ));
        }
        bytes += 16 + r.detail.as_ref().map_or(0, |d| d.len());
    }
    for d in &out.dropped {
        let i = d.index as usize;
        if i >= n {
            return Err(format!("drop names sample {i} of a {n}-sample batch"));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!(
                "sample {i} dropped twice, or both rejected and dropped"
            ));
        }
        if !declared(d.reason) {
            return Err(format!("drop uses undeclared reason code {}", d.reason));
        }
        bytes += 8;
    }
    if bytes as u64 > max_bytes {
        return Err(format!(
            "result of {bytes} bytes is over the {max_bytes} byte limit"
        ));
    }
    Ok(())
}
