//! The OPC UA source (async-opcua client): one session per source, monitored items in
//! subscriptions (polled reads for nodes configured so; a source whose nodes are all polled
//! has no subscription at all), node ids resolved against the server's namespace array on
//! every (re)connect. A lost connection makes every tag bad (BadNoCommunication) at the
//! publishing interval until a new session is up and subscribed again, so the gap is visible;
//! one bad node gives only its tag bad quality, logged once.

pub mod browse;
mod config;
mod discover;
mod node_ref;
#[cfg(feature = "opcua-simulator")]
mod server;
mod values;
mod write;

pub use config::{
    NodeConfig, OpcUaConfig, OpcUaSimulatorConfig, SecurityMode, SecurityPolicy, TimestampChoice,
};
pub use discover::{discover, DiscoverOptions};
pub use node_ref::NodeRef;
#[cfg(feature = "opcua-simulator")]
pub use server::{serve_plant, PLANT_NAMESPACE};
pub use write::{to_variant, OpcUaWritePort};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opcua::client::{Client, ClientBuilder, DataChangeCallback, IdentityToken, Session};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, ExtensionObject,
    MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId,
    ReadValueId, StatusCode, TimestampsToReturn, UserTokenPolicy, VariableId, Variant,
};
use tokio::sync::{mpsc, watch};

use super::{SourceContext, SourceError};
use crate::model::now_ns;
use crate::model::{DataType, Extra, Quality, SampleBatch, TagDescriptor, TagId};

const BAD_NO_COMMUNICATION: u32 = 0x8031_0000;
/// Monitored items per subscription.
const ITEMS_PER_SUBSCRIPTION: usize = 1000;
/// Most notifications per publish response: a whole subscription's changes.
const MAX_NOTIFICATIONS: u32 = ITEMS_PER_SUBSCRIPTION as u32;

struct Tag {
    id: TagId,
    node: NodeRef,
    config: NodeConfig,
}

/// Why a session ended.
enum Ended {
    Shutdown,
    PipelineClosed,
    Lost(String),
}

struct Runner {
    config: OpcUaConfig,
    tags: Vec<Tag>,
    ctx: SourceContext,
    /// Last logged problem per tag, so each is logged once.
    logged: HashMap<usize, String>,
    /// The connection is down and that was logged.
    down: bool,
    /// Tells the gap filler whether the connection is down.
    gap: Option<watch::Sender<bool>>,
    /// The tags the gap filler makes bad (grows as `browse` finds variables).
    gap_ids: Arc<std::sync::RwLock<Vec<TagId>>>,
    /// The live session, for the write path.
    write_slot: write::SessionSlot,
}

/// The nodes generated for the in-process simulator: every served plant tag, by namespace URI.
#[cfg(feature = "opcua-simulator")]
pub fn simulator_nodes(c: &OpcUaSimulatorConfig, source: &str) -> Vec<NodeConfig> {
    let plant = server::plant_of(c);
    (c.first_tag..c.first_tag + c.tags)
        .map(|i| {
            let d = crate::sources::simulator::describe_tag(&plant, source, i);
            NodeConfig {
                node_id: format!("nsu={PLANT_NAMESPACE};s={}", d.vendor_path),
                tag: d.vendor_path,
                unit: d.unit,
                sampling_interval_ms: None,
                queue_size: 10,
                deadband: None,
                poll_interval_ms: None,
                metadata: d.metadata.into_iter().collect(),
            }
        })
        .collect()
}

#[cfg(not(feature = "opcua-simulator"))]
pub async fn run(c: OpcUaConfig, ctx: SourceContext) -> Result<(), SourceError> {
    // `simulator` is refused by `validate` in a binary without the OPC UA simulator.
    run_client(c, ctx).await
}

