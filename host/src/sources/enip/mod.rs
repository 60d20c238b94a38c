//! The EtherNet/IP source for Logix controllers: registers every configured tag, packs each
//! poll group's Read Tag requests into Multiple Service Packets that fit the connection size,
//! and polls over one session (connected messaging where the controller grants a Forward
//! Open, unconnected otherwise) with reconnect and backoff. Every poll gives every tag a fresh
//! value or a bad status naming why (never the last good value). The CIP framing is in `cip`.

pub mod cip;
mod client;
mod config;
mod status;

pub use config::{EnipConfig, TagConfig};
pub use status::codes;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::{SourceContext, SourceError};
use crate::model::{now_ns, Extra, Quality, SampleBatch, TagDescriptor, TagId};
use crate::retry::Backoff;
use cip::CipType;
use client::{Session, Target};
use status::Failure;

struct Tag {
    id: TagId,
    name: String,
    path: String,
    expect: Option<CipType>,
    /// The Read Tag request.
    request: Vec<u8>,
}

impl Tag {
    /// Bytes its reply may take (a Logix STRING when the type is not configured).
    fn reply_size(&self) -> usize {
        self.expect.unwrap_or(CipType::String).reply_size()
    }
}

struct Group {
    name: String,
    interval: Duration,
    /// Tag indices per request.
    requests: Vec<Vec<usize>>,
}

/// Packs `tags` (indices into `all`) into requests whose message and reply fit `budget`.
fn pack(all: &[Tag], tags: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for &t in tags {
        let fits = out.last().is_some_and(|r| {
            let req = cip::multiple_size(r.iter().chain([&t]).map(|i| all[*i].request.len()));
            let rep = cip::multiple_reply_size(r.iter().chain([&t]).map(|i| all[*i].reply_size()));
            req <= budget && rep <= budget
        });
        if fits {
            out.last_mut().expect("checked").push(t);
        } else {
            out.push(vec![t]);
        }
    }
    out
}

/// Requests per poll of each group (what the source logs at start).
pub fn requests_per_poll(c: &EnipConfig) -> Vec<(String, usize)> {
    let tags: Vec<Tag> = c.tags.iter().map(|t| resolve(t, 0)).collect();
    groups(c, &tags)
        .into_iter()
        .map(|g| (g.name, g.requests.len()))
        .collect()
}

fn resolve(t: &TagConfig, id: TagId) -> Tag {
    Tag {
        id,
        name: t.tag.clone(),
        path: t.path.clone(),
        expect: t
            .value_type
            .as_deref()
            .map(|ty| CipType::parse(ty).expect("validated")),
        request: cip::read_tag(&cip::tag_path(&t.path).expect("validated")),
    }
}

fn groups(c: &EnipConfig, tags: &[Tag]) -> Vec<Group> {
    let mut by_group: BTreeMap<Option<&String>, Vec<usize>> = BTreeMap::new();
    for (i, t) in c.tags.iter().enumerate() {
        by_group.entry(t.group.as_ref()).or_default().push(i);
    }
    let budget = c.max_packet_bytes as usize - 16;
    by_group
        .into_iter()
        .map(|(g, idx)| Group {
            name: g.cloned().unwrap_or_else(|| "default".into()),
            interval: Duration::from_millis(match g {
                Some(g) => c.poll_groups[g],
                None => c.interval_ms,
            }),
            requests: pack(tags, &idx, budget),
        })
        .collect()
}

struct Poller {
    label: String,
    target: Target,
    tags: Vec<Tag>,
    groups: Vec<Group>,
    session: Option<Session>,
    last_failure: Failure,
    next_attempt: Instant,
    backoff: Backoff,
    connected_logged: Option<bool>,
    /// Logged problem per tag (None: good), so each change is logged once.
    tag_state: HashMap<usize, Option<u32>>,
}

