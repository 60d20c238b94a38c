//! Ergonomic plugin-side types over the columnar contract (wit/plugin.wit): what a plugin sees
//! on the tag plane (`TagInfo` → `TagDecision`), on the sample plane (`Batch`: values,
//! quality, extras; rejections and drops) and on the command plane (`Command` →
//! `CommandDecision`).

use std::cell::RefCell;
use std::ops::BitOr;

/// Data type of a tag as its source declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Float64,
    Float32,
    Int64,
    Uint64,
    Int32,
    Uint32,
    Int16,
    Uint16,
    Boolean,
    Text,
}

/// A tag as it reaches a stage on the tag plane.
#[derive(Clone, Debug, PartialEq)]
pub struct TagInfo {
    pub id: u32,
    /// Path as it reaches this stage (vendor path, or what an earlier stage made of it).
    pub path: String,
    /// The source's own name for the tag; never changes.
    pub vendor_path: String,
    /// Engineering unit as it reaches this stage; empty when unknown.
    pub unit: String,
    pub data_type: DataType,
    /// Name of the source (from the host config) that produced the tag.
    pub source: String,
    /// Source metadata plus enrichment added by earlier stages.
    pub metadata: Vec<(String, String)>,
}

impl TagInfo {
    /// A float64 tag whose path is its vendor path; for tests.
    pub fn new(id: u32, vendor_path: impl Into<String>) -> Self {
        let vendor_path = vendor_path.into();
        TagInfo {
            id,
            path: vendor_path.clone(),
            vendor_path,
            unit: String::new(),
            data_type: DataType::Float64,
            source: "test".into(),
            metadata: Vec::new(),
        }
    }
    pub fn unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = unit.into();
        self
    }
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }
    pub fn data_type(mut self, data_type: DataType) -> Self {
        self.data_type = data_type;
        self
    }
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }
    /// First metadata value under `key`.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Limits a stage checks for a tag (reported to the host for status pages).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub max_rate_per_second: Option<f64>,
}

/// What a stage decides for an accepted tag; `None` fields keep what came in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TagAccept {
    pub path: Option<String>,
    pub unit: Option<String>,
    pub limits: Option<Limits>,
    pub enrichment: Vec<(String, String)>,
}

/// A stage's answer for one tag.
#[derive(Clone, Debug, PartialEq)]
pub enum TagDecision {
    Accept(TagAccept),
    /// Every sample of the tag goes to the dead-letter with this reason.
    Reject(String),
}

impl TagDecision {
    /// Accept the tag unchanged.
    pub fn keep() -> Self {
        TagDecision::Accept(TagAccept::default())
    }
    pub fn reject(reason: impl Into<String>) -> Self {
        TagDecision::Reject(reason.into())
    }
    /// Accept with a new path.
    pub fn with_path(self, path: impl Into<String>) -> Self {
        self.map_accept(|a| a.path = Some(path.into()))
    }
    /// Accept with a new unit.
    pub fn with_unit(self, unit: impl Into<String>) -> Self {
        self.map_accept(|a| a.unit = Some(unit.into()))
    }
    pub fn with_limits(self, limits: Limits) -> Self {
        self.map_accept(|a| a.limits = Some(limits))
    }
    pub fn enrich(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.map_accept(|a| a.enrichment.push((key.into(), value.into())))
    }
    pub fn is_reject(&self) -> bool {
        matches!(self, TagDecision::Reject(_))
    }
    /// The accepted decision, if any.
    pub fn accepted(&self) -> Option<&TagAccept> {
        match self {
            TagDecision::Accept(a) => Some(a),
            TagDecision::Reject(_) => None,
        }
    }
    fn map_accept(self, f: impl FnOnce(&mut TagAccept)) -> Self {
        match self {
            TagDecision::Accept(mut a) => {
                f(&mut a);
                TagDecision::Accept(a)
            }
            reject => reject,
        }
    }
}