#[cfg(feature = "opcua-simulator")]
pub async fn run(mut c: OpcUaConfig, ctx: SourceContext) -> Result<(), SourceError> {
    let mut server = None;
    // The simulator stops after the client, so the client's session closes cleanly.
    let (stop_server, server_stop) = watch::channel(false);
    if let Some(sim) = c.simulator.clone() {
        let (addr, task) = serve_plant(
            &sim,
            &ctx.name,
            c.pki_dir.join("simulator-server"),
            server_stop,
        )
        .await
        .map_err(|message| SourceError::Failed {
            name: ctx.name.clone(),
            message,
        })?;
        tracing::info!(
            "opcua source `{}`: simulator serving {} plant tags on opc.tcp://{addr}/",
            ctx.name,
            sim.tags
        );
        if c.nodes.is_empty() {
            c.nodes = simulator_nodes(&sim, &ctx.name);
            c.endpoint = format!("opc.tcp://{addr}/");
        }
        server = Some(task);
    }
    let result = run_client(c, ctx).await;
    if let Some(task) = server {
        let _ = stop_server.send(true);
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("OPC UA simulator did not stop within 5 s");
        }
    }
    result
}

async fn run_client(c: OpcUaConfig, ctx: SourceContext) -> Result<(), SourceError> {
    let tags: Vec<Tag> = c
        .nodes
        .iter()
        .map(|n| {
            let mut metadata: Vec<(String, String)> = n
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            metadata.push(("opcua.node_id".into(), n.node_id.clone()));
            Tag {
                id: ctx.registry.intern(TagDescriptor {
                    source: ctx.name.clone(),
                    vendor_path: n.tag.clone(),
                    unit: n.unit.clone(),
                    data_type: DataType::Float64,
                    metadata,
                }),
                node: NodeRef::parse(&n.node_id).expect("validated"),
                config: n.clone(),
            }
        })
        .collect();
    let gap_ids = Arc::new(std::sync::RwLock::new(tags.iter().map(|t| t.id).collect()));
    // The write path shares the read path's session.
    let write_slot = write::SessionSlot::default();
    let port = OpcUaWritePort::new(
        &ctx.name,
        c.nodes.iter().map(|n| (n.tag.clone(), n.node_id.clone())),
        write_slot.clone(),
        Duration::from_millis(c.keep_alive_ms),
    );
    ctx.write_ports.register(&ctx.name, Arc::new(port));
    let mut runner = Runner {
        config: c,
        tags,
        ctx,
        logged: HashMap::new(),
        down: false,
        gap: None,
        gap_ids,
        write_slot,
    };
    runner.run().await
}

impl Runner {
    fn label(&self) -> String {
        format!(
            "opcua source `{}` ({})",
            self.ctx.name, self.config.endpoint
        )
    }

    fn fail(&self, message: String) -> SourceError {
        SourceError::Failed {
            name: self.ctx.name.clone(),
            message,
        }
    }

    fn client(&self) -> Result<Client, SourceError> {
        let c = &self.config;
        if c.trust_server_certs {
            tracing::warn!(
                "{}: trust_server_certs = true: server certificates are accepted without checking the trust store",
                self.label()
            );
        }
        ClientBuilder::new()
            .application_name("Ferrule")
            .application_uri("urn:ferrule:client")
            .product_uri("urn:ferrule")
            .pki_dir(&c.pki_dir)
            .create_sample_keypair(true)
            .trust_server_certs(c.trust_server_certs)
            // Ferrule re-creates sessions itself, resolving node ids again each time.
            .session_retry_limit(0)
            .recreate_subscriptions(false)
            // Publish responses may carry many notifications (see MAX_NOTIFICATIONS).
            .max_array_length(65_535)
            .client()
            .map_err(|e| self.fail(format!("client config: {}", e.join("; "))))
    }

