//! Deduplication of samples within a time window, in bounded memory. A sample is keyed by
//! (tag path, source timestamp) and carries a hash of its content (value, text or integer,
//! quality and status: the payload's sample fields as rendered); a repeat with the same
//! content is a duplicate, one with a different content is a correction (it passes, marked).
//! Entries older than the window, or beyond `max_keys` (oldest first), are forgotten. Times
//! are wall-clock ns, so a window restored after a restart (`window.rs`) ages correctly.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Keys are SipHash outputs already: a map over them needs no second hash.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// What a sample is, against the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen: forward it.
    New,
    /// Seen with the same content: drop it.
    Duplicate,
    /// Seen with another content for the same (tag, time): forward it, marked.
    Correction,
}

/// One remembered sample: its (tag, time) key and content hash, and when it was remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: u64,
    pub content: u64,
    pub at_ns: u64,
}

pub struct Dedup {
    window_ns: u64,
    max_keys: usize,
    /// The first content hash per key …
    seen: KeyMap<u64>,
    /// … and, for the few keys with corrections, the others.
    more: KeyMap<Vec<u64>>,
    order: VecDeque<Entry>,
}

fn siphash() -> impl Hasher {
    #[allow(deprecated)]
    std::hash::SipHasher::new()
}

/// The key of a sample: a hash of its path and source timestamp (a fixed SipHash; two
/// different samples colliding within the window is a ~n²/2⁶⁴ event).
pub fn key(path: &str, ts_ns: u64) -> u64 {
    let mut h = siphash();
    path.hash(&mut h);
    ts_ns.hash(&mut h);
    h.finish()
}

/// The content hash of a sample: of its sample fields as rendered (`"value":…,"quality":…,
/// "status":…,"ts_ns":…`), so the live path and a record read back from Kafka agree exactly.
pub fn content(sample_fields: &[u8]) -> u64 {
    let mut h = siphash();
    h.write(sample_fields);
    h.finish()
}