/// Sample quality: an OPC UA style status code. Bits 31..30 carry the severity
/// (00 good, 01 uncertain, 10 bad); the rest is the source's own code, kept as it came.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Quality(pub u32);

// SAFETY: `Quality` is a transparent `u32`: no padding, every bit pattern valid.
unsafe impl bytemuck::Zeroable for Quality {}
unsafe impl bytemuck::Pod for Quality {}

impl Quality {
    pub const GOOD: Quality = Quality(0);
    pub const UNCERTAIN: Quality = Quality(0x4000_0000);
    pub const BAD: Quality = Quality(0x8000_0000);
    /// OPC UA Bad_OutOfRange.
    pub const BAD_OUT_OF_RANGE: Quality = Quality(0x803C_0000);
    /// OPC UA Uncertain_EngineeringUnitsExceeded.
    pub const UNCERTAIN_EU_EXCEEDED: Quality = Quality(0x4094_0000);
    const SEVERITY_MASK: u32 = 0xC000_0000;

    pub fn is_good(self) -> bool {
        self.0 & Self::SEVERITY_MASK == 0
    }
    pub fn is_uncertain(self) -> bool {
        self.0 & Self::SEVERITY_MASK == 0x4000_0000
    }
    /// Bad, or the reserved severity 11 (treated as bad).
    pub fn is_bad(self) -> bool {
        self.0 & 0x8000_0000 != 0
    }
}

/// Bit set of sample-plane columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Columns(pub u8);

impl Columns {
    pub const NONE: Columns = Columns(0);
    pub const VALUES: Columns = Columns(1);
    pub const QUALITY: Columns = Columns(2);
    pub const TIMESTAMPS: Columns = Columns(4);
    pub const EXTRAS: Columns = Columns(8);
    pub fn contains(self, other: Columns) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Columns {
    type Output = Columns;
    fn bitor(self, rhs: Columns) -> Columns {
        Columns(self.0 | rhs.0)
    }
}

/// Bit set of the planes a plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Planes(pub u8);

impl Planes {
    pub const TAG: Planes = Planes(1);
    pub const SAMPLE: Planes = Planes(2);
    /// Write requests on their way to a device (write-back); see `Plugin::on_command`.
    pub const COMMAND: Planes = Planes(4);
    pub fn contains(self, other: Planes) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Planes {
    type Output = Planes;
    fn bitor(self, rhs: Planes) -> Planes {
        Planes(self.0 | rhs.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigKey {
    pub name: String,
    pub description: String,
    pub required: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reason {
    pub code: u16,
    pub name: String,
    pub description: String,
}

/// Plugin self-description, built with the builder methods.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub planes: Planes,
    pub reads: Columns,
    pub writes: Columns,
    pub config_keys: Vec<ConfigKey>,
    pub reasons: Vec<Reason>,
}

impl PluginInfo {
    /// A tag-plane-only plugin; add `sample_plane` for per-batch work.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        PluginInfo {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            planes: Planes::TAG,
            reads: Columns::NONE,
            writes: Columns::NONE,
            config_keys: Vec::new(),
            reasons: Vec::new(),
        }
    }
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }
    /// The plugin is called per batch, reading `reads` and returning `writes` (`VALUES`,
    /// `QUALITY` and `EXTRAS` can be written; a written column must also be read).
    pub fn sample_plane(mut self, reads: Columns, writes: Columns) -> Self {
        self.planes = self.planes | Planes::SAMPLE;
        self.reads = reads;
        self.writes = writes;
        self
    }
    /// The plugin checks or converts write requests (`Plugin::on_command`).
    pub fn command_plane(mut self) -> Self {
        self.planes = self.planes | Planes::COMMAND;
        self
    }
    pub fn config_key(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        required: bool,
    ) -> Self {
        self.config_keys.push(ConfigKey {
            name: name.into(),
            description: description.into(),
            required,
        });
        self
    }
    pub fn reason(
        mut self,
        code: u16,
        name: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.reasons.push(Reason {
            code,
            name: name.into(),
            description: description.into(),
        });
        self
    }
}

/// A value that is not a number, or an integer a double cannot hold exactly.
#[derive(Clone, Debug, PartialEq)]
pub enum ExtraValue {
    Text(String),
    Signed(i64),
    Unsigned(u64),
}

/// Side-channel entry for one sample of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Extra {
    pub index: u32,
    pub value: ExtraValue,
}

/// A sample a stage refuses; goes to the dead-letter with the plugin's reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub index: u32,
    pub reason: u16,
    pub detail: Option<String>,
}