    async fn run(&mut self) -> Result<(), SourceError> {
        let mut client = self.client()?;
        let min = Duration::from_millis(self.config.reconnect_min_ms);
        let max = Duration::from_millis(self.config.reconnect_max_ms);
        let mut backoff = min;
        let (gap, gap_rx) = watch::channel(false);
        let filler = tokio::spawn(fill_gap(
            self.gap_ids.clone(),
            Duration::from_millis(self.config.publishing_interval_ms),
            gap_rx,
            self.ctx.out.clone(),
            self.ctx.produced.clone(),
            self.ctx.shutdown.clone(),
        ));
        self.gap = Some(gap);
        let result = loop {
            if *self.ctx.shutdown.borrow() {
                break Ok(());
            }
            match self.session(&mut client).await {
                Ended::Shutdown => break Ok(()),
                Ended::PipelineClosed => break Err(self.fail("pipeline stopped".into())),
                Ended::Lost(reason) => {
                    if self.down {
                        backoff = (backoff * 2).min(max);
                    } else {
                        tracing::warn!(
                            "{}: {reason}; all tags bad (BadNoCommunication) until reconnected",
                            self.label()
                        );
                        self.set_down(true);
                        backoff = min;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.ctx.shutdown.changed() => break Ok(()),
            }
        };
        filler.abort();
        result
    }

    /// Marks the connection down (the gap filler then makes every tag bad at the publishing
    /// interval) or up again.
    fn set_down(&mut self, down: bool) {
        self.down = down;
        if let Some(g) = &self.gap {
            let _ = g.send(down);
        }
    }

    async fn send(&mut self, batch: SampleBatch) -> bool {
        if batch.is_empty() {
            return true;
        }
        let n = batch.len() as u64;
        tokio::select! {
            sent = self.ctx.out.send(batch) => {
                if sent.is_err() { return false; }
            }
            _ = self.ctx.shutdown.changed() => return false,
        }
        self.ctx.produced.fetch_add(n, Ordering::Relaxed);
        true
    }

    fn log_tag_problem(&mut self, tag: usize, problem: String) {
        if self.logged.get(&tag) != Some(&problem) {
            tracing::warn!(
                "{}: tag `{}` ({}): {problem}; the tag has bad quality, the others keep running",
                self.label(),
                self.tags[tag].config.tag,
                self.tags[tag].config.node_id
            );
            self.logged.insert(tag, problem);
        }
    }

    async fn session(&mut self, client: &mut Client) -> Ended {
        let c = &self.config;
        let mode = match c.security_mode {
            SecurityMode::None => MessageSecurityMode::None,
            SecurityMode::Sign => MessageSecurityMode::Sign,
            SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        };
        let (identity, policy) = match (&c.username, &c.password) {
            (Some(u), Some(p)) => (
                IdentityToken::new_user_name(u.clone(), p.clone()),
                UserTokenPolicy::anonymous(),
            ),
            _ => (IdentityToken::Anonymous, UserTokenPolicy::anonymous()),
        };
        let endpoint = (
            c.endpoint.as_str(),
            c.security_policy.as_str(),
            mode,
            policy,
        );
        let connect = client.connect_to_matching_endpoint(endpoint, identity);
        let (session, event_loop) =
            match tokio::time::timeout(Duration::from_secs(10), connect).await {
                Err(_) => return Ended::Lost("connect: no answer within 10 s".into()),
                Ok(Err(e)) => return Ended::Lost(format!("connect: {e}")),
                Ok(Ok(s)) => s,
            };
        let mut event_loop = event_loop.spawn();
        let connected = tokio::select! {
            c = tokio::time::timeout(Duration::from_secs(10), session.wait_for_connection()) => matches!(c, Ok(true)),
            _ = &mut event_loop => false,
        };
        if !connected {
            event_loop.abort();
            return Ended::Lost("session could not be activated".into());
        }
        let ended = self.subscribed(&session, &mut event_loop).await;
        *self.write_slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if matches!(ended, Ended::Shutdown | Ended::PipelineClosed) {
            let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect()).await;
        }
        event_loop.abort();
        ended
    }

    async fn namespaces(session: &Session) -> Result<Vec<String>, String> {
        let read = ReadValueId {
            node_id: NodeId::from(VariableId::Server_NamespaceArray),
            attribute_id: AttributeId::Value as u32,
            ..Default::default()
        };
        let values = session
            .read(&[read], TimestampsToReturn::Neither, 0.0)
            .await
            .map_err(|e| format!("reading the namespace array: {e}"))?;
        match values.first().and_then(|v| v.value.as_ref()) {
            Some(Variant::Array(a)) => Ok(a
                .values
                .iter()
                .map(|v| match v {
                    Variant::String(s) => s.as_ref().to_string(),
                    _ => String::new(),
                })
                .collect()),
            other => Err(format!("unexpected namespace array {other:?}")),
        }
    }

    /// With `browse`: adds a tag for every variable under the node not yet known by name.
    async fn browse(&mut self, session: &Session, namespaces: &[String]) -> Result<(), String> {
        let Some(under) = self.config.browse.clone() else {
            return Ok(());
        };
        let root = NodeRef::parse(&under)?.resolve(namespaces)?;
        let found = browse::variables_under(session, &root)
            .await
            .map_err(|e| format!("browse = \"{under}\": {e}"))?;
        let known: std::collections::HashSet<String> =
            self.tags.iter().map(|t| t.config.tag.clone()).collect();
        let mut added = 0;
        for f in found {
            if known.contains(&f.path) {
                continue;
            }
            let node_id = browse::portable_id(&f.node_id, namespaces);
            let config = NodeConfig {
                tag: f.path.clone(),
                node_id: node_id.clone(),
                unit: String::new(),
                sampling_interval_ms: None,
                queue_size: config::default_queue_size(),
                deadband: None,
                poll_interval_ms: None,
                metadata: BTreeMap::new(),
            };
            let id = self.ctx.registry.intern(TagDescriptor {
                source: self.ctx.name.clone(),
                vendor_path: f.path,
                unit: String::new(),
                data_type: DataType::Float64,
                metadata: vec![
                    ("opcua.node_id".into(), node_id.clone()),
                    ("opcua.browsed_under".into(), under.clone()),
                ],
            });
            self.tags.push(Tag {
                id,
                node: NodeRef::parse(&node_id)?,
                config,
            });
            self.gap_ids
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(id);
            added += 1;
        }
        tracing::info!(
            "{}: browsed {under}: {added} new variables, {} tags in all",
            self.label(),
            self.tags.len()
        );
        Ok(())
    }

    /// Resolves nodes, subscribes and streams until the connection is lost or told to stop.
    async fn subscribed(
        &mut self,
        session: &Arc<Session>,
        event_loop: &mut tokio::task::JoinHandle<StatusCode>,
    ) -> Ended {
        let namespaces = match Self::namespaces(session).await {
            Ok(n) => n,
            Err(e) => return Ended::Lost(e),
        };
        if let Err(e) = self.browse(session, &namespaces).await {
            return Ended::Lost(e);
        }
        *self.write_slot.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((session.clone(), namespaces.clone()));
        // Node ids afresh: a restarted server may number namespaces differently.
        let mut resolved: Vec<Option<NodeId>> = Vec::with_capacity(self.tags.len());
        let mut bad = SampleBatch::default();
        let ts = now_ns();
        for i in 0..self.tags.len() {
            match self.tags[i].node.resolve(&namespaces) {
                Ok(id) => resolved.push(Some(id)),
                Err(m) => {
                    self.log_tag_problem(i, format!("{m} (BadNodeIdUnknown)"));
                    bad.push(
                        self.tags[i].id,
                        f64::NAN,
                        Quality(StatusCode::BadNodeIdUnknown.bits()),
                        ts,
                    );
                    resolved.push(None);
                }
            }
        }
        if !self.send(bad).await {
            return Ended::Shutdown;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, DataValue)>();
        let subscribed: Vec<usize> = (0..self.tags.len())
            .filter(|i| resolved[*i].is_some() && self.tags[*i].config.poll_interval_ms.is_none())
            .collect();
        // At most ITEMS_PER_SUBSCRIPTION items per subscription: a server sends about one
        // publish response per subscription and interval, so large tag lists are spread.
        let publishing = Duration::from_millis(self.config.publishing_interval_ms);
        for chunk in subscribed.chunks(ITEMS_PER_SUBSCRIPTION) {
            let tx = tx.clone();
            let callback = DataChangeCallback::new(move |dv, item| {
                let _ = tx.send((item.client_handle(), dv));
            });
            let sub = match session
                .create_subscription(publishing, 60, 10, MAX_NOTIFICATIONS, 0, true, callback)
                .await
            {
                Ok(id) => id,
                Err(e) => return Ended::Lost(format!("creating a subscription: {e}")),
            };
            if let Err(ended) = self.monitor(session, sub, chunk, &resolved).await {
                return ended;
            }
        }
        // Only the subscriptions' callbacks hold senders now. With none (every node polled, or
        // none resolved) the channel is closed from the start and means nothing: the session
        // is then watched by its polled reads, the keep-alive and the transport alone.
        drop(tx);
        let has_subscriptions = !subscribed.is_empty();
        // Polled nodes, grouped by interval.
        let mut polls: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, t) in self.tags.iter().enumerate() {
            if let (Some(ms), Some(_)) = (t.config.poll_interval_ms, &resolved[i]) {
                polls.entry(ms).or_default().push(i);
            }
        }
        let mut timers: Vec<(tokio::time::Interval, Vec<usize>)> = polls
            .into_iter()
            .map(|(ms, tags)| (tokio::time::interval(Duration::from_millis(ms)), tags))
            .collect();
        // Proof of life: any data notification or answered polled read; only when none came
        // for a keep-alive interval is the server asked (ServerStatus.CurrentTime), and only
        // two unanswered asks in a row end the session. A polled read unanswered within the
        // keep-alive interval counts as an unanswered ask. A busy subscription is never torn
        // down.
        let keep_alive = Duration::from_millis(self.config.keep_alive_ms);
        let mut watchdog =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        let mut last_life = tokio::time::Instant::now();
        let mut unanswered = 0u32;
        self.set_down(false);
        tracing::info!(
            "{}: session up, {} tags subscribed, {} polled",
            self.label(),
            subscribed.len(),
            timers.iter().map(|(_, t)| t.len()).sum::<usize>()
        );
        loop {
            let next_poll = async {
                if timers.is_empty() {
                    std::future::pending::<usize>().await
                } else {
                    let ticks = timers.iter_mut().enumerate().map(|(i, (t, _))| {
                        Box::pin(async move {
                            t.tick().await;
                            i
                        })
                    });
                    futures_select_first(ticks.collect()).await
                }
            };
            tokio::select! {
                first = rx.recv(), if has_subscriptions => {
                    let Some(first) = first else { return Ended::Lost("subscription closed".into()) };
                    let mut items = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        items.push(more);
                        if items.len() >= 4096 { break; }
                    }
                    last_life = tokio::time::Instant::now();
                    unanswered = 0;
                    let batch = self.batch_of(items);
                    if !self.send(batch).await { return Ended::Shutdown; }
                }
                _ = watchdog.tick() => {
                    if last_life.elapsed() < keep_alive {
                        continue;
                    }
                    let ask = ReadValueId {
                        node_id: NodeId::from(VariableId::Server_ServerStatus_CurrentTime),
                        attribute_id: AttributeId::Value as u32,
                        ..Default::default()
                    };
                    let answer = tokio::time::timeout(keep_alive, session.read(&[ask], TimestampsToReturn::Neither, 0.0)).await;
                    if matches!(answer, Ok(Ok(_))) {
                        last_life = tokio::time::Instant::now();
                        unanswered = 0;
                    } else {
                        unanswered += 1;
                        if unanswered >= 2 {
                            return Ended::Lost(format!("no data and no answer to keep-alive reads for {:?}", last_life.elapsed()));
                        }
                    }
                }
                g = next_poll => {
                    let tags = timers[g].1.clone();
                    // A read in flight does not hold up noticing a lost transport or a stop.
                    let read = tokio::select! {
                        r = read_polled(session, &tags, &resolved, keep_alive) => r,
                        status = &mut *event_loop => return connection_lost(status),
                        _ = self.ctx.shutdown.changed() => return Ended::Shutdown,
                    };
                    match read {
                        Ok(values) => {
                            last_life = tokio::time::Instant::now();
                            unanswered = 0;
                            let handles = tags.iter().map(|i| *i as u32 + 1);
                            let batch = self.batch_of(handles.zip(values).collect());
                            if !self.send(batch).await { return Ended::Shutdown; }
                        }
                        Err(status) => {
                            // The read failed as a whole: its tags are bad with the reason.
                            // Unanswered, it counts as an unanswered keep-alive ask; refused,
                            // the watchdog asks the server whether the session is still alive
                            // (a failed read is no proof of life); a lost connection is noticed
                            // by the transport.
                            if status == StatusCode::BadTimeout {
                                unanswered += 1;
                                if unanswered >= 2 {
                                    let silent = last_life.elapsed();
                                    return Ended::Lost(format!("no answer to polled reads for {silent:?}"));
                                }
                            }
                            let ts = now_ns();
                            let mut batch = SampleBatch::with_capacity(tags.len());
                            for i in &tags {
                                self.log_tag_problem(*i, format!("polled read failed: {status}"));
                                batch.push(self.tags[*i].id, f64::NAN, Quality(status.bits()), ts);
                            }
                            if !self.send(batch).await { return Ended::Shutdown; }
                        }
                    }
                }
                status = &mut *event_loop => return connection_lost(status),
                _ = self.ctx.shutdown.changed() => return Ended::Shutdown,
            }
        }
    }

    async fn monitor(
        &mut self,
        session: &Arc<Session>,
        sub: u32,
        subscribed: &[usize],
        resolved: &[Option<NodeId>],
    ) -> Result<(), Ended> {
        let configs: Vec<NodeConfig> = self.tags.iter().map(|t| t.config.clone()).collect();
        let publishing_ms = self.config.publishing_interval_ms as f64;
        let request = |i: usize, with_filter: bool| {
            let n = &configs[i];
            let filter = match (with_filter, n.deadband) {
                (true, Some(d)) => ExtensionObject::from_message(DataChangeFilter {
                    trigger: DataChangeTrigger::StatusValue,
                    deadband_type: 1, // absolute
                    deadband_value: d,
                }),
                _ => ExtensionObject::null(),
            };
            MonitoredItemCreateRequest {
                item_to_monitor: ReadValueId {
                    node_id: resolved[i].clone().expect("resolved"),
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                },
                monitoring_mode: MonitoringMode::Reporting,
                requested_parameters: MonitoringParameters {
                    client_handle: i as u32 + 1,
                    sampling_interval: n.sampling_interval_ms.unwrap_or(publishing_ms),
                    filter,
                    queue_size: n.queue_size,
                    discard_oldest: true,
                },
            }
        };
        let items: Vec<_> = subscribed.iter().map(|i| request(*i, true)).collect();
        let results = create_in_chunks(session, sub, items).await?;
        let mut retry = Vec::new();
        let mut bad = SampleBatch::default();
        let ts = now_ns();
        for (k, status) in results.iter().copied().enumerate() {
            let i = subscribed[k];
            if status.is_bad() {
                let filter_refused = self.tags[i].config.deadband.is_some()
                    && matches!(
                        status,
                        StatusCode::BadMonitoredItemFilterUnsupported
                            | StatusCode::BadFilterNotAllowed
                            | StatusCode::BadMonitoredItemFilterInvalid
                    );
                if filter_refused {
                    self.log_tag_problem(
                        i,
                        format!("deadband refused ({status}); monitoring without it"),
                    );
                    retry.push(i);
                } else {
                    self.log_tag_problem(i, format!("monitored item refused: {status}"));
                    bad.push(self.tags[i].id, f64::NAN, Quality(status.bits()), ts);
                }
            } else {
                self.logged.remove(&i);
            }
        }
        if !retry.is_empty() {
            let items: Vec<_> = retry.iter().map(|i| request(*i, false)).collect();
            let results = create_in_chunks(session, sub, items).await?;
            for (k, status) in results.iter().copied().enumerate() {
                if status.is_bad() {
                    let i = retry[k];
                    self.log_tag_problem(i, format!("monitored item refused: {status}"));
                    bad.push(self.tags[i].id, f64::NAN, Quality(status.bits()), ts);
                }
            }
        }
        if !self.send(bad).await {
            return Err(Ended::PipelineClosed);
        }
        Ok(())
    }

    fn batch_of(&mut self, items: Vec<(u32, DataValue)>) -> SampleBatch {
        let now = now_ns();
        let mut batch = SampleBatch::with_capacity(items.len());
        for (handle, dv) in items {
            let Some(i) = (handle as usize)
                .checked_sub(1)
                .filter(|i| *i < self.tags.len())
            else {
                continue;
            };
            let c = values::convert(&dv, self.config.timestamps, now);
            if c.quality >> 30 >= 2 {
                let status = StatusCode::from(c.quality);
                self.log_tag_problem(i, format!("bad value: {status}"));
            } else if self.logged.remove(&i).is_some() {
                tracing::info!(
                    "{}: tag `{}` good again",
                    self.label(),
                    self.tags[i].config.tag
                );
            }
            if let Some(value) = c.extra {
                batch.extras.push(Extra {
                    index: batch.len() as u32,
                    value,
                });
            }
            batch.push(self.tags[i].id, c.value, Quality(c.quality), c.timestamp_ns);
        }
        batch
    }
}

