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

/// Resolved tags by id; None for tags a stage rejected.
pub type TagTable = Vec<Option<Arc<ResolvedTag>>>;

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