/// A sample a stage drops on purpose (a filter, a deadband, downsampling): it leaves the
/// pipeline without a dead-letter entry; the host counts it per stage and reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub index: u32,
    pub reason: u16,
}

/// The latest sample the host holds for a tag (`host::latest`).
#[derive(Clone, Debug, PartialEq)]
pub struct LatestSample {
    pub value: f64,
    /// Text, or an integer a double cannot hold exactly.
    pub extra: Option<ExtraValue>,
    pub quality: Quality,
    /// Source time, ns since the Unix epoch.
    pub timestamp_ns: u64,
}

/// A write request on its way to a device (the command plane). Stages see it in reverse
/// chain order, so `value` is in the unit and `path` the path this stage produces.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// Unique per command; the reply and the audit log carry it.
    pub id: String,
    pub tag_id: u32,
    pub path: String,
    /// The requested value in the unit this stage produces (NaN for text).
    pub value: f64,
    pub extra: Option<ExtraValue>,
    /// Compare-and-set: write only if the device's current value equals this.
    pub expected_current: Option<f64>,
    pub requester: String,
    /// Not executed after this time (ns since the Unix epoch).
    pub deadline_ns: u64,
    pub dry_run: bool,
}

/// A stage's answer to a command.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandDecision {
    /// Pass it on, with the value in the unit this stage receives (`None` keeps it).
    Allow(Option<f64>),
    /// Refuse it with a declared reason code; nothing is written.
    Refuse { reason: u16, detail: String },
}

impl CommandDecision {
    /// Pass the command on unchanged.
    pub fn allow() -> Self {
        CommandDecision::Allow(None)
    }
    /// Pass the command on with `value` (converted back to the unit this stage receives).
    pub fn allow_value(value: f64) -> Self {
        CommandDecision::Allow(Some(value))
    }
    pub fn refuse(reason: u16, detail: impl Into<String>) -> Self {
        CommandDecision::Refuse {
            reason,
            detail: detail.into(),
        }
    }
}

/// One sample, read-only view.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub index: usize,
    pub tag: u32,
    pub value: f64,
    pub quality: Quality,
    pub timestamp_ns: u64,
}

/// One sample, with its value and quality writable and a way to reject it.
pub struct SampleMut<'a> {
    pub index: usize,
    pub tag: u32,
    pub timestamp_ns: u64,
    pub value: &'a mut f64,
    pub quality: &'a mut Quality,
    refused: &'a RefCell<Refused>,
}

impl SampleMut<'_> {
    /// Send this sample to the dead-letter with `reason` (a code declared in `PluginInfo`):
    /// for samples that are wrong. For samples a filter holds back, use `drop`.
    pub fn reject(&self, reason: u16, detail: impl Into<String>) {
        self.refused
            .borrow_mut()
            .reject(self.index, reason, detail.into());
    }
    /// Drop this sample on purpose (filter, deadband, downsampling): no dead-letter entry,
    /// counted by the host per stage and `reason` (a code declared in `PluginInfo`).
    pub fn drop(&self, reason: u16) {
        self.refused.borrow_mut().drop(self.index, reason);
    }
}

/// Rejections and drops of a batch so far.
#[derive(Debug, Default)]
struct Refused {
    rejected: Vec<Rejection>,
    dropped: Vec<Dropped>,
}