fn connection_lost(status: Result<StatusCode, tokio::task::JoinError>) -> Ended {
    let status = status
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    Ended::Lost(format!("connection lost: {status}"))
}

/// One polled read of `tags`' values; BadTimeout when the server does not answer within
/// `timeout`.
async fn read_polled(
    session: &Session,
    tags: &[usize],
    resolved: &[Option<NodeId>],
    timeout: Duration,
) -> Result<Vec<DataValue>, StatusCode> {
    let reads: Vec<ReadValueId> = tags
        .iter()
        .map(|i| ReadValueId {
            node_id: resolved[*i].clone().expect("resolved"),
            attribute_id: AttributeId::Value as u32,
            ..Default::default()
        })
        .collect();
    match tokio::time::timeout(timeout, session.read(&reads, TimestampsToReturn::Both, 0.0)).await {
        Err(_) => Err(StatusCode::BadTimeout),
        Ok(read) => read.map_err(|e| e.status()),
    }
}

/// Monitored items per CreateMonitoredItems call: servers limit operations per call (often
/// to 1000), so large tag lists go in chunks.
const MONITORED_ITEMS_PER_CALL: usize = 1000;

async fn create_in_chunks(
    session: &Arc<Session>,
    sub: u32,
    mut items: Vec<MonitoredItemCreateRequest>,
) -> Result<Vec<StatusCode>, Ended> {
    let mut results = Vec::with_capacity(items.len());
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(MONITORED_ITEMS_PER_CALL));
        let chunk = std::mem::replace(&mut items, rest);
        let created = session
            .create_monitored_items(sub, TimestampsToReturn::Both, chunk)
            .await
            .map_err(|e| Ended::Lost(format!("creating monitored items: {e}")))?;
        results.extend(created.iter().map(|c| c.result.status_code));
    }
    Ok(results)
}

