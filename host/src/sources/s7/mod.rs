//! The Siemens S7 source (S7comm over ISO-on-TCP): registers every configured item as a tag,
//! plans each poll group's reads as byte ranges packed into multi-item requests within the
//! PDU size the CPU grants, and polls on one connection with reconnect and backoff. Every
//! poll gives every tag a fresh value or a bad status naming why (never the last good value).
//! The protocol framing is in `proto` (unit-tested from captured frames), addresses and
//! decoding in `address`.

pub mod address;
mod client;
mod config;
pub mod plan;
pub mod proto;
mod status;

pub use address::{Address, Area, S7Type};
pub use config::{ConnectionType, ItemConfig, S7Config};
pub use status::{codes, Failure};

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::{SourceContext, SourceError};
use crate::model::{now_ns, Extra, Quality, SampleBatch, TagDescriptor, TagId};
use crate::retry::Backoff;
use client::{Connection, Target};
use plan::{Chunk, Range, Wanted};

/// A configured item, resolved.
#[derive(Clone, Debug)]
struct Tag {
    id: TagId,
    name: String,
    address: Address,
    ty: S7Type,
}

impl Tag {
    fn bit(&self) -> u8 {
        match self.address.width {
            address::Width::Bit(b) => b,
            _ => 0,
        }
    }
}

/// Ranges read together every `interval`, and their requests for the granted PDU size.
struct Group {
    name: String,
    interval: Duration,
    ranges: Vec<Range>,
    requests: Vec<Vec<Chunk>>,
}

/// The groups of `c` as ranges (before packing), by group name: for planning and benches.
pub fn plan_groups(c: &S7Config) -> Vec<(String, Duration, Vec<Range>)> {
    let mut by_group: BTreeMap<Option<&String>, Vec<Wanted>> = BTreeMap::new();
    for (i, item) in c.items.iter().enumerate() {
        let (a, t) = item.resolve().expect("validated");
        by_group
            .entry(item.group.as_ref())
            .or_default()
            .push(Wanted {
                tag: i,
                area: a.area,
                start: a.byte,
                size: t.size(),
            });
    }
    by_group
        .into_iter()
        .map(|(g, wanted)| {
            (
                g.cloned().unwrap_or_else(|| "default".into()),
                Duration::from_millis(match g {
                    Some(g) => c.poll_groups[g],
                    None => c.interval_ms,
                }),
                plan::ranges(wanted, c.max_gap),
            )
        })
        .collect()
}

/// Requests per poll of each group for a granted PDU size (what the source logs at connect).
pub fn requests_per_poll(c: &S7Config, pdu: u16) -> Vec<(String, usize)> {
    plan_groups(c)
        .into_iter()
        .map(|(g, _, r)| (g, plan::pack(&r, pdu, c.max_items_per_request).len()))
        .collect()
}

struct Poller {
    label: String,
    config: S7Config,
    target: Target,
    tags: Vec<Tag>,
    groups: Vec<Group>,
    conn: Option<Connection>,
    /// The PDU size the requests are packed for.
    planned_pdu: u16,
    last_failure: Failure,
    next_attempt: Instant,
    backoff: Backoff,
    connected_logged: Option<bool>,
    /// Logged state per range (None: good), so each change is logged once.
    range_state: HashMap<(Area, u32, u32), Option<u32>>,
}

pub async fn run(c: S7Config, ctx: SourceContext) -> Result<(), SourceError> {
    let source = ctx.name.clone();
    let mut tags = Vec::with_capacity(c.items.len());
    for item in &c.items {
        let (address, ty) = item.resolve().map_err(|e| SourceError::Failed {
            name: source.clone(),
            message: e,
        })?;
        let mut metadata: Vec<(String, String)> = item
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        metadata.push(("s7.host".into(), c.host.clone()));
        metadata.push(("s7.address".into(), address.to_string()));
        metadata.push(("s7.type".into(), ty.to_string()));
        let id = ctx.registry.intern(TagDescriptor {
            source: source.clone(),
            vendor_path: item.tag.clone(),
            unit: item.unit.clone(),
            data_type: ty.data_type(),
            metadata,
        });
        tags.push(Tag {
            id,
            name: item.tag.clone(),
            address,
            ty,
        });
    }
    let groups = plan_groups(&c)
        .into_iter()
        .map(|(name, interval, ranges)| Group {
            name,
            interval,
            ranges,
            requests: Vec::new(),
        })
        .collect();
    let (local_tsap, remote_tsap) = c.tsaps();
    let target = Target {
        host: c.host.clone(),
        port: c.port,
        local_tsap,
        remote_tsap,
        pdu_size: c.pdu_size,
        timeout: Duration::from_millis(c.timeout_ms),
    };
    let label = format!(
        "s7 source `{source}` ({}:{} TSAP {local_tsap:04X}/{remote_tsap:04X})",
        c.host, c.port
    );
    let backoff = Backoff::new(
        Duration::from_millis(c.reconnect_min_ms),
        Duration::from_millis(c.reconnect_max_ms),
    );
    let mut p = Poller {
        label,
        config: c,
        target,
        tags,
        groups,
        conn: None,
        planned_pdu: 0,
        last_failure: status::connection("not connected yet"),
        next_attempt: Instant::now(),
        backoff,
        connected_logged: None,
        range_state: HashMap::new(),
    };
    super::poll::run(&mut p, ctx).await;
    Ok(())
}

