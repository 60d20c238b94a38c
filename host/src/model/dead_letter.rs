//! Dead-letters: a sample the pipeline could not deliver, with who refused it and why.

use serde::Serialize;

use crate::model::{ExtraValue, SampleBatch};

/// One refused sample.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Stage that refused it (or `pipeline` for the host itself).
    pub stage: String,
    pub plugin: String,
    pub plugin_version: String,
    /// Stable reason name (a plugin's declared reason, or one of the host's:
    /// `tag-rejected`, `stage-quarantined`, `held-at-shutdown`).
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub tag_id: u32,
    pub source: String,
    pub vendor_path: String,
    /// Path the tag had when it reached the refusing stage.
    pub path: String,
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
    pub quality: u32,
    pub timestamp_ns: u64,
}

impl DeadLetter {
    /// A dead-letter for sample `i` of a batch that passed the chain and that sink `sink`
    /// refused (the tag is resolved, so its names come from `tags`).
    pub fn refused_by_sink(
        sink: &str,
        reason: &str,
        detail: String,
        batch: &SampleBatch,
        tags: &super::TagTable,
        i: usize,
    ) -> DeadLetter {
        let tag = tags.get(batch.tag_ids[i] as usize).cloned().flatten();
        let name = |f: fn(&super::ResolvedTag) -> &String| {
            tag.as_deref().map(|t| f(t).clone()).unwrap_or_default()
        };
        DeadLetter {
            stage: format!("sink.{sink}"),
            plugin: String::new(),
            plugin_version: String::new(),
            reason: reason.into(),
            reason_code: None,
            detail: Some(detail),
            tag_id: batch.tag_ids[i],
            source: name(|t| &t.source),
            vendor_path: name(|t| &t.vendor_path),
            path: name(|t| &t.path),
            value: batch.values[i].is_finite().then_some(batch.values[i]),
            extra: batch.extra(i).map(|e| format!("{e:?}")),
            quality: batch.quality[i],
            timestamp_ns: batch.timestamps[i],
        }
    }
}

/// How much of a refused message's payload a source's dead-letter keeps (as text).
pub const SOURCE_PAYLOAD_BYTES: usize = 4096;

impl DeadLetter {
    /// A dead-letter for a message source `source` could not take: `place` is where it came
    /// from (MQTT topic, Kafka topic/partition@offset), `payload` its bytes (the first
    /// `SOURCE_PAYLOAD_BYTES` are kept, as text).
    pub fn refused_by_source(
        source: &str,
        reason: &str,
        detail: String,
        place: String,
        payload: &[u8],
    ) -> DeadLetter {
        let mut letter =
            DeadLetter::refused_record(&format!("source.{source}"), reason, detail, place, payload);
        letter.source = source.into();
        letter
    }

    /// A dead-letter for a whole record refused by `stage` (`source.<name>` or
    /// `sink.<name>`) without samples to name: `place` is where it came from or was going
    /// (topic, key), `payload` its bytes (the first `SOURCE_PAYLOAD_BYTES`, as text).
    pub fn refused_record(
        stage: &str,
        reason: &str,
        detail: String,
        place: String,
        payload: &[u8],
    ) -> DeadLetter {
        let cut = payload.len().min(SOURCE_PAYLOAD_BYTES);
        DeadLetter {
            stage: stage.into(),
            plugin: String::new(),
            plugin_version: String::new(),
            reason: reason.into(),
            reason_code: None,
            detail: Some(detail),
            tag_id: u32::MAX,
            source: String::new(),
            vendor_path: place.clone(),
            path: place,
            value: None,
            extra: Some(String::from_utf8_lossy(&payload[..cut]).to_string()),
            quality: crate::model::Quality::BAD.0,
            timestamp_ns: crate::model::now_ns(),
        }
    }
}

/// Dead-letters on their way to the dead-letter sink, with the acknowledgment of the batch
/// they came from (released once they are written).
#[derive(Debug, Default)]
pub struct DeadLetterBatch {
    pub letters: Vec<DeadLetter>,
    pub ack: Option<crate::ack::Ack>,
}

impl DeadLetterBatch {
    pub fn new(letters: Vec<DeadLetter>, ack: Option<crate::ack::Ack>) -> Self {
        DeadLetterBatch { letters, ack }
    }
}

/// Who refused and why, for a group of samples.
pub struct Refusal<'a> {
    pub stage: &'a str,
    pub plugin: &'a str,
    pub plugin_version: &'a str,
    pub reason: &'a str,
    pub reason_code: Option<u16>,
}

/// Tag identity as the refusing stage saw it.
pub struct TagNames<'a> {
    pub source: &'a str,
    pub vendor_path: &'a str,
    pub path: &'a str,
}

impl DeadLetter {
    /// A dead-letter for sample `i` of `batch`.
    pub fn from_sample(
        refusal: &Refusal<'_>,
        names: TagNames<'_>,
        batch: &SampleBatch,
        i: usize,
        detail: Option<String>,
    ) -> DeadLetter {
        let value = batch.values[i];
        DeadLetter {
            stage: refusal.stage.to_string(),
            plugin: refusal.plugin.to_string(),
            plugin_version: refusal.plugin_version.to_string(),
            reason: refusal.reason.to_string(),
            reason_code: refusal.reason_code,
            detail,
            tag_id: batch.tag_ids[i],
            source: names.source.to_string(),
            vendor_path: names.vendor_path.to_string(),
            path: names.path.to_string(),
            value: value.is_finite().then_some(value),
            extra: batch.extra(i).map(|e| match e {
                ExtraValue::Text(s) => s.clone(),
                ExtraValue::Signed(v) => v.to_string(),
                ExtraValue::Unsigned(v) => v.to_string(),
            }),
            quality: batch.quality[i],
            timestamp_ns: batch.timestamps[i],
        }
    }
}