/// The sample fields and source timestamp of a single-sample `ferrule.sample.v1` payload as
/// the Kafka sink renders it (`{"value":…,…,"ts_ns":<n>,<tag fields>}`).
pub fn sample_fields(payload: &[u8]) -> Option<(&[u8], u64)> {
    const TS: &[u8] = b",\"ts_ns\":";
    let body = payload.strip_prefix(b"{")?;
    let at = body.windows(TS.len()).position(|w| w == TS)?;
    let digits = &body[at + TS.len()..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    let ts = std::str::from_utf8(&digits[..n]).ok()?.parse().ok()?;
    Some((&body[..at + TS.len() + n], ts))
}

impl Dedup {
    pub fn new(window_ns: u64, max_keys: usize) -> Self {
        Dedup {
            window_ns,
            max_keys,
            seen: KeyMap::default(),
            more: KeyMap::default(),
            order: VecDeque::new(),
        }
    }

    /// Forgets entries older than the window.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(e) = self.order.front() {
            if now_ns.saturating_sub(e.at_ns) < self.window_ns {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        let Some(e) = self.order.pop_front() else {
            return;
        };
        if self.seen.get(&e.key) == Some(&e.content) {
            // The first content goes; a correction (if any) takes its place.
            match self.more.get_mut(&e.key).and_then(|v| v.pop()) {
                Some(c) => {
                    self.seen.insert(e.key, c);
                }
                None => {
                    self.seen.remove(&e.key);
                }
            }
        } else if let Some(v) = self.more.get_mut(&e.key) {
            if let Some(i) = v.iter().position(|c| *c == e.content) {
                v.swap_remove(i);
            }
        }
        if self.more.get(&e.key).is_some_and(|v| v.is_empty()) {
            self.more.remove(&e.key);
        }
    }

    /// Judges a sample and remembers it (unless a duplicate).
    pub fn check(&mut self, key: u64, content: u64, now_ns: u64) -> Verdict {
        let verdict = match self.seen.get(&key) {
            None => {
                self.seen.insert(key, content);
                Verdict::New
            }
            Some(&c) if c == content => return Verdict::Duplicate,
            Some(_) => {
                let others = self.more.entry(key).or_default();
                if others.contains(&content) {
                    return Verdict::Duplicate;
                }
                others.push(content);
                Verdict::Correction
            }
        };
        self.order.push_back(Entry {
            key,
            content,
            at_ns: now_ns,
        });
        while self.order.len() > self.max_keys {
            self.forget_oldest();
        }
        verdict
    }

    /// Takes back the latest `check` of (`key`, `content`): the sample was not sent after all,
    /// so when its batch is written again it must not count as a duplicate.
    pub fn forget_last(&mut self, key: u64, content: u64) {
        if !self
            .order
            .back()
            .is_some_and(|e| e.key == key && e.content == content)
        {
            return;
        }
        self.order.pop_back();
        if let Some(v) = self.more.get_mut(&key) {
            if let Some(i) = v.iter().position(|c| *c == content) {
                v.swap_remove(i);
                if v.is_empty() {
                    self.more.remove(&key);
                }
                return;
            }
        }
        if self.seen.get(&key) == Some(&content) {
            self.seen.remove(&key);
        }
    }

    /// Makes room for `n` more entries (before a restore).
    pub fn reserve(&mut self, n: usize) {
        let n = n.min(self.max_keys);
        self.seen.reserve(n);
        self.order.reserve(n);
    }

    /// Remembers an entry restored from the durable window or read back from Kafka.
    pub fn restore(&mut self, e: Entry) {
        self.check(e.key, e.content, e.at_ns);
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_sample_taken_back_is_new_again_when_its_batch_is_retried() {
        let mut d = Dedup::new(10 * S, 100);
        let t0 = 100 * S;
        assert_eq!(d.check(key("a", 1), 7, t0), Verdict::New);
        d.forget_last(key("a", 1), 7);
        assert_eq!(d.check(key("a", 1), 7, t0), Verdict::New);
        assert_eq!(d.check(key("a", 1), 8, t0), Verdict::Correction);
        d.forget_last(key("a", 1), 8);
        assert_eq!(d.check(key("a", 1), 8, t0), Verdict::Correction);
        assert_eq!(d.check(key("a", 1), 7, t0), Verdict::Duplicate);
        assert_eq!(d.len(), 2);
        // Only the latest check is taken back.
        d.forget_last(key("a", 1), 7);
        assert_eq!(d.check(key("a", 1), 7, t0), Verdict::Duplicate);
    }

    #[test]
    fn drops_repeats_passes_corrections_and_stays_bounded() {
        let mut d = Dedup::new(10 * S, 3);
        let t0 = 100 * S;
        assert_eq!(d.check(key("a", 1), 7, t0), Verdict::New);
        assert_eq!(d.check(key("a", 1), 7, t0), Verdict::Duplicate);
        assert_eq!(d.check(key("a", 1), 8, t0), Verdict::Correction);
        assert_eq!(d.check(key("a", 1), 8, t0), Verdict::Duplicate);
        assert_eq!(d.check(key("a", 1), 7, t0), Verdict::Duplicate);
        assert_eq!(d.check(key("b", 1), 7, t0), Verdict::New);
        // Bounded: the oldest entry (a@1 = 7) was forgotten, a@1 = 8 is kept.
        assert_eq!(d.check(key("c", 1), 7, t0), Verdict::New);
        assert_eq!(d.len(), 3);
        assert_eq!(d.check(key("a", 1), 8, t0), Verdict::Duplicate);
        // Past the window everything is forgotten.
        d.expire(t0 + 11 * S);
        assert!(d.is_empty());
        assert_eq!(d.check(key("c", 1), 7, t0 + 11 * S), Verdict::New);
    }

    #[test]
    fn sample_fields_are_found_in_a_rendered_payload() {
        let fields = r#""unit":"bar","path":"plant/a/b/c/d/e""#;
        let w = crate::payload::WireSample {
            value: 1.5,
            extra: None,
            status: 0,
            ts_ns: 1234,
        };
        let body = crate::payload::render(fields, std::slice::from_ref(&w));
        let (f, ts) = sample_fields(&body).unwrap();
        assert_eq!(ts, 1234);
        assert_eq!(
            f,
            br#""value":1.5,"quality":"good","status":0,"ts_ns":1234"#
        );
        let corrected =
            crate::payload::render(fields, &[crate::payload::WireSample { value: 1.6, ..w }]);
        assert_ne!(content(f), content(sample_fields(&corrected).unwrap().0));
        assert_eq!(sample_fields(b"{\"value\":1}"), None);
    }
}
