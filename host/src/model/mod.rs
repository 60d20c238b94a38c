//! The data model shared by sources, pipeline, buffer and sinks: tags (described once, then
//! named by a dense host-assigned id), quality, columnar sample batches, what leaves the chain
//! (`OutputBatch` over a `TagTable`) and dead-letters. It imports nothing above it but the
//! plugin contract's value types.

mod dead_letter;
mod output;
pub mod status;

pub use dead_letter::{DeadLetter, DeadLetterBatch, Refusal, TagNames, SOURCE_PAYLOAD_BYTES};
pub use output::{OutputBatch, ResolvedTag, TagTable};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::ack::Ack;

pub use crate::plugin::{DataType, Extra, ExtraValue};

pub type TagId = u32;

/// Sample quality: an OPC UA style status code; bits 31..30 are the severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Quality(pub u32);

impl Quality {
    pub const GOOD: Quality = Quality(0);
    pub const UNCERTAIN: Quality = Quality(0x4000_0000);
    pub const BAD: Quality = Quality(0x8000_0000);
    /// Severity as a word: `good`, `uncertain` or `bad`.
    pub fn level(self) -> &'static str {
        match self.0 >> 30 {
            0 => "good",
            1 => "uncertain",
            _ => "bad",
        }
    }
}

/// A tag as its source describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TagDescriptor {
    /// Name of the source in the host config.
    pub source: String,
    /// The source's own name for the tag.
    pub vendor_path: String,
    pub unit: String,
    pub data_type: DataType,
    pub metadata: Vec<(String, String)>,
}

/// Interns tag descriptors into dense ids, stable for the life of the process. Sources that
/// name tags by message (MQTT topics, Kafka keys) intern with `try_intern`, which refuses new
/// tags past the registry's limit (`pipeline.max_tags`); configured sources (Modbus, OPC UA,
/// the simulator) declare their tags at start and use `intern`.
pub struct TagRegistry {
    inner: RwLock<RegistryInner>,
    limit: usize,
    refused: std::sync::atomic::AtomicU64,
}

impl Default for TagRegistry {
    fn default() -> Self {
        TagRegistry::with_limit(usize::MAX)
    }
}

/// A new tag past the registry's limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the host keeps at most {limit} tags (pipeline.max_tags); a new tag is refused")]
pub struct TagLimitReached {
    pub limit: usize,
}

#[derive(Default)]
struct RegistryInner {
    by_name: HashMap<(String, String), TagId>,
    tags: Vec<Arc<TagDescriptor>>,
}

