//! Write-back to devices: commands from MQTT (`mqtt`) and Kafka (`kafka`) checked in order — deadline, the tag's
//! path maps to exactly one tag of a source, the source's allow-list, exactly one writable
//! device address, the plugin chain's command plane (`CommandPlane`), rate limits, dry run,
//! compare-and-set — then written through the source's write path (`crate::sources::WritePort`)
//! with writes to one device serialized, read back and reported `verified`, `mismatch` or
//! `unverified`. Every command, accepted or refused, is appended to the audit log (fsync'd)
//! before its reply goes out, counted per outcome, and shown by `GET /writes`.

pub mod audit;
pub mod command;
pub mod config;
pub mod glob;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod latest;
pub mod mqtt;
pub mod rate;

pub use audit::{AuditLog, RECENT_WRITES};
pub use command::{Command, Outcome, Reason, ReasonCode, WriteRecord};
pub use config::{KafkaCommandsConfig, MqttCommandsConfig, RateLimit, SourceWrites, WritesConfig};
pub use latest::{Latest, LatestStore};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::model::{now_ns, ExtraValue};
use crate::sources::{DeviceValue, PortError, WritePorts};
use command::{requested_json, Timings, ValueView};
use latest::Resolved;
use rate::{Breach, Rates};

/// A command as a stage of the command plane sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlaneCommand {
    pub id: String,
    pub tag_id: u32,
    /// The normalized path (each stage gets the path it produces).
    pub path: String,
    pub value: f64,
    pub extra: Option<ExtraValue>,
    pub expected_current: Option<f64>,
    pub requester: String,
    pub deadline_ns: u64,
    pub dry_run: bool,
}

/// What the command plane decided.
#[derive(Clone, Debug, PartialEq)]
pub enum PlaneDecision {
    /// On to the device with this value (in the device's unit); `stages` that checked it.
    Allow { value: f64, stages: Vec<String> },
    /// A stage refused: its name, the reason's name (as the plugin declared it) and detail.
    Refuse {
        stage: String,
        reason: String,
        detail: String,
    },
}

/// The plugin chain's command plane: stages implementing `on-command`, in reverse chain order.
#[async_trait::async_trait]
pub trait CommandPlane: Send + Sync {
    async fn decide(&self, command: PlaneCommand) -> PlaneDecision;
}

/// The chain's command plane (`ChainHandle::on_command`).
pub struct ChainPlane(pub crate::pipeline::ChainHandle);

#[async_trait::async_trait]
impl CommandPlane for ChainPlane {
    async fn decide(&self, c: PlaneCommand) -> PlaneDecision {
        let command = crate::plugin::Command {
            id: c.id,
            tag_id: c.tag_id,
            path: c.path,
            value: c.value,
            extra: c.extra,
            expected_current: c.expected_current,
            requester: c.requester,
            deadline: c.deadline_ns,
            dry_run: c.dry_run,
        };
        match self.0.on_command(command).await {
            Ok(crate::pipeline::CommandVerdict::Allow { value, stages }) => {
                PlaneDecision::Allow { value, stages }
            }
            Ok(crate::pipeline::CommandVerdict::Refuse {
                stage,
                reason,
                detail,
            }) => PlaneDecision::Refuse {
                stage,
                reason,
                detail,
            },
            Err(e) => PlaneDecision::Refuse {
                stage: String::new(),
                reason: "pipeline-stopped".into(),
                detail: e.to_string(),
            },
        }
    }
}

/// The write-back service: the checks, the write, the audit.
pub struct WriteService {
    config: WritesConfig,
    latest: Arc<LatestStore>,
    ports: WritePorts,
    plane: Option<Arc<dyn CommandPlane>>,
    audit: AuditLog,
    audit_broken: AtomicBool,
    rates: Mutex<Rates>,
    devices: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counts: Mutex<BTreeMap<(Outcome, Option<ReasonCode>), u64>>,
    /// The MQTT command channel is subscribed (commands published now are received).
    mqtt_subscribed: AtomicBool,
}

/// A command stops here: its outcome and why.
type Stop = (Outcome, Reason);

fn stop(outcome: Outcome, code: ReasonCode, detail: impl Into<String>) -> Stop {
    (
        outcome,
        Reason {
            code,
            detail: detail.into(),
            stage: None,
        },
    )
}

fn refuse(code: ReasonCode, detail: impl Into<String>) -> Stop {
    stop(Outcome::Refused, code, detail)
}

fn view(v: &DeviceValue) -> ValueView {
    ValueView {
        value: v.value.is_finite().then_some(v.value),
        text: match &v.extra {
            Some(ExtraValue::Text(t)) => Some(t.clone()),
            Some(ExtraValue::Signed(i)) => Some(i.to_string()),
            Some(ExtraValue::Unsigned(u)) => Some(u.to_string()),
            None => None,
        },
        raw: v.raw.clone(),
    }
}

