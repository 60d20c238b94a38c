//! What leaves the chain: samples that passed every stage, with the table of tags as the
//! sinks see them (after normalisation, unit conversion and enrichment). The sinks and the
//! durable buffer work on these types only; the chain produces them.

use std::sync::Arc;

use super::{DataType, SampleBatch};
use crate::ack::Ack;

/// A tag as the sinks see it, after every stage.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedTag {
    pub id: u32,
    pub source: String,
    pub vendor_path: String,
    pub path: String,
    pub unit: String,
    pub data_type: DataType,
    pub metadata: Vec<(String, String)>,
}

/// Tags per chunk of a `TagTable`.
const CHUNK: usize = 1024;

type Slot = Option<Arc<ResolvedTag>>;

/// Resolved tags by id; None for tags a stage rejected. Shared by every batch in flight, so
/// it is copy-on-write in chunks of `CHUNK` tags: a clone copies one pointer per chunk, and a
/// change (a new tag, a re-decided one) copies only the chunk it touches — adding a tag never
/// copies the whole table.
#[derive(Clone, Default, PartialEq)]
pub struct TagTable {
    chunks: Vec<Arc<Vec<Slot>>>,
    len: usize,
}

impl TagTable {
    pub fn new() -> TagTable {
        TagTable::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot of tag `id` (None: beyond the table).
    pub fn get(&self, id: usize) -> Option<&Slot> {
        if id >= self.len {
            return None;
        }
        self.chunks.get(id / CHUNK)?.get(id % CHUNK)
    }

    pub fn push(&mut self, slot: Slot) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let last = self.chunks.last_mut().expect("a chunk with room");
        Arc::make_mut(last).push(slot);
        self.len += 1;
    }

    /// Grows (with None) or shrinks to `len` tags.
    pub fn resize(&mut self, len: usize) {
        while self.len > len {
            let last = self.chunks.last_mut().expect("non-empty");
            Arc::make_mut(last).pop();
            self.len -= 1;
            if self.len.is_multiple_of(CHUNK) {
                self.chunks.pop();
            }
        }
        while self.len < len {
            self.push(None);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl std::ops::Index<usize> for TagTable {
    type Output = Slot;
    fn index(&self, id: usize) -> &Slot {
        self.get(id)
            .unwrap_or_else(|| panic!("tag {id} beyond a table of {}", self.len))
    }
}

/// Copies only the chunk that holds `id`.
impl std::ops::IndexMut<usize> for TagTable {
    fn index_mut(&mut self, id: usize) -> &mut Slot {
        assert!(id < self.len, "tag {id} beyond a table of {}", self.len);
        &mut Arc::make_mut(&mut self.chunks[id / CHUNK])[id % CHUNK]
    }
}

impl Extend<Slot> for TagTable {
    fn extend<I: IntoIterator<Item = Slot>>(&mut self, iter: I) {
        for slot in iter {
            self.push(slot);
        }
    }
}

impl FromIterator<Slot> for TagTable {
    fn from_iter<I: IntoIterator<Item = Slot>>(iter: I) -> Self {
        let mut t = TagTable::new();
        t.extend(iter);
        t
    }
}

impl From<Vec<Slot>> for TagTable {
    fn from(v: Vec<Slot>) -> Self {
        v.into_iter().collect()
    }
}

impl std::fmt::Debug for TagTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Samples that passed the chain, with the tag table they were processed under, as one
/// destination gets them: the samples and tags are shared by every destination, the
/// acknowledgment share is this destination's own (say `done` once the samples are durable).
#[derive(Clone, Debug)]
pub struct OutputBatch {
    pub samples: Arc<SampleBatch>,
    pub tags: Arc<TagTable>,
    /// This destination's share of the sources' acknowledgment (`samples.ack` is always None).
    pub ack: Option<Ack>,
}

impl OutputBatch {
    /// Wraps `samples`, moving their acknowledgment into the batch.
    pub fn new(mut samples: SampleBatch, tags: Arc<TagTable>) -> OutputBatch {
        let ack = samples.ack.take();
        OutputBatch {
            samples: Arc::new(samples),
            tags,
            ack,
        }
    }

    /// The same samples for one more destination, with its own acknowledgment share.
    pub fn for_another_destination(&self) -> OutputBatch {
        self.clone()
    }

    /// Says done for this destination's share (its samples are durable).
    pub fn done(&self) {
        if let Some(a) = &self.ack {
            a.done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(id: u32) -> Slot {
        Some(Arc::new(ResolvedTag {
            id,
            source: "s".into(),
            vendor_path: format!("v{id}"),
            path: format!("p{id}"),
            unit: String::new(),
            data_type: DataType::Float64,
            metadata: vec![],
        }))
    }

    #[test]
    fn a_new_tag_copies_one_chunk_and_a_shared_copy_keeps_its_view() {
        let mut t: TagTable = (0..3000).map(tag).collect();
        let shared = t.clone();
        t.push(tag(3000));
        t[5] = None;
        assert_eq!(t.len(), 3001);
        assert_eq!(shared.len(), 3000);
        assert!(
            shared[5].is_some(),
            "the copy held by a batch in flight is untouched"
        );
        assert!(t[5].is_none());
        // Only the chunks written to were copied: the middle one is still shared.
        assert!(Arc::ptr_eq(&t.chunks[1], &shared.chunks[1]));
        assert!(!Arc::ptr_eq(&t.chunks[0], &shared.chunks[0]));
        assert_eq!(t.get(3000).cloned().flatten().unwrap().path, "p3000");
        assert!(t.get(3001).is_none());
        t.resize(1024);
        assert_eq!((t.len(), t.chunks.len()), (1024, 1));
        t.resize(1030);
        assert_eq!(
            (t.len(), t.chunks.len(), t[1029].is_none()),
            (1030, 2, true)
        );
    }
}
