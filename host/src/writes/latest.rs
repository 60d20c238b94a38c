//! The latest sample of every tag that left the chain, by normalized path, with the tag as
//! the sinks see it (source, vendor path, unit, metadata). Write-back maps a command's path
//! back to its source and vendor path here, and the `latest` host import of the command plane
//! reads interlock values from it. Fed by one more output of the chain (`feed`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::model::{ExtraValue, OutputBatch, ResolvedTag};

/// The latest sample of a tag.
#[derive(Clone, Debug, PartialEq)]
pub struct Latest {
    pub value: f64,
    pub extra: Option<ExtraValue>,
    pub quality: u32,
    pub timestamp_ns: u64,
}

#[derive(Default)]
struct Inner {
    /// Tag ids by normalized path (more than one: two tags share a path, ambiguous).
    by_path: HashMap<String, Vec<u32>>,
    by_id: HashMap<u32, (Arc<ResolvedTag>, Latest)>,
}

/// Latest values by tag; cheap to share.
#[derive(Default)]
pub struct LatestStore {
    inner: RwLock<Inner>,
}

/// What a path resolves to.
pub enum Resolved {
    None,
    One(Arc<ResolvedTag>, Latest),
    Many(Vec<Arc<ResolvedTag>>),
}

impl LatestStore {
    pub fn new() -> Arc<LatestStore> {
        Arc::new(LatestStore::default())
    }

    /// Takes a batch that left the chain.
    pub fn update(&self, batch: &OutputBatch) {
        let s = &batch.samples;
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let mut extras = s.extras.iter().peekable();
        for i in 0..s.len() {
            let id = s.tag_ids[i];
            let Some(Some(tag)) = batch.tags.get(id as usize) else {
                continue;
            };
            let mut extra = None;
            while let Some(e) = extras.peek() {
                if (e.index as usize) < i {
                    extras.next();
                } else {
                    if e.index as usize == i {
                        extra = Some(e.value.clone());
                    }
                    break;
                }
            }
            let latest = Latest {
                value: s.values[i],
                extra,
                quality: s.quality[i],
                timestamp_ns: s.timestamps[i],
            };
            let Inner { by_path, by_id } = &mut *inner;
            match by_id.get_mut(&id) {
                Some((known, l)) if Arc::ptr_eq(known, tag) || **known == **tag => {
                    *l = latest;
                }
                previous => {
                    // A new tag, or one re-decided (its path may have changed).
                    if let Some((old, _)) = previous {
                        if let Some(ids) = by_path.get_mut(&old.path) {
                            ids.retain(|x| *x != id);
                        }
                    }
                    let ids = by_path.entry(tag.path.clone()).or_default();
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                    by_id.insert(id, (tag.clone(), latest));
                }
            }
        }
    }

    /// The tag (or tags) at a normalized path.
    pub fn resolve(&self, path: &str) -> Resolved {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        match inner.by_path.get(path).map(|v| v.as_slice()) {
            None | Some([]) => Resolved::None,
            Some([id]) => {
                let (t, l) = &inner.by_id[id];
                Resolved::One(t.clone(), l.clone())
            }
            Some(ids) => Resolved::Many(ids.iter().map(|i| inner.by_id[i].0.clone()).collect()),
        }
    }

    /// The latest sample at a normalized path (none when unknown or ambiguous).
    pub fn latest(&self, path: &str) -> Option<Latest> {
        match self.resolve(path) {
            Resolved::One(_, l) => Some(l),
            _ => None,
        }
    }
}

/// The `latest` host import of the command plane reads here.
impl crate::plugin::LatestValues for LatestStore {
    fn latest(&self, path: &str) -> Option<crate::plugin::LatestSample> {
        LatestStore::latest(self, path).map(|l| crate::plugin::LatestSample {
            value: l.value,
            extra: l.extra,
            quality: l.quality,
            timestamp: l.timestamp_ns,
        })
    }
}

/// Keeps `store` up to date from one output of the chain; says done for each batch (the
/// store holds nothing durable, so it never holds back the sources' acknowledgment).
pub async fn feed(store: Arc<LatestStore>, mut rx: mpsc::Receiver<Arc<OutputBatch>>) {
    while let Some(batch) = rx.recv().await {
        store.update(&batch);
        batch.done();
    }
}