impl Refused {
    fn reject(&mut self, index: usize, reason: u16, detail: String) {
        self.rejected.push(Rejection {
            index: index as u32,
            reason,
            detail: (!detail.is_empty()).then_some(detail),
        });
    }
    fn drop(&mut self, index: usize, reason: u16) {
        self.dropped.push(Dropped {
            index: index as u32,
            reason,
        });
    }
}

/// A batch on the sample plane: columns of equal length. A column the plugin did not declare
/// in `reads` is empty in `values()`/`quality()`/`timestamps()`; `samples()` and
/// `samples_mut()` read it as NaN / good / 0.
pub struct Batch {
    tag_ids: Vec<u32>,
    values: Vec<f64>,
    quality: Vec<Quality>,
    timestamps: Vec<u64>,
    extras: Vec<Extra>,
    refused: RefCell<Refused>,
}

impl Batch {
    /// Builds a batch. Columns may be empty (the plugin did not declare them in `reads`);
    /// `samples_mut` fills them in when it needs them.
    pub fn new(
        tag_ids: Vec<u32>,
        values: Vec<f64>,
        quality: Vec<u32>,
        timestamps: Vec<u64>,
        extras: Vec<Extra>,
    ) -> Self {
        Batch {
            tag_ids,
            values,
            // Same layout: reuse the column's allocation instead of copying it.
            quality: bytemuck::cast_vec(quality),
            timestamps,
            extras,
            refused: RefCell::new(Refused::default()),
        }
    }

    /// Fills columns that were not passed (NaN values, good quality, time 0).
    fn fill_missing(&mut self) {
        let n = self.tag_ids.len();
        if self.values.len() != n {
            self.values.resize(n, f64::NAN);
        }
        if self.quality.len() != n {
            self.quality.resize(n, Quality::GOOD);
        }
        if self.timestamps.len() != n {
            self.timestamps.resize(n, 0);
        }
    }

    /// A batch from `(tag, value, quality, timestamp_ns)` rows; for tests.
    pub fn from_rows(rows: &[(u32, f64, Quality, u64)]) -> Self {
        Batch::new(
            rows.iter().map(|r| r.0).collect(),
            rows.iter().map(|r| r.1).collect(),
            rows.iter().map(|r| r.2 .0).collect(),
            rows.iter().map(|r| r.3).collect(),
            Vec::new(),
        )
    }

    pub fn len(&self) -> usize {
        self.tag_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tag_ids.is_empty()
    }
    pub fn tag_ids(&self) -> &[u32] {
        &self.tag_ids
    }
    pub fn values(&self) -> &[f64] {
        &self.values
    }
    pub fn values_mut(&mut self) -> &mut [f64] {
        &mut self.values
    }
    pub fn quality(&self) -> &[Quality] {
        &self.quality
    }
    pub fn quality_mut(&mut self) -> &mut [Quality] {
        &mut self.quality
    }
    pub fn timestamps(&self) -> &[u64] {
        &self.timestamps
    }
    pub fn extras(&self) -> &[Extra] {
        &self.extras
    }

    /// The extra value of sample `index` (text, or an integer a double cannot hold).
    pub fn extra(&self, index: usize) -> Option<&ExtraValue> {
        self.extras
            .iter()
            .find(|e| e.index as usize == index)
            .map(|e| &e.value)
    }

    /// Sets (or with `None` removes) the extra value of sample `index`. Declare
    /// `Columns::EXTRAS` in both `reads` and `writes` for the host to take the change: a stage
    /// that rewrites a text or wide integer value returns the new one this way.
    pub fn set_extra(&mut self, index: usize, value: Option<ExtraValue>) {
        let at = self.extras.iter().position(|e| e.index as usize == index);
        match (at, value) {
            (Some(i), Some(v)) => self.extras[i].value = v,
            (Some(i), None) => {
                self.extras.remove(i);
            }
            (None, Some(v)) => self.extras.push(Extra {
                index: index as u32,
                value: v,
            }),
            (None, None) => {}
        }
    }