/// What a range read gave: its bytes, or why not.
type RangeResult = Result<Vec<u8>, Failure>;

impl super::poll::PollGroups for Poller {
    fn group_count(&self) -> usize {
        self.groups.len()
    }

    fn interval(&self, g: usize) -> Duration {
        self.groups[g].interval
    }

    async fn poll(&mut self, g: usize) -> SampleBatch {
        Poller::poll(self, g).await
    }
}

impl Poller {
    fn drop_connection(&mut self, f: Failure) {
        if self.connected_logged != Some(false) {
            tracing::warn!("{}: {f}; reconnecting with backoff", self.label);
            self.connected_logged = Some(false);
        }
        self.conn = None;
        self.next_attempt = Instant::now() + self.backoff.next_delay();
        self.last_failure = f;
    }

    async fn ensure_connected(&mut self) {
        if self.conn.is_some() || Instant::now() < self.next_attempt {
            return;
        }
        match Connection::open(&self.target).await {
            Ok(c) => {
                self.backoff.reset();
                if c.pdu != self.planned_pdu {
                    self.planned_pdu = c.pdu;
                    for g in &mut self.groups {
                        g.requests =
                            plan::pack(&g.ranges, c.pdu, self.config.max_items_per_request);
                    }
                }
                if self.connected_logged != Some(true) {
                    let plan: Vec<String> = self
                        .groups
                        .iter()
                        .map(|g| {
                            format!(
                                "group `{}` every {:?}: {} ranges in {} requests",
                                g.name,
                                g.interval,
                                g.ranges.len(),
                                g.requests.len()
                            )
                        })
                        .collect();
                    tracing::info!(
                        "{}: connected, PDU {} bytes; {}",
                        self.label,
                        c.pdu,
                        plan.join("; ")
                    );
                    self.connected_logged = Some(true);
                }
                self.conn = Some(c);
            }
            Err(f) => self.drop_connection(f),
        }
    }

    /// Reads `ranges` with `requests`: each range's bytes, or its failure.
    async fn read_ranges(&mut self, ranges: &[Range], requests: &[Vec<Chunk>]) -> Vec<RangeResult> {
        let mut bufs: Vec<RangeResult> = ranges
            .iter()
            .map(|r| Ok(vec![0u8; r.len as usize]))
            .collect();
        // Bytes of each range actually read: a range not read in full is never reported good.
        let mut covered = vec![0u32; ranges.len()];
        for chunks in requests {
            let Some(conn) = self.conn.as_mut() else {
                let f = status::not_connected(&self.last_failure);
                for c in chunks {
                    bufs[c.range] = Err(f.clone());
                }
                continue;
            };
            let items = plan::items(ranges, chunks);
            let fail = |bufs: &mut Vec<RangeResult>, c: &Chunk, f: Failure| {
                if bufs[c.range].is_ok() {
                    bufs[c.range] = Err(f);
                }
            };
            match conn.read(&items).await {
                Err(f) => {
                    for c in chunks {
                        fail(&mut bufs, c, f.clone());
                    }
                    self.drop_connection(f);
                }
                Ok(Err(f)) => {
                    for c in chunks {
                        fail(&mut bufs, c, f.clone());
                    }
                }
                Ok(Ok(results)) => {
                    for (c, r) in chunks.iter().zip(results) {
                        match r {
                            Ok(bytes) => {
                                if let Ok(buf) = &mut bufs[c.range] {
                                    let at = c.offset as usize;
                                    buf[at..at + bytes.len()].copy_from_slice(&bytes);
                                    covered[c.range] += bytes.len() as u32;
                                }
                            }
                            Err(e) => fail(&mut bufs, c, status::item(e)),
                        }
                    }
                }
            }
        }
        for (i, r) in ranges.iter().enumerate() {
            if bufs[i].is_ok() && covered[i] != r.len {
                bufs[i] = Err(status::not_connected(&self.last_failure));
            }
        }
        bufs
    }

    /// One range per distinct tag extent of `r`.
    fn split(&self, r: &Range) -> Vec<Range> {
        let mut parts: Vec<Range> = Vec::new();
        for &(t, offset) in &r.tags {
            let start = r.start + offset;
            let len = self.tags[t].ty.size();
            match parts.iter_mut().find(|p| p.start == start && p.len == len) {
                Some(p) => p.tags.push((t, 0)),
                None => parts.push(Range {
                    area: r.area,
                    start,
                    len,
                    tags: vec![(t, 0)],
                }),
            }
        }
        parts
    }