fn us(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

impl WriteService {
    pub fn new(
        config: WritesConfig,
        latest: Arc<LatestStore>,
        ports: WritePorts,
        plane: Option<Arc<dyn CommandPlane>>,
    ) -> Result<WriteService, audit::AuditError> {
        let audit = AuditLog::open(&config.audit_path)?;
        Ok(WriteService {
            rates: Mutex::new(Rates::new(config.global_rate)),
            config,
            latest,
            ports,
            plane,
            audit,
            audit_broken: AtomicBool::new(false),
            devices: Mutex::new(HashMap::new()),
            counts: Mutex::new(BTreeMap::new()),
            mqtt_subscribed: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &WritesConfig {
        &self.config
    }

    pub fn latest(&self) -> &Arc<LatestStore> {
        &self.latest
    }

    /// The latest records (for `GET /writes`), oldest first.
    pub fn recent(&self) -> Vec<WriteRecord> {
        self.audit.recent()
    }

    /// Commands per outcome and reason so far.
    pub fn counts(&self) -> Vec<(Outcome, Option<ReasonCode>, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((o, r), n)| (*o, *r, *n))
            .collect()
    }

    /// Whether the MQTT command channel is subscribed to its topics.
    pub fn mqtt_subscribed(&self) -> bool {
        self.mqtt_subscribed.load(Ordering::Relaxed)
    }

    pub(crate) fn set_mqtt_subscribed(&self, up: bool) {
        self.mqtt_subscribed.store(up, Ordering::Relaxed);
    }

    /// Whether the audit log failed (every command is then refused).
    pub fn audit_broken(&self) -> bool {
        self.audit_broken.load(Ordering::Relaxed)
    }

    /// Records a payload that is not a command (refused `malformed`).
    pub async fn malformed(
        &self,
        id: Option<String>,
        channel: &str,
        path: Option<&str>,
        detail: String,
    ) -> WriteRecord {
        let rec = WriteRecord {
            id: id.unwrap_or_default(),
            requester: String::new(),
            path: path.unwrap_or_default().to_string(),
            channel: channel.to_string(),
            received_ns: now_ns(),
            requested: serde_json::Value::Null,
            expected_current: None,
            dry_run: false,
            source: None,
            vendor_path: None,
            address: None,
            device_value: None,
            old: None,
            written: None,
            read_back: None,
            checks: Vec::new(),
            outcome: Outcome::Refused,
            reason: Some(Reason {
                code: ReasonCode::Malformed,
                detail,
                stage: None,
            }),
            timings: Timings::default(),
        };
        self.finish(rec).await
    }

    /// Runs a command through every check and, if they pass, writes it; the record is
    /// audited before it is returned.
    pub async fn execute(&self, cmd: Command) -> WriteRecord {
        let t0 = Instant::now();
        let mut rec = WriteRecord {
            id: cmd.id.clone(),
            requester: cmd.requester.clone(),
            path: cmd.path.clone(),
            channel: cmd.channel.clone(),
            received_ns: cmd.received_ns,
            requested: requested_json(cmd.value, cmd.extra.as_ref()),
            expected_current: cmd.expected_current,
            dry_run: cmd.dry_run,
            source: None,
            vendor_path: None,
            address: None,
            device_value: None,
            old: None,
            written: None,
            read_back: None,
            checks: Vec::new(),
            outcome: Outcome::Refused,
            reason: None,
            timings: Timings::default(),
        };
        match self.run(&cmd, &mut rec, t0).await {
            Ok(outcome) => rec.outcome = outcome,
            Err((outcome, reason)) => {
                rec.outcome = outcome;
                rec.reason = Some(reason);
            }
        }
        rec.timings.total_us = us(t0);
        self.finish(rec).await
    }

    async fn finish(&self, rec: WriteRecord) -> WriteRecord {
        if let Err(e) = self.audit.append(&rec).await {
            if !self.audit_broken.swap(true, Ordering::Relaxed) {
                tracing::error!("write-back: {e}; every further command is refused");
            }
        }
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((rec.outcome, rec.reason.as_ref().map(|r| r.code)))
            .or_default() += 1;
        let reason = rec
            .reason
            .as_ref()
            .map(|r| format!("{:?}: {}", r.code, r.detail))
            .unwrap_or_default();
        tracing::info!(
            id = %rec.id, requester = %rec.requester, path = %rec.path,
            outcome = rec.outcome.as_str(), "write-back command {reason}"
        );
        rec
    }

    fn expired(cmd: &Command) -> Result<(), Stop> {
        let now = now_ns();
        if now > cmd.deadline_ns {
            return Err(refuse(
                ReasonCode::DeadlineExpired,
                format!(
                    "the deadline passed {} ms ago",
                    (now - cmd.deadline_ns) / 1_000_000
                ),
            ));
        }
        Ok(())
    }

    async fn run(
        &self,
        cmd: &Command,
        rec: &mut WriteRecord,
        t0: Instant,
    ) -> Result<Outcome, Stop> {
        if self.audit_broken() {
            return Err(refuse(
                ReasonCode::WriteFailed,
                format!(
                    "the audit log {} cannot be written: no command is executed",
                    self.audit.path().display()
                ),
            ));
        }
        // 1. Deadline.
        Self::expired(cmd)?;
        rec.checks.push("deadline".into());
        // 2. The path names exactly one tag.
        let (tag, _latest) = match self.latest.resolve(&cmd.path) {
            Resolved::One(t, l) => (t, l),
            Resolved::None => {
                return Err(refuse(
                    ReasonCode::UnknownTag,
                    format!(
                        "no tag has the path `{}` (or it has no sample yet)",
                        cmd.path
                    ),
                ))
            }
            Resolved::Many(tags) => {
                let names: Vec<String> = tags
                    .iter()
                    .map(|t| format!("{}:{}", t.source, t.vendor_path))
                    .collect();
                return Err(refuse(
                    ReasonCode::AmbiguousTag,
                    format!("`{}` is the path of {}", cmd.path, names.join(", ")),
                ));
            }
        };
        rec.source = Some(tag.source.clone());
        rec.vendor_path = Some(tag.vendor_path.clone());
        rec.checks.push("one-tag".into());
        // 3. Default deny: the source's allow-list.
        let allowed = self.config.sources.get(&tag.source);
        let Some(source_writes) =
            allowed.filter(|s| s.allow.iter().any(|g| glob::matches(g, &cmd.path)))
        else {
            return Err(refuse(
                ReasonCode::NotAllowListed,
                match allowed {
                    None => format!(
                        "source `{}` has no [writes.sources.{}] allow-list",
                        tag.source, tag.source
                    ),
                    Some(_) => format!(
                        "`{}` matches no glob in writes.sources.{}.allow",
                        cmd.path, tag.source
                    ),
                },
            ));
        };
        rec.checks.push("allow-list".into());
        // 4. Exactly one writable device address.
        let port = self.ports.get(&tag.source).ok_or_else(|| {
            refuse(
                ReasonCode::NotWritable,
                format!("source `{}` has no write path", tag.source),
            )
        })?;
        let address = port
            .address(&tag.vendor_path)
            .map_err(|e| refuse(ReasonCode::NotWritable, e.to_string()))?;
        rec.address = Some(address);
        rec.checks.push("device-address".into());
        rec.timings.checks_us = us(t0);
        // 5. The command plane: stages check and convert, last stage first.
        let t_plane = Instant::now();
        let dry_run = cmd.dry_run || self.config.dry_run || source_writes.dry_run;
        let mut device_value = cmd.value;
        let mut expected = cmd.expected_current;
        if let Some(plane) = &self.plane {
            let plane_cmd = PlaneCommand {
                id: cmd.id.clone(),
                tag_id: tag.id,
                path: cmd.path.clone(),
                value: cmd.value,
                extra: cmd.extra.clone(),
                expected_current: cmd.expected_current,
                requester: cmd.requester.clone(),
                deadline_ns: cmd.deadline_ns,
                dry_run,
            };
            match plane.decide(plane_cmd.clone()).await {
                PlaneDecision::Allow { value, stages } => {
                    device_value = value;
                    rec.checks
                        .extend(stages.into_iter().map(|s| format!("on-command:{s}")));
                }
                PlaneDecision::Refuse {
                    stage,
                    reason,
                    detail,
                } => {
                    let mut s = refuse(ReasonCode::RefusedByStage, format!("{reason}: {detail}"));
                    s.1.stage = Some(stage);
                    return Err(s);
                }
            }
            // The expected current value goes through the same conversion (a dry run: checks
            // that refuse it refuse the compare-and-set).
            if let Some(e) = cmd.expected_current {
                let probe = PlaneCommand {
                    id: format!("{}/expected-current", cmd.id),
                    value: e,
                    extra: None,
                    expected_current: None,
                    dry_run: true,
                    ..plane_cmd
                };
                match plane.decide(probe).await {
                    PlaneDecision::Allow { value, .. } => expected = Some(value),
                    PlaneDecision::Refuse {
                        stage,
                        reason,
                        detail,
                    } => {
                        let mut s = refuse(
                            ReasonCode::RefusedByStage,
                            format!("expected_current: {reason}: {detail}"),
                        );
                        s.1.stage = Some(stage);
                        return Err(s);
                    }
                }
            }
        }
        rec.timings.command_plane_us = us(t_plane);
        if cmd.extra.is_none() {
            rec.device_value = Some(device_value);
        }
        // The value must fit the device type (checked again once the device was read).
        port.encode(&tag.vendor_path, device_value, cmd.extra.as_ref())
            .map_err(|e| refuse(ReasonCode::InvalidValue, e.to_string()))?;
        rec.checks.push("encodes".into());
        // 6. Rate limits (a dry run checks without using a token).
        self.rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(&cmd.path, source_writes.tag_rate, !dry_run)
            .map_err(|b| match b {
                Breach::Tag => refuse(
                    ReasonCode::TagRateLimited,
                    format!(
                        "more than {} commands at once or {}/s for `{}`",
                        source_writes.tag_rate.burst, source_writes.tag_rate.per_second, cmd.path
                    ),
                ),
                Breach::Global => refuse(
                    ReasonCode::GlobalRateLimited,
                    format!(
                        "more than {} commands at once or {}/s in all (writes.global_rate)",
                        self.config.global_rate.burst, self.config.global_rate.per_second
                    ),
                ),
            })?;
        rec.checks.push("rate-limit".into());
        // 7. One command per device at a time.
        let t_wait = Instant::now();
        let lock = {
            let key = format!("{}\0{}", tag.source, port.device_key(&tag.vendor_path));
            self.devices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default()
                .clone()
        };
        let remaining = Duration::from_nanos(cmd.deadline_ns.saturating_sub(now_ns()));
        let _device = tokio::time::timeout(remaining, lock.lock())
            .await
            .map_err(|_| {
                refuse(
                    ReasonCode::DeadlineExpired,
                    "the deadline passed while waiting for the device's previous command",
                )
            })?;
        rec.timings.device_wait_us = us(t_wait);
        // 8. The current value (for the audit, and compare-and-set).
        let t_read = Instant::now();
        let current = port.read(&tag.vendor_path).await.map_err(|e| {
            refuse(
                ReasonCode::DeviceUnavailable,
                format!("reading the current value: {e}"),
            )
        })?;
        rec.timings.read_us = us(t_read);
        rec.old = Some(view(&current));
        // Encoded again now the device's current value is known (an OPC UA node's type).
        let written = port
            .encode(&tag.vendor_path, device_value, cmd.extra.as_ref())
            .map_err(|e| refuse(ReasonCode::InvalidValue, e.to_string()))?;
        if let Some(e) = expected {
            let same_raw = port
                .encode(&tag.vendor_path, e, None)
                .is_ok_and(|raw| raw == current.raw);
            let close = (current.value - e).abs() <= 1e-9 * e.abs().max(1.0);
            if !(same_raw || close) {
                return Err(refuse(
                    ReasonCode::CompareAndSetFailed,
                    format!(
                        "the device holds {} ({}), not the expected {e}",
                        current.value, current.raw
                    ),
                ));
            }
            rec.checks.push("compare-and-set".into());
        }
        // 9. Still within the deadline?
        Self::expired(cmd)?;
        rec.checks.push("deadline".into());
        if dry_run {
            return Ok(Outcome::DryRun);
        }
        // 10. The write.
        let t_write = Instant::now();
        rec.written = Some(written.clone());
        let wrote = port
            .write(&tag.vendor_path, device_value, cmd.extra.as_ref())
            .await;
        rec.timings.write_us = us(t_write);
        match wrote {
            Ok(()) => {}
            Err(e @ (PortError::Device(_) | PortError::Encode(_) | PortError::NotWritable(_))) => {
                return Err(stop(
                    Outcome::Failed,
                    ReasonCode::WriteFailed,
                    e.to_string(),
                ))
            }
            // No answer, or the connection went: the write may or may not have happened.
            Err(e) => {
                return Err(stop(
                    Outcome::Unverified,
                    ReasonCode::WriteFailed,
                    e.to_string(),
                ))
            }
        }
        // 11. Read back.
        if self.config.verify_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.config.verify_delay_ms)).await;
        }
        let t_back = Instant::now();
        let back = port.read(&tag.vendor_path).await;
        rec.timings.read_back_us = us(t_back);
        match back {
            Err(e) => Err(stop(
                Outcome::Unverified,
                ReasonCode::ReadBackFailed,
                e.to_string(),
            )),
            Ok(v) => {
                rec.read_back = Some(view(&v));
                if v.raw == written {
                    Ok(Outcome::Verified)
                } else {
                    Err(stop(
                        Outcome::Mismatch,
                        ReasonCode::ReadBackDiffers,
                        format!("wrote {written}, the device reads back {}", v.raw),
                    ))
                }
            }
        }
    }
}