impl TagRegistry {
    pub fn with_limit(limit: usize) -> TagRegistry {
        TagRegistry {
            inner: RwLock::default(),
            limit,
            refused: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The most tags `try_intern` admits.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// New tags `try_intern` refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Like `intern`, but a new tag past the limit is refused (and counted).
    pub fn try_intern(&self, descriptor: TagDescriptor) -> Result<TagId, TagLimitReached> {
        let key = (descriptor.source.clone(), descriptor.vendor_path.clone());
        if let Some(id) = self.read().by_name.get(&key) {
            return Ok(*id);
        }
        if self.len() >= self.limit {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(TagLimitReached { limit: self.limit });
        }
        Ok(self.intern(descriptor))
    }

    /// The id of `descriptor` (by source and vendor path), registering it when new.
    pub fn intern(&self, descriptor: TagDescriptor) -> TagId {
        let key = (descriptor.source.clone(), descriptor.vendor_path.clone());
        if let Some(id) = self.read().by_name.get(&key) {
            return *id;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = inner.by_name.get(&key) {
            return *id;
        }
        let id = inner.tags.len() as TagId;
        inner.tags.push(Arc::new(descriptor));
        inner.by_name.insert(key, id);
        id
    }

    pub fn len(&self) -> usize {
        self.read().tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: TagId) -> Option<Arc<TagDescriptor>> {
        self.read().tags.get(id as usize).cloned()
    }

    /// Descriptors with ids in `from..`.
    pub fn since(&self, from: usize) -> Vec<Arc<TagDescriptor>> {
        self.read()
            .tags
            .get(from..)
            .map(|s| s.to_vec())
            .unwrap_or_default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RegistryInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// A batch of samples as columns of equal length.
#[derive(Debug, Default, PartialEq)]
pub struct SampleBatch {
    pub tag_ids: Vec<TagId>,
    pub values: Vec<f64>,
    pub quality: Vec<u32>,
    /// Source time, ns since the Unix epoch.
    pub timestamps: Vec<u64>,
    /// Side channel for text values and integers a double cannot hold, by sample index.
    pub extras: Vec<Extra>,
    /// The source's acknowledgment, released when every destination has the samples.
    pub ack: Option<Ack>,
}

/// A copy of the samples is not a holder of their acknowledgment: `clone` leaves `ack` None
/// (a holder is made only on purpose, with `ack.clone()`).
impl Clone for SampleBatch {
    fn clone(&self) -> Self {
        SampleBatch {
            tag_ids: self.tag_ids.clone(),
            values: self.values.clone(),
            quality: self.quality.clone(),
            timestamps: self.timestamps.clone(),
            extras: self.extras.clone(),
            ack: None,
        }
    }
}

impl SampleBatch {
    pub fn with_capacity(n: usize) -> Self {
        SampleBatch {
            tag_ids: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            quality: Vec::with_capacity(n),
            timestamps: Vec::with_capacity(n),
            extras: Vec::new(),
            ack: None,
        }
    }

    pub fn len(&self) -> usize {
        self.tag_ids.len()
    }

    /// Says done for this batch's acknowledgment share: its samples were handed on (to the
    /// sinks or the dead-letter, each with a share of its own) or there are none left.
    pub fn handed_on(&mut self) {
        if let Some(a) = self.ack.take() {
            a.done();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tag_ids.is_empty()
    }

    pub fn push(&mut self, tag: TagId, value: f64, quality: Quality, timestamp_ns: u64) {
        self.tag_ids.push(tag);
        self.values.push(value);
        self.quality.push(quality.0);
        self.timestamps.push(timestamp_ns);
    }

    /// Moves the samples whose `remove` flag is set into a new batch, keeping order in both.
    pub fn split_off_marked(&mut self, remove: &[bool]) -> SampleBatch {
        debug_assert_eq!(remove.len(), self.len());
        let mut taken = SampleBatch {
            ack: self.ack.clone(),
            ..SampleBatch::default()
        };
        let mut kept_index = vec![u32::MAX; self.len()];
        let mut taken_index = vec![u32::MAX; self.len()];
        let mut w = 0;
        for r in 0..self.len() {
            if remove[r] {
                taken_index[r] = taken.tag_ids.len() as u32;
                taken.tag_ids.push(self.tag_ids[r]);
                taken.values.push(self.values[r]);
                taken.quality.push(self.quality[r]);
                taken.timestamps.push(self.timestamps[r]);
            } else {
                kept_index[r] = w as u32;
                self.tag_ids[w] = self.tag_ids[r];
                self.values[w] = self.values[r];
                self.quality[w] = self.quality[r];
                self.timestamps[w] = self.timestamps[r];
                w += 1;
            }
        }
        self.tag_ids.truncate(w);
        self.values.truncate(w);
        self.quality.truncate(w);
        self.timestamps.truncate(w);
        for mut e in std::mem::take(&mut self.extras) {
            let r = e.index as usize;
            if remove[r] {
                e.index = taken_index[r];
                taken.extras.push(e);
            } else {
                e.index = kept_index[r];
                self.extras.push(e);
            }
        }
        taken
    }

    /// The extra value of sample `index`, if any.
    pub fn extra(&self, index: usize) -> Option<&ExtraValue> {
        self.extras
            .iter()
            .find(|e| e.index as usize == index)
            .map(|e| &e.value)
    }
}

/// Now, in ns since the Unix epoch (the unit of every sample timestamp); 0 if the clock is
/// before the epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(source: &str, path: &str) -> TagDescriptor {
        TagDescriptor {
            source: source.into(),
            vendor_path: path.into(),
            unit: "bar".into(),
            data_type: DataType::Float64,
            metadata: vec![],
        }
    }

    #[test]
    fn registry_interns_by_source_and_path() {
        let r = TagRegistry::default();
        assert_eq!(r.intern(desc("a", "x")), 0);
        assert_eq!(r.intern(desc("a", "y")), 1);
        assert_eq!(r.intern(desc("a", "x")), 0);
        assert_eq!(r.intern(desc("b", "x")), 2);
        assert_eq!(r.len(), 3);
        assert_eq!(r.since(2)[0].source, "b");
    }

    #[test]
    fn a_bounded_registry_refuses_new_tags_past_its_limit_and_counts_them() {
        let r = TagRegistry::with_limit(2);
        assert_eq!(r.try_intern(desc("a", "x")), Ok(0));
        assert_eq!(r.try_intern(desc("a", "y")), Ok(1));
        assert_eq!(
            r.try_intern(desc("a", "z")),
            Err(TagLimitReached { limit: 2 })
        );
        assert_eq!(
            r.try_intern(desc("a", "x")),
            Ok(0),
            "known tags still resolve"
        );
        assert_eq!(r.refused(), 1);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn split_keeps_order_and_moves_extras() {
        let mut b = SampleBatch::default();
        for i in 0..5 {
            b.push(i, i as f64, Quality::GOOD, 100 + i as u64);
        }
        b.extras.push(Extra {
            index: 1,
            value: ExtraValue::Text("one".into()),
        });
        b.extras.push(Extra {
            index: 4,
            value: ExtraValue::Signed(-4),
        });
        let taken = b.split_off_marked(&[false, true, false, true, false]);
        assert_eq!(b.tag_ids, vec![0, 2, 4]);
        assert_eq!(taken.tag_ids, vec![1, 3]);
        assert_eq!(taken.timestamps, vec![101, 103]);
        assert_eq!(taken.extra(0), Some(&ExtraValue::Text("one".into())));
        assert_eq!(b.extra(2), Some(&ExtraValue::Signed(-4)));
    }
}