    async fn poll(&mut self, g: usize) -> SampleBatch {
        self.ensure_connected().await;
        let ranges = std::mem::take(&mut self.groups[g].ranges);
        let requests = std::mem::take(&mut self.groups[g].requests);
        let mut results = self.read_ranges(&ranges, &requests).await;
        // A range the CPU refuses as out of range may hold tags that are in range (the DB
        // ends inside it): read its tags one by one from now on, so only those outside go bad.
        let mut kept_ranges = Vec::with_capacity(ranges.len());
        let mut kept_results = Vec::with_capacity(ranges.len());
        let mut split_ranges = Vec::new();
        for (r, res) in ranges.into_iter().zip(results.drain(..)) {
            let refused = matches!(&res, Err(f) if f.code == codes::BAD_OUT_OF_RANGE);
            let parts = if refused { self.split(&r) } else { Vec::new() };
            if parts.len() > 1 {
                tracing::warn!(
                    "{}: read of {} refused as out of range; reading its {} tags one by one",
                    self.label,
                    r.describe(),
                    parts.len()
                );
                split_ranges.extend(parts);
            } else {
                kept_ranges.push(r);
                kept_results.push(res);
            }
        }
        let mut replan = false;
        if !split_ranges.is_empty() {
            let pdu = self.planned_pdu.max(240);
            let reqs = plan::pack(&split_ranges, pdu, self.config.max_items_per_request);
            let res = self.read_ranges(&split_ranges, &reqs).await;
            kept_ranges.extend(split_ranges);
            kept_results.extend(res);
            replan = true;
        }
        let ts = now_ns();
        let count: usize = kept_ranges.iter().map(|r| r.tags.len()).sum();
        let mut batch = SampleBatch::with_capacity(count);
        for (r, res) in kept_ranges.iter().zip(&kept_results) {
            self.log_change(r, res);
            for &(t, offset) in &r.tags {
                let tag = &self.tags[t];
                let decoded = match res {
                    Ok(buf) => {
                        let at = offset as usize;
                        address::decode(tag.ty, tag.bit(), &buf[at..at + tag.ty.size() as usize])
                            .map_err(status::undecodable)
                    }
                    Err(f) => Err(f.clone()),
                };
                match decoded {
                    Ok(d) => {
                        if let Some(value) = d.extra {
                            batch.extras.push(Extra {
                                index: batch.len() as u32,
                                value,
                            });
                        }
                        batch.push(tag.id, d.value, Quality::GOOD, ts);
                    }
                    Err(f) => batch.push(tag.id, f64::NAN, Quality(f.code), ts),
                }
            }
        }
        let group = &mut self.groups[g];
        if replan {
            kept_ranges.sort_by_key(|r| (r.area, r.start));
            group.requests = plan::pack(
                &kept_ranges,
                self.planned_pdu.max(240),
                self.config.max_items_per_request,
            );
        } else {
            group.requests = requests;
        }
        group.ranges = kept_ranges;
        batch
    }

    /// Logs a range going bad (with the reason and its tags) or recovering, once per change.
    fn log_change(&mut self, r: &Range, res: &RangeResult) {
        let state = res.as_ref().err().map(|f| f.code);
        let key = (r.area, r.start, r.len);
        let before = self.range_state.get(&key).copied();
        if before == Some(state) || (before.is_none() && state.is_none()) {
            return;
        }
        match res {
            Err(f) => {
                let tags: Vec<&str> = r
                    .tags
                    .iter()
                    .map(|(t, _)| self.tags[*t].name.as_str())
                    .collect();
                tracing::warn!(
                    "{}: read of {} failed: {f}; tags {} have bad quality",
                    self.label,
                    r.describe(),
                    tags.join(", ")
                );
            }
            Ok(_) => tracing::info!("{}: read of {} recovered", self.label, r.describe()),
        }
        self.range_state.insert(key, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_groups_are_planned_apart_and_packed_per_pdu() {
        let mut text = String::from(
            "host = \"plc\"\ninterval_ms = 1000\npoll_groups = { fast = 100 }\nmax_gap = 0\n",
        );
        // 30 scattered INTs in the default group (30 ranges), 2 adjacent REALs in `fast`.
        for i in 0..30 {
            text += &format!(
                "[[items]]\ntag = \"d{i}\"\naddress = \"DB{}.DBW0\"\ntype = \"int\"\n",
                i + 1
            );
        }
        for i in 0..2 {
            text += &format!(
                "[[items]]\ntag = \"f{i}\"\naddress = \"MD{}\"\ntype = \"real\"\ngroup = \"fast\"\n",
                4 * i
            );
        }
        let c: S7Config = toml::from_str(&text).unwrap();
        c.validate().unwrap();
        let groups = plan_groups(&c);
        assert_eq!(groups.len(), 2);
        assert_eq!(
            (groups[0].0.as_str(), groups[0].1, groups[0].2.len()),
            ("default", Duration::from_secs(1), 30)
        );
        assert_eq!(
            (groups[1].0.as_str(), groups[1].1, groups[1].2.len()),
            ("fast", Duration::from_millis(100), 1)
        );
        // 20 items per request by default: 30 ranges take 2 requests; 240 bytes hold 19.
        assert_eq!(
            requests_per_poll(&c, 480),
            vec![("default".to_string(), 2), ("fast".to_string(), 1)]
        );
        assert_eq!(requests_per_poll(&c, 240)[0].1, 2);
    }
}