pub async fn run(c: EnipConfig, ctx: SourceContext) -> Result<(), SourceError> {
    let source = ctx.name.clone();
    let tags: Vec<Tag> = c
        .tags
        .iter()
        .map(|t| {
            let mut metadata: Vec<(String, String)> = t
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            metadata.push(("enip.host".into(), c.host.clone()));
            metadata.push(("enip.path".into(), t.path.clone()));
            let expect = t
                .value_type
                .as_deref()
                .and_then(|ty| CipType::parse(ty).ok());
            let id = ctx.registry.intern(TagDescriptor {
                source: source.clone(),
                vendor_path: t.tag.clone(),
                unit: t.unit.clone(),
                data_type: expect.map_or(crate::model::DataType::Float64, |e| e.data_type()),
                metadata,
            });
            resolve(t, id)
        })
        .collect();
    let groups = groups(&c, &tags);
    let route = if c.direct {
        Vec::new()
    } else {
        vec![0x01, c.slot]
    };
    let label = format!(
        "enip source `{source}` ({}:{} slot {})",
        c.host, c.port, c.slot
    );
    for g in &groups {
        tracing::info!(
            "{label}: group `{}` every {:?}: {} tags in {} requests",
            g.name,
            g.interval,
            g.requests.iter().map(|r| r.len()).sum::<usize>(),
            g.requests.len()
        );
    }
    let mut p = Poller {
        label,
        target: Target {
            host: c.host.clone(),
            port: c.port,
            route,
            connected: c.connected,
            packet: c.max_packet_bytes,
            timeout: Duration::from_millis(c.timeout_ms),
        },
        tags,
        groups,
        session: None,
        last_failure: status::connection("not connected yet"),
        next_attempt: Instant::now(),
        backoff: Backoff::new(
            Duration::from_millis(c.reconnect_min_ms),
            Duration::from_millis(c.reconnect_max_ms),
        ),
        connected_logged: None,
        tag_state: HashMap::new(),
    };
    super::poll::run(&mut p, ctx).await;
    Ok(())
}

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
    fn drop_session(&mut self, f: Failure) {
        if self.connected_logged != Some(false) {
            tracing::warn!("{}: {f}; reconnecting with backoff", self.label);
            self.connected_logged = Some(false);
        }
        self.session = None;
        self.next_attempt = Instant::now() + self.backoff.next_delay();
        self.last_failure = f;
    }

    async fn ensure_session(&mut self) {
        if self.session.is_some() || Instant::now() < self.next_attempt {
            return;
        }
        match Session::open(&self.target).await {
            Ok(s) => {
                self.backoff.reset();
                if self.connected_logged != Some(true) {
                    match &s.refused_connection {
                        Some(why) => tracing::warn!(
                            "{}: session up; {why}: reading with unconnected messages",
                            self.label
                        ),
                        None => tracing::info!(
                            "{}: session up, {} messaging",
                            self.label,
                            if s.is_connected() {
                                "connected"
                            } else {
                                "unconnected"
                            }
                        ),
                    }
                    self.connected_logged = Some(true);
                }
                self.session = Some(s);
            }
            Err(f) => self.drop_session(f),
        }
    }

    /// Reads the tags of one request: each tag's value or failure.
    async fn read(&mut self, idx: &[usize]) -> Vec<Result<cip::Value, Failure>> {
        let Some(session) = self.session.as_mut() else {
            let f = status::not_connected(&self.last_failure);
            return idx.iter().map(|_| Err(f.clone())).collect();
        };
        let single = idx.len() == 1;
        let message = if single {
            self.tags[idx[0]].request.clone()
        } else {
            let reqs: Vec<Vec<u8>> = idx.iter().map(|i| self.tags[*i].request.clone()).collect();
            cip::multiple(&reqs)
        };
        let reply = match session.request(&message).await {
            Ok(r) => r,
            Err(f) => {
                self.drop_session(f.clone());
                return idx.iter().map(|_| Err(f.clone())).collect();
            }
        };
        let all = |f: Failure| idx.iter().map(|_| Err(f.clone())).collect::<Vec<_>>();
        let r = match cip::parse_reply(&reply) {
            Ok(r) => r,
            Err(e) => return all(status::malformed(&e)),
        };
        let one = |r: &cip::Reply<'_>, t: &Tag| -> Result<cip::Value, Failure> {
            if r.status != 0 {
                return Err(status::cip_status(r.status, &r.extended));
            }
            let v = cip::decode(r.data).map_err(status::undecodable)?;
            match t.expect {
                Some(want) if want != v.ty => Err(status::type_mismatch(want, v.ty)),
                _ => Ok(v),
            }
        };
        if single {
            return vec![one(&r, &self.tags[idx[0]])];
        }
        if r.status != 0 && r.status != 0x1E {
            return all(status::cip_status(r.status, &r.extended));
        }
        match cip::parse_multiple(r.data, idx.len()) {
            Ok(replies) => replies
                .iter()
                .zip(idx)
                .map(|(r, i)| one(r, &self.tags[*i]))
                .collect(),
            Err(e) => all(status::malformed(&e)),
        }
    }

    async fn poll(&mut self, g: usize) -> SampleBatch {
        self.ensure_session().await;
        let requests = std::mem::take(&mut self.groups[g].requests);
        let mut results = Vec::with_capacity(requests.len());
        for idx in &requests {
            results.push(self.read(idx).await);
        }
        self.groups[g].requests = requests;
        let ts = now_ns();
        let mut batch = SampleBatch::with_capacity(self.tags.len());
        for (idx, res) in self.groups[g].requests.iter().zip(results) {
            for (&t, r) in idx.iter().zip(res) {
                let state = r.as_ref().err().map(|f| f.code);
                let before = self.tag_state.get(&t).copied();
                let changed = match before {
                    None => state.is_some(),
                    Some(b) => b != state,
                };
                if changed {
                    let tag = &self.tags[t];
                    match &r {
                        Err(f) => tracing::warn!(
                            "{}: tag `{}` ({}): {f}; the tag has bad quality, the others keep running",
                            self.label,
                            tag.name,
                            tag.path
                        ),
                        Ok(_) => tracing::info!("{}: tag `{}` recovered", self.label, tag.name),
                    }
                    self.tag_state.insert(t, state);
                }
                let id = self.tags[t].id;
                match r {
                    Ok(v) => {
                        if let Some(value) = v.extra {
                            batch.extras.push(Extra {
                                index: batch.len() as u32,
                                value,
                            });
                        }
                        batch.push(id, v.value, Quality::GOOD, ts);
                    }
                    Err(f) => batch.push(id, f64::NAN, Quality(f.code), ts),
                }
            }
        }
        batch
    }
}
