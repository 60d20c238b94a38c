//! One Modbus TCP device: its connection, poll groups on their own intervals, reads with a
//! timeout, reconnects with backoff and jitter, and samples with honest quality (a failed
//! read gives its tags NaN and a bad status, never the last good value).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::{Request, Response, Slave};

use super::codec::{decode_bit, decode_registers, Decoded, Layout};
use super::config::{DeviceConfig, Table};
use super::plan::ReadBlock;
use super::status::{self, Failure};
use crate::model::now_ns;
use crate::model::{Extra, Quality, SampleBatch, TagId};

/// A mapped tag of the device.
#[derive(Clone, Debug)]
pub struct DeviceTag {
    pub id: TagId,
    pub name: String,
    pub layout: Layout,
    /// Registers the value takes (1 for bits).
    pub span: u16,
}

/// Blocks read together every `interval`.
#[derive(Clone, Debug)]
pub struct PollGroup {
    pub name: String,
    pub interval: Duration,
    pub blocks: Vec<ReadBlock>,
}

/// Everything a device task needs.
pub struct Device {
    pub source: String,
    pub config: DeviceConfig,
    pub tags: Vec<DeviceTag>,
    pub groups: Vec<PollGroup>,
    pub out: mpsc::Sender<SampleBatch>,
    pub shutdown: watch::Receiver<bool>,
    pub produced: Arc<AtomicU64>,
    /// Requests of the write path (`super::write`), run between polls.
    pub requests: Option<mpsc::Receiver<DeviceRequest>>,
}

/// One request of the write path, run on the device's connection between polls, so a write
/// holds up the read path for at most one request.
pub struct DeviceRequest {
    pub request: Request<'static>,
    pub reply: tokio::sync::oneshot::Sender<Result<Response, Failure>>,
}