/// While `down` is true, sends every tag as bad (BadNoCommunication) each `interval`, so a
/// lost connection shows as a gap of bad samples, also while reconnecting takes long.
async fn fill_gap(
    ids: Arc<std::sync::RwLock<Vec<TagId>>>,
    interval: Duration,
    mut down: watch::Receiver<bool>,
    out: mpsc::Sender<SampleBatch>,
    produced: Arc<std::sync::atomic::AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = down.wait_for(|d| *d) => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        while *down.borrow() {
            let ts = now_ns();
            let ids = ids.read().unwrap_or_else(|e| e.into_inner()).clone();
            let mut batch = SampleBatch::with_capacity(ids.len());
            for id in &ids {
                batch.push(*id, f64::NAN, Quality(BAD_NO_COMMUNICATION), ts);
            }
            tokio::select! {
                sent = out.send(batch) => if sent.is_err() { return },
                _ = shutdown.changed() => return,
            }
            produced.fetch_add(ids.len() as u64, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = down.changed() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The index of the first of `futures` to finish.
async fn futures_select_first<F>(futures: Vec<std::pin::Pin<Box<F>>>) -> usize
where
    F: std::future::Future<Output = usize>,
{
    let mut futures = futures;
    std::future::poll_fn(move |cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(i) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready(i);
            }
        }
        std::task::Poll::Pending
    })
    .await
}