    /// Read-only samples in order.
    pub fn samples(&self) -> impl Iterator<Item = Sample> + '_ {
        self.tag_ids.iter().enumerate().map(|(index, &tag)| Sample {
            index,
            tag,
            value: self.values.get(index).copied().unwrap_or(f64::NAN),
            quality: self.quality.get(index).copied().unwrap_or(Quality::GOOD),
            timestamp_ns: self.timestamps.get(index).copied().unwrap_or(0),
        })
    }

    /// Tag ids and the values column, writable, without the other columns: the fast path
    /// for value-only transforms. The values column is filled in if it was not passed.
    pub fn tags_and_values_mut(&mut self) -> (&[u32], &mut [f64]) {
        if self.values.len() != self.tag_ids.len() {
            self.values.resize(self.tag_ids.len(), f64::NAN);
        }
        (&self.tag_ids, &mut self.values)
    }

    /// Samples in order with writable value and quality; `SampleMut::reject` refuses one.
    pub fn samples_mut(&mut self) -> impl Iterator<Item = SampleMut<'_>> + '_ {
        self.fill_missing();
        let Batch {
            tag_ids,
            values,
            quality,
            timestamps,
            refused,
            ..
        } = self;
        let refused = &*refused;
        tag_ids
            .iter()
            .zip(values.iter_mut())
            .zip(quality.iter_mut())
            .zip(timestamps.iter())
            .enumerate()
            .map(
                move |(index, (((&tag, value), quality), &timestamp_ns))| SampleMut {
                    index,
                    tag,
                    timestamp_ns,
                    value,
                    quality,
                    refused,
                },
            )
    }

    /// Refuse sample `index` with `reason`: it goes to the dead-letter (for samples that are
    /// wrong; a filter that holds samples back uses `drop`).
    pub fn reject(&self, index: usize, reason: u16, detail: impl Into<String>) {
        self.refused
            .borrow_mut()
            .reject(index, reason, detail.into());
    }

    /// Drop sample `index` on purpose with `reason` (filter, deadband, downsampling): it
    /// leaves the pipeline without a dead-letter entry; the host counts it per reason.
    pub fn drop(&self, index: usize, reason: u16) {
        self.refused.borrow_mut().drop(index, reason);
    }

    /// Rejections so far.
    pub fn rejected(&self) -> Vec<Rejection> {
        self.refused.borrow().rejected.clone()
    }

    /// Drops so far.
    pub fn dropped(&self) -> Vec<Dropped> {
        self.refused.borrow().dropped.clone()
    }

    /// Splits the batch into the output columns the plugin declared it writes.
    pub fn into_output(self, writes: Columns) -> BatchOutput {
        let refused = self.refused.into_inner();
        BatchOutput {
            values: writes.contains(Columns::VALUES).then_some(self.values),
            quality: writes
                .contains(Columns::QUALITY)
                .then(|| bytemuck::cast_vec(self.quality)),
            extras: writes.contains(Columns::EXTRAS).then_some(self.extras),
            rejected: refused.rejected,
            dropped: refused.dropped,
        }
    }
}

/// What a stage hands back for a batch.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BatchOutput {
    pub values: Option<Vec<f64>>,
    pub quality: Option<Vec<u32>>,
    /// The batch's extras after the stage (only when it declares `EXTRAS` in `writes`).
    pub extras: Option<Vec<Extra>>,
    pub rejected: Vec<Rejection>,
    pub dropped: Vec<Dropped>,
}

/// The stage's `config` table from the host config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config(pub serde_json::Value);