/// The next request of the write path; never ready without one.
async fn next_request(requests: &mut Option<mpsc::Receiver<DeviceRequest>>) -> DeviceRequest {
    match requests {
        Some(r) => match r.recv().await {
            Some(req) => req,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Outcome of reading one block.
enum BlockResult {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    Failed(Failure),
}

struct Connection {
    context: Option<Context>,
    /// Why the device is unreachable (while `context` is none).
    last_failure: Failure,
    next_attempt: Instant,
    backoff: Duration,
    rng: u64,
    /// Logged state per read (None: good), so each change is logged once.
    block_state: HashMap<(Table, u16, u16), Option<u32>>,
    connected_logged: Option<bool>,
}

impl Device {
    fn label(&self) -> String {
        format!(
            "modbus source `{}` device `{}` ({}:{} unit {})",
            self.source, self.config.name, self.config.host, self.config.port, self.config.unit_id
        )
    }

    /// Polls until shutdown or until the pipeline stops taking samples.
    pub async fn run(mut self) {
        let label = self.label();
        let start = Instant::now();
        let mut due: Vec<Instant> = self.groups.iter().map(|_| start).collect();
        let mut conn = Connection {
            context: None,
            last_failure: status::connection("not connected yet"),
            next_attempt: start,
            backoff: Duration::from_millis(self.config.reconnect_min_ms),
            rng: now_ns() ^ (self.config.port as u64) << 17 ^ 0x9E37_79B9_7F4A_7C15,
            block_state: HashMap::new(),
            connected_logged: None,
        };
        let mut requests = self.requests.take();
        loop {
            let Some((g, &when)) = due.iter().enumerate().min_by_key(|(_, t)| **t) else {
                return;
            };
            tokio::select! {
                // A due poll goes before a waiting write request.
                biased;
                _ = self.shutdown.changed() => return,
                _ = tokio::time::sleep_until(when.into()) => {}
                req = next_request(&mut requests) => {
                    if req.reply.is_closed() {
                        // The write path gave up waiting: a late write is never sent.
                        continue;
                    }
                    let result = self.serve_request(req.request, &mut conn, &label).await;
                    let _ = req.reply.send(result);
                    continue;
                }
            }
            if *self.shutdown.borrow() {
                return;
            }
            let batch = self.poll_group(g, &mut conn, &label).await;
            let n = batch.len() as u64;
            tokio::select! {
                sent = self.out.send(batch) => if sent.is_err() { return },
                _ = self.shutdown.changed() => return,
            }
            self.produced.fetch_add(n, Ordering::Relaxed);
            let interval = self.groups[g].interval;
            let now = Instant::now();
            due[g] += interval;
            if due[g] < now {
                // Overrun: skip the missed polls rather than bursting to catch up.
                due[g] = now + interval;
            }
        }
        // `conn` drops here, closing the connection.
    }

    /// Runs one request of the write path on the connection (connecting first when the
    /// backoff allows); a transport failure drops the connection as a failed read does.
    async fn serve_request(
        &self,
        request: Request<'static>,
        conn: &mut Connection,
        label: &str,
    ) -> Result<Response, Failure> {
        if conn.context.is_none() && Instant::now() >= conn.next_attempt {
            match self.connect().await {
                Ok(ctx) => {
                    conn.context = Some(ctx);
                    conn.backoff = Duration::from_millis(self.config.reconnect_min_ms);
                }
                Err(f) => self.schedule_reconnect(conn, f),
            }
        }
        let Some(ctx) = conn.context.as_mut() else {
            return Err(status::not_connected(&conn.last_failure));
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let failure = match tokio::time::timeout(timeout, ctx.call(request)).await {
            Ok(Ok(Ok(response))) => return Ok(response),
            Ok(Ok(Err(exception))) => return Err(status::exception(exception.into())),
            Err(_) => status::timeout(self.config.timeout_ms),
            Ok(Err(tokio_modbus::Error::Transport(e))) => status::connection(e),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => status::malformed(e),
        };
        if conn.connected_logged != Some(false) {
            tracing::warn!("{label}: {failure}; reconnecting with backoff");
            conn.connected_logged = Some(false);
        }
        self.schedule_reconnect(conn, failure.clone());
        Err(failure)
    }

    async fn connect(&self) -> Result<Context, Failure> {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let attempt = async {
            let addr: SocketAddr =
                tokio::net::lookup_host((self.config.host.as_str(), self.config.port))
                    .await
                    .map_err(|e| status::connection(format!("cannot resolve: {e}")))?
                    .next()
                    .ok_or_else(|| status::connection("host resolves to no address"))?;
            tokio_modbus::client::tcp::connect_slave(addr, Slave(self.config.unit_id))
                .await
                .map_err(status::connection)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Failure {
                reason: format!(
                    "connection failed: no answer within {} ms",
                    self.config.timeout_ms
                ),
                ..status::timeout(self.config.timeout_ms)
            }),
        }
    }

    fn schedule_reconnect(&self, conn: &mut Connection, failure: Failure) {
        // ±20 % jitter so that many gateways do not reconnect in lockstep.
        conn.rng ^= conn.rng << 13;
        conn.rng ^= conn.rng >> 7;
        conn.rng ^= conn.rng << 17;
        let jitter = 0.8 + 0.4 * ((conn.rng >> 11) as f64 / (1u64 << 53) as f64);
        conn.next_attempt = Instant::now() + conn.backoff.mul_f64(jitter);
        conn.backoff = (conn.backoff * 2).min(Duration::from_millis(self.config.reconnect_max_ms));
        conn.context = None;
        conn.last_failure = failure;
    }

    async fn poll_group(&mut self, g: usize, conn: &mut Connection, label: &str) -> SampleBatch {
        if conn.context.is_none() && Instant::now() >= conn.next_attempt {
            match self.connect().await {
                Ok(ctx) => {
                    conn.context = Some(ctx);
                    conn.backoff = Duration::from_millis(self.config.reconnect_min_ms);
                    if conn.connected_logged != Some(true) {
                        tracing::info!("{label}: connected");
                        conn.connected_logged = Some(true);
                    }
                }
                Err(f) => {
                    if conn.connected_logged != Some(false) {
                        tracing::warn!("{label}: {f}; reconnecting with backoff");
                        conn.connected_logged = Some(false);
                    }
                    self.schedule_reconnect(conn, f);
                }
            }
        }
        let blocks = std::mem::take(&mut self.groups[g].blocks);
        let count: usize = blocks.iter().map(|b| b.tags.len()).sum();
        let mut batch = SampleBatch::with_capacity(count);
        let mut kept = Vec::with_capacity(blocks.len());
        for block in blocks {
            let result = self.read_block(&block, conn, label).await;
            let refused_address = matches!(&result,
                BlockResult::Failed(f) if f.code == status::codes::BAD_NODE_ID_UNKNOWN);
            // Splitting allocates new blocks: only worth it for a refused read.
            let parts = if refused_address {
                self.split(&block)
            } else {
                Vec::new()
            };
            if parts.len() > 1 {
                // The device refuses a read spanning several tags: one of them (or a gap)
                // is not in its map. Read each tag on its own from now on, so only the
                // unmapped ones go bad.
                tracing::warn!(
                    "{label}: read of {} refused as an illegal data address; reading its {} tags one by one",
                    block.describe(),
                    parts.len()
                );
                for part in parts {
                    let result = self.read_block(&part, conn, label).await;
                    self.log_change(&part, &result, conn, label);
                    self.push_block(&mut batch, &part, result, now_ns());
                    kept.push(part);
                }
            } else {
                self.log_change(&block, &result, conn, label);
                self.push_block(&mut batch, &block, result, now_ns());
                kept.push(block);
            }
        }
        self.groups[g].blocks = kept;
        batch
    }

    /// The block as one read per distinct address range (bits of one register stay together).
    fn split(&self, block: &ReadBlock) -> Vec<ReadBlock> {
        let mut parts: Vec<ReadBlock> = Vec::new();
        for &(t, offset) in &block.tags {
            let start = block.start + offset;
            let count = self.tags[t].span;
            match parts
                .iter_mut()
                .find(|p| p.start == start && p.count == count)
            {
                Some(p) => p.tags.push((t, 0)),
                None => parts.push(ReadBlock {
                    table: block.table,
                    start,
                    count,
                    tags: vec![(t, 0)],
                }),
            }
        }
        parts
    }

    /// Reads `block`, or reports it not connected; a transport failure drops the connection.
    async fn read_block(
        &self,
        block: &ReadBlock,
        conn: &mut Connection,
        label: &str,
    ) -> BlockResult {
        let Some(ctx) = conn.context.as_mut() else {
            return BlockResult::Failed(status::not_connected(&conn.last_failure));
        };
        match self.read(ctx, block).await {
            Ok(r) => r,
            Err(f) => {
                // Transport trouble: the rest of the group is reported as not connected
                // until a reconnect succeeds.
                if conn.connected_logged != Some(false) {
                    tracing::warn!("{label}: {f}; reconnecting with backoff");
                    conn.connected_logged = Some(false);
                }
                self.schedule_reconnect(conn, f.clone());
                BlockResult::Failed(f)
            }
        }
    }

    /// Logs a block going bad (with the reason and its tags) or recovering, once per change.
    fn log_change(
        &self,
        block: &ReadBlock,
        result: &BlockResult,
        conn: &mut Connection,
        label: &str,
    ) {
        let state = match result {
            BlockResult::Failed(f) => Some(f.code),
            _ => None,
        };
        let key = (block.table, block.start, block.count);
        let before = conn.block_state.get(&key).copied();
        if before == Some(state) || (before.is_none() && state.is_none()) {
            return;
        }
        match result {
            BlockResult::Failed(f) => {
                let tags: Vec<&str> = block
                    .tags
                    .iter()
                    .map(|(t, _)| self.tags[*t].name.as_str())
                    .collect();
                tracing::warn!(
                    "{label}: read of {} failed: {f}; tags {} have bad quality",
                    block.describe(),
                    tags.join(", ")
                );
            }
            _ => tracing::info!("{label}: read of {} recovered", block.describe()),
        }
        conn.block_state.insert(key, state);
    }

    /// One read; `Err` is a transport failure (the connection is no longer usable), while
    /// exceptions and malformed payloads come back as `BlockResult::Failed`.
    async fn read(&self, ctx: &mut Context, block: &ReadBlock) -> Result<BlockResult, Failure> {
        let (start, count) = (block.start, block.count);
        let request = match block.table {
            Table::Holding => Request::ReadHoldingRegisters(start, count),
            Table::Input => Request::ReadInputRegisters(start, count),
            Table::Coil => Request::ReadCoils(start, count),
            Table::DiscreteInput => Request::ReadDiscreteInputs(start, count),
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let response = match tokio::time::timeout(timeout, ctx.call(request)).await {
            Err(_) => return Err(status::timeout(self.config.timeout_ms)),
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                return Err(if e.kind() == std::io::ErrorKind::InvalidData {
                    status::malformed(e)
                } else {
                    status::connection(e)
                })
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => return Err(status::malformed(e)),
            Ok(Ok(Err(exception))) => {
                return Ok(BlockResult::Failed(status::exception(exception.into())))
            }
            Ok(Ok(Ok(r))) => r,
        };
        Ok(match response {
            Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) => {
                if w.len() == count as usize {
                    BlockResult::Words(w)
                } else {
                    BlockResult::Failed(status::malformed(format!(
                        "{} registers for a read of {count}",
                        w.len()
                    )))
                }
            }
            Response::ReadCoils(mut b) | Response::ReadDiscreteInputs(mut b) => {
                // Bits come in whole bytes; the padding is dropped.
                if b.len() >= count as usize && b.len() < count as usize + 8 {
                    b.truncate(count as usize);
                    BlockResult::Bits(b)
                } else {
                    BlockResult::Failed(status::malformed(format!(
                        "{} bits for a read of {count}",
                        b.len()
                    )))
                }
            }
            other => {
                BlockResult::Failed(status::malformed(format!("unexpected response {other:?}")))
            }
        })
    }

    fn push_block(&self, batch: &mut SampleBatch, block: &ReadBlock, result: BlockResult, ts: u64) {
        for &(t, offset) in &block.tags {
            let tag = &self.tags[t];
            let decoded = match &result {
                BlockResult::Words(w) => {
                    let from = offset as usize;
                    Ok(decode_registers(
                        &tag.layout,
                        &w[from..from + tag.span as usize],
                    ))
                }
                BlockResult::Bits(b) => Ok(decode_bit(&tag.layout, b[offset as usize])),
                BlockResult::Failed(f) => Err(f.code),
            };
            match decoded {
                Ok(Decoded { value, extra }) => {
                    if let Some(value) = extra {
                        batch.extras.push(Extra {
                            index: batch.len() as u32,
                            value,
                        });
                    }
                    batch.push(tag.id, value, Quality::GOOD, ts);
                }
                Err(code) => batch.push(tag.id, f64::NAN, Quality(code), ts),
            }
        }
    }
}