impl Config {
    /// Parses the config JSON text the host passes to `init`.
    pub fn from_json(text: &str) -> Result<Config, String> {
        let value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))?
        };
        Ok(Config(value))
    }
    /// Deserialises the config into the plugin's own typed config struct. The error names
    /// where the problem is, as a path into the config: `invalid config at rules[1].low: ...`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_path_to_error::deserialize(self.0.clone()).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                format!("invalid config: {inner}")
            } else {
                format!("invalid config at {path}: {inner}")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_severity_bits() {
        assert!(Quality::GOOD.is_good());
        assert!(Quality::UNCERTAIN_EU_EXCEEDED.is_uncertain());
        assert!(Quality::BAD_OUT_OF_RANGE.is_bad());
        assert!(!Quality::BAD.is_good());
        assert!(Quality(0xC000_0000).is_bad());
    }

    #[test]
    fn missing_columns_are_filled_and_rejections_collected() {
        let mut batch = Batch::new(vec![1, 2, 3], vec![], vec![], vec![], vec![]);
        assert!(
            batch.values().is_empty(),
            "a column not passed stays empty until needed"
        );
        assert!(batch
            .samples()
            .all(|s| s.value.is_nan() && s.quality.is_good()));
        for s in batch.samples_mut() {
            *s.value = s.tag as f64;
            if s.tag == 2 {
                s.reject(7, "two");
            }
        }
        let out = batch.into_output(Columns::VALUES);
        assert_eq!(out.values, Some(vec![1.0, 2.0, 3.0]));
        assert_eq!(out.quality, None);
        assert_eq!(
            out.rejected,
            vec![Rejection {
                index: 1,
                reason: 7,
                detail: Some("two".into())
            }]
        );
    }

    #[test]
    fn drops_and_rejections_are_kept_apart_and_extras_written() {
        let mut batch = Batch::new(
            vec![1, 2, 3, 4],
            vec![1.0, f64::NAN, 3.0, 4.0],
            vec![],
            vec![],
            vec![Extra {
                index: 1,
                value: ExtraValue::Text("off".into()),
            }],
        );
        for s in batch.samples_mut() {
            match s.tag {
                1 => s.drop(2),
                3 => s.reject(1, ""),
                _ => {}
            }
        }
        batch.drop(3, 2);
        assert_eq!(batch.extra(1), Some(&ExtraValue::Text("off".into())));
        batch.set_extra(1, Some(ExtraValue::Text("on".into())));
        batch.set_extra(2, Some(ExtraValue::Unsigned(u64::MAX)));
        batch.set_extra(2, None);
        let out = batch.into_output(Columns::EXTRAS);
        assert_eq!(
            out.dropped,
            vec![
                Dropped {
                    index: 0,
                    reason: 2
                },
                Dropped {
                    index: 3,
                    reason: 2
                }
            ]
        );
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].index, 2);
        assert_eq!(out.rejected[0].detail, None);
        assert_eq!(
            out.extras,
            Some(vec![Extra {
                index: 1,
                value: ExtraValue::Text("on".into())
            }])
        );
        assert_eq!(out.values, None);
    }

    #[test]
    fn config_errors_name_the_key_path() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Rule {
            low: f64,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Conf {
            rules: Vec<Rule>,
        }
        let config = Config::from_json(r#"{"rules": [{"low": 1.0}, {"low": "ten"}]}"#).unwrap();
        let e = config.parse::<Conf>().unwrap_err();
        assert!(e.starts_with("invalid config at rules[1].low: "), "{e}");
        let config = Config::from_json(r#"{"rules": [{"low": 1.0, "hihg": 2}]}"#).unwrap();
        let e = config.parse::<Conf>().unwrap_err();
        assert!(e.contains("rules[0]") && e.contains("hihg"), "{e}");
        let e = Config::from_json("[]")
            .unwrap()
            .parse::<Conf>()
            .unwrap_err();
        assert!(e.starts_with("invalid config: "), "{e}");
    }

    #[test]
    fn decision_builders_keep_rejections() {
        let d = TagDecision::reject("no").with_path("x");
        assert_eq!(d, TagDecision::Reject("no".into()));
        let d = TagDecision::keep().with_path("a/b").enrich("k", "v");
        assert_eq!(d.accepted().unwrap().path.as_deref(), Some("a/b"));
    }
}
